// SPDX-License-Identifier: MIT OR Apache-2.0
//! Crash consistency: what a retried command finds when the helper died in the middle of
//! the first attempt (see docs/multipath.md, "Crash consistency").
//!
//! A REGISTER fans out to every path. If the helper is killed after every path took the
//! new key but before it answered (or before it told multipathd), QEMU reconnects and the
//! guest repeats the REGISTER with the old key, which every path now refuses with
//! RESERVATION CONFLICT, as a single-path disk would. The device is consistent, but
//! multipathd still holds the old key (or still holds one after an unregister) and would
//! register a path that comes back with it. So when every reachable path conflicts, the
//! router asks each of them whether it already has the key the command sets: a REGISTER
//! from the new key to itself (0 to 0 for an unregister) succeeds exactly on the paths
//! that do, and changes nothing. If all do, the command's effect stands and multipathd is
//! told; the guest still gets the device's RESERVATION CONFLICT.

use super::{basic, fan_out, prout_cdb, Class, Paths, BASIC_LEN};
use crate::scsi::cdb::PrOutAction;

/// Whether every path of `targets` that answers already has `sa_key` registered (for 0:
/// none has a registration), and at least one answered.
pub(super) fn already_registered(
    p: &dyn Paths,
    orig: &[u8; 16],
    targets: &[usize],
    sa_key: u64,
    aptpl: bool,
) -> bool {
    if targets.is_empty() {
        return false;
    }
    // REGISTER with RESERVATION KEY = SERVICE ACTION RESERVATION KEY = the key: GOOD and
    // a no-op on a nexus registered with it (0, 0: on an unregistered one), CONFLICT on
    // any other.
    let c = prout_cdb(orig, PrOutAction::Register, 0, BASIC_LEN);
    let params = basic(sa_key, sa_key, aptpl);
    let answers = fan_out(p, targets, &|_| c, &|_| params.clone());
    answers.iter().any(|(_, a)| a.class == Class::Good)
        && answers
            .iter()
            .all(|(_, a)| matches!(a.class, Class::Good | Class::PathError))
}
