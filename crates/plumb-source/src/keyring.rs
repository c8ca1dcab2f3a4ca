//! OpenPGP public keys trusted to sign commits and tags.

use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

/// Errors reading a keyring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The armored text holds no valid public key.
    #[error("invalid OpenPGP keyring {origin}: {reason}")]
    Parse {
        /// Where the keys came from (a file name or `text`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The file cannot be read.
    #[error("cannot read OpenPGP keyring {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`enum@Error`] as default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Only a failed read may succeed on retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Read { .. })
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Parse { .. } => "keyring_parse",
            Error::Read { .. } => "keyring_read",
        }
    }
}

/// A set of OpenPGP public keys (primary keys with their subkeys and user ids).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

/// The key that made a good OpenPGP signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgpSigner {
    /// Fingerprint of the primary key, upper-case hex.
    pub fingerprint: String,
    /// Fingerprint of the (sub)key that signed, upper-case hex.
    pub signing_key: String,
    /// The user ids of the key (`Name <email>`).
    pub user_ids: Vec<String>,
}

impl PgpSigner {
    /// The first user id, or the fingerprint when the key has none.
    pub fn principal(&self) -> String {
        self.user_ids
            .first()
            .cloned()
            .unwrap_or_else(|| self.fingerprint.clone())
    }

    /// Whether a policy name designates this key: its fingerprint (case and spaces ignored),
    /// a user id, or the email inside a user id.
    pub fn matches(&self, name: &str) -> bool {
        let compact: String = name.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.eq_ignore_ascii_case(&self.fingerprint) {
            return true;
        }
        self.user_ids.iter().any(|uid| {
            uid == name
                || uid
                    .rsplit_once('<')
                    .and_then(|(_, rest)| rest.strip_suffix('>'))
                    .is_some_and(|email| email.eq_ignore_ascii_case(name))
        })
    }
}

impl Keyring {
    /// Parses one or more armored public key blocks (concatenated).
    pub fn from_armored(text: &str) -> Result<Self> {
        Self::parse(text, "text")
    }

    /// Reads and parses an armored keyring file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let parse_err = |reason: String| Error::Parse {
            origin: origin.to_owned(),
            reason,
        };
        let mut keys = Vec::new();
        // Each armored block is parsed on its own so several exported keys can simply be
        // concatenated.
        for block in armored_blocks(text) {
            let (iter, _) = SignedPublicKey::from_armor_many(block.as_bytes())
                .map_err(|e| parse_err(e.to_string()))?;
            for item in iter {
                let key = item.map_err(|e| parse_err(e.to_string()))?;
                key.verify_bindings()
                    .map_err(|e| parse_err(format!("key self-signature invalid: {e}")))?;
                keys.push(key);
            }
        }
        Ok(Self { keys })
    }

    /// Adds the keys of `other`.
    pub fn extend(&mut self, other: Keyring) {
        self.keys.extend(other.keys);
    }

    /// Whether the keyring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Upper-case hex fingerprints of the primary keys.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{:X}", k.primary_key.fingerprint()))
            .collect()
    }

    /// Verifies an armored detached signature over `payload` against every key and subkey.
    /// `Ok(None)` when no key in the ring made it (unknown key); `Err(reason)` when the
    /// signature does not parse.
    pub fn verify(
        &self,
        armored_signature: &[u8],
        payload: &[u8],
    ) -> std::result::Result<Option<PgpSigner>, String> {
        let text = std::str::from_utf8(armored_signature)
            .map_err(|_| "signature is not ASCII armor".to_owned())?;
        let (signature, _) = DetachedSignature::from_string(text)
            .map_err(|e| format!("malformed OpenPGP signature: {e}"))?;
        for key in &self.keys {
            let signer = |signing: String| PgpSigner {
                fingerprint: format!("{:X}", key.primary_key.fingerprint()),
                signing_key: signing,
                user_ids: key
                    .details
                    .users
                    .iter()
                    .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                    .collect(),
            };
            if signature.verify(&key.primary_key, payload).is_ok() {
                return Ok(Some(signer(format!("{:X}", key.primary_key.fingerprint()))));
            }
            for sub in &key.public_subkeys {
                if signature.verify(&sub.key, payload).is_ok() {
                    return Ok(Some(signer(format!("{:X}", sub.key.fingerprint()))));
                }
            }
        }
        Ok(None)
    }
}

/// Splits text into `-----BEGIN PGP PUBLIC KEY BLOCK-----` ... `-----END ...-----` blocks.
fn armored_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("-----BEGIN PGP") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line.trim_end());
            block.push('\n');
            if line.trim_start().starts_with("-----END PGP") {
                blocks.extend(current.take());
            }
        }
    }
    if blocks.is_empty() && !text.trim().is_empty() {
        // Let the parser report what is wrong.
        blocks.push(text.to_owned());
    }
    blocks
}
