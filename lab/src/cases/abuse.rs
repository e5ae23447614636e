// SPDX-License-Identifier: MIT OR Apache-2.0
//! Misbehaving clients and a vanishing device against prhelper (default
//! seccomp filter on), while another client keeps using a healthy LUN: every
//! abuse gets its documented answer (connection closed, or a specific CHECK
//! CONDITION), the healthy client is never disturbed, the daemon survives,
//! and its fd count is back to where it was at the end.
//!
//! Also checks, on the real device, the SG_IO status mapping that the README
//! claims: an offline tcm_loop leg returns GOOD with host status
//! DID_TRANSPORT_DISRUPTED, which prhelper must turn into CHECK CONDITION
//! ABORTED COMMAND 29/07 (I_T NEXUS LOSS), not GOOD.
//!
//! The LUN that goes away: LIO backstores cannot be disabled once enabled,
//! so the device first goes offline (`transport_status`), comes back, and is
//! then removed outright (the LUN unmapped, the target and the backstore
//! deleted) while a client still holds its fd and keeps sending commands.

use prhelper::client::raw::RawConn;
use prhelper::client::Client;
use prhelper::dev::verdict::host;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::sense::SenseCode;
use prhelper::scsi::Status;
use prhelper::sys::sgio::{self, Data};
use prhelper_lab::helper::Helper;
use prhelper_lab::lio::SharedLun;
use prhelper_lab::prh::{
    self, expect_check, expect_good, keys, open_ro, open_rw, outcome, with_log,
};
use prhelper_lab::util::{scratch_dir, wait_for};
use prhelper_lab::{bail, ensure, Result};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HEALTHY_KEY: u64 = 0x600d;

pub fn abuse() -> Result<()> {
    let scratch = scratch_dir("abuse")?;
    let healthy = SharedLun::new("abuse-ok", 64 << 20, 1)?;
    let victim = SharedLun::new("abuse-victim", 64 << 20, 1)?;
    let helper = prh::start_prhelper(&scratch.join("pr.sock"), &[])?;
    let result = run(&helper, &healthy, victim, &scratch);
    let mut helper = helper;
    result.map_err(with_log(&helper))?;
    ensure!(helper.is_running(), "prhelper died:\n{}", helper.log_text());
    helper.stop()?;
    Ok(())
}

/// A RawConn that has done the handshake.
fn raw(sock: &Path) -> Result<RawConn> {
    let mut c = RawConn::connect(sock).map_err(|e| format!("connect: {e}"))?;
    c.set_timeouts(Some(Duration::from_secs(30)), Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    c.handshake().map_err(|e| format!("handshake: {e}"))?;
    Ok(c)
}

fn cdb16(cdb: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..cdb.len()].copy_from_slice(cdb);
    b
}

/// Send `cdb` (padded to 16) with `fds`, then `extra`; the helper must close
/// the connection without replying.
fn expect_closed(
    sock: &Path,
    what: &str,
    cdb: &[u8],
    fds: &[BorrowedFd<'_>],
    extra: &[u8],
) -> Result<()> {
    let mut c = raw(sock)?;
    c.send_all_with_fds(&cdb16(cdb), fds)
        .map_err(|e| format!("{what}: send: {e}"))?;
    if !extra.is_empty() {
        // The helper may already have closed; a failed send is fine then.
        let _ = c.send_all(extra);
    }
    match c.wait_closed(Duration::from_secs(10)) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("{what}: connection still open after 10 s"),
        Err(e) => bail!("{what}: expected the connection to close: {e}"),
    }
}

/// One PR IN READ KEYS on the healthy LUN over a fresh connection.
fn healthy_check(sock: &Path, fd: &File, step: &str) -> Result<()> {
    let mut c = prh::connect(sock)?;
    let k = c
        .read_keys(fd.as_fd())
        .map_err(|e| format!("after {step}: healthy LUN, new client: {e}"))?;
    ensure!(
        k.keys == [HEALTHY_KEY],
        "after {step}: healthy LUN keys {:x?}",
        k.keys
    );
    Ok(())
}

fn run(helper: &Helper, healthy: &SharedLun, victim: SharedLun, scratch: &Path) -> Result<()> {
    let sock = helper.socket();
    let pid = helper.pid();
    let h_disk = &healthy.device(0).disk;
    let h_fd = open_rw(h_disk)?;
    let mut setup = prh::connect(sock)?;
    setup
        .pr_out(
            h_fd.as_fd(),
            PrOutAction::Register,
            None,
            &keys(0, HEALTHY_KEY).encode(),
        )
        .map_err(|e| format!("REGISTER on the healthy LUN: {e}"))?;
    drop(setup);
    // Everything below must leave the daemon with as many fds as now.
    std::thread::sleep(Duration::from_millis(300));
    let baseline = prh::fd_count(pid)?;
    println!("  abuse: prhelper has {baseline} fds before the abuse");

    // A client that keeps using the healthy LUN during everything below.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failure = Arc::new(Mutex::new(None::<String>));
    let mut watcher: Client = prh::connect(sock)?;
    let watch_fd = open_ro(h_disk)?;
    let thread = {
        let (stop, served, failure) = (stop.clone(), served.clone(), failure.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match watcher.read_keys(watch_fd.as_fd()) {
                    Ok(k) if k.keys == [HEALTHY_KEY] => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        *failure.lock().unwrap() = Some(format!("{other:?}"));
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let result = abuses(sock, &h_fd, victim, scratch);
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    result?;
    if let Some(f) = failure.lock().unwrap().take() {
        bail!("the watcher on the healthy LUN failed: {f}");
    }
    let n = served.load(Ordering::Relaxed);
    ensure!(n > 10, "the watcher was served only {n} times");
    println!("  abuse: watcher on the healthy LUN served {n} commands throughout");

    // Every connection is closed now (the watcher's with its thread); allow
    // the server a moment to notice.
    let want = baseline;
    let got = wait_for(
        "prhelper's fd count to settle",
        Duration::from_secs(10),
        || {
            let n = prh::fd_count(pid)?;
            Ok((n == want).then_some(n))
        },
    )
    .map_err(|e| {
        format!(
            "{e}: {} fds, expected {want}: {}",
            prh::fd_count(pid).unwrap_or(0),
            prh::fd_list(pid)
        )
    })?;
    println!("  abuse: prhelper's fd count back to {got}");
    Ok(())
}

fn abuses(sock: &Path, h_fd: &File, victim: SharedLun, scratch: &Path) -> Result<()> {
    let fd = h_fd.as_fd();
    let read_keys = cdb::pr_in(PrInAction::ReadKeys, 8192);
    let register24 = cdb::pr_out(PrOutAction::Register, 0, 0, 24);

    // Protocol violations: the helper closes the connection.
    expect_closed(sock, "no fd", &read_keys, &[], &[])?;
    healthy_check(sock, h_fd, "no fd")?;
    expect_closed(sock, "two fds", &read_keys, &[fd, fd], &[])?;
    healthy_check(sock, h_fd, "two fds")?;
    expect_closed(sock, "INQUIRY opcode", &[0x12, 0, 0, 0, 96, 0], &[fd], &[])?;
    expect_closed(sock, "TEST UNIT READY opcode", &[0; 6], &[fd], &[])?;
    healthy_check(sock, h_fd, "wrong opcodes")?;
    expect_closed(
        sock,
        "PR IN allocation length 8193",
        &cdb::pr_in(PrInAction::ReadKeys, 8193),
        &[fd],
        &[],
    )?;
    expect_closed(
        sock,
        "PR IN allocation length 65535",
        &cdb::pr_in(PrInAction::ReadKeys, 0xffff),
        &[fd],
        &[],
    )?;
    expect_closed(
        sock,
        "PR OUT parameter list length 8193",
        &cdb::pr_out(PrOutAction::Register, 0, 0, 8193),
        &[fd],
        &[0; 64],
    )?;
    healthy_check(sock, h_fd, "oversize lengths")?;
    expect_closed(sock, "fd on the parameter bytes", &register24, &[], &[])?;

    // Disconnects mid-request: before the handshake, mid-CDB, mid-parameter
    // list, and before reading the reply.
    drop(RawConn::connect(sock).map_err(|e| e.to_string())?);
    {
        let mut c = RawConn::connect(sock).map_err(|e| e.to_string())?;
        c.read_features().map_err(|e| e.to_string())?;
    }
    {
        let mut c = raw(sock)?;
        c.send_all_with_fds(&read_keys[..5], &[fd])
            .map_err(|e| e.to_string())?;
    }
    {
        let mut c = raw(sock)?;
        c.send_all_with_fds(&cdb16(&register24), &[fd])
            .map_err(|e| e.to_string())?;
        c.send_all(&[0; 10]).map_err(|e| e.to_string())?;
    }
    {
        let mut c = raw(sock)?;
        c.send_all_with_fds(&cdb16(&read_keys), &[fd])
            .map_err(|e| e.to_string())?;
    }
    healthy_check(sock, h_fd, "disconnects mid-request")?;

    // Replies with CHECK CONDITION, and the connection stays usable.
    let mut c = prh::connect(sock)?;
    let ro = open_ro(&victim.device(0).disk)?;
    let r = prh::pr_out(&mut c, &ro, PrOutAction::Register, 0, &keys(0, 0x99))?;
    expect_check("PR OUT on a read-only fd", &r, SenseCode::INVALID_OPCODE)?;
    let file_path = scratch.join("regular-file");
    std::fs::write(&file_path, [0u8; 4096]).map_err(|e| e.to_string())?;
    let file = open_rw(&file_path)?;
    let r = prh::pr_in(&mut c, &file, PrInAction::ReadKeys, 8192)?;
    expect_check("PR IN on a regular file", &r, SenseCode::IO_ERROR)?;
    let r = prh::pr_out(&mut c, &file, PrOutAction::Register, 0, &keys(0, 0x99))?;
    expect_check("PR OUT on a regular file", &r, SenseCode::IO_ERROR)?;
    let null = open_rw(Path::new("/dev/null"))?;
    let r = prh::pr_in(&mut c, &null, PrInAction::ReadKeys, 8192)?;
    expect_check("PR IN on /dev/null", &r, SenseCode::IO_ERROR)?;
    let r = prh::pr_in(&mut c, h_fd, PrInAction::ReadKeys, 8192)?;
    expect_good("PR IN on the healthy LUN, same connection", &r)?;
    healthy_check(sock, h_fd, "non-device fds")?;

    // The victim LUN: offline, back, then removed while we hold its fd.
    let v_fd = open_rw(&victim.device(0).disk)?;
    let r = prh::pr_out(&mut c, &v_fd, PrOutAction::Register, 0, &keys(0, 0x77))?;
    expect_good("REGISTER on the victim LUN", &r)?;
    victim.targets[0].set_online(false)?;
    // The kernel's view, directly: GOOD status, DID_TRANSPORT_DISRUPTED.
    let mut sense = [0u8; 96];
    let mut buf = vec![0u8; 8192];
    let direct = sgio::sg_io(
        v_fd.as_fd(),
        &cdb::pr_in(PrInAction::ReadKeys, 8192),
        Data::FromDevice(&mut buf),
        &mut sense,
        30_000,
    );
    ensure!(
        direct.outcome.errno.is_none()
            && direct.outcome.status == 0
            && direct.outcome.host_status == host::TRANSPORT_DISRUPTED,
        "direct SG_IO on the offline leg: expected status GOOD with host status DID_TRANSPORT_DISRUPTED (0x0e), got {:?}",
        direct.outcome
    );
    println!(
        "  abuse: direct SG_IO on the offline leg: {:?}",
        direct.outcome
    );
    let r = prh::pr_in(&mut c, &v_fd, PrInAction::ReadKeys, 8192)?;
    expect_check(
        "PR IN through prhelper on the offline leg",
        &r,
        SenseCode::I_T_NEXUS_LOSS,
    )?;
    let r = prh::pr_out(&mut c, &v_fd, PrOutAction::Reserve, 1, &keys(0x77, 0))?;
    expect_check(
        "PR OUT through prhelper on the offline leg",
        &r,
        SenseCode::I_T_NEXUS_LOSS,
    )?;
    healthy_check(sock, h_fd, "offline leg")?;
    victim.targets[0].set_online(true)?;
    // Back: a unit attention (29/07) first, then the key is still there.
    let mut seen = Vec::new();
    let keys_back = loop {
        let r = prh::pr_in(&mut c, &v_fd, PrInAction::ReadKeys, 8192)?;
        seen.push(outcome(&r));
        if r.is_good() {
            break prhelper::scsi::prin::ReadKeys::decode(&r.data).map_err(|e| e.to_string())?;
        }
        ensure!(
            r.status == Status::CHECK_CONDITION
                && r.sense.code().is_some_and(|s| s.key == 6)
                && seen.len() < 4,
            "PR IN on the leg back online: {seen:?}"
        );
    };
    println!("  abuse: leg back online: {seen:?}");
    ensure!(
        keys_back.keys == [0x77],
        "victim keys after the leg came back: {:x?}",
        keys_back.keys
    );

    // Now the LUN goes away for good, fd still open.
    let SharedLun {
        mut targets,
        backstore,
    } = victim;
    targets.pop().unwrap().remove()?;
    let r = prh::pr_in(&mut c, &v_fd, PrInAction::ReadKeys, 8192)?;
    println!("  abuse: PR IN on the removed LUN: {}", outcome(&r));
    ensure!(!r.is_good(), "PR IN on a removed LUN returned GOOD");
    healthy_check(sock, h_fd, "LUN removed")?;
    backstore.remove()?;
    let r = prh::pr_out(&mut c, &v_fd, PrOutAction::Register, 0, &keys(0x77, 0))?;
    println!(
        "  abuse: PR OUT after the backstore went too: {}",
        outcome(&r)
    );
    ensure!(!r.is_good(), "PR OUT on a removed LUN returned GOOD");
    let r = prh::pr_in(&mut c, h_fd, PrInAction::ReadKeys, 8192)?;
    expect_good("healthy LUN on the same connection at the end", &r)?;
    healthy_check(sock, h_fd, "backstore removed")?;
    Ok(())
}
