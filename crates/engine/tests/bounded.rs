//! Identify's memory bound: a query whose hits outgrow it is matched in passes over ranges
//! of references, and finds exactly what one pass finds.

use std::path::{Path, PathBuf};

use engine::{Engine, ReferenceFilter};
use fingerprint::Params;
use index::{MemStore, TrackId};

const RATE_HZ: u32 = 16_000;

/// Deterministic pseudo-random numbers (xorshift64*).
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

/// Synthetic music: three-note chords with harmonics, changing every 125-375 ms.
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
            let mut v = 0.0;
            for &f in &notes {
                for h in 1..=3 {
                    v += (std::f32::consts::TAU * f * h as f32 * t).sin() / h as f32;
                }
            }
            out.push(0.1 * (-t * 6.0).exp() * v);
        }
    }
    out.truncate(n);
    out
}

fn write_wav(path: &Path, samples: &[f32]) {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&[1, 0, 1, 0]); // PCM, mono
    b.extend_from_slice(&RATE_HZ.to_le_bytes());
    b.extend_from_slice(&(RATE_HZ * 2).to_le_bytes());
    b.extend_from_slice(&[2, 0, 16, 0]);
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        b.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, b).expect("write wav");
}

#[test]
fn matching_in_passes_finds_what_one_pass_finds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let params = Params::default();
    let mut engine =
        Engine::with_store(Box::new(MemStore::new(&params.describe())), params).expect("engine");
    let refs: Vec<Vec<f32>> = (0..8).map(|seed| music(100 + seed, 12.0)).collect();
    let paths: Vec<PathBuf> = refs
        .iter()
        .enumerate()
        .map(|(i, samples)| {
            let path = dir.path().join(format!("ref{i}.wav"));
            write_wav(&path, samples);
            path
        })
        .collect();
    engine.index_paths(&paths, &mut |_| {}).expect("index");

    // A query of three references' excerpts in turn, over other music.
    let second = RATE_HZ as usize;
    let mut query: Vec<f32> = [(1, 2), (4, 5), (6, 1)]
        .iter()
        .flat_map(|&(r, at): &(usize, usize)| refs[r][at * second..(at + 6) * second].to_vec())
        .collect();
    for (q, other) in query.iter_mut().zip(music(999, 18.0)) {
        *q += 0.5 * other;
    }

    let whole = engine.identify_samples("query", &query).expect("identify");
    assert_eq!(whole.n_passes, 1);
    let found: Vec<u32> = whole.matches.iter().map(|m| m.track_id).collect();
    assert!(found.len() >= 3, "the three sampled references: {found:?}");
    let as_json = |id: &engine::Identification| serde_json::to_value(&id.matches).expect("json");

    // A bound of a quarter of the hits, then of one hit: several passes, then one a
    // reference; the same matches, field for field, and the same hits.
    for budget in [whole.n_hits / 4, 1] {
        engine.set_max_identify_hits(budget);
        let passed = engine.identify_samples("query", &query).expect("identify");
        assert!(
            passed.n_passes > 1,
            "budget {budget}: {} passes",
            passed.n_passes
        );
        assert_eq!(passed.n_hits, whole.n_hits, "budget {budget}");
        assert_eq!(as_json(&passed), as_json(&whole), "budget {budget}");
    }

    // Among some references only (as a scan searches), one of the sampled ones excluded:
    // passes keep to the filter.
    let mut ids: Vec<TrackId> = engine
        .store()
        .tracks()
        .expect("tracks")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    let filter = ReferenceFilter {
        ids: ids[1]..=ids[ids.len() - 2],
        exclude: found
            .iter()
            .copied()
            .find(|id| (ids[1]..=ids[ids.len() - 2]).contains(id)),
    };
    engine.set_max_identify_hits(usize::MAX);
    let among = engine
        .identify_samples_among("query", &query, &filter)
        .expect("identify");
    assert!(among.matches.iter().all(|m| filter.admits(m.track_id)));
    assert!(
        !among.matches.is_empty(),
        "a sampled reference is left in the range"
    );
    for budget in [among.n_hits / 3, 1] {
        engine.set_max_identify_hits(budget);
        let passed = engine
            .identify_samples_among("query", &query, &filter)
            .expect("identify");
        assert!(passed.n_passes > 1, "budget {budget}");
        assert_eq!(passed.n_hits, among.n_hits, "budget {budget}");
        assert_eq!(as_json(&passed), as_json(&among), "budget {budget}");
    }
}
