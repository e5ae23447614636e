// SPDX-License-Identifier: MIT OR Apache-2.0
//! The two wire protocols the daemon speaks: QEMU's pr-helper protocol towards clients
//! ([`wire`] and [`conn`], from the `prhelper-proto` library) and multipathd's command
//! socket towards multipathd ([`multipathd`]). Pure code: no I/O, no `unsafe`.

pub mod multipathd;

pub use prhelper_proto::{conn, wire};

pub use conn::{Conn, ProtoError, Request, RequestKind};
pub use wire::{AllocLen, Reply, ReplyHeader};
