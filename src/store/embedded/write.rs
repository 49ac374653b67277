//! Writing: documents checked and printed (beside one another, before the writer lock), then
//! documents, records and a checkpoint in one transaction. The common write — a new document,
//! or an update at its revision, without attachments or index rows — is one statement.

use std::collections::HashMap;

use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::index::{index_entries, index_entries_of_text, indexed_fields};
use super::EmbeddedStore;
use crate::store::{rev, Doc, Durability, NewDoc, Record, StoreError, WriteResult};

pub(super) const PUT_LOCAL: &str = "INSERT INTO local (id, body) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET body = excluded.body";

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
        None => crate::store::new_doc_id(),
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
    pub(super) fn write_all(
        &self,
        docs: Vec<Doc>,
        new: Vec<NewDoc>,
        records: Vec<Record>,
        local: Option<(&str, &Value)>,
        durability: Durability,
    ) -> Result<(Vec<WriteResult>, Vec<WriteResult>), StoreError> {
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
            if let Some(fields) = incoming
                .schema
                .as_ref()
                .and_then(|s| indexed.get(s))
                .filter(|f| Some(*f) != incoming.schema.as_ref().and_then(|s| seen.get(s)))
            {
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
fn write_one(
    tx: &rusqlite::Transaction<'_>,
    doc: Incoming,
    seq: i64,
    index: &[(String, String)],
) -> rusqlite::Result<Result<WriteResult, WriteResult>> {
    if let Some(written) = write_plain(tx, &doc, seq, index)? {
        return Ok(Ok(written));
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
    let (keep, digests) = match store_attachments(tx, &doc, generation)? {
        Ok(kept) => kept,
        Err(refused) => return Ok(Err(refused)),
    };
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

/// The common write in one statement: a new document, or an update of a live one at the given
/// revision, with no attachments and no index rows either side. `None` when it does not apply,
/// or its statement matched no row (a conflict, a deleted document, a changed schema): the full
/// path of [`write_one`] then decides.
fn write_plain(
    tx: &rusqlite::Transaction<'_>,
    doc: &Incoming,
    seq: i64,
    index: &[(String, String)],
) -> rusqlite::Result<Option<WriteResult>> {
    let (Some(new_rev), true) = (&doc.plain_rev, index.is_empty()) else { return Ok(None) };
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
    Ok((written == 1).then(|| WriteResult::Ok { id: doc.id.clone(), rev: new_rev.clone() }))
}

/// The names of a document's attachments kept by a write, and every kept one's digest.
type KeptAttachments = (Vec<String>, Vec<String>);

/// Stores a document's new attachment data at revision `generation` and finds the digests of
/// the stubs it keeps: the names kept and every kept attachment's digest (for its revision), or
/// the refusal (data that is not base64, a stub for nothing stored) before anything is stored.
fn store_attachments(
    tx: &rusqlite::Transaction<'_>,
    doc: &Incoming,
    generation: u64,
) -> rusqlite::Result<Result<KeptAttachments, WriteResult>> {
    let mut keep: Vec<String> = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    let (false, Some(atts)) = (doc.deleted, &doc.attachments) else { return Ok(Ok((keep, digests))) };
    let refuse = |reason: String| Ok(Err(WriteResult::Error { id: doc.id.clone(), reason }));
    if let Some(Some(Err(reason))) = atts.iter().map(|a| a.data.as_ref()).find(|d| matches!(d, Some(Err(_)))) {
        return refuse(reason.clone());
    }
    for IncomingAttachment { name, content_type, data } in atts {
        match data {
            Some(Err(reason)) => return refuse(reason.clone()),
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
                    None => return refuse(format!("attachment {name} is a stub for nothing stored")),
                }
            }
        }
        keep.push(name.clone());
    }
    Ok(Ok((keep, digests)))
}
