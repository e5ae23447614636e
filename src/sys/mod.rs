// SPDX-License-Identifier: MIT OR Apache-2.0
//! Thin wrappers over the system calls that need `unsafe`: the SG_IO ioctl, fd passing
//! over Unix sockets, and fork. Everything above this module is safe code.

#![allow(unsafe_code)] // The daemon's only module with system calls that need `unsafe`.

pub mod dm;
pub mod process;
pub mod sgio;

pub use prhelper_proto::fdpass;
