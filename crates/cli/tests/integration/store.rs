//! `index`, `remove`, `list`, `stats` and `compact` on small stores of their own:
//! re-indexing, duplicates, removal, compaction, and files that cannot be decoded.

use std::path::{Path, PathBuf};

use crate::util::{
    IndexCounts, TestDir, cratedigger, have_tools, index, run_tool, sox, stats_json, store_path,
};

/// A folder `lib` of three short, different, decodable files (WAV, FLAC, Ogg Vorbis).
fn library(dir: &TestDir) -> (PathBuf, Vec<PathBuf>) {
    let lib = dir.mkdir("lib");
    let files = [
        ("a.wav", "sine 220-1760"),
        ("b.flac", "square 330-660"),
        ("c.ogg", "sawtooth 880-440"),
    ];
    let paths = files
        .iter()
        .map(|(name, synth)| {
            let p = lib.join(name);
            run_tool(
                sox()
                    .args(["-n", "-r", "44100", "-c", "2"])
                    .arg(&p)
                    .args(["synth", "10"])
                    .args(synth.split(' '))
                    .args(["vol", "0.5"]),
            );
            p
        })
        .collect();
    (lib, paths)
}

/// The paths `list --json` reports, sorted.
fn listed_paths(db: &Path) -> Vec<String> {
    let out = cratedigger(db, ["list", "--json"]);
    out.expect_code(0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("list --json printed invalid JSON ({e}):\n{}", out.stdout));
    let mut paths: Vec<String> = list
        .iter()
        .map(|t| {
            t["path"]
                .as_str()
                .unwrap_or_else(|| panic!("a listed track has no path: {t}"))
                .to_string()
        })
        .collect();
    paths.sort();
    paths
}

fn stored(paths: &[PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = paths.iter().map(|p| store_path(p)).collect();
    v.sort();
    v
}

/// [`library`] indexed into a fresh store: (its folder, the library, the files, the
/// store); None when sox, which makes the files, is missing.
fn indexed_library() -> Option<(TestDir, PathBuf, Vec<PathBuf>, PathBuf)> {
    if !have_tools(&["sox"]) {
        return None;
    }
    let dir = TestDir::new();
    let (lib, files) = library(&dir);
    let db = dir.db();
    index(&db, &[&lib]).expect_code(0);
    Some((dir, lib, files, db))
}

#[test]
fn reindexing_an_unchanged_folder_adds_nothing() {
    if !have_tools(&["sox"]) {
        return;
    }
    let dir = TestDir::new();
    let (lib, files) = library(&dir);
    let db = dir.db();
    let first = index(&db, &[&lib]);
    first.expect_code(0);
    assert_eq!(IndexCounts::parse(&first).new, 3, "{first:?}");
    let again = index(&db, &[&lib]);
    again.expect_code(0);
    assert_eq!(
        IndexCounts::parse(&again),
        IndexCounts {
            new: 0,
            replaced: 0,
            unchanged: 3,
            duplicates: 0,
            failed: 0
        },
        "{again:?}"
    );
    assert_eq!(listed_paths(&db), stored(&files));
}

#[test]
fn a_copy_under_another_name_is_a_duplicate() {
    let Some((_dir, lib, files, db)) = indexed_library() else {
        return;
    };
    std::fs::copy(&files[0], lib.join("a copy.wav")).expect("copy a.wav");
    let again = index(&db, &[&lib]);
    again.expect_code(0);
    let counts = IndexCounts::parse(&again);
    assert_eq!((counts.new, counts.duplicates), (0, 1), "{again:?}");
    assert_eq!(listed_paths(&db), stored(&files), "the copy was stored");
}

#[test]
fn remove_by_path_drops_the_track_from_list_and_stats() {
    let Some((_dir, lib, files, db)) = indexed_library() else {
        return;
    };
    let removed = cratedigger(&db, ["remove".as_ref(), files[1].as_os_str()]);
    removed.expect_code(0);
    assert!(removed.stdout.starts_with("removed track "), "{removed:?}");
    assert_eq!(
        listed_paths(&db),
        stored(&[files[0].clone(), files[2].clone()])
    );

    let stats = stats_json(&db);
    assert_eq!(stats["tracks"], 2, "{stats}");

    // Removed, the file is new again.
    let again = index(&db, &[&lib]);
    again.expect_code(0);
    let counts = IndexCounts::parse(&again);
    assert_eq!((counts.new, counts.unchanged), (1, 2), "{again:?}");
}

#[test]
fn remove_of_an_unknown_track_fails_naming_it() {
    let Some((_dir, _lib, _, db)) = indexed_library() else {
        return;
    };
    let out = cratedigger(&db, ["remove", "no-such-track.mp3"]);
    out.expect_code(1);
    assert!(out.stderr.contains("no-such-track.mp3"), "{out:?}");
    assert_eq!(listed_paths(&db).len(), 3);
}

#[test]
fn stats_counts_tracks_and_audio() {
    let Some((_dir, _lib, _, db)) = indexed_library() else {
        return;
    };
    let stats = stats_json(&db);
    assert_eq!(stats["tracks"], 3, "{stats}");
    let hours = stats["audio_hours"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (hours * 3600.0 - 30.0).abs() < 0.5,
        "three 10 s files make {hours} h: {stats}"
    );
}

/// Files that cannot be decoded are named on stderr, the rest are indexed, exit code 1.
#[test]
fn undecodable_files_are_reported_by_name_and_the_rest_indexed() {
    if !have_tools(&["sox"]) {
        return;
    }
    let dir = TestDir::new();
    let (lib, files) = library(&dir);
    // Deterministic noise that no decoder accepts as MP3, and an empty Ogg file.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(lib.join("x.mp3"), noise).expect("write x.mp3");
    std::fs::write(lib.join("y.ogg"), b"").expect("write y.ogg");
    let db = dir.db();
    let out = index(&db, &[&lib]);
    out.expect_code(1);
    for bad in ["x.mp3", "y.ogg"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("failed: ") && l.contains(bad)),
            "{bad} is not reported as failed on stderr:\n{out:?}"
        );
    }
    let counts = IndexCounts::parse(&out);
    assert_eq!((counts.new, counts.failed), (3, 2), "{out:?}");
    assert_eq!(listed_paths(&db), stored(&files));
}

#[test]
fn compact_gives_back_space_and_keeps_the_store() {
    let Some((dir, lib, files, db)) = indexed_library() else {
        return;
    };
    cratedigger(&db, ["remove".as_ref(), files[1].as_os_str()]).expect_code(0);
    let bytes = |db: &Path| stats_json(db)["bytes_on_disk"].as_u64().unwrap_or(0);
    let before = bytes(&db);
    let out = cratedigger(&db, ["compact"]);
    out.expect_code(0);
    assert!(out.stdout.starts_with("compacted "), "{out:?}");
    let after = bytes(&db);
    assert!(after > 0 && after < before, "{before} -> {after}");
    assert_eq!(
        listed_paths(&db),
        stored(&[files[0].clone(), files[2].clone()])
    );
    // The removed file is new again, the others unchanged: the catalogue survived whole.
    let again = index(&db, &[&lib]);
    again.expect_code(0);
    let counts = IndexCounts::parse(&again);
    assert_eq!((counts.new, counts.unchanged), (1, 2), "{again:?}");

    let missing = cratedigger(&dir.join("no-store"), ["compact"]);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("no cratedigger store"),
        "{missing:?}"
    );
}
