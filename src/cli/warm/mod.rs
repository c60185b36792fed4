//! `pullthrough warm`: pre-pulls images into a running mirror through its
//! registry API, as a client would: the manifest by tag, the index's
//! chosen platforms, then each image's config and layers. Every blob is
//! read whole and discarded, and every manifest and blob is checked
//! against its digest, so a warm that succeeds leaves the images cached
//! and sound. With `pin`, each image is then pinned through the mirror's
//! `/_pullthrough/pin` endpoint, so eviction never takes it.

mod platform;

use std::collections::HashSet;
use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::image::ImageRef;
use crate::digest::{Digest, Hasher};
use crate::registry::KNOWN_MANIFEST_TYPES;
use platform::{ManifestDoc, choose};

pub use platform::Platforms;

/// Blobs downloaded at once.
const PARALLEL_BLOBS: usize = 4;

/// What a warm did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub images: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub pinned: usize,
    /// One line per image or blob that failed.
    pub failures: Vec<String>,
}

/// One blob to fetch, through the repository that references it.
struct BlobJob {
    image: ImageRef,
    digest: String,
    size: u64,
}

/// Warms through the mirror at `mirror`.
pub struct Warmer {
    mirror: String,
    client: reqwest::Client,
    /// The same, but stopping at redirects: a blob GET the mirror answers
    /// with a redirect to its bucket is warm already.
    not_following: reqwest::Client,
    platforms: Platforms,
}

fn oci_message(status: reqwest::StatusCode, body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = &v["errors"][0];
            Some(format!(
                "{}: {}",
                e["code"].as_str()?,
                e["message"].as_str()?
            ))
        });
    format!(
        "{status}{}",
        message.map_or(String::new(), |m| format!(" ({m})"))
    )
}

impl Warmer {
    /// A warmer for the mirror at `mirror` pulling `platforms`.
    pub fn new(mirror: &str, platforms: Platforms) -> Result<Warmer, String> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .user_agent(concat!("pullthrough-warm/", env!("CARGO_PKG_VERSION")))
        };
        let client = builder().build().map_err(|e| e.to_string())?;
        let not_following = builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Warmer {
            mirror: mirror.trim_end_matches('/').to_owned(),
            client,
            not_following,
            platforms,
        })
    }

    /// Fetches one manifest and checks it against `expected` (when asked
    /// by digest) and against the digest the mirror announced.
    async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Digest, ManifestDoc), String> {
        let url = image.manifest_url(&self.mirror, reference);
        let response = self
            .client
            .get(&url)
            .header("accept", KNOWN_MANIFEST_TYPES.join(", "))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| format!("{}: manifest {reference}: {e}", image.full()))?;
        let status = response.status();
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{}: manifest {reference}: {e}", image.full()))?;
        if !status.is_success() {
            let why = oci_message(status, &String::from_utf8_lossy(&body));
            return Err(format!("{}: manifest {reference}: {why}", image.full()));
        }
        let digest = Digest::sha256_of(&body);
        for expected in [Some(reference), announced.as_deref()]
            .into_iter()
            .flatten()
        {
            if expected.contains(':') && expected != digest.as_str() {
                return Err(format!(
                    "{}: manifest {reference}: the bytes hash to {digest}, not {expected}",
                    image.full()
                ));
            }
        }
        let doc = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{}: manifest {reference}: not a manifest: {e}",
                image.full()
            )
        })?;
        Ok((digest, doc))
    }

    /// The image manifests `image` resolves to on the chosen platforms,
    /// with the blobs they reference.
    async fn resolve(
        &self,
        image: &ImageRef,
        summary: &mut Summary,
    ) -> Result<Vec<BlobJob>, String> {
        let (_, top) = self.manifest(image, &image.reference).await?;
        summary.manifests += 1;
        let mut images = Vec::new();
        match top.manifests {
            None => images.push(top),
            Some(entries) => {
                let chosen = choose(&entries, &self.platforms)
                    .map_err(|why| format!("{}: {why}", image.full()))?;
                for entry in chosen {
                    let (_, doc) = self.manifest(image, &entry.digest).await?;
                    summary.manifests += 1;
                    images.push(doc);
                }
            }
        }
        let mut blobs = Vec::new();
        for doc in images {
            for d in doc.config.into_iter().chain(doc.layers) {
                blobs.push(BlobJob {
                    image: image.clone(),
                    digest: d.digest,
                    size: d.size,
                });
            }
        }
        Ok(blobs)
    }

    /// Reads one blob whole, hashing it; its size on success.
    async fn blob(&self, job: &BlobJob, bar: &ProgressBar) -> Result<u64, String> {
        let fail = |why: String| format!("{}: blob {}: {why}", job.image.full(), job.digest);
        let expected = Digest::from_str(&job.digest).map_err(|e| fail(e.to_string()))?;
        let url = job.image.blob_url(&self.mirror, &job.digest);
        let first = self.not_following.get(&url).send().await;
        let mut response = first.map_err(|e| fail(e.to_string()))?;
        if response.status().is_redirection() {
            if crate::api::is_bucket_redirect(response.headers(), &job.digest) {
                // Sent to the mirror's bucket (`s3.redirect`): it holds the
                // blob, which a replica verified before uploading.
                bar.inc(job.size);
                return Ok(job.size);
            }
            // A registry's own redirect (to its CDN): followed as usual.
            let again = self.client.get(&url).send().await;
            response = again.map_err(|e| fail(e.to_string()))?;
        }
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(fail(oci_message(status, &body)));
        }
        let mut hasher = Hasher::new(expected.algorithm());
        let mut read = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fail(format!("broke off after {read} bytes: {e}")))?;
            hasher.update(&chunk);
            read += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        let actual = hasher.finish();
        if actual != expected {
            return Err(fail(format!("the bytes hash to {actual}")));
        }
        if job.size != 0 && read != job.size {
            return Err(fail(format!(
                "{read} bytes, the manifest says {}",
                job.size
            )));
        }
        Ok(read)
    }

    /// Pins `image` through the mirror's admin endpoint.
    async fn pin(&self, image: &ImageRef) -> Result<(), String> {
        let url = format!("{}/_pullthrough/pin?image={}", self.mirror, image.full());
        let response = self
            .client
            .post(&url)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| format!("{}: pin: {e}", image.full()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "{}: pin: {}",
                image.full(),
                oci_message(status, &body)
            ));
        }
        Ok(())
    }

    /// Warms every image in `images`; pins each that warmed when `pin`.
    pub async fn warm(&self, images: &[String], pin: bool, progress: bool) -> Summary {
        let mut summary = Summary::default();
        let mut jobs = Vec::new();
        let mut warmed = Vec::new();
        let mut seen = HashSet::new();
        for text in images {
            let image = match ImageRef::parse(text) {
                Ok(image) => image,
                Err(e) => {
                    summary.failures.push(e.to_string());
                    continue;
                }
            };
            match self.resolve(&image, &mut summary).await {
                Ok(blobs) => {
                    jobs.extend(blobs.into_iter().filter(|b| seen.insert(b.digest.clone())));
                    warmed.push(image);
                }
                Err(e) => summary.failures.push(e),
            }
        }
        let total: u64 = jobs.iter().map(|j| j.size).sum();
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if progress {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} blobs", jobs.len()));
        let results: Vec<(String, Result<u64, String>)> =
            futures_util::stream::iter(jobs.iter().map(|job| {
                let bar = &bar;
                async move { (job.image.full(), self.blob(job, bar).await) }
            }))
            .buffer_unordered(PARALLEL_BLOBS)
            .collect()
            .await;
        bar.finish_and_clear();
        let mut broken = HashSet::new();
        for (image, result) in results {
            match result {
                Ok(bytes) => {
                    summary.blobs += 1;
                    summary.bytes += bytes;
                }
                Err(e) => {
                    broken.insert(image);
                    summary.failures.push(e);
                }
            }
        }
        for image in warmed {
            if broken.contains(&image.full()) {
                continue;
            }
            summary.images += 1;
            if pin {
                match self.pin(&image).await {
                    Ok(()) => summary.pinned += 1,
                    Err(e) => summary.failures.push(e),
                }
            }
        }
        summary
    }
}

/// Reads image references from a list file: one per line, blank lines
/// and `#` comments skipped.
pub fn read_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes the summary line(s); the failures, one per line, first.
pub fn write_summary(
    summary: &Summary,
    elapsed: Duration,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for failure in &summary.failures {
        writeln!(out, "✗ {failure}")?;
    }
    writeln!(
        out,
        "warmed {} images ({} manifests, {} blobs, {}) in {:.1} s; {} pinned; {} failures",
        summary.images,
        summary.manifests,
        summary.blobs,
        bytesize::ByteSize::b(summary.bytes).display().iec(),
        elapsed.as_secs_f64(),
        summary.pinned,
        summary.failures.len()
    )
}

/// Warms `images` and prints the summary; true when nothing failed.
pub async fn run(
    mirror: &str,
    images: &[String],
    platforms: Platforms,
    pin: bool,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let started = Instant::now();
    let warmer = match Warmer::new(mirror, platforms) {
        Ok(w) => w,
        Err(e) => {
            writeln!(out, "✗ {e}")?;
            return Ok(false);
        }
    };
    if images.is_empty() {
        writeln!(out, "✗ no images given: name some, or pass --file")?;
        return Ok(false);
    }
    let summary = warmer.warm(images, pin, true).await;
    write_summary(&summary, started.elapsed(), out)?;
    Ok(summary.failures.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_skip_comments_and_blank_lines() {
        let list = "nginx:1.27\n\n# base images\n  alpine:3.20  # pinned\nghcr.io/org/app:1\n";
        assert_eq!(
            read_list(list),
            vec!["nginx:1.27", "alpine:3.20", "ghcr.io/org/app:1"]
        );
    }
}
