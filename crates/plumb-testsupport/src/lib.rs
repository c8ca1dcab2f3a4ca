//! Test support: real Git servers (https, ssh), repositories, signed commits, temporary namespaces.
//!
//! Dev-only: every other crate uses this under `[dev-dependencies]`.

pub mod bench;
pub mod git;
pub mod kube;
