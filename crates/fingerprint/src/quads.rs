//! Quad hashes: four peaks described only by quantities that survive speed change,
//! time-stretching and pitch-shifting.
//!
//! After the idea of Sonnleitner and Widmer (IEEE/ACM TASLP 2016), on a log-frequency axis:
//! an anchor peak A and three later peaks B, C, D (in time order). Time enters the hash
//! only as the ratios (tB - tA) / (tD - tA) and (tC - tA) / (tD - tA), which do not change
//! when time is scaled by any factor; frequency enters only as the differences of
//! log-frequency bins fB - fA, fC - fA, fD - fA, which do not change when every frequency
//! is multiplied by one factor (a pitch shift is a translation on a log axis). A vinyl speed
//! change does both at once, so it is covered too.
//!
//! What the hash deliberately forgets is kept beside it in the posting: the anchor's time
//! and log-frequency and the quad's time span tD - tA. From one matching pair of quads the
//! matcher reads the time factor (ratio of spans) and the pitch shift (difference of anchor
//! bins), then fits them over all hits.
//!
//! References store a few quads per anchor (from its nearest partner peaks); queries try
//! many more combinations over a wider time zone, so the reference's partners are found
//! even when other music adds peaks between them and the sample is slowed or sped up.
//!
//! The default hash is the *triplet* (`Params::hash_peaks` 3): an anchor and two partners,
//! two frequency differences and one time ratio on a finer grid, plus two bits of loudness
//! order (is B louder than A, C than B?), which gain, pitch shift and time scale keep. A
//! triplet needs three of the sample's peaks to survive a mix instead of four; the order
//! bits give back the specificity the missing fourth peak took (BENCHMARKS.md, session 9).
//! Everything else (postings, expansions, hits) is the same for both.

use rayon::prelude::*;

use crate::Params;
use crate::peaks::Peak;

/// A quad as stored in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RefQuad {
    /// The invariant hash (the index key).
    pub hash: u32,
    /// Anchor time in 1/[`TIME_SCALE`] frame (matched in whole frames: [`whole_frames`]).
    pub time: u32,
    /// Anchor log-frequency bin in 1/64 bin.
    pub freq: u16,
    /// Time span tD - tA in 1/[`SPAN_SCALE`] frame: the difference of the two peaks'
    /// stored times (on [`TIME_SCALE`], the same scale), so that the span is also the
    /// distance from the anchor's stored time to the partner's, which the LMDB store uses
    /// to keep a posting's span as the place of its partner in the track's anchor table.
    pub span: u16,
}

/// A quad taken from a query, to be looked up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryQuad {
    /// The invariant hash (possibly one of several cells tried for one quad).
    pub hash: u32,
    /// Anchor time in frames.
    pub time: f32,
    /// Anchor log-frequency bin.
    pub bin: f32,
    /// Time span tD - tA in frames.
    pub span: f32,
}

/// Fixed-point scale of `RefQuad::freq`.
pub const FREQ_SCALE: f32 = 64.0;
/// Fixed-point scale of `RefQuad::span`.
pub const SPAN_SCALE: f32 = 16.0;
/// Fixed-point scale of `RefQuad::time`: the span's, so that spans are differences of times.
pub const TIME_SCALE: f32 = SPAN_SCALE;

/// The quantised cells of a quad's five invariants, before packing into a hash.
#[derive(Clone, Copy, Debug)]
struct Invariants {
    /// fB - fA, fC - fA, fD - fA in bins.
    df: [f32; 3],
    /// (tB - tA) / span and (tC - tA) / span.
    ratio: [f32; 2],
    /// Strength of each peak minus that of the peak before it (B - A, C - B, D - C).
    louder: [f32; 3],
}

/// The quantisation of the hash space.
struct Grid {
    df_range: f32,
    df_step: f32,
    df_levels: u32,
    ratio_levels: u32,
    triplets: bool,
    order_bits: u32,
}

impl Grid {
    fn new(p: &Params) -> Self {
        let df_levels = (2.0 * p.quad_df_range_bins / p.quad_df_step_bins).floor() as u32 + 1;
        Self {
            df_range: p.quad_df_range_bins,
            df_step: p.quad_df_step_bins,
            df_levels,
            ratio_levels: p.quad_ratio_levels,
            triplets: p.hash_peaks == 3,
            order_bits: p.hash_order_bits,
        }
    }

    /// The continuous cell coordinate of a frequency difference.
    fn df_coord(&self, df: f32) -> f32 {
        (df + self.df_range) / self.df_step
    }

    fn ratio_coord(&self, r: f32) -> f32 {
        r * self.ratio_levels as f32
    }

    fn df_cell(&self, df: f32) -> u32 {
        (self.df_coord(df).max(0.0) as u32).min(self.df_levels - 1)
    }

    fn ratio_cell(&self, r: f32) -> u32 {
        (self.ratio_coord(r).max(0.0) as u32).min(self.ratio_levels - 1)
    }

    /// The loudness-order bits of `louder` (bit i: peak i+1 louder than peak i).
    fn order(&self, louder: &[f32; 3]) -> u32 {
        (0..self.order_bits as usize).fold(0, |bits, i| bits | (u32::from(louder[i] > 0.0) << i))
    }

    /// What one more cell of coordinate `coord` (0-2: a frequency difference, 3-4: a
    /// ratio) adds to a packed hash, modulo 2^32.
    fn step(&self, coord: usize) -> u32 {
        let (l, r) = (self.df_levels, self.ratio_levels);
        let unit = if self.triplets {
            match coord {
                0 => l * r,
                1 => r,
                3 => 1,
                _ => 0,
            }
        } else {
            match coord {
                0 => l * l * r * r,
                1 => l * r * r,
                2 => r * r,
                3 => r,
                _ => 1,
            }
        };
        unit.wrapping_shl(self.order_bits)
    }

    fn pack(&self, df: [u32; 3], ratio: [u32; 2], order: u32) -> u32 {
        let h = if self.triplets {
            (df[0] * self.df_levels + df[1]) * self.ratio_levels + ratio[0]
        } else {
            let mut h = df[0];
            h = h * self.df_levels + df[1];
            h = h * self.df_levels + df[2];
            h = h * self.ratio_levels + ratio[0];
            h * self.ratio_levels + ratio[1]
        };
        (h << self.order_bits) | order
    }
}

/// The invariants of an anchor and its partners `rest` (three for a quad; two for a
/// triplet, whose unused coordinates stay 0).
fn invariants(a: &Peak, rest: &[Peak]) -> Option<Invariants> {
    let last = rest.last()?;
    let span = last.time - a.time;
    if span <= 0.0 {
        return None;
    }
    let mut df = [0.0; 3];
    let mut ratio = [0.0; 2];
    let mut louder = [0.0; 3];
    let mut previous = a;
    for (i, x) in rest.iter().enumerate() {
        df[i] = x.bin - a.bin;
        louder[i] = x.strength - previous.strength;
        previous = x;
    }
    for (i, x) in rest[..rest.len() - 1].iter().enumerate() {
        ratio[i] = (x.time - a.time) / span;
    }
    Some(Invariants { df, ratio, louder })
}

/// Calls `f(a, partners)` for each anchor with the first `max_partners` peaks (in time)
/// that lie `min_dt..=max_dt` frames after it and within the frequency zone.
fn for_each_anchor(
    peaks: &[Peak],
    p: &Params,
    min_dt: f32,
    max_dt: f32,
    max_partners: usize,
    f: impl FnMut(&Peak, &[Peak]),
) {
    for_each_anchor_in(peaks, 0..peaks.len(), p, min_dt, max_dt, max_partners, f);
}

/// [`for_each_anchor`] for the anchors `peaks[anchors]` only (partners may lie beyond).
fn for_each_anchor_in(
    peaks: &[Peak],
    anchors: std::ops::Range<usize>,
    p: &Params,
    min_dt: f32,
    max_dt: f32,
    max_partners: usize,
    mut f: impl FnMut(&Peak, &[Peak]),
) {
    let mut partners = Vec::with_capacity(max_partners);
    for i in anchors {
        let a = &peaks[i];
        partners.clear();
        for b in &peaks[i + 1..] {
            let dt = b.time - a.time;
            if dt > max_dt || partners.len() == max_partners {
                break;
            }
            if dt >= min_dt && (b.bin - a.bin).abs() <= p.quad_df_range_bins {
                partners.push(*b);
            }
        }
        if partners.len() + 1 >= p.hash_peaks {
            f(a, &partners);
        }
    }
}

/// Calls `f(rest)` for every choice of `k` (2 or 3) partners, kept in time order.
fn for_each_choice(partners: &[Peak], k: usize, mut f: impl FnMut(&[Peak])) {
    let n = partners.len();
    for i in 0..n {
        for j in i + 1..n {
            if k == 2 {
                f(&[partners[i], partners[j]]);
                continue;
            }
            for l in j + 1..n {
                f(&[partners[i], partners[j], partners[l]]);
            }
        }
    }
}

/// The quads a reference recording stores.
pub fn reference_quads(peaks: &[Peak], p: &Params) -> Vec<RefQuad> {
    let grid = Grid::new(p);
    let time_step = p.stored_time_step as f32;
    let freq_step = f32::from(p.stored_freq_step);
    let span_step = f32::from(p.stored_span_step);
    let mut out = Vec::new();
    for_each_anchor(
        peaks,
        p,
        p.quad_min_dt_frames,
        p.quad_max_dt_frames,
        p.ref_partners,
        |a, partners| {
            for_each_choice(partners, p.hash_peaks - 1, |rest| {
                let d = rest[rest.len() - 1];
                let Some(inv) = invariants(a, rest) else {
                    return;
                };
                let hash = grid.pack(
                    inv.df.map(|x| grid.df_cell(x)),
                    inv.ratio.map(|x| grid.ratio_cell(x)),
                    grid.order(&inv.louder),
                );
                // Both times on the stored scale first, so that the span is their
                // difference.
                let (ta, td) = (stored_time(a.time), stored_time(d.time));
                out.push(RefQuad {
                    hash,
                    time: on_grid(ta, time_step) as u32,
                    freq: on_grid(a.bin.max(0.0) * FREQ_SCALE, freq_step).min(u16::MAX as f32)
                        as u16,
                    span: on_grid(td - ta, span_step).min(u16::MAX as f32) as u16,
                });
            });
        },
    );
    out
}

/// A stored anchor time ([`RefQuad::time`]) rounded to whole frames, as the matcher takes
/// it. The store keeps times in 1/[`TIME_SCALE`] frame only so that spans are differences
/// of times; matching on the finer times found two more chance matches in whole
/// never-indexed songs (BENCHMARKS.md, session 15).
pub fn whole_frames(time: u32) -> u32 {
    let scale = TIME_SCALE as u32;
    time.saturating_add(scale / 2) / scale
}

/// A peak time in frames on the stored scale (1/[`TIME_SCALE`] frame), whole units.
fn stored_time(frames: f32) -> f32 {
    (frames.max(0.0) * TIME_SCALE).round()
}

/// `value` rounded to the nearest multiple of `step`.
fn on_grid(value: f32, step: f32) -> f32 {
    (value / step).round() * step
}

/// The quads a query looks up: more partners over a time zone widened by the largest
/// time factors searched, and each quad also under the neighbouring hash cells of any
/// invariant that lies close to a cell boundary (peak positions jitter by a fraction of a
/// frame or bin, and a quad whose invariant crosses a boundary would otherwise be lost).
pub fn query_quads(peaks: &[Peak], p: &Params) -> Vec<QueryQuad> {
    // Anchors are independent, so chunks of them are paired in parallel and the chunks'
    // quads joined in anchor order: the same list as one pass would give.
    let chunks: Vec<Vec<QueryQuad>> = (0..peaks.len().div_ceil(QUERY_ANCHOR_CHUNK))
        .into_par_iter()
        .map(|c| {
            let start = c * QUERY_ANCHOR_CHUNK;
            query_quads_of(
                peaks,
                start..(start + QUERY_ANCHOR_CHUNK).min(peaks.len()),
                p,
            )
        })
        .collect();
    chunks.concat()
}

/// Anchors per parallel task of [`query_quads`] (about 20 s of a query).
const QUERY_ANCHOR_CHUNK: usize = 1024;

/// The query quads of the anchors `peaks[anchors]`.
fn query_quads_of(peaks: &[Peak], anchors: std::ops::Range<usize>, p: &Params) -> Vec<QueryQuad> {
    let grid = Grid::new(p);
    let mut out = Vec::new();
    let min_dt = p.quad_min_dt_frames / p.max_time_factor;
    let max_dt = p.quad_max_dt_frames * p.max_time_factor;
    let mut cells = Vec::with_capacity(p.max_expansions);
    for_each_anchor_in(
        peaks,
        anchors,
        p,
        min_dt,
        max_dt,
        p.query_partners,
        |a, partners| {
            for_each_choice(partners, p.hash_peaks - 1, |rest| {
                let span = rest[rest.len() - 1].time - a.time;
                // A reference quad spans quad_min_dt..quad_max_dt frames; a query quad whose span
                // no allowed time factor can produce cannot match, so it is not looked up.
                if span < p.quad_min_dt_frames / p.max_time_factor
                    || span > p.quad_max_dt_frames * p.max_time_factor
                {
                    return;
                }
                let Some(inv) = invariants(a, rest) else {
                    return;
                };
                expand_cells(&grid, p, &inv, span, &mut cells);
                for &hash in &cells {
                    out.push(QueryQuad {
                        hash,
                        time: a.time,
                        bin: a.bin,
                        span,
                    });
                }
            });
        },
    );
    out
}

/// Fills `cells` with the hash of the quad's own cell and of the neighbouring cells worth
/// trying, closest boundaries first, at most `max_expansions` hashes in all.
fn expand_cells(grid: &Grid, p: &Params, inv: &Invariants, span: f32, cells: &mut Vec<u32>) {
    cells.clear();
    let df_cells = inv.df.map(|x| grid.df_cell(x));
    let ratio_cells = inv.ratio.map(|x| grid.ratio_cell(x));
    let order = grid.order(&inv.louder);
    // Each candidate: (closeness in units of the tolerance, coordinate index, neighbour
    // cell); coordinates 0-2 are frequency differences, 3-4 ratios, 5-7 order bits.
    let mut near: [(f32, usize, u32); 8] = [(f32::INFINITY, 0, 0); 8];
    let df_tol = p.df_tolerance_bins / grid.df_step;
    let ratio_tol = p.time_tolerance_frames / span * grid.ratio_levels as f32;
    // A triplet uses two frequency differences and one ratio; the rest stay at 0.
    let used = p.hash_peaks - 1;
    for i in 0..used {
        let c = grid.df_coord(inv.df[i]);
        near[i] = neighbour(c, df_cells[i], grid.df_levels, df_tol, i);
    }
    for i in 0..used - 1 {
        let c = grid.ratio_coord(inv.ratio[i]);
        near[3 + i] = neighbour(c, ratio_cells[i], grid.ratio_levels, ratio_tol, 3 + i);
    }
    for i in 0..grid.order_bits as usize {
        // The other order, as close as the two strengths are.
        let closeness = if p.strength_tolerance > 0.0 {
            inv.louder[i].abs() / p.strength_tolerance
        } else {
            f32::INFINITY
        };
        // (No cell: a bit flips whatever the other bits are.)
        near[5 + i] = (closeness, 5 + i, 0);
    }
    // Only the neighbours within the tolerance are worth trying, closest first (a stable
    // sort: ties keep the coordinates' order). Most triplets have none or one, so they
    // are picked out before sorting.
    let mut worth = [(0f32, 0usize, 0u32); 8];
    let mut n_worth = 0;
    for &candidate in &near {
        if candidate.0 <= 1.0 {
            worth[n_worth] = candidate;
            n_worth += 1;
        }
    }
    let worth = &mut worth[..n_worth];
    worth.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Each neighbour worth trying doubles the cells: the ones so far, then each of them
    // moved to that neighbour. Moving one coordinate adds the same amount to every hash
    // (its step in the packing times the cells moved; an order bit flips from its own
    // value), so the hashes are made from the first by sums, in the caller's buffer.
    cells.push(grid.pack(df_cells, ratio_cells, order));
    for &(_, coord, cell) in worth.iter() {
        let n = cells.len();
        if n * 2 > p.max_expansions {
            break;
        }
        let delta = match coord {
            0..=2 => grid
                .step(coord)
                .wrapping_mul(cell.wrapping_sub(df_cells[coord])),
            3..=4 => grid
                .step(coord)
                .wrapping_mul(cell.wrapping_sub(ratio_cells[coord - 3])),
            _ => {
                let bit = 1u32 << (coord - 5);
                if order & bit == 0 {
                    bit
                } else {
                    bit.wrapping_neg()
                }
            }
        };
        for k in 0..n {
            let moved = cells[k].wrapping_add(delta);
            cells.push(moved);
        }
    }
}

/// Diagnostics for the benchmark's oracle (not part of the product): the cells (two
/// frequency differences, the ratio, the order bits) of the triplet of anchor `a` and
/// partners `rest` (in time order), and the hashes a query looks up for it (its own cell
/// and the neighbours worth trying).
#[doc(hidden)]
pub fn triplet_diagnostics(a: &Peak, rest: &[Peak; 2], p: &Params) -> Option<([u32; 4], Vec<u32>)> {
    let grid = Grid::new(p);
    let inv = invariants(a, rest)?;
    let cells = [
        grid.df_cell(inv.df[0]),
        grid.df_cell(inv.df[1]),
        grid.ratio_cell(inv.ratio[0]),
        grid.order(&inv.louder),
    ];
    let mut hashes = Vec::new();
    expand_cells(&grid, p, &inv, rest[1].time - a.time, &mut hashes);
    Some((cells, hashes))
}

/// The hash of cells made by [`triplet_diagnostics`].
#[doc(hidden)]
pub fn triplet_hash(cells: [u32; 4], p: &Params) -> u32 {
    Grid::new(p).pack([cells[0], cells[1], 0], [cells[2], 0], cells[3])
}

/// The neighbouring cell nearer to `coord` and the distance to the shared boundary, in units
/// of `tol` (so values below 1 are worth trying); infinity where there is no neighbour.
fn neighbour(coord: f32, cell: u32, levels: u32, tol: f32, index: usize) -> (f32, usize, u32) {
    let frac = coord - cell as f32;
    let (dist, other) = if frac < 0.5 {
        (frac, cell.checked_sub(1))
    } else {
        (1.0 - frac, (cell + 1 < levels).then_some(cell + 1))
    };
    match other {
        Some(o) if tol > 0.0 => (dist / tol, index, o),
        _ => (f32::INFINITY, index, cell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_hooks_give_the_hash_the_reference_stores_and_the_query_looks_up() {
        let p = Params::default();
        let peak = |time: f32, bin: f32, strength: f32| Peak {
            time,
            bin,
            strength,
        };
        let (a, b, c) = (
            peak(10.0, 60.3, 1.0),
            peak(19.6, 71.8, 2.5),
            peak(42.2, 55.1, 0.5),
        );
        let stored = reference_quads(&[a, b, c], &p);
        assert_eq!(stored.len(), 1);
        let (cells, looked_up) = triplet_diagnostics(&a, &[b, c], &p).expect("a triplet");
        assert_eq!(triplet_hash(cells, &p), stored[0].hash);
        // The query's own cell comes first, before its neighbours.
        assert_eq!(looked_up[0], stored[0].hash);
        // A partner moved across a frequency-difference boundary by more than the
        // tolerance has another cell, which the query of the moved triplet does not try.
        let moved = peak(19.6, 72.8, 2.5);
        let (moved_cells, moved_up) = triplet_diagnostics(&a, &[moved, c], &p).expect("a triplet");
        assert_ne!(moved_cells[0], cells[0]);
        assert!(!moved_up.contains(&stored[0].hash));
    }

    #[test]
    fn stored_times_round_to_whole_frames() {
        let cases = [
            (0, 0),
            (7, 0),
            (8, 1),
            (23, 1),
            (24, 2),
            (u32::MAX, u32::MAX / 16),
        ];
        for (time, frames) in cases {
            assert_eq!(whole_frames(time), frames, "{time}");
        }
        // A stored time is the peak's in 1/16 frame, so it rounds back to the nearest frame
        // (but within 1/32 frame of a half, where it may round the other way).
        for frames in [0.0f32, 2.4, 2.6, 1000.4, 1000.6] {
            assert_eq!(
                whole_frames(stored_time(frames) as u32),
                frames.round() as u32
            );
        }
    }

    fn peak(time: f32, bin: f32) -> Peak {
        Peak {
            time,
            bin,
            strength: 0.0,
        }
    }

    /// Four peaks whose invariants sit away from cell boundaries, so no quantisation flips.
    #[test]
    fn parallel_query_quads_equal_one_pass() {
        // Peaks for several anchor chunks, so partners cross the chunk boundaries.
        let n = 3 * QUERY_ANCHOR_CHUNK + 17;
        let mut state = 12345u64;
        let peaks: Vec<Peak> = (0..n)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                peak(i as f32 * 2.7, 20.0 + (state >> 33) as f32 % 150.0)
            })
            .collect();
        let p = Params::default();
        let one_pass = query_quads_of(&peaks, 0..n, &p);
        assert!(one_pass.len() > 10 * n);
        assert_eq!(query_quads(&peaks, &p), one_pass);
    }

    fn base_quad() -> [Peak; 4] {
        [
            peak(10.0, 80.3),
            peak(15.2, 85.1),
            peak(22.1, 76.9),
            peak(30.4, 90.2),
        ]
    }

    fn hashes_of(peaks: &[Peak], p: &Params) -> Vec<u32> {
        reference_quads(peaks, p).iter().map(|q| q.hash).collect()
    }

    /// Asserts that `base` stores exactly one hash and that each (time scale, pitch shift)
    /// in `moves` keeps it (moves that stretch it beyond a quad's span are skipped);
    /// returns the hash.
    fn assert_moves_keep_hash(base: &[Peak], p: &Params, moves: &[(f32, f32)]) -> Vec<u32> {
        let h0 = hashes_of(base, p);
        assert_eq!(h0.len(), 1);
        for &(scale, shift) in moves {
            let moved: Vec<Peak> = base
                .iter()
                .map(|q| Peak {
                    time: 100.0 + q.time * scale,
                    bin: q.bin + shift,
                    strength: q.strength,
                })
                .collect();
            if moved[moved.len() - 1].time - moved[0].time > p.quad_max_dt_frames {
                continue;
            }
            assert_eq!(hashes_of(&moved, p), h0, "scale {scale} shift {shift}");
        }
        h0
    }

    /// Asserts that the one hash `base` stores is among the query's when `base` (anchored
    /// at time 10) is stretched by `scale`, moved up `shift` bins and mixed with `extra`
    /// peaks, and that the hit reads back the scale and shift.
    fn assert_query_finds(base: &[Peak], p: &Params, scale: f32, shift: f32, extra: &[Peak]) {
        let stored = reference_quads(base, p);
        assert_eq!(stored.len(), 1);
        let mut query: Vec<Peak> = base
            .iter()
            .map(|q| Peak {
                time: 50.0 + (q.time - 10.0) * scale,
                bin: q.bin + shift,
                strength: q.strength,
            })
            .chain(extra.iter().copied())
            .collect();
        query.sort_by(|a, b| a.time.total_cmp(&b.time));
        let found: Vec<QueryQuad> = query_quads(&query, p)
            .into_iter()
            .filter(|q| q.hash == stored[0].hash)
            .collect();
        assert!(
            !found.is_empty(),
            "the stored hash was not among the query's"
        );
        // The store keeps span and bin on a grid: they read back within half a step.
        let ref_span = stored[0].span as f32 / SPAN_SCALE;
        let span_step = f32::from(p.stored_span_step) / SPAN_SCALE;
        assert!((found[0].span / scale - ref_span).abs() <= span_step / 2.0 + 5e-3 * ref_span);
        let bin_step = f32::from(p.stored_freq_step) / FREQ_SCALE;
        let ref_bin = stored[0].freq as f32 / FREQ_SCALE;
        assert!((found[0].bin - shift - ref_bin).abs() <= bin_step / 2.0 + 0.02);
    }

    /// Quad hashing (`hash_peaks` 4) on the grid it was tuned with, without order bits.
    fn quad_params() -> Params {
        Params {
            hash_peaks: 4,
            quad_df_step_bins: 2.0,
            quad_ratio_levels: 16,
            hash_order_bits: 0,
            ..Params::default()
        }
    }

    #[test]
    fn quad_hash_ignores_time_scale_and_pitch_shift() {
        let moves = [(0.7, 0.0), (1.7, 0.0), (1.0, 12.0), (0.8, -7.0), (2.5, 3.3)];
        assert_moves_keep_hash(&base_quad(), &quad_params(), &moves);
    }

    /// Triplet hashing (`hash_peaks` 3), the default.
    fn triplet_params() -> Params {
        let p = Params::default();
        assert_eq!((p.hash_peaks, p.hash_order_bits), (3, 2));
        p
    }

    /// Three peaks whose invariants sit away from cell boundaries on the triplet grid.
    fn base_triplet() -> [Peak; 3] {
        [peak(10.0, 80.3), peak(15.2, 85.1), peak(23.0, 77.5)]
    }

    #[test]
    fn triplet_hash_ignores_time_scale_and_pitch_shift() {
        let p = triplet_params();
        let base = base_triplet();
        let moves = [
            (0.7, 0.0),
            (1.7, 0.0),
            (1.0, 12.0),
            (0.65, -7.0),
            (2.0, 3.3),
        ];
        let h0 = assert_moves_keep_hash(&base, &p, &moves);
        // Three peaks make no quad: the hash's peak count decides which hashes form.
        let quad_grid = Params {
            hash_peaks: 4,
            ..p.clone()
        };
        assert!(hashes_of(&base, &quad_grid).is_empty());
        // Moving the middle peak by a few cells changes the hash.
        let mut other = base;
        other[1].time += 3.0;
        assert_ne!(hashes_of(&other, &p), h0);
    }

    #[test]
    fn query_finds_reference_triplet_among_extra_peaks_when_stretched() {
        // Sped up to 0.75x the duration, down 4 bins, two unrelated peaks in between.
        let extra = [peak(53.0, 90.0), peak(56.5, 70.0)];
        assert_query_finds(&base_triplet(), &triplet_params(), 0.75, -4.0, &extra);
    }

    #[test]
    fn query_finds_reference_quad_among_extra_peaks_when_stretched() {
        // The query is the same four peaks slowed to 1.6x the duration, shifted up 5 bins,
        // with two unrelated peaks in between.
        let extra = [peak(55.0, 83.0), peak(61.0, 95.0)];
        assert_query_finds(&base_quad(), &quad_params(), 1.6, 5.0, &extra);
    }

    /// The expanded cells made the plain way: every coordinate set moved and packed.
    fn cells_by_coordinates(grid: &Grid, p: &Params, inv: &Invariants, span: f32) -> Vec<u32> {
        let mut worth = Vec::new();
        let df_tol = p.df_tolerance_bins / grid.df_step;
        let ratio_tol = p.time_tolerance_frames / span * grid.ratio_levels as f32;
        let (df_cells, ratio_cells) = (
            inv.df.map(|x| grid.df_cell(x)),
            inv.ratio.map(|x| grid.ratio_cell(x)),
        );
        for (i, (&df, &cell)) in inv
            .df
            .iter()
            .zip(&df_cells)
            .enumerate()
            .take(p.hash_peaks - 1)
        {
            worth.push(neighbour(
                grid.df_coord(df),
                cell,
                grid.df_levels,
                df_tol,
                i,
            ));
        }
        for (i, (&ratio, &cell)) in inv
            .ratio
            .iter()
            .zip(&ratio_cells)
            .enumerate()
            .take(p.hash_peaks - 2)
        {
            let c = grid.ratio_coord(ratio);
            worth.push(neighbour(c, cell, grid.ratio_levels, ratio_tol, 3 + i));
        }
        for i in 0..grid.order_bits as usize {
            worth.push((inv.louder[i].abs() / p.strength_tolerance, 5 + i, 0));
        }
        worth.retain(|w| w.0 <= 1.0);
        worth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut coords = vec![(df_cells, ratio_cells, grid.order(&inv.louder))];
        for &(_, coord, cell) in &worth {
            let n = coords.len();
            if n * 2 > p.max_expansions {
                break;
            }
            for k in 0..n {
                let (mut df, mut ratio, mut bits) = coords[k];
                match coord {
                    0..=2 => df[coord] = cell,
                    3..=4 => ratio[coord - 3] = cell,
                    _ => bits ^= 1 << (coord - 5),
                }
                coords.push((df, ratio, bits));
            }
        }
        coords
            .iter()
            .map(|&(df, ratio, bits)| grid.pack(df, ratio, bits))
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn expanded_cells_are_the_moved_coordinates_packed(
            quads in proptest::bool::ANY,
            df in proptest::array::uniform3(-30f32..30.0),
            ratio in proptest::array::uniform2(0f32..1.0),
            louder in proptest::array::uniform3(-3f32..3.0),
            span in 2f32..200.0,
        ) {
            let p = if quads { Params { hash_order_bits: 2, ..quad_params() } } else { Params::default() };
            let grid = Grid::new(&p);
            let inv = Invariants { df, ratio, louder };
            let mut cells = Vec::new();
            expand_cells(&grid, &p, &inv, span, &mut cells);
            proptest::prop_assert_eq!(cells, cells_by_coordinates(&grid, &p, &inv, span));
        }
    }

    #[test]
    fn jitter_across_a_boundary_is_covered_by_expansion() {
        let p = quad_params();
        let grid = Grid::new(&p);
        // Put fB - fA exactly on a cell boundary, then nudge it either way.
        let boundary = grid.df_step * 10.0 - grid.df_range;
        let make = |eps: f32| {
            [
                peak(10.0, 80.0),
                peak(15.2, 80.0 + boundary + eps),
                peak(22.1, 76.9),
                peak(30.4, 90.2),
            ]
        };
        let stored = hashes_of(&make(-0.05), &p);
        let query = query_quads(&make(0.05), &p);
        assert!(query.iter().any(|q| q.hash == stored[0]));
    }

    /// The base triplet with the given strengths (log power) of its three peaks.
    fn loud_triplet(strength: [f32; 3]) -> [Peak; 3] {
        let mut t = base_triplet();
        for (x, s) in t.iter_mut().zip(strength) {
            x.strength = s;
        }
        t
    }

    #[test]
    fn loudness_order_survives_gain_and_transforms_and_splits_the_keys() {
        let p = triplet_params();
        let moves = [(0.7, 0.0), (1.0, 12.0), (1.6, -5.0)];
        let h0 = assert_moves_keep_hash(&loud_triplet([1.0, 4.0, 0.5]), &p, &moves);
        // A gain changes every strength alike.
        assert_eq!(hashes_of(&loud_triplet([-6.0, -3.0, -6.5]), &p), h0);
        // The same peaks in another loudness order are another key.
        assert_ne!(hashes_of(&loud_triplet([4.0, 1.0, 0.5]), &p), h0);
        assert_ne!(hashes_of(&loud_triplet([1.0, 4.0, 6.0]), &p), h0);
        // Without order bits the strengths play no part.
        let no_bits = Params {
            hash_order_bits: 0,
            ..p
        };
        assert_eq!(
            hashes_of(&loud_triplet([1.0, 4.0, 0.5]), &no_bits),
            hashes_of(&loud_triplet([4.0, 1.0, 0.5]), &no_bits)
        );
    }

    #[test]
    fn query_tries_both_orders_of_peaks_of_near_equal_strength() {
        let p = triplet_params();
        // Stored with the first partner a little louder than the anchor; in the query the
        // mix left it a little quieter: still found.
        let stored = hashes_of(&loud_triplet([2.0, 2.3, 0.0]), &p);
        let flipped = query_quads(&loud_triplet([2.0, 1.8, 0.0]), &p);
        assert!(flipped.iter().any(|q| q.hash == stored[0]));
        // A clear reversal (3 nats either way) is another triplet.
        let stored = hashes_of(&loud_triplet([2.0, 5.0, 0.0]), &p);
        let reversed = query_quads(&loud_triplet([5.0, 2.0, 0.0]), &p);
        assert!(reversed.iter().all(|q| q.hash != stored[0]));
    }
}
