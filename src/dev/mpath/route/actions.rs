// SPDX-License-Identifier: MIT OR Apache-2.0
//! The PR OUT actions that need more than one path: REGISTER (and AND IGNORE), RESERVE,
//! RELEASE, PREEMPT (and AND ABORT), each built from the fan-out primitives in
//! [`super`].

use super::{
    all_registrants, basic, fan_out, fan_targets, first_answering, no_path, only_holder_writes,
    prout_cdb, read_reservation, reconcile, reregister, run_retrying, try_in_order, Class, Context,
    Effect, Paths, Suspended,
};
use crate::dev::Outcome;
use crate::scsi::cdb::PrOutAction;
use crate::scsi::prout::{BasicParams, BASIC_LEN, SPEC_I_PT};
use crate::scsi::sense::SenseCode;
use crate::scsi::Status;
use crate::sys::sgio::Data;

pub(super) fn register(
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

/// RESERVE: the first reachable path; a conflict moves on to the next (the holder may be
/// another of our paths). When every reachable path conflicts and some path could not be
/// reached, that path may hold the reservation for us: a single-path device answers its
/// holder's RESERVE of the same type with GOOD (a failover cluster re-reserves every few
/// seconds and takes a conflict for a lost disk). READ RESERVATION tells: our key and
/// type mean GOOD; under a type where only the holding nexus may write, the reservation
/// is first moved to a reachable path (self-preempt), so that the node can still write.
pub(super) fn reserve(
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

pub(super) fn release(
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

pub(super) fn preempt(
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
