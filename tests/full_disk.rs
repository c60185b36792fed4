//! A disk that cannot take a download costs a bounded window of memory,
//! never the download's size: 1 GiB layers pulled through a replica whose
//! data directory is a 16 MB tmpfs, with the replica's anonymous memory
//! sampled from `/proc`; and the window's two edges, a client that arrives
//! after the bytes it wants were dropped and a client that stops reading.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use support::disk::{Tmpfs, assert_objects_whole};
use support::hubsim::{HubSim, SimOptions};
use support::process::{Replica, rss_anon};
use support::proxy::{Proxy, config};

const MIB: usize = 1024 * 1024;
const GIB: usize = 1024 * MIB;

/// A large blob, cheap to make: one random MiB repeated, the first bytes
/// telling blobs apart.
fn large_blob(len: usize, seed: u64) -> Bytes {
    let block = support::random_bytes(MIB, seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let take = (len - out.len()).min(MIB);
        out.extend_from_slice(&block[..take]);
    }
    out[..8].copy_from_slice(&seed.to_le_bytes());
    Bytes::from(out)
}

/// What a client streamed: the status, the length and digest of the body,
/// and the error that cut it short, if one did.
struct Pulled {
    status: u16,
    len: u64,
    digest: String,
    error: Option<String>,
}

/// GETs a blob, hashing the body as it streams instead of keeping it.
async fn pull(base: &str, digest: &str) -> Pulled {
    let url = format!("{base}/v2/library/big/blobs/{digest}");
    let response = reqwest::get(url).await.expect("an answer");
    let status = response.status().as_u16();
    let (mut hasher, mut len) = (Sha256::new(), 0u64);
    let mut body = response.bytes_stream();
    let mut error = None;
    while let Some(piece) = body.next().await {
        match piece {
            Ok(piece) => {
                hasher.update(&piece);
                len += piece.len() as u64;
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    Pulled {
        status,
        len,
        digest,
        error,
    }
}

/// Samples `pid`'s `RssAnon` every 20 ms until dropped; keeps the peak.
struct PeakAnon {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakAnon {
    fn start(pid: u32) -> PeakAnon {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_anon(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        PeakAnon { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakAnon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gigabyte_layers_on_a_full_disk_cost_a_window_of_memory_not_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _tmpfs = Tmpfs::mount(&data, "size=16m");
    let sim = HubSim::start().await;
    let digests: Vec<String> = (0..3)
        .map(|seed| sim.put_blob(large_blob(GIB, 900 + seed)))
        .collect();
    let replica = Replica::start_unready(&sim.registry_url, &data, &[]).await;
    let idle = rss_anon(replica.pid()).unwrap();
    let sampler = PeakAnon::start(replica.pid());

    let one = pull(&replica.url, &digests[0]).await;
    assert_eq!((one.status, one.len), (200, GIB as u64), "{:?}", one.error);
    assert_eq!(one.digest, digests[0]);
    let after_one = sampler.peak().saturating_sub(idle);

    let three = futures_util::future::join_all(digests.iter().map(|d| pull(&replica.url, d))).await;
    for (pulled, digest) in three.iter().zip(&digests) {
        assert_eq!(
            (pulled.status, pulled.len),
            (200, GIB as u64),
            "{:?}",
            pulled.error
        );
        assert_eq!(&pulled.digest, digest);
    }
    let after_three = sampler.peak().saturating_sub(idle);
    eprintln!(
        "RssAnon: {:.1} MiB idle; peak growth {:.1} MiB for one 1 GiB pull, {:.1} MiB with three at once",
        idle as f64 / MIB as f64,
        after_one as f64 / MIB as f64,
        after_three as f64 / MIB as f64
    );
    assert!(
        after_one < 64 * MIB as u64,
        "one pull grew RssAnon by {after_one} bytes"
    );
    assert!(
        after_three < 64 * MIB as u64,
        "three pulls grew RssAnon by {after_three} bytes"
    );
    assert_eq!(
        sim.counters().cdn_gets,
        4,
        "one download per pull, none cached"
    );
    assert_eq!(
        replica
            .metric("pullthrough_download_memory_bytes", &[])
            .await,
        0.0,
        "every window given back"
    );
    assert_eq!(assert_objects_whole(&data.join("cache")), 0);
}

/// A proxy on a full disk whose downloads hold at most 4 MiB in memory.
async fn windowed(sim: &HubSim, data: &std::path::Path) -> Proxy {
    let mut config = config(&sim.registry_url, data);
    config.memory.max_download_bytes = Some(bytesize::ByteSize::mib(4));
    Proxy::start(config).await
}

#[tokio::test]
async fn a_client_that_comes_after_the_window_moved_on_gets_a_download_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "size=2m");
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(16 * MIB as u64),
        ..SimOptions::default()
    })
    .await;
    let blob = large_blob(48 * MIB, 7);
    let digest = sim.put_blob(blob);
    let proxy = windowed(&sim, dir.path()).await;

    let first = tokio::spawn({
        let (url, digest) = (proxy.url.clone(), digest.clone());
        async move { pull(&url, &digest).await }
    });
    // A second later the first client is some 16 MiB in, well past the
    // 4 MiB window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = pull(&proxy.url, &digest).await;
    let first = first.await.unwrap();
    for pulled in [&first, &late] {
        assert_eq!(pulled.status, 200);
        assert_eq!(pulled.digest, digest, "{:?}", pulled.error);
    }
    assert_eq!(sim.counters().cdn_gets, 2, "the late client's own download");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "size=2m");
    let sim = HubSim::start().await;
    let blob = large_blob(256 * MIB, 8);
    let digest = sim.put_blob(blob);
    let proxy = windowed(&sim, dir.path()).await;

    // The stalled client takes its answer's head and one piece, then
    // stops reading (its socket buffers fill) and holds the connection.
    let url = format!("{}/v2/library/big/blobs/{digest}", proxy.url);
    let stalled = reqwest::get(&url).await.unwrap();
    assert_eq!(stalled.status(), 200);
    let mut stalled = stalled.bytes_stream();
    stalled.next().await.unwrap().unwrap();

    // Without the cut-off the reader would wait on the stalled client for
    // ever; the bound only keeps a failure from hanging the suite.
    let reader = tokio::time::timeout(Duration::from_secs(180), pull(&proxy.url, &digest))
        .await
        .expect("the reader was held up by the stalled client");
    assert_eq!(reader.digest, digest, "{:?}", reader.error);
    // The stalled client's body ends in an error, never a complete 200.
    let mut rest = 0u64;
    let ended = loop {
        match stalled.next().await {
            Some(Ok(piece)) => rest += piece.len() as u64,
            Some(Err(_)) => break "error",
            None => break "end",
        }
    };
    assert_eq!(ended, "error", "after {rest} more bytes");
    // One download, or two when the reader came after the stalled client's
    // first bytes were dropped (it then gets a download of its own): both
    // are right, and which one happens is a matter of timing.
    assert!(sim.counters().cdn_gets <= 2);
    assert!(proxy.metric("pullthrough_download_clients_cut_total", &[]) >= 1.0);
}
