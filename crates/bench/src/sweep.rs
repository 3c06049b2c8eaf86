//! In-process parameter sweep: the engine's fingerprint and matcher over an in-memory
//! index of the benchmark's references, scored against truth.json, in about a minute per
//! setting on 2 cores (the `run` command, through the CLI and LMDB, takes several).
//!
//! Use it to compare settings on the tune split, then confirm a winner with `run` on both
//! splits. Fingerprint parameters are set with environment variables (`REF_K`, `Q_K`,
//! `REF_PPS`, `Q_PPS`, `PRT`, `PRB`, `QPRT`, `QPRB`, `MAXDT`, `MINDT`, `DFR`, `DF_STEP`,
//! `RL`, `MAXEXP`, `DF_TOL`, `T_TOL`, `SUB`, `HASH_PEAKS`, `ORDER_BITS`, `STRENGTH_TOL`,
//! `FMIN`, `OCT`: see `fingerprint::Params`), so a sweep is a shell loop.
//! Verification runs as in the engine unless `NOVERIFY` is set; `V_H`, `V_W`, `V_MINC`,
//! `V_DT`, `V_DB`, `V_RT` (tempo search, relative), `V_RTF` (its llr floor), `V_RELOC` and
//! `V_RELOC_K` (the relocation of failed candidates: least significance, places), `V_NULL=0`
//! (no null lines), `V_SCREEN` (the weak candidates' screen, nats; 0 shows every
//! candidate's full verification in `SWEEP_DEBUG` and the wrong candidates' list),
//! `V_SMIN`, `V_THR`, `V_Q_PPS`, `V_Q_PRT`, `V_Q_PRB` (the query's verification peaks),
//! `V_R_PPS`, `V_R_PRT`, `V_R_PRB` (the reference's) override its settings
//! and `M_MIN_HITS`, `M_MIN_OCC`, `M_MIN_EXT` the matcher's candidate minimums, `M_RGAP`
//! its slope fit's run gap, `M_BSEED`, `M_SEEDMIN`, `M_SBLOCK` its intercept seeds,
//! `M_CELLS` its vote cells per track, `M_WEAK` its weak candidates' cells (off: 0),
//! `M_WREACH` their reach in reference frames either side of their seed block, and
//! `M_SIG` the significance cut (see `matcher::MatchParams`); `CAP_MIN` the least
//! stop-word cap (20, as the engine's; at 7.41 h it binds below `--cap-factor` 4.4);
//! `SWEEP_COUNTS` prints each query's lookups and hits;
//! `SWEEP_DEBUG` prints every wrong match that was verified or is strong enough to be
//! accepted at a lower cut, and every candidate on each true sample's reference (accepted
//! or not); `ORACLE`
//! prints, per true sample, where its evidence is lost (see [`crate::oracle`]), and with
//! `ORACLE_HITS` also each quad hit that agrees with the true transform (a hit agrees
//! when its own tempo is within `ORACLE_TEMPO_TOL`, 0.04 in |ln|, of the truth's). `QSCALES`
//! (e.g. `0.6,0.8,1:2,1.25,1.6`) looks the query up at several time scales, each with a
//! hop of the base hop over the scale and searching time factors within `QTF` (or the
//! `:factor` after it) of its scale (session 19: not adopted). `QSPEEDS` (e.g.
//! `1:2,0.75:1.15,1.33:1.15`) instead resamples the query to undo each speed (tempo and
//! pitch together), its default band `QTF` 1.1 (session 20: not adopted).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use fingerprint::{Fingerprinter, Params, RefQuad};
use matcher::verify::RefPeak;
use matcher::{Hit, MatchParams, QueryQuad};
use rayon::prelude::*;

use crate::shortlist::Shortlist;

/// What `sweep` needs.
pub struct SweepArgs {
    pub out: PathBuf,
    pub split: String,
    pub suite: String,
    /// Stop-word cap as a multiple of the mean postings per key (the engine uses 6).
    pub cap_factor: f64,
    pub thresholds: Vec<f64>,
}

pub(crate) fn env_or(name: &str, default: f64) -> f64 {
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
        df_tolerance_bins: env_or("DF_TOL", d.df_tolerance_bins as f64) as f32,
        time_tolerance_frames: env_or("T_TOL", d.time_tolerance_frames as f64) as f32,
        peak_radius_frames: env_or("PRT", d.peak_radius_frames as f64) as usize,
        peak_radius_bins: env_or("PRB", d.peak_radius_bins as f64) as usize,
        query_peak_radius_frames: env_or("QPRT", d.query_peak_radius_frames as f64) as usize,
        query_peak_radius_bins: env_or("QPRB", d.query_peak_radius_bins as f64) as usize,
        density_subbands: env_or("SUB", d.density_subbands as f64) as usize,
        hash_peaks: env_or("HASH_PEAKS", d.hash_peaks as f64) as usize,
        hash_order_bits: env_or("ORDER_BITS", d.hash_order_bits as f64) as u32,
        strength_tolerance: env_or("STRENGTH_TOL", d.strength_tolerance as f64) as f32,
        fmin_hz: env_or("FMIN", d.fmin_hz as f64) as f32,
        fft_size: env_or("FFT", d.fft_size as f64) as usize,
        n_octaves: env_or("OCT", d.n_octaves as f64) as f32,
        ..d
    }
}

/// Every reference's quads by key, as the sweep's stand-in for the store.
pub(crate) struct MemIndex {
    pub map: HashMap<u32, Vec<(u32, RefQuad)>>,
    pub n_postings: usize,
    /// Keys with more postings are skipped: `cap_factor` times the mean list length,
    /// at least 20 (the engine's stop-word cut).
    pub cap: usize,
}

impl MemIndex {
    /// Indexes `per_ref`, reference `i`'s quads as track `i`.
    pub fn new(per_ref: Vec<Vec<RefQuad>>, cap_factor: f64) -> Self {
        let mut map: HashMap<u32, Vec<(u32, RefQuad)>> = HashMap::new();
        let mut n_postings = 0usize;
        for (track, quads) in per_ref.into_iter().enumerate() {
            n_postings += quads.len();
            for q in quads {
                map.entry(q.hash).or_default().push((track as u32, q));
            }
        }
        let mean = n_postings as f64 / map.len().max(1) as f64;
        let least = env_or("CAP_MIN", 20.0) as usize;
        let cap = ((mean * cap_factor).ceil() as usize).max(least);
        eprintln!(
            "sweep: {n_postings} postings, {} keys, mean {mean:.2}, cap {cap}",
            map.len()
        );
        Self {
            map,
            n_postings,
            cap,
        }
    }

    /// The hits of a query's quads, each naming its quad by position.
    pub fn hits(&self, quads: &[fingerprint::QueryQuad]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (i, x) in quads.iter().enumerate() {
            let Some(list) = self.map.get(&x.hash) else {
                continue;
            };
            if list.len() > self.cap {
                continue;
            }
            hits.extend(list.iter().map(|(track, r)| Hit {
                track: *track,
                query: i as u32,
                r_time: fingerprint::whole_frames(r.time),
                r_bin: r.freq,
                r_span: r.span,
            }));
        }
        hits
    }
}

/// A query's quads as the matcher reads them (without their keys).
pub(crate) fn matcher_quads(quads: &[fingerprint::QueryQuad]) -> Vec<QueryQuad> {
    quads
        .iter()
        .map(|x| QueryQuad {
            time: x.time,
            bin: x.bin,
            span: x.span,
        })
        .collect()
}

/// One true sample's outcome: found, and the significance of the match that found it.
struct Outcome {
    condition: String,
    /// Per true sample, the (evidence, verification) of the match that found it.
    found: Vec<Option<(f64, f64)>>,
    /// The (evidence, verification) of matches that are not a true sample.
    wrong: Vec<(f64, f64)>,
    /// Keys looked up and hits returned (below the stop-word cap): what a query costs,
    /// and what grows with the store.
    lookups: usize,
    hits: usize,
    /// With `SHORTLIST`: what the first stage cost and kept.
    first_stage: Option<FirstStage>,
}

/// The shortlist stage's cost and yield for one query.
struct FirstStage {
    lookups: usize,
    hits: usize,
    tracks: usize,
    /// Triplet hits on the shortlisted references (the second stage's work).
    kept_hits: usize,
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
    // Verification is on, as in the engine, unless NOVERIFY is set; V_* variables
    // override its settings.
    let verify = std::env::var("NOVERIFY").is_err();
    let oracle = std::env::var("ORACLE").is_ok();
    let mut match_params = MatchParams::default();
    match_params.verify.hit_rate = env_or("V_H", match_params.verify.hit_rate);
    match_params.verify.chance_window =
        env_or("V_W", match_params.verify.chance_window as f64) as usize;
    match_params.verify.min_chance = env_or("V_MINC", match_params.verify.min_chance);
    match_params.verify.tolerance_frames =
        env_or("V_DT", match_params.verify.tolerance_frames as f64) as usize;
    match_params.verify.tolerance_bins =
        env_or("V_DB", match_params.verify.tolerance_bins as f64) as usize;
    match_params.verify.refine_tempo = env_or("V_RT", match_params.verify.refine_tempo);
    match_params.verify.screen_nats = env_or("V_SCREEN", match_params.verify.screen_nats);
    if env_or("V_NULL", 1.0) == 0.0 {
        match_params.verify.null_shifts_frames.clear();
    }
    match_params.slope_run_gap_frames = env_or("M_RGAP", match_params.slope_run_gap_frames);
    match_params.seed_intercept_frames = env_or("M_BSEED", match_params.seed_intercept_frames);
    match_params.max_cells_per_track =
        env_or("M_CELLS", match_params.max_cells_per_track as f64) as usize;
    match_params.seed_block_frames = env_or("M_SBLOCK", match_params.seed_block_frames);
    match_params.seed_min_hits = env_or("M_SEEDMIN", match_params.seed_min_hits as f64) as usize;
    match_params.weak_cells_per_track =
        env_or("M_WEAK", match_params.weak_cells_per_track as f64) as usize;
    match_params.weak_reach_frames = env_or("M_WREACH", match_params.weak_reach_frames);
    match_params.min_significance = env_or("M_SIG", match_params.min_significance);
    match_params.verify.refine_tempo_from = env_or("V_RTF", match_params.verify.refine_tempo_from);
    match_params.verify.relocate_from = env_or("V_RELOC", match_params.verify.relocate_from);
    match_params.verify.relocate_places =
        env_or("V_RELOC_K", match_params.verify.relocate_places as f64) as usize;
    match_params.min_candidate_significance =
        env_or("V_SMIN", match_params.min_candidate_significance);
    match_params.min_verification = env_or("V_THR", match_params.min_verification);
    match_params.min_match_hits = env_or("M_MIN_HITS", match_params.min_match_hits as f64) as usize;
    match_params.min_occurrence_hits =
        env_or("M_MIN_OCC", match_params.min_occurrence_hits as f64) as usize;
    match_params.min_ref_extent_frames = env_or("M_MIN_EXT", match_params.min_ref_extent_frames);
    let fp = Fingerprinter::new(Params {
        verify_peaks_per_s: env_or("V_Q_PPS", fp.params().verify_peaks_per_s as f64) as f32,
        verify_radius_frames: env_or("V_Q_PRT", fp.params().verify_radius_frames as f64) as usize,
        verify_radius_bins: env_or("V_Q_PRB", fp.params().verify_radius_bins as f64) as usize,
        ref_verify_peaks_per_s: env_or("V_R_PPS", fp.params().ref_verify_peaks_per_s as f64) as f32,
        ref_verify_radius_frames: env_or("V_R_PRT", fp.params().ref_verify_radius_frames as f64)
            as usize,
        ref_verify_radius_bins: env_or("V_R_PRB", fp.params().ref_verify_radius_bins as f64)
            as usize,
        ..fp.params().clone()
    })?;
    let shortlist_fp = Shortlist::fingerprinter_from_env(fp.params())?;
    let scale_fps = scale_fingerprinters(fp.params())?;
    type RefPrints = (
        Vec<RefQuad>,
        Vec<RefPeak>,
        Vec<RefPeak>,
        Option<Vec<RefQuad>>,
        Vec<fingerprint::Peak>,
    );
    let both: Vec<RefPrints> = refs
        .par_iter()
        .map(|r| {
            let samples = decode(r)?;
            let print = fp.reference_print(&samples);
            let shortlist_quads = shortlist_fp.as_ref().map(|f| f.reference(&samples));
            // Through the stored form, as the engine sees them.
            let stored = |peaks: &[fingerprint::Peak]| {
                fingerprint::peak_list::decode(&fingerprint::peak_list::encode(peaks))
            };
            // The oracle's key check needs the hash peaks as the fingerprint made them.
            let full = if oracle {
                print.peaks.clone()
            } else {
                Vec::new()
            };
            Ok((
                print.quads,
                stored(&print.verify_peaks)?,
                stored(&print.peaks)?,
                shortlist_quads,
                full,
            ))
        })
        .collect::<Result<_>>()?;
    let mut per_ref = Vec::with_capacity(both.len());
    let mut ref_peaks = Vec::with_capacity(both.len());
    // The hash peaks, for the oracle's survival counts.
    let mut hash_peaks = Vec::with_capacity(both.len());
    let mut shortlist_quads = Vec::with_capacity(both.len());
    let mut hash_full = Vec::with_capacity(both.len());
    for (quads, verify, hash, shortlist, full) in both {
        hash_full.push(full);
        per_ref.push(quads);
        ref_peaks.push(verify);
        hash_peaks.push(hash);
        shortlist_quads.extend(shortlist);
    }
    let shortlist =
        shortlist_fp.map(|f| Shortlist::new(f, shortlist_quads, args.cap_factor, &match_params));
    let index = MemIndex::new(per_ref, args.cap_factor);
    eprintln!(
        "{} references, {} postings on {} keys (cap {}) in {:.1} s",
        refs.len(),
        index.n_postings,
        index.map.len(),
        index.cap,
        started.elapsed().as_secs_f64()
    );
    let outcomes: Vec<Outcome> = truth
        .par_iter()
        .map(|t| {
            let query = t["query"]
                .as_str()
                .ok_or_else(|| anyhow!("truth without query"))?;
            let samples = decode(query)?;
            let print = fp.query_print(&samples);
            let scaled = scaled_quads(&scale_fps, &samples)?;
            let quads = scaled.as_ref().map_or(&print.quads, |(q, _)| q);
            let grid = engine::verification_grid(&print, &match_params);
            let query_quads = matcher_quads(quads);
            let mut hits = index.hits(quads);
            if let Some((_, scale_of)) = &scaled {
                // Each scale searches time factors near its own only.
                hits.retain(|h| {
                    let q = &quads[h.query as usize];
                    let scale = &scale_fps[scale_of[h.query as usize]];
                    let factor = h.r_span_frames() / q.span * scale.ratio;
                    factor <= scale.max_factor && factor * scale.max_factor >= 1.0
                });
            }
            // Every candidate down to significance 0 is kept with its evidence, so that
            // any threshold can be scored; the engine keeps the accepted ones only.
            let all = MatchParams {
                min_significance: 0.0,
                min_candidate_significance: 0.0,
                ..match_params.clone()
            };
            let n_hits = hits.len();
            let stage = shortlist.as_ref().map(|s| s.stage(&samples));
            if let Some(stage) = &stage {
                hits.retain(|h| stage.tracks.contains(&h.track));
            }
            let first_stage = stage.map(|s| FirstStage {
                lookups: s.lookups,
                hits: s.hits,
                tracks: s.tracks.len(),
                kept_hits: hits.len(),
            });
            if std::env::var("SWEEP_COUNTS").is_ok() {
                // Hits on the true references that the matcher's transform limits admit:
                // the number the engine reports for the same track.
                let max_factor = match_params.max_time_factor as f32;
                let max_pitch =
                    (match_params.max_pitch_semitones * match_params.bins_per_semitone) as f32;
                let true_refs: Vec<Option<usize>> = t["samples"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| refs.iter().position(|r| Some(r.as_str()) == s["ref_path"].as_str()))
                    .collect();
                let on_true = hits
                    .iter()
                    .filter(|h| true_refs.contains(&Some(h.track as usize)))
                    .filter(|h| {
                        let q = &query_quads[h.query as usize];
                        let factor = q.span / h.r_span_frames();
                        (1.0 / max_factor..=max_factor).contains(&factor)
                            && (q.bin - h.r_bin_bins()).abs() <= max_pitch
                    })
                    .count();
                eprintln!(
                    "counts {query} lookups {} hits {n_hits} on true references {on_true}",
                    quads.len()
                );
            }
            let oracle_hits = if oracle { hits.clone() } else { Vec::new() };
            let mut matches = matcher::find_matches(hits, &query_quads, &all);
            for m in &mut matches {
                if verify && m.significance >= match_params.min_candidate_significance {
                    matcher::verify::verify_match(
                        m,
                        &ref_peaks[m.track as usize],
                        &grid,
                        &match_params,
                    );
                }
            }
            let matches = matcher::finish_verified(matches, &match_params, false);
            let evidence = |m: &matcher::SampleMatch| {
                if m.is_accepted(&match_params) {
                    m.evidence(&match_params)
                } else {
                    m.evidence(&match_params).min(m.significance)
                }
            };
            if oracle {
                let fpp = fp.params();
                // One spectrogram for the query peaks and the contrast test.
                let spectrogram = fp.spectrogram(&samples);
                let query_peaks = fingerprint::peaks::find_peaks(
                    &spectrogram,
                    fpp,
                    fpp.query_peaks_per_s,
                    (fpp.query_peak_radius_frames, fpp.query_peak_radius_bins),
                );
                let seen = crate::oracle::Seen {
                    spectrogram: &spectrogram,
                    hits: &oracle_hits,
                    quads: &query_quads,
                    matches: &matches,
                    query_peaks: &query_peaks,
                    grid: &grid,
                };
                let peak_sets = crate::oracle::RefPeakSets {
                    hash: &hash_peaks,
                    hash_full: &hash_full,
                    verify: &ref_peaks,
                };
                for line in
                    crate::oracle::report(t, &refs, &peak_sets, &seen, &match_params, fpp)
                {
                    eprintln!("{line}");
                }
                for line in crate::oracle::chance_contrast(t, &refs, &ref_peaks, &seen, &match_params) {
                    eprintln!("{line}");
                }
            }
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
                if std::env::var("SWEEP_DEBUG").is_ok() {
                    // Every candidate on the true reference, accepted or not: tells a
                    // sample without a candidate from one whose transform or place is off.
                    for m in matches.iter().filter(|m| Some(m.track as usize) == ref_index) {
                        let occ: Vec<(f64, f64, f64)> = m
                            .occurrences
                            .iter()
                            .map(|o| (o.query_start_s, o.query_end_s, o.ref_start_s))
                            .collect();
                        eprintln!(
                            "candidate: {query} truth query {qs:.1}-{qe:.1} s ref {:.1} s tempo {:.3} | \
                             significance {:.1} verification {:.1} tempo {:.3} pitch {:.2} {occ:.1?}",
                            s["ref_start_s"].as_f64().unwrap_or(0.0),
                            s["tempo"].as_f64().unwrap_or(0.0),
                            m.significance,
                            m.verification,
                            m.tempo,
                            m.pitch_semitones,
                        );
                    }
                }
                found.push(hit.map(|(k, m)| {
                    used[k] = true;
                    (evidence(m), m.verification)
                }));
            }
            if std::env::var("SWEEP_DEBUG").is_ok() {
                for (m, _) in matches.iter().zip(&used).filter(|(m, u)| !**u && (evidence(m) >= 30.0 || m.verification > 0.0)) {
                    eprintln!(
                        "wrong: {query} -> {} sig {:.1} verification {:.1} tempo {:.3} pitch {:.2} {:?}",
                        refs[m.track as usize], m.significance, m.verification, m.tempo, m.pitch_semitones, m.occurrences
                    );
                }
            }
            let wrong = matches
                .iter()
                .zip(&used)
                .filter(|(_, u)| !**u)
                .map(|(m, _)| (evidence(m), m.verification))
                .collect();
            Ok(Outcome {
                condition: t["condition"].as_str().unwrap_or("?").to_string(),
                found,
                wrong,
                lookups: quads.len(),
                hits: n_hits,
                first_stage,
            })
        })
        .collect::<Result<_>>()?;
    let n = outcomes.len().max(1) as f64;
    println!(
        "per query: {:.0} lookups, {:.0} hits",
        outcomes.iter().map(|o| o.lookups).sum::<usize>() as f64 / n,
        outcomes.iter().map(|o| o.hits).sum::<usize>() as f64 / n
    );
    let stages: Vec<&FirstStage> = outcomes
        .iter()
        .filter_map(|o| o.first_stage.as_ref())
        .collect();
    if !stages.is_empty() {
        let mean = |f: &dyn Fn(&FirstStage) -> usize| {
            stages.iter().map(|s| f(s)).sum::<usize>() as f64 / stages.len() as f64
        };
        let mut tracks: Vec<usize> = stages.iter().map(|s| s.tracks).collect();
        tracks.sort_unstable();
        println!(
            "shortlist per query: {:.0} 4-peak lookups, {:.0} 4-peak hits, {:.1} references \
             (median {}, max {}), {:.0} triplet hits kept",
            mean(&|s| s.lookups),
            mean(&|s| s.hits),
            mean(&|s| s.tracks),
            tracks[tracks.len() / 2],
            tracks[tracks.len() - 1],
            mean(&|s| s.kept_hits),
        );
    }
    for &threshold in &args.thresholds {
        print_row(&outcomes, threshold, |&(evidence, _)| evidence >= threshold);
    }
    if verify {
        let mut wrong: Vec<f64> = outcomes
            .iter()
            .flat_map(|o| o.wrong.iter().map(|w| w.1))
            .collect();
        wrong.sort_by(|a, b| b.total_cmp(a));
        println!(
            "highest verification scores of wrong candidates: {:.1?}",
            &wrong[..wrong.len().min(8)]
        );
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

/// One time scale of a multi-scale query (`QSCALES`, experiment of session 19).
struct QueryScale {
    /// The scale's hop over the base hop: its frames in base frames.
    ratio: f32,
    /// With `QSPEEDS`: the speed this scale undoes by resampling the query (the hop is the
    /// base hop), and the log-frequency shift that brings its bins back to the query's.
    speed: Option<(f32, f32)>,
    /// Time factors searched either way of the scale's own.
    max_factor: f32,
    fp: Fingerprinter,
}

/// With `QSCALES` (time scales, e.g. `0.7,1,1.4`): one fingerprinter per scale, whose hop
/// is the base hop divided by the scale, so that a sample playing at that speed in the
/// query is analysed on the reference's own time grid; each searches time factors within
/// `QTF` (default 1.2), or the `:factor` after it, of its scale. With `QSPEEDS` instead:
/// one per speed, at the base hop, for the query resampled to undo that speed (`QTF`
/// default 1.1).
fn scale_fingerprinters(base: &Params) -> Result<Vec<QueryScale>> {
    if let Some(speeds) = scale_list("QSPEEDS", 1.1)? {
        return speeds
            .into_iter()
            .map(|(speed, max_factor)| {
                let rate = (base.sample_rate_hz as f32 * speed).round();
                let speed = rate / base.sample_rate_hz as f32;
                let fp = Fingerprinter::new(Params {
                    max_time_factor: max_factor,
                    ..base.clone()
                })?;
                Ok(QueryScale {
                    ratio: 1.0 / speed,
                    speed: Some((speed, speed.log2() * base.bins_per_octave as f32)),
                    max_factor,
                    fp,
                })
            })
            .collect();
    }
    let Some(scales) = scale_list("QSCALES", 1.2)? else {
        return Ok(Vec::new());
    };
    scales
        .into_iter()
        .map(|(scale, max_factor)| {
            let hop = (base.hop as f32 / scale).round() as usize;
            let fp = Fingerprinter::new(Params {
                hop,
                max_time_factor: max_factor,
                ..base.clone()
            })?;
            Ok(QueryScale {
                ratio: hop as f32 / base.hop as f32,
                speed: None,
                max_factor,
                fp,
            })
        })
        .collect()
}

/// The list in environment variable `var` (`value[:factor],...`), each value with its
/// factor (`QTF`, else `default_factor`, where no `:factor` follows it); `None` unset.
fn scale_list(var: &str, default_factor: f64) -> Result<Option<Vec<(f32, f32)>>> {
    let Ok(list) = std::env::var(var) else {
        return Ok(None);
    };
    let default_factor = env_or("QTF", default_factor) as f32;
    list.split(',')
        .map(|x| {
            let (value, factor) = match x.split_once(':') {
                Some((v, t)) => (v, t.parse().context(var.to_string())?),
                None => (x, default_factor),
            };
            Ok((value.trim().parse().context(var.to_string())?, factor))
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// The query quads of every scale, their times and spans in the base hop's frames, and
/// the index of each quad's scale; `None` without scales.
fn scaled_quads(
    scales: &[QueryScale],
    samples: &[f32],
) -> Result<Option<(Vec<fingerprint::QueryQuad>, Vec<usize>)>> {
    if scales.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    let mut scale_of = Vec::new();
    for (i, scale) in scales.iter().enumerate() {
        let (quads, bin_shift) = match scale.speed {
            Some((speed, bin_shift)) => {
                let rate = scale.fp.params().sample_rate_hz;
                let out_rate = (rate as f32 * speed).round() as u32;
                let slowed = audio::resample_mono(samples, rate, out_rate)
                    .context("resampling the query")?;
                (scale.fp.query(&slowed), bin_shift)
            }
            None => (scale.fp.query(samples), 0.0),
        };
        out.extend(quads.into_iter().map(|mut q| {
            q.time *= scale.ratio;
            q.span *= scale.ratio;
            q.bin += bin_shift;
            q
        }));
        scale_of.resize(out.len(), i);
    }
    Ok(Some((out, scale_of)))
}
