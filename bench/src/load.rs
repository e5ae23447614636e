// SPDX-License-Identifier: MIT OR Apache-2.0
//! A closed-loop load generator for any pr-helper socket.
//!
//! Each client connects, does the feature handshake, then sends one PR IN request (CDB
//! plus the device fd, as QEMU does) and waits for the full reply before sending the next.
//! One connection per thread runs with blocking reads (the lowest-overhead way to measure
//! one client's latency); several connections per thread run on a private epoll set, so a
//! few threads can drive hundreds of clients without the generator becoming the
//! bottleneck.
//!
//! The lab reuses [`run`] with its own socket and fd opener (for example a real or hung
//! device): replies are validated but any SCSI status is accepted unless
//! [`LoadSpec::expect_status`] says otherwise, and requests stuck past the end of the
//! measurement are reported in [`LoadResult::unfinished`] instead of hanging the run.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::unistd::Pid;
use prhelper::proto::wire::{CDB_SIZE, MAX_DATA, REPLY_HEADER_SIZE};
use prhelper::proto::ReplyHeader;
use prhelper::sys::fdpass;

use crate::stats::Latencies;

/// Opens the fd sent with each request (once per client; reused for every request).
pub type FdOpener = dyn Fn() -> io::Result<OwnedFd> + Sync;

/// Opens `/dev/null` read-only: SG_IO fails at once with ENOTTY.
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

/// PERSISTENT RESERVE IN, READ KEYS, with the given allocation length.
pub fn read_keys_cdb(alloc: u16) -> [u8; CDB_SIZE] {
    let mut cdb = [0u8; CDB_SIZE];
    cdb[0] = 0x5e;
    cdb[1] = 0x00;
    cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
    cdb
}

/// What to run.
pub struct LoadSpec<'a> {
    pub socket: &'a Path,
    /// Concurrent clients (connections), each with one request in flight at a time.
    pub clients: usize,
    /// Generator threads; 0 picks one per client up to 1 client, else 2 threads.
    pub threads: usize,
    /// Run this long before recording.
    pub warmup: Duration,
    /// Then record for this long.
    pub duration: Duration,
    /// CDB of every request (PR IN or PR OUT without parameter data).
    pub cdb: [u8; CDB_SIZE],
    pub opener: &'a FdOpener,
    /// Pin every generator thread to this CPU.
    pub pin_cpu: Option<usize>,
    /// Count any other status as an error.
    pub expect_status: Option<u8>,
    /// After the measurement, wait this long for replies still in flight.
    pub drain: Duration,
}

impl<'a> LoadSpec<'a> {
    /// READ KEYS on `/dev/null`, expecting CHECK CONDITION.
    pub fn dev_null(socket: &'a Path, clients: usize, duration: Duration) -> LoadSpec<'a> {
        LoadSpec {
            socket,
            clients,
            threads: 0,
            warmup: Duration::from_millis(100),
            duration,
            cdb: read_keys_cdb(1024),
            opener: &dev_null,
            pin_cpu: None,
            expect_status: Some(2),
            drain: Duration::from_secs(2),
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub clients: usize,
    pub threads: usize,
    /// Replies received during the measurement window.
    pub requests: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
    /// Replies by SCSI status (measurement window only).
    pub statuses: BTreeMap<u8, u64>,
    /// Requests whose reply had not arrived by the end of the drain period.
    pub unfinished: usize,
    /// Broken connections, bad replies, unexpected statuses (first few only).
    pub errors: Vec<String>,
    pub error_count: u64,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Connect and do the feature handshake (blocking, with `timeout` on each read).
pub fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let s = UnixStream::connect(socket)?;
    handshake(&s, timeout)?;
    Ok(s)
}

/// Read the helper's features word and request none.
pub fn handshake(s: &UnixStream, timeout: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    let mut f = [0u8; 4];
    (&*s).read_exact(&mut f)?;
    (&*s).write_all(&0u32.to_be_bytes())?;
    Ok(())
}

/// One client connection with its device fd and reply buffer.
pub struct Client {
    stream: UnixStream,
    dev: OwnedFd,
    cdb: [u8; CDB_SIZE],
    max_size: usize,
    buf: Box<[u8]>,
    have: usize,
    need: usize,
    sent_at: Option<Instant>,
}

/// One complete reply.
pub struct Done {
    pub status: u8,
    pub latency: Duration,
    pub at: Instant,
}

impl Client {
    pub fn new(socket: &Path, opener: &FdOpener, cdb: [u8; CDB_SIZE]) -> io::Result<Client> {
        let stream = connect(socket, Duration::from_secs(10))?;
        let dev = opener()?;
        let max_size = if cdb[0] == 0x5e {
            usize::from(u16::from_be_bytes([cdb[7], cdb[8]])).min(MAX_DATA)
        } else {
            0
        };
        Ok(Client {
            stream,
            dev,
            cdb,
            max_size,
            buf: vec![0; REPLY_HEADER_SIZE + MAX_DATA].into_boxed_slice(),
            have: 0,
            need: REPLY_HEADER_SIZE,
            sent_at: None,
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn in_flight(&self) -> bool {
        self.sent_at.is_some()
    }

    /// Send the request; `now` becomes its start time.
    pub fn send(&mut self, now: Instant) -> io::Result<()> {
        let n = fdpass::send_with_fds(self.stream.as_fd(), &self.cdb, &[self.dev.as_fd()], false)?;
        if n != CDB_SIZE {
            // A 16-byte write to a socket with an empty send queue is never split in
            // practice; treat it as a failure rather than complicate the generator.
            return Err(io::Error::other("short write of the CDB"));
        }
        self.sent_at = Some(now);
        self.have = 0;
        self.need = REPLY_HEADER_SIZE;
        Ok(())
    }

    /// Read what is available. `Ok(None)`: the reply is not complete yet (or the read
    /// timed out on a blocking socket).
    pub fn receive(&mut self) -> io::Result<Option<Done>> {
        loop {
            let n = match self.stream.read(&mut self.buf[self.have..self.need]) {
                Ok(0) => return Err(io::Error::other("helper closed the connection")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.have += n;
            if self.have == REPLY_HEADER_SIZE && self.need == REPLY_HEADER_SIZE {
                let h: &[u8; REPLY_HEADER_SIZE] = self.buf[..REPLY_HEADER_SIZE]
                    .try_into()
                    .expect("slice of header size");
                let hdr = ReplyHeader::decode(h, self.max_size)
                    .map_err(|e| io::Error::other(format!("bad reply: {e}")))?;
                self.need = REPLY_HEADER_SIZE + hdr.size;
            }
            if self.have == self.need {
                let at = Instant::now();
                let sent = self
                    .sent_at
                    .take()
                    .ok_or_else(|| io::Error::other("reply without a request"))?;
                let status = i32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes"));
                return Ok(Some(Done {
                    status: status as u8,
                    latency: at - sent,
                    at,
                }));
            }
        }
    }
}

/// Pin the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Per-thread tally, merged at the end.
#[derive(Default)]
struct Tally {
    lat_ns: Vec<u32>,
    statuses: BTreeMap<u8, u64>,
    unfinished: usize,
    errors: Vec<String>,
    error_count: u64,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.error_count += 1;
        if self.errors.len() < 5 {
            self.errors.push(e.to_string());
        }
    }

    fn record(&mut self, d: &Done, expect: Option<u8>) {
        if expect.is_some_and(|s| s != d.status) {
            self.error(format_args!("unexpected SCSI status {:#04x}", d.status));
        }
        *self.statuses.entry(d.status).or_default() += 1;
        self.lat_ns
            .push(d.latency.as_nanos().min(u128::from(u32::MAX)) as u32);
    }
}

struct Window {
    start: Instant,
    end: Instant,
    drain_until: Instant,
}

/// Run the load described by `spec` and collect the results.
pub fn run(spec: &LoadSpec<'_>) -> LoadResult {
    let clients = spec.clients.max(1);
    let threads = match spec.threads {
        0 if clients == 1 => 1,
        0 => 2,
        t => t.min(clients),
    };
    let barrier = Barrier::new(threads + 1);
    let window: Mutex<Option<Window>> = Mutex::new(None);
    let tallies: Mutex<Vec<Tally>> = Mutex::new(Vec::new());
    let setup_errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let n = clients / threads + usize::from(t < clients % threads);
            let (barrier, window, tallies, setup_errors) =
                (&barrier, &window, &tallies, &setup_errors);
            scope.spawn(move || {
                if let Some(cpu) = spec.pin_cpu {
                    if let Err(e) = pin_current_thread(cpu) {
                        setup_errors.lock().unwrap().push(format!("pin: {e}"));
                    }
                }
                let mut conns = Vec::with_capacity(n);
                for _ in 0..n {
                    match Client::new(spec.socket, spec.opener, spec.cdb) {
                        Ok(c) => conns.push(c),
                        Err(e) => {
                            setup_errors.lock().unwrap().push(format!("connect: {e}"));
                            break;
                        }
                    }
                }
                barrier.wait(); // connected
                barrier.wait(); // window set
                let w = window.lock().unwrap();
                let w = w.as_ref().map(|w| (w.start, w.end, w.drain_until));
                let Some((start, end, drain_until)) = w else {
                    return;
                };
                let mut tally = Tally::default();
                if conns.len() == 1 {
                    drive_one(&mut conns[0], spec, start, end, drain_until, &mut tally);
                } else if !conns.is_empty() {
                    drive_many(&mut conns, spec, start, end, drain_until, &mut tally);
                }
                tallies.lock().unwrap().push(tally);
            });
        }
        barrier.wait();
        let ok = setup_errors.lock().unwrap().is_empty();
        if ok {
            let start = Instant::now() + spec.warmup;
            let end = start + spec.duration;
            *window.lock().unwrap() = Some(Window {
                start,
                end,
                drain_until: end + spec.drain,
            });
        }
        barrier.wait();
    });
    let mut r = LoadResult {
        clients,
        threads,
        elapsed: spec.duration,
        ..Default::default()
    };
    for e in setup_errors.into_inner().unwrap() {
        r.error_count += 1;
        r.errors.push(e);
    }
    let mut all = Vec::new();
    for t in tallies.into_inner().unwrap() {
        all.extend(t.lat_ns);
        for (s, n) in t.statuses {
            *r.statuses.entry(s).or_default() += n;
        }
        r.unfinished += t.unfinished;
        r.error_count += t.error_count;
        r.errors.extend(t.errors);
    }
    r.errors.truncate(10);
    r.requests = all.len() as u64;
    r.latencies = Latencies::from_ns(all);
    r
}

/// One connection, blocking reads with a short timeout so the clock is checked.
fn drive_one(
    c: &mut Client,
    spec: &LoadSpec<'_>,
    start: Instant,
    end: Instant,
    drain_until: Instant,
    tally: &mut Tally,
) {
    if let Err(e) = c.stream.set_read_timeout(Some(Duration::from_millis(50))) {
        tally.error(e);
        return;
    }
    if let Err(e) = c.send(Instant::now()) {
        tally.error(e);
        return;
    }
    loop {
        match c.receive() {
            Ok(Some(d)) => {
                if d.at >= start && d.at < end {
                    tally.record(&d, spec.expect_status);
                }
                if d.at >= end {
                    return;
                }
                if let Err(e) = c.send(d.at) {
                    tally.error(e);
                    return;
                }
            }
            Ok(None) => {
                if Instant::now() >= drain_until {
                    tally.unfinished += 1;
                    return;
                }
            }
            Err(e) => {
                tally.error(e);
                return;
            }
        }
    }
}

/// Many connections on one epoll set.
fn drive_many(
    conns: &mut [Client],
    spec: &LoadSpec<'_>,
    start: Instant,
    end: Instant,
    drain_until: Instant,
    tally: &mut Tally,
) {
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => return tally.error(e),
    };
    let now = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c
            .stream
            .set_nonblocking(true)
            .and_then(|()| {
                epoll
                    .add(&c.stream, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                    .map_err(io::Error::from)
            })
            .and_then(|()| c.send(now));
        if let Err(e) = r {
            return tally.error(e);
        }
    }
    let mut in_flight = conns.len();
    let mut events = vec![EpollEvent::empty(); conns.len().min(256)];
    while in_flight > 0 {
        let now = Instant::now();
        if now >= drain_until {
            tally.unfinished += in_flight;
            return;
        }
        let n = match epoll.wait(&mut events, EpollTimeout::from(50u8)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return tally.error(e),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let c = &mut conns[i];
            match c.receive() {
                Ok(None) => {}
                Ok(Some(d)) => {
                    if d.at >= start && d.at < end {
                        tally.record(&d, spec.expect_status);
                    }
                    if d.at < end {
                        if let Err(e) = c.send(d.at) {
                            tally.error(e);
                            let _ = epoll.delete(&c.stream);
                            in_flight -= 1;
                        }
                    } else {
                        in_flight -= 1;
                    }
                }
                Err(e) => {
                    tally.error(e);
                    let _ = epoll.delete(&c.stream);
                    in_flight -= 1;
                }
            }
        }
    }
}
