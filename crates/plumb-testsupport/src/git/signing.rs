//! Keys that sign commits and tags: SSH (`gpg.format=ssh`) and OpenPGP (gpg).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use super::cmd::{run, run_stdout};

/// How [`WorkTree::commit`](super::WorkTree::commit) and [`WorkTree::tag`](super::WorkTree::tag)
/// sign what they create.
#[derive(Clone, Debug, Default)]
pub enum Signing {
    /// No signature.
    #[default]
    None,
    /// An SSH signature (`gpg.format=ssh`).
    Ssh(SshSigner),
    /// An OpenPGP signature made by gpg.
    Gpg(GpgSigner),
}

impl Signing {
    /// Whether this produces a signature.
    pub fn is_signed(&self) -> bool {
        !matches!(self, Signing::None)
    }

    /// `git -c` settings that make git sign (or not sign) with this key.
    pub(crate) fn git_config(&self) -> Vec<String> {
        match self {
            Signing::None => vec!["commit.gpgSign=false".into(), "tag.gpgSign=false".into()],
            Signing::Ssh(signer) => vec![
                "gpg.format=ssh".into(),
                "gpg.ssh.program=ssh-keygen".into(),
                format!("user.signingKey={}", signer.private_key_path().display()),
            ],
            Signing::Gpg(signer) => vec![
                "gpg.format=openpgp".into(),
                "gpg.program=gpg".into(),
                format!("user.signingKey={}", signer.fingerprint()),
            ],
        }
    }

    /// Environment the signing program needs.
    pub(crate) fn envs(&self) -> Vec<(OsString, OsString)> {
        match self {
            Signing::Gpg(signer) => vec![("GNUPGHOME".into(), signer.gnupg_home().into())],
            Signing::None | Signing::Ssh(_) => Vec::new(),
        }
    }
}

/// The algorithm of a generated SSH signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ssh-rsa`, 3072 bits (signatures use rsa-sha2-512).
    Rsa,
}

/// A freshly generated, passphrase-less SSH key that signs commits and tags.
///
/// Cloning is cheap and shares the key; the key file is deleted when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct SshSigner {
    inner: Arc<SshSignerInner>,
}

#[derive(Debug)]
struct SshSignerInner {
    _dir: TempDir,
    key_type: KeyType,
    private_key: PathBuf,
    public_key: String,
    principal: String,
}

impl SshSigner {
    /// Generates a key with `ssh-keygen`. `principal` is the identity an `allowed_signers` file
    /// maps to this key (usually an email address).
    pub fn generate(key_type: KeyType, principal: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("plumb-ssh-signer-")
            .tempdir()
            .context("cannot create a temporary directory for an SSH signing key")?;
        let private_key = dir.path().join("signing_key");
        let mut keygen = Command::new("ssh-keygen");
        keygen
            .args(["-q", "-N", "", "-C", principal, "-f"])
            .arg(&private_key);
        match key_type {
            KeyType::Ed25519 => keygen.args(["-t", "ed25519"]),
            KeyType::Rsa => keygen.args(["-t", "rsa", "-b", "3072"]),
        };
        run(&mut keygen).context("cannot generate an SSH signing key")?;
        let public_path = private_key.with_extension("pub");
        let public_key = std::fs::read_to_string(&public_path)
            .with_context(|| format!("cannot read {}", public_path.display()))?
            .trim_end()
            .to_owned();
        Ok(Self {
            inner: Arc::new(SshSignerInner {
                _dir: dir,
                key_type,
                private_key,
                public_key,
                principal: principal.to_owned(),
            }),
        })
    }

    /// The algorithm of the key.
    pub fn key_type(&self) -> KeyType {
        self.inner.key_type
    }

    /// The private key file (mode 0600, no passphrase).
    pub fn private_key_path(&self) -> &Path {
        &self.inner.private_key
    }

    /// The public key as one OpenSSH line: `ssh-ed25519 AAAA... principal`.
    pub fn public_key(&self) -> &str {
        &self.inner.public_key
    }

    /// The principal given to [`SshSigner::generate`].
    pub fn principal(&self) -> &str {
        &self.inner.principal
    }

    /// A line for an `allowed_signers` file (`gpg.ssh.allowedSignersFile`) trusting this key
    /// for git signatures: `principal namespaces="git" ssh-ed25519 AAAA...`.
    pub fn allowed_signers_line(&self) -> String {
        let mut key = self.inner.public_key.split_whitespace();
        let algorithm = key.next().unwrap_or_default();
        let blob = key.next().unwrap_or_default();
        format!(
            "{} namespaces=\"git\" {algorithm} {blob}",
            self.inner.principal
        )
    }
}

/// A freshly generated, passphrase-less OpenPGP key (ed25519, sign only) in its own `GNUPGHOME`.
///
/// Cloning is cheap and shares the keyring; when the last clone is dropped the keyring's
/// gpg-agent is stopped and the directory deleted.
#[derive(Clone, Debug)]
pub struct GpgSigner {
    inner: Arc<GpgSignerInner>,
}

#[derive(Debug)]
struct GpgSignerInner {
    home: TempDir,
    fingerprint: String,
    public_key_armored: String,
    user_id: String,
}

impl Drop for GpgSignerInner {
    fn drop(&mut self) {
        // Signing started a gpg-agent for this GNUPGHOME; it would outlive the test.
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .env("GNUPGHOME", self.home.path())
            .output();
    }
}

impl GpgSigner {
    /// Generates a key for the user id `name <email>` with `gpg --quick-gen-key`, without any
    /// passphrase or prompt.
    pub fn generate(name: &str, email: &str) -> anyhow::Result<Self> {
        // Short path: gpg-agent puts its socket in GNUPGHOME and socket paths are limited.
        let home = tempfile::Builder::new()
            .prefix("plumb-gpg-")
            .tempdir()
            .context("cannot create a temporary GNUPGHOME")?;
        let user_id = format!("{name} <{email}>");
        let gpg = |args: &[&str]| {
            let mut cmd = Command::new("gpg");
            cmd.env("GNUPGHOME", home.path())
                .args(["--batch", "--no-tty", "--pinentry-mode", "loopback"])
                .args(["--passphrase", ""])
                .args(args);
            cmd
        };
        run(&mut gpg(&[
            "--quick-gen-key",
            &user_id,
            "ed25519",
            "sign",
            "never",
        ]))
        .context("cannot generate an OpenPGP key")?;
        let listing = run_stdout(&mut gpg(&["--with-colons", "--list-secret-keys", &user_id]))?;
        let Some(fingerprint) = listing
            .lines()
            .find(|line| line.starts_with("fpr:"))
            .and_then(|line| line.split(':').nth(9))
            .map(str::to_owned)
        else {
            bail!("gpg listed no fingerprint for {user_id}:\n{listing}");
        };
        let public_key_armored = run_stdout(&mut gpg(&["--armor", "--export", &fingerprint]))?;
        Ok(Self {
            inner: Arc::new(GpgSignerInner {
                home,
                fingerprint,
                public_key_armored,
                user_id,
            }),
        })
    }

    /// The key's fingerprint, 40 upper-case hex digits.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The ASCII-armored public key (`-----BEGIN PGP PUBLIC KEY BLOCK-----`...).
    pub fn public_key_armored(&self) -> &str {
        &self.inner.public_key_armored
    }

    /// The user id, `name <email>`.
    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    /// The `GNUPGHOME` holding the secret key. Verifiers should rather import
    /// [`GpgSigner::public_key_armored`] into a keyring of their own.
    pub fn gnupg_home(&self) -> &Path {
        self.inner.home.path()
    }
}
