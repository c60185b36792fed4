//! The fleet's checks: every member answers the peer path with the
//! cluster secret, and this replica is one of the members.

use super::Check;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;

/// One line per member, and one for this replica's place in the list;
/// nothing without peers.
pub async fn checks(config: &Config, metrics: &Metrics) -> Vec<Check> {
    let cluster = match Cluster::from_config(config, metrics) {
        Ok(Some(cluster)) => cluster,
        Ok(None) => return Vec::new(),
        Err(e) => {
            let hint = "fix the [cluster] section (`pullthrough config` prints it)";
            return vec![Check::fail("cluster", "config", e.to_string(), hint)];
        }
    };
    let (members, advertised) = cluster.survey().await;
    let mut checks = Vec::new();
    if members.is_empty() {
        let hint = "the peers' DNS name resolves to no address: check the headless Service or Cloud Map service";
        checks.push(Check::fail("cluster", "members", "no member found", hint));
    }
    for (url, answer) in &members {
        checks.push(match answer {
            Ok(_) => Check::pass(url, "peer", "answers with the cluster secret"),
            Err(e) if e.contains("401") => Check::fail(
                url,
                "peer",
                format!("refuses this replica's secret: {e}"),
                "give every replica the same cluster.secret (or PULLTHROUGH_CLUSTER_SECRET)",
            ),
            Err(e) => Check::fail(
                url,
                "peer",
                e.clone(),
                "start it, or let this host reach its port (security groups, NetworkPolicy); until then its keys are fetched by the others",
            ),
        });
    }
    let listed = |url: &str| members.iter().any(|(m, _)| m == url);
    checks.push(match advertised {
        Some(url) if listed(&url) => Check::pass("cluster", "self", format!("this replica is {url}")),
        Some(url) => Check::fail(
            "cluster",
            "self",
            format!("this replica ({url}) is not among the members"),
            "list it in cluster.peers, or register it under the peers' DNS name",
        ),
        None => Check::skip(
            "cluster",
            "self",
            "cannot tell this replica's URL: set cluster.advertise (a running replica also finds itself by probing)",
        ),
    });
    checks
}
