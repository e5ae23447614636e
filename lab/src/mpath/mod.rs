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
use crate::util::{read_attr, wait_for, write_attr};
use crate::{bail, ensure, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod control;
mod lio_view;
mod map;
mod multipathd;
pub mod persist;
#[cfg(test)]
mod tests;

pub use control::*;
pub use lio_view::*;
pub use map::*;
pub use multipathd::*;

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
