//! `stores`: the same references indexed and the same queries identified against the LMDB
//! store and a Redis Cluster store in one run, through the CLI, with the cost of each and
//! whether their answers agree.
//!
//! Without `--store`, a throwaway 3-master cluster is started on loopback ports (and
//! stopped at the end); cluster memory is `used_memory` summed over its masters, after
//! indexing minus before.

use crate::types::TruthQuery;
use crate::util::{children_cpu, cmd_line, median, percentile, probe_duration, read_json, run};
use anyhow::{Context, Result, bail};
use index_redis::testcluster::TestCluster;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct StoresArgs {
    pub bin: PathBuf,
    pub out: PathBuf,
    /// How many references (the first of refs.txt) to index.
    pub refs: usize,
    /// How many queries (the first of truth.json) to identify.
    pub queries: usize,
    /// An existing cluster to use instead of starting one.
    pub store: Option<String>,
}

/// What one backend cost, and what it answered.
#[derive(Debug, serde::Serialize)]
struct BackendRun {
    name: String,
    index_wall_s: f64,
    index_cpu_s: f64,
    /// Bytes the store takes: the LMDB folder, or the cluster's used_memory growth.
    store_bytes: Option<u64>,
    postings: u64,
    keys: u64,
    identify_wall_s: f64,
    lookup_median_s: f64,
    lookup_p90_s: f64,
    /// Per query, the (track path, start) of every match, for agreement checks.
    #[serde(skip)]
    answers: Vec<Vec<String>>,
}

#[derive(Debug, serde::Serialize)]
struct StoresReport {
    refs: usize,
    audio_h: f64,
    queries: usize,
    load_average: String,
    agreeing_queries: usize,
    disagreements: Vec<String>,
    backends: Vec<BackendRun>,
}

pub fn run_stores(a: &StoresArgs) -> Result<()> {
    let refs: Vec<String> = std::fs::read_to_string(a.out.join("refs.txt"))
        .context("read refs.txt (run `corpus` first)")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(a.refs)
        .map(String::from)
        .collect();
    let truth: Vec<TruthQuery> =
        read_json(&a.out.join("truth.json")).context("run `queries` first")?;
    // Queries that sample an indexed reference first, so the answers have something to
    // agree on; then the others (no sample, or of references not indexed here).
    let (mut queries, others): (Vec<TruthQuery>, Vec<TruthQuery>) = truth
        .into_iter()
        .partition(|q| q.samples.iter().any(|s| refs.contains(&s.ref_path)));
    queries.extend(others);
    let queries: Vec<String> = queries
        .into_iter()
        .take(a.queries)
        .map(|q| q.query)
        .collect();
    if refs.is_empty() || queries.is_empty() {
        bail!("no references or no queries to run");
    }
    let mut audio_s = 0.0;
    for r in &refs {
        audio_s += probe_duration(Path::new(r))?;
    }
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "stores: {} references ({:.2} h), {} queries; load average {}",
        refs.len(),
        audio_s / 3600.0,
        queries.len(),
        load_average.trim()
    );

    let work = a.out.join("stores");
    let lmdb_dir = work.join("lmdb");
    let _ = std::fs::remove_dir_all(&lmdb_dir);
    std::fs::create_dir_all(&work)?;
    let lmdb = run_backend(
        &a.bin,
        "LMDB",
        &["--db".into(), lmdb_dir.display().to_string()],
        &refs,
        &queries,
        &|| Ok(Some(dir_bytes(&lmdb_dir))),
    )?;

    let started_cluster;
    let (url, cluster) = match &a.store {
        Some(url) => (url.clone(), None),
        None => {
            started_cluster = TestCluster::start(3, 0).context("start a 3-master cluster")?;
            (
                started_cluster.url("prefix=bench&durable=0"),
                Some(&started_cluster),
            )
        }
    };
    let redis = run_backend(
        &a.bin,
        "Redis Cluster (3 masters)",
        &["--store".into(), url.clone()],
        &refs,
        &queries,
        &|| match cluster {
            Some(c) => Ok(Some(c.used_memory_bytes()?)),
            None => Ok(Some(used_memory_of_url(&url)?)),
        },
    )?;

    let mut disagreements = Vec::new();
    for ((query, l), r) in queries.iter().zip(&lmdb.answers).zip(&redis.answers) {
        if l != r {
            disagreements.push(format!("{query}: LMDB {l:?}, cluster {r:?}"));
        }
    }
    let agreeing_queries = queries.len() - disagreements.len();
    let report = StoresReport {
        refs: refs.len(),
        audio_h: audio_s / 3600.0,
        queries: queries.len(),
        load_average: load_average.trim().to_owned(),
        agreeing_queries,
        disagreements,
        backends: vec![lmdb, redis],
    };
    crate::util::write_json(&work.join("report.json"), &report)?;
    print_report(&report);
    Ok(())
}

/// Indexes `refs` and identifies `queries` with the CLI and `store_args`; the store's size
/// is what `store_bytes` reads after indexing minus what it read before.
fn run_backend(
    bin: &Path,
    name: &str,
    store_args: &[String],
    refs: &[String],
    queries: &[String],
    store_bytes: &dyn Fn() -> Result<Option<u64>>,
) -> Result<BackendRun> {
    let before = store_bytes()?;
    let mut cmd = Command::new(bin);
    cmd.args(store_args).args(["index", "-q"]).args(refs);
    eprintln!("stores: {name}: indexing");
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let out = run(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    let index_wall_s = t0.elapsed().as_secs_f64();
    let index_cpu_s = (children_cpu() - cpu0).as_secs_f64();
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd_line(&cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store_bytes = store_bytes()?.map(|after| after.saturating_sub(before.unwrap_or(0)));

    let stats = run(Command::new(bin).args(store_args).args(["stats", "--json"]))?;
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout)?;
    let postings = stats["postings"].as_u64().unwrap_or(0);
    let keys = stats["keys"].as_u64().unwrap_or(0);

    eprintln!("stores: {name}: identifying {} queries", queries.len());
    let mut cmd = Command::new(bin);
    cmd.args(store_args)
        .args(["identify", "--json"])
        .args(queries);
    let t0 = Instant::now();
    let out = run(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    let identify_wall_s = t0.elapsed().as_secs_f64();
    let mut lookups = Vec::new();
    let mut answers = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        lookups.push(v["timings"]["lookup_s"].as_f64().unwrap_or(f64::NAN));
        answers.push(
            v["matches"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            // Rounded: float sums may differ in the last bits between runs.
                            let start = m["query_start_s"].as_f64().unwrap_or(f64::NAN);
                            format!("{} @{start:.2}", m["path"])
                        })
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    if answers.len() != queries.len() {
        bail!(
            "`{}` answered {} of {} queries: {}",
            cmd_line(&cmd),
            answers.len(),
            queries.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(BackendRun {
        name: name.to_owned(),
        index_wall_s,
        index_cpu_s,
        store_bytes,
        postings,
        keys,
        identify_wall_s,
        lookup_median_s: median(&lookups).unwrap_or(f64::NAN),
        lookup_p90_s: percentile(&lookups, 90.0).unwrap_or(f64::NAN),
        answers,
    })
}

/// `used_memory` summed over the masters among the nodes a store URL names (so name every
/// master to measure a whole cluster).
fn used_memory_of_url(url: &str) -> Result<u64> {
    let hosts = url
        .trim_start_matches("redis://")
        .split(['?', '/'])
        .next()
        .unwrap_or_default();
    let mut total = 0;
    for host in hosts.split(',') {
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let (name, port) = host.rsplit_once(':').unwrap_or((host, "6379"));
        let out = run(Command::new("redis-cli")
            .args(["-h", name, "-p", port, "INFO", "all"])
            .stdout(Stdio::piped()))?;
        let info = String::from_utf8_lossy(&out.stdout);
        if info.contains("role:master") {
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn print_report(r: &StoresReport) {
    println!(
        "{} references, {:.2} h of audio; {} queries (identical answers from both: {}); load average {}\n",
        r.refs, r.audio_h, r.queries, r.agreeing_queries, r.load_average
    );
    for b in &r.backends {
        println!("{}: {} postings on {} keys", b.name, b.postings, b.keys);
    }
    for d in &r.disagreements {
        println!("answers differ: {d}");
    }
    println!(
        "| store | index wall s | index CPU s | x real time | store MB | bytes/posting | MB per hour | identify wall s (all) | lookup median ms | lookup p90 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for b in &r.backends {
        let (mb, per_posting, per_hour) = match b.store_bytes {
            Some(bytes) => (
                format!("{:.1}", bytes as f64 / 1e6),
                format!("{:.1}", bytes as f64 / b.postings.max(1) as f64),
                format!("{:.1}", bytes as f64 / 1e6 / r.audio_h),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {mb} | {per_posting} | {per_hour} | {:.1} | {:.1} | {:.1} |",
            b.name,
            b.index_wall_s,
            b.index_cpu_s,
            r.audio_h * 3600.0 / b.index_wall_s,
            b.identify_wall_s,
            b.lookup_median_s * 1e3,
            b.lookup_p90_s * 1e3,
        );
    }
}
