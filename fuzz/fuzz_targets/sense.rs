// SPDX-License-Identifier: MIT OR Apache-2.0
//! Sense data decoding, the SG_IO outcome mapping, the client's reply header decoder and the
//! client-side status/sense categorisation.
//!
//! Input: the first 104 bytes are a reply header, the next 8 a BE64 maximum size, the next
//! 12 an SG_IO outcome; `sense::decode` runs on the whole input and on every prefix of the
//! header's sense area.
//!
//! Checked: no panic; `decode` reports what the format's bytes say; `Sense::fixed(c)`
//! decodes back to `c` (key reduced to its 4 bits); `interpret` never turns an errno or a
//! host status into GOOD and only builds sense with CHECK CONDITION; `ReplyHeader::decode`
//! never accepts a size above the maximum or data with a non-GOOD status, and keeps the
//! sense bytes as they are; `sg3::category` is 0 exactly for GOOD.
#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use prhelper::client::Response;
use prhelper::dev::verdict;
use prhelper::proto::wire::{ReplyHeader, REPLY_HEADER_SIZE};
use prhelper::scsi::sense::{self, asc_name, decode, key_name, Sense, SenseCode};
use prhelper::scsi::Status;
use prhelper::sg3;
use prhelper::sys::sgio::SgOutcome;

/// A `fmt::Write` that discards: formatting runs (and must not panic), nothing is allocated.
struct Discard;

impl std::fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> std::fmt::Result {
        Ok(())
    }
}

/// Check `decode(b)`; `display`: also format the result (its text depends only on the
/// decoded fields, so once per input is enough, not once per prefix).
fn check_decode(b: &[u8], display: bool) {
    let d = decode(b);
    let b0 = b.first().map(|x| x & 0x7f);
    match d {
        None => assert!(
            !matches!(b0, Some(0x70..=0x73))
                || b.len() < 3 && matches!(b0, Some(0x70 | 0x71))
                || b.len() < 2,
            "valid sense not decoded: {b:02x?}"
        ),
        Some(d) => {
            assert!(d.code.key <= 0x0f);
            match b0 {
                Some(0x70 | 0x71) => {
                    assert!(!d.descriptor);
                    assert_eq!(d.deferred, b0 == Some(0x71));
                    assert_eq!(d.code.key, b[2] & 0x0f);
                    assert_eq!(d.code.asc, b.get(12).copied().unwrap_or(0));
                    assert_eq!(d.code.ascq, b.get(13).copied().unwrap_or(0));
                }
                Some(0x72 | 0x73) => {
                    assert!(d.descriptor);
                    assert_eq!(d.deferred, b0 == Some(0x73));
                    assert_eq!(d.code.key, b[1] & 0x0f);
                    assert_eq!(d.code.asc, b.get(2).copied().unwrap_or(0));
                    assert_eq!(d.code.ascq, b.get(3).copied().unwrap_or(0));
                }
                _ => panic!("decoded {d:?} from response code {b0:?}"),
            }
            if display {
                let _ = write!(Discard, "{d}");
            }
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    for (i, x) in b.iter().skip(at).take(8).enumerate() {
        a[i] = *x;
    }
    u64::from_be_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    check_decode(data, true);

    let mut h = [0u8; REPLY_HEADER_SIZE];
    let n = data.len().min(REPLY_HEADER_SIZE);
    h[..n].copy_from_slice(&data[..n]);
    for i in 0..=sense::SENSE_SIZE {
        check_decode(&h[8..8 + i], i == sense::SENSE_SIZE);
    }

    // A fixed sense built from any code decodes back to it.
    let code = SenseCode {
        key: h[9],
        asc: h[10],
        ascq: h[11],
    };
    let s = Sense::fixed(code);
    let d = decode(&s.0).expect("fixed sense decodes");
    assert_eq!(
        d.code,
        SenseCode {
            key: code.key & 0x0f,
            ..code
        }
    );
    assert!(!d.deferred && !d.descriptor);
    assert_eq!(s.code(), Some(d.code));
    let _ = write!(Discard, "{s:?}");
    let _ = (key_name(code.key), asc_name(code.asc, code.ascq));

    // The client's view of a reply header.
    let max = u64_at(data, REPLY_HEADER_SIZE) as usize;
    let status = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let size = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    match ReplyHeader::decode(&h, max) {
        Ok(r) => {
            assert!(r.size <= max, "size {} > max {max}", r.size);
            assert!(r.size == 0 || r.status == Status::GOOD);
            assert_eq!(i32::from(r.status.0), status);
            assert_eq!(r.size, size as usize);
            assert_eq!(r.sense.0[..], h[8..]);
            let resp = Response {
                status: r.status,
                sense: r.sense.clone(),
                // What `sense_data` and `good` look at does not include the
                // data, so none is allocated.
                data: Vec::new(),
            };
            let cat = sg3::category(resp.status, &resp.sense);
            assert_eq!(cat == 0, r.status == Status::GOOD);
            if let Some(d) = resp.sense_data() {
                assert_eq!(r.status, Status::CHECK_CONDITION);
                assert_eq!(Some(d), decode(&r.sense.0));
            }
            if let Err(e) = resp.good() {
                let _ = write!(Discard, "{e}");
            }
        }
        Err(e) => {
            assert!(
                !(0..=255).contains(&status) || size as usize > max || (size != 0 && status != 0),
                "rejected a valid header: {e}"
            );
            let _ = write!(Discard, "{e}");
        }
    }

    // SG_IO outcome mapping.
    let o = &data.get(REPLY_HEADER_SIZE + 8..).unwrap_or(&[]);
    let g = |i: usize| o.get(i).copied().unwrap_or(0);
    let outcome = SgOutcome {
        errno: (g(0) & 1 == 1).then(|| i32::from_be_bytes([g(1), g(2), g(3), g(4)])),
        status: g(5),
        host_status: u16::from_be_bytes([g(6), g(7)]),
        driver_status: u16::from_be_bytes([g(8), g(9)]),
    };
    let v = verdict::interpret(&outcome);
    if v.sense.is_some() {
        assert_eq!(v.status, Status::CHECK_CONDITION);
    }
    match outcome.errno {
        Some(0) => assert_eq!(v.status, Status::GOOD),
        Some(_) => assert_ne!(v.status, Status::GOOD),
        None if outcome.host_status != 0 => assert_ne!(v.status, Status::GOOD),
        None if outcome.driver_status & verdict::DRIVER_TIMEOUT_MASK != 0 => {
            assert_eq!(v.status, Status::BUSY)
        }
        None => assert_eq!(
            v,
            verdict::Verdict {
                status: Status(outcome.status),
                sense: None
            }
        ),
    }
    let _ = v.status.name();
});
