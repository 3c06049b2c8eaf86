//! Shared helpers: running external tools with useful errors, probing audio, a tiny
//! deterministic PRNG, a stable hash, and small statistics.

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The command line of `cmd`, quoted enough to be pasted into a shell.
pub fn cmd_line(cmd: &Command) -> String {
    let mut s = quote(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(&a.to_string_lossy()));
    }
    s
}

fn quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,%@".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn tail(s: &str, max: usize) -> &str {
    let s = s.trim_end();
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` to completion (stdin closed); fails with the command line and the tail
/// of its stderr when it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null());
    let line = cmd_line(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}` (is the tool installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "command failed ({}): `{line}`\n{}",
            out.status,
            tail(&err, 2000)
        );
    }
    Ok(out)
}

/// Duration in seconds of any audio file ffprobe understands.
pub fn probe_duration(path: &Path) -> Result<f64> {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path))?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim().parse::<f64>().map_err(|e| {
        anyhow!(
            "ffprobe gave no duration for {}: {e} ({s:?})",
            path.display()
        )
    })
}

/// Duration in seconds of a file sox reads (used for our WAV intermediates).
pub fn sox_duration(path: &Path) -> Result<f64> {
    let out = run(Command::new("sox").args(["--i", "-D"]).arg(path))?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse::<f64>()
        .map_err(|e| anyhow!("sox --i -D gave no duration for {}: {e}", path.display()))
}

/// RMS amplitude (full scale = 1) of a sox-readable file, optionally of `trim start len`,
/// measured with `sox FILE -n [trim S L] stat`.
pub fn sox_rms(path: &Path, trim: Option<(f64, f64)>) -> Result<f64> {
    let mut cmd = Command::new("sox");
    cmd.arg(path).arg("-n");
    if let Some((s, l)) = trim {
        cmd.args(["trim", &fmt_s(s), &fmt_s(l)]);
    }
    cmd.arg("stat");
    let line = cmd_line(&cmd);
    let out = run(&mut cmd)?;
    let err = String::from_utf8_lossy(&out.stderr);
    for l in err.lines() {
        if let Some(rest) = l.strip_prefix("RMS     amplitude:") {
            return rest
                .trim()
                .parse::<f64>()
                .with_context(|| format!("cannot parse RMS from `{line}`: {l}"));
        }
    }
    bail!("`{line}` printed no RMS amplitude:\n{}", tail(&err, 1000))
}

/// Seconds formatted for a command line (sub-sample precision at 44.1 kHz).
pub fn fmt_s(s: f64) -> String {
    format!("{:.6}", s.max(0.0))
}

pub fn db(x: f64) -> f64 {
    20.0 * x.max(1e-12).log10()
}

pub fn from_db(d: f64) -> f64 {
    10f64.powf(d / 20.0)
}

/// FNV-1a, 64 bit: a stable hash (independent of Rust versions) for splits and seeds.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64: small, fast, deterministic everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut r = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        r.next_u64();
        r
    }

    /// An independent stream for (seed, tag, index), so results do not depend on the
    /// order in which parallel jobs run.
    pub fn derive(seed: u64, tag: &str, index: u64) -> Self {
        let h = fnv1a(tag.as_bytes());
        Rng::new(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ h.rotate_left(17)
                ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9),
        )
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi) (lo when the range is empty).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        if hi <= lo {
            lo
        } else {
            lo + (hi - lo) * self.f64()
        }
    }

    /// Uniform integer in [0, n); 0 when n == 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn int_in(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below((hi.saturating_sub(lo) + 1) as usize) as u32
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Nearest-rank percentile of unsorted values (p in [0, 100]); None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

/// The last component of `p` as text (lossy), or "" when it has none.
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Absolute path without requiring the file to exist.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Canonical path when it exists (resolves symlinks), else the absolute path.
pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p))
}

/// CPU time (user + system) consumed by children that have been waited for.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    std::fs::write(path, s + "\n").with_context(|| format!("cannot write {}", path.display()))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("cannot parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_uniformish() {
        let mut a = Rng::derive(1, "x", 3);
        let mut b = Rng::derive(1, "x", 3);
        let va: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(va, vb);
        let mut r = Rng::new(7);
        let mean: f64 = (0..10_000).map(|_| r.f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
        for _ in 0..100 {
            let k = r.int_in(4, 16);
            assert!((4..=16).contains(&k));
        }
    }

    #[test]
    fn percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), Some(3.0));
        assert_eq!(percentile(&v, 90.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn quoting() {
        let mut c = Command::new("sox");
        c.args(["a b.wav", "-n", "stat"]);
        assert_eq!(cmd_line(&c), "sox 'a b.wav' -n stat");
    }
}
