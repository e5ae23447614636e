// SPDX-License-Identifier: MIT OR Apache-2.0
//! Device access: how a PR command reaches the device behind the fd a client passed.
//!
//! The daemon talks to a [`Backend`]; [`SgIo`] sends the CDB with SG_IO. Tests use fakes.

pub mod contain;
pub mod mpath;
pub mod verdict;

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::stat::{fstat, SFlag};

use crate::scsi::sense::Sense;
use crate::scsi::Status;
use crate::sys::sgio::{self, Data};

/// The result of one command: status, sense (always 96 initialised bytes) and, for
/// PR IN, how many bytes of the buffer the device filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub sense: Sense,
    pub len: usize,
}

impl Outcome {
    /// GOOD, no data.
    pub fn good() -> Outcome {
        Outcome {
            status: Status::GOOD,
            sense: Sense::default(),
            len: 0,
        }
    }

    /// A locally built CHECK CONDITION with fixed-format sense.
    pub fn check(code: crate::scsi::sense::SenseCode) -> Outcome {
        Outcome {
            status: Status::CHECK_CONDITION,
            sense: Sense::fixed(code),
            len: 0,
        }
    }
}

/// The device a command is for: the client's fd and what one `fstat` of it said, so
/// that containment and the backend do not each ask again.
#[derive(Clone, Copy, Debug)]
pub struct Device<'a> {
    /// The fd the client passed.
    pub fd: BorrowedFd<'a>,
    /// Its device number (`st_rdev`) when it is a block device.
    pub block: Option<u64>,
}

impl<'a> Device<'a> {
    /// `fstat` the fd. One that fails counts as not a block device (SG_IO on it fails
    /// the same way).
    pub fn probe(fd: BorrowedFd<'a>) -> Device<'a> {
        let block = fstat(fd.as_raw_fd()).ok().and_then(|st| {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            (kind == SFlag::S_IFBLK).then_some(st.st_rdev)
        });
        Device { fd, block }
    }
}

/// Something that can execute PR IN / PR OUT on a device fd.
pub trait Backend: Send + Sync {
    /// PR IN: `buf` is exactly the allocation length long.
    fn pr_in(&self, dev: Device<'_>, cdb: &[u8; 16], buf: &mut [u8]) -> Outcome;
    /// PR OUT with its parameter list.
    fn pr_out(&self, dev: Device<'_>, cdb: &[u8; 16], params: &[u8]) -> Outcome;
}

/// Plain SG_IO on the passed fd.
#[derive(Clone, Debug)]
pub struct SgIo {
    /// SG_IO timeout in milliseconds.
    pub timeout_ms: u32,
}

impl SgIo {
    fn run(&self, dev: BorrowedFd<'_>, cdb: &[u8; 16], data: Data<'_>) -> Outcome {
        let mut sense_buf = [0u8; 96];
        let r = sgio::sg_io(dev, cdb, data, &mut sense_buf, self.timeout_ms);
        let verdict = verdict::interpret(&r.outcome);
        let sense = match verdict.sense {
            Some(code) => Sense::fixed(code),
            None => Sense(sense_buf),
        };
        let len = if verdict.status == Status::GOOD {
            r.transferred
        } else {
            0
        };
        Outcome {
            status: verdict.status,
            sense,
            len,
        }
    }
}

impl Backend for SgIo {
    fn pr_in(&self, dev: Device<'_>, cdb: &[u8; 16], buf: &mut [u8]) -> Outcome {
        let data = if buf.is_empty() {
            Data::None
        } else {
            Data::FromDevice(buf)
        };
        self.run(dev.fd, cdb, data)
    }

    fn pr_out(&self, dev: Device<'_>, cdb: &[u8; 16], params: &[u8]) -> Outcome {
        let data = if params.is_empty() {
            Data::None
        } else {
            Data::ToDevice(params)
        };
        self.run(dev.fd, cdb, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseCode;
    use std::os::fd::AsFd;

    #[test]
    fn non_device_fd_is_aborted_command_io_error() {
        // The C helper answers CHECK CONDITION 0b/00/06 for a regular file or /dev/null.
        let f = std::fs::File::open("/dev/null").unwrap();
        let be = SgIo { timeout_ms: 1000 };
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5e;
        cdb[8] = 8;
        let mut buf = [0u8; 8];
        let o = be.pr_in(Device::probe(f.as_fd()), &cdb, &mut buf);
        assert_eq!(o, Outcome::check(SenseCode::IO_ERROR));
        let o = be.pr_out(Device::probe(f.as_fd()), &cdb, &[0; 24]);
        assert_eq!(o.status, Status::CHECK_CONDITION);
        assert_eq!(o.sense.code(), Some(SenseCode::IO_ERROR));
    }
}
