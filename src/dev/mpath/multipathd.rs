// SPDX-License-Identifier: MIT OR Apache-2.0
//! Talking to multipathd so that it knows the registered key and registers paths that are
//! added or come back.
//!
//! multipathd accepts PR commands only from root (it checks SO_PEERCRED, which is taken at
//! connect time). The connection is opened at start-up, before `-u` drops privileges, and
//! kept; when multipathd restarts it is reopened through the installed [`Dialer`]: a
//! direct connect (still uid 0), or, with `-u`, a request to the privileged connector
//! process (`crate::daemon::connector`) that connects as root and passes the socket back.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use tracing::debug;

use crate::proto::multipathd::{self as wire, Reply};

/// multipathd's pathname socket (0.12+).
pub const PATH_SOCKET: &str = "/run/multipathd.socket";
/// Its abstract socket (every version), without the leading NUL.
pub const ABSTRACT_SOCKET: &str = "/org/kernel/linux/storage/multipathd";
/// How long to wait for an answer (multipathd's own default `uxsock_timeout`).
pub const TIMEOUT: Duration = Duration::from_millis(4000);

/// Opens connections to multipathd.
pub trait Dialer: Send + Sync {
    /// A new connected socket (blocking or not: the caller sets its mode).
    fn dial(&self) -> io::Result<OwnedFd>;
}

/// Connects from this process ([`connect_direct`]).
#[derive(Debug, Default)]
pub struct Direct;

impl Dialer for Direct {
    fn dial(&self) -> io::Result<OwnedFd> {
        connect_direct()
    }
}

static DIALER: OnceLock<Arc<dyn Dialer>> = OnceLock::new();

/// Make every [`Multipathd`] created from now on dial through `d` (once per process, at
/// start-up; false if one was installed already).
pub fn install_dialer(d: Arc<dyn Dialer>) -> bool {
    DIALER.set(d).is_ok()
}

fn connect_addr(addr: &UnixAddr) -> io::Result<OwnedFd> {
    // Non-blocking, so that a full listen backlog gives EAGAIN instead of a wait.
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), addr)?;
    Ok(fd)
}

/// One place multipathd may listen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    /// A filesystem path (symlinks followed, as connect(2) does).
    Path(String),
    /// An abstract name, without the leading NUL.
    Abstract(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Path(p) => f.write_str(p),
            Addr::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

/// Where to look, in order, as libmpathcmd does: `MULTIPATH_SOCKET_NAME` alone when set
/// (a path if it starts with '/', else an abstract name, '@' optional); otherwise the
/// pathname socket, then the abstract one.
fn addresses(env: Option<&str>) -> Vec<Addr> {
    match env {
        Some(name) if name.starts_with('/') => vec![Addr::Path(name.to_string())],
        Some(name) => vec![Addr::Abstract(
            name.strip_prefix('@').unwrap_or(name).to_string(),
        )],
        None => vec![
            Addr::Path(PATH_SOCKET.to_string()),
            Addr::Abstract(ABSTRACT_SOCKET.to_string()),
        ],
    }
}

/// Connect to the first address that accepts. With one address its error is returned as
/// is (errno kept: the connector passes it back); with several, one error naming every
/// failure, of the last one's kind.
fn connect_any(addrs: &[Addr]) -> io::Result<OwnedFd> {
    let mut failures = Vec::new();
    let mut last_kind = io::ErrorKind::NotFound;
    if let [only] = addrs {
        return connect_one(only);
    }
    for a in addrs {
        match connect_one(a) {
            Ok(s) => return Ok(s),
            Err(e) => {
                last_kind = e.kind();
                failures.push(format!("{a}: {e}"));
            }
        }
    }
    Err(io::Error::new(last_kind, failures.join("; ")))
}

fn connect_one(a: &Addr) -> io::Result<OwnedFd> {
    match a {
        Addr::Path(p) => UnixAddr::new(p.as_str()).map_err(io::Error::from),
        Addr::Abstract(n) => UnixAddr::new_abstract(n.as_bytes()).map_err(io::Error::from),
    }
    .and_then(|addr| connect_addr(&addr))
}

/// The errno for `e`: its own, or one matching its kind (an error that names several
/// addresses has none of its own).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::WouldBlock => libc::EAGAIN,
        _ => libc::EIO,
    })
}

/// Connect to multipathd from this process: `MULTIPATH_SOCKET_NAME` if set (a path, or
/// an abstract name with or without `@`), else [`PATH_SOCKET`], else [`ABSTRACT_SOCKET`].
/// The socket is non-blocking; a failure names every address tried.
pub fn connect_direct() -> io::Result<OwnedFd> {
    let env = std::env::var("MULTIPATH_SOCKET_NAME").ok();
    connect_any(&addresses(env.as_deref()))
}

/// A multipathd client shared by all workers.
pub struct Multipathd {
    conn: Mutex<Option<UnixStream>>,
    dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for Multipathd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipathd")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Default for Multipathd {
    fn default() -> Multipathd {
        Multipathd::new()
    }
}

fn exchange(s: &mut UnixStream, cmd: &str) -> io::Result<Reply> {
    s.write_all(&wire::encode(cmd))?;
    let mut hdr = [0u8; std::mem::size_of::<usize>()];
    s.read_exact(&mut hdr)?;
    let n = wire::reply_len(&hdr)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .unwrap_or(0);
    let mut text = vec![0u8; n];
    s.read_exact(&mut text)?;
    Ok(wire::parse(&text))
}

impl Multipathd {
    /// A client that dials through the installed dialer ([`install_dialer`]), else directly.
    pub fn new() -> Multipathd {
        let dialer = DIALER.get().cloned().unwrap_or_else(|| Arc::new(Direct));
        Multipathd::with_dialer(dialer)
    }

    /// A client that dials through `dialer`.
    pub fn with_dialer(dialer: Arc<dyn Dialer>) -> Multipathd {
        Multipathd {
            conn: Mutex::new(None),
            dialer,
        }
    }

    fn connect(&self) -> io::Result<UnixStream> {
        let s = UnixStream::from(self.dialer.dial()?);
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(s)
    }

    /// Open the connection now (at start-up, as root). Errors are for logging only: the
    /// next command tries again.
    pub fn connect_now(&self) -> io::Result<()> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(self.connect()?);
        }
        Ok(())
    }

    /// Whether a connection is open.
    pub fn connected(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Send one command and read its reply, reconnecting once if the connection broke.
    pub fn command(&self, cmd: &str) -> io::Result<Reply> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            match exchange(s, cmd) {
                Ok(r) => return Ok(r),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    // multipathd is busy: drop the connection (a late reply would
                    // answer the next command) and report.
                    *g = None;
                    return Err(e);
                }
                Err(e) => {
                    debug!("multipathd: reconnecting (the connection broke: {e})");
                    *g = None;
                }
            }
        }
        let mut s = self.connect()?;
        let r = exchange(&mut s, cmd);
        if r.is_ok() {
            *g = Some(s);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};

    #[test]
    fn addresses_in_libmpathcmd_order() {
        assert_eq!(
            addresses(None),
            [
                Addr::Path("/run/multipathd.socket".into()),
                Addr::Abstract("/org/kernel/linux/storage/multipathd".into())
            ]
        );
        assert_eq!(addresses(Some("/x/s")), [Addr::Path("/x/s".into())]);
        assert_eq!(addresses(Some("@ab")), [Addr::Abstract("ab".into())]);
        assert_eq!(addresses(Some("ab")), [Addr::Abstract("ab".into())]);
    }

    #[test]
    fn falls_back_and_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.socket");
        let _l = UnixListener::bind(&real).unwrap();
        // What KubeVirt's entrypoint makes: a link to the bind-mounted socket.
        let link = dir.path().join("multipathd.socket");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let missing = Addr::Path(dir.path().join("missing").display().to_string());
        let via_link = Addr::Path(link.display().to_string());
        let s = UnixStream::from(connect_any(&[missing.clone(), via_link]).unwrap());
        assert_eq!(
            s.peer_addr().unwrap().as_pathname(),
            Some(real.as_path()),
            "connected through the link to the listening socket"
        );

        // The abstract socket after a pathname one that is not there.
        let name = format!("prhelper-test-{}", std::process::id());
        let sa = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _al = UnixListener::bind_addr(&sa).unwrap();
        connect_any(&[missing.clone(), Addr::Abstract(name)]).unwrap();

        // Nothing listening: one error naming every address tried.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = connect_any(&[
            missing,
            Addr::Path(dangling.display().to_string()),
            Addr::Abstract(format!("prhelper-test-none-{}", std::process::id())),
        ])
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("missing: ") && msg.contains("dangling: "),
            "{msg}"
        );
        assert!(msg.contains("@prhelper-test-none-"), "{msg}");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{msg}");
    }
}
