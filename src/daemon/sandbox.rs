// SPDX-License-Identifier: MIT OR Apache-2.0
//! Confinement once start-up is done: no_new_privs, Landlock (where the kernel has it)
//! and the seccomp filter from [`super::seccomp`].
//!
//! After start-up the daemon touches the filesystem only to remove its socket file on
//! stop and to read sysfs; devices arrive as fds. Landlock therefore grants file removal
//! in the socket's directory, reading beneath /sys/devices (the containment check reads
//! a dm map's size and held devices there: `/sys/dev/block/MAJ:MIN` links resolve beneath
//! it), and, with `--multipath`, reading beneath /dev and /sys instead (a map's path
//! devices are opened read-only by device number, and found through sysfs).
//! Connecting to multipathd's pathname socket (`/run/multipathd.socket`, possibly a
//! symlink to a bind-mounted socket) is not a filesystem access the handled Landlock
//! rights (ABI V3) cover, so it keeps working in the sandbox; the lab's
//! `kubevirt_pr_helper` connects that way only after start-up.

use std::path::Path;

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};
use tracing::{debug, info};

use super::seccomp;

/// Why the sandbox could not be set up. The daemon does not start without it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    /// The Landlock ruleset could not be built or enforced.
    #[error("landlock")]
    Landlock(#[from] landlock::RulesetError),
    /// The seccomp filter could not be compiled.
    #[error("cannot compile the seccomp filter")]
    SeccompBuild(#[from] seccompiler::BackendError),
    /// The kernel refused the seccomp filter.
    #[error("cannot install the seccomp filter")]
    SeccompApply(#[from] seccompiler::Error),
}

/// Restrict the filesystem. `removable_in`: the directory whose entries may be removed;
/// `readable`: directories beneath which files may be opened for reading.
pub fn landlock(
    removable_in: Option<&Path>,
    readable: &[&Path],
) -> Result<RulesetStatus, SandboxError> {
    let abi = ABI::V3;
    let err = SandboxError::Landlock;
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    if let Some(dir) = removable_in {
        match PathFd::new(dir) {
            Ok(fd) => {
                rs = rs
                    .add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))
                    .map_err(err)?
            }
            Err(e) => debug!("landlock: cannot open {}: {e}", dir.display()),
        }
    }
    for dir in readable {
        match PathFd::new(dir) {
            Ok(fd) => {
                rs = rs
                    .add_rule(PathBeneath::new(fd, AccessFs::ReadFile | AccessFs::ReadDir))
                    .map_err(err)?
            }
            Err(e) => debug!("landlock: cannot open {}: {e}", dir.display()),
        }
    }
    let status = rs.restrict_self().map_err(err)?;
    Ok(status.ruleset)
}

/// Enter the sandbox: no_new_privs, Landlock, then the seccomp filter (compiled earlier).
pub fn enter(
    removable_in: Option<&Path>,
    readable: &[&Path],
    filter: Option<&seccomp::Filters>,
) -> Result<(), SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    match landlock(removable_in, readable)? {
        RulesetStatus::FullyEnforced => debug!("landlock: enforced"),
        RulesetStatus::PartiallyEnforced => {
            debug!("landlock: partially enforced (older kernel ABI)")
        }
        RulesetStatus::NotEnforced => {
            debug!("landlock: not available on this kernel; running without it")
        }
    }
    match filter {
        Some(prog) => seccomp::apply(prog)?,
        None => info!("seccomp filter disabled"),
    }
    Ok(())
}
