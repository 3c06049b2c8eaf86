//! Where a true sample's evidence is lost (`ORACLE=1 cratedigger-bench sweep ...`).
//!
//! For every true sample of a query, knowing its transform from truth.json, it counts:
//! - the reference peaks of the sampled region, and how many of them the query's quad
//!   peak set still holds at the mapped place (peak survival in the mix);
//! - the reference quads of that region, how many have all four peaks surviving, and how
//!   many of those the query also forms (its anchor's partner list holds all three);
//! - of the triplets the query forms (as above), how many it looks up under the
//!   reference's own hash (`keyed3`), and for the others which cells of the hash differ
//!   (`missed_by`: the two frequency differences, the time ratio, the loudness-order
//!   bits, and how often the two partners swapped their time order, then the triplets
//!   formed); `ORACLE_KEYS` also prints each such triplet's errors in bins and frames;
//! - the quad hits of the reference that agree with the true transform;
//! - the verification score at the true transform (what an ideal candidate would score);
//! - the reference's verification peaks scored against the query's *spectrum* instead of
//!   its peaks (local spectral contrast at the mapped place, as a z-score against the same
//!   line displaced in time and pitch): whether a sample whose peaks no longer stand out
//!   still shows in the spectrum.
//!
//! These separate the three ways a sample is missed: its peaks do not survive the mix,
//! its quads are not formed by the query, or the matcher does not propose the candidate.

use fingerprint::{LogSpectrogram, Params, Peak};
use matcher::verify::{Line, PeakGrid, RefPeak, verify_line};
use matcher::{Hit, MatchParams, QueryQuad, SampleMatch};

/// What the sweep saw for one query.
pub struct Seen<'a> {
    pub hits: &'a [Hit],
    /// The query quads the hits index.
    pub quads: &'a [QueryQuad],
    pub matches: &'a [SampleMatch],
    pub query_peaks: &'a [Peak],
    pub grid: &'a PeakGrid,
    /// The query's log spectrogram, for the contrast test.
    pub spectrogram: &'a LogSpectrogram,
}

/// Each reference's peak sets, by reference.
pub struct RefPeakSets<'a> {
    /// The hash peaks as the store keeps them...
    pub hash: &'a [Vec<RefPeak>],
    /// ... and as the fingerprint made them (with their strengths, for the hash itself).
    pub hash_full: &'a [Vec<Peak>],
    /// The verification peaks as the store keeps them.
    pub verify: &'a [Vec<RefPeak>],
}

/// One line per true sample of the query `t` (an entry of truth.json).
pub fn report(
    t: &serde_json::Value,
    refs: &[String],
    peaks: &RefPeakSets<'_>,
    seen: &Seen<'_>,
    p: &MatchParams,
    fpp: &Params,
) -> Vec<String> {
    let (hash_peaks, hash_full, verify_peaks) = (peaks.hash, peaks.hash_full, peaks.verify);
    let name = query_name(t);
    let condition = t["condition"].as_str().unwrap_or("?");
    let mut out = Vec::new();
    for s in t["samples"].as_array().into_iter().flatten() {
        let Some(track) = refs
            .iter()
            .position(|r| Some(r.as_str()) == s["ref_path"].as_str())
        else {
            continue;
        };
        let num = |key: &str, default: f64| s[key].as_f64().unwrap_or(default);
        let line = Line {
            tempo: num("tempo", 1.0),
            r0: num("ref_start_s", 0.0) / p.frame_s,
            q0: num("query_start_s", 0.0) / p.frame_s,
            shift_bins: num("pitch_semitones", 0.0) * p.bins_per_semitone,
        };
        let r1 = num("ref_end_s", 0.0) / p.frame_s;
        let hash_region = region(&hash_peaks[track], line.r0, r1);
        let survival = quad_survival(&hash_region, &line, seen.query_peaks, fpp);
        let full_region: Vec<Peak> = hash_full[track]
            .iter()
            .copied()
            .filter(|x| (line.r0..=r1).contains(&f64::from(x.time)))
            .collect();
        let keyed = triplet_keys(&full_region, &line, seen.query_peaks, fpp);
        // `ORACLE_TEMPO_TOL`: how far (|ln|) a hit's own tempo may be from the truth's.
        let tempo_tol = std::env::var("ORACLE_TEMPO_TOL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.04);
        let agreeing_hits: Vec<&Hit> = seen
            .hits
            .iter()
            .filter(|h| {
                h.track as usize == track
                    && agrees(h, &seen.quads[h.query as usize], &line, tempo_tol)
            })
            .collect();
        let agreeing = agreeing_hits.len();
        if std::env::var("ORACLE_HITS").is_ok() {
            for h in agreeing_hits {
                let q = &seen.quads[h.query as usize];
                out.push(format!(
                    "hit {name} q {:.1} r {:.1} span_q {:.2} span_r {:.2} bin_q {:.2} bin_r {:.2}",
                    q.time,
                    h.r_time_frames(),
                    q.span,
                    h.r_span_frames(),
                    q.bin,
                    h.r_bin_bins()
                ));
            }
        }
        let ideal = verify_line(line, &verify_peaks[track], seen.grid, &p.verify);
        let verify_region = region(&verify_peaks[track], line.r0, r1);
        let contrast = contrast(&verify_region, &line, seen.spectrogram);
        let found = seen
            .matches
            .iter()
            .any(|m| m.track as usize == track && m.is_accepted(p));
        out.push(format!(
            "oracle {condition} {name} found={found} peaks={}/{} quads={} all4={} formed={} \
             agreeing_hits={agreeing} ideal_verification={:.1} contrast={:.3} null={:.3}+-{:.3} z={:.1} \
             formed3={}/{} formed4={}/{} formed5={}/{} keyed3={} missed_by={:?}",
            survival.peaks_surviving,
            hash_region.len(),
            survival.quads,
            survival.all_four,
            survival.formed,
            ideal.map_or(0.0, |v| v.llr),
            contrast.on_line,
            contrast.null_mean,
            contrast.null_sd,
            contrast.z(),
            survival.features_by_size[3].1,
            survival.features_by_size[3].0,
            survival.features_by_size[4].1,
            survival.features_by_size[4].0,
            survival.features_by_size[5].1,
            survival.features_by_size[5].0,
            keyed.keyed,
            keyed.missed_by,
        ));
    }
    out
}

/// One line per candidate (significance >= `p.min_candidate_significance`, the ones the
/// engine verifies) on a reference that `t` does not sample: the contrast z-score of its
/// first occurrence's line, the chance side of [`contrast`]. With `ORACLE_ALL` set, one
/// line for every candidate, true or not and of any significance, each saying whether it
/// is a true sample and whether it is accepted: what a contrast test of the candidates
/// the matcher already makes would gain and risk.
pub fn chance_contrast(
    t: &serde_json::Value,
    refs: &[String],
    verify_peaks: &[Vec<RefPeak>],
    seen: &Seen<'_>,
    p: &MatchParams,
) -> Vec<String> {
    let name = query_name(t);
    let sampled: Vec<&str> = t["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["ref_path"].as_str())
        .collect();
    let mut out = Vec::new();
    for m in seen.matches {
        let track = m.track as usize;
        let all = std::env::var("ORACLE_ALL").is_ok();
        if !all
            && (m.significance < p.min_candidate_significance
                || sampled.contains(&refs[track].as_str()))
        {
            continue;
        }
        let truth = t["samples"].as_array().into_iter().flatten().any(|s| {
            s["ref_path"].as_str() == Some(refs[track].as_str())
                && m.occurrences.iter().any(|o| {
                    o.query_start_s < s["query_end_s"].as_f64().unwrap_or(0.0)
                        && s["query_start_s"].as_f64().unwrap_or(0.0) < o.query_end_s
                })
        });
        let Some(o) = m.occurrences.first() else {
            continue;
        };
        let line = Line::of_occurrence(o, m.tempo, m.pitch_semitones, p);
        let r1 = o.ref_end_s / p.frame_s;
        let peaks = region(&verify_peaks[track], line.r0, r1);
        let c = contrast(&peaks, &line, seen.spectrogram);
        out.push(format!(
            "chance-contrast {truth} {} {name} -> {} significance {:.1} verification {:.1} peaks {} contrast={:.3} z={:.1}",
            m.is_accepted(p),
            refs[track].rsplit('/').next().unwrap_or("?"),
            m.significance,
            m.verification,
            peaks.len(),
            c.on_line,
            c.z(),
        ));
    }
    out
}

/// The query file's name, for the report lines.
fn query_name(t: &serde_json::Value) -> &str {
    t["query"]
        .as_str()
        .unwrap_or("?")
        .rsplit('/')
        .next()
        .unwrap_or("?")
}

/// The peaks of `peaks` from reference frame `r0` to `r1`.
fn region(peaks: &[RefPeak], r0: f64, r1: f64) -> Vec<RefPeak> {
    peaks
        .iter()
        .copied()
        .filter(|&(t, _)| (r0..=r1).contains(&(t as f64)))
        .collect()
}

/// Whether a hit's transform and place agree with the true line.
fn agrees(h: &Hit, q: &QueryQuad, line: &Line, tempo_tol: f64) -> bool {
    let tempo = (h.r_span_frames() / q.span) as f64;
    let shift = (q.bin - h.r_bin_bins()) as f64;
    let expected_q = line.q0 + (h.r_time_frames() as f64 - line.r0) / line.tempo;
    (tempo / line.tempo).ln().abs() < tempo_tol
        && (shift - line.shift_bins).abs() <= 1.5
        && (q.time as f64 - expected_q).abs() < 12.0
}

/// The query peak each of `points` maps to along `line`: one within 1.5 frames and 1 bin
/// of the image, if any.
fn images(points: &[RefPeak], line: &Line, query: &[Peak]) -> Vec<Option<usize>> {
    points
        .iter()
        .map(|&(t, b)| {
            let qt = line.q0 + (f64::from(t) - line.r0) / line.tempo;
            let qb = f64::from(b) + line.shift_bins;
            query.iter().position(|x| {
                (f64::from(x.time) - qt).abs() <= 1.5 && (f64::from(x.bin) - qb).abs() <= 1.0
            })
        })
        .collect()
}

/// The partners of `points[i]` as a reference picks them: the first `ref_partners` later
/// points within the quad's time span and frequency range.
fn reference_partners(points: &[RefPeak], i: usize, fpp: &Params) -> Vec<usize> {
    let a = points[i];
    (i + 1..points.len())
        .filter(|&j| {
            let dt = points[j].0 - a.0;
            (fpp.quad_min_dt_frames..=fpp.quad_max_dt_frames).contains(&dt)
                && (points[j].1 - a.1).abs() <= fpp.quad_df_range_bins
        })
        .take(fpp.ref_partners)
        .collect()
}

/// The partners of query peak `qa` as a query picks them: the first `query_partners`
/// later peaks within the span widened by the largest time factor, and the frequency range.
fn query_partners(query: &[Peak], qa: usize, fpp: &Params) -> Vec<usize> {
    let a = query[qa];
    let (min_dt, max_dt) = (
        fpp.quad_min_dt_frames / fpp.max_time_factor,
        fpp.quad_max_dt_frames * fpp.max_time_factor,
    );
    (qa + 1..query.len())
        .filter(|&j| {
            let dt = query[j].time - a.time;
            (min_dt..=max_dt).contains(&dt)
                && (query[j].bin - a.bin).abs() <= fpp.quad_df_range_bins
        })
        .take(fpp.query_partners)
        .collect()
}

/// Of the triplets the query forms (as [`quad_survival`] counts them, on the fingerprint's
/// own peaks): how many the query looks up under the reference's hash, and for the others
/// which cells differ (frequency differences 1 and 2, ratio, order bits) and how often the
/// two partners swapped their time order.
#[derive(Default)]
struct Keyed {
    keyed: usize,
    /// [df1, df2, ratio, order, swapped, formed]
    missed_by: [usize; 6],
}

fn triplet_keys(region: &[Peak], line: &Line, query: &[Peak], fpp: &Params) -> Keyed {
    let mut k = Keyed::default();
    // The hooks reproduce the triplet hash only.
    if fpp.hash_peaks != 3 {
        return k;
    }
    let print_misses = std::env::var("ORACLE_KEYS").is_ok();
    let points: Vec<RefPeak> = region.iter().map(|x| (x.time, x.bin)).collect();
    let images = images(&points, line, query);
    for (i, a) in region.iter().enumerate() {
        let Some(qa) = images[i] else { continue };
        let partners = reference_partners(&points, i, fpp);
        let qa_peak = query[qa];
        let query_partners = query_partners(query, qa, fpp);
        for x in 0..partners.len() {
            for y in x + 1..partners.len() {
                let (Some(qb), Some(qc)) = (images[partners[x]], images[partners[y]]) else {
                    continue;
                };
                if !(query_partners.contains(&qb) && query_partners.contains(&qc)) {
                    continue;
                }
                k.missed_by[5] += 1;
                let Some((ref_cells, _)) = fingerprint::quads::triplet_diagnostics(
                    a,
                    &[region[partners[x]], region[partners[y]]],
                    fpp,
                ) else {
                    continue;
                };
                let swapped = query[qb].time > query[qc].time;
                let rest = if swapped {
                    [query[qc], query[qb]]
                } else {
                    [query[qb], query[qc]]
                };
                let Some((q_cells, hashes)) =
                    fingerprint::quads::triplet_diagnostics(&qa_peak, &rest, fpp)
                else {
                    continue;
                };
                if hashes.contains(&fingerprint::quads::triplet_hash(ref_cells, fpp)) {
                    k.keyed += 1;
                    continue;
                }
                for c in 0..4 {
                    if ref_cells[c] != q_cells[c] {
                        k.missed_by[c] += 1;
                    }
                }
                if print_misses {
                    // Continuous errors: frequency differences in bins, the middle
                    // partner's place in frames of the reference's span.
                    let (rb, rc) = (region[partners[x]], region[partners[y]]);
                    let span = rc.time - a.time;
                    let ratio =
                        |a: &Peak, b: &Peak, c: &Peak| (b.time - a.time) / (c.time - a.time);
                    eprintln!(
                        "keymiss span {span:.1} e_df1 {:.2} e_df2 {:.2} e_ratio_frames {:.2} order {}",
                        (rest[0].bin - qa_peak.bin) - (rb.bin - a.bin),
                        (rest[1].bin - qa_peak.bin) - (rc.bin - a.bin),
                        (ratio(&qa_peak, &rest[0], &rest[1]) - ratio(a, &rb, &rc)) * span,
                        u32::from(q_cells[3] != ref_cells[3]),
                    );
                }
                if swapped {
                    k.missed_by[4] += 1;
                }
            }
        }
    }
    k
}

#[derive(Default)]
struct Survival {
    peaks_surviving: usize,
    quads: usize,
    all_four: usize,
    formed: usize,
    /// By size k (3 to 5 peaks: an anchor and k - 1 of its reference partners): how many
    /// such features the reference has in the region, and how many of them the query
    /// still forms (every peak survives and every partner is among the query anchor's
    /// partners). How a shortlist on features of more peaks, far more specific keys,
    /// would keep the samples found today.
    features_by_size: [(usize, usize); 6],
}

/// Replays the reference's quad construction over `region` and the query's over the
/// query peaks that the region's peaks map to.
fn quad_survival(region: &[RefPeak], line: &Line, query: &[Peak], fpp: &Params) -> Survival {
    let images = images(region, line, query);
    let mut s = Survival {
        peaks_surviving: images.iter().flatten().count(),
        ..Survival::default()
    };
    for i in 0..region.len() {
        let partners = reference_partners(region, i, fpp);
        let query_partners = images[i]
            .map(|qa| query_partners(query, qa, fpp))
            .unwrap_or_default();
        for subset in 1u32..1 << partners.len() {
            let size = subset.count_ones() as usize + 1;
            if !(3..=5).contains(&size) {
                continue;
            }
            s.features_by_size[size].0 += 1;
            let formed = images[i].is_some()
                && (0..partners.len())
                    .filter(|&k| subset >> k & 1 == 1)
                    .all(|k| images[partners[k]].is_some_and(|q| query_partners.contains(&q)));
            if formed {
                s.features_by_size[size].1 += 1;
            }
        }
        for x in 0..partners.len() {
            for y in x + 1..partners.len() {
                for z in y + 1..partners.len() {
                    s.quads += 1;
                    let trio = [partners[x], partners[y], partners[z]].map(|k| images[k]);
                    if images[i].is_none() || trio.iter().any(Option::is_none) {
                        continue;
                    }
                    s.all_four += 1;
                    if trio.iter().flatten().all(|k| query_partners.contains(k)) {
                        s.formed += 1;
                    }
                }
            }
        }
    }
    s
}

/// Mean local spectral contrast of the query along a line, against the same along null
/// lines.
struct Contrast {
    on_line: f64,
    null_mean: f64,
    null_sd: f64,
}

impl Contrast {
    /// How many null standard deviations the line stands above the nulls' mean.
    fn z(&self) -> f64 {
        (self.on_line - self.null_mean) / self.null_sd.max(1e-9)
    }
}

/// Mean local spectral contrast of the query at the images of `region` along `line`: the
/// log power at the mapped cell (best of +-1 frame and bin) less the median of the query
/// frame within +-12 bins; the nulls are the same line displaced 0.3-3.2 s either way
/// along the query and 7 bins either way in pitch.
fn contrast(region: &[RefPeak], line: &Line, spec: &LogSpectrogram) -> Contrast {
    let contrast_at = |l: &Line| -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        let mut window: Vec<f32> = Vec::with_capacity(25);
        for &(t, b) in region {
            let qt = (l.q0 + (t as f64 - l.r0) / l.tempo).round();
            let qb = (b as f64 + l.shift_bins).round();
            if qt < 1.0 || qb < 1.0 {
                continue;
            }
            let (qt, qb) = (qt as usize, qb as usize);
            if qt + 1 >= spec.n_frames || qb + 1 >= spec.n_bins {
                continue;
            }
            let mut best = f32::NEG_INFINITY;
            for f in qt - 1..=qt + 1 {
                for k in qb - 1..=qb + 1 {
                    best = best.max(spec.at(f, k));
                }
            }
            let frame = spec.frame(qt);
            window.clear();
            window.extend_from_slice(&frame[qb.saturating_sub(12)..(qb + 13).min(spec.n_bins)]);
            window.sort_by(f32::total_cmp);
            sum += (best - window[window.len() / 2]) as f64;
            n += 1;
        }
        if n == 0 { 0.0 } else { sum / n as f64 }
    };
    let on = contrast_at(line);
    let mut nulls = Vec::new();
    for k in 2..=20 {
        for sign in [-1.0, 1.0] {
            nulls.push(contrast_at(&Line {
                q0: line.q0 + sign * 20.0 * k as f64,
                ..*line
            }));
        }
    }
    for db in [-7.0, 7.0] {
        nulls.push(contrast_at(&Line {
            shift_bins: line.shift_bins + db,
            ..*line
        }));
    }
    let n = nulls.len() as f64;
    let mean = nulls.iter().sum::<f64>() / n;
    let sd = (nulls.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    Contrast {
        on_line: on,
        null_mean: mean,
        null_sd: sd,
    }
}
