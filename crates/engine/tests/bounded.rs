//! Identify's memory bound: a query whose hits outgrow it is matched in passes over ranges
//! of references, and finds exactly what one pass finds.

use engine::ReferenceFilter;
use index::TrackId;

mod common;

use common::{engine_with_references, excerpts_over_music};

#[test]
fn matching_in_passes_finds_what_one_pass_finds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut engine, refs) = engine_with_references(dir.path(), 8, 100, 12.0);
    // A query of three references' excerpts in turn, over other music.
    let query = excerpts_over_music(&refs, &[(1, 2), (4, 5), (6, 1)], 6, 999);

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
