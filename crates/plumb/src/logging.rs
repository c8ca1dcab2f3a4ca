//! Logs on stderr: quiet by default (the agent: info, so that a deployed agent shows what it
//! applied and corrected), `-v` for more, JSON when stderr is not a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the level chosen by `-v`.
pub fn init(verbose: u8, agent: bool) {
    let level = match verbose {
        // kube-client logs every non-2xx response as an error; plumb reports those itself.
        0 if agent => "info,kube_client=off,kube_runtime=warn",
        0 => "warn,kube_client=off",
        1 => "info,plumb=info",
        2 => "debug,hyper=info,rustls=info,tower=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
