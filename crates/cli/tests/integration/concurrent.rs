//! Several processes on one store: two indexers at once (LMDB's write lock serialises
//! them), and identify while another process indexes (each answer sees a track either
//! not yet or whole).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::util::{
    Identification, IndexCounts, Output, StoreContent, TestDir, have_tools, index, noise_library,
    run_tool, sox,
};

/// Starts `cratedigger --db DB index -q FILES...` without waiting for it.
fn spawn_index(db: &Path, files: &[PathBuf]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cratedigger"))
        .arg("--db")
        .arg(db)
        .args(["index", "-q"])
        .args(files)
        .env_remove("CRATEDIGGER_DB")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cratedigger index")
}

fn finish(child: Child, command: &str) -> Output {
    let out = child.wait_with_output().expect("wait for cratedigger");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command: command.to_string(),
    }
}

/// Two indexers started together over overlapping halves of a library: both succeed, and
/// the store equals one built by a single indexer, so no file is lost or stored twice.
/// Repeated, since which process reaches an overlapping file first varies.
#[test]
fn two_indexers_on_one_store_store_each_file_once() {
    if !have_tools(&["ffmpeg"]) {
        return;
    }
    let dir = TestDir::new();
    let lib = dir.mkdir("lib");
    let files = noise_library(&lib, 1, 40, 3.0);
    let reference_db = dir.join("reference");
    index(&reference_db, &[&lib]).expect_code(0);
    let reference = StoreContent::read(&reference_db);

    let (first, second) = (&files[..28], &files[12..]);
    for round in 0..3 {
        let db = dir.join(format!("db-{round}"));
        let a = spawn_index(&db, first);
        let b = spawn_index(&db, second);
        let (a, b) = (finish(a, "index FIRST"), finish(b, "index SECOND"));
        for (out, n) in [(&a, first.len()), (&b, second.len())] {
            out.expect_code(0);
            let c = IndexCounts::parse(out);
            assert_eq!(
                (c.new + c.unchanged + c.duplicates, c.failed),
                (n, 0),
                "round {round}: not every file accounted for:\n{out:?}"
            );
        }
        let added = IndexCounts::parse(&a).new + IndexCounts::parse(&b).new;
        assert_eq!(
            added,
            files.len(),
            "round {round}: the two runs added {added} tracks for {} files:\n{a:?}\n{b:?}",
            files.len()
        );
        assert!(
            StoreContent::read(&db) == reference,
            "round {round}: the store differs from one indexer's"
        );
    }
}

/// `identify --json QUERIES...`, which must succeed with one answer per query.
fn identify_now(db: &Path, queries: &[&Path]) -> Vec<Identification> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("identify"), OsStr::new("--json")];
    args.extend(queries.iter().map(|q| q.as_os_str()));
    let out = crate::util::cratedigger(db, args);
    out.expect_code(0);
    let answers: Vec<Identification> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON ({e}): {l}")))
        .collect();
    assert_eq!(answers.len(), queries.len(), "{out:?}");
    answers
}

/// What an answer says about one reference: its (track path, hits) matches.
fn matches_of(answer: &Identification, reference: &Path) -> Vec<(String, usize)> {
    let path = crate::util::store_path(reference);
    answer
        .matches
        .iter()
        .filter(|m| m.path == path)
        .map(|m| (m.path.clone(), m.hits))
        .collect()
}

/// identify runs again and again while another process indexes a library that includes
/// the sampled reference `late`: every answer finds the already-indexed `early` exactly as
/// before, and finds `late` either not at all or exactly as the finished store does.
#[test]
fn identify_while_another_process_indexes_sees_tracks_whole_or_not_at_all() {
    if !have_tools(&["ffmpeg", "sox"]) {
        return;
    }
    let dir = TestDir::new();
    let lib = dir.mkdir("lib");
    let files = noise_library(&lib, 1, 60, 3.0);
    let early = noise_library(&dir.mkdir("early"), 5000, 1, 12.0).remove(0);
    // Named to sort last, so the indexer tends to reach it late and some answers come
    // before it (the first answer, taken before the indexer starts, always does).
    let late = noise_library(&dir.mkdir("zz-late"), 6000, 1, 12.0).remove(0);

    // Queries: 6 s from the middle of each reference, cut with sox.
    let excerpt = |src: &Path, name: &str| {
        let q = dir.join(name);
        run_tool(sox().arg(src).arg(&q).args(["trim", "3", "6"]));
        q
    };
    let q_early = excerpt(&early, "q-early.flac");
    let q_late = excerpt(&late, "q-late.flac");
    let queries = [q_early.as_path(), q_late.as_path()];

    let db = dir.db();
    index(&db, &[&early]).expect_code(0);
    let before = identify_now(&db, &queries);
    let early_found = matches_of(&before[0], &early);
    assert_eq!(early_found.len(), 1, "the early reference is not found");
    assert!(
        matches_of(&before[1], &late).is_empty(),
        "late found before indexing"
    );

    let mut all = files.clone();
    all.push(late.clone());
    let indexer = spawn_index(&db, &all);
    let mut during = Vec::new();
    let mut indexer = Some(indexer);
    while let Some(mut child) = indexer.take() {
        if child.try_wait().expect("poll the indexer").is_some() {
            finish(child, "index").expect_code(0);
        } else {
            during.push(identify_now(&db, &queries));
            indexer = Some(child);
        }
    }
    let after = identify_now(&db, &queries);
    let late_found = matches_of(&after[1], &late);
    assert_eq!(
        late_found.len(),
        1,
        "the late reference is not found after indexing"
    );
    assert_eq!(matches_of(&after[0], &early), early_found);

    let mut saw_late = 0;
    for (i, answer) in during.iter().enumerate() {
        assert_eq!(
            matches_of(&answer[0], &early),
            early_found,
            "answer {i}: the early reference changed while another track was indexed"
        );
        let late_now = matches_of(&answer[1], &late);
        assert!(
            late_now.is_empty() || late_now == late_found,
            "answer {i}: the late reference half there: {late_now:?} vs {late_found:?}"
        );
        saw_late += usize::from(!late_now.is_empty());
    }
    eprintln!(
        "{} answers while indexing, {saw_late} of them with the late reference",
        during.len()
    );
    assert!(
        during.len() >= 2,
        "only {} identify runs overlapped the indexer; the test proves little",
        during.len()
    );
}
