//! A compact picture of a signal for drawing: the minimum and maximum of each of a number
//! of equal slices of time.

use serde::Serialize;

/// Most slices a client may ask for; a wide screen is about this many pixels.
pub const MAX_BUCKETS: usize = 4000;

/// The min/max envelope of a mono signal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waveform {
    /// Length of the signal.
    pub duration_s: f64,
    /// Lowest sample of each slice, rounded to 1/1000 of full scale.
    pub min: Vec<f32>,
    /// Highest sample of each slice, rounded likewise.
    pub max: Vec<f32>,
}

/// Envelope of `samples` (at `rate_hz`) in `buckets` slices of equal length (fewer when
/// the signal has fewer samples than that; at most [`MAX_BUCKETS`]).
pub fn envelope(samples: &[f32], rate_hz: u32, buckets: usize) -> Waveform {
    let n = buckets.clamp(1, MAX_BUCKETS).min(samples.len());
    let mut min = Vec::with_capacity(n);
    let mut max = Vec::with_capacity(n);
    // Three decimals are finer than a pixel and keep the JSON small.
    let round = |x: f32| (x * 1000.0).round() / 1000.0;
    for i in 0..n {
        let slice = &samples[i * samples.len() / n..(i + 1) * samples.len() / n];
        let (lo, hi) = slice
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        min.push(round(lo));
        max.push(round(hi));
    }
    Waveform {
        duration_s: samples.len() as f64 / f64::from(rate_hz.max(1)),
        min,
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slice_holds_its_extremes() {
        // Slice i of 4 holds the samples i*25..(i+1)*25: a ramp, so its ends.
        let samples: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let w = envelope(&samples, 100, 4);
        assert_eq!(w.duration_s, 1.0);
        assert_eq!(w.min, vec![0.0, 0.25, 0.5, 0.75]);
        assert_eq!(w.max, vec![0.24, 0.49, 0.74, 0.99]);
    }

    #[test]
    fn a_single_spike_shows_in_its_slice_only() {
        let mut samples = vec![0.0f32; 1000];
        samples[617] = -0.8;
        let w = envelope(&samples, 1000, 10);
        let expected: Vec<f32> = (0..10).map(|i| if i == 6 { -0.8 } else { 0.0 }).collect();
        assert_eq!(w.min, expected);
        assert!(w.max.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn short_and_empty_signals_give_fewer_slices() {
        assert_eq!(envelope(&[0.5, -0.5], 16_000, 100).max, vec![0.5, -0.5]);
        let empty = envelope(&[], 16_000, 100);
        assert!(empty.min.is_empty() && empty.max.is_empty());
        assert_eq!(empty.duration_s, 0.0);
        assert_eq!(
            envelope(&vec![0.1; 10_000], 16_000, 1_000_000).max.len(),
            MAX_BUCKETS
        );
    }
}
