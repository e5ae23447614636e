// SPDX-License-Identifier: MIT OR Apache-2.0
//! PERSISTENT RESERVE IN parameter data (SPC-4 6.15): decoders and encoders for the four
//! service actions. Pure code: no I/O, no `unsafe`.
//!
//! The decoders take whatever the device (or a hostile helper) returned. They never panic
//! and never allocate beyond the input's size. When the device declares more data than is
//! present (the allocation length was too small), they decode the complete entries that
//! are present; [`declared_len`] tells the caller whether anything was cut.
//!
//! The encoders build canonical data: `decode(&x.encode()) == Ok(x)` for every `x` whose
//! 4-bit fields (scope, type, ALLOW COMMANDS is 3 bits) are in range.

use super::transport_id::TransportId;
use super::{be_u32, be_u64};

/// Size of the READ KEYS / READ RESERVATION / READ FULL STATUS header.
pub const HEADER_LEN: usize = 8;
/// Size of the REPORT CAPABILITIES data.
pub const CAPABILITIES_LEN: usize = 8;
/// Size of a READ RESERVATION reservation descriptor.
pub const RESERVATION_LEN: usize = 16;
/// Size of a full status descriptor without its TransportID.
pub const FULL_STATUS_DESC_LEN: usize = 24;

/// Why PR IN data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The data ends before a field that must be there.
    #[error("PR IN data too short: {have} bytes, at least {need} needed")]
    TooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
}

fn need(b: &[u8], n: usize) -> Result<(), DecodeError> {
    if b.len() < n {
        Err(DecodeError::TooShort {
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Split the 8-byte header off: (generation, payload present within the declared length).
fn header(b: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    need(b, HEADER_LEN)?;
    let declared = be_u32(&b[4..8]) as usize;
    let body = &b[HEADER_LEN..];
    Ok((be_u32(&b[0..4]), &body[..declared.min(body.len())]))
}

fn with_header(generation: u32, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&(u32::try_from(body.len()).unwrap_or(u32::MAX)).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Total length the device says its READ KEYS / READ RESERVATION / READ FULL STATUS data
/// has (8 + ADDITIONAL LENGTH), or `None` if the header is incomplete. Compare with the
/// bytes received to detect truncation.
pub fn declared_len(b: &[u8]) -> Option<u64> {
    (b.len() >= HEADER_LEN).then(|| HEADER_LEN as u64 + u64::from(be_u32(&b[4..8])))
}

/// READ KEYS data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadKeys {
    /// PRgeneration: bumped by the device on every registration change.
    pub generation: u32,
    /// Every registered key, one per I_T nexus that registered it.
    pub keys: Vec<u64>,
}

impl ReadKeys {
    /// Decode; a trailing partial key (declared length not a multiple of 8) is ignored.
    pub fn decode(b: &[u8]) -> Result<ReadKeys, DecodeError> {
        let (generation, body) = header(b)?;
        Ok(ReadKeys {
            generation,
            keys: body.chunks_exact(8).map(be_u64).collect(),
        })
    }

    /// Encode as a device would send it (the decoder's inverse).
    pub fn encode(&self) -> Vec<u8> {
        with_header(
            self.generation,
            self.keys.iter().flat_map(|k| k.to_be_bytes()).collect(),
        )
    }
}

/// The reservation in READ RESERVATION data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The holder's key.
    pub key: u64,
    /// SCOPE (byte 13 high nibble; 0 = LU_SCOPE).
    pub scope: u8,
    /// TYPE (byte 13 low nibble).
    pub pr_type: u8,
}

/// READ RESERVATION data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadReservation {
    /// PRgeneration: bumped by the device on every registration change.
    pub generation: u32,
    /// `None` when the device holds no reservation (additional length 0).
    pub reservation: Option<Reservation>,
}

impl ReadReservation {
    /// Decode. An additional length below 16 means no reservation (as sg_persist reads it);
    /// a declared descriptor that is not all present is an error.
    pub fn decode(b: &[u8]) -> Result<ReadReservation, DecodeError> {
        need(b, HEADER_LEN)?;
        let generation = be_u32(&b[0..4]);
        let declared = be_u32(&b[4..8]) as usize;
        if declared < RESERVATION_LEN {
            return Ok(ReadReservation {
                generation,
                reservation: None,
            });
        }
        need(b, HEADER_LEN + RESERVATION_LEN)?;
        let d = &b[HEADER_LEN..HEADER_LEN + RESERVATION_LEN];
        Ok(ReadReservation {
            generation,
            reservation: Some(Reservation {
                key: be_u64(&d[0..8]),
                scope: d[13] >> 4,
                pr_type: d[13] & 0x0f,
            }),
        })
    }

    /// Encode as a device would send it (the decoder's inverse).
    pub fn encode(&self) -> Vec<u8> {
        let body = match self.reservation {
            None => Vec::new(),
            Some(r) => {
                let mut d = vec![0u8; RESERVATION_LEN];
                d[0..8].copy_from_slice(&r.key.to_be_bytes());
                d[13] = ((r.scope & 0x0f) << 4) | (r.pr_type & 0x0f);
                d
            }
        };
        with_header(self.generation, body)
    }
}

/// Type mask bits of REPORT CAPABILITIES, as the 16-bit value of bytes 4..6.
pub mod type_mask {
    /// Write Exclusive, all registrants.
    pub const WR_EX_AR: u16 = 0x8000;
    /// Exclusive Access, registrants only.
    pub const EX_AC_RO: u16 = 0x4000;
    /// Write Exclusive, registrants only.
    pub const WR_EX_RO: u16 = 0x2000;
    /// Exclusive Access.
    pub const EX_AC: u16 = 0x0800;
    /// Write Exclusive.
    pub const WR_EX: u16 = 0x0200;
    /// Exclusive Access, all registrants.
    pub const EX_AC_AR: u16 = 0x0001;
    /// Every defined bit.
    pub const ALL: u16 = WR_EX_AR | EX_AC_RO | WR_EX_RO | EX_AC | WR_EX | EX_AC_AR;

    /// The mask bit for a PR type code, if the type has one.
    pub fn bit(pr_type: u8) -> Option<u16> {
        match pr_type {
            1 => Some(WR_EX),
            3 => Some(EX_AC),
            5 => Some(WR_EX_RO),
            6 => Some(EX_AC_RO),
            7 => Some(WR_EX_AR),
            8 => Some(EX_AC_AR),
            _ => None,
        }
    }
}

/// REPORT CAPABILITIES data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// LENGTH (bytes 0..2); 8 for every SPC-3/4 device.
    pub length: u16,
    /// Replace Lost Reservation Capable (byte 2, 0x80).
    pub rlr_c: bool,
    /// Compatible Reservation Handling (byte 2, 0x10).
    pub crh: bool,
    /// Specify Initiator Ports Capable (byte 2, 0x08).
    pub sip_c: bool,
    /// All Target Ports Capable (byte 2, 0x04).
    pub atp_c: bool,
    /// Persist Through Power Loss Capable (byte 2, 0x01).
    pub ptpl_c: bool,
    /// Type Mask Valid (byte 3, 0x80).
    pub tmv: bool,
    /// ALLOW COMMANDS (byte 3, bits 6..4).
    pub allow_commands: u8,
    /// Persist Through Power Loss Activated (byte 3, 0x01).
    pub ptpl_a: bool,
    /// PERSISTENT RESERVATION TYPE MASK (bytes 4..6), see [`type_mask`].
    pub type_mask: u16,
}

impl Capabilities {
    /// Decode the first 8 bytes; the LENGTH field is reported, not enforced.
    pub fn decode(b: &[u8]) -> Result<Capabilities, DecodeError> {
        need(b, CAPABILITIES_LEN)?;
        Ok(Capabilities {
            length: u16::from_be_bytes([b[0], b[1]]),
            rlr_c: b[2] & 0x80 != 0,
            crh: b[2] & 0x10 != 0,
            sip_c: b[2] & 0x08 != 0,
            atp_c: b[2] & 0x04 != 0,
            ptpl_c: b[2] & 0x01 != 0,
            tmv: b[3] & 0x80 != 0,
            allow_commands: (b[3] >> 4) & 0x07,
            ptpl_a: b[3] & 0x01 != 0,
            type_mask: u16::from_be_bytes([b[4], b[5]]),
        })
    }

    /// Encode as a device would send it (the decoder's inverse).
    pub fn encode(&self) -> Vec<u8> {
        let bit = |c: bool, v: u8| if c { v } else { 0 };
        let mut b = vec![0u8; CAPABILITIES_LEN];
        b[0..2].copy_from_slice(&self.length.to_be_bytes());
        b[2] = bit(self.rlr_c, 0x80)
            | bit(self.crh, 0x10)
            | bit(self.sip_c, 0x08)
            | bit(self.atp_c, 0x04)
            | bit(self.ptpl_c, 0x01);
        b[3] = bit(self.tmv, 0x80) | ((self.allow_commands & 0x07) << 4) | bit(self.ptpl_a, 0x01);
        b[4..6].copy_from_slice(&self.type_mask.to_be_bytes());
        b
    }

    /// Whether the type mask is valid and has `pr_type`'s bit set.
    pub fn supports(&self, pr_type: u8) -> bool {
        self.tmv && type_mask::bit(pr_type).is_some_and(|m| self.type_mask & m != 0)
    }
}

/// One READ FULL STATUS descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusDescriptor {
    /// The registered key.
    pub key: u64,
    /// ALL_TG_PT (byte 12, 0x02).
    pub all_tg_pt: bool,
    /// R_HOLDER (byte 12, 0x01).
    pub r_holder: bool,
    /// SCOPE (byte 13 high nibble).
    pub scope: u8,
    /// TYPE (byte 13 low nibble).
    pub pr_type: u8,
    /// RELATIVE TARGET PORT IDENTIFIER (bytes 18..20).
    pub relative_target_port: u16,
    /// The TransportID bytes (additional descriptor length at bytes 20..24).
    pub transport_id: Vec<u8>,
}

impl StatusDescriptor {
    /// The TransportID, classified.
    pub fn transport_id(&self) -> TransportId {
        TransportId::from_bytes(&self.transport_id)
    }
}

/// READ FULL STATUS data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FullStatus {
    /// PRgeneration: bumped by the device on every registration change.
    pub generation: u32,
    /// One descriptor per registration.
    pub descriptors: Vec<StatusDescriptor>,
}

impl FullStatus {
    /// Decode; a descriptor not wholly present within the declared length and the received
    /// bytes ends the list.
    pub fn decode(b: &[u8]) -> Result<FullStatus, DecodeError> {
        let (generation, mut body) = header(b)?;
        let mut descriptors = Vec::new();
        while body.len() >= FULL_STATUS_DESC_LEN {
            let d = &body[..FULL_STATUS_DESC_LEN];
            let tid_len = be_u32(&d[20..24]) as usize;
            let Some(tid) = body[FULL_STATUS_DESC_LEN..].get(..tid_len) else {
                break;
            };
            descriptors.push(StatusDescriptor {
                key: be_u64(&d[0..8]),
                all_tg_pt: d[12] & 0x02 != 0,
                r_holder: d[12] & 0x01 != 0,
                scope: d[13] >> 4,
                pr_type: d[13] & 0x0f,
                relative_target_port: u16::from_be_bytes([d[18], d[19]]),
                transport_id: tid.to_vec(),
            });
            body = &body[FULL_STATUS_DESC_LEN + tid_len..];
        }
        Ok(FullStatus {
            generation,
            descriptors,
        })
    }

    /// Encode as a device would send it (the decoder's inverse).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for d in &self.descriptors {
            let mut h = [0u8; FULL_STATUS_DESC_LEN];
            h[0..8].copy_from_slice(&d.key.to_be_bytes());
            h[12] = if d.all_tg_pt { 0x02 } else { 0 } | if d.r_holder { 0x01 } else { 0 };
            h[13] = ((d.scope & 0x0f) << 4) | (d.pr_type & 0x0f);
            h[18..20].copy_from_slice(&d.relative_target_port.to_be_bytes());
            h[20..24].copy_from_slice(
                &(u32::try_from(d.transport_id.len()).unwrap_or(u32::MAX)).to_be_bytes(),
            );
            body.extend_from_slice(&h);
            body.extend_from_slice(&d.transport_id);
        }
        with_header(self.generation, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_keys_bytes() {
        let rk = ReadKeys {
            generation: 3,
            keys: vec![1, 0x0102_0304_0506_0708],
        };
        let b = rk.encode();
        assert_eq!(
            b,
            [0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(ReadKeys::decode(&b), Ok(rk));
        assert_eq!(declared_len(&b), Some(24));
        assert_eq!(
            ReadKeys::decode(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Ok(ReadKeys::default())
        );
    }

    #[test]
    fn read_keys_truncated_and_hostile() {
        let b = ReadKeys {
            generation: 9,
            keys: vec![1, 2, 3],
        }
        .encode();
        // Cut in the middle of key 3: two keys decoded.
        assert_eq!(ReadKeys::decode(&b[..28]).unwrap().keys, vec![1, 2]);
        assert_eq!(declared_len(&b[..28]), Some(32));
        // Declared length not a multiple of 8.
        let mut b2 = b.clone();
        b2[7] = 20;
        assert_eq!(ReadKeys::decode(&b2).unwrap().keys, vec![1, 2]);
        // Declared length shorter than data: the rest is ignored.
        b2[7] = 8;
        assert_eq!(ReadKeys::decode(&b2).unwrap().keys, vec![1]);
        // Huge declared length: no allocation beyond the input.
        b2[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(ReadKeys::decode(&b2).unwrap().keys, vec![1, 2, 3]);
        for n in 0..8 {
            assert_eq!(
                ReadKeys::decode(&b[..n]),
                Err(DecodeError::TooShort { need: 8, have: n })
            );
            assert_eq!(declared_len(&b[..n]), None);
        }
    }

    #[test]
    fn read_reservation_bytes() {
        let rr = ReadReservation {
            generation: 0x10,
            reservation: Some(Reservation {
                key: 0xabc,
                scope: 0,
                pr_type: 3,
            }),
        };
        let b = rr.encode();
        let mut want = vec![0, 0, 0, 0x10, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x0a, 0xbc];
        want.extend([0, 0, 0, 0, 0, 0x03, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(ReadReservation::decode(&b), Ok(rr));

        let none = ReadReservation {
            generation: 2,
            reservation: None,
        };
        assert_eq!(none.encode(), [0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(ReadReservation::decode(&none.encode()), Ok(none));

        let scoped = ReadReservation {
            generation: 0,
            reservation: Some(Reservation {
                key: 1,
                scope: 2,
                pr_type: 8,
            }),
        };
        assert_eq!(scoped.encode()[21], 0x28);
        assert_eq!(ReadReservation::decode(&scoped.encode()), Ok(scoped));
    }

    #[test]
    fn read_reservation_truncated() {
        let b = ReadReservation {
            generation: 1,
            reservation: Some(Reservation {
                key: 5,
                scope: 0,
                pr_type: 1,
            }),
        }
        .encode();
        assert_eq!(
            ReadReservation::decode(&b[..23]),
            Err(DecodeError::TooShort { need: 24, have: 23 })
        );
        assert_eq!(
            ReadReservation::decode(&b[..7]),
            Err(DecodeError::TooShort { need: 8, have: 7 })
        );
        let mut b2 = b.clone();
        b2[7] = 8; // too short to hold a descriptor: no reservation
        assert_eq!(ReadReservation::decode(&b2).unwrap().reservation, None);
    }

    #[test]
    fn capabilities_bytes() {
        let c = Capabilities {
            length: 8,
            rlr_c: false,
            crh: true,
            sip_c: true,
            atp_c: true,
            ptpl_c: true,
            tmv: true,
            allow_commands: 1,
            ptpl_a: false,
            type_mask: type_mask::ALL,
        };
        let b = c.encode();
        assert_eq!(b, [0, 8, 0x1d, 0x90, 0xea, 0x01, 0, 0]);
        assert_eq!(Capabilities::decode(&b), Ok(c));
        assert!(c.supports(1) && c.supports(8) && !c.supports(2) && !c.supports(0));
        let all = Capabilities {
            rlr_c: true,
            ptpl_a: true,
            allow_commands: 7,
            ..c
        };
        assert_eq!(all.encode()[2..4], [0x9d, 0xf1]);
        assert_eq!(Capabilities::decode(&all.encode()), Ok(all));
        assert_eq!(
            Capabilities::decode(&b[..7]),
            Err(DecodeError::TooShort { need: 8, have: 7 })
        );
        // Reserved bits are ignored.
        assert_eq!(
            Capabilities::decode(&[0, 8, 0x62, 0x0e, 0, 0, 9, 9]).unwrap(),
            Capabilities {
                length: 8,
                ..Default::default()
            }
        );
        // LENGTH is reported, not enforced.
        assert_eq!(
            Capabilities::decode(&[0, 12, 0, 0, 0, 0, 0, 0])
                .unwrap()
                .length,
            12
        );
    }

    fn sas(addr: u64) -> Vec<u8> {
        TransportId::Sas { address: addr }.encode()
    }

    #[test]
    fn full_status_bytes() {
        let fs = FullStatus {
            generation: 7,
            descriptors: vec![
                StatusDescriptor {
                    key: 0x11,
                    all_tg_pt: false,
                    r_holder: true,
                    scope: 0,
                    pr_type: 5,
                    relative_target_port: 1,
                    transport_id: sas(0x5001_4050_0000_0001),
                },
                StatusDescriptor {
                    key: 0x22,
                    all_tg_pt: true,
                    relative_target_port: 0,
                    ..Default::default()
                },
            ],
        };
        let b = fs.encode();
        assert_eq!(b.len(), 8 + 48 + 24);
        assert_eq!(&b[..8], &[0, 0, 0, 7, 0, 0, 0, 72]);
        let d0 = &b[8..32];
        assert_eq!(&d0[..8], &[0, 0, 0, 0, 0, 0, 0, 0x11]);
        assert_eq!(
            &d0[8..24],
            &[0, 0, 0, 0, 0x01, 0x05, 0, 0, 0, 0, 0, 1, 0, 0, 0, 24]
        );
        assert_eq!(&b[32..56], &sas(0x5001_4050_0000_0001)[..]);
        let d1 = &b[56..80];
        assert_eq!(d1[7], 0x22);
        assert_eq!(d1[12], 0x02);
        assert_eq!(&d1[20..24], &[0, 0, 0, 0]);
        let back = FullStatus::decode(&b).unwrap();
        assert_eq!(back, fs);
        assert_eq!(
            back.descriptors[0].transport_id(),
            TransportId::Sas {
                address: 0x5001_4050_0000_0001
            }
        );
        assert_eq!(
            FullStatus::decode(&[0, 0, 0, 1, 0, 0, 0, 0]),
            Ok(FullStatus {
                generation: 1,
                descriptors: vec![]
            })
        );
    }

    #[test]
    fn full_status_truncated_and_hostile() {
        let fs = FullStatus {
            generation: 1,
            descriptors: vec![
                StatusDescriptor {
                    key: 1,
                    transport_id: sas(1),
                    ..Default::default()
                },
                StatusDescriptor {
                    key: 2,
                    transport_id: sas(2),
                    ..Default::default()
                },
            ],
        };
        let b = fs.encode();
        for n in 8..b.len() {
            let got = FullStatus::decode(&b[..n]).unwrap();
            let want = if n >= 56 { 1 } else { 0 };
            assert_eq!(got.descriptors.len(), want, "cut at {n}");
        }
        // A descriptor claiming a huge TransportID ends the list without allocating it.
        let mut h = b.clone();
        h[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(FullStatus::decode(&h).unwrap().descriptors.len(), 0);
        // Declared length shorter than the data: stops there.
        let mut h = b.clone();
        h[7] = 48;
        assert_eq!(FullStatus::decode(&h).unwrap().descriptors.len(), 1);
    }

    #[test]
    fn decoders_survive_every_prefix_and_byte_flip() {
        let fs = FullStatus {
            generation: 1,
            descriptors: vec![StatusDescriptor {
                key: 1,
                transport_id: sas(1),
                ..Default::default()
            }],
        }
        .encode();
        for n in 0..=fs.len() {
            let p = &fs[..n];
            let _ = ReadKeys::decode(p);
            let _ = ReadReservation::decode(p);
            let _ = Capabilities::decode(p);
            let _ = FullStatus::decode(p);
        }
        for i in 0..fs.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = fs.clone();
                m[i] = v;
                let _ = ReadKeys::decode(&m);
                let _ = ReadReservation::decode(&m);
                let _ = FullStatus::decode(&m);
            }
        }
    }
}
