// SPDX-License-Identifier: MIT OR Apache-2.0
//! prhelper: a drop-in replacement for QEMU's `qemu-pr-helper`.
//!
//! Layers, from the bottom:
//! - [`scsi`] and [`proto`]: SCSI encoding and the wire protocol. Pure code, no I/O.
//! - [`sys`]: the only module with `unsafe`: SG_IO, fd passing, fork.
//! - [`dev`]: device access behind the [`dev::Backend`] trait.
//! - [`daemon`]: listener, sessions, privileges, signals: glue on top.
//! - [`client`]: a client library that speaks the protocol the way QEMU does.
//!
//! [`scsi`], the wire protocol and [`client`] live in the `prhelper-proto` library crate
//! (`crates/prhelper-proto`), which VMMs can depend on without the daemon; they are
//! re-exported here under their old paths.
//!
//! This library target is not a published API (the package has `publish = false`): it
//! exists so that the daemon's binaries, integration tests, lab, benchmark and fuzz
//! targets share one build of the daemon. Other programs depend on `prhelper-proto`.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod client_cli;
pub mod daemon;
pub mod dev;
pub mod proto;
pub mod ratelimit;
pub mod sg3;
pub mod sys;

pub use prhelper_proto::{client, scsi};

// The README's Rust examples are compiled as doc tests (its other blocks are marked
// `sh` or `text`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
