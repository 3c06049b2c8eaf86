//! Adding tracks as jobs, reading them back, identifying them, removing them.

use crate::util::{TOKEN, TestServer, synthetic_wav, wav_excerpt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_job_reports_progress_and_the_outcome_of_each_file() {
    let s = TestServer::start(|_| {}).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(synthetic_wav(10, 8.0)).file_name("first.wav"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"not audio at all".to_vec()).file_name("junk.mp3"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(synthetic_wav(11, 8.0)).file_name("second.wav"),
        )
        // A form field that is not a file is ignored.
        .text("comment", "hello");
    let res = s
        .client
        .post(s.url("/api/tracks"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 202);
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string();
    let job: serde_json::Value = res.json().await.expect("JSON");
    let id = job["id"].as_u64().expect("id");
    assert_eq!(location, format!("/api/jobs/{id}"));
    assert_eq!(job["total"], 3);
    assert_eq!(job["kind"], "index");

    let seen = s.wait_job(id).await;
    let done: Vec<u64> = seen
        .iter()
        .map(|j| j["done"].as_u64().unwrap_or(99))
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {done:?}"
    );
    assert!(done.iter().all(|&d| d <= 3), "{done:?}");
    let last = seen.last().expect("a state");
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["done"], 3);
    let result = last["result"].as_array().expect("a result");
    let outcomes: Vec<(&str, &str)> = result
        .iter()
        .map(|f| {
            (
                f["label"].as_str().unwrap_or_default(),
                f["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("first.wav", "added"),
            ("junk.mp3", "failed"),
            ("second.wav", "added")
        ]
    );
    assert!(result[1]["error"].as_str().is_some_and(|e| !e.is_empty()));
    // The undecodable upload is not kept.
    let stored: Vec<String> = s
        .uploads()
        .into_iter()
        .filter(|n| n != "labels.json")
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.iter().all(|n| n.ends_with(".wav")), "{stored:?}");

    let jobs = s.get_json("/api/jobs").await;
    assert_eq!(jobs[0]["id"], id);
    assert_eq!(s.get_json("/api/status").await["n_tracks"], 2);

    // The same bytes again: unchanged, stored once.
    let again = s
        .upload(&[("first again.wav", synthetic_wav(10, 8.0))])
        .await;
    assert_eq!(again["result"][0]["outcome"], "unchanged", "{again}");
    assert_eq!(s.get_json("/api/status").await["n_tracks"], 2);
    let first = s.get_json("/api/tracks?q=first").await;
    assert_eq!(first["tracks"][0]["uploaded_as"], "first.wav", "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_track_is_listed_searched_played_drawn_identified_and_removed() {
    let s = TestServer::start(|_| {}).await;
    let song = synthetic_wav(20, 12.0);
    let job = s
        .upload(&[
            ("Test Song.wav", song.clone()),
            ("Other.wav", synthetic_wav(21, 12.0)),
        ])
        .await;
    let id = job["result"][0]["track_id"].as_u64().expect("track id");

    // Listing, and fuzzy search by name: a file without a title tag is titled after the
    // name it was uploaded under.
    let all = s.get_json("/api/tracks").await;
    assert_eq!(all["total"], 2);
    let found = s.get_json("/api/tracks?q=test%20SONG").await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["tracks"][0]["id"], id);
    assert_eq!(found["tracks"][0]["label"], "Test Song");
    assert_eq!(found["tracks"][0]["title"], "Test Song");
    assert_eq!(found["tracks"][0]["uploaded_as"], "Test Song.wav");
    assert!(
        found["tracks"][0]["match_score"]
            .as_f64()
            .is_some_and(|s| s > 0.9),
        "{found}"
    );
    assert_eq!(
        s.get_json("/api/tracks?q=nothing-like-it").await["total"],
        0
    );
    let second = s.get_json("/api/tracks?limit=1&offset=1").await;
    assert_eq!(second["total"], 2);
    assert_eq!(second["tracks"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["tracks"][0]["id"], all["tracks"][1]["id"]);
    let one = s.get_json(&format!("/api/tracks/{id}")).await;
    assert!(
        (one["duration_s"].as_f64().unwrap_or(0.0) - 12.0).abs() < 0.01,
        "{one}"
    );

    // The audio, whole and in ranges.
    let audio = s
        .client
        .get(s.url(&format!("/api/tracks/{id}/audio")))
        .send()
        .await
        .expect("GET");
    assert_eq!(audio.status(), 200);
    assert_eq!(
        audio.bytes().await.expect("bytes").as_ref(),
        song.as_slice()
    );
    let part = s
        .client
        .get(s.url(&format!("/api/tracks/{id}/audio")))
        .header("Range", "bytes=0-3")
        .send()
        .await
        .expect("GET");
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.expect("bytes").as_ref(), b"RIFF");

    // Its picture.
    let wave = s
        .get_json(&format!("/api/tracks/{id}/waveform?buckets=300"))
        .await;
    assert_eq!(wave["min"].as_array().map(Vec::len), Some(300));
    assert_eq!(wave["max"].as_array().map(Vec::len), Some(300));
    assert!(wave["max"][150].as_f64().unwrap_or(0.0) > 0.05, "{wave}");

    // Identify an excerpt: the track, at the place it was cut from, unchanged.
    let excerpt = wav_excerpt(&song, 3.0, 6.0);
    let res = s.identify("query.wav", excerpt).await;
    assert_eq!(res.status(), 200);
    let found: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(found["query"], "query.wav");
    assert!((found["duration_s"].as_f64().unwrap_or(0.0) - 6.0).abs() < 0.01);
    assert!(
        found["waveform"]["max"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    );
    let m = &found["matches"][0];
    assert_eq!(m["track_id"], id, "{found}");
    assert!(
        (m["tempo"].as_f64().unwrap_or(0.0) - 1.0).abs() < 0.01,
        "{m}"
    );
    assert_eq!(m["kind"], "exact", "{m}");
    assert!(m["query_start_s"].as_f64().unwrap_or(9.0) < 0.5, "{m}");
    assert!(
        (m["ref_start_s"].as_f64().unwrap_or(0.0) - 3.0).abs() < 0.5,
        "{m}"
    );
    assert_eq!(
        found["matches"].as_array().map(Vec::len),
        Some(1),
        "{found}"
    );

    // Raw bodies work as well as multipart.
    let raw = s
        .client
        .post(s.url("/api/identify?name=raw.wav"))
        .header("Content-Type", "audio/wav")
        .body(song)
        .send()
        .await
        .expect("POST");
    let raw: serde_json::Value = raw.json().await.expect("JSON");
    assert_eq!(raw["query"], "raw.wav");
    assert_eq!(raw["matches"][0]["track_id"], id);

    // Removing it deletes its upload too; it is found no more.
    let removed = s
        .client
        .delete(s.url(&format!("/api/tracks/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(removed.status(), 200);
    let stored: Vec<String> = s
        .uploads()
        .into_iter()
        .filter(|n| n != "labels.json")
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let gone = s
        .client
        .get(s.url(&format!("/api/tracks/{id}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(gone.status(), 404);
    let after: serde_json::Value = s
        .identify("query.wav", synthetic_wav(20, 12.0))
        .await
        .json()
        .await
        .expect("JSON");
    assert!(
        after["matches"]
            .as_array()
            .is_some_and(|ms| ms.iter().all(|m| m["track_id"] != id)),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_audio_are_client_errors() {
    let s = TestServer::start(|_| {}).await;
    let empty = s
        .client
        .post(s.url("/api/identify"))
        .send()
        .await
        .expect("POST");
    assert_eq!(empty.status(), 400);
    let junk = s
        .identify("junk.mp3", b"definitely not audio".to_vec())
        .await;
    assert_eq!(junk.status(), 422);
    let body: serde_json::Value = junk.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("junk.mp3")),
        "{body}"
    );
    let no_file = s
        .client
        .post(s.url("/api/tracks"))
        .bearer_auth(TOKEN)
        .multipart(reqwest::multipart::Form::new().text("comment", "no file"))
        .send()
        .await
        .expect("POST");
    assert_eq!(no_file.status(), 400);
    let missing = s
        .client
        .get(s.url("/api/jobs/999"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
}

/// What an identify answer says about one track: (query start, hits) of its matches. The
/// start is rounded to the millisecond: the last bits of a float vary between answers.
fn matches_of(answer: &serde_json::Value, track_id: u64) -> Vec<(String, u64)> {
    answer["matches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["track_id"] == track_id)
        .map(|m| {
            let start = m["query_start_s"].as_f64().unwrap_or(f64::NAN);
            (format!("{start:.3}"), m["hits"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// identify runs again and again while an upload job indexes a library that ends with the
/// sampled reference `late`: every answer finds the already-indexed `early` exactly as
/// before, and `late` either not at all or exactly as the finished store does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_during_an_upload_job_sees_tracks_whole_or_not_at_all() {
    let s = TestServer::start(|c| c.max_concurrent_identify = 4).await;
    let early = synthetic_wav(40, 12.0);
    let late = synthetic_wav(41, 12.0);
    let q_early = wav_excerpt(&early, 3.0, 6.0);
    let q_late = wav_excerpt(&late, 3.0, 6.0);
    let job = s.upload(&[("early.wav", early)]).await;
    assert_eq!(job["state"], "done", "{job}");
    let early_id = job["result"][0]["track_id"].as_u64().expect("early's id");
    let ask = |q: Vec<u8>| {
        let s = &s;
        async move {
            let res = s.identify("q.wav", q).await;
            assert_eq!(res.status(), 200);
            res.json::<serde_json::Value>().await.expect("JSON")
        }
    };
    let early_found = matches_of(&ask(q_early.clone()).await, early_id);
    assert_eq!(early_found.len(), 1, "the early reference is not found");
    let before = ask(q_late.clone()).await;
    assert!(
        before["matches"].as_array().is_some_and(Vec::is_empty),
        "{before}"
    );

    let mut form = reqwest::multipart::Form::new();
    // Enough files that several answers overlap the job (100 gave only 2-3 once identify
    // got faster).
    for seed in 0..250 {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(synthetic_wav(100 + seed, 4.0))
                .file_name(format!("filler-{seed}.wav")),
        );
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(late).file_name("late.wav"),
    );
    let res = s
        .client
        .post(s.url("/api/tracks"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 202);
    let id = res.json::<serde_json::Value>().await.expect("JSON")["id"]
        .as_u64()
        .expect("job id");
    let mut during = Vec::new();
    loop {
        let job = s.get_json(&format!("/api/jobs/{id}")).await;
        if job["state"] == "done" {
            break;
        }
        assert_ne!(job["state"], "failed", "{job}");
        during.push((ask(q_early.clone()).await, ask(q_late.clone()).await));
    }
    let job = s.get_json(&format!("/api/jobs/{id}")).await;
    let late_id = job["result"]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["label"] == "late.wav"))
        .and_then(|f| f["track_id"].as_u64())
        .expect("late's id");
    let late_found = matches_of(&ask(q_late.clone()).await, late_id);
    assert_eq!(late_found.len(), 1, "late is not found after the job");
    let mut saw_late = 0;
    for (i, (e, l)) in during.iter().enumerate() {
        assert_eq!(
            matches_of(e, early_id),
            early_found,
            "answer {i}: early changed"
        );
        let late_now = matches_of(l, late_id);
        saw_late += usize::from(!late_now.is_empty());
        assert!(
            late_now.is_empty() || late_now == late_found,
            "answer {i}: late half there: {late_now:?} vs {late_found:?}"
        );
    }
    eprintln!(
        "{} answers during the job, {saw_late} with late",
        during.len()
    );
    assert!(
        during.len() >= 2,
        "only {} answers overlapped the job; the test proves little",
        during.len()
    );
}
