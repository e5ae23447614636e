// SPDX-License-Identifier: MIT OR Apache-2.0
//! prhelper in the lab: starting our daemon the way the lab cases want it
//! (default seccomp filter, `-v`), talking to any helper through
//! `prhelper::client`, and small checks on what came back.

use crate::helper::Helper;
use crate::util::{indent, run, target_bin_dir, Output};
use crate::{bail, Result};
use prhelper::client::{Client, Response};
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prout::{BasicParams, TransportId};
use prhelper::scsi::sense::SenseCode;
use prhelper::scsi::Status;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Our daemon, `target/<profile>/prhelper`.
pub fn prhelper_bin() -> PathBuf {
    target_bin_dir().join("prhelper")
}

/// Our CLI client, `target/<profile>/prhelper-client`.
pub fn client_bin() -> PathBuf {
    target_bin_dir().join("prhelper-client")
}

/// Start prhelper on `socket` with its default seccomp filter and `-v`
/// (one log line per command), plus `extra`.
pub fn start_prhelper(socket: &Path, extra: &[&str]) -> Result<Helper> {
    let mut args = vec!["-v"];
    args.extend_from_slice(extra);
    Helper::start(&prhelper_bin(), socket, &args)
}

/// Append the helper's log to an error message (for `map_err`).
pub fn with_log(helper: &Helper) -> impl Fn(String) -> String + '_ {
    move |e| {
        format!(
            "{e}\n  {} log:\n{}",
            helper_name(helper),
            indent(&helper.log_text())
        )
    }
}

fn helper_name(helper: &Helper) -> String {
    format!("helper (pid {})", helper.pid())
}

/// Open a device read-write (PR OUT needs a writable fd).
pub fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Open a device read-only.
pub fn open_ro(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Connect to a helper with 60 s timeouts (a hung helper fails the case
/// instead of hanging the lab).
pub fn connect(socket: &Path) -> Result<Client> {
    let t = Some(Duration::from_secs(60));
    Client::connect_with_timeouts(socket, t, t)
        .map_err(|e| format!("connect {}: {e}", socket.display()))
}

/// Number of open fds of process `pid`.
pub fn fd_count(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {dir}: {e}"))?
        .count())
}

/// The open fds of process `pid` with their link targets (for messages).
pub fn fd_list(pid: u32) -> String {
    let dir = format!("/proc/{pid}/fd");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.join(", ")
}

/// A PR IN request.
pub fn pr_in(c: &mut Client, dev: &File, action: PrInAction, alloc_len: u16) -> Result<Response> {
    c.execute(
        dev.as_fd(),
        &cdb::pr_in(action, alloc_len),
        &[],
        usize::from(alloc_len),
    )
    .map_err(|e| format!("PR IN {}: {e}", action.name()))
}

/// A PR OUT request with a basic parameter list; returns the reply whatever
/// its status.
pub fn pr_out(
    c: &mut Client,
    dev: &File,
    action: PrOutAction,
    pr_type: u8,
    params: &BasicParams,
) -> Result<Response> {
    let data = params.encode();
    let cdb = cdb::pr_out(action, 0, pr_type, data.len() as u32);
    c.execute(dev.as_fd(), &cdb, &data, 0)
        .map_err(|e| format!("PR OUT {}: {e}", action.name()))
}

/// Basic parameters with a reservation key and a service action key.
pub fn keys(key: u64, sa_key: u64) -> BasicParams {
    BasicParams {
        key,
        sa_key,
        ..Default::default()
    }
}

/// A REGISTER parameter list with service action key `sa_key` and the given flags.
pub fn register_flags(
    sa_key: u64,
    aptpl: bool,
    all_tg_pt: bool,
    transport_ids: Option<Vec<TransportId>>,
) -> Vec<u8> {
    BasicParams {
        key: 0,
        sa_key,
        aptpl,
        all_tg_pt,
        transport_ids,
    }
    .encode()
}

/// The SAS TransportID of a tcm_loop initiator WWN (`naa.5001405…`).
pub fn sas_tid(initiator: &str) -> Result<TransportId> {
    let hex = initiator.trim_start_matches("naa.");
    let address =
        u64::from_str_radix(hex, 16).map_err(|e| format!("bad initiator WWN {initiator}: {e}"))?;
    Ok(TransportId::Sas { address })
}

/// Status and sense code of a reply, e.g. "CHECK CONDITION 05/20/00", "GOOD".
pub fn outcome(r: &Response) -> String {
    match r.sense.code() {
        Some(c) if r.status == Status::CHECK_CONDITION => {
            format!("{} {:02x}/{:02x}/{:02x}", r.status, c.key, c.asc, c.ascq)
        }
        _ => r.status.to_string(),
    }
}

/// Fail unless the reply has `status` (and, for CHECK CONDITION, `sense`).
pub fn expect_reply(
    what: &str,
    r: &Response,
    status: Status,
    sense: Option<SenseCode>,
) -> Result<()> {
    let ok = r.status == status && (sense.is_none() || r.sense.code() == sense);
    if !ok {
        let want = match sense {
            Some(c) => format!("{status} {:02x}/{:02x}/{:02x}", c.key, c.asc, c.ascq),
            None => status.to_string(),
        };
        bail!("{what}: expected {want}, got {}", outcome(r));
    }
    Ok(())
}

/// Fail unless `r` is CHECK CONDITION with sense `code`.
pub fn expect_check(what: &str, r: &Response, code: SenseCode) -> Result<()> {
    expect_reply(what, r, Status::CHECK_CONDITION, Some(code))
}

/// Fail unless `r` is GOOD.
pub fn expect_good(what: &str, r: &Response) -> Result<()> {
    expect_reply(what, r, Status::GOOD, None)
}

/// How many sense bytes a sense buffer holds (fixed or descriptor format:
/// 8 + additional length), at most 96; 0 for no valid sense.
pub fn sense_len(sense: &[u8]) -> usize {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70..=0x73) if sense.len() > 7 => (8 + usize::from(sense[7])).min(sense.len()),
        _ => 0,
    }
}

/// Run `prhelper-client -k SOCKET ARGS DEV`.
pub fn client_cli(socket: &Path, args: &[&str], dev: &Path) -> Result<Output> {
    let mut all: Vec<String> = vec!["-k".into(), socket.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.push(dev.display().to_string());
    run(&client_bin().display().to_string(), &all)
}
