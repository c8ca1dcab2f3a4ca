//! Commands that manage the agent's resources: install, bootstrap, create, get, reconcile,
//! suspend, resume, history, tree, events.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::cli::Global;

/// Agent resource management commands.
#[derive(Debug, Subcommand)]
pub enum ManageCommand {}

/// Runs one management command.
pub async fn run(_global: &Global, command: ManageCommand) -> Result<ExitCode> {
    match command {}
}
