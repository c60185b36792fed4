//! A tap in front of the test S3: a TCP relay on another loopback address
//! (127.0.0.2, so clients see another host than the mirror on 127.0.0.1,
//! as they would see S3 in production) that passes every byte through
//! unchanged, Host header and signatures included, and keeps the heads of
//! the requests clients sent, to show what reached the bucket: which URLs,
//! and whether any carried an `Authorization` header (S3 refuses a
//! presigned request that has one; s3s-fs does not).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay; it stops with the test process.
pub struct BucketTap {
    /// `http://127.0.0.2:<port>`: the endpoint to presign for.
    pub endpoint: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl BucketTap {
    /// Relays `127.0.0.2:<free port>` to the S3 at `target`
    /// (`http://127.0.0.1:<port>`).
    pub async fn start(target: &str) -> BucketTap {
        BucketTap::start_at("127.0.0.2", target).await
    }

    /// Relays `<host>:<free port>` (a loopback address) to `target`, any
    /// HTTP/1.1 server: also a way to see what clients send the mirror.
    pub async fn start_at(host: &str, target: &str) -> BucketTap {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind((host, 0))
            .await
            .unwrap_or_else(|e| panic!("{host} is loopback on Linux: {e}"));
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, kept.clone()));
            }
        });
        BucketTap { endpoint, heads }
    }

    /// The heads of every request relayed so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The heads of the GETs relayed so far.
    pub fn gets(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|h| h.starts_with("GET "))
            .collect()
    }

    /// The heads that carried an `Authorization` header.
    pub fn with_authorization(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|h| header(h, "authorization").is_some())
            .collect()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.heads.lock().unwrap().clear();
    }
}

/// The value of header `name` (lower case) in a request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Copies both ways; what the client sends is also cut into request heads
/// (bodies, by their Content-Length, skipped).
async fn relay(mut client: TcpStream, mut server: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let upstream = async {
        let mut pending: Vec<u8> = Vec::new();
        let mut skip = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let mut fresh = &buf[..n];
            let skipped = skip.min(fresh.len());
            skip -= skipped;
            fresh = &fresh[skipped..];
            pending.extend_from_slice(fresh);
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + 4);
                let body: usize = header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                heads.lock().unwrap().push(head);
                let in_hand = body.min(pending.len());
                pending.drain(..in_hand);
                skip = body - in_hand;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
