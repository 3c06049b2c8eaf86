//! Persistent [`Store`] on LMDB (through heed): one environment per store directory.
//!
//! Layout, all in one environment so every change is a single transaction:
//!
//! | database     | key                        | value                                  |
//! |--------------|----------------------------|----------------------------------------|
//! | `meta`       | name                       | format version (u32 BE) / params (UTF-8) |
//! | `postings`   | hash key (u32 BE)          | posting, 12 bytes, `DUP_SORT\|DUP_FIXED` |
//! | `tracks`     | track id (u32 BE)          | [`TrackInfo`] as JSON                  |
//! | `paths`      | catalogue key of the path  | track id (u32 BE)                      |
//! | `contents`   | catalogue key of the hash  | track id (u32 BE)                      |
//! | `track_keys` | track id (u32 BE)          | the track's distinct keys, delta varint |
//! | `counters`   | name                       | u64 BE                                 |
//!
//! Big-endian keys make LMDB's byte order equal numeric order, so sorted batches walk the
//! B-tree front to back. The number of postings is LMDB's own entry count of `postings`,
//! which is exact and cannot drift from the data, so it needs no counter.

use std::fs;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{
    CommitOrAbort, CommitToken, CompactionOption, Database, DatabaseFlags, Env, EnvFlags,
    EnvOpenOptions, MdbError, OnCommit, PutFlags, RoTxn, RwTxn, WithoutTls,
};

use crate::codec::{
    POSTING_LEN_BYTES, catalogue_key, catalogue_key_is_exact, decode_key_list, decode_posting,
    duration_us, encode_key_list, encode_posting, prepare_entries, query_groups, query_index,
    query_key, sort_queries, validate_track_info,
};
use crate::{
    Entry, FORMAT_VERSION, IndexError, Posting, Store, StoreMeta, StoreStats, TrackId, TrackInfo,
};

/// Address space reserved for the memory map. LMDB only reserves virtual addresses, and the
/// file grows as data is written, so this is a ceiling rather than an allocation; 1 TiB holds
/// far more than the ~10^9 postings a large library produces.
#[cfg(target_pointer_width = "64")]
const MAP_SIZE_BYTES: usize = 1 << 40;
/// 32-bit address spaces cannot map more than a fraction of 4 GiB.
#[cfg(not(target_pointer_width = "64"))]
const MAP_SIZE_BYTES: usize = 1 << 30;

/// Named databases plus headroom for later format versions.
const MAX_DBS: u32 = 16;

/// Concurrent read transactions across all processes; each costs 64 bytes of lock file,
/// and parallel query workers each hold one.
const MAX_READERS: u32 = 1024;

const META_FORMAT_VERSION: &[u8] = b"format_version";
const META_FINGERPRINT_PARAMS: &[u8] = b"fingerprint_params";
const COUNTER_NEXT_TRACK_ID: &[u8] = b"next_track_id";
const COUNTER_N_KEYS: &[u8] = b"n_keys";
const COUNTER_TOTAL_DURATION_US: &[u8] = b"total_duration_us";

type BytesDb<'t> = Database<'t, Bytes, Bytes>;

/// The store's databases; `'t` is `'static` once their creating transaction has committed.
#[derive(Clone, Copy)]
struct Dbs<'t> {
    meta: BytesDb<'t>,
    postings: BytesDb<'t>,
    tracks: BytesDb<'t>,
    paths: BytesDb<'t>,
    contents: BytesDb<'t>,
    track_keys: BytesDb<'t>,
    counters: BytesDb<'t>,
}

impl OnCommit for Dbs<'_> {
    type Committed = Dbs<'static>;

    fn on_commit(self, token: &CommitToken) -> Self::Committed {
        Dbs {
            meta: self.meta.on_commit(token),
            postings: self.postings.on_commit(token),
            tracks: self.tracks.on_commit(token),
            paths: self.paths.on_commit(token),
            contents: self.contents.on_commit(token),
            track_keys: self.track_keys.on_commit(token),
            counters: self.counters.on_commit(token),
        }
    }
}

/// Creates or opens every database through `one(name, flags)`, the single place that lists
/// them, so the create and open paths cannot disagree; `None` if any is missing.
fn build_dbs<'t, E>(
    mut one: impl FnMut(&'static str, DatabaseFlags) -> Result<Option<BytesDb<'t>>, E>,
) -> Result<Option<Dbs<'t>>, E> {
    let plain = DatabaseFlags::empty();
    // Fixed-size duplicates are packed back to back in their pages with no per-value
    // header, which is what keeps a posting close to its 12 payload bytes on disk.
    let dup_fixed = DatabaseFlags::DUP_SORT | DatabaseFlags::DUP_FIXED;
    let (
        Some(meta),
        Some(postings),
        Some(tracks),
        Some(paths),
        Some(contents),
        Some(track_keys),
        Some(counters),
    ) = (
        one("meta", plain)?,
        one("postings", dup_fixed)?,
        one("tracks", plain)?,
        one("paths", plain)?,
        one("contents", plain)?,
        one("track_keys", plain)?,
        one("counters", plain)?,
    )
    else {
        return Ok(None);
    };
    Ok(Some(Dbs {
        meta,
        postings,
        tracks,
        paths,
        contents,
        track_keys,
        counters,
    }))
}

/// Running totals kept next to the data they summarise.
struct Counters {
    next_track_id: u64,
    n_keys: u64,
    total_duration_us: u64,
}

/// A [`Store`] in an LMDB environment on disk.
///
/// Any number of processes may open the same directory. Readers never block; writers
/// queue on LMDB's own lock, and readers see only committed tracks.
pub struct LmdbStore {
    dir: PathBuf,
    env: Env<WithoutTls>,
    dbs: Dbs<'static>,
    meta: StoreMeta,
    read_only: bool,
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl LmdbStore {
    /// Opens the store in `dir` for reading and writing, creating it if needed.
    ///
    /// An existing store must have been built with this [`FORMAT_VERSION`] and exactly these
    /// `fingerprint_params`, otherwise [`IndexError::Incompatible`] is returned.
    pub fn open(dir: &Path, fingerprint_params: &str) -> Result<Self, IndexError> {
        fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            dir: dir.to_owned(),
            source,
        })?;
        let env = open_env(dir, false)?;
        // A crashed process leaves its reader slot behind, and LMDB cannot reuse pages such a
        // reader might still see, so the file would keep growing; clear those slots now.
        env.clear_stale_readers()
            .map_err(|e| map_heed(dir, "clearing stale readers", e))?;
        let expected = expected_meta(fingerprint_params);
        let wtxn = env
            .write_txn()
            .map_err(|e| map_heed(dir, "starting to open the store", e))?;
        let outcome = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let dbs = build_dbs(|name, flags| {
                    opener
                        .database_options()
                        .types::<Bytes, Bytes>()
                        .name(name)
                        .flags(flags)
                        .create(wtxn)
                        .map(Some)
                })?;
                let Some(dbs) = dbs else {
                    // Creation either succeeds or returns an error, so this cannot happen.
                    return Ok(CommitOrAbort::Abort(corrupt(dir, "a database is missing")));
                };
                match check_meta(dir, dbs, wtxn, &expected)? {
                    Ok(true) => Ok(CommitOrAbort::Commit(dbs)),
                    Ok(false) => {
                        // A store without meta must be brand new; data without meta means
                        // the directory holds something this code did not write.
                        if !dbs.postings.is_empty(wtxn)? || !dbs.tracks.is_empty(wtxn)? {
                            return Ok(CommitOrAbort::Abort(corrupt(
                                dir,
                                "it holds tracks but no format metadata",
                            )));
                        }
                        write_meta(dbs, wtxn, &expected)?;
                        Ok(CommitOrAbort::Commit(dbs))
                    }
                    Err(error) => Ok(CommitOrAbort::Abort(error)),
                }
            })
            .map_err(|e| map_heed(dir, "opening the store", e))?;
        let dbs = Result::from(outcome)?;
        Ok(Self {
            dir: dir.to_owned(),
            env,
            dbs,
            meta: expected,
            read_only: false,
        })
    }

    /// Opens an existing store in `dir` for reading only.
    ///
    /// Works while other processes write to the store; each call sees the latest committed
    /// state when it starts.
    pub fn open_read_only(dir: &Path, fingerprint_params: &str) -> Result<Self, IndexError> {
        if !dir.join("data.mdb").is_file() {
            return Err(IndexError::NotFound {
                dir: dir.to_owned(),
            });
        }
        let env = open_env(dir, true)?;
        let expected = expected_meta(fingerprint_params);
        let rtxn = env
            .read_txn()
            .map_err(|e| map_heed(dir, "starting to open the store", e))?;
        let outcome = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                let dbs = build_dbs(|name, flags| {
                    opener
                        .database_options()
                        .types::<Bytes, Bytes>()
                        .name(name)
                        .flags(flags)
                        .open(rtxn)
                })?;
                let Some(dbs) = dbs else {
                    return Ok(CommitOrAbort::Abort(IndexError::NotFound {
                        dir: dir.to_owned(),
                    }));
                };
                match check_meta(dir, dbs, rtxn, &expected)? {
                    Ok(true) => Ok(CommitOrAbort::Commit(dbs)),
                    Ok(false) => Ok(CommitOrAbort::Abort(IndexError::NotFound {
                        dir: dir.to_owned(),
                    })),
                    Err(error) => Ok(CommitOrAbort::Abort(error)),
                }
            })
            .map_err(|e| map_heed(dir, "opening the store", e))?;
        let dbs = Result::from(outcome)?;
        Ok(Self {
            dir: dir.to_owned(),
            env,
            dbs,
            meta: expected,
            read_only: true,
        })
    }

    /// The directory holding the store's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a compacted copy of the store into `dest_dir` and returns its size in bytes.
    ///
    /// LMDB never shrinks its file: pages freed by removals, and by the copy-on-write of
    /// earlier versions during indexing, are only reused for later writes. The copy leaves
    /// them out, so it is the smallest file holding the same data. It is a complete store;
    /// swap it in for the original while no process has either open. `dest_dir` is created
    /// if needed and must not already hold a store.
    pub fn copy_compacted(&self, dest_dir: &Path) -> Result<u64, IndexError> {
        let io_error = |source| IndexError::Io {
            dir: dest_dir.to_owned(),
            source,
        };
        fs::create_dir_all(dest_dir).map_err(io_error)?;
        // create_new refuses to overwrite, so an existing store is never clobbered.
        let dest = dest_dir.join("data.mdb");
        let mut file = fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(io_error)?;
        let copied = self
            .env
            .copy_to_file(&mut file, CompactionOption::Enabled)
            .map_err(self.err("writing a compacted copy"))
            .and_then(|()| file.sync_all().map_err(io_error))
            .and_then(|()| file.metadata().map_err(io_error));
        match copied {
            Ok(metadata) => Ok(metadata.len()),
            Err(error) => {
                // A partial copy would look like a store, so it must not be left behind; the
                // copy error matters more than a failure to delete.
                let _ = fs::remove_file(&dest);
                Err(error)
            }
        }
    }

    fn err(&self, doing: &'static str) -> impl Fn(heed::Error) -> IndexError + '_ {
        move |error| map_heed(&self.dir, doing, error)
    }

    fn corrupt(&self, what: impl Into<String>) -> IndexError {
        corrupt(&self.dir, what)
    }

    fn write_txn(&self) -> Result<RwTxn<'_>, IndexError> {
        if self.read_only {
            return Err(IndexError::ReadOnly);
        }
        self.env
            .write_txn()
            .map_err(self.err("starting a write transaction"))
    }

    fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, IndexError> {
        self.env
            .read_txn()
            .map_err(self.err("starting a read transaction"))
    }

    fn decode_info(&self, id: TrackId, bytes: &[u8]) -> Result<TrackInfo, IndexError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(format!("track {id} has an unreadable catalogue entry: {e}")))
    }

    fn decode_id(&self, bytes: &[u8]) -> Result<TrackId, IndexError> {
        let bytes: [u8; 4] = bytes
            .try_into()
            .map_err(|_| self.corrupt("a catalogue index entry is not a 4-byte track id"))?;
        Ok(TrackId::from_be_bytes(bytes))
    }

    fn read_counters(&self, txn: &RoTxn) -> Result<Counters, IndexError> {
        let read = |name: &[u8], default: u64| -> Result<u64, IndexError> {
            match self
                .dbs
                .counters
                .get(txn, name)
                .map_err(self.err("reading counters"))?
            {
                None => Ok(default),
                Some(bytes) => {
                    let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
                        self.corrupt(format!(
                            "counter {} is not 8 bytes",
                            String::from_utf8_lossy(name)
                        ))
                    })?;
                    Ok(u64::from_be_bytes(bytes))
                }
            }
        };
        Ok(Counters {
            // Ids start at 1 so callers may use 0 as "no track".
            next_track_id: read(COUNTER_NEXT_TRACK_ID, 1)?,
            n_keys: read(COUNTER_N_KEYS, 0)?,
            total_duration_us: read(COUNTER_TOTAL_DURATION_US, 0)?,
        })
    }

    fn write_counters(&self, wtxn: &mut RwTxn, counters: &Counters) -> Result<(), IndexError> {
        for (name, value) in [
            (COUNTER_NEXT_TRACK_ID, counters.next_track_id),
            (COUNTER_N_KEYS, counters.n_keys),
            (COUNTER_TOTAL_DURATION_US, counters.total_duration_us),
        ] {
            self.dbs
                .counters
                .put(wtxn, name, &value.to_be_bytes())
                .map_err(self.err("writing counters"))?;
        }
        Ok(())
    }

    /// Looks up a path or content hash in `index`, verifying long values whose keys are
    /// hashed; `field` picks the string to verify from the stored catalogue entry.
    fn find_in(
        &self,
        txn: &RoTxn,
        index: BytesDb<'static>,
        value: &str,
        field: fn(&TrackInfo) -> &str,
    ) -> Result<Option<TrackId>, IndexError> {
        if value.is_empty() {
            return Ok(None);
        }
        let Some(bytes) = index
            .get(txn, &catalogue_key(value))
            .map_err(self.err("reading the catalogue"))?
        else {
            return Ok(None);
        };
        let id = self.decode_id(bytes)?;
        if catalogue_key_is_exact(value) {
            return Ok(Some(id));
        }
        let info = self.track_in(txn, id)?;
        Ok(info.filter(|info| field(info) == value).map(|_| id))
    }

    fn track_in(&self, txn: &RoTxn, id: TrackId) -> Result<Option<TrackInfo>, IndexError> {
        match self
            .dbs
            .tracks
            .get(txn, &id.to_be_bytes())
            .map_err(self.err("reading the catalogue"))?
        {
            None => Ok(None),
            Some(bytes) => self.decode_info(id, bytes).map(Some),
        }
    }

    /// Removes a track inside `wtxn`; returns whether it existed.
    fn remove_in(&self, wtxn: &mut RwTxn, id: TrackId) -> Result<bool, IndexError> {
        let id_key = id.to_be_bytes();
        let Some(info) = self.track_in(wtxn, id)? else {
            return Ok(false);
        };
        let keys = match self
            .dbs
            .track_keys
            .get(wtxn, &id_key)
            .map_err(self.err("reading a track's keys"))?
        {
            Some(bytes) => decode_key_list(bytes)
                .map_err(|what| self.corrupt(format!("track {id}: {what}")))?,
            None => return Err(self.corrupt(format!("track {id} has no key list"))),
        };

        let mut doomed: Vec<[u8; POSTING_LEN_BYTES]> = Vec::new();
        let mut n_keys_emptied = 0u64;
        for key in keys {
            let key_bytes = key.to_be_bytes();
            doomed.clear();
            let mut has_other_tracks = false;
            // The iterator borrows the transaction, so it lives in its own scope that ends
            // before the deletions below need the transaction mutably.
            {
                let duplicates = self
                    .dbs
                    .postings
                    .get_duplicates(wtxn, &key_bytes)
                    .map_err(self.err("reading postings"))?;
                // heed exposes no seek within a key's duplicates, so this walks them from
                // the start; values sort by track id first, so it stops right after ours.
                for item in duplicates.into_iter().flatten() {
                    let (_, value) = item.map_err(self.err("reading postings"))?;
                    let posting = decode_posting(value).ok_or_else(|| {
                        self.corrupt(format!("posting of key {key} is malformed"))
                    })?;
                    if posting.track < id {
                        has_other_tracks = true;
                    } else if posting.track == id {
                        doomed.push(encode_posting(&posting));
                    } else {
                        has_other_tracks = true;
                        break;
                    }
                }
            }
            for value in &doomed {
                self.dbs
                    .postings
                    .delete_one_duplicate(wtxn, &key_bytes, value)
                    .map_err(self.err("deleting postings"))?;
            }
            if !doomed.is_empty() && !has_other_tracks {
                n_keys_emptied += 1;
            }
        }

        let tracks = self.dbs.tracks;
        let track_keys = self.dbs.track_keys;
        tracks
            .delete(wtxn, &id_key)
            .map_err(self.err("deleting a track"))?;
        track_keys
            .delete(wtxn, &id_key)
            .map_err(self.err("deleting a track"))?;
        for (index, value) in [
            (self.dbs.paths, info.path.as_str()),
            (self.dbs.contents, info.content_hash.as_str()),
        ] {
            if value.is_empty() {
                continue;
            }
            let key = catalogue_key(value);
            let owner = index
                .get(wtxn, &key)
                .map_err(self.err("reading the catalogue"))?
                .map(|bytes| self.decode_id(bytes))
                .transpose()?;
            if owner == Some(id) {
                index
                    .delete(wtxn, &key)
                    .map_err(self.err("deleting a track"))?;
            }
        }

        let mut counters = self.read_counters(wtxn)?;
        counters.n_keys = counters.n_keys.saturating_sub(n_keys_emptied);
        counters.total_duration_us = counters
            .total_duration_us
            .saturating_sub(duration_us(info.duration_s));
        self.write_counters(wtxn, &counters)?;
        Ok(true)
    }

    /// Appends one posting after the existing ones of its key.
    fn append_posting(
        &self,
        wtxn: &mut RwTxn,
        key: &[u8; 4],
        value: &[u8; POSTING_LEN_BYTES],
    ) -> Result<(), IndexError> {
        // New track ids are larger than every stored one and values sort by track id first,
        // so the new value belongs at the end of the key's duplicates. APPEND_DUP skips the
        // search and fills pages completely instead of splitting them in half. LMDB checks
        // the order itself and answers KeyExist instead of corrupting anything, so an
        // unexpected order just falls back to an ordinary sorted insert.
        match self
            .dbs
            .postings
            .put_with_flags(wtxn, PutFlags::APPEND_DUP, key, value)
        {
            Ok(()) => Ok(()),
            Err(heed::Error::Mdb(MdbError::KeyExist)) => {
                match self
                    .dbs
                    .postings
                    .put_with_flags(wtxn, PutFlags::NO_DUP_DATA, key, value)
                {
                    // An identical posting is already stored, which is all we wanted.
                    Ok(()) | Err(heed::Error::Mdb(MdbError::KeyExist)) => Ok(()),
                    Err(error) => Err(map_heed(&self.dir, "writing postings", error)),
                }
            }
            Err(error) => Err(map_heed(&self.dir, "writing postings", error)),
        }
    }

    /// Inserts sorted, deduplicated postings; returns how many keys were new.
    fn insert_postings(
        &self,
        wtxn: &mut RwTxn,
        prepared: &[(u32, Posting)],
    ) -> Result<u64, IndexError> {
        let mut n_new_keys = 0u64;
        for group in prepared.chunk_by(|a, b| a.0 == b.0) {
            let key = group[0].0.to_be_bytes();
            let mut values = group.iter().map(|(_, posting)| encode_posting(posting));
            let Some(first) = values.next() else {
                continue;
            };
            // NO_OVERWRITE both inserts a new key and reports an existing one in one call,
            // which keeps the distinct-key counter exact without an extra lookup.
            match self
                .dbs
                .postings
                .put_with_flags(wtxn, PutFlags::NO_OVERWRITE, &key, &first)
            {
                Ok(()) => n_new_keys += 1,
                Err(heed::Error::Mdb(MdbError::KeyExist)) => {
                    self.append_posting(wtxn, &key, &first)?;
                }
                Err(error) => return Err(map_heed(&self.dir, "writing postings", error)),
            }
            for value in values {
                self.append_posting(wtxn, &key, &value)?;
            }
        }
        Ok(n_new_keys)
    }
}

impl Store for LmdbStore {
    fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    fn put_track(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
        replaces: Option<TrackId>,
    ) -> Result<TrackId, IndexError> {
        validate_track_info(info)?;
        // Everything below happens in one write transaction; returning early drops it, which
        // aborts it, so a failure (or a crash) leaves no trace of the new track.
        let mut wtxn = self.write_txn()?;
        if let Some(old) = replaces
            && !self.remove_in(&mut wtxn, old)?
        {
            return Err(IndexError::UnknownTrack { id: old });
        }
        if let Some(existing) =
            self.find_in(&wtxn, self.dbs.paths, &info.path, |info| &info.path)?
        {
            return Err(IndexError::PathTaken {
                path: info.path.clone(),
                existing,
            });
        }
        if let Some(existing) =
            self.find_in(&wtxn, self.dbs.contents, &info.content_hash, |info| {
                &info.content_hash
            })?
        {
            return Err(IndexError::ContentTaken {
                content_hash: info.content_hash.clone(),
                existing,
            });
        }

        let mut counters = self.read_counters(&wtxn)?;
        let id = TrackId::try_from(counters.next_track_id).map_err(|_| IndexError::IdsExhausted)?;
        let id_key = id.to_be_bytes();

        let prepared = prepare_entries(id, entries);
        counters.n_keys += self.insert_postings(&mut wtxn, &prepared)?;

        let mut keys: Vec<u32> = prepared.iter().map(|&(key, _)| key).collect();
        keys.dedup();
        self.dbs
            .track_keys
            .put(&mut wtxn, &id_key, &encode_key_list(&keys))
            .map_err(self.err("writing a track's keys"))?;

        let mut stored = info.clone();
        stored.n_postings = prepared.len() as u64;
        let json = serde_json::to_vec(&stored).map_err(|e| IndexError::InvalidTrack {
            reason: format!("cannot be serialised: {e}"),
        })?;
        self.dbs
            .tracks
            .put(&mut wtxn, &id_key, &json)
            .map_err(self.err("writing the catalogue"))?;
        for (index, value) in [
            (self.dbs.paths, stored.path.as_str()),
            (self.dbs.contents, stored.content_hash.as_str()),
        ] {
            if !value.is_empty() {
                index
                    .put(&mut wtxn, &catalogue_key(value), &id_key)
                    .map_err(self.err("writing the catalogue"))?;
            }
        }

        counters.next_track_id += 1;
        counters.total_duration_us += duration_us(stored.duration_s);
        self.write_counters(&mut wtxn, &counters)?;
        wtxn.commit().map_err(self.err("committing a track"))?;
        Ok(id)
    }

    fn remove_track(&self, id: TrackId) -> Result<bool, IndexError> {
        let mut wtxn = self.write_txn()?;
        let existed = self.remove_in(&mut wtxn, id)?;
        if existed {
            wtxn.commit().map_err(self.err("committing a removal"))?;
        }
        Ok(existed)
    }

    fn track(&self, id: TrackId) -> Result<Option<TrackInfo>, IndexError> {
        let rtxn = self.read_txn()?;
        self.track_in(&rtxn, id)
    }

    fn tracks(&self) -> Result<Vec<(TrackId, TrackInfo)>, IndexError> {
        let rtxn = self.read_txn()?;
        let mut out = Vec::new();
        for item in self
            .dbs
            .tracks
            .iter(&rtxn)
            .map_err(self.err("reading the catalogue"))?
        {
            let (key, value) = item.map_err(self.err("reading the catalogue"))?;
            let id = self.decode_id(key)?;
            out.push((id, self.decode_info(id, value)?));
        }
        Ok(out)
    }

    fn find_by_path(&self, path: &str) -> Result<Option<TrackId>, IndexError> {
        let rtxn = self.read_txn()?;
        self.find_in(&rtxn, self.dbs.paths, path, |info| &info.path)
    }

    fn find_by_content(&self, content_hash_hex: &str) -> Result<Option<TrackId>, IndexError> {
        let rtxn = self.read_txn()?;
        self.find_in(&rtxn, self.dbs.contents, content_hash_hex, |info| {
            &info.content_hash
        })
    }

    fn lookup(
        &self,
        keys: &[u32],
        visit: &mut dyn FnMut(usize, Posting),
    ) -> Result<(), IndexError> {
        let queries = sort_queries(keys)?;
        let rtxn = self.read_txn()?;
        for group in query_groups(&queries) {
            let key = query_key(group[0]);
            let Some(duplicates) = self
                .dbs
                .postings
                .get_duplicates(&rtxn, &key.to_be_bytes())
                .map_err(self.err("reading postings"))?
            else {
                continue;
            };
            for item in duplicates {
                let (_, value) = item.map_err(self.err("reading postings"))?;
                let posting = decode_posting(value)
                    .ok_or_else(|| self.corrupt(format!("posting of key {key} is malformed")))?;
                for &query in group {
                    visit(query_index(query), posting);
                }
            }
        }
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, IndexError> {
        let rtxn = self.read_txn()?;
        let counters = self.read_counters(&rtxn)?;
        let n_tracks = self
            .dbs
            .tracks
            .len(&rtxn)
            .map_err(self.err("reading statistics"))?;
        let n_postings = self
            .dbs
            .postings
            .len(&rtxn)
            .map_err(self.err("reading statistics"))?;
        let bytes_on_disk = self
            .env
            .real_disk_size()
            .map_err(self.err("reading the file size"))?;
        Ok(StoreStats {
            n_tracks,
            n_postings,
            total_duration_s: counters.total_duration_us as f64 / 1e6,
            bytes_on_disk,
            n_keys: counters.n_keys,
        })
    }
}

fn expected_meta(fingerprint_params: &str) -> StoreMeta {
    StoreMeta {
        format_version: FORMAT_VERSION,
        fingerprint_params: fingerprint_params.to_owned(),
    }
}

fn open_env(dir: &Path, read_only: bool) -> Result<Env<WithoutTls>, IndexError> {
    // Read transactions must not be tied to threads: lookups run on worker threads, and a
    // visitor may read the catalogue while a lookup's transaction is still open.
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(MAP_SIZE_BYTES)
        .max_dbs(MAX_DBS)
        .max_readers(MAX_READERS);
    if read_only {
        // SAFETY: READ_ONLY is not one of the flags that weaken LMDB's guarantees
        // (NO_SYNC, NO_META_SYNC, NO_LOCK); it only forbids write transactions.
        unsafe {
            options.flags(EnvFlags::READ_ONLY);
        }
    }
    // SAFETY: the memory map is only unsound if the files are modified behind LMDB's back.
    // Every writer goes through LMDB and its lock file, heed refuses a second open of the
    // same directory in one process, and the store directory is ours alone by contract.
    unsafe { options.open(dir) }.map_err(|e| map_heed(dir, "opening the environment", e))
}

/// Compares stored meta with `expected`: `Ok(Ok(true))` if it matches, `Ok(Ok(false))` if
/// there is none, `Ok(Err(_))` if it differs or is unreadable.
fn check_meta(
    dir: &Path,
    dbs: Dbs<'_>,
    txn: &RoTxn,
    expected: &StoreMeta,
) -> Result<Result<bool, IndexError>, heed::Error> {
    let version = dbs.meta.get(txn, META_FORMAT_VERSION)?;
    let params = dbs.meta.get(txn, META_FINGERPRINT_PARAMS)?;
    let (version, params) = match (version, params) {
        (None, None) => return Ok(Ok(false)),
        (Some(version), Some(params)) => (version, params),
        _ => return Ok(Err(corrupt(dir, "its format metadata is incomplete"))),
    };
    let Ok(version) = <[u8; 4]>::try_from(version).map(u32::from_be_bytes) else {
        return Ok(Err(corrupt(dir, "its format version is not 4 bytes")));
    };
    let Ok(params) = std::str::from_utf8(params) else {
        return Ok(Err(corrupt(
            dir,
            "its fingerprint parameters are not UTF-8",
        )));
    };
    if version != expected.format_version {
        return Ok(Err(IndexError::Incompatible {
            dir: dir.to_owned(),
            found: format!("store format version {version}"),
            expected: format!("store format version {}", expected.format_version),
        }));
    }
    if params != expected.fingerprint_params {
        return Ok(Err(IndexError::Incompatible {
            dir: dir.to_owned(),
            found: format!("fingerprint parameters `{params}`"),
            expected: format!("fingerprint parameters `{}`", expected.fingerprint_params),
        }));
    }
    Ok(Ok(true))
}

fn write_meta(dbs: Dbs<'_>, wtxn: &mut RwTxn, meta: &StoreMeta) -> Result<(), heed::Error> {
    dbs.meta.put(
        wtxn,
        META_FORMAT_VERSION,
        &meta.format_version.to_be_bytes(),
    )?;
    dbs.meta.put(
        wtxn,
        META_FINGERPRINT_PARAMS,
        meta.fingerprint_params.as_bytes(),
    )
}

fn corrupt(dir: &Path, what: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        dir: dir.to_owned(),
        what: what.into(),
    }
}

/// Translates heed errors into the variants that tell the caller what to do.
fn map_heed(dir: &Path, doing: &'static str, error: heed::Error) -> IndexError {
    match error {
        heed::Error::EnvAlreadyOpened => IndexError::AlreadyOpen {
            dir: dir.to_owned(),
        },
        heed::Error::Mdb(MdbError::MapFull) => IndexError::Full {
            dir: dir.to_owned(),
        },
        heed::Error::Mdb(
            MdbError::Corrupted
            | MdbError::PageNotFound
            | MdbError::Invalid
            | MdbError::VersionMismatch
            | MdbError::Incompatible
            | MdbError::BadValSize,
        ) => IndexError::Corrupt {
            dir: dir.to_owned(),
            what: format!("LMDB reported {error} while {doing}"),
        },
        other => IndexError::Backend {
            dir: dir.to_owned(),
            doing,
            source: Box::new(other),
        },
    }
}

/// Test hooks that damage or rewrite a store in ways the public API never would.
#[cfg(feature = "testsuite")]
#[doc(hidden)]
pub mod test_hooks {
    use super::*;

    /// Overwrites the stored format version, to test that mismatches are refused.
    pub fn set_format_version(store: &LmdbStore, version: u32) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        store
            .dbs
            .meta
            .put(&mut wtxn, META_FORMAT_VERSION, &version.to_be_bytes())
            .map_err(store.err("writing meta"))?;
        wtxn.commit().map_err(store.err("committing meta"))
    }

    /// Overwrites a track's catalogue entry with arbitrary bytes.
    pub fn set_raw_track(store: &LmdbStore, id: TrackId, bytes: &[u8]) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        store
            .dbs
            .tracks
            .put(&mut wtxn, &id.to_be_bytes(), bytes)
            .map_err(store.err("writing the catalogue"))?;
        wtxn.commit().map_err(store.err("committing"))
    }

    /// Stores a value of the wrong length under a posting key.
    pub fn add_raw_posting(store: &LmdbStore, key: u32, bytes: &[u8]) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        store
            .dbs
            .postings
            .put(&mut wtxn, &key.to_be_bytes(), bytes)
            .map_err(store.err("writing postings"))?;
        wtxn.commit().map_err(store.err("committing"))
    }

    /// Overwrites a track's key list with arbitrary bytes.
    pub fn set_raw_track_keys(
        store: &LmdbStore,
        id: TrackId,
        bytes: &[u8],
    ) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        store
            .dbs
            .track_keys
            .put(&mut wtxn, &id.to_be_bytes(), bytes)
            .map_err(store.err("writing a key list"))?;
        wtxn.commit().map_err(store.err("committing"))
    }
}
