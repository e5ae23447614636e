// SPDX-License-Identifier: MIT OR Apache-2.0
//! `prhelper`: the daemon. See `prhelper --help` and the README.

fn main() {
    std::process::exit(prhelper::daemon::main());
}
