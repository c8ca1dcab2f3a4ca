//! Timing and the table.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::history::{COMMITS, FILES, SIGNED};

pub fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed(), out))
}

pub async fn timed_async<T, E>(f: impl Future<Output = Result<T, E>>) -> Result<(Duration, T), E> {
    let t = Instant::now();
    let out = f.await?;
    Ok((t.elapsed(), out))
}

pub struct Row {
    what: &'static str,
    transport: &'static str,
    plumb: Duration,
    git: Duration,
}

impl Row {
    pub fn new(
        what: &'static str,
        transport: &'static str,
        plumb: Duration,
        git: Duration,
    ) -> Self {
        Self {
            what,
            transport,
            plumb,
            git,
        }
    }
}

pub fn table(rows: &[Row], setup: &[(&str, Duration)]) -> String {
    let mut out = format!(
        "Repository: {FILES} files, {COMMITS} commits (+1 for the incremental fetch), last \
         {SIGNED} SSH-signed (ed25519). plumb's fetch includes exporting the tree ({FILES} \
         files) and no verification; one run each.\n\n"
    );
    out.push_str("| Measurement | Transport | plumb | git | plumb / git |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}x |",
            row.what,
            row.transport,
            secs(row.plumb),
            secs(row.git),
            row.plumb.as_secs_f64() / row.git.as_secs_f64()
        );
    }
    out.push_str("\nSetup: ");
    let parts: Vec<String> = setup
        .iter()
        .map(|(what, d)| format!("{what} {}", secs(*d)))
        .collect();
    out.push_str(&parts.join(", "));
    out.push('\n');
    out
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
