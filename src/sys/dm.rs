// SPDX-License-Identifier: MIT OR Apache-2.0
//! device-mapper ioctls on /dev/mapper/control: a map's table and status, and suspend /
//! resume. The kernel allows them only with CAP_SYS_ADMIN.
//!
//! A device is named by its device number (`dev`), never by name, so that what is queried
//! is exactly the device behind the fd a client passed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct dm_ioctl` from `<linux/dm-ioctl.h>` (312 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

/// `struct dm_target_spec` (40 bytes), followed by a NUL-terminated parameter string.
const SPEC_LEN: usize = 40;
const HDR_LEN: usize = std::mem::size_of::<DmIoctl>();

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn dm_iowr(nr: u64) -> u64 {
    (3 << 30) | ((HDR_LEN as u64) << 16) | (0xfd << 8) | nr
}
/// DM_DEV_SUSPEND (also resumes, without DM_SUSPEND_FLAG).
pub const DM_DEV_SUSPEND: u64 = dm_iowr(6);
/// DM_TABLE_STATUS.
pub const DM_TABLE_STATUS: u64 = dm_iowr(12);

const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
const DM_NOFLUSH_FLAG: u32 = 1 << 11;

/// One target of a map, as DM_TABLE_STATUS returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub target_type: String,
    /// The table line (with `table`) or the status line.
    pub params: String,
}

/// A map's name, uuid and targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub name: String,
    pub uuid: String,
    pub targets: Vec<Target>,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn header(dev: libc::dev_t, flags: u32, data_size: usize) -> DmIoctl {
    DmIoctl {
        version: [4, 0, 0],
        data_size: data_size as u32,
        data_start: HDR_LEN as u32,
        target_count: 0,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    }
}

/// Issue one dm ioctl with `buf` (8-byte aligned, starting with a `DmIoctl`).
fn dm_ioctl(ctl: BorrowedFd<'_>, req: u64, buf: &mut [u64]) -> io::Result<()> {
    // SAFETY: `buf` is a live, 8-byte aligned buffer of `buf.len() * 8` bytes whose first
    // HDR_LEN bytes are an initialised `struct dm_ioctl` with `data_size` no larger than
    // the buffer; the kernel reads and writes only within `data_size` bytes.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), req as _, buf.as_mut_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn write_header(buf: &mut [u64], h: &DmIoctl) {
    // SAFETY: `buf` holds at least HDR_LEN bytes (callers allocate more) and is 8-byte
    // aligned, which satisfies `DmIoctl`'s alignment; `h` is a plain-old-data struct.
    unsafe { std::ptr::write(buf.as_mut_ptr().cast::<DmIoctl>(), *h) }
}

fn read_header(buf: &[u64]) -> DmIoctl {
    // SAFETY: as in `write_header`; every bit pattern is a valid `DmIoctl`.
    unsafe { std::ptr::read(buf.as_ptr().cast::<DmIoctl>()) }
}

fn as_bytes(buf: &[u64]) -> &[u8] {
    // SAFETY: a u64 slice viewed as bytes: same memory, 8 times the length, no padding.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) }
}

/// DM_TABLE_STATUS for the map `dev`: its table (`table` = true) or its status lines.
/// ENXIO: `dev` is not a device-mapper device.
pub fn table_status(ctl: BorrowedFd<'_>, dev: libc::dev_t, table: bool) -> io::Result<MapInfo> {
    let mut words = 2048; // 16 KiB, doubled while the kernel says the buffer is full
    loop {
        let mut buf = vec![0u64; words];
        let flags = if table { DM_STATUS_TABLE_FLAG } else { 0 };
        write_header(&mut buf, &header(dev, flags, words * 8));
        dm_ioctl(ctl, DM_TABLE_STATUS, &mut buf)?;
        let h = read_header(&buf);
        if h.flags & DM_BUFFER_FULL_FLAG != 0 {
            if words >= 1 << 20 {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            words *= 2;
            continue;
        }
        let bytes = as_bytes(&buf);
        let targets = parse_targets(bytes, &h)?;
        return Ok(MapInfo {
            name: cstr(&h.name),
            uuid: cstr(&h.uuid),
            targets,
        });
    }
}

fn parse_targets(bytes: &[u8], h: &DmIoctl) -> io::Result<Vec<Target>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed DM_TABLE_STATUS reply",
        )
    };
    let start = h.data_start as usize;
    let end = (h.data_size as usize).min(bytes.len());
    let data = bytes.get(start..end).ok_or_else(bad)?;
    let mut targets = Vec::new();
    let mut off = 0usize;
    for _ in 0..h.target_count {
        let spec = data.get(off..off + SPEC_LEN).ok_or_else(bad)?;
        let u64_at = |i: usize| u64::from_ne_bytes(spec[i..i + 8].try_into().unwrap());
        let next = u32::from_ne_bytes(spec[20..24].try_into().unwrap()) as usize;
        let params_start = off + SPEC_LEN;
        let rest = data.get(params_start..).ok_or_else(bad)?;
        targets.push(Target {
            start: u64_at(0),
            length: u64_at(8),
            target_type: cstr(&spec[24..40]),
            params: cstr(rest),
        });
        if next <= off {
            break;
        }
        off = next;
    }
    Ok(targets)
}

/// Suspend the map `dev` without flushing queued I/O (it stays queued until resume).
pub fn suspend_noflush(ctl: BorrowedFd<'_>, dev: libc::dev_t) -> io::Result<()> {
    let mut buf = vec![0u64; HDR_LEN.div_ceil(8)];
    write_header(
        &mut buf,
        &header(dev, DM_SUSPEND_FLAG | DM_NOFLUSH_FLAG, HDR_LEN),
    );
    dm_ioctl(ctl, DM_DEV_SUSPEND, &mut buf)
}

/// Resume the map `dev`.
pub fn resume(ctl: BorrowedFd<'_>, dev: libc::dev_t) -> io::Result<()> {
    let mut buf = vec![0u64; HDR_LEN.div_ceil(8)];
    write_header(&mut buf, &header(dev, 0, HDR_LEN));
    dm_ioctl(ctl, DM_DEV_SUSPEND, &mut buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel() {
        assert_eq!(HDR_LEN, 312);
        assert_eq!(std::mem::offset_of!(DmIoctl, dev), 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, name), 48);
        assert_eq!(std::mem::offset_of!(DmIoctl, uuid), 176);
        assert_eq!(DM_TABLE_STATUS, 0xc138_fd0c);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
    }

    #[test]
    fn parses_two_targets() {
        let mut h = header(0, 0, 0);
        h.target_count = 2;
        let mut data = vec![0u8; 0];
        let spec = |start: u64, len: u64, ty: &str, params: &str, data: &mut Vec<u8>| {
            let off = data.len();
            let mut s = vec![0u8; SPEC_LEN];
            s[0..8].copy_from_slice(&start.to_ne_bytes());
            s[8..16].copy_from_slice(&len.to_ne_bytes());
            s[24..24 + ty.len()].copy_from_slice(ty.as_bytes());
            data.extend_from_slice(&s);
            data.extend_from_slice(params.as_bytes());
            data.push(0);
            while data.len() % 8 != 0 {
                data.push(0);
            }
            let next = data.len() as u32;
            data[off + 20..off + 24].copy_from_slice(&next.to_ne_bytes());
        };
        spec(0, 100, "linear", "8:16 0", &mut data);
        spec(
            100,
            50,
            "multipath",
            "0 0 1 1 round-robin 0 1 1 8:32 1",
            &mut data,
        );
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(&data);
        h.data_size = bytes.len() as u32;
        let t = parse_targets(&bytes, &h).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].target_type, "linear");
        assert_eq!(t[0].params, "8:16 0");
        assert_eq!(t[1].start, 100);
        assert_eq!(t[1].length, 50);
        assert_eq!(t[1].params, "0 0 1 1 round-robin 0 1 1 8:32 1");
        // A reply claiming more targets than it holds is an error, not a panic.
        h.target_count = 3;
        h.data_size = (HDR_LEN + 10) as u32;
        assert!(parse_targets(&bytes, &h).is_err());
    }
}
