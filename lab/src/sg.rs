// SPDX-License-Identifier: MIT OR Apache-2.0
//! Thin wrappers over sg3-utils (`sg_persist`, `sg_raw`) with parsed results.
//!
//! sg3-utils exit statuses used in assertions: 0 success, 2 NOT READY,
//! 5 ILLEGAL REQUEST, 6 UNIT ATTENTION, 24 RESERVATION CONFLICT.

use crate::util::{run, run_on, Output};
use crate::{bail, Result};
use std::path::Path;

/// sg3-utils' exit status for UNIT ATTENTION.
pub const EXIT_UNIT_ATTENTION: i32 = 6;
/// sg3-utils' exit status for RESERVATION CONFLICT.
pub const EXIT_RESERVATION_CONFLICT: i32 = 24;

/// Run `sg_persist ARGS DEV` (no assertion on the outcome).
pub fn sg_persist(dev: &Path, args: &[&str]) -> Result<Output> {
    run_on("sg_persist", args, dev)
}

/// PR OUT REGISTER of `key` (with reservation key 0: a new registration).
pub fn register(dev: &Path, key: u64) -> Result<()> {
    sg_persist(
        dev,
        &["--out", "--register", &format!("--param-sark=0x{key:x}")],
    )?
    .ok()?;
    Ok(())
}

/// PR OUT REGISTER AND IGNORE EXISTING KEY to `key` (0: unregister).
pub fn register_ignore(dev: &Path, key: u64) -> Result<()> {
    let sark = format!("--param-sark=0x{key:x}");
    sg_persist(dev, &["--out", "--register-ignore", &sark])?.ok()?;
    Ok(())
}

/// PR OUT REGISTER from `key` to 0: unregister.
pub fn unregister(dev: &Path, key: u64) -> Result<()> {
    let rk = format!("--param-rk=0x{key:x}");
    sg_persist(dev, &["--out", "--register", &rk, "--param-sark=0"])?.ok()?;
    Ok(())
}

/// PR OUT RESERVE with `key` and `prout_type` (1 Write Exclusive, 3 Exclusive
/// Access, 5/6 registrants only, 7/8 all registrants).
pub fn reserve(dev: &Path, key: u64, prout_type: u8) -> Result<Output> {
    sg_persist(
        dev,
        &[
            "--out",
            "--reserve",
            &format!("--param-rk=0x{key:x}"),
            &format!("--prout-type={prout_type}"),
        ],
    )
}

/// PR OUT CLEAR with `key`: drops every registration and the reservation.
pub fn clear(dev: &Path, key: u64) -> Result<()> {
    sg_persist(dev, &["--out", "--clear", &format!("--param-rk=0x{key:x}")])?.ok()?;
    Ok(())
}

/// PR IN READ KEYS: the registered keys, in the order the LU reports them.
pub fn read_keys(dev: &Path) -> Result<Vec<u64>> {
    let out = sg_persist(dev, &["--in", "--read-keys"])?.ok()?;
    parse_keys(&out.stdout)
}

/// Parse `sg_persist --read-keys` output: indented `0x…` lines after the
/// "registered reservation keys follow" header.
pub fn parse_keys(text: &str) -> Result<Vec<u64>> {
    parse_keys_of("sg_persist", text)
}

/// Parse READ KEYS output of `tool` (sg_persist and mpathpersist print the same).
pub fn parse_keys_of(tool: &str, text: &str) -> Result<Vec<u64>> {
    if text.contains("there are NO registered reservation keys") {
        return Ok(Vec::new());
    }
    if !text.contains("registered reservation key") {
        bail!("unexpected {tool} --read-keys output:\n{text}");
    }
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("0x"))
        .map(|l| u64::from_str_radix(&l[2..], 16).map_err(|e| format!("bad key {l:?}: {e}")))
        .collect()
}

/// The current reservation: holder's key and type text (e.g.
/// "Write Exclusive"), or None.
pub fn read_reservation(dev: &Path) -> Result<Option<(u64, String)>> {
    let out = sg_persist(dev, &["--in", "--read-reservation"])?.ok()?;
    if out.stdout.contains("there is NO reservation held") {
        return Ok(None);
    }
    let key = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Key=0x"))
        .ok_or_else(|| format!("no Key= in:\n{}", out.stdout))?;
    let key = u64::from_str_radix(key.trim(), 16).map_err(|e| e.to_string())?;
    let kind = out
        .stdout
        .lines()
        .filter(|l| l.contains("scope:"))
        .find_map(|l| l.split_once("type: ").map(|(_, t)| t.trim().to_string()))
        .unwrap_or_default();
    Ok(Some((key, kind)))
}

/// PR IN READ FULL STATUS, as sg_persist prints it.
pub fn read_full_status(dev: &Path) -> Result<String> {
    Ok(sg_persist(dev, &["--in", "--read-full-status"])?
        .ok()?
        .stdout)
}

/// WRITE(10) of one 512-byte block of zeros at LBA `lba` through the sg node
/// `sg` with `sg_raw`; returns its output (status 24 = RESERVATION CONFLICT).
pub fn write_block(sg: &Path, lba: u32, scratch: &Path) -> Result<Output> {
    let data = scratch.join("zero-block");
    std::fs::write(&data, [0u8; 512]).map_err(|e| e.to_string())?;
    let b = lba.to_be_bytes();
    let mut args: Vec<String> = vec!["-s".into(), "512".into(), "-i".into()];
    args.push(data.to_string_lossy().into_owned());
    args.push(sg.to_string_lossy().into_owned());
    let cdb = [0x2a, 0, b[0], b[1], b[2], b[3], 0, 0, 1, 0];
    args.extend(cdb.iter().map(|x| format!("{x:02x}")));
    run("sg_raw", &args)
}

/// READ(10) of one block at `lba` through `sg`; returns sg_raw's output.
pub fn read_block(sg: &Path, lba: u32) -> Result<Output> {
    let b = lba.to_be_bytes();
    let mut args: Vec<String> = vec!["-r".into(), "512".into(), "-o".into(), "/dev/null".into()];
    args.push(sg.to_string_lossy().into_owned());
    let cdb = [0x28, 0, b[0], b[1], b[2], b[3], 0, 0, 1, 0];
    args.extend(cdb.iter().map(|x| format!("{x:02x}")));
    run("sg_raw", &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        let text = "  LIO-ORG   FILEIO            4.0 \n  Peripheral device type: disk\n  PR generation=0x2, 2 registered reservation keys follow:\n    0x1\n    0x2\n";
        assert_eq!(parse_keys(text).unwrap(), vec![1, 2]);
        let none = "  PR generation=0x0, there are NO registered reservation keys\n";
        assert_eq!(parse_keys(none).unwrap(), Vec::<u64>::new());
        assert!(parse_keys("garbage").is_err());
    }
}
