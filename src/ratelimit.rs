// SPDX-License-Identifier: MIT OR Apache-2.0
//! Rate limits for log lines that a client or a failing device could repeat without end.
//! Each warning gets its own limiter, so that one cannot hide another.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one event through per interval.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// A limiter that lets the first event through, then one per `every`.
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether an event now may be logged; if so, the interval starts again.
    pub fn ready(&self) -> bool {
        self.ready_at(Instant::now())
    }

    fn ready_at(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.saturating_duration_since(t) >= self.every) {
            *last = Some(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_limiters_are_independent() {
        let a = RateLimit::new(Duration::from_secs(10));
        let b = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(a.ready_at(t0));
        assert!(!a.ready_at(t0 + Duration::from_secs(9)));
        // Another warning is not hidden by the first one's interval.
        assert!(b.ready_at(t0 + Duration::from_secs(1)));
        assert!(a.ready_at(t0 + Duration::from_secs(10)));
        assert!(!a.ready_at(t0 + Duration::from_secs(11)));
    }
}
