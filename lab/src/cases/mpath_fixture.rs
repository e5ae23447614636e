// SPDX-License-Identifier: MIT OR Apache-2.0
//! The dm-multipath building blocks ([`prhelper_lab::mpath`]) against the
//! real parts: a `dmsetup` map, and a map made by Debian's multipathd 0.9.4
//! driven with its `mpathpersist`. LIO's own view comes from a third
//! initiator (leg 2) outside the maps.

use prhelper_lab::lio::SharedLun;
use prhelper_lab::mpath::{self, legs_with_key, lio_view, persist, Map, Multipathd, Registration};
use prhelper_lab::sg::{self, EXIT_UNIT_ATTENTION};
use prhelper_lab::util::{read_attr, run, wait_for, Output};
use prhelper_lab::{bail, ensure, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// (a) SG_IO through a dmsetup map reaches one path only; dm's fail_path
/// and reinstate_path steer it. (b) multipathd + mpathpersist register every
/// path, record the key, and re-register a path that lost it while down.
pub fn mpath_fixture() -> Result<()> {
    let t = Instant::now();
    dmsetup_map()?;
    let a = t.elapsed();
    let t = Instant::now();
    multipathd_map()?;
    println!(
        "mpath_fixture: timings: dmsetup part {:.1}s, multipathd part {:.1}s",
        a.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `sg_persist ARGS DEV`, retried past UNIT ATTENTION (a leg back online, a
/// preempted nexus); fails unless it ends with status 0.
fn sg_ok(dev: &Path, args: &[&str]) -> Result<Output> {
    let mut last = None;
    for _ in 0..4 {
        let o = sg::sg_persist(dev, args)?;
        if o.status != EXIT_UNIT_ATTENTION {
            return o.ok();
        }
        last = Some(o);
    }
    Err(last.unwrap().describe())
}

fn show(regs: &[Registration], lun: &SharedLun) -> String {
    regs.iter()
        .map(|r| {
            format!(
                "0x{:x}@leg{}{}",
                r.key,
                r.leg(lun).map_or("?".into(), |l| l.to_string()),
                if r.holder { "(holder)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn dmsetup_map() -> Result<()> {
    const KEY: u64 = 0xa1a1;
    let lun = mpath::shared_lun("mpfx-dm", 32 << 20, 3)?;
    let map = Map::create("prh-mpfx-dm", &lun, &[0, 1])?;
    let (maj, min) = map.devnum();
    let uuid = read_attr(Path::new(&format!("/sys/dev/block/{maj}:{min}/dm/uuid")))?;
    ensure!(
        uuid.starts_with("mpath-") && uuid == map.uuid(),
        "dm uuid in sysfs {uuid:?}, map says {:?}",
        map.uuid()
    );
    ensure!(
        map.paths().iter().map(|p| p.leg).collect::<Vec<_>>() == [0, 1],
        "paths {:?}",
        map.paths()
    );
    println!(
        "mpath_fixture: dmsetup map {} = {} ({maj}:{min}, uuid {uuid}), paths {} {}; table: {}",
        map.name(),
        map.dev().display(),
        map.paths()[0].disk.display(),
        map.paths()[1].disk.display(),
        map.table()?
    );
    // Any pending UNIT ATTENTION out of the way.
    for i in 0..3 {
        let _ = sg::sg_persist(&lun.device(i).disk, &["--in", "--read-keys"]);
    }

    // REGISTER through the map: one I_T nexus only.
    sg_ok(
        map.dev(),
        &["--out", "--register", &format!("--param-sark=0x{KEY:x}")],
    )?;
    let regs = lio_view(&lun, 2)?;
    let legs = legs_with_key(&regs, &lun, KEY);
    ensure!(
        regs.len() == 1 && legs.len() == 1,
        "REGISTER via the dm map: expected one registration, LIO has {}",
        show(&regs, &lun)
    );
    println!(
        "mpath_fixture: sg_persist REGISTER via {} registered one nexus only: {}",
        map.dev().display(),
        show(&regs, &lun)
    );
    sg_ok(
        &lun.device(legs[0]).disk,
        &["--out", "--register-ignore", "--param-sark=0"],
    )?;

    // dm's view: a failed path is skipped by the map's SG_IO.
    ensure!(
        map.path_states()?.iter().all(|s| s.active),
        "paths not all active: {}",
        map.status()?
    );
    for failed in [0usize, 1] {
        let other = 1 - failed;
        map.fail_path(failed)?;
        let states = map.path_states()?;
        ensure!(
            !states[failed].active && states[other].active,
            "after fail_path({failed}): {states:?}"
        );
        sg_ok(
            map.dev(),
            &["--out", "--register", &format!("--param-sark=0x{KEY:x}")],
        )?;
        let regs = lio_view(&lun, 2)?;
        ensure!(
            regs.len() == 1 && legs_with_key(&regs, &lun, KEY) == [other],
            "path {failed} failed in dm: REGISTER via the map should reach leg {other}, LIO has {}",
            show(&regs, &lun)
        );
        sg_ok(
            &lun.device(other).disk,
            &["--out", "--register-ignore", "--param-sark=0"],
        )?;
        map.reinstate_path(failed)?;
        let states = map.path_states()?;
        ensure!(
            states.iter().all(|s| s.active),
            "after reinstate_path({failed}): {states:?}"
        );
    }
    println!(
        "mpath_fixture: fail_path/reinstate_path: path_states follow, SG_IO goes to the other path"
    );
    ensure!(
        lio_view(&lun, 2)?.is_empty(),
        "registrations left on the dm LUN"
    );
    map.remove()?;
    Ok(())
}

fn multipathd_map() -> Result<()> {
    const KEY: u64 = 0xb2b2_0001;
    let lun = mpath::shared_lun("mpfx-md", 32 << 20, 3)?;
    let wwid = mpath::lun_wwid(&lun)?;
    let mpd = Multipathd::start(&lun, &[0, 1])?;
    let timings: Vec<String> = mpd
        .timings
        .iter()
        .map(|(what, d)| format!("{what} {:.2}s", d.as_secs_f64()))
        .collect();
    println!("mpath_fixture: multipathd start: {}", timings.join(", "));
    let (maj, min) = mpd.devnum();
    let uuid = read_attr(Path::new(&format!("/sys/dev/block/{maj}:{min}/dm/uuid")))?;
    ensure!(uuid == format!("mpath-{wwid}"), "dm uuid {uuid:?}");
    let table = run("dmsetup", &["table", mpd.alias()])?.ok()?.stdout;
    for p in mpd.paths() {
        ensure!(
            table.contains(&format!(" {} ", p.dev_t())),
            "{} not in the table: {table}",
            p.dev_t()
        );
    }
    ensure!(
        !table.contains(&format!(" {} ", mpath_dev_t(&lun, 2)?)),
        "leg 2 should be blacklisted: {table}"
    );
    println!(
        "mpath_fixture: multipathd map {} = {} ({maj}:{min}), paths {}; table: {}",
        mpd.alias(),
        mpd.dev().display(),
        mpd.paths()
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" "),
        table.trim()
    );
    ensure!(!mpd.getprstatus()?, "getprstatus set before any REGISTER");
    ensure!(mpd.getprkey()?.is_none(), "a key before any REGISTER");
    probe_pr_commands(&mpd)?;

    // mpathpersist REGISTER: every path.
    let t = Instant::now();
    persist::register(mpd.dev(), 0, KEY)?.ok()?;
    let reg_time = t.elapsed();
    let regs = lio_view(&lun, 2)?;
    ensure!(
        regs.len() == 2 && legs_with_key(&regs, &lun, KEY) == [0, 1],
        "mpathpersist REGISTER: expected the key on legs 0 and 1, LIO has {}",
        show(&regs, &lun)
    );
    ensure!(
        mpd.prkeys_entry() == Some((KEY, false)),
        "prkeys file after REGISTER:\n{}",
        mpd.prkeys_file()
    );
    ensure!(mpd.getprstatus()?, "getprstatus not set after REGISTER");
    ensure!(
        mpd.getprkey()? == Some(KEY),
        "getprkey {:?}",
        mpd.getprkey()?
    );
    let keys = persist::read_keys(mpd.dev())?;
    ensure!(
        keys == (0, vec![KEY, KEY]),
        "mpathpersist READ KEYS {keys:x?}"
    );
    let cmd = format!("getprkey map {}", mpd.alias());
    let (cli, sock) = (mpd.cmd(&cmd)?, mpd.socket_cmd(&cmd)?);
    ensure!(
        cli.trim() == sock.trim() && sock.trim() == format!("0x{KEY:x}"),
        "{cmd}: CLI {cli:?}, socket {sock:?}"
    );
    println!(
        "mpath_fixture: mpathpersist REGISTER ({:.2}s) registered both paths: {}; prkeys has 0x{KEY:x}, getprstatus 1",
        reg_time.as_secs_f64(),
        show(&regs, &lun)
    );
    // What this multipathd accepts (informational).
    for c in ["getprhold", "getprstatus", "getprkey"] {
        let c = format!("{c} map {}", mpd.alias());
        println!(
            "mpath_fixture: multipathd {c:?}: CLI {:?}, socket {:?}",
            mpd.cmd(&c).unwrap_or_else(|e| e),
            mpd.socket_cmd(&c).unwrap_or_else(|e| e)
        );
    }

    // Leg 0 goes down at the LIO level; multipathd's checker notices.
    mpd.paths()[0].set_online(false)?;
    let down = mpd.wait_path_up(0, false, Duration::from_secs(30));
    let down = match down {
        Ok(d) => d,
        Err(e) => {
            let _ = mpd.paths()[0].set_online(true);
            return Err(e);
        }
    };
    let dm = mpd.dm_path_states()?;
    // While it is down, leg 0 loses its registration: leg 1 CLEARs (every
    // registration goes) and registers again. (A self-PREEMPT would not do:
    // without a reservation LIO removes the issuer's registration as well.)
    let pre = sg_ok(
        &lun.device(1).disk,
        &["--out", "--clear", &format!("--param-rk=0x{KEY:x}")],
    )
    .and_then(|_| {
        sg_ok(
            &lun.device(1).disk,
            &["--out", "--register", &format!("--param-sark=0x{KEY:x}")],
        )
    });
    let regs = lio_view(&lun, 2);
    let t_up = Instant::now();
    mpd.paths()[0].set_online(true)?;
    pre?;
    let regs = regs?;
    ensure!(
        legs_with_key(&regs, &lun, KEY) == [1] && regs.len() == 1,
        "after CLEAR + REGISTER on leg 1: LIO has {}",
        show(&regs, &lun)
    );
    println!(
        "mpath_fixture: leg 0 offline: multipathd saw it down after {:.2}s (dm: {dm:?}); leg 0 unregistered by CLEAR + REGISTER on leg 1: {}",
        down.as_secs_f64(),
        show(&regs, &lun)
    );
    let up = mpd.wait_path_up(0, true, Duration::from_secs(30))?;
    let mut last = Vec::new();
    let rereg = wait_for(
        "multipathd to re-register the key on leg 0",
        Duration::from_secs(30),
        || {
            last = lio_view(&lun, 2)?;
            Ok((legs_with_key(&last, &lun, KEY) == [0, 1]).then(|| t_up.elapsed()))
        },
    )
    .map_err(|e| {
        format!(
            "{e}; LIO has {}; multipathd log:\n{}",
            show(&last, &lun),
            mpd.log_tail(40)
        )
    })?;
    println!(
        "mpath_fixture: leg 0 online: multipathd saw it up after {:.2}s, key back on leg 0 after {:.2}s: {}",
        up.as_secs_f64(),
        rereg.as_secs_f64(),
        show(&last, &lun)
    );

    // Unregister through mpathpersist: every path, prkeys and prstatus cleared.
    let o = persist::register(mpd.dev(), KEY, 0)?;
    if o.status != 0 {
        bail!("mpathpersist unregister: {}", o.describe());
    }
    let regs = lio_view(&lun, 2)?;
    ensure!(
        regs.is_empty(),
        "after unregister: LIO has {}",
        show(&regs, &lun)
    );
    ensure!(
        mpd.prkeys_entry().is_none(),
        "prkeys file after unregister:\n{}",
        mpd.prkeys_file()
    );
    ensure!(
        !mpd.getprstatus()?,
        "getprstatus still set after unregister"
    );

    let t = Instant::now();
    mpd.stop()?;
    let stop = t.elapsed();
    ensure!(
        mpath::multipathd_socket_cmd("show daemon").is_err(),
        "multipathd still answers after stop"
    );
    let etc_mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| e.to_string())?
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/etc"));
    ensure!(!etc_mounted, "/etc is still a mount point after stop");
    let left = run("dmsetup", &["info", &wwid])?;
    ensure!(left.status != 0, "map {wwid} left behind");
    println!(
        "mpath_fixture: unregistered on both paths; multipathd, udevd, map and /etc overlay gone in {:.2}s",
        stop.as_secs_f64()
    );
    Ok(())
}

/// The PR commands of multipathd 0.9.4, through the socket (as a helper would
/// send them) and the CLI; prints every reply, asserts the ones a helper
/// relies on, and leaves the map with no key and prstatus unset.
fn probe_pr_commands(mpd: &Multipathd) -> Result<()> {
    let map = mpd.alias().to_string();
    let dm = mpd.sysfs_name().to_string();
    let (maj, min) = mpd.devnum();
    let steps: Vec<(String, Option<&str>)> = vec![
        (format!("setprkey map {map} key 0x123"), Some("ok")),
        (format!("getprkey map {map}"), Some("0x123")),
        (format!("getprkey map {dm}"), Some("0x123")),
        (format!("getprkey map {maj}:{min}"), None),
        (format!("setprkey map {map} key 0x456:aptpl"), Some("ok")),
        (format!("getprkey map {map}"), Some("0x456:aptpl")),
        (format!("setprstatus map {map}"), Some("ok")),
        (format!("getprstatus map {map}"), Some("1")),
        (format!("unsetprstatus map {map}"), Some("ok")),
        (format!("getprstatus map {map}"), Some("0")),
        (format!("getprhold map {map}"), None),
        (format!("setprhold map {map}"), None),
        (format!("unsetprhold map {map}"), None),
        (format!("setprstatus map {map} pathlist \"8:0\""), None),
        (format!("unsetprstatus map {map}"), Some("ok")),
        (format!("unsetprkey map {map}"), Some("ok")),
        (format!("getprkey map {map}"), Some("none")),
    ];
    let mut aptpl_line = None;
    for (cmd, want) in &steps {
        let sock = mpd.socket_cmd(cmd)?;
        if cmd.contains("0x456:aptpl") {
            aptpl_line = mpd.prkeys_entry();
        }
        let cli = mpd.cmd(cmd).unwrap_or_else(|e| format!("error: {e}"));
        println!("mpath_fixture: multipathd {cmd:?}: socket {sock:?}, CLI {cli:?}");
        if let Some(want) = want {
            ensure!(
                sock.trim() == *want,
                "multipathd {cmd:?} over the socket: {sock:?}, expected {want:?}"
            );
        }
    }
    ensure!(
        aptpl_line == Some((0x456, true)),
        "prkeys entry after setprkey …:aptpl: {aptpl_line:?}"
    );
    ensure!(
        !mpd.getprstatus()? && mpd.getprkey()?.is_none() && mpd.prkeys_entry().is_none(),
        "probe left state behind:\n{}",
        mpd.prkeys_file()
    );
    Ok(())
}

fn mpath_dev_t(lun: &SharedLun, leg: usize) -> Result<String> {
    let name = lun
        .device(leg)
        .disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    read_attr(Path::new(&format!("/sys/block/{name}/dev")))
}
