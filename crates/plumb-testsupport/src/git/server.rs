//! nginx + fcgiwrap + `git http-backend` (https, basic auth) and OpenSSH (public keys) on
//! 127.0.0.1, serving one directory of bare repositories.

use std::ffi::OsString;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use tempfile::TempDir;

use super::Repo;
use super::cmd::{
    create_dir, isolated_env, isolated_git, percent_encode, run, run_stdout, run_with_stdin,
    shell_quote, tail, write_file,
};
use super::repo::check_repo_name;

pub(crate) mod config;
pub(crate) mod process;

use config::*;
use process::*;

const NGINX: &str = "/usr/sbin/nginx";
const FCGIWRAP: &str = "/usr/sbin/fcgiwrap";
const SSHD: &str = "/usr/sbin/sshd";
const GIT_HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// How long the servers may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often [`GitServers::start`] picks new ports when one was taken meanwhile.
const START_ATTEMPTS: usize = 3;
/// Log lines quoted in errors.
const LOG_TAIL: usize = 30;

/// Env variable naming a directory where each started server's pid is written (one file per
/// process, removed when the process is stopped), so a test script can kill leftovers after
/// a crash.
pub const PIDS_DIR_ENV: &str = "PLUMB_TEST_PIDS_DIR";

/// How [`GitServers::start_with`] sets the servers up.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Caps every https and http response at this many bytes per second (nginx `limit_rate`),
    /// so that a fetch of a large repository takes long enough to be interrupted on purpose.
    pub rate_limit: Option<u64>,
}

/// Real Git servers on 127.0.0.1 for one test: smart HTTP over TLS with basic auth and
/// OpenSSH with public-key auth, both serving the same directory of bare repositories.
///
/// Everything (repositories, keys, certificates, configs, logs) lives in one temporary
/// directory. Dropping the value kills and reaps exactly the processes it started, then
/// deletes the directory, so [`Repo`]s created here stop working.
///
/// Needs `nginx`, `fcgiwrap`, `git`, `sshd`, `ssh-keygen` and `openssl` installed, and root
/// (sshd authenticates the current user, nginx and fcgiwrap run as it).
#[derive(Debug)]
pub struct GitServers {
    // Declared first: processes must die before their directory is deleted.
    processes: Vec<ServerProcess>,
    dir: TempDir,
    repos_root: PathBuf,
    https_port: u16,
    http_port: u16,
    ssh_port: u16,
    ssh_user: String,
    username: String,
    password: String,
    ca_cert: PathBuf,
    ssh_client_key: PathBuf,
    known_hosts: PathBuf,
    known_hosts_line: String,
    client_home: PathBuf,
    startup: Duration,
    /// The programs and arguments to start, kept for [`GitServers::restart`].
    launch: Launch,
}

/// Everything needed to start the server processes again, alike.
#[derive(Debug, Clone)]
struct Launch {
    logs: PathBuf,
    fcgi_socket: PathBuf,
    nginx_root: PathBuf,
    nginx_conf: PathBuf,
    nginx_log: PathBuf,
    sshd_conf: PathBuf,
    ports: [u16; 3],
}

impl GitServers {
    /// Generates credentials and starts the servers on free ports, returning once both ports
    /// accept connections. Fails with the tail of the server's log when one does not start.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default())
    }

    /// Like [`GitServers::start`], with `options`.
    pub fn start_with(options: ServerOptions) -> anyhow::Result<Self> {
        Self::start_reachable_at(options, None)
    }

    /// Like [`GitServers::start_with`], with `extra_ip` in the https certificate too: the
    /// address at which clients elsewhere reach the servers through a DNAT to 127.0.0.1 (a real
    /// node's Pods: `PrivateControlPlane::expose_to_node`).
    pub fn start_reachable_at(
        options: ServerOptions,
        extra_ip: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(&options, extra_ip) {
                Ok(servers) => return Ok(servers),
                // Free ports are found by binding port 0 and closing it, so another process
                // may take one before our server binds it: pick new ports and try again.
                Err(err)
                    if attempt < START_ATTEMPTS
                        && format!("{err:#}").contains("Address already in use") =>
                {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn start_once(
        options: &ServerOptions,
        extra_ip: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("plumb-git-")
            .tempdir()
            .context("cannot create a temporary directory for the Git servers")?;
        let root = dir.path();
        let repos_root = root.join("repos");
        let logs = root.join("logs");
        let run_dir = root.join("run");
        let client_home = root.join("client-home");
        for d in [&repos_root, &logs, &run_dir, &client_home] {
            create_dir(d)?;
        }
        let ssh_user = run_stdout(Command::new("id").arg("-un"))?;
        let username = "plumb".to_owned();
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();

        let tls = generate_tls(&root.join("tls"), extra_ip)?;
        let htpasswd = root.join("htpasswd");
        let hash = run_with_stdin(
            Command::new("openssl").args(["passwd", "-apr1", "-stdin"]),
            &password,
        )?;
        write_file(&htpasswd, format!("{username}:{hash}\n"))?;

        let ssh = generate_ssh_keys(&root.join("ssh"))?;

        let https_port = free_port()?;
        let http_port = free_port()?;
        let ssh_port = free_port()?;

        let fcgi_socket = run_dir.join("fcgiwrap.sock");
        let nginx_conf = root.join("nginx.conf");
        let nginx_log = logs.join("nginx-error.log");
        write_file(
            &nginx_conf,
            nginx_config(&NginxConfig {
                root,
                port: https_port,
                http_port,
                cert: &tls.server_cert,
                key: &tls.server_key,
                htpasswd: &htpasswd,
                fcgi_socket: &fcgi_socket,
                repos_root: &repos_root,
                error_log: &nginx_log,
                rate_limit: options.rate_limit,
            }),
        )?;

        // sshd refuses to start without its privilege separation directory.
        create_dir(Path::new("/run/sshd"))?;
        let sshd_conf = root.join("sshd_config");
        write_file(
            &sshd_conf,
            sshd_config(&ssh, ssh_port, &run_dir.join("sshd.pid")),
        )?;
        let launch = Launch {
            logs,
            fcgi_socket,
            nginx_root: root.to_path_buf(),
            nginx_conf,
            nginx_log,
            sshd_conf,
            ports: [https_port, http_port, ssh_port],
        };
        let processes = launch.spawn()?;

        let known_hosts = root.join("known_hosts");
        let known_hosts_line = format!("[127.0.0.1]:{ssh_port} {}", ssh.host_public_key);
        write_file(&known_hosts, format!("{known_hosts_line}\n"))?;

        Ok(Self {
            processes,
            repos_root,
            https_port,
            http_port,
            ssh_port,
            ssh_user,
            username,
            password,
            ca_cert: tls.ca_cert,
            ssh_client_key: ssh.client_key,
            known_hosts,
            known_hosts_line,
            client_home,
            startup: started.elapsed(),
            launch,
            dir,
        })
    }

    /// SIGKILLs every server process (as a crash or a pulled cable would: transfers in flight
    /// break off) and reaps them. Repositories, keys and ports are kept for
    /// [`GitServers::restart`]. Stopping stopped servers does nothing.
    pub fn stop(&mut self) {
        // Dropping a process kills and reaps it.
        self.processes.clear();
    }

    /// Starts the servers again (stopping them first if they run) on the same ports, with the
    /// same configuration, credentials and repositories; returns once the ports accept
    /// connections. Fails if another process took a port meanwhile.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.processes = self
            .launch
            .spawn()
            .context("restarting the Git servers on their ports")?;
        Ok(())
    }

    /// Whether the servers run (neither [`GitServers::stop`]ped nor crashed).
    pub fn is_running(&mut self) -> bool {
        !self.processes.is_empty()
            && self
                .processes
                .iter_mut()
                .all(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// While the servers answer a fetch or clone: the most bytes any process serving it
    /// (`git http-backend`, `git upload-pack`, `git pack-objects`, started by fcgiwrap or
    /// sshd) has written so far; `None` when no such process runs. With
    /// [`ServerOptions::rate_limit`], a value well below the pack's size means the transfer
    /// is under way and far from done.
    pub fn serving(&self) -> Option<u64> {
        let roots: Vec<u32> = self.processes.iter().map(|p| p.child.id()).collect();
        let parents = process_parents();
        let mut best = None;
        for (&pid, &ppid) in &parents {
            // A descendant of one of our servers?
            let mut up = ppid;
            let mut descendant = false;
            for _ in 0..16 {
                if roots.contains(&up) {
                    descendant = true;
                    break;
                }
                match parents.get(&up) {
                    Some(&next) if next != up => up = next,
                    _ => break,
                }
            }
            // Only git itself: sshd forks for any connection, even a port probe.
            let is_git = fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("git"));
            if !descendant || !is_git {
                continue;
            }
            let Some(written) = written_bytes(pid) else {
                continue;
            };
            best = Some(best.map_or(written, |b: u64| b.max(written)));
        }
        best
    }

    /// Creates the bare repository `<name>.git` (default branch `main`, pushes over https
    /// allowed). `name` uses ASCII letters, digits, `-`, `_` and `.`.
    pub fn create_repo(&self, name: &str) -> anyhow::Result<Repo> {
        check_repo_name(name)?;
        Repo::init_bare(
            name,
            self.repo_path(name),
            Some(self.https_url(name)),
            Some(self.ssh_url(name)),
            None,
        )
    }

    /// Where the bare repository `name` lives: `<repos_root>/<name>.git`.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.repos_root.join(format!("{name}.git"))
    }

    /// The directory of bare repositories both servers serve.
    pub fn repos_root(&self) -> &Path {
        &self.repos_root
    }

    /// `https://127.0.0.1:PORT/<name>.git`, without credentials.
    pub fn https_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}.git", self.https_port)
    }

    /// `http://127.0.0.1:PORT/<name>.git`: the same repository over plain http, without
    /// authentication (an internal server without TLS).
    pub fn http_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.http_port)
    }

    /// An https URL of `<name>.git` that the server answers with a redirect to
    /// `https://127.0.0.1:<port>/<name>.git` (another host, as far as credentials go).
    pub fn https_redirect_url(&self, name: &str, port: u16) -> String {
        format!(
            "https://127.0.0.1:{}/redirect/{port}/{name}.git",
            self.https_port
        )
    }

    /// `https://USER:PASSWORD@127.0.0.1:PORT/<name>.git` with the given credentials
    /// (percent-encoded), e.g. a wrong password to test failures.
    pub fn https_url_with_credentials(&self, name: &str, username: &str, password: &str) -> String {
        format!(
            "https://{}:{}@127.0.0.1:{}/{name}.git",
            percent_encode(username),
            percent_encode(password),
            self.https_port
        )
    }

    /// `ssh://USER@127.0.0.1:PORT/abs/path/<name>.git`, `USER` being [`GitServers::ssh_user`].
    pub fn ssh_url(&self, name: &str) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.ssh_user,
            self.ssh_port,
            self.repo_path(name).display()
        )
    }

    /// The plain http port (see [`GitServers::http_url`]).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The https port.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The ssh port.
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }

    /// The user name for https basic auth.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password for https basic auth (random per start).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The ssh login: the user running the tests (`id -un`).
    pub fn ssh_user(&self) -> &str {
        &self.ssh_user
    }

    /// PEM file of the self-signed CA that issued the https server's certificate (valid for
    /// `127.0.0.1` and `localhost`).
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The ed25519 private key (OpenSSH format, no passphrase) sshd accepts.
    pub fn ssh_client_key_path(&self) -> &Path {
        &self.ssh_client_key
    }

    /// A known_hosts file holding only [`GitServers::known_hosts_line`].
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...`: the ssh server's host key as known_hosts line.
    pub fn known_hosts_line(&self) -> &str {
        &self.known_hosts_line
    }

    /// How long [`GitServers::start`] took until both ports accepted connections.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `GIT_SSH_COMMAND` value that logs in with the client key and checks the host key
    /// strictly against `known_hosts`, ignoring every ssh configuration of the machine.
    pub fn ssh_command(&self, known_hosts: &Path) -> String {
        [
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes",
            "-o GlobalKnownHostsFile=/dev/null",
            &format!(
                "-o UserKnownHostsFile={}",
                shell_quote(&known_hosts.to_string_lossy())
            ),
            &format!("-i {}", shell_quote(&self.ssh_client_key.to_string_lossy())),
        ]
        .join(" ")
    }

    /// Environment for a git client of these servers: `GIT_SSL_CAINFO` (the CA),
    /// `GIT_SSH_COMMAND` (see [`GitServers::ssh_command`] with [`GitServers::known_hosts_path`]),
    /// `GIT_TERMINAL_PROMPT=0`, `GIT_CONFIG_NOSYSTEM=1` and `HOME`/`XDG_CONFIG_HOME` in an
    /// empty directory so no user configuration is read.
    pub fn client_env(&self) -> Vec<(OsString, OsString)> {
        let mut env = isolated_env(&self.client_home);
        env.push(("GIT_SSL_CAINFO".into(), self.ca_cert.clone().into()));
        env.push((
            "GIT_SSH_COMMAND".into(),
            self.ssh_command(&self.known_hosts).into(),
        ));
        env
    }

    /// A `git` command with [`GitServers::client_env`] and no inherited `GIT_*` variables.
    pub fn git(&self) -> Command {
        let mut cmd = isolated_git(&self.client_home);
        cmd.envs(self.client_env());
        cmd
    }

    /// The last lines of every server's log, to print when a test fails unexpectedly.
    pub fn log_tails(&self) -> String {
        let tails: Vec<String> = self.processes.iter().map(ServerProcess::log_tail).collect();
        tails.join("\n")
    }

    /// The pids of the server processes (fcgiwrap, nginx, sshd; each one process, no
    /// workers), while they run.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.child.id()).collect()
    }

    /// The temporary directory holding everything; logs are in `logs/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
