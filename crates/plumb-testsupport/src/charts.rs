//! Real chart servers for tests: a Helm repository over HTTPS (nginx, basic auth) and an OCI
//! registry (Debian's `docker-registry`, TLS + htpasswd with bcrypt), on free `127.0.0.1`
//! ports, with the Git servers' test CA machinery; and charts made with the real `helm`
//! (`helm package`, `helm repo index`, `helm push` after a `helm registry login`, in a helm
//! configuration of their own).
//!
//! Needs `nginx`, `docker-registry`, `htpasswd` (apache2-utils), `openssl` and `helm` (on
//! PATH); `scripts/install-deps` installs the Debian packages.

use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use tempfile::TempDir;

use crate::git::cmd::{create_dir, run, run_with_stdin, write_file};
use crate::git::server::config::generate_tls;
use crate::git::server::process::{ServerProcess, free_port, wait_until};

const NGINX: &str = "/usr/sbin/nginx";
const REGISTRY: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTPS Helm repository and an OCI registry for one test. Dropping the value kills and
/// reaps exactly the processes it started, then deletes its directory.
#[derive(Debug)]
pub struct ChartServers {
    // Declared first: processes must die before their directory is deleted.
    processes: Vec<ServerProcess>,
    dir: TempDir,
    repos_root: PathBuf,
    https_port: u16,
    registry_port: u16,
    token_registry_port: Option<u16>,
    username: String,
    password: String,
    ca_cert: PathBuf,
    helm_home: PathBuf,
    access_log: PathBuf,
    /// nginx's plain-HTTP listener for barrier requests (see [`ChartServers::requests`]).
    barrier_port: u16,
    barriers: std::sync::atomic::AtomicU64,
}

impl ChartServers {
    /// Generates credentials and a TLS certificate, starts nginx and the registry on free
    /// ports and logs `helm` in to the registry. Fails with the servers' logs when one does
    /// not start.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`ChartServers::start`], plus a second registry that speaks the token flow: it
    /// answers `Bearer realm="https://127.0.0.1:<nginx>/token"`, and nginx's `/token` (basic
    /// auth, the same login) hands out a JWT (RS256, signed with a key whose certificate the
    /// registry trusts) granting pull and push on `repositories`.
    pub fn start_with_token_registry(repositories: &[&str]) -> anyhow::Result<Self> {
        if repositories.is_empty() {
            bail!("the token registry needs the repositories its token grants");
        }
        Self::start_with(repositories)
    }

    fn start_with(token_repositories: &[&str]) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(token_repositories) {
                Ok(servers) => return Ok(servers),
                // A port found free may be taken before the server binds it: try new ones.
                Err(err) if attempt < 3 && format!("{err:#}").contains("already in use") => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn start_once(token_repositories: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("plumb-charts-")
            .tempdir()
            .context("cannot create a temporary directory for the chart servers")?;
        let root = dir.path();
        let repos_root = root.join("repos");
        let logs = root.join("logs");
        let run_dir = root.join("run");
        let registry_root = root.join("registry");
        let helm_home = root.join("helm");
        for d in [&repos_root, &logs, &run_dir, &registry_root, &helm_home] {
            create_dir(d)?;
        }
        let username = "plumb".to_owned();
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let tls = generate_tls(&root.join("tls"), None)?;

        // nginx reads APR1 hashes; the registry only bcrypt.
        let nginx_htpasswd = root.join("htpasswd-nginx");
        let hash = run_with_stdin(
            Command::new("openssl").args(["passwd", "-apr1", "-stdin"]),
            &password,
        )?;
        write_file(&nginx_htpasswd, format!("{username}:{hash}\n"))?;
        let registry_htpasswd = root.join("htpasswd-registry");
        let line = run_with_stdin(
            Command::new("htpasswd").args(["-niB", "-C", "5", &username]),
            &password,
        )
        .context("generating the registry's bcrypt htpasswd (apache2-utils)")?;
        write_file(&registry_htpasswd, format!("{}\n", line.trim()))?;

        let https_port = free_port()?;
        let registry_port = free_port()?;
        let barrier_port = free_port()?;
        let token_registry_port = if token_repositories.is_empty() {
            None
        } else {
            Some(free_port()?)
        };
        let token_file = root.join("token.json");
        let token_conf = match token_registry_port {
            None => None,
            Some(port) => {
                let cert = token::issue(
                    &root.join("token"),
                    &username,
                    token_repositories,
                    &token_file,
                )?;
                let conf = root.join("registry-token.yml");
                write_file(
                    &conf,
                    format!(
                        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {reg}\n\
                         http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n  tls:\n    certificate: {cert}\n    key: {key}\n\
                         auth:\n  token:\n    realm: https://127.0.0.1:{https_port}/token\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {bundle}\n",
                        reg = root.join("registry-token").display(),
                        secret = "plumb-test-token-registry-secret",
                        cert = tls.server_cert.display(),
                        key = tls.server_key.display(),
                        service = token::SERVICE,
                        issuer = token::ISSUER,
                        bundle = cert.display(),
                    ),
                )?;
                Some(conf)
            }
        };
        let access_log = logs.join("nginx-access.log");
        let nginx_log = logs.join("nginx-error.log");
        let nginx_conf = root.join("nginx.conf");
        write_file(
            &nginx_conf,
            format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {root}/run/nginx.pid;
error_log {error_log} info;
events {{ worker_connections 128; }}
http {{
    log_format plumb '$request_method $uri $status user=$remote_user';
    access_log {access_log} plumb;
    client_body_temp_path {root}/run/client_body;
    proxy_temp_path {root}/run/proxy;
    fastcgi_temp_path {root}/run/fastcgi;
    uwsgi_temp_path {root}/run/uwsgi;
    scgi_temp_path {root}/run/scgi;
    types {{ application/gzip tgz; application/x-yaml yaml; }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        server_name localhost 127.0.0.1;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {repos};
        # Repositories under /public/ need no login (a CDN, another host as far as a
        # client's credentials go).
        location /public/ {{
        }}
        # Redirects to the same path under host name localhost (another origin).
        location /to-localhost/ {{
            rewrite ^/to-localhost/(.*)$ https://localhost:{https_port}/$1 redirect;
        }}
        # The token service of the token registry: a JWT for the right login.
        location = /token {{
            auth_basic "Plumb test token service";
            auth_basic_user_file {htpasswd};
            default_type application/json;
            alias {token_file};
        }}
        location / {{
            auth_basic "Plumb test charts";
            auth_basic_user_file {htpasswd};
        }}
    }}
    # Barrier requests of the harness: once one is in the access log, every request
    # answered before it is too (one worker, which logs each request as it finishes it).
    server {{
        listen 127.0.0.1:{barrier_port};
        location /plumb-barrier/ {{
            return 204;
        }}
    }}
}}
"#,
                root = root.display(),
                error_log = nginx_log.display(),
                access_log = access_log.display(),
                cert = tls.server_cert.display(),
                key = tls.server_key.display(),
                repos = repos_root.display(),
                htpasswd = nginx_htpasswd.display(),
                token_file = token_file.display(),
            ),
        )?;
        let registry_conf = root.join("registry.yml");
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        write_file(
            &registry_conf,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {reg}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{registry_port}\n  secret: {secret}\n  tls:\n    certificate: {cert}\n    key: {key}\n\
                 auth:\n  htpasswd:\n    realm: plumb-test-registry\n    path: {htpasswd}\n",
                reg = registry_root.display(),
                cert = tls.server_cert.display(),
                key = tls.server_key.display(),
                htpasswd = registry_htpasswd.display(),
            ),
        )?;

        let mut processes = Vec::new();
        let mut nginx = Command::new(NGINX);
        nginx
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-e")
            .arg(&nginx_log);
        processes.push(ServerProcess::spawn(
            "nginx",
            &mut nginx,
            logs.join("nginx.stderr.log"),
        )?);
        if let Some(nginx) = processes.last_mut() {
            nginx.extra_log = Some(nginx_log.clone());
        }
        let mut registry = Command::new(REGISTRY);
        registry.arg("serve").arg(&registry_conf);
        processes.push(ServerProcess::spawn(
            "docker-registry",
            &mut registry,
            logs.join("registry.log"),
        )?);
        if let Some(conf) = &token_conf {
            let mut registry = Command::new(REGISTRY);
            registry.arg("serve").arg(conf);
            processes.push(ServerProcess::spawn(
                "docker-registry",
                &mut registry,
                logs.join("registry-token.log"),
            )?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for port in [
            Some(https_port),
            Some(registry_port),
            Some(barrier_port),
            token_registry_port,
        ]
        .into_iter()
        .flatten()
        {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            wait_until(&mut processes, deadline, &format!("port {port}"), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
        }
        let servers = Self {
            processes,
            repos_root,
            https_port,
            registry_port,
            token_registry_port,
            username,
            password,
            ca_cert: tls.ca_cert,
            helm_home,
            access_log,
            barrier_port,
            barriers: std::sync::atomic::AtomicU64::new(0),
            dir,
        };
        run_with_stdin(
            servers
                .helm()
                .args(["registry", "login", &servers.registry_host()])
                .args(["--username", &servers.username, "--password-stdin"])
                .arg("--ca-file")
                .arg(&servers.ca_cert),
            &servers.password,
        )
        .with_context(|| format!("helm registry login\n{}", servers.log_tails()))?;
        if let Some(host) = servers.token_registry_host() {
            run_with_stdin(
                servers
                    .helm()
                    .args(["registry", "login", &host])
                    .args(["--username", &servers.username, "--password-stdin"])
                    .arg("--ca-file")
                    .arg(&servers.ca_cert),
                &servers.password,
            )
            .with_context(|| {
                format!(
                    "helm registry login (token registry)\n{}",
                    servers.log_tails()
                )
            })?;
        }
        Ok(servers)
    }

    /// `https://127.0.0.1:PORT/<repo>`: a Helm repository (basic auth; `public/<name>`
    /// repositories need none).
    pub fn repo_url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.https_port)
    }

    /// `127.0.0.1:PORT`: the registry.
    pub fn registry_host(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    /// `oci://127.0.0.1:PORT/<path>`.
    pub fn oci_url(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.registry_host())
    }

    /// `127.0.0.1:PORT` of the token registry, when started with one.
    pub fn token_registry_host(&self) -> Option<String> {
        self.token_registry_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// `oci://127.0.0.1:PORT/<path>` of the token registry.
    pub fn token_oci_url(&self, path: &str) -> anyhow::Result<String> {
        let host = self
            .token_registry_host()
            .context("started without a token registry (start_with_token_registry)")?;
        Ok(format!("oci://{host}/{path}"))
    }

    /// Pushes `tgz` to the token registry's `<path>`; returns the manifest digest.
    pub fn push_token(&self, path: &str, tgz: &Path) -> anyhow::Result<String> {
        let url = self.token_oci_url(path)?;
        self.push_to(&url, tgz)
    }

    /// The user name of both servers.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password of both servers (random per start).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// PEM file of the CA that issued both servers' certificate (for 127.0.0.1).
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The CA certificate's PEM text.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        fs::read_to_string(&self.ca_cert).context("reading the test CA")
    }

    /// `helm` (from PATH) with a configuration, cache and registry login of its own.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new("helm");
        let h = &self.helm_home;
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", h)
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_DATA_HOME", h.join("data"))
            .env("HELM_REGISTRY_CONFIG", h.join("registry.json"))
            .env("HELM_REPOSITORY_CONFIG", h.join("repositories.yaml"));
        cmd
    }

    /// Writes chart `name` `version` (`files` relative to the chart; a `Chart.yaml` is made
    /// unless given) and packages it with `helm package`; returns the `.tgz`.
    pub fn package(
        &self,
        name: &str,
        version: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<PathBuf> {
        let build = self
            .dir
            .path()
            .join("build")
            .join(format!("{name}-{version}"));
        let chart = build.join(name);
        if build.exists() {
            fs::remove_dir_all(&build)?;
        }
        create_dir(&chart)?;
        if !files.iter().any(|(p, _)| *p == "Chart.yaml") {
            write_file(
                &chart.join("Chart.yaml"),
                format!("apiVersion: v2\nname: {name}\nversion: {version}\n"),
            )?;
        }
        for (path, content) in files {
            let file = chart.join(path);
            if let Some(parent) = file.parent() {
                fs::create_dir_all(parent)?;
            }
            write_file(&file, content)?;
        }
        let out = build.join("out");
        create_dir(&out)?;
        run(self
            .helm()
            .arg("package")
            .arg(&chart)
            .arg("--destination")
            .arg(&out))?;
        let tgz = out.join(format!("{name}-{version}.tgz"));
        if !tgz.is_file() {
            bail!("helm package did not write {}", tgz.display());
        }
        Ok(tgz)
    }

    /// Puts `tgz` into repository `repo` and indexes it with `helm repo index` (relative
    /// URLs).
    pub fn publish(&self, repo: &str, tgz: &Path) -> anyhow::Result<()> {
        let dir = self.repos_root.join(repo);
        fs::create_dir_all(&dir)?;
        let name = tgz.file_name().context("a file name")?;
        fs::copy(tgz, dir.join(name))?;
        self.index(repo)
    }

    /// Removes `<name>-<version>.tgz` from repository `repo` and indexes it again.
    pub fn unpublish(&self, repo: &str, name: &str, version: &str) -> anyhow::Result<()> {
        fs::remove_file(
            self.repos_root
                .join(repo)
                .join(format!("{name}-{version}.tgz")),
        )?;
        self.index(repo)
    }

    fn index(&self, repo: &str) -> anyhow::Result<()> {
        run(self
            .helm()
            .args(["repo", "index"])
            .arg(self.repos_root.join(repo)))?;
        Ok(())
    }

    /// Makes repository `repo` serve `archive` (any bytes, e.g. a hostile archive `helm` would
    /// refuse to index) as chart `name` `version`, with an `index.yaml` written here (its
    /// digest is the archive's).
    pub fn publish_raw(
        &self,
        repo: &str,
        name: &str,
        version: &str,
        archive: &[u8],
    ) -> anyhow::Result<()> {
        let file = format!("{name}-{version}.tgz");
        self.replace_file(repo, &file, archive)?;
        self.write_index(repo, name, version, &file, &digest_of(archive)?)
    }

    /// Writes `index.yaml` of repository `repo` with one entry: chart `name` `version` at
    /// `url` (relative or absolute) with `digest` (`sha256:<hex>`).
    pub fn write_index(
        &self,
        repo: &str,
        name: &str,
        version: &str,
        url: &str,
        digest: &str,
    ) -> anyhow::Result<()> {
        let dir = self.repos_root.join(repo);
        fs::create_dir_all(&dir)?;
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        write_file(
            &dir.join("index.yaml"),
            format!(
                "apiVersion: v1\nentries:\n  {name}:\n  - apiVersion: v2\n    name: {name}\n    version: {version}\n    urls:\n    - {url}\n    digest: {hex}\ngenerated: \"2026-01-01T00:00:00Z\"\n"
            ),
        )
    }

    /// `https://localhost:PORT/<path>`: the repository server under another host name (the
    /// certificate is valid for it), another origin as far as credentials go.
    pub fn other_host_url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.https_port)
    }

    /// `https://127.0.0.1:PORT/to-localhost/<path>`: answered with a redirect to
    /// [`ChartServers::other_host_url`] of `path`.
    pub fn redirect_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/to-localhost/{path}", self.https_port)
    }

    /// Writes `file` in repository `repo` with `bytes`, leaving its index as it is (e.g. an
    /// archive swapped behind the index's back).
    pub fn replace_file(&self, repo: &str, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let dir = self.repos_root.join(repo);
        fs::create_dir_all(&dir)?;
        write_file(&dir.join(file), bytes)
    }

    /// Pushes `tgz` to `oci://registry/<path>` with `helm push`; returns the manifest digest
    /// helm printed.
    pub fn push(&self, path: &str, tgz: &Path) -> anyhow::Result<String> {
        self.push_to(&self.oci_url(path), tgz)
    }

    fn push_to(&self, url: &str, tgz: &Path) -> anyhow::Result<String> {
        let output: Output = run(self
            .helm()
            .arg("push")
            .arg(tgz)
            .arg(url)
            .arg("--ca-file")
            .arg(&self.ca_cert))?;
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Digest:")
                    .map(|d| d.trim().to_owned())
            })
            .with_context(|| format!("helm push printed no digest:\n{text}"))
    }

    /// Removes the blob `digest` (`sha256:<hex>`, e.g. a chart archive's layer) from the
    /// registry's storage, as if it were lost: the registry no longer serves it, while the
    /// manifests that name it still resolve.
    pub fn remove_registry_blob(&self, digest: &str) -> anyhow::Result<()> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
        let data = self
            .dir
            .path()
            .join("registry/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        fs::remove_file(&data).with_context(|| format!("removing {}", data.display()))
    }

    /// How many requests nginx answered for paths ending in `suffix`, with their status and
    /// user (`GET /r/index.yaml 200 user=plumb`). nginx may write a request's log line just
    /// after the client read the response: a barrier request is made first and the log read
    /// once it holds the barrier's line, so every request answered before the call is in it.
    pub fn requests(&self, suffix: &str) -> Vec<String> {
        let log = self.barrier().unwrap_or_else(|e| {
            panic!("nginx's access log: {e:#}\n{}", self.log_tails());
        });
        log.lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|uri| uri.ends_with(suffix) && !uri.starts_with("/plumb-barrier/"))
            })
            .map(str::to_owned)
            .collect()
    }

    /// Makes a barrier request and returns the access log once it holds its line.
    fn barrier(&self) -> anyhow::Result<String> {
        use std::io::Write as _;
        let n = self
            .barriers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/plumb-barrier/{n}");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.barrier_port));
        let mut stream = TcpStream::connect_timeout(&addr, READY_TIMEOUT)
            .context("connecting to nginx's barrier listener")?;
        stream.set_read_timeout(Some(READY_TIMEOUT))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .context("reading the barrier's answer")?;
        if !answer.starts_with("HTTP/1.1 204") {
            bail!("the barrier request was answered {answer:?}");
        }
        let line = format!("GET {path} 204 ");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = fs::read_to_string(&self.access_log).unwrap_or_default();
            if log.lines().any(|l| l.starts_with(&line)) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!("the barrier request {path} never reached the access log");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of every server's log.
    pub fn log_tails(&self) -> String {
        let tails: Vec<String> = self.processes.iter().map(ServerProcess::log_tail).collect();
        tails.join("\n")
    }
}

/// The token service's JWT, made with `openssl` (RS256).
mod token {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    pub(super) const SERVICE: &str = "plumb-test-registry";
    pub(super) const ISSUER: &str = "plumb-test-token-issuer";

    /// Generates a signing key and certificate in `dir`, writes `{"token": JWT}` granting
    /// `subject` pull and push on `repositories` (valid for a day) to `out`; returns the
    /// certificate (the registry's `rootcertbundle`).
    pub(super) fn issue(
        dir: &Path,
        subject: &str,
        repositories: &[&str],
        out: &Path,
    ) -> anyhow::Result<PathBuf> {
        create_dir(dir)?;
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=plumb test token issuer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert))
        .context("generating the token signing key")?;
        let der = run(Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert))?
        .stdout;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let header =
            serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5c": [STANDARD.encode(der)] });
        let access: Vec<serde_json::Value> = repositories
            .iter()
            .map(|r| serde_json::json!({ "type": "repository", "name": r, "actions": ["pull", "push"] }))
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + 86_400, "nbf": now - 600, "iat": now - 600,
            "jti": format!("plumb-{now}"), "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
        );
        let input_file = dir.join("input");
        let signature = dir.join("signature");
        write_file(&input_file, &input)?;
        run(Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .arg("-out")
            .arg(&signature)
            .arg(&input_file))
        .context("signing the token")?;
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(fs::read(&signature)?));
        write_file(
            out,
            serde_json::to_vec(&serde_json::json!({ "token": jwt, "access_token": jwt }))?,
        )?;
        Ok(cert)
    }
}

/// `sha256:<hex>` of `bytes` (as an index or registry records a digest).
pub fn digest_of(bytes: &[u8]) -> anyhow::Result<String> {
    Ok(format!("sha256:{}", sha256_hex(bytes)?))
}

/// The hex sha256 of `bytes`, as `sha256sum` prints it.
fn sha256_hex(bytes: &[u8]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("archive");
    write_file(&file, bytes)?;
    let output = run(Command::new("sha256sum").arg(&file))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// One entry of a hand-made (possibly hostile) chart archive.
#[derive(Clone, Debug)]
pub enum RawEntry<'a> {
    /// A regular file.
    File(&'a str, &'a [u8]),
    /// A symlink `path -> target`.
    Symlink(&'a str, &'a str),
    /// A hard link `path -> target`.
    HardLink(&'a str, &'a str),
    /// A file whose header claims `size` bytes of zeros (written in full).
    Zeros(&'a str, u64),
}

/// A gzip-compressed tar of `entries`, written without any path check (`../x` and `/x` are
/// written as given): what a hostile chart author could upload.
pub fn raw_archive(entries: &[RawEntry<'_>]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        let (path, kind, size, link) = match entry {
            RawEntry::File(p, data) => (*p, tar::EntryType::Regular, data.len() as u64, None),
            RawEntry::Symlink(p, t) => (*p, tar::EntryType::Symlink, 0, Some(*t)),
            RawEntry::HardLink(p, t) => (*p, tar::EntryType::Link, 0, Some(*t)),
            RawEntry::Zeros(p, n) => (*p, tar::EntryType::Regular, *n, None),
        };
        header.set_entry_type(kind);
        header.set_size(size);
        let name = &mut header.as_old_mut().name;
        if path.len() > name.len() {
            bail!("raw archive paths are at most {} bytes", name.len());
        }
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.set_link_name(link)?;
        }
        header.set_cksum();
        match entry {
            RawEntry::File(_, data) => tar.append(&header, *data)?,
            RawEntry::Zeros(_, n) => tar.append(&header, std::io::repeat(0).take(*n))?,
            _ => tar.append(&header, std::io::empty())?,
        }
    }
    Ok(tar.into_inner()?.finish()?)
}
