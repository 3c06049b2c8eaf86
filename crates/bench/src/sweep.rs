//! In-process parameter sweep: the engine's fingerprint and matcher over an in-memory
//! index of the benchmark's references, scored against truth.json, in about a minute per
//! setting on 2 cores (the `run` command, through the CLI and LMDB, takes several).
//!
//! Use it to compare settings on the tune split, then confirm a winner with `run` on both
//! splits. Fingerprint parameters are set with environment variables (`REF_K`, `Q_K`,
//! `REF_PPS`, `Q_PPS`, `PRT`, `PRB`, `QPRT`, `QPRB`, `MAXDT`, `MINDT`, `DFR`, `DF_STEP`,
//! `RL`, `MAXEXP`, `SUB`: see `fingerprint::Params`), so a sweep is a shell loop.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use fingerprint::{FREQ_SCALE, Fingerprinter, Params, RefQuad, SPAN_SCALE};
use matcher::{Hit, MatchParams};
use rayon::prelude::*;

/// What `sweep` needs.
pub struct SweepArgs {
    pub out: PathBuf,
    pub split: String,
    pub suite: String,
    /// Stop-word cap as a multiple of the mean postings per key (the engine uses 6).
    pub cap_factor: f64,
    pub thresholds: Vec<f64>,
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The default fingerprint parameters with any environment overrides applied.
fn params_from_env() -> Params {
    let d = Params::default();
    Params {
        ref_peaks_per_s: env_or("REF_PPS", d.ref_peaks_per_s as f64) as f32,
        query_peaks_per_s: env_or("Q_PPS", d.query_peaks_per_s as f64) as f32,
        ref_partners: env_or("REF_K", d.ref_partners as f64) as usize,
        query_partners: env_or("Q_K", d.query_partners as f64) as usize,
        quad_max_dt_frames: env_or("MAXDT", d.quad_max_dt_frames as f64) as f32,
        quad_min_dt_frames: env_or("MINDT", d.quad_min_dt_frames as f64) as f32,
        quad_df_range_bins: env_or("DFR", d.quad_df_range_bins as f64) as f32,
        quad_df_step_bins: env_or("DF_STEP", d.quad_df_step_bins as f64) as f32,
        quad_ratio_levels: env_or("RL", d.quad_ratio_levels as f64) as u32,
        max_expansions: env_or("MAXEXP", d.max_expansions as f64) as usize,
        peak_radius_frames: env_or("PRT", d.peak_radius_frames as f64) as usize,
        peak_radius_bins: env_or("PRB", d.peak_radius_bins as f64) as usize,
        query_peak_radius_frames: env_or("QPRT", d.query_peak_radius_frames as f64) as usize,
        query_peak_radius_bins: env_or("QPRB", d.query_peak_radius_bins as f64) as usize,
        density_subbands: env_or("SUB", d.density_subbands as f64) as usize,
        ..d
    }
}

/// One true sample's outcome: found, and the significance of the match that found it.
struct Outcome {
    condition: String,
    found: Vec<Option<(f64, f64)>>,
    /// Significances (and verification scores) of matches that are not a true sample.
    wrong: Vec<(f64, f64)>,
}

pub fn run_sweep(args: &SweepArgs) -> Result<()> {
    let refs_path = args.out.join("refs.txt");
    let refs: Vec<String> = std::fs::read_to_string(&refs_path)
        .with_context(|| format!("reading {}", refs_path.display()))?
        .lines()
        .map(String::from)
        .collect();
    let truth_path = args.out.join("truth.json");
    let truth: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(&truth_path)
            .with_context(|| format!("reading {}", truth_path.display()))?,
    )?;
    let truth: Vec<&serde_json::Value> = truth
        .iter()
        .filter(|t| t["split"] == args.split.as_str() && t["suite"] == args.suite.as_str())
        .collect();
    let fp = Fingerprinter::new(params_from_env())?;
    let opts = audio::DecodeOptions {
        target_rate_hz: fp.params().sample_rate_hz,
        ..audio::DecodeOptions::default()
    };
    let decode = |path: &str| -> Result<Vec<f32>> {
        Ok(audio::decode_file(Path::new(path), &opts)
            .with_context(|| format!("decoding {path}"))?
            .0
            .samples)
    };
    let started = std::time::Instant::now();
    let verify = std::env::var("VERIFY").is_ok();
    let v_ref_pps = env_or("V_REF_PPS", fp.params().ref_peaks_per_s as f64) as f32;
    let v_ref_r = (
        env_or("V_REF_PRT", fp.params().peak_radius_frames as f64) as usize,
        env_or("V_REF_PRB", fp.params().peak_radius_bins as f64) as usize,
    );
    let v_q_pps = env_or("V_Q_PPS", 120.0) as f32;
    let v_q_r = (
        env_or("V_Q_PRT", 3.0) as usize,
        env_or("V_Q_PRB", 3.0) as usize,
    );
    let v_dt = env_or("V_DT", 2.0) as usize;
    let v_db = env_or("V_DB", 1.0) as usize;
    let vparams = matcher::verify::VerifyParams {
        hit_rate: env_or("V_H", 0.35),
        chance_window: env_or("V_W", 12.0) as usize,
        min_chance: env_or("V_MINC", 0.02),
        ..Default::default()
    };
    let both: Vec<(Vec<RefQuad>, Vec<(f32, f32)>)> = refs
        .par_iter()
        .map(|r| {
            let samples = decode(r)?;
            let peaks = if verify {
                let mut v: Vec<(f32, f32)> = fp
                    .peaks(&samples, v_ref_pps, v_ref_r)
                    .iter()
                    .map(|p| (p.time, p.bin))
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v
            } else {
                Vec::new()
            };
            Ok((fp.reference(&samples), peaks))
        })
        .collect::<Result<_>>()?;
    let (per_ref, ref_peaks): (Vec<Vec<RefQuad>>, Vec<Vec<(f32, f32)>>) = both.into_iter().unzip();
    let mut index: HashMap<u32, Vec<(u32, RefQuad)>> = HashMap::new();
    let mut n_postings = 0usize;
    for (i, quads) in per_ref.into_iter().enumerate() {
        n_postings += quads.len();
        for q in quads {
            index.entry(q.hash).or_default().push((i as u32, q));
        }
    }
    let mean = n_postings as f64 / index.len().max(1) as f64;
    let cap = ((mean * args.cap_factor).ceil() as usize).max(20);
    eprintln!(
        "{} references, {n_postings} postings on {} keys (cap {cap}) in {:.1} s",
        refs.len(),
        index.len(),
        started.elapsed().as_secs_f64()
    );
    let match_params = MatchParams {
        min_significance: 0.0,
        ..MatchParams::default()
    };
    let outcomes: Vec<Outcome> = truth
        .par_iter()
        .map(|t| {
            let query = t["query"]
                .as_str()
                .ok_or_else(|| anyhow!("truth without query"))?;
            let samples = decode(query)?;
            let quads = fp.query(&samples);
            let grid = if verify {
                let peaks: Vec<(f32, f32)> = fp
                    .peaks(&samples, v_q_pps, v_q_r)
                    .iter()
                    .map(|p| (p.time, p.bin))
                    .collect();
                let n_frames = samples.len() / fp.params().hop + 1;
                Some(matcher::verify::PeakGrid::new(
                    &peaks,
                    n_frames,
                    fp.params().n_bins(),
                    v_dt,
                    v_db,
                ))
            } else {
                None
            };
            let frame_s = fp.params().frame_s();
            let bps = fp.params().bins_per_semitone() as f64;
            let llr_of = |m: &matcher::SampleMatch| -> f64 {
                let Some(grid) = &grid else { return 0.0 };
                m.occurrences
                    .iter()
                    .filter_map(|o| {
                        matcher::verify::verify_line(
                            matcher::verify::Line {
                                tempo: m.tempo,
                                r0: o.ref_start_s / frame_s,
                                q0: o.query_start_s / frame_s,
                                shift_bins: m.pitch_semitones * bps,
                            },
                            &ref_peaks[m.track as usize],
                            grid,
                            &vparams,
                        )
                    })
                    .map(|v| {
                        if std::env::var("V_DEBUG").is_ok() && v.llr > 30.0 {
                            eprintln!(
                                "{query} ref {} sig {:.1} tempo {:.3} pitch {:.2} llr {:.1} matched {}/{} r {:.1}-{:.1}s",
                                refs[m.track as usize],
                                m.significance,
                                m.tempo,
                                m.pitch_semitones,
                                v.llr,
                                v.n_matched,
                                v.n_peaks,
                                v.r_start * frame_s,
                                v.r_end * frame_s
                            );
                        }
                        v.llr
                    })
                    .fold(0.0, f64::max)
            };
            let mut hits = Vec::new();
            for x in &quads {
                let Some(list) = index.get(&x.hash) else {
                    continue;
                };
                if list.len() > cap {
                    continue;
                }
                hits.extend(list.iter().map(|(track, r)| Hit {
                    track: *track,
                    q_time: x.time,
                    q_bin: x.bin,
                    q_span: x.span,
                    r_time: r.time as f32,
                    r_bin: r.freq as f32 / FREQ_SCALE,
                    r_span: r.span as f32 / SPAN_SCALE,
                }));
            }
            let matches = matcher::find_matches(hits, &match_params);
            let mut used = vec![false; matches.len()];
            let mut found = Vec::new();
            for s in t["samples"].as_array().into_iter().flatten() {
                let ref_index = refs
                    .iter()
                    .position(|r| Some(r.as_str()) == s["ref_path"].as_str());
                let (qs, qe) = (
                    s["query_start_s"].as_f64().unwrap_or(0.0),
                    s["query_end_s"].as_f64().unwrap_or(0.0),
                );
                let hit = matches.iter().enumerate().find(|(_, m)| {
                    Some(m.track as usize) == ref_index
                        && m.occurrences
                            .iter()
                            .any(|o| o.query_start_s < qe && qs < o.query_end_s)
                });
                found.push(hit.map(|(k, m)| {
                    used[k] = true;
                    (m.significance, llr_of(m))
                }));
            }
            let wrong = matches
                .iter()
                .zip(&used)
                .filter(|(_, u)| !**u)
                .map(|(m, _)| (m.significance, llr_of(m)))
                .collect();
            Ok(Outcome {
                condition: t["condition"].as_str().unwrap_or("?").to_string(),
                found,
                wrong,
            })
        })
        .collect::<Result<_>>()?;
    for &threshold in &args.thresholds {
        print_row(&outcomes, threshold, |&(sig, _)| sig >= threshold);
    }
    if verify {
        let smins: Vec<f64> = std::env::var("V_SMIN")
            .unwrap_or_else(|_| "0,5,10,15".into())
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect();
        let vthr: Vec<f64> = std::env::var("V_THR")
            .unwrap_or_else(|_| "10,15,20,25,30,40".into())
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect();
        for &smin in &smins {
            for &v in &vthr {
                print!("sig>=30 or (sig>={smin} and llr>={v}): ");
                print_row(&outcomes, 30.0, |&(sig, llr)| {
                    sig >= 30.0 || (sig >= smin && llr >= v)
                });
            }
        }
        let mut wrong: Vec<f64> = outcomes
            .iter()
            .flat_map(|o| o.wrong.iter().map(|w| w.1))
            .collect();
        wrong.sort_by(|a, b| b.total_cmp(a));
        println!("top wrong llr: {:?}", &wrong[..wrong.len().min(15)]);
        let mut missed: Vec<(f64, f64)> = outcomes
            .iter()
            .flat_map(|o| o.found.iter().flatten().copied())
            .filter(|&(s, _)| s < 30.0)
            .collect();
        missed.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("true below sig 30 (sig, llr): {missed:.1?}");
    }
    Ok(())
}

fn print_row(outcomes: &[Outcome], threshold: f64, accept: impl Fn(&(f64, f64)) -> bool) {
    let (mut found, mut total, mut false_pos, mut negatives, mut wrong_queries) = (0, 0, 0, 0, 0);
    let mut by_condition: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for o in outcomes {
        let entry = by_condition.entry(&o.condition).or_default();
        for sig in &o.found {
            total += 1;
            entry.1 += 1;
            if sig.as_ref().is_some_and(&accept) {
                found += 1;
                entry.0 += 1;
            }
        }
        let any_wrong = o.wrong.iter().any(&accept);
        if o.found.is_empty() {
            negatives += 1;
            false_pos += usize::from(any_wrong);
        }
        wrong_queries += usize::from(any_wrong);
    }
    let detail: Vec<String> = by_condition
        .iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(c, (f, n))| format!("{c}:{f}/{n}"))
        .collect();
    println!(
        "significance >= {threshold}: recall {found}/{total} ({:.0}%), false positives {false_pos}/{negatives}, queries with a wrong reference {wrong_queries}/{}  {}",
        100.0 * found as f64 / total.max(1) as f64,
        outcomes.len(),
        detail.join(" ")
    );
}
