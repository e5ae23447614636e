// SPDX-License-Identifier: MIT OR Apache-2.0
//! dm-multipath maps: PR commands go to the map's path devices themselves (each path is
//! its own I_T nexus; SG_IO on the map reaches only the current path), routed as
//! [`route`] says, and multipathd learns the registered key.
//!
//! Per command on a block device whose major is device-mapper's: DM_TABLE_STATUS (status
//! lines) on /dev/mapper/control tells whether it is a multipath map and its paths with
//! their states; without the control node (no CAP_SYS_ADMIN), sysfs tells (uuid `mpath-`,
//! `slaves/`), with every path assumed usable. Anything else goes to plain SG_IO.
//!
//! When none of a map's paths can be opened (a private /dev without them, a device
//! cgroup that denies them: libvirt with the disk named `/dev/dm-N`), the command goes
//! to the map itself, which reaches its current path as the C helper's plain SG_IO does,
//! and the daemon warns once per map saying what to configure.
//! See docs/multipath.md for the choices and what differs from libmpathpersist.

pub mod multipathd;
mod recover;
pub mod route;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::stat::{fstat, major, makedev, minor};
use tracing::{debug, info, warn};

use crate::dev::{verdict, Backend, Device, Outcome, SgIo};
use crate::proto::multipathd::{self as mpwire, Reply};
use crate::scsi::sense::Sense;
use crate::scsi::Status;
use crate::sys::dm;
use crate::sys::sgio::{self, Data};
use route::{Answer, Class, Context, Effect, Paths};
use status::PathState;

/// Where a map's facts came from.
#[derive(Debug)]
struct Map {
    dev: libc::dev_t,
    /// The name multipathd knows it by (dm name).
    name: String,
    paths: Vec<PathState>,
}

/// The multipath-aware backend: plain SG_IO for everything that is not a multipath map.
pub struct Multipath {
    plain: SgIo,
    dm_major: Option<u64>,
    ctl: Option<OwnedFd>,
    mpathd: Option<multipathd::Multipathd>,
    /// The key this process last registered per map (REGISTER AND IGNORE does not say
    /// which key it replaces).
    keys: Mutex<HashMap<libc::dev_t, u64>>,
    warned_mpathd: AtomicBool,
    warned_setprkey: AtomicBool,
    /// Maps already warned about because none of their paths could be opened.
    warned_unopenable: WarnOnce,
}

/// Remembers which maps were warned about (once per map and process).
#[derive(Debug, Default)]
struct WarnOnce(Mutex<HashSet<libc::dev_t>>);

impl WarnOnce {
    /// True the first time for `dev`.
    fn first(&self, dev: libc::dev_t) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(dev)
    }
}

/// device-mapper's block major, from /proc/devices.
pub fn dm_major() -> Option<u64> {
    let text = fs::read_to_string("/proc/devices").ok()?;
    let block = text.split("Block devices:").nth(1)?;
    block.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let n = it.next()?.parse().ok()?;
        (it.next()? == "device-mapper").then_some(n)
    })
}

impl Multipath {
    /// Set up at start-up (before privileges are dropped and the sandbox is entered):
    /// opens /dev/mapper/control and connects to multipathd when possible.
    pub fn new(plain: SgIo, use_multipathd: bool) -> Multipath {
        let dm_major = dm_major();
        let ctl = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/mapper/control")
            .map(OwnedFd::from);
        let ctl = match ctl {
            Ok(c) => Some(c),
            Err(e) => {
                info!("multipath: /dev/mapper/control unavailable ({e}); finding paths through sysfs, all assumed usable");
                None
            }
        };
        let mpathd = use_multipathd.then(multipathd::Multipathd::new);
        if let Some(m) = &mpathd {
            match m.connect_now() {
                Ok(()) => debug!("multipath: connected to multipathd"),
                Err(e) => debug!("multipath: no multipathd connection at start-up: {e}"),
            }
        }
        Multipath {
            plain,
            dm_major,
            ctl,
            mpathd,
            keys: Mutex::default(),
            warned_mpathd: AtomicBool::new(false),
            warned_setprkey: AtomicBool::new(false),
            warned_unopenable: WarnOnce::default(),
        }
    }

    /// The map behind `fd`, if it is a dm-multipath map.
    fn map_of(&self, dev: Device<'_>) -> Option<Map> {
        let dm_major = self.dm_major?;
        let dev = dev.block.filter(|&rdev| major(rdev) == dm_major)?;
        match &self.ctl {
            Some(ctl) => match dm::table_status(ctl.as_fd(), dev, false) {
                Ok(info) => {
                    let t = info.targets.iter().find(|t| t.target_type == "multipath")?;
                    match status::parse(&t.params) {
                        Some(paths) => Some(Map {
                            dev,
                            name: info.name,
                            paths,
                        }),
                        None => {
                            warn!(
                                "multipath: cannot parse the status of dm {}:{}: {:?}",
                                major(dev),
                                minor(dev),
                                t.params
                            );
                            None
                        }
                    }
                }
                Err(e) => {
                    warn!("multipath: DM_TABLE_STATUS on {}:{} failed: {e}; sending to the map itself", major(dev), minor(dev));
                    None
                }
            },
            None => map_from_sysfs(dev),
        }
    }

    fn notify(&self, map: &Map, effect: Effect) {
        let Some(m) = &self.mpathd else { return };
        let name = map.name.as_str();
        let cmds: Vec<String> = match effect {
            Effect::None => return,
            Effect::Registered { key, aptpl } => vec![
                mpwire::setprkey(name, key, aptpl),
                mpwire::map_cmd("setprstatus", name),
            ],
            Effect::Unregistered | Effect::Cleared => vec![
                mpwire::map_cmd("unsetprstatus", name),
                mpwire::map_cmd("unsetprkey", name),
            ],
            Effect::Reserved => vec![mpwire::map_cmd("setprhold", name)],
            Effect::Released => vec![mpwire::map_cmd("unsetprhold", name)],
        };
        for cmd in cmds {
            match m.command(&cmd) {
                Ok(Reply::Ok) => debug!("multipathd: {cmd}: ok"),
                Ok(r) => {
                    let verb = cmd.split(' ').next().unwrap_or("");
                    if verb == "setprkey" && !self.warned_setprkey.swap(true, Ordering::Relaxed) {
                        warn!("multipathd refused '{cmd}' ({r:?}): set 'reservation_key file' in multipath.conf so that multipathd registers paths that come back");
                    } else if verb.contains("prhold") {
                        // multipathd before 0.13 has no prhold: nothing to do.
                        debug!("multipathd: {cmd}: {r:?}");
                    } else {
                        debug!("multipathd: {cmd}: {r:?}");
                    }
                }
                Err(e) => {
                    if !self.warned_mpathd.swap(true, Ordering::Relaxed) {
                        warn!("multipathd not reachable ({e}): paths that come back will not be registered by it");
                    } else {
                        debug!("multipathd: {cmd}: {e}");
                    }
                    return;
                }
            }
        }
    }
}

/// A map found through sysfs only (no control node).
fn map_from_sysfs(dev: libc::dev_t) -> Option<Map> {
    let base = format!("/sys/dev/block/{}:{}", major(dev), minor(dev));
    let uuid = fs::read_to_string(format!("{base}/dm/uuid")).ok()?;
    if !uuid.starts_with("mpath-") {
        return None;
    }
    let name = fs::read_to_string(format!("{base}/dm/name"))
        .ok()?
        .trim()
        .to_string();
    let mut paths = Vec::new();
    for e in fs::read_dir(format!("{base}/slaves")).ok()?.flatten() {
        let devno = fs::read_to_string(e.path().join("dev")).ok()?;
        let (ma, mi) = devno.trim().split_once(':')?;
        paths.push(PathState {
            major: ma.parse().ok()?,
            minor: mi.parse().ok()?,
            active: true,
            group: 0,
            group_active: true,
        });
    }
    paths.sort_by_key(|p| (p.major, p.minor));
    Some(Map { dev, name, paths })
}

/// One path, opened for this command.
struct OpenPath {
    fd: Result<OwnedFd, i32>,
    host: Option<u32>,
}

/// Open a path device by number: /dev/<kernel name>, checked to be that device.
fn open_path(p: &PathState) -> OpenPath {
    let sys = format!("/sys/dev/block/{}:{}", p.major, p.minor);
    let host = fs::read_link(format!("{sys}/device"))
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.split(':').next()?.parse().ok());
    let want = makedev(u64::from(p.major), u64::from(p.minor));
    let mut candidates = Vec::new();
    if let Some(name) = fs::read_link(&sys)
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_owned()))
    {
        candidates.push(std::path::Path::new("/dev").join(name));
    }
    candidates.push(format!("/dev/block/{}:{}", p.major, p.minor).into());
    let mut err = libc::ENODEV;
    for c in candidates {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&c);
        match f {
            Ok(f) => match fstat(f.as_raw_fd()) {
                Ok(st) if st.st_rdev == want => {
                    return OpenPath {
                        fd: Ok(f.into()),
                        host,
                    }
                }
                _ => debug!(
                    "multipath: {} is not device {}:{}",
                    c.display(),
                    p.major,
                    p.minor
                ),
            },
            Err(e) => err = e.raw_os_error().unwrap_or(libc::ENODEV),
        }
    }
    OpenPath { fd: Err(err), host }
}

/// A map's paths for one command.
struct MapPaths<'a> {
    map: &'a Map,
    open: Vec<OpenPath>,
    order: Vec<usize>,
    ctl: Option<BorrowedFd<'a>>,
    timeout_ms: u32,
}

impl Paths for MapPaths<'_> {
    fn len(&self) -> usize {
        self.map.paths.len()
    }
    fn order(&self) -> Vec<usize> {
        self.order.clone()
    }
    fn usable(&self, i: usize) -> bool {
        self.map.paths[i].active
    }
    fn host(&self, i: usize) -> Option<u32> {
        self.open[i].host
    }
    fn run(&self, i: usize, cdb: &[u8; 16], data: Data<'_>) -> Answer {
        let fd = match &self.open[i].fd {
            Ok(fd) => fd,
            Err(errno) => {
                let v = verdict::from_errno(*errno);
                let outcome = Outcome {
                    status: v.status,
                    sense: v.sense.map(Sense::fixed).unwrap_or_default(),
                    len: 0,
                };
                return Answer {
                    outcome,
                    class: Class::PathError,
                };
            }
        };
        let mut sense_buf = [0u8; 96];
        let r = sgio::sg_io(fd.as_fd(), cdb, data, &mut sense_buf, self.timeout_ms);
        let class = route::classify(&r.outcome, &sense_buf);
        let verdict = verdict::interpret(&r.outcome);
        let outcome = Outcome {
            status: verdict.status,
            sense: verdict.sense.map(Sense::fixed).unwrap_or(Sense(sense_buf)),
            len: if verdict.status == Status::GOOD {
                r.transferred
            } else {
                0
            },
        };
        let p = &self.map.paths[i];
        debug!(
            "multipath {}: path {}:{} → {:?}",
            self.map.name, p.major, p.minor, class
        );
        Answer { outcome, class }
    }
    fn suspend(&self) -> bool {
        let Some(ctl) = self.ctl else { return false };
        match dm::suspend_noflush(ctl, self.map.dev) {
            Ok(()) => true,
            Err(e) => {
                warn!("multipath {}: cannot suspend the map: {e}", self.map.name);
                false
            }
        }
    }
    fn resume(&self) {
        if let Some(ctl) = self.ctl {
            if let Err(e) = dm::resume(ctl, self.map.dev) {
                warn!("multipath {}: cannot resume the map: {e}", self.map.name);
            }
        }
    }
}

impl Multipath {
    fn paths<'a>(&'a self, map: &'a Map) -> MapPaths<'a> {
        MapPaths {
            map,
            open: map.paths.iter().map(open_path).collect(),
            order: status::preference(&map.paths),
            ctl: self.ctl.as_ref().map(|c| c.as_fd()),
            timeout_ms: self.plain.timeout_ms,
        }
    }
}

impl Multipath {
    /// True when the command must go to the map itself because none of its paths could be
    /// opened; warns the first time for this map.
    fn send_to_map(&self, map: &Map, paths: &MapPaths<'_>) -> bool {
        if !unopenable(&paths.open) {
            return false;
        }
        if self.warned_unopenable.first(map.dev) {
            warn!("{}", unopenable_hint(map, &paths.open));
        } else {
            debug!(
                "multipath {}: no path device can be opened; sending to the map",
                map.name
            );
        }
        true
    }
}

/// None of the paths could be opened (and there is at least one).
fn unopenable(open: &[OpenPath]) -> bool {
    !open.is_empty() && open.iter().all(|o| o.fd.is_err())
}

/// The warning for a map whose paths cannot be opened: what happened, what it costs,
/// what to configure.
fn unopenable_hint(map: &Map, open: &[OpenPath]) -> String {
    let errs: Vec<String> = map
        .paths
        .iter()
        .zip(open)
        .map(|(p, o)| {
            let e = o.fd.as_ref().err().copied().unwrap_or(0);
            format!(
                "{}:{} ({})",
                p.major,
                p.minor,
                std::io::Error::from_raw_os_error(e)
            )
        })
        .collect();
    format!(
        "multipath {} (dm {}:{}): none of its path devices can be opened: {}; sending PR \
         commands to the map itself, which reaches only its current path (other paths get \
         no registration, as with the C helper's plain SG_IO). Give the helper the path \
         devices: under libvirt name the disk /dev/mapper/{} (not /dev/dm-N) so that libvirt \
         puts the paths into the domain's /dev and device cgroup; in a container, mount the \
         host's /dev",
        map.name,
        major(map.dev),
        minor(map.dev),
        errs.join(", "),
        map.name
    )
}

impl Backend for Multipath {
    fn pr_in(&self, dev: Device<'_>, cdb: &[u8; 16], buf: &mut [u8]) -> Outcome {
        let Some(map) = self.map_of(dev) else {
            return self.plain.pr_in(dev, cdb, buf);
        };
        let paths = self.paths(&map);
        if self.send_to_map(&map, &paths) {
            return self.plain.pr_in(dev, cdb, buf);
        }
        route::pr_in(&paths, cdb, buf)
    }

    fn pr_out(&self, dev: Device<'_>, cdb: &[u8; 16], params: &[u8]) -> Outcome {
        let Some(map) = self.map_of(dev) else {
            return self.plain.pr_out(dev, cdb, params);
        };
        let paths = self.paths(&map);
        if self.send_to_map(&map, &paths) {
            return self.plain.pr_out(dev, cdb, params);
        }
        let known_key = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&map.dev)
            .copied()
            .or_else(|| self.key_from_multipathd(&map, cdb));
        let (o, effect) = route::pr_out(&paths, cdb, params, Context { known_key });
        {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            match effect {
                Effect::Registered { key, .. } => {
                    keys.insert(map.dev, key);
                }
                Effect::Unregistered | Effect::Cleared => {
                    keys.remove(&map.dev);
                }
                _ => {}
            }
        }
        self.notify(&map, effect);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(major: u32, minor: u32) -> PathState {
        PathState {
            major,
            minor,
            active: true,
            group: 0,
            group_active: true,
        }
    }

    fn opened() -> OpenPath {
        OpenPath {
            fd: Ok(fs::File::open("/dev/null").unwrap().into()),
            host: None,
        }
    }

    fn failed(errno: i32) -> OpenPath {
        OpenPath {
            fd: Err(errno),
            host: None,
        }
    }

    #[test]
    fn map_only_when_no_path_opens() {
        assert!(unopenable(&[failed(libc::ENOENT), failed(libc::EPERM)]));
        assert!(!unopenable(&[failed(libc::ENOENT), opened()]));
        assert!(!unopenable(&[opened(), opened()]));
        // No paths at all: nothing to send to but the router's "no path" answer.
        assert!(!unopenable(&[]));
    }

    #[test]
    fn warns_once_per_map() {
        let w = WarnOnce::default();
        let (a, b) = (makedev(254, 0), makedev(254, 1));
        assert!(w.first(a));
        assert!(!w.first(a));
        assert!(w.first(b));
        assert!(!w.first(b));
        assert!(!w.first(a));
    }

    #[test]
    fn hint_names_the_map_paths_and_fix() {
        let map = Map {
            dev: makedev(254, 3),
            name: "mpatha".into(),
            paths: vec![path(8, 16), path(8, 32)],
        };
        let h = unopenable_hint(&map, &[failed(libc::ENOENT), failed(libc::EPERM)]);
        assert!(h.contains("multipath mpatha (dm 254:3)"), "{h}");
        assert!(h.contains("8:16 (No such file or directory"), "{h}");
        assert!(h.contains("8:32 (Operation not permitted"), "{h}");
        assert!(h.contains("/dev/mapper/mpatha (not /dev/dm-N)"), "{h}");
        assert!(h.contains("the map itself"), "{h}");
    }

    #[test]
    fn unopenable_real_paths_fall_back() {
        // A major:minor that names no device: open_path finds no node.
        let p = path(4000, 4000);
        let o = open_path(&p);
        assert!(o.fd.is_err());
        let mp = Multipath::new(SgIo { timeout_ms: 1000 }, false);
        let map = Map {
            dev: makedev(254, 77),
            name: "nopaths".into(),
            paths: vec![p],
        };
        let paths = mp.paths(&map);
        assert!(mp.send_to_map(&map, &paths));
        assert!(mp.send_to_map(&map, &paths), "still the map, warned once");
        assert!(!mp.warned_unopenable.first(map.dev));
    }
}
