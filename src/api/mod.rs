//! The HTTP API in JavaScript: the files of the API folder declare routes
//! (`route({method, path, handler})`), served under `/api/` by the daemon's listener.
//!
//! The files run on a JS pool of their own, beside the pipeline's, so a request never waits
//! for a page of documents, and requests run side by side, one per JS thread. A request is
//! handed to its route's handler as JSON (`method`, `path`, `params`, `query`, `headers`,
//! `body`, and `json` when the body parses); the handler answers `{status, json | body,
//! headers}`. A handler that throws is a 500 naming its file and line, one past its time limit
//! a 504, one over its heap cap a 503 — and the pool goes on serving. A route whose requests
//! have been slow (over 50 ms, on a moving average) may hold all but one of the pool's threads,
//! so with two or more, slow requests never keep a fast one waiting. `routes` matches paths.
//!
//! This module knows HTTP only as plain values (method, path, headers, bytes): the listener
//! (`daemon::http`) owns the sockets.

mod routes;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::js::extension::{self, ExtensionError};
use crate::js::{FailureKind, HandlerError, JsPool, PoolConfig, PoolError};
use crate::metrics::LoadFailure;
pub use routes::{Match, Route, RouteTable};

/// An HTTP request, as the listener read it. `path` is what follows `/api`.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    /// The query string, without `?`, percent-encoded as it came.
    pub query: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &Value) -> ApiResponse {
        ApiResponse { status, headers: vec![("content-type".into(), "application/json".into())], body: value.to_string().into_bytes() }
    }

    /// `{"error": message, …more}`.
    pub fn error(status: u16, message: &str, more: Value) -> ApiResponse {
        let mut body = json!({ "error": message });
        if let (Value::Object(b), Value::Object(m)) = (&mut body, more) {
            b.extend(m);
        }
        ApiResponse::json(status, &body)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Read(#[from] ExtensionError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A request is slow past this (on a route's moving average of its requests).
const SLOW: Duration = Duration::from_millis(50);

/// The API folder, loaded: its pool and route table.
#[derive(Default)]
pub struct Api {
    pool: Option<JsPool>,
    table: RouteTable,
    failures: Vec<LoadFailure>,
    lanes: Lanes,
}

/// What is done with a response once it is there.
pub type Done = Box<dyn FnOnce(ApiResponse) + Send>;

/// Per route (file, index): requests running, the moving average of how long they take, and
/// those waiting for a slow route to have a thread.
#[derive(Default)]
struct Lanes {
    routes: Mutex<HashMap<(usize, usize), Lane>>,
}

#[derive(Default)]
struct Lane {
    running: usize,
    average: f64,
    /// Whether a request of the route has finished: until one has, nothing says the route is
    /// fast, so it is held to the slow routes' share (a burst of first requests of a slow
    /// route after a start or a reload cannot take every thread).
    known: bool,
    waiting: VecDeque<Waiting>,
}

/// A request held back until its slow route has a thread.
struct Waiting {
    route: Route,
    text: String,
    head: bool,
    done: Done,
}

impl Lane {
    fn may_run(&self, cap: usize) -> bool {
        (self.known && self.average < SLOW.as_secs_f64()) || self.running < cap
    }
}

impl Api {
    /// Loads every `.js` file of `dir` (none when it does not exist) on a pool of `config`.
    pub fn load(dir: &Path, config: PoolConfig) -> Result<Api, ApiError> {
        if !dir.is_dir() {
            return Ok(Api::default());
        }
        let sources = extension::read_dir(dir)?;
        if sources.is_empty() {
            return Ok(Api::default());
        }
        Ok(Api::from_pool(JsPool::start(sources, PoolConfig { unbounded_queue: true, ..config })?, Vec::new()))
    }

    /// The API of a pool of the folder's files already started (a daemon keeping the last
    /// version of a file that no longer loads starts its own), with the files it reported as
    /// failed already.
    pub fn from_pool(pool: JsPool, mut failures: Vec<LoadFailure>) -> Api {
        let known: Vec<String> = failures.iter().map(|f| f.file.clone()).collect();
        let mut files = Vec::new();
        for ext in pool.extensions() {
            match &ext.declaration {
                Ok(d) if !d.routes.is_empty() => files.push(Some(d.routes.as_slice())),
                Ok(d) => {
                    let error = format!("{}: declares the extension {}, not routes: extensions go in the extensions folder", d.site, d.id);
                    failures.push(LoadFailure { file: ext.source.file_name(), error });
                    files.push(None);
                }
                Err(e) => {
                    if !known.contains(&ext.source.file_name()) {
                        failures.push(LoadFailure { file: ext.source.file_name(), error: e.clone() });
                    }
                    files.push(None);
                }
            }
        }
        let table = RouteTable::new(files);
        for (file, error) in &table.duplicates {
            if let Some(ext) = pool.extensions().get(*file) {
                failures.push(LoadFailure { file: ext.source.file_name(), error: error.clone() });
            }
        }
        Api { pool: Some(pool), table, failures, lanes: Lanes::default() }
    }

    /// The files that did not load, and why.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }

    /// (method, path, site) of every route.
    pub fn routes(&self) -> Vec<(String, String, String)> {
        self.table.list()
    }

    /// Answers one request; blocks while its handler runs.
    pub fn handle(self: &Arc<Self>, req: &ApiRequest) -> ApiResponse {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.handle_then(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or_else(|_| ApiResponse::error(503, "the API was reloaded while the request waited: try again", json!({})))
    }

    /// Answers one request without waiting: `done` gets the response, on a JS thread when a
    /// handler ran (or here, when none needs to). If the API is replaced (its folder changed)
    /// before the request ran, `done` is dropped uncalled.
    pub fn handle_then(self: &Arc<Self>, req: &ApiRequest, done: Done) {
        let (route, params) = match self.table.find(&req.method, &req.path) {
            Match::Found(route, params) => (route, params),
            Match::WrongMethod(methods) => {
                let mut r = ApiResponse::error(405, &format!("{} is not served for {}", req.path, req.method), json!({ "allow": methods }));
                r.headers.push(("allow".into(), methods.join(", ")));
                return done(r);
            }
            Match::NotFound => return done(ApiResponse::error(404, &format!("no route for {} /api{}", req.method, req.path), json!({}))),
        };
        if self.pool.is_none() {
            return done(ApiResponse::error(503, "the API is not loaded", json!({})));
        }
        let Ok(body) = std::str::from_utf8(&req.body) else {
            return done(ApiResponse::error(400, "the request body must be UTF-8 text", json!({})));
        };
        let text = request_json(req, &params, body).to_string();
        self.run(Waiting { route: route.clone(), text, head: req.method == "HEAD", done });
    }

    /// Hands the request to the pool, unless its route is slow and already holds all the
    /// threads but one: it then waits its turn.
    fn run(self: &Arc<Self>, w: Waiting) {
        let Some(pool) = &self.pool else { return };
        let key = (w.route.file, w.route.index);
        {
            let mut lanes = self.lanes.routes.lock().unwrap_or_else(|p| p.into_inner());
            let lane = lanes.entry(key).or_default();
            if !lane.may_run(pool.threads().saturating_sub(1).max(1)) {
                lane.waiting.push_back(w);
                return;
            }
            lane.running += 1;
        }
        // Weak: a request queued in the pool must not keep the API (and so the pool) alive.
        let api = Arc::downgrade(self);
        let started = Instant::now();
        let Waiting { route, text, head, done } = w;
        let limit = route.limit;
        pool.submit_request(
            key.0,
            key.1,
            &text,
            limit,
            Box::new(move |answer| {
                let mut response = match answer.and_then(|t| parse_response(&t)) {
                    Ok(r) => r,
                    Err(e) => failure_response(&e, &route),
                };
                if head {
                    response.body.clear();
                }
                if let Some(api) = api.upgrade() {
                    api.finished(key, started.elapsed());
                }
                done(response);
            }),
        );
    }

    /// A request of route `key` ended after `took`: the next one waiting, if it may run now.
    fn finished(self: &Arc<Self>, key: (usize, usize), took: Duration) {
        let cap = self.pool.as_ref().map_or(1, |p| p.threads().saturating_sub(1).max(1));
        let next: Vec<Waiting> = {
            let mut lanes = self.lanes.routes.lock().unwrap_or_else(|p| p.into_inner());
            let lane = lanes.entry(key).or_default();
            lane.running = lane.running.saturating_sub(1);
            lane.average = if lane.known { 0.8 * lane.average + 0.2 * took.as_secs_f64() } else { took.as_secs_f64() };
            lane.known = true;
            if lane.average < SLOW.as_secs_f64() {
                // Fast after all: everything it held back goes.
                lane.waiting.drain(..).collect()
            } else if lane.may_run(cap) {
                lane.waiting.pop_front().into_iter().collect()
            } else {
                Vec::new()
            }
        };
        for w in next {
            self.run(w);
        }
    }
}

/// The `req` a handler gets.
fn request_json(req: &ApiRequest, params: &std::collections::BTreeMap<String, String>, body: &str) -> Value {
    let query: Map<String, Value> =
        url::form_urlencoded::parse(req.query.as_bytes()).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect();
    let mut headers = Map::new();
    for (name, value) in &req.headers {
        headers.insert(name.clone(), Value::String(value.clone()));
    }
    let mut out = json!({
        "method": req.method,
        "path": format!("/api{}", req.path),
        "params": params,
        "query": query,
        "headers": headers,
        "body": if req.body.is_empty() { Value::Null } else { Value::String(body.to_string()) },
    });
    if let Ok(parsed) = serde_json::from_str::<Value>(body) {
        out["json"] = parsed;
    }
    out
}

/// The driver's answer: `{"ok": {status, headers, json | body}}` or `{"error": …}`. The
/// `json` is kept as the text the handler's value was written as: it goes out as it is.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    ok: Option<Reply<'a>>,
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct Reply<'a> {
    status: Option<u16>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(borrow)]
    json: Option<&'a serde_json::value::RawValue>,
    body: Option<String>,
}

/// The driver's answer as a response.
fn parse_response(text: &str) -> Result<ApiResponse, HandlerError> {
    let answer: Answer =
        serde_json::from_str(text).map_err(|_| HandlerError::new(FailureKind::BadOutput, "the handler's answer could not be read"))?;
    if let Some(e) = answer.error {
        let mut error = HandlerError::new(FailureKind::Exception, e["message"].as_str().unwrap_or("the handler failed"));
        error.file = e["file"].as_str().map(str::to_string);
        error.line = e["line"].as_u64().map(|l| l as u32);
        error.stack = e["stack"].as_str().map(str::to_string);
        return Err(error);
    }
    let ok = answer.ok.ok_or_else(|| HandlerError::new(FailureKind::BadOutput, "the handler gave no answer"))?;
    let mut headers: Vec<(String, String)> = ok.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let (body, content_type) = match (ok.body, ok.json) {
        (Some(text), _) => (text.into_bytes(), "text/plain; charset=utf-8"),
        (None, Some(raw)) => (raw.get().as_bytes().to_vec(), "application/json"),
        (None, None) => (Vec::new(), ""),
    };
    if !content_type.is_empty() && !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), content_type.into()));
    }
    Ok(ApiResponse { status: ok.status.unwrap_or(200), headers, body })
}

/// A handler that failed, as its client sees it: the message, and where.
fn failure_response(e: &HandlerError, route: &Route) -> ApiResponse {
    let (status, what) = match e.kind {
        FailureKind::TimeLimit => (504, "the handler ran past its time limit"),
        FailureKind::OutOfMemory => (503, "the handler ran out of memory"),
        FailureKind::NotLoaded => (503, "the route's file is not loaded"),
        _ => (500, "the handler failed"),
    };
    tracing::warn!(route = %route.path(), "{what}: {e}");
    ApiResponse::error(status, &format!("{what}: {}", e.message), json!({ "file": e.file, "line": e.line, "route": route.site }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_responses() {
        let r = parse_response(r#"{"ok":{"status":201,"json":{"a":1},"headers":[["X-Thing","y"]]}}"#).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, br#"{"a":1}"#);
        assert!(r.headers.contains(&("x-thing".into(), "y".into())));
        assert!(r.headers.contains(&("content-type".into(), "application/json".into())));
        let e = parse_response(r#"{"error":{"message":"boom","file":"a.js","line":3}}"#).unwrap_err();
        assert_eq!((e.message.as_str(), e.line), ("boom", Some(3)));
        let req = ApiRequest {
            method: "POST".into(),
            path: "/x/1".into(),
            query: "a=1&b=two%20words".into(),
            body: b"{\"k\":2}".to_vec(),
            ..Default::default()
        };
        let j = request_json(&req, &[("id".to_string(), "1".to_string())].into_iter().collect(), "{\"k\":2}");
        assert_eq!(j["query"]["b"], "two words");
        assert_eq!(j["json"]["k"], 2);
        assert_eq!(j["path"], "/api/x/1");
    }
}
