// SPDX-License-Identifier: MIT OR Apache-2.0
//! Talking to multipathd: its CLI, its command socket, and its prkeys file.

use crate::util::run;
use crate::{bail, ensure, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// multipathd's abstract socket name (0.9.4 has no pathname socket).
pub const MULTIPATHD_SOCKET: &str = "/org/kernel/linux/storage/multipathd";

/// The prkeys file multipathd maintains with `reservation_key file`.
pub const PRKEYS_FILE: &str = "/etc/multipath/prkeys";

/// Run `multipathd CMD…` (the CLI client; words split on whitespace) and
/// return its stdout. Fails when the CLI cannot reach the daemon; a command
/// multipathd rejects gives "fail" (and a non-zero exit, ignored here).
pub fn multipathd_cmd(cmd: &str) -> Result<String> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let o = run("multipathd", &args)?;
    if o.stdout.is_empty() && o.status != 0 {
        bail!("{}", o.describe());
    }
    Ok(o.stdout)
}

/// Send `cmd` to multipathd over its abstract socket as libmpathcmd does
/// (native `size_t` length including the NUL, then the NUL-terminated
/// command; the reply is framed the same way) and return the reply without
/// its NUL.
pub fn multipathd_socket_cmd(cmd: &str) -> Result<String> {
    multipathd_socket_cmd_at(None, cmd)
}

/// [`multipathd_socket_cmd`] through the pathname socket `socket` (a
/// socket-activated multipathd, [`Multipathd::start_with_socket`]), or the
/// abstract one when `None`.
pub fn multipathd_socket_cmd_at(socket: Option<&Path>, cmd: &str) -> Result<String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let mut s = match socket {
        Some(path) => {
            UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?
        }
        None => {
            let addr = SocketAddr::from_abstract_name(MULTIPATHD_SOCKET.as_bytes())
                .map_err(|e| format!("abstract address: {e}"))?;
            UnixStream::connect_addr(&addr)
                .map_err(|e| format!("connect @{MULTIPATHD_SOCKET}: {e}"))?
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut msg = Vec::with_capacity(cmd.len() + 9);
    msg.extend_from_slice(&(cmd.len() + 1).to_ne_bytes());
    msg.extend_from_slice(cmd.as_bytes());
    msg.push(0);
    s.write_all(&msg)
        .map_err(|e| format!("send {cmd:?}: {e}"))?;
    let mut len = [0u8; std::mem::size_of::<usize>()];
    s.read_exact(&mut len)
        .map_err(|e| format!("reply length to {cmd:?}: {e}"))?;
    let len = usize::from_ne_bytes(len);
    ensure!(len <= 32 << 20, "reply to {cmd:?}: length {len}");
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)
        .map_err(|e| format!("reply to {cmd:?}: {e}"))?;
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The contents of [`PRKEYS_FILE`] (empty if it does not exist).
pub fn prkeys_file() -> String {
    std::fs::read_to_string(PRKEYS_FILE).unwrap_or_default()
}

/// The key the prkeys file holds for `wwid` ("0x…" lines; a line that
/// multipathd removed starts with '#'). The bool is APTPL ("0X").
pub fn prkeys_lookup(text: &str, wwid: &str) -> Option<(u64, bool)> {
    text.lines().find_map(|l| {
        let (key, id) = l.trim().split_once(char::is_whitespace)?;
        if id.trim() != wwid {
            return None;
        }
        let (hex, aptpl) = if let Some(h) = key.strip_prefix("0x") {
            (h, false)
        } else {
            (key.strip_prefix("0X")?, true)
        };
        u64::from_str_radix(hex, 16).ok().map(|k| (k, aptpl))
    })
}

/// One row of `multipathd show paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpathdPath {
    /// "sda".
    pub dev: String,
    /// "8:0".
    pub dev_t: String,
    /// dm state: "active", "failed", "undef".
    pub dm_st: String,
    /// checker state: "ready", "faulty", "shaky", "ghost", "undef"…
    pub chk_st: String,
}

impl MpathdPath {
    /// Usable in multipathd's eyes (active in dm, checker ready or ghost).
    pub fn is_up(&self) -> bool {
        self.dm_st == "active" && (self.chk_st == "ready" || self.chk_st == "ghost")
    }
}
