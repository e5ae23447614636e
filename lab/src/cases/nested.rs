// SPDX-License-Identifier: MIT OR Apache-2.0
//! Real QEMU as the helper's client: a nested guest whose scsi-block disk is
//! a LIO LUN, with `pr-manager-helper` pointing at the helper under test.

use prhelper_lab::helper::{Helper, C_HELPER};
use prhelper_lab::lio::SharedLun;
use prhelper_lab::nested::{guest_pause, tail, NestedGuest, NestedOutcome, Passthrough};
use prhelper_lab::prh;
use prhelper_lab::util::{expect_contains, scratch_dir};
use prhelper_lab::{bail, ensure, sg, Result};
use std::path::Path;

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

/// Three disks, two helpers, one nested boot:
/// - target 0: `scsi-block` through prhelper (default seccomp filter, `-v`);
/// - target 1: `scsi-block` through Debian's C helper (its own pr-manager-helper);
/// - target 2: `scsi-generic` on a `/dev/sgN` through the same prhelper.
///
/// REGISTER + READ KEYS on each in the guest (checked from another initiator); then,
/// while the guest waits, prhelper is stopped with SIGTERM (exit 0, socket removed) and
/// started again on the same socket; the guest's next PR commands on both prhelper
/// disks must succeed (QEMU's pr-manager-helper reconnects on the next command) and
/// reach the LUs through the new process.
///
/// The guest and the outer VM signal each other through files on a second 9p share
/// (the outer VM's `/tmp/lab/nested-prhelper/sig`, mounted read-write in the guest):
/// the outer VM's /tmp itself is hidden in the guest by its own tmpfs.
pub fn nested_qemu_prhelper() -> Result<()> {
    const KEY: u64 = 0xabc;
    const KEY2: u64 = 0xdef;
    let scratch = scratch_dir("nested-prhelper")?;
    let sig = scratch.join("sig");
    std::fs::create_dir_all(&sig).map_err(|e| e.to_string())?;
    let lun = SharedLun::new("nested-prh", 64 << 20, 2)?;
    let a = lun.device(0);
    let lun_c = SharedLun::new("nested-c", 64 << 20, 2)?;
    let lun_sg = SharedLun::new("nested-sg", 64 << 20, 2)?;
    let sock = scratch.join("pr.sock");
    let first = prh::start_prhelper(&sock, &[])?;
    let mut c_helper = Helper::start(Path::new(C_HELPER), &scratch.join("c.sock"), &[])?;

    let pause = guest_pause(600);
    let script = format!(
        "set -x\n\
         P=$(disk 0) && C=$(disk 1) && G=$(disk 2) || exit 20\n\
         for d in $P $C $G; do\n\
         \x20   sg_persist --out --register --param-sark=0x{KEY:x} $d || exit 10\n\
         \x20   sg_persist --in --read-keys $d || exit 11\n\
         done\n\
         {pause}\
         sg_persist --in --read-keys $P || exit 15\n\
         for d in $P $G; do\n\
         \x20   sg_persist --out --register --param-rk=0x{KEY:x} --param-sark=0x{KEY2:x} $d || exit 16\n\
         done\n\
         sg_persist --in --read-keys $G || exit 17\n"
    );
    let mut guest = NestedGuest::new(&script)
        .with_pr_helper(&sock)
        .with_disk(&a.disk)
        .with_disk_on(&lun_c.device(0).disk, Passthrough::Block, c_helper.socket())
        .with_disk_on(&lun_sg.device(0).sg, Passthrough::Generic, &sock);
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
            bail!(
                "{detail}\nprhelper log:\n{}\nC helper log:\n{}",
                first.log_text(),
                c_helper.log_text()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!(
        "  nested guest registered through prhelper and the C helper after {:.1}s; restarting prhelper",
        started.elapsed().as_secs_f64()
    );
    // Phase 1's ground truth from the other initiators, without QEMU or a helper.
    for (what, l) in [
        ("prhelper scsi-block", &lun),
        ("C helper", &lun_c),
        ("prhelper scsi-generic", &lun_sg),
    ] {
        let other = &l.device(1).disk;
        let keys = sg::read_keys(other)?;
        ensure!(
            keys == [KEY],
            "{what}: READ KEYS via initiator B: {keys:x?}"
        );
        let full = sg::read_full_status(other)?;
        expect_contains(
            &format!("{what}: READ FULL STATUS via B (A's transport ID)"),
            &full,
            &l.targets[0].initiator_sas_address(),
        )?;
    }
    ensure!(
        c_helper.is_running(),
        "C helper died; log:\n{}",
        c_helper.log_text()
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
    // REGISTERs, the second the REGISTERs after the restart.
    ensure!(
        first_log.matches("register").count() >= 2
            && second.log_text().matches("register").count() >= 2,
        "expected logged REGISTERs (both disks) in both prhelper processes\n{}",
        logs(&second)
    );
    expect_contains(
        "nested READ KEYS after restart",
        &outcome.console,
        &format!("0x{KEY2:x}"),
    )?;

    // Ground truth from the other initiators.
    for (what, l, want) in [
        ("scsi-block", &lun, KEY2),
        ("scsi-generic", &lun_sg, KEY2),
        ("C helper", &lun_c, KEY),
    ] {
        let keys = sg::read_keys(&l.device(1).disk)?;
        ensure!(
            keys == [want],
            "{what}: READ KEYS via initiator B: {keys:x?}\n{}",
            logs(&second)
        );
    }
    let running = second.is_running();
    ensure!(running, "prhelper died\n{}", logs(&second));
    second.stop()?;
    ensure!(
        c_helper.is_running(),
        "C helper died; log:\n{}",
        c_helper.log_text()
    );
    c_helper.stop()?;
    Ok(())
}
