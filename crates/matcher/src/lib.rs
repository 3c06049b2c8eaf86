//! Turns fingerprint hits into verified sample occurrences: which reference, where in
//! both recordings, at what time factor and pitch shift, how many times, and how sure.
//!
//! A hit pairs a query quad with a reference quad of equal hash. Each hit alone says
//! roughly how the reference was transformed: the ratio of the two quads' time spans is
//! the time factor, the difference of their anchor bins is the pitch shift. Hits of a real
//! sample agree on both and, in addition, line up on `q = a * r + b` (query time against
//! reference time) for one slope `a` and one intercept `b` per repetition of a loop. Chance
//! hits agree on nothing. The matcher therefore:
//! 1. votes per reference track in a (log time factor, pitch shift) histogram;
//! 2. for each strong cell, clusters the hits by intercept `b`, one cluster per
//!    occurrence (a loop repeated eight times gives eight clusters at one slope);
//! 3. fits one common slope over all clusters (pooled within-cluster regression), so every
//!    repetition of a loop sharpens the tempo estimate, then one intercept per cluster;
//! 4. keeps the inliers of those lines and scores the whole group against a Poisson model
//!    of chance hits, corrected for the number of places it could have been found.
//!
//! This crate does no IO.

mod score;

pub use score::significance;

/// One hash match between a query quad and a stored reference quad.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Reference track.
    pub track: u32,
    /// Query anchor time in frames.
    pub q_time: f32,
    /// Query anchor log-frequency bin.
    pub q_bin: f32,
    /// Query quad span in frames.
    pub q_span: f32,
    /// Reference anchor time in frames.
    pub r_time: f32,
    /// Reference anchor log-frequency bin.
    pub r_bin: f32,
    /// Reference quad span in frames.
    pub r_span: f32,
}

/// Settings of the matcher.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchParams {
    /// Seconds per frame of the fingerprint.
    pub frame_s: f64,
    /// Log-frequency bins per semitone of the fingerprint.
    pub bins_per_semitone: f64,
    /// Largest time factor searched, either way.
    pub max_time_factor: f64,
    /// Largest pitch shift searched, either way.
    pub max_pitch_semitones: f64,
    /// Width of a histogram cell in natural-log time factor.
    pub log_factor_cell: f64,
    /// Width of a histogram cell in pitch bins.
    pub pitch_cell_bins: f64,
    /// Hits whose intercepts lie closer than this many frames chain into one cluster.
    pub cluster_gap_frames: f64,
    /// A hit is an inlier of a fitted line within this many frames.
    pub inlier_frames: f64,
    /// An occurrence needs at least this many inlier hits...
    pub min_occurrence_hits: usize,
    /// ...and a match at least this many over all its occurrences.
    pub min_match_hits: usize,
    /// A match is reported when its corrected significance (-log10 of the chance
    /// probability) reaches this.
    pub min_significance: f64,
}

impl Default for MatchParams {
    fn default() -> Self {
        Self {
            frame_s: 0.008,
            bins_per_semitone: 3.0,
            max_time_factor: 2.05,
            max_pitch_semitones: 12.5,
            log_factor_cell: 0.03,
            pitch_cell_bins: 1.0,
            cluster_gap_frames: 6.0,
            inlier_frames: 4.0,
            min_occurrence_hits: 3,
            min_match_hits: 6,
            min_significance: 4.0,
        }
    }
}

/// One place where a reference segment sits in the query.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Occurrence {
    /// Start of the segment in the query, seconds.
    pub query_start_s: f64,
    /// End of the segment in the query, seconds.
    pub query_end_s: f64,
    /// Start of the segment in the reference, seconds.
    pub ref_start_s: f64,
    /// End of the segment in the reference, seconds.
    pub ref_end_s: f64,
    /// Inlier hits supporting this occurrence.
    pub hits: usize,
}

/// A reference the query samples, with every occurrence at one transform.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampleMatch {
    /// Reference track.
    pub track: u32,
    /// Reference seconds per query second (> 1: the sample plays faster in the query).
    pub tempo: f64,
    /// Pitch shift of the sample in the query, semitones.
    pub pitch_semitones: f64,
    /// Occurrences in query order.
    pub occurrences: Vec<Occurrence>,
    /// Inlier hits over all occurrences.
    pub hits: usize,
    /// -log10 of the probability that chance hits would form a group this strong anywhere
    /// in this query (corrected for the number of places searched).
    pub significance: f64,
}

/// Finds every sample occurrence the hits support, strongest first.
pub fn find_matches(mut hits: Vec<Hit>, p: &MatchParams) -> Vec<SampleMatch> {
    let max_lf = p.max_time_factor.ln();
    let max_pitch = p.max_pitch_semitones * p.bins_per_semitone;
    hits.retain(|h| {
        h.q_span > 0.0
            && h.r_span > 0.0
            && ((h.q_span / h.r_span) as f64).ln().abs() <= max_lf
            && ((h.q_bin - h.r_bin) as f64).abs() <= max_pitch
    });
    hits.sort_unstable_by_key(|h| h.track);
    let query_frames = hits.iter().map(|h| h.q_time).fold(0f32, f32::max) as f64 + 1.0;
    let n_tracks_hit = hits
        .chunk_by(|a, b| a.track == b.track)
        .filter(|c| c.len() >= p.min_match_hits)
        .count()
        .max(1);
    let mut out = Vec::new();
    for track_hits in hits.chunk_by(|a, b| a.track == b.track) {
        if track_hits.len() < p.min_match_hits {
            continue;
        }
        out.extend(match_track(track_hits, p, query_frames, n_tracks_hit));
    }
    out.sort_by(|a, b| b.significance.total_cmp(&a.significance));
    out
}

/// A hit reduced to what the per-track search needs.
#[derive(Clone, Copy, Debug)]
struct Point {
    log_factor: f64,
    pitch_bins: f64,
    q: f64,
    r: f64,
    q_span: f64,
    r_span: f64,
}

fn match_track(
    hits: &[Hit],
    p: &MatchParams,
    query_frames: f64,
    n_tracks_hit: usize,
) -> Vec<SampleMatch> {
    let track = hits[0].track;
    let points: Vec<Point> = hits
        .iter()
        .map(|h| Point {
            log_factor: ((h.q_span / h.r_span) as f64).ln(),
            pitch_bins: (h.q_bin - h.r_bin) as f64,
            q: h.q_time as f64,
            r: h.r_time as f64,
            q_span: h.q_span as f64,
            r_span: h.r_span as f64,
        })
        .collect();
    let grid = Grid::new(p);
    let mut counts = vec![0u32; grid.n_lf * grid.n_pitch];
    for pt in &points {
        counts[grid.cell(pt)] += 1;
    }
    // Candidate cells: local maxima of the 3x3 neighbourhood sums, strongest first.
    let sums = grid.neighbourhood_sums(&counts);
    let mut cells: Vec<usize> = (0..sums.len())
        .filter(|&c| sums[c] as usize >= p.min_match_hits && grid.is_local_max(&sums, c))
        .collect();
    cells.sort_by_key(|&c| std::cmp::Reverse(sums[c]));
    cells.truncate(MAX_CELLS_PER_TRACK);

    let mut claimed = vec![false; points.len()];
    let mut out = Vec::new();
    // The places a chance group could have formed: every candidate track, every cell of
    // the transform grid, every offset of the query.
    let trials = n_tracks_hit as f64 * counts.len() as f64 * (query_frames / CLUSTER_SCALE_FRAMES);
    for cell in cells {
        let (lf_c, pitch_c) = grid.centre(cell);
        let window: Vec<usize> = (0..points.len())
            .filter(|&i| {
                !claimed[i]
                    && (points[i].log_factor - lf_c).abs() <= 1.5 * p.log_factor_cell
                    && (points[i].pitch_bins - pitch_c).abs() <= 1.5 * p.pitch_cell_bins
            })
            .collect();
        if window.len() < p.min_match_hits {
            continue;
        }
        let Some(group) = fit_group(&points, &window, p) else {
            continue;
        };
        let n_hits: usize = group.clusters.iter().map(|c| c.len()).sum();
        if n_hits < p.min_match_hits {
            continue;
        }
        // Chance rate: the window's hits spread uniformly over the intercepts they span.
        let b_extent = query_frames + group.slope * grid.max_r(&points, &window) + 1.0;
        let rate = window.len() as f64 / b_extent.max(1.0);
        let occupied = group.clusters.len() as f64 * (2.0 * p.inlier_frames + 1.0);
        let sig = significance(n_hits, rate * occupied, trials);
        if sig < p.min_significance {
            continue;
        }
        for c in &group.clusters {
            for &i in c {
                claimed[i] = true;
            }
        }
        out.push(group.into_match(track, &points, p, sig));
    }
    out
}

/// Reference frames at which chance groups are counted as separate trials.
const CLUSTER_SCALE_FRAMES: f64 = 8.0;
/// At most this many histogram cells are examined per track (strong real samples have
/// one or two; the rest are chance).
const MAX_CELLS_PER_TRACK: usize = 8;

/// The (log time factor, pitch) histogram geometry.
struct Grid {
    lf_min: f64,
    lf_cell: f64,
    n_lf: usize,
    pitch_min: f64,
    pitch_cell: f64,
    n_pitch: usize,
}

impl Grid {
    fn new(p: &MatchParams) -> Self {
        let lf_max = p.max_time_factor.ln();
        let pitch_max = p.max_pitch_semitones * p.bins_per_semitone;
        Self {
            lf_min: -lf_max,
            lf_cell: p.log_factor_cell,
            n_lf: (2.0 * lf_max / p.log_factor_cell).ceil() as usize + 1,
            pitch_min: -pitch_max,
            pitch_cell: p.pitch_cell_bins,
            n_pitch: (2.0 * pitch_max / p.pitch_cell_bins).ceil() as usize + 1,
        }
    }

    fn cell(&self, pt: &Point) -> usize {
        let i = (((pt.log_factor - self.lf_min) / self.lf_cell) as usize).min(self.n_lf - 1);
        let j =
            (((pt.pitch_bins - self.pitch_min) / self.pitch_cell) as usize).min(self.n_pitch - 1);
        i * self.n_pitch + j
    }

    fn centre(&self, cell: usize) -> (f64, f64) {
        let (i, j) = (cell / self.n_pitch, cell % self.n_pitch);
        (
            self.lf_min + (i as f64 + 0.5) * self.lf_cell,
            self.pitch_min + (j as f64 + 0.5) * self.pitch_cell,
        )
    }

    fn neighbours(&self, cell: usize) -> impl Iterator<Item = usize> + '_ {
        let (i, j) = (
            (cell / self.n_pitch) as isize,
            (cell % self.n_pitch) as isize,
        );
        (-1..=1).flat_map(move |di| {
            (-1..=1).filter_map(move |dj| {
                let (a, b) = (i + di, j + dj);
                (a >= 0 && b >= 0 && (a as usize) < self.n_lf && (b as usize) < self.n_pitch)
                    .then(|| a as usize * self.n_pitch + b as usize)
            })
        })
    }

    fn neighbourhood_sums(&self, counts: &[u32]) -> Vec<u32> {
        (0..counts.len())
            .map(|c| self.neighbours(c).map(|n| counts[n]).sum())
            .collect()
    }

    fn is_local_max(&self, sums: &[u32], cell: usize) -> bool {
        // Ties go to the lower index, so a flat top yields one candidate.
        self.neighbours(cell)
            .all(|n| sums[n] < sums[cell] || (sums[n] == sums[cell] && n >= cell))
    }

    fn max_r(&self, points: &[Point], window: &[usize]) -> f64 {
        window.iter().map(|&i| points[i].r).fold(0.0, f64::max)
    }
}

/// Hits of one transform, split into occurrences that share one slope.
struct Group {
    slope: f64,
    intercepts: Vec<f64>,
    clusters: Vec<Vec<usize>>,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// Clusters `window` by intercept and fits the common slope and per-cluster intercepts.
fn fit_group(points: &[Point], window: &[usize], p: &MatchParams) -> Option<Group> {
    let mut lfs: Vec<f64> = window.iter().map(|&i| points[i].log_factor).collect();
    let slope0 = median(&mut lfs).exp();
    let clusters = cluster_by_intercept(points, window, slope0, p.cluster_gap_frames)
        .into_iter()
        .filter(|c| c.len() >= p.min_occurrence_hits)
        .collect::<Vec<_>>();
    if clusters.is_empty() {
        return None;
    }
    let slope = pooled_slope(points, &clusters).unwrap_or(slope0);
    // One intercept per cluster, then re-collect inliers of each line from the window, so
    // hits that the first, rougher clustering split off are won back.
    let mut intercepts: Vec<f64> = clusters
        .iter()
        .map(|c| {
            let mut bs: Vec<f64> = c
                .iter()
                .map(|&i| points[i].q - slope * points[i].r)
                .collect();
            median(&mut bs)
        })
        .collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); intercepts.len()];
    for &i in window {
        let b = points[i].q - slope * points[i].r;
        let best = intercepts
            .iter()
            .enumerate()
            .map(|(k, &bk)| (k, (b - bk).abs()))
            .min_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((k, d)) = best
            && d <= p.inlier_frames
        {
            members[k].push(i);
        }
    }
    let mut kept: Vec<(f64, Vec<usize>)> = intercepts
        .drain(..)
        .zip(members)
        .filter(|(_, m)| m.len() >= p.min_occurrence_hits)
        .collect();
    if kept.is_empty() {
        return None;
    }
    // A last refit of the slope on the final inliers.
    let clusters: Vec<Vec<usize>> = kept.iter().map(|(_, m)| m.clone()).collect();
    let slope = pooled_slope(points, &clusters).unwrap_or(slope);
    for (b, m) in &mut kept {
        let mut bs: Vec<f64> = m
            .iter()
            .map(|&i| points[i].q - slope * points[i].r)
            .collect();
        *b = median(&mut bs);
    }
    kept.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (intercepts, clusters) = kept.into_iter().unzip();
    Some(Group {
        slope,
        intercepts,
        clusters,
    })
}

/// Sorts the window's hits by intercept at `slope` and chains neighbours closer than
/// `gap` frames.
fn cluster_by_intercept(
    points: &[Point],
    window: &[usize],
    slope: f64,
    gap: f64,
) -> Vec<Vec<usize>> {
    let mut by_b: Vec<(f64, usize)> = window
        .iter()
        .map(|&i| (points[i].q - slope * points[i].r, i))
        .collect();
    by_b.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    let mut last_b = f64::NEG_INFINITY;
    for (b, i) in by_b {
        match clusters.last_mut() {
            Some(c) if b - last_b <= gap => c.push(i),
            _ => clusters.push(vec![i]),
        }
        last_b = b;
    }
    clusters
}

/// The least-squares slope of q on r shared by all clusters, each with its own intercept.
/// None when the clusters span too little reference time to tell.
fn pooled_slope(points: &[Point], clusters: &[Vec<usize>]) -> Option<f64> {
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for c in clusters {
        let n = c.len() as f64;
        let rm = c.iter().map(|&i| points[i].r).sum::<f64>() / n;
        let qm = c.iter().map(|&i| points[i].q).sum::<f64>() / n;
        for &i in c {
            let dr = points[i].r - rm;
            sxy += dr * (points[i].q - qm);
            sxx += dr * dr;
        }
    }
    // Below about a second of reference spread (125 frames) the span ratios are the
    // better estimate.
    (sxx > MIN_SLOPE_SPREAD_FRAMES2)
        .then(|| sxy / sxx)
        .filter(|s| *s > 0.0)
}

/// Sum of squared reference-time deviations below which a fitted slope is not trusted.
const MIN_SLOPE_SPREAD_FRAMES2: f64 = 125.0 * 125.0;

impl Group {
    fn into_match(self, track: u32, points: &[Point], p: &MatchParams, sig: f64) -> SampleMatch {
        let mut occurrences: Vec<Occurrence> = self
            .clusters
            .iter()
            .zip(&self.intercepts)
            .map(|(c, &b)| {
                let r0 = c.iter().map(|&i| points[i].r).fold(f64::INFINITY, f64::min);
                let r1 = c
                    .iter()
                    .map(|&i| points[i].r + points[i].r_span)
                    .fold(0.0, f64::max);
                Occurrence {
                    query_start_s: (self.slope * r0 + b).max(0.0) * p.frame_s,
                    query_end_s: (self.slope * r1 + b).max(0.0) * p.frame_s,
                    ref_start_s: r0 * p.frame_s,
                    ref_end_s: r1 * p.frame_s,
                    hits: c.len(),
                }
            })
            .collect();
        occurrences.sort_by(|a, b| a.query_start_s.total_cmp(&b.query_start_s));
        let mut pitches: Vec<f64> = self
            .clusters
            .iter()
            .flatten()
            .map(|&i| points[i].pitch_bins)
            .collect();
        let hits = pitches.len();
        SampleMatch {
            track,
            tempo: 1.0 / self.slope,
            pitch_semitones: median(&mut pitches) / p.bins_per_semitone,
            occurrences,
            hits,
            significance: sig,
        }
    }
}

#[cfg(test)]
mod tests;
