// SPDX-License-Identifier: MIT OR Apache-2.0
//! The connections: one lockable slot per connection, indexed by epoll token.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::proto::Conn;

/// A client's identity, from SO_PEERCRED.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub(super) pid: i32,
    pub(super) uid: u32,
}

/// A reply that did not fit in the socket buffer.
pub(super) struct Pending {
    pub(super) bytes: Box<[u8]>,
    pub(super) sent: usize,
}

pub(super) struct Session {
    pub(super) stream: UnixStream,
    pub(super) conn: Conn<OwnedFd>,
    pub(super) peer: Option<Peer>,
    pub(super) pending: Option<Pending>,
    /// Registered for output (a reply is pending), not input.
    pub(super) out: bool,
}

pub(super) enum Slot {
    Free,
    /// A worker holds the session. `again`: an event for it came meanwhile.
    Busy {
        again: bool,
    },
    Idle(Box<Session>),
}

impl Slot {
    /// Take an idle session, leaving the slot busy.
    pub(super) fn take(&mut self) -> Option<Box<Session>> {
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
pub(super) const CHUNK: usize = 1024;
/// Chunks at most: 1,048,576 sessions, more than a default hard RLIMIT_NOFILE allows fds.
pub(super) const CHUNKS: usize = 1024;

/// The connections, indexed by token. Each slot has its own lock, so workers serving
/// different connections share no lock (one slab-wide mutex, taken twice per request,
/// was a cache line bounced between CPUs on every request). Chunks never move once
/// allocated; only allocating and freeing an index takes the `alloc` mutex (on accept and
/// close).
/// [`CHUNK`] slots.
pub(super) type Chunk = Box<[Mutex<Slot>]>;

pub(super) struct Sessions {
    pub(super) chunks: Box<[OnceLock<Chunk>]>,
    pub(super) alloc: Mutex<Alloc>,
}

#[derive(Default)]
pub(super) struct Alloc {
    /// Indexes below this have a chunk and have been handed out at least once.
    pub(super) next: usize,
    pub(super) free: Vec<usize>,
    pub(super) live: usize,
}

impl Sessions {
    pub(super) fn new() -> Sessions {
        Sessions {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            alloc: Mutex::new(Alloc::default()),
        }
    }

    pub(super) fn slot(&self, i: usize) -> Option<MutexGuard<'_, Slot>> {
        let chunk = self.chunks.get(i / CHUNK)?.get()?;
        Some(chunk[i % CHUNK].lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A free index (its slot is [`Slot::Free`]); `None` when every index is taken.
    pub(super) fn alloc(&self) -> Option<usize> {
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
    pub(super) fn release(&self, i: usize) {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        a.free.push(i);
        a.live -= 1;
    }
}
