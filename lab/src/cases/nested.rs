// SPDX-License-Identifier: MIT OR Apache-2.0
//! Real QEMU as the helper's client: a nested guest whose scsi-block disk is
//! a LIO LUN, with `pr-manager-helper` pointing at the helper under test.

use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::SharedLun;
use prhelper_lab::nested::{tail, NestedGuest, NestedOutcome};
use prhelper_lab::prh;
use prhelper_lab::util::{expect_contains, scratch_dir};
use prhelper_lab::{bail, ensure, sg, Result};
use std::path::Path;

/// Debian's C helper as QEMU's PR manager.
pub fn nested_qemu_c_helper() -> Result<()> {
    nested_register_through(Path::new(C_HELPER), &[])
}

/// Boot a nested guest running `script` on `disk` through `helper`; fail (with the
/// console's tail and the helper's log) unless the script exits 0.
pub fn run_guest(script: &str, helper: &Helper, disk: &Path) -> Result<NestedOutcome> {
    let outcome = NestedGuest::new(script)
        .with_pr_helper(helper.socket())
        .with_disk(disk)
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
    Ok(outcome)
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
    let outcome = run_guest(&script, &helper, &a.disk)?;
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

/// prhelper (default seccomp filter, `-v`) as QEMU's PR manager, in one
/// nested boot: REGISTER + READ KEYS in the guest; then, while the guest
/// waits, prhelper is stopped with SIGTERM and started again on the same
/// socket; the guest's next PR commands must succeed (QEMU's
/// pr-manager-helper reconnects on the next command) and reach the LU
/// through the new process.
///
/// The guest and the outer VM signal each other through files on a second
/// 9p share (the outer VM's `/tmp/lab/nested-sig`, mounted read-write in the
/// guest): the outer VM's /tmp itself is hidden in the guest by its own tmpfs.
pub fn nested_qemu_prhelper() -> Result<()> {
    const KEY: u64 = 0xabc;
    const KEY2: u64 = 0xdef;
    let scratch = scratch_dir("nested-prhelper")?;
    let sig = scratch.join("sig");
    std::fs::create_dir_all(&sig).map_err(|e| e.to_string())?;
    let lun = SharedLun::new("nested-prh", 64 << 20, 2)?;
    let (a, b) = (lun.device(0), lun.device(1));
    let sock = scratch.join("pr.sock");
    let first = prh::start_prhelper(&sock, &[])?;

    let script = format!(
        "set -x\n\
         sg_persist --out --register --param-sark=0x{KEY:x} \"$LAB_DISK\" || exit 10\n\
         sg_persist --in --read-keys \"$LAB_DISK\" || exit 11\n\
         mkdir -p /tmp/sig && mount -t 9p -o trans=virtio,version=9p2000.L sig /tmp/sig || exit 12\n\
         touch /tmp/sig/phase1 || exit 13\n\
         for _ in $(seq 1200); do [ -e /tmp/sig/go ] && break; sleep 0.5; done\n\
         [ -e /tmp/sig/go ] || exit 14\n\
         echo '@@ helper restarted; PR commands again'\n\
         sg_persist --in --read-keys \"$LAB_DISK\" || exit 15\n\
         sg_persist --out --register --param-rk=0x{KEY:x} --param-sark=0x{KEY2:x} \"$LAB_DISK\" || exit 16\n\
         sg_persist --in --read-keys \"$LAB_DISK\" || exit 17\n"
    );
    let mut guest = NestedGuest::new(&script)
        .with_pr_helper(&sock)
        .with_disk(&a.disk);
    guest.extra_qemu_args.extend([
        "-fsdev".to_string(),
        format!("local,id=sig,path={},security_model=none", sig.display()),
        "-device".to_string(),
        "virtio-9p-pci,fsdev=sig,mount_tag=sig".to_string(),
    ]);
    let timeout = guest.timeout;
    let thread = std::thread::spawn(move || guest.run());

    // Phase 1 done in the guest?
    let started = std::time::Instant::now();
    while !sig.join("phase1").exists() {
        if thread.is_finished() || started.elapsed() > timeout {
            let outcome = thread.join().map_err(|_| "nested guest thread panicked")?;
            let detail = match outcome {
                Ok(o) => format!(
                    "guest exited {} before phase 1 ended; console tail:\n{}",
                    o.status,
                    tail(&o.console, 30)
                ),
                Err(e) => e,
            };
            bail!("{detail}\nprhelper log:\n{}", first.log_text());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!(
        "  nested guest registered through prhelper after {:.1}s; restarting prhelper",
        started.elapsed().as_secs_f64()
    );
    let first_log = first.log_text();
    let first_pid = first.pid();
    let status = first.stop()?;
    ensure!(
        status.success(),
        "prhelper exited with {status} on SIGTERM; log:\n{first_log}"
    );
    ensure!(!sock.exists(), "prhelper left its socket file behind");
    let mut second = prh::start_prhelper(&sock, &[])?;
    ensure!(second.pid() != first_pid, "same pid after restart?");
    std::fs::write(sig.join("go"), "go").map_err(|e| e.to_string())?;

    let outcome = thread
        .join()
        .map_err(|_| "nested guest thread panicked")?
        .map_err(|e| {
            format!(
                "{e}\nfirst prhelper log:\n{first_log}\nsecond prhelper log:\n{}",
                second.log_text()
            )
        })?;
    println!(
        "  nested guest ran for {:.1}s",
        outcome.duration.as_secs_f64()
    );
    let logs = |h: &Helper| {
        format!(
            "first prhelper log:\n{first_log}\nsecond prhelper log:\n{}",
            h.log_text()
        )
    };
    ensure!(
        outcome.status == 0,
        "nested script exited {}; console tail:\n{}\n{}",
        outcome.status,
        tail(&outcome.console, 40),
        logs(&second)
    );
    // Both phases went through prhelper: the first process logged the
    // REGISTER, the second the REGISTER after the restart.
    ensure!(
        first_log.contains("register") && second.log_text().contains("register"),
        "expected a logged REGISTER in both prhelper processes\n{}",
        logs(&second)
    );
    expect_contains(
        "nested READ KEYS after restart",
        &outcome.console,
        &format!("0x{KEY2:x}"),
    )?;

    // Ground truth from the other initiator.
    let keys = sg::read_keys(&b.disk)?;
    ensure!(
        keys == [KEY2],
        "READ KEYS via initiator B: {keys:x?}\n{}",
        logs(&second)
    );
    let running = second.is_running();
    ensure!(running, "prhelper died\n{}", logs(&second));
    second.stop()?;
    Ok(())
}
