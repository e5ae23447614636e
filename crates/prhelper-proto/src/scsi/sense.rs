// SPDX-License-Identifier: MIT OR Apache-2.0
//! Sense data: the helper's 96-byte sense buffer, the fixed-format sense it builds itself,
//! the mapping from SG_IO outcomes to SCSI status and sense (as QEMU 6.0+ does, with one
//! deliberate fix), and decoding for display.

/// Size of the sense buffer in every helper reply.
pub const SENSE_SIZE: usize = 96;

/// A sense key with its additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseCode {
    /// Sense key (4 bits).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $key:literal / $asc:literal / $ascq:literal;)*) => {
        impl SenseCode {
            $($(#[$doc])* pub const $name: SenseCode = SenseCode { key: $key, asc: $asc, ascq: $ascq };)*
        }
    };
}

// The codes QEMU's scsi/utils.c builds locally (same key/ASC/ASCQ values).
codes! {
    /// NO SENSE.
    NO_SENSE = 0x00 / 0x00 / 0x00;
    /// NOT READY, LOGICAL UNIT NOT READY.
    NOT_READY = 0x02 / 0x04 / 0x00;
    /// NOT READY, MEDIUM NOT PRESENT.
    NO_MEDIUM = 0x02 / 0x3a / 0x00;
    /// MEDIUM ERROR, UNRECOVERED READ ERROR.
    READ_ERROR = 0x03 / 0x11 / 0x00;
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE.
    TARGET_FAILURE = 0x04 / 0x44 / 0x00;
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    INVALID_OPCODE = 0x05 / 0x20 / 0x00;
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB.
    INVALID_FIELD = 0x05 / 0x24 / 0x00;
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    INVALID_PARAM = 0x05 / 0x26 / 0x00;
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    INVALID_PARAM_LEN = 0x05 / 0x1a / 0x00;
    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION.
    INVALID_RELEASE = 0x05 / 0x26 / 0x04;
    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    RESET = 0x06 / 0x29 / 0x00;
    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT.
    SPACE_ALLOC_FAILED = 0x07 / 0x27 / 0x07;
    /// ABORTED COMMAND, I/O PROCESS TERMINATED.
    IO_ERROR = 0x0b / 0x00 / 0x06;
    /// ABORTED COMMAND, I_T NEXUS LOSS OCCURRED.
    I_T_NEXUS_LOSS = 0x0b / 0x29 / 0x07;
    /// ABORTED COMMAND, LOGICAL UNIT COMMUNICATION FAILURE.
    LUN_COMM_FAILURE = 0x0b / 0x08 / 0x00;
    /// ABORTED COMMAND, LOGICAL UNIT DOES NOT RESPOND TO SELECTION.
    LUN_NOT_RESPONDING = 0x0b / 0x05 / 0x00;
    /// ABORTED COMMAND, COMMAND TIMEOUT DURING PROCESSING.
    COMMAND_TIMEOUT = 0x0b / 0x2e / 0x02;
    /// ABORTED COMMAND, COMMANDS CLEARED BY DEVICE SERVER.
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

/// Decoded sense data, fixed (0x70/0x71) or descriptor (0x72/0x73) format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Key, ASC and ASCQ.
    pub code: SenseCode,
    /// Deferred error (response code 0x71 or 0x73).
    pub deferred: bool,
    /// Descriptor format (0x72 or 0x73) rather than fixed.
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
