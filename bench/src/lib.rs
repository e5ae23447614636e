// SPDX-License-Identifier: MIT OR Apache-2.0
//! Host benchmark for prhelper: the C helper and a minimal "floor" server against
//! prhelper, over the real pr-helper protocol with fd passing.
//!
//! - [`load`]: the closed-loop load generator (reusable by the lab with any socket and
//!   fd opener).
//! - [`floor`]: the minimal server that bounds what any helper can achieve here.
//! - [`server`]: starting and stopping the servers under test.
//! - [`throughput`] and [`scale`]: the two measured parts.
//! - [`report`] and [`svg`]: the terminal table, JSON and charts.

pub mod floor;
pub mod load;
pub mod procinfo;
pub mod report;
pub mod scale;
pub mod server;
pub mod stats;
pub mod svg;
pub mod throughput;
