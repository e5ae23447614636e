//! prhelper-client: run one SCSI PERSISTENT RESERVE IN/OUT command through a pr-helper
//! socket (qemu-pr-helper or prhelper), with sg_persist's options and output.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use prhelper::client::{Client, Error, Response, DEFAULT_SOCKET};
use prhelper::proto::wire::MAX_DATA;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prout::{BasicParams, RegisterMoveParams, TransportId};
use prhelper::sg3::{self, sg_exit};

/// Could not open DEVICE, connect to SOCKET, or talk to the helper (I/O error, timeout).
const EXIT_CONNECTION: u8 = sg_exit::FILE_ERROR;
/// The helper closed the connection without replying (it does so on protocol errors).
const EXIT_HELPER_CLOSED: u8 = 16;

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
struct Cli {
    /// The device to pass to the helper (opened here; its fd is sent).
    #[arg(value_name = "DEVICE")]
    device: PathBuf,

    /// pr-helper socket.
    #[arg(short = 'k', long = "socket", value_name = "SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Send a PR In command (default).
    #[arg(short = 'i', long = "in")]
    pr_in: bool,
    /// Send a PR Out command.
    #[arg(short = 'o', long = "out")]
    pr_out: bool,

    /// PR In: Read Keys (default).
    #[arg(long = "read-keys", help_heading = "PR In actions")]
    read_keys: bool,
    /// PR In: Read Reservation.
    #[arg(short = 'r', long = "read-reservation", help_heading = "PR In actions")]
    read_reservation: bool,
    /// PR In: Report Capabilities.
    #[arg(
        short = 'c',
        long = "report-capabilities",
        help_heading = "PR In actions"
    )]
    report_capabilities: bool,
    /// PR In: Read Full Status.
    #[arg(
        short = 's',
        long = "read-full-status",
        visible_alias = "read-status",
        help_heading = "PR In actions"
    )]
    read_full_status: bool,

    /// PR Out: Register.
    #[arg(short = 'G', long = "register", help_heading = "PR Out actions")]
    register: bool,
    /// PR Out: Register and Ignore existing key.
    #[arg(short = 'I', long = "register-ignore", help_heading = "PR Out actions")]
    register_ignore: bool,
    /// PR Out: Reserve.
    #[arg(short = 'R', long = "reserve", help_heading = "PR Out actions")]
    reserve: bool,
    /// PR Out: Release.
    #[arg(short = 'L', long = "release", help_heading = "PR Out actions")]
    release: bool,
    /// PR Out: Clear.
    #[arg(short = 'C', long = "clear", help_heading = "PR Out actions")]
    clear: bool,
    /// PR Out: Preempt.
    #[arg(short = 'P', long = "preempt", help_heading = "PR Out actions")]
    preempt: bool,
    /// PR Out: Preempt and Abort.
    #[arg(short = 'A', long = "preempt-abort", help_heading = "PR Out actions")]
    preempt_abort: bool,
    /// PR Out: Register and Move (needs exactly one --transport-id).
    #[arg(short = 'M', long = "register-move", help_heading = "PR Out actions")]
    register_move: bool,
    /// PR Out: Replace Lost Reservation.
    #[arg(short = 'z', long = "replace-lost", help_heading = "PR Out actions")]
    replace_lost: bool,

    /// PR Out parameter reservation key (hex).
    #[arg(short = 'K', long = "param-rk", value_name = "RK", value_parser = parse_hex_u64, default_value = "0", help_heading = "PR Out parameters")]
    param_rk: u64,
    /// PR Out parameter service action reservation key (hex).
    #[arg(short = 'S', long = "param-sark", value_name = "SARK", value_parser = parse_hex_u64, default_value = "0", help_heading = "PR Out parameters")]
    param_sark: u64,
    /// PR Out type field (hex): 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR.
    #[arg(short = 'T', long = "prout-type", value_name = "TYPE", value_parser = parse_nibble_hex, default_value = "0", help_heading = "PR Out parameters")]
    prout_type: u8,
    /// PR Out scope field (0 = LU_SCOPE, the only one SPC-4 defines).
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_nibble_dec, default_value = "0", help_heading = "PR Out parameters")]
    scope: u8,
    /// PR Out parameter APTPL.
    #[arg(short = 'Z', long = "param-aptpl", help_heading = "PR Out parameters")]
    param_aptpl: bool,
    /// PR Out parameter ALL_TG_PT.
    #[arg(
        short = 'Y',
        long = "param-alltgpt",
        help_heading = "PR Out parameters"
    )]
    param_alltgpt: bool,
    /// TransportID (sets SPEC_I_PT; with --register-move, the destination). Repeatable.
    #[arg(short = 'X', long = "transport-id", value_name = "TID", value_parser = parse_tid, help_heading = "PR Out parameters")]
    transport_ids: Vec<TransportId>,
    /// Register and Move: UNREG.
    #[arg(
        short = 'U',
        long = "param-unreg",
        visible_alias = "unreg",
        help_heading = "PR Out parameters"
    )]
    param_unreg: bool,
    /// Register and Move: relative target port identifier (hex).
    #[arg(short = 'Q', long = "relative-target-port", value_name = "RTPI", value_parser = parse_hex_u16, help_heading = "PR Out parameters")]
    relative_target_port: Option<u16>,

    /// PR In allocation length, hex (default 2000, i.e. 8192).
    #[arg(short = 'l', long = "alloc-length", value_name = "LEN", value_parser = parse_alloc_hex, conflicts_with = "maxlen")]
    alloc_length: Option<u16>,
    /// PR In allocation length, decimal.
    #[arg(short = 'm', long = "maxlen", value_name = "LEN", value_parser = parse_alloc_dec)]
    maxlen: Option<u16>,
    /// Output PR In data in hex (-HH: whole response with offsets, -HHH: without).
    #[arg(short = 'H', long = "hex", action = clap::ArgAction::Count)]
    hex: u8,
    /// Open DEVICE read-only, even for --out (to exercise the helper's read-only check).
    #[arg(short = 'y', long = "readonly", conflicts_with = "read_write")]
    readonly: bool,
    /// Open DEVICE read-write even for --in (default: read-only for --in, read-write for --out).
    #[arg(long = "read-write")]
    read_write: bool,
    /// Ignored (sg_persist compatibility: there is no INQUIRY through the helper).
    #[arg(short = 'n', long = "no-inquiry")]
    no_inquiry: bool,
    /// Give up on the helper after this many seconds without progress (default: wait forever, as QEMU).
    #[arg(long = "timeout", value_name = "SECS")]
    timeout: Option<f64>,
    /// More output on stderr: CDB, parameter list, helper features.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
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

/// Report a non-GOOD status on stderr, sg_persist style; returns the exit status.
fn report_failure(what: &str, sa: &str, r: &Response) -> u8 {
    let cat = sg3::category(r.status, &r.sense);
    let long = if what == "PR in" {
        "persistent reserve in"
    } else {
        "persistent reserve out"
    };
    match r.sense_data() {
        Some(d) => eprintln!("{long}: {}; {d}", r.status),
        None => eprintln!("{long}: {}", r.status),
    }
    let msg = match cat {
        sg_exit::INVALID_OP => "command not supported".to_owned(),
        sg_exit::ILLEGAL_REQ => {
            "bad field in cdb or parameter list (perhaps unsupported service action)".to_owned()
        }
        c => sg3::category_str(c),
    };
    eprintln!("{what} ({sa}): {msg}");
    cat
}

fn client_failure(e: &Error) -> u8 {
    eprintln!("prhelper-client: {e}");
    match e {
        Error::Closed(_) => EXIT_HELPER_CLOSED,
        Error::InvalidReply(_) | Error::Malformed(_) => sg_exit::MALFORMED,
        Error::InvalidRequest(_) => sg_exit::SYNTAX_ERROR,
        Error::Scsi { status, sense } => sg3::category(*status, sense),
        _ => EXIT_CONNECTION,
    }
}

fn syntax(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(sg_exit::SYNTAX_ERROR)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(sg_exit::SYNTAX_ERROR),
            };
        }
    };
    let _ = cli.no_inquiry;

    let in_actions: Vec<PrInAction> = [
        (cli.read_keys, PrInAction::ReadKeys),
        (cli.read_reservation, PrInAction::ReadReservation),
        (cli.report_capabilities, PrInAction::ReportCapabilities),
        (cli.read_full_status, PrInAction::ReadFullStatus),
    ]
    .into_iter()
    .filter_map(|(on, a)| on.then_some(a))
    .collect();
    let out_actions: Vec<PrOutAction> = [
        (cli.register, PrOutAction::Register),
        (cli.register_ignore, PrOutAction::RegisterAndIgnore),
        (cli.reserve, PrOutAction::Reserve),
        (cli.release, PrOutAction::Release),
        (cli.clear, PrOutAction::Clear),
        (cli.preempt, PrOutAction::Preempt),
        (cli.preempt_abort, PrOutAction::PreemptAndAbort),
        (cli.register_move, PrOutAction::RegisterAndMove),
        (cli.replace_lost, PrOutAction::ReplaceLostReservation),
    ]
    .into_iter()
    .filter_map(|(on, a)| on.then_some(a))
    .collect();

    if cli.pr_in && cli.pr_out {
        return syntax("choose '--in' _or_ '--out' (not both)");
    }
    let command = if cli.pr_out {
        if out_actions.len() != 1 || !in_actions.is_empty() {
            return syntax(
                ">> For Persistent Reserve Out one and only one appropriate\n>> service action must be chosen (e.g. '--register')",
            );
        }
        Command::Out(out_actions[0])
    } else {
        if !out_actions.is_empty() {
            return syntax(">> When a service action for Persistent Reserve Out is chosen the\n>> '--out' option must be given (as a safeguard)");
        }
        match in_actions.as_slice() {
            [] => {
                eprintln!(">> No service action given; assume Persistent Reserve In command\n>> with Read Keys service action");
                Command::In(PrInAction::ReadKeys)
            }
            [a] => Command::In(*a),
            _ => return syntax("Too many service actions given; choose one only"),
        }
    };
    let is_move = matches!(command, Command::Out(PrOutAction::RegisterAndMove));
    if (cli.param_unreg || cli.relative_target_port.is_some()) && !is_move {
        return syntax("--param-unreg or --relative-target-port only useful with --register-move");
    }
    if is_move && cli.transport_ids.len() != 1 {
        return syntax("with --register-move one (and only one) --transport-id should be given");
    }
    if let Command::Out(
        a @ (PrOutAction::Reserve
        | PrOutAction::Release
        | PrOutAction::Preempt
        | PrOutAction::PreemptAndAbort),
    ) = command
    {
        if cli.prout_type == 0 {
            eprintln!(
                "warning>>> --prout-type probably needs to be given ({})",
                sg3::prout_sa_name(a)
            );
        }
    }
    if cli.verbose > 2 && !cli.transport_ids.is_empty() {
        eprintln!(
            "number of transport-ids decoded from command line: {}",
            cli.transport_ids.len()
        );
        eprintln!("  Decode given transport-ids:");
        for t in &cli.transport_ids {
            eprint!("{}", sg3::describe("      ", &t.encode()));
        }
    }

    // Open the device the way the VM's disk would be: read-only is allowed for PR In.
    let write = match command {
        _ if cli.readonly => false,
        _ if cli.read_write => true,
        Command::In(_) => false,
        Command::Out(_) => true,
    };
    let dev = match OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(&cli.device)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "prhelper-client: error opening file ({}): {}: {e}",
                if write { "rw" } else { "ro" },
                cli.device.display()
            );
            return ExitCode::from(EXIT_CONNECTION);
        }
    };

    let timeout = match cli.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => {
            return syntax(&format!(
                "--timeout {t}: expected a positive number of seconds"
            ))
        }
    };
    let mut client = match Client::connect_with_timeouts(&cli.socket, timeout, timeout) {
        Ok(c) => c,
        Err(e) => return ExitCode::from(client_failure(&e)),
    };
    if cli.verbose > 1 {
        eprintln!("    helper features: {:#010x}", client.helper_features());
    }

    let code = match command {
        Command::In(action) => {
            let alloc = cli.alloc_length.or(cli.maxlen).unwrap_or(MAX_DATA as u16);
            let cdb = cdb::pr_in(action, alloc);
            if cli.verbose > 0 {
                eprintln!(
                    "    Persistent reservation in cdb: {}",
                    sg3::spaced_hex(&cdb)
                );
            }
            match client.execute(dev.as_fd(), &cdb, &[], usize::from(alloc)) {
                Err(e) => client_failure(&e),
                Ok(r) if !r.is_good() => report_failure("PR in", sg3::prin_sa_name(action), &r),
                Ok(r) => match sg3::format_prin(action, &r.data, cli.hex, alloc) {
                    Ok(text) => {
                        print!("{text}");
                        sg_exit::CLEAN
                    }
                    Err((msg, code)) => {
                        eprintln!("{msg}");
                        code
                    }
                },
            }
        }
        Command::Out(action) => {
            let params = if is_move {
                RegisterMoveParams {
                    key: cli.param_rk,
                    sa_key: cli.param_sark,
                    unreg: cli.param_unreg,
                    aptpl: cli.param_aptpl,
                    relative_target_port: cli.relative_target_port.unwrap_or(0),
                    transport_id: cli.transport_ids[0].clone(),
                }
                .encode()
            } else {
                BasicParams {
                    key: cli.param_rk,
                    sa_key: cli.param_sark,
                    all_tg_pt: cli.param_alltgpt,
                    aptpl: cli.param_aptpl,
                    transport_ids: (!cli.transport_ids.is_empty())
                        .then(|| cli.transport_ids.clone()),
                }
                .encode()
            };
            let Ok(len) = u16::try_from(params.len()) else {
                return syntax("parameter list too long");
            };
            let cdb = cdb::pr_out(action, cli.scope, cli.prout_type, u32::from(len));
            if cli.verbose > 0 {
                eprintln!(
                    "    Persistent reservation out cdb: {}",
                    sg3::spaced_hex(&cdb)
                );
                eprintln!("    Persistent reservation out parameters:");
                let mut s = String::new();
                sg3::hex_dump(&mut s, &params, true);
                eprint!("{s}");
            }
            match client.execute(dev.as_fd(), &cdb, &params, 0) {
                Err(e) => client_failure(&e),
                Ok(r) if !r.is_good() => report_failure("PR out", sg3::prout_sa_name(action), &r),
                Ok(_) => {
                    if cli.verbose > 0 {
                        eprintln!(
                            "PR out: command ({}) successful",
                            sg3::prout_sa_name(action)
                        );
                    }
                    sg_exit::CLEAN
                }
            }
        }
    };
    ExitCode::from(code)
}

#[derive(Clone, Copy, Debug)]
enum Command {
    In(PrInAction),
    Out(PrOutAction),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
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
