//! Behavioural test suite that every [`Store`] backend must pass.
//!
//! A backend hands the suite a factory for fresh, empty stores and gets one `#[test]` per
//! behaviour from [`store_test_suite!`](crate::store_test_suite):
//!
//! ```text
//! index::store_test_suite!(|| index::testsuite::Fixture::new(index::MemStore::new("p")));
//! ```
//!
//! The suite panics on failure, like any test. It is compiled only with the `testsuite`
//! feature, so production builds carry neither it nor proptest.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::{Entry, IndexError, Posting, Relation, Store, StoreStats, TrackId, TrackInfo};

/// A fresh store plus whatever must outlive it (a temporary directory, a server handle).
pub struct Fixture {
    // Field order matters: the store is dropped before the guard it may depend on.
    store: Box<dyn Store>,
    _guard: Box<dyn Any>,
}

impl Fixture {
    /// Wraps a store that needs nothing kept alive.
    pub fn new(store: impl Store + 'static) -> Self {
        Self::with_guard(store, ())
    }

    /// Wraps a store together with a guard that is dropped after it.
    pub fn with_guard(store: impl Store + 'static, guard: impl Any) -> Self {
        Self {
            store: Box::new(store),
            _guard: Box::new(guard),
        }
    }

    /// The store under test.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
}

/// A catalogue entry with the given identity fields and plausible everything else.
pub fn track_info(path: &str, content_hash: &str, duration_s: f64) -> TrackInfo {
    TrackInfo {
        path: path.to_owned(),
        content_hash: content_hash.to_owned(),
        duration_s,
        title: Some(format!("title of {path}")),
        artist: Some("artist".to_owned()),
        album: None,
        year: Some(1994),
        musicbrainz_recording_id: None,
        musicbrainz_release_id: Some("f1c1d7b2-0000-4000-8000-000000000000".to_owned()),
        n_postings: 0,
        indexed_unix_s: 1_700_000_000,
    }
}

/// Every `(index, posting)` visit of an uncapped lookup, sorted so results compare as
/// multisets.
pub fn lookup_all(store: &dyn Store, keys: &[u32]) -> Vec<(usize, Posting)> {
    lookup_capped(store, keys, usize::MAX)
}

/// The visits of [`Store::lookup_sharded_among`] over `n_shards` visitors, one vector
/// each, in the order each visitor received them.
pub fn sharded_visits(
    store: &dyn Store,
    keys: &[u32],
    cap: usize,
    tracks: std::ops::RangeInclusive<TrackId>,
    n_shards: usize,
) -> Result<Vec<Vec<(usize, Posting)>>, IndexError> {
    let mut shards: Vec<Vec<(usize, Posting)>> = vec![Vec::new(); n_shards];
    let mut visitors: Vec<_> = shards
        .iter_mut()
        .map(|v| move |i: usize, p: Posting| v.push((i, p)))
        .collect();
    let mut visitors: Vec<&mut (dyn FnMut(usize, Posting) + Send)> = visitors
        .iter_mut()
        .map(|v| v as &mut (dyn FnMut(usize, Posting) + Send))
        .collect();
    store.lookup_sharded_among(keys, cap, tracks, &mut visitors)?;
    drop(visitors);
    Ok(shards)
}

/// Every `(index, posting)` visit of a lookup with the given cap, sorted.
pub fn lookup_capped(store: &dyn Store, keys: &[u32], cap: usize) -> Vec<(usize, Posting)> {
    let mut visits = Vec::new();
    store
        .lookup(keys, cap, &mut |i, posting| visits.push((i, posting)))
        .expect("lookup failed");
    visits.sort_unstable();
    visits
}

fn posting(track: TrackId, time: u32, freq: u16, span: u16) -> Posting {
    Posting {
        track,
        time,
        freq,
        span,
    }
}

/// The postings a lookup of `keys` must produce if the store holds exactly `tracks`.
fn expected_visits(tracks: &[(TrackId, &[Entry])], keys: &[u32]) -> Vec<(usize, Posting)> {
    let mut by_key: BTreeMap<u32, BTreeSet<Posting>> = BTreeMap::new();
    for &(track, entries) in tracks {
        for &(key, time, freq, span) in entries {
            by_key
                .entry(key)
                .or_default()
                .insert(posting(track, time, freq, span));
        }
    }
    let mut visits = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for &p in by_key.get(key).into_iter().flatten() {
            visits.push((i, p));
        }
    }
    visits.sort_unstable();
    visits
}

/// Checks `n_keys` after removals: at least the keys with live postings, at most the keys
/// that were ever stored (see [`StoreStats::n_keys`]).
fn assert_n_keys(stats: &StoreStats, live_keys: u64, ever_keys: u64) {
    assert!(
        (live_keys..=ever_keys).contains(&stats.n_keys),
        "n_keys {} is outside {live_keys}..={ever_keys}",
        stats.n_keys
    );
}

/// Stats without the file size, which may legitimately change on an aborted write.
fn logical_stats(store: &dyn Store) -> StoreStats {
    let mut stats = store.stats().expect("stats failed");
    stats.bytes_on_disk = 0;
    stats
}

/// Everything a client can observe: catalogue, postings of some keys and counters.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tracks: Vec<(TrackId, TrackInfo)>,
    visits: Vec<(usize, Posting)>,
    stats: StoreStats,
}

fn snapshot(store: &dyn Store, keys: &[u32]) -> Snapshot {
    Snapshot {
        tracks: store.tracks().expect("tracks failed"),
        visits: lookup_all(store, keys),
        stats: logical_stats(store),
    }
}

/// Catalogue entries and postings come back exactly as stored.
pub fn round_trip(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    assert_eq!(store.stats().expect("stats").n_tracks, 0);
    assert_eq!(store.track(1).expect("track"), None);
    assert_eq!(store.tracks().expect("tracks"), vec![]);
    assert_eq!(lookup_all(store, &[1, 2, 3]), vec![]);

    let info_a = track_info("/music/a.flac", "aaaa", 180.5);
    let entries_a: Vec<Entry> = vec![(10, 0, 1, 2), (10, 5, 1, 2), (20, 3, 4, 5)];
    let a = store.put_track(&info_a, &entries_a, None).expect("put a");
    let info_b = track_info("/music/b.flac", "bbbb", 60.0);
    let entries_b: Vec<Entry> = vec![(20, 7, 8, 9), (u32::MAX, u32::MAX, u16::MAX, u16::MAX)];
    let b = store.put_track(&info_b, &entries_b, None).expect("put b");
    assert_ne!(a, b);

    let stored_a = store.track(a).expect("track a").expect("a exists");
    assert_eq!(
        stored_a,
        TrackInfo {
            n_postings: 3,
            ..info_a.clone()
        }
    );
    let stored_b = store.track(b).expect("track b").expect("b exists");
    assert_eq!(
        stored_b,
        TrackInfo {
            n_postings: 2,
            ..info_b.clone()
        }
    );
    assert_eq!(
        store.tracks().expect("tracks"),
        vec![(a, stored_a), (b, stored_b)]
    );

    assert_eq!(store.find_by_path("/music/a.flac").expect("find"), Some(a));
    assert_eq!(store.find_by_path("/music/b.flac").expect("find"), Some(b));
    assert_eq!(store.find_by_path("/music/c.flac").expect("find"), None);
    assert_eq!(store.find_by_content("aaaa").expect("find"), Some(a));
    assert_eq!(store.find_by_content("bbbb").expect("find"), Some(b));
    assert_eq!(store.find_by_content("AAAA").expect("find"), None);

    let keys = [10, 20, 30, u32::MAX, 0];
    assert_eq!(
        lookup_all(store, &keys),
        expected_visits(&[(a, &entries_a), (b, &entries_b)], &keys)
    );
    assert_eq!(store.meta().format_version, crate::FORMAT_VERSION);
}

/// Exact duplicate entries are stored once and counted once.
pub fn duplicate_entries_stored_once(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let entries: Vec<Entry> = vec![(7, 1, 1, 1), (7, 1, 1, 1), (7, 1, 1, 2), (3, 0, 0, 0)];
    let id = store
        .put_track(&track_info("/d", "d", 1.0), &entries, None)
        .expect("put");
    assert_eq!(
        store.track(id).expect("track").expect("exists").n_postings,
        3
    );
    assert_eq!(
        lookup_all(store, &[7]),
        vec![(0, posting(id, 1, 1, 1)), (0, posting(id, 1, 1, 2))]
    );
    let stats = store.stats().expect("stats");
    assert_eq!((stats.n_postings, stats.n_keys), (3, 2));
}

/// Lookups accept unsorted, repeated and absent keys, keep caller indices, and visit in
/// ascending key then posting order.
pub fn lookup_maps_indices(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let entries_a: Vec<Entry> = vec![(5, 1, 0, 0), (9, 2, 0, 0), (9, 1, 0, 0)];
    let entries_b: Vec<Entry> = vec![(5, 0, 0, 0), (1, 3, 0, 0)];
    let a = store
        .put_track(&track_info("/a", "a", 1.0), &entries_a, None)
        .expect("put a");
    let b = store
        .put_track(&track_info("/b", "b", 1.0), &entries_b, None)
        .expect("put b");

    assert_eq!(lookup_all(store, &[]), vec![]);
    let keys = [9, 5, 4, 9, 1, 5, 100];
    assert_eq!(
        lookup_all(store, &keys),
        expected_visits(&[(a, &entries_a), (b, &entries_b)], &keys)
    );

    let mut order = Vec::new();
    store
        .lookup(&keys, usize::MAX, &mut |i, p| order.push((keys[i], p)))
        .expect("lookup");
    assert!(
        order.windows(2).all(|pair| pair[0] <= pair[1]),
        "visits are not in key then posting order: {order:?}"
    );
}

/// Removing a track deletes its entry and every one of its postings, and nothing else.
pub fn remove_deletes_only_that_track(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let entries_a: Vec<Entry> = (0..200).map(|i| (i % 37, i, 1, 1)).collect();
    let entries_b: Vec<Entry> = (0..200).map(|i| (i % 23, i, 2, 2)).collect();
    let entries_c: Vec<Entry> = (0..50).map(|i| (1000 + i, i, 3, 3)).collect();
    let a = store
        .put_track(&track_info("/a", "a", 10.0), &entries_a, None)
        .expect("put a");
    let b = store
        .put_track(&track_info("/b", "b", 20.0), &entries_b, None)
        .expect("put b");
    let c = store
        .put_track(&track_info("/c", "c", 30.0), &entries_c, None)
        .expect("put c");
    let keys: Vec<u32> = (0..1100).collect();

    assert!(store.remove_track(b).expect("remove b"));
    assert!(!store.remove_track(b).expect("remove b again"));
    assert_eq!(store.track(b).expect("track"), None);
    assert_eq!(store.find_by_path("/b").expect("find"), None);
    assert_eq!(store.find_by_content("b").expect("find"), None);
    assert_eq!(
        lookup_all(store, &keys),
        expected_visits(&[(a, &entries_a), (c, &entries_c)], &keys)
    );
    let stats = store.stats().expect("stats");
    assert_eq!(stats.n_tracks, 2);
    assert_eq!(stats.n_postings, 250);
    assert_n_keys(&stats, 37 + 50, 37 + 50);
    assert!((stats.total_duration_s - 40.0).abs() < 1e-6);

    assert!(store.remove_track(a).expect("remove a"));
    assert!(store.remove_track(c).expect("remove c"));
    assert_eq!(lookup_all(store, &keys), vec![]);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.n_tracks, stats.n_postings), (0, 0));
    assert_n_keys(&stats, 0, 37 + 50);
    assert!(stats.total_duration_s.abs() < 1e-9);
    assert!(!store.remove_track(12345).expect("remove unknown"));
}

/// Replacing swaps old for new in one step, keeping the path usable by the new track.
pub fn replace_swaps_track(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let old_entries: Vec<Entry> = vec![(1, 1, 1, 1), (2, 2, 2, 2)];
    let new_entries: Vec<Entry> = vec![(2, 9, 9, 9), (3, 3, 3, 3)];
    let other_entries: Vec<Entry> = vec![(2, 5, 5, 5)];
    let old = store
        .put_track(&track_info("/x.flac", "old", 5.0), &old_entries, None)
        .expect("put old");
    let other = store
        .put_track(&track_info("/y.flac", "other", 5.0), &other_entries, None)
        .expect("put other");
    let new = store
        .put_track(&track_info("/x.flac", "new", 6.0), &new_entries, Some(old))
        .expect("replace");
    assert!(new > other, "ids must keep increasing");
    assert_eq!(store.track(old).expect("track"), None);
    assert_eq!(store.find_by_path("/x.flac").expect("find"), Some(new));
    assert_eq!(store.find_by_content("old").expect("find"), None);
    assert_eq!(store.find_by_content("new").expect("find"), Some(new));
    let keys = [1, 2, 3];
    assert_eq!(
        lookup_all(store, &keys),
        expected_visits(&[(other, &other_entries), (new, &new_entries)], &keys)
    );
    let stats = store.stats().expect("stats");
    assert_eq!((stats.n_tracks, stats.n_postings), (2, 3));
    assert_n_keys(&stats, 2, 3);
    assert!((stats.total_duration_s - 11.0).abs() < 1e-6);

    // Keeping the same content hash under a new path is how a moved file is re-indexed.
    let moved = store
        .put_track(
            &track_info("/moved.flac", "new", 6.0),
            &new_entries,
            Some(new),
        )
        .expect("move");
    assert_eq!(store.find_by_content("new").expect("find"), Some(moved));
    assert_eq!(store.find_by_path("/x.flac").expect("find"), None);
}

/// A put that fails for any reason leaves the store exactly as it was.
pub fn failed_put_changes_nothing(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let a = store
        .put_track(
            &track_info("/a", "a", 1.0),
            &[(1, 1, 1, 1), (2, 2, 2, 2)],
            None,
        )
        .expect("put a");
    let c = store
        .put_track(&track_info("/c", "c", 1.0), &[(2, 3, 3, 3)], None)
        .expect("put c");
    let keys: Vec<u32> = (0..10).collect();
    let before = snapshot(store, &keys);
    let new_entries: Vec<Entry> = vec![(1, 7, 7, 7), (5, 5, 5, 5)];

    // Replacing `a` with an entry whose path belongs to `c` must fail after `a` would
    // already have been removed, so this checks that the removal is rolled back.
    let error = store
        .put_track(&track_info("/c", "new", 1.0), &new_entries, Some(a))
        .expect_err("path of c is taken");
    assert!(
        matches!(error, IndexError::PathTaken { existing, .. } if existing == c),
        "unexpected error {error:?}"
    );
    let error = store
        .put_track(&track_info("/new", "c", 1.0), &new_entries, Some(a))
        .expect_err("content of c is taken");
    assert!(
        matches!(error, IndexError::ContentTaken { existing, .. } if existing == c),
        "unexpected error {error:?}"
    );
    let error = store
        .put_track(&track_info("/new", "new", 1.0), &new_entries, Some(999))
        .expect_err("999 does not exist");
    assert!(
        matches!(error, IndexError::UnknownTrack { id: 999 }),
        "unexpected error {error:?}"
    );
    for bad_duration in [f64::NAN, f64::INFINITY, -1.0] {
        let error = store
            .put_track(&track_info("/new", "new", bad_duration), &new_entries, None)
            .expect_err("bad duration");
        assert!(
            matches!(error, IndexError::InvalidTrack { .. }),
            "unexpected error {error:?}"
        );
    }
    assert_eq!(snapshot(store, &keys), before);

    // The failures must not have consumed or corrupted anything: the next put still works.
    let d = store
        .put_track(&track_info("/d", "d", 1.0), &new_entries, None)
        .expect("put d");
    assert!(d > c);
}

/// Track ids only ever grow, even after the newest track is removed.
pub fn ids_are_never_reused(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let mut seen = BTreeSet::new();
    let mut last = None;
    for round in 0..5 {
        let path = format!("/t{round}");
        let id = store
            .put_track(&track_info(&path, &path, 1.0), &[(round, 0, 0, 0)], None)
            .expect("put");
        assert!(seen.insert(id), "id {id} reused");
        assert!(last < Some(id), "id {id} not above {last:?}");
        last = Some(id);
        assert!(store.remove_track(id).expect("remove"));
    }
    assert_eq!(store.stats().expect("stats").n_tracks, 0);
}

/// Paths and content hashes identify at most one track; empty ones identify none; long
/// ones work as well as short ones.
pub fn identity_conflicts(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let a = store
        .put_track(&track_info("/a", "hash-a", 1.0), &[], None)
        .expect("put a");
    let error = store
        .put_track(&track_info("/a", "hash-other", 1.0), &[], None)
        .expect_err("same path");
    assert!(matches!(error, IndexError::PathTaken { existing, .. } if existing == a));
    let error = store
        .put_track(&track_info("/other", "hash-a", 1.0), &[], None)
        .expect_err("same content");
    assert!(matches!(error, IndexError::ContentTaken { existing, .. } if existing == a));

    let unknown_1 = store
        .put_track(&track_info("/u1", "", 1.0), &[], None)
        .expect("empty content is not an identity");
    let unknown_2 = store
        .put_track(&track_info("/u2", "", 1.0), &[], None)
        .expect("empty content is not an identity");
    assert_ne!(unknown_1, unknown_2);
    assert_eq!(store.find_by_content("").expect("find"), None);
    assert_eq!(store.find_by_path("").expect("find"), None);

    let prefix = format!("/{}", "deep/".repeat(200));
    let long_1 = format!("{prefix}one.flac");
    let long_2 = format!("{prefix}two.flac");
    let id_1 = store
        .put_track(&track_info(&long_1, &long_1, 1.0), &[], None)
        .expect("long path 1");
    let id_2 = store
        .put_track(&track_info(&long_2, &long_2, 1.0), &[], None)
        .expect("long path 2");
    assert_eq!(store.find_by_path(&long_1).expect("find"), Some(id_1));
    assert_eq!(store.find_by_path(&long_2).expect("find"), Some(id_2));
    assert_eq!(store.find_by_content(&long_2).expect("find"), Some(id_2));
    assert_eq!(
        store
            .find_by_path(&format!("{prefix}three.flac"))
            .expect("find"),
        None
    );
    assert!(store.remove_track(id_1).expect("remove"));
    assert_eq!(store.find_by_path(&long_1).expect("find"), None);
    assert_eq!(store.find_by_path(&long_2).expect("find"), Some(id_2));
    let unicode = "/música/東京/🎵.opus";
    let id_u = store
        .put_track(&track_info(unicode, "u", 1.0), &[], None)
        .expect("unicode");
    assert_eq!(store.find_by_path(unicode).expect("find"), Some(id_u));
}

/// A key with more postings than the cap is skipped whole; at the cap it is visited whole.
pub fn lookup_cap_skips_common_keys(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    // Key 1 gets 2 postings per track, key 2 one, key 3 only from track a.
    let entries_for =
        |t: u32| -> Vec<Entry> { vec![(1, t, 0, 0), (1, t + 100, 0, 0), (2, t, 1, 1)] };
    let mut ids = Vec::new();
    for t in 0..3u32 {
        let path = format!("/{t}");
        let mut entries = entries_for(t);
        if t == 0 {
            entries.push((3, 7, 7, 7));
        }
        ids.push(
            store
                .put_track(&track_info(&path, &path, 1.0), &entries, None)
                .expect("put"),
        );
    }
    let keys = [2, 1, 3, 1, 99];
    let visits_of = |key: u32, visits: &[(usize, Posting)]| {
        visits.iter().filter(|(i, _)| keys[*i] == key).count()
    };
    let all = lookup_all(store, &keys);
    assert_eq!(
        (visits_of(1, &all), visits_of(2, &all), visits_of(3, &all)),
        (12, 3, 1)
    );
    // Key 1 has 6 postings (visited twice, at two indices), key 2 has 3, key 3 has 1.
    for (cap, expected) in [
        (usize::MAX, (12, 3, 1)),
        (6, (12, 3, 1)),
        (5, (0, 3, 1)),
        (3, (0, 3, 1)),
        (2, (0, 0, 1)),
        (1, (0, 0, 1)),
        (0, (0, 0, 0)),
    ] {
        let visits = lookup_capped(store, &keys, cap);
        assert_eq!(
            (
                visits_of(1, &visits),
                visits_of(2, &visits),
                visits_of(3, &visits)
            ),
            expected,
            "cap {cap}"
        );
        // What is visited is exactly the uncapped result restricted to the kept keys.
        let kept: Vec<_> = all
            .iter()
            .filter(|(i, _)| {
                let n = visits_of(keys[*i], &all) / keys.iter().filter(|&&k| k == keys[*i]).count();
                n <= cap
            })
            .copied()
            .collect();
        assert_eq!(visits, kept, "cap {cap}");
    }

    // Only live postings count: after removing a track, key 1 has 4 postings and key 2 two.
    assert!(store.remove_track(ids[1]).expect("remove"));
    let visits = lookup_capped(store, &keys, 4);
    assert_eq!(
        (
            visits_of(1, &visits),
            visits_of(2, &visits),
            visits_of(3, &visits)
        ),
        (8, 2, 1)
    );
    let visits = lookup_capped(store, &keys, 3);
    assert_eq!(
        (
            visits_of(1, &visits),
            visits_of(2, &visits),
            visits_of(3, &visits)
        ),
        (0, 2, 1)
    );
    // And new tracks count along with older ones.
    store
        .put_track(&track_info("/new", "/new", 1.0), &entries_for(50), None)
        .expect("put");
    let visits = lookup_capped(store, &keys, 5);
    assert_eq!(
        (
            visits_of(1, &visits),
            visits_of(2, &visits),
            visits_of(3, &visits)
        ),
        (0, 3, 1)
    );
    let visits = lookup_capped(store, &keys, 6);
    assert_eq!(visits_of(1, &visits), 12);
}

/// Counters follow puts and removals exactly.
pub fn stats_count_right(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let mut total_s = 0.0;
    let mut ids = Vec::new();
    for t in 0..6u32 {
        let entries: Vec<Entry> = (0..(t * 10)).map(|i| (i % 7 + t, i, 0, 0)).collect();
        let duration_s = 30.0 + f64::from(t) * 0.123_456;
        total_s += duration_s;
        let path = format!("/{t}");
        ids.push(
            store
                .put_track(&track_info(&path, &path, duration_s), &entries, None)
                .expect("put"),
        );
    }
    let stats = store.stats().expect("stats");
    assert_eq!(stats.n_tracks, 6);
    assert_eq!(stats.n_postings, (0..6).map(|t| t * 10).sum::<u64>());
    // Keys t..t+7 for t in 1..6 (track 0 has no entries) cover 1..=11.
    assert_eq!(stats.n_keys, 11);
    assert!((stats.total_duration_s - total_s).abs() < 1e-5);
    let tracks = store.tracks().expect("tracks");
    let sum: u64 = tracks.iter().map(|(_, info)| info.n_postings).sum();
    assert_eq!(sum, stats.n_postings);
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        path: u8,
        content: u8,
        entries: Vec<Entry>,
    },
    Remove {
        pick: usize,
    },
    Replace {
        pick: usize,
        path: u8,
        content: u8,
        entries: Vec<Entry>,
    },
}

/// Keys mostly from small ranges, so tracks share keys (one range crosses the LMDB main's
/// block boundaries at 64 and 128), with a few from anywhere.
fn entries_strategy() -> impl Strategy<Value = Vec<Entry>> {
    let key = prop_oneof![3 => 0u32..48, 2 => 56u32..136, 1 => any::<u32>()];
    proptest::collection::vec((key, 0u32..6, 0u16..3, 0u16..2), 0..40)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, 0u8..6, entries_strategy())
            .prop_map(|(path, content, entries)| Op::Put { path, content, entries }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        2 => (any::<usize>(), 0u8..6, 0u8..6, entries_strategy()).prop_map(
            |(pick, path, content, entries)| Op::Replace { pick, path, content, entries }
        ),
    ]
}

/// Slot 0 is the empty string, which is never an identity.
fn slot_name(prefix: &str, slot: u8) -> String {
    if slot == 0 {
        String::new()
    } else {
        format!("{prefix}{slot}")
    }
}

/// What the model remembers of one live track.
struct ModelTrack {
    path: String,
    content: String,
    /// Distinct `(key, posting)` pairs.
    postings: BTreeSet<(u32, Posting)>,
}

#[derive(Default)]
struct Model {
    tracks: BTreeMap<TrackId, ModelTrack>,
    max_id: Option<TrackId>,
    /// Every key any stored track ever had, the upper bound of `n_keys`.
    ever_keys: BTreeSet<u32>,
}

impl Model {
    fn pick(&self, pick: usize) -> TrackId {
        if self.tracks.is_empty() {
            // An id no store has handed out yet, to exercise the unknown-track paths.
            return self.max_id.map_or(1_000_000, |id| id.saturating_add(1000));
        }
        let index = pick % self.tracks.len();
        self.tracks.keys().copied().nth(index).unwrap_or_default()
    }

    /// The error a put must fail with, or `None` if it must succeed.
    fn put_error(&self, path: &str, content: &str, replaces: Option<TrackId>) -> Option<String> {
        if let Some(old) = replaces
            && !self.tracks.contains_key(&old)
        {
            return Some(format!("UnknownTrack({old})"));
        }
        let owner = |wanted: &str, field: fn(&ModelTrack) -> &str| {
            self.tracks
                .iter()
                .find(|(id, track)| {
                    !wanted.is_empty() && field(track) == wanted && Some(**id) != replaces
                })
                .map(|(id, _)| *id)
        };
        if let Some(existing) = owner(path, |track| &track.path) {
            return Some(format!("PathTaken({existing})"));
        }
        if let Some(existing) = owner(content, |track| &track.content) {
            return Some(format!("ContentTaken({existing})"));
        }
        None
    }

    fn apply_put(&mut self, id: TrackId, path: String, content: String, entries: &[Entry]) {
        let postings: BTreeSet<(u32, Posting)> = entries
            .iter()
            .map(|&(key, time, freq, span)| (key, posting(id, time, freq, span)))
            .collect();
        self.ever_keys.extend(postings.iter().map(|&(key, _)| key));
        self.tracks.insert(
            id,
            ModelTrack {
                path,
                content,
                postings,
            },
        );
        self.max_id = self.max_id.max(Some(id));
    }

    fn expected_visits(&self, keys: &[u32], cap: usize) -> Vec<(usize, Posting)> {
        let mut by_key: BTreeMap<u32, Vec<Posting>> = BTreeMap::new();
        for track in self.tracks.values() {
            for &(key, p) in &track.postings {
                by_key.entry(key).or_default().push(p);
            }
        }
        let mut visits = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let list = by_key.get(key).map_or(&[][..], Vec::as_slice);
            if list.len() > cap {
                continue;
            }
            for &p in list {
                visits.push((i, p));
            }
        }
        visits.sort_unstable();
        visits
    }
}

fn error_name(error: &IndexError) -> String {
    match error {
        IndexError::UnknownTrack { id } => format!("UnknownTrack({id})"),
        IndexError::PathTaken { existing, .. } => format!("PathTaken({existing})"),
        IndexError::ContentTaken { existing, .. } => format!("ContentTaken({existing})"),
        other => format!("{other:?}"),
    }
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

fn check_against_model(
    store: &dyn Store,
    model: &Model,
    extra_key: u32,
    cap: usize,
) -> Result<(), TestCaseError> {
    let mut keys: Vec<u32> = (0..48).collect();
    for track in model.tracks.values() {
        keys.extend(track.postings.iter().map(|&(key, _)| key));
    }
    keys.push(extra_key);
    keys.push(3); // A repeated key must be visited once per index.
    for cap in [usize::MAX, cap, 0] {
        let mut actual = Vec::new();
        store
            .lookup(&keys, cap, &mut |i, p| actual.push((i, p)))
            .map_err(fail)?;
        actual.sort_unstable();
        let expected = model.expected_visits(&keys, cap);
        prop_assert_eq!(&actual, &expected, "cap {}", cap);
        // Restricted to a range of tracks: the same visits of those tracks, the cap still
        // counting every posting; over one visitor and over three shards.
        let ids: Vec<TrackId> = model.tracks.keys().copied().collect();
        let mid = ids.get(ids.len() / 2).copied().unwrap_or(0);
        for tracks in [0..=TrackId::MAX, 0..=mid, mid..=TrackId::MAX, mid..=mid] {
            let wanted: Vec<(usize, Posting)> = expected
                .iter()
                .filter(|(_, p)| tracks.contains(&p.track))
                .copied()
                .collect();
            for n_shards in [1, 3] {
                let shards =
                    sharded_visits(store, &keys, cap, tracks.clone(), n_shards).map_err(fail)?;
                let mut among: Vec<(usize, Posting)> = shards.concat();
                among.sort_unstable();
                prop_assert_eq!(&among, &wanted, "cap {} tracks {:?}", cap, tracks);
            }
        }
    }

    let stats = store.stats().map_err(fail)?;
    let distinct_keys: BTreeSet<u32> = model
        .tracks
        .values()
        .flat_map(|track| track.postings.iter().map(|&(key, _)| key))
        .collect();
    let n_postings: usize = model
        .tracks
        .values()
        .map(|track| track.postings.len())
        .sum();
    prop_assert_eq!(stats.n_tracks, model.tracks.len() as u64);
    prop_assert_eq!(stats.n_postings, n_postings as u64);
    prop_assert!(
        (distinct_keys.len() as u64..=model.ever_keys.len() as u64).contains(&stats.n_keys),
        "n_keys {} outside {}..={}",
        stats.n_keys,
        distinct_keys.len(),
        model.ever_keys.len()
    );

    let ids: Vec<TrackId> = store
        .tracks()
        .map_err(fail)?
        .iter()
        .map(|(id, _)| *id)
        .collect();
    prop_assert_eq!(ids, model.tracks.keys().copied().collect::<Vec<_>>());
    for (&id, track) in &model.tracks {
        if !track.path.is_empty() {
            prop_assert_eq!(store.find_by_path(&track.path).map_err(fail)?, Some(id));
        }
        if !track.content.is_empty() {
            prop_assert_eq!(
                store.find_by_content(&track.content).map_err(fail)?,
                Some(id)
            );
        }
        let info = store
            .track(id)
            .map_err(fail)?
            .ok_or_else(|| fail("track vanished"))?;
        prop_assert_eq!(info.n_postings, track.postings.len() as u64);
    }
    Ok(())
}

fn run_ops(store: &dyn Store, ops: &[Op], extra_key: u32, cap: usize) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for op in ops {
        let (path, content, entries, replaces) = match op {
            Op::Remove { pick } => {
                let id = model.pick(*pick);
                let existed = store.remove_track(id).map_err(fail)?;
                prop_assert_eq!(existed, model.tracks.remove(&id).is_some());
                check_against_model(store, &model, extra_key, cap)?;
                continue;
            }
            Op::Put {
                path,
                content,
                entries,
            } => (path, content, entries, None),
            Op::Replace {
                pick,
                path,
                content,
                entries,
            } => (path, content, entries, Some(model.pick(*pick))),
        };
        let path = slot_name("/lib/", *path);
        let content = slot_name("hash", *content);
        let expected_error = model.put_error(&path, &content, replaces);
        let result = store.put_track(&track_info(&path, &content, 1.0), entries, replaces);
        match (result, expected_error) {
            (Ok(id), None) => {
                prop_assert!(model.max_id < Some(id), "id {} is not new", id);
                if let Some(old) = replaces {
                    model.tracks.remove(&old);
                }
                model.apply_put(id, path, content, entries);
            }
            (Err(error), Some(expected)) => prop_assert_eq!(error_name(&error), expected),
            (Ok(id), Some(expected)) => {
                return Err(fail(format!("put returned {id}, expected {expected}")));
            }
            (Err(error), None) => return Err(fail(format!("put failed: {error}"))),
        }
        check_against_model(store, &model, extra_key, cap)?;
    }
    Ok(())
}

/// Random sequences of puts, removals and replacements agree with a naive model.
pub fn matches_model(make: &dyn Fn() -> Fixture) {
    let config = Config {
        cases: 48,
        // The suite runs inside other crates' test binaries, where a persistence file
        // would land in an arbitrary directory.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (
        proptest::collection::vec(op_strategy(), 1..14),
        any::<u32>(),
        1usize..6,
    );
    let result = runner.run(&strategy, |(ops, extra_key, cap)| {
        let fixture = make();
        run_ops(fixture.store(), &ops, extra_key, cap)
    });
    if let Err(error) = result {
        panic!("store disagrees with the model: {error}");
    }
}

fn relation(query: TrackId, reference: TrackId, payload: &[u8]) -> Relation {
    Relation {
        query,
        reference,
        payload: payload.to_vec(),
    }
}

/// Puts `n` small tracks and returns their ids.
fn put_tracks(store: &dyn Store, n: usize) -> Vec<TrackId> {
    (0..n)
        .map(|i| {
            let info = track_info(&format!("/m/{i}.mp3"), &format!("h{i}"), 10.0);
            let key = u32::try_from(i).expect("few tracks");
            store
                .put_track(&info, &[(key, 1, 2, 3)], None)
                .expect("put")
        })
        .collect()
}

/// Metadata edits change the descriptive fields only and survive reads.
pub fn update_metadata_keeps_identity(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let ids = put_tracks(store, 2);
    let before = store.track(ids[0]).expect("track").expect("exists");
    let mut edit = track_info("/elsewhere.mp3", "other-hash", 999.0);
    edit.title = Some("Expo 83".to_owned());
    edit.artist = None;
    edit.year = Some(1973);
    edit.musicbrainz_recording_id = Some("rec".to_owned());
    edit.n_postings = 12345;
    assert!(store.update_metadata(ids[0], &edit).expect("update"));
    let after = store.track(ids[0]).expect("track").expect("exists");
    assert_eq!(
        after,
        TrackInfo {
            title: Some("Expo 83".to_owned()),
            artist: None,
            album: edit.album.clone(),
            year: Some(1973),
            musicbrainz_recording_id: Some("rec".to_owned()),
            musicbrainz_release_id: edit.musicbrainz_release_id.clone(),
            ..before.clone()
        }
    );
    assert_eq!(
        store.find_by_path(&before.path).expect("find"),
        Some(ids[0])
    );
    assert_eq!(store.find_by_path("/elsewhere.mp3").expect("find"), None);
    assert_eq!(
        store.find_by_content(&before.content_hash).expect("find"),
        Some(ids[0])
    );
    assert_eq!(lookup_all(store, &[0]).len(), 1, "postings are untouched");
    assert!(!store.update_metadata(9999, &edit).expect("update unknown"));
    let other = store.track(ids[1]).expect("track").expect("exists");
    assert_eq!(other.title.as_deref(), Some("title of /m/1.mp3"));
}

/// A scan stores what it found, replaces only the examined range, and raises the mark.
pub fn record_scan_round_trip(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let ids = put_tracks(store, 4);
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    assert_eq!(store.scan_mark(a).expect("mark"), None);
    assert_eq!(store.relations(None).expect("relations"), vec![]);

    let found = vec![(b, b"ab".to_vec()), (c, b"ac".to_vec())];
    assert!(store.record_scan(a, 0..=c, &found).expect("scan"));
    assert_eq!(store.scan_mark(a).expect("mark"), Some(c));
    assert!(
        store
            .record_scan(d, 0..=d, &[(a, b"da".to_vec())])
            .expect("scan")
    );
    let all = vec![
        relation(a, b, b"ab"),
        relation(a, c, b"ac"),
        relation(d, a, b"da"),
    ];
    assert_eq!(store.relations(None).expect("relations"), all);
    assert_eq!(store.relations(Some(a)).expect("relations"), all);
    assert_eq!(
        store.relations(Some(c)).expect("relations"),
        vec![relation(a, c, b"ac")]
    );

    // An incremental scan of a against d only: earlier relations stay.
    assert!(store.record_scan(a, d..=d, &[(d, vec![])]).expect("scan"));
    assert_eq!(store.scan_mark(a).expect("mark"), Some(d));
    assert_eq!(
        store.relations(Some(a)).expect("relations"),
        vec![
            relation(a, b, b"ab"),
            relation(a, c, b"ac"),
            relation(a, d, b""),
            relation(d, a, b"da"),
        ]
    );

    // A rescan of a range replaces what it covers and never lowers the mark.
    assert!(
        store
            .record_scan(a, b..=c, &[(c, b"new".to_vec())])
            .expect("scan")
    );
    assert_eq!(store.scan_mark(a).expect("mark"), Some(d));
    assert_eq!(
        store.relations(Some(a)).expect("relations"),
        vec![
            relation(a, c, b"new"),
            relation(a, d, b""),
            relation(d, a, b"da"),
        ]
    );
}

/// Removing or replacing a track drops every relation it is part of, and its mark.
pub fn relations_follow_removal(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let ids = put_tracks(store, 3);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    assert!(
        store
            .record_scan(a, 0..=c, &[(b, b"ab".to_vec()), (c, b"ac".to_vec())])
            .expect("scan")
    );
    assert!(
        store
            .record_scan(b, 0..=c, &[(a, b"ba".to_vec())])
            .expect("scan")
    );
    assert!(
        store
            .record_scan(c, 0..=c, &[(b, b"cb".to_vec())])
            .expect("scan")
    );

    assert!(store.remove_track(a).expect("remove"));
    assert_eq!(store.scan_mark(a).expect("mark"), None);
    assert_eq!(
        store.relations(None).expect("relations"),
        vec![relation(c, b, b"cb")]
    );
    assert_eq!(store.relations(Some(a)).expect("relations"), vec![]);

    let info = track_info("/m/new-b.mp3", "new-b", 5.0);
    let new_b = store
        .put_track(&info, &[(7, 1, 1, 1)], Some(b))
        .expect("replace");
    assert_eq!(store.relations(None).expect("relations"), vec![]);
    assert_eq!(store.scan_mark(b).expect("mark"), None);
    assert_eq!(store.scan_mark(new_b).expect("mark"), None);
    assert_eq!(store.scan_mark(c).expect("mark"), Some(c));

    // A scan that found a track removed meanwhile skips it; an unknown query stores nothing.
    assert!(
        store
            .record_scan(
                c,
                0..=new_b,
                &[(a, b"gone".to_vec()), (new_b, b"cn".to_vec())]
            )
            .expect("scan")
    );
    assert_eq!(
        store.relations(None).expect("relations"),
        vec![relation(c, new_b, b"cn")]
    );
    assert!(
        !store
            .record_scan(a, 0..=new_b, &[(c, b"x".to_vec())])
            .expect("scan")
    );
    assert_eq!(store.scan_mark(a).expect("mark"), None);
    assert_eq!(store.relations(Some(a)).expect("relations"), vec![]);
}

/// Malformed scan results are refused and change nothing.
pub fn invalid_scans_change_nothing(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let ids = put_tracks(store, 3);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    assert!(
        store
            .record_scan(a, 0..=b, &[(b, b"ab".to_vec())])
            .expect("scan")
    );
    let before = store.relations(None).expect("relations");
    let too_big = vec![0u8; crate::MAX_RELATION_PAYLOAD_BYTES + 1];
    type Found = Vec<(TrackId, Vec<u8>)>;
    let bad: [(std::ops::RangeInclusive<TrackId>, Found); 4] = [
        (0..=c, vec![(a, vec![])]),
        (c..=c, vec![(b, vec![])]),
        (0..=c, vec![(c, vec![]), (c, vec![1])]),
        (0..=c, vec![(c, too_big)]),
    ];
    for (examined, found) in bad {
        match store.record_scan(a, examined.clone(), &found) {
            Err(IndexError::InvalidRelation { .. }) => {}
            other => panic!("scan over {examined:?} was not refused: {other:?}"),
        }
        assert_eq!(store.relations(None).expect("relations"), before);
        assert_eq!(store.scan_mark(a).expect("mark"), Some(b));
    }
}

/// Side data is stored with its track, replaced with it and removed with it.
pub fn side_data_follows_track(make: &dyn Fn() -> Fixture) {
    let fixture = make();
    let store = fixture.store();
    let a = store
        .put_track_with_side_data(
            &track_info("/a", "a", 1.0),
            &[(1, 1, 1, 1)],
            b"peaks of a",
            None,
        )
        .expect("put a");
    let b = store
        .put_track(&track_info("/b", "b", 1.0), &[(2, 1, 1, 1)], None)
        .expect("put b");
    assert_eq!(
        store.side_data(a).expect("read"),
        Some(b"peaks of a".to_vec())
    );
    assert_eq!(store.side_data(b).expect("read"), Some(Vec::new()));
    assert_eq!(store.side_data(999).expect("read"), None);

    let too_big = vec![7u8; crate::MAX_SIDE_DATA_BYTES + 1];
    match store.put_track_with_side_data(&track_info("/c", "c", 1.0), &[], &too_big, None) {
        Err(IndexError::InvalidTrack { .. }) => {}
        other => panic!("oversized side data was not refused: {other:?}"),
    }
    assert_eq!(store.find_by_path("/c").expect("find"), None);

    let a2 = store
        .put_track_with_side_data(&track_info("/a", "a2", 1.0), &[], b"new", Some(a))
        .expect("replace a");
    assert_eq!(store.side_data(a).expect("read"), None);
    assert_eq!(store.side_data(a2).expect("read"), Some(b"new".to_vec()));
    assert!(store.remove_track(a2).expect("remove"));
    assert_eq!(store.side_data(a2).expect("read"), None);
    assert_eq!(store.side_data(b).expect("read"), Some(Vec::new()));
}

/// Runs every test of the suite in turn, for backends that prefer one `#[test]`.
pub fn run_all(make: &dyn Fn() -> Fixture) {
    round_trip(make);
    duplicate_entries_stored_once(make);
    lookup_maps_indices(make);
    remove_deletes_only_that_track(make);
    replace_swaps_track(make);
    failed_put_changes_nothing(make);
    ids_are_never_reused(make);
    identity_conflicts(make);
    lookup_cap_skips_common_keys(make);
    stats_count_right(make);
    matches_model(make);
    update_metadata_keeps_identity(make);
    record_scan_round_trip(make);
    relations_follow_removal(make);
    invalid_scans_change_nothing(make);
    side_data_follows_track(make);
}

/// Expands to one `#[test]` per behaviour in the suite, given an expression that evaluates
/// to a `Fn() -> Fixture` making a fresh, empty store.
#[macro_export]
macro_rules! store_test_suite {
    ($make:expr) => {
        $crate::store_test_suite!(@tests $make;
            round_trip,
            duplicate_entries_stored_once,
            lookup_maps_indices,
            remove_deletes_only_that_track,
            replace_swaps_track,
            failed_put_changes_nothing,
            ids_are_never_reused,
            identity_conflicts,
            lookup_cap_skips_common_keys,
            stats_count_right,
            matches_model,
            update_metadata_keeps_identity,
            record_scan_round_trip,
            relations_follow_removal,
            invalid_scans_change_nothing,
            side_data_follows_track,
        );
    };
    (@tests $make:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::testsuite::$name(&$make);
            }
        )*
    };
}
