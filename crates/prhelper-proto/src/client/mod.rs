// SPDX-License-Identifier: MIT OR Apache-2.0
//! A client for the pr-helper protocol that speaks it exactly as QEMU's
//! `scsi/pr-manager-helper.c` does, for other VMMs and for tests.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = std::fs::File::open("/dev/sdb")?;
//! let mut c = prhelper_proto::client::Client::connect(prhelper_proto::DEFAULT_SOCKET)?;
//! let keys = c.read_keys(disk.as_fd())?;
//! println!("generation {}, keys {:x?}", keys.generation, keys.keys);
//! # Ok(()) }
//! ```
//!
//! Differences from QEMU, all on error paths: a reply whose size breaks the protocol is
//! an [`Error::InvalidReply`] where QEMU asserts (aborting the VM); there is no automatic
//! reconnect (QEMU retries the connect/send step up to 5 times) but [`Client::reconnect`];
//! optional timeouts (QEMU has none). After any I/O or protocol error the connection is
//! unusable (a reply may be half read), and every later call fails with
//! [`Error::Broken`] until [`Client::reconnect`].

pub mod raw;

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scsi::cdb::{self, PrInAction, PrOutAction, PrType};
use crate::scsi::prin::{self, Capabilities, FullStatus, ReadKeys, ReadReservation};
use crate::scsi::sense::{self, Sense};
use crate::scsi::{Status, PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};
use crate::wire::{pad_cdb, ReplyError, MAX_DATA};

pub use raw::RawConn;

pub use crate::DEFAULT_SOCKET;

/// Where in an exchange something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the helper's features or writing ours.
    Handshake,
    /// Sending the CDB, the fd and any parameter list.
    Request,
    /// Reading the 104-byte status/size/sense header.
    ReplyHeader,
    /// Reading the PR IN data that follows the header.
    ReplyData,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "during the handshake",
            Phase::Request => "while the request was being sent",
            Phase::ReplyHeader => "before replying",
            Phase::ReplyData => "in the middle of the reply data",
        })
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The helper's socket could not be connected to.
    #[error("cannot connect to pr-helper socket {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What `connect()` returned.
        source: io::Error,
    },
    /// The helper closed the connection. It does so, without a reply, when it rejects a
    /// request (bad opcode, no fd or several, transfer over 8192 bytes, unsupported
    /// features) or when it is shutting down.
    #[error("helper closed the connection {0} (it does so on protocol errors or at shutdown)")]
    Closed(Phase),
    /// The reply broke the protocol (e.g. more data than the allocation length, or data
    /// with a PR OUT or a non-GOOD status). QEMU aborts here; we report it.
    #[error("invalid reply from helper: {0}")]
    InvalidReply(#[from] ReplyError),
    /// A read or write timeout set with [`Client::connect_with_timeouts`] or
    /// [`Client::set_timeouts`] expired.
    #[error("timed out {0}")]
    Timeout(Phase),
    /// Reading from or writing to the socket failed.
    #[error("I/O error {phase}: {source}")]
    Io {
        /// Where in the exchange.
        phase: Phase,
        /// The error.
        source: io::Error,
    },
    /// The request was refused before anything was sent (QEMU returns -EINVAL for these).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An earlier error left the connection in an unknown state.
    #[error("connection unusable after an earlier error; reconnect")]
    Broken,
    /// The command completed with a status other than GOOD (typed helpers only).
    #[error("{}", describe_failure(*status, sense))]
    Scsi {
        /// The status the device (or the helper) returned.
        status: Status,
        /// The sense buffer that came with it.
        sense: Sense,
    },
    /// GOOD status, but the PR IN data could not be decoded.
    #[error("malformed PR IN data: {0}")]
    Malformed(#[from] prin::DecodeError),
}

fn describe_failure(status: Status, sense: &Sense) -> String {
    match sense::decode(&sense.0) {
        Some(d) if status == Status::CHECK_CONDITION => format!("{status}: {d}"),
        _ => status.to_string(),
    }
}

/// A completed command: what the helper replied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// SCSI status.
    pub status: Status,
    /// The helper's 96-byte sense buffer (meaningful with CHECK CONDITION).
    pub sense: Sense,
    /// PR IN data (empty unless PR IN with GOOD status).
    pub data: Vec<u8>,
}

impl Response {
    /// Whether the status is GOOD.
    pub fn is_good(&self) -> bool {
        self.status == Status::GOOD
    }

    /// Decoded sense, if the status is CHECK CONDITION and the buffer holds sense data.
    pub fn sense_data(&self) -> Option<sense::Decoded> {
        (self.status == Status::CHECK_CONDITION)
            .then(|| sense::decode(&self.sense.0))
            .flatten()
    }

    /// `Ok(self)` if GOOD, else [`Error::Scsi`].
    pub fn good(self) -> Result<Response, Error> {
        if self.is_good() {
            Ok(self)
        } else {
            Err(Error::Scsi {
                status: self.status,
                sense: self.sense,
            })
        }
    }
}

/// A connection to a helper, used one command at a time.
#[derive(Debug)]
pub struct Client {
    conn: RawConn,
    path: Option<PathBuf>,
    features: u32,
    broken: bool,
    timeouts: (Option<Duration>, Option<Duration>),
}

impl Client {
    /// Connect to the helper at `path` and do the handshake: read its features, request none.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut c = Client::from_stream(stream)?;
        c.path = Some(path.to_owned());
        Ok(c)
    }

    /// Like [`Client::connect`], with read and write timeouts applied from the handshake on.
    pub fn connect_with_timeouts(
        path: impl AsRef<Path>,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream
            .set_read_timeout(read)
            .and_then(|()| stream.set_write_timeout(write))
            .map_err(|source| Error::Io {
                phase: Phase::Handshake,
                source,
            })?;
        let mut c = Client::from_stream(stream)?;
        c.path = Some(path.to_owned());
        c.timeouts = (read, write);
        Ok(c)
    }

    /// Use an already connected stream (e.g. one end of a socketpair); does the handshake.
    pub fn from_stream(stream: UnixStream) -> Result<Client, Error> {
        let timeouts = (
            stream.read_timeout().ok().flatten(),
            stream.write_timeout().ok().flatten(),
        );
        let mut conn = RawConn::from_stream(stream);
        let features = conn
            .handshake()
            .map_err(|e| raw::io_error(e, Phase::Handshake))?;
        Ok(Client {
            conn,
            path: None,
            features,
            broken: false,
            timeouts,
        })
    }

    /// The features word the helper announced.
    pub fn helper_features(&self) -> u32 {
        self.features
    }

    /// Set read and write timeouts for later commands (`None`: wait forever, as QEMU does).
    pub fn set_timeouts(
        &mut self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> io::Result<()> {
        self.conn.set_timeouts(read, write)?;
        self.timeouts = (read, write);
        Ok(())
    }

    /// Whether an earlier error made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Connect again to the same path (only for clients made by [`Client::connect`]).
    pub fn reconnect(&mut self) -> Result<(), Error> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| Error::InvalidRequest("no socket path to reconnect to".into()))?;
        let (r, w) = self.timeouts;
        *self = Client::connect_with_timeouts(path, r, w)?;
        Ok(())
    }

    /// The underlying connection, e.g. to send something malformed after a good exchange.
    pub fn raw(&mut self) -> &mut RawConn {
        &mut self.conn
    }

    /// Run one command the way QEMU's `pr_manager_helper_run` does. `cdb` (1..=16 bytes, PR
    /// IN or OUT) is zero-padded to 16 bytes and sent with `dev` attached. The transfer
    /// length is CDB bytes 7..9: for PR OUT, `data_out` must be exactly that long; for PR
    /// IN, `data_out` must be empty and `alloc_len` (the caller's buffer, QEMU's
    /// `dxfer_len`) at least that long. The reply's data may not exceed the transfer
    /// length for PR IN and must be empty for PR OUT.
    ///
    /// Non-GOOD statuses are returned in the [`Response`], not as errors.
    pub fn execute(
        &mut self,
        dev: BorrowedFd<'_>,
        cdb: &[u8],
        data_out: &[u8],
        alloc_len: usize,
    ) -> Result<Response, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let cdb16 = pad_cdb(cdb).ok_or_else(|| {
            Error::InvalidRequest(format!("CDB length {} not in 1..=16", cdb.len()))
        })?;
        let len = usize::from(u16::from_be_bytes([cdb16[7], cdb16[8]]));
        if len > MAX_DATA {
            return Err(Error::InvalidRequest(format!(
                "transfer length {len} exceeds {MAX_DATA}"
            )));
        }
        let max_reply = match cdb16[0] {
            PERSISTENT_RESERVE_IN => {
                if !data_out.is_empty() {
                    return Err(Error::InvalidRequest(
                        "PR IN takes no parameter data".into(),
                    ));
                }
                if alloc_len < len {
                    return Err(Error::InvalidRequest(format!(
                        "buffer of {alloc_len} bytes is smaller than the allocation length {len}"
                    )));
                }
                len
            }
            PERSISTENT_RESERVE_OUT => {
                if data_out.len() != len {
                    return Err(Error::InvalidRequest(format!(
                        "parameter list is {} bytes but the CDB says {len}",
                        data_out.len()
                    )));
                }
                0
            }
            op => {
                return Err(Error::InvalidRequest(format!(
                    "opcode {op:#04x} is not PERSISTENT RESERVE IN/OUT"
                )))
            }
        };
        let result = self.exchange(dev, &cdb16, data_out, max_reply);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn exchange(
        &mut self,
        dev: BorrowedFd<'_>,
        cdb: &[u8; 16],
        data_out: &[u8],
        max_reply: usize,
    ) -> Result<Response, Error> {
        let send = |c: &mut RawConn| -> io::Result<()> {
            c.send_all_with_fds(cdb, &[dev])?;
            c.send_all(data_out)
        };
        send(&mut self.conn).map_err(|e| raw::io_error(e, Phase::Request))?;
        self.conn.read_reply(max_reply)
    }

    /// PERSISTENT RESERVE IN with any service action and allocation length.
    pub fn pr_in(
        &mut self,
        dev: BorrowedFd<'_>,
        action: PrInAction,
        alloc_len: u16,
    ) -> Result<Response, Error> {
        let cdb = cdb::pr_in(action, alloc_len);
        self.execute(dev, &cdb, &[], usize::from(alloc_len))
    }

    fn pr_in_good(&mut self, dev: BorrowedFd<'_>, action: PrInAction) -> Result<Vec<u8>, Error> {
        Ok(self.pr_in(dev, action, MAX_DATA as u16)?.good()?.data)
    }

    /// READ KEYS with an 8192-byte allocation length; non-GOOD is [`Error::Scsi`].
    pub fn read_keys(&mut self, dev: BorrowedFd<'_>) -> Result<ReadKeys, Error> {
        Ok(ReadKeys::decode(
            &self.pr_in_good(dev, PrInAction::ReadKeys)?,
        )?)
    }

    /// READ RESERVATION; non-GOOD is [`Error::Scsi`].
    pub fn read_reservation(&mut self, dev: BorrowedFd<'_>) -> Result<ReadReservation, Error> {
        Ok(ReadReservation::decode(
            &self.pr_in_good(dev, PrInAction::ReadReservation)?,
        )?)
    }

    /// REPORT CAPABILITIES; non-GOOD is [`Error::Scsi`].
    pub fn report_capabilities(&mut self, dev: BorrowedFd<'_>) -> Result<Capabilities, Error> {
        Ok(Capabilities::decode(
            &self.pr_in_good(dev, PrInAction::ReportCapabilities)?,
        )?)
    }

    /// READ FULL STATUS; non-GOOD is [`Error::Scsi`].
    pub fn read_full_status(&mut self, dev: BorrowedFd<'_>) -> Result<FullStatus, Error> {
        Ok(FullStatus::decode(
            &self.pr_in_good(dev, PrInAction::ReadFullStatus)?,
        )?)
    }

    /// PERSISTENT RESERVE OUT with an encoded parameter list (see
    /// [`crate::scsi::prout::BasicParams`] and [`crate::scsi::prout::RegisterMoveParams`]),
    /// logical-unit scope, and `pr_type` for the service actions that take one (RESERVE,
    /// RELEASE, PREEMPT, PREEMPT AND ABORT, REGISTER AND MOVE; `None` sends type 0).
    /// Non-GOOD (e.g. RESERVATION CONFLICT) is [`Error::Scsi`]; use [`Client::execute`]
    /// with [`crate::scsi::cdb::pr_out`] for another scope, a raw type code, or to get the
    /// [`Response`] instead.
    pub fn pr_out(
        &mut self,
        dev: BorrowedFd<'_>,
        action: PrOutAction,
        pr_type: Option<PrType>,
        params: &[u8],
    ) -> Result<(), Error> {
        let pr_type = pr_type.map_or(0, |t| t as u8);
        let scope = cdb::LU_SCOPE;
        let len = u16::try_from(params.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_DATA)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "parameter list of {} bytes is too long",
                    params.len()
                ))
            })?;
        let cdb = cdb::pr_out(action, scope, pr_type, u32::from(len));
        self.execute(dev, &cdb, params, 0)?.good()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_validation_sends_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        // Fake helper side of the handshake, in-line.
        let mut helper = RawConn::from_stream(b);
        helper.send_all(&0u32.to_be_bytes()).unwrap();
        let mut c = Client::from_stream(a).unwrap();
        let mut f = [0u8; 4];
        helper.read_exact(&mut f).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let dev = file.as_fd();
        let bad = |r: Result<Response, Error>| {
            assert!(matches!(r, Err(Error::InvalidRequest(_))), "{r:?}")
        };
        bad(c.execute(dev, &[], &[], 0));
        bad(c.execute(dev, &[0u8; 17], &[], 0));
        bad(c.execute(dev, &[0x12, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], 8));
        bad(c.execute(dev, &cdb::pr_in(PrInAction::ReadKeys, 8193), &[], 8193));
        bad(c.execute(dev, &cdb::pr_in(PrInAction::ReadKeys, 16), &[], 8));
        bad(c.execute(dev, &cdb::pr_in(PrInAction::ReadKeys, 16), &[1], 16));
        bad(c.execute(
            dev,
            &cdb::pr_out(PrOutAction::Register, 0, 0, 24),
            &[0; 23],
            0,
        ));
        assert!(!c.is_broken());
        assert!(!helper.wait_closed(Duration::from_millis(10)).unwrap());
        assert!(matches!(c.reconnect(), Err(Error::InvalidRequest(_))));
    }
}
