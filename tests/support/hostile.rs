//! A hostile upstream and the trap it points pullthrough at, for the egress
//! tests (`tests/egress.rs`).
//!
//! [`Hostile`] is a registry that answers every `/v2/<name>/...` request with
//! a 401 challenge naming a realm of its choosing until a Bearer token comes
//! back, then with a redirect to wherever the test says (or a 404). It also
//! issues tokens itself at `/token`, as a registry whose realm is on its own
//! host does. [`Trap`] stands in for what a hostile upstream wants reached
//! (a harvesting realm, the metadata endpoint): a raw TCP listener that
//! counts every connection it accepts and records every request head, so a
//! test can assert both "no connection at all" and "no credentials".
//!
//! [`TlsRedirector`] is a hostile registry over HTTPS (a test CA, trusted
//! through the upstream's `ca_file`) that redirects down to plain HTTP.
//!
//! Either binds any loopback address, so a test can put the upstream and
//! the trap on different addresses (127.0.0.2 and 127.0.0.1): the upstream's
//! own address is allowed as a redirect target, any other loopback address
//! is not.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as a listener saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Authorization` header, when one was sent.
    pub authorization: Option<String>,
}

/// What [`Hostile`] answers.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The realm of the 401 challenge, a URL or a path on the hostile
    /// registry itself (such as `/token`); `None` asks for no token at all.
    pub realm: Option<String>,
    /// Where `/v2/<name>/...` requests are redirected (the request's path and
    /// query appended) once authenticated; `None` answers 404.
    pub redirect_to: Option<String>,
}

/// A hostile registry on an ephemeral port.
pub struct Hostile {
    /// `http://<address>:<port>`
    pub url: String,
    plan: Arc<Mutex<Plan>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct HostileState {
    plan: Arc<Mutex<Plan>>,
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hostile {
    /// Serves `plan` on `address` (a loopback address).
    pub async fn start(address: IpAddr, plan: Plan) -> Hostile {
        let listener = TcpListener::bind((address, 0)).await.expect("bind hostile");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(plan));
        let state = HostileState {
            plan: plan.clone(),
            url: url.clone(),
            seen: seen.clone(),
        };
        let app = Router::new().fallback(answer).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hostile {
            url,
            plan,
            seen,
            task,
        }
    }

    /// Redirects from now on to `to` (the request's path appended).
    pub fn redirect_to(&self, to: &str) {
        self.plan.lock().unwrap().redirect_to = Some(to.to_owned());
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests for registry content (not `/token`) received so far.
    pub fn content_requests(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.target.starts_with("/v2/") && s.target.len() > 4)
            .count()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(state): State<HostileState>, request: Request) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        target: target.clone(),
        authorization: authorization.clone(),
    });
    if target.starts_with("/token") {
        let body = r#"{"token":"hostile-token","expires_in":300}"#;
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let plan = state.plan.lock().unwrap().clone();
    let bearer = authorization.is_some_and(|a| a.starts_with("Bearer "));
    if let Some(realm) = plan.realm.as_ref().filter(|_| !bearer) {
        let realm = match realm.starts_with('/') {
            true => format!("{}{realm}", state.url),
            false => realm.clone(),
        };
        let challenge = format!(r#"Bearer realm="{realm}",service="hostile""#);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    match &plan.redirect_to {
        Some(to) if target.len() > "/v2/".len() => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{to}{target}"))],
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A listener that records every connection and request head and answers
/// each with a small JSON token reply, then closes.
pub struct Trap {
    /// `http://<address>:<port>`
    pub url: String,
    pub port: u16,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Trap {
    /// Listens on `address` (a loopback address), ephemeral port.
    pub async fn start(address: IpAddr) -> Trap {
        let listener = TcpListener::bind((address, 0)).await.expect("bind trap");
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    if let Some(seen) = read_head(&mut socket).await {
                        log.lock().unwrap().push(seen);
                    }
                    let body = r#"{"token":"trap-token"}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Trap {
            url,
            port,
            connections,
            seen,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (at most 16 KiB) and picks out what tests check.
async fn read_head(socket: &mut (impl AsyncRead + Unpin)) -> Option<Seen> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    Some(Seen {
        method,
        target,
        authorization,
    })
}

/// A hostile registry over HTTPS that redirects every request to `to`
/// (the request's path appended), with a certificate for `localhost` from a
/// test CA; the CA's PEM is for the upstream's `ca_file`.
pub struct TlsRedirector {
    /// `https://localhost:<port>`
    pub url: String,
    /// The test CA, PEM-encoded.
    pub ca_pem: String,
    task: JoinHandle<()>,
}

impl TlsRedirector {
    /// Listens on 127.0.0.1, ephemeral port.
    pub async fn start(to: &str) -> TlsRedirector {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let to = to.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, to) = (acceptor.clone(), to.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Some(seen) = read_head(&mut tls).await else {
                        return;
                    };
                    let reply = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        seen.target
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsRedirector {
            url,
            ca_pem: ca.pem(),
            task,
        }
    }
}

impl Drop for TlsRedirector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
