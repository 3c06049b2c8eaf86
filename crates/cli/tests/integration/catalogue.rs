//! `scan`, `samples`, `sampled-by`, `find`, `tag`, `import-tags` and `graph export` on
//! small libraries of real music: a new song made (with sox) from a slowed, looped
//! excerpt of one track under drums, a re-encoded copy of another, unrelated tracks; one
//! library tagged with ffmpeg, one untagged and given its tags from a CSV file.

use std::path::Path;

use serde_json::Value;

use crate::fixture::{Query, SAMPLE_AT_S, Sample, Transform, corpus};
use crate::util::{TestDir, cratedigger, ffmpeg, index, run_tool};

/// Length of every library track cut from the corpus: long enough to be a song's worth
/// of material around the sampled excerpt, short enough to keep the scan quick.
const TRACK_S: f64 = 90.0;
/// The excerpt the new song samples: 7 s from 40 s of its source, slowed to 0.8x, twice.
const EXCERPT_FROM_S: f64 = 40.0;
const EXCERPT_S: f64 = 7.0;
const SPEED: f64 = 0.8;
const TIMES: usize = 2;

/// Tags as ffmpeg `-metadata` pairs; an empty list strips every tag.
fn tag_args(tags: &[(&str, &str)]) -> Vec<String> {
    if tags.is_empty() {
        return vec!["-map_metadata".into(), "-1".into()];
    }
    tags.iter()
        .flat_map(|(k, v)| ["-metadata".to_string(), format!("{k}={v}")])
        .collect()
}

/// The first [`TRACK_S`] seconds of `src` as an MP3 with `tags`.
fn cut(src: &Path, dst: &Path, tags: &[(&str, &str)]) {
    run_tool(
        ffmpeg()
            .arg("-i")
            .arg(src)
            .args(["-t", &TRACK_S.to_string()])
            .args(tag_args(tags))
            .args(["-c:a", "libmp3lame", "-b:a", "192k"])
            .arg(dst),
    );
}

/// `src` re-encoded to Ogg Vorbis (another codec and bit rate: other bytes, same music).
fn reencode(src: &Path, dst: &Path) {
    run_tool(
        ffmpeg()
            .arg("-i")
            .arg(src)
            .args(["-c:a", "libvorbis", "-q:a", "3"])
            .arg(dst),
    );
}

/// A new song sampling `source` (see [`EXCERPT_FROM_S`]) under drums, with `tags`.
fn new_song(source: &Path, dst: &Path, tags: &[(&str, &str)]) {
    let corpus = corpus().expect("checked by the caller");
    let work = TestDir::new();
    let query = corpus.make_query(
        &work,
        &Query {
            sample: Some(Sample {
                reference: source,
                from_s: EXCERPT_FROM_S,
                len_s: EXCERPT_S,
                times: TIMES,
                transform: Transform::Speed(SPEED),
            }),
            drums: true,
            background: false,
        },
    );
    run_tool(
        ffmpeg()
            .arg("-i")
            .arg(&query)
            .args(tag_args(tags))
            .args(["-c:a", "copy"])
            .arg(dst),
    );
}

/// Runs a command that must succeed and print JSON.
#[track_caller]
fn json<const N: usize>(db: &Path, args: [&str; N]) -> Value {
    let out = cratedigger(db, args);
    out.expect_code(0);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`{}` printed invalid JSON ({e}):\n{}",
            out.command, out.stdout
        )
    })
}

/// Runs a command that must succeed; returns its standard output.
#[track_caller]
fn text<const N: usize>(db: &Path, args: [&str; N]) -> String {
    let out = cratedigger(db, args);
    out.expect_code(0);
    out.stdout
}

/// `scan --json -q`, which must succeed.
#[track_caller]
fn scan(db: &Path) -> Value {
    let v = json(db, ["scan", "--json", "-q"]);
    eprintln!("scan: {v}");
    v
}

/// The id of the track indexed from `path`.
#[track_caller]
fn id_of(db: &Path, path: &Path) -> u64 {
    let want = crate::util::store_path(path);
    let list = json(db, ["list", "--json"]);
    list.as_array()
        .and_then(|l| l.iter().find(|t| t["path"] == want.as_str()))
        .and_then(|t| t["id"].as_u64())
        .unwrap_or_else(|| panic!("{want} is not listed: {list}"))
}

/// The edges of `graph export --format json`, as (from, to, kind, direction).
fn edges(graph: &Value) -> Vec<(u64, u64, String, String)> {
    graph["edges"]
        .as_array()
        .map(|edges| {
            edges
                .iter()
                .map(|e| {
                    (
                        e["from"].as_u64().unwrap_or(u64::MAX),
                        e["to"].as_u64().unwrap_or(u64::MAX),
                        e["kind"].as_str().unwrap_or("").to_string(),
                        e["direction"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key} in {v}"))
}

#[test]
fn scan_of_a_tagged_library_finds_the_planted_sample_and_duplicate_only() {
    let Some(corpus) = corpus() else {
        return;
    };
    let dir = TestDir::new();
    let lib = dir.mkdir("lib");
    let db = dir.db();
    let source = lib.join("source.mp3");
    let other = lib.join("other.mp3");
    let copy = lib.join("other-copy.ogg");
    let unrelated = lib.join("unrelated.mp3");
    let song = lib.join("new.mp3");
    cut(
        &corpus.refs[0],
        &source,
        &[
            ("title", "Source Song"),
            ("artist", "Old Band"),
            ("date", "1973"),
        ],
    );
    cut(
        &corpus.refs[1],
        &other,
        &[
            ("title", "Other One"),
            ("artist", "Old Band"),
            ("date", "1985"),
        ],
    );
    reencode(&other, &copy);
    cut(
        &corpus.refs[3],
        &unrelated,
        &[
            ("title", "Unrelated"),
            ("artist", "Elsewhere"),
            ("date", "1990"),
        ],
    );
    new_song(
        &corpus.refs[0],
        &song,
        &[
            ("title", "New Song"),
            ("artist", "Producer"),
            ("date", "2010"),
        ],
    );
    index(&db, &[&lib]).expect_code(0);

    let first = scan(&db);
    assert_eq!(count(&first, "tracks_scanned"), 5);
    assert_eq!(
        count(&first, "pairs_examined"),
        5 * 4,
        "every ordered pair once"
    );
    assert_eq!(count(&first, "failed"), 0);

    let (source_id, other_id, copy_id, song_id) = (
        id_of(&db, &source),
        id_of(&db, &other),
        id_of(&db, &copy),
        id_of(&db, &song),
    );
    let graph = json(&db, ["graph", "export", "--format", "json"]);
    let mut found = edges(&graph);
    found.sort();
    // The copy has the same year as its original, so their edge has no direction.
    let mut want = vec![
        (
            song_id,
            source_id,
            "sample".to_string(),
            "directed".to_string(),
        ),
        (
            other_id.min(copy_id),
            other_id.max(copy_id),
            "duplicate".to_string(),
            "same_year".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(
        found, want,
        "the planted relations and nothing else:\n{graph:#}"
    );

    // Seen from the new song: its sample, slowed, looped, in the right places.
    let answer = json(&db, ["samples", "New Song", "--json"]);
    let samples = answer["samples"].as_array().expect("a samples list");
    assert_eq!(samples.len(), 1, "{answer:#}");
    let e = &samples[0];
    let tempo = e["tempo"].as_f64().expect("tempo");
    assert!((tempo - SPEED).abs() < 0.01, "tempo {tempo}: {e:#}");
    assert_eq!(e["loop_count"], TIMES, "{e:#}");
    let to_start = e["to_start_s"].as_f64().expect("to_start_s");
    assert!((to_start - EXCERPT_FROM_S).abs() < 1.0, "{e:#}");
    assert!(answer["duplicates"].as_array().is_some_and(Vec::is_empty));

    // The sample lies within where it was placed in the new song.
    let (from_start, from_end) = (
        e["from_start_s"].as_f64().expect("from_start_s"),
        e["from_end_s"].as_f64().expect("from_end_s"),
    );
    let placed_end = SAMPLE_AT_S + TIMES as f64 * EXCERPT_S / SPEED;
    assert!(
        from_start >= SAMPLE_AT_S - 0.5 && from_end <= placed_end + 0.5,
        "{from_start}-{from_end} is outside {SAMPLE_AT_S}-{placed_end}: {e:#}"
    );

    let sentence = text(&db, ["samples", "new song"]);
    assert!(
        sentence.starts_with("New Song (Producer, 2010) samples Source Song (Old Band, 1973): 0:")
            && sentence.contains(
                " of New Song uses 0:40-0:47 of Source Song, slowed to 0.80x (-3.9 semitones), \
                 looped 2 times"
            ),
        "{sentence}"
    );
    let by = json(&db, ["sampled-by", "source song", "--json"]);
    let by_list = by["sampled_by"].as_array().expect("a sampled_by list");
    assert_eq!(by_list.len(), 1, "{by:#}");
    assert_eq!(by_list[0]["from"], song_id);
    let none = text(&db, ["samples", "source song"]);
    assert!(
        none.contains("no sample of an earlier track found"),
        "{none}"
    );

    // Two tracks share the name "Other One": the CLI lists them rather than guess.
    let ambiguous = cratedigger(&db, ["samples", "other one"]);
    ambiguous.expect_code(2);
    assert!(
        ambiguous.stderr.contains("matches 2 tracks equally well")
            && ambiguous.stderr.contains("other-copy.ogg"),
        "{ambiguous:?}"
    );
    let dup = text(&db, ["samples", "--id", &other_id.to_string()]);
    assert!(dup.contains("is a duplicate of Other One"), "{dup}");

    // One more track: only the pairs with it are examined, and nothing new is related.
    let late = lib.join("late.mp3");
    cut(
        &corpus.refs[4],
        &late,
        &[("title", "Late"), ("date", "2020")],
    );
    index(&db, &[&late]).expect_code(0);
    let second = scan(&db);
    assert_eq!(count(&second, "tracks_scanned"), 6);
    assert_eq!(
        count(&second, "pairs_examined"),
        2 * 5,
        "only the new pairs"
    );
    let again = json(&db, ["graph", "export", "--format", "json"]);
    let mut found_again = edges(&again);
    found_again.sort();
    assert_eq!(found_again, want, "{again:#}");
    let idle = scan(&db);
    assert_eq!(count(&idle, "pairs_examined"), 0);

    // Every export format writes a file that names the tracks.
    for (format, needle) in [
        ("csv", "New Song"),
        ("graphml", "<data key=\"n_title\">New Song</data>"),
        ("dot", "[label=\"New Song (Producer, 2010)\"]"),
    ] {
        let path = dir.join(format!("graph.{format}"));
        let out = cratedigger(
            &db,
            [
                "graph".as_ref(),
                "export".as_ref(),
                "--format".as_ref(),
                format.as_ref(),
                "-o".as_ref(),
                path.as_os_str(),
            ],
        );
        out.expect_code(0);
        let written = std::fs::read_to_string(&path).expect("the export file");
        assert!(written.contains(needle), "{format}:\n{written}");
    }
}

#[test]
fn an_untagged_library_takes_its_names_and_years_from_a_csv_file() {
    let Some(corpus) = corpus() else {
        return;
    };
    let dir = TestDir::new();
    let lib = dir.mkdir("lib");
    let db = dir.db();
    let source = lib.join("track-a.mp3");
    let song = lib.join("track-b.mp3");
    let unrelated = lib.join("track-c.mp3");
    cut(&corpus.refs[2], &source, &[]);
    new_song(&corpus.refs[2], &song, &[]);
    cut(&corpus.refs[5], &unrelated, &[]);
    index(&db, &[&lib]).expect_code(0);
    let summary = scan(&db);
    assert_eq!(count(&summary, "pairs_examined"), 3 * 2);

    // Without years, the relation is reported without a direction.
    let undirected = text(&db, ["samples", "track-b"]);
    assert!(
        undirected.contains("track-b.mp3 shares material with track-a.mp3")
            && undirected.contains(
                "which sampled which is unknown (no release year for track-b.mp3 or track-a.mp3)"
            ),
        "{undirected}"
    );

    // Tags from a CSV: by path relative to the CSV's folder, by content hash, and a row
    // that names no track (reported, exit code 1, the other rows applied).
    let list = json(&db, ["list", "--json"]);
    let hash = list
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|t| t["path"] == crate::util::store_path(&unrelated).as_str())
        })
        .and_then(|t| t["content_hash"].as_str())
        .expect("the unrelated track's hash")
        .to_uppercase();
    let csv = lib.join("tags.csv");
    std::fs::write(
        &csv,
        format!(
            "path,content_hash,title,artist,year\n\
             track-a.mp3,,Crate Classic,\"Funk, Inc.\",1971\n\
             track-b.mp3,,Digger's Delight,MC Test,2001\n\
             ,{hash},Elsewhere,Someone,1999\n\
             missing.mp3,,Nobody,Nobody,1980\n"
        ),
    )
    .expect("write the CSV");
    let out = cratedigger(&db, ["import-tags".as_ref(), csv.as_os_str()]);
    out.expect_code(1);
    assert!(
        out.stdout
            .contains("updated 3 tracks; 1 rows matched no track")
            && out.stderr.contains("row 4: no track missing.mp3"),
        "{out:?}"
    );
    let directed = text(&db, ["samples", "digger's delight"]);
    assert!(
        directed.starts_with(
            "Digger's Delight (MC Test, 2001) samples Crate Classic (Funk, Inc., 1971): "
        ) && directed.contains("slowed to 0.80x"),
        "{directed}"
    );
    let found = text(&db, ["find", "funk inc"]);
    assert!(
        found.contains("Crate Classic") && found.contains("1 tracks match"),
        "{found}"
    );

    // Clearing a year from the command line takes the direction away again.
    let source_id = id_of(&db, &source).to_string();
    text(&db, ["tag", &source_id, "--year", ""]);
    let by = text(&db, ["sampled-by", "crate classic"]);
    assert!(
        by.contains(
            "Crate Classic (Funk, Inc.) shares material with Digger's Delight (MC Test, 2001)"
        ) && by.contains("(no release year for Crate Classic)"),
        "{by}"
    );
    let bad = cratedigger(&db, ["tag", &source_id, "--year", "soon"]);
    bad.expect_code(2);
}
