// SPDX-License-Identifier: MIT OR Apache-2.0
//! Percentiles and medians.

use std::time::Duration;

/// A sorted set of latency samples, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    sorted: Vec<u32>,
}

impl Latencies {
    pub fn from_ns(mut ns: Vec<u32>) -> Latencies {
        ns.sort_unstable();
        Latencies { sorted: ns }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The `p`-th percentile (0..=100), nearest rank; zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.sorted.len()) - 1;
        Duration::from_nanos(u64::from(self.sorted[i]))
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(u64::from(self.sorted.last().copied().unwrap_or(0)))
    }
}

/// Median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (min, max) of `v`; NaNs when empty.
pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold((f64::NAN, f64::NAN), |(lo, hi), x| {
            (lo.min(x).min(x), hi.max(x).max(x))
        })
}

/// Spread between rounds: (max - min) / median, in percent.
pub fn spread_pct(v: &[f64]) -> f64 {
    let (lo, hi) = min_max(v);
    100.0 * (hi - lo) / median(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latencies::from_ns((1..=100).rev().collect());
        assert_eq!(l.percentile(50.0), Duration::from_nanos(50));
        assert_eq!(l.percentile(99.0), Duration::from_nanos(99));
        assert_eq!(l.percentile(100.0), Duration::from_nanos(100));
        assert_eq!(l.percentile(0.0), Duration::from_nanos(1));
        assert_eq!(Latencies::default().percentile(50.0), Duration::ZERO);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert_eq!(spread_pct(&[90.0, 100.0, 110.0]), 20.0);
    }
}
