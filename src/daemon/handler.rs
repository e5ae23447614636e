//! Executing one decoded request: the policy checks the C helper applies before the
//! device sees a command (plus those it lacks), then the backend.

use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tracing::{debug, warn};

use crate::dev::{contain, Backend, Outcome};
use crate::proto::{Request, RequestKind};
use crate::scsi::cdb::pr_out_length_mismatch;
use crate::scsi::sense::SenseCode;

/// Size of the PR IN buffer each worker hands to [`execute`]: the protocol's 8192 bytes
/// plus a page of slack, because devices may write past the allocation length (LIO on
/// Linux 6.1 does, by up to 20 bytes, for READ FULL STATUS lengths that cut a
/// descriptor). When the kernel maps the buffer directly, such bytes land in the slack,
/// never on other memory; they are never sent (the reply is cut at the allocation length).
pub const PR_IN_BUFFER: usize = crate::proto::wire::MAX_DATA + 4096;

/// The answer to a command on an fd that covers only part of a logical unit (a
/// partition, a dm slice): ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE, what the
/// guest would get from a disk without persistent reservations (QEMU's emulated disks
/// answer PR commands so), and what prhelper answers for the kernel's other SG_IO
/// filter rule (PR OUT on a read-only fd).
pub const CONTAINED: SenseCode = SenseCode::INVALID_OPCODE;

/// Run `req` on `backend`. PR IN data lands in `buf` (at least [`PR_IN_BUFFER`] bytes).
/// `peer`: the client's (pid, uid), asked for only when a refusal is logged.
pub fn execute(
    backend: &dyn Backend,
    req: &Request<OwnedFd>,
    buf: &mut [u8],
    peer: &dyn Fn() -> Option<(i32, u32)>,
) -> Outcome {
    // The kernel refuses SG_IO on part of a LU to callers without CAP_SYS_RAWIO; the
    // helper has it, so it applies that rule itself (see `dev::contain`).
    if let Err(r) = contain::check_fd(req.fd.as_fd()) {
        CONTAINMENT_LOG.warn(|| {
            let (pid, uid) = peer().unwrap_or((-1, u32::MAX));
            format!("refused a PR command from pid {pid} uid {uid}: {r} (an fd on part of a logical unit must not reach all of it)")
        });
        return Outcome::check(CONTAINED);
    }
    match &req.kind {
        RequestKind::PrIn { alloc } => {
            debug_assert!(buf.len() >= alloc.get() + 4096);
            let buf = &mut buf[..alloc.get()];
            buf.fill(0);
            backend.pr_in(req.fd.as_fd(), &req.cdb, buf)
        }
        RequestKind::PrOut { params } => {
            // Without CAP_SYS_RAWIO the kernel's SG_IO filter would refuse PR OUT on a
            // read-only fd; the helper has that capability, so it enforces the rule itself
            // (same answer as qemu-pr-helper: INVALID COMMAND OPERATION CODE).
            if is_read_only(&req.fd) {
                return Outcome::check(SenseCode::INVALID_OPCODE);
            }
            // The parameter list was framed by the length's low 16 bits (as QEMU sends
            // it); a CDB claiming more must not reach the device.
            if pr_out_length_mismatch(&req.cdb) {
                return Outcome::check(SenseCode::INVALID_PARAM_LEN);
            }
            backend.pr_out(req.fd.as_fd(), &req.cdb, params)
        }
    }
}

fn is_read_only(fd: &OwnedFd) -> bool {
    match fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        Ok(flags) => OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDONLY,
        Err(_) => false,
    }
}

/// Containment refusals' own limiter: a client probing with partitions must not flood
/// the log, nor use up the protocol-error limiter (or be hidden by it).
static CONTAINMENT_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 5);

/// At most `burst` warnings per `window`; the rest go to the debug log and are counted
/// in the first warning of the next window.
pub struct RateLimit {
    window: Duration,
    burst: u32,
    state: Mutex<(Option<Instant>, u32, u32)>,
}

impl RateLimit {
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
                "{suppressed} more such refusal(s) in the last {:?} (see debug log)",
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
}
