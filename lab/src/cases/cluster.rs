// SPDX-License-Identifier: MIT OR Apache-2.0
//! `cluster_validation`: what a two-node Windows failover cluster's storage validation
//! ([MS-CSVP] ClusPrep: "Validate SCSI-3 Persistent Reservation", "Validate Disk
//! Arbitration", "Validate Multiple Arbitration") sends, as named steps, through several
//! node drivers on one LIO LU with five tcm_loop legs:
//!
//! | driver | node A | node B |
//! |---|---|---|
//! | `lio` | SG_IO on leg 0 | SG_IO on leg 2 |
//! | `c_helper` | Debian's qemu-pr-helper, leg 0 | its own qemu-pr-helper, leg 2 |
//! | `prhelper` | prhelper, leg 0 | its own prhelper, leg 2 |
//! | `mpath` | prhelper, dmsetup map over legs 0, 1 | prhelper, map over legs 2, 3 |
//! | `mpath_dead_a` | as `mpath`, A's map (legs 0, 1) made by multipathd; A's holding leg dead (LIO offline) at A's steps | dmsetup map, legs 2, 3 |
//! | `mpath_dead_b` | dmsetup map, legs 2, 3 | B's map (legs 0, 1) by the same multipathd; B's holding leg dead at B's steps |
//!
//! Leg 4 observes: LIO's READ FULL STATUS from there is checked after every step. Each
//! step's answers must equal the `lio` driver's (the reference, with `c_helper`), and the
//! expectations written in the step. A unit attention is repeated, as a node's disk driver
//! does. Writes are direct I/O on the node's device (through the map: dm picks the path).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use prhelper::client::Client;
use prhelper::dev::{Backend, Device, SgIo};
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prin::{FullStatus, ReadKeys, ReadReservation};
use prhelper::scsi::prout::{BasicParams, TransportId};
use prhelper::scsi::Status;
use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::SharedLun;
use prhelper_lab::mpath::{self, Map, MapOptions, Multipathd};
use prhelper_lab::nested::tail;
use prhelper_lab::prh;
use prhelper_lab::util::{scratch_dir, wait_for};
use prhelper_lab::{bail, ensure, Result};

const OBSERVER: usize = 4;
/// Rounds of "both nodes reserve at the same instant" per driver (fewer where
/// multipathd runs: the same routing, slower).
const ROUNDS: usize = 25;
const ROUNDS_MULTIPATHD: usize = 10;
/// Write Exclusive – Registrants Only, the type clusters use.
const WE_RO: u8 = 5;
/// Write Exclusive: only the holding I_T nexus may write.
const WE: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Lio,
    CHelper,
    Prhelper,
    Mpath,
    MpathDeadA,
    MpathDeadB,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Lio => "lio",
            Driver::CHelper => "c_helper",
            Driver::Prhelper => "prhelper",
            Driver::Mpath => "mpath",
            Driver::MpathDeadA => "mpath_dead_a",
            Driver::MpathDeadB => "mpath_dead_b",
        }
    }
    /// The node whose holding leg dies at its steps (and whose map multipathd makes).
    fn dead_node(self) -> Option<usize> {
        match self {
            Driver::MpathDeadA => Some(0),
            Driver::MpathDeadB => Some(1),
            _ => None,
        }
    }
}

/// How a node's PR commands reach the LU.
enum Sender {
    Direct(SgIo),
    Helper(Client),
}

/// One cluster node: its key, legs, device and the way its commands go.
struct Node {
    name: &'static str,
    /// The key the node has registered (0: none).
    key: u64,
    legs: Vec<usize>,
    pr_dev: File,
    io_dev: File,
    sender: Sender,
    helper: Option<Helper>,
}

/// "GOOD", "RESERVATION CONFLICT", "CHECK CONDITION 05/24/00".
fn answer_text(status: Status, sense: &prhelper::scsi::sense::Sense) -> String {
    match (status, sense.code()) {
        (Status::GOOD, _) => "GOOD".into(),
        (Status::RESERVATION_CONFLICT, _) => "RESERVATION CONFLICT".into(),
        (Status::CHECK_CONDITION, Some(c)) => {
            format!("CHECK CONDITION {:02x}/{:02x}/{:02x}", c.key, c.asc, c.ascq)
        }
        (s, _) => format!("status {:#04x}", s.0),
    }
}

fn cdb16(c: [u8; 10]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..10].copy_from_slice(&c);
    out
}

fn is_ua(status: Status, sense: &prhelper::scsi::sense::Sense) -> bool {
    status == Status::CHECK_CONDITION && sense.code().is_some_and(|c| c.key == 6)
}

impl Node {
    /// Run one command (UNIT ATTENTION repeated up to 5 times): answer text and PR IN data.
    fn exec(&mut self, cdb: [u8; 10], params: &[u8], alloc: usize) -> Result<(String, Vec<u8>)> {
        for _ in 0..6 {
            let (status, sense, data) = match &mut self.sender {
                Sender::Direct(sg) => {
                    let c = cdb16(cdb);
                    if alloc > 0 {
                        let mut buf = vec![0u8; alloc];
                        let o = sg.pr_in(Device::probe(self.pr_dev.as_fd()), &c, &mut buf);
                        buf.truncate(o.len);
                        (o.status, o.sense, buf)
                    } else {
                        let o = sg.pr_out(Device::probe(self.pr_dev.as_fd()), &c, params);
                        (o.status, o.sense, Vec::new())
                    }
                }
                Sender::Helper(client) => {
                    let r = client
                        .execute(self.pr_dev.as_fd(), &cdb, params, alloc)
                        .map_err(|e| format!("node {}: {e}", self.name))?;
                    (r.status, r.sense, r.data)
                }
            };
            if !is_ua(status, &sense) {
                return Ok((answer_text(status, &sense), data));
            }
        }
        bail!("node {}: endless UNIT ATTENTION", self.name)
    }

    fn out(&mut self, a: PrOutAction, ty: u8, key: u64, sa_key: u64) -> Result<String> {
        let p = BasicParams {
            key,
            sa_key,
            ..Default::default()
        }
        .encode();
        Ok(self.exec(cdb::pr_out(a, 0, ty, p.len() as u32), &p, 0)?.0)
    }

    /// CprepDiskPRRegister: REGISTER AND IGNORE EXISTING KEY (0 = CprepDiskPRUnRegister).
    fn register(&mut self, key: u64) -> Result<String> {
        let r = self.out(PrOutAction::RegisterAndIgnore, 0, 0, key)?;
        if r == "GOOD" {
            self.key = key;
        }
        Ok(r)
    }

    /// Register3 with an old key: REGISTER old -> new.
    fn change_key(&mut self, new: u64) -> Result<String> {
        let r = self.out(PrOutAction::Register, 0, self.key, new)?;
        if r == "GOOD" {
            self.key = new;
        }
        Ok(r)
    }

    fn reserve(&mut self, ty: u8) -> Result<String> {
        self.out(PrOutAction::Reserve, ty, self.key, 0)
    }

    fn release(&mut self, ty: u8) -> Result<String> {
        self.out(PrOutAction::Release, ty, self.key, 0)
    }

    /// CprepDiskIsPRPresent: "none", "other" or "this" (READ RESERVATION).
    fn is_pr_present(&mut self) -> Result<String> {
        let (a, data) = self.exec(cdb::pr_in(PrInAction::ReadReservation, 24), &[], 24)?;
        ensure!(a == "GOOD", "node {}: READ RESERVATION: {a}", self.name);
        let rr = ReadReservation::decode(&data).map_err(|e| e.to_string())?;
        Ok(match rr.reservation {
            None => "none",
            Some(r) if self.key != 0 && r.key == self.key => "this",
            Some(_) => "other",
        }
        .to_string())
    }

    fn read_keys(&mut self) -> Result<Vec<u64>> {
        let (a, data) = self.exec(cdb::pr_in(PrInAction::ReadKeys, 8192), &[], 8192)?;
        ensure!(a == "GOOD", "node {}: READ KEYS: {a}", self.name);
        let mut k = ReadKeys::decode(&data).map_err(|e| e.to_string())?.keys;
        k.sort();
        k.dedup();
        Ok(k)
    }

    /// Four 4 KiB direct-I/O writes: "ok", "conflict" or what else happened.
    fn writes(&self) -> String {
        write_text(&self.io_dev)
    }

    fn log_tail(&self) -> String {
        self.helper
            .as_ref()
            .map(|h| {
                format!(
                    "\n  node {} helper log:\n{}",
                    self.name,
                    tail(&h.log_text(), 30)
                )
            })
            .unwrap_or_default()
    }
}

fn write_text(dev: &File) -> String {
    let mut v = vec![0x5au8; 8192];
    let off = v.as_ptr().align_offset(4096);
    let buf = &mut v[off..off + 4096];
    let mut seen: Vec<String> = Vec::new();
    for i in 0..4u64 {
        let r = match dev.write_at(buf, (1 << 20) + i * 4096) {
            Ok(4096) => "ok".to_string(),
            Ok(n) => format!("short write {n}"),
            Err(e) if e.raw_os_error() == Some(libc::EBADE) => "conflict".to_string(),
            Err(e) => format!("error {e}"),
        };
        if !seen.contains(&r) {
            seen.push(r);
        }
    }
    seen.sort();
    seen.join("+")
}

fn open_direct(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {} O_DIRECT: {e}", path.display()))
}

/// One registration in LIO's view.
#[derive(Debug, Clone)]
struct Reg {
    leg: Option<usize>,
    key: u64,
    holder: bool,
    pr_type: u8,
}

/// The whole run of one driver.
struct World<'a> {
    driver: Driver,
    lun: &'a SharedLun,
    nodes: [Node; 2],
    observer: File,
    observer_io: File,
    /// The node that should hold the reservation, and its type.
    holder: Option<(usize, u8)>,
    /// Legs that are offline at the target now.
    dead: Vec<usize>,
    mpd: Option<&'a Multipathd>,
    transcript: Transcript,
    /// Steps whose answer differs from a single path on purpose (not compared).
    known_diff: Vec<String>,
    step: String,
    start: Instant,
}

impl World<'_> {
    fn ctx(&self, e: String) -> String {
        format!(
            "driver {}, step {}: {e}{}{}",
            self.driver.name(),
            self.step,
            self.nodes[0].log_tail(),
            self.nodes[1].log_tail()
        )
    }

    fn begin(&mut self, step: &str) {
        self.step = step.to_string();
    }

    /// Run step `step`: its answer (from `f`) is recorded and checked as [`Self::record`]
    /// does.
    fn check(
        &mut self,
        step: &str,
        f: impl FnOnce(&mut Self) -> Result<String>,
        want: Option<&str>,
    ) -> Result<()> {
        self.begin(step);
        let answer = f(self)?;
        self.record(answer, want)
    }

    /// Record a step's answer, check it against `want` (when given) and check LIO.
    fn record(&mut self, answer: String, want: Option<&str>) -> Result<()> {
        println!(
            "  [{} +{:.1}s] {}: {answer}",
            self.driver.name(),
            self.start.elapsed().as_secs_f64(),
            self.step
        );
        if let Some(w) = want {
            if answer != w {
                return Err(self.ctx(format!("answer {answer:?}, expected {w:?}")));
            }
        }
        self.transcript.push((self.step.clone(), answer));
        self.check_lio()
    }

    fn lio(&self) -> Result<Vec<Reg>> {
        let sg = SgIo { timeout_ms: 30_000 };
        let c = cdb16(cdb::pr_in(PrInAction::ReadFullStatus, 8192));
        for _ in 0..6 {
            let mut buf = vec![0u8; 8192];
            let o = sg.pr_in(Device::probe(self.observer.as_fd()), &c, &mut buf);
            if is_ua(o.status, &o.sense) {
                continue;
            }
            ensure!(
                o.status == Status::GOOD,
                "observer READ FULL STATUS: {}",
                answer_text(o.status, &o.sense)
            );
            let fs = FullStatus::decode(&buf[..o.len]).map_err(|e| e.to_string())?;
            return Ok(fs
                .descriptors
                .iter()
                .map(|d| {
                    let leg = match d.transport_id() {
                        TransportId::Sas { address } => {
                            let a = format!("0x{address:016x}");
                            self.lun
                                .targets
                                .iter()
                                .position(|t| t.initiator_sas_address().eq_ignore_ascii_case(&a))
                        }
                        _ => None,
                    };
                    Reg {
                        leg,
                        key: d.key,
                        holder: d.r_holder,
                        pr_type: d.pr_type,
                    }
                })
                .collect());
        }
        bail!("observer: endless UNIT ATTENTION")
    }

    /// LIO's state must be what the nodes believe: each live leg of a node carries the
    /// node's key (or nothing when unregistered), a dead leg nothing or that key, legs of
    /// no node nothing; the holder is a leg of the expected node with its key and type.
    fn check_lio(&self) -> Result<()> {
        let regs = self.lio().map_err(|e| self.ctx(e))?;
        let show = || format!("{regs:x?}");
        let reg_of = |leg: usize| regs.iter().find(|r| r.leg == Some(leg));
        ensure!(
            regs.iter().all(|r| r.leg.is_some()),
            "{}",
            self.ctx(format!(
                "a registration of an unknown initiator: {}",
                show()
            ))
        );
        for leg in 0..self.lun.targets.len() {
            let owner = self.nodes.iter().find(|n| n.legs.contains(&leg));
            let got = reg_of(leg).map(|r| r.key);
            let ok = match owner {
                None => got.is_none(),
                Some(n) if self.dead.contains(&leg) => got.is_none() || got == Some(n.key),
                Some(n) => got == (n.key != 0).then_some(n.key),
            };
            ensure!(
                ok,
                "{}",
                self.ctx(format!(
                    "leg {leg} has key {got:x?}, node {} has {:#x}; LIO: {}",
                    owner.map_or("-", |n| n.name),
                    owner.map_or(0, |n| n.key),
                    show()
                ))
            );
        }
        let holders: Vec<&Reg> = regs.iter().filter(|r| r.holder).collect();
        match self.holder {
            None => ensure!(
                holders.is_empty(),
                "{}",
                self.ctx(format!("a reservation is held: {}", show()))
            ),
            Some((n, ty)) => {
                let node = &self.nodes[n];
                ensure!(
                    holders.len() == 1
                        && holders[0].leg.is_some_and(|l| node.legs.contains(&l))
                        && holders[0].key == node.key
                        && holders[0].pr_type == ty,
                    "{}",
                    self.ctx(format!(
                        "node {} should hold type {ty} with {:#x}: {}",
                        node.name,
                        node.key,
                        show()
                    ))
                );
                // Where only the holder may write, it must not be a dead leg.
                if ty == WE {
                    let l = holders[0].leg.unwrap_or(usize::MAX);
                    ensure!(
                        !self.dead.contains(&l),
                        "{}",
                        self.ctx(format!("Write Exclusive held through dead leg {l}"))
                    );
                }
            }
        }
        Ok(())
    }

    /// The leg of node `n` that holds the reservation now.
    fn holding_leg(&self, n: usize) -> Result<usize> {
        let regs = self.lio()?;
        regs.iter()
            .find(|r| r.holder)
            .and_then(|r| r.leg)
            .filter(|l| self.nodes[n].legs.contains(l))
            .ok_or_else(|| self.ctx(format!("node {n} holds nothing: {regs:x?}")))
    }

    /// In the driver where node `n`'s paths die: take its holding leg offline at the
    /// target.
    fn kill_holding_leg(&mut self, n: usize) -> Result<()> {
        self.kill_leg(n, true)
    }

    /// The same with a leg that does not hold the reservation (the node holds none).
    fn kill_other_leg(&mut self, n: usize) -> Result<()> {
        self.kill_leg(n, false)
    }

    fn kill_leg(&mut self, n: usize, holding: bool) -> Result<()> {
        if self.driver.dead_node() != Some(n) {
            return Ok(());
        }
        let leg = if holding {
            self.holding_leg(n)?
        } else {
            self.nodes[n].legs[1]
        };
        self.lun.targets[leg].set_online(false)?;
        self.dead.push(leg);
        println!(
            "  [{}] leg {leg} of node {} offline",
            self.driver.name(),
            self.nodes[n].name
        );
        Ok(())
    }

    /// Bring the dead legs back; multipathd must give each the node's current key (or
    /// none when the node is not registered).
    fn revive(&mut self) -> Result<()> {
        let Some(mpd) = self.mpd else {
            return Ok(());
        };
        for leg in std::mem::take(&mut self.dead) {
            let n = self
                .nodes
                .iter()
                .position(|n| n.legs.contains(&leg))
                .ok_or("dead leg of no node")?;
            let i = mpd
                .paths()
                .iter()
                .position(|p| p.leg == leg)
                .ok_or("dead leg not in multipathd's map")?;
            // Dead long enough for multipathd's checker to notice (a blip it never sees
            // is not reinstated, so not re-registered: docs/multipath.md).
            let down = mpd
                .wait_path_up(i, false, Duration::from_secs(30))
                .map_err(|e| self.ctx(e))?;
            self.lun.targets[leg].set_online(true)?;
            let t = Instant::now();
            mpd.wait_path_up(i, true, Duration::from_secs(30))
                .map_err(|e| self.ctx(e))?;
            let key = self.nodes[n].key;
            if key != 0 {
                wait_for(
                    &format!("multipathd to register {key:#x} on leg {leg}"),
                    Duration::from_secs(20),
                    || {
                        let regs = self.lio()?;
                        Ok(regs
                            .iter()
                            .any(|r| r.leg == Some(leg) && r.key == key)
                            .then_some(()))
                    },
                )
                .map_err(|e| self.ctx(format!("{e}\n  multipathd log:\n{}", mpd.log_tail(30))))?;
            } else {
                std::thread::sleep(Duration::from_secs(1));
            }
            println!(
                "  [{}] leg {leg}: multipathd saw it down after {:.1}s; back, with {:#x} after {:.1}s",
                self.driver.name(),
                down.as_secs_f64(),
                key,
                t.elapsed().as_secs_f64()
            );
            self.check_lio()?;
        }
        Ok(())
    }

    fn writes(&self) -> String {
        format!(
            "A:{} B:{} observer:{}",
            self.nodes[0].writes(),
            self.nodes[1].writes(),
            write_text(&self.observer_io)
        )
    }

    fn present(&mut self) -> Result<String> {
        Ok(format!(
            "A:{} B:{}",
            self.nodes[0].is_pr_present()?,
            self.nodes[1].is_pr_present()?
        ))
    }
}

const KA: u64 = 0x3a61_9c0f_5d2e_7b14;
const KA2: u64 = 0x3a61_9c0f_5d2e_7b15;
const KB: u64 = 0x7c05_e2a9_14bd_3f68;
const KB2: u64 = 0x7c05_e2a9_14bd_3f69;

/// The validation, step by step. Answers are recorded for comparison across drivers.
fn sequence(w: &mut World) -> Result<()> {
    const A: usize = 0;
    const B: usize = 1;
    use PrOutAction::*;
    let good = Some("GOOD");
    let conflict = Some("RESERVATION CONFLICT");

    w.begin("start_empty");
    w.record(String::new(), Some(""))?;

    w.check("a_register", |w| w.nodes[A].register(KA), good)?;
    w.check("b_register", |w| w.nodes[B].register(KB), good)?;

    w.begin("a_reserve");
    let r = w.nodes[A].reserve(WE_RO)?;
    w.holder = Some((A, WE_RO));
    w.record(r, good)?;

    w.check("is_pr_present", |w| w.present(), Some("A:this B:other"))?;

    w.check(
        "b_reserve_conflicts",
        |w| w.nodes[B].reserve(WE_RO),
        conflict,
    )?;

    // Disk arbitration: the holder re-reserves every few seconds. With its holding leg
    // dead (mpath_dead_a), a single-path holder would still get GOOD.
    w.begin("a_re_reserve");
    w.kill_holding_leg(A)?;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(w.nodes[A].reserve(WE_RO)?);
    }
    answers.dedup();
    w.record(answers.join(","), good)?;

    w.check(
        "writes_type5",
        |w| Ok(w.writes()),
        Some("A:ok B:ok observer:conflict"),
    )?;
    w.revive()?;

    w.check("b_release_harmless", |w| w.nodes[B].release(WE_RO), good)?;
    w.check(
        "is_pr_present_after_b_release",
        |w| w.present(),
        Some("A:this B:other"),
    )?;

    w.begin("b_preempts_a");
    let kb = w.nodes[B].key;
    let r = w.nodes[B].out(Preempt, WE_RO, kb, KA)?;
    if r == "GOOD" {
        w.nodes[A].key = 0;
        w.holder = Some((B, WE_RO));
    }
    w.record(r, good)?;

    w.begin("a_reserve_after_preempt");
    let r = w.nodes[A].out(Reserve, WE_RO, KA, 0)?;
    ensure!(
        r != "GOOD",
        "{}",
        w.ctx("a preempted node's RESERVE got GOOD".into())
    );
    w.record(r, None)?;
    w.check(
        "a_writes_after_preempt",
        |w| Ok(w.writes()),
        Some("A:conflict B:ok observer:conflict"),
    )?;
    w.check(
        "is_pr_present_after_preempt",
        |w| w.present(),
        Some("A:other B:this"),
    )?;

    w.check("a_re_register", |w| w.nodes[A].register(KA), good)?;

    // The holder releases: the reservation must really go, also with its holding leg
    // dead (mpath_dead_b).
    w.begin("b_release");
    w.kill_holding_leg(B)?;
    let r = w.nodes[B].release(WE_RO)?;
    w.holder = None;
    w.record(r, good)?;
    w.check(
        "is_pr_present_after_release",
        |w| w.present(),
        Some("A:none B:none"),
    )?;
    w.revive()?;

    w.begin("b_reserve");
    let r = w.nodes[B].reserve(WE_RO)?;
    w.holder = Some((B, WE_RO));
    w.record(r, good)?;
    w.begin("b_unregister_while_holding");
    w.kill_holding_leg(B)?;
    let r = w.nodes[B].register(0)?;
    w.holder = None;
    w.record(r, good)?;
    w.revive()?;
    w.check("b_re_register", |w| w.nodes[B].register(KB), good)?;

    // Not holding, a leg dead: no nexus of B may keep the old key (a preempt of B's
    // current key would not reach it, and it could write when it returns).
    w.begin("b_key_change_leg_dead");
    w.kill_other_leg(B)?;
    let r = w.nodes[B].change_key(KB2)?;
    w.record(r, good)?;
    w.revive()?;
    w.begin("b_unregister_leg_dead");
    w.kill_other_leg(B)?;
    let r = w.nodes[B].register(0)?;
    w.record(r, good)?;
    w.revive()?;
    w.check("b_register_after_return", |w| w.nodes[B].register(KB), good)?;

    w.begin("a_reserve_again");
    let r = w.nodes[A].reserve(WE_RO)?;
    w.holder = Some((A, WE_RO));
    w.record(r, good)?;
    // Register3 with the old key: the reservation follows the key.
    w.begin("a_key_change_while_holding");
    w.kill_holding_leg(A)?;
    let r = w.nodes[A].change_key(KA2)?;
    w.record(r, good)?;
    w.check("a_re_reserve_new_key", |w| w.nodes[A].reserve(WE_RO), good)?;
    w.check(
        "writes_after_key_change",
        |w| Ok(w.writes()),
        Some("A:ok B:ok observer:conflict"),
    )?;
    w.revive()?;
    w.begin("a_release");
    let r = w.nodes[A].release(WE_RO)?;
    w.holder = None;
    w.record(r, good)?;

    // A type only the holding nexus may write through.
    w.begin("a_reserve_write_exclusive");
    let r = w.nodes[A].reserve(WE)?;
    w.holder = Some((A, WE));
    w.record(r, good)?;
    w.begin("a_re_reserve_write_exclusive");
    w.kill_holding_leg(A)?;
    let r = w.nodes[A].reserve(WE)?;
    w.record(r, good)?;
    w.begin("writes_type1");
    let r = w.writes();
    // On a map whose paths are all alive, writes through A's path that does not hold a
    // Write Exclusive reservation conflict: the holder is one I_T nexus (every multipath
    // implementation has this; clusters use type 5). A documented difference.
    let both_alive = w.nodes[A].legs.len() > 1 && w.dead.is_empty();
    if both_alive {
        w.known_diff.push(w.step.clone());
        w.record(r, Some("A:conflict+ok B:conflict observer:conflict"))?;
    } else {
        w.record(r, Some("A:ok B:conflict observer:conflict"))?;
    }
    w.revive()?;
    w.begin("a_release_write_exclusive");
    let r = w.nodes[A].release(WE)?;
    w.holder = None;
    w.record(r, good)?;

    // Validate Multiple Arbitration: both at the same instant, exactly one wins.
    w.begin("concurrent_reserve");
    let mut wins = [0usize; 2];
    let rounds = if w.mpd.is_some() {
        ROUNDS_MULTIPATHD
    } else {
        ROUNDS
    };
    for round in 0..rounds {
        let barrier = Barrier::new(2);
        let (na, nb) = w.nodes.split_at_mut(1);
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| {
                barrier.wait();
                na[0].reserve(WE_RO)
            });
            let hb = s.spawn(|| {
                barrier.wait();
                nb[0].reserve(WE_RO)
            });
            (
                ha.join().unwrap_or_else(|_| Err("panic".into())),
                hb.join().unwrap_or_else(|_| Err("panic".into())),
            )
        });
        let (ra, rb) = (ra?, rb?);
        let winner = match (ra.as_str(), rb.as_str()) {
            ("GOOD", "RESERVATION CONFLICT") => A,
            ("RESERVATION CONFLICT", "GOOD") => B,
            _ => return Err(w.ctx(format!("round {round}: A {ra}, B {rb}"))),
        };
        wins[winner] += 1;
        w.holder = Some((winner, WE_RO));
        w.check_lio()?;
        let r = w.nodes[winner].release(WE_RO)?;
        ensure!(
            r == "GOOD",
            "{}",
            w.ctx(format!("round {round}: release {r}"))
        );
        w.holder = None;
    }
    println!(
        "  [{}] concurrent_reserve: {rounds} rounds, A won {}, B won {}",
        w.driver.name(),
        wins[0],
        wins[1]
    );
    w.record("one winner each round".into(), None)?;

    // ClearPR: REGISTER AND IGNORE, then CLEAR.
    w.begin("clear_pr");
    let r1 = w.nodes[A].register(KA)?;
    let r2 = w.nodes[A].out(Clear, 0, KA, 0)?;
    if r2 == "GOOD" {
        w.nodes[A].key = 0;
        w.nodes[B].key = 0;
    }
    w.record(format!("{r1},{r2}"), Some("GOOD,GOOD"))?;
    w.begin("nothing_left");
    let ka = w.nodes[A].read_keys()?;
    let kb = w.nodes[B].read_keys()?;
    let p = w.present()?;
    w.record(
        format!("keys A:{ka:x?} B:{kb:x?} {p}"),
        Some("keys A:[] B:[] A:none B:none"),
    )?;
    Ok(())
}

fn node(
    name: &'static str,
    legs: Vec<usize>,
    dev: &Path,
    sender: Sender,
    helper: Option<Helper>,
) -> Result<Node> {
    Ok(Node {
        name,
        key: 0,
        legs,
        pr_dev: prh::open_rw(dev)?,
        io_dev: open_direct(dev)?,
        sender,
        helper,
    })
}

fn helper_sender(binary: &Path, tag: &str, args: &[&str]) -> Result<(Sender, Helper)> {
    let scratch = scratch_dir(&format!("cluster-{tag}"))?;
    let h = Helper::start(binary, &scratch.join("pr.sock"), args)?;
    let c = prh::connect(h.socket())?;
    Ok((Sender::Helper(c), h))
}

/// (step, answer) of every step.
type Transcript = Vec<(String, String)>;

/// Run the sequence through one driver: its transcript and the steps that differ from a
/// single path on purpose.
fn run_driver(
    lun: &SharedLun,
    driver: Driver,
    mpd: Option<&Multipathd>,
) -> Result<(Transcript, Vec<String>)> {
    let t = Instant::now();
    let name = driver.name();
    // The node whose legs die gets multipathd's map (legs 0, 1; it re-registers them
    // when they return), the other node legs 2, 3.
    let mpd = driver.dead_node().and(mpd);
    let legs_of = |n: usize| match driver.dead_node() {
        Some(d) if d == n => vec![0, 1],
        Some(_) => vec![2, 3],
        None if n == 0 => vec![0, 1],
        None => vec![2, 3],
    };
    // dm uuids outside multipathd's "mpath-" space, so that multipathd leaves them alone.
    let dm_map = |tag: &str, legs: &[usize]| {
        Map::create_with(
            &format!("cl-{name}-{tag}"),
            lun,
            legs,
            &MapOptions {
                uuid: Some(format!("lab-cluster-{name}-{tag}")),
                ..Default::default()
            },
        )
    };
    let mut maps = Vec::new();
    let mut nodes = Vec::new();
    let t_nodes = Instant::now();
    for (n, tag) in [(0usize, "a"), (1, "b")] {
        let legs = legs_of(n);
        let nm = if n == 0 { "A" } else { "B" };
        let single = vec![legs[0]];
        let nd = match driver {
            Driver::Lio => {
                let dev = lun.device(legs[0]).disk.clone();
                node(
                    nm,
                    single,
                    &dev,
                    Sender::Direct(SgIo { timeout_ms: 30_000 }),
                    None,
                )?
            }
            Driver::CHelper | Driver::Prhelper => {
                let dev = lun.device(legs[0]).disk.clone();
                let (s, h) = if driver == Driver::CHelper {
                    helper_sender(Path::new(C_HELPER), &format!("{name}-{tag}"), &[])?
                } else {
                    helper_sender(&prh::prhelper_bin(), &format!("{name}-{tag}"), &["-v"])?
                };
                node(nm, single, &dev, s, Some(h))?
            }
            _ => {
                let dev = match (mpd, driver.dead_node()) {
                    (Some(m), Some(d)) if d == n => m.dev().to_path_buf(),
                    _ => {
                        let m = dm_map(tag, &legs)?;
                        let d = m.dev().to_path_buf();
                        maps.push(m);
                        d
                    }
                };
                let (s, h) =
                    helper_sender(&prh::prhelper_bin(), &format!("{name}-{tag}"), &["-v"])?;
                node(nm, legs, &dev, s, Some(h))?
            }
        };
        nodes.push(nd);
    }
    println!(
        "  [{name}] nodes (maps, helpers) set up in {:.1}s",
        t_nodes.elapsed().as_secs_f64()
    );
    let nb = nodes.pop().ok_or("no node B")?;
    let na = nodes.pop().ok_or("no node A")?;
    let obs = lun.device(OBSERVER).disk.clone();
    let mut w = World {
        driver,
        lun,
        nodes: [na, nb],
        observer: prh::open_rw(&obs)?,
        observer_io: open_direct(&obs)?,
        holder: None,
        dead: Vec::new(),
        mpd,
        transcript: Vec::new(),
        known_diff: Vec::new(),
        step: "set-up".into(),
        start: Instant::now(),
    };
    let result = sequence(&mut w);
    // Whatever happened, legs back online for the next driver.
    for leg in 0..lun.targets.len() {
        let _ = lun.targets[leg].set_online(true);
    }
    if result.is_err() {
        if let Some(m) = mpd {
            println!("  multipathd log tail:\n{}", m.log_tail(40));
        }
    }
    result?;
    let transcript = std::mem::take(&mut w.transcript);
    let known_diff = std::mem::take(&mut w.known_diff);
    for n in w.nodes.iter_mut() {
        if let Some(h) = n.helper.take() {
            let st = h.stop()?;
            ensure!(
                st.success(),
                "driver {name}: node {} helper exit {st}",
                n.name
            );
        }
    }
    let t_seq = w.start.elapsed();
    let t_down = Instant::now();
    drop(w);
    drop(maps);
    println!(
        "  [{name}] done in {:.1}s (set-up {:.1}s, steps {:.1}s, tear-down {:.1}s)",
        t.elapsed().as_secs_f64(),
        (t.elapsed() - t_seq - t_down.elapsed()).as_secs_f64(),
        t_seq.as_secs_f64(),
        t_down.elapsed().as_secs_f64()
    );
    Ok((transcript, known_diff))
}

/// After a failed driver: leave the LU without registrations for the next one.
fn clean_lu(lun: &SharedLun) {
    for leg in 0..lun.targets.len() {
        let _ = lun.targets[leg].set_online(true);
    }
    let obs = &lun.device(OBSERVER).disk;
    for _ in 0..3 {
        let _ = prhelper_lab::sg::sg_persist(obs, &["--in", "--read-keys"]);
    }
    let _ = prhelper_lab::sg::sg_persist(obs, &["--out", "--register-ignore", "--param-sark=0x1"]);
    let _ = prhelper_lab::sg::sg_persist(obs, &["--out", "--clear", "--param-rk=0x1"]);
}

/// The case: every driver, same answers.
pub fn cluster_validation() -> Result<()> {
    let lun = mpath::shared_lun("cluster", 64 << 20, 5)?;
    let drivers = [
        Driver::Lio,
        Driver::CHelper,
        Driver::Prhelper,
        Driver::Mpath,
        Driver::MpathDeadA,
        Driver::MpathDeadB,
    ];
    let filter = std::env::var("PRHELPER_LAB_CLUSTER_DRIVERS").unwrap_or_default();
    let mut reference: Option<Transcript> = None;
    let mut failures = Vec::new();
    // One multipathd for both dead-leg drivers: its map is the dying node's (legs 0, 1).
    let mut mpd: Option<Multipathd> = None;
    for d in drivers {
        if !filter.is_empty() && !filter.split(',').any(|f| f == d.name()) {
            continue;
        }
        if d.dead_node().is_some() && mpd.is_none() {
            let m = Multipathd::start(&lun, &[0, 1])?;
            println!(
                "  multipathd map {} over legs 0, 1 up in {:?}",
                m.dev().display(),
                m.timings.last()
            );
            mpd = Some(m);
        }
        let (got, known_diff) = match run_driver(&lun, d, mpd.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                println!("  [{}] FAILED: {e}", d.name());
                failures.push(format!("{}: {e}", d.name()));
                clean_lu(&lun);
                continue;
            }
        };
        match &reference {
            None => reference = Some(got),
            Some(want) => {
                for (g, r) in got.iter().zip(want.iter()) {
                    if known_diff.contains(&g.0) {
                        println!(
                            "  [{}] {}: {:?}, single path {:?} (documented difference)",
                            d.name(),
                            g.0,
                            g.1,
                            r.1
                        );
                    } else if g != r {
                        failures.push(format!(
                            "{}: step {}: {:?}, the reference ({}) answered {:?}",
                            d.name(),
                            g.0,
                            g.1,
                            drivers[0].name(),
                            r.1
                        ));
                    }
                }
                if got.len() != want.len() {
                    failures.push(format!(
                        "{}: {} steps, reference {}",
                        d.name(),
                        got.len(),
                        want.len()
                    ));
                }
            }
        }
    }
    if let Some(m) = mpd {
        let t = Instant::now();
        m.stop()?;
        println!("  multipathd stopped in {:.1}s", t.elapsed().as_secs_f64());
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
