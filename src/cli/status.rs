//! `pullthrough status`: reads a running mirror's `/ui/status.json` and
//! prints it as a table, or as the JSON itself with `--json`.

use std::io::Write;

use crate::status::{Snapshot, write_table};

/// Why the status could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: is this a pullthrough?")]
    Status { url: String, status: u16 },
    #[error("{url} sent a status this version does not read: {source}")]
    Invalid {
        url: String,
        source: serde_json::Error,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Fetches the snapshot of the mirror at `base` (such as
/// `http://127.0.0.1:5000`).
pub async fn fetch(base: &str) -> Result<(Snapshot, String), StatusError> {
    let url = format!("{}/ui/status.json", base.trim_end_matches('/'));
    let unreachable = |source| StatusError::Unreachable {
        url: url.clone(),
        source,
    };
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(StatusError::Status {
            url,
            status: response.status().as_u16(),
        });
    }
    let text = response.text().await.map_err(unreachable)?;
    let snapshot = serde_json::from_str(&text).map_err(|source| StatusError::Invalid {
        url: url.clone(),
        source,
    })?;
    Ok((snapshot, text))
}

/// Prints the status of the mirror at `base`.
pub async fn run(base: &str, json: bool, out: &mut impl Write) -> Result<(), StatusError> {
    let (snapshot, text) = fetch(base).await?;
    if json {
        writeln!(out, "{text}")?;
    } else {
        write_table(&snapshot, out)?;
    }
    Ok(())
}
