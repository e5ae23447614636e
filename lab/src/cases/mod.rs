// SPDX-License-Identifier: MIT OR Apache-2.0
//! The lab's test cases, one module per area. Each case is a plain
//! `fn() -> Result<()>`, registered in `CASES` in main.rs.

pub mod abuse;
pub mod capture;
pub mod client_actions;
pub mod cluster;
pub mod containment;
pub mod crash;
pub mod differential;
pub mod full_status;
pub mod kubevirt;
pub mod libvirt;
pub mod lio;
pub mod mpath_fixture;
pub mod multipath;
pub mod multipathd_restart;
pub mod nested;
pub mod perf;

use prhelper_lab::{ensure, Result};

/// A case that always fails (hidden; run as `lab/run demo_failure`): shows
/// that a failed assertion fails the run and prints the guest's log.
pub fn demo_failure() -> Result<()> {
    let answer = 6 * 7;
    ensure!(
        answer == 54,
        "deliberate failure: expected 54, got {answer}"
    );
    Ok(())
}
