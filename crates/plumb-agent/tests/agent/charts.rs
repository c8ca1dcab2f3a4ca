//! Charts from a real HTTPS Helm repository (nginx, basic auth) and a real OCI registry
//! (docker-registry, TLS + htpasswd) through a ChartSource: applied, upgraded by a new
//! version in the range, objects that left pruned, the chart swapped; a wrong password and a
//! hostile archive refused with nothing applied; a dependency fetched by Plumb rendered.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use plumb_agent::api::ChartSource;
use plumb_testsupport::charts::{ChartServers, RawEntry, digest_of, raw_archive};

use super::*;

const SETTINGS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  colour: {{ .Values.colour | quote }}\n  chart: {{ printf \"%s-%s\" .Chart.Name .Chart.Version | quote }}\n";
const EXTRA: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\ndata:\n  a: b\n";

/// Chart `app` `version` whose settings say `colour`; with the `extra` ConfigMap or not.
fn app(
    servers: &ChartServers,
    version: &str,
    colour: &str,
    extra: bool,
) -> Result<std::path::PathBuf> {
    let values = format!("colour: {colour}\n");
    let mut files = vec![
        ("values.yaml", values.as_str()),
        ("templates/settings.yaml", SETTINGS),
    ];
    if extra {
        files.push(("templates/extra.yaml", EXTRA));
    }
    servers.package("app", version, &files)
}

fn sha256_of(file: &Path) -> Result<String> {
    digest_of(&std::fs::read(file)?)
}

impl World {
    fn chart_sources(&self) -> Api<ChartSource> {
        self.api()
    }

    /// A Secret `name` with the servers' login (or `password`) and CA, for host 127.0.0.1.
    async fn chart_secret(&self, servers: &ChartServers, name: &str, password: &str) -> Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": { "plumb.dev/credential-hosts": "127.0.0.1" }
            },
            "stringData": {
                "username": servers.username(),
                "password": password,
                "caFile": servers.ca_pem()?,
            }
        }))?;
        self.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// Secret `name` with the servers' login only (for host 127.0.0.1), and Secret
    /// `<name>-ca` with their CA as `ca.crt` (no annotation: a CA is no credential).
    async fn chart_secret_and_ca(&self, servers: &ChartServers, name: &str) -> Result<()> {
        for (secret, annotations, data) in [
            (
                name.to_owned(),
                json!({ "plumb.dev/credential-hosts": "127.0.0.1" }),
                json!({ "username": servers.username(), "password": servers.password() }),
            ),
            (
                format!("{name}-ca"),
                json!({}),
                json!({ "ca.crt": servers.ca_pem()? }),
            ),
        ] {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": { "name": secret, "annotations": annotations },
                "stringData": data,
            }))?;
            self.api::<Secret>()
                .create(&PostParams::default(), &secret)
                .await?;
        }
        Ok(())
    }

    async fn create_chart_source(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        self.create(json!({
            "apiVersion": "plumb.dev/v1alpha1", "kind": "ChartSource",
            "metadata": { "name": name }, "spec": spec,
        }))
        .await
    }

    /// A Sync `name` of ChartSource `source`, pruning.
    async fn create_chart_sync(&self, name: &str, source: &str) -> Result<()> {
        self.create_sync_spec(
            name,
            json!({
                "sourceRef": { "kind": "ChartSource", "name": source },
                "prune": true, "interval": "1h"
            }),
        )
        .await
    }

    /// Waits until ChartSource `name` reports `digest`; returns its artifact.
    async fn wait_chart(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<plumb_agent::api::ChartArtifact> {
        let api = self.chart_sources();
        eventually(
            &format!("ChartSource {name} to fetch {digest}"),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let st = api.get(name).await?.status.unwrap_or_default();
                    Ok(st.artifact.filter(|a| a.digest == digest))
                }
            },
        )
        .await
    }

    /// Waits until ChartSource `name` is Ready=False; returns (reason, message).
    async fn wait_chart_refused(&self, name: &str) -> Result<(String, String)> {
        let api = self.chart_sources();
        eventually(&format!("ChartSource {name} to be refused"), WAIT, || {
            let api = api.clone();
            async move {
                let st = api.get(name).await?.status.unwrap_or_default();
                Ok(st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == "False")
                    .map(|c| (c.reason.clone(), c.message.clone())))
            }
        })
        .await
    }

    /// Waits until ConfigMap `name` holds `value` under `key`.
    async fn wait_cm_value(&self, name: &str, key: &str, value: &str) -> Result<()> {
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

    /// Asks ChartSource `name` to look again and waits until it has.
    async fn poke_chart(&self, name: &str) -> Result<()> {
        self.inner.request_reconcile("ChartSource", name).await?;
        let api = self.chart_sources();
        let token = api
            .get(name)
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .remove(RECONCILE_REQUEST_ANNOTATION);
        eventually(
            &format!("ChartSource {name} to handle the request"),
            WAIT,
            || {
                let (api, token) = (api.clone(), token.clone());
                async move {
                    let st = api.get(name).await?.status.unwrap_or_default();
                    Ok((st.last_handled_reconcile_at == token).then_some(()))
                }
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_chart_from_an_https_repository_is_applied_upgraded_within_its_range_and_pruned()
-> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("chart-https").await?;
    let v1 = app(&servers, "1.0.0", "red", true)?;
    servers.publish("stable", &v1)?;
    w.chart_secret(&servers, "repo-auth", servers.password())
        .await?;
    w.create_chart_source(
        "app",
        json!({
            "url": servers.repo_url("stable"), "chart": "app", "version": ">=1.0.0 <2.0.0",
            "interval": "1h", "secretRef": { "name": "repo-auth" }
        }),
    )
    .await?;
    w.create_chart_sync("web", "app").await?;
    let d1 = sha256_of(&v1)?;
    let artifact = w.wait_chart("app", &d1).await?;
    assert_eq!(artifact.version, "1.0.0");
    assert_eq!(artifact.revision, format!("1.0.0@{d1}"));
    assert_eq!(
        artifact.url,
        format!("{}/app-1.0.0.tgz", servers.repo_url("stable"))
    );
    let sync = w.wait_applied("web", &d1).await?;
    let st = sync.status.unwrap_or_default();
    assert_eq!(st.history[0].revision, format!("1.0.0@{d1}"));
    assert_eq!(st.inventory.len(), 2, "{:?}", st.inventory);
    w.wait_cm_value("web-settings", "colour", "red").await?;
    assert!(w.configmaps().get_opt("web-extra").await?.is_some());

    // A new version in the range (and a newer one outside it): the newest in range is applied,
    // the values change is configured, the object that left is pruned.
    let v2 = app(&servers, "1.1.0", "blue", false)?;
    servers.publish("stable", &v2)?;
    servers.publish("stable", &app(&servers, "2.0.0", "green", false)?)?;
    w.poke_chart("app").await?;
    let d2 = sha256_of(&v2)?;
    assert_eq!(w.wait_chart("app", &d2).await?.version, "1.1.0");
    let sync = w.wait_applied("web", &d2).await?;
    w.wait_cm_value("web-settings", "colour", "blue").await?;
    assert!(
        w.configmaps().get_opt("web-extra").await?.is_none(),
        "pruned"
    );
    let st = sync.status.unwrap_or_default();
    assert!(
        st.history[0].changes.contains("1 configured")
            && st.history[0].changes.contains("1 pruned"),
        "{:?}",
        st.history[0]
    );

    // Nothing new: the index is read again, the archive is not downloaded again.
    let downloads = servers.requests("/app-1.1.0.tgz").len();
    let indexes = servers.requests("/stable/index.yaml").len();
    w.poke_chart("app").await?;
    assert_eq!(servers.requests("/stable/index.yaml").len(), indexes + 1);
    assert_eq!(
        servers.requests("/app-1.1.0.tgz").len(),
        downloads,
        "downloaded again"
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_condition_without_the_password() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("chart-auth").await?;
    servers.publish("stable", &app(&servers, "1.0.0", "red", false)?)?;
    w.chart_secret(&servers, "repo-auth", "Wr0ng-pa55word")
        .await?;
    w.create_chart_source(
        "app",
        json!({
            "url": servers.repo_url("stable"), "chart": "app",
            "interval": "1h", "secretRef": { "name": "repo-auth" }
        }),
    )
    .await?;
    w.create_chart_sync("web", "app").await?;
    let (reason, message) = w.wait_chart_refused("app").await?;
    assert_eq!(reason, "FetchFailed");
    assert!(
        message.contains("authentication failed (HTTP 401)")
            && message.contains(&format!(
                "chart \"app\" the newest version from {}",
                servers.repo_url("stable")
            )),
        "{message}"
    );
    let cs = serde_json::to_string(&w.chart_sources().get("app").await?)?;
    assert!(!cs.contains("Wr0ng-pa55word"), "{cs}");
    let syncs = w.syncs();
    let (_, _, sync_message) = eventually("the Sync to wait for its source", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "web")
                .await?
                .filter(|(s, _, _)| s == "False"))
        }
    })
    .await?;
    assert!(sync_message.contains("ChartSource"), "{sync_message}");
    assert!(w.configmaps().get_opt("web-settings").await?.is_none());
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_chart_from_oci_is_applied_with_its_digest_and_swapped_for_another() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("chart-oci").await?;
    let d1 = servers.push("charts", &app(&servers, "1.0.0", "red", true)?)?;
    let other = servers.package("other", "0.1.0", &[(
        "templates/o.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-other\ndata:\n  a: b\n",
    )])?;
    let d_other = servers.push("charts", &other)?;
    // The login from secretRef, the CA from a Secret of its own (certSecretRef).
    w.chart_secret_and_ca(&servers, "registry-auth").await?;
    w.create_chart_source(
        "app",
        json!({
            "url": servers.oci_url("charts"), "chart": "app", "interval": "1h",
            "secretRef": { "name": "registry-auth" },
            "certSecretRef": { "name": "registry-auth-ca" }
        }),
    )
    .await?;
    w.create_chart_sync("web", "app").await?;
    let artifact = w.wait_chart("app", &d1).await?;
    assert_eq!(artifact.version, "1.0.0");
    assert_eq!(
        artifact.url,
        format!("{}/app:1.0.0", servers.oci_url("charts"))
    );
    w.wait_applied("web", &d1).await?;
    w.wait_cm_value("web-settings", "colour", "red").await?;

    // The chart swapped: what the old chart made is pruned.
    let patch = json!({ "spec": { "chart": "other" } });
    w.chart_sources()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    w.wait_chart("app", &d_other).await?;
    w.wait_applied("web", &d_other).await?;
    assert!(w.configmaps().get_opt("web-other").await?.is_some());
    for gone in ["web-settings", "web-extra"] {
        assert!(
            w.configmaps().get_opt(gone).await?.is_none(),
            "{gone} pruned"
        );
    }
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_hostile_chart_is_refused_and_nothing_is_applied() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("chart-evil").await?;
    let chart = b"apiVersion: v2\nname: app\nversion: 1.0.0\n";
    let archive = raw_archive(&[
        RawEntry::File("app/Chart.yaml", chart),
        RawEntry::File("app/templates/cm.yaml", EXTRA.as_bytes()),
        RawEntry::Symlink(
            "app/templates/secrets.yaml",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ),
    ])?;
    servers.publish_raw("evil", "app", "1.0.0", &archive)?;
    w.chart_secret(&servers, "repo-auth", servers.password())
        .await?;
    w.create_chart_source(
        "app",
        json!({
            "url": servers.repo_url("evil"), "chart": "app", "interval": "1h",
            "secretRef": { "name": "repo-auth" }
        }),
    )
    .await?;
    w.create_chart_sync("web", "app").await?;
    let (reason, message) = w.wait_chart_refused("app").await?;
    assert_eq!(reason, "FetchFailed");
    assert!(
        message.contains("app/templates/secrets.yaml") && message.contains("symbolic link"),
        "{message}"
    );
    let cs = w.chart_sources().get("app").await?;
    assert!(cs.status.unwrap_or_default().artifact.is_none());
    let sync = w.syncs().get("web").await?;
    assert!(
        sync.status
            .unwrap_or_default()
            .last_applied_revision
            .is_none()
    );
    assert!(w.configmaps().get_opt("web-extra").await?.is_none());
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dependency_fetched_by_plumb_renders() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("chart-deps").await?;
    let base = servers.package(
        "base",
        "0.3.1",
        &[(
            "templates/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-base\ndata:\n  from: {{ .Chart.Name | quote }}\n",
        )],
    )?;
    servers.publish("stable", &base)?;
    // Not vendored: helm could not even package it; Plumb fetches `base` itself.
    let chart_yaml = format!(
        "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: base\n  version: \"~0.3\"\n  repository: {}\n",
        servers.repo_url("stable")
    );
    let archive = raw_archive(&[
        RawEntry::File("app/Chart.yaml", chart_yaml.as_bytes()),
        RawEntry::File("app/values.yaml", b"colour: red\n"),
        RawEntry::File("app/templates/settings.yaml", SETTINGS.as_bytes()),
    ])?;
    servers.publish_raw("apps", "app", "1.0.0", &archive)?;
    w.chart_secret(&servers, "repo-auth", servers.password())
        .await?;
    w.create_chart_source(
        "app",
        json!({
            "url": servers.repo_url("apps"), "chart": "app", "interval": "1h",
            "secretRef": { "name": "repo-auth" }
        }),
    )
    .await?;
    w.create_chart_sync("web", "app").await?;
    let digest = digest_of(&archive)?;
    let artifact = w.wait_chart("app", &digest).await?;
    assert_eq!(
        artifact.dependencies.len(),
        1,
        "{:?}",
        artifact.dependencies
    );
    assert!(
        artifact.dependencies[0].starts_with(&format!("base 0.3.1 {}", sha256_of(&base)?)),
        "{:?}",
        artifact.dependencies
    );
    w.wait_applied("web", &digest).await?;
    w.wait_cm_value("web-base", "from", "base").await?;
    w.wait_cm_value("web-settings", "colour", "red").await?;
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_tampered_chart_source_status_is_never_applied() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("chart-tamper").await?;
    let v1 = app(&servers, "1.0.0", "red", false)?;
    servers.publish("stable", &v1)?;
    w.chart_secret(&servers, "repo-auth", servers.password())
        .await?;
    w.create_chart_source(
        "app",
        json!({
            "url": servers.repo_url("stable"), "chart": "app", "interval": "1h",
            "secretRef": { "name": "repo-auth" }
        }),
    )
    .await?;
    w.create_chart_sync("web", "app").await?;
    let d1 = sha256_of(&v1)?;
    w.wait_applied("web", &d1).await?;
    let before = w.configmaps().get("web-settings").await?.resource_version();

    // Whoever may write the status names a version this agent never fetched.
    let forged = format!("sha256:{}", "0".repeat(64));
    let patch = json!({ "status": { "artifact": {
        "revision": format!("9.9.9@{forged}"), "chart": "app", "version": "9.9.9",
        "digest": forged, "url": "https://evil.example.com/app-9.9.9.tgz"
    } } });
    w.chart_sources()
        .patch_status("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let syncs = w.syncs();
    let (_, reason, message) = eventually("the Sync to refuse the forged revision", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "web")
                .await?
                .filter(|(s, _, m)| s == "False" && m.contains("9.9.9")))
        }
    })
    .await?;
    assert_eq!(reason, "DependencyNotReady");
    assert!(message.contains("but this agent fetched"), "{message}");
    let st = syncs.get("web").await?.status.unwrap_or_default();
    assert_eq!(st.last_applied_revision, Some(format!("1.0.0@{d1}")));
    assert_eq!(
        w.configmaps().get("web-settings").await?.resource_version(),
        before
    );
    w.stop().await;
    Ok(())
}

/// Commits chart `app` at `charts/app` whose dependency `base` (`~0.3`) lives in the
/// servers' `stable` repository (basic auth, test CA) and `extras` (`2.x`) in their public
/// repository under another host name, neither vendored, both published; returns the commit.
fn git_chart_with_a_remote_dependency(w: &World, servers: &ChartServers) -> Result<String> {
    let base = servers.package(
        "base",
        "0.3.1",
        &[(
            "templates/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-base\ndata:\n  from: {{ .Chart.Name | quote }}\n",
        )],
    )?;
    servers.publish("stable", &base)?;
    let extras = servers.package(
        "extras",
        "2.0.0",
        &[(
            "templates/e.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extras\ndata:\n  from: {{ .Chart.Name | quote }}\n",
        )],
    )?;
    servers.publish("public/extra", &extras)?;
    let chart_yaml = format!(
        "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: base\n  version: \"~0.3\"\n  repository: {}\n- name: extras\n  version: 2.x\n  repository: {}\n",
        servers.repo_url("stable"),
        servers.other_host_url("public/extra"),
    );
    w.commit(
        &[
            ("charts/app/Chart.yaml", chart_yaml.as_str()),
            ("charts/app/values.yaml", "colour: red\n"),
            ("charts/app/templates/settings.yaml", SETTINGS),
            ("env/prod.yaml", "colour: blue\n"),
        ],
        w.signing(),
    )
}

/// A Sync `web` of `charts/app` in the GitSource, with `env/prod.yaml` and the
/// dependency repository `stable` with Secret `secret` (and, if `ca`, `<secret>-ca` as CA
/// there and for the public repository's origin).
async fn create_git_chart_sync(
    w: &World,
    servers: &ChartServers,
    secret: &str,
    ca: bool,
) -> Result<()> {
    let mut repository = json!({
        "url": servers.repo_url("stable"),
        "secretRef": { "name": secret },
    });
    let mut repositories = vec![];
    if ca {
        repository["certSecretRef"] = json!({ "name": format!("{secret}-ca") });
        // Another origin: the CA only.
        repositories.push(json!({
            "url": servers.other_host_url("public/extra"),
            "certSecretRef": { "name": format!("{secret}-ca") },
        }));
    }
    repositories.insert(0, repository);
    w.create_sync_spec(
        "web",
        json!({
            "sourceRef": { "name": "repo" }, "path": "charts/app", "prune": true,
            "interval": "1h",
            "helm": {
                "valuesFiles": ["env/prod.yaml"],
                "dependencyRepositories": repositories
            }
        }),
    )
    .await
}

#[tokio::test]
async fn a_dependency_of_a_chart_in_git_is_fetched_with_the_syncs_credentials() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("git-chart-deps").await?;
    let commit = git_chart_with_a_remote_dependency(&w, &servers)?;
    w.chart_secret_and_ca(&servers, "dep-auth").await?;
    w.create_source("range").await?;
    create_git_chart_sync(&w, &servers, "dep-auth", true).await?;
    w.wait_applied("web", &commit).await?;
    // The parent's objects (with the values file of the source root) and the dependency's.
    w.wait_cm_value("web-settings", "colour", "blue").await?;
    w.wait_cm_value("web-base", "from", "base").await?;
    w.wait_cm_value("web-extras", "from", "extras").await?;
    // Fetched by Plumb (Helm never reaches the network): the login only on its origin.
    let fetched = servers.requests("/stable/base-0.3.1.tgz");
    assert!(
        !fetched.is_empty() && fetched.iter().all(|l| l.ends_with("user=plumb")),
        "{fetched:?}"
    );
    let public = servers.requests("/public/extra/index.yaml");
    assert!(
        !public.is_empty() && public.iter().all(|l| l.ends_with("user=-")),
        "{public:?}"
    );
    let index = servers.requests("/stable/index.yaml").len();

    // A new commit renders again: the index is read again with the Sync's login, the
    // archive comes from the agent's dependency cache.
    let second = w.commit(
        &[(
            "charts/app/templates/more.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-more\ndata:\n  k: v\n",
        )],
        w.signing(),
    )?;
    w.poke_source().await?;
    w.wait_applied("web", &second).await?;
    w.wait_cm_value("web-more", "k", "v").await?;
    w.wait_cm_value("web-base", "from", "base").await?;
    let again = servers.requests("/stable/index.yaml");
    assert!(
        again.len() > index && again.iter().all(|l| l.ends_with("200 user=plumb")),
        "{again:?}"
    );
    assert_eq!(servers.requests("/stable/base-0.3.1.tgz"), fetched);
    assert_eq!(
        servers.requests("/public/extra/extras-2.0.0.tgz").len(),
        1,
        "the public dependency's archive is cached too"
    );
    w.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_for_a_dependency_of_a_chart_in_git_applies_nothing() -> Result<()> {
    let servers = ChartServers::start()?;
    let w = World::new("git-chart-deps-auth").await?;
    git_chart_with_a_remote_dependency(&w, &servers)?;
    w.chart_secret(&servers, "dep-auth", "Wr0ng-pa55word")
        .await?;
    w.create_source("range").await?;
    create_git_chart_sync(&w, &servers, "dep-auth", false).await?;
    let syncs = w.syncs();
    let (_, reason, message) = eventually("the Sync to fail on the dependency", WAIT, || {
        let syncs = syncs.clone();
        async move {
            Ok(ready_condition(&syncs, "web")
                .await?
                .filter(|(s, _, m)| s == "False" && m.contains("dependency")))
        }
    })
    .await?;
    assert_eq!(reason, "FetchFailed", "{message}");
    assert!(
        message.contains("authentication failed (HTTP 401)")
            && message.contains("chart at path \"charts/app\"")
            && message.contains("dependency \"base\" version \"~0.3\"")
            && message.contains(&servers.repo_url("stable")),
        "{message}"
    );
    let sync = serde_json::to_string(&w.syncs().get("web").await?)?;
    assert!(!sync.contains("Wr0ng-pa55word"), "{sync}");
    let events = eventually("an event of the failure", WAIT, || async {
        let events = w.events("web", "FetchFailed").await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert!(
        events.iter().all(|e| !e.contains("Wr0ng-pa55word")),
        "{events:?}"
    );
    assert!(w.configmaps().get_opt("web-settings").await?.is_none());
    assert!(w.configmaps().get_opt("web-base").await?.is_none());
    w.stop().await;
    Ok(())
}
