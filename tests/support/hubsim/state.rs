//! The simulator's shared state: content store, issued tokens, rate-limit
//! counters, armed faults, request counters and the request log.
//!
//! Every lock is a `std::sync::Mutex` held only for a few map operations and
//! never across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Counters, Fault, FaultTarget};

/// Locks a mutex, ignoring poisoning: a panicking test thread must not turn
/// every later request into a second panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stored manifest.
#[derive(Clone)]
pub(super) struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// One repository: manifests by digest plus tags pointing at them.
#[derive(Default)]
pub(super) struct Repo {
    pub manifests: HashMap<String, StoredManifest>,
    /// BTreeMap so `tags/list` comes out sorted for free.
    pub tags: BTreeMap<String, String>,
}

/// Why a manifest lookup failed; maps onto `NAME_UNKNOWN` / `MANIFEST_UNKNOWN`.
pub(super) enum LookupError {
    NoRepo,
    NoManifest,
}

/// What the realm remembers about a token it issued.
#[derive(Clone)]
pub(super) struct Grant {
    /// `repository:<name>:pull` strings.
    pub scopes: HashSet<String>,
    /// Set when the token was issued against HTTP Basic credentials.
    pub user: Option<String>,
    pub expires: Instant,
}

/// A fault armed with [`super::HubSim::set_fault`].
struct ArmedFault {
    target: FaultTarget,
    fault: Fault,
    /// `None` = until cleared.
    remaining: Option<usize>,
}

/// Atomic twin of [`Counters`].
#[derive(Default)]
pub(super) struct AtomicCounters {
    pub manifest_gets: AtomicU64,
    pub manifest_heads: AtomicU64,
    pub blob_gets: AtomicU64,
    pub blob_heads: AtomicU64,
    pub cdn_gets: AtomicU64,
    pub cdn_bytes: AtomicU64,
    pub cdn_refused_with_auth: AtomicU64,
    pub tokens: AtomicU64,
    pub tags_lists: AtomicU64,
    pub unauthorized: AtomicU64,
    pub total: AtomicU64,
}

impl AtomicCounters {
    fn all(&self) -> [&AtomicU64; 11] {
        [
            &self.manifest_gets,
            &self.manifest_heads,
            &self.blob_gets,
            &self.blob_heads,
            &self.cdn_gets,
            &self.cdn_bytes,
            &self.cdn_refused_with_auth,
            &self.tokens,
            &self.tags_lists,
            &self.unauthorized,
            &self.total,
        ]
    }

    fn snapshot(&self) -> Counters {
        let [
            manifest_gets,
            manifest_heads,
            blob_gets,
            blob_heads,
            cdn_gets,
            cdn_bytes,
            cdn_refused_with_auth,
            tokens,
            tags_lists,
            unauthorized,
            total,
        ] = self.all().map(|c| c.load(Ordering::SeqCst));
        Counters {
            manifest_gets,
            manifest_heads,
            blob_gets,
            blob_heads,
            cdn_gets,
            cdn_bytes,
            cdn_refused_with_auth,
            tokens,
            tags_lists,
            unauthorized,
            total,
        }
    }
}

/// Increments one counter.
pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

/// Everything the three listeners share.
pub(super) struct Shared {
    pub registry_url: String,
    pub realm_url: String,
    pub cdn_url: String,
    pub rate_limit: AtomicU32,
    pub retry_after: Option<u32>,
    pub token_ttl: Duration,
    pub users: Vec<(String, String)>,
    pub rate_limit_headers: bool,
    /// The repository prefix the front redirects under, if there is a front.
    pub front_prefix: Option<String>,
    pub auth: super::SimAuth,
    pub blob_redirect: http::StatusCode,
    pub referrers_api: bool,
    pub referrers_page: Option<usize>,
    /// See [`super::SimOptions::cdn_bytes_per_sec`]; never `Some(0)`.
    pub cdn_bytes_per_sec: Option<u64>,
    pub counters: AtomicCounters,
    blobs: Mutex<HashMap<String, Bytes>>,
    repos: Mutex<HashMap<String, Repo>>,
    tokens: Mutex<HashMap<String, Grant>>,
    /// CDN signatures handed out in redirects: sig -> digest.
    sigs: Mutex<HashMap<String, String>>,
    /// Manifest GETs charged per rate-limit key.
    rate_used: Mutex<HashMap<String, u32>>,
    faults: Mutex<Vec<ArmedFault>>,
    log: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(
        registry_url: String,
        realm_url: String,
        cdn_url: String,
        opts: &super::SimOptions,
    ) -> Self {
        Shared {
            registry_url,
            realm_url,
            cdn_url,
            rate_limit: AtomicU32::new(opts.rate_limit.unwrap_or(100)),
            retry_after: opts.retry_after,
            token_ttl: opts.token_ttl.unwrap_or(Duration::from_secs(300)),
            users: opts.users.clone(),
            rate_limit_headers: !opts.no_rate_limit_headers,
            front_prefix: opts.front_prefix.clone(),
            auth: opts.auth.clone(),
            blob_redirect: http::StatusCode::from_u16(opts.blob_redirect.unwrap_or(307))
                .expect("a redirect status"),
            referrers_api: opts.referrers_api,
            referrers_page: opts.referrers_page,
            cdn_bytes_per_sec: opts.cdn_bytes_per_sec.filter(|&rate| rate > 0),
            counters: AtomicCounters::default(),
            blobs: Mutex::default(),
            repos: Mutex::default(),
            tokens: Mutex::default(),
            sigs: Mutex::default(),
            rate_used: Mutex::default(),
            faults: Mutex::default(),
            log: Mutex::default(),
        }
    }

    // ---- request log and counters -------------------------------------

    /// Counts a request in `total` and appends `"<listener> METHOD path?query"`.
    pub fn record(&self, listener: &str, method: &http::Method, uri: &http::Uri) {
        bump(&self.counters.total);
        let line = match uri.query() {
            Some(q) => format!("{listener} {method} {}?{q}", uri.path()),
            None => format!("{listener} {method} {}", uri.path()),
        };
        lock(&self.log).push(line);
    }

    pub fn requests(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    pub fn reset_counters(&self) {
        for c in self.counters.all() {
            c.store(0, Ordering::SeqCst);
        }
        lock(&self.log).clear();
    }

    // ---- content store --------------------------------------------------

    pub fn put_blob(&self, digest: String, bytes: Bytes) {
        lock(&self.blobs).insert(digest, bytes);
    }

    pub fn blob(&self, digest: &str) -> Option<Bytes> {
        lock(&self.blobs).get(digest).cloned()
    }

    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, digest: &str, m: StoredManifest) {
        let mut repos = lock(&self.repos);
        let r = repos.entry(repo.to_owned()).or_default();
        r.manifests.insert(digest.to_owned(), m);
        if let Some(tag) = tag {
            r.tags.insert(tag.to_owned(), digest.to_owned());
        }
    }

    /// Resolves a tag or digest; returns the digest and the manifest.
    pub fn manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(String, StoredManifest), LookupError> {
        let repos = lock(&self.repos);
        let r = repos.get(repo).ok_or(LookupError::NoRepo)?;
        let digest = if reference.contains(':') {
            reference
        } else {
            r.tags.get(reference).ok_or(LookupError::NoManifest)?
        };
        let m = r.manifests.get(digest).ok_or(LookupError::NoManifest)?;
        Ok((digest.to_owned(), m.clone()))
    }

    /// Every manifest of a repository; `None` when the repository is unknown.
    pub fn manifests(&self, repo: &str) -> Option<Vec<(String, StoredManifest)>> {
        lock(&self.repos).get(repo).map(|r| {
            r.manifests
                .iter()
                .map(|(d, m)| (d.clone(), m.clone()))
                .collect()
        })
    }

    /// All tags of a repository, sorted; `None` when the repository is unknown.
    pub fn tags(&self, repo: &str) -> Option<Vec<String>> {
        lock(&self.repos)
            .get(repo)
            .map(|r| r.tags.keys().cloned().collect())
    }

    // ---- tokens ---------------------------------------------------------

    pub fn issue_token(&self, token: String, grant: Grant) {
        let mut tokens = lock(&self.tokens);
        let now = Instant::now();
        tokens.retain(|_, g| g.expires > now);
        tokens.insert(token, grant);
    }

    /// The grant behind `token` if it exists and has not expired.
    pub fn grant(&self, token: &str) -> Option<Grant> {
        let tokens = lock(&self.tokens);
        tokens
            .get(token)
            .filter(|g| g.expires > Instant::now())
            .cloned()
    }

    // ---- CDN signatures -------------------------------------------------

    pub fn issue_sig(&self, sig: String, digest: String) {
        lock(&self.sigs).insert(sig, digest);
    }

    pub fn sig_matches(&self, sig: &str, digest: &str) -> bool {
        lock(&self.sigs).get(sig).is_some_and(|d| d == digest)
    }

    // ---- rate limit -----------------------------------------------------

    pub fn limit(&self) -> u32 {
        self.rate_limit.load(Ordering::Relaxed)
    }

    pub fn remaining(&self, key: &str) -> u32 {
        let used = lock(&self.rate_used).get(key).copied().unwrap_or(0);
        self.limit().saturating_sub(used)
    }

    /// Starts a new window with `limit` pulls per client key.
    pub fn new_rate_window(&self, limit: u32) {
        let mut used = lock(&self.rate_used);
        self.rate_limit.store(limit, Ordering::Relaxed);
        used.clear();
    }

    /// Charges one pull to `key`; `Err` when the allowance is spent.
    /// Returns the remaining allowance after the charge.
    pub fn try_charge(&self, key: &str) -> Result<u32, ()> {
        let mut used = lock(&self.rate_used);
        let u = used.entry(key.to_owned()).or_insert(0);
        if *u >= self.limit() {
            return Err(());
        }
        *u += 1;
        Ok(self.limit() - *u)
    }

    /// Gives back a charge for a GET that turned out not to succeed.
    pub fn refund(&self, key: &str) {
        if let Some(u) = lock(&self.rate_used).get_mut(key) {
            *u = u.saturating_sub(1);
        }
    }

    // ---- faults ---------------------------------------------------------

    pub fn set_fault(&self, target: FaultTarget, fault: Fault, times: Option<usize>) {
        if times == Some(0) {
            return;
        }
        lock(&self.faults).push(ArmedFault {
            target,
            fault,
            remaining: times,
        });
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Takes the first armed fault for `target` (or `All`) that `applies`
    /// accepts, consuming one of its `times`.
    pub fn take_fault(
        &self,
        target: FaultTarget,
        applies: impl Fn(Fault) -> bool,
    ) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let idx = faults.iter().position(|f| {
            (f.target == target || f.target == FaultTarget::All) && applies(f.fault)
        })?;
        let fault = faults[idx].fault;
        match &mut faults[idx].remaining {
            Some(n) if *n <= 1 => {
                faults.remove(idx);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(fault)
    }
}
