//! The real clients from Debian's packages, started by hand for a test:
//! dockerd (with its own containerd), containerd for `ctr`, and the
//! daemonless podman and skopeo. Each gets private directories and sockets
//! and is stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::registry::require;

/// Runs a command off the test's runtime (which also serves the proxy).
pub async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("command starts"))
        .await
        .unwrap()
}

/// Runs a command and panics with its stderr unless it succeeds.
pub async fn run_ok(command: Command) -> String {
    let description = format!("{command:?}");
    let output = run(command).await;
    assert!(
        output.status.success(),
        "{description} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A daemon process, stopped with SIGTERM (then SIGKILL) when dropped.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut command: Command, log: &Path) -> Daemon {
    let log = std::fs::File::create(log).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    Daemon {
        child: command
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}")),
    }
}

/// Waits until `check` passes, or panics with the daemon's log.
async fn wait_ready(what: &str, log: &Path, mut check: impl FnMut() -> Command) {
    for _ in 0..200 {
        if run(check()).await.status.success() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// dockerd from Debian's `docker.io`, as on an ECS container instance.
pub struct Dockerd {
    pub socket: PathBuf,
    // Stopped before its directory is removed.
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd with `daemon_json` as its configuration file, vfs
    /// storage and no bridge or iptables, on a private socket.
    pub async fn start(daemon_json: &str) -> Dockerd {
        require("dockerd");
        require("curl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), daemon_json).unwrap();
        let socket = d.join("docker.sock");
        let mut command = Command::new("dockerd");
        command
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ]);
        let log = d.join("dockerd.log");
        let daemon = spawn(command, &log);
        let ping = socket.clone();
        wait_ready("dockerd", &log, || {
            let mut c = Command::new("curl");
            c.args(["-sf", "--unix-socket"])
                .arg(&ping)
                .arg("http://localhost/_ping");
            c
        })
        .await;
        Dockerd {
            socket,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// Calls the Engine API, as the ECS agent does.
    pub async fn api(&self, method: &str, path: &str) -> String {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "120",
            "--unix-socket",
        ])
        .arg(&self.socket)
        .args(["-X", method])
        .arg(format!("http://localhost{path}"));
        run_ok(curl).await
    }

    /// `POST /images/create?fromImage=…&tag=…`; panics if the pull reports an error.
    pub async fn pull(&self, image: &str, tag: &str) {
        let progress = self
            .api(
                "POST",
                &format!("/images/create?fromImage={image}&tag={tag}"),
            )
            .await;
        assert!(
            !progress.contains("\"error"),
            "pull {image}:{tag}: {progress}"
        );
    }

    /// `POST /images/create?fromImage=IMAGE&tag=v1` with `X-Registry-Auth`
    /// carrying `(user, password, server)` as the docker CLI sends it after
    /// `docker login server` (or with none); the whole answer, errors
    /// included (see [`Dockerd::pull_failed`]).
    pub async fn pull_answer(&self, image: &str, login: Option<(&str, &str, &str)>) -> String {
        use base64::Engine;
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "120", "--unix-socket"])
            .arg(&self.socket)
            .args(["-X", "POST"]);
        if let Some((user, password, server)) = login {
            let auth = serde_json::json!({
                "username": user, "password": password, "serveraddress": server
            });
            let header = base64::engine::general_purpose::URL_SAFE.encode(auth.to_string());
            curl.arg("-H").arg(format!("X-Registry-Auth: {header}"));
        }
        curl.arg(format!(
            "http://localhost/images/create?fromImage={image}&tag=v1"
        ));
        run_ok(curl).await
    }

    /// Whether an answer of [`Dockerd::pull_answer`] reports an error (in
    /// the progress stream, or as the whole answer).
    pub fn pull_failed(answer: &str) -> bool {
        answer.contains("\"error") || answer.starts_with("{\"message\"")
    }

    /// The image's `RepoDigests`, from `GET /images/<ref>/json`.
    pub async fn repo_digests(&self, reference: &str) -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_str(&self.api("GET", &format!("/images/{reference}/json")).await)
                .unwrap();
        json["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect()
    }
}

/// A `config_path` directory for `ctr --hosts-dir` whose
/// `_default/hosts.toml` (every registry's hosts) is `hosts_toml`.
pub fn default_hosts_dir(hosts_toml: &str) -> tempfile::TempDir {
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir(hosts.path().join("_default")).unwrap();
    std::fs::write(hosts.path().join("_default/hosts.toml"), hosts_toml).unwrap();
    hosts
}

/// containerd from Debian's package, for `ctr`.
pub struct Containerd {
    pub socket: PathBuf,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd with private root, state and socket, and no CRI.
    pub async fn start() -> Containerd {
        require("containerd");
        require("ctr");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            socket.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let mut command = Command::new("containerd");
        command.arg("--config").arg(d.join("config.toml"));
        let log = d.join("containerd.log");
        let daemon = spawn(command, &log);
        let address = socket.clone();
        wait_ready("containerd", &log, || {
            let mut c = Command::new("ctr");
            c.arg("--address").arg(&address).arg("version");
            c
        })
        .await;
        Containerd {
            socket,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// `ctr images pull --hosts-dir DIR REF`, unpacked with the native snapshotter.
    pub async fn pull(&self, hosts_dir: &Path, reference: &str) {
        run_ok(self.pull_command(hosts_dir, reference, &[])).await;
    }

    /// The `ctr images pull` command line, with `extra` flags such as
    /// `--user NAME:PASSWORD`.
    pub fn pull_command(&self, hosts_dir: &Path, reference: &str, extra: &[&str]) -> Command {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address")
            .arg(&self.socket)
            .args(["images", "pull", "--snapshotter", "native"]);
        ctr.args(extra)
            .arg("--hosts-dir")
            .arg(hosts_dir)
            .arg(reference);
        ctr
    }

    /// The digest containerd recorded for `reference`.
    pub async fn digest(&self, reference: &str) -> String {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address")
            .arg(&self.socket)
            .args(["images", "ls"]);
        let listing = run_ok(ctr).await;
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference));
        let line = line.unwrap_or_else(|| panic!("{reference} not in {listing}"));
        line.split_whitespace().nth(2).unwrap().to_owned()
    }
}

/// podman with private storage and the given `registries.conf`.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// A podman whose registries.conf is `registries_conf`.
    pub fn new(registries_conf: &str) -> Podman {
        require("podman");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("registries.conf"), registries_conf).unwrap();
        Podman { dir }
    }

    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut podman = Command::new("podman");
        podman.env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"));
        podman
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"));
        podman.args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
        podman
    }

    /// `podman pull REF`; returns the image's manifest digest.
    pub async fn pull(&self, reference: &str) -> String {
        run_ok(self.pull_command(reference, &[])).await;
        self.digest(reference).await
    }

    /// The manifest digest of a pulled image.
    pub async fn digest(&self, reference: &str) -> String {
        let mut inspect = self.command();
        inspect.args(["image", "inspect", "--format", "{{.Digest}}", reference]);
        run_ok(inspect).await.trim().to_owned()
    }

    /// The `podman pull -q` command line, with `extra` flags such as
    /// `--creds NAME:PASSWORD`.
    pub fn pull_command(&self, reference: &str, extra: &[&str]) -> Command {
        let mut pull = self.command();
        pull.args(["pull", "-q"]).args(extra).arg(reference);
        pull
    }
}
