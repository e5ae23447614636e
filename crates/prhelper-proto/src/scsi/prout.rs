// SPDX-License-Identifier: MIT OR Apache-2.0
//! PERSISTENT RESERVE OUT parameter lists (SPC-4 6.16.3, 6.16.4). Pure code: no I/O, no
//! `unsafe`. The TransportIDs they carry are in [`super::transport_id`].
//!
//! Decoders never panic and never allocate more than their input's size. The encoders are
//! the decoders' inverse: for every value `x` the decoder can produce,
//! `decode(encode(x)) == x`.

use super::{be_u32, be_u64};

#[doc(no_inline)]
pub use super::transport_id::{
    proto_id, ParseTidError, TransportId, MAX_ISCSI_ADDITIONAL, TID_LEN,
};

/// Size of the basic PR OUT parameter list (and of the REGISTER AND MOVE header).
pub const BASIC_LEN: usize = 24;
/// Byte 20 of the basic list: specify initiator ports.
pub const SPEC_I_PT: u8 = 0x08;
/// Byte 20 of the basic list: all target ports.
pub const ALL_TG_PT: u8 = 0x04;
/// Byte 20 of the basic list (byte 17 of REGISTER AND MOVE): activate persist through power loss.
pub const APTPL: u8 = 0x01;
/// Byte 17 of the REGISTER AND MOVE list: unregister the I_T nexus the command came on.
pub const UNREG: u8 = 0x02;

/// Why a parameter list or TransportID could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The list ends before a field that must be there.
    #[error("parameter list too short: {have} bytes, at least {need} needed")]
    TooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The TransportID list's length field claims more bytes than the list has.
    #[error("TransportID list length {declared} exceeds the {have} bytes present")]
    ListOverrun {
        /// The declared length.
        declared: usize,
        /// Bytes present.
        have: usize,
    },
    /// A TransportID in the list is cut short.
    #[error("TransportID at offset {offset} is cut short: {need} bytes needed, {have} left")]
    TidTruncated {
        /// Where it starts in the list.
        offset: usize,
        /// Its length.
        need: usize,
        /// Bytes left.
        have: usize,
    },
}

/// The basic PR OUT parameter list, used by every service action except REGISTER AND MOVE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BasicParams {
    /// RESERVATION KEY (bytes 0..8).
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY (bytes 8..16).
    pub sa_key: u64,
    /// ALL_TG_PT (byte 20, 0x04).
    pub all_tg_pt: bool,
    /// APTPL (byte 20, 0x01).
    pub aptpl: bool,
    /// `Some` sets SPEC_I_PT (byte 20, 0x08) and appends the TransportID list: BE32 length
    /// at bytes 24..28, then the TransportIDs.
    pub transport_ids: Option<Vec<TransportId>>,
}

impl BasicParams {
    /// Encode (the decoder's inverse).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BASIC_LEN];
        b[0..8].copy_from_slice(&self.key.to_be_bytes());
        b[8..16].copy_from_slice(&self.sa_key.to_be_bytes());
        b[20] = if self.all_tg_pt { ALL_TG_PT } else { 0 } | if self.aptpl { APTPL } else { 0 };
        if let Some(tids) = &self.transport_ids {
            b[20] |= SPEC_I_PT;
            let list: Vec<u8> = tids.iter().flat_map(|t| t.encode()).collect();
            b.extend_from_slice(&(u32::try_from(list.len()).unwrap_or(u32::MAX)).to_be_bytes());
            b.extend_from_slice(&list);
        }
        b
    }

    /// Decode a basic parameter list. Bytes after the list (or after byte 24 without
    /// SPEC_I_PT) are ignored.
    pub fn decode(b: &[u8]) -> Result<BasicParams, DecodeError> {
        if b.len() < BASIC_LEN {
            return Err(DecodeError::TooShort {
                need: BASIC_LEN,
                have: b.len(),
            });
        }
        let flags = b[20];
        let transport_ids = if flags & SPEC_I_PT != 0 {
            if b.len() < BASIC_LEN + 4 {
                return Err(DecodeError::TooShort {
                    need: BASIC_LEN + 4,
                    have: b.len(),
                });
            }
            let declared = be_u32(&b[24..28]) as usize;
            let rest = &b[28..];
            if declared > rest.len() {
                return Err(DecodeError::ListOverrun {
                    declared,
                    have: rest.len(),
                });
            }
            Some(TransportId::decode_list(&rest[..declared]).map_err(|e| shift(e, 28))?)
        } else {
            None
        };
        Ok(BasicParams {
            key: be_u64(&b[0..8]),
            sa_key: be_u64(&b[8..16]),
            all_tg_pt: flags & ALL_TG_PT != 0,
            aptpl: flags & APTPL != 0,
            transport_ids,
        })
    }
}

fn shift(e: DecodeError, by: usize) -> DecodeError {
    match e {
        DecodeError::TidTruncated { offset, need, have } => DecodeError::TidTruncated {
            offset: offset + by,
            need,
            have,
        },
        e => e,
    }
}

/// The REGISTER AND MOVE parameter list (SPC-4 6.16.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterMoveParams {
    /// RESERVATION KEY (bytes 0..8).
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY (bytes 8..16).
    pub sa_key: u64,
    /// UNREG (byte 17, 0x02).
    pub unreg: bool,
    /// APTPL (byte 17, 0x01).
    pub aptpl: bool,
    /// RELATIVE TARGET PORT IDENTIFIER (bytes 18..20).
    pub relative_target_port: u16,
    /// The TransportID (length at bytes 20..24, then the bytes from 24).
    pub transport_id: TransportId,
}

impl RegisterMoveParams {
    /// Encode (the decoder's inverse).
    pub fn encode(&self) -> Vec<u8> {
        let tid = self.transport_id.encode();
        let mut b = vec![0u8; BASIC_LEN];
        b[0..8].copy_from_slice(&self.key.to_be_bytes());
        b[8..16].copy_from_slice(&self.sa_key.to_be_bytes());
        b[17] = if self.unreg { UNREG } else { 0 } | if self.aptpl { APTPL } else { 0 };
        b[18..20].copy_from_slice(&self.relative_target_port.to_be_bytes());
        b[20..24].copy_from_slice(&(u32::try_from(tid.len()).unwrap_or(u32::MAX)).to_be_bytes());
        b.extend_from_slice(&tid);
        b
    }

    /// Decode; the TransportID is exactly the declared number of bytes after byte 24.
    pub fn decode(b: &[u8]) -> Result<RegisterMoveParams, DecodeError> {
        if b.len() < BASIC_LEN {
            return Err(DecodeError::TooShort {
                need: BASIC_LEN,
                have: b.len(),
            });
        }
        let declared = be_u32(&b[20..24]) as usize;
        let rest = &b[24..];
        if declared > rest.len() {
            return Err(DecodeError::ListOverrun {
                declared,
                have: rest.len(),
            });
        }
        Ok(RegisterMoveParams {
            key: be_u64(&b[0..8]),
            sa_key: be_u64(&b[8..16]),
            unreg: b[17] & UNREG != 0,
            aptpl: b[17] & APTPL != 0,
            relative_target_port: u16::from_be_bytes([b[18], b[19]]),
            transport_id: TransportId::from_bytes(&rest[..declared]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAS: u64 = 0x5001_4050_0000_0001;

    #[test]
    fn basic_params_bytes() {
        let p = BasicParams {
            key: 0x1122_3344_5566_7788,
            sa_key: 0xabcd,
            all_tg_pt: true,
            aptpl: true,
            transport_ids: None,
        };
        let b = p.encode();
        assert_eq!(
            b,
            [
                0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 0,
                0, 0, 0x05, 0, 0, 0
            ]
        );
        assert_eq!(BasicParams::decode(&b), Ok(p));

        let p = BasicParams {
            key: 0,
            sa_key: 1,
            all_tg_pt: false,
            aptpl: false,
            transport_ids: Some(vec![
                TransportId::Sas { address: SAS },
                TransportId::Iscsi {
                    name: "iqn.a".into(),
                },
            ]),
        };
        let b = p.encode();
        assert_eq!(b.len(), 24 + 4 + 24 + 24);
        assert_eq!(b[20], SPEC_I_PT);
        assert_eq!(&b[24..28], &[0, 0, 0, 48]);
        assert_eq!(b[28], 6);
        assert_eq!(b[52], 5);
        assert_eq!(BasicParams::decode(&b), Ok(p));

        // SPEC_I_PT with an empty list still carries the length word.
        let p = BasicParams {
            transport_ids: Some(vec![]),
            ..Default::default()
        };
        let b = p.encode();
        assert_eq!(b.len(), 28);
        assert_eq!(BasicParams::decode(&b), Ok(p));
    }

    #[test]
    fn basic_params_errors() {
        assert_eq!(
            BasicParams::decode(&[0; 23]),
            Err(DecodeError::TooShort { need: 24, have: 23 })
        );
        let mut b = vec![0u8; 24];
        b[20] = SPEC_I_PT;
        assert_eq!(
            BasicParams::decode(&b),
            Err(DecodeError::TooShort { need: 28, have: 24 })
        );
        b.extend([0, 0, 0, 30]);
        b.extend([0u8; 24]);
        assert_eq!(
            BasicParams::decode(&b),
            Err(DecodeError::ListOverrun {
                declared: 30,
                have: 24
            })
        );
        b[27] = 24;
        b.extend([6, 0]); // not counted in the list: ignored
        assert!(BasicParams::decode(&b).is_ok());
        b[27] = 26;
        assert_eq!(
            BasicParams::decode(&b),
            Err(DecodeError::TidTruncated {
                offset: 52,
                need: 24,
                have: 2
            })
        );
        // Hostile lengths never allocate or panic.
        let mut b = vec![0u8; 28];
        b[20] = SPEC_I_PT;
        b[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(BasicParams::decode(&b).is_err());
    }

    #[test]
    fn register_move_bytes() {
        let p = RegisterMoveParams {
            key: 1,
            sa_key: 2,
            unreg: true,
            aptpl: false,
            relative_target_port: 0x0102,
            transport_id: TransportId::Sas { address: SAS },
        };
        let b = p.encode();
        let mut want = vec![0u8; 24];
        want[7] = 1;
        want[15] = 2;
        want[17] = UNREG;
        want[18] = 1;
        want[19] = 2;
        want[23] = 24;
        want.extend(TransportId::Sas { address: SAS }.encode());
        assert_eq!(b, want);
        assert_eq!(RegisterMoveParams::decode(&b), Ok(p));

        let p2 = RegisterMoveParams {
            unreg: false,
            aptpl: true,
            transport_id: TransportId::Raw(vec![]),
            ..RegisterMoveParams::decode(&b).unwrap()
        };
        let b2 = p2.encode();
        assert_eq!(b2.len(), 24);
        assert_eq!(b2[17], APTPL);
        assert_eq!(RegisterMoveParams::decode(&b2), Ok(p2));

        assert_eq!(
            RegisterMoveParams::decode(&b[..23]),
            Err(DecodeError::TooShort { need: 24, have: 23 })
        );
        assert_eq!(
            RegisterMoveParams::decode(&b[..40]),
            Err(DecodeError::ListOverrun {
                declared: 24,
                have: 16
            })
        );
    }
}
