// SPDX-License-Identifier: MIT OR Apache-2.0
//! The worker pool: workers waiting on the epoll set, and the supervisor that hands
//! back events held by stuck workers and grows the pool.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
use tracing::{error, warn};

use super::serve::{accept_all, serve, session_event};
use super::sessions::Slot;
use super::{
    rate_limited_warn, request_stop, Shared, ALL_BUSY, FIRST_SESSION, LISTENER, SIGNALS,
    SPAWN_FAILED,
};
use crate::daemon::handler;
use crate::proto::wire::MAX_DATA;

/// Events a worker took from epoll in one call and has not started yet.
pub(super) const BATCH: usize = 16;

/// One worker's state, written by that worker and read by the supervisor (aligned so
/// that two workers never share a cache line).
///
/// `queue` is its claim on events it has taken but not started: whoever pops a token
/// owns that event. `busy_since` is the supervisor tick at which its current device
/// command started (0: not in one).
#[repr(align(128))]
pub(super) struct WorkerSlot {
    pub(super) queue: Mutex<(usize, usize, [u64; BATCH])>,
    pub(super) busy_since: AtomicU64,
    /// In `epoll_wait`.
    pub(super) waiting: AtomicBool,
    /// Holding a session (reading a request, running it, replying).
    pub(super) holding: AtomicBool,
    /// Commands run (only this worker writes it).
    pub(super) commands: AtomicU64,
}

impl WorkerSlot {
    pub(super) fn new() -> WorkerSlot {
        WorkerSlot {
            queue: Mutex::new((0, 0, [0; BATCH])),
            busy_since: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            commands: AtomicU64::new(0),
        }
    }

    pub(super) fn pop(&self) -> Option<u64> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (head, len) = (q.0, q.1);
        if head < len {
            q.0 += 1;
            Some(q.2[head])
        } else {
            None
        }
    }

    pub(super) fn fill(&self, events: &[EpollEvent]) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for (t, e) in q.2.iter_mut().zip(events) {
            *t = e.data();
        }
        q.0 = 0;
        q.1 = events.len();
    }

    /// Take every event not started yet.
    pub(super) fn steal(&self) -> Vec<u64> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (head, len, toks) = *q;
        q.0 = len;
        toks[head..len].to_vec()
    }
}

pub(super) fn spawn_worker(shared: &Arc<Shared>) -> io::Result<()> {
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
pub(super) struct Scratch {
    pub(super) read: Box<[u8]>,
    pub(super) data: Box<[u8]>,
    pub(super) slot: Arc<WorkerSlot>,
}

pub(super) fn worker(shared: Arc<Shared>) {
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
pub(super) fn hand_back(shared: &Shared, token: u64) {
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
pub(super) const STUCK_TICKS: u64 = 2;

/// How long (in ticks) a worker may stay in one device command, or the whole pool go
/// without completing a command while none waits, before another worker is started.
/// Longer than [`STUCK_TICKS`]: on a loaded machine a worker is often preempted for a
/// few milliseconds, and a thread started for that would stay for good.
pub(super) const GONE_TICKS: u64 = 5;

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
pub(super) fn supervise(shared: Arc<Shared>) {
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
pub(super) fn retire(shared: &Shared, me: &Arc<WorkerSlot>) -> bool {
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
