// SPDX-License-Identifier: MIT OR Apache-2.0
//! Building blocks for prhelper's lab tests.
//!
//! These run *inside* the lab VM (see `lab/README.md`): a Debian kernel under
//! TCG, chrooted into the host's root filesystem, with the LIO SCSI target and
//! its loopback fabric (tcm_loop) loaded. They configure real SCSI devices
//! with full SPC-4 persistent reservations ([`lio`]), start PR helpers
//! ([`helper`]), drive them with sg3-utils ([`sg`]), boot nested QEMU guests
//! that reach those devices through a helper ([`nested`]), and build
//! dm-multipath maps over several legs of one LU, by hand or with a real
//! multipathd ([`mpath`]).

pub mod helper;
pub mod libvirt;
pub mod lio;
pub mod mpath;
pub mod nested;
pub mod podman;
pub mod prh;
pub mod sg;
pub mod util;

/// The error type of the lab: a human-readable message.
pub type Error = String;
/// Result with the lab's error type.
pub type Result<T> = std::result::Result<T, Error>;

/// Return early with an error built by `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(format!($($arg)*))
    };
}

/// Return early with an error built by `format!` unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}
