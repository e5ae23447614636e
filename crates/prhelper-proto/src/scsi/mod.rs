// SPDX-License-Identifier: MIT OR Apache-2.0
//! SCSI definitions used by the helper: status codes, persistent reservation CDBs and
//! sense data. Pure code: no I/O, no `unsafe`.

pub mod cdb;
pub mod prin;
pub mod prout;
pub mod sense;
pub mod transport_id;

/// SCSI status byte (SAM-5).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    /// GOOD: the command completed.
    pub const GOOD: Status = Status(0x00);
    /// CHECK CONDITION: sense data says why the command failed.
    pub const CHECK_CONDITION: Status = Status(0x02);
    /// CONDITION MET.
    pub const CONDITION_MET: Status = Status(0x04);
    /// BUSY: try again later.
    pub const BUSY: Status = Status(0x08);
    /// RESERVATION CONFLICT: a persistent reservation forbids the command.
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    /// TASK SET FULL.
    pub const TASK_SET_FULL: Status = Status(0x28);
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: Status = Status(0x30);
    /// TASK ABORTED.
    pub const TASK_ABORTED: Status = Status(0x40);

    /// Human-readable name, as sg3_utils prints it.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x00 => "Good",
            0x02 => "Check Condition",
            0x04 => "Condition Met",
            0x08 => "Busy",
            0x10 => "Intermediate",
            0x14 => "Intermediate-Condition Met",
            0x18 => "Reservation Conflict",
            0x22 => "Command Terminated",
            0x28 => "Task Set Full",
            0x30 => "ACA Active",
            0x40 => "Task Aborted",
            _ => "Unknown status",
        }
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#04x} ({})", self.0, self.name())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// PERSISTENT RESERVE IN operation code.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT operation code.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
/// TEST UNIT READY operation code.
pub const TEST_UNIT_READY: u8 = 0x00;

/// Big-endian u32 from the first 4 bytes of `b` (callers check the length).
pub(crate) fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Big-endian u64 from the first 8 bytes of `b` (callers check the length).
pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// `x` as two lowercase hex digits: what `{x:02x}` gives, without the formatting
/// machinery (TransportIDs and sense are printed byte by byte, and the fuzz targets print
/// a lot of them).
pub fn hex_byte(x: u8) -> &'static str {
    const DIGITS: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
        202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\
        404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f\
        606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f\
        808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\
        a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\
        c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf\
        e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    let i = 2 * usize::from(x);
    &DIGITS[i..i + 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_byte_is_02x() {
        for x in 0..=255u8 {
            assert_eq!(hex_byte(x), format!("{x:02x}"));
        }
        let raw = transport_id::TransportId::Raw(vec![0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(raw.to_string(), "00,0f,a5,ff");
    }
}
