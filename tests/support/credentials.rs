//! A container credentials endpoint on loopback, as the ECS agent serves a
//! task role's credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI`): the
//! test S3's keys with a session token and an expiry the test chooses, so
//! a replica signs with credentials that run out, as task roles' do.

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;

use super::s3::{ACCESS_KEY, REGION, SECRET_KEY};

/// The running endpoint; it stops with the test process.
pub struct CredentialsEndpoint {
    /// The URL to give as `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub url: String,
}

impl CredentialsEndpoint {
    /// Serves credentials that expire `lasting` after each request for them.
    pub async fn start(lasting: Duration) -> CredentialsEndpoint {
        let app = Router::new().route(
            "/credentials",
            get(move || {
                let expires = SystemTime::now() + lasting;
                async move {
                    let expiration = humantime::format_rfc3339_seconds(expires).to_string();
                    let body = serde_json::json!({
                        "AccessKeyId": ACCESS_KEY,
                        "SecretAccessKey": SECRET_KEY,
                        "Token": "test-session-token",
                        "Expiration": expiration,
                        "RoleArn": "arn:aws:iam::123456789012:role/pullthrough-task",
                    });
                    ([("content-type", "application/json")], body.to_string())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/credentials", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        CredentialsEndpoint { url }
    }

    /// The environment a replica needs to take its credentials from here
    /// (and no others).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", self.url.clone()),
            ("AWS_REGION", REGION.to_owned()),
        ]
    }
}
