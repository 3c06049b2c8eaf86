//! Where a true sample's evidence is lost (`ORACLE=1 cratedigger-bench sweep ...`).
//!
//! For every true sample of a query, knowing its transform from truth.json, it counts:
//! - the reference peaks of the sampled region, and how many of them the query's quad
//!   peak set still holds at the mapped place (peak survival in the mix);
//! - the reference quads of that region, how many have all four peaks surviving, and how
//!   many of those the query also forms (its anchor's partner list holds all three);
//! - the quad hits of the reference that agree with the true transform;
//! - the verification score at the true transform (what an ideal candidate would score).
//!
//! These separate the three ways a sample is missed: its peaks do not survive the mix,
//! its quads are not formed by the query, or the matcher does not propose the candidate.

use fingerprint::{Params, Peak};
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
}

/// One line per true sample of the query `t` (an entry of truth.json); `hash_peaks` and
/// `verify_peaks` are each reference's two peak sets.
pub fn report(
    t: &serde_json::Value,
    refs: &[String],
    hash_peaks: &[Vec<RefPeak>],
    verify_peaks: &[Vec<RefPeak>],
    seen: &Seen<'_>,
    p: &MatchParams,
    fpp: &Params,
) -> Vec<String> {
    let name = t["query"]
        .as_str()
        .unwrap_or("?")
        .rsplit('/')
        .next()
        .unwrap_or("?");
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
        let region: Vec<RefPeak> = hash_peaks[track]
            .iter()
            .copied()
            .filter(|&(t, _)| (line.r0..=r1).contains(&(t as f64)))
            .collect();
        let survival = quad_survival(&region, &line, seen.query_peaks, fpp);
        let agreeing_hits: Vec<&Hit> = seen
            .hits
            .iter()
            .filter(|h| {
                h.track as usize == track && agrees(h, &seen.quads[h.query as usize], &line)
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
        let found = seen
            .matches
            .iter()
            .any(|m| m.track as usize == track && m.is_accepted(p));
        out.push(format!(
            "oracle {condition} {name} found={found} peaks={}/{} quads={} all4={} formed={} \
             agreeing_hits={agreeing} ideal_verification={:.1}",
            survival.peaks_surviving,
            region.len(),
            survival.quads,
            survival.all_four,
            survival.formed,
            ideal.map_or(0.0, |v| v.llr),
        ));
    }
    out
}

/// Whether a hit's transform and place agree with the true line.
fn agrees(h: &Hit, q: &QueryQuad, line: &Line) -> bool {
    let tempo = (h.r_span_frames() / q.span) as f64;
    let shift = (q.bin - h.r_bin_bins()) as f64;
    let expected_q = line.q0 + (h.r_time_frames() as f64 - line.r0) / line.tempo;
    (tempo / line.tempo).ln().abs() < 0.04
        && (shift - line.shift_bins).abs() <= 1.5
        && (q.time as f64 - expected_q).abs() < 12.0
}

#[derive(Default)]
struct Survival {
    peaks_surviving: usize,
    quads: usize,
    all_four: usize,
    formed: usize,
}

/// Replays the reference's quad construction over `region` and the query's over the
/// query peaks that the region's peaks map to.
fn quad_survival(region: &[RefPeak], line: &Line, query: &[Peak], fpp: &Params) -> Survival {
    let image = |&(t, b): &RefPeak| -> Option<usize> {
        let qt = line.q0 + (t as f64 - line.r0) / line.tempo;
        let qb = b as f64 + line.shift_bins;
        query
            .iter()
            .position(|x| (x.time as f64 - qt).abs() <= 1.5 && (x.bin as f64 - qb).abs() <= 1.0)
    };
    let images: Vec<Option<usize>> = region.iter().map(image).collect();
    let mut s = Survival {
        peaks_surviving: images.iter().flatten().count(),
        ..Survival::default()
    };
    let (q_min_dt, q_max_dt) = (
        fpp.quad_min_dt_frames / fpp.max_time_factor,
        fpp.quad_max_dt_frames * fpp.max_time_factor,
    );
    for (i, a) in region.iter().enumerate() {
        let partners: Vec<usize> = (i + 1..region.len())
            .filter(|&j| {
                let dt = region[j].0 - a.0;
                (fpp.quad_min_dt_frames..=fpp.quad_max_dt_frames).contains(&dt)
                    && (region[j].1 - a.1).abs() <= fpp.quad_df_range_bins
            })
            .take(fpp.ref_partners)
            .collect();
        let query_partners: Vec<usize> = images[i]
            .map(|qa| {
                let a = query[qa];
                (qa + 1..query.len())
                    .filter(|&j| {
                        let dt = query[j].time - a.time;
                        (q_min_dt..=q_max_dt).contains(&dt)
                            && (query[j].bin - a.bin).abs() <= fpp.quad_df_range_bins
                    })
                    .take(fpp.query_partners)
                    .collect()
            })
            .unwrap_or_default();
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
