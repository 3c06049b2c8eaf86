//! `run`: indexes the references with the cratedigger CLI, identifies every query,
//! times both (and the ffmpeg decode floor), saves raw outputs, then scores.

use crate::score::{ScoreArgs, parse_identify, result_file, run_score};
use crate::types::{DecodeFloor, IdentifyTiming, IndexStats, RunStats, Split, TruthQuery};
use crate::util::{
    canonical, children_cpu, cmd_line, nproc, probe_duration, read_json, run, write_json,
};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct RunArgs {
    pub bin: PathBuf,
    pub db: PathBuf,
    pub out: PathBuf,
    pub split: Option<String>,
    pub suite: Option<String>,
    pub skip_index: bool,
    pub skip_decode_floor: bool,
    pub chunk: usize,
    pub jobs: usize,
    pub min_score: f64,
    pub thresholds: Option<Vec<f64>>,
    pub score_field: String,
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn mtime(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn read_refs(out: &Path) -> Result<Vec<String>> {
    let f = out.join("refs.txt");
    let s = std::fs::read_to_string(&f)
        .with_context(|| format!("cannot read {} (run `corpus` first)", f.display()))?;
    Ok(s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn decode_floor(refs: &[String]) -> Result<DecodeFloor> {
    eprintln!(
        "run: decode floor: ffmpeg -f null over {} references",
        refs.len()
    );
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    for r in refs {
        run(Command::new("ffmpeg")
            .args(["-nostdin", "-v", "quiet", "-i"])
            .arg(r)
            .args(["-f", "null", "-"]))?;
    }
    Ok(DecodeFloor {
        files: refs.len(),
        wall_s: t0.elapsed().as_secs_f64(),
        cpu_s: (children_cpu() - cpu0).as_secs_f64(),
    })
}

fn index(a: &RunArgs, refs: &[String], out: &Path) -> Result<IndexStats> {
    let log = out.join("results").join("_index.log");
    let mut log_text = String::new();
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    for chunk in refs.chunks(a.chunk.max(1)) {
        let mut cmd = Command::new(&a.bin);
        cmd.arg("--db").arg(&a.db).arg("index").args(chunk);
        eprintln!("run: indexing {} files", chunk.len());
        let o = run(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
        log_text.push_str(&format!("$ {}\n", cmd_line(&cmd)));
        log_text.push_str(&String::from_utf8_lossy(&o.stdout));
        log_text.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = (children_cpu() - cpu0).as_secs_f64();
    let stages_s = stage_seconds(&log_text);
    std::fs::write(&log, log_text)?;
    // Durations from split.json when known, else ffprobe.
    let known: HashMap<String, f64> = read_json::<Split>(&out.join("split.json"))
        .map(|s| {
            s.tune
                .iter()
                .chain(s.heldout.iter())
                .map(|t| (t.path.clone(), t.duration_s))
                .collect()
        })
        .unwrap_or_default();
    let mut audio_s = 0.0;
    for r in refs {
        audio_s += match known.get(r) {
            Some(d) => *d,
            None => probe_duration(Path::new(r))?,
        };
    }
    Ok(IndexStats {
        files: refs.len(),
        audio_s,
        wall_s,
        cpu_s,
        db_bytes: dir_size(&a.db),
        stages_s,
    })
}

/// Sums the per-stage thread-seconds of every `stages (thread-seconds): read+hash X s
/// (..), decode X s (..), fingerprint X s (..), store X s (..)` line the CLI printed.
fn stage_seconds(log: &str) -> Option<[f64; 4]> {
    let mut total = [0.0; 4];
    let mut seen = false;
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("stages (thread-seconds): ") else {
            continue;
        };
        for (slot, name) in ["read+hash ", "decode ", "fingerprint ", "store "]
            .iter()
            .enumerate()
        {
            let value = rest
                .split(", ")
                .find_map(|part| part.strip_prefix(name))
                .and_then(|v| v.split(' ').next())
                .and_then(|v| v.parse::<f64>().ok())?;
            total[slot] += value;
        }
        seen = true;
    }
    seen.then_some(total)
}

/// `BIN --db DB identify --json QUERY`, its input closed.
pub fn identify_command(bin: &Path, db: &Path, query: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--db")
        .arg(db)
        .args(["identify", "--json"])
        .arg(query)
        .stdin(Stdio::null());
    cmd
}

fn identify(a: &RunArgs, q: &TruthQuery, results: &Path) -> IdentifyTiming {
    let mut cmd = identify_command(&a.bin, &a.db, Path::new(&q.query));
    let line = cmd_line(&cmd);
    let t0 = Instant::now();
    let r = cmd.output();
    let wall_s = t0.elapsed().as_secs_f64();
    let file = result_file(results, &q.query);
    let error = match r {
        Err(e) => Some(format!("cannot start `{line}`: {e}")),
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            let _ = std::fs::write(&file, &stdout);
            let stderr = String::from_utf8_lossy(&o.stderr);
            if !stderr.trim().is_empty() {
                let _ = std::fs::write(file.with_extension("stderr.txt"), stderr.as_bytes());
            }
            if !o.status.success() {
                Some(format!(
                    "`{line}` failed ({}): {}",
                    o.status,
                    stderr.trim().lines().last().unwrap_or_default()
                ))
            } else if let Err(e) = parse_identify(&stdout) {
                Some(format!("`{line}` printed no usable JSON: {e:#}"))
            } else {
                None
            }
        }
    };
    if let Some(e) = &error {
        eprintln!("run: {e}");
        let _ = std::fs::remove_file(&file);
    }
    IdentifyTiming {
        query: q.query.clone(),
        wall_s,
        ok: error.is_none(),
        error,
    }
}

pub fn run_bench(a: &RunArgs) -> Result<()> {
    let out = canonical(&a.out);
    let bin = canonical(&a.bin);
    if !bin.is_file() {
        bail!("cratedigger binary {} does not exist", bin.display());
    }
    let a = RunArgs {
        bin,
        db: crate::util::absolute(&a.db),
        out: out.clone(),
        split: a.split.clone(),
        suite: a.suite.clone(),
        thresholds: a.thresholds.clone(),
        score_field: a.score_field.clone(),
        ..*a
    };
    let results = out.join("results");
    std::fs::create_dir_all(&results)?;
    let truth_path = out.join("truth.json");
    let truth: Vec<TruthQuery> =
        read_json(&truth_path).context("run `cratedigger-bench queries` first")?;
    let queries: Vec<TruthQuery> = truth
        .into_iter()
        .filter(|q| {
            a.split.as_ref().is_none_or(|s| *s == q.split)
                && a.suite.as_ref().is_none_or(|s| *s == q.suite)
        })
        .collect();
    if queries.is_empty() {
        bail!(
            "no queries in {} match the split/suite",
            truth_path.display()
        );
    }

    let run_file = results.join("_run.json");
    let previous: Option<RunStats> = read_json(&run_file).ok();
    let bin_mtime = mtime(&a.bin);
    let bin_version = run(Command::new(&a.bin).arg("--version"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut stats = RunStats {
        bin: a.bin.display().to_string(),
        db: a.db.display().to_string(),
        cores: nproc(),
        identify_jobs: a.jobs.max(1),
        bin_version,
        bin_mtime,
        ..Default::default()
    };
    if a.skip_index
        && let Some(p) = previous.as_ref().filter(|p| p.bin_mtime != bin_mtime)
    {
        eprintln!(
            "run: warning: {} was rebuilt since the database was indexed by it ({} vs {})",
            a.bin.display(),
            p.bin_mtime,
            bin_mtime
        );
    }
    if a.skip_index {
        if let Some(p) = &previous {
            stats.index = p.index.clone();
            stats.decode_floor = p.decode_floor.clone();
        }
    } else {
        let refs = read_refs(&out)?;
        if !a.skip_decode_floor {
            stats.decode_floor = Some(decode_floor(&refs)?);
        }
        let ix = index(&a, &refs, &out)?;
        eprintln!(
            "run: indexed {} files ({:.2} h) in {:.1} s wall, {:.1} s CPU",
            ix.files,
            ix.audio_s / 3600.0,
            ix.wall_s,
            ix.cpu_s
        );
        stats.index = Some(ix);
    }

    eprintln!(
        "run: identifying {} queries, {} at a time",
        queries.len(),
        a.jobs.max(1)
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.jobs.max(1))
        .build()?;
    stats.identify = pool.install(|| {
        queries
            .par_iter()
            .map(|q| identify(&a, q, &results))
            .collect()
    });
    if mtime(&a.bin) != bin_mtime {
        stats.bin_changed = true;
        eprintln!(
            "run: warning: {} changed during the run: results mix builds",
            a.bin.display()
        );
    }
    let failed = stats.identify.iter().filter(|i| !i.ok).count();
    if failed > 0 {
        eprintln!(
            "run: {failed} of {} identify calls failed",
            stats.identify.len()
        );
    }
    // With --skip-index, keep the timings of other queries (another split or suite)
    // from earlier runs against the same database.
    if let Some(p) = previous.filter(|p| a.skip_index && p.db == stats.db) {
        let ours: std::collections::HashSet<String> =
            stats.identify.iter().map(|i| i.query.clone()).collect();
        stats
            .identify
            .extend(p.identify.into_iter().filter(|i| !ours.contains(&i.query)));
    }
    write_json(&run_file, &stats)?;
    run_score(&ScoreArgs {
        truth: truth_path,
        results,
        out: Some(out),
        split: a.split.clone(),
        suite: a.suite.clone(),
        min_score: a.min_score,
        thresholds: a.thresholds.clone(),
        score_field: a.score_field.clone(),
    })?;
    Ok(())
}
