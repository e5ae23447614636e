// SPDX-License-Identifier: MIT OR Apache-2.0
//! The SG_IO ioctl (SCSI generic v3 interface), usable on /dev/sdX, /dev/sgN and dm nodes.

use std::os::fd::{AsRawFd, BorrowedFd};

/// What an SG_IO call returned, before interpretation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SgOutcome {
    /// errno if the ioctl itself failed.
    pub errno: Option<i32>,
    /// The device's SCSI status byte.
    pub status: u8,
    /// The midlayer's host status (`DID_*`).
    pub host_status: u16,
    /// The driver status (timeout bits).
    pub driver_status: u16,
}

const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;

/// `struct sg_io_hdr` from `<scsi/sg.h>`.
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: libc::c_uchar,
    mx_sb_len: libc::c_uchar,
    iovec_count: libc::c_ushort,
    dxfer_len: libc::c_uint,
    dxferp: *mut libc::c_void,
    cmdp: *const libc::c_uchar,
    sbp: *mut libc::c_uchar,
    timeout: libc::c_uint,
    flags: libc::c_uint,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: libc::c_uchar,
    masked_status: libc::c_uchar,
    msg_status: libc::c_uchar,
    sb_len_wr: libc::c_uchar,
    host_status: libc::c_ushort,
    driver_status: libc::c_ushort,
    resid: libc::c_int,
    duration: libc::c_uint,
    info: libc::c_uint,
}

/// The data phase of a command.
pub enum Data<'a> {
    None,
    FromDevice(&'a mut [u8]),
    ToDevice(&'a [u8]),
}

/// What the kernel reported for one SG_IO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SgResult {
    pub outcome: SgOutcome,
    /// Bytes actually transferred (`dxfer_len - resid`, clamped to the buffer).
    pub transferred: usize,
    /// Bytes of sense the device wrote.
    pub sense_len: usize,
}

/// Length of a CDB from its operation code group (SPC-4 4.2.5.1).
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Run one SCSI command through SG_IO. `cdb` is at most 16 bytes; `sense` receives the
/// device's sense data, if any. Never panics; ioctl failures come back as `errno`.
pub fn sg_io(
    fd: BorrowedFd<'_>,
    cdb: &[u8],
    data: Data<'_>,
    sense: &mut [u8; 96],
    timeout_ms: u32,
) -> SgResult {
    let cmd_len = cdb_len(cdb[0]).min(cdb.len());
    let (dir, ptr, len) = match data {
        Data::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
        Data::FromDevice(b) => (SG_DXFER_FROM_DEV, b.as_mut_ptr().cast(), b.len()),
        Data::ToDevice(b) => (SG_DXFER_TO_DEV, b.as_ptr().cast_mut().cast(), b.len()),
    };
    let mut hdr = SgIoHdr {
        interface_id: libc::c_int::from(b'S'),
        dxfer_direction: dir,
        cmd_len: cmd_len as u8,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: len as libc::c_uint,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` is a correctly laid out sg_io_hdr whose pointers reference live buffers
    // of the stated lengths (cdb: cmd_len bytes, data: dxfer_len bytes, sense: mx_sb_len
    // bytes) that outlive this synchronous call; the kernel writes only within them.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SG_IO as _, &mut hdr as *mut SgIoHdr) };
    if rc < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return SgResult {
            outcome: SgOutcome {
                errno: Some(errno),
                ..Default::default()
            },
            ..Default::default()
        };
    }
    let resid = usize::try_from(hdr.resid).unwrap_or(0);
    SgResult {
        outcome: SgOutcome {
            errno: None,
            status: hdr.status,
            host_status: hdr.host_status,
            driver_status: hdr.driver_status,
        },
        transferred: len.saturating_sub(resid),
        sense_len: usize::from(hdr.sb_len_wr).min(sense.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn header_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        assert_eq!(std::mem::offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(std::mem::offset_of!(SgIoHdr, usr_ptr), 56);
        assert_eq!(std::mem::offset_of!(SgIoHdr, status), 64);
        assert_eq!(std::mem::offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(std::mem::offset_of!(SgIoHdr, resid), 72);
    }

    #[test]
    fn non_scsi_fd_gives_errno() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut sense = [0u8; 96];
        let mut buf = [0u8; 8];
        let r = sg_io(
            f.as_fd(),
            &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0],
            Data::FromDevice(&mut buf),
            &mut sense,
            1000,
        );
        assert_eq!(r.outcome.errno, Some(libc::ENOTTY));
        assert_eq!(r.transferred, 0);
    }

    #[test]
    fn cdb_lengths() {
        assert_eq!(cdb_len(0x00), 6);
        assert_eq!(cdb_len(0x5e), 10);
        assert_eq!(cdb_len(0x5f), 10);
        assert_eq!(cdb_len(0x88), 16);
        assert_eq!(cdb_len(0xa0), 12);
    }
}
