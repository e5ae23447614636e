// SPDX-License-Identifier: MIT OR Apache-2.0
//! Summaries, the target checklist, and the three outputs: terminal table, JSON, SVG.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::scale;
use crate::server::Kind;
use crate::stats::{median, min_max, spread_pct};
use crate::svg::{self, Series};
use crate::throughput::{Mode, Sample};

/// How the run was made.
pub struct Meta {
    pub smoke: bool,
    pub rounds: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub load_before: String,
    pub load_after: String,
    pub cpus: usize,
    pub kernel: String,
    pub nofile: u64,
    pub pin_cpu: usize,
}

/// One server at one mode, over the rounds.
#[derive(Clone, Debug, Default)]
pub struct KindSummary {
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub spread_pct: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rounds: usize,
}

#[derive(Clone, Debug)]
pub struct ModeSummary {
    pub mode: Mode,
    pub kinds: BTreeMap<Kind, KindSummary>,
    /// Medians of per-round requests/s ratios.
    pub ph_c: f64,
    pub ph_floor: f64,
    pub c_floor: f64,
    /// Medians of per-round p50 differences to the floor, µs.
    pub ph_added_us: f64,
    pub c_added_us: f64,
}

pub fn summarize(samples: &[Sample], modes: &[Mode]) -> Vec<ModeSummary> {
    let mut out = Vec::new();
    for mode in modes {
        let of = |k: Kind| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|s| s.kind == k && s.mode == *mode)
                .collect()
        };
        let mut kinds = BTreeMap::new();
        for k in Kind::ALL {
            let v = of(k);
            if v.is_empty() {
                continue;
            }
            let rps: Vec<f64> = v.iter().map(|s| s.rps).collect();
            let (lo, hi) = min_max(&rps);
            kinds.insert(
                k,
                KindSummary {
                    rps: median(&rps),
                    rps_min: lo,
                    rps_max: hi,
                    spread_pct: spread_pct(&rps),
                    p50_us: median(&v.iter().map(|s| s.p50_us).collect::<Vec<_>>()),
                    p99_us: median(&v.iter().map(|s| s.p99_us).collect::<Vec<_>>()),
                    rounds: v.len(),
                },
            );
        }
        // Per-round pairs.
        let per_round = |f: &dyn Fn(&Sample, &Sample) -> f64, a: Kind, b: Kind| -> f64 {
            let va = of(a);
            let vb = of(b);
            let r: Vec<f64> = va
                .iter()
                .filter_map(|x| vb.iter().find(|y| y.round == x.round).map(|y| f(x, y)))
                .collect();
            median(&r)
        };
        let ratio = |x: &Sample, y: &Sample| x.rps / y.rps;
        let added = |x: &Sample, y: &Sample| x.p50_us - y.p50_us;
        out.push(ModeSummary {
            mode: *mode,
            kinds,
            ph_c: per_round(&ratio, Kind::Prhelper, Kind::C),
            ph_floor: per_round(&ratio, Kind::Prhelper, Kind::Floor),
            c_floor: per_round(&ratio, Kind::C, Kind::Floor),
            ph_added_us: per_round(&added, Kind::Prhelper, Kind::Floor),
            c_added_us: per_round(&added, Kind::C, Kind::Floor),
        });
    }
    out
}

/// One line of the target checklist. `pass` is None when it could not be measured.
pub struct Target {
    pub name: String,
    pub measured: String,
    pub pass: Option<bool>,
}

fn t(name: impl Into<String>, measured: impl Into<String>, pass: Option<bool>) -> Target {
    Target {
        name: name.into(),
        measured: measured.into(),
        pass,
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

pub fn targets(modes: &[ModeSummary], scale: &[scale::Result]) -> Vec<Target> {
    let mut out = Vec::new();
    let sc = |k: Kind| scale.iter().find(|r| r.kind == k);
    if let Some(m) = modes.iter().find(|m| m.mode.pinned) {
        let pass = finite(m.ph_added_us)
            .zip(finite(m.c_added_us))
            .map(|(p, c)| p <= c / 2.0);
        out.push(t(
            "added p50 latency at 1 client pinned: prhelper-floor <= (C-floor)/2",
            format!(
                "{:.1} µs vs C {:.1} µs (limit {:.1})",
                m.ph_added_us,
                m.c_added_us,
                m.c_added_us / 2.0
            ),
            pass,
        ));
    }
    for m in modes.iter().filter(|m| !m.mode.pinned) {
        let need = if m.mode.clients >= 64 { 2.0 } else { 1.0 };
        out.push(t(
            format!(
                "throughput at {} clients >= {}x C",
                m.mode.clients, need as u32
            ),
            format!("prhelper/C = {:.2}", m.ph_c),
            finite(m.ph_c).map(|r| r >= need),
        ));
    }
    for m in modes {
        let f = m.kinds.get(&Kind::Floor).map_or(f64::NAN, |k| k.rps);
        let others = [Kind::C, Kind::Prhelper]
            .iter()
            .filter_map(|k| m.kinds.get(k).map(|s| s.rps))
            .fold(0.0, f64::max);
        out.push(t(
            format!(
                "[sanity] generator not the bottleneck at {}: floor faster than both helpers",
                m.mode.label()
            ),
            format!(
                "floor/C {:.2}, floor/prhelper {:.2}",
                1.0 / m.c_floor,
                1.0 / m.ph_floor
            ),
            finite(f).map(|f| f > others),
        ));
    }
    let ph = sc(Kind::Prhelper);
    let c = sc(Kind::C);
    let fl = sc(Kind::Floor);
    let top = |r: Option<&scale::Result>| r.and_then(|r| r.levels.last().cloned());
    if let Some(l) = top(ph) {
        let n = l.conns;
        out.push(t(
            format!("<= 4 KiB per idle connection at {n}"),
            format!("{:.0} B", l.bytes_per_conn),
            Some(!l.incomplete && l.bytes_per_conn <= 4096.0),
        ));
        out.push(t(
            format!("{n} idle connections opened within 2 s"),
            format!("{:.2} s", l.open_secs),
            Some(!l.incomplete && l.open_secs <= 2.0),
        ));
        out.push(t(
            format!("none of {n} connects refused"),
            format!("{} refused", l.refused),
            Some(l.refused == 0 && !l.incomplete),
        ));
        let floor_p50 = top(fl).map_or(f64::NAN, |f| f.fresh_p50_us);
        out.push(t(
            format!("fresh client's command with {n} idle held <= 3x floor's (p50)"),
            format!("{:.1} µs vs floor {:.1} µs", l.fresh_p50_us, floor_p50),
            finite(floor_p50).map(|f| l.fresh_p50_us <= 3.0 * f),
        ));
    }
    if let Some(p) = ph {
        out.push(t(
            format!("0 refused in a burst of {} non-blocking connects", p.burst),
            format!("{} refused", p.burst_refused),
            Some(p.burst_refused == 0),
        ));
        let c_rss = c.map_or(f64::NAN, |c| c.idle.rss_kib as f64);
        out.push(t(
            "idle RSS <= half of C helper's",
            format!("{} KiB vs C {} KiB", p.idle.rss_kib, c_rss),
            finite(c_rss).map(|c| (p.idle.rss_kib as f64) <= c / 2.0),
        ));
        out.push(t(
            "socket accepting within 5 ms of exec (median)",
            format!("{:.2} ms", p.exec_ms_median()),
            Some(p.exec_ms_median() <= 5.0),
        ));
    }
    out
}

fn cell(x: f64, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:.prec$}")
    } else {
        "-".into()
    }
}

fn kilo(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{:.1}k", x / 1000.0)
    }
}

/// The terminal report.
pub fn table(
    meta: &Meta,
    modes: &[ModeSummary],
    scale: &[scale::Result],
    targets: &[Target],
    failures: &[String],
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "prhelper host benchmark{}: PR IN READ KEYS on /dev/null (SG_IO -> ENOTTY -> CHECK CONDITION)",
        if meta.smoke { " [SMOKE: figures meaningless]" } else { "" }
    );
    let _ = writeln!(
        o,
        "{} CPUs, kernel {}; load average {} before, {} after; {} rounds x {:.1} s (+{:.1} s warm-up), interleaved floor/C/prhelper",
        meta.cpus, meta.kernel, meta.load_before, meta.load_after, meta.rounds, meta.duration_s, meta.warmup_s
    );
    let _ = writeln!(
        o,
        "\n1. Helper cost: requests/s (median over rounds, spread = (max-min)/median), p50/p99 latency µs (medians over rounds)"
    );
    let _ = writeln!(
        o,
        "{:<9} | {:>7} {:>4} {:>6} {:>7} | {:>7} {:>4} {:>6} {:>7} | {:>7} {:>4} {:>6} {:>7} | {:>5} {:>6} {:>6}",
        "clients",
        "floor/s", "spr%", "p50", "p99",
        "C/s", "spr%", "p50", "p99",
        "prh/s", "spr%", "p50", "p99",
        "prh/C", "prh/fl", "C/fl"
    );
    let _ = writeln!(o, "{}", "-".repeat(124));
    for m in modes {
        let mut line = format!("{:<9}", m.mode.label());
        for k in Kind::ALL {
            let s = m.kinds.get(&k).cloned().unwrap_or(KindSummary {
                rps: f64::NAN,
                spread_pct: f64::NAN,
                p50_us: f64::NAN,
                p99_us: f64::NAN,
                ..Default::default()
            });
            let _ = write!(
                line,
                " | {:>7} {:>4} {:>6} {:>7}",
                kilo(s.rps),
                cell(s.spread_pct, 0),
                cell(s.p50_us, 1),
                cell(s.p99_us, 1)
            );
        }
        let _ = write!(
            line,
            " | {:>5} {:>6} {:>6}",
            cell(m.ph_c, 2),
            cell(m.ph_floor, 2),
            cell(m.c_floor, 2)
        );
        let _ = writeln!(o, "{line}");
    }
    for m in modes.iter().filter(|m| m.mode.clients == 1) {
        let _ = writeln!(
            o,
            "added p50 over the floor at {}: prhelper {} µs, C {} µs",
            m.mode.label(),
            cell(m.ph_added_us, 1),
            cell(m.c_added_us, 1)
        );
    }
    let _ = writeln!(
        o,
        "(ratios are medians of per-round requests/s ratios; p99 at 64+ clients on few CPUs is scheduler noise)"
    );

    let _ = writeln!(o, "\n2. Scale (one server at a time)");
    let _ = writeln!(
        o,
        "{:<15} | {:>9} {:>9} {:>7} {:>5} {:>10}",
        "server", "exec->acc", "idle RSS", "threads", "fds", "burst ref."
    );
    for r in scale {
        let _ = writeln!(
            o,
            "{:<15} | {:>7.2}ms {:>6}KiB {:>7} {:>5} {:>6}/{}",
            r.kind.name(),
            r.exec_ms_median(),
            r.idle.rss_kib,
            r.idle.threads,
            r.idle.fds,
            r.burst_refused,
            r.burst
        );
    }
    let _ = writeln!(
        o,
        "\n{:<15} | {:>6} {:>7} {:>7} {:>8} {:>7} {:>6} {:>8} | {:>9} {:>8} {:>8} {:>8}",
        "server",
        "conns",
        "open s",
        "refused",
        "RSS KiB",
        "threads",
        "fds",
        "B/conn",
        "fresh 1st",
        "p50 µs",
        "p99 µs",
        "max µs"
    );
    for r in scale {
        for l in &r.levels {
            let _ = writeln!(
                o,
                "{:<15} | {:>6} {:>7.2} {:>7} {:>8} {:>7} {:>6} {:>8.0} | {:>9.1} {:>8.1} {:>8.1} {:>8.1}{}",
                r.kind.name(),
                l.opened,
                l.open_secs,
                l.refused,
                l.held.rss_kib,
                l.held.threads,
                l.held.fds,
                l.bytes_per_conn,
                l.fresh_first_us,
                l.fresh_p50_us,
                l.fresh_p99_us,
                l.fresh_max_us,
                if l.incomplete { "  (gave up: time limit)" } else { "" }
            );
        }
    }
    let _ = writeln!(
        o,
        "(B/conn = (RSS growth + 16 KiB kernel stack per added thread) / connections; opened sequentially, connect + handshake each)"
    );

    let _ = writeln!(o, "\nTargets (prhelper)");
    for tg in targets {
        let mark = match tg.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => " n/a",
        };
        let _ = writeln!(o, "  [{mark}] {}: {}", tg.name, tg.measured);
    }
    if !failures.is_empty() {
        let _ = writeln!(o, "\nFAILURES");
        for f in failures {
            let _ = writeln!(o, "  {f}");
        }
    }
    o
}

fn snap_json(s: &crate::procinfo::ProcSnapshot) -> Value {
    json!({"rss_kib": s.rss_kib, "threads": s.threads, "fds": s.fds})
}

pub fn to_json(
    meta: &Meta,
    samples: &[Sample],
    modes: &[ModeSummary],
    scale: &[scale::Result],
    targets: &[Target],
    failures: &[String],
) -> Value {
    let nan = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    json!({
        "meta": {
            "smoke": meta.smoke,
            "rounds": meta.rounds,
            "warmup_s": meta.warmup_s,
            "duration_s": meta.duration_s,
            "loadavg_before": meta.load_before,
            "loadavg_after": meta.load_after,
            "cpus": meta.cpus,
            "kernel": meta.kernel,
            "rlimit_nofile": meta.nofile,
            "pin_cpu": meta.pin_cpu,
        },
        "throughput": {
            "samples": samples.iter().map(|s| json!({
                "server": s.kind.name(),
                "clients": s.mode.clients,
                "pinned": s.mode.pinned,
                "round": s.round,
                "requests": s.requests,
                "rps": s.rps,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
                "max_us": s.max_us,
                "generator_threads": s.gen_threads,
            })).collect::<Vec<_>>(),
            "summary": modes.iter().map(|m| json!({
                "clients": m.mode.clients,
                "pinned": m.mode.pinned,
                "servers": m.kinds.iter().map(|(k, s)| (k.name().to_string(), json!({
                    "rps_median": nan(s.rps),
                    "rps_min": nan(s.rps_min),
                    "rps_max": nan(s.rps_max),
                    "spread_pct": nan(s.spread_pct),
                    "p50_us": nan(s.p50_us),
                    "p99_us": nan(s.p99_us),
                    "rounds": s.rounds,
                }))).collect::<serde_json::Map<_, _>>(),
                "ratio_prhelper_c": nan(m.ph_c),
                "ratio_prhelper_floor": nan(m.ph_floor),
                "ratio_c_floor": nan(m.c_floor),
                "added_p50_us_prhelper": nan(m.ph_added_us),
                "added_p50_us_c": nan(m.c_added_us),
            })).collect::<Vec<_>>(),
        },
        "scale": scale.iter().map(|r| json!({
            "server": r.kind.name(),
            "exec_to_accept_ms": r.exec_to_accept_ms,
            "exec_to_accept_ms_median": nan(r.exec_ms_median()),
            "idle": snap_json(&r.idle),
            "burst": r.burst,
            "burst_refused": r.burst_refused,
            "levels": r.levels.iter().map(|l| json!({
                "connections": l.conns,
                "opened": l.opened,
                "open_s": l.open_secs,
                "refused": l.refused,
                "incomplete": l.incomplete,
                "before": snap_json(&l.base),
                "held": snap_json(&l.held),
                "bytes_per_connection": l.bytes_per_conn,
                "fresh_first_us": l.fresh_first_us,
                "fresh_p50_us": l.fresh_p50_us,
                "fresh_p99_us": l.fresh_p99_us,
                "fresh_max_us": l.fresh_max_us,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({
            "target": t.name,
            "measured": t.measured,
            "pass": t.pass,
        })).collect::<Vec<_>>(),
        "failures": failures,
    })
}

fn color(k: Kind) -> &'static str {
    match k {
        Kind::Floor => "#7f7f7f",
        Kind::C => "#d62728",
        Kind::Prhelper => "#1f77b4",
    }
}

/// Write `throughput.svg` and `latency.svg` into `dir`.
pub fn write_charts(dir: &Path, modes: &[ModeSummary]) -> std::io::Result<()> {
    let unpinned: Vec<&ModeSummary> = modes.iter().filter(|m| !m.mode.pinned).collect();
    let xs: Vec<String> = unpinned.iter().map(|m| m.mode.label()).collect();
    let series: Vec<Series> = Kind::ALL
        .iter()
        .map(|&k| Series {
            name: k.name().into(),
            color: color(k),
            values: unpinned
                .iter()
                .map(|m| m.kinds.get(&k).map_or(f64::NAN, |s| s.rps))
                .collect(),
            ranges: unpinned
                .iter()
                .map(|m| m.kinds.get(&k).map(|s| (s.rps_min, s.rps_max)))
                .collect(),
        })
        .collect();
    std::fs::write(
        dir.join("throughput.svg"),
        svg::line_chart(
            "Requests/s against concurrent clients (median; whiskers: min-max over rounds)",
            "concurrent clients",
            "requests/s",
            &xs,
            &series,
        ),
    )?;
    let groups: Vec<String> = modes.iter().map(|m| m.mode.label()).collect();
    let series: Vec<Series> = Kind::ALL
        .iter()
        .map(|&k| Series {
            name: k.name().into(),
            color: color(k),
            values: modes
                .iter()
                .map(|m| m.kinds.get(&k).map_or(f64::NAN, |s| s.p50_us))
                .collect(),
            ranges: modes
                .iter()
                .map(|m| m.kinds.get(&k).map(|s| (s.p50_us, s.p99_us)))
                .collect(),
        })
        .collect();
    std::fs::write(
        dir.join("latency.svg"),
        svg::log_bar_chart(
            "Round-trip latency, p50 bars and p99 whiskers (µs, log scale)",
            "concurrent clients",
            "latency (µs)",
            &groups,
            &series,
        ),
    )
}
