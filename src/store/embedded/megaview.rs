//! The megaview of the embedded store (see `store::megaview`), answered from its tables: the
//! documents (by schema, by id), the field index (made per field the first time it is asked
//! for, then kept by every write), and the contributors table — each document's
//! `rd_schema_items` entries and their `rd_deps` — brought up to date from the documents
//! written since, when a query needs it (as CouchDB updates a view when it is read).

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use super::rows::projected;
use super::EmbeddedStore;
use crate::store::{MegaKey, StoreError, ViewQuery, ViewRow};

/// One contributor of a document, as its rows store it (its `rd_source` with the source's
/// revision is read from the document when asked: a row changes only when a contributor or
/// its source document does, not at each revision of the source).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Contributor {
    ext: String,
    /// The source document's id (`None`: raw data).
    source: Option<String>,
    /// Its `rd_deps`, each as JSON.
    deps: Vec<String>,
}

/// The contributors of a stored body (none for a document outside the model), by extension.
/// Only the `rd_schema_items` member is parsed: the scan skips over the rest of the text.
fn contributors_of(body: &str) -> Vec<Contributor> {
    let items: Option<serde_json::Map<String, Value>> = match crate::json_text::members(body) {
        Some(members) => {
            let value = members.iter().find(|(name, _)| &body[name.clone()] == "rd_schema_items").map(|(_, v)| &body[v.clone()]);
            value.and_then(|text| serde_json::from_str(text).ok())
        }
        None => projected(body, &["rd_schema_items".to_string()]).remove("rd_schema_items").and_then(|v| v.as_object().cloned()),
    };
    let mut out: Vec<Contributor> = items
        .unwrap_or_default()
        .into_iter()
        .map(|(ext, entry)| Contributor {
            ext,
            source: entry.get("rd_source").and_then(|s| s.get(0)).and_then(Value::as_str).map(str::to_string),
            deps: {
                let mut deps: Vec<String> =
                    entry.get("rd_deps").and_then(Value::as_array).map(|d| d.iter().map(Value::to_string).collect()).unwrap_or_default();
                deps.sort();
                deps.dedup();
                deps
            },
        })
        .collect();
    out.sort();
    out
}

/// Makes document `id`'s contributor rows `rows` (inside the write's transaction). For a
/// document that existed they are read first and left alone when they are the same — the
/// common update, whose contributors and sources stay — which costs a lookup, not a delete and
/// an insert in every index.
fn write_contributors(tx: &rusqlite::Transaction<'_>, id: &str, rows: &[Contributor], existed: bool) -> rusqlite::Result<()> {
    if existed {
        if stored_contributors(tx, id)? == rows {
            return Ok(());
        }
        tx.prepare_cached("DELETE FROM contributors WHERE id = ?1")?.execute([id])?;
        tx.prepare_cached("DELETE FROM contributor_deps WHERE id = ?1")?.execute([id])?;
    }
    for c in rows {
        tx.prepare_cached("INSERT OR REPLACE INTO contributors (id, ext, source) VALUES (?1, ?2, ?3)")?
            .execute(params![id, c.ext, c.source])?;
        for dep in &c.deps {
            tx.prepare_cached("INSERT OR IGNORE INTO contributor_deps (dep, id, ext) VALUES (?1, ?2, ?3)")?
                .execute(params![dep, id, c.ext])?;
        }
    }
    Ok(())
}

/// Document `id`'s contributor rows as stored, in [`contributors_of`]'s order.
fn stored_contributors(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<Vec<Contributor>> {
    let mut out: Vec<Contributor> = tx
        .prepare_cached("SELECT ext, source FROM contributors WHERE id = ?1")?
        .query_map([id], |r| Ok(Contributor { ext: r.get(0)?, source: r.get(1)?, deps: Vec::new() }))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = tx.prepare_cached("SELECT ext, dep FROM contributor_deps WHERE id = ?1")?;
    for row in stmt.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (ext, dep) = row?;
        if let Some(c) = out.iter_mut().find(|c| c.ext == ext) {
            c.deps.push(dep);
        }
    }
    out.sort();
    for c in &mut out {
        c.deps.sort();
    }
    Ok(out)
}

impl EmbeddedStore {
    /// Brings the contributors table up to the last write, as CouchDB brings a view up to date
    /// when it is queried: the documents written since the sequence it was last brought to
    /// (all of them, the first time) are read from the feed's index and their rows made again —
    /// compared first, so a document whose contributors and sources stayed costs a lookup. Under
    /// the writer lock, in one transaction with the sequence it reached, so no write slips past.
    /// Writes pay nothing for it; a database never asked by extension, source or dependency
    /// never has the table filled.
    fn catch_up_contributors(&self) -> Result<(), StoreError> {
        let reached = |c: &Connection| -> rusqlite::Result<i64> {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM contributors_seq", [], |r| r.get(0))
        };
        // Another process may have written to the file: its last sequence, not this one's.
        let behind = |c: &Connection| -> rusqlite::Result<bool> {
            Ok(reached(c)? < c.query_row("SELECT COALESCE(MAX(seq), 0) FROM docs", [], |r| r.get::<_, i64>(0))?)
        };
        if !self.read(behind)? {
            return Ok(());
        }
        let _t = crate::timing::span("S:index");
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.e(e))?;
        let from = reached(&tx).map_err(|e| self.e(e))?;
        let mut to = from;
        {
            let mut stmt = tx.prepare("SELECT seq, id, deleted, body FROM docs WHERE seq > ?1 ORDER BY seq").map_err(|e| self.e(e))?;
            let mut rows = stmt.query([from]).map_err(|e| self.e(e))?;
            while let Some(r) = rows.next().map_err(|e| self.e(e))? {
                let (seq, id, deleted): (i64, String, bool) =
                    (r.get(0).map_err(|e| self.e(e))?, r.get(1).map_err(|e| self.e(e))?, r.get(2).map_err(|e| self.e(e))?);
                let found = if deleted { Vec::new() } else { contributors_of(super::rows::body_text(r, 3).map_err(|e| self.e(e))?) };
                // The first fill starts from an empty table: nothing to compare with.
                write_contributors(&tx, &id, &found, from > 0).map_err(|e| self.e(e))?;
                to = seq;
            }
        }
        tx.execute_batch("DELETE FROM contributors_seq").map_err(|e| self.e(e))?;
        tx.execute("INSERT INTO contributors_seq (seq) VALUES (?1)", [to]).map_err(|e| self.e(e))?;
        tx.commit().map_err(|e| self.e(e))?;
        Ok(())
    }

    pub(super) fn megaview_rows(&self, q: &ViewQuery) -> Result<Vec<ViewRow>, StoreError> {
        match &q.key {
            MegaKey::Schema(_) | MegaKey::Key { .. } | MegaKey::KeySchema { .. } => {}
            MegaKey::Field(schema, field, _) => self.ensure_index(schema, field)?,
            MegaKey::FieldPrefix(schema, field, prefix) => {
                self.ensure_index(schema, field)?;
                return self.read(|c| prefix_rows(c, q, schema, field, prefix));
            }
            _ => self.catch_up_contributors()?,
        }
        let key = q.key.to_json();
        self.read(|c| rows_of(c, q, &key))
    }

    /// The number of rows of `key`: a field's from the field index alone (its entries are those
    /// of live documents), any other key's by reading them.
    pub(super) fn megaview_count_rows(&self, key: &MegaKey) -> Result<u64, StoreError> {
        let count = |sql: &str, args: Vec<String>| {
            self.read(|c| c.prepare_cached(sql)?.query_row(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
        };
        match key {
            MegaKey::Field(schema, field, value) => {
                self.ensure_index(schema, field)?;
                let args = vec![schema.clone(), field.clone(), super::index::index_text(value)];
                count("SELECT COUNT(*) FROM field_index WHERE schema = ?1 AND field = ?2 AND value = ?3", args)
            }
            MegaKey::FieldPrefix(schema, field, prefix) => {
                self.ensure_index(schema, field)?;
                let (whole, open) = prefix_bounds(prefix);
                count(&format!("SELECT COUNT(*) FROM field_index WHERE {PREFIX_RANGE}"), vec![schema.clone(), field.clone(), whole, open])
            }
            _ => {
                let all = ViewQuery { key: key.clone(), limit: usize::MAX, skip: 0, descending: false };
                Ok(self.megaview_rows(&all)?.len() as u64)
            }
        }
    }
}

/// The field index's entries of a [`MegaKey::FieldPrefix`]: `?3` the prefix array's text
/// (`["t"]`), `?4` the text every longer array with that prefix starts with (`["t",`) — the
/// index's texts are canonical JSON, so the prefix of the elements is a prefix of the text.
const PREFIX_RANGE: &str = "schema = ?1 AND field = ?2 AND (value = ?3 OR (value >= ?4 AND value < ?4 || char(1114111)))";

/// `?3` and `?4` of [`PREFIX_RANGE`].
fn prefix_bounds(prefix: &[Value]) -> (String, String) {
    let whole = super::index::index_text(&Value::Array(prefix.to_vec()));
    let open = if prefix.is_empty() { "[".to_string() } else { format!("{},", &whole[..whole.len() - 1]) };
    (whole, open)
}

/// The rows of a [`MegaKey::FieldPrefix`]: the range's entries (value and id, from the index
/// alone) put in collation order, then the documents of the page asked for read for their
/// revision and key. Sorting costs the range's size; only the page's documents are read.
fn prefix_rows(c: &Connection, q: &ViewQuery, schema: &str, field: &str, prefix: &[Value]) -> rusqlite::Result<Vec<ViewRow>> {
    let (whole, open) = prefix_bounds(prefix);
    let mut stmt = c.prepare_cached(&format!("SELECT value, id FROM field_index WHERE {PREFIX_RANGE}"))?;
    let mut found: Vec<(Value, String)> = stmt
        .query_map(params![schema, field, whole, open], |r| {
            Ok((serde_json::from_str(super::rows::body_text(r, 0)?).unwrap_or(Value::Null), r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    found.sort_by(|a, b| crate::store::collate(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
    if q.descending {
        found.reverse();
    }
    let mut doc = c.prepare_cached("SELECT rev, body FROM docs WHERE id = ?1 AND deleted = 0")?;
    let mut out = Vec::new();
    for (value, id) in found.into_iter().skip(q.skip).take(q.limit) {
        let mut rows = doc.query([&id])?;
        let Some(r) = rows.next()? else { continue };
        let rev: String = r.get(0)?;
        let rd_key = projected(super::rows::body_text(r, 1)?, &[]).remove("rd_key").unwrap_or(Value::Null);
        let value_json = json!({ "_rev": rev, "rd_key": rd_key, "rd_schema_id": schema });
        out.push(ViewRow { key: json!([schema, field, value]), id, value: value_json });
    }
    Ok(out)
}

/// The statement and its arguments for a key: rows of (id, rev, body, ext or NULL, NULL,
/// schema); `None` for a key [`prefix_rows`] answers.
fn statement(key: &MegaKey) -> Option<(&'static str, Vec<rusqlite::types::Value>)> {
    use rusqlite::types::Value as Sql;
    let text = |s: &str| Sql::Text(s.to_string());
    let source = |s: &Option<String>| s.as_deref().map_or(Sql::Null, text);
    Some(match key {
        MegaKey::Schema(s) => {
            ("SELECT d.id, d.rev, d.body, NULL, NULL, d.schema FROM docs d WHERE d.schema = ?1 AND d.deleted = 0", vec![text(s)])
        }
        MegaKey::Field(schema, field, value) => (
            "SELECT d.id, d.rev, d.body, NULL, NULL, d.schema FROM field_index f JOIN docs d ON d.id = f.id
             WHERE f.schema = ?1 AND f.field = ?2 AND f.value = ?3 AND d.deleted = 0",
            vec![text(schema), text(field), text(&super::index::index_text(value))],
        ),
        // Ids of one key share their prefix up to the schema: a range of the id index, less the
        // ids of a key whose type holds `.` and `!` and so starts alike (what follows the
        // prefix is a schema id, which holds no `!`).
        MegaKey::Key { id_prefix, .. } => (
            "SELECT d.id, d.rev, d.body, NULL, NULL, d.schema FROM docs d
             WHERE d.id >= ?1 AND d.id < ?1 || char(1114111) AND d.deleted = 0 AND d.schema IS NOT NULL
               AND instr(substr(d.id, length(?1) + 1), '!') = 0",
            vec![text(id_prefix)],
        ),
        MegaKey::KeySchema { id, .. } => (
            "SELECT d.id, d.rev, d.body, NULL, NULL, d.schema FROM docs d WHERE d.id = ?1 AND d.deleted = 0 AND d.schema IS NOT NULL",
            vec![text(id)],
        ),
        MegaKey::Ext(e) => (BY_EXT, vec![text(e)]),
        MegaKey::Source(s) => (BY_SOURCE, vec![source(s)]),
        MegaKey::ExtSource(e, s) => (BY_EXT_SOURCE, vec![text(e), source(s)]),
        MegaKey::Dep(dep) => (
            "SELECT d.id, d.rev, d.body, c.ext, NULL, d.schema FROM contributor_deps p
             JOIN contributors c ON c.id = p.id AND c.ext = p.ext JOIN docs d ON d.id = p.id
             WHERE d.deleted = 0 AND p.dep = ?1",
            vec![text(&dep.to_string())],
        ),
        // Ordered by value, not by id: `prefix_rows`.
        MegaKey::FieldPrefix(..) => return None,
    })
}

const BY_EXT: &str = "SELECT d.id, d.rev, d.body, c.ext, NULL, d.schema FROM contributors c JOIN docs d ON d.id = c.id
     WHERE d.deleted = 0 AND c.ext = ?1";
const BY_SOURCE: &str = "SELECT d.id, d.rev, d.body, c.ext, NULL, d.schema FROM contributors c JOIN docs d ON d.id = c.id
     WHERE d.deleted = 0 AND c.source IS ?1";
const BY_EXT_SOURCE: &str = "SELECT d.id, d.rev, d.body, c.ext, NULL, d.schema FROM contributors c JOIN docs d ON d.id = c.id
     WHERE d.deleted = 0 AND c.ext = ?1 AND c.source IS ?2";

fn rows_of(c: &Connection, q: &ViewQuery, key: &Value) -> rusqlite::Result<Vec<ViewRow>> {
    let Some((head, args)) = statement(&q.key) else { return Ok(Vec::new()) };
    let order = if q.descending { " ORDER BY d.id DESC" } else { " ORDER BY d.id" };
    let sql = format!("{head}{order} LIMIT ?{} OFFSET ?{}", args.len() + 1, args.len() + 2);
    let mut stmt = c.prepare_cached(&sql)?;
    let mut all = args;
    all.push(rusqlite::types::Value::Integer(q.limit.min(i64::MAX as usize) as i64));
    all.push(rusqlite::types::Value::Integer(q.skip.min(i64::MAX as usize) as i64));
    let mut rows = stmt.query(rusqlite::params_from_iter(all))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (id, rev): (String, String) = (r.get(0)?, r.get(1)?);
        let ext: Option<String> = r.get(3)?;
        let wanted = if ext.is_some() { vec!["rd_schema_items".to_string()] } else { Vec::new() };
        let mut doc = projected(super::rows::body_text(r, 2)?, &wanted);
        let rd_key = doc.remove("rd_key").unwrap_or(Value::Null);
        let mut value = json!({ "_rev": rev, "rd_key": rd_key, "rd_schema_id": r.get::<_, Option<String>>(5)? });
        if let Some(ext) = ext {
            let entry = doc.get("rd_schema_items").and_then(|items| items.get(&ext));
            value["rd_source"] = entry.and_then(|e| e.get("rd_source")).cloned().unwrap_or(Value::Null);
            value["rd_ext_id"] = Value::String(ext);
        }
        out.push(ViewRow { id, key: key.clone(), value });
    }
    Ok(out)
}
