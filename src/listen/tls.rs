//! TLS on the listener with rustls: the certificate and key come from PEM
//! files and are loaded again when either file changes (checked every few
//! seconds) or on SIGHUP. Connections already open keep the certificate
//! they were made with; new handshakes get the new one, through a resolver
//! that reads an [`ArcSwap`]. A file that cannot be used (half written, key
//! and certificate of different pairs) is logged and the old certificate
//! stays.
//!
//! ALPN offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: unusable private key or certificate: {source}")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

/// The certificate new handshakes present; swapped whole on reload.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The listener's TLS: the acceptor for new connections and what reloads
/// its certificate.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
    every: Duration,
}

impl Tls {
    /// Loads the files `config` names; `None` when TLS is off.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(load(cert, key, &provider)?),
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            provider,
            cert: cert.clone(),
            key: key.clone(),
            every: config.reload_every(),
        })))
    }

    /// Accepts TLS on new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load(&self.cert, &self.key, &self.provider)?;
        self.resolver.current.store(Arc::new(key));
        tracing::info!(cert = %self.cert.display(), "TLS certificate loaded");
        Ok(())
    }

    /// Reloads on SIGHUP and whenever either file's modification time or
    /// size changes, until `stop`.
    pub fn spawn_reloading(self: &Arc<Self>, stop: CancellationToken) {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut seen = tls.stamp();
            let mut tick = tokio::time::interval(tls.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let forced = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = signalled => true,
                    _ = tick.tick() => false,
                };
                let now = tls.stamp();
                if !forced && now == seen {
                    continue;
                }
                match tls.reload() {
                    Ok(()) => seen = now,
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays")
                    }
                }
            }
        });
    }

    /// What identifies the files' current contents without reading them.
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        };
        [stamp(&self.cert), stamp(&self.key)]
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses the PEM chain and key and checks that they belong together.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in the file".into()));
    }
    let private =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| pem(key, e.to_string()))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })
}
