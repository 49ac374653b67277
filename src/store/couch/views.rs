//! Raindrop's design document on the server — the megaview (see `store::megaview`) — and
//! the queries of it behind `find` and `megaview`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::wire::{Row, Rows, MEGAVIEW_MAP};
use super::CouchStore;
use crate::store::{MegaKey, StoreError, ViewQuery, ViewRow};

/// The megaview, a view of Raindrop's design document.
const MEGAVIEW_PATH: &str = "_design/raindrop/_view/megaview";

impl CouchStore {
    /// Installs (or updates) Raindrop's design document — the megaview, behind `find` and
    /// `megaview` — on first use (once per store).
    pub(super) fn views(&self) -> Result<(), StoreError> {
        if !self.views_ready.load(std::sync::atomic::Ordering::Acquire) {
            self.ensure_views()?;
            self.views_ready.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    fn ensure_views(&self) -> Result<(), StoreError> {
        let path = "_design/raindrop";
        let resp = self.send(|| self.request(reqwest::Method::GET, path))?;
        let current: Option<Value> =
            if resp.status() == StatusCode::NOT_FOUND { None } else { Some(self.json(self.expect_status(resp, &[StatusCode::OK])?)?) };
        let view = json!({ "map": MEGAVIEW_MAP, "reduce": "_count" });
        if current.as_ref().and_then(|d| d.pointer("/views/megaview")) == Some(&view) {
            return Ok(());
        }
        let mut doc = json!({ "language": "javascript", "views": { "megaview": view } });
        if let Some(rev) = current.as_ref().and_then(|d| d.get("_rev")) {
            doc["_rev"] = rev.clone();
        }
        let resp = self.send(|| self.request(reqwest::Method::PUT, path).json(&doc))?;
        if resp.status() == StatusCode::CONFLICT {
            return Ok(()); // another process installed it meanwhile
        }
        self.expect_status(resp, &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED])?;
        Ok(())
    }

    /// The view rows for each of `keys` (each key once: a key given twice would be answered
    /// twice), in one request.
    pub(super) fn view_rows(&self, keys: &[Value], limit: Option<usize>) -> Result<Vec<Row>, StoreError> {
        self.views()?;
        let path = MEGAVIEW_PATH;
        let resp = if let [key] = keys {
            let mut q = vec![("key", key.to_string()), ("include_docs", "true".to_string()), ("reduce", "false".to_string())];
            if let Some(limit) = limit {
                q.push(("limit", limit.max(1).to_string()));
            }
            self.send(|| self.request(reqwest::Method::GET, path).query(&q))?
        } else {
            let body = json!({ "keys": keys });
            self.send(|| self.request(reqwest::Method::POST, path).query(&[("include_docs", "true"), ("reduce", "false")]).json(&body))?
        };
        let rows: Rows = self.json(self.expect_status(resp, &[StatusCode::OK])?)?;
        Ok(rows.rows)
    }
    /// The rows of one megaview key, from the view.
    pub(super) fn megaview_rows(&self, query: &ViewQuery) -> Result<Vec<ViewRow>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.views()?;
        let mut q = key_range(&query.key, query.descending);
        q.extend([("limit", query.limit.max(1).to_string()), ("reduce", "false".to_string())]);
        if query.skip > 0 {
            q.push(("skip", query.skip.to_string()));
        }
        if query.descending {
            q.push(("descending", "true".to_string()));
        }
        let resp = self.send(|| self.request(reqwest::Method::GET, MEGAVIEW_PATH).query(&q))?;
        let rows: Rows = self.json(self.expect_status(resp, &[StatusCode::OK])?)?;
        Ok(rows.rows.into_iter().map(|r| ViewRow { id: r.id.unwrap_or_default(), key: r.key, value: r.value }).collect())
    }

    /// The number of rows of one megaview key: the view reduced by its `_count`.
    pub(super) fn megaview_reduced_count(&self, key: &MegaKey) -> Result<u64, StoreError> {
        self.views()?;
        let q = key_range(key, false);
        let resp = self.send(|| self.request(reqwest::Method::GET, MEGAVIEW_PATH).query(&q))?;
        let answer: Value = self.json(self.expect_status(resp, &[StatusCode::OK])?)?;
        // No row when nothing is in the range.
        Ok(answer.pointer("/rows/0/value").and_then(Value::as_u64).unwrap_or(0))
    }
}

/// The query parameters selecting one key's rows: `key`, or for a [`MegaKey::FieldPrefix`] the
/// range from `[schema, field, prefix]` to `[schema, field, prefix + [{}]]` (`{}` collates after
/// every scalar, string and array: arrays whose next element is a non-empty object are left
/// out, which the embedded store includes), its ends swapped when `descending`.
fn key_range(key: &MegaKey, descending: bool) -> Vec<(&'static str, String)> {
    let MegaKey::FieldPrefix(schema, field, prefix) = key else { return vec![("key", key.to_json().to_string())] };
    let low = json!([schema, field, prefix]);
    let mut high_prefix = prefix.clone();
    high_prefix.push(json!({}));
    let high = json!([schema, field, high_prefix]);
    let (start, end) = if descending { (high, low) } else { (low, high) };
    vec![("startkey", start.to_string()), ("endkey", end.to_string())]
}
