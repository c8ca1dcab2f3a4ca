//! The server processes: started alike (and again after a stop), killed and reaped on drop,
//! waited for; and what `/proc` tells about them.

use super::*;

impl Launch {
    /// Starts fcgiwrap, nginx and sshd and waits until their socket and ports accept
    /// connections.
    pub(super) fn spawn(&self) -> anyhow::Result<Vec<ServerProcess>> {
        let mut processes = Vec::new();
        // fcgiwrap runs git http-backend for nginx (one process, forking one backend per
        // request). A socket left by a killed fcgiwrap would make the new one fail to bind.
        let _ = fs::remove_file(&self.fcgi_socket);
        let mut fcgiwrap = Command::new(FCGIWRAP);
        fcgiwrap
            .arg("-s")
            .arg(format!("unix:{}", self.fcgi_socket.display()));
        processes.push(ServerProcess::spawn(
            "fcgiwrap",
            &mut fcgiwrap,
            self.logs.join("fcgiwrap.log"),
        )?);

        let mut nginx = Command::new(NGINX);
        nginx
            .arg("-p")
            .arg(&self.nginx_root)
            .arg("-c")
            .arg(&self.nginx_conf)
            .arg("-e")
            .arg(&self.nginx_log);
        processes.push(ServerProcess::spawn(
            "nginx",
            &mut nginx,
            self.logs.join("nginx.stderr.log"),
        )?);
        // nginx writes bind errors and the like to its error log, not to stderr.
        if let Some(nginx) = processes.last_mut() {
            nginx.extra_log = Some(self.nginx_log.clone());
        }

        let mut sshd = Command::new(SSHD);
        sshd.args(["-D", "-e", "-f"]).arg(&self.sshd_conf);
        processes.push(ServerProcess::spawn(
            "sshd",
            &mut sshd,
            self.logs.join("sshd.log"),
        )?);

        let deadline = Instant::now() + READY_TIMEOUT;
        wait_until(&mut processes, deadline, "fcgiwrap's socket", || {
            self.fcgi_socket.exists()
        })?;
        for port in self.ports {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            wait_until(&mut processes, deadline, &format!("port {port}"), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
        }
        Ok(processes)
    }
}

/// A server child process: killed and reaped on drop.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    pub(super) name: &'static str,
    pub(super) child: Child,
    pub(super) log: PathBuf,
    pub(crate) extra_log: Option<PathBuf>,
    pub(super) pid_file: Option<PathBuf>,
}

impl ServerProcess {
    /// Starts `cmd` with stdout and stderr appended to `log` and records its pid in
    /// `$PLUMB_TEST_PIDS_DIR` when set.
    pub(crate) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        // Appending: after a restart the log still shows what happened before it.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?}); is it installed?"))?;
        let mut process = Self {
            name,
            child,
            log,
            extra_log: None,
            pid_file: None,
        };
        if let Some(pids_dir) = std::env::var_os(PIDS_DIR_ENV) {
            let pids_dir = PathBuf::from(pids_dir);
            create_dir(&pids_dir)?;
            let pid = process.child.id();
            let file = pids_dir.join(format!("plumb-testsupport-{name}-{pid}.pid"));
            write_file(&file, format!("{pid}\n"))?;
            process.pid_file = Some(file);
        }
        Ok(process)
    }

    /// Fails, quoting the log, if the process has exited.
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("cannot check whether {} runs", self.name))?;
        match status {
            None => Ok(()),
            Some(status) => bail!("{} exited with {status}\n{}", self.name, self.log_tail()),
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let mut text = format!(
            "--- {} (last lines) ---\n{}",
            self.log.display(),
            tail(&self.log, LOG_TAIL)
        );
        if let Some(extra) = &self.extra_log {
            text.push_str(&format!(
                "\n--- {} (last lines) ---\n{}",
                extra.display(),
                tail(extra, LOG_TAIL)
            ));
        }
        text
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Errors mean the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(file) = &self.pid_file {
            let _ = fs::remove_file(file);
        }
    }
}

/// Polls `ready` until it holds, failing if a process dies or `deadline` passes; both errors
/// quote the logs.
pub(crate) fn wait_until(
    processes: &mut [ServerProcess],
    deadline: Instant,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    loop {
        for process in processes.iter_mut() {
            process
                .check_running()
                .with_context(|| format!("waiting for {what}"))?;
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = processes.iter().map(ServerProcess::log_tail).collect();
            bail!(
                "servers not ready: {what} not up after {READY_TIMEOUT:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every process's parent, from `/proc/<pid>/stat`.
pub(super) fn process_parents() -> std::collections::HashMap<u32, u32> {
    let mut parents = std::collections::HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// The bytes process `pid` has written (`wchar` of `/proc/<pid>/io`).
pub(super) fn written_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr().context("no local address")?.port())
}
