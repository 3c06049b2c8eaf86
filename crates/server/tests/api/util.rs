//! The harness: a server on a free loopback port over a temporary store, synthetic audio,
//! and raw HTTP for what a polite client never does (hold a body open, stream past limits).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::Engine;
use server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The token of servers that accept writes.
pub const TOKEN: &str = "test-token";

/// A running server and its folder (store and uploads); stopped when dropped.
pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub upload_dir: PathBuf,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// A server over an empty store, with the token and `change` applied to the defaults.
    pub async fn start(change: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with(|_| {}, change).await
    }

    /// Like [`TestServer::start`], with `fill` given the engine before the server starts.
    pub async fn start_with(
        fill: impl FnOnce(&Engine),
        change: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cratedigger-server-test-")
            .tempdir()
            .expect("temp dir");
        Self::start_in(dir, fill, change).await
    }

    /// Like [`TestServer::start_with`], in a folder the test prepared (`db/`, `uploads/`).
    pub async fn start_in(
        dir: tempfile::TempDir,
        fill: impl FnOnce(&Engine),
        change: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).expect("create store folder");
        let engine = Engine::open(&db).expect("open store");
        fill(&engine);
        let upload_dir = dir.path().join("uploads");
        let mut config = ServerConfig::new(upload_dir.clone());
        config.bind = "127.0.0.1:0".parse().expect("address");
        config.token = Some(TOKEN.to_string());
        change(&mut config);
        let server = Server::bind(config, engine).await.expect("bind");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            addr,
            dir,
            upload_dir,
            client: reqwest::Client::new(),
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let res = self.client.get(self.url(path)).send().await.expect("GET");
        let status = res.status();
        let body: serde_json::Value = res.json().await.expect("JSON body");
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// Polls `/api/status` until `check` holds (at most 10 s).
    pub async fn wait_status(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let started = Instant::now();
        loop {
            let status = self.get_json("/api/status").await;
            if check(&status) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "waited 10 s for {what}; status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls a job until it finishes (at most 120 s); returns every state seen, the last
    /// one finished.
    pub async fn wait_job(&self, id: u64) -> Vec<serde_json::Value> {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let job = self.get_json(&format!("/api/jobs/{id}")).await;
            let state = job["state"].as_str().unwrap_or_default().to_string();
            seen.push(job);
            if state == "done" || state == "failed" {
                return seen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "job {id} unfinished after 120 s: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Uploads files as multipart fields `file` with the token; returns the finished job.
    pub async fn upload(&self, files: &[(&str, Vec<u8>)]) -> serde_json::Value {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            );
        }
        let res = self
            .client
            .post(self.url("/api/tracks"))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("POST /api/tracks");
        assert_eq!(res.status(), 202, "{:?}", res.text().await);
        let job: serde_json::Value = res.json().await.expect("job JSON");
        let id = job["id"].as_u64().expect("job id");
        let seen = self.wait_job(id).await;
        seen.last().cloned().expect("a job state")
    }

    /// Identifies `bytes` sent as the multipart field `file` named `name`.
    pub async fn identify(&self, name: &str, bytes: Vec<u8>) -> reqwest::Response {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
        self.client
            .post(self.url("/api/identify"))
            .multipart(form)
            .send()
            .await
            .expect("POST /api/identify")
    }

    /// The files in the upload folder, sorted.
    pub fn uploads(&self) -> Vec<String> {
        files_in(&self.upload_dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Opens a connection and sends a request head (and `body_start`), leaving the body
/// unfinished: the server's handler runs and waits for the rest.
pub async fn hold_open_request(
    addr: std::net::SocketAddr,
    path: &str,
    content_length: usize,
    body_start: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body_start).await.expect("send body start");
    stream.flush().await.expect("flush");
    stream
}

/// Sends `body` chunked (no Content-Length) and returns the status line of the answer.
pub async fn send_chunked(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    // The server may answer and close before the whole body is sent; that is the point.
    for chunk in body.chunks(16 * 1024) {
        let framed = [
            format!("{:x}\r\n", chunk.len()).as_bytes(),
            chunk,
            b"\r\n".as_slice(),
        ]
        .concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    read_status_line(&mut stream).await
}

/// Reads an answer's status line, e.g. `HTTP/1.1 408 Request Timeout`.
pub async fn read_status_line(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.ends_with(b"\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// Reads the rest of an answer's head (after [`read_status_line`]), up to the blank line.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && !buf.starts_with(b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A 16-bit mono WAV file, 16 kHz, of `seconds` of synthetic music: a new chord of
/// three tones every 125 ms (frequencies from a seeded generator, so each seed is its own
/// song) over faint noise. Rich in spectral peaks, like real music, and reproducible.
pub fn synthetic_wav(seed: u64, seconds: f64) -> Vec<u8> {
    const RATE: u32 = 16_000;
    let n = (seconds * f64::from(RATE)) as usize;
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        // PCG-style LCG step; the top bits are random enough for test audio.
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / f64::from(1u32 << 31)
    };
    let note = (RATE / 8) as usize;
    let mut freqs = [0.0f64; 3];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        if i % note == 0 {
            for f in &mut freqs {
                // 150 Hz to 4.8 kHz, even on a log scale (the fingerprint's axis).
                *f = 150.0 * 32f64.powf(next());
            }
        }
        let t = i as f64 / f64::from(RATE);
        let within = (i % note) as f64 / note as f64;
        let envelope = (std::f64::consts::PI * within).sin();
        let tone: f64 = freqs
            .iter()
            .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
            .sum::<f64>()
            / 3.0;
        let noise = next() - 0.5;
        samples.push((0.6 * envelope * tone + 0.02 * noise).clamp(-1.0, 1.0));
    }
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&((s * 32767.0) as i16).to_le_bytes());
    }
    wav
}

/// `len_s` seconds of a [`synthetic_wav`] from `from_s`, as a WAV file of its own.
pub fn wav_excerpt(wav: &[u8], from_s: f64, len_s: f64) -> Vec<u8> {
    const HEADER: usize = 44;
    const BYTES_PER_S: f64 = 32_000.0;
    let from = HEADER + 2 * ((from_s * BYTES_PER_S / 2.0) as usize);
    let len = 2 * ((len_s * BYTES_PER_S / 2.0) as usize);
    let data = &wav[from..from + len];
    let mut out = wav[..HEADER].to_vec();
    out[4..8].copy_from_slice(&(36 + len as u32).to_le_bytes());
    out[40..44].copy_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// WAV files of [`synthetic_wav`]'s format played one after another, as one file.
pub fn wav_concat(parts: &[&[u8]]) -> Vec<u8> {
    const HEADER: usize = 44;
    let data: Vec<u8> = parts
        .iter()
        .flat_map(|p| p[HEADER..].iter().copied())
        .collect();
    let mut out = parts[0][..HEADER].to_vec();
    out[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}
