//! The `martmap` binary: parses the command line, runs one subcommand and
//! turns its outcome into output and an exit code.
//!
//! Exit codes: 0 success; 1 invalid input (a mapping, catalog or options
//! file with problems); 2 runtime failure (I/O, database, broker).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Invalid) => ExitCode::from(1),
        Err(error) => {
            eprintln!("martmap: {error:#}");
            ExitCode::from(2)
        }
    }
}
