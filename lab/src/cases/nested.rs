// SPDX-License-Identifier: MIT OR Apache-2.0
//! Real QEMU as the helper's client: a nested guest whose scsi-block disk is
//! a LIO LUN, with `pr-manager-helper` pointing at the helper under test.

use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::SharedLun;
use prhelper_lab::nested::{tail, NestedGuest};
use prhelper_lab::util::{expect_contains, scratch_dir};
use prhelper_lab::{ensure, sg, Result};
use std::path::Path;

/// Debian's C helper as QEMU's PR manager.
pub fn nested_qemu_c_helper() -> Result<()> {
    nested_register_through(Path::new(C_HELPER), &[])
}

/// Start `helper` (with `extra_args`), boot a nested guest with initiator A's
/// disk through it, REGISTER + READ KEYS there, and check from initiator B in
/// the outer VM that A's key really reached the LU.
pub fn nested_register_through(helper: &Path, extra_args: &[&str]) -> Result<()> {
    const KEY: u64 = 0xabc;
    let scratch = scratch_dir("nested")?;
    let lun = SharedLun::new("nested", 64 << 20, 2)?;
    let (a, b) = (lun.device(0), lun.device(1));
    let mut helper = Helper::start(helper, &scratch.join("pr.sock"), extra_args)?;

    let script = format!(
        "set -x\n\
         sg_persist --out --register --param-sark=0x{KEY:x} \"$LAB_DISK\" || exit 10\n\
         sg_persist --in --read-keys \"$LAB_DISK\" || exit 11\n"
    );
    let outcome = NestedGuest::new(&script)
        .with_pr_helper(helper.socket())
        .with_disk(&a.disk)
        .run()
        .map_err(|e| format!("{e}\nhelper log:\n{}", helper.log_text()))?;
    println!(
        "  nested guest ran for {:.1}s",
        outcome.duration.as_secs_f64()
    );
    ensure!(
        outcome.status == 0,
        "nested script exited {}; console tail:\n{}\nhelper log:\n{}",
        outcome.status,
        tail(&outcome.console, 30),
        helper.log_text()
    );
    expect_contains("nested READ KEYS", &outcome.console, &format!("0x{KEY:x}"))?;

    // Ground truth from the other initiator, without QEMU or the helper.
    let keys = sg::read_keys(&b.disk)?;
    ensure!(keys == [KEY], "READ KEYS via initiator B: {keys:x?}");
    let full = sg::read_full_status(&b.disk)?;
    expect_contains("READ FULL STATUS via B", &full, &format!("Key=0x{KEY:x}"))?;
    expect_contains(
        "READ FULL STATUS via B (A's transport ID)",
        &full,
        &lun.targets[0].initiator_sas_address(),
    )?;
    ensure!(
        helper.is_running(),
        "helper died; log:\n{}",
        helper.log_text()
    );
    helper.stop()?;
    Ok(())
}
