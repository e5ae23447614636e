// SPDX-License-Identifier: MIT OR Apache-2.0
//! Shared helpers for integration tests that run the real `prhelper` binary.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prhelper::client::RawConn;
use prhelper::proto::wire::pad_cdb;

pub const BIN: &str = env!("CARGO_BIN_EXE_prhelper");

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    /// stderr, drained continuously so the daemon never blocks on a full pipe.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_with(extra, |_| {})
    }

    pub fn start_at(socket: PathBuf, extra: &[&str]) -> Daemon {
        Self::start_full(tempfile::tempdir().unwrap(), socket, extra, |_| {})
    }

    pub fn start_with(extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("pr.sock");
        Self::start_full(dir, socket, extra, tweak)
    }

    fn start_full(
        dir: tempfile::TempDir,
        socket: PathBuf,
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("-k")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut d = Daemon::adopt(child, socket, dir);
        d.wait_for_socket();
        d
    }

    /// Wrap a spawned daemon, draining its stderr (if piped) in the background.
    pub fn adopt(mut child: Child, socket: PathBuf, dir: tempfile::TempDir) -> Daemon {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Daemon {
            child,
            socket,
            dir,
            log,
        }
    }

    pub fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until it accepts (a stale socket file may already be there).
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                panic!("daemon exited early ({st}): {}", self.stderr_text());
            }
            assert!(Instant::now() < deadline, "socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Open fds of the daemon process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    pub fn signal(&self, sig: i32) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
    }

    /// Wait for exit (bounded) and return the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "daemon did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: i32,
    pub size: u32,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl Reply {
    /// (key, asc, ascq) of fixed-format sense.
    pub fn ksa(&self) -> (u8, u8, u8) {
        (self.sense[2] & 0xf, self.sense[12], self.sense[13])
    }
}

/// A raw protocol client that can misbehave: the library's [`RawConn`] with the
/// assertions these tests want (every step must succeed, replies decoded loosely).
pub struct Client {
    pub s: RawConn,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let mut c = Self::connect_raw(path);
        assert_eq!(c.s.handshake().unwrap(), 0, "supported features");
        c
    }

    pub fn connect_raw(path: &Path) -> Client {
        let s = RawConn::connect(path).unwrap();
        s.set_timeouts(Some(Duration::from_secs(20)), None).unwrap();
        Client { s }
    }

    pub fn send(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        self.s.send_all_with_fds(bytes, fds).unwrap();
    }

    pub fn request(&mut self, cdb: &[u8], fd: BorrowedFd<'_>, params: &[u8]) -> Reply {
        let c = pad_cdb(cdb).expect("CDB of 1..=16 bytes");
        self.send(&c, &[fd]);
        if !params.is_empty() {
            self.send(params, &[]);
        }
        self.reply().expect("reply")
    }

    /// The next reply, header fields as sent (no validation); `None` at EOF.
    pub fn reply(&mut self) -> Option<Reply> {
        let h = self.s.read_header_raw().ok()?;
        let status = i32::from_be_bytes(h[0..4].try_into().unwrap());
        let size = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = vec![0u8; size as usize];
        self.s.read_exact(&mut data).ok()?;
        Some(Reply {
            status,
            size,
            sense: h[8..].to_vec(),
            data,
        })
    }

    /// True if the helper closed the connection (EOF or reset) without replying.
    pub fn is_closed(&mut self) -> bool {
        match self.s.wait_closed(Duration::from_secs(20)) {
            Ok(closed) => closed,
            // Data instead of EOF: not closed.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => false,
            Err(_) => true,
        }
    }
}

pub fn pr_in_cdb(sa: u8, alloc: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5e;
    c[1] = sa;
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    c
}

pub fn pr_out_cdb(sa: u8, ty: u8, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = ty;
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

pub fn devnull_rw() -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap()
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
