//! Helpers shared by the engine's integration tests: synthetic music, WAV files, and an
//! engine over a few synthetic references.

use std::path::{Path, PathBuf};

use engine::Engine;
use fingerprint::Params;
use index::MemStore;

pub const RATE_HZ: u32 = 16_000;

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Synthetic music: three-note chords with harmonics, changing every 125-375 ms.
pub fn music(seed: u64, seconds: f32) -> Vec<f32> {
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

pub fn write_wav(path: &Path, samples: &[f32]) {
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

/// An engine over an in-memory store holding `n` references of `seconds` of synthetic
/// music (seeds from `seed`), written as WAV files into `dir`; and their samples.
pub fn engine_with_references(
    dir: &Path,
    n: u64,
    seed: u64,
    seconds: f32,
) -> (Engine, Vec<Vec<f32>>) {
    let params = Params::default();
    let engine =
        Engine::with_store(Box::new(MemStore::new(&params.describe())), params).expect("engine");
    let refs: Vec<Vec<f32>> = (0..n).map(|i| music(seed + i, seconds)).collect();
    let paths: Vec<PathBuf> = refs
        .iter()
        .enumerate()
        .map(|(i, samples)| {
            let path = dir.join(format!("ref{i}.wav"));
            write_wav(&path, samples);
            path
        })
        .collect();
    engine.index_paths(&paths, &mut |_| {}).expect("index");
    (engine, refs)
}

/// A query of excerpts of `seconds` each, `(reference, start second)` in turn, over other
/// music (seed `background`) at half the level.
pub fn excerpts_over_music(
    refs: &[Vec<f32>],
    picks: &[(usize, usize)],
    seconds: usize,
    background: u64,
) -> Vec<f32> {
    let second = RATE_HZ as usize;
    let mut query: Vec<f32> = picks
        .iter()
        .flat_map(|&(r, at)| refs[r][at * second..(at + seconds) * second].to_vec())
        .collect();
    let len_s = query.len() as f32 / RATE_HZ as f32;
    for (q, other) in query.iter_mut().zip(music(background, len_s)) {
        *q += 0.5 * other;
    }
    query
}
