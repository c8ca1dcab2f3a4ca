//! Golden-file tests for plan and diff: `testdata/{plan,diff}/<case>/` hold the inputs and the
//! expected output. Run with `PLUMB_BLESS=1` to rewrite the expected files after an intended
//! behaviour change (and review the git diff).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use plumb_core::{
    Inventory, Manifest, ObjectKey, Phase, PlanOptions, SourceLocation, SyncId, is_owned_by, plan,
    unified_diff,
};
use serde_json::Value;

fn testdata(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(kind);
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    cases
}

/// Splits a multi-document YAML file; returns (start line, value) for non-empty documents.
fn docs(path: &Path) -> Vec<(usize, Value)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut start = 1;
    let mut buf = String::new();
    let mut flush = |buf: &mut String, start: usize| {
        if buf
            .lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            out.push((start, serde_saphyr::from_str::<Value>(buf).unwrap()));
        }
        buf.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if line == "---" {
            flush(&mut buf, start);
            start = i + 2;
        } else {
            buf.push_str(line);
            buf.push('\n');
        }
    }
    flush(&mut buf, start);
    out
}

fn check(case: &Path, file: &str, actual: &str) {
    let path = case.join(file);
    if std::env::var_os("PLUMB_BLESS").is_some() {
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual,
        expected,
        "{} differs; actual output:\n{actual}",
        path.display()
    );
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    #[serde(default)]
    prune: bool,
    #[serde(default)]
    allow_empty: bool,
    #[serde(default)]
    upgrade: bool,
}

#[test]
fn plan_golden() {
    let sync = SyncId::new("plumb-system", "apps");
    for case in testdata("plan") {
        let desired: Vec<Manifest> = docs(&case.join("desired.yaml"))
            .into_iter()
            .enumerate()
            .map(|(i, (line, v))| {
                let src = SourceLocation {
                    file: "desired.yaml".into(),
                    line,
                    document: i,
                };
                Manifest::from_value(v, Some(src)).unwrap()
            })
            .collect();
        let live: BTreeMap<ObjectKey, Value> = docs(&case.join("live.yaml"))
            .into_iter()
            .map(|(_, v)| (ObjectKey::from_object(&v), v))
            .collect();
        let inventory = match fs::read_to_string(case.join("inventory.json")) {
            Ok(t) => Inventory::from_json(&t).unwrap(),
            Err(_) => Inventory::default(),
        };
        let o: CaseOptions = docs(&case.join("options.yaml"))
            .pop()
            .map(|(_, v)| serde_json::from_value(v).unwrap())
            .unwrap_or(CaseOptions {
                prune: false,
                allow_empty: false,
                upgrade: false,
            });
        let opts = PlanOptions {
            sync: sync.clone(),
            prune: o.prune,
            allow_empty: o.allow_empty,
            adopt: false,
            own: true,
            upgrade: o.upgrade,
        };
        let out = match plan(desired, &live, &inventory, &opts) {
            Err(e) => format!("error: {e}\n"),
            Ok(p) => {
                let mut out = String::new();
                for step in &p.steps {
                    // A plain revision (one main wave 0, no hooks) prints as before phases.
                    let prefix = if !p.is_phased() && step.phase == Phase::Main && step.wave == 0 {
                        String::new()
                    } else {
                        format!("{} wave {}: ", step.phase, step.wave)
                    };
                    for (stage, ms) in &step.stages {
                        out.push_str(&format!("{prefix}apply {stage}:\n"));
                        for m in ms {
                            assert!(is_owned_by(&m.object, &sync), "{} not marked", m.key());
                            out.push_str(&format!("  {}\n", m.key()));
                        }
                    }
                    if !step.hooks.is_empty() {
                        out.push_str(&format!("{prefix}hooks:\n"));
                    }
                    for h in &step.hooks {
                        assert!(!is_owned_by(&h.manifest.object, &sync), "hook marked");
                        let policies: Vec<String> = h
                            .hook
                            .delete_policies
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        out.push_str(&format!(
                            "  {} (delete: {})\n",
                            plumb_core::phases::display_object(&h.manifest),
                            policies.join(",")
                        ));
                    }
                }
                out.push_str("prune:\n");
                for e in &p.prune {
                    out.push_str(&format!("  {} ({})\n", e.key, e.api_version));
                }
                out.push_str("prune skipped:\n");
                for (e, why) in &p.prune_skipped {
                    out.push_str(&format!("  {}: {why}\n", e.key));
                }
                if !p.not_run.is_empty() {
                    out.push_str("not run:\n");
                }
                for (m, why) in &p.not_run {
                    out.push_str(&format!(
                        "  {}: {why}\n",
                        plumb_core::phases::display_object(m)
                    ));
                }
                out.push_str("new inventory:\n");
                for e in &p.new_inventory.entries {
                    out.push_str(&format!("  {}\n", e.key));
                }
                out
            }
        };
        check(&case, "expected.txt", &out);
    }
}

#[test]
fn diff_golden() {
    for case in testdata("diff") {
        let live = docs(&case.join("live.yaml")).pop().map(|(_, v)| v);
        let desired = docs(&case.join("desired.yaml")).pop().map(|(_, v)| v);
        let key = ObjectKey::from_object(desired.as_ref().or(live.as_ref()).unwrap());
        let out = unified_diff(&key, live.as_ref(), desired.as_ref(), false)
            .unwrap_or_else(|| "(no diff)\n".to_owned());
        check(&case, "expected.diff", &out);
    }
}

#[test]
fn secret_values_never_appear_in_diffs() {
    for case in testdata("diff") {
        for file in ["live.yaml", "desired.yaml"] {
            for (_, v) in docs(&case.join(file)) {
                if v["kind"] != "Secret" {
                    continue;
                }
                let key = ObjectKey::from_object(&v);
                let both = [
                    unified_diff(&key, Some(&v), None, false).unwrap(),
                    unified_diff(&key, None, Some(&v), true).unwrap(),
                ];
                for field in ["data", "stringData"] {
                    for secret in v[field].as_object().into_iter().flat_map(|m| m.values()) {
                        let secret = secret.as_str().unwrap();
                        for d in &both {
                            assert!(!d.contains(secret), "{secret} leaked in\n{d}");
                        }
                    }
                }
            }
        }
    }
}
