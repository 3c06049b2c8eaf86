//! Micro benchmark of the LMDB store; prints numbers and asserts nothing about timing.
//!
//! Run in release mode, since debug timings mean nothing:
//!
//! ```text
//! cargo test -p index --release --test bench -- --ignored --nocapture
//! ```
//!
//! `INDEX_BENCH_DIR` chooses where the store is written (default: a temporary directory,
//! which may be a RAM-backed filesystem where fsync is free), and `INDEX_BENCH_POSTINGS`
//! the total number of postings (default 5 million).

use std::time::Instant;

use index::testsuite::track_info;
use index::{Entry, LmdbStore, MemStore, Store};

/// Postings of a five-minute track at ~100 postings per second.
const POSTINGS_PER_TRACK: usize = 30_000;
/// Keys per lookup batch, the size of a long query.
const LOOKUP_KEYS: usize = 1_000_000;

/// SplitMix64: a tiny deterministic generator, so runs are comparable without a rand crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Synthetic tracks whose keys are uniform over `key_space` values.
fn synthetic_tracks(n_postings: usize, key_space: u64, seed: u64) -> Vec<Vec<Entry>> {
    let mut rng = Rng(seed);
    let n_tracks = n_postings.div_ceil(POSTINGS_PER_TRACK);
    (0..n_tracks)
        .map(|_| {
            (0..POSTINGS_PER_TRACK as u32)
                .map(|time| {
                    (
                        rng.below(key_space) as u32,
                        time,
                        rng.below(512) as u16,
                        rng.below(64) as u16,
                    )
                })
                .collect()
        })
        .collect()
}

/// Half the keys are known to be stored, half are random (mostly misses).
fn query_keys(tracks: &[Vec<Entry>], key_space: u64, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    (0..LOOKUP_KEYS)
        .map(|i| {
            if i % 2 == 0 {
                let track = &tracks[rng.below(tracks.len() as u64) as usize];
                track[rng.below(track.len() as u64) as usize].0
            } else {
                rng.below(key_space) as u32
            }
        })
        .collect()
}

/// Returns (best seconds per key over a few runs, postings visited per run).
fn time_lookup(store: &dyn Store, keys: &[u32]) -> (f64, u64) {
    let mut best_s = f64::INFINITY;
    let mut visited = 0u64;
    // The first run also warms the page cache; the best run is the in-cache cost.
    for _ in 0..4 {
        let mut count = 0u64;
        let mut checksum = 0u64;
        let start = Instant::now();
        store
            .lookup(keys, &mut |i, posting| {
                count += 1;
                checksum = checksum.wrapping_add(i as u64 ^ u64::from(posting.time));
            })
            .expect("lookup");
        best_s = best_s.min(start.elapsed().as_secs_f64());
        visited = count;
        std::hint::black_box(checksum);
    }
    (best_s / keys.len() as f64, visited)
}

fn bench_one(label: &str, n_postings: usize, key_space: u64) {
    let tracks = synthetic_tracks(n_postings, key_space, 7);
    let total: usize = tracks.iter().map(Vec::len).sum();
    let dir = match std::env::var_os("INDEX_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("benchmark directory");
    let store = LmdbStore::open(dir.path(), "bench").expect("open");

    let start = Instant::now();
    let mut ids = Vec::new();
    for (t, entries) in tracks.iter().enumerate() {
        let path = format!("/bench/{t}.flac");
        ids.push(
            store
                .put_track(&track_info(&path, &path, 300.0), entries, None)
                .expect("put"),
        );
    }
    let insert_s = start.elapsed().as_secs_f64();
    let stats = store.stats().expect("stats");
    let compacted_bytes = store
        .copy_compacted(&dir.path().join("compacted"))
        .expect("compacted copy");

    let keys = query_keys(&tracks, key_space, 11);
    let (lmdb_s_per_key, visited) = time_lookup(&store, &keys);

    let start = Instant::now();
    store.remove_track(ids[ids.len() / 2]).expect("remove");
    let remove_s = start.elapsed().as_secs_f64();

    let mem = MemStore::new("bench");
    for (t, entries) in tracks.iter().enumerate() {
        let path = format!("/bench/{t}.flac");
        mem.put_track(&track_info(&path, &path, 300.0), entries, None)
            .expect("mem put");
    }
    let (mem_s_per_key, _) = time_lookup(&mem, &keys);

    println!(
        "== {label}: {total} postings in {} tracks, {} distinct keys",
        tracks.len(),
        stats.n_keys
    );
    println!(
        "insert: {:.0} postings/s ({:.1} ms per {POSTINGS_PER_TRACK}-posting track, one commit each)",
        total as f64 / insert_s,
        insert_s * 1e3 / tracks.len() as f64
    );
    println!(
        "disk: {} bytes, {:.1} bytes/posting; compacted copy {:.1} bytes/posting",
        stats.bytes_on_disk,
        stats.bytes_on_disk as f64 / total as f64,
        compacted_bytes as f64 / total as f64
    );
    println!(
        "lookup: {:.3} µs/key over {LOOKUP_KEYS} keys ({visited} postings visited); MemStore {:.3} µs/key",
        lmdb_s_per_key * 1e6,
        mem_s_per_key * 1e6
    );
    println!("remove: {:.1} ms for one track", remove_s * 1e3);
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn lmdb_throughput() {
    let n_postings = std::env::var("INDEX_BENCH_POSTINGS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5_000_000);
    bench_one("uniform 32-bit keys", n_postings, 1 << 32);
    bench_one(
        "keys from a 2^20 space (~5 postings per key)",
        n_postings,
        1 << 20,
    );
}

/// A multi-hour recording makes one transaction touch far more pages than LMDB keeps
/// dirty in memory; this checks that LMDB's spilling copes and reports the time it takes.
#[test]
#[ignore = "stress test; run with --release -- --ignored --nocapture"]
fn lmdb_huge_track() {
    let dir = tempfile::tempdir().expect("benchmark directory");
    let store = LmdbStore::open(dir.path(), "bench").expect("open");
    for (t, entries) in synthetic_tracks(3_000_000, 1 << 32, 3).iter().enumerate() {
        let path = format!("/bench/{t}.flac");
        store
            .put_track(&track_info(&path, &path, 300.0), entries, None)
            .expect("put");
    }
    // Three hours at ~100 postings per second.
    let mut rng = Rng(5);
    let huge: Vec<Entry> = (0..1_080_000u32)
        .map(|time| (rng.next_u64() as u32, time, 0, 0))
        .collect();
    let start = Instant::now();
    let id = store
        .put_track(&track_info("/huge.flac", "huge", 10_800.0), &huge, None)
        .expect("put huge track");
    println!(
        "huge track: {} postings in {:.2} s",
        huge.len(),
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    assert!(store.remove_track(id).expect("remove huge track"));
    println!("removed in {:.2} s", start.elapsed().as_secs_f64());
}
