// SPDX-License-Identifier: MIT OR Apache-2.0
//! Part 1: requests/s and latency at several concurrencies, the servers interleaved round
//! by round (floor, C, prhelper, floor, C, prhelper, ...) so that machine-wide drift hits
//! all of them alike.

use std::time::Duration;

use crate::load::{self, LoadSpec};
use crate::procinfo;
use crate::server::{Kind, Server};

/// One concurrency setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub clients: usize,
    /// Server and client pinned to the same CPU (1 client only).
    pub pinned: bool,
}

impl Mode {
    pub fn label(&self) -> String {
        if self.pinned {
            format!("{} pinned", self.clients)
        } else {
            self.clients.to_string()
        }
    }
}

pub struct Config {
    pub modes: Vec<Mode>,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub pin_cpu: usize,
    /// Generator threads for multi-client modes (0: automatic).
    pub threads: usize,
}

/// One server, one mode, one round.
#[derive(Clone, Debug)]
pub struct Sample {
    pub kind: Kind,
    pub mode: Mode,
    pub round: usize,
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub gen_threads: usize,
}

/// Run every mode for every round on every server. Failures (a request that failed, a
/// server that died) are returned alongside the samples gathered so far.
pub fn run(
    servers: &mut [Server],
    cfg: &Config,
    mut restart: impl FnMut(Kind) -> std::io::Result<Server>,
    mut progress: impl FnMut(&Sample),
) -> (Vec<Sample>, Vec<String>) {
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for mode in &cfg.modes {
        for round in 0..cfg.rounds {
            for server in servers.iter_mut() {
                let pid = server.pid();
                let mut spec = LoadSpec::dev_null(&server.socket, mode.clients, cfg.duration);
                spec.warmup = cfg.warmup;
                spec.threads = cfg.threads;
                if mode.pinned {
                    spec.pin_cpu = Some(cfg.pin_cpu);
                    if let Err(e) = procinfo::set_process_affinity(pid, Some(cfg.pin_cpu)) {
                        failures.push(format!("pinning {}: {e}", server.kind.name()));
                    }
                }
                let r = load::run(&spec);
                if mode.pinned {
                    if let Err(e) = procinfo::set_process_affinity(pid, None) {
                        failures.push(format!("unpinning {}: {e}", server.kind.name()));
                    }
                }
                if r.error_count > 0 || r.unfinished > 0 {
                    failures.push(format!(
                        "{} at {} clients, round {}: {} errors, {} unfinished: {}",
                        server.kind.name(),
                        mode.label(),
                        round + 1,
                        r.error_count,
                        r.unfinished,
                        r.errors.join("; ")
                    ));
                }
                if let Err(e) = server.check_alive() {
                    // Record it, then carry on with a fresh instance so that the rest of
                    // the report still has figures for every server.
                    failures.push(format!(
                        "{e} (at {} clients, round {})",
                        mode.label(),
                        round + 1
                    ));
                    match restart(server.kind) {
                        Ok(s) => *server = s,
                        Err(e) => {
                            failures.push(format!("restarting {}: {e}", server.kind.name()));
                            return (samples, failures);
                        }
                    }
                    continue;
                }
                let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
                let s = Sample {
                    kind: server.kind,
                    mode: *mode,
                    round,
                    requests: r.requests,
                    rps: r.rps(),
                    p50_us: us(r.latencies.percentile(50.0)),
                    p99_us: us(r.latencies.percentile(99.0)),
                    max_us: us(r.latencies.max()),
                    gen_threads: r.threads,
                };
                progress(&s);
                samples.push(s);
            }
        }
    }
    (samples, failures)
}
