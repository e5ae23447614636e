//! PERSISTENT RESERVE OUT parameter lists (SPC-4 6.16.3, 6.16.4) and TransportIDs
//! (SPC-4 7.6.4). Pure code: no I/O, no `unsafe`.
//!
//! Decoders never panic and never allocate more than their input's size. The encoders are
//! the decoders' inverse: for every value `x` the decoder can produce,
//! `decode(encode(x)) == x`; for TransportIDs, additionally `encode(decode(b)) == b`.

use std::fmt::Write as _;

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

/// TransportID protocol identifiers (SPC-4 table 362).
pub mod proto_id {
    pub const FC: u8 = 0x0;
    pub const SPI: u8 = 0x1;
    pub const SSA: u8 = 0x2;
    pub const IEEE_1394: u8 = 0x3;
    pub const SRP: u8 = 0x4;
    pub const ISCSI: u8 = 0x5;
    pub const SAS: u8 = 0x6;
    pub const ADT: u8 = 0x7;
    pub const ATA: u8 = 0x8;
    pub const UAS: u8 = 0x9;
    pub const SOP: u8 = 0xa;
    pub const PCIE: u8 = 0xb;
    pub const NONE: u8 = 0xf;
}

/// Length of every TransportID except iSCSI's.
pub const TID_LEN: usize = 24;
/// Largest iSCSI additional length we build (sg_persist's limit is 241, rounded down to 4).
pub const MAX_ISCSI_ADDITIONAL: usize = 240;

/// Why a parameter list or TransportID could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("parameter list too short: {have} bytes, at least {need} needed")]
    TooShort { need: usize, have: usize },
    #[error("TransportID list length {declared} exceeds the {have} bytes present")]
    ListOverrun { declared: usize, have: usize },
    #[error("TransportID at offset {offset} is cut short: {need} bytes needed, {have} left")]
    TidTruncated {
        offset: usize,
        need: usize,
        have: usize,
    },
}

/// One TransportID. Canonical forms of the FC, SAS and iSCSI formats decode to their own
/// variants; everything else (other protocols, non-zero reserved bytes, odd padding) is kept
/// byte for byte in [`TransportId::Raw`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransportId {
    /// Fibre Channel (protocol 0, format 0): the 8-byte N_Port name at bytes 8..16.
    Fc { name: u64 },
    /// SAS (protocol 6, format 0): the SAS address at bytes 4..12.
    Sas { address: u64 },
    /// iSCSI (protocol 5, format 0): an iSCSI name, NUL-terminated and padded to 4 bytes.
    Iscsi { name: String },
    /// iSCSI (protocol 5, format 1): an initiator port name, `name,i,0xISID`.
    IscsiPort { name: String },
    /// Any other byte string, sent and shown as is.
    Raw(Vec<u8>),
}

/// Errors from [`TransportId::parse`] (the `--transport-id` string forms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseTidError {
    #[error("empty TransportID")]
    Empty,
    #[error("badly formed {kind} TransportID {text:?}: expected 16 hex digits")]
    BadWwn { kind: &'static str, text: String },
    #[error("iSCSI name {0:?} is empty, too long or not printable ASCII")]
    BadIscsi(String),
    #[error("unable to parse TransportID {0:?}: expected sas,HEX16 / fc,HEX16 / naa.HEX16 / iqn.NAME / eui.NAME or comma-separated hex bytes")]
    Unrecognised(String),
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
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

/// Format bytes as sg3_utils' `hex2str` does with no address column: 16 per line, an extra
/// space after the 8th, each line prefixed by `leadin`.
pub fn hex_lines(out: &mut String, leadin: &str, b: &[u8]) {
    for chunk in b.chunks(16) {
        out.reserve(leadin.len() + 3 * 16 + 2);
        out.push_str(leadin);
        for (i, &x) in chunk.iter().enumerate() {
            out.push_str(match i {
                0 => "",
                8 => "  ",
                _ => " ",
            });
            out.push_str(hex_byte(x));
        }
        out.push('\n');
    }
}

/// `x` as two lowercase hex digits (what `{x:02x}` gives, without the formatting machinery:
/// TransportIDs and sense are printed byte by byte).
fn hex_byte(x: u8) -> &'static str {
    const DIGITS: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
        202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\
        404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f\
        606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f\
        808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\
        a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\
        c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf\
        e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    let i = 2 * usize::from(x);
    &DIGITS[i..i + 2]
}

/// Describe one or more TransportIDs the way sg_persist prints them (sg3_utils'
/// `sg_decode_transportid_str`), every line prefixed by `leadin`. Works on raw bytes and
/// never panics.
pub fn describe(leadin: &str, bytes: &[u8]) -> String {
    // About two lines per TransportID; hex dumps take three characters a byte.
    let mut out = String::with_capacity(4 * bytes.len() + 2 * leadin.len() + 64);
    let mut off = 0;
    while off < bytes.len() {
        let b = &bytes[off..];
        if b.len() < TID_LEN || b.len() % 4 != 0 {
            let _ = writeln!(
                out,
                "{leadin}Transport Id short or not multiple of 4 [length={}]:",
                b.len()
            );
        } else {
            let _ = writeln!(out, "{leadin}Transport Id of initiator:");
        }
        let format = b[0] >> 6;
        let proto = b[0] & 0x0f;
        let get = |r: std::ops::Range<usize>| b.get(r.start..r.end.min(b.len())).unwrap_or(&[]);
        let mut bump = TID_LEN;
        let unexpected = |out: &mut String| {
            if format != 0 {
                let _ = writeln!(out, "{leadin}  [Unexpected TPID format: {format}]");
            }
        };
        match proto {
            proto_id::FC => {
                let _ = writeln!(out, "{leadin}  FCP-2 World Wide Name:");
                unexpected(&mut out);
                hex_lines(&mut out, leadin, get(8..16));
            }
            proto_id::SPI => {
                let a = get(2..4);
                let p = get(6..8);
                let be16 = |x: &[u8]| {
                    if x.len() == 2 {
                        u16::from_be_bytes([x[0], x[1]])
                    } else {
                        0
                    }
                };
                let _ = writeln!(
                    out,
                    "{leadin}  Parallel SCSI initiator SCSI address: {:#x}",
                    be16(a)
                );
                unexpected(&mut out);
                let _ = writeln!(
                    out,
                    "{leadin}  relative port number (of corresponding target): {:#x}",
                    be16(p)
                );
            }
            proto_id::IEEE_1394 => {
                let _ = writeln!(out, "{leadin}  IEEE 1394 EUI-64 name:");
                unexpected(&mut out);
                hex_lines(&mut out, leadin, get(8..16));
            }
            proto_id::SRP => {
                let _ = writeln!(out, "{leadin}  RDMA initiator port identifier:");
                unexpected(&mut out);
                hex_lines(&mut out, leadin, get(8..24));
            }
            proto_id::ISCSI => {
                let num = match get(2..4) {
                    [h, l] => usize::from(u16::from_be_bytes([*h, *l])),
                    _ => 0,
                };
                let body = get(4..4 + num);
                let text = body.split(|&x| x == 0).next().unwrap_or(&[]);
                let text = String::from_utf8_lossy(text);
                match format {
                    0 => {
                        let _ = writeln!(out, "{leadin}  iSCSI name: {text}");
                    }
                    1 => {
                        let _ = writeln!(out, "{leadin}  iSCSI world wide unique port id: {text}");
                    }
                    _ => {
                        let _ =
                            writeln!(out, "{leadin}  iSCSI   [Unexpected TPID format: {format}]");
                        hex_lines(&mut out, leadin, get(0..4 + num));
                    }
                }
                bump = (num + 4).max(TID_LEN);
            }
            proto_id::SAS => {
                let a = get(4..12);
                let addr = if a.len() == 8 { be_u64(a) } else { 0 };
                let _ = writeln!(out, "{leadin}  SAS address: {addr:#x}");
                unexpected(&mut out);
            }
            proto_id::SOP => {
                let r = match get(2..4) {
                    [h, l] => u16::from_be_bytes([*h, *l]),
                    _ => 0,
                };
                if format == 0 {
                    let _ = writeln!(out, "{leadin}  SOP Routing ID: {r:#x}");
                } else {
                    let _ = writeln!(out, "{leadin}  SOP   [Unexpected TPID format: {format}]");
                    hex_lines(&mut out, leadin, get(0..TID_LEN));
                }
            }
            proto_id::NONE => {
                let _ = writeln!(out, "{leadin}  No specified protocol");
            }
            p => {
                let name = match p {
                    proto_id::SSA => Some("SSA (transport id not defined)"),
                    proto_id::ADT => Some("ADT"),
                    proto_id::ATA => Some("ATAPI"),
                    proto_id::UAS => Some("UAS"),
                    proto_id::PCIE => Some("PCIE"),
                    _ => None,
                };
                match name {
                    Some(n) => {
                        let _ = writeln!(out, "{leadin}  {n}:");
                        let _ = writeln!(out, "{leadin}  TPID format: {format}");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{leadin}  unknown protocol id={p:#x}  TPID format={format}"
                        );
                    }
                }
                hex_lines(&mut out, leadin, get(0..TID_LEN));
            }
        }
        off += bump;
    }
    out
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
                    f.write_str(hex_byte(x))?;
                }
                Ok(())
            }
        }
    }
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

    #[test]
    fn describe_like_sg_persist() {
        let d = describe("      ", &TransportId::Sas { address: SAS }.encode());
        assert_eq!(
            d,
            "      Transport Id of initiator:\n        SAS address: 0x5001405000000001\n"
        );
        let d = describe(
            "      ",
            &TransportId::Fc {
                name: 0x2001_0000_0000_00aa,
            }
            .encode(),
        );
        assert_eq!(
            d,
            "      Transport Id of initiator:\n        FCP-2 World Wide Name:\n      20 01 00 00 00 00 00 aa\n"
        );
        let d = describe(
            "      ",
            &TransportId::IscsiPort {
                name: "iqn.x,i,0x123456".into(),
            }
            .encode(),
        );
        assert_eq!(d, "      Transport Id of initiator:\n        iSCSI world wide unique port id: iqn.x,i,0x123456\n");
        let d = describe(
            "",
            &TransportId::Iscsi {
                name: "iqn.y".into(),
            }
            .encode(),
        );
        assert_eq!(d, "Transport Id of initiator:\n  iSCSI name: iqn.y\n");
        let mut sop = [0u8; 24];
        sop[0] = 0x0a;
        assert_eq!(
            describe("", &sop),
            "Transport Id of initiator:\n  SOP Routing ID: 0x0\n"
        );
        sop[0] = 0x0f;
        assert_eq!(
            describe("", &sop),
            "Transport Id of initiator:\n  No specified protocol\n"
        );
        // Short input: no panic, flagged.
        let d = describe("", &[6, 0, 0]);
        assert!(
            d.starts_with("Transport Id short or not multiple of 4 [length=3]:\n"),
            "{d}"
        );
        // Two in a row.
        let mut two = TransportId::Sas { address: 1 }.encode();
        two.extend(TransportId::Sas { address: 2 }.encode());
        assert_eq!(describe("", &two).matches("SAS address").count(), 2);
    }

    #[test]
    fn describe_never_panics_on_prefixes() {
        let mut all = TransportId::Iscsi {
            name: "iqn.2003-01.org.example:abc".into(),
        }
        .encode();
        all.extend(TransportId::Fc { name: 7 }.encode());
        all.extend([0x05, 0, 0xff, 0xff, b'i']);
        for n in 0..=all.len() {
            let _ = describe(" ", &all[..n]);
            let _ = TransportId::decode_list(&all[..n]);
        }
        for first in 0..=255u8 {
            let _ = describe("", &[first, 0, 0, 8, 0, 0]);
        }
    }

    #[test]
    fn hex_byte_is_02x() {
        for x in 0..=255u8 {
            assert_eq!(hex_byte(x), format!("{x:02x}"));
        }
        let raw = TransportId::Raw(vec![0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(raw.to_string(), "00,0f,a5,ff");
    }

    #[test]
    fn hex_lines_layout() {
        let mut s = String::new();
        hex_lines(&mut s, "  ", &(0..18).collect::<Vec<u8>>());
        assert_eq!(
            s,
            "  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f\n  10 11\n"
        );
    }

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
