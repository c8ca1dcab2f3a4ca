//! A Helm chart in Git, applied by a Sync with a `helm` block: values from files in the source,
//! a ConfigMap and a Secret (read as the Sync's identity), inline values, the cluster's
//! capabilities; a values change in Git is configured; a broken chart applies nothing.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::*;

const CHART: &str = "apiVersion: v2\nname: shop\nversion: 0.1.0\n";
const VALUES: &str =
    "colour: red\nsize: small\ngreeting: hello\nimage:\n  repository: nginx\n  tag: latest\n";
const TEMPLATE: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  colour: {{ .Values.colour | quote }}
  size: {{ .Values.size | quote }}
  greeting: {{ .Values.greeting | quote }}
  image: {{ printf \"%s:%s\" .Values.image.repository .Values.image.tag | quote }}
  namespace: {{ .Release.Namespace | quote }}
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
  syncs: {{ .Capabilities.APIVersions.Has \"plumb.dev/v1alpha1/Sync\" | quote }}
";

#[tokio::test]
async fn agent_applies_a_chart_from_git_with_values_from_everywhere() -> Result<()> {
    let w = World::new("helm").await?;
    let first = w.commit(
        &[
            ("charts/shop/Chart.yaml", CHART),
            ("charts/shop/values.yaml", VALUES),
            ("charts/shop/templates/settings.yaml", TEMPLATE),
            ("env/prod.yaml", "colour: blue\n"),
        ],
        w.signing(),
    )?;
    let values = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "shop-values" },
        "data": { "values.yaml": "size: large\ngreeting: from-configmap\n" }
    });
    w.configmaps()
        .create(&PostParams::default(), &serde_json::from_value(values)?)
        .await?;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "shop-image" },
        "stringData": { "tag": "1.27" }
    }))?;
    w.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "shop",
        json!({
            "sourceRef": { "name": "repo" }, "path": "charts/shop", "prune": true,
            "interval": "1h",
            "helm": {
                "releaseName": "web",
                "valuesFiles": ["env/prod.yaml"],
                "valuesFrom": [
                    { "kind": "ConfigMap", "name": "shop-values" },
                    { "kind": "Secret", "name": "shop-image", "valuesKey": "tag", "targetPath": "image.tag" },
                    { "kind": "ConfigMap", "name": "not-there", "optional": true }
                ],
                "values": { "greeting": "inline" }
            }
        }),
    )
    .await?;
    let sync = w.wait_applied("shop", &first).await?;
    let settings = w.configmaps().get("web-settings").await?;
    let data = settings.data.unwrap_or_default();
    // values.yaml < valuesFiles < valuesFrom (in order) < values.
    assert_eq!(data["colour"], "blue", "{data:?}");
    assert_eq!(data["size"], "large", "{data:?}");
    assert_eq!(data["greeting"], "inline", "{data:?}");
    assert_eq!(data["image"], "nginx:1.27", "{data:?}");
    // The release namespace is the Sync's; the capabilities are the cluster's.
    assert_eq!(data["namespace"], w.ns(), "{data:?}");
    let version = w.client().apiserver_version().await?;
    assert_eq!(data["kube"], version.git_version, "{data:?}");
    assert_eq!(data["syncs"], "true", "{data:?}");
    let st = sync.status.unwrap();
    assert_eq!(st.inventory.len(), 1, "{:?}", st.inventory);

    // A values change in Git is configured.
    let second = w.commit(&[("env/prod.yaml", "colour: green\n")], w.signing())?;
    w.poke_source().await?;
    let sync = w.wait_applied("shop", &second).await?;
    w.wait_value_of("web-settings", "colour", "green").await?;
    let st = sync.status.unwrap();
    assert!(
        st.history[0].changes.contains("1 configured"),
        "{:?}",
        st.history[0]
    );

    // A broken template is a RenderFailed naming the template and line; nothing changes.
    let before = w.configmaps().get("web-settings").await?.resource_version();
    let third = w.commit(
        &[(
            "charts/shop/templates/settings.yaml",
            &format!("{TEMPLATE}  broken: {{{{ .Values.no.such.value }}}}\n"),
        )],
        w.signing(),
    )?;
    w.poke_source().await?;
    let syncs = w.plumb_api("Sync");
    let failed = eventually("Sync shop to fail to render", WAIT, || {
        let syncs = syncs.clone();
        async move {
            let s = syncs.get("shop").await?;
            Ok(world::condition(&s.data, "Ready").filter(|c| c["reason"] == "RenderFailed"))
        }
    })
    .await?;
    let message = failed["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("charts/shop/templates/settings.yaml:13:"),
        "{message} (commit {third})"
    );
    assert_eq!(
        w.configmaps().get("web-settings").await?.resource_version(),
        before
    );
    w.stop().await;
    Ok(())
}

impl World {
    /// Waits until ConfigMap `name` holds `value` under `key`.
    async fn wait_value_of(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let cms = self.configmaps();
        eventually(
            &format!("ConfigMap {name} to hold {key}={value}"),
            WAIT,
            || {
                let cms = cms.clone();
                async move {
                    let data = cms.get(name).await?.data.unwrap_or_default();
                    Ok((data.get(key).map(String::as_str) == Some(value)).then_some(()))
                }
            },
        )
        .await
    }
}

#[tokio::test]
async fn values_from_is_read_as_the_syncs_service_account() -> Result<()> {
    let w = World::new("helmsa").await?;
    let ns = w.ns().to_owned();
    // The Sync's account may write ConfigMaps; reading Secrets it gets only later.
    let role = |secrets: bool| {
        let mut rules = vec![json!({ "apiGroups": [""], "resources": ["configmaps"],
            "verbs": ["get", "list", "watch", "create", "patch", "update"] })];
        if secrets {
            rules.push(json!({ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"] }));
        }
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "tenant" }, "rules": rules
        })
    };
    for o in [
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "tenant" } }),
        role(false),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "tenant" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant" },
            "subjects": [{ "kind": "ServiceAccount", "name": "tenant", "namespace": ns }]
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "db" },
            "stringData": { "password": "s3cr3t-in-a-secret" }
        }),
    ] {
        apply_object(&w, o).await?;
    }
    let first = w.commit(
        &[
            ("app/Chart.yaml", CHART),
            ("app/values.yaml", VALUES),
            (
                "app/templates/db.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-settings\ndata:\n  set: {{ ne .Values.db.password \"\" | quote }}\n",
            ),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "app",
        json!({
            "sourceRef": { "name": "repo" }, "path": "app", "interval": "1h",
            "serviceAccountName": "tenant",
            "helm": { "valuesFrom": [
                { "kind": "Secret", "name": "db", "valuesKey": "password", "targetPath": "db.password" }
            ] }
        }),
    )
    .await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to fail reading the Secret", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "app")
                .await?
                .filter(|(s, _, m)| s == "False" && m.contains("Secret"))
                .map(|(_, _, m)| m))
        }
    })
    .await?;
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        message.contains(&format!("Secret {ns}/db (spec.helm.valuesFrom[0])")),
        "{message}"
    );
    assert!(
        message.contains(&format!("system:serviceaccount:{ns}:tenant")),
        "{message}"
    );
    assert!(w.configmaps().get_opt("db-settings").await?.is_none());

    // Allowed to read it, the Sync applies; the value reaches the chart, never the status.
    apply_object(&w, role(true)).await?;
    w.request_reconcile("app").await?;
    let sync = w.wait_applied("app", &first).await?;
    w.wait_value_of("db-settings", "set", "true").await?;
    let status = serde_json::to_string(&sync.status)?;
    assert!(!status.contains("s3cr3t"), "{status}");
    w.stop().await;
    Ok(())
}

/// Creates or replaces a namespaced object of the world's namespace (server-side apply).
async fn apply_object(w: &World, o: serde_json::Value) -> Result<()> {
    let o: kube::api::DynamicObject = serde_json::from_value(o)?;
    let gvk = kube::api::GroupVersionKind::try_from(o.types.as_ref().expect("typed"))?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        w.client().clone(),
        w.ns(),
        &kube::api::ApiResource::from_gvk(&gvk),
    );
    api.patch(
        &o.name_any(),
        &PatchParams::apply("helm-test").force(),
        &Patch::Apply(&o),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn lookup_reads_the_cluster_as_the_syncs_service_account_only_when_on() -> Result<()> {
    let w = World::new("helmlookup").await?;
    let ns = w.ns().to_owned();
    // The Sync's account may read and write ConfigMaps, and not read Secrets.
    for o in [
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "tenant" } }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "tenant" },
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"],
                "verbs": ["get", "list", "watch", "create", "patch", "update"] }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "tenant" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant" },
            "subjects": [{ "kind": "ServiceAccount", "name": "tenant", "namespace": ns }]
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "source" },
            "data": { "greeting": "hello from the cluster" }
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "db" },
            "stringData": { "password": "s3cr3t-in-a-secret" }
        }),
    ] {
        apply_object(&w, o).await?;
    }
    let copy = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: copy\ndata:\n  found: {{ with lookup \"v1\" \"ConfigMap\" .Release.Namespace \"source\" }}{{ .data.greeting | quote }}{{ else }}\"none\"{{ end }}\n";
    let first = w.commit(
        &[
            (
                "look/Chart.yaml",
                "apiVersion: v2\nname: look\nversion: 0.1.0\n",
            ),
            ("look/templates/copy.yaml", copy),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "look",
        json!({
            "sourceRef": { "name": "repo" }, "path": "look", "interval": "1h",
            "serviceAccountName": "tenant",
        }),
    )
    .await?;
    // Off (the default): lookup finds nothing, as in `helm template`.
    w.wait_applied("look", &first).await?;
    w.wait_value_of("copy", "found", "none").await?;

    // On: the chart reads the ConfigMap its Sync's account may read.
    w.syncs()
        .patch(
            "look",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "helm": { "lookup": true } } })),
        )
        .await?;
    if let Err(e) = w
        .wait_value_of("copy", "found", "hello from the cluster")
        .await
    {
        let status = ready_condition(&w.syncs(), "look").await?;
        anyhow::bail!("{e}; the Sync says {status:?}");
    }

    // A Secret the account may not read: the render fails as Helm does without access,
    // naming the template, the identity and the refusal; nothing is applied, nothing leaks.
    let before = w.configmaps().get("copy").await?.resource_version();
    let second = w.commit(
        &[(
            "look/templates/secret.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stolen\ndata:\n  password: {{ (lookup \"v1\" \"Secret\" .Release.Namespace \"db\").data.password | default \"\" | quote }}\n",
        )],
        w.signing(),
    )?;
    w.poke_source().await?;
    let syncs = w.syncs();
    let message = eventually("the Sync to fail reading the Secret", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "look")
                .await?
                .filter(|(s, _, m)| s == "False" && m.contains("secret"))
                .map(|(_, _, m)| m))
        }
    })
    .await?;
    assert!(
        message.contains("look/templates/secret.yaml"),
        "{message} ({second})"
    );
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        message.contains(&format!("system:serviceaccount:{ns}:tenant")),
        "{message}"
    );
    assert!(!message.contains("s3cr3t"), "{message}");
    assert!(w.configmaps().get_opt("stolen").await?.is_none());
    assert_eq!(w.configmaps().get("copy").await?.resource_version(), before);
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn lookup_renders_a_charts_own_custom_resources_on_the_first_install() -> Result<()> {
    let w = World::new("helmlookupcrd").await?;
    // A group of this test's own: the cluster does not serve it before the Sync applies.
    let group = format!("{}.lookup.example.com", w.ns());
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.{group}\nspec:\n  group: {group}\n  names: {{kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList}}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n"
    );
    let gadget = format!(
        "apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: g\nspec:\n  found: {{{{ with lookup \"v1\" \"Namespace\" \"\" .Release.Namespace }}}}{{{{ .metadata.name | quote }}}}{{{{ else }}}}\"none\"{{{{ end }}}}\n"
    );
    let first = w.commit(
        &[
            (
                "gadgets/Chart.yaml",
                "apiVersion: v2\nname: gadgets\nversion: 0.1.0\n",
            ),
            ("gadgets/crds/gadgets.yaml", crd.as_str()),
            ("gadgets/templates/gadget.yaml", gadget.as_str()),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "gadgets",
        json!({
            "sourceRef": { "name": "repo" }, "path": "gadgets", "interval": "1h",
            "helm": { "lookup": true, "includeCRDs": true },
        }),
    )
    .await?;
    if let Err(e) = w.wait_applied("gadgets", &first).await {
        let status = ready_condition(&w.syncs(), "gadgets").await?;
        anyhow::bail!("{e}; the Sync says {status:?}");
    }
    let gvk = kube::api::GroupVersionKind::gvk(&group, "v1", "Gadget");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        w.client().clone(),
        w.ns(),
        &kube::api::ApiResource::from_gvk(&gvk),
    );
    let g = api.get("g").await?;
    // The lookup read the cluster during the render that made it.
    assert_eq!(g.data["spec"]["found"], w.ns());
    w.stop().await;
    Ok(())
}

/// A chart whose render takes seconds when `loops` is large (empty loops of Go templates).
const SLOW_TEMPLATE: &str =
    "{{- range until (int .Values.loops) }}{{- range until 5000 }}{{- end }}{{- end }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  value: {{ .Values.value | quote }}
";

/// The renderings held now (`plumb_sync_renderings_held`).
async fn renderings_held(w: &World) -> Result<f64> {
    w.gauge("plumb_sync_renderings_held")
        .await?
        .context("no plumb_sync_renderings_held")
}

/// Waiting for a render slot and rendering are not part of an apply's writes: a change made
/// while a new revision renders is healed at once (towards the revision registered), not
/// after the new revision's writes, which may be many seconds later (drift during a
/// rollout).
#[tokio::test]
async fn a_change_while_a_new_revision_renders_is_healed_before_the_render_ends() -> Result<()> {
    let w = World::new("slowrender").await?;
    let first = w.commit(
        &[
            (
                "charts/slow/Chart.yaml",
                "apiVersion: v2\nname: slow\nversion: 0.1.0\n",
            ),
            ("charts/slow/templates/settings.yaml", SLOW_TEMPLATE),
            ("charts/slow/values.yaml", "value: \"1\"\nloops: 1\n"),
        ],
        w.signing(),
    )?;
    w.create_source("range").await?;
    w.create_sync_spec(
        "slow",
        json!({
            "sourceRef": { "name": "repo" }, "path": "charts/slow", "prune": true,
            "interval": "1h", "drift": "correct"
        }),
    )
    .await?;
    w.wait_applied("slow", &first).await?;

    // The next revision renders the same ConfigMap, in several seconds (about 5 on an idle
    // core: 150 million empty template loops).
    let second = w.commit(
        &[("charts/slow/values.yaml", "value: \"1\"\nloops: 30000\n")],
        w.signing(),
    )?;
    w.poke_source().await?;
    eventually("the new revision to be rendering", WAIT, || async {
        Ok((renderings_held(&w).await? == 1.0).then_some(()))
    })
    .await?;
    w.edit_by_hand("settings", "by hand").await?;
    w.wait_value("settings", "1").await?;
    // Healed while the render still runs: the Sync still holds its rendering (it is let go
    // right after the writes, and a change during the writes is only checked after them).
    assert_eq!(
        renderings_held(&w).await?,
        1.0,
        "the change was healed only after the new revision's render"
    );
    let sync = w.wait_applied("slow", &second).await?;
    assert_eq!(
        sync.status
            .unwrap_or_default()
            .last_applied_revision
            .as_deref()
            .map(|r| r.ends_with(&second)),
        Some(true)
    );
    w.stop().await;
    Ok(())
}
