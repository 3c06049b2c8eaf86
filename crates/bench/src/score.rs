//! `score`: compares `identify --json` outputs with truth.json and writes the report.

use crate::types::{IdentifyOutput, Match, RunStats, TruthQuery, TruthSample};
use crate::util::{canonical, median, percentile, read_json, write_json};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub struct ScoreArgs {
    pub truth: PathBuf,
    pub results: PathBuf,
    pub out: Option<PathBuf>,
    pub split: Option<String>,
    pub suite: Option<String>,
    /// Matches below this score are ignored in the main table.
    pub min_score: f64,
    /// Thresholds of the calibration sweep (automatic when None).
    pub thresholds: Option<Vec<f64>>,
    /// Match field used as the score (`score`, or e.g. `significance`).
    pub score_field: String,
}

/// One query with its (canonicalised) matches; None when the result is missing.
pub struct Scored {
    pub truth: TruthQuery,
    pub matches: Option<Vec<Match>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleEval {
    pub found: bool,
    pub qs_err: Option<f64>,
    pub rs_err: Option<f64>,
    /// Reference time the match maps the true query start to, minus the true ref start.
    pub align_err: Option<f64>,
    pub speed_err: Option<f64>,
    pub tempo_err: Option<f64>,
    pub pitch_err: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryEval {
    pub any_match: bool,
    pub wrong_ref: bool,
    /// A match that neither a planted sample nor shared audio explains (see `shared`):
    /// the wrong references, or for a query without a sample the false positives, with
    /// shared audio excused.
    pub unexplained: bool,
    pub top1: Option<bool>,
    pub samples: Vec<SampleEval>,
}

fn overlap(a0: f64, a1: f64, b0: f64, b1: f64) -> f64 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

fn is_speed_sample(s: &TruthSample, condition: &str) -> bool {
    (s.speed - 1.0).abs() > 1e-9 || condition.starts_with("speed")
}

/// Scores one query: `matches` must carry canonical paths, `truth` canonical ref paths.
pub fn eval_query(truth: &TruthQuery, matches: &[Match], threshold: f64) -> QueryEval {
    let mut ms: Vec<&Match> = matches.iter().filter(|m| m.score >= threshold).collect();
    ms.sort_by(|a, b| b.score.total_cmp(&a.score));
    let is_true = |p: &str| truth.samples.iter().any(|s| s.ref_path == p);
    let explained = |m: &Match| is_true(&m.path) || m.shared.is_some_and(|v| v.is_shared());
    let mut e = QueryEval {
        any_match: !ms.is_empty(),
        wrong_ref: ms.iter().any(|m| !is_true(&m.path)),
        unexplained: ms.iter().any(|m| !explained(m)),
        top1: None,
        samples: vec![],
    };
    if !truth.samples.is_empty() {
        e.top1 = Some(ms.first().is_some_and(|m| is_true(&m.path)));
    }
    for s in &truth.samples {
        // Of the intervals (a match's own or one of its occurrences) of right-reference
        // matches that overlap the true span, the best aligned one (music repeats
        // itself: the engine may also report other copies of the passage).
        let mut best: Option<(f64, &Match, f64, f64)> = None; // (ref error, match, qs, rs)
        for m in ms.iter().filter(|m| m.path == s.ref_path) {
            let mut cands = vec![(m.query_start_s, m.query_end_s, m.ref_start_s)];
            cands.extend(
                m.occurrences
                    .iter()
                    .map(|o| (o.query_start_s, o.query_end_s, o.ref_start_s)),
            );
            for (q0, q1, r0) in cands {
                let ov = overlap(q0, q1, s.query_start_s, s.query_end_s);
                // Alignment error: where this interval puts the true start in the reference.
                let err = (r0 + (s.query_start_s - q0) * m.tempo - s.ref_start_s).abs();
                // Touching intervals (zero-length overlap) do not count.
                if ov > 0.0 && best.is_none_or(|b| err < b.0) {
                    best = Some((err, m, q0, r0));
                }
            }
        }
        let mut se = SampleEval::default();
        if let Some((err, m, q0, r0)) = best {
            se.found = true;
            se.qs_err = Some((q0 - s.query_start_s).abs());
            se.rs_err = Some((r0 - s.ref_start_s).abs());
            se.align_err = Some(err);
            if is_speed_sample(s, &truth.condition) {
                let est = m.speed.unwrap_or(m.tempo);
                se.speed_err = Some((est / s.speed - 1.0).abs());
            }
            se.tempo_err = Some((m.tempo / s.tempo - 1.0).abs());
            se.pitch_err = Some((m.pitch_semitones - s.pitch_semitones).abs());
        }
        e.samples.push(se);
    }
    e
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Stat {
    pub median: Option<f64>,
    pub p90: Option<f64>,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        Stat {
            median: median(v),
            p90: percentile(v, 90.0),
        }
    }
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct CondRow {
    pub condition: String,
    pub queries: usize,
    pub samples: usize,
    pub found: usize,
    pub recall: Option<f64>,
    pub top1: Option<f64>,
    pub query_start_err_s: Stat,
    pub ref_start_err_s: Stat,
    pub align_err_s: Stat,
    pub speed_err_rel: Stat,
    pub tempo_err_rel: Stat,
    pub pitch_err_st: Stat,
    /// Queries reporting a match whose reference is not a true sample.
    pub wrong_ref_rate: f64,
    /// Queries reporting a match that neither a planted sample nor shared audio explains:
    /// the wrong-reference rate, and for `none` the false-positive rate, with shared audio
    /// excused.
    pub unexplained_rate: f64,
    /// Queries reporting any match (the false-positive rate for `none`).
    pub any_match_rate: f64,
    pub missing_results: usize,
}

fn aggregate(name: &str, items: &[(&Scored, QueryEval)]) -> CondRow {
    let n = items.len();
    let mut r = CondRow {
        condition: name.to_string(),
        queries: n,
        ..Default::default()
    };
    let (mut qs, mut rs, mut al) = (vec![], vec![], vec![]);
    let (mut sp, mut te, mut pi) = (vec![], vec![], vec![]);
    let (mut top1_n, mut top1_ok) = (0, 0);
    let (mut wrong, mut any) = (0, 0);
    let mut unexplained = 0;
    for (s, e) in items {
        if s.matches.is_none() {
            r.missing_results += 1;
        }
        wrong += usize::from(e.wrong_ref);
        unexplained += usize::from(e.unexplained);
        any += usize::from(e.any_match);
        if let Some(t) = e.top1 {
            top1_n += 1;
            top1_ok += usize::from(t);
        }
        for se in &e.samples {
            r.samples += 1;
            r.found += usize::from(se.found);
            qs.extend(se.qs_err);
            rs.extend(se.rs_err);
            al.extend(se.align_err);
            sp.extend(se.speed_err);
            te.extend(se.tempo_err);
            pi.extend(se.pitch_err);
        }
    }
    if r.samples > 0 {
        r.recall = Some(r.found as f64 / r.samples as f64);
    }
    if top1_n > 0 {
        r.top1 = Some(top1_ok as f64 / top1_n as f64);
    }
    r.query_start_err_s = Stat::of(&qs);
    r.ref_start_err_s = Stat::of(&rs);
    r.align_err_s = Stat::of(&al);
    r.speed_err_rel = Stat::of(&sp);
    r.tempo_err_rel = Stat::of(&te);
    r.pitch_err_st = Stat::of(&pi);
    if n > 0 {
        r.wrong_ref_rate = wrong as f64 / n as f64;
        r.unexplained_rate = unexplained as f64 / n as f64;
        r.any_match_rate = any as f64 / n as f64;
    }
    r
}

/// Sort key: transform family, then its numeric parameter.
fn cond_key(name: &str) -> (usize, i64, String) {
    const ORDER: &[&str] = &[
        "speed", "tempo", "pitch", "len", "snr", "lowpass", "highpass", "loop", "chop", "two",
        "none",
    ];
    let (fam, num) = name.split_once('_').unwrap_or((name, ""));
    let idx = ORDER
        .iter()
        .position(|f| *f == fam)
        .unwrap_or(ORDER.len() - 1);
    let v = num.trim_start_matches('+').parse::<f64>().unwrap_or(0.0);
    (idx, (v * 1000.0).round() as i64, name.to_string())
}

#[derive(Serialize, Debug, Clone)]
pub struct SweepRow {
    pub threshold: f64,
    pub recall: Option<f64>,
    pub top1: Option<f64>,
    /// Share of no-reference queries with any match.
    pub fp_rate: Option<f64>,
    pub wrong_ref_rate: Option<f64>,
    /// The two rates with shared material excused.
    pub fp_rate_unexplained: Option<f64>,
    pub wrong_ref_rate_unexplained: Option<f64>,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Timing {
    pub refs: usize,
    pub ref_audio_h: f64,
    pub index_wall_s: Option<f64>,
    pub index_cpu_s: Option<f64>,
    pub index_cores_used: Option<f64>,
    pub index_x_realtime_wall: Option<f64>,
    pub index_x_realtime_per_core: Option<f64>,
    pub index_x_realtime_per_cpu_s: Option<f64>,
    /// Per stage (read+hash, decode, fingerprint, store): thread-seconds and x real time
    /// per thread-second.
    pub index_stages: Option<[(f64, f64); 4]>,
    pub db_mb: Option<f64>,
    pub decode_floor_wall_s: Option<f64>,
    pub index_wall_over_decode_floor: Option<f64>,
    pub index_cpu_over_decode_cpu: Option<f64>,
    pub identify_ok: usize,
    pub identify_failed: usize,
    pub identify_median_s: Option<f64>,
    pub identify_p95_s: Option<f64>,
    pub identify_max_s: Option<f64>,
    pub cores: usize,
    pub identify_jobs: usize,
    pub bin: String,
    pub bin_version: String,
    pub bin_changed: bool,
}

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub truth: String,
    pub results: String,
    pub split: Option<String>,
    pub suite: Option<String>,
    pub score_field: String,
    pub min_score: f64,
    pub conditions: Vec<CondRow>,
    pub all_with_samples: CondRow,
    pub false_positive_rate: Option<f64>,
    pub wrong_ref_rate_all: f64,
    /// The two rates with shared material excused.
    pub false_positive_rate_unexplained: Option<f64>,
    pub wrong_ref_rate_unexplained_all: f64,
    pub sweep: Vec<SweepRow>,
    pub timing: Option<Timing>,
}

/// Parses `identify --json` stdout, tolerating text around the JSON object.
pub fn parse_identify(s: &str) -> Result<IdentifyOutput> {
    match serde_json::from_str(s) {
        Ok(v) => Ok(v),
        Err(e) => {
            let (Some(a), Some(b)) = (s.find('{'), s.rfind('}')) else {
                bail!("no JSON object: {e}");
            };
            serde_json::from_str(&s[a..=b]).map_err(|e2| anyhow::anyhow!("bad JSON: {e2}"))
        }
    }
}

pub fn result_file(results: &Path, query: &str) -> PathBuf {
    let stem = Path::new(query)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| query.to_string());
    results.join(format!("{stem}.json"))
}

pub fn load(a: &ScoreArgs) -> Result<(Vec<Scored>, Option<RunStats>)> {
    let truth: Vec<TruthQuery> = read_json(&a.truth)?;
    let mut canon: HashMap<String, String> = HashMap::new();
    let mut c = |p: &str| -> String {
        canon
            .entry(p.to_string())
            .or_insert_with(|| canonical(Path::new(p)).to_string_lossy().into_owned())
            .clone()
    };
    let mut out = Vec::new();
    for mut t in truth {
        if a.split.as_ref().is_some_and(|s| *s != t.split)
            || a.suite.as_ref().is_some_and(|s| *s != t.suite)
        {
            continue;
        }
        for s in &mut t.samples {
            s.ref_path = c(&s.ref_path);
        }
        let f = result_file(&a.results, &t.query);
        let matches = match std::fs::read_to_string(&f) {
            Ok(s) => match parse_identify(&s) {
                Ok(o) => Some(
                    o.matches
                        .into_iter()
                        .map(|mut m| {
                            m.path = c(&m.path);
                            if a.score_field != "score" {
                                // A missing field scores nothing.
                                m.score = m
                                    .extra
                                    .get(&a.score_field)
                                    .and_then(serde_json::Value::as_f64)
                                    .unwrap_or(f64::NEG_INFINITY);
                            }
                            m
                        })
                        .collect(),
                ),
                Err(e) => {
                    eprintln!("score: {}: {e:#}", f.display());
                    None
                }
            },
            Err(_) => None,
        };
        out.push(Scored { truth: t, matches });
    }
    if out.is_empty() {
        bail!(
            "no queries in {} (split {:?}, suite {:?})",
            a.truth.display(),
            a.split,
            a.suite
        );
    }
    check_shared(&mut out);
    let run_file = a.results.join("_run.json");
    let run = if run_file.exists() {
        Some(read_json::<RunStats>(&run_file)?)
    } else {
        None
    };
    Ok((out, run))
}

/// Checks every match the truth does not plant for shared material (see `shared`),
/// printing each verdict; a match that cannot be checked stays unexplained. With
/// `SHARED_CHECK_TRUE` set, matches on planted references are checked too (a positive
/// control: an untransformed planted sample must come out shared).
fn check_shared(scored: &mut [Scored]) {
    let checker = crate::shared::Checker::default();
    let check_planted = std::env::var("SHARED_CHECK_TRUE").is_ok();
    scored.par_iter_mut().for_each(|s| {
        let truth = &s.truth;
        for m in s.matches.iter_mut().flatten() {
            if !check_planted && truth.samples.iter().any(|t| t.ref_path == m.path) {
                continue;
            }
            match checker.check(truth, m) {
                Ok(verdict) => {
                    if let Some(v) = verdict {
                        eprintln!(
                            "score: shared-material check: {} -> {} (score {:.2}): correlation {:.3}, noise {:.3}: {}",
                            truth.query,
                            m.path,
                            m.score,
                            v.peak,
                            v.noise,
                            if v.is_shared() { "shared" } else { "not shared" }
                        );
                    }
                    m.shared = verdict;
                }
                Err(e) => eprintln!("score: shared-material check of {}: {e:#}", truth.query),
            }
        }
    });
}

fn evaluate(scored: &[Scored], threshold: f64) -> Vec<(&Scored, QueryEval)> {
    scored
        .iter()
        .map(|s| {
            let e = eval_query(&s.truth, s.matches.as_deref().unwrap_or(&[]), threshold);
            (s, e)
        })
        .collect()
}

/// 0, quantiles of all reported scores, and the lowest threshold (to 0.001) that
/// silences every no-reference query.
fn auto_thresholds(scored: &[Scored]) -> Vec<f64> {
    let all: Vec<f64> = scored
        .iter()
        .filter_map(|s| s.matches.as_ref())
        .flatten()
        .map(|m| m.score)
        .filter(|v| v.is_finite())
        .collect();
    let mut t = vec![0.0];
    for p in [25.0, 50.0, 75.0, 90.0, 95.0, 99.0] {
        if let Some(v) = percentile(&all, p) {
            t.push((v * 1000.0).round() / 1000.0);
        }
    }
    let fp_max = scored
        .iter()
        .filter(|s| s.truth.samples.is_empty())
        .filter_map(|s| s.matches.as_ref())
        .flatten()
        .map(|m| m.score)
        .filter(|v| v.is_finite())
        .max_by(f64::total_cmp);
    if let Some(v) = fp_max {
        t.push(((v * 1000.0).floor() + 1.0) / 1000.0);
    }
    t.sort_by(f64::total_cmp);
    t.dedup();
    t
}

fn timing(scored: &[Scored], run: &RunStats) -> Timing {
    let mut t = Timing {
        cores: run.cores,
        identify_jobs: run.identify_jobs,
        bin: run.bin.clone(),
        bin_version: run.bin_version.clone(),
        bin_changed: run.bin_changed,
        ..Default::default()
    };
    if let Some(ix) = &run.index {
        t.refs = ix.files;
        t.ref_audio_h = ix.audio_s / 3600.0;
        t.index_wall_s = Some(ix.wall_s);
        t.index_cpu_s = Some(ix.cpu_s);
        if ix.wall_s > 0.0 {
            t.index_cores_used = Some(ix.cpu_s / ix.wall_s);
            t.index_x_realtime_wall = Some(ix.audio_s / ix.wall_s);
            t.index_x_realtime_per_core = Some(ix.audio_s / ix.wall_s / run.cores.max(1) as f64);
        }
        if ix.cpu_s > 0.0 {
            t.index_x_realtime_per_cpu_s = Some(ix.audio_s / ix.cpu_s);
        }
        t.index_stages = ix
            .stages_s
            .map(|st| st.map(|s| (s, ix.audio_s / s.max(1e-9))));
        t.db_mb = Some(ix.db_bytes as f64 / 1e6);
        if let Some(d) = &run.decode_floor {
            t.decode_floor_wall_s = Some(d.wall_s);
            if d.wall_s > 0.0 {
                t.index_wall_over_decode_floor = Some(ix.wall_s / d.wall_s);
            }
            if d.cpu_s > 0.0 {
                t.index_cpu_over_decode_cpu = Some(ix.cpu_s / d.cpu_s);
            }
        }
    }
    // Latency only of the queries being scored.
    let wanted: std::collections::HashSet<&str> =
        scored.iter().map(|s| s.truth.query.as_str()).collect();
    let lat: Vec<f64> = run
        .identify
        .iter()
        .filter(|i| i.ok && wanted.contains(i.query.as_str()))
        .map(|i| i.wall_s)
        .collect();
    t.identify_ok = lat.len();
    t.identify_failed = run
        .identify
        .iter()
        .filter(|i| !i.ok && wanted.contains(i.query.as_str()))
        .count();
    t.identify_median_s = median(&lat);
    t.identify_p95_s = percentile(&lat, 95.0);
    t.identify_max_s = lat.iter().copied().max_by(f64::total_cmp);
    t
}

pub fn build_report(a: &ScoreArgs, scored: &[Scored], run: Option<&RunStats>) -> Report {
    let evals = evaluate(scored, a.min_score);
    type Evaluated<'a> = Vec<(&'a Scored, QueryEval)>;
    let mut by_cond: BTreeMap<(usize, i64, String), Evaluated> = BTreeMap::new();
    for (s, e) in evals.iter().cloned() {
        by_cond
            .entry(cond_key(&s.truth.condition))
            .or_default()
            .push((s, e));
    }
    let conditions: Vec<CondRow> = by_cond
        .iter()
        .map(|((_, _, name), items)| aggregate(name, items))
        .collect();
    let with: Vec<(&Scored, QueryEval)> = evals
        .iter()
        .filter(|(s, _)| !s.truth.samples.is_empty())
        .cloned()
        .collect();
    let all_with_samples = aggregate("ALL with samples", &with);
    let none: Vec<(&Scored, QueryEval)> = evals
        .iter()
        .filter(|(s, _)| s.truth.samples.is_empty())
        .cloned()
        .collect();
    let none_row = (!none.is_empty()).then(|| aggregate("none", &none));
    let fp = none_row.as_ref().map(|r| r.any_match_rate);
    let fp_unexplained = none_row.as_ref().map(|r| r.unexplained_rate);
    let all_row = aggregate("all", &evals);

    let thresholds = a
        .thresholds
        .clone()
        .unwrap_or_else(|| auto_thresholds(scored));
    let sweep = thresholds
        .iter()
        .map(|&t| {
            let ev = evaluate(scored, t);
            let w: Vec<_> = ev
                .iter()
                .filter(|(s, _)| !s.truth.samples.is_empty())
                .cloned()
                .collect();
            let nn: Vec<_> = ev
                .iter()
                .filter(|(s, _)| s.truth.samples.is_empty())
                .cloned()
                .collect();
            let aw = aggregate("", &w);
            let an = (!nn.is_empty()).then(|| aggregate("", &nn));
            let ae = (!ev.is_empty()).then(|| aggregate("", &ev));
            SweepRow {
                threshold: t,
                recall: aw.recall,
                top1: aw.top1,
                fp_rate: an.as_ref().map(|r| r.any_match_rate),
                wrong_ref_rate: ae.as_ref().map(|r| r.wrong_ref_rate),
                fp_rate_unexplained: an.as_ref().map(|r| r.unexplained_rate),
                wrong_ref_rate_unexplained: ae.as_ref().map(|r| r.unexplained_rate),
            }
        })
        .collect();
    Report {
        truth: a.truth.display().to_string(),
        results: a.results.display().to_string(),
        split: a.split.clone(),
        suite: a.suite.clone(),
        score_field: a.score_field.clone(),
        min_score: a.min_score,
        conditions,
        all_with_samples,
        false_positive_rate: fp,
        wrong_ref_rate_all: all_row.wrong_ref_rate,
        false_positive_rate_unexplained: fp_unexplained,
        wrong_ref_rate_unexplained_all: all_row.unexplained_rate,
        sweep,
        timing: run.map(|r| timing(scored, r)),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn pair(s: &Stat, digits: usize, percent: bool) -> String {
    let f = |x: Option<f64>| {
        if percent {
            x.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
        } else {
            num(x, digits)
        }
    };
    format!("{} / {}", f(s.median), f(s.p90))
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# cratedigger benchmark\n\ntruth `{}`, results `{}`, split {}, suite {}, score field `{}`, min score {}\n",
        r.truth,
        r.results,
        r.split.as_deref().unwrap_or("all"),
        r.suite.as_deref().unwrap_or("all"),
        r.score_field,
        r.min_score
    );
    let _ = writeln!(
        s,
        "Errors are median / p90 over found samples. Align err: the reference time the match maps the true query start to, vs the true ref start. Speed and tempo errors are relative (|est/true − 1|); pitch in semitones.\n"
    );
    let _ = writeln!(
        s,
        "| condition | n | recall | top-1 | query start err (s) | ref start err (s) | align err (s) | speed err | tempo err | pitch err (st) | wrong ref | any match |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in r
        .conditions
        .iter()
        .chain(std::iter::once(&r.all_with_samples))
    {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.condition,
            if c.missing_results > 0 {
                format!(" ({} missing)", c.missing_results)
            } else {
                String::new()
            },
            c.queries,
            if c.samples > 0 {
                format!("{} ({}/{})", pct(c.recall), c.found, c.samples)
            } else {
                "–".into()
            },
            pct(c.top1),
            pair(&c.query_start_err_s, 2, false),
            pair(&c.ref_start_err_s, 2, false),
            pair(&c.align_err_s, 2, false),
            pair(&c.speed_err_rel, 1, true),
            pair(&c.tempo_err_rel, 1, true),
            pair(&c.pitch_err_st, 2, false),
            pct(Some(c.wrong_ref_rate)),
            pct(Some(c.any_match_rate)),
        );
    }
    let _ = writeln!(
        s,
        "\nFalse-positive rate (no-reference queries with any match): **{}**; wrong-reference rate over all queries: **{}**. \
         Excusing matches whose reference holds the audio the truth puts at that place (shared material, checked on the \
         clean recordings by `cratedigger-bench`'s `shared` module): **{}** and **{}**.\n",
        pct(r.false_positive_rate),
        pct(Some(r.wrong_ref_rate_all)),
        pct(r.false_positive_rate_unexplained),
        pct(Some(r.wrong_ref_rate_unexplained_all))
    );
    let _ = writeln!(s, "## Score threshold sweep\n");
    let _ = writeln!(
        s,
        "| min {} | recall | top-1 | FP rate | wrong ref | FP, shared excused | wrong ref, shared excused |",
        r.score_field
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    for w in &r.sweep {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            w.threshold,
            pct(w.recall),
            pct(w.top1),
            pct(w.fp_rate),
            pct(w.wrong_ref_rate),
            pct(w.fp_rate_unexplained),
            pct(w.wrong_ref_rate_unexplained)
        );
    }
    if let Some(t) = &r.timing {
        let _ = writeln!(s, "\n## Speed\n");
        let _ = writeln!(
            s,
            "Machine: {} cores; identify run {} at a time. Binary: {} ({}).\n",
            t.cores, t.identify_jobs, t.bin_version, t.bin
        );
        if t.bin_changed {
            let _ = writeln!(
                s,
                "**Warning: the binary was rebuilt during the run; results mix builds.**\n"
            );
        }
        let _ = writeln!(s, "| measure | value |\n|---|---:|");
        let rows: Vec<(String, String)> = vec![
            (
                "references indexed".into(),
                format!("{} ({:.2} h)", t.refs, t.ref_audio_h),
            ),
            (
                "index wall time".into(),
                format!("{} s", num(t.index_wall_s, 1)),
            ),
            (
                "index CPU time (cores used)".into(),
                format!(
                    "{} s ({})",
                    num(t.index_cpu_s, 1),
                    num(t.index_cores_used, 2)
                ),
            ),
            (
                "index speed, wall".into(),
                format!("{}× real time", num(t.index_x_realtime_wall, 0)),
            ),
            (
                format!("index speed per core (wall × {} cores)", t.cores),
                format!("{}× real time", num(t.index_x_realtime_per_core, 0)),
            ),
            (
                "index speed per CPU second".into(),
                format!("{}× real time", num(t.index_x_realtime_per_cpu_s, 0)),
            ),
        ];
        let mut rows = rows;
        if let Some(stages) = t.index_stages {
            for ((seconds, x), name) in
                stages
                    .iter()
                    .zip(["read+hash", "decode", "fingerprint", "store"])
            {
                rows.push((
                    format!("index stage {name}: thread-seconds (x real time per thread)"),
                    format!("{} s ({}×)", num(Some(*seconds), 1), num(Some(*x), 0)),
                ));
            }
        }
        rows.extend([
            ("database size".into(), format!("{} MB", num(t.db_mb, 1))),
            (
                "decode floor (ffmpeg -f null, sequential)".into(),
                format!("{} s", num(t.decode_floor_wall_s, 1)),
            ),
            (
                "index wall / decode floor wall".into(),
                format!("{}×", num(t.index_wall_over_decode_floor, 2)),
            ),
            (
                "index CPU / decode floor CPU".into(),
                format!("{}×", num(t.index_cpu_over_decode_cpu, 2)),
            ),
            (
                "identify latency median / p95 / max".into(),
                format!(
                    "{} / {} / {} s",
                    num(t.identify_median_s, 2),
                    num(t.identify_p95_s, 2),
                    num(t.identify_max_s, 2)
                ),
            ),
            (
                "identify ok / failed".into(),
                format!("{} / {}", t.identify_ok, t.identify_failed),
            ),
        ]);
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
    }
    s
}

pub fn run_score(a: &ScoreArgs) -> Result<Report> {
    let (scored, run) = load(a)?;
    let report = build_report(a, &scored, run.as_ref());
    let md = render(&report);
    println!("{md}");
    let out = a.out.clone().unwrap_or_else(|| {
        a.results
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.md"), &md)
        .with_context(|| format!("cannot write {}", out.join("report.md").display()))?;
    write_json(&out.join("report.json"), &report)?;
    eprintln!(
        "score: wrote {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str, q0: f64, q1: f64, speed: f64) -> TruthSample {
        TruthSample {
            ref_path: path.into(),
            ref_start_s: 100.0,
            ref_end_s: 108.0,
            query_start_s: q0,
            query_end_s: q1,
            speed,
            tempo: speed,
            pitch_semitones: 12.0 * speed.log2(),
            loops: 1,
        }
    }

    fn m(path: &str, q0: f64, q1: f64, score: f64) -> Match {
        let j = serde_json::json!({
            "track_id": 1, "path": path, "title": null, "artist": null,
            "query_start_s": q0, "query_end_s": q1, "ref_start_s": 100.5, "ref_end_s": 108.0,
            "tempo": 0.82, "pitch_semitones": -3.5, "speed": 0.81, "kind": "speed",
            "loop_count": 1, "occurrences": [], "score": score, "hits": 12, "extra": [1, 2]
        });
        serde_json::from_value(j).expect("match parses")
    }

    fn tq(samples: Vec<TruthSample>) -> TruthQuery {
        TruthQuery {
            query: "/q/x.mp3".into(),
            condition: "speed_0.80".into(),
            split: "tune".into(),
            suite: "core".into(),
            params: serde_json::Value::Null,
            samples,
        }
    }

    #[test]
    fn found_with_errors() {
        let t = tq(vec![sample("/r/a.ogg", 10.0, 20.0, 0.8)]);
        let e = eval_query(
            &t,
            &[m("/r/b.ogg", 0.0, 5.0, 3.0), m("/r/a.ogg", 11.0, 19.0, 9.0)],
            0.0,
        );
        assert!(e.any_match && e.wrong_ref);
        assert_eq!(e.top1, Some(true));
        let s = &e.samples[0];
        assert!(s.found);
        assert!((s.qs_err.unwrap_or(9.0) - 1.0).abs() < 1e-9);
        assert!((s.rs_err.unwrap_or(9.0) - 0.5).abs() < 1e-9);
        assert!((s.speed_err.unwrap_or(9.0) - (0.81 / 0.8 - 1.0)).abs() < 1e-9);
        // A threshold above the wrong match removes it.
        let e = eval_query(
            &t,
            &[m("/r/b.ogg", 0.0, 5.0, 3.0), m("/r/a.ogg", 11.0, 19.0, 9.0)],
            5.0,
        );
        assert!(!e.wrong_ref && e.samples[0].found);
    }

    #[test]
    fn shared_audio_excuses_a_wrong_reference() {
        let t = tq(vec![sample("/r/a.ogg", 10.0, 18.0, 0.8)]);
        let shared = crate::shared::Verdict {
            peak: 0.6,
            noise: 0.03,
        };
        let unrelated = crate::shared::Verdict {
            peak: 0.1,
            noise: 0.03,
        };
        let mut other = m("/r/b.ogg", 10.0, 18.0, 0.9);
        let e = eval_query(&t, std::slice::from_ref(&other), 0.5);
        assert!(e.wrong_ref && e.unexplained, "unchecked: {e:?}");
        other.shared = Some(unrelated);
        let e = eval_query(&t, std::slice::from_ref(&other), 0.5);
        assert!(e.wrong_ref && e.unexplained, "not shared: {e:?}");
        other.shared = Some(shared);
        let e = eval_query(&t, std::slice::from_ref(&other), 0.5);
        assert!(e.wrong_ref && !e.unexplained, "shared: {e:?}");
    }

    #[test]
    fn wrong_place_is_not_found() {
        let t = tq(vec![sample("/r/a.ogg", 10.0, 20.0, 0.8)]);
        let e = eval_query(&t, &[m("/r/a.ogg", 25.0, 30.0, 9.0)], 0.0);
        assert!(!e.samples[0].found);
        assert_eq!(e.top1, Some(true));
        let none = tq(vec![]);
        let e = eval_query(&none, &[m("/r/a.ogg", 25.0, 30.0, 9.0)], 0.0);
        assert!(e.any_match && e.wrong_ref && e.top1.is_none());
    }

    #[test]
    fn parses_engine_json_with_noise() -> Result<()> {
        let s = r#"warning: x
{"query": "q.mp3", "duration_s": 30.0, "matches": [{"track_id": 3, "path": "/a.ogg",
"query_start_s": 1, "query_end_s": 2, "ref_start_s": 3, "ref_end_s": 4, "tempo": 1.0,
"pitch_semitones": 0.0, "speed": null, "kind": "exact", "loop_count": 1,
"occurrences": [{"query_start_s": 1, "query_end_s": 2, "ref_start_s": 3, "ref_end_s": 4}],
"score": 5.5, "hits": 9, "new_field": true}]}"#;
        let o = parse_identify(s)?;
        assert_eq!(o.matches.len(), 1);
        assert_eq!(o.matches[0].speed, None);
        assert_eq!(o.matches[0].occurrences.len(), 1);
        Ok(())
    }

    #[test]
    fn condition_order() {
        let mut v = vec![
            "none",
            "pitch_+3",
            "speed_1.25",
            "pitch_-3",
            "speed_0.70",
            "tempo_0.85",
        ];
        v.sort_by_key(|c| cond_key(c));
        assert_eq!(
            v,
            [
                "speed_0.70",
                "speed_1.25",
                "tempo_0.85",
                "pitch_-3",
                "pitch_+3",
                "none"
            ]
        );
    }
}
