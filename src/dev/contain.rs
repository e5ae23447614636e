// SPDX-License-Identifier: MIT OR Apache-2.0
//! Containment: an fd on part of a logical unit must not reach the whole unit.
//!
//! The kernel lets SG_IO through on a partition, or on a device-mapper map whose target
//! covers only part of the device it forwards the ioctl to, only for callers with
//! CAP_SYS_RAWIO (CVE-2011-4127: `sd_ioctl` refuses partitions, `dm_blk_ioctl` refuses
//! when the target's `prepare_ioctl` says the map is a subset, as dm-linear's and
//! dm-multipath's do unless the target starts at 0 and has the device's size). The helper
//! holds CAP_SYS_RAWIO for every client, so it applies the same rule itself, before any
//! command is sent: a client holding only a partition or a slice of a LUN must not
//! register, reserve or preempt on the whole LUN.
//!
//! The facts come from sysfs (`/sys/dev/block/MAJ:MIN`), which works in every mode of
//! the daemon (the dm control node needs CAP_SYS_ADMIN, which `--multipath=off` drops):
//!
//! - a `partition` attribute: a partition, refused;
//! - no `dm` directory: a whole device (sd, or anything else that is not stacked by dm);
//! - a dm map: every device it holds (`slaves/`) must itself pass, and have exactly the
//!   map's size. A single-target map (the only kind whose ioctls the kernel forwards)
//!   with the size of the device it forwards to starts at 0 and covers all of it, which
//!   is what `linear_prepare_ioctl` and `multipath_prepare_ioctl` ask of an unprivileged
//!   caller. This is conservative where the kernel is finer (a dm-verity map's hash
//!   device, a table loaded but not yet resumed, count as held devices too).
//!
//! Anything that cannot be read (no sysfs, a vanished device) is refused: unsure means no.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};

use super::Device;

/// How deep dm maps may stack (dm over dm over ...) before the check gives up.
const MAX_DEPTH: usize = 8;

/// Why an fd is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The device (the fd's, or one a map stacks on) is a partition.
    Partition { dev: String },
    /// A dm map covers only part of a device it holds.
    PartialMap {
        map: String,
        map_size: u64,
        holds: String,
        holds_size: u64,
    },
    /// The device's layout cannot be read: refused rather than guessed.
    Unknown { dev: String, why: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Partition { dev } => write!(f, "{dev} is a partition"),
            Refusal::PartialMap {
                map,
                map_size,
                holds,
                holds_size,
            } => write!(
                f,
                "dm map {map} ({map_size} sectors) covers only part of {holds} ({holds_size} sectors)"
            ),
            Refusal::Unknown { dev, why } => {
                write!(f, "cannot tell whether {dev} is a whole device: {why}")
            }
        }
    }
}

/// Read access to a sysfs-like tree. Paths are relative to the tree's root.
pub trait Tree {
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// A small attribute file (at most 256 bytes are read), trimmed.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// The entry names of a directory.
    fn list(&self, path: &Path) -> io::Result<Vec<String>>;
}

/// The real sysfs. Stats need no filesystem access beyond path lookup (Landlock does not
/// restrict them); reads and listings happen only for dm maps.
pub struct Sysfs;

impl Tree for Sysfs {
    fn exists(&self, path: &Path) -> bool {
        // symlink_metadata would not follow /sys/dev/block's links; metadata does.
        std::fs::metadata(path).is_ok()
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        // A fixed buffer: no size probing (fstat, lseek) for a file of a few bytes.
        let mut f = std::fs::File::open(path)?;
        let mut buf = [0u8; 256];
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        let s = std::str::from_utf8(&buf[..n])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))?;
        Ok(s.trim().to_string())
    }

    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(path)? {
            v.push(e?.file_name().to_string_lossy().into_owned());
        }
        v.sort();
        Ok(v)
    }
}

/// Check the device a command is for: `Ok` for anything that is not a block device (sg
/// nodes, files: SG_IO on them reaches nothing more than the fd does) and for whole
/// devices.
pub fn check(dev: &Device<'_>) -> Result<(), Refusal> {
    match dev.block {
        Some(rdev) => check_dev(&Sysfs, major(rdev), minor(rdev)),
        None => Ok(()),
    }
}

/// Check block device `maj:min` in `tree` (rooted at `/`: `sys/dev/block/MAJ:MIN`).
pub fn check_dev(tree: &dyn Tree, maj: u64, min: u64) -> Result<(), Refusal> {
    let base = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    let num = format!("{maj}:{min}");
    check_path(tree, &base, &num, 0).map_err(|mut r| {
        // Only now (a refusal is rare): the kernel name, for the log.
        let name = tree
            .read(&base.join("uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            })
            .map_or_else(|| num.clone(), |n| format!("{n} ({num})"));
        match &mut r {
            Refusal::Partition { dev } | Refusal::Unknown { dev, .. } if *dev == num => *dev = name,
            Refusal::PartialMap { map, .. } if *map == num => *map = name,
            _ => {}
        }
        r
    })
}

fn check_path(tree: &dyn Tree, base: &Path, name: &str, depth: usize) -> Result<(), Refusal> {
    let unknown = |why: String| Refusal::Unknown {
        dev: name.to_string(),
        why,
    };
    if tree.exists(&base.join("partition")) {
        return Err(Refusal::Partition {
            dev: name.to_string(),
        });
    }
    if !tree.exists(&base.join("dm")) {
        return if tree.exists(base) {
            Ok(())
        } else {
            Err(unknown(format!("{} does not exist", base.display())))
        };
    }
    if depth >= MAX_DEPTH {
        return Err(unknown(format!(
            "dm maps stacked more than {MAX_DEPTH} deep"
        )));
    }
    let size = |p: &Path, who: &str| -> Result<u64, Refusal> {
        let s = tree.read(&p.join("size")).map_err(|e| Refusal::Unknown {
            dev: who.to_string(),
            why: format!("size: {e}"),
        })?;
        s.parse().map_err(|_| Refusal::Unknown {
            dev: who.to_string(),
            why: format!("size: {s:?}"),
        })
    };
    let map_size = size(base, name)?;
    let slaves = tree
        .list(&base.join("slaves"))
        .map_err(|e| unknown(format!("slaves: {e}")))?;
    for s in slaves {
        let p = base.join("slaves").join(&s);
        check_path(tree, &p, &s, depth + 1)?;
        let holds_size = size(&p, &s)?;
        if holds_size != map_size {
            return Err(Refusal::PartialMap {
                map: name.to_string(),
                map_size,
                holds: s,
                holds_size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fake sysfs: files with contents, and directories (entries derived from files).
    #[derive(Default)]
    struct Fake(BTreeMap<PathBuf, String>);

    impl Fake {
        fn file(&mut self, p: &str, v: &str) -> &mut Self {
            self.0.insert(PathBuf::from(p), v.to_string());
            self
        }
        /// A block device directory at `p` with a size.
        fn disk(&mut self, p: &str, size: u64) -> &mut Self {
            self.file(&format!("{p}/size"), &format!("{size}\n"))
        }
        fn dm(&mut self, p: &str, size: u64) -> &mut Self {
            self.disk(p, size)
                .file(&format!("{p}/dm/name"), "m\n")
                .file(&format!("{p}/slaves/.dir"), "")
        }
    }

    impl Tree for Fake {
        fn exists(&self, path: &Path) -> bool {
            self.0.keys().any(|k| k.starts_with(path))
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            self.0
                .get(path)
                .map(|s| s.trim().to_string())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn list(&self, path: &Path) -> io::Result<Vec<String>> {
            let mut v: Vec<String> = self
                .0
                .keys()
                .filter_map(|k| k.strip_prefix(path).ok())
                .filter_map(|r| r.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .filter(|n| n != ".dir")
                .collect();
            v.dedup();
            if v.is_empty() && !self.exists(path) {
                return Err(io::ErrorKind::NotFound.into());
            }
            Ok(v)
        }
    }

    const SDB: &str = "/sys/dev/block/8:16";

    #[test]
    fn whole_disk_passes_partition_is_refused() {
        let mut t = Fake::default();
        t.disk(SDB, 65536)
            .disk("/sys/dev/block/8:17", 2048)
            .file("/sys/dev/block/8:17/partition", "1\n");
        assert_eq!(check_dev(&t, 8, 16), Ok(()));
        assert_eq!(
            check_dev(&t, 8, 17),
            Err(Refusal::Partition { dev: "8:17".into() })
        );
        // Named by the kernel's name when uevent has it.
        t.file(
            "/sys/dev/block/8:17/uevent",
            "MAJOR=8\nMINOR=17\nDEVNAME=sdb1\nDEVTYPE=partition\n",
        );
        assert_eq!(
            check_dev(&t, 8, 17),
            Err(Refusal::Partition {
                dev: "sdb1 (8:17)".into()
            })
        );
    }

    #[test]
    fn unknown_device_is_refused() {
        let t = Fake::default();
        assert!(matches!(check_dev(&t, 8, 32), Err(Refusal::Unknown { .. })));
    }

    #[test]
    fn dm_maps() {
        let dm = "/sys/dev/block/254:0";
        // Whole-device linear (or a multipath map): every held device has the map's size.
        let mut t = Fake::default();
        t.dm(dm, 65536)
            .disk(&format!("{dm}/slaves/sdb"), 65536)
            .disk(&format!("{dm}/slaves/sdc"), 65536);
        assert_eq!(check_dev(&t, 254, 0), Ok(()));

        // A slice: smaller than the disk it maps.
        let mut t = Fake::default();
        t.dm(dm, 1024).disk(&format!("{dm}/slaves/sdb"), 65536);
        assert_eq!(
            check_dev(&t, 254, 0),
            Err(Refusal::PartialMap {
                map: "254:0".into(),
                map_size: 1024,
                holds: "sdb".into(),
                holds_size: 65536
            })
        );

        // A whole-size map over a partition: the kernel forwards to the partition, whose
        // own check needs CAP_SYS_RAWIO.
        let mut t = Fake::default();
        t.dm(dm, 2048)
            .disk(&format!("{dm}/slaves/sdb1"), 2048)
            .file(&format!("{dm}/slaves/sdb1/partition"), "1");
        assert_eq!(
            check_dev(&t, 254, 0),
            Err(Refusal::Partition { dev: "sdb1".into() })
        );

        // One path of a multipath map of the wrong size.
        let mut t = Fake::default();
        t.dm(dm, 65536)
            .disk(&format!("{dm}/slaves/sdb"), 65536)
            .disk(&format!("{dm}/slaves/sdc"), 131072);
        assert!(matches!(
            check_dev(&t, 254, 0),
            Err(Refusal::PartialMap { .. })
        ));

        // dm over dm: the inner map is checked too.
        let mut t = Fake::default();
        let inner = format!("{dm}/slaves/dm-1");
        t.dm(dm, 1024)
            .dm(&inner, 1024)
            .disk(&format!("{inner}/slaves/sdb"), 65536);
        assert!(matches!(
            check_dev(&t, 254, 0),
            Err(Refusal::PartialMap { map, .. }) if map == "dm-1"
        ));
        t.disk(&format!("{inner}/slaves/sdb"), 1024);
        assert_eq!(check_dev(&t, 254, 0), Ok(()));

        // A map with no table holds nothing: SG_IO on it fails in the kernel anyway.
        let mut t = Fake::default();
        t.dm(dm, 0);
        assert_eq!(check_dev(&t, 254, 0), Ok(()));

        // Unreadable size: refused.
        let mut t = Fake::default();
        t.dm(dm, 1024).file(&format!("{dm}/slaves/sdb/dev"), "8:16");
        assert!(matches!(
            check_dev(&t, 254, 0),
            Err(Refusal::Unknown { dev, .. }) if dev == "sdb"
        ));
    }

    #[test]
    fn stacking_is_bounded() {
        let mut t = Fake::default();
        let mut p = String::from("/sys/dev/block/254:0");
        for i in 0..=MAX_DEPTH {
            t.dm(&p, 8);
            p = format!("{p}/slaves/dm-{i}");
        }
        t.disk(&p, 8);
        assert!(matches!(
            check_dev(&t, 254, 0),
            Err(Refusal::Unknown { .. })
        ));
    }

    #[test]
    fn not_a_block_device_passes() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        assert_eq!(check(&Device::probe(f.as_fd())), Ok(()));
    }

    #[test]
    fn messages_name_the_devices() {
        let r = Refusal::PartialMap {
            map: "dm-3".into(),
            map_size: 10,
            holds: "sdb".into(),
            holds_size: 20,
        };
        assert_eq!(
            r.to_string(),
            "dm map dm-3 (10 sectors) covers only part of sdb (20 sectors)"
        );
    }
}
