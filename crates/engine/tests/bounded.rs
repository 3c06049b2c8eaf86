//! Identify's memory bound: a query whose hits outgrow it is matched in passes over ranges
//! of references, and finds exactly what one pass finds.

use std::path::PathBuf;

use engine::{Engine, ReferenceFilter};
use fingerprint::Params;
use index::{MemStore, TrackId};

mod common;

use common::{RATE_HZ, music, write_wav};

#[test]
fn matching_in_passes_finds_what_one_pass_finds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let params = Params::default();
    let mut engine =
        Engine::with_store(Box::new(MemStore::new(&params.describe())), params).expect("engine");
    let refs: Vec<Vec<f32>> = (0..8).map(|seed| music(100 + seed, 12.0)).collect();
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

    // A query of three references' excerpts in turn, over other music.
    let second = RATE_HZ as usize;
    let mut query: Vec<f32> = [(1, 2), (4, 5), (6, 1)]
        .iter()
        .flat_map(|&(r, at): &(usize, usize)| refs[r][at * second..(at + 6) * second].to_vec())
        .collect();
    for (q, other) in query.iter_mut().zip(music(999, 18.0)) {
        *q += 0.5 * other;
    }

    let whole = engine.identify_samples("query", &query).expect("identify");
    assert_eq!(whole.n_passes, 1);
    let found: Vec<u32> = whole.matches.iter().map(|m| m.track_id).collect();
    assert!(found.len() >= 3, "the three sampled references: {found:?}");
    let as_json = |id: &engine::Identification| serde_json::to_value(&id.matches).expect("json");

    // A bound of a quarter of the hits, then of one hit: several passes, then one a
    // reference; the same matches, field for field, and the same hits.
    for budget in [whole.n_hits / 4, 1] {
        engine.set_max_identify_hits(budget);
        let passed = engine.identify_samples("query", &query).expect("identify");
        assert!(
            passed.n_passes > 1,
            "budget {budget}: {} passes",
            passed.n_passes
        );
        assert_eq!(passed.n_hits, whole.n_hits, "budget {budget}");
        assert_eq!(as_json(&passed), as_json(&whole), "budget {budget}");
    }

    // Among some references only (as a scan searches), one of the sampled ones excluded:
    // passes keep to the filter.
    let mut ids: Vec<TrackId> = engine
        .store()
        .tracks()
        .expect("tracks")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    let filter = ReferenceFilter {
        ids: ids[1]..=ids[ids.len() - 2],
        exclude: found
            .iter()
            .copied()
            .find(|id| (ids[1]..=ids[ids.len() - 2]).contains(id)),
    };
    engine.set_max_identify_hits(usize::MAX);
    let among = engine
        .identify_samples_among("query", &query, &filter)
        .expect("identify");
    assert!(among.matches.iter().all(|m| filter.admits(m.track_id)));
    assert!(
        !among.matches.is_empty(),
        "a sampled reference is left in the range"
    );
    for budget in [among.n_hits / 3, 1] {
        engine.set_max_identify_hits(budget);
        let passed = engine
            .identify_samples_among("query", &query, &filter)
            .expect("identify");
        assert!(passed.n_passes > 1, "budget {budget}");
        assert_eq!(passed.n_hits, among.n_hits, "budget {budget}");
        assert_eq!(as_json(&passed), as_json(&among), "budget {budget}");
    }
}
