//! A latency histogram sharded per worker thread.
//!
//! Each worker writes only its own cache-line-aligned shard (plain relaxed
//! atomics, never contended), and a scrape sums the shards. This keeps the
//! per-request cost to three uncontended atomic adds, where a shared
//! histogram would take a lock and bounce a cache line between cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Bucket upper bounds in seconds (`+Inf` is implicit).
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram of durations with one shard per worker.
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    shards: Arc<[Shard]>,
    bounds_nanos: [u64; BUCKETS.len()],
}

impl ShardedHistogram {
    /// A histogram with `shards` shards (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            bounds_nanos: BUCKETS.map(|b| (b * 1e9) as u64),
        }
    }

    /// Records `d` in shard `shard` (taken modulo the shard count).
    #[inline]
    pub fn observe(&self, shard: usize, d: Duration) {
        let s = &self.shards[shard % self.shards.len()];
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_nanos
            .iter()
            .position(|b| nanos <= *b)
            .unwrap_or(BUCKETS.len());
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations per bucket (not cumulative; the last is `+Inf`), summed
    /// over the shards. For readers such as the admin page, never the hot path.
    pub fn bucket_counts(&self) -> [u64; BUCKETS.len() + 1] {
        let mut counts = [0u64; BUCKETS.len() + 1];
        for s in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(&s.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
        }
        counts
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.count.load(Ordering::Relaxed))
            .sum()
    }
}

/// The `q`-quantile (0 < q ≤ 1) in seconds of per-bucket counts as
/// [`ShardedHistogram::bucket_counts`] returns them (or differences of two
/// such readings), interpolated linearly inside the bucket as Prometheus'
/// `histogram_quantile` does. A quantile in the `+Inf` bucket is reported as
/// the last finite bound. `None` without observations.
pub fn quantile(counts: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else {
                return Some(BUCKETS[BUCKETS.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += c;
    }
    Some(BUCKETS[BUCKETS.len() - 1])
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum = 0u64;
        let mut count = 0u64;
        for s in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(&s.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum += s.sum_nanos.load(Ordering::Relaxed);
            count += s.count.load(Ordering::Relaxed);
        }
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(sum as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_on_scrape() {
        let h = ShardedHistogram::new(2);
        h.observe(0, Duration::from_micros(50));
        h.observe(1, Duration::from_millis(2));
        h.observe(7, Duration::from_secs(20));
        assert_eq!(h.count(), 3);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("lat", "latency", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("lat_count 3"), "{out}");
        assert!(out.contains("lat_bucket{le=\"0.0001\"} 1"), "{out}");
        assert!(out.contains("lat_bucket{le=\"0.0025\"} 2"), "{out}");
        assert!(out.contains("lat_bucket{le=\"10.0\"} 2"), "{out}");
        assert!(out.contains("lat_bucket{le=\"+Inf\"} 3"), "{out}");
        let counts = h.bucket_counts();
        assert_eq!((counts[0], counts[4], counts[BUCKETS.len()]), (1, 1, 1));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = [0u64; BUCKETS.len() + 1];
        assert_eq!(quantile(&counts, 0.5), None);
        // 100 observations in (1 ms, 2.5 ms]: the median is half way.
        counts[4] = 100;
        let p50 = quantile(&counts, 0.5).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
        assert!((quantile(&counts, 1.0).unwrap() - 0.0025).abs() < 1e-9);
        // One slow outlier in +Inf: p99 stays in the bucket, p100 is capped.
        counts[BUCKETS.len()] = 1;
        assert!(quantile(&counts, 0.99).unwrap() <= 0.0025);
        assert_eq!(quantile(&counts, 1.0), Some(10.0));
        // The first bucket interpolates from zero.
        let mut first = [0u64; BUCKETS.len() + 1];
        first[0] = 4;
        assert!((quantile(&first, 0.5).unwrap() - 0.00005).abs() < 1e-12);
    }
}
