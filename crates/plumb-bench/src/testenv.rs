//! The local control plane of `scripts/testenv`: found, or started for this run and stopped at
//! its end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::Client;
use tokio::process::Command;

/// The repository root (scripts/testenv lives there).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `export NAME=value` lines of `scripts/testenv env`, quotes removed.
pub fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let value = value.trim().trim_matches(['\'', '"']);
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The control plane the benchmark runs on.
pub struct ControlPlane {
    client: Client,
    envs: Vec<(String, String)>,
    started: bool,
}

impl ControlPlane {
    /// The running control plane of `scripts/testenv` (as `PLUMB_TESTENV_RUN` selects), or a
    /// new one if none answers `/readyz`. Asked of the API server rather than `testenv status`:
    /// the bench needs only a ready API server, and must not call `up` (which waits on a lock)
    /// for one that already serves.
    pub async fn find_or_start() -> anyhow::Result<Self> {
        if let Some(plane) = Self::running().await {
            return Ok(plane);
        }
        log!("starting the control plane");
        let status = testenv(&["up"])
            .status()
            .await
            .context("cannot run scripts/testenv up")?;
        if !status.success() {
            bail!("scripts/testenv up failed ({status})");
        }
        let (client, envs) = Self::connect().await?;
        Ok(Self {
            client,
            envs,
            started: true,
        })
    }

    async fn running() -> Option<Self> {
        let (client, envs) = Self::connect().await.ok()?;
        let ready = http::Request::get("/readyz").body(Vec::new()).ok()?;
        match tokio::time::timeout(Duration::from_secs(10), client.request_text(ready)).await {
            Ok(Ok(_)) => Some(Self {
                client,
                envs,
                started: false,
            }),
            _ => None,
        }
    }

    async fn connect() -> anyhow::Result<(Client, Vec<(String, String)>)> {
        let out = crate::process::run(&mut testenv(&["env"])).await?;
        let envs = parse_exports(&String::from_utf8_lossy(&out.stdout));
        let kubeconfig = envs
            .iter()
            .find(|(k, _)| k == "KUBECONFIG")
            .map(|(_, v)| PathBuf::from(v))
            .context("scripts/testenv env named no KUBECONFIG")?;
        let client = crate::kubeclient::client_for_kubeconfig(&kubeconfig).await?;
        Ok((client, envs))
    }

    /// A client of the API server.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The environment (`KUBECONFIG`) that points plumb and kubectl at this control plane.
    pub fn envs(&self) -> &[(String, String)] {
        &self.envs
    }

    /// A command run against this control plane.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Stops the control plane if this run started it.
    pub async fn finish(self) {
        if self.started {
            log!("stopping the control plane (this run started it)");
            if let Err(e) = testenv(&["down"]).status().await {
                log!("warning: scripts/testenv down: {e}");
            }
        }
    }
}

fn testenv(args: &[&str]) -> Command {
    let mut cmd = Command::new(root().join("scripts/testenv"));
    cmd.args(args).stdin(std::process::Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_parsed() {
        let out = "export KUBECONFIG=/tmp/run/kubeconfig\nnoise\nexport A='b c'\n";
        assert_eq!(
            parse_exports(out),
            vec![
                ("KUBECONFIG".into(), "/tmp/run/kubeconfig".into()),
                ("A".into(), "b c".into())
            ]
        );
    }
}
