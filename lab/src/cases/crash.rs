// SPDX-License-Identifier: MIT OR Apache-2.0
//! `multipath_crash`: prhelper killed with SIGKILL in the middle of multipath PR OUT
//! commands leaves nothing torn once the client has retried (issue 13, section 2).
//!
//! Debian's multipathd (`reservation_key file`) builds a map over legs 0 and 1 of one LIO
//! LU; leg 2 is outside the map and is the observer (LIO's READ FULL STATUS from there is
//! the judge, and it is the "other initiator" a PREEMPT removes). One round is nine PR OUT
//! commands through prhelper on the map: REGISTER 0→K1, REGISTER AND IGNORE →K2, REGISTER
//! K2→K3, RESERVE (Write Exclusive), PREEMPT K3→K3 Exclusive Access (self-preempt: map
//! suspended, re-registration), RELEASE, PREEMPT of the observer's reservation, RELEASE,
//! unregister. A clean round first measures each command; then every command of every
//! further round is sent while a thread kills prhelper with SIGKILL after a random delay
//! (uniform over the command's measured duration, or, half of the time, near a delay that
//! tore a command before). After the kill, and before anything else touches the LU, LIO's
//! view is classified: *before* (nothing done), *complete*, or *torn* (anything else, a
//! suspended map included). Then prhelper starts again on the same socket, the client
//! reconnects and sends the same command (QEMU's reconnect + the guest's retry), and the
//! LU must be exactly where the command puts it: our key on both legs and nowhere else,
//! the observer's registration as expected, the reservation with the right key and type
//! held by the right side, the map not suspended, and multipathd's `getprkey` our key.
//! The retry's answer must be GOOD, or RESERVATION CONFLICT where the killed attempt had
//! completed a command that cannot be repeated (REGISTER with the old key, PREEMPT of a
//! key that is gone), as on a single-path disk.
//!
//! `PRHELPER_LAB_SEED=N` replays a run; `PRHELPER_LAB_CRASH_ROUNDS` (default 12: 108
//! kills) sets the rounds.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prhelper::client::Client;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prin::FullStatus;
use prhelper::scsi::prout::{BasicParams, TransportId};
use prhelper::scsi::sense;
use prhelper::scsi::Status;
use prhelper::sys::sgio::{self, Data};
use prhelper_lab::helper::Helper;
use prhelper_lab::lio::SharedLun;
use prhelper_lab::mpath::{self, Multipathd, Registration};
use prhelper_lab::nested::tail;
use prhelper_lab::prh::{self, keys, outcome};
use prhelper_lab::util::{read_attr, scratch_dir, seed_from_env, Rng};
use prhelper_lab::{bail, ensure, Result};

const OBSERVER: usize = 2;
const OURS: [usize; 2] = [0, 1];
const OBS_KEY: u64 = 0x0b5e;

/// Where the LU should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    /// Our key, on both legs of the map.
    ours: Option<u64>,
    /// The observer's key, on leg 2.
    obs: Option<u64>,
    /// The reservation: key and type.
    res: Option<(u64, u8)>,
}

/// One command of a round.
#[derive(Clone, Debug)]
struct Step {
    name: &'static str,
    action: PrOutAction,
    pr_type: u8,
    params: BasicParams,
    /// The observer registers and reserves (Write Exclusive) before this step.
    observer_reserves: bool,
    before: State,
    after: State,
    /// A repeat of the completed command is refused by the device (RESERVATION CONFLICT).
    conflict_if_done: bool,
}

fn round(r: u64) -> Vec<Step> {
    use PrOutAction::*;
    let base = 0x1000 + r * 0x10;
    let (k1, k2, k3) = (base + 1, base + 2, base + 3);
    let none = State {
        ours: None,
        obs: None,
        res: None,
    };
    let s = |ours, res| State {
        ours: Some(ours),
        obs: None,
        res,
    };
    let step = |name, action, pr_type, params, before, after, conflict_if_done| Step {
        name,
        action,
        pr_type,
        params,
        observer_reserves: false,
        before,
        after,
        conflict_if_done,
    };
    let mut preempt_other = step(
        "PREEMPT observer",
        Preempt,
        1,
        keys(k3, OBS_KEY),
        State {
            ours: Some(k3),
            obs: Some(OBS_KEY),
            res: Some((OBS_KEY, 1)),
        },
        s(k3, Some((k3, 1))),
        true,
    );
    preempt_other.observer_reserves = true;
    vec![
        step(
            "REGISTER 0→K1",
            Register,
            0,
            keys(0, k1),
            none,
            s(k1, None),
            true,
        ),
        step(
            "REGISTER AND IGNORE →K2",
            RegisterAndIgnore,
            0,
            keys(0, k2),
            s(k1, None),
            s(k2, None),
            false,
        ),
        step(
            "REGISTER K2→K3",
            Register,
            0,
            keys(k2, k3),
            s(k2, None),
            s(k3, None),
            true,
        ),
        step(
            "RESERVE WE",
            Reserve,
            1,
            keys(k3, 0),
            s(k3, None),
            s(k3, Some((k3, 1))),
            false,
        ),
        step(
            "PREEMPT self WE→EA",
            Preempt,
            3,
            keys(k3, k3),
            s(k3, Some((k3, 1))),
            s(k3, Some((k3, 3))),
            false,
        ),
        step(
            "RELEASE EA",
            Release,
            3,
            keys(k3, 0),
            s(k3, Some((k3, 3))),
            s(k3, None),
            false,
        ),
        preempt_other,
        step(
            "RELEASE WE",
            Release,
            1,
            keys(k3, 0),
            s(k3, Some((k3, 1))),
            s(k3, None),
            false,
        ),
        step(
            "unregister K3→0",
            Register,
            0,
            keys(k3, 0),
            s(k3, None),
            none,
            true,
        ),
    ]
}

/// sg_persist's names for the reservation types.
fn type_name(t: u8) -> &'static str {
    match t {
        1 => "Write Exclusive",
        3 => "Exclusive Access",
        5 => "Write Exclusive, registrants only",
        6 => "Exclusive Access, registrants only",
        7 => "Write Exclusive, all registrants",
        8 => "Exclusive Access, all registrants",
        _ => "obsolete or reserved",
    }
}

/// Why LIO's view `regs` is not `want` (None: it is).
fn mismatch(lun: &SharedLun, regs: &[Registration], want: &State) -> Option<String> {
    let mut got: Vec<(Option<usize>, u64)> = regs.iter().map(|r| (r.leg(lun), r.key)).collect();
    got.sort();
    let mut exp: Vec<(Option<usize>, u64)> = Vec::new();
    if let Some(k) = want.ours {
        exp.extend(OURS.iter().map(|&l| (Some(l), k)));
    }
    if let Some(k) = want.obs {
        exp.push((Some(OBSERVER), k));
    }
    exp.sort();
    if got != exp {
        return Some(format!("registrations {got:x?}, expected {exp:x?}"));
    }
    let holders: Vec<&Registration> = regs.iter().filter(|r| r.holder).collect();
    match (want.res, holders.as_slice()) {
        (None, []) => None,
        (Some((k, t)), [h]) => {
            let side_ok = match h.leg(lun) {
                Some(OBSERVER) => want.obs == Some(k),
                Some(l) => OURS.contains(&l) && want.ours == Some(k),
                None => false,
            };
            let ty_ok = h.res_type.as_deref() == Some(type_name(t));
            (!(h.key == k && ty_ok && side_ok)).then(|| {
                format!(
                    "reservation {:#x} {:?} via leg {:?}, expected {k:#x} {}",
                    h.key,
                    h.res_type,
                    h.leg(lun),
                    type_name(t)
                )
            })
        }
        (w, h) => Some(format!("{} holders, expected reservation {w:x?}", h.len())),
    }
}

fn show(lun: &SharedLun, regs: &[Registration]) -> String {
    regs.iter()
        .map(|r| {
            format!(
                "leg {:?} {:#x}{}",
                r.leg(lun),
                r.key,
                if r.holder {
                    format!(" holds {}", r.res_type.as_deref().unwrap_or("?"))
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether device-mapper has the map suspended (a kill during a self-preempt).
fn suspended(devnum: (u32, u32)) -> Result<bool> {
    let p = format!("/sys/dev/block/{}:{}/dm/suspended", devnum.0, devnum.1);
    Ok(read_attr(Path::new(&p))?.trim() == "1")
}

/// The observing leg, driven in-process (SG_IO on its disk): spawning sg_persist for
/// every look at the LU would make the case several times slower.
struct Observer {
    disk: File,
    path: PathBuf,
}

impl Observer {
    fn open(lun: &SharedLun) -> Result<Observer> {
        let path = lun.device(OBSERVER).disk.clone();
        Ok(Observer {
            disk: prh::open_rw(&path)?,
            path,
        })
    }

    /// One command, repeated past unit attentions (a preempted or reinstated nexus).
    fn run(&self, cdb: &[u8], mut data: Data<'_>) -> Result<usize> {
        for _ in 0..5 {
            let mut sense = [0u8; 96];
            let d = match &mut data {
                Data::None => Data::None,
                Data::FromDevice(b) => Data::FromDevice(b),
                Data::ToDevice(b) => Data::ToDevice(b),
            };
            let r = sgio::sg_io(self.disk.as_fd(), cdb, d, &mut sense, 30_000);
            let o = r.outcome;
            if o.errno.is_none() && o.host_status == 0 && o.status == 0 {
                return Ok(r.transferred);
            }
            let key = sense::decode(&sense).map(|d| d.code.key);
            if o.status == Status::CHECK_CONDITION.0 && key == Some(6) {
                continue;
            }
            bail!(
                "observer {}: cdb {:02x?}: {o:?} sense {key:?}",
                self.path.display(),
                &cdb[..10]
            );
        }
        bail!("observer {}: unit attention 5 times", self.path.display())
    }

    /// LIO's view: READ FULL STATUS.
    fn view(&self, lun: &SharedLun) -> Result<Vec<Registration>> {
        let mut buf = vec![0u8; 8192 + 64];
        let cdb = cdb::pr_in(PrInAction::ReadFullStatus, 8192);
        let n = self.run(&cdb, Data::FromDevice(&mut buf[..8192]))?;
        let fs = FullStatus::decode(&buf[..n]).map_err(|e| format!("READ FULL STATUS: {e}"))?;
        let _ = lun;
        Ok(fs
            .descriptors
            .iter()
            .map(|d| Registration {
                key: d.key,
                all_tg_pt: d.all_tg_pt,
                rel_port: d.relative_target_port,
                holder: d.r_holder,
                res_type: d.r_holder.then(|| type_name(d.pr_type).to_string()),
                sas_address: match d.transport_id() {
                    TransportId::Sas { address } => Some(format!("0x{address:016x}")),
                    _ => None,
                },
            })
            .collect())
    }

    fn pr_out(&self, action: PrOutAction, pr_type: u8, p: &BasicParams) -> Result<()> {
        let data = p.encode();
        let cdb = cdb::pr_out(action, 0, pr_type, data.len() as u32);
        self.run(&cdb, Data::ToDevice(&data)).map(|_| ())
    }
}

struct Rig<'a> {
    lun: &'a SharedLun,
    mpd: &'a Multipathd,
    obs: Observer,
    socket: PathBuf,
    dev: File,
    /// Logs of the last prhelper runs (for failure messages).
    logs: Vec<String>,
}

impl Rig<'_> {
    fn start(&self) -> Result<(Helper, Client)> {
        let h = prh::start_prhelper(&self.socket, &[])?;
        let c = prh::connect(h.socket())?;
        Ok((h, c))
    }

    fn keep_log(&mut self, h: &Helper) {
        self.logs.push(h.log_text());
        if self.logs.len() > 2 {
            self.logs.remove(0);
        }
    }

    fn send(&self, c: &mut Client, s: &Step) -> Result<prhelper::client::Response> {
        let data = s.params.encode();
        let cdb = cdb::pr_out(s.action, 0, s.pr_type, data.len() as u32);
        c.execute(self.dev.as_fd(), &cdb, &data, 0)
            .map_err(|e| format!("{}: {e}", s.name))
    }

    fn view(&self) -> Result<Vec<Registration>> {
        self.obs.view(self.lun)
    }

    /// Set up what the step needs beyond the previous step's result, and check it.
    fn prepare(&self, s: &Step) -> Result<()> {
        if s.observer_reserves {
            self.obs
                .pr_out(PrOutAction::Register, 0, &keys(0, OBS_KEY))?;
            self.obs
                .pr_out(PrOutAction::Reserve, 1, &keys(OBS_KEY, 0))?;
        }
        let regs = self.view()?;
        if let Some(m) = mismatch(self.lun, &regs, &s.before) {
            bail!("before {}: {m} [{}]", s.name, show(self.lun, &regs));
        }
        Ok(())
    }

    /// The step has been retried (or run): check everything.
    fn check_after(
        &self,
        s: &Step,
        r: &prhelper::client::Response,
        done_before: bool,
    ) -> Result<()> {
        let regs = self.view()?;
        let fail = |m: String| -> String {
            format!(
                "{}: {m}\n  LIO: [{}]\n  prhelper logs (tails):\n{}",
                s.name,
                show(self.lun, &regs),
                self.logs
                    .iter()
                    .map(|l| tail(l, 25))
                    .collect::<Vec<_>>()
                    .join("\n  ----\n")
            )
        };
        let answer_ok = r.status == Status::GOOD
            || (r.status == Status::RESERVATION_CONFLICT && s.conflict_if_done && done_before);
        if !answer_ok {
            return Err(fail(format!(
                "retry answered {} (killed attempt had {}completed)",
                outcome(r),
                if done_before { "" } else { "not " }
            )));
        }
        if let Some(m) = mismatch(self.lun, &regs, &s.after) {
            return Err(fail(m));
        }
        if suspended(self.mpd.devnum())? {
            return Err(fail("the map is left suspended".into()));
        }
        let k = self.mpd.getprkey()?;
        if k != s.after.ours {
            return Err(fail(format!(
                "multipathd's key {k:x?}, expected {:x?}",
                s.after.ours
            )));
        }
        Ok(())
    }
}

/// Per step: the kill delays seen to leave the LU untouched, done, or torn, to aim the
/// next kills at the window between (where the fan-out is).
#[derive(Debug, Default, Clone)]
struct Aim {
    /// Longest delay that killed before the command did anything.
    before: Option<u64>,
    /// Shortest delay that killed after it had done everything.
    done: Option<u64>,
    torn: Vec<u64>,
}

impl Aim {
    fn pick(&self, rng: &mut Rng, span: u64) -> u64 {
        if !self.torn.is_empty() && rng.below(2) == 0 {
            let d = self.torn[rng.below(self.torn.len() as u64) as usize];
            return (d + rng.below(d / 2 + 40)).saturating_sub(d / 4 + 20);
        }
        match (self.before, self.done) {
            (Some(a), Some(b)) if rng.below(4) != 0 => {
                let (lo, hi) = (a.min(b), a.max(b));
                let lo = lo - lo / 5;
                lo + rng.below(hi + hi / 5 + 50 - lo)
            }
            _ => rng.below(span),
        }
    }
}

/// A crash the retry alone cannot repair: the helper restarts (its memory of the map's
/// key gone), a path holding the reservation is dead, and the guest changes its key with
/// REGISTER AND IGNORE, which does not say the old key. The new process must learn it
/// from multipathd and move the reservation to the new key; then multipathd registers
/// the new key on the path when it comes back.
fn restarted_key_change_through_dead_holder(
    rig: &mut Rig<'_>,
    h: Helper,
    mut c: Client,
) -> Result<(Helper, Client)> {
    use PrOutAction::*;
    const OLD: u64 = 0x2001;
    const NEW: u64 = 0x2002;
    let step = |name, action, pr_type, params| Step {
        name,
        action,
        pr_type,
        params,
        observer_reserves: false,
        before: State {
            ours: None,
            obs: None,
            res: None,
        },
        after: State {
            ours: None,
            obs: None,
            res: None,
        },
        conflict_if_done: false,
    };
    for s in [
        step("REGISTER 0→OLD", Register, 0, keys(0, OLD)),
        step("RESERVE WE", Reserve, 1, keys(OLD, 0)),
    ] {
        let r = rig.send(&mut c, &s)?;
        ensure!(r.status == Status::GOOD, "{}: {}", s.name, outcome(&r));
    }
    let regs = rig.view()?;
    let holder = regs
        .iter()
        .find(|r| r.holder)
        .and_then(|r| r.leg(rig.lun))
        .ok_or_else(|| format!("no holder on our legs: [{}]", show(rig.lun, &regs)))?;
    let j = rig
        .mpd
        .paths()
        .iter()
        .position(|p| p.leg == holder)
        .ok_or("holding leg not in the map")?;
    // The crash; then the holding path dies.
    rig.keep_log(&h);
    h.crash()?;
    drop(c);
    rig.mpd.paths()[j].set_online(false)?;
    rig.mpd.wait_path_up(j, false, Duration::from_secs(30))?;
    let (h, mut c) = rig.start()?;
    let s = step(
        "REGISTER AND IGNORE →NEW",
        RegisterAndIgnore,
        0,
        keys(0, NEW),
    );
    let r = rig.send(&mut c, &s)?;
    rig.keep_log(&h);
    let regs = rig.view()?;
    let res = regs.iter().find(|r| r.holder);
    ensure!(
        r.status == Status::GOOD
            && res.is_some_and(|r| r.key == NEW && r.leg(rig.lun) != Some(holder)),
        "{}: {}; the reservation must be under the new key through the live leg: [{}]\n{}",
        s.name,
        outcome(&r),
        show(rig.lun, &regs),
        rig.logs
            .iter()
            .map(|l| tail(l, 20))
            .collect::<Vec<_>>()
            .join("\n  ----\n")
    );
    ensure!(
        rig.mpd.getprkey()? == Some(NEW),
        "multipathd's key {:x?}",
        rig.mpd.getprkey()
    );
    // The path comes back; multipathd registers the new key on it.
    rig.mpd.paths()[j].set_online(true)?;
    rig.mpd.wait_path_up(j, true, Duration::from_secs(30))?;
    let want = State {
        ours: Some(NEW),
        obs: None,
        res: Some((NEW, 1)),
    };
    let t0 = Instant::now();
    loop {
        let regs = rig.view()?;
        match mismatch(rig.lun, &regs, &want) {
            None => break,
            Some(m) if t0.elapsed() > Duration::from_secs(30) => {
                bail!("after the path came back: {m} [{}]", show(rig.lun, &regs))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    for s in [
        step("RELEASE", Release, 1, keys(NEW, 0)),
        step("unregister", Register, 0, keys(NEW, 0)),
    ] {
        let r = rig.send(&mut c, &s)?;
        ensure!(r.status == Status::GOOD, "{}: {}", s.name, outcome(&r));
    }
    Ok((h, c))
}

#[derive(Debug, Default)]
struct Counts {
    kills: usize,
    /// Killed before the command changed anything.
    before: usize,
    /// Killed after the command had done everything (reply sent or not).
    complete: usize,
    /// Killed mid-command: LIO's view (or the map) was neither.
    torn: usize,
    /// Torn per step name.
    torn_by_step: Vec<(&'static str, usize)>,
    /// Retries answered RESERVATION CONFLICT (the killed attempt had completed).
    conflicts: usize,
    /// The killed attempt's reply arrived before the kill.
    replied: usize,
    /// Kills triggered by the observer seeing the first change.
    on_change: usize,
    /// Torn states among those.
    torn_on_change: usize,
}

pub fn multipath_crash() -> Result<()> {
    let t_case = Instant::now();
    let rounds: u64 = match std::env::var("PRHELPER_LAB_CRASH_ROUNDS") {
        Ok(s) => s
            .parse()
            .map_err(|e| format!("PRHELPER_LAB_CRASH_ROUNDS={s}: {e}"))?,
        Err(_) => 12,
    };
    let seed = seed_from_env()?;
    println!(
        "  multipath_crash: seed {seed} (replay with PRHELPER_LAB_SEED={seed}), {rounds} rounds"
    );
    let mut rng = Rng(seed);

    let lun = mpath::shared_lun("crash", 32 << 20, 3)?;
    let mpd = Multipathd::start(&lun, &OURS)?;
    println!("  multipathd map {} up in {:?}", mpd.alias(), mpd.timings);
    let scratch = scratch_dir("multipath-crash")?;
    let mut rig = Rig {
        lun: &lun,
        mpd: &mpd,
        obs: Observer::open(&lun)?,
        socket: scratch.join("pr.sock"),
        dev: prh::open_rw(mpd.dev())?,
        logs: Vec::new(),
    };

    // Round 0, no kills: the expectations hold and each command's duration is known.
    let mut took = Vec::new();
    let (mut h, mut c) = rig.start()?;
    for s in round(0) {
        rig.prepare(&s)?;
        let t0 = Instant::now();
        let r = rig.send(&mut c, &s)?;
        took.push(t0.elapsed());
        rig.keep_log(&h);
        rig.check_after(&s, &r, false)?;
    }
    println!(
        "  clean round, per command: {}",
        took.iter()
            .map(|d| format!("{}µs", d.as_micros()))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut n = Counts::default();
    let mut aim: Vec<Aim> = vec![Aim::default(); took.len()];
    let mut restart = Duration::ZERO;
    for r in 1..=rounds {
        for (i, s) in round(r).into_iter().enumerate() {
            rig.prepare(&s)?;
            let span = took[i].as_micros() as u64 + 200;
            // Half the kills at a random time, half the moment the observer sees the
            // first change (the first path's command done, or the map suspended).
            let on_change = rng.below(2) == 0;
            let delay = aim[i].pick(&mut rng, span);
            let pid = h.pid() as libc::pid_t;
            let devnum = mpd.devnum();
            let t_send = Instant::now();
            let (first, killed_at) = std::thread::scope(|sc| {
                let (obs, lun, before) = (&rig.obs, &lun, &s.before);
                let killer = sc.spawn(move || {
                    if on_change {
                        let deadline = t_send + Duration::from_secs(10);
                        while Instant::now() < deadline {
                            let changed = obs
                                .view(lun)
                                .is_ok_and(|v| mismatch(lun, &v, before).is_some());
                            if changed || suspended(devnum).unwrap_or(false) {
                                break;
                            }
                        }
                    } else {
                        std::thread::sleep(Duration::from_micros(delay));
                    }
                    // SAFETY: kill(2) on our own child, not yet reaped (Helper::crash
                    // reaps it).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    t_send.elapsed()
                });
                let first = rig.send(&mut c, &s);
                (first, killer.join().unwrap_or_default())
            });
            let delay = killed_at.as_micros() as u64;
            if on_change {
                n.on_change += 1;
            }
            rig.keep_log(&h);
            h.crash()?;
            drop(c);
            n.kills += 1;
            if first.is_ok() {
                n.replied += 1;
            }

            // LIO's view right after the kill, before anyone retries.
            let regs = rig.view()?;
            let susp = suspended(mpd.devnum())?;
            let done = !susp && mismatch(&lun, &regs, &s.after).is_none();
            let untouched = !susp && mismatch(&lun, &regs, &s.before).is_none();
            if done {
                n.complete += 1;
                aim[i].done = Some(aim[i].done.map_or(delay, |d| d.min(delay)));
            } else if untouched {
                n.before += 1;
                aim[i].before = Some(aim[i].before.map_or(delay, |d| d.max(delay)));
            } else {
                n.torn += 1;
                n.torn_on_change += usize::from(on_change);
                aim[i].torn.push(delay);
                match n.torn_by_step.iter_mut().find(|(k, _)| *k == s.name) {
                    Some(e) => e.1 += 1,
                    None => n.torn_by_step.push((s.name, 1)),
                }
                println!(
                    "  round {r} {}: killed after {delay}µs{}: torn: [{}]{}",
                    s.name,
                    if on_change { " (on first change)" } else { "" },
                    show(&lun, &regs),
                    if susp { ", map suspended" } else { "" }
                );
            }

            // QEMU reconnects to the restarted helper; the guest retries the command.
            let t0 = Instant::now();
            (h, c) = rig.start()?;
            restart += t0.elapsed();
            let again = rig.send(&mut c, &s)?;
            rig.keep_log(&h);
            if again.status == Status::RESERVATION_CONFLICT {
                n.conflicts += 1;
            }
            rig.check_after(&s, &again, done).map_err(|e| {
                format!(
                    "round {r} (killed after {delay}µs, first answer {:?}): {e}",
                    first.as_ref().map(outcome)
                )
            })?;
        }
    }
    let t_dead = Instant::now();
    (h, c) = restarted_key_change_through_dead_holder(&mut rig, h, c)?;
    println!(
        "  after a restart, REGISTER AND IGNORE with the holding path dead moved the reservation to the new key ({:.1}s)",
        t_dead.elapsed().as_secs_f64()
    );
    drop(c);
    h.stop()?;
    drop(rig);
    println!(
        "  {} kills: {} before the command did anything, {} mid-command (torn before the retry), {} after it completed ({} of them after the reply); every retry repaired; {} retries answered RESERVATION CONFLICT (completed before the kill)",
        n.kills, n.before, n.torn, n.complete, n.replied, n.conflicts
    );
    println!(
        "  {} kills on the first change seen, {} of them torn; {} at random times, {} torn",
        n.on_change,
        n.torn_on_change,
        n.kills - n.on_change,
        n.torn - n.torn_on_change
    );
    println!("  torn per command: {:?}", n.torn_by_step);
    for (i, a) in aim.iter().enumerate() {
        println!(
            "  aim {i}: last untouched at {:?}µs, first done at {:?}µs, torn at {:?}µs",
            a.before, a.done, a.torn
        );
    }
    println!(
        "  prhelper restart + reconnect: {:.1} ms on average; case {:.1}s",
        restart.as_secs_f64() * 1000.0 / n.kills.max(1) as f64,
        t_case.elapsed().as_secs_f64()
    );
    ensure!(n.kills >= 100 || rounds < 12, "only {} kills", n.kills);
    mpd.stop()?;
    Ok(())
}
