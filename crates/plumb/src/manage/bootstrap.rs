//! `plumb bootstrap`: install the agent, then point it at the repository that holds the
//! cluster's desired state (the agent's own manifests included), so that from then on Git
//! manages everything, Plumb too.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use plumb_agent::api::KeyReference;

use super::create::{self, DriftArg, VerifyModeArg, key_reference};
use super::duration_text;
use super::install::{self, InstallArgs};
use crate::cli::{Global, parse_duration};

/// Arguments of `plumb bootstrap`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("git_ref").args(["branch", "tag", "semver", "commit"])))]
pub struct BootstrapArgs {
    /// Repository URL: https://..., ssh://user@host[:port]/path or file:///path.
    #[arg(long, value_name = "URL")]
    pub git: String,
    /// Directory in the repository with the cluster's manifests (put the output of
    /// `plumb install --export` there too, and Plumb upgrades itself from Git).
    #[arg(long, value_name = "DIR")]
    pub path: String,
    /// Branch to follow (default: main).
    #[arg(long)]
    pub branch: Option<String>,
    /// Tag to check out.
    #[arg(long)]
    pub tag: Option<String>,
    /// Semver range over tags: the highest matching tag wins.
    #[arg(long)]
    pub semver: Option<String>,
    /// Full commit id to pin.
    #[arg(long)]
    pub commit: Option<String>,
    /// Secret with the Git credentials in the agent's namespace (create it first, annotated
    /// `plumb.dev/credential-hosts=<the URL's host>`).
    #[arg(long, value_name = "NAME")]
    pub secret_ref: Option<String>,
    /// Verify the fetched commit only (head) or every new commit (range, the default).
    #[arg(long, value_enum)]
    pub verify_mode: Option<VerifyModeArg>,
    /// SSH allowed signers, as [KIND/]NAME/KEY of a Secret or ConfigMap.
    #[arg(long, value_name = "KIND/NAME/KEY", value_parser = key_reference)]
    pub verify_allowed_signers_ref: Option<KeyReference>,
    /// Armored OpenPGP public keys, as [KIND/]NAME/KEY.
    #[arg(long, value_name = "KIND/NAME/KEY", value_parser = key_reference)]
    pub verify_keyring_ref: Option<KeyReference>,
    /// Per-path signer rules, as [KIND/]NAME/KEY.
    #[arg(long, value_name = "KIND/NAME/KEY", value_parser = key_reference)]
    pub verify_policy_ref: Option<KeyReference>,
    /// How often to fetch (default 1m).
    #[arg(long, default_value = "1m", value_parser = duration_text)]
    pub interval: String,
    /// Name of the GitSource and the Sync.
    #[arg(long, default_value = "plumb-system")]
    pub name: String,
    /// Namespace for the agent, the GitSource and the Sync.
    #[arg(long, default_value = "plumb-system")]
    pub namespace: String,
    /// Agent image (default: ghcr.io/plumb-dev/plumb at this plumb's version).
    #[arg(long)]
    pub image: Option<String>,
    /// Print everything as YAML instead of applying it.
    #[arg(long)]
    pub export: bool,
    /// How long to wait for the CRDs to become Established.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(global: &Global, args: &BootstrapArgs) -> Result<ExitCode> {
    let source = create::git_source(
        &create::SourceArgs {
            name: args.name.clone(),
            url: args.git.clone(),
            branch: args.branch.clone(),
            tag: args.tag.clone(),
            semver: args.semver.clone(),
            commit: args.commit.clone(),
            interval: Some(args.interval.clone()),
            secret_ref: args.secret_ref.clone(),
            verify_mode: args.verify_mode,
            verify_allowed_signers_ref: args.verify_allowed_signers_ref.clone(),
            verify_keyring_ref: args.verify_keyring_ref.clone(),
            verify_policy_ref: args.verify_policy_ref.clone(),
            ignore: None,
            insecure: false,
            receiver: None,
            namespace: super::NamespaceArg { namespace: None },
            export: args.export,
        },
        &args.namespace,
    )?;
    let sync = create::sync(
        &create::SyncArgs {
            name: args.name.clone(),
            source: args.name.clone(),
            path: Some(args.path.clone()),
            // The repository owns what it holds: objects removed from it are removed.
            prune: true,
            allow_empty: false,
            interval: Some("10m".to_owned()),
            drift: Some(DriftArg::Correct),
            depends_on: Vec::new(),
            target_namespace: None,
            service_account: None,
            wait: false,
            timeout: None,
            adopt: false,
            helm: create::SyncHelmArgs::default(),
            namespace: super::NamespaceArg { namespace: None },
            export: args.export,
        },
        &args.namespace,
    )?;
    let extra = [
        serde_json::to_value(&source).context("serialising the GitSource")?,
        serde_json::to_value(&sync).context("serialising the Sync")?,
    ];
    let install_args = InstallArgs {
        export: args.export,
        crds_only: false,
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        // The bootstrap Sync applies the cluster's own configuration from the agent's
        // namespace: it needs the agent's rights.
        multi_tenant: false,
        dry_run: false,
        timeout: args.timeout,
    };
    let code = install::install(global, &install_args, &extra).await?;
    if !args.export {
        println!(
            "✔ bootstrapped: the agent applies {} of {}; watch it with `plumb get syncs -n {}`",
            args.path, args.git, args.namespace
        );
    }
    Ok(code)
}
