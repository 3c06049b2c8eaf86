//! Streaming mono sample-rate conversion built on rubato's synchronous FFT resampler.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::AudioError;

/// The smallest FFT block on the output side we aim for; smaller blocks lower the anti-aliasing
/// cutoff, larger ones only add latency, which we do not care about offline.
const MIN_FFT_OUT_FRAMES: usize = 512;

/// Roughly how many input frames are handed to rubato per call, so its per-call overhead
/// (buffer validation, scratch copies) is amortised over many FFT blocks.
const TARGET_CHUNK_IN_FRAMES: usize = 16_384;

/// Converts a stream of mono samples from one fixed rate to another.
///
/// Callers append input samples to [`MonoResampler::input`], then call
/// [`MonoResampler::process_ready`] to move every complete chunk into the output, and finally
/// [`MonoResampler::finish`] to flush the tail. When both rates are equal no resampler is built
/// and [`MonoResampler::is_passthrough`] tells the caller to write straight into the output.
pub(crate) struct MonoResampler {
    /// `None` when the input rate already equals the output rate.
    fft: Option<Fft<f32>>,
    /// Input samples waiting for a complete chunk.
    pending: Vec<f32>,
    /// Output frames of rubato's start-up delay still to be dropped.
    delay_left_frames: usize,
    /// Total input frames received, to compute the exact output length at the end.
    in_frames: u64,
    /// Output frames kept so far (after dropping the delay).
    out_frames: u64,
    in_rate_hz: u32,
    out_rate_hz: u32,
}

impl MonoResampler {
    /// Builds a resampler from `in_rate_hz` to `out_rate_hz`; both must be non-zero.
    pub(crate) fn new(in_rate_hz: u32, out_rate_hz: u32) -> Result<Self, AudioError> {
        if in_rate_hz == out_rate_hz {
            return Ok(Self {
                fft: None,
                pending: Vec::new(),
                delay_left_frames: 0,
                in_frames: 0,
                out_frames: 0,
                in_rate_hz,
                out_rate_hz,
            });
        }
        let (in_rate, out_rate) = (in_rate_hz as usize, out_rate_hz as usize);
        let gcd = gcd(in_rate, out_rate);
        let (min_in, min_out) = (in_rate / gcd, out_rate / gcd);
        // The FFT sizes must be whole multiples of the minimal block for this ratio; a power of
        // two multiple keeps the transform sizes smooth (fast) for the common rates.
        let fft_blocks = MIN_FFT_OUT_FRAMES.div_ceil(min_out).next_power_of_two();
        let fft_size_in = fft_blocks * min_in;
        let sub_chunks = (TARGET_CHUNK_IN_FRAMES / fft_size_in).max(1);
        // Asking for `sub_chunks` blocks of exactly `fft_size_in` frames makes rubato pick our
        // FFT size, and a chunk that is a whole number of blocks means no frames are carried
        // over between calls, so every call consumes and produces a fixed number of frames.
        let fft = Fft::<f32>::new_custom(
            in_rate,
            out_rate,
            fft_size_in * sub_chunks,
            sub_chunks,
            1,
            rubato::WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| AudioError::Internal {
            reason: format!("cannot build a {in_rate_hz} Hz -> {out_rate_hz} Hz resampler: {e}"),
        })?;
        let delay_left_frames = fft.output_delay();
        let pending = Vec::with_capacity(fft.input_frames_max() * 2);
        Ok(Self {
            fft: Some(fft),
            pending,
            delay_left_frames,
            in_frames: 0,
            out_frames: 0,
            in_rate_hz,
            out_rate_hz,
        })
    }

    /// True when no conversion is needed and samples should go straight to the output.
    pub(crate) fn is_passthrough(&self) -> bool {
        self.fft.is_none()
    }

    /// The buffer to append new input samples to (unused in passthrough mode).
    pub(crate) fn input(&mut self) -> &mut Vec<f32> {
        &mut self.pending
    }

    /// Resamples every complete chunk waiting in the input buffer and appends it to `out`.
    pub(crate) fn process_ready(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let Some(fft) = self.fft.as_mut() else {
            return Ok(());
        };
        let mut start = 0;
        loop {
            let chunk_in = fft.input_frames_next();
            if self.pending.len() - start < chunk_in {
                break;
            }
            let input = &self.pending[start..start + chunk_in];
            let written = run_chunk(fft, input, None, out)?;
            self.in_frames += chunk_in as u64;
            start += chunk_in;
            keep_output(
                &mut self.delay_left_frames,
                &mut self.out_frames,
                out,
                written,
            );
        }
        // Only the incomplete tail (less than one chunk) is moved, so this stays cheap.
        self.pending.drain(..start);
        Ok(())
    }

    /// Flushes the remaining input and the resampler's delay line into `out`.
    ///
    /// The total output length is exactly `round(input_frames * out_rate / in_rate)`.
    pub(crate) fn finish(mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.process_ready(out)?;
        let Some(mut fft) = self.fft.take() else {
            return Ok(());
        };
        let remaining = self.pending.len();
        self.in_frames += remaining as u64;
        let expected_out = (u128::from(self.in_frames) * u128::from(self.out_rate_hz)
            + u128::from(self.in_rate_hz) / 2)
            / u128::from(self.in_rate_hz);
        let expected_out = u64::try_from(expected_out).unwrap_or(u64::MAX);
        let start_len = out.len() as u64 - self.out_frames;

        let pending = std::mem::take(&mut self.pending);
        let mut tail: &[f32] = &pending;
        // One partial chunk carries the leftover input; afterwards silence pushes the delay line
        // out. The delay is at most one chunk, so this loop runs only a couple of times, but we
        // bound it anyway so a logic error can never spin forever.
        for _ in 0..8 {
            if self.out_frames >= expected_out {
                break;
            }
            let written = run_chunk(&mut fft, tail, Some(tail.len()), out)?;
            tail = &[];
            keep_output(
                &mut self.delay_left_frames,
                &mut self.out_frames,
                out,
                written,
            );
        }
        let keep = start_len.saturating_add(expected_out.min(self.out_frames));
        out.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        Ok(())
    }
}

/// Accounts for `written` frames just appended to `out`, dropping the resampler's start-up
/// delay (`delay_left_frames`) and counting the kept frames into `out_frames`.
fn keep_output(
    delay_left_frames: &mut usize,
    out_frames: &mut u64,
    out: &mut Vec<f32>,
    written: usize,
) {
    let first_new = out.len() - written;
    let drop = (*delay_left_frames).min(written);
    if drop > 0 {
        out.drain(first_new..first_new + drop);
        *delay_left_frames -= drop;
    }
    *out_frames += (written - drop) as u64;
}

/// Runs one rubato call, appending its output to `out`; returns the number of frames appended.
fn run_chunk(
    fft: &mut Fft<f32>,
    input: &[f32],
    partial_len: Option<usize>,
    out: &mut Vec<f32>,
) -> Result<usize, AudioError> {
    let internal = |e: &dyn std::fmt::Display| AudioError::Internal {
        reason: format!("resampler: {e}"),
    };
    let chunk_out = fft.output_frames_next();
    let base = out.len();
    out.resize(base + chunk_out, 0.0);
    let input_adapter = InterleavedSlice::new(input, 1, input.len()).map_err(|e| internal(&e))?;
    let mut output_adapter =
        InterleavedSlice::new_mut(&mut out[base..], 1, chunk_out).map_err(|e| internal(&e))?;
    let indexing = partial_len.map(|n| Indexing::new().partial_len(n));
    let (_, written) = fft
        .process_into_buffer(&input_adapter, &mut output_adapter, indexing.as_ref())
        .map_err(|e| internal(&e))?;
    out.truncate(base + written);
    Ok(written)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resample_all(input: &[f32], in_rate: u32, out_rate: u32, piece: usize) -> Vec<f32> {
        let mut r = MonoResampler::new(in_rate, out_rate).expect("resampler");
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            if r.is_passthrough() {
                out.extend_from_slice(part);
            } else {
                r.input().extend_from_slice(part);
                r.process_ready(&mut out).expect("process");
            }
        }
        r.finish(&mut out).expect("finish");
        out
    }

    #[test]
    fn output_length_is_exact_for_common_rates() {
        for &(in_rate, out_rate, len) in &[
            (44_100u32, 16_000u32, 44_100usize),
            (48_000, 16_000, 1000),
            (8_000, 16_000, 12_345),
            (192_000, 16_000, 500_000),
            (22_050, 16_000, 7),
            (11_025, 16_000, 0),
            (44_100, 16_000, 1),
        ] {
            let input = vec![0.25f32; len];
            let out = resample_all(&input, in_rate, out_rate, 1152);
            let expected = (len as u64 * out_rate as u64 + in_rate as u64 / 2) / in_rate as u64;
            assert_eq!(
                out.len() as u64,
                expected,
                "{in_rate}->{out_rate} len {len}"
            );
        }
    }

    #[test]
    fn constant_signal_keeps_its_level_and_is_aligned() {
        let input = vec![0.5f32; 44_100 * 2];
        let out = resample_all(&input, 44_100, 16_000, 4096);
        // Away from the edges, a DC input must come out as the same DC level.
        for &s in &out[1000..out.len() - 1000] {
            assert!((s - 0.5).abs() < 1e-3, "sample {s}");
        }
    }

    #[test]
    fn tones_above_the_new_nyquist_are_filtered_not_aliased() {
        let rate = 48_000u32;
        let tone = |freq: f32| -> Vec<f32> {
            (0..rate as usize * 2)
                .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
                .collect()
        };
        let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        // 12 kHz would fold down to 4 kHz at 16 kHz output; it must be removed instead.
        let out = resample_all(&tone(12_000.0), rate, 16_000, 960);
        assert!(
            rms(&out[2000..30_000]) < 0.005,
            "aliased rms {}",
            rms(&out[2000..30_000])
        );
        // A tone well inside the passband keeps its level.
        let out = resample_all(&tone(5_000.0), rate, 16_000, 960);
        assert!((rms(&out[2000..30_000]) - 0.3536).abs() < 0.01);
    }

    #[test]
    fn impulse_stays_in_place() {
        // An impulse at 1.0 s must come out at 1.0 s; this checks the delay trimming.
        let mut input = vec![0.0f32; 48_000 * 2];
        input[48_000] = 1.0;
        let out = resample_all(&input, 48_000, 16_000, 960);
        let (peak_idx, _) = out.iter().enumerate().fold((0, 0.0f32), |acc, (i, &v)| {
            if v.abs() > acc.1 { (i, v.abs()) } else { acc }
        });
        assert!((peak_idx as i64 - 16_000).abs() <= 1, "peak at {peak_idx}");
    }
}
