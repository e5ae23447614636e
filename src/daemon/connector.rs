// SPDX-License-Identifier: MIT OR Apache-2.0
//! The multipathd connector: a tiny process that keeps uid 0 so that connections to
//! multipathd can be reopened after `-u` (issue 13).
//!
//! multipathd takes the peer's credentials (SO_PEERCRED) when a client connects and
//! accepts PR commands only from uid 0. Once the daemon has changed to `-u USER`, it can
//! no longer open such a connection, and a multipathd restart would lose it for good. So,
//! before privileges are dropped, the daemon forks this process. It keeps uid 0 but no
//! capability at all (bounding set empty, no_new_privs), closes every fd but its end of a
//! socket pair, denies all filesystem access (Landlock) and runs under a seccomp filter of
//! about twenty system calls ([`super::seccomp::build_connector`]). Its only service: for
//! each byte read, connect to multipathd ([`multipathd::connect_direct`]) and pass the
//! connected socket back with SCM_RIGHTS, or an errno. It exits when the daemon closes its
//! end (and is killed if the daemon dies: PR_SET_PDEATHSIG).
//!
//! What the workers gain is exactly one thing: a socket connected to multipathd as root,
//! which is what they held anyway before the restart. The connector cannot open files, run
//! programs, or be asked anything else; uid 0 without capabilities still owns root's files,
//! which Landlock and the seccomp filter keep out of reach.
//!
//! Reply frame: 1 status byte (0: fd attached; 1: failed) and the errno as a native i32.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use nix::unistd::Pid;

use crate::dev::mpath::multipathd::{self, Dialer};
use crate::sys::fdpass;
use crate::sys::process::{fork_single_threaded, Forked};

use super::seccomp;

const REPLY: usize = 5;
/// What the connector says once confined.
const READY: &[u8] = b"READY";
/// How long a worker waits for the connector (it answers at once: connects do not block).
const TIMEOUT: Duration = Duration::from_secs(4);

/// The daemon's side: a [`Dialer`] that asks the connector process.
#[derive(Debug)]
pub struct Connector {
    /// `None` once the connector is gone or out of step (a reply that came too late).
    sock: Mutex<Option<UnixStream>>,
    pid: Pid,
}

impl Connector {
    /// The connector's process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }
}

impl Dialer for Connector {
    fn dial(&self) -> io::Result<OwnedFd> {
        let mut g = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sock) = g.as_mut() else {
            return Err(io::Error::other("the multipathd connector process is gone"));
        };
        let r = ask(sock);
        if let Err(e) = &r {
            if e.raw_os_error().is_none() || is_broken(e) {
                // EOF, a timeout or a garbled reply: the connector is unusable.
                *g = None;
            }
        }
        r
    }
}

fn is_broken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
    )
}

fn ask(sock: &mut UnixStream) -> io::Result<OwnedFd> {
    sock.write_all(&[1])?;
    let mut buf = [0u8; REPLY];
    let r = fdpass::recv_with_fds(sock.as_fd(), &mut buf, false)?;
    if r.len == 0 {
        return Err(io::Error::other("the multipathd connector process exited"));
    }
    if r.len != REPLY {
        return Err(io::Error::other(format!(
            "short reply from the multipathd connector ({} bytes)",
            r.len
        )));
    }
    let errno = i32::from_ne_bytes(buf[1..].try_into().expect("4 bytes"));
    match (buf[0], r.fds.into_iter().next()) {
        (0, Some(fd)) => Ok(fd),
        (1, None) if errno > 0 => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other(
            "malformed reply from the multipathd connector",
        )),
    }
}

/// Fork the connector. Call during start-up, while the process is single-threaded and
/// still root (before privileges are dropped). `mode` is the daemon's seccomp mode.
pub fn spawn(mode: seccomp::Mode) -> io::Result<Connector> {
    let filter = seccomp::build_connector(mode).map_err(io::Error::other)?;
    let (ours, theirs) = UnixStream::pair()?;
    let parent = nix::unistd::getpid();
    match fork_single_threaded()? {
        Forked::Parent { child } => {
            drop(theirs);
            ours.set_read_timeout(Some(TIMEOUT))?;
            ours.set_write_timeout(Some(TIMEOUT))?;
            // The child says READY once confined, or why it could not be.
            let mut msg = [0u8; 256];
            let n = (&ours).read(&mut msg)?;
            if &msg[..n] != READY {
                let why = String::from_utf8_lossy(&msg[..n]);
                return Err(io::Error::other(if why.is_empty() {
                    "it exited during set-up".to_string()
                } else {
                    why.into_owned()
                }));
            }
            Ok(Connector {
                sock: Mutex::new(Some(ours)),
                pid: child,
            })
        }
        Forked::Child => {
            drop(ours);
            let mut theirs = theirs;
            let code = match confine(parent, theirs.as_raw_fd(), filter.as_ref()) {
                Ok(()) => match theirs.write_all(READY) {
                    Ok(()) => serve(theirs),
                    Err(_) => 1,
                },
                Err(e) => {
                    let _ = theirs.write_all(e.as_bytes());
                    1
                }
            };
            crate::sys::process::exit_now(code)
        }
    }
}

/// The child's set-up: die with the daemon, no fds but `keep` (stdio on /dev/null), the
/// stop signals back to their default action, no capabilities, no filesystem, seccomp.
fn confine(parent: Pid, keep: RawFd, filter: Option<&seccomp::Filters>) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| e.to_string())?;
    if nix::unistd::getppid() != parent {
        return Err("the daemon exited".into());
    }
    // The daemon's signal handlers write to its signal pipe, closed below.
    crate::sys::process::default_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    close_other_fds(keep)?;
    super::privs::drop_privileges(None, &caps::CapsHashSet::new()).map_err(|e| e.to_string())?;
    super::sandbox::enter(None, &[], filter).map_err(|e| crate::daemon::chain(&e))
}

fn close_other_fds(keep: RawFd) -> Result<(), String> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    for fd in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| format!("dup2: {e}"))?;
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        // (The directory's own fd is closed already: read_dir is done.)
        if fd > 2 && fd != keep && fd != null.as_raw_fd() {
            let _ = nix::unistd::close(fd);
        }
    }
    drop(null);
    Ok(())
}

/// Answer requests until the daemon closes its end. Returns the exit status.
fn serve(mut sock: UnixStream) -> i32 {
    let mut req = [0u8; 1];
    loop {
        match sock.read(&mut req) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        }
        let sent = match multipathd::connect_direct() {
            Ok(conn) => fdpass::send_with_fds(sock.as_fd(), &[0; REPLY], &[conn.as_fd()], false),
            Err(e) => {
                let mut reply = [1u8; REPLY];
                reply[1..].copy_from_slice(&multipathd::errno_of(&e).to_ne_bytes());
                fdpass::send_with_fds(sock.as_fd(), &reply, &[], false)
            }
        };
        if sent.is_err() {
            return 1;
        }
    }
}
