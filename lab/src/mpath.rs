// SPDX-License-Identifier: MIT OR Apache-2.0
//! dm-multipath in the lab VM: maps over the legs of a [`SharedLun`], made
//! by hand with `dmsetup` ([`Map`]) or by a real `multipathd`
//! ([`Multipathd`]), Debian's `mpathpersist` ([`persist`]), and LIO's own
//! view of the registrations seen from an initiator outside the map
//! ([`lio_view`]).
//!
//! ```text
//! let lun = mpath::shared_lun("mp", 64 << 20, 3)?;     // legs 0, 1 (map) + 2 (observer)
//! let map = Map::create("mp", &lun, &[0, 1])?;           // dmsetup, no daemon
//! let mpd = Multipathd::start(&lun, &[0, 1])?;           // udevd + multipathd make the map
//! persist::register(mpd.dev(), 0, 0xabc)?.ok()?;         // mpathpersist on /dev/dm-N
//! let regs = lio_view(&lun, 2)?;                         // READ FULL STATUS from leg 2
//! ```
//!
//! Two ways to take a path down, with different meanings:
//! - **LIO level** ([`Map::path_offline`], `lun.targets[i].set_online(false)`):
//!   the tcm_loop I_T nexus goes away. SG_IO to that leg returns GOOD with
//!   host status DID_TRANSPORT_DISRUPTED; multipathd's checker sees it fail
//!   (in ~1-4 s here) and fails the path in dm; a `dmsetup` [`Map`] without
//!   multipathd only notices through I/O on the map.
//! - **dm level** ([`Map::fail_path`]): only dm's view. The leg itself still
//!   answers SG_IO sent to its own /dev/sdX; the map stops choosing it.
//!
//! LUNs for multipathd need a unit serial ([`shared_lun`]): without one LIO
//! reports no VPD pages, the kernel has no WWID for the disk
//! (`device/wwid` gives ENXIO, no `vpd_pg83`), multipathd's WWID becomes
//! "1LIO-ORG_" and the ALUA handler fails to attach (the map load fails
//! with ENODEV). [`Map`] works on any [`SharedLun`].
//!
//! Drop order: drop maps and [`Multipathd`] before the [`SharedLun`] (declare
//! them after it).

use crate::lio::{Backstore, SharedLun, Target, TARGET_ROOT};
use crate::util::{mkdir_all, read_attr, run, run_ok, wait_for, write_attr};
use crate::{bail, ensure, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// LUNs with a WWID
// ---------------------------------------------------------------------------

/// Like [`SharedLun::new`], but the backstore gets a unique VPD unit serial
/// (`wwn/vpd_unit_serial`, which must be set before any LUN maps it) so that
/// LIO reports VPD pages 0x80/0x83: the disks get a WWID (`device/wwid`,
/// udev's `ID_SERIAL` "36001405…") that multipathd can group paths by.
pub fn shared_lun(name: &str, size: u64, paths: usize) -> Result<SharedLun> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    crate::lio::setup_default_dbroot()?;
    let backstore = Backstore::fileio(name, size)?;
    // The NAA designator takes the first 25 hex digits of the serial: keep
    // the unique part there.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let serial = format!(
        "{:06x}{:04x}{:015x}{:07x}",
        std::process::id() & 0xff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff,
        nanos & 0xfff_ffff_ffff_ffff,
        0
    );
    write_attr(
        &backstore.dev_dir().join("wwn/vpd_unit_serial"),
        &format!("{serial}\n"),
    )?;
    let mut lun = SharedLun {
        targets: Vec::new(),
        backstore,
    };
    for _ in 0..paths {
        let wwn = crate::lio::next_wwn();
        let initiator = crate::lio::next_wwn();
        lun.targets
            .push(Target::loopback(&wwn, &initiator, &lun.backstore)?);
    }
    Ok(lun)
}

/// The LU's WWID as udev (`ID_SERIAL`) and multipathd spell it: "3" and the
/// NAA hex digits of `device/wwid` ("naa.6001405…" → "36001405…"). Fails for
/// a LUN without a unit serial (see [`shared_lun`]).
pub fn lun_wwid(lun: &SharedLun) -> Result<String> {
    let disk = disk_name(&lun.device(0).disk)?;
    let attr = PathBuf::from("/sys/block").join(&disk).join("device/wwid");
    let wwid = read_attr(&attr).map_err(|e| {
        format!("{e} (a LUN without VPD unit serial has no WWID: use mpath::shared_lun)")
    })?;
    let wwid = wwid.trim();
    match wwid.strip_prefix("naa.") {
        Some(hex) => Ok(format!("3{}", hex.to_ascii_lowercase())),
        None => bail!("{disk}: unexpected wwid {wwid:?}"),
    }
}

fn disk_name(disk: &Path) -> Result<String> {
    Ok(disk
        .file_name()
        .ok_or_else(|| format!("{}: no file name", disk.display()))?
        .to_string_lossy()
        .into_owned())
}

fn parse_devnum(s: &str) -> Result<(u32, u32)> {
    let (a, b) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("bad device number {s:?}"))?;
    let p = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|e| format!("bad device number {s:?}: {e}"))
    };
    Ok((p(a)?, p(b)?))
}

/// `/dev/NAME` of block device `major:minor` (from its sysfs uevent), once the
/// node exists.
pub fn block_dev_node(devnum: (u32, u32)) -> Result<PathBuf> {
    let (maj, min) = devnum;
    let uevent = read_attr(Path::new(&format!("/sys/dev/block/{maj}:{min}/uevent")))?;
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| format!("no DEVNAME for {maj}:{min}: {uevent}"))?;
    let node = PathBuf::from("/dev").join(name);
    let n = node.clone();
    wait_for(&n.display().to_string(), Duration::from_secs(10), || {
        Ok(n.exists().then_some(()))
    })?;
    Ok(node)
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// One path of a map: a leg of the [`SharedLun`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDev {
    /// Index of the leg in `SharedLun::targets`.
    pub leg: usize,
    /// The disk's (major, minor).
    pub devnum: (u32, u32),
    /// `/dev/sdX`.
    pub disk: PathBuf,
    /// `/dev/sgN`.
    pub sg: PathBuf,
    /// The leg's initiator as READ FULL STATUS shows it ("0x5001405…").
    pub sas_address: String,
    /// The leg target's `transport_status` attribute in configfs.
    transport_status: PathBuf,
}

impl PathDev {
    fn of_leg(lun: &SharedLun, leg: usize) -> Result<PathDev> {
        ensure!(
            leg < lun.targets.len(),
            "leg {leg} of a LUN with {} legs",
            lun.targets.len()
        );
        let target = &lun.targets[leg];
        let dev = target.device();
        let name = disk_name(&dev.disk)?;
        let devnum = parse_devnum(&read_attr(
            &PathBuf::from("/sys/block").join(&name).join("dev"),
        )?)?;
        Ok(PathDev {
            leg,
            devnum,
            disk: dev.disk.clone(),
            sg: dev.sg.clone(),
            sas_address: target.initiator_sas_address(),
            transport_status: PathBuf::from(TARGET_ROOT)
                .join("loopback")
                .join(target.wwn())
                .join("tpgt_1/transport_status"),
        })
    }

    /// "MAJ:MIN", as dm tables and multipathd print it.
    pub fn dev_t(&self) -> String {
        format!("{}:{}", self.devnum.0, self.devnum.1)
    }

    /// The kernel name ("sdb").
    pub fn name(&self) -> String {
        disk_name(&self.disk).unwrap_or_default()
    }

    /// Take the leg's tcm_loop target offline (`false`) or back (`true`):
    /// the I_T nexus disappears at the LIO level (see the module docs).
    pub fn set_online(&self, online: bool) -> Result<()> {
        write_attr(
            &self.transport_status,
            if online { "online" } else { "offline" },
        )
    }
}

/// A path's state in dm's view (`dmsetup status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmPathState {
    /// "MAJ:MIN".
    pub dev_t: String,
    /// `A` (true) or `F` (false).
    pub active: bool,
    /// dm's fail count for the path.
    pub fail_count: u32,
}

/// Parse the paths out of a multipath target's `dmsetup status` line (with
/// or without the leading "NAME: " and "START LEN multipath").
pub fn parse_dm_status(line: &str) -> Result<Vec<DmPathState>> {
    let after = line
        .split_once(" multipath ")
        .map(|(_, r)| r)
        .unwrap_or(line);
    let w: Vec<&str> = after.split_whitespace().collect();
    let bad = || format!("unexpected multipath status: {line:?}");
    let num = |i: usize| -> Result<usize> { w.get(i).and_then(|s| s.parse().ok()).ok_or_else(bad) };
    let mut i = 0;
    // features status, hardware handler status
    i += 1 + num(i)?;
    i += 1 + num(i)?;
    let nr_pgs = num(i)?;
    i += 2; // nr pgs, next pg
    let mut out = Vec::new();
    for _ in 0..nr_pgs {
        i += 1; // pg state (A/E/D)
        i += 1 + num(i)?; // pg status args
        let nr_paths = num(i)?;
        let nr_sel = num(i + 1)?;
        i += 2;
        for _ in 0..nr_paths {
            let dev = w.get(i).ok_or_else(bad)?.to_string();
            let state = *w.get(i + 1).ok_or_else(bad)?;
            let fails = num(i + 2)? as u32;
            out.push(DmPathState {
                dev_t: dev,
                active: state == "A",
                fail_count: fails,
            });
            i += 3 + nr_sel;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Map (dmsetup)
// ---------------------------------------------------------------------------

/// Path selector of a [`Map`] (the modules the lab loads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selector {
    /// `round-robin` (1 I/O per path before switching).
    #[default]
    RoundRobin,
    /// `service-time` (what multipathd uses by default).
    ServiceTime,
}

/// Options of [`Map::create_with`].
#[derive(Debug, Clone, Default)]
pub struct MapOptions {
    pub selector: Selector,
    /// Queue I/O when no path is left (default off: a test with every path
    /// failed gets errors instead of hanging).
    pub queue_if_no_path: bool,
    /// The dm uuid; default `mpath-` + the LU's WWID ([`lun_wwid`]), or
    /// `mpath-lab-NAME` when the LU has none. Must be unique among maps.
    pub uuid: Option<String>,
}

/// A dm-multipath map made with `dmsetup create` (no multipathd): one
/// priority group with the given legs, in table order. Removed on drop.
#[derive(Debug)]
pub struct Map {
    name: String,
    uuid: String,
    devnum: (u32, u32),
    dev: PathBuf,
    paths: Vec<PathDev>,
    removed: bool,
}

impl Map {
    /// [`Map::create_with`] with default options (round-robin, no queueing).
    pub fn create(name: &str, lun: &SharedLun, legs: &[usize]) -> Result<Map> {
        Map::create_with(name, lun, legs, &MapOptions::default())
    }

    /// Create map `name` over `legs` of `lun` (all in one priority group).
    pub fn create_with(
        name: &str,
        lun: &SharedLun,
        legs: &[usize],
        opts: &MapOptions,
    ) -> Result<Map> {
        ensure!(!legs.is_empty(), "a map needs at least one leg");
        let paths = legs
            .iter()
            .map(|&l| PathDev::of_leg(lun, l))
            .collect::<Result<Vec<_>>>()?;
        let sectors = read_attr(
            &PathBuf::from("/sys/block")
                .join(paths[0].name())
                .join("size"),
        )?;
        let features = if opts.queue_if_no_path {
            "1 queue_if_no_path"
        } else {
            "0"
        };
        let (selector, per_path) = match opts.selector {
            Selector::RoundRobin => ("round-robin", " 1"),
            Selector::ServiceTime => ("service-time", " 1 1"),
        };
        let nargs = per_path.split_whitespace().count();
        let mut table = format!(
            "0 {sectors} multipath {features} 0 1 1 {selector} 0 {} {nargs}",
            paths.len()
        );
        for p in &paths {
            table.push(' ');
            table.push_str(&p.dev_t());
            table.push_str(per_path);
        }
        let uuid = match &opts.uuid {
            Some(u) => u.clone(),
            None => match lun_wwid(lun) {
                Ok(w) => format!("mpath-{w}"),
                Err(_) => format!("mpath-lab-{name}"),
            },
        };
        run_ok(
            "dmsetup",
            &[
                "--noudevsync",
                "create",
                name,
                "--uuid",
                &uuid,
                "--table",
                &table,
            ],
        )?;
        let mut map = Map {
            name: name.to_string(),
            uuid,
            devnum: (0, 0),
            dev: PathBuf::new(),
            paths,
            removed: false,
        };
        let majmin = run_ok(
            "dmsetup",
            &["info", "-c", "--noheadings", "-o", "major,minor", name],
        )?
        .stdout;
        map.devnum = parse_devnum(&majmin)?;
        map.dev = block_dev_node(map.devnum)?;
        Ok(map)
    }

    /// `/dev/dm-N` (without udevd there is no /dev/mapper link).
    pub fn dev(&self) -> &Path {
        &self.dev
    }

    /// The map's (major, minor).
    pub fn devnum(&self) -> (u32, u32) {
        self.devnum
    }

    /// The dm name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dm uuid (`mpath-…`).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The path devices in table order.
    pub fn paths(&self) -> &[PathDev] {
        &self.paths
    }

    fn message(&self, msg: &str, i: usize) -> Result<()> {
        let p = self
            .paths
            .get(i)
            .ok_or_else(|| format!("map {} has no path {i}", self.name))?;
        run_ok("dmsetup", &["message", &self.name, "0", msg, &p.dev_t()]).map(|_| ())
    }

    /// Mark path `i` (table order) failed in dm (`dmsetup message … fail_path`).
    pub fn fail_path(&self, i: usize) -> Result<()> {
        self.message("fail_path", i)
    }

    /// Reinstate path `i` in dm.
    pub fn reinstate_path(&self, i: usize) -> Result<()> {
        self.message("reinstate_path", i)
    }

    /// Take path `i`'s leg offline at the LIO level (its nexus vanishes; dm
    /// does not know until I/O through the map fails).
    pub fn path_offline(&self, i: usize) -> Result<()> {
        self.paths[i].set_online(false)
    }

    /// Bring path `i`'s leg back online at the LIO level (its first command
    /// gets UNIT ATTENTION 29/07).
    pub fn path_online(&self, i: usize) -> Result<()> {
        self.paths[i].set_online(true)
    }

    /// `dmsetup status NAME`, trimmed.
    pub fn status(&self) -> Result<String> {
        Ok(run_ok("dmsetup", &["status", &self.name])?
            .stdout
            .trim()
            .to_string())
    }

    /// `dmsetup table NAME`, trimmed.
    pub fn table(&self) -> Result<String> {
        Ok(run_ok("dmsetup", &["table", &self.name])?
            .stdout
            .trim()
            .to_string())
    }

    /// dm's state of each path, in table order.
    pub fn path_states(&self) -> Result<Vec<DmPathState>> {
        parse_dm_status(&self.status()?)
    }

    /// Remove the map now (see [`remove_dm`]).
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_dm(&self.name)
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_dm(&self.name) {
                eprintln!("mpath: {e}");
            }
        }
    }
}

/// `dmsetup remove NAME`, retried for ~2 s while it is busy, then `dmsetup
/// remove --force` (which swaps in an error table first).
pub fn remove_dm(name: &str) -> Result<()> {
    let mut last = String::new();
    for _ in 0..20 {
        let o = run("dmsetup", &["--noudevsync", "remove", name])?;
        if o.status == 0 {
            return Ok(());
        }
        if o.text().contains("No such device") || o.text().contains("not exist") {
            return Ok(());
        }
        last = o.describe();
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = run("dmsetup", &["--noudevsync", "remove", "--force", name])?;
    if o.status == 0 {
        eprintln!("mpath: map {name} needed `dmsetup remove --force` ({last})");
        Ok(())
    } else {
        Err(format!("cannot remove map {name}: {}", o.describe()))
    }
}

// ---------------------------------------------------------------------------
// multipathd
// ---------------------------------------------------------------------------

/// multipathd's abstract socket name (0.9.4 has no pathname socket).
pub const MULTIPATHD_SOCKET: &str = "/org/kernel/linux/storage/multipathd";

/// The prkeys file multipathd maintains with `reservation_key file`.
pub const PRKEYS_FILE: &str = "/etc/multipath/prkeys";

const OVERLAY_DIR: &str = "/run/lab-mpath/etc";

/// Run `multipathd CMD…` (the CLI client; words split on whitespace) and
/// return its stdout. Fails when the CLI cannot reach the daemon; a command
/// multipathd rejects gives "fail" (and a non-zero exit, ignored here).
pub fn multipathd_cmd(cmd: &str) -> Result<String> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let o = run("multipathd", &args)?;
    if o.stdout.is_empty() && o.status != 0 {
        bail!("{}", o.describe());
    }
    Ok(o.stdout)
}

/// Send `cmd` to multipathd over its abstract socket as libmpathcmd does
/// (native `size_t` length including the NUL, then the NUL-terminated
/// command; the reply is framed the same way) and return the reply without
/// its NUL.
pub fn multipathd_socket_cmd(cmd: &str) -> Result<String> {
    multipathd_socket_cmd_at(None, cmd)
}

/// [`multipathd_socket_cmd`] through the pathname socket `socket` (a
/// socket-activated multipathd, [`Multipathd::start_with_socket`]), or the
/// abstract one when `None`.
pub fn multipathd_socket_cmd_at(socket: Option<&Path>, cmd: &str) -> Result<String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let mut s = match socket {
        Some(path) => {
            UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?
        }
        None => {
            let addr = SocketAddr::from_abstract_name(MULTIPATHD_SOCKET.as_bytes())
                .map_err(|e| format!("abstract address: {e}"))?;
            UnixStream::connect_addr(&addr)
                .map_err(|e| format!("connect @{MULTIPATHD_SOCKET}: {e}"))?
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut msg = Vec::with_capacity(cmd.len() + 9);
    msg.extend_from_slice(&(cmd.len() + 1).to_ne_bytes());
    msg.extend_from_slice(cmd.as_bytes());
    msg.push(0);
    s.write_all(&msg)
        .map_err(|e| format!("send {cmd:?}: {e}"))?;
    let mut len = [0u8; std::mem::size_of::<usize>()];
    s.read_exact(&mut len)
        .map_err(|e| format!("reply length to {cmd:?}: {e}"))?;
    let len = usize::from_ne_bytes(len);
    ensure!(len <= 32 << 20, "reply to {cmd:?}: length {len}");
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)
        .map_err(|e| format!("reply to {cmd:?}: {e}"))?;
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The contents of [`PRKEYS_FILE`] (empty if it does not exist).
pub fn prkeys_file() -> String {
    std::fs::read_to_string(PRKEYS_FILE).unwrap_or_default()
}

/// The key the prkeys file holds for `wwid` ("0x…" lines; a line that
/// multipathd removed starts with '#'). The bool is APTPL ("0X").
pub fn prkeys_lookup(text: &str, wwid: &str) -> Option<(u64, bool)> {
    text.lines().find_map(|l| {
        let (key, id) = l.trim().split_once(char::is_whitespace)?;
        if id.trim() != wwid {
            return None;
        }
        let (hex, aptpl) = if let Some(h) = key.strip_prefix("0x") {
            (h, false)
        } else {
            (key.strip_prefix("0X")?, true)
        };
        u64::from_str_radix(hex, 16).ok().map(|k| (k, aptpl))
    })
}

/// One row of `multipathd show paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpathdPath {
    /// "sda".
    pub dev: String,
    /// "8:0".
    pub dev_t: String,
    /// dm state: "active", "failed", "undef".
    pub dm_st: String,
    /// checker state: "ready", "faulty", "shaky", "ghost", "undef"…
    pub chk_st: String,
}

impl MpathdPath {
    /// Usable in multipathd's eyes (active in dm, checker ready or ghost).
    pub fn is_up(&self) -> bool {
        self.dm_st == "active" && (self.chk_st == "ready" || self.chk_st == "ghost")
    }
}

/// A running `systemd-udevd` + `multipathd` pair in the lab VM, managing the
/// map of one LU's legs: a writable /etc (an overlay on tmpfs) holds
/// `multipath.conf` (`reservation_key file`, WWIDs only the LU's, other legs
/// blacklisted by devnode, `no_path_retry fail`) and the prkeys file.
/// Dropping it stops multipathd, flushes its map, stops udevd and unmounts
/// the overlay, so later cases in the VM see the usual read-only /etc.
#[derive(Debug)]
pub struct Multipathd {
    udevd: Option<Child>,
    multipathd: Option<Child>,
    overlay: bool,
    wwid: String,
    sysfs_name: String,
    devnum: (u32, u32),
    dev: PathBuf,
    paths: Vec<PathDev>,
    log: PathBuf,
    /// The pathname socket multipathd was given (socket activation), if any.
    socket: Option<PathBuf>,
    stopped: bool,
    /// How long start-up took, per step, for reports.
    pub timings: Vec<(&'static str, Duration)>,
}

impl Multipathd {
    /// [`Multipathd::start_with`] without extra settings.
    pub fn start(lun: &SharedLun, legs: &[usize]) -> Result<Multipathd> {
        Multipathd::start_with(lun, legs, &[])
    }

    /// Start udevd and multipathd so that multipathd builds the map of `lun`
    /// from `legs` (the other legs are blacklisted), and wait until the map
    /// has all those paths. `extra_defaults` are lines added to the
    /// `defaults` section of multipath.conf.
    pub fn start_with(
        lun: &SharedLun,
        legs: &[usize],
        extra_defaults: &[&str],
    ) -> Result<Multipathd> {
        Multipathd::start_with_socket(lun, legs, extra_defaults, None)
    }

    /// [`Multipathd::start_with`], and with `socket`, multipathd listens on
    /// that pathname socket instead of its abstract one: the lab binds it and
    /// passes it as systemd's socket activation would (fd 3, `LISTEN_FDS=1`,
    /// `LISTEN_PID`), which 0.9.4 accepts (`ux_socket_listen` takes a single
    /// `sd_listen_fds` socket as is). The abstract socket then does not exist;
    /// this fixture's socket commands use the path. (The `multipathd` CLI of
    /// 0.9.4 knows only the abstract socket: [`Multipathd::cmd`] fails then.)
    pub fn start_with_socket(
        lun: &SharedLun,
        legs: &[usize],
        extra_defaults: &[&str],
        socket: Option<&Path>,
    ) -> Result<Multipathd> {
        let t_all = Instant::now();
        let wwid = lun_wwid(lun)?;
        let paths = legs
            .iter()
            .map(|&l| PathDev::of_leg(lun, l))
            .collect::<Result<Vec<_>>>()?;
        if multipathd_socket_cmd("show daemon").is_ok()
            || socket.is_some_and(|p| multipathd_socket_cmd_at(Some(p), "show daemon").is_ok())
        {
            bail!("a multipathd is already running in this VM");
        }
        let logdir = PathBuf::from("/run/lab-mpath");
        mkdir_all(&logdir)?;
        let mut m = Multipathd {
            udevd: None,
            multipathd: None,
            overlay: false,
            wwid: wwid.clone(),
            sysfs_name: String::new(),
            devnum: (0, 0),
            dev: PathBuf::new(),
            paths,
            log: logdir.join("multipathd.log"),
            socket: socket.map(Path::to_path_buf),
            stopped: false,
            timings: Vec::new(),
        };

        // 1. A writable /etc.
        let t = Instant::now();
        if !etc_is_our_overlay() {
            let upper = PathBuf::from(OVERLAY_DIR).join("upper");
            let work = PathBuf::from(OVERLAY_DIR).join("work");
            let _ = std::fs::remove_dir_all(OVERLAY_DIR);
            mkdir_all(&upper)?;
            mkdir_all(&work)?;
            run_ok(
                "mount",
                &[
                    "-t",
                    "overlay",
                    "lab-mpath-etc",
                    "-o",
                    &format!(
                        "lowerdir=/etc,upperdir={},workdir={}",
                        upper.display(),
                        work.display()
                    ),
                    "/etc",
                ],
            )?;
        }
        m.overlay = true;
        mkdir_all(Path::new("/etc/multipath"))?;
        let excluded: Vec<String> = (0..lun.targets.len())
            .filter(|i| !legs.contains(i))
            .map(|i| disk_name(&lun.device(i).disk))
            .collect::<Result<_>>()?;
        std::fs::write(
            "/etc/multipath.conf",
            multipath_conf(&wwid, &excluded, extra_defaults),
        )
        .map_err(|e| format!("cannot write /etc/multipath.conf: {e}"))?;
        let _ = std::fs::remove_file(PRKEYS_FILE);
        m.timings
            .push(("overlay /etc + multipath.conf", t.elapsed()));

        // 2. udevd, and the path devices' udev database entries.
        let t = Instant::now();
        let log = std::fs::File::create(logdir.join("udevd.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file("/run/udev/control");
        m.udevd = Some(
            Command::new("/lib/systemd/systemd-udevd")
                .env("SYSTEMD_IGNORE_CHROOT", "1")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| format!("cannot start systemd-udevd: {e}"))?,
        );
        wait_for("udevd's control socket", Duration::from_secs(10), || {
            Ok(Path::new("/run/udev/control").exists().then_some(()))
        })?;
        let mut trigger = vec!["trigger".to_string(), "--action=add".to_string()];
        trigger.extend(
            m.paths
                .iter()
                .map(|p| format!("/sys/class/block/{}", p.name())),
        );
        run_ok("udevadm", &trigger)?;
        run_ok("udevadm", &["settle", "-t", "30"])?;
        m.timings.push(("udevd + trigger + settle", t.elapsed()));

        // 3. multipathd in the foreground (-d), no timestamps (-s).
        let t = Instant::now();
        m.spawn_multipathd(false)?;
        let sock = m.socket.clone();
        let want = m.paths.len();
        let log_path = m.log.clone();
        let found = wait_for(
            &format!("multipathd's map {wwid} with {want} paths"),
            Duration::from_secs(40),
            || {
                if let Some(child) = m.multipathd.as_mut() {
                    if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                        bail!(
                            "multipathd exited ({st}); its log:\n{}",
                            tail(&log_path, 40)
                        );
                    }
                }
                let Ok(out) =
                    multipathd_socket_cmd_at(sock.as_deref(), "show maps raw format \"%w %d %N\"")
                else {
                    return Ok(None);
                };
                Ok(out.lines().find_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    (w.len() == 3 && w[0] == wwid && w[2].parse() == Ok(want))
                        .then(|| w[1].to_string())
                }))
            },
        )
        .map_err(|e| format!("{e}; multipathd log:\n{}", tail(&m.log, 40)))?;
        m.sysfs_name = found;
        m.devnum = parse_devnum(&read_attr(
            &PathBuf::from("/sys/block").join(&m.sysfs_name).join("dev"),
        )?)?;
        m.dev = block_dev_node(m.devnum)?;
        m.wait_paths("all paths up", Duration::from_secs(20), |ps| {
            ps.len() == want && ps.iter().all(MpathdPath::is_up)
        })?;
        m.timings
            .push(("multipathd to map with paths up", t.elapsed()));
        m.timings.push(("total", t_all.elapsed()));
        Ok(m)
    }

    fn spawn_multipathd(&mut self, append: bool) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("multipathd");
        cmd.args(["-d", "-s", "-v3"]);
        // With a pathname socket: bound and listening here, inherited as fd 3;
        // LISTEN_PID must be multipathd's own pid, hence the shell's `$$` + exec.
        let listener = match &self.socket {
            None => None,
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
                // SAFETY: F_SETFD on a descriptor we own; clears FD_CLOEXEC only.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                    bail!("fcntl: {}", std::io::Error::last_os_error());
                }
                let redirect = if fd == 3 {
                    String::new()
                } else {
                    format!("exec 3<&{fd} {fd}<&-; ")
                };
                cmd = Command::new("sh");
                cmd.args([
                    "-c",
                    &format!("{redirect}LISTEN_FDS=1 LISTEN_PID=$$ exec multipathd -d -s -v3"),
                ]);
                Some(l)
            }
        };
        self.multipathd = Some(
            cmd.stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| format!("cannot start multipathd: {e}"))?,
        );
        drop(listener);
        Ok(())
    }

    /// Restart multipathd (SIGTERM, wait, start again with the same configuration; udevd,
    /// the map and the prkeys file stay): every client connection is lost. Returns once
    /// the new multipathd answers with all paths up, and how long that took.
    pub fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        if let Some(child) = self.multipathd.take() {
            stop_child(child, "multipathd")?;
        }
        ensure!(
            multipathd_socket_cmd("show daemon").is_err(),
            "multipathd still answers after it exited"
        );
        self.spawn_multipathd(true)?;
        wait_for(
            "multipathd to answer again",
            Duration::from_secs(40),
            || Ok(multipathd_socket_cmd("show daemon").ok().map(|_| ())),
        )
        .map_err(|e| format!("{e}; multipathd log:\n{}", tail(&self.log, 40)))?;
        let want = self.paths.len();
        self.wait_paths(
            "all paths up after the restart",
            Duration::from_secs(40),
            |ps| ps.len() == want && ps.iter().all(MpathdPath::is_up),
        )
        .map_err(|e| format!("{e}; multipathd log:\n{}", tail(&self.log, 40)))?;
        Ok(t.elapsed())
    }

    /// The running multipathd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.multipathd.as_ref().map(Child::id)
    }

    /// The map's WWID, also its name (`user_friendly_names no`) and, with
    /// "mpath-" in front, its dm uuid.
    pub fn wwid(&self) -> &str {
        &self.wwid
    }

    /// The map's alias (= [`Multipathd::wwid`]).
    pub fn alias(&self) -> &str {
        &self.wwid
    }

    /// "dm-N".
    pub fn sysfs_name(&self) -> &str {
        &self.sysfs_name
    }

    /// `/dev/dm-N`.
    pub fn dev(&self) -> &Path {
        &self.dev
    }

    /// `/dev/mapper/WWID` (udev's link; present while udevd runs).
    pub fn mapper_path(&self) -> PathBuf {
        PathBuf::from("/dev/mapper").join(&self.wwid)
    }

    /// The map's (major, minor).
    pub fn devnum(&self) -> (u32, u32) {
        self.devnum
    }

    /// The path devices, in the order of the legs given to `start`.
    pub fn paths(&self) -> &[PathDev] {
        &self.paths
    }

    /// `multipathd CMD` through the CLI ([`multipathd_cmd`]).
    pub fn cmd(&self, cmd: &str) -> Result<String> {
        multipathd_cmd(cmd)
    }

    /// `CMD` through the socket ([`multipathd_socket_cmd_at`]: the pathname
    /// socket when started with one, else the abstract one).
    pub fn socket_cmd(&self, cmd: &str) -> Result<String> {
        multipathd_socket_cmd_at(self.socket.as_deref(), cmd)
    }

    /// The pathname socket multipathd listens on, if it was started with one.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// `getprkey map WWID`: Some(key) or None ("none").
    pub fn getprkey(&self) -> Result<Option<u64>> {
        let r = self.socket_cmd(&format!("getprkey map {}", self.wwid))?;
        let r = r.trim();
        if r == "none" {
            return Ok(None);
        }
        let hex = r
            .split(':')
            .next()
            .and_then(|k| k.strip_prefix("0x"))
            .ok_or_else(|| format!("getprkey: {r:?}"))?;
        u64::from_str_radix(hex, 16)
            .map(Some)
            .map_err(|e| format!("getprkey {r:?}: {e}"))
    }

    /// `getprstatus map WWID`: whether multipathd maintains a registration
    /// for the map (its prflag).
    pub fn getprstatus(&self) -> Result<bool> {
        let r = self.socket_cmd(&format!("getprstatus map {}", self.wwid))?;
        match r.trim() {
            "1" | "set" => Ok(true),
            "0" | "unset" => Ok(false),
            other => bail!("getprstatus: {other:?}"),
        }
    }

    /// `multipathd show paths` of this map's legs (rows for other devices,
    /// e.g. orphans, are left out).
    pub fn show_paths(&self) -> Result<Vec<MpathdPath>> {
        let out = self.socket_cmd("show paths raw format \"%d %D %t %T\"")?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 4 && self.paths.iter().any(|p| p.name() == w[0])).then(|| MpathdPath {
                    dev: w[0].to_string(),
                    dev_t: w[1].to_string(),
                    dm_st: w[2].to_string(),
                    chk_st: w[3].to_string(),
                })
            })
            .collect())
    }

    /// Poll `show paths` every 20 ms until `pred` holds; returns how long
    /// it took.
    pub fn wait_paths(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[MpathdPath]) -> bool,
    ) -> Result<Duration> {
        let t = Instant::now();
        let mut last = Vec::new();
        let r = wait_for(what, timeout, || {
            last = self.show_paths()?;
            Ok(pred(&last).then_some(()))
        });
        match r {
            Ok(()) => Ok(t.elapsed()),
            Err(e) => Err(format!("{e}; last `show paths`: {last:?}")),
        }
    }

    /// Wait until multipathd sees path `i` (index into [`Multipathd::paths`])
    /// up (`true`) or not up (`false`); returns how long it took.
    pub fn wait_path_up(&self, i: usize, up: bool, timeout: Duration) -> Result<Duration> {
        let name = self.paths[i].name();
        self.wait_paths(
            &format!(
                "multipathd to see {name} {}",
                if up { "up" } else { "down" }
            ),
            timeout,
            |ps| ps.iter().any(|p| p.dev == name && p.is_up() == up),
        )
    }

    /// `dmsetup status` of the map, parsed.
    pub fn dm_path_states(&self) -> Result<Vec<DmPathState>> {
        parse_dm_status(&run_ok("dmsetup", &["status", &self.wwid])?.stdout)
    }

    /// [`PRKEYS_FILE`]'s contents.
    pub fn prkeys_file(&self) -> String {
        prkeys_file()
    }

    /// The key the prkeys file has for this map, if any.
    pub fn prkeys_entry(&self) -> Option<(u64, bool)> {
        prkeys_lookup(&prkeys_file(), &self.wwid)
    }

    /// The last `lines` lines of multipathd's log (-v3).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// multipathd's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop everything now, reporting errors (drop does the same, printing them).
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut errors = Vec::new();
        if let Some(child) = self.multipathd.take() {
            if let Err(e) = stop_child(child, "multipathd") {
                errors.push(e);
            }
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
        // Flush our map only (a plain `multipath -F` would flush every
        // multipath map, dmsetup ones included).
        if !self.wwid.is_empty() && dm_exists(&self.wwid) {
            let o = run("multipath", &["-f", &self.wwid]);
            if !matches!(o, Ok(ref o) if o.status == 0) || dm_exists(&self.wwid) {
                if let Err(e) = remove_dm(&self.wwid) {
                    errors.push(e);
                }
            }
        }
        if let Some(child) = self.udevd.take() {
            let _ = run("udevadm", &["control", "--exit"]);
            if let Err(e) = stop_child(child, "systemd-udevd") {
                errors.push(e);
            }
        }
        if self.overlay {
            let mut ok = false;
            for _ in 0..20 {
                if !etc_is_our_overlay() {
                    ok = true;
                    break;
                }
                match run("umount", &["/etc"]) {
                    Ok(o) if o.status == 0 => {}
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            if !ok {
                let _ = run("umount", &["-l", "/etc"]);
                errors.push("/etc overlay busy: lazily unmounted".to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Multipathd {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("mpath: stopping multipathd: {e}");
        }
    }
}

fn multipath_conf(wwid: &str, excluded_disks: &[String], extra_defaults: &[&str]) -> String {
    let mut s = String::from(
        "# Written by the prhelper lab (mpath::Multipathd).\n\
         defaults {\n\
         \x20   user_friendly_names no\n\
         \x20   find_multipaths no\n\
         \x20   reservation_key file\n\
         \x20   polling_interval 1\n",
    );
    for l in extra_defaults {
        s.push_str(&format!("    {l}\n"));
    }
    s.push_str("}\nblacklist {\n    wwid \".*\"\n");
    for d in excluded_disks {
        s.push_str(&format!("    devnode \"^{d}$\"\n"));
    }
    s.push_str(&format!(
        "}}\nblacklist_exceptions {{\n    wwid \"^{wwid}$\"\n}}\n\
         overrides {{\n    no_path_retry fail\n}}\n"
    ));
    s
}

fn etc_is_our_overlay() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(4) == Some(&"/etc") && l.contains(" - overlay lab-mpath-etc ")
        })
}

fn dm_exists(name: &str) -> bool {
    run("dmsetup", &["info", name]).is_ok_and(|o| o.status == 0)
}

fn stop_child(mut child: Child, what: &str) -> Result<()> {
    let pid = child.id() as libc::pid_t;
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} ignored SIGTERM for 10 s; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// READ FULL STATUS, parsed
// ---------------------------------------------------------------------------

/// One registration in READ FULL STATUS (sg_persist's or mpathpersist's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    pub all_tg_pt: bool,
    /// RELATIVE TARGET PORT IDENTIFIER.
    pub rel_port: u16,
    /// This I_T nexus holds the reservation.
    pub holder: bool,
    /// Reservation type text when `holder` ("Write Exclusive, registrants only").
    pub res_type: Option<String>,
    /// The initiator's SAS address "0x5001405…" (tcm_loop's TransportIDs).
    pub sas_address: Option<String>,
}

impl Registration {
    /// Which leg of `lun` this registration belongs to (by initiator).
    pub fn leg(&self, lun: &SharedLun) -> Option<usize> {
        let sas = self.sas_address.as_deref()?;
        lun.targets
            .iter()
            .position(|t| t.initiator_sas_address().eq_ignore_ascii_case(sas))
    }
}

/// Parse READ FULL STATUS as `sg_persist -s` or `mpathpersist -i -s` print it.
pub fn parse_full_status(text: &str) -> Result<Vec<Registration>> {
    let mut out: Vec<Registration> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Key=").or_else(|| l.strip_prefix("Key = ")) {
            let hex = rest.trim().trim_start_matches("0x");
            let key = u64::from_str_radix(hex, 16).map_err(|e| format!("bad key {l:?}: {e}"))?;
            out.push(Registration {
                key,
                all_tg_pt: false,
                rel_port: 0,
                holder: false,
                res_type: None,
                sas_address: None,
            });
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if l.starts_with("All target ports bit set") {
            r.all_tg_pt = true;
        } else if let Some(p) = l.strip_prefix("Relative port address: ") {
            r.rel_port = u16::from_str_radix(p.trim().trim_start_matches("0x"), 16)
                .map_err(|e| format!("bad port {l:?}: {e}"))?;
        } else if l.contains("<< Reservation holder >>") {
            r.holder = true;
        } else if let Some((_, t)) = l.split_once("type: ").filter(|_| l.starts_with("scope:")) {
            r.res_type = Some(t.trim().to_string());
        } else if let Some(a) = l.strip_prefix("SAS address: ") {
            r.sas_address = Some(a.trim().to_ascii_lowercase());
        } else if let Some(bytes) = l.strip_prefix("SAS ") {
            // mpathpersist: "SAS         50 01 40 50 00 00 00 a1"
            let hex: String = bytes.split_whitespace().collect();
            r.sas_address = Some(format!("0x{}", hex.to_ascii_lowercase()));
        }
    }
    Ok(out)
}

/// LIO's view: READ FULL STATUS with `sg_persist -s` through leg `observer`
/// of `lun` (an initiator outside the map), retried past UNIT ATTENTIONs.
pub fn lio_view(lun: &SharedLun, observer: usize) -> Result<Vec<Registration>> {
    let disk = &lun.device(observer).disk;
    let mut last = None;
    for _ in 0..4 {
        let o = crate::sg::sg_persist(disk, &["--in", "--read-full-status"])?;
        if o.status == 0 {
            return parse_full_status(&o.stdout);
        }
        last = Some(o);
    }
    Err(last.map(|o| o.describe()).unwrap_or_default())
}

/// The legs (sorted) registered with `key` in `regs`.
pub fn legs_with_key(regs: &[Registration], lun: &SharedLun, key: u64) -> Vec<usize> {
    let mut legs: Vec<usize> = regs
        .iter()
        .filter(|r| r.key == key)
        .filter_map(|r| r.leg(lun))
        .collect();
    legs.sort();
    legs
}

// ---------------------------------------------------------------------------
// mpathpersist
// ---------------------------------------------------------------------------

/// Debian's `mpathpersist` (multipath-tools 0.9.4) on a multipath map. It
/// needs multipathd for `reservation_key file` ([`Multipathd`]). Exit
/// statuses are libmpathpersist's MPATH_PR_* codes.
pub mod persist {
    use super::{parse_full_status, Registration};
    use crate::util::{run, Output};
    use crate::{bail, Result};
    use std::path::Path;

    pub const SUCCESS: i32 = 0;
    pub const SYNTAX_ERROR: i32 = 1;
    pub const SENSE_NOT_READY: i32 = 2;
    pub const ILLEGAL_REQ: i32 = 5;
    pub const UNIT_ATTENTION: i32 = 6;
    pub const RESERV_CONFLICT: i32 = 11;
    pub const FILE_ERROR: i32 = 12;
    pub const DMMP_ERROR: i32 = 13;
    pub const OTHER: i32 = 15;

    /// `/usr/sbin/mpathpersist ARGS DEV`, no assertion on the outcome.
    pub fn mpathpersist(dev: &Path, args: &[&str]) -> Result<Output> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push(dev.to_string_lossy().into_owned());
        run("mpathpersist", &all)
    }

    fn hex(k: u64) -> String {
        format!("0x{k:x}")
    }

    /// REGISTER: `rk` the current key (0 for a new registration), `sark`
    /// the new one (0 unregisters).
    pub fn register(dev: &Path, rk: u64, sark: u64) -> Result<Output> {
        mpathpersist(
            dev,
            &[
                "--out",
                "--register",
                &format!("--param-rk={}", hex(rk)),
                &format!("--param-sark={}", hex(sark)),
            ],
        )
    }

    /// REGISTER AND IGNORE EXISTING KEY with `sark`.
    pub fn register_ignore(dev: &Path, sark: u64) -> Result<Output> {
        mpathpersist(
            dev,
            &[
                "--out",
                "--register-ignore",
                &format!("--param-sark={}", hex(sark)),
            ],
        )
    }

    /// RESERVE with `key` and `prout_type`.
    pub fn reserve(dev: &Path, key: u64, prout_type: u8) -> Result<Output> {
        mpathpersist(
            dev,
            &[
                "--out",
                "--reserve",
                &format!("--param-rk={}", hex(key)),
                &format!("--prout-type={prout_type}"),
            ],
        )
    }

    /// RELEASE with `key` and `prout_type`.
    pub fn release(dev: &Path, key: u64, prout_type: u8) -> Result<Output> {
        mpathpersist(
            dev,
            &[
                "--out",
                "--release",
                &format!("--param-rk={}", hex(key)),
                &format!("--prout-type={prout_type}"),
            ],
        )
    }

    /// CLEAR with `key`.
    pub fn clear(dev: &Path, key: u64) -> Result<Output> {
        mpathpersist(
            dev,
            &["--out", "--clear", &format!("--param-rk={}", hex(key))],
        )
    }

    /// PREEMPT `sark`'s registrations (and reservation) with `key`.
    pub fn preempt(dev: &Path, key: u64, sark: u64, prout_type: u8) -> Result<Output> {
        mpathpersist(
            dev,
            &[
                "--out",
                "--preempt",
                &format!("--param-rk={}", hex(key)),
                &format!("--param-sark={}", hex(sark)),
                &format!("--prout-type={prout_type}"),
            ],
        )
    }

    /// The "PR generation=0x…" value in mpathpersist's or sg_persist's output.
    pub fn parse_generation(text: &str) -> Option<u32> {
        let rest = text.split_once("PR generation=0x")?.1;
        let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        u32::from_str_radix(&hex, 16).ok()
    }

    /// Parse READ KEYS output: the `0x…` lines.
    pub fn parse_keys(text: &str) -> Result<Vec<u64>> {
        if text.contains("there are NO registered reservation keys") {
            return Ok(Vec::new());
        }
        if !text.contains("registered reservation key") {
            bail!("unexpected mpathpersist --read-keys output:\n{text}");
        }
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("0x"))
            .map(|l| u64::from_str_radix(&l[2..], 16).map_err(|e| format!("bad key {l:?}: {e}")))
            .collect()
    }

    /// Parse READ RESERVATION output: the holder's key and the type text
    /// ("Write Exclusive, registrants only"), or None.
    pub fn parse_reservation(text: &str) -> Result<Option<(u64, String)>> {
        if text.contains("there is NO reservation held") {
            return Ok(None);
        }
        let key = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Key = 0x"))
            .ok_or_else(|| format!("no `Key = ` in:\n{text}"))?;
        let key = u64::from_str_radix(key.trim(), 16).map_err(|e| e.to_string())?;
        let kind = text
            .lines()
            .find_map(|l| l.split_once("type = ").map(|(_, t)| t.trim().to_string()))
            .unwrap_or_default();
        Ok(Some((key, kind)))
    }

    /// READ KEYS: (exit status, keys; empty unless the status is 0).
    pub fn read_keys(dev: &Path) -> Result<(i32, Vec<u64>)> {
        let o = mpathpersist(dev, &["--in", "--read-keys"])?;
        if o.status != 0 {
            return Ok((o.status, Vec::new()));
        }
        Ok((0, parse_keys(&o.stdout)?))
    }

    /// READ RESERVATION: (exit status, reservation).
    pub fn read_reservation(dev: &Path) -> Result<(i32, Option<(u64, String)>)> {
        let o = mpathpersist(dev, &["--in", "--read-reservation"])?;
        if o.status != 0 {
            return Ok((o.status, None));
        }
        Ok((0, parse_reservation(&o.stdout)?))
    }

    /// READ FULL STATUS: (exit status, registrations).
    pub fn read_full_status(dev: &Path) -> Result<(i32, Vec<Registration>)> {
        let o = mpathpersist(dev, &["--in", "--read-full-status"])?;
        if o.status != 0 {
            return Ok((o.status, Vec::new()));
        }
        Ok((0, parse_full_status(&o.stdout)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dm_status() {
        let st = "3600140: 0 131072 multipath 2 0 1 0 1 1 A 0 2 2 8:0 F 1 0 1 8:16 A 0 0 1 ";
        let p = parse_dm_status(st).unwrap();
        assert_eq!(
            p,
            vec![
                DmPathState {
                    dev_t: "8:0".into(),
                    active: false,
                    fail_count: 1
                },
                DmPathState {
                    dev_t: "8:16".into(),
                    active: true,
                    fail_count: 0
                },
            ]
        );
        let rr = "0 65536 multipath 2 0 0 0 1 1 A 0 2 1 8:0 A 0 0 8:16 A 0 0";
        let p = parse_dm_status(rr).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|s| s.active));
        assert!(parse_dm_status("0 1 multipath 2 0").is_err());
    }

    #[test]
    fn parses_full_status() {
        let sg = "  LIO-ORG   FILEIO            4.0 \n  Peripheral device type: disk\n  PR generation=0x2\n    Key=0xabc\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive, registrants only\n      Transport Id of initiator:\n        SAS address: 0x50014050000000a1\n    Key=0xabc\n      All target ports bit set\n      Relative port address: 0x2\n      not reservation holder\n      Transport Id of initiator:\n        SAS address: 0x50014050000000a2\n";
        let r = parse_full_status(sg).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].key, 0xabc);
        assert!(r[0].holder && !r[0].all_tg_pt);
        assert_eq!(
            r[0].res_type.as_deref(),
            Some("Write Exclusive, registrants only")
        );
        assert_eq!(r[0].sas_address.as_deref(), Some("0x50014050000000a1"));
        assert!(!r[1].holder && r[1].all_tg_pt && r[1].rel_port == 2);
        let mp = "  PR generation=0x2 \n   Key = 0xabc\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive, registrants only\n   SAS         50 01 40 50 00 00 00 a1\n   Key = 0xabc\n      All target ports bit clear\n      Relative port address: 0x2\n      not reservation holder\n   SAS         50 01 40 50 00 00 00 a2\n";
        let m = parse_full_status(mp).unwrap();
        assert_eq!(
            m,
            r.iter()
                .cloned()
                .map(|mut x| {
                    x.all_tg_pt = false;
                    x
                })
                .collect::<Vec<_>>()
        );
        assert!(parse_full_status("  No full status descriptors\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn parses_mpathpersist_in() {
        let keys =
            "  PR generation=0x2, \t2 registered reservation keys follow:\n    0xabc\n    0xabc\n";
        assert_eq!(persist::parse_keys(keys).unwrap(), vec![0xabc, 0xabc]);
        assert_eq!(persist::parse_generation(keys), Some(2));
        let res = "  PR generation=0x2, Reservation follows:\n   Key = 0xabc\n  scope = LU_SCOPE, type = Write Exclusive, registrants only\n";
        assert_eq!(
            persist::parse_reservation(res).unwrap(),
            Some((0xabc, "Write Exclusive, registrants only".into()))
        );
        let none = "  PR generation=0x2, there is NO reservation held \n";
        assert_eq!(persist::parse_reservation(none).unwrap(), None);
    }

    #[test]
    fn prkeys() {
        let f = "# Multipath persistent reservation keys, Version : 1.0\n#\n#x0000000000000123 36001405aa\n0x0000000000000abc 36001405bb\n0X0000000000000def 36001405cc\n";
        assert_eq!(prkeys_lookup(f, "36001405aa"), None);
        assert_eq!(prkeys_lookup(f, "36001405bb"), Some((0xabc, false)));
        assert_eq!(prkeys_lookup(f, "36001405cc"), Some((0xdef, true)));
    }

    #[test]
    fn conf_excludes_legs() {
        let c = multipath_conf("36001405ab", &["sdc".into()], &["max_polling_interval 2"]);
        assert!(c.contains("reservation_key file"));
        assert!(c.contains("devnode \"^sdc$\""));
        assert!(c.contains("wwid \"^36001405ab$\""));
        assert!(c.contains("    max_polling_interval 2\n"));
    }
}
