//! The `connector` binary: parse arguments, set up logging, dispatch. Everything else lives in the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any thread starts: fewer arenas, less freed memory kept (crates/malloc-arenas says how much).
    malloc_arenas::cap_unless_set(malloc_arenas::DEFAULT_ARENAS);
    york_connector::ops::metrics::process_start();
    // Packaging's `connector generate` (man pages, completions) is not part of the admins' command line.
    if let Some(code) = york_connector::cli::generate::run_if_asked() {
        return code;
    }
    let cli = york_connector::cli::Cli::parse();
    york_connector::ops::logging::init(cli.log_format);
    york_connector::cli::run(cli)
}
