// SPDX-License-Identifier: MIT OR Apache-2.0
//! Sending and receiving bytes with file descriptors attached (SCM_RIGHTS).
#![allow(unsafe_code)] // The one module of this crate that calls recvmsg/sendmsg.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The result of one [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    /// Bytes read; 0 means end of file.
    pub len: usize,
    /// File descriptors that came with them (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The sender attached more fds than fit: the extras were discarded by the kernel.
    pub truncated: bool,
}

/// Read up to `buf.len()` bytes, collecting any SCM_RIGHTS fds. Room is made for two fds,
/// which is enough to tell "one" from "too many"; if more arrive the kernel closes the
/// excess and `truncated` is set. With `nonblocking`, `WouldBlock` means no data yet.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<Received> {
    let r = recv_with_fd_pair(sock, buf, nonblocking)?;
    Ok(Received {
        len: r.len,
        fds: r.fds.into_iter().collect(),
        truncated: r.truncated,
    })
}

/// The result of one [`recv_with_fd_pair`].
#[derive(Debug)]
pub struct ReceivedPair {
    /// Bytes read; 0 means end of file.
    pub len: usize,
    /// File descriptors that came with them (close-on-exec), at most two.
    pub fds: FdPair,
    /// The sender attached more fds than fit: the extras were discarded by the kernel.
    pub truncated: bool,
}

/// Up to two received fds, without a heap allocation.
#[derive(Debug, Default)]
pub struct FdPair([Option<OwnedFd>; 2]);

impl FdPair {
    fn push(&mut self, fd: OwnedFd) {
        match self.0.iter_mut().find(|f| f.is_none()) {
            Some(slot) => *slot = Some(fd),
            // Cannot happen (the control buffer has room for two); closes it if it does.
            None => drop(fd),
        }
    }

    /// How many fds arrived (0, 1 or 2).
    pub fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    /// Whether no fd arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntoIterator for FdPair {
    type Item = OwnedFd;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<OwnedFd>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// [`recv_with_fds`] without allocating: what the daemon uses for every request.
pub fn recv_with_fd_pair(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<ReceivedPair> {
    // Control buffer with room for two fds, aligned for cmsghdr.
    const FDS: usize = 2;
    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);
    let mut cmsg = Cmsg([0; 64]);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    debug_assert!(space <= cmsg.0.len());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    let len = loop {
        // SAFETY: `msg` points at `iov` (covering `buf`) and at `cmsg` (`space` bytes), all
        // alive and exclusively borrowed for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = FdPair::default();
    // Walk the control messages the kernel wrote. Even when the buffer was too small
    // (MSG_CTRUNC), the fds that fit were installed and must be taken so they get closed.
    // SAFETY: the CMSG_* macros walk `msg_control` within `msg_controllen`, which the
    // kernel set to the bytes it wrote.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let header = data.offset_from(c.cast::<u8>()) as usize;
                let n =
                    ((*c).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    // The kernel installed this fd for us and nothing else owns it.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(ReceivedPair {
        len,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Send `data` with `fds` attached to its first byte. Returns the number of bytes sent
/// (the fds go with the first call only, as QEMU does).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(data)], cmsgs, flags, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return Ok(r?),
        }
    }
}

/// One non-blocking `sendmsg` of several buffers (no fds). Returns the bytes sent, which
/// may be fewer than the total.
pub fn send_parts<const N: usize>(sock: BorrowedFd<'_>, parts: [&[u8]; N]) -> io::Result<usize> {
    let iov = parts.map(IoSlice::new);
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &[], flags, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return Ok(r?),
        }
    }
}

/// Write all of `parts` (no fds), retrying on short writes. Blocking sockets only.
pub fn send_all(sock: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    for part in parts {
        let mut off = 0;
        while off < part.len() {
            off += send_with_fds(sock, &part[off..], &[], false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fd_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            send_with_fds(a.as_fd(), b"hello", &[file.as_fd()], false).unwrap(),
            5
        );
        let mut buf = [0u8; 16];
        let r = recv_with_fds(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!(r.len, 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.fds.len(), 1);
        assert!(!r.truncated);
    }

    #[test]
    fn excess_fds_are_flagged_not_leaked() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        send_with_fds(a.as_fd(), b"x", &fds, false).unwrap();
        let mut buf = [0u8; 1];
        let r = recv_with_fds(b.as_fd(), &mut buf, false).unwrap();
        assert!(r.truncated);
        assert_eq!(r.fds.len(), 2);
    }

    #[test]
    fn fd_pair_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send_with_fds(a.as_fd(), b"hi", &[file.as_fd(), file.as_fd()], false).unwrap();
        send_with_fds(a.as_fd(), b"x", &[], false).unwrap();
        let mut buf = [0u8; 2];
        let r = recv_with_fd_pair(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((r.len, r.fds.len(), r.truncated), (2, 2, false));
        assert_eq!(r.fds.into_iter().count(), 2);
        let r = recv_with_fd_pair(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((r.len, r.fds.is_empty()), (1, true));
    }

    #[test]
    fn nonblocking_would_block() {
        let (_a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 1];
        let e = recv_with_fds(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
