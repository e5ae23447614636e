//! Sense data: the helper's 96-byte sense buffer, the fixed-format sense it builds itself,
//! the mapping from SG_IO outcomes to SCSI status and sense (as QEMU 6.0+ does, with one
//! deliberate fix), and decoding for display.

use super::Status;

/// Size of the sense buffer in every helper reply.
pub const SENSE_SIZE: usize = 96;

/// A sense key with its additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseCode {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

macro_rules! codes {
    ($($name:ident = $key:literal / $asc:literal / $ascq:literal;)*) => {
        impl SenseCode {
            $(pub const $name: SenseCode = SenseCode { key: $key, asc: $asc, ascq: $ascq };)*
        }
    };
}

// The codes QEMU's scsi/utils.c builds locally (same key/ASC/ASCQ values).
codes! {
    NO_SENSE = 0x00 / 0x00 / 0x00;
    NOT_READY = 0x02 / 0x04 / 0x00;
    NO_MEDIUM = 0x02 / 0x3a / 0x00;
    READ_ERROR = 0x03 / 0x11 / 0x00;
    TARGET_FAILURE = 0x04 / 0x44 / 0x00;
    INVALID_OPCODE = 0x05 / 0x20 / 0x00;
    INVALID_FIELD = 0x05 / 0x24 / 0x00;
    INVALID_PARAM = 0x05 / 0x26 / 0x00;
    INVALID_PARAM_LEN = 0x05 / 0x1a / 0x00;
    INVALID_RELEASE = 0x05 / 0x26 / 0x04;
    RESET = 0x06 / 0x29 / 0x00;
    SPACE_ALLOC_FAILED = 0x07 / 0x27 / 0x07;
    IO_ERROR = 0x0b / 0x00 / 0x06;
    I_T_NEXUS_LOSS = 0x0b / 0x29 / 0x07;
    LUN_COMM_FAILURE = 0x0b / 0x08 / 0x00;
    LUN_NOT_RESPONDING = 0x0b / 0x05 / 0x00;
    COMMAND_TIMEOUT = 0x0b / 0x2e / 0x02;
    COMMAND_ABORTED = 0x0b / 0x2f / 0x02;
}

/// The 96-byte sense area of a reply. Always fully initialised (zeroes past the sense data).
#[derive(Clone, PartialEq, Eq)]
pub struct Sense(pub [u8; SENSE_SIZE]);

impl Default for Sense {
    fn default() -> Self {
        Sense([0; SENSE_SIZE])
    }
}

impl std::fmt::Debug for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match decode(&self.0) {
            Some(d) => write!(f, "Sense({d})"),
            None => f.write_str("Sense(none)"),
        }
    }
}

impl Sense {
    /// Fixed-format (0x70) current sense, 18 bytes long, as QEMU's `scsi_build_sense` makes it.
    pub fn fixed(code: SenseCode) -> Sense {
        let mut s = [0u8; SENSE_SIZE];
        s[0] = 0x70;
        s[2] = code.key;
        s[7] = 10;
        s[12] = code.asc;
        s[13] = code.ascq;
        Sense(s)
    }

    /// The decoded sense key/ASC/ASCQ, if the buffer holds sense data.
    pub fn code(&self) -> Option<SenseCode> {
        decode(&self.0).map(|d| d.code)
    }
}

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

/// What an SG_IO call returned, before interpretation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SgOutcome {
    /// errno if the ioctl itself failed.
    pub errno: Option<i32>,
    pub status: u8,
    pub host_status: u16,
    pub driver_status: u16,
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

/// Decoded sense data, fixed (0x70/0x71) or descriptor (0x72/0x73) format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub code: SenseCode,
    pub deferred: bool,
    pub descriptor: bool,
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}: {} (asc={:#04x}, ascq={:#04x})",
            if self.deferred { "Deferred " } else { "" },
            key_name(self.code.key),
            asc_name(self.code.asc, self.code.ascq),
            self.code.asc,
            self.code.ascq
        )
    }
}

/// Decode sense bytes. Returns `None` when there is no valid sense (e.g. all zeroes).
pub fn decode(bytes: &[u8]) -> Option<Decoded> {
    let b0 = *bytes.first()? & 0x7f;
    match b0 {
        0x70 | 0x71 => {
            let key = *bytes.get(2)? & 0x0f;
            let asc = bytes.get(12).copied().unwrap_or(0);
            let ascq = bytes.get(13).copied().unwrap_or(0);
            Some(Decoded {
                code: SenseCode { key, asc, ascq },
                deferred: b0 == 0x71,
                descriptor: false,
            })
        }
        0x72 | 0x73 => {
            let key = *bytes.get(1)? & 0x0f;
            let asc = bytes.get(2).copied().unwrap_or(0);
            let ascq = bytes.get(3).copied().unwrap_or(0);
            Some(Decoded {
                code: SenseCode { key, asc, ascq },
                deferred: b0 == 0x73,
                descriptor: true,
            })
        }
        _ => None,
    }
}

/// Sense key names (SPC-4 table 45).
pub fn key_name(key: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "No Sense",
        "Recovered Error",
        "Not Ready",
        "Medium Error",
        "Hardware Error",
        "Illegal Request",
        "Unit Attention",
        "Data Protect",
        "Blank Check",
        "Vendor Specific",
        "Copy Aborted",
        "Aborted Command",
        "Equal",
        "Volume Overflow",
        "Miscompare",
        "Completed",
    ];
    NAMES[usize::from(key & 0x0f)]
}

/// Names for the additional sense codes a PR command can meet.
pub fn asc_name(asc: u8, ascq: u8) -> &'static str {
    match (asc, ascq) {
        (0x00, 0x00) => "No additional sense information",
        (0x00, 0x06) => "I/O process terminated",
        (0x04, 0x00) => "Logical unit not ready, cause not reportable",
        (0x04, 0x03) => "Logical unit not ready, manual intervention required",
        (0x05, 0x00) => "Logical unit does not respond to selection",
        (0x08, 0x00) => "Logical unit communication failure",
        (0x11, 0x00) => "Unrecovered read error",
        (0x1a, 0x00) => "Parameter list length error",
        (0x20, 0x00) => "Invalid command operation code",
        (0x24, 0x00) => "Invalid field in cdb",
        (0x25, 0x00) => "Logical unit not supported",
        (0x26, 0x00) => "Invalid field in parameter list",
        (0x26, 0x01) => "Parameter not supported",
        (0x26, 0x02) => "Parameter value invalid",
        (0x26, 0x04) => "Invalid release of persistent reservation",
        (0x27, 0x00) => "Write protected",
        (0x27, 0x07) => "Space allocation failed write protect",
        (0x29, 0x00) => "Power on, reset, or bus device reset occurred",
        (0x29, 0x02) => "SCSI bus reset occurred",
        (0x29, 0x07) => "I_T nexus loss occurred",
        (0x2a, 0x03) => "Reservations preempted",
        (0x2a, 0x04) => "Reservations released",
        (0x2a, 0x05) => "Registrations preempted",
        (0x2e, 0x02) => "Command timeout during processing",
        (0x2f, 0x02) => "Commands cleared by device server",
        (0x3a, 0x00) => "Medium not present",
        (0x3e, 0x01) => "Logical unit failure",
        (0x44, 0x00) => "Internal target failure",
        (0x55, 0x02) => "Insufficient reservation resources",
        (0x55, 0x04) => "Insufficient registration resources",
        _ => "Unknown additional sense code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_bytes() {
        let s = Sense::fixed(SenseCode::INVALID_OPCODE);
        let mut want = [0u8; 96];
        want[0] = 0x70;
        want[2] = 0x05;
        want[7] = 0x0a;
        want[12] = 0x20;
        assert_eq!(s.0, want);
        assert_eq!(s.code(), Some(SenseCode::INVALID_OPCODE));
        assert_eq!(Sense::default().code(), None);
    }

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

    #[test]
    fn decode_formats() {
        let fixed = Sense::fixed(SenseCode {
            key: 6,
            asc: 0x2a,
            ascq: 0x05,
        });
        let d = decode(&fixed.0).unwrap();
        assert_eq!(
            d.code,
            SenseCode {
                key: 6,
                asc: 0x2a,
                ascq: 5
            }
        );
        assert!(!d.descriptor);
        assert_eq!(
            d.to_string(),
            "Unit Attention: Registrations preempted (asc=0x2a, ascq=0x05)"
        );
        let desc = [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0];
        let d = decode(&desc).unwrap();
        assert!(d.descriptor);
        assert_eq!(d.code, SenseCode::INVALID_FIELD);
        assert!(decode(&[0x71, 0, 0x03]).unwrap().deferred);
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0x70]), None);
        assert_eq!(decode(&[0x00; 18]), None);
    }
}
