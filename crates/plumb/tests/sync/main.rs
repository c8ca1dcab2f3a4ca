//! End-to-end tests of `plumb sync` and `plumb diff` against the real control plane.
//! Each test works in namespaces of its own.
//!
//! One test binary: what is applied, and what is refused or kept safe.

mod apply;
mod charts;
mod helm;
mod phases;
mod safety;

use std::path::Path;
use std::process::Output;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};
use plumb_testsupport::kube::{TestNamespace, client};
use serde_json::{Value, json};
use tempfile::TempDir;

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

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn sync_json(dir: &Path, name: &str, ns: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec![
        "sync",
        dir.to_str().unwrap(),
        "--name",
        name,
        "-n",
        ns,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = plumb(&args);
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, value)
}

/// The change reported for the object `Kind/name`.
fn change_of(report: &Value, object: &str) -> Value {
    let (kind, name) = object.split_once('/').unwrap();
    report["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {report}"))
        .iter()
        .find(|c| c["object"]["kind"] == kind && c["object"]["name"] == name)
        .unwrap_or_else(|| panic!("{object} not in {report:#}"))
        .clone()
}

/// The action reported for the object `Kind/name`.
fn action_of(report: &Value, object: &str) -> String {
    change_of(report, object)["action"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn deployment(name: &str, replicas: u32, extra_pod_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{extra_pod_spec}      containers:
      - name: app
        image: nginx:1.27
"
    )
}

async fn setup(prefix: &str) -> (Client, TestNamespace, TempDir) {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, prefix).await.unwrap();
    (client, ns, tempfile::tempdir().unwrap())
}
