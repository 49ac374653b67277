//! The HTTP API in JavaScript: the files of the API folder declare routes
//! (`route({method, path, handler})`), served under `/api/` by the daemon's listener.
//!
//! The files run on a JS pool of their own, beside the pipeline's, so a request never waits
//! for a page of documents, and requests run side by side, one per JS thread. A request is
//! handed to its route's handler as JSON (`method`, `path`, `params`, `query`, `headers`,
//! `body`, and `json` when the body parses); the handler answers `{status, json | body,
//! headers}`. A handler that throws is a 500 naming its file and line, one past its time limit
//! a 504, one over its heap cap a 503 — and the pool goes on serving. `routes` matches paths.
//!
//! This module knows HTTP only as plain values (method, path, headers, bytes): the listener
//! (`daemon::http`) owns the sockets.

mod routes;

use std::path::Path;

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

/// The API folder, loaded: its pool and route table.
#[derive(Default)]
pub struct Api {
    pool: Option<JsPool>,
    table: RouteTable,
    failures: Vec<LoadFailure>,
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
        Ok(Api::from_pool(JsPool::start(sources, config)?, Vec::new()))
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
        Api { pool: Some(pool), table, failures }
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
    pub fn handle(&self, req: &ApiRequest) -> ApiResponse {
        let (route, params) = match self.table.find(&req.method, &req.path) {
            Match::Found(route, params) => (route, params),
            Match::WrongMethod(methods) => {
                let mut r = ApiResponse::error(405, &format!("{} is not served for {}", req.path, req.method), json!({ "allow": methods }));
                r.headers.push(("allow".into(), methods.join(", ")));
                return r;
            }
            Match::NotFound => return ApiResponse::error(404, &format!("no route for {} /api{}", req.method, req.path), json!({})),
        };
        let Some(pool) = &self.pool else { return ApiResponse::error(503, "the API is not loaded", json!({})) };
        let body = match std::str::from_utf8(&req.body) {
            Ok(text) => text,
            Err(_) => return ApiResponse::error(400, "the request body must be UTF-8 text", json!({})),
        };
        let text = request_json(req, &params, body).to_string();
        let answer = pool.request(route.file, route.index, &text, route.limit);
        let mut response = match answer.and_then(|t| parse_response(&t)) {
            Ok(r) => r,
            Err(e) => failure_response(&e, route),
        };
        if req.method == "HEAD" {
            response.body.clear();
        }
        response
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

/// The driver's `{"ok": {status, headers, json | body}}` or `{"error": …}` as a response.
fn parse_response(text: &str) -> Result<ApiResponse, HandlerError> {
    let bad = |why: &str| HandlerError::new(FailureKind::BadOutput, why);
    let answer: Value = serde_json::from_str(text).map_err(|_| bad("the handler's answer could not be read"))?;
    if let Some(e) = answer.get("error") {
        let mut error = HandlerError::new(FailureKind::Exception, e["message"].as_str().unwrap_or("the handler failed"));
        error.file = e["file"].as_str().map(str::to_string);
        error.line = e["line"].as_u64().map(|l| l as u32);
        error.stack = e["stack"].as_str().map(str::to_string);
        return Err(error);
    }
    let ok = answer.get("ok").ok_or_else(|| bad("the handler gave no answer"))?;
    let status = ok["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(200);
    let mut headers: Vec<(String, String)> = ok["headers"]
        .as_object()
        .map(|h| h.iter().filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let has = |headers: &[(String, String)], name: &str| headers.iter().any(|(k, _)| k == name);
    let body = if let Some(text) = ok.get("body").and_then(Value::as_str) {
        if !has(&headers, "content-type") {
            headers.push(("content-type".into(), "text/plain; charset=utf-8".into()));
        }
        text.as_bytes().to_vec()
    } else if let Some(value) = ok.get("json") {
        if !has(&headers, "content-type") {
            headers.push(("content-type".into(), "application/json".into()));
        }
        value.to_string().into_bytes()
    } else {
        Vec::new()
    };
    Ok(ApiResponse { status, headers, body })
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
        let r = parse_response(r#"{"ok":{"status":201,"json":{"a":1},"headers":{"X-Thing":"y"}}}"#).unwrap();
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
