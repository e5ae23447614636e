// SPDX-License-Identifier: MIT OR Apache-2.0
//! `prhelper-client`'s command line (clap). In the crate's library, not in the binary,
//! so that the man page and shell completions (packaging/gen) are generated from the same
//! definition. Not part of `prhelper-proto`: the protocol library has no CLI concerns.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::client::DEFAULT_SOCKET;
use crate::proto::wire::MAX_DATA;
use crate::scsi::prout::TransportId;
use crate::sg3::sg_exit;

/// Could not open DEVICE, connect to SOCKET, or talk to the helper (I/O error, timeout).
pub const EXIT_CONNECTION: u8 = sg_exit::FILE_ERROR;
/// The helper closed the connection without replying (it does so on protocol errors).
pub const EXIT_HELPER_CLOSED: u8 = 16;

const AFTER_HELP: &str = "\
Differences from sg_persist: -k is the helper socket (as in qemu-pr-helper), so
--read-keys has no short form (it is the default PR In action anyway); there is no
INQUIRY (-n is accepted and ignored); --scope sets the PR Out scope.

Numbers: RK, SARK, TYPE, RTPI and --alloc-length are hex (0x prefix optional), as in
sg_persist; --maxlen and --scope are decimal unless prefixed with 0x.

TransportIDs (-X, repeatable): sas,HEX16 | fcp,HEX16 | fc,HEX16 | naa.HEX16 (SAS WWN, as
LIO tcm_loop initiators) | iqn.NAME[,i,0xISID] | eui.NAME | comma-separated hex bytes.

Exit status (sg3_utils' values):
   0  GOOD
   1  syntax error
   2  not ready                 3  medium or hardware error
   5  illegal request           6  unit attention
   7  data protect              9  invalid opcode
  10  copy aborted             11  aborted command
  14  miscompare               15  cannot open DEVICE / connect to SOCKET / socket I/O error
  16  helper closed the connection without replying (request rejected)
  20  no sense                 21  recovered error
  24  reservation conflict     25  condition met
  26  busy                     27  task set full
  28  ACA active               29  task aborted
  40  protection error         97  malformed reply or PR In data
  98  other sense              99  other status";

#[derive(Parser, Debug)]
#[command(
    name = "prhelper-client",
    version,
    about = "Run a SCSI PERSISTENT RESERVE IN/OUT command through a pr-helper socket, like sg_persist",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The device to pass to the helper (opened here; its fd is sent).
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,

    /// pr-helper socket.
    #[arg(short = 'k', long = "socket", value_name = "SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Send a PR In command (default).
    #[arg(short = 'i', long = "in")]
    pub pr_in: bool,
    /// Send a PR Out command.
    #[arg(short = 'o', long = "out")]
    pub pr_out: bool,

    /// PR In: Read Keys (default).
    #[arg(long = "read-keys", help_heading = "PR In actions")]
    pub read_keys: bool,
    /// PR In: Read Reservation.
    #[arg(short = 'r', long = "read-reservation", help_heading = "PR In actions")]
    pub read_reservation: bool,
    /// PR In: Report Capabilities.
    #[arg(
        short = 'c',
        long = "report-capabilities",
        help_heading = "PR In actions"
    )]
    pub report_capabilities: bool,
    /// PR In: Read Full Status.
    #[arg(
        short = 's',
        long = "read-full-status",
        visible_alias = "read-status",
        help_heading = "PR In actions"
    )]
    pub read_full_status: bool,

    /// PR Out: Register.
    #[arg(short = 'G', long = "register", help_heading = "PR Out actions")]
    pub register: bool,
    /// PR Out: Register and Ignore existing key.
    #[arg(short = 'I', long = "register-ignore", help_heading = "PR Out actions")]
    pub register_ignore: bool,
    /// PR Out: Reserve.
    #[arg(short = 'R', long = "reserve", help_heading = "PR Out actions")]
    pub reserve: bool,
    /// PR Out: Release.
    #[arg(short = 'L', long = "release", help_heading = "PR Out actions")]
    pub release: bool,
    /// PR Out: Clear.
    #[arg(short = 'C', long = "clear", help_heading = "PR Out actions")]
    pub clear: bool,
    /// PR Out: Preempt.
    #[arg(short = 'P', long = "preempt", help_heading = "PR Out actions")]
    pub preempt: bool,
    /// PR Out: Preempt and Abort.
    #[arg(short = 'A', long = "preempt-abort", help_heading = "PR Out actions")]
    pub preempt_abort: bool,
    /// PR Out: Register and Move (needs exactly one --transport-id).
    #[arg(short = 'M', long = "register-move", help_heading = "PR Out actions")]
    pub register_move: bool,
    /// PR Out: Replace Lost Reservation.
    #[arg(short = 'z', long = "replace-lost", help_heading = "PR Out actions")]
    pub replace_lost: bool,

    /// PR Out parameter reservation key (hex).
    #[arg(short = 'K', long = "param-rk", value_name = "RK", value_parser = parse_hex_u64, default_value = "0", help_heading = "PR Out parameters")]
    pub param_rk: u64,
    /// PR Out parameter service action reservation key (hex).
    #[arg(short = 'S', long = "param-sark", value_name = "SARK", value_parser = parse_hex_u64, default_value = "0", help_heading = "PR Out parameters")]
    pub param_sark: u64,
    /// PR Out type field (hex): 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR.
    #[arg(short = 'T', long = "prout-type", value_name = "TYPE", value_parser = parse_nibble_hex, default_value = "0", help_heading = "PR Out parameters")]
    pub prout_type: u8,
    /// PR Out scope field (0 = LU_SCOPE, the only one SPC-4 defines).
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_nibble_dec, default_value = "0", help_heading = "PR Out parameters")]
    pub scope: u8,
    /// PR Out parameter APTPL.
    #[arg(short = 'Z', long = "param-aptpl", help_heading = "PR Out parameters")]
    pub param_aptpl: bool,
    /// PR Out parameter ALL_TG_PT.
    #[arg(
        short = 'Y',
        long = "param-alltgpt",
        help_heading = "PR Out parameters"
    )]
    pub param_alltgpt: bool,
    /// TransportID (sets SPEC_I_PT; with --register-move, the destination). Repeatable.
    #[arg(short = 'X', long = "transport-id", value_name = "TID", value_parser = parse_tid, help_heading = "PR Out parameters")]
    pub transport_ids: Vec<TransportId>,
    /// Register and Move: UNREG.
    #[arg(
        short = 'U',
        long = "param-unreg",
        visible_alias = "unreg",
        help_heading = "PR Out parameters"
    )]
    pub param_unreg: bool,
    /// Register and Move: relative target port identifier (hex).
    #[arg(short = 'Q', long = "relative-target-port", value_name = "RTPI", value_parser = parse_hex_u16, help_heading = "PR Out parameters")]
    pub relative_target_port: Option<u16>,

    /// PR In allocation length, hex (default 2000, i.e. 8192).
    #[arg(short = 'l', long = "alloc-length", value_name = "LEN", value_parser = parse_alloc_hex, conflicts_with = "maxlen")]
    pub alloc_length: Option<u16>,
    /// PR In allocation length, decimal.
    #[arg(short = 'm', long = "maxlen", value_name = "LEN", value_parser = parse_alloc_dec)]
    pub maxlen: Option<u16>,
    /// Output PR In data in hex (-HH: whole response with offsets, -HHH: without).
    #[arg(short = 'H', long = "hex", action = clap::ArgAction::Count)]
    pub hex: u8,
    /// Open DEVICE read-only, even for --out (to exercise the helper's read-only check).
    #[arg(short = 'y', long = "readonly", conflicts_with = "read_write")]
    pub readonly: bool,
    /// Open DEVICE read-write even for --in (default: read-only for --in, read-write for --out).
    #[arg(long = "read-write")]
    pub read_write: bool,
    /// Ignored (sg_persist compatibility: there is no INQUIRY through the helper).
    #[arg(short = 'n', long = "no-inquiry")]
    pub no_inquiry: bool,
    /// Give up on the helper after this many seconds without progress (default: wait forever, as QEMU).
    #[arg(long = "timeout", value_name = "SECS")]
    pub timeout: Option<f64>,
    /// More output on stderr: CDB, parameter list, helper features.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    u64::from_str_radix(strip_0x(s.trim()), 16).map_err(|e| format!("bad hex number {s:?}: {e}"))
}

fn parse_hex_u16(s: &str) -> Result<u16, String> {
    u16::from_str_radix(strip_0x(s.trim()), 16)
        .map_err(|_| format!("{s:?}: expected hex 0 to ffff"))
}

fn parse_nibble_hex(s: &str) -> Result<u8, String> {
    u8::from_str_radix(strip_0x(s.trim()), 16)
        .ok()
        .filter(|&v| v <= 0xf)
        .ok_or_else(|| format!("{s:?}: expected hex 0 to f"))
}

fn parse_dec_or_hex(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_nibble_dec(s: &str) -> Result<u8, String> {
    parse_dec_or_hex(s)
        .filter(|&v| v <= 0xf)
        .map(|v| v as u8)
        .ok_or_else(|| format!("{s:?}: expected 0 to 15"))
}

fn alloc_limit(v: Option<u64>, s: &str) -> Result<u16, String> {
    v.filter(|&v| v <= MAX_DATA as u64)
        .map(|v| v as u16)
        .ok_or_else(|| format!("{s:?}: allocation length must be 0 to {MAX_DATA} (0x2000)"))
}

fn parse_alloc_hex(s: &str) -> Result<u16, String> {
    alloc_limit(u64::from_str_radix(strip_0x(s.trim()), 16).ok(), s)
}

fn parse_alloc_dec(s: &str) -> Result<u16, String> {
    alloc_limit(parse_dec_or_hex(s), s)
}

fn parse_tid(s: &str) -> Result<TransportId, String> {
    TransportId::parse(s).map_err(|e| e.to_string())
}

/// The clap command `prhelper-client` parses (for man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn number_parsers() {
        assert_eq!(parse_hex_u64("0x1f"), Ok(0x1f));
        assert_eq!(parse_hex_u64("abc"), Ok(0xabc));
        assert!(parse_hex_u64("xyz").is_err());
        assert_eq!(parse_alloc_hex("2000"), Ok(8192));
        assert!(parse_alloc_hex("2001").is_err());
        assert_eq!(parse_alloc_dec("100"), Ok(100));
        assert_eq!(parse_nibble_hex("8"), Ok(8));
        assert!(parse_nibble_hex("10").is_err());
        assert_eq!(parse_nibble_dec("15"), Ok(15));
        assert!(parse_nibble_dec("16").is_err());
    }
}
