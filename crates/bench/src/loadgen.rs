//! The load generator behind `cratedigger-bench load`: starts `cratedigger serve` on a
//! loopback port, fires a fixed number of identify requests at a fixed concurrency for a
//! bounded time, and counts the answers, with a plain HTTP/1.1 client over `TcpStream`.
//!
//! Only the standard library: the CLI's integration tests compile this file too (by path),
//! so that the load test and the server crash test drive the server with this same code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest answer read; identify answers are tens of KB (the query's waveform).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a body is sent: whole, or in chunks with a pause after each (a slow client).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub chunk_bytes: usize,
    pub pause: Duration,
}

/// One request on its own connection (`Connection: close`), read to the end; `timeout`
/// bounds every read and write.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    pace: Option<Pace>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    match pace {
        None => stream.write_all(body)?,
        Some(pace) => {
            for chunk in body.chunks(pace.chunk_bytes.max(1)) {
                stream.write_all(chunk)?;
                std::thread::sleep(pace.pause);
            }
        }
    }
    stream.flush()?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// Parses a whole HTTP/1.1 answer (length-delimited, chunked, or until close).
fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no complete answer head in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("a cut-off chunk size"))?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or_else(|| invalid("a cut-off chunk"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// A `cratedigger serve` process on a free loopback port; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Runs `BIN --db DB serve --bind 127.0.0.1:0 ARGS...` and waits (at most `wait`) for
    /// the line saying where it listens.
    pub fn start(
        bin: &Path,
        db: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        wait: Duration,
    ) -> std::io::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("--db")
            .arg(db)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("CRATEDIGGER_DB")
            .env_remove("CRATEDIGGER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| invalid("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading, so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(wait) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                return Err(invalid(format!(
                    "the server did not say where it listens within {wait:?} ({status})"
                )));
            }
        };
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| invalid(format!("no address in the server's line {line:?}")))?;
        Ok(Self { child, addr })
    }

    /// SIGKILL, then reap; true if the server was still running.
    pub fn kill(&mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        let _ = self.child.kill();
        let _ = self.child.wait();
        running
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How much load to make.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// Requests to send in all.
    pub requests: usize,
    /// Requests in flight at once (one client thread each).
    pub concurrency: usize,
    /// No request is started after this long.
    pub max_duration: Duration,
    /// Bound on each read and write of one request.
    pub timeout: Duration,
    /// After a 503, wait this long and send the same song again (each 503 still counts
    /// as an answer, but not as one of `requests`); None moves on to the next request.
    pub retry_503_after: Option<Duration>,
}

/// What came back.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub sent: usize,
    /// Answers by kind: `200`, `503` (with Retry-After), `503 without Retry-After`,
    /// any other status, or `transport error`.
    pub counts: BTreeMap<String, usize>,
    /// Seconds from connecting to the last byte, of each 200.
    pub ok_latencies_s: Vec<f64>,
    /// Seconds from the first attempt to the 200, retries after 503 included.
    pub ok_end_to_end_s: Vec<f64>,
    /// Seconds from the first request to the last answer.
    pub wall_s: f64,
    /// The first few answers that were neither 200 nor 503 with Retry-After.
    pub unexpected: Vec<String>,
}

impl LoadReport {
    pub fn count(&self, kind: &str) -> usize {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// Answers that were neither 200 nor 503 with Retry-After.
    pub fn n_unexpected(&self) -> usize {
        self.sent - self.count("200") - self.count("503")
    }

    /// Nearest-rank percentile of the 200s' latencies, in seconds.
    pub fn ok_latency_s(&self, p: f64) -> Option<f64> {
        percentile(&self.ok_latencies_s, p)
    }

    /// Nearest-rank percentile of the 200s' latencies with retries, in seconds.
    pub fn ok_end_to_end_s(&self, p: f64) -> Option<f64> {
        percentile(&self.ok_end_to_end_s, p)
    }

    /// 200s per second of wall time.
    pub fn ok_per_s(&self) -> f64 {
        self.count("200") as f64 / self.wall_s.max(1e-9)
    }
}

/// Nearest-rank percentile (p in [0, 100]); None when empty.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Sends `plan.requests` identify requests, cycling through `queries` (name, bytes), raw
/// bodies with `?name=`, from `plan.concurrency` threads.
pub fn run_load(addr: SocketAddr, queries: &[(String, Vec<u8>)], plan: &LoadPlan) -> LoadReport {
    let next = AtomicUsize::new(0);
    let report = Mutex::new(LoadReport::default());
    let started = Instant::now();
    if queries.is_empty() {
        return LoadReport::default();
    }
    std::thread::scope(|scope| {
        for _ in 0..plan.concurrency.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.requests || started.elapsed() >= plan.max_duration {
                        return;
                    }
                    let (name, bytes) = &queries[i % queries.len()];
                    let first_sent_at = Instant::now();
                    loop {
                        let sent_at = Instant::now();
                        let answer = request(
                            addr,
                            "POST",
                            &format!("/api/identify?name={}", encode_query_value(name)),
                            &[("Content-Type", "application/octet-stream")],
                            bytes,
                            None,
                            plan.timeout,
                        );
                        let latency_s = sent_at.elapsed().as_secs_f64();
                        let (kind, detail) = match &answer {
                            Ok(r) if r.status == 200 => ("200".to_string(), None),
                            Ok(r) if r.status == 503 && r.header("retry-after").is_some() => {
                                ("503".to_string(), None)
                            }
                            Ok(r) if r.status == 503 => (
                                "503 without Retry-After".to_string(),
                                Some(format!("{name}: 503 {}", r.text())),
                            ),
                            Ok(r) => (
                                r.status.to_string(),
                                Some(format!("{name}: {} {}", r.status, r.text())),
                            ),
                            Err(e) => ("transport error".to_string(), Some(format!("{name}: {e}"))),
                        };
                        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                        r.sent += 1;
                        *r.counts.entry(kind.clone()).or_insert(0) += 1;
                        if kind == "200" {
                            r.ok_latencies_s.push(latency_s);
                            r.ok_end_to_end_s
                                .push(first_sent_at.elapsed().as_secs_f64());
                        }
                        if let Some(d) = detail.filter(|_| r.unexpected.len() < 10) {
                            r.unexpected.push(d);
                        }
                        drop(r);
                        match plan.retry_503_after {
                            Some(wait)
                                if kind == "503" && started.elapsed() < plan.max_duration =>
                            {
                                std::thread::sleep(wait);
                            }
                            _ => break,
                        }
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_else(|p| p.into_inner());
    report.wall_s = started.elapsed().as_secs_f64();
    report
}

/// Percent-encodes a query parameter value (every byte but unreserved ones).
fn encode_query_value(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_with_a_length_or_chunked() {
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\ncontent-length: 2\r\n\r\n{}",
        )
        .expect("parse");
        assert_eq!(
            (r.status, r.header("retry-after"), r.text().as_str()),
            (503, Some("5"), "{}")
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .expect("parse");
        assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
    }

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let report = LoadReport {
            ok_latencies_s: (1..=100).map(f64::from).collect(),
            ..LoadReport::default()
        };
        assert_eq!(report.ok_latency_s(50.0), Some(50.0));
        assert_eq!(report.ok_latency_s(99.0), Some(99.0));
        assert_eq!(report.ok_latency_s(100.0), Some(100.0));
        assert_eq!(encode_query_value("a b/é.mp3"), "a%20b%2F%C3%A9.mp3");
    }
}
