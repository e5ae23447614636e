//! Shared helpers for integration tests that run the real `prhelper` binary.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prhelper::proto::wire::REPLY_HEADER_SIZE;
use prhelper::sys::fdpass;

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

/// A raw protocol client that can misbehave.
pub struct Client {
    pub s: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let mut c = Self::connect_raw(path);
        let mut f = [0u8; 4];
        c.s.read_exact(&mut f).unwrap();
        assert_eq!(f, [0, 0, 0, 0], "supported features");
        c.s.write_all(&[0, 0, 0, 0]).unwrap();
        c
    }

    pub fn connect_raw(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { s }
    }

    pub fn send(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut off = fdpass::send_with_fds(self.s.as_fd(), bytes, fds, false).unwrap();
        while off < bytes.len() {
            off += fdpass::send_with_fds(self.s.as_fd(), &bytes[off..], &[], false).unwrap();
        }
    }

    pub fn request(&mut self, cdb: &[u8], fd: BorrowedFd<'_>, params: &[u8]) -> Reply {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        self.send(&c, &[fd]);
        if !params.is_empty() {
            self.send(params, &[]);
        }
        self.reply().expect("reply")
    }

    pub fn reply(&mut self) -> Option<Reply> {
        let mut h = [0u8; REPLY_HEADER_SIZE];
        self.s.read_exact(&mut h).ok()?;
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
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
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
