//! A real S3 API on loopback for the tests: `s3s-fs` (installed by
//! tests/run), with SigV4, ranges and conditional writes, storing into a
//! temporary directory. It can be stopped and started again on the same
//! port and data, to play an outage.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use aws_sdk_s3::Client;

use super::registry::free_port;

/// The credentials the test server accepts.
pub const ACCESS_KEY: &str = "pullthrough-test";
pub const SECRET_KEY: &str = "pullthrough-test-secret";
pub const REGION: &str = "us-east-1";

/// An S3 client for a loopback endpoint: static credentials, path-style.
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> Client {
    let credentials =
        aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "tests");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// A running (or stopped) s3s-fs.
pub struct S3Server {
    pub endpoint: String,
    port: u16,
    access_key: String,
    secret_key: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Where tests/run installs s3s-fs when it is not on PATH.
fn binary() -> PathBuf {
    super::installed_tool("s3s-fs")
}

impl S3Server {
    /// Starts s3s-fs on a free port with an empty store.
    pub async fn start() -> S3Server {
        S3Server::start_with(ACCESS_KEY, SECRET_KEY).await
    }

    /// Starts s3s-fs accepting the given credentials.
    pub async fn start_with(access_key: &str, secret_key: &str) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let port = free_port();
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            dir,
            child: None,
        };
        server.resume().await;
        server
    }

    /// Starts it again on the same port and data after [`S3Server::stop`].
    pub async fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("s3s.log")).unwrap();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                &self.access_key,
                "--secret-key",
                &self.secret_key,
            ])
            .arg(self.dir.path().join("data"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("s3s-fs did not start on port {}", self.port);
    }

    /// Kills the server: every request fails until [`S3Server::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client with the server's credentials.
    pub fn client(&self) -> Client {
        client(&self.endpoint, &self.access_key, &self.secret_key)
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        self.client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("bucket created");
    }

    /// Every key under `prefix`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listed = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("listing");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// The file s3s-fs keeps an object's bytes in, to tamper with.
    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join("data").join(bucket).join(key)
    }

    /// Writes an object.
    pub async fn put(&self, bucket: &str, key: &str, bytes: bytes::Bytes) {
        self.client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .expect("object written");
    }

    /// An object's bytes.
    pub async fn get(&self, bucket: &str, key: &str) -> bytes::Bytes {
        let out = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("object exists");
        out.body.collect().await.unwrap().into_bytes()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment a pullthrough process needs to reach the test S3 with
/// `secret` (the right one is [`SECRET_KEY`]).
pub fn aws_env(secret: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", REGION),
    ]
}
