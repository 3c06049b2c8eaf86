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
    fn more_hits_or_fewer_trials_are_more_significant() {
        assert!(significance(20, 0.5, 1e6) > significance(10, 0.5, 1e6));
        assert!(significance(10, 0.5, 1e3) > significance(10, 0.5, 1e6));
        assert_eq!(significance(0, 5.0, 10.0), 0.0);
    }
}
