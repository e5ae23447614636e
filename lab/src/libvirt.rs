// SPDX-License-Identifier: MIT OR Apache-2.0
//! Debian's libvirtd (9.0) inside the lab VM, without systemd: `lab/libvirtd.sh` in a
//! private mount namespace (overlays on /etc and /var, cgroup2, `auth none`, QEMU as
//! root, `security_driver "none"`, `pr_helper` = the binary under test), and transient
//! TCG domains that boot the lab kernel with `<disk type='block' device='lun'>` disks on
//! virtio-scsi, each with `<reservations managed='yes'/>` or `managed='no'` on a socket.
//!
//! The guest runs a bash script exactly as a [`crate::nested`] guest does (same kernel,
//! initramfs and `lab.cmd=`), its console goes to a file, and a second 9p share lets
//! the guest and the outer VM signal each other.

use crate::nested::FAST_KERNEL_ARGS;
use crate::util::{exited, lab_dir, project_root, run, wait_for};
use crate::{bail, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A running libvirtd, stopped (its domains destroyed first) on drop.
#[derive(Debug)]
pub struct Libvirtd {
    child: Option<Child>,
    state: PathBuf,
    pr_helper: PathBuf,
}

impl Libvirtd {
    /// Start libvirtd with `pr_helper` in qemu.conf; state (overlay upper layers, the
    /// log) under `state`. Waits until `virsh version` answers.
    pub fn start(state: &Path, pr_helper: &Path) -> Result<Libvirtd> {
        std::fs::create_dir_all(state).map_err(|e| e.to_string())?;
        let log = state.join("libvirtd.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(project_root().join("lab/libvirtd.sh"))
            .arg(state)
            .arg(pr_helper)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        let mut d = Libvirtd {
            child: Some(child),
            state: state.to_path_buf(),
            pr_helper: pr_helper.to_path_buf(),
        };
        let started = Instant::now();
        wait_for("libvirtd to answer", Duration::from_secs(90), || {
            if let Some(st) = exited(d.child.as_mut().unwrap())? {
                bail!("libvirtd exited ({st}); its log:\n{}", d.log_tail(40));
            }
            if d.virsh(&["version"]).is_ok() {
                return Ok(Some(()));
            }
            std::thread::sleep(Duration::from_millis(300));
            Ok(None)
        })
        .map_err(|e| format!("{e}\nlibvirtd log:\n{}", d.log_tail(40)))?;
        println!(
            "  libvirtd answers after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(d)
    }

    /// libvirtd's pid (its mount namespace is the private one).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The last `n` lines of libvirtd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.state.join("libvirtd.log")).unwrap_or_default();
        crate::nested::tail(&text, n)
    }

    /// `virsh -c qemu:///system ARGS`; its stdout, or an error with its stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-c", "qemu:///system"];
        a.extend_from_slice(args);
        let out = run("virsh", &a)?;
        if out.status != 0 {
            bail!("virsh {}: {}", args.join(" "), out.text().trim());
        }
        Ok(out.stdout)
    }

    /// `path` as libvirtd (and its QEMU processes, apart from /dev) see it.
    pub fn ns_path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }

    /// Start a transient domain from `xml`.
    pub fn create(&self, name: &str, xml: &str) -> Result<()> {
        let file = self.state.join(format!("{name}.xml"));
        std::fs::write(&file, xml).map_err(|e| e.to_string())?;
        self.virsh(&["create", &file.display().to_string()])
            .map_err(|e| format!("{e}\nlibvirtd log:\n{}", self.log_tail(30)))?;
        Ok(())
    }

    /// `virsh domstate NAME` ("running", "shut off", ...); an error once the transient
    /// domain is gone.
    pub fn domstate(&self, name: &str) -> Result<String> {
        Ok(self.virsh(&["domstate", name])?.trim().to_string())
    }

    /// Whether the domain still exists (a transient domain vanishes when it stops).
    pub fn exists(&self, name: &str) -> bool {
        self.domstate(name).is_ok_and(|s| s != "shut off")
    }

    /// The pid of the domain's QEMU.
    pub fn qemu_pid(&self, name: &str) -> Result<u32> {
        let f = self.ns_path(Path::new(&format!("/run/libvirt/qemu/{name}.pid")));
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{}: {e}", f.display()))
    }

    /// Processes running the configured `pr_helper` with `-k`: (pid, socket).
    pub fn helpers(&self) -> Vec<(u32, PathBuf)> {
        helpers_of(&self.pr_helper)
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(list) = self.virsh(&["list", "--name"]) {
            for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Processes whose argv[0] is `binary` and which have a `-k SOCKET` argument.
pub fn helpers_of(binary: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().map(PathBuf::from).as_deref() != Some(binary) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "-k") {
            if let Some(sock) = args.get(i + 1) {
                found.push((pid, PathBuf::from(sock)));
            }
        }
    }
    found.sort();
    found
}

/// How a disk's PR commands reach a helper.
#[derive(Debug, Clone)]
pub enum Reservations {
    /// `<reservations managed='yes'/>`: libvirt starts `pr_helper` for the domain.
    Managed,
    /// `<reservations managed='no'>` on this socket: a helper the admin runs.
    Unmanaged(PathBuf),
}

/// One `<disk type='block' device='lun'>` on the virtio-scsi controller, at
/// `target` (unit 0): the guest finds it at `/sys/bus/scsi/devices/*:0:TARGET:0`.
#[derive(Debug, Clone)]
pub struct Disk {
    pub source: PathBuf,
    pub target: u32,
    pub reservations: Reservations,
}

/// A transient domain booting the lab kernel and running `script` in the guest.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub disks: Vec<Disk>,
    /// Guest script body (bash); the prelude sets PATH and defines `disk T`, which
    /// prints the guest's /dev/sdX at target T (waiting for it).
    pub script: String,
    /// A directory shared read-write with the guest (mount tag `sig`).
    pub sig: Option<PathBuf>,
    pub memory_mb: u32,
    id: String,
    /// The guest's serial console, a file.
    pub console: PathBuf,
}

impl Domain {
    /// A domain `name` running `script`; its console goes to /tmp/lab/libvirt/NAME.console.
    pub fn new(name: &str, script: &str) -> Domain {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!(
            "lv{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Domain {
            name: name.to_string(),
            disks: Vec::new(),
            script: script.to_string(),
            sig: None,
            memory_mb: 512,
            console: PathBuf::from(format!("/tmp/lab/libvirt/{name}.console")),
            id,
        }
    }

    /// Add a disk at the next target.
    pub fn with_disk(mut self, source: &Path, reservations: Reservations) -> Domain {
        let target = self.disks.len() as u32;
        self.disks.push(Disk {
            source: source.to_path_buf(),
            target,
            reservations,
        });
        self
    }

    /// The console so far (\r removed).
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// The exit status the guest script reported on its console, if it did.
    pub fn status(&self) -> Option<i32> {
        let marker = format!("@@LAB-EXIT {} ", self.id);
        self.console_text().lines().rev().find_map(|l| {
            let rest = l.trim().strip_prefix(&marker)?;
            rest.strip_suffix("@@")?.parse::<i32>().ok()
        })
    }

    /// Write the guest script and return the domain XML.
    pub fn prepare(&self) -> Result<String> {
        let dir = PathBuf::from("/tmp/lab/libvirt");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let script = dir.join(format!("{}.sh", self.id));
        let mut s = String::from("# generated by prhelper-lab (libvirt guest)\n");
        s.push_str("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
        s.push_str("export HOME=/tmp LANG=C.UTF-8\ncd /\n");
        s.push_str(crate::nested::DISK_FN);
        s.push_str(&self.script);
        s.push('\n');
        std::fs::write(&script, s).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&self.console);

        let lab = lab_dir();
        let kernel = if lab.join("vmlinux").exists() {
            lab.join("vmlinux")
        } else {
            lab.join("vmlinuz")
        };
        let mut x = String::new();
        let _ = write!(
            x,
            "<domain type='qemu'>\n  <name>{}</name>\n  <memory unit='MiB'>{}</memory>\n  <vcpu>1</vcpu>\n",
            self.name, self.memory_mb
        );
        let _ = write!(
            x,
            "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>console=ttyS0 {FAST_KERNEL_ARGS} panic=-1 lab.nested=1 lab.cmd={} lab.id={}</cmdline>\n  </os>\n",
            kernel.display(),
            lab.join("initrd.img").display(),
            script.display(),
            self.id
        );
        // ACPI, or the guest's `poweroff -f` only halts it and the domain stays up.
        x.push_str("  <features>\n    <acpi/>\n  </features>\n");
        x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n");
        x.push_str("  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n");
        x.push_str("    <controller type='usb' model='none'/>\n    <controller type='scsi' index='0' model='virtio-scsi'/>\n");
        for d in &self.disks {
            let res = match &d.reservations {
                Reservations::Managed => "<reservations managed='yes'/>".to_string(),
                Reservations::Unmanaged(sock) => format!(
                    "<reservations managed='no'><source type='unix' path='{}' mode='client'/></reservations>",
                    sock.display()
                ),
            };
            let _ = write!(
                x,
                "    <disk type='block' device='lun'>\n      <driver name='qemu' type='raw'/>\n      <source dev='{}'>{res}</source>\n      <target dev='sd{}' bus='scsi'/>\n      <address type='drive' controller='0' bus='0' target='{}' unit='0'/>\n    </disk>\n",
                d.source.display(),
                (b'a' + d.target as u8) as char,
                d.target
            );
        }
        x.push_str("    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>\n      <driver type='path'/>\n      <source dir='/'/>\n      <target dir='host'/>\n      <readonly/>\n    </filesystem>\n");
        if let Some(sig) = &self.sig {
            let _ = write!(
                x,
                "    <filesystem type='mount' accessmode='passthrough'>\n      <driver type='path'/>\n      <source dir='{}'/>\n      <target dir='sig'/>\n    </filesystem>\n",
                sig.display()
            );
        }
        let _ = write!(
            x,
            "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    </serial>\n",
            self.console.display()
        );
        x.push_str("    <memballoon model='none'/>\n  </devices>\n</domain>\n");
        Ok(x)
    }
}
