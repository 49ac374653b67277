//! The document store: one [`Store`] trait, two backends that pass the same conformance suite.
//!
//! - [`embedded`]: a single SQLite file (the default; nothing to install).
//! - [`couch`]: CouchDB 3.x (or PouchDB Server) over HTTP.
//!
//! Documents are JSON objects in CouchDB's shape (`_id`, `_rev`, `_deleted`, `_attachments`).
//! Sequence values are opaque: callers hand back exactly what a changes page gave them.
//! Only `couch.rs` knows CouchDB's wire format; only `embedded.rs` knows SQL.

pub mod couch;
pub mod embedded;
mod rev;
mod spec;

use std::time::Duration;

use serde_json::{Map, Value};

pub use spec::{open, StoreSpec};

/// A document: a JSON object with CouchDB's underscore fields.
pub type Doc = Map<String, Value>;

/// An opaque position in a database's changes feed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Seq(String);

impl Seq {
    /// The start of the feed.
    pub fn zero() -> Seq {
        Seq(String::new())
    }
    pub fn from_raw(s: impl Into<String>) -> Seq {
        Seq(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_empty() || self.0 == "0"
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "0" } else { &self.0 })
    }
}

/// One entry of the changes feed: the document's latest revision. The document comes parsed
/// (`Doc`) or, from [`Store::changes_text`], as its JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<D = Doc> {
    pub seq: Seq,
    pub id: String,
    pub rev: String,
    pub deleted: bool,
    /// The document, when asked for (`None` for a tombstone's body on some servers).
    pub doc: Option<D>,
}

/// A page of the changes feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesPage<D = Doc> {
    pub changes: Vec<Change<D>>,
    /// Where the next page starts: hand it back as `since`.
    pub last_seq: Seq,
}

impl<D> ChangesPage<D> {
    /// The same page with each document turned into another form by `f`.
    pub fn map_docs<E>(self, mut f: impl FnMut(D) -> E) -> ChangesPage<E> {
        let changes = self
            .changes
            .into_iter()
            .map(|c| Change { doc: c.doc.map(&mut f), seq: c.seq, id: c.id, rev: c.rev, deleted: c.deleted })
            .collect();
        ChangesPage { changes, last_seq: self.last_seq }
    }
}

/// The result of writing one document in a bulk write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    Ok { id: String, rev: String },
    /// The document changed since the `_rev` given (or exists when none was given).
    Conflict { id: String },
    /// Rejected for another reason (bad id, forbidden, …).
    Error { id: String, reason: String },
}

impl WriteResult {
    pub fn id(&self) -> &str {
        match self {
            WriteResult::Ok { id, .. } | WriteResult::Conflict { id } | WriteResult::Error { id, .. } => id,
        }
    }
}

/// Database summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DbInfo {
    pub db_name: String,
    pub doc_count: u64,
    pub doc_del_count: u64,
    pub update_seq: String,
    /// `embedded` or `couchdb`.
    pub backend: &'static str,
    /// Where it lives (a path, or a URL without credentials).
    pub location: String,
}

/// An attachment's bytes and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub content_type: String,
    pub data: Vec<u8>,
}

/// `doc` cut down to `rd_key` and `fields` (see [`Store::get_many_fields`]).
/// A document that does not exist yet, given as its stored text: every member but `_id` (no
/// `_rev`, `_deleted` or `_attachments`). The pipeline builds most of its outputs so, from the
/// JSON text the handlers emitted, without parsing and printing them again.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDoc {
    pub id: String,
    /// Its `rd_schema_id`.
    pub schema: String,
    /// The JSON text of an object.
    pub body: String,
}

impl NewDoc {
    /// The document as members, `_id` included.
    pub fn into_doc(self) -> Result<Doc, StoreError> {
        doc_of_text(self.id, None, &self.body, "new document")
    }
}

/// A record to write (see [`Store::bulk_write_with_records`]): a document, or one its writer
/// built as JSON text — the pipeline's state records and later queue, printed without making
/// a document of values first (they were a tenth of the bytes the mail benchmark serialised).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Doc(Doc),
    Text {
        id: String,
        /// The revision it replaces; `None` for a new record.
        rev: Option<String>,
        /// The JSON text of an object without `_id` or `_rev`.
        body: String,
    },
}

impl From<Doc> for Record {
    fn from(doc: Doc) -> Record {
        Record::Doc(doc)
    }
}

impl Record {
    /// The record as a document, `_id` and `_rev` included.
    pub fn into_doc(self) -> Result<Doc, StoreError> {
        match self {
            Record::Doc(doc) => Ok(doc),
            Record::Text { id, rev, body } => doc_of_text(id, rev, &body, "record"),
        }
    }
}

/// The document whose members (but `_id` and `_rev`) are the JSON text `body`.
fn doc_of_text(id: String, rev: Option<String>, body: &str, what: &str) -> Result<Doc, StoreError> {
    let mut doc: Doc = serde_json::from_str(body).map_err(|e| StoreError::BadRequest(format!("the text of {what} {id} is not a JSON object: {e}")))?;
    doc.insert("_id".into(), Value::String(id));
    if let Some(rev) = rev {
        doc.insert("_rev".into(), Value::String(rev));
    }
    Ok(doc)
}

pub fn project(mut doc: Doc, fields: &[String]) -> Doc {
    doc.retain(|k, _| k == "rd_key" || fields.iter().any(|f| f == k));
    doc
}

/// How soon a write must survive a power cut. A crash of the process loses no committed write
/// either way; this is about the operating system's buffers reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the call returns: what a user, an import or a sync is told is kept, is.
    Immediate,
    /// Soon after (with the next durable write or the store's next copy of its log), for a
    /// write that can be made again from what is already durable: a page of the pipeline's
    /// derived documents carries its checkpoint in the same write, so a power cut takes back
    /// the page and its checkpoint together and the pipeline derives the page again. Waiting
    /// for the disk at each page was ~3% of the mail benchmark's time (one `fsync` per page).
    Deferred,
}

/// What every backend does. Implementations are `Send + Sync`: one store is shared by threads.
pub trait Store: Send + Sync {
    fn info(&self) -> Result<DbInfo, StoreError>;

    /// The current revision of `id`, or `None` if it does not exist or is deleted.
    /// With `attachments`, attachment bodies are inlined as base64 `data`; otherwise stubs.
    fn get(&self, id: &str, attachments: bool) -> Result<Option<Doc>, StoreError>;

    /// Several documents by id, in the order asked; `None` for missing or deleted ones.
    fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError>;

    /// Writes each document (a new one without `_rev`, an update with the current `_rev`, a
    /// delete with `_deleted: true`); one result per document, in order. Inline attachments
    /// (`_attachments.{name}.data` in base64) are stored; stubs keep the existing ones.
    fn bulk_write(&self, docs: Vec<Doc>) -> Result<Vec<WriteResult>, StoreError>;

    /// [`Store::bulk_write`], then [`Store::put_local`] of `local` when given: the pipeline
    /// writes a page and its checkpoint so. The embedded store does both in one transaction,
    /// one durable commit instead of two.
    fn bulk_write_and_put_local(&self, docs: Vec<Doc>, local: Option<(&str, &Value)>, _durability: Durability) -> Result<Vec<WriteResult>, StoreError> {
        let results = if docs.is_empty() { Vec::new() } else { self.bulk_write(docs)? };
        if let Some((id, body)) = local {
            self.put_local(id, body)?;
        }
        Ok(results)
    }

    /// [`Store::bulk_write_and_put_local`] that also writes the [`NewDoc`]s `new` after `docs`,
    /// and `records` after them, in the same write; the results of `docs` and `new`, then of
    /// `records`. Records are bookkeeping (the pipeline's state per source): written and read
    /// like documents, with revisions, but a store may keep them apart — out of the changes
    /// feed, with no sequence numbers or indexes, as the embedded store does (they were half of
    /// all the rows it wrote on the mail benchmark). By default they are ordinary documents,
    /// `new` is parsed and written like `docs`, and every write is durable when it returns.
    fn bulk_write_with_records(&self, docs: Vec<Doc>, new: Vec<NewDoc>, records: Vec<Record>, local: Option<(&str, &Value)>, durability: Durability) -> Result<(Vec<WriteResult>, Vec<WriteResult>), StoreError> {
        let mut all = docs;
        for doc in new {
            all.push(doc.into_doc()?);
        }
        let n = all.len();
        for record in records {
            all.push(record.into_doc()?);
        }
        let mut results = self.bulk_write_and_put_local(all, local, durability)?;
        let records = results.split_off(n.min(results.len()));
        Ok((results, records))
    }

    /// Makes every write this store has returned from durable, [`Durability::Deferred`] ones
    /// included: what a command that wrote deferred calls before it says it is done.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Turns the live documents whose ids start with `prefix` into records (see
    /// [`Store::bulk_write_with_records`]) with the same ids, revisions and bodies, and drops
    /// the documents: for bookkeeping an earlier version kept as documents. Returns how many
    /// documents went; nothing to do where records are documents.
    fn move_to_records(&self, _prefix: &str) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// The records (see [`Store::bulk_write_with_records`]) with these ids, `None` where there
    /// is none.
    fn get_records(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.get_many(ids)
    }

    /// Up to `limit` records whose id starts with `prefix` and sorts after `after`, in id
    /// order; `None` from a store whose records are ordinary documents (read them from the
    /// changes feed).
    fn records_after(&self, _prefix: &str, _after: Option<&str>, _limit: usize) -> Result<Option<Vec<Doc>>, StoreError> {
        Ok(None)
    }

    /// Live documents of schema `schema_id` (their `rd_schema_id`), optionally only those whose
    /// top-level `field` equals `value` — or, with `field` written `name[]`, whose array `name`
    /// contains `value` — at most `limit`. Values over 512 bytes of JSON are not indexed.
    /// The embedded store answers from indexes it builds on first use of a field; CouchDB from a
    /// view.
    fn find(&self, schema_id: &str, field: Option<(&str, &Value)>, limit: usize) -> Result<Vec<Doc>, StoreError>;

    /// Readies the index [`Store::find`] uses for `field` of `schema_id`. A store that builds
    /// indexes on first use builds this one now — while the schema may still have few
    /// documents, so that later writes keep it up to date instead of the first lookup reading
    /// every document of the schema. A store that indexes every field does nothing.
    fn index_field(&self, _schema_id: &str, _field: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`Store::get_many`], keeping of each document only `rd_key` and `fields`: a caller that
    /// wants a few fields of many documents (a summary reading message bodies) then does not
    /// pay for the rest. Stores that can skip the other fields while reading do.
    fn get_many_fields(&self, ids: &[String], fields: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        Ok(self.get_many(ids)?.into_iter().map(|d| d.map(|d| project(d, fields))).collect())
    }

    /// [`Store::find`], keeping of each document only `rd_key` and `fields`.
    fn find_fields(&self, schema_id: &str, field: Option<(&str, &Value)>, limit: usize, fields: &[String]) -> Result<Vec<Doc>, StoreError> {
        Ok(self.find(schema_id, field, limit)?.into_iter().map(|d| project(d, fields)).collect())
    }

    /// [`Store::find`] (or, with `fields`, [`Store::find_fields`]) by one field for each of
    /// `values`: one list per value, in order, of at most `limit` documents each. One call
    /// instead of one per value (the attachments of every message of a page); stores that can
    /// answer them together do.
    fn find_each(&self, schema_id: &str, field: &str, values: &[Value], limit: usize, fields: Option<&[String]>) -> Result<Vec<Vec<Doc>>, StoreError> {
        values
            .iter()
            .map(|v| match fields {
                Some(fields) => self.find_fields(schema_id, Some((field, v)), limit, fields),
                None => self.find(schema_id, Some((field, v)), limit),
            })
            .collect()
    }

    /// [`Store::get_many_fields`] with each document as JSON text, for a caller that hands them
    /// on as text (to JS). A store that keeps documents as text copies the fields' text instead
    /// of parsing and printing them.
    fn get_many_fields_text(&self, ids: &[String], fields: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        Ok(self.get_many_fields(ids, fields)?.into_iter().map(|d| d.map(|d| Value::Object(d).to_string())).collect())
    }

    /// [`Store::find_each`] with `fields`, each document as JSON text (see
    /// [`Store::get_many_fields_text`]).
    fn find_each_fields_text(&self, schema_id: &str, field: &str, values: &[Value], limit: usize, fields: &[String]) -> Result<Vec<Vec<String>>, StoreError> {
        Ok(self
            .find_each(schema_id, field, values, limit, Some(fields))?
            .into_iter()
            .map(|docs| docs.into_iter().map(|d| Value::Object(d).to_string()).collect())
            .collect())
    }

    /// [`Store::changes`] with every document as its JSON text (`_id`, `_rev`, attachment stubs
    /// and `_deleted` included), not parsed: the pipeline hands most documents to JS as they
    /// are, and parsing them into values only to print them again was most of its reading.
    fn changes_text(&self, since: &Seq, limit: usize) -> Result<ChangesPage<std::sync::Arc<str>>, StoreError> {
        let page = self.changes(since, limit, true)?;
        Ok(page.map_docs(|d| std::sync::Arc::from(serde_json::to_string(&d).unwrap_or_else(|_| "{}".into()))))
    }

    /// Changes after `since`, at most `limit`, oldest first, without waiting.
    fn changes(&self, since: &Seq, limit: usize, include_docs: bool) -> Result<ChangesPage, StoreError>;

    /// Like [`Store::changes`], but when there is nothing after `since`, waits up to `timeout`
    /// for a change.
    fn wait_changes(&self, since: &Seq, limit: usize, include_docs: bool, timeout: Duration)
        -> Result<ChangesPage, StoreError>;

    /// Adds or replaces attachment `name` on revision `rev` of `id`; returns the new revision.
    fn put_attachment(&self, id: &str, rev: &str, name: &str, content_type: &str, data: &[u8])
        -> Result<String, StoreError>;

    fn get_attachment(&self, id: &str, name: &str) -> Result<Option<Attachment>, StoreError>;

    /// A checkpoint document: never in the changes feed, never replicated.
    fn get_local(&self, id: &str) -> Result<Option<Value>, StoreError>;

    /// Writes a checkpoint document (last write wins).
    fn put_local(&self, id: &str, body: &Value) -> Result<(), StoreError>;

    /// Deletes the whole database.
    fn destroy(&self) -> Result<(), StoreError>;
}

/// What went wrong talking to a store. Messages never include a password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database at {location} is unreachable: {reason}")]
    Unavailable { location: String, reason: String },
    #[error("the database at {location} refused the credentials{user}", user = .user.as_deref().map(|u| format!(" for user {u}")).unwrap_or_default())]
    Unauthorized { location: String, user: Option<String> },
    #[error("the database at {location} gave an answer Raindrop cannot read: {reason}")]
    Protocol { location: String, reason: String },
    #[error("document {id} has an update conflict")]
    Conflict { id: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the embedded store at {path} failed: {reason}")]
    Embedded { path: String, reason: String },
}

/// Makes an id for a document written without one.
pub fn new_doc_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
