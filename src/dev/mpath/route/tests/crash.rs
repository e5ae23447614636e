// SPDX-License-Identifier: MIT OR Apache-2.0
//! The states a helper killed mid-command leaves, and the guest's retry of the same
//! command (the lab's `multipath_crash` is the proof on real parts).

use super::*;

fn registered(k: u64) -> Effect {
    Effect::Registered {
        key: k,
        aptpl: false,
    }
}

#[test]
fn retried_register_after_a_complete_first_attempt_tells_multipathd() {
    let f = Fake::new(2);
    // The first REGISTER K → K2 reached both paths; the helper died before answering.
    f.out(0, 6, 0, 0, K2).unwrap();
    f.out(1, 6, 0, 0, K2).unwrap();
    let (o, e) = run(&f, 0, 0, K, K2);
    // The device's answer to a repeated REGISTER stands, as on one path...
    assert_eq!(o.status, Status::RESERVATION_CONFLICT);
    // ...but the key is the map's key: multipathd must learn it.
    assert_eq!(e, registered(K2));
    assert_eq!(f.keys(), vec![(0, K2), (1, K2)]);
}

#[test]
fn retried_unregister_after_a_complete_first_attempt_tells_multipathd() {
    let f = Fake::new(2);
    let (o, e) = run(&f, 0, 0, K, 0);
    assert_eq!(o.status, Status::RESERVATION_CONFLICT);
    assert_eq!(e, Effect::Unregistered);
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn a_wrong_key_stays_a_plain_conflict() {
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K).unwrap();
    f.out(1, 6, 0, 0, K).unwrap();
    let (o, e) = run(&f, 0, 0, 0x999, K2);
    assert_eq!((o.status, e), (Status::RESERVATION_CONFLICT, Effect::None));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    // Unregister with a wrong key: the probe (0 → 0) conflicts on registered paths.
    let (o, e) = run(&f, 0, 0, 0x999, 0);
    assert_eq!((o.status, e), (Status::RESERVATION_CONFLICT, Effect::None));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    // One path has the new key, the other another one: not settled.
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K2).unwrap();
    f.out(1, 6, 0, 0, 0x5757).unwrap();
    let (_, e) = run(&f, 0, 0, K, K2);
    assert_eq!(e, Effect::None);
}

#[test]
fn the_probe_skips_paths_that_are_down() {
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K2).unwrap();
    *f.up.lock().unwrap() = vec![true, false];
    let (o, e) = run(&f, 0, 0, K, K2);
    assert_eq!(
        (o.status, e),
        (Status::RESERVATION_CONFLICT, registered(K2))
    );
    *f.up.lock().unwrap() = vec![false, false];
    let (_, e) = run(&f, 0, 0, K, K2);
    assert_eq!(e, Effect::None, "no path answered the probe");
}

#[test]
fn retried_register_repairs_a_torn_key_change() {
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K2).unwrap(); // done
    f.out(1, 6, 0, 0, K).unwrap(); // not yet
    let (o, e) = run(&f, 0, 0, K, K2);
    assert_eq!((o.status, e), (Status::GOOD, registered(K2)));
    assert_eq!(f.keys(), vec![(0, K2), (1, K2)]);
}

#[test]
fn retried_unregister_repairs_a_torn_unregister() {
    let f = Fake::new(2);
    f.out(1, 6, 0, 0, K).unwrap(); // path 0 already unregistered
    let (o, e) = run(&f, 0, 0, K, 0);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Unregistered));
    assert_eq!(f.keys(), vec![]);
}

#[test]
fn retried_first_register_repairs_a_torn_one() {
    let f = Fake::new(2);
    f.out(1, 6, 0, 0, K).unwrap(); // path 1 got it, path 0 not
    let (o, e) = run(&f, 0, 0, 0, K);
    assert_eq!((o.status, e), (Status::GOOD, registered(K)));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
}

#[test]
fn retried_register_and_ignore_repairs_a_torn_key_change() {
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K2).unwrap();
    f.out(1, 6, 0, 0, K).unwrap();
    let (o, e) = run(&f, 6, 0, 0, K2);
    assert_eq!((o.status, e), (Status::GOOD, registered(K2)));
    assert_eq!(f.keys(), vec![(0, K2), (1, K2)]);
}

#[test]
fn retried_self_preempt_repairs_a_path_left_unregistered() {
    // The first PREEMPT K → K (type change) went through path 0 and removed K from path
    // 1; the helper died before registering it there again (and before resuming).
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K).unwrap();
    f.out(1, 6, 0, 0, K).unwrap();
    f.out(0, 1, 1, K, 0).unwrap();
    f.out(0, 4, 3, K, K).unwrap();
    assert_eq!(f.keys(), vec![(0, K)]);
    let (o, e) = run(&f, 4, 3, K, K);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    assert_eq!(f.res(), Some((0, 3)));
    let (s, r) = *f.suspends.lock().unwrap();
    assert_eq!(s, r, "the retry resumes the map it suspends");
}

#[test]
fn retried_self_preempt_goes_past_a_path_without_the_key() {
    // As above, but the path without the key comes first in the retry's order.
    let f = Fake::new(2);
    f.out(1, 6, 0, 0, K).unwrap();
    f.out(1, 1, 1, K, 0).unwrap();
    let (o, e) = run(&f, 4, 3, K, K);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    assert_eq!(f.res(), Some((1, 3)));
}

#[test]
fn retried_preempt_of_another_initiator_after_it_completed() {
    let f = Fake::new(2);
    f.out(0, 6, 0, 0, K).unwrap();
    f.out(1, 6, 0, 0, K).unwrap();
    f.out(OTHER, 6, 0, 0, K2).unwrap();
    f.out(OTHER, 1, 1, K2, 0).unwrap();
    let (o, e) = run(&f, 4, 1, K, K2);
    assert_eq!((o.status, e), (Status::GOOD, Effect::Reserved));
    // The retry: the preempted key is gone (LIO answers RESERVATION CONFLICT; the model
    // does nothing), and nothing changes.
    run(&f, 4, 1, K, K2);
    assert_eq!(f.keys(), vec![(0, K), (1, K)]);
    assert_eq!(f.res(), Some((0, 1)));
}
