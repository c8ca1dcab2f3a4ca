//! Renders a directory of manifests (plain YAML, Kustomize) safely.
