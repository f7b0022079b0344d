//! Exponential back-off, shared by the watches and the status writer.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// An exponential back-off: `min`, `2·min`, `4·min`, … capped at `max`.
/// With `jitter`, each delay is drawn from `[d/2, d]` ("equal jitter"), so
/// replicas that failed together do not retry in lock-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The ceiling.
    pub max: Duration,
    /// Randomise each delay within its upper half.
    pub jitter: bool,
}

/// Watches: a failed watch starts over (with a fresh list) after this
/// back-off; it resets once a list completes. The ceiling is low because the
/// LB is a handful of replicas with two watches each: at 2 s the worst case
/// is one request per watch every 2 s against an API server that is down,
/// while a change made just after it comes back waits at most ~2 s (the
/// kube-runtime default grows to 30 s, which delayed the first change after
/// a 10 s outage by 7.4 s).
pub const WATCH: Backoff = Backoff {
    min: Duration::from_millis(200),
    max: Duration::from_secs(2),
    jitter: true,
};

/// Status writes: per Upstream, after a retryable failure.
pub const STATUS: Backoff = Backoff {
    min: Duration::from_millis(500),
    max: Duration::from_secs(60),
    jitter: false,
};

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let d = self
            .min
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max);
        if self.jitter {
            let half = d / 2;
            half + half.mul_f64(random_unit())
        } else {
            d
        }
    }
}

/// A number in `[0, 1)`, different on every call: std's `RandomState` is
/// seeded randomly per thread and advanced per instance, which is enough for
/// jitter (no cryptographic use).
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling() {
        let b = Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
            jitter: false,
        };
        let ms: Vec<u128> = (1..=9).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60), "no overflow");
        assert_eq!(b.delay(0), b.delay(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..200 {
            let d = WATCH.delay(n % 6 + 1);
            let cap = WATCH.min.saturating_mul(1 << (n % 6)).min(WATCH.max);
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
            seen.insert(d);
        }
        assert!(seen.len() > 50, "jitter varies: {} distinct", seen.len());
    }
}
