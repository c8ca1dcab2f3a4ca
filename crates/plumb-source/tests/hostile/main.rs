//! Hostile Git content and verification bypasses (SECURITY.md): each test reproduces an attack
//! and checks that it is refused with an error naming the path or commit, and that nothing
//! happened meanwhile.

use plumb_source::verify::{self, FailureReason};
use plumb_source::{AllowedSigners, Error, VerifyMode, VerifyPolicy};
use plumb_testsupport::git::SshSigner;

type TestResult = anyhow::Result<()>;

fn ssh_policy(mode: VerifyMode, keys: &[&SshSigner]) -> anyhow::Result<VerifyPolicy> {
    let lines: Vec<String> = keys.iter().map(|k| k.allowed_signers_line()).collect();
    Ok(VerifyPolicy {
        mode,
        allowed_signers: AllowedSigners::parse(&lines.join("\n"))?,
        ..VerifyPolicy::default()
    })
}

fn rejection(err: &Error) -> &FailureReason {
    match err {
        Error::Verify(verify::Error::Rejected { reason, .. }) => reason,
        other => panic!("expected a rejection, got {other}"),
    }
}

mod openpgp;
mod provenance;
mod transport;
mod tree;
