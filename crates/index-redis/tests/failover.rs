//! Failover: three masters with a replica each; a master is killed (SIGKILL) while
//! identify queries run; after the failover queries answer again, the same, and every
//! indexed track is still there, because each write waited for a replica (`WAIT`). The
//! promoted replica has no replica of its own, so writes to it are refused until the
//! killed node rejoins.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine::{Engine, IndexOutcome};
use index_redis::RedisStore;
use index_redis::testcluster::{self, TestCluster};

/// The engine's sample rate; test audio is written at it so an excerpt is a slice.
const RATE_HZ: u32 = 16_000;

/// Deterministic pseudo-random numbers (xorshift64*), so the music is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Synthetic music: chords of three random notes changing every 125-375 ms, with
/// harmonics and a decaying envelope, so the spectrogram has distinct peaks.
fn music(seed: u64, seconds: f32) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let n = (seconds * RATE_HZ as f32) as usize;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = ((0.125 + rng.unit() * 0.25) * RATE_HZ as f32) as usize;
        let notes: Vec<f32> = (0..3)
            .map(|_| 130.0 * 2f32.powf((rng.next() % 48) as f32 / 12.0))
            .collect();
        for i in 0..len {
            let t = i as f32 / RATE_HZ as f32;
            let envelope = (-t * 6.0).exp();
            let mut v = 0.0;
            for &f in &notes {
                for h in 1..=3 {
                    v += (std::f32::consts::TAU * f * h as f32 * t).sin() / h as f32;
                }
            }
            out.push(0.1 * envelope * v);
        }
    }
    out.truncate(n);
    out
}

/// Writes mono 16-bit PCM WAV.
fn write_wav(path: &Path, samples: &[f32]) {
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    let data_len = (samples.len() * 2) as u32;
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&RATE_HZ.to_le_bytes());
    bytes.extend_from_slice(&(RATE_HZ * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        bytes.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write wav");
}

#[test]
fn a_killed_master_fails_over_without_losing_tracks_or_answers() {
    let mut cluster = TestCluster::start(3, 1).expect("start 3 masters + 3 replicas");
    let url = cluster.url("prefix=fo&timeout_s=60");
    let engine =
        Engine::open_with(|params| Ok(Box::new(RedisStore::open(&url, params)?))).expect("open");
    let dir = tempfile::tempdir().expect("temp dir");
    let songs: Vec<Vec<f32>> = (0..4).map(|seed| music(seed + 1, 30.0)).collect();
    for (i, song) in songs.iter().enumerate() {
        let path = dir.path().join(format!("song{i}.wav"));
        write_wav(&path, song);
        let outcome = engine.index_file(&path).expect("index");
        assert!(matches!(outcome, IndexOutcome::Added { .. }), "{outcome:?}");
    }
    let excerpt = &songs[2][10 * RATE_HZ as usize..18 * RATE_HZ as usize];
    let identify = || -> Result<Vec<u32>, engine::EngineError> {
        let found = engine.identify_samples("excerpt", excerpt)?;
        Ok(found.matches.iter().map(|m| m.track_id).collect())
    };
    let expected = identify().expect("identify before the failover");
    assert!(
        !expected.is_empty(),
        "the excerpt of song 2 is not found at all"
    );
    let tracks_before = engine.store().tracks().expect("tracks");
    let stats_before = engine.store().stats().expect("stats");
    assert_eq!(tracks_before.len(), 4);

    // Kill the master of the catalogue (which also holds a third of the buckets) while
    // another thread keeps identifying.
    let victim = cluster
        .master_of("{fo}:meta")
        .expect("find the catalogue's master");
    let stop = AtomicBool::new(false);
    let (answered, wrong) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match identify() {
                    Ok(found) if found == expected => answered.fetch_add(1, Ordering::Relaxed),
                    _ => wrong.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill(victim).expect("kill the master");
        let killed_at = answered.load(Ordering::Relaxed);
        cluster.wait_healthy().expect("the cluster fails over");
        // Queries answer again: wait for a few more right answers after the failover.
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::Relaxed) < killed_at + 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "failover: {} right answers, {} failed or different, in {:.1} s",
        answered.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    let new_master = cluster.master_of("{fo}:meta").expect("find the new master");
    assert_ne!(new_master, victim, "no failover happened");
    assert_eq!(identify().expect("identify after the failover"), expected);
    assert_eq!(engine.store().tracks().expect("tracks"), tracks_before);
    assert_eq!(engine.store().stats().expect("stats"), stats_before);
    // Its successor has no replica, so a write that waits for one is refused...
    let path = dir.path().join("unreplicated.wav");
    write_wav(&path, &music(98, 20.0));
    match engine.index_file(&path) {
        Err(error) => assert!(error.to_string().contains("durable=0"), "{error}"),
        Ok(outcome) => panic!("a write no replica holds was taken: {outcome:?}"),
    }
    assert_eq!(engine.store().tracks().expect("tracks"), tracks_before);
    // ... until the failed node comes back, as the successor's replica.
    cluster.restart(victim).expect("restart the killed node");
    let path = dir.path().join("after.wav");
    write_wav(&path, &music(99, 20.0));
    let outcome = engine.index_file(&path).expect("index after the failover");
    assert!(matches!(outcome, IndexOutcome::Added { .. }), "{outcome:?}");
}

/// Sends `signal` (STOP or CONT) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn a_stalled_replica_holds_up_writes_but_not_lookups() {
    use index::Store;
    use index::testsuite::{lookup_all, track_info};
    let cluster = TestCluster::start(3, 1).expect("start 3 masters + 3 replicas");
    let store = RedisStore::open(&cluster.url("prefix=slow&timeout_s=6"), "p").expect("open");
    let entries: Vec<index::Entry> = (0..200u32)
        .map(|i| (i.wrapping_mul(0x9E37_79B9), i, 7, 11))
        .collect();
    store
        .put_track(&track_info("/kept", "kept", 10.0), &entries, None)
        .expect("put");
    // Every write touches the catalogue's master; with its replica stopped, each write
    // waits there for up to 5 s per attempt.
    let master = cluster.master_of("{slow}:meta").expect("master");
    let replica = testcluster::info_field(
        cluster.replica_of(master).expect("its replica"),
        "server",
        "process_id",
    )
    .expect("the replica's pid");
    signal(&replica, "STOP");
    let (looked_up, elapsed) = std::thread::scope(|scope| {
        let writer = scope
            .spawn(|| store.put_track(&track_info("/stalled", "stalled", 10.0), &entries, None));
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let found = lookup_all(&store, &[entries[0].0]).len();
        let elapsed = started.elapsed();
        signal(&replica, "CONT");
        let _ = writer.join();
        (found, elapsed)
    });
    assert_eq!(looked_up, 1);
    assert!(
        elapsed < Duration::from_secs(2),
        "a lookup waited {elapsed:?} behind a write's WAIT"
    );
}
