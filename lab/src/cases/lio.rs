// SPDX-License-Identifier: MIT OR Apache-2.0
//! Cases about the LIO setup itself: the ground truth the helper cases
//! build on.

use prhelper_lab::lio::SharedLun;
use prhelper_lab::sg::{self, EXIT_RESERVATION_CONFLICT};
use prhelper_lab::util::{expect_contains, scratch_dir};
use prhelper_lab::{ensure, Result};

/// One LU, two initiators (two tcm_loop targets): registrations are shared,
/// a Write Exclusive reservation by one makes the other's WRITE conflict.
pub fn lio_smoke() -> Result<()> {
    let scratch = scratch_dir("lio_smoke")?;
    let lun = SharedLun::new("smoke", 64 << 20, 2)?;
    let (a, b) = (lun.device(0), lun.device(1));
    ensure!(a.disk != b.disk, "both targets gave {}", a.disk.display());

    // One initiator registers and sees its key.
    sg::register(&a.disk, 0x1)?;
    let keys = sg::read_keys(&a.disk)?;
    ensure!(keys == [0x1], "after REGISTER 0x1 on A: keys {keys:x?}");

    // The other initiator registers; both see both keys.
    sg::register(&b.disk, 0x2)?;
    for (name, dev) in [("A", a), ("B", b)] {
        let mut keys = sg::read_keys(&dev.disk)?;
        keys.sort();
        ensure!(keys == [0x1, 0x2], "READ KEYS via {name}: {keys:x?}");
    }

    // A takes a Write Exclusive reservation; B sees it.
    sg::reserve(&a.disk, 0x1, 1)?.ok()?;
    let res = sg::read_reservation(&b.disk)?;
    ensure!(
        res == Some((0x1, "Write Exclusive".to_string())),
        "READ RESERVATION via B: {res:?}"
    );
    let full = sg::read_full_status(&b.disk)?;
    expect_contains(
        "READ FULL STATUS",
        &full,
        &lun.targets[0].initiator_sas_address(),
    )?;
    expect_contains("READ FULL STATUS", &full, "<< Reservation holder >>")?;

    // B may read but not write; A may write; B cannot reserve.
    let out = sg::write_block(&b.sg, 0, &scratch)?;
    ensure!(
        out.status == EXIT_RESERVATION_CONFLICT,
        "WRITE from B should conflict: {}",
        out.describe()
    );
    expect_contains("sg_raw WRITE from B", &out.text(), "Reservation Conflict")?;
    sg::write_block(&a.sg, 0, &scratch)?.ok()?;
    sg::read_block(&b.sg, 0)?.ok()?;
    let out = sg::reserve(&b.disk, 0x2, 1)?;
    ensure!(
        out.status == EXIT_RESERVATION_CONFLICT,
        "RESERVE from B should conflict: {}",
        out.describe()
    );

    // CLEAR drops everything; B, whose registration it removed, first gets
    // UNIT ATTENTION "reservations preempted" (SPC-4 5.14.11.2.7).
    sg::clear(&a.disk, 0x1)?;
    let out = sg::sg_persist(&b.disk, &["--in", "--read-keys"])?;
    ensure!(
        out.status == sg::EXIT_UNIT_ATTENTION,
        "first command from B after CLEAR should get UNIT ATTENTION: {}",
        out.describe()
    );
    expect_contains("UA after CLEAR", &out.text(), "Reservations preempted")?;
    let keys = sg::read_keys(&b.disk)?;
    ensure!(keys.is_empty(), "after CLEAR: keys {keys:x?}");
    ensure!(
        sg::read_reservation(&b.disk)?.is_none(),
        "reservation survived CLEAR"
    );
    sg::write_block(&b.sg, 0, &scratch)?.ok()?;
    Ok(())
}
