//! The test harness: temporary folders, running the built `cratedigger`, and running the
//! audio tools (sox, rubberband, ffmpeg) that make the test audio.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

/// Set to 1 to let tests that need the corpus or the audio tools pass without them
/// (each prints why). Unset, a missing prerequisite fails the test.
pub const SKIP_ENV: &str = "CRATEDIGGER_SKIP_CORPUS_TESTS";

/// Handles a missing prerequisite: returns true (after saying why) when skipping is
/// allowed, and fails the test otherwise, since a silently skipped test proves nothing.
pub fn unavailable(why: &str) -> bool {
    if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
        eprintln!("skipping: {why} ({SKIP_ENV}=1)");
        return true;
    }
    panic!(
        "{why}\n(install the tools and fetch the corpus with scripts/setup.sh, \
         or set {SKIP_ENV}=1 to skip the tests that need them)"
    );
}

/// True if every tool in `tools` runs; otherwise see [`unavailable`].
pub fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            let flag = if *t == "ffmpeg" {
                "-version"
            } else {
                "--version"
            };
            !Command::new(t)
                .arg(flag)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    missing.is_empty()
        || !unavailable(&format!(
            "`{}` is not installed, so the test audio cannot be made",
            missing.join("`, `")
        ))
}

/// Set to 1 to keep every test's folder (queries, stores) for a look after the run.
pub const KEEP_ENV: &str = "CRATEDIGGER_KEEP_TEST_DIRS";

/// A temporary folder for one test, deleted when dropped unless `$KEEP_ENV` is 1.
pub struct TestDir {
    dir: PathBuf,
    keep: bool,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cratedigger-cli-test-")
            .tempdir()
            .expect("create a temporary folder")
            .keep();
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1");
        if keep {
            eprintln!("keeping {}", dir.display());
        }
        Self { dir, keep }
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the folder `name` (and its parents) and returns its path.
    pub fn mkdir(&self, name: impl AsRef<Path>) -> PathBuf {
        let p = self.join(name);
        std::fs::create_dir_all(&p).expect("create folder");
        p
    }

    /// A path for a store that does not exist yet.
    pub fn db(&self) -> PathBuf {
        self.join("db")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What one run of the binary printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Output {
    /// Fails the test unless the command exited with `code`; returns self for chaining.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "`{}` exited with {} instead of {code}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `cratedigger --db DB ARGS...` (never the user's `$CRATEDIGGER_DB`).
pub fn cratedigger<I, S>(db: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cratedigger"));
    cmd.arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CRATEDIGGER_DB");
    let command = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run the cratedigger binary");
    Output {
        // No code means a signal (a crash); report it as an impossible exit code.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command,
    }
}

/// `cratedigger --db DB index -q PATHS...`.
pub fn index<P: AsRef<Path>>(db: &Path, paths: &[P]) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new("index"), OsStr::new("-q")];
    args.extend(paths.iter().map(|p| p.as_ref().as_os_str()));
    cratedigger(db, args)
}

/// The summary counts of an `index` run, parsed from its last line
/// ("indexed N new, N replaced, N unchanged, N duplicates, N failed; ...").
#[derive(Debug, PartialEq, Eq)]
pub struct IndexCounts {
    pub new: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub duplicates: usize,
    pub failed: usize,
}

impl IndexCounts {
    #[track_caller]
    pub fn parse(out: &Output) -> Self {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("indexed "))
            .unwrap_or_else(|| panic!("`{}` printed no summary:\n{out:?}", out.command));
        let counts = line["indexed ".len()..].split(';').next().unwrap_or("");
        let mut n = [None; 5];
        for part in counts.split(',') {
            let mut words = part.split_whitespace();
            let (Some(num), Some(what)) = (words.next(), words.next()) else {
                panic!("cannot parse `{part}` in `{line}`");
            };
            let num: usize = num
                .parse()
                .unwrap_or_else(|_| panic!("cannot parse `{part}` in `{line}`"));
            let slot = ["new", "replaced", "unchanged", "duplicates", "failed"]
                .iter()
                .position(|w| *w == what)
                .unwrap_or_else(|| panic!("unknown count `{what}` in `{line}`"));
            n[slot] = Some(num);
        }
        let get = |i: usize| n[i].unwrap_or_else(|| panic!("count {i} missing in `{line}`"));
        Self {
            new: get(0),
            replaced: get(1),
            unchanged: get(2),
            duplicates: get(3),
            failed: get(4),
        }
    }
}

/// One query's answer from `identify --json` (the ARCHITECTURE.md JSON contract).
#[derive(Debug, Deserialize)]
pub struct Identification {
    pub query: String,
    pub duration_s: f64,
    pub matches: Vec<Match>,
}

/// One match of [`Identification`].
#[derive(Debug, Deserialize)]
pub struct Match {
    pub track_id: u32,
    pub path: String,
    pub query_start_s: f64,
    pub query_end_s: f64,
    pub ref_start_s: f64,
    pub ref_end_s: f64,
    pub tempo: f64,
    pub pitch_semitones: f64,
    pub speed: Option<f64>,
    pub kind: String,
    pub loop_count: usize,
    pub occurrences: Vec<Occurrence>,
    pub score: f64,
    pub significance: f64,
    pub hits: usize,
}

/// One occurrence of a [`Match`] in the query.
#[derive(Debug, Deserialize)]
pub struct Occurrence {
    pub query_start_s: f64,
    pub query_end_s: f64,
    pub ref_start_s: f64,
    pub ref_end_s: f64,
    pub hits: usize,
}

impl Identification {
    /// Every match on one line each, for failure messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ({:.1} s): {} matches",
            self.query,
            self.duration_s,
            self.matches.len()
        );
        for (i, m) in self.matches.iter().enumerate() {
            let name = Path::new(&m.path)
                .file_name()
                .map_or(m.path.clone(), |n| n.to_string_lossy().into_owned());
            let _ = write!(
                s,
                "\n  #{} track {} {name}: query {:.2}-{:.2} s, ref {:.2}-{:.2} s, tempo {:.4}, \
                 pitch {:+.2} st, speed {:?}, kind {}, loops {} ({} occurrences), \
                 score {:.4}, significance {:.1}, hits {}",
                i + 1,
                m.track_id,
                m.query_start_s,
                m.query_end_s,
                m.ref_start_s,
                m.ref_end_s,
                m.tempo,
                m.pitch_semitones,
                m.speed,
                m.kind,
                m.loop_count,
                m.occurrences.len(),
                m.score,
                m.significance,
                m.hits
            );
            for o in &m.occurrences {
                let _ = write!(
                    s,
                    "\n      query {:.2}-{:.2} s <- ref {:.2}-{:.2} s ({} hits)",
                    o.query_start_s, o.query_end_s, o.ref_start_s, o.ref_end_s, o.hits
                );
            }
        }
        s
    }
}

/// `cratedigger --db DB identify --json QUERY`, which must succeed with one JSON line.
#[track_caller]
pub fn identify(db: &Path, query: &Path) -> Identification {
    identify_with(db, query, &[])
}

/// [`identify`] with more of identify's flags (e.g. `--deep`).
#[track_caller]
pub fn identify_with(db: &Path, query: &Path, flags: &[&str]) -> Identification {
    let mut args: Vec<&OsStr> = vec![OsStr::new("identify"), OsStr::new("--json")];
    args.extend(flags.iter().map(OsStr::new));
    args.push(query.as_os_str());
    let out = cratedigger(db, args);
    out.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per query expected:\n{out:?}");
    let found: Identification = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("identify printed invalid JSON ({e}):\n{}", lines[0]));
    // Shown for failing tests and with --nocapture: the numbers the lead tunes against.
    eprintln!("{}", found.summary());
    found
}

/// `cratedigger --db DB identify --json FLAGS... QUERIES...` in one run, which must succeed
/// with one JSON line per query, in the order given.
#[track_caller]
pub fn identify_all_with<P: AsRef<Path>>(
    db: &Path,
    queries: &[P],
    flags: &[&str],
) -> Vec<Identification> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("identify"), OsStr::new("--json")];
    args.extend(flags.iter().map(OsStr::new));
    args.extend(queries.iter().map(|q| q.as_ref().as_os_str()));
    let out = cratedigger(db, args);
    out.expect_code(0);
    let found: Vec<Identification> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("identify printed invalid JSON ({e}):\n{l}"))
        })
        .collect();
    assert_eq!(
        found.len(),
        queries.len(),
        "one JSON line per query expected:\n{out:?}"
    );
    for (f, q) in found.iter().zip(queries) {
        assert_eq!(
            Path::new(&f.query),
            q.as_ref(),
            "the answers are not in the order of the queries:\n{out:?}"
        );
    }
    for f in &found {
        eprintln!("{}", f.summary());
    }
    found
}

/// The path as the store records it (canonical), for comparing with `path` fields.
pub fn store_path(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .display()
        .to_string()
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs an audio tool and fails the test, with its stderr, if it fails.
#[track_caller]
pub fn run_tool(cmd: &mut Command) -> String {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    assert!(
        out.status.success(),
        "`{line}` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // sox prints its statistics on stderr.
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `sox -R` (repeatable: the same dither every run, so a query is the same bytes every
/// run), to be given arguments and run with [`run_tool`].
pub fn sox() -> Command {
    let mut c = Command::new("sox");
    c.arg("-R");
    c
}

/// `rubberband -q`, to be given arguments and run with [`run_tool`].
pub fn rubberband() -> Command {
    let mut c = Command::new("rubberband");
    c.arg("-q");
    c
}

/// `ffmpeg -nostdin -v error -y`, to be given arguments and run with [`run_tool`].
pub fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-v", "error", "-y"]);
    c
}

/// RMS amplitude (full scale 1) of a sox-readable file, from `sox FILE -n stat`.
#[track_caller]
pub fn rms(path: &Path) -> f64 {
    let err = run_tool(sox().arg(path).args(["-n", "stat"]));
    err.lines()
        .find_map(|l| l.strip_prefix("RMS     amplitude:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("`sox {} -n stat` printed no RMS:\n{err}", path.display()))
}

/// Duration in seconds of a sox-readable file.
#[track_caller]
pub fn duration_s(path: &Path) -> f64 {
    let out = Command::new("sox")
        .args(["--i", "-D"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run sox --i: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "`sox --i -D {}` gave no duration: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Seconds as sox and ffmpeg read them.
pub fn secs(s: f64) -> String {
    format!("{s:.3}")
}

/// Like [`cratedigger`], also returning the child's peak resident set in bytes (from
/// `wait4`, so other processes of the test run do not count).
// The child is reaped by wait4 below, which std cannot see.
#[allow(clippy::zombie_processes)]
pub fn cratedigger_peak_rss<I, S>(db: &Path, args: I) -> (Output, u64)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::io::Read;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cratedigger"));
    cmd.arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CRATEDIGGER_DB");
    let command = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the cratedigger binary");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let mut status = 0;
    // SAFETY: rusage is plain old data, for which all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped (std reaps only in wait/try_wait, which
    // are never called on it), and both pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(
        reaped,
        pid,
        "wait4 failed: {}",
        std::io::Error::last_os_error()
    );
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let out = Output {
        code,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        command,
    };
    // Linux reports ru_maxrss in kilobytes.
    (out, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}

/// What a store holds, read straight from it: the catalogue (without the indexing
/// time), every posting of every track keyed by the track's path instead of its id (ids
/// depend on the order tracks were committed), and the counters `stats` reports.
#[derive(Debug, PartialEq)]
pub struct StoreContent {
    /// (path, duration in µs, n_postings), sorted by path.
    pub tracks: Vec<(String, u64, u64)>,
    /// (path, key, time, freq, span), sorted.
    pub postings: Vec<(String, u32, u32, u16, u16)>,
    /// (tracks, postings, audio µs) as `stats` counts them.
    pub counters: (u64, u64, u64),
}

impl StoreContent {
    /// Reads the store at `db`, which must open (read-only) and read without error.
    #[track_caller]
    pub fn read(db: &Path) -> Self {
        use index::Store;
        let params = store_params(db);
        let store = index::LmdbStore::open_read_only(db, &params)
            .unwrap_or_else(|e| panic!("the store {} does not open: {e}", db.display()));
        let tracks = store
            .tracks()
            .unwrap_or_else(|e| panic!("the catalogue of {} is unreadable: {e}", db.display()));
        let path_of: std::collections::HashMap<u32, String> = tracks
            .iter()
            .map(|(id, info)| (*id, info.path.clone()))
            .collect();
        let dump = index::test_hooks::dump_postings(&store)
            .unwrap_or_else(|e| panic!("the postings of {} are unreadable: {e}", db.display()));
        let mut postings: Vec<(String, u32, u32, u16, u16)> = dump
            .into_iter()
            .map(|(key, p)| {
                let path = path_of.get(&p.track).unwrap_or_else(|| {
                    panic!(
                        "{} holds postings of track {}, which is not in its catalogue",
                        db.display(),
                        p.track
                    )
                });
                (path.clone(), key, p.time, p.freq, p.span)
            })
            .collect();
        postings.sort_unstable();
        let mut tracks: Vec<(String, u64, u64)> = tracks
            .into_iter()
            .map(|(_, info)| {
                (
                    info.path,
                    (info.duration_s * 1e6).round() as u64,
                    info.n_postings,
                )
            })
            .collect();
        tracks.sort_unstable();
        let stats = store
            .stats()
            .unwrap_or_else(|e| panic!("the statistics of {} are unreadable: {e}", db.display()));
        let counters = (
            stats.n_tracks,
            stats.n_postings,
            (stats.total_duration_s * 1e6).round() as u64,
        );
        Self {
            tracks,
            postings,
            counters,
        }
    }

    /// The postings of one track, by path.
    pub fn postings_of(&self, path: &str) -> Vec<(u32, u32, u16, u16)> {
        self.postings
            .iter()
            .filter(|p| p.0 == path)
            .map(|p| (p.1, p.2, p.3, p.4))
            .collect()
    }
}

/// What `cratedigger stats --json` says of the store at `db` (which must succeed).
pub fn stats_json(db: &Path) -> serde_json::Value {
    let out = cratedigger(db, ["stats", "--json"]);
    out.expect_code(0);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stats --json printed invalid JSON ({e}):\n{out:?}"))
}

/// The fingerprint description the binary records in its stores (`stats --json`), which
/// opening a store from the test needs.
fn store_params(db: &Path) -> String {
    static PARAMS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PARAMS
        .get_or_init(|| {
            let stats = stats_json(db);
            stats["fingerprint"]
                .as_str()
                .unwrap_or_else(|| panic!("stats --json has no fingerprint: {stats}"))
                .to_string()
        })
        .clone()
}

impl StoreContent {
    /// Asserts that every track here is whole: it is in `reference` (the store a run
    /// without crashes built) with the same catalogue entry and exactly its postings,
    /// `each` accepts it, and the counters add up over the tracks. Returns how many.
    #[track_caller]
    pub fn assert_whole_tracks(
        &self,
        reference: &StoreContent,
        moment: &str,
        mut each: impl FnMut(&(String, u64, u64)),
    ) -> usize {
        let mut postings = 0;
        let mut duration_us = 0;
        for track in &self.tracks {
            let expected = reference
                .tracks
                .iter()
                .find(|t| t.0 == track.0)
                .unwrap_or_else(|| {
                    panic!("{moment}: a track the crash-free run does not have: {track:?}")
                });
            assert_eq!(track, expected, "{moment}: a catalogue entry differs");
            each(track);
            assert_eq!(
                self.postings_of(&track.0),
                reference.postings_of(&track.0),
                "{moment}: {} does not hold exactly its postings",
                track.0
            );
            postings += track.2;
            duration_us += track.1;
        }
        assert_eq!(
            self.counters,
            (self.tracks.len() as u64, postings, duration_us),
            "{moment}: the counters do not add up over the tracks"
        );
        self.tracks.len()
    }

    /// Like [`StoreContent::read`], but None when no store was ever committed at `db` (a
    /// process killed before its first commit leaves at most an empty LMDB file).
    #[track_caller]
    pub fn read_if_created(db: &Path) -> Option<Self> {
        let params = store_params(db);
        match index::LmdbStore::open_read_only(db, &params) {
            Err(index::IndexError::NotFound { .. }) => None,
            Err(e) => panic!("the store {} does not open: {e}", db.display()),
            Ok(store) => {
                drop(store);
                Some(Self::read(db))
            }
        }
    }
}

/// xorshift64*, seeded: enough to spread the kill moments of the crash tests.
pub struct Rng(pub u64);

impl Rng {
    /// A uniform number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The seed in the environment variable `name` (to replay a run), else one from the clock;
/// never zero, which would stall [`Rng`].
pub fn seed_from_env(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// `n` files of `seconds` of pink noise (ffmpeg's `anoisesrc`, seeds `first_seed`,
/// `first_seed + 1`, ...), as FLAC at 22.05 kHz, named `noise-NNN.flac` in `dir`: many
/// distinct tracks, each with a full fingerprint, quick to make and to index.
pub fn noise_library(dir: &Path, first_seed: u64, n: usize, seconds: f64) -> Vec<PathBuf> {
    // One ffmpeg run writes every file: a process per file would cost more than the audio.
    let mut cmd = ffmpeg();
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("noise-{i:03}.flac")))
        .collect();
    for i in 0..n {
        cmd.args([
            "-f",
            "lavfi",
            "-i",
            &format!(
                "anoisesrc=color=pink:seed={}:r=22050:d={seconds}",
                first_seed + i as u64
            ),
        ]);
    }
    for (i, path) in paths.iter().enumerate() {
        cmd.args(["-map", &format!("{i}:a"), "-c:a", "flac"])
            .arg(path);
    }
    run_tool(&mut cmd);
    paths
}
