//! Executing one decoded request: the policy checks the C helper applies before the
//! device sees a command, then the backend.

use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::dev::{Backend, Outcome};
use crate::proto::{Request, RequestKind};
use crate::scsi::sense::SenseCode;

/// Size of the PR IN buffer each worker hands to [`execute`]: the protocol's 8192 bytes
/// plus a page of slack, because devices may write past the allocation length (LIO on
/// Linux 6.1 does, by up to 20 bytes, for READ FULL STATUS lengths that cut a
/// descriptor). When the kernel maps the buffer directly, such bytes land in the slack,
/// never on other memory; they are never sent (the reply is cut at the allocation length).
pub const PR_IN_BUFFER: usize = crate::proto::wire::MAX_DATA + 4096;

/// Run `req` on `backend`. PR IN data lands in `buf` (at least [`PR_IN_BUFFER`] bytes).
pub fn execute(backend: &dyn Backend, req: &Request<OwnedFd>, buf: &mut [u8]) -> Outcome {
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
