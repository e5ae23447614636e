// SPDX-License-Identifier: MIT OR Apache-2.0
//! The connection server: a leader/followers thread pool around one epoll set.
//!
//! Every worker waits in `epoll_wait` on the same epoll fd. Connections are registered
//! edge-triggered; a per-connection slot (locked only to take or give back the session)
//! makes sure exactly one worker serves a connection at a time, and that an event that
//! arrives meanwhile makes that worker read again (see [`serve`]). The worker that
//! receives a request reads it, runs the SG_IO and writes the reply itself: no hand-off
//! between threads and no `epoll_ctl` on the request path. Idle connections cost no
//! thread (about 150 bytes of heap each). A worker stuck on a hung device is one fewer
//! spare: its unstarted events are handed to other workers after 2 ms, and when no
//! worker is left waiting while one is stuck, a supervisor thread starts another (up to
//! `max_threads`), so other clients are still served.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, error, info, warn};

use super::handler;
use crate::dev::Backend;
use crate::proto::wire::{MAX_DATA, SUPPORTED_FEATURES};
use crate::proto::{Conn, ProtoError, Reply, Request, RequestKind};
use crate::ratelimit::RateLimit;
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
    /// Registered for output (a reply is pending), not input.
    out: bool,
}

enum Slot {
    Free,
    /// A worker holds the session. `again`: an event for it came meanwhile.
    Busy {
        again: bool,
    },
    Idle(Box<Session>),
}

impl Slot {
    /// Take an idle session, leaving the slot busy.
    fn take(&mut self) -> Option<Box<Session>> {
        match std::mem::replace(self, Slot::Busy { again: false }) {
            Slot::Idle(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// Sessions per chunk of [`Sessions`].
const CHUNK: usize = 1024;
/// Chunks at most: 1,048,576 sessions, more than a default hard RLIMIT_NOFILE allows fds.
const CHUNKS: usize = 1024;

/// The connections, indexed by token. Each slot has its own lock, so workers serving
/// different connections share no lock (one slab-wide mutex, taken twice per request,
/// was a cache line bounced between CPUs on every request). Chunks never move once
/// allocated; only allocating and freeing an index takes the `alloc` mutex (on accept and
/// close).
/// [`CHUNK`] slots.
type Chunk = Box<[Mutex<Slot>]>;

struct Sessions {
    chunks: Box<[OnceLock<Chunk>]>,
    alloc: Mutex<Alloc>,
}

#[derive(Default)]
struct Alloc {
    /// Indexes below this have a chunk and have been handed out at least once.
    next: usize,
    free: Vec<usize>,
    live: usize,
}

impl Sessions {
    fn new() -> Sessions {
        Sessions {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            alloc: Mutex::new(Alloc::default()),
        }
    }

    fn slot(&self, i: usize) -> Option<MutexGuard<'_, Slot>> {
        let chunk = self.chunks.get(i / CHUNK)?.get()?;
        Some(chunk[i % CHUNK].lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A free index (its slot is [`Slot::Free`]); `None` when every index is taken.
    fn alloc(&self) -> Option<usize> {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let i = match a.free.pop() {
            Some(i) => i,
            None if a.next < CHUNK * CHUNKS => {
                let i = a.next;
                self.chunks[i / CHUNK]
                    .get_or_init(|| (0..CHUNK).map(|_| Mutex::new(Slot::Free)).collect());
                a.next += 1;
                i
            }
            None => return None,
        };
        a.live += 1;
        Some(i)
    }

    /// Give back index `i`, whose slot is [`Slot::Free`] again.
    fn release(&self, i: usize) {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        a.free.push(i);
        a.live -= 1;
    }
}

/// Counters the daemon exposes (also used by tests).
///
/// `threads` is exact. The others are summed from per-worker counters (so that the
/// request path touches no cache line shared between CPUs) by the supervisor, every
/// millisecond while there is work, and by [`Server::wait`]: they may be a tick old.
#[derive(Default)]
pub struct Stats {
    pub threads: AtomicUsize,
    /// Workers waiting for events.
    pub idle: AtomicUsize,
    /// Workers currently processing a connection, plus replies still being flushed.
    pub busy: AtomicUsize,
    pub commands: AtomicUsize,
}

struct Shared {
    epoll: Epoll,
    listener: Mutex<Option<UnixListener>>,
    signals: UnixStream,
    sessions: Sessions,
    backend: Box<dyn Backend>,
    cfg: Config,
    stats: Stats,
    stopping: AtomicBool,
    stop_hook: Mutex<Option<StopHook>>,
    stopped: (Mutex<bool>, Condvar),
    /// Set by the supervisor before it sleeps; the first worker to wake up with work
    /// clears it and wakes the supervisor.
    supervisor_asleep: AtomicBool,
    nudge: (Mutex<()>, Condvar),
    /// The supervisor's clock: incremented on every supervisor tick (every millisecond
    /// while there is work). Workers stamp device commands with it, which costs no clock
    /// read on the request path.
    tick: AtomicU64,
    /// Replies waiting for the socket to drain (rare: the client does not read).
    pending_replies: AtomicUsize,
    /// Commands counted by workers that have retired.
    retired_commands: AtomicUsize,
    /// Every worker's batch, so the supervisor can hand back events held by a worker
    /// whose current command is stuck.
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
}

impl Shared {
    /// Refresh the summed counters of [`Stats`]; returns (idle, busy, commands).
    fn refresh_stats(&self) -> (usize, usize, usize) {
        let (mut idle, mut busy, mut commands) = (0, 0, 0);
        for w in self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            idle += usize::from(w.waiting.load(Ordering::SeqCst));
            busy += usize::from(w.holding.load(Ordering::SeqCst));
            commands += w.commands.load(Ordering::Relaxed) as usize;
        }
        busy += self.pending_replies.load(Ordering::SeqCst);
        commands += self.retired_commands.load(Ordering::Relaxed);
        self.stats.idle.store(idle, Ordering::Relaxed);
        self.stats.busy.store(busy, Ordering::Relaxed);
        self.stats.commands.store(commands, Ordering::Relaxed);
        (idle, busy, commands)
    }
}

/// Events a worker took from epoll in one call and has not started yet.
const BATCH: usize = 16;

/// One worker's state, written by that worker and read by the supervisor (aligned so
/// that two workers never share a cache line).
///
/// `queue` is its claim on events it has taken but not started: whoever pops a token
/// owns that event. `busy_since` is the supervisor tick at which its current device
/// command started (0: not in one).
#[repr(align(128))]
struct WorkerSlot {
    queue: Mutex<(usize, usize, [u64; BATCH])>,
    busy_since: AtomicU64,
    /// In `epoll_wait`.
    waiting: AtomicBool,
    /// Holding a session (reading a request, running it, replying).
    holding: AtomicBool,
    /// Commands run (only this worker writes it).
    commands: AtomicU64,
}

impl WorkerSlot {
    fn new() -> WorkerSlot {
        WorkerSlot {
            queue: Mutex::new((0, 0, [0; BATCH])),
            busy_since: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            commands: AtomicU64::new(0),
        }
    }

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

/// What to do with a session after serving it.
enum Next {
    /// Nothing more to read for now (or a reply waits for room): give it back.
    Idle,
    /// Served [`IN_A_ROW`] requests: give it back, with an event if more is queued.
    Yield,
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
            sessions: Sessions::new(),
            backend,
            cfg,
            stats: Stats::default(),
            stopping: AtomicBool::new(false),
            stop_hook: Mutex::new(Some(stop_hook)),
            stopped: (Mutex::new(false), Condvar::new()),
            supervisor_asleep: AtomicBool::new(false),
            nudge: (Mutex::new(()), Condvar::new()),
            slots: Mutex::new(Vec::new()),
            tick: AtomicU64::new(1),
            pending_replies: AtomicUsize::new(0),
            retired_commands: AtomicUsize::new(0),
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
            let (_, busy, _) = self.shared.refresh_stats();
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
    let slot = Arc::new(WorkerSlot::new());
    shared
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::clone(&slot));
    let mut scratch = Scratch {
        read: vec![0; MAX_DATA].into_boxed_slice(),
        data: vec![0; handler::PR_IN_BUFFER].into_boxed_slice(),
        slot,
    };
    let mut events = [EpollEvent::empty(); BATCH];
    loop {
        scratch.slot.waiting.store(true, Ordering::SeqCst);
        let r = shared.epoll.wait(
            &mut events,
            EpollTimeout::try_from(10_000).unwrap_or(EpollTimeout::NONE),
        );
        // SeqCst, paired with the supervisor's store to `supervisor_asleep` and its
        // reading of `waiting`: either it sees this worker busy, or this worker sees it
        // asleep (and wakes it below).
        scratch.slot.waiting.store(false, Ordering::SeqCst);
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
            if retire(&shared, &scratch.slot) {
                return;
            }
            continue;
        }
        // The supervisor sleeps while there is no work; wake it, so that a command
        // stuck on a device never leaves the event loop unattended for more than a
        // millisecond or two.
        if shared.supervisor_asleep.load(Ordering::SeqCst)
            && shared.supervisor_asleep.swap(false, Ordering::SeqCst)
        {
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
            // A connection: a modification polls it and queues an event if it is ready;
            // if a worker holds it, that worker reads again before letting it go.
            let i = (t - FIRST_SESSION) as usize;
            match shared.sessions.slot(i).as_deref_mut() {
                Some(Slot::Idle(s)) => shared.epoll.modify(&s.stream, &mut session_event(s.out, i)),
                Some(Slot::Busy { again }) => {
                    *again = true;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    };
    if let Err(e) = r {
        warn!("cannot hand back an event: {e}");
    }
}

/// How long (in supervisor ticks of about a millisecond) a device command may run before
/// the events its worker still holds are handed to other workers, and the worker stops
/// counting as one that will soon be back.
const STUCK_TICKS: u64 = 2;

/// How long (in ticks) a worker may stay in one device command, or the whole pool go
/// without completing a command while none waits, before another worker is started.
/// Longer than [`STUCK_TICKS`]: on a loaded machine a worker is often preempted for a
/// few milliseconds, and a thread started for that would stay for good.
const GONE_TICKS: u64 = 5;

/// The pool's supervisor. While there is work it wakes every millisecond and
/// - hands back the not-yet-started events of any worker whose current command has run
///   for more than [`STUCK_TICKS`] (so a hung device delays nobody else), and
/// - when no worker is left waiting, starts workers (up to `max_threads`) if fewer than
///   `min_spare` workers are not stuck on a device (for [`GONE_TICKS`]), or one if no
///   command at all has completed for [`GONE_TICKS`] (a worker blocked elsewhere).
///
/// Busy workers that keep completing commands come back to the event loop by themselves:
/// under load, with every worker busy, no thread is added. (Adding one whenever no
/// worker happened to be waiting made the pool grow to several threads per CPU under
/// load; every extra waiter then cost a wake-up per event.) Surplus workers retire after
/// 10 s without work. With no work the supervisor sleeps (100 ms at a time, or until a
/// worker gets an event).
fn supervise(shared: Arc<Shared>) {
    let stats = &shared.stats;
    let mut last_commands = usize::MAX;
    let mut last_progress = 0;
    loop {
        let now = shared.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let (idle, busy, commands) = shared.refresh_stats();
        if commands != last_commands {
            last_commands = commands;
            last_progress = now;
        }
        // Hand back events held by stuck workers; count the workers that have been
        // in one device command for long enough to be taken as gone.
        let mut gone = 0;
        let stuck: Vec<Arc<WorkerSlot>> = shared
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|w| {
                let since = w.busy_since.load(Ordering::Acquire);
                let running = now.saturating_sub(since);
                gone += usize::from(since != 0 && running > GONE_TICKS);
                since != 0 && running > STUCK_TICKS
            })
            .cloned()
            .collect();
        for w in stuck {
            for token in w.steal() {
                hand_back(&shared, token);
            }
        }
        let threads = stats.threads.load(Ordering::SeqCst);
        if busy == 0 && last_progress != now && idle >= threads {
            // Nothing to do: sleep until a worker gets an event. SeqCst, paired with the
            // workers' `waiting` (see `worker`).
            let g = shared.nudge.0.lock().unwrap_or_else(|e| e.into_inner());
            shared.supervisor_asleep.store(true, Ordering::SeqCst);
            let (idle, busy, _) = shared.refresh_stats();
            if busy == 0 && idle >= stats.threads.load(Ordering::SeqCst) {
                let _ = shared.nudge.1.wait_timeout(g, Duration::from_millis(100));
            }
            shared.supervisor_asleep.store(false, Ordering::SeqCst);
            continue;
        }
        let stalled = now - last_progress > GONE_TICKS;
        let available = threads.saturating_sub(gone);
        let min = shared.cfg.min_spare.max(1);
        if idle == 0 && (stalled || available < min) {
            let want = min.saturating_sub(available).max(1);
            let room = shared.cfg.max_threads.saturating_sub(threads);
            for _ in 0..want.min(room) {
                if let Err(e) = spawn_worker(&shared) {
                    rate_limited_warn(
                        &SPAWN_FAILED,
                        &format!("cannot start another worker thread: {e}"),
                    );
                    break;
                }
            }
            if room == 0 {
                rate_limited_warn(
                    &ALL_BUSY,
                    "all worker threads are busy (--max-threads reached)",
                );
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// After 10 s without events: leave the pool if at least `min_spare` other workers are
/// waiting and that leaves at least `min_spare` threads.
fn retire(shared: &Shared, me: &Arc<WorkerSlot>) -> bool {
    let min = shared.cfg.min_spare.max(1);
    let mut slots = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
    let others_waiting = slots
        .iter()
        .filter(|w| !Arc::ptr_eq(w, me) && w.waiting.load(Ordering::SeqCst))
        .count();
    if others_waiting < shared.cfg.min_spare {
        return false;
    }
    let left = shared
        .stats
        .threads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
            (t > min).then(|| t - 1)
        })
        .is_ok();
    if left {
        slots.retain(|s| !Arc::ptr_eq(s, me));
        shared.retired_commands.fetch_add(
            me.commands.load(Ordering::Relaxed) as usize,
            Ordering::Relaxed,
        );
    }
    left
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

/// Log `msg` at warning level unless `limit` logged within the last 10 s (at debug level
/// then). Each call site has its own limiter.
fn rate_limited_warn(limit: &RateLimit, msg: &str) {
    limit.warn(|| msg.to_owned());
}

const WARN_EVERY: Duration = Duration::from_secs(10);
static SPAWN_FAILED: RateLimit = RateLimit::new(WARN_EVERY, 1);
static ALL_BUSY: RateLimit = RateLimit::new(WARN_EVERY, 1);
static ACCEPT_FAILED: RateLimit = RateLimit::new(WARN_EVERY, 1);
static TOO_MANY: RateLimit = RateLimit::new(WARN_EVERY, 1);

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
const IN_A_ROW: usize = 8;

/// Registration of a connection: edge-triggered, for input, or for output while a reply
/// waits for room in the socket buffer.
fn session_event(out: bool, i: usize) -> EpollEvent {
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
fn serve(shared: &Arc<Shared>, i: usize, scratch: &mut Scratch) {
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
fn claim(shared: &Shared, i: usize) -> Option<Box<Session>> {
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
fn give_back(
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
fn read_and_execute(shared: &Shared, s: &mut Session, scratch: &mut Scratch) -> Next {
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
fn execute(
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
fn flush(s: &mut Session) -> Next {
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
    use crate::dev::Outcome;
    use crate::proto::wire::REPLY_HEADER_SIZE;
    use crate::proto::ReplyHeader;
    use crate::scsi::sense::Sense;
    use crate::scsi::Status;
    use std::os::fd::BorrowedFd;

    /// Answers GOOD with no data.
    struct Good;

    impl Backend for Good {
        fn pr_in(&self, _: BorrowedFd<'_>, _: &[u8; 16], _: &mut [u8]) -> Outcome {
            Outcome {
                status: Status::GOOD,
                sense: Sense::default(),
                len: 0,
            }
        }
        fn pr_out(&self, _: BorrowedFd<'_>, _: &[u8; 16], _: &[u8]) -> Outcome {
            Outcome {
                status: Status::GOOD,
                sense: Sense::default(),
                len: 0,
            }
        }
    }

    /// READ KEYS, allocation length 0: the reply is a bare header.
    const READ_KEYS: [u8; 16] = [0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn server(cfg: Config) -> (Server, tempfile::TempDir, std::path::PathBuf, UnixStream) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (sig_rd, sig_wr) = UnixStream::pair().unwrap();
        let s = Server::new(listener, sig_rd, Box::new(Good), cfg, Box::new(|| {})).unwrap();
        (s, dir, path, sig_wr)
    }

    /// A connected client, handshake sent (not yet read by the server).
    fn client(path: &std::path::Path) -> UnixStream {
        let c = UnixStream::connect(path).unwrap();
        handshake(&c);
        c
    }

    fn handshake(c: &UnixStream) {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut hello = [0u8; 4];
        (&*c).read_exact(&mut hello).unwrap();
        (&*c).write_all(&0u32.to_be_bytes()).unwrap();
    }

    /// A client accepted and registered by hand (no worker runs): session 0.
    fn manual_client(shared: &Arc<Shared>, path: &std::path::Path) -> UnixStream {
        let c = UnixStream::connect(path).unwrap();
        let (stream, _) = shared
            .listener
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .accept()
            .unwrap();
        add_session(shared, stream);
        handshake(&c);
        c
    }

    fn send_request(c: &UnixStream) {
        let dev = std::fs::File::open("/dev/null").unwrap();
        let n = fdpass::send_with_fds(c.as_fd(), &READ_KEYS, &[dev.as_fd()], false).unwrap();
        assert_eq!(n, 16);
    }

    fn read_reply(c: &UnixStream) {
        let mut h = [0u8; REPLY_HEADER_SIZE];
        (&*c)
            .read_exact(&mut h)
            .expect("a reply (a lost event leaves the client waiting)");
        let h = ReplyHeader::decode(&h, 0).unwrap();
        assert_eq!((h.status, h.size), (Status::GOOD, 0));
    }

    fn scratch() -> Scratch {
        Scratch {
            read: vec![0; MAX_DATA].into_boxed_slice(),
            data: vec![0; handler::PR_IN_BUFFER].into_boxed_slice(),
            slot: Arc::new(WorkerSlot::new()),
        }
    }

    /// The edge-triggered hand-off, step by step on one thread: an event for a
    /// connection that a worker holds makes that worker read again before it gives the
    /// connection back; without one it just gives it back.
    #[test]
    fn event_while_held_makes_the_holder_read_again() {
        let (server, _dir, path, _stop) = server(Config::default());
        let shared = &server.shared;
        let c = manual_client(shared, &path);
        let mut scratch = scratch();
        // The owner takes it and reads the handshake, then finds the socket empty.
        let mut s = claim(shared, 0).expect("an idle session");
        assert!(matches!(
            read_and_execute(shared, &mut s, &mut scratch),
            Next::Idle
        ));
        // Nothing came meanwhile: it goes back idle.
        assert!(give_back(shared, 0, s, Next::Idle).is_none());
        assert!(matches!(*shared.sessions.slot(0).unwrap(), Slot::Idle(_)));

        let mut s = claim(shared, 0).expect("an idle session");
        assert!(matches!(
            read_and_execute(shared, &mut s, &mut scratch),
            Next::Idle
        ));
        // A request arrives after the owner's last read, before it lets go; another
        // worker gets the event and must leave the session to its holder.
        send_request(&c);
        assert!(claim(shared, 0).is_none());
        assert!(matches!(
            *shared.sessions.slot(0).unwrap(),
            Slot::Busy { again: true }
        ));
        let mut s = give_back(shared, 0, s, Next::Idle).expect("told to read again");
        assert!(matches!(
            read_and_execute(shared, &mut s, &mut scratch),
            Next::Idle
        ));
        read_reply(&c);
        assert!(give_back(shared, 0, s, Next::Idle).is_none());
        assert_eq!(scratch.slot.commands.load(Ordering::Relaxed), 1);
    }

    /// A stuck worker's unstarted event for a connection another worker holds is not
    /// dropped by the supervisor: the holder reads again.
    #[test]
    fn handed_back_event_for_a_held_connection_is_not_lost() {
        let (server, _dir, path, _stop) = server(Config::default());
        let shared = &server.shared;
        let _c = manual_client(shared, &path);
        let s = claim(shared, 0).unwrap();
        hand_back(shared, FIRST_SESSION);
        assert!(give_back(shared, 0, s, Next::Idle).is_some());
    }

    /// Requests sent back to back without waiting for replies, more than one worker
    /// serves in a row: every one is answered, in order.
    #[test]
    fn pipelined_requests_are_all_answered() {
        let (server, _dir, path, _stop) = server(Config::default());
        server.spawn_workers().unwrap();
        let c = client(&path);
        let n = 3 * IN_A_ROW + 1;
        for _ in 0..n {
            send_request(&c);
        }
        for _ in 0..n {
            read_reply(&c);
        }
        // And the connection still works one request at a time.
        send_request(&c);
        read_reply(&c);
    }

    /// Many workers, clients that pipeline 1 to 3 requests at a time: a lost edge (an
    /// event dropped while another worker held the connection) would leave a client
    /// waiting for a reply forever (here: the 20 s read timeout fails the test).
    #[test]
    fn no_event_is_lost_with_many_workers() {
        let (server, _dir, path, _stop) = server(Config {
            min_spare: 6,
            ..Config::default()
        });
        server.spawn_workers().unwrap();
        let clients: Vec<_> = (0..8u64)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let c = client(&path);
                    let mut rng = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let mut done = 0;
                    while done < 3000 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let depth = 1 + (rng % 3) as usize;
                        for _ in 0..depth {
                            send_request(&c);
                        }
                        for _ in 0..depth {
                            read_reply(&c);
                        }
                        done += depth;
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        assert!(server.shared.refresh_stats().2 >= 24_000);
    }

    #[test]
    fn sessions_reuse_indexes() {
        let s = Sessions::new();
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        assert_ne!(a, b);
        assert_eq!(s.alloc.lock().unwrap().live, 2);
        s.release(a);
        assert_eq!(s.alloc().unwrap(), a);
        assert!(
            s.slot(b).unwrap().take().is_none(),
            "a free slot yields nothing"
        );
        *s.slot(b).unwrap() = Slot::Busy { again: false };
        assert!(
            s.slot(b).unwrap().take().is_none(),
            "a busy slot yields nothing"
        );
        assert!(s.slot(CHUNK * CHUNKS).is_none());
        assert!(s.slot(CHUNK + 5).is_none(), "no chunk allocated there yet");
    }
}
