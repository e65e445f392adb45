//! The `martmap` binary: parses the command line, runs one subcommand and
//! turns its outcome into output and an exit code.
//!
//! Exit codes: 0 success; 1 invalid input (a mapping, catalog or options
//! file with problems); 2 runtime failure (I/O, database, broker).

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Parsing events into JSON values allocates and frees many small objects;
/// mimalloc does that markedly faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Logs go to standard error; MARTMAP_LOG filters them (e.g. `info`,
    // `martmap=debug`). Warnings and errors show by default.
    let filter = tracing_subscriber::EnvFilter::try_from_env("MARTMAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().init(),
    }
    match cli::run(args) {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Invalid) => ExitCode::from(1),
        Err(error) => {
            eprintln!("martmap: {error:#}");
            // A schema change refused is the input's problem, not a failure.
            match error.downcast_ref::<martmap::sink::SinkError>() {
                Some(martmap::sink::SinkError::SchemaRefused(_)) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}
