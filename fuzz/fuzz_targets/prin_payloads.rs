// SPDX-License-Identifier: MIT OR Apache-2.0
//! The PR IN parameter data decoders (READ KEYS, READ RESERVATION, REPORT CAPABILITIES,
//! READ FULL STATUS) on what a hostile device or helper could return.
//!
//! Input: byte 0 selects the mode, the rest is the payload (or, in mode 1, the material
//! for structured values).
//!
//! Checked: no panic; the bytes allocated while decoding are bounded by the input's size
//! (a hostile ADDITIONAL LENGTH or TransportID length allocates nothing), and so are the
//! decoded vectors' capacities; what is decoded is what the declared length and the bytes
//! present allow; `decode(encode(x)) == x` for every decoded `x`, and `encode(x)` is never
//! longer than the input; for values built from the input, `decode(encode(x)) == x` and a
//! reply cut at any allocation length decodes to a prefix of `x` (migration-style READ KEYS
//! with a growing allocation length).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prhelper::scsi::prin::{
    declared_len, Capabilities, FullStatus, ReadKeys, ReadReservation, Reservation,
    StatusDescriptor, FULL_STATUS_DESC_LEN, HEADER_LEN,
};

/// Counts the bytes this thread asks the allocator for.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(n: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(n)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f`, returning its result and the bytes it allocated.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATED.with(|a| a.set(0));
    let r = f();
    (r, ALLOCATED.with(Cell::get))
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn check_raw(b: &[u8]) {
    // What the header lets a decoder look at.
    let body = if b.len() >= HEADER_LEN {
        assert_eq!(declared_len(b), Some(8 + be32(&b[4..8]) as u64));
        let body = &b[HEADER_LEN..];
        &body[..be32(&b[4..8]).min(body.len())]
    } else {
        assert_eq!(declared_len(b), None);
        &[][..]
    };

    let (rk, bytes) = measured(|| ReadKeys::decode(b));
    assert!(
        bytes <= b.len(),
        "READ KEYS allocated {bytes} for {} bytes",
        b.len()
    );
    if let Ok(rk) = rk {
        assert_eq!(rk.keys.len(), body.len() / 8);
        assert!(rk.keys.capacity() <= b.len() / 8);
        let e = rk.encode();
        assert!(e.len() <= b.len());
        assert_eq!(e[..4], b[..4]);
        assert_eq!(e[8..], body[..e.len() - 8]);
        assert_eq!(ReadKeys::decode(&e), Ok(rk));
    } else {
        assert!(b.len() < HEADER_LEN);
    }

    let (rr, bytes) = measured(|| ReadReservation::decode(b));
    assert_eq!(bytes, 0, "READ RESERVATION allocated");
    if let Ok(rr) = rr {
        let e = rr.encode();
        assert!(e.len() <= b.len());
        assert_eq!(rr.reservation.is_some(), be32(&b[4..8]) >= 16);
        assert_eq!(ReadReservation::decode(&e), Ok(rr));
    }

    let (caps, bytes) = measured(|| Capabilities::decode(b));
    assert_eq!(bytes, 0, "REPORT CAPABILITIES allocated");
    if let Ok(c) = caps {
        let e = c.encode();
        assert_eq!(e.len(), 8);
        // Reserved bits are dropped, nothing else.
        assert_eq!(e[..2], b[..2]);
        assert_eq!(e[2], b[2] & 0x9d);
        assert_eq!(e[3], b[3] & 0xf1);
        assert_eq!(e[4..6], b[4..6]);
        assert_eq!(Capabilities::decode(&e), Ok(c));
        for t in 0..=16 {
            let _ = c.supports(t);
        }
    } else {
        assert!(b.len() < 8);
    }

    let (fs, bytes) = measured(|| FullStatus::decode(b));
    let desc = std::mem::size_of::<StatusDescriptor>();
    let n_max = body.len() / FULL_STATUS_DESC_LEN;
    // Descriptors grow by doubling from 4; TransportIDs are copies of input bytes.
    let limit = b.len() + 2 * desc * (4 + 2 * n_max);
    assert!(
        bytes <= limit,
        "READ FULL STATUS allocated {bytes} for {} bytes",
        b.len()
    );
    if let Ok(fs) = fs {
        assert!(fs.descriptors.len() <= n_max);
        assert!(fs.descriptors.capacity() <= (2 * fs.descriptors.len()).max(4));
        let tids: usize = fs
            .descriptors
            .iter()
            .map(|d| d.transport_id.capacity())
            .sum();
        assert!(tids + fs.descriptors.len() * FULL_STATUS_DESC_LEN <= body.len());
        let e = fs.encode();
        assert!(e.len() <= b.len());
        // The encoding is the input with reserved bits cleared.
        assert_eq!(e[..4], b[..4]);
        let mask = mask_full_status(&e[8..]);
        let masked: Vec<u8> = body.iter().zip(&mask).map(|(x, m)| x & m).collect();
        assert_eq!(e[8..], masked[..]);
        for d in &fs.descriptors {
            let _ = d.transport_id();
        }
        assert_eq!(FullStatus::decode(&e), Ok(fs));
    } else {
        assert!(b.len() < HEADER_LEN);
    }
}

/// Which bits of an encoded READ FULL STATUS body carry information (reserved bits 0).
fn mask_full_status(mut body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len());
    while body.len() >= FULL_STATUS_DESC_LEN {
        let tid = be32(&body[20..24]);
        let mut h = [0xffu8; FULL_STATUS_DESC_LEN];
        h[8..12].fill(0);
        h[12] = 0x03;
        h[14..18].fill(0);
        m.extend_from_slice(&h);
        m.extend(std::iter::repeat(0xff).take(tid));
        body = &body[FULL_STATUS_DESC_LEN + tid..];
    }
    m
}

fn check_structured(u: &mut Unstructured) -> arbitrary::Result<()> {
    let rk = ReadKeys {
        generation: u32::arbitrary(u)?,
        keys: Vec::arbitrary(u)?,
    };
    let e = rk.encode();
    assert_eq!(declared_len(&e), Some(e.len() as u64));
    assert_eq!(ReadKeys::decode(&e).as_ref(), Ok(&rk));
    // The client's allocation length grows until everything fits: each cut decodes to the
    // keys wholly present.
    let mut alloc = 8;
    while alloc < e.len() {
        let got = ReadKeys::decode(&e[..alloc]).unwrap();
        assert_eq!(got.keys[..], rk.keys[..(alloc - 8) / 8]);
        assert!(declared_len(&e[..alloc]).unwrap() > alloc as u64);
        alloc = alloc * 2 + usize::from(u8::arbitrary(u)? % 8);
    }

    let rr = ReadReservation {
        generation: u32::arbitrary(u)?,
        reservation: if bool::arbitrary(u)? {
            Some(Reservation {
                key: u64::arbitrary(u)?,
                scope: u8::arbitrary(u)? & 0x0f,
                pr_type: u8::arbitrary(u)? & 0x0f,
            })
        } else {
            None
        },
    };
    assert_eq!(ReadReservation::decode(&rr.encode()), Ok(rr));

    let c = Capabilities {
        length: u16::arbitrary(u)?,
        rlr_c: bool::arbitrary(u)?,
        crh: bool::arbitrary(u)?,
        sip_c: bool::arbitrary(u)?,
        atp_c: bool::arbitrary(u)?,
        ptpl_c: bool::arbitrary(u)?,
        tmv: bool::arbitrary(u)?,
        allow_commands: u8::arbitrary(u)? & 0x07,
        ptpl_a: bool::arbitrary(u)?,
        type_mask: u16::arbitrary(u)?,
    };
    assert_eq!(Capabilities::decode(&c.encode()), Ok(c));

    let mut descriptors = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        descriptors.push(StatusDescriptor {
            key: u64::arbitrary(u)?,
            all_tg_pt: bool::arbitrary(u)?,
            r_holder: bool::arbitrary(u)?,
            scope: u8::arbitrary(u)? & 0x0f,
            pr_type: u8::arbitrary(u)? & 0x0f,
            relative_target_port: u16::arbitrary(u)?,
            transport_id: Vec::arbitrary(u)?,
        });
    }
    let fs = FullStatus {
        generation: u32::arbitrary(u)?,
        descriptors,
    };
    let e = fs.encode();
    assert_eq!(declared_len(&e), Some(e.len() as u64));
    assert_eq!(FullStatus::decode(&e).as_ref(), Ok(&fs));
    // Cut anywhere: the descriptors wholly present.
    let cut = u.int_in_range(8..=e.len())?;
    let got = FullStatus::decode(&e[..cut]).unwrap();
    let mut end = 8;
    let whole = fs
        .descriptors
        .iter()
        .take_while(|d| {
            end += FULL_STATUS_DESC_LEN + d.transport_id.len();
            end <= cut
        })
        .count();
    assert_eq!(got.descriptors[..], fs.descriptors[..whole]);
    for d in &fs.descriptors {
        let _ = d.transport_id();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    check_raw(rest);
    if mode & 1 == 1 {
        let _ = check_structured(&mut Unstructured::new(rest));
    }
});
