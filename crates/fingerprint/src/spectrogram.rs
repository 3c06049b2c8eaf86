//! Short-time Fourier transform and its projection onto a log-frequency axis.
//!
//! A log-frequency axis turns a pitch shift (every frequency multiplied by a constant) into
//! a translation by a constant number of bins, which is what lets the quad hashes ignore it.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex, num_complex::Complex};

use crate::Params;

/// Log-power spectrogram on a log-frequency axis, stored frame-major.
#[derive(Clone, Debug)]
pub struct LogSpectrogram {
    /// Number of frames (one per hop).
    pub n_frames: usize,
    /// Number of log-frequency bins per frame.
    pub n_bins: usize,
    /// `n_frames * n_bins` values of natural-log power.
    pub data: Vec<f32>,
}

impl LogSpectrogram {
    /// The log power of `bin` in `frame`.
    pub fn at(&self, frame: usize, bin: usize) -> f32 {
        self.data[frame * self.n_bins + bin]
    }

    /// One frame's bins.
    pub fn frame(&self, frame: usize) -> &[f32] {
        &self.data[frame * self.n_bins..(frame + 1) * self.n_bins]
    }
}

/// How one log-frequency bin is read from the linear FFT bins.
#[derive(Clone, Copy, Debug)]
enum BinMap {
    /// The log bin is narrower than an FFT bin: interpolate the power at a fractional FFT bin.
    /// Below about 800 Hz peaks therefore sit at FFT-bin positions (a bin is a semitone wide
    /// at 250 Hz). A log-parabola interpolation that tracks the true frequency was tried and
    /// lowered recall on pitch-shifted samples (BENCHMARKS.md), so it is not used.
    Interp { lo: usize, frac: f32 },
    /// The log bin spans several FFT bins: take the largest power among them, so that a
    /// sinusoid anywhere in the band is seen at full strength.
    Max { lo: usize, hi: usize },
}

/// Computes log-frequency spectrograms for one parameter set; reusable across signals.
pub struct SpectrogramBuilder {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    map: Vec<BinMap>,
    fft_size: usize,
    hop: usize,
}

impl SpectrogramBuilder {
    /// Plans the FFT and the log-frequency mapping for `params`.
    pub fn new(params: &Params) -> Self {
        let fft_size = params.fft_size;
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(fft_size);
        // A Hann window keeps side lobes low, so weak partials next to strong ones stay peaks.
        let window = (0..fft_size)
            .map(|i| {
                let x = std::f32::consts::PI * 2.0 * i as f32 / fft_size as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        let hz_per_bin = params.sample_rate_hz as f32 / fft_size as f32;
        let n_lin = fft_size / 2 + 1;
        let map = (0..params.n_bins())
            .map(|k| {
                let centre = params.bin_hz(k as f32) / hz_per_bin;
                let half = 2f32.powf(0.5 / params.bins_per_octave as f32);
                let lo = (centre / half).ceil() as usize;
                let hi = (centre * half).floor() as usize;
                if hi > lo {
                    BinMap::Max {
                        lo: lo.min(n_lin - 1),
                        hi: hi.min(n_lin - 1),
                    }
                } else {
                    let lo = (centre.floor() as usize).min(n_lin - 2);
                    BinMap::Interp {
                        lo,
                        frac: (centre - lo as f32).clamp(0.0, 1.0),
                    }
                }
            })
            .collect();
        Self {
            fft,
            window,
            map,
            fft_size,
            hop: params.hop,
        }
    }

    /// Number of log-frequency bins of a frame.
    pub fn n_bins(&self) -> usize {
        self.map.len()
    }

    /// Number of frames a signal of `n_samples` yields.
    pub fn n_frames(&self, n_samples: usize) -> usize {
        if n_samples < self.fft_size {
            0
        } else {
            (n_samples - self.fft_size) / self.hop + 1
        }
    }

    /// The log spectrogram of `samples`: one frame per hop whose window fits in them.
    pub fn compute(&self, samples: &[f32]) -> LogSpectrogram {
        let n_frames = self.n_frames(samples.len());
        let mut frames = FrameMaker::new(self);
        let mut data = Vec::with_capacity(n_frames * self.map.len());
        for frame in 0..n_frames {
            let start = frame * self.hop;
            frames.append(&samples[start..start + self.fft_size], &mut data);
        }
        LogSpectrogram {
            n_frames,
            n_bins: self.map.len(),
            data,
        }
    }

    /// A spectrogram to be fed its samples in pieces, as a decoder makes them.
    pub fn stream(&self) -> SpectrogramStream<'_> {
        SpectrogramStream {
            frames: FrameMaker::new(self),
            pending: Vec::new(),
            next_start: 0,
            n_frames: 0,
            data: Vec::new(),
        }
    }
}

/// The transform's buffers, and the frame-by-frame work of [`SpectrogramBuilder::compute`].
struct FrameMaker<'b> {
    builder: &'b SpectrogramBuilder,
    input: Vec<f32>,
    output: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
}

impl<'b> FrameMaker<'b> {
    fn new(builder: &'b SpectrogramBuilder) -> Self {
        let output = builder.fft.make_output_vec();
        Self {
            input: builder.fft.make_input_vec(),
            scratch: builder.fft.make_scratch_vec(),
            power: vec![0f32; output.len()],
            output,
            builder,
        }
    }

    /// Appends the log-frequency frame of `chunk` (one window of samples) to `data`.
    fn append(&mut self, chunk: &[f32], data: &mut Vec<f32>) {
        let b = self.builder;
        for ((x, s), w) in self.input.iter_mut().zip(chunk).zip(&b.window) {
            *x = s * w;
        }
        if b.fft
            .process_with_scratch(&mut self.input, &mut self.output, &mut self.scratch)
            .is_err()
        {
            // Cannot happen with buffers made by the plan; a silent frame if it did.
            data.extend(std::iter::repeat_n(LOG_FLOOR, b.map.len()));
            return;
        }
        for (p, c) in self.power.iter_mut().zip(&self.output) {
            *p = norm_sqr(c);
        }
        let power = &self.power;
        data.extend(b.map.iter().map(|m| {
            let p = match *m {
                BinMap::Interp { lo, frac } => power[lo] * (1.0 - frac) + power[lo + 1] * frac,
                BinMap::Max { lo, hi } => power[lo..=hi].iter().copied().fold(0.0, f32::max),
            };
            (p + POWER_EPS).ln()
        }));
    }
}

/// A spectrogram made as its samples arrive ([`SpectrogramBuilder::stream`]): each frame is
/// computed once its window is complete, and [`Self::finish`] gives exactly what
/// [`SpectrogramBuilder::compute`] gives for all the samples at once.
pub struct SpectrogramStream<'b> {
    frames: FrameMaker<'b>,
    /// Samples not yet behind every frame that needs them.
    pending: Vec<f32>,
    /// Where the next frame's window starts in `pending`.
    next_start: usize,
    n_frames: usize,
    data: Vec<f32>,
}

impl SpectrogramStream<'_> {
    /// Takes the next samples of the signal.
    pub fn push(&mut self, samples: &[f32]) {
        let (fft_size, hop) = (self.frames.builder.fft_size, self.frames.builder.hop);
        self.pending.extend_from_slice(samples);
        while self.next_start + fft_size <= self.pending.len() {
            let start = self.next_start;
            self.frames
                .append(&self.pending[start..start + fft_size], &mut self.data);
            self.n_frames += 1;
            self.next_start += hop;
        }
        // Samples before the next window are done with; dropping them a batch at a time
        // keeps the buffer about one window long without moving it on every frame.
        if self.next_start >= fft_size {
            self.pending.drain(..self.next_start);
            self.next_start = 0;
        }
    }

    /// The frames made so far, frame-major (what [`Self::finish`] will hold, so far).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The spectrogram of everything pushed.
    pub fn finish(self) -> LogSpectrogram {
        LogSpectrogram {
            n_frames: self.n_frames,
            n_bins: self.frames.builder.map.len(),
            data: self.data,
        }
    }
}

/// Power added before the logarithm so that digital silence has a finite floor. Kept far
/// below any power the peak floor admits: 1e-10 compressed the neighbours of quiet peaks
/// and broke gain invariance (found by the property test).
const POWER_EPS: f32 = 1e-20;
/// The log power of digital silence.
const LOG_FLOOR: f32 = -46.051_7; // ln(1e-20)

fn norm_sqr(c: &Complex<f32>) -> f32 {
    c.re * c.re + c.im * c.im
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed pseudo-random signal in [-0.5, 0.5) (an LCG from `state`), so that tests
    /// are deterministic.
    pub(crate) fn noise(len: usize, mut state: u32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// A naive O(n^2) DFT power spectrum: the slow reference the FFT path is checked against.
    fn naive_power(frame: &[f32]) -> Vec<f32> {
        let n = frame.len();
        (0..=n / 2)
            .map(|k| {
                let (mut re, mut im) = (0f64, 0f64);
                for (i, &x) in frame.iter().enumerate() {
                    let a = -2.0 * std::f64::consts::PI * (k * i) as f64 / n as f64;
                    re += x as f64 * a.cos();
                    im += x as f64 * a.sin();
                }
                (re * re + im * im) as f32
            })
            .collect()
    }

    #[test]
    fn fft_frame_matches_naive_dft() {
        let params = Params::default();
        let b = SpectrogramBuilder::new(&params);
        let samples = noise(params.fft_size, 12345);
        let windowed: Vec<f32> = samples.iter().zip(&b.window).map(|(s, w)| s * w).collect();
        let reference = naive_power(&windowed);
        let spec = b.compute(&samples);
        assert_eq!(spec.n_frames, 1);
        for (k, m) in b.map.iter().enumerate() {
            let expect = match *m {
                BinMap::Interp { lo, frac } => {
                    reference[lo] * (1.0 - frac) + reference[lo + 1] * frac
                }
                BinMap::Max { lo, hi } => reference[lo..=hi].iter().copied().fold(0.0, f32::max),
            };
            let got = spec.at(0, k);
            assert!(
                (got - (expect + POWER_EPS).ln()).abs() < 1e-3,
                "bin {k}: {got} vs {}",
                (expect + POWER_EPS).ln()
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn a_stream_in_any_pieces_equals_the_whole(
            len in 0usize..6000,
            cuts in proptest::collection::vec(0usize..6000, 0..12),
            seed in 0u32..1000,
        ) {
            let params = Params::default();
            let b = SpectrogramBuilder::new(&params);
            let samples = noise(len, seed.wrapping_mul(2_654_435_761).wrapping_add(1));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
            cuts.push(len);
            cuts.sort_unstable();
            let mut stream = b.stream();
            let mut from = 0;
            for cut in cuts {
                stream.push(&samples[from..cut]);
                from = cut;
            }
            let (whole, streamed) = (b.compute(&samples), stream.finish());
            proptest::prop_assert_eq!(whole.n_frames, streamed.n_frames);
            proptest::prop_assert_eq!(whole.n_bins, streamed.n_bins);
            // Bit for bit: the same frames from the same windows.
            proptest::prop_assert!(whole.data.iter().zip(&streamed.data).all(|(a, b)| a.to_bits() == b.to_bits()));
            proptest::prop_assert_eq!(whole.data.len(), streamed.data.len());
        }
    }

    #[test]
    fn sine_peaks_at_its_log_bin() {
        let params = Params::default();
        let b = SpectrogramBuilder::new(&params);
        for hz in [300.0f32, 1000.0, 3000.0] {
            let samples: Vec<f32> = (0..params.fft_size * 4)
                .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / 16000.0).sin())
                .collect();
            let spec = b.compute(&samples);
            let frame = spec.frame(1);
            let best = (0..spec.n_bins)
                .max_by(|&a, &c| frame[a].total_cmp(&frame[c]))
                .unwrap_or(0);
            let expect = params.hz_to_bin(hz);
            assert!(
                (best as f32 - expect).abs() <= 1.5,
                "{hz} Hz peaked at bin {best}, expected {expect}"
            );
        }
    }
}
