// SPDX-License-Identifier: MIT OR Apache-2.0
//! `capture_fuzz_seeds` (hidden; `fuzz/capture-seeds` runs it): the fuzz targets' seed
//! corpora, recorded from real traffic against real LIO LUNs (issue 7).
//!
//! One scripted sequence runs three times, each on its own fresh LU reached by the same
//! three initiators (A and B over SAS TransportIDs, C over iSCSI), so that the device
//! answers alike: through prhelper, through Debian's C `qemu-pr-helper`, and straight
//! through SG_IO. It covers every PR IN service action at many allocation lengths, with no,
//! one and three registrations (ALL_TG_PT, SPEC_I_PT, APTPL, mixed TransportIDs), with and
//! without each reservation type; every PR OUT service action and type; the errors LIO
//! really answers (RESERVATION CONFLICT, CHECK CONDITIONs for bad fields, lengths, types
//! and TransportIDs, unit attentions after PREEMPT, CLEAR, RELEASE and a path coming back)
//! and a path gone offline (DID_TRANSPORT_DISRUPTED). Through the helpers it also sends
//! the malformed streams of the `abuse` case (no fd, two fds, wrong opcodes, oversize
//! lengths, fds on parameter bytes, disconnects), requests cut into pieces, and QEMU's
//! READ KEYS with a growing allocation length.
//!
//! Recorded, in each target's input format (see the top of each fuzz/fuzz_targets/*.rs):
//! - `conn_stream`: the bytes the client sent, as the reads the helper gets (one chunk
//!   per piece sent, at most 255 bytes, the fd count on the CDB's first piece), after
//!   each request the reply's status byte and data length; one seed per request (behind
//!   the handshake) and one per connection (cut at 12000 bytes, `fuzz/run`'s max_len);
//! - `cdb_and_params`: every CDB and parameter list sent, the TransportID lists sent and
//!   the TransportIDs LIO returned in READ FULL STATUS;
//! - `prin_payloads`: every PR IN payload received, whole and cut by the allocation length;
//! - `sense`: every reply header received (with its allocation length as the maximum size)
//!   and, from direct SG_IO, the device's status, data length, sense and SG_IO outcome laid
//!   out the same way, and the bare sense bytes.
//!
//! The VM cannot write to the project tree: the seeds go to the console, one line per 64
//! bytes: `@@SEED <target> <length> <fnv1a64> <part>/<parts> <hex>`; `fuzz/capture-seeds`
//! checks and reassembles them and names each file by its SHA-1, like a libFuzzer corpus.
//! `LAB_CAPTURE_TRACE=1` prints each step (stderr) as it runs.
//!
//! Two things LIO (kernel 6.1) does here: READ FULL STATUS with an allocation length that
//! cuts a descriptor writes the whole descriptor past it, into the caller's buffer (SG_IO
//! maps the user pages), so the direct SG_IO below leaves slack after its buffers and
//! reports such writes; and after this script, removing the LUN hangs in
//! `core_disable_device_list_for_node()`, so the LUs are left in place.

use prhelper::client::raw::RawConn;
use prhelper::scsi::prin::FullStatus;
use prhelper::scsi::prout::{BasicParams, RegisterMoveParams, TransportId};
use prhelper::sys::sgio::{self, Data};
use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::{self, Backstore, Target};
use prhelper_lab::prh::{self, open_rw, sas_tid, sense_len};
use prhelper_lab::util::{scratch_dir, wait_for};
use prhelper_lab::{ensure, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

const CONN: &str = "conn_stream";
const CDB: &str = "cdb_and_params";
const PRIN: &str = "prin_payloads";
const SENSE: &str = "sense";
const MPATH: &str = "multipath";

/// `fuzz/run`'s max_len for conn_stream: longer seeds would be cut.
const MAX_CONN_SEED: usize = 12000;

/// The initiators: A and B (SAS), C (iSCSI).
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const ISCSI_INITIATOR: &str = "iqn.1994-05.org.example.prhelper-lab:initiator-c";

/// Every seed, by target; a set, so duplicates collapse.
#[derive(Default)]
struct Seeds(BTreeSet<(&'static str, Vec<u8>)>);

impl Seeds {
    fn add(&mut self, target: &'static str, bytes: Vec<u8>) {
        if bytes.len() > 1 {
            self.0.insert((target, bytes));
        }
    }

    fn add_mode(&mut self, target: &'static str, mode: u8, bytes: &[u8]) {
        let mut b = vec![mode];
        b.extend_from_slice(bytes);
        self.add(target, b);
    }

    /// What every side records for a request and its outcome.
    fn request(&mut self, req: &Req, status: u8, data: &[u8]) {
        self.add_mode(CDB, 0, &req.cdb);
        if !req.params.is_empty() {
            self.add_mode(CDB, 0, &req.params);
            self.add_mode(CDB, 2, &req.params);
            if req.action() == 7 && req.params.len() > 24 {
                self.add_mode(CDB, 3, &req.params[24..]);
            } else if req.params.len() > 28 && req.params[20] & 0x08 != 0 {
                self.add_mode(CDB, 3, &req.params[28..]);
            }
        }
        if req.is_in() && status == 0 && !data.is_empty() {
            self.add_mode(PRIN, 0, data);
            if req.alloc == 8192 {
                self.add_mode(PRIN, 1, data);
            }
            if req.action() == 3 {
                if let Ok(fs) = FullStatus::decode(data) {
                    let mut all = Vec::new();
                    for d in &fs.descriptors {
                        self.add_mode(CDB, 3, &d.transport_id);
                        all.extend_from_slice(&d.transport_id);
                    }
                    self.add_mode(CDB, 3, &all);
                }
            }
        }
    }
}

fn chunk(out: &mut Vec<u8>, fds: u8, bytes: &[u8]) {
    for (i, piece) in bytes.chunks(255).enumerate() {
        out.push(if i == 0 { fds } else { 0 });
        out.push(piece.len() as u8);
        out.extend_from_slice(piece);
    }
}

/// One command from one initiator.
#[derive(Clone, Debug)]
struct Req {
    who: usize,
    cdb: [u8; 16],
    params: Vec<u8>,
    alloc: usize,
    /// Through a helper: CDB and parameters sent in small pieces.
    split: bool,
}

impl Req {
    fn pr_in(who: usize, action: u8, alloc: u16) -> Req {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5e;
        cdb[1] = action;
        cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
        Req {
            who,
            cdb,
            params: Vec::new(),
            alloc: usize::from(alloc),
            split: false,
        }
    }

    fn pr_out(who: usize, action: u8, pr_type: u8, params: Vec<u8>) -> Req {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5f;
        cdb[1] = action;
        cdb[2] = pr_type;
        cdb[5..9].copy_from_slice(&(params.len() as u32).to_be_bytes());
        Req {
            who,
            cdb,
            params,
            alloc: 0,
            split: false,
        }
    }

    fn split(mut self) -> Req {
        self.split = true;
        self
    }

    fn is_in(&self) -> bool {
        self.cdb[0] == 0x5e
    }

    fn action(&self) -> u8 {
        self.cdb[1] & 0x1f
    }
}

/// One step of the script.
enum Step {
    Do(Req),
    /// QEMU's READ KEYS: allocation length 8, then what the header says, then READ
    /// RESERVATION.
    Grow(usize),
    /// Take an initiator's path offline or back online.
    Online(usize, bool),
    /// Unrecorded, straight through SG_IO: every initiator REGISTER AND IGNORE, then
    /// CLEAR: no registrations, no reservation (and unit attentions for B and C).
    Reset,
    /// The start of a named part of the script: a failure names the part it is in.
    Phase(&'static str),
}

fn basic(key: u64, sa_key: u64) -> Vec<u8> {
    BasicParams {
        key,
        sa_key,
        ..Default::default()
    }
    .encode()
}

fn script(tids: &[TransportId; 3]) -> Vec<Step> {
    use Step::*;
    let r_in = |who, action, alloc| Do(Req::pr_in(who, action, alloc));
    let r_out = |who, action, ty, params| Do(Req::pr_out(who, action, ty, params));
    let all_in = |v: &mut Vec<Step>, who: usize, allocs: &[u16]| {
        for a in 0..4 {
            for &alloc in allocs {
                v.push(Do(Req::pr_in(who, a, alloc)));
            }
        }
    };
    let many = [0u16, 1, 7, 8, 9, 16, 24, 32, 40, 100, 8192];
    let (key_a, key_b, key_c) = (0xa1u64, 0xb2u64, 0xc3u64);
    let mut v = vec![Reset];

    // Nothing registered.
    v.push(Phase("nothing registered"));
    all_in(&mut v, A, &many);
    v.push(Grow(A));
    // Registrations, wrong keys.
    v.push(Phase("registrations, wrong keys"));
    v.push(r_out(A, 0, 0, basic(0, key_a)));
    v.push(r_out(B, 6, 0, basic(0x77, key_b)));
    v.push(r_out(C, 0, 0, basic(0, key_c)));
    v.push(r_out(A, 0, 0, basic(9, 3)));
    v.push(r_out(A, 0, 0, basic(key_a, key_a)));
    v.push(Do(Req::pr_in(B, 0, 8192).split()));
    all_in(&mut v, B, &many);
    v.push(Grow(B));
    // Every reservation type: conflicts, wrong type and key, release, unit attentions.
    v.push(Phase("every reservation type"));
    for t in [1u8, 3, 5, 6, 7, 8] {
        v.push(r_out(A, 1, t, basic(key_a, 0)));
        v.push(r_out(B, 1, t, basic(key_b, 0)));
        v.push(r_out(C, 1, t, basic(0x99, 0)));
        v.push(r_out(B, 2, t, basic(key_b, 0)));
        for alloc in [8, 16, 24, 8192] {
            v.push(r_in(C, 1, alloc));
        }
        v.push(r_in(B, 3, 8192));
        v.push(r_out(A, 2, if t == 1 { 3 } else { 1 }, basic(key_a, 0)));
        v.push(r_out(A, 2, t, basic(0x99, 0)));
        v.push(r_out(A, 2, t, basic(key_a, 0)));
        v.push(r_in(B, 0, 8192));
        v.push(r_in(C, 1, 8192));
    }
    // An unregistered initiator: RESERVE, REGISTER with a key, RELEASE.
    v.push(Phase("an unregistered initiator"));
    v.push(r_out(C, 0, 0, basic(key_c, 0)));
    v.push(r_out(C, 1, 1, basic(key_c, 0)));
    v.push(r_out(C, 0, 0, basic(0x55, 0x66)));
    v.push(r_out(C, 2, 1, basic(0, 0)));
    // PREEMPT (AND ABORT: rejections only, an accepted one can deadlock LIO).
    v.push(Phase("PREEMPT and PREEMPT AND ABORT"));
    v.push(r_out(A, 1, 1, basic(key_a, 0)));
    v.push(r_out(B, 4, 1, basic(7, key_a)));
    v.push(r_out(B, 5, 1, basic(7, key_a)));
    v.push(r_out(C, 5, 1, basic(7, 2)));
    v.push(r_out(B, 4, 1, basic(key_b, 0x1234)));
    v.push(r_out(B, 4, 3, basic(key_b, key_a)));
    v.push(r_in(A, 0, 8192));
    all_in(&mut v, A, &[8, 8192]);
    // CLEAR.
    v.push(Phase("CLEAR"));
    v.push(r_out(B, 3, 0, basic(7, 0)));
    v.push(r_out(B, 3, 0, basic(key_b, 0)));
    v.push(r_in(A, 0, 8192));
    v.push(r_in(B, 0, 8192));
    // APTPL, ALL_TG_PT.
    v.push(Phase("APTPL and ALL_TG_PT"));
    let flags = prh::register_flags;
    v.push(Reset);
    v.push(r_out(A, 0, 0, flags(key_a, true, false, None)));
    v.push(r_in(B, 2, 8192));
    v.push(r_out(B, 0, 0, flags(key_b, false, true, None)));
    v.push(r_out(C, 6, 0, flags(key_c, false, true, None)));
    v.push(r_out(A, 1, 5, basic(key_a, 0)));
    all_in(&mut v, C, &[8, 24, 32, 8192]);
    // SPEC_I_PT: A registers itself, B (SAS) and C (iSCSI).
    v.push(Phase("SPEC_I_PT"));
    v.push(Reset);
    v.push(Do(Req::pr_out(
        A,
        0,
        0,
        flags(
            5,
            false,
            false,
            Some(vec![tids[B].clone(), tids[C].clone()]),
        ),
    )
    .split()));
    all_in(&mut v, B, &[8, 24, 32, 48, 64, 100, 8192]);
    v.push(Grow(C));
    v.push(r_out(C, 1, 7, basic(5, 0)));
    all_in(&mut v, A, &[8, 8192]);
    v.push(Reset);
    // SPEC_I_PT errors: itself, an unknown initiator, while registered, with ALL_TG_PT.
    v.push(Phase("SPEC_I_PT errors"));
    let unknown = TransportId::Sas {
        address: 0x5001_4050_dead_beef,
    };
    v.push(r_out(
        A,
        0,
        0,
        flags(6, false, false, Some(vec![tids[A].clone()])),
    ));
    v.push(r_out(A, 0, 0, flags(6, false, false, Some(vec![unknown]))));
    v.push(r_out(
        A,
        0,
        0,
        flags(6, false, true, Some(vec![tids[C].clone()])),
    ));
    v.push(r_out(
        A,
        0,
        0,
        flags(7, false, false, Some(vec![tids[B].clone()])),
    ));
    v.push(r_in(C, 3, 8192));
    // REGISTER AND MOVE: wrong key, relative target ports, to itself, with UNREG, to C.
    v.push(Phase("REGISTER AND MOVE"));
    v.push(Reset);
    v.push(r_out(A, 0, 0, basic(0, 1)));
    v.push(r_out(A, 1, 1, basic(1, 0)));
    for (key, rtpi, dest, unreg) in [
        (7u64, 2u16, B, false),
        (1, 0, B, false),
        (1, 9, B, false),
        (1, 1, A, false),
        (1, 2, B, false),
        (1, 1, C, true),
    ] {
        let p = RegisterMoveParams {
            key,
            sa_key: 0xb2,
            unreg,
            aptpl: false,
            relative_target_port: rtpi,
            transport_id: tids[dest].clone(),
        };
        v.push(r_out(A, 7, 1, p.encode()));
        v.push(r_in(B, 3, 8192));
    }
    v.push(r_out(B, 0, 0, basic(0, 0xb2)));
    v.push(r_out(B, 1, 1, basic(0xb2, 0)));
    let p = RegisterMoveParams {
        key: 0xb2,
        sa_key: 0xc3,
        unreg: true,
        aptpl: false,
        relative_target_port: 1,
        transport_id: tids[C].clone(),
    };
    v.push(r_out(B, 7, 1, p.encode()));
    v.push(r_in(C, 3, 8192));
    v.push(r_in(C, 1, 8192));
    // Malformed but deliverable.
    v.push(Phase("malformed but deliverable"));
    v.push(r_out(C, 1, 2, basic(0xc3, 0)));
    let mut bad_scope = Req::pr_out(C, 1, 1, basic(0xc3, 0));
    bad_scope.cdb[2] |= 0x20;
    v.push(Do(bad_scope));
    v.push(r_out(C, 0, 0, basic(0, 9)[..20].to_vec()));
    v.push(r_out(C, 0, 0, vec![]));
    let mut big = basic(0, 9);
    big.resize(8192, 0);
    v.push(r_out(C, 0, 0, big));
    let mut bad_list = flags(9, false, false, Some(vec![tids[B].clone()]));
    bad_list[24..28].copy_from_slice(&1000u32.to_be_bytes());
    v.push(r_out(C, 0, 0, bad_list));
    let mut reserved_bits = basic(0xc3, 0);
    reserved_bits[20] = 0xf0;
    v.push(r_out(C, 2, 1, reserved_bits));
    v.push(r_out(C, 8, 1, basic(0xc3, 0)));
    v.push(r_out(C, 0x1f, 0, basic(0xc3, 0)));
    v.push(r_in(C, 0x1f, 64));
    v.push(r_in(C, 0x04, 64));
    let mut reserved = Req::pr_in(C, 0, 64);
    reserved.cdb[3] = 0xff;
    v.push(Do(reserved));
    // A path goes offline, comes back: unit attention, then the keys.
    v.push(Phase("a path offline and back"));
    v.push(Reset);
    v.push(r_out(A, 0, 0, basic(0, key_a)));
    v.push(r_out(B, 0, 0, basic(0, key_b)));
    v.push(Online(A, false));
    v.push(r_in(A, 0, 8192));
    v.push(r_out(A, 1, 1, basic(key_a, 0)));
    v.push(Online(A, true));
    v.push(r_in(A, 0, 8192));
    v.push(r_in(A, 0, 8192));
    v.push(Grow(A));
    v.push(Reset);
    v
}

/// What came back for one request.
struct Reply {
    status: u8,
    data: Vec<u8>,
}

/// A helper connection that records what it sends and receives.
struct Rec {
    conn: RawConn,
    /// The helper's features byte and the handshake, as the stream's start.
    prefix: Vec<u8>,
    session: Vec<u8>,
    requests: usize,
}

impl Rec {
    fn connect(sock: &Path, slow: bool) -> Result<Rec> {
        let mut conn = RawConn::connect(sock).map_err(|e| format!("connect: {e}"))?;
        let t = Some(Duration::from_secs(60));
        conn.set_timeouts(t, t).map_err(|e| e.to_string())?;
        let f = conn.read_features().map_err(|e| format!("features: {e}"))?;
        let mut prefix = vec![f as u8];
        if slow {
            for _ in 0..4 {
                conn.send_all(&[0]).map_err(|e| e.to_string())?;
                chunk(&mut prefix, 0, &[0]);
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            conn.write_features(0).map_err(|e| e.to_string())?;
            chunk(&mut prefix, 0, &[0; 4]);
        }
        Ok(Rec {
            conn,
            session: prefix.clone(),
            prefix,
            requests: 0,
        })
    }

    fn exec(&mut self, fd: BorrowedFd<'_>, req: &Req, seeds: &mut Seeds) -> Result<Reply> {
        let io = |e: std::io::Error| format!("{req:02x?}: {e}");
        let mut sent = Vec::new();
        if req.split {
            for (range, fds) in [(0..5, 0u8), (5..12, 1), (12..16, 0)] {
                let fds_now: &[BorrowedFd] = if fds == 1 { &[fd] } else { &[] };
                self.conn
                    .send_all_with_fds(&req.cdb[range.clone()], fds_now)
                    .map_err(io)?;
                chunk(&mut sent, fds, &req.cdb[range]);
                std::thread::sleep(Duration::from_millis(2));
            }
            for piece in req.params.chunks(7) {
                self.conn.send_all(piece).map_err(io)?;
                chunk(&mut sent, 0, piece);
            }
        } else {
            self.conn.send_all_with_fds(&req.cdb, &[fd]).map_err(io)?;
            chunk(&mut sent, 1, &req.cdb);
            self.conn.send_all(&req.params).map_err(io)?;
            chunk(&mut sent, 0, &req.params);
        }
        let h = self.conn.read_header_raw().map_err(io)?;
        let size = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        ensure!(size <= 8192, "{req:02x?}: reply size {size}");
        let mut data = vec![0u8; size];
        self.conn.read_exact(&mut data).map_err(io)?;
        let status = h[3];
        sent.push(status);
        sent.extend_from_slice(&(size as u16).to_be_bytes());

        let mut one = self.prefix.clone();
        one.extend_from_slice(&sent);
        seeds.add(CONN, one);
        if self.session.len() + sent.len() > MAX_CONN_SEED {
            self.flush(seeds);
        }
        self.session.extend_from_slice(&sent);
        self.requests += 1;

        let mut s = h.to_vec();
        s.extend_from_slice(&(req.alloc as u64).to_be_bytes());
        seeds.add(SENSE, s);
        seeds.request(req, status, &data);
        Ok(Reply { status, data })
    }

    fn flush(&mut self, seeds: &mut Seeds) {
        if self.requests > 1 {
            seeds.add(CONN, std::mem::take(&mut self.session));
        }
        self.session = self.prefix.clone();
        self.requests = 0;
    }
}

/// One run of the script: through a helper (`helper` is Some) or straight through SG_IO.
struct Side {
    name: &'static str,
    // Drop order: connections, helper, fds, targets, backstore.
    recs: Vec<Option<Rec>>,
    helper: Option<Helper>,
    fds: Vec<File>,
    targets: Vec<Target>,
    _backstore: Backstore,
}

impl Side {
    fn new(
        name: &'static str,
        helper_bin: Option<&Path>,
        initiators: &[String; 3],
        scratch: &Path,
    ) -> Result<Side> {
        let backstore = Backstore::fileio(&format!("capture-{name}"), 64 << 20)?;
        let mut targets = Vec::new();
        for ini in initiators {
            let wwn = if ini.starts_with("iqn.") {
                format!("iqn.2003-01.org.example.prhelper-lab:capture-{name}")
            } else {
                lio::next_wwn()
            };
            targets.push(Target::loopback(&wwn, ini, &backstore)?);
        }
        let fds = targets
            .iter()
            .map(|t| {
                // The disk node can exist a moment before sd has attached it (ENXIO).
                wait_for("the disk to open", Duration::from_secs(10), || {
                    Ok(open_rw(&t.device().disk).ok())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let helper = match helper_bin {
            Some(bin) if bin == prh::prhelper_bin() => Some(prh::start_prhelper(
                &scratch.join(format!("{name}.sock")),
                &[],
            )?),
            Some(bin) => Some(Helper::start(
                bin,
                &scratch.join(format!("{name}.sock")),
                &[],
            )?),
            None => None,
        };
        Ok(Side {
            name,
            recs: (0..3).map(|_| None).collect(),
            helper,
            fds,
            targets,
            _backstore: backstore,
        })
    }

    fn exec(&mut self, req: &Req, seeds: &mut Seeds) -> Result<Reply> {
        let fd = self.fds[req.who].as_fd();
        let Some(helper) = &self.helper else {
            return Ok(direct(fd, req, Some(seeds)));
        };
        let rec = match &mut self.recs[req.who] {
            Some(r) => r,
            slot => slot.insert(Rec::connect(helper.socket(), req.who == C)?),
        };
        match rec.exec(fd, req, seeds) {
            Ok(r) => Ok(r),
            Err(e) => {
                // Record what the connection carried and go on with a new one.
                println!("  capture: {}: {e}", self.name);
                if let Some(mut r) = self.recs[req.who].take() {
                    r.flush(seeds);
                }
                Ok(Reply {
                    status: 0xff,
                    data: Vec::new(),
                })
            }
        }
    }

    fn run(&mut self, steps: &[Step], seeds: &mut Seeds) -> Result<BTreeMap<String, usize>> {
        let mut stats = BTreeMap::new();
        let mut count = |r: &Reply| *stats.entry(format!("{:02x}", r.status)).or_insert(0) += 1;
        let trace = std::env::var_os("LAB_CAPTURE_TRACE").is_some();
        let mut phase = "set-up";
        for (i, step) in steps.iter().enumerate() {
            if trace {
                match step {
                    Step::Do(r) => eprintln!("  capture: {} step {i}: {r:02x?}", self.name),
                    _ => eprintln!("  capture: {} step {i}", self.name),
                }
            }
            if let Step::Phase(name) = step {
                phase = name;
                continue;
            }
            let done = (|| -> Result<()> {
                match step {
                    Step::Phase(_) => {}
                    Step::Do(req) => count(&self.exec(req, seeds)?),
                    Step::Grow(who) => {
                        let r = self.exec(&Req::pr_in(*who, 0, 8), seeds)?;
                        count(&r);
                        if r.status == 0 && r.data.len() >= 8 {
                            let n = 8 + u32::from_be_bytes(r.data[4..8].try_into().unwrap());
                            let alloc = n.min(8192) as u16;
                            count(&self.exec(&Req::pr_in(*who, 0, alloc), seeds)?);
                        }
                        count(&self.exec(&Req::pr_in(*who, 1, 24), seeds)?);
                    }
                    Step::Online(who, on) => self.targets[*who].set_online(*on)?,
                    Step::Reset => reset(&self.fds)?,
                }
                Ok(())
            })();
            done.map_err(|e| format!("{}: step \"{phase}\" (script entry {i}): {e}", self.name))?;
        }
        for r in self.recs.iter_mut().filter_map(Option::take) {
            let mut r = r;
            r.flush(seeds);
        }
        Ok(stats)
    }
}

/// One command through SG_IO; records what the device said when `seeds` is given.
fn direct(fd: BorrowedFd<'_>, req: &Req, seeds: Option<&mut Seeds>) -> Reply {
    let mut sense = [0u8; 96];
    // Slack past the allocation length: LIO's READ FULL STATUS writes past it (into the
    // caller's pages: SG_IO maps them directly), which corrupted the heap here.
    const SLACK: usize = 4096;
    let mut buf = vec![0xa5u8; req.alloc + SLACK];
    let data = if req.is_in() && req.alloc > 0 {
        Data::FromDevice(&mut buf[..req.alloc])
    } else if !req.is_in() && !req.params.is_empty() {
        Data::ToDevice(&req.params)
    } else {
        Data::None
    };
    let res = sgio::sg_io(fd, &req.cdb, data, &mut sense, 30_000);
    let o = res.outcome;
    if let Some(n) = buf[req.alloc..].iter().rposition(|&b| b != 0xa5) {
        println!(
            "  capture: the device wrote {} bytes past the allocation length: {req:02x?}",
            n + 1
        );
    }
    let good = o.errno.is_none() && o.status == 0 && o.host_status == 0;
    buf.truncate(if good && req.is_in() {
        res.transferred
    } else {
        0
    });
    if let Some(seeds) = seeds {
        // The sense target's layout: status, size, sense; maximum size; SG_IO outcome.
        let mut s = Vec::new();
        s.extend_from_slice(&i32::from(o.status).to_be_bytes());
        s.extend_from_slice(&(buf.len() as u32).to_be_bytes());
        s.extend_from_slice(&sense);
        s.extend_from_slice(&(req.alloc as u64).to_be_bytes());
        s.push(u8::from(o.errno.is_some()));
        s.extend_from_slice(&o.errno.unwrap_or(0).to_be_bytes());
        s.push(o.status);
        s.extend_from_slice(&o.host_status.to_be_bytes());
        s.extend_from_slice(&o.driver_status.to_be_bytes());
        seeds.add(SENSE, s);
        let n = sense_len(&sense);
        if n > 0 {
            seeds.add(SENSE, sense[..n].to_vec());
        }
        seeds.request(req, if good { 0 } else { o.status.max(1) }, &buf);
    }
    Reply {
        status: o.status,
        data: buf,
    }
}

/// Every initiator REGISTER AND IGNORE (retried past unit attentions, and with ALL_TG_PT
/// for a registration made with it), then CLEAR.
fn reset(fds: &[File]) -> Result<()> {
    const KEY: u64 = 0x5e7;
    let run = |who: usize, params: &dyn Fn(bool) -> Vec<u8>, action: u8| -> Result<()> {
        for attempt in 0..6 {
            let req = Req::pr_out(who, action, 0, params(attempt % 2 == 1));
            if direct(fds[who].as_fd(), &req, None).status == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "reset: service action {action} from initiator {who} keeps failing"
        ))
    };
    for who in [A, B, C] {
        let params = |all_tg_pt| {
            BasicParams {
                sa_key: KEY,
                all_tg_pt,
                ..Default::default()
            }
            .encode()
        };
        run(who, &params, 6)?;
    }
    run(A, &|_| basic(KEY, 0), 3)
}

/// A malformed stream: its name, the pieces sent (fd count, bytes), and whether to wait
/// for the helper to close the connection.
type Malformed = (&'static str, Vec<(u8, Vec<u8>)>, bool);

fn malformed() -> Vec<Malformed> {
    let mut read_keys = [0u8; 16];
    read_keys[..10].copy_from_slice(&prhelper::scsi::cdb::pr_in(
        prhelper::scsi::cdb::PrInAction::ReadKeys,
        8192,
    ));
    let mut register24 = [0u8; 16];
    register24[..10].copy_from_slice(&prhelper::scsi::cdb::pr_out(
        prhelper::scsi::cdb::PrOutAction::Register,
        0,
        0,
        24,
    ));
    let with_alloc = |cdb: [u8; 16], len: u16| {
        let mut c = cdb;
        c[7..9].copy_from_slice(&len.to_be_bytes());
        c.to_vec()
    };
    let hs = (0u8, vec![0u8; 4]);
    let mut inquiry = vec![0u8; 16];
    inquiry[..6].copy_from_slice(&[0x12, 0, 0, 0, 96, 0]);
    vec![
        ("no fd", vec![hs.clone(), (0, read_keys.to_vec())], true),
        ("two fds", vec![hs.clone(), (2, read_keys.to_vec())], true),
        (
            "fd twice",
            vec![
                hs.clone(),
                (1, read_keys[..4].to_vec()),
                (1, read_keys[4..].to_vec()),
            ],
            true,
        ),
        ("INQUIRY", vec![hs.clone(), (1, inquiry)], true),
        ("TEST UNIT READY", vec![hs.clone(), (1, vec![0; 16])], true),
        (
            "alloc 8193",
            vec![hs.clone(), (1, with_alloc(read_keys, 8193))],
            true,
        ),
        (
            "alloc 65535",
            vec![hs.clone(), (1, with_alloc(read_keys, 0xffff))],
            true,
        ),
        (
            "parameter list 8193",
            vec![
                hs.clone(),
                (1, with_alloc(register24, 8193)),
                (0, vec![0; 64]),
            ],
            true,
        ),
        (
            "fd on the parameters",
            vec![hs.clone(), (1, register24.to_vec()), (1, vec![0; 24])],
            true,
        ),
        ("features 1", vec![(0, 1u32.to_be_bytes().to_vec())], true),
        ("features ~0", vec![(0, vec![0xff; 4])], true),
        ("close before the handshake", vec![], false),
        ("close mid-handshake", vec![(0, vec![0, 0])], false),
        ("close when idle", vec![hs.clone()], false),
        (
            "close mid-CDB",
            vec![hs.clone(), (1, read_keys[..5].to_vec())],
            false,
        ),
        (
            "close mid-parameters",
            vec![hs.clone(), (1, register24.to_vec()), (0, vec![0; 10])],
            false,
        ),
        (
            "close before the reply",
            vec![hs, (1, read_keys.to_vec())],
            false,
        ),
    ]
}

fn send_malformed(sock: &Path, fd: BorrowedFd<'_>, seeds: &mut Seeds) -> Result<()> {
    for (what, pieces, wait) in malformed() {
        let mut c = RawConn::connect(sock).map_err(|e| format!("{what}: connect: {e}"))?;
        let f = c
            .read_features()
            .map_err(|e| format!("{what}: features: {e}"))?;
        let mut stream = vec![f as u8];
        for (fds, bytes) in &pieces {
            let fds_now = vec![fd; usize::from(*fds)];
            // The helper may already have closed: what was meant to be sent is the seed.
            let _ = c.send_all_with_fds(bytes, &fds_now);
            chunk(&mut stream, *fds, bytes);
        }
        if wait {
            let _ = c.wait_closed(Duration::from_secs(2));
        }
        seeds.add(CONN, stream);
    }
    Ok(())
}

/// Print the seeds for `fuzz/capture-seeds`.
fn emit(seeds: &Seeds) {
    let out = std::io::stdout();
    let mut out = out.lock();
    for (target, bytes) in &seeds.0 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let parts = bytes.chunks(64).count();
        for (i, part) in bytes.chunks(64).enumerate() {
            let hex: String = part.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(
                out,
                "@@SEED {target} {} {h:016x} {}/{parts} {hex}",
                bytes.len(),
                i + 1
            );
        }
    }
    let _ = out.flush();
}

pub fn capture_fuzz_seeds() -> Result<()> {
    let scratch = scratch_dir("capture")?;
    lio::setup_default_dbroot()?;
    let initiators = [
        lio::next_wwn(),
        lio::next_wwn(),
        ISCSI_INITIATOR.to_string(),
    ];
    let tids = [
        sas_tid(&initiators[0])?,
        sas_tid(&initiators[1])?,
        TransportId::Iscsi {
            name: ISCSI_INITIATOR.into(),
        },
    ];
    let steps = script(&tids);
    let mut seeds = Seeds::default();
    // First, on LUs of their own (the script below leaves its LUs unremovable).
    capture_multipath(&mut seeds)?;
    let c_helper = Path::new(C_HELPER);
    let ours = prh::prhelper_bin();
    for (name, bin) in [
        ("prhelper", Some(ours.as_path())),
        ("c-helper", Some(c_helper)),
        ("direct", None),
    ] {
        let mut side = Side::new(name, bin, &initiators, &scratch)?;
        let stats = side.run(&steps, &mut seeds)?;
        if let Some(h) = &side.helper {
            send_malformed(h.socket(), side.fds[A].as_fd(), &mut seeds)?;
            // The slow handshake, on a connection of its own.
            let mut r = Rec::connect(h.socket(), true)?;
            r.exec(side.fds[A].as_fd(), &Req::pr_in(A, 2, 8192), &mut seeds)?;
            r.exec(side.fds[A].as_fd(), &Req::pr_in(A, 0, 8192), &mut seeds)?;
            r.flush(&mut seeds);
        }
        if let Some(h) = &mut side.helper {
            ensure!(h.is_running(), "{name} died:\n{}", h.log_text());
        }
        println!(
            "  capture: {name}: {} steps, statuses {stats:?}",
            steps.len()
        );
        // Leave the LU in place: on this kernel, removing its LUN after the script hangs
        // for good in core_disable_device_list_for_node() (a reference some failing PR OUT
        // path leaves behind), and the VM is thrown away after the run anyway.
        let Side {
            recs,
            helper,
            fds,
            targets,
            _backstore,
            ..
        } = side;
        drop((recs, helper, fds));
        std::mem::forget(targets);
        std::mem::forget(_backstore);
    }
    let mut counts = BTreeMap::<&str, (usize, usize)>::new();
    for (t, b) in &seeds.0 {
        let e = counts.entry(t).or_default();
        e.0 += 1;
        e.1 += b.len();
    }
    for t in [CONN, CDB, PRIN, SENSE, MPATH] {
        ensure!(counts.contains_key(t), "no {t} seeds captured");
    }
    println!("  capture: seeds (count, bytes) per target: {counts:?}");
    emit(&seeds);
    Ok(())
}

/// `multipath` seeds: dm-multipath status lines from the kernel (a dmsetup map with its
/// paths active and failed; multipathd's own map) and multipathd's replies to the PR
/// commands prhelper sends, each framed as on its socket (native size_t length with the
/// NUL, then the text).
fn capture_multipath(seeds: &mut Seeds) -> Result<()> {
    use prhelper_lab::mpath::{self, Map, Multipathd};
    let lun = mpath::shared_lun("cap-mp", 16 << 20, 2)?;
    {
        let map = Map::create("cap-mp", &lun, &[0, 1])?;
        let status = |seeds: &mut Seeds| -> Result<()> {
            // "start length multipath PARAMS": the params are what prhelper parses.
            let line = map.status()?;
            let params = line.splitn(4, ' ').nth(3).unwrap_or(&line).to_string();
            seeds.add(MPATH, params.into_bytes());
            Ok(())
        };
        status(seeds)?;
        map.fail_path(0)?;
        status(seeds)?;
        map.fail_path(1)?;
        status(seeds)?;
        map.reinstate_path(0)?;
        map.reinstate_path(1)?;
        let line = map.table()?;
        seeds.add(
            MPATH,
            line.splitn(4, ' ')
                .nth(3)
                .unwrap_or(&line)
                .as_bytes()
                .to_vec(),
        );
    }
    let mpd = Multipathd::start(&lun, &[0, 1])?;
    let st = prhelper_lab::util::run_ok("dmsetup", &["status", mpd.alias()])?.stdout;
    let line = st.trim();
    // `dmsetup status NAME` prints "start length multipath ..."; the params are the seed.
    let params = line.splitn(4, ' ').nth(3).unwrap_or(line);
    seeds.add(MPATH, params.as_bytes().to_vec());
    let w = mpd.wwid().to_string();
    for cmd in [
        format!("setprkey map {w} key 0xabc"),
        format!("getprkey map {w}"),
        format!("setprkey map {w} key 0xabc:aptpl"),
        format!("getprkey map {w}"),
        format!("setprstatus map {w}"),
        format!("getprstatus map {w}"),
        format!("unsetprstatus map {w}"),
        format!("getprstatus map {w}"),
        format!("getprhold map {w}"),
        format!("unsetprkey map {w}"),
        format!("getprkey map {w}"),
        "getprkey map 254:99".to_string(),
        "no such command".to_string(),
    ] {
        let reply = mpd.socket_cmd(&cmd)?;
        let mut framed = (reply.len() + 1).to_ne_bytes().to_vec();
        framed.extend_from_slice(reply.as_bytes());
        framed.push(0);
        seeds.add(MPATH, framed);
        seeds.add(MPATH, reply.into_bytes());
    }
    println!("  capture: multipath: status lines and multipathd replies recorded");
    drop(mpd);
    Ok(())
}
