// SPDX-License-Identifier: MIT OR Apache-2.0
//! Debian's `mpathpersist` (multipath-tools 0.9.4) on a multipath map. It
//! needs multipathd for `reservation_key file` ([`Multipathd`]). Exit
//! statuses are libmpathpersist's MPATH_PR_* codes.

use super::{parse_full_status, Registration};
use crate::util::{run_on, Output};
use crate::Result;
use std::path::Path;

pub const SUCCESS: i32 = 0;
pub const SYNTAX_ERROR: i32 = 1;
pub const SENSE_NOT_READY: i32 = 2;
pub const ILLEGAL_REQ: i32 = 5;
pub const UNIT_ATTENTION: i32 = 6;
pub const RESERV_CONFLICT: i32 = 11;
pub const FILE_ERROR: i32 = 12;
pub const DMMP_ERROR: i32 = 13;
pub const OTHER: i32 = 15;

/// `/usr/sbin/mpathpersist ARGS DEV`, no assertion on the outcome.
pub fn mpathpersist(dev: &Path, args: &[&str]) -> Result<Output> {
    run_on("mpathpersist", args, dev)
}

/// `mpathpersist --out --ACTION` with the keys and type that are given.
fn out(
    dev: &Path,
    action: &str,
    rk: Option<u64>,
    sark: Option<u64>,
    ty: Option<u8>,
) -> Result<Output> {
    let mut args = vec!["--out".to_string(), format!("--{action}")];
    args.extend(rk.map(|k| format!("--param-rk=0x{k:x}")));
    args.extend(sark.map(|k| format!("--param-sark=0x{k:x}")));
    args.extend(ty.map(|t| format!("--prout-type={t}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mpathpersist(dev, &args)
}

/// REGISTER: `rk` the current key (0 for a new registration), `sark`
/// the new one (0 unregisters).
pub fn register(dev: &Path, rk: u64, sark: u64) -> Result<Output> {
    out(dev, "register", Some(rk), Some(sark), None)
}

/// REGISTER AND IGNORE EXISTING KEY with `sark`.
pub fn register_ignore(dev: &Path, sark: u64) -> Result<Output> {
    out(dev, "register-ignore", None, Some(sark), None)
}

/// RESERVE with `key` and `prout_type`.
pub fn reserve(dev: &Path, key: u64, prout_type: u8) -> Result<Output> {
    out(dev, "reserve", Some(key), None, Some(prout_type))
}

/// RELEASE with `key` and `prout_type`.
pub fn release(dev: &Path, key: u64, prout_type: u8) -> Result<Output> {
    out(dev, "release", Some(key), None, Some(prout_type))
}

/// CLEAR with `key`.
pub fn clear(dev: &Path, key: u64) -> Result<Output> {
    out(dev, "clear", Some(key), None, None)
}

/// PREEMPT `sark`'s registrations (and reservation) with `key`.
pub fn preempt(dev: &Path, key: u64, sark: u64, prout_type: u8) -> Result<Output> {
    out(dev, "preempt", Some(key), Some(sark), Some(prout_type))
}

/// The "PR generation=0x…" value in mpathpersist's or sg_persist's output.
pub fn parse_generation(text: &str) -> Option<u32> {
    let rest = text.split_once("PR generation=0x")?.1;
    let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u32::from_str_radix(&hex, 16).ok()
}

/// Parse READ KEYS output: the `0x…` lines.
pub fn parse_keys(text: &str) -> Result<Vec<u64>> {
    crate::sg::parse_keys_of("mpathpersist", text)
}

/// Parse READ RESERVATION output: the holder's key and the type text
/// ("Write Exclusive, registrants only"), or None.
pub fn parse_reservation(text: &str) -> Result<Option<(u64, String)>> {
    if text.contains("there is NO reservation held") {
        return Ok(None);
    }
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Key = 0x"))
        .ok_or_else(|| format!("no `Key = ` in:\n{text}"))?;
    let key = u64::from_str_radix(key.trim(), 16).map_err(|e| e.to_string())?;
    let kind = text
        .lines()
        .find_map(|l| l.split_once("type = ").map(|(_, t)| t.trim().to_string()))
        .unwrap_or_default();
    Ok(Some((key, kind)))
}

/// READ KEYS: (exit status, keys; empty unless the status is 0).
pub fn read_keys(dev: &Path) -> Result<(i32, Vec<u64>)> {
    let o = mpathpersist(dev, &["--in", "--read-keys"])?;
    if o.status != 0 {
        return Ok((o.status, Vec::new()));
    }
    Ok((0, parse_keys(&o.stdout)?))
}

/// READ RESERVATION: (exit status, reservation).
pub fn read_reservation(dev: &Path) -> Result<(i32, Option<(u64, String)>)> {
    let o = mpathpersist(dev, &["--in", "--read-reservation"])?;
    if o.status != 0 {
        return Ok((o.status, None));
    }
    Ok((0, parse_reservation(&o.stdout)?))
}

/// READ FULL STATUS: (exit status, registrations).
pub fn read_full_status(dev: &Path) -> Result<(i32, Vec<Registration>)> {
    let o = mpathpersist(dev, &["--in", "--read-full-status"])?;
    if o.status != 0 {
        return Ok((o.status, Vec::new()));
    }
    Ok((0, parse_full_status(&o.stdout)?))
}
