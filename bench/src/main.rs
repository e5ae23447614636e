// SPDX-License-Identifier: MIT OR Apache-2.0
//! `cargo run --release -p prhelper-bench -- [--smoke]`: see bench/README.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use prhelper_bench::server::{Binaries, Kind, Server};
use prhelper_bench::throughput::{self, Mode};
use prhelper_bench::{floor, procinfo, report, scale};

const USAGE: &str = "\
usage: prhelper-bench [--smoke] [--rounds N] [--duration SECS] [--threads N]
                      [--out DIR] [--prhelper PATH] [--c-helper PATH]
                      [--prhelper-arg ARG]... [--skip-throughput] [--skip-scale]
                      [--only throughput|scale] [--clients LIST]

  --smoke            every part, a few seconds in total (CI); figures meaningless
  --rounds N         interleaved rounds per concurrency (default 5)
  --duration SECS    measurement per round and server (default 1.0)
  --threads N        load generator threads for multi-client runs (default 2)
  --out DIR          where report.json and the SVG charts go (default target/bench)
  --prhelper PATH    prhelper binary (default: built by cargo next to this one)
  --prhelper-arg ARG extra argument for prhelper (repeatable), e.g. --seccomp=off
  --c-helper PATH    C helper (default /usr/bin/qemu-pr-helper)
  --only PART        run only `throughput` (part 1) or `scale` (part 2)
  --clients LIST     part 1 concurrencies, comma-separated, `1p` for 1 pinned
                     (default 1p,1,8,64,256), e.g. --clients 64,256

prhelper-bench --drive SOCKET CLIENTS SECONDS   load a running helper by hand";

struct Opts {
    smoke: bool,
    rounds: Option<usize>,
    duration: Option<f64>,
    threads: usize,
    out: Option<PathBuf>,
    prhelper: Option<PathBuf>,
    prhelper_args: Vec<String>,
    c_helper: PathBuf,
    skip_throughput: bool,
    skip_scale: bool,
    modes: Option<Vec<Mode>>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        smoke: false,
        rounds: None,
        duration: None,
        threads: 2,
        out: None,
        prhelper: None,
        prhelper_args: Vec::new(),
        c_helper: PathBuf::from("/usr/bin/qemu-pr-helper"),
        skip_throughput: false,
        skip_scale: false,
        modes: None,
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        let mut val = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .map(|v| v.to_string_lossy().into_owned())
        };
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--smoke" => o.smoke = true,
            "--rounds" => o.rounds = Some(num(val("--rounds")?)? as usize),
            "--duration" => o.duration = Some(num(val("--duration")?)?),
            "--threads" => o.threads = num(val("--threads")?)? as usize,
            "--out" => o.out = Some(val("--out")?.into()),
            "--prhelper" => o.prhelper = Some(val("--prhelper")?.into()),
            "--prhelper-arg" => o.prhelper_args.push(val("--prhelper-arg")?),
            "--c-helper" => o.c_helper = val("--c-helper")?.into(),
            "--skip-throughput" => o.skip_throughput = true,
            "--skip-scale" => o.skip_scale = true,
            "--only" => match val("--only")?.as_str() {
                "throughput" => o.skip_scale = true,
                "scale" => o.skip_throughput = true,
                v => return Err(format!("--only {v}: expected throughput or scale")),
            },
            "--clients" => o.modes = Some(parse_modes(&val("--clients")?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// `1p,1,8,64`: client counts, `1p` (or `Np`) meaning pinned to one CPU.
fn parse_modes(list: &str) -> Result<Vec<Mode>, String> {
    list.split(',')
        .map(|item| {
            let item = item.trim();
            let (n, pinned) = match item.strip_suffix('p') {
                Some(n) => (n, true),
                None => (item, false),
            };
            let clients = n
                .parse::<usize>()
                .ok()
                .filter(|&c| c > 0 && (!pinned || c == 1))
                .ok_or_else(|| format!("--clients: bad entry {item:?}"))?;
            Ok(Mode { clients, pinned })
        })
        .collect()
}

/// The prhelper binary: given, or built by cargo next to this executable.
fn prhelper_binary(given: Option<PathBuf>, exe: &Path) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = exe.parent().ok_or("no directory for this executable")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        // `cargo run -p prhelper-bench` builds the library only; build the daemon too
        // (a no-op when it is up to date), with the same profile as this binary.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no workspace")?;
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace)
            .args(["build", "-q", "-p", "prhelper", "--bin", "prhelper"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("building prhelper failed: {st}"));
        }
    }
    let p = dir.join("prhelper");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found; pass --prhelper", p.display()))
    }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == "--floor-server" {
        return match floor::serve(Path::new(&argv[2])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if argv.len() == 5 && argv[1] == "--drive" {
        return drive(&argv[2..]);
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("prhelper-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--drive SOCKET CLIENTS SECONDS`: load an already running helper (READ KEYS on
/// /dev/null) and print requests/s and latency; for profiling a server by hand.
fn drive(args: &[std::ffi::OsString]) -> ExitCode {
    let socket = Path::new(&args[0]);
    let (Some(clients), Some(secs)) = (
        args[1].to_str().and_then(|s| s.parse::<usize>().ok()),
        args[2].to_str().and_then(|s| s.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: prhelper-bench --drive SOCKET CLIENTS SECONDS");
        return ExitCode::from(2);
    };
    let _ = procinfo::raise_nofile();
    let spec =
        prhelper_bench::load::LoadSpec::dev_null(socket, clients, Duration::from_secs_f64(secs));
    let r = prhelper_bench::load::run(&spec);
    println!(
        "{} clients: {:.0} req/s, p50 {:?}, p99 {:?}, {} errors {:?}",
        clients,
        r.rps(),
        r.latencies.percentile(50.0),
        r.latencies.percentile(99.0),
        r.error_count,
        r.errors
    );
    if r.error_count > 0 || r.unfinished > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Ok(false): the run completed but something failed (reported).
fn run(opts: Opts) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bins = Binaries {
        bench: exe.clone(),
        c_helper: opts.c_helper.clone(),
        prhelper: prhelper_binary(opts.prhelper.clone(), &exe)?,
        prhelper_args: opts.prhelper_args.clone(),
    };
    if !bins.c_helper.exists() {
        return Err(format!(
            "{} not found (apt-get install qemu-utils provides qemu-pr-helper)",
            bins.c_helper.display()
        ));
    }
    let out = match &opts.out {
        Some(o) => o.clone(),
        None => exe
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("bench"))
            .ok_or("cannot find the target directory")?,
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let work = std::env::temp_dir().join(format!("prhelper-bench.{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // 10,000 idle connections: this process holds one end of each, and the servers
    // (which inherit this limit) the other.
    let nofile = procinfo::raise_nofile().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let smoke = opts.smoke;
    let rounds = opts.rounds.unwrap_or(if smoke { 1 } else { 5 });
    let duration = Duration::from_secs_f64(opts.duration.unwrap_or(if smoke { 0.15 } else { 1.0 }));
    let warmup = if smoke {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(200)
    };
    let pin_cpu = cpus.saturating_sub(1);
    let modes = opts.modes.clone().unwrap_or_else(|| {
        let mut modes = vec![Mode {
            clients: 1,
            pinned: true,
        }];
        modes.extend([1, 8, 64, 256].map(|clients| Mode {
            clients,
            pinned: false,
        }));
        modes
    });
    let load_before = procinfo::loadavg();
    eprintln!(
        "load average {load_before}; prhelper {}; C helper {}; output {}",
        bins.prhelper.display(),
        bins.c_helper.display(),
        out.display()
    );
    let mut failures = Vec::new();

    let mut samples = Vec::new();
    if !opts.skip_throughput {
        let mut servers = Vec::new();
        for k in Kind::ALL {
            match Server::start(k, &bins, &work) {
                Ok(s) => servers.push(s),
                Err(e) => return Err(format!("starting {}: {e}", k.name())),
            }
        }
        let cfg = throughput::Config {
            modes: modes.clone(),
            rounds,
            warmup,
            duration,
            pin_cpu,
            threads: opts.threads,
        };
        let restart = |k: Kind| Server::start(k, &bins, &work);
        let (s, f) = throughput::run(&mut servers, &cfg, restart, |s| {
            eprintln!(
                "  {:<15} {:>9} clients, round {}: {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs",
                s.kind.name(),
                s.mode.label(),
                s.round + 1,
                s.rps,
                s.p50_us,
                s.p99_us
            );
        });
        samples = s;
        failures.extend(f);
        for s in servers {
            let _ = s.stop(Duration::from_secs(5));
        }
    }

    let mut scale_results = Vec::new();
    if !opts.skip_scale {
        let cfg = if smoke {
            scale::Config {
                starts: 2,
                levels: vec![100, 500],
                burst: 256,
                fresh_commands: 20,
                open_limit: Duration::from_secs(20),
            }
        } else {
            scale::Config {
                starts: 7,
                levels: vec![1000, 10_000],
                burst: 256,
                fresh_commands: 1000,
                open_limit: Duration::from_secs(120),
            }
        };
        for k in Kind::ALL {
            let mut log = |m: &str| eprintln!("  {m}");
            match scale::run(k, &bins, &work, &cfg, &mut log) {
                Ok(r) => scale_results.push(r),
                Err(e) => failures.push(format!("scale test of {}: {e}", k.name())),
            }
        }
    }

    let meta = report::Meta {
        smoke,
        rounds,
        warmup_s: warmup.as_secs_f64(),
        duration_s: duration.as_secs_f64(),
        load_before,
        load_after: procinfo::loadavg(),
        cpus,
        kernel: kernel(),
        nofile,
        pin_cpu,
    };
    let summaries = report::summarize(&samples, &modes);
    let targets = report::targets(&summaries, &scale_results);
    let table = report::table(&meta, &summaries, &scale_results, &targets, &failures);
    println!("\n{table}");
    let json = report::to_json(
        &meta,
        &samples,
        &summaries,
        &scale_results,
        &targets,
        &failures,
    );
    let write = |name: &str, data: String| {
        std::fs::write(out.join(name), data).map_err(|e| format!("{name}: {e}"))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())? + "\n",
    )?;
    write("report.txt", table)?;
    report::write_charts(&out, &summaries).map_err(|e| format!("charts: {e}"))?;
    // Keep the servers' logs with the report.
    let logs = out.join("logs");
    let _ = std::fs::create_dir_all(&logs);
    if let Ok(rd) = std::fs::read_dir(&work) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(&p, logs.join(e.file_name()));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "wrote {}/{{report.json,report.txt,throughput.svg,latency.svg,logs/}}",
        out.display()
    );
    Ok(failures.is_empty())
}
