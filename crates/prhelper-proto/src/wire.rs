// SPDX-License-Identifier: MIT OR Apache-2.0
//! Byte layout of the pr-helper protocol. Every integer is big-endian.
//!
//! ```text
//! helper -> client   u32 supported features        (once, on accept)
//! client -> helper   u32 requested features        (once)
//! client -> helper   16-byte CDB + one fd (SCM_RIGHTS)
//!                    PR OUT only: parameter list, CDB bytes 7..9 long
//! helper -> client   i32 status, u32 size, 96-byte sense, `size` bytes of PR IN data
//! ```

use crate::scsi::sense::{Sense, SENSE_SIZE};
use crate::scsi::Status;

/// Size of every request's CDB on the wire (shorter CDBs are zero-padded).
pub const CDB_SIZE: usize = 16;
/// Largest PR IN allocation length or PR OUT parameter list the protocol carries.
pub const MAX_DATA: usize = 8192;
/// Size of the reply header: status, size, sense.
pub const REPLY_HEADER_SIZE: usize = 8 + SENSE_SIZE;
/// Features this helper supports. No feature bit is defined by mainline QEMU.
pub const SUPPORTED_FEATURES: u32 = 0;

/// A PR IN allocation length, known to be at most [`MAX_DATA`].
///
/// Only the request decoder can make one, so a reply built from it cannot carry more
/// data than the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocLen(u16);

impl AllocLen {
    pub(crate) fn new(len: u16) -> Option<AllocLen> {
        (usize::from(len) <= MAX_DATA).then_some(AllocLen(len))
    }

    /// The length in bytes.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// A reply, built so that it always satisfies the protocol: the payload size is non-zero
/// only for a PR IN with GOOD status and never exceeds the request's allocation length
/// (QEMU aborts the VM otherwise).
#[derive(Debug)]
pub struct Reply<'a> {
    status: Status,
    sense: &'a Sense,
    payload: &'a [u8],
}

impl<'a> Reply<'a> {
    /// Reply to a PR IN. `data` is what the device returned; it is cut to `alloc`, and
    /// dropped entirely unless `status` is GOOD.
    pub fn pr_in(status: Status, sense: &'a Sense, data: &'a [u8], alloc: AllocLen) -> Reply<'a> {
        let payload = if status == Status::GOOD {
            &data[..data.len().min(alloc.get())]
        } else {
            &[]
        };
        Reply {
            status,
            sense,
            payload,
        }
    }

    /// Reply to a PR OUT: never any payload.
    pub fn pr_out(status: Status, sense: &'a Sense) -> Reply<'a> {
        Reply {
            status,
            sense,
            payload: &[],
        }
    }

    /// The reply's SCSI status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The PR IN data that follows the header (empty for PR OUT).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The 104-byte header: status, payload size, sense.
    pub fn header(&self) -> [u8; REPLY_HEADER_SIZE] {
        let mut h = [0u8; REPLY_HEADER_SIZE];
        h[0..4].copy_from_slice(&i32::from(self.status.0).to_be_bytes());
        // The payload is at most MAX_DATA bytes, so this cannot truncate.
        h[4..8].copy_from_slice(&(self.payload.len() as u32).to_be_bytes());
        h[8..].copy_from_slice(&self.sense.0);
        h
    }
}

/// Reasons a client rejects a reply header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// The status field is not a SCSI status byte (0..=255).
    #[error("helper replied with status {0}, which is not a SCSI status byte")]
    BadStatus(i32),
    /// The size field is more than the request allows.
    #[error("helper announced {size} bytes of data where at most {max} are allowed")]
    BadSize {
        /// Bytes announced.
        size: u32,
        /// The most allowed (the allocation length for PR IN, 0 for PR OUT).
        max: usize,
    },
}

/// A decoded reply header, as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    /// SCSI status.
    pub status: Status,
    /// Bytes of PR IN data that follow.
    pub size: usize,
    /// The 96-byte sense buffer.
    pub sense: Sense,
}

impl ReplyHeader {
    /// Decode and validate a header. `max_size` is the allocation length for PR IN and 0
    /// for PR OUT: QEMU asserts on anything larger, a client library must refuse it.
    pub fn decode(h: &[u8; REPLY_HEADER_SIZE], max_size: usize) -> Result<ReplyHeader, ReplyError> {
        let status = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let size = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let status = u8::try_from(status).map_err(|_| ReplyError::BadStatus(status))?;
        if size as usize > max_size || (size != 0 && status != 0) {
            return Err(ReplyError::BadSize {
                size,
                max: if status == 0 { max_size } else { 0 },
            });
        }
        let mut sense = Sense::default();
        sense.0.copy_from_slice(&h[8..]);
        Ok(ReplyHeader {
            status: Status(status),
            size: size as usize,
            sense,
        })
    }
}

/// Pad a CDB to the 16 bytes sent on the wire.
pub fn pad_cdb(cdb: &[u8]) -> Option<[u8; CDB_SIZE]> {
    if cdb.is_empty() || cdb.len() > CDB_SIZE {
        return None;
    }
    let mut out = [0u8; CDB_SIZE];
    out[..cdb.len()].copy_from_slice(cdb);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseCode;

    #[test]
    fn header_layout() {
        let sense = Sense::fixed(SenseCode::INVALID_OPCODE);
        let r = Reply::pr_out(Status::CHECK_CONDITION, &sense);
        let h = r.header();
        assert_eq!(&h[0..8], &[0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(&h[8..], &sense.0[..]);
        assert_eq!(h.len(), 104);
    }

    #[test]
    fn pr_in_payload_is_cut_to_allocation_length() {
        let sense = Sense::default();
        let data = [0xaau8; 100];
        let r = Reply::pr_in(Status::GOOD, &sense, &data, AllocLen::new(8).unwrap());
        assert_eq!(r.payload().len(), 8);
        assert_eq!(&r.header()[0..8], &[0, 0, 0, 0, 0, 0, 0, 8]);
        let r = Reply::pr_in(Status::GOOD, &sense, &data[..4], AllocLen::new(8).unwrap());
        assert_eq!(r.payload().len(), 4);
    }

    #[test]
    fn pr_in_payload_dropped_unless_good() {
        let sense = Sense::default();
        let data = [1u8; 10];
        for s in [
            Status::CHECK_CONDITION,
            Status::RESERVATION_CONFLICT,
            Status::BUSY,
        ] {
            let r = Reply::pr_in(s, &sense, &data, AllocLen::new(10).unwrap());
            assert!(r.payload().is_empty());
            assert_eq!(&r.header()[4..8], &[0, 0, 0, 0]);
        }
    }

    #[test]
    fn alloc_len_bounded() {
        assert!(AllocLen::new(8192).is_some());
        assert!(AllocLen::new(8193).is_none());
        assert!(AllocLen::new(u16::MAX).is_none());
    }

    #[test]
    fn decode_header_round_trip_and_limits() {
        let sense = Sense::fixed(SenseCode::RESET);
        let data = [7u8; 24];
        let r = Reply::pr_in(Status::GOOD, &sense, &data, AllocLen::new(24).unwrap());
        let d = ReplyHeader::decode(&r.header(), 24).unwrap();
        assert_eq!(
            d,
            ReplyHeader {
                status: Status::GOOD,
                size: 24,
                sense: sense.clone()
            }
        );
        assert_eq!(
            ReplyHeader::decode(&r.header(), 23),
            Err(ReplyError::BadSize { size: 24, max: 23 })
        );
        let mut h = r.header();
        h[3] = 2; // CHECK CONDITION with data: forbidden
        assert!(ReplyHeader::decode(&h, 24).is_err());
        h[0] = 0xff;
        assert_eq!(
            ReplyHeader::decode(&h, 24),
            Err(ReplyError::BadStatus(-16_777_214))
        );
    }

    #[test]
    fn pad() {
        assert_eq!(pad_cdb(&[0x5e, 1]).unwrap()[..3], [0x5e, 1, 0]);
        assert!(pad_cdb(&[]).is_none());
        assert!(pad_cdb(&[0; 17]).is_none());
    }
}
