//! The megaview of the embedded store (see `store::megaview`), answered from its tables: the
//! documents (by schema, by id), the field index (made per field the first time it is asked
//! for), and the contributors table — each document's `rd_schema_items` entries and their
//! `rd_deps` — made the first time a query needs it and kept by every write after. A database
//! nobody asks by extension, source, key or dependency pays nothing for it.

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use super::rows::projected;
use super::EmbeddedStore;
use crate::store::{MegaKey, StoreError, ViewQuery, ViewRow};

/// The row of `indexed_fields` that says the contributors table is kept.
pub(super) const CONTRIBUTORS_ON: (&str, &str) = ("", "rd_schema_items");

/// One contributor of a document, as its rows store it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Contributor {
    ext: String,
    /// The source document's id (`None`: raw data).
    source: Option<String>,
    /// Its `rd_source` as JSON (`[id, rev]` or `null`).
    rd_source: String,
    /// The document's `rd_key` as JSON.
    rd_key: String,
    /// Its `rd_deps`, each as JSON.
    deps: Vec<String>,
}

/// The contributors of a stored body (none for a document outside the model).
pub(super) fn contributors_of(body: &str) -> Vec<Contributor> {
    let doc = projected(body, &["rd_schema_items".to_string()]);
    let (Some(rd_key), Some(Value::Object(items))) = (doc.get("rd_key"), doc.get("rd_schema_items")) else { return Vec::new() };
    let rd_key = rd_key.to_string();
    items
        .iter()
        .map(|(ext, entry)| {
            let rd_source = entry.get("rd_source").cloned().unwrap_or(Value::Null);
            Contributor {
                ext: ext.clone(),
                source: rd_source.get(0).and_then(Value::as_str).map(str::to_string),
                rd_source: rd_source.to_string(),
                rd_key: rd_key.clone(),
                deps: entry.get("rd_deps").and_then(Value::as_array).map(|d| d.iter().map(Value::to_string).collect()).unwrap_or_default(),
            }
        })
        .collect()
}

/// Replaces document `id`'s contributor rows with `rows` (inside the write's transaction).
pub(super) fn write_contributors(tx: &rusqlite::Transaction<'_>, id: &str, rows: &[Contributor], existed: bool) -> rusqlite::Result<()> {
    if existed {
        tx.prepare_cached("DELETE FROM contributors WHERE id = ?1")?.execute([id])?;
        tx.prepare_cached("DELETE FROM contributor_deps WHERE id = ?1")?.execute([id])?;
    }
    for c in rows {
        tx.prepare_cached("INSERT OR REPLACE INTO contributors (id, ext, source, rd_source, rd_key) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![id, c.ext, c.source, c.rd_source, c.rd_key])?;
        for dep in &c.deps {
            tx.prepare_cached("INSERT OR IGNORE INTO contributor_deps (dep, id, ext) VALUES (?1, ?2, ?3)")?
                .execute(params![dep, id, c.ext])?;
        }
    }
    Ok(())
}

impl EmbeddedStore {
    /// Whether every write keeps the contributors table now.
    pub(super) fn contributors_kept(&self) -> bool {
        self.indexed.lock().unwrap_or_else(|p| p.into_inner()).get(CONTRIBUTORS_ON.0).is_some()
    }

    /// Makes sure the contributors table is kept: the first time, fills it from every live
    /// document (under the writer lock, so no write slips past) and records that it is kept.
    fn ensure_contributors(&self) -> Result<(), StoreError> {
        if self.contributors_kept() {
            return Ok(());
        }
        let _t = crate::timing::span("S:index");
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.contributors_kept() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.e(e))?;
        tx.execute("INSERT OR IGNORE INTO indexed_fields (schema, field) VALUES (?1, ?2)", params![CONTRIBUTORS_ON.0, CONTRIBUTORS_ON.1])
            .map_err(|e| self.e(e))?;
        tx.execute_batch("DELETE FROM contributors; DELETE FROM contributor_deps;").map_err(|e| self.e(e))?;
        let docs: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT id, body FROM docs WHERE schema IS NOT NULL AND deleted = 0").map_err(|e| self.e(e))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.e(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))?
        };
        for (id, body) in docs {
            write_contributors(&tx, &id, &contributors_of(&body), false).map_err(|e| self.e(e))?;
        }
        tx.commit().map_err(|e| self.e(e))?;
        self.indexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(CONTRIBUTORS_ON.0.to_string())
            .or_default()
            .push(CONTRIBUTORS_ON.1.into());
        Ok(())
    }

    pub(super) fn megaview_rows(&self, q: &ViewQuery) -> Result<Vec<ViewRow>, StoreError> {
        match &q.key {
            MegaKey::Schema(_) => {}
            MegaKey::Field(schema, field, _) => self.ensure_index(schema, field)?,
            _ => self.ensure_contributors()?,
        }
        let key = q.key.to_json();
        self.read(|c| rows_of(c, q, &key))
    }
}

/// The statement and its arguments for a key: rows of (id, rev, rd_key JSON or NULL, body when
/// rd_key is NULL, ext or NULL, rd_source JSON or NULL).
fn statement(key: &MegaKey) -> (&'static str, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as Sql;
    let text = |s: &str| Sql::Text(s.to_string());
    let source = |s: &Option<String>| s.as_deref().map_or(Sql::Null, text);
    match key {
        MegaKey::Schema(s) => {
            ("SELECT d.id, d.rev, NULL, d.body, NULL, NULL, d.schema FROM docs d WHERE d.schema = ?1 AND d.deleted = 0", vec![text(s)])
        }
        MegaKey::Field(schema, field, value) => (
            "SELECT d.id, d.rev, NULL, d.body, NULL, NULL, d.schema FROM field_index f JOIN docs d ON d.id = f.id
             WHERE f.schema = ?1 AND f.field = ?2 AND f.value = ?3 AND d.deleted = 0",
            vec![text(schema), text(field), text(&value.to_string())],
        ),
        MegaKey::Key(k) => (
            "SELECT DISTINCT d.id, d.rev, c.rd_key, NULL, NULL, NULL, d.schema FROM contributors c JOIN docs d ON d.id = c.id
             WHERE d.deleted = 0 AND c.rd_key = ?1",
            vec![text(&k.to_string())],
        ),
        MegaKey::KeySchema(k, s) => (
            "SELECT DISTINCT d.id, d.rev, c.rd_key, NULL, NULL, NULL, d.schema FROM contributors c JOIN docs d ON d.id = c.id
             WHERE d.deleted = 0 AND c.rd_key = ?1 AND d.schema = ?2",
            vec![text(&k.to_string()), text(s)],
        ),
        MegaKey::Ext(e) => (BY_EXT, vec![text(e)]),
        MegaKey::Source(s) => (BY_SOURCE, vec![source(s)]),
        MegaKey::ExtSource(e, s) => (BY_EXT_SOURCE, vec![text(e), source(s)]),
        MegaKey::Dep(dep) => (
            "SELECT d.id, d.rev, c.rd_key, NULL, c.ext, c.rd_source, d.schema FROM contributor_deps p
             JOIN contributors c ON c.id = p.id AND c.ext = p.ext JOIN docs d ON d.id = p.id
             WHERE d.deleted = 0 AND p.dep = ?1",
            vec![text(&dep.to_string())],
        ),
    }
}

const BY_EXT: &str = "SELECT d.id, d.rev, c.rd_key, NULL, c.ext, c.rd_source, d.schema FROM contributors c JOIN docs d ON d.id = c.id
     WHERE d.deleted = 0 AND c.ext = ?1";
const BY_SOURCE: &str = "SELECT d.id, d.rev, c.rd_key, NULL, c.ext, c.rd_source, d.schema FROM contributors c JOIN docs d ON d.id = c.id
     WHERE d.deleted = 0 AND c.source IS ?1";
const BY_EXT_SOURCE: &str =
    "SELECT d.id, d.rev, c.rd_key, NULL, c.ext, c.rd_source, d.schema FROM contributors c JOIN docs d ON d.id = c.id
     WHERE d.deleted = 0 AND c.ext = ?1 AND c.source IS ?2";

fn rows_of(c: &Connection, q: &ViewQuery, key: &Value) -> rusqlite::Result<Vec<ViewRow>> {
    let (head, args) = statement(&q.key);
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
        let rd_key: Value = match r.get::<_, Option<String>>(2)? {
            Some(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
            None => r
                .get::<_, Option<String>>(3)?
                .map(|body| projected(&body, &[]).remove("rd_key").unwrap_or(Value::Null))
                .unwrap_or(Value::Null),
        };
        let mut value = json!({ "_rev": rev, "rd_key": rd_key, "rd_schema_id": r.get::<_, Option<String>>(6)? });
        if let Some(ext) = r.get::<_, Option<String>>(4)? {
            value["rd_ext_id"] = Value::String(ext);
            value["rd_source"] = r.get::<_, Option<String>>(5)?.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
        }
        out.push(ViewRow { id, key: key.clone(), value });
    }
    Ok(out)
}
