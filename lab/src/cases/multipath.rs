// SPDX-License-Identifier: MIT OR Apache-2.0
//! prhelper on dm-multipath maps over two tcm_loop paths to one LIO LU, with a third
//! initiator outside the map as the observer: LIO's own READ FULL STATUS from there is
//! the ground truth for which I_T nexus holds which key.
//!
//! - `multipath_prhelper`: a `dmsetup` map, no multipathd: every PR OUT action, paths
//!   taken down (at the LIO level) under every awkward case, conflicts, SPEC_I_PT,
//!   ALL_TG_PT, PR IN with every path down; and the kernel's own `IOC_PR_REGISTER` on the
//!   same map for contrast (docs/multipath.md).
//! - `multipath_multipathd`: Debian's multipathd builds the map; prhelper tells it the
//!   key, a path that was down comes back and multipathd registers it; the same
//!   sequence through Debian's `mpathpersist` on the same map, compared.
//! - `multipath_nested_qemu`: a nested guest's sg_persist through QEMU and prhelper on a
//!   multipath map registers both paths.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use prhelper::scsi::cdb::{PrInAction, PrOutAction};
use prhelper::scsi::prin::{ReadKeys, ReadReservation};
use prhelper::scsi::prout::BasicParams;
use prhelper::scsi::sense::SenseCode;
use prhelper::scsi::Status;
use prhelper_lab::helper::Helper;
use prhelper_lab::mpath::{self, legs_with_key, lio_view, persist, Map, Multipathd, Registration};
use prhelper_lab::nested::tail;
use prhelper_lab::prh::{self, expect_check, expect_good, expect_reply, keys, outcome};
use prhelper_lab::util::{run, run_ok, scratch_dir, step};
use prhelper_lab::{ensure, sg, Result};

const OBSERVER: usize = 2;

/// prhelper with a client connection and the map's fd.
struct Through {
    helper: Helper,
    client: prhelper::client::Client,
    dev: File,
}

impl Through {
    fn start(name: &str, map_dev: &Path) -> Result<Through> {
        let scratch = scratch_dir(name)?;
        let helper = prh::start_prhelper(&scratch.join("pr.sock"), &[])?;
        let client = prh::connect(helper.socket())?;
        let dev = prh::open_rw(map_dev)?;
        Ok(Through {
            helper,
            client,
            dev,
        })
    }

    fn out(
        &mut self,
        what: &str,
        a: PrOutAction,
        ty: u8,
        p: &BasicParams,
    ) -> Result<prhelper::client::Response> {
        let r = prh::pr_out(&mut self.client, &self.dev, a, ty, p)?;
        println!("  {what}: {}", outcome(&r));
        Ok(r)
    }

    fn expect_good(&mut self, what: &str, a: PrOutAction, ty: u8, p: &BasicParams) -> Result<()> {
        let r = self.out(what, a, ty, p)?;
        expect_good(what, &r).map_err(|e| self.with_log(e))
    }

    /// REGISTER (type 0) from `old` to `new`, expecting GOOD.
    fn register(&mut self, what: &str, old: u64, new: u64) -> Result<()> {
        self.expect_good(what, PrOutAction::Register, 0, &keys(old, new))
    }

    /// REGISTER AND IGNORE EXISTING KEY to `new`, expecting GOOD.
    fn register_ignore(&mut self, what: &str, new: u64) -> Result<()> {
        self.expect_good(what, PrOutAction::RegisterAndIgnore, 0, &keys(0, new))
    }

    fn read_keys(&mut self) -> Result<Vec<u64>> {
        let r = prh::pr_in(&mut self.client, &self.dev, PrInAction::ReadKeys, 8192)?;
        expect_good("READ KEYS", &r)?;
        Ok(ReadKeys::decode(&r.data).map_err(|e| e.to_string())?.keys)
    }

    fn read_reservation(&mut self) -> Result<ReadReservation> {
        let r = prh::pr_in(&mut self.client, &self.dev, PrInAction::ReadReservation, 24)?;
        expect_good("READ RESERVATION", &r)?;
        ReadReservation::decode(&r.data).map_err(|e| e.to_string())
    }

    fn with_log(&self, e: String) -> String {
        format!(
            "{e}\nprhelper log (tail):\n{}",
            tail(&self.helper.log_text(), 40)
        )
    }
}

/// Fail with `what` and LIO's view unless `ok`.
fn expect_lio(
    ok: bool,
    what: &str,
    regs: &[Registration],
    lun: &prhelper_lab::lio::SharedLun,
) -> Result<()> {
    ensure!(ok, "{what}: {}", show(regs, lun));
    Ok(())
}

/// The holder's leg and type text in LIO's view.
pub(crate) fn holder(
    lun: &prhelper_lab::lio::SharedLun,
    regs: &[Registration],
) -> Option<(usize, u64, String)> {
    regs.iter().find(|r| r.holder).map(|r| {
        (
            r.leg(lun).unwrap_or(usize::MAX),
            r.key,
            r.res_type.clone().unwrap_or_default(),
        )
    })
}

pub(crate) fn show(regs: &[Registration], lun: &prhelper_lab::lio::SharedLun) -> String {
    regs.iter()
        .map(|r| {
            format!(
                "leg {:?} key {:#x}{}{}",
                r.leg(lun),
                r.key,
                if r.holder { " HOLDER " } else { "" },
                r.res_type.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn expect_legs(
    lun: &prhelper_lab::lio::SharedLun,
    key: u64,
    want: &[usize],
    when: &str,
) -> Result<Vec<Registration>> {
    let regs = lio_view(lun, OBSERVER)?;
    let got = legs_with_key(&regs, lun, key);
    ensure!(
        got == want,
        "{when}: key {key:#x} on legs {got:?}, want {want:?} (LIO: {})",
        show(&regs, lun)
    );
    Ok(regs)
}

/// SG_IO through one leg's own disk works again after it comes back (answers the
/// pending UNIT ATTENTION).
fn settle(disk: &Path) {
    for _ in 0..3 {
        let _ = sg::sg_persist(disk, &["--in", "--read-keys"]);
    }
}

/// Path `i` down at the LIO level and failed in dm (what multipathd would do).
fn dead(map: &Map, i: usize) -> Result<()> {
    map.path_offline(i)?;
    map.fail_path(i)
}

/// Path `i` back in LIO and dm, its pending UNIT ATTENTION answered.
fn revive(map: &Map, i: usize) -> Result<()> {
    map.path_online(i)?;
    map.reinstate_path(i)?;
    settle(&map.paths()[i].disk);
    Ok(())
}

/// prhelper on a map made with dmsetup (no multipathd).
pub fn multipath_prhelper() -> Result<()> {
    let lun = mpath::shared_lun("mpp", 64 << 20, 3)?;
    let map = Map::create("mpp", &lun, &[0, 1])?;
    let mut t = Through::start("multipath-prhelper", map.dev())?;
    let legs = [0usize, 1];
    let obs = lun.device(OBSERVER).disk.clone();
    use PrOutAction::*;
    const A: u64 = 0xa1;
    const A2: u64 = 0xa2;
    const A3: u64 = 0xa3;
    const B: u64 = 0xb2;
    const A4: u64 = 0xa4;
    const C: u64 = 0xc3;
    const M: u64 = 0xe5;
    const MB: u64 = 0xb5;
    const D: u64 = 0xd4;

    step("--multipath=off: one leg, CAP_SYS_ADMIN dropped", || {
        // --multipath=off: CAP_SYS_ADMIN dropped, SG_IO on the map: one leg registered.
        let cap_eff = |pid: u32| -> Result<String> {
            let st = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|e| e.to_string())?;
            Ok(st
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .unwrap_or("")
                .trim()
                .to_string())
        };
        t.read_keys()?;
        ensure!(
            cap_eff(t.helper.pid())? == "0000000000220000",
            "CapEff with multipath on: {}",
            cap_eff(t.helper.pid())?
        );
        {
            let scratch = scratch_dir("multipath-off")?;
            let off = prh::start_prhelper(&scratch.join("pr.sock"), &["--multipath=off"])?;
            let mut c = prh::connect(off.socket())?;
            // (The socket accepts before privileges are dropped; a reply comes after.)
            let r = prh::pr_out(&mut c, &t.dev, Register, 0, &keys(0, 0xf0))?;
            expect_good("REGISTER with --multipath=off", &r)?;
            ensure!(
                cap_eff(off.pid())? == "0000000000020000",
                "CapEff with --multipath=off: {}",
                cap_eff(off.pid())?
            );
            let regs = lio_view(&lun, OBSERVER)?;
            let on = legs_with_key(&regs, &lun, 0xf0);
            println!("  --multipath=off: REGISTER reached legs {on:?}");
            ensure!(on.len() == 1, "--multipath=off registered legs {on:?}");
            sg::unregister(&lun.device(on[0]).disk, 0xf0)?;
            drop(c);
            off.stop()?;
        }
        Ok(())
    })?;

    step("no usable device-mapper control node", || {
        // Without a usable device-mapper control node: (a) none at all (not root, or a
        // private /dev without it): the map's paths come from sysfs; (b) one whose ioctls
        // fail: the error is logged and the command goes to the map as is. Neither ends
        // the daemon.
        for (what, mount, want) in [
            (
                "no /dev/mapper/control",
                "mount -t tmpfs none /dev/mapper",
                vec![0, 1],
            ),
            (
                "/dev/mapper/control failing every ioctl",
                "mount --bind /dev/null /dev/mapper/control",
                vec![],
            ),
        ] {
            let scratch = scratch_dir("multipath-noctl")?;
            let wrapper = scratch.join("prhelper-wrapped");
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec unshare -m sh -c '{mount} && exec {} \"$@\"' sh \"$@\"\n",
                    prh::prhelper_bin().display()
                ),
            )
            .map_err(|e| e.to_string())?;
            std::fs::set_permissions(
                &wrapper,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .map_err(|e| e.to_string())?;
            let h = Helper::start(&wrapper, &scratch.join("pr.sock"), &["-v"])?;
            let mut c = prh::connect(h.socket())?;
            let r = prh::pr_out(&mut c, &t.dev, Register, 0, &keys(0, 0xf1))?;
            println!("  REGISTER with {what}: {}", outcome(&r));
            expect_good(what, &r).map_err(prh::with_log(&h))?;
            let on = legs_with_key(&lio_view(&lun, OBSERVER)?, &lun, 0xf1);
            println!("  ... reached legs {on:?}");
            if want.is_empty() {
                ensure!(on.len() == 1, "{what}: legs {on:?}");
                ensure!(
                    h.log_text().contains("DM_TABLE_STATUS"),
                    "{what}: no warning:\n{}",
                    h.log_text()
                );
            } else {
                ensure!(on == want, "{what}: legs {on:?}");
            }
            for leg in on {
                sg::unregister(&lun.device(leg).disk, 0xf1)?;
            }
            drop(c);
            let status = h.stop()?;
            ensure!(status.success(), "{what}: prhelper exit {status}");
        }
        Ok(())
    })?;

    step("REGISTER reaches both paths", || {
        // REGISTER reaches both paths (SG_IO on the map would reach one: mpath_fixture).
        t.register("REGISTER 0 -> A", 0, A)?;
        expect_legs(&lun, A, &legs, "after REGISTER")?;
        let k = t.read_keys()?;
        ensure!(k == [A, A], "READ KEYS through prhelper: {k:x?}");
        Ok(())
    })?;

    let h = step("RESERVE twice, holder path failed in dm", || {
        // RESERVE, then RESERVE again with dm preferring the path that does not hold it.
        t.expect_good("RESERVE WE_RO", Reserve, 5, &keys(A, 0))?;
        let regs = lio_view(&lun, OBSERVER)?;
        let (h, hk, ty) = holder(&lun, &regs).ok_or("no holder after RESERVE")?;
        ensure!(
            legs.contains(&h) && hk == A && ty.contains("registrants only"),
            "holder after RESERVE: leg {h} {hk:#x} {ty}"
        );
        map.fail_path(h)?; // dm now tries `other` first: it answers RESERVATION CONFLICT
        t.expect_good(
            "RESERVE again, holder path failed in dm",
            Reserve,
            5,
            &keys(A, 0),
        )?;
        map.reinstate_path(h)?;
        let rr = t.read_reservation()?;
        ensure!(
            rr.reservation.map(|r| (r.key, r.pr_type)) == Some((A, 5)),
            "READ RESERVATION: {rr:?}"
        );
        Ok(h)
    })?;

    let other = 1 - h;
    step("RELEASE with the holding path offline", || {
        // RELEASE while the holding path is down (LIO: the nexus is gone; dm does not know).
        map.path_offline(h)?;
        t.expect_good("RELEASE, holding path offline", Release, 5, &keys(A, 0))?;
        let regs = lio_view(&lun, OBSERVER)?;
        expect_lio(
            holder(&lun, &regs).is_none(),
            "still reserved after RELEASE",
            &regs,
            &lun,
        )?;
        expect_lio(
            legs_with_key(&regs, &lun, A).contains(&other),
            "reachable path lost its key",
            &regs,
            &lun,
        )?;
        map.path_online(h)?;
        settle(&map.paths()[h].disk);
        t.register_ignore("REGISTER AND IGNORE A (restore)", A)?;
        expect_legs(&lun, A, &legs, "after restoring")?;
        Ok(())
    })?;

    step(
        "key change with a path down, then a conflicting path",
        || {
            // REGISTER (key change) while one path is down: the old key is removed from that
            // path's nexus too (PREEMPT through the other). Then a REGISTER where that path
            // conflicts (it holds a key of its own): retried with REGISTER AND IGNORE.
            map.path_offline(1)?;
            t.register("REGISTER A -> A2, path 1 offline", A, A2)?;
            expect_legs(&lun, A2, &[0], "A2 with path 1 offline")?;
            map.path_online(1)?;
            settle(&map.paths()[1].disk);
            let regs = lio_view(&lun, OBSERVER)?;
            expect_lio(
                !regs.iter().any(|r| r.leg(&lun) == Some(1)),
                "path 1 back with a stale registration",
                &regs,
                &lun,
            )?;
            sg::register_ignore(&map.paths()[1].disk, 0x5757)?;
            t.register("REGISTER A2 -> A3, path 1 conflicts", A2, A3)?;
            expect_legs(&lun, A3, &legs, "after the conflicting REGISTER")?;
            let log = t.helper.log_text();
            ensure!(
                log.contains("Conflict"),
                "no conflicting path seen in the log"
            );
            Ok(())
        },
    )?;

    step("PREEMPT another host's reservation", || {
        // PREEMPT another host's reservation.
        sg::register(&obs, B)?;
        sg::reserve(&obs, B, 1)?.ok()?;
        t.expect_good("PREEMPT B", Preempt, 1, &keys(A3, B))?;
        let regs = expect_legs(&lun, A3, &legs, "after PREEMPT of B")?;
        expect_lio(
            legs_with_key(&regs, &lun, B).is_empty(),
            "B survived PREEMPT",
            &regs,
            &lun,
        )?;
        let (h, _, ty) = holder(&lun, &regs).ok_or("no holder after PREEMPT")?;
        ensure!(
            legs.contains(&h) && ty == "Write Exclusive",
            "holder after PREEMPT: leg {h} {ty}"
        );
        Ok(())
    })?;

    let h = step("self-preempt to change the type", || {
        // Self-preempt to change the type: our key must stay on both paths.
        t.expect_good("PREEMPT own key (type 1 -> 3)", Preempt, 3, &keys(A3, A3))?;
        let regs = expect_legs(&lun, A3, &legs, "after self-preempt")?;
        let (h, _, ty) = holder(&lun, &regs).ok_or("no holder after self-preempt")?;
        ensure!(ty == "Exclusive Access", "type after self-preempt: {ty}");
        Ok(h)
    })?;

    step("key change with the holding path down", || {
        // Key change while the holding path is down (and failed in dm).
        dead(&map, h)?;
        t.register("REGISTER A3 -> A4, holding path down", A3, A4)?;
        let regs = lio_view(&lun, OBSERVER)?;
        let (h2, hk, _) = holder(&lun, &regs).ok_or("no holder after key change")?;
        expect_lio(
            h2 == 1 - h && hk == A4,
            "reservation not moved to the new key",
            &regs,
            &lun,
        )?;
        expect_lio(
            legs_with_key(&regs, &lun, A3).is_empty(),
            "old key left",
            &regs,
            &lun,
        )?;
        revive(&map, h)?;
        t.register_ignore("REGISTER AND IGNORE A4 (restore)", A4)?;
        expect_legs(&lun, A4, &legs, "after restoring A4")?;
        Ok(())
    })?;

    step("unregister while holding through a dead path", || {
        // Unregister while holding the reservation through a dead path.
        let (h, _, _) = holder(&lun, &lio_view(&lun, OBSERVER)?).ok_or("no holder")?;
        dead(&map, h)?;
        t.register("REGISTER A4 -> 0 while holding, holding path down", A4, 0)?;
        let regs = lio_view(&lun, OBSERVER)?;
        expect_lio(
            holder(&lun, &regs).is_none(),
            "reservation left behind",
            &regs,
            &lun,
        )?;
        expect_lio(
            legs_with_key(&regs, &lun, A4).is_empty(),
            "keys left behind",
            &regs,
            &lun,
        )?;
        revive(&map, h)?;
        Ok(())
    })?;

    step("SPEC_I_PT and ALL_TG_PT", || {
        // SPEC_I_PT names the observer once; ALL_TG_PT keeps its bit on every path.
        let tid = prh::sas_tid(lun.targets[OBSERVER].initiator())?;
        let p = BasicParams {
            sa_key: C,
            transport_ids: Some(vec![tid]),
            ..Default::default()
        };
        t.expect_good("REGISTER C with SPEC_I_PT (observer)", Register, 0, &p)?;
        expect_legs(&lun, C, &[0, 1, OBSERVER], "after SPEC_I_PT")?;
        t.expect_good("CLEAR", Clear, 0, &keys(C, 0))?;
        let regs = lio_view(&lun, OBSERVER)?;
        expect_lio(regs.is_empty(), "registrations after CLEAR", &regs, &lun)?;
        let p = BasicParams {
            sa_key: C,
            all_tg_pt: true,
            ..Default::default()
        };
        t.expect_good("REGISTER C with ALL_TG_PT", Register, 0, &p)?;
        let regs = expect_legs(&lun, C, &legs, "after ALL_TG_PT")?;
        ensure!(
            regs.iter().all(|r| r.all_tg_pt),
            "ALL_TG_PT bit lost: {regs:?}"
        );
        // LIO: an ALL_TG_PT registration is removed only by an unregister with ALL_TG_PT.
        let p = BasicParams {
            key: C,
            all_tg_pt: true,
            ..Default::default()
        };
        t.expect_good("REGISTER C -> 0 with ALL_TG_PT", Register, 0, &p)?;
        expect_legs(&lun, C, &[], "after unregistering")?;
        Ok(())
    })?;

    step("PREEMPT AND ABORT rejected", || {
        // PREEMPT AND ABORT: its rejection only (an accepted one can deadlock LIO 6.1).
        let r = t.out(
            "PREEMPT AND ABORT, unregistered",
            PreemptAndAbort,
            1,
            &keys(0x999, C),
        )?;
        expect_reply(
            "PREEMPT AND ABORT, unregistered",
            &r,
            Status::RESERVATION_CONFLICT,
            None,
        )?;
        Ok(())
    })?;

    step(
        "REGISTER AND MOVE with the conflicting path tried first",
        || {
            // REGISTER AND MOVE to the observer's port, with the holder path failed in dm so
            // that the other path (which conflicts) is tried first.
            sg::register(&obs, MB)?;
            let rtpi = lio_view(&lun, OBSERVER)?
                .iter()
                .find(|r| r.leg(&lun) == Some(OBSERVER))
                .map(|r| r.rel_port)
                .ok_or("observer's registration missing")?;
            sg::unregister(&obs, MB)?;
            t.register("REGISTER M", 0, M)?;
            t.expect_good("RESERVE WE", Reserve, 1, &keys(M, 0))?;
            let (h, _, _) = holder(&lun, &lio_view(&lun, OBSERVER)?)
                .ok_or("no holder before REGISTER AND MOVE")?;
            map.fail_path(h)?;
            let params = prhelper::scsi::prout::RegisterMoveParams {
                key: M,
                sa_key: MB,
                unreg: false,
                aptpl: false,
                relative_target_port: rtpi,
                transport_id: prh::sas_tid(lun.targets[OBSERVER].initiator())?,
            }
            .encode();
            let cdb = prhelper::scsi::cdb::pr_out(RegisterAndMove, 0, 1, params.len() as u32);
            let r = t
                .client
                .execute(std::os::fd::AsFd::as_fd(&t.dev), &cdb, &params, 0)
                .map_err(|e| e.to_string())?;
            println!("  REGISTER AND MOVE to the observer: {}", outcome(&r));
            expect_good("REGISTER AND MOVE", &r).map_err(|e| t.with_log(e))?;
            map.reinstate_path(h)?;
            let regs = lio_view(&lun, OBSERVER)?;
            let (hl, hk, _) = holder(&lun, &regs).ok_or("no holder after REGISTER AND MOVE")?;
            expect_lio(
                hl == OBSERVER && hk == MB,
                "after REGISTER AND MOVE",
                &regs,
                &lun,
            )?;
            expect_lio(
                legs_with_key(&regs, &lun, M) == legs,
                "our key after REGISTER AND MOVE",
                &regs,
                &lun,
            )?;
            sg::clear(&obs, MB)?;
            settle(&map.paths()[0].disk);
            settle(&map.paths()[1].disk);
            Ok(())
        },
    )?;

    step("every path down", || {
        // Every path down: the real path error, never GOOD.
        map.path_offline(0)?;
        map.path_offline(1)?;
        let r = prh::pr_in(&mut t.client, &t.dev, PrInAction::ReadKeys, 8192)?;
        println!("  READ KEYS, every path offline: {}", outcome(&r));
        expect_check(
            "READ KEYS, every path offline",
            &r,
            SenseCode::I_T_NEXUS_LOSS,
        )?;
        let r = t.out("REGISTER, every path offline", Register, 0, &keys(0, C))?;
        expect_check(
            "REGISTER, every path offline",
            &r,
            SenseCode::I_T_NEXUS_LOSS,
        )?;
        map.path_online(0)?;
        map.path_online(1)?;
        settle(&map.paths()[0].disk);
        settle(&map.paths()[1].disk);
        Ok(())
    })?;

    step("the kernel's IOC_PR_REGISTER for contrast", || {
        // The kernel's block PR ioctl on the same map, one path down: dm sends REGISTER to
        // every path, stops at the failure and unregisters everywhere.
        map.path_offline(1)?;
        let start = Instant::now();
        let rc = ioc_pr_register(map.dev(), 0, D, Duration::from_secs(90));
        println!(
            "  IOC_PR_REGISTER on the map, path 1 offline: {rc:?} after {:.1}s",
            start.elapsed().as_secs_f64()
        );
        let regs = lio_view(&lun, OBSERVER)?;
        println!("  LIO after IOC_PR_REGISTER: [{}]", show(&regs, &lun));
        ensure!(
            !matches!(rc, Ok(0)),
            "IOC_PR_REGISTER succeeded with a path down"
        );
        t.register_ignore("prhelper REGISTER AND IGNORE, same state", D)?;
        expect_legs(&lun, D, &[0], "prhelper REGISTER with path 1 offline")?;
        map.path_online(1)?;
        settle(&map.paths()[1].disk);
        t.register_ignore("REGISTER AND IGNORE 0 (clean up)", 0)?;
        Ok(())
    })?;

    step("the map torn down under the held fd", || {
        // The map is torn down under the held fd (`dmsetup remove --force` swaps in an
        // error table): the device-mapper answer changes, the daemon must not care.
        let fds = prh::fd_count(t.helper.pid())?;
        // Fails with EBUSY (our fd), after loading the error table, which is the point.
        let o = run(
            "dmsetup",
            &["--noudevsync", "remove", "--force", map.name()],
        )?;
        println!(
            "  dmsetup remove --force with the fd held: exit {}",
            o.status
        );
        let table = run_ok("dmsetup", &["table", map.name()])
            .map(|o| o.stdout)
            .unwrap_or_default();
        println!("  map after dmsetup remove --force: {:?}", table.trim());
        let r = prh::pr_in(&mut t.client, &t.dev, PrInAction::ReadKeys, 8192)?;
        println!("  READ KEYS on the torn-down map: {}", outcome(&r));
        ensure!(
            r.status != Status::GOOD,
            "GOOD from a map with an error table"
        );
        let mut c2 = prh::connect(t.helper.socket())?;
        let leg0 = prh::open_rw(&lun.device(0).disk)?;
        let r = prh::pr_in(&mut c2, &leg0, PrInAction::ReadKeys, 8192)?;
        expect_good("READ KEYS on a leg after the map went", &r)?;
        ensure!(
            prh::fd_count(t.helper.pid())? == fds + 1,
            "fd count {} -> {}",
            fds,
            prh::fd_count(t.helper.pid())?
        );
        drop((c2, leg0));
        Ok(())
    })?;

    step("stop: one 'multipathd not reachable' warning", || {
        let Through {
            helper,
            client,
            dev,
        } = t;
        drop((client, dev));
        // No multipathd in this case: it works, and says so once.
        let log = helper.log_text();
        let warnings = log.matches("multipathd not reachable").count();
        ensure!(
            warnings == 1,
            "{warnings} 'multipathd not reachable' warnings:\n{}",
            tail(&log, 20)
        );
        let status = helper.stop()?;
        ensure!(status.success(), "prhelper exit: {status}");
        let _ = map.remove();
        Ok(())
    })
}

/// `IOC_PR_REGISTER` on `dev`, in a thread so that a hang is reported, not inherited.
/// Ok(return value of the ioctl: 0, a positive PR status, or -errno).
fn ioc_pr_register(dev: &Path, old: u64, new: u64, timeout: Duration) -> Result<i64> {
    #[repr(C)]
    struct PrRegistration {
        old_key: u64,
        new_key: u64,
        flags: u32,
        pad: u32,
    }
    const IOC_PR_REGISTER: u64 = 0x4018_70c8; // _IOW('p', 200, struct pr_registration)
    let f = prh::open_rw(dev)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = PrRegistration {
            old_key: old,
            new_key: new,
            flags: 0,
            pad: 0,
        };
        // SAFETY: `r` is a live `struct pr_registration` for this synchronous ioctl,
        // which only reads it; `f` stays open until the call returns.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), IOC_PR_REGISTER as _, &mut r) };
        let v = if rc < 0 {
            -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            i64::from(rc)
        };
        let _ = tx.send(v);
    });
    rx.recv_timeout(timeout)
        .map_err(|_| format!("IOC_PR_REGISTER did not return within {timeout:?}"))
}

/// prhelper with Debian's multipathd, then Debian's mpathpersist on the same map.
pub fn multipath_multipathd() -> Result<()> {
    let lun = mpath::shared_lun("mpd", 64 << 20, 3)?;
    let mpd = Multipathd::start(&lun, &[0, 1])?;
    println!(
        "  multipathd map {} ({}) up in {:?}",
        mpd.alias(),
        mpd.dev().display(),
        mpd.timings
    );
    let legs = [0usize, 1];
    use PrOutAction::*;
    // prhelper starts after multipathd, so that it connects at start-up.
    let mut t = Through::start("multipath-multipathd", mpd.dev())?;

    const A: u64 = 0x1a;
    const A2: u64 = 0x2a;
    t.register("REGISTER 0 -> A", 0, A)?;
    expect_legs(&lun, A, &legs, "after REGISTER")?;
    ensure!(
        mpd.getprkey()? == Some(A),
        "multipathd key: {:?}",
        mpd.getprkey()
    );
    ensure!(mpd.getprstatus()?, "multipathd prstatus not set");
    ensure!(
        mpd.prkeys_entry().map(|e| e.0) == Some(A),
        "prkeys file: {}",
        mpd.prkeys_file()
    );

    // A path goes down; the key changes meanwhile; the path comes back with the stale
    // key and multipathd registers the new one there.
    mpd.paths()[1].set_online(false)?;
    let down = mpd.wait_path_up(1, false, Duration::from_secs(30))?;
    println!(
        "  multipathd saw path 1 down after {:.1}s",
        down.as_secs_f64()
    );
    t.register("REGISTER A -> A2, path 1 down", A, A2)?;
    expect_legs(&lun, A2, &[0], "A2 while path 1 is down")?;
    ensure!(
        mpd.getprkey()? == Some(A2),
        "multipathd key after change: {:?}",
        mpd.getprkey()
    );
    mpd.paths()[1].set_online(true)?;
    let up = mpd.wait_path_up(1, true, Duration::from_secs(30))?;
    let t0 = Instant::now();
    let mut regs = Vec::new();
    while t0.elapsed() < Duration::from_secs(20) {
        regs = lio_view(&lun, OBSERVER)?;
        if legs_with_key(&regs, &lun, A2) == legs {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        legs_with_key(&regs, &lun, A2) == legs,
        "multipathd did not register the reinstated path: {}\nmultipathd log:\n{}",
        show(&regs, &lun),
        mpd.log_tail(30)
    );
    println!(
        "  path 1 back up after {:.1}s; multipathd registered A2 on it {:.1}s later",
        up.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    t.expect_good("RESERVE WE_RO", Reserve, 5, &keys(A2, 0))?;
    t.expect_good("RELEASE", Release, 5, &keys(A2, 0))?;
    t.register("REGISTER A2 -> 0", A2, 0)?;
    expect_legs(&lun, A2, &[], "after unregister")?;
    ensure!(
        mpd.getprkey()?.is_none(),
        "multipathd still has a key: {:?}",
        mpd.getprkey()
    );
    ensure!(!mpd.getprstatus()?, "multipathd prstatus still set");
    let pr_log = t.helper.log_text();
    t.helper.stop()?;

    // The same steps through Debian's mpathpersist (0.9.4), compared with LIO's view
    // after each step; then the case where they differ.
    let dev = mpd.dev().to_path_buf();
    let steps: &[(&str, &dyn Fn() -> Result<prhelper_lab::util::Output>)] = &[
        ("register", &|| persist::register(&dev, 0, A)),
        ("reserve", &|| persist::reserve(&dev, A, 5)),
        ("release", &|| persist::release(&dev, A, 5)),
        ("unregister", &|| persist::register(&dev, A, 0)),
    ];
    for (what, step) in steps {
        let o = step()?;
        let regs = lio_view(&lun, OBSERVER)?;
        println!(
            "  mpathpersist {what}: exit {}; LIO: [{}]",
            o.status,
            show(&regs, &lun)
        );
        ensure!(o.status == 0, "mpathpersist {what}: {}", o.describe());
        let expect: &[usize] = if *what == "unregister" { &[] } else { &legs };
        expect_lio(
            legs_with_key(&regs, &lun, A) == expect,
            "mpathpersist {what}",
            &regs,
            &lun,
        )?;
    }
    // A REGISTER where one path holds a stale key: 0.9.4 rolls back with a conflict.
    sg::register_ignore(&mpd.paths()[1].disk, 0x77)?;
    let o = persist::register(&dev, 0, A)?;
    let regs = lio_view(&lun, OBSERVER)?;
    println!(
        "  mpathpersist REGISTER with a conflicting path: exit {}; LIO: [{}]",
        o.status,
        show(&regs, &lun)
    );
    // prhelper, same state: both paths end with the key.
    let _ = persist::register_ignore(&dev, 0);
    let _ = sg::sg_persist(
        &mpd.paths()[1].disk,
        &["--out", "--register-ignore", "--param-sark=0"],
    );
    let _ = sg::sg_persist(
        &mpd.paths()[0].disk,
        &["--out", "--register-ignore", "--param-sark=0"],
    );
    sg::register_ignore(&mpd.paths()[1].disk, 0x77)?;
    let mut t = Through::start("multipath-multipathd-2", &dev)?;
    t.register("prhelper REGISTER with a conflicting path", 0, A)?;
    expect_legs(&lun, A, &legs, "prhelper with a conflicting path")?;
    t.register("REGISTER A -> 0", A, 0)?;
    let Through {
        helper,
        client,
        dev,
    } = t;
    drop((client, dev));
    helper.stop()?;

    // -u: multipathd takes PR commands from root only; the connection prhelper opened
    // as root at start-up still works after it dropped to nobody (group disk: reading
    // the path devices).
    let scratch = scratch_dir("multipath-multipathd-u")?;
    std::fs::set_permissions(
        &scratch,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .map_err(|e| e.to_string())?;
    let helper = prh::start_prhelper(&scratch.join("pr.sock"), &["-u", "nobody", "-g", "disk"])?;
    let mut client = prh::connect(helper.socket())?;
    let devf = prh::open_rw(mpd.dev())?;
    const U: u64 = 0x3a;
    let r = prh::pr_out(&mut client, &devf, Register, 0, &keys(0, U))?;
    println!("  REGISTER as nobody:disk: {}", outcome(&r));
    expect_good("REGISTER as nobody", &r).map_err(prh::with_log(&helper))?;
    expect_legs(&lun, U, &legs, "REGISTER as nobody")?;
    ensure!(
        mpd.getprkey()? == Some(U),
        "multipathd key with -u: {:?}\n{}",
        mpd.getprkey(),
        helper.log_text()
    );
    let r = prh::pr_out(&mut client, &devf, Register, 0, &keys(U, 0))?;
    expect_good("unregister as nobody", &r)?;
    ensure!(
        mpd.getprkey()?.is_none(),
        "multipathd key after unregister with -u"
    );
    drop((client, devf));
    helper.stop()?;
    for cmd in [
        "setprkey map",
        "setprstatus map",
        "unsetprstatus map",
        "unsetprkey map",
    ] {
        ensure!(
            pr_log
                .lines()
                .any(|l| l.contains(cmd) && l.ends_with(": ok")),
            "multipathd did not accept '{cmd}':\n{}",
            tail(&pr_log, 30)
        );
    }
    drop(mpd);
    Ok(())
}

/// A nested QEMU guest on a multipath map: its REGISTER reaches both paths.
pub fn multipath_nested_qemu() -> Result<()> {
    const KEY: u64 = 0xabc;
    let lun = mpath::shared_lun("mpn", 64 << 20, 3)?;
    let map = Map::create("mpn", &lun, &[0, 1])?;
    let scratch = scratch_dir("multipath-nested")?;
    let helper = prh::start_prhelper(&scratch.join("pr.sock"), &[])?;
    let script = format!(
        "set -x\n\
         sg_persist --out --register --param-sark=0x{KEY:x} \"$LAB_DISK\" || exit 10\n\
         sg_persist --in --read-keys \"$LAB_DISK\" || exit 11\n\
         sg_persist --out --reserve --param-rk=0x{KEY:x} --prout-type=5 \"$LAB_DISK\" || exit 12\n"
    );
    super::nested::run_guest(&script, &helper, map.dev())?;
    let regs = expect_legs(&lun, KEY, &[0, 1], "after the guest's REGISTER")?;
    ensure!(
        holder(&lun, &regs).is_some_and(|(_, k, t)| k == KEY && t.contains("registrants only")),
        "guest's reservation: {}",
        show(&regs, &lun)
    );
    let status = helper.stop()?;
    ensure!(status.success(), "prhelper exit: {status}");
    drop(map);
    Ok(())
}
