// SPDX-License-Identifier: MIT OR Apache-2.0
//! The router against a small SPC-4 model of one LU reached through several I_T nexuses.
//! (The proof on real devices is the lab's `multipath_*` cases; this pins the logic.)

use super::*;
use crate::scsi::sense::Sense;
use std::sync::Mutex;

/// Nexus numbers: paths are 0..n; other hosts' initiators are 100+.
type Nexus = usize;
const OTHER: Nexus = 100;

#[derive(Default)]
struct Lu {
    keys: std::collections::BTreeMap<Nexus, u64>,
    /// (holder, type)
    res: Option<(Nexus, u8)>,
    generation: u32,
}

impl Lu {
    fn holder(&self, n: Nexus) -> bool {
        match self.res {
            Some((_, t)) if all_registrants(t) => self.keys.contains_key(&n),
            Some((h, _)) => h == n,
            None => false,
        }
    }
    fn res_key(&self) -> Option<u64> {
        self.res
            .map(|(h, t)| if all_registrants(t) { 0 } else { self.keys[&h] })
    }
    fn unregister(&mut self, n: Nexus) {
        self.keys.remove(&n);
        if let Some((h, t)) = self.res {
            if (!all_registrants(t) && h == n) || self.keys.is_empty() {
                self.res = None;
            }
        }
    }
    fn pr_out(&mut self, n: Nexus, sa: u8, ty: u8, p: &BasicParams) -> Result<(), Class> {
        let mine = self.keys.get(&n).copied();
        let conflict = Err(Class::Conflict);
        match sa {
            0 | 6 => {
                if sa == 0 && mine.unwrap_or(0) != p.key {
                    return conflict;
                }
                if p.sa_key == 0 {
                    self.unregister(n);
                } else {
                    self.keys.insert(n, p.sa_key);
                }
                self.generation += 1;
                if let Some(tids) = &p.transport_ids {
                    for k in 0..tids.len() {
                        self.keys.insert(OTHER + 50 + k, p.sa_key);
                    }
                }
                Ok(())
            }
            _ if mine != Some(p.key) => conflict,
            1 => match self.res {
                None => {
                    self.res = Some((n, ty));
                    Ok(())
                }
                Some((_, t)) if self.holder(n) && t == ty => Ok(()),
                _ => conflict,
            },
            2 => match self.res {
                Some((_, t)) if self.holder(n) => {
                    if t != ty {
                        return Err(Class::DeviceError);
                    }
                    self.res = None;
                    Ok(())
                }
                _ => Ok(()),
            },
            3 => {
                self.keys.clear();
                self.res = None;
                self.generation += 1;
                Ok(())
            }
            4 | 5 => {
                if p.sa_key == 0 {
                    match self.res {
                        Some((_, t)) if all_registrants(t) => {
                            self.keys.retain(|&k, _| k == n);
                            self.res = Some((n, ty));
                            return Ok(());
                        }
                        _ => return Err(Class::DeviceError),
                    }
                }
                // Preempting the holder spares the issuer; otherwise every registration
                // with that key goes, the issuer's too (as LIO does).
                let takes = self.res_key() == Some(p.sa_key);
                self.keys
                    .retain(|&k, v| (takes && k == n) || *v != p.sa_key);
                if takes {
                    self.res = Some((n, ty));
                }
                self.generation += 1;
                Ok(())
            }
            7 => {
                if self.holder(n) {
                    self.res = None;
                    Ok(())
                } else {
                    conflict
                }
            }
            _ => Err(Class::DeviceError),
        }
    }
}

/// (path, cdb, parameter list) of one command sent.
type Sent = (usize, [u8; 16], Vec<u8>);

struct Fake {
    lu: Mutex<Lu>,
    /// Per path: reachable at all, usable per device-mapper, SCSI host.
    up: Mutex<Vec<bool>>,
    dm_usable: Vec<bool>,
    hosts: Vec<u32>,
    /// (path, cdb, parameter list) of every command sent.
    log: Mutex<Vec<Sent>>,
    /// Unit attentions still pending per path.
    ua: Mutex<Vec<usize>>,
    suspends: Mutex<(usize, usize)>,
}

impl Fake {
    fn new(n: usize) -> Fake {
        Fake {
            lu: Mutex::default(),
            up: Mutex::new(vec![true; n]),
            dm_usable: vec![true; n],
            hosts: (0..n as u32).collect(),
            log: Mutex::default(),
            ua: Mutex::new(vec![0; n]),
            suspends: Mutex::default(),
        }
    }
    fn down(mut self, i: usize) -> Fake {
        self.up.get_mut().unwrap()[i] = false;
        self.dm_usable[i] = false;
        self
    }
    fn keys(&self) -> Vec<(Nexus, u64)> {
        self.lu
            .lock()
            .unwrap()
            .keys
            .iter()
            .map(|(&n, &k)| (n, k))
            .collect()
    }
    fn res(&self) -> Option<(Nexus, u8)> {
        self.lu.lock().unwrap().res
    }
    fn sent_to(&self, sa: u8) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c, _)| c[0] == 0x5f && c[1] & 0x1f == sa)
            .map(|(i, _, _)| *i)
            .collect();
        v.sort();
        v
    }
    /// Direct command from nexus `n` (set-up, other hosts).
    fn out(&self, n: Nexus, sa: u8, ty: u8, key: u64, sa_key: u64) -> Result<(), Class> {
        let p = BasicParams {
            key,
            sa_key,
            ..Default::default()
        };
        self.lu.lock().unwrap().pr_out(n, sa, ty, &p)
    }
}

fn answer(class: Class) -> Answer {
    let outcome = match class {
        Class::Good => Outcome::good(),
        Class::Conflict => Outcome {
            status: Status::RESERVATION_CONFLICT,
            sense: Sense::default(),
            len: 0,
        },
        Class::PathError => Outcome::check(SenseCode::I_T_NEXUS_LOSS),
        Class::UnitAttention => Outcome::check(SenseCode::RESET),
        Class::DeviceError => Outcome::check(SenseCode::INVALID_RELEASE),
    };
    Answer { outcome, class }
}

impl Paths for Fake {
    fn len(&self) -> usize {
        self.dm_usable.len()
    }
    fn order(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.len()).collect();
        v.sort_by_key(|&i| !self.dm_usable[i]);
        v
    }
    fn usable(&self, i: usize) -> bool {
        self.dm_usable[i]
    }
    fn host(&self, i: usize) -> Option<u32> {
        Some(self.hosts[i])
    }
    fn run(&self, i: usize, cdb: &[u8; 16], data: Data<'_>) -> Answer {
        let params = match &data {
            Data::ToDevice(b) => b.to_vec(),
            _ => vec![],
        };
        self.log.lock().unwrap().push((i, *cdb, params.clone()));
        if !self.up.lock().unwrap()[i] {
            return answer(Class::PathError);
        }
        {
            let mut ua = self.ua.lock().unwrap();
            if ua[i] > 0 {
                ua[i] -= 1;
                return answer(Class::UnitAttention);
            }
        }
        let mut lu = self.lu.lock().unwrap();
        if cdb[0] == 0x5e {
            let Data::FromDevice(buf) = data else {
                return answer(Class::Good);
            };
            let rr = ReadReservation {
                generation: lu.generation,
                reservation: lu.res.map(|(_, t)| crate::scsi::prin::Reservation {
                    key: lu.res_key().unwrap_or(0),
                    scope: 0,
                    pr_type: t,
                }),
            }
            .encode();
            let n = rr.len().min(buf.len());
            buf[..n].copy_from_slice(&rr[..n]);
            let mut a = answer(Class::Good);
            a.outcome.len = n;
            return a;
        }
        let p = BasicParams::decode(&params).unwrap();
        let plen = u32::from_be_bytes(cdb[5..9].try_into().unwrap()) as usize;
        assert_eq!(plen, params.len(), "CDB parameter length matches the data");
        match lu.pr_out(i, cdb[1] & 0x1f, cdb[2] & 0xf, &p) {
            Ok(()) => answer(Class::Good),
            Err(c) => answer(c),
        }
    }
    fn suspend(&self) -> bool {
        self.suspends.lock().unwrap().0 += 1;
        true
    }
    fn resume(&self) {
        self.suspends.lock().unwrap().1 += 1;
    }
}

fn cmd(sa: u8, ty: u8, key: u64, sa_key: u64) -> ([u8; 16], Vec<u8>) {
    let params = basic(key, sa_key, false);
    let a = PrOutAction::from_code(sa).unwrap();
    (cdb16(cdb::pr_out(a, 0, ty, params.len() as u32)), params)
}

fn run(f: &Fake, sa: u8, ty: u8, key: u64, sa_key: u64) -> (Outcome, Effect) {
    let (c, p) = cmd(sa, ty, key, sa_key);
    pr_out(f, &c, &p, Context::default())
}

const K: u64 = 0xabc;
const K2: u64 = 0xdef;

#[test]
fn register_reaches_every_path() {
    let f = Fake::new(3);
    let (o, e) = run(&f, 0, 0, 0, K);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(
        e,
        Effect::Registered {
            key: K,
            aptpl: false
        }
    );
    assert_eq!(f.keys(), vec![(0, K), (1, K), (2, K)]);
    // Unregister: every path.
    let (o, e) = run(&f, 0, 0, K, 0);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Unregistered));
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn register_with_a_path_down_succeeds_on_the_others() {
    let f = Fake::new(2);
    *f.up.lock().unwrap() = vec![false, true]; // down, but dm has not noticed yet
    let (o, _) = run(&f, 0, 0, 0, K);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(1, K)]);
    let f = Fake::new(2).down(0); // dm knows: not even tried
    run(&f, 6, 0, 0, K);
    assert_eq!(f.keys(), vec![(1, K)]);
    assert_eq!(f.sent_to(6), vec![1]);
}

#[test]
fn register_with_every_path_down_gives_the_path_error() {
    let f = Fake::new(2);
    *f.up.lock().unwrap() = vec![false, false];
    let (o, e) = run(&f, 0, 0, 0, K);
    assert_eq!(o, Outcome::check(SenseCode::I_T_NEXUS_LOSS));
    assert_eq!(e, Effect::None);
}

#[test]
fn conflicting_path_is_retried_with_register_and_ignore() {
    let f = Fake::new(2);
    f.out(1, 0, 0, 0, 0x5757).unwrap(); // a stale key on path 1
    let (o, _) = run(&f, 0, 0, 0, K);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    assert_eq!(f.sent_to(6), vec![1]);
}

#[test]
fn conflict_on_every_path_is_a_conflict() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    let (o, e) = run(&f, 0, 0, 0x999, K2); // wrong old key
    assert_eq!(o.status, Status::RESERVATION_CONFLICT);
    assert_eq!(e, Effect::None);
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
}

#[test]
fn spec_i_pt_goes_through_one_path_only() {
    use crate::scsi::prout::TransportId;
    let f = Fake::new(2);
    let params = BasicParams {
        sa_key: K,
        transport_ids: Some(vec![TransportId::parse("sas,0x5000000000000001").unwrap()]),
        ..Default::default()
    }
    .encode();
    let c = cdb16(cdb::pr_out(
        PrOutAction::Register,
        0,
        0,
        params.len() as u32,
    ));
    let (o, _) = pr_out(&f, &c, &params, Context::default());
    assert_eq!(o.status, Status::GOOD);
    let log = f.log.lock().unwrap();
    let with_tids = log.iter().filter(|(_, _, p)| p.len() > BASIC_LEN).count();
    assert_eq!(with_tids, 1);
    assert!(log
        .iter()
        .all(|(_, c, p)| u32::from_be_bytes(c[5..9].try_into().unwrap()) as usize == p.len()));
    drop(log);
    // Both paths and the one named initiator are registered.
    assert_eq!(f.keys().len(), 3);
}

#[test]
fn all_tg_pt_registers_once_per_host() {
    let mut f = Fake::new(3);
    f.hosts = vec![7, 7, 8];
    let params = BasicParams {
        sa_key: K,
        all_tg_pt: true,
        ..Default::default()
    }
    .encode();
    let c = cdb16(cdb::pr_out(PrOutAction::Register, 0, 0, 24));
    pr_out(&f, &c, &params, Context::default());
    assert_eq!(f.sent_to(0), vec![0, 2]);
}

#[test]
fn unit_attention_is_retried_on_the_same_path() {
    let f = Fake::new(2);
    f.ua.lock().unwrap()[0] = 2;
    let (o, _) = run(&f, 0, 0, 0, K);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    // Endless unit attentions are eventually the answer, never a hang.
    f.ua.lock().unwrap()[0] = 1000;
    let mut buf = [0u8; 24];
    let o = pr_in(
        &f,
        &cdb16(cdb::pr_in(PrInAction::ReadReservation, 24)),
        &mut buf,
    );
    assert_eq!(o.sense.code(), Some(SenseCode::RESET));
}

#[test]
fn reserve_moves_on_past_a_conflicting_non_holder_path() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(1, 1, 5, K, 0).unwrap(); // path 1 holds it (an earlier RESERVE went there)
    let (o, e) = run(&f, 1, 5, K, 0); // tried on path 0 first: conflict, then path 1
    assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
    assert_eq!(f.res(), Some((1, 5)));
}

#[test]
fn reserve_conflicts_when_another_host_holds_it() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    f.out(OTHER, 1, 3, K2, 0).unwrap();
    let (o, e) = run(&f, 1, 3, K, 0);
    assert_eq!((o.status, e), (Status::RESERVATION_CONFLICT, Effect::None));
}

#[test]
fn reserve_skips_a_dead_path() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.up.lock().unwrap()[0] = false;
    let (o, _) = run(&f, 1, 1, K, 0);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), Some((1, 1)));
}

#[test]
fn release_while_the_holding_path_is_down() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    assert_eq!(f.res(), Some((0, 1)));
    f.up.lock().unwrap()[0] = false;
    let (o, e) = run(&f, 2, 1, K, 0);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Released));
    assert_eq!(f.res(), None, "released although path 0 holds it");
    assert!(f.keys().contains(&(1, K)), "path 1 still registered");
    assert_eq!(*f.suspends.lock().unwrap(), (1, 1));
    // Wrong type: the device's answer (05/26/04), as if the holder had said it.
    run(&f, 1, 3, K, 0); // path 1 (the only one up) now holds type 3
    let (o, _) = run(&f, 2, 1, K, 0);
    assert_eq!(o.sense.code(), Some(SenseCode::INVALID_RELEASE));
}

#[test]
fn release_reaches_every_path_and_a_non_holder_is_fine() {
    let f = Fake::new(3);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 3, K, 0);
    let (o, _) = run(&f, 2, 3, K, 0);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), None);
    assert_eq!(f.sent_to(2), vec![0, 1, 2]);
}

#[test]
fn preempting_our_own_key_keeps_it_on_every_path() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    let (o, e) = run(&f, 4, 3, K, K); // change the type by self-preempt
    assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    assert_eq!(f.res(), Some((0, 3)));
    assert_eq!(*f.suspends.lock().unwrap(), (1, 1));
}

#[test]
fn preempting_our_own_key_without_a_reservation_is_left_to_the_device() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    let (o, _) = run(&f, 4, 1, K, K);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(
        f.keys(),
        vec![],
        "as on a single path: every registration with K gone"
    );
    assert_eq!(f.sent_to(6), Vec::<usize>::new(), "nothing re-registered");
}

#[test]
fn preempting_another_host() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    f.out(OTHER, 1, 1, K2, 0).unwrap();
    let (o, e) = run(&f, 4, 1, K, K2);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    assert_eq!(f.res(), Some((0, 1)));
    assert_eq!(
        *f.suspends.lock().unwrap(),
        (0, 0),
        "no suspend when not ours"
    );
}

#[test]
fn preempt_all_registrants_keeps_our_paths() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    run(&f, 1, 7, K, 0);
    let (o, _) = run(&f, 4, 7, K, 0);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
}

#[test]
fn key_change_while_the_holding_path_is_down() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    let f = f.down(0); // down, and device-mapper knows
    let (o, e) = run(&f, 0, 0, K, K2);
    assert_eq!(
        (o.status, e),
        (
            Status::GOOD,
            Effect::Registered {
                key: K2,
                aptpl: false
            }
        )
    );
    assert_eq!(
        f.res(),
        Some((1, 1)),
        "reservation moved to the reachable path"
    );
    assert_eq!(
        f.keys(),
        vec![(1, K2)],
        "old key gone from the dead path's nexus"
    );
}

#[test]
fn key_change_while_the_holding_path_is_down_unknown_to_dm() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    f.up.lock().unwrap()[0] = false; // dm still says usable
    let (o, _) = run(&f, 0, 0, K, K2);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), Some((1, 1)));
    assert_eq!(f.keys(), vec![(1, K2)]);
}

#[test]
fn key_change_with_every_path_reached_needs_no_preempt() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    let (o, _) = run(&f, 0, 0, K, K2);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), Some((0, 1)));
    assert_eq!(f.sent_to(4), Vec::<usize>::new());
    assert_eq!(f.keys(), vec![(0, K2), (1, K2)]);
}

#[test]
fn unregister_while_holding_releases_first() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    let f = f.down(0); // down, and device-mapper knows
    let (o, e) = run(&f, 0, 0, K, 0);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Unregistered));
    assert_eq!(f.res(), None);
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn register_and_ignore_uses_the_known_key_for_the_holder_check() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    let f = f.down(0); // down, and device-mapper knows
    let (c, p) = cmd(6, 0, 0, K2);
    let (o, _) = pr_out(&f, &c, &p, Context { known_key: Some(K) });
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), Some((1, 1)));
}

#[test]
fn holder_re_reserves_with_its_holding_path_dead() {
    // Registrants only: every registered path may write, so the reservation stays where
    // it is and the answer is the one a single path gives its holder: GOOD.
    for dm_knows in [true, false] {
        let f = Fake::new(2);
        run(&f, 0, 0, 0, K);
        run(&f, 1, 5, K, 0);
        assert_eq!(f.res(), Some((0, 5)));
        let f = if dm_knows {
            f.down(0)
        } else {
            f.up.lock().unwrap()[0] = false;
            f
        };
        for _ in 0..3 {
            let (o, e) = run(&f, 1, 5, K, 0);
            assert_eq!(
                (o.status, e),
                (Status::GOOD, Effect::Reserved),
                "dm knows: {dm_knows}"
            );
        }
        assert_eq!(f.res(), Some((0, 5)), "left with the dead holder");
        assert_eq!(f.sent_to(4), Vec::<usize>::new(), "no preempt");
        assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    }
}

#[test]
fn holder_re_reserve_moves_a_write_exclusive_reservation_to_a_live_path() {
    // Write Exclusive / Exclusive Access: only the holding nexus may write, so the
    // reservation moves to a reachable path before the GOOD.
    for ty in [1, 3] {
        let f = Fake::new(3);
        run(&f, 0, 0, 0, K);
        run(&f, 1, ty, K, 0);
        let f = f.down(0);
        let (o, e) = run(&f, 1, ty, K, 0);
        assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
        assert_eq!(f.res(), Some((1, ty)), "moved to the first live path");
        assert_eq!(
            f.keys(),
            vec![(1, K), (2, K)],
            "key kept on every live path"
        );
        assert_eq!(*f.suspends.lock().unwrap(), (1, 1));
        // Again: now the live holder answers, nothing more is sent.
        let before = f.log.lock().unwrap().len();
        let (o, _) = run(&f, 1, ty, K, 0);
        assert_eq!(o.status, Status::GOOD);
        assert_eq!(f.log.lock().unwrap().len(), before + 1);
    }
}

#[test]
fn re_reserve_with_a_dead_path_still_conflicts_when_not_ours() {
    // Another host holds it: the dead path changes nothing.
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    f.out(OTHER, 1, 5, K2, 0).unwrap();
    let f = f.down(0);
    let (o, e) = run(&f, 1, 5, K, 0);
    assert_eq!((o.status, e), (Status::RESERVATION_CONFLICT, Effect::None));
    assert_eq!(f.res(), Some((OTHER, 5)));
    // Ours, but another type: a single path conflicts too.
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 5, K, 0);
    let f = f.down(0);
    let (o, _) = run(&f, 1, 1, K, 0);
    assert_eq!(o.status, Status::RESERVATION_CONFLICT);
    assert_eq!(f.res(), Some((0, 5)));
    assert_eq!(f.sent_to(4), Vec::<usize>::new());
}

#[test]
fn reserve_with_every_path_down_is_the_path_error() {
    let f = Fake::new(2).down(0).down(1);
    let (o, e) = run(&f, 1, 5, K, 0);
    assert_eq!(o, Outcome::check(SenseCode::I_T_NEXUS_LOSS));
    assert_eq!(e, Effect::None);
}

#[test]
fn unregister_with_a_dead_path_leaves_no_stale_registration() {
    // Not holding: the dead path's nexus would keep the key (and could write under a
    // registrants-only reservation when it returns); a PREEMPT of our own key through a
    // live path removes it.
    for dm_knows in [true, false] {
        let f = Fake::new(2);
        run(&f, 0, 0, 0, K);
        f.out(OTHER, 6, 0, 0, K2).unwrap();
        f.out(OTHER, 1, 5, K2, 0).unwrap();
        let f = if dm_knows {
            f.down(0)
        } else {
            f.up.lock().unwrap()[0] = false;
            f
        };
        let (o, e) = run(&f, 0, 0, K, 0);
        assert_eq!((o.status, e), (Status::GOOD, Effect::Unregistered));
        assert_eq!(f.keys(), vec![(OTHER, K2)], "dm knows: {dm_knows}");
        assert_eq!(
            f.res(),
            Some((OTHER, 5)),
            "the other host's reservation untouched"
        );
    }
    // Windows' unregister: REGISTER AND IGNORE with key 0 (the known key tells which).
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    let f = f.down(1);
    let (c, p) = cmd(6, 0, 0, 0);
    let (o, _) = pr_out(&f, &c, &p, Context { known_key: Some(K) });
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn unregister_while_holding_through_a_live_path_with_another_dead() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 5, K, 0);
    let f = f.down(1); // the non-holder is dead
    let (o, _) = run(&f, 0, 0, K, 0);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), None);
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn key_change_with_a_dead_path_not_holding_drops_the_old_key() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    let f = f.down(0);
    let (o, _) = run(&f, 0, 0, K, K2);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(1, K2)], "no nexus left with the old key");
    // The other host's reservation (registrants only) is not ours to move.
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    f.out(OTHER, 1, 5, K2, 0).unwrap();
    let f = f.down(1);
    let (o, _) = run(&f, 0, 0, K, 0x777);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(0, 0x777), (OTHER, K2)]);
    assert_eq!(f.res(), Some((OTHER, 5)));
}

#[test]
fn key_change_while_holding_with_every_path_up_keeps_the_reservation() {
    // The reservation follows the key on a single path; on every path here.
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 5, K, 0);
    let (c, p) = cmd(6, 0, 0, K2);
    let (o, _) = pr_out(&f, &c, &p, Context { known_key: Some(K) });
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.keys(), vec![(0, K2), (1, K2)]);
    assert_eq!(f.res(), Some((0, 5)));
    assert_eq!(f.sent_to(4), Vec::<usize>::new());
}

#[test]
fn release_by_a_non_holder_with_a_dead_path_is_harmless() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    f.out(OTHER, 1, 5, K2, 0).unwrap();
    let f = f.down(0);
    let (o, _) = run(&f, 2, 5, K, 0);
    assert_eq!(o.status, Status::GOOD);
    assert_eq!(f.res(), Some((OTHER, 5)));
    assert_eq!(f.keys(), vec![(0, K), (1, K), (OTHER, K2)]);
    assert_eq!(f.sent_to(4), Vec::<usize>::new());
}

#[test]
fn register_and_move_moves_on_to_the_holding_path() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    f.out(1, 1, 1, K, 0).unwrap(); // path 1 holds
    let c = cdb16(cdb::pr_out(PrOutAction::RegisterAndMove, 0, 1, 24));
    let (o, _) = pr_out(&f, &c, &basic(K, K2, false), Context::default());
    assert_eq!(o.status, Status::GOOD);
    let sent: Vec<usize> = f
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, c, _)| c[1] & 0x1f == 7)
        .map(|(i, _, _)| *i)
        .collect();
    assert_eq!(sent, vec![0, 1], "tried path 0 (conflict), then the holder");
}

#[test]
fn clear_through_one_path() {
    let f = Fake::new(2);
    run(&f, 0, 0, 0, K);
    run(&f, 1, 1, K, 0);
    let (o, e) = run(&f, 3, 0, K, 0);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Cleared));
    assert_eq!(f.sent_to(3), vec![0]);
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn pr_in_moves_past_dead_paths_and_stops_at_device_answers() {
    let f = Fake::new(2);
    f.up.lock().unwrap()[0] = false;
    let mut buf = [0u8; 24];
    let c = cdb16(cdb::pr_in(PrInAction::ReadReservation, 24));
    let o = pr_in(&f, &c, &mut buf);
    assert_eq!((o.status, o.len), (Status::GOOD, 8));
    f.up.lock().unwrap()[1] = false;
    let o = pr_in(&f, &c, &mut buf);
    assert_eq!(o.sense.code(), Some(SenseCode::I_T_NEXUS_LOSS));
}

#[test]
fn classification() {
    let o = |status, host_status| SgOutcome {
        errno: None,
        status,
        host_status,
        driver_status: 0,
    };
    let fixed = |key: u8, asc: u8| {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[12] = asc;
        s
    };
    assert_eq!(classify(&o(0, 0), &[]), Class::Good);
    assert_eq!(classify(&o(0x18, 0), &[]), Class::Conflict);
    assert_eq!(
        classify(&o(0, 0x0e), &[]),
        Class::PathError,
        "GOOD + DID_TRANSPORT_DISRUPTED"
    );
    assert_eq!(classify(&o(2, 0), &fixed(6, 0x29)), Class::UnitAttention);
    assert_eq!(classify(&o(2, 0), &fixed(2, 0x04)), Class::PathError);
    assert_eq!(classify(&o(2, 0), &fixed(5, 0x24)), Class::DeviceError);
    assert_eq!(classify(&o(8, 0), &[]), Class::PathError);
    let e = |errno| SgOutcome {
        errno: Some(errno),
        ..Default::default()
    };
    assert_eq!(classify(&e(libc::ENODEV), &[]), Class::PathError);
    assert_eq!(classify(&e(libc::EBADE), &[]), Class::Conflict);
}

/// Retries after the helper died mid-command (route/reconcile.rs).
mod crash;
