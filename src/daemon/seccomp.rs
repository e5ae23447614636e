// SPDX-License-Identifier: MIT OR Apache-2.0
//! The seccomp allow list: every system call the daemon makes once it serves clients,
//! one entry each, with why. Anything else kills the process (or is logged, with
//! `--seccomp=log`). `ioctl` is further restricted by request number.
//!
//! Opening files is the one exception: glibc opens /proc/sys/vm/overcommit_memory the
//! first time an exiting thread's heap could shrink, and copes with failure. So `open`
//! and `openat` fail with EACCES instead of killing the process (a second, stacked
//! filter; the kernel applies the stricter answer), and Landlock denies them anyway.
//! Read-only opens pass (the containment check reads a dm map's size and `slaves/` in
//! sysfs; with `--multipath`, a map's path devices are opened by number): Landlock allows
//! reading only beneath /sys/devices (with `--multipath`, /dev and /sys), and opens that
//! would write or create still fail.
//!
//! Built for x86_64 and aarch64 (seccompiler's architectures, minus riscv64 which is
//! untested); elsewhere the daemon runs without a filter and says so.

use std::collections::BTreeMap;

use super::sandbox::SandboxError;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// SG_IO: the reason the daemon exists.
pub const SG_IO: u64 = 0x2285;
/// FIONBIO: std's `set_nonblocking` on accepted connections.
pub const FIONBIO: u64 = 0x5421;

/// What to do with a system call outside the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Kill the process (default).
    Kill,
    /// Allow it but log it to the kernel audit log (for finding missing entries).
    Log,
    /// No filter.
    Off,
}

/// What optional features need beyond the base list.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Extra ioctl request numbers to allow.
    pub ioctls: Vec<u64>,
    /// dm-multipath support: device-mapper ioctls, read-only opens of path devices and
    /// sysfs, threads per path, and multipathd's socket.
    pub multipath: bool,
    /// With `multipath`: the workers connect to multipathd themselves (`socket`,
    /// `connect`); off when the connector process does it for them (`-u`).
    pub multipathd_connect: bool,
}

impl Extra {
    /// The additions for `--multipath`.
    pub fn multipath() -> Extra {
        Extra {
            ioctls: vec![
                crate::sys::dm::DM_TABLE_STATUS,
                crate::sys::dm::DM_DEV_SUSPEND,
            ],
            multipath: true,
            multipathd_connect: true,
        }
    }
}

/// (syscall, why) pairs allowed with `--multipath`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn multipath_plain() -> Vec<(i64, &'static str)> {
    use libc::*;
    let mut v = vec![
        (SYS_setsockopt, "multipathd reply timeout"),
        (SYS_readlinkat, "sysfs: a path's kernel name and SCSI host"),
        (SYS_lseek, "reading sysfs attributes"),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push((SYS_readlink, "sysfs links (older libc)"));
    v
}

/// Open flags that would write or create: refused even with `--multipath`.
const WRITE_FLAGS: [u64; 4] = [
    libc::O_WRONLY as u64,
    libc::O_RDWR as u64,
    libc::O_CREAT as u64,
    libc::O_TRUNC as u64,
];

/// Where the open flags are: (syscall, argument index).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn opens() -> Vec<(i64, u8)> {
    let mut v = vec![(libc::SYS_openat, 2)];
    #[cfg(target_arch = "x86_64")]
    v.push((libc::SYS_open, 1));
    v
}

/// (syscall, why) pairs allowed without conditions.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn plain() -> Vec<(i64, &'static str)> {
    use libc::*;
    let mut v = vec![
        // Event loop.
        (
            SYS_epoll_pwait,
            "workers wait for events (aarch64 libc, some glibc paths)",
        ),
        (
            SYS_epoll_ctl,
            "re-arming connections, adding/removing sockets",
        ),
        // Connections.
        (SYS_accept4, "accepting clients"),
        (SYS_recvmsg, "requests and their fds"),
        (SYS_sendmsg, "replies"),
        (SYS_sendto, "syslog/journald datagrams"),
        (SYS_getsockopt, "SO_PEERCRED for debug logs"),
        (SYS_read, "the signal pipe"),
        (
            SYS_recvfrom,
            "the signal pipe (std reads sockets with recv)",
        ),
        (
            SYS_write,
            "handshake word, stderr logging, signal pipe (from the handler)",
        ),
        (SYS_writev, "stderr logging"),
        (
            SYS_close,
            "device fds after each command, closed connections",
        ),
        (SYS_fcntl, "F_GETFL: refusing PR OUT on read-only fds"),
        // Containment (dev::contain): whether the fd's device is a partition or a dm map
        // over part of a device, from sysfs. Stats need no Landlock right; a dm map's
        // size and slaves/ are read (read-only opens, below; Landlock: /sys/devices).
        (
            SYS_getdents64,
            "sysfs: a dm map's slaves/ (containment; multipath without the control node)",
        ),
        // Files: the socket file is removed on stop; device numbers for debug logs.
        (SYS_fstat, "device number of the passed fd (debug log)"),
        (
            SYS_newfstatat,
            "checking the socket file is still ours before removing it",
        ),
        (SYS_statx, "same, where std uses statx"),
        (SYS_unlinkat, "removing the socket file on stop"),
        // Memory.
        (SYS_mmap, "allocator, thread stacks"),
        (SYS_munmap, "allocator, thread stacks"),
        (SYS_mprotect, "thread stack guard pages"),
        (SYS_madvise, "allocator, exiting threads"),
        (SYS_brk, "allocator"),
        (SYS_mremap, "allocator"),
        // Threads (the pool grows and shrinks).
        (SYS_clone, "starting workers"),
        (SYS_clone3, "starting workers (glibc 2.34+)"),
        (SYS_futex, "mutexes and condition variables"),
        (SYS_set_robust_list, "new threads (glibc)"),
        (SYS_rseq, "new threads (glibc)"),
        (SYS_sigaltstack, "std's stack overflow guard in new threads"),
        (SYS_rt_sigprocmask, "thread creation, abort"),
        (
            SYS_rt_sigaction,
            "std's stack-overflow handler set-up in new threads",
        ),
        (SYS_rt_sigreturn, "returning from the stop-signal handler"),
        (SYS_restart_syscall, "syscalls interrupted by signals"),
        (SYS_sched_yield, "spin loops in locks"),
        (SYS_sched_getaffinity, "glibc thread start-up"),
        (SYS_gettid, "logging, abort"),
        (SYS_getpid, "syslog tag, abort"),
        (SYS_tgkill, "abort on panic"),
        (SYS_getrandom, "hash map seeds"),
        (SYS_exit, "a worker retiring"),
        (SYS_exit_group, "process exit"),
        // Time.
        (SYS_clock_gettime, "timestamps when the vDSO is unavailable"),
        (
            SYS_clock_nanosleep,
            "short sleeps (accept back-off, shutdown wait)",
        ),
        (SYS_nanosleep, "short sleeps"),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        (SYS_epoll_wait, "workers wait for events"),
        (SYS_stat, "checking the socket file (older std)"),
        (SYS_lstat, "checking the socket file (older std)"),
        (SYS_unlink, "removing the socket file on stop"),
        (SYS_poll, "std's stdio sanity checks"),
    ]);
    v
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn arch() -> seccompiler::TargetArch {
    #[cfg(target_arch = "x86_64")]
    return seccompiler::TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return seccompiler::TargetArch::aarch64;
}

/// Compiled filters, applied in order.
pub type Filters = Vec<BpfProgram>;

/// System calls that fail with EACCES rather than kill.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn refused() -> Vec<(i64, &'static str)> {
    let mut v = vec![(
        libc::SYS_openat,
        "glibc's heap trimming when a worker exits; nothing else opens files",
    )];
    #[cfg(target_arch = "x86_64")]
    v.push((libc::SYS_open, "same, older libc"));
    v
}

/// Compile the filters. `None` when the architecture is not supported or mode is Off.
pub fn build(mode: Mode, extra: &Extra) -> Result<Option<Filters>, SandboxError> {
    if mode == Mode::Off {
        return Ok(None);
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = extra;
        return Ok(None);
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let err = SandboxError::SeccompBuild;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, _why) in plain().into_iter().chain(refused()) {
            rules.insert(nr, vec![]);
        }
        if extra.multipath {
            for (nr, _why) in multipath_plain() {
                rules.insert(nr, vec![]);
            }
        }
        if extra.multipath && extra.multipathd_connect {
            // Reconnecting to multipathd after it restarted, or when its socket appears
            // late (KubeVirt's bind mount): socket(AF_UNIX) and connect.
            rules.insert(libc::SYS_connect, vec![]);
            rules.insert(libc::SYS_socket, unix_socket_rule()?);
        }
        // ioctl: only these request numbers (argument 1, compared as 32 bits).
        let mut ioctls = vec![SG_IO, FIONBIO];
        ioctls.extend(&extra.ioctls);
        let ioctl_rules = ioctls
            .into_iter()
            .map(|req| arg_rule(1, SeccompCmpOp::Eq, req))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, ioctl_rules);
        // prctl: only PR_SET_NAME (std names new threads).
        rules.insert(
            libc::SYS_prctl,
            vec![arg_rule(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?],
        );
        let filter = SeccompFilter::new(rules, mismatch_action(mode), SeccompAction::Allow, arch())
            .map_err(err)?;
        let allow = BpfProgram::try_from(filter).map_err(err)?;
        // Opens that would write or create are refused. Read-only opens pass: the
        // containment check reads a dm map's sysfs attributes in every mode, and
        // multipath opens path devices; Landlock limits them to /sys/devices (and, with
        // multipath, /dev and /sys).
        let mut refuse: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, arg) in opens() {
            let conds = WRITE_FLAGS
                .iter()
                .map(|&bit| arg_rule(arg, SeccompCmpOp::MaskedEq(bit), bit))
                .collect::<Result<Vec<_>, _>>()?;
            refuse.insert(nr, conds);
        }
        let refuse = SeccompFilter::new(
            refuse,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            arch(),
        )
        .map_err(err)?;
        let refuse = BpfProgram::try_from(refuse).map_err(err)?;
        // The refusing filter goes first: installing a filter calls prctl(NO_NEW_PRIVS),
        // which the allow list itself does not permit.
        Ok(Some(vec![refuse, allow]))
    }
}

/// `socket()` with AF_UNIX only.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn unix_socket_rule() -> Result<Vec<SeccompRule>, SandboxError> {
    Ok(vec![arg_rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?])
}

/// A rule that matches when system-call argument `arg`, compared as 32 bits with `op`,
/// equals `value`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn arg_rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, SandboxError> {
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)?;
    Ok(SeccompRule::new(vec![cond])?)
}

/// What a call off the allow list gets: the process killed, or an audit log entry.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn mismatch_action(mode: Mode) -> SeccompAction {
    match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    }
}

/// (syscall, why) pairs the multipathd connector process ([`super::connector`]) may make.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn connector_plain() -> Vec<(i64, &'static str)> {
    use libc::*;
    vec![
        (SYS_read, "requests from the daemon"),
        (SYS_recvfrom, "requests (std reads sockets with recv)"),
        (SYS_connect, "connecting to multipathd"),
        (
            SYS_sendmsg,
            "passing the connected socket back (SCM_RIGHTS)",
        ),
        (SYS_sendto, "READY (std writes to sockets with send)"),
        (SYS_close, "the connected socket once passed"),
        (SYS_brk, "allocator (the socket name, nix's control buffer)"),
        (SYS_mmap, "allocator"),
        (SYS_munmap, "allocator"),
        (SYS_mremap, "allocator"),
        (SYS_futex, "std's environment lock (MULTIPATH_SOCKET_NAME)"),
        (SYS_rt_sigreturn, "returning from a signal handler"),
        (SYS_restart_syscall, "a read interrupted by a signal"),
        (SYS_rt_sigprocmask, "abort on panic"),
        (SYS_gettid, "abort on panic"),
        (SYS_getpid, "abort on panic"),
        (SYS_tgkill, "abort on panic"),
        (SYS_write, "panic message (stderr is /dev/null)"),
        (SYS_exit_group, "exit when the daemon closes its end"),
        (SYS_exit, "exit"),
    ]
}

/// The connector's filter: [`connector_plain`] and `socket(AF_UNIX)`; anything else kills
/// it (or is logged with `--seccomp=log`). `None` when the architecture is not supported
/// or mode is Off.
pub fn build_connector(mode: Mode) -> Result<Option<Filters>, SandboxError> {
    if mode == Mode::Off {
        return Ok(None);
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Ok(None);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let err = SandboxError::SeccompBuild;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = connector_plain()
            .into_iter()
            .map(|(nr, _)| (nr, vec![]))
            .collect();
        rules.insert(libc::SYS_socket, unix_socket_rule()?);
        // fcntl(F_GETFD) only: std's debug check that an fd it closes is open.
        rules.insert(
            libc::SYS_fcntl,
            vec![arg_rule(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?],
        );
        let filter = SeccompFilter::new(rules, mismatch_action(mode), SeccompAction::Allow, arch())
            .map_err(err)?;
        Ok(Some(vec![BpfProgram::try_from(filter).map_err(err)?]))
    }
}

/// Install the filters on the calling thread (threads started later inherit them).
pub fn apply(filters: &[BpfProgram]) -> Result<(), SandboxError> {
    for prog in filters {
        seccompiler::apply_filter(prog)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_for_every_mode() {
        assert!(build(Mode::Off, &Extra::default()).unwrap().is_none());
        let p = build(Mode::Kill, &Extra::default()).unwrap().unwrap();
        assert!(!p.is_empty());
        assert!(build(Mode::Log, &Extra::multipath()).unwrap().is_some());
        assert!(build(Mode::Kill, &Extra::multipath()).unwrap().is_some());
        let no_connect = Extra {
            multipathd_connect: false,
            ..Extra::multipath()
        };
        assert!(build(Mode::Kill, &no_connect).unwrap().is_some());
        assert!(build_connector(Mode::Off).unwrap().is_none());
        assert!(build_connector(Mode::Kill).unwrap().is_some());
    }

    #[test]
    fn no_duplicate_entries() {
        let mut c: Vec<i64> = connector_plain().into_iter().map(|(n, _)| n).collect();
        let len = c.len();
        c.sort();
        c.dedup();
        assert_eq!(c.len(), len);

        let mut nrs: Vec<i64> = plain()
            .into_iter()
            .chain(refused())
            .chain(multipath_plain())
            .map(|(n, _)| n)
            .collect();
        let len = nrs.len();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), len);
    }
}
