//! prhelper-client: run one SCSI PERSISTENT RESERVE IN/OUT command through a pr-helper
//! socket (qemu-pr-helper or prhelper), with sg_persist's options and output.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use prhelper::client::cli::{Cli, EXIT_CONNECTION, EXIT_HELPER_CLOSED};
use prhelper::client::{self, sg_exit, Client, Error, Response};
use prhelper::proto::wire::MAX_DATA;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prin::{self, Capabilities, FullStatus, ReadKeys, ReadReservation};
use prhelper::scsi::prout::{self, BasicParams, RegisterMoveParams};

/// sg3_utils' `hex2stdout`: 16 bytes a line, extra space after the 8th, optional offset column.
fn hex_dump(out: &mut String, b: &[u8], with_offsets: bool) {
    for (i, chunk) in b.chunks(16).enumerate() {
        if with_offsets {
            let _ = write!(out, " {:<7}", format!("{:02x}", i * 16));
        }
        prout::hex_lines(out, "", chunk);
    }
}

/// sg_persist's names for the 16 type codes.
fn type_name(code: u8) -> String {
    match code {
        0 | 2 | 4 => format!("obsolete [{code}]"),
        1 | 3 | 5..=8 => cdb::pr_type_name(code).to_owned(),
        _ => format!("obsolete [{code:#x}]"),
    }
}

fn scope_and_type(out: &mut String, indent: &str, scope: u8, pr_type: u8) {
    if scope == 0 {
        let _ = write!(out, "{indent}scope: LU_SCOPE, ");
    } else {
        let _ = write!(out, "{indent}scope: {scope} ");
    }
    let _ = writeln!(out, " type: {}", type_name(pr_type));
}

fn category_str(cat: u8) -> String {
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

fn prin_sa_name(a: PrInAction) -> &'static str {
    match a {
        PrInAction::ReadKeys => "Read keys",
        PrInAction::ReadReservation => "Read reservation",
        PrInAction::ReportCapabilities => "Report capabilities",
        PrInAction::ReadFullStatus => "Read full status",
    }
}

fn prout_sa_name(a: PrOutAction) -> &'static str {
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

/// Report a non-GOOD status on stderr, sg_persist style; returns the exit status.
fn report_failure(what: &str, sa: &str, r: &Response) -> u8 {
    let cat = r.category();
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
        c => category_str(c),
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
        Error::Scsi { status, sense } => client::category(*status, sense),
        _ => EXIT_CONNECTION,
    }
}

fn syntax(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(sg_exit::SYNTAX_ERROR)
}

/// Format PR In data the way sg_persist does. Err(exit status) for malformed data.
fn format_prin(
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
                    out.push_str(&prout::describe("      ", &d.transport_id));
                }
            }
        }
        PrInAction::ReportCapabilities => unreachable!("handled above"),
    }
    Ok(out)
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
                prout_sa_name(a)
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
            eprint!("{}", prout::describe("      ", &t.encode()));
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
                eprintln!("    Persistent reservation in cdb: {}", spaced_hex(&cdb));
            }
            match client.execute(dev.as_fd(), &cdb, &[], usize::from(alloc)) {
                Err(e) => client_failure(&e),
                Ok(r) if !r.is_good() => report_failure("PR in", prin_sa_name(action), &r),
                Ok(r) => match format_prin(action, &r.data, cli.hex, alloc) {
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
                eprintln!("    Persistent reservation out cdb: {}", spaced_hex(&cdb));
                eprintln!("    Persistent reservation out parameters:");
                let mut s = String::new();
                hex_dump(&mut s, &params, true);
                eprint!("{s}");
            }
            match client.execute(dev.as_fd(), &cdb, &params, 0) {
                Err(e) => client_failure(&e),
                Ok(r) if !r.is_good() => report_failure("PR out", prout_sa_name(action), &r),
                Ok(_) => {
                    if cli.verbose > 0 {
                        eprintln!("PR out: command ({}) successful", prout_sa_name(action));
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

fn spaced_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prhelper::scsi::prin::{Reservation, StatusDescriptor};
    use prhelper::scsi::prout::TransportId;

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn read_keys_output() {
        let d = ReadKeys {
            generation: 3,
            keys: vec![1, 2],
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadKeys, &d, 0, 8192).unwrap(),
            "  PR generation=0x3, 2 registered reservation keys follow:\n    0x1\n    0x2\n"
        );
        let d = ReadKeys {
            generation: 0,
            keys: vec![0xabc],
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadKeys, &d, 0, 8192).unwrap(),
            "  PR generation=0x0, 1 registered reservation key follows:\n    0xabc\n"
        );
        let d = ReadKeys {
            generation: 0,
            keys: vec![],
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadKeys, &d, 0, 8192).unwrap(),
            "  PR generation=0x0, there are NO registered reservation keys\n"
        );
    }

    #[test]
    fn read_reservation_output() {
        let d = ReadReservation {
            generation: 5,
            reservation: Some(Reservation {
                key: 0x1,
                scope: 0,
                pr_type: 3,
            }),
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadReservation, &d, 0, 8192).unwrap(),
            "  PR generation=0x5, Reservation follows:\n    Key=0x1\n    scope: LU_SCOPE,  type: Exclusive Access\n"
        );
        let d = ReadReservation {
            generation: 5,
            reservation: None,
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadReservation, &d, 0, 8192).unwrap(),
            "  PR generation=0x5, there is NO reservation held\n"
        );
        let d = ReadReservation {
            generation: 5,
            reservation: Some(Reservation {
                key: 2,
                scope: 1,
                pr_type: 0xa,
            }),
        }
        .encode();
        assert!(format_prin(PrInAction::ReadReservation, &d, 0, 8192)
            .unwrap()
            .ends_with("    scope: 1  type: obsolete [0xa]\n"));
    }

    #[test]
    fn capabilities_output() {
        let c = Capabilities {
            length: 8,
            crh: true,
            sip_c: true,
            atp_c: true,
            ptpl_c: true,
            tmv: true,
            allow_commands: 1,
            type_mask: prin::type_mask::ALL,
            ..Default::default()
        };
        let text = format_prin(PrInAction::ReportCapabilities, &c.encode(), 0, 8192).unwrap();
        assert_eq!(
            text,
            "Report capabilities response:\n  Replace Lost Reservation Capable(RLR_C): 0\n  Compatible Reservation Handling(CRH): 1\n  Specify Initiator Ports Capable(SIP_C): 1\n  All Target Ports Capable(ATP_C): 1\n  Persist Through Power Loss Capable(PTPL_C): 1\n  Type Mask Valid(TMV): 1\n  Allow Commands: 1\n  Persist Through Power Loss Active(PTPL_A): 0\n    Support indicated in Type mask:\n      Write Exclusive, all registrants: 1\n      Exclusive Access, registrants only: 1\n      Write Exclusive, registrants only: 1\n      Exclusive Access: 1\n      Write Exclusive: 1\n      Exclusive Access, all registrants: 1\n"
        );
        assert_eq!(
            format_prin(PrInAction::ReportCapabilities, &c.encode(), 1, 8192).unwrap(),
            " 00     00 08 1d 90 ea 01 00 00\n"
        );
        let bad = Capabilities { length: 12, ..c }.encode();
        assert_eq!(
            format_prin(PrInAction::ReportCapabilities, &bad, 0, 8192)
                .unwrap_err()
                .1,
            97
        );
        assert_eq!(
            format_prin(PrInAction::ReportCapabilities, &[0, 8], 0, 8192)
                .unwrap_err()
                .1,
            97
        );
    }

    #[test]
    fn full_status_output() {
        let fs = FullStatus {
            generation: 2,
            descriptors: vec![
                StatusDescriptor {
                    key: 0x1,
                    r_holder: true,
                    pr_type: 1,
                    relative_target_port: 1,
                    transport_id: TransportId::Sas {
                        address: 0x5001405000000001,
                    }
                    .encode(),
                    ..Default::default()
                },
                StatusDescriptor {
                    key: 0x2,
                    all_tg_pt: true,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            format_prin(PrInAction::ReadFullStatus, &fs.encode(), 0, 8192).unwrap(),
            "  PR generation=0x2\n    Key=0x1\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive\n      Transport Id of initiator:\n        SAS address: 0x5001405000000001\n    Key=0x2\n      All target ports bit set\n      not reservation holder\n"
        );
        let empty = FullStatus {
            generation: 0,
            descriptors: vec![],
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadFullStatus, &empty, 0, 8192).unwrap(),
            "  PR generation=0x0\n  No full status descriptors\n"
        );
    }

    #[test]
    fn hex_outputs() {
        let d = ReadKeys {
            generation: 4,
            keys: vec![1, 2],
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadKeys, &d, 1, 8192).unwrap(),
            "  PR generation=0x4, Additional length=16\n 00     00 00 00 00 00 00 00 01  00 00 00 00 00 00 00 02\n"
        );
        assert_eq!(
            format_prin(PrInAction::ReadKeys, &d, 2, 8192).unwrap(),
            " 00     00 00 00 04 00 00 00 10  00 00 00 00 00 00 00 01\n 10     00 00 00 00 00 00 00 02\n"
        );
        assert_eq!(
            format_prin(PrInAction::ReadKeys, &d, 3, 8192).unwrap(),
            "00 00 00 04 00 00 00 10  00 00 00 00 00 00 00 01\n00 00 00 00 00 00 00 02\n"
        );
        assert!(format_prin(PrInAction::ReadKeys, &d[..16], 1, 16)
            .unwrap()
            .contains("Additional length too large=16, truncate"));
        let mut s = String::new();
        hex_dump(&mut s, &[0u8; 0x110], true);
        assert!(
            s.ends_with(" 100    00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00\n"),
            "{s}"
        );
    }

    #[test]
    fn short_data_is_malformed_not_a_panic() {
        for a in PrInAction::ALL {
            for n in 0..8 {
                let r = format_prin(a, &[0u8; 8][..n], 0, 8192);
                assert_eq!(r.unwrap_err().1, 97);
            }
        }
        // Declared reservation but cut short.
        let d = ReadReservation {
            generation: 5,
            reservation: Some(Reservation {
                key: 1,
                scope: 0,
                pr_type: 3,
            }),
        }
        .encode();
        assert_eq!(
            format_prin(PrInAction::ReadReservation, &d[..20], 0, 20)
                .unwrap_err()
                .1,
            97
        );
    }
}
