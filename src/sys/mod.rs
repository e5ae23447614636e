//! Thin wrappers over the system calls that need `unsafe`: the SG_IO ioctl, fd passing
//! over Unix sockets, and fork. Everything above this module is safe code.

pub mod dm;
pub mod fdpass;
pub mod process;
pub mod sgio;
