// SPDX-License-Identifier: MIT OR Apache-2.0
//! Command line, compatible with qemu-pr-helper's (`hVk:f:dT:u:g:vq` plus long options,
//! unique prefixes accepted as getopt_long does). Options that qemu-pr-helper does not
//! have are long-only and marked as extensions in `--help`.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// Default socket path, as Debian's qemu-pr-helper (`<localstatedir>/run`).
pub use prhelper_proto::DEFAULT_SOCKET;
/// Default pidfile path, used only with `--daemon` when `--pidfile` is not given.
pub const DEFAULT_PIDFILE: &str = "/var/run/qemu-pr-helper.pid";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "prhelper",
    version,
    about = "Persistent Reservation helper for QEMU (drop-in replacement for qemu-pr-helper)",
    long_about = "Persistent Reservation helper for QEMU.\n\n\
        Executes SCSI PERSISTENT RESERVE IN/OUT commands on behalf of QEMU's \
        pr-manager-helper object, on the device whose file descriptor QEMU passes with \
        each request. Compatible with qemu-pr-helper's protocol and options.",
    after_help = "Exit status: 0 after a clean stop (SIGTERM, SIGINT, SIGHUP); 1 on a start-up error.",
    infer_long_args = true,
    args_override_self = true
)]
pub struct Args {
    /// Path of the listening Unix socket (absolute) [default: /var/run/qemu-pr-helper.sock]
    #[arg(short = 'k', long = "socket", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Write and lock a PID file (written by default only with --daemon)
    #[arg(short = 'f', long = "pidfile", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// Run in the background once the socket accepts connections
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Log filter: QEMU trace patterns are accepted ([enable=]PATTERN, events=FILE,
    /// file=FILE); a pattern turns on debug logging, a tracing filter directive
    /// (e.g. prhelper=trace) is applied as is
    #[arg(
        short = 'T',
        long = "trace",
        value_name = "[[enable=]PATTERN][,events=FILE][,file=FILE]"
    )]
    pub trace: Vec<String>,

    /// Run as this user (name or number) after start-up
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,

    /// Run with this group (name or number) [default: the user's primary group]
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,

    /// More logging (-v: debug, one line per command; -vv: trace)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Log only errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// [extension] SG_IO timeout in seconds for each command (see README: why 30)
    #[arg(long = "sg-timeout", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub sg_timeout: u32,

    /// [extension] Most worker threads; each command stuck on a hung device holds one
    #[arg(long = "max-threads", value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(2..=65536))]
    pub max_threads: u32,

    /// [extension] System call filter: kill the process on a system call outside the
    /// allow list, only log it (kernel audit log), or no filter
    #[arg(long = "seccomp", value_name = "MODE", value_enum, default_value_t = super::seccomp::Mode::Kill)]
    pub seccomp: super::seccomp::Mode,

    /// [extension] dm-multipath maps: send each command to the map's paths as
    /// multipath-tools does, and tell multipathd the key (auto: when the kernel has
    /// device-mapper; keeps CAP_SYS_ADMIN); off: SG_IO on the map (one path)
    #[arg(long = "multipath", value_name = "MODE", value_enum, default_value_t = MultipathMode::Auto)]
    pub multipath: MultipathMode,

    /// [extension] Seconds to wait for in-flight commands when stopping
    #[arg(long = "shutdown-timeout", value_name = "SECONDS", default_value_t = 5)]
    pub shutdown_timeout: u64,
}

/// `--multipath`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MultipathMode {
    /// On when the kernel has device-mapper.
    Auto,
    /// Plain SG_IO on every device, CAP_SYS_ADMIN dropped.
    Off,
}

/// The clap command `prhelper` parses (for the man page and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

impl Args {
    /// Checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.socket {
            if !s.is_absolute() {
                return Err("socket path must be absolute".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("prhelper").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn qemu_forms() {
        let a = parse(&["-k", "/run/x.sock"]).unwrap();
        assert_eq!(a.socket.unwrap(), PathBuf::from("/run/x.sock"));
        let a = parse(&["-k/run/y.sock", "-dvv", "-q"]).unwrap();
        assert_eq!(a.socket.unwrap(), PathBuf::from("/run/y.sock"));
        assert!(a.daemon);
        assert_eq!(a.verbose, 2);
        assert!(a.quiet);
        let a = parse(&[
            "--socket=/a",
            "--pidfile",
            "/p",
            "--user=nobody",
            "--group",
            "0",
            "-T",
            "pr_*",
        ])
        .unwrap();
        assert_eq!(a.pidfile.unwrap(), PathBuf::from("/p"));
        assert_eq!(a.user.as_deref(), Some("nobody"));
        assert_eq!(a.group.as_deref(), Some("0"));
        assert_eq!(a.trace, vec!["pr_*".to_string()]);
    }

    #[test]
    fn long_option_prefixes() {
        assert_eq!(
            parse(&["--sock=/s"]).unwrap().socket.unwrap(),
            PathBuf::from("/s")
        );
        assert!(parse(&["--da"]).unwrap().daemon);
        assert_eq!(parse(&["--verb", "--verb"]).unwrap().verbose, 2);
        // --s is ambiguous (--socket, --sg-timeout, --shutdown-timeout)
        assert!(parse(&["--s=/x"]).is_err());
    }

    #[test]
    fn errors() {
        assert!(parse(&["-k"]).is_err(), "missing argument");
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--sg-timeout=0"]).is_err());
        assert_eq!(
            parse(&["-k", "rel.sock"]).unwrap().validate().unwrap_err(),
            "socket path must be absolute"
        );
        assert!(parse(&[]).unwrap().validate().is_ok());
        assert_eq!(parse(&[]).unwrap().multipath, MultipathMode::Auto);
        assert_eq!(
            parse(&["--multipath=off"]).unwrap().multipath,
            MultipathMode::Off
        );
        assert!(parse(&["--multipath=on"]).is_err());
    }
}
