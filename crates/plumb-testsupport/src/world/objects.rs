//! Builders of Plumb's GitSource and Sync manifests (JSON: this crate cannot use plumb-agent's
//! types). `.json()` gives the manifest; [`World::create`](super::World::create) creates it.

use serde_json::{Map, Value, json};

use super::{API_VERSION, RECEIVER_ANNOTATION, SIGNERS};

/// Merges the keys of `extra` (an object) into `spec`, replacing those it names.
fn merge(spec: &mut Value, extra: Value) {
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
}

/// A GitSource manifest; see [`World::git_source`](super::World::git_source).
#[derive(Clone, Debug)]
pub struct GitSourceBuilder {
    name: String,
    annotations: Map<String, Value>,
    spec: Value,
}

impl GitSourceBuilder {
    pub(super) fn new(name: &str, url: &str, insecure: bool) -> Self {
        let mut spec = json!({ "url": url, "ref": { "branch": "main" }, "interval": "1h" });
        if insecure {
            merge(&mut spec, json!({ "insecure": true }));
        }
        Self {
            name: name.to_owned(),
            annotations: Map::new(),
            spec,
        }
    }

    /// Verifies commits (`mode`: `tip`, `range`, ...) against the world's allowed signers.
    pub fn verify(mut self, mode: &str) -> Self {
        merge(
            &mut self.spec,
            json!({ "verify": { "mode": mode, "allowedSignersRef": { "name": SIGNERS.0, "key": SIGNERS.1 } } }),
        );
        self
    }

    /// Annotates it for webhook receiver `receiver`.
    pub fn receiver(self, receiver: &str) -> Self {
        self.annotate(RECEIVER_ANNOTATION, receiver)
    }

    /// Adds annotation `key: value`.
    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.into());
        self
    }

    /// Sets the keys of `extra` (an object) in the spec.
    pub fn spec(mut self, extra: Value) -> Self {
        merge(&mut self.spec, extra);
        self
    }

    /// The manifest.
    pub fn json(&self) -> Value {
        json!({
            "apiVersion": API_VERSION, "kind": "GitSource",
            "metadata": { "name": self.name, "annotations": self.annotations },
            "spec": self.spec
        })
    }
}

impl From<GitSourceBuilder> for Value {
    fn from(b: GitSourceBuilder) -> Value {
        b.json()
    }
}

/// A Sync manifest; see [`World::sync`](super::World::sync).
#[derive(Clone, Debug)]
pub struct SyncBuilder {
    name: String,
    spec: Value,
}

impl SyncBuilder {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            spec: json!({
                "sourceRef": { "name": "repo" }, "path": "app", "prune": true,
                "interval": "1h", "drift": "correct"
            }),
        }
    }

    /// `drift`: `correct`, `detect`, ...
    pub fn drift(self, mode: &str) -> Self {
        self.spec(json!({ "drift": mode }))
    }

    /// `interval`, e.g. `2s`.
    pub fn interval(self, interval: &str) -> Self {
        self.spec(json!({ "interval": interval }))
    }

    /// Sets the keys of `extra` (an object) in the spec.
    pub fn spec(mut self, extra: Value) -> Self {
        merge(&mut self.spec, extra);
        self
    }

    /// Replaces the whole spec by `spec`.
    pub fn with_spec(mut self, spec: Value) -> Self {
        self.spec = spec;
        self
    }

    /// The manifest.
    pub fn json(&self) -> Value {
        json!({
            "apiVersion": API_VERSION, "kind": "Sync",
            "metadata": { "name": self.name },
            "spec": self.spec
        })
    }
}

impl From<SyncBuilder> for Value {
    fn from(b: SyncBuilder) -> Value {
        b.json()
    }
}
