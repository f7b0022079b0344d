//! Rate limit for warnings about a condition that can repeat thousands of
//! times a second (connection limit reached, accept failing at the
//! file-descriptor limit).

use std::time::{Duration, Instant};

/// How often a recurring warning (connection limit reached, accept failing
/// at the fd limit) is logged at most, per worker.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Rate limit for a warning that can repeat thousands of times a second:
/// the first occurrence is logged, then at most one line per period, which
/// says how many occurrences it stands for.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Records an occurrence at `now`: `Some(n)` when a line is due (`n`
    /// occurrences since the last line were not logged), `None` when this
    /// one is only counted.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_the_first_then_one_per_period_with_the_count_skipped() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(at(0)), Some(0));
        for ms in (1..1000).map(|i| i * 9) {
            assert_eq!(t.hit(at(ms)), None, "at {ms} ms");
        }
        // 999 swallowed, the next one after the period says so.
        assert_eq!(t.hit(at(10_000)), Some(999));
        assert_eq!(t.hit(at(10_001)), None);
        // A quiet spell: the next occurrence is logged at once.
        assert_eq!(t.hit(at(60_000)), Some(1));
        assert_eq!(t.hit(at(60_000)), None);
    }
}
