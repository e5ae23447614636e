// SPDX-License-Identifier: MIT OR Apache-2.0
//! The floor: the least a pr-helper can do per request on this machine.
//!
//! One epoll set per CPU, each with its own worker thread and level-triggered
//! registrations (no re-arming); the main thread accepts and deals connections out round
//! robin. Per request: `recvmsg` of the CDB and its fd, the SG_IO ioctl, `close`, a
//! 104-byte reply. No validation beyond what keeps it correct for the benchmark's own
//! clients: a short read, a missing fd or a short write closes the connection.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use prhelper::proto::wire::{CDB_SIZE, MAX_DATA};
use prhelper::proto::Reply;
use prhelper::scsi::sense::{Sense, SenseCode};
use prhelper::scsi::Status;
use prhelper::sys::{fdpass, sgio};

/// Set in the epoll data once the connection's handshake is done.
const READY: u64 = 1 << 32;

/// Bind, listen (backlog: somaxconn) and serve `path` forever.
pub fn serve(path: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    bind(sock.as_raw_fd(), &addr)?;
    listen(&sock, Backlog::MAXCONN)?;
    let listener = UnixListener::from(sock);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut sets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let epoll = std::sync::Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        let e = std::sync::Arc::clone(&epoll);
        std::thread::Builder::new()
            .name("floor-worker".into())
            .spawn(move || worker(&e))?;
        sets.push(epoll);
    }
    let hello = prhelper::proto::wire::SUPPORTED_FEATURES.to_be_bytes();
    let mut next = 0;
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("floor: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        // A fresh socket always has room for 4 bytes.
        if stream.set_nonblocking(true).is_err()
            || fdpass::send_parts(stream.as_fd(), [&hello[..]]).ok() != Some(4)
        {
            continue;
        }
        let fd: RawFd = stream.into_raw_fd();
        // SAFETY: `fd` was just released by `into_raw_fd` and is open; the epoll set
        // takes it over (the worker owning the set closes it).
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let ev = EpollEvent::new(EpollFlags::EPOLLIN, fd as u64);
        if sets[next].add(b, ev).is_err() {
            close(fd);
        }
        next = (next + 1) % sets.len();
    }
}

fn close(fd: RawFd) {
    // SAFETY: called once per connection fd, which nothing else owns or uses afterwards.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

fn worker(epoll: &Epoll) {
    let sense = Sense::fixed(SenseCode {
        key: 0x0b,
        asc: 0x00,
        ascq: 0x06,
    });
    let mut events = vec![EpollEvent::empty(); 64];
    let mut data = vec![0u8; MAX_DATA];
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(_) => continue,
        };
        for ev in &events[..n] {
            let fd = (ev.data() & 0xffff_ffff) as RawFd;
            // SAFETY: the fd stays open while it is in this epoll set, and only this
            // thread closes it (after removing it from the set).
            let sock = unsafe { BorrowedFd::borrow_raw(fd) };
            let keep = if ev.data() & READY == 0 {
                handshake(epoll, sock)
            } else {
                request(sock, &sense, &mut data)
            };
            if !keep {
                let _ = epoll.delete(sock);
                close(fd);
            }
        }
    }
}

fn handshake(epoll: &Epoll, sock: BorrowedFd<'_>) -> bool {
    let mut f = [0u8; 4];
    match nix::unistd::read(sock.as_raw_fd(), &mut f) {
        Ok(4) => {
            let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, sock.as_raw_fd() as u64 | READY);
            epoll.modify(sock, &mut ev).is_ok()
        }
        Err(nix::errno::Errno::EAGAIN) => true,
        _ => false,
    }
}

fn request(sock: BorrowedFd<'_>, sense: &Sense, data: &mut [u8]) -> bool {
    let mut cdb = [0u8; CDB_SIZE];
    let r = match fdpass::recv_with_fds(sock, &mut cdb, true) {
        Ok(r) => r,
        Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
    };
    if r.len != CDB_SIZE || r.fds.len() != 1 {
        return false;
    }
    let dev = &r.fds[0];
    let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]])).min(MAX_DATA);
    let mut sense_buf = [0u8; 96];
    let res = sgio::sg_io(
        dev.as_fd(),
        &cdb,
        sgio::Data::FromDevice(&mut data[..alloc]),
        &mut sense_buf,
        30_000,
    );
    drop(r.fds);
    let status = if res.outcome.errno.is_some() {
        Status::CHECK_CONDITION
    } else {
        Status(res.outcome.status)
    };
    let header = Reply::pr_out(status, sense).header();
    fdpass::send_parts(sock, [&header[..]]).ok() == Some(header.len())
}
