// SPDX-License-Identifier: MIT OR Apache-2.0
//! Read the keys registered on a disk through a pr-helper socket, as a VMM would.
//!
//! ```sh
//! cargo run -p prhelper-proto --example read_keys -- /dev/sdb [/run/qemu-pr-helper.sock]
//! ```
//!
//! The disk is opened read-only (PR IN needs no more); the helper runs READ KEYS on it
//! and replies with the PR generation and the keys.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use prhelper_proto::client::{Client, Error};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(disk) = args.next() else {
        eprintln!("usage: read_keys DEVICE [SOCKET]");
        return ExitCode::from(2);
    };
    let socket = args
        .next()
        .unwrap_or_else(|| prhelper_proto::DEFAULT_SOCKET.into());

    let disk = match std::fs::File::open(&disk) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {}: {e}", disk.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let timeout = Some(Duration::from_secs(60));
    let keys = Client::connect_with_timeouts(&socket, timeout, timeout)
        .and_then(|mut helper| helper.read_keys(disk.as_fd()));
    match keys {
        Ok(k) => {
            println!(
                "PR generation {:#x}, {} registered key(s)",
                k.generation,
                k.keys.len()
            );
            for key in k.keys {
                println!("    {key:#x}");
            }
            ExitCode::SUCCESS
        }
        Err(Error::Scsi { status, sense }) => {
            let why = sense.code().map_or(String::new(), |c| {
                format!(" (sense {:02x}/{:02x}/{:02x})", c.key, c.asc, c.ascq)
            });
            eprintln!("READ KEYS failed: {status}{why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
