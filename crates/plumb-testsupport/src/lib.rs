//! Test support: real Git servers (https, ssh), repositories, signed commits, temporary namespaces,
//! one HTTP client, and the agent tests' world (namespace, CRDs, signed repository, agents).
//!
//! Dev-only: every other crate uses this under `[dev-dependencies]`.

pub mod bench;
pub mod charts;
pub mod git;
pub mod http;
pub mod kube;
pub mod world;
