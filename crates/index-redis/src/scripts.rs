//! The Lua scripts that make each multi-key change atomic on the node that owns its keys.
//!
//! Catalogue scripts get the catalogue's hash tag as `ARGV[1]` and only touch keys under
//! it, which all live in one slot; their `KEYS[1]` is a catalogue key so the cluster routes
//! them. Bucket scripts touch exactly `KEYS[1]`, one bucket hash.

/// Helpers every catalogue script starts with.
///
/// `idx` values are `"<n_postings> <duration_us> <path bytes> <path><content>"`: what a
/// removal must undo, in a form Lua parses without a JSON library.
const CATALOGUE_PRELUDE: &str = r#"
local T = ARGV[1]
local function key(name) return T .. ':' .. name end
-- A write that changes nothing, for a script that answers a retried durable call with
-- nothing left to do: from Redis 7.2, `WAIT` covers only what a connection's own
-- commands propagated, so without it the retry's `WAIT` would return before the first
-- attempt's writes reached a replica.
local function touch() redis.call('HINCRBY', key('counters'), 'live_postings', 0) end
-- The server's clock, so clients on machines whose clocks disagree share one timeline.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function owner(map, value, replaces)
  if value == '' then return false end
  local id = redis.call('HGET', key(map), value)
  if id and id ~= replaces then return id end
  return false
end
local function drop_relations(id)
  local rel = key('rel:' .. id)
  for _, r in ipairs(redis.call('HKEYS', rel)) do
    redis.call('SREM', key('relrev:' .. r), id)
  end
  redis.call('DEL', rel)
  local rev = key('relrev:' .. id)
  for _, q in ipairs(redis.call('SMEMBERS', rev)) do
    redis.call('HDEL', key('rel:' .. q), id)
  end
  redis.call('DEL', rev)
  redis.call('HDEL', key('marks'), id)
end
local function remove_track(id, now)
  local raw = redis.call('HGET', key('idx'), id)
  if not raw then return false end
  local n, d, plen, at = string.match(raw, '^(%d+) (%d+) (%d+) ()')
  plen = tonumber(plen)
  local path = string.sub(raw, at, at + plen - 1)
  local content = string.sub(raw, at + plen)
  if path ~= '' and redis.call('HGET', key('paths'), path) == id then
    redis.call('HDEL', key('paths'), path)
  end
  if content ~= '' and redis.call('HGET', key('contents'), content) == id then
    redis.call('HDEL', key('contents'), content)
  end
  redis.call('HDEL', key('tracks'), id)
  redis.call('HDEL', key('idx'), id)
  redis.call('SETBIT', key('live'), id, 0)
  -- Redis refuses "-0" as an integer, so zeros are skipped.
  if n ~= '0' then redis.call('HINCRBY', key('counters'), 'live_postings', '-' .. n) end
  if d ~= '0' then redis.call('HINCRBY', key('counters'), 'duration_us', '-' .. d) end
  drop_relations(id)
  redis.call('ZADD', key('dead'), now, id)
  return true
end
"#;

/// Creates the store's meta if absent (when `ARGV[5]` is `1`) and returns it.
/// ARGV: tag, format version, fingerprint params, bucket bits, create.
const META: &str = r#"
local m = key('meta')
if redis.call('EXISTS', m) == 0 then
  if ARGV[5] ~= '1' then return false end
  redis.call('HSET', m, 'format_version', ARGV[2], 'fingerprint_params', ARGV[3],
    'bucket_bits', ARGV[4])
elseif ARGV[5] == '1' then
  touch()
end
return redis.call('HMGET', m, 'format_version', 'fingerprint_params', 'bucket_bits')
"#;

/// Checks a new track's identity, hands out its id and marks it pending. Also moves up to
/// 8 ids pending past the time-to-live (crashed writers) to `dead` as `u<id>` ("never
/// published"), so a late publish of theirs fails, and returns up to 8 `dead` members due
/// for purging (removed past the grace period, or never published).
/// ARGV: tag, path, content, replaces or '', grace ms, pending time-to-live ms.
const RESERVE: &str = r#"
local path, content, replaces, now = ARGV[2], ARGV[3], ARGV[4], now_ms()
if replaces ~= '' and redis.call('HEXISTS', key('idx'), replaces) == 0 then
  return {'unknown', replaces}
end
local o = owner('paths', path, replaces)
if o then return {'path', o} end
o = owner('contents', content, replaces)
if o then return {'content', o} end
local id = tonumber(redis.call('HGET', key('counters'), 'next_id') or '1')
if id > 4294967295 then return {'exhausted', ''} end
local stale_before = now - tonumber(ARGV[6])
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', key('pending'), '-inf', stale_before, 'LIMIT', 0, 8)) do
  redis.call('ZREM', key('pending'), stale)
  redis.call('ZADD', key('dead'), 0, 'u' .. stale)
end
local sid = string.format('%d', id)
redis.call('HSET', key('counters'), 'next_id', string.format('%d', id + 1))
redis.call('ZADD', key('pending'), now, sid)
return {'ok', sid, redis.call('ZRANGEBYSCORE', key('dead'), '-inf', now - tonumber(ARGV[5]), 'LIMIT', 0, 8)}
"#;

/// Publishes a reserved track whose postings are all written: the catalogue entry, its
/// identity, its live bit and the counters change together, and `replaces` goes in the
/// same step. A conflict found now (another process won a race) abandons the id, whose
/// postings are then purged like a crashed put's.
/// ARGV: tag, id, path, content, replaces or '', track JSON, idx value, n_postings,
/// duration us, new keys.
const PUBLISH: &str = r#"
local id, path, content, replaces, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], now_ms()
if not redis.call('ZSCORE', key('pending'), id) then
  if redis.call('HEXISTS', key('tracks'), id) == 1 then
    touch()
    return {'ok', ''}
  end
  return {'stale', ''}
end
local function abandon(code, other)
  redis.call('ZREM', key('pending'), id)
  redis.call('ZADD', key('dead'), 0, 'u' .. id)
  return {code, other}
end
if replaces ~= '' and redis.call('HEXISTS', key('idx'), replaces) == 0 then
  return abandon('unknown', replaces)
end
local o = owner('paths', path, replaces)
if o then return abandon('path', o) end
o = owner('contents', content, replaces)
if o then return abandon('content', o) end
if replaces ~= '' then remove_track(replaces, now) end
redis.call('HSET', key('tracks'), id, ARGV[6])
redis.call('HSET', key('idx'), id, ARGV[7])
if path ~= '' then redis.call('HSET', key('paths'), path, id) end
if content ~= '' then redis.call('HSET', key('contents'), content, id) end
redis.call('SETBIT', key('live'), id, 1)
redis.call('HINCRBY', key('counters'), 'live_postings', ARGV[8])
redis.call('HINCRBY', key('counters'), 'duration_us', ARGV[9])
redis.call('HINCRBY', key('counters'), 'n_keys', ARGV[10])
redis.call('ZREM', key('pending'), id)
return {'ok', ''}
"#;

/// Removes a track from the catalogue; its postings are purged after the grace period.
/// ARGV: tag, id.
const REMOVE: &str = r#"
if remove_track(ARGV[2], now_ms()) then return 1 end
touch()
return 0
"#;

/// Replaces a track's JSON if it is still what the caller read (compare and set).
/// Returns 0 if the track is gone, 2 if it changed meanwhile, 1 if replaced.
/// ARGV: tag, id, old JSON, new JSON.
const UPDATE: &str = r#"
local cur = redis.call('HGET', key('tracks'), ARGV[2])
if not cur then return 0 end
if cur ~= ARGV[3] then return 2 end
redis.call('HSET', key('tracks'), ARGV[2], ARGV[4])
return 1
"#;

/// Stores a scan's relations and raises its mark; 0 if the query is not catalogued.
/// ARGV: tag, query, first examined id, last examined id, then (reference, payload) pairs.
const RECORD_SCAN: &str = r#"
local q = ARGV[2]
if redis.call('HEXISTS', key('tracks'), q) == 0 then return 0 end
local lo, hi = tonumber(ARGV[3]), tonumber(ARGV[4])
local rel = key('rel:' .. q)
for _, r in ipairs(redis.call('HKEYS', rel)) do
  local n = tonumber(r)
  if n >= lo and n <= hi then
    redis.call('HDEL', rel, r)
    redis.call('SREM', key('relrev:' .. r), q)
  end
end
for i = 5, #ARGV, 2 do
  local r = ARGV[i]
  if redis.call('HEXISTS', key('tracks'), r) == 1 then
    redis.call('HSET', rel, r, ARGV[i + 1])
    redis.call('SADD', key('relrev:' .. r), q)
  end
end
local mark = redis.call('HGET', key('marks'), q)
if not mark or tonumber(mark) < hi then redis.call('HSET', key('marks'), q, ARGV[4]) end
return 1
"#;

/// Relations as flat (query, reference, payload) triples, of one track or of all.
/// ARGV: tag, track id or ''.
const RELATIONS: &str = r#"
local out = {}
local function add_query(q)
  local kv = redis.call('HGETALL', key('rel:' .. q))
  for i = 1, #kv, 2 do
    out[#out + 1] = q
    out[#out + 1] = kv[i]
    out[#out + 1] = kv[i + 1]
  end
end
local t = ARGV[2]
if t == '' then
  for _, q in ipairs(redis.call('HKEYS', key('tracks'))) do add_query(q) end
else
  add_query(t)
  for _, q in ipairs(redis.call('SMEMBERS', key('relrev:' .. t))) do
    local p = redis.call('HGET', key('rel:' .. q), t)
    if p then
      out[#out + 1] = q
      out[#out + 1] = t
      out[#out + 1] = p
    end
  end
end
return out
"#;

/// Catalogue size and counters in one consistent read.
/// ARGV: tag.
const STATS: &str = r#"
local c = redis.call('HMGET', key('counters'), 'live_postings', 'duration_us', 'n_keys')
return {redis.call('HLEN', key('tracks')), c[1], c[2], c[3]}
"#;

/// Forgets a purged `dead` member, and takes the keys its purge emptied off `n_keys` if the
/// track had been published (a never-published track's keys, `u<id>`, were never counted).
/// Two processes purging one id split the emptied keys, so both subtract their share.
/// ARGV: tag, dead member, emptied keys.
const FORGET: &str = r#"
redis.call('ZREM', key('dead'), ARGV[2])
if string.sub(ARGV[2], 1, 1) ~= 'u' and ARGV[3] ~= '0' then
  local n = redis.call('HINCRBY', key('counters'), 'n_keys', '-' .. ARGV[3])
  if n < 0 then redis.call('HSET', key('counters'), 'n_keys', 0) end
end
return 1
"#;

/// Appends chunks to fields of one bucket; returns how many fields it created. A chunk
/// already present is not appended again, so a retried append changes nothing, but it
/// still writes (the first field, unchanged), so that its `WAIT` covers the first
/// attempt's writes (see `touch` in the catalogue prelude).
/// KEYS: the bucket. ARGV: (field, chunks) pairs.
pub const APPEND: &str = r#"
local new, wrote = 0, false
for i = 1, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if not old then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    new, wrote = new + 1, true
  elseif not string.find(old, ARGV[i + 1], 1, true) then
    redis.call('HSET', KEYS[1], ARGV[i], old .. ARGV[i + 1])
    wrote = true
  end
end
if not wrote and #ARGV >= 2 then
  redis.call('HSET', KEYS[1], ARGV[1], redis.call('HGET', KEYS[1], ARGV[1]))
end
return new
"#;

/// Drops one track's chunks from fields of one bucket, deleting fields left empty; returns
/// how many fields it deleted.
/// KEYS: the bucket. ARGV: the track id as 4 big-endian bytes, then the fields.
pub const PURGE: &str = r#"
local deleted = 0
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    local kept, dropped = {}, false
    local pos, len = 1, #v
    while pos <= len do
      local stop = pos + 4 + 8 * string.byte(v, pos + 4)
      if string.sub(v, pos, pos + 3) == ARGV[1] then
        dropped = true
      else
        kept[#kept + 1] = string.sub(v, pos, stop)
      end
      pos = stop + 1
    end
    if #kept == 0 then
      redis.call('HDEL', KEYS[1], ARGV[i])
      deleted = deleted + 1
    elseif dropped then
      redis.call('HSET', KEYS[1], ARGV[i], table.concat(kept))
    end
  end
end
return deleted
"#;

/// Every script the store runs, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    Meta,
    Reserve,
    Publish,
    Remove,
    Update,
    RecordScan,
    Relations,
    Stats,
    Forget,
    Append,
    Purge,
}

impl Script {
    /// All scripts, in a fixed order (the index into the store's SHA table).
    pub const ALL: [Script; 11] = [
        Script::Meta,
        Script::Reserve,
        Script::Publish,
        Script::Remove,
        Script::Update,
        Script::RecordScan,
        Script::Relations,
        Script::Stats,
        Script::Forget,
        Script::Append,
        Script::Purge,
    ];

    /// The script's source, with the catalogue prelude where it needs one.
    pub fn source(self) -> String {
        let body = match self {
            Script::Meta => META,
            Script::Reserve => RESERVE,
            Script::Publish => PUBLISH,
            Script::Remove => REMOVE,
            Script::Update => UPDATE,
            Script::RecordScan => RECORD_SCAN,
            Script::Relations => RELATIONS,
            Script::Stats => STATS,
            Script::Forget => FORGET,
            Script::Append => return APPEND.to_owned(),
            Script::Purge => return PURGE.to_owned(),
        };
        format!("{CATALOGUE_PRELUDE}{body}")
    }

    /// Position in [`Script::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}
