// SPDX-License-Identifier: MIT OR Apache-2.0
//! The real daemon binary, driven over real fd passing: protocol compliance, malformed
//! requests, concurrency, and lifecycle (signals, pid file, socket handling, daemon mode,
//! socket activation, privilege drop).

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A well-behaved request still works: the daemon survived whatever came before.
fn assert_serves(d: &Daemon) {
    let mut c = d.connect();
    let f = devnull_rw();
    let r = c.request(&pr_in_cdb(0, 8), f.as_fd(), &[]);
    assert_eq!(r.status, 2);
    assert_eq!(r.ksa(), (0x0b, 0x00, 0x06));
}

#[test]
fn non_device_fds_get_check_condition_and_the_connection_stays() {
    let d = Daemon::start(&[]);
    let mut c = d.connect();
    let dir = tempfile::tempdir().unwrap();
    let reg = std::fs::File::create(dir.path().join("f")).unwrap();
    let dirfd = std::fs::File::open(dir.path()).unwrap();
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    for (name, fd) in [
        (
            "dev/null",
            devnull_rw().as_fd().try_clone_to_owned().unwrap(),
        ),
        ("regular", reg.as_fd().try_clone_to_owned().unwrap()),
        ("directory", dirfd.as_fd().try_clone_to_owned().unwrap()),
        ("pipe", pipe_r.try_clone().unwrap()),
    ] {
        let r = c.request(&pr_in_cdb(0, 8), fd.as_fd(), &[]);
        assert_eq!((r.status, r.size), (2, 0), "{name}");
        assert_eq!(
            r.ksa(),
            (0x0b, 0x00, 0x06),
            "{name}: ABORTED COMMAND, I/O process terminated"
        );
        assert_eq!(r.sense[0], 0x70);
        assert!(
            r.sense[18..].iter().all(|&b| b == 0),
            "sense fully initialised"
        );
    }
}

#[test]
fn pr_out_on_read_only_fd_is_invalid_opcode() {
    let d = Daemon::start(&[]);
    let mut c = d.connect();
    let ro = std::fs::File::open("/dev/null").unwrap();
    let r = c.request(&pr_out_cdb(0, 0, 24), ro.as_fd(), &[0u8; 24]);
    assert_eq!((r.status, r.size), (2, 0));
    assert_eq!(r.ksa(), (0x05, 0x20, 0x00));
    // PR IN on a read-only fd is allowed (reaches SG_IO, which fails on /dev/null).
    let r = c.request(&pr_in_cdb(1, 24), ro.as_fd(), &[]);
    assert_eq!(r.ksa(), (0x0b, 0x00, 0x06));
    // PR OUT with no parameter list on a writable fd.
    let rw = devnull_rw();
    let r = c.request(&pr_out_cdb(3, 0, 0), rw.as_fd(), &[]);
    assert_eq!(r.ksa(), (0x0b, 0x00, 0x06));
}

/// PARAMETER LIST LENGTH is four bytes; QEMU frames the data by the low two. A CDB whose
/// upper bytes are set gets ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR once exactly the
/// framed bytes are consumed (it never reaches the device: /dev/null would answer
/// 0b/00/06), and the connection goes on with the next request.
#[test]
fn pr_out_length_with_upper_bytes_is_refused_after_its_data() {
    let d = Daemon::start(&[]);
    let mut c = d.connect();
    let f = devnull_rw();
    for (byte, framed) in [(5usize, 24u16), (6, 24), (5, 0), (6, 8192)] {
        let mut cdb = pr_out_cdb(0, 0, framed);
        cdb[byte] = 0x01;
        let r = c.request(&cdb, f.as_fd(), &vec![0u8; usize::from(framed)]);
        assert_eq!((r.status, r.size), (2, 0), "byte {byte}, {framed}");
        assert_eq!(r.ksa(), (0x05, 0x1a, 0x00), "byte {byte}, {framed}");
        // The same connection: the next request is read where it starts.
        let r = c.request(&pr_in_cdb(0, 8), f.as_fd(), &[]);
        assert_eq!(r.ksa(), (0x0b, 0x00, 0x06));
    }
    // Low 16 bits over 8192 (QEMU never sends that): closed, as before.
    let mut c = d.connect();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&pr_out_cdb(0, 0, 8193));
    c.send(&cdb, &[f.as_fd()]);
    assert!(c.is_closed());
    assert_serves(&d);
}

/// The containment check runs inside the sandbox (kill-mode seccomp, Landlock) in both
/// multipath modes: a whole block device passes it and reaches SG_IO (a loop device has
/// none: not 05/20/00, the refusal), and the daemon lives on.
#[test]
fn whole_block_device_passes_containment_in_every_mode() {
    let Ok(dev) = std::fs::File::open("/dev/loop0") else {
        eprintln!("no /dev/loop0: skipped");
        return;
    };
    for mode in ["--multipath=off", "--multipath=auto"] {
        let d = Daemon::start(&[mode, "--seccomp=kill"]);
        let mut c = d.connect();
        let r = c.request(&pr_in_cdb(0, 8), dev.as_fd(), &[]);
        assert_eq!(r.status, 2, "{mode}");
        assert_ne!(
            r.ksa(),
            (0x05, 0x20, 0x00),
            "{mode}: refused a whole device"
        );
        assert_serves(&d);
        assert!(!d.stderr_text().contains("refused"), "{mode}");
    }
}

#[test]
fn fd_and_cdb_split_across_writes() {
    let d = Daemon::start(&[]);
    let mut c = d.connect();
    let f = devnull_rw();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&pr_in_cdb(0, 8));
    c.send(&cdb[..3], &[]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(&cdb[3..9], &[f.as_fd()]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(&cdb[9..], &[]);
    let r = c.reply().unwrap();
    assert_eq!(r.ksa(), (0x0b, 0x00, 0x06));
    // PR OUT: CDB and parameters in one write, fd attached.
    let mut msg = [0u8; 16 + 24].to_vec();
    msg[..10].copy_from_slice(&pr_out_cdb(0, 0, 24));
    c.send(&msg, &[f.as_fd()]);
    assert_eq!(c.reply().unwrap().ksa(), (0x0b, 0x00, 0x06));
}

/// Each malformed request closes only its own connection, leaks no fd in the daemon,
/// and the daemon keeps serving.
#[test]
fn malformed_requests_close_the_connection_and_leak_nothing() {
    let d = Daemon::start(&[]);
    let bystander = d.connect();
    let baseline = d.fd_count();
    let f = devnull_rw();
    let g = devnull_rw();
    let many: Vec<_> = (0..200).map(|_| devnull_rw()).collect();
    let many_fds: Vec<_> = many.iter().take(250).map(|f| f.as_fd()).collect();

    type Case<'a> = (&'a str, Box<dyn Fn(&mut Client) + 'a>);
    // READ KEYS (allocation length 8), a wrong opcode, and lengths over the limit.
    const READ_KEYS_8: [u8; 16] = [0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0];
    const INQUIRY: [u8; 16] = [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const PR_IN_8193: [u8; 16] = [0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0x01, 0, 0, 0, 0, 0, 0, 0];
    const PR_OUT_65535: [u8; 16] = [0x5f, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0];
    let cases: Vec<Case> = vec![
        ("no fd", Box::new(|c| c.send(&READ_KEYS_8, &[]))),
        (
            "two fds",
            Box::new(|c| c.send(&READ_KEYS_8, &[f.as_fd(), g.as_fd()])),
        ),
        (
            "fd on each half",
            Box::new(|c| {
                c.send(&[0x5e, 0, 0, 0, 0, 0, 0, 0], &[f.as_fd()]);
                std::thread::sleep(Duration::from_millis(10));
                c.send(&[8, 0, 0, 0, 0, 0, 0, 0], &[g.as_fd()]);
            }),
        ),
        ("200 fds", Box::new(|c| c.send(&READ_KEYS_8, &many_fds))),
        ("wrong opcode", Box::new(|c| c.send(&INQUIRY, &[f.as_fd()]))),
        (
            "PR IN over 8192",
            Box::new(|c| c.send(&PR_IN_8193, &[f.as_fd()])),
        ),
        (
            "PR OUT over 8192",
            Box::new(|c| c.send(&PR_OUT_65535, &[f.as_fd()])),
        ),
        (
            "fd with parameters",
            Box::new(|c| {
                c.send(
                    &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0],
                    &[f.as_fd()],
                );
                std::thread::sleep(Duration::from_millis(10));
                c.send(&[0u8; 24], &[g.as_fd()]);
            }),
        ),
    ];
    for (name, case) in &cases {
        let mut c = d.connect();
        case(&mut c);
        assert!(c.is_closed(), "{name}: connection should be closed");
    }
    // Truncated requests: EOF in the middle.
    for cut in [1usize, 8, 15, 16 + 10] {
        let mut c = d.connect();
        let mut msg = [0u8; 16 + 24];
        msg[..10].copy_from_slice(&pr_out_cdb(0, 0, 24));
        c.send(&msg[..cut], &[f.as_fd()]);
        c.s.stream().shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.is_closed(), "EOF after {cut} bytes");
    }
    // Unsupported feature request.
    let mut c = Client::connect_raw(&d.socket);
    let mut w = [0u8; 4];
    c.s.read_exact(&mut w).unwrap();
    c.s.write_all(&[0, 0, 0, 1]).unwrap();
    assert!(c.is_closed(), "unsupported feature");
    // Garbage handshake, then garbage.
    let mut c = Client::connect_raw(&d.socket);
    c.s.read_exact(&mut w).unwrap();
    c.s.write_all(&[0xff; 64]).unwrap();
    assert!(c.is_closed(), "garbage handshake");

    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.fd_count(), baseline, "daemon leaked fds");
    drop(bystander);
    assert_serves(&d);
}

#[test]
fn client_gone_before_its_reply_disturbs_no_one() {
    let d = Daemon::start(&[]);
    let f = devnull_rw();
    for _ in 0..50 {
        let mut c = d.connect();
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&pr_in_cdb(0, 8));
        c.send(&cdb, &[f.as_fd()]);
        drop(c);
    }
    assert_serves(&d);
}

#[test]
fn silent_clients_do_not_block_others() {
    let d = Daemon::start(&[]);
    // Connected but never handshaking, handshaken but idle, half a CDB sent.
    let _a = Client::connect_raw(&d.socket);
    let _b = d.connect();
    let mut c = d.connect();
    c.send(&[0x5e, 0, 0], &[]);
    assert_serves(&d);
}

#[test]
fn a_thousand_simultaneous_connections() {
    let d = Daemon::start(&[]);
    let f = devnull_rw();
    let mut clients: Vec<Client> = (0..1000).map(|_| d.connect()).collect();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&pr_in_cdb(0, 8));
    for c in clients.iter_mut() {
        c.send(&cdb, &[f.as_fd()]);
    }
    for c in clients.iter_mut() {
        assert_eq!(c.reply().unwrap().ksa(), (0x0b, 0x00, 0x06));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let threads: usize = status.lines().find(|l| l.starts_with("Threads:")).unwrap()[8..]
        .trim()
        .parse()
        .unwrap();
    assert!(threads < 100, "{threads} threads for 1000 connections");
}

#[test]
fn burst_of_nonblocking_connects_is_not_refused() {
    let d = Daemon::start(&[]);
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..256 {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let addr = nix::sys::socket::UnixAddr::new(&d.socket).unwrap();
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&s), &addr) {
            Ok(()) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused, 0);
}

#[test]
fn stop_signals_exit_zero_and_remove_the_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut d = Daemon::start(&[]);
        let _idle = d.connect();
        d.signal(sig);
        assert_eq!(d.wait_exit(Duration::from_secs(10)), 0, "signal {sig}");
        assert!(!d.socket.exists(), "socket removed after signal {sig}");
    }
}

#[test]
fn second_instance_never_steals_a_live_socket() {
    let d = Daemon::start(&[]);
    let out = Command::new(BIN)
        .arg("-k")
        .arg(&d.socket)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another helper is listening"), "{err}");
    assert_serves(&d);
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pr.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let d = Daemon::start_at(sock, &[]);
    assert_serves(&d);
}

#[test]
fn pidfile_written_locked_and_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pr.pid");
    let pf = pidfile.to_str().unwrap().to_string();
    let d = Daemon::start(&["-f", &pf]);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", d.pid())
    );
    // A second instance with the same pid file but its own socket is refused, and the
    // first one's socket stays.
    let other = dir.path().join("other.sock");
    let out = Command::new(BIN)
        .arg("-k")
        .arg(&other)
        .args(["-f", &pf])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another instance"));
    assert!(!other.exists(), "refused instance must not leave a socket");
    assert!(d.socket.exists());
    assert_serves(&d);
}

#[test]
fn start_up_errors_are_clear() {
    let cases: &[(&[&str], &str)] = &[
        (&["-k", "relative.sock"], "socket path must be absolute"),
        (&["-k", "/nonexistent-dir-xyz/pr.sock"], "directory"),
        (
            &["-u", "no-such-user-xyz", "-k", "/tmp/x.sock"],
            "invalid user",
        ),
        (
            &["-g", "no-such-group-xyz", "-k", "/tmp/x.sock"],
            "invalid group",
        ),
        (&["--bogus"], "unexpected argument"),
        (&["-k"], "a value is required"),
        (&["--s=/tmp/x"], "unexpected argument"),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN)
            .args(*args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    for flag in ["-h", "--help", "-V", "--version"] {
        let out = Command::new(BIN).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn survives_stderr_closed_by_the_parent() {
    // libvirt reads our stderr only until the socket appears, then closes the pipe.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pr.sock");
    let mut child = Command::new(BIN)
        .arg("-k")
        .arg(&sock)
        .arg("-vv")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut d = Daemon::adopt(child, sock, dir);
    d.wait_for_socket();
    drop(stderr);
    for _ in 0..3 {
        assert_serves(&d);
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0);
}

#[test]
fn debug_log_has_one_line_per_command() {
    let mut d = Daemon::start(&["-v"]);
    assert_serves(&d);
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(100));
    let log = d.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("command"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "peer_pid=",
        "peer_uid=0",
        "device=1:3",
        "opcode=0x5e",
        "sa=0x00",
        "pr_type=0",
        "status=0x02",
        "duration_us=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn daemon_mode_is_ready_when_the_parent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let pidfile = dir.path().join("d.pid");
    let st = Command::new(BIN)
        .arg("-d")
        .arg("-k")
        .arg(&sock)
        .arg("-f")
        .arg(&pidfile)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    // No polling: the socket accepts at once.
    let mut c = Client::connect(&sock);
    let f = devnull_rw();
    assert_eq!(c.request(&pr_in_cdb(0, 8), f.as_fd(), &[]).status, 2);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("prhelper"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for _ in 0..500 {
        if !sock.exists() && std::fs::metadata(format!("/proc/{pid}")).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!sock.exists());

    // A start-up failure is reported by the parent.
    let out = Command::new(BIN)
        .arg("-d")
        .arg("-k")
        .arg("/nonexistent-dir-xyz/s.sock")
        .arg("-f")
        .arg(dir.path().join("e.pid"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("directory"));
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

#[test]
fn daemon_mode_failed_start_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A socket path that cannot be used: its directory is a regular file.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let sock = blocker.join("s.sock");
    let pidfile = dir.path().join("fail.pid");
    let errfile = dir.path().join("stderr");
    // stderr to a file, not a pipe: a pipe's EOF would wait for the child as well.
    let mut parent = Command::new(BIN)
        .arg("-d")
        .arg("-k")
        .arg(&sock)
        .arg("-f")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errfile).unwrap())
        .spawn()
        .unwrap();
    let st = parent.wait().unwrap();
    // The moment the parent is gone, so is the child (the parent waited for it).
    let left = processes_mentioning(&sock.to_string_lossy());
    assert!(left.is_empty(), "child still running: {left:?}");
    assert_eq!(st.code(), Some(1));
    assert!(!pidfile.exists(), "pid file left behind");
    let err = std::fs::read_to_string(&errfile).unwrap();
    assert_eq!(err.lines().count(), 1, "error printed once: {err:?}");
    assert!(err.starts_with("prhelper: "), "{err:?}");
    assert!(err.contains("s.sock"), "{err:?}");

    // Same with the pid file in place from a previous run: it is replaced, then removed.
    std::fs::write(&pidfile, "999999\n").unwrap();
    let out = Command::new(BIN)
        .arg("-d")
        .arg("-k")
        .arg(&sock)
        .arg("-f")
        .arg(&pidfile)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!pidfile.exists());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// Run prhelper socket-activated: python sets up fd 3 and LISTEN_* then execs it.
fn activated(listen_fds: u32, extra: &[&str], sock: &std::path::Path) -> std::process::Child {
    let script = r#"
import os, socket, sys
path, n, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path if i == 0 else path + str(i)); s.listen(16); socks.append(s)
for i, s in enumerate(socks):
    os.dup2(s.fileno(), 3 + i)
    os.set_inheritable(3 + i, True)
os.environ["LISTEN_PID"] = str(os.getpid()); os.environ["LISTEN_FDS"] = str(n)
os.execv(binary, [binary] + sys.argv[4:])
"#;
    Command::new("python3")
        .args([
            "-c",
            script,
            sock.to_str().unwrap(),
            &listen_fds.to_string(),
            BIN,
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn socket_activation() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("act.sock");
    let child = activated(1, &[], &sock);
    let mut d = Daemon::adopt(child, sock.clone(), tempfile::tempdir().unwrap());
    d.wait_for_socket();
    assert_serves(&d);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0);
    assert!(sock.exists(), "the socket belongs to systemd and stays");

    let sock2 = dir.path().join("act2.sock");
    let out = activated(1, &["-k", "/tmp/x.sock"], &sock2)
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("can't be set when using socket activation")
    );
    let sock3 = dir.path().join("act3.sock");
    let out = activated(2, &[], &sock3).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_FDS=2"));
}

fn proc_status_all_tasks(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("status")).unwrap())
        .collect()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .map(|l| l[name.len()..].trim())
        .unwrap_or("")
}

#[test]
fn privileges_dropped_on_every_thread() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // CAP_SYS_RAWIO (bit 17); CAP_SYS_ADMIN (bit 21) too when multipath support is on,
    // which --multipath=auto turns on only if the kernel has device-mapper.
    let dm = std::fs::read_to_string("/proc/devices")
        .unwrap()
        .contains(" device-mapper\n");
    let auto = if dm {
        "0000000000220000"
    } else {
        "0000000000020000"
    };
    for (args, want) in [
        (&[][..], auto),
        (&["--multipath=off"][..], "0000000000020000"),
    ] {
        let d = Daemon::start(args);
        assert_serves(&d);
        for st in proc_status_all_tasks(d.pid()) {
            assert_eq!(field(&st, "CapEff:"), want, "{args:?}");
            assert_eq!(field(&st, "CapPrm:"), want);
            assert_eq!(field(&st, "CapBnd:"), want);
            assert_eq!(field(&st, "CapInh:"), "0000000000000000");
            assert_eq!(field(&st, "CapAmb:"), "0000000000000000");
        }
    }
    let d = Daemon::start_with(&["-u", "nobody", "--multipath=off"], |c| {
        // the socket's directory must be reachable for nobody's cleanup; not needed here
        let _ = c;
    });
    assert_serves(&d);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for st in proc_status_all_tasks(d.pid()) {
        let uid = nobody.uid.as_raw().to_string();
        let gid = nobody.gid.as_raw().to_string();
        assert_eq!(
            field(&st, "Uid:").split_whitespace().collect::<Vec<_>>(),
            vec![uid.as_str(); 4]
        );
        assert_eq!(
            field(&st, "Gid:").split_whitespace().collect::<Vec<_>>(),
            vec![gid.as_str(); 4]
        );
        assert_eq!(field(&st, "Groups:"), "");
        assert_eq!(field(&st, "CapEff:"), "0000000000020000");
        assert_eq!(field(&st, "CapBnd:"), "0000000000020000");
    }
}

#[test]
fn inherited_fds_stay_open() {
    // libvirt hands over a locked pid file as an inherited fd; the helper must keep it.
    let dir = tempfile::tempdir().unwrap();
    let marker = std::fs::File::create(dir.path().join("inherited")).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&marker);
    nix::fcntl::fcntl(
        raw,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let d = Daemon::start(&[]);
    assert_serves(&d);
    let target = std::fs::read_link(format!("/proc/{}/fd/{raw}", d.pid())).unwrap();
    assert_eq!(target, dir.path().join("inherited"));
}

#[test]
fn write_side_never_blocks_the_daemon() {
    // A client that sends requests but never reads replies fills its socket buffer;
    // others are still served.
    let d = Daemon::start(&[]);
    let hog = d.connect();
    hog.s.stream().set_nonblocking(true).unwrap();
    let f = devnull_rw();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&pr_in_cdb(0, 8));
    for _ in 0..5000 {
        if prhelper::sys::fdpass::send_with_fds(hog.s.as_fd(), &cdb, &[f.as_fd()], true).is_err() {
            break;
        }
    }
    assert_serves(&d);
}

#[test]
fn socket_accepts_the_moment_it_appears() {
    // libvirt's readiness check: the path appearing. Connect the instant it does.
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("r.sock");
        let mut child = Command::new(BIN)
            .arg("-k")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !sock.exists() {
            assert!(child.try_wait().unwrap().is_none());
            std::hint::spin_loop();
        }
        let r = UnixStream::connect(&sock);
        let _ = child.kill();
        let _ = child.wait();
        r.expect("socket refused a connection right after appearing");
    }
}

#[test]
fn unwritable_socket_directory_is_a_clear_error() {
    // Even root cannot create files in sysfs.
    let out = Command::new(BIN)
        .args(["-k", "/sys/prhelper-test.sock"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/sys/prhelper-test.sock") && err.contains("cannot bind"),
        "{err}"
    );
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn fd_exhaustion_neither_spins_nor_kills_the_daemon() {
    // A hard limit of 32 fds: accept() starts failing with EMFILE after a few clients.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pr.sock");
    let child = Command::new("prlimit")
        .args(["--nofile=32:32", BIN, "-k"])
        .arg(&sock)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = Daemon::adopt(child, sock, dir);
    d.wait_for_socket();
    let mut held: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(d.pid()) - t0;
    // 100 ticks per second would be a spinning core.
    assert!(
        used < 30,
        "daemon used {used} ticks in 1 s while accept() failed"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "daemon must survive EMFILE"
    );
    // Free the fds: queued and new clients are served again.
    held.truncate(5);
    let mut c = d.connect();
    let f = devnull_rw();
    assert_eq!(c.request(&pr_in_cdb(0, 8), f.as_fd(), &[]).status, 2);
    let log = d.stderr_text();
    assert!(log.contains("accept failed"), "{log}");
}
