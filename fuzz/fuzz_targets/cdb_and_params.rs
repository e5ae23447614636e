// SPDX-License-Identifier: MIT OR Apache-2.0
//! CDB parsing and the PR OUT parameter list / TransportID codecs.
//!
//! The first byte selects what the rest of the input is used for; every mode starts with
//! the raw decoders on the remaining bytes, so any input exercises them.
//!
//! Checked: no panic; `CdbSummary::parse` reports exactly the CDB's fields; the CDB
//! builders produce what the parser reads back; for decoded parameter lists and
//! TransportIDs, `decode(encode(x)) == x` and the encoding is the input with reserved bits
//! cleared (never longer than the input); `TransportId::encode(from_bytes(b)) == b`;
//! `Display` gives a string `TransportId::parse` turns back into the same value (for the
//! forms it documents); structured values built from the input round-trip whenever they
//! are values the decoder can produce.
#![no_main]

use std::cell::RefCell;
use std::fmt::Write as _;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prhelper::proto::wire::pad_cdb;
use prhelper::scsi::cdb::{self, CdbSummary, PrInAction, PrOutAction, PrType};
use prhelper::scsi::prout::{
    self, BasicParams, RegisterMoveParams, TransportId, ALL_TG_PT, APTPL, SPEC_I_PT, UNREG,
};
use prhelper::sg3::{describe_into, type_name};

/// `names`: also run the type-name text (an allocation or two) on this CDB; its input is two
/// bytes, so once per fuzz input reaches all of it.
fn check_cdb(raw: &[u8; 16], names: bool) {
    let s = CdbSummary::parse(raw);
    assert_eq!(s.opcode, raw[0]);
    assert_eq!(s.service_action, raw[1] & 0x1f);
    assert_eq!(s.scope, raw[2] >> 4);
    assert_eq!(s.pr_type, raw[2] & 0x0f);
    assert_eq!(s.transfer_length, u16::from_be_bytes([raw[7], raw[8]]));
    let name = s.action_name();
    match raw[0] {
        0x5e => assert_eq!(
            PrInAction::from_code(s.service_action).is_some(),
            name != "unknown"
        ),
        0x5f => assert_eq!(
            PrOutAction::from_code(s.service_action).is_some(),
            name != "unknown"
        ),
        _ => assert_eq!(name, "not a PR command"),
    }
    if names {
        let _ = type_name(raw[2] & 0x0f);
        let _ = type_name(raw[3]);
    }
    if let Some(t) = PrType::from_code(raw[3]) {
        assert_eq!(t as u8, raw[3]);
    }
}

fn check_builders(u: &mut Unstructured) -> arbitrary::Result<()> {
    let a = PrInAction::ALL[usize::from(u8::arbitrary(u)?) % PrInAction::ALL.len()];
    let alloc = u16::arbitrary(u)?;
    let s = CdbSummary::parse(&pad_cdb(&cdb::pr_in(a, alloc)).unwrap());
    assert_eq!((s.opcode, s.service_action), (0x5e, a as u8));
    assert_eq!(s.transfer_length, alloc);
    assert_eq!(s.action_name(), a.name());

    let a = PrOutAction::ALL[usize::from(u8::arbitrary(u)?) % PrOutAction::ALL.len()];
    let (scope, ty, len) = (u8::arbitrary(u)?, u8::arbitrary(u)?, u32::arbitrary(u)?);
    let s = CdbSummary::parse(&pad_cdb(&cdb::pr_out(a, scope, ty, len)).unwrap());
    assert_eq!((s.opcode, s.service_action), (0x5f, a as u8));
    assert_eq!((s.scope, s.pr_type), (scope & 0x0f, ty & 0x0f));
    assert_eq!(s.transfer_length, len as u16);
    assert_eq!(s.action_name(), a.name());
    Ok(())
}

/// The string forms `parse` promises to read back from `Display`.
fn display_round_trips(t: &TransportId) -> bool {
    let iscsi = |n: &str| n.starts_with("iqn.") || n.starts_with("eui.");
    match t {
        TransportId::Fc { .. } | TransportId::Sas { .. } => true,
        TransportId::Iscsi { name } => iscsi(name) && !name.contains(",i,0x"),
        TransportId::IscsiPort { name } => iscsi(name) && name.contains(",i,0x"),
        TransportId::Raw(b) => b.len() >= prout::TID_LEN,
    }
}

/// Longest raw TransportID whose `Display` form is round-tripped. The formatting and parsing
/// are the same loop for any length past 24 bytes (the length of every non-iSCSI
/// TransportID); the whole input as one raw TransportID would cost a string three times
/// its size and its parse on every input for no new coverage.
const MAX_DISPLAYED_RAW: usize = 64;

fn check_tid_value(t: &TransportId) {
    let _ = t.protocol();
    if matches!(t, TransportId::Raw(b) if b.len() > MAX_DISPLAYED_RAW) {
        return;
    }
    let s = t.to_string();
    if display_round_trips(t) {
        assert_eq!(TransportId::parse(&s).as_ref(), Ok(t), "Display form {s:?}");
    }
}

/// How much of an input the TransportID list and description checks walk.
const MAX_WALKED: usize = 512;

/// How many of a decoded parameter list's TransportIDs go through `Display`/`parse`.
const MAX_DISPLAYED_TIDS: usize = 8;

/// How many 16-byte CDBs of an input mode 0 checks: parsing is the same code for every
/// one, and 256 of them (with two names each) were most of a 4 KiB input's time.
const MAX_CDBS: usize = 16;

thread_local! {
    /// The text buffer `describe_into` writes into, reused: kept, the fuzz target allocates
    /// nothing per description (under AddressSanitizer each allocation records a stack
    /// trace and fills up to 4 KiB).
    static TEXT: RefCell<String> = RefCell::new(String::with_capacity(8 * MAX_WALKED));
}

/// `describe` (no panic, its whole text built) into the reused buffer.
fn describe(leadin: &str, b: &[u8]) {
    TEXT.with(|t| {
        let mut t = t.borrow_mut();
        t.clear();
        describe_into(&mut t, leadin, b);
    });
}

/// A `fmt::Write` that discards: formatting runs (and must not panic), nothing is allocated.
struct Discard;

impl std::fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> std::fmt::Result {
        Ok(())
    }
}

fn check_tid_bytes(b: &[u8]) {
    let t = TransportId::from_bytes(b);
    assert_eq!(t.encode(), b, "encode(from_bytes(b)) != b for {t:?}");
    check_tid_value(&t);
    // Lists and descriptions go TransportID by TransportID with the same code for each:
    // a bounded prefix reaches all of it (a cut TransportID ends either walk). On a whole
    // 4 KiB input (170 TransportIDs, each re-encoded and compared, a 16 KiB description)
    // they were most of this target's time once the corpus held long inputs.
    let b = &b[..b.len().min(MAX_WALKED)];
    describe("  ", b);
    if let Ok(list) = TransportId::decode_list(b) {
        // The list re-encodes to the input, element by element.
        let mut off = 0;
        for t in &list {
            let e = t.encode();
            assert_eq!(b.get(off..off + e.len()), Some(&e[..]));
            off += e.len();
            assert_eq!(&TransportId::from_bytes(&e), t);
        }
        assert_eq!(off, b.len());
    }
    if let Ok(s) = std::str::from_utf8(b) {
        if let Ok(t) = TransportId::parse(s) {
            if !matches!(t, TransportId::Raw(_)) {
                // Parsed named forms are canonical: they survive the wire.
                assert_eq!(TransportId::from_bytes(&t.encode()), t, "{s:?}");
            }
            let _ = write!(Discard, "{t}");
        }
    }
}

fn check_basic(b: &[u8]) {
    let Ok(p) = BasicParams::decode(b) else {
        return;
    };
    let e = p.encode();
    assert_eq!(BasicParams::decode(&e).as_ref(), Ok(&p));
    assert!(e.len() <= b.len());
    assert_eq!(e[..16], b[..16]);
    assert_eq!(e[20], b[20] & (SPEC_I_PT | ALL_TG_PT | APTPL));
    assert_eq!(e[24..], b[24..e.len()]);
    if let Some(tids) = &p.transport_ids {
        for t in tids.iter().take(MAX_DISPLAYED_TIDS) {
            check_tid_value(t);
        }
    }
}

fn check_move(b: &[u8]) {
    let Ok(p) = RegisterMoveParams::decode(b) else {
        return;
    };
    let e = p.encode();
    assert_eq!(RegisterMoveParams::decode(&e).as_ref(), Ok(&p));
    assert!(e.len() <= b.len());
    assert_eq!(e[..16], b[..16]);
    assert_eq!(e[17], b[17] & (UNREG | APTPL));
    assert_eq!(e[18..], b[18..e.len()]);
    check_tid_value(&p.transport_id);
}

fn arbitrary_tid(u: &mut Unstructured) -> arbitrary::Result<TransportId> {
    let name = |u: &mut Unstructured| -> arbitrary::Result<String> {
        let n = u.int_in_range(0..=260)?;
        let prefix = if bool::arbitrary(u)? { "iqn." } else { "" };
        let mut s = String::from(prefix);
        for _ in 0..n {
            // Mostly printable ASCII, sometimes anything.
            let c = u8::arbitrary(u)?;
            s.push(if c < 0xe0 {
                char::from(0x21 + c % 94)
            } else {
                char::from(c)
            });
        }
        Ok(s)
    };
    Ok(match u.int_in_range(0..=4)? {
        0 => TransportId::Sas {
            address: u64::arbitrary(u)?,
        },
        1 => TransportId::Fc {
            name: u64::arbitrary(u)?,
        },
        2 => TransportId::Iscsi { name: name(u)? },
        3 => TransportId::IscsiPort { name: name(u)? },
        _ => TransportId::Raw(Vec::arbitrary(u)?),
    })
}

/// Whether `t` is a value `TransportId::decode_list` can produce.
fn decodable_in_list(t: &TransportId) -> bool {
    let e = t.encode();
    TransportId::wire_len(&e) == Some(e.len()) && &TransportId::from_bytes(&e) == t
}

fn check_structured(u: &mut Unstructured) -> arbitrary::Result<()> {
    let t = arbitrary_tid(u)?;
    let e = t.encode();
    check_tid_bytes(&e);
    if &TransportId::from_bytes(&e) == &t {
        check_tid_value(&t);
    }

    let n = u.int_in_range(0..=4)?;
    let mut tids = Vec::new();
    for _ in 0..n {
        tids.push(arbitrary_tid(u)?);
    }
    let spec = bool::arbitrary(u)?;
    let p = BasicParams {
        key: u64::arbitrary(u)?,
        sa_key: u64::arbitrary(u)?,
        all_tg_pt: bool::arbitrary(u)?,
        aptpl: bool::arbitrary(u)?,
        transport_ids: spec.then_some(tids),
    };
    let e = p.encode();
    let d = BasicParams::decode(&e);
    if p.transport_ids.iter().flatten().all(decodable_in_list) {
        assert_eq!(d.as_ref(), Ok(&p));
    }

    let m = RegisterMoveParams {
        key: u64::arbitrary(u)?,
        sa_key: u64::arbitrary(u)?,
        unreg: bool::arbitrary(u)?,
        aptpl: bool::arbitrary(u)?,
        relative_target_port: u16::arbitrary(u)?,
        transport_id: t,
    };
    let e = m.encode();
    let d = RegisterMoveParams::decode(&e);
    if TransportId::from_bytes(&m.transport_id.encode()) == m.transport_id {
        assert_eq!(d.as_ref(), Ok(&m));
    }
    Ok(())
}

/// Bytes after each split point that mode 3 decodes: two 24-byte TransportIDs (whole
/// iSCSI ones, up to 244 bytes, are decoded and described from offset 0 on every input;
/// a TransportID cut short is the end of every window that does not fall on the grid).
const SPLIT_WINDOW: usize = 2 * prout::TID_LEN;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The raw decoders, on every input.
    check_basic(rest);
    check_move(rest);
    check_tid_bytes(rest);
    let mut cdb16 = [0u8; 16];
    let n = rest.len().min(16);
    cdb16[..n].copy_from_slice(&rest[..n]);
    check_cdb(&cdb16, true);
    match mode % 4 {
        0 => {
            // Several CDBs in a row.
            for c in rest.chunks_exact(16).take(MAX_CDBS) {
                check_cdb(c.try_into().unwrap(), false);
            }
        }
        1 => {
            let _ = check_builders(&mut Unstructured::new(rest));
        }
        2 => {
            let _ = check_structured(&mut Unstructured::new(rest));
        }
        _ => {
            // A TransportID list as it appears in a SPEC_I_PT list, from every split point
            // within the first TransportID (offset 0 was decoded above; every alignment to
            // the 24-byte grid; the mutator moves bytes by any amount), each seen through a
            // window of SPLIT_WINDOW bytes: decoding and describing the whole rest at 64
            // offsets cost 64 times the work of one pass for no new coverage, as both walk
            // TransportID by TransportID.
            for i in 1..rest.len().min(prout::TID_LEN) {
                let w = &rest[i..rest.len().min(i + SPLIT_WINDOW)];
                let _ = TransportId::decode_list(w);
                describe("", w);
            }
        }
    }
});
