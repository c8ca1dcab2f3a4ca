//! Kubernetes helpers for tests (written next).
