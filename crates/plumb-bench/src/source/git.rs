//! The two sides of a fetch: plumb's request and the git command line of the baseline.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use plumb_source::{Credentials, GitRef, SourceRequest};
use plumb_testsupport::git::GitServers;

use super::history::PRINCIPAL;

/// Where a fetch goes: the URL plumb gets (with options) and the one the git baseline uses.
pub struct Transport<'a> {
    pub name: &'static str,
    pub plumb_url: String,
    pub git_url: String,
    servers: Option<&'a GitServers>,
}

impl<'a> Transport<'a> {
    pub fn file(origin: &Path) -> Self {
        let url = format!("file://{}", origin.display());
        Self {
            name: "file",
            plumb_url: url.clone(),
            git_url: url,
            servers: None,
        }
    }

    pub fn https(servers: &'a GitServers) -> Self {
        Self {
            name: "https",
            plumb_url: servers.https_url("bench"),
            git_url: servers.https_url_with_credentials(
                "bench",
                servers.username(),
                servers.password(),
            ),
            servers: Some(servers),
        }
    }

    pub fn request(&self) -> SourceRequest {
        let mut request = SourceRequest::new(&self.plumb_url, GitRef::Branch("main".into()));
        if let Some(servers) = self.servers {
            request.options.credentials = Credentials::Basic {
                username: servers.username().to_owned(),
                password: servers.password().to_owned().into(),
            };
            request.options.ca_file = Some(servers.ca_cert_path().to_owned());
        }
        request
    }

    pub fn git(&self, env: &GitEnv) -> Git {
        match self.servers {
            Some(servers) => Git { cmd: servers.git() },
            None => env.git(None),
        }
    }
}

/// git with an empty environment apart from `PATH` and a throwaway `HOME`, like plumb's.
pub struct GitEnv {
    vars: Vec<(OsString, OsString)>,
}

impl GitEnv {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let home = root.join("home");
        std::fs::create_dir_all(&home)?;
        let mut vars = vec![
            ("HOME".into(), home.into_os_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ];
        if let Some(path) = std::env::var_os("PATH") {
            vars.push(("PATH".into(), path));
        }
        Ok(Self { vars })
    }

    pub fn git(&self, git_dir: Option<&Path>) -> Git {
        let mut cmd = Command::new("git");
        cmd.env_clear().envs(self.vars.iter().cloned());
        if let Some(dir) = git_dir {
            cmd.arg("--git-dir").arg(dir);
        }
        cmd.args(["-c", "user.name=Bench", "-c"])
            .arg(format!("user.email={PRINCIPAL}"));
        Git { cmd }
    }
}

pub struct Git {
    pub cmd: Command,
}

impl Git {
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.cmd.args(args);
        self
    }

    pub fn run(self) -> anyhow::Result<()> {
        self.output_text().map(drop)
    }

    pub fn output_text(mut self) -> anyhow::Result<String> {
        let output = self
            .cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {:?}", self.cmd))?;
        if !output.status.success() {
            bail!(
                "{:?} failed ({}): {}",
                self.cmd.get_args().collect::<Vec<_>>(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}
