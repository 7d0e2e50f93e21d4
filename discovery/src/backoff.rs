//! Exponential backoff with jitter, for pollers that meet errors and for
//! connections that fail.

use std::time::Duration;

/// Delays that grow by `factor` from `base` up to `max`, each spread by
/// ±`jitter` (a fraction) so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `base`, growing by `factor`, capped at `max`.
    pub fn new(base: Duration, factor: f64, max: Duration, jitter: f64) -> Self {
        Self {
            base,
            factor: factor.max(1.0),
            max,
            jitter: jitter.clamp(0.0, 1.0),
            attempt: 0,
        }
    }

    /// The next delay; each call grows it.
    pub fn next_delay(&mut self) -> Duration {
        let exp = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let raw = self.base.as_secs_f64() * self.factor.powi(exp);
        self.attempt = self.attempt.saturating_add(1);
        let capped = raw.min(self.max.as_secs_f64());
        jittered(Duration::from_secs_f64(capped), self.jitter).min(self.max)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `d` spread uniformly by ±`fraction`.
pub fn jittered(d: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 {
        return d;
    }
    let spread = (fastrand::f64() * 2.0 - 1.0) * fraction;
    Duration::from_secs_f64((d.as_secs_f64() * (1.0 + spread)).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(5), 0.0);
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.2).as_secs_f64();
            assert!((8.0..=12.0).contains(&d), "{d}");
        }
    }
}
