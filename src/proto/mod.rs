//! The pr-helper wire protocol (QEMU `docs/interop/pr-helper.rst`): framing, replies and the
//! per-connection request state machine. Pure code: no I/O, no `unsafe`.

pub mod conn;
pub mod multipathd;
pub mod wire;

pub use conn::{Conn, ProtoError, Request, RequestKind};
pub use wire::{AllocLen, Reply, ReplyHeader};
