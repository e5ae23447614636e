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
use crate::scsi::prout::{BasicParams, BASIC_LEN};
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

fn all_registrants(pr_type: u8) -> bool {
    matches!(pr_type, 7 | 8)
}

/// Types under which only the holding I_T nexus may write (Write Exclusive, Exclusive
/// Access): another path of ours that is merely registered gets RESERVATION CONFLICT.
fn only_holder_writes(pr_type: u8) -> bool {
    matches!(pr_type, 1 | 3)
}

mod actions;
mod reconcile;

use actions::{preempt, register, release, reserve};

#[cfg(test)]
mod tests;
