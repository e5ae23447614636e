// SPDX-License-Identifier: MIT OR Apache-2.0
//! Executing one decoded request: the policy checks the C helper applies before the
//! device sees a command (plus those it lacks), then the backend.

use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tracing::{debug, error};

use crate::dev::{contain, Backend, Device, Outcome};
use crate::proto::{Request, RequestKind};
use crate::ratelimit::RateLimit;
use crate::scsi::cdb::pr_out_length_mismatch;
use crate::scsi::sense::SenseCode;

/// Size of the PR IN buffer each worker hands to [`execute`]: room to place the
/// protocol's 8192 bytes ([`placement`]), then a page of slack, because devices may write
/// past the allocation length: LIO on Linux 6.1 does, by up to 20 bytes, for READ FULL
/// STATUS lengths that cut a descriptor (lab case `full_status_cut`: at allocation
/// lengths 24, 28, ... 40 it wrote up to byte 44).
///
/// When the kernel maps the buffer directly (address and length 4-byte aligned), such
/// bytes land in the caller's page after the data; past that page they land in kernel
/// memory: with tcm_loop, LIO's buffer is the caller's pages, and in the lab a cut that
/// ended on a page boundary was a kernel oops (a write to the unmapped page after the
/// buffer's vmap; with a one-page buffer it would be the physically next page). So the
/// transfer is placed to end [`END_IN_PAGE`] bytes into a page, leaving the rest of that
/// page, in the slack, for whatever the device writes past it. The first
/// [`CANARY_LEN`] bytes of the slack are filled with [`CANARY`] before each PR IN and
/// checked after it: bytes the device wrote there are logged (debug) and never sent (the
/// reply is cut at the allocation length).
pub const PR_IN_BUFFER: usize = PAGE + crate::proto::wire::MAX_DATA + SLACK;

/// The page size placement assumes (larger pages are multiples of it: the transfer then
/// still ends at least `PAGE - END_IN_PAGE` bytes before a page end).
const PAGE: usize = 4096;

/// Where in its page a PR IN transfer ends.
pub const END_IN_PAGE: usize = 64;

/// Offset in a buffer at address `base` where an `alloc`-byte transfer starts so that it
/// ends [`END_IN_PAGE`] bytes into a page (less than a page; a multiple of 4 when `base`
/// and `alloc` are, so the kernel still maps it directly).
pub fn placement(base: usize, alloc: usize) -> usize {
    (END_IN_PAGE + PAGE - (base + alloc) % PAGE) % PAGE
}

/// Bytes of slack after a PR IN allocation length.
pub const SLACK: usize = 4096;

/// What the start of the slack holds before a PR IN.
pub const CANARY: u8 = 0xa5;

/// How much of the slack is filled with [`CANARY`] and checked after each PR IN. The
/// placement, not the canary, is what keeps a device's overrun in our own page; the
/// canary only measures it (LIO's is at most 20 bytes), so a few cache lines are enough
/// (filling and scanning all 4 KiB cost about a tenth of the daemon's time per request
/// on the host benchmark).
pub const CANARY_LEN: usize = 256;

/// The answer to a command on an fd that covers only part of a logical unit (a
/// partition, a dm slice): ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE, what the
/// guest would get from a disk without persistent reservations (QEMU's emulated disks
/// answer PR commands so), and what prhelper answers for the kernel's other SG_IO
/// filter rule (PR OUT on a read-only fd).
pub const CONTAINED: SenseCode = SenseCode::INVALID_OPCODE;

/// Run `req` on `backend`. PR IN data lands at the start of `buf` (at least
/// [`PR_IN_BUFFER`] bytes), `Outcome::len` of them.
/// `peer`: the client's (pid, uid), asked for only when a refusal is logged.
pub fn execute(
    backend: &dyn Backend,
    req: &Request<OwnedFd>,
    buf: &mut [u8],
    peer: &dyn Fn() -> Option<(i32, u32)>,
) -> Outcome {
    // The kernel refuses SG_IO on part of a LU to callers without CAP_SYS_RAWIO; the
    // helper has it, so it applies that rule itself (see `dev::contain`).
    let dev = Device::probe(req.fd.as_fd());
    if let Err(r) = contain::check(&dev) {
        CONTAINMENT_LOG.warn(|| {
            let (pid, uid) = peer().unwrap_or((-1, u32::MAX));
            format!("refused a PR command from pid {pid} uid {uid}: {r} (an fd on part of a logical unit must not reach all of it)")
        });
        return Outcome::check(CONTAINED);
    }
    match &req.kind {
        RequestKind::PrIn { alloc } => {
            let alloc = alloc.get();
            debug_assert!(buf.len() >= PR_IN_BUFFER);
            let start = placement(buf.as_ptr() as usize, alloc);
            let end = start + alloc;
            buf[start..end].fill(0);
            buf[end..end + CANARY_LEN].fill(CANARY);
            let mut outcome = backend.pr_in(dev, &req.cdb, &mut buf[start..end]);
            outcome.len = outcome.len.min(alloc);
            let past = overrun(&buf[end..end + CANARY_LEN]);
            // The server sends from the start of the buffer.
            buf.copy_within(start..start + outcome.len, 0);
            match past {
                0 => {}
                CANARY_LEN => error!(
                    "PR IN: the device wrote to the end of the {CANARY_LEN}-byte canary past allocation length {alloc}: it may have written further, past the buffer"
                ),
                n => debug!(
                    "PR IN: the device wrote {n} bytes past allocation length {alloc} (into the slack; not sent)"
                ),
            }
            outcome
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
            backend.pr_out(dev, &req.cdb, params)
        }
    }
}

/// How far into the slack the device wrote: the position after the last byte that is not
/// [`CANARY`] any more (a lower bound when the device wrote canary bytes itself).
pub fn overrun(slack: &[u8]) -> usize {
    slack
        .iter()
        .rposition(|&b| b != CANARY)
        .map_or(0, |n| n + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrun_is_the_end_of_the_last_changed_byte() {
        let mut slack = [CANARY; CANARY_LEN];
        assert_eq!(overrun(&slack), 0);
        slack[0] = 0;
        assert_eq!(overrun(&slack), 1);
        slack[19] = 7;
        assert_eq!(overrun(&slack), 20);
        // A byte equal to the canary inside the written range does not shorten it.
        slack[10] = CANARY;
        assert_eq!(overrun(&slack), 20);
        slack[CANARY_LEN - 1] = 0;
        assert_eq!(overrun(&slack), CANARY_LEN);
    }

    #[test]
    fn placement_ends_the_transfer_early_in_a_page() {
        for base in [0usize, 16, 0xed0, 4080, 4096, 0x7f00_0000_1230] {
            for alloc in [0usize, 1, 3, 4, 8, 64, 65, 4032, 4096, 4400, 8191, 8192] {
                let s = placement(base, alloc);
                assert!(s < PAGE && s + alloc + SLACK <= PR_IN_BUFFER);
                assert_eq!((base + s + alloc) % PAGE, END_IN_PAGE, "{base:#x} {alloc}");
                if base % 4 == 0 && alloc % 4 == 0 {
                    assert_eq!((base + s) % 4, 0);
                }
            }
        }
    }
}
