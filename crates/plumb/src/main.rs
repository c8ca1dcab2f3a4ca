//! The `plumb` command: parse, run, map the outcome to an exit code.

#![warn(clippy::unwrap_used)]

mod agent;
mod charts;
mod cli;
mod commands;
mod logging;
mod manage;
mod source;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
