//! `plumb agent`: the long-running reconciler.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::cli::Global;

/// Arguments of `plumb agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {}

/// Runs the agent until it is stopped.
pub async fn run(_global: &Global, _args: &AgentArgs) -> Result<ExitCode> {
    anyhow::bail!("the agent is not wired yet")
}
