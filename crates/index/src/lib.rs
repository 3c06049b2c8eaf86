//! Fingerprint inverted index and track catalogue: maps opaque `u32` hash keys to postings.
//!
//! This crate knows nothing about audio. A posting is four opaque numbers (track, time,
//! freq, span) filed under an opaque `u32` key; the fingerprint crate decides what they
//! mean. Two backends implement the [`Store`] trait:
//!
//! * [`LmdbStore`], the persistent on-disk store (one LMDB environment per directory);
//! * [`MemStore`], an in-memory store for tests and synthetic benchmarks.
//!
//! The `index-redis` crate adds a third, on a Redis Cluster, through the [`backend`] helpers.
//!
//! Every backend must pass the shared behavioural suite in the `testsuite` module (enabled
//! by the `testsuite` cargo feature), so a new backend only has to call it to be checked.

mod anchors;
mod block;
mod codec;
mod error;
mod lmdb;
mod mem;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::ffi::OsString;
use std::ops::RangeInclusive;
use std::path::PathBuf;

pub use error::IndexError;
/// Hooks that damage a store on purpose, for corruption tests; not part of the API.
#[cfg(feature = "testsuite")]
#[doc(hidden)]
pub use lmdb::test_hooks;
pub use lmdb::{LmdbOptions, LmdbStore};
pub use mem::MemStore;

/// Helpers for [`Store`] implementations in other crates (the Redis Cluster store), so
/// every backend validates and normalises its input exactly as the ones here do.
pub mod backend {
    pub use crate::codec::{
        QueryGroup, QueryGroups, SortedQueries, duration_us, merged_metadata, prepare_entries,
        sort_queries, validate_scan, validate_side_data, validate_track_info,
    };
}

/// Identifies a track in one store. Ids are assigned by the store and never reused.
pub type TrackId = u32;

/// Version of the on-disk layout; a store written with another version must be rebuilt.
pub const FORMAT_VERSION: u32 = 5;

/// One occurrence of a hash key: which track it came from plus three opaque fields.
///
/// The field order is also the sort order, which every backend uses for the postings of one
/// key, so lookups visit postings in the same order whatever the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Posting {
    /// The track this posting belongs to.
    pub track: TrackId,
    /// Opaque fingerprint field (the fingerprint crate uses it as a time).
    pub time: u32,
    /// Opaque fingerprint field (the fingerprint crate uses it as a frequency).
    pub freq: u16,
    /// Opaque fingerprint field (the fingerprint crate uses it as a span).
    pub span: u16,
}

/// Catalogue entry for one indexed track.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrackInfo {
    /// Where the audio file was found; unique within a store unless empty.
    pub path: String,
    /// Hex digest of the file content; unique within a store unless empty.
    pub content_hash: String,
    /// Length of the audio; must be finite and not negative.
    pub duration_s: f64,
    /// Title from the file's tags, if any.
    pub title: Option<String>,
    /// Artist from the file's tags, if any.
    pub artist: Option<String>,
    /// Album from the file's tags, if any.
    pub album: Option<String>,
    /// Release year from the file's tags, if any.
    pub year: Option<i32>,
    /// MusicBrainz recording id, if known.
    pub musicbrainz_recording_id: Option<String>,
    /// MusicBrainz release id, if known.
    pub musicbrainz_release_id: Option<String>,
    /// Number of distinct postings stored for the track; [`Store::put_track`] overwrites it.
    pub n_postings: u64,
    /// When the track was indexed, in seconds since the Unix epoch.
    pub indexed_unix_s: u64,
}

/// What a store was built with; both must match the running engine for the store to be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreMeta {
    /// On-disk layout version, see [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Opaque description of the fingerprint parameters, supplied by the engine.
    pub fingerprint_params: String,
}

/// Size counters of a store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreStats {
    /// Number of tracks in the catalogue.
    pub n_tracks: u64,
    /// Number of postings of the catalogued tracks across all keys.
    pub n_postings: u64,
    /// Sum of the tracks' durations.
    pub total_duration_s: f64,
    /// Size of the store's files; zero for in-memory stores.
    pub bytes_on_disk: u64,
    /// Number of distinct hash keys that have at least one posting.
    ///
    /// After removals this may be an overestimate: a backend may keep counting keys whose
    /// only postings belong to removed tracks until it purges them ([`LmdbStore`] does so
    /// at its next merge). It never counts a key that no indexed track ever had.
    pub n_keys: u64,
}

impl StoreStats {
    /// Mean number of postings per key (zero for an empty store): the scale against which
    /// a caller picks the `max_postings_per_key` cap of [`Store::lookup`].
    pub fn mean_postings_per_key(&self) -> f64 {
        if self.n_keys == 0 {
            0.0
        } else {
            self.n_postings as f64 / self.n_keys as f64
        }
    }
}

/// Shared material found between two catalogued tracks by a scan.
///
/// The store keeps relations and drops them with either track; what the payload says
/// (segments, factors, confidence) is the engine's business.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Relation {
    /// The track whose audio was searched: it contains material of `reference`.
    pub query: TrackId,
    /// The track whose material was found inside `query`.
    pub reference: TrackId,
    /// Opaque description of what was found, at most [`MAX_RELATION_PAYLOAD_BYTES`] long.
    pub payload: Vec<u8>,
}

/// Largest side data of one track a store accepts (a four-hour track's peaks take ~1.3 MB).
pub const MAX_SIDE_DATA_BYTES: usize = 16 << 20;

/// Largest relation payload a store accepts.
pub const MAX_RELATION_PAYLOAD_BYTES: usize = 1 << 20;

/// One posting as the caller supplies it: `(hash key, time, freq, span)`.
pub type Entry = (u32, u32, u16, u16);

/// An inverted index from hash keys to postings, plus the catalogue of indexed tracks.
///
/// Implementations are shared between threads; each call is its own transaction, so a
/// reader never sees half of a [`Store::put_track`] or [`Store::remove_track`].
pub trait Store: Send + Sync {
    /// What the store was built with.
    fn meta(&self) -> &StoreMeta;

    /// Atomically stores a track's catalogue entry, all its postings and its side data
    /// (opaque bytes kept for the caller, at most [`MAX_SIDE_DATA_BYTES`]; the engine keeps
    /// the reference's peaks there), and returns its new id.
    ///
    /// Exact duplicate entries are stored once, and the stored `n_postings` is set to the
    /// number of distinct postings. If `replaces` is `Some`, that track is removed in the same
    /// transaction, so readers see either the old track or the new one, never both or neither.
    /// Fails without changing anything if another track already has the same non-empty path
    /// or content hash, if `replaces` names a track that does not exist, or if the side data
    /// is too large.
    fn put_track_with_side_data(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
        side_data: &[u8],
        replaces: Option<TrackId>,
    ) -> Result<TrackId, IndexError>;

    /// [`Store::put_track_with_side_data`] without side data.
    fn put_track(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
        replaces: Option<TrackId>,
    ) -> Result<TrackId, IndexError> {
        self.put_track_with_side_data(info, entries, &[], replaces)
    }

    /// A track's side data as stored by [`Store::put_track_with_side_data`] (empty if it
    /// was stored without), or `None` if the track is not catalogued.
    fn side_data(&self, id: TrackId) -> Result<Option<Vec<u8>>, IndexError>;

    /// Removes a track's catalogue entry and all its postings; returns whether it existed.
    fn remove_track(&self, id: TrackId) -> Result<bool, IndexError>;

    /// Returns a track's catalogue entry.
    fn track(&self, id: TrackId) -> Result<Option<TrackInfo>, IndexError>;

    /// Returns every track, in id order.
    fn tracks(&self) -> Result<Vec<(TrackId, TrackInfo)>, IndexError>;

    /// Finds the track indexed from exactly this path (empty paths are never found).
    fn find_by_path(&self, path: &str) -> Result<Option<TrackId>, IndexError>;

    /// Finds the track whose content hash is exactly this string (compared byte for byte,
    /// so callers must use one hex case consistently; empty hashes are never found).
    fn find_by_content(&self, content_hash_hex: &str) -> Result<Option<TrackId>, IndexError>;

    /// Calls `visit(i, posting)` for every posting filed under `keys[i]`, all from one
    /// consistent snapshot, skipping keys with more than `max_postings_per_key` postings.
    ///
    /// Keys need not be sorted or unique; a key repeated at several indices is looked up once
    /// and its postings are visited once per index. Visits come in ascending key order and,
    /// within a key, in ascending posting order.
    ///
    /// A key whose postings outnumber `max_postings_per_key` is skipped entirely: none of its
    /// postings is visited. Such keys come from generic patterns found all over a library;
    /// they carry little evidence, and the cap lets a backend skip them without reading
    /// them. A key with exactly `max_postings_per_key` postings is visited in full, and
    /// `usize::MAX` means no cap. Only postings of catalogued tracks count.
    fn lookup(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        visit: &mut dyn FnMut(usize, Posting),
    ) -> Result<(), IndexError>;

    /// [`Store::lookup`] spread over several visitors, which a backend may call from
    /// several threads at once. The postings of `keys[i]` go to
    /// `visitors[lookup_shard(keys[i], visitors.len())]`, and each visitor sees its own
    /// keys' postings in the order `lookup` would visit them; so what each visitor
    /// receives, and in which order, does not depend on how many threads served it.
    /// With no visitors there is nothing to visit.
    fn lookup_sharded(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        visitors: &mut [&mut (dyn FnMut(usize, Posting) + Send)],
    ) -> Result<(), IndexError> {
        let n_shards = visitors.len();
        if n_shards == 0 {
            return Ok(());
        }
        self.lookup(keys, max_postings_per_key, &mut |i, posting| {
            (visitors[lookup_shard(keys[i], n_shards)])(i, posting)
        })
    }

    /// [`Store::lookup_sharded`] for the postings of tracks in `tracks` only: exactly its
    /// visits with the other tracks' left out. The cap still counts every posting of a
    /// key, in `tracks` or not. A backend may skip reading what lies outside the range
    /// (LMDB reads a posting list only up to its last track in range, unless a removed
    /// track in the list's partition asks for its live postings to be counted, so damage
    /// past the range may go unnoticed); the default filters the visits.
    fn lookup_sharded_among(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        tracks: RangeInclusive<TrackId>,
        visitors: &mut [&mut (dyn FnMut(usize, Posting) + Send)],
    ) -> Result<(), IndexError> {
        let mut filtered: Vec<_> = visitors
            .iter_mut()
            .map(|visit| {
                let tracks = tracks.clone();
                move |i: usize, posting: Posting| {
                    if tracks.contains(&posting.track) {
                        visit(i, posting);
                    }
                }
            })
            .collect();
        let mut filtered: Vec<&mut (dyn FnMut(usize, Posting) + Send)> = filtered
            .iter_mut()
            .map(|v| v as &mut (dyn FnMut(usize, Posting) + Send))
            .collect();
        self.lookup_sharded(keys, max_postings_per_key, &mut filtered)
    }

    /// Returns the store's size counters.
    fn stats(&self) -> Result<StoreStats, IndexError>;

    /// Replaces a track's descriptive metadata (title, artist, album, year and MusicBrainz
    /// ids) by those of `info`, keeping everything else (path, content hash, duration,
    /// posting count, indexing time) as stored; returns whether the track exists.
    fn update_metadata(&self, id: TrackId, info: &TrackInfo) -> Result<bool, IndexError>;

    /// Records that `query` was searched for material of every track whose id lies in
    /// `examined`, and what was found.
    ///
    /// In one transaction: every stored relation from `query` to a reference in `examined`
    /// is dropped, `found` (reference, payload) pairs are stored, and the scan mark of
    /// `query` is raised to `examined.end()` (never lowered). References that are no longer
    /// catalogued are skipped, since a track removed during a scan takes its relations with
    /// it. Returns `Ok(false)` without changing anything if `query` itself is not
    /// catalogued. Fails without changing anything if a reference is `query` itself, lies
    /// outside `examined` or appears twice, or a payload exceeds
    /// [`MAX_RELATION_PAYLOAD_BYTES`].
    fn record_scan(
        &self,
        query: TrackId,
        examined: RangeInclusive<TrackId>,
        found: &[(TrackId, Vec<u8>)],
    ) -> Result<bool, IndexError>;

    /// The highest reference id `query` has been scanned through, `None` if never.
    fn scan_mark(&self, query: TrackId) -> Result<Option<TrackId>, IndexError>;

    /// Relations that involve `track` as query or reference, or every relation if `track`
    /// is `None`; sorted by (query, reference).
    fn relations(&self, track: Option<TrackId>) -> Result<Vec<Relation>, IndexError>;
}

/// The shard of `key` among `n_shards` in [`Store::lookup_sharded`] (0 when there are
/// none): a fixed function of the key, so that a caller's shards do not depend on the
/// backend or on the number of threads.
pub fn lookup_shard(key: u32, n_shards: usize) -> usize {
    codec::partition_of(key) % n_shards.max(1)
}

/// Where the store lives unless the user says otherwise.
///
/// `$CRATEDIGGER_DB` if set, else `$XDG_DATA_HOME/cratedigger/db`, else
/// `~/.local/share/cratedigger/db`.
pub fn default_store_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir);
    store_dir_from(
        std::env::var_os("CRATEDIGGER_DB"),
        std::env::var_os("XDG_DATA_HOME"),
        home,
    )
}

/// The environment-free part of [`default_store_dir`], separated so it can be tested without
/// mutating the process environment.
fn store_dir_from(
    cratedigger_db: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(dir) = cratedigger_db.filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    let xdg = xdg_data_home
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute());
    let data_home = match (xdg, home) {
        (Some(xdg), _) => xdg,
        (None, Some(home)) => home.join(".local").join("share"),
        // Without any home directory the best remaining guess is relative to the working
        // directory, which at least keeps the store next to where the user ran the tool.
        (None, None) => PathBuf::from(".local").join("share"),
    };
    data_home.join("cratedigger").join("db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<IndexError>();
        assert_send_sync::<LmdbStore>();
        assert_send_sync::<MemStore>();
    }

    #[test]
    fn store_dir_prefers_explicit_variable() {
        let dir = store_dir_from(
            Some("/data/db".into()),
            Some("/xdg".into()),
            Some("/home/u".into()),
        );
        assert_eq!(dir, PathBuf::from("/data/db"));
    }

    #[test]
    fn store_dir_uses_xdg_then_home() {
        let xdg = store_dir_from(None, Some("/xdg".into()), Some("/home/u".into()));
        assert_eq!(xdg, PathBuf::from("/xdg/cratedigger/db"));
        let home = store_dir_from(Some("".into()), None, Some("/home/u".into()));
        assert_eq!(home, PathBuf::from("/home/u/.local/share/cratedigger/db"));
        let relative_xdg = store_dir_from(None, Some("rel".into()), Some("/home/u".into()));
        assert_eq!(
            relative_xdg,
            PathBuf::from("/home/u/.local/share/cratedigger/db")
        );
    }
}
