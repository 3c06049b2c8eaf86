//! Spectral peak picking: local maxima of the log-frequency spectrogram, thinned to a
//! target density per second and per sub-band.
//!
//! Peaks are the landmarks every quad is built from. Two properties matter: a peak's
//! position must move exactly with the transform (time scaling moves it in time, pitch
//! shifting moves it by whole bins), and the same peaks must be chosen in a reference and
//! in a query where the reference sits under other music. Thinning per sub-band keeps
//! peaks spread over the spectrum, so a low-pass filter or a loud kick drum removes only
//! the peaks in its own band rather than starving the others.

use crate::Params;
use crate::spectrogram::LogSpectrogram;

/// One spectral peak, with sub-frame and sub-bin position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// Time in frames (hops) from the start of the signal.
    pub time: f32,
    /// Position on the log-frequency axis, in bins.
    pub bin: f32,
    /// Log power at the peak, used only to rank peaks.
    pub strength: f32,
}

/// Finds the peaks of `spec` (maxima of a neighbourhood of the given radii), keeping about
/// `peaks_per_s` of them per second of audio.
pub fn find_peaks(
    spec: &LogSpectrogram,
    params: &Params,
    peaks_per_s: f32,
    radius: (usize, usize),
) -> Vec<Peak> {
    let mut picker = PeakPicker::new(params, peaks_per_s, radius, spec.n_bins);
    picker.advance(&spec.data);
    picker.finish(&spec.data)
}

/// [`find_peaks`] on a spectrogram that grows as its frames are made: each call to
/// [`Self::advance`] examines the frames whose whole neighbourhood has arrived, so most of
/// the work is done by the time the last frame is, and [`Self::finish`] gives exactly what
/// `find_peaks` gives for the whole spectrogram.
///
/// A peak is the maximum of its neighbourhood: of the maxima along frequency (within the
/// bin radius) of the frames within the frame radius. Those row maxima are made one frame
/// at a time into a ring that holds exactly the frames around the one examined (rows
/// before the first frame and past the last are -inf, which is what clipping the window
/// means for a maximum), so the filter's memory is a few kilobytes that stay in the cache,
/// not a plane the size of the spectrogram. Only the points that pass the cheap tests
/// (the floor, and larger than the four next to them) read their neighbourhood from the
/// ring.
pub struct PeakPicker<'p> {
    params: &'p Params,
    peaks_per_s: f32,
    radius_frames: usize,
    radius_bins: usize,
    n_bins: usize,
    /// Row maxima of `2 * radius_frames + 1` frames; frame `g` in row `g % rows`.
    ring: Vec<f32>,
    /// Frames whose row maxima have entered the ring.
    made: usize,
    /// The next frame to examine.
    next: usize,
    /// The loudest value of the frames made so far.
    loudest: f32,
    /// Per bin but the first and last, 1 where the frame examined passes the tests
    /// against the floor and its four next neighbours.
    passes: Vec<u8>,
    sliding: SlidingMax,
    /// Peaks above the lowest floor there can be (`min_log_power`): the floor also follows
    /// the loudest value, which is known only at the end.
    candidates: Vec<Peak>,
}

impl<'p> PeakPicker<'p> {
    /// A picker for spectrograms of `n_bins` bins a frame.
    pub fn new(
        params: &'p Params,
        peaks_per_s: f32,
        (radius_frames, radius_bins): (usize, usize),
        n_bins: usize,
    ) -> Self {
        Self {
            params,
            peaks_per_s,
            radius_frames,
            radius_bins,
            n_bins,
            ring: vec![f32::NEG_INFINITY; (2 * radius_frames + 1) * n_bins],
            made: 0,
            next: 1,
            loudest: f32::NEG_INFINITY,
            passes: Vec::with_capacity(n_bins),
            sliding: SlidingMax::default(),
            candidates: Vec::new(),
        }
    }

    /// Examines what `data` (every frame so far, frame-major; it only ever grows) now
    /// allows.
    pub fn advance(&mut self, data: &[f32]) {
        if self.n_bins < 3 {
            return;
        }
        let n_frames = data.len() / self.n_bins;
        // Frame f needs the row maxima up to f + radius and the frame after it.
        let ahead = self.radius_frames.max(1);
        while self.next + ahead < n_frames {
            self.examine(data, self.next, None);
            self.next += 1;
        }
    }

    /// The peaks of the whole spectrogram `data` (everything given to [`Self::advance`]
    /// and any frames since), thinned to the density asked for.
    pub fn finish(mut self, data: &[f32]) -> Vec<Peak> {
        let n_bins = self.n_bins;
        let n_frames = data.len().checked_div(n_bins).unwrap_or(0);
        if n_frames < 3 || n_bins < 3 {
            return Vec::new();
        }
        while self.next + 1 < n_frames {
            self.examine(data, self.next, Some(n_frames));
            self.next += 1;
        }
        // Frames that no examined frame needed (the last, with a radius of 0 frames) still
        // count for the loudest value.
        while self.made < n_frames {
            let frame = &data[self.made * n_bins..][..n_bins];
            self.loudest = frame.iter().copied().fold(self.loudest, f32::max);
            self.made += 1;
        }
        // The floor follows the signal's loudest bin, so a gain moves it with the peaks.
        let p = self.params;
        let floor = p.min_log_power.max(self.loudest - p.dynamic_range_log);
        self.candidates.retain(|peak| peak.strength >= floor);
        thin(self.candidates, p, self.peaks_per_s, n_frames, n_bins)
    }

    /// Looks for peaks in frame `f` of `data`; `end`, the number of frames, once known
    /// (rows past it are -inf).
    fn examine(&mut self, data: &[f32], f: usize, end: Option<usize>) {
        let n_bins = self.n_bins;
        let rows = 2 * self.radius_frames + 1;
        while self.made <= f + self.radius_frames {
            let row = &mut self.ring[(self.made % rows) * n_bins..][..n_bins];
            if end.is_some_and(|n| self.made >= n) {
                row.fill(f32::NEG_INFINITY);
            } else {
                let frame = &data[self.made * n_bins..][..n_bins];
                self.loudest = frame.iter().copied().fold(self.loudest, f32::max);
                self.sliding.run(frame, self.radius_bins, row);
            }
            self.made += 1;
        }
        let floor = self.params.min_log_power;
        let frame_at = |g: usize| &data[g * n_bins..][..n_bins];
        let (previous, frame, next) = (frame_at(f - 1), frame_at(f), frame_at(f + 1));
        // Above the floor and larger than the four next to it (plateaus, equal
        // neighbours, are not peaks: they come from clipping or silence): five tests on
        // every bin, as flags, without a branch (a loop the compiler vectorises); then
        // only the points that pass (about a fifth) are compared with their whole
        // neighbourhood. A branch a test, taken or not at random, cost twice as much.
        self.passes.clear();
        self.passes.extend(
            frame[1..n_bins - 1]
                .iter()
                .zip(&frame[..n_bins - 2])
                .zip(&frame[2..])
                .zip(&previous[1..n_bins - 1])
                .zip(&next[1..n_bins - 1])
                .map(|((((&v, &left), &right), &before), &after)| {
                    u8::from(v >= floor)
                        & u8::from(v > left)
                        & u8::from(v > right)
                        & u8::from(v > before)
                        & u8::from(v > after)
                }),
        );
        for (k, &passes) in (1..).zip(&self.passes) {
            if passes == 0 {
                continue;
            }
            let v = frame[k];
            let neighbourhood = self
                .ring
                .iter()
                .skip(k)
                .step_by(n_bins)
                .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            if v < neighbourhood {
                continue;
            }
            let (left, right) = (frame[k - 1], frame[k + 1]);
            let (before, after) = (previous[k], next[k]);
            self.candidates.push(Peak {
                time: f as f32 + parabolic_offset(before, v, after),
                bin: k as f32 + parabolic_offset(left, v, right),
                strength: v,
            });
        }
    }
}

/// Keeps the strongest peaks of each (block of time, sub-band) cell.
fn thin(
    candidates: Vec<Peak>,
    params: &Params,
    peaks_per_s: f32,
    n_frames: usize,
    n_bins: usize,
) -> Vec<Peak> {
    let block_frames = params.density_block_frames.max(1);
    let n_blocks = n_frames.div_ceil(block_frames);
    let n_sub = params.density_subbands.max(1);
    let block_s = block_frames as f32 * params.hop as f32 / params.sample_rate_hz as f32;
    let per_cell = ((peaks_per_s * block_s) / n_sub as f32).ceil().max(1.0) as usize;
    let mut cells: Vec<Vec<Peak>> = vec![Vec::new(); n_blocks * n_sub];
    for p in candidates {
        let block = (p.time.max(0.0) as usize / block_frames).min(n_blocks - 1);
        let sub = ((p.bin.max(0.0) as usize * n_sub) / n_bins).min(n_sub - 1);
        cells[block * n_sub + sub].push(p);
    }
    let mut out = Vec::new();
    for mut cell in cells {
        if cell.len() > per_cell {
            cell.select_nth_unstable_by(per_cell - 1, |a, b| b.strength.total_cmp(&a.strength));
            cell.truncate(per_cell);
        }
        out.extend(cell);
    }
    out.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.bin.total_cmp(&b.bin)));
    out
}

/// The offset in (-0.5, 0.5) of the vertex of the parabola through three equally spaced
/// values whose middle one is the largest.
fn parabolic_offset(a: f32, b: f32, c: f32) -> f32 {
    let denom = a - 2.0 * b + c;
    if denom.abs() < 1e-12 {
        0.0
    } else {
        (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
    }
}

/// `out[i]` = max of `input[i - r ..= i + r]` (clipped to the slice), in O(n).
#[cfg(test)]
fn sliding_max(input: &[f32], r: usize, out: &mut [f32]) {
    SlidingMax::default().run(input, r, out);
}

/// The running maximum of van Herk and Gil & Werman: over the input padded with -inf by
/// `r` each side (which is what clipping the window means for a maximum), blocks of the
/// window's length `w` get a running maximum from their start (`g`) and from their end
/// (`h`); a window of length `w` spans the end of one block and the start of the next, so
/// its maximum is `max(h[lo], g[hi])`: three comparisons an element and no branches on
/// the data, where a monotonic queue branched on every element. Buffers are kept between
/// calls (one call per frame and per bin of a spectrogram).
#[derive(Default)]
struct SlidingMax {
    padded: Vec<f32>,
    g: Vec<f32>,
    h: Vec<f32>,
}

impl SlidingMax {
    fn run(&mut self, input: &[f32], r: usize, out: &mut [f32]) {
        let n = input.len().min(out.len());
        if n == 0 {
            return;
        }
        let w = 2 * r + 1;
        let len = n + 2 * r;
        self.padded.clear();
        self.padded.resize(r, f32::NEG_INFINITY);
        self.padded.extend_from_slice(&input[..n]);
        self.padded.resize(len, f32::NEG_INFINITY);
        self.g.resize(len, 0.0);
        self.h.resize(len, 0.0);
        for start in (0..len).step_by(w) {
            let end = (start + w).min(len);
            let block = &self.padded[start..end];
            let mut run = f32::NEG_INFINITY;
            for (g, &x) in self.g[start..end].iter_mut().zip(block) {
                run = run.max(x);
                *g = run;
            }
            run = f32::NEG_INFINITY;
            for (h, &x) in self.h[start..end].iter_mut().zip(block).rev() {
                run = run.max(x);
                *h = run;
            }
        }
        // Output i is the window padded[i ..= i + 2r].
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = self.h[i].max(self.g[i + 2 * r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sliding_max_matches_naive(input in proptest::collection::vec(-100f32..100.0, 1..200), r in 0usize..12) {
            let mut out = vec![0f32; input.len()];
            sliding_max(&input, r, &mut out);
            for (i, &got) in out.iter().enumerate() {
                let lo = i.saturating_sub(r);
                let hi = (i + r).min(input.len() - 1);
                let expect = input[lo..=hi].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                prop_assert_eq!(got, expect);
            }
        }
    }

    /// The definition, slowly: every point above the floor that is larger than its four
    /// next neighbours and no smaller than anything within the radii, before thinning.
    fn naive_candidates(
        spec: &LogSpectrogram,
        floor: f32,
        (rf, rb): (usize, usize),
    ) -> Vec<(usize, usize)> {
        let (n_frames, n_bins) = (spec.n_frames, spec.n_bins);
        let mut out = Vec::new();
        for f in 1..n_frames - 1 {
            for k in 1..n_bins - 1 {
                let v = spec.at(f, k);
                let strict = [(f, k - 1), (f, k + 1), (f - 1, k), (f + 1, k)]
                    .iter()
                    .all(|&(g, j)| v > spec.at(g, j));
                let mut widest = f32::NEG_INFINITY;
                for g in f.saturating_sub(rf)..=(f + rf).min(n_frames - 1) {
                    for j in k.saturating_sub(rb)..=(k + rb).min(n_bins - 1) {
                        widest = widest.max(spec.at(g, j));
                    }
                }
                if v >= floor && strict && v >= widest {
                    out.push((f, k));
                }
            }
        }
        out
    }

    /// A spectrogram of few levels, so that ties and plateaus are common.
    fn levels_spectrogram(
        n_frames: usize,
        n_bins: usize,
        levels: u32,
        seed: u64,
    ) -> LogSpectrogram {
        let mut state = seed | 1;
        let data = (0..n_frames * n_bins)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % u64::from(levels)) as f32 - 30.0
            })
            .collect();
        LogSpectrogram {
            n_frames,
            n_bins,
            data,
        }
    }

    /// Parameters whose thinning keeps every peak (one cell a frame and sub-band holds
    /// them all at the density asked for in these tests, 1e9 a second).
    fn keep_all(dynamic_range_log: f32) -> Params {
        Params {
            density_block_frames: 1,
            density_subbands: 1,
            min_log_power: -20.0,
            dynamic_range_log,
            ..Params::default()
        }
    }

    proptest! {
        #[test]
        fn peaks_are_the_maxima_of_their_neighbourhoods(
            n_frames in 3usize..60,
            n_bins in 3usize..40,
            levels in 2u32..40,
            rf in 0usize..10,
            rb in 0usize..10,
            range in 1f32..40.0,
            seed in any::<u64>(),
        ) {
            let spec = levels_spectrogram(n_frames, n_bins, levels, seed);
            let peaks = find_peaks(&spec, &keep_all(range), 1e9, (rf, rb));
            let mut found: Vec<(usize, usize)> = peaks
                .iter()
                .map(|p| (p.time.round() as usize, p.bin.round() as usize))
                .collect();
            found.sort_unstable();
            let loudest = spec.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let floor = (-20f32).max(loudest - range);
            prop_assert_eq!(found, naive_candidates(&spec, floor, (rf, rb)));
        }

        #[test]
        fn frames_in_any_pieces_give_the_same_peaks(
            n_frames in 0usize..80,
            n_bins in 0usize..30,
            rf in 0usize..10,
            rb in 0usize..6,
            range in 1f32..40.0,
            pieces in proptest::collection::vec(0usize..20, 0..12),
            seed in any::<u64>(),
        ) {
            let spec = levels_spectrogram(n_frames, n_bins, 30, seed);
            let params = Params { density_block_frames: 7, density_subbands: 2, ..keep_all(range) };
            let whole = find_peaks(&spec, &params, 40.0, (rf, rb));
            let mut picker = PeakPicker::new(&params, 40.0, (rf, rb), n_bins);
            let mut frames = 0;
            for piece in pieces {
                frames = (frames + piece).min(n_frames);
                picker.advance(&spec.data[..frames * n_bins]);
            }
            prop_assert_eq!(picker.finish(&spec.data), whole);
        }
    }

    #[test]
    fn the_floor_follows_the_loudest_frame_even_the_last() {
        // A peak at -10 in frame 2, and the loudest value (+20) in the last frame, which
        // a radius of 0 frames never reads as a neighbour.
        let mut spec = LogSpectrogram {
            n_frames: 5,
            n_bins: 5,
            data: vec![-30.0; 25],
        };
        spec.data[2 * 5 + 2] = -10.0;
        spec.data[4 * 5 + 2] = 20.0;
        // Floor: max(-20, 20 - 25) = -5, above the peak.
        assert!(find_peaks(&spec, &keep_all(25.0), 1e9, (0, 1)).is_empty());
        // Floor: max(-20, 20 - 35) = -15, below it.
        assert_eq!(find_peaks(&spec, &keep_all(35.0), 1e9, (0, 1)).len(), 1);
    }

    #[test]
    fn parabolic_offset_finds_vertex() {
        // Samples of -(x - 0.3)^2 at x = -1, 0, 1 have their vertex at 0.3.
        let f = |x: f32| -(x - 0.3) * (x - 0.3);
        assert!((parabolic_offset(f(-1.0), f(0.0), f(1.0)) - 0.3).abs() < 1e-5);
    }
}
