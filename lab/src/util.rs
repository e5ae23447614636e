// SPDX-License-Identifier: MIT OR Apache-2.0
//! Small helpers shared by the lab: running commands, polling, file access
//! with useful error messages.

use crate::Result;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status, or -1 when killed by a signal.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout and stderr together, for assertions and messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// A multi-line description for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!("`{}` exited with {}", self.cmdline, self.status);
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                let _ = write!(s, "\n  {name}:");
                for line in text.trim_end().lines() {
                    let _ = write!(s, "\n    {line}");
                }
            }
        }
        s
    }

    /// Ok if the command exited 0, else an error describing it.
    pub fn ok(self) -> Result<Output> {
        if self.status == 0 {
            Ok(self)
        } else {
            Err(self.describe())
        }
    }
}

/// Run `program` with `args`, wait, and capture its output. Fails only when
/// the program cannot be started; check [`Output::status`] (or call
/// [`Output::ok`]) for the outcome.
pub fn run<S: AsRef<str>>(program: &str, args: &[S]) -> Result<Output> {
    let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let cmdline = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(program)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run `{cmdline}`: {e}"))?;
    Ok(Output {
        cmdline,
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run a command and require exit status 0.
pub fn run_ok<S: AsRef<str>>(program: &str, args: &[S]) -> Result<Output> {
    run(program, args)?.ok()
}

/// Call `probe` every 20 ms until it returns `Some`, an error, or `timeout`
/// passes (then fail, naming `what`).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write `contents` to `path` in a single write(2), as configfs and sysfs
/// attributes require.
pub fn write_attr(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|e| format!("cannot write {:?} to {}: {e}", contents, path.display()))
}

/// Read a small text file (an attribute), without the trailing newline.
pub fn read_attr(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `mkdir -p`, with the path in the error.
pub fn mkdir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// The lab's build directory (kernel, initramfs), `target/lab` of the
/// project. `lab/boot.sh` passes it as `PRHELPER_LAB_DIR`.
pub fn lab_dir() -> PathBuf {
    match std::env::var_os("PRHELPER_LAB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => project_root().join("target/lab"),
    }
}

/// The project's root directory (`PRHELPER_LAB_ROOT`, else the current one).
pub fn project_root() -> PathBuf {
    match std::env::var_os("PRHELPER_LAB_ROOT") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    }
}

/// A directory of the built binaries (`target/debug` unless
/// `PRHELPER_LAB_PROFILE` names another profile directory).
pub fn target_bin_dir() -> PathBuf {
    let profile = std::env::var("PRHELPER_LAB_PROFILE").unwrap_or_else(|_| "debug".into());
    project_root().join("target").join(profile)
}

/// True when running inside the lab VM (its /init leaves /run/lab/nested).
pub fn in_lab_vm() -> bool {
    Path::new("/run/lab/nested").exists()
}

/// True when this is a nested guest started from the lab VM.
pub fn is_nested() -> bool {
    read_attr(Path::new("/run/lab/nested")).is_ok_and(|s| s == "1")
}

/// A scratch directory for one test, on the VM's tmpfs; emptied first.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = PathBuf::from("/tmp/lab").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clean {}: {e}", dir.display()))?;
    }
    mkdir_all(&dir)?;
    Ok(dir)
}

/// Fail unless `haystack` contains `needle`, quoting the haystack.
pub fn expect_contains(what: &str, haystack: &str, needle: &str) -> Result<()> {
    if haystack.contains(needle) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {needle:?} in:\n{}",
            indent(haystack.trim_end())
        ))
    }
}

/// Indent every line by four spaces (for nested output in messages).
pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Run `program ARGS DEV` (no assertion on the outcome): sg3_utils' and
/// multipath-tools' way of naming the device last.
pub fn run_on(program: &str, args: &[&str], dev: &Path) -> Result<Output> {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push(dev.to_string_lossy().into_owned());
    run(program, &all)
}

/// `Ok` when a teardown collected no errors, else all of them in one message.
pub fn all_ok(errors: Vec<String>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Run one named step of a case: the step is printed as it starts, and its error is
/// prefixed by its name, so that a failure says which step failed.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("  step: {name}");
    f().map_err(|e| format!("step \"{name}\": {e}"))
}

/// The exit status of `child` if it has exited (reaped), `None` while it runs.
pub fn exited(child: &mut std::process::Child) -> Result<Option<std::process::ExitStatus>> {
    child.try_wait().map_err(|e| e.to_string())
}

/// The seed of a randomised case: `PRHELPER_LAB_SEED` when set (to replay a run), else
/// from the clock. Always odd (xorshift needs a non-zero state).
pub fn seed_from_env() -> Result<u64> {
    let seed = match std::env::var("PRHELPER_LAB_SEED") {
        Ok(s) => s
            .parse()
            .map_err(|e| format!("PRHELPER_LAB_SEED={s}: {e}"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    Ok(seed | 1)
}

/// xorshift64*: small, seedable, good enough to pick commands and kill times.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
