// SPDX-License-Identifier: MIT OR Apache-2.0
//! The listening socket: systemd socket activation, or a path we create ourselves.
//!
//! A created socket is bound under a temporary name, put in the listening state, and only
//! then renamed onto the final path: whoever sees the path appear (libvirt's readiness
//! check) can connect at once. A path that a live helper still listens on is never
//! replaced; a stale one (left by a crash) is.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket {0}: another helper is listening there; refusing to replace its socket")]
    InUse(PathBuf),
    #[error("socket {0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("socket {0}: path too long for a Unix socket")]
    TooLong(PathBuf),
    #[error("socket {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("socket activation: {0}")]
    Activation(String),
}

/// A socket file this process created, removed at exit only if it is still ours.
#[derive(Debug)]
pub struct CreatedSocket {
    path: PathBuf,
    /// Identity of the file we created: device, inode and change time (the inode number
    /// alone can be reused by a replacement).
    id: (u64, u64, i64, i64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl CreatedSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlink the socket file unless it has been replaced by someone else's.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if file_id(&m) == self.id {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!("cannot remove socket {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// The socket passed by systemd, if this process was socket-activated.
/// `LISTEN_FDS` must be exactly 1 and the fd a listening AF_UNIX stream socket.
pub fn from_activation() -> Result<Option<UnixListener>, ListenError> {
    let fds: Vec<_> = sd_notify::listen_fds()
        .map_err(|e| ListenError::Activation(format!("invalid environment: {e}")))?
        .collect();
    match fds.len() {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(ListenError::Activation(format!(
                "LISTEN_FDS={n}, but exactly one socket is supported"
            )))
        }
    }
    let fd = fds[0];
    let owned: OwnedFd = crate::sys::process::adopt_activation_fd()
        .map_err(|e| ListenError::Activation(format!("invalid file descriptor {fd}: {e}")))?;
    let is_listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    let ty = getsockopt(&owned, sockopt::SockType).ok();
    if !is_listening || ty != Some(SockType::Stream) {
        // Don't close a descriptor we do not understand: leave it to its owner.
        std::mem::forget(owned);
        return Err(ListenError::Activation(format!(
            "fd {fd} is not a listening stream socket"
        )));
    }
    Ok(Some(UnixListener::from(owned)))
}

/// Create, bind and listen on `path`, replacing a stale socket file but never a live one.
pub fn bind_path(path: &Path) -> Result<(UnixListener, CreatedSocket), ListenError> {
    let io_err = |what, source| ListenError::Io {
        path: path.to_owned(),
        what,
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_owned()))
        }
        // A refused connect means nobody listens: a stale file from a dead helper,
        // replaced below.
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(ListenError::InUse(path.to_owned()))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot inspect", e)),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io_err(
                "parent is not a directory",
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ))
        }
        Err(e) => return Err(io_err("cannot use the socket's directory", e)),
    }
    let tmp = dir.join(format!(".prhelper.{}.tmp", std::process::id()));
    let addr = UnixAddr::new(&tmp).map_err(|_| ListenError::TooLong(path.to_owned()))?;
    UnixAddr::new(path).map_err(|_| ListenError::TooLong(path.to_owned()))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io_err("cannot create socket", e.into()))?;
    let _ = std::fs::remove_file(&tmp);
    bind(sock.as_raw_fd(), &addr).map_err(|e| io_err("cannot bind", e.into()))?;
    let cleanup = |e| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    // The kernel caps the backlog at net.core.somaxconn (4096 by default).
    listen(&sock, Backlog::MAXCONN).map_err(|e| cleanup(io_err("cannot listen", e.into())))?;
    std::fs::rename(&tmp, path).map_err(|e| cleanup(io_err("cannot move socket into place", e)))?;
    // Identity after the rename (which changes the ctime).
    let m = std::fs::symlink_metadata(path).map_err(|e| io_err("cannot inspect", e))?;
    Ok((
        UnixListener::from(sock),
        CreatedSocket {
            path: path.to_owned(),
            id: file_id(&m),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_accepts_immediately() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let (l, created) = bind_path(&p).unwrap();
        let _c = UnixStream::connect(&p).unwrap();
        l.accept().unwrap();
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        created.remove();
        assert!(!p.exists());
    }

    #[test]
    fn live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let (_l, _c) = bind_path(&p).unwrap();
        assert!(matches!(bind_path(&p), Err(ListenError::InUse(_))));
        assert!(p.exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        drop(UnixListener::bind(&p).unwrap()); // leaves a stale file behind
        assert!(p.exists());
        let (l, _c) = bind_path(&p).unwrap();
        let _c = UnixStream::connect(&p).unwrap();
        l.accept().unwrap();
    }

    #[test]
    fn refuses_non_socket_and_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("file");
        std::fs::write(&p, b"x").unwrap();
        assert!(matches!(bind_path(&p), Err(ListenError::NotASocket(_))));
        let e = bind_path(&dir.path().join("nodir/s.sock")).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn remove_spares_a_replaced_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let (_l, created) = bind_path(&p).unwrap();
        // Another socket renamed over ours (as a second helper would after a crash).
        let q = dir.path().join("q.sock");
        let _other = UnixListener::bind(&q).unwrap();
        std::fs::rename(&q, &p).unwrap();
        created.remove();
        assert!(p.exists(), "someone else's socket must survive");
    }
}
