// SPDX-License-Identifier: MIT OR Apache-2.0
//! The seccomp filter stops a system call outside the allow list (kill mode), lets it
//! through in log mode, and allows what the daemon does. Runs each case in a re-executed
//! child process, since a filter cannot be removed once applied.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use prhelper::daemon::seccomp::{self, Extra, Mode};

const CHILD: &str = "PRHELPER_SECCOMP_TEST_CHILD";

fn child(mode: &str) -> ! {
    let mode = match mode {
        "kill" => Mode::Kill,
        _ => Mode::Log,
    };
    let prog = seccomp::build(mode, &Extra::default()).unwrap().unwrap();
    seccomp::apply(&prog).unwrap();
    // Opening a file for writing fails with EACCES (it does not kill: glibc may try).
    match std::fs::OpenOptions::new().write(true).open("/dev/null") {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
        other => {
            eprintln!("open for writing: {other:?}");
            std::process::exit(4);
        }
    }
    // Read-only opens pass the filter (the containment check reads sysfs; Landlock, not
    // applied here, confines them to /sys/devices in the daemon).
    if let Err(e) = std::fs::File::open("/dev/null") {
        eprintln!("read-only open: {e}");
        std::process::exit(5);
    }
    // socket() is not on the list at all.
    let r = std::net::UdpSocket::bind("127.0.0.1:0");
    // Only reached in log mode.
    std::process::exit(if r.is_ok() { 0 } else { 3 })
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        child(&mode);
    }
    let me = std::env::current_exe().unwrap();
    let st = Command::new(&me).env(CHILD, "kill").status().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGSYS),
        "kill mode: forbidden openat must kill, got {st:?}"
    );
    let st = Command::new(&me).env(CHILD, "log").status().unwrap();
    assert_eq!(st.code(), Some(0), "log mode lets the call through");
    allowed_calls_pass();
    println!("seccomp: 3 checks passed");
}

/// The daemon's own calls pass the filter: run a whole request cycle in a child.
fn allowed_calls_pass() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut d = Command::new(env!("CARGO_BIN_EXE_prhelper"))
        .arg("-k")
        .arg(&sock)
        .arg("-vv")
        .arg("--seccomp=kill")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The socket accepts before the sandbox is entered (readiness comes first): wait
    // for the filter rather than race it (it lost on a loaded machine).
    let read = || std::fs::read_to_string(format!("/proc/{}/status", d.id())).unwrap();
    let mut status = read();
    while !status.contains("Seccomp:\t2") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        status = read();
    }
    let field = |n: &str| {
        status.lines().find(|l| l.starts_with(n)).unwrap()[n.len()..]
            .trim()
            .to_string()
    };
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("NoNewPrivs:"), "1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(d.wait().unwrap().code(), Some(0));
}
