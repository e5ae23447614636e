// SPDX-License-Identifier: MIT OR Apache-2.0
//! The request path: accepting connections, reading requests, running them on the
//! backend and writing replies.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, error, warn};

use super::pool::{Scratch, WorkerSlot};
use super::sessions::{Peer, Pending, Session, Slot};
use super::{rate_limited_warn, Next, Shared, ACCEPT_FAILED, FIRST_SESSION, LISTENER, TOO_MANY};
use crate::daemon::handler;
use crate::proto::wire::SUPPORTED_FEATURES;
use crate::proto::{Conn, ProtoError, Reply, Request, RequestKind};
use crate::scsi::cdb::CdbSummary;
use crate::sys::fdpass;

pub(super) fn accept_all(shared: &Arc<Shared>) {
    let guard = shared.listener.lock().unwrap_or_else(|e| e.into_inner());
    let Some(listener) = guard.as_ref() else {
        return;
    };
    let mut backoff = false;
    for _ in 0..256 {
        match listener.accept() {
            Ok((stream, _)) => add_session(shared, stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => {
                continue
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS/ENOMEM: the pending connection stays queued.
                // Pause instead of spinning on a listener that stays readable.
                rate_limited_warn(
                    &ACCEPT_FAILED,
                    &format!("accept failed: {e}; retrying in 100 ms"),
                );
                backoff = true;
                break;
            }
        }
    }
    if backoff {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !shared.stopping.load(Ordering::SeqCst) {
        let mut ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, LISTENER);
        if let Err(e) = shared.epoll.modify(listener, &mut ev) {
            error!("cannot re-arm the listening socket: {e}");
        }
    }
}

/// Log a client's protocol violation. A hostile client can cause thousands per second,
/// and a log write can block (a full stderr pipe, a slow journal): at most
/// [`CLIENT_ERRORS_PER_SEC`] are logged at warning level each second, with a count of
/// the rest; all of them at debug level.
pub(super) fn client_error(s: &Session, e: &ProtoError) {
    static WINDOW: Mutex<(Option<Instant>, u32, u32)> = Mutex::new((None, 0, 0));
    let (pid, uid) = s.peer.map_or((-1, u32::MAX), |p| (p.pid, p.uid));
    let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if w.0
        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
    {
        let suppressed = w.2;
        *w = (Some(now), 0, 0);
        if suppressed > 0 {
            warn!("{suppressed} more client protocol errors in the last second (see debug log)");
        }
    }
    if w.1 < CLIENT_ERRORS_PER_SEC {
        w.1 += 1;
        drop(w);
        warn!("closing connection: {e}");
    } else {
        w.2 += 1;
        drop(w);
        debug!(pid, uid, "closing connection: {e}");
    }
}

/// Protocol errors logged at warning level per second.
pub(super) const CLIENT_ERRORS_PER_SEC: u32 = 5;

pub(super) fn add_session(shared: &Arc<Shared>, stream: UnixStream) {
    if let Err(e) = stream.set_nonblocking(true) {
        debug!("dropping new connection: {e}");
        return;
    }
    // The helper speaks first: its supported-features word. A fresh socket always has
    // room for 4 bytes; failure means the client is already gone.
    if let Err(e) = (&stream).write_all(&SUPPORTED_FEATURES.to_be_bytes()) {
        debug!("dropping new connection: {e}");
        return;
    }
    let peer = if tracing::enabled!(tracing::Level::DEBUG) {
        getsockopt(&stream, PeerCredentials).ok().map(|c| Peer {
            pid: c.pid(),
            uid: c.uid(),
        })
    } else {
        None
    };
    let session = Box::new(Session {
        stream,
        conn: Conn::new(SUPPORTED_FEATURES),
        peer,
        pending: None,
        out: false,
    });
    let Some(i) = shared.sessions.alloc() else {
        rate_limited_warn(&TOO_MANY, "dropping new connection: too many connections");
        return;
    };
    let Some(mut slot) = shared.sessions.slot(i) else {
        shared.sessions.release(i);
        return;
    };
    // Registered with the slot locked: a worker that gets the first event at once
    // waits for the session to be in place.
    if let Err(e) = shared.epoll.add(&session.stream, session_event(false, i)) {
        warn!("cannot watch new connection: {e}");
        drop(slot);
        shared.sessions.release(i);
        return;
    }
    if let Some(p) = session.peer {
        debug!(pid = p.pid, uid = p.uid, "client connected");
    }
    *slot = Slot::Idle(session);
}

/// Requests served on one connection in a row before it goes back to the event loop
/// (a client that pipelines requests cannot keep a worker to itself).
pub(super) const IN_A_ROW: usize = 8;

/// Registration of a connection: edge-triggered, for input, or for output while a reply
/// waits for room in the socket buffer.
pub(super) fn session_event(out: bool, i: usize) -> EpollEvent {
    let dir = if out {
        EpollFlags::EPOLLOUT
    } else {
        EpollFlags::EPOLLIN
    };
    EpollEvent::new(dir | EpollFlags::EPOLLET, i as u64 + FIRST_SESSION)
}

/// Serve connection `i` after an event for it.
///
/// Connections are registered edge-triggered, not one-shot, so that serving a request
/// costs no `epoll_ctl` to re-arm: the worker reads until the socket is empty (`EAGAIN`)
/// and then simply puts the session back. An edge that arrives while a worker holds the
/// session (the slot is `Busy`) is not lost: whoever gets it sets `again`, and the
/// holder, before giving the session back, sees it and reads again. The slot's lock
/// orders the two: either the event's worker finds the session idle and takes it, or
/// the holder finds `again` set.
pub(super) fn serve(shared: &Arc<Shared>, i: usize, scratch: &mut Scratch) {
    let Some(mut session) = claim(shared, i) else {
        return;
    };
    // SeqCst: `Server::wait` must see this before this worker can see `stopping` unset.
    scratch.slot.holding.store(true, Ordering::SeqCst);
    // A reply still being flushed counts as in flight.
    let mut counted = session.pending.is_some();
    loop {
        let next = match session.pending {
            Some(_) => match flush(&mut session) {
                // Flushed: input was not watched meanwhile, read what came.
                Next::Idle if session.pending.is_none() => {
                    read_and_execute(shared, &mut session, scratch)
                }
                n => n,
            },
            None => read_and_execute(shared, &mut session, scratch),
        };
        let pending = session.pending.is_some();
        if pending != counted {
            if pending {
                shared.pending_replies.fetch_add(1, Ordering::SeqCst);
            } else {
                shared.pending_replies.fetch_sub(1, Ordering::SeqCst);
            }
            counted = pending;
        }
        match give_back(shared, i, session, next) {
            Some(s) => session = s,
            None => break,
        }
    }
    scratch.slot.holding.store(false, Ordering::Release);
}

/// Take connection `i` for serving, after an event for it. If a worker holds it
/// already, tell that worker to read again instead.
pub(super) fn claim(shared: &Shared, i: usize) -> Option<Box<Session>> {
    match shared.sessions.slot(i).as_deref_mut() {
        Some(slot @ Slot::Idle(_)) => slot.take(),
        Some(Slot::Busy { again }) => {
            *again = true;
            None
        }
        _ => None,
    }
}

/// Give connection `i` back after serving it (or close it). Returns the session if an
/// event came meanwhile: the caller must serve it again.
pub(super) fn give_back(
    shared: &Shared,
    i: usize,
    mut session: Box<Session>,
    mut next: Next,
) -> Option<Box<Session>> {
    let mut slot = shared.sessions.slot(i).expect("a held session has a slot");
    if matches!(next, Next::Idle) {
        if let Slot::Busy { again: true } = *slot {
            // More to read (or, with a reply pending, perhaps room to write).
            *slot = Slot::Busy { again: false };
            return Some(session);
        }
    }
    let out = session.pending.is_some();
    if !matches!(next, Next::Close) && (matches!(next, Next::Yield) || out != session.out) {
        // Watch the other direction, or (after `IN_A_ROW` requests) make sure a worker
        // gets an event if more is queued: a modification polls the socket and queues
        // an event if it is ready. The slot is still locked (`Busy`), so such an event
        // waits for the session to be back, or sets `again`.
        session.out = out;
        if let Err(e) = shared
            .epoll
            .modify(&session.stream, &mut session_event(out, i))
        {
            warn!("cannot re-arm connection: {e}");
            next = Next::Close;
        }
    }
    if matches!(next, Next::Close) {
        let _ = shared.epoll.delete(&session.stream);
        if session.pending.is_some() {
            // No longer in flight.
            shared.pending_replies.fetch_sub(1, Ordering::SeqCst);
        }
        drop(session);
        *slot = Slot::Free;
        drop(slot);
        shared.sessions.release(i);
    } else {
        *slot = Slot::Idle(session);
    }
    None
}

/// Read and run requests until the socket is empty, the reply does not fit, or
/// [`IN_A_ROW`] requests were served.
pub(super) fn read_and_execute(shared: &Shared, s: &mut Session, scratch: &mut Scratch) -> Next {
    let mut served = 0;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            // After a stop request no new command is read (as qemu-pr-helper).
            return Next::Close;
        }
        let want = s.conn.want();
        let r = match fdpass::recv_with_fd_pair(s.stream.as_fd(), &mut scratch.read[..want], true) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Idle,
            Err(e) => {
                debug!("connection error: {e}");
                return Next::Close;
            }
        };
        if r.len == 0 {
            if let Err(e) = s.conn.eof() {
                client_error(s, &e);
            }
            return Next::Close;
        }
        if r.truncated {
            drop(r.fds);
            client_error(s, &ProtoError::TooManyFds);
            return Next::Close;
        }
        match s.conn.feed(&scratch.read[..r.len], r.fds) {
            Ok(None) => continue,
            Ok(Some(req)) => {
                if !execute(shared, s, req, &mut scratch.data, &scratch.slot) {
                    return Next::Close;
                }
                if s.pending.is_some() {
                    return Next::Idle;
                }
                served += 1;
                if served == IN_A_ROW {
                    return Next::Yield;
                }
            }
            Err(e) => {
                client_error(s, &e);
                return Next::Close;
            }
        }
    }
}

/// Run `req` and send the reply (what does not fit waits in `s.pending`). False: the
/// client is gone.
pub(super) fn execute(
    shared: &Shared,
    s: &mut Session,
    req: Request<OwnedFd>,
    data: &mut [u8],
    slot: &WorkerSlot,
) -> bool {
    let start = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
    slot.busy_since
        .store(shared.tick.load(Ordering::Relaxed), Ordering::Release);
    let peer = || {
        s.peer.map(|p| (p.pid, p.uid)).or_else(|| {
            getsockopt(&s.stream, PeerCredentials)
                .ok()
                .map(|c| (c.pid(), c.uid()))
        })
    };
    let outcome = handler::execute(shared.backend.as_ref(), &req, data, &peer);
    slot.busy_since.store(0, Ordering::Release);
    let reply = match &req.kind {
        RequestKind::PrIn { alloc } => {
            Reply::pr_in(outcome.status, &outcome.sense, &data[..outcome.len], *alloc)
        }
        RequestKind::PrOut { .. } => Reply::pr_out(outcome.status, &outcome.sense),
    };
    // Only this worker writes its count: no read-modify-write needed.
    slot.commands
        .store(slot.commands.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if let Some(start) = start {
        log_command(s, &req, &reply, start.elapsed());
    }
    // Close the device fd before replying: the client may reuse the number at once.
    let Request { fd, .. } = req;
    drop(fd);
    let header = reply.header();
    let parts = [&header[..], reply.payload()];
    let total = header.len() + reply.payload().len();
    let sent = match fdpass::send_parts(s.stream.as_fd(), parts) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => {
            debug!("client left before its reply: {e}");
            return false;
        }
    };
    if sent < total {
        // The socket buffer is full: keep the reply and finish it when writable.
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(reply.payload());
        s.pending = Some(Pending {
            bytes: bytes.into_boxed_slice(),
            sent,
        });
    }
    true
}

/// Send what is left of a pending reply. `Idle`: sent (`s.pending` is `None`) or the
/// socket is full again.
pub(super) fn flush(s: &mut Session) -> Next {
    let Some(p) = s.pending.as_mut() else {
        return Next::Idle;
    };
    loop {
        match fdpass::send_parts(s.stream.as_fd(), [&p.bytes[p.sent..]]) {
            Ok(n) => {
                p.sent += n;
                if p.sent == p.bytes.len() {
                    s.pending = None;
                    return Next::Idle;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Idle,
            Err(e) => {
                debug!("client left before its reply: {e}");
                s.pending = None;
                return Next::Close;
            }
        }
    }
}

pub(super) fn log_command(s: &Session, req: &Request<OwnedFd>, reply: &Reply<'_>, took: Duration) {
    let c = CdbSummary::parse(&req.cdb);
    let dev = nix::sys::stat::fstat(req.fd.as_raw_fd())
        .map(|st| {
            let rdev = st.st_rdev;
            format!(
                "{}:{}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            )
        })
        .unwrap_or_else(|_| "?".into());
    let (pid, uid) = s.peer.map_or((-1, u32::MAX), |p| (p.pid, p.uid));
    // Field names are also journal fields (PRHELPER_PEER_PID, ...): see logging.rs and
    // prhelper(8), LOGGING.
    debug!(
        peer_pid = pid,
        peer_uid = uid,
        device = %dev,
        opcode = format_args!("{:#04x}", c.opcode),
        sa = format_args!("{:#04x}", c.service_action),
        action = c.action_name(),
        pr_type = c.pr_type,
        status = format_args!("{:#04x}", reply.status().0),
        len = reply.payload().len(),
        duration_us = took.as_micros() as u64,
        "command"
    );
}
