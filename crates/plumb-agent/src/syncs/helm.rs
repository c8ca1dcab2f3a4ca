//! A Sync's Helm settings as plumb-render's chart options: values from ConfigMaps and Secrets
//! (read as the Sync's service account), the cluster's version and API versions for
//! `.Capabilities`, and for `lookup` a read-only proxy as the Sync's identity for the
//! duration of the render.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use plumb_core::Manifest;
use plumb_kube::{LookupLimits, LookupProxy};
use plumb_render::{Capabilities, ChartOptions, LookupAccess, PostRenderer, ValuesLayer};

use super::*;
use crate::api::HelmSpec;

/// Renders `sync`'s path of `record`: a chart with the Sync's Helm settings. With
/// `spec.helm.lookup`, Helm reads the cluster through a [`LookupProxy`] that forwards only
/// reads, with the client the apply uses (the Sync's impersonation), and that stops when the
/// render ends.
pub(super) async fn render(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    record: Arc<crate::artifacts::Artifact>,
) -> Result<Vec<Manifest>> {
    let mut chart = chart_options(sync, ctx, ns, &record.dir).await?;
    // Dependencies from https:// or oci:// repositories that charts/ lacks: fetched now into
    // a copy of the chart (the artifact itself is never modified).
    let copy = match chart {
        Some(_) => with_dependencies(sync, ctx, ns, &record).await?,
        None => None,
    };
    let lookup = sync.spec.helm.as_ref().is_some_and(|h| h.lookup);
    let proxy = match chart.as_mut() {
        Some(opts) if lookup => {
            let client = impersonated(sync, ctx, ns)?;
            // The chart's own CRDs: listed by the proxy's discovery until the cluster serves
            // them, so that its custom resources render on the first install.
            let rel = Path::new(sync.spec.path.as_deref().unwrap_or(""));
            let kinds = match (&copy, plumb_source::chart::plain(rel)) {
                (_, false) => Vec::new(),
                (Some(copy), true) => {
                    plumb_render::chart_crd_kinds(&copy.path().join("root").join(rel))
                }
                (None, true) => plumb_render::chart_crd_kinds(&record.dir.join(rel)),
            };
            let proxy = LookupProxy::start_with_kinds(client, LookupLimits::default(), kinds)
                .await
                .map_err(|e| Error::Io {
                    context: "starting the proxy for the chart's lookup".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            opts.lookup = Some(LookupAccess {
                server: proxy.url(),
                token: proxy.token().to_owned(),
            });
            Some(proxy)
        }
        _ => None,
    };
    // Held for the whole render; its digest is checked on disk first.
    let rendered = match copy {
        Some(copy) => crate::artifacts::render_copy(copy, sync.spec.path.clone(), chart).await,
        None => crate::artifacts::render_with(record, sync.spec.path.clone(), chart).await,
    };
    if let Some(proxy) = proxy {
        let stats = proxy.stats();
        tracing::debug!(
            forwarded = stats.forwarded_total(),
            refused = stats.refused,
            bytes = stats.bytes,
            "the chart's lookup proxy stopped"
        );
    }
    rendered
}

/// Where fetched dependency archives are kept between renders, below the agent's cache
/// directory (see [`plumb_source::chart::ArchiveCache`]: each render still resolves the
/// index or manifest with its Sync's own credentials).
const DEPENDENCY_CACHE_DIR: &str = "chart-dependencies";

/// The most bytes of dependency archives kept; the least recently used go first.
const DEPENDENCY_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// When the chart at `sync`'s path lists dependencies with an `https://` or `oci://`
/// repository that its `charts/` lacks: a temporary directory whose `root` holds a copy of
/// the chart at the same path with them fetched (plumb-source's [`ChartCopy`], shared with
/// the CLI, with the credentials and CAs of `spec.helm.dependencyRepositories`, read as the
/// Sync's service account) and the values files of `spec.helm.valuesFiles`. `None`: nothing
/// to fetch.
///
/// [`ChartCopy`]: plumb_source::chart::ChartCopy
async fn with_dependencies(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    record: &Arc<crate::artifacts::Artifact>,
) -> Result<Option<tempfile::TempDir>> {
    let path = sync.spec.path.as_deref().unwrap_or("");
    let rel = Path::new(path);
    let what = format!(
        "Sync {ns}/{}: chart at path {path:?} of its source",
        sync.name_any()
    );
    let failed = |source| Error::Chart {
        what: what.clone(),
        source,
    };
    // Nothing is read before the artifact's digest is checked: only a chart that names a
    // remote repository gets that far.
    if !plumb_source::chart::mentions_remote_repository(&record.dir, rel) {
        return Ok(None);
    }
    {
        let (dir, digest) = (record.dir.clone(), record.tree_digest.clone());
        tokio::task::spawn_blocking(move || plumb_source::export::verify_dir(&dir, &digest))
            .await
            .map_err(|e| Error::Io {
                context: "checking the artifact".into(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|e| Error::Source(plumb_source::Error::Export(e)))?;
    }
    let missing = plumb_source::chart::missing_dependencies_at(
        &record.dir,
        rel,
        &what,
        plumb_source::chart::ChartLimits::default(),
    )
    .await
    .map_err(failed)?;
    let Some(missing) = missing else {
        return Ok(None);
    };
    // Only now: a Sync whose dependencies are all vendored needs none of these Secrets.
    let spec = sync.spec.helm.clone().unwrap_or_default();
    let repositories = dependency_repositories(sync, ctx, ns, &spec).await?;
    let values_files: Vec<std::path::PathBuf> = spec.values_files.iter().map(Into::into).collect();
    let cache = plumb_source::chart::ArchiveCache::new(
        ctx.config.cache_dir.join(DEPENDENCY_CACHE_DIR),
        DEPENDENCY_CACHE_BYTES,
    );
    let copy = missing
        .with_cache(cache)
        .vendor_copy(&repositories, &record.dir, rel, &values_files)
        .await
        .map_err(failed)?;
    tracing::debug!(sync = %sync.name_any(), dependencies = ?copy.fetched(), "fetched the chart's dependencies");
    Ok(Some(copy.into_tempdir()))
}

/// `spec.helm.dependencyRepositories` with their Secrets, read with the Sync's client.
async fn dependency_repositories(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    spec: &HelmSpec,
) -> Result<Vec<plumb_source::chart::DependencyRepository>> {
    if spec.dependency_repositories.is_empty() {
        return Ok(Vec::new());
    }
    let client = impersonated(sync, ctx, ns)?;
    let secrets = Api::<Secret>::namespaced(client, ns);
    let read = |name: String, field: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(&name)
                .await
                .map_err(|source| Error::Api {
                    context: format!("reading Secret {ns}/{name} ({field})"),
                    source,
                })?
                .ok_or_else(|| {
                    Error::NotReady(format!("Secret {ns}/{name} ({field}) does not exist"))
                })
        }
    };
    let mut out = Vec::new();
    for (i, entry) in spec.dependency_repositories.iter().enumerate() {
        let field = format!("spec.helm.dependencyRepositories[{i}]");
        if !(entry.url.starts_with("https://") || entry.url.starts_with("oci://")) {
            return Err(Error::Spec(format!(
                "{field}.url {:?} must start with https:// or oci://",
                entry.url
            )));
        }
        let mut repo = plumb_source::chart::DependencyRepository {
            url: entry.url.clone(),
            credentials: plumb_source::chart::ChartCredentials::None,
            ca_pem: None,
        };
        if let Some(secret_ref) = &entry.secret_ref {
            let secret = read(secret_ref.name.clone(), format!("{field}.secretRef")).await?;
            crate::gitsource::check_credential_hosts(&entry.url, &secret, ns, &secret_ref.name)?;
            (repo.credentials, repo.ca_pem) = crate::chartsource::credentials_from(secret);
        }
        if let Some(cert_ref) = &entry.cert_secret_ref {
            let field = format!("{field}.certSecretRef");
            let secret = read(cert_ref.name.clone(), field.clone()).await?;
            let ca = crate::chartsource::ca_from(secret, ns, &cert_ref.name, &field)?;
            let mut pem = repo.ca_pem.take().unwrap_or_default();
            pem.extend_from_slice(&ca);
            repo.ca_pem = Some(pem);
        }
        out.push(repo);
    }
    Ok(out)
}

/// The client the Sync applies with (its impersonation).
fn impersonated(sync: &Sync, ctx: &Context, ns: &str) -> Result<kube::Client> {
    ctx.client_for(ns, sync.spec.service_account_name.as_deref())
        .map_err(|source| Error::Api {
            context: "building an impersonating client".into(),
            source,
        })
}

/// The chart options to render `sync`'s path of `dir` with: `None` when the path is no chart
/// and the Sync has no `helm` block (then nothing is read from the cluster here).
pub(super) async fn chart_options(
    sync: &Sync,
    ctx: &Context,
    ns: &str,
    dir: &Path,
) -> Result<Option<ChartOptions>> {
    let path = sync.spec.path.as_deref().unwrap_or("");
    let is_chart = std::fs::symlink_metadata(dir.join(path).join(plumb_render::CHART_FILE)).is_ok();
    let spec = sync.spec.helm.clone();
    if !is_chart && spec.is_none() {
        return Ok(None);
    }
    let spec = spec.unwrap_or_default();
    let client = impersonated(sync, ctx, ns)?;
    let mut values = Vec::new();
    for (i, reference) in spec.values_from.iter().enumerate() {
        if let Some(layer) = values_from(&client, ns, i, reference).await? {
            values.push(layer);
        }
    }
    if let Some(inline) = &spec.values {
        values.push(ValuesLayer::new("spec.helm.values", inline.clone())?);
    }
    let mut opts = ChartOptions {
        release_name: Some(spec.release_name.clone().unwrap_or_else(|| sync.name_any())),
        namespace: Some(
            sync.spec
                .target_namespace
                .clone()
                .unwrap_or_else(|| ns.to_owned()),
        ),
        values_files: spec.values_files.iter().map(Into::into).collect(),
        values,
        include_crds: spec.include_crds,
        capabilities: None,
        post_renderers: post_renderers(&spec),
        lookup: None,
    };
    // With lookup, Helm asks the cluster itself (through the proxy).
    if is_chart && !spec.lookup {
        opts.capabilities = Some(capabilities(ctx, client).await?);
    }
    Ok(Some(opts))
}

fn post_renderers(spec: &HelmSpec) -> Vec<PostRenderer> {
    spec.post_renderers
        .iter()
        .filter_map(|p| p.kustomize.as_ref())
        .map(|k| PostRenderer {
            patches: k
                .patches
                .iter()
                .map(|p| serde_json::to_value(p).expect("a patch serialises"))
                .collect(),
            images: k
                .images
                .iter()
                .map(|i| serde_json::to_value(i).expect("an image serialises"))
                .collect(),
        })
        .collect()
}

/// The cluster's version and served API versions (from the discovery the engines share).
async fn capabilities(ctx: &Context, client: kube::Client) -> Result<Capabilities> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|source| Error::Api {
            context: "reading the cluster's version for the chart's .Capabilities".into(),
            source,
        })?;
    let engine = Engine::new(client).sharing(ctx.discovery.clone());
    let kinds = engine.kinds().await?;
    Ok(Capabilities {
        kube_version: Some(version.git_version),
        api_versions: kinds.api_versions(),
    })
}

/// One `valuesFrom` entry, read with the Sync's client; `None` for a missing optional one.
/// Errors name the object and key, never the content.
async fn values_from(
    client: &kube::Client,
    ns: &str,
    index: usize,
    reference: &crate::api::ValuesReference,
) -> Result<Option<ValuesLayer>> {
    let key = reference.values_key.as_deref().unwrap_or("values.yaml");
    let name = &reference.name;
    let what = format!(
        "{} {ns}/{name} (spec.helm.valuesFrom[{index}])",
        reference.kind
    );
    let api_error = |source| Error::Api {
        context: format!("reading {what}"),
        source,
    };
    let text = match reference.kind.as_str() {
        "ConfigMap" => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(api_error)?
            .map(|cm| cm.data.and_then(|mut d| d.remove(key))),
        "Secret" => {
            let secret = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(api_error)?;
            match secret {
                None => None,
                Some(s) => match s.data.and_then(|mut d| d.remove(key)) {
                    None => Some(None),
                    Some(bytes) => Some(Some(String::from_utf8(bytes.0).map_err(|_| {
                        Error::Spec(format!("{what}: key {key:?} is not UTF-8 text"))
                    })?)),
                },
            }
        }
        other => {
            return Err(Error::Spec(format!(
                "spec.helm.valuesFrom[{index}].kind {other:?} is not supported (ConfigMap or Secret)"
            )));
        }
    };
    let text = match text {
        Some(Some(text)) => text,
        _ if reference.optional => return Ok(None),
        None => return Err(Error::NotReady(format!("{what} does not exist"))),
        Some(None) => return Err(Error::NotReady(format!("{what} has no key {key:?}"))),
    };
    let origin = format!("{what} key {key}");
    let layer = match &reference.target_path {
        Some(path) => ValuesLayer::at_path(&origin, path, serde_json::Value::String(text))?,
        None => ValuesLayer::from_yaml(&origin, &text)?,
    };
    Ok(Some(layer))
}
