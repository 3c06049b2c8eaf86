//! The catalogue over HTTP: a scan as a job, then a track's samples and samplers and the
//! sample graph.

use crate::util::{TOKEN, TestServer, synthetic_wav, wav_concat, wav_excerpt};

/// Stores two songs, the later (2010) using 6 s of the earlier (1973) from 5 s on, and
/// starts a server over them; returns it, the folder of the songs (the scan decodes them
/// again) and (earlier id, later id).
async fn two_related_songs() -> (TestServer, tempfile::TempDir, u64, u64) {
    let files = tempfile::tempdir().expect("temp dir");
    let old = synthetic_wav(30, 20.0);
    let new = wav_concat(&[
        &synthetic_wav(31, 6.0),
        &wav_excerpt(&old, 5.0, 6.0),
        &synthetic_wav(32, 6.0),
    ]);
    let mut ids = Vec::new();
    let s = TestServer::start_with(
        |engine| {
            for (name, bytes, year) in [("old.wav", &old, 1973), ("new.wav", &new, 2010)] {
                let path = files.path().join(name);
                std::fs::write(&path, bytes).expect("write");
                let id = match engine.index_file(&path).expect("index") {
                    engine::IndexOutcome::Added { id, .. } => id,
                    other => panic!("{name}: {other:?}"),
                };
                let edit = engine::MetadataEdit {
                    title: Some(Some(name.trim_end_matches(".wav").to_string())),
                    year: Some(Some(year)),
                    ..Default::default()
                };
                engine.edit_metadata(id, &edit).expect("edit");
                ids.push(u64::from(id));
            }
        },
        |_| {},
    )
    .await;
    (s, files, ids[0], ids[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_job_finds_the_sample_and_the_graph_shows_who_sampled_whom() {
    let (s, _files, old, new) = two_related_songs().await;

    // Before a scan: no relations, and a scan needs the token.
    assert_eq!(
        s.get_json("/api/graph").await["edges"],
        serde_json::json!([])
    );
    let refused = s
        .client
        .post(s.url("/api/scan"))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 401);

    let started = s
        .client
        .post(s.url("/api/scan"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("POST");
    assert_eq!(started.status(), 202);
    let job: serde_json::Value = started.json().await.expect("JSON");
    assert_eq!(job["kind"], "scan");
    let seen = s.wait_job(job["id"].as_u64().expect("id")).await;
    let last = seen.last().expect("a state");
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["total"], 2, "{last}");
    assert_eq!(last["done"], 2, "{last}");
    assert!(
        last["result"]["samples_found"].as_u64().unwrap_or(0) >= 1,
        "{last}"
    );
    assert_eq!(last["result"]["failed"], 0, "{last}");

    // The later song samples the earlier one, 6 s in, from 5 s of it, unchanged.
    let samples = s.get_json(&format!("/api/tracks/{new}/samples")).await;
    let edges = samples["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{samples}");
    let e = &edges[0];
    assert_eq!(
        (e["from"].as_u64(), e["to"].as_u64()),
        (Some(new), Some(old)),
        "{e}"
    );
    assert_eq!(e["direction"], "directed");
    assert!(
        (e["from_start_s"].as_f64().unwrap_or(0.0) - 6.0).abs() < 0.5,
        "{e}"
    );
    assert!(
        (e["to_start_s"].as_f64().unwrap_or(0.0) - 5.0).abs() < 0.5,
        "{e}"
    );
    assert!(
        (e["tempo"].as_f64().unwrap_or(0.0) - 1.0).abs() < 0.01,
        "{e}"
    );
    assert!(
        e["sentence"]
            .as_str()
            .is_some_and(|t| t.contains("samples")),
        "{e}"
    );
    assert_eq!(samples["others"][0]["id"].as_u64(), Some(old));

    let sampled_by = s.get_json(&format!("/api/tracks/{old}/sampled-by")).await;
    assert_eq!(
        sampled_by["edges"][0]["from"].as_u64(),
        Some(new),
        "{sampled_by}"
    );
    assert_eq!(
        s.get_json(&format!("/api/tracks/{old}/samples")).await["edges"],
        serde_json::json!([])
    );
    let relations = s.get_json(&format!("/api/tracks/{old}/relations")).await;
    assert_eq!(
        relations["sampled_by"].as_array().map(Vec::len),
        Some(1),
        "{relations}"
    );

    let graph = s.get_json("/api/graph").await;
    assert_eq!(graph["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(graph["edges"].as_array().map(Vec::len), Some(1), "{graph}");
    let dot = s
        .client
        .get(s.url("/api/graph?format=dot"))
        .send()
        .await
        .expect("GET");
    assert_eq!(dot.status(), 200);
    assert!(dot.text().await.expect("text").contains("graph"));
    let bad = s
        .client
        .get(s.url("/api/graph?format=png"))
        .send()
        .await
        .expect("GET");
    assert_eq!(bad.status(), 400);
    let missing = s
        .client
        .get(s.url("/api/tracks/999/relations"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
}
