// SPDX-License-Identifier: MIT OR Apache-2.0
//! prhelper against Debian's C qemu-pr-helper on the same kernel: the same
//! request sequences through both, each helper on its own fresh LUN set up
//! identically (same initiator WWNs, so TransportIDs and relative target
//! ports agree), and every reply compared: status, sense (the bytes the
//! device produced, on CHECK CONDITION only: the C helper leaves
//! uninitialised bytes past them and on GOOD, a documented difference) and
//! PR IN payload, byte for byte, PR generation included.
//!
//! First a scripted sequence covering every service action, type, flag and
//! several malformed-but-deliverable CDBs and parameter lists, then a seeded
//! random sequence (`PRHELPER_LAB_SEED` to replay one; the seed is printed).

use prhelper::client::{Client, Response};
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prout::{BasicParams, RegisterMoveParams, TransportId};
use prhelper::scsi::Status;
use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::{self, Backstore, Target};
use prhelper_lab::prh::{self, open_rw, outcome, sense_len};
use prhelper_lab::util::{indent, scratch_dir, seed_from_env, Rng};
use prhelper_lab::{bail, ensure, Result};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

/// Random commands after the scripted ones.
const RANDOM_STEPS: usize = 300;

/// One helper with its own LU, reached by initiators A and B.
struct Side {
    name: &'static str,
    // Drop order: connections, helper, fds, targets, backstore.
    clients: [Client; 2],
    helper: Helper,
    fds: [File; 2],
    targets: Vec<Target>,
    _backstore: Backstore,
}

impl Side {
    fn new(
        name: &'static str,
        binary: &Path,
        extra: &[&str],
        initiators: &[String; 2],
        scratch: &Path,
    ) -> Result<Side> {
        let backstore = Backstore::fileio(&format!("diff-{name}"), 64 << 20)?;
        let mut targets = Vec::new();
        for ini in initiators {
            targets.push(Target::loopback(&lio::next_wwn(), ini, &backstore)?);
        }
        let fds = [
            open_rw(&targets[0].device().disk)?,
            open_rw(&targets[1].device().disk)?,
        ];
        let helper = Helper::start(binary, &scratch.join(format!("{name}.sock")), extra)?;
        let clients = [
            prh::connect(helper.socket())?,
            prh::connect(helper.socket())?,
        ];
        Ok(Side {
            name,
            clients,
            helper,
            fds,
            targets,
            _backstore: backstore,
        })
    }

    fn exec(&mut self, req: &Request) -> Result<Response> {
        let who = req.who;
        self.clients[who]
            .execute(self.fds[who].as_fd(), &req.cdb, &req.data, req.alloc)
            .map_err(|e| format!("{} helper: {}: {e}", self.name, req.describe()))
    }
}

/// One command from one initiator.
#[derive(Debug, Clone)]
struct Request {
    who: usize,
    cdb: Vec<u8>,
    data: Vec<u8>,
    alloc: usize,
}

impl Request {
    fn pr_in(who: usize, action: u8, alloc: u16) -> Request {
        let mut cdb = cdb::pr_in(PrInAction::ReadKeys, alloc).to_vec();
        cdb[1] = action;
        Request {
            who,
            cdb,
            data: Vec::new(),
            alloc: usize::from(alloc),
        }
    }

    fn pr_out(who: usize, action: u8, pr_type: u8, data: Vec<u8>) -> Request {
        let mut cdb = cdb::pr_out(PrOutAction::Register, 0, pr_type, data.len() as u32).to_vec();
        cdb[1] = action;
        Request {
            who,
            cdb,
            data,
            alloc: 0,
        }
    }

    fn describe(&self) -> String {
        let hex: Vec<String> = self.cdb.iter().map(|b| format!("{b:02x}")).collect();
        let name = if self.cdb[0] == 0x5e {
            PrInAction::from_code(self.cdb[1] & 0x1f).map_or("PR IN ?", |a| a.name())
        } else {
            PrOutAction::from_code(self.cdb[1] & 0x1f).map_or("PR OUT ?", |a| a.name())
        };
        format!(
            "{} from {} (cdb {}, {} bytes out)",
            name,
            ["A", "B"][self.who],
            hex.join(" "),
            self.data.len()
        )
    }
}

fn basic(key: u64, sa_key: u64) -> BasicParams {
    BasicParams {
        key,
        sa_key,
        ..Default::default()
    }
}

/// Compare two replies; Err describes the first difference.
fn compare(req: &Request, ours: &Response, theirs: &Response) -> Result<()> {
    let what = req.describe();
    ensure!(
        ours.status == theirs.status,
        "{what}: status: prhelper {} vs C helper {}",
        outcome(ours),
        outcome(theirs)
    );
    if ours.status == Status::CHECK_CONDITION {
        let n = sense_len(&theirs.sense.0);
        let m = sense_len(&ours.sense.0);
        ensure!(
            n == m && ours.sense.0[..n] == theirs.sense.0[..n],
            "{what}: sense: prhelper {:02x?} vs C helper {:02x?}",
            &ours.sense.0[..m],
            &theirs.sense.0[..n]
        );
    }
    ensure!(
        ours.data == theirs.data,
        "{what}: payload ({}): prhelper {} bytes {:02x?} vs C helper {} bytes {:02x?}",
        outcome(ours),
        ours.data.len(),
        ours.data,
        theirs.data.len(),
        theirs.data
    );
    Ok(())
}

/// The scripted sequence: every action, type and flag, and CDBs the LU rejects.
fn scripted(tid: [&TransportId; 2]) -> Vec<Request> {
    use Request as R;
    let mut v = Vec::new();
    let all_in = |v: &mut Vec<Request>, who: usize| {
        for a in 0..4 {
            for alloc in [0u16, 1, 7, 8, 9, 24, 8192] {
                v.push(R::pr_in(who, a, alloc));
            }
        }
    };
    all_in(&mut v, 0);
    v.push(R::pr_out(0, 0, 0, basic(0, 1).encode())); // REGISTER A 1
    v.push(R::pr_out(1, 6, 0, basic(0, 2).encode())); // REGISTER AND IGNORE B 2
    v.push(R::pr_out(0, 0, 0, basic(9, 3).encode())); // wrong key
    all_in(&mut v, 1);
    for t in [1u8, 3, 5, 6, 7, 8] {
        v.push(R::pr_out(0, 1, t, basic(1, 0).encode())); // RESERVE A
        v.push(R::pr_out(1, 1, t, basic(2, 0).encode())); // RESERVE B
        v.push(R::pr_out(1, 2, t, basic(2, 0).encode())); // RELEASE B
        v.push(R::pr_in(1, 1, 8192));
        v.push(R::pr_out(
            0,
            2,
            if t == 1 { 3 } else { 1 },
            basic(1, 0).encode(),
        )); // wrong type
        v.push(R::pr_out(0, 2, t, basic(7, 0).encode())); // wrong key
        v.push(R::pr_out(0, 2, t, basic(1, 0).encode())); // RELEASE A
        v.push(R::pr_in(1, 3, 8192));
        v.push(R::pr_in(0, 1, 8192));
    }
    v.push(R::pr_out(0, 1, 1, basic(1, 0).encode()));
    v.push(R::pr_out(1, 4, 1, basic(7, 1).encode())); // PREEMPT, wrong key
    v.push(R::pr_out(1, 5, 1, basic(7, 1).encode())); // PREEMPT AND ABORT, wrong key
    v.push(R::pr_out(1, 4, 1, basic(2, 1).encode())); // PREEMPT A
    v.push(R::pr_in(0, 0, 8192)); // UNIT ATTENTION
    all_in(&mut v, 0);
    v.push(R::pr_out(0, 5, 1, basic(7, 2).encode())); // PREEMPT AND ABORT, unregistered
    v.push(R::pr_out(1, 3, 0, basic(7, 0).encode())); // CLEAR, wrong key
    v.push(R::pr_out(1, 3, 0, basic(2, 0).encode())); // CLEAR
                                                      // APTPL, ALL_TG_PT, SPEC_I_PT.
    let flags = prh::register_flags;
    v.push(R::pr_out(0, 0, 0, flags(1, true, false, None)));
    v.push(R::pr_in(1, 2, 8192));
    v.push(R::pr_out(1, 0, 0, flags(2, false, true, None)));
    all_in(&mut v, 1);
    v.push(R::pr_out(0, 3, 0, basic(1, 0).encode()));
    v.push(R::pr_in(1, 0, 8192));
    v.push(R::pr_out(
        0,
        0,
        0,
        flags(5, false, false, Some(vec![tid[1].clone()])),
    ));
    v.push(R::pr_out(
        0,
        0,
        0,
        flags(5, false, false, Some(vec![tid[0].clone()])),
    )); // self: error
    all_in(&mut v, 1);
    v.push(R::pr_out(0, 3, 0, basic(5, 0).encode()));
    v.push(R::pr_in(1, 0, 8192));
    // REGISTER AND MOVE, right and wrong ports and keys.
    v.push(R::pr_out(0, 0, 0, basic(0, 1).encode()));
    v.push(R::pr_out(0, 1, 1, basic(1, 0).encode()));
    for (key, rtpi, dest) in [
        (7u64, 2u16, 1usize),
        (1, 0, 1),
        (1, 9, 1),
        (1, 1, 0),
        (1, 2, 1),
    ] {
        let p = RegisterMoveParams {
            key,
            sa_key: 0xb2,
            unreg: false,
            aptpl: false,
            relative_target_port: rtpi,
            transport_id: tid[dest].clone(),
        };
        v.push(R::pr_out(0, 7, 1, p.encode()));
        v.push(R::pr_in(1, 3, 8192));
    }
    // Malformed but deliverable: bad type, bad scope, short parameter list,
    // REPLACE LOST RESERVATION, unknown service actions, bytes in reserved fields.
    v.push(R::pr_out(1, 1, 2, basic(0xb2, 0).encode()));
    let mut bad_scope = R::pr_out(1, 1, 1, basic(0xb2, 0).encode());
    bad_scope.cdb[2] |= 0x20;
    v.push(bad_scope);
    v.push(R::pr_out(1, 0, 0, basic(0, 9).encode()[..20].to_vec()));
    v.push(R::pr_out(1, 0, 0, vec![]));
    v.push(R::pr_out(1, 8, 1, basic(0xb2, 0).encode()));
    v.push(R::pr_out(1, 0x1f, 0, basic(0xb2, 0).encode()));
    v.push(R::pr_in(1, 0x1f, 64));
    v.push(R::pr_in(1, 0x04, 64));
    let mut reserved = R::pr_in(0, 0, 64);
    reserved.cdb[3] = 0xff; // a reserved byte
    v.push(reserved);
    v.push(R::pr_out(1, 3, 0, basic(0xb2, 0).encode()));
    v.push(R::pr_in(0, 0, 8192));
    all_in(&mut v, 0);
    v
}

/// One random command; PREEMPT AND ABORT excluded (an accepted one can
/// deadlock LIO on this kernel).
fn random_request(rng: &mut Rng, tid: [&TransportId; 2]) -> Request {
    let who = rng.below(2) as usize;
    let keys = [0u64, 1, 2, 3];
    if rng.chance(40) {
        let action = if rng.chance(3) {
            rng.below(32) as u8
        } else {
            rng.below(4) as u8
        };
        let alloc = if rng.chance(50) {
            rng.below(65)
        } else {
            rng.below(8193)
        } as u16;
        return Request::pr_in(who, action, alloc);
    }
    let action = rng.pick(&[0u8, 0, 1, 1, 2, 3, 4, 6, 6, 7]);
    let pr_type = if rng.chance(5) {
        rng.below(16) as u8
    } else {
        rng.pick(&[1u8, 3, 5, 6, 7, 8])
    };
    let data = if action == 7 {
        RegisterMoveParams {
            key: rng.pick(&keys),
            sa_key: rng.pick(&keys),
            unreg: rng.chance(30),
            aptpl: false,
            relative_target_port: rng.below(4) as u16,
            transport_id: tid[rng.below(2) as usize].clone(),
        }
        .encode()
    } else {
        BasicParams {
            key: rng.pick(&keys),
            sa_key: rng.pick(&keys),
            aptpl: rng.chance(5),
            all_tg_pt: rng.chance(10),
            transport_ids: rng
                .chance(10)
                .then(|| vec![tid[rng.below(2) as usize].clone()]),
        }
        .encode()
    };
    Request::pr_out(who, action, pr_type, data)
}

pub fn differential_c_helper() -> Result<()> {
    let scratch = scratch_dir("differential")?;
    lio::setup_default_dbroot()?;
    let initiators = [lio::next_wwn(), lio::next_wwn()];
    let mut ours = Side::new(
        "prhelper",
        &prh::prhelper_bin(),
        &["-v"],
        &initiators,
        &scratch,
    )?;
    let mut theirs = Side::new("c", Path::new(C_HELPER), &[], &initiators, &scratch)?;
    for (i, (a, b)) in ours.targets.iter().zip(&theirs.targets).enumerate() {
        ensure!(a.initiator() == b.initiator(), "initiator {i} differs");
    }
    let tids = [prh::sas_tid(&initiators[0])?, prh::sas_tid(&initiators[1])?];
    let tid = [&tids[0], &tids[1]];

    let seed = seed_from_env()?;

    println!("  differential: random seed {seed} (replay with PRHELPER_LAB_SEED={seed})");

    let script = scripted(tid);
    let mut rng = Rng(seed);
    let random: Vec<Request> = (0..RANDOM_STEPS)
        .map(|_| random_request(&mut rng, tid))
        .collect();
    let n_script = script.len();
    let mut stats = std::collections::BTreeMap::<String, usize>::new();
    for (i, req) in script.iter().chain(&random).enumerate() {
        let phase = if i < n_script {
            format!("scripted step {i}")
        } else {
            format!("random step {} (seed {seed})", i - n_script)
        };
        let a = ours.exec(req);
        let b = theirs.exec(req);
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => bail!(
                "{phase}: {}: prhelper {:?}, C helper {:?}\n  prhelper log tail:\n{}",
                req.describe(),
                a.map(|r| outcome(&r)),
                b.map(|r| outcome(&r)),
                indent(&prhelper_lab::nested::tail(&ours.helper.log_text(), 20))
            ),
        };
        compare(req, &a, &b).map_err(|e| {
            format!(
                "{phase}: {e}\n  prhelper log tail:\n{}",
                indent(&prhelper_lab::nested::tail(&ours.helper.log_text(), 20))
            )
        })?;
        *stats.entry(outcome(&a)).or_default() += 1;
    }
    println!(
        "  differential: {} scripted + {RANDOM_STEPS} random commands identical; outcomes {stats:?}",
        n_script
    );
    ensure!(
        ours.helper.is_running(),
        "prhelper died:\n{}",
        ours.helper.log_text()
    );
    Ok(())
}
