//! Command-line interface: argument parsing and dispatch onto the library crates.

use std::process::ExitCode;

use clap::Parser;

/// Plumb keeps Kubernetes clusters true to Git.
#[derive(Debug, Parser)]
#[command(name = "plumb", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

pub fn main() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
