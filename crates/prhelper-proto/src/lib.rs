// SPDX-License-Identifier: MIT OR Apache-2.0
//! QEMU's pr-helper protocol, without the helper.
//!
//! QEMU's `pr-manager-helper` object hands the SCSI PERSISTENT RESERVE IN and OUT commands
//! of its passthrough disks (`scsi-block`, `scsi-generic`) to a privileged helper over a
//! Unix socket, passing the disk's file descriptor with each command
//! (`docs/interop/pr-helper.rst` in QEMU). This crate is that protocol and the SCSI
//! encoding around it, for a VMM, a test harness or another helper:
//!
//! - [`client`]: a client that speaks the protocol exactly as QEMU does;
//! - [`scsi`]: PR IN/OUT CDBs, parameter lists, PR IN payloads and sense data (pure code);
//! - [`wire`]: the protocol's framing and reply headers (pure code);
//! - [`conn`]: the helper's side of a connection, as a state machine (pure code);
//! - [`fdpass`]: sending and receiving bytes with file descriptors (SCM_RIGHTS), the only
//!   module with `unsafe`.
//!
//! It depends on `libc`, `nix` and `thiserror` only.
//!
//! # Example
//!
//! Read the keys registered on a disk through a helper, as a VMM would for its guest:
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use std::time::Duration;
//!
//! use prhelper_proto::client::Client;
//! use prhelper_proto::scsi::cdb::{PrOutAction, PrType};
//! use prhelper_proto::scsi::prout::BasicParams;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = std::fs::OpenOptions::new().read(true).write(true).open("/dev/sdb")?;
//! // Timeouts are options: QEMU waits forever, a VMM may prefer not to.
//! let (read, write) = (Some(Duration::from_secs(60)), Some(Duration::from_secs(5)));
//! let mut helper = Client::connect_with_timeouts(prhelper_proto::DEFAULT_SOCKET, read, write)?;
//!
//! // REGISTER a key, then reserve with it.
//! let key = 0x1234_abcd;
//! let register = BasicParams { sa_key: key, ..Default::default() };
//! helper.pr_out(disk.as_fd(), PrOutAction::Register, None, &register.encode())?;
//! let reserve = BasicParams { key, ..Default::default() };
//! let wr_ex_ro = Some(PrType::WriteExclusiveRegistrantsOnly);
//! helper.pr_out(disk.as_fd(), PrOutAction::Reserve, wr_ex_ro, &reserve.encode())?;
//!
//! let keys = helper.read_keys(disk.as_fd())?;
//! println!("generation {}, keys {:x?}", keys.generation, keys.keys);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod client;
pub mod conn;
pub mod fdpass;
pub mod scsi;
pub mod wire;

// The README's example is compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The helper's socket when none is named: `qemu-pr-helper`'s default, which QEMU
/// command lines and libvirt set-ups use.
pub const DEFAULT_SOCKET: &str = "/var/run/qemu-pr-helper.sock";
