//! The ways into identify agree: a file, bytes in memory (both decoded with the spectrogram
//! made as the samples come) and decoded samples give the same answer.

mod common;

use common::{engine_with_references, excerpts_over_music, write_wav};

#[test]
fn a_file_bytes_and_samples_give_the_same_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, refs) = engine_with_references(dir.path(), 4, 300, 10.0);
    // Two references' excerpts over other music.
    let query = excerpts_over_music(&refs, &[(0, 1), (2, 3)], 5, 777);
    let path = dir.path().join("query.wav");
    write_wav(&path, &query);
    let bytes = std::fs::read(&path).expect("read query");

    let decoded = engine
        .decode_bytes("query", bytes.clone(), Some("wav"))
        .expect("decode");
    let from_samples = engine
        .identify_samples("query", &decoded)
        .expect("identify");
    let from_file = engine.identify_file(&path).expect("identify file");
    let (from_bytes, samples) = engine
        .identify_bytes("query", bytes, Some("wav"))
        .expect("identify bytes");
    assert!(
        from_samples.matches.len() >= 2,
        "both sampled references: {:?}",
        from_samples.matches
    );
    let as_json = |id: &engine::Identification| serde_json::to_value(&id.matches).expect("json");
    assert_eq!(as_json(&from_file), as_json(&from_samples));
    assert_eq!(as_json(&from_bytes), as_json(&from_samples));
    assert_eq!(from_file.n_hits, from_samples.n_hits);
    assert_eq!(from_file.duration_s, from_samples.duration_s);
    assert_eq!(
        samples, decoded,
        "identify_bytes hands back the decoded signal"
    );

    // A file that is not audio is an error naming it, as before.
    let junk = dir.path().join("junk.mp3");
    std::fs::write(&junk, b"not audio at all, just text").expect("write junk");
    let err = engine.identify_file(&junk).expect_err("junk is refused");
    assert!(err.to_string().contains("junk.mp3"), "{err}");
    assert!(
        engine
            .identify_bytes("junk", b"nope".to_vec(), None)
            .is_err()
    );
}
