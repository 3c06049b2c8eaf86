//! Real-music checks and decode-speed measurement on the open corpus
//! (`$CRATEDIGGER_CORPUS`, default `~/.cache/cratedigger-corpus`, made by
//! `scripts/setup.sh`). A missing corpus fails the test unless
//! `CRATEDIGGER_SKIP_CORPUS_TESTS=1` says to skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use audio::{DecodeOptions, decode_file};
use common::*;

/// The corpus's list of audio files.
fn corpus_list() -> PathBuf {
    let dir = std::env::var_os("CRATEDIGGER_CORPUS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/cratedigger-corpus")
        },
        PathBuf::from,
    );
    dir.join("files.txt")
}

/// The first existing corpus file with extension `ext`, if the corpus is present.
fn first_corpus_file(ext: &str) -> Option<PathBuf> {
    let list = std::fs::read_to_string(corpus_list()).ok()?;
    list.lines()
        .map(PathBuf::from)
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext)) && p.is_file())
}

fn corpus_or_skip(ext: &str) -> Option<PathBuf> {
    let found = first_corpus_file(ext);
    if found.is_none() {
        let list = corpus_list();
        if std::env::var_os("CRATEDIGGER_SKIP_CORPUS_TESTS").is_some_and(|v| v == "1") {
            eprintln!("skipping: no .{ext} file listed in {}", list.display());
        } else {
            panic!(
                "no .{ext} file listed in {}: run scripts/setup.sh (or set \
                 CRATEDIGGER_SKIP_CORPUS_TESTS=1 to skip real-music tests)",
                list.display()
            );
        }
    }
    found
}

#[test]
fn real_opus_and_vorbis_files_decode_to_music() {
    for ext in ["opus", "ogg"] {
        let Some(path) = corpus_or_skip(ext) else {
            continue;
        };
        let (d, tags) = decode_file(&path, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let level = rms(&d.samples);
        eprintln!(
            "{}: codec={} {} Hz x{} -> {:.1} s, rms {level:.4}, tags {tags:?}",
            path.display(),
            d.codec,
            d.source_rate_hz,
            d.channels,
            d.duration_s
        );
        assert!(
            d.duration_s > 10.0,
            "{}: {} s",
            path.display(),
            d.duration_s
        );
        assert!(level > 0.001, "{}: rms {level}", path.display());
        assert!(d.samples.iter().all(|s| s.is_finite()));
    }
}

/// CPU time this thread has used, in seconds (Linux), so the speed figures do not depend on
/// what else the machine is doing; `None` elsewhere.
fn thread_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Best-of-3 decode speed as multiples of real time on one core: (audio seconds, by wall
/// clock, by thread CPU time).
fn speed_x(path: &Path, opts: &DecodeOptions) -> Option<(f64, f64, Option<f64>)> {
    let mut best_wall_s = f64::INFINITY;
    let mut best_cpu_s: Option<f64> = None;
    let mut duration_s = 0.0;
    for _ in 0..3 {
        let cpu_before = thread_cpu_s();
        let start = Instant::now();
        let (d, _) = decode_file(path, opts).ok()?;
        best_wall_s = best_wall_s.min(start.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu_before, thread_cpu_s()) {
            best_cpu_s = Some(best_cpu_s.map_or(b - a, |c: f64| c.min(b - a)));
        }
        duration_s = d.duration_s;
    }
    Some((
        duration_s,
        duration_s / best_wall_s,
        best_cpu_s.map(|c| duration_s / c),
    ))
}

/// Prints decode speed; asserts nothing about time (run with `--release -- --nocapture`).
#[test]
fn decode_speed_report() {
    if cfg!(debug_assertions) {
        eprintln!("skipping speed report: numbers are only meaningful with `cargo test --release`");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Some(p) = corpus_or_skip("opus") {
        files.push(("opus (corpus)".into(), p));
    }
    if let Some(p) = corpus_or_skip("ogg") {
        // MP3 and FLAC speeds are measured on the same music, transcoded with ffmpeg.
        if Command::new("ffmpeg").arg("-version").output().is_ok() {
            for (ext, args) in [
                ("mp3", &["-c:a", "libmp3lame", "-b:a", "192k"][..]),
                ("flac", &["-c:a", "flac"][..]),
            ] {
                let out = dir.path().join(format!("music.{ext}"));
                run(Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
                    .arg(&p)
                    .args(args)
                    .arg(&out));
                files.push((format!("{ext} (transcoded)"), out));
            }
        }
        files.insert(
            usize::from(!files.is_empty()),
            ("vorbis (corpus)".into(), p),
        );
    }
    for (label, path) in &files {
        let at_16k = speed_x(path, &DecodeOptions::default());
        // Decoding at the source rate skips resampling, which isolates the resampler's cost.
        let source_rate = decode_file(path, &DecodeOptions::default())
            .map(|(d, _)| d.source_rate_hz)
            .unwrap_or(16_000);
        let native = speed_x(
            path,
            &DecodeOptions {
                target_rate_hz: source_rate,
                ..DecodeOptions::default()
            },
        );
        let fmt = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{x:.0}x"));
        match (at_16k, native) {
            (Some((dur, wall16, cpu16)), Some((_, walln, cpun))) => eprintln!(
                "{label:<18} {dur:7.1} s audio: to 16 kHz mono {wall16:.0}x wall / {} CPU; \
                 without resampling {walln:.0}x wall / {} CPU",
                fmt(cpu16),
                fmt(cpun)
            ),
            _ => eprintln!("{label}: decode failed"),
        }
    }
}
