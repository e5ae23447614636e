// SPDX-License-Identifier: MIT OR Apache-2.0
//! Looking at a server process from outside: memory, threads, fds, CPU affinity.

use std::io;

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// A snapshot of `/proc/PID/status` and `/proc/PID/fd`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSnapshot {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn snapshot(pid: u32) -> io::Result<ProcSnapshot> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(ProcSnapshot {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    })
}

/// Set the CPU affinity of every thread of `pid` (threads started later inherit it from
/// their creator). `None`: all CPUs.
pub fn set_process_affinity(pid: u32, cpu: Option<usize>) -> io::Result<()> {
    let mut set = CpuSet::new();
    match cpu {
        Some(c) => set.set(c)?,
        None => {
            for c in 0..CpuSet::count() {
                let _ = set.set(c);
            }
        }
    }
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = t?.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            // A thread may have exited since the listing.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new limit.
pub fn raise_nofile() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// The load average line of `/proc/loadavg` (1, 5, 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
