//! Least privilege, proven by the API server's audit log.
//!
//! The agent runs as Pods with `plumb install --multi-tenant` and without the cluster-admin
//! binding (as SECURITY.md tells a cluster admin to run it), granted only `deploy/agent.yaml`'s
//! rules plus list/watch of the kinds its Syncs manage (its drift watches). A tenant's Syncs
//! name the tenant's ServiceAccount. A workload then uses every feature that needs a rule: a
//! GitSource with credentials (`secretRef`) and allowed signers, range verification (the ledger
//! ConfigMap in the agent's namespace), Syncs with prune, drift healing, a Helm Sync with
//! `valuesFrom` (read as the tenant), events (a repeated one too: a patched series), the Lease,
//! the webhook receivers' Secrets, impersonation, and the finalizers of a Sync and a GitSource
//! on deletion, one of them after a failed attempt (the agent then asks whether the namespace is
//! terminating). A Sync whose manifests reach beyond the tenant's rights is refused and the
//! object it names is left as it was.
//!
//! The audit log holds every request the agent Pods made as their ServiceAccount. Any of them
//! forbidden: a rule is missing. Any rule of `deploy/agent.yaml` (verb x resource) that no
//! request needed: it is extra, unless [`NOT_EXERCISED`] says why it cannot be exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use plumb_agent::api::Sync;
use plumb_testsupport::git::{GitServers, ServerOptions};
use plumb_testsupport::kube::{PlaneOptions, PrivateControlPlane, eventually};
use plumb_testsupport::world::{Remote, World};
use serde_json::{Value, json};

use super::*;

/// The agent's ServiceAccount, as the API server names it.
const AGENT_USER: &str = "system:serviceaccount:plumb-system:plumb-agent";

/// Rules of `deploy/agent.yaml` this test cannot exercise, `(apiGroup, resource, verb, why)`:
/// each with the reason. Keep it empty where possible: a rule here is trusted, not proven.
const NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[];

/// Logs what the agent's ServiceAccount does (metadata only: no request or response bodies,
/// so no Secret data), nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: [\"system:serviceaccount:plumb-system:plumb-agent\"]
  - level: None
";

/// What the tenant's account may do: ConfigMaps of its namespace, nothing else.
fn tenant_role(delete: bool) -> Value {
    let mut verbs = vec!["get", "list", "watch", "create", "patch", "update"];
    if delete {
        verbs.push("delete");
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "deployer" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": verbs }]
    })
}

const CHART: &str = "apiVersion: v2\nname: shop\nversion: 0.1.0\n";
const CHART_VALUES: &str = "colour: red\n";
const CHART_TEMPLATE: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  colour: {{ .Values.colour | quote }}
";

#[tokio::test]
async fn the_agent_pods_use_exactly_their_rules_and_a_tenant_sync_only_the_tenants() -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let plane = PrivateControlPlane::up_with_only_real_node_and(PlaneOptions {
        audit_policy: Some(AUDIT_POLICY.to_owned()),
        ..PlaneOptions::default()
    })
    .await
    .context("starting a private control plane with the real node and an audit log")?;
    let result = least_privilege(&plane).await;
    if result.is_err() {
        diagnose(&plane).await;
    }
    plane.down()?;
    result
}

async fn least_privilege(plane: &PrivateControlPlane) -> Result<()> {
    let image = load_image(plane).await?;
    let kubeconfig = plane.kubeconfig().to_str().context("kubeconfig path")?;
    let host: IpAddr = plane.node_host_address()?.parse()?;
    let servers = GitServers::start_reachable_at(ServerOptions::default(), Some(host))?;
    plane.expose_to_node(servers.https_port()).await?;
    let w = World::private_with_remote(plane, "tenant", Remote::Http(&servers)).await?;
    let client = w.client().clone();
    let ns = w.ns().to_owned();

    // The agent, locked down: --multi-tenant, the cluster-admin binding deleted, and what its
    // drift watches need for the kinds it manages here (ConfigMaps).
    plumb(
        kubeconfig,
        &["install", "--image", &image, "--multi-tenant"],
    )
    .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .delete("plumb-agent-cluster-admin", &DeleteParams::default())
        .await
        .context("deleting the cluster-admin binding")?;
    for object in [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "plumb-agent-watch" },
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"] }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "plumb-agent-watch" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "plumb-agent-watch" },
            "subjects": [{ "kind": "ServiceAccount", "name": "plumb-agent", "namespace": AGENT_NAMESPACE }]
        }),
    ] {
        apply(&client, None, object).await?;
    }
    // Pods started before the binding went had cluster-admin: they go, and so does the Lease
    // they created, so that the new Pods start as on a fresh install, with these rules only.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let scale = |replicas: i32| json!({ "spec": { "replicas": replicas } });
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    ready_agent_pods(&pods, 2).await?;
    deployments
        .patch(
            "plumb-agent",
            &PatchParams::default(),
            &Patch::Merge(scale(0)),
        )
        .await?;
    eventually("the agent Pods to be gone", PODS_READY, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(AGENT_SELECTOR))
                .await?;
            Ok(list.items.is_empty().then_some(()))
        }
    })
    .await?;
    Api::<Lease>::namespaced(client.clone(), AGENT_NAMESPACE)
        .delete(LEASE, &DeleteParams::default())
        .await
        .context("deleting the Lease")?;
    deployments
        .patch(
            "plumb-agent",
            &PatchParams::default(),
            &Patch::Merge(scale(2)),
        )
        .await?;
    let agent_pods: BTreeSet<String> = ready_agent_pods(&pods, 2)
        .await?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    println!("least-privilege agent Pods: {agent_pods:?}");

    // The tenant: a ServiceAccount allowed ConfigMaps of its namespace, the Git credentials and
    // the Helm values; another namespace holds a ConfigMap the tenant may not touch.
    let ca = std::fs::read_to_string(servers.ca_cert_path())?;
    for object in [
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "deployer" } }),
        tenant_role(true),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "deployer" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer" },
            "subjects": [{ "kind": "ServiceAccount", "name": "deployer", "namespace": ns }]
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "git-auth", "annotations": { "plumb.dev/credential-hosts": host.to_string() } },
            "stringData": { "username": servers.username(), "password": servers.password(), "caFile": ca }
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "shop-values" },
            "data": { "values.yaml": "colour: blue\n" }
        }),
    ] {
        apply(&client, Some(&ns), object).await?;
    }
    let other = format!("{ns}-other");
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": other } }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    apply(
        &client,
        Some(&other),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "guarded" },
                "data": { "value": "original" } }),
    )
    .await?;
    // A webhook receiver's Secret (served from the agent's watch of its namespace's Secrets).
    apply(
        &client,
        Some(AGENT_NAMESPACE),
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "plumb-receiver-push" },
                "stringData": { "type": "generic", "token": "a-receiver-token" } }),
    )
    .await?;

    // The repository: plain manifests, a chart, and manifests beyond the tenant's rights.
    let intrusion = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: guarded\n  namespace: {other}\ndata:\n  value: \"taken\"\n"
    );
    let first = w.commit(
        &[
            ("app/settings.yaml", &configmap("settings", "1")),
            ("app/extra.yaml", &configmap("extra", "1")),
            ("charts/shop/Chart.yaml", CHART),
            ("charts/shop/values.yaml", CHART_VALUES),
            ("charts/shop/templates/settings.yaml", CHART_TEMPLATE),
            ("intrusion/cm.yaml", &intrusion),
        ],
        w.signing(),
    )?;
    let url = format!("https://{host}:{}/tenant.git", servers.https_port());
    w.create(
        w.git_source("repo")
            .verify("range")
            .receiver("push")
            .spec(json!({ "url": url, "insecure": false, "secretRef": { "name": "git-auth" } })),
    )
    .await?;
    let as_tenant = json!({ "serviceAccountName": "deployer" });
    w.create(w.sync("app").spec(as_tenant.clone())).await?;
    w.create(w.sync("shop").spec(json!({
        "serviceAccountName": "deployer", "path": "charts/shop",
        "helm": { "releaseName": "web", "valuesFrom": [{ "kind": "ConfigMap", "name": "shop-values" }] }
    })))
    .await?;
    w.create(w.sync("intruder").spec(json!({
        "serviceAccountName": "deployer", "path": "intrusion"
    })))
    .await?;
    w.wait_applied::<Sync>("app", &first, WAIT).await?;
    w.wait_value("settings", "1").await?;
    w.wait_applied::<Sync>("shop", &first, WAIT).await?;
    let colour = w
        .configmaps()
        .get("web-settings")
        .await?
        .data
        .unwrap_or_default();
    ensure!(
        colour.get("colour").map(String::as_str) == Some("blue"),
        "the Helm values from the tenant's ConfigMap did not reach the chart: {colour:?}"
    );

    // The tenant's account may not touch the other namespace: the Sync fails, saying so, and
    // the ConfigMap there is as it was.
    let refused = w
        .wait_condition("Sync", "intruder", "Ready", "False", WAIT)
        .await?;
    let message = refused["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("forbidden")
            && message.contains(&format!("system:serviceaccount:{ns}:deployer")),
        "Sync intruder failed otherwise than on the tenant's rights: {refused}"
    );
    let guarded = Api::<ConfigMap>::namespaced(client.clone(), &other)
        .get("guarded")
        .await?;
    ensure!(
        guarded
            .data
            .unwrap_or_default()
            .get("value")
            .map(String::as_str)
            == Some("original"),
        "the tenant's Sync changed a ConfigMap of another namespace"
    );
    // The agent reports the failure again on retry: one Event, its series counted (a patch).
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually("a repeated Event of Sync intruder", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("intruder")
                        && e.series.as_ref().is_some_and(|s| s.count >= 2)
                })
                .map(|_| ()))
        }
    })
    .await?;

    // A ChartSource (the agent patches its finalizer and status) and a Sync on it (which reads
    // it): the repository is unreachable (a refused port on the Pod's own loopback), so both
    // stay not Ready; what counts here are the agent's requests.
    apply(
        &client,
        Some(&ns),
        json!({ "apiVersion": "plumb.dev/v1alpha1", "kind": "ChartSource",
                "metadata": { "name": "ghost" },
                "spec": { "url": "https://127.0.0.1:1/charts", "chart": "ghost" } }),
    )
    .await?;
    w.create(w.sync("ghost").spec(json!({
        "serviceAccountName": "deployer",
        "sourceRef": { "kind": "ChartSource", "name": "ghost" }
    })))
    .await?;
    w.wait_condition("ChartSource", "ghost", "Ready", "False", WAIT)
        .await?;
    w.wait_condition("Sync", "ghost", "Ready", "False", WAIT)
        .await?;

    // Drift: a hand edit is healed (the agent's watch sees it; the tenant's account applies).
    w.edit_by_hand("settings", "by hand").await?;
    w.wait_value("settings", "1").await?;

    // Prune: a file removed in Git, its ConfigMap deleted (as the tenant).
    w.wt().remove("app/extra.yaml")?;
    let second = w.wt().commit("drop extra", w.signing())?;
    w.wt().push()?;
    w.poke_source().await?;
    w.wait_applied::<Sync>("app", &second, WAIT).await?;
    ensure!(
        w.configmaps().get_opt("extra").await?.is_none(),
        "the pruned ConfigMap is still there"
    );

    // Deleting Sync app while the tenant may not delete: the first attempt fails (the agent
    // asks whether the namespace is terminating, and retries); allowed again, it finishes.
    apply(&client, Some(&ns), tenant_role(false)).await?;
    let syncs = w.plumb_api("Sync");
    syncs.delete("app", &DeleteParams::default()).await?;
    eventually("Sync app's deletion to fail once", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app")
                        && e.reason.as_deref() == Some("DeletionFailed")
                })
                .map(|_| ()))
        }
    })
    .await?;
    apply(&client, Some(&ns), tenant_role(true)).await?;
    for sync in ["app", "shop", "intruder", "ghost"] {
        if sync != "app" {
            syncs.delete(sync, &DeleteParams::default()).await?;
        }
        let syncs = syncs.clone();
        eventually(&format!("Sync {sync} to be gone"), WAIT, || {
            let syncs = syncs.clone();
            async move { Ok(syncs.get_opt(sync).await?.is_none().then_some(())) }
        })
        .await?;
    }
    ensure!(
        w.configmaps().get_opt("settings").await?.is_none(),
        "Sync app's ConfigMap outlived it (prune: true)"
    );
    for (kind, name) in [("GitSource", "repo"), ("ChartSource", "ghost")] {
        let sources = w.plumb_api(kind);
        sources.delete(name, &DeleteParams::default()).await?;
        eventually(&format!("{kind} {name} to be gone"), WAIT, || {
            let sources = sources.clone();
            async move { Ok(sources.get_opt(name).await?.is_none().then_some(())) }
        })
        .await?;
    }

    // What the audit log says.
    let text = std::fs::read_to_string(plane.audit_log())?;
    let requests = agent_requests(&text, &agent_pods)?;
    let granted = granted_rules(include_str!("../../../../deploy/agent.yaml"))?;
    let verdict = compare(&requests, &granted);
    println!(
        "audit: {} requests of the agent Pods as {AGENT_USER}; {} rules granted, {} used",
        requests.len(),
        granted.len(),
        verdict.used.len()
    );
    for (rule, count) in &verdict.used {
        println!("  used {rule}: {count} requests");
    }
    let mut problems = Vec::new();
    for (request, message) in &verdict.forbidden {
        problems.push(format!("missing rule: {request} was forbidden ({message})"));
    }
    for rule in &verdict.unused {
        problems.push(format!(
            "extra rule: {rule} in deploy/agent.yaml, never needed by the agent"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the agent's RBAC is not exactly what it uses:\n{}",
            problems.join("\n")
        );
    }
    Ok(())
}

/// Server-side applies `object` (as the test's admin), in `namespace` if given.
async fn apply(client: &kube::Client, namespace: Option<&str>, mut object: Value) -> Result<()> {
    let kind = object["kind"].as_str().context("no kind")?.to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .context("no name")?
        .to_owned();
    if let Some(ns) = namespace {
        object["metadata"]["namespace"] = Value::from(ns);
    }
    let (group, version) = match object["apiVersion"].as_str().context("no apiVersion")? {
        v if v.contains('/') => v.split_once('/').context("apiVersion")?,
        v => ("", v),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply("plumb-test").force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// One request of the agent's own (not impersonated), as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// Empty for cluster-scoped requests and requests across all namespaces.
    namespace: String,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let scope = if self.namespace.is_empty() {
            "cluster-wide"
        } else {
            &self.namespace
        };
        write!(f, "{} {group}/{} ({scope})", self.verb, self.resource)
    }
}

/// A rule of `deploy/agent.yaml`, one verb of one resource; `namespace` set for a Role's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {group}/{} (Role in {ns})", self.verb, self.resource),
            None => write!(f, "{} {group}/{} (ClusterRole)", self.verb, self.resource),
        }
    }
}

impl Rule {
    fn covers(&self, r: &Request) -> bool {
        self.group == r.group
            && self.resource == r.resource
            && self.verb == r.verb
            && self.namespace.as_ref().is_none_or(|ns| *ns == r.namespace)
    }
}

/// The requests the agent Pods `pods` made as themselves, with the status message of those
/// forbidden; impersonated ones count as a use of `impersonate` on `serviceaccounts`.
fn agent_requests(
    audit_log: &str,
    pods: &BTreeSet<String>,
) -> Result<Vec<(Request, Option<String>)>> {
    let mut requests = Vec::new();
    let mut impersonated = 0;
    for line in audit_log.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).context("an audit log line")?;
        if event["user"]["username"] != AGENT_USER {
            continue;
        }
        let pod = event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
            .as_str()
            .with_context(|| format!("an audit event of the agent names no Pod: {line}"))?;
        if !pods.contains(pod) {
            continue;
        }
        let forbidden = (event["responseStatus"]["code"] == 403).then(|| {
            event["responseStatus"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        });
        if event.get("impersonatedUser").is_some_and(|u| !u.is_null()) {
            // Authorized as the Sync's account: the tenant's business. The agent's own part
            // is the impersonation, which passed (else no impersonatedUser is recorded).
            impersonated += 1;
            continue;
        }
        let Some(object) = event.get("objectRef").filter(|o| !o.is_null()) else {
            // Discovery (/api, /apis, /version): every authenticated user may.
            continue;
        };
        let mut resource = object["resource"].as_str().unwrap_or_default().to_owned();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        requests.push((
            Request {
                verb: event["verb"].as_str().unwrap_or_default().to_owned(),
                group: object["apiGroup"].as_str().unwrap_or_default().to_owned(),
                resource,
                namespace: object["namespace"].as_str().unwrap_or_default().to_owned(),
            },
            forbidden,
        ));
    }
    if impersonated > 0 {
        requests.push((
            Request {
                verb: "impersonate".into(),
                group: String::new(),
                resource: "serviceaccounts".into(),
                namespace: String::new(),
            },
            None,
        ));
    }
    ensure!(
        !requests.is_empty(),
        "no request of the agent Pods {pods:?} in the audit log"
    );
    Ok(requests)
}

/// Every verb x resource the ClusterRole and Roles of `deploy/agent.yaml` grant the agent.
fn granted_rules(agent_yaml: &str) -> Result<Vec<Rule>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(agent_yaml)?;
    let mut rules = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        let namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
        for rule in doc["rules"].as_array().context("a role without rules")? {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        rules.push(Rule {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            namespace: namespace.clone(),
                        });
                    }
                }
            }
        }
    }
    rules.sort();
    rules.dedup();
    Ok(rules)
}

struct Verdict {
    /// Requests of the agent's own that RBAC refused, with the API server's message.
    forbidden: BTreeMap<Request, String>,
    /// Rules some request needed, with how many requests.
    used: BTreeMap<Rule, usize>,
    /// Rules no request needed (and [`NOT_EXERCISED`] does not excuse).
    unused: Vec<Rule>,
}

/// Matches requests to rules: a request needs the ClusterRole's rule if one covers it, else a
/// Role's (so a Role repeating what the ClusterRole grants is extra).
fn compare(requests: &[(Request, Option<String>)], granted: &[Rule]) -> Verdict {
    let mut forbidden = BTreeMap::new();
    let mut used: BTreeMap<Rule, usize> = BTreeMap::new();
    for (request, refused) in requests {
        if let Some(message) = refused {
            forbidden.insert(request.clone(), message.clone());
            continue;
        }
        let rule = granted
            .iter()
            .find(|g| g.namespace.is_none() && g.covers(request))
            .or_else(|| granted.iter().find(|g| g.covers(request)));
        if let Some(rule) = rule {
            *used.entry(rule.clone()).or_default() += 1;
        }
    }
    let unused = granted
        .iter()
        .filter(|g| !used.contains_key(*g))
        .filter(|g| {
            !NOT_EXERCISED.iter().any(|(group, resource, verb, _why)| {
                g.group == *group && g.resource == *resource && g.verb == *verb
            })
        })
        .cloned()
        .collect();
    Verdict {
        forbidden,
        used,
        unused,
    }
}

#[test]
fn a_forbidden_request_and_an_unneeded_rule_are_both_reported() {
    let granted = granted_rules(
        "kind: ClusterRole\nrules:\n  - apiGroups: [\"\"]\n    resources: [secrets]\n    verbs: [get, list]\n\
         ---\nkind: Role\nmetadata: {namespace: plumb-system}\nrules:\n  - apiGroups: [\"\"]\n    resources: [secrets]\n    verbs: [get, watch]\n",
    )
    .unwrap();
    let request = |verb: &str, namespace: &str| Request {
        verb: verb.into(),
        group: String::new(),
        resource: "secrets".into(),
        namespace: namespace.into(),
    };
    let verdict = compare(
        &[
            (request("get", "plumb-system"), None),
            (request("watch", "plumb-system"), None),
            (request("delete", "tenant"), Some("forbidden".into())),
        ],
        &granted,
    );
    assert_eq!(
        verdict.forbidden.keys().collect::<Vec<_>>(),
        [&request("delete", "tenant")]
    );
    // list is never used; the Role's get repeats the ClusterRole's.
    let unused: Vec<String> = verdict.unused.iter().map(ToString::to_string).collect();
    assert_eq!(
        unused,
        [
            "get core/secrets (Role in plumb-system)",
            "list core/secrets (ClusterRole)"
        ]
    );
}
