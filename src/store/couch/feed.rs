//! The changes feed of a CouchDB store: one `_changes` request, and its query.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::wire::{describe_reqwest, seq_from_json};
use super::CouchStore;
use crate::store::{Change, ChangesPage, Seq, StoreError};

impl CouchStore {
    /// One `_changes` request. With `retry` false, a single attempt (for longpolls, where a
    /// timeout is an answer).
    pub(super) fn read_changes<D: for<'de> Deserialize<'de>>(
        &self,
        query: &[(&str, String)],
        body_timeout: Option<Duration>,
        retry: bool,
    ) -> Result<ChangesPage<D>, StoreError> {
        #[derive(Deserialize)]
        struct Rev {
            rev: String,
        }
        #[derive(Deserialize)]
        #[serde(bound = "D: Deserialize<'de>")]
        struct Row<D> {
            seq: Value,
            id: String,
            changes: Vec<Rev>,
            #[serde(default)]
            deleted: bool,
            doc: Option<D>,
        }
        #[derive(Deserialize)]
        #[serde(bound = "D: Deserialize<'de>")]
        struct Page<D> {
            results: Vec<Row<D>>,
            last_seq: Value,
        }
        let make = || {
            let rb = self.request(reqwest::Method::GET, "_changes").query(query);
            match body_timeout {
                Some(t) => rb.timeout(t),
                None => rb,
            }
        };
        let resp = if retry { self.send(make)? } else { make().send().map_err(|e| self.unavailable(describe_reqwest(&e)))? };
        let resp = self.expect_status(resp, &[StatusCode::OK])?;
        let page: Page<D> = self.json(resp)?;
        let changes = page
            .results
            .into_iter()
            .map(|r| Change {
                seq: seq_from_json(&r.seq),
                rev: r.changes.into_iter().next().map(|c| c.rev).unwrap_or_default(),
                id: r.id,
                deleted: r.deleted,
                doc: r.doc,
            })
            .collect();
        Ok(ChangesPage { changes, last_seq: seq_from_json(&page.last_seq) })
    }

    pub(super) fn changes_query(since: &Seq, limit: usize, include_docs: bool) -> Vec<(&'static str, String)> {
        let mut q = vec![("limit", limit.max(1).to_string()), ("style", "main_only".to_string())];
        if !since.is_zero() {
            q.push(("since", since.as_str().to_string()));
        }
        if include_docs {
            q.push(("include_docs", "true".to_string()));
        }
        q
    }
}
