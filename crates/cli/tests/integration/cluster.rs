//! `--store redis://...`: several `cratedigger` processes against one Redis Cluster (three
//! masters on loopback ports, started for this test and stopped after it).

use std::path::Path;
use std::process::{Command, Stdio};

use index_redis::testcluster::TestCluster;

use crate::fixture::{Query, Sample, Transform, corpus};
use crate::util::{IndexCounts, Output, TestDir, store_path};

/// Runs `cratedigger --store URL ARGS...` with neither store variable set.
fn spawn(url: &str, args: &[&str], paths: &[&Path]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cratedigger"))
        .arg("--store")
        .arg(url)
        .args(args)
        .args(paths)
        .env_remove("CRATEDIGGER_DB")
        .env_remove("CRATEDIGGER_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the cratedigger binary")
}

fn finish(child: std::process::Child, command: &str) -> Output {
    let out = child.wait_with_output().expect("wait for cratedigger");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command: command.to_owned(),
    }
}

fn run(url: &str, args: &[&str], paths: &[&Path]) -> Output {
    finish(
        spawn(url, args, paths),
        &format!("cratedigger --store {url} {args:?}"),
    )
}

#[test]
fn two_indexers_on_one_cluster_lose_nothing_and_store_a_shared_file_once() {
    let Some(corpus) = corpus() else { return };
    let cluster = TestCluster::start(3, 0).expect("start a 3-master cluster");
    let url = cluster.url("prefix=cli&durable=0");
    let refs: Vec<&Path> = corpus.refs.iter().take(4).map(|p| p.as_path()).collect();
    // Both index refs[2] at the same time; each also has files of its own.
    let first = spawn(&url, &["index", "-q"], &[refs[0], refs[2], refs[1]]);
    let second = spawn(&url, &["index", "-q"], &[refs[2], refs[3]]);
    let first = finish(first, "first indexer");
    let second = finish(second, "second indexer");
    first.expect_code(0);
    second.expect_code(0);
    let (a, b) = (IndexCounts::parse(&first), IndexCounts::parse(&second));
    assert_eq!(a.new + b.new, 4, "{first:?}\n{second:?}");
    assert_eq!(a.unchanged + a.duplicates + b.unchanged + b.duplicates, 1);

    let list = run(&url, &["list", "--json"], &[]);
    list.expect_code(0);
    let tracks: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).expect("JSON list");
    let mut listed: Vec<String> = tracks
        .iter()
        .filter_map(|t| t["path"].as_str().map(str::to_owned))
        .collect();
    listed.sort();
    let mut want: Vec<String> = refs.iter().map(|p| store_path(p)).collect();
    want.sort();
    assert_eq!(listed, want);

    // A sample of a reference indexed by the first process, identified by a third one.
    let dir = TestDir::new();
    let query = corpus.make_query(
        &dir,
        &Query {
            sample: Some(Sample {
                reference: refs[1],
                from_s: 40.0,
                len_s: 8.0,
                times: 1,
                transform: Transform::Speed(0.9),
            }),
            drums: true,
            background: false,
        },
    );
    let found = run(&url, &["identify", "--json"], &[&query]);
    found.expect_code(0);
    let report: serde_json::Value = serde_json::from_str(found.stdout.trim()).expect("JSON");
    assert_eq!(
        report["matches"][0]["path"].as_str(),
        Some(store_path(refs[1]).as_str()),
        "{}",
        found.stdout
    );

    // Stats name the cluster without passwords and count what list shows.
    let stats = run(&url, &["stats", "--json"], &[]);
    stats.expect_code(0);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).expect("JSON stats");
    assert_eq!(stats["tracks"], 4);
    assert!(
        stats["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("redis://"))
    );
}

#[test]
fn a_store_url_must_be_redis_and_conflicts_with_db() {
    let dir = TestDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_cratedigger"))
        .args(["--store", "http://example", "stats"])
        .env_remove("CRATEDIGGER_STORE")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis://"));
    let out = Command::new(env!("CARGO_BIN_EXE_cratedigger"))
        .arg("--db")
        .arg(dir.db())
        .args(["--store", "redis://127.0.0.1:1", "stats"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "--db and --store together");
}

/// Sends one HTTP/1.1 GET to `addr` and returns the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send a request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

#[test]
fn serve_on_a_cluster_store_starts_and_answers() {
    use std::io::BufRead;
    let Some(corpus) = corpus() else { return };
    let cluster = TestCluster::start(3, 0).expect("start a 3-master cluster");
    let url = cluster.url("prefix=serve&durable=0");
    let dir = TestDir::new();
    run(&url, &["index", "-q"], &[corpus.refs[0].as_path()]).expect_code(0);

    // Without an upload folder the server says what it needs instead of guessing one.
    let refused = run(&url, &["serve", "--bind", "127.0.0.1:0"], &[]);
    refused.expect_code(2);
    assert!(refused.stderr.contains("--upload-dir"), "{refused:?}");

    // Startup reads the catalogue (to clear orphaned uploads) from inside the server's
    // runtime; the cluster store must be called from a blocking thread there.
    let uploads = dir.join("uploads");
    let mut server = spawn(
        &url,
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--upload-dir",
            &uploads.to_string_lossy(),
        ],
        &[],
    );
    let stdout = server.stdout.take().expect("server stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's first line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned);
    let Some(addr) = addr else {
        let _ = server.kill();
        let out = server.wait_with_output().expect("wait for the server");
        panic!(
            "serve did not start: {line:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let status = http_get(&addr, "/api/status");
    let tracks = http_get(&addr, "/api/tracks");
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(tracks.starts_with("HTTP/1.1 200"), "{tracks}");
    assert!(tracks.contains("\"total\":1"), "{tracks}");
    drop(cluster);
}
