// SPDX-License-Identifier: MIT OR Apache-2.0
//! PERSISTENT RESERVE IN / OUT command descriptor blocks (SPC-4 6.15, 6.16).

use super::{PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

/// PERSISTENT RESERVE IN service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PrInAction {
    /// READ KEYS: the generation and every registered key.
    ReadKeys = 0x00,
    /// READ RESERVATION: the reservation holder's key, scope and type, if any.
    ReadReservation = 0x01,
    /// REPORT CAPABILITIES: which types and options the device supports.
    ReportCapabilities = 0x02,
    /// READ FULL STATUS: every registration with its I_T nexus and holder flag.
    ReadFullStatus = 0x03,
}

impl PrInAction {
    /// Every service action, in code order.
    pub const ALL: [PrInAction; 4] = [
        PrInAction::ReadKeys,
        PrInAction::ReadReservation,
        PrInAction::ReportCapabilities,
        PrInAction::ReadFullStatus,
    ];

    /// The variant with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| *a as u8 == code)
    }

    /// A lower-case name for logs ("read keys").
    pub fn name(self) -> &'static str {
        match self {
            PrInAction::ReadKeys => "read keys",
            PrInAction::ReadReservation => "read reservation",
            PrInAction::ReportCapabilities => "report capabilities",
            PrInAction::ReadFullStatus => "read full status",
        }
    }
}

/// PERSISTENT RESERVE OUT service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PrOutAction {
    /// REGISTER: register, change or (with a zero key) remove this I_T nexus's key.
    Register = 0x00,
    /// RESERVE: take the reservation with a registered key.
    Reserve = 0x01,
    /// RELEASE: give up the reservation this I_T nexus holds.
    Release = 0x02,
    /// CLEAR: remove the reservation and every registration.
    Clear = 0x03,
    /// PREEMPT: remove another key's registrations (and its reservation).
    Preempt = 0x04,
    /// PREEMPT AND ABORT: PREEMPT and abort the preempted nexuses' commands.
    PreemptAndAbort = 0x05,
    /// REGISTER AND IGNORE EXISTING KEY: register whatever key is there now.
    RegisterAndIgnore = 0x06,
    /// REGISTER AND MOVE: register another I_T nexus and move the reservation to it.
    RegisterAndMove = 0x07,
    /// REPLACE LOST RESERVATION (SPC-5).
    ReplaceLostReservation = 0x08,
}

impl PrOutAction {
    /// Every service action, in code order.
    pub const ALL: [PrOutAction; 9] = [
        PrOutAction::Register,
        PrOutAction::Reserve,
        PrOutAction::Release,
        PrOutAction::Clear,
        PrOutAction::Preempt,
        PrOutAction::PreemptAndAbort,
        PrOutAction::RegisterAndIgnore,
        PrOutAction::RegisterAndMove,
        PrOutAction::ReplaceLostReservation,
    ];

    /// The variant with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| *a as u8 == code)
    }

    /// A lower-case name for logs ("register and ignore").
    pub fn name(self) -> &'static str {
        match self {
            PrOutAction::Register => "register",
            PrOutAction::Reserve => "reserve",
            PrOutAction::Release => "release",
            PrOutAction::Clear => "clear",
            PrOutAction::Preempt => "preempt",
            PrOutAction::PreemptAndAbort => "preempt and abort",
            PrOutAction::RegisterAndIgnore => "register and ignore existing key",
            PrOutAction::RegisterAndMove => "register and move",
            PrOutAction::ReplaceLostReservation => "replace lost reservation",
        }
    }
}

/// Persistent reservation types (SPC-4 table 212).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PrType {
    /// Write Exclusive: only the holder writes.
    WriteExclusive = 0x1,
    /// Exclusive Access: only the holder reads or writes.
    ExclusiveAccess = 0x3,
    /// Write Exclusive – Registrants Only: registered nexuses write.
    WriteExclusiveRegistrantsOnly = 0x5,
    /// Exclusive Access – Registrants Only: registered nexuses read and write.
    ExclusiveAccessRegistrantsOnly = 0x6,
    /// Write Exclusive – All Registrants: every registrant holds the reservation.
    WriteExclusiveAllRegistrants = 0x7,
    /// Exclusive Access – All Registrants: every registrant holds the reservation.
    ExclusiveAccessAllRegistrants = 0x8,
}

impl PrType {
    /// Every type SPC-4 defines, in code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The variant with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == code)
    }

    /// The type's name, as sg_persist prints it ("Write Exclusive, registrants only").
    pub fn name(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "Write Exclusive",
            PrType::ExclusiveAccess => "Exclusive Access",
            PrType::WriteExclusiveRegistrantsOnly => "Write Exclusive, registrants only",
            PrType::ExclusiveAccessRegistrantsOnly => "Exclusive Access, registrants only",
            PrType::WriteExclusiveAllRegistrants => "Write Exclusive, all registrants",
            PrType::ExclusiveAccessAllRegistrants => "Exclusive Access, all registrants",
        }
    }
}

/// The only scope SPC-4 still defines: LU_SCOPE (0).
pub const LU_SCOPE: u8 = 0;

/// Build a 10-byte PERSISTENT RESERVE IN CDB.
pub fn pr_in(action: PrInAction, allocation_length: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = PERSISTENT_RESERVE_IN;
    cdb[1] = action as u8;
    cdb[7..9].copy_from_slice(&allocation_length.to_be_bytes());
    cdb
}

/// Build a 10-byte PERSISTENT RESERVE OUT CDB. `parameter_list_length` fills bytes 5..9
/// (SPC-4), whose low 16 bits are what QEMU and the helper use.
pub fn pr_out(action: PrOutAction, scope: u8, pr_type: u8, parameter_list_length: u32) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = PERSISTENT_RESERVE_OUT;
    cdb[1] = action as u8;
    cdb[2] = ((scope & 0x0f) << 4) | (pr_type & 0x0f);
    cdb[5..9].copy_from_slice(&parameter_list_length.to_be_bytes());
    cdb
}

/// PR OUT's PARAMETER LIST LENGTH as SPC-4 defines it: four bytes, CDB bytes 5..9.
///
/// The pr-helper protocol (and QEMU, which frames the data) uses only the low 16 bits
/// (bytes 7..9): a CDB whose full length differs from those bits promises data the
/// client never sends, and must not reach a device (see [`pr_out_length_mismatch`]).
pub fn pr_out_parameter_list_length(cdb: &[u8; 16]) -> u32 {
    u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]])
}

/// True when a PR OUT CDB's four-byte PARAMETER LIST LENGTH is not the 16-bit length the
/// protocol framed its parameter list by (bytes 5 or 6 not zero): the command is
/// answered ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR, after its data was consumed.
pub fn pr_out_length_mismatch(cdb: &[u8; 16]) -> bool {
    cdb[0] == PERSISTENT_RESERVE_OUT && (cdb[5] | cdb[6]) != 0
}

/// The fields of a PR IN/OUT CDB that the helper logs and routes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdbSummary {
    /// Operation code (CDB byte 0).
    pub opcode: u8,
    /// Service action: CDB byte 1, low 5 bits.
    pub service_action: u8,
    /// PR OUT only: scope (CDB byte 2, high nibble).
    pub scope: u8,
    /// PR OUT only: type (CDB byte 2, low nibble).
    pub pr_type: u8,
    /// Transfer length as QEMU computes it for group-2 opcodes: big-endian CDB bytes 7..9.
    pub transfer_length: u16,
}

impl CdbSummary {
    /// Read the fields from a 16-byte CDB (no validation).
    pub fn parse(cdb: &[u8; 16]) -> Self {
        CdbSummary {
            opcode: cdb[0],
            service_action: cdb[1] & 0x1f,
            scope: cdb[2] >> 4,
            pr_type: cdb[2] & 0x0f,
            transfer_length: u16::from_be_bytes([cdb[7], cdb[8]]),
        }
    }

    /// Service action name, or "unknown".
    pub fn action_name(&self) -> &'static str {
        match self.opcode {
            PERSISTENT_RESERVE_IN => {
                PrInAction::from_code(self.service_action).map_or("unknown", |a| a.name())
            }
            PERSISTENT_RESERVE_OUT => {
                PrOutAction::from_code(self.service_action).map_or("unknown", |a| a.name())
            }
            _ => "not a PR command",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_out_length_is_four_bytes() {
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&pr_out(PrOutAction::Register, 0, 0, 24));
        assert_eq!(pr_out_parameter_list_length(&cdb), 24);
        assert!(!pr_out_length_mismatch(&cdb));
        for (byte, len) in [(5, 0x0100_0018u32), (6, 0x0001_0018)] {
            let mut c = cdb;
            c[byte] = 1;
            assert_eq!(pr_out_parameter_list_length(&c), len);
            assert!(pr_out_length_mismatch(&c), "byte {byte}");
        }
        // 8192 and 0 fit the protocol's framing; bytes 9.. are not part of the length.
        let mut c = [0u8; 16];
        c[..10].copy_from_slice(&pr_out(PrOutAction::Clear, 0, 0, 8192));
        c[9] = 0xff;
        assert!(!pr_out_length_mismatch(&c));
        // PR IN's allocation length is two bytes: bytes 5 and 6 are reserved, not looked at.
        let mut c = [0u8; 16];
        c[0] = PERSISTENT_RESERVE_IN;
        c[5] = 1;
        assert!(!pr_out_length_mismatch(&c));
    }

    #[test]
    fn pr_in_cdb_bytes() {
        assert_eq!(
            pr_in(PrInAction::ReadFullStatus, 0x1234),
            [0x5e, 0x03, 0, 0, 0, 0, 0, 0x12, 0x34, 0]
        );
        assert_eq!(
            pr_in(PrInAction::ReadKeys, 8),
            [0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0]
        );
    }

    #[test]
    fn pr_out_cdb_bytes() {
        assert_eq!(
            pr_out(
                PrOutAction::Reserve,
                LU_SCOPE,
                PrType::ExclusiveAccess as u8,
                24
            ),
            [0x5f, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0]
        );
        assert_eq!(
            pr_out(PrOutAction::RegisterAndMove, 0x2, 0x8, 0x0102_0304),
            [0x5f, 0x07, 0x28, 0, 0, 0x01, 0x02, 0x03, 0x04, 0]
        );
    }

    #[test]
    fn summary_parses_fields() {
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&pr_out(PrOutAction::Preempt, 0, 5, 0x2018));
        let s = CdbSummary::parse(&cdb);
        assert_eq!(s.opcode, 0x5f);
        assert_eq!(s.service_action, 4);
        assert_eq!(s.pr_type, 5);
        assert_eq!(s.scope, 0);
        assert_eq!(s.transfer_length, 0x2018);
        assert_eq!(s.action_name(), "preempt");
        // The high service-action bits are not part of the action.
        cdb[1] = 0xe3;
        assert_eq!(CdbSummary::parse(&cdb).service_action, 3);
    }

    #[test]
    fn codes_round_trip() {
        for a in PrInAction::ALL {
            assert_eq!(PrInAction::from_code(a as u8), Some(a));
        }
        for a in PrOutAction::ALL {
            assert_eq!(PrOutAction::from_code(a as u8), Some(a));
        }
        for t in PrType::ALL {
            assert_eq!(PrType::from_code(t as u8), Some(t));
        }
        assert_eq!(PrInAction::from_code(4), None);
        assert_eq!(PrOutAction::from_code(9), None);
        assert_eq!(PrType::from_code(2), None);
    }
}
