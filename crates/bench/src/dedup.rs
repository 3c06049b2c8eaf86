//! Finds corpus tracks that share audio (the same recording shipped twice, an
//! "enhanced" re-release, ...) with ffmpeg's chromaprint muxer, so that the benchmark
//! never indexes two copies of one recording nor uses a copy as "unknown" background.
//! Only same-speed copies are found; that is all this is for.

use crate::util::{fnv1a, run};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Chromaprint items per second (11025 Hz, hop 4096/3).
pub const ITEMS_PER_S: f64 = 11025.0 / (4096.0 / 3.0);
const WINDOW: usize = 32;
const WINDOW_BER: f64 = 0.25;
/// Shared audio needed to call two tracks copies of each other.
pub const MIN_SHARED_S: f64 = 10.0;

/// Raw chromaprint of a whole file, cached in `cache_dir`.
pub fn fingerprint(path: &Path, cache_dir: &Path) -> Result<Vec<u32>> {
    let key = format!(
        "{:016x}.fp",
        fnv1a(path.as_os_str().as_encoded_bytes())
            ^ std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    );
    let cached = cache_dir.join(key);
    if !cached.exists() {
        let part = cached.with_extension("part");
        run(Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(path)
            .args(["-ac", "1", "-f", "chromaprint", "-fp_format", "raw"])
            .arg(&part))?;
        std::fs::rename(&part, &cached)
            .with_context(|| format!("cannot rename {}", part.display()))?;
    }
    let bytes =
        std::fs::read(&cached).with_context(|| format!("cannot read {}", cached.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shared {
    pub a: usize,
    pub b: usize,
    pub shared_s: f64,
    pub ber: f64,
}

/// Shared audio at offset `off` (b index = a index + off): seconds covered by windows
/// whose bit error rate is below WINDOW_BER, and their mean BER.
fn shared_at(a: &[u32], b: &[u32], off: i64) -> (f64, f64) {
    let start = (-off).max(0) as usize;
    let end = (a.len() as i64).min(b.len() as i64 - off).max(0) as usize;
    let (mut good, mut ber_sum) = (0usize, 0.0);
    let mut i = start;
    while i + WINDOW <= end {
        let bits: u32 = (0..WINDOW)
            .map(|k| (a[i + k] ^ b[(i as i64 + k as i64 + off) as usize]).count_ones())
            .sum();
        let ber = f64::from(bits) / (WINDOW * 32) as f64;
        if ber < WINDOW_BER {
            good += 1;
            ber_sum += ber;
        }
        i += WINDOW;
    }
    let shared = good as f64 * WINDOW as f64 / ITEMS_PER_S;
    (shared, if good > 0 { ber_sum / good as f64 } else { 1.0 })
}

/// All pairs (a < b) sharing at least `min_shared_s` of audio at one alignment.
pub fn find_shared(fps: &[Vec<u32>], min_shared_s: f64) -> Vec<Shared> {
    // Inverted index of exact sub-fingerprint values; very common values (silence) skipped.
    let mut postings: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
    for (f, fp) in fps.iter().enumerate() {
        for (i, &v) in fp.iter().enumerate() {
            postings.entry(v).or_default().push((f as u32, i as u32));
        }
    }
    postings.retain(|_, p| p.len() <= 64);
    let mut out = Vec::new();
    for (a, fp) in fps.iter().enumerate() {
        let mut votes: HashMap<(u32, i64), u32> = HashMap::new();
        for (i, v) in fp.iter().enumerate() {
            if let Some(p) = postings.get(v) {
                for &(b, j) in p {
                    if b as usize > a {
                        *votes.entry((b, i64::from(j) - i as i64)).or_default() += 1;
                    }
                }
            }
        }
        // Best few offsets per other file.
        let mut by_file: HashMap<u32, Vec<(u32, i64)>> = HashMap::new();
        for ((b, off), n) in votes {
            if n >= 8 {
                by_file.entry(b).or_default().push((n, off));
            }
        }
        let mut files: Vec<_> = by_file.into_iter().collect();
        files.sort_by_key(|(b, _)| *b);
        for (b, mut offs) in files {
            offs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
            let mut best: Option<Shared> = None;
            for &(_, off) in offs.iter().take(3) {
                let (shared_s, ber) = shared_at(fp, &fps[b as usize], off);
                if best.is_none_or(|s| shared_s > s.shared_s) {
                    best = Some(Shared {
                        a,
                        b: b as usize,
                        shared_s,
                        ber,
                    });
                }
            }
            if let Some(s) = best.filter(|s| s.shared_s >= min_shared_s) {
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    #[test]
    fn finds_a_shifted_copy_and_ignores_noise() {
        let mut r = Rng::new(3);
        let a: Vec<u32> = (0..2000).map(|_| r.next_u64() as u32).collect();
        let mut b: Vec<u32> = (0..500).map(|_| r.next_u64() as u32).collect();
        // b contains a[300..1300] with a bit flipped in every third item.
        b.extend(
            a[300..1300]
                .iter()
                .enumerate()
                .map(|(i, v)| if i % 3 == 0 { v ^ (1 << (v % 7)) } else { *v }),
        );
        let c: Vec<u32> = (0..2000).map(|_| r.next_u64() as u32).collect();
        let found = find_shared(&[a, b, c], MIN_SHARED_S);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].a, found[0].b), (0, 1));
        assert!(found[0].shared_s > 100.0);
    }
}
