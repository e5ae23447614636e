// SPDX-License-Identifier: MIT OR Apache-2.0
//! TransportIDs (SPC-4 7.6.4): how PR OUT parameter lists and READ FULL STATUS name an
//! initiator port. Pure code: no I/O, no `unsafe`.
//!
//! Decoders never panic and never allocate more than their input's size;
//! `decode(encode(x)) == x` and `encode(decode(b)) == b`.

use super::be_u64;
use super::prout::DecodeError;

/// TransportID protocol identifiers (SPC-4 table 362).
pub mod proto_id {
    /// Fibre Channel.
    pub const FC: u8 = 0x0;
    /// Parallel SCSI.
    pub const SPI: u8 = 0x1;
    /// SSA.
    pub const SSA: u8 = 0x2;
    /// IEEE 1394.
    pub const IEEE_1394: u8 = 0x3;
    /// SCSI RDMA (SRP).
    pub const SRP: u8 = 0x4;
    /// iSCSI.
    pub const ISCSI: u8 = 0x5;
    /// SAS.
    pub const SAS: u8 = 0x6;
    /// Automation/drive interface (ADT).
    pub const ADT: u8 = 0x7;
    /// ATA/ATAPI.
    pub const ATA: u8 = 0x8;
    /// USB attached SCSI (UAS).
    pub const UAS: u8 = 0x9;
    /// SCSI over PCI Express (SOP).
    pub const SOP: u8 = 0xa;
    /// PCI Express.
    pub const PCIE: u8 = 0xb;
    /// No specific protocol.
    pub const NONE: u8 = 0xf;
}

/// Length of every TransportID except iSCSI's.
pub const TID_LEN: usize = 24;
/// Largest iSCSI additional length we build (sg_persist's limit is 241, rounded down to 4).
pub const MAX_ISCSI_ADDITIONAL: usize = 240;

/// One TransportID. Canonical forms of the FC, SAS and iSCSI formats decode to their own
/// variants; everything else (other protocols, non-zero reserved bytes, odd padding) is kept
/// byte for byte in [`TransportId::Raw`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransportId {
    /// Fibre Channel (protocol 0, format 0): the 8-byte N_Port name at bytes 8..16.
    Fc {
        /// N_Port name.
        name: u64,
    },
    /// SAS (protocol 6, format 0): the SAS address at bytes 4..12.
    Sas {
        /// SAS address.
        address: u64,
    },
    /// iSCSI (protocol 5, format 0): an iSCSI name, NUL-terminated and padded to 4 bytes.
    Iscsi {
        /// iSCSI name (e.g. `iqn.…`).
        name: String,
    },
    /// iSCSI (protocol 5, format 1): an initiator port name, `name,i,0xISID`.
    IscsiPort {
        /// `NAME,i,0xISID`.
        name: String,
    },
    /// Any other byte string, sent and shown as is.
    Raw(Vec<u8>),
}

/// Errors from [`TransportId::parse`] (the `--transport-id` string forms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseTidError {
    /// Nothing to parse.
    #[error("empty TransportID")]
    Empty,
    #[error("badly formed {kind} TransportID {text:?}: expected 16 hex digits")]
    /// A `sas,`/`fc,`/`naa.` form without 16 hex digits.
    BadWwn {
        /// Which form.
        kind: &'static str,
        /// The text given.
        text: String,
    },
    #[error("iSCSI name {0:?} is empty, too long or not printable ASCII")]
    /// An iSCSI name that cannot be sent.
    BadIscsi(String),
    #[error("unable to parse TransportID {0:?}: expected sas,HEX16 / fc,HEX16 / naa.HEX16 / iqn.NAME / eui.NAME or comma-separated hex bytes")]
    /// None of the forms.
    Unrecognised(String),
}

/// Canonical iSCSI additional length for a name of `len` bytes: name plus at least one NUL,
/// at least 20, a multiple of 4.
fn iscsi_additional(len: usize) -> usize {
    (len + 1).max(20).div_ceil(4) * 4
}

fn valid_iscsi_name(name: &str) -> bool {
    !name.is_empty()
        && iscsi_additional(name.len()) <= MAX_ISCSI_ADDITIONAL
        && name.bytes().all(|b| b.is_ascii_graphic())
}

impl TransportId {
    /// Protocol identifier (low nibble of byte 0).
    pub fn protocol(&self) -> u8 {
        match self {
            TransportId::Fc { .. } => proto_id::FC,
            TransportId::Sas { .. } => proto_id::SAS,
            TransportId::Iscsi { .. } | TransportId::IscsiPort { .. } => proto_id::ISCSI,
            TransportId::Raw(b) => b.first().map_or(proto_id::NONE, |b| b & 0x0f),
        }
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TransportId::Fc { name } => {
                let mut b = vec![0u8; TID_LEN];
                b[0] = proto_id::FC;
                b[8..16].copy_from_slice(&name.to_be_bytes());
                b
            }
            TransportId::Sas { address } => {
                let mut b = vec![0u8; TID_LEN];
                b[0] = proto_id::SAS;
                b[4..12].copy_from_slice(&address.to_be_bytes());
                b
            }
            TransportId::Iscsi { name } | TransportId::IscsiPort { name } => {
                let format = if matches!(self, TransportId::IscsiPort { .. }) {
                    0x40
                } else {
                    0
                };
                let add = iscsi_additional(name.len());
                let mut b = vec![0u8; 4 + add];
                b[0] = format | proto_id::ISCSI;
                // Additional length is 16 bits; names past 65530 bytes are cut (never canonical).
                b[2..4].copy_from_slice(&(add.min(usize::from(u16::MAX)) as u16).to_be_bytes());
                b[4..4 + name.len()].copy_from_slice(name.as_bytes());
                b
            }
            TransportId::Raw(b) => b.clone(),
        }
    }

    /// Classify one TransportID's bytes (exactly the TransportID, nothing after it).
    pub fn from_bytes(b: &[u8]) -> TransportId {
        Self::canonical(b).unwrap_or_else(|| TransportId::Raw(b.to_vec()))
    }

    fn canonical(b: &[u8]) -> Option<TransportId> {
        let zero = |r: std::ops::Range<usize>| b[r].iter().all(|&x| x == 0);
        match *b.first()? {
            0x00 if b.len() == TID_LEN && zero(1..8) && zero(16..24) => Some(TransportId::Fc {
                name: be_u64(&b[8..16]),
            }),
            0x06 if b.len() == TID_LEN && zero(1..4) && zero(12..24) => Some(TransportId::Sas {
                address: be_u64(&b[4..12]),
            }),
            first @ (0x05 | 0x45) if b.len() >= 4 && b[1] == 0 => {
                let add = usize::from(u16::from_be_bytes([b[2], b[3]]));
                if b.len() != 4 + add {
                    return None;
                }
                let body = &b[4..];
                let end = body.iter().position(|&x| x == 0)?;
                let name = std::str::from_utf8(&body[..end]).ok()?;
                if !valid_iscsi_name(name)
                    || iscsi_additional(end) != add
                    || !body[end..].iter().all(|&x| x == 0)
                {
                    return None;
                }
                let name = name.to_owned();
                Some(if first == 0x45 {
                    TransportId::IscsiPort { name }
                } else {
                    TransportId::Iscsi { name }
                })
            }
            _ => None,
        }
    }

    /// Length of the TransportID starting at `b[0]`, as a device server computes it: iSCSI
    /// carries its own length, every other protocol is 24 bytes. `None` if `b` is too short
    /// to tell.
    pub fn wire_len(b: &[u8]) -> Option<usize> {
        let first = *b.first()?;
        if first & 0x0f == proto_id::ISCSI {
            let add = b.get(2..4)?;
            Some(4 + usize::from(u16::from_be_bytes([add[0], add[1]])))
        } else {
            Some(TID_LEN)
        }
    }

    /// Split a list of concatenated TransportIDs (as in a SPEC_I_PT parameter list).
    pub fn decode_list(b: &[u8]) -> Result<Vec<TransportId>, DecodeError> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < b.len() {
            let rest = &b[off..];
            let need = Self::wire_len(rest).unwrap_or(4);
            if need > rest.len() {
                return Err(DecodeError::TidTruncated {
                    offset: off,
                    need,
                    have: rest.len(),
                });
            }
            out.push(Self::from_bytes(&rest[..need]));
            off += need;
        }
        Ok(out)
    }

    /// Parse one of sg_persist's `--transport-id` forms:
    /// - `sas,HEX16` (SAS address; `0x` prefix allowed),
    /// - `fcp,HEX16` or `fc,HEX16` (FC N_Port name),
    /// - `naa.HEX16`: a SAS NAA WWN as LIO's tcm_loop and SAS fabrics name initiators,
    /// - `iqn.…` or `eui.…`: iSCSI name; with `,i,0x` in it, an iSCSI initiator port (format 1),
    /// - comma- or space-separated hex bytes (sent as is, zero-padded to 24 bytes).
    pub fn parse(s: &str) -> Result<TransportId, ParseTidError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseTidError::Empty);
        }
        let lower = s.to_ascii_lowercase();
        let wwn = |kind: &'static str, rest: &str| -> Result<u64, ParseTidError> {
            let h = rest
                .strip_prefix("0x")
                .or_else(|| rest.strip_prefix("0X"))
                .unwrap_or(rest);
            if h.len() != 16 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ParseTidError::BadWwn {
                    kind,
                    text: rest.to_owned(),
                });
            }
            u64::from_str_radix(h, 16).map_err(|_| ParseTidError::BadWwn {
                kind,
                text: rest.to_owned(),
            })
        };
        if lower.starts_with("sas,") {
            return Ok(TransportId::Sas {
                address: wwn("SAS", &s[4..])?,
            });
        }
        if lower.starts_with("naa.") {
            return Ok(TransportId::Sas {
                address: wwn("NAA", &s[4..])?,
            });
        }
        if lower.starts_with("fcp,") {
            return Ok(TransportId::Fc {
                name: wwn("FCP", &s[4..])?,
            });
        }
        // "fc,..." is also how a byte list starting with 0xfc reads (and how `Display` shows
        // a raw TransportID starting with 0xfc): a list of 1- or 2-digit hex tokens is bytes,
        // as sg_persist (which has no "fc," form) reads it. A WWN is one 16-digit token.
        if lower.starts_with("fc,") && !is_hex_byte_list(s) {
            return Ok(TransportId::Fc {
                name: wwn("FC", &s[3..])?,
            });
        }
        if s.starts_with("iqn.") || s.starts_with("eui.") {
            if !valid_iscsi_name(s) {
                return Err(ParseTidError::BadIscsi(s.to_owned()));
            }
            let name = s.to_owned();
            return Ok(if s.contains(",i,0x") {
                TransportId::IscsiPort { name }
            } else {
                TransportId::Iscsi { name }
            });
        }
        let mut bytes = Vec::new();
        for tok in s.split([',', ' ']).filter(|t| !t.is_empty()) {
            if tok.len() > 2 {
                return Err(ParseTidError::Unrecognised(s.to_owned()));
            }
            bytes.push(
                u8::from_str_radix(tok, 16)
                    .map_err(|_| ParseTidError::Unrecognised(s.to_owned()))?,
            );
        }
        if bytes.is_empty() {
            return Err(ParseTidError::Unrecognised(s.to_owned()));
        }
        if bytes.len() < TID_LEN {
            bytes.resize(TID_LEN, 0);
        }
        Ok(TransportId::Raw(bytes))
    }
}

/// Whether `s` is a comma- or space-separated list of 1- or 2-digit hex bytes.
fn is_hex_byte_list(s: &str) -> bool {
    s.split([',', ' '])
        .filter(|t| !t.is_empty())
        .all(|t| t.len() <= 2 && t.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl std::fmt::Display for TransportId {
    /// The short form [`TransportId::parse`] accepts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportId::Fc { name } => write!(f, "fcp,{name:016x}"),
            TransportId::Sas { address } => write!(f, "sas,{address:016x}"),
            TransportId::Iscsi { name } | TransportId::IscsiPort { name } => f.write_str(name),
            TransportId::Raw(b) => {
                for (i, &x) in b.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(super::hex_byte(x))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAS: u64 = 0x5001_4050_0000_0001;

    #[test]
    fn sas_bytes() {
        let t = TransportId::Sas { address: SAS };
        let b = t.encode();
        assert_eq!(
            b,
            [6, 0, 0, 0, 0x50, 0x01, 0x40, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(TransportId::from_bytes(&b), t);
        assert_eq!(t.protocol(), 6);
    }

    #[test]
    fn fc_bytes() {
        let t = TransportId::Fc {
            name: 0x2000_0000_c912_3456,
        };
        let b = t.encode();
        let mut want = [0u8; 24];
        want[8..16].copy_from_slice(&[0x20, 0, 0, 0, 0xc9, 0x12, 0x34, 0x56]);
        assert_eq!(b, want);
        assert_eq!(TransportId::from_bytes(&b), t);
    }

    #[test]
    fn iscsi_bytes() {
        // 13-byte name: 14 with the NUL, rounded up to the minimum of 20.
        let t = TransportId::Iscsi {
            name: "iqn.2003-01.x".into(),
        };
        let b = t.encode();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[..4], &[0x05, 0, 0, 20]);
        assert_eq!(&b[4..17], b"iqn.2003-01.x");
        assert!(b[17..].iter().all(|&x| x == 0));
        assert_eq!(TransportId::from_bytes(&b), t);

        // 23-byte name + NUL = 24, already a multiple of 4.
        let name = "iqn.2003-01.org.example";
        assert_eq!(name.len(), 23);
        let b = TransportId::Iscsi { name: name.into() }.encode();
        assert_eq!(b.len(), 28);
        assert_eq!(b[3], 24);
        // 24 bytes + NUL = 25 -> 28.
        let b = TransportId::Iscsi {
            name: format!("{name}1"),
        }
        .encode();
        assert_eq!(b[3], 28);
        assert_eq!(b.len(), 32);

        let t = TransportId::IscsiPort {
            name: "iqn.x.y,i,0x00023d000001".into(),
        };
        let b = t.encode();
        assert_eq!(b[0], 0x45);
        assert_eq!(TransportId::from_bytes(&b), t);
    }

    #[test]
    fn non_canonical_stays_raw() {
        let mut b = TransportId::Sas { address: SAS }.encode();
        b[20] = 1; // reserved byte set
        assert_eq!(TransportId::from_bytes(&b), TransportId::Raw(b.clone()));
        // iSCSI padding with garbage after the NUL
        let mut b = TransportId::Iscsi {
            name: "iqn.a".into(),
        }
        .encode();
        b[23] = b'x';
        assert!(matches!(TransportId::from_bytes(&b), TransportId::Raw(_)));
        // iSCSI additional length larger than canonical
        let mut b = TransportId::Iscsi {
            name: "iqn.a".into(),
        }
        .encode();
        b[3] = 24;
        b.extend([0; 4]);
        assert!(matches!(TransportId::from_bytes(&b), TransportId::Raw(_)));
        // empty / short / unknown protocol
        assert_eq!(TransportId::from_bytes(&[]), TransportId::Raw(vec![]));
        assert_eq!(TransportId::from_bytes(&[5]), TransportId::Raw(vec![5]));
        assert_eq!(
            TransportId::from_bytes(&[0x0f; 24]),
            TransportId::Raw(vec![0x0f; 24])
        );
    }

    #[test]
    fn parse_forms() {
        let sas = TransportId::Sas { address: SAS };
        assert_eq!(TransportId::parse("sas,5001405000000001"), Ok(sas.clone()));
        assert_eq!(
            TransportId::parse("SAS,0x5001405000000001"),
            Ok(sas.clone())
        );
        assert_eq!(TransportId::parse("naa.5001405000000001"), Ok(sas.clone()));
        assert_eq!(
            TransportId::parse("fcp,20000000c9123456"),
            Ok(TransportId::Fc {
                name: 0x2000_0000_c912_3456
            })
        );
        assert_eq!(
            TransportId::parse("fc,0x20000000c9123456"),
            Ok(TransportId::Fc {
                name: 0x2000_0000_c912_3456
            })
        );
        assert_eq!(
            TransportId::parse("iqn.1994-05.com.redhat:abc"),
            Ok(TransportId::Iscsi {
                name: "iqn.1994-05.com.redhat:abc".into()
            })
        );
        assert_eq!(
            TransportId::parse("iqn.a,i,0x1234"),
            Ok(TransportId::IscsiPort {
                name: "iqn.a,i,0x1234".into()
            })
        );
        let raw = TransportId::parse("6,0,0,0,50,1,40,50").unwrap();
        let TransportId::Raw(b) = &raw else {
            panic!("{raw:?}")
        };
        assert_eq!(b.len(), 24);
        assert_eq!(&b[..8], &[6, 0, 0, 0, 0x50, 1, 0x40, 0x50]);
        assert_eq!(
            TransportId::parse("6 0 0"),
            Ok(TransportId::Raw({
                let mut v = vec![6, 0, 0];
                v.resize(24, 0);
                v
            }))
        );
        assert!(matches!(
            TransportId::parse("sas,123"),
            Err(ParseTidError::BadWwn { .. })
        ));
        assert!(matches!(
            TransportId::parse("naa.50014050000000011"),
            Err(ParseTidError::BadWwn { .. })
        ));
        assert!(matches!(
            TransportId::parse("sas,500140500000000g"),
            Err(ParseTidError::BadWwn { .. })
        ));
        assert_eq!(TransportId::parse(""), Err(ParseTidError::Empty));
        assert!(matches!(
            TransportId::parse("bogus"),
            Err(ParseTidError::Unrecognised(_))
        ));
        assert!(matches!(
            TransportId::parse("100,1"),
            Err(ParseTidError::Unrecognised(_))
        ));
        assert!(matches!(
            TransportId::parse(&format!("iqn.{}", "a".repeat(300))),
            Err(ParseTidError::BadIscsi(_))
        ));
        assert!(matches!(
            TransportId::parse("iqn.a b"),
            Err(ParseTidError::BadIscsi(_))
        ));
        // Display gives back a parseable form.
        for t in [
            sas,
            TransportId::Fc { name: 1 },
            TransportId::Iscsi {
                name: "iqn.q".into(),
            },
        ] {
            assert_eq!(TransportId::parse(&t.to_string()), Ok(t));
        }
    }

    /// Found by fuzz/cdb_and_params: a raw TransportID starting with 0xfc was displayed
    /// as "fc,d5,cf,..." and parsed back as a malformed "fc,WWN".
    #[test]
    fn raw_starting_with_fc_displays_parseably() {
        let mut b = vec![0xfc, 0xd5, 0xcf];
        b.resize(75, 0x1e);
        let t = TransportId::Raw(b);
        assert_eq!(TransportId::parse(&t.to_string()), Ok(t));
        let t = TransportId::Raw(vec![0xfc; 24]);
        assert_eq!(TransportId::parse(&t.to_string()), Ok(t));
        assert_eq!(
            TransportId::parse("fc,12"),
            Ok(TransportId::Raw({
                let mut v = vec![0xfc, 0x12];
                v.resize(24, 0);
                v
            }))
        );
        // The FC forms are unchanged.
        assert_eq!(
            TransportId::parse("fc,0x20000000c9123456"),
            Ok(TransportId::Fc {
                name: 0x2000_0000_c912_3456
            })
        );
        assert!(matches!(
            TransportId::parse("fc,123"),
            Err(ParseTidError::BadWwn { .. })
        ));
    }
}
