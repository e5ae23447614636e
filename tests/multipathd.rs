// SPDX-License-Identifier: MIT OR Apache-2.0
//! The multipathd client against a fake multipathd on an abstract socket: framing, one
//! connection kept for many commands, reconnection after multipathd closed it, and a
//! bounded wait when it does not answer. (One test per process: it sets
//! MULTIPATH_SOCKET_NAME.)

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prhelper::dev::mpath::multipathd::Multipathd;
use prhelper::proto::multipathd::Reply;

const LEN: usize = std::mem::size_of::<usize>();

fn read_cmd(s: &mut UnixStream) -> Option<String> {
    let mut h = [0u8; LEN];
    s.read_exact(&mut h).ok()?;
    let n = usize::from_ne_bytes(h);
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).ok()?;
    assert_eq!(b.pop(), Some(0), "command ends with its NUL");
    Some(String::from_utf8(b).unwrap())
}

fn reply(s: &mut UnixStream, text: &str) {
    let mut f = (text.len() + 1).to_ne_bytes().to_vec();
    f.extend_from_slice(text.as_bytes());
    f.push(0);
    s.write_all(&f).unwrap();
}

#[test]
fn client_keeps_reconnects_and_times_out() {
    let name = format!("prhelper-test-multipathd-{}", std::process::id());
    std::env::set_var("MULTIPATH_SOCKET_NAME", format!("@{name}"));
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let (conns, seen) = (Arc::clone(&conns), Arc::clone(&seen));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                conns.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    while let Some(cmd) = read_cmd(&mut s) {
                        seen.lock().unwrap().push(cmd.clone());
                        match cmd.as_str() {
                            c if c.starts_with("close") => return,
                            c if c.starts_with("silent") => {
                                std::thread::sleep(Duration::from_secs(10));
                                return;
                            }
                            c if c.starts_with("getprkey") => reply(&mut s, "0xabc:aptpl\n"),
                            c if c.starts_with("getprstatus") => reply(&mut s, "1"),
                            _ => reply(&mut s, "ok\n"),
                        }
                    }
                });
            }
        });
    }

    let m = Multipathd::new();
    m.connect_now().unwrap();
    assert!(m.connected());
    assert_eq!(
        m.command("setprkey map mpatha key 0xabc").unwrap(),
        Reply::Ok
    );
    assert_eq!(
        m.command("getprkey map mpatha").unwrap(),
        Reply::Key {
            key: 0xabc,
            aptpl: true
        }
    );
    assert_eq!(m.command("getprstatus map mpatha").unwrap(), Reply::Set);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one connection for many commands"
    );

    // multipathd closes the connection (a restart): the command is sent once more on a
    // new connection (here closed again: an error), and the next one connects anew.
    assert!(m.command("close").is_err());
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "resent once on a new connection"
    );
    assert_eq!(m.command("setprstatus map mpatha").unwrap(), Reply::Ok);
    assert_eq!(conns.load(Ordering::SeqCst), 3);

    // No answer: an error within the reply timeout, not a hang.
    let t = Instant::now();
    assert!(m.command("silent").is_err());
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "waited {took:?}");
    // And the next command works on a fresh connection.
    assert_eq!(m.command("unsetprkey map mpatha").unwrap(), Reply::Ok);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        4,
        "not resent after a timeout"
    );
    let seen = seen.lock().unwrap();
    assert!(seen.contains(&"setprkey map mpatha key 0xabc".to_string()));
}
