//! `plumb-bench sync`: `plumb sync` against `kubectl apply --server-side`.
//!
//! For each N it generates N apps into a temporary directory and measures, in one run:
//! `plumb sync DIR --name bench -n bench-plumb-N`, cold (objects absent) and no-op (again);
//! `kubectl apply --server-side -f DIR --recursive -n bench-kubectl-N`, cold and no-op; the
//! write requests each no-op made, from the API server's `apiserver_request_total`; plumb's
//! peak RSS (`/usr/bin/time -v`).
//!
//! Then the Helm row: a chart of `--chart-apps` apps (the same four objects each, from one
//! template ranging over `.Values.apps`), `plumb sync CHART` against `helm upgrade --install`
//! (each into a namespace of its own; Helm with its own empty config, cache and data
//! directories), cold and no-op, measured the same way.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::SyncArgs;
use crate::cluster::{delete_namespaces, fresh_namespace, request_counts, settle};
use crate::metrics::RequestDelta;
use crate::process::{Timed, ensure_tools, plumb_binary, timed};
use crate::testenv::ControlPlane;

/// The measurements of one N.
struct Row {
    apps: u32,
    objects: u32,
    plumb_cold: Duration,
    kubectl_cold: Duration,
    plumb_noop: Duration,
    kubectl_noop: Duration,
    /// Non-dry-run writes to the bench's resources during the no-op run (metric delta).
    plumb_noop_writes: i64,
    kubectl_noop_writes: i64,
    plumb_noop_unchanged: u64,
    plumb_rss_mib: Option<f64>,
}

/// The Helm row: one chart, plumb against `helm upgrade --install`.
struct HelmRow {
    objects: u32,
    plumb_cold: Duration,
    helm_cold: Duration,
    plumb_noop: Duration,
    helm_noop: Duration,
    plumb_noop_writes: i64,
    helm_noop_writes: i64,
    plumb_noop_unchanged: u64,
    plumb_rss_mib: Option<f64>,
}

/// Runs the benchmark for every `--apps` N and prints the table.
pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    ensure_tools()?;
    let helm = match args.chart_apps {
        0 => None,
        _ => Some(crate::process::which("helm").context(
            "helm is not on PATH (scripts/testenv build builds the pinned one into \
             ~/.cache/plumb/testenv/<version>/bin; --chart-apps 0 leaves the Helm row out)",
        )?),
    };
    let plumb = plumb_binary()?;
    let plane = ControlPlane::find_or_start().await?;
    let workdir = tempfile::Builder::new()
        .prefix("plumb-bench-")
        .tempdir()
        .context("cannot create a work directory")?;
    let mut sizes = args.apps.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut namespaces = Vec::new();
    let mut rows = Vec::new();
    let mut helm_row = None;
    let result = tokio::select! {
        r = async {
            for &apps in &sizes {
                namespaces.push(format!("bench-plumb-{apps}"));
                namespaces.push(format!("bench-kubectl-{apps}"));
                rows.push(bench_one(apps, &plumb, &plane, workdir.path(), args.replicas).await?);
            }
            if let Some(helm) = &helm {
                let apps = args.chart_apps;
                namespaces.push(format!("bench-plumb-chart-{apps}"));
                namespaces.push(format!("bench-helm-{apps}"));
                helm_row = Some(
                    bench_chart(apps, &plumb, helm, &plane, workdir.path(), args.replicas).await?,
                );
            }
            anyhow::Ok(())
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if !namespaces.is_empty() {
        delete_namespaces(plane.client(), &namespaces).await;
    }
    if args.keep_dir {
        let kept = workdir.keep();
        log!("manifests kept in {}", kept.display());
    } else {
        drop(workdir);
    }
    plane.finish().await;
    result?;
    print!("{}", report(&rows, helm_row.as_ref()));
    Ok(())
}

/// Action -> count from `plumb sync -o json`.
fn plumb_actions(stdout: &[u8]) -> anyhow::Result<BTreeMap<String, u64>> {
    let doc: serde_json::Value =
        serde_json::from_slice(stdout).context("plumb sync -o json printed no JSON")?;
    let mut counts = BTreeMap::new();
    for change in doc["changes"]
        .as_array()
        .context("no `changes` in plumb's output")?
    {
        let action = change["action"]
            .as_str()
            .context("a change without action")?;
        *counts.entry(action.to_owned()).or_default() += 1;
    }
    Ok(counts)
}

/// Settles, then runs the command; returns its run and the request-count delta.
async fn measured(
    plane: &ControlPlane,
    program: &Path,
    args: &[OsString],
    rss_file: Option<&Path>,
) -> anyhow::Result<(Timed, RequestDelta)> {
    settle(plane.client()).await?;
    let before = request_counts(plane.client()).await?;
    let run = timed(program, args, plane.envs(), rss_file).await?;
    let after = request_counts(plane.client()).await?;
    Ok((run, before.delta(&after)))
}

/// `plumb sync` twice, cold then as a no-op, each measured.
struct PlumbRuns {
    cold: Timed,
    noop: Timed,
    /// Writes during the no-op.
    noop_writes: i64,
    /// Objects the no-op reported unchanged.
    unchanged: u64,
}

impl PlumbRuns {
    /// The larger peak RSS of the two runs, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        [self.cold.peak_rss_kib, self.noop.peak_rss_kib]
            .into_iter()
            .flatten()
            .max()
    }
}

/// Runs `plumb` with `args` cold and again as a no-op, logging each (warning when the no-op
/// did not report all `objects` unchanged).
async fn plumb_cold_and_noop(
    plane: &ControlPlane,
    plumb: &Path,
    args: &[OsString],
    rss_files: [PathBuf; 2],
    labels: [String; 2],
    objects: u32,
) -> anyhow::Result<PlumbRuns> {
    let [rss_cold, rss_noop] = rss_files;
    let [cold_label, noop_label] = labels;
    log!("{cold_label}");
    let (cold, cold_req) = measured(plane, plumb, args, Some(&rss_cold)).await?;
    log!(
        "  {:.2}s, {:?}, requests {cold_req}",
        cold.elapsed.as_secs_f64(),
        plumb_actions(&cold.output.stdout)?
    );
    log!("{noop_label}");
    let (noop, noop_req) = measured(plane, plumb, args, Some(&rss_noop)).await?;
    let actions = plumb_actions(&noop.output.stdout)?;
    let unchanged = actions.get("unchanged").copied().unwrap_or(0);
    log!(
        "  {:.2}s, {actions:?}, requests {noop_req}",
        noop.elapsed.as_secs_f64()
    );
    if unchanged != u64::from(objects) {
        log!("  warning: only {unchanged} of {objects} objects unchanged on the no-op sync");
    }
    Ok(PlumbRuns {
        cold,
        noop,
        noop_writes: noop_req.writes,
        unchanged,
    })
}

async fn bench_one(
    apps: u32,
    plumb: &Path,
    plane: &ControlPlane,
    workdir: &Path,
    replicas: u32,
) -> anyhow::Result<Row> {
    let dir = workdir.join(format!("apps-{apps}"));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let objects = crate::apps::generate(&dir, apps, replicas, 0)?;
    let (ns_p, ns_k) = (
        format!("bench-plumb-{apps}"),
        format!("bench-kubectl-{apps}"),
    );
    for ns in [&ns_p, &ns_k] {
        fresh_namespace(plane.client(), ns).await?;
    }

    let os = |s: &str| OsString::from(s);
    let plumb_args = vec![
        os("sync"),
        dir.clone().into_os_string(),
        os("--name"),
        os("bench"),
        os("-n"),
        os(&ns_p),
        os("-o"),
        os("json"),
    ];
    let kubectl = crate::process::which("kubectl").context("kubectl is not installed")?;
    let kubectl_args = vec![
        os("apply"),
        os("--server-side"),
        os("-f"),
        dir.clone().into_os_string(),
        os("--recursive"),
        os("-n"),
        os(&ns_k),
    ];
    let p = plumb_cold_and_noop(
        plane,
        plumb,
        &plumb_args,
        [
            workdir.join(format!("rss-cold-{apps}")),
            workdir.join(format!("rss-noop-{apps}")),
        ],
        [
            format!("{apps} apps ({objects} objects): plumb cold"),
            format!("{apps} apps: plumb no-op"),
        ],
        objects,
    )
    .await?;

    log!("{apps} apps: kubectl cold");
    let (k_cold, k_cold_req) = measured(plane, &kubectl, &kubectl_args, None).await?;
    log!(
        "  {:.2}s, requests {k_cold_req}",
        k_cold.elapsed.as_secs_f64()
    );
    log!("{apps} apps: kubectl no-op");
    let (k_noop, k_noop_req) = measured(plane, &kubectl, &kubectl_args, None).await?;
    log!(
        "  {:.2}s, requests {k_noop_req}",
        k_noop.elapsed.as_secs_f64()
    );

    Ok(Row {
        apps,
        objects,
        plumb_cold: p.cold.elapsed,
        kubectl_cold: k_cold.elapsed,
        plumb_noop: p.noop.elapsed,
        kubectl_noop: k_noop.elapsed,
        plumb_noop_writes: p.noop_writes,
        kubectl_noop_writes: k_noop_req.writes,
        plumb_noop_unchanged: p.unchanged,
        plumb_rss_mib: p.peak_rss_kib().map(|kib| kib as f64 / 1024.0),
    })
}

/// A chart of `apps` apps in `dir`: the four objects of [`crate::apps::app_yaml`] per app,
/// from one template ranging over `.Values.apps`.
fn write_chart(dir: &Path, apps: u32, replicas: u32) -> anyhow::Result<u32> {
    let template = crate::apps::app_yaml("APP", replicas)
        .replace("APP", "{{ $name }}")
        .replace(
            &format!("replicas: {replicas}"),
            "replicas: {{ $.Values.replicas }}",
        );
    let template = format!(
        "{{{{- range $i := until (int .Values.apps) }}}}\n\
         {{{{- $name := printf \"app-%04d\" $i }}}}\n---\n{template}{{{{- end }}}}\n"
    );
    let files = [
        (
            "Chart.yaml",
            "apiVersion: v2\nname: bench\nversion: 0.1.0\n".to_owned(),
        ),
        (
            "values.yaml",
            format!("apps: {apps}\nreplicas: {replicas}\n"),
        ),
        ("templates/apps.yaml", template),
    ];
    std::fs::create_dir_all(dir.join("templates"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(apps * 4)
}

/// The Helm row: `plumb sync CHART` against `helm upgrade --install`, cold and no-op.
async fn bench_chart(
    apps: u32,
    plumb: &Path,
    helm: &Path,
    plane: &ControlPlane,
    workdir: &Path,
    replicas: u32,
) -> anyhow::Result<HelmRow> {
    let chart = workdir.join(format!("chart-{apps}"));
    let objects = write_chart(&chart, apps, replicas)?;
    let (ns_p, ns_h) = (
        format!("bench-plumb-chart-{apps}"),
        format!("bench-helm-{apps}"),
    );
    for ns in [&ns_p, &ns_h] {
        fresh_namespace(plane.client(), ns).await?;
    }
    let os = |s: &str| OsString::from(s);
    let plumb_args = vec![
        os("sync"),
        chart.clone().into_os_string(),
        os("--name"),
        os("bench-chart"),
        os("-n"),
        os(&ns_p),
        os("-o"),
        os("json"),
    ];
    let helm_args = vec![
        os("upgrade"),
        os("--install"),
        os("bench"),
        chart.clone().into_os_string(),
        os("-n"),
        os(&ns_h),
    ];
    // Helm with the control plane's kubeconfig and empty directories of its own.
    let home = workdir.join("helm-home");
    let mut helm_envs = plane.envs().to_vec();
    for (var, dir) in [
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_DATA_HOME", "data"),
    ] {
        let path = home.join(dir);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        helm_envs.push((var.to_owned(), path.display().to_string()));
    }
    let p = plumb_cold_and_noop(
        plane,
        plumb,
        &plumb_args,
        [
            workdir.join(format!("rss-chart-cold-{apps}")),
            workdir.join(format!("rss-chart-noop-{apps}")),
        ],
        [
            format!("chart of {apps} apps ({objects} objects): plumb cold"),
            "chart: plumb no-op".to_owned(),
        ],
        objects,
    )
    .await?;
    log!("chart: helm upgrade --install cold");
    let (h_cold, h_cold_req) = measured_with(plane, helm, &helm_args, &helm_envs).await?;
    log!(
        "  {:.2}s, requests {h_cold_req}",
        h_cold.elapsed.as_secs_f64()
    );
    log!("chart: helm upgrade --install no-op");
    let (h_noop, h_noop_req) = measured_with(plane, helm, &helm_args, &helm_envs).await?;
    log!(
        "  {:.2}s, requests {h_noop_req}",
        h_noop.elapsed.as_secs_f64()
    );
    Ok(HelmRow {
        objects,
        plumb_cold: p.cold.elapsed,
        helm_cold: h_cold.elapsed,
        plumb_noop: p.noop.elapsed,
        helm_noop: h_noop.elapsed,
        plumb_noop_writes: p.noop_writes,
        helm_noop_writes: h_noop_req.writes,
        plumb_noop_unchanged: p.unchanged,
        plumb_rss_mib: p.peak_rss_kib().map(|kib| kib as f64 / 1024.0),
    })
}

/// [`measured`] with an environment of its own and no RSS.
async fn measured_with(
    plane: &ControlPlane,
    program: &Path,
    args: &[OsString],
    envs: &[(String, String)],
) -> anyhow::Result<(Timed, RequestDelta)> {
    settle(plane.client()).await?;
    let before = request_counts(plane.client()).await?;
    let run = timed(program, args, envs, None).await?;
    let after = request_counts(plane.client()).await?;
    Ok((run, before.delta(&after)))
}

/// The Helm table and its note.
fn helm_report(r: &HelmRow) -> String {
    let head = [
        "chart objects",
        "plumb cold s",
        "helm cold s",
        "speedup",
        "plumb no-op s",
        "helm no-op s",
        "speedup",
        "plumb no-op writes",
        "helm no-op writes",
        "plumb peak RSS MiB",
    ];
    let mut out = format!("| {} |\n", head.join(" | "));
    let _ = writeln!(out, "|{}|", vec!["---:"; head.len()].join("|"));
    let s = |d: Duration| d.as_secs_f64();
    let cells = [
        r.objects.to_string(),
        format!("{:.2}", s(r.plumb_cold)),
        format!("{:.2}", s(r.helm_cold)),
        format!("{:.1}x", s(r.helm_cold) / s(r.plumb_cold)),
        format!("{:.2}", s(r.plumb_noop)),
        format!("{:.2}", s(r.helm_noop)),
        format!("{:.1}x", s(r.helm_noop) / s(r.plumb_noop)),
        r.plumb_noop_writes.to_string(),
        r.helm_noop_writes.to_string(),
        r.plumb_rss_mib
            .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}")),
    ];
    let _ = writeln!(out, "| {} |", cells.join(" | "));
    let _ = writeln!(
        out,
        "\nHelm row: `plumb sync CHART` against `helm upgrade --install` of the same chart; \
         writes counted as above (Helm's release Secret, one per run, is not among them). plumb \
         no-op objects reported unchanged: {}/{}.\n",
        r.plumb_noop_unchanged, r.objects
    );
    out
}

/// The table, its note, the Helm table and the last line.
fn report(rows: &[Row], helm: Option<&HelmRow>) -> String {
    let head = [
        "apps",
        "objects",
        "plumb cold s",
        "kubectl cold s",
        "speedup",
        "plumb no-op s",
        "kubectl no-op s",
        "speedup",
        "plumb no-op writes",
        "kubectl no-op writes",
        "plumb peak RSS MiB",
    ];
    let mut out = format!("| {} |\n", head.join(" | "));
    let _ = writeln!(out, "|{}|", vec!["---:"; head.len()].join("|"));
    for r in rows {
        let s = |d: Duration| d.as_secs_f64();
        let cells = [
            r.apps.to_string(),
            r.objects.to_string(),
            format!("{:.2}", s(r.plumb_cold)),
            format!("{:.2}", s(r.kubectl_cold)),
            format!("{:.1}x", s(r.kubectl_cold) / s(r.plumb_cold)),
            format!("{:.2}", s(r.plumb_noop)),
            format!("{:.2}", s(r.kubectl_noop)),
            format!("{:.1}x", s(r.kubectl_noop) / s(r.plumb_noop)),
            r.plumb_noop_writes.to_string(),
            r.kubectl_noop_writes.to_string(),
            r.plumb_rss_mib
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}")),
        ];
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
    out.push_str("No-op writes: non-dry-run APPLY/PATCH/POST/PUT/DELETE requests to configmaps,\n");
    out.push_str(
        "serviceaccounts, services and deployments during the run (apiserver_request_total,\n",
    );
    let unchanged: Vec<String> = rows
        .iter()
        .map(|r| format!("{} apps {}/{}", r.apps, r.plumb_noop_unchanged, r.objects))
        .collect();
    let _ = writeln!(
        out,
        "dry_run=\"\"). plumb no-op objects reported unchanged: {}.",
        unchanged.join(", ")
    );
    if let Some(helm) = helm {
        out.push('\n');
        out.push_str(&helm_report(helm));
    }
    if let Some(top) = rows.last() {
        let _ = writeln!(
            out,
            "cold sync speedup vs kubectl: {:.1}x; no-op sync writes: {}",
            top.kubectl_cold.as_secs_f64() / top.plumb_cold.as_secs_f64(),
            top.plumb_noop_writes
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_renders_the_apps_as_the_directory_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(write_chart(dir.path(), 3, 0).unwrap(), 12);
        let helm = crate::process::which("helm").expect(
            "helm must be on PATH (scripts/testenv build builds it; scripts/test puts it on PATH)",
        );
        let opts = plumb_render::RenderOptions {
            helm: Some(helm),
            ..plumb_render::RenderOptions::default()
        };
        let ms = plumb_render::render(dir.path(), &opts).unwrap();
        assert_eq!(ms.len(), 12);
        let generated = tempfile::tempdir().unwrap();
        crate::apps::generate(generated.path(), 3, 0, 0).unwrap();
        let plain = plumb_render::render(generated.path(), &plumb_render::RenderOptions::default())
            .unwrap();
        let objects = |ms: &[plumb_core::Manifest]| {
            let mut v: Vec<serde_json::Value> = ms.iter().map(|m| m.object.clone()).collect();
            v.sort_by_key(|o| o.to_string());
            v
        };
        assert_eq!(
            objects(&ms),
            objects(&plain),
            "the chart renders the generated apps"
        );
    }

    #[test]
    fn report_ends_with_the_summary_line() {
        let row = Row {
            apps: 100,
            objects: 400,
            plumb_cold: Duration::from_millis(1360),
            kubectl_cold: Duration::from_millis(18560),
            plumb_noop: Duration::from_millis(980),
            kubectl_noop: Duration::from_millis(17970),
            plumb_noop_writes: 0,
            kubectl_noop_writes: 400,
            plumb_noop_unchanged: 400,
            plumb_rss_mib: Some(43.2),
        };
        let helm = HelmRow {
            objects: 100,
            plumb_cold: Duration::from_millis(1000),
            helm_cold: Duration::from_millis(3000),
            plumb_noop: Duration::from_millis(500),
            helm_noop: Duration::from_millis(2500),
            plumb_noop_writes: 0,
            helm_noop_writes: 100,
            plumb_noop_unchanged: 100,
            plumb_rss_mib: None,
        };
        let out = report(&[row], Some(&helm));
        assert!(
            out.contains("| 100 | 1.00 | 3.00 | 3.0x | 0.50 | 2.50 | 5.0x | 0 | 100 | - |"),
            "{out}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[2],
            "| 100 | 400 | 1.36 | 18.56 | 13.6x | 0.98 | 17.97 | 18.3x | 0 | 400 | 43 |"
        );
        assert_eq!(
            lines.last().copied(),
            Some("cold sync speedup vs kubectl: 13.6x; no-op sync writes: 0")
        );
    }
}
