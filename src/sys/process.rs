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

/// Take ownership of a file descriptor that systemd passed with `LISTEN_FDS` (after
/// `LISTEN_PID` matched this process). Fails if the fd is not open.
pub fn adopt_activation_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: the fd is open (checked above) and was handed to this process by its
    // service manager for it to own; it is adopted once, during single-threaded start-up.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Cap glibc's malloc arenas. Besides bounding memory with many threads, this keeps
/// glibc from reading /sys/devices/system/cpu/online when a new thread first allocates
/// (it sizes the arena limit from the CPU count), which the sandbox forbids.
pub fn limit_malloc_arenas(n: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; M_ARENA_MAX takes any positive int.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Give freed heap memory back to the kernel (glibc keeps it otherwise). Called when the
/// pool shrinks after a burst, so RSS returns to its idle level.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Put `signals` back to their default action (a forked helper process must not run the
/// daemon's handlers, which write to the daemon's signal pipe).
pub fn default_signals(signals: &[libc::c_int]) {
    for &sig in signals {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context; an invalid
        // signal number only makes the call fail.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// End the process at once (`_exit`): no destructors, no atexit handlers, no stdio
/// flush. For a forked child, whose copies of the parent's objects are not its own.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes any status and never returns; skipping destructors is the point.
    unsafe { libc::_exit(code) }
}
