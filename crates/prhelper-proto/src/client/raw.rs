// SPDX-License-Identifier: MIT OR Apache-2.0
//! Low-level access to a helper connection: send arbitrary bytes with any number of fds,
//! read replies piecewise, watch for the helper closing the connection. [`super::Client`]
//! is built on this; daemon tests use it directly to misbehave on purpose (no fd, two fds,
//! a bad opcode, a request cut short, ...).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Error, Phase, Response};
use crate::fdpass;
use crate::wire::{ReplyHeader, REPLY_HEADER_SIZE};

/// One connection to a helper, with no protocol state of its own.
#[derive(Debug)]
pub struct RawConn {
    stream: UnixStream,
}

/// Map an I/O error during `phase` to a client error: a reset or broken pipe means the
/// helper closed its end.
pub(crate) fn io_error(e: io::Error, phase: Phase) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset => Error::Closed(phase),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(phase),
        _ => Error::Io { phase, source: e },
    }
}

impl RawConn {
    /// Connect without reading or writing anything.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<RawConn> {
        Ok(RawConn {
            stream: UnixStream::connect(path)?,
        })
    }

    /// Wrap a connected stream; no handshake is done.
    pub fn from_stream(stream: UnixStream) -> RawConn {
        RawConn { stream }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Give the stream back.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Read and write timeouts (`None`: block forever, as QEMU does).
    pub fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(read)?;
        self.stream.set_write_timeout(write)
    }

    /// Read the helper's 4-byte supported-features word.
    pub fn read_features(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.stream.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Write a requested-features word.
    pub fn write_features(&mut self, features: u32) -> io::Result<()> {
        self.stream.write_all(&features.to_be_bytes())
    }

    /// The normal handshake: read the helper's features, request none. Returns the
    /// helper's features.
    pub fn handshake(&mut self) -> io::Result<u32> {
        let f = self.read_features()?;
        self.write_features(0)?;
        Ok(f)
    }

    /// One `sendmsg` of `bytes` with `fds` attached (any number, including none). Returns
    /// the bytes sent, which may be fewer than `bytes.len()`.
    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        fdpass::send_with_fds(self.stream.as_fd(), bytes, fds, false)
    }

    /// Send all of `bytes`, with `fds` attached to the first byte.
    pub fn send_all_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let n = self.send_with_fds(bytes, fds)?;
        fdpass::send_all(self.stream.as_fd(), &[&bytes[n..]])
    }

    /// Send all of `bytes`, no fds.
    pub fn send_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        fdpass::send_all(self.stream.as_fd(), &[bytes])
    }

    /// Read exactly `buf.len()` bytes.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.stream.read_exact(buf)
    }

    /// Read the raw 104-byte reply header, unvalidated.
    pub fn read_header_raw(&mut self) -> io::Result<[u8; REPLY_HEADER_SIZE]> {
        let mut h = [0u8; REPLY_HEADER_SIZE];
        self.stream.read_exact(&mut h)?;
        Ok(h)
    }

    /// Read one reply, validating it as QEMU does: `max_size` is the allocation length for
    /// PR IN and 0 for PR OUT.
    pub fn read_reply(&mut self, max_size: usize) -> Result<Response, Error> {
        let h = self
            .read_header_raw()
            .map_err(|e| io_error(e, Phase::ReplyHeader))?;
        let h = ReplyHeader::decode(&h, max_size)?;
        let mut data = vec![0u8; h.size];
        self.stream
            .read_exact(&mut data)
            .map_err(|e| io_error(e, Phase::ReplyData))?;
        Ok(Response {
            status: h.status,
            sense: h.sense,
            data,
        })
    }

    /// Wait up to `timeout` for the helper to close the connection. `Ok(true)`: it did (EOF
    /// or reset); `Ok(false)`: still open after `timeout`. Bytes that arrive meanwhile are
    /// an error (`InvalidData`), since a closing helper sends nothing.
    pub fn wait_closed(&mut self, timeout: Duration) -> io::Result<bool> {
        let old = self.stream.read_timeout()?;
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut b = [0u8; 1];
        let r = self.stream.read(&mut b);
        self.stream.set_read_timeout(old)?;
        match r {
            Ok(0) => Ok(true),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "helper sent data instead of closing",
            )),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Plain reads, for tests that take a reply apart themselves.
impl Read for RawConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

/// Plain writes without fds, for tests that send something malformed.
impl Write for RawConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for RawConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
