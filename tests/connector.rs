// SPDX-License-Identifier: MIT OR Apache-2.0
//! The multipathd connector process against a fake multipathd on an abstract socket: it
//! starts confined (seccomp filter mode, no_new_privs, no capabilities, four fds), passes
//! connected sockets back through a restart of the listener, reports ECONNREFUSED while
//! nothing listens, and exits when its daemon side is dropped. (One test per process: it
//! sets MULTIPATH_SOCKET_NAME. No test harness: the connector is forked, and
//! `fork_single_threaded` refuses to fork while the harness's threads exist.)

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prhelper::daemon::connector;
use prhelper::daemon::seccomp::Mode;
use prhelper::dev::mpath::multipathd::{Dialer, Multipathd};
use prhelper::proto::multipathd::Reply;

const LEN: usize = std::mem::size_of::<usize>();

fn serve(listener: UnixListener) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || loop {
                let mut h = [0u8; LEN];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let mut b = vec![0u8; usize::from_ne_bytes(h)];
                if s.read_exact(&mut b).is_err() {
                    return;
                }
                let text = "ok\n";
                let mut f = (text.len() + 1).to_ne_bytes().to_vec();
                f.extend_from_slice(text.as_bytes());
                f.push(0);
                if s.write_all(&f).is_err() {
                    return;
                }
            });
        }
    });
}

fn status(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

fn main() {
    connector_dials_for_the_daemon();
    println!("test connector_dials_for_the_daemon ... ok");
}

fn connector_dials_for_the_daemon() {
    let name = format!("prhelper-test-connector-{}", std::process::id());
    std::env::set_var("MULTIPATH_SOCKET_NAME", format!("@{name}"));
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();

    let c = Arc::new(connector::spawn(Mode::Kill).expect("connector starts"));
    let pid = c.pid().as_raw();
    assert_eq!(status(pid, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status(pid, "CapEff").as_deref(), Some("0000000000000000"));
    assert_eq!(status(pid, "CapBnd").as_deref(), Some("0000000000000000"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert_eq!(fds, 4, "stdio and the socket pair only");

    // Nothing listens: the errno comes back, and the connector stays.
    let e = c.dial().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");

    let listener = UnixListener::bind_addr(&addr).unwrap();
    serve(listener);
    let m = Multipathd::with_dialer(c.clone());
    m.connect_now().unwrap();
    assert_eq!(m.command("setprkey map m key 0x1").unwrap(), Reply::Ok);
    // A second connection, as after a restart.
    let s: UnixStream = c.dial().map(UnixStream::from).unwrap();
    drop(s);
    assert_eq!(status(pid, "Seccomp").as_deref(), Some("2"), "still alive");

    drop(m);
    drop(c);
    // The connector sees EOF and exits (a zombie until reaped: we are its parent).
    let t = Instant::now();
    loop {
        let st = status(pid, "State").unwrap_or_default();
        if st.is_empty() || st.starts_with('Z') {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "connector still {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
