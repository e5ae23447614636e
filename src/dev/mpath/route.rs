// SPDX-License-Identifier: MIT OR Apache-2.0
//! Where each PR command goes on a multipath map, and how the paths' answers become one
//! answer: multipath-tools 0.13+ semantics (see docs/multipath.md), over any [`Paths`].
//!
//! Every path of a map is its own I_T nexus, but the guest sees one. So registrations
//! must exist on every path, the reservation is held through one of them, and commands
//! that would remove our own key from other paths (self-preempt) are followed by
//! re-registering it there.

use crate::dev::verdict;
use crate::dev::Outcome;
use crate::scsi::cdb::{self, PrInAction, PrOutAction};
use crate::scsi::prin::ReadReservation;
use crate::scsi::prout::{BasicParams, BASIC_LEN, SPEC_I_PT};
use crate::scsi::sense::{self, SenseCode};
use crate::scsi::Status;
use crate::sys::sgio::Data;
use crate::sys::sgio::SgOutcome;

/// How one path answered one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Good,
    Conflict,
    /// UNIT ATTENTION: worth repeating on the same path.
    UnitAttention,
    /// The path, not the device, failed (transport, host, timeout, not ready, busy): try
    /// another path.
    PathError,
    /// The device answered with an error that another path would repeat.
    DeviceError,
}

/// Classify an SG_IO result with its sense bytes.
pub fn classify(o: &SgOutcome, sense_bytes: &[u8]) -> Class {
    if let Some(errno) = o.errno {
        return if errno == libc::EBADE {
            Class::Conflict
        } else {
            Class::PathError
        };
    }
    if o.host_status == verdict::host::NEXUS_FAILURE {
        return Class::Conflict;
    }
    if o.host_status != verdict::host::OK || o.driver_status & verdict::DRIVER_TIMEOUT_MASK != 0 {
        return Class::PathError;
    }
    match Status(o.status) {
        Status::GOOD | Status::CONDITION_MET => Class::Good,
        Status::RESERVATION_CONFLICT => Class::Conflict,
        Status::CHECK_CONDITION => match sense::decode(sense_bytes).map(|d| d.code.key) {
            Some(0x06) => Class::UnitAttention,
            // NOT READY (e.g. ALUA standby port) and ABORTED COMMAND are path trouble.
            Some(0x02) | Some(0x0b) | None => Class::PathError,
            Some(_) => Class::DeviceError,
        },
        Status::BUSY | Status::TASK_SET_FULL | Status::TASK_ABORTED => Class::PathError,
        _ => Class::DeviceError,
    }
}

/// One path's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    pub class: Class,
}

/// The paths of one map, as the router needs them.
pub trait Paths: Sync {
    /// Number of paths.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// All path indices, usable ones first, in the order to try them.
    fn order(&self) -> Vec<usize>;
    /// Whether device-mapper considers the path usable.
    fn usable(&self, i: usize) -> bool;
    /// The SCSI host of the path (ALL_TG_PT registers once per host).
    fn host(&self, i: usize) -> Option<u32>;
    /// Run one command on one path.
    fn run(&self, i: usize, cdb: &[u8; 16], data: Data<'_>) -> Answer;
    /// Suspend the map's I/O (noflush) around a self-preempt; false if it could not.
    fn suspend(&self) -> bool;
    fn resume(&self);
}

/// What a PR OUT changed, for telling multipathd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Our key is now `key` on every reachable path.
    Registered {
        key: u64,
        aptpl: bool,
    },
    /// Our key is gone.
    Unregistered,
    /// Every registration is gone (CLEAR).
    Cleared,
    /// We hold the reservation (RESERVE, or a PREEMPT that took it).
    Reserved,
    /// We no longer hold it.
    Released,
}

/// How often a path may answer UNIT ATTENTION before that is the answer.
const UA_RETRIES: usize = 5;

fn run_retrying(p: &dyn Paths, i: usize, cdb: &[u8; 16], mut data: Data<'_>) -> Answer {
    let mut tries = 0;
    loop {
        let d = match &mut data {
            Data::None => Data::None,
            Data::FromDevice(b) => Data::FromDevice(b),
            Data::ToDevice(b) => Data::ToDevice(b),
        };
        let a = p.run(i, cdb, d);
        tries += 1;
        if a.class != Class::UnitAttention {
            return a;
        }
        if tries >= UA_RETRIES {
            return Answer {
                class: Class::DeviceError,
                ..a
            };
        }
    }
}

fn no_path() -> Outcome {
    Outcome::check(SenseCode::LUN_COMM_FAILURE)
}

/// PR IN: the first path that answers for the device.
pub fn pr_in(p: &dyn Paths, cdb: &[u8; 16], buf: &mut [u8]) -> Outcome {
    let mut last = None;
    for i in p.order() {
        let data = if buf.is_empty() {
            Data::None
        } else {
            Data::FromDevice(&mut *buf)
        };
        let a = run_retrying(p, i, cdb, data);
        if a.class != Class::PathError {
            return a.outcome;
        }
        last = Some(a.outcome);
    }
    last.unwrap_or_else(no_path)
}

fn cdb16(c: [u8; 10]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..10].copy_from_slice(&c);
    out
}

/// A PR OUT CDB like `orig` with another service action, type and parameter length.
fn prout_cdb(orig: &[u8; 16], sa: PrOutAction, pr_type: u8, len: usize) -> [u8; 16] {
    let mut c = *orig;
    c[1] = (c[1] & 0xe0) | sa as u8;
    c[2] = (c[2] & 0xf0) | (pr_type & 0x0f);
    c[5..9].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn basic(key: u64, sa_key: u64, aptpl: bool) -> Vec<u8> {
    BasicParams {
        key,
        sa_key,
        aptpl,
        ..Default::default()
    }
    .encode()
}

/// READ RESERVATION through the first answering path.
fn read_reservation(p: &dyn Paths) -> Option<ReadReservation> {
    // Room past the 24 bytes: devices may write past the allocation length.
    let mut buf = [0u8; 24 + 1024];
    let o = pr_in(
        p,
        &cdb16(cdb::pr_in(PrInAction::ReadReservation, 24)),
        &mut buf[..24],
    );
    if o.status != Status::GOOD {
        return None;
    }
    ReadReservation::decode(&buf[..o.len.min(24)]).ok()
}

/// Send to the paths `which` (in parallel when more than one). `params_for(k)` gives the
/// parameter list for the k-th of them.
fn fan_out(
    p: &dyn Paths,
    which: &[usize],
    cdb_for: &(dyn Fn(usize) -> [u8; 16] + Sync),
    params_for: &(dyn Fn(usize) -> Vec<u8> + Sync),
) -> Vec<(usize, Answer)> {
    let one = |k: usize| {
        let params = params_for(k);
        let data = if params.is_empty() {
            Data::None
        } else {
            Data::ToDevice(&params)
        };
        (which[k], run_retrying(p, which[k], &cdb_for(k), data))
    };
    if which.len() <= 1 {
        return (0..which.len()).map(one).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..which.len())
            .map(|k| {
                let one = &one;
                s.spawn(move || one(k))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(k, h)| {
                h.join().unwrap_or_else(|_| {
                    (
                        which[k],
                        Answer {
                            outcome: no_path(),
                            class: Class::PathError,
                        },
                    )
                })
            })
            .collect()
    })
}

/// Try the paths in order until one answers for the device. Returns that path and answer.
fn first_answering(
    p: &dyn Paths,
    cdb: &[u8; 16],
    params: &[u8],
    skip_conflicts: bool,
) -> (Option<usize>, Outcome) {
    let t = try_in_order(p, cdb, params, skip_conflicts);
    (t.via, t.outcome)
}

/// What [`try_in_order`] found.
struct Tried {
    via: Option<usize>,
    outcome: Outcome,
    class: Class,
    /// Some path could not be reached (its answer was a path error).
    unreachable: bool,
}

/// [`first_answering`], telling also the answer's class and whether a path was unreachable.
fn try_in_order(p: &dyn Paths, cdb: &[u8; 16], params: &[u8], skip_conflicts: bool) -> Tried {
    let mut last = None;
    let mut conflict = None;
    let mut unreachable = false;
    for i in p.order() {
        let data = if params.is_empty() {
            Data::None
        } else {
            Data::ToDevice(params)
        };
        let a = run_retrying(p, i, cdb, data);
        match a.class {
            Class::PathError => {
                unreachable = true;
                last = Some(a.outcome);
            }
            Class::Conflict if skip_conflicts => {
                conflict.get_or_insert((i, a.outcome));
            }
            class => {
                return Tried {
                    via: Some(i),
                    outcome: a.outcome,
                    class,
                    unreachable,
                }
            }
        }
    }
    match conflict {
        Some((i, o)) => Tried {
            via: Some(i),
            outcome: o,
            class: Class::Conflict,
            unreachable,
        },
        None => Tried {
            via: None,
            outcome: last.unwrap_or_else(no_path),
            class: Class::PathError,
            unreachable,
        },
    }
}

/// Paths to send a fan-out to: the usable ones (all of them if none is), one per SCSI
/// host with ALL_TG_PT.
fn fan_targets(p: &dyn Paths, all_tg_pt: bool) -> Vec<usize> {
    let order = p.order();
    let usable: Vec<usize> = order.iter().copied().filter(|&i| p.usable(i)).collect();
    let mut t = if usable.is_empty() { order } else { usable };
    if all_tg_pt {
        let mut seen = Vec::new();
        t.retain(|&i| match p.host(i) {
            Some(h) if seen.contains(&h) => false,
            Some(h) => {
                seen.push(h);
                true
            }
            None => true,
        });
    }
    t
}

/// Re-register `key` with REGISTER AND IGNORE EXISTING KEY on `which` (after a PREEMPT
/// removed it from the other I_T nexuses).
fn reregister(p: &dyn Paths, orig: &[u8; 16], which: &[usize], key: u64, aptpl: bool) {
    if which.is_empty() || key == 0 {
        return;
    }
    let c = prout_cdb(orig, PrOutAction::RegisterAndIgnore, 0, BASIC_LEN);
    let params = basic(0, key, aptpl);
    fan_out(p, which, &|_| c, &|_| params.clone());
}

/// Holds the map suspended for its lifetime.
struct Suspended<'a>(&'a dyn Paths, bool);

impl<'a> Suspended<'a> {
    fn new(p: &'a dyn Paths) -> Self {
        let ok = p.suspend();
        Suspended(p, ok)
    }
}

impl Drop for Suspended<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.resume();
        }
    }
}

/// What the router needs to know beyond the command.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// The key this host last registered on the map, if known (REGISTER AND IGNORE
    /// does not carry the old key).
    pub known_key: Option<u64>,
}

/// PR OUT on a multipath map.
pub fn pr_out(p: &dyn Paths, cdb: &[u8; 16], params: &[u8], ctx: Context) -> (Outcome, Effect) {
    let sa = PrOutAction::from_code(cdb[1] & 0x1f);
    let pr_type = cdb[2] & 0x0f;
    let decoded = BasicParams::decode(params).ok();
    match (sa, decoded) {
        (Some(a @ (PrOutAction::Register | PrOutAction::RegisterAndIgnore)), Some(bp)) => {
            register(p, cdb, params, a, &bp, ctx)
        }
        (Some(PrOutAction::Reserve), Some(bp)) => reserve(p, cdb, params, &bp, pr_type),
        (Some(PrOutAction::Release), Some(bp)) => release(p, cdb, params, &bp, pr_type),
        (Some(a @ (PrOutAction::Preempt | PrOutAction::PreemptAndAbort)), Some(bp)) => {
            preempt(p, cdb, params, a, &bp)
        }
        (Some(PrOutAction::Clear), Some(_)) => {
            let (_, o) = first_answering(p, cdb, params, false);
            let e = effect_if_good(&o, Effect::Cleared);
            (o, e)
        }
        // REGISTER AND MOVE: only the holding path may move the reservation, so a
        // conflict moves on to the next path, as for RESERVE.
        (Some(PrOutAction::RegisterAndMove), _) => {
            (first_answering(p, cdb, params, true).1, Effect::None)
        }
        // Unknown actions, undecodable parameter lists: one path, and the device gives
        // its own answer.
        _ => (first_answering(p, cdb, params, false).1, Effect::None),
    }
}

fn effect_if_good(o: &Outcome, e: Effect) -> Effect {
    if o.status == Status::GOOD {
        e
    } else {
        Effect::None
    }
}

fn register(
    p: &dyn Paths,
    cdb: &[u8; 16],
    params: &[u8],
    sa: PrOutAction,
    bp: &BasicParams,
    ctx: Context,
) -> (Outcome, Effect) {
    let old_key = match sa {
        PrOutAction::Register => Some(bp.key),
        _ => ctx.known_key,
    }
    .filter(|&k| k != 0);

    // Unregistering while holding the reservation: release it first, so that a holding
    // path we cannot reach does not keep it under a key nobody owns.
    if bp.sa_key == 0 {
        if let (Some(old), Some(rr)) = (old_key, read_reservation(p)) {
            if let Some(r) = rr
                .reservation
                .filter(|r| r.key == old && !all_registrants(r.pr_type))
            {
                let c = prout_cdb(cdb, PrOutAction::Release, r.pr_type, BASIC_LEN);
                let _ = release(
                    p,
                    &c,
                    &basic(old, 0, false),
                    &BasicParams {
                        key: old,
                        ..Default::default()
                    },
                    r.pr_type,
                );
            }
        }
    }

    let targets = fan_targets(p, bp.all_tg_pt);
    // SPEC_I_PT registers other initiators: once is enough (through the first path).
    let stripped: Vec<u8> = {
        let mut b = params[..BASIC_LEN.min(params.len())].to_vec();
        if let Some(f) = b.get_mut(20) {
            *f &= !SPEC_I_PT;
        }
        b
    };
    let first_cdb = *cdb;
    let other_cdb = prout_cdb(cdb, sa, cdb[2] & 0x0f, stripped.len());
    let answers = fan_out(
        p,
        &targets,
        &|k| if k == 0 { first_cdb } else { other_cdb },
        &|k| {
            if k == 0 {
                params.to_vec()
            } else {
                stripped.clone()
            }
        },
    );
    let pick = |c: Class| {
        answers
            .iter()
            .find(|(_, a)| a.class == c)
            .map(|(_, a)| a.outcome.clone())
    };
    if let Some(o) = pick(Class::DeviceError) {
        return (o, Effect::None);
    }
    let good = answers
        .iter()
        .filter(|(_, a)| a.class == Class::Good)
        .count();
    if good == 0 {
        let o = pick(Class::Conflict)
            .or_else(|| pick(Class::PathError))
            .unwrap_or_else(no_path);
        // The retry of a REGISTER that completed before the helper died: the device's
        // answer stands, but multipathd learns the key (route/reconcile.rs).
        let effect = if sa == PrOutAction::Register
            && o.status == Status::RESERVATION_CONFLICT
            && reconcile::already_registered(p, cdb, &targets, bp.sa_key, bp.aptpl)
        {
            register_effect(bp)
        } else {
            Effect::None
        };
        return (o, effect);
    }
    // Some paths registered, some conflicted (their old key differs, e.g. a path that
    // came back with a stale registration): make them agree with REGISTER AND IGNORE.
    let retry: Vec<usize> = answers
        .iter()
        .filter(|(_, a)| a.class == Class::Conflict)
        .map(|(i, _)| *i)
        .collect();
    if !retry.is_empty() {
        if sa != PrOutAction::Register {
            return (pick(Class::Conflict).unwrap_or_else(no_path), Effect::None);
        }
        let c = prout_cdb(cdb, PrOutAction::RegisterAndIgnore, 0, stripped.len());
        let again = fan_out(p, &retry, &|_| c, &|_| stripped.clone());
        if let Some((_, a)) = again
            .iter()
            .find(|(_, a)| a.class != Class::Good && a.class != Class::PathError)
        {
            return (a.outcome.clone(), Effect::None);
        }
    }
    // A key change that did not reach every path: if one of them holds the reservation
    // under the old key, move the reservation to the new key; otherwise drop the old
    // key's registrations left on the paths we missed. Likewise for an unregister.
    let missed =
        targets.len() < p.len() || answers.iter().any(|(_, a)| a.class == Class::PathError);
    let via = answers
        .iter()
        .find(|(_, a)| a.class == Class::Good)
        .map(|(i, _)| *i);
    if let (Some(old), Some(via)) = (old_key.filter(|&old| missed && old != bp.sa_key), via) {
        let held = read_reservation(p).and_then(|rr| rr.reservation);
        match held.filter(|r| r.key == old && !all_registrants(r.pr_type)) {
            Some(r) if bp.sa_key != 0 => {
                let c = prout_cdb(cdb, PrOutAction::Preempt, r.pr_type, BASIC_LEN);
                let (_, o) = first_answering(p, &c, &basic(bp.sa_key, old, false), false);
                if o.status != Status::GOOD {
                    return (o, Effect::None);
                }
            }
            _ => drop_stale(p, cdb, via, bp.sa_key, old),
        }
    }
    (Outcome::good(), register_effect(bp))
}

fn register_effect(bp: &BasicParams) -> Effect {
    if bp.sa_key == 0 {
        Effect::Unregistered
    } else {
        Effect::Registered {
            key: bp.sa_key,
            aptpl: bp.aptpl,
        }
    }
}

fn all_registrants(pr_type: u8) -> bool {
    matches!(pr_type, 7 | 8)
}

/// Types under which only the holding I_T nexus may write (Write Exclusive, Exclusive
/// Access): another path of ours that is merely registered gets RESERVATION CONFLICT.
fn only_holder_writes(pr_type: u8) -> bool {
    matches!(pr_type, 1 | 3)
}

/// RESERVE: the first reachable path; a conflict moves on to the next (the holder may be
/// another of our paths). When every reachable path conflicts and some path could not be
/// reached, that path may hold the reservation for us: a single-path device answers its
/// holder's RESERVE of the same type with GOOD (a failover cluster re-reserves every few
/// seconds and takes a conflict for a lost disk). READ RESERVATION tells: our key and
/// type mean GOOD; under a type where only the holding nexus may write, the reservation
/// is first moved to a reachable path (self-preempt), so that the node can still write.
fn reserve(
    p: &dyn Paths,
    cdb: &[u8; 16],
    params: &[u8],
    bp: &BasicParams,
    pr_type: u8,
) -> (Outcome, Effect) {
    let t = try_in_order(p, cdb, params, true);
    if t.outcome.status == Status::GOOD {
        return (t.outcome, Effect::Reserved);
    }
    if t.class != Class::Conflict || !t.unreachable || bp.key == 0 {
        return (t.outcome, Effect::None);
    }
    let held = read_reservation(p).and_then(|rr| rr.reservation);
    if !held.is_some_and(|r| r.key == bp.key && r.pr_type == pr_type && !all_registrants(r.pr_type))
    {
        return (t.outcome, Effect::None);
    }
    if !only_holder_writes(pr_type) {
        return (Outcome::good(), Effect::Reserved);
    }
    let c = prout_cdb(cdb, PrOutAction::Preempt, pr_type, BASIC_LEN);
    let own = BasicParams {
        key: bp.key,
        sa_key: bp.key,
        ..Default::default()
    };
    let (o, _) = preempt(
        p,
        &c,
        &basic(bp.key, bp.key, false),
        PrOutAction::Preempt,
        &own,
    );
    if o.status == Status::GOOD {
        (Outcome::good(), Effect::Reserved)
    } else {
        (o, Effect::None)
    }
}

/// After an unregister or a key change that missed some paths, those paths' I_T nexuses
/// are still registered under `old`: a single-path node would have no such registration
/// left (and a preempt of its current key would not reach it). PREEMPT(`via_key` →
/// `old`) through the reachable path `via` removes every registration with `old`; the
/// reservation is not taken (`old` holds none, or the caller moves it itself). With
/// `via_key` 0 (unregister) `via` registers `old` first and unregisters afterwards (the
/// device may spare the issuer). Errors are logged only: the command itself succeeded.
fn drop_stale(p: &dyn Paths, orig: &[u8; 16], via: usize, via_key: u64, old: u64) {
    let ri = prout_cdb(orig, PrOutAction::RegisterAndIgnore, 0, BASIC_LEN);
    let send = |c: &[u8; 16], params: Vec<u8>| run_retrying(p, via, c, Data::ToDevice(&params));
    let issuer = if via_key == 0 {
        if send(&ri, basic(0, old, false)).class != Class::Good {
            return;
        }
        old
    } else {
        via_key
    };
    let ty = read_reservation(p)
        .and_then(|rr| rr.reservation)
        .map_or(5, |r| r.pr_type);
    let c = prout_cdb(orig, PrOutAction::Preempt, ty, BASIC_LEN);
    let a = send(&c, basic(issuer, old, false));
    // A conflict: nothing was registered under `old` any more.
    if a.class != Class::Good {
        tracing::debug!("multipath: PREEMPT of stale key {old:#x}: {:?}", a.class);
    }
    if via_key == 0 {
        send(&ri, basic(0, 0, false));
    }
}

fn release(
    p: &dyn Paths,
    cdb: &[u8; 16],
    params: &[u8],
    bp: &BasicParams,
    pr_type: u8,
) -> (Outcome, Effect) {
    let targets = fan_targets(p, false);
    let answers = fan_out(p, &targets, &|_| *cdb, &|_| params.to_vec());
    let pick = |c: Class| {
        answers
            .iter()
            .find(|(_, a)| a.class == c)
            .map(|(_, a)| a.outcome.clone())
    };
    if let Some(o) = pick(Class::DeviceError).or_else(|| pick(Class::Conflict)) {
        return (o, Effect::None);
    }
    if !answers.iter().any(|(_, a)| a.class == Class::Good) {
        return (pick(Class::PathError).unwrap_or_else(no_path), Effect::None);
    }
    // Every reachable path released; if the holder was not among them the reservation
    // is still there under our key.
    let missed = answers.len() < p.len() || answers.iter().any(|(_, a)| a.class != Class::Good);
    if missed && bp.key != 0 {
        if let Some(r) = read_reservation(p).and_then(|rr| rr.reservation) {
            if r.key == bp.key && !all_registrants(r.pr_type) {
                if r.pr_type != pr_type {
                    return (Outcome::check(SenseCode::INVALID_RELEASE), Effect::None);
                }
                // Take it over through a reachable path (self-preempt), release it
                // there, and register the key again where the preempt removed it.
                let _s = Suspended::new(p);
                let c = prout_cdb(cdb, PrOutAction::Preempt, r.pr_type, BASIC_LEN);
                let (via, o) = first_answering(p, &c, &basic(bp.key, bp.key, false), false);
                let Some(via) = via.filter(|_| o.status == Status::GOOD) else {
                    return (o, Effect::None);
                };
                let data = basic(bp.key, 0, false);
                let a = run_retrying(p, via, cdb, Data::ToDevice(&data));
                let others: Vec<usize> = fan_targets(p, false)
                    .into_iter()
                    .filter(|&i| i != via)
                    .collect();
                reregister(p, cdb, &others, bp.key, false);
                if a.class != Class::Good {
                    return (a.outcome, Effect::None);
                }
            }
        }
    }
    (Outcome::good(), Effect::Released)
}

fn preempt(
    p: &dyn Paths,
    cdb: &[u8; 16],
    params: &[u8],
    _sa: PrOutAction,
    bp: &BasicParams,
) -> (Outcome, Effect) {
    // Preempting the reservation we hold under our own key (or, with key 0, an
    // all-registrants one) also removes our registration from every other path: keep
    // I/O queued meanwhile and register the key there again afterwards. Without such a
    // reservation the device removes every registration with that key, the issuing
    // path's too (LIO does), which is what a single-path guest would see: leave it.
    let own = bp.key != 0
        && (bp.sa_key == 0
            || (bp.sa_key == bp.key
                && read_reservation(p)
                    .and_then(|rr| rr.reservation)
                    .is_some_and(|r| r.key == bp.key && !all_registrants(r.pr_type))));
    let _s = own.then(|| Suspended::new(p));
    // A path that conflicts may be one without our key (a helper killed between the
    // PREEMPT and the re-registration of the last attempt): try the others.
    let (via, o) = first_answering(p, cdb, params, true);
    if o.status != Status::GOOD {
        return (o, Effect::None);
    }
    if own {
        let others: Vec<usize> = fan_targets(p, false)
            .into_iter()
            .filter(|&i| Some(i) != via)
            .collect();
        reregister(p, cdb, &others, bp.key, bp.aptpl);
    }
    (o, Effect::Reserved)
}

mod reconcile;

#[cfg(test)]
mod tests;
