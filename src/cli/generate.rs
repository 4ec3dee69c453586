//! `connector generate`: the man pages and shell completions, written from the command line's own clap
//! definitions when the package is built (scripts/build-deb.sh), so they say exactly what `--help` says.
//! It is for packagers, so it stays out of the admins' command line (`--help`, the pages, the completions):
//! `main` asks [`run_if_asked`] before parsing that.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use clap_complete::{Generator, Shell};
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::help;
use crate::build_info;

/// `connector generate ...`
#[derive(Debug, Parser)]
#[command(name = "connector generate", about = "Man pages and shell completions (for packaging).")]
struct Generate {
    #[command(subcommand)]
    command: GenerateCommand,
}

#[derive(Debug, clap::Subcommand)]
enum GenerateCommand {
    /// Write connector.1 and a page for each command (connector-sync.1, connector-mappings-check.1, ...).
    Man {
        /// The folder to write them to (it must exist).
        dir: PathBuf,
    },
    /// Write the completion script for SHELL, named as that shell's completion folder expects
    /// (bash: connector, zsh: _connector, fish: connector.fish).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
        /// The folder to write it to (it must exist).
        dir: PathBuf,
    },
}

/// Runs `connector generate ...` when that is the command line; `None` for every other one.
pub fn run_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let program = args.next()?;
    if args.next()? != "generate" {
        return None;
    }
    let generate = Generate::parse_from(std::iter::once(program).chain(args));
    let result = match generate.command {
        GenerateCommand::Man { dir } => man_pages(&dir),
        GenerateCommand::Completions { shell, dir } => completions(shell, &dir),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    })
}

/// The admins' command line, as the pages show it: no `help` pseudo-command (each page lists its options).
fn command() -> clap::Command {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn man_pages(dir: &Path) -> anyhow::Result<()> {
    let cmd = command();
    for sub in cmd.get_subcommands() {
        sub_pages(sub.clone(), dir)?;
    }
    // The footer of --help becomes sections of their own; one version line is enough for a page.
    let main = man(cmd.clone().after_help(None::<&str>).long_version(None::<&str>));
    let mut page = Vec::new();
    main.render_title(&mut page)?;
    main.render_name_section(&mut page)?;
    main.render_synopsis_section(&mut page)?;
    main.render_description_section(&mut page)?;
    main.render_options_section(&mut page)?;
    main.render_subcommands_section(&mut page)?;
    page.write_all(footer_sections(&cmd).render().as_bytes())?;
    main.render_version_section(&mut page)?;
    write_file(&dir.join(main.get_filename()), &page)
}

/// The page of each command under `cmd`, and of `cmd` itself.
fn sub_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands() {
        sub_pages(sub.clone(), dir)?;
    }
    let page = man(cmd);
    let mut text = Vec::new();
    page.render(&mut text)?;
    let mut see_also = Roff::new();
    see_also.control("SH", ["SEE ALSO"]).text([bold("connector"), roman("(1)")]);
    text.write_all(see_also.render().as_bytes())?;
    write_file(&dir.join(page.get_filename()), &text)
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .date(build_info::BUILD_DATE)
        .source(format!("york-connector {}", build_info::VERSION))
        .manual("York Hub connector")
}

/// EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO of connector(1), from the same tables as `--help`.
fn footer_sections(cmd: &clap::Command) -> Roff {
    fn entries(roff: &mut Roff, heading: &str, rows: &[(String, String)]) {
        roff.control("SH", [heading]);
        for (key, text) in rows {
            roff.control("TP", []).text([bold(key.as_str())]).text([roman(text.as_str())]);
        }
    }
    let mut roff = Roff::new();
    let owned = |rows: &[(&str, &str)]| rows.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect::<Vec<_>>();
    entries(&mut roff, "EXIT STATUS", &owned(help::EXIT_CODES));
    let mut environment = owned(help::ENVIRONMENT);
    for arg in cmd.get_arguments() {
        if let Some(var) = arg.get_env() {
            let option = arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
            environment.push((var.to_string_lossy().into_owned(), format!("the same as {option}")));
        }
    }
    entries(&mut roff, "ENVIRONMENT", &environment);
    entries(
        &mut roff,
        "FILES",
        &owned(&[
            (super::DEFAULT_CONFIG, "the configuration (a conffile of the Debian package)"),
            ("/etc/connector/mappings/", "the partners' mappings, a folder per partner"),
            ("/etc/connector/credentials/", "secrets, passed to the service by systemd (LoadCredential=)"),
            ("/var/lib/connector/", "the state: SQLite database (personal data), spool of partner API reads"),
        ]),
    );
    roff.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for sub in cmd.get_subcommands() {
        refs.extend([bold(sub.get_display_name().unwrap_or(sub.get_name()).to_string()), roman("(1), ")]);
    }
    refs.extend([bold("systemctl"), roman("(1), "), italic("/usr/share/doc/york-connector/README.md.gz")]);
    roff.text(refs);
    roff
}

fn completions(shell: Shell, dir: &Path) -> anyhow::Result<()> {
    let mut cmd = command();
    let name = cmd.get_name().to_string();
    // bash-completion looks a command's script up by the command's own name.
    let file = if shell == Shell::Bash { name.clone() } else { shell.file_name(&name) };
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut text);
    write_file(&dir.join(file), &text)
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
