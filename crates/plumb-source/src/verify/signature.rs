//! Verifying one armored signature (SSH or OpenPGP) against the trusted signers.

use crate::keyring::PgpVerdict;
use crate::signers::AllowedSigners;

use super::{FailureReason, SignatureKind, Signer, Verdict, VerifyPolicy};

/// The SSH signature namespace git uses.
const GIT_NAMESPACE: &str = "git";

/// Verifies an armored signature over `payload` made at `time` (Unix seconds).
pub fn verify_signature(
    signature: &[u8],
    payload: &[u8],
    time: i64,
    policy: &VerifyPolicy,
) -> Verdict {
    let trimmed = signature.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        verify_ssh(trimmed, payload, time, &policy.allowed_signers)
    } else if trimmed.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
        match policy.keyring.verify(trimmed, payload, now()) {
            Err(detail) => Verdict::Rejected(FailureReason::Malformed { detail }),
            Ok(PgpVerdict::UnknownKey) => Verdict::Rejected(FailureReason::UnknownKey {
                key: "(OpenPGP signature by a key not in the keyring)".into(),
            }),
            Ok(PgpVerdict::NotValid { signer, reason }) => {
                Verdict::Rejected(FailureReason::SignerNotValid {
                    principal: signer.principal(),
                    detail: reason,
                })
            }
            Ok(PgpVerdict::Valid(signer)) => Verdict::Passed(Signer {
                principal: signer.principal(),
                fingerprint: signer.fingerprint,
                kind: SignatureKind::Pgp,
                identities: signer.user_ids,
            }),
        }
    } else {
        Verdict::Rejected(FailureReason::UnsupportedFormat)
    }
}

/// The current time in Unix seconds.
fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn verify_ssh(signature: &[u8], payload: &[u8], time: i64, allowed: &AllowedSigners) -> Verdict {
    let sig = match ssh_key::SshSig::from_pem(signature) {
        Ok(sig) => sig,
        Err(e) => {
            return Verdict::Rejected(FailureReason::Malformed {
                detail: e.to_string(),
            });
        }
    };
    let key_data = sig.public_key();
    let fingerprint = key_data.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    let entries: Vec<_> = allowed.for_key(key_data).collect();
    if entries.is_empty() {
        return Verdict::Rejected(FailureReason::UnknownKey { key: fingerprint });
    }
    let key = ssh_key::PublicKey::from(key_data.clone());
    if key.verify(GIT_NAMESPACE, payload, &sig).is_err() {
        return Verdict::Rejected(FailureReason::BadSignature { key: fingerprint });
    }
    let mut last_problem = None;
    let mut principals = Vec::new();
    for entry in entries {
        if !entry.allows_namespace(GIT_NAMESPACE) {
            last_problem = Some((
                entry.principal(),
                format!("namespace git not allowed (line {})", entry.line),
            ));
            continue;
        }
        if let Err(detail) = entry.check_time(time) {
            last_problem = Some((entry.principal(), detail));
            continue;
        }
        principals.extend(entry.principals.iter().cloned());
    }
    if principals.is_empty() {
        let (principal, detail) = last_problem.unwrap_or_default();
        return Verdict::Rejected(FailureReason::SignerNotValid { principal, detail });
    }
    Verdict::Passed(Signer {
        principal: principals.join(","),
        fingerprint,
        kind: SignatureKind::Ssh,
        identities: principals,
    })
}
