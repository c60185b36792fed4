//! The bench's own HTTP client: warm-up fetches and the coalescing clients,
//! checking bodies as they stream in.

use std::time::{Duration, Instant};

use bytes::Bytes;

use sha2::{Digest as _, Sha256};

/// A client for loopback servers: no proxy from the environment, no
/// connection reuse (every coalescing client has its own connection).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// GETs `url` (with `accept`, if any) and checks that the answer is a 200
/// whose body hashes to `digest`. Returns the body's length.
pub async fn get_checked(
    client: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    digest: &str,
    timeout: Duration,
) -> Result<u64, String> {
    let fetch = async {
        let mut request = client.get(url);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(format!("GET {url}: {status}: {body}"));
        }
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: body: {e}"))?
        {
            len += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            return Err(format!(
                "GET {url}: {len} bytes hashing to {got}, expected {digest}"
            ));
        }
        Ok(len)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("GET {url}: no complete answer within {timeout:?}"))?
}

/// GETs `url` and checks that the answer is a 200 carrying exactly
/// `expected`, comparing each piece as it arrives: as exact as hashing at a
/// fraction of the CPU, for where thousands of clients share this machine
/// with the server they measure. Returns the body's length.
pub async fn get_compared(
    client: &reqwest::Client,
    url: &str,
    expected: &Bytes,
    timeout: Duration,
) -> Result<u64, String> {
    let fetch = async {
        let mut response = get_ok(client, url).await?;
        read_compared(url, &mut response, expected, Instant::now())
            .await
            .map(|(len, _)| len)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("GET {url}: no complete answer within {timeout:?}"))?
}

/// Reads the body of `response` (to `url`), checking that it is exactly
/// `expected` piece by piece as it arrives. Returns its length and how long
/// after `started` its first piece came.
pub async fn read_compared(
    url: &str,
    response: &mut reqwest::Response,
    expected: &Bytes,
    started: Instant,
) -> Result<(u64, Option<Duration>), String> {
    let mut first = None;
    let mut len = 0usize;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?
    {
        first.get_or_insert_with(|| started.elapsed());
        let end = len + chunk.len();
        if expected.get(len..end) != Some(&chunk[..]) {
            return Err(format!("GET {url}: wrong bytes in {len}..{end}"));
        }
        len = end;
    }
    if len != expected.len() {
        return Err(format!("GET {url}: {len} of {} bytes", expected.len()));
    }
    Ok((len as u64, first))
}

/// GETs `url` and returns the response, unless it failed or is not a 200.
pub async fn get_ok(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(response),
        status => Err(format!("GET {url}: {status}")),
    }
}
