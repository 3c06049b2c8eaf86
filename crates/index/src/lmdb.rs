//! Persistent [`Store`] on LMDB (through heed): one environment per store directory.
//!
//! # Layout (format version 5)
//!
//! All databases live in one environment, so every change is a single transaction:
//!
//! | database           | key                       | value                                    |
//! |--------------------|---------------------------|------------------------------------------|
//! | `meta`             | name                      | format version (u32 BE) / params (UTF-8) |
//! | `main_PP_a`, `_b`  | block id (u32 BE)         | the block's posting lists (see below)    |
//! | `runs`             | track id (u32 BE)         | the track's postings as a run            |
//! | `run_state`        | track id (u32 BE)         | partitions already merged (u32 BE mask)  |
//! | `deleted`          | track id (u32 BE)         | partitions already purged (u32 BE mask)  |
//! | `tracks`           | track id (u32 BE)         | [`TrackInfo`] as JSON                    |
//! | `paths`            | catalogue key of the path | track id (u32 BE)                        |
//! | `contents`         | catalogue key of the hash | track id (u32 BE)                        |
//! | `counters`         | name                      | u64 BE, or per-partition state           |
//! | `relations`        | query id ++ reference id  | the relation's payload (opaque bytes)    |
//! | `relations_rev`    | reference id ++ query id  | empty: finds the relations of a reference|
//! | `scan_marks`       | query track id (u32 BE)   | highest reference id scanned (u32 BE)    |
//! | `side_data`        | track id (u32 BE)         | the track's side data (opaque bytes)     |
//! | `anchors`          | track id (u32 BE)         | the track's anchor table (`anchors`)     |
//!
//! Every tier files a posting as the caller's (track, time, freq, span) with time and freq
//! replaced by the index of that pair in the track's *anchor table*, its distinct
//! (time, freq) pairs sorted (`anchors`), and the span by the distance to the entry at
//! time + span (a partner peak's, for the fingerprint); `put_track` writes the table, and
//! a lookup reads the posting back before it visits it. Index order is pair order, so
//! postings sort alike either way. The fingerprint repeats an anchor peak's time and
//! frequency in each of its ~15 postings; the table keeps them once.
//!
//! Postings sit in two tiers, like a two-level LSM tree.
//!
//! **Main** is compact and immutable between merges. Keys are grouped in *blocks* of 4,096
//! (`block::block_of`: `key >> 12`) and blocks split into `N_PARTITIONS` (16) partitions by
//! a hash of the block (`codec::partition_of`), and each partition `PP` has two databases,
//! `main_PP_a` and `main_PP_b`, of which the per-partition counter `current` names the
//! live one; the other is empty. A main database has one value per block holding the
//! postings of every merged track of its keys, bit-packed (`block`: a presence bitmap,
//! the block's field widths, per key its count and the width of its list's tracks, then
//! per posting, sorted by track then time, the track delta at its list's width, then time,
//! freq and span at the block's widths, each without the low bits that are zero
//! throughout the block). Only a merge writes main, in block order
//! with `MDB_APPEND` into the empty database, so its pages are full and written once.
//!
//! **The delta** is one *run* per recently added track, written whole by its `put_track`:
//! a header of per-partition section offsets, then 12-byte records (key, time, freq, span)
//! sorted by partition then key (`codec::encode_run`). Adding a track therefore writes one
//! sequential value instead of updating a B-tree all over, and removing it deletes that
//! value. `run_state` records which partitions of a run have been merged into main (and
//! marks empty sections as merged from the start); a run is deleted once all are.
//!
//! **A merge** of partition `p`, one write transaction, streams the live main of `p` and
//! the unmerged `p` sections of all runs in key order into the empty database of `p`,
//! drops the postings of tombstoned tracks, then clears the old database, flips `current`,
//! and marks `p` merged in every run and tombstone. A crash leaves the state before that
//! transaction; every state between transactions is complete and consistent. A *sweep*
//! merges every partition in turn; it runs after a `put_track` when [`LmdbOptions`] says
//! so, and on [`LmdbStore::compact`]. Merging partition by partition means the file only
//! ever holds one partition twice, not all of main.
//!
//! Tracks without a run are in main, as are the merged partitions of a run. Removing a
//! track deletes its run; if some of its postings are already in main, it also gets a
//! tombstone in `deleted`, which lookups filter and the next merge of each partition purges.
//! The catalogue entry goes at once either way. A key's main postings come from tracks
//! merged before every unmerged run of its partition was written, and track ids only grow,
//! so main postings sort before run postings and runs sort by track id.
//!
//! Counters: `next_track_id`, `total_duration_us`, `live_postings` (postings of catalogued
//! tracks), `delta_postings` (unmerged run records), `dead_postings` (postings in main of
//! removed tracks), `n_keys` (distinct keys in main, dead postings included, or in an
//! unmerged run section), `partition_merges`, and `partitions`: per partition the live
//! database (u64 BE, 0 = `a`) and its number of postings (u64 BE).
//!
//! Big-endian keys make LMDB's byte order equal numeric order, so sorted batches walk the
//! B-trees front to back.
//!
//! On the benchmark's 7.41 hours of real music (6.20M postings on 1.35M keys) a compacted
//! store takes 29.2 MB, side data included (3.94 MB per hour; format 4, blocks of 64 keys
//! and no anchor tables, took 53.5 MB; format 3, one value per key with varint and u16
//! fields, took 73.7 MB; BENCHMARKS.md, sessions 14 and 15).
//! Version 5 has blocks of 4,096 keys and anchor tables; 4 stored main in blocks of 64; 3
//! had a value per key and added the three relation databases and `side_data` to version
//! 2. Stores of other versions (1: one `DUP_SORT` database of 12-byte postings; 2: no
//! relations; 3: a value per key; 4: small blocks, no anchor tables) are refused as
//! incompatible and must be rebuilt.

use std::fs;
use std::ops::{Bound, RangeInclusive};
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{
    CommitOrAbort, CommitToken, CompactionOption, Database, DatabaseFlags, Env, EnvFlags,
    EnvOpenOptions, MdbError, OnCommit, PutFlags, RoRange, RoTxn, RwTxn, WithoutTls,
};

use crate::anchors::{self, Anchors};
use crate::block::{BLOCK_BITS, Block, BlockBuilder, List, block_of};
use crate::codec::{
    ALL_PARTITIONS, N_PARTITIONS, QueryGroup, Run, Section, SortedQueries, catalogue_key,
    catalogue_key_is_exact, duration_us, encode_run, merged_metadata, partition_of,
    prepare_entries, run_order, sort_queries, validate_scan, validate_side_data,
    validate_track_info,
};
use crate::{
    Entry, FORMAT_VERSION, IndexError, Posting, Relation, Store, StoreMeta, StoreStats, TrackId,
    TrackInfo, lookup_shard,
};
use rayon::prelude::*;

/// Address space reserved for the memory map. LMDB only reserves virtual addresses, and the
/// file grows as data is written, so this is a ceiling rather than an allocation; 1 TiB holds
/// far more than the ~10^9 postings a large library produces.
#[cfg(target_pointer_width = "64")]
const MAP_SIZE_BYTES: usize = 1 << 40;
/// 32-bit address spaces cannot map more than a fraction of 4 GiB.
#[cfg(not(target_pointer_width = "64"))]
const MAP_SIZE_BYTES: usize = 1 << 30;

/// Posting data a lookup may hold mapped into the process before it hands the pages back
/// (see `MapResidency`). A lookup of a long query reads nearly every page of a large store
/// once, in key order, and would otherwise keep all of them resident: 138 MB of a 151 MB
/// store for a 3-minute query. With 4, 8, 16 and 64 MB that query's identify peaked at
/// 157, 159, 164 and 192 MB with its lookup time unchanged (0.57-0.63 s, 22 releases at
/// 8 MB; MEMORY_NOTES.md).
const DEFAULT_LOOKUP_RESIDENT_BYTES: usize = 8 << 20;

/// Named databases (8 plus two per partition) with headroom for later format versions.
const MAX_DBS: u32 = 64;

/// Concurrent read transactions across all processes; each costs 64 bytes of lock file,
/// and parallel query workers each hold one.
const MAX_READERS: u32 = 1024;

/// Default of [`LmdbOptions::min_delta_postings`]; see [`LmdbOptions`] for the measurements.
const DEFAULT_MIN_DELTA_POSTINGS: u64 = 2_000_000;
/// Default of [`LmdbOptions::delta_fraction`]; see [`LmdbOptions`] for the measurements.
const DEFAULT_DELTA_FRACTION: f64 = 0.25;
/// Default of [`LmdbOptions::max_delta_tracks`]; see [`LmdbOptions`] for the measurements.
const DEFAULT_MAX_DELTA_TRACKS: u64 = 64;

/// A sorted walk steps forward over this many blocks before it gives up and seeks: a step
/// is a block's parse, a seek a descent from the root plus a cursor allocation.
const WALK_STEPS_BEFORE_SEEK: usize = 16;

/// A lookup of fewer keys than this runs on one thread: below it, starting the others
/// costs more than they save (a 30-second query has about 470,000).
const PARALLEL_LOOKUP_MIN_KEYS: usize = 20_000;

/// A visitor of [`Store::lookup_sharded`] with the shard it serves.
type ShardVisitor<'v, 'f> = (usize, &'v mut (dyn FnMut(usize, Posting) + Send + 'f));

/// Tries at opening the read transactions of a parallel lookup on one snapshot.
const SNAPSHOT_ATTEMPTS: usize = 4;

/// Blocks a merge encodes before writing them out, unless [`MERGE_BATCH_BYTES`] stops it
/// sooner; together they bound the merge's extra memory.
const MERGE_BATCH_BLOCKS: usize = 16;

/// Encoded bytes after which a merge writes out its batch (at the end of a block).
const MERGE_BATCH_BYTES: usize = 32 << 20;

const META_FORMAT_VERSION: &[u8] = b"format_version";
const META_FINGERPRINT_PARAMS: &[u8] = b"fingerprint_params";
const COUNTER_NEXT_TRACK_ID: &[u8] = b"next_track_id";
const COUNTER_N_KEYS: &[u8] = b"n_keys";
const COUNTER_TOTAL_DURATION_US: &[u8] = b"total_duration_us";
const COUNTER_LIVE_POSTINGS: &[u8] = b"live_postings";
const COUNTER_DELTA_POSTINGS: &[u8] = b"delta_postings";
const COUNTER_DEAD_POSTINGS: &[u8] = b"dead_postings";
const COUNTER_PARTITION_MERGES: &[u8] = b"partition_merges";
const COUNTER_PARTITIONS: &[u8] = b"partitions";

type BytesDb<'t> = Database<'t, Bytes, Bytes>;

/// The store's databases; `'t` is `'static` once their creating transaction has committed.
#[derive(Clone, Copy)]
struct Dbs<'t> {
    meta: BytesDb<'t>,
    tracks: BytesDb<'t>,
    paths: BytesDb<'t>,
    contents: BytesDb<'t>,
    runs: BytesDb<'t>,
    run_state: BytesDb<'t>,
    deleted: BytesDb<'t>,
    counters: BytesDb<'t>,
    /// Relation payloads under `query ++ reference` (big-endian ids).
    relations: BytesDb<'t>,
    /// The same relations as empty values under `reference ++ query`, to find a reference's.
    relations_rev: BytesDb<'t>,
    /// Scan mark (big-endian id) of each scanned query track.
    scan_marks: BytesDb<'t>,
    /// Side data of each track that has any.
    side_data: BytesDb<'t>,
    /// The anchor table of each track that has postings (`anchors`).
    anchors: BytesDb<'t>,
    /// Per partition, the `a` and `b` main databases.
    main: [[BytesDb<'t>; 2]; N_PARTITIONS],
}

impl OnCommit for Dbs<'_> {
    type Committed = Dbs<'static>;

    fn on_commit(self, token: &CommitToken) -> Self::Committed {
        Dbs {
            meta: self.meta.on_commit(token),
            tracks: self.tracks.on_commit(token),
            paths: self.paths.on_commit(token),
            contents: self.contents.on_commit(token),
            runs: self.runs.on_commit(token),
            run_state: self.run_state.on_commit(token),
            deleted: self.deleted.on_commit(token),
            counters: self.counters.on_commit(token),
            relations: self.relations.on_commit(token),
            relations_rev: self.relations_rev.on_commit(token),
            scan_marks: self.scan_marks.on_commit(token),
            side_data: self.side_data.on_commit(token),
            anchors: self.anchors.on_commit(token),
            main: self.main.map(|pair| pair.map(|db| db.on_commit(token))),
        }
    }
}

/// Creates or opens every database through `one(name)`, the single place that lists them,
/// so the create and open paths cannot disagree; `None` if any is missing.
fn build_dbs<'t, E>(
    mut one: impl FnMut(&str) -> Result<Option<BytesDb<'t>>, E>,
) -> Result<Option<Dbs<'t>>, E> {
    let (
        Some(meta),
        Some(tracks),
        Some(paths),
        Some(contents),
        Some(runs),
        Some(run_state),
        Some(deleted),
        Some(counters),
        Some(relations),
        Some(relations_rev),
        Some(scan_marks),
        Some(side_data),
        Some(anchors),
    ) = (
        one("meta")?,
        one("tracks")?,
        one("paths")?,
        one("contents")?,
        one("runs")?,
        one("run_state")?,
        one("deleted")?,
        one("counters")?,
        one("relations")?,
        one("relations_rev")?,
        one("scan_marks")?,
        one("side_data")?,
        one("anchors")?,
    )
    else {
        return Ok(None);
    };
    let mut main = [[meta; 2]; N_PARTITIONS];
    for (partition, pair) in main.iter_mut().enumerate() {
        for (db, slot) in pair.iter_mut().zip(["a", "b"]) {
            let Some(opened) = one(&format!("main_{partition:02}_{slot}"))? else {
                return Ok(None);
            };
            *db = opened;
        }
    }
    Ok(Some(Dbs {
        meta,
        tracks,
        paths,
        contents,
        runs,
        run_state,
        deleted,
        counters,
        relations,
        relations_rev,
        scan_marks,
        side_data,
        anchors,
        main,
    }))
}

/// One partition of main.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PartitionState {
    /// 0 if `main_PP_a` is live, 1 if `main_PP_b` is.
    current: u64,
    /// Postings in the live database, removed tracks' included.
    postings: u64,
}

/// Running totals and tier bookkeeping kept next to the data they describe.
struct Counters {
    next_track_id: u64,
    n_keys: u64,
    total_duration_us: u64,
    live_postings: u64,
    delta_postings: u64,
    dead_postings: u64,
    partition_merges: u64,
    partitions: [PartitionState; N_PARTITIONS],
}

impl Counters {
    fn main_postings(&self) -> u64 {
        self.partitions.iter().map(|p| p.postings).sum()
    }
}

/// When a store merges its delta into main (see the module docs for the two tiers), and
/// how much of its memory map a lookup keeps resident.
///
/// A sweep (a merge of every partition) runs after a `put_track` once the unmerged run
/// postings plus the removed tracks' postings still in main exceed
/// `max(min_delta_postings, delta_fraction × main postings)`, or once more than
/// `max_delta_tracks` tracks have unmerged runs.
///
/// A sweep rewrites all of main, so its cost grows with the store; the fraction keeps the
/// total merge work linear in the store (each posting is rewritten about
/// `1 + 1 / delta_fraction` times over its life). Runs are cheap to write and store (12
/// bytes a posting, written once), but every lookup key checks each unmerged run of its
/// partition, which is what `max_delta_tracks` bounds.
///
/// The defaults (2,000,000 postings, 0.25, 64 tracks) come from `tests/bench.rs`
/// (`lmdb_library`: 170 tracks of 65,000 skewed postings, 2 cores, ext4). Indexing all
/// tracks took 7.4 s with 1M/0.25, 7.0 s with 2M/0.25, 6.4 s with 2M/0.5 and 5.9 s with
/// 4M/0.25, while an uncapped lookup with the delta left at the end cost 0.10, 0.11, 0.13
/// and 0.15 µs per key (9, 14, 28 and 46 runs; 0.09 fully merged), and the file ended at
/// 14-15 bytes per posting in every case (format 3, a value per key). 2M/0.25 keeps
/// indexing within 20% of the fastest and lookups within 20% of a fully merged store.
#[derive(Clone, Debug, PartialEq)]
pub struct LmdbOptions {
    min_delta_postings: u64,
    delta_fraction: f64,
    max_delta_tracks: u64,
    lookup_resident_bytes: usize,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        Self {
            min_delta_postings: DEFAULT_MIN_DELTA_POSTINGS,
            delta_fraction: DEFAULT_DELTA_FRACTION,
            max_delta_tracks: DEFAULT_MAX_DELTA_TRACKS,
            lookup_resident_bytes: DEFAULT_LOOKUP_RESIDENT_BYTES,
        }
    }
}

impl LmdbOptions {
    /// The delta is not merged while it holds this many postings or fewer (0 merges after
    /// every put that adds postings, which tests use to exercise merges).
    pub fn min_delta_postings(mut self, postings: u64) -> Self {
        self.min_delta_postings = postings;
        self
    }

    /// The delta is not merged while it holds this fraction of main's postings or fewer;
    /// negative and NaN values count as zero.
    pub fn delta_fraction(mut self, fraction: f64) -> Self {
        self.delta_fraction = if fraction > 0.0 { fraction } else { 0.0 };
        self
    }

    /// The delta is merged once more than this many tracks have unmerged runs, whatever
    /// their size.
    pub fn max_delta_tracks(mut self, tracks: u64) -> Self {
        self.max_delta_tracks = tracks;
        self
    }

    /// A lookup hands the store's pages it has read back to the kernel whenever it has read
    /// about this many bytes since it last did (0: after every read, which tests use), so
    /// the map adds at most this much to the process's resident memory, plus 64 KiB for
    /// each place it reads at once (16 partitions, and 16 per unmerged run).
    pub fn lookup_resident_bytes(mut self, bytes: usize) -> Self {
        self.lookup_resident_bytes = bytes;
        self
    }

    fn wants_merge(&self, counters: &Counters, delta_tracks: u64) -> bool {
        // `as` saturates, so a huge fraction just means "never by fraction".
        let by_fraction = (counters.main_postings() as f64 * self.delta_fraction) as u64;
        let threshold = self.min_delta_postings.max(by_fraction);
        counters
            .delta_postings
            .saturating_add(counters.dead_postings)
            > threshold
            || delta_tracks > self.max_delta_tracks
    }
}

/// A track's run as read from the store.
#[derive(Clone, Copy)]
struct LoadedRun<'t> {
    track: TrackId,
    /// Partitions already merged into main (or empty from the start).
    merged: u32,
    run: Run<'t>,
}

impl LoadedRun<'_> {
    fn is_live_in(&self, partition: usize) -> bool {
        self.merged & partition_bit(partition) == 0
    }
}

fn partition_bit(partition: usize) -> u32 {
    1 << partition
}

/// A [`Store`] in an LMDB environment on disk.
///
/// Any number of processes may open the same directory. Readers never block; writers
/// queue on LMDB's own lock, and readers see only committed tracks.
pub struct LmdbStore {
    dir: PathBuf,
    env: Env<WithoutTls>,
    /// A shared lock on the store's lock file, held for the handle's life (dropped after
    /// `env`, fields drop in order); None where the file system offers no locks or a
    /// read-only open found no lock file. See [`LmdbStore::compact_in_place`].
    lock: Option<fs::File>,
    dbs: Dbs<'static>,
    meta: StoreMeta,
    read_only: bool,
    options: LmdbOptions,
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .field("read_only", &self.read_only)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl LmdbStore {
    /// Opens the store in `dir` for reading and writing, creating it if needed, with the
    /// default [`LmdbOptions`].
    ///
    /// An existing store must have been built with this [`FORMAT_VERSION`] and exactly these
    /// `fingerprint_params`, otherwise [`IndexError::Incompatible`] is returned.
    pub fn open(dir: &Path, fingerprint_params: &str) -> Result<Self, IndexError> {
        Self::open_with_options(dir, fingerprint_params, LmdbOptions::default())
    }

    /// Like [`LmdbStore::open`], with a chosen merge policy.
    pub fn open_with_options(
        dir: &Path,
        fingerprint_params: &str,
        options: LmdbOptions,
    ) -> Result<Self, IndexError> {
        fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            dir: dir.to_owned(),
            source,
        })?;
        let lock = lock_shared(dir, false)?;
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
                // A store of another format version may lack some of these databases;
                // creating them is harmless because such a store aborts this transaction.
                let dbs = build_dbs(|name| {
                    opener
                        .database_options()
                        .types::<Bytes, Bytes>()
                        .name(name)
                        .create(wtxn)
                        .map(Some)
                })?;
                let Some(dbs) = dbs else {
                    // Creation either succeeds or returns an error, so this cannot happen.
                    return Ok(CommitOrAbort::Abort(corrupt(dir, "a database is missing")));
                };
                match check_meta(dir, dbs.meta, wtxn, &expected)? {
                    Ok(true) => Ok(CommitOrAbort::Commit(dbs)),
                    Ok(false) => {
                        // A store without meta must be brand new; data without meta means
                        // the directory holds something this code did not write.
                        let mut has_data =
                            !dbs.tracks.is_empty(wtxn)? || !dbs.runs.is_empty(wtxn)?;
                        for db in dbs.main.iter().flatten() {
                            has_data |= !db.is_empty(wtxn)?;
                        }
                        if has_data {
                            return Ok(CommitOrAbort::Abort(corrupt(
                                dir,
                                "it holds tracks but no format metadata",
                            )));
                        }
                        write_meta(dbs.meta, wtxn, &expected)?;
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
            lock,
            dbs,
            meta: expected,
            read_only: false,
            options,
        })
    }

    /// Opens an existing store in `dir` for reading only.
    ///
    /// Works while other processes write to the store; each call sees the latest committed
    /// state when it starts. A read-only handle never merges.
    pub fn open_read_only(dir: &Path, fingerprint_params: &str) -> Result<Self, IndexError> {
        if !dir.join("data.mdb").is_file() {
            return Err(IndexError::NotFound {
                dir: dir.to_owned(),
            });
        }
        let lock = lock_shared(dir, true)?;
        let env = open_env(dir, true)?;
        let expected = expected_meta(fingerprint_params);
        let rtxn = env
            .read_txn()
            .map_err(|e| map_heed(dir, "starting to open the store", e))?;
        let outcome = env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                let open = |name: &str| {
                    opener
                        .database_options()
                        .types::<Bytes, Bytes>()
                        .name(name)
                        .flags(DatabaseFlags::empty())
                        .open(rtxn)
                };
                // The format is checked before the other databases are opened, because a
                // store of another version may lack some of them.
                let Some(meta) = open("meta")? else {
                    return Ok(CommitOrAbort::Abort(IndexError::NotFound {
                        dir: dir.to_owned(),
                    }));
                };
                match check_meta(dir, meta, rtxn, &expected)? {
                    Ok(true) => {}
                    Ok(false) => {
                        return Ok(CommitOrAbort::Abort(IndexError::NotFound {
                            dir: dir.to_owned(),
                        }));
                    }
                    Err(error) => return Ok(CommitOrAbort::Abort(error)),
                }
                match build_dbs(open)? {
                    Some(dbs) => Ok(CommitOrAbort::Commit(dbs)),
                    None => Ok(CommitOrAbort::Abort(corrupt(dir, "a database is missing"))),
                }
            })
            .map_err(|e| map_heed(dir, "opening the store", e))?;
        let dbs = Result::from(outcome)?;
        Ok(Self {
            dir: dir.to_owned(),
            env,
            lock,
            dbs,
            meta: expected,
            read_only: true,
            options: LmdbOptions::default(),
        })
    }

    /// The directory holding the store's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Merges the whole delta into main now, whatever the merge policy says, and purges the
    /// postings of removed tracks; partitions with nothing to merge or purge are left alone.
    ///
    /// Afterwards the postings take the least space and lookups the fewest steps. The
    /// file does not shrink (LMDB reuses freed pages for later writes); see
    /// [`LmdbStore::copy_compacted`] for that.
    pub fn compact(&self) -> Result<(), IndexError> {
        self.sweep()
    }

    /// Writes a compacted copy of the store into `dest_dir` and returns its size in bytes.
    ///
    /// LMDB never shrinks its file: pages freed by removals, merges and the copy-on-write of
    /// earlier versions are only reused for later writes. The copy leaves them out, so it
    /// is the smallest file holding the same data. It is a complete store; swap it in for
    /// the original while no process has either open. `dest_dir` is created if needed and
    /// must not already hold a store.
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

    /// Merges and purges everything ([`LmdbStore::compact`]), then replaces the store's
    /// file with a compacted copy ([`LmdbStore::copy_compacted`]) and closes the store.
    /// Returns the file's size before and after, in bytes.
    ///
    /// LMDB never shrinks its file, so this is how the space of removed tracks, merges and
    /// unmerged runs comes back (the benchmark's freshly indexed 82 references: 103.1 MB,
    /// compacted 73.7 MB). It needs the store to itself: every process that opens a store
    /// holds a shared lock on its lock file, and this takes it exclusively, or fails with
    /// [`IndexError::InUse`]; a process that tries to open the store meanwhile gets
    /// [`IndexError::Compacting`]. The copy is written beside the file and renamed over it
    /// only when complete, so an interruption at any point leaves either the old store or
    /// the new one, whole; a copy left by an interrupted run is removed by the next.
    pub fn compact_in_place(self) -> Result<(u64, u64), IndexError> {
        if self.read_only {
            return Err(IndexError::ReadOnly);
        }
        let in_use = || IndexError::InUse {
            dir: self.dir.clone(),
        };
        let io_error = |source| IndexError::Io {
            dir: self.dir.clone(),
            source,
        };
        let lock = self.lock.as_ref().ok_or_else(in_use)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(in_use()),
            Err(fs::TryLockError::Error(source)) => return Err(io_error(source)),
        }
        self.compact()?;
        let before = self
            .env
            .real_disk_size()
            .map_err(self.err("reading the file size"))?;
        let staging = self.dir.join(COMPACT_STAGING_DIR);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_error)?;
        }
        let after = self.copy_compacted(&staging)?;
        fs::rename(staging.join("data.mdb"), self.dir.join("data.mdb")).map_err(io_error)?;
        // The rename is durable once the directory is.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error)?;
        fs::remove_dir(&staging).map_err(io_error)?;
        // Dropping `self` closes the environment (its map of the replaced file), then
        // releases the lock.
        Ok((before, after))
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

    fn decode_mask(&self, what: &str, bytes: &[u8]) -> Result<u32, IndexError> {
        let bytes: [u8; 4] = bytes
            .try_into()
            .map_err(|_| self.corrupt(format!("{what} is not a 4-byte partition mask")))?;
        Ok(u32::from_be_bytes(bytes) & ALL_PARTITIONS)
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
        let mut partitions = [PartitionState::default(); N_PARTITIONS];
        if let Some(bytes) = self
            .dbs
            .counters
            .get(txn, COUNTER_PARTITIONS)
            .map_err(self.err("reading counters"))?
        {
            if bytes.len() != N_PARTITIONS * 16 {
                return Err(self.corrupt("the partition counters have the wrong length"));
            }
            for (state, chunk) in partitions.iter_mut().zip(bytes.chunks_exact(16)) {
                let (current, postings) = chunk.split_at(8);
                let number = |b: &[u8]| b.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                *state = PartitionState {
                    current: number(current),
                    postings: number(postings),
                };
                if state.current > 1 {
                    return Err(self.corrupt("a partition's live database is neither a nor b"));
                }
            }
        }
        Ok(Counters {
            // Ids start at 1 so callers may use 0 as "no track".
            next_track_id: read(COUNTER_NEXT_TRACK_ID, 1)?,
            n_keys: read(COUNTER_N_KEYS, 0)?,
            total_duration_us: read(COUNTER_TOTAL_DURATION_US, 0)?,
            live_postings: read(COUNTER_LIVE_POSTINGS, 0)?,
            delta_postings: read(COUNTER_DELTA_POSTINGS, 0)?,
            dead_postings: read(COUNTER_DEAD_POSTINGS, 0)?,
            partition_merges: read(COUNTER_PARTITION_MERGES, 0)?,
            partitions,
        })
    }

    fn write_counters(&self, wtxn: &mut RwTxn, counters: &Counters) -> Result<(), IndexError> {
        for (name, value) in [
            (COUNTER_NEXT_TRACK_ID, counters.next_track_id),
            (COUNTER_N_KEYS, counters.n_keys),
            (COUNTER_TOTAL_DURATION_US, counters.total_duration_us),
            (COUNTER_LIVE_POSTINGS, counters.live_postings),
            (COUNTER_DELTA_POSTINGS, counters.delta_postings),
            (COUNTER_DEAD_POSTINGS, counters.dead_postings),
            (COUNTER_PARTITION_MERGES, counters.partition_merges),
        ] {
            self.dbs
                .counters
                .put(wtxn, name, &value.to_be_bytes())
                .map_err(self.err("writing counters"))?;
        }
        let mut partitions = Vec::with_capacity(N_PARTITIONS * 16);
        for state in &counters.partitions {
            partitions.extend_from_slice(&state.current.to_be_bytes());
            partitions.extend_from_slice(&state.postings.to_be_bytes());
        }
        self.dbs
            .counters
            .put(wtxn, COUNTER_PARTITIONS, &partitions)
            .map_err(self.err("writing counters"))
    }

    /// The live main database of a partition.
    fn live_main(&self, counters: &Counters, partition: usize) -> BytesDb<'static> {
        let current = counters.partitions[partition].current as usize;
        self.dbs.main[partition][current & 1]
    }

    /// `n` read transactions of one snapshot, for readers on several threads (a
    /// transaction serves one thread at a time). A commit landing while they are opened
    /// makes them differ; they are then opened again, a few times, before giving up
    /// (`None`) to a single reader.
    fn snapshot(&self, n: usize) -> Result<Option<Vec<RoTxn<'_, WithoutTls>>>, IndexError> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let txns = (0..n)
                .map(|_| self.read_txn())
                .collect::<Result<Vec<_>, _>>()?;
            if txns.iter().all(|t| t.id() == txns[0].id()) {
                return Ok(Some(txns));
            }
        }
        Ok(None)
    }

    /// [`Store::lookup`] restricted to the postings of `tracks`, on one thread.
    fn lookup_among(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        tracks: &RangeInclusive<TrackId>,
        visit: &mut dyn FnMut(usize, Posting),
    ) -> Result<(), IndexError> {
        let queries = sort_queries(keys)?;
        let rtxn = self.read_txn()?;
        self.lookup_partitions(
            &rtxn,
            &queries,
            max_postings_per_key,
            tracks,
            &[true; N_PARTITIONS],
            self.options.lookup_resident_bytes,
            &mut |_, group, list| group.visit(list, &mut *visit),
        )
    }

    /// The postings of tracks in `tracks` of the keys of `queries` that fall in the
    /// partitions marked in `serves`, from the snapshot of `rtxn`, in key order, a key's
    /// at once: `visit(partition, the key's queries, its postings)`, which visits every
    /// posting for every query in turn (one call a key rather than one a posting and
    /// query). The cap counts every live posting of a key, in `tracks` or not; a posting
    /// list is read only up to its last track in `tracks` when no tombstone asks for the
    /// rest to be counted. What it reads through the map is released past
    /// `resident_budget` bytes.
    #[allow(clippy::too_many_arguments)]
    fn lookup_partitions(
        &self,
        rtxn: &RoTxn<'_, WithoutTls>,
        queries: &SortedQueries<'_>,
        max_postings_per_key: usize,
        tracks: &RangeInclusive<TrackId>,
        serves: &[bool; N_PARTITIONS],
        resident_budget: usize,
        visit: &mut impl FnMut(usize, &QueryGroup<'_>, &[Posting]),
    ) -> Result<(), IndexError> {
        let counters = self.read_counters(rtxn)?;
        let runs = self.load_runs(rtxn)?;
        let tombstones = self.load_tombstones(rtxn)?;
        // Per partition: the main walker, the tracks whose main postings to hide, and the
        // unmerged run sections with a cursor each (runs in track order).
        let mut walkers: Vec<Walker> = (0..N_PARTITIONS)
            .map(|partition| Walker::new(self.live_main(&counters, partition), rtxn, &self.dir))
            .collect();
        let dead: Vec<Vec<TrackId>> = (0..N_PARTITIONS)
            .map(|partition| {
                tombstones
                    .iter()
                    .filter(|&&(_, purged)| purged & partition_bit(partition) == 0)
                    .map(|&(track, _)| track)
                    .collect()
            })
            .collect();
        let mut sections: Vec<Vec<(TrackId, Section, usize)>> = (0..N_PARTITIONS)
            .map(|partition| {
                runs.iter()
                    .filter(|run| run.is_live_in(partition))
                    .map(|run| (run.track, run.run.section(partition), 0))
                    .collect()
            })
            .collect();
        // What the lookup has read through the map, per main partition and per section.
        let mut residency = MapResidency::new(resident_budget);
        let mut main_read = [NOTHING_READ; N_PARTITIONS];
        let mut sections_read: Vec<Vec<usize>> = sections
            .iter()
            .map(|s| vec![NOTHING_READ; s.len()])
            .collect();
        let mut tables = AnchorTables::new(self, rtxn);
        let mut batch = ResolveBatch::default();
        for group in queries.groups() {
            let key = group.key();
            let partition = partition_of(key);
            if !serves[partition] {
                continue;
            }
            // The key's postings go straight into the batch, main first (runs are newer and
            // in track order, so they are sorted), and leave it again if the key is over
            // the cap.
            let start = batch.postings.len();
            let list = &mut batch.postings;
            // Live postings of the key, in `tracks` or not: what the cap counts.
            let mut n_live = 0usize;
            let head = walkers[partition].seek(key)?;
            if let Some((_, _, value)) = head {
                residency.touch(&mut main_read[partition], value);
            }
            if let Some((found, found_list, _)) = head
                && found == key
            {
                let dead = &dead[partition];
                let corrupt_list =
                    |what| self.corrupt(format!("posting list of key {key}: {what}"));
                if dead.is_empty() {
                    // Without tombstones the block's directory alone decides the cap, so
                    // over-cap keys cost no decoding at all, and a list sorted by track is
                    // read only as far as `tracks` reaches.
                    n_live = found_list.len();
                    if n_live > max_postings_per_key {
                        // Nothing of this key is in the batch yet.
                        continue;
                    }
                    found_list
                        .decode_while(|posting| {
                            if posting.track > *tracks.end() {
                                return false;
                            }
                            if posting.track >= *tracks.start() {
                                list.push(posting);
                            }
                            true
                        })
                        .map_err(corrupt_list)?;
                } else {
                    found_list
                        .decode(|posting| {
                            if dead.binary_search(&posting.track).is_err() {
                                n_live += 1;
                                if tracks.contains(&posting.track) {
                                    list.push(posting);
                                }
                            }
                        })
                        .map_err(corrupt_list)?;
                    if n_live > max_postings_per_key {
                        list.truncate(start);
                        continue;
                    }
                }
            }
            for ((track, section, cursor), read) in sections[partition]
                .iter_mut()
                .zip(&mut sections_read[partition])
            {
                let start = section.seek(*cursor, key);
                let mut i = start;
                while i < section.len() && section.key(i) == key {
                    i += 1;
                }
                n_live += i - start;
                if tracks.contains(track) {
                    list.extend((start..i).map(|j| section.posting(j, *track)));
                }
                residency.touch(read, section.records_bytes(*cursor, i));
                *cursor = i;
            }
            if n_live > max_postings_per_key {
                list.truncate(start);
                continue;
            }
            // The postings are read back through their tables in batches of keys, in a
            // loop of their own that hints each table read ahead (`ResolveBatch`): the
            // reads are random, and in a large store mostly from memory (37 MB of tables
            // at 100 hours). Reading a key's list back before visiting it took the
            // 3-minute song's lookup at 100 h from 3.6-4.1 s to 2.3-2.4 s (session 15);
            // the hints halved it again (session 20). Reading a batch in track order
            // instead (a radix sort on the track) did no better: a batch meets each table
            // at as many places as it has postings.
            batch.keys.push((partition, group, batch.postings.len()));
            if batch.postings.len() >= RESOLVE_BATCH {
                batch.resolve_and_visit(&mut tables, visit)?;
            }
        }
        batch.resolve_and_visit(&mut tables, visit)?;
        residency.release();
        Ok(())
    }

    /// Every run in track order, with its merged partitions.
    fn load_runs<'t>(&self, txn: &'t RoTxn) -> Result<Vec<LoadedRun<'t>>, IndexError> {
        let mut runs = Vec::new();
        for item in self.dbs.runs.iter(txn).map_err(self.err("reading runs"))? {
            let (key, bytes) = item.map_err(self.err("reading runs"))?;
            let track = self.decode_id(key)?;
            let merged = match self
                .dbs
                .run_state
                .get(txn, key)
                .map_err(self.err("reading runs"))?
            {
                Some(mask) => self.decode_mask("a run state", mask)?,
                None => return Err(self.corrupt(format!("the run of track {track} has no state"))),
            };
            let run = Run::parse(bytes)
                .map_err(|what| self.corrupt(format!("the run of track {track}: {what}")))?;
            runs.push(LoadedRun { track, merged, run });
        }
        Ok(runs)
    }

    /// Every tombstone in track order, with its purged partitions.
    fn load_tombstones(&self, txn: &RoTxn) -> Result<Vec<(TrackId, u32)>, IndexError> {
        let mut tombstones = Vec::new();
        for item in self
            .dbs
            .deleted
            .iter(txn)
            .map_err(self.err("reading tombstones"))?
        {
            let (key, mask) = item.map_err(self.err("reading tombstones"))?;
            tombstones.push((self.decode_id(key)?, self.decode_mask("a tombstone", mask)?));
        }
        Ok(tombstones)
    }

    /// Of `keys` in run order (by partition, then ascending, without repeats), how many
    /// are stored nowhere else: neither in their partition's main nor in an unmerged
    /// section of one of `runs`.
    fn count_keys_only_here(
        &self,
        txn: &RoTxn,
        counters: &Counters,
        keys: &[u32],
        runs: &[LoadedRun],
    ) -> Result<u64, IndexError> {
        let mut count = 0u64;
        for group in keys.chunk_by(|a, b| partition_of(*a) == partition_of(*b)) {
            let partition = partition_of(group[0]);
            let mut main = Walker::new(self.live_main(counters, partition), txn, &self.dir);
            let live: Vec<_> = runs
                .iter()
                .filter(|run| run.is_live_in(partition))
                .map(|run| run.run.section(partition))
                .collect();
            let mut cursors = vec![0usize; live.len()];
            for &key in group {
                if main.seek(key)?.is_some_and(|(found, _, _)| found == key) {
                    continue;
                }
                let mut elsewhere = false;
                for (section, cursor) in live.iter().zip(&mut cursors) {
                    *cursor = section.seek(*cursor, key);
                    if *cursor < section.len() && section.key(*cursor) == key {
                        elsewhere = true;
                        break;
                    }
                }
                count += u64::from(!elsewhere);
            }
        }
        Ok(count)
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

    fn scan_mark_in(&self, txn: &RoTxn, query: TrackId) -> Result<Option<TrackId>, IndexError> {
        self.dbs
            .scan_marks
            .get(txn, &query.to_be_bytes())
            .map_err(self.err("reading a scan mark"))?
            .map(|bytes| self.decode_id(bytes))
            .transpose()
    }

    /// Removes a track inside `wtxn`; returns whether it existed.
    fn remove_in(&self, wtxn: &mut RwTxn, id: TrackId) -> Result<bool, IndexError> {
        let id_key = id.to_be_bytes();
        let Some(info) = self.track_in(wtxn, id)? else {
            return Ok(false);
        };
        let mut counters = self.read_counters(wtxn)?;

        // Postings of the track in main, which a tombstone must hide, and the partitions
        // where it has none, which the tombstone can start out as purged.
        let (in_main, purged) = {
            let runs = self.load_runs(wtxn)?;
            match runs.iter().position(|run| run.track == id) {
                None => (info.n_postings, 0),
                Some(index) => {
                    let run = runs[index];
                    let others: Vec<LoadedRun> = runs
                        .iter()
                        .filter(|other| other.track != id)
                        .copied()
                        .collect();
                    let mut unmerged_keys = Vec::new();
                    let mut in_main = 0u64;
                    let mut purged = 0u32;
                    for partition in 0..N_PARTITIONS {
                        let section = run.run.section(partition);
                        if run.is_live_in(partition) {
                            counters.delta_postings =
                                counters.delta_postings.saturating_sub(section.len() as u64);
                            purged |= partition_bit(partition);
                            for i in 0..section.len() {
                                let key = section.key(i);
                                if unmerged_keys.last() != Some(&key) {
                                    unmerged_keys.push(key);
                                }
                            }
                        } else if section.is_empty() {
                            purged |= partition_bit(partition);
                        } else {
                            in_main += section.len() as u64;
                        }
                    }
                    // Keys that only this run's unmerged sections hold disappear with it.
                    let gone =
                        self.count_keys_only_here(wtxn, &counters, &unmerged_keys, &others)?;
                    counters.n_keys = counters.n_keys.saturating_sub(gone);
                    (in_main, purged)
                }
            }
        };
        // Deleting a key that is absent is not an error, so this covers tracks without runs.
        for db in [
            self.dbs.runs,
            self.dbs.run_state,
            self.dbs.side_data,
            self.dbs.anchors,
        ] {
            db.delete(wtxn, &id_key)
                .map_err(self.err("deleting a run"))?;
        }
        if in_main > 0 {
            self.dbs
                .deleted
                .put(wtxn, &id_key, &purged.to_be_bytes())
                .map_err(self.err("writing a tombstone"))?;
            counters.dead_postings = counters.dead_postings.saturating_add(in_main);
        }

        self.dbs
            .tracks
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

        self.remove_relations_in(wtxn, id)?;

        counters.live_postings = counters.live_postings.saturating_sub(info.n_postings);
        counters.total_duration_us = counters
            .total_duration_us
            .saturating_sub(duration_us(info.duration_s));
        self.write_counters(wtxn, &counters)?;
        Ok(true)
    }

    /// Ids of the relations filed under `id` first in `db` (a prefix walk), as key pairs.
    fn relation_keys(
        &self,
        txn: &RoTxn,
        db: BytesDb<'static>,
        id: TrackId,
    ) -> Result<Vec<[u8; 8]>, IndexError> {
        let mut keys = Vec::new();
        for item in db
            .prefix_iter(txn, &id.to_be_bytes())
            .map_err(self.err("reading relations"))?
        {
            let (key, _) = item.map_err(self.err("reading relations"))?;
            keys.push(self.pair_key_of(key)?);
        }
        Ok(keys)
    }

    /// A stored relation key as the fixed-size pair key it must be.
    fn pair_key_of(&self, key: &[u8]) -> Result<[u8; 8], IndexError> {
        key.try_into()
            .map_err(|_| self.corrupt(format!("a relation key has {} bytes", key.len())))
    }

    /// Drops every relation `id` takes part in, and its scan mark.
    fn remove_relations_in(&self, wtxn: &mut RwTxn, id: TrackId) -> Result<(), IndexError> {
        for (db, other) in [
            (self.dbs.relations, self.dbs.relations_rev),
            (self.dbs.relations_rev, self.dbs.relations),
        ] {
            for key in self.relation_keys(wtxn, db, id)? {
                let swapped = swap_pair(key);
                for (db, key) in [(db, key), (other, swapped)] {
                    db.delete(wtxn, &key)
                        .map_err(self.err("deleting a relation"))?;
                }
            }
        }
        self.dbs
            .scan_marks
            .delete(wtxn, &id.to_be_bytes())
            .map_err(self.err("deleting a scan mark"))?;
        Ok(())
    }

    /// Merges every partition that has something to merge or purge, each in a write
    /// transaction of its own.
    fn sweep(&self) -> Result<(), IndexError> {
        for partition in 0..N_PARTITIONS {
            let mut wtxn = self.write_txn()?;
            if self.merge_partition(&mut wtxn, partition)? {
                wtxn.commit().map_err(self.err("committing a merge"))?;
            }
        }
        Ok(())
    }

    /// Rewrites one partition's main with its unmerged run sections and without its
    /// tombstoned postings, inside `wtxn`; returns whether there was anything to do.
    fn merge_partition(&self, wtxn: &mut RwTxn, partition: usize) -> Result<bool, IndexError> {
        let bit = partition_bit(partition);
        let mut counters = self.read_counters(wtxn)?;
        let runs: Vec<(TrackId, u32)> = self
            .load_runs(wtxn)?
            .iter()
            .filter(|run| run.is_live_in(partition))
            .map(|run| (run.track, run.merged))
            .collect();
        let tombstones: Vec<(TrackId, u32)> = self
            .load_tombstones(wtxn)?
            .into_iter()
            .filter(|&(_, purged)| purged & bit == 0)
            .collect();
        if runs.is_empty() && tombstones.is_empty() {
            return Ok(false);
        }
        let dead: Vec<TrackId> = tombstones.iter().map(|&(track, _)| track).collect();
        let from = self.live_main(&counters, partition);
        let to =
            self.dbs.main[partition][(counters.partitions[partition].current as usize & 1) ^ 1];
        // The previous merge left it empty; clearing again costs nothing then and makes
        // the appends below safe whatever happened before.
        to.clear(wtxn).map_err(self.err("clearing the next main"))?;

        let mut keys_in = 0u64;
        let mut keys_out = 0u64;
        let mut postings_out = 0u64;
        let mut merged_postings = 0u64;
        let mut dropped = 0u64;
        let mut cursors = vec![0usize; runs.len()];
        let mut list: Vec<Posting> = Vec::new();
        let mut builder = BlockBuilder::default();
        let mut last_key: Option<u32> = None;
        let mut blobs: Vec<u8> = Vec::new();
        let mut batch: Vec<(u32, usize, usize)> = Vec::with_capacity(MERGE_BATCH_BLOCKS);
        let mut next = Some(0u32);
        // Walking borrows the transaction that the appends need mutably, so the merge
        // alternates: read and encode a batch of blocks, then write it out.
        while let Some(start) = next {
            batch.clear();
            blobs.clear();
            next = None;
            let mut sections = Vec::with_capacity(runs.len());
            for &(track, _) in &runs {
                let bytes = self
                    .dbs
                    .runs
                    .get(wtxn, &track.to_be_bytes())
                    .map_err(self.err("reading runs"))?
                    .ok_or_else(|| self.corrupt(format!("the run of track {track} vanished")))?;
                let run = Run::parse(bytes)
                    .map_err(|what| self.corrupt(format!("the run of track {track}: {what}")))?;
                sections.push(run.section(partition));
            }
            let mut mains = Walker::new(from, wtxn, &self.dir);
            let mut main_head = mains.seek(start)?;
            loop {
                let mut key = main_head.map(|(key, _, _)| key);
                for (section, &cursor) in sections.iter().zip(&cursors) {
                    if cursor < section.len() {
                        let candidate = section.key(cursor);
                        key = Some(key.map_or(candidate, |key| key.min(candidate)));
                    }
                }
                // A finished block is encoded; a full batch stops at a block's start, so a
                // block is never split between batches.
                let pending = builder.block();
                if pending.is_some() && pending != key.map(block_of) {
                    let begin = blobs.len();
                    if let Some(block) = builder.finish(&mut blobs) {
                        batch.push((block, begin, blobs.len()));
                    }
                    if batch.len() == MERGE_BATCH_BLOCKS || blobs.len() >= MERGE_BATCH_BYTES {
                        next = key;
                        break;
                    }
                }
                let Some(key) = key else {
                    break;
                };
                // Sorted tiers give ascending keys; tampered runs may not, and a block must
                // never be written from them.
                if last_key.is_some_and(|last| last >= key) {
                    return Err(self.corrupt(format!("a run of partition {partition} is unsorted")));
                }
                last_key = Some(key);
                keys_in += 1;
                list.clear();
                if let Some((found, found_list, _)) = main_head
                    && found == key
                {
                    found_list
                        .decode(|posting| {
                            if dead.binary_search(&posting.track).is_ok() {
                                dropped += 1;
                            } else {
                                list.push(posting);
                            }
                        })
                        .map_err(|what| {
                            self.corrupt(format!("posting list of key {key}: {what}"))
                        })?;
                    main_head = mains.advance()?;
                }
                for ((section, cursor), &(track, _)) in sections.iter().zip(&mut cursors).zip(&runs)
                {
                    while *cursor < section.len() && section.key(*cursor) == key {
                        list.push(section.posting(*cursor, track));
                        *cursor += 1;
                        merged_postings += 1;
                    }
                }
                // Runs are newer than main and in track order, so this holds unless the
                // store was tampered with; sorting then keeps the encoding valid.
                if !list.is_sorted() {
                    list.sort_unstable();
                    list.dedup();
                }
                if list.is_empty() {
                    continue;
                }
                builder.push(key, &list);
                keys_out += 1;
                postings_out += list.len() as u64;
            }
            drop((mains, sections));
            for &(block, begin, end) in &batch {
                // Blocks arrive ascending into an empty database: APPEND fills each page
                // completely and never searches. Keys were checked ascending above; LMDB
                // refusing an append is the fallback for anything else out of order.
                to.put_with_flags(
                    wtxn,
                    PutFlags::APPEND,
                    &block.to_be_bytes(),
                    &blobs[begin..end],
                )
                .map_err(|error| match error {
                    heed::Error::Mdb(MdbError::KeyExist) => {
                        self.corrupt(format!("a run of partition {partition} is unsorted"))
                    }
                    other => map_heed(&self.dir, "writing the merged main", other),
                })?;
            }
        }

        from.clear(wtxn)
            .map_err(self.err("clearing the old main"))?;
        let state = &mut counters.partitions[partition];
        *state = PartitionState {
            current: (state.current & 1) ^ 1,
            postings: postings_out,
        };
        for &(track, merged) in &runs {
            let key = track.to_be_bytes();
            let merged = merged | bit;
            if merged == ALL_PARTITIONS {
                for db in [self.dbs.runs, self.dbs.run_state] {
                    db.delete(wtxn, &key).map_err(self.err("deleting a run"))?;
                }
            } else {
                self.dbs
                    .run_state
                    .put(wtxn, &key, &merged.to_be_bytes())
                    .map_err(self.err("writing a run state"))?;
            }
        }
        for &(track, purged) in &tombstones {
            let key = track.to_be_bytes();
            let purged = purged | bit;
            if purged == ALL_PARTITIONS {
                self.dbs
                    .deleted
                    .delete(wtxn, &key)
                    .map_err(self.err("deleting a tombstone"))?;
            } else {
                self.dbs
                    .deleted
                    .put(wtxn, &key, &purged.to_be_bytes())
                    .map_err(self.err("writing a tombstone"))?;
            }
        }
        counters.delta_postings = counters.delta_postings.saturating_sub(merged_postings);
        counters.dead_postings = if self
            .dbs
            .deleted
            .is_empty(wtxn)
            .map_err(self.err("reading tombstones"))?
        {
            0
        } else {
            counters.dead_postings.saturating_sub(dropped)
        };
        counters.n_keys = counters.n_keys.saturating_sub(keys_in - keys_out);
        counters.partition_merges += 1;
        self.write_counters(wtxn, &counters)?;
        Ok(true)
    }
}

/// The anchor tables one lookup has read, by track: they turn stored postings (as
/// `anchors::file` filed them) back into what the caller stored.
struct AnchorTables<'s, 't> {
    store: &'s LmdbStore,
    txn: &'t RoTxn<'t, WithoutTls>,
    /// Tables of tracks below [`DENSE_TRACKS`] by id (a lookup reads one per posting),
    /// grown as far as the largest id met.
    dense: Vec<Option<Anchors<'t>>>,
    /// Tables of any others.
    sparse: std::collections::HashMap<TrackId, Anchors<'t>>,
}

/// Postings ahead of the one being resolved whose table entries are asked for
/// ([`AnchorTables::prefetch`]).
const PREFETCH_AHEAD: usize = 8;

/// Postings of consecutive keys resolved together (a key has a few at 10 hours, too few
/// to hint far enough ahead within one key).
const RESOLVE_BATCH: usize = 256;

/// The stored postings of consecutive keys of a lookup, to resolve and visit together.
#[derive(Default)]
struct ResolveBatch<'q> {
    postings: Vec<Posting>,
    /// Per key, in key order: its partition, its queries, and the end of its postings.
    keys: Vec<(usize, QueryGroup<'q>, usize)>,
}

impl<'q> ResolveBatch<'q> {
    /// Resolves the postings, hinting each entry [`PREFETCH_AHEAD`] postings before it is
    /// read, then visits each key's in order, and empties the batch.
    fn resolve_and_visit(
        &mut self,
        tables: &mut AnchorTables<'_, '_>,
        visit: &mut impl FnMut(usize, &QueryGroup<'_>, &[Posting]),
    ) -> Result<(), IndexError> {
        for i in 0..self.postings.len() {
            if let Some(ahead) = self.postings.get(i + PREFETCH_AHEAD) {
                tables.prefetch(*ahead);
            }
            self.postings[i] = tables.resolve(self.postings[i])?;
        }
        let mut start = 0;
        for (partition, group, end) in self.keys.drain(..) {
            visit(partition, &group, &self.postings[start..end]);
            start = end;
        }
        self.postings.clear();
        Ok(())
    }
}

/// Track ids that [`AnchorTables`] keeps in a vector rather than a map: a million tracks
/// (tens of thousands of hours) cost a lookup at most 24 MB, and only if they are there.
const DENSE_TRACKS: usize = 1 << 20;

impl<'s, 't> AnchorTables<'s, 't> {
    fn new(store: &'s LmdbStore, txn: &'t RoTxn<'t, WithoutTls>) -> Self {
        Self {
            store,
            txn,
            dense: Vec::new(),
            sparse: Default::default(),
        }
    }

    /// `stored` as the caller stored it.
    #[inline]
    fn resolve(&mut self, stored: Posting) -> Result<Posting, IndexError> {
        let track = stored.track;
        match self
            .table(track)?
            .read((stored.time, stored.freq, stored.span))
        {
            Some((time, freq, span)) => Ok(Posting {
                track,
                time,
                freq,
                span,
            }),
            None => Err(self.store.corrupt(format!(
                "a posting of track {track} names no entry of its anchor table"
            ))),
        }
    }

    /// Starts loading the entry that resolving `stored` will read (see
    /// [`Anchors::prefetch`]); a table that cannot be read is left to `resolve` to report.
    #[inline]
    fn prefetch(&mut self, stored: Posting) {
        if let Ok(table) = self.table(stored.track) {
            table.prefetch(stored.time);
        }
    }

    /// The anchor table of `track`.
    fn table(&mut self, track: TrackId) -> Result<Anchors<'t>, IndexError> {
        let slot = track as usize;
        if let Some(Some(table)) = self.dense.get(slot) {
            return Ok(*table);
        }
        Ok(match self.sparse.get(&track) {
            Some(table) => *table,
            None => {
                let bytes = self
                    .store
                    .dbs
                    .anchors
                    .get(self.txn, &track.to_be_bytes())
                    .map_err(self.store.err("reading an anchor table"))?
                    .ok_or_else(|| {
                        self.store
                            .corrupt(format!("track {track} has postings but no anchor table"))
                    })?;
                let table = Anchors::parse(bytes).map_err(|what| {
                    self.store
                        .corrupt(format!("the anchor table of track {track}: {what}"))
                })?;
                if slot < DENSE_TRACKS {
                    if self.dense.len() <= slot {
                        self.dense.resize(slot + 1, None);
                    }
                    self.dense[slot] = Some(table);
                } else {
                    self.sparse.insert(track, table);
                }
                table
            }
        })
    }
}

/// A [`Walker`]'s key, its list, and the stored value of the block holding it from its
/// start through the list (what the lookup's [`MapResidency`] counts).
type Head<'t> = (u32, List<'t>, &'t [u8]);

/// Walks one main database key by key for ascending target keys: it steps forward over
/// blocks while the next target is near and seeks when it is far, so dense and sparse
/// lookups both cost little. Lists borrow the transaction, which must not be written to
/// meanwhile.
struct Walker<'t> {
    db: BytesDb<'static>,
    txn: &'t RoTxn<'t>,
    dir: &'t Path,
    range: Option<RoRange<'t, Bytes, Bytes>>,
    /// The block at the cursor, `None` before the first seek or once the end is reached.
    block: Option<Block<'t>>,
    /// The key at the cursor, one of `block`'s.
    key: u32,
    at_end: bool,
}

impl<'t> Walker<'t> {
    fn new(db: BytesDb<'static>, txn: &'t RoTxn<'t>, dir: &'t Path) -> Self {
        Self {
            db,
            txn,
            dir,
            range: None,
            block: None,
            key: 0,
            at_end: false,
        }
    }

    /// The key at the cursor with its list and its block's value through the list.
    fn head(&self) -> Option<Head<'t>> {
        let block = self.block.as_ref()?;
        let list = block.list(self.key)?;
        Some((self.key, list, block.read_through(&list)))
    }

    /// Moves to the first key that is at least `target` and returns it; `target`s should
    /// not decrease between calls (a smaller one just returns the current key).
    fn seek(&mut self, target: u32) -> Result<Option<Head<'t>>, IndexError> {
        let wanted = block_of(target);
        let mut steps = 0;
        loop {
            if self.at_end {
                return Ok(None);
            }
            if let Some(head) = self.head()
                && head.0 >= target
            {
                return Ok(Some(head));
            }
            match &self.block {
                Some(block) if block.id() == wanted => {
                    return match block.next_key(target) {
                        Some(key) => {
                            self.key = key;
                            Ok(self.head())
                        }
                        None => self.next_block(),
                    };
                }
                Some(_) if steps < WALK_STEPS_BEFORE_SEEK => {
                    steps += 1;
                    self.next_block()?;
                }
                _ => {
                    let bound = wanted.to_be_bytes();
                    let range = (Bound::Included(&bound[..]), Bound::Unbounded);
                    self.range = Some(
                        self.db
                            .range(self.txn, &range)
                            .map_err(|e| map_heed(self.dir, "reading postings", e))?,
                    );
                    // The block reached is `wanted` or a later one: no more walking.
                    steps = WALK_STEPS_BEFORE_SEEK;
                    self.next_block()?;
                }
            }
        }
    }

    /// Moves to the next key and returns it.
    fn advance(&mut self) -> Result<Option<Head<'t>>, IndexError> {
        let next = match &self.block {
            None => return Ok(None),
            Some(block) => self.key.checked_add(1).and_then(|key| block.next_key(key)),
        };
        match next {
            Some(key) => {
                self.key = key;
                Ok(self.head())
            }
            None => self.next_block(),
        }
    }

    /// Moves to the first key of the next block and returns it.
    fn next_block(&mut self) -> Result<Option<Head<'t>>, IndexError> {
        let Some(range) = self.range.as_mut() else {
            return Ok(None);
        };
        self.block = match range.next() {
            None => None,
            Some(Err(error)) => return Err(map_heed(self.dir, "reading postings", error)),
            Some(Ok((key, value))) => {
                let id: [u8; 4] = key
                    .try_into()
                    .map_err(|_| corrupt(self.dir, "a posting block key is not 4 bytes"))?;
                let id = u32::from_be_bytes(id);
                let block = Block::parse(id, value)
                    .map_err(|what| corrupt(self.dir, format!("posting block {id}: {what}")))?;
                // A parsed block holds at least one list.
                self.key = block.next_key(id << BLOCK_BITS).unwrap_or(0);
                Some(block)
            }
        };
        self.at_end = self.block.is_none();
        Ok(self.head())
    }
}

/// Bounds how much of the memory map one lookup keeps resident in this process.
///
/// Pages an LMDB reader touches stay mapped, and so count in the process's resident set,
/// until the map goes away. A lookup walks each partition's postings in key order and never
/// returns to a page it has left, so once the posting data it has read since the last
/// release exceeds its budget ([`LmdbOptions::lookup_resident_bytes`]), it drops its
/// mappings of the pages it read with `MADV_DONTNEED`. The pages stay in the kernel's page
/// cache: one it reads again (an inner B-tree page, the page it stands on) comes back with
/// a minor fault, and the data cannot change under the read transaction, since LMDB never
/// rewrites a page a reader may still see.
///
/// Read data is counted in windows of [`RESIDENCY_WINDOW_BYTES`]: on a fault the kernel
/// maps in the cached neighbours of the page as well (fault-around, 64 KiB by default), so
/// a sparse lookup holds a window per entry it reads, not a page. Each reader (a
/// partition's main database, a run's section) counts a window once, when it enters it,
/// also across a release: the window every reader stands in comes back after a release
/// uncounted, so the map may hold the budget plus one window per reader, but a release
/// never forces the next one (counting them again thrashed: 146 releases instead of 11
/// for a 3-minute query at 16 MB, and at 4 MB its lookup took 5.3 s instead of 0.6 s).
struct MapResidency {
    /// Lowest and highest address read since the last release. Both lie in LMDB's map: a
    /// read transaction hands out values as pointers into it.
    lo: usize,
    hi: usize,
    /// Windows entered since the last release.
    windows: usize,
    /// Bytes read after which to release.
    budget: usize,
}

/// The unit of [`MapResidency`]'s count: Linux's default `fault_around_bytes`.
const RESIDENCY_WINDOW_BYTES: usize = 64 << 10;

/// A reader's last window (see [`MapResidency::touch`]) before it has read anything.
const NOTHING_READ: usize = usize::MAX;

impl MapResidency {
    fn new(budget: usize) -> Self {
        Self {
            lo: usize::MAX,
            hi: 0,
            windows: 0,
            budget,
        }
    }

    /// Counts `bytes`, read through the map by one reader that moves forward through it;
    /// `last` is the last window that reader read. Only windows past `last` count, so
    /// bytes read again (a main block's keys share its value) count nothing. Releases what
    /// was read once the count exceeds the budget.
    fn touch(&mut self, last: &mut usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = bytes.as_ptr() as usize;
        let end = start + bytes.len();
        self.lo = self.lo.min(start);
        self.hi = self.hi.max(end);
        let (first, final_window) = (
            start / RESIDENCY_WINDOW_BYTES,
            (end - 1) / RESIDENCY_WINDOW_BYTES,
        );
        let counted_from = match *last {
            NOTHING_READ => first,
            last => first.max(last + 1),
        };
        self.windows += (final_window + 1).saturating_sub(counted_from);
        if *last == NOTHING_READ || final_window > *last {
            *last = final_window;
        }
        if self.windows * RESIDENCY_WINDOW_BYTES >= self.budget {
            self.release();
        }
    }

    /// Drops this process's mappings of the pages between the lowest and the highest
    /// address read since the last release.
    fn release(&mut self) {
        #[cfg(unix)]
        if self.hi > self.lo {
            // SAFETY: sysconf has no preconditions.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
            if page.is_power_of_two() {
                let start = self.lo & !(page - 1);
                let end = self.hi.next_multiple_of(page);
                // SAFETY: `start..end` covers whole pages of LMDB's map of the data file:
                // `lo` and `hi` come from values read through it, and the map starts and ends
                // on page boundaries. The map outlives the lookup's transaction. It is shared,
                // read-only and file-backed, so MADV_DONTNEED only unmaps pages: a later read
                // faults the same bytes back in from the page cache, and no reference into the
                // map is invalidated. A failure only leaves the pages resident.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
        *self = Self::new(self.budget);
    }
}

impl Store for LmdbStore {
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
        validate_track_info(info)?;
        validate_side_data(side_data)?;
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

        let mut prepared = prepare_entries(id, entries);
        let fields: Vec<(u32, u16, u16)> = prepared
            .iter()
            .map(|(_, p)| (p.time, p.freq, p.span))
            .collect();
        let table = anchors::table(&fields);
        for (_, posting) in &mut prepared {
            (posting.time, posting.freq, posting.span) =
                anchors::file(&table, posting.time, posting.freq, posting.span);
        }
        prepared.sort_unstable_by_key(|&(key, posting)| run_order(key, &posting));
        let n_postings = prepared.len() as u64;
        let (new_keys, n_runs) = {
            let mut keys: Vec<u32> = prepared.iter().map(|&(key, _)| key).collect();
            keys.dedup();
            let runs = self.load_runs(&wtxn)?;
            let new_keys = self.count_keys_only_here(&wtxn, &counters, &keys, &runs)?;
            (new_keys, runs.len() as u64)
        };
        let run = encode_run(&prepared);
        let empty_sections = {
            let parsed = Run::parse(&run)
                .map_err(|what| self.corrupt(format!("a new run does not parse: {what}")))?;
            (0..N_PARTITIONS)
                .filter(|&partition| parsed.section(partition).is_empty())
                .fold(0u32, |mask, partition| mask | partition_bit(partition))
        };
        let has_run = empty_sections != ALL_PARTITIONS;
        if has_run {
            self.dbs
                .runs
                .put(&mut wtxn, &id_key, &run)
                .map_err(self.err("writing a run"))?;
            // Empty sections have nothing to merge, so they start out merged.
            self.dbs
                .run_state
                .put(&mut wtxn, &id_key, &empty_sections.to_be_bytes())
                .map_err(self.err("writing a run"))?;
        }

        if !side_data.is_empty() {
            self.dbs
                .side_data
                .put(&mut wtxn, &id_key, side_data)
                .map_err(self.err("writing side data"))?;
        }
        if !table.is_empty() {
            self.dbs
                .anchors
                .put(&mut wtxn, &id_key, &anchors::encode(&table))
                .map_err(self.err("writing an anchor table"))?;
        }
        let mut stored = info.clone();
        stored.n_postings = n_postings;
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
        counters.n_keys += new_keys;
        counters.live_postings += n_postings;
        counters.delta_postings += n_postings;
        counters.total_duration_us += duration_us(stored.duration_s);
        self.write_counters(&mut wtxn, &counters)?;
        let merge = self
            .options
            .wants_merge(&counters, n_runs + u64::from(has_run));
        wtxn.commit().map_err(self.err("committing a track"))?;
        if merge {
            // The track is stored; a failed merge must not turn that into an error. It is
            // simply tried again after the next put, and `compact` reports its errors.
            let _ = self.sweep();
        }
        Ok(id)
    }

    fn side_data(&self, id: TrackId) -> Result<Option<Vec<u8>>, IndexError> {
        let rtxn = self.read_txn()?;
        if self.track_in(&rtxn, id)?.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.dbs
                .side_data
                .get(&rtxn, &id.to_be_bytes())
                .map_err(self.err("reading side data"))?
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
        ))
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
        max_postings_per_key: usize,
        visit: &mut dyn FnMut(usize, Posting),
    ) -> Result<(), IndexError> {
        self.lookup_among(keys, max_postings_per_key, &(0..=TrackId::MAX), visit)
    }

    fn lookup_sharded(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        visitors: &mut [&mut (dyn FnMut(usize, Posting) + Send)],
    ) -> Result<(), IndexError> {
        self.lookup_sharded_among(keys, max_postings_per_key, 0..=TrackId::MAX, visitors)
    }

    fn lookup_sharded_among(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        tracks: RangeInclusive<TrackId>,
        visitors: &mut [&mut (dyn FnMut(usize, Posting) + Send)],
    ) -> Result<(), IndexError> {
        let n_shards = visitors.len();
        if n_shards == 0 {
            return Ok(());
        }
        let n_workers = rayon::current_num_threads().min(n_shards).min(N_PARTITIONS);
        let txns = if n_workers > 1 && keys.len() >= PARALLEL_LOOKUP_MIN_KEYS {
            self.snapshot(n_workers)?
        } else {
            None
        };
        let Some(txns) = txns else {
            return self.lookup_among(keys, max_postings_per_key, &tracks, &mut |i, posting| {
                (visitors[lookup_shard(keys[i], n_shards)])(i, posting)
            });
        };
        let queries = sort_queries(keys)?;
        // Shard s goes to worker s % n_workers; a worker serves the partitions of its
        // shards, each with its own read transaction of the one snapshot.
        let mut work: Vec<(RoTxn<'_, WithoutTls>, Vec<ShardVisitor<'_, '_>>)> =
            txns.into_iter().map(|txn| (txn, Vec::new())).collect();
        for (shard, visitor) in visitors.iter_mut().enumerate() {
            work[shard % n_workers].1.push((shard, &mut **visitor));
        }
        let budget = (self.options.lookup_resident_bytes / n_workers).max(RESIDENCY_WINDOW_BYTES);
        work.into_par_iter()
            .map(|(txn, mut mine)| {
                let mut serves = [false; N_PARTITIONS];
                for (partition, serve) in serves.iter_mut().enumerate() {
                    *serve = mine.iter().any(|(shard, _)| partition % n_shards == *shard);
                }
                let mut slot = vec![usize::MAX; n_shards];
                for (k, (shard, _)) in mine.iter().enumerate() {
                    slot[*shard] = k;
                }
                self.lookup_partitions(
                    &txn,
                    &queries,
                    max_postings_per_key,
                    &tracks,
                    &serves,
                    budget,
                    &mut |partition, group, list| {
                        group.visit(list, &mut *mine[slot[partition % n_shards]].1)
                    },
                )
            })
            .collect::<Result<Vec<()>, IndexError>>()
            .map(|_| ())
    }

    fn stats(&self) -> Result<StoreStats, IndexError> {
        let rtxn = self.read_txn()?;
        let counters = self.read_counters(&rtxn)?;
        let n_tracks = self
            .dbs
            .tracks
            .len(&rtxn)
            .map_err(self.err("reading statistics"))?;
        let bytes_on_disk = self
            .env
            .real_disk_size()
            .map_err(self.err("reading the file size"))?;
        Ok(StoreStats {
            n_tracks,
            n_postings: counters.live_postings,
            total_duration_s: counters.total_duration_us as f64 / 1e6,
            bytes_on_disk,
            n_keys: counters.n_keys,
        })
    }

    fn update_metadata(&self, id: TrackId, info: &TrackInfo) -> Result<bool, IndexError> {
        let mut wtxn = self.write_txn()?;
        let Some(stored) = self.track_in(&wtxn, id)? else {
            return Ok(false);
        };
        let json = serde_json::to_vec(&merged_metadata(&stored, info)).map_err(|e| {
            IndexError::InvalidTrack {
                reason: format!("cannot be serialised: {e}"),
            }
        })?;
        self.dbs
            .tracks
            .put(&mut wtxn, &id.to_be_bytes(), &json)
            .map_err(self.err("writing the catalogue"))?;
        wtxn.commit().map_err(self.err("committing metadata"))?;
        Ok(true)
    }

    fn record_scan(
        &self,
        query: TrackId,
        examined: RangeInclusive<TrackId>,
        found: &[(TrackId, Vec<u8>)],
    ) -> Result<bool, IndexError> {
        validate_scan(query, &examined, found)?;
        let mut wtxn = self.write_txn()?;
        if self.track_in(&wtxn, query)?.is_none() {
            return Ok(false);
        }
        let stale: Vec<[u8; 8]> = self
            .relation_keys(&wtxn, self.dbs.relations, query)?
            .into_iter()
            .filter(|key| examined.contains(&pair_ids(*key).1))
            .collect();
        for key in stale {
            self.dbs
                .relations
                .delete(&mut wtxn, &key)
                .map_err(self.err("deleting a relation"))?;
            self.dbs
                .relations_rev
                .delete(&mut wtxn, &swap_pair(key))
                .map_err(self.err("deleting a relation"))?;
        }
        for (reference, payload) in found {
            if self.track_in(&wtxn, *reference)?.is_none() {
                continue;
            }
            let key = pair_key(query, *reference);
            self.dbs
                .relations
                .put(&mut wtxn, &key, payload)
                .map_err(self.err("writing a relation"))?;
            self.dbs
                .relations_rev
                .put(&mut wtxn, &swap_pair(key), &[])
                .map_err(self.err("writing a relation"))?;
        }
        let mark = self.scan_mark_in(&wtxn, query)?.unwrap_or(0);
        self.dbs
            .scan_marks
            .put(
                &mut wtxn,
                &query.to_be_bytes(),
                &mark.max(*examined.end()).to_be_bytes(),
            )
            .map_err(self.err("writing a scan mark"))?;
        wtxn.commit().map_err(self.err("committing a scan"))?;
        Ok(true)
    }

    fn scan_mark(&self, query: TrackId) -> Result<Option<TrackId>, IndexError> {
        let rtxn = self.read_txn()?;
        self.scan_mark_in(&rtxn, query)
    }

    fn relations(&self, track: Option<TrackId>) -> Result<Vec<Relation>, IndexError> {
        let rtxn = self.read_txn()?;
        let mut keys = match track {
            None => {
                let mut keys = Vec::new();
                for item in self
                    .dbs
                    .relations
                    .iter(&rtxn)
                    .map_err(self.err("reading relations"))?
                {
                    let (key, _) = item.map_err(self.err("reading relations"))?;
                    keys.push(self.pair_key_of(key)?);
                }
                keys
            }
            Some(id) => {
                let mut keys = self.relation_keys(&rtxn, self.dbs.relations, id)?;
                for key in self.relation_keys(&rtxn, self.dbs.relations_rev, id)? {
                    keys.push(swap_pair(key));
                }
                keys.sort_unstable();
                keys.dedup();
                keys
            }
        };
        keys.sort_unstable();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let payload = self
                .dbs
                .relations
                .get(&rtxn, &key)
                .map_err(self.err("reading relations"))?
                .ok_or_else(|| self.corrupt("a relation's reverse entry has no payload"))?;
            let (query, reference) = pair_ids(key);
            out.push(Relation {
                query,
                reference,
                payload: payload.to_vec(),
            });
        }
        Ok(out)
    }
}

/// The key of a relation: both ids big-endian, so keys sort by (first, second).
fn pair_key(first: TrackId, second: TrackId) -> [u8; 8] {
    let mut key = [0u8; 8];
    key[..4].copy_from_slice(&first.to_be_bytes());
    key[4..].copy_from_slice(&second.to_be_bytes());
    key
}

/// The two ids of a relation key.
fn pair_ids(key: [u8; 8]) -> (TrackId, TrackId) {
    let [a, b, c, d, e, f, g, h] = key;
    (
        TrackId::from_be_bytes([a, b, c, d]),
        TrackId::from_be_bytes([e, f, g, h]),
    )
}

/// The key of the same relation in the other direction's database.
fn swap_pair(key: [u8; 8]) -> [u8; 8] {
    let (first, second) = pair_ids(key);
    pair_key(second, first)
}

fn expected_meta(fingerprint_params: &str) -> StoreMeta {
    StoreMeta {
        format_version: FORMAT_VERSION,
        fingerprint_params: fingerprint_params.to_owned(),
    }
}

/// The file in a store folder that every opener locks shared and compaction exclusively.
const LOCK_FILE: &str = "cratedigger.lock";
/// Where compaction writes the new file before renaming it over the old one.
const COMPACT_STAGING_DIR: &str = "compacting";

/// Takes the shared lock that keeps [`LmdbStore::compact_in_place`] away while the store
/// is open. A read-only open of a store without a lock file (written before locks, or on
/// read-only media) goes without; so does any open where the file system has no locks.
fn lock_shared(dir: &Path, read_only: bool) -> Result<Option<fs::File>, IndexError> {
    let path = dir.join(LOCK_FILE);
    let file = if read_only {
        match fs::File::open(&path) {
            Ok(file) => file,
            Err(_) => return Ok(None),
        }
    } else {
        fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| IndexError::Io {
                dir: dir.to_owned(),
                source,
            })?
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(IndexError::Compacting {
            dir: dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(_)) => Ok(None),
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
    meta: BytesDb<'_>,
    txn: &RoTxn,
    expected: &StoreMeta,
) -> Result<Result<bool, IndexError>, heed::Error> {
    let version = meta.get(txn, META_FORMAT_VERSION)?;
    let params = meta.get(txn, META_FINGERPRINT_PARAMS)?;
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

fn write_meta(db: BytesDb<'_>, wtxn: &mut RwTxn, meta: &StoreMeta) -> Result<(), heed::Error> {
    db.put(
        wtxn,
        META_FORMAT_VERSION,
        &meta.format_version.to_be_bytes(),
    )?;
    db.put(
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
            reason: format!("{other}; check disk space and permissions, then retry").into(),
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

    /// Overwrites a track's run with arbitrary bytes (its state says nothing is merged).
    pub fn set_raw_run(store: &LmdbStore, id: TrackId, bytes: &[u8]) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        let key = id.to_be_bytes();
        store
            .dbs
            .runs
            .put(&mut wtxn, &key, bytes)
            .map_err(store.err("writing a run"))?;
        store
            .dbs
            .run_state
            .put(&mut wtxn, &key, &0u32.to_be_bytes())
            .map_err(store.err("writing a run"))?;
        wtxn.commit().map_err(store.err("committing"))
    }

    /// A database of the store, for [`set_raw`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RawDb {
        Meta,
        Tracks,
        Paths,
        Contents,
        Runs,
        RunState,
        Deleted,
        Counters,
        /// Anchor tables, under track ids.
        Anchors,
        /// The live main database of a partition (taken modulo the partition count).
        LiveMain(usize),
    }

    /// Writes an arbitrary value under an arbitrary key of any database, or deletes the key
    /// when `value` is `None`: the fuzz target for reading stores uses it to reach every
    /// decoding path. Keys LMDB itself refuses (empty or over 511 bytes) are errors.
    pub fn set_raw(
        store: &LmdbStore,
        db: RawDb,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        let target = raw_db(store, db, &wtxn)?;
        match value {
            Some(value) => target
                .put(&mut wtxn, key, value)
                .map_err(store.err("writing a raw value"))?,
            None => {
                target
                    .delete(&mut wtxn, key)
                    .map_err(store.err("deleting a raw value"))?;
            }
        }
        wtxn.commit().map_err(store.err("committing"))
    }

    /// The value under `key` in a database, for [`set_raw`]'s callers to mutate.
    pub fn get_raw(
        store: &LmdbStore,
        db: RawDb,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let rtxn = store.read_txn()?;
        let source = raw_db(store, db, &rtxn)?;
        Ok(source
            .get(&rtxn, key)
            .map_err(store.err("reading a raw value"))?
            .map(<[u8]>::to_vec))
    }

    fn raw_db(store: &LmdbStore, db: RawDb, txn: &RoTxn) -> Result<BytesDb<'static>, IndexError> {
        let dbs = &store.dbs;
        Ok(match db {
            RawDb::Meta => dbs.meta,
            RawDb::Tracks => dbs.tracks,
            RawDb::Paths => dbs.paths,
            RawDb::Contents => dbs.contents,
            RawDb::Runs => dbs.runs,
            RawDb::RunState => dbs.run_state,
            RawDb::Deleted => dbs.deleted,
            RawDb::Counters => dbs.counters,
            RawDb::Anchors => dbs.anchors,
            RawDb::LiveMain(partition) => {
                let counters = store.read_counters(txn)?;
                store.live_main(&counters, partition % N_PARTITIONS)
            }
        })
    }

    /// Every posting of every catalogued track, as (key, posting), sorted: main (without
    /// the postings of removed tracks) plus the unmerged sections of the runs. Crash tests
    /// compare stores with it, whatever their merge history.
    pub fn dump_postings(store: &LmdbStore) -> Result<Vec<(u32, Posting)>, IndexError> {
        let rtxn = store.read_txn()?;
        let counters = store.read_counters(&rtxn)?;
        let runs = store.load_runs(&rtxn)?;
        let tombstones = store.load_tombstones(&rtxn)?;
        let mut out = Vec::new();
        for partition in 0..N_PARTITIONS {
            let dead: Vec<TrackId> = tombstones
                .iter()
                .filter(|&&(_, purged)| purged & partition_bit(partition) == 0)
                .map(|&(track, _)| track)
                .collect();
            let main = store.live_main(&counters, partition);
            for item in main.iter(&rtxn).map_err(store.err("reading postings"))? {
                let (id, value) = item.map_err(store.err("reading postings"))?;
                let id: [u8; 4] = id
                    .try_into()
                    .map_err(|_| store.corrupt("a posting block key is not 4 bytes"))?;
                let id = u32::from_be_bytes(id);
                let block = Block::parse(id, value)
                    .map_err(|what| store.corrupt(format!("posting block {id}: {what}")))?;
                for (key, list) in block.lists() {
                    list.decode(|posting| {
                        if !dead.contains(&posting.track) {
                            out.push((key, posting));
                        }
                    })
                    .map_err(|what| store.corrupt(format!("posting list of key {key}: {what}")))?;
                }
            }
            for run in runs.iter().filter(|run| run.is_live_in(partition)) {
                let section = run.run.section(partition);
                for i in 0..section.len() {
                    out.push((section.key(i), section.posting(i, run.track)));
                }
            }
        }
        let mut tables = AnchorTables::new(store, &rtxn);
        for (_, posting) in &mut out {
            *posting = tables.resolve(*posting)?;
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The raw block holding `key`'s list in its partition's live main, if there is one.
    pub fn raw_main_block(store: &LmdbStore, key: u32) -> Result<Option<Vec<u8>>, IndexError> {
        let rtxn = store.read_txn()?;
        let counters = store.read_counters(&rtxn)?;
        Ok(store
            .live_main(&counters, partition_of(key))
            .get(&rtxn, &block_of(key).to_be_bytes())
            .map_err(store.err("reading postings"))?
            .map(<[u8]>::to_vec))
    }

    /// Overwrites the block holding `key`'s list in its partition's live main.
    pub fn set_raw_main_block(store: &LmdbStore, key: u32, bytes: &[u8]) -> Result<(), IndexError> {
        let mut wtxn = store.write_txn()?;
        let counters = store.read_counters(&wtxn)?;
        store
            .live_main(&counters, partition_of(key))
            .put(&mut wtxn, &block_of(key).to_be_bytes(), bytes)
            .map_err(store.err("writing postings"))?;
        wtxn.commit().map_err(store.err("committing"))
    }

    /// How the postings are spread over the tiers right now.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Tiers {
        /// Postings in main, removed tracks' included.
        pub main_postings: u64,
        /// Keys in main.
        pub main_keys: u64,
        /// Blocks in main (LMDB entries, each the lists of up to 4,096 keys).
        pub main_blocks: u64,
        /// Unmerged postings of runs.
        pub delta_postings: u64,
        /// Tracks with a run.
        pub delta_tracks: u64,
        /// Postings in main of removed tracks.
        pub dead_postings: u64,
        /// Tombstones not yet purged from every partition.
        pub tombstones: u64,
        /// Partition merges so far.
        pub partition_merges: u64,
        /// Pages main uses (branch, leaf and overflow).
        pub main_pages: u64,
        /// Pages the runs use.
        pub delta_pages: u64,
        /// Pages of the file in use or free (the last page number plus one).
        pub file_pages: u64,
        /// Bytes per page.
        pub page_size: u64,
    }

    /// Reads the tier sizes, to check that merges happen and to report them in benchmarks.
    pub fn tiers(store: &LmdbStore) -> Result<Tiers, IndexError> {
        let rtxn = store.read_txn()?;
        let counters = store.read_counters(&rtxn)?;
        let pages = |db: BytesDb<'static>| -> Result<(u64, u64, u64), IndexError> {
            let stat = db.stat(&rtxn).map_err(store.err("reading page counts"))?;
            let pages = stat.branch_pages + stat.leaf_pages + stat.overflow_pages;
            Ok((pages as u64, stat.entries as u64, u64::from(stat.page_size)))
        };
        let mut main_pages = 0;
        let mut main_keys = 0;
        let mut page_size = 0;
        let mut main_blocks = 0;
        for partition in 0..N_PARTITIONS {
            let main = store.live_main(&counters, partition);
            let (p, blocks, s) = pages(main)?;
            main_pages += p;
            main_blocks += blocks;
            page_size = s;
            let mut walker = Walker::new(main, &rtxn, &store.dir);
            let mut head = walker.seek(0)?;
            while head.is_some() {
                main_keys += 1;
                head = walker.advance()?;
            }
        }
        let (run_pages, delta_tracks, _) = pages(store.dbs.runs)?;
        Ok(Tiers {
            main_postings: counters.main_postings(),
            main_keys,
            main_blocks,
            delta_postings: counters.delta_postings,
            delta_tracks,
            dead_postings: counters.dead_postings,
            tombstones: pages(store.dbs.deleted)?.1,
            partition_merges: counters.partition_merges,
            main_pages,
            delta_pages: run_pages + pages(store.dbs.run_state)?.0,
            file_pages: store.env.info().last_page_number as u64 + 1,
            page_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader counts a window once, when it enters it: bytes read again (a main block
    /// whose keys share its value) count nothing, however many windows they straddle.
    #[test]
    fn residency_counts_each_window_of_a_reader_once() {
        let memory = vec![0u8; 4 * RESIDENCY_WINDOW_BYTES];
        // Bytes from the middle of a window to the middle of the next.
        let base = memory.as_ptr() as usize;
        let into = RESIDENCY_WINDOW_BYTES - base % RESIDENCY_WINDOW_BYTES;
        let half = RESIDENCY_WINDOW_BYTES / 2;
        let straddling = &memory[into + half..into + half + RESIDENCY_WINDOW_BYTES];
        let mut residency = MapResidency::new(usize::MAX);
        let mut last = NOTHING_READ;
        residency.touch(&mut last, straddling);
        assert_eq!(residency.windows, 2);
        residency.touch(&mut last, straddling);
        assert_eq!(residency.windows, 2, "read again, not counted again");
        // Moving on into the window after them counts that one only.
        let next = &memory[into + 2 * RESIDENCY_WINDOW_BYTES..][..half];
        residency.touch(&mut last, next);
        assert_eq!(residency.windows, 3);
        // Another reader counts its own.
        let mut other = NOTHING_READ;
        residency.touch(&mut other, straddling);
        assert_eq!(residency.windows, 5);
    }
}
