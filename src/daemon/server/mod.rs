// SPDX-License-Identifier: MIT OR Apache-2.0
//! The connection server: a leader/followers thread pool around one epoll set.
//!
//! Every worker waits in `epoll_wait` on the same epoll fd. Connections are registered
//! edge-triggered; a per-connection slot (locked only to take or give back the session)
//! makes sure exactly one worker serves a connection at a time, and that an event that
//! arrives meanwhile makes that worker read again (see [`serve::serve`]). The worker that
//! receives a request reads it, runs the SG_IO and writes the reply itself: no hand-off
//! between threads and no `epoll_ctl` on the request path. Idle connections cost no
//! thread (their measured heap cost is in bench/README.md). A worker stuck on a hung
//! device is one fewer spare: its unstarted events are handed to other workers after
//! 2 ms, and when no worker is left waiting while one is stuck, a supervisor thread
//! starts another (up to `max_threads`), so other clients are still served.
//!
//! - [`sessions`]: the connection slots, indexed by epoll token.
//! - [`pool`]: the workers and their supervisor.
//! - [`serve`]: the request path, from accept to reply.
//! - this module: the shared state, the [`Server`] handle and stopping.

mod pool;
mod serve;
mod sessions;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tracing::info;

use crate::dev::Backend;
use crate::ratelimit::RateLimit;
use pool::{spawn_worker, supervise, WorkerSlot};
use sessions::Sessions;

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
    /// Set up the event loop for `listener` (already listening). `signals` becomes
    /// readable when the daemon must stop. No thread is started
    /// until [`Server::spawn_workers`].
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
