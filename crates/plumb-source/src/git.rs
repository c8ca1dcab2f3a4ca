//! Running the `git` CLI hardened: no user or system configuration, no hooks, no credential
//! helpers, no prompts, only https/ssh/file transports, secrets only in the environment of
//! the child (never argv), a timeout, and killed when dropped.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use tempfile::TempDir;

use crate::fetch::{Credentials, Error, FetchOptions};

/// Placed where a secret appeared in git's output.
const REDACTED: &str = "[REDACTED]";

/// Answers git's username and password prompts from the environment, so neither the
/// command line nor the URL ever holds them, and only for the configured host: git names the
/// URL in its prompt (`Password for 'https://user@host:port': `), so a prompt for any other
/// authority (after a redirect, say) gets no answer.
const ASKPASS: &str = r#"#!/bin/sh
url=${1#*\'}
url=${url%\'*}
rest=${url#*://}
authority=${rest%%/*}
authority=${authority##*@}
authority=$(printf '%s' "$authority" | tr '[:upper:]' '[:lower:]')
if [ "$authority" != "$PLUMB_GIT_AUTHORITY" ]; then
  echo "plumb: not answering a credential prompt for $authority" >&2
  exit 1
fi
case "$1" in
  Username*) printf '%s\n' "$PLUMB_GIT_USERNAME" ;;
  Password*) printf '%s\n' "$PLUMB_GIT_PASSWORD" ;;
  *) exit 1 ;;
esac
"#;

/// The `host[:port]` of a URL as git writes it in credential prompts, lower-cased.
pub(crate) fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    authority.to_ascii_lowercase()
}

/// A configured way to run git for one source: its own empty `HOME` (removed on drop).
pub(crate) struct Git {
    home: TempDir,
    env: Vec<(OsString, OsString)>,
    secrets: Vec<String>,
    timeout: Duration,
    url: String,
    /// `-c` settings on top of the fixed hardening.
    settings: Vec<&'static str>,
}

/// Quotes `s` for the POSIX shell that runs `GIT_SSH_COMMAND`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Git {
    pub(crate) fn new(url: &str, options: &FetchOptions) -> Result<Self, Error> {
        let home = tempfile::Builder::new()
            .prefix("plumb-git-home-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "a temporary HOME for git".into(),
                source,
            })?;
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), home.path().into()),
            ("XDG_CONFIG_HOME".into(), home.path().join(".config").into()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            (
                "GIT_ALLOW_PROTOCOL".into(),
                if options.allow_insecure_http {
                    "https:ssh:file:http".into()
                } else {
                    "https:ssh:file".into()
                },
            ),
            ("LC_ALL".into(), "C".into()),
        ];
        let mut secrets = Vec::new();
        let (key, known_hosts) = match &options.credentials {
            Credentials::Ssh {
                private_key,
                known_hosts,
            } => (Some(private_key.as_path()), Some(known_hosts.as_path())),
            _ => (None, None),
        };
        // Always set, so even a URL without ssh credentials never uses the machine's ssh
        // configuration, agent or known hosts.
        let mut ssh = String::from(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
             -o GlobalKnownHostsFile=/dev/null -o PasswordAuthentication=no",
        );
        ssh.push_str(&format!(
            " -o UserKnownHostsFile={}",
            shell_quote(&known_hosts.map_or("/dev/null".into(), |p| p.to_string_lossy()))
        ));
        match key {
            Some(key) => ssh.push_str(&format!(" -i {}", shell_quote(&key.to_string_lossy()))),
            None => ssh.push_str(" -o IdentityFile=none"),
        }
        env.push(("GIT_SSH_COMMAND".into(), ssh.into()));
        env.push(("GIT_SSH_VARIANT".into(), "ssh".into()));
        if let Some(ca) = &options.ca_file {
            env.push(("GIT_SSL_CAINFO".into(), ca.into()));
        }
        match &options.credentials {
            Credentials::Basic { username, password } => {
                let script = home.path().join("askpass.sh");
                write_executable(&script, ASKPASS)?;
                env.push(("GIT_ASKPASS".into(), script.into()));
                env.push(("PLUMB_GIT_AUTHORITY".into(), authority(url).into()));
                env.push(("PLUMB_GIT_USERNAME".into(), username.into()));
                env.push(("PLUMB_GIT_PASSWORD".into(), password.expose_secret().into()));
                secrets.push(password.expose_secret().to_owned());
            }
            Credentials::Bearer { token } => {
                env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
                env.push(("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()));
                env.push((
                    "GIT_CONFIG_VALUE_0".into(),
                    format!("Authorization: Bearer {}", token.expose_secret()).into(),
                ));
                secrets.push(token.expose_secret().to_owned());
            }
            Credentials::None | Credentials::Ssh { .. } => {}
        }
        secrets.retain(|s| !s.is_empty());
        let mut settings = Vec::new();
        if options.allow_insecure_http {
            settings.push("protocol.http.allow=always");
        }
        // git follows redirects of the first request to any host; with credentials that would
        // hand a token (sent as a header) to whoever the server redirects to.
        if matches!(
            options.credentials,
            Credentials::Basic { .. } | Credentials::Bearer { .. }
        ) {
            settings.push("http.followRedirects=false");
        }
        Ok(Self {
            settings,
            home,
            env,
            secrets,
            timeout: options.timeout,
            url: url.to_owned(),
        })
    }

    /// Replaces every secret in `text`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), REDACTED);
        }
        out
    }

    /// Runs `git [-C git_dir] <hardening> args` and returns stdout; on failure an error
    /// classified from stderr, with secrets removed.
    pub(crate) async fn run(
        &self,
        action: &str,
        git_dir: Option<&Path>,
        args: &[&str],
    ) -> Result<String, Error> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = git_dir {
            cmd.arg("--git-dir").arg(dir);
        }
        for setting in [
            "core.hooksPath=/dev/null",
            "credential.helper=",
            "core.fsmonitor=false",
            "protocol.allow=never",
            "protocol.https.allow=always",
            "protocol.ssh.allow=always",
            "protocol.file.allow=always",
            "gc.auto=0",
            "maintenance.auto=false",
            "submodule.recurse=false",
            // Check every received object; trees git itself would never write (duplicate
            // entries, `.`, `..`, `.git` names, full paths) fail the fetch.
            "transfer.fsckObjects=true",
            "fetch.fsck.hasDot=error",
            "fetch.fsck.hasDotdot=error",
            "fetch.fsck.hasDotgit=error",
            "fetch.fsck.fullPathname=error",
            "fetch.fsck.emptyName=error",
            "fetch.fsck.nullSha1=error",
        ]
        .iter()
        .chain(&self.settings)
        {
            cmd.arg("-c").arg(setting);
        }
        cmd.args(args);
        let child = cmd.spawn().map_err(|source| Error::Io {
            what: "git (is it installed?)".into(),
            source,
        })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(|source| Error::Io {
                what: format!("git ({action})"),
                source,
            })?,
            Err(_) => {
                return Err(Error::Timeout {
                    action: action.to_owned(),
                    url: self.url.clone(),
                    after: self.timeout,
                });
            }
        };
        if !output.status.success() {
            let stderr = self.redact(String::from_utf8_lossy(&output.stderr).trim());
            return Err(Error::classify(action, &self.url, stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn write_executable(path: &Path, content: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| Error::Io {
        what: path.display().to_string(),
        source,
    };
    std::fs::write(path, content).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn askpass(prompt: &str, authority: &str) -> (bool, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("askpass.sh");
        write_executable(&script, ASKPASS).expect("script");
        let out = std::process::Command::new(&script)
            .arg(prompt)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PLUMB_GIT_AUTHORITY", authority)
            .env("PLUMB_GIT_USERNAME", "git")
            .env("PLUMB_GIT_PASSWORD", "s3cret")
            .output()
            .expect("askpass runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn askpass_answers_only_for_the_configured_host() {
        let here = authority("https://git.example.com:8443/org/repo.git");
        assert_eq!(here, "git.example.com:8443");
        assert_eq!(
            askpass("Password for 'https://git@git.example.com:8443': ", &here),
            (true, "s3cret\n".into())
        );
        assert_eq!(
            askpass("Username for 'https://GIT.example.com:8443': ", &here),
            (true, "git\n".into())
        );
        for elsewhere in [
            "Password for 'https://git@evil.example:8443': ",
            "Password for 'https://git@git.example.com': ",
            "Password for 'https://git.example.com:8443@evil.example': ",
            "Enter passphrase for key '/x': ",
        ] {
            let (ok, out) = askpass(elsewhere, &here);
            assert!(!ok && out.is_empty(), "{elsewhere}: {out}");
        }
    }
}
