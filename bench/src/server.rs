// SPDX-License-Identifier: MIT OR Apache-2.0
//! Starting and stopping the servers under test.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Floor,
    C,
    Prhelper,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Floor, Kind::C, Kind::Prhelper];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::C => "qemu-pr-helper",
            Kind::Prhelper => "prhelper",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::C => "C",
            Kind::Prhelper => "prhelper",
        }
    }
}

/// How to start each server.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// This benchmark's own executable (runs the floor with `--floor-server PATH`).
    pub bench: PathBuf,
    pub c_helper: PathBuf,
    pub prhelper: PathBuf,
    /// Extra arguments for prhelper (e.g. `--seccomp=off` to measure the filter's cost).
    pub prhelper_args: Vec<String>,
}

/// A running server process.
pub struct Server {
    pub kind: Kind,
    pub socket: PathBuf,
    child: Child,
    /// From just before `spawn` to the first successful `connect`.
    pub exec_to_accept: Duration,
}

impl Server {
    /// Start `kind` on `dir/<name>.sock`, with its stderr in `dir/<name>.log`, and wait
    /// (at most 10 s) until a connect succeeds.
    pub fn start(kind: Kind, bins: &Binaries, dir: &Path) -> io::Result<Server> {
        let socket = dir.join(format!("{}.sock", kind.short()));
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", kind.short())))?;
        let mut cmd = match kind {
            Kind::Floor => {
                let mut c = Command::new(&bins.bench);
                c.arg("--floor-server").arg(&socket);
                c
            }
            Kind::C => {
                let mut c = Command::new(&bins.c_helper);
                c.arg("-k").arg(&socket);
                c
            }
            Kind::Prhelper => {
                let mut c = Command::new(&bins.prhelper);
                c.arg("-k").arg(&socket).args(&bins.prhelper_args);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let t0 = Instant::now();
        let child = cmd.spawn()?;
        let mut server = Server {
            kind,
            socket,
            child,
            exec_to_accept: Duration::ZERO,
        };
        loop {
            if UnixStream::connect(&server.socket).is_ok() {
                server.exec_to_accept = t0.elapsed();
                return Ok(server);
            }
            if let Some(st) = server.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited during start-up ({st}); see its log in {}",
                    kind.name(),
                    dir.display()
                )));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other(format!(
                    "{} did not accept connections within 10 s",
                    kind.name()
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has died.
    pub fn check_alive(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(st) => Err(io::Error::other(format!("{} died: {st}", self.kind.name()))),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(mut self, grace: Duration) -> io::Result<()> {
        let pid = Pid::from_raw(self.child.id() as i32);
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = kill(pid, Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if self.child.try_wait()?.is_some() {
                let _ = std::fs::remove_file(&self.socket);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
