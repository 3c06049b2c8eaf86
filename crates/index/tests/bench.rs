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
//! the total number of postings of `lmdb_throughput` (default 5 million).
//!
//! `lmdb_library` is the realistic one: a library of 170 tracks at the posting density of
//! real music, reporting insert time, merges, bytes per posting with a delta and fully
//! merged, and lookup cost with and without a cap. Measured on a 2-core VM with ext4
//! (format 1 → format 2): insert 40-62 s → 7.0 s (the last tracks ~360 ms → ~80 ms each,
//! merges included); file 64.3 → 14.4 bytes per posting; compacted copy 31.5 → 11.8 bytes
//! per posting; lookup of 2.8M keys 0.17 → 0.09-0.11 µs per key uncapped, 0.08-0.10 with a
//! cap of 60 (format 1 had no cap: it visited everything).

use std::time::Instant;

use index::testsuite::track_info;
use index::{Entry, LmdbOptions, LmdbStore, MemStore, Store, test_hooks};

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
    time_lookup_capped(store, keys, usize::MAX)
}

/// [`time_lookup`] with a cap on postings per key.
fn time_lookup_capped(store: &dyn Store, keys: &[u32], cap: usize) -> (f64, u64) {
    let mut best_s = f64::INFINITY;
    let mut visited = 0u64;
    // The first run also warms the page cache; the best run is the in-cache cost.
    for _ in 0..4 {
        let mut count = 0u64;
        let mut checksum = 0u64;
        let start = Instant::now();
        store
            .lookup(keys, cap, &mut |i, posting| {
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

/// Tracks of a realistic library benchmark: 170 tracks of 65,000 postings (about 4 minutes
/// at ~270 postings per second), keys from a 2^22 space where 10% of the keys receive 60% of
/// the postings (see [`skewed_key`]), and field values in the ranges the fingerprint crate
/// produces.
const LIBRARY_TRACKS: usize = 170;
const LIBRARY_POSTINGS_PER_TRACK: u32 = 65_000;
const LIBRARY_KEY_BITS: u32 = 22;
/// Query keys of a long (~3 minute) query with its neighbouring-cell expansions.
const LIBRARY_QUERY_KEYS: usize = 2_800_000;

/// A key from the skewed distribution: 60% from the hot tenth of the space. Multiplying by
/// an odd constant scatters the hot keys over the whole space, as a hash would.
fn skewed_key(rng: &mut Rng) -> u32 {
    let space = 1u64 << LIBRARY_KEY_BITS;
    // 8% of the postings go to 0.25% of the keys (~80 postings each, like the stop-word
    // keys of real music), 52% to the next tenth, the rest anywhere.
    let index = match rng.below(100) {
        0..8 => rng.below(space / 400),
        8..60 => space / 400 + rng.below(space / 10),
        _ => rng.below(space),
    };
    (index.wrapping_mul(0x9E37_79B1) & (space - 1)) as u32
}

fn library_tracks(seed: u64) -> Vec<Vec<Entry>> {
    let mut rng = Rng(seed);
    (0..LIBRARY_TRACKS)
        .map(|_| {
            (0..LIBRARY_POSTINGS_PER_TRACK)
                .map(|i| {
                    (
                        skewed_key(&mut rng),
                        // ~125 frames per second at ~270 postings per second.
                        i * 125 / 270,
                        rng.below(12_672) as u16,
                        48 + rng.below(1_553) as u16,
                    )
                })
                .collect()
        })
        .collect()
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

/// Insert, disk and lookup figures for [`library_tracks`]; `INDEX_BENCH_MIN_DELTA`,
/// `INDEX_BENCH_DELTA_FRACTION` and `INDEX_BENCH_MAX_DELTA_TRACKS` override the merge policy.
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn lmdb_library() {
    let tracks = library_tracks(21);
    let total: usize = tracks.iter().map(Vec::len).sum();
    let dir = match std::env::var_os("INDEX_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("benchmark directory");
    let mut options = LmdbOptions::default();
    if let Some(min) = env_number("INDEX_BENCH_MIN_DELTA") {
        options = options.min_delta_postings(min);
    }
    if let Some(fraction) = env_number("INDEX_BENCH_DELTA_FRACTION") {
        options = options.delta_fraction(fraction);
    }
    if let Some(tracks) = env_number("INDEX_BENCH_MAX_DELTA_TRACKS") {
        options = options.max_delta_tracks(tracks);
    }
    println!("== library, {options:?}");
    let store = LmdbStore::open_with_options(dir.path(), "bench", options).expect("open");
    let start = Instant::now();
    let mut last = Instant::now();
    let mut n_merges = 0u32;
    let mut merge_tracks_s = 0.0;
    let mut slowest_s = 0.0f64;
    let mut sweeps_seen = test_hooks::tiers(&store).expect("tiers").partition_merges;
    for (t, entries) in tracks.iter().enumerate() {
        let path = format!("/bench/{t}.flac");
        let put_start = Instant::now();
        store
            .put_track(&track_info(&path, &path, 240.0), entries, None)
            .expect("put");
        let put_s = put_start.elapsed().as_secs_f64();
        slowest_s = slowest_s.max(put_s);
        let tiers = test_hooks::tiers(&store).expect("tiers");
        if tiers.partition_merges != sweeps_seen {
            sweeps_seen = tiers.partition_merges;
            n_merges += 1;
            merge_tracks_s += put_s;
        }
        if (t + 1) % 17 == 0 {
            println!(
                "  tracks {}: {:.1} ms per track; main {} postings in {} pages, delta {} in {} runs, {} pages; file {} pages",
                t + 1,
                last.elapsed().as_secs_f64() * 1e3 / 17.0,
                tiers.main_postings,
                tiers.main_pages,
                tiers.delta_postings,
                tiers.delta_tracks,
                tiers.delta_pages,
                tiers.file_pages,
            );
            last = Instant::now();
        }
    }
    let insert_s = start.elapsed().as_secs_f64();
    let stats = store.stats().expect("stats");
    let tiers = test_hooks::tiers(&store).expect("tiers");
    println!(
        "{total} postings in {} tracks, {} keys ({:.2} postings per key)",
        tracks.len(),
        stats.n_keys,
        stats.mean_postings_per_key()
    );
    println!(
        "insert: {insert_s:.1} s, {:.0} postings/s, {:.1} ms per track; {n_merges} merges \
         (puts that merged took {merge_tracks_s:.1} s in all; {} partition merges), slowest put {:.0} ms",
        total as f64 / insert_s,
        insert_s * 1e3 / tracks.len() as f64,
        tiers.partition_merges,
        slowest_s * 1e3
    );
    let report_disk = |label: &str, copy_name: &str| {
        let stats = store.stats().expect("stats");
        let compacted = store
            .copy_compacted(&dir.path().join(copy_name))
            .expect("copy");
        println!(
            "disk {label}: file {:.1} MB = {:.2} bytes/posting; compacted copy {:.1} MB = {:.2} bytes/posting",
            stats.bytes_on_disk as f64 / 1e6,
            stats.bytes_on_disk as f64 / total as f64,
            compacted as f64 / 1e6,
            compacted as f64 / total as f64
        );
    };
    report_disk(
        &format!(
            "with delta ({} main + {} delta postings)",
            tiers.main_postings, tiers.delta_postings
        ),
        "copy-delta",
    );

    let mut rng = Rng(99);
    let keys: Vec<u32> = (0..LIBRARY_QUERY_KEYS)
        .map(|_| skewed_key(&mut rng))
        .collect();
    let report_lookups = |label: &str| {
        for cap in [usize::MAX, 60] {
            let (s_per_key, visited) = time_lookup_capped(&store, &keys, cap);
            println!(
                "lookup {label}, cap {cap}: {:.3} µs/key over {} keys, {visited} visits",
                s_per_key * 1e6,
                keys.len()
            );
        }
    };
    report_lookups(&format!("with delta ({} runs)", tiers.delta_tracks));

    let start = Instant::now();
    store.compact().expect("compact");
    println!("compact: {:.2} s", start.elapsed().as_secs_f64());
    report_disk("all merged", "copy-merged");
    report_lookups("all merged");

    let start = Instant::now();
    store.remove_track(1).expect("remove");
    println!(
        "remove (tombstone): {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let (s_per_key, _) = time_lookup_capped(&store, &keys, 60);
    println!(
        "lookup with a tombstone, cap 60: {:.3} µs/key",
        s_per_key * 1e6
    );
}
