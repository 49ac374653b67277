//! Reading stored rows back as documents: whole (with `_id`, `_rev` and attachment stubs,
//! as values or as JSON text spliced around the stored body) or cut down to a few fields, and
//! the rows of the changes feed and of `find`.

use std::sync::Arc;

use base64::Engine as _;
use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use super::index::FIND_BY_FIELD;
use crate::store::{Change, Doc, Seq, StoreError};

pub(super) fn parse_seq(seq: &Seq) -> Result<i64, StoreError> {
    if seq.is_zero() {
        return Ok(0);
    }
    seq.as_str().parse().map_err(|_| StoreError::BadRequest(format!("{seq:?} is not a sequence of this database")))
}

/// Builds a document from its stored row.
pub(super) fn assemble(
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

/// A stored row as the JSON text of its document: the stored body is the document without its
/// `_` members, which are put in front of its members' text (attachment stubs come from their
/// own table, through [`assemble`]).
pub(super) fn doc_text(c: &Connection, id: &str, rev: &str, deleted: bool, has_att: bool, body: &str) -> rusqlite::Result<String> {
    if has_att {
        let doc = assemble(c, id, rev, deleted, true, body, false)?;
        return Ok(serde_json::to_string(&doc).unwrap_or_else(|_| "{}".into()));
    }
    let mut text = String::with_capacity(body.len() + id.len() + rev.len() + 32);
    text.push_str("{\"_id\":");
    text.push_str(&serde_json::to_string(id).unwrap_or_default());
    text.push_str(",\"_rev\":");
    text.push_str(&serde_json::to_string(rev).unwrap_or_default());
    if deleted {
        text.push_str(",\"_deleted\":true");
    }
    let rest = body.trim_start().strip_prefix('{').unwrap_or("}");
    if !rest.trim_start().starts_with('}') {
        text.push(',');
    }
    text.push_str(rest);
    Ok(text)
}

/// `rd_key` and `fields` of a stored body, the other fields skipped rather than built.
pub(super) fn projected(body: &str, fields: &[String]) -> Doc {
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
pub(super) fn projected_text(body: &str, fields: &[String]) -> String {
    match crate::json_text::members(body) {
        Some(members) => crate::json_text::pick(body, &members, fields.iter().map(String::as_str).chain(["rd_key"])),
        None => Value::Object(projected(body, fields)).to_string(),
    }
}

/// Column `i` of a row, a document's body, borrowed from SQLite rather than copied out.
/// `text`, a JSON object's text, with `"_rev": rev` as its first member.
pub(super) fn with_rev(text: &str, rev: &str) -> String {
    let mut out = String::from(r#"{"_rev":"#);
    out.push_str(&serde_json::to_string(rev).unwrap_or_default());
    let rest = text.get(1..).unwrap_or_default();
    if !rest.trim_start().starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    out
}

pub(super) fn body_text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(i)?.as_str().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

/// A page of the changes feed after sequence `since_n` (`since` as given), with each document's
/// text when `docs`.
pub(super) fn changes_after(c: &Connection, since_n: i64, since: &Seq, limit: usize, docs: bool) -> rusqlite::Result<(Vec<Change>, Seq)> {
    let limit = limit.clamp(1, i64::MAX as usize) as i64;
    let mut stmt = c.prepare_cached(
        "SELECT seq, id, rev, deleted, has_att, CASE WHEN ?3 THEN body ELSE NULL END
         FROM docs WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![since_n, limit, docs])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (seq, id, rev, deleted, has_att): (i64, String, String, bool, bool) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let doc = match docs {
            true => Some(Arc::from(doc_text(c, &id, &rev, deleted, has_att, r.get_ref(5)?.as_str().unwrap_or("{}"))?)),
            false => None,
        };
        out.push(Change { seq: Seq::from_raw(seq.to_string()), id, rev, deleted, doc });
    }
    let last_seq = out.last().map(|c| c.seq.clone()).unwrap_or_else(|| since.clone());
    Ok((out, last_seq))
}

/// The live documents of `schema_id` (with `by`, those whose indexed `field` has the value —
/// already indexed), at most `limit`, as text: whole, or cut down to `fields`.
pub(super) fn find_rows(
    c: &Connection,
    schema_id: &str,
    by: Option<(&str, &Value)>,
    limit: usize,
    fields: Option<&[String]>,
) -> rusqlite::Result<Vec<String>> {
    let limit = limit.clamp(1, i64::MAX as usize) as i64;
    let mut stmt;
    let mut rows = match by {
        Some((name, value)) => {
            stmt = c.prepare_cached(FIND_BY_FIELD)?;
            stmt.query(params![schema_id, name, super::index::index_text(value), limit])?
        }
        None => {
            stmt = c.prepare_cached(
                "SELECT d.id, d.rev, d.has_att, d.body FROM docs d WHERE d.schema = ?1 AND d.deleted = 0 ORDER BY d.seq LIMIT ?2",
            )?;
            stmt.query(params![schema_id, limit])?
        }
    };
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let body = body_text(r, 3)?;
        out.push(match fields {
            Some(fields) => projected_text(body, fields),
            None => {
                doc_text(c, r.get_ref(0)?.as_str().unwrap_or_default(), r.get_ref(1)?.as_str().unwrap_or_default(), false, r.get(2)?, body)?
            }
        });
    }
    Ok(out)
}

/// The records whose id starts with `prefix` and sorts after `after`, at most `limit`.
pub(super) fn records_after(c: &Connection, prefix: &str, after: Option<&str>, limit: usize) -> rusqlite::Result<Vec<Doc>> {
    let limit = limit.clamp(1, i64::MAX as usize) as i64;
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
    Ok(out)
}
