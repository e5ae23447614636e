// SPDX-License-Identifier: MIT OR Apache-2.0
//! Part 2: start-up time, idle memory, many idle connections, a burst of connects.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::load::{self, Client};
use crate::procinfo::{self, ProcSnapshot};
use crate::server::{Binaries, Kind, Server};
use crate::stats::{median, Latencies};

pub struct Config {
    /// Starts measured for exec-to-accepting (the last one stays up for the rest).
    pub starts: usize,
    /// Idle-connection levels, increasing (e.g. 1,000 and 10,000).
    pub levels: Vec<usize>,
    pub burst: usize,
    /// Commands a fresh client runs while the idle connections are held.
    pub fresh_commands: usize,
    /// Give up opening idle connections after this long.
    pub open_limit: Duration,
}

/// Idle connections held at one level.
#[derive(Clone, Debug, Default)]
pub struct Level {
    pub conns: usize,
    /// Connections actually open (handshake done).
    pub opened: usize,
    /// Seconds to open all of them (sequentially: connect + handshake each).
    pub open_secs: f64,
    pub refused: usize,
    /// Gave up before opening them all (time limit).
    pub incomplete: bool,
    pub base: ProcSnapshot,
    pub held: ProcSnapshot,
    /// (RSS growth + 16 KiB per added thread) / connections.
    pub bytes_per_conn: f64,
    pub fresh_first_us: f64,
    pub fresh_p50_us: f64,
    pub fresh_p99_us: f64,
    pub fresh_max_us: f64,
}

#[derive(Clone, Debug)]
pub struct Result {
    pub kind: Kind,
    pub exec_to_accept_ms: Vec<f64>,
    pub idle: ProcSnapshot,
    pub burst: usize,
    pub burst_refused: usize,
    pub levels: Vec<Level>,
}

impl Result {
    pub fn exec_ms_median(&self) -> f64 {
        median(&self.exec_to_accept_ms)
    }
}

/// Kernel stack counted for every thread a server holds.
pub const KERNEL_STACK: f64 = 16.0 * 1024.0;

/// Run part 2 against one server kind.
pub fn run(
    kind: Kind,
    bins: &Binaries,
    dir: &Path,
    cfg: &Config,
    log: &mut dyn FnMut(&str),
) -> io::Result<Result> {
    let mut exec = Vec::new();
    let mut server = None;
    for i in 0..cfg.starts.max(1) {
        let s = Server::start(kind, bins, dir)?;
        exec.push(s.exec_to_accept.as_secs_f64() * 1000.0);
        if i + 1 < cfg.starts.max(1) {
            s.stop(Duration::from_secs(5))?;
        } else {
            server = Some(s);
        }
    }
    let mut server = server.expect("started at least once");
    log(&format!(
        "{}: socket accepting {:.2} ms after exec (median of {})",
        kind.name(),
        median(&exec),
        exec.len()
    ));
    std::thread::sleep(Duration::from_millis(300));
    let idle = procinfo::snapshot(server.pid())?;

    let burst_refused = burst(&server.socket, cfg.burst)?;
    log(&format!(
        "{}: idle RSS {} KiB; burst of {}: {} refused",
        kind.name(),
        idle.rss_kib,
        cfg.burst,
        burst_refused
    ));
    std::thread::sleep(Duration::from_millis(300));
    server.check_alive()?;

    let mut held: Vec<UnixStream> = Vec::new();
    let mut levels = Vec::new();
    let base = procinfo::snapshot(server.pid())?;
    let mut refused = 0;
    let mut open_time = Duration::ZERO;
    let mut incomplete = false;
    for &n in &cfg.levels {
        let t0 = Instant::now();
        while held.len() < n {
            if open_time + t0.elapsed() > cfg.open_limit {
                incomplete = true;
                break;
            }
            match UnixStream::connect(&server.socket) {
                Ok(s) => {
                    load::handshake(&s, Duration::from_secs(10))?;
                    held.push(s);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::EAGAIN)) => {
                    refused += 1;
                }
                Err(e) => return Err(e),
            }
        }
        open_time += t0.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        server.check_alive()?;
        let snap = procinfo::snapshot(server.pid())?;
        let growth = (snap.rss_kib as f64 - base.rss_kib as f64) * 1024.0
            + KERNEL_STACK * (snap.threads as f64 - base.threads as f64).max(0.0);
        let mut level = Level {
            conns: n,
            opened: held.len(),
            open_secs: open_time.as_secs_f64(),
            refused,
            incomplete,
            base,
            held: snap,
            bytes_per_conn: growth / held.len().max(1) as f64,
            ..Default::default()
        };
        fresh_client(&server.socket, cfg.fresh_commands, &mut level)?;
        log(&format!(
            "{}: {} idle connections opened in {:.2} s, {} refused, {:.0} B/conn, fresh client p50 {:.1} µs",
            kind.name(),
            level.opened,
            level.open_secs,
            level.refused,
            level.bytes_per_conn,
            level.fresh_p50_us
        ));
        levels.push(level);
        if incomplete {
            break;
        }
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    server.check_alive()?;
    server.stop(Duration::from_secs(10))?;
    Ok(Result {
        kind,
        exec_to_accept_ms: exec,
        idle,
        burst: cfg.burst,
        burst_refused,
        levels,
    })
}

/// A new client's commands while the idle connections are held.
fn fresh_client(socket: &Path, n: usize, level: &mut Level) -> io::Result<()> {
    let mut c = Client::new(socket, &load::dev_null, load::read_keys_cdb(1024))?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let d = round_trip(&mut c)?;
        if i == 0 {
            level.fresh_first_us = d.as_nanos() as f64 / 1000.0;
        }
        lat.push(d.as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    let l = Latencies::from_ns(lat);
    let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
    level.fresh_p50_us = us(l.percentile(50.0));
    level.fresh_p99_us = us(l.percentile(99.0));
    level.fresh_max_us = us(l.max());
    Ok(())
}

/// One request on a blocking client, with its latency.
pub fn round_trip(c: &mut Client) -> io::Result<Duration> {
    c.send(Instant::now())?;
    loop {
        if let Some(d) = c.receive()? {
            if d.status != 2 {
                return Err(io::Error::other(format!(
                    "unexpected status {:#04x}",
                    d.status
                )));
            }
            return Ok(d.latency);
        }
    }
}

/// `n` non-blocking connects in a tight loop; returns how many were refused.
pub fn burst(path: &Path, n: usize) -> io::Result<usize> {
    let addr = UnixAddr::new(path)?;
    let mut socks: Vec<OwnedFd> = Vec::with_capacity(n);
    for _ in 0..n {
        socks.push(socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?);
    }
    let mut refused = 0;
    for s in &socks {
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(Errno::EAGAIN | Errno::ECONNREFUSED) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    // Give the server a moment to accept before the sockets close.
    std::thread::sleep(Duration::from_millis(50));
    drop(socks);
    Ok(refused)
}
