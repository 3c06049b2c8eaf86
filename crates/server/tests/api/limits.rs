//! Safe by default: size limits, tokens, the bound on concurrent decoding, timeouts, and
//! no way for a request to name a file.

use std::time::Duration;

use crate::util::{
    TOKEN, TestServer, files_in, hold_open_request, read_status_line, send_chunked, synthetic_wav,
};

const LIMIT_BYTES: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_are_413_and_leave_nothing_behind() {
    let s = TestServer::start(|c| c.max_upload_bytes = LIMIT_BYTES).await;
    let big = vec![7u8; 300_000];

    // Declared too large: refused before the body is read.
    let raw = s
        .client
        .post(s.url("/api/identify"))
        .body(big.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(raw.status(), 413);
    let body: serde_json::Value = raw.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-upload-mb"),
        "{body}"
    );

    let multipart = s.identify("big.mp3", big.clone()).await;
    assert_eq!(multipart.status(), 413);

    let add = s
        .client
        .post(s.url("/api/tracks?name=big.wav"))
        .bearer_auth(TOKEN)
        .body(big.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(add.status(), 413);

    // Not declared (chunked): refused when the stream passes the limit.
    assert!(
        send_chunked(s.addr, "/api/tracks?name=big.wav", &big)
            .await
            .contains(" 413 ")
    );
    assert!(
        send_chunked(s.addr, "/api/identify", &big)
            .await
            .contains(" 413 ")
    );

    // A body just under the limit is read (and is not audio: 422).
    let small = s
        .client
        .post(s.url("/api/identify"))
        .body(vec![7u8; LIMIT_BYTES as usize - 1])
        .send()
        .await
        .expect("POST");
    assert_eq!(small.status(), 422);

    // The partial uploads were temporary files, removed.
    let left: Vec<String> = s
        .uploads()
        .into_iter()
        .filter(|n| n != "labels.json")
        .collect();
    assert!(left.is_empty(), "left in the upload folder: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_every_write_is_refused_and_says_why() {
    let s = TestServer::start(|c| c.token = None).await;
    let add = s
        .client
        .post(s.url("/api/tracks"))
        .bearer_auth("anything")
        .body(synthetic_wav(1, 3.0))
        .send()
        .await
        .expect("POST");
    assert_eq!(add.status(), 403);
    let body: serde_json::Value = add.json().await.expect("JSON");
    let why = body["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("--token") && why.contains("CRATEDIGGER_TOKEN"),
        "{why}"
    );
    let remove = s
        .client
        .delete(s.url("/api/tracks/1"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(remove.status(), 403);
    assert_eq!(s.get_json("/api/status").await["writes_enabled"], false);
    // Nothing was stored.
    assert!(s.uploads().is_empty(), "{:?}", s.uploads());
    // Reading stays open.
    assert_eq!(s.get_json("/api/tracks").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_right_token() {
    let s = TestServer::start(|_| {}).await;
    let wav = synthetic_wav(2, 3.0);

    let none = s
        .client
        .post(s.url("/api/tracks"))
        .body(wav.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(none.status(), 401);
    assert!(
        none.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        none.headers()
    );
    let wrong = s
        .client
        .post(s.url("/api/tracks"))
        .bearer_auth("not-the-token")
        .body(wav.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(wrong.status(), 403);
    for (token, expected) in [(None, 401), (Some("nope"), 403), (Some(TOKEN), 404)] {
        let mut req = s.client.delete(s.url("/api/tracks/12345"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("DELETE");
        // With the right token the request goes through, to a track that does not exist.
        assert_eq!(res.status(), expected, "DELETE with token {token:?}");
    }
    assert!(s.uploads().is_empty(), "{:?}", s.uploads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_beyond_the_concurrency_limit_is_503_with_retry_after() {
    let s = TestServer::start(|c| c.max_concurrent_identify = 1).await;
    // The first identify takes the only slot and waits for the rest of its body.
    let held = hold_open_request(s.addr, "/api/identify", 50_000, &[0u8; 100]).await;
    s.wait_status("the held identify to take its slot", |st| {
        st["identify"]["in_flight"] == 1
    })
    .await;

    let second = s.identify("q.wav", synthetic_wav(3, 3.0)).await;
    assert_eq!(second.status(), 503);
    let retry: u32 = second
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    // Waveforms decode too, so they share the bound.
    let wave = s
        .client
        .get(s.url("/api/tracks/1/waveform"))
        .send()
        .await
        .expect("GET");
    assert!(
        wave.status() == 503 || wave.status() == 404,
        "{}",
        wave.status()
    );

    // The client goes away: the slot is given back, and identify works again.
    drop(held);
    s.wait_status("the slot to be released", |st| {
        st["identify"]["in_flight"] == 0
    })
    .await;
    let third = s.identify("q.wav", synthetic_wav(3, 3.0)).await;
    assert_eq!(third.status(), 200, "{:?}", third.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_times_out_with_408_and_frees_its_slot() {
    let s = TestServer::start(|c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_concurrent_identify = 1;
    })
    .await;
    let mut held = hold_open_request(s.addr, "/api/identify", 50_000, &[0u8; 100]).await;
    let status = read_status_line(&mut held).await;
    assert!(status.contains(" 408 "), "answer: {status:?}");
    s.wait_status("the slot to be released", |st| {
        st["identify"]["in_flight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_file_names_never_reach_the_file_system() {
    let s = TestServer::start(|_| {}).await;
    let wav = synthetic_wav(4, 6.0);
    let job = s.upload(&[("../../x.wav", wav.clone())]).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"][0]["outcome"], "added", "{job}");
    assert_eq!(job["result"][0]["label"], "x.wav", "{job}");

    // Raw body with a hostile ?name=.
    let raw = s
        .client
        .post(s.url("/api/tracks?name=..%2F..%2F..%2Fy.wav"))
        .bearer_auth(TOKEN)
        .body(synthetic_wav(5, 6.0))
        .send()
        .await
        .expect("POST");
    assert_eq!(raw.status(), 202);
    let id = raw.json::<serde_json::Value>().await.expect("JSON")["id"]
        .as_u64()
        .expect("job id");
    let seen = s.wait_job(id).await;
    assert_eq!(seen.last().expect("a state")["state"], "done");

    // Stored under content hashes only; nothing named by the client anywhere near.
    let stored = s.uploads();
    let audio: Vec<&String> = stored.iter().filter(|n| *n != "labels.json").collect();
    assert_eq!(audio.len(), 2, "{stored:?}");
    for name in &audio {
        let (hash, ext) = name.split_once('.').expect("an extension");
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(ext, "wav");
    }
    for dir in [s.dir.path().to_path_buf(), s.upload_dir.clone()] {
        for name in ["x.wav", "y.wav"] {
            assert!(
                !dir.join(name).exists(),
                "{} exists",
                dir.join(name).display()
            );
        }
    }
    if let Some(parent) = s.dir.path().parent() {
        assert!(
            !files_in(parent)
                .iter()
                .any(|n| n == "x.wav" || n == "y.wav")
        );
    }
    let tracks = s.get_json("/api/tracks").await;
    let labels: Vec<&str> = tracks["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .map(|t| t["uploaded_as"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(labels, ["x.wav", "y.wav"]);

    // Ids in paths are numbers, never file names.
    for path in [
        "/api/tracks/..%2F..%2Fetc%2Fpasswd/audio",
        "/api/tracks/%2Fetc%2Fpasswd/audio",
        "/api/tracks/1.0/waveform",
    ] {
        let res = s.client.get(s.url(path)).send().await.expect("GET");
        assert_eq!(res.status(), 400, "{path}");
    }
}
