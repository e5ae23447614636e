// SPDX-License-Identifier: MIT OR Apache-2.0
//! The multipath parsers: multipathd's reply framing and reply texts, dm-multipath status
//! lines, and the per-path answer classification.
//!
//! Input: the whole input is offered to each parser (as bytes, or as text where the parser
//! takes text); its first 12 bytes are also read as an SG_IO outcome for `classify`.
//!
//! Checked: no panic; a frame length above `MAX_REPLY` is refused and any accepted one is
//! within it; framing a command and reading its length back gives the text length plus
//! the NUL; a parsed key prints and parses back to itself; a parsed status line yields no
//! more paths than it has `maj:min` tokens, and `preference` is a permutation that puts
//! every active path before every failed one; `classify` says Good only for a GOOD
//! (or CONDITION MET) status without errno, host or driver-timeout errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prhelper::dev::mpath::route::{classify, Class};
use prhelper::dev::mpath::status;
use prhelper::dev::verdict;
use prhelper::proto::multipathd::{self as mp, Reply};
use prhelper::sys::sgio::SgOutcome;

fuzz_target!(|data: &[u8]| {
    // Reply framing.
    match mp::reply_len(data) {
        Ok(Some(n)) => assert!(n <= mp::MAX_REPLY),
        Ok(None) => assert!(data.len() < std::mem::size_of::<usize>()),
        Err(_) => {}
    }
    // Reply texts.
    match mp::parse(data) {
        Reply::Key { key, aptpl } => {
            let printed = format!("0x{key:x}{}", if aptpl { ":aptpl" } else { "" });
            assert_eq!(mp::parse(printed.as_bytes()), Reply::Key { key, aptpl });
        }
        Reply::Other(s) => assert!(s.chars().count() <= 200),
        _ => {}
    }
    // Commands: framing round trip.
    let text = String::from_utf8_lossy(data);
    let cmd: String = text.chars().filter(|&c| c != '\0').take(4096).collect();
    let frame = mp::encode(&cmd);
    assert_eq!(mp::reply_len(&frame), Ok(Some(cmd.len() + 1)));
    assert_eq!(*frame.last().unwrap(), 0);

    // dm-multipath status lines.
    if let Some(paths) = status::parse(&text) {
        let devs = text
            .split_ascii_whitespace()
            .filter(|t| t.contains(':'))
            .count();
        assert!(paths.len() <= devs);
        let order = status::preference(&paths);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..paths.len()).collect::<Vec<_>>());
        let first_failed = order.iter().position(|&i| !paths[i].active);
        if let Some(f) = first_failed {
            assert!(order[f..].iter().all(|&i| !paths[i].active));
        }
    }

    // Answer classification.
    let g = |i: usize| data.get(i).copied().unwrap_or(0);
    let o = SgOutcome {
        errno: (g(0) & 1 == 1).then(|| i32::from(g(1))),
        status: g(2),
        host_status: u16::from_be_bytes([g(3), g(4)]),
        driver_status: u16::from_be_bytes([g(5), g(6)]),
    };
    let c = classify(&o, data.get(7..).unwrap_or(&[]));
    if c == Class::Good {
        assert!(o.errno.is_none() && o.host_status == 0);
        assert_eq!(o.driver_status & verdict::DRIVER_TIMEOUT_MASK, 0);
        assert!(o.status == 0 || o.status == 4);
    }
});
