//! Talking to multipathd so that it knows the registered key and registers paths that are
//! added or come back.
//!
//! multipathd accepts PR commands only from root (it checks SO_PEERCRED, which is taken at
//! connect time). So the connection is opened at start-up, before `-u` drops privileges,
//! and kept; it is reopened when multipathd restarts, which works only while still root.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::Mutex;
use std::time::Duration;

use crate::proto::multipathd::{self as wire, Reply};

/// multipathd's pathname socket (0.12+).
pub const PATH_SOCKET: &str = "/run/multipathd.socket";
/// Its abstract socket (every version), without the leading NUL.
pub const ABSTRACT_SOCKET: &str = "/org/kernel/linux/storage/multipathd";
/// How long to wait for an answer (multipathd's own default `uxsock_timeout`).
pub const TIMEOUT: Duration = Duration::from_millis(4000);

/// A multipathd client shared by all workers.
#[derive(Debug, Default)]
pub struct Multipathd {
    conn: Mutex<Option<UnixStream>>,
}

fn connect() -> io::Result<UnixStream> {
    let s = match std::env::var("MULTIPATH_SOCKET_NAME") {
        Ok(name) if name.starts_with('/') => UnixStream::connect(&name)?,
        Ok(name) => {
            let name = name.strip_prefix('@').unwrap_or(&name);
            UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?
        }
        Err(_) => match UnixStream::connect(PATH_SOCKET) {
            Ok(s) => s,
            Err(_) => UnixStream::connect_addr(&SocketAddr::from_abstract_name(
                ABSTRACT_SOCKET.as_bytes(),
            )?)?,
        },
    };
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
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
    pub fn new() -> Multipathd {
        Multipathd::default()
    }

    /// Open the connection now (at start-up, as root). Errors are for logging only: the
    /// next command tries again.
    pub fn connect_now(&self) -> io::Result<()> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(connect()?);
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
                Err(_) => *g = None,
            }
        }
        let mut s = connect()?;
        let r = exchange(&mut s, cmd);
        if r.is_ok() {
            *g = Some(s);
        }
        r
    }
}
