//! `plumb-bench flux`: Flux against Plumb on the same workload, one after the other.
//!
//! Both read one https repository (the test Git server: basic auth, its own CA) of N apps in
//! S directories; Flux runs source-controller and kustomize-controller (built by `scripts/flux`)
//! and one Kustomization per directory, Plumb runs `plumb agent` and one Sync per directory;
//! both as local processes against the control plane, with prune, wait, the same interval and
//! the same concurrency. Each system starts on freshly created namespaces, which are deleted
//! (and waited for) afterwards. Then a minimal client applies the same objects as fast as the
//! API server takes them: the ceiling.

mod ceiling;
mod measure;
mod report;
mod systems;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use plumb_testsupport::git::{GitServers, Identity, Repo, Signing, WorkTree};

use self::measure::{Measured, Repository, Run};
use self::report::{Size, report};
use self::systems::{Running, Workload};
use crate::apps::{app_name, generate, set_revision};
use crate::cli::{FluxArgs, System};
use crate::process::{clock_ticks, ensure_tools, plumb_binary};
use crate::testenv::ControlPlane;

/// Namespace of the sources and Kustomizations/Syncs; the targets are `<CTL>-NN`.
const CTL: &str = "bench-flux";

/// Runs the benchmark and prints its report.
pub async fn run(args: FluxArgs) -> anyhow::Result<()> {
    ensure_tools()?;
    let plumb = plumb_binary()?;
    if args.systems.contains(&System::Flux) {
        let dir = args
            .flux_dir
            .as_deref()
            .context("Flux is not built: run through scripts/bench (PLUMB_FLUX_DIR)")?;
        for name in ["source-controller", "kustomize-controller"] {
            let bin = dir.join("bin").join(name);
            if !crate::process::is_executable(&bin) {
                bail!("{} is missing: scripts/flux build makes it", bin.display());
            }
        }
    }
    let plane = ControlPlane::find_or_start().await?;
    let workdir = tempfile::Builder::new()
        .prefix("plumb-bench-flux-")
        .tempdir()
        .context("cannot create a work directory")?;
    let result = tokio::select! {
        r = sizes(&args, &plane, &plumb, workdir.path()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let names = namespaces(args.syncs);
    if let Err(e) = clean(plane.client(), &names).await {
        log!("warning: cleaning up: {e:#}");
    }
    if args.keep_dir {
        let kept = workdir.keep();
        log!("work files (logs) kept in {}", kept.display());
    } else {
        drop(workdir);
    }
    plane.finish().await;
    let sizes = result?;
    print!("{}", report(&args, &sizes));
    Ok(())
}

/// The control namespace and the target namespaces.
fn namespaces(syncs: u32) -> Vec<String> {
    let mut out = vec![CTL.to_owned()];
    out.extend((0..syncs).map(|s| format!("{CTL}-{s:02}")));
    out
}

async fn sizes(
    args: &FluxArgs,
    plane: &ControlPlane,
    plumb: &Path,
    workdir: &Path,
) -> anyhow::Result<Vec<Size>> {
    let client = plane.client();
    let ticks = clock_ticks().await;
    log!("installing the CRDs of Flux and Plumb");
    if let Some(dir) = &args.flux_dir {
        for entry in std::fs::read_dir(dir.join("crds"))? {
            plumb_testsupport::kube::apply_crds(client, &entry?.path()).await?;
        }
    }
    crate::process::run(plane.command(plumb).args(["install", "--crds-only"])).await?;
    let servers = GitServers::start().context("starting the Git servers")?;
    let ca = std::fs::read_to_string(servers.ca_cert_path())?;
    let mut out = Vec::new();
    for (i, &apps) in args.apps.iter().enumerate() {
        let per_sync = apps / args.syncs;
        let objects = (apps * 4) as usize;
        log!(
            "{apps} apps ({objects} objects) in {} directories",
            args.syncs
        );
        let repo = servers.create_repo(&format!("fleet-{i}"))?;
        let mut fleet = Fleet::new(&repo, args.syncs, per_sync)?;
        let names = namespaces(args.syncs);
        let w = Workload {
            url: servers.https_url(&format!("fleet-{i}")),
            username: servers.username().to_owned(),
            password: servers.password().to_owned(),
            ca: ca.clone(),
            ctl: CTL.to_owned(),
            targets: names[1..].to_vec(),
            interval: args.interval.clone(),
            concurrency: args.concurrency,
        };
        let interval = parse_interval(&args.interval)?;
        let mut size = Size {
            apps,
            objects,
            results: Vec::new(),
            ceiling: None,
        };
        for &system in &args.systems {
            clean(client, &names).await?;
            create_namespaces(client, &names).await?;
            let dir = workdir.join(format!("{apps}-{}", system.label().to_lowercase()));
            std::fs::create_dir_all(&dir)?;
            log!("{}: starting", system.label());
            let mut running = Running::start(
                system,
                &w,
                args.flux_dir.as_deref(),
                plumb,
                plane.envs(),
                &dir,
            )
            .await?;
            let measured = measure_one(
                client,
                &w,
                &mut running,
                &mut fleet,
                args,
                ticks,
                objects,
                per_sync,
                apps,
                interval,
            )
            .await;
            if measured.is_err() {
                log!("logs:\n{}", running.log_tails());
            }
            running.stop().await;
            size.results.push((system, measured?));
        }
        if args.ceiling_concurrency > 0 {
            clean(client, &names).await?;
            create_namespaces(client, &names).await?;
            log!(
                "the API server's ceiling: {objects} objects applied by a minimal client, {} at once",
                args.ceiling_concurrency
            );
            let all = ceiling::objects(apps, per_sync, &w.targets)?;
            let seconds = ceiling::apply_all(client, all, args.ceiling_concurrency).await?;
            log!("  {seconds:.1}s");
            size.ceiling = Some(seconds);
        }
        clean(client, &names).await?;
        out.push(size);
    }
    drop(servers);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn measure_one(
    client: &Client,
    w: &Workload,
    running: &mut Running,
    fleet: &mut Fleet,
    args: &FluxArgs,
    ticks: f64,
    objects: usize,
    per_sync: u32,
    apps: u32,
    interval: Duration,
) -> anyhow::Result<Measured> {
    let label = running.system.label();
    let mut m = Measured::default();
    let commit = fleet.head()?;
    let mut r = Run {
        client,
        w,
        running,
        ticks,
        objects,
        per_sync,
        apps,
    };
    log!("{label}: cold start");
    r.cold(&commit, &mut m).await?;
    log!(
        "  all Ready in {:.1}s, objects written in {}, {:.1} CPU s, {} API requests",
        m.ready,
        m.written
            .map_or_else(|| "?".to_owned(), |s| format!("{s:.1}s")),
        m.cpu,
        m.cold_requests
    );
    r.settle().await?;
    log!("{label}: reconcile request, nothing changed");
    m.reconcile = r.reconcile_request().await?;
    log!("  {:.1}s", m.reconcile);
    r.settle().await?;
    if let Some(why) = rest_too_short(args.rest, interval) {
        log!("{label}: at rest: not measured ({why})");
    } else {
        log!("{label}: at rest, {}s", args.rest);
        let per_minute = r.at_rest(args.rest).await?;
        log!("  {per_minute:.0} requests per minute");
        m.rest_per_minute = Some(per_minute);
    }
    log!("{label}: {} manual edits", args.edits);
    m.edits = r.edits(args.edits, interval).await?;
    log!(
        "{label}: {} commits, each with a reconcile request",
        args.commits
    );
    m.commits = r.commits(fleet, args.commits).await?;
    m.peak_rss = r.running.rss_mib()?.1;
    Ok(m)
}

/// Why an at-rest window of `rest` seconds says nothing about a system that reconciles every
/// `interval`, if it does not: a shorter window may fall between two reconciles (a 30 s window
/// showed Flux at 4 requests a minute with a 1 m interval, 693 to 1,190 with a whole minute).
fn rest_too_short(rest: u64, interval: Duration) -> Option<String> {
    (Duration::from_secs(rest) < interval).then(|| {
        format!(
            "the window, --rest {rest}s, is shorter than the interval, {}s",
            interval.as_secs()
        )
    })
}

/// `30s`, `1m`, `1h`, `1m30s` as a duration.
fn parse_interval(text: &str) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .with_context(|| format!("invalid interval {text:?}"))?;
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => bail!("invalid interval {text:?}: use s, m or h"),
        };
    }
    if !number.is_empty() {
        bail!("invalid interval {text:?}: a number needs a unit");
    }
    Ok(Duration::from_secs(total))
}

/// The repository of apps and a work tree of it.
struct Fleet {
    repo: Repo,
    work: WorkTree,
    per_sync: u32,
    revision: u64,
}

impl Fleet {
    fn new(repo: &Repo, syncs: u32, per_sync: u32) -> anyhow::Result<Self> {
        let mut work = repo.work_tree()?;
        work.set_author(Identity::new("Bench", "bench@plumb.dev"));
        work.set_committer(Identity::new("Bench", "bench@plumb.dev"));
        for s in 0..syncs {
            let dir = work.path().join(Workload::path(s as usize));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            generate(&dir, per_sync, 0, s * per_sync)?;
        }
        work.commit("Add the apps", &Signing::None)?;
        work.push()?;
        Ok(Self {
            repo: repo.clone(),
            work,
            per_sync,
            revision: 0,
        })
    }
}

impl Repository for Fleet {
    fn head(&self) -> anyhow::Result<String> {
        self.repo.rev_parse("main")
    }

    fn commit_change(&mut self, app: u32) -> anyhow::Result<String> {
        self.revision += 1;
        let revision = self.revision;
        let relative = format!(
            "{}/{}.yaml",
            Workload::path((app / self.per_sync) as usize),
            app_name(app)
        );
        let path = self.work.path().join(&relative);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.work.write(&relative, set_revision(&text, revision))?;
        self.work.commit(
            &format!("{}: revision {revision}", app_name(app)),
            &Signing::None,
        )?;
        self.work.push()?;
        Ok(revision.to_string())
    }
}

/// Creates `names`.
async fn create_namespaces(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in names {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } }))?;
        api.create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    crate::cluster::settle(client).await
}

/// Deletes `names` (releasing the finalizers of Flux's and Plumb's objects first: their
/// controllers are stopped) and waits until they are gone.
async fn clean(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut any = false;
    for ns in names {
        if api.get_opt(ns).await?.is_none() {
            continue;
        }
        any = true;
        for system in [System::Flux, System::Plumb] {
            let kinds = system.kinds();
            for ar in [&kinds.sync, &kinds.source] {
                plumb_testsupport::kube::release_finalizers(&Api::namespaced_with(
                    client.clone(),
                    ns,
                    ar,
                ))
                .await?;
            }
        }
        match api.delete(ns, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {ns}")),
        }
    }
    if !any {
        return Ok(());
    }
    log!("deleting the namespaces and waiting until they are gone");
    let deadline = Instant::now() + Duration::from_secs(900);
    for ns in names {
        while api.get_opt(ns).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {ns} was not deleted within 900s");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_parsed_as_go_writes_them() {
        assert_eq!(
            parse_interval("1m").expect("valid"),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_interval("1m30s").expect("valid"),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_interval("2h").expect("valid"),
            Duration::from_secs(7200)
        );
        assert!(parse_interval("90").is_err());
        assert!(parse_interval("1d").is_err());
    }

    #[test]
    fn an_at_rest_window_shorter_than_the_interval_is_not_measured() {
        let minute = Duration::from_secs(60);
        assert!(rest_too_short(30, minute).is_some_and(|why| why.contains("--rest 30s")));
        assert_eq!(rest_too_short(60, minute), None);
        assert_eq!(rest_too_short(90, minute), None);
    }
}
