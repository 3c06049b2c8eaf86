//! The ways into identify agree: a file, bytes in memory (both decoded with the spectrogram
//! made as the samples come) and decoded samples give the same answer.

mod common;

use std::path::PathBuf;

use common::{RATE_HZ, music, write_wav};
use engine::Engine;
use fingerprint::Params;
use index::MemStore;

#[test]
fn a_file_bytes_and_samples_give_the_same_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let params = Params::default();
    let engine =
        Engine::with_store(Box::new(MemStore::new(&params.describe())), params).expect("engine");
    let refs: Vec<Vec<f32>> = (0..4).map(|seed| music(300 + seed, 10.0)).collect();
    let paths: Vec<PathBuf> = refs
        .iter()
        .enumerate()
        .map(|(i, samples)| {
            let path = dir.path().join(format!("ref{i}.wav"));
            write_wav(&path, samples);
            path
        })
        .collect();
    engine.index_paths(&paths, &mut |_| {}).expect("index");

    // Two references' excerpts over other music.
    let second = RATE_HZ as usize;
    let mut query: Vec<f32> = [(0, 1), (2, 3)]
        .iter()
        .flat_map(|&(r, at): &(usize, usize)| refs[r][at * second..(at + 5) * second].to_vec())
        .collect();
    for (q, other) in query.iter_mut().zip(music(777, 10.0)) {
        *q += 0.5 * other;
    }
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
