//! The ChartSource reconciler: resolve the version (index or tags and manifest), download and
//! unpack only when the resolved digest differs from the stored artifact's, record the
//! artifact. Syncs render only an artifact this agent stored, of exactly the status' digest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use plumb_source::chart::{self, ChartCredentials, ChartRequest};

use crate::api::{ChartArtifact, ChartSource, SourceArtifact};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::gitsource::{check_credential_hosts, requested_at};
use crate::metrics::{Outcome, ReconcileKind};
use crate::status::{self, types};

/// Default interval between version checks.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// The kind name in `sourceRef.kind`.
pub const KIND: &str = "ChartSource";

/// The name a ChartSource's artifacts are stored under (and its key in the supersede
/// tracker): `_` never appears in an object name, so it cannot be a GitSource's.
pub fn store_name(name: &str) -> String {
    format!("chartsource_{name}")
}

/// Reconciles one ChartSource.
pub async fn reconcile(cs: Arc<ChartSource>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = cs.namespace().unwrap_or_default();
    let name = cs.name_any();
    let key = crate::context::backoff_key(cs.as_ref());
    if cs.spec.suspend {
        return Ok(Action::await_change());
    }
    let interval = match &cs.spec.interval {
        Some(i) => plumb_core::parse_duration(i).map_err(|e| format!("spec.interval: {e}")),
        None => Ok(DEFAULT_INTERVAL),
    };
    let result = match &interval {
        Ok(_) => fetch(&cs, &ctx, &ns, &name).await,
        Err(message) => Err(Error::Spec(message.clone())),
    };
    let interval = interval.unwrap_or(DEFAULT_INTERVAL);
    let elapsed = started.elapsed();
    let mut st = cs.status.clone().unwrap_or_default();
    st.observed_generation = cs.metadata.generation;
    st.last_handled_reconcile_at = requested_at(cs.as_ref());
    st.last_fetch_time = Some(status::now_rfc3339());
    let action = match result {
        Ok(artifact) => {
            ctx.metrics
                .observe_reconcile(ReconcileKind::ChartSource, Outcome::Success, elapsed);
            ctx.reset_backoff(&key);
            let new = st.artifact.as_ref().map(|a| &a.digest) != Some(&artifact.digest);
            let message = format!(
                "stored chart {} version {} ({})",
                artifact.chart, artifact.version, artifact.digest
            );
            status::set_condition(
                &mut st.conditions,
                types::READY,
                true,
                "Succeeded",
                &message,
                st.observed_generation,
            );
            status::remove_condition(&mut st.conditions, types::STALLED);
            status::remove_condition(&mut st.conditions, types::RECONCILING);
            if new {
                tracing::info!(revision = %artifact.revision, url = %artifact.url, "fetched a new chart version");
                ctx.event(cs.as_ref(), false, "NewArtifact", &message).await;
            }
            st.artifact = Some(artifact);
            Action::requeue(interval)
        }
        Err(e) => {
            ctx.metrics
                .observe_reconcile(ReconcileKind::ChartSource, Outcome::Failure, elapsed);
            let message = e.to_string();
            tracing::warn!(object = %key, error = %message, "chart fetch failed");
            status::set_failed(
                &mut st.conditions,
                e.reason(),
                &message,
                e.is_retryable(),
                st.observed_generation,
            );
            ctx.event(cs.as_ref(), true, e.reason(), &message).await;
            Action::requeue(ctx.backoff(&key).min(interval))
        }
    };
    ctx.write_status::<ChartSource>(&ns, &name, &st).await?;
    Ok(action)
}

/// Resolves the version; downloads, unpacks and stores it unless this agent holds it
/// already (same digest, intact on disk).
async fn fetch(cs: &ChartSource, ctx: &Context, ns: &str, name: &str) -> Result<ChartArtifact> {
    let req = request_for(cs, ctx, ns).await?;
    let failed = |source| Error::Chart {
        what: req.describe(),
        source,
    };
    let resolved = chart::resolve(&req).await.map_err(failed)?;
    let key = store_name(name);
    let previous = cs.status.as_ref().and_then(|s| s.artifact.clone());
    if let (Some(current), Some(digest)) = (ctx.artifacts.get(ns, &key), &resolved.digest)
        && current.commit == revision(&resolved.version, digest)
    {
        let intact = {
            let current = current.clone();
            tokio::task::spawn_blocking(move || {
                plumb_source::export::verify_dir(&current.dir, &current.tree_digest).is_ok()
            })
            .await
            .unwrap_or(false)
        };
        if intact {
            // Nothing new: the status keeps what it said (the dependency list and time are
            // only taken over when they describe this very digest).
            let same = previous.filter(|p| &p.digest == digest);
            return Ok(ChartArtifact {
                revision: revision(&resolved.version, digest),
                chart: resolved.chart.clone(),
                version: resolved.version.clone(),
                digest: digest.clone(),
                url: resolved.url.clone(),
                tree_digest: Some(current.tree_digest.clone()),
                dependencies: same
                    .as_ref()
                    .map(|p| p.dependencies.clone())
                    .unwrap_or_default(),
                fetched_at: same.and_then(|p| p.fetched_at),
            });
        }
    }
    let staging = ctx.artifacts.staging(ns, &key)?;
    let fetched = chart::download(&req, &resolved, &staging.path())
        .await
        .map_err(failed)?;
    {
        let (ns, key, digest, tree) = (
            ns.to_owned(),
            key.clone(),
            revision(&fetched.version, &fetched.digest),
            fetched.tree_digest.clone(),
        );
        let store = ctx.artifacts.clone();
        // The revision names the directory: its version was checked to be a plain version
        // string (no `/`), the digest is hex.
        tokio::task::spawn_blocking(move || store.store(&ns, &key, staging, &digest, &tree, false))
            .await
            .map_err(|e| Error::Io {
                context: "storing the chart artifact".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
    }
    Ok(ChartArtifact {
        revision: revision(&fetched.version, &fetched.digest),
        chart: fetched.chart,
        version: fetched.version,
        digest: fetched.digest,
        url: fetched.url,
        tree_digest: Some(fetched.tree_digest),
        dependencies: fetched.dependencies,
        fetched_at: Some(status::now_rfc3339()),
    })
}

/// `<version>@sha256:<hex>`.
fn revision(version: &str, digest: &str) -> String {
    format!("{version}@{digest}")
}

/// The chart request of `cs`: credentials from `secretRef` (only for the hosts its
/// annotation names), a CA from `secretRef` or `certSecretRef`.
async fn request_for(cs: &ChartSource, ctx: &Context, ns: &str) -> Result<ChartRequest> {
    let name = cs.name_any();
    let chart = match (&cs.spec.chart, chart::is_oci(&cs.spec.url)) {
        (Some(c), _) => c.clone(),
        (None, true) => String::new(),
        (None, false) => {
            return Err(Error::Spec(format!(
                "ChartSource {ns}/{name}: spec.chart is required for a Helm repository ({})",
                cs.spec.url
            )));
        }
    };
    let mut req = ChartRequest::new(cs.spec.url.clone(), chart, cs.spec.version.clone());
    if let Some(secret_ref) = &cs.spec.secret_ref {
        let secret = read_secret(ctx, ns, &secret_ref.name, "secretRef").await?;
        check_credential_hosts(&cs.spec.url, &secret, ns, &secret_ref.name)?;
        (req.credentials, req.ca_pem) = credentials_from(secret);
    }
    if let Some(cert_ref) = &cs.spec.cert_secret_ref {
        let secret = read_secret(ctx, ns, &cert_ref.name, "certSecretRef").await?;
        let ca = ca_from(secret, ns, &cert_ref.name, "certSecretRef")?;
        let mut pem = req.ca_pem.take().unwrap_or_default();
        pem.extend_from_slice(&ca);
        req.ca_pem = Some(pem);
    }
    Ok(req)
}

/// The credentials (`bearerToken`, else `username` + `password`) and CA (`caFile` or
/// `ca.crt`) of a `secretRef` Secret.
pub(crate) fn credentials_from(secret: Secret) -> (ChartCredentials, Option<Vec<u8>>) {
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let credentials = if let Some(token) = get("bearerToken") {
        ChartCredentials::Bearer {
            token: token.into(),
        }
    } else if let Some(password) = get("password") {
        ChartCredentials::Basic {
            username: get("username").unwrap_or_default(),
            password: password.into(),
        }
    } else {
        ChartCredentials::None
    };
    let ca = get("caFile")
        .or_else(|| get("ca.crt"))
        .map(String::into_bytes);
    (credentials, ca)
}

/// The PEM certificates (`ca.crt` or `caFile`) of a `certSecretRef` Secret `ns/name`.
pub(crate) fn ca_from(secret: Secret, ns: &str, name: &str, field: &str) -> Result<Vec<u8>> {
    let data = secret.data.unwrap_or_default();
    data.get("ca.crt")
        .or_else(|| data.get("caFile"))
        .map(|b| b.0.clone())
        .ok_or_else(|| {
            Error::Spec(format!(
                "Secret {ns}/{name} ({field}) has no key ca.crt or caFile"
            ))
        })
}

async fn read_secret(ctx: &Context, ns: &str, name: &str, field: &str) -> Result<Secret> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Api {
            context: format!("reading Secret {ns}/{name}"),
            source,
        })?
        .ok_or_else(|| Error::Spec(format!("Secret {ns}/{name} ({field}) does not exist")))
}

/// The artifact a Sync may render for the ChartSource whose status names `artifact`: only
/// one this agent stored itself, of exactly that digest (the status may be written by
/// anyone allowed to patch it). Returns the handle and the revision as a Sync records it.
pub fn own_artifact(
    ctx: &Context,
    source: &ChartSource,
    artifact: &ChartArtifact,
) -> Result<(Arc<crate::artifacts::Artifact>, SourceArtifact)> {
    let ns = source.namespace().unwrap_or_default();
    let name = source.name_any();
    let Some(record) = ctx.artifacts.get(&ns, &store_name(&name)) else {
        return Err(Error::NotReady(format!(
            "ChartSource {ns}/{name} has not been fetched by this agent yet"
        )));
    };
    if record.commit != artifact.revision {
        return Err(Error::NotReady(format!(
            "ChartSource {ns}/{name} reports {}, but this agent fetched {}; waiting for the \
             ChartSource to be reconciled",
            artifact.revision, record.commit
        )));
    }
    let source_artifact = SourceArtifact {
        revision: record.commit.clone(),
        commit: record.commit.clone(),
        tree_digest: Some(record.tree_digest.clone()),
        author: None,
        signer: None,
    };
    Ok((record, source_artifact))
}
