// SPDX-License-Identifier: MIT OR Apache-2.0
//! Podman (Debian 12's 4.3, crun) in the lab VM, where there is no systemd and the
//! root filesystem is read-only: storage (vfs) under /tmp, run state under /run,
//! `cgroupfs` on a cgroup2 mount, events and container logs in files, and a tmpfs on
//! /var/tmp (containers/image 5.23 unpacks an oci-archive there whatever TMPDIR says).
//! The configuration goes to `CONTAINERS_CONF` / `CONTAINERS_STORAGE_CONF` files, so
//! every `podman` call is the plain command line.
//!
//! ```text
//! let pod = Podman::setup()?;                    // mounts what is missing
//! pod.load(Path::new("target/pkg/prhelper-image.tar"))?;   // "localhost/…:0.1.0"
//! pod.ok(&["run", "-d", "--name", "x", "--pull=never", IMAGE])?;
//! pod.stop()?;                                   // rm -af, unmount, remove storage
//! ```
//!
//! Each `podman` call costs 2–10 s under TCG (mostly the Go runtime's start-up in the
//! kernel): keep them few. One `Podman` at a time per VM.

use crate::util::{all_ok, mkdir_all, run, Output};
use crate::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Run state and configuration.
pub const RUN_DIR: &str = "/run/lab-podman";
/// Image and container storage (vfs copies layers: fine for small images).
pub const STORAGE_DIR: &str = "/tmp/lab-podman";

/// A configured podman; [`Podman::stop`] (or drop) removes every container and
/// undoes the mounts it made.
#[derive(Debug)]
pub struct Podman {
    /// Mount points this fixture mounted, unmounted in reverse order.
    mounted: Vec<PathBuf>,
    stopped: bool,
}

fn mounted_fs(path: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().rev().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.get(4) != Some(&path) {
            return None;
        }
        let dash = w.iter().position(|&x| x == "-")?;
        w.get(dash + 1).map(|s| s.to_string())
    })
}

impl Podman {
    /// Mount cgroup2 on /sys/fs/cgroup and a tmpfs on /var/tmp unless there already,
    /// and write the configuration.
    pub fn setup() -> Result<Podman> {
        let mut p = Podman {
            mounted: Vec::new(),
            stopped: false,
        };
        if mounted_fs("/sys/fs/cgroup").as_deref() != Some("cgroup2") {
            crate::util::run_ok("mount", &["-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"])?;
            p.mounted.push("/sys/fs/cgroup".into());
        }
        if mounted_fs("/var/tmp").as_deref() != Some("tmpfs") {
            crate::util::run_ok("mount", &["-t", "tmpfs", "lab-podman-vartmp", "/var/tmp"])?;
            p.mounted.push("/var/tmp".into());
        }
        let run = Path::new(RUN_DIR);
        let storage = Path::new(STORAGE_DIR);
        mkdir_all(run)?;
        mkdir_all(&storage.join("tmp"))?;
        let write = |name: &str, text: String| {
            std::fs::write(run.join(name), text)
                .map_err(|e| format!("cannot write {RUN_DIR}/{name}: {e}"))
        };
        write(
            "containers.conf",
            format!(
                "# Written by the prhelper lab (podman::Podman).\n\
                 [containers]\nlog_driver = \"k8s-file\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{RUN_DIR}/events.log\"\n\
                 image_copy_tmp_dir = \"{STORAGE_DIR}/tmp\"\ntmp_dir = \"{RUN_DIR}/libpod\"\n"
            ),
        )?;
        write(
            "storage.conf",
            format!(
                "# Written by the prhelper lab (podman::Podman).\n\
                 [storage]\ndriver = \"vfs\"\ngraphroot = \"{STORAGE_DIR}/storage\"\n\
                 runroot = \"{RUN_DIR}/storage\"\n"
            ),
        )?;
        Ok(p)
    }

    /// `podman ARGS` with this configuration; fails only if podman cannot start.
    pub fn cmd(&self, args: &[&str]) -> Result<Output> {
        let o = Command::new("podman")
            .args(args)
            .env(
                "CONTAINERS_CONF",
                Path::new(RUN_DIR).join("containers.conf"),
            )
            .env(
                "CONTAINERS_STORAGE_CONF",
                Path::new(RUN_DIR).join("storage.conf"),
            )
            .env("TMPDIR", Path::new(STORAGE_DIR).join("tmp"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run podman: {e}"))?;
        Ok(Output {
            cmdline: format!("podman {}", args.join(" ")),
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }

    /// [`Podman::cmd`] that must exit 0; prints how long it took.
    pub fn ok(&self, args: &[&str]) -> Result<Output> {
        let t = Instant::now();
        let o = self.cmd(args)?.ok()?;
        println!(
            "  podman {} ({:.1}s)",
            args.first().copied().unwrap_or(""),
            t.elapsed().as_secs_f64()
        );
        Ok(o)
    }

    /// `podman load -i ARCHIVE`; returns the name of the loaded image.
    pub fn load(&self, archive: &Path) -> Result<String> {
        let o = self.ok(&["load", "-i", &archive.display().to_string()])?;
        match o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
        {
            Some(name) => Ok(name.trim().to_string()),
            None => bail!("podman load printed no image name: {}", o.describe()),
        }
    }

    /// Remove every container, undo the mounts, remove the storage.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let mut errors = Vec::new();
        match self.cmd(&["rm", "--all", "--force", "--time", "0"]) {
            Ok(o) if o.status == 0 => {}
            Ok(o) => errors.push(o.describe()),
            Err(e) => errors.push(e),
        }
        for m in self.mounted.drain(..).rev() {
            let m = m.display().to_string();
            if !matches!(run("umount", &[&m]), Ok(ref o) if o.status == 0) {
                let _ = run("umount", &["-l", &m]);
            }
        }
        let _ = std::fs::remove_dir_all(STORAGE_DIR);
        let _ = std::fs::remove_dir_all(RUN_DIR);
        all_ok(errors)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("podman: teardown: {e}");
        }
    }
}
