// SPDX-License-Identifier: MIT OR Apache-2.0
//! What an SG_IO call's result means: the errno, host status and driver status the
//! kernel reports beside the device's own status byte, mapped to the SCSI status and
//! (locally built) sense a client sees, the way QEMU 6.0+ maps them. Pure code; it belongs
//! with device access because only SG_IO produces these values.

use crate::scsi::sense::SenseCode;
use crate::scsi::Status;
use crate::sys::sgio::SgOutcome;

/// Host status values from the SCSI midlayer (`DID_*`).
pub mod host {
    pub const OK: u16 = 0x00;
    pub const NO_CONNECT: u16 = 0x01;
    pub const BUS_BUSY: u16 = 0x02;
    pub const TIME_OUT: u16 = 0x03;
    pub const BAD_TARGET: u16 = 0x04;
    pub const ABORT: u16 = 0x05;
    pub const PARITY: u16 = 0x06;
    pub const ERROR: u16 = 0x07;
    pub const RESET: u16 = 0x08;
    pub const BAD_INTR: u16 = 0x09;
    pub const PASSTHROUGH: u16 = 0x0a;
    pub const SOFT_ERROR: u16 = 0x0b;
    pub const IMM_RETRY: u16 = 0x0c;
    pub const REQUEUE: u16 = 0x0d;
    pub const TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const TRANSPORT_FAILFAST: u16 = 0x0f;
    pub const TARGET_FAILURE: u16 = 0x10;
    pub const NEXUS_FAILURE: u16 = 0x11;
    pub const ALLOC_FAILURE: u16 = 0x12;
    pub const MEDIUM_ERROR: u16 = 0x13;
    pub const TRANSPORT_MARGINAL: u16 = 0x14;
}

/// `driver_status` timeout bits, as QEMU tests them (`SG_ERR_DRIVER_TIMEOUT` used as a mask).
pub const DRIVER_TIMEOUT_MASK: u16 = 0x06;

/// A status with an optional locally built sense code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub sense: Option<SenseCode>,
}

impl Verdict {
    const fn check(code: SenseCode) -> Verdict {
        Verdict {
            status: Status::CHECK_CONDITION,
            sense: Some(code),
        }
    }
    const fn plain(status: Status) -> Verdict {
        Verdict {
            status,
            sense: None,
        }
    }
}

/// Map an errno from a failed SG_IO ioctl (QEMU's `scsi_sense_from_errno`).
pub fn from_errno(errno: i32) -> Verdict {
    match errno {
        0 => Verdict::plain(Status::GOOD),
        libc::EDOM => Verdict::plain(Status::TASK_SET_FULL),
        libc::EBADE => Verdict::plain(Status::RESERVATION_CONFLICT),
        libc::ENODEV | libc::EREMOTEIO | libc::ENOMEM => Verdict::check(SenseCode::TARGET_FAILURE),
        libc::ENODATA => Verdict::check(SenseCode::READ_ERROR),
        libc::ENOMEDIUM => Verdict::check(SenseCode::NO_MEDIUM),
        libc::EINVAL => Verdict::check(SenseCode::INVALID_FIELD),
        libc::ENOSPC => Verdict::check(SenseCode::SPACE_ALLOC_FAILED),
        _ => Verdict::check(SenseCode::IO_ERROR),
    }
}

/// Map a non-zero SG_IO host status (QEMU's `scsi_sense_from_host_status`).
///
/// QEMU reports every host status missing from its table (DID_ERROR, DID_SOFT_ERROR, ...)
/// as GOOD, i.e. as a successful command that never reached the device. We report the
/// retryable ones as BUSY and the rest as a LOGICAL UNIT COMMUNICATION FAILURE.
pub fn from_host_status(host_status: u16) -> Verdict {
    match host_status {
        host::OK => Verdict::plain(Status::GOOD),
        host::NO_CONNECT => Verdict::check(SenseCode::LUN_NOT_RESPONDING),
        host::BUS_BUSY => Verdict::plain(Status::BUSY),
        host::TIME_OUT => Verdict::check(SenseCode::COMMAND_TIMEOUT),
        host::BAD_TARGET => Verdict::check(SenseCode::LUN_COMM_FAILURE),
        host::ABORT => Verdict::check(SenseCode::COMMAND_ABORTED),
        host::RESET => Verdict::check(SenseCode::RESET),
        host::TRANSPORT_DISRUPTED => Verdict::check(SenseCode::I_T_NEXUS_LOSS),
        host::TARGET_FAILURE => Verdict::check(SenseCode::TARGET_FAILURE),
        host::NEXUS_FAILURE => Verdict::plain(Status::RESERVATION_CONFLICT),
        host::ALLOC_FAILURE => Verdict::check(SenseCode::SPACE_ALLOC_FAILED),
        host::MEDIUM_ERROR => Verdict::check(SenseCode::READ_ERROR),
        // Not in QEMU's table: QEMU says GOOD here. Never claim success for these.
        host::SOFT_ERROR | host::IMM_RETRY | host::REQUEUE => Verdict::plain(Status::BUSY),
        _ => Verdict::check(SenseCode::LUN_COMM_FAILURE),
    }
}

/// Interpret an SG_IO outcome the way QEMU 6.0+ does: errno first, then host status, then
/// a driver timeout (BUSY), then the device's own status byte (whose sense, if any, is
/// already in the buffer). Returns the status and, when the helper must build the sense
/// itself, the code to build.
pub fn interpret(o: &SgOutcome) -> Verdict {
    if let Some(errno) = o.errno {
        return from_errno(errno);
    }
    if o.host_status != host::OK {
        return from_host_status(o.host_status);
    }
    if o.driver_status & DRIVER_TIMEOUT_MASK != 0 {
        return Verdict::plain(Status::BUSY);
    }
    Verdict::plain(Status(o.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table_matches_qemu() {
        let cases: &[(i32, Status, Option<SenseCode>)] = &[
            (0, Status::GOOD, None),
            (libc::EDOM, Status::TASK_SET_FULL, None),
            (libc::EBADE, Status::RESERVATION_CONFLICT, None),
            (
                libc::ENODEV,
                Status::CHECK_CONDITION,
                Some(SenseCode::TARGET_FAILURE),
            ),
            (
                libc::EREMOTEIO,
                Status::CHECK_CONDITION,
                Some(SenseCode::TARGET_FAILURE),
            ),
            (
                libc::ENOMEM,
                Status::CHECK_CONDITION,
                Some(SenseCode::TARGET_FAILURE),
            ),
            (
                libc::ENODATA,
                Status::CHECK_CONDITION,
                Some(SenseCode::READ_ERROR),
            ),
            (
                libc::ENOMEDIUM,
                Status::CHECK_CONDITION,
                Some(SenseCode::NO_MEDIUM),
            ),
            (
                libc::EINVAL,
                Status::CHECK_CONDITION,
                Some(SenseCode::INVALID_FIELD),
            ),
            (
                libc::ENOSPC,
                Status::CHECK_CONDITION,
                Some(SenseCode::SPACE_ALLOC_FAILED),
            ),
            (
                libc::ENOTTY,
                Status::CHECK_CONDITION,
                Some(SenseCode::IO_ERROR),
            ),
            (
                libc::EPERM,
                Status::CHECK_CONDITION,
                Some(SenseCode::IO_ERROR),
            ),
        ];
        for &(errno, status, sense) in cases {
            assert_eq!(
                from_errno(errno),
                Verdict { status, sense },
                "errno {errno}"
            );
        }
    }

    #[test]
    fn host_status_table() {
        let check = |h, c| assert_eq!(from_host_status(h), Verdict::check(c), "host {h:#x}");
        check(host::NO_CONNECT, SenseCode::LUN_NOT_RESPONDING);
        check(host::TIME_OUT, SenseCode::COMMAND_TIMEOUT);
        check(host::BAD_TARGET, SenseCode::LUN_COMM_FAILURE);
        check(host::ABORT, SenseCode::COMMAND_ABORTED);
        check(host::RESET, SenseCode::RESET);
        check(host::TRANSPORT_DISRUPTED, SenseCode::I_T_NEXUS_LOSS);
        check(host::TARGET_FAILURE, SenseCode::TARGET_FAILURE);
        check(host::ALLOC_FAILURE, SenseCode::SPACE_ALLOC_FAILED);
        check(host::MEDIUM_ERROR, SenseCode::READ_ERROR);
        assert_eq!(
            from_host_status(host::BUS_BUSY),
            Verdict::plain(Status::BUSY)
        );
        assert_eq!(
            from_host_status(host::NEXUS_FAILURE),
            Verdict::plain(Status::RESERVATION_CONFLICT)
        );
    }

    #[test]
    fn unknown_host_status_is_never_good() {
        for h in 1..=0xffu16 {
            assert_ne!(from_host_status(h).status, Status::GOOD, "host {h:#x}");
        }
        check_busy(host::SOFT_ERROR);
        check_busy(host::IMM_RETRY);
        check_busy(host::REQUEUE);
        assert_eq!(
            from_host_status(host::ERROR),
            Verdict::check(SenseCode::LUN_COMM_FAILURE)
        );
        fn check_busy(h: u16) {
            assert_eq!(from_host_status(h), Verdict::plain(Status::BUSY));
        }
    }

    #[test]
    fn interpret_precedence() {
        // errno wins over everything.
        let o = SgOutcome {
            errno: Some(libc::ENOTTY),
            status: 0x18,
            host_status: 7,
            driver_status: 6,
        };
        assert_eq!(interpret(&o), Verdict::check(SenseCode::IO_ERROR));
        // then host status
        let o = SgOutcome {
            errno: None,
            status: 0x00,
            host_status: host::TRANSPORT_DISRUPTED,
            driver_status: 0,
        };
        assert_eq!(interpret(&o), Verdict::check(SenseCode::I_T_NEXUS_LOSS));
        // then driver timeout
        let o = SgOutcome {
            errno: None,
            status: 0x02,
            host_status: 0,
            driver_status: 0x06,
        };
        assert_eq!(interpret(&o), Verdict::plain(Status::BUSY));
        // DRIVER_SENSE alone does not count as a timeout.
        let o = SgOutcome {
            errno: None,
            status: 0x02,
            host_status: 0,
            driver_status: 0x08,
        };
        assert_eq!(interpret(&o), Verdict::plain(Status::CHECK_CONDITION));
        let o = SgOutcome {
            errno: None,
            status: 0x18,
            host_status: 0,
            driver_status: 0,
        };
        assert_eq!(interpret(&o), Verdict::plain(Status::RESERVATION_CONFLICT));
    }
}
