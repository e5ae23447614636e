//! The connection server: a leader/followers thread pool around one epoll set.
//!
//! Every worker waits in `epoll_wait` on the same epoll fd; every source is registered
//! with `EPOLLONESHOT`, so the kernel hands each readiness event to exactly one worker,
//! which then owns that connection until it re-arms it. The worker that receives a
//! request reads it, runs the SG_IO and writes the reply itself: no hand-off between
//! threads on the request path. Idle connections cost no thread (about 150 bytes of heap
//! each). A worker stuck on a hung device is one fewer spare: when no worker has been
//! left waiting for a millisecond, a supervisor thread starts another (up to
//! `max_threads`), so other clients are still served.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, error, info, warn};

use super::handler;
use crate::dev::Backend;
use crate::proto::wire::{MAX_DATA, SUPPORTED_FEATURES};
use crate::proto::{Conn, ProtoError, Reply, Request, RequestKind};
use crate::scsi::cdb::CdbSummary;
use crate::sys::fdpass;

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const FIRST_SESSION: u64 = 2;

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Upper bound on worker threads (each stuck command holds one).
    pub max_threads: usize,
    /// Workers kept waiting when there is nothing to do.
    pub min_spare: usize,
    /// How long to wait for in-flight commands after a stop signal.
    pub shutdown_grace: Duration,
    /// Stack size of worker threads.
    pub stack_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_threads: 512,
            min_spare: 2,
            shutdown_grace: Duration::from_secs(5),
            stack_size: 256 * 1024,
        }
    }
}

/// Called when the daemon is asked to stop (remove the socket file, ...).
pub type StopHook = Box<dyn FnOnce() + Send>;

/// A client's identity, from SO_PEERCRED.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: i32,
    uid: u32,
}

/// A reply that did not fit in the socket buffer.
struct Pending {
    bytes: Box<[u8]>,
    sent: usize,
}

struct Session {
    stream: UnixStream,
    conn: Conn<OwnedFd>,
    peer: Option<Peer>,
    pending: Option<Pending>,
}

enum Slot {
    Free,
    /// A worker holds the session.
    Busy,
    Idle(Box<Session>),
}

#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<usize>,
    live: usize,
}

impl Slab {
    fn insert_busy(&mut self) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Slot::Busy;
                i
            }
            None => {
                self.slots.push(Slot::Busy);
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) -> Option<Box<Session>> {
        match std::mem::replace(self.slots.get_mut(i)?, Slot::Busy) {
            Slot::Idle(s) => Some(s),
            other => {
                self.slots[i] = other;
                None
            }
        }
    }

    fn release(&mut self, i: usize) {
        self.slots[i] = Slot::Free;
        self.free.push(i);
        self.live -= 1;
    }
}

/// Counters the daemon exposes (also used by tests).
#[derive(Default)]
pub struct Stats {
    pub threads: AtomicUsize,
    pub idle: AtomicUsize,
    /// Workers currently processing a connection, plus replies still being flushed.
    pub busy: AtomicUsize,
    pub commands: AtomicUsize,
}

struct Shared {
    epoll: Epoll,
    listener: Mutex<Option<UnixListener>>,
    signals: UnixStream,
    sessions: Mutex<Slab>,
    backend: Box<dyn Backend>,
    cfg: Config,
    stats: Stats,
    stopping: AtomicBool,
    stop_hook: Mutex<Option<StopHook>>,
    stopped: (Mutex<bool>, Condvar),
    /// Set by a worker that woke up as the last one waiting; wakes the supervisor.
    starved: AtomicBool,
    nudge: (Mutex<()>, Condvar),
    /// Every worker's batch, so the supervisor can hand back events held by a worker
    /// whose current command is stuck.
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
    epoch: Instant,
}

/// Events a worker took from epoll in one call and has not started yet.
const BATCH: usize = 16;

/// A worker's claim on events it has taken but not started, and when its current device
/// command started (0: not in one). Whoever pops a token from `queue` owns that event.
struct WorkerSlot {
    queue: Mutex<(usize, usize, [u64; BATCH])>,
    busy_since_us: std::sync::atomic::AtomicU64,
}

impl WorkerSlot {
    fn pop(&self) -> Option<u64> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (head, len) = (q.0, q.1);
        if head < len {
            q.0 += 1;
            Some(q.2[head])
        } else {
            None
        }
    }

    fn fill(&self, events: &[EpollEvent]) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for (t, e) in q.2.iter_mut().zip(events) {
            *t = e.data();
        }
        q.0 = 0;
        q.1 = events.len();
    }

    /// Take every event not started yet.
    fn steal(&self) -> Vec<u64> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (head, len, toks) = *q;
        q.0 = len;
        toks[head..len].to_vec()
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
}

enum Next {
    /// Re-arm for these events and give the session back.
    Rearm(EpollFlags),
    Close,
}

impl Server {
    /// Start serving `listener` (already listening): [`Server::new`] then
    /// [`Server::spawn_workers`].
    pub fn start(
        listener: UnixListener,
        signals: UnixStream,
        backend: Box<dyn Backend>,
        cfg: Config,
        stop_hook: StopHook,
    ) -> io::Result<Server> {
        let s = Server::new(listener, signals, backend, cfg, stop_hook)?;
        s.spawn_workers()?;
        Ok(s)
    }

    /// Set up the event loop for `listener` (already listening). `signals` becomes
    /// readable when the daemon must stop. No thread is started yet.
    pub fn new(
        listener: UnixListener,
        signals: UnixStream,
        backend: Box<dyn Backend>,
        cfg: Config,
        stop_hook: StopHook,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        signals.set_nonblocking(true)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            &listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, LISTENER),
        )?;
        epoll.add(
            &signals,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, SIGNALS),
        )?;
        let shared = Arc::new(Shared {
            epoll,
            listener: Mutex::new(Some(listener)),
            signals,
            sessions: Mutex::new(Slab::default()),
            backend,
            cfg,
            stats: Stats::default(),
            stopping: AtomicBool::new(false),
            stop_hook: Mutex::new(Some(stop_hook)),
            stopped: (Mutex::new(false), Condvar::new()),
            starved: AtomicBool::new(false),
            nudge: (Mutex::new(()), Condvar::new()),
            slots: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        });
        Ok(Server { shared })
    }

    /// Start the initial workers; the pool grows on demand from there.
    pub fn spawn_workers(&self) -> io::Result<()> {
        for _ in 0..self.shared.cfg.min_spare.max(1) {
            spawn_worker(&self.shared)?;
        }
        let s = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("prhelper-pool".into())
            .stack_size(64 * 1024)
            .spawn(move || supervise(s))?;
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Block until a stop is requested, then wait (bounded) for in-flight commands.
    /// Returns the number of commands abandoned because they did not finish in time.
    pub fn wait(&self) -> usize {
        let (lock, cvar) = &self.shared.stopped;
        let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            stopped = cvar.wait(stopped).unwrap_or_else(|e| e.into_inner());
        }
        drop(stopped);
        let deadline = Instant::now() + self.shared.cfg.shutdown_grace;
        loop {
            let busy = self.shared.stats.busy.load(Ordering::SeqCst);
            if busy == 0 {
                return 0;
            }
            if Instant::now() >= deadline {
                return busy;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> io::Result<()> {
    shared.stats.threads.fetch_add(1, Ordering::SeqCst);
    let s = Arc::clone(shared);
    let r = std::thread::Builder::new()
        .name("prhelper-worker".into())
        .stack_size(shared.cfg.stack_size)
        .spawn(move || worker(s));
    if let Err(e) = r {
        shared.stats.threads.fetch_sub(1, Ordering::SeqCst);
        return Err(e);
    }
    Ok(())
}

/// Per-worker buffers.
struct Scratch {
    read: Box<[u8]>,
    data: Box<[u8]>,
    slot: Arc<WorkerSlot>,
}

fn worker(shared: Arc<Shared>) {
    let slot = Arc::new(WorkerSlot {
        queue: Mutex::new((0, 0, [0; BATCH])),
        busy_since_us: std::sync::atomic::AtomicU64::new(0),
    });
    shared
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::clone(&slot));
    let mut scratch = Scratch {
        read: vec![0; MAX_DATA].into_boxed_slice(),
        data: vec![0; MAX_DATA].into_boxed_slice(),
        slot,
    };
    let mut events = [EpollEvent::empty(); BATCH];
    let stats = &shared.stats;
    loop {
        stats.idle.fetch_add(1, Ordering::SeqCst);
        let r = shared.epoll.wait(
            &mut events,
            EpollTimeout::try_from(10_000).unwrap_or(EpollTimeout::NONE),
        );
        let idle = stats.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        let n = match r {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                error!("epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if n == 0 {
            // Nothing for 10 s: retire if there are more spares than needed.
            if idle >= shared.cfg.min_spare && retire(stats, shared.cfg.min_spare) {
                let me = &scratch.slot;
                shared
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|s| !Arc::ptr_eq(s, me));
                return;
            }
            continue;
        }
        // This worker was the last one waiting: if it (or its peers) stay busy, the
        // supervisor adds a worker, so a command stuck on a device never leaves the
        // event loop unattended for more than a millisecond or two.
        if idle == 0 && !shared.starved.swap(true, Ordering::SeqCst) {
            let _guard = shared.nudge.0.lock().unwrap_or_else(|e| e.into_inner());
            shared.nudge.1.notify_one();
        }
        // Serve the whole batch in order. Events not started yet stay claimable by the
        // supervisor, which hands them back to epoll if this worker gets stuck.
        scratch.slot.fill(&events[..n]);
        while let Some(token) = scratch.slot.pop() {
            match token {
                LISTENER => accept_all(&shared),
                SIGNALS => request_stop(&shared),
                token => serve(&shared, (token - FIRST_SESSION) as usize, &mut scratch),
            }
        }
    }
}

/// Re-arm an event a stuck worker had taken but not started, so another worker gets it.
fn hand_back(shared: &Shared, token: u64) {
    let ev = |flags| EpollEvent::new(flags | EpollFlags::EPOLLONESHOT, token);
    let r = match token {
        LISTENER => match shared
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(l) => shared.epoll.modify(l, &mut ev(EpollFlags::EPOLLIN)),
            None => Ok(()),
        },
        SIGNALS => shared
            .epoll
            .modify(&shared.signals, &mut ev(EpollFlags::EPOLLIN)),
        t => {
            let slab = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
            match slab.slots.get((t - FIRST_SESSION) as usize) {
                Some(Slot::Idle(s)) => {
                    let flags = if s.pending.is_some() {
                        EpollFlags::EPOLLOUT
                    } else {
                        EpollFlags::EPOLLIN
                    };
                    shared.epoll.modify(&s.stream, &mut ev(flags))
                }
                _ => Ok(()),
            }
        }
    };
    if let Err(e) = r {
        warn!("cannot hand back an event: {e}");
    }
}

/// Microseconds since the server started (never 0).
fn now_us(shared: &Shared) -> u64 {
    shared.epoch.elapsed().as_micros() as u64 + 1
}

/// How long a device command may run before the events its worker still holds are
/// handed to other workers, and before a missing spare worker is replaced.
const STUCK_AFTER: Duration = Duration::from_millis(2);

/// The pool's supervisor. While there is work it wakes every millisecond and
/// - hands back the not-yet-started events of any worker whose current command has run
///   for more than [`STUCK_AFTER`] (so a hung device delays nobody else), and
/// - starts a worker when none has been left waiting (up to `max_threads`).
///
/// Quick commands on a loaded machine rarely keep every worker busy that long, so the
/// pool stays near the number of CPUs; commands stuck on a hung device do, and each gets
/// a replacement. (Starting a thread on every momentary shortage made the pool churn and
/// cost throughput.) Surplus workers retire after 10 s without work. With no work the
/// supervisor sleeps (100 ms at a time, or until a worker finds no spare left).
fn supervise(shared: Arc<Shared>) {
    let stats = &shared.stats;
    let mut last_commands = usize::MAX;
    loop {
        let commands = stats.commands.load(Ordering::Relaxed);
        let busy = stats.busy.load(Ordering::SeqCst) > 0;
        let active = busy || commands != last_commands || shared.starved.load(Ordering::SeqCst);
        last_commands = commands;
        if active {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            let g = shared.nudge.0.lock().unwrap_or_else(|e| e.into_inner());
            if !shared.starved.load(Ordering::SeqCst) {
                let _ = shared.nudge.1.wait_timeout(g, Duration::from_millis(100));
            }
            continue;
        }
        // Hand back events held by stuck workers.
        let now = now_us(&shared);
        let stuck: Vec<Arc<WorkerSlot>> = shared
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|w| {
                let since = w.busy_since_us.load(Ordering::SeqCst);
                since != 0 && now.saturating_sub(since) > STUCK_AFTER.as_micros() as u64
            })
            .cloned()
            .collect();
        for w in stuck {
            for token in w.steal() {
                hand_back(&shared, token);
            }
        }
        // Replace missing spares.
        if stats.idle.load(Ordering::SeqCst) > 0 {
            shared.starved.store(false, Ordering::SeqCst);
            continue;
        }
        if !shared.starved.load(Ordering::SeqCst) {
            continue;
        }
        if stats.threads.load(Ordering::SeqCst) < shared.cfg.max_threads {
            if let Err(e) = spawn_worker(&shared) {
                rate_limited_warn(&format!("cannot start another worker thread: {e}"));
            }
        } else {
            rate_limited_warn("all worker threads are busy (--max-threads reached)");
        }
    }
}

/// Leave the pool unless that would drop below `min` threads.
fn retire(stats: &Stats, min: usize) -> bool {
    stats
        .threads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
            (t > min.max(1)).then(|| t - 1)
        })
        .is_ok()
}

fn accept_all(shared: &Arc<Shared>) {
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
                rate_limited_warn(&format!("accept failed: {e}; retrying in 100 ms"));
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

fn rate_limited_warn(msg: &str) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        *last = Some(Instant::now());
        warn!("{msg}");
    }
}

/// Log a client's protocol violation. A hostile client can cause thousands per second,
/// and a log write can block (a full stderr pipe, a slow journal): at most
/// [`CLIENT_ERRORS_PER_SEC`] are logged at warning level each second, with a count of
/// the rest; all of them at debug level.
fn client_error(s: &Session, e: &ProtoError) {
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
const CLIENT_ERRORS_PER_SEC: u32 = 5;

fn add_session(shared: &Arc<Shared>, stream: UnixStream) {
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
    });
    let mut slab = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    let i = slab.insert_busy();
    let token = i as u64 + FIRST_SESSION;
    let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token);
    if let Err(e) = shared.epoll.add(&session.stream, ev) {
        warn!("cannot watch new connection: {e}");
        slab.release(i);
        return;
    }
    if let Some(p) = session.peer {
        debug!(pid = p.pid, uid = p.uid, "client connected");
    }
    slab.slots[i] = Slot::Idle(session);
}

fn serve(shared: &Arc<Shared>, i: usize, scratch: &mut Scratch) {
    let Some(mut session) = shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(i)
    else {
        return;
    };
    shared.stats.busy.fetch_add(1, Ordering::SeqCst);
    let had_pending = session.pending.is_some();
    let next = if had_pending {
        flush(&mut session)
    } else {
        read_and_execute(shared, &mut session, scratch)
    };
    let mut slab = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    // A reply still being flushed keeps counting as in flight.
    let pending = matches!(next, Next::Rearm(_)) && session.pending.is_some();
    match next {
        Next::Rearm(flags) => {
            let mut ev =
                EpollEvent::new(flags | EpollFlags::EPOLLONESHOT, i as u64 + FIRST_SESSION);
            match shared.epoll.modify(&session.stream, &mut ev) {
                Ok(()) => slab.slots[i] = Slot::Idle(session),
                Err(e) => {
                    warn!("cannot re-arm connection: {e}");
                    drop(session);
                    slab.release(i);
                }
            }
        }
        Next::Close => {
            let _ = shared.epoll.delete(&session.stream);
            drop(session);
            slab.release(i);
        }
    }
    drop(slab);
    // `busy` counts sessions held by a worker plus replies still waiting to be flushed.
    if pending && !had_pending {
        shared.stats.busy.fetch_add(1, Ordering::SeqCst);
    }
    if had_pending && !pending {
        shared.stats.busy.fetch_sub(1, Ordering::SeqCst);
    }
    shared.stats.busy.fetch_sub(1, Ordering::SeqCst);
}

fn read_and_execute(shared: &Shared, s: &mut Session, scratch: &mut Scratch) -> Next {
    if shared.stopping.load(Ordering::SeqCst) {
        // After a stop request no new command is read (as qemu-pr-helper).
        return Next::Close;
    }
    loop {
        let want = s.conn.want();
        let r = match fdpass::recv_with_fds(s.stream.as_fd(), &mut scratch.read[..want], true) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Next::Rearm(EpollFlags::EPOLLIN)
            }
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
            Ok(Some(req)) => return execute(shared, s, req, &mut scratch.data, &scratch.slot),
            Err(e) => {
                client_error(s, &e);
                return Next::Close;
            }
        }
    }
}

fn execute(
    shared: &Shared,
    s: &mut Session,
    req: Request<OwnedFd>,
    data: &mut [u8],
    slot: &WorkerSlot,
) -> Next {
    let start = Instant::now();
    slot.busy_since_us.store(now_us(shared), Ordering::SeqCst);
    let outcome = handler::execute(shared.backend.as_ref(), &req, data);
    slot.busy_since_us.store(0, Ordering::SeqCst);
    let reply = match &req.kind {
        RequestKind::PrIn { alloc } => {
            Reply::pr_in(outcome.status, &outcome.sense, &data[..outcome.len], *alloc)
        }
        RequestKind::PrOut { .. } => Reply::pr_out(outcome.status, &outcome.sense),
    };
    shared.stats.commands.fetch_add(1, Ordering::Relaxed);
    if tracing::enabled!(tracing::Level::DEBUG) {
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
            return Next::Close;
        }
    };
    if sent == total {
        return Next::Rearm(EpollFlags::EPOLLIN);
    }
    // The socket buffer is full: keep the reply and finish it when writable.
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(reply.payload());
    s.pending = Some(Pending {
        bytes: bytes.into_boxed_slice(),
        sent,
    });
    Next::Rearm(EpollFlags::EPOLLOUT)
}

fn flush(s: &mut Session) -> Next {
    let Some(p) = s.pending.as_mut() else {
        return Next::Rearm(EpollFlags::EPOLLIN);
    };
    loop {
        match fdpass::send_parts(s.stream.as_fd(), [&p.bytes[p.sent..]]) {
            Ok(n) => {
                p.sent += n;
                if p.sent == p.bytes.len() {
                    s.pending = None;
                    return Next::Rearm(EpollFlags::EPOLLIN);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Next::Rearm(EpollFlags::EPOLLOUT)
            }
            Err(e) => {
                debug!("client left before its reply: {e}");
                s.pending = None;
                return Next::Close;
            }
        }
    }
}

fn log_command(s: &Session, req: &Request<OwnedFd>, reply: &Reply<'_>, took: Duration) {
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
    debug!(
        pid,
        uid,
        dev = %dev,
        opcode = format_args!("{:#04x}", c.opcode),
        sa = format_args!("{:#04x}", c.service_action),
        action = c.action_name(),
        pr_type = c.pr_type,
        status = format_args!("{:#04x}", reply.status().0),
        len = reply.payload().len(),
        us = took.as_micros() as u64,
        "command"
    );
}

fn request_stop(shared: &Arc<Shared>) {
    if shared.stopping.swap(true, Ordering::SeqCst) {
        return;
    }
    // Drain the signal pipe for the log message; the pipe stays un-armed from now on.
    let mut buf = [0u8; 64];
    let _ = (&shared.signals).read(&mut buf);
    info!("stop requested: no longer accepting connections");
    if let Some(listener) = shared
        .listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = shared.epoll.delete(&listener);
        drop(listener);
    }
    if let Some(hook) = shared
        .stop_hook
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        hook();
    }
    let (lock, cvar) = &shared.stopped;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cvar.notify_all();
}

/// Ask a running server to stop, as a signal would (for embedding and tests).
pub fn stop_handle(signals_writer: &UnixStream) -> io::Result<()> {
    (&*signals_writer).write_all(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::default();
        let a = s.insert_busy();
        let b = s.insert_busy();
        assert_ne!(a, b);
        assert_eq!(s.live, 2);
        s.release(a);
        assert_eq!(s.insert_busy(), a);
        assert!(s.take(b).is_none(), "a busy slot yields nothing");
        assert!(s.take(99).is_none());
    }
}
