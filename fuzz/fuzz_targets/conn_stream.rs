// SPDX-License-Identifier: MIT OR Apache-2.0
//! The per-connection state machine ([`prhelper::proto::Conn`]) fed an arbitrary stream of
//! socket reads, each with 0..=3 fds, always respecting `Conn::want()` as the daemon does.
//!
//! Input format (easy to write by hand, see fuzz/seeds/conn_stream/):
//!
//! ```text
//! byte 0          features the helper supports (Conn::new(u32::from(byte 0)))
//! then chunks:    [ctl] [len] [min(len, want) data bytes]
//!                 ctl & 3 = fds arriving with this read; len 0 = EOF
//! after each PR IN request: [status] [BE16 data length] = what the backend returned
//! ```
//! The end of the input is an EOF.
//!
//! Checked: no panic; `Conn` agrees step by step with an independent model of the protocol
//! (same `want()`, same errors, same requests); every request has exactly one fd, which
//! arrived while its own CDB was being read; opcode 0x5E/0x5F; PR IN allocation length
//! <= 8192; PR OUT parameter list length == BE16(cdb[7..9]) <= 8192; `want() == 0` after an
//! error and later feeds fail and drop their fds; no fd token is duplicated or lost (every
//! token is dropped exactly once); the reply built for each request never carries more than
//! the allocation length, nothing unless GOOD, and decodes on the client side.
#![no_main]

use std::cell::{Cell, RefCell};

use libfuzzer_sys::fuzz_target;
use prhelper::proto::conn::{Conn, ProtoError, RequestKind};
use prhelper::proto::wire::{Reply, ReplyHeader, MAX_DATA};
use prhelper::scsi::sense::{Sense, SenseCode};
use prhelper::scsi::Status;

thread_local! {
    static CREATED: Cell<u64> = const { Cell::new(0) };
    static DROPPED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A stand-in for a received fd: unique id, records its own drop.
#[derive(Debug)]
struct Tok(u64);

impl Tok {
    fn new() -> Tok {
        CREATED.with(|c| {
            let id = c.get();
            c.set(id + 1);
            Tok(id)
        })
    }
}

impl Drop for Tok {
    fn drop(&mut self) {
        DROPPED.with(|d| d.borrow_mut().push(self.0));
    }
}

/// Independent model of the protocol, written from docs/interop/pr-helper.rst.
enum Model {
    Features(Vec<u8>),
    Cdb {
        buf: Vec<u8>,
        fds: Vec<u64>,
    },
    Params {
        cdb: [u8; 16],
        fd: u64,
        len: usize,
        data: Vec<u8>,
    },
    Failed,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Nothing,
    Request {
        cdb: [u8; 16],
        fd: u64,
        kind: RequestKind,
    },
    Error(ProtoError),
}

impl Model {
    fn want(&self) -> usize {
        match self {
            Model::Features(b) => 4 - b.len(),
            Model::Cdb { buf, .. } => 16 - buf.len(),
            Model::Params { len, data, .. } => len - data.len(),
            Model::Failed => 0,
        }
    }

    fn is_idle(&self) -> bool {
        matches!(self, Model::Cdb { buf, fds } if buf.is_empty() && fds.is_empty())
    }

    fn feed(&mut self, supported: u32, bytes: &[u8], fds: &[u64]) -> Outcome {
        let out = self.step(supported, bytes, fds);
        if matches!(out, Outcome::Error(_)) {
            *self = Model::Failed;
        }
        out
    }

    fn step(&mut self, supported: u32, bytes: &[u8], fds: &[u64]) -> Outcome {
        let cdb_state = || Model::Cdb {
            buf: Vec::new(),
            fds: Vec::new(),
        };
        match self {
            Model::Failed => Outcome::Error(ProtoError::Truncated),
            Model::Features(b) => {
                b.extend_from_slice(bytes);
                if b.len() == 4 {
                    let requested = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    if requested & !supported != 0 {
                        return Outcome::Error(ProtoError::UnsupportedFeatures(requested));
                    }
                    *self = cdb_state();
                }
                Outcome::Nothing
            }
            Model::Cdb { buf, fds: have } => {
                have.extend_from_slice(fds);
                if have.len() > 1 {
                    return Outcome::Error(ProtoError::TooManyFds);
                }
                buf.extend_from_slice(bytes);
                if buf.len() < 16 {
                    return Outcome::Nothing;
                }
                let Some(&fd) = have.first() else {
                    return Outcome::Error(ProtoError::NoFd);
                };
                let cdb: [u8; 16] = buf[..].try_into().unwrap();
                let len = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
                *self = cdb_state();
                match cdb[0] {
                    0x5e | 0x5f if len > MAX_DATA => Outcome::Error(ProtoError::TooLong(len)),
                    0x5e => Outcome::Request {
                        cdb,
                        fd,
                        kind: RequestKind::PrIn {
                            alloc: alloc_len_of(len),
                        },
                    },
                    0x5f if len == 0 => Outcome::Request {
                        cdb,
                        fd,
                        kind: RequestKind::PrOut { params: vec![] },
                    },
                    0x5f => {
                        *self = Model::Params {
                            cdb,
                            fd,
                            len,
                            data: Vec::new(),
                        };
                        Outcome::Nothing
                    }
                    op => Outcome::Error(ProtoError::BadOpcode(op)),
                }
            }
            Model::Params { cdb, fd, len, data } => {
                if !fds.is_empty() {
                    return Outcome::Error(ProtoError::FdWithParameters);
                }
                data.extend_from_slice(bytes);
                if data.len() < *len {
                    return Outcome::Nothing;
                }
                let out = Outcome::Request {
                    cdb: *cdb,
                    fd: *fd,
                    kind: RequestKind::PrOut {
                        params: std::mem::take(data),
                    },
                };
                *self = cdb_state();
                out
            }
        }
    }
}

/// `AllocLen` can only be made by the request decoder: get one by decoding a PR IN CDB
/// (once per length and process: a `Conn` per PR IN request would be most of the work).
fn alloc_len_of(len: usize) -> prhelper::proto::AllocLen {
    thread_local! {
        static CACHE: RefCell<Vec<Option<prhelper::proto::AllocLen>>> =
            RefCell::new(vec![None; MAX_DATA + 1]);
    }
    CACHE.with(|c| {
        *c.borrow_mut()[len].get_or_insert_with(|| {
            let mut c: Conn<()> = Conn::new(0);
            c.feed(&[0; 4], vec![]).unwrap();
            let mut cdb = [0u8; 16];
            cdb[0] = 0x5e;
            cdb[7..9].copy_from_slice(&(len as u16).to_be_bytes());
            match c.feed(&cdb, vec![()]).unwrap().unwrap().kind {
                RequestKind::PrIn { alloc } => alloc,
                k => panic!("{k:?}"),
            }
        })
    })
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

static BACKEND_DATA: [u8; 65536] = [0xa5; 65536];

/// Build the reply the daemon would send for a request and check it from both sides.
fn check_reply(kind: &RequestKind, status: u8, claimed: usize) {
    let sense = Sense::fixed(SenseCode {
        key: status & 0x0f,
        asc: claimed as u8,
        ascq: (claimed >> 8) as u8,
    });
    let status = Status(status);
    match kind {
        RequestKind::PrIn { alloc } => {
            let r = Reply::pr_in(status, &sense, &BACKEND_DATA[..claimed], *alloc);
            let n = r.payload().len();
            assert!(
                n <= alloc.get() && n <= MAX_DATA,
                "payload {n} > alloc {alloc:?}"
            );
            if status != Status::GOOD {
                assert_eq!(n, 0, "payload with status {status:?}");
            } else {
                assert_eq!(n, claimed.min(alloc.get()));
            }
            let h = r.header();
            assert_eq!(&h[4..8], &(n as u32).to_be_bytes());
            let d = ReplyHeader::decode(&h, alloc.get()).expect("client rejects our reply");
            assert_eq!((d.status, d.size, &d.sense), (status, n, &sense));
        }
        RequestKind::PrOut { .. } => {
            let r = Reply::pr_out(status, &sense);
            assert!(r.payload().is_empty());
            let d = ReplyHeader::decode(&r.header(), 0).expect("client rejects our reply");
            assert_eq!((d.status, d.size), (status, 0));
        }
    }
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let supported = u32::from(input.byte().unwrap_or(0));
    let mut conn: Conn<Tok> = Conn::new(supported);
    let mut model = Model::Features(Vec::new());
    // Every token that reached a request, to check none shows up twice.
    let mut delivered: Vec<u64> = Vec::new();
    let mut requests = Vec::new();

    loop {
        assert_eq!(conn.want(), model.want());
        assert_eq!(conn.is_idle(), model.is_idle());
        if matches!(model, Model::Failed) {
            // Nothing more is accepted, and fds that still arrive are closed.
            let t = Tok::new();
            let id = t.0;
            assert_eq!(conn.feed(&[], vec![t]).unwrap_err(), ProtoError::Truncated);
            assert!(DROPPED.with(|d| d.borrow().contains(&id)));
            assert_eq!(conn.want(), 0);
            break;
        }
        let want = conn.want();
        assert!(want >= 1 && want <= MAX_DATA.max(16));
        let (Some(ctl), Some(len)) = (input.byte(), input.byte()) else {
            assert_eq!(conn.eof().is_ok(), model.is_idle());
            break;
        };
        let bytes = input.take(usize::from(len).min(want));
        if bytes.is_empty() {
            assert_eq!(conn.eof().is_ok(), model.is_idle());
            assert_eq!(conn.want(), 0);
            break;
        }
        let toks: Vec<Tok> = (0..ctl & 3).map(|_| Tok::new()).collect();
        let ids: Vec<u64> = toks.iter().map(|t| t.0).collect();
        let expect = model.feed(supported, bytes, &ids);
        let got = match conn.feed(bytes, toks) {
            Ok(None) => Outcome::Nothing,
            Err(e) => {
                assert_eq!(conn.want(), 0, "want() after {e}");
                Outcome::Error(e)
            }
            Ok(Some(req)) => {
                assert!(
                    !delivered.contains(&req.fd.0),
                    "token {} delivered twice",
                    req.fd.0
                );
                delivered.push(req.fd.0);
                let len = usize::from(u16::from_be_bytes([req.cdb[7], req.cdb[8]]));
                match &req.kind {
                    RequestKind::PrIn { alloc } => {
                        assert_eq!(req.cdb[0], 0x5e);
                        assert!(alloc.get() <= MAX_DATA);
                        assert_eq!(alloc.get(), len);
                    }
                    RequestKind::PrOut { params } => {
                        assert_eq!(req.cdb[0], 0x5f);
                        assert_eq!(params.len(), len);
                        assert!(params.len() <= MAX_DATA);
                    }
                }
                // Compared with the model here, without copying the parameter list.
                match &expect {
                    Outcome::Request { cdb, fd, kind } => {
                        assert_eq!((cdb, *fd, kind), (&req.cdb, req.fd.0, &req.kind));
                    }
                    e => panic!("got request {req:?}, model says {e:?}"),
                }
                // The backend's answer: status and how much data it claims to return.
                let status = input.byte().unwrap_or(0);
                let claimed = u16::from_be_bytes([
                    input.byte().unwrap_or(0xff),
                    input.byte().unwrap_or(0xff),
                ]);
                check_reply(&req.kind, status, usize::from(claimed));
                requests.push(req);
                continue;
            }
        };
        assert_eq!(got, expect);
    }

    // Every token created was dropped exactly once, or is still held by a request.
    drop(conn);
    let created = CREATED.with(Cell::get) as usize;
    // Per token: 1 if dropped, 2 if held by a request.
    let mut seen = vec![0u8; created];
    DROPPED.with(|d| {
        for &id in d.borrow().iter() {
            let s = &mut seen[id as usize];
            assert_eq!(*s, 0, "token {id} was dropped twice");
            *s = 1;
        }
    });
    for r in &requests {
        let s = &mut seen[r.fd.0 as usize];
        assert_eq!(*s, 0, "token {} of a request was closed", r.fd.0);
        *s = 2;
    }
    assert!(seen.iter().all(|&s| s != 0), "a token was lost");
    drop(requests);
    let dropped = DROPPED.with(|d| d.borrow().len());
    assert_eq!(dropped, created, "tokens leaked");
}

fuzz_target!(|data: &[u8]| {
    CREATED.with(|c| c.set(0));
    DROPPED.with(|d| d.borrow_mut().clear());
    run(data);
});
