//! End-to-end tests of the agent management commands (`install`, `create`, `get`, `reconcile`,
//! `suspend`, `resume`, `history`, `tree`, `events`) against the real control plane. No agent
//! runs here: where a command waits for the agent, the test plays the agent's part by writing
//! the status the agent would write.
//!
//! One test binary: a module per group of commands.

mod create;
mod install;
mod reconcile;
mod status;

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use plumb_agent::api::{
    ChartSource, DriftMode, GitSource, RECONCILE_REQUEST_ANNOTATION, Sync, VerifyMode,
};
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::{Value, json};

/// Runs the plumb binary.
fn plumb(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("plumb runs")
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs plumb and insists on success.
fn ok(args: &[&str]) -> String {
    let out = plumb(args);
    assert!(
        out.status.success(),
        "plumb {args:?} failed:\n{}",
        text(&out)
    );
    stdout(&out)
}

/// The YAML documents of a multi-document text, empty ones left out.
fn documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).expect("valid YAML");
    docs.into_iter().filter(Value::is_object).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among {} documents", docs.len()))
}

/// Installs the CRDs (idempotent; every cluster test may call it, also concurrently).
fn ensure_crds() {
    ok(&["install", "--crds-only"]);
}

/// Creates GitSource `web` and Sync `web` in `ns` with the CLI.
fn create_pair(ns: &str) {
    ok(&[
        "create",
        "source",
        "web",
        "--url",
        "https://git.example.com/web.git",
        "--branch",
        "main",
        "--verify-keyring-ref",
        "Secret/keys/pubring.asc",
        "-n",
        ns,
    ]);
    ok(&[
        "create", "sync", "web", "--source", "web", "--path", "apps/web", "--prune", "-n", ns,
    ]);
}

fn ready_condition(status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}
