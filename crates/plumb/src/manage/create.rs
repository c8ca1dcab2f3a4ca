//! `plumb create source|sync`: build the typed object, then apply it or print it.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use plumb_agent::api::{
    DependencyReference, DriftMode, GitRefSpec, GitSource, GitSourceSpec, HelmSpec, KeyReference,
    LocalObjectReference, SourceReference, Sync, SyncSpec, ValuesReference, VerifyMode, VerifySpec,
};
use serde::Serialize;

use super::{
    FIELD_MANAGER, NamespaceArg, connect, duration_text, namespace_offline, write_stdout,
    yaml_documents,
};
use crate::cli::Global;

/// What to create.
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// A GitSource: a repository, a ref, and the signatures its commits must carry.
    #[command(alias = "gitsource")]
    Source(Box<SourceArgs>),
    /// A Sync: applies a directory of a GitSource to the cluster and keeps it there.
    Sync(Box<SyncArgs>),
}

/// Arguments of `plumb create source`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("git_ref").args(["branch", "tag", "semver", "commit"])))]
pub struct SourceArgs {
    /// Name of the GitSource.
    pub name: String,
    /// Repository URL: https://..., ssh://user@host[:port]/path or file:///path.
    #[arg(long)]
    pub url: String,
    /// Branch to follow (default: main).
    #[arg(long)]
    pub branch: Option<String>,
    /// Tag to check out.
    #[arg(long)]
    pub tag: Option<String>,
    /// Semver range over tags, e.g. ">=1.2.0 <2.0.0": the highest matching tag wins.
    #[arg(long)]
    pub semver: Option<String>,
    /// Full commit id to pin.
    #[arg(long)]
    pub commit: Option<String>,
    /// How often to fetch (e.g. 1m, 5m; default 5m).
    #[arg(long, value_parser = duration_text)]
    pub interval: Option<String>,
    /// Secret with the credentials (https: username + password or bearerToken; ssh: identity
    /// + known_hosts), in the GitSource's namespace.
    ///
    /// It must be annotated `plumb.dev/credential-hosts=<the URL's host>`: the agent sends it
    /// to no other host.
    #[arg(long, value_name = "NAME")]
    pub secret_ref: Option<String>,
    /// Verify the fetched commit only (head) or every new commit (range; default when any
    /// --verify-*-ref is given).
    #[arg(long, value_enum)]
    pub verify_mode: Option<VerifyModeArg>,
    /// SSH allowed signers (git's allowed_signers format), as [KIND/]NAME/KEY of a Secret or
    /// ConfigMap, e.g. ConfigMap/signers/allowed_signers.
    #[arg(long, value_name = "KIND/NAME/KEY", value_parser = key_reference)]
    pub verify_allowed_signers_ref: Option<KeyReference>,
    /// Armored OpenPGP public keys, as [KIND/]NAME/KEY.
    #[arg(long, value_name = "KIND/NAME/KEY", value_parser = key_reference)]
    pub verify_keyring_ref: Option<KeyReference>,
    /// Per-path signer rules, as [KIND/]NAME/KEY.
    #[arg(long, value_name = "KIND/NAME/KEY", value_parser = key_reference)]
    pub verify_policy_ref: Option<KeyReference>,
    /// Paths to leave out, in .gitignore syntax (several: separate by newlines).
    #[arg(long, value_name = "PATTERNS")]
    pub ignore: Option<String>,
    /// Allow a plain http:// URL (no transport security: verify signatures; never with
    /// --secret-ref).
    #[arg(long)]
    pub insecure: bool,
    /// Fetch at once when this webhook receiver gets a push for the repository (the agent's
    /// Secret `plumb-receiver-<NAME>` configures the receiver).
    #[arg(long, value_name = "NAME", value_parser = receiver_name)]
    pub receiver: Option<String>,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// Print the GitSource as YAML instead of applying it.
    #[arg(long)]
    pub export: bool,
}

/// `--verify-mode`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VerifyModeArg {
    /// Only the fetched commit must be signed by an allowed signer.
    Head,
    /// Every commit since the last applied one must be.
    Range,
}

/// `--drift`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DriftArg {
    /// Re-apply objects that were changed in the cluster.
    Correct,
    /// Report drifted objects, change nothing.
    Detect,
}

/// Arguments of `plumb create sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Name of the Sync.
    pub name: String,
    /// The GitSource to apply from: NAME, or NAMESPACE/NAME in another namespace.
    #[arg(long, value_name = "[NS/]NAME")]
    pub source: String,
    /// Directory inside the source (default: its root).
    #[arg(long, value_name = "DIR")]
    pub path: Option<String>,
    /// Delete objects that left Git (only those this Sync applied).
    #[arg(long)]
    pub prune: bool,
    /// Permit an empty directory to prune everything this Sync applied.
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
    /// How often to re-apply even without changes (e.g. 10m; default 10m).
    #[arg(long, value_parser = duration_text)]
    pub interval: Option<String>,
    /// What to do when the cluster drifts from Git (default: correct).
    #[arg(long, value_enum)]
    pub drift: Option<DriftArg>,
    /// A Sync that must be Ready first, as [NS/]NAME (repeat, or separate by commas).
    #[arg(long, value_name = "[NS/]NAME", value_delimiter = ',')]
    pub depends_on: Vec<String>,
    /// Namespace for namespaced objects that name none (default: the Sync's namespace).
    #[arg(long, value_name = "NS")]
    pub target_namespace: Option<String>,
    /// Apply as this ServiceAccount of the Sync's namespace (the Sync can do only what it may).
    #[arg(long, value_name = "SA")]
    pub service_account: Option<String>,
    /// Become Ready only when every applied object is healthy.
    #[arg(long)]
    pub wait: bool,
    /// Timeout of the agent's apply and health wait (e.g. 5m; default 5m).
    #[arg(long, value_parser = duration_text)]
    pub timeout: Option<String>,
    /// Take over objects that another Sync owns (by default they are a conflict).
    #[arg(long)]
    pub adopt: bool,
    #[command(flatten)]
    pub helm: SyncHelmArgs,
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// Print the Sync as YAML instead of applying it.
    #[arg(long)]
    pub export: bool,
}

/// `spec.helm` of `plumb create sync`: how the chart at --path renders. Values precedence,
/// lowest first: the chart's values.yaml, --values, --values-from, --set-json.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Helm charts (--path holds Chart.yaml)")]
pub struct SyncHelmArgs {
    /// The chart's `.Release.Name` (default: the Sync's name).
    #[arg(long, value_name = "NAME")]
    pub release_name: Option<String>,
    /// A values file in the source, relative to its root (not to --path); repeatable, a later
    /// one wins.
    #[arg(long = "values", value_name = "FILE")]
    pub values: Vec<String>,
    /// Values from a ConfigMap or Secret of the Sync's namespace, read with the Sync's
    /// service account: KIND/NAME (key values.yaml, a map of values), KIND/NAME/KEY, or
    /// KIND/NAME/KEY@PATH (the key's text as one string value at the dotted PATH); a trailing
    /// `?` skips it when missing. Repeatable, in order, e.g. `Secret/db/password@db.password`.
    #[arg(long, value_name = "KIND/NAME[/KEY][@PATH][?]", value_parser = values_reference)]
    pub values_from: Vec<ValuesReference>,
    /// Set one inline value as JSON at a dotted path, e.g. `--set-json 'image.tag="v2"'`
    /// (repeatable; inline values win over everything else).
    #[arg(long = "set-json", value_name = "PATH=JSON")]
    pub set_json: Vec<String>,
    /// Render the CRDs in the chart's `crds/` directories too (applied first, as every CRD).
    #[arg(long)]
    pub include_crds: bool,
    /// Let the chart's `lookup` read the cluster, read-only, as the Sync's identity (through
    /// a loopback proxy the agent runs for the render; default: lookup returns nothing).
    #[arg(long)]
    pub lookup: bool,
}

impl SyncHelmArgs {
    /// `spec.helm`, or `None` when no Helm flag was given.
    fn spec(&self) -> Result<Option<HelmSpec>> {
        let mut values = serde_json::Value::Null;
        for (i, set) in self.set_json.iter().enumerate() {
            let origin = format!("--set-json #{}", i + 1);
            let (path, json) = set
                .split_once('=')
                .with_context(|| format!("{origin}: expected PATH=JSON, e.g. image.tag=\"v2\""))?;
            let value: serde_json::Value = serde_json::from_str(json)
                .with_context(|| format!("{origin}: the value after `=` is not JSON"))?;
            let layer = plumb_render::ValuesLayer::at_path(&origin, path, value)?;
            merge_values(&mut values, layer.values);
        }
        let spec = HelmSpec {
            release_name: self.release_name.clone(),
            values_files: self.values.clone(),
            values_from: self.values_from.clone(),
            values: (!values.is_null()).then_some(values),
            include_crds: self.include_crds,
            lookup: self.lookup,
            post_renderers: Vec::new(),
            dependency_repositories: Vec::new(),
        };
        Ok((spec != HelmSpec::default()).then_some(spec))
    }
}

/// Merges `layer` into `into` as Helm merges values: maps deeply, anything else replaced.
fn merge_values(into: &mut serde_json::Value, layer: serde_json::Value) {
    match (into, layer) {
        (serde_json::Value::Object(base), serde_json::Value::Object(layer)) => {
            for (key, value) in layer {
                merge_values(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (slot, layer) => *slot = layer,
    }
}

/// `KIND/NAME[/KEY][@PATH][?]` of `--values-from`.
fn values_reference(text: &str) -> Result<ValuesReference, String> {
    let (rest, optional) = match text.strip_suffix('?') {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (rest, target_path) = match rest.split_once('@') {
        Some((rest, path)) if !path.is_empty() => (rest, Some(path.to_owned())),
        Some(_) => return Err(format!("{text:?}: a dotted path must follow `@`")),
        None => (rest, None),
    };
    let usage = || {
        format!(
            "{text:?}: use KIND/NAME, KIND/NAME/KEY or KIND/NAME/KEY@PATH (KIND ConfigMap or \
             Secret), e.g. ConfigMap/shop-values or Secret/db/password@db.password"
        )
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (kind, name, key) = match parts[..] {
        [kind, name] => (kind, name, None),
        [kind, name, key] => (kind, name, Some(key)),
        _ => return Err(usage()),
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "secret" => "Secret",
        "configmap" => "ConfigMap",
        _ => {
            return Err(format!(
                "{text:?}: kind {kind:?} must be ConfigMap or Secret"
            ));
        }
    };
    if name.is_empty() || key.is_some_and(str::is_empty) {
        return Err(usage());
    }
    if target_path.is_some() && key.is_none() {
        return Err(format!(
            "{text:?}: @PATH sets one key's text as a value: name the key (KIND/NAME/KEY@PATH)"
        ));
    }
    Ok(ValuesReference {
        kind: kind.to_owned(),
        name: name.to_owned(),
        values_key: key.map(str::to_owned),
        target_path,
        optional,
    })
}

pub async fn run(global: &Global, command: CreateCommand) -> Result<ExitCode> {
    match command {
        CreateCommand::Source(args) => {
            let ns = namespace_offline(global, args.namespace.namespace.as_deref()).await;
            let obj = git_source(&args, &ns)?;
            emit(global, obj, &ns, args.export).await
        }
        CreateCommand::Sync(args) => {
            let ns = namespace_offline(global, args.namespace.namespace.as_deref()).await;
            let obj = sync(&args, &ns)?;
            emit(global, obj, &ns, args.export).await
        }
    }
}

/// Builds the GitSource the flags describe.
pub fn git_source(args: &SourceArgs, namespace: &str) -> Result<GitSource> {
    let git_ref = GitRefSpec {
        branch: args.branch.clone(),
        tag: args.tag.clone(),
        semver: args.semver.clone(),
        commit: args.commit.clone(),
    };
    let has_ref = git_ref != GitRefSpec::default();
    let any_key = args.verify_allowed_signers_ref.is_some()
        || args.verify_keyring_ref.is_some()
        || args.verify_policy_ref.is_some();
    let verify = match (args.verify_mode, any_key) {
        (None, false) => None,
        (Some(_), false) => bail!(
            "--verify-mode needs the keys to verify with: --verify-allowed-signers-ref (SSH) or \
             --verify-keyring-ref (OpenPGP)"
        ),
        (mode, true) => {
            if args.verify_allowed_signers_ref.is_none() && args.verify_keyring_ref.is_none() {
                bail!(
                    "--verify-policy-ref names who may sign which paths, but the keys come from \
                     --verify-allowed-signers-ref or --verify-keyring-ref: give one of them"
                );
            }
            Some(VerifySpec {
                mode: match mode {
                    Some(VerifyModeArg::Head) => VerifyMode::Head,
                    Some(VerifyModeArg::Range) | None => VerifyMode::Range,
                },
                allowed_signers_ref: args.verify_allowed_signers_ref.clone(),
                keyring_ref: args.verify_keyring_ref.clone(),
                policy_ref: args.verify_policy_ref.clone(),
            })
        }
    };
    let spec = GitSourceSpec {
        url: args.url.clone(),
        git_ref: has_ref.then_some(git_ref),
        interval: args.interval.clone(),
        secret_ref: args
            .secret_ref
            .clone()
            .map(|name| LocalObjectReference { name }),
        verify,
        ignore: args.ignore.clone(),
        suspend: false,
        insecure: args.insecure,
    };
    let mut obj = GitSource::new(&args.name, spec);
    obj.metadata = meta(&args.name, namespace);
    if let Some(receiver) = &args.receiver {
        obj.metadata.annotations = Some(
            [(
                plumb_agent::webhook::RECEIVER_ANNOTATION.to_owned(),
                receiver.clone(),
            )]
            .into(),
        );
    }
    Ok(obj)
}

/// Builds the Sync the flags describe.
pub fn sync(args: &SyncArgs, namespace: &str) -> Result<Sync> {
    let (source_ns, source_name) = split_ref(&args.source, "--source")?;
    let depends_on = args
        .depends_on
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| {
            split_ref(d, "--depends-on")
                .map(|(namespace, name)| DependencyReference { name, namespace })
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = SyncSpec {
        source_ref: SourceReference {
            kind: Some("GitSource".to_owned()),
            name: source_name,
            namespace: source_ns,
        },
        path: args.path.clone(),
        interval: args.interval.clone(),
        prune: args.prune,
        allow_empty: args.allow_empty,
        wait: args.wait,
        timeout: args.timeout.clone(),
        depends_on,
        suspend: false,
        service_account_name: args.service_account.clone(),
        target_namespace: args.target_namespace.clone(),
        drift: match args.drift {
            Some(DriftArg::Detect) => DriftMode::Detect,
            Some(DriftArg::Correct) | None => DriftMode::Correct,
        },
        force: false,
        adopt: args.adopt,
        helm: args.helm.spec()?,
    };
    let mut obj = Sync::new(&args.name, spec);
    obj.metadata = meta(&args.name, namespace);
    Ok(obj)
}

/// A receiver name: what may follow `plumb-receiver-` in a Secret's name.
fn receiver_name(text: &str) -> Result<String, String> {
    let max = 253 - plumb_agent::webhook::RECEIVER_SECRET_PREFIX.len();
    let valid = !text.is_empty()
        && text.len() <= max
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a receiver name: lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit (it names the Secret \
             {}{text})",
            plumb_agent::webhook::RECEIVER_SECRET_PREFIX
        ))
    }
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    }
}

/// `NAME` or `NS/NAME`.
fn split_ref(text: &str, flag: &str) -> Result<(Option<String>, String)> {
    match text.split('/').collect::<Vec<_>>()[..] {
        [name] if !name.is_empty() => Ok((None, name.to_owned())),
        [ns, name] if !ns.is_empty() && !name.is_empty() => {
            Ok((Some(ns.to_owned()), name.to_owned()))
        }
        _ => bail!("{flag} {text:?}: use NAME or NAMESPACE/NAME"),
    }
}

/// `[KIND/]NAME/KEY` with KIND `Secret` or `ConfigMap` (any case; default ConfigMap).
pub(super) fn key_reference(text: &str) -> Result<KeyReference, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let (kind, name, key) = match parts[..] {
        [name, key] => ("ConfigMap", name, key),
        [kind, name, key] => {
            let kind = match kind.to_ascii_lowercase().as_str() {
                "secret" => "Secret",
                "configmap" => "ConfigMap",
                _ => return Err(format!("kind {kind:?} must be Secret or ConfigMap")),
            };
            (kind, name, key)
        }
        _ => {
            return Err(format!(
                "{text:?}: use KIND/NAME/KEY, e.g. ConfigMap/signers/allowed_signers"
            ));
        }
    };
    if name.is_empty() || key.is_empty() {
        return Err(format!("{text:?}: name and key must not be empty"));
    }
    Ok(KeyReference {
        kind: Some(kind.to_owned()),
        name: name.to_owned(),
        key: key.to_owned(),
    })
}

/// Prints `obj` as YAML, or applies it.
async fn emit<K>(global: &Global, obj: K, namespace: &str, export: bool) -> Result<ExitCode>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let value = serde_json::to_value(&obj).context("serialising the object")?;
    if export {
        write_stdout(&yaml_documents([&value]))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (client, _) = connect(global, Some(namespace)).await?;
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&());
    let api = Api::<K>::namespaced(client, namespace);
    let existed = api
        .get_opt(&name)
        .await
        .with_context(|| format!("reading {kind} {namespace}/{name} (are the CRDs installed? run `plumb install --crds-only`)"))?
        .is_some();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&value),
    )
    .await
    .with_context(|| format!("applying {kind} {namespace}/{name}"))?;
    let verb = if existed { "configured" } else { "created" };
    println!("✔ {kind} {namespace}/{name} {verb}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_references() {
        let r = key_reference("secret/keys/allowed_signers").unwrap();
        assert_eq!(r.kind.as_deref(), Some("Secret"));
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("keys", "allowed_signers")
        );
        assert_eq!(
            key_reference("signers/keys").unwrap().kind.as_deref(),
            Some("ConfigMap")
        );
        assert!(key_reference("Pod/a/b").is_err());
        assert!(key_reference("a").is_err());
        assert!(key_reference("ConfigMap//k").is_err());
    }

    #[test]
    fn values_references() {
        let r = values_reference("secret/db/password@db.password?").unwrap();
        assert_eq!(
            r,
            ValuesReference {
                kind: "Secret".into(),
                name: "db".into(),
                values_key: Some("password".into()),
                target_path: Some("db.password".into()),
                optional: true,
            }
        );
        let r = values_reference("ConfigMap/shop-values").unwrap();
        assert_eq!(
            (r.kind.as_str(), r.values_key, r.optional),
            ("ConfigMap", None, false)
        );
        for bad in [
            "shop-values",
            "Pod/a",
            "ConfigMap/a@x",
            "ConfigMap//k",
            "ConfigMap/a/k@",
            "ConfigMap/a/b/c",
        ] {
            assert!(values_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_json_merges_into_one_map() {
        let args = SyncHelmArgs {
            set_json: vec![
                r#"image={"repository":"web","tag":"v1"}"#.into(),
                r#"image.tag="v2""#.into(),
                "replicas=3".into(),
            ],
            ..SyncHelmArgs::default()
        };
        let spec = args.spec().unwrap().unwrap();
        assert_eq!(
            spec.values,
            Some(serde_json::json!({"image": {"repository": "web", "tag": "v2"}, "replicas": 3}))
        );
        assert_eq!(SyncHelmArgs::default().spec().unwrap(), None);
        let bad = SyncHelmArgs {
            set_json: vec!["image.tag=v2".into()],
            ..SyncHelmArgs::default()
        };
        let e = bad.spec().unwrap_err();
        assert!(format!("{e:#}").contains("--set-json #1"), "{e:#}");
    }

    #[test]
    fn references() {
        assert_eq!(split_ref("web", "--x").unwrap(), (None, "web".into()));
        assert_eq!(
            split_ref("infra/web", "--x").unwrap(),
            (Some("infra".into()), "web".into())
        );
        assert!(split_ref("a/b/c", "--x").is_err());
        assert!(split_ref("/b", "--x").is_err());
    }
}
