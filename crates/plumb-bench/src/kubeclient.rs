//! The bench's client of the API server: kube's own stack, with `TCP_NODELAY`.
//!
//! kube's default connector leaves Nagle's algorithm on. A request whose headers and body go out
//! as two TLS records then waits for the server's delayed ACK (40 ms on Linux) before the body
//! leaves: a merge patch took ~45 ms instead of a few. That delay would be counted in every drift
//! heal the bench times from the change it makes, so the client is assembled here as kube's
//! documented custom-client recipe does, with `set_nodelay(true)`.

use std::path::Path;

use anyhow::Context as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ClientBuilder, ConfigExt as _};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client with the credentials and current context of the kubeconfig file `path`.
pub async fn client_for_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading the kubeconfig {}", path.display()))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config
        .rustls_https_connector_with_connector(http)
        .context("setting up TLS for the API server")?;
    let hyper: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .auth_layer()
                .context("the kubeconfig's credentials")?,
        )
        .layer(config.extra_headers_layer()?)
        // The auth layer's token refresh fails with boxed errors; hyper's must match them.
        .map_err(BoxError::from)
        .service(hyper);
    Ok(ClientBuilder::new(service, config.default_namespace).build())
}
