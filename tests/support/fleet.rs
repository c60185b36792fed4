//! Several pullthrough processes as one fleet: each on its own loopback
//! port and data directory, each told every member (itself included), its
//! own URL and the shared cluster secret, as a deployment would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::Replica;
use super::registry::free_port;

/// The cluster secret the fleets of the tests share.
pub const SECRET: &str = "fleet-test-secret-0123456789";

/// Running replicas of one fleet; killed when dropped.
pub struct Fleet {
    pub replicas: Vec<Replica>,
    pub dir: tempfile::TempDir,
    /// How each replica was started, to start it again.
    ports: Vec<u16>,
    upstream_url: String,
    flags: Vec<String>,
    env: Vec<(String, String)>,
}

/// `http://127.0.0.1:<port>`.
pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Fleet {
    /// `n` replicas in front of `upstream_url`, with `extra` flags and
    /// `env` each.
    pub async fn start(
        n: usize,
        upstream_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Fleet {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let members: Vec<String> = ports.iter().map(|p| url(*p)).collect();
        let fleet = Fleet::start_listing(&ports, &members, upstream_url, extra, env).await;
        fleet.formed().await;
        fleet
    }

    /// Waits until every replica has seen every other one answer its
    /// probe: a replica that started first found the others not yet
    /// listening, and passes them over until its next probe.
    pub async fn formed(&self) {
        let others = (self.replicas.len() - 1) as f64;
        for replica in &self.replicas {
            let up = async || {
                replica
                    .metric("pullthrough_cluster_members", &[("state", "up")])
                    .await
                    == others
            };
            super::wait_until_async(up).await;
        }
    }

    /// Replicas on `ports`, each told that the fleet is `members` (which
    /// may name replicas that do not exist).
    pub async fn start_listing(
        ports: &[u16],
        members: &[String],
        upstream_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        Fleet::start_in(dir, ports, members, upstream_url, extra, env).await
    }

    /// As [`Fleet::start_listing`], in `dir`: replica `i` keeps its data
    /// in [`data_dir`]`(dir, i)`, which the caller may have prepared (a
    /// small file system mounted there, say).
    pub async fn start_in(
        dir: tempfile::TempDir,
        ports: &[u16],
        members: &[String],
        upstream_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Fleet {
        let mut flags = vec!["--peers".to_owned(), members.join(",")];
        flags.extend(extra.iter().map(|f| f.to_string()));
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("PULLTHROUGH_CLUSTER_SECRET".to_owned(), SECRET.to_owned()));
        let mut fleet = Fleet {
            replicas: Vec::new(),
            dir,
            ports: ports.to_vec(),
            upstream_url: upstream_url.to_owned(),
            flags,
            env,
        };
        for i in 0..ports.len() {
            let replica = fleet.start_replica(i).await;
            fleet.replicas.push(replica);
        }
        fleet
    }

    /// Starts replica `i` on its port and data directory, and waits until
    /// it serves.
    async fn start_replica(&self, i: usize) -> Replica {
        let me = url(self.ports[i]);
        let mut flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        flags.extend(["--advertise", &me]);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let data = data_dir(self.dir.path(), i);
        Replica::start_on(self.ports[i], &self.upstream_url, &data, &flags, &env).await
    }

    /// Kills replica `i` with SIGKILL, as the OOM killer or a lost node
    /// does (nothing is flushed or closed), and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        let pid = self.replicas[i].pid() as libc::pid_t;
        // SAFETY: kill only sends a signal, to a child this fleet started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let exited = self.replicas[i].exited(Duration::from_secs(5)).await;
        assert!(exited.is_some(), "replica {i} exits on SIGKILL");
    }

    /// Starts replica `i` again, after [`Fleet::kill`], on the same port
    /// and data directory, and waits until it serves.
    pub async fn restart(&mut self, i: usize) {
        self.replicas[i] = self.start_replica(i).await;
    }

    /// A metric summed over every replica still answering.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for replica in &self.replicas {
            if replica.ready().await.is_some() {
                sum += replica.metric(name, labels).await;
            }
        }
        sum
    }

    /// The log of replica `i`, for a failure message.
    pub fn log(&self, i: usize) -> String {
        let path = data_dir(self.dir.path(), i).with_extension("log");
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

/// Where replica `i` of a fleet in `dir` keeps its data.
pub fn data_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("replica-{i}"))
}
