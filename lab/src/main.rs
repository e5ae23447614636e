// SPDX-License-Identifier: MIT OR Apache-2.0
//! `prhelper-lab`: the test runner that runs inside the lab VM.
//!
//! ```text
//! prhelper-lab [--list] [FILTER...]
//! ```
//!
//! Runs every case whose name contains one of the FILTERs (all cases without
//! filters; hidden cases only when named exactly), printing `PASS name (time)`
//! or `FAIL name: reason`, then `N passed, N failed`. Exits 1 if any failed.
//! Start it through `lab/run`, which boots the VM.
//!
//! To add a case: write `fn my_case() -> Result<()>` in a module under
//! `cases/` and list it in [`CASES`].

mod cases;

use prhelper_lab::Result;
use std::time::Instant;

/// One named test case.
struct Case {
    name: &'static str,
    about: &'static str,
    run: fn() -> Result<()>,
    /// Only run when named exactly on the command line.
    hidden: bool,
}

const fn case(name: &'static str, about: &'static str, run: fn() -> Result<()>) -> Case {
    Case {
        name,
        about,
        run,
        hidden: false,
    }
}

/// The registry: every case, in the order they run.
const CASES: &[Case] = &[
    case(
        "lio_smoke",
        "LIO tcm_loop LUN: register, read keys, two initiators, reservation conflict",
        cases::lio::lio_smoke,
    ),
    case(
        "client_actions",
        "prhelper-client through prhelper: every PR IN/OUT action and type, checked against sg_persist",
        cases::client_actions::client_actions,
    ),
    case(
        "differential_c_helper",
        "prhelper vs Debian's C helper on twin LUNs: scripted + seeded random sequences, byte for byte",
        cases::differential::differential_c_helper,
    ),
    case(
        "abuse",
        "malformed requests, non-device fds, an offline then removed LUN; a healthy client unaffected",
        cases::abuse::abuse,
    ),
    case(
        "containment",
        "partition and dm-linear slice of a LIO disk refused (LIO sees nothing); whole disk, whole dm-linear, multipath map served",
        cases::containment::containment,
    ),
    case(
        "perf_real_device",
        "benchmark on a LIO LUN: READ KEYS, REGISTER/unregister; direct SG_IO vs C helper vs prhelper (ratios)",
        cases::perf::perf_real_device,
    ),
    case(
        "hung_device",
        "100/200 clients stuck on a hung multipath map: others still served, SIGTERM exit; C helper for contrast",
        cases::perf::hung_device,
    ),
    case(
        "full_status_cut",
        "READ FULL STATUS of 180 registrations (8648 bytes) cut at ~1500 lengths: exact reply, LIO's overrun stays in prhelper's slack",
        cases::full_status::full_status_cut,
    ),
    case(
        "mpath_fixture",
        "lab dm-multipath blocks: SG_IO via a dmsetup map reaches one path; multipathd + mpathpersist register all, re-register",
        cases::mpath_fixture::mpath_fixture,
    ),
    case(
        "multipath_prhelper",
        "prhelper on a dmsetup multipath map: every PR OUT action with paths going down, conflicts, SPEC_I_PT, ALL_TG_PT; kernel IOC_PR_REGISTER for contrast",
        cases::multipath::multipath_prhelper,
    ),
    case(
        "multipath_multipathd",
        "prhelper with Debian's multipathd: the key reaches multipathd, a reinstated path gets registered; mpathpersist on the same map compared",
        cases::multipath::multipath_multipathd,
    ),
    case(
        "multipath_crash",
        "prhelper SIGKILLed mid multipath PR OUT (>=100 kills): after restart and the client's retry every path agrees and multipathd's key matches",
        cases::crash::multipath_crash,
    ),
    case(
        "cluster_validation",
        "two-node failover cluster validation (MS-CSVP) on one LU: LIO, C helper, prhelper single-path, multipath, multipath with dead legs and multipathd; same answers",
        cases::cluster::cluster_validation,
    ),
    case(
        "nested_qemu_prhelper",
        "nested QEMU: scsi-block through prhelper and through the C helper, scsi-generic through prhelper; prhelper restarted mid-run, QEMU reconnects",
        cases::nested::nested_qemu_prhelper,
    ),
    case(
        "multipathd_restart",
        "multipathd restarts under prhelper -u nobody (connector process) and as root: the next REGISTERs reach the new multipathd",
        cases::multipathd_restart::multipathd_restart,
    ),
    // libvirt_qemu's domain carries the same check (a guest's REGISTER and RESERVE on a
    // multipath map reach both paths) in the boot it needs anyway: one nested boot fewer.
    Case {
        hidden: true,
        ..case(
            "multipath_nested_qemu",
            "nested QEMU guest on a multipath map through prhelper: its REGISTER and RESERVE reach both paths",
            cases::multipath::multipath_nested_qemu,
        )
    },
    case(
        "kubevirt_pr_helper",
        "the OCI image under podman as KubeVirt runs it: plain LUN and multipathd map through the socket, uid 107, restarts",
        cases::kubevirt::kubevirt_pr_helper,
    ),
    case(
        "libvirt_qemu",
        "libvirtd 9.0 runs prhelper: managed (LUN, /dev/mapper and /dev/dm-N maps), unmanaged, kill -9, two domains, destroy",
        cases::libvirt::libvirt_qemu,
    ),
    Case {
        hidden: true,
        ..case(
            "capture_fuzz_seeds",
            "record real PR traffic (prhelper, C helper, SG_IO) as fuzz seeds; run by fuzz/capture-seeds",
            cases::capture::capture_fuzz_seeds,
        )
    },
    Case {
        hidden: true,
        ..case(
            "demo_failure",
            "always fails: checks that a failing case fails the run",
            cases::demo_failure,
        )
    },
];

fn usage() -> ! {
    eprintln!("usage: prhelper-lab [--list] [FILTER...]");
    std::process::exit(2);
}

fn selected<'a>(filters: &[String]) -> Vec<&'a Case> {
    CASES
        .iter()
        .filter(|c| {
            if c.hidden {
                filters.iter().any(|f| f == c.name)
            } else {
                filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str()))
            }
        })
        .collect()
}

/// Run one case, turning a panic into a failure.
fn run_case(case: &Case) -> Result<()> {
    match std::panic::catch_unwind(case.run) {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}

fn main() {
    let mut list = false;
    let mut filters = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--list" => list = true,
            "-h" | "--help" => usage(),
            s if s.starts_with('-') => usage(),
            _ => filters.push(arg),
        }
    }

    if list {
        for c in CASES {
            let hidden = if c.hidden { " (hidden)" } else { "" };
            println!("{:<24} {}{hidden}", c.name, c.about);
        }
        return;
    }

    let cases = selected(&filters);
    if cases.is_empty() {
        eprintln!("prhelper-lab: no case matches {filters:?} (see --list)");
        std::process::exit(2);
    }
    if !prhelper_lab::util::in_lab_vm() {
        eprintln!("prhelper-lab: not inside the lab VM; run it with lab/run");
        std::process::exit(2);
    }

    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        println!("RUN  {}", case.name);
        let start = Instant::now();
        let result = run_case(case);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("PASS {} ({secs:.1}s)", case.name);
            }
            Err(reason) => {
                failed += 1;
                println!("FAIL {}: {reason}", case.name);
            }
        }
    }
    println!("lab: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
