//! [`Store`] on a Redis Cluster, for catalogues that outgrow one machine.
//!
//! Opened from a URL, `redis://host:port[,host:port...][?option=value&...]`, naming any
//! nodes of the cluster (the rest are discovered). Options: `prefix` (the namespace of
//! every key, default `cratedigger`; several stores can share a cluster), `buckets` (log2
//! of the number of posting buckets, fixed when the store is created, default 16),
//! `durable` (replicas each write waits for, default 1; 0 trusts asynchronous replication),
//! `timeout_s` (how long an operation keeps retrying through a failover, default 30), and
//! `grace_s` and `pending_ttl_s` (see [`GRACE`] and [`PENDING_TTL`]).
//!
//! # Layout
//!
//! | key                      | type   | holds                                             |
//! |--------------------------|--------|---------------------------------------------------|
//! | `P:b:N`                  | hash   | bucket N: field = hash key (u32 BE), value = the  |
//! |                          |        | key's postings as chunks (see below)              |
//! | `P:m:ID`                 | string | track ID's distinct hash keys (varint deltas)     |
//! | `{P}:meta`               | hash   | format version, fingerprint params, bucket bits   |
//! | `{P}:tracks`             | hash   | id -> [`TrackInfo`] JSON                          |
//! | `{P}:idx`                | hash   | id -> what removal undoes (sizes, path, content)  |
//! | `{P}:paths`, `:contents` | hash   | path / content hash -> id                         |
//! | `{P}:live`               | bitmap | bit ID set while track ID is catalogued           |
//! | `{P}:counters`           | hash   | next_id, live_postings, duration_us, n_keys       |
//! | `{P}:pending`, `:dead`   | zset   | ids being written / to purge, by server time (ms) |
//! | `{P}:rel:Q`, `:relrev:R` | hash / set | relation payloads by reference; queries of R  |
//! | `{P}:marks`              | hash   | query id -> scan mark                             |
//!
//! Hash keys go to one of `2^bits` buckets by a multiplicative hash ([`layout::bucket_of`]);
//! a bucket key carries no hash tag, so buckets spread over every slot and node, and the
//! number of Redis keys stays fixed however large the catalogue grows. A field value is a
//! sequence of *chunks*, one per track that has the key: track id (u32 BE), a count byte,
//! then per posting time (u32 BE), freq and span (u16 BE): 13 bytes for the common single
//! posting. Everything under `{P}` shares one slot, so Lua scripts change the catalogue
//! atomically.
//!
//! # Consistency
//!
//! A put reserves an id (a script checks path and content are free, takes the id from
//! `next_id`, and files it as pending), writes the track's manifest, appends its chunks to
//! the buckets (one script per bucket, pipelined per node), then publishes it: one script
//! re-checks identity, stores the catalogue entry, sets its live bit, updates the counters
//! and removes `replaces`. Lookups read the live bitmap first and then the buckets, and keep
//! only postings of live tracks, so a track appears whole or not at all. A removal clears
//! the catalogue entry at once and files the id as dead; its postings are purged after a
//! grace period ([`GRACE`]) so a lookup that read the bitmap just before cannot see half of
//! them. A crash mid-put leaves a pending id with some postings nobody can see; a put
//! moves pending ids older than [`PENDING_TTL`] to `dead` as `u<id>` (so their late
//! publish fails) and purges dead ids past the grace period, using the manifest written
//! before any posting. Two processes adding the same file both write
//! postings, and the second publish finds the identity taken and abandons its id, whose
//! postings are purged like a crash's. Every write waits (`WAIT`) until `durable` replicas
//! have it, so a failover loses nothing acknowledged; a write to a master with fewer
//! replicas than that (as its own `INFO replication` counts them: the cluster map comes by
//! gossip and may lag) is retried for a few seconds and then refused with an error that
//! says so, and reads go on. Purges do not wait: a lost one leaves postings of a dead id,
//! which no lookup shows.

mod layout;
mod scripts;
pub mod testcluster;

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use index::backend::{
    duration_us, merged_metadata, prepare_entries, sort_queries, validate_scan, validate_side_data,
    validate_track_info,
};
use index::{
    Entry, FORMAT_VERSION, IndexError, Posting, Relation, Store, StoreMeta, StoreStats, TrackId,
    TrackInfo,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use layout::{Keys, bucket_of, decode_chunks, encode_chunks, field_of, is_live, slot_of};
use scripts::Script;

/// Default of how long a removed track's postings stay readable before a purge may delete
/// them: far longer than any lookup takes, so a lookup never sees half a removal.
pub const GRACE: Duration = Duration::from_secs(30);

/// Default of how long a reserved id may stay unpublished before its postings count as
/// left behind by a crashed writer and are purged; far longer than writing a track takes.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);

/// How long one `WAIT` for replicas may take before the write counts as failed.
const WAIT_TIMEOUT_MS: u64 = 5_000;

/// How long a write to a master with too few replicas is retried (within the store's
/// timeout) before it is refused: long enough for a replica that dropped its link (a
/// restart, a network blip) to reconnect, short enough that a cluster set up without
/// replicas says so at once.
const TOO_FEW_REPLICAS_GRACE: Duration = Duration::from_secs(5);

/// Default log2 of the number of posting buckets: 65,536 buckets hold about 35 hash keys
/// each at 12 hours of audio (2.3M keys), small enough for Redis's compact hash encoding.
pub const DEFAULT_BUCKET_BITS: u32 = 16;

/// Largest accepted bucket bits: 2^24 buckets is already more keys than postings of a
/// small library.
const MAX_BUCKET_BITS: u32 = 24;

/// Where a store lives and how it behaves; see the crate docs for the URL form.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisOptions {
    /// Seed nodes, as `redis://[user:password@]host:port` URLs.
    pub nodes: Vec<String>,
    /// Namespace of every key of the store; must not contain braces.
    pub prefix: String,
    /// Log2 of the number of posting buckets; used when the store is created.
    pub bucket_bits: u32,
    /// Replicas each write waits for; a write to a master with fewer is refused.
    pub durable_replicas: usize,
    /// How long an operation retries through failovers and redirections.
    pub timeout: Duration,
    /// How long a removed track's postings stay readable ([`GRACE`]).
    pub grace: Duration,
    /// How long an unpublished put may take before it counts as crashed ([`PENDING_TTL`]).
    pub pending_ttl: Duration,
}

impl RedisOptions {
    /// Parses `redis://host:port[,host:port...][/][?prefix=P&buckets=B&durable=N&timeout_s=S]`.
    pub fn from_url(url: &str) -> Result<Self, IndexError> {
        let invalid = |why: String| IndexError::Backend {
            dir: PathBuf::from(redact(url)),
            doing: "reading the store URL",
            reason: why.into(),
        };
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| invalid("it must start with redis://".to_owned()))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("redis://{host}"))
            .collect();
        if nodes.is_empty() {
            return Err(invalid("it names no node".to_owned()));
        }
        let mut options = Self {
            nodes,
            prefix: "cratedigger".to_owned(),
            bucket_bits: DEFAULT_BUCKET_BITS,
            durable_replicas: 1,
            timeout: Duration::from_secs(30),
            grace: GRACE,
            pending_ttl: PENDING_TTL,
        };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("option {name} needs a number, not {value:?}")))
            };
            match name {
                "prefix" => {
                    if value.is_empty() || value.contains(['{', '}']) {
                        return Err(invalid(format!(
                            "prefix {value:?} must be non-empty and free of braces"
                        )));
                    }
                    options.prefix = value.to_owned();
                }
                "buckets" => {
                    let bits = number()?;
                    if bits > u64::from(MAX_BUCKET_BITS) {
                        return Err(invalid(format!(
                            "buckets is log2 of the bucket count, at most {MAX_BUCKET_BITS}"
                        )));
                    }
                    options.bucket_bits = bits as u32;
                }
                "durable" => options.durable_replicas = number()? as usize,
                "timeout_s" => options.timeout = Duration::from_secs(number()?),
                "grace_s" => options.grace = Duration::from_secs(number()?),
                "pending_ttl_s" => options.pending_ttl = Duration::from_secs(number()?),
                other => return Err(invalid(format!("unknown option {other:?}"))),
            }
        }
        Ok(options)
    }

    /// The URL without passwords, for messages.
    pub fn display_name(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| redact(node).trim_start_matches("redis://").to_owned())
            .collect();
        format!("redis://{}?prefix={}", hosts.join(","), self.prefix)
    }
}

/// Whether a store location names a Redis Cluster rather than a folder.
pub fn is_store_url(location: &str) -> bool {
    location.starts_with("redis://")
}

/// Drops `user:password@` from every host of a URL.
fn redact(url: &str) -> String {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let hosts: Vec<&str> = rest
        .split(',')
        .map(|host| host.rsplit_once('@').map_or(host, |(_, host)| host))
        .collect();
    format!("redis://{}", hosts.join(","))
}

/// Why one attempt at an operation failed.
#[derive(Debug)]
enum Failure {
    /// The cluster or the connection failed; maybe transient.
    Redis(RedisError),
    /// A write did not reach the replicas it waits for in time.
    NotDurable { wanted: usize, acked: i64 },
    /// The master that would take a write has fewer replicas than a write waits for, so
    /// the write could not survive that master's loss.
    TooFewReplicas {
        master: String,
        replicas: usize,
        wanted: usize,
    },
    /// A write was routed to a node that is no longer a master (a failover the client's
    /// map has not caught up with).
    StaleRoute,
    /// The cluster answered something this layout never writes.
    Corrupt(String),
}

impl Failure {
    /// How long an operation that failed so may go on retrying, given the store's
    /// `timeout`: all of it for the kinds of failure a failover, a slot migration or a
    /// restarting node produce, a short grace for a master short of replicas (see
    /// [`TOO_FEW_REPLICAS_GRACE`]), none for the rest.
    fn retry_window(&self, timeout: Duration) -> Duration {
        let transient = match self {
            Failure::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_cluster_error()
                    || matches!(
                        error.kind(),
                        ErrorKind::ClusterConnectionNotFound
                            | ErrorKind::Server(
                                ServerErrorKind::TryAgain
                                    | ServerErrorKind::ClusterDown
                                    | ServerErrorKind::MasterDown
                                    | ServerErrorKind::BusyLoading
                                    | ServerErrorKind::ReadOnly
                                    | ServerErrorKind::Moved
                                    | ServerErrorKind::Ask
                                    | ServerErrorKind::CrossSlot
                            )
                    )
            }
            Failure::NotDurable { .. } | Failure::StaleRoute => true,
            Failure::TooFewReplicas { .. } => return timeout.min(TOO_FEW_REPLICAS_GRACE),
            Failure::Corrupt(_) => false,
        };
        if transient { timeout } else { Duration::ZERO }
    }
}

impl From<RedisError> for Failure {
    fn from(error: RedisError) -> Self {
        Failure::Redis(error)
    }
}

/// Which master serves each slot, as last read from `CLUSTER SLOTS`.
#[derive(Debug, Default)]
struct Topology {
    /// Node index per slot; `u16::MAX` where unknown.
    node_of_slot: Vec<u16>,
    /// Replicas of each node.
    replicas: Vec<usize>,
    /// Each node's host and port.
    addresses: Vec<(String, u16)>,
}

impl Topology {
    /// A grouping key: commands with equal keys go to one node in one pipeline.
    fn group_of(&self, slot: u16) -> u32 {
        match self.node_of_slot.get(usize::from(slot)) {
            Some(&node) if node != u16::MAX => u32::from(node),
            // Unknown slots each get their own pipeline, which is always correct.
            _ => 0x1_0000 + u32::from(slot),
        }
    }

    fn replicas_of(&self, slot: u16) -> usize {
        self.node_of_slot
            .get(usize::from(slot))
            .and_then(|&node| self.replicas.get(usize::from(node)))
            .copied()
            .unwrap_or(0)
    }

    /// The host and port of the master serving `slot`, if the map knows it.
    fn address_of(&self, slot: u16) -> Option<&(String, u16)> {
        self.node_of_slot
            .get(usize::from(slot))
            .and_then(|&node| self.addresses.get(usize::from(node)))
    }

    fn parse(value: &Value) -> Option<Self> {
        let Value::Array(ranges) = value else {
            return None;
        };
        let mut topology = Topology {
            node_of_slot: vec![u16::MAX; layout::N_SLOTS],
            replicas: Vec::new(),
            addresses: Vec::new(),
        };
        let mut nodes: Vec<(Vec<u8>, i64)> = Vec::new();
        for range in ranges {
            let Value::Array(items) = range else {
                return None;
            };
            let (start, end) = (as_int(items.first()?)?, as_int(items.get(1)?)?);
            let Value::Array(master) = items.get(2)? else {
                return None;
            };
            let address = (as_bytes(master.first()?)?.to_vec(), as_int(master.get(1)?)?);
            let node = match nodes.iter().position(|known| *known == address) {
                Some(node) => node,
                None => {
                    topology.addresses.push((
                        String::from_utf8_lossy(&address.0).into_owned(),
                        u16::try_from(address.1).ok()?,
                    ));
                    nodes.push(address);
                    topology.replicas.push(items.len() - 3);
                    nodes.len() - 1
                }
            };
            for slot in start.max(0)..=end.min(layout::N_SLOTS as i64 - 1) {
                topology.node_of_slot[slot as usize] = node as u16;
            }
        }
        Some(topology)
    }
}

/// The connection, its runtime and the retry policy: everything that talks to the cluster.
struct Link {
    /// Dropped before the runtime that drives it.
    conn: ClusterConnection,
    /// A second connection for writes that wait for replicas: a `WAIT` holds its
    /// connection to a node for up to [`WAIT_TIMEOUT_MS`] while a replica lags, and on
    /// `conn` it would hold up every lookup on that node too. A write and its `WAIT` go
    /// in one pipeline on this connection, so the `WAIT` covers the write.
    writes: ClusterConnection,
    /// Always `Some` until dropped; see the `Drop` impl.
    runtime: Option<tokio::runtime::Runtime>,
    topology: RwLock<Arc<Topology>>,
    /// Script sources by [`Script::index`], loaded into a node when it says NOSCRIPT.
    sources: Vec<String>,
    durable_replicas: usize,
    timeout: Duration,
    name: PathBuf,
    round_trips: AtomicU64,
}

impl Link {
    fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(PoisonError::into_inner))
    }

    async fn refresh_topology(&self) -> Result<(), Failure> {
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("CLUSTER");
        command.arg("SLOTS");
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let value = conn
            .route_command(
                command,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let topology = Topology::parse(&value)
            .ok_or_else(|| Failure::Corrupt("CLUSTER SLOTS answered in an unknown form".into()))?;
        *self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(topology);
        Ok(())
    }

    fn block_on<T: Send>(&self, future: impl Future<Output = T> + Send) -> T {
        wait(
            self.runtime
                .as_ref()
                .expect("the runtime lives until the link is dropped"),
            future,
        )
    }

    /// Runs `attempt` until it succeeds, fails for good, or transient failures have gone on
    /// for the timeout; between attempts it re-reads the topology.
    fn run<T, F, Fut>(&self, doing: &'static str, mut attempt: F) -> Result<T, IndexError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>> + Send,
        T: Send,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.block_on(attempt()) {
                Ok(value) => return Ok(value),
                Err(failure) if started.elapsed() < failure.retry_window(self.timeout) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                    // A failed refresh keeps the old map; the next attempt tells.
                    let _ = self.block_on(self.refresh_topology());
                }
                Err(failure) => return Err(self.error(doing, failure)),
            }
        }
    }

    fn error(&self, doing: &'static str, failure: Failure) -> IndexError {
        let reason: Box<dyn std::error::Error + Send + Sync> = match failure {
            Failure::Corrupt(what) => {
                return IndexError::Corrupt {
                    dir: self.name.clone(),
                    what,
                };
            }
            Failure::Redis(error) => Box::new(error),
            Failure::NotDurable { wanted, acked } => format!(
                "the write reached {acked} of the {wanted} replicas it waits for within \
                 {WAIT_TIMEOUT_MS} ms, retried until the store's timeout (is a replica \
                 down?); the master may hold it, so readers may see it, but it is not \
                 confirmed: index it again once the replicas are back, or open the store \
                 with durable=0 to accept asynchronous replication"
            )
            .into(),
            Failure::TooFewReplicas {
                master,
                replicas,
                wanted,
            } => format!(
                "the master at {master} has {replicas} replica(s) and a write waits for \
                 {wanted} (URL option durable), so the write could not survive that \
                 master's loss: restore or add its replica, or open the store with \
                 durable=0 to accept asynchronous replication"
            )
            .into(),
            Failure::StaleRoute => {
                "writes kept reaching a node that is no longer a master (is a failover stuck?)"
                    .into()
            }
        };
        IndexError::Backend {
            dir: self.name.clone(),
            doing,
            reason,
        }
    }

    /// Sends `commands` as one pipeline to the master of `slot` (whose other slots they
    /// may also use), followed by a `WAIT` for replicas when `durable`; returns one value
    /// per command. A node that lacks a script gets all of them loaded and one retry.
    async fn exec(
        &self,
        slot: u16,
        commands: &[Cmd],
        durable: bool,
    ) -> Result<Vec<Value>, Failure> {
        let wait_for = if durable { self.durable_replicas } else { 0 };
        if wait_for > 0 && self.topology().replicas_of(slot) < wait_for {
            self.check_replicas(slot, wait_for).await?;
        }
        let route = || SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            for command in commands {
                pipe.add_command(command.clone());
            }
            if wait_for > 0 {
                pipe.cmd("WAIT").arg(wait_for).arg(WAIT_TIMEOUT_MS);
            }
            let count = commands.len() + usize::from(wait_for > 0);
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = if wait_for > 0 {
                self.writes.clone()
            } else {
                self.conn.clone()
            };
            let mut values = conn.route_pipeline(pipe, 0, count, route()).await?;
            let mut missing_script = false;
            for value in &values {
                if let Value::ServerError(error) = value {
                    if error.kind() == Some(ServerErrorKind::NoScript) {
                        missing_script = true;
                    } else {
                        return Err(Failure::Redis(error.clone().into()));
                    }
                }
            }
            if missing_script {
                if attempt == 0 {
                    self.load_scripts(route()).await?;
                    continue;
                }
                return Err(Failure::Corrupt(
                    "a node forgot the store's scripts right after loading them".into(),
                ));
            }
            if wait_for > 0 {
                let acked = values.pop().as_ref().and_then(as_int).unwrap_or(0);
                if acked < wait_for as i64 {
                    return Err(Failure::NotDurable {
                        wanted: wait_for,
                        acked,
                    });
                }
            }
            return Ok(values);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Checks that the master of `slot` has `wanted` replicas, when the map at hand shows
    /// fewer. The map is one node's gossip view and may lag behind a replica that has
    /// just joined: it is read afresh, and if it still shows too few, the master named
    /// there is asked (`INFO replication`: `connected_slaves` counts a replica that is
    /// still syncing, and `WAIT` then holds the write until it has synced). Asked by
    /// address, so that the count is that master's and no other node's. A user whose
    /// ACL denies `INFO` skips the question: `WAIT` still decides.
    async fn check_replicas(&self, slot: u16, wanted: usize) -> Result<(), Failure> {
        self.refresh_topology().await?;
        let topology = self.topology();
        if topology.replicas_of(slot) >= wanted {
            return Ok(());
        }
        // A slot no master serves in a fresh map: a failover is under way.
        let (host, port) = topology
            .address_of(slot)
            .cloned()
            .ok_or(Failure::StaleRoute)?;
        let mut command = redis::cmd("INFO");
        command.arg("replication");
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let value = conn
            .route_command(
                command,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                }),
            )
            .await
            .and_then(|value| match value {
                Value::ServerError(error) => Err(error.into()),
                value => Ok(value),
            });
        let value = match value {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => {
                return Ok(());
            }
            other => other?,
        };
        let info = match &value {
            Value::VerbatimString { text, .. } => text.clone(),
            other => as_bytes(other)
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .ok_or_else(|| Failure::Corrupt("INFO answered in an unknown form".into()))?,
        };
        if !info.lines().any(|line| line.trim() == "role:master") {
            // The map is already fresh: a failover is under way.
            return Err(Failure::StaleRoute);
        }
        let replicas: usize = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|count| count.trim().parse().ok())
            .ok_or_else(|| Failure::Corrupt("INFO replication shows no connected_slaves".into()))?;
        if replicas < wanted {
            return Err(Failure::TooFewReplicas {
                master: format!("{host}:{port}"),
                replicas,
                wanted,
            });
        }
        Ok(())
    }

    /// Loads every script into one node; returns their SHA1 names.
    async fn load_scripts(&self, route: SingleNodeRoutingInfo) -> Result<Vec<String>, Failure> {
        let mut pipe = redis::pipe();
        for source in &self.sources {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source);
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let values = conn
            .route_pipeline(pipe, 0, self.sources.len(), route)
            .await?;
        values
            .iter()
            .map(|value| match value {
                Value::ServerError(error) => Err(Failure::Redis(error.clone().into())),
                other => as_bytes(other)
                    .map(|sha| String::from_utf8_lossy(sha).into_owned())
                    .ok_or_else(|| Failure::Corrupt("SCRIPT LOAD returned no SHA".into())),
            })
            .collect()
    }

    /// Sends commands that each touch one key, grouped into one pipeline per node and all
    /// nodes at once; returns the values in the commands' order.
    async fn exec_spread(
        &self,
        commands: &[(u16, Cmd)],
        durable: bool,
    ) -> Result<Vec<Value>, Failure> {
        let topology = self.topology();
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, (slot, _)) in commands.iter().enumerate() {
            groups.entry(topology.group_of(*slot)).or_default().push(i);
        }
        let batches = groups.into_values().map(|members| async move {
            let batch: Vec<Cmd> = members.iter().map(|&i| commands[i].1.clone()).collect();
            let slot = commands[members[0]].0;
            self.exec(slot, &batch, durable)
                .await
                .map(|values| (members, values))
        });
        let mut out = vec![Value::Nil; commands.len()];
        for result in futures_util::future::join_all(batches).await {
            let (members, values) = result?;
            if values.len() != members.len() {
                return Err(Failure::Corrupt("a pipeline lost replies".into()));
            }
            for (i, value) in members.into_iter().zip(values) {
                out[i] = value;
            }
        }
        Ok(out)
    }
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => std::str::from_utf8(as_bytes(other)?).ok()?.parse().ok(),
    }
}

fn as_id(value: &Value) -> Option<TrackId> {
    as_int(value).and_then(|n| TrackId::try_from(n).ok())
}

/// A [`Store`] on a Redis Cluster; see the crate docs for the layout and its guarantees.
///
/// Methods block the calling thread on an internal runtime. Async code should call them
/// through `spawn_blocking`; called from inside an async task they still work (the wait
/// moves to a scoped thread) but hold up that task's executor thread.
pub struct RedisStore {
    meta: StoreMeta,
    keys: Keys,
    bucket_bits: u32,
    /// The slot of every bucket key, computed once.
    bucket_slots: Vec<u16>,
    catalogue_key: String,
    catalogue_slot: u16,
    /// SHA1 names of the scripts, by [`Script::index`].
    shas: Vec<String>,
    grace: Duration,
    pending_ttl: Duration,
    link: Link,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("at", &self.link.name)
            .field("bucket_bits", &self.bucket_bits)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Opens the store at `url`, creating it if the cluster has none under its prefix.
    ///
    /// A store created with another format version or other `fingerprint_params` is
    /// [`IndexError::Incompatible`].
    pub fn open(url: &str, fingerprint_params: &str) -> Result<Self, IndexError> {
        Self::open_with(RedisOptions::from_url(url)?, fingerprint_params, true)
    }

    /// Opens the store at `url`, which must exist ([`IndexError::NotFound`] otherwise).
    pub fn open_existing(url: &str, fingerprint_params: &str) -> Result<Self, IndexError> {
        Self::open_with(RedisOptions::from_url(url)?, fingerprint_params, false)
    }

    /// Opens (and if `create`, creates) the store `options` describe.
    pub fn open_with(
        options: RedisOptions,
        fingerprint_params: &str,
        create: bool,
    ) -> Result<Self, IndexError> {
        let name = PathBuf::from(options.display_name());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cratedigger-redis")
            .enable_all()
            .build()
            .map_err(|source| IndexError::Io {
                dir: name.clone(),
                source,
            })?;
        let connect_error = |error: RedisError| IndexError::Backend {
            dir: name.clone(),
            doing: "connecting to the cluster",
            reason: Box::new(error),
        };
        let client = ClusterClient::builder(options.nodes.clone())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(10))
            .build()
            .map_err(connect_error)?;
        let conn = wait(&runtime, client.get_async_connection()).map_err(connect_error)?;
        let writes = wait(&runtime, client.get_async_connection()).map_err(connect_error)?;
        let link = Link {
            conn,
            writes,
            runtime: Some(runtime),
            topology: RwLock::new(Arc::new(Topology::default())),
            sources: Script::ALL.iter().map(|script| script.source()).collect(),
            durable_replicas: options.durable_replicas,
            timeout: options.timeout,
            name: name.clone(),
            round_trips: AtomicU64::new(0),
        };
        link.run("reading the cluster topology", || link.refresh_topology())?;
        let keys = Keys::new(&options.prefix);
        let catalogue_key = keys.catalogue("meta");
        let catalogue_slot = slot_of(catalogue_key.as_bytes());
        let shas = link.run("loading scripts", || {
            link.load_scripts(SingleNodeRoutingInfo::SpecificNode(Route::new(
                catalogue_slot,
                SlotAddr::Master,
            )))
        })?;
        let mut store = Self {
            meta: StoreMeta {
                format_version: FORMAT_VERSION,
                fingerprint_params: fingerprint_params.to_owned(),
            },
            keys,
            bucket_bits: options.bucket_bits,
            bucket_slots: Vec::new(),
            catalogue_key,
            catalogue_slot,
            shas,
            grace: options.grace,
            pending_ttl: options.pending_ttl,
            link,
        };
        store.check_meta(create)?;
        store.bucket_slots = (0..1u32 << store.bucket_bits)
            .map(|bucket| slot_of(store.keys.bucket(bucket).as_bytes()))
            .collect();
        Ok(store)
    }

    /// Creates the meta if allowed and absent, then checks it; adopts the stored bucket bits.
    fn check_meta(&mut self, create: bool) -> Result<(), IndexError> {
        let meta_call = |create: bool| {
            let mut command = self.catalogue_command(Script::Meta);
            command
                .arg(self.meta.format_version)
                .arg(&self.meta.fingerprint_params)
                .arg(self.bucket_bits)
                .arg(if create { "1" } else { "0" });
            // Only creating writes, so only creating waits for replicas: a store on a
            // cluster that has lost a replica still opens for reading.
            let doing = if create {
                "creating the store"
            } else {
                "reading the store's format"
            };
            self.link
                .run(doing, || self.catalogue_call(&command, create))
        };
        let mut value = meta_call(false)?;
        if create && !matches!(value, Value::Array(_)) {
            value = meta_call(true)?;
        }
        let Value::Array(fields) = value else {
            return Err(IndexError::NotFound {
                dir: self.link.name.clone(),
            });
        };
        let field = |i: usize| fields.get(i).and_then(as_bytes);
        let (Some(version), Some(params), Some(bits)) = (
            field(0).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u32>().ok()),
            field(1).and_then(|v| std::str::from_utf8(v).ok()),
            field(2).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u32>().ok()),
        ) else {
            return Err(self.corrupt("its format metadata is incomplete"));
        };
        if bits > MAX_BUCKET_BITS {
            return Err(self.corrupt(format!("its bucket bits {bits} are out of range")));
        }
        if version != self.meta.format_version {
            return Err(IndexError::Incompatible {
                dir: self.link.name.clone(),
                found: format!("store format version {version}"),
                expected: format!("store format version {}", self.meta.format_version),
            });
        }
        if params != self.meta.fingerprint_params {
            return Err(IndexError::Incompatible {
                dir: self.link.name.clone(),
                found: format!("fingerprint parameters `{params}`"),
                expected: format!("fingerprint parameters `{}`", self.meta.fingerprint_params),
            });
        }
        self.bucket_bits = bits;
        Ok(())
    }

    /// Requests sent so far, each one round trip to one node: what batching is measured by.
    pub fn round_trips(&self) -> u64 {
        self.link.round_trips.load(Ordering::Relaxed)
    }

    /// Log2 of the store's number of posting buckets.
    pub fn bucket_bits(&self) -> u32 {
        self.bucket_bits
    }

    /// Purges the postings of every removed track now, without waiting out [`GRACE`]
    /// (lookups running meanwhile may see part of a removal); returns how many tracks.
    pub fn purge_removed(&self) -> Result<usize, IndexError> {
        let dead_key = self.keys.catalogue("dead");
        let value = self.link.run("listing removed tracks", || {
            let mut command = redis::cmd("ZRANGE");
            command.arg(&dead_key).arg(0).arg(-1);
            self.catalogue_call_owned(command, false)
        })?;
        let members = member_list(&value);
        self.purge(&members)?;
        Ok(members.len())
    }

    /// Steps 1-5 of a put (see the crate docs); without `publish`, stops after writing
    /// the postings, as a writer that crashed there would.
    fn put(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
        side_data: &[u8],
        replaces: Option<TrackId>,
        publish: bool,
    ) -> Result<TrackId, IndexError> {
        validate_track_info(info)?;
        validate_side_data(side_data)?;
        let replaces_arg = replaces.map(|id| id.to_string()).unwrap_or_default();
        let conflict = |code: &[u8], detail: Option<&Value>| -> IndexError {
            let existing = detail.and_then(as_id).unwrap_or_default();
            match code {
                b"path" => IndexError::PathTaken {
                    path: info.path.clone(),
                    existing,
                },
                b"content" => IndexError::ContentTaken {
                    content_hash: info.content_hash.clone(),
                    existing,
                },
                b"unknown" => IndexError::UnknownTrack {
                    id: replaces.unwrap_or(existing),
                },
                b"exhausted" => IndexError::IdsExhausted,
                other => self.corrupt(format!(
                    "a catalogue script answered {:?}",
                    String::from_utf8_lossy(other)
                )),
            }
        };

        // 1. Reserve an id. Durable, so a failover cannot hand the same id out twice.
        let mut command = self.catalogue_command(Script::Reserve);
        command
            .arg(&info.path)
            .arg(&info.content_hash)
            .arg(&replaces_arg)
            .arg(self.grace.as_millis() as u64)
            .arg(self.pending_ttl.as_millis() as u64);
        let reply = self.link.run("reserving a track id", || {
            self.catalogue_call(&command, true)
        })?;
        let (code, detail) =
            status(&reply).ok_or_else(|| self.corrupt("reserve answered oddly"))?;
        if code != b"ok" {
            return Err(conflict(code, detail));
        }
        let id = detail
            .and_then(as_id)
            .ok_or_else(|| self.corrupt("reserve returned no id"))?;
        let due = match &reply {
            Value::Array(items) => items.get(2).map(member_list).unwrap_or_default(),
            _ => Vec::new(),
        };

        // 2. The manifest, before any posting, so a crash leaves nothing unfindable.
        let prepared = prepare_entries(id, entries);
        let mut keys: Vec<u32> = prepared.iter().map(|&(key, _)| key).collect();
        keys.dedup();
        let manifest_key = self.keys.manifest(id);
        let manifest = layout::encode_manifest(&keys);
        self.link.run("writing a track manifest", || {
            let mut command = redis::cmd("SET");
            command.arg(&manifest_key).arg(&manifest);
            let slot = slot_of(manifest_key.as_bytes());
            async move { self.link.exec(slot, &[command], true).await }
        })?;

        // Side data beside the manifest: unpublished until the track is, purged with it.
        if !side_data.is_empty() {
            let side_key = self.keys.side_data(id);
            self.link.run("writing side data", || {
                let mut command = redis::cmd("SET");
                command.arg(&side_key).arg(side_data);
                let slot = slot_of(side_key.as_bytes());
                async move { self.link.exec(slot, &[command], true).await }
            })?;
        }

        // 3. Postings: one append script per bucket, one pipeline per node.
        let mut by_bucket: BTreeMap<u32, Cmd> = BTreeMap::new();
        let mut chunk = Vec::new();
        let mut postings = Vec::new();
        for group in prepared.chunk_by(|a, b| a.0 == b.0) {
            let key = group[0].0;
            postings.clear();
            postings.extend(group.iter().map(|&(_, posting)| posting));
            chunk.clear();
            encode_chunks(id, &postings, &mut chunk);
            let bucket = bucket_of(key, self.bucket_bits);
            by_bucket
                .entry(bucket)
                .or_insert_with(|| {
                    let mut command = redis::cmd("EVALSHA");
                    command
                        .arg(&self.shas[Script::Append.index()])
                        .arg(1)
                        .arg(self.keys.bucket(bucket));
                    command
                })
                .arg(&field_of(key)[..])
                .arg(&chunk[..]);
        }
        let commands: Vec<(u16, Cmd)> = by_bucket
            .into_iter()
            .map(|(bucket, command)| (self.bucket_slots[bucket as usize], command))
            .collect();
        let values = self.link.run("writing postings", || {
            self.link.exec_spread(&commands, true)
        })?;
        let new_keys: i64 = values.iter().filter_map(as_int).sum();
        if !publish {
            return Ok(id);
        }

        // 4. Publish: the track becomes visible whole, in one script.
        let mut stored = info.clone();
        stored.n_postings = prepared.len() as u64;
        let json = serde_json::to_string(&stored).map_err(|e| IndexError::InvalidTrack {
            reason: format!("cannot be serialised: {e}"),
        })?;
        let idx = format!(
            "{} {} {} {}{}",
            stored.n_postings,
            duration_us(stored.duration_s),
            stored.path.len(),
            stored.path,
            stored.content_hash
        );
        let mut command = self.catalogue_command(Script::Publish);
        command
            .arg(id)
            .arg(&info.path)
            .arg(&info.content_hash)
            .arg(&replaces_arg)
            .arg(&json)
            .arg(&idx)
            .arg(stored.n_postings)
            .arg(duration_us(stored.duration_s))
            .arg(new_keys);
        let reply = self
            .link
            .run("publishing a track", || self.catalogue_call(&command, true))?;
        let (code, detail) =
            status(&reply).ok_or_else(|| self.corrupt("publish answered oddly"))?;
        match code {
            b"ok" => {}
            b"stale" => {
                return Err(IndexError::Backend {
                    dir: self.link.name.clone(),
                    doing: "publishing a track",
                    reason: format!(
                        "writing track {id} took longer than {} s, so its postings were \
                         purged as a crashed writer's; index the file again",
                        self.pending_ttl.as_secs()
                    )
                    .into(),
                });
            }
            other => return Err(conflict(other, detail)),
        }

        // 5. Housekeeping the reservation found due; the track is stored whatever happens
        // here, and whatever fails is found due again by a later put.
        let _ = self.purge(&due);
        Ok(id)
    }

    /// Test hook: a put that stops before publishing, as a crashed writer's would.
    #[doc(hidden)]
    pub fn put_unpublished(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
    ) -> Result<TrackId, IndexError> {
        self.put(info, entries, &[], None, false)
    }

    /// Test hook: every posting stored under `key`, catalogued or not, in stored order.
    #[doc(hidden)]
    pub fn raw_postings(&self, key: u32) -> Result<Vec<Posting>, IndexError> {
        let bucket = bucket_of(key, self.bucket_bits);
        let bucket_key = self.keys.bucket(bucket);
        let value = self.link.run("reading raw postings", || {
            let mut command = redis::cmd("HGET");
            command.arg(&bucket_key).arg(&field_of(key)[..]);
            let slot = self.bucket_slots[bucket as usize];
            async move {
                let mut values = self.link.exec(slot, &[command], false).await?;
                Ok(values.pop().unwrap_or_default())
            }
        })?;
        let mut out = Vec::new();
        if let Some(bytes) = as_bytes(&value) {
            decode_chunks(bytes, |posting| out.push(posting))
                .map_err(|what| self.corrupt(format!("postings of key {key}: {what}")))?;
        }
        Ok(out)
    }

    fn corrupt(&self, what: impl Into<String>) -> IndexError {
        IndexError::Corrupt {
            dir: self.link.name.clone(),
            what: what.into(),
        }
    }

    /// `EVALSHA` of a catalogue script with its routing key and the tag as first argument.
    fn catalogue_command(&self, script: Script) -> Cmd {
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(&self.shas[script.index()])
            .arg(1)
            .arg(&self.catalogue_key)
            .arg(self.keys.tag());
        command
    }

    async fn catalogue_call(&self, command: &Cmd, durable: bool) -> Result<Value, Failure> {
        let mut values = self
            .link
            .exec(self.catalogue_slot, std::slice::from_ref(command), durable)
            .await?;
        values
            .pop()
            .ok_or_else(|| Failure::Corrupt("a pipeline lost its reply".into()))
    }

    async fn catalogue_call_owned(&self, command: Cmd, durable: bool) -> Result<Value, Failure> {
        self.catalogue_call(&command, durable).await
    }

    /// A lookup found no live bitmap, which a store has from its first published track
    /// on (a removal clears bits but keeps the string): fails if tracks are catalogued and
    /// the bitmap is still missing (evicted, or deleted by hand), instead of answering as
    /// if nothing were live.
    fn check_no_tracks_without_bitmap(&self) -> Result<(), IndexError> {
        let (tracks, live) = (self.keys.catalogue("tracks"), self.keys.catalogue("live"));
        let values = self.link.run("checking the live bitmap", || async {
            let mut count = redis::cmd("HLEN");
            count.arg(&tracks);
            // Read after the count: a track published in between has set its bit.
            let mut bitmap = redis::cmd("GET");
            bitmap.arg(&live);
            self.link
                .exec(self.catalogue_slot, &[count, bitmap], false)
                .await
        })?;
        let n_tracks = values.first().and_then(as_int).unwrap_or(0);
        if n_tracks > 0 && values.get(1) == Some(&Value::Nil) {
            return Err(self.corrupt(format!(
                "{n_tracks} tracks are catalogued but the live bitmap is missing (evicted? \
                 the cluster must run with maxmemory-policy noeviction; or deleted by hand)"
            )));
        }
        Ok(())
    }

    /// Reads one field of a catalogue hash.
    fn catalogue_get(&self, hash: &str, field: &[u8]) -> Result<Value, IndexError> {
        let key = self.keys.catalogue(hash);
        self.link.run("reading the catalogue", || {
            let mut command = redis::cmd("HGET");
            command.arg(&key).arg(field);
            self.catalogue_call_owned(command, false)
        })
    }

    fn parse_info(&self, id: TrackId, bytes: &[u8]) -> Result<TrackInfo, IndexError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(format!("the catalogue entry of track {id}: {e}")))
    }

    /// Deletes the postings and manifests of `dead` members (`ID` for a removed track,
    /// `uID` for a put that never published) and forgets them.
    fn purge(&self, members: &[String]) -> Result<(), IndexError> {
        for member in members {
            let Ok(id) = member.trim_start_matches('u').parse::<TrackId>() else {
                return Err(self.corrupt(format!("a dead id {member:?} is not a number")));
            };
            let manifest_key = self.keys.manifest(id);
            let manifest = self.link.run("reading a track manifest", || {
                let mut command = redis::cmd("GET");
                command.arg(&manifest_key);
                let slot = slot_of(manifest_key.as_bytes());
                async move {
                    let mut values = self.link.exec(slot, &[command], false).await?;
                    Ok(values.pop().and_then(|v| as_bytes(&v).map(<[u8]>::to_vec)))
                }
            })?;
            let mut emptied = 0i64;
            if let Some(manifest) = manifest {
                let keys = layout::decode_manifest(&manifest)
                    .map_err(|what| self.corrupt(format!("manifest of track {id}: {what}")))?;
                let mut by_bucket: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for key in keys {
                    by_bucket
                        .entry(bucket_of(key, self.bucket_bits))
                        .or_default()
                        .push(key);
                }
                let commands: Vec<(u16, Cmd)> = by_bucket
                    .iter()
                    .map(|(&bucket, keys)| {
                        let mut command = redis::cmd("EVALSHA");
                        command
                            .arg(&self.shas[Script::Purge.index()])
                            .arg(1)
                            .arg(self.keys.bucket(bucket))
                            .arg(&id.to_be_bytes()[..]);
                        for &key in keys {
                            command.arg(&field_of(key)[..]);
                        }
                        (self.bucket_slots[bucket as usize], command)
                    })
                    .collect();
                let values = self.link.run("purging postings", || {
                    self.link.exec_spread(&commands, false)
                })?;
                emptied = values.iter().filter_map(as_int).sum();
                self.link.run("deleting a track manifest", || {
                    let mut command = redis::cmd("DEL");
                    command.arg(&manifest_key);
                    let slot = slot_of(manifest_key.as_bytes());
                    async move { self.link.exec(slot, &[command], false).await }
                })?;
            }
            let side_key = self.keys.side_data(id);
            self.link.run("deleting side data", || {
                let mut command = redis::cmd("DEL");
                command.arg(&side_key);
                let slot = slot_of(side_key.as_bytes());
                async move { self.link.exec(slot, &[command], false).await }
            })?;
            let mut command = self.catalogue_command(Script::Forget);
            command.arg(member).arg(emptied);
            self.link.run("forgetting a purged track", || {
                self.catalogue_call(&command, false)
            })?;
        }
        Ok(())
    }
}

/// The strings of an array reply.
fn member_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(as_bytes)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect(),
        _ => Vec::new(),
    }
}

/// The (status, detail) pair catalogue scripts answer with.
fn status(value: &Value) -> Option<(&[u8], Option<&Value>)> {
    match value {
        Value::Array(items) => Some((as_bytes(items.first()?)?, items.get(1))),
        _ => None,
    }
}

impl Store for RedisStore {
    fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    fn put_track_with_side_data(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
        side_data: &[u8],
        replaces: Option<TrackId>,
    ) -> Result<TrackId, IndexError> {
        self.put(info, entries, side_data, replaces, true)
    }

    fn side_data(&self, id: TrackId) -> Result<Option<Vec<u8>>, IndexError> {
        if self.track(id)?.is_none() {
            return Ok(None);
        }
        let side_key = self.keys.side_data(id);
        let value = self.link.run("reading side data", || {
            let mut command = redis::cmd("GET");
            command.arg(&side_key);
            let slot = slot_of(side_key.as_bytes());
            async move {
                let mut values = self.link.exec(slot, &[command], false).await?;
                Ok(values.pop().and_then(|v| as_bytes(&v).map(<[u8]>::to_vec)))
            }
        })?;
        Ok(Some(value.unwrap_or_default()))
    }

    fn remove_track(&self, id: TrackId) -> Result<bool, IndexError> {
        let mut command = self.catalogue_command(Script::Remove);
        command.arg(id);
        let reply = self
            .link
            .run("removing a track", || self.catalogue_call(&command, true))?;
        Ok(as_int(&reply) == Some(1))
    }

    fn track(&self, id: TrackId) -> Result<Option<TrackInfo>, IndexError> {
        let value = self.catalogue_get("tracks", id.to_string().as_bytes())?;
        as_bytes(&value)
            .map(|bytes| self.parse_info(id, bytes))
            .transpose()
    }

    fn tracks(&self) -> Result<Vec<(TrackId, TrackInfo)>, IndexError> {
        let key = self.keys.catalogue("tracks");
        let value = self.link.run("reading the catalogue", || {
            let mut command = redis::cmd("HGETALL");
            command.arg(&key);
            self.catalogue_call_owned(command, false)
        })?;
        let pairs: Vec<(&Value, &Value)> = match &value {
            Value::Array(items) => items
                .chunks_exact(2)
                .map(|pair| (&pair[0], &pair[1]))
                .collect(),
            Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::with_capacity(pairs.len());
        for (id, json) in pairs {
            let id = as_id(id).ok_or_else(|| self.corrupt("a catalogue id is not a number"))?;
            let json = as_bytes(json).ok_or_else(|| self.corrupt("a catalogue entry is empty"))?;
            out.push((id, self.parse_info(id, json)?));
        }
        out.sort_unstable_by_key(|&(id, _)| id);
        Ok(out)
    }

    fn find_by_path(&self, path: &str) -> Result<Option<TrackId>, IndexError> {
        if path.is_empty() {
            return Ok(None);
        }
        Ok(as_id(&self.catalogue_get("paths", path.as_bytes())?))
    }

    fn find_by_content(&self, content_hash_hex: &str) -> Result<Option<TrackId>, IndexError> {
        if content_hash_hex.is_empty() {
            return Ok(None);
        }
        Ok(as_id(
            &self.catalogue_get("contents", content_hash_hex.as_bytes())?,
        ))
    }

    fn lookup(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        visit: &mut dyn FnMut(usize, Posting),
    ) -> Result<(), IndexError> {
        let queries = sort_queries(keys)?;
        if queries.is_empty() {
            return Ok(());
        }
        let distinct: Vec<u32> = queries.groups().map(|group| group.key()).collect();
        // One HMGET per bucket, remembering which distinct keys (by position) it asks for.
        let mut by_bucket: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (position, &key) in distinct.iter().enumerate() {
            by_bucket
                .entry(bucket_of(key, self.bucket_bits))
                .or_default()
                .push(position);
        }
        let mut asked: Vec<Vec<usize>> = Vec::with_capacity(by_bucket.len());
        let commands: Vec<(u16, Cmd)> = by_bucket
            .into_iter()
            .map(|(bucket, positions)| {
                let mut command = redis::cmd("HMGET");
                command.arg(self.keys.bucket(bucket));
                for &position in &positions {
                    command.arg(&field_of(distinct[position])[..]);
                }
                asked.push(positions);
                (self.bucket_slots[bucket as usize], command)
            })
            .collect();
        let live_key = self.keys.catalogue("live");
        // The bitmap is read before the buckets: a track it shows live had every posting
        // written before, and keeps them for the grace period after a removal.
        let (bitmap, values) = self.link.run("looking up postings", || async {
            let mut command = redis::cmd("GET");
            command.arg(&live_key);
            let bitmap = self.catalogue_call_owned(command, false).await?;
            let values = self.link.exec_spread(&commands, false).await?;
            Ok((bitmap, values))
        })?;
        if bitmap == Value::Nil {
            self.check_no_tracks_without_bitmap()?;
        }
        let bitmap = as_bytes(&bitmap).unwrap_or_default();

        let mut lists: Vec<Option<Vec<Posting>>> = vec![None; distinct.len()];
        for (positions, value) in asked.iter().zip(&values) {
            let Value::Array(fields) = value else {
                return Err(self.corrupt("a bucket read answered in an unknown form"));
            };
            for (&position, field) in positions.iter().zip(fields) {
                let Some(bytes) = as_bytes(field) else {
                    continue;
                };
                let mut list = Vec::new();
                decode_chunks(bytes, |posting| {
                    if is_live(bitmap, posting.track) {
                        list.push(posting);
                    }
                })
                .map_err(|what| {
                    self.corrupt(format!("postings of key {}: {what}", distinct[position]))
                })?;
                // Concurrent writers append in any order, and a retried append may repeat.
                list.sort_unstable();
                list.dedup();
                lists[position] = Some(list);
            }
        }
        for (group, list) in queries.groups().zip(&lists) {
            let Some(list) = list else {
                continue;
            };
            if list.len() > max_postings_per_key {
                continue;
            }
            group.visit(list, &mut *visit);
        }
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, IndexError> {
        let command = self.catalogue_command(Script::Stats);
        let value = self.link.run("reading statistics", || {
            self.catalogue_call(&command, false)
        })?;
        let Value::Array(items) = value else {
            return Err(self.corrupt("statistics answered in an unknown form"));
        };
        let number = |i: usize| items.get(i).and_then(as_int).unwrap_or(0).max(0) as u64;
        Ok(StoreStats {
            n_tracks: number(0),
            n_postings: number(1),
            total_duration_s: number(2) as f64 / 1e6,
            bytes_on_disk: 0,
            n_keys: number(3),
        })
    }

    fn update_metadata(&self, id: TrackId, info: &TrackInfo) -> Result<bool, IndexError> {
        // Compare and set: a concurrent edit makes the script refuse, and the loop retries
        // on the fresh entry.
        for _ in 0..16 {
            let value = self.catalogue_get("tracks", id.to_string().as_bytes())?;
            let Some(old_json) = as_bytes(&value) else {
                return Ok(false);
            };
            let merged = merged_metadata(&self.parse_info(id, old_json)?, info);
            let new_json = serde_json::to_vec(&merged).map_err(|e| IndexError::InvalidTrack {
                reason: format!("cannot be serialised: {e}"),
            })?;
            let mut command = self.catalogue_command(Script::Update);
            command.arg(id).arg(old_json).arg(&new_json);
            let reply = self
                .link
                .run("updating metadata", || self.catalogue_call(&command, true))?;
            match as_int(&reply) {
                Some(0) => return Ok(false),
                Some(1) => return Ok(true),
                _ => continue,
            }
        }
        Err(IndexError::Backend {
            dir: self.link.name.clone(),
            doing: "updating metadata",
            reason: "the entry kept changing under 16 attempts".into(),
        })
    }

    fn record_scan(
        &self,
        query: TrackId,
        examined: RangeInclusive<TrackId>,
        found: &[(TrackId, Vec<u8>)],
    ) -> Result<bool, IndexError> {
        validate_scan(query, &examined, found)?;
        let mut command = self.catalogue_command(Script::RecordScan);
        command
            .arg(query)
            .arg(*examined.start())
            .arg(*examined.end());
        for (reference, payload) in found {
            command.arg(*reference).arg(&payload[..]);
        }
        let reply = self
            .link
            .run("recording a scan", || self.catalogue_call(&command, true))?;
        Ok(as_int(&reply) == Some(1))
    }

    fn scan_mark(&self, query: TrackId) -> Result<Option<TrackId>, IndexError> {
        Ok(as_id(
            &self.catalogue_get("marks", query.to_string().as_bytes())?,
        ))
    }

    fn relations(&self, track: Option<TrackId>) -> Result<Vec<Relation>, IndexError> {
        let mut command = self.catalogue_command(Script::Relations);
        command.arg(track.map(|id| id.to_string()).unwrap_or_default());
        let value = self
            .link
            .run("reading relations", || self.catalogue_call(&command, false))?;
        let Value::Array(items) = value else {
            return Err(self.corrupt("relations answered in an unknown form"));
        };
        let mut out = Vec::with_capacity(items.len() / 3);
        for triple in items.chunks_exact(3) {
            let (Some(query), Some(reference)) = (as_id(&triple[0]), as_id(&triple[1])) else {
                return Err(self.corrupt("a relation names no track"));
            };
            out.push(Relation {
                query,
                reference,
                payload: as_bytes(&triple[2]).unwrap_or_default().to_vec(),
            });
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropping a runtime waits for its blocking threads, which tokio forbids inside
        // another runtime (a store dropped by async code); there it is let go in the
        // background instead.
        // Elsewhere the fields drop in order, the connection before its runtime.
        if tokio::runtime::Handle::try_current().is_ok()
            && let Some(runtime) = self.runtime.take()
        {
            runtime.shutdown_background();
        }
    }
}

/// Waits for `future` on the store's own `runtime`. From inside another tokio runtime (an
/// async caller that did not move the call to a blocking thread) a direct `block_on` would
/// panic, so there the wait happens on a scoped thread outside any runtime instead.
fn wait<T: Send>(runtime: &tokio::runtime::Runtime, future: impl Future<Output = T> + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    std::thread::scope(
        |scope| match scope.spawn(|| runtime.block_on(future)).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_script_with_nothing_left_to_do_still_writes() {
        // A retried call whose first attempt was applied finds nothing to do; from Redis
        // 7.2 its `WAIT` covers only what it propagated, so it must still write. A write
        // shows as one more change since the last save (the test nodes never save).
        let cluster = testcluster::TestCluster::start(3, 0).expect("a 3-master cluster");
        let store =
            RedisStore::open(&cluster.url("prefix=touch&durable=0&buckets=2"), "p").expect("open");
        let changes = |key: &str| -> u64 {
            let port = cluster.master_of(key).expect("the key's master");
            testcluster::info_field(port, "persistence", "rdb_changes_since_last_save")
                .expect("INFO persistence shows the changes")
                .parse()
                .expect("a count")
        };
        let run = |slot: u16, command: &Cmd| {
            store
                .link
                .block_on(store.link.exec(slot, std::slice::from_ref(command), false))
                .expect("the script runs")
        };
        let bucket = store.keys.bucket(0);
        let mut append = redis::cmd("EVALSHA");
        append
            .arg(&store.shas[Script::Append.index()])
            .arg(1)
            .arg(&bucket)
            .arg(&[0u8, 0, 0, 1][..])
            .arg(&b"a chunk"[..]);
        let mut meta = store.catalogue_command(Script::Meta);
        meta.arg(FORMAT_VERSION).arg("p").arg(2).arg("1");
        let mut remove = store.catalogue_command(Script::Remove);
        remove.arg(4_000_000_000u32);
        let bucket_slot = slot_of(bucket.as_bytes());
        run(bucket_slot, &append);
        for (key, slot, command) in [
            (bucket.as_str(), bucket_slot, &append),
            (store.catalogue_key.as_str(), store.catalogue_slot, &meta),
            (store.catalogue_key.as_str(), store.catalogue_slot, &remove),
        ] {
            let before = changes(key);
            run(slot, command);
            assert!(
                changes(key) > before,
                "{key}: a call with nothing to do wrote nothing"
            );
        }
        // What was there is unchanged.
        let mut read = redis::cmd("HGET");
        read.arg(&bucket).arg(&[0u8, 0, 0, 1][..]);
        assert_eq!(as_bytes(&run(bucket_slot, &read)[0]), Some(&b"a chunk"[..]));
    }

    #[test]
    fn urls_parse_with_defaults_and_options() {
        let options = RedisOptions::from_url("redis://127.0.0.1:7000,127.0.0.1:7001").expect("ok");
        assert_eq!(
            options.nodes,
            vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(options.prefix, "cratedigger");
        assert_eq!(options.bucket_bits, DEFAULT_BUCKET_BITS);
        let options =
            RedisOptions::from_url("redis://h:1/?prefix=lib&buckets=4&durable=0&timeout_s=5")
                .expect("ok");
        assert_eq!(
            (
                options.prefix.as_str(),
                options.bucket_bits,
                options.durable_replicas
            ),
            ("lib", 4, 0)
        );
        assert_eq!(options.timeout, Duration::from_secs(5));
        for bad in [
            "http://h:1",
            "redis://",
            "redis://h:1?prefix={x}",
            "redis://h:1?buckets=40",
            "redis://h:1?nope=1",
            "redis://h:1?durable=x",
        ] {
            assert!(RedisOptions::from_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn messages_never_show_passwords() {
        let options = RedisOptions::from_url("redis://me:secret@h:1,h:2").expect("ok");
        assert_eq!(options.nodes[0], "redis://me:secret@h:1");
        assert!(!options.display_name().contains("secret"));
        let error = RedisOptions::from_url("redis://me:secret@h:1?bad").expect_err("bad");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
