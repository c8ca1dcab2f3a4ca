//! The GitSource reconciler: fetch, verify, export, record the artifact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use plumb_source::{
    AllowedSigners, Credentials, GitRef, Keyring, PathPolicy, SourceRequest, VerifyMode,
    VerifyPolicy,
};

use crate::api::{GitSource, KeyReference, SourceArtifact};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::metrics::{Outcome, ReconcileKind};
use crate::policy;
use crate::status::{self, types};

/// Default fetch interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Reconciles one GitSource.
pub async fn reconcile(gs: Arc<GitSource>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = gs.namespace().unwrap_or_default();
    let name = gs.name_any();
    let key = crate::context::backoff_key(gs.as_ref());
    if gs.spec.suspend {
        return Ok(Action::await_change());
    }
    let interval = match &gs.spec.interval {
        Some(i) => plumb_core::parse_duration(i).map_err(|e| format!("spec.interval: {e}")),
        None => Ok(DEFAULT_INTERVAL),
    };

    // An invalid interval is reported in the status like any other failure.
    let result = match &interval {
        Ok(_) => fetch(&gs, &ctx, &ns, &name).await,
        Err(message) => Err(Error::Spec(message.clone())),
    };
    let interval = interval.unwrap_or(DEFAULT_INTERVAL);
    let elapsed = started.elapsed();
    let mut st = gs.status.clone().unwrap_or_default();
    st.observed_generation = gs.metadata.generation;
    st.last_handled_reconcile_at = requested_at(gs.as_ref());
    st.last_fetch_time = Some(status::now_rfc3339());
    // The Event of a new artifact follows the status write: the Syncs wait for the status.
    let mut new_artifact = None;
    let action = match result {
        Ok(artifact) => {
            ctx.metrics.observe_fetch(Outcome::Success, elapsed);
            ctx.metrics
                .observe_reconcile(ReconcileKind::GitSource, Outcome::Success, elapsed);
            ctx.reset_backoff(&key);
            let new_commit = st.artifact.as_ref().map(|a| &a.commit) != Some(&artifact.commit);
            if new_commit {
                tracing::info!(revision = %artifact.revision, "fetched and verified a new revision");
            }
            let mut message = format!("stored artifact for revision {}", artifact.revision);
            if gs.spec.insecure && plumb_source::fetch::is_http(&gs.spec.url) {
                message
                    .push_str(" (insecure: fetched over plain http, without transport security)");
            }
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
            if new_commit {
                let signer = artifact
                    .signer
                    .as_deref()
                    .map(|s| format!(", signed by {s}"))
                    .unwrap_or_default();
                new_artifact = Some(format!("{message}{signer}"));
            }
            st.artifact = Some(artifact);
            Action::requeue(interval)
        }
        Err(e) => {
            ctx.metrics.observe_fetch(Outcome::Failure, elapsed);
            ctx.metrics
                .observe_reconcile(ReconcileKind::GitSource, Outcome::Failure, elapsed);
            if e.is_verification_failure() {
                ctx.metrics.verification_failed();
            }
            let message = e.to_string();
            tracing::warn!(object = %key, error = %message, "fetch failed");
            status::set_failed(
                &mut st.conditions,
                e.reason(),
                &message,
                e.is_retryable(),
                st.observed_generation,
            );
            ctx.event(gs.as_ref(), true, e.reason(), &message).await;
            Action::requeue(ctx.backoff(&key).min(interval))
        }
    };
    ctx.write_status::<GitSource>(&ns, &name, &st).await?;
    if let Some(message) = new_artifact {
        ctx.event(gs.as_ref(), false, "NewArtifact", message).await;
    }
    Ok(action)
}

/// The value of the reconcile-request annotation, if any.
pub fn requested_at<K: ResourceExt>(obj: &K) -> Option<String> {
    obj.annotations()
        .get(crate::api::RECONCILE_REQUEST_ANNOTATION)
        .cloned()
}

/// Fetches, verifies and exports the GitSource's ref; returns the artifact for the status.
async fn fetch(gs: &GitSource, ctx: &Context, ns: &str, name: &str) -> Result<SourceArtifact> {
    let previous = gs.status.as_ref().and_then(|s| s.artifact.as_ref());
    let (mut request, _secrets) = request_for(gs, ctx, None).await?;
    request.verify = verify_policy(gs, ctx, ns).await?;
    let own = ctx
        .artifacts
        .get(ns, name)
        .filter(|r| r.verified)
        .map(|r| r.commit.clone());
    if request.verify.is_some() {
        // Range verification starts at the last commit this agent verified: in memory, else
        // in the ledger of the agent's namespace (out of tenants' reach; it survives restarts
        // and leader changes), and only without either at the status, which whoever may patch
        // it can set (the tip is checked anyway, and only a descendant of it passes).
        let recorded = match &own {
            Some(c) => Some(c.clone()),
            None => ledger_get(ctx, ns, name).await,
        };
        request.last_verified = recorded.or_else(|| {
            previous
                .map(|a| a.commit.clone())
                .filter(|c| is_commit_id(c))
        });
    }
    let git_ref = request.git_ref.clone();
    // The current artifact's unchanged files are linked into the new export, not written
    // again; its handle keeps its directory in place until the export is done.
    let (reused, reuse) = ctx.artifacts.reuse(ns, name).unzip();
    request.reuse = reuse;
    // A staging directory of this operation's own; stored atomically, or removed on drop.
    let staging = ctx.artifacts.staging(ns, name)?;
    let artifact = ctx.fetcher.fetch(&request, &staging.path()).await?;
    drop(reused);
    if request.verify.is_some() && own.as_deref() != Some(artifact.commit.as_str()) {
        ledger_put(ctx, ns, name, &artifact.commit).await;
    }
    {
        let (ns, name, commit, digest, verified) = (
            ns.to_owned(),
            name.to_owned(),
            artifact.commit.clone(),
            artifact.tree_digest.clone(),
            request.verify.is_some(),
        );
        let store = ctx.artifacts.clone();
        let files = artifact.entries.clone();
        tokio::task::spawn_blocking(move || {
            store.store(&ns, &name, staging, &commit, &digest, verified)?;
            // What a Sync compares to skip a render whose files did not change.
            store.record_files(&ns, &name, &commit, files);
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Io {
            context: "storing the artifact".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    }

    let tip = artifact
        .verification
        .as_ref()
        .and_then(|v| v.commits.iter().find(|c| c.commit == artifact.commit));
    let author = match tip {
        Some(c) => Some(c.author.clone()),
        None => {
            // Read as an object: a `git` process would honour the cache repository's config.
            let (repo, commit) = (ctx.fetcher.repo_path(&request.url), artifact.commit.clone());
            tokio::task::spawn_blocking(move || {
                plumb_source::verify::commit_author(&repo, &commit).ok()
            })
            .await
            .ok()
            .flatten()
        }
    };
    Ok(SourceArtifact {
        revision: format!("{git_ref}@sha1:{}", artifact.commit),
        commit: artifact.commit.clone(),
        tree_digest: Some(artifact.tree_digest.clone()),
        author,
        signer: tip.map(|c| format!("{} ({})", c.signer, c.fingerprint)),
    })
}

/// The ConfigMap in the agent's namespace that records, per GitSource (key
/// `<namespace>.<name>`), the last commit the agent verified: where range verification
/// resumes after a restart or a change of leader. Tenants cannot write the agent's namespace;
/// they may be able to write a GitSource's status.
pub const VERIFIED_LEDGER: &str = "plumb-verified-commits";

fn ledger_key(ns: &str, name: &str) -> String {
    // Namespaces are DNS labels (no dots), so the key is unambiguous.
    format!("{ns}.{name}")
}

/// The ledger's commit for `ns/name`, if the agent keeps a ledger and it has one.
async fn ledger_get(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let agent_ns = ctx.config.agent_namespace.as_deref()?;
    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), agent_ns)
        .get_opt(VERIFIED_LEDGER)
        .await
        .map_err(|e| tracing::warn!(error = %e, "cannot read the verified-commit ledger"))
        .ok()??;
    cm.data?
        .remove(&ledger_key(ns, name))
        .filter(|c| is_commit_id(c))
}

/// Records `commit` as the last verified commit of `ns/name`. A failure is logged: after a
/// restart, range verification would then start from the status instead.
async fn ledger_put(ctx: &Context, ns: &str, name: &str, commit: &str) {
    let Some(agent_ns) = ctx.config.agent_namespace.as_deref() else {
        return;
    };
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), agent_ns);
    let key = ledger_key(ns, name);
    let patch = serde_json::json!({ "data": { key.clone(): commit } });
    let result = match api
        .patch(
            VERIFIED_LEDGER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": VERIFIED_LEDGER,
                    "labels": { "app.kubernetes.io/part-of": "plumb" }
                },
                "data": { key: commit }
            }))
            .expect("a ConfigMap");
            api.create(&kube::api::PostParams::default(), &cm)
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(source = %format!("{ns}/{name}"), error = %e, "cannot record the verified commit");
    }
}

/// Removes the ledger's entry of `ns/name` (the GitSource was deleted: one created under the
/// same name starts a new range). Returns whether the ledger holds no entry for it now.
pub(crate) async fn ledger_remove(ctx: &Context, ns: &str, name: &str) -> bool {
    let Some(agent_ns) = ctx.config.agent_namespace.as_deref() else {
        return true;
    };
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), agent_ns);
    let patch = serde_json::json!({ "data": { ledger_key(ns, name): null } });
    match api
        .patch(
            VERIFIED_LEDGER,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) => {
            tracing::warn!(source = %format!("{ns}/{name}"), error = %e, "cannot remove the verified commit from the ledger");
            false
        }
    }
}

/// Whether `text` is a full commit id (SHA-1 or SHA-256, lower-case hex).
pub fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The artifact a Sync may render for the GitSource whose status names `artifact`: only one
/// this agent fetched (and, with `spec.verify`, verified) itself, of exactly that commit.
/// Anything else is not ready yet: the GitSource reconciler (which runs for every source when
/// the agent starts) produces it. The caller holds the handle while it renders.
pub fn own_artifact(
    ctx: &Context,
    source: &GitSource,
    artifact: &SourceArtifact,
) -> Result<Arc<crate::artifacts::Artifact>> {
    let ns = source.namespace().unwrap_or_default();
    let name = source.name_any();
    if !is_commit_id(&artifact.commit) {
        return Err(Error::NotReady(format!(
            "GitSource {ns}/{name} reports an artifact whose commit is not a commit id; \
             waiting for this agent to fetch it"
        )));
    }
    let Some(record) = ctx.artifacts.get(&ns, &name) else {
        return Err(Error::NotReady(format!(
            "GitSource {ns}/{name} has not been fetched by this agent yet"
        )));
    };
    if record.commit != artifact.commit {
        return Err(Error::NotReady(format!(
            "GitSource {ns}/{name} reports commit {}, but this agent fetched {}; waiting for \
             the GitSource to be reconciled",
            artifact.commit, record.commit
        )));
    }
    if source.spec.verify.is_some() && !record.verified {
        return Err(Error::NotReady(format!(
            "GitSource {ns}/{name} requires verification and commit {} was fetched before \
             it did; waiting for it to be verified",
            record.commit
        )));
    }
    Ok(record)
}

/// A fetch request for the GitSource (credentials from its Secret). The returned directory
/// holds key files for ssh and must live until the fetch is done.
async fn request_for(
    gs: &GitSource,
    ctx: &Context,
    pinned: Option<GitRef>,
) -> Result<(SourceRequest, Option<tempfile::TempDir>)> {
    let ns = gs.namespace().unwrap_or_default();
    let git_ref = match pinned {
        Some(r) => r,
        None => {
            let r = gs.spec.git_ref.clone().unwrap_or_default();
            match (r.branch, r.tag, r.semver, r.commit) {
                (_, _, _, Some(c)) => GitRef::Commit(c),
                (_, _, Some(s), None) => GitRef::Semver(s),
                (_, Some(t), None, None) => GitRef::Tag(t),
                (Some(b), None, None, None) => GitRef::Branch(b),
                (None, None, None, None) => GitRef::Branch("main".to_owned()),
            }
        }
    };
    // Refused before any fetch: nothing reaches the disk or the network.
    check_local(gs, ctx, &ns)?;
    let mut request = SourceRequest::new(gs.spec.url.clone(), git_ref);
    request.limits = ctx.config.export_limits;
    request.options.allow_insecure_http = gs.spec.insecure;
    if gs.spec.insecure && gs.spec.secret_ref.is_some() {
        return Err(Error::Spec(format!(
            "GitSource {ns}/{}: insecure (plain http) cannot be combined with secretRef: the \
             credentials would travel in clear text; use https",
            gs.name_any()
        )));
    }
    if let Some(ignore) = &gs.spec.ignore {
        request.ignore = ignore.lines().map(str::to_owned).collect();
    }
    let Some(secret_ref) = &gs.spec.secret_ref else {
        return Ok((request, None));
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&secret_ref.name)
        .await
        .map_err(|source| Error::Api {
            context: format!("reading Secret {ns}/{}", secret_ref.name),
            source,
        })?
        .ok_or_else(|| {
            Error::Spec(format!(
                "Secret {ns}/{} (secretRef) does not exist",
                secret_ref.name
            ))
        })?;
    check_credential_hosts(&gs.spec.url, &secret, &ns, &secret_ref.name)?;
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let files = tempfile::tempdir().map_err(|e| Error::Io {
        context: "creating a directory for credentials".into(),
        source: e,
    })?;
    let write = |file: &str, content: &str| -> Result<PathBuf> {
        let path = files.path().join(file);
        std::fs::write(&path, content).map_err(|e| Error::Io {
            context: format!("writing {file}"),
            source: e,
        })?;
        set_private(&path);
        Ok(path)
    };
    if let Some(ca) = get("caFile").or_else(|| get("ca.crt")) {
        request.options.ca_file = Some(write("ca.crt", &ca)?);
    }
    request.options.credentials = if let Some(identity) = get("identity") {
        let known_hosts = get("known_hosts").ok_or_else(|| {
            Error::Spec(format!(
                "Secret {ns}/{} has an ssh identity but no known_hosts",
                secret_ref.name
            ))
        })?;
        let mut identity = identity;
        if !identity.ends_with('\n') {
            identity.push('\n');
        }
        Credentials::Ssh {
            private_key: write("identity", &identity)?,
            known_hosts: write("known_hosts", &known_hosts)?,
        }
    } else if let Some(token) = get("bearerToken") {
        Credentials::Bearer {
            token: token.into(),
        }
    } else if let Some(password) = get("password") {
        Credentials::Basic {
            username: get("username").unwrap_or_else(|| "git".to_owned()),
            password: password.into(),
        }
    } else {
        Credentials::None
    };
    Ok((request, Some(files)))
}

/// Refuses a local path or `file://` URL unless the agent allows local sources.
fn check_local(gs: &GitSource, ctx: &Context, ns: &str) -> Result<()> {
    if ctx.config.allow_local_sources || !policy::is_local_url(&gs.spec.url) {
        return Ok(());
    }
    Err(Error::Spec(format!(
        "GitSource {ns}/{}: url {:?} is a local path or file:// URL, which this agent refuses \
         (it would read the agent's own disk); use an https:// or ssh:// URL, or start the \
         agent with {} (single-tenant setups only)",
        gs.name_any(),
        gs.spec.url,
        policy::ALLOW_LOCAL_SOURCES_FLAG
    )))
}

/// Refuses to send the credentials of Secret `ns/name` to a host its
/// [`policy::CREDENTIAL_HOSTS_ANNOTATION`] does not name (a tenant could otherwise name any
/// Secret of its namespace and send it to a server of its choosing).
pub(crate) fn check_credential_hosts(
    url: &str,
    secret: &Secret,
    ns: &str,
    name: &str,
) -> Result<()> {
    let annotation = policy::CREDENTIAL_HOSTS_ANNOTATION;
    let Some(target) = policy::url_host(url) else {
        return Err(Error::Spec(format!(
            "Secret {ns}/{name} (secretRef) cannot be used with {url:?}: the URL names no host \
             to bind the credentials to (annotation {annotation})"
        )));
    };
    let allowed = secret.annotations().get(annotation);
    if allowed.is_some_and(|a| policy::credential_hosts_allow(a, &target)) {
        return Ok(());
    }
    let host = &target.host;
    let hint = match allowed {
        None => format!("it has no annotation {annotation}"),
        Some(a) => format!("its annotation {annotation} ({a:?}) does not name {host}"),
    };
    Err(Error::Spec(format!(
        "Secret {ns}/{name} (secretRef) may not be sent to host {target}: {hint}; if the \
         credentials are meant for that host, annotate the Secret: kubectl -n {ns} annotate \
         secret {name} {annotation}={host}"
    )))
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// The verification policy of the GitSource, from its Secrets/ConfigMaps.
async fn verify_policy(gs: &GitSource, ctx: &Context, ns: &str) -> Result<Option<VerifyPolicy>> {
    let Some(spec) = &gs.spec.verify else {
        return Ok(None);
    };
    let mut policy = VerifyPolicy {
        mode: match spec.mode {
            crate::api::VerifyMode::Head => VerifyMode::Head,
            crate::api::VerifyMode::Range => VerifyMode::Range,
        },
        ..VerifyPolicy::default()
    };
    if let Some(r) = &spec.allowed_signers_ref {
        let text = read_key(ctx, ns, r).await?;
        policy.allowed_signers = AllowedSigners::parse(&text)
            .map_err(|e| Error::Spec(format!("allowed signers in {}: {e}", describe(r))))?;
    }
    if let Some(r) = &spec.keyring_ref {
        let text = read_key(ctx, ns, r).await?;
        policy.keyring = Keyring::from_armored(&text)
            .map_err(|e| Error::Spec(format!("keyring in {}: {e}", describe(r))))?;
    }
    if let Some(r) = &spec.policy_ref {
        let text = read_key(ctx, ns, r).await?;
        policy.paths = PathPolicy::parse_yaml(&text)
            .map_err(|e| Error::Spec(format!("path policy in {}: {e}", describe(r))))?;
    }
    if policy.allowed_signers.is_empty() && policy.keyring.is_empty() {
        return Err(Error::Spec(
            "spec.verify needs allowedSignersRef or keyringRef".to_owned(),
        ));
    }
    Ok(Some(policy))
}

fn describe(r: &KeyReference) -> String {
    format!(
        "{} {}/{}",
        r.kind.as_deref().unwrap_or("ConfigMap"),
        r.name,
        r.key
    )
}

/// Reads one key of a Secret or ConfigMap in `ns`.
async fn read_key(ctx: &Context, ns: &str, r: &KeyReference) -> Result<String> {
    let missing = || {
        Error::Spec(format!(
            "{} in namespace {ns} does not exist or lacks the key",
            describe(r)
        ))
    };
    let api_err = |source| Error::Api {
        context: format!("reading {}", describe(r)),
        source,
    };
    if r.kind.as_deref() == Some("Secret") {
        let s = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map_err(api_err)?
            .ok_or_else(missing)?;
        let bytes = s
            .data
            .unwrap_or_default()
            .remove(&r.key)
            .ok_or_else(missing)?;
        Ok(String::from_utf8_lossy(&bytes.0).into_owned())
    } else {
        let c = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map_err(api_err)?
            .ok_or_else(missing)?;
        c.data
            .unwrap_or_default()
            .remove(&r.key)
            .ok_or_else(missing)
    }
}
