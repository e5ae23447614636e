// SPDX-License-Identifier: MIT OR Apache-2.0
//! `multipathd_restart`: multipathd restarts while prhelper runs, with `-u` and without
//! (issue 13). multipathd accepts PR commands only on connections opened by uid 0, so
//! prhelper `-u nobody` reconnects through its connector process (see
//! src/daemon/connector.rs); prhelper as root reconnects itself.
//!
//! Two prhelpers on one multipathd-managed map (legs 0 and 1 of a 3-leg LU; leg 2 is
//! LIO's observer): U runs `-u nobody -g disk`, R as root. Checked:
//! - U's connector is its only child: uid 0, no capabilities in any set, no_new_privs,
//!   seccomp filter mode, only stdio (on /dev/null) and its socket open; R has none; U
//!   runs as nobody;
//! - REGISTER through U: multipathd's key (getprkey) follows; a `setprkey` over a
//!   connection opened by nobody is refused (the control); multipathd restarts; a key
//!   change through U reaches the new multipathd (getprkey shows the new key: only a
//!   uid-0 connection can set it, the prkeys file still held the old one); a key change
//!   through R (its connection was lost too) also does; a second restart, then REGISTER
//!   AND IGNORE through U, then unregister (getprkey none); LIO shows each key on both legs;
//! - neither log says multipathd refused or was unreachable; U logged its reconnections
//!   through the connector;
//! - stopping U ends the connector.

use prhelper::client::Client;
use prhelper::scsi::cdb::PrOutAction;
use prhelper_lab::helper::Helper;
use prhelper_lab::mpath::{self, legs_with_key, lio_view, Multipathd};
use prhelper_lab::prh::{self, expect_good, keys, open_rw, with_log};
use prhelper_lab::util::{run, scratch_dir, wait_for};
use prhelper_lab::{ensure, Result};
use std::fs::File;
use std::time::{Duration, Instant};

const OBSERVER: usize = 2;

/// Children of `pid` (from /proc/*/stat).
fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // "pid (comm) state ppid ...": the comm may hold spaces; split after ')'.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

/// A field of /proc/PID/status, e.g. "Uid" → "0\t0\t0\t0".
fn status_field(pid: u32, name: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
}

fn register(
    what: &str,
    c: &mut Client,
    dev: &File,
    helper: &Helper,
    action: PrOutAction,
    key: u64,
    sa_key: u64,
) -> Result<()> {
    let r = prh::pr_out(c, dev, action, 0, &keys(key, sa_key))?;
    println!("  {what}: {}", prh::outcome(&r));
    expect_good(what, &r).map_err(with_log(helper))
}

fn expect_key(
    mpd: &Multipathd,
    lun: &prhelper_lab::lio::SharedLun,
    key: Option<u64>,
    when: &str,
) -> Result<()> {
    let got = mpd.getprkey()?;
    ensure!(
        got == key,
        "{when}: multipathd's key {got:x?}, want {key:x?}\nmultipathd log:\n{}",
        mpd.log_tail(20)
    );
    let regs = lio_view(lun, OBSERVER)?;
    let legs = legs_with_key(&regs, lun, key.unwrap_or(0));
    let want: &[usize] = if key.is_some() { &[0, 1] } else { &[] };
    ensure!(
        key.is_none() || legs == want,
        "{when}: key {key:x?} on legs {legs:?}, want {want:?}"
    );
    Ok(())
}

pub fn multipathd_restart() -> Result<()> {
    let t_case = Instant::now();
    let lun = mpath::shared_lun("mpdr", 32 << 20, 3)?;
    let mut mpd = Multipathd::start(&lun, &[0, 1])?;
    let scratch = scratch_dir("multipathd-restart")?;
    // Both start after multipathd, so that they connect at start-up.
    let u = prh::start_prhelper(&scratch.join("u.sock"), &["-u", "nobody", "-g", "disk"])?;
    let r = prh::start_prhelper(&scratch.join("r.sock"), &[])?;

    // The connector: U's only child, uid 0 and nothing else.
    let kids = children(u.pid());
    ensure!(
        kids.len() == 1,
        "prhelper -u has children {kids:?}, want one connector"
    );
    let conn = kids[0];
    for (field, want) in [
        ("Uid", "0\t0\t0\t0"),
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        let got = status_field(conn, field)?;
        ensure!(got == want, "connector {field}: {got:?}, want {want:?}");
    }
    let fds = prh::fd_list(conn);
    ensure!(
        prh::fd_count(conn)? == 4 && fds.matches("/dev/null").count() == 3,
        "connector fds: {fds}"
    );
    ensure!(
        status_field(u.pid(), "Uid")? == "65534\t65534\t65534\t65534",
        "prhelper -u nobody: Uid {}",
        status_field(u.pid(), "Uid")?
    );
    ensure!(
        children(r.pid()).is_empty(),
        "prhelper as root has children {:?}",
        children(r.pid())
    );
    println!("  connector pid {conn}: uid 0, no capabilities, no_new_privs, seccomp; fds {fds}");

    let dev = open_rw(mpd.dev())?;
    let mut cu = prh::connect(u.socket())?;
    let mut cr = prh::connect(r.socket())?;
    use PrOutAction::*;
    const K1: u64 = 0x71;
    const K2: u64 = 0x72;
    const K3: u64 = 0x73;
    const K4: u64 = 0x74;
    register("U: REGISTER 0 -> K1", &mut cu, &dev, &u, Register, 0, K1)?;
    expect_key(&mpd, &lun, Some(K1), "before the restart")?;

    // The control: a connection opened by nobody is refused (so a key reaching the
    // restarted multipathd through U can only have come over a uid-0 connection).
    let probe = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_UNIX)\n\
         s.connect('\\0/org/kernel/linux/storage/multipathd')\n\
         c=b'setprkey map {} key 0x99\\0'\n\
         s.sendall(struct.pack('N',len(c))+c)\n\
         n=struct.unpack('N',s.recv(8))[0]\n\
         print(s.recv(n).decode(errors='replace'))",
        mpd.wwid()
    );
    let o = run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &probe,
        ],
    )?;
    ensure!(
        o.status == 0 && o.text().contains("permission deny") && mpd.getprkey()? == Some(K1),
        "multipathd did not refuse setprkey from nobody: {}",
        o.describe()
    );
    println!(
        "  setprkey over a connection opened by nobody: {:?}",
        o.stdout.trim_end_matches(&['\0', '\n', ' '][..])
    );

    let took = mpd.restart()?;
    println!(
        "  multipathd restarted (pid {:?}) in {:.1}s",
        mpd.pid(),
        took.as_secs_f64()
    );
    ensure!(
        mpd.getprkey()? == Some(K1),
        "the restarted multipathd has key {:x?} (prkeys file: {})",
        mpd.getprkey()?,
        mpd.prkeys_file()
    );
    register("U: REGISTER K1 -> K2", &mut cu, &dev, &u, Register, K1, K2)?;
    expect_key(&mpd, &lun, Some(K2), "U's key change after the restart")?;
    register("R: REGISTER K2 -> K3", &mut cr, &dev, &r, Register, K2, K3)?;
    expect_key(&mpd, &lun, Some(K3), "R's key change after the restart")?;

    let took = mpd.restart()?;
    println!("  multipathd restarted again in {:.1}s", took.as_secs_f64());
    register(
        "U: REGISTER AND IGNORE -> K4",
        &mut cu,
        &dev,
        &u,
        RegisterAndIgnore,
        0,
        K4,
    )?;
    expect_key(
        &mpd,
        &lun,
        Some(K4),
        "U's key change after the second restart",
    )?;
    register("U: REGISTER K4 -> 0", &mut cu, &dev, &u, Register, K4, 0)?;
    expect_key(&mpd, &lun, None, "after unregister")?;
    ensure!(
        !mpd.getprstatus()?,
        "multipathd prstatus still set after unregister"
    );

    for (name, h) in [("U", &u), ("R", &r)] {
        let log = h.log_text();
        for bad in [
            "multipathd not reachable",
            "multipathd refused",
            "cannot start the multipathd connector",
        ] {
            ensure!(!log.contains(bad), "{name}'s log says {bad:?}:\n{log}");
        }
        let n = log.matches("multipathd: reconnecting").count();
        ensure!(
            n == if name == "U" { 2 } else { 1 },
            "{name} reconnected {n} times:\n{log}"
        );
    }
    ensure!(
        u.log_text().contains("multipathd connector started"),
        "U's log does not show the connector:\n{}",
        u.log_text()
    );
    drop((cu, cr));
    u.stop()?;
    r.stop()?;
    wait_for(
        "the connector to exit with its daemon",
        Duration::from_secs(10),
        || {
            let gone = status_field(conn, "State").map_or(true, |s| s.starts_with('Z'));
            Ok(gone.then_some(()))
        },
    )?;
    drop(dev);
    mpd.stop()?;
    println!("  case took {:.1}s", t_case.elapsed().as_secs_f64());
    Ok(())
}
