// SPDX-License-Identifier: MIT OR Apache-2.0
//! Rate limits for log lines that a client or a failing device could repeat without end
//! (a log write can block: a full stderr pipe, a slow journal). Each warning gets its own
//! limiter, so that one cannot hide another.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// At most `burst` warnings per `window`; the rest go to the debug log and are counted
/// in the first warning of the next window.
pub struct RateLimit {
    window: Duration,
    burst: u32,
    state: Mutex<(Option<Instant>, u32, u32)>,
}

impl RateLimit {
    /// A limiter that logs `burst` warnings per `window`.
    pub const fn new(window: Duration, burst: u32) -> RateLimit {
        RateLimit {
            window,
            burst,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// Log `msg()` at warning level unless over the limit. True if it was.
    pub fn warn(&self, msg: impl FnOnce() -> String) -> bool {
        let (logged, suppressed) = self.admit(Instant::now());
        if suppressed > 0 {
            warn!(
                "{suppressed} more like it in the last {:?} (see debug log)",
                self.window
            );
        }
        if logged {
            warn!("{}", msg());
        } else {
            debug!("{}", msg());
        }
        logged
    }

    /// (log this one?, how many were suppressed in the window that just ended).
    fn admit(&self, now: Instant) -> (bool, u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut suppressed = 0;
        if s.0.is_none_or(|t| now.duration_since(t) >= self.window) {
            suppressed = s.2;
            *s = (Some(now), 0, 0);
        }
        if s.1 < self.burst {
            s.1 += 1;
            (true, suppressed)
        } else {
            s.2 += 1;
            (false, suppressed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let l = RateLimit::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), (true, 0));
        assert_eq!(l.admit(t0), (true, 0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), (false, 0));
        assert_eq!(l.admit(t0 + Duration::from_secs(9)), (false, 0));
        // Next window: logged again, and told how many were dropped.
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), (true, 2));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), (true, 0));
    }

    #[test]
    fn limiters_are_independent() {
        let a = RateLimit::new(Duration::from_secs(10), 1);
        let b = RateLimit::new(Duration::from_secs(10), 1);
        let t0 = Instant::now();
        assert_eq!(a.admit(t0), (true, 0));
        assert_eq!(a.admit(t0), (false, 0));
        // Another warning is not hidden by the first one's window.
        assert_eq!(b.admit(t0), (true, 0));
    }
}
