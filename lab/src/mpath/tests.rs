// SPDX-License-Identifier: MIT OR Apache-2.0
//! Unit tests of the parsers.

use super::multipathd::multipath_conf;
use super::*;

#[test]
fn parses_dm_status() {
    let st = "3600140: 0 131072 multipath 2 0 1 0 1 1 A 0 2 2 8:0 F 1 0 1 8:16 A 0 0 1 ";
    let p = parse_dm_status(st).unwrap();
    assert_eq!(
        p,
        vec![
            DmPathState {
                dev_t: "8:0".into(),
                active: false,
                fail_count: 1
            },
            DmPathState {
                dev_t: "8:16".into(),
                active: true,
                fail_count: 0
            },
        ]
    );
    let rr = "0 65536 multipath 2 0 0 0 1 1 A 0 2 1 8:0 A 0 0 8:16 A 0 0";
    let p = parse_dm_status(rr).unwrap();
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|s| s.active));
    assert!(parse_dm_status("0 1 multipath 2 0").is_err());
}

#[test]
fn parses_full_status() {
    let sg = "  LIO-ORG   FILEIO            4.0 \n  Peripheral device type: disk\n  PR generation=0x2\n    Key=0xabc\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive, registrants only\n      Transport Id of initiator:\n        SAS address: 0x50014050000000a1\n    Key=0xabc\n      All target ports bit set\n      Relative port address: 0x2\n      not reservation holder\n      Transport Id of initiator:\n        SAS address: 0x50014050000000a2\n";
    let r = parse_full_status(sg).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].key, 0xabc);
    assert!(r[0].holder && !r[0].all_tg_pt);
    assert_eq!(
        r[0].res_type.as_deref(),
        Some("Write Exclusive, registrants only")
    );
    assert_eq!(r[0].sas_address.as_deref(), Some("0x50014050000000a1"));
    assert!(!r[1].holder && r[1].all_tg_pt && r[1].rel_port == 2);
    let mp = "  PR generation=0x2 \n   Key = 0xabc\n      All target ports bit clear\n      Relative port address: 0x1\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive, registrants only\n   SAS         50 01 40 50 00 00 00 a1\n   Key = 0xabc\n      All target ports bit clear\n      Relative port address: 0x2\n      not reservation holder\n   SAS         50 01 40 50 00 00 00 a2\n";
    let m = parse_full_status(mp).unwrap();
    assert_eq!(
        m,
        r.iter()
            .cloned()
            .map(|mut x| {
                x.all_tg_pt = false;
                x
            })
            .collect::<Vec<_>>()
    );
    assert!(parse_full_status("  No full status descriptors\n")
        .unwrap()
        .is_empty());
}

#[test]
fn parses_mpathpersist_in() {
    let keys =
        "  PR generation=0x2, \t2 registered reservation keys follow:\n    0xabc\n    0xabc\n";
    assert_eq!(persist::parse_keys(keys).unwrap(), vec![0xabc, 0xabc]);
    assert_eq!(persist::parse_generation(keys), Some(2));
    let res = "  PR generation=0x2, Reservation follows:\n   Key = 0xabc\n  scope = LU_SCOPE, type = Write Exclusive, registrants only\n";
    assert_eq!(
        persist::parse_reservation(res).unwrap(),
        Some((0xabc, "Write Exclusive, registrants only".into()))
    );
    let none = "  PR generation=0x2, there is NO reservation held \n";
    assert_eq!(persist::parse_reservation(none).unwrap(), None);
}

#[test]
fn prkeys() {
    let f = "# Multipath persistent reservation keys, Version : 1.0\n#\n#x0000000000000123 36001405aa\n0x0000000000000abc 36001405bb\n0X0000000000000def 36001405cc\n";
    assert_eq!(prkeys_lookup(f, "36001405aa"), None);
    assert_eq!(prkeys_lookup(f, "36001405bb"), Some((0xabc, false)));
    assert_eq!(prkeys_lookup(f, "36001405cc"), Some((0xdef, true)));
}

#[test]
fn conf_excludes_legs() {
    let c = multipath_conf("36001405ab", &["sdc".into()], &["max_polling_interval 2"]);
    assert!(c.contains("reservation_key file"));
    assert!(c.contains("devnode \"^sdc$\""));
    assert!(c.contains("wwid \"^36001405ab$\""));
    assert!(c.contains("    max_polling_interval 2\n"));
}
