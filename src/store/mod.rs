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
mod megaview;
pub mod rev;
mod spec;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub use megaview::{collate, MegaKey, ViewQuery, ViewRow};
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

/// One entry of the changes feed: the document's latest revision, its document as JSON text
/// when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<D = Arc<str>> {
    pub seq: Seq,
    pub id: String,
    pub rev: String,
    pub deleted: bool,
    /// The document, when asked for (`None` for a tombstone's body on some servers).
    pub doc: Option<D>,
}

/// A page of the changes feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesPage<D = Arc<str>> {
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
    Ok {
        id: String,
        rev: String,
    },
    /// The document changed since the `_rev` given (or exists when none was given).
    Conflict {
        id: String,
    },
    /// Rejected for another reason (bad id, forbidden, …).
    Error {
        id: String,
        reason: String,
    },
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

/// A document's attachments by full name.
pub type Attachments = Vec<(String, Attachment)>;

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

/// A record to write (see [`Store::get_records`]): a document, or one its writer
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
    let mut doc: Doc =
        serde_json::from_str(body).map_err(|e| StoreError::BadRequest(format!("the text of {what} {id} is not a JSON object: {e}")))?;
    doc.insert("_id".into(), Value::String(id));
    if let Some(rev) = rev {
        doc.insert("_rev".into(), Value::String(rev));
    }
    Ok(doc)
}

/// `doc` cut down to `rd_key` and `fields` (see [`Store::get_many`]).
pub fn project(mut doc: Doc, fields: &[String]) -> Doc {
    doc.retain(|k, _| k == "rd_key" || fields.iter().any(|f| f == k));
    doc
}

/// How soon a write must survive a power cut. A crash of the process loses no committed write
/// either way; this is about the operating system's buffers reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Before the call returns: what a user, an import or a sync is told is kept, is.
    #[default]
    Immediate,
    /// Soon after (with the next durable write or the store's next copy of its log), for a
    /// write that can be made again from what is already durable: a page of the pipeline's
    /// derived documents carries its checkpoint in the same write, so a power cut takes back
    /// the page and its checkpoint together and the pipeline derives the page again. Waiting
    /// for the disk at each page was ~3% of the mail benchmark's time (one `fsync` per page).
    Deferred,
}

/// What a [`Store::find`] looks for: documents of one schema, all of them or those whose
/// top-level `field` equals one of `values` — or, with `field` written `name[]`, whose array
/// `name` contains it (values over 512 bytes of JSON are not indexed) — at most `limit` per
/// value, whole or cut down to `rd_key` and `fields`.
#[derive(Debug, Clone, Copy)]
pub struct Find<'a> {
    pub schema: &'a str,
    /// `None`: every document of the schema (one list in the answer).
    pub by: Option<(&'a str, &'a [Value])>,
    pub limit: usize,
    pub fields: Option<&'a [String]>,
}

/// One write: documents (and new documents as text), then records, then a checkpoint, with one
/// durability. The embedded store makes it one transaction.
#[derive(Debug, Default)]
pub struct WriteBatch<'a> {
    pub docs: Vec<Doc>,
    /// New documents given as their stored text, written after `docs`.
    pub new_docs: Vec<NewDoc>,
    /// Bookkeeping records, written after the documents (see [`Store::get_records`]).
    pub records: Vec<Record>,
    /// A checkpoint document written last: `(id, body)`, as [`Store::put_local`].
    pub checkpoint: Option<(&'a str, &'a Value)>,
    pub durability: Durability,
}

impl WriteBatch<'_> {
    /// Documents alone, durable when the write returns.
    pub fn docs(docs: Vec<Doc>) -> WriteBatch<'static> {
        WriteBatch { docs, ..WriteBatch::default() }
    }
}

/// The results of a [`WriteBatch`]: one per document (`docs` then `new_docs`) and one per
/// record, in order.
#[derive(Debug, Default)]
pub struct Written {
    pub docs: Vec<WriteResult>,
    pub records: Vec<WriteResult>,
}

/// What every backend does, fully: each method has one meaning on both, and how a backend makes
/// it fast (SQL over stored text, one HTTP request for many keys) is its own business.
/// Implementations are `Send + Sync`: one store is shared by threads.
///
/// Documents are read as their JSON text (the pipeline hands most of them to JS as they are);
/// the methods of `dyn Store` (`get_docs`, `find_docs`, `bulk_write`) parse or wrap for the
/// callers that want values.
pub trait Store: Send + Sync {
    fn info(&self) -> Result<DbInfo, StoreError>;

    /// The current revision of `id`, or `None` if it does not exist or is deleted.
    /// With `attachments`, attachment bodies are inlined as base64 `data`; otherwise stubs.
    fn get(&self, id: &str, attachments: bool) -> Result<Option<Doc>, StoreError>;

    /// Several documents by id, in the order asked, as JSON text; `None` for missing or deleted
    /// ones. With `fields`, each is cut down to `rd_key` and those fields (a summary reading many
    /// bodies' few fields then does not pay for the rest; `_rev` among them keeps the revision);
    /// otherwise whole, with `_id`, `_rev` and attachment stubs.
    fn get_many(&self, ids: &[String], fields: Option<&[String]>) -> Result<Vec<Option<String>>, StoreError>;

    /// The documents a [`Find`] looks for, as JSON text: one list per value asked for, in order
    /// (one list when it asks by no field). The embedded store answers from indexes it builds on
    /// first use of a field; CouchDB from a view.
    fn find(&self, find: &Find<'_>) -> Result<Vec<Vec<String>>, StoreError>;

    /// Readies the index [`Store::find`] uses for `field` of `schema_id`. A store that builds
    /// indexes on first use builds this one now — while the schema may still have few
    /// documents, so that later writes keep it up to date instead of the first lookup reading
    /// every document of the schema. A store that indexes every field does nothing.
    fn index_field(&self, schema_id: &str, field: &str) -> Result<(), StoreError>;

    /// Changes after `since`, at most `limit`, oldest first, without waiting; with `docs`, each
    /// document as its JSON text (`_id`, `_rev`, attachment stubs and `_deleted` included).
    fn changes(&self, since: &Seq, limit: usize, docs: bool) -> Result<ChangesPage<Arc<str>>, StoreError>;

    /// Waits up to `timeout` for a change after `since`; whether there is one.
    fn wait_changes(&self, since: &Seq, timeout: Duration) -> Result<bool, StoreError>;

    /// Writes a [`WriteBatch`]: each document a new one without `_rev`, an update with the
    /// current `_rev`, a delete with `_deleted: true`; inline attachments
    /// (`_attachments.{name}.data` in base64) are stored, stubs keep the existing ones.
    fn write(&self, batch: WriteBatch<'_>) -> Result<Written, StoreError>;

    /// Makes every write this store has returned from durable, [`Durability::Deferred`] ones
    /// included: what a command that wrote deferred calls before it says it is done.
    fn sync(&self) -> Result<(), StoreError>;

    /// The records with these ids, `None` where there is none. Records are bookkeeping (the
    /// pipeline's state per source, its queues, its dependency index): written with revisions
    /// like documents, but a store may keep them apart — out of the changes feed, with no
    /// sequence numbers or indexes, as the embedded store does; on CouchDB they are documents.
    fn get_records(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError>;

    /// Up to `limit` records whose id starts with `prefix` and sorts after `after`, in id order.
    fn records_after(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Doc>, StoreError>;

    /// Turns the live documents whose ids start with `prefix` into records with the same ids,
    /// revisions and bodies: for bookkeeping an earlier version kept as documents. Returns how
    /// many documents went (none where records are documents).
    fn move_to_records(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Adds or replaces attachment `name` on revision `rev` of `id`; returns the new revision.
    fn put_attachment(&self, id: &str, rev: &str, name: &str, attachment: &Attachment) -> Result<String, StoreError>;

    fn get_attachment(&self, id: &str, name: &str) -> Result<Option<Attachment>, StoreError>;

    /// Every attachment of each of `ids`, by full name, in the order asked (`None`: no such
    /// document): a batch's raw mail in one request on CouchDB, not one per message.
    fn get_attachments_of(&self, ids: &[String]) -> Result<Vec<Option<Attachments>>, StoreError>;

    /// A checkpoint document: never in the changes feed, never replicated.
    fn get_local(&self, id: &str) -> Result<Option<Value>, StoreError>;

    /// Writes a checkpoint document (last write wins).
    fn put_local(&self, id: &str, body: &Value) -> Result<(), StoreError>;

    /// Deletes a checkpoint document no run will read again (none there: nothing to do).
    fn delete_local(&self, id: &str) -> Result<(), StoreError>;

    /// The rows of one megaview key (see [`MegaKey`]).
    fn megaview(&self, query: &ViewQuery) -> Result<Vec<ViewRow>, StoreError>;
    /// How many rows the megaview has for `key`, without reading them (a group's unread
    /// conversations): CouchDB reduces the view with `_count`, the embedded store counts the
    /// field index's entries.
    fn megaview_count(&self, key: &MegaKey) -> Result<u64, StoreError>;

    /// Deletes the whole database.
    fn destroy(&self) -> Result<(), StoreError>;
}

impl dyn Store + '_ {
    /// [`Store::get_many`] of whole documents, parsed.
    pub fn get_docs(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.get_many(ids, None)?.into_iter().map(|text| text.map(|t| parse_doc(&t)).transpose()).collect()
    }

    /// [`Store::find`] of one schema's documents, optionally by one field's value, parsed.
    pub fn find_docs(&self, schema: &str, field: Option<(&str, &Value)>, limit: usize) -> Result<Vec<Doc>, StoreError> {
        let values;
        let by = match field {
            Some((name, value)) => {
                values = [value.clone()];
                Some((name, &values[..]))
            }
            None => None,
        };
        let found = self.find(&Find { schema, by, limit, fields: None })?;
        found.into_iter().flatten().map(|t| parse_doc(&t)).collect()
    }

    /// [`Store::write`] of documents alone, durable when it returns.
    pub fn bulk_write(&self, docs: Vec<Doc>) -> Result<Vec<WriteResult>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.write(WriteBatch::docs(docs))?.docs)
    }
}

/// A document's JSON text as members.
pub fn parse_doc(text: &str) -> Result<Doc, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::BadRequest(format!("a stored document is not a JSON object: {e}")))
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
