// SPDX-License-Identifier: MIT OR Apache-2.0
//! `prhelper-gen OUTDIR`: writes the man pages and shell completions of `prhelper` and
//! `prhelper-client`, rendered from the clap definitions the binaries parse with (so they
//! cannot drift), into
//!
//! - `OUTDIR/man/prhelper.8`, `OUTDIR/man/prhelper-client.1`
//! - `OUTDIR/completions/bash/{prhelper,prhelper-client}`
//! - `OUTDIR/completions/zsh/{_prhelper,_prhelper-client}`
//! - `OUTDIR/completions/fish/{prhelper,prhelper-client}.fish`
//!
//! The man pages' generated parts (name, synopsis, description, options, version) come
//! from clap_mangen; the sections a sysadmin expects beyond those (socket activation,
//! multipath, security, files, exit status, examples, see also) are hand-written roff in
//! `packaging/man/*.roff`, inserted after the options.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

struct Page {
    command: clap::Command,
    section: &'static str,
    extra: &'static str,
}

fn pages() -> Vec<Page> {
    vec![
        Page {
            command: prhelper::daemon::cli::command(),
            section: "8",
            extra: include_str!("../../man/prhelper.8.roff"),
        },
        Page {
            command: prhelper::client_cli::command(),
            section: "1",
            extra: include_str!("../../man/prhelper-client.1.roff"),
        },
    ]
}

/// One man page: clap_mangen's sections, then ours. `after_help` (the `--help` epilogue)
/// is not rendered: the hand-written EXIT STATUS and NOTES sections say it in roff.
fn render_man(page: &Page, out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(page.command.clone())
        .section(page.section)
        .manual(if page.section == "8" {
            "System Administration"
        } else {
            "User Commands"
        })
        .source(format!("prhelper {}", env!("CARGO_PKG_VERSION")));
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(page.extra.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(path.parent().expect("path has a parent"))?;
    fs::write(path, bytes)
}

fn generate(outdir: &Path) -> io::Result<()> {
    for page in pages() {
        let name = page.command.get_name().to_string();
        let mut buf = Vec::new();
        render_man(&page, &mut buf)?;
        write(
            &outdir.join("man").join(format!("{name}.{}", page.section)),
            &buf,
        )?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let mut cmd = page.command.clone();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
            write(&outdir.join("completions").join(dir).join(file), &buf)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [outdir] = args.as_slice() else {
        eprintln!("usage: prhelper-gen OUTDIR");
        return ExitCode::from(2);
    };
    match generate(outdir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prhelper-gen: {}: {e}", outdir.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_every_section() {
        for page in pages() {
            let mut buf = Vec::new();
            render_man(&page, &mut buf).unwrap();
            let text = String::from_utf8(buf).unwrap();
            let name = page.command.get_name();
            for sh in [
                "NAME",
                "SYNOPSIS",
                "DESCRIPTION",
                "OPTIONS",
                "EXIT STATUS",
                "EXAMPLES",
                "SEE ALSO",
            ] {
                assert!(
                    text.contains(&format!(".SH {sh}")) || text.contains(&format!(".SH \"{sh}\"")),
                    "{name}: no {sh} section"
                );
            }
            // Every long option of the clap definition is in the page.
            for arg in page.command.get_arguments() {
                if let Some(long) = arg.get_long() {
                    assert!(
                        text.contains(&long.replace('-', "\\-")),
                        "{name}: --{long} missing"
                    );
                }
            }
        }
    }
}
