// SPDX-License-Identifier: MIT OR Apache-2.0
//! A real multipathd (with udevd) in the lab VM, making the map itself.

use super::{
    block_dev_node, disk_name, lun_wwid, multipathd_cmd, multipathd_socket_cmd,
    multipathd_socket_cmd_at, parse_devnum, parse_dm_status, prkeys_file, prkeys_lookup, remove_dm,
    DmPathState, MpathdPath, PathDev, PRKEYS_FILE,
};
use crate::lio::SharedLun;
use crate::util::{all_ok, exited, mkdir_all, read_attr, run, run_ok, wait_for};
use crate::{bail, ensure, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the writable /etc overlay lives while a [`Multipathd`] runs.
const OVERLAY_DIR: &str = "/run/lab-mpath/etc";

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
                    if let Some(st) = exited(child)? {
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
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
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
        all_ok(errors)
    }
}

impl Drop for Multipathd {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("mpath: stopping multipathd: {e}");
        }
    }
}

pub(super) fn multipath_conf(
    wwid: &str,
    excluded_disks: &[String],
    extra_defaults: &[&str],
) -> String {
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
        if exited(&mut child)?.is_some() {
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
