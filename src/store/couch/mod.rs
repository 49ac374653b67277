//! CouchDB over HTTP (blocking `reqwest`), for CouchDB 3.x and PouchDB Server.
//!
//! The only module that knows CouchDB's wire format. Credentials come from the URL's user info
//! or from `RAINDROP_DB_USER` / `RAINDROP_DB_PASSWORD`; they are sent as basic auth and never
//! appear in a message: every error names the database by its URL with the credentials removed.
//! Connection errors and 5xx answers are retried with exponential backoff, a bounded number of
//! times; a changes read that fails is simply asked again from the same `since`, so a server
//! restart in the middle of a read loses nothing.
//!
//! `wire` holds what the requests are made of: URLs, ids, sequences, rows.

mod feed;
mod records;
mod views;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{
    Attachment, ChangesPage, DbInfo, Doc, Find, Record, Seq, Store, StoreError, ViewQuery, ViewRow, WriteBatch, WriteResult, Written,
};
use wire::{describe_reqwest, encode_component, encode_id, in_input_order, percent_decode, seq_from_json, shaped, Rows};
pub use wire::{inline_attachment, redact};

/// How hard to try before calling the server unavailable.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest one request may take (a longpoll gets its own wait on top). A server that
    /// accepts connections and never answers fails a request after this long, and a request
    /// that timed out is tried once more only: a silent server is not waited for `attempts`
    /// times over.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            request_timeout: default_request_timeout(),
        }
    }
}

/// 120 s, or `RAINDROP_DB_TIMEOUT_SECS`.
fn default_request_timeout() -> Duration {
    let secs = std::env::var("RAINDROP_DB_TIMEOUT_SECS").ok().and_then(|s| s.parse::<u64>().ok()).filter(|&s| s > 0).unwrap_or(120);
    Duration::from_secs(secs)
}

/// Which of the store's two databases a request is for: the documents' (the one named), or
/// the records' beside it (see `records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Main,
    Records,
}

/// A CouchDB database, and beside it the database of its records.
pub struct CouchStore {
    client: Client,
    /// `http://host:port/db` without credentials: safe to print.
    db_url: String,
    /// The database's path on the server (`/db`), to name requests by what follows it.
    db_path: String,
    user: Option<String>,
    password: Option<String>,
    retry: RetryPolicy,
    /// Whether the design document behind `find` is known to be installed (done on first use,
    /// so databases that never query carry no design document).
    views_ready: std::sync::atomic::AtomicBool,
    /// Whether the records' database is known to exist (made on first use).
    records_ready: std::sync::atomic::AtomicBool,
    /// The revision of each checkpoint this store last read or wrote, so that writing one is
    /// one request, not a read and a write.
    local_revs: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// HTTP requests sent (each attempt), for benchmarks to count round trips.
    requests: std::sync::atomic::AtomicU64,
    /// The same by kind ("POST _all_docs", "GET attachment", …) with the time they took: where
    /// the round trips go.
    by_kind: std::sync::Mutex<std::collections::BTreeMap<String, (u64, Duration)>>,
}

impl CouchStore {
    /// How many HTTP requests this store has sent (every attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The requests sent so far by kind (method and endpoint), with how many and how long
    /// they took in all.
    pub fn requests_by_kind(&self) -> Vec<(String, u64, Duration)> {
        let by_kind = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        by_kind.iter().map(|(k, &(n, t))| (k.clone(), n, t)).collect()
    }

    /// Connects to the database at `url` (`http[s]://[user[:password]@]host:port/db`) and
    /// creates it if it does not exist.
    pub fn open(url: &str, retry: RetryPolicy) -> Result<CouchStore, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| StoreError::BadRequest(format!("{} is not a database URL: {e}", redact(url))))?;
        if parsed.path().trim_matches('/').is_empty() {
            return Err(StoreError::BadRequest(format!("{} names no database (add /dbname)", redact(url))));
        }
        let user = Some(percent_decode(parsed.username()))
            .filter(|u| !u.is_empty())
            .or_else(|| std::env::var("RAINDROP_DB_USER").ok().filter(|u| !u.is_empty()));
        let password = parsed.password().map(percent_decode).or_else(|| std::env::var("RAINDROP_DB_PASSWORD").ok());
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(10).min(retry.request_timeout))
            .timeout(retry.request_timeout)
            .build()
            .map_err(|e| StoreError::Unavailable { location: redact(url), reason: e.to_string() })?;
        let store = CouchStore {
            client,
            db_url: redact(url),
            db_path: parsed.path().trim_end_matches('/').to_string(),
            user,
            password,
            retry,
            views_ready: Default::default(),
            records_ready: Default::default(),
            local_revs: Default::default(),
            requests: Default::default(),
            by_kind: Default::default(),
        };
        store.ensure_db()?;
        Ok(store)
    }

    fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.db_url.clone()
        } else {
            format!("{}/{path}", self.db_url)
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.request_in(Db::Main, method, path)
    }

    /// A request to `path` of the documents' database or of the records'.
    fn request_in(&self, db: Db, method: reqwest::Method, path: &str) -> RequestBuilder {
        let url = match db {
            Db::Main => self.url(path),
            Db::Records => records::url(&self.db_url, path),
        };
        let rb = self.client.request(method, url);
        match &self.user {
            Some(u) => rb.basic_auth(u, self.password.as_deref()),
            None => rb,
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { location: self.db_url.clone(), reason: reason.to_string() }
    }

    fn protocol(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Protocol { location: self.db_url.clone(), reason: reason.to_string() }
    }

    /// Sends a request, retrying connection errors and 5xx answers with backoff. Answers with
    /// other statuses come back as they are, for the caller to interpret.
    fn send(&self, make: impl Fn() -> RequestBuilder) -> Result<Response, StoreError> {
        let mut backoff = self.retry.first_backoff;
        let mut last_error = String::new();
        let mut timeouts = 0;
        for attempt in 1..=self.retry.attempts.max(1) {
            self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let request = match make().build() {
                Ok(r) => r,
                Err(e) => return Err(StoreError::BadRequest(describe_reqwest(&e))),
            };
            let path = request.url().path().strip_prefix(self.db_path.as_str()).unwrap_or("");
            let kind = match path.strip_prefix("$records").or_else(|| path.strip_prefix("%24records")) {
                Some(rest) => format!("records: {}", wire::request_kind(request.method(), rest)),
                None => wire::request_kind(request.method(), path),
            };
            let started = std::time::Instant::now();
            let answer = self.client.execute(request);
            let mut by_kind = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
            let entry = by_kind.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += started.elapsed();
            drop(by_kind);
            match answer {
                Err(e) if e.is_timeout() => {
                    timeouts += 1;
                    last_error = format!("no answer within {} s", self.retry.request_timeout.as_secs_f64());
                    if timeouts >= 2 {
                        return Err(self.unavailable(format!("{last_error} ({timeouts} attempts)")));
                    }
                }
                Ok(resp) if resp.status().is_server_error() => {
                    last_error = format!("the server answered {}", resp.status());
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    return Err(StoreError::Unauthorized { location: self.db_url.clone(), user: self.user.clone() });
                }
                Ok(resp) => return Ok(resp),
                Err(e) => last_error = describe_reqwest(&e),
            }
            if attempt < self.retry.attempts {
                tracing::debug!(location = %self.db_url, attempt, "retrying after: {last_error}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(self.retry.max_backoff);
            }
        }
        Err(self.unavailable(format!("{last_error} (after {} attempts)", self.retry.attempts)))
    }

    /// Reads a JSON body, turning HTML error pages and garbage into a clear error.
    fn json<T: for<'de> Deserialize<'de>>(&self, resp: Response) -> Result<T, StoreError> {
        let status = resp.status();
        let ctype = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = resp.bytes().map_err(|e| self.unavailable(describe_reqwest(&e)))?;
        serde_json::from_slice(&body).map_err(|e| {
            let preview: String = String::from_utf8_lossy(&body[..body.len().min(120)]).chars().filter(|c| !c.is_control()).collect();
            self.protocol(format!("status {status}, content type {ctype:?}, not the JSON expected ({e}): {preview:?}"))
        })
    }

    /// Fails with the server's own error for an unexpected status.
    fn expect_status(&self, resp: Response, ok: &[StatusCode]) -> Result<Response, StoreError> {
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        let status = resp.status();
        let v: Value = self.json(resp).unwrap_or(Value::Null);
        let reason = v.get("reason").and_then(Value::as_str).unwrap_or("");
        let error = v.get("error").and_then(Value::as_str).unwrap_or("");
        match status {
            StatusCode::CONFLICT => Err(StoreError::Conflict { id: reason.to_string() }),
            StatusCode::FORBIDDEN => Err(StoreError::Unauthorized { location: self.db_url.clone(), user: self.user.clone() }),
            _ => Err(StoreError::BadRequest(format!("{} answered {status}: {error} {reason}", self.db_url))),
        }
    }

    fn ensure_db(&self) -> Result<(), StoreError> {
        self.ensure(Db::Main)
    }

    /// Makes database `db` if it does not exist.
    fn ensure(&self, db: Db) -> Result<(), StoreError> {
        let resp = self.send(|| self.request_in(db, reqwest::Method::HEAD, ""))?;
        if resp.status() == StatusCode::NOT_FOUND {
            let resp = self.send(|| self.request_in(db, reqwest::Method::PUT, ""))?;
            // 412: someone else created it meanwhile.
            self.expect_status(resp, &[StatusCode::CREATED, StatusCode::ACCEPTED, StatusCode::PRECONDITION_FAILED])?;
        } else {
            self.expect_status(resp, &[StatusCode::OK])?;
        }
        Ok(())
    }
}

impl CouchStore {
    /// Documents of `db` by id, as [`Store::get_many`] asks.
    fn get_many_in(&self, db: Db, ids: &[String], fields: Option<&[String]>) -> Result<Vec<Option<String>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let body = json!({ "keys": chunk });
            let resp =
                self.send(|| self.request_in(db, reqwest::Method::POST, "_all_docs").query(&[("include_docs", "true")]).json(&body))?;
            let rows: Rows = self.json(self.expect_status(resp, &[StatusCode::OK])?)?;
            if rows.rows.len() != chunk.len() {
                return Err(self.protocol("_all_docs returned a different number of rows than keys"));
            }
            for row in rows.rows {
                out.push(row.doc.as_deref().map(|d| shaped(d, fields)).transpose()?);
            }
        }
        Ok(out)
    }

    /// `_bulk_docs` to `db` in requests of at most 2,000 documents or 16 MiB; one result per
    /// document.
    fn bulk_docs(&self, db: Db, docs: Vec<Doc>) -> Result<Vec<WriteResult>, StoreError> {
        #[derive(Deserialize)]
        struct Row {
            id: Option<String>,
            rev: Option<String>,
            error: Option<String>,
            reason: Option<String>,
        }
        let mut results = Vec::with_capacity(docs.len());
        // Batches keep each request to a sensible size (and below server limits).
        let mut start = 0;
        while start < docs.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < docs.len() && (end == start || (end - start < 2000 && bytes < 16 << 20)) {
                bytes += serde_json::to_string(&docs[end]).map(|s| s.len()).unwrap_or(0);
                end += 1;
            }
            let batch = &docs[start..end];
            let body = serde_json::to_vec(&json!({ "docs": batch })).map_err(|e| StoreError::BadRequest(e.to_string()))?;
            let resp = self.send(|| {
                self.request_in(db, reqwest::Method::POST, "_bulk_docs")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })?;
            let resp = self.expect_status(resp, &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED])?;
            let rows: Vec<Row> = self.json(resp)?;
            if rows.len() != batch.len() {
                return Err(self.protocol("_bulk_docs returned a different number of results than documents"));
            }
            for (row, doc) in in_input_order(rows, batch, |r| r.id.as_deref()).into_iter().zip(batch) {
                let id = row.id.or_else(|| doc.get("_id").and_then(Value::as_str).map(str::to_string)).unwrap_or_default();
                results.push(match (row.rev, row.error.as_deref()) {
                    (Some(rev), None) => WriteResult::Ok { id, rev },
                    (_, Some("conflict")) => WriteResult::Conflict { id },
                    (_, Some(err)) => WriteResult::Error { id, reason: format!("{err}: {}", row.reason.unwrap_or_default()) },
                    (None, None) => WriteResult::Error { id, reason: "the server gave neither a rev nor an error".into() },
                });
            }
            start = end;
        }
        Ok(results)
    }
}

impl Store for CouchStore {
    fn info(&self) -> Result<DbInfo, StoreError> {
        let resp = self.send(|| self.request(reqwest::Method::GET, ""))?;
        let resp = self.expect_status(resp, &[StatusCode::OK])?;
        let v: Value = self.json(resp)?;
        Ok(DbInfo {
            db_name: v.get("db_name").and_then(Value::as_str).unwrap_or_default().to_string(),
            doc_count: v.get("doc_count").and_then(Value::as_u64).unwrap_or(0),
            doc_del_count: v.get("doc_del_count").and_then(Value::as_u64).unwrap_or(0),
            update_seq: v.get("update_seq").map(|s| seq_from_json(s).to_string()).unwrap_or_default(),
            backend: "couchdb",
            location: self.db_url.clone(),
        })
    }

    fn get(&self, id: &str, attachments: bool) -> Result<Option<Doc>, StoreError> {
        let path = encode_id(id);
        let resp = self.send(|| {
            let rb = self.request(reqwest::Method::GET, &path);
            if attachments {
                rb.query(&[("attachments", "true")]).header("Accept", "application/json")
            } else {
                rb
            }
        })?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect_status(resp, &[StatusCode::OK])?;
        Ok(Some(self.json(resp)?))
    }

    fn get_many(&self, ids: &[String], fields: Option<&[String]>) -> Result<Vec<Option<String>>, StoreError> {
        self.get_many_in(Db::Main, ids, fields)
    }

    fn find(&self, find: &Find<'_>) -> Result<Vec<Vec<String>>, StoreError> {
        let limit = find.limit.max(1);
        let Some((field, values)) = find.by else {
            let rows = self.view_rows(&[json!(["schema_id", find.schema])], Some(limit))?;
            return Ok(vec![rows.iter().filter_map(|r| r.doc.as_deref()).map(|d| shaped(d, find.fields)).collect::<Result<_, _>>()?]);
        };
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Value> = values.iter().map(|v| json!([find.schema, field, v])).collect();
        let mut slot: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut unique = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            slot.entry(k.to_string()).or_insert_with(|| {
                unique.push(k.clone());
                i
            });
        }
        let rows = self.view_rows(&unique, (unique.len() == 1).then_some(limit))?;
        let mut out: Vec<Vec<String>> = vec![Vec::new(); values.len()];
        for row in rows {
            if let (Some(&i), Some(doc)) = (slot.get(&row.key.to_string()), row.doc.as_deref()) {
                if out[i].len() < limit {
                    out[i].push(shaped(doc, find.fields)?);
                }
            }
        }
        // A value given twice gets the same answer twice.
        for (i, k) in keys.iter().enumerate() {
            let first = slot[&k.to_string()];
            if first != i {
                out[i] = out[first].clone();
            }
        }
        Ok(out)
    }

    fn megaview(&self, query: &ViewQuery) -> Result<Vec<ViewRow>, StoreError> {
        self.megaview_rows(query)
    }

    fn megaview_count(&self, key: &crate::store::MegaKey) -> Result<u64, StoreError> {
        self.megaview_reduced_count(key)
    }

    /// CouchDB's view indexes every field at once: nothing to ready.
    fn index_field(&self, _schema_id: &str, _field: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn changes(&self, since: &Seq, limit: usize, docs: bool) -> Result<ChangesPage<Arc<str>>, StoreError> {
        let q = Self::changes_query(since, limit, docs);
        let page: ChangesPage<Box<RawValue>> = self.read_changes(&q, Some(Duration::from_secs(300)), true)?;
        Ok(page.map_docs(|d| Arc::from(d.get())))
    }

    fn wait_changes(&self, since: &Seq, timeout: Duration) -> Result<bool, StoreError> {
        // Something there already: no need to wait.
        if !self.changes(since, 1, false)?.changes.is_empty() {
            return Ok(true);
        }
        let mut q = Self::changes_query(since, 1, false);
        q.push(("feed", "longpoll".to_string()));
        q.push(("timeout", timeout.as_millis().max(1).to_string()));
        // CouchDB ends a longpoll at `timeout`; PouchDB Server ignores it and holds the request
        // open. So the client gives up a little later, and a longpoll that ran out of time means
        // "no change yet" — the caller asks again from the same `since`, so nothing is lost.
        match self.read_changes::<serde::de::IgnoredAny>(&q, Some(timeout + Duration::from_secs(1)), false) {
            Err(StoreError::Unavailable { reason, .. }) if reason.starts_with("timed out") => Ok(false),
            Err(e) => Err(e),
            Ok(page) => Ok(!page.changes.is_empty()),
        }
    }

    /// Documents and new documents in one `_bulk_docs`, then the records in one to the records'
    /// database, then the checkpoint: not one transaction, so the records come after the data
    /// they describe.
    fn write(&self, batch: WriteBatch<'_>) -> Result<Written, StoreError> {
        let mut all = batch.docs;
        for doc in batch.new_docs {
            all.push(doc.into_doc()?);
        }
        let docs = if all.is_empty() { Vec::new() } else { self.bulk_docs(Db::Main, all)? };
        let records = batch.records.into_iter().map(Record::into_doc).collect::<Result<Vec<_>, _>>()?;
        let records = if records.is_empty() {
            Vec::new()
        } else {
            self.records_db()?;
            self.bulk_docs(Db::Records, records)?
        };
        if let Some((id, body)) = batch.checkpoint {
            self.put_local(id, body)?;
        }
        Ok(Written { docs, records })
    }

    /// CouchDB 3 has a write acknowledged only once it is on disk: nothing to wait for.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn get_records(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.read_records(ids)
    }

    fn records_after(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Doc>, StoreError> {
        self.records_from(prefix, after, limit)
    }

    fn move_to_records(&self, prefix: &str) -> Result<u64, StoreError> {
        self.move_records(prefix)
    }

    fn put_attachment(&self, id: &str, rev: &str, name: &str, attachment: &Attachment) -> Result<String, StoreError> {
        let path = format!("{}/{}", encode_id(id), encode_component(name));
        let resp = self.send(|| {
            self.request(reqwest::Method::PUT, &path)
                .query(&[("rev", rev)])
                .header(reqwest::header::CONTENT_TYPE, attachment.content_type.as_str())
                .body(attachment.data.clone())
        })?;
        if resp.status() == StatusCode::CONFLICT || resp.status() == StatusCode::NOT_FOUND {
            return Err(StoreError::Conflict { id: id.to_string() });
        }
        let resp = self.expect_status(resp, &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED])?;
        let v: Value = self.json(resp)?;
        v.get("rev").and_then(Value::as_str).map(str::to_string).ok_or_else(|| self.protocol("no rev in the attachment answer"))
    }

    fn get_attachment(&self, id: &str, name: &str) -> Result<Option<Attachment>, StoreError> {
        let path = format!("{}/{}", encode_id(id), encode_component(name));
        let resp = self.send(|| self.request(reqwest::Method::GET, &path))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect_status(resp, &[StatusCode::OK])?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let data = resp.bytes().map_err(|e| self.unavailable(describe_reqwest(&e)))?.to_vec();
        Ok(Some(Attachment { content_type, data }))
    }

    /// `_all_docs` with the attachments inline (base64), one request for the lot.
    fn get_attachments_of(&self, ids: &[String]) -> Result<Vec<Option<crate::store::Attachments>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = json!({ "keys": ids });
        let q = [("include_docs", "true"), ("attachments", "true")];
        let resp = self.send(|| self.request(reqwest::Method::POST, "_all_docs").query(&q).json(&body))?;
        let rows: Rows = self.json(self.expect_status(resp, &[StatusCode::OK])?)?;
        if rows.rows.len() != ids.len() {
            return Err(self.protocol("_all_docs returned a different number of rows than keys"));
        }
        rows.rows
            .iter()
            .map(|row| row.doc.as_deref().map(|d| wire::inline_attachments(d.get())).transpose().map_err(|e| self.protocol(e)))
            .collect()
    }

    fn get_local(&self, id: &str) -> Result<Option<Value>, StoreError> {
        self.read_checkpoint(id)
    }

    fn put_local(&self, id: &str, body: &Value) -> Result<(), StoreError> {
        self.write_checkpoint(id, body)
    }

    fn delete_local(&self, id: &str) -> Result<(), StoreError> {
        self.delete_checkpoint(id)
    }

    /// Both databases.
    fn destroy(&self) -> Result<(), StoreError> {
        for db in [Db::Records, Db::Main] {
            let resp = self.send(|| self.request_in(db, reqwest::Method::DELETE, ""))?;
            self.expect_status(resp, &[StatusCode::OK, StatusCode::ACCEPTED, StatusCode::NOT_FOUND])?;
        }
        self.records_ready.store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
