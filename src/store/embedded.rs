//! The embedded store: one SQLite file (WAL mode), the default when no CouchDB is configured.
//!
//! Why SQLite rather than redb: its write-ahead log gives crash-safe commits with concurrent
//! readers and one writer out of the box, the file can be inspected with standard tools, and the
//! indexes the work queue needs later (by schema, by key) are plain SQL. The `bundled` feature
//! compiles it in, so there is nothing to install.
//!
//! Layout: `docs` holds the latest revision of each document, keyed by its sequence number (so a
//! changes read is a range scan and an update moves the document to the end of the feed);
//! tombstones stay there as `deleted = 1`. `attachments` holds bodies by (document, name);
//! `local` holds checkpoint documents, which never enter the feed; `records` holds bookkeeping
//! records (no sequence, no feed row).
//!
//! `attachments` and `records` are rowid tables with a unique index, not `WITHOUT ROWID` tables
//! keyed by their text ids: rows then land in insertion order (a write appends to the last
//! pages) and only the small index entries land at random. Keyed by id, each commit of the mail
//! run rewrote pages all over the state records (their ids are base64 digests, so random), and a
//! mail attachment of a few KiB, larger than a `WITHOUT ROWID` row keeps in its page, spilled
//! into a mostly empty overflow page: 1.45 GB written for a 0.5 GB file, against 1.07 GB for
//! 0.44 GB now (and ~12% more messages/s). A database made before keeps its tables; every
//! statement works on both layouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::{rev, Attachment, Durability, NewDoc, Record, Change, ChangesPage, DbInfo, Doc, Seq, Store, StoreError, WriteResult};

const PUT_LOCAL: &str = "INSERT INTO local (id, body) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET body = excluded.body";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    seq     INTEGER PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    rev     TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    has_att INTEGER NOT NULL,
    body    TEXT NOT NULL,
    schema  TEXT
);
CREATE TABLE IF NOT EXISTS attachments (
    doc_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    length       INTEGER NOT NULL,
    digest       TEXT NOT NULL,
    revpos       INTEGER NOT NULL,
    data         BLOB NOT NULL,
    UNIQUE (doc_id, name)
);
CREATE TABLE IF NOT EXISTS local (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indexed_fields (
    schema TEXT NOT NULL,
    field  TEXT NOT NULL,
    PRIMARY KEY (schema, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS field_index (
    schema TEXT NOT NULL,
    field  TEXT NOT NULL,
    value  TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (schema, field, value, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS field_index_by_id ON field_index (id);
CREATE TABLE IF NOT EXISTS records (
    id   TEXT NOT NULL UNIQUE,
    rev  TEXT NOT NULL,
    body TEXT NOT NULL
);
";

/// The live documents of a schema whose indexed field has a value: (id, rev, has_att, body).
const FIND_BY_FIELD: &str = "SELECT d.id, d.rev, d.has_att, d.body FROM field_index f JOIN docs d ON d.id = f.id
     WHERE f.schema = ?1 AND f.field = ?2 AND f.value = ?3 AND d.deleted = 0
     ORDER BY d.seq LIMIT ?4";

/// Values longer than this (as JSON) are not indexed, as in the CouchDB view.
const MAX_INDEXED_VALUE: usize = 512;

/// An embedded database in one file.
pub struct EmbeddedStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// The last committed sequence, for waking waiting changes readers.
    committed: Mutex<i64>,
    wake: Condvar,
    /// The fields `find` has been asked about, per schema: each gets an index on first use
    /// (like a CouchDB view), kept up to date by every write after that.
    indexed: Mutex<HashMap<String, Vec<String>>>,
    checkpointer: Checkpointer,
}

/// Copies the write-ahead log into the database file on a thread of its own. SQLite would do
/// it inside whichever commit crosses 1,000 log pages, stalling the pipeline's writer (~5% of
/// a chain benchmark); here the writer only says it committed.
struct Checkpointer {
    /// (commits since the last checkpoint, stop) and its wake-up.
    state: Arc<(Mutex<(u64, bool)>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = connect(path)?;
        let state = Arc::new((Mutex::new((0u64, false)), Condvar::new()));
        let shared = state.clone();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || loop {
                let (lock, wake) = &*shared;
                let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                while guard.0 == 0 && !guard.1 {
                    guard = wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                if guard.1 {
                    return;
                }
                drop(guard);
                // Let a burst of commits gather, then copy them at once.
                std::thread::sleep(Duration::from_millis(100));
                lock.lock().unwrap_or_else(|p| p.into_inner()).0 = 0;
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!("checkpointing the log of {} failed (retried after the next commit): {e}", path.display());
                }
            })
            .map_err(|e| StoreError::Embedded { path: String::new(), reason: format!("cannot start the checkpoint thread: {e}") })?;
        Ok(Checkpointer { state, thread: Some(thread) })
    }

    fn committed(&self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
        wake.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens the database at `path`, creating it (and its folder) if needed.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
        }
        refuse_foreign(path)?;
        let writer = set_up(path)?;
        let last: i64 = writer
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM docs", [], |r| r.get(0))
            .map_err(|e| err(path, e))?;
        let indexed = indexed_fields(&writer).map_err(|e| err(path, e))?;
        Ok(EmbeddedStore {
            checkpointer: Checkpointer::start(path)?,
            indexed: Mutex::new(indexed),
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            committed: Mutex::new(last),
            wake: Condvar::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn e(&self, e: impl std::fmt::Display) -> StoreError {
        err(&self.path, e)
    }

    /// Runs `f` on a reader connection (WAL: readers do not block the writer or each other).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        // One read transaction for the whole closure: one snapshot (a `get_many` sees one state
        // of the database) and one lock and WAL check instead of one per statement. BEGIN and
        // COMMIT are cached statements: rusqlite's `Transaction` parses them anew each time,
        // which showed in profiles of the many small reads extensions make.
        let result = conn
            .prepare_cached("BEGIN")
            .and_then(|mut begin| begin.execute([]))
            .and_then(|_| {
                let value = f(&conn);
                let end = if value.is_ok() { "COMMIT" } else { "ROLLBACK" };
                if let Err(e) = conn.prepare_cached(end).and_then(|mut s| s.execute([])) {
                    // Never hand the connection back inside a transaction.
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
                value
            })
            .map_err(|e| self.e(e));
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        result
    }

    fn last_seq(&self) -> i64 {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure `field` of `schema` is indexed: the first time, records it and indexes every
    /// live document of the schema (under the writer lock, so no write slips past).
    fn ensure_index(&self, schema: &str, field: &str) -> Result<(), StoreError> {
        if self.indexed.lock().unwrap_or_else(|p| p.into_inner()).get(schema).is_some_and(|f| f.iter().any(|x| x == field)) {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Builders take turns on the writer lock; finds on other fields go on meanwhile.
        if self.indexed.lock().unwrap_or_else(|p| p.into_inner()).get(schema).is_some_and(|f| f.iter().any(|x| x == field)) {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.e(e))?;
        tx.execute("INSERT OR IGNORE INTO indexed_fields (schema, field) VALUES (?1, ?2)", params![schema, field]).map_err(|e| self.e(e))?;
        let docs: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT id, body FROM docs WHERE schema = ?1 AND deleted = 0").map_err(|e| self.e(e))?;
            let rows = stmt.query_map([schema], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.e(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))?
        };
        let fields = [field.to_string()];
        let n = docs.len();
        for (id, body) in docs {
            for (f, value) in index_entries_of_text(&body, &fields) {
                tx.prepare_cached("INSERT OR IGNORE INTO field_index (schema, field, value, id) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut st| st.execute(params![schema, f, value, id]))
                    .map_err(|e| self.e(e))?;
            }
        }
        tx.commit().map_err(|e| self.e(e))?;
        self.indexed.lock().unwrap_or_else(|p| p.into_inner()).entry(schema.to_string()).or_default().push(field.to_string());
        crate::timing::record("S:index", t0, n);
        Ok(())
    }
}

/// [`index_entries`] of a stored body, parsing only the indexed members.
fn index_entries_of_text(body: &str, fields: &[String]) -> Vec<(String, String)> {
    let wanted: Vec<String> = fields.iter().map(|f| f.strip_suffix("[]").unwrap_or(f).to_string()).collect();
    index_entries(&projected(body, &wanted), fields)
}

/// The index rows of a document for the indexed `fields`: `(field, value as JSON)`. A field
/// named `name[]` indexes each element of the array `name`.
fn index_entries(doc: &Doc, fields: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for field in fields {
        let (name, elements) = match field.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (field.as_str(), false),
        };
        match (doc.get(name), elements) {
            (Some(Value::Array(items)), true) => {
                for item in items {
                    let text = item.to_string();
                    if text.len() <= MAX_INDEXED_VALUE && !out.iter().any(|(f, v)| f == field && *v == text) {
                        out.push((field.clone(), text));
                    }
                }
            }
            (Some(value), false) => {
                let text = value.to_string();
                if text.len() <= MAX_INDEXED_VALUE {
                    out.push((field.clone(), text));
                }
            }
            _ => {}
        }
    }
    out
}

/// The indexed fields by schema, as the database records them.
fn indexed_fields(conn: &Connection) -> rusqlite::Result<HashMap<String, Vec<String>>> {
    let mut indexed: HashMap<String, Vec<String>> = HashMap::new();
    let mut stmt = conn.prepare_cached("SELECT schema, field FROM indexed_fields")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (schema, field) = row?;
        indexed.entry(schema).or_default().push(field);
    }
    Ok(indexed)
}

/// Brings a database made by an earlier version up to date: the `schema` column (each
/// document's `rd_schema_id`, indexed for `find`) was added after the first release.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_schema: bool = conn.query_row("SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = 'schema'", [], |r| r.get::<_, i64>(0))? > 0;
    if !has_schema {
        conn.execute_batch(
            "ALTER TABLE docs ADD COLUMN schema TEXT;
             UPDATE docs SET schema = json_extract(body, '$.rd_schema_id') WHERE deleted = 0;",
        )?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS docs_by_schema ON docs (schema) WHERE schema IS NOT NULL;")
}

fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded { path: path.display().to_string(), reason: e.to_string() }
}

/// Refuses a file that is not a Raindrop database, before anything writes to it: a mistyped
/// `--db` pointing at another program's SQLite file would otherwise get tables added, a
/// column added to a `docs` table of its own, and its journal switched to a write-ahead log.
/// A missing or empty file, or an SQLite database without tables, is a new store.
fn refuse_foreign(path: &Path) -> Result<(), StoreError> {
    let refuse = |why: String| Err(StoreError::Embedded { path: path.display().to_string(), reason: format!("{why}; refusing to use it as a Raindrop database (nothing was changed)") });
    let mut head = [0u8; 16];
    let n = match std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e)),
    };
    if n == 0 {
        return Ok(());
    }
    if n < head.len() || &head != b"SQLite format 3\0" {
        return refuse("the file is not an SQLite database".into());
    }
    let Ok(conn) = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX) else {
        // Not readable as it is (a log to recover, say): the full open below reports it.
        return Ok(());
    };
    let tables: Vec<String> = match conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").and_then(|mut st| {
        st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()
    }) {
        Ok(t) => t,
        Err(e) => return refuse(format!("its tables cannot be read ({e})")),
    };
    if tables.is_empty() {
        return Ok(());
    }
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('docs')")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>())
        .unwrap_or_default();
    let ours = ["seq", "id", "rev", "deleted", "has_att", "body"].iter().all(|c| columns.iter().any(|have| have == c))
        && tables.iter().any(|t| t == "local");
    if ours {
        Ok(())
    } else {
        refuse(format!("it is an SQLite database of another program (its tables: {})", tables.join(", ")))
    }
}

/// The writer's connection, with the tables made or brought up to date. Two processes opening
/// a new file at once (`raindrop import` and `raindrop run`) race to make it, and turning a new
/// file's journal into a write-ahead log answers "busy" at once instead of waiting: the loser
/// tries again (for up to the busy timeout) rather than failing.
fn set_up(path: &Path) -> Result<Connection, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = open_connection(path).and_then(|c| {
            c.execute_batch(SCHEMA)?;
            migrate(&c)?;
            Ok(c)
        });
        match attempt {
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(|e| err(path, e)),
        }
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    open_connection(path).map_err(|e| err(path, e))
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL + synchronous=FULL: every commit is durable once it returns (but for a
    // `Durability::Deferred` write, see `write_all`), readers run beside the writer, and a crash
    // leaves the last committed state. The log is copied into the database
    // by the `Checkpointer`, not by the commits. Reads of the database file go through a memory
    // map (up to 1 GiB) instead of a `pread` per page: the mail run's attachment and feed reads
    // were mostly system calls. The price: a disk I/O error while reading ends the process
    // (SIGBUS) instead of returning an error — a crash, after which a run resumes from its
    // last checkpoint like after any other. Pages of 16 KiB (for a new database; an existing
    // one keeps its size): a message body or mail attachment spans a few pages instead of a
    // chain of many 4 KiB overflow pages, which made commits ~10% of the mail run's CPU
    // (8 KiB measured in between, 32 KiB the same as 16; the store benchmark did not change).
    conn.execute_batch(
        "PRAGMA busy_timeout=10000; PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-32768; PRAGMA mmap_size=1073741824;",
    )?;
    // Room for every statement the store uses (rusqlite keeps 16 by default): an evicted one
    // is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(64);
    // One query plan per statement, whatever the bound values: without it SQLite re-parsed
    // and re-planned the field-index query at every run (its plan depended on the values),
    // which profiles of the mail run showed as ~4% of all CPU.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

fn parse_seq(seq: &Seq) -> Result<i64, StoreError> {
    if seq.is_zero() {
        return Ok(0);
    }
    seq.as_str()
        .parse()
        .map_err(|_| StoreError::BadRequest(format!("{seq:?} is not a sequence of this database")))
}

/// Builds a document from its stored row.
fn assemble(
    conn: &Connection,
    id: &str,
    rev: &str,
    deleted: bool,
    has_att: bool,
    body: &str,
    attachments: bool,
) -> rusqlite::Result<Doc> {
    let mut doc = Map::new();
    doc.insert("_id".into(), Value::String(id.to_string()));
    doc.insert("_rev".into(), Value::String(rev.to_string()));
    if deleted {
        doc.insert("_deleted".into(), Value::Bool(true));
    }
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(body) {
        doc.extend(fields);
    }
    if has_att {
        let mut stmt = conn.prepare_cached(
            "SELECT name, content_type, length, digest, revpos, CASE WHEN ?2 THEN data ELSE NULL END
             FROM attachments WHERE doc_id = ?1 ORDER BY name",
        )?;
        let mut atts = Map::new();
        let rows = stmt.query_map(params![id, attachments], |r| {
            let name: String = r.get(0)?;
            let mut a = Map::new();
            a.insert("content_type".into(), Value::String(r.get(1)?));
            a.insert("length".into(), Value::from(r.get::<_, i64>(2)?));
            a.insert("digest".into(), Value::String(r.get(3)?));
            a.insert("revpos".into(), Value::from(r.get::<_, i64>(4)?));
            match r.get::<_, Option<Vec<u8>>>(5)? {
                Some(data) => {
                    a.insert("data".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(data)));
                }
                None => {
                    a.insert("stub".into(), Value::Bool(true));
                }
            }
            Ok((name, Value::Object(a)))
        })?;
        for row in rows {
            let (name, a) = row?;
            atts.insert(name, a);
        }
        doc.insert("_attachments".into(), Value::Object(atts));
    }
    Ok(doc)
}

/// `rd_key` and `fields` of a stored body, the other fields skipped rather than built.
fn projected(body: &str, fields: &[String]) -> Doc {
    let mut doc = Map::new();
    if let Ok(raw) = serde_json::from_str::<std::collections::HashMap<String, &serde_json::value::RawValue>>(body) {
        for name in fields.iter().map(String::as_str).chain(["rd_key"]) {
            if let Some(value) = raw.get(name).and_then(|r| serde_json::from_str::<Value>(r.get()).ok()) {
                doc.insert(name.to_string(), value);
            }
        }
    }
    doc
}

/// [`projected`] as JSON text: the members' text is copied, not parsed and printed again. A
/// body whose member names have escapes (never the model's) takes the parsing way.
fn projected_text(body: &str, fields: &[String]) -> String {
    match crate::json_text::members(body) {
        Some(members) => crate::json_text::pick(body, &members, fields.iter().map(String::as_str).chain(["rd_key"])),
        None => Value::Object(projected(body, fields)).to_string(),
    }
}

/// Checks an id the way CouchDB does: non-empty, and `_` only for design documents.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a document id cannot be empty".into());
    }
    if id.starts_with('_') && !id.starts_with("_design/") {
        return Err(format!("only design documents may have ids starting with '_': {id}"));
    }
    Ok(())
}

/// One document of a bulk write, checked and split into what is stored.
struct Incoming {
    id: String,
    rev: Option<String>,
    deleted: bool,
    body: String,
    /// Its `rd_schema_id`, if it is a live document with one.
    schema: Option<String>,
    /// `None`: the document has no `_attachments` member (all existing ones are dropped).
    attachments: Option<Vec<IncomingAttachment>>,
    /// Its rows of the field index, for the fields indexed when it was split (see
    /// `EmbeddedStore::write_all`).
    index: Vec<(String, String)>,
    /// Its next revision when it has no attachments (the common one-statement write).
    plain_rev: Option<String>,
}

/// One member of a document's `_attachments`: new data (decoded, with its digest, or why it
/// could not be), or a stub that keeps what is stored under `name`.
struct IncomingAttachment {
    name: String,
    content_type: String,
    data: Option<Result<(Vec<u8>, String), String>>,
}

impl IncomingAttachment {
    fn read(name: String, att: &Value) -> IncomingAttachment {
        let content_type = att.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream").to_string();
        let data = att.get("data").and_then(Value::as_str).map(|b64| match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(data) => {
                let digest = format!("fnv128-{}", crate::digest::digest(&[&data]));
                Ok((data, digest))
            }
            Err(e) => Err(format!("attachment {name} is not base64: {e}")),
        });
        IncomingAttachment { name, content_type, data }
    }
}

/// Checks `doc` and splits it into what is stored; `indexed` gives the indexed fields per
/// schema. The parsed document is dropped here: only its text and index rows are kept.
fn split_incoming(mut doc: Doc, indexed: &HashMap<String, Vec<String>>) -> Result<Incoming, (String, String)> {
    let id = match doc.remove("_id") {
        Some(Value::String(s)) => s,
        None => super::new_doc_id(),
        Some(other) => return Err((other.to_string(), "_id must be a string".into())),
    };
    check_id(&id).map_err(|e| (id.clone(), e))?;
    let rev = match doc.remove("_rev") {
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => None,
        Some(_) => return Err((id, "_rev must be a string".into())),
    };
    let deleted = matches!(doc.remove("_deleted"), Some(Value::Bool(true)));
    // Decoded here, beside the other documents of the write, not under the writer lock.
    let attachments = match doc.remove("_attachments") {
        Some(Value::Object(m)) => Some(m.into_iter().map(|(name, att)| IncomingAttachment::read(name, &att)).collect()),
        None | Some(Value::Null) => None,
        Some(_) => return Err((id, "_attachments must be an object".into())),
    };
    if let Some(bad) = doc.keys().find(|k| k.starts_with('_')) {
        return Err((id.clone(), format!("bad special document member: {bad}")));
    }
    let schema = if deleted { None } else { doc.get("rd_schema_id").and_then(Value::as_str).map(str::to_string) };
    let body = if deleted { "{}".to_string() } else { serde_json::to_string(&doc).unwrap_or_default() };
    let index = match schema.as_ref().and_then(|s| indexed.get(s)) {
        Some(fields) if !deleted => index_entries(&doc, fields),
        _ => Vec::new(),
    };
    let plain_rev = attachments.is_none().then(|| rev::next(rev.as_deref(), deleted, body.as_bytes(), &[]));
    Ok(Incoming { id, rev, deleted, body, schema, attachments, index, plain_rev })
}


/// Column `i` of a row, a document's body, borrowed from SQLite rather than copied out.
fn body_text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(i)?.as_str().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

/// A document to write as members or as the text of a new one, or a record.
enum ToWrite {
    Doc(Doc),
    New(NewDoc),
    Record(Record),
}

/// [`split_incoming`] for a new document's text: nothing to take apart or print.
fn new_incoming(doc: NewDoc, indexed: &HashMap<String, Vec<String>>) -> Result<Incoming, (String, String)> {
    check_id(&doc.id).map_err(|e| (doc.id.clone(), e))?;
    let index = indexed.get(&doc.schema).map(|fields| index_entries_of_text(&doc.body, fields)).unwrap_or_default();
    let plain_rev = Some(rev::next(None, false, doc.body.as_bytes(), &[]));
    Ok(Incoming { id: doc.id, rev: None, deleted: false, body: doc.body, schema: Some(doc.schema), attachments: None, index, plain_rev })
}

/// [`split_incoming`] for a record's text (no schema, index rows or attachments).
fn text_incoming(id: String, rev: Option<String>, body: String) -> Result<Incoming, (String, String)> {
    check_id(&id).map_err(|e| (id.clone(), e))?;
    let plain_rev = Some(rev::next(rev.as_deref(), false, body.as_bytes(), &[]));
    Ok(Incoming { id, rev, deleted: false, body, schema: None, attachments: None, index: Vec::new(), plain_rev })
}

/// One row of the changes feed as stored.
struct ChangeRow {
    id: String,
    rev: String,
    deleted: bool,
    has_att: bool,
    body: Option<String>,
}

impl EmbeddedStore {
    /// A page of the changes feed, each document made by `doc` from its row.
    fn change_rows<D>(&self, since: &Seq, limit: usize, with_body: bool, doc: impl Fn(&Connection, &ChangeRow) -> rusqlite::Result<Option<D>>) -> Result<ChangesPage<D>, StoreError> {
        let since_n = parse_seq(since)?;
        let limit = limit.clamp(1, i64::MAX as usize) as i64;
        let changes = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, id, rev, deleted, has_att, CASE WHEN ?3 THEN body ELSE NULL END
                 FROM docs WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![since_n, limit, with_body], |r| {
                Ok((r.get::<_, i64>(0)?, ChangeRow { id: r.get(1)?, rev: r.get(2)?, deleted: r.get(3)?, has_att: r.get(4)?, body: r.get(5)? }))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, row) = row?;
                let d = doc(c, &row)?;
                out.push(Change { seq: Seq::from_raw(seq.to_string()), id: row.id, rev: row.rev, deleted: row.deleted, doc: d });
            }
            Ok(out)
        })?;
        let last_seq = changes.last().map(|c| c.seq.clone()).unwrap_or_else(|| since.clone());
        Ok(ChangesPage { changes, last_seq })
    }

    /// `find`, with every document cut down to `fields` (and `rd_key`) when given.
    fn find_with(&self, schema_id: &str, field: Option<(&str, &Value)>, limit: usize, fields: Option<&[String]>) -> Result<Vec<Doc>, StoreError> {
        if let Some((name, _)) = field {
            self.ensure_index(schema_id, name)?;
        }
        self.read(|c| find_on(c, schema_id, field, limit, fields))
    }
}

/// One `find` on connection `c` (the field, if any, already indexed).
fn find_on(c: &Connection, schema_id: &str, field: Option<(&str, &Value)>, limit: usize, fields: Option<&[String]>) -> rusqlite::Result<Vec<Doc>> {
    let limit = limit.clamp(1, i64::MAX as usize) as i64;
    let mut out = Vec::new();
    let mut collect = |rows: &mut rusqlite::Rows<'_>| -> rusqlite::Result<()> {
        while let Some(r) = rows.next()? {
            let (id, rev, has_att, body): (String, String, bool, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            out.push(match fields {
                Some(fields) => projected(&body, fields),
                None => assemble(c, &id, &rev, false, has_att, &body, false)?,
            });
        }
        Ok(())
    };
    match field {
        Some((name, value)) => {
            let mut stmt = c.prepare_cached(FIND_BY_FIELD)?;
            collect(&mut stmt.query(params![schema_id, name, value.to_string(), limit])?)?;
        }
        None => {
            let mut stmt = c.prepare_cached(
                "SELECT id, rev, has_att, body FROM docs WHERE schema = ?1 AND deleted = 0 ORDER BY seq LIMIT ?2",
            )?;
            collect(&mut stmt.query(params![schema_id, limit])?)?;
        }
    }
    Ok(out)
}

impl Store for EmbeddedStore {
    fn info(&self) -> Result<DbInfo, StoreError> {
        let (live, dead): (i64, i64) = self.read(|c| {
            c.query_row("SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0) FROM docs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })?;
        Ok(DbInfo {
            db_name: self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            doc_count: live as u64,
            doc_del_count: dead as u64,
            update_seq: self.last_seq().to_string(),
            backend: "embedded",
            location: self.path.display().to_string(),
        })
    }

    fn get(&self, id: &str, attachments: bool) -> Result<Option<Doc>, StoreError> {
        self.read(|c| {
            let row = c
                .prepare_cached("SELECT rev, has_att, body FROM docs WHERE id = ?1 AND deleted = 0")?
                .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))
                .optional()?;
            row.map(|(rev, has_att, body)| assemble(c, id, &rev, false, has_att, &body, attachments)).transpose()
        })
    }

    fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT rev, has_att, body FROM docs WHERE id = ?1 AND deleted = 0")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = stmt
                    .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))
                    .optional()?;
                out.push(row.map(|(rev, has_att, body)| assemble(c, id, &rev, false, has_att, &body, false)).transpose()?);
            }
            Ok(out)
        })
    }

    fn bulk_write(&self, docs: Vec<Doc>) -> Result<Vec<WriteResult>, StoreError> {
        self.bulk_write_and_put_local(docs, None, Durability::Immediate)
    }

    fn bulk_write_and_put_local(&self, docs: Vec<Doc>, local: Option<(&str, &Value)>, durability: Durability) -> Result<Vec<WriteResult>, StoreError> {
        Ok(self.write_all(docs, Vec::new(), Vec::new(), local, durability)?.0)
    }

    /// Syncs the write-ahead log, where every commit since the last copy into the database
    /// file is (the `Checkpointer` syncs the file after each copy). Under the writer lock, so
    /// after any commit of this process in progress.
    fn sync(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(&wal) {
            Ok(file) => file.sync_all().map_err(|e| self.e(format!("cannot sync {}: {e}", Path::new(&wal).display()))),
            // No log: the last connection copied it into the database file, synced, on closing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.e(format!("cannot open {}: {e}", Path::new(&wal).display()))),
        }
    }

    fn bulk_write_with_records(&self, docs: Vec<Doc>, new: Vec<NewDoc>, records: Vec<Record>, local: Option<(&str, &Value)>, durability: Durability) -> Result<(Vec<WriteResult>, Vec<WriteResult>), StoreError> {
        self.write_all(docs, new, records, local, durability)
    }

    fn move_to_records(&self, prefix: &str) -> Result<u64, StoreError> {
        // Ids with the prefix sort from the prefix up to (not including) the prefix with its
        // last character's successor. Looked for first outside the writer lock: there is
        // nothing to move after the first time.
        let Some(end) = prefix.chars().last().and_then(|c| char::from_u32(c as u32 + 1)).map(|c| format!("{}{c}", &prefix[..prefix.len() - c.len_utf8()])) else {
            return Ok(0);
        };
        let range = "id >= ?1 AND id < ?2";
        let any: bool = self.read(|c| c.query_row(&format!("SELECT EXISTS (SELECT 1 FROM docs WHERE {range})"), params![prefix, end], |r| r.get(0)))?;
        if !any {
            return Ok(0);
        }
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.e(e))?;
        tx.execute(&format!("INSERT INTO records (id, rev, body) SELECT id, rev, body FROM docs WHERE {range} AND deleted = 0 ON CONFLICT (id) DO NOTHING"), params![prefix, end])
            .map_err(|e| self.e(e))?;
        let moved = tx.execute(&format!("DELETE FROM docs WHERE {range}"), params![prefix, end]).map_err(|e| self.e(e))?;
        // Records have neither index rows nor attachments.
        tx.execute(&format!("DELETE FROM field_index WHERE {range}"), params![prefix, end]).map_err(|e| self.e(e))?;
        tx.execute("DELETE FROM attachments WHERE doc_id >= ?1 AND doc_id < ?2", params![prefix, end]).map_err(|e| self.e(e))?;
        tx.commit().map_err(|e| self.e(e))?;
        Ok(moved as u64)
    }

    fn get_records(&self, ids: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT rev, body FROM records WHERE id = ?1")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = stmt.query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).optional()?;
                out.push(row.map(|(rev, body)| assemble(c, id, &rev, false, false, &body, false)).transpose()?);
            }
            Ok(out)
        })
    }

    fn records_after(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Option<Vec<Doc>>, StoreError> {
        let limit = limit.clamp(1, i64::MAX as usize) as i64;
        self.read(|c| {
            // Ids with the prefix sort together, from the prefix itself on.
            let mut stmt = c.prepare_cached("SELECT id, rev, body FROM records WHERE id >= ?1 AND id > ?2 ORDER BY id LIMIT ?3")?;
            let mut rows = stmt.query(params![prefix, after.unwrap_or(""), limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let (id, rev, body): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
                if !id.starts_with(prefix) {
                    break;
                }
                out.push(assemble(c, &id, &rev, false, false, &body, false)?);
            }
            Ok(Some(out))
        })
    }

    fn get_many_fields(&self, ids: &[String], fields: &[String]) -> Result<Vec<Option<Doc>>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT body FROM docs WHERE id = ?1 AND deleted = 0")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let body = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()?;
                out.push(body.map(|b| projected(&b, fields)));
            }
            Ok(out)
        })
    }

    fn get_many_fields_text(&self, ids: &[String], fields: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT body FROM docs WHERE id = ?1 AND deleted = 0")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let mut rows = stmt.query([id])?;
                out.push(match rows.next()? {
                    Some(row) => Some(projected_text(body_text(row, 0)?, fields)),
                    None => None,
                });
            }
            Ok(out)
        })
    }

    fn find_each_fields_text(&self, schema_id: &str, field: &str, values: &[Value], limit: usize, fields: &[String]) -> Result<Vec<Vec<String>>, StoreError> {
        self.ensure_index(schema_id, field)?;
        let limit = limit.clamp(1, i64::MAX as usize) as i64;
        self.read(|c| {
            let mut stmt = c.prepare_cached(FIND_BY_FIELD)?;
            values
                .iter()
                .map(|v| {
                    let mut rows = stmt.query(params![schema_id, field, v.to_string(), limit])?;
                    let mut docs = Vec::new();
                    while let Some(row) = rows.next()? {
                        let body = body_text(row, 3)?;
                        docs.push(projected_text(body, fields));
                    }
                    Ok(docs)
                })
                .collect()
        })
    }

    fn index_field(&self, schema_id: &str, field: &str) -> Result<(), StoreError> {
        self.ensure_index(schema_id, field)
    }

    fn find_fields(&self, schema_id: &str, field: Option<(&str, &Value)>, limit: usize, fields: &[String]) -> Result<Vec<Doc>, StoreError> {
        self.find_with(schema_id, field, limit, Some(fields))
    }

    fn find(&self, schema_id: &str, field: Option<(&str, &Value)>, limit: usize) -> Result<Vec<Doc>, StoreError> {
        self.find_with(schema_id, field, limit, None)
    }

    fn find_each(&self, schema_id: &str, field: &str, values: &[Value], limit: usize, fields: Option<&[String]>) -> Result<Vec<Vec<Doc>>, StoreError> {
        self.ensure_index(schema_id, field)?;
        self.read(|c| values.iter().map(|v| find_on(c, schema_id, Some((field, v)), limit, fields)).collect())
    }


    fn changes(&self, since: &Seq, limit: usize, include_docs: bool) -> Result<ChangesPage, StoreError> {
        self.change_rows(since, limit, include_docs, |c, row| match &row.body {
            Some(body) => Ok(Some(assemble(c, &row.id, &row.rev, row.deleted, row.has_att, body, false)?)),
            None => Ok(None),
        })
    }

    fn changes_text(&self, since: &Seq, limit: usize) -> Result<ChangesPage<Arc<str>>, StoreError> {
        self.change_rows(since, limit, true, |c, row| {
            let body = row.body.as_deref().unwrap_or("{}");
            if row.has_att {
                // The attachment stubs come from their own table.
                let doc = assemble(c, &row.id, &row.rev, row.deleted, true, body, false)?;
                return Ok(Some(Arc::from(serde_json::to_string(&doc).unwrap_or_else(|_| "{}".into()))));
            }
            // The stored body is the document without its `_` members: put them in front.
            let mut text = String::with_capacity(body.len() + row.id.len() + row.rev.len() + 32);
            text.push_str("{\"_id\":");
            text.push_str(&serde_json::to_string(&row.id).unwrap_or_default());
            text.push_str(",\"_rev\":");
            text.push_str(&serde_json::to_string(&row.rev).unwrap_or_default());
            if row.deleted {
                text.push_str(",\"_deleted\":true");
            }
            let rest = body.trim_start().strip_prefix('{').unwrap_or("}");
            if !rest.trim_start().starts_with('}') {
                text.push(',');
            }
            text.push_str(rest);
            Ok(Some(Arc::from(text)))
        })
    }

    fn wait_changes(&self, since: &Seq, limit: usize, include_docs: bool, timeout: Duration)
        -> Result<ChangesPage, StoreError> {
        let deadline = Instant::now() + timeout;
        let since_n = parse_seq(since)?;
        loop {
            let page = self.changes(since, limit, include_docs)?;
            let now = Instant::now();
            if !page.changes.is_empty() || now >= deadline {
                return Ok(page);
            }
            // Woken by a commit in this process; the periodic recheck also sees commits made
            // by another process on the same file.
            let guard = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            if *guard <= since_n {
                let slice = (deadline - now).min(Duration::from_millis(250));
                let _ = self.wake.wait_timeout(guard, slice);
            }
        }
    }

    fn put_attachment(&self, id: &str, rev: &str, name: &str, content_type: &str, data: &[u8])
        -> Result<String, StoreError> {
        let mut doc = self.get(id, false)?.ok_or_else(|| StoreError::Conflict { id: id.to_string() })?;
        if doc.get("_rev").and_then(Value::as_str) != Some(rev) {
            return Err(StoreError::Conflict { id: id.to_string() });
        }
        let atts = doc.entry("_attachments").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = atts {
            m.insert(name.to_string(), serde_json::json!({
                "content_type": content_type,
                "data": base64::engine::general_purpose::STANDARD.encode(data),
            }));
        }
        match self.bulk_write(vec![doc])?.pop() {
            Some(WriteResult::Ok { rev, .. }) => Ok(rev),
            Some(WriteResult::Conflict { id }) => Err(StoreError::Conflict { id }),
            Some(WriteResult::Error { reason, .. }) => Err(StoreError::BadRequest(reason)),
            None => Err(self.e("no result for the attachment write")),
        }
    }

    fn get_attachment(&self, id: &str, name: &str) -> Result<Option<Attachment>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT a.content_type, a.data FROM attachments a JOIN docs d ON d.id = a.doc_id
                 WHERE a.doc_id = ?1 AND a.name = ?2 AND d.deleted = 0",
            )?
            .query_row([id, name], |r| Ok(Attachment { content_type: r.get(0)?, data: r.get(1)? }))
            .optional()
        })
    }

    fn get_local(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let body: Option<String> = self.read(|c| {
            c.prepare_cached("SELECT body FROM local WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()
        })?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| self.e(e))).transpose()
    }

    fn put_local(&self, id: &str, body: &Value) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached(PUT_LOCAL)
            .and_then(|mut s| s.execute(params![id, body.to_string()]))
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    fn destroy(&self) -> Result<(), StoreError> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("DELETE FROM docs; DELETE FROM attachments; DELETE FROM local;").map_err(|e| self.e(e))?;
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        Ok(())
    }
}

/// One record of a bulk write, against the revision it was read at (none: it must not exist;
/// `_deleted`: it goes). Records carry no attachments.
fn write_record(tx: &rusqlite::Transaction<'_>, r: Incoming) -> rusqlite::Result<WriteResult> {
    let Some(new_rev) = r.plain_rev else {
        return Ok(WriteResult::Error { id: r.id, reason: "a record cannot have attachments".into() });
    };
    let written = match (r.deleted, &r.rev) {
        (true, Some(given)) => tx.prepare_cached("DELETE FROM records WHERE id = ?1 AND rev = ?2")?.execute(params![r.id, given])?,
        (true, None) => {
            tx.prepare_cached("DELETE FROM records WHERE id = ?1")?.execute([&r.id])?;
            1
        }
        (false, None) => tx
            .prepare_cached("INSERT INTO records (id, rev, body) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO NOTHING")?
            .execute(params![r.id, new_rev, r.body])?,
        (false, Some(given)) => tx
            .prepare_cached("UPDATE records SET rev = ?2, body = ?3 WHERE id = ?1 AND rev = ?4")?
            .execute(params![r.id, new_rev, r.body, given])?,
    };
    Ok(if written == 1 { WriteResult::Ok { id: r.id, rev: new_rev } } else { WriteResult::Conflict { id: r.id } })
}

impl EmbeddedStore {
    /// Documents, then records, then the local document, in one transaction.
    fn write_all(&self, docs: Vec<Doc>, new: Vec<NewDoc>, records: Vec<Record>, local: Option<(&str, &Value)>, durability: Durability) -> Result<(Vec<WriteResult>, Vec<WriteResult>), StoreError> {
        // Checked, printed as JSON and given their next revisions side by side, before the
        // writer lock: only the statements need the one connection.
        // The index rows too, for the fields indexed now; a field whose index is built before
        // the lock is taken below gets its rows from the documents' text there.
        let n = docs.len() + new.len();
        let all: Vec<ToWrite> = docs
            .into_iter()
            .map(ToWrite::Doc)
            .chain(new.into_iter().map(ToWrite::New))
            .chain(records.into_iter().map(ToWrite::Record))
            .collect();
        let seen = self.indexed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut prepared = crate::par::map_in_parts(all, 64, |d| match d {
            ToWrite::Doc(d) | ToWrite::Record(Record::Doc(d)) => split_incoming(d, &seen),
            ToWrite::New(d) => new_incoming(d, &seen),
            ToWrite::Record(Record::Text { id, rev, body }) => text_incoming(id, rev, body),
        });
        let records = prepared.split_off(n);
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if durability == Durability::Deferred {
            // The commit returns once the log is written, without waiting for the disk; the
            // `Checkpointer` syncs the log before it copies it, and so does the next
            // `Immediate` commit (the connection is set back below, whatever happens).
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| self.e(e))?;
        }
        let written = self.write_prepared(&mut conn, prepared, records, local, &seen);
        if durability == Durability::Deferred {
            conn.pragma_update(None, "synchronous", "FULL").map_err(|e| self.e(e))?;
        }
        let (seq, results, record_results) = written?;
        drop(conn);
        self.checkpointer.committed();
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = seq;
        self.wake.notify_all();
        Ok((results, record_results))
    }

    /// The transaction of [`EmbeddedStore::write_all`]: the last sequence number and the
    /// results of the documents and of the records.
    fn write_prepared(
        &self,
        conn: &mut Connection,
        prepared: Vec<Checked>,
        records: Vec<Checked>,
        local: Option<(&str, &Value)>,
        seen: &HashMap<String, Vec<String>>,
    ) -> Result<(i64, Vec<WriteResult>, Vec<WriteResult>), StoreError> {
        // Immediate: the write lock is taken (waiting for another process's writer, if any)
        // before anything is read. A deferred transaction that read first could not upgrade
        // once another process had committed meanwhile, and failed at once with "database is
        // locked" — `raindrop run` died when `raindrop import` wrote beside it.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.e(e))?;
        // As recorded now: another process may have indexed a field since this one looked.
        let indexed = indexed_fields(&tx).map_err(|e| self.e(e))?;
        *self.indexed.lock().unwrap_or_else(|p| p.into_inner()) = indexed.clone();
        let mut seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM docs", [], |r| r.get(0)).map_err(|e| self.e(e))?;
        let mut results = Vec::with_capacity(prepared.len());
        for incoming in prepared {
            let incoming = match incoming {
                Ok(i) => i,
                Err((id, reason)) => {
                    results.push(WriteResult::Error { id, reason });
                    continue;
                }
            };
            let mut incoming = incoming;
            if let Some(fields) = incoming.schema.as_ref().and_then(|s| indexed.get(s)).filter(|f| Some(*f) != incoming.schema.as_ref().and_then(|s| seen.get(s))) {
                incoming.index = index_entries_of_text(&incoming.body, fields);
            }
            let index = std::mem::take(&mut incoming.index);
            match write_one(&tx, incoming, seq + 1, &index).map_err(|e| self.e(e))? {
                Ok(result) => {
                    seq += 1;
                    results.push(result);
                }
                Err(result) => results.push(result),
            }
        }
        let mut record_results = Vec::with_capacity(records.len());
        for record in records {
            record_results.push(match record {
                Ok(r) => write_record(&tx, r).map_err(|e| self.e(e))?,
                Err((id, reason)) => WriteResult::Error { id, reason },
            });
        }
        if let Some((id, body)) = local {
            tx.prepare_cached(PUT_LOCAL).and_then(|mut s| s.execute(params![id, body.to_string()])).map_err(|e| self.e(e))?;
        }
        tx.commit().map_err(|e| self.e(e))?;
        Ok((seq, results, record_results))
    }
}

/// A document or record ready for its row, or why it was refused (its id and the reason).
type Checked = Result<Incoming, (String, String)>;

/// Writes one document inside the bulk transaction. `Ok(Err(_))` is a per-document refusal.
fn write_one(tx: &rusqlite::Transaction<'_>, doc: Incoming, seq: i64, index: &[(String, String)]) -> rusqlite::Result<Result<WriteResult, WriteResult>> {
    // The common case in one statement: a new document, or an update of a live one at the
    // given revision, with no attachments and no index rows either side. Anything else (and a
    // statement that matches no row: a conflict, a deleted document, a changed schema) takes
    // the full path below.
    if let (Some(new_rev), true) = (&doc.plain_rev, index.is_empty()) {
        let new_rev = new_rev.clone();
        let written = match &doc.rev {
            None => tx
                .prepare_cached(
                    "INSERT INTO docs (seq, id, rev, deleted, has_att, body, schema) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)
                     ON CONFLICT(id) DO NOTHING",
                )?
                .execute(params![seq, doc.id, new_rev, doc.deleted, doc.body, doc.schema])?,
            Some(given) => tx
                .prepare_cached(
                    "UPDATE docs SET seq = ?1, rev = ?3, deleted = ?4, body = ?5
                     WHERE id = ?2 AND rev = ?7 AND deleted = 0 AND has_att = 0 AND schema IS ?6
                       AND (schema IS NULL OR schema NOT IN (SELECT schema FROM indexed_fields))",
                )?
                .execute(params![seq, doc.id, new_rev, doc.deleted, doc.body, doc.schema, given])?,
        };
        if written == 1 {
            return Ok(Ok(WriteResult::Ok { id: doc.id, rev: new_rev }));
        }
    }
    let existing: Option<(String, bool)> = tx
        .prepare_cached("SELECT rev, deleted FROM docs WHERE id = ?1")?
        .query_row([&doc.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let prev_rev = match (&existing, &doc.rev) {
        (None, None) => None,
        (None, Some(_)) => return Ok(Err(WriteResult::Conflict { id: doc.id })),
        // A deleted document may be recreated without a rev; its history continues.
        (Some((cur, true)), None) => Some(cur.clone()),
        (Some((cur, _)), Some(given)) if cur == given => Some(cur.clone()),
        (Some(_), _) => return Ok(Err(WriteResult::Conflict { id: doc.id })),
    };
    let generation = prev_rev.as_deref().map_or(0, rev::generation) + 1;

    // Attachments: new data is stored, stubs keep what is there, the rest is removed.
    let mut keep: Vec<String> = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    if let (false, Some(atts)) = (doc.deleted, &doc.attachments) {
        // Refused before anything of it is stored.
        if let Some(Some(Err(reason))) = atts.iter().map(|a| a.data.as_ref()).find(|d| matches!(d, Some(Err(_)))) {
            return Ok(Err(WriteResult::Error { id: doc.id, reason: reason.clone() }));
        }
        for IncomingAttachment { name, content_type, data } in atts {
            match data {
                Some(Err(reason)) => return Ok(Err(WriteResult::Error { id: doc.id, reason: reason.clone() })),
                Some(Ok((data, digest))) => {
                    tx.prepare_cached(
                        "INSERT INTO attachments (doc_id, name, content_type, length, digest, revpos, data)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT(doc_id, name) DO UPDATE SET content_type = excluded.content_type,
                           length = excluded.length, digest = excluded.digest, revpos = excluded.revpos, data = excluded.data",
                    )?
                    .execute(params![doc.id, name, content_type, data.len() as i64, digest, generation as i64, data])?;
                    digests.push(digest.clone());
                }
                None => {
                    let digest: Option<String> = tx
                        .prepare_cached("SELECT digest FROM attachments WHERE doc_id = ?1 AND name = ?2")?
                        .query_row(params![doc.id, name], |r| r.get(0))
                        .optional()?;
                    match digest {
                        Some(d) => digests.push(d),
                        None => return Ok(Err(WriteResult::Error { id: doc.id, reason: format!("attachment {name} is a stub for nothing stored") })),
                    }
                }
            }
            keep.push(name.clone());
        }
    }
    if existing.is_some() {
        let mut stmt = tx.prepare_cached("SELECT name FROM attachments WHERE doc_id = ?1")?;
        let stored: Vec<String> = stmt.query_map([&doc.id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        for name in stored.iter().filter(|n| !keep.contains(n)) {
            tx.prepare_cached("DELETE FROM attachments WHERE doc_id = ?1 AND name = ?2")?.execute(params![doc.id, name])?;
        }
    }

    let digest_refs: Vec<&str> = digests.iter().map(String::as_str).collect();
    let new_rev = rev::next(prev_rev.as_deref(), doc.deleted, doc.body.as_bytes(), &digest_refs);
    tx.prepare_cached(
        "INSERT INTO docs (seq, id, rev, deleted, has_att, body, schema) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, rev = excluded.rev, deleted = excluded.deleted,
           has_att = excluded.has_att, body = excluded.body, schema = excluded.schema",
    )?
    .execute(params![seq, doc.id, new_rev, doc.deleted, !keep.is_empty(), doc.body, doc.schema])?;
    if existing.is_some() {
        tx.prepare_cached("DELETE FROM field_index WHERE id = ?1")?.execute([&doc.id])?;
    }
    if let Some(schema) = &doc.schema {
        for (field, value) in index {
            tx.prepare_cached("INSERT OR IGNORE INTO field_index (schema, field, value, id) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![schema, field, value, doc.id])?;
        }
    }
    Ok(Ok(WriteResult::Ok { id: doc.id, rev: new_rev }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn synchronous(store: &EmbeddedStore) -> i64 {
        store.writer.lock().unwrap().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_deferred_write_leaves_the_connection_durable() {
        let dir = std::env::temp_dir().join(format!("rd-embedded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir.join("db.sqlite")).unwrap();
        const FULL: i64 = 2;
        assert_eq!(synchronous(&store), FULL);
        let doc = |id: &str| json!({"_id": id, "n": 1}).as_object().unwrap().clone();
        let (written, _) = store.bulk_write_with_records(vec![doc("a")], Vec::new(), Vec::new(), Some(("ckpt", &json!(1))), Durability::Deferred).unwrap();
        assert!(matches!(written[..], [WriteResult::Ok { .. }]));
        assert_eq!(synchronous(&store), FULL, "set back after the commit");
        store.sync().unwrap();
        // And after a write whose transaction fails (a trigger refuses its checkpoint).
        let blocked = store.writer.lock().unwrap().execute_batch("CREATE TRIGGER no_local BEFORE INSERT ON local BEGIN SELECT RAISE(ABORT, 'no'); END;");
        blocked.unwrap();
        assert!(store.bulk_write_with_records(vec![doc("b")], Vec::new(), Vec::new(), Some(("ckpt2", &json!(2))), Durability::Deferred).is_err());
        assert_eq!(synchronous(&store), FULL, "set back after a failed transaction");
        assert!(store.get("b", false).unwrap().is_none(), "the failed write took nothing");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn documents_move_to_records_by_id_prefix() {
        let dir = std::env::temp_dir().join(format!("rd-embedded-move-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir.join("db.sqlite")).unwrap();
        let doc = |v: Value| v.as_object().unwrap().clone();
        let written = store.bulk_write(vec![doc(json!({"_id": "rdx!a", "n": 1})), doc(json!({"_id": "rdx!b", "n": 2})), doc(json!({"_id": "rdx", "n": 3})), doc(json!({"_id": "rdy!a", "n": 4}))]).unwrap();
        let rev = |r: &WriteResult| match r {
            WriteResult::Ok { rev, .. } => rev.clone(),
            other => panic!("{other:?}"),
        };
        let rev_a = rev(&written[0]);
        let gone = store.bulk_write(vec![doc(json!({"_id": "rdx!b", "_rev": rev(&written[1]), "_deleted": true}))]).unwrap();
        assert!(matches!(gone[..], [WriteResult::Ok { .. }]));
        assert_eq!(store.move_to_records("rdx!").unwrap(), 2, "the live one and the deleted one");
        let ids: Vec<String> = ["rdx!a", "rdx!b", "rdx", "rdy!a"].iter().map(|s| s.to_string()).collect();
        let records = store.get_records(&ids).unwrap();
        assert_eq!(records[0].as_ref().unwrap()["n"], json!(1));
        assert_eq!(records[0].as_ref().unwrap()["_rev"], json!(rev_a), "the same revision: the next write of it follows on");
        assert!(records[1..].iter().all(Option::is_none), "{records:?}");
        let docs = store.get_many(&ids).unwrap();
        assert!(docs[0].is_none() && docs[1].is_none() && docs[2].is_some() && docs[3].is_some());
        assert_eq!(store.move_to_records("rdx!").unwrap(), 0, "nothing left to move");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
