// SPDX-License-Identifier: MIT OR Apache-2.0
//! prhelper-client: run one SCSI PERSISTENT RESERVE IN/OUT command through a pr-helper
//! socket (qemu-pr-helper or prhelper), with sg_persist's options and output.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use prhelper::client::{Client, Error, Response};
use prhelper::client_cli::{Cli, EXIT_CONNECTION, EXIT_HELPER_CLOSED};
use prhelper::proto::wire::MAX_DATA;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prout::{BasicParams, RegisterMoveParams};
use prhelper::sg3::{self, sg_exit};

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
}
