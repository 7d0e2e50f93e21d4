//! What the benchmarks share: their runtime, and the median and spread of
//! interleaved repetitions (a ratio row runs baseline and subject in turn,
//! several times, and is judged by the median of the per-repetition ratios).

use std::future::Future;

/// Runs a benchmark's body on a multi-threaded runtime.
pub fn run<F: Future>(body: F) -> std::io::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(body))
}

/// The median of `values` (the upper middle one of an even count; NaN for
/// none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `ratios` with their lowest and highest:
/// `0.986 (0.862–1.023)`.
pub fn ratio_summary(ratios: &[f64]) -> String {
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({lo:.3}–{hi:.3})", median(ratios))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_summaries() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio_summary(&[1.0, 0.9, 1.1]), "1.000 (0.900–1.100)");
    }
}
