// SPDX-License-Identifier: MIT OR Apache-2.0
//! Process-level calls that need `unsafe`: fork, and adopting inherited fds.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Which side of a fork we are on.
pub enum Forked {
    Parent { child: nix::unistd::Pid },
    Child,
}

/// Fork the process, which must have a single thread: with more, the child could inherit
/// locks held by threads that do not exist in it. Checked (`/proc/self/task`): fails with
/// `EDEADLK` if another thread exists.
pub fn fork_single_threaded() -> std::io::Result<Forked> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Deadlock,
            format!("cannot fork safely: the process has {threads} threads"),
        ));
    }
    // SAFETY: the process has one thread (checked just above; no other thread can start
    // meanwhile, since this one is busy here), so the child is a complete copy with no
    // locks held by vanished threads.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { child }),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// The first fd a service manager passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Take ownership of the file descriptor that systemd passed with `LISTEN_FDS=1` (after
/// `LISTEN_PID` matched this process): fd 3. Fails if it is not open, or if it was
/// adopted before (so that two owners can never close it).
pub fn adopt_activation_fd() -> std::io::Result<OwnedFd> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    let fd = LISTEN_FDS_START;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the activation socket was already adopted",
        ));
    }
    // SAFETY: fd 3 is open (checked above), was handed to this process by its service
    // manager for it to own, and nothing else in the process owns it: nothing opens files
    // before socket activation is handled, and the flag above lets it be adopted once.
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
