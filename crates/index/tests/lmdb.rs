//! LMDB backend: the shared suite plus persistence, compatibility, corruption and
//! concurrency behaviour that only an on-disk store has.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use index::testsuite::{Fixture, lookup_all, track_info};
use index::{Entry, IndexError, LmdbStore, Posting, Store, test_hooks};

const PARAMS: &str = "test-params v1";

fn temp_store() -> (tempfile::TempDir, LmdbStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = LmdbStore::open(dir.path(), PARAMS).expect("open store");
    (dir, store)
}

mod suite {
    use super::*;

    index::store_test_suite!(|| {
        let (dir, store) = temp_store();
        Fixture::with_guard(store, dir)
    });
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
    let keys: Vec<u32> = entries.iter().map(|e| e.0).collect();
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

    test_hooks::add_raw_posting(&store, 77, b"short").expect("damage postings");
    let error = store
        .lookup(&[77], &mut |_, _| {})
        .expect_err("bad posting");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");

    test_hooks::set_raw_track_keys(&store, b, &[5, 0xff]).expect("damage key list");
    let error = store.remove_track(b).expect_err("bad key list");
    assert!(matches!(error, IndexError::Corrupt { .. }), "{error:?}");
    // The failed removal changed nothing.
    assert_eq!(lookup_all(&store, &[2]).len(), 1);
}

/// Readers running while a writer keeps replacing a track must always see exactly one
/// complete version of it, never a mixture, a gap or a half-written track.
#[test]
fn readers_see_whole_tracks_while_a_writer_commits() {
    let (_dir, store) = temp_store();
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
    let mut kept = Vec::new();
    for t in 0..20u32 {
        let path = format!("/t{t}");
        let entries: Vec<Entry> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(t), i, 0, 0))
            .collect();
        let id = store
            .put_track(&track_info(&path, &path, 1.0), &entries, None)
            .expect("put");
        if t % 4 == 0 {
            kept.push((id, entries));
        } else {
            store.remove_track(id).expect("remove");
        }
    }
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
    let keys: Vec<u32> = kept
        .iter()
        .flat_map(|(_, e)| e.iter().map(|x| x.0))
        .collect();
    assert_eq!(lookup_all(&copy, &keys), lookup_all(&store, &keys));
    assert_eq!(copy.stats().expect("stats").n_postings, 5 * 2000);
}
