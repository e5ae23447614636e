// SPDX-License-Identifier: MIT OR Apache-2.0
//! The daemon: start-up order, daemonizing, signals, and the server's life cycle.
//!
//! Start-up, all on one thread: signals → socket activation check → resolve -u/-g →
//! (fork, with -d) → pid file → listening socket → RLIMIT_NOFILE → multipath set-up
//! (with -u: the multipathd connector process; dm control node, multipathd connection:
//! all need root) → privilege drop →
//! readiness (sd_notify READY=1; the -d parent exits 0) → sandbox (no_new_privs, Landlock,
//! seccomp) → worker threads.

pub mod cli;
pub mod connector;
pub mod handler;
pub mod listen;
pub mod logging;
pub mod pidfile;
pub mod privs;
pub mod sandbox;
pub mod seccomp;
pub mod server;

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tracing::{debug, error, info, warn};

use crate::dev::SgIo;
use crate::sys::process::{fork_single_threaded, Forked};
use cli::Args;

/// Everything that can stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Listen(#[from] listen::ListenError),
    #[error(transparent)]
    Pidfile(#[from] pidfile::PidfileError),
    #[error(transparent)]
    Privileges(#[from] privs::PrivError),
    #[error("sandbox")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

/// Print to stderr, ignoring failures (stderr may be a closed pipe).
fn print_err(msg: &str) {
    let _ = writeln!(io::stderr(), "prhelper: {msg}");
}

/// Format an error with its chain of causes.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The `prhelper` program. Returns the process exit status.
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    if let Err(m) = args.validate() {
        print_err(&m);
        return 1;
    }
    let (filter, ignored) = logging::filter(args.verbose, args.quiet, &args.trace);

    // With -d, the parent waits until the child accepts connections (or failed), so that
    // the socket exists when `prhelper -d` returns, and start-up errors reach the caller.
    let mut ready_pipe = None;
    if args.daemon {
        let (mut rd, wr) = match UnixStream::pair() {
            Ok(p) => p,
            Err(e) => {
                print_err(&format!("cannot daemonize: {e}"));
                return 1;
            }
        };
        match fork_single_threaded() {
            Err(e) => {
                print_err(&format!("cannot daemonize: {e}"));
                return 1;
            }
            Ok(Forked::Parent { child }) => {
                drop(wr);
                let mut msg = String::new();
                let _ = rd.read_to_string(&mut msg);
                if msg.starts_with("OK") {
                    return 0;
                }
                // A failed start: the child has cleaned up (socket, pid file) and is
                // exiting; return only once it is gone, so that nothing of it outlives
                // the command that reported the failure.
                let _ = nix::sys::wait::waitpid(child, None);
                print_err(if msg.is_empty() {
                    "daemon exited during start-up"
                } else {
                    &msg
                });
                return 1;
            }
            Ok(Forked::Child) => {
                drop(rd);
                let _ = nix::unistd::setsid();
                let _ = std::env::set_current_dir("/");
                ready_pipe = Some(wr);
            }
        }
    }
    let logs_to_stderr = logging::init(filter, args.daemon);
    for part in ignored {
        warn!("-T {part}: not supported, ignored");
    }

    match start(&args, &mut ready_pipe) {
        Ok(()) => 0,
        Err(e) => {
            let msg = chain(&e);
            // With -d the parent prints the error: log it here only where that is not
            // the same terminal (journald, syslog), so that it is printed once.
            if ready_pipe.is_none() || !logs_to_stderr {
                error!("{msg}");
            }
            match ready_pipe {
                Some(mut p) => {
                    let _ = p.write_all(msg.as_bytes());
                }
                None => {
                    // When logging to stderr the error is already there.
                    if args.daemon {
                        print_err(&msg);
                    }
                }
            }
            1
        }
    }
}

/// Start and serve until stopped. With -d, `ready_pipe` gets "OK" once serving (and is
/// taken); on an error it is left for the caller to report through.
fn start(args: &Args, ready_pipe: &mut Option<UnixStream>) -> Result<(), StartError> {
    // Signals: a pipe the server watches. SIGPIPE is already ignored by the Rust runtime.
    let (sig_rd, sig_wr) = UnixStream::pair().map_err(io_err("cannot create signal pipe"))?;
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        let w = sig_wr
            .try_clone()
            .map_err(io_err("cannot create signal pipe"))?;
        signal_hook::low_level::pipe::register(sig, w)
            .map_err(io_err("cannot install signal handler"))?;
    }

    let activated = listen::from_activation()?;
    if activated.is_some() && args.socket.is_some() {
        return Err(StartError::Usage(
            "Unix socket can't be set when using socket activation".into(),
        ));
    }
    let identity = privs::resolve(args.user.as_deref(), args.group.as_deref())?;

    let pidfile_path = match (&args.pidfile, args.daemon) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(PathBuf::from(cli::DEFAULT_PIDFILE)),
        (None, false) => None,
    };
    // Removed again if start-up fails: no pid file may name a process that never served.
    let mut pidfile = PidfileGuard(match &pidfile_path {
        Some(p) => Some(pidfile::write(p)?),
        None => None,
    });

    let (listener, created) = match activated {
        Some(l) => (l, None),
        None => {
            let path = args
                .socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(cli::DEFAULT_SOCKET));
            let (l, c) = listen::bind_path(&path)?;
            (l, Some(c))
        }
    };
    // From here on, a failed start removes the socket it created.
    let guard = SocketGuard(created);
    raise_nofile_limit();

    let plain = SgIo {
        timeout_ms: args.sg_timeout * 1000,
    };
    // Multipath set-up needs root: the dm control node, and multipathd's socket (which
    // checks the peer's uid at connect time), so it happens before privileges go.
    let mut multipathd_connect = true;
    let multipath = match args.multipath {
        cli::MultipathMode::Off => None,
        cli::MultipathMode::Auto => match crate::dev::mpath::dm_major() {
            None => {
                info!("multipath: the kernel has no device-mapper; plain SG_IO only");
                None
            }
            Some(_) => {
                if identity.is_some_and(|i| !i.uid.is_root())
                    && nix::unistd::Uid::effective().is_root()
                {
                    info!("multipath: with -u, the user needs read access to the maps' path devices (e.g. -g disk)");
                    // multipathd accepts PR commands only from connections opened by
                    // uid 0: a connector process keeps uid 0 (and nothing else) to
                    // reopen them after a multipathd restart.
                    match connector::spawn(args.seccomp) {
                        Ok(c) => {
                            debug!("multipath: multipathd connector started (pid {})", c.pid());
                            multipathd_connect = false;
                            crate::dev::mpath::multipathd::install_dialer(std::sync::Arc::new(c));
                        }
                        Err(e) => warn!("multipath: cannot start the multipathd connector ({e}): if multipathd restarts, paths that come back are not registered until prhelper restarts"),
                    }
                }
                Some(crate::dev::mpath::Multipath::new(plain.clone(), true))
            }
        },
    };
    privs::drop_privileges(identity, &privs::kept(multipath.is_some()))?;
    crate::sys::process::limit_malloc_arenas(2);
    let extra = if multipath.is_some() {
        seccomp::Extra {
            multipathd_connect,
            ..seccomp::Extra::multipath()
        }
    } else {
        seccomp::Extra::default()
    };
    let filter = seccomp::build(args.seccomp, &extra)?;

    let backend: Box<dyn crate::dev::Backend> = match multipath {
        Some(m) => Box::new(m),
        None => Box::new(plain),
    };
    // Containment (dev::contain) reads dm maps' sysfs attributes in every mode:
    // /sys/dev/block/MAJ:MIN links resolve beneath /sys/devices.
    let readable: &[&std::path::Path] = if extra.multipath {
        &[std::path::Path::new("/dev"), std::path::Path::new("/sys")]
    } else {
        &[std::path::Path::new("/sys/devices")]
    };
    let cfg = server::Config {
        max_threads: args.max_threads as usize,
        shutdown_grace: Duration::from_secs(args.shutdown_timeout),
        ..Default::default()
    };
    let where_ = guard.0.as_ref().map_or_else(
        || "socket-activated socket".to_string(),
        |c| c.path().display().to_string(),
    );
    let socket_dir = guard
        .0
        .as_ref()
        .and_then(|c| c.path().parent().map(|p| p.to_owned()));

    // Ready: the socket already queues connections; the workers start right below.
    info!("listening on {where_}");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(mut p) = ready_pipe.take() {
        let _ = p.write_all(b"OK");
        drop(p);
        detach_stdio();
    }

    let created = guard.disarm();
    let hook: server::StopHook = Box::new(move || {
        if let Some(c) = created {
            c.remove();
        }
    });
    let server = server::Server::new(listener, sig_rd, backend, cfg, hook)
        .map_err(io_err("cannot set up the event loop"))?;
    drop(sig_wr);
    sandbox::enter(socket_dir.as_deref(), readable, filter.as_ref())?;
    server
        .spawn_workers()
        .map_err(io_err("cannot start worker threads"))?;
    // Serving: the pid file (and its lock) stays for the process's life.
    let _pidfile = pidfile.0.take();

    let abandoned = server.wait();
    if abandoned > 0 {
        warn!("exiting with {abandoned} command(s) still waiting on their devices");
    }
    info!(
        "stopped after {} command(s)",
        server
            .stats()
            .commands
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// Removes a created socket if start-up fails after creating it.
struct SocketGuard(Option<listen::CreatedSocket>);

impl SocketGuard {
    fn disarm(mut self) -> Option<listen::CreatedSocket> {
        self.0.take()
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.remove();
        }
    }
}

/// Removes the pid file if start-up fails after writing it.
struct PidfileGuard(Option<pidfile::Pidfile>);

impl Drop for PidfileGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.remove();
        }
    }
}

/// Each connection holds a socket fd: let the soft limit go up to the hard one.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("cannot raise the open file limit to {hard}: {e}");
            }
        }
    }
}

/// Point stdin, stdout and stderr at /dev/null (daemon mode, after readiness).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}
