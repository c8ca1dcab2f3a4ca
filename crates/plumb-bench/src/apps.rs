//! The generated apps: a ConfigMap, ServiceAccount, Service and Deployment each.

use std::path::Path;

use anyhow::Context as _;

/// The four documents of app `name`, without a namespace (given with `-n` to both tools, or by
/// the Sync).
pub fn app_yaml(name: &str, replicas: u32) -> String {
    format!(
        "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  labels: {{app: {name}}}
data:
  app.properties: |
    name={name}
    greeting=hello from {name}
  LOG_LEVEL: info
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {name}
  labels: {{app: {name}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  selector: {{app: {name}}}
  ports:
    - name: http
      port: 80
      targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      serviceAccountName: {name}
      containers:
        - name: app
          image: {IMAGE}:1.0.0
          ports:
            - containerPort: 8080
          envFrom:
            - configMapRef:
                name: {name}
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
"
    )
}

/// The name of app number `i`.
pub fn app_name(i: u32) -> String {
    format!("app-{i:04}")
}

/// Writes apps `start..start + apps` into `dir`, one file `<name>.yaml` each; returns the number
/// of objects written.
pub fn generate(dir: &Path, apps: u32, replicas: u32, start: u32) -> anyhow::Result<u32> {
    for i in start..start + apps {
        let name = app_name(i);
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, app_yaml(&name, replicas))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(apps * 4)
}

/// Sets `REVISION: "<revision>"` in the ConfigMap of an app file (after `LOG_LEVEL` the first
/// time).
pub fn set_revision(text: &str, revision: u64) -> String {
    let line = format!("  REVISION: \"{revision}\"");
    if text.contains("REVISION:") {
        let mut replaced = false;
        text.split_inclusive('\n')
            .map(|l| {
                if !replaced && l.starts_with("  REVISION: ") {
                    replaced = true;
                    format!("{line}\n")
                } else {
                    l.to_owned()
                }
            })
            .collect()
    } else {
        text.replacen(
            "  LOG_LEVEL: info\n",
            &format!("  LOG_LEVEL: info\n{line}\n"),
            1,
        )
    }
}

/// The image every app's Deployment runs, without its tag.
pub const IMAGE: &str = "registry.example/app";

/// Sets the tag of the image of an app file's Deployment: a new Pod template, so the
/// Deployment rolls out (a new ReplicaSet) when it is applied.
pub fn set_image_tag(text: &str, tag: &str) -> String {
    let prefix = format!("image: {IMAGE}:");
    text.split_inclusive('\n')
        .map(|l| match l.trim_start().strip_prefix(&prefix) {
            Some(_) => {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}{prefix}{tag}\n")
            }
            None => l.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_is_added_once_then_replaced() {
        let text = app_yaml("app-0001", 0);
        let first = set_revision(&text, 1);
        assert!(first.contains("  LOG_LEVEL: info\n  REVISION: \"1\"\n"));
        let second = set_revision(&first, 2);
        assert_eq!(second.matches("REVISION:").count(), 1);
        assert!(second.contains("  REVISION: \"2\"\n"));
    }

    #[test]
    fn a_new_image_tag_changes_only_the_image_line() {
        let text = set_revision(&app_yaml("app-0001", 0), 3);
        let rolled = set_image_tag(&text, "1.0.7");
        assert!(
            rolled.contains("          image: registry.example/app:1.0.7\n"),
            "{rolled}"
        );
        assert!(!rolled.contains(":1.0.0"), "{rolled}");
        assert_eq!(rolled.lines().count(), text.lines().count());
        assert_eq!(set_image_tag(&rolled, "1.0.0"), text);
    }
}
