//! The daemon's HTTP listener: `GET /healthz`, `GET /status` (JSON) and `GET /metrics` (the
//! Prometheus text format); the JS API under `/api/` (`api.rs` bridges it to [`crate::api`]);
//! the mail page at `/` ([`crate::web`]).
//!
//! hyper serves it on a small tokio runtime of its own thread; what a request needs from the
//! store runs on tokio's blocking threads, so a slow database never holds the listener; the
//! backlog it counts is kept for 5 s, counted once for any number of requests. Bounded:
//! headers must arrive within 10 s and fit hyper's 64 KiB read buffer (about twice that in
//! practice; an idle keep-alive connection is closed after 10 s too), a connection lasts at most 10 minutes, and at most 256 connections are
//! served at once. When a token is configured (it must be, on an address that is not
//! loopback), every request but those for the page's own files must carry `Authorization:
//! Bearer <token>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};

mod api;

use crate::metrics::Metrics;
use crate::store::Store;

const MAX_CONNECTIONS: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 64 * 1024;
const CONNECTION_LIMIT: Duration = Duration::from_secs(600);
/// How long a counted backlog is shown before it is counted again.
const BACKLOG_FRESH: Duration = Duration::from_secs(5);

/// What the listener answers from.
pub(super) struct HttpState {
    pub(super) metrics: Arc<Metrics>,
    pub(super) store: Arc<dyn Store>,
    /// The pipeline's checkpoint, for the backlog.
    pub(super) checkpoint_id: String,
    pub(super) token: Option<String>,
    /// The database, as safe to show, and its [`StoreSpec::identity`](crate::store::StoreSpec::identity).
    pub(super) db: String,
    pub(super) db_identity: String,
    pub(super) started: Instant,
    /// The last backlog counted, and when.
    pub(super) backlog: tokio::sync::Mutex<Option<(Instant, Result<u64, String>)>>,
    /// The API folder as loaded now (replaced when it changes).
    pub(super) api: Arc<std::sync::RwLock<Arc<crate::api::Api>>>,
    /// Origins allowed to call `/api/` from a browser (CORS); none by default.
    pub(super) cors_origins: Vec<String>,
}

/// The running listener; it stops when dropped.
pub(super) struct Listener {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(super) addr: SocketAddr,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` (here, so that a port in use is an error at start) and serves it.
pub(super) fn start(addr: SocketAddr, state: HttpState) -> std::io::Result<Listener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let state = Arc::new(state);
    let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
        runtime.block_on(async move {
            if let Err(e) = serve(listener, state, rx).await {
                eprintln!("raindrop: the HTTP listener stopped: {e}");
            }
        });
        // A backlog still being counted is not waited for.
        runtime.shutdown_timeout(Duration::from_millis(500));
    })?;
    Ok(Listener { shutdown: Some(tx), thread: Some(thread), addr })
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<HttpState>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the limit: the connection is closed at once rather than queued.
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(state.clone(), req));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, connection).await;
            drop(slot);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn json_reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", body.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_reply(status, &json!({ "error": message }))
}

/// Whether the request carries the token, when one is set.
fn authorized(state: &HttpState, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else { return true };
    let given = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time for the token's length.
    given.is_some_and(|g| g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

/// A request this listener refuses whatever its path: without a token (a loopback listener),
/// one whose Host is not a loopback name (a page of another site that had its name point at
/// 127.0.0.1: DNS rebinding); and one a browser sends from a page of another origin that
/// `cors_origins` does not name (a form on any web site could otherwise mark mail read).
fn foreign(state: &HttpState, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok());
    if state.token.is_none() {
        if let Some(host) = host {
            let name = match host.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            };
            let loopback = name.eq_ignore_ascii_case("localhost")
                || name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Some(error(StatusCode::FORBIDDEN, &format!("this listener answers only to a loopback host name, not {host:?}")));
            }
        }
    }
    let origin = req.headers().get(hyper::header::ORIGIN).and_then(|v| v.to_str().ok())?;
    let same = host.is_some_and(|h| origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(h));
    if same || state.cors_origins.iter().any(|c| c == origin || c == "*") {
        return None;
    }
    Some(error(StatusCode::FORBIDDEN, &format!("requests from pages of {origin} are refused: name it in cors_origins to allow it")))
}

async fn answer(state: Arc<HttpState>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(refused) = foreign(&state, &req) {
        return Ok(refused);
    }
    let path = req.uri().path().to_string();
    if path == "/api" || path.starts_with("/api/") {
        return Ok(api::answer(state, req).await);
    }
    // The page's own files hold no data: served without the token (the page sends it with
    // its API calls).
    if req.method() == Method::GET {
        if let Some((content_type, body)) = crate::web::asset(&path) {
            return Ok(reply(StatusCode::OK, content_type, body));
        }
    }
    if !authorized(&state, &req) {
        let mut response = error(StatusCode::UNAUTHORIZED, "this listener needs Authorization: Bearer <token>");
        response.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        return Ok(response);
    }
    if req.method() != Method::GET {
        return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here"));
    }
    Ok(match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/status" => json_reply(StatusCode::OK, &status(&state).await),
        "/metrics" => {
            let backlog = backlog(&state).await;
            let uptime = state.started.elapsed().as_secs_f64();
            let mut gauges = vec![
                ("raindrop_up", "1 while the daemon runs.", 1.0),
                ("raindrop_uptime_seconds", "Seconds since the daemon started.", uptime),
            ];
            if let Ok(b) = backlog {
                gauges.push(("raindrop_backlog_changes", "Changes of the feed not yet processed.", b as f64));
            }
            reply(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.exposition(&gauges))
        }
        other => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {other} (try /, /api/…, /status, /metrics or /healthz)")),
    })
}

/// The changes not yet processed: counted on a blocking thread, by one request at a time,
/// and shown for [`BACKLOG_FRESH`] after.
async fn backlog(state: &Arc<HttpState>) -> Result<u64, String> {
    let mut cached = state.backlog.lock().await;
    if let Some((at, result)) = &*cached {
        if at.elapsed() < BACKLOG_FRESH {
            return result.clone();
        }
    }
    let s = state.clone();
    let counted = tokio::task::spawn_blocking(move || crate::pipeline::backlog(&*s.store, &s.checkpoint_id)).await;
    let result = match counted {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    *cached = Some((Instant::now(), result.clone()));
    result
}

async fn status(state: &Arc<HttpState>) -> Value {
    let backlog = backlog(state).await;
    let mut status = state.metrics.status();
    if let Value::Object(s) = &mut status {
        s.insert(
            "daemon".into(),
            json!({ "pid": std::process::id(), "uptime_seconds": state.started.elapsed().as_secs(), "db": state.db, "db_identity": state.db_identity, "version": env!("CARGO_PKG_VERSION") }),
        );
        match backlog {
            Ok(n) => s.insert("backlog".into(), json!(n)),
            Err(e) => s.insert("backlog_error".into(), json!(e)),
        };
    }
    status
}
