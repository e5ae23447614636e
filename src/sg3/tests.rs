// SPDX-License-Identifier: MIT OR Apache-2.0
//! Output compared with sg_persist's, text for text.

use super::*;
use crate::scsi::prin::{Reservation, StatusDescriptor};
use crate::scsi::sense::SenseCode;
use crate::scsi::transport_id::TransportId;

const SAS: u64 = 0x5001_4050_0000_0001;

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
fn hex_lines_layout() {
    let mut s = String::new();
    hex_lines(&mut s, "  ", &(0..18).collect::<Vec<u8>>());
    assert_eq!(
        s,
        "  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f\n  10 11\n"
    );
}

#[test]
fn read_keys_output() {
    let d = ReadKeys {
        generation: 3,
        keys: vec![1, 2],
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadKeys, &d, 0, 8192).unwrap(),
        "  PR generation=0x3, 2 registered reservation keys follow:\n    0x1\n    0x2\n"
    );
    let d = ReadKeys {
        generation: 0,
        keys: vec![0xabc],
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadKeys, &d, 0, 8192).unwrap(),
        "  PR generation=0x0, 1 registered reservation key follows:\n    0xabc\n"
    );
    let d = ReadKeys {
        generation: 0,
        keys: vec![],
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadKeys, &d, 0, 8192).unwrap(),
        "  PR generation=0x0, there are NO registered reservation keys\n"
    );
}

#[test]
fn read_reservation_output() {
    let d = ReadReservation {
        generation: 5,
        reservation: Some(Reservation {
            key: 0x1,
            scope: 0,
            pr_type: 3,
        }),
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadReservation, &d, 0, 8192).unwrap(),
        "  PR generation=0x5, Reservation follows:\n    Key=0x1\n    scope: LU_SCOPE,  type: Exclusive Access\n"
    );
    let d = ReadReservation {
        generation: 5,
        reservation: None,
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadReservation, &d, 0, 8192).unwrap(),
        "  PR generation=0x5, there is NO reservation held\n"
    );
    let d = ReadReservation {
        generation: 5,
        reservation: Some(Reservation {
            key: 2,
            scope: 1,
            pr_type: 0xa,
        }),
    }
    .encode();
    assert!(format_prin(PrInAction::ReadReservation, &d, 0, 8192)
        .unwrap()
        .ends_with("    scope: 1  type: obsolete [0xa]\n"));
}

#[test]
fn capabilities_output() {
    let c = Capabilities {
        length: 8,
        crh: true,
        sip_c: true,
        atp_c: true,
        ptpl_c: true,
        tmv: true,
        allow_commands: 1,
        type_mask: prin::type_mask::ALL,
        ..Default::default()
    };
    let text = format_prin(PrInAction::ReportCapabilities, &c.encode(), 0, 8192).unwrap();
    assert_eq!(
        text,
        "Report capabilities response:\n  Replace Lost Reservation Capable(RLR_C): 0\n  Compatible Reservation Handling(CRH): 1\n  Specify Initiator Ports Capable(SIP_C): 1\n  All Target Ports Capable(ATP_C): 1\n  Persist Through Power Loss Capable(PTPL_C): 1\n  Type Mask Valid(TMV): 1\n  Allow Commands: 1\n  Persist Through Power Loss Active(PTPL_A): 0\n    Support indicated in Type mask:\n      Write Exclusive, all registrants: 1\n      Exclusive Access, registrants only: 1\n      Write Exclusive, registrants only: 1\n      Exclusive Access: 1\n      Write Exclusive: 1\n      Exclusive Access, all registrants: 1\n"
    );
    assert_eq!(
        format_prin(PrInAction::ReportCapabilities, &c.encode(), 1, 8192).unwrap(),
        " 00     00 08 1d 90 ea 01 00 00\n"
    );
    let bad = Capabilities { length: 12, ..c }.encode();
    assert_eq!(
        format_prin(PrInAction::ReportCapabilities, &bad, 0, 8192)
            .unwrap_err()
            .1,
        97
    );
    assert_eq!(
        format_prin(PrInAction::ReportCapabilities, &[0, 8], 0, 8192)
            .unwrap_err()
            .1,
        97
    );
}

#[test]
fn full_status_output() {
    let fs = FullStatus {
        generation: 2,
        descriptors: vec![
            StatusDescriptor {
                key: 0x1,
                r_holder: true,
                pr_type: 1,
                relative_target_port: 1,
                transport_id: TransportId::Sas {
                    address: 0x5001405000000001,
                }
                .encode(),
                ..Default::default()
            },
            StatusDescriptor {
                key: 0x2,
                all_tg_pt: true,
                ..Default::default()
            },
        ],
    };
    assert_eq!(
        format_prin(PrInAction::ReadFullStatus, &fs.encode(), 0, 8192).unwrap(),
        "  PR generation=0x2\n    Key=0x1\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive\n      Transport Id of initiator:\n        SAS address: 0x5001405000000001\n    Key=0x2\n      All target ports bit set\n      not reservation holder\n"
    );
    let empty = FullStatus {
        generation: 0,
        descriptors: vec![],
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadFullStatus, &empty, 0, 8192).unwrap(),
        "  PR generation=0x0\n  No full status descriptors\n"
    );
}

#[test]
fn hex_outputs() {
    let d = ReadKeys {
        generation: 4,
        keys: vec![1, 2],
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadKeys, &d, 1, 8192).unwrap(),
        "  PR generation=0x4, Additional length=16\n 00     00 00 00 00 00 00 00 01  00 00 00 00 00 00 00 02\n"
    );
    assert_eq!(
        format_prin(PrInAction::ReadKeys, &d, 2, 8192).unwrap(),
        " 00     00 00 00 04 00 00 00 10  00 00 00 00 00 00 00 01\n 10     00 00 00 00 00 00 00 02\n"
    );
    assert_eq!(
        format_prin(PrInAction::ReadKeys, &d, 3, 8192).unwrap(),
        "00 00 00 04 00 00 00 10  00 00 00 00 00 00 00 01\n00 00 00 00 00 00 00 02\n"
    );
    assert!(format_prin(PrInAction::ReadKeys, &d[..16], 1, 16)
        .unwrap()
        .contains("Additional length too large=16, truncate"));
    let mut s = String::new();
    hex_dump(&mut s, &[0u8; 0x110], true);
    assert!(
        s.ends_with(" 100    00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00\n"),
        "{s}"
    );
}

#[test]
fn short_data_is_malformed_not_a_panic() {
    for a in PrInAction::ALL {
        for n in 0..8 {
            let r = format_prin(a, &[0u8; 8][..n], 0, 8192);
            assert_eq!(r.unwrap_err().1, 97);
        }
    }
    // Declared reservation but cut short.
    let d = ReadReservation {
        generation: 5,
        reservation: Some(Reservation {
            key: 1,
            scope: 0,
            pr_type: 3,
        }),
    }
    .encode();
    assert_eq!(
        format_prin(PrInAction::ReadReservation, &d[..20], 0, 20)
            .unwrap_err()
            .1,
        97
    );
}

#[test]
fn categories_match_sg3_utils() {
    let cc = |key, asc| {
        category(
            Status::CHECK_CONDITION,
            &Sense::fixed(SenseCode { key, asc, ascq: 0 }),
        )
    };
    assert_eq!(cc(0x5, 0x24), 5);
    assert_eq!(cc(0x5, 0x20), 9);
    assert_eq!(cc(0x5, 0x26), 5);
    assert_eq!(cc(0x6, 0x29), 6);
    assert_eq!(cc(0x2, 0x04), 2);
    assert_eq!(cc(0x3, 0x11), 3);
    assert_eq!(cc(0x4, 0x44), 3);
    assert_eq!(cc(0x8, 0), 3);
    assert_eq!(cc(0xb, 0x10), 40);
    assert_eq!(cc(0xb, 0x08), 11);
    assert_eq!(cc(0x9, 0), 98);
    assert_eq!(cc(0xd, 0), 98);
    assert_eq!(cc(0x0, 0), 20);
    assert_eq!(category(Status::CHECK_CONDITION, &Sense::default()), 98);
    assert_eq!(category(Status::GOOD, &Sense::default()), 0);
    assert_eq!(
        category(Status::RESERVATION_CONFLICT, &Sense::default()),
        24
    );
    assert_eq!(category(Status::BUSY, &Sense::default()), 26);
    assert_eq!(category(Status::TASK_SET_FULL, &Sense::default()), 27);
    assert_eq!(category(Status(0x22), &Sense::default()), 99);
}
