// SPDX-License-Identifier: MIT OR Apache-2.0
//! Multipath maps made by hand with `dmsetup`, without multipathd.

use super::{block_dev_node, lun_wwid, parse_devnum, parse_dm_status, DmPathState, PathDev};
use crate::lio::SharedLun;
use crate::util::{read_attr, run, run_ok};
use crate::{ensure, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
