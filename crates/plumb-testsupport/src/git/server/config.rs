//! What the servers are configured with: TLS certificates, SSH keys, sshd and nginx configs.

use super::*;

pub(crate) struct Tls {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
}

/// A self-signed CA (P-256) and a server certificate it issued for 127.0.0.1, localhost and
/// `extra_ip` (an address that reaches the servers through a DNAT, e.g. a real node's).
pub(crate) fn generate_tls(dir: &Path, extra_ip: Option<std::net::IpAddr>) -> anyhow::Result<Tls> {
    create_dir(dir)?;
    let ca_key = dir.join("ca.key");
    let ca_cert = dir.join("ca.crt");
    let server_key = dir.join("server.key");
    let server_csr = dir.join("server.csr");
    let server_cert = dir.join("server.crt");
    let server_ext = dir.join("server.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "7", "-subj", "/CN=Plumb test CA"])
        .args(ec)
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_cert))
    .context("cannot generate the test CA")?;
    run(Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=localhost"])
        .args(ec)
        .arg("-keyout")
        .arg(&server_key)
        .arg("-out")
        .arg(&server_csr))
    .context("cannot generate the https server key")?;
    let extra = extra_ip.map(|ip| format!(",IP:{ip}")).unwrap_or_default();
    write_file(
        &server_ext,
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost{extra}\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n"
        ),
    )?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "7", "-set_serial", "2"])
        .arg("-in")
        .arg(&server_csr)
        .arg("-CA")
        .arg(&ca_cert)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&server_ext)
        .arg("-out")
        .arg(&server_cert))
    .context("cannot sign the https server certificate")?;
    Ok(Tls {
        ca_cert,
        server_cert,
        server_key,
    })
}

pub(super) struct SshKeys {
    pub(super) host_key: PathBuf,
    pub(super) host_public_key: String,
    pub(super) client_key: PathBuf,
    pub(super) authorized_keys: PathBuf,
}

/// An ed25519 host key, an ed25519 client key and an authorized_keys file allowing it.
pub(super) fn generate_ssh_keys(dir: &Path) -> anyhow::Result<SshKeys> {
    create_dir(dir)?;
    let keygen = |path: &Path, comment: &str| -> anyhow::Result<String> {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path))?;
        let public = path.with_extension("pub");
        Ok(fs::read_to_string(&public)
            .with_context(|| format!("cannot read {}", public.display()))?
            .trim_end()
            .to_owned())
    };
    let host_key = dir.join("ssh_host_ed25519_key");
    let host_public_key = keygen(&host_key, "plumb-test-host")?;
    let client_key = dir.join("client_ed25519");
    let client_public_key = keygen(&client_key, "plumb-test-client")?;
    let authorized_keys = dir.join("authorized_keys");
    write_file(&authorized_keys, format!("{client_public_key}\n"))?;
    // known_hosts lines carry no comment.
    let host_public_key = host_public_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(SshKeys {
        host_key,
        host_public_key,
        client_key,
        authorized_keys,
    })
}

pub(super) fn sshd_config(keys: &SshKeys, port: u16, pid_file: &Path) -> String {
    format!(
        "ListenAddress 127.0.0.1:{port}\n\
         HostKey {host_key}\n\
         PidFile {pid_file}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         AllowTcpForwarding no\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         AcceptEnv GIT_PROTOCOL\n\
         SetEnv GIT_CONFIG_NOSYSTEM=1\n\
         LogLevel VERBOSE\n",
        host_key = keys.host_key.display(),
        pid_file = pid_file.display(),
        authorized_keys = keys.authorized_keys.display(),
    )
}

pub(super) struct NginxConfig<'a> {
    pub(super) root: &'a Path,
    pub(super) port: u16,
    pub(super) http_port: u16,
    pub(super) cert: &'a Path,
    pub(super) key: &'a Path,
    pub(super) htpasswd: &'a Path,
    pub(super) fcgi_socket: &'a Path,
    pub(super) repos_root: &'a Path,
    pub(super) error_log: &'a Path,
    pub(super) rate_limit: Option<u64>,
}

/// Single-process nginx in the foreground with every path in the temporary directory.
pub(super) fn nginx_config(c: &NginxConfig<'_>) -> String {
    let root = c.root.display();
    // Unbuffered, every byte reaches the client as git writes it. limit_rate holds only for
    // buffered responses: then small buffers and no temporary file keep nginx from reading far
    // ahead, so that git itself sends at about the limited rate.
    let buffering = match c.rate_limit {
        None => "fastcgi_buffering off;".to_owned(),
        Some(r) => format!(
            "fastcgi_buffering on;\n            fastcgi_buffers 4 16k;\n            \
             fastcgi_max_temp_file_size 0;\n            limit_rate {r};"
        ),
    };
    let backend_params = format!(
        r#"            fastcgi_pass unix:{socket};
            {buffering}
            fastcgi_request_buffering off;
            fastcgi_read_timeout 300s;
            fastcgi_param SCRIPT_FILENAME {backend};
            fastcgi_param GIT_PROJECT_ROOT {repos};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
            fastcgi_param HOME {root}/run;
            fastcgi_param PATH /usr/local/bin:/usr/bin:/bin;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;"#,
        socket = c.fcgi_socket.display(),
        backend = GIT_HTTP_BACKEND,
        repos = c.repos_root.display(),
    );
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {root}/run/nginx.pid;
error_log {error_log} info;
events {{ worker_connections 128; }}
http {{
    access_log {root}/logs/nginx-access.log;
    client_body_temp_path {root}/run/client_body;
    proxy_temp_path {root}/run/proxy;
    fastcgi_temp_path {root}/run/fastcgi;
    uwsgi_temp_path {root}/run/uwsgi;
    scgi_temp_path {root}/run/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost 127.0.0.1;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # Redirects to another port, for tests of what a client sends after a redirect.
        location ~ ^/redirect/(?<rport>[0-9]+)/(?<rest>.*)$ {{
            return 302 https://127.0.0.1:$rport/$rest$is_args$args;
        }}
        location / {{
            auth_basic "Plumb test Git";
            auth_basic_user_file {htpasswd};
            fastcgi_param HTTPS on;
{backend_params}
        }}
    }}
    # The same repositories over plain http without authentication.
    server {{
        listen 127.0.0.1:{http_port};
        server_name localhost 127.0.0.1;
        location / {{
{backend_params}
        }}
    }}
}}
"#,
        error_log = c.error_log.display(),
        port = c.port,
        http_port = c.http_port,
        backend_params = backend_params,
        cert = c.cert.display(),
        key = c.key.display(),
        htpasswd = c.htpasswd.display(),
    )
}
