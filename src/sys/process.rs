//! Process-level calls that need `unsafe`: fork, and adopting inherited fds.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Which side of a fork we are on.
pub enum Forked {
    Parent { child: nix::unistd::Pid },
    Child,
}

/// Fork the process. Must be called while the process has a single thread.
pub fn fork_single_threaded() -> std::io::Result<Forked> {
    // SAFETY: callers only fork before any thread is started (the daemon forks during
    // start-up, before the worker pool exists), so the child is a complete copy with no
    // locks held by vanished threads.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { child }),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Take ownership of an fd inherited from the parent (socket activation).
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
