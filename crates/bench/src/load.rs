//! `load`: a bounded load test of the HTTP server. Starts `cratedigger serve` on a
//! loopback port over a store (indexing the first references of OUT/refs.txt first when
//! the store does not exist), sends a fixed number of identify requests with real query
//! songs at a fixed concurrency for at most a fixed time, and reports the answers by
//! status, the latency percentiles of the 200s and the throughput. Fails when any answer
//! is neither 200 nor 503 with `Retry-After`, or when the server no longer answers after.

use crate::loadgen::{LoadPlan, LoadReport, ServerProcess, request, run_load};
use crate::util::{cmd_line, file_name, nproc, run, write_json};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct LoadArgs {
    pub bin: PathBuf,
    pub db: PathBuf,
    /// Folder of query songs (default OUT/queries).
    pub queries: Option<PathBuf>,
    pub out: Option<PathBuf>,
    /// References indexed when the store does not exist yet.
    pub refs: usize,
    pub requests: usize,
    pub concurrency: usize,
    pub max_concurrent_identify: usize,
    pub max_seconds: f64,
    /// After a 503, wait this many ms and send the song again (0: move on).
    pub retry_ms: u64,
    /// Where to write the report as JSON.
    pub json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    requests: usize,
    concurrency: usize,
    max_concurrent_identify: usize,
    n_tracks: u64,
    audio_h: f64,
    distinct_queries: usize,
    cores: usize,
    load_average_before: String,
    sent: usize,
    counts: std::collections::BTreeMap<String, usize>,
    wall_s: f64,
    ok_per_s: f64,
    ok_p50_s: Option<f64>,
    ok_p90_s: Option<f64>,
    ok_p99_s: Option<f64>,
    ok_max_s: Option<f64>,
    retry_ms: u64,
    /// With retries after 503: from a song's first attempt to its 200.
    end_to_end_p50_s: Option<f64>,
    end_to_end_p90_s: Option<f64>,
    end_to_end_max_s: Option<f64>,
    unexpected: Vec<String>,
}

pub fn run_load_test(a: &LoadArgs) -> Result<()> {
    if !a.db.join("data.mdb").exists() {
        index_refs(a)?;
    }
    let stats = run(Command::new(&a.bin)
        .arg("--db")
        .arg(&a.db)
        .args(["stats", "--json"]))?;
    let stats: serde_json::Value =
        serde_json::from_slice(&stats.stdout).context("stats --json is not JSON")?;
    let n_tracks = stats["tracks"].as_u64().unwrap_or(0);
    let audio_h = stats["audio_hours"].as_f64().unwrap_or(0.0);

    let dir = match (&a.queries, &a.out) {
        (Some(q), _) => q.clone(),
        (None, Some(out)) => out.join("queries"),
        (None, None) => bail!("say where the query songs are: --queries DIR or --out OUT"),
    };
    let queries = read_queries(&dir, a.requests)?;
    let load_average_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    eprintln!(
        "load: {} requests ({} distinct queries), {} at a time, identify limit {}, over {} \
         tracks ({audio_h:.2} h); {} cores, load average {load_average_before}",
        a.requests,
        queries.len(),
        a.concurrency,
        a.max_concurrent_identify,
        n_tracks,
        nproc()
    );

    let limit = a.max_concurrent_identify.to_string();
    let server = ServerProcess::start(
        &a.bin,
        &a.db,
        &["--max-concurrent-identify", &limit],
        &[],
        Duration::from_secs(120),
    )
    .context("start cratedigger serve")?;
    let plan = LoadPlan {
        requests: a.requests,
        concurrency: a.concurrency,
        max_duration: Duration::from_secs_f64(a.max_seconds),
        timeout: Duration::from_secs(300),
        retry_503_after: (a.retry_ms > 0).then(|| Duration::from_millis(a.retry_ms)),
    };
    let result = run_load(server.addr, &queries, &plan);
    let after = request(
        server.addr,
        "GET",
        "/api/status",
        &[],
        &[],
        None,
        Duration::from_secs(30),
    );
    drop(server);

    let report = report(
        a,
        n_tracks,
        audio_h,
        queries.len(),
        load_average_before,
        &result,
    );
    print_report(&report);
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    match after {
        Ok(r) if r.status == 200 => {}
        Ok(r) => bail!(
            "after the load, /api/status answered {}: {}",
            r.status,
            r.text()
        ),
        Err(e) => bail!("after the load, /api/status did not answer: {e}"),
    }
    if result.n_unexpected() > 0 {
        bail!(
            "{} answers were neither 200 nor 503 with Retry-After",
            result.n_unexpected()
        );
    }
    Ok(())
}

/// Indexes the first `refs` references of OUT/refs.txt into the (new) store.
fn index_refs(a: &LoadArgs) -> Result<()> {
    let Some(out) = &a.out else {
        bail!(
            "{} holds no store; give --out OUT to index the first --refs references of \
             OUT/refs.txt into it",
            a.db.display()
        );
    };
    let refs: Vec<String> = std::fs::read_to_string(out.join("refs.txt"))
        .context("read refs.txt (run `corpus` first)")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(a.refs)
        .map(String::from)
        .collect();
    let mut cmd = Command::new(&a.bin);
    cmd.arg("--db").arg(&a.db).args(["index", "-q"]).args(&refs);
    eprintln!(
        "load: indexing {} references: {}",
        refs.len(),
        cmd_line(&cmd)
    );
    run(&mut cmd)?;
    Ok(())
}

/// The first `n` songs of `dir` (sorted by name), as (file name, bytes).
fn read_queries(dir: &Path, n: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read the query folder {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "mp3" | "flac" | "wav" | "ogg" | "m4a"))
        })
        .collect();
    paths.sort();
    paths.truncate(n.max(1));
    if paths.is_empty() {
        bail!(
            "no query songs (mp3, flac, wav, ogg, m4a) in {}",
            dir.display()
        );
    }
    paths
        .into_iter()
        .map(|p| {
            let name = file_name(&p);
            let bytes = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
            Ok((name, bytes))
        })
        .collect()
}

fn report(
    a: &LoadArgs,
    n_tracks: u64,
    audio_h: f64,
    distinct_queries: usize,
    load_average_before: String,
    r: &LoadReport,
) -> Report {
    Report {
        requests: a.requests,
        concurrency: a.concurrency,
        max_concurrent_identify: a.max_concurrent_identify,
        n_tracks,
        audio_h,
        distinct_queries,
        cores: nproc(),
        load_average_before,
        sent: r.sent,
        counts: r.counts.clone(),
        wall_s: r.wall_s,
        ok_per_s: r.ok_per_s(),
        ok_p50_s: r.ok_latency_s(50.0),
        ok_p90_s: r.ok_latency_s(90.0),
        ok_p99_s: r.ok_latency_s(99.0),
        ok_max_s: r.ok_latency_s(100.0),
        retry_ms: a.retry_ms,
        end_to_end_p50_s: r.ok_end_to_end_s(50.0),
        end_to_end_p90_s: r.ok_end_to_end_s(90.0),
        end_to_end_max_s: r.ok_end_to_end_s(100.0),
        unexpected: r.unexpected.clone(),
    }
}

fn print_report(r: &Report) {
    let s = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.2} s"));
    println!(
        "{} identify requests sent in {:.1} s ({} at a time, identify limit {}):",
        r.sent, r.wall_s, r.concurrency, r.max_concurrent_identify
    );
    for (kind, n) in &r.counts {
        println!("  {kind:>24}: {n}");
    }
    println!(
        "200s: {:.2}/s; latency p50 {}, p90 {}, p99 {}, max {}",
        r.ok_per_s,
        s(r.ok_p50_s),
        s(r.ok_p90_s),
        s(r.ok_p99_s),
        s(r.ok_max_s)
    );
    if r.retry_ms > 0 {
        println!(
            "with retries {} ms after a 503, first attempt to 200: p50 {}, p90 {}, max {}",
            r.retry_ms,
            s(r.end_to_end_p50_s),
            s(r.end_to_end_p90_s),
            s(r.end_to_end_max_s)
        );
    }
    for u in &r.unexpected {
        println!("  unexpected: {u}");
    }
}
