// SPDX-License-Identifier: MIT OR Apache-2.0
//! prhelper where users run it: Debian's libvirtd 9.0 starts it (`<reservations
//! managed='yes'/>`) or a domain connects to a system prhelper (`managed='no'`).
//!
//! One booted domain carries every disk kind, so that one nested boot proves them all:
//! a plain LUN, a dm-multipath map named `/dev/mapper/NAME` (libvirt puts its paths into
//! QEMU's /dev and device cgroup), a map named `/dev/dm-N` (libvirt adds no paths:
//! prhelper sends to the map itself), and a LUN on an unmanaged system helper. A second,
//! short-lived domain checks the per-domain helper lifecycle without waiting for its
//! guest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prhelper::scsi::cdb::PrInAction;
use prhelper::scsi::prin::ReadKeys;
use prhelper_lab::libvirt::{helpers_of, Domain, Libvirtd, Reservations};
use prhelper_lab::lio::SharedLun;
use prhelper_lab::mpath::{self, legs_with_key, lio_view, Map};
use prhelper_lab::nested::{guest_pause, tail};
use prhelper_lab::prh;
use prhelper_lab::util::{expect_contains, run_ok, scratch_dir, wait_for};
use prhelper_lab::{bail, ensure, sg, Result};

use super::multipath::{expect_legs, holder, show};

const KEY: u64 = 0xabc;
const KEY2: u64 = 0xdef;

/// What udev would have made: `/dev/block/MAJ:MIN` links for the maps and their paths,
/// and `/dev/mapper/NAME` (`dmsetup mknodes`). Removed on drop.
struct UdevLinks {
    made: Vec<PathBuf>,
}

impl UdevLinks {
    fn make(maps: &[&Map]) -> Result<UdevLinks> {
        let mut links = UdevLinks { made: Vec::new() };
        std::fs::create_dir_all("/dev/block").map_err(|e| e.to_string())?;
        for map in maps {
            let mut devs = vec![(map.devnum(), map.dev().to_path_buf())];
            devs.extend(map.paths().iter().map(|p| (p.devnum, p.disk.clone())));
            for ((ma, mi), node) in devs {
                let link = PathBuf::from(format!("/dev/block/{ma}:{mi}"));
                if link.symlink_metadata().is_err() {
                    let name = node.file_name().ok_or("no node name")?;
                    std::os::unix::fs::symlink(Path::new("..").join(name), &link)
                        .map_err(|e| format!("{}: {e}", link.display()))?;
                    links.made.push(link);
                }
            }
            run_ok("dmsetup", &["mknodes", map.name()])?;
            links
                .made
                .push(PathBuf::from("/dev/mapper").join(map.name()));
        }
        Ok(links)
    }
}

impl Drop for UdevLinks {
    fn drop(&mut self) {
        for l in &self.made {
            let _ = std::fs::remove_file(l);
        }
    }
}

fn ns_id(pid: u32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn cgroup(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// What a process's threads are doing (state and kernel wait channel) and its fds: for
/// a failure report when something hangs.
fn proc_state(pid: u32) -> String {
    let mut out = format!("pid {pid} {:?}:", argv(pid));
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    for t in tasks {
        let dir = t.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .map_or("?", |(_, rest)| &rest[..1.min(rest.len())]);
        out += &format!(
            "\n    task {} {} {state} wchan={} syscall={}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            read("syscall").split_whitespace().next().unwrap_or("?")
        );
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let link = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{}->{}", e.file_name().to_string_lossy(), link.display())
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    out + &format!("\n    fds: {fds}")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The helpers libvirt runs (every `prhelper -k` process but ours).
fn managed_helpers(binary: &Path, ours: &[u32]) -> Vec<(u32, PathBuf)> {
    helpers_of(binary)
        .into_iter()
        .filter(|(p, _)| !ours.contains(p))
        .collect()
}

/// The managed helper of domain `name`: its socket is `.../domain-N-NAME/pr-helper0.sock`.
fn helper_of(binary: &Path, ours: &[u32], name: &str) -> Option<(u32, PathBuf)> {
    let dir = format!("-{name}/pr-helper0.sock");
    managed_helpers(binary, ours)
        .into_iter()
        .find(|(_, s)| s.display().to_string().ends_with(&dir))
}

fn wait_helper(lv: &Libvirtd, binary: &Path, ours: &[u32], name: &str) -> Result<(u32, PathBuf)> {
    wait_for(
        &format!("libvirt's prhelper for {name}"),
        Duration::from_secs(120),
        || {
            if let Some(h) = helper_of(binary, ours, name) {
                return Ok(Some(h));
            }
            std::thread::sleep(Duration::from_millis(100));
            Ok(None)
        },
    )
    .map_err(|e| format!("{e}\nlibvirtd log:\n{}", lv.log_tail(30)))
}

/// A request without an fd, then a close: the helper answers or drops this connection
/// only, whatever happens to its log (libvirt has closed its stderr by now).
fn malformed_request(sock: &Path) -> Result<()> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut features = [0u8; 4];
    s.read_exact(&mut features)
        .map_err(|e| format!("handshake: {e}"))?;
    let _ = s.write_all(&[0x5e; 16]);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(())
}

/// READ KEYS through the helper on `socket`, with `dev`'s fd.
fn keys_through(socket: &Path, dev: &Path) -> Result<Vec<u64>> {
    let mut c = prh::connect(socket)?;
    let f = prh::open_rw(dev)?;
    let r = prh::pr_in(&mut c, &f, PrInAction::ReadKeys, 8192)?;
    ensure!(
        r.is_good(),
        "READ KEYS through {}: {}",
        socket.display(),
        prh::outcome(&r)
    );
    Ok(ReadKeys::decode(&r.data).map_err(|e| e.to_string())?.keys)
}

/// The guest: on each of the four disks REGISTER + READ KEYS, a RESERVE on the map,
/// then wait for the outer VM (helper killed and restarted), then READ KEYS, a key
/// change on each disk, READ KEYS on the `/dev/dm-N` map.
fn guest_script() -> String {
    let pause = guest_pause(1200);
    format!(
        "set -x\n\
         P=$(disk 0) && M=$(disk 1) && N=$(disk 2) && U=$(disk 3) || exit 20\n\
         for d in $P $M $N $U; do\n\
         \x20   sg_persist --out --register --param-sark=0x{KEY:x} $d || exit 10\n\
         \x20   sg_persist --in --read-keys $d || exit 11\n\
         done\n\
         sg_persist --out --reserve --param-rk=0x{KEY:x} --prout-type=5 $M || exit 12\n\
         {pause}\
         sg_persist --in --read-keys $P || exit 15\n\
         for d in $P $M $N $U; do\n\
         \x20   sg_persist --out --register --param-rk=0x{KEY:x} --param-sark=0x{KEY2:x} $d || exit 16\n\
         done\n\
         sg_persist --in --read-keys $N || exit 17\n"
    )
}

/// libvirt managed (plain LUN, `/dev/mapper/NAME` and `/dev/dm-N` maps) and unmanaged
/// reservations in one booted domain; a second domain's helper lifecycle; kill -9 and
/// libvirt's restart; no helper or socket left behind.
pub fn libvirt_qemu() -> Result<()> {
    let started = Instant::now();
    let scratch = scratch_dir("libvirt")?;
    let sig = scratch.join("sig");
    std::fs::create_dir_all(&sig).map_err(|e| e.to_string())?;

    let plain = SharedLun::new("lvp", 64 << 20, 2)?;
    let lun_m = mpath::shared_lun("lvm", 64 << 20, 3)?;
    let map_m = Map::create("lvm", &lun_m, &[0, 1])?;
    let lun_n = mpath::shared_lun("lvn", 64 << 20, 3)?;
    let map_n = Map::create("lvn", &lun_n, &[0, 1])?;
    let unmanaged = SharedLun::new("lvu", 64 << 20, 2)?;
    let other = SharedLun::new("lvo", 32 << 20, 1)?;
    let _links = UdevLinks::make(&[&map_m, &map_n])?;
    let mapper_m = PathBuf::from("/dev/mapper").join(map_m.name());

    // The admin's system helper for the unmanaged disk.
    let system = prh::start_prhelper(&scratch.join("system.sock"), &[])?;
    let bin = prh::prhelper_bin();
    let ours = [system.pid()];
    let lv = Libvirtd::start(&scratch.join("libvirtd"), &bin)?;

    let mut one = Domain::new("lab-one", &guest_script())
        .with_disk(&plain.device(0).disk, Reservations::Managed)
        .with_disk(&mapper_m, Reservations::Managed)
        .with_disk(map_n.dev(), Reservations::Managed)
        .with_disk(
            &unmanaged.device(0).disk,
            Reservations::Unmanaged(system.socket().to_path_buf()),
        );
    one.sig = Some(sig.clone());
    lv.create(&one.name, &one.prepare()?)?;
    let (h1, sock1) = wait_helper(&lv, &bin, &ours, &one.name)?;
    println!(
        "  lab-one started; libvirt's helper pid {h1} on {}",
        sock1.display()
    );
    let fail = |e: String| -> String {
        format!(
            "{e}\nlab-one console tail:\n{}\nlibvirtd log:\n{}\nsystem prhelper log:\n{}",
            tail(&one.console_text(), 30),
            lv.log_tail(30),
            tail(&system.log_text(), 30)
        )
    };

    // libvirt's contract: exactly `-k SOCK`, QEMU's mount namespace and cgroup, one
    // helper for the domain's three managed disks and none for the unmanaged one.
    let args = argv(h1);
    ensure!(
        args[1..] == ["-k".to_string(), sock1.display().to_string()],
        "libvirt ran {args:?}"
    );
    let qemu = lv.qemu_pid(&one.name)?;
    ensure!(
        ns_id(h1, "mnt") == ns_id(qemu, "mnt") && ns_id(h1, "mnt") != ns_id(lv.pid(), "mnt"),
        "helper's mount namespace {} (QEMU's {}, libvirtd's {})",
        ns_id(h1, "mnt"),
        ns_id(qemu, "mnt"),
        ns_id(lv.pid(), "mnt")
    );
    // The domain's cgroup (QEMU itself sits in its `emulator` child), whose device
    // filter applies to the whole subtree.
    let (hc, qc) = (cgroup(h1), cgroup(qemu));
    ensure!(
        hc.contains("lab-one") && (qc == hc || qc.starts_with(&format!("{hc}/"))),
        "helper's cgroup {hc:?}, QEMU's {qc:?}"
    );
    let managed = managed_helpers(&bin, &ours);
    ensure!(managed.len() == 1, "libvirt runs {managed:?}");

    // A malformed request after libvirt closed the helper's stderr.
    let sock1_seen =
        PathBuf::from(format!("/proc/{h1}/root")).join(sock1.strip_prefix("/").unwrap());
    malformed_request(&sock1_seen).map_err(fail)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        alive(h1),
        "{}",
        fail("helper died after a malformed request".into())
    );

    // A second domain gets its own helper; destroying it leaves lab-one's alone.
    let two = Domain::new("lab-two", "sleep 1000")
        .with_disk(&other.device(0).disk, Reservations::Managed);
    lv.create(&two.name, &two.prepare()?)?;
    let (h2, sock2) = wait_helper(&lv, &bin, &ours, &two.name).map_err(fail)?;
    ensure!(
        h2 != h1 && sock2 != sock1,
        "lab-two shares lab-one's helper"
    );
    let sock2_seen = lv.ns_path(&sock2);
    ensure!(sock2_seen.exists(), "no {}", sock2_seen.display());
    let t = Instant::now();
    lv.virsh(&["destroy", &two.name]).map_err(fail)?;
    wait_for("lab-two's helper to exit", Duration::from_secs(10), || {
        Ok((!alive(h2)).then_some(()))
    })
    .map_err(fail)?;
    println!(
        "  lab-two: helper pid {h2} gone {:.2}s after virsh destroy",
        t.elapsed().as_secs_f64()
    );
    ensure!(
        !sock2_seen.exists(),
        "lab-two's socket left behind: {}",
        sock2_seen.display()
    );
    ensure!(
        alive(h1),
        "{}",
        fail("destroying lab-two killed lab-one's helper".into())
    );

    // Phase 1 in lab-one's guest.
    let timeout = Duration::from_secs(
        std::env::var("PRHELPER_LAB_NESTED_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1200),
    );
    let boot = Instant::now();
    while !sig.join("phase1").exists() {
        if !lv.exists(&one.name) || boot.elapsed() > timeout {
            bail!(
                "{}",
                fail(format!(
                    "lab-one ended (status {:?}) or timed out before phase 1",
                    one.status()
                ))
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "  lab-one's guest: phase 1 done {:.1}s after the domain started",
        started.elapsed().as_secs_f64()
    );
    let check_phase = |key: u64, when: &str| -> Result<()> {
        let keys = sg::read_keys(&plain.device(1).disk)?;
        ensure!(
            keys == [key],
            "{when}: plain LUN keys from the other initiator: {keys:x?}"
        );
        let full = sg::read_full_status(&plain.device(1).disk)?;
        expect_contains(when, &full, &plain.targets[0].initiator_sas_address())?;
        let regs = expect_legs(&lun_m, key, &[0, 1], &format!("{when}: /dev/mapper map"))?;
        ensure!(
            holder(&lun_m, &regs)
                .is_some_and(|(_, k, t)| k == key && t.contains("registrants only")),
            "{when}: /dev/mapper map's reservation: {}",
            show(&regs, &lun_m)
        );
        let regs_n = lio_view(&lun_n, 2)?;
        let legs_n = legs_with_key(&regs_n, &lun_n, key);
        ensure!(
            legs_n.len() == 1,
            "{when}: /dev/dm-N map: key on legs {legs_n:?} (one path expected: sent to the map): {}",
            show(&regs_n, &lun_n)
        );
        let keys = sg::read_keys(&unmanaged.device(1).disk)?;
        ensure!(keys == [key], "{when}: unmanaged LUN keys: {keys:x?}");
        Ok(())
    };
    check_phase(KEY, "after the guest's REGISTER").map_err(fail)?;
    ensure!(
        system.log_text().contains("register"),
        "{}",
        fail("the system helper logged no REGISTER".into())
    );

    // kill -9. libvirt restarts the helper when QEMU reports the pr-manager
    // disconnected, i.e. on the guest's next PR command (QEMU then retries for a few
    // seconds): let the guest go on, and wait for the new helper on the same socket.
    // SAFETY: kill(2) on the helper libvirt started for our domain.
    unsafe { libc::kill(h1 as libc::pid_t, libc::SIGKILL) };
    wait_for("the killed helper to go", Duration::from_secs(10), || {
        Ok((!alive(h1)
            || std::fs::read_to_string(format!("/proc/{h1}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(()))
    })
    .map_err(fail)?;
    std::fs::write(sig.join("go"), "go").map_err(|e| e.to_string())?;
    let t = Instant::now();
    let (h1b, sock1b) = wait_for("libvirt to restart the helper", timeout, || {
        if !lv.exists(&one.name) {
            bail!("lab-one ended before libvirt restarted its helper");
        }
        let h = helper_of(&bin, &ours, &one.name).filter(|(p, _)| *p != h1);
        if h.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(h)
    })
    .map_err(fail)?;
    println!(
        "  helper {h1} killed; libvirt started {h1b} {:.1}s after the guest was told to go on",
        t.elapsed().as_secs_f64()
    );
    ensure!(sock1b == sock1, "restarted helper on {}", sock1b.display());

    // Phase 2; the guest powers off, the transient domain goes away with its helper.
    // A guest whose console stays silent for 5 minutes is stuck: say where.
    let t = Instant::now();
    let (mut seen, mut last_change) = (0, Instant::now());
    while lv.exists(&one.name) {
        let len = one.console_text().len();
        if len != seen {
            (seen, last_change) = (len, Instant::now());
        }
        if t.elapsed() > timeout || last_change.elapsed() > Duration::from_secs(300) {
            bail!(
                "{}",
                fail(format!(
                    "lab-one did not finish phase 2 (console silent for {:.0}s)\nrestarted helper: {}\nQEMU: {}",
                    last_change.elapsed().as_secs_f64(),
                    proc_state(h1b),
                    lv.qemu_pid(&one.name).map(proc_state).unwrap_or_else(|e| e)
                ))
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = one.status();
    ensure!(
        status == Some(0),
        "{}",
        fail(format!("lab-one's script exited {status:?}"))
    );
    check_phase(KEY2, "after the restart and key change").map_err(fail)?;
    println!(
        "  lab-one's guest: phase 2 done (READ KEYS and a key change on all four disks) {:.1}s after the restart; LIO agrees",
        t.elapsed().as_secs_f64()
    );
    expect_contains(
        "guest READ KEYS after restart",
        &one.console_text(),
        &format!("0x{KEY2:x}"),
    )?;

    // Nothing left behind; the system helper outlives the domain and still serves.
    wait_for("libvirt's helpers to exit", Duration::from_secs(10), || {
        Ok(managed_helpers(&bin, &ours).is_empty().then_some(()))
    })
    .map_err(fail)?;
    let sock1_ns = lv.ns_path(&sock1);
    ensure!(
        !sock1_ns.exists(),
        "lab-one's socket left behind: {}",
        sock1_ns.display()
    );
    ensure!(
        alive(system.pid()),
        "{}",
        fail("the system helper died".into())
    );
    let keys = keys_through(system.socket(), &unmanaged.device(1).disk)?;
    ensure!(keys == [KEY2], "system helper after the domain: {keys:x?}");
    println!("  lab-one gone: no managed helper or socket left; the system helper still serves");
    drop(lv);
    system.stop()?;
    drop(map_n);
    drop(map_m);
    Ok(())
}
