//! Whole songs that sample nothing in the store: the false-positive test users meet.
//!
//! The query set's sample-free queries are 30-45 s; people identify whole songs of 2-30
//! minutes, which give chance many more places to line up. `songs` identifies every
//! music file of the corpus (and of any `--extra` folder) that is not a reference and
//! not a known copy of one, whole, and reports each match. Every match here is wrong
//! unless the two files share a recording that the corpus' duplicate check missed (a
//! medley that contains a reference, say): each match is checked for that by correlating
//! the song's waveform with the reported reference region (`shared`), and only matches
//! without shared audio count as false.

use crate::corpus::{audio_files_under, is_audio, list_files};
use crate::run::identify_command;
use crate::score::parse_identify;
use crate::types::{IdentifyOutput, Split, TruthQuery};
use crate::util::{file_name, read_json};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Shorter files are sound effects or jingles, not songs.
const MIN_SONG_S: f64 = 45.0;

pub struct SongsArgs {
    pub bin: PathBuf,
    pub db: PathBuf,
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub extra: Vec<PathBuf>,
}

#[derive(Serialize)]
struct SongMatch {
    reference: String,
    score: f64,
    tempo: f64,
    pitch_semitones: f64,
    significance: Option<f64>,
    verification: Option<f64>,
    /// The song holds the reported reference region's audio (see `shared`): a real
    /// relation the corpus does not list, not a false match.
    shared_audio: bool,
    /// The waveform correlation that decided it, when the relation is free of transforms.
    correlation: Option<f64>,
}

#[derive(Serialize)]
struct Song {
    path: String,
    duration_s: f64,
    matches: Vec<SongMatch>,
}

#[derive(Serialize)]
struct SongsReport {
    songs: usize,
    hours: f64,
    with_match: usize,
    /// Songs with a match that shared audio does not explain: the false positives.
    with_false_match: usize,
    wall_s: f64,
    list: Vec<Song>,
}

/// The candidate songs: corpus and extra audio files that are neither references nor
/// the dropped copies of references (matched by their path relative to the corpus, so
/// that the corpus folder may be named in any way).
fn candidates(a: &SongsArgs) -> Result<Vec<PathBuf>> {
    let split: Split = read_json(&a.out.join("split.json"))?;
    let known: Vec<PathBuf> = split
        .tune
        .iter()
        .chain(&split.heldout)
        .map(|t| PathBuf::from(&t.rel))
        .chain(split.duplicates.iter().map(|d| PathBuf::from(&d.dropped)))
        .collect();
    let mut files: Vec<PathBuf> = list_files(&a.corpus)?;
    for dir in &a.extra {
        files.extend(audio_files_under(dir)?);
    }
    files.retain(|p| is_audio(p) && !known.iter().any(|k| p.ends_with(k)));
    files.sort();
    files.dedup();
    Ok(files)
}

fn identify(a: &SongsArgs, file: &Path) -> Result<IdentifyOutput> {
    let o = identify_command(&a.bin, &a.db, file)
        .output()
        .with_context(|| format!("cannot start {}", a.bin.display()))?;
    if !o.status.success() {
        anyhow::bail!(
            "identify {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    parse_identify(&String::from_utf8_lossy(&o.stdout))
}

pub fn run_songs(a: &SongsArgs) -> Result<()> {
    let files = candidates(a)?;
    eprintln!(
        "songs: {} files to try (songs are those of {MIN_SONG_S} s or more)",
        files.len()
    );
    let t0 = Instant::now();
    let checker = crate::shared::Checker::default();
    let mut list = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let out = match identify(a, f) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("songs: skipped: {e:#}");
                continue;
            }
        };
        let duration_s = out.duration_s.unwrap_or(0.0);
        if duration_s < MIN_SONG_S {
            continue;
        }
        // The song is its own only source: all of it, untransformed.
        let song = f.to_string_lossy().into_owned();
        let as_truth = TruthQuery {
            query: song.clone(),
            condition: "song".into(),
            split: String::new(),
            suite: String::new(),
            params: serde_json::json!({"background": song, "background_start_s": 0.0}),
            samples: Vec::new(),
        };
        let matches: Vec<SongMatch> = out
            .matches
            .iter()
            .map(|m| {
                let verdict = checker.check(&as_truth, m).unwrap_or_else(|e| {
                    eprintln!("songs: shared-audio check: {e:#}");
                    None
                });
                SongMatch {
                    reference: m.path.clone(),
                    score: m.score,
                    tempo: m.tempo,
                    pitch_semitones: m.pitch_semitones,
                    significance: m.extra.get("significance").and_then(|v| v.as_f64()),
                    verification: m.extra.get("verification").and_then(|v| v.as_f64()),
                    shared_audio: verdict.is_some_and(|v| v.is_shared()),
                    correlation: verdict.map(|v| v.peak),
                }
            })
            .collect();
        if !matches.is_empty() {
            eprintln!(
                "songs: [{}/{}] {} ({:.0} s): {}",
                i + 1,
                files.len(),
                f.display(),
                duration_s,
                matches
                    .iter()
                    .map(|m| format!(
                        "{} score {:.3} tempo {:.3} pitch {:+.2}{}",
                        file_name(Path::new(&m.reference)),
                        m.score,
                        m.tempo,
                        m.pitch_semitones,
                        match (m.shared_audio, m.correlation) {
                            (true, Some(c)) => format!(" (shared audio: correlation {c:.2})"),
                            (false, Some(c)) => format!(" (no shared audio: correlation {c:.2})"),
                            _ => String::new(),
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        list.push(Song {
            path: f.to_string_lossy().into_owned(),
            duration_s,
            matches,
        });
    }
    let with_match = list.iter().filter(|s| !s.matches.is_empty()).count();
    let with_false_match = list
        .iter()
        .filter(|s| s.matches.iter().any(|m| !m.shared_audio))
        .count();
    let report = SongsReport {
        songs: list.len(),
        hours: list.iter().map(|s| s.duration_s).sum::<f64>() / 3600.0,
        with_match,
        with_false_match,
        wall_s: t0.elapsed().as_secs_f64(),
        list,
    };
    let path = a.out.join("songs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "{} whole songs ({:.1} h) not in the store: {} with a match, {} with a match that no \
         shared audio explains (false positives unless a person finds the sample); {}",
        report.songs,
        report.hours,
        report.with_match,
        report.with_false_match,
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_their_dropped_copies_are_not_songs() {
        let root = std::env::temp_dir().join(format!("cd-songs-test-{}", std::process::id()));
        let corpus = root.join("corpus");
        let extra = root.join("extra");
        let out = root.join("out");
        for d in [&corpus.join("pkg/music"), &extra.join("more"), &out] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let names = [
            "pkg/music/ref.ogg",
            "pkg/music/copy.ogg",
            "pkg/music/song.ogg",
            "pkg/music/notes.txt",
        ];
        let mut list = String::new();
        for n in names {
            std::fs::write(corpus.join(n), b"x").expect("write");
            list.push_str(&format!("{}\n", corpus.join(n).display()));
        }
        std::fs::write(corpus.join("files.txt"), list).expect("files.txt");
        std::fs::write(extra.join("more/held-out.opus"), b"x").expect("write");
        let track = |rel: &str| serde_json::json!({"path": corpus.join(rel), "rel": rel, "package": "pkg", "duration_s": 60.0});
        let split = serde_json::json!({
            "seed": 1, "corpus": corpus, "tune_percent": 70,
            "tune": [track("pkg/music/ref.ogg")], "heldout": [], "background": [track("pkg/music/song.ogg")],
            "drum_loops": [],
            "duplicates": [{"kept": "pkg/music/ref.ogg", "dropped": "pkg/music/copy.ogg", "shared_s": 60.0, "ber": 0.1}],
        });
        std::fs::write(out.join("split.json"), split.to_string()).expect("split.json");
        let args = SongsArgs {
            bin: PathBuf::from("unused"),
            db: PathBuf::from("unused"),
            corpus: corpus.clone(),
            out,
            extra: vec![extra.clone()],
        };
        let got = candidates(&args).expect("candidates");
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            got,
            // Sorted: root/corpus/... before root/extra/...
            vec![
                corpus.join("pkg/music/song.ogg"),
                extra.join("more/held-out.opus")
            ]
        );
    }
}
