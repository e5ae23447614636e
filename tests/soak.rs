// SPDX-License-Identifier: MIT OR Apache-2.0
//! Abuse under load: 1,000 concurrent well-behaved clients × 100 commands each, while
//! hostile clients send garbage, truncated requests, hundreds of fds at once, drip bytes
//! slowly, and open and close connections in storms. The well-behaved clients must see
//! no error, and the daemon's fd count and memory must come back to their baseline.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).unwrap()[6..]
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// 1,000 connections on `workers` threads, `per_conn` commands each. Returns errors seen.
fn well_behaved(d: &Daemon, conns: usize, workers: usize, per_conn: usize) -> usize {
    let errors = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let sock = d.socket.clone();
            let errors = errors.clone();
            std::thread::spawn(move || {
                let f = devnull_rw();
                let mut clients: Vec<Client> = (0..conns / workers)
                    .map(|_| Client::connect(&sock))
                    .collect();
                let mut cdb = [0u8; 16];
                cdb[..10].copy_from_slice(&pr_in_cdb(0, 8));
                for _ in 0..per_conn {
                    // Pipeline across this thread's connections: all send, then all read.
                    for c in clients.iter_mut() {
                        c.send(&cdb, &[f.as_fd()]);
                    }
                    for c in clients.iter_mut() {
                        match c.reply() {
                            Some(r) if r.status == 2 && r.ksa() == (0x0b, 0, 6) => {}
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    errors.load(Ordering::Relaxed)
}

/// Hostile traffic until `stop`. Returns how many hostile actions were performed.
fn hostile(d: &Daemon, stop: Arc<AtomicBool>, kind: usize) -> std::thread::JoinHandle<usize> {
    let sock = d.socket.clone();
    std::thread::spawn(move || {
        let f = devnull_rw();
        let many: Vec<_> = (0..250).map(|_| devnull_rw()).collect();
        let many_fds: Vec<_> = many.iter().map(|f| f.as_fd()).collect();
        let mut n = 0;
        let mut seed = 0x2545_f491_4f6c_dd1du64 ^ kind as u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            match kind {
                // Garbage after (or instead of) the handshake.
                0 => {
                    let mut c = Client::connect_raw(&sock);
                    let len = (rand() % 300) as usize;
                    let junk: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                    let _ = c.s.write_all(&junk);
                }
                // Truncated requests, with the fd.
                1 => {
                    let mut c = d_connect(&sock);
                    let mut msg = [0u8; 16 + 24];
                    msg[..10].copy_from_slice(&pr_out_cdb(0, 0, 24));
                    let cut = 1 + (rand() % 38) as usize;
                    let _ = prhelper::sys::fdpass::send_with_fds(
                        c.s.as_fd(),
                        &msg[..cut],
                        &[f.as_fd()],
                        false,
                    );
                    let _ = c.s.stream().shutdown(std::net::Shutdown::Write);
                    let mut b = [0u8; 1];
                    let _ = c.s.read(&mut b);
                }
                // Hundreds of fds in one message.
                2 => {
                    let c = d_connect(&sock);
                    let cdb = [0x5eu8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0];
                    let _ =
                        prhelper::sys::fdpass::send_with_fds(c.s.as_fd(), &cdb, &many_fds, false);
                }
                // Slow drip: one byte at a time, then go away mid-request.
                3 => {
                    let mut c = d_connect(&sock);
                    let cdb = pr_in_cdb(0, 8);
                    for b in &cdb[..(rand() % 10) as usize] {
                        let _ = c.s.write_all(&[*b]);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                // Connect/close storm.
                _ => {
                    for _ in 0..20 {
                        drop(std::os::unix::net::UnixStream::connect(&sock));
                    }
                }
            }
        }
        n
    })
}

fn d_connect(sock: &std::path::Path) -> Client {
    Client::connect(sock)
}

/// One soak round: 1,000 clients x 100 commands amid hostile traffic. Returns
/// (errors, duration, hostile actions).
fn round(d: &Daemon) -> (usize, Duration, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let hostiles: Vec<_> = (0..5).map(|k| hostile(d, stop.clone(), k)).collect();
    let t = Instant::now();
    let errors = well_behaved(d, 1000, 50, 100);
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let hostile_actions: usize = hostiles.into_iter().map(|h| h.join().unwrap()).sum();
    (errors, took, hostile_actions)
}

/// The fd count once it has been the same for 200 ms (at most 5 s).
fn stable_fd_count(d: &Daemon) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut last, mut since) = (d.fd_count(), Instant::now());
    while since.elapsed() < Duration::from_millis(200) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let n = d.fd_count();
        if n != last {
            (last, since) = (n, Instant::now());
        }
    }
    last
}

/// Wait (bounded) until the connections are gone and surplus workers have retired.
/// Returns (fds, RSS KiB).
fn settle(d: &Daemon, fds0: usize, rss0: Option<u64>) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (fds, rss) = (d.fd_count(), rss_kib(d.pid()));
        let rss_ok = rss0.is_none_or(|r| rss <= r + 1024);
        // Retiring workers exit under the seccomp filter too.
        if (fds == fds0 && rss_ok && threads(d.pid()) <= 4) || Instant::now() > deadline {
            return (fds, rss);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn soak_1000_clients_with_hostile_traffic() {
    let d = Daemon::start(&[]);
    // Start-up's probe connection may still be open for a moment: take the baseline
    // once the count has held still.
    let fds0 = stable_fd_count(&d);
    // A first identical round sets the baseline: glibc keeps the stacks of exited
    // threads cached for reuse, so the first burst raises RSS once. A leak would show
    // as growth from one round to the next.
    let (errors, _, _) = round(&d);
    assert_eq!(errors, 0, "well-behaved clients saw errors (first round)");
    let (fds, rss0) = settle(&d, fds0, None);
    assert_eq!(fds, fds0, "fd count back to baseline after the first round");

    let (errors, took, hostile_actions) = round(&d);
    assert_eq!(errors, 0, "well-behaved clients saw errors");
    let (fds, rss) = settle(&d, fds0, Some(rss0));
    eprintln!(
        "soak: 100000 commands in {took:?}, {hostile_actions} hostile actions; fds {fds0} -> {fds}; \
         RSS {rss0} KiB -> {rss} KiB; threads now {}",
        threads(d.pid())
    );
    assert_eq!(fds, fds0, "fd count back to baseline");
    assert!(
        rss <= rss0 + 1024,
        "RSS back to baseline: {rss0} KiB -> {rss} KiB"
    );
    // main + supervisor + the minimum of two workers
    assert!(threads(d.pid()) <= 4, "surplus workers retired");
    assert!(d.socket.exists());
    let mut c = d.connect();
    let f = devnull_rw();
    assert_eq!(c.request(&pr_in_cdb(0, 8), f.as_fd(), &[]).status, 2);
}
