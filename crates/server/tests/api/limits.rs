//! Safe by default: size limits, tokens, the bound on concurrent decoding, timeouts, and
//! no way for a request to name a file.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::util::{
    TOKEN, TestServer, files_in, hold_open_request, read_head, read_status_line, send_chunked,
    synthetic_wav,
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
    // The body was refused unread, so the server closes this connection and says so: a
    // client that reused it would lose its next request.
    assert_eq!(
        add.headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
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

/// The `Retry-After` of a 503, in seconds.
fn retry_after_s(res: &reqwest::Response) -> Option<u32> {
    res.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_beyond_the_concurrency_limit_is_503_with_retry_after() {
    let s = TestServer::start(|c| c.max_concurrent_identify = 1).await;
    // A minute of audio keeps its decode slot for tens of milliseconds at least; four such
    // bodies are sent but their last byte, then the last bytes go out together: the first
    // to arrive takes the only slot and the others, microseconds later, find it taken.
    let song = synthetic_wav(3, 60.0);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            hold_open_request(s.addr, "/api/identify", song.len(), &song[..song.len() - 1]).await,
        );
    }
    let buffered = 4 * (song.len() - 1);
    s.wait_status("the four bodies to be received", |st| {
        st["identify"]["buffered_bytes"] == buffered
    })
    .await;
    for stream in &mut held {
        stream
            .write_all(&song[song.len() - 1..])
            .await
            .expect("send the last byte");
    }
    let mut statuses = Vec::new();
    for stream in &mut held {
        statuses.push(read_status_line(stream).await);
    }
    for (stream, line) in held.iter_mut().zip(&statuses) {
        if line.contains(" 503 ") {
            let head = read_head(stream).await.to_ascii_lowercase();
            assert!(
                head.contains("\r\nretry-after: "),
                "a 503 without Retry-After: {head}"
            );
        }
    }
    let ok = statuses.iter().filter(|l| l.contains(" 200 ")).count();
    let busy = statuses.iter().filter(|l| l.contains(" 503 ")).count();
    assert!(
        ok >= 1 && busy >= 1 && ok + busy == 4,
        "answers: {statuses:?}"
    );

    // Every slot and byte is given back, and identify works again.
    s.wait_status("the slot and the bytes to be given back", |st| {
        st["identify"]["in_flight"] == 0 && st["identify"]["buffered_bytes"] == 0
    })
    .await;
    let again = s.identify("q.wav", synthetic_wav(3, 3.0)).await;
    assert_eq!(again.status(), 200, "{:?}", again.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_beyond_the_memory_for_bodies_is_503_with_retry_after() {
    // One slot: room in memory for one full-size body (and multipart framing), no more.
    let s = TestServer::start(|c| {
        c.max_concurrent_identify = 1;
        c.max_upload_bytes = LIMIT_BYTES;
    })
    .await;
    let sent = 99_000;
    let held = hold_open_request(
        s.addr,
        "/api/identify",
        LIMIT_BYTES as usize,
        &vec![0u8; sent],
    )
    .await;
    s.wait_status("the held body to be received", |st| {
        st["identify"]["buffered_bytes"] == sent
    })
    .await;
    let second = s.identify("q.wav", synthetic_wav(3, 2.5)).await;
    assert_eq!(second.status(), 503);
    assert!(
        retry_after_s(&second).is_some_and(|r| r >= 1),
        "{:?}",
        second.headers()
    );
    let body: serde_json::Value = second.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("memory"),
        "{body}"
    );

    // The client goes away: its bytes are given back, and identify works again.
    drop(held);
    s.wait_status("the bytes to be given back", |st| {
        st["identify"]["buffered_bytes"] == 0
    })
    .await;
    let third = s.identify("q.wav", synthetic_wav(3, 2.5)).await;
    assert_eq!(third.status(), 200, "{:?}", third.text().await);
}

/// Regression: identify took its decode slot before reading the body, so as many clients
/// as slots, each sending a body slowly, kept every other identify at 503 until the
/// request timeout (5 minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_hold_no_decode_slot_and_identify_still_answers() {
    let s = TestServer::start(|c| c.max_concurrent_identify = 1).await;
    let mut slow = Vec::new();
    // Bodies stalled after 100 bytes, to identify and to upload.
    for _ in 0..4 {
        slow.push(hold_open_request(s.addr, "/api/identify", 50_000, &[0u8; 100]).await);
    }
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(s.addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /api/tracks HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 50000\r\n\r\n",
            s.addr
        );
        stream.write_all(head.as_bytes()).await.expect("send head");
        stream
            .write_all(&[0u8; 100])
            .await
            .expect("send body start");
        slow.push(stream);
    }
    // Requests whose headers never end.
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(s.addr)
            .await
            .expect("connect");
        stream
            .write_all(b"POST /api/identify HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await
            .expect("send half a head");
        slow.push(stream);
    }
    s.wait_status("the stalled identify bodies to be received", |st| {
        st["identify"]["buffered_bytes"] == 400
    })
    .await;
    assert_eq!(s.get_json("/api/status").await["identify"]["in_flight"], 0);

    let query = synthetic_wav(3, 3.0);
    for _ in 0..3 {
        let res = tokio::time::timeout(Duration::from_secs(30), s.identify("q.wav", query.clone()))
            .await
            .expect("identify answered within 30 s while slow clients are connected");
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
    }
    drop(slow);
    s.wait_status("the stalled bodies to be given back", |st| {
        st["identify"]["buffered_bytes"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_times_out_with_408_and_frees_its_memory() {
    let s = TestServer::start(|c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_concurrent_identify = 1;
    })
    .await;
    let mut held = hold_open_request(s.addr, "/api/identify", 50_000, &[0u8; 100]).await;
    let status = read_status_line(&mut held).await;
    assert!(status.contains(" 408 "), "answer: {status:?}");
    s.wait_status("the bytes to be given back", |st| {
        st["identify"]["in_flight"] == 0 && st["identify"]["buffered_bytes"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crash_left_in_the_upload_folder_is_removed_at_startup() {
    let dir = tempfile::Builder::new()
        .prefix("cratedigger-server-test-")
        .tempdir()
        .expect("temp dir");
    let uploads = dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).expect("create the upload folder");
    let hex = |c: char| c.to_string().repeat(64);
    // An indexed upload, an upload stored but never indexed (killed before its job
    // committed), uploads cut off while being received, a labels file being rewritten,
    // and a file that is none of the server's.
    let indexed = format!("{}.wav", hex('a'));
    let orphan = format!("{}.wav", hex('b'));
    std::fs::write(uploads.join(&indexed), synthetic_wav(30, 4.0)).expect("write");
    std::fs::write(uploads.join(&orphan), synthetic_wav(31, 4.0)).expect("write");
    std::fs::write(uploads.join(".incoming-x1Yz"), [1u8; 1000]).expect("write");
    std::fs::write(uploads.join(".labels-Q2w"), b"{").expect("write");
    std::fs::write(uploads.join("notes.txt"), b"mine").expect("write");
    let labels = serde_json::json!({ &indexed: "kept.wav", &orphan: "lost.wav" });
    std::fs::write(uploads.join("labels.json"), labels.to_string()).expect("write");

    let indexed_path = std::fs::canonicalize(uploads.join(&indexed)).expect("canonical");
    let s = TestServer::start_in(
        dir,
        |engine| {
            let summary = engine
                .index_paths(std::slice::from_ref(&indexed_path), &mut |_| {})
                .expect("index");
            assert_eq!(summary.added, 1, "{summary:?}");
        },
        |_| {},
    )
    .await;
    assert_eq!(s.uploads(), [indexed.as_str(), "labels.json", "notes.txt"]);
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.upload_dir.join("labels.json")).expect("read"))
            .expect("JSON");
    assert_eq!(labels, serde_json::json!({ &indexed: "kept.wav" }));
    let tracks = s.get_json("/api/tracks").await;
    assert_eq!(tracks["tracks"][0]["uploaded_as"], "kept.wav", "{tracks}");
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
