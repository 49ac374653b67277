//! `/api/…`: a request read whole (its body bounded in size and time), checked for the token
//! and, for a browser on another origin, against the CORS origins; then handed to the API's
//! JS pool, whose thread sends the response back: the listener never waits for JavaScript,
//! and no thread in between does either.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{authorized, HttpState};
use crate::api::{ApiRequest, ApiResponse};

/// The largest request body the API takes.
const MAX_BODY_BYTES: usize = 1 << 20;
/// How much of a body over the limit is read (and thrown away) so that a client still
/// sending it gets the 413 rather than a connection reset under its feet.
const DRAIN_BYTES: u64 = 16 << 20;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn answer(state: Arc<HttpState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let origin = req.headers().get(hyper::header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let allowed = origin.filter(|o| state.cors_origins.iter().any(|c| c == o || c == "*"));
    if req.method() == Method::OPTIONS && allowed.is_some() {
        return with_cors(respond(ApiResponse { status: 204, headers: Vec::new(), body: Vec::new() }), allowed.as_deref(), true);
    }
    if !authorized(&state, &req) {
        let mut r = ApiResponse::error(401, "this listener needs Authorization: Bearer <token>", json!({}));
        r.headers.push(("www-authenticate".into(), "Bearer".into()));
        return with_cors(respond(r), allowed.as_deref(), false);
    }
    let response = match read(req).await {
        Ok(api_req) => {
            let api = state.api.read().unwrap_or_else(|p| p.into_inner()).clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            api.handle_then(
                &api_req,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            let response =
                rx.await.unwrap_or_else(|_| ApiResponse::error(503, "the API was reloaded while the request waited: try again", json!({})));
            // An API replaced meanwhile is dropped here when this was its last request: its
            // pool's threads are joined off the listener's thread.
            if Arc::strong_count(&api) == 1 {
                tokio::task::spawn_blocking(move || drop(api));
            }
            response
        }
        Err(r) => r,
    };
    let response = checked(response);
    state.metrics.api_request(response.status);
    with_cors(respond(response), allowed.as_deref(), false)
}

/// Headers that frame the HTTP message: the server sets them, a handler may not.
const FRAMING: [&str; 7] = ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"];

/// The handler's answer, or a 500 naming the header it may not send (one that frames the
/// message, or a name or value HTTP cannot carry).
fn checked(r: ApiResponse) -> ApiResponse {
    for (name, value) in &r.headers {
        let problem = if FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            Some("is set by the server")
        } else if HeaderName::from_bytes(name.as_bytes()).is_err() {
            Some("is not a valid header name")
        } else if HeaderValue::from_str(value).is_err() {
            Some("has a value HTTP cannot carry (control characters, or not visible ASCII)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return ApiResponse::error(500, &format!("the handler's header {name:?} {problem}"), json!({}));
        }
    }
    r
}

/// The request as the API takes it, or the error response for one that cannot be read.
async fn read(req: Request<Incoming>) -> Result<ApiRequest, ApiResponse> {
    let (parts, body) = req.into_parts();
    let declared = parts.headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let body = match tokio::time::timeout(BODY_TIMEOUT, collect(body, declared)).await {
        Err(_) => return Err(ApiResponse::error(408, "the request body did not arrive within 10 s", json!({}))),
        Ok(result) => result?,
    };
    let path = parts.uri.path().strip_prefix("/api").unwrap_or_default().to_string();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != hyper::header::AUTHORIZATION)
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect();
    Ok(ApiRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body,
    })
}

/// The body whole; past [`MAX_BODY_BYTES`] a 413, after reading on up to [`DRAIN_BYTES`].
async fn collect(mut body: Incoming, declared: Option<u64>) -> Result<Vec<u8>, ApiResponse> {
    let too_big = || ApiResponse::error(413, &format!("the request body is over {} KiB", MAX_BODY_BYTES >> 10), json!({}));
    if declared.is_some_and(|n| n > DRAIN_BYTES) {
        return Err(too_big());
    }
    let over = declared.is_some_and(|n| n > MAX_BODY_BYTES as u64);
    let (mut kept, mut seen) = (Vec::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiResponse::error(400, &format!("the request body could not be read: {e}"), json!({})))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > DRAIN_BYTES {
                break;
            }
            if !over && seen <= MAX_BODY_BYTES as u64 {
                kept.extend_from_slice(&data);
            }
        }
    }
    if over || seen > MAX_BODY_BYTES as u64 {
        return Err(too_big());
    }
    Ok(kept)
}

fn respond(r: ApiResponse) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(r.body)));
    *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in r.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// CORS headers for an allowed origin (and, for a preflight, what it may send).
fn with_cors(mut response: Response<Full<Bytes>>, origin: Option<&str>, preflight: bool) -> Response<Full<Bytes>> {
    let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else { return response };
    let h = response.headers_mut();
    h.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(hyper::header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"));
        h.insert(hyper::header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        h.insert(hyper::header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}
