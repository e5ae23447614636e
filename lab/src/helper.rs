// SPDX-License-Identifier: MIT OR Apache-2.0
//! Running a PR helper daemon (Debian's C `qemu-pr-helper` or prhelper) in
//! the lab VM: both take the same command line.

use crate::util::{exited, read_attr, wait_for};
use crate::{bail, Result};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Debian's C helper, from qemu-system-common.
pub const C_HELPER: &str = "/usr/bin/qemu-pr-helper";

/// A running helper process, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Helper {
    child: Option<Child>,
    binary: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Helper {
    /// Start `binary -k SOCKET -f SOCKET.pid EXTRA...` with its stdout and
    /// stderr in `SOCKET.log`, and wait until the socket accepts a connection.
    pub fn start(binary: &Path, socket: &Path, extra_args: &[&str]) -> Result<Helper> {
        let log = socket.with_extension("log");
        let pidfile = socket.with_extension("pid");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-k")
            .arg(socket)
            .arg("-f")
            .arg(&pidfile)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut helper = Helper {
            child: Some(child),
            binary: binary.to_path_buf(),
            socket: socket.to_path_buf(),
            log,
        };
        let what = format!("{} to accept on {}", binary.display(), socket.display());
        wait_for(&what, Duration::from_secs(10), || {
            if let Some(status) = exited(helper.child.as_mut().unwrap())? {
                bail!(
                    "{} exited early ({status}); its log:\n{}",
                    binary.display(),
                    helper.log_text()
                );
            }
            Ok(UnixStream::connect(socket).ok().map(|_| ()))
        })?;
        Ok(helper)
    }

    /// The socket path (for QEMU's `pr-manager-helper,path=`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The helper's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// What the helper printed so far.
    pub fn log_text(&self) -> String {
        read_attr(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Send SIGKILL (a crash: nothing runs in the helper) unless it is already dead, and
    /// reap it. Every command it had in flight in the kernel has completed by then (SG_IO
    /// waits uninterruptibly).
    pub fn crash(mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} already stopped", self.binary.display());
        };
        let _ = child.kill();
        child.wait().map_err(|e| e.to_string())
    }

    /// Send SIGTERM and wait up to 5 s for it to exit (then SIGKILL).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} already stopped", self.binary.display());
        };
        if let Some(status) = exited(&mut child)? {
            return Ok(status);
        }
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = exited(&mut child)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait().map_err(|e| e.to_string())?;
        bail!(
            "{} ignored SIGTERM for 5 s and was killed ({status})",
            self.binary.display()
        )
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.terminate() {
                eprintln!("helper: {e}");
            }
        }
    }
}
