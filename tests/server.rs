// SPDX-License-Identifier: MIT OR Apache-2.0
//! The server in-process with a fake device backend: what QEMU 11's reservation migration
//! sends, replies that can never exceed the allocation length, and a device that never
//! answers while other clients keep being served.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{pr_in_cdb, pr_out_cdb, Client};
use prhelper::daemon::server::{self, Config, Server};
use prhelper::dev::{Backend, Device, Outcome};
use prhelper::scsi::sense::{Sense, SenseCode};
use prhelper::scsi::Status;

/// A device with `keys` registered keys. Commands on a FIFO fd hang until released.
#[derive(Default)]
struct Fake {
    keys: Mutex<Vec<u64>>,
    log: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    gate: (Mutex<bool>, Condvar),
    /// Pretend the device transferred this much regardless of the allocation length.
    overreport: Mutex<Option<usize>>,
}

impl Fake {
    fn hang_if_fifo(&self, dev: Device<'_>) {
        let st = nix::sys::stat::fstat(dev.fd.as_raw_fd()).unwrap();
        if st.st_mode & libc::S_IFMT == libc::S_IFIFO {
            let (m, c) = &self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
        }
    }

    fn release(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl Backend for Fake {
    fn pr_in(&self, dev: Device<'_>, cdb: &[u8; 16], buf: &mut [u8]) -> Outcome {
        self.hang_if_fifo(dev);
        self.log.lock().unwrap().push((cdb[..10].to_vec(), vec![]));
        let keys = self.keys.lock().unwrap();
        let mut full = Vec::new();
        full.extend_from_slice(&7u32.to_be_bytes());
        match cdb[1] {
            0 => {
                full.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
                for k in keys.iter() {
                    full.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => full.extend_from_slice(&0u32.to_be_bytes()),
            _ => return Outcome::check(SenseCode::INVALID_FIELD),
        }
        let n = full.len().min(buf.len());
        buf[..n].copy_from_slice(&full[..n]);
        let len = self.overreport.lock().unwrap().unwrap_or(n);
        Outcome {
            status: Status::GOOD,
            sense: Sense::default(),
            len: len.min(buf.len()),
        }
    }

    fn pr_out(&self, dev: Device<'_>, cdb: &[u8; 16], params: &[u8]) -> Outcome {
        self.hang_if_fifo(dev);
        self.log
            .lock()
            .unwrap()
            .push((cdb[..10].to_vec(), params.to_vec()));
        match cdb[1] & 0x1f {
            6 => {
                let key = u64::from_be_bytes(params[8..16].try_into().unwrap());
                self.keys.lock().unwrap().push(key);
                Outcome {
                    status: Status::GOOD,
                    sense: Sense::default(),
                    len: 0,
                }
            }
            4 => Outcome {
                status: Status::GOOD,
                sense: Sense::default(),
                len: 0,
            },
            _ => Outcome {
                status: Status::RESERVATION_CONFLICT,
                sense: Sense::default(),
                len: 0,
            },
        }
    }
}

struct Running {
    server: Arc<Server>,
    path: std::path::PathBuf,
    stop: UnixStream,
    _dir: tempfile::TempDir,
}

/// The fake is shared through a small forwarding backend.
struct Shared(Arc<Fake>);

impl Backend for Shared {
    fn pr_in(&self, dev: Device<'_>, cdb: &[u8; 16], buf: &mut [u8]) -> Outcome {
        self.0.pr_in(dev, cdb, buf)
    }
    fn pr_out(&self, dev: Device<'_>, cdb: &[u8; 16], params: &[u8]) -> Outcome {
        self.0.pr_out(dev, cdb, params)
    }
}

fn run(fake: Arc<Fake>, cfg: Config) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (sig_rd, sig_wr) = UnixStream::pair().unwrap();
    let backend = Box::new(Shared(fake));
    let server = Server::new(listener, sig_rd, backend, cfg, Box::new(|| {})).unwrap();
    server.spawn_workers().unwrap();
    Running {
        server: Arc::new(server),
        path,
        stop: sig_wr,
        _dir: dir,
    }
}

#[test]
fn qemu_11_migration_sequence() {
    let fake = Arc::new(Fake::default());
    fake.keys.lock().unwrap().extend(1..=20u64);
    let r = run(fake.clone(), Config::default());
    let mut c = Client::connect(&r.path);
    let dev = common::devnull_rw();

    // READ RESERVATION, allocation length 24.
    let rep = c.request(&pr_in_cdb(1, 24), dev.as_fd(), &[]);
    assert_eq!((rep.status, rep.size), (0, 8));
    // READ KEYS starting at 8 + 128 bytes: 20 keys need 168, so the reply is cut to 136
    // and its additional length says how much to ask for.
    let rep = c.request(&pr_in_cdb(0, 136), dev.as_fd(), &[]);
    assert_eq!((rep.status, rep.size), (0, 136));
    assert_eq!(u32::from_be_bytes(rep.data[4..8].try_into().unwrap()), 160);
    let rep = c.request(&pr_in_cdb(0, 168), dev.as_fd(), &[]);
    assert_eq!(rep.size, 168);
    assert_eq!(
        u64::from_be_bytes(rep.data[160..168].try_into().unwrap()),
        20
    );
    // REGISTER AND IGNORE EXISTING KEY with the source's key, then PREEMPT.
    let mut params = [0u8; 24];
    params[8..16].copy_from_slice(&0xabcdu64.to_be_bytes());
    let rep = c.request(&pr_out_cdb(6, 0, 24), dev.as_fd(), &params);
    assert_eq!((rep.status, rep.size), (0, 0));
    let mut params = [0u8; 24];
    params[0..8].copy_from_slice(&0xabcdu64.to_be_bytes());
    params[8..16].copy_from_slice(&0xabcdu64.to_be_bytes());
    let rep = c.request(&pr_out_cdb(4, 1, 24), dev.as_fd(), &params);
    assert_eq!((rep.status, rep.size), (0, 0));
    // A second REGISTER AND IGNORE whose conflict QEMU ignores.
    let rep = c.request(&pr_out_cdb(0, 0, 24), dev.as_fd(), &params);
    assert_eq!((rep.status, rep.size), (0x18, 0));

    let log = fake.log.lock().unwrap();
    let cdbs: Vec<_> = log
        .iter()
        .map(|(c, _)| (c[0], c[1], u16::from_be_bytes([c[7], c[8]])))
        .collect();
    assert_eq!(
        cdbs,
        vec![
            (0x5e, 1, 24),
            (0x5e, 0, 136),
            (0x5e, 0, 168),
            (0x5f, 6, 24),
            (0x5f, 4, 24),
            (0x5f, 0, 24)
        ]
    );
    assert_eq!(log[3].1, {
        let mut p = vec![0u8; 24];
        p[8..16].copy_from_slice(&0xabcdu64.to_be_bytes());
        p
    });
}

#[test]
fn reply_never_exceeds_allocation_length_even_if_the_backend_lies() {
    let fake = Arc::new(Fake::default());
    fake.keys.lock().unwrap().extend(1..=100u64);
    *fake.overreport.lock().unwrap() = Some(8192);
    let r = run(fake, Config::default());
    let mut c = Client::connect(&r.path);
    let dev = common::devnull_rw();
    for alloc in [0u16, 1, 7, 8, 9, 100, 808, 8192] {
        let rep = c.request(&pr_in_cdb(0, alloc), dev.as_fd(), &[]);
        assert!(
            rep.size as usize <= alloc as usize,
            "alloc {alloc}: size {}",
            rep.size
        );
    }
    // Non-GOOD PR IN: no data at all.
    let rep = c.request(&pr_in_cdb(2, 100), dev.as_fd(), &[]);
    assert_eq!((rep.status, rep.size), (2, 0));
}

#[test]
fn hung_device_does_not_stop_other_clients_or_shutdown() {
    let fake = Arc::new(Fake::default());
    let cfg = Config {
        max_threads: 256,
        shutdown_grace: Duration::from_millis(500),
        ..Config::default()
    };
    let r = run(fake.clone(), cfg);
    let (fifo_r, _fifo_w) = nix::unistd::pipe().unwrap();
    // 150 clients stuck on the hung device: more than the C helper's 64-thread pool.
    let mut stuck: Vec<Client> = (0..150).map(|_| Client::connect(&r.path)).collect();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&pr_in_cdb(0, 8));
    for c in stuck.iter_mut() {
        c.send(&cdb, &[fifo_r.as_fd()]);
    }
    // Wait until they are all inside the backend.
    let deadline = Instant::now() + Duration::from_secs(20);
    while r
        .server
        .stats()
        .busy
        .load(std::sync::atomic::Ordering::SeqCst)
        < 150
    {
        assert!(
            Instant::now() < deadline,
            "stuck commands did not all start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Everyone else, old and new connections, is served.
    let dev = common::devnull_rw();
    for _ in 0..20 {
        let mut c = Client::connect(&r.path);
        let rep = c.request(&pr_in_cdb(0, 8), dev.as_fd(), &[]);
        assert_eq!(rep.status, 0);
    }
    // Stop: bounded by the grace period, reporting the abandoned commands.
    server::stop_handle(&r.stop).unwrap();
    let t = Instant::now();
    let abandoned = r.server.wait();
    assert_eq!(abandoned, 150);
    assert!(t.elapsed() < Duration::from_secs(5));
    // New connections are refused once stopping.
    assert!(
        UnixStream::connect(&r.path).is_err() || {
            let mut c = Client::connect_raw(&r.path);
            c.is_closed()
        }
    );
    fake.release();
    for c in stuck.iter_mut() {
        // Commands already running complete and are answered.
        let rep = c.reply().unwrap();
        assert_eq!(rep.status, 0);
    }
}
