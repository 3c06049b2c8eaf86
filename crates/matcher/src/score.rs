//! The chance model behind a match's significance.

/// -log10 of the probability that `trials` independent places, each holding Poisson(`mean`)
/// chance hits, would show at least one place with `n` or more; larger is surer.
pub fn significance(n: usize, mean: f64, trials: f64) -> f64 {
    let mean = mean.max(1e-9);
    // log10 P(X >= n) for X ~ Poisson(mean), summed in log space from the first term.
    let ln_first = n as f64 * mean.ln() - mean - ln_factorial(n);
    let mut term = 1.0f64;
    let mut sum = 1.0f64;
    for k in n + 1..n + 200 {
        term *= mean / k as f64;
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    let log10_tail = (ln_first + sum.ln()) / std::f64::consts::LN_10;
    // P(any of T places) ~ T * p for small p; capped at certainty.
    -(log10_tail + trials.max(1.0).log10()).min(0.0)
}

/// Significance at which a match is as likely real as not (score 0.5), and the default
/// reporting threshold for matches that could not be verified. Chosen on the benchmark and
/// on 103 whole songs that sample nothing in the store (BENCHMARKS.md, session 6): chance
/// groups of hits reached 47.7 there (two recordings in one genre, whole songs searched);
/// true matches mostly score 40-400, and those under 50 are nearly all confirmed by their
/// peaks (verification) instead.
pub const CONFIDENCE_MIDPOINT: f64 = 50.0;
/// Significance over which the score goes from 0.27 to 0.73 (one logistic unit).
pub const CONFIDENCE_WIDTH: f64 = 4.0;

/// The estimated probability that a match of this significance is a real sample: a
/// logistic curve whose midpoint and width were placed from the benchmark's true and chance
/// matches (too few chance matches exist yet for a maximum-likelihood fit). The raw
/// significance alone over-states certainty: music is full of repetition, so chance groups
/// are far likelier than independent hits would be.
pub fn confidence(significance: f64) -> f64 {
    1.0 / (1.0 + (-(significance - CONFIDENCE_MIDPOINT) / CONFIDENCE_WIDTH).exp())
}

fn ln_factorial(n: usize) -> f64 {
    (2..=n).map(|k| (k as f64).ln()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tail_matches_direct_sum() {
        // P(X >= 3 | mean 1) = 1 - e^-1 (1 + 1 + 1/2) = 0.080301...
        let s = significance(3, 1.0, 1.0);
        assert!((s - (-(0.080_301_4f64).log10())).abs() < 1e-4, "{s}");
    }

    #[test]
    fn confidence_is_monotone_and_centred() {
        assert!((confidence(CONFIDENCE_MIDPOINT) - 0.5).abs() < 1e-12);
        assert!(confidence(10.0) < confidence(20.0) && confidence(20.0) < confidence(40.0));
        assert!(confidence(100.0) > 0.999 && confidence(0.0) < 0.01);
    }

    #[test]
    fn more_hits_or_fewer_trials_are_more_significant() {
        assert!(significance(20, 0.5, 1e6) > significance(10, 0.5, 1e6));
        assert!(significance(10, 0.5, 1e3) > significance(10, 0.5, 1e6));
        assert_eq!(significance(0, 5.0, 10.0), 0.0);
    }
}
