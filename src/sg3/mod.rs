// SPDX-License-Identifier: MIT OR Apache-2.0
//! sg3_utils' conventions, in one place: `sg_persist`'s exit statuses and the status/sense
//! categories behind them, its names for service actions and types, and its text output
//! for PR IN data and TransportIDs. `prhelper-client` prints with these so that its output
//! and exit status can be compared with `sg_persist`'s, text for text (the lab does).
//! Pure code: no I/O.

use std::fmt::Write as _;

use crate::scsi::cdb::{PrInAction, PrOutAction, PrType};
use crate::scsi::hex_byte;
use crate::scsi::prin::{self, Capabilities, FullStatus, ReadKeys, ReadReservation};
use crate::scsi::sense::{self, Sense};
use crate::scsi::transport_id::{proto_id, TID_LEN};
use crate::scsi::Status;

/// Format bytes as sg3_utils' `hex2str` does with no address column: 16 per line, an extra
/// space after the 8th, each line prefixed by `leadin`.
pub fn hex_lines(out: &mut String, leadin: &str, b: &[u8]) {
    for chunk in b.chunks(16) {
        out.reserve(leadin.len() + 3 * 16 + 2);
        out.push_str(leadin);
        for (i, &x) in chunk.iter().enumerate() {
            out.push_str(match i {
                0 => "",
                8 => "  ",
                _ => " ",
            });
            out.push_str(hex_byte(x));
        }
        out.push('\n');
    }
}

/// Describe one or more TransportIDs the way sg_persist prints them (sg3_utils'
/// `sg_decode_transportid_str`), every line prefixed by `leadin`. Works on raw bytes and
/// never panics.
pub fn describe(leadin: &str, bytes: &[u8]) -> String {
    // About two lines per TransportID; hex dumps take three characters a byte.
    let mut out = String::with_capacity(4 * bytes.len() + 2 * leadin.len() + 64);
    describe_into(&mut out, leadin, bytes);
    out
}

/// [`describe`], appended to `out` (no allocation when `out` has the room).
pub fn describe_into(out: &mut String, leadin: &str, bytes: &[u8]) {
    let mut off = 0;
    while off < bytes.len() {
        let b = &bytes[off..];
        if b.len() < TID_LEN || b.len() % 4 != 0 {
            let _ = writeln!(
                out,
                "{leadin}Transport Id short or not multiple of 4 [length={}]:",
                b.len()
            );
        } else {
            let _ = writeln!(out, "{leadin}Transport Id of initiator:");
        }
        let format = b[0] >> 6;
        let proto = b[0] & 0x0f;
        let get = |r: std::ops::Range<usize>| b.get(r.start..r.end.min(b.len())).unwrap_or(&[]);
        let mut bump = TID_LEN;
        let unexpected = |out: &mut String| {
            if format != 0 {
                let _ = writeln!(out, "{leadin}  [Unexpected TPID format: {format}]");
            }
        };
        match proto {
            proto_id::FC => {
                let _ = writeln!(out, "{leadin}  FCP-2 World Wide Name:");
                unexpected(out);
                hex_lines(out, leadin, get(8..16));
            }
            proto_id::SPI => {
                let a = get(2..4);
                let p = get(6..8);
                let be16 = |x: &[u8]| {
                    if x.len() == 2 {
                        u16::from_be_bytes([x[0], x[1]])
                    } else {
                        0
                    }
                };
                let _ = writeln!(
                    out,
                    "{leadin}  Parallel SCSI initiator SCSI address: {:#x}",
                    be16(a)
                );
                unexpected(out);
                let _ = writeln!(
                    out,
                    "{leadin}  relative port number (of corresponding target): {:#x}",
                    be16(p)
                );
            }
            proto_id::IEEE_1394 => {
                let _ = writeln!(out, "{leadin}  IEEE 1394 EUI-64 name:");
                unexpected(out);
                hex_lines(out, leadin, get(8..16));
            }
            proto_id::SRP => {
                let _ = writeln!(out, "{leadin}  RDMA initiator port identifier:");
                unexpected(out);
                hex_lines(out, leadin, get(8..24));
            }
            proto_id::ISCSI => {
                let num = match get(2..4) {
                    [h, l] => usize::from(u16::from_be_bytes([*h, *l])),
                    _ => 0,
                };
                let body = get(4..4 + num);
                let text = body.split(|&x| x == 0).next().unwrap_or(&[]);
                let text = String::from_utf8_lossy(text);
                match format {
                    0 => {
                        let _ = writeln!(out, "{leadin}  iSCSI name: {text}");
                    }
                    1 => {
                        let _ = writeln!(out, "{leadin}  iSCSI world wide unique port id: {text}");
                    }
                    _ => {
                        let _ =
                            writeln!(out, "{leadin}  iSCSI   [Unexpected TPID format: {format}]");
                        hex_lines(out, leadin, get(0..4 + num));
                    }
                }
                bump = (num + 4).max(TID_LEN);
            }
            proto_id::SAS => {
                let a = get(4..12);
                let addr = <[u8; 8]>::try_from(a).map_or(0, u64::from_be_bytes);
                let _ = writeln!(out, "{leadin}  SAS address: {addr:#x}");
                unexpected(out);
            }
            proto_id::SOP => {
                let r = match get(2..4) {
                    [h, l] => u16::from_be_bytes([*h, *l]),
                    _ => 0,
                };
                if format == 0 {
                    let _ = writeln!(out, "{leadin}  SOP Routing ID: {r:#x}");
                } else {
                    let _ = writeln!(out, "{leadin}  SOP   [Unexpected TPID format: {format}]");
                    hex_lines(out, leadin, get(0..TID_LEN));
                }
            }
            proto_id::NONE => {
                let _ = writeln!(out, "{leadin}  No specified protocol");
            }
            p => {
                let name = match p {
                    proto_id::SSA => Some("SSA (transport id not defined)"),
                    proto_id::ADT => Some("ADT"),
                    proto_id::ATA => Some("ATAPI"),
                    proto_id::UAS => Some("UAS"),
                    proto_id::PCIE => Some("PCIE"),
                    _ => None,
                };
                match name {
                    Some(n) => {
                        let _ = writeln!(out, "{leadin}  {n}:");
                        let _ = writeln!(out, "{leadin}  TPID format: {format}");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{leadin}  unknown protocol id={p:#x}  TPID format={format}"
                        );
                    }
                }
                hex_lines(out, leadin, get(0..TID_LEN));
            }
        }
        off += bump;
    }
}

/// sg3_utils' `SG_LIB_*` exit statuses, as sg_persist returns them.
pub mod sg_exit {
    pub const CLEAN: u8 = 0;
    pub const SYNTAX_ERROR: u8 = 1;
    pub const NOT_READY: u8 = 2;
    pub const MEDIUM_HARD: u8 = 3;
    pub const ILLEGAL_REQ: u8 = 5;
    pub const UNIT_ATTENTION: u8 = 6;
    pub const DATA_PROTECT: u8 = 7;
    pub const INVALID_OP: u8 = 9;
    pub const COPY_ABORTED: u8 = 10;
    pub const ABORTED_COMMAND: u8 = 11;
    pub const MISCOMPARE: u8 = 14;
    pub const FILE_ERROR: u8 = 15;
    pub const NO_SENSE: u8 = 20;
    pub const RECOVERED: u8 = 21;
    pub const RES_CONFLICT: u8 = 24;
    pub const CONDITION_MET: u8 = 25;
    pub const BUSY: u8 = 26;
    pub const TS_FULL: u8 = 27;
    pub const ACA_ACTIVE: u8 = 28;
    pub const TASK_ABORTED: u8 = 29;
    pub const PROTECTION: u8 = 40;
    pub const MALFORMED: u8 = 97;
    pub const SENSE: u8 = 98;
    pub const OTHER: u8 = 99;
}

/// Map a status and sense to sg3_utils' category (`sg_err_category_sense` plus the
/// status-only categories), which sg_persist uses as its exit status.
pub fn category(status: Status, sense: &Sense) -> u8 {
    use sg_exit::*;
    match status {
        Status::GOOD => CLEAN,
        Status::CHECK_CONDITION => match sense::decode(&sense.0) {
            None => SENSE,
            Some(d) => match (d.code.key, d.code.asc) {
                (0x0, _) => NO_SENSE,
                (0x1, _) => RECOVERED,
                (0x2, _) => NOT_READY,
                (0x3 | 0x4 | 0x8, _) => MEDIUM_HARD,
                (0x5, 0x20) => INVALID_OP,
                (0x5, _) => ILLEGAL_REQ,
                (0x6, _) => UNIT_ATTENTION,
                (0x7, _) => DATA_PROTECT,
                (0xa, _) => COPY_ABORTED,
                (0xb, 0x10) => PROTECTION,
                (0xb, _) => ABORTED_COMMAND,
                (0xe, _) => MISCOMPARE,
                _ => SENSE,
            },
        },
        Status::RESERVATION_CONFLICT => RES_CONFLICT,
        Status::CONDITION_MET => CONDITION_MET,
        Status::BUSY => BUSY,
        Status::TASK_SET_FULL => TS_FULL,
        Status::ACA_ACTIVE => ACA_ACTIVE,
        Status::TASK_ABORTED => TASK_ABORTED,
        _ => OTHER,
    }
}

/// sg3_utils' `hex2stdout`: 16 bytes a line, extra space after the 8th, optional offset column.
pub fn hex_dump(out: &mut String, b: &[u8], with_offsets: bool) {
    for (i, chunk) in b.chunks(16).enumerate() {
        if with_offsets {
            let _ = write!(out, " {:<7}", format!("{:02x}", i * 16));
        }
        hex_lines(out, "", chunk);
    }
}

/// sg_persist's names for the 16 type codes.
pub fn type_name(code: u8) -> String {
    match PrType::from_code(code) {
        Some(t) => t.name().to_owned(),
        None if code < 8 => format!("obsolete [{code}]"),
        None => format!("obsolete [{code:#x}]"),
    }
}

pub fn scope_and_type(out: &mut String, indent: &str, scope: u8, pr_type: u8) {
    if scope == 0 {
        let _ = write!(out, "{indent}scope: LU_SCOPE, ");
    } else {
        let _ = write!(out, "{indent}scope: {scope} ");
    }
    let _ = writeln!(out, " type: {}", type_name(pr_type));
}

pub fn category_str(cat: u8) -> String {
    match cat {
        2 => "Device not ready".into(),
        3 => "Medium or hardware error".into(),
        5 => "Illegal request".into(),
        6 => "Unit attention".into(),
        7 => "Data protect".into(),
        9 => "Illegal request, Invalid opcode".into(),
        10 => "Copy aborted".into(),
        11 => "Aborted command".into(),
        14 => "Miscompare".into(),
        20 => "No sense key".into(),
        21 => "Recovered error (warning)".into(),
        24 => "Reservation conflict".into(),
        25 => "Condition met".into(),
        26 => "Busy".into(),
        27 => "Task set full".into(),
        28 => "ACA active".into(),
        29 => "Task aborted".into(),
        40 => "Aborted command, protection error".into(),
        98 => "Some other sense error".into(),
        _ => "Some other error".into(),
    }
}

pub fn prin_sa_name(a: PrInAction) -> &'static str {
    match a {
        PrInAction::ReadKeys => "Read keys",
        PrInAction::ReadReservation => "Read reservation",
        PrInAction::ReportCapabilities => "Report capabilities",
        PrInAction::ReadFullStatus => "Read full status",
    }
}

pub fn prout_sa_name(a: PrOutAction) -> &'static str {
    match a {
        PrOutAction::Register => "Register",
        PrOutAction::Reserve => "Reserve",
        PrOutAction::Release => "Release",
        PrOutAction::Clear => "Clear",
        PrOutAction::Preempt => "Preempt",
        PrOutAction::PreemptAndAbort => "Preempt and abort",
        PrOutAction::RegisterAndIgnore => "Register and ignore existing key",
        PrOutAction::RegisterAndMove => "Register and move",
        PrOutAction::ReplaceLostReservation => "Replace lost reservation",
    }
}

/// Format PR In data the way sg_persist does. Err(exit status) for malformed data.
pub fn format_prin(
    action: PrInAction,
    data: &[u8],
    hex: u8,
    alloc: u16,
) -> Result<String, (String, u8)> {
    let mut out = String::new();
    let short = |need: usize| {
        (
            format!(
                "PR in ({}): response too short ({} bytes, {need} needed)",
                prin_sa_name(action),
                data.len()
            ),
            sg_exit::MALFORMED,
        )
    };
    if action == PrInAction::ReportCapabilities {
        if data.len() < prin::CAPABILITIES_LEN || data[1] != 8 {
            let mut msg = "Unexpected response for PRIN Report Capabilities".to_owned();
            if hex > 0 {
                msg.push('\n');
                let n = usize::from(data.get(1).copied().unwrap_or(0)).min(data.len());
                hex_dump(&mut msg, &data[..n], true);
            }
            return Err((msg.trim_end().to_owned(), sg_exit::MALFORMED));
        }
        if hex > 0 {
            hex_dump(&mut out, &data[..8], true);
            return Ok(out);
        }
        let c = Capabilities::decode(data).map_err(|_| short(8))?;
        let b = |v: bool| u8::from(v);
        let _ = writeln!(out, "Report capabilities response:");
        let _ = writeln!(
            out,
            "  Replace Lost Reservation Capable(RLR_C): {}",
            b(c.rlr_c)
        );
        let _ = writeln!(out, "  Compatible Reservation Handling(CRH): {}", b(c.crh));
        let _ = writeln!(
            out,
            "  Specify Initiator Ports Capable(SIP_C): {}",
            b(c.sip_c)
        );
        let _ = writeln!(out, "  All Target Ports Capable(ATP_C): {}", b(c.atp_c));
        let _ = writeln!(
            out,
            "  Persist Through Power Loss Capable(PTPL_C): {}",
            b(c.ptpl_c)
        );
        let _ = writeln!(out, "  Type Mask Valid(TMV): {}", b(c.tmv));
        let _ = writeln!(out, "  Allow Commands: {}", c.allow_commands);
        let _ = writeln!(
            out,
            "  Persist Through Power Loss Active(PTPL_A): {}",
            b(c.ptpl_a)
        );
        if c.tmv {
            let _ = writeln!(out, "    Support indicated in Type mask:");
            for t in [7u8, 6, 5, 3, 1, 8] {
                let bit = prin::type_mask::bit(t).unwrap_or(0);
                let _ = writeln!(out, "      {}: {}", type_name(t), b(c.type_mask & bit != 0));
            }
        }
        return Ok(out);
    }

    if data.len() < prin::HEADER_LEN {
        return Err(short(prin::HEADER_LEN));
    }
    let declared = prin::declared_len(data).unwrap_or(0);
    let generation = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let add_len = declared - prin::HEADER_LEN as u64;
    let avail = &data[..data
        .len()
        .min(usize::try_from(declared).unwrap_or(usize::MAX))];
    if hex > 0 {
        if hex > 1 {
            hex_dump(&mut out, avail, hex == 2);
        } else {
            let _ = write!(out, "  PR generation={generation:#x}, ");
            if declared > data.len() as u64 {
                let _ = writeln!(out, "Additional length too large={add_len}, truncate");
            } else {
                let _ = writeln!(out, "Additional length={add_len}");
            }
            hex_dump(&mut out, &avail[prin::HEADER_LEN..], true);
        }
        return Ok(out);
    }
    if declared > data.len() as u64 {
        eprintln!(
            ">> response truncated: device has {declared} bytes, {} received (allocation length {alloc}); \
             only complete entries are shown",
            data.len()
        );
    }
    match action {
        PrInAction::ReadKeys => {
            let rk = ReadKeys::decode(data).map_err(|_| short(8))?;
            let _ = write!(out, "  PR generation={:#x}, ", rk.generation);
            match rk.keys.len() {
                0 => {
                    let _ = writeln!(out, "there are NO registered reservation keys");
                }
                1 => {
                    let _ = writeln!(out, "1 registered reservation key follows:");
                }
                n => {
                    let _ = writeln!(out, "{n} registered reservation keys follow:");
                }
            }
            for k in rk.keys {
                let _ = writeln!(out, "    {k:#x}");
            }
        }
        PrInAction::ReadReservation => {
            let rr = ReadReservation::decode(data).map_err(|_| short(24))?;
            let _ = write!(out, "  PR generation={:#x}, ", rr.generation);
            match rr.reservation {
                None => {
                    let _ = writeln!(out, "there is NO reservation held");
                }
                Some(r) => {
                    let _ = writeln!(out, "Reservation follows:");
                    let _ = writeln!(out, "    Key={:#x}", r.key);
                    scope_and_type(&mut out, "    ", r.scope, r.pr_type);
                }
            }
        }
        PrInAction::ReadFullStatus => {
            let fs = FullStatus::decode(data).map_err(|_| short(8))?;
            let _ = writeln!(out, "  PR generation={:#x}", fs.generation);
            if add_len == 0 {
                let _ = writeln!(out, "  No full status descriptors");
            }
            for d in &fs.descriptors {
                let _ = writeln!(out, "    Key={:#x}", d.key);
                if d.all_tg_pt {
                    let _ = writeln!(out, "      All target ports bit set");
                } else {
                    let _ = writeln!(out, "      All target ports bit clear");
                    let _ = writeln!(
                        out,
                        "      Relative port address: {:#x}",
                        d.relative_target_port
                    );
                }
                if d.r_holder {
                    let _ = writeln!(out, "      << Reservation holder >>");
                    scope_and_type(&mut out, "      ", d.scope, d.pr_type);
                } else {
                    let _ = writeln!(out, "      not reservation holder");
                }
                if !d.transport_id.is_empty() {
                    describe_into(&mut out, "      ", &d.transport_id);
                }
            }
        }
        PrInAction::ReportCapabilities => unreachable!("handled above"),
    }
    Ok(out)
}

pub fn spaced_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
