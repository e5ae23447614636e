// SPDX-License-Identifier: MIT OR Apache-2.0
//! `kubevirt_pr_helper`: the OCI image (`target/pkg/prhelper-image.tar`, built by
//! packaging/oci/build) run under podman the way KubeVirt's virt-handler DaemonSet runs
//! its `pr-helper` container: privileged, root, its own network namespace
//! (`--network=none`), `/entrypoint.sh -k /var/run/kubevirt/daemons/pr/pr-helper.sock`,
//! the host's /dev, the socket directory (bidirectional) and /etc/multipath mounted.
//! The lab plays virt-handler's other parts: it bind-mounts the host's multipathd
//! socket into the socket directory (after the container started, as its socket
//! monitor may) and chowns the helper's socket to qemu's uid 107.
//!
//! multipathd (Debian's 0.9.4) is given a pathname socket, /run/multipathd.socket, by
//! socket activation, so that the bind-mounted socket is the only way in (its abstract
//! socket is in another network namespace anyway, and here does not even exist).
//!
//! Checked: PR commands through the container's socket on a plain LIO LUN (LIO's view
//! from a second initiator) and on multipathd's map (REGISTER reaches both legs, seen
//! from a third initiator; multipathd's getprkey follows); uid 107 is refused before the
//! chown and served after it; `podman restart` (SIGTERM: clean exit) and a `kill -9`
//! followed by `podman start` (stale socket file) both leave a working socket, with
//! multipathd reached again.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prhelper::scsi::cdb::{PrInAction, PrOutAction};
use prhelper::scsi::prin::ReadKeys;
use prhelper_lab::lio::SharedLun;
use prhelper_lab::mpath::{self, legs_with_key, lio_view, Multipathd};
use prhelper_lab::podman::{Podman, RUN_DIR};
use prhelper_lab::prh::{self, expect_good, keys};
use prhelper_lab::util::{indent, project_root, run_ok, wait_for, Output};
use prhelper_lab::{bail, ensure, sg, Result};

/// KubeVirt's socket directory and helper socket (virt-operator's constants).
const PR_DIR: &str = "/var/run/kubevirt/daemons/pr";
const PR_SOCK: &str = "/var/run/kubevirt/daemons/pr/pr-helper.sock";
/// Where virt-handler bind-mounts the host's multipathd socket.
const MPATHD_IN_DIR: &str = "/var/run/kubevirt/daemons/pr/multipathd.socket";
/// The host's multipathd socket (pathname, multipath-tools 0.12+ or socket activation).
const HOST_MPATHD: &str = "/run/multipathd.socket";
/// qemu's uid and gid in KubeVirt's virt-launcher.
const QEMU_UID: u32 = 107;
const NAME: &str = "pr-helper";
const OBSERVER: usize = 2;

/// The host side of virt-handler: the socket directory (a shared mount, so that the
/// container's bidirectional mount sees mounts made later) and the bind mount of
/// multipathd's socket into it. Undone on drop.
struct Node {
    mpathd_bound: bool,
}

impl Node {
    fn new() -> Result<Node> {
        prhelper_lab::util::mkdir_all(Path::new(PR_DIR))?;
        run_ok("mount", &["--bind", PR_DIR, PR_DIR])?;
        run_ok("mount", &["--make-shared", PR_DIR])?;
        Ok(Node {
            mpathd_bound: false,
        })
    }

    /// What virt-handler's multipath socket monitor does when the host socket exists.
    fn bind_multipathd(&mut self) -> Result<()> {
        File::create(MPATHD_IN_DIR).map_err(|e| format!("cannot create {MPATHD_IN_DIR}: {e}"))?;
        run_ok("mount", &["--bind", HOST_MPATHD, MPATHD_IN_DIR])?;
        self.mpathd_bound = true;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.mpathd_bound {
            let _ = prhelper_lab::util::run("umount", &[MPATHD_IN_DIR]);
        }
        let _ = prhelper_lab::util::run("umount", &["-l", PR_DIR]);
        let _ = std::fs::remove_dir_all("/var/run/kubevirt");
    }
}

/// The running container: its log file and pid file, written by podman.
struct Container<'a> {
    pod: &'a Podman,
    log: PathBuf,
    pidfile: PathBuf,
}

impl Container<'_> {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The helper's pid as the host sees it (the container's PID 1, after exec).
    fn pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(&self.pidfile)
            .map_err(|e| format!("{}: {e}", self.pidfile.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("pid file {text:?}: {e}"))
    }

    /// Add the container's log to an error.
    fn ctx(&self, e: String) -> String {
        // conmon copies the helper's stderr to the file asynchronously: give it a moment.
        std::thread::sleep(Duration::from_secs(1));
        format!("{e}\n  container log:\n{}", indent(&self.log_text()))
    }

    /// Wait until a fresh helper socket accepts connections (a socket file whose inode
    /// differs from `old`, if given), then return its inode.
    fn wait_socket(&self, old: Option<u64>) -> Result<u64> {
        let t = Instant::now();
        let ino = wait_for("the helper's socket", Duration::from_secs(90), || {
            let Ok(md) = std::fs::symlink_metadata(PR_SOCK) else {
                return Ok(None);
            };
            if !md.file_type().is_socket() || Some(md.ino()) == old {
                return Ok(None);
            }
            Ok(std::os::unix::net::UnixStream::connect(PR_SOCK)
                .ok()
                .map(|_| md.ino()))
        })
        .map_err(|e| self.ctx(e))?;
        println!(
            "  socket up {:.1}s after podman returned",
            t.elapsed().as_secs_f64()
        );
        Ok(ino)
    }

    fn podman(&self, args: &[&str]) -> Result<Output> {
        self.pod.ok(args).map_err(|e| self.ctx(e))
    }
}

/// Run `program args` as uid/gid `uid` (no supplementary groups).
fn run_as(uid: u32, program: &Path, args: &[&str]) -> Result<Output> {
    let o = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} as uid {uid}: {e}", program.display()))?;
    Ok(Output {
        cmdline: format!("(uid {uid}) {} {}", program.display(), args.join(" ")),
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// `prhelper-client -k PR_SOCK ARGS DEV` as qemu's uid.
fn client_as_qemu(args: &[&str], dev: &Path) -> Result<Output> {
    let mut all = vec!["-k", PR_SOCK, "--timeout", "60"];
    all.extend_from_slice(args);
    let dev = dev.display().to_string();
    all.push(&dev);
    run_as(QEMU_UID, &prh::client_bin(), &all)
}

/// Device nodes handed to uid 107 (as KubeVirt does for a VM's disks), given back on drop.
struct Chowned(Vec<(PathBuf, u32, u32)>);

impl Chowned {
    fn new(paths: &[&Path]) -> Result<Chowned> {
        let mut c = Chowned(Vec::new());
        for p in paths {
            let md = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
            std::os::unix::fs::chown(p, Some(QEMU_UID), Some(QEMU_UID))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
            c.0.push((p.to_path_buf(), md.uid(), md.gid()));
        }
        Ok(c)
    }
}

impl Drop for Chowned {
    fn drop(&mut self) {
        for (p, u, g) in &self.0 {
            let _ = std::os::unix::fs::chown(p, Some(*u), Some(*g));
        }
    }
}

/// The keys READ KEYS reports through the helper socket (as root).
fn keys_via_socket(dev: &Path) -> Result<Vec<u64>> {
    let mut c = prh::connect(Path::new(PR_SOCK))?;
    let f = prh::open_ro(dev)?;
    let r = prh::pr_in(&mut c, &f, PrInAction::ReadKeys, 8192)?;
    expect_good("READ KEYS", &r)?;
    let rk = ReadKeys::decode(&r.data).map_err(|e| format!("READ KEYS: {e}"))?;
    Ok(rk.keys)
}

/// The map's key is on both legs (LIO from the observer) and multipathd has it.
/// What uid 107 (QEMU under KubeVirt) reaches through the container's socket.
struct AsQemu<'a> {
    ctr: &'a Container<'a>,
    lun: &'a SharedLun,
    mpd: &'a Multipathd,
    plain_dev: &'a Path,
    map_dev: &'a Path,
}

impl AsQemu<'_> {
    /// Chown the socket to uid 107 as virt-handler does, then as uid 107: READ KEYS on
    /// the plain LUN (its key 0x107a) and REGISTER AND IGNORE `key` on the map, which
    /// must reach both legs and multipathd.
    fn chown_and_use(&self, key: u64, when: &str) -> Result<()> {
        std::os::unix::fs::chown(PR_SOCK, Some(QEMU_UID), Some(QEMU_UID))
            .map_err(|e| format!("chown {PR_SOCK}: {e}"))?;
        let o = client_as_qemu(&["--in", "--read-keys"], self.plain_dev)?.ok()?;
        ensure!(
            o.stdout.contains("0x107a"),
            "{when}: READ KEYS: {}",
            o.describe()
        );
        let sark = format!("--param-sark={key:#x}");
        client_as_qemu(&["--out", "--register-ignore", &sark], self.map_dev)?
            .ok()
            .map_err(|e| self.ctr.ctx(e))?;
        expect_map_key(
            self.lun,
            self.mpd,
            key,
            &format!("{when}: REGISTER AND IGNORE"),
        )
        .map_err(|e| self.ctr.ctx(e))
    }
}

fn expect_map_key(lun: &SharedLun, mpd: &Multipathd, key: u64, when: &str) -> Result<()> {
    let regs = lio_view(lun, OBSERVER)?;
    ensure!(
        legs_with_key(&regs, lun, key) == [0, 1],
        "{when}: key {key:#x} not on both legs: {regs:?}"
    );
    ensure!(
        mpd.getprkey()? == Some(key),
        "{when}: multipathd's key is {:?}, not {key:#x}",
        mpd.getprkey()
    );
    ensure!(
        mpd.getprstatus()?,
        "{when}: multipathd's prstatus is not set"
    );
    Ok(())
}

pub fn kubevirt_pr_helper() -> Result<()> {
    let t_case = Instant::now();
    let archive = project_root().join("target/pkg/prhelper-image.tar");
    ensure!(
        archive.exists(),
        "{} missing: run packaging/oci/build (scripts/test-all.sh does) before the lab",
        archive.display()
    );
    // A plain LUN (leg 0 for the VM, leg 1 observes) and multipathd's map over legs 0
    // and 1 of another (leg 2 observes).
    let plain = SharedLun::new("kvplain", 32 << 20, 2)?;
    let lun = mpath::shared_lun("kvmp", 32 << 20, 3)?;
    let t = Instant::now();
    let mpd = Multipathd::start_with_socket(&lun, &[0, 1], &[], Some(Path::new(HOST_MPATHD)))?;
    println!(
        "  multipathd (socket-activated on {HOST_MPATHD}) has map {} in {:.1}s",
        mpd.dev().display(),
        t.elapsed().as_secs_f64()
    );
    ensure!(
        mpath::multipathd_socket_cmd("show daemon").is_err(),
        "multipathd's abstract socket answers: the pathname socket would not be the only way in"
    );
    // For the README: 0.9.4's own CLI knows only the abstract socket.
    let cli = prhelper_lab::util::run("multipathd", &["show", "daemon"])?;
    println!(
        "  multipathd CLI meanwhile: exit {}, {:?}",
        cli.status,
        cli.text().trim().lines().next().unwrap_or("")
    );
    let plain_dev = plain.device(0).disk.clone();
    let map_dev = mpd.dev().to_path_buf();

    // Declared before the podman fixture, so that its containers go first.
    let mut node = Node::new()?;
    let pod = Podman::setup()?;
    let image = pod.load(&archive)?;
    let ctr = Container {
        pod: &pod,
        log: Path::new(RUN_DIR).join("pr-helper.log"),
        pidfile: Path::new(RUN_DIR).join("pr-helper.pid"),
    };
    let log_opt = format!("path={}", ctr.log.display());
    let pidfile = ctr.pidfile.display().to_string();
    let pr_vol = format!("{PR_DIR}:{PR_DIR}:rshared");
    ctr.podman(&[
        "run",
        "-d",
        "--name",
        NAME,
        "--pull=never",
        "--privileged",
        "--user",
        "0",
        "--network=none",
        "--log-opt",
        &log_opt,
        "--pidfile",
        &pidfile,
        "-v",
        "/dev:/dev:rslave",
        "-v",
        &pr_vol,
        "-v",
        "/etc/multipath:/etc/multipath:rshared",
        "--entrypoint",
        "/entrypoint.sh",
        &image,
        "-k",
        PR_SOCK,
    ])?;
    let mut ino = ctr.wait_socket(None)?;
    let pid = ctr.pid()?;
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).map_err(|e| e.to_string());
    ensure!(
        ns(&pid.to_string())? != ns("self")?,
        "the helper shares the host's network namespace"
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| e.to_string())?;
    ensure!(
        exe.ends_with("usr/bin/prhelper") || exe.ends_with("usr/bin/qemu-pr-helper"),
        "the container's PID 1 is {}, not the helper (did the entrypoint exec?)",
        exe.display()
    );
    let link =
        std::fs::read_link(format!("/proc/{pid}/root/run/multipathd.socket")).map_err(|e| {
            ctr.ctx(format!(
                "the entrypoint made no /run/multipathd.socket link: {e}"
            ))
        })?;
    ensure!(
        link == Path::new(MPATHD_IN_DIR),
        "/run/multipathd.socket in the container points to {}",
        link.display()
    );

    // 1. A plain LUN, as root, before multipathd's socket is there.
    const K1: u64 = 0x107a;
    {
        let mut c = prh::connect(Path::new(PR_SOCK))?;
        let f = prh::open_rw(&plain_dev)?;
        let r = prh::pr_out(&mut c, &f, PrOutAction::Register, 0, &keys(0, K1))?;
        expect_good("plain REGISTER", &r).map_err(|e| ctr.ctx(e))?;
        let r = prh::pr_out(&mut c, &f, PrOutAction::Reserve, 1, &keys(K1, 0))?;
        expect_good("plain RESERVE WE", &r).map_err(|e| ctr.ctx(e))?;
    }
    ensure!(
        sg::read_keys(&plain.device(1).disk)? == [K1],
        "plain LUN from the other initiator: {:?}",
        sg::read_keys(&plain.device(1).disk)
    );
    ensure!(
        sg::read_reservation(&plain.device(1).disk)?.map(|r| r.0) == Some(K1),
        "plain LUN reservation: {:?}",
        sg::read_reservation(&plain.device(1).disk)
    );
    ensure!(
        keys_via_socket(&plain_dev)? == [K1],
        "READ KEYS through the socket"
    );
    println!("  plain LUN: REGISTER + RESERVE through the container, seen by LIO");

    // 2. multipathd's socket arrives (virt-handler's monitor), after the helper started.
    node.bind_multipathd()?;
    let seen = std::fs::symlink_metadata(format!("/proc/{pid}/root{MPATHD_IN_DIR}"))
        .map_err(|e| format!("the bind mount did not propagate into the container: {e}"))?;
    ensure!(
        seen.file_type().is_socket(),
        "{MPATHD_IN_DIR} in the container is not a socket"
    );
    const M1: u64 = 0x1071;
    {
        let mut c = prh::connect(Path::new(PR_SOCK))?;
        let f = prh::open_rw(&map_dev)?;
        let r = prh::pr_out(&mut c, &f, PrOutAction::Register, 0, &keys(0, M1))?;
        expect_good("map REGISTER", &r).map_err(|e| ctr.ctx(e))?;
    }
    expect_map_key(
        &lun,
        &mpd,
        M1,
        "map REGISTER (multipathd's socket bind-mounted late)",
    )
    .map_err(|e| ctr.ctx(e))?;
    println!("  map: REGISTER on both legs, multipathd has the key");

    // 3. uid 107: refused while the socket is root's, served after the chown.
    let _devs = Chowned::new(&[&plain_dev, &map_dev])?;
    let o = client_as_qemu(&["--in", "--read-keys"], &plain_dev)?;
    ensure!(
        o.status != 0 && o.text().to_lowercase().contains("permission denied"),
        "uid {QEMU_UID} before the chown: {}",
        o.describe()
    );
    let as_qemu = AsQemu {
        ctr: &ctr,
        lun: &lun,
        mpd: &mpd,
        plain_dev: &plain_dev,
        map_dev: &map_dev,
    };
    as_qemu.chown_and_use(0x1072, "uid 107, after the chown")?;
    println!("  uid {QEMU_UID}: refused before the chown, PR IN and PR OUT after it");

    // 4. podman restart: SIGTERM to the helper (PID 1), which must exit cleanly; the
    // entrypoint runs again with the link already there; multipathd's socket is there
    // from the start this time. The new socket is root's again: chown as virt-handler does.
    let t = Instant::now();
    ctr.podman(&["restart", NAME])?;
    ino = ctr.wait_socket(Some(ino))?;
    ensure!(
        ctr.log_text().contains("stopped after"),
        "{}",
        ctr.ctx("the helper did not stop cleanly on SIGTERM".into())
    );
    as_qemu.chown_and_use(0x1073, "after podman restart")?;
    println!(
        "  podman restart: clean stop, new socket, PR IN/OUT and multipathd again ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    // 5. kill -9, then start: the stale socket file is replaced.
    let t = Instant::now();
    ctr.podman(&["kill", "--signal", "KILL", NAME])?;
    ensure!(
        std::fs::symlink_metadata(PR_SOCK).is_ok_and(|m| m.ino() == ino),
        "expected the killed helper's socket file to stay behind"
    );
    ctr.podman(&["start", NAME])?;
    ctr.wait_socket(Some(ino))?;
    std::os::unix::fs::chown(PR_SOCK, Some(QEMU_UID), Some(QEMU_UID))
        .map_err(|e| format!("chown {PR_SOCK}: {e}"))?;
    const M4: u64 = 0x1074;
    client_as_qemu(
        &[
            "--out",
            "--register-ignore",
            &format!("--param-sark={M4:#x}"),
        ],
        &map_dev,
    )?
    .ok()
    .map_err(|e| ctr.ctx(e))?;
    expect_map_key(&lun, &mpd, M4, "after kill -9 and start").map_err(|e| ctr.ctx(e))?;
    ensure!(
        keys_via_socket(&plain_dev)? == [K1],
        "plain READ KEYS after kill -9"
    );
    println!(
        "  kill -9 + podman start: stale socket replaced, PR OUT and multipathd again ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    // Clean up the registrations (as root), then the container.
    {
        let mut c = prh::connect(Path::new(PR_SOCK))?;
        let f = prh::open_rw(&plain_dev)?;
        let r = prh::pr_out(&mut c, &f, PrOutAction::Clear, 0, &keys(K1, 0))?;
        expect_good("plain CLEAR", &r)?;
        let f = prh::open_rw(&map_dev)?;
        let r = prh::pr_out(&mut c, &f, PrOutAction::Register, 0, &keys(M4, 0))?;
        expect_good("map unregister", &r)?;
    }
    ensure!(
        mpd.getprkey()?.is_none(),
        "multipathd kept a key after unregister: {:?}",
        mpd.getprkey()
    );
    let log = ctr.log_text();
    drop(ctr);
    pod.stop()?;
    drop(node);
    mpd.stop()?;
    if log.contains("WARN") || log.contains("ERROR") {
        bail!("the helper logged warnings or errors:\n{}", indent(&log));
    }
    println!("  case total {:.1}s", t_case.elapsed().as_secs_f64());
    Ok(())
}
