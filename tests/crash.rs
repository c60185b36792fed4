//! kill -9 in the middle of a large download: the mirror's process dies
//! with a temporary file half written. Nothing partial may ever be served
//! or found in the cache, and the restarted mirror serves the whole blob.
//!
//! The mirror runs as its real binary here, so the kill is a real SIGKILL.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::disk::{assert_objects_whole, files_under};
use support::hubsim::{HubSim, SimOptions};
use support::process::Replica;
use support::{random_bytes, sha256_digest};

const MIB: usize = 1024 * 1024;
const BLOB: usize = 200 * MIB;

#[tokio::test]
async fn a_download_killed_mid_way_leaves_nothing_partial_and_the_restart_serves_it_whole() {
    let sim = HubSim::start_with(SimOptions {
        // About four seconds for the whole blob.
        cdn_bytes_per_sec: Some(50 * MIB as u64),
        ..SimOptions::default()
    })
    .await;
    let blob = random_bytes(BLOB, 90);
    let digest = sim.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = |replica: &Replica| format!("{}/v2/library/huge/blobs/{digest}", replica.url);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let replica = Replica::start(&sim.registry_url, &data, &[], &[]).await;
    let response = http.get(url(&replica)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(BLOB as u64));
    let mut body = response.bytes_stream();
    let mut received = Vec::with_capacity(BLOB);
    while received.len() < BLOB * 2 / 5 {
        received.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    // Dropping a replica kills it with SIGKILL and reaps it.
    drop(replica);
    let broke = loop {
        match body.next().await {
            Some(Ok(piece)) => received.extend_from_slice(&piece),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(
        broke,
        "the cut-off transfer ends in an error, never a clean end"
    );
    assert!(received.len() < BLOB, "the client never got it all");
    assert!(
        received[..] == blob[..received.len()],
        "every byte served before the kill was right"
    );
    let cache = data.join("cache");
    assert_eq!(assert_objects_whole(&cache), 0, "nothing of it is cached");
    assert!(
        !files_under(&cache.join("tmp")).is_empty(),
        "the kill left its temporary file"
    );

    let replica = Replica::start(&sim.registry_url, &data, &[], &[]).await;
    assert!(
        files_under(&cache.join("tmp")).is_empty(),
        "start-up clears what the crash left"
    );
    let whole = http
        .get(url(&replica))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len(), BLOB);
    assert_eq!(sha256_digest(&whole), digest);
    support::wait_until_async(async || assert_objects_whole(&cache) == 1).await;
    drop(replica);
}
