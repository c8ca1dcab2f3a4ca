//! `plumb-bench`: benchmarks of Plumb on the local control plane (run it with `scripts/bench`).
//!
//! Not a test: nothing here asserts a timing. Each subcommand prints Markdown tables on stdout,
//! progress on stderr (`bench: ...`), and a one-line summary as its last line of stdout.

#![warn(clippy::unwrap_used)]

/// Progress on stderr, prefixed like the rest of the bench's output.
macro_rules! log {
    ($($arg:tt)*) => { eprintln!("bench: {}", format_args!($($arg)*)) };
}

mod agent;
mod apps;
mod cli;
mod cluster;
mod flux;
mod kubeclient;
mod metrics;
mod process;
mod source;
mod stats;
mod sync;
mod testenv;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
