// SPDX-License-Identifier: MIT OR Apache-2.0
//! The lab part of the benchmark (issue 6, parts 3 and 4): what the helpers cost on
//! a real SCSI device, and how they behave when a device hangs.
//!
//! - [`perf_real_device`]: READ KEYS and REGISTER/unregister round trips on a LIO
//!   LUN, direct SG_IO against the C helper against prhelper, at 1 and 8 clients,
//!   in interleaved rounds. Under TCG absolute figures mean nothing: it reports
//!   ratios only, and asserts none.
//! - [`hung_device`]: 100, then 200 clients stuck on a dm-multipath map whose only
//!   path failed (`queue_if_no_path`), while 8 other clients run READ KEYS on a
//!   healthy LUN; then SIGTERM. prhelper must keep serving the others and new
//!   connections, and exit 0 within 10 s; the C helper is measured for contrast.
//!
//! Each case prints a report table between `==== report NAME ====` lines (the VM
//! cannot write to the project tree, so the table lives in the console log,
//! `target/lab/run-console.log`).
//!
//! The helpers under test are `target/<PRHELPER_LAB_PROFILE>/prhelper` (debug by
//! default; set `PRHELPER_LAB_PROFILE=release` after `cargo build --release` for
//! figures worth quoting) and Debian's `/usr/bin/qemu-pr-helper`.

use prhelper::client::Client;
use prhelper::sys::sgio::{self, Data};
use prhelper_bench::load::{self, LoadResult, LoadSpec};
use prhelper_bench::stats::{median, spread_pct, Latencies};
use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::{ScsiDevice, SharedLun};
use prhelper_lab::util::{read_attr, run, run_ok, scratch_dir, target_bin_dir, wait_for};
use prhelper_lab::{bail, ensure, Result};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// READ KEYS allocation length (as in the host benchmark).
const ALLOC: u16 = 1024;

fn prhelper_bin() -> PathBuf {
    target_bin_dir().join("prhelper")
}

/// PERSISTENT RESERVE OUT, REGISTER, 24-byte parameter list.
fn register_cdb() -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5f;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    cdb
}

/// Basic PR OUT parameter list: RESERVATION KEY `key`, SERVICE ACTION
/// RESERVATION KEY `sa_key` (REGISTER with `key` and 0 unregisters).
fn register_params(key: u64, sa_key: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// `Threads:` of /proc/PID/status (0 if unreadable).
fn thread_count(pid: u32) -> usize {
    read_attr(Path::new(&format!("/proc/{pid}/status")))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn today() -> String {
    run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default()
}

fn print_report(name: &str, text: &str) {
    println!("==== report {name} ====");
    print!("{text}");
    println!("==== end report {name} ====");
}

/// If a case is still running after `limit`, print the kernel stacks of every
/// task in uninterruptible sleep (a hung LIO or dm command shows there; the
/// console's log level hides the kernel's own hung-task traces).
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    fn start(name: &'static str, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!("{name}: still running after {limit:?}; tasks in D state:");
                eprint!("{}", blocked_tasks());
            }
        });
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

/// `comm`, tid and kernel stack of every task in state D.
fn blocked_tasks() -> String {
    let mut out = String::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // "tid (comm) S ...": the state follows the last ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            if rest.trim_start().starts_with('D') {
                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                let _ = writeln!(out, "  {head}) D\n{}", stack.trim_end());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Part 3: real device

/// How a client reaches the device.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via<'a> {
    Direct,
    Helper(&'a Path),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// PR IN READ KEYS.
    ReadKeys,
    /// REGISTER a key, then unregister it: two commands. Each client has its
    /// own I_T nexus (LIO on 6.1 hangs with concurrent registrations through
    /// one nexus).
    RegisterPair,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::ReadKeys => "READ KEYS",
            Op::RegisterPair => "REGISTER+unreg.",
        }
    }
}

/// One closed-loop client: its own device fd and, through a helper, its own
/// connection.
struct Worker {
    dev: File,
    helper: Option<Client>,
    key: u64,
    buf: Vec<u8>,
}

impl Worker {
    fn new(via: Via<'_>, dev: &Path, key: u64) -> Result<Worker> {
        let helper = match via {
            Via::Direct => None,
            Via::Helper(sock) => Some(
                Client::connect_with_timeouts(
                    sock,
                    Some(Duration::from_secs(30)),
                    Some(Duration::from_secs(30)),
                )
                .map_err(|e| e.to_string())?,
            ),
        };
        Ok(Worker {
            dev: open_rw(dev)?,
            helper,
            key,
            buf: vec![0; usize::from(ALLOC)],
        })
    }

    /// One command; anything but GOOD is an error.
    fn command(&mut self, cdb: &[u8; 16], data_out: &[u8]) -> Result<()> {
        let pr_in = cdb[0] == 0x5e;
        match &mut self.helper {
            None => {
                let mut sense = [0u8; 96];
                let data = if pr_in {
                    Data::FromDevice(&mut self.buf)
                } else {
                    Data::ToDevice(data_out)
                };
                let r = sgio::sg_io(self.dev.as_fd(), cdb, data, &mut sense, 30_000);
                let o = r.outcome;
                ensure!(
                    o.errno.is_none() && o.status == 0 && o.host_status == 0,
                    "direct SG_IO {:#04x}/{:#04x}: {o:?}",
                    cdb[0],
                    cdb[1]
                );
            }
            Some(c) => {
                let alloc = if pr_in { usize::from(ALLOC) } else { 0 };
                let r = c
                    .execute(self.dev.as_fd(), cdb, data_out, alloc)
                    .map_err(|e| e.to_string())?;
                ensure!(
                    r.is_good(),
                    "helper {:#04x}/{:#04x}: status {}",
                    cdb[0],
                    cdb[1],
                    r.status
                );
            }
        }
        Ok(())
    }

    fn op(&mut self, op: Op) -> Result<()> {
        match op {
            Op::ReadKeys => self.command(&load::read_keys_cdb(ALLOC), &[]),
            Op::RegisterPair => {
                self.command(&register_cdb(), &register_params(0, self.key))?;
                self.command(&register_cdb(), &register_params(self.key, 0))
            }
        }
    }
}

/// One measurement: operations completed in the window and their latencies.
struct Sample {
    rps: f64,
    lat: Latencies,
}

/// `clients` closed-loop threads for `warmup + dur`; ops completing inside the
/// last `dur` are counted. Client `i` uses `devs[i]`.
fn closed_loop(
    via: Via<'_>,
    op: Op,
    devs: &[PathBuf],
    clients: usize,
    pin: Option<usize>,
    warmup: Duration,
    dur: Duration,
) -> Result<Sample> {
    let barrier = Barrier::new(clients);
    let lat: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..clients {
            let (barrier, lat, errors) = (&barrier, &lat, &errors);
            let dev = &devs[i % devs.len()];
            s.spawn(move || {
                let worker = set_affinity(0, pin)
                    .map_err(|e| format!("pin: {e}"))
                    .and_then(|()| Worker::new(via, dev, 0x1000 + i as u64));
                barrier.wait();
                let mut w = match worker {
                    Ok(w) => w,
                    Err(e) => return errors.lock().unwrap().push(e),
                };
                let start = Instant::now() + warmup;
                let end = start + dur;
                let mut mine = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if let Err(e) = w.op(op) {
                        return errors.lock().unwrap().push(e);
                    }
                    let t1 = Instant::now();
                    if t1 >= end {
                        break;
                    }
                    if t1 >= start {
                        mine.push((t1 - t0).as_nanos().min(u128::from(u32::MAX)) as u32);
                    }
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    if let Some(e) = errors.into_inner().unwrap().into_iter().next() {
        bail!("{} x{clients}: {e}", op.name());
    }
    let lat = Latencies::from_ns(lat.into_inner().unwrap());
    Ok(Sample {
        rps: lat.len() as f64 / dur.as_secs_f64(),
        lat,
    })
}

/// Pin every thread of process `pid` to `cpu`, or let them run anywhere
/// (`None`). Threads it starts later inherit their creator's mask.
fn pin_process(pid: u32, cpu: Option<usize>) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        set_affinity(tid, cpu).map_err(|e| format!("sched_setaffinity({tid}): {e}"))?;
    }
    Ok(())
}

/// sched_setaffinity(2) on `tid` (0: the calling thread).
fn set_affinity(tid: libc::pid_t, cpu: Option<usize>) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for c in 0..cpus {
        if cpu.map_or(true, |p| p == c) {
            // SAFETY: c < CPU_SETSIZE for any CPU count this VM has.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Part 3: READ KEYS and REGISTER/unregister on a LIO LUN, direct SG_IO vs the C
/// helper vs prhelper, 1 and 8 clients, interleaved rounds. Reports ratios.
pub fn perf_real_device() -> Result<()> {
    const ROUNDS: usize = 5;
    let warmup = Duration::from_millis(200);
    let dur = Duration::from_secs(1);

    let dir = scratch_dir("perf_real_device")?;
    let _watchdog = Watchdog::start("perf_real_device", Duration::from_secs(300));
    // One LU, one I_T nexus per client: 8 tcm_loop paths.
    let lun = SharedLun::new("perf", 64 << 20, 8)?;
    let devs: Vec<PathBuf> = (0..8).map(|i| lun.device(i).disk.clone()).collect();
    let c = Helper::start(Path::new(C_HELPER), &dir.join("c.sock"), &[])?;
    let p = Helper::start(&prhelper_bin(), &dir.join("prh.sock"), &[])?;
    // The first command after a LUN appears may get a UNIT ATTENTION.
    for dev in &devs {
        let _ = Worker::new(Via::Direct, dev, 1).and_then(|mut w| w.op(Op::ReadKeys));
    }

    let vias = [
        ("direct", Via::Direct),
        ("C", Via::Helper(c.socket())),
        ("prh", Via::Helper(p.socket())),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "perf_real_device, {}: one LIO LU, client i on tcm_loop path i ({}..), TCG; prhelper = {}",
        today(),
        devs[0].display(),
        prhelper_bin().display()
    );
    let _ = writeln!(
        out,
        "{ROUNDS} interleaved rounds (direct, C, prh) of {dur:?} after {warmup:?}; \
         each figure is the median of per-round ratios; cl 1p = 1 client, everything on CPU 0"
    );
    let _ = writeln!(
        out,
        "REGISTER+unreg. = REGISTER a key, then unregister it (one op = 2 commands)"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>3} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>11} | {:>14}",
        "op", "cl", "req/s", "", "", "p50 lat.", "", "", "added p50", "req/s spread%"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>3} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>11} | {:>14}",
        "", "", "prh/C", "prh/dir", "C/dir", "prh/C", "prh/dir", "C/dir", "prh/C", "dir/C/prh"
    );
    for op in [Op::ReadKeys, Op::RegisterPair] {
        for (clients, pinned) in [(1, true), (1, false), (8, false)] {
            // "1 pinned": both helpers, all their threads, and the client on
            // CPU 0, as in the host benchmark (a cross-CPU wake-up of a
            // halted vCPU dominates a 1-client round trip otherwise).
            let pin = pinned.then_some(0);
            for h in [&c, &p] {
                pin_process(h.pid(), pin)?;
            }
            // samples[v][round]
            let mut rps = [[f64::NAN; ROUNDS]; 3];
            let mut p50 = [[f64::NAN; ROUNDS]; 3];
            for round in 0..ROUNDS {
                for (v, (_, via)) in vias.iter().enumerate() {
                    let s = closed_loop(*via, op, &devs, clients, pin, warmup, dur)?;
                    rps[v][round] = s.rps;
                    p50[v][round] = us(s.lat.percentile(50.0));
                }
            }
            let ratio = |m: &[[f64; ROUNDS]; 3], a: usize, b: usize| {
                median(&(0..ROUNDS).map(|r| m[a][r] / m[b][r]).collect::<Vec<_>>())
            };
            let added = median(
                &(0..ROUNDS)
                    .map(|r| (p50[2][r] - p50[0][r]) / (p50[1][r] - p50[0][r]))
                    .collect::<Vec<_>>(),
            );
            let mode = format!("{clients}{}", if pinned { "p" } else { "" });
            // Absolute figures (TCG: for diagnosis only, not for the report).
            println!(
                "perf_real_device: {} x{mode}: median req/s direct/C/prh {:.0}/{:.0}/{:.0}, p50 us {:.0}/{:.0}/{:.0}",
                op.name(),
                median(&rps[0]),
                median(&rps[1]),
                median(&rps[2]),
                median(&p50[0]),
                median(&p50[1]),
                median(&p50[2]),
            );
            let _ = writeln!(
                out,
                "{:<16} {:>3} | {:>9.2} {:>9.2} {:>9.2} | {:>9.2} {:>9.2} {:>9.2} | {:>11.2} | {:>4.0}/{:>4.0}/{:>4.0}",
                op.name(),
                mode,
                ratio(&rps, 2, 1),
                ratio(&rps, 2, 0),
                ratio(&rps, 1, 0),
                ratio(&p50, 2, 1),
                ratio(&p50, 2, 0),
                ratio(&p50, 1, 0),
                added,
                spread_pct(&rps[0]),
                spread_pct(&rps[1]),
                spread_pct(&rps[2]),
            );
        }
    }
    let _ = writeln!(
        out,
        "added p50 = (helper p50 - direct p50), prhelper's over the C helper's; \
         spread% = (max - min) / median of req/s over rounds"
    );
    print_report("perf_real_device", &out);
    c.stop()?;
    p.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 4: hung device

/// A dm-multipath map with `queue_if_no_path` over one path. Dropping it
/// reinstates the path (so nothing stays queued) and removes the map.
struct MpathMap {
    name: String,
    /// `/dev/dm-N` (no udev, so no /dev/mapper link).
    dev: PathBuf,
    /// The path's MAJ:MIN.
    path: String,
}

impl MpathMap {
    fn create(name: &str, leg: &ScsiDevice) -> Result<MpathMap> {
        if !Path::new("/sbin/dmsetup").exists() && !Path::new("/usr/sbin/dmsetup").exists() {
            bail!("dmsetup not found: install the dmsetup package on the host");
        }
        let sd = leg
            .disk
            .file_name()
            .ok_or("disk without a name")?
            .to_string_lossy()
            .into_owned();
        let sys = PathBuf::from("/sys/block").join(&sd);
        let sectors = read_attr(&sys.join("size"))?;
        let path = read_attr(&sys.join("dev"))?;
        let table =
            format!("0 {sectors} multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 {path} 1");
        run_ok(
            "dmsetup",
            &["--noudevsync", "create", name, "--table", &table],
        )?;
        let mut map = MpathMap {
            name: name.to_string(),
            dev: PathBuf::new(),
            path,
        };
        let majmin = run_ok(
            "dmsetup",
            &["info", "-c", "--noheadings", "-o", "major,minor", name],
        )?
        .stdout
        .trim()
        .to_string();
        let uevent = read_attr(Path::new(&format!("/sys/dev/block/{majmin}/uevent")))?;
        let devname = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .ok_or_else(|| format!("no DEVNAME for {majmin}: {uevent}"))?;
        map.dev = PathBuf::from("/dev").join(devname);
        let dev = map.dev.clone();
        wait_for(
            &format!("{}", dev.display()),
            Duration::from_secs(10),
            || Ok(dev.exists().then_some(())),
        )?;
        Ok(map)
    }

    fn message(&self, msg: &str) -> Result<()> {
        run_ok("dmsetup", &["message", &self.name, "0", msg, &self.path]).map(|_| ())
    }

    fn fail_path(&self) -> Result<()> {
        self.message("fail_path")
    }

    fn reinstate_path(&self) -> Result<()> {
        self.message("reinstate_path")
    }

    fn status(&self) -> String {
        run("dmsetup", &["status", &self.name])
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for MpathMap {
    fn drop(&mut self) {
        let _ = self.reinstate_path();
        match run("dmsetup", &["--noudevsync", "remove", &self.name]) {
            Ok(o) if o.status == 0 => {}
            Ok(o) => eprintln!("dm: {}", o.describe()),
            Err(e) => eprintln!("dm: {e}"),
        }
    }
}

/// New connections during a phase: each connects, does the handshake and one
/// READ KEYS on the healthy LUN.
#[derive(Default)]
struct Probes {
    attempted: usize,
    served: usize,
    worst: Duration,
    first_error: Option<String>,
}

/// Up to `n` fresh clients one after another, each given `timeout`; stops
/// after 2 consecutive failures (a helper that serves nobody would otherwise
/// cost n timeouts).
fn probe_new_clients(socket: &Path, dev: &Path, n: usize, timeout: Duration) -> Result<Probes> {
    let file = open_rw(dev)?;
    let mut p = Probes::default();
    let mut failures_in_a_row = 0;
    for _ in 0..n {
        p.attempted += 1;
        let t0 = Instant::now();
        let r = Client::connect_with_timeouts(socket, Some(timeout), Some(timeout))
            .and_then(|mut c| c.read_keys(file.as_fd()));
        match r {
            Ok(_) => {
                p.served += 1;
                p.worst = p.worst.max(t0.elapsed());
                failures_in_a_row = 0;
            }
            Err(e) => {
                p.first_error.get_or_insert_with(|| e.to_string());
                failures_in_a_row += 1;
                if failures_in_a_row == 2 {
                    break;
                }
            }
        }
    }
    Ok(p)
}

/// A client whose PR IN on the hung map was sent and never answered.
type Stuck = load::Client;

fn add_stuck(socket: &Path, map: &File, n: usize, into: &mut Vec<Stuck>) -> Result<()> {
    let map = map
        .try_clone()
        .map_err(|e| format!("dup of the map's fd: {e}"))?;
    // The generator wants a 'static opener: it owns its own fd.
    let opener = move || -> io::Result<OwnedFd> { Ok(map.try_clone()?.into()) };
    for _ in 0..n {
        let mut c = load::Client::new(socket, &opener, load::read_keys_cdb(ALLOC))
            .map_err(|e| format!("stuck client {}: connect: {e}", into.len()))?;
        c.send(Instant::now())
            .map_err(|e| format!("stuck client {}: send: {e}", into.len()))?;
        into.push(c);
    }
    Ok(())
}

/// How many stuck clients got a reply or lost their connection (should be 0).
fn answered(stuck: &mut [Stuck]) -> usize {
    stuck
        .iter_mut()
        .map(|c| {
            let _ = c.stream().set_nonblocking(true);
            !matches!(c.receive(), Ok(None))
        })
        .filter(|&a| a)
        .count()
}

/// Wait (at most 10 s) until the helper's thread count has not changed for 0.5 s.
fn settle_threads(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = thread_count(pid);
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
        let n = thread_count(pid);
        if n != last {
            last = n;
            since = Instant::now();
        }
    }
    last
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = read_attr(Path::new("/proc/stat")).unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

struct Phase {
    stuck: usize,
    /// CPU busy (all vCPUs) during the healthy load, percent.
    cpu: f64,
    /// 8 direct SG_IO clients on the healthy LUN right after: what the VM
    /// itself can still do with that many stuck commands.
    direct_rps: f64,
    threads: usize,
    load: LoadResult,
    probes: Probes,
    answered: usize,
}

/// What SIGTERM did.
#[derive(Default)]
struct Termination {
    socket_gone: Option<Duration>,
    /// Time from SIGTERM to exit, if it exited within the first wait.
    exited: Option<Duration>,
    /// C helper: time from reinstating the path to exit.
    after_reinstate: Option<Duration>,
    status: String,
}

struct HelperRun {
    name: &'static str,
    phases: Vec<Phase>,
    term: Termination,
}

/// Phases of 0, 100, 200 stuck clients, then SIGTERM waited for at most
/// `term_wait`.
fn hung_run(
    name: &'static str,
    mut helper: Helper,
    healthy: &Path,
    map: &MpathMap,
    is_prhelper: bool,
) -> Result<HelperRun> {
    const HEALTHY_CLIENTS: usize = 8;
    let socket = helper.socket().to_path_buf();
    let pid = helper.pid();
    let healthy_file = open_rw(healthy)?;
    let opener = move || -> io::Result<OwnedFd> { Ok(healthy_file.try_clone()?.into()) };
    let map_file = File::open(&map.dev).map_err(|e| format!("open {}: {e}", map.dev.display()))?;
    let mut stuck: Vec<Stuck> = Vec::new();
    let mut phases = Vec::new();
    for target in [0, 100, 200] {
        add_stuck(&socket, &map_file, target - stuck.len(), &mut stuck)?;
        let threads = settle_threads(pid);
        let spec = LoadSpec {
            socket: &socket,
            clients: HEALTHY_CLIENTS,
            threads: 0,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(3),
            cdb: load::read_keys_cdb(ALLOC),
            opener: &opener,
            pin_cpu: None,
            expect_status: Some(0),
            drain: Duration::from_secs(2),
        };
        let (b0, t0) = cpu_jiffies();
        let load = load::run(&spec);
        let (b1, t1) = cpu_jiffies();
        let cpu = 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        let direct = closed_loop(
            Via::Direct,
            Op::ReadKeys,
            &[healthy.to_path_buf()],
            HEALTHY_CLIENTS,
            None,
            Duration::from_millis(200),
            Duration::from_secs(1),
        )?;
        let probes = probe_new_clients(&socket, healthy, 10, Duration::from_secs(3))?;
        let answered = answered(&mut stuck);
        println!(
            "hung_device: {name}, {target} stuck: {:.0} req/s, p50 {:?}, unfinished {}, errors {}, \
             new clients {}/{}, threads {threads}, stuck answered {answered}, cpu {cpu:.0}%, direct {:.0} req/s",
            load.rps(),
            load.latencies.percentile(50.0),
            load.unfinished,
            load.error_count,
            probes.served,
            probes.attempted,
            direct.rps
        );
        if is_prhelper {
            ensure!(
                helper.is_running(),
                "prhelper died with {target} stuck clients; its log:\n{}",
                helper.log_text()
            );
            ensure!(
                load.error_count == 0 && load.unfinished == 0 && load.requests > 0,
                "prhelper stopped serving other clients with {target} stuck: {} replies, \
                 {} unfinished, errors {:?}",
                load.requests,
                load.unfinished,
                load.errors
            );
            ensure!(
                answered == 0,
                "{answered} of {target} commands on the hung map were answered: the device is not hung"
            );
            ensure!(
                probes.served == probes.attempted,
                "prhelper did not serve a new connection with {target} stuck: {}/{} served, {:?}",
                probes.served,
                probes.attempted,
                probes.first_error
            );
        }
        phases.push(Phase {
            stuck: target,
            cpu,
            direct_rps: direct.rps,
            threads,
            load,
            probes,
            answered,
        });
    }

    // SIGTERM with 200 clients stuck.
    let mut term = Termination::default();
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child, which has not been reaped (is_running
    // above saw it alive and Helper reaps only through try_wait/wait).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let first_wait = Duration::from_secs(if is_prhelper { 15 } else { 10 });
    while t0.elapsed() < first_wait {
        if term.socket_gone.is_none() && !socket.exists() {
            term.socket_gone = Some(t0.elapsed());
        }
        if !helper.is_running() {
            term.exited = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if term.exited.is_none() && !is_prhelper {
        // The C helper waits for its stuck commands: give it its device back.
        map.reinstate_path()?;
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_secs(30) {
            if !helper.is_running() {
                term.after_reinstate = Some(t1.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Reaps (or, if still running, SIGTERM + SIGKILL after 5 s).
    term.status = match helper.stop() {
        Ok(s) => s.to_string(),
        Err(e) => e,
    };
    drop(stuck);
    if is_prhelper {
        let exited = term.exited;
        ensure!(
            exited.is_some_and(|t| t <= Duration::from_secs(10)),
            "prhelper did not exit within 10 s of SIGTERM with 200 stuck clients (exit after {exited:?}, {})",
            term.status
        );
        ensure!(
            term.status == "exit status: 0",
            "prhelper exited with {} after SIGTERM",
            term.status
        );
    }
    Ok(HelperRun { name, phases, term })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn hung_report(runs: &[HelperRun], map: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hung_device, {}: 8 closed-loop clients, READ KEYS on a healthy LIO LUN, 3 s per phase (after 0.3 s)",
        today()
    );
    let _ = writeln!(
        out,
        "stuck clients: READ KEYS on {map} (dm-multipath, queue_if_no_path, only path failed); prhelper = {} (default seccomp, --max-threads 512, --multipath=off)",
        prhelper_bin().display()
    );
    let _ = writeln!(
        out,
        "{:<15} {:>5} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>5} | {:>9} {:>9} | {:>7} | {:>5} | {:>4} | {:>6}",
        "server", "stuck", "req/s", "x0", "p50 ms", "x0", "p99 ms", "x0", "unfin", "new conn", "worst ms", "threads", "ans.", "cpu%", "dir x0"
    );
    for r in runs {
        let base = &r.phases[0].load;
        for p in &r.phases {
            let l = &p.load;
            let (p50, p99) = (l.latencies.percentile(50.0), l.latencies.percentile(99.0));
            let fmt_lat = |d: Duration, b: Duration| {
                if l.requests == 0 {
                    format!("{:>8} {:>6}", "-", "-")
                } else {
                    format!("{:>8.2} {:>6.2}", ms(d), ms(d) / ms(b))
                }
            };
            let _ = writeln!(
                out,
                "{:<15} {:>5} | {:>8.0} {:>6.2} | {} | {} | {:>5} | {:>4}/{:<4} {:>9} | {:>7} | {:>5} | {:>4.0} | {:>6.2}",
                r.name,
                p.stuck,
                l.rps(),
                l.rps() / base.rps(),
                fmt_lat(p50, base.latencies.percentile(50.0)),
                fmt_lat(p99, base.latencies.percentile(99.0)),
                l.unfinished,
                p.probes.served,
                p.probes.attempted,
                if p.probes.served > 0 {
                    format!("{:.1}", ms(p.probes.worst))
                } else {
                    "-".into()
                },
                p.threads,
                p.answered,
                p.cpu,
                p.direct_rps / r.phases[0].direct_rps,
            );
        }
    }
    let _ = writeln!(
        out,
        "x0 = ratio to the same server with 0 stuck; unfin = healthy requests unanswered 2 s after the phase; \
         new conn = fresh clients served / tried (3 s timeout, stop after 2 failures); ans. = stuck clients answered (expected 0); \
         cpu% = VM CPU busy during the phase; dir x0 = 8 direct SG_IO clients on the healthy LUN, 1 s, vs 0 stuck \
         (each stuck SG_IO on the map polls every 10 ms in dm_prepare_ioctl, so stuck commands cost the kernel CPU whoever holds them)"
    );
    for r in runs {
        let t = &r.term;
        let f = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        let _ = writeln!(
            out,
            "SIGTERM, 200 stuck, {}: socket removed after {}, exited after {}{}; {}",
            r.name,
            f(t.socket_gone),
            f(t.exited),
            if t.exited.is_none() {
                format!(
                    " (not within 10 s); path reinstated -> exited {} later",
                    f(t.after_reinstate)
                )
            } else {
                String::new()
            },
            t.status
        );
    }
    out
}

/// Part 4: 100 then 200 clients stuck on a hung multipath map; the other
/// clients' service, new connections, and SIGTERM, for prhelper (asserted) and
/// the C helper (reported).
pub fn hung_device() -> Result<()> {
    let dir = scratch_dir("hung_device")?;
    let _watchdog = Watchdog::start("hung_device", Duration::from_secs(240));
    let healthy = SharedLun::new("hung-ok", 32 << 20, 1)?;
    let hung = SharedLun::new("hung-mp", 32 << 20, 1)?;
    let map = MpathMap::create("prh-hung", hung.device(0))?;
    // A first command on each, while every path works (UNIT ATTENTION, if any).
    for dev in [&healthy.device(0).disk, &map.dev] {
        let _ = Worker::new(Via::Direct, dev, 1).and_then(|mut w| w.op(Op::ReadKeys));
    }
    map.fail_path()?;
    let status = map.status();
    ensure!(
        status.contains(" F "),
        "path not failed after fail_path: {status}"
    );
    println!("hung_device: map {} ({status})", map.dev.display());

    let healthy_disk = healthy.device(0).disk.clone();
    let mut runs = Vec::new();
    // prhelper first: its run leaves the path failed for the C helper's. With its
    // multipath support on, prhelper would send these commands to the path device
    // itself (which works: only dm failed it) and answer them; the hang under test is
    // SG_IO on the map, which is what --multipath=off (and the C helper) do.
    let p = Helper::start(&prhelper_bin(), &dir.join("prh.sock"), &["--multipath=off"])?;
    let prh = hung_run("prhelper", p, &healthy_disk, &map, true);
    let prh = match prh {
        Ok(r) => r,
        Err(e) => {
            map.reinstate_path()?;
            return Err(e);
        }
    };
    runs.push(prh);
    let c = Helper::start(Path::new(C_HELPER), &dir.join("c.sock"), &[])?;
    runs.push(hung_run("qemu-pr-helper", c, &healthy_disk, &map, false)?);
    print_report(
        "hung_device",
        &hung_report(&runs, &map.dev.to_string_lossy()),
    );
    Ok(())
}
