// SPDX-License-Identifier: MIT OR Apache-2.0
//! LIO's own view of the registrations: READ FULL STATUS from an initiator outside
//! the map, parsed.

use crate::lio::SharedLun;
use crate::Result;

/// One registration in READ FULL STATUS (sg_persist's or mpathpersist's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    pub all_tg_pt: bool,
    /// RELATIVE TARGET PORT IDENTIFIER.
    pub rel_port: u16,
    /// This I_T nexus holds the reservation.
    pub holder: bool,
    /// Reservation type text when `holder` ("Write Exclusive, registrants only").
    pub res_type: Option<String>,
    /// The initiator's SAS address "0x5001405…" (tcm_loop's TransportIDs).
    pub sas_address: Option<String>,
}

impl Registration {
    /// Which leg of `lun` this registration belongs to (by initiator).
    pub fn leg(&self, lun: &SharedLun) -> Option<usize> {
        let sas = self.sas_address.as_deref()?;
        lun.targets
            .iter()
            .position(|t| t.initiator_sas_address().eq_ignore_ascii_case(sas))
    }
}

/// Parse READ FULL STATUS as `sg_persist -s` or `mpathpersist -i -s` print it.
pub fn parse_full_status(text: &str) -> Result<Vec<Registration>> {
    let mut out: Vec<Registration> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Key=").or_else(|| l.strip_prefix("Key = ")) {
            let hex = rest.trim().trim_start_matches("0x");
            let key = u64::from_str_radix(hex, 16).map_err(|e| format!("bad key {l:?}: {e}"))?;
            out.push(Registration {
                key,
                all_tg_pt: false,
                rel_port: 0,
                holder: false,
                res_type: None,
                sas_address: None,
            });
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if l.starts_with("All target ports bit set") {
            r.all_tg_pt = true;
        } else if let Some(p) = l.strip_prefix("Relative port address: ") {
            r.rel_port = u16::from_str_radix(p.trim().trim_start_matches("0x"), 16)
                .map_err(|e| format!("bad port {l:?}: {e}"))?;
        } else if l.contains("<< Reservation holder >>") {
            r.holder = true;
        } else if let Some((_, t)) = l.split_once("type: ").filter(|_| l.starts_with("scope:")) {
            r.res_type = Some(t.trim().to_string());
        } else if let Some(a) = l.strip_prefix("SAS address: ") {
            r.sas_address = Some(a.trim().to_ascii_lowercase());
        } else if let Some(bytes) = l.strip_prefix("SAS ") {
            // mpathpersist: "SAS         50 01 40 50 00 00 00 a1"
            let hex: String = bytes.split_whitespace().collect();
            r.sas_address = Some(format!("0x{}", hex.to_ascii_lowercase()));
        }
    }
    Ok(out)
}

/// LIO's view: READ FULL STATUS with `sg_persist -s` through leg `observer`
/// of `lun` (an initiator outside the map), retried past UNIT ATTENTIONs.
pub fn lio_view(lun: &SharedLun, observer: usize) -> Result<Vec<Registration>> {
    let disk = &lun.device(observer).disk;
    let mut last = None;
    for _ in 0..4 {
        let o = crate::sg::sg_persist(disk, &["--in", "--read-full-status"])?;
        if o.status == 0 {
            return parse_full_status(&o.stdout);
        }
        last = Some(o);
    }
    Err(last.map(|o| o.describe()).unwrap_or_default())
}

/// The legs (sorted) registered with `key` in `regs`.
pub fn legs_with_key(regs: &[Registration], lun: &SharedLun, key: u64) -> Vec<usize> {
    let mut legs: Vec<usize> = regs
        .iter()
        .filter(|r| r.key == key)
        .filter_map(|r| r.leg(lun))
        .collect();
    legs.sort();
    legs
}
