// SPDX-License-Identifier: MIT OR Apache-2.0
//! Containment (issue 13 §1): an fd on part of a LU must not reach the whole LU.
//!
//! One LIO LU with three tcm_loop legs; leg 2 is the outside initiator whose READ
//! FULL STATUS is the judge. On leg 0: an MBR partition table (partition 1, found
//! through sysfs; devtmpfs makes its node), a dm-linear slice of the disk, a dm-linear
//! map of the whole disk; and a dm-multipath map over legs 0 and 1. For
//! `--multipath=auto` and `--multipath=off` (kill-mode seccomp and Landlock, as
//! always), one client connection: PR OUT (REGISTER, RESERVE) and PR IN (READ KEYS,
//! READ FULL STATUS) on the partition and on the slice, with writable and read-only
//! fds, get CHECK CONDITION 05/20/00 and LIO shows no registration; then, on the same
//! connection, REGISTER through the whole disk, the whole-disk dm-linear map and the
//! multipath map reach LIO (both legs for the multipath map with `auto`, one with
//! `off`), and are undone. The log must name the refusals with the client's pid and
//! uid and the device, rate-limited.

use prhelper::scsi::cdb::{PrInAction, PrOutAction};
use prhelper::scsi::sense::SenseCode;
use prhelper::scsi::Status;
use prhelper_lab::helper::Helper;
use prhelper_lab::lio::SharedLun;
use prhelper_lab::mpath::{self, lio_view, Map};
use prhelper_lab::prh::{self, expect_good, expect_reply, keys, open_ro, open_rw, with_log};
use prhelper_lab::util::{read_attr, run_ok, scratch_dir, wait_for};
use prhelper_lab::{bail, ensure, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A `dmsetup create` map with a given table, removed on drop.
struct DmMap {
    name: String,
    dev: PathBuf,
}

impl DmMap {
    fn create(name: &str, table: &str) -> Result<DmMap> {
        run_ok(
            "dmsetup",
            &["--noudevsync", "create", name, "--table", table],
        )?;
        let majmin = run_ok(
            "dmsetup",
            &["info", "-c", "--noheadings", "-o", "major,minor", name],
        )?
        .stdout;
        let (a, b) = majmin
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("dmsetup info {name}: {majmin:?}"))?;
        let devnum = (
            a.trim().parse().map_err(|e| format!("{majmin:?}: {e}"))?,
            b.trim().parse().map_err(|e| format!("{majmin:?}: {e}"))?,
        );
        Ok(DmMap {
            name: name.to_string(),
            dev: mpath::block_dev_node(devnum)?,
        })
    }
}

impl Drop for DmMap {
    fn drop(&mut self) {
        if let Err(e) = mpath::remove_dm(&self.name) {
            eprintln!("containment: {e}");
        }
    }
}

/// Write an MBR with one Linux partition (`start`, `sectors`) to `disk`, have the
/// kernel read it, and return the partition's /dev node.
fn partition(disk: &Path, start: u32, sectors: u32) -> Result<PathBuf> {
    let mut mbr = [0u8; 512];
    let e = &mut mbr[446..462];
    e[4] = 0x83;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = open_rw(disk)?;
    f.write_all(&mbr)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing the MBR to {}: {e}", disk.display()))?;
    drop(f);
    run_ok("blockdev", &["--rereadpt", &disk.display().to_string()])?;
    let name = disk
        .file_name()
        .ok_or("disk has no name")?
        .to_string_lossy()
        .into_owned();
    let sys = PathBuf::from("/sys/block")
        .join(&name)
        .join(format!("{name}1"));
    let s = sys.clone();
    wait_for("partition in sysfs", Duration::from_secs(10), || {
        Ok(s.join("partition").exists().then_some(()))
    })?;
    let devnum = read_attr(&sys.join("dev"))?;
    let (a, b) = devnum
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("bad dev {devnum:?}"))?;
    mpath::block_dev_node((
        a.parse().map_err(|e| format!("{devnum:?}: {e}"))?,
        b.parse().map_err(|e| format!("{devnum:?}: {e}"))?,
    ))
}

pub fn containment() -> Result<()> {
    let t0 = Instant::now();
    let scratch = scratch_dir("containment")?;
    let lun = mpath::shared_lun("contain", 64 << 20, 3)?;
    let disk = lun.device(0).disk.clone();
    let name = disk.file_name().unwrap().to_string_lossy().into_owned();
    let sectors: u64 = read_attr(&PathBuf::from("/sys/block").join(&name).join("size"))?
        .trim()
        .parse()
        .map_err(|e| format!("size of {name}: {e}"))?;
    let devt = read_attr(&PathBuf::from("/sys/block").join(&name).join("dev"))?;
    let devt = devt.trim();
    let part = partition(&disk, 2048, 8192)?;
    let slice = DmMap::create("contain-slice", &format!("0 8192 linear {devt} 16384"))?;
    let whole = DmMap::create("contain-whole", &format!("0 {sectors} linear {devt} 0"))?;
    let map = Map::create("contain-mp", &lun, &[0, 1])?;
    println!(
        "  set-up {:.1?}: partition {}, slice {}, whole linear {}, multipath {}",
        t0.elapsed(),
        part.display(),
        slice.dev.display(),
        whole.dev.display(),
        map.dev().display()
    );
    for mode in ["--multipath=auto", "--multipath=off"] {
        let t = Instant::now();
        let helper = prh::start_prhelper(&scratch.join("pr.sock"), &[mode])?;
        let r = run_mode(
            &helper,
            mode,
            &lun,
            &part,
            &slice.dev,
            &disk,
            &whole.dev,
            map.dev(),
        );
        let mut helper = helper;
        r.map_err(with_log(&helper))?;
        ensure!(
            helper.is_running(),
            "{mode}: prhelper died:\n{}",
            helper.log_text()
        );
        helper.stop()?;
        println!("  {mode}: {:.1?}", t.elapsed());
    }
    // For contrast, the hole this closes: Debian's C helper sends both to the LU.
    let t = Instant::now();
    let c_helper = Helper::start(Path::new(C_HELPER), &scratch.join("c.sock"), &[])?;
    let mut c = prh::connect(c_helper.socket())?;
    for (what, dev) in [("partition", &part), ("dm-linear slice", &slice.dev)] {
        let rw = open_rw(dev)?;
        let r = prh::pr_out(&mut c, &rw, PrOutAction::Register, 0, &keys(0, KEY))?;
        expect_good(&format!("C helper: REGISTER on the {what}"), &r)
            .map_err(with_log(&c_helper))?;
        let legs = mpath::legs_with_key(&lio_view(&lun, 2)?, &lun, KEY);
        ensure!(
            legs == [0],
            "C helper: REGISTER on the {what} reached legs {legs:?}"
        );
        println!("  C helper: REGISTER on the {what} registered the whole LU (leg 0)");
        unregister_everywhere(&lun)?;
    }
    drop(c);
    c_helper.stop()?;
    println!("  C helper: {:.1?}", t.elapsed());
    drop(map);
    drop(whole);
    drop(slice);
    Ok(())
}

const C_HELPER: &str = "/usr/bin/qemu-pr-helper";

const KEY: u64 = 0xc0ffee;

fn nothing_registered(lun: &SharedLun, what: &str) -> Result<()> {
    let regs = lio_view(lun, 2)?;
    ensure!(regs.is_empty(), "{what}: LIO shows registrations {regs:?}");
    Ok(())
}

/// Undo a registration of KEY on whichever legs hold it (directly, with sg_persist).
fn unregister_everywhere(lun: &SharedLun) -> Result<()> {
    let regs = lio_view(lun, 2)?;
    for leg in mpath::legs_with_key(&regs, lun, KEY) {
        prhelper_lab::sg::unregister(&lun.device(leg).disk, KEY)?;
    }
    nothing_registered(lun, "after unregistering")
}

#[allow(clippy::too_many_arguments)]
fn run_mode(
    helper: &Helper,
    mode: &str,
    lun: &SharedLun,
    part: &Path,
    slice: &Path,
    disk: &Path,
    whole: &Path,
    mp: &Path,
) -> Result<()> {
    let mut c = prh::connect(helper.socket())?;
    let refused = Some(SenseCode::INVALID_OPCODE);
    for (what, dev) in [("partition", part), ("dm-linear slice", slice)] {
        let rw = open_rw(dev)?;
        let ro = open_ro(dev)?;
        let w = |s: &str| format!("{mode}: {s} on the {what} {}", dev.display());
        let r = prh::pr_out(&mut c, &rw, PrOutAction::Register, 0, &keys(0, KEY))?;
        expect_reply(&w("REGISTER"), &r, Status::CHECK_CONDITION, refused)?;
        let r = prh::pr_out(&mut c, &rw, PrOutAction::Reserve, 1, &keys(KEY, 0))?;
        expect_reply(&w("RESERVE"), &r, Status::CHECK_CONDITION, refused)?;
        for (fd, how) in [(&rw, "rw"), (&ro, "ro")] {
            for action in [PrInAction::ReadKeys, PrInAction::ReadFullStatus] {
                let r = prh::pr_in(&mut c, fd, action, 8192)?;
                expect_reply(
                    &w(&format!("{} ({how})", action.name())),
                    &r,
                    Status::CHECK_CONDITION,
                    refused,
                )?;
                ensure!(r.data.is_empty(), "{}: data returned", w(action.name()));
            }
        }
        nothing_registered(lun, &w("after PR OUT"))?;
    }
    // The same connection still serves, and whole devices work.
    let expect_legs: &[usize] = if mode.ends_with("auto") { &[0, 1] } else { &[] };
    for (what, dev) in [
        ("whole disk", disk),
        ("whole-disk dm-linear", whole),
        ("multipath map", mp),
    ] {
        let rw = open_rw(dev)?;
        let r = prh::pr_out(&mut c, &rw, PrOutAction::Register, 0, &keys(0, KEY))?;
        expect_good(&format!("{mode}: REGISTER on the {what}"), &r)?;
        let r = prh::pr_in(&mut c, &rw, PrInAction::ReadKeys, 8192)?;
        expect_good(&format!("{mode}: READ KEYS on the {what}"), &r)?;
        let legs = mpath::legs_with_key(&lio_view(lun, 2)?, lun, KEY);
        let ok = match what {
            "multipath map" if !expect_legs.is_empty() => legs == expect_legs,
            "multipath map" => legs.len() == 1,
            _ => legs == [0],
        };
        ensure!(ok, "{mode}: REGISTER on the {what} reached legs {legs:?}");
        println!("  {mode}: {what}: REGISTER reached legs {legs:?}");
        unregister_everywhere(lun)?;
    }
    // The log: the refusals, with who asked and for which device.
    let log = helper.log_text();
    let me = format!("pid {} uid 0", std::process::id());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("refused a PR")).collect();
    ensure!(
        lines
            .iter()
            .any(|l| l.contains(&me) && l.contains("is a partition")),
        "{mode}: no partition refusal naming {me} in the log"
    );
    let warned = lines.iter().filter(|l| l.contains("WARN")).count();
    // 2 devices × (2 PR OUT + 4 PR IN) = 12 refusals: 5 warnings per 10 s, the rest
    // debug.
    ensure!(
        (5..12).contains(&warned) && lines.len() == 12,
        "{mode}: expected 5 (or a few more) of 12 refusals at warning level, got {warned} of {}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    if !lines.iter().any(|l| l.contains("covers only part of")) {
        bail!("{mode}: no dm slice refusal in the log");
    }
    println!("  {mode}: log: {}", lines[0].trim());
    Ok(())
}
