//! The three servers under test, each a subprocess on an ephemeral loopback
//! port with its files in its own temporary directory: pullthrough (the
//! release binary), nginx serving the same bytes as static files (the
//! ceiling), and distribution 2.8 in proxy mode (the incumbent).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http;
use super::procs::{ChildGuard, free_port, running_as_root, tail};

/// How long a server gets to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server process and where it listens. Field order matters: the child
/// is stopped before its directory is deleted.
pub struct Server {
    pub name: &'static str,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    child: ChildGuard,
    /// Where the server's log goes, for error messages.
    log: PathBuf,
    dir: TempDir,
}

impl Server {
    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server's log file (deleted with its temporary directory).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 15)
    }

    /// The first `max` warnings and errors in pullthrough's log.
    pub fn log_warnings(&self, max: usize) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(max)
            .map(str::to_owned)
            .collect()
    }

    /// The text of `GET /metrics` (pullthrough's Prometheus exposition).
    pub fn metrics(&self, rt: &tokio::runtime::Runtime) -> Result<String, String> {
        let url = format!("{}/metrics", self.url);
        rt.block_on(async {
            let response = http::client()
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            response.text().await.map_err(|e| format!("GET {url}: {e}"))
        })
    }

    /// Polls `GET <url><probe>` until it answers 200, failing early if the
    /// process exits.
    fn wait_ready(&mut self, rt: &tokio::runtime::Runtime, probe: &str) -> Result<(), String> {
        let url = format!("{}{probe}", self.url);
        let deadline = Instant::now() + START_TIMEOUT;
        let client = http::client();
        loop {
            super::procs::check_interrupted()?;
            if let Some(status) = self.child.exited() {
                return Err(format!(
                    "{} exited during start-up ({status}); its log:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            let answered = rt.block_on(async {
                let request = client.get(&url).timeout(Duration::from_secs(1)).send();
                matches!(request.await, Ok(r) if r.status() == 200)
            });
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer GET {url} within {START_TIMEOUT:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts a server, trying again (twice) if it fails: the free port the
/// bench picked may have been taken by someone else before the child bound it.
pub fn with_retries<T>(mut start: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match start() {
            Ok(server) => return Ok(server),
            Err(e) if attempt < 3 => {
                super::procs::check_interrupted()?;
                println!("start-up failed (attempt {attempt} of 3), trying again: {e}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))
}

fn create(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts the pullthrough binary in front of `upstream` (the simulator's
/// registry URL). The access log stays at its default `info` level, one
/// line per request, because writing it is part of what a request costs;
/// it goes to a file in the temporary directory.
pub fn start_pullthrough(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    upstream: &str,
) -> Result<Server, String> {
    start_pullthrough_with(rt, binary, upstream, "pullthrough", &[], &[])
}

/// [`start_pullthrough`] with extra command-line arguments and environment
/// (the S3 tier's flags and AWS credentials), under its own `name`, with an
/// empty data directory of its own. When `env` sets any `AWS_` variable,
/// every other `AWS_` variable of the bench's own environment (a profile, a
/// session token, an endpoint) is left out, so only `env` configures S3.
pub fn start_pullthrough_with(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    upstream: &str,
    name: &'static str,
    extra: &[String],
    env: &[(&str, &str)],
) -> Result<Server, String> {
    start_pullthrough_on(rt, binary, upstream, name, free_port()?, extra, env)
}

/// [`start_pullthrough_with`] on loopback `port`, chosen beforehand (the
/// replicas of a fleet are each told the others' ports before they start).
pub fn start_pullthrough_on(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    upstream: &str,
    name: &'static str,
    port: u16,
    extra: &[String],
    env: &[(&str, &str)],
) -> Result<Server, String> {
    let dir = temp_dir("bench-pullthrough-")?;
    let log = dir.path().join("pullthrough.log");
    let mut command = Command::new(binary);
    if env.iter().any(|(k, _)| k.starts_with("AWS_")) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                command.env_remove(key);
            }
        }
    }
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--upstream")
        .arg(format!("docker.io={upstream}"))
        .arg("--tag-ttl")
        .arg("5m")
        .args(extra)
        .env_remove("PULLTHROUGH_LOG")
        .env_remove("RUST_LOG")
        .env_remove("PULLTHROUGH_CONFIG")
        .envs(env.iter().copied())
        .stdout(Stdio::from(create(&log)?))
        .stderr(Stdio::from(create(&dir.path().join("stderr.log"))?));
    let child = ChildGuard::spawn(name, &mut command)?;
    let mut server = Server {
        name,
        url: format!("http://127.0.0.1:{port}"),
        child,
        log,
        dir,
    };
    server.wait_ready(rt, "/v2/")?;
    Ok(server)
}

/// A static file for nginx: URL path (below the root) and content.
pub struct StaticFile<'a> {
    pub path: String,
    pub bytes: &'a [u8],
}

/// Starts Debian's nginx serving `files` under their URL paths, with
/// `manifest_type` as the content type of everything under
/// `/v2/.../manifests/` and `application/octet-stream` elsewhere.
///
/// Tuned to be a fair ceiling for a user-space proxy: no sendfile (pullthrough
/// copies through user space too), 1 MiB output buffers, no access log, and
/// no cap on requests per keep-alive connection.
pub fn start_nginx(
    rt: &tokio::runtime::Runtime,
    nginx: &Path,
    files: &[StaticFile<'_>],
    manifest_type: &str,
) -> Result<Server, String> {
    start_nginx_paced(rt, nginx, files, manifest_type, None, 1024)
}

/// [`start_nginx`] for `connections` clients at once, sending the file at
/// `paced.0` at no more than `paced.1` (nginx syntax, such as `1m`) to
/// each client, as a slow upstream would.
pub fn start_nginx_paced(
    rt: &tokio::runtime::Runtime,
    nginx: &Path,
    files: &[StaticFile<'_>],
    manifest_type: &str,
    paced: Option<(&str, &str)>,
    connections: usize,
) -> Result<Server, String> {
    let dir = temp_dir("bench-nginx-")?;
    let root = dir.path().join("www");
    for file in files {
        let path = root.join(file.path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, file.bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let port = free_port()?;
    let mut conf = nginx_prologue_for(nginx, dir.path(), "auto", connections);
    let paced = paced.map_or(String::new(), |(path, rate)| {
        format!(
            "\x20       location = {path} {{ types {{ }} default_type application/octet-stream; \
             limit_rate {rate}; limit_rate_after 0; }}\n"
        )
    });
    let _ = write!(
        conf,
        "\x20   sendfile off;\n\
         \x20   output_buffers 2 1m;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port} backlog=4096;\n\
         \x20       root {root};\n\
         {paced}\
         \x20       location ~ ^/v2/.+/manifests/ {{ types {{ }} default_type {manifest_type}; }}\n\
         \x20       location /v2/ {{ types {{ }} default_type application/octet-stream; }}\n\
         \x20       location = /ready {{ return 200 \"ok\\n\"; }}\n\
         \x20   }}\n\
         }}\n",
        root = root.display(),
    );
    run_nginx(rt, nginx, dir, port, &conf, "nginx")
}

/// nginx as a reverse proxy in front of `upstream` (an S3 API) that sends
/// each response at no more than `rate` (nginx syntax, such as `16m`),
/// the way a store that caps each connection does. The Host header passes
/// through unchanged, so SigV4 signatures still verify.
pub fn start_rate_limited_proxy(
    rt: &tokio::runtime::Runtime,
    nginx: &Path,
    upstream: &str,
    rate: &str,
) -> Result<Server, String> {
    let dir = temp_dir("bench-nginx-capped-")?;
    let port = free_port()?;
    let upstream = upstream.trim_start_matches("http://");
    let mut conf = nginx_prologue(nginx, dir.path(), "1");
    // limit_rate only paces buffered proxying (unbuffered responses pass
    // at full speed); nginx reads ahead of the client, which keeps the
    // time to the first byte honest.
    let _ = write!(
        conf,
        "\x20   upstream store {{ server {upstream}; keepalive 32; }}\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       client_max_body_size 0;\n\
         \x20       location = /ready {{ return 200 \"ok\\n\"; }}\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://store;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header Host $http_host;\n\
         \x20           proxy_request_buffering off;\n\
         \x20           limit_rate {rate};\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
    );
    run_nginx(rt, nginx, dir, port, &conf, "nginx-capped")
}

/// The start of every nginx configuration the bench writes, up to and
/// inside `http {`: files under `dir`, `workers` worker processes.
fn nginx_prologue(nginx: &Path, dir: &Path, workers: &str) -> String {
    nginx_prologue_for(nginx, dir, workers, 1024)
}

/// [`nginx_prologue`] with room for `connections` connections per worker.
fn nginx_prologue_for(nginx: &Path, dir: &Path, workers: &str, connections: usize) -> String {
    let d = dir.display();
    let mut conf = String::new();
    // Workers must read the 0700 temporary directory: as root they would
    // drop to `nobody` unless told to stay root; as anyone else they
    // simply run as that user (and `user` would only draw a warning).
    if running_as_root() {
        conf.push_str("user root;\n");
    }
    let _ = write!(
        conf,
        "worker_processes {workers};\n\
         worker_rlimit_nofile {files};\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections {connections}; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         {temp_paths}",
        temp_paths = nginx_temp_paths(nginx, dir),
        files = connections * 2,
    );
    conf
}

/// Writes `conf` into `dir`, starts nginx on it and waits until `/ready`
/// answers on `port`.
fn run_nginx(
    rt: &tokio::runtime::Runtime,
    nginx: &Path,
    dir: TempDir,
    port: u16,
    conf: &str,
    name: &'static str,
) -> Result<Server, String> {
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    let log = dir.path().join("error.log");
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::from(create(&dir.path().join("stderr.log"))?));
    let child = ChildGuard::spawn(name, &mut command)?;
    let mut server = Server {
        name,
        url: format!("http://127.0.0.1:{port}"),
        child,
        log,
        dir,
    };
    server.wait_ready(rt, "/ready")?;
    Ok(server)
}

/// `*_temp_path` lines moving the compiled-in /var/lib/nginx paths (not
/// writable by an ordinary user) into `dir`, for the modules this nginx has.
fn nginx_temp_paths(nginx: &Path, dir: &Path) -> String {
    let configure = Command::new(nginx)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    ["proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .filter(|m| !configure.contains(&format!("--without-http_{m}_module")))
        .map(|m| format!("    {m}_temp_path {}/{m}_temp;\n", dir.display()))
        .collect()
}

/// Starts distribution (`docker-registry serve`) as a pull-through cache of
/// `upstream`, with filesystem storage in its temporary directory. It does
/// Docker Hub's token dance against the simulator's realm by itself.
pub fn start_distribution(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    upstream: &str,
) -> Result<Server, String> {
    let dir = temp_dir("bench-distribution-")?;
    let port = free_port()?;
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: 127.0.0.1:{port}\n\
         proxy:\n  remoteurl: {upstream}\n",
        dir.path().join("data").display()
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let log = dir.path().join("registry.log");
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg(&config_path)
        // Its access log (stdout) is written like pullthrough's.
        .stdout(Stdio::from(create(&dir.path().join("access.log"))?))
        .stderr(Stdio::from(create(&log)?));
    let child = ChildGuard::spawn("distribution", &mut command)?;
    let mut server = Server {
        name: "distribution",
        url: format!("http://127.0.0.1:{port}"),
        child,
        log,
        dir,
    };
    server.wait_ready(rt, "/v2/")?;
    Ok(server)
}

/// `true` once distribution has committed `digest` to its own storage for
/// `repo` (it stores proxied blobs in the background, after the client's
/// copy; until then every GET goes upstream again).
pub fn distribution_has_blob(server: &Server, repo: &str, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    server
        .dir()
        .join("data/docker/registry/v2/repositories")
        .join(repo)
        .join("_layers/sha256")
        .join(hex)
        .join("link")
        .is_file()
}
