//! Install latency: how long after the fast path saw a connection's keys (`KeyEvent::seen_ns`,
//! `bpf_ktime_get_ns`) the loader had written its midstates. During that window the fast path
//! computes midstates inline (`aux_midstate_computed_inline`), so this is worth watching.

use std::collections::VecDeque;

/// Samples kept for the median and p99 (count, min and max cover every sample).
pub const LATENCY_WINDOW: usize = 100_000;

/// Summary of the install latencies, in microseconds. Also the value of the pinned
/// [`crate::kernel::pins::PIN_INSTALL_LATENCY`] array, so `stats` can show it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Connections installed.
    pub count: u64,
    /// Smallest latency.
    pub min_us: u64,
    /// Median of the last [`LATENCY_WINDOW`] samples.
    pub median_us: u64,
    /// 99th percentile (nearest rank) of the last [`LATENCY_WINDOW`] samples.
    pub p99_us: u64,
    /// Largest latency.
    pub max_us: u64,
}
const _: () = assert!(size_of::<LatencySummary>() == 40);

// SAFETY: repr(C), five u64s, no padding.
unsafe impl aya::Pod for LatencySummary {}

impl LatencySummary {
    /// The summary as a JSON object with `count`, `min`, `median`, `p99`, `max` (µs).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "min": self.min_us,
            "median": self.median_us,
            "p99": self.p99_us,
            "max": self.max_us,
        })
    }

    /// `install latency: 3 connections, min 12 µs, median 40 µs, p99 80 µs, max 80 µs`.
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "install latency: {} connection{}, min {} µs, median {} µs, p99 {} µs, max {} µs",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.min_us,
            self.median_us,
            self.p99_us,
            self.max_us
        )
    }
}

/// Running install-latency statistics.
#[derive(Debug, Default)]
pub struct LatencyStats {
    count: u64,
    min_us: u64,
    max_us: u64,
    recent_us: VecDeque<u64>,
}

impl LatencyStats {
    /// Records one latency in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        let us = ns / 1_000;
        if self.count == 0 {
            (self.min_us, self.max_us) = (us, us);
        } else {
            self.min_us = self.min_us.min(us);
            self.max_us = self.max_us.max(us);
        }
        self.count += 1;
        if self.recent_us.len() == LATENCY_WINDOW {
            self.recent_us.pop_front();
        }
        self.recent_us.push_back(us);
    }

    /// The summary, or `None` before the first sample.
    #[must_use]
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.count == 0 {
            return None;
        }
        let mut sorted: Vec<u64> = self.recent_us.iter().copied().collect();
        sorted.sort_unstable();
        Some(LatencySummary {
            count: self.count,
            min_us: self.min_us,
            median_us: nearest_rank(&sorted, 50),
            p99_us: nearest_rank(&sorted, 99),
            max_us: self.max_us,
        })
    }
}

/// The `pct`-th percentile of sorted, non-empty `sorted` by the nearest-rank method.
fn nearest_rank(sorted: &[u64], pct: usize) -> u64 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(LatencyStats::default().summary(), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = LatencyStats::default();
        for us in (1..=100).rev() {
            s.record_ns(us * 1_000 + 999);
        }
        let sum = s.summary().unwrap();
        assert_eq!(
            sum,
            LatencySummary {
                count: 100,
                min_us: 1,
                median_us: 50,
                p99_us: 99,
                max_us: 100
            }
        );
        assert_eq!(
            sum.line(),
            "install latency: 100 connections, min 1 µs, median 50 µs, p99 99 µs, max 100 µs"
        );
        assert_eq!(sum.to_json()["p99"], 99);
    }

    #[test]
    fn one_sample() {
        let mut s = LatencyStats::default();
        s.record_ns(2_500);
        let sum = s.summary().unwrap();
        assert_eq!(
            (sum.count, sum.min_us, sum.median_us, sum.p99_us, sum.max_us),
            (1, 2, 2, 2, 2)
        );
        assert!(sum.line().starts_with("install latency: 1 connection,"));
    }

    #[test]
    fn window_is_bounded_but_extremes_are_not() {
        let mut s = LatencyStats::default();
        s.record_ns(1_000_000_000);
        for _ in 0..LATENCY_WINDOW {
            s.record_ns(5_000);
        }
        let sum = s.summary().unwrap();
        assert_eq!((sum.max_us, sum.p99_us, sum.median_us), (1_000_000, 5, 5));
        assert_eq!(sum.count, LATENCY_WINDOW as u64 + 1);
    }
}
