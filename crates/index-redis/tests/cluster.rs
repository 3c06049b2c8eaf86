//! What only a cluster store must show: batching per node, concurrent writers, crash
//! clean-up, purging after removal, format checks. Failover is in `failover.rs`.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use index::testsuite::{lookup_all, track_info};
use index::{Entry, IndexError, Posting, Store};
use index_redis::RedisStore;
use index_redis::testcluster::{self, TestCluster};

fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| TestCluster::start(3, 0).expect("start a 3-master cluster"))
}

/// A URL with a fresh prefix and the given extra options.
fn fresh_url(options: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // This cluster has no replicas, so writes may not wait for one.
    let prefix = format!("prefix=cl{}-{n}&durable=0", std::process::id());
    if options.is_empty() {
        cluster().url(&prefix)
    } else {
        cluster().url(&format!("{prefix}&{options}"))
    }
}

/// `n` entries of one track with keys spread over the whole `u32` range.
fn spread_entries(seed: u32, n: u32) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let key = (seed ^ i).wrapping_mul(0x2545_F491).rotate_left(7);
            (key, i, (i % 500) as u16, 7)
        })
        .collect()
}

#[test]
fn a_lookup_is_one_round_trip_per_node_plus_the_catalogue() {
    let store = RedisStore::open(&fresh_url(""), "p").expect("open");
    let entries = spread_entries(1, 20_000);
    store
        .put_track(&track_info("/a", "a", 60.0), &entries, None)
        .expect("put");
    let keys: Vec<u32> = entries.iter().map(|e| e.0).collect();
    let before = store.round_trips();
    let mut n = 0;
    store
        .lookup(&keys, usize::MAX, &mut |_, _| n += 1)
        .expect("lookup");
    let trips = store.round_trips() - before;
    assert_eq!(n, 20_000);
    // 20,000 keys over 65,536 buckets touch every node; one pipeline each, plus the read
    // of the live bitmap.
    assert_eq!(trips, 3 + 1, "{trips} round trips for one lookup");
}

#[test]
fn concurrent_writers_lose_nothing_and_store_a_shared_track_once() {
    let url = fresh_url("buckets=8");
    let stores = [
        RedisStore::open(&url, "p").expect("open"),
        RedisStore::open(&url, "p").expect("open"),
    ];
    let own = |writer: u32, i: u32| {
        (
            format!("/w{writer}/{i}"),
            spread_entries(writer * 1000 + i, 300),
        )
    };
    let shared = |i: u32| (format!("/shared/{i}"), spread_entries(9_000 + i, 300));
    std::thread::scope(|scope| {
        for (writer, store) in stores.iter().enumerate() {
            let writer = writer as u32;
            scope.spawn(move || {
                for i in 0..12 {
                    let (path, entries) = own(writer, i);
                    store
                        .put_track(&track_info(&path, &path, 1.0), &entries, None)
                        .expect("own put");
                    // Both writers race to add the same shared track.
                    let (path, entries) = shared(i);
                    match store.put_track(&track_info(&path, &path, 1.0), &entries, None) {
                        Ok(_)
                        | Err(IndexError::PathTaken { .. })
                        | Err(IndexError::ContentTaken { .. }) => {}
                        Err(other) => panic!("shared put failed: {other}"),
                    }
                }
            });
        }
    });
    let store = &stores[0];
    let tracks = store.tracks().expect("tracks");
    assert_eq!(tracks.len(), 12 * 2 + 12);
    let paths: BTreeSet<&str> = tracks.iter().map(|(_, t)| t.path.as_str()).collect();
    assert_eq!(paths.len(), tracks.len(), "a path is stored twice");
    // Every stored track has exactly its own postings, once: the loser of each race left
    // nothing visible behind.
    for (id, info) in &tracks {
        let entries = if let Some(i) = info.path.strip_prefix("/shared/") {
            shared(i.parse().expect("index")).1
        } else {
            let (writer, i) = info.path[2..].split_once('/').expect("own path");
            own(writer.parse().expect("writer"), i.parse().expect("index")).1
        };
        let keys: Vec<u32> = entries.iter().map(|e| e.0).collect();
        let mine: Vec<Posting> = lookup_all(store, &keys)
            .into_iter()
            .filter(|(_, p)| p.track == *id)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(mine.len(), 300, "track {id} ({})", info.path);
    }
    assert_eq!(
        store.stats().expect("stats").n_postings,
        tracks.len() as u64 * 300
    );
}

#[test]
fn a_crashed_put_stays_invisible_and_is_purged_later() {
    let url = fresh_url("pending_ttl_s=0");
    let store = RedisStore::open(&url, "p").expect("open");
    let entries: Vec<Entry> = vec![(5, 1, 1, 1), (6, 2, 2, 2)];
    let crashed = store
        .put_unpublished(&track_info("/crash", "crash", 1.0), &entries)
        .expect("half a put");
    assert_eq!(
        store.raw_postings(5).expect("raw").len(),
        1,
        "postings were written"
    );
    assert_eq!(store.track(crashed).expect("track"), None);
    assert_eq!(store.find_by_path("/crash").expect("find"), None);
    assert_eq!(lookup_all(&store, &[5, 6]), vec![]);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.n_tracks, stats.n_postings, stats.n_keys), (0, 0, 0));
    // The same file can be indexed again, and that put purges the crashed one (its
    // reservation is older than the zero time-to-live).
    let id = store
        .put_track(&track_info("/crash", "crash", 1.0), &entries, None)
        .expect("put again");
    assert!(id > crashed);
    assert_eq!(
        store.raw_postings(5).expect("raw"),
        vec![Posting {
            track: id,
            time: 1,
            freq: 1,
            span: 1
        }]
    );
    assert_eq!(lookup_all(&store, &[5, 6]).len(), 2);
}

#[test]
fn removed_postings_are_purged_after_the_grace_period() {
    let store = RedisStore::open(&fresh_url("buckets=4"), "p").expect("open");
    let a = store
        .put_track(
            &track_info("/a", "a", 1.0),
            &[(1, 1, 1, 1), (2, 1, 1, 1)],
            None,
        )
        .expect("put a");
    let b = store
        .put_track(&track_info("/b", "b", 1.0), &[(2, 5, 5, 5)], None)
        .expect("put b");
    assert!(store.remove_track(a).expect("remove"));
    // Within the grace period the postings are still there, but invisible.
    assert_eq!(store.raw_postings(1).expect("raw").len(), 1);
    assert_eq!(lookup_all(&store, &[1, 2]).len(), 1);
    assert_eq!(store.purge_removed().expect("purge"), 1);
    assert_eq!(store.raw_postings(1).expect("raw"), vec![]);
    assert_eq!(
        store.raw_postings(2).expect("raw"),
        vec![Posting {
            track: b,
            time: 5,
            freq: 5,
            span: 5
        }]
    );
    let stats = store.stats().expect("stats");
    assert_eq!((stats.n_tracks, stats.n_postings, stats.n_keys), (1, 1, 1));
    assert_eq!(store.purge_removed().expect("purge again"), 0);
}

#[test]
fn other_parameters_are_incompatible_and_a_missing_store_is_not_found() {
    let url = fresh_url("");
    drop(RedisStore::open(&url, "params v1").expect("create"));
    match RedisStore::open(&url, "params v2") {
        Err(IndexError::Incompatible { found, .. }) => assert!(found.contains("v1"), "{found}"),
        other => panic!("opened with other parameters: {other:?}"),
    }
    let reopened = RedisStore::open_existing(&url, "params v1").expect("reopen");
    assert_eq!(reopened.bucket_bits(), index_redis::DEFAULT_BUCKET_BITS);
    match RedisStore::open_existing(&fresh_url(""), "params v1") {
        Err(IndexError::NotFound { .. }) => {}
        other => panic!("a missing store opened: {other:?}"),
    }
    // Bucket bits are fixed at creation: a later URL asking for others gets the stored.
    let url = fresh_url("buckets=3");
    drop(RedisStore::open(&url, "p").expect("create"));
    let reopened = RedisStore::open(&url.replace("buckets=3", "buckets=12"), "p").expect("reopen");
    assert_eq!(reopened.bucket_bits(), 3);
}

#[test]
fn the_store_works_when_called_from_inside_an_async_runtime() {
    // An async caller that forgets spawn_blocking must get answers, not a panic about
    // starting a runtime within a runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let url = fresh_url("");
    let (tracks, found) = runtime.block_on(async {
        let store = RedisStore::open(&url, "p").expect("open inside a runtime");
        let id = store
            .put_track(
                &track_info("/async", "async", 1.0),
                &spread_entries(9, 50),
                None,
            )
            .expect("put inside a runtime");
        let found = lookup_all(&store, &[spread_entries(9, 50)[0].0]);
        (
            store.tracks().expect("tracks inside a runtime"),
            (id, found.len()),
        )
    });
    assert_eq!(tracks.len(), 1);
    assert_eq!(found.1, 1);
}

#[test]
fn a_write_that_would_wait_for_a_missing_replica_is_refused_and_reads_still_work() {
    // Created and filled without waiting for replicas, which this cluster lacks.
    let url = fresh_url("");
    let entries = spread_entries(21, 100);
    let store = RedisStore::open(&url, "p").expect("create with durable=0");
    store
        .put_track(&track_info("/kept", "kept", 10.0), &entries, None)
        .expect("put with durable=0");
    drop(store);
    // The default waits for one replica: reads work, a write is refused with a message
    // that says why and what to do, and leaves the store as it was.
    let strict = RedisStore::open(&url.replace("&durable=0", ""), "p").expect("reopen");
    assert_eq!(strict.tracks().expect("tracks").len(), 1);
    assert_eq!(lookup_all(&strict, &[entries[0].0]).len(), 1);
    let error = strict
        .put_track(
            &track_info("/new", "new", 10.0),
            &spread_entries(22, 100),
            None,
        )
        .expect_err("a write no replica holds");
    let message = error.to_string();
    assert!(
        message.contains("0 replica(s)") && message.contains("durable=0"),
        "{message}"
    );
    assert_eq!(strict.tracks().expect("tracks").len(), 1);
    // Creating a store is a write too.
    let error = RedisStore::open(&fresh_url("").replace("&durable=0", ""), "p")
        .expect_err("creating a store no replica holds");
    assert!(error.to_string().contains("durable=0"), "{error}");
}

#[test]
fn a_lost_live_bitmap_is_an_error_and_an_empty_store_answers_nothing() {
    let prefix = format!("lost{}", std::process::id());
    let url = cluster().url(&format!("prefix={prefix}&durable=0"));
    let store = RedisStore::open(&url, "p").expect("create");
    let entries = spread_entries(31, 50);
    let mut visits = 0;
    store
        .lookup(&[entries[0].0], usize::MAX, &mut |_, _| visits += 1)
        .expect("a lookup in an empty store");
    assert_eq!(visits, 0);
    store
        .put_track(&track_info("/lost", "lost", 10.0), &entries, None)
        .expect("put");
    assert_eq!(lookup_all(&store, &[entries[0].0]).len(), 1);
    // As eviction or a careless DEL would: every posting would look dead.
    let live = format!("{{{prefix}}}:live");
    let master = cluster().master_of(&live).expect("the catalogue's master");
    let deleted = testcluster::cli(master, &["DEL", &live]).expect("redis-cli");
    assert_eq!(deleted.trim(), "1");
    match store.lookup(&[entries[0].0], usize::MAX, &mut |_, _| {}) {
        Err(IndexError::Corrupt { what, .. }) => assert!(what.contains("live bitmap"), "{what}"),
        other => panic!("a lookup without the live bitmap answered {other:?}"),
    }
}
