// SPDX-License-Identifier: MIT OR Apache-2.0
//! The helper side of one connection, as a state machine fed with what the socket
//! delivered (bytes and received fds). It never reads ahead: [`Conn::want`] says how many
//! bytes to ask the socket for next, so fds can never be attributed to the wrong request.
//!
//! Generic over the fd type so that tests and fuzzers can use plain tokens; the daemon
//! uses `OwnedFd`, so dropping a request or the connection closes every received fd.

use super::wire::{AllocLen, CDB_SIZE, MAX_DATA};
use crate::scsi::{PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

/// Why a connection is closed. None of these gets a reply (the C helper sends none either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The client's features word asks for features the helper does not have.
    #[error("client requested unsupported features {0:#010x}")]
    UnsupportedFeatures(u32),
    /// The CDB came without a file descriptor.
    #[error("no file descriptor in request")]
    NoFd,
    /// The CDB came with more than one file descriptor.
    #[error("more than one file descriptor in request")]
    TooManyFds,
    /// A file descriptor came with the PR OUT parameter list instead of the CDB.
    #[error("file descriptor sent with PR OUT parameter data")]
    FdWithParameters,
    /// The CDB's opcode is neither PERSISTENT RESERVE IN nor OUT.
    #[error("invalid CDB: opcode {0:#04x} is not PERSISTENT RESERVE IN/OUT")]
    BadOpcode(u8),
    /// The CDB's transfer length is over [`crate::wire::MAX_DATA`].
    #[error("transfer length {0} exceeds the protocol's limit of 8192 bytes")]
    TooLong(usize),
    /// End of file in the middle of a request.
    #[error("client closed the connection in the middle of a request")]
    Truncated,
}

/// A complete request, ready to execute.
#[derive(Debug)]
pub struct Request<F> {
    /// The CDB, as the client sent it (16 bytes).
    pub cdb: [u8; CDB_SIZE],
    /// The device file descriptor that came with it.
    pub fd: F,
    /// What else the request carries.
    pub kind: RequestKind,
}

/// PR IN or PR OUT, with what each needs.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// PERSISTENT RESERVE IN.
    PrIn {
        /// The allocation length: the most the reply may carry.
        alloc: AllocLen,
    },
    /// PERSISTENT RESERVE OUT.
    PrOut {
        /// The parameter list (the CDB's parameter list length, as QEMU frames it).
        params: Vec<u8>,
    },
}

#[derive(Debug)]
enum State<F> {
    /// Waiting for the client's 4-byte requested-features word.
    Features { buf: [u8; 4], have: u8 },
    /// Collecting a CDB and its fd.
    Cdb {
        buf: [u8; CDB_SIZE],
        have: u8,
        fd: Option<F>,
    },
    /// Collecting a PR OUT parameter list.
    Params {
        cdb: [u8; CDB_SIZE],
        fd: F,
        data: Vec<u8>,
    },
    /// A protocol error was seen; nothing more is accepted.
    Failed,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Conn<F> {
    state: State<F>,
    supported: u32,
}

impl<F> Conn<F> {
    /// A fresh connection; the helper has (or is about to have) sent `supported`.
    pub fn new(supported: u32) -> Self {
        Conn {
            state: State::Features {
                buf: [0; 4],
                have: 0,
            },
            supported,
        }
    }

    /// How many bytes to read next (always at least 1 until the connection has failed).
    pub fn want(&self) -> usize {
        match &self.state {
            State::Features { have, .. } => 4 - usize::from(*have),
            State::Cdb { have, .. } => CDB_SIZE - usize::from(*have),
            State::Params { data, .. } => data.capacity() - data.len(),
            State::Failed => 0,
        }
    }

    /// True between requests: EOF here is a normal disconnect.
    pub fn is_idle(&self) -> bool {
        matches!(
            self.state,
            State::Cdb {
                have: 0,
                fd: None,
                ..
            }
        )
    }

    /// True once the feature handshake is done.
    pub fn handshake_done(&self) -> bool {
        !matches!(self.state, State::Features { .. })
    }

    /// Feed what one read returned: `bytes.len() <= self.want()`, plus any fds that came
    /// with them (a `Vec`, or anything else that yields them: the daemon passes a pair
    /// that needs no allocation). Returns a request once one is complete.
    pub fn feed<I: IntoIterator<Item = F>>(
        &mut self,
        bytes: &[u8],
        fds: I,
    ) -> Result<Option<Request<F>>, ProtoError> {
        debug_assert!(bytes.len() <= self.want());
        let mut fds = fds.into_iter();
        // At most two are looked at, which tells one from too many; the rest are dropped.
        let first = fds.next();
        let second = fds.next();
        drop(fds);
        let result = self.step(bytes, first, second);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// The peer closed its end: an error unless between requests.
    pub fn eof(&mut self) -> Result<(), ProtoError> {
        let idle = self.is_idle();
        self.state = State::Failed;
        if idle {
            Ok(())
        } else {
            Err(ProtoError::Truncated)
        }
    }

    /// `first`, `second`: the first two fds that came with `bytes` (`second` is only
    /// there to tell one from too many).
    fn step(
        &mut self,
        bytes: &[u8],
        first: Option<F>,
        second: Option<F>,
    ) -> Result<Option<Request<F>>, ProtoError> {
        match &mut self.state {
            State::Failed => Err(ProtoError::Truncated),
            State::Features { buf, have } => {
                // The handshake carries no fd; the C helper ignores (closes) stray ones.
                drop((first, second));
                let start = usize::from(*have);
                buf[start..start + bytes.len()].copy_from_slice(bytes);
                *have += bytes.len() as u8;
                if *have == 4 {
                    let requested = u32::from_be_bytes(*buf);
                    if requested & !self.supported != 0 {
                        return Err(ProtoError::UnsupportedFeatures(requested));
                    }
                    self.state = State::Cdb {
                        buf: [0; CDB_SIZE],
                        have: 0,
                        fd: None,
                    };
                }
                Ok(None)
            }
            State::Cdb { buf, have, fd } => {
                if second.is_some() || (fd.is_some() && first.is_some()) {
                    return Err(ProtoError::TooManyFds);
                }
                if let Some(f) = first {
                    *fd = Some(f);
                }
                let start = usize::from(*have);
                buf[start..start + bytes.len()].copy_from_slice(bytes);
                *have += bytes.len() as u8;
                if usize::from(*have) < CDB_SIZE {
                    return Ok(None);
                }
                let cdb = *buf;
                let fd = fd.take().ok_or(ProtoError::NoFd)?;
                self.state = State::Cdb {
                    buf: [0; CDB_SIZE],
                    have: 0,
                    fd: None,
                };
                let len = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
                match cdb[0] {
                    PERSISTENT_RESERVE_IN | PERSISTENT_RESERVE_OUT if len > MAX_DATA => {
                        Err(ProtoError::TooLong(len))
                    }
                    PERSISTENT_RESERVE_IN => {
                        let alloc = AllocLen::new(len as u16).ok_or(ProtoError::TooLong(len))?;
                        Ok(Some(Request {
                            cdb,
                            fd,
                            kind: RequestKind::PrIn { alloc },
                        }))
                    }
                    PERSISTENT_RESERVE_OUT if len == 0 => Ok(Some(Request {
                        cdb,
                        fd,
                        kind: RequestKind::PrOut { params: Vec::new() },
                    })),
                    PERSISTENT_RESERVE_OUT => {
                        self.state = State::Params {
                            cdb,
                            fd,
                            data: Vec::with_capacity(len),
                        };
                        Ok(None)
                    }
                    op => Err(ProtoError::BadOpcode(op)),
                }
            }
            State::Params { data, .. } => {
                if first.is_some() {
                    return Err(ProtoError::FdWithParameters);
                }
                data.extend_from_slice(bytes);
                if data.len() < data.capacity() {
                    return Ok(None);
                }
                let State::Params { cdb, fd, data } = std::mem::replace(
                    &mut self.state,
                    State::Cdb {
                        buf: [0; CDB_SIZE],
                        have: 0,
                        fd: None,
                    },
                ) else {
                    unreachable!("matched above")
                };
                Ok(Some(Request {
                    cdb,
                    fd,
                    kind: RequestKind::PrOut { params: data },
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Conn<u32> {
        let mut c = Conn::new(0);
        assert_eq!(c.want(), 4);
        assert!(c.feed(&[0, 0, 0, 0], vec![]).unwrap().is_none());
        assert!(c.handshake_done());
        assert!(c.is_idle());
        c
    }

    fn pr_in_cdb(alloc: u16) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5e;
        cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
        cdb
    }

    fn pr_out_cdb(len: u16) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5f;
        cdb[7..9].copy_from_slice(&len.to_be_bytes());
        cdb
    }

    #[test]
    fn handshake_in_pieces() {
        let mut c: Conn<u32> = Conn::new(0);
        c.feed(&[0], vec![]).unwrap();
        assert_eq!(c.want(), 3);
        c.feed(&[0, 0], vec![]).unwrap();
        assert!(!c.handshake_done());
        c.feed(&[0], vec![]).unwrap();
        assert!(c.handshake_done());
        assert_eq!(c.want(), 16);
    }

    #[test]
    fn unsupported_feature_rejected() {
        let mut c: Conn<u32> = Conn::new(0);
        assert_eq!(
            c.feed(&[0, 0, 0, 1], vec![]).unwrap_err(),
            ProtoError::UnsupportedFeatures(1)
        );
        assert_eq!(c.want(), 0);
        // A supported bit is accepted.
        let mut c: Conn<u32> = Conn::new(1);
        assert!(c.feed(&[0, 0, 0, 1], vec![]).is_ok());
    }

    #[test]
    fn pr_in_request() {
        let mut c = ready();
        let req = c.feed(&pr_in_cdb(24), vec![7]).unwrap().unwrap();
        assert_eq!(req.fd, 7);
        assert_eq!(req.cdb, pr_in_cdb(24));
        assert_eq!(
            req.kind,
            RequestKind::PrIn {
                alloc: AllocLen::new(24).unwrap()
            }
        );
        assert!(c.is_idle());
    }

    #[test]
    fn fd_may_arrive_with_any_piece_of_the_cdb() {
        let cdb = pr_in_cdb(8);
        for split in 1..16 {
            for fd_first in [true, false] {
                let mut c = ready();
                let (a, b) = cdb.split_at(split);
                let (fa, fb) = if fd_first {
                    (vec![3], vec![])
                } else {
                    (vec![], vec![3])
                };
                assert!(c.feed(a, fa).unwrap().is_none());
                assert!(!c.is_idle());
                assert_eq!(c.want(), 16 - split);
                let req = c.feed(b, fb).unwrap().unwrap();
                assert_eq!(req.fd, 3);
                assert_eq!(req.cdb, cdb);
            }
        }
    }

    #[test]
    fn pr_out_with_parameters_in_pieces() {
        let mut c = ready();
        assert!(c.feed(&pr_out_cdb(24), vec![5]).unwrap().is_none());
        assert_eq!(c.want(), 24);
        assert!(c.feed(&[1; 10], vec![]).unwrap().is_none());
        assert_eq!(c.want(), 14);
        let req = c.feed(&[2; 14], vec![]).unwrap().unwrap();
        let mut want = vec![1u8; 10];
        want.extend([2u8; 14]);
        assert_eq!(req.kind, RequestKind::PrOut { params: want });
        assert_eq!(req.fd, 5);
        assert!(c.is_idle());
    }

    #[test]
    fn pr_out_without_parameters() {
        let mut c = ready();
        let req = c.feed(&pr_out_cdb(0), vec![5]).unwrap().unwrap();
        assert_eq!(req.kind, RequestKind::PrOut { params: vec![] });
    }

    #[test]
    fn pr_out_length_uses_bytes_7_and_8_only() {
        let mut c = ready();
        let mut cdb = pr_out_cdb(4);
        cdb[5] = 0xff;
        cdb[6] = 0xff;
        assert!(c.feed(&cdb, vec![1]).unwrap().is_none());
        assert_eq!(c.want(), 4);
        // Exactly the framed bytes are consumed, one at a time if they come so; the
        // request keeps its CDB, so the handler answers PARAMETER LIST LENGTH ERROR
        // (`scsi::cdb::pr_out_length_mismatch`) without the device seeing it.
        for i in 0..3 {
            assert!(c.feed(&[i], vec![]).unwrap().is_none());
            assert_eq!(c.want(), 3 - usize::from(i));
        }
        let req = c.feed(&[3], vec![]).unwrap().unwrap();
        assert_eq!(
            req.kind,
            RequestKind::PrOut {
                params: vec![0, 1, 2, 3]
            }
        );
        assert!(crate::scsi::cdb::pr_out_length_mismatch(&req.cdb));
        assert!(c.is_idle());
        assert_eq!(c.want(), 16);
    }

    #[test]
    fn errors_close() {
        let mut c = ready();
        assert_eq!(c.feed(&pr_in_cdb(8), vec![]).unwrap_err(), ProtoError::NoFd);
        assert_eq!(c.want(), 0);

        let mut c = ready();
        assert_eq!(
            c.feed(&pr_in_cdb(8), vec![1, 2]).unwrap_err(),
            ProtoError::TooManyFds
        );

        let mut c = ready();
        c.feed(&[0x5e; 4], vec![1]).unwrap();
        assert_eq!(
            c.feed(&[0; 12], vec![2]).unwrap_err(),
            ProtoError::TooManyFds
        );

        let mut c = ready();
        let mut cdb = pr_in_cdb(8);
        cdb[0] = 0x12;
        assert_eq!(
            c.feed(&cdb, vec![1]).unwrap_err(),
            ProtoError::BadOpcode(0x12)
        );

        let mut c = ready();
        assert_eq!(
            c.feed(&pr_in_cdb(8193), vec![1]).unwrap_err(),
            ProtoError::TooLong(8193)
        );
        let mut c = ready();
        assert_eq!(
            c.feed(&pr_out_cdb(u16::MAX), vec![1]).unwrap_err(),
            ProtoError::TooLong(65535)
        );
        let mut c = ready();
        assert!(c.feed(&pr_in_cdb(8192), vec![1]).unwrap().is_some());

        let mut c = ready();
        c.feed(&pr_out_cdb(24), vec![1]).unwrap();
        assert_eq!(
            c.feed(&[0; 24], vec![2]).unwrap_err(),
            ProtoError::FdWithParameters
        );
    }

    #[test]
    fn eof_only_fine_between_requests() {
        let mut c = ready();
        assert!(c.eof().is_ok());
        let mut c: Conn<u32> = Conn::new(0);
        assert_eq!(c.eof(), Err(ProtoError::Truncated));
        let mut c = ready();
        c.feed(&[0x5e], vec![]).unwrap();
        assert_eq!(c.eof(), Err(ProtoError::Truncated));
        let mut c = ready();
        c.feed(&pr_in_cdb(0)[..15], vec![1]).unwrap();
        assert_eq!(c.eof(), Err(ProtoError::Truncated));
        let mut c = ready();
        c.feed(&pr_out_cdb(24), vec![1]).unwrap();
        assert_eq!(c.eof(), Err(ProtoError::Truncated));
    }

    #[test]
    fn back_to_back_requests() {
        let mut c = ready();
        for i in 0..5u32 {
            let req = c.feed(&pr_in_cdb(8), vec![i]).unwrap().unwrap();
            assert_eq!(req.fd, i);
        }
    }
}
