// SPDX-License-Identifier: MIT OR Apache-2.0
//! Booting a nested guest from inside the lab VM: real QEMU as the PR
//! helper's client.
//!
//! The nested guest uses the lab's own kernel and initramfs. Its /init sees
//! `lab.nested=1`, mounts the outer VM's root (the host root plus the outer
//! VM's /tmp etc.) from the 9p share that the nested QEMU exports, and runs a
//! bash script chrooted into it, exactly as in the outer VM. Each given disk
//! is attached with `scsi-block` (a block device) or `scsi-generic` (a
//! `/dev/sgN`) on a virtio-scsi controller at SCSI id = its index, through
//! `pr-manager-helper` when a helper socket is given (one object per distinct
//! socket: disks may use different helpers), so that PERSISTENT RESERVE IN/OUT
//! in the guest goes guest → QEMU → helper → LIO.
//!
//! Under TCG-in-TCG a nested boot takes a minute or two: give it a generous
//! timeout.

use crate::util::{exited, is_nested, lab_dir};
use crate::{bail, Result};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kernel arguments that shorten a TCG boot (the same as lab/boot.sh's).
pub const FAST_KERNEL_ARGS: &str = "quiet cryptomgr.notests initcall_blacklist=crypto_kdf108_init mitigations=off tsc=reliable no_timer_check";

/// A nested guest to boot; build with [`NestedGuest::new`] and the `with_*`
/// methods, then [`NestedGuest::run`].
#[derive(Debug, Clone)]
pub struct NestedGuest {
    /// Kernel image (default: the lab's `vmlinux`, else `vmlinuz`).
    pub kernel: PathBuf,
    /// Initramfs (default: the lab's `initrd.img`).
    pub initrd: PathBuf,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Killed after this long.
    pub timeout: Duration,
    /// Socket of the PR helper for `pr-manager-helper` (none: no PR manager,
    /// QEMU then passes PR commands straight to the device).
    pub pr_helper_socket: Option<PathBuf>,
    /// Host devices to attach, in order (SCSI id = index).
    pub disks: Vec<NestedDisk>,
    /// The bash script body to run inside the guest. `$LAB_DISK` names the
    /// guest's first SCSI disk (e.g. `/dev/sda`); PATH is set.
    pub script: String,
    /// More QEMU arguments.
    pub extra_qemu_args: Vec<String>,
    /// Copy the nested console to our stdout as it arrives.
    pub echo_console: bool,
}

/// QEMU's SCSI passthrough device for a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// `scsi-block` on a block device (`/dev/sdX`, `/dev/dm-N`).
    Block,
    /// `scsi-generic` on a `/dev/sgN`.
    Generic,
}

/// One disk of a nested guest.
#[derive(Debug, Clone)]
pub struct NestedDisk {
    pub dev: PathBuf,
    pub kind: Passthrough,
    /// This disk's PR helper socket; `None`: the guest's
    /// [`NestedGuest::pr_helper_socket`].
    pub pr_helper: Option<PathBuf>,
}

/// A bash function for guest scripts: `disk T` prints the guest's `/dev/sdX` at SCSI
/// target T (waiting up to a minute for it to appear).
pub const DISK_FN: &str = r#"disk() {
    for _ in $(seq 600); do
        for b in /sys/bus/scsi/devices/*:0:$1:0/block/*; do
            [ -e "$b" ] && [ -e "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
        done
        sleep 0.1
    done
    return 1
}
"#;

/// How a nested guest ended.
#[derive(Debug, Clone)]
pub struct NestedOutcome {
    /// The script's exit status.
    pub status: i32,
    /// Everything the guest printed on its console (\r removed).
    pub console: String,
    /// Wall time from QEMU's start to its exit.
    pub duration: Duration,
}

impl NestedGuest {
    /// A guest that runs `script` (bash), with the lab's kernel and initramfs,
    /// 512 MiB, one vCPU, no disks, and a timeout of
    /// `PRHELPER_LAB_NESTED_TIMEOUT` seconds (default 1200: a nested boot
    /// takes several minutes, far more on a busy machine).
    pub fn new(script: &str) -> NestedGuest {
        let dir = lab_dir();
        let vmlinux = dir.join("vmlinux");
        NestedGuest {
            kernel: if vmlinux.exists() {
                vmlinux
            } else {
                dir.join("vmlinuz")
            },
            initrd: dir.join("initrd.img"),
            memory_mb: 512,
            cpus: 1,
            timeout: Duration::from_secs(
                std::env::var("PRHELPER_LAB_NESTED_TIMEOUT")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1200),
            ),
            pr_helper_socket: None,
            disks: Vec::new(),
            script: script.to_string(),
            extra_qemu_args: Vec::new(),
            echo_console: std::env::var_os("PRHELPER_LAB_VERBOSE").is_some(),
        }
    }

    /// A guest that runs one command (its arguments are quoted for bash).
    pub fn command(args: &[&str]) -> NestedGuest {
        let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        NestedGuest::new(&line.join(" "))
    }

    /// Route the disks' PR commands through the helper listening on `socket`.
    pub fn with_pr_helper(mut self, socket: &Path) -> NestedGuest {
        self.pr_helper_socket = Some(socket.to_path_buf());
        self
    }

    /// Attach host block device `dev` (e.g. `/dev/sdb`) as a scsi-block disk.
    pub fn with_disk(mut self, dev: &Path) -> NestedGuest {
        self.disks.push(NestedDisk {
            dev: dev.to_path_buf(),
            kind: Passthrough::Block,
            pr_helper: None,
        });
        self
    }

    /// Attach `dev` as `kind`, its PR commands through the helper on `pr_helper`.
    pub fn with_disk_on(mut self, dev: &Path, kind: Passthrough, pr_helper: &Path) -> NestedGuest {
        self.disks.push(NestedDisk {
            dev: dev.to_path_buf(),
            kind,
            pr_helper: Some(pr_helper.to_path_buf()),
        });
        self
    }

    /// Change the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> NestedGuest {
        self.timeout = timeout;
        self
    }

    /// Boot the guest, wait for it to power off, and return the script's exit
    /// status and the console. Fails if QEMU cannot start, the guest times
    /// out, or it stops without reporting a status.
    pub fn run(&self) -> Result<NestedOutcome> {
        if is_nested() {
            bail!("refusing to nest a third level");
        }
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!(
            "n{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // The nested /init copies this file before it mounts its own /tmp,
        // so a path on the outer VM's tmpfs is fine.
        let dir = PathBuf::from("/tmp/lab/nested");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let script_path = dir.join(format!("{id}.sh"));
        std::fs::write(&script_path, self.full_script())
            .map_err(|e| format!("cannot write {}: {e}", script_path.display()))?;

        let args = self.qemu_args(&script_path, &id);
        let start = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;

        // Read both pipes on threads so that a chatty guest never blocks.
        let echo = self.echo_console;
        let mut stdout = child.stdout.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if echo {
                    use std::io::Write;
                    let _ = std::io::stdout().write_all(&buf[..n]);
                }
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        let mut stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            all
        });

        let deadline = start + self.timeout;
        let mut timed_out = false;
        let qemu_status = loop {
            if let Some(status) = exited(&mut child)? {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait().map_err(|e| e.to_string())?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let duration = start.elapsed();
        let console =
            String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).replace('\r', "");
        let qemu_err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        let _ = std::fs::remove_file(&script_path);

        let marker = format!("@@LAB-EXIT {id} ");
        let status = console.lines().rev().find_map(|l| {
            let rest = l.trim().strip_prefix(&marker)?;
            rest.strip_suffix("@@")?.parse::<i32>().ok()
        });
        match status {
            Some(status) => Ok(NestedOutcome {
                status,
                console,
                duration,
            }),
            None => {
                let why = if timed_out {
                    format!("nested guest timed out after {:?}", self.timeout)
                } else {
                    format!("nested guest stopped ({qemu_status}) without reporting a status")
                };
                bail!(
                    "{why}\n  qemu stderr:\n{}\n  console tail:\n{}",
                    crate::util::indent(qemu_err.trim_end()),
                    crate::util::indent(&tail(&console, 40))
                )
            }
        }
    }

    /// The script as written for the guest: environment, then the body.
    fn full_script(&self) -> String {
        let mut s = String::from("# generated by prhelper-lab (nested guest)\n");
        s.push_str("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
        s.push_str("export HOME=/tmp LANG=C.UTF-8\ncd /\n");
        if !self.disks.is_empty() {
            // No udevd: wait for the first SCSI disk in sysfs (sd probes async).
            s.push_str(
                "for _ in $(seq 200); do\n\
                 \x20   LAB_DISK=$(ls /sys/block | grep '^sd' | head -n1)\n\
                 \x20   [ -n \"$LAB_DISK\" ] && [ -e \"/dev/$LAB_DISK\" ] && break\n\
                 \x20   sleep 0.1\n\
                 done\n\
                 export LAB_DISK=/dev/$LAB_DISK\n",
            );
            s.push_str(DISK_FN);
        }
        s.push_str(&self.script);
        s.push('\n');
        s
    }

    fn qemu_args(&self, script: &Path, id: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut append = format!("console=ttyS0 {FAST_KERNEL_ARGS} panic=-1 lab.nested=1 ");
        let _ = write!(append, "lab.cmd={} lab.id={id}", script.display());
        a.extend([
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            append,
            "-fsdev".into(),
            "local,id=h,path=/,security_model=none,readonly=on,multidevs=remap".into(),
            "-device".into(),
            "virtio-9p-pci,fsdev=h,mount_tag=host".into(),
        ]);
        if !self.disks.is_empty() {
            // One pr-manager-helper object per distinct socket.
            let mut sockets: Vec<&PathBuf> = Vec::new();
            for d in &self.disks {
                if let Some(sock) = d.pr_helper.as_ref().or(self.pr_helper_socket.as_ref()) {
                    if !sockets.contains(&sock) {
                        sockets.push(sock);
                    }
                }
            }
            for (k, sock) in sockets.iter().enumerate() {
                a.push("-object".into());
                a.push(format!(
                    "pr-manager-helper,id=pr{k},path={}",
                    sock.display()
                ));
            }
            a.push("-device".into());
            a.push("virtio-scsi-pci,id=scsi0".into());
            for (i, disk) in self.disks.iter().enumerate() {
                let pr = disk
                    .pr_helper
                    .as_ref()
                    .or(self.pr_helper_socket.as_ref())
                    .and_then(|s| sockets.iter().position(|x| *x == s))
                    .map(|k| format!(",file.pr-manager=pr{k}"))
                    .unwrap_or_default();
                a.push("-blockdev".into());
                a.push(format!(
                    "node-name=hd{i},driver=raw,file.driver=host_device,file.filename={}{pr}",
                    disk.dev.display()
                ));
                let device = match disk.kind {
                    Passthrough::Block => "scsi-block",
                    Passthrough::Generic => "scsi-generic",
                };
                a.push("-device".into());
                a.push(format!(
                    "{device},drive=hd{i},bus=scsi0.0,channel=0,scsi-id={i},lun=0"
                ));
            }
        }
        a.extend(self.extra_qemu_args.iter().cloned());
        a
    }
}

/// Quote `s` for bash (single quotes).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A guest script fragment: mount the 9p share `sig` (the outer side's
/// `-fsdev ...,mount_tag=sig`), create `phase1` in it, and wait up to `wait_s` seconds
/// for the outer side to create `go` (exit 13: no share; 14: no `go` in time).
pub fn guest_pause(wait_s: u32) -> String {
    format!(
        "mkdir -p /tmp/sig && mount -t 9p -o trans=virtio,version=9p2000.L sig /tmp/sig || exit 13\n\
         touch /tmp/sig/phase1 || exit 13\n\
         for _ in $(seq {}); do [ -e /tmp/sig/go ] && break; sleep 0.5; done\n\
         [ -e /tmp/sig/go ] || exit 14\n\
         echo '@@ helper restarted; PR commands again'\n",
        wait_s * 2
    )
}
