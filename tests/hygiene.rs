//! Connection hygiene on a real socket: a slowloris client is cut off at
//! the header timeout while a thousand normal clients are served, an idle
//! keep-alive connection closes at the idle timeout (not the shorter
//! header timeout), a client that stops reading a response is cut off,
//! connection N+1 waits for a free place, one address cannot hold more
//! than its share of requests, and oversized heads are refused.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::client::Client;
use support::hubsim::{HubSim, SimOptions};
use support::proxy::{Proxy, config};
use support::random_bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(proxy: &Proxy) -> SocketAddr {
    proxy.url.trim_start_matches("http://").parse().unwrap()
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) and
/// returns its status line; `None` if the connection closed first.
async fn read_response(tcp: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Some(head.lines().next().unwrap().to_owned());
            }
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits up to `within` for the server to close `tcp`; whether it did.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

const BASE_REQUEST: &[u8] = b"GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n";

/// A slowloris client: a request line and one header line, then one more
/// header line every 300 ms, never the end of the head. Returns how long
/// the server kept the connection open.
async fn slowloris(addr: SocketAddr) -> Duration {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /v2/library/app/manifests/v1 HTTP/1.1\r\nHost: mirror\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    for line in 0.. {
        match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => panic!("answered a request whose head never ended"),
            Err(_) => {}
        }
        let header = format!("X-Slow-{line}: still typing\r\n");
        if tcp.write_all(header.as_bytes()).await.is_err() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never disconnected"
        );
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_at_the_header_timeout_while_a_thousand_clients_are_served() {
    let sim = HubSim::start().await;
    sim.push_image("library/app", "v1", &[random_bytes(4096, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    let header_timeout = Duration::from_secs(2);
    cfg.listen_limits.header_read_timeout = header_timeout;
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);
    assert_eq!(client.manifest("library/app", "v1").await.status, 200);

    let addr = addr(&proxy);
    let slow: Vec<_> = (0..300).map(|_| tokio::spawn(slowloris(addr))).collect();
    let served = futures_util::stream::iter(0..1000)
        .map(|_| {
            let client = client.clone();
            async move { client.manifest("library/app", "v1").await.status }
        })
        .buffer_unordered(100)
        .collect::<Vec<u16>>()
        .await;
    assert_eq!(served.len(), 1000);
    assert!(served.iter().all(|s| *s == 200), "all served: {served:?}");

    for held in slow {
        let held = held.await.unwrap();
        assert!(
            held >= header_timeout - Duration::from_millis(100),
            "cut off early: {held:?}"
        );
        assert!(
            held < header_timeout + Duration::from_secs(3),
            "held {held:?}"
        );
    }
    let closed = proxy.metric(
        "pullthrough_connections_closed_total",
        &[("reason", "header_timeout")],
    );
    assert!(closed >= 300.0, "counted: {closed}");
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_the_idle_timeout_not_the_header_timeout() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.listen_limits.header_read_timeout = Duration::from_secs(1);
    cfg.listen_limits.idle_timeout = Duration::from_secs(3);
    let proxy = Proxy::start(cfg).await;
    let addr = addr(&proxy);

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a connection that sends nothing closes"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "at the header timeout: {:?}",
        opened.elapsed()
    );

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(BASE_REQUEST).await.unwrap();
    assert_eq!(
        read_response(&mut tcp).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tcp.write_all(BASE_REQUEST).await.unwrap();
    assert_eq!(
        read_response(&mut tcp).await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "still open after idling longer than the header timeout"
    );
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut tcp, Duration::from_secs(6)).await,
        "idle connections close"
    );
    let idled = idle_from.elapsed();
    assert!(
        idled >= Duration::from_millis(2900) && idled < Duration::from_secs(5),
        "after {idled:?}"
    );
    let closed = |reason| {
        proxy.metric(
            "pullthrough_connections_closed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(
        (closed("header_timeout"), closed("idle_timeout")),
        (1.0, 1.0)
    );
}

#[tokio::test]
async fn connection_n_plus_one_waits_for_a_free_place() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.listen_limits.max_connections = 4;
    let proxy = Proxy::start(cfg).await;
    let addr = addr(&proxy);

    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(BASE_REQUEST).await.unwrap();
        assert_eq!(
            read_response(&mut tcp).await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        held.push(tcp);
    }
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    fifth.write_all(BASE_REQUEST).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(1), read_response(&mut fifth)).await;
    assert!(
        waited.is_err(),
        "the fifth connection is not served while four are open"
    );
    assert_eq!(proxy.metric("pullthrough_connections_open", &[]), 4.0);
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(3), read_response(&mut fifth)).await;
    assert_eq!(
        answer.unwrap().as_deref(),
        Some("HTTP/1.1 200 OK"),
        "served once one closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_429_beyond_its_requests_in_flight_and_others_are_served() {
    // 512 KiB at 128 KiB/s: each download stays in flight for about 4 s.
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(128 * 1024),
        ..SimOptions::default()
    })
    .await;
    let image = sim.push_image("library/slow", "v1", &[random_bytes(512 * 1024, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.listen_limits.max_requests_per_ip = 2;
    let proxy = Proxy::start(cfg).await;
    let from = |ip: &str| Client::from_address(&proxy.url, Some(ip.parse::<IpAddr>().unwrap()));
    let (a, b) = (from("127.0.0.1"), from("127.0.0.2"));
    assert_eq!(a.manifest("library/slow", "v1").await.status, 200);

    let blob = image.layer_digests[0].clone();
    let downloads: Vec<_> = (0..2)
        .map(|_| {
            let (a, blob) = (a.clone(), blob.clone());
            tokio::spawn(async move { a.blob("library/slow", &blob).await.unwrap().status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let refused = a.get("/v2/").await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (429, "TOOMANYREQUESTS")
    );
    assert_eq!(refused.header("retry-after"), "1");
    let refusals = proxy.metric(
        "pullthrough_requests_refused_total",
        &[("reason", "per_ip_limit")],
    );
    assert_eq!(refusals, 1.0);
    assert_eq!(
        b.get("/v2/").await.status,
        200,
        "another address is not limited"
    );
    for download in downloads {
        assert_eq!(download.await.unwrap(), 200);
    }
    assert_eq!(
        a.get("/v2/").await.status,
        200,
        "places come back when responses end"
    );
}

#[tokio::test]
async fn oversized_heads_are_refused_and_large_ones_within_the_limit_served() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let addr = addr(&proxy);
    for (size, expected) in [
        (32 * 1024, Some("HTTP/1.1 200 OK")),
        (
            80 * 1024,
            Some("HTTP/1.1 431 Request Header Fields Too Large"),
        ),
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(
            read_response(&mut tcp).await.as_deref(),
            expected,
            "{size} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_response_is_disconnected() {
    let sim = HubSim::start().await;
    // Far more than the two ends' socket buffers hold, so writes block.
    let image = sim.push_image("library/big", "v1", &[random_bytes(16 << 20, 4)]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.listen_limits.idle_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(cfg).await;
    Client::new(&proxy.url).pull("library/big", "v1").await;
    // A cached blob, not a download still being stored: the request below
    // must not join the pull's download.
    let downloading = || proxy.metric("pullthrough_downloads_active", &[]);
    support::wait_until_async(async || downloading() == 0.0).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut tcp = socket.connect(addr(&proxy)).await.unwrap();
    let request = format!(
        "GET /v2/library/big/blobs/{} HTTP/1.1\r\nHost: mirror\r\n\r\n",
        image.layer_digests[0]
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let stalled = || {
        proxy.metric(
            "pullthrough_connections_closed_total",
            &[("reason", "write_stalled")],
        )
    };
    support::wait_until_async(async || stalled() == 1.0).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "noticed within twice the idle timeout: {took:?}"
    );
    assert_eq!(proxy.metric("pullthrough_connections_open", &[]), 0.0);
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
        received += n;
    }
    assert!(
        received < 48 << 20,
        "the response was cut off after {received} bytes"
    );
}
