//! Real-music fixtures: the open corpus, a reference store indexed once per test run,
//! and queries that sample a reference, built with sox, rubberband and ffmpeg only.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::util::{self, TestDir, duration_s, ffmpeg, rms, rubberband, run_tool, secs, sox};

/// Length of every query.
pub const QUERY_S: f64 = 25.0;
/// Where the sample starts in every query.
pub const SAMPLE_AT_S: f64 = 6.0;
/// RMS of each part (sample, drums, background) before mixing: equal levels, 0 dB.
const PART_RMS: f64 = 0.05;
/// Where the background excerpt starts in its song.
const BACKGROUND_FROM_S: f64 = 30.0;
/// References shorter than this are not used.
const MIN_REFERENCE_S: f64 = 60.0;
/// How many references each package contributes to the store.
const REFERENCES_PER_PACKAGE: usize = 3;
/// The packages the references come from.
const REFERENCE_PACKAGES: [&str; 2] = ["marsshooter-data", "singularity-music"];
/// Background music; this package is never indexed.
const BACKGROUND_PACKAGE: &str = "fretsonfire-songs-sectoid";
const DRUM_PACKAGE: &str = "sonic-pi-samples";

/// The audio the real-music tests use, picked deterministically by path.
#[derive(Debug)]
pub struct Corpus {
    /// The indexed references, in order: the first music tracks of at least a minute of
    /// each reference package, sorted by path.
    pub refs: Vec<PathBuf>,
    /// A song that is never indexed, played under some queries.
    pub background: PathBuf,
    /// A one-bar drum loop (sonic-pi's amen break).
    pub drum_loop: PathBuf,
}

/// The corpus folder: `$CRATEDIGGER_CORPUS`, else `~/.cache/cratedigger-corpus`.
fn corpus_root() -> PathBuf {
    if let Some(p) = std::env::var_os("CRATEDIGGER_CORPUS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("cratedigger-corpus")
}

/// Every file under `dir`, sorted by path.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn package_files(root: &Path, package: &str) -> Result<Vec<PathBuf>, String> {
    let dir = root.join(package);
    files_under(&dir).map_err(|e| {
        format!(
            "the corpus package {package} is missing from {} ({e})",
            root.display()
        )
    })
}

fn find_corpus() -> Result<Corpus, String> {
    let root = corpus_root();
    if !root.join("files.txt").is_file() {
        return Err(format!(
            "no corpus at {} (no files.txt); set CRATEDIGGER_CORPUS to where \
             scripts/setup.sh fetched it",
            root.display()
        ));
    }
    let mut refs = Vec::new();
    for package in REFERENCE_PACKAGES {
        let music = package_files(&root, package)?.into_iter().filter(|p| {
            p.extension().is_some_and(|e| e == "ogg")
                && p.components().any(|c| c.as_os_str() == "music")
        });
        let before = refs.len();
        for p in music {
            if duration_s(&p) >= MIN_REFERENCE_S {
                refs.push(p);
                if refs.len() - before == REFERENCES_PER_PACKAGE {
                    break;
                }
            }
        }
        if refs.len() - before < REFERENCES_PER_PACKAGE {
            return Err(format!(
                "the corpus package {package} in {} has fewer than {REFERENCES_PER_PACKAGE} \
                 music tracks of {MIN_REFERENCE_S} s or more",
                root.display()
            ));
        }
    }
    let background = package_files(&root, BACKGROUND_PACKAGE)?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "song.ogg"))
        .ok_or_else(|| format!("no song.ogg in the corpus package {BACKGROUND_PACKAGE}"))?;
    let drum_loop = package_files(&root, DRUM_PACKAGE)?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "loop_amen.flac"))
        .ok_or_else(|| format!("no loop_amen.flac in the corpus package {DRUM_PACKAGE}"))?;
    Ok(Corpus {
        refs,
        background,
        drum_loop,
    })
}

/// The corpus, or None when it (or a tool) is missing and skipping is allowed; fails the
/// test when it is missing and skipping is not allowed.
pub fn corpus() -> Option<&'static Corpus> {
    static CORPUS: OnceLock<Result<Corpus, String>> = OnceLock::new();
    if !util::have_tools(&["sox", "rubberband", "ffmpeg"]) {
        return None;
    }
    match CORPUS.get_or_init(find_corpus) {
        Ok(c) => Some(c),
        Err(why) => {
            util::unavailable(why);
            None
        }
    }
}

/// The shared reference store: every [`Corpus::refs`] indexed, built once per test
/// process. Tests must not change it.
pub struct References {
    pub corpus: &'static Corpus,
    pub db: PathBuf,
}

/// Removes shared stores left by earlier test processes that have ended (Linux only;
/// elsewhere they stay in the target folder until `cargo clean`).
fn remove_stale_stores(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cli-refs-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn build_references(corpus: &'static Corpus) -> Result<References, String> {
    // A static is never dropped, so the store lives in the target folder and the next
    // test process removes it.
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_stale_stores(parent);
    let dir = tempfile::Builder::new()
        .prefix(&format!("cli-refs-{}-", std::process::id()))
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a folder in {}: {e}", parent.display()))?
        .keep();
    let db = dir.join("db");
    let out = util::index(&db, &corpus.refs);
    let ok = out.code == 0
        && util::IndexCounts::parse(&out).new == corpus.refs.len()
        && out.stderr.is_empty();
    if !ok {
        return Err(format!(
            "indexing the {} references failed:\n{out:?}",
            corpus.refs.len()
        ));
    }
    Ok(References { corpus, db })
}

/// The shared reference store (see [`References`]); None when skipping.
pub fn references() -> Option<&'static References> {
    static REFS: OnceLock<Result<References, String>> = OnceLock::new();
    let corpus = corpus()?;
    match REFS.get_or_init(|| build_references(corpus)) {
        Ok(r) => Some(r),
        Err(e) => panic!("{e}"),
    }
}

/// How a sample is transformed before it is placed in the query.
#[derive(Clone, Copy, Debug)]
pub enum Transform {
    /// `sox speed F rate 44100`: tempo and pitch change together, as on a turntable.
    Speed(f64),
    /// `rubberband -T F`: tempo only.
    Tempo(f64),
    /// `rubberband -p S`: pitch only, in semitones.
    Pitch(f64),
}

/// An excerpt of a reference, optionally looped, transformed.
pub struct Sample<'a> {
    pub reference: &'a Path,
    /// Where the excerpt starts in the reference.
    pub from_s: f64,
    pub len_s: f64,
    /// How many times the excerpt plays back to back (1: no loop).
    pub times: usize,
    pub transform: Transform,
}

/// What a query is made of; every part is mixed at the same RMS.
pub struct Query<'a> {
    /// Placed at [`SAMPLE_AT_S`].
    pub sample: Option<Sample<'a>>,
    /// The drum loop, repeated over the whole query.
    pub drums: bool,
    /// The never-indexed background song, over the whole query.
    pub background: bool,
}

/// Decodes `len_s` seconds of `src` from `from_s` to 44.1 kHz stereo 16-bit WAV.
fn decode_excerpt(src: &Path, from_s: f64, len_s: f64, dst: &Path) {
    run_tool(
        ffmpeg()
            .arg("-i")
            .arg(src)
            .args(["-ss", &secs(from_s), "-t", &secs(len_s)])
            .args(["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le"])
            .arg(dst),
    );
}

impl Corpus {
    /// Builds the query in `dir` and returns the path of its MP3 (128 kb/s, [`QUERY_S`]).
    pub fn make_query(&self, dir: &TestDir, query: &Query<'_>) -> PathBuf {
        // (file, gain bringing it to PART_RMS)
        let mut parts: Vec<(PathBuf, f64)> = Vec::new();
        if let Some(s) = &query.sample {
            let excerpt = dir.join("excerpt.wav");
            decode_excerpt(s.reference, s.from_s, s.len_s, &excerpt);
            let level = rms(&excerpt);
            assert!(
                level > 0.01,
                "test setup: the excerpt {}+{} s of {} is nearly silent (RMS {level})",
                s.from_s,
                s.len_s,
                s.reference.display()
            );
            let looped = if s.times > 1 {
                let looped = dir.join("looped.wav");
                run_tool(
                    sox()
                        .arg(&excerpt)
                        .arg(&looped)
                        .args(["repeat".to_string(), (s.times - 1).to_string()]),
                );
                looped
            } else {
                excerpt
            };
            let moved = dir.join("transformed.wav");
            match s.transform {
                Transform::Speed(f) => run_tool(sox().arg(&looped).arg(&moved).args([
                    "speed",
                    &f.to_string(),
                    "rate",
                    "44100",
                ])),
                Transform::Tempo(t) => run_tool(
                    rubberband()
                        .args(["-T", &t.to_string()])
                        .arg(&looped)
                        .arg(&moved),
                ),
                Transform::Pitch(p) => run_tool(
                    rubberband()
                        .args(["-p", &p.to_string()])
                        .arg(&looped)
                        .arg(&moved),
                ),
            };
            // Silence before and after: every part lasts the whole query.
            let tail_s = QUERY_S - SAMPLE_AT_S - duration_s(&moved);
            assert!(
                tail_s >= 0.0,
                "test setup: the sample does not fit in the query ({tail_s} s)"
            );
            let placed = dir.join("placed.wav");
            run_tool(sox().arg(&moved).arg(&placed).args([
                "pad",
                &secs(SAMPLE_AT_S),
                &secs(tail_s),
            ]));
            parts.push((placed, PART_RMS / rms(&moved)));
        }
        if query.drums {
            let drums = dir.join("drums.wav");
            let times = (QUERY_S / duration_s(&self.drum_loop)).ceil() as usize;
            run_tool(
                sox()
                    .arg(&self.drum_loop)
                    .args(["-b", "16"])
                    .arg(&drums)
                    .args(["repeat", &times.saturating_sub(1).to_string()])
                    .args([
                        "rate",
                        "44100",
                        "channels",
                        "2",
                        "trim",
                        "0",
                        &secs(QUERY_S),
                    ]),
            );
            let g = PART_RMS / rms(&drums);
            parts.push((drums, g));
        }
        if query.background {
            let bg = dir.join("background.wav");
            decode_excerpt(&self.background, BACKGROUND_FROM_S, QUERY_S, &bg);
            let g = PART_RMS / rms(&bg);
            parts.push((bg, g));
        }
        assert!(!parts.is_empty(), "test setup: an empty query");

        let mix = dir.join("mix.wav");
        let mut cmd = sox();
        if parts.len() > 1 {
            cmd.arg("-m");
        }
        for (p, g) in &parts {
            cmd.args(["-v", &format!("{g:.6}")]).arg(p);
        }
        cmd.args(["-b", "16"])
            .arg(&mix)
            .args(["trim", "0", &secs(QUERY_S), "gain", "-n", "-1"]);
        run_tool(&mut cmd);
        let got_s = duration_s(&mix);
        assert!(
            (got_s - QUERY_S).abs() < 0.01,
            "test setup: the mix lasts {got_s} s, not {QUERY_S} s"
        );

        let mp3 = dir.join("query.mp3");
        run_tool(
            ffmpeg()
                .arg("-i")
                .arg(&mix)
                .args(["-c:a", "libmp3lame", "-b:a", "128k"])
                .arg(&mp3),
        );
        mp3
    }
}
