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

/// Connect to multipathd from this process: `MULTIPATH_SOCKET_NAME` if set (a path, or
/// an abstract name with or without `@`), else [`PATH_SOCKET`], else [`ABSTRACT_SOCKET`].
/// The socket is non-blocking.
pub fn connect_direct() -> io::Result<OwnedFd> {
    match std::env::var("MULTIPATH_SOCKET_NAME") {
        Ok(name) if name.starts_with('/') => connect_addr(&UnixAddr::new(name.as_str())?),
        Ok(name) => {
            let name = name.strip_prefix('@').unwrap_or(&name);
            connect_addr(&UnixAddr::new_abstract(name.as_bytes())?)
        }
        Err(_) => match connect_addr(&UnixAddr::new(PATH_SOCKET)?) {
            Ok(s) => Ok(s),
            Err(_) => connect_addr(&UnixAddr::new_abstract(ABSTRACT_SOCKET.as_bytes())?),
        },
    }
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
