//! OpenPGP public keys trusted to sign commits and tags.

use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType, SubpacketData};
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

/// The outcome of checking a signature against a [`Keyring`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgpVerdict {
    /// No key of the ring made the signature.
    UnknownKey,
    /// A key of the ring made it, and that key may sign now.
    Valid(PgpSigner),
    /// A key of the ring made it, but it is revoked, expired or not a signing key.
    NotValid {
        /// The key.
        signer: PgpSigner,
        /// Why it may not sign.
        reason: String,
    },
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

    /// Verifies an armored detached signature over `payload` against every key and subkey,
    /// and whether the key that made it may sign at `now` (Unix seconds): neither it nor its
    /// primary key revoked or expired, and a subkey carrying the signing flag. The time is
    /// that of the check, not the signature's own creation time, which the signer chooses.
    /// `Err(reason)` when the signature does not parse.
    pub fn verify(
        &self,
        armored_signature: &[u8],
        payload: &[u8],
        now: i64,
    ) -> std::result::Result<PgpVerdict, String> {
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
            let judged = |signer: PgpSigner, problem: Option<String>| match problem {
                None => PgpVerdict::Valid(signer),
                Some(reason) => PgpVerdict::NotValid { signer, reason },
            };
            if signature.verify(&key.primary_key, payload).is_ok() {
                let signer = signer(format!("{:X}", key.primary_key.fingerprint()));
                return Ok(judged(signer, signing_problem(key, None, now)));
            }
            for sub in &key.public_subkeys {
                if signature.verify(&sub.key, payload).is_ok() {
                    let signer = signer(format!("{:X}", sub.key.fingerprint()));
                    return Ok(judged(signer, signing_problem(key, Some(sub), now)));
                }
            }
        }
        Ok(PgpVerdict::UnknownKey)
    }
}

/// The newest of `sigs` of the given types (by creation time).
fn newest<'a>(
    sigs: impl Iterator<Item = &'a Signature>,
    types: &[SignatureType],
) -> Option<&'a Signature> {
    sigs.filter(|s| s.typ().is_some_and(|t| types.contains(&t)))
        .max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or_default())
}

/// Whether `sig` carries a key flags subpacket at all (absent flags put no restriction on a
/// primary key, as gpg reads them).
fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    })
}

fn expired(created: u32, sig: &Signature, now: i64) -> Option<String> {
    let lifetime = sig.key_expiration_time()?.as_secs();
    if lifetime == 0 {
        return None;
    }
    let expires = i64::from(created) + i64::from(lifetime);
    (now >= expires).then(|| {
        let when = jiff::Timestamp::from_second(expires)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| expires.to_string());
        format!("expired at {when}")
    })
}

/// Why the primary key of `key` (and `sub`, when it made the signature) may not sign at
/// `now`, if anything.
fn signing_problem(
    key: &SignedPublicKey,
    sub: Option<&SignedPublicSubKey>,
    now: i64,
) -> Option<String> {
    let fingerprint = format!("{:X}", key.primary_key.fingerprint());
    if !key.details.revocation_signatures.is_empty() {
        return Some(format!("OpenPGP key {fingerprint} is revoked"));
    }
    let self_sigs = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(key.details.direct_signatures.iter());
    let self_sig = newest(
        self_sigs,
        &[
            SignatureType::CertGeneric,
            SignatureType::CertPersona,
            SignatureType::CertCasual,
            SignatureType::CertPositive,
            SignatureType::Key,
        ],
    );
    if let Some(sig) = self_sig
        && let Some(why) = expired(key.primary_key.created_at().as_secs(), sig, now)
    {
        return Some(format!("OpenPGP key {fingerprint} {why}"));
    }
    match sub {
        None => {
            if let Some(sig) = self_sig
                && has_key_flags(sig)
                && !sig.key_flags().sign()
            {
                return Some(format!(
                    "OpenPGP key {fingerprint} is not marked for signing"
                ));
            }
            None
        }
        Some(sub) => {
            let sub_fp = format!("{:X}", sub.key.fingerprint());
            if sub
                .signatures
                .iter()
                .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
            {
                return Some(format!("OpenPGP subkey {sub_fp} is revoked"));
            }
            let Some(binding) = newest(sub.signatures.iter(), &[SignatureType::SubkeyBinding])
            else {
                return Some(format!("OpenPGP subkey {sub_fp} has no binding signature"));
            };
            if !binding.key_flags().sign() {
                return Some(format!("OpenPGP subkey {sub_fp} is not a signing subkey"));
            }
            expired(sub.key.created_at().as_secs(), binding, now)
                .map(|why| format!("OpenPGP subkey {sub_fp} {why}"))
        }
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

#[cfg(test)]
mod tests {
    use pgp::composed::{KeyType, SecretKeyParamsBuilder, SignedSecretKey, SubkeyParamsBuilder};
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::types::Password;
    use rand08::SeedableRng as _;

    use super::*;

    fn generate(rng: &mut rand08::rngs::StdRng) -> SignedSecretKey {
        SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(false)
            .primary_user_id("Cert Only <cert@plumb.test>".into())
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::Ed25519Legacy)
                    .can_sign(false)
                    .can_authenticate(true)
                    .build()
                    .expect("subkey parameters"),
            )
            .build()
            .expect("key parameters")
            .generate(rng)
            .expect("key generation")
    }

    #[test]
    fn keys_without_the_signing_flag_cannot_sign() {
        let mut rng = rand08::rngs::StdRng::seed_from_u64(7);
        let secret = generate(&mut rng);
        let public = SignedPublicKey::from(secret.clone());
        let armored = public
            .to_armored_string(Default::default())
            .expect("armored key");
        let keyring = Keyring::from_armored(&armored).expect("keyring");
        let payload = b"tree 0123\n";
        let by_primary = DetachedSignature::sign_binary_data(
            &mut rng,
            &secret.primary_key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            &payload[..],
        )
        .expect("signature");
        let by_auth_subkey = DetachedSignature::sign_binary_data(
            &mut rng,
            &secret.secret_subkeys[0].key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            &payload[..],
        )
        .expect("signature");
        for (sig, expected) in [
            (by_primary, "not marked for signing"),
            (by_auth_subkey, "not a signing subkey"),
        ] {
            let text = sig.to_armored_string(Default::default()).expect("armor");
            match keyring.verify(text.as_bytes(), payload, 1_900_000_000) {
                Ok(PgpVerdict::NotValid { reason, .. }) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
