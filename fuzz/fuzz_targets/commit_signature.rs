//! Arbitrary bytes as a raw commit object, taken apart the way `verify::check` does
//! (`CommitRef::from_bytes` for the committer time, `CommitRefIter::signature` for the
//! signature and the signed payload) and handed to `verify::verify_signature` with a policy
//! trusting one SSH key and one OpenPGP key, the ones that signed the seeds.
//!
//! The split is gix's, called inline in `verify::check_commit`; plumb-source has no public
//! function for it, so this target repeats those calls.

#![no_main]

use std::sync::OnceLock;

use gix::objs::{CommitRef, CommitRefIter};
use libfuzzer_sys::fuzz_target;
use plumb_source::verify::{Verdict, VerifyMode, VerifyPolicy, verify_signature};
use plumb_source::{AllowedSigners, Keyring};

const SSH_KEY: &str = include_str!("ssh_ed25519.pub");
const PGP_KEY: &str = include_str!("pgp_public_key.asc");

fn policy() -> &'static VerifyPolicy {
    static POLICY: OnceLock<VerifyPolicy> = OnceLock::new();
    POLICY.get_or_init(|| VerifyPolicy {
        mode: VerifyMode::Head,
        allowed_signers: AllowedSigners::parse(&format!(
            "fuzz@example.com namespaces=\"git\" {}",
            SSH_KEY.trim()
        ))
        .expect("the fuzz SSH key parses"),
        keyring: Keyring::from_armored(PGP_KEY).expect("the fuzz OpenPGP key parses"),
        paths: Default::default(),
    })
}

fuzz_target!(|data: &[u8]| {
    let kind = gix::hash::Kind::Sha1;
    // `check_commit` refuses what does not parse before looking for a signature; the split
    // is fuzzed on every input anyway, since it is a separate parser.
    let time = CommitRef::from_bytes(data, kind)
        .ok()
        .and_then(|c| c.committer().ok().and_then(|c| c.time().ok()))
        .map_or(0, |t| t.seconds);
    let Ok(Some((signature, signed))) = CommitRefIter::signature(data, kind) else {
        return;
    };
    let payload = signed.to_bstring();
    // The signature header is not part of what was signed.
    assert!(payload.len() < data.len());
    let verdict = verify_signature(signature.as_ref(), &payload, time, policy());
    if let Verdict::Passed(signer) = &verdict {
        assert!(!signer.fingerprint.is_empty());
    }
});
