//! The base-endpoint check for `pullthrough doctor`: `GET /v2/` through
//! the same exchange every request uses, so the token flow (with the
//! configured credentials) runs exactly as it will for a pull.

use http::{Method, StatusCode, header};
use reqwest::Url;

use super::exchange::Ask;
use super::{Upstream, UpstreamError};
use crate::reference::RepoName;

/// What `/v2/` answered.
#[derive(Debug, Clone)]
pub struct BaseAnswer {
    pub status: StatusCode,
    /// The `Date` header, for the clock-skew check.
    pub date: Option<std::time::SystemTime>,
}

/// The repository a token is asked for when only `/v2/` is checked.
const CHECK_REPO: &str = "ratelimitpreview/test";

impl Upstream {
    /// The configured base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// How often the egress policy withheld this upstream's credentials
    /// from a token realm it does not trust (see `egress`).
    pub fn credentials_withheld(&self) -> u64 {
        self.metrics
            .egress_refused
            .with_label_values(&[&self.name, "credentials_withheld"])
            .get()
    }

    /// `GET /v2/`, answering a challenge with the token flow.
    pub async fn check_base(&self) -> Result<BaseAnswer, UpstreamError> {
        let repo = RepoName::parse(CHECK_REPO).expect("a valid repository name");
        let response = self
            .send(Ask {
                method: Method::GET,
                path: "/v2/",
                repo: &repo,
                accept: "",
                kind: "base",
                bounded: true,
                range_from: None,
            })
            .await?;
        let date = response
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        Ok(BaseAnswer {
            status: response.status(),
            date,
        })
    }
}
