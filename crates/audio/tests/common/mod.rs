//! Shared helpers for the audio integration tests: tool detection, WAV writing, signal checks.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

/// True if `tool` runs; tests that need it print why they skip when it does not.
pub fn have_tool(tool: &str, version_flag: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: `{tool}` is not installed, so the test audio cannot be generated");
    }
    ok
}

pub fn have_sox() -> bool {
    have_tool("sox", "--version")
}

pub fn have_ffmpeg() -> bool {
    have_tool("ffmpeg", "-version")
}

/// Runs a command and panics with its stderr if it fails (test setup only).
/// An ffmpeg command whose input is the lavfi source `source` (e.g. a sine): quiet,
/// overwriting its output. Callers add the codec, metadata and output path.
pub fn ffmpeg_lavfi(source: &str) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
    ])
    .arg(source);
    cmd
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn test tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a 16-bit PCM WAV with interleaved `samples` (in [-1, 1]).
pub fn write_wav_i16(path: &Path, rate_hz: u32, channels: u16, samples: &[f32]) {
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|&s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    let bytes = wav_bytes(rate_hz, channels, data.len() as u32, &data);
    std::fs::write(path, bytes).expect("write wav");
}

/// Builds a 16-bit PCM WAV whose header declares `declared_data_len` bytes of data.
pub fn wav_bytes(rate_hz: u32, channels: u16, declared_data_len: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(44 + data.len());
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&declared_data_len.saturating_add(36).to_le_bytes());
    b.extend_from_slice(b"WAVE");
    b.extend_from_slice(b"fmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate_hz.to_le_bytes());
    b.extend_from_slice(
        &rate_hz
            .wrapping_mul(u32::from(channels))
            .wrapping_mul(2)
            .to_le_bytes(),
    );
    b.extend_from_slice(&channels.wrapping_mul(2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&declared_data_len.to_le_bytes());
    b.extend_from_slice(data);
    b
}

/// Builds a 32-bit float WAV (format tag 3) of interleaved `samples`, written as they are:
/// NaN, infinities and values far outside [-1, 1] included.
pub fn wav_f32_bytes(rate_hz: u32, channels: u16, samples: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut b = wav_bytes(rate_hz, channels, data.len() as u32, &data);
    // wav_bytes writes a 16-bit PCM header; patch the format tag, byte rate, block
    // alignment and bits per sample for 32-bit float.
    b[20..22].copy_from_slice(&3u16.to_le_bytes());
    b[28..32].copy_from_slice(&(rate_hz * u32::from(channels) * 4).to_le_bytes());
    b[32..34].copy_from_slice(&(channels * 4).to_le_bytes());
    b[34..36].copy_from_slice(&32u16.to_le_bytes());
    b
}

/// Interleaved sine: every channel gets the same tone at `amp`.
pub fn sine(freq_hz: f32, rate_hz: u32, channels: u16, duration_s: f32, amp: f32) -> Vec<f32> {
    let frames = (rate_hz as f32 * duration_s) as usize;
    let mut out = Vec::with_capacity(frames * channels as usize);
    for i in 0..frames {
        let v = amp * (2.0 * std::f32::consts::PI * freq_hz * i as f32 / rate_hz as f32).sin();
        out.extend(std::iter::repeat_n(v, channels as usize));
    }
    out
}

/// Frequency (to the nearest `step_hz`) with the most energy in `window`, by naive DFT.
pub fn dominant_frequency_hz(window: &[f32], rate_hz: u32, step_hz: f32) -> f32 {
    let nyquist = rate_hz as f32 / 2.0;
    let mut best = (0.0f32, 0.0f64);
    let mut f = step_hz;
    while f < nyquist {
        let w = 2.0 * std::f64::consts::PI * f as f64 / rate_hz as f64;
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (n, &x) in window.iter().enumerate() {
            let phase = w * n as f64;
            re += x as f64 * phase.cos();
            im -= x as f64 * phase.sin();
        }
        let power = re * re + im * im;
        if power > best.1 {
            best = (f, power);
        }
        f += step_hz;
    }
    best.0
}

pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples
        .iter()
        .map(|&s| (s as f64) * (s as f64))
        .sum::<f64>()
        / samples.len() as f64)
        .sqrt() as f32
}

/// A window from the middle of the signal, away from codec edge effects.
pub fn middle(samples: &[f32], len: usize) -> &[f32] {
    let start = samples.len().saturating_sub(len) / 2;
    &samples[start..(start + len).min(samples.len())]
}
