//! The report of `plumb-bench flux`: one Markdown table per size, then the summary line.

use std::fmt::Write as _;

use super::measure::Measured;
use crate::cli::{FluxArgs, System};
use crate::stats::percentile;

/// The results of one workload size.
pub struct Size {
    pub apps: u32,
    pub objects: usize,
    pub results: Vec<(System, Measured)>,
    /// Seconds the minimal client took to write every object.
    pub ceiling: Option<f64>,
}

impl Size {
    fn of(&self, system: System) -> Option<&Measured> {
        self.results
            .iter()
            .find(|(s, _)| *s == system)
            .map(|(_, m)| m)
    }
}

/// `12345` as `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// One row: a value per system (as `fmt` writes it) and Flux / Plumb.
fn row(
    out: &mut String,
    name: &str,
    size: &Size,
    value: impl Fn(&Measured) -> Option<f64>,
    fmt: impl Fn(f64) -> String,
) {
    let flux = size.of(System::Flux).and_then(&value);
    let plumb = size.of(System::Plumb).and_then(&value);
    let cell = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), &fmt);
    let ratio = match (flux, plumb) {
        (Some(f), Some(p)) if p > 0.0 => format!("{:.1}x", f / p),
        _ => "–".to_owned(),
    };
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {ratio} |",
        cell(flux),
        cell(plumb)
    );
}

/// The whole report; its last line is the summary of the first size.
pub fn report(args: &FluxArgs, sizes: &[Size]) -> String {
    let mut out = String::new();
    let secs = |v: f64| format!("{v:.1} s");
    let secs2 = |v: f64| format!("{v:.2} s");
    let count = |v: f64| thousands(v.round() as i64);
    for size in sizes {
        let _ = writeln!(
            out,
            "Flux 2.9.4 vs Plumb: {} apps ({} objects) in {} Kustomizations / Syncs, one https \
             repository, prune, wait, interval {}, concurrency {}",
            size.apps,
            thousands(size.objects as i64),
            args.syncs,
            args.interval,
            args.concurrency
        );
        out.push('\n');
        out.push_str("| | Flux | Plumb | Flux / Plumb |\n|---|---:|---:|---:|\n");
        let n = thousands(size.objects as i64);
        row(
            &mut out,
            &format!("cold: all {} Ready", args.syncs),
            size,
            |m| Some(m.ready),
            secs,
        );
        row(
            &mut out,
            &format!("cold: all {n} objects written"),
            size,
            |m| m.written,
            secs,
        );
        row(
            &mut out,
            "cold: CPU seconds",
            size,
            |m| Some(m.cpu),
            |v| format!("{v:.1}"),
        );
        row(
            &mut out,
            "cold: API requests (apiserver_request_total, all clients)",
            size,
            |m| Some(m.cold_requests as f64),
            count,
        );
        row(
            &mut out,
            "cold: API requests sent by the system itself",
            size,
            |m| Some(m.cold_own_requests),
            count,
        );
        row(
            &mut out,
            "peak RSS (sum of processes)",
            size,
            |m| Some(m.peak_rss),
            |v| format!("{v:.0} MiB"),
        );
        row(
            &mut out,
            "reconcile request, nothing changed",
            size,
            |m| Some(m.reconcile),
            secs,
        );
        row(
            &mut out,
            "API requests per minute at rest (the system's own)",
            size,
            |m| m.rest_per_minute,
            count,
        );
        row(
            &mut out,
            &format!("manual edit undone (median of {})", args.edits),
            size,
            |m| (!m.edits.is_empty()).then(|| percentile(&m.edits, 50.0)),
            secs2,
        );
        row(
            &mut out,
            &format!(
                "commit to applied (reconcile request, median of {})",
                args.commits
            ),
            size,
            |m| (!m.commits.is_empty()).then(|| percentile(&m.commits, 50.0)),
            secs2,
        );
        if let Some(ceiling) = size.ceiling {
            let plumb = size
                .of(System::Plumb)
                .and_then(|m| m.written)
                .map_or_else(String::new, |w| {
                    format!("Plumb writes at {:.0}% of it", 100.0 * ceiling / w)
                });
            let _ = writeln!(
                out,
                "| the API server's ceiling: all {n} objects written by a minimal client ({} at \
                 once, no dry-run, no reads) | {} | {} | {plumb} |",
                args.ceiling_concurrency,
                secs(ceiling),
                secs(ceiling),
            );
        }
        out.push('\n');
    }
    if sizes.len() > 1 {
        growth(&mut out, sizes);
    }
    let _ = writeln!(out, "{}", summary(sizes.first()));
    out
}

/// A measurement of the growth table and how it prints.
type Metric = (fn(&Measured) -> f64, fn(f64) -> String);

/// How each system's cold cost grows with the number of objects: one row per size, each value
/// followed by its cost per object relative to the first (smallest listed) size, so that 1.00
/// is linear growth and more than 1 is worse than linear.
fn growth(out: &mut String, sizes: &[Size]) {
    let _ = writeln!(
        out,
        "Growth (cold start; in parentheses: cost per object relative to {} objects, 1.00 = \
         linear)\n",
        thousands(sizes[0].objects as i64)
    );
    out.push_str(
        "| objects | Flux: to Ready | Plumb: to Ready | Flux: CPU s | Plumb: CPU s | Flux: peak \
         RSS | Plumb: peak RSS | Flux: own requests | Plumb: own requests |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let metrics: [Metric; 4] = [
        (|m| m.ready, |v| format!("{v:.1} s")),
        (|m| m.cpu, |v| format!("{v:.1}")),
        (|m| m.peak_rss, |v| format!("{v:.0} MiB")),
        (|m| m.cold_own_requests, |v| thousands(v.round() as i64)),
    ];
    let first = &sizes[0];
    for size in sizes {
        let _ = write!(out, "| {} |", thousands(size.objects as i64));
        for (value, fmt) in metrics {
            for system in [System::Flux, System::Plumb] {
                let cell = match (size.of(system), first.of(system)) {
                    (Some(m), Some(base)) if value(base) > 0.0 => {
                        let per_object =
                            (value(m) / size.objects as f64) / (value(base) / first.objects as f64);
                        format!(" {} ({per_object:.2}) |", fmt(value(m)))
                    }
                    (Some(m), _) => format!(" {} |", fmt(value(m))),
                    (None, _) => " – |".to_owned(),
                };
                out.push_str(&cell);
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

/// `vs Flux: <X>x faster to Ready, <Y>x less CPU, <Z>x less memory`.
fn summary(size: Option<&Size>) -> String {
    let both = size.and_then(|s| Some((s.of(System::Flux)?, s.of(System::Plumb)?)));
    match both {
        Some((f, p)) => format!(
            "vs Flux: {:.1}x faster to Ready, {:.1}x less CPU, {:.1}x less memory",
            f.ready / p.ready,
            f.cpu / p.cpu,
            f.peak_rss / p.peak_rss
        ),
        None => "vs Flux: not compared (run both systems)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FluxArgs {
        FluxArgs {
            apps: vec![1000],
            syncs: 10,
            concurrency: 10,
            interval: "1m".into(),
            edits: 5,
            commits: 3,
            rest: 60,
            systems: vec![System::Flux, System::Plumb],
            ceiling_concurrency: 64,
            flux_dir: None,
            keep_dir: false,
        }
    }

    fn measured(ready: f64, cpu: f64, rss: f64) -> Measured {
        Measured {
            ready,
            written: Some(ready / 10.0),
            cpu,
            cold_requests: 192_793,
            cold_own_requests: 1000.0,
            peak_rss: rss,
            reconcile: 1.0,
            rest_per_minute: Some(20.0),
            edits: vec![0.2, 0.1, 0.3],
            commits: vec![1.0],
        }
    }

    #[test]
    fn the_last_line_compares_ready_cpu_and_memory() {
        let size = Size {
            apps: 1000,
            objects: 4000,
            results: vec![
                (System::Flux, measured(200.0, 80.0, 300.0)),
                (System::Plumb, measured(40.0, 20.0, 100.0)),
            ],
            ceiling: Some(2.0),
        };
        let out = report(&args(), &[size]);
        assert_eq!(
            out.lines().last(),
            Some("vs Flux: 5.0x faster to Ready, 4.0x less CPU, 3.0x less memory")
        );
        assert!(
            out.contains("| cold: all 10 Ready | 200.0 s | 40.0 s | 5.0x |"),
            "{out}"
        );
        assert!(out.contains("| 192,793 | 192,793 | 1.0x |"), "{out}");
        assert!(out.contains("Plumb writes at 50% of it"), "{out}");
        assert!(
            out.contains("| API requests per minute at rest (the system's own) | 20 | 20 | 1.0x |"),
            "{out}"
        );
        assert!(
            out.contains("| manual edit undone (median of 5) | 0.20 s | 0.20 s |"),
            "{out}"
        );
    }

    #[test]
    fn several_sizes_add_a_growth_table_per_object() {
        let small = Size {
            apps: 1000,
            objects: 4000,
            results: vec![
                (System::Flux, measured(200.0, 80.0, 300.0)),
                (System::Plumb, measured(40.0, 20.0, 100.0)),
            ],
            ceiling: None,
        };
        let big = Size {
            apps: 2500,
            objects: 10000,
            results: vec![
                (System::Flux, measured(600.0, 200.0, 450.0)),
                (System::Plumb, measured(100.0, 50.0, 150.0)),
            ],
            ceiling: None,
        };
        let out = report(&args(), &[small, big]);
        assert!(
            out.contains("| 4,000 | 200.0 s (1.00) | 40.0 s (1.00) | 80.0 (1.00) |"),
            "{out}"
        );
        // Flux: 3x the time for 2.5x the objects = 1.20 per object; memory 0.60.
        assert!(
            out.contains("| 10,000 | 600.0 s (1.20) | 100.0 s (1.00) | 200.0 (1.00) | 50.0 (1.00) | 450 MiB (0.60) |"),
            "{out}"
        );
        // The last line still compares the first size.
        assert_eq!(
            out.lines().last(),
            Some("vs Flux: 5.0x faster to Ready, 4.0x less CPU, 3.0x less memory")
        );
    }

    #[test]
    fn one_system_alone_prints_dashes_and_no_comparison() {
        let size = Size {
            apps: 1000,
            objects: 4000,
            results: vec![(System::Plumb, measured(40.0, 20.0, 100.0))],
            ceiling: None,
        };
        let out = report(&args(), &[size]);
        assert!(
            out.contains("| cold: all 10 Ready | – | 40.0 s | – |"),
            "{out}"
        );
        assert_eq!(
            out.lines().last(),
            Some("vs Flux: not compared (run both systems)")
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn an_at_rest_row_not_measured_shows_as_such() {
        let unmeasured = |ready| Measured {
            rest_per_minute: None,
            ..measured(ready, 1.0, 1.0)
        };
        let size = Size {
            apps: 1000,
            objects: 4000,
            results: vec![
                (System::Flux, unmeasured(2.0)),
                (System::Plumb, unmeasured(1.0)),
            ],
            ceiling: None,
        };
        let out = report(&args(), &[size]);
        assert!(
            out.contains("| API requests per minute at rest (the system's own) | – | – | – |"),
            "{out}"
        );
    }
}
