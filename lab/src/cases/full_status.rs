// SPDX-License-Identifier: MIT OR Apache-2.0
//! `full_status_cut`: READ FULL STATUS through prhelper with allocation lengths that cut
//! a descriptor, on an LU whose full status is longer than the protocol's 8192 bytes
//! (issue 13).
//!
//! LIO (Linux 6.1) writes the whole descriptor a cut falls in, past the allocation
//! length, into the caller's buffer (SG_IO maps the user pages when the buffer and the
//! length are aligned), and past the mapped pages when the cut is near a page end: a
//! kernel oops. prhelper makes the transfer of READ FULL STATUS its allocation length plus
//! a page of slack (the CDB keeps the allocation length), filled with a canary before each
//! PR IN; the daemon logs (debug) how far into it the device wrote.
//!
//! 180 registrations on one LU without 180 SCSI hosts: one tcm_loop target with 179 node
//! ACLs (LUN 0 mapped for each), and one SPEC_I_PT REGISTER naming their SAS
//! TransportIDs: each is an I_T nexus of its own, a 48-byte descriptor, 8648 bytes in all.
//!
//! For allocation lengths around descriptor boundaries (16 offsets each, at every 10th
//! boundary and the last ones; every length from 8100 to 8192), the case asserts:
//! - prhelper answers GOOD with exactly `alloc` bytes, equal to the first `alloc` bytes of
//!   the full status (read once through direct SG_IO with a large allocation length);
//! - direct SG_IO with a guarded buffer (the allocation length then a canary page) gets
//!   the same bytes, and records how far past the allocation length LIO wrote;
//! - the daemon saw exactly as far into its slack as the guarded direct read (so the
//!   overrun landed in its slack, and the check sees it), never to its end;
//! - LIO really overran at some lengths (else the case proves nothing on this kernel).

use prhelper::daemon::handler;
use prhelper::scsi::cdb::{self, PrInAction, PrOutAction};
use prhelper::scsi::prout::{BasicParams, TransportId};
use prhelper::sys::sgio::{self, Data};
use prhelper_lab::lio::{self, Backstore, Target};
use prhelper_lab::prh::{self, open_rw, with_log};
use prhelper_lab::util::scratch_dir;
use prhelper_lab::{bail, ensure, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

/// Registrations: the target's own nexus plus one per ACL.
const REGS: usize = 180;
/// Size of a READ FULL STATUS descriptor with a SAS TransportID.
const DESC: usize = 24 + 24;
const KEY: u64 = 0xf5;
/// What the guarded buffer holds past the allocation length (as the daemon's canary).
const CANARY: u8 = handler::CANARY;
const SLACK: usize = handler::SLACK;

/// Direct SG_IO PR IN from a buffer laid out as prhelper's: the transfer placed to end
/// early in a page (`handler::placement`), then a canary page. Returns the data and how
/// far past `alloc` the device wrote.
fn direct(dev: &File, action: PrInAction, alloc: usize) -> Result<(Vec<u8>, usize)> {
    let mut buf = vec![CANARY; handler::PR_IN_BUFFER];
    let start = handler::placement(buf.as_ptr() as usize, alloc);
    let end = start + alloc;
    buf[start..end].fill(0);
    let mut sense = [0u8; 96];
    let cdb = cdb::pr_in(action, alloc as u16);
    let r = sgio::sg_io(
        dev.as_fd(),
        &cdb,
        Data::FromDevice(&mut buf[start..end]),
        &mut sense,
        30_000,
    );
    let o = r.outcome;
    ensure!(
        o.errno.is_none() && o.status == 0 && o.host_status == 0,
        "direct PR IN {} alloc {alloc}: {o:?}, sense {:02x?}",
        action.name(),
        &sense[..18]
    );
    let past = handler::overrun(&buf[end..end + SLACK]);
    Ok((buf[start..start + r.transferred.min(alloc)].to_vec(), past))
}

/// The whole READ FULL STATUS (more than prhelper's 8192 bytes): a page-aligned
/// transfer ending 64 bytes into a page, so LIO's possible overrun stays in it.
fn direct_large(dev: &File, alloc: usize) -> Result<(Vec<u8>, usize)> {
    let mut buf = vec![0u8; alloc + 3 * 4096];
    let start = handler::placement(buf.as_ptr() as usize, alloc);
    let mut sense = [0u8; 96];
    let r = sgio::sg_io(
        dev.as_fd(),
        &cdb::pr_in(PrInAction::ReadFullStatus, alloc as u16),
        Data::FromDevice(&mut buf[start..start + alloc]),
        &mut sense,
        30_000,
    );
    ensure!(
        r.outcome.errno.is_none() && r.outcome.status == 0 && r.outcome.host_status == 0,
        "direct READ FULL STATUS at {alloc}: {:?}",
        r.outcome
    );
    Ok((buf[start..start + r.transferred.min(alloc)].to_vec(), 0))
}

/// Whether LIO's overrun at this length may run past the kernel's own bounce buffer:
/// a length that is not a multiple of 4 is copied through kernel pages holding exactly
/// `alloc` bytes from a page start, so a cut near the end of a page makes LIO write past
/// them: in the lab, direct SG_IO at 8185 (LIO writes to byte 8204) was a kernel oops,
/// as was 8184 from a page-aligned buffer (what sg3_utils uses). No buffer layout of the
/// caller can prevent the former; the case leaves these lengths out.
fn bounce_hazard(alloc: usize) -> bool {
    alloc % 4 != 0 && alloc % 4096 > 4096 - 2 * DESC
}

pub fn full_status_cut() -> Result<()> {
    let scratch = scratch_dir("full-status")?;
    lio::setup_default_dbroot()?;
    let backstore = Backstore::fileio("fullstatus", 16 << 20)?;
    let mut target = Target::loopback(&lio::next_wwn(), &lio::next_wwn(), &backstore)?;
    let mut tids = Vec::new();
    for _ in 1..REGS {
        let wwn = lio::next_wwn();
        target.add_acl(&wwn)?;
        tids.push(prh::sas_tid(&wwn)?);
    }
    let dev = open_rw(&target.device().disk)?;
    let result = run(&dev, &tids, &scratch);
    // Leave no registration behind (CLEAR), so the ACLs and the LU can go.
    let clear = BasicParams {
        key: KEY,
        ..Default::default()
    }
    .encode();
    let _ = pr_out(dev.as_fd(), PrOutAction::Clear, &clear);
    drop(dev);
    // Leave the LU in place: LIO keeps the ACLs' mapped LUNs busy after the SPEC_I_PT
    // registrations (EBUSY on rmdir, even after CLEAR), and the VM is thrown away.
    std::mem::forget(target);
    std::mem::forget(backstore);
    result
}

/// PR OUT `action` (type 0) with `params`, straight through SG_IO.
/// Returns the result and the sense buffer.
fn pr_out(dev: BorrowedFd<'_>, action: PrOutAction, params: &[u8]) -> (sgio::SgResult, [u8; 96]) {
    let mut sense = [0u8; 96];
    let cdb = cdb::pr_out(action, 0, 0, params.len() as u32);
    let r = sgio::sg_io(dev, &cdb, Data::ToDevice(params), &mut sense, 30_000);
    (r, sense)
}

fn run(dev: &File, tids: &[TransportId], scratch: &std::path::Path) -> Result<()> {
    // One REGISTER with SPEC_I_PT: our nexus and every ACL's.
    let params = BasicParams {
        sa_key: KEY,
        transport_ids: Some(tids.to_vec()),
        ..Default::default()
    }
    .encode();
    let (r, sense) = pr_out(dev.as_fd(), PrOutAction::Register, &params);
    ensure!(
        r.outcome.errno.is_none() && r.outcome.status == 0 && r.outcome.host_status == 0,
        "SPEC_I_PT REGISTER of {} TransportIDs ({} bytes): {:?}, sense {:02x?}",
        tids.len(),
        params.len(),
        r.outcome,
        &sense[..18]
    );

    let total = 8 + REGS * DESC;
    let (full, _) = direct_large(dev, total + 256)?;
    ensure!(
        full.len() == total,
        "READ FULL STATUS: {} bytes, expected {total} ({REGS} descriptors of {DESC})",
        full.len()
    );
    let declared = u32::from_be_bytes(full[4..8].try_into().unwrap()) as usize;
    ensure!(
        declared == total - 8,
        "additional length {declared}, expected {}",
        total - 8
    );

    // Lengths around every descriptor boundary up to 8192, and every length near 8192.
    // (Every 10th boundary and those from the 160th: each length costs two round trips.)
    let mut lens = BTreeSet::new();
    for k in (0..=REGS).filter(|k| k % 10 == 0 || *k >= REGS - 20) {
        let b = 8 + k * DESC;
        for d in [1, 2, 3, 4, 8, 12, 16, 20, 23, 24, 25, 28, 32, 44, 47, 48] {
            lens.insert(b + d);
        }
    }
    lens.extend(8100..=8192);
    let before = lens.len();
    lens.retain(|&l| (1..=8192).contains(&l) && !bounce_hazard(l));
    println!(
        "  full_status_cut: {} lengths, {} left out (kernel bounce-buffer hazard)",
        lens.len(),
        before - lens.len()
    );

    let helper = prh::start_prhelper(&scratch.join("prh.sock"), &[])?;
    let mut client = prh::connect(helper.socket())?;
    let mut direct_past = BTreeMap::new();
    let mut short_lens = 0;
    // Whether the transfer length was 8 + the additional length (cut at alloc): an example each.
    let mut lens_of = BTreeMap::new();
    for &alloc in &lens {
        let (d, past) = direct(dev, PrInAction::ReadFullStatus, alloc)?;
        ensure!(
            d.len() <= alloc,
            "direct READ FULL STATUS at {alloc}: {} bytes",
            d.len()
        );
        if d.len() >= 8 {
            // LIO stops at the first descriptor its (off by the headers) check says does
            // not fit, and reports only the descriptors before it: what it returns must
            // be those descriptors of the full read, then zeros.
            let add = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
            let end = (8 + add).min(d.len());
            ensure!(
                add % DESC == 0
                    && add <= total - 8
                    && d[..4] == full[..4]
                    && d[8..end] == full[8..end]
                    && d[end..].iter().all(|&b| b == 0),
                "direct READ FULL STATUS at {alloc}: additional length {add}, data not the full read's first descriptors then zeros"
            );
            if add < (alloc - 8) / DESC * DESC {
                short_lens += 1;
            }
            lens_of
                .entry(d.len() == (8 + add).min(alloc))
                .or_insert(alloc);
        } else {
            ensure!(
                d[..] == full[..d.len()],
                "direct READ FULL STATUS at {alloc}: data differs from the full read"
            );
        }
        direct_past.insert(alloc, past);
        let r = prh::pr_in(&mut client, dev, PrInAction::ReadFullStatus, alloc as u16)
            .map_err(with_log(&helper))?;
        ensure!(
            r.status == prhelper::scsi::Status::GOOD && r.data.len() == d.len(),
            "prhelper READ FULL STATUS at {alloc}: {} with {} bytes, direct SG_IO {}",
            prh::outcome(&r),
            r.data.len(),
            d.len()
        );
        ensure!(
            r.data == d,
            "prhelper READ FULL STATUS at {alloc}: data differs from direct SG_IO's (first difference at {:?})",
            r.data.iter().zip(&d).position(|(a, b)| a != b)
        );
    }
    let r = prh::pr_in(&mut client, dev, PrInAction::ReadKeys, 8192)?;
    ensure!(
        r.status == prhelper::scsi::Status::GOOD && r.data.len() == 8 + REGS * 8,
        "READ KEYS: {} with {} bytes, expected {} keys",
        prh::outcome(&r),
        r.data.len(),
        REGS
    );
    drop(client);
    let log = helper.log_text();
    helper.stop()?;

    // What the daemon saw in its slack, per allocation length.
    let mut daemon_past = BTreeMap::new();
    for line in log.lines() {
        if line.contains("the device wrote to the end of the") {
            bail!("the daemon's slack was written to its end: {line}");
        }
        let Some(rest) = line.split("PR IN: the device wrote ").nth(1) else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let n: usize = w.next().and_then(|n| n.parse().ok()).ok_or(line)?;
        let alloc: usize = rest
            .split("past allocation length ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .ok_or(line)?;
        ensure!(
            daemon_past.insert(alloc, n).is_none(),
            "two overrun lines for allocation length {alloc}"
        );
    }
    let mut differ = Vec::new();
    for (&alloc, &past) in &direct_past {
        let seen = daemon_past.get(&alloc).copied().unwrap_or(0);
        if seen != past {
            differ.push((alloc, past, seen));
        }
    }
    let overran: Vec<_> = direct_past.iter().filter(|(_, &p)| p > 0).collect();
    let max = overran.iter().map(|(_, &p)| p).max().unwrap_or(0);
    println!(
        "  full_status_cut: LIO left out a descriptor that fits at {short_lens} lengths; transfer length 8 + additional length (cut at alloc) true/false, an example each: {lens_of:?}"
    );
    println!(
        "  full_status_cut: {} allocation lengths, {} of them overrun by LIO (at most {max} bytes; e.g. {:?}); daemon saw {} overruns",
        lens.len(),
        overran.len(),
        overran.iter().take(6).collect::<Vec<_>>(),
        daemon_past.len()
    );
    ensure!(
        differ.is_empty(),
        "the daemon's slack check and the guarded direct read disagree (alloc, direct, daemon): {:?}",
        &differ[..differ.len().min(20)]
    );
    ensure!(
        !overran.is_empty(),
        "LIO wrote past the allocation length at no length: the case exercised nothing"
    );
    ensure!(max < SLACK, "LIO wrote {max} bytes past: beyond the slack");
    Ok(())
}
