//! The subcommands: thin faces over plumb-render and plumb-kube.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use comfy_table::{Table, presets::NOTHING};
use indicatif::{ProgressBar, ProgressStyle};
use plumb_core::{
    Action, ChangeSet, HealthVerdict, Manifest, ObjectKey, SyncId, to_yaml, unified_diff,
};
use plumb_kube::{ConfigMapInventory, Engine, Progress, StoredState, SyncOptions};
use plumb_render::{Capabilities, ChartOptions, ValuesLayer};

use crate::source::Fetched;
use serde_json::json;

use crate::cli::{
    Cli, Command, DiffArgs, Global, HelmArgs, Output, RenderArgs, Root, SyncArgs, Target,
};

/// Runs one command and maps its outcome to the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Render(args) => render(&cli.global, &args).await.map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => crate::source::verify(&args),
        Command::Revert(args) => crate::source::revert(&args),
        Command::Agent(args) => crate::agent::run(&cli.global, &args).await,
        Command::Manage(cmd) => crate::manage::run(&cli.global, cmd).await,
        Command::Sync(args) => sync(&cli.global, &args).await,
        Command::Diff(args) => match diff(&cli.global, &args).await {
            Ok(code) => Ok(code),
            Err(e) => {
                report(&e);
                return ExitCode::from(2);
            }
        },
    };
    outcome.unwrap_or_else(|e| {
        report(&e);
        ExitCode::FAILURE
    })
}

fn report(e: &anyhow::Error) {
    eprintln!("error: {e:#}");
}

/// The source root for `dir` (`--root`, else the Git work tree holding `dir`, else `dir`
/// itself), `dir` relative to it, and a note for error messages.
fn locate(dir: &Path, root: &Root) -> Result<(PathBuf, PathBuf, &'static str)> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open directory {}", dir.display()))?;
    // Like the agent, which renders a path of the repository with the whole repository as
    // the root, so that a Kustomize overlay may use bases in sibling directories.
    let (root, note) = match &root.root {
        Some(r) => (
            r.canonicalize()
                .with_context(|| format!("cannot open root directory {}", r.display()))?,
            "",
        ),
        None => match dir.ancestors().find(|a| a.join(".git").exists()) {
            Some(work_tree) => (work_tree.to_path_buf(), ""),
            None => (
                dir.clone(),
                "; no Git work tree holds it, so nothing outside it may be read: pass --root to \
                 allow more",
            ),
        },
    };
    let relative = dir
        .strip_prefix(&root)
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is not inside the root {}",
                dir.display(),
                root.display()
            )
        })?
        .to_path_buf();
    Ok((root, relative, note))
}

/// A `--values` file named relative to the working directory, as a path relative to `root`
/// (the renderer then refuses symlinks on the way and anything else it refuses in a source).
fn values_file_in_root(file: &Path, root: &Path) -> Result<PathBuf> {
    let absolute = std::env::current_dir()
        .context("reading the working directory")?
        .join(file);
    let name = absolute
        .file_name()
        .with_context(|| format!("values file {} names no file", file.display()))?;
    let parent = absolute
        .parent()
        .unwrap_or(Path::new("/"))
        .canonicalize()
        .with_context(|| format!("cannot open values file {}", file.display()))?;
    let relative = parent.strip_prefix(root).map_err(|_| {
        anyhow::anyhow!(
            "values file {} is outside the root {}: values files must be inside the source \
             (pass --root to widen it)",
            file.display(),
            root.display()
        )
    })?;
    Ok(relative.join(name))
}

/// Chart options from the Helm flags over `base` (release, namespace, capabilities); values
/// files as they are given when `cwd_relative` is false (relative to a Git source's root).
fn chart_options(
    helm: &HelmArgs,
    root: &Path,
    cwd_relative: bool,
    base: ChartOptions,
) -> Result<ChartOptions> {
    let mut opts = base;
    if let Some(name) = &helm.release_name {
        opts.release_name = Some(name.clone());
    }
    opts.include_crds = helm.include_crds;
    for file in &helm.values {
        opts.values_files.push(if cwd_relative {
            values_file_in_root(file, root)?
        } else {
            file.clone()
        });
    }
    for (i, set) in helm.set_json.iter().enumerate() {
        let origin = format!("--set-json #{}", i + 1);
        let (path, json) = set
            .split_once('=')
            .with_context(|| format!("{origin}: expected PATH=JSON, e.g. image.tag=\"v2\""))?;
        let value: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("{origin}: the value after `=` is not JSON"))?;
        opts.values
            .push(ValuesLayer::at_path(&origin, path, value)?);
    }
    Ok(opts)
}

/// What to render: a source root, the path below it and the options; with the temporary
/// copy (a chart's fetched dependencies, or a chart from --chart-url) it renders from, kept
/// until the render is done.
struct Prepared {
    root: PathBuf,
    relative: PathBuf,
    opts: plumb_render::RenderOptions,
    /// `rendering DIR (root ROOT)` and the like, for errors.
    context: String,
    _copy: Option<plumb_source::chart::ChartCopy>,
    remote: Option<crate::charts::RemoteChart>,
}

impl Prepared {
    /// With `helm.lookup`: starts the lookup proxy (its discovery knowing the kinds of the
    /// CRDs in the chart's `crds/` as it will be rendered: fetched dependencies and a chart
    /// from --chart-url included) and lets the render use it; the proxy must live until the
    /// render is done.
    async fn with_lookup(
        &mut self,
        helm: &HelmArgs,
        client: &kube::Client,
    ) -> Result<Option<plumb_kube::LookupProxy>> {
        let dir = self.root.join(&self.relative);
        let proxy = lookup_proxy(helm, client, Some(&dir)).await?;
        self.opts.chart.lookup = lookup_access(proxy.as_ref());
        Ok(proxy)
    }

    fn render(&self) -> Result<Vec<Manifest>> {
        plumb_render::render_path(&self.root, &self.relative, &self.opts)
            .with_context(|| self.context.clone())
    }
}

/// Prepares rendering `dir`, reading nothing outside `root` (default: the Git work tree
/// holding `dir`, else `dir` itself); a chart with the Helm flags over `base`, its missing
/// dependencies fetched into a temporary copy (the directory is only read).
async fn prepare_dir(
    dir: &Path,
    root: &Root,
    helm: &HelmArgs,
    charts: &crate::charts::ChartRepoArgs,
    base: ChartOptions,
) -> Result<Prepared> {
    let (root, relative, note) = locate(dir, root)?;
    let shown = dir.display().to_string();
    let chart = is_chart(dir);
    let opts = plumb_render::RenderOptions {
        chart: if chart || helm.given() {
            chart_options(helm, &root, true, base)?
        } else {
            ChartOptions::default()
        },
        ..plumb_render::RenderOptions::default()
    };
    let context = format!("rendering {shown} (root {}{note})", root.display());
    let copy = match chart {
        true => {
            crate::charts::with_dependencies(
                &root,
                &relative,
                &opts.chart.values_files,
                charts,
                &shown,
            )
            .await?
        }
        false => None,
    };
    Ok(Prepared {
        root: copy.as_ref().map_or(root, |c| c.root()),
        relative,
        opts,
        context,
        _copy: copy,
        remote: None,
    })
}

/// Prepares rendering the chart --chart-url names, fetched into a temporary directory with
/// the Helm flags over `base` (--values files are read from where they are).
async fn prepare_remote(
    helm: &HelmArgs,
    charts: &crate::charts::ChartRepoArgs,
    base: ChartOptions,
) -> Result<Prepared> {
    let remote = crate::charts::fetch(charts, &helm.values).await?;
    let mut opts = chart_options(helm, &remote.root, false, base)?;
    // The copies beside the chart, in the same order.
    opts.values_files = remote.values_files.clone();
    Ok(Prepared {
        root: remote.root.clone(),
        relative: PathBuf::from(crate::charts::RemoteChart::PATH),
        opts: plumb_render::RenderOptions {
            chart: opts,
            ..plumb_render::RenderOptions::default()
        },
        context: format!("rendering {}", remote.describe()),
        _copy: None,
        remote: Some(remote),
    })
}

fn is_chart(dir: &Path) -> bool {
    dir.join(plumb_render::CHART_FILE).exists()
}

/// What the cluster tells a chart's `.Capabilities`: its version and served API versions.
async fn capabilities(engine: &Engine) -> Result<Capabilities> {
    let version = engine
        .client()
        .apiserver_version()
        .await
        .context("reading the cluster's version for the chart's .Capabilities")?;
    let kinds = engine.kinds().await?;
    Ok(Capabilities {
        kube_version: Some(version.git_version),
        api_versions: kinds.api_versions(),
    })
}

/// A read-only proxy for a chart's `lookup`, as the client's identity, when `helm.lookup`;
/// its discovery lists the kinds of the CRDs in the chart directory `dir` (its `crds/` and
/// its subcharts'), so that the chart's own custom resources render before the cluster
/// serves them.
async fn lookup_proxy(
    helm: &HelmArgs,
    client: &kube::Client,
    dir: Option<&Path>,
) -> Result<Option<plumb_kube::LookupProxy>> {
    if !helm.lookup {
        return Ok(None);
    }
    let kinds = dir
        .filter(|d| is_chart(d))
        .map(plumb_render::chart_crd_kinds)
        .unwrap_or_default();
    let proxy = plumb_kube::LookupProxy::start_with_kinds(
        client.clone(),
        plumb_kube::LookupLimits::default(),
        kinds,
    )
    .await
    .context("starting the proxy for the chart's lookup")?;
    Ok(Some(proxy))
}

fn lookup_access(proxy: Option<&plumb_kube::LookupProxy>) -> Option<plumb_render::LookupAccess> {
    proxy.map(|p| plumb_render::LookupAccess {
        server: p.url(),
        token: p.token().to_owned(),
    })
}

/// Runs a render: on this thread, or, while a lookup proxy serves Helm from this runtime,
/// as blocking work that leaves the runtime's other threads to the proxy.
fn rendering<T>(proxy: Option<&plumb_kube::LookupProxy>, f: impl FnOnce() -> T) -> T {
    match proxy {
        Some(_) => tokio::task::block_in_place(f),
        None => f(),
    }
}

async fn render(global: &Global, args: &RenderArgs) -> Result<()> {
    if args.helm.lookup && (args.kube_version.is_some() || !args.api_versions.is_empty()) {
        anyhow::bail!(
            "--lookup renders against the cluster, which tells the chart its version and API \
             versions: leave out --kube-version and --api-versions"
        );
    }
    let client = match args.helm.lookup {
        true => Some(
            plumb_kube::client(global.kubeconfig.as_deref(), global.context.as_deref())
                .await
                .context("connecting to the cluster for --lookup")?,
        ),
        false => None,
    };
    let base = ChartOptions {
        namespace: args.namespace.clone(),
        capabilities: (args.kube_version.is_some() || !args.api_versions.is_empty()).then(|| {
            Capabilities {
                kube_version: args.kube_version.clone(),
                api_versions: args.api_versions.clone(),
            }
        }),
        ..ChartOptions::default()
    };
    let mut prepared = match &args.dir {
        Some(dir) => prepare_dir(dir, &args.root, &args.helm, &args.charts, base).await?,
        None => prepare_remote(&args.helm, &args.charts, base).await?,
    };
    let proxy = match &client {
        Some(client) => prepared.with_lookup(&args.helm, client).await?,
        None => None,
    };
    let manifests = rendering(proxy.as_ref(), || prepared.render())?;
    drop(prepared);
    drop(proxy);
    let mut out = std::io::stdout().lock();
    for m in &manifests {
        writeln!(out, "---")?;
        let yaml = to_yaml(&m.object);
        out.write_all(yaml.as_bytes())?;
        if !yaml.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// A target, loaded: client, sync identity, stored state, desired state and, with `--git`,
/// the fetched (and verified) revision.
struct Loaded {
    engine: Engine,
    sync: SyncId,
    store: ConfigMapInventory,
    state: StoredState,
    desired: Vec<Manifest>,
    fetched: Option<Fetched>,
    /// With --chart-url: what was fetched, for humans.
    remote: Option<String>,
}

async fn load(global: &Global, target: &Target) -> Result<Loaded> {
    // A local directory is rendered first: a broken one is reported without touching the
    // cluster. A Git source needs the last applied revision (the start of the verification
    // range) from the cluster first.
    // A chart waits for the cluster: its `.Capabilities` come from there.
    if target.git.git.is_some() && target.charts.chart_url.is_some() {
        anyhow::bail!("give either --git or --chart-url, not both");
    }
    let local = match &target.dir {
        Some(dir) if !is_chart(dir) => Some(
            prepare_dir(
                dir,
                &target.root,
                &target.helm,
                &target.charts,
                ChartOptions::default(),
            )
            .await?
            .render()?,
        ),
        _ => None,
    };
    let client = plumb_kube::client(global.kubeconfig.as_deref(), global.context.as_deref())
        .await
        .context("connecting to the cluster")?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let engine = Engine::new(client.clone());
    let chart_base = |capabilities| ChartOptions {
        release_name: Some(target.name.clone()),
        namespace: Some(namespace.clone()),
        capabilities: Some(capabilities),
        ..ChartOptions::default()
    };
    let sync = SyncId::new(namespace.clone(), target.name.clone());
    let store = ConfigMapInventory::new(client.clone(), &sync);
    let state = store.load_state().await?;
    let mut remote = None;
    let (desired, fetched) = match (local, &target.dir, &target.git.git) {
        (Some(desired), _, _) => (desired, None),
        (None, Some(dir), _) => {
            let base = chart_base(capabilities(&engine).await?);
            let mut prepared =
                prepare_dir(dir, &target.root, &target.helm, &target.charts, base).await?;
            let proxy = prepared.with_lookup(&target.helm, &client).await?;
            let desired = rendering(proxy.as_ref(), || prepared.render())?;
            (desired, None)
        }
        (None, None, None) if target.charts.chart_url.is_some() => {
            let base = chart_base(capabilities(&engine).await?);
            let mut prepared = prepare_remote(&target.helm, &target.charts, base).await?;
            let proxy = prepared.with_lookup(&target.helm, &client).await?;
            let desired = rendering(proxy.as_ref(), || prepared.render())?;
            remote = prepared.remote.as_ref().map(|r| r.describe());
            (desired, None)
        }
        (None, None, Some(url)) => {
            let fetched = crate::source::fetch(&target.git, url, state.revision.clone()).await?;
            let root = &fetched.artifact.dir;
            let path = target.git.path.as_deref().unwrap_or(Path::new(""));
            let chart = if is_chart(&root.join(path)) || target.helm.given() {
                let base = chart_base(capabilities(&engine).await?);
                chart_options(&target.helm, root, false, base)?
            } else {
                ChartOptions::default()
            };
            let copy = match is_chart(&root.join(path)) {
                true => {
                    let shown = format!("{} of {}", path.display(), fetched.describe());
                    crate::charts::with_dependencies(
                        root,
                        path,
                        &chart.values_files,
                        &target.charts,
                        &shown,
                    )
                    .await?
                }
                false => None,
            };
            let render_root = copy.as_ref().map_or_else(|| root.clone(), |c| c.root());
            let mut chart = chart;
            // Runs until the render is done.
            let proxy = lookup_proxy(&target.helm, &client, Some(&render_root.join(path))).await?;
            chart.lookup = lookup_access(proxy.as_ref());
            let opts = plumb_render::RenderOptions {
                chart,
                ..plumb_render::RenderOptions::default()
            };
            let desired = rendering(proxy.as_ref(), || {
                plumb_render::render_path(&render_root, path, &opts)
            })
            .with_context(|| format!("rendering {}", fetched.describe()))?;
            drop(copy);
            (desired, Some(fetched))
        }
        (None, None, None) => anyhow::bail!("give a directory, --git URL or --chart-url URL"),
    };
    Ok(Loaded {
        engine,
        sync,
        store,
        state,
        desired,
        fetched,
        remote,
    })
}

fn sync_options(sync: SyncId, target: &Target) -> SyncOptions {
    let mut opts = SyncOptions::new(sync);
    opts.allow_empty = target.allow_empty;
    opts
}

async fn sync(global: &Global, args: &SyncArgs) -> Result<ExitCode> {
    let Loaded {
        engine,
        sync,
        store,
        state,
        desired,
        fetched,
        remote,
    } = load(global, &args.target).await?;
    if let Some(f) = &fetched {
        eprintln!("source: {}", f.describe());
    }
    if let Some(chart) = &remote {
        eprintln!("source: {chart}");
    }
    let mut opts = sync_options(sync.clone(), &args.target);
    opts.prune = args.prune;
    opts.force_conflicts = args.force_conflicts;
    opts.adopt = args.adopt;
    opts.dry_run = args.dry_run;
    opts.concurrency = args.concurrency.max(1);
    opts.timeout = args.timeout;
    // Helm's upgrade hooks run once this sync unit applied a revision.
    opts.upgrade = Some(state.revision.is_some() || !state.inventory.is_empty());

    let bar = Bar::new();
    let report = engine.sync(desired, &state.inventory, &opts, &bar).await;
    bar.finish();
    let report = report?;
    if !args.dry_run {
        let revision = match &fetched {
            Some(f) if !report.changes.has_failures() => Some(f.artifact.commit.clone()),
            _ => state.revision.clone(),
        };
        let new_state = StoredState {
            inventory: report.inventory.clone(),
            revision,
        };
        // A no-op sync writes nothing at all, not even the inventory.
        if new_state != state {
            store.save_state(&new_state).await?;
        }
    }

    let mut health = Vec::new();
    let mut wait_error = None;
    if args.wait && !args.dry_run && !report.changes.has_failures() {
        let waiting = HealthWait::new(report.applied.len());
        let waited = engine
            .wait_healthy_with(&report.applied, args.timeout, &waiting)
            .await;
        waiting.finish();
        match waited {
            Ok(verdicts) => health = verdicts,
            Err(plumb_kube::Error::Unhealthy {
                verdicts,
                unhealthy,
                seconds,
            }) => {
                health = verdicts;
                wait_error = Some(format!(
                    "timed out after {seconds}s waiting for health; not healthy:\n{}",
                    unhealthy.join("\n")
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }

    print_changes(
        &sync,
        fetched.as_ref().map(|f| &f.artifact),
        &report.changes,
        &report.failures,
        &health,
        args.output,
        args.dry_run,
    )?;
    if let Some(failure) = report.error() {
        // Each failed object with its file:line, kind of refusal and the server's reason.
        eprintln!(
            "error: sync {}/{} failed: {failure}",
            sync.namespace, sync.name
        );
        return Ok(ExitCode::FAILURE);
    }
    if let Some(message) = wait_error {
        eprintln!("error: {message}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_changes(
    sync: &SyncId,
    source: Option<&plumb_source::Artifact>,
    changes: &ChangeSet,
    failures: &[plumb_kube::ObjectError],
    health: &[(ObjectKey, HealthVerdict)],
    output: Output,
    dry_run: bool,
) -> Result<()> {
    let health_of = |key: &ObjectKey| health.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let failure_of = |key: &ObjectKey| failures.iter().find(|f| &f.object == key).map(|f| f.kind);
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json | Output::Yaml => {
            let entries: Vec<_> = changes
                .entries
                .iter()
                .map(|c| {
                    let mut v = json!({
                        "object": c.key,
                        "id": c.key.to_string(),
                        "action": c.action.as_str(),
                    });
                    if let Some(m) = &c.message {
                        v["message"] = json!(m);
                    }
                    if let Some(kind) = failure_of(&c.key) {
                        v["failure"] = json!(kind.as_str());
                    }
                    if let Some(h) = health_of(&c.key) {
                        v["health"] = json!(h);
                    }
                    v
                })
                .collect();
            let doc = json!({
                "sync": { "namespace": sync.namespace, "name": sync.name },
                "source": source,
                "dryRun": dry_run,
                "changes": entries,
                "summary": changes.counts(),
            });
            out.write_all(output.render(&doc)?.as_bytes())?;
        }
        Output::Table => {
            let mut table = Table::new();
            table.load_style(NOTHING);
            let with_health = !health.is_empty();
            let mut header = vec!["OBJECT", "ACTION"];
            if with_health {
                header.push("HEALTH");
            }
            header.push("MESSAGE");
            table.set_header(header);
            for c in &changes.entries {
                let mut row = vec![c.key.to_string(), c.action.to_string()];
                if with_health {
                    row.push(
                        health_of(&c.key)
                            .map(|h| h.status.to_string())
                            .unwrap_or_default(),
                    );
                }
                let mut message = c.message.clone().unwrap_or_default();
                if let Some(h) = health_of(&c.key).filter(|_| message.is_empty()) {
                    message = h.reason.clone();
                }
                row.push(message);
                table.add_row(row);
            }
            writeln!(out, "{table}")?;
            let suffix = if dry_run { " (dry run)" } else { "" };
            writeln!(
                out,
                "sync {}/{}: {}{suffix}",
                sync.namespace,
                sync.name,
                changes.counts()
            )?;
        }
    }
    Ok(())
}

async fn diff(global: &Global, args: &DiffArgs) -> Result<ExitCode> {
    let loaded = load(global, &args.target).await?;
    let mut opts = sync_options(loaded.sync, &args.target);
    opts.prune = args.prune;
    let diffs = loaded
        .engine
        .diff(loaded.desired, &loaded.state.inventory, &opts)
        .await?;
    let color = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut any = false;
    for d in &diffs {
        if let Some(text) = unified_diff(&d.key, d.live.as_ref(), d.desired.as_ref(), color) {
            any = true;
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A progress bar on a terminal, nothing otherwise.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        Self(Some(bar))
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// How many awaited objects a health wait shows at once.
const AWAITED_SHOWN: usize = 5;

/// Shows a health wait: on a terminal, a bar of the healthy objects and below it the first few
/// still awaited with their health; elsewhere a line on stderr when that changes (at most every
/// few seconds: a wait of a thousand objects must not flood a CI log).
struct HealthWait {
    bar: Option<ProgressBar>,
    /// The last line printed (not on a terminal) and when.
    last: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// The least time between two lines of a health wait that is not on a terminal.
const WAIT_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl HealthWait {
    /// A display for a wait of `total` objects.
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} waiting for health [{bar:30}] {pos}/{len} healthy ({elapsed})\n{msg}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            last: std::sync::Mutex::new(None),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `  Deployment/demo/web: Progressing: 1 of 2 updated replicas are available` for the first
/// [`AWAITED_SHOWN`] of `pending`, and how many more there are.
fn awaited_lines(pending: &[(ObjectKey, HealthVerdict)]) -> Vec<String> {
    let mut lines: Vec<String> = pending
        .iter()
        .take(AWAITED_SHOWN)
        .map(|(key, v)| format!("  {key}: {}: {}", v.status, v.reason))
        .collect();
    if pending.len() > AWAITED_SHOWN {
        lines.push(format!("  ... and {} more", pending.len() - AWAITED_SHOWN));
    }
    lines
}

impl Progress for HealthWait {
    fn waiting(&self, pending: &[(ObjectKey, HealthVerdict)], total: usize) {
        let healthy = total - pending.len();
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(healthy as u64);
            bar.set_message(awaited_lines(pending).join("\n"));
            return;
        }
        if pending.is_empty() {
            return;
        }
        let text = format!(
            "waiting for health: {healthy} of {total} healthy; awaiting:\n{}",
            awaited_lines(pending).join("\n")
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let due = match &*last {
            None => true,
            Some((previous, at)) => *previous != text && at.elapsed() >= WAIT_LINE_EVERY,
        };
        if due {
            eprintln!("{text}");
            *last = Some((text, std::time::Instant::now()));
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: usize) {
        if let Some(bar) = &self.0 {
            bar.set_length(total as u64);
        }
    }

    fn done(&self, key: &ObjectKey, action: Action) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!("{key} {action}"));
            bar.inc(1);
        }
    }

    fn reports_waiting(&self) -> bool {
        false
    }
}
