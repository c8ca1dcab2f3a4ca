//! The check of whole kustomizations and plugin config files, through the public functions.

use std::path::Path;

use super::*;
use crate::error::RenderError;

fn check(text: &str) -> Result<Vec<Reference>> {
    check_kustomization_text(Path::new("app/kustomization.yaml"), text)
}

#[track_caller]
fn remote(text: &str, field: &str) {
    match check(text) {
        Err(RenderError::RemoteResource { field: f, path, .. }) => {
            assert_eq!(f, field, "{text}");
            assert_eq!(path, Path::new("app/kustomization.yaml"));
        }
        other => panic!("{text}: expected RemoteResource at {field}, got {other:?}"),
    }
}

#[track_caller]
fn outside(text: &str, field: &str) {
    match check(text) {
        Err(RenderError::ReferenceOutsideRoot { field: f, .. }) => assert_eq!(f, field),
        other => panic!("{text}: expected ReferenceOutsideRoot at {field}, got {other:?}"),
    }
}

#[track_caller]
fn refused(text: &str, field: &str, reason: Refusal) {
    match check(text) {
        Err(RenderError::KustomizeRefused {
            field: f,
            reason: r,
            ..
        }) => {
            assert_eq!(f, field, "{text}");
            assert_eq!(r, reason, "{text}");
        }
        other => panic!("{text}: expected KustomizeRefused at {field}, got {other:?}"),
    }
}

const URL: &str = "http://127.0.0.1:8080/x";

#[test]
fn url_in_every_file_field_is_refused() {
    for (text, field) in [
        (format!("resources:\n- ok.yaml\n- {URL}\n"), "resources[1]"),
        (format!("bases:\n- {URL}\n"), "bases[0]"),
        (format!("components:\n- {URL}\n"), "components[0]"),
        (format!("crds:\n- {URL}\n"), "crds[0]"),
        (format!("configurations:\n- {URL}\n"), "configurations[0]"),
        (format!("generators:\n- {URL}\n"), "generators[0]"),
        (format!("transformers:\n- {URL}\n"), "transformers[0]"),
        (format!("validators:\n- {URL}\n"), "validators[0]"),
        (
            format!("patches:\n- path: {URL}\n  target: {{kind: ConfigMap}}\n"),
            "patches[0].path",
        ),
        (
            format!("patchesStrategicMerge:\n- {URL}\n"),
            "patchesStrategicMerge[0]",
        ),
        (
            format!("patchesJson6902:\n- path: {URL}\n"),
            "patchesJson6902[0].path",
        ),
        (
            format!("replacements:\n- path: {URL}\n"),
            "replacements[0].path",
        ),
        (format!("openapi:\n  path: {URL}\n"), "openapi.path"),
        (
            format!("configMapGenerator:\n- name: c\n  files:\n  - {URL}\n"),
            "configMapGenerator[0].files[0]",
        ),
        (
            format!("configMapGenerator:\n- name: c\n  files:\n  - key={URL}\n"),
            "configMapGenerator[0].files[0]",
        ),
        (
            format!("configMapGenerator:\n- name: c\n  envs:\n  - {URL}\n"),
            "configMapGenerator[0].envs[0]",
        ),
        (
            format!("configMapGenerator:\n- name: c\n  env: {URL}\n"),
            "configMapGenerator[0].env",
        ),
        (
            format!("secretGenerator:\n- name: s\n  files:\n  - k={URL}\n"),
            "secretGenerator[0].files[0]",
        ),
        (
            format!("secretGenerator:\n- name: s\n  envs: [{URL}]\n"),
            "secretGenerator[0].envs[0]",
        ),
        (
            format!("helmGlobals:\n  chartHome: {URL}\n"),
            "helmGlobals.chartHome",
        ),
    ] {
        remote(&text, field);
    }
}

#[test]
fn error_names_file_line_field_value_and_advice() {
    let e = check(&format!("namePrefix: x-\npatches:\n- path: {URL}\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "app/kustomization.yaml:3: `patches[0].path` names the remote location \"{URL}\"; Plumb lets Kustomize read only files in the repository, so vendor it into the repository and name it by a relative path"
        )
    );
    assert_eq!(e.metric_label(), "render_remote_resource");
    assert!(!e.is_retryable());
}

#[test]
fn paths_leaving_the_root_are_refused() {
    outside("generators:\n- ../../x\n", "generators[0]");
    outside("transformers:\n- ../../outside\n", "transformers[0]");
    outside("validators:\n- ../../../v.yaml\n", "validators[0]");
    outside("resources:\n- /etc\n", "resources[0]");
    outside("patches:\n- path: ../../p.yaml\n", "patches[0].path");
    outside("configurations: [/etc/passwd]\n", "configurations[0]");
    outside(
        "configMapGenerator:\n- name: c\n  files: [k=../../secret]\n",
        "configMapGenerator[0].files[0]",
    );
    outside("openapi: {path: /schema.json}\n", "openapi.path");
    // Inside the root (one level up from app/) is fine for the check.
    let refs = check("transformers:\n- ../shared/t.yaml\n").unwrap();
    assert_eq!(refs[0].path, Path::new("shared/t.yaml"));
    assert_eq!(refs[0].kind, ReferenceKind::PluginConfig);
}

#[test]
fn references_are_resolved_and_classified() {
    let refs = check(
        "resources: [base, cm.yaml]\ncomponents: [../comp]\npatches:\n- path: p.yaml\n- patch: |-\n    kind: X\nconfigMapGenerator:\n- name: c\n  files: [k=conf/a.conf, b.conf]\n  literals: [x=http://not-a-file]\npatchesStrategicMerge:\n- sm.yaml\n- |-\n  apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: x}\n  data: {url: 'https://example.com'}\n",
    )
    .unwrap();
    let mut got: Vec<_> = refs
        .iter()
        .map(|r| (r.field.as_str(), r.path.to_str().unwrap(), r.kind))
        .collect();
    got.sort();
    use ReferenceKind::*;
    assert_eq!(
        got,
        [
            ("components[0]", "comp", Kustomization),
            ("configMapGenerator[0].files[0]", "app/conf/a.conf", Data),
            ("configMapGenerator[0].files[1]", "app/b.conf", Data),
            ("patchesStrategicMerge[0]", "app/sm.yaml", Data),
            ("patches[0].path", "app/p.yaml", Data),
            ("resources[0]", "app/base", Kustomization),
            ("resources[1]", "app/cm.yaml", Kustomization),
        ]
    );
}

#[test]
fn helm_is_refused() {
    refused(
        "helmCharts:\n- name: x\n  repo: https://charts.example.com\n",
        "helmCharts",
        Refusal::Helm,
    );
    refused(
        "helmChartInflationGenerator:\n- chartName: x\n",
        "helmChartInflationGenerator",
        Refusal::Helm,
    );
    assert!(check("helmCharts: []\n").unwrap().is_empty());
    refused(
        "transformers:\n- |\n  apiVersion: builtin\n  kind: HelmChartInflationGenerator\n  metadata: {name: h}\n",
        "transformers[0] (inline) (HelmChartInflationGenerator)",
        Refusal::Helm,
    );
}

#[test]
fn unknown_and_misspelled_fields_are_refused() {
    refused(
        "resources: []\nfutureFiles: [x]\n",
        "futureFiles",
        Refusal::UnknownField,
    );
    // Kustomize matches field names case-insensitively.
    refused("Patches:\n- path: x\n", "Patches", Refusal::UnknownField);
    refused(
        "patches:\n- Path: http://x\n",
        "patches[0].Path",
        Refusal::UnknownField,
    );
    refused("openapi: {url: x}\n", "openapi.url", Refusal::UnknownField);
    refused(
        "configMapGenerator:\n- name: c\n  ageIdentities: [k]\n",
        "configMapGenerator[0].ageIdentities",
        Refusal::UnknownField,
    );
    // Merge keys are resolved (as by Kustomize's YAML parser), so merged fields are checked.
    remote("<<: {resources: ['http://x/y']}\n", "resources[0]");
}

#[test]
fn malformed_values_are_refused() {
    refused(
        "resources: x.yaml\n",
        "resources",
        Refusal::Malformed("a list of strings"),
    );
    refused(
        "patches:\n- path: 12\n",
        "patches[0].path",
        Refusal::Malformed("a path (a string)"),
    );
    refused(
        "- a\n",
        "(document)",
        Refusal::Malformed("a mapping of kustomization fields"),
    );
    assert!(check("").unwrap().is_empty());
    assert!(check("# only a comment\n").unwrap().is_empty());
}

#[test]
fn inline_plugin_configs() {
    // A builtin without file fields is fine.
    let ok = "transformers:\n- |\n  apiVersion: builtin\n  kind: PrefixSuffixTransformer\n  metadata: {name: p}\n  prefix: x-\n  fieldSpecs:\n  - path: metadata/name\n";
    assert!(check(ok).unwrap().is_empty());
    // File fields of builtins are checked.
    remote(
        &format!(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata: {{name: p}}\n  path: {URL}\n"
        ),
        "transformers[0] (inline) (PatchTransformer).path",
    );
    remote(
        &format!(
            "generators:\n- |\n  apiVersion: builtin\n  kind: ConfigMapGenerator\n  metadata: {{name: c}}\n  files: [k={URL}]\n"
        ),
        "generators[0] (inline) (ConfigMapGenerator).files[0]",
    );
    outside(
        "transformers:\n- |\n  apiVersion: builtin\n  kind: ValueAddTransformer\n  metadata: {name: v}\n  targetFilePath: ../../../targets.yaml\n",
        "transformers[0] (inline) (ValueAddTransformer).targetFilePath",
    );
    remote(
        &format!(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: ReplacementTransformer\n  metadata: {{name: r}}\n  replacements:\n  - path: {URL}\n"
        ),
        "transformers[0] (inline) (ReplacementTransformer).replacements[0].path",
    );
    remote(
        &format!(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchStrategicMergeTransformer\n  metadata: {{name: p}}\n  paths: [{URL}]\n"
        ),
        "transformers[0] (inline) (PatchStrategicMergeTransformer).paths[0]",
    );
    // Flow-style inline configs too.
    remote(
        &format!(
            "transformers:\n- '{{apiVersion: builtin, kind: PatchJson6902Transformer, metadata: {{name: j}}, path: \"{URL}\"}}'\n"
        ),
        "transformers[0] (inline) (PatchJson6902Transformer).path",
    );
    // URLs as data inside an inline config are fine; a git spec as the text is not.
    assert!(check("transformers:\n- |\n  apiVersion: builtin\n  kind: AnnotationsTransformer\n  metadata: {name: a}\n  annotations: {docs: 'https://example.com'}\n  fieldSpecs: [{path: metadata/annotations, create: true}]\n").unwrap().is_empty());
    remote(
        "transformers:\n- \"git@github.com:org/repo.git\\n\"\n",
        "transformers[0]",
    );
    // Remote and exec plugins, unknown builtins, unknown file-like keys.
    refused(
        "transformers:\n- |\n  apiVersion: someteam.example.com/v1\n  kind: ChartInflator\n  metadata: {name: c}\n",
        "transformers[0] (inline) (ChartInflator)",
        Refusal::NotBuiltinPlugin,
    );
    refused(
        "transformers:\n- |\n  apiVersion: builtin\n  kind: LabelTransformer\n  metadata:\n    name: f\n    annotations:\n      config.kubernetes.io/function: |\n        exec: {path: ./plugin}\n",
        "transformers[0] (inline) (LabelTransformer)",
        Refusal::NotBuiltinPlugin,
    );
    refused(
        "transformers:\n- |\n  apiVersion: builtin\n  kind: SortOrderTransformer\n  metadata: {name: s}\n",
        "transformers[0] (inline) (SortOrderTransformer)",
        Refusal::UnknownBuiltin,
    );
    refused(
        "transformers:\n- |\n  apiVersion: builtin\n  kind: LabelTransformer\n  metadata: {name: l}\n  labelsFile: x\n",
        "transformers[0] (inline) (LabelTransformer).labelsFile",
        Refusal::UnknownField,
    );
    refused(
        "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata: {name: p}\n  PATH: x\n",
        "transformers[0] (inline) (PatchTransformer).PATH",
        Refusal::UnknownField,
    );
    // A List of configs is flattened and each checked.
    remote(
        &format!(
            "generators:\n- |\n  apiVersion: v1\n  kind: List\n  items:\n  - apiVersion: builtin\n    kind: SecretGenerator\n    metadata: {{name: s}}\n    envs: [{URL}]\n"
        ),
        "generators[0] (inline).items[0] (SecretGenerator).envs[0]",
    );
    // Inline text that does not parse.
    match check("transformers:\n- |\n  a: [unclosed\n") {
        Err(RenderError::KustomizeRefused {
            reason: Refusal::InlineUnparsable(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn plugin_role_allows_only_gathering_fields() {
    let k = Path::new("gen/kustomization.yaml");
    let refs = check_kustomization_text_as(
        k,
        "resources: [a.yaml, sub]\nnamePrefix: x-\n",
        KustomizationRole::PluginConfigs,
    )
    .unwrap();
    assert!(refs.iter().all(|r| r.kind == ReferenceKind::PluginConfig));
    for field in [
        "patches: []",
        "replacements: []",
        "configurations: []",
        "transformers: []",
        "vars: []",
    ] {
        let e =
            check_kustomization_text_as(k, field, KustomizationRole::PluginConfigs).unwrap_err();
        assert!(
            matches!(
                &e,
                RenderError::KustomizeRefused {
                    reason: Refusal::RewritesPluginConfig,
                    ..
                }
            ),
            "{field}: {e}"
        );
    }
}

#[test]
fn plugin_config_files() {
    let f = Path::new("app/sub/t.yaml");
    let base = Path::new("app");
    let refs = check_plugin_config_text(
        f,
        base,
        "apiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\npath: p.yaml\n---\napiVersion: builtin\nkind: NamespaceTransformer\nmetadata: {name: n, namespace: x}\n",
    )
    .unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].path, Path::new("app/p.yaml"));
    let e = check_plugin_config_text(
        f,
        base,
        &format!("apiVersion: builtin\nkind: NamespaceTransformer\nmetadata: {{name: n}}\n---\napiVersion: builtin\nkind: PatchTransformer\nmetadata: {{name: p}}\npath: {URL}\n"),
    )
    .unwrap_err();
    assert!(
        matches!(&e, RenderError::RemoteResource { field, line: 8, .. } if field == "document 1 (PatchTransformer).path"),
        "{e}"
    );
    assert!(e.to_string().starts_with("app/sub/t.yaml:8: "), "{e}");
    // `..` counts from the listing kustomization's directory.
    let e = check_plugin_config_text(
        f,
        base,
        "apiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\npath: ../../p.yaml\n",
    )
    .unwrap_err();
    assert!(matches!(e, RenderError::ReferenceOutsideRoot { .. }), "{e}");
}
