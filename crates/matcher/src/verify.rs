//! Peak-level verification: a second, finer test of a candidate match.
//!
//! A quad survives a mix only if all four of its peaks do, so a sample buried under drums
//! keeps a small fraction of its quads even when a good share of its single peaks are still
//! there. Given a candidate transform (tempo, pitch, intercept), this module maps every
//! stored peak of the reference onto the query and asks, peak by peak, whether the query
//! has a peak near that spot. Each answer is weighed by a likelihood ratio against the
//! local chance rate (how often the query has a peak near spots displaced from the mapped
//! one), and the best-scoring stretch along the line is the verified occurrence: its score
//! is a log-likelihood ratio in nats, and its ends localise the sample in both recordings.

use crate::{MatchParams, Occurrence, SampleMatch};

/// Verification score (nats) at which a candidate is as likely real as not, and the
/// default acceptance threshold. With the reference's dense verification peaks and null
/// lines (session 10) the strongest chance line on 110 whole songs that sample nothing
/// scores 50 nats and on the benchmark's 30-45 s queries 39 (other than material two
/// references share), while true samples score 1.6x what they did on the hash peaks; 70
/// leaves 20 nats of margin over whole-song chance. See BENCHMARKS.md (sessions 6, 9 and
/// 10) for the chance and true scores seen.
pub const VERIFICATION_MIDPOINT: f64 = 70.0;
/// Displacements (frames at 8 ms: 0.5, 1, 1.5, 2 and 3 s either way, a beat or a few at
/// common tempos): the default [`VerifyParams::null_shifts_frames`].
pub const NULL_SHIFTS_FRAMES: [f64; 10] = [
    -375.0, -250.0, -187.5, -125.0, -62.5, 62.5, 125.0, 187.5, 250.0, 375.0,
];
/// Verification score over which the confidence goes through one logistic unit.
pub const VERIFICATION_WIDTH: f64 = 10.0;

/// The query's peaks as a dilated occupancy grid: "is there a query peak within the
/// tolerance of this (frame, bin)?" in one lookup.
#[derive(Clone, Debug)]
pub struct PeakGrid {
    n_frames: usize,
    n_bins: usize,
    words_per_frame: usize,
    bits: Vec<u64>,
    /// The peaks on the grid, by time: what [`relocate`] votes with.
    points: Vec<(f32, f32)>,
}

impl PeakGrid {
    /// Builds the grid of `peaks` (time in frames, bin) over `n_frames` x `n_bins`,
    /// marking every cell within `dt` frames and `db` bins of a peak.
    pub fn new(peaks: &[(f32, f32)], n_frames: usize, n_bins: usize, dt: usize, db: usize) -> Self {
        let words_per_frame = n_bins.div_ceil(64).max(1);
        let mut bits = vec![0u64; n_frames * words_per_frame];
        let mut points = Vec::with_capacity(peaks.len());
        for &(time, bin) in peaks {
            if !(time.is_finite() && bin.is_finite()) || time < 0.0 || bin < 0.0 {
                continue;
            }
            let (t, b) = (time.round() as usize, bin.round() as usize);
            if t >= n_frames || b >= n_bins {
                continue;
            }
            points.push((time, bin));
            for f in t.saturating_sub(dt)..(t + dt + 1).min(n_frames) {
                for k in b.saturating_sub(db)..(b + db + 1).min(n_bins) {
                    bits[f * words_per_frame + k / 64] |= 1 << (k % 64);
                }
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self {
            n_frames,
            n_bins,
            words_per_frame,
            bits,
            points,
        }
    }

    /// The peaks on the grid from frame `from` to frame `to`, by time.
    fn points_between(&self, from: f64, to: f64) -> &[(f32, f32)] {
        &self.points[between(&self.points, from, to)]
    }

    /// Whether a query peak lies within tolerance of (`time`, `bin`); false off the grid.
    pub fn get(&self, time: f32, bin: f32) -> bool {
        if !(time >= 0.0 && bin >= 0.0) {
            return false;
        }
        let (t, b) = (time.round() as usize, bin.round() as usize);
        if t >= self.n_frames || b >= self.n_bins {
            return false;
        }
        self.bits[t * self.words_per_frame + b / 64] & (1 << (b % 64)) != 0
    }

    /// Frames covered by the grid.
    pub fn n_frames(&self) -> usize {
        self.n_frames
    }
}

/// A reference peak: time in frames, position on the log-frequency axis in bins.
pub type RefPeak = (f32, f32);

/// Settings of the verification.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyParams {
    /// Match probability of a reference peak in a true sample, the alternative hypothesis.
    pub hit_rate: f64,
    /// Floor and ceiling of the local chance rate.
    pub min_chance: f64,
    pub max_chance: f64,
    /// Control spots, as (frames, bins) displacements from the mapped spot, that estimate
    /// the local chance rate.
    pub controls: Vec<(f32, f32)>,
    /// Intercept refinements searched, in query frames either way, and their step.
    pub refine_frames: f32,
    pub refine_step_frames: f32,
    /// Pitch refinements searched, in bins either way (step 1 bin).
    pub refine_bins: i32,
    /// Relative tempo refinements searched either way around the best stretch's middle,
    /// and their step: a candidate's slope from a few sparse hits can be off by a percent
    /// or two, which over an 8 s sample moves its far end by more than the tolerance.
    /// Off (0) by default: on the benchmark's tune split, 0.02 found 2 more of 124 samples
    /// but also lifted one chance line over drums from 48 to 96 nats, because a free
    /// tempo lets two rhythmic recordings line up their beats (BENCHMARKS.md).
    pub refine_tempo: f64,
    pub refine_tempo_step: f64,
    /// The tempo is searched only when the candidate's own line already scores this many
    /// nats somewhere (a true sample with a slightly wrong slope still matches around the
    /// place its hits came from; most chance candidates score far less).
    pub refine_tempo_from: f64,
    /// A verified stretch must hold at least this many matched peaks.
    pub min_matched: usize,
    /// A candidate of at least this significance whose own line fails verification has
    /// its place in the reference searched anew at its transform ([`relocate`]); infinite:
    /// never.
    pub relocate_from: f64,
    /// Places of the reference [`relocate`] verifies: those where most query peaks fall on
    /// reference peaks.
    pub relocate_places: usize,
    /// A candidate too weak to stand on its hits (not [`SampleMatch::stands_on_hits`]:
    /// significance under [`MatchParams::min_significance`], or a weak candidate) is
    /// first screened on its own line, with no
    /// refinement, no null lines and only [`SCREEN_CONTROLS`] of the control spots, about
    /// a tenth of the work; an occurrence scoring under this many nats there is not
    /// verified further (0: no screen).
    pub screen_nats: f64,
    /// Query displacements (frames) of the null lines whose best score is taken off a
    /// line's (see `null_score`; [`NULL_SHIFTS_FRAMES`] by default). Two recordings at one
    /// tempo and in related keys line up along a line without any sample in common; the
    /// same line moved by a beat or a few still lines up, while a sample matches at its
    /// own offset only. A match skips the shifts at multiples of its own loop period
    /// ([`verify_match`]). On hash peaks alone (session 7) they cost as much recall as they
    /// removed chance; with the dense reference verification peaks (session 10) they take
    /// the strongest whole-song chance line from 116 to 50 nats and keep every sample
    /// (BENCHMARKS.md).
    pub null_shifts_frames: Vec<f64>,
    /// Neighbouring peaks on each side whose controls also estimate a peak's chance rate.
    pub chance_window: usize,
    /// A reference peak matches a query peak within this many frames...
    pub tolerance_frames: usize,
    /// ...and this many bins.
    pub tolerance_bins: usize,
}

impl Default for VerifyParams {
    fn default() -> Self {
        let mut controls = Vec::new();
        for &dt in &[-45.0f32, -25.0, 25.0, 45.0] {
            for &db in &[-7.0f32, 0.0, 7.0] {
                controls.push((dt, db));
            }
        }
        controls.extend([(0.0, -7.0), (0.0, 7.0), (0.0, -14.0), (0.0, 14.0)]);
        Self {
            hit_rate: 0.55,
            min_chance: 0.02,
            max_chance: 0.6,
            controls,
            refine_frames: 4.0,
            refine_step_frames: 1.0,
            refine_bins: 1,
            refine_tempo: 0.0,
            refine_tempo_step: 0.004,
            refine_tempo_from: 20.0,
            min_matched: 8,
            relocate_from: 5.0,
            relocate_places: 4,
            screen_nats: SCREEN_NATS,
            null_shifts_frames: NULL_SHIFTS_FRAMES.to_vec(),
            chance_window: 12,
            tolerance_frames: 2,
            tolerance_bins: 1,
        }
    }
}

/// The transform being verified: query frame of reference frame `r` is
/// `q0 + (r - r0) / tempo`, query bin is reference bin plus `shift_bins`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    pub tempo: f64,
    pub r0: f64,
    pub q0: f64,
    pub shift_bins: f64,
}

impl Line {
    /// The line of a match's occurrence `o`, at the match's `tempo` and pitch shift.
    pub fn of_occurrence(
        o: &Occurrence,
        tempo: f64,
        pitch_semitones: f64,
        p: &MatchParams,
    ) -> Self {
        Self {
            tempo,
            r0: o.ref_start_s / p.frame_s,
            q0: o.query_start_s / p.frame_s,
            shift_bins: pitch_semitones * p.bins_per_semitone,
        }
    }

    /// The query frame of reference frame `r`.
    pub fn query_frame(&self, r: f64) -> f64 {
        self.q0 + (r - self.r0) / self.tempo
    }
}

/// The positions of `points` (sorted by time) whose time lies from `from` to `to` frames.
fn between(points: &[(f32, f32)], from: f64, to: f64) -> std::ops::Range<usize> {
    let first = points.partition_point(|&(t, _)| f64::from(t) < from);
    let last = points.partition_point(|&(t, _)| f64::from(t) <= to);
    first..last.max(first)
}

/// The best-scoring stretch along a line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verified {
    /// The refined line.
    pub line: Line,
    /// Log-likelihood ratio of the stretch, nats.
    pub llr: f64,
    /// Reference frames of the first and last matched peak of the stretch.
    pub r_start: f64,
    pub r_end: f64,
    /// Reference peaks in the stretch, and how many of them matched.
    pub n_peaks: usize,
    pub n_matched: usize,
}

/// Verifies `line` over the reference peaks `peaks` (sorted by time), refining its
/// intercept and pitch (and tempo, if configured) within the configured ranges; `None` if
/// no stretch qualifies. With null shifts configured, the score is net of what the same
/// line displaced along the query scores (`null_score`).
pub fn verify_line(
    line: Line,
    peaks: &[RefPeak],
    grid: &PeakGrid,
    p: &VerifyParams,
) -> Option<Verified> {
    let (mut best, on_line) = best_line(line, peaks, grid, p);
    if let Some(b) = best.as_mut() {
        b.llr -= null_score(b.line, &on_line, grid, p);
    }
    best
}

/// (reference time, bin, score if matched, score if not) of each reference peak whose
/// image falls inside the query.
type OnLine = Vec<(f32, f32, f64, f64)>;

/// The best-scoring refinement of `line`, before the null, and the peaks it was scored on.
fn best_line(
    line: Line,
    peaks: &[RefPeak],
    grid: &PeakGrid,
    p: &VerifyParams,
) -> (Option<Verified>, OnLine) {
    // Peaks whose image falls inside the query, with their local chance rates, which
    // refinements barely move and are therefore computed once.
    let mut on_line: OnLine = Vec::new();
    let mut control_hits: Vec<usize> = Vec::new();
    let max_q = grid.n_frames() as f64;
    for &(rt, rb) in peaks {
        let qt = line.query_frame(f64::from(rt));
        if qt < -p.refine_frames as f64 || qt > max_q + p.refine_frames as f64 {
            continue;
        }
        let qb = rb as f64 + line.shift_bins;
        let hits = p
            .controls
            .iter()
            .filter(|(dt, db)| grid.get(qt as f32 + dt, qb as f32 + db))
            .count();
        control_hits.push(hits);
        on_line.push((rt, rb, 0.0, 0.0));
    }
    // The chance rate of one peak is estimated from the controls of its neighbours along
    // the line too: a handful of control spots per peak is too noisy on its own, and a
    // chance rate estimated too low turns every coincidence into strong evidence.
    let n_controls = p.controls.len().max(1);
    let mut prefix = vec![0usize; control_hits.len() + 1];
    for (i, &c) in control_hits.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c;
    }
    for (i, entry) in on_line.iter_mut().enumerate() {
        let lo = i.saturating_sub(p.chance_window);
        let hi = (i + p.chance_window + 1).min(control_hits.len());
        let rate = (prefix[hi] - prefix[lo]) as f64 / ((hi - lo) * n_controls) as f64;
        let chance = rate.clamp(p.min_chance, p.max_chance);
        entry.2 = (p.hit_rate / chance).ln();
        entry.3 = ((1.0 - p.hit_rate) / (1.0 - chance)).ln();
    }
    if on_line.len() < p.min_matched {
        return (None, on_line);
    }
    let mut best: Option<Verified> = None;
    // First the intercept and pitch at the candidate's tempo...
    let steps = (p.refine_frames / p.refine_step_frames).round() as i32;
    for db in -p.refine_bins..=p.refine_bins {
        for ds in -steps..=steps {
            let refined = Line {
                q0: line.q0 + ds as f64 * p.refine_step_frames as f64,
                shift_bins: line.shift_bins + db as f64,
                ..line
            };
            keep_better(
                &mut best,
                best_stretch(refined, &on_line, grid, p.min_matched),
            );
        }
    }
    // ...then the tempo, turning the best line about the middle of its stretch, with a
    // small intercept search again.
    let Some(base) = best.filter(|b| b.llr >= p.refine_tempo_from) else {
        return (best, on_line);
    };
    let pivot_r = 0.5 * (base.r_start + base.r_end);
    let base = base.line;
    let pivot_q = base.query_frame(pivot_r);
    let tempo_steps = if p.refine_tempo_step > 0.0 {
        (p.refine_tempo / p.refine_tempo_step).round() as i32
    } else {
        0
    };
    for k in -tempo_steps..=tempo_steps {
        if k == 0 {
            continue;
        }
        let tempo = base.tempo * (1.0 + k as f64 * p.refine_tempo_step);
        for ds in -2..=2 {
            let refined = Line {
                tempo,
                r0: pivot_r,
                q0: pivot_q + ds as f64 * p.refine_step_frames as f64,
                shift_bins: base.shift_bins,
            };
            keep_better(
                &mut best,
                best_stretch(refined, &on_line, grid, p.min_matched),
            );
        }
    }
    (best, on_line)
}

/// The best score of `line` displaced along the query by each of `p.null_shifts_frames`,
/// at least 0. Two recordings in one tempo line up their beats (and a key's notes) at
/// many offsets, and a line that does so matches far more peaks than the chance rate of
/// spots just off the beat predicts; the same line moved by a beat or a few still lines
/// up, while a real sample matches at its own offset only. The best displaced score is
/// what the resemblance of the two recordings gives without the sample, and it is taken
/// off the line's score.
fn null_score(
    line: Line,
    on_line: &[(f32, f32, f64, f64)],
    grid: &PeakGrid,
    p: &VerifyParams,
) -> f64 {
    p.null_shifts_frames
        .iter()
        .filter_map(|&shift| {
            let displaced = Line {
                q0: line.q0 + shift,
                ..line
            };
            best_stretch(displaced, on_line, grid, p.min_matched).map(|v| v.llr)
        })
        .fold(0.0, f64::max)
}

fn keep_better(best: &mut Option<Verified>, v: Option<Verified>) {
    if let Some(v) = v
        && best.is_none_or(|b| v.llr > b.llr)
    {
        *best = Some(v);
    }
}

/// The maximum-sum stretch (Kadane) of per-peak log-likelihood ratios along `line`, if it
/// holds at least `min_matched` matched peaks. `on_line` holds (reference time, bin, score
/// if matched, score if not) per peak, in time order.
fn best_stretch(
    line: Line,
    on_line: &[(f32, f32, f64, f64)],
    grid: &PeakGrid,
    min_matched: usize,
) -> Option<Verified> {
    let mut best: Option<Verified> = None;
    let (mut run, mut run_start, mut run_matched, mut run_n) = (0.0f64, 0usize, 0usize, 0usize);
    for (i, &(rt, rb, if_matched, if_not)) in on_line.iter().enumerate() {
        let qt = line.query_frame(f64::from(rt));
        let qb = rb as f64 + line.shift_bins;
        let matched = grid.get(qt as f32, qb as f32);
        let step = if matched { if_matched } else { if_not };
        if run <= 0.0 {
            run = 0.0;
            run_start = i;
            run_matched = 0;
            run_n = 0;
        }
        run += step;
        run_n += 1;
        run_matched += usize::from(matched);
        if matched && run_matched >= min_matched && best.is_none_or(|b| run > b.llr) {
            best = Some(Verified {
                line,
                llr: run,
                r_start: on_line[run_start].0 as f64,
                r_end: rt as f64,
                n_peaks: run_n,
                n_matched: run_matched,
            });
        }
    }
    best
}

/// Query frames between occurrences of `m` that play the same reference moment (starts
/// within [`LOOP_SAME_REF_S`] of each other): the periods at which it loops.
fn loop_periods(m: &SampleMatch, frame_s: f64) -> Vec<f64> {
    let mut periods = Vec::new();
    for (i, a) in m.occurrences.iter().enumerate() {
        for b in &m.occurrences[i + 1..] {
            if same_moment(a, b) {
                let period = (a.query_start_s - b.query_start_s).abs() / frame_s;
                if period > 0.0 {
                    periods.push(period);
                }
            }
        }
    }
    periods
}

/// Occurrences whose reference starts lie this close (seconds) repeat one moment.
const LOOP_SAME_REF_S: f64 = 0.5;

/// Whether occurrences `a` and `b` play the same reference moment.
fn same_moment(a: &Occurrence, b: &Occurrence) -> bool {
    (a.ref_start_s - b.ref_start_s).abs() <= LOOP_SAME_REF_S
}

/// Whether `m` replays one reference moment at least [`MIN_LOOP_REPLAYS`] times, at
/// separate places of the query: a loop. Null lines cannot judge a loop (a displaced line
/// meets its next repetition, or its own beat), so [`SampleMatch::is_accepted`] does not
/// hold a loop's weak verification against it.
pub(crate) fn is_loop(m: &SampleMatch) -> bool {
    m.occurrences.iter().any(|a| {
        let mut replays: Vec<&Occurrence> =
            m.occurrences.iter().filter(|b| same_moment(a, b)).collect();
        replays.sort_by(|x, y| x.query_start_s.total_cmp(&y.query_start_s));
        // Count replays that start after the previous one ended.
        let mut separate = 0;
        let mut end = f64::NEG_INFINITY;
        for o in replays {
            if o.query_start_s >= end {
                separate += 1;
                end = o.query_end_s;
            }
        }
        separate >= MIN_LOOP_REPLAYS
    })
}

/// The tempos a candidate is verified at: its fitted one and, for a candidate too weak to
/// stand on its hits whose occurrences follow each other through the reference (a sample
/// whose hits left a gap), the tempo from its first occurrence's start to its last one's
/// end when within [`LONG_BASELINE_TOLERANCE`] of it. A slope fitted within short clusters
/// of a few hits each can be off by a few percent, which over an 8 s sample moves its far
/// end past the tolerance; the ends of the whole stretch fix it far better.
fn candidate_tempos(m: &SampleMatch, p: &MatchParams) -> Vec<f64> {
    let mut tempos = vec![m.tempo];
    if m.stands_on_hits(p) || m.occurrences.len() < 2 {
        return tempos;
    }
    let first = m
        .occurrences
        .iter()
        .min_by(|a, b| a.query_start_s.total_cmp(&b.query_start_s));
    let last = m
        .occurrences
        .iter()
        .max_by(|a, b| a.query_end_s.total_cmp(&b.query_end_s));
    if let (Some(first), Some(last)) = (first, last) {
        let dq = last.query_end_s - first.query_start_s;
        let dr = last.ref_end_s - first.ref_start_s;
        if dq > 0.0 && dr > 0.0 {
            let tempo = dr / dq;
            if (tempo / m.tempo - 1.0).abs() <= LONG_BASELINE_TOLERANCE {
                tempos.push(tempo);
            }
        }
    }
    tempos
}

/// See [`candidate_tempos`].
const LONG_BASELINE_TOLERANCE: f64 = 0.04;

/// Relative tempos searched either way for a weak candidate once it is confirmed (see
/// [`verify_match`]), in steps of [`VerifyParams::refine_tempo_step`].
const CONFIRMED_TEMPO_SEARCH: f64 = 0.024;

/// Default of [`VerifyParams::screen_nats`].
pub const SCREEN_NATS: f64 = 30.0;
/// The control spots of the screen (see [`VerifyParams::screen_nats`]): a beat either
/// way in time and two semitones either way in pitch. Each peak's chance rate is pooled
/// over its neighbours along the line, so four spots a peak still give about a hundred.
const SCREEN_CONTROLS: [(f32, f32); 4] = [(-25.0, 0.0), (25.0, 0.0), (0.0, -7.0), (0.0, 7.0)];

/// Separate replays of one reference moment that make a loop (see [`is_loop`]).
const MIN_LOOP_REPLAYS: usize = 3;
/// A null shift within this many frames (0.2 s) of a multiple of a loop period is skipped.
const LOOP_SHIFT_TOLERANCE_FRAMES: f64 = 25.0;

/// Whether `shift` lies within tolerance of a non-zero multiple of `period` (frames).
fn near_multiple(shift: f64, period: f64) -> bool {
    let k = (shift.abs() / period).round();
    k >= 1.0 && (shift.abs() - k * period).abs() <= LOOP_SHIFT_TOLERANCE_FRAMES
}

/// Query seconds either side of a candidate's occurrences that [`relocate`] votes with.
const RELOCATE_PAD_S: f64 = 2.0;
/// Longest stretch of the query (seconds) that [`relocate`] votes with.
const RELOCATE_MAX_SPAN_S: f64 = 40.0;
/// Longest reference (seconds: 4 hours) [`relocate`] searches.
const RELOCATE_MAX_S: f64 = 4.0 * 3600.0;
/// Least distance (seconds of the reference) between two places [`relocate`] verifies.
const RELOCATE_SEPARATION_S: f64 = 0.25;

/// Searches the whole reference for the place of a candidate whose own line failed, at
/// the candidate's tempo and pitch: a reference that repeats itself (a chorus, the bars of
/// a groove) can gather more hits at another repetition than at the one sampled, and
/// verifying that one finds too few of the sample's peaks. Every query peak around the
/// candidate's occurrences votes for each reference peak in its bin (the candidate's pitch
/// undone) with the reference time that would put the two together at query time 0; the
/// [`VerifyParams::relocate_places`] places with the most votes are verified as lines. The
/// best is returned with the penalty of having chosen it among every place of the
/// reference: the logarithm of their number (in nats, as the score is), so that chance
/// gains nothing on average from the search.
fn relocate(
    m: &SampleMatch,
    peaks: &[RefPeak],
    grid: &PeakGrid,
    settings: &VerifyParams,
    p: &MatchParams,
) -> Option<(Verified, f64)> {
    let (&(first_t, _), &(last_t, _)) = (peaks.first()?, peaks.last()?);
    let tempo = m.tempo;
    if !(tempo.is_finite() && tempo > 0.0) {
        return None;
    }
    let pad = RELOCATE_PAD_S / p.frame_s;
    let q_lo = (m
        .occurrences
        .iter()
        .map(|o| o.query_start_s)
        .fold(f64::INFINITY, f64::min)
        / p.frame_s
        - pad)
        .max(0.0);
    let q_hi = (m
        .occurrences
        .iter()
        .map(|o| o.query_end_s)
        .fold(0.0, f64::max)
        / p.frame_s
        + pad)
        .min(q_lo + RELOCATE_MAX_SPAN_S / p.frame_s);
    let q_peaks = grid.points_between(q_lo, q_hi);
    if q_peaks.len() < settings.min_matched {
        return None;
    }
    let shift = m.pitch_semitones * p.bins_per_semitone;
    // Votes by reference frame at query frame 0, from `lowest` on, in whole frames (the
    // time tolerance is wider than the rounding).
    let lowest = (f64::from(first_t) - tempo * q_hi).floor() - 1.0;
    let extent = (f64::from(last_t) - tempo * q_lo - lowest).ceil();
    // The votes take 12 bytes a frame of the reference (21 MB for 4 hours): a longer
    // reference (or a damaged peak list) is not searched.
    if !(extent >= 0.0 && extent * p.frame_s <= RELOCATE_MAX_S) {
        return None;
    }
    let n_cells = extent as usize + 2;
    // The reference's peaks by bin, as cells at query frame 0.
    let mut by_bin: Vec<Vec<i64>> = vec![Vec::new(); grid.n_bins];
    for &(t, b) in peaks {
        let k = b.round();
        if k >= 0.0 && (k as usize) < grid.n_bins {
            by_bin[k as usize].push((f64::from(t) - lowest).round() as i64);
        }
    }
    let mut votes = vec![0u32; n_cells];
    let tol = settings.tolerance_bins as i64;
    for &(qt, qb) in q_peaks {
        let centre = (f64::from(qb) - shift).round() as i64;
        let at = (tempo * f64::from(qt)).round() as i64;
        for k in (centre - tol).max(0)..=(centre + tol).min(grid.n_bins as i64 - 1) {
            for &rt in &by_bin[k as usize] {
                if let Some(vote) = usize::try_from(rt - at).ok().and_then(|c| votes.get_mut(c)) {
                    *vote = vote.saturating_add(1);
                }
            }
        }
    }
    // Within the time tolerance, votes for neighbouring cells are one place's.
    let reach = settings.tolerance_frames;
    let mut window = vec![0u64; n_cells];
    let mut sum: u64 = votes[..reach.min(n_cells)]
        .iter()
        .map(|&v| u64::from(v))
        .sum();
    for (c, w) in window.iter_mut().enumerate() {
        if c + reach < n_cells {
            sum += u64::from(votes[c + reach]);
        }
        *w = sum;
        if c >= reach {
            sum -= u64::from(votes[c - reach]);
        }
    }
    // The best places, each at least RELOCATE_SEPARATION_S from a better one.
    let separation = (RELOCATE_SEPARATION_S / p.frame_s).ceil() as usize;
    // Only local maxima can be the best of their neighbourhood.
    let mut order: Vec<usize> = (0..n_cells)
        .filter(|&c| {
            window[c] > 0
                && (c == 0 || window[c] > window[c - 1])
                && window.get(c + 1).is_none_or(|&next| window[c] >= next)
        })
        .collect();
    order.sort_unstable_by(|&a, &b| window[b].cmp(&window[a]).then(a.cmp(&b)));
    let mut places: Vec<usize> = Vec::with_capacity(settings.relocate_places);
    for c in order {
        if places.len() >= settings.relocate_places {
            break;
        }
        if places.iter().all(|&k| k.abs_diff(c) >= separation) {
            places.push(c);
        }
    }
    let span = tempo * (q_hi - q_lo);
    let margin = VERIFY_MARGIN_S / p.frame_s;
    // Most places are chance, and the weak candidates' screen turns them away cheaply.
    let screen = (settings.screen_nats > 0.0).then(|| screening(settings));
    let mut best: Option<Verified> = None;
    for c in places {
        let r0 = c as f64 + lowest + tempo * q_lo;
        let line = Line {
            tempo,
            r0,
            q0: q_lo,
            shift_bins: shift,
        };
        let region = &peaks[between(peaks, r0 - margin, r0 + span + margin)];
        if screen
            .as_ref()
            .is_some_and(|screen| !passes_screen(line, region, grid, screen))
        {
            continue;
        }
        keep_better(&mut best, verify_line(line, region, grid, settings));
    }
    let n_places = (n_cells as f64 / (2 * reach + 1) as f64).max(1.0);
    best.map(|v| (v, n_places.ln()))
}

/// The settings of the screen (see [`VerifyParams::screen_nats`]) made from `settings`:
/// the candidate's own line only, no null lines, and [`SCREEN_CONTROLS`].
fn screening(settings: &VerifyParams) -> VerifyParams {
    VerifyParams {
        controls: SCREEN_CONTROLS.to_vec(),
        refine_frames: 0.0,
        refine_bins: 0,
        refine_tempo: 0.0,
        null_shifts_frames: Vec::new(),
        ..settings.clone()
    }
}

/// Whether `line` scores at least the screen's [`VerifyParams::screen_nats`] under the
/// `screen` settings ([`screening`]).
fn passes_screen(line: Line, peaks: &[RefPeak], grid: &PeakGrid, screen: &VerifyParams) -> bool {
    !verify_line(line, peaks, grid, screen).is_none_or(|v| v.llr < screen.screen_nats)
}

/// Least reference margin (seconds) verified either side of an occurrence.
const VERIFY_MARGIN_S: f64 = 15.0;

/// Verifies every occurrence of `m` against the query's peak grid, sets
/// `m.verification` to the best occurrence's score, and widens each occurrence to the
/// verified stretch where the two overlap (sparse hits often cover less than the sample).
pub fn verify_match(m: &mut SampleMatch, peaks: &[RefPeak], grid: &PeakGrid, p: &MatchParams) {
    let mut best = 0.0f64;
    let mut best_tempo = m.tempo;
    // The best line and the reference peaks it was verified over.
    let mut best_at: Option<(Line, std::ops::Range<usize>)> = None;
    // A match with hits enough to stand on its own has a slope fitted over many of them;
    // only the weak ones need the tempo searched.
    let mut settings = if m.stands_on_hits(p) {
        VerifyParams {
            refine_tempo: 0.0,
            ..p.verify.clone()
        }
    } else {
        p.verify.clone()
    };
    // A loop's displaced line lands on its next repetition: null lines at the match's own
    // loop periods would take a looped sample's score away.
    let periods = loop_periods(m, p.frame_s);
    settings
        .null_shifts_frames
        .retain(|&shift| !periods.iter().any(|&period| near_multiple(shift, period)));
    // Most weak candidates are chance, and a screen turns them away cheaply.
    let screen = (!m.stands_on_hits(p) && p.verify.screen_nats > 0.0).then(|| screening(&p.verify));
    let tempos = candidate_tempos(m, p);
    for o in &mut m.occurrences {
        for &tempo in &tempos {
            let line = Line::of_occurrence(o, tempo, m.pitch_semitones, p);
            // Only the reference around the occurrence can extend it: the hits cover part of
            // the sample, rarely less than a third, so a margin of the occurrence's own length
            // (at least VERIFY_MARGIN_S) either side holds the whole sample. Without it a long
            // query would map a whole reference onto itself for every candidate.
            let margin = (o.ref_end_s - o.ref_start_s).max(VERIFY_MARGIN_S) / p.frame_s;
            let (lo, hi) = (line.r0 - margin, o.ref_end_s / p.frame_s + margin);
            let at = between(peaks, lo, hi);
            let region = &peaks[at.clone()];
            if let Some(screen) = &screen
                && !passes_screen(line, region, grid, screen)
            {
                continue;
            }
            let Some(v) = verify_line(line, region, grid, &settings) else {
                continue;
            };
            if v.llr > best {
                best = v.llr;
                best_tempo = v.line.tempo;
                best_at = Some((v.line, at));
            }
            let q_of = |r: f64| v.line.query_frame(r) * p.frame_s;
            let (r_start, r_end) = (v.r_start * p.frame_s, v.r_end * p.frame_s);
            let (q_start, q_end) = (q_of(v.r_start), q_of(v.r_end));
            let overlaps = q_start < o.query_end_s && o.query_start_s < q_end;
            if overlaps && q_start >= 0.0 {
                if q_start < o.query_start_s {
                    o.query_start_s = q_start;
                    o.ref_start_s = r_start;
                }
                if q_end > o.query_end_s {
                    o.query_end_s = q_end;
                    o.ref_end_s = r_end;
                }
            }
        }
    }
    // A weak candidate confirmed at its fitted tempo has that tempo from a few hits, and
    // it can be a percent or two off; its peaks place it better. The tempo is searched
    // only once the candidate is confirmed without it, so the search cannot confirm
    // chance (a free tempo lets two rhythmic recordings line up their beats).
    if let Some((line, at)) = best_at
        && !m.stands_on_hits(p)
        && best >= p.min_verification
    {
        let search = VerifyParams {
            refine_tempo: CONFIRMED_TEMPO_SEARCH,
            refine_tempo_from: 0.0,
            ..settings.clone()
        };
        if let Some(v) = verify_line(line, &peaks[at], grid, &search)
            && v.llr > best
        {
            best = v.llr;
            best_tempo = v.line.tempo;
        }
    }
    if best < p.min_verification
        && m.significance >= settings.relocate_from
        && let Some((v, penalty)) = relocate(m, peaks, grid, &settings, p)
        && v.llr - penalty >= p.min_verification
    {
        best = v.llr - penalty;
        best_tempo = v.line.tempo;
        // The occurrences the found place covers in the query were at the wrong place of
        // the reference; it replaces them, with their hits.
        let q_of = |r: f64| v.line.query_frame(r) * p.frame_s;
        let (q_start, q_end) = (q_of(v.r_start), q_of(v.r_end));
        let mut hits = 0;
        m.occurrences.retain(|o| {
            let covered = o.query_start_s < q_end && q_start < o.query_end_s;
            hits += if covered { o.hits } else { 0 };
            !covered
        });
        m.occurrences.push(Occurrence {
            query_start_s: q_start,
            query_end_s: q_end,
            ref_start_s: v.r_start * p.frame_s,
            ref_end_s: v.r_end * p.frame_s,
            hits,
        });
        m.occurrences
            .sort_by(|a, b| a.query_start_s.total_cmp(&b.query_start_s));
    }
    m.verification = best;
    m.verified = true;
    // A match that rests on the verification (too few hits to be sure on their own) has
    // its slope from those few hits; the peaks fix it better.
    if !m.stands_on_hits(p) {
        m.tempo = best_tempo;
    }
}
