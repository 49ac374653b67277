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
//!
//! The code: `setup` opens the file (and refuses another program's), `write` writes, `rows`
//! reads stored rows back as documents, `index` keeps the field index behind `find`.

mod index;
mod megaview;
mod rows;
mod setup;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::{Attachment, ChangesPage, DbInfo, Doc, Find, Seq, Store, StoreError, ViewQuery, ViewRow, WriteBatch, WriteResult, Written};
use index::indexed_fields;
use rows::{assemble, body_text, doc_text, parse_seq, projected_text};
use setup::{connect, err, refuse_foreign, set_up, Checkpointer};
use write::PUT_LOCAL;

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

impl EmbeddedStore {
    /// Opens the database at `path`, creating it (and its folder) if needed.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
        }
        refuse_foreign(path)?;
        let writer = set_up(path)?;
        let last: i64 = writer.query_row("SELECT COALESCE(MAX(seq), 0) FROM docs", [], |r| r.get(0)).map_err(|e| err(path, e))?;
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

    pub(super) fn e(&self, e: impl std::fmt::Display) -> StoreError {
        err(&self.path, e)
    }

    /// Runs `f` on a reader connection (WAL: readers do not block the writer or each other).
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
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
}

impl Store for EmbeddedStore {
    fn info(&self) -> Result<DbInfo, StoreError> {
        let (live, dead): (i64, i64) = self.read(|c| {
            c.query_row("SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0) FROM docs", [], |r| Ok((r.get(0)?, r.get(1)?)))
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

    /// The stored bodies are the documents' text: a cut copies the members' text, a whole one
    /// has its `_` members spliced in front (see `rows::doc_text`).
    fn get_many(&self, ids: &[String], fields: Option<&[String]>) -> Result<Vec<Option<String>>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT rev, has_att, body FROM docs WHERE id = ?1 AND deleted = 0")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let mut rows = stmt.query([id])?;
                out.push(match rows.next()? {
                    None => None,
                    Some(row) => {
                        let body = body_text(row, 2)?;
                        Some(match fields {
                            // The revision lives beside the body: put in when asked for.
                            Some(fields) if fields.iter().any(|f| f == "_rev") => {
                                rows::with_rev(&projected_text(body, fields), row.get_ref(0)?.as_str().unwrap_or_default())
                            }
                            Some(fields) => projected_text(body, fields),
                            None => doc_text(c, id, row.get_ref(0)?.as_str().unwrap_or_default(), false, row.get(1)?, body)?,
                        })
                    }
                });
            }
            Ok(out)
        })
    }

    fn find(&self, find: &Find<'_>) -> Result<Vec<Vec<String>>, StoreError> {
        match find.by {
            Some((field, values)) => {
                self.ensure_index(find.schema, field)?;
                self.read(|c| values.iter().map(|v| rows::find_rows(c, find.schema, Some((field, v)), find.limit, find.fields)).collect())
            }
            None => self.read(|c| Ok(vec![rows::find_rows(c, find.schema, None, find.limit, find.fields)?])),
        }
    }

    fn index_field(&self, schema_id: &str, field: &str) -> Result<(), StoreError> {
        self.ensure_index(schema_id, field)
    }

    fn megaview(&self, query: &ViewQuery) -> Result<Vec<ViewRow>, StoreError> {
        self.megaview_rows(query)
    }

    fn megaview_count(&self, key: &crate::store::MegaKey) -> Result<u64, StoreError> {
        self.megaview_count_rows(key)
    }

    fn changes(&self, since: &Seq, limit: usize, docs: bool) -> Result<ChangesPage<Arc<str>>, StoreError> {
        let since_n = parse_seq(since)?;
        let (changes, last_seq) = self.read(|c| rows::changes_after(c, since_n, since, limit, docs))?;
        Ok(ChangesPage { changes, last_seq })
    }

    fn wait_changes(&self, since: &Seq, timeout: Duration) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        let since_n = parse_seq(since)?;
        loop {
            let any: bool =
                self.read(|c| c.prepare_cached("SELECT EXISTS (SELECT 1 FROM docs WHERE seq > ?1)")?.query_row([since_n], |r| r.get(0)))?;
            let now = Instant::now();
            if any || now >= deadline {
                return Ok(any);
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

    fn write(&self, batch: WriteBatch<'_>) -> Result<Written, StoreError> {
        let (docs, records) = self.write_all(batch.docs, batch.new_docs, batch.records, batch.checkpoint, batch.durability)?;
        Ok(Written { docs, records })
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

    fn records_after(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Doc>, StoreError> {
        self.read(|c| rows::records_after(c, prefix, after, limit))
    }

    fn move_to_records(&self, prefix: &str) -> Result<u64, StoreError> {
        // Ids with the prefix sort from the prefix up to (not including) the prefix with its
        // last character's successor. Looked for first outside the writer lock: there is
        // nothing to move after the first time.
        let Some(end) = prefix
            .chars()
            .last()
            .and_then(|c| char::from_u32(c as u32 + 1))
            .map(|c| format!("{}{c}", &prefix[..prefix.len() - c.len_utf8()]))
        else {
            return Ok(0);
        };
        let range = "id >= ?1 AND id < ?2";
        let any: bool =
            self.read(|c| c.query_row(&format!("SELECT EXISTS (SELECT 1 FROM docs WHERE {range})"), params![prefix, end], |r| r.get(0)))?;
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

    fn put_attachment(&self, id: &str, rev: &str, name: &str, attachment: &Attachment) -> Result<String, StoreError> {
        let mut doc = self.get(id, false)?.ok_or_else(|| StoreError::Conflict { id: id.to_string() })?;
        if doc.get("_rev").and_then(Value::as_str) != Some(rev) {
            return Err(StoreError::Conflict { id: id.to_string() });
        }
        let atts = doc.entry("_attachments").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = atts {
            m.insert(
                name.to_string(),
                serde_json::json!({
                    "content_type": attachment.content_type,
                    "data": base64::engine::general_purpose::STANDARD.encode(&attachment.data),
                }),
            );
        }
        match self.write(WriteBatch::docs(vec![doc]))?.docs.pop() {
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

    fn get_attachments_of(&self, ids: &[String]) -> Result<Vec<Option<crate::store::Attachments>>, StoreError> {
        self.read(|c| {
            let mut exists = c.prepare_cached("SELECT 1 FROM docs WHERE id = ?1 AND deleted = 0")?;
            let mut atts = c.prepare_cached("SELECT name, content_type, data FROM attachments WHERE doc_id = ?1 ORDER BY name")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if exists.query_row([id], |_| Ok(())).optional()?.is_none() {
                    out.push(None);
                    continue;
                }
                let rows = atts.query_map([id], |r| Ok((r.get(0)?, Attachment { content_type: r.get(1)?, data: r.get(2)? })))?;
                out.push(Some(rows.collect::<Result<Vec<_>, _>>()?));
            }
            Ok(out)
        })
    }

    fn get_local(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let body: Option<String> =
            self.read(|c| c.prepare_cached("SELECT body FROM local WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional())?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| self.e(e))).transpose()
    }

    fn put_local(&self, id: &str, body: &Value) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached(PUT_LOCAL).and_then(|mut s| s.execute(params![id, body.to_string()])).map_err(|e| self.e(e))?;
        Ok(())
    }

    fn delete_local(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached("DELETE FROM local WHERE id = ?1").and_then(|mut s| s.execute([id])).map_err(|e| self.e(e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
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
        let one = json!(1);
        let written = store
            .write(WriteBatch {
                docs: vec![doc("a")],
                checkpoint: Some(("ckpt", &one)),
                durability: Durability::Deferred,
                ..WriteBatch::default()
            })
            .unwrap()
            .docs;
        assert!(matches!(written[..], [WriteResult::Ok { .. }]));
        assert_eq!(synchronous(&store), FULL, "set back after the commit");
        store.sync().unwrap();
        // And after a write whose transaction fails (a trigger refuses its checkpoint).
        let blocked = store
            .writer
            .lock()
            .unwrap()
            .execute_batch("CREATE TRIGGER no_local BEFORE INSERT ON local BEGIN SELECT RAISE(ABORT, 'no'); END;");
        blocked.unwrap();
        let two = json!(2);
        assert!(store
            .write(WriteBatch {
                docs: vec![doc("b")],
                checkpoint: Some(("ckpt2", &two)),
                durability: Durability::Deferred,
                ..WriteBatch::default()
            })
            .is_err());
        assert_eq!(synchronous(&store), FULL, "set back after a failed transaction");
        assert!(store.get("b", false).unwrap().is_none(), "the failed write took nothing");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn documents_move_to_records_by_id_prefix() {
        let dir = std::env::temp_dir().join(format!("rd-embedded-move-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let embedded = EmbeddedStore::open(&dir.join("db.sqlite")).unwrap();
        let store: &dyn Store = &embedded;
        let doc = |v: Value| v.as_object().unwrap().clone();
        let written = store
            .bulk_write(vec![
                doc(json!({"_id": "rdx!a", "n": 1})),
                doc(json!({"_id": "rdx!b", "n": 2})),
                doc(json!({"_id": "rdx", "n": 3})),
                doc(json!({"_id": "rdy!a", "n": 4})),
            ])
            .unwrap();
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
        let docs = store.get_many(&ids, None).unwrap();
        assert!(docs[0].is_none() && docs[1].is_none() && docs[2].is_some() && docs[3].is_some());
        assert_eq!(store.move_to_records("rdx!").unwrap(), 0, "nothing left to move");
        drop(embedded);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
