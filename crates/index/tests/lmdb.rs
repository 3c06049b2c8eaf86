//! LMDB backend: the shared suite plus persistence, compatibility, corruption and
//! concurrency behaviour that only an on-disk store has.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use index::testsuite::{Fixture, lookup_all, lookup_capped, track_info};
use index::{Entry, IndexError, LmdbOptions, LmdbStore, Posting, Store, test_hooks};

const PARAMS: &str = "test-params v1";

fn temp_store() -> (tempfile::TempDir, LmdbStore) {
    temp_store_with(LmdbOptions::default())
}

fn temp_store_with(options: LmdbOptions) -> (tempfile::TempDir, LmdbStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = LmdbStore::open_with_options(dir.path(), PARAMS, options).expect("open store");
    (dir, store)
}

/// Merges after every put, so postings are almost always in main and removals tombstone.
fn merge_always() -> LmdbOptions {
    LmdbOptions::default()
        .min_delta_postings(0)
        .delta_fraction(0.0)
}

/// Merges every few puts, so lookups see main, delta and tombstones together.
fn merge_often() -> LmdbOptions {
    LmdbOptions::default()
        .min_delta_postings(25)
        .delta_fraction(0.5)
}

/// The default policy: the suite's small stores never reach a merge.
mod suite {
    use super::*;

    index::store_test_suite!(|| {
        let (dir, store) = temp_store();
        Fixture::with_guard(store, dir)
    });
}

mod suite_merging_always {
    use super::*;

    index::store_test_suite!(|| {
        let (dir, store) = temp_store_with(merge_always());
        Fixture::with_guard(store, dir)
    });
}

mod suite_merging_often {
    use super::*;

    index::store_test_suite!(|| {
        let (dir, store) = temp_store_with(merge_often());
        Fixture::with_guard(store, dir)
    });
}

#[test]
fn merges_move_postings_into_main_and_purge_removed_tracks() {
    let (_dir, store) = temp_store_with(merge_often());
    let mut expected: Vec<(u32, Vec<Entry>)> = Vec::new();
    let mut saw_tombstones = false;
    let mut saw_both_tiers = false;
    for t in 0..40u32 {
        let path = format!("/t{t}");
        let entries: Vec<Entry> = (0..10u32)
            .map(|i| ((i * 7 + t) % 23, t * 10 + i, 1, 2))
            .collect();
        let id = store
            .put_track(&track_info(&path, &path, 1.0), &entries, None)
            .expect("put");
        expected.push((id, entries));
        if t % 3 == 0 {
            let (gone, _) = expected.remove(expected.len() / 2);
            assert!(store.remove_track(gone).expect("remove"));
        }
        let tiers = test_hooks::tiers(&store).expect("tiers");
        saw_tombstones |= tiers.dead_postings > 0;
        saw_both_tiers |= tiers.main_postings > 0 && tiers.delta_postings > 0;
        let keys: Vec<u32> = (0..23).collect();
        let live: usize = expected.iter().map(|(_, e)| e.len()).sum();
        assert_eq!(lookup_all(&store, &keys).len(), live);
        assert_eq!(store.stats().expect("stats").n_postings, live as u64);
    }
    assert!(saw_tombstones, "no removal ever hit main");
    assert!(
        saw_both_tiers,
        "main and delta never held postings together"
    );

    store.compact().expect("compact");
    let tiers = test_hooks::tiers(&store).expect("tiers");
    let live: u64 = expected.iter().map(|(_, e)| e.len() as u64).sum();
    assert_eq!(
        (
            tiers.main_postings,
            tiers.delta_postings,
            tiers.dead_postings
        ),
        (live, 0, 0)
    );
    let stats = store.stats().expect("stats");
    assert_eq!(stats.n_postings, live);
    assert_eq!(stats.n_keys, tiers.main_keys);
    assert_eq!(stats.n_keys, 23, "n_keys is exact once merged");
    // Compacting again has nothing to do and changes nothing.
    store.compact().expect("compact again");
    assert_eq!(test_hooks::tiers(&store).expect("tiers"), tiers);
}

/// A lookup that hands its pages back to the kernel after every read (a budget of 0)
/// visits exactly what one with the default budget visits, in the same order, over main
/// lists spanning many pages, unmerged runs and a tombstone.
#[test]
fn lookups_that_release_the_map_visit_the_same_postings() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = LmdbOptions::default()
        .min_delta_postings(150_000)
        .delta_fraction(0.0);
    let store = LmdbStore::open_with_options(dir.path(), PARAMS, options).expect("open store");
    let mut ids = Vec::new();
    for t in 0..13u32 {
        // 60,000 postings a track on 5,000 keys: the first 12 tracks are merged into main
        // three at a time, the last one stays in its run.
        let entries: Vec<Entry> = (0..60_000u32)
            .map(|i| {
                (
                    (i * 7919 + t) % 5_000,
                    i + t,
                    (i % 4000) as u16,
                    (t + 1) as u16,
                )
            })
            .collect();
        let path = format!("/t{t}");
        ids.push(
            store
                .put_track(&track_info(&path, &path, 1.0), &entries, None)
                .expect("put"),
        );
    }
    assert!(store.remove_track(ids[3]).expect("remove"));
    let tiers = test_hooks::tiers(&store).expect("tiers");
    assert!(tiers.main_postings > 0 && tiers.delta_postings > 0);
    drop(store);

    let visits = |options: LmdbOptions| {
        let store = LmdbStore::open_with_options(dir.path(), PARAMS, options).expect("reopen");
        let keys: Vec<u32> = (0..6_000u32).rev().map(|k| k * 7 % 6_000).collect();
        let mut visits = Vec::new();
        store
            .lookup(&keys, usize::MAX, &mut |i, posting| {
                visits.push((i, posting))
            })
            .expect("lookup");
        visits
    };
    let kept = visits(LmdbOptions::default());
    let released = visits(LmdbOptions::default().lookup_resident_bytes(0));
    assert_eq!(kept.len(), 12 * 60_000);
    assert!(kept == released, "releasing the map changed the lookup");

    // A sharded lookup, served by several threads once the keys are many: each shard
    // gets exactly the sequential lookup's visits of its keys, in the same order.
    let keys: Vec<u32> = (0..24_000u32)
        .map(|k| (k * 7 + k / 6_000) % 6_100)
        .collect();
    for options in [
        LmdbOptions::default(),
        LmdbOptions::default().lookup_resident_bytes(0),
    ] {
        let store = LmdbStore::open_with_options(dir.path(), PARAMS, options).expect("reopen");
        for cap in [usize::MAX, 144] {
            let mut sequential = Vec::new();
            store
                .lookup(&keys, cap, &mut |i, posting| sequential.push((i, posting)))
                .expect("lookup");
            assert!(!sequential.is_empty());
            // Every track, then (the parallel path of a pass) a middle range of them.
            let mid = sequential[sequential.len() / 2].1.track;
            for (tracks, n_shards) in [1, 2, 5, 16]
                .into_iter()
                .map(|n| (0..=index::TrackId::MAX, n))
                .chain([(mid..=mid + 2, 16), (mid..=mid + 2, 1)])
            {
                let shards =
                    index::testsuite::sharded_visits(&store, &keys, cap, tracks.clone(), n_shards)
                        .expect("sharded lookup");
                for (shard, got) in shards.iter().enumerate() {
                    let expected: Vec<(usize, Posting)> = sequential
                        .iter()
                        .filter(|(i, p)| {
                            index::lookup_shard(keys[*i], n_shards) == shard
                                && tracks.contains(&p.track)
                        })
                        .copied()
                        .collect();
                    assert!(
                        *got == expected,
                        "shard {shard} of {n_shards}, cap {cap}, tracks {tracks:?}: {} visits, expected {}",
                        got.len(),
                        expected.len()
                    );
                }
            }
        }
    }

    // Compacted, no removed track is left to count, so a range's lists are read only up
    // to its end: the parallel path of that early stop.
    let store =
        LmdbStore::open_with_options(dir.path(), PARAMS, LmdbOptions::default()).expect("reopen");
    store.compact().expect("compact");
    let mut sequential = Vec::new();
    store
        .lookup(&keys, usize::MAX, &mut |i, posting| {
            sequential.push((i, posting))
        })
        .expect("lookup");
    let mid = sequential[sequential.len() / 2].1.track;
    for tracks in [0..=mid, mid..=mid + 1] {
        let shards =
            index::testsuite::sharded_visits(&store, &keys, usize::MAX, tracks.clone(), 16)
                .expect("sharded lookup");
        let mut got: Vec<(usize, Posting)> = shards.concat();
        got.sort_unstable();
        let mut expected: Vec<(usize, Posting)> = sequential
            .iter()
            .filter(|(_, p)| tracks.contains(&p.track))
            .copied()
            .collect();
        expected.sort_unstable();
        assert!(got == expected, "compacted, tracks {tracks:?}");
    }
}

#[test]
fn default_policy_merges_a_large_delta() {
    let (_dir, store) = temp_store_with(
        LmdbOptions::default()
            .min_delta_postings(5_000)
            .delta_fraction(0.25),
    );
    for t in 0..12u32 {
        let path = format!("/t{t}");
        let entries: Vec<Entry> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761), i, 0, 0))
            .collect();
        store
            .put_track(&track_info(&path, &path, 1.0), &entries, None)
            .expect("put");
        let tiers = test_hooks::tiers(&store).expect("tiers");
        let threshold = 5_000u64.max(tiers.main_postings / 4);
        assert!(
            tiers.delta_postings <= threshold,
            "{tiers:?} after track {t}"
        );
    }
    let tiers = test_hooks::tiers(&store).expect("tiers");
    assert!(tiers.main_postings >= 6_000, "{tiers:?}");
    assert_eq!(tiers.main_postings + tiers.delta_postings, 12_000);
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let entries: Vec<Entry> = (0..1000).map(|i| (i * 7919, i, 3, 4)).collect();
    let (id, info) = {
        let store = LmdbStore::open(dir.path(), PARAMS).expect("open");
        let id = store
            .put_track(&track_info("/a.flac", "aa", 12.5), &entries, None)
            .expect("put");
        (id, store.track(id).expect("track").expect("exists"))
    };
    let store = LmdbStore::open(dir.path(), PARAMS).expect("reopen");
    assert_eq!(store.track(id).expect("track"), Some(info));
    assert_eq!(store.find_by_path("/a.flac").expect("find"), Some(id));
    assert_eq!(store.find_by_content("aa").expect("find"), Some(id));
    let mut keys: Vec<u32> = entries.iter().map(|e| e.0).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(lookup_all(&store, &keys).len(), 1000);
    let stats = store.stats().expect("stats");
    assert_eq!(
        (stats.n_tracks, stats.n_postings, stats.n_keys),
        (1, 1000, 1000)
    );
    assert!(stats.bytes_on_disk > 0);
    let next = store
        .put_track(&track_info("/b.flac", "bb", 1.0), &[], None)
        .expect("put after reopen");
    assert!(next > id, "ids continue after a reopen");
}

#[test]
fn other_fingerprint_params_are_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    drop(LmdbStore::open(dir.path(), PARAMS).expect("create"));
    for result in [
        LmdbStore::open(dir.path(), "other params"),
        LmdbStore::open_read_only(dir.path(), "other params"),
    ] {
        let error = result.expect_err("params differ");
        assert!(
            matches!(&error, IndexError::Incompatible { found, expected, .. }
                if found.contains(PARAMS) && expected.contains("other params")),
            "unexpected error {error:?}"
        );
        assert!(error.to_string().contains("rebuild"), "{error}");
    }
    // Refusing must not have rewritten the meta: the original params still open it.
    drop(LmdbStore::open(dir.path(), PARAMS).expect("original params still work"));
}

#[test]
fn damaged_main_blocks_are_errors_not_panics() {
    // Default options: puts stay in the delta until `compact`, so each case below has a
    // run of key 5 for the merge to read the damaged block with.
    let (_dir, store) = temp_store_with(LmdbOptions::default());
    let entries: Vec<Entry> = (0..50u32).map(|i| (5, i * 3, 700, 300)).collect();
    store
        .put_track(&track_info("/a", "a", 1.0), &entries, None)
        .expect("put");
    store
        .put_track(
            &track_info("/b", "b", 1.0),
            &[(5, 1, 2, 3), (6, 1, 1, 1)],
            None,
        )
        .expect("put");
    store.compact().expect("compact");
    let good = test_hooks::raw_main_block(&store, 5)
        .expect("read")
        .expect("key 5 is in main");
    assert_eq!(lookup_all(&store, &[5]).len(), 51);

    // A block: its number of lists (u16), their slots (5 and 6, 12 bits each), field
    // widths (8 bytes), then the bit stream: per list its count less one (key 5's 50 on
    // 6 bits, key 6's) and its track width, then the bit-packed postings.
    assert_eq!(good[..5], [0, 2, 0x00, 0x50, 0x06]);
    const FORMAT: usize = 5;
    assert_eq!(good[FORMAT], 6, "the width of a count");
    assert_eq!(good[FORMAT + 8] >> 2, 50);
    let with_byte = |at: usize, value: u8| {
        let mut bytes = good.clone();
        bytes[at] = value;
        bytes
    };
    let mut trailing = good.clone();
    trailing.push(0);
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("trailing byte", trailing),
        ("huge count width", with_byte(FORMAT, 32)),
        ("count off", with_byte(FORMAT + 8, good[FORMAT + 8] ^ 0x80)),
        ("impossible track width", with_byte(FORMAT + 1, 7)),
        ("no lists", with_byte(1, 0)),
        ("slots out of order", with_byte(4, 0x04)),
        ("impossible width", with_byte(FORMAT + 2, 40)),
    ];
    for (n, (what, bytes)) in damaged.into_iter().enumerate() {
        store
            .put_track(
                &track_info(&format!("/{what}"), what, 1.0),
                &[(5, 1000, 1, 1)],
                None,
            )
            .expect("put");
        test_hooks::set_raw_main_block(&store, 5, &bytes).expect("damage");
        let corrupt = |result: Result<(), IndexError>, doing: &str| match result {
            Err(IndexError::Corrupt { .. }) => {}
            other => panic!("{what}, {doing}: {other:?}"),
        };
        corrupt(store.lookup(&[5, 6], usize::MAX, &mut |_, _| {}), "lookup");
        corrupt(store.lookup(&[5, 6], 10, &mut |_, _| {}), "capped lookup");
        // Merging the partition reads the block (the put above left a run to merge);
        // the merge's transaction is abandoned.
        corrupt(store.compact(), "compact");
        // A put reads the blocks of its keys too (to count the keys it adds): refused,
        // nothing of it stored.
        corrupt(
            store
                .put_track(
                    &track_info("/refused", "refused", 1.0),
                    &[(5, 7, 1, 1)],
                    None,
                )
                .map(|_| ()),
            "put",
        );
        // Restoring the block heals the store, and nothing committed was lost.
        test_hooks::set_raw_main_block(&store, 5, &good).expect("restore");
        assert_eq!(lookup_all(&store, &[5]).len(), 51 + n + 1, "{what}");
    }
    store.compact().expect("merges again");
    assert_eq!(lookup_all(&store, &[5]).len(), 51 + 9);
}

/// A merge writes main in batches of blocks; more blocks in a partition than a batch holds
/// resume where the last batch ended, and every key's list survives the round trip.
#[test]
fn merges_write_many_blocks_in_batches() {
    let (_dir, store) = temp_store_with(LmdbOptions::default());
    // One key in each of 6,000 blocks of 4,096 keys (about 375 per partition, over a batch
    // of 16), and a dense run of keys across a block boundary.
    let mut entries: Vec<Entry> = (0..6_000u32)
        .map(|i| (i * 4096 + i % 4096, i, 1, 2))
        .collect();
    entries.extend((4000..4200u32).map(|key| (key, key, 3, 4)));
    store
        .put_track(&track_info("/a", "a", 1.0), &entries, None)
        .expect("put");
    let mut keys: Vec<u32> = entries.iter().map(|e| e.0).collect();
    keys.sort_unstable();
    keys.dedup();
    let before = lookup_all(&store, &keys);
    store.compact().expect("compact");
    let tiers = test_hooks::tiers(&store).expect("tiers");
    assert_eq!(tiers.delta_postings, 0);
    assert_eq!(tiers.main_keys, keys.len() as u64);
    assert_eq!(tiers.main_blocks, 6_000);
    assert_eq!(lookup_all(&store, &keys), before);
    assert_eq!(before.len(), entries.len());
    // A second track merged into the same blocks.
    store
        .put_track(&track_info("/b", "b", 1.0), &entries, None)
        .expect("put");
    store.compact().expect("compact");
    assert_eq!(lookup_all(&store, &keys).len(), 2 * entries.len());
}

/// Writes a store exactly as format version 1 laid it out: meta plus `postings`, `tracks`
/// and the other version 1 databases, with one track.
fn write_v1_store(dir: &Path) {
    use heed::types::Bytes;
    use heed::{CommitOrAbort, DatabaseFlags, EnvOpenOptions};
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(1 << 24).max_dbs(16);
    // SAFETY: a fresh directory that nothing else opens while this runs.
    let env = unsafe { options.open(dir) }.expect("open v1 env");
    let wtxn = env.write_txn().expect("txn");
    let dbs = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let mut create = |name: &str, flags| {
                opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .name(name)
                    .flags(flags)
                    .create(wtxn)
            };
            let meta = create("meta", DatabaseFlags::empty())?;
            let postings = create(
                "postings",
                DatabaseFlags::DUP_SORT | DatabaseFlags::DUP_FIXED,
            )?;
            let tracks = create("tracks", DatabaseFlags::empty())?;
            meta.put(wtxn, b"format_version", &1u32.to_be_bytes())?;
            meta.put(wtxn, b"fingerprint_params", PARAMS.as_bytes())?;
            postings.put(wtxn, &7u32.to_be_bytes(), &[0u8; 12])?;
            tracks.put(wtxn, &1u32.to_be_bytes(), b"{}")?;
            Ok(CommitOrAbort::<_, ()>::Commit(()))
        })
        .expect("create v1 databases");
    assert!(matches!(dbs, CommitOrAbort::Commit(())));
    drop(env);
}

#[test]
fn a_version_1_store_must_be_rebuilt() {
    let dir = tempfile::tempdir().expect("temporary directory");
    write_v1_store(dir.path());
    let size_before = std::fs::metadata(dir.path().join("data.mdb"))
        .expect("size")
        .len();
    for result in [
        LmdbStore::open(dir.path(), PARAMS),
        LmdbStore::open_read_only(dir.path(), PARAMS),
    ] {
        let error = result.expect_err("version 1 is incompatible");
        assert!(
            matches!(&error, IndexError::Incompatible { found, expected, .. }
                if found.contains("version 1")
                    && expected.contains(&format!("version {}", index::FORMAT_VERSION))),
            "unexpected error {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("rebuild") && message.contains("index again"),
            "{message}"
        );
    }
    // Refusing left the old store alone.
    let size_after = std::fs::metadata(dir.path().join("data.mdb"))
        .expect("size")
        .len();
    assert_eq!(size_before, size_after);
}

#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let store = LmdbStore::open(dir.path(), PARAMS).expect("create");
        test_hooks::set_format_version(&store, index::FORMAT_VERSION + 1).expect("rewrite");
    }
    for result in [
        LmdbStore::open(dir.path(), PARAMS),
        LmdbStore::open_read_only(dir.path(), PARAMS),
    ] {
        let error = result.expect_err("version differs");
        assert!(
            matches!(&error, IndexError::Incompatible { found, .. }
                if found.contains(&(index::FORMAT_VERSION + 1).to_string())),
            "unexpected error {error:?}"
        );
    }
}

#[test]
fn read_only_handles_refuse_writes_and_missing_stores() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("nothing-here");
    let error = LmdbStore::open_read_only(&missing, PARAMS).expect_err("no store");
    assert!(matches!(error, IndexError::NotFound { .. }), "{error:?}");
    assert!(
        !missing.exists(),
        "a read-only open must not create the store"
    );

    let id = {
        let store = LmdbStore::open(dir.path(), PARAMS).expect("create");
        store
            .put_track(&track_info("/a", "a", 1.0), &[(1, 2, 3, 4)], None)
            .expect("put")
    };
    let store = LmdbStore::open_read_only(dir.path(), PARAMS).expect("open read-only");
    assert_eq!(
        lookup_all(&store, &[1]),
        vec![(
            0,
            Posting {
                track: id,
                time: 2,
                freq: 3,
                span: 4
            }
        )]
    );
    let error = store
        .put_track(&track_info("/b", "b", 1.0), &[], None)
        .expect_err("read-only");
    assert!(matches!(error, IndexError::ReadOnly), "{error:?}");
    let error = store.remove_track(id).expect_err("read-only");
    assert!(matches!(error, IndexError::ReadOnly), "{error:?}");
}

#[test]
fn opening_twice_in_one_process_is_refused() {
    let (dir, _store) = temp_store();
    let error = LmdbStore::open(dir.path(), PARAMS).expect_err("already open");
    assert!(matches!(error, IndexError::AlreadyOpen { .. }), "{error:?}");
    let error = LmdbStore::open_read_only(dir.path(), PARAMS).expect_err("already open");
    assert!(matches!(error, IndexError::AlreadyOpen { .. }), "{error:?}");
}

#[test]
fn a_directory_that_is_not_a_store_is_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("data.mdb"), b"definitely not an LMDB file").expect("write");
    let error = LmdbStore::open(dir.path(), PARAMS).expect_err("not a store");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
}

#[test]
fn corrupt_values_are_errors_not_panics() {
    let (_dir, store) = temp_store();
    let a = store
        .put_track(&track_info("/a", "a", 1.0), &[(1, 1, 1, 1)], None)
        .expect("put a");
    let b = store
        .put_track(&track_info("/b", "b", 1.0), &[(2, 1, 1, 1)], None)
        .expect("put b");

    test_hooks::set_raw_track(&store, a, b"{not json").expect("damage catalogue");
    let error = store.track(a).expect_err("bad json");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
    assert!(matches!(store.tracks(), Err(IndexError::Corrupt { .. })));

    let before = store.stats().expect("stats");
    test_hooks::set_raw_run(&store, b, b"short").expect("damage run");
    let error = store
        .lookup(&[77], usize::MAX, &mut |_, _| {})
        .expect_err("bad run");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
    let error = store.remove_track(b).expect_err("bad run");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
    let error = store.compact().expect_err("bad run");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
    // The failed removal and merge changed nothing.
    assert_eq!(store.stats().expect("stats"), before);
    assert!(store.track(b).expect("track b").is_some());

    // A run whose header is sound but whose records are out of order: lookups may miss
    // records but do not fail or panic, and a merge refuses it.
    let mut unsorted = Vec::new();
    let offsets = std::iter::once(0u32).chain(std::iter::repeat_n(2, 16));
    for offset in offsets {
        unsorted.extend_from_slice(&offset.to_be_bytes());
    }
    for key in [9u32, 3] {
        unsorted.extend_from_slice(&key.to_be_bytes());
        unsorted.extend_from_slice(&[0; 8]);
    }
    test_hooks::set_raw_run(&store, b, &unsorted).expect("damage run");
    store
        .lookup(&[3, 9, 2], usize::MAX, &mut |_, _| {})
        .expect("lookups tolerate unsorted records");
    let error = store.compact().expect_err("unsorted run");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
}

/// Readers running while a writer keeps replacing a track must always see exactly one
/// complete version of it, never a mixture, a gap or a half-written track.
#[test]
fn readers_see_whole_tracks_while_a_writer_commits() {
    readers_see_whole_tracks(LmdbOptions::default());
}

/// The same while every put also merges, so readers overlap merges and tombstones.
#[test]
fn readers_see_whole_tracks_while_a_writer_merges() {
    readers_see_whole_tracks(merge_always());
    readers_see_whole_tracks(merge_often());
}

fn readers_see_whole_tracks(options: LmdbOptions) {
    let (_dir, store) = temp_store_with(options);
    let store = Arc::new(store);
    let keys: Vec<u32> = (0..300).collect();
    let version = |v: u32| -> Vec<Entry> { keys.iter().map(|&k| (k, v, 0, 0)).collect() };
    let first = store
        .put_track(&track_info("/song", "v0", 1.0), &version(0), None)
        .expect("put first version");

    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut snapshots = 0u32;
                while !done.load(Ordering::Relaxed) || snapshots == 0 {
                    let visits = lookup_all(store.as_ref(), &keys);
                    assert_eq!(visits.len(), keys.len(), "saw a partial track");
                    // Every key has exactly one live posting, so a cap of 1 changes nothing
                    // and a cap of 0 hides everything, tombstones or not.
                    assert_eq!(lookup_capped(store.as_ref(), &keys, 1).len(), keys.len());
                    assert!(lookup_capped(store.as_ref(), &keys, 0).is_empty());
                    let track = visits[0].1.track;
                    let time = visits[0].1.time;
                    assert!(
                        visits
                            .iter()
                            .all(|(_, p)| p.track == track && p.time == time),
                        "saw two versions at once"
                    );
                    snapshots += 1;
                }
                snapshots
            })
        })
        .collect();

    let mut current = first;
    for v in 1..=40 {
        let path = format!("/song-{v}");
        current = store
            .put_track(&track_info(&path, &path, 1.0), &version(v), Some(current))
            .expect("replace");
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        let snapshots = reader.join().expect("reader thread panicked");
        assert!(snapshots > 0);
    }
    let stats = store.stats().expect("stats");
    assert_eq!(
        (stats.n_tracks, stats.n_postings, stats.n_keys),
        (1, 300, 300)
    );
}

const CHILD_DIR_VAR: &str = "INDEX_TEST_CHILD_STORE_DIR";
const CHILD_TRACKS: u32 = 25;

/// The writer half of [`a_reader_process_sees_a_writer_process`]; does nothing unless that
/// test starts it in a child process.
#[test]
#[ignore = "started by a_reader_process_sees_a_writer_process in a child process"]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let store = LmdbStore::open(Path::new(&dir), PARAMS).expect("child opens store");
    for t in 1..=CHILD_TRACKS {
        let path = format!("/child/{t}");
        let entries: Vec<Entry> = (0..100).map(|i| (t * 1000 + i, i, 0, 0)).collect();
        store
            .put_track(&track_info(&path, &path, 1.0), &entries, None)
            .expect("child put");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_reader_process_sees_a_writer_process() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let store = LmdbStore::open(dir.path(), PARAMS).expect("create");
        store
            .put_track(&track_info("/parent", "parent", 1.0), &[(1, 1, 1, 1)], None)
            .expect("put");
    }
    let reader = LmdbStore::open_read_only(dir.path(), PARAMS).expect("open read-only");

    let exe = std::env::current_exe().expect("test binary path");
    let mut child = std::process::Command::new(exe)
        .args(["child_writer", "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child writer");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 1;
    let status = loop {
        let n_tracks = reader.stats().expect("stats while child writes").n_tracks;
        assert!(n_tracks >= seen, "track count went backwards");
        seen = n_tracks;
        if let Some(status) = child.try_wait().expect("poll child") {
            break status;
        }
        assert!(Instant::now() < deadline, "child writer did not finish");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(status.success(), "child writer failed: {status}");

    let stats = reader.stats().expect("stats");
    assert_eq!(stats.n_tracks, u64::from(CHILD_TRACKS) + 1);
    let keys: Vec<u32> = (1..=CHILD_TRACKS)
        .flat_map(|t| (0..100).map(move |i| t * 1000 + i))
        .collect();
    assert_eq!(lookup_all(&reader, &keys).len(), keys.len());
}

#[test]
fn a_compacted_copy_is_a_smaller_complete_store() {
    let (dir, store) = temp_store();
    let keys = churned_store(&store);
    let original_bytes = store.stats().expect("stats").bytes_on_disk;
    let copy_dir = dir.path().join("compacted");
    let copy_bytes = store.copy_compacted(&copy_dir).expect("compact");
    assert!(
        copy_bytes < original_bytes,
        "{copy_bytes} >= {original_bytes}"
    );
    let error = store
        .copy_compacted(&copy_dir)
        .expect_err("refuses to overwrite");
    assert!(matches!(error, IndexError::Io { .. }), "{error:?}");

    let copy = LmdbStore::open_read_only(&copy_dir, PARAMS).expect("open copy");
    assert_eq!(
        copy.tracks().expect("tracks"),
        store.tracks().expect("tracks")
    );
    assert_eq!(lookup_all(&copy, &keys), lookup_all(&store, &keys));
    assert_eq!(copy.stats().expect("stats").n_postings, 5 * 2000);
}

/// Puts 20 tracks of 2000 postings and removes three in four: returns the kept tracks'
/// keys.
fn churned_store(store: &LmdbStore) -> Vec<u32> {
    let mut keys = Vec::new();
    for t in 0..20u32 {
        let path = format!("/t{t}");
        let entries: Vec<Entry> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(t), i, 0, 0))
            .collect();
        let id = store
            .put_track(&track_info(&path, &path, 1.0), &entries, None)
            .expect("put");
        if t % 4 == 0 {
            keys.extend(entries.iter().map(|e| e.0));
        } else {
            store.remove_track(id).expect("remove");
        }
    }
    keys
}

#[test]
fn compacting_in_place_shrinks_the_file_and_keeps_every_posting() {
    let (dir, store) = temp_store();
    let keys = churned_store(&store);
    let tracks = store.tracks().expect("tracks");
    let postings = lookup_all(&store, &keys);
    // A copy an interrupted compaction left behind is replaced.
    let staging = dir.path().join("compacting");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("data.mdb"), b"half a copy").expect("leftover");

    let (before, after) = store.compact_in_place().expect("compact");
    assert!(after < before, "{after} >= {before}");
    assert!(!staging.exists(), "the staging folder is removed");

    let store = LmdbStore::open(dir.path(), PARAMS).expect("reopen");
    assert_eq!(store.tracks().expect("tracks"), tracks);
    assert_eq!(lookup_all(&store, &keys), postings);
    let stats = store.stats().expect("stats");
    assert_eq!(stats.n_postings, 5 * 2000);
    assert_eq!(stats.bytes_on_disk, after);
    // Still a working store.
    let entries: Vec<Entry> = vec![(7, 1, 2, 3)];
    store
        .put_track(&track_info("/new", "/new", 1.0), &entries, None)
        .expect("put after compaction");
}

#[test]
fn compaction_needs_the_store_to_itself() {
    let (dir, store) = temp_store();
    let keys = churned_store(&store);
    let postings = lookup_all(&store, &keys);
    // Another process holding the store open holds a shared lock on its lock file (a
    // separate open file takes the same kind of lock a second process would).
    let other = std::fs::File::open(dir.path().join("cratedigger.lock")).expect("lock file");
    other.lock_shared().expect("shared lock");
    let error = store.compact_in_place().expect_err("refused while in use");
    assert!(matches!(error, IndexError::InUse { .. }), "{error:?}");
    drop(other);
    let store = LmdbStore::open(dir.path(), PARAMS).expect("reopen");
    assert_eq!(lookup_all(&store, &keys), postings, "nothing lost");
}

#[test]
fn a_store_being_compacted_cannot_be_opened() {
    let (dir, store) = temp_store();
    drop(store);
    // What compaction holds while it replaces the file.
    let compaction = std::fs::File::options()
        .write(true)
        .open(dir.path().join("cratedigger.lock"))
        .expect("lock file");
    compaction.lock().expect("exclusive lock");
    let error = LmdbStore::open(dir.path(), PARAMS).expect_err("refused");
    assert!(matches!(error, IndexError::Compacting { .. }), "{error:?}");
    let error = LmdbStore::open_read_only(dir.path(), PARAMS).expect_err("refused");
    assert!(matches!(error, IndexError::Compacting { .. }), "{error:?}");
    drop(compaction);
    LmdbStore::open(dir.path(), PARAMS).expect("open once compaction is over");
}

/// The store files a track's postings under indices into the track's anchor table (its
/// distinct time and freq pairs). Lookups give back exactly what was stored, from the
/// unmerged run and from main; a missing or damaged table, or a posting whose index it
/// lacks, makes lookups fail as `Corrupt` (never a panic or a wrong posting), and
/// restoring the table heals the store with nothing committed lost.
#[test]
fn damaged_anchor_tables_are_found_by_lookups() {
    use test_hooks::RawDb;
    let (_dir, store) = temp_store_with(LmdbOptions::default());
    // Six anchors 7 time units apart with 15 postings each, as the fingerprint makes
    // them: five keys, and spans that reach the next three anchors.
    let entries: Vec<Entry> = (0..90u32)
        .map(|i| {
            let (anchor, n) = (i / 15, i % 15);
            let span = 7 * (1 + n % 3) as u16;
            (
                5 + n / 3,
                1000 + 7 * anchor,
                (anchor % 4) as u16 * 300,
                span,
            )
        })
        .collect();
    let id = store
        .put_track(&track_info("/a", "a", 1.0), &entries, None)
        .expect("put");
    let expected = |store: &LmdbStore| {
        let keys = [5, 6, 7, 8, 9];
        let mut found: Vec<Entry> = lookup_all(store, &keys)
            .into_iter()
            .map(|(i, p)| (keys[i], p.time, p.freq, p.span))
            .collect();
        found.sort_unstable();
        found
    };
    let mut sorted = entries.clone();
    sorted.sort_unstable();
    assert_eq!(expected(&store), sorted, "from the run");
    let good = test_hooks::get_raw(&store, RawDb::Anchors, &id.to_be_bytes())
        .expect("read")
        .expect("the track has a table");
    // Nine entries, not 90: the six anchors and the three times spans reach past the last
    // (1042, 1049, 1056); a 6-byte header, then times up to 1056 (11 bits) and freqs up
    // to 900 (10 bits).
    assert_eq!(good[..4], 9u32.to_be_bytes());
    assert_eq!(good.len(), 6 + (9 * 21usize).div_ceil(8));
    // A valid table of one entry (time 5 on 8 bits, freq on 0): indices past 0 are absent.
    let one_entry = vec![0, 0, 0, 1, 8, 0, 5];
    let mut wide = good.clone();
    wide[4] = 40;
    let damaged: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing", None),
        ("empty", Some(Vec::new())),
        ("truncated", Some(good[..good.len() - 1].to_vec())),
        ("impossible width", Some(wide)),
        ("too few entries", Some(one_entry)),
    ];
    for merged in [false, true] {
        if merged {
            store.compact().expect("compact");
            assert_eq!(test_hooks::tiers(&store).expect("tiers").delta_postings, 0);
            assert_eq!(expected(&store), sorted, "from main");
        }
        for (what, bytes) in &damaged {
            test_hooks::set_raw(&store, RawDb::Anchors, &id.to_be_bytes(), bytes.as_deref())
                .expect("damage");
            match store.lookup(&[5, 6, 7, 8, 9], usize::MAX, &mut |_, _| {}) {
                Err(IndexError::Corrupt { .. }) => {}
                other => panic!("{what}, merged {merged}: {other:?}"),
            }
            // Keys without postings of the track still look up.
            assert!(lookup_all(&store, &[10]).is_empty());
            test_hooks::set_raw(&store, RawDb::Anchors, &id.to_be_bytes(), Some(&good))
                .expect("restore");
            assert_eq!(expected(&store), sorted, "{what}, merged {merged}");
        }
    }
    // Removing the track takes its table with it.
    assert!(store.remove_track(id).expect("remove"));
    assert_eq!(
        test_hooks::get_raw(&store, RawDb::Anchors, &id.to_be_bytes()).expect("read"),
        None
    );
    assert!(lookup_all(&store, &[5, 6, 7, 8, 9]).is_empty());
}
