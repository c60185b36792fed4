//! Several pullthrough processes as one fleet: each on its own loopback
//! port and data directory, each told every member (itself included), its
//! own URL and the shared cluster secret, as a deployment would.

use super::process::Replica;
use super::registry::free_port;

/// The cluster secret the fleets of the tests share.
pub const SECRET: &str = "fleet-test-secret-0123456789";

/// Running replicas of one fleet; killed when dropped.
pub struct Fleet {
    pub replicas: Vec<Replica>,
    pub dir: tempfile::TempDir,
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
        let peers = members.join(",");
        let mut env = env.to_vec();
        env.push(("PULLTHROUGH_CLUSTER_SECRET", SECRET));
        let mut replicas = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let me = url(*port);
            let mut flags = vec!["--peers", &peers, "--advertise", &me];
            flags.extend_from_slice(extra);
            let data = dir.path().join(format!("replica-{i}"));
            replicas.push(Replica::start_on(*port, upstream_url, &data, &flags, &env).await);
        }
        Fleet { replicas, dir }
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
        let path = self.dir.path().join(format!("replica-{i}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}
