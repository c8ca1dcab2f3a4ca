//! The Kubernetes API of Plumb: `GitSource`, `ChartSource` and `Sync` in group `plumb.dev`,
//! version `v1alpha1`.
//!
//! The CRD YAML under `deploy/crds.yaml` is generated from these types (`plumb install --export
//! --crds-only`); a test fails when the committed file is stale.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "plumb.dev";
/// Annotation that asks for an immediate reconcile; its value is any new token (e.g. a time).
pub const RECONCILE_REQUEST_ANNOTATION: &str = "plumb.dev/reconcile-requested-at";

// What the API server checks before anything reaches the agent (the agent checks again: an
// older CRD may be installed).

/// A Git URL: no whitespace, no leading `-` (which git would read as an option).
pub const URL_PATTERN: &str = r"^[^\s-][^\s]*$";
/// A duration as `plumb_core::parse_duration` reads it: `90` (seconds), `90s`, `5m`, `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+|([0-9]+[smh])+)$";
/// A full commit id: SHA-1 (40 hex digits) or SHA-256 (64), lowercase.
pub const COMMIT_PATTERN: &str = r"^[0-9a-f]{40}([0-9a-f]{24})?$";
/// A DNS subdomain (RFC 1123), as object names are: at most 253 characters.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A chart source URL: a Helm repository over https or an OCI registry, no whitespace.
pub const CHART_URL_PATTERN: &str = r"^(https|oci)://[^\s]+$";
/// A chart name as Helm allows it.
pub const CHART_NAME_PATTERN: &str = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$";
/// A DNS label (RFC 1123), as namespace names are: at most 63 characters.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A Git repository to fetch, at a ref, with the commit signatures it must carry.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "plumb.dev",
    version = "v1alpha1",
    kind = "GitSource",
    namespaced,
    status = "GitSourceStatus",
    shortname = "gs",
    category = "plumb",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.artifact.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":0,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceSpec {
    /// Repository URL: `https://...`, `ssh://user@host[:port]/path`, `user@host:path`;
    /// `file:///path` or a local path only where the agent runs with `--allow-local-sources`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = URL_PATTERN))]
    pub url: String,
    /// What to check out; default: branch `main`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<GitRefSpec>,
    /// How often to fetch, e.g. `1m`, `5m`, `1h` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Secret with credentials in the source's namespace: `username` + `password` (or
    /// `bearerToken`) and optionally `caFile` for https; `identity` (private key) and
    /// `known_hosts` for ssh. The Secret must carry the annotation
    /// `plumb.dev/credential-hosts` naming the URL's host (comma-separated `host` or
    /// `host:port`): credentials are sent to no other host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Commit signature verification; when set, nothing unverified is ever applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Paths to leave out of the artifact, in `.gitignore` syntax (added to `.plumbignore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,
    /// Stop fetching.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Allow a plain `http://` URL. There is no transport security: anyone on the network
    /// path can change what is fetched, so pair it with `verify`. Never together with
    /// `secretRef` (credentials would travel in clear text). The Ready message says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// The ref to check out: one of the fields (none: branch `main`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.branch), has(self.tag), has(self.semver), has(self.commit)].filter(x, x).size() <= 1"
).message("ref: set at most one of branch, tag, semver and commit"))]
pub struct GitRefSpec {
    /// A branch name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A tag name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A semver range over tags, e.g. `>=1.2.0 <2.0.0`: the highest matching tag wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// A full commit id (40 or 64 lowercase hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = COMMIT_PATTERN))]
    pub commit: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Its name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// A key of a Secret or ConfigMap in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyReference {
    /// `Secret` or `ConfigMap` (default `ConfigMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Secret", "ConfigMap"]))]
    pub kind: Option<String>,
    /// Its name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The data key.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Which commits must be signed, and by whom.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// `head`: the fetched commit must be signed by an allowed signer. `range` (default): every
    /// commit between the last applied one and the new one must be.
    #[serde(default)]
    pub mode: VerifyMode,
    /// SSH allowed signers, in git's `allowed_signers` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers_ref: Option<KeyReference>,
    /// Armored OpenPGP public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring_ref: Option<KeyReference>,
    /// Per-path rules: which signers may sign commits that touch a path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<KeyReference>,
}

/// Verification mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Only the fetched commit.
    Head,
    /// Every new commit.
    #[default]
    Range,
}

/// What a GitSource fetched last.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The latest fetched (and verified) revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<SourceArtifact>,
    /// When the last fetch finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<String>,
    /// The last reconcile request (annotation value) handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// The hooks of the apply under way, for its history entry (never written).
    #[serde(skip)]
    #[schemars(skip)]
    pub pending_hooks: Vec<String>,
}

/// A fetched revision.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceArtifact {
    /// `<ref>@sha1:<commit>`.
    pub revision: String,
    /// The commit id.
    #[schemars(regex(pattern = COMMIT_PATTERN))]
    pub commit: String,
    /// Digest of the exported tree (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_digest: Option<String>,
    /// Author of the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Who signed it (principal and key fingerprint), when verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// A Helm chart from a Helm repository over HTTPS (`index.yaml`) or an OCI registry, at an
/// exact version or the newest in a semver range. Syncs reference it like a GitSource and
/// render the chart at the artifact's root.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "plumb.dev",
    version = "v1alpha1",
    kind = "ChartSource",
    namespaced,
    status = "ChartSourceStatus",
    shortname = "cs",
    category = "plumb",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Chart","type":"string","jsonPath":".status.artifact.chart"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.artifact.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":0,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChartSourceSpec {
    /// `https://host/path` (a Helm repository: `index.yaml` below it) or
    /// `oci://host[:port]/path` (a registry; the chart is `path` when its last part is the
    /// chart's name, else `path/chart`).
    #[schemars(length(min = 1, max = 2048), regex(pattern = CHART_URL_PATTERN))]
    pub url: String,
    /// The chart's name (required for a Helm repository; for OCI default: the URL's last
    /// path part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = CHART_NAME_PATTERN))]
    pub chart: Option<String>,
    /// An exact version (`1.2.3`) or a semver range (`>=1.2.0 <2.0.0`, `^1.2`, `~1.2`, `1.x`):
    /// the newest matching version wins. Default: the newest version without a pre-release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub version: Option<String>,
    /// How often to look for a new version, e.g. `1m`, `5m`, `1h` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Secret with credentials in the source's namespace: `username` + `password` (basic
    /// auth; for a registry also the login of its token service), or `bearerToken`;
    /// optionally `caFile` (or `ca.crt`). As for a GitSource, the Secret must carry the
    /// annotation `plumb.dev/credential-hosts` naming the URL's host: credentials are sent to
    /// no other host (not after a redirect, not to a dependency or index entry elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// A Secret in the source's namespace whose `ca.crt` (or `caFile`) holds PEM
    /// certificates trusted besides the system's roots (no credentials needed for that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// Stop looking for new versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// What a ChartSource fetched last.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartSourceStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The chart version fetched last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ChartArtifact>,
    /// When the last check finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<String>,
    /// The last reconcile request (annotation value) handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// A fetched chart version.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartArtifact {
    /// `<version>@sha256:<digest>`: what Syncs record as the revision.
    pub revision: String,
    /// The chart's name.
    pub chart: String,
    /// The chart version.
    pub version: String,
    /// `sha256:...`: the archive's digest (Helm repository) or the manifest's (OCI).
    pub digest: String,
    /// Where the archive (HTTPS) or manifest (OCI, `oci://...:tag`) was fetched from.
    pub url: String,
    /// Digest of the unpacked chart (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_digest: Option<String>,
    /// Dependencies Plumb fetched into `charts/` (`name version digest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// When this version was fetched (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
}

/// Applies a path of a GitSource's artifact to the cluster and keeps it there.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "plumb.dev",
    version = "v1alpha1",
    kind = "Sync",
    namespaced,
    status = "SyncStatus",
    shortname = "psync",
    category = "plumb",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// The GitSource or ChartSource to apply from.
    pub source_ref: SourceReference,
    /// Directory inside the source (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often to re-apply even without changes, e.g. `10m` (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Delete objects that left Git (only those this Sync applied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prune: bool,
    /// Permit an empty render to prune everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
    /// Wait for the applied objects to be healthy before becoming Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
    /// Timeout of apply and health waits, e.g. `5m` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Syncs that must be Ready first (`name` or `namespace/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependencyReference>,
    /// Stop applying.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Apply as this ServiceAccount of the Sync's namespace (impersonation): the Sync can do
    /// only what the account may. Default: the agent's `--default-service-account`, else the
    /// agent itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub service_account_name: Option<String>,
    /// Namespace for namespaced objects that name none (default: the Sync's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub target_namespace: Option<String>,
    /// What to do when the cluster drifts from Git: `correct` (default) re-applies, `detect`
    /// only reports.
    #[serde(default)]
    pub drift: DriftMode,
    /// Take over fields that another applier owns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Take over objects that carry another Sync's ownership labels (by default such objects
    /// are a conflict naming the owner, and nothing is applied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// How to render the Helm chart at `path` (a directory holding `Chart.yaml`). A chart
    /// without this block renders with its own values, release name = the Sync's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmSpec>,
}

/// Helm rendering of a chart in the source (`helm template`, sandboxed: no plugins, no
/// network; dependencies are vendored in `charts/` or fetched by Plumb, see
/// `dependencyRepositories`). The release namespace
/// (`.Release.Namespace`) is `targetNamespace`, else the Sync's namespace. Values precedence,
/// lowest first: the chart's `values.yaml`, `valuesFiles`, `valuesFrom`, `values`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmSpec {
    /// `.Release.Name` (default: the Sync's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 53), regex(pattern = DNS_LABEL_PATTERN))]
    pub release_name: Option<String>,
    /// Values files in the source, relative to its root (not to `path`), in order: a later
    /// file wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// ConfigMaps and Secrets in the Sync's namespace holding values, merged after
    /// `valuesFiles` in order; read with the Sync's service account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,
    /// Inline values, merged last (they win over everything else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub values: Option<serde_json::Value>,
    /// Render the CRDs of the chart's `crds/` directories (applied first, like every CRD).
    #[serde(
        default,
        rename = "includeCRDs",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub include_crds: bool,
    /// Let the chart's `lookup` function read the cluster (default: off, and `lookup` returns
    /// nothing, as in `helm template`). Helm then reaches the API server only through a
    /// loopback proxy that Plumb runs for the render: reads (GET) only, as the identity the
    /// apply uses (`serviceAccountName`, else the agent's default service account, else the
    /// agent), so that identity's RBAC decides what the chart may read, Secrets included.
    /// Every kind the chart renders must then be known to the cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lookup: bool,
    /// Kustomize runs over the chart's output, in order (as Flux's
    /// `postRenderers[].kustomize`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_renderers: Vec<PostRendererSpec>,
    /// Credentials and CAs for the chart's dependencies. A dependency in `Chart.yaml` with an
    /// `https://` (Helm repository) or `oci://` repository that `charts/` lacks is fetched by
    /// Plumb before each render (the version from `Chart.lock` when it pins one, else the
    /// range in `Chart.yaml`; the limits of a ChartSource) into a copy of the chart, never by
    /// Helm: with the entry whose `url` has the dependency's origin (scheme, host, port),
    /// else anonymously with the system's roots. `file://` dependencies must be vendored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependency_repositories: Vec<DependencyRepositorySpec>,
}

/// Credentials and a CA for the chart dependencies of one origin.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DependencyRepositorySpec {
    /// `https://host[:port][/path]` or `oci://host[:port][/path]`: its origin (scheme, host,
    /// port) selects the dependencies this entry applies to.
    #[schemars(length(min = 1, max = 2048), regex(pattern = "^(https|oci)://"))]
    pub url: String,
    /// Secret in the Sync's namespace, read with the Sync's service account, as a
    /// ChartSource's `secretRef`: `username` + `password`, or `bearerToken`; optionally
    /// `caFile` (or `ca.crt`); the annotation `plumb.dev/credential-hosts` must name the
    /// URL's host. Sent to no other origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Secret in the Sync's namespace whose `ca.crt` (or `caFile`) holds PEM certificates
    /// trusted besides the system's roots for this origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
}

/// A ConfigMap or Secret key holding values.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// `ConfigMap` or `Secret`.
    #[schemars(extend("enum" = ["ConfigMap", "Secret"]))]
    pub kind: String,
    /// Its name, in the Sync's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The key (default `values.yaml`). Without `targetPath` it holds a YAML map of values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_key: Option<String>,
    /// Dotted path (`a.b.c`; `\.` for a dot inside a key) at which the key's text is set as
    /// one string value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// A missing object or key is skipped instead of failing the render.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// One post-renderer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostRendererSpec {
    /// Kustomize over the chart's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<KustomizePostRenderer>,
}

/// A kustomization whose only resource is the chart's output.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KustomizePostRenderer {
    /// Kustomize `patches`: strategic merge or JSON 6902 patches, with a target selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<KustomizePatch>,
    /// Kustomize `images`: image name, tag and digest overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<KustomizeImage>,
}

/// A Kustomize patch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KustomizePatch {
    /// The patch, YAML or JSON text.
    pub patch: String,
    /// Which objects it applies to (default: those the patch names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PatchSelector>,
}

/// Kustomize's patch target selector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchSelector {
    /// API group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (a regular expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace (a regular expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Annotation selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_selector: Option<String>,
}

/// A Kustomize image override.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KustomizeImage {
    /// The image name in the chart's output.
    pub name: String,
    /// Replacement name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    /// Replacement tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// Digest (replaces the tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Any map, kept as is (Helm values).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Reference to a GitSource or ChartSource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceReference {
    /// `GitSource` (the default) or `ChartSource` (the Sync renders the chart at the
    /// artifact's root; `path` defaults to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["GitSource", "ChartSource"]))]
    pub kind: Option<String>,
    /// Its name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Its namespace (default: the Sync's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
}

/// Reference to another Sync.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DependencyReference {
    /// Its name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Its namespace (default: the Sync's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub namespace: Option<String>,
}

/// Drift handling.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Re-apply drifted objects.
    #[default]
    Correct,
    /// Report drifted objects, change nothing.
    Detect,
}

/// What a Sync applied, and how it went.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The objects this Sync applied and owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryItem>,
    /// The revision last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The revision last tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// The last 10 applies, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// Objects that differ from Git right now (drift: detect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftedObject>,
    /// The last reconcile request (annotation value) handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// The hooks of the apply under way, for its history entry (never written).
    #[serde(skip)]
    #[schemars(skip)]
    pub pending_hooks: Vec<String>,
}

/// One owned object.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct InventoryItem {
    /// `Kind[.group]/[namespace/]name`.
    pub id: String,
    /// API version it was applied with.
    pub v: String,
}

/// One apply, for the audit trail.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The revision applied.
    pub revision: String,
    /// Commit author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Commit signer (principal and key), when verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// When it finished (RFC 3339).
    pub time: String,
    /// `success` or `failure`.
    pub result: String,
    /// Counts, e.g. `2 created, 1 configured, 5 unchanged`.
    pub changes: String,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Error message on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The hook objects the apply ran, in run order: `PHASE wave N OBJECT: RESULT[: NOTE]`
    /// (e.g. `pre wave 0 Job.batch/apps/migrate-x7k2p: succeeded: deleted (hook-succeeded)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
}

/// An object that differs from Git.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct DriftedObject {
    /// `Kind[.group]/[namespace/]name`.
    pub id: String,
    /// What differs (`modified`, `deleted`).
    pub reason: String,
}

/// The CRDs as one multi-document YAML, as `deploy/crds.yaml` holds them.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::from("# Generated from crates/plumb-agent/src/api.rs; do not edit.\n");
    for crd in [GitSource::crd(), ChartSource::crd(), Sync::crd()] {
        let value = serde_json::to_value(&crd).expect("a CRD serialises");
        out.push_str("---\n");
        out.push_str(&plumb_core::to_yaml(&value));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
