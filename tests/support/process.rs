//! pullthrough as a separate process, started with command-line flags and
//! environment like a deployment would: for tests where several replicas
//! run side by side or where the process's own start-up is under test.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::registry::free_port;

/// A running `pullthrough serve`; killed when dropped.
pub struct Replica {
    pub url: String,
    child: Child,
}

/// The command line of `pullthrough serve` on a free port.
pub fn serve_command(
    upstream_url: &str,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Command, u16) {
    let port = free_port();
    (
        serve_command_on(port, upstream_url, data_dir, extra, env),
        port,
    )
}

/// The command line of `pullthrough serve` on loopback `port`.
pub fn serve_command_on(
    port: u16,
    upstream_url: &str,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .arg("--upstream")
        .arg(format!("docker.io={upstream_url}"))
        .args(extra)
        .env("PULLTHROUGH_LOG", "warn")
        // How full the test machine's disk is must not evict anything.
        .env("PULLTHROUGH_DISK_MAX_PERCENT", "100")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied());
    command
}

impl Replica {
    /// Starts a replica and waits until `/readyz` says it serves (a
    /// starting replica already answers `/healthz`).
    pub async fn start(
        upstream_url: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Replica {
        Replica::start_on(free_port(), upstream_url, data_dir, extra, env).await
    }

    /// As [`Replica::start`], on loopback `port` (which the other
    /// replicas of a fleet are told before it starts).
    pub async fn start_on(
        port: u16,
        upstream_url: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Replica {
        let command = serve_command_on(port, upstream_url, data_dir, extra, env);
        Replica::spawn(command, port, data_dir, |status, _| status == 200).await
    }

    /// As [`Replica::start`], for a data directory that keeps `/readyz` at
    /// 503 on purpose (a full disk): waits until the replica has started.
    pub async fn start_unready(upstream_url: &str, data_dir: &Path, extra: &[&str]) -> Replica {
        let (command, port) = serve_command(upstream_url, data_dir, extra, &[]);
        let started = |_, body: &serde_json::Value| body["status"] != "starting";
        Replica::spawn(command, port, data_dir, started).await
    }

    /// Runs `command` (serving on `port`) until `/readyz` answers as
    /// `started` accepts.
    async fn spawn(
        mut command: std::process::Command,
        port: u16,
        data_dir: &Path,
        started: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> Replica {
        // Appended to: a replica started again keeps its earlier log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        command.stdout(log.try_clone().unwrap()).stderr(log);
        let child = command.spawn().expect("pullthrough starts");
        let replica = Replica {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let mut last = String::from("no answer");
        for _ in 0..200 {
            if let Ok(response) = reqwest::get(format!("{}/readyz", replica.url)).await {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or_default();
                if started(status, &body) {
                    return replica;
                }
                last = format!("{status} {body}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "pullthrough did not come up (/readyz: {last}): {}",
            std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
        );
    }

    /// The status of `/readyz`, if it answers.
    pub async fn ready(&self) -> Option<u16> {
        let response = reqwest::get(format!("{}/readyz", self.url)).await.ok()?;
        Some(response.status().as_u16())
    }

    /// The process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit; its status, or
    /// `None` if it still runs.
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/healthz` JSON, if it answers.
    pub async fn health(&self) -> Option<serde_json::Value> {
        let response = reqwest::get(format!("{}/healthz", self.url)).await.ok()?;
        response.json().await.ok()
    }

    /// A sample from `/metrics`, summed over series with all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::metric_sum(&text, name, labels)
    }
}

/// The anonymous resident memory (`RssAnon`: heap and stacks, not the
/// page cache of mapped files) of process `pid`, in bytes; `None` once it
/// is gone.
pub fn rss_anon(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs a command to completion, off the test's runtime.
pub async fn run_to_end(mut command: Command, timeout: Duration) -> Output {
    command.stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output().expect("starts"));
    tokio::time::timeout(timeout, output)
        .await
        .expect("finishes in time")
        .unwrap()
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
