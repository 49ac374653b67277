//! The records and checkpoints of a CouchDB store.
//!
//! Records (the pipeline's state per source, its queues, its dependency index) live in a
//! database of their own beside the documents', named `<db>$records`: kept with the documents,
//! every one of them went through the megaview's map function and the changes feed of every
//! reader — about half of everything written, on the mail benchmark, and the largest part of
//! the server's work. Apart, they are documents still (revision-checked), read by id and by id
//! range. Databases made before have their records moved there on the next run
//! (`move_to_records`).
//!
//! Checkpoints are `_local` documents of the documents' database; their revisions are kept
//! here, so writing one costs one request.

use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use super::wire::{encode_component, Rows};
use super::{CouchStore, Db};
use crate::store::{Doc, StoreError, WriteResult};

/// The records' database beside the database at `db_url`.
const SUFFIX: &str = "$records";

/// The URL of `path` in the records' database of the database at `db_url`.
pub(super) fn url(db_url: &str, path: &str) -> String {
    if path.is_empty() {
        format!("{db_url}{SUFFIX}")
    } else {
        format!("{db_url}{SUFFIX}/{path}")
    }
}

/// Documents moved per request when an older database's records move over.
const MOVE_PAGE: usize = 500;

impl CouchStore {
    /// Makes the records' database on first use.
    pub(super) fn records_db(&self) -> Result<(), StoreError> {
        if !self.records_ready.load(std::sync::atomic::Ordering::Acquire) {
            self.ensure(Db::Records)?;
            self.records_ready.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    pub(super) fn read_records(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.records_db()?;
        self.get_many_in(Db::Records, ids, None)?.into_iter().map(|t| t.map(|t| crate::store::parse_doc(&t)).transpose()).collect()
    }

    /// `_all_docs` of the records' database from the prefix on, in the server's id order.
    pub(super) fn records_from(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Doc>, StoreError> {
        self.records_db()?;
        self.id_range(Db::Records, prefix, after, limit)
    }

    /// Up to `limit` documents of `db` whose ids start with `prefix` and sort after `after`.
    fn id_range(&self, db: Db, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Doc>, StoreError> {
        let start = after.unwrap_or(prefix);
        let q = [
            ("startkey", Value::String(start.to_string()).to_string()),
            ("endkey", Value::String(format!("{prefix}\u{fff0}")).to_string()),
            ("include_docs", "true".to_string()),
            ("limit", (limit.max(1) + 1).to_string()),
        ];
        let resp = self.send(|| self.request_in(db, reqwest::Method::GET, "_all_docs").query(&q))?;
        let rows: Rows = self.json(self.expect_status(resp, &[StatusCode::OK])?)?;
        let mut out = Vec::new();
        for doc in rows.rows.iter().filter_map(|r| r.doc.as_deref()) {
            let doc = crate::store::parse_doc(doc.get())?;
            let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default();
            if Some(id) != after && id.starts_with(prefix) && out.len() < limit.max(1) {
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// Moves the documents whose ids start with `prefix` from the documents' database to the
    /// records' (a database from before records had their own): each is written there, then
    /// deleted here. A move cut short is finished by the next: a record already there (a
    /// conflict) was written by the move before, and only the deletion is left.
    pub(super) fn move_records(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut moved = 0;
        loop {
            let docs = self.id_range(Db::Main, prefix, None, MOVE_PAGE)?;
            if docs.is_empty() {
                return Ok(moved);
            }
            self.records_db()?;
            let copies: Vec<Doc> = docs
                .iter()
                .map(|d| {
                    let mut copy = d.clone();
                    copy.remove("_rev");
                    copy
                })
                .collect();
            for result in self.bulk_docs(Db::Records, copies)? {
                if let WriteResult::Error { id, reason } = result {
                    return Err(StoreError::BadRequest(format!("moving record {id} to the records' database: {reason}")));
                }
            }
            let deletions: Vec<Doc> = docs
                .iter()
                .map(|d| {
                    let mut gone = Map::new();
                    gone.insert("_id".into(), d.get("_id").cloned().unwrap_or(Value::Null));
                    gone.insert("_rev".into(), d.get("_rev").cloned().unwrap_or(Value::Null));
                    gone.insert("_deleted".into(), Value::Bool(true));
                    gone
                })
                .collect();
            self.bulk_docs(Db::Main, deletions)?;
            moved += docs.len() as u64;
        }
    }

    pub(super) fn read_checkpoint(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let path = format!("_local/{}", encode_component(id));
        let resp = self.send(|| self.request(reqwest::Method::GET, &path))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect_status(resp, &[StatusCode::OK])?;
        let mut v: Map<String, Value> = self.json(resp)?;
        if let Some(Value::String(rev)) = v.get("_rev") {
            self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), rev.clone());
        }
        Ok(v.remove("body"))
    }

    /// Writes checkpoint `id` with the revision last seen (CouchDB 3 does not check it; PouchDB
    /// Server does): one request, and on a conflict — another process wrote it, or this one
    /// never read it — the current revision is read and the write tried again.
    pub(super) fn write_checkpoint(&self, id: &str, body: &Value) -> Result<(), StoreError> {
        let path = format!("_local/{}", encode_component(id));
        for _ in 0..5 {
            let rev = self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
            let mut doc = json!({ "body": body });
            if let Some(rev) = rev {
                doc["_rev"] = Value::String(rev);
            }
            let resp = self.send(|| self.request(reqwest::Method::PUT, &path).json(&doc))?;
            if resp.status() == StatusCode::CONFLICT {
                self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                self.read_checkpoint(id)?;
                continue;
            }
            let resp = self.expect_status(resp, &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED])?;
            let answer: Value = self.json(resp)?;
            let mut revs = self.local_revs.lock().unwrap_or_else(|e| e.into_inner());
            match answer.get("rev").and_then(Value::as_str) {
                Some(rev) => revs.insert(id.to_string(), rev.to_string()),
                None => revs.remove(id),
            };
            return Ok(());
        }
        Err(StoreError::Conflict { id: format!("_local/{id}") })
    }

    /// Deletes checkpoint `id` with the revision last seen (read first when none was; PouchDB
    /// Server checks it, CouchDB 3 does not); one already gone is fine.
    pub(super) fn delete_checkpoint(&self, id: &str) -> Result<(), StoreError> {
        let path = format!("_local/{}", encode_component(id));
        for _ in 0..5 {
            let known = self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
            let rev = match known {
                Some(rev) => rev,
                None if self.read_checkpoint(id)?.is_none() => return Ok(()),
                None => self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned().unwrap_or_default(),
            };
            let resp = self.send(|| self.request(reqwest::Method::DELETE, &path).query(&[("rev", &rev)]))?;
            if resp.status() == StatusCode::CONFLICT {
                self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                continue;
            }
            self.local_revs.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            self.expect_status(resp, &[StatusCode::OK, StatusCode::ACCEPTED, StatusCode::NOT_FOUND])?;
            return Ok(());
        }
        Err(StoreError::Conflict { id: format!("_local/{id}") })
    }
}
