//! Identify over HTTP finds a sample planted in a real song: an excerpt of a real
//! recording from the open corpus, slowed like a record with sox and buried under a drum
//! loop, as MP3.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::TestServer;

/// Set to 1 to let tests that need the corpus or the audio tools pass without them.
const SKIP_ENV: &str = "CRATEDIGGER_SKIP_CORPUS_TESTS";

const SPEED: f64 = 0.8;
const EXCERPT_FROM_S: f64 = 60.0;
const EXCERPT_S: f64 = 8.0;
const SAMPLE_AT_S: f64 = 6.0;
const QUERY_S: f64 = 24.0;

fn corpus_root() -> PathBuf {
    std::env::var_os("CRATEDIGGER_CORPUS").map_or_else(
        || {
            let home = std::env::var_os("HOME").map_or_else(|| "/root".into(), PathBuf::from);
            home.join(".cache").join("cratedigger-corpus")
        },
        PathBuf::from,
    )
}

/// Skips (saying why) when allowed, else fails: a silently skipped test proves nothing.
fn unavailable(why: &str) {
    if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
        eprintln!("skipping: {why} ({SKIP_ENV}=1)");
        return;
    }
    panic!("{why}\n(run scripts/setup.sh, or set {SKIP_ENV}=1 to skip the tests that need it)");
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sox() -> Command {
    let mut c = Command::new("sox");
    c.arg("-R");
    c
}

fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-v", "error", "-y"]);
    c
}

/// The query MP3, built in `dir` from `reference` and `drums`.
fn make_query(dir: &Path, reference: &Path, drums: &Path) -> PathBuf {
    let p = |name: &str| dir.join(name);
    run(ffmpeg()
        .arg("-i")
        .arg(reference)
        .args(["-ac", "1", "-ar", "44100"])
        .arg(p("ref.wav")));
    run(sox().arg(p("ref.wav")).arg(p("excerpt.wav")).args([
        "trim",
        &EXCERPT_FROM_S.to_string(),
        &EXCERPT_S.to_string(),
        "speed",
        &SPEED.to_string(),
        "rate",
        "44100",
        "pad",
        &SAMPLE_AT_S.to_string(),
        "0",
    ]));
    run(sox()
        .arg(drums)
        .args(["-r", "44100", "-c", "1", "-b", "16"])
        .arg(p("drum.wav")));
    run(sox().arg(p("drum.wav")).arg(p("drums.wav")).args([
        "repeat",
        "20",
        "trim",
        "0",
        &QUERY_S.to_string(),
    ]));
    run(sox()
        .arg("-m")
        .arg(p("drums.wav"))
        .arg(p("excerpt.wav"))
        .arg(p("mix.wav"))
        .args(["trim", "0", &QUERY_S.to_string(), "gain", "-n", "-1"]));
    run(ffmpeg()
        .arg("-i")
        .arg(p("mix.wav"))
        .args(["-b:a", "128k"])
        .arg(p("query.mp3")));
    p("query.mp3")
}

fn tools_run() -> bool {
    ["sox", "ffmpeg"].iter().all(|t| {
        Command::new(t)
            .arg(if *t == "ffmpeg" {
                "-version"
            } else {
                "--version"
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_finds_a_slowed_sample_under_drums_in_a_real_song() {
    let root = corpus_root();
    let music = root.join("marsshooter-data/usr/share/games/marsshooter/audio/music");
    let drums = root.join("sonic-pi-samples/usr/share/sonic-pi/samples/loop_amen.flac");
    if !tools_run() {
        return unavailable("sox or ffmpeg is not installed");
    }
    let mut refs: Vec<PathBuf> = std::fs::read_dir(&music)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    refs.retain(|p| p.extension().is_some_and(|e| e == "ogg"));
    refs.sort();
    if refs.len() < 2 || !drums.is_file() {
        return unavailable(&format!("no corpus at {}", root.display()));
    }
    // Two references: the test checks the right one is named.
    let (reference, other) = (refs[0].clone(), refs[1].clone());
    let indexed = [reference.clone(), other];
    let s = TestServer::start_with(
        |engine| {
            for r in &indexed {
                engine.index_file(r).expect("index a reference");
            }
        },
        |_| {},
    )
    .await;
    let tracks = s.get_json("/api/tracks").await;
    let expected = tracks["tracks"]
        .as_array()
        .and_then(|ts| {
            ts.iter().find(|t| {
                t["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&*reference.to_string_lossy()))
            })
        })
        .and_then(|t| t["id"].as_u64())
        .unwrap_or_else(|| panic!("the reference is not listed: {tracks}"));

    let query = make_query(s.dir.path(), &reference, &drums);
    let bytes = std::fs::read(&query).expect("read the query");
    let res = s.identify("new-song.mp3", bytes).await;
    assert_eq!(res.status(), 200);
    let found: serde_json::Value = res.json().await.expect("JSON");
    let matches = found["matches"].as_array().expect("matches");
    assert_eq!(matches.len(), 1, "{found}");
    let m = &matches[0];
    assert_eq!(m["track_id"], expected, "{m}");
    assert_eq!(m["kind"], "speed", "{m}");
    let speed = m["speed"].as_f64().expect("a speed factor");
    assert!(
        (speed / SPEED - 1.0).abs() < 0.01,
        "speed {speed}, truth {SPEED}"
    );
    let at = m["query_start_s"].as_f64().unwrap_or(-1.0);
    assert!((at - SAMPLE_AT_S).abs() < 0.5, "sample found at {at} s");
    let from = m["ref_start_s"].as_f64().unwrap_or(-1.0);
    assert!((from - EXCERPT_FROM_S).abs() < 1.0, "taken from {from} s");
    assert!(m["score"].as_f64().unwrap_or(0.0) > 0.5, "{m}");
    assert!((found["duration_s"].as_f64().unwrap_or(0.0) - QUERY_S).abs() < 0.1);
}
