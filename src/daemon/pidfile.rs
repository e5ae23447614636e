// SPDX-License-Identifier: MIT OR Apache-2.0
//! PID file: created mode 0600, locked with an fcntl write lock for the process's whole
//! life (the lock is the "is it running" signal), then truncated and filled with "PID\n".

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    #[error("cannot open pid file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock pid file {0}: another instance is running")]
    Locked(PathBuf),
    #[error("cannot write pid file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A locked pid file. Keep it alive as long as the process runs.
#[derive(Debug)]
pub struct Pidfile {
    file: File,
    path: PathBuf,
}

impl Pidfile {
    /// Remove the file (a failed start must not leave a pid file naming a dead process),
    /// if the path still names the file this process locked. The lock goes with it.
    pub fn remove(self) {
        let ours = match (self.file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn write(path: &Path) -> Result<Pidfile, PidfileError> {
    let open_err = |source| PidfileError::Open {
        path: path.to_owned(),
        source,
    };
    loop {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        if nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&lock)).is_err() {
            return Err(PidfileError::Locked(path.to_owned()));
        }
        // The file may have been unlinked or replaced between open and lock: retry then.
        let opened = file.metadata().map_err(open_err)?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == opened.ino() && now.dev() == opened.dev() => {}
            _ => continue,
        }
        let write_err = |source| PidfileError::Write {
            path: path.to_owned(),
            source,
        };
        file.set_len(0).map_err(write_err)?;
        (&file)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(write_err)?;
        return Ok(Pidfile {
            file,
            path: path.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_pid_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        std::fs::write(&p, "stale content that is longer\n").unwrap();
        let _pf = write(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        let q = dir.path().join("y.pid");
        let _pf2 = write(&q).unwrap();
        assert_eq!(
            std::fs::metadata(&q).unwrap().permissions().mode() & 0o777,
            0o600
        );
        _pf2.remove();
        assert!(!q.exists());
    }

    #[test]
    fn remove_leaves_a_replaced_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        let pf = write(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "123\n").unwrap();
        pf.remove();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "123\n");
    }
}
