// SPDX-License-Identifier: MIT OR Apache-2.0
//! The kernel's SCSI target (LIO) over configfs, with the loopback fabric
//! (tcm_loop): real SCSI disks with full SPC-4 persistent reservations.
//!
//! The layout used here:
//!
//! ```text
//! /sys/kernel/config/target/
//!   dbroot                               where LIO keeps PR state; set it first
//!   core/fileio_N/NAME/                  a Backstore: an image file on /tmp
//!   loopback/naa.T/tpgt_1/               a Target: one tcm_loop SCSI host
//!     nexus                              the initiator's WWN (the I_T nexus)
//!     transport_status                   online / offline (a path going down)
//!     lun/lun_0/lio_lun -> core/...      the Backstore mapped as LUN 0
//! ```
//!
//! Each [`Target`] appears as its own SCSI host with one disk (`/dev/sdX`) and
//! its generic node (`/dev/sgN`), found through sysfs from the target's
//! `address` attribute. Several targets on one backstore are several
//! initiators (or several paths, for dm-multipath) to the same logical unit:
//! registrations and reservations made through one are seen through all.
//!
//! Everything is torn down on drop (best effort; errors are printed). Drop
//! targets before their backstore: [`SharedLun`] does that for you.

use crate::util::{mkdir_all, read_attr, wait_for, write_attr};
use crate::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Root of LIO's configfs tree.
pub const TARGET_ROOT: &str = "/sys/kernel/config/target";

/// Default directory for LIO's persistent state (`dbroot`) in the lab VM.
pub const DEFAULT_DBROOT: &str = "/tmp/lab-lio/dbroot";

/// How long to wait for a new LUN's /dev nodes.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);

fn target_root() -> &'static Path {
    Path::new(TARGET_ROOT)
}

/// Point LIO's `dbroot` at `dir` (created, with the `pr` subdirectory where
/// LIO writes APTPL state). Without a writable dbroot every PR OUT REGISTER
/// fails with NOT READY. It can only change while no backstore exists; if it
/// already names `dir` this does nothing.
pub fn setup_dbroot(dir: &Path) -> Result<()> {
    let attr = target_root().join("dbroot");
    if !attr.exists() {
        bail!(
            "{} missing: target_core_mod not loaded or configfs not mounted (not in the lab VM?)",
            attr.display()
        );
    }
    mkdir_all(&dir.join("pr"))?;
    if read_attr(&attr)? == dir.to_string_lossy() {
        return Ok(());
    }
    write_attr(&attr, &dir.to_string_lossy())
        .map_err(|e| format!("{e} (dbroot can only change while no backstore exists)"))
}

/// [`setup_dbroot`] with [`DEFAULT_DBROOT`].
pub fn setup_default_dbroot() -> Result<()> {
    setup_dbroot(Path::new(DEFAULT_DBROOT))
}

/// A new WWN in LIO's `naa.5001405…` style, unique within this process run.
/// Use it for targets and initiators alike.
pub fn next_wwn() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    naa(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The NAA WWN `naa.5001405` followed by `id` as 9 hex digits.
pub fn naa(id: u64) -> String {
    format!("naa.5001405{:09x}", id & 0xf_ffff_ffff)
}

/// A fileio backstore: an image file on the VM's tmpfs served by LIO.
#[derive(Debug)]
pub struct Backstore {
    name: String,
    hba_dir: PathBuf,
    dev_dir: PathBuf,
    image: PathBuf,
    removed: bool,
}

impl Backstore {
    /// Create and enable a fileio backstore `name` of `size` bytes (a sparse
    /// file `/tmp/lab-lio/NAME.img`), on a fresh `fileio_N` HBA.
    pub fn fileio(name: &str, size: u64) -> Result<Backstore> {
        let core = target_root().join("core");
        let hba_dir = (0..1000)
            .map(|n| core.join(format!("fileio_{n}")))
            .find(|p| !p.exists())
            .ok_or("no free fileio_N HBA index")?;
        let dev_dir = hba_dir.join(name);
        let image = PathBuf::from("/tmp/lab-lio").join(format!("{name}.img"));
        mkdir_all(image.parent().unwrap())?;
        let file = std::fs::File::create(&image)
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        file.set_len(size)
            .map_err(|e| format!("cannot size {}: {e}", image.display()))?;
        drop(file);

        let mut bs = Backstore {
            name: name.to_string(),
            hba_dir,
            dev_dir,
            image,
            removed: false,
        };
        mkdir_all(&bs.dev_dir)?;
        write_attr(
            &bs.dev_dir.join("control"),
            &format!("fd_dev_name={},fd_dev_size={size}", bs.image.display()),
        )?;
        bs.enable()?;
        Ok(bs)
    }

    /// Enable (configure) the device. LIO only accepts `1` here: a backstore
    /// cannot be disabled again, only removed. To make a LUN unreachable
    /// without removing it, take its targets offline ([`Target::set_online`]).
    pub fn enable(&mut self) -> Result<()> {
        let attr = self.dev_dir.join("enable");
        if read_attr(&attr)? == "1" {
            return Ok(());
        }
        write_attr(&attr, "1")
    }

    /// The backstore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configfs directory (`core/fileio_N/NAME`), the link target of LUNs.
    pub fn dev_dir(&self) -> &Path {
        &self.dev_dir
    }

    /// The image file behind it.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Set one of its `attrib/` attributes (e.g. `emulate_pr`).
    pub fn set_attrib(&self, name: &str, value: &str) -> Result<()> {
        write_attr(&self.dev_dir.join("attrib").join(name), value)
    }

    /// Remove the backstore (all LUNs using it must be gone) and its image.
    pub fn remove(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        for dir in [&self.dev_dir, &self.hba_dir] {
            if dir.exists() {
                std::fs::remove_dir(dir)
                    .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            }
        }
        let _ = std::fs::remove_file(&self.image);
        Ok(())
    }
}

impl Drop for Backstore {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lio: teardown of backstore {}: {e}", self.name);
        }
    }
}

/// The Linux SCSI devices that a target's LUN 0 became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDevice {
    /// `host:channel:target:lun`, the name under /sys/bus/scsi/devices.
    pub hctl: String,
    /// The disk, e.g. `/dev/sda`.
    pub disk: PathBuf,
    /// The SCSI generic node, e.g. `/dev/sg0`.
    pub sg: PathBuf,
}

impl ScsiDevice {
    /// The disk's path as a string (for command lines).
    pub fn disk_str(&self) -> String {
        self.disk.to_string_lossy().into_owned()
    }

    /// The sg node's path as a string (for command lines).
    pub fn sg_str(&self) -> String {
        self.sg.to_string_lossy().into_owned()
    }
}

/// A tcm_loop target (`loopback/WWN/tpgt_1`) with one I_T nexus and the
/// backstore mapped as LUN 0.
#[derive(Debug)]
pub struct Target {
    wwn: String,
    initiator: String,
    wwn_dir: PathBuf,
    tpg_dir: PathBuf,
    device: ScsiDevice,
    /// Node ACLs added with [`Target::add_acl`] (their directories).
    acls: Vec<PathBuf>,
    removed: bool,
}

impl Target {
    /// Create target `wwn` whose initiator is `initiator` (both `naa.` WWNs,
    /// see [`next_wwn`]), map `backstore` as LUN 0, and wait for the disk and
    /// sg nodes to appear. The nexus must exist before the LUN: tcm_loop adds
    /// the SCSI device when the LUN is linked.
    pub fn loopback(wwn: &str, initiator: &str, backstore: &Backstore) -> Result<Target> {
        let wwn_dir = target_root().join("loopback").join(wwn);
        let tpg_dir = wwn_dir.join("tpgt_1");
        let mut t = Target {
            wwn: wwn.to_string(),
            initiator: initiator.to_string(),
            wwn_dir,
            tpg_dir,
            device: ScsiDevice {
                hctl: String::new(),
                disk: PathBuf::new(),
                sg: PathBuf::new(),
            },
            acls: Vec::new(),
            removed: false,
        };
        mkdir_all(&t.tpg_dir)?;
        write_attr(&t.tpg_dir.join("nexus"), initiator)?;
        let lun_dir = t.tpg_dir.join("lun/lun_0");
        mkdir_all(&lun_dir)?;
        std::os::unix::fs::symlink(backstore.dev_dir(), lun_dir.join("lio_lun"))
            .map_err(|e| format!("cannot map {} as LUN 0 of {wwn}: {e}", backstore.name()))?;
        t.device = t.find_device()?;
        Ok(t)
    }

    /// Find LUN 0's disk and sg node via sysfs, waiting for them (and their
    /// /dev nodes, made by devtmpfs) to appear.
    fn find_device(&self) -> Result<ScsiDevice> {
        // tcm_loop's `address` attribute is "HOST:CHANNEL:TARGET" (no LUN).
        let address = read_attr(&self.tpg_dir.join("address"))?;
        let hctl = format!("{address}:0");
        let sysdir = PathBuf::from("/sys/bus/scsi/devices").join(&hctl);
        let first_entry = |sub: &str| -> Option<String> {
            std::fs::read_dir(sysdir.join(sub))
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .next()
        };
        wait_for(
            &format!("the disk and sg nodes of {hctl} ({})", self.wwn),
            DEVICE_TIMEOUT,
            || {
                let (Some(block), Some(sg)) = (first_entry("block"), first_entry("scsi_generic"))
                else {
                    return Ok(None);
                };
                let dev = ScsiDevice {
                    hctl: hctl.clone(),
                    disk: PathBuf::from("/dev").join(block),
                    sg: PathBuf::from("/dev").join(sg),
                };
                Ok((dev.disk.exists() && dev.sg.exists()).then_some(dev))
            },
        )
    }

    /// The disk and sg node of LUN 0.
    pub fn device(&self) -> &ScsiDevice {
        &self.device
    }

    /// The target's WWN.
    pub fn wwn(&self) -> &str {
        &self.wwn
    }

    /// The initiator's WWN (the nexus).
    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    /// The initiator WWN as sg_persist prints it in a transport ID
    /// ("SAS address: 0x5001405…").
    pub fn initiator_sas_address(&self) -> String {
        format!("0x{}", self.initiator.trim_start_matches("naa."))
    }

    /// Take the target's path offline (`false`) or back online (`true`). An
    /// offline tcm_loop fails commands with DID_TRANSPORT_DISRUPTED; one that
    /// comes back answers its first command with UNIT ATTENTION 29/07.
    pub fn set_online(&self, online: bool) -> Result<()> {
        write_attr(
            &self.tpg_dir.join("transport_status"),
            if online { "online" } else { "offline" },
        )
    }

    /// Whether the target's path is online.
    pub fn is_online(&self) -> Result<bool> {
        Ok(read_attr(&self.tpg_dir.join("transport_status"))? == "online")
    }

    /// Add a node ACL for `initiator` (a `naa.` WWN with no session) with LUN 0 mapped,
    /// so that a SPEC_I_PT REGISTER through this target can name it: each such
    /// TransportID becomes a registration (an I_T nexus) of its own, without a SCSI host
    /// per initiator. Removed with the target.
    pub fn add_acl(&mut self, initiator: &str) -> Result<()> {
        let acl = self.tpg_dir.join("acls").join(initiator);
        let mapped = acl.join("lun_0");
        mkdir_all(&mapped)?;
        self.acls.push(acl);
        std::os::unix::fs::symlink(self.tpg_dir.join("lun/lun_0"), mapped.join("lun"))
            .map_err(|e| format!("cannot map LUN 0 for ACL {initiator} on {}: {e}", self.wwn))
    }

    /// Unmap the LUN and remove the target (the SCSI host goes away).
    pub fn remove(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        for acl in std::mem::take(&mut self.acls) {
            let mapped = acl.join("lun_0");
            let link = mapped.join("lun");
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)
                    .map_err(|e| format!("cannot unlink {}: {e}", link.display()))?;
            }
            for dir in [&mapped, &acl] {
                if dir.exists() {
                    std::fs::remove_dir(dir)
                        .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
                }
            }
        }
        let lun_dir = self.tpg_dir.join("lun/lun_0");
        let link = lun_dir.join("lio_lun");
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)
                .map_err(|e| format!("cannot unlink {}: {e}", link.display()))?;
        }
        for dir in [&lun_dir, &self.tpg_dir, &self.wwn_dir] {
            if dir.exists() {
                std::fs::remove_dir(dir)
                    .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lio: teardown of target {}: {e}", self.wwn);
        }
    }
}

/// One logical unit reached through several loopback targets: several
/// initiators (or multipath legs) on the same LU. Dropping it removes the
/// targets, then the backstore.
#[derive(Debug)]
pub struct SharedLun {
    // Field order is drop order: targets before the backstore they map.
    pub targets: Vec<Target>,
    pub backstore: Backstore,
}

impl SharedLun {
    /// Set up dbroot ([`DEFAULT_DBROOT`]), a `size`-byte fileio backstore
    /// `name`, and `paths` loopback targets on it, each with its own
    /// initiator WWN.
    pub fn new(name: &str, size: u64, paths: usize) -> Result<SharedLun> {
        setup_default_dbroot()?;
        let backstore = Backstore::fileio(name, size)?;
        let mut lun = SharedLun {
            targets: Vec::new(),
            backstore,
        };
        for _ in 0..paths {
            let target = Target::loopback(&next_wwn(), &next_wwn(), &lun.backstore)?;
            lun.targets.push(target);
        }
        Ok(lun)
    }

    /// The devices of path/initiator `i`.
    pub fn device(&self, i: usize) -> &ScsiDevice {
        self.targets[i].device()
    }
}
