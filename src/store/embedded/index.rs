//! The field index behind `find`: a (schema, field) is indexed the first time it is asked for
//! (or when `index_field` readies it), and every write after that keeps its rows.

use std::collections::HashMap;

use rusqlite::{params, Connection};
use serde_json::Value;

use super::rows::projected;
use super::EmbeddedStore;
use crate::store::{Doc, StoreError};

/// The live documents of a schema whose indexed field has a value: (id, rev, has_att, body).
pub(super) const FIND_BY_FIELD: &str = "SELECT d.id, d.rev, d.has_att, d.body FROM field_index f JOIN docs d ON d.id = f.id
     WHERE f.schema = ?1 AND f.field = ?2 AND f.value = ?3 AND d.deleted = 0
     ORDER BY d.seq LIMIT ?4";

/// Objects and arrays longer than this (as JSON) are not indexed, as in the CouchDB view;
/// scalars always are.
const MAX_INDEXED_VALUE: usize = 512;

/// A value as the index holds it: JSON text with numbers written one way (`1.0`, `1e0` and
/// `-0` as `1` and `0`), as CouchDB's collation compares them.
pub(super) fn index_text(value: &Value) -> String {
    // Most values hold no float to rewrite: printed as they are, not copied first.
    fn has_float(v: &Value) -> bool {
        match v {
            Value::Number(n) => n.is_f64(),
            Value::Array(items) => items.iter().any(has_float),
            Value::Object(map) => map.values().any(has_float),
            _ => false,
        }
    }
    if !has_float(value) {
        return value.to_string();
    }
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                _ => v.clone(),
            },
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect()),
            other => other.clone(),
        }
    }
    canonical(value).to_string()
}

/// Whether `value` gets an index row: scalars always, objects and arrays up to
/// [`MAX_INDEXED_VALUE`] bytes of JSON.
fn indexed(value: &Value, text: &str) -> bool {
    !(value.is_object() || value.is_array()) || text.len() <= MAX_INDEXED_VALUE
}

impl EmbeddedStore {
    /// Makes sure `field` of `schema` is indexed: the first time, records it and indexes every
    /// live document of the schema (under the writer lock, so no write slips past).
    pub(super) fn ensure_index(&self, schema: &str, field: &str) -> Result<(), StoreError> {
        if self.indexed.lock().unwrap_or_else(|p| p.into_inner()).get(schema).is_some_and(|f| f.iter().any(|x| x == field)) {
            return Ok(());
        }
        let _t = crate::timing::span("S:index");
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Builders take turns on the writer lock; finds on other fields go on meanwhile.
        if self.indexed.lock().unwrap_or_else(|p| p.into_inner()).get(schema).is_some_and(|f| f.iter().any(|x| x == field)) {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.e(e))?;
        tx.execute("INSERT OR IGNORE INTO indexed_fields (schema, field) VALUES (?1, ?2)", params![schema, field])
            .map_err(|e| self.e(e))?;
        let docs: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT id, body FROM docs WHERE schema = ?1 AND deleted = 0").map_err(|e| self.e(e))?;
            let rows = stmt.query_map([schema], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.e(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))?
        };
        let fields = [field.to_string()];
        for (id, body) in docs {
            for (f, value) in index_entries_of_text(&body, &fields) {
                tx.prepare_cached("INSERT OR IGNORE INTO field_index (schema, field, value, id) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut st| st.execute(params![schema, f, value, id]))
                    .map_err(|e| self.e(e))?;
            }
        }
        tx.commit().map_err(|e| self.e(e))?;
        self.indexed.lock().unwrap_or_else(|p| p.into_inner()).entry(schema.to_string()).or_default().push(field.to_string());
        Ok(())
    }
}

/// [`index_entries`] of a stored body, parsing only the indexed members.
pub(super) fn index_entries_of_text(body: &str, fields: &[String]) -> Vec<(String, String)> {
    let wanted: Vec<String> = fields.iter().map(|f| f.strip_suffix("[]").unwrap_or(f).to_string()).collect();
    index_entries(&projected(body, &wanted), fields)
}

/// The index rows of a document for the indexed `fields`: `(field, value as JSON)`. A field
/// named `name[]` indexes each element of the array `name`.
pub(super) fn index_entries(doc: &Doc, fields: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for field in fields {
        let (name, elements) = match field.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (field.as_str(), false),
        };
        match (doc.get(name), elements) {
            (Some(Value::Array(items)), true) => {
                for item in items {
                    let text = index_text(item);
                    if indexed(item, &text) && !out.iter().any(|(f, v)| f == field && *v == text) {
                        out.push((field.clone(), text));
                    }
                }
            }
            (Some(value), false) => {
                let text = index_text(value);
                if indexed(value, &text) {
                    out.push((field.clone(), text));
                }
            }
            _ => {}
        }
    }
    out
}

/// The indexed fields by schema, as the database records them.
pub(super) fn indexed_fields(conn: &Connection) -> rusqlite::Result<HashMap<String, Vec<String>>> {
    let mut indexed: HashMap<String, Vec<String>> = HashMap::new();
    let mut stmt = conn.prepare_cached("SELECT schema, field FROM indexed_fields")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (schema, field) = row?;
        indexed.entry(schema).or_default().push(field);
    }
    Ok(indexed)
}

#[cfg(test)]
mod tests {
    use super::index_text;
    use serde_json::json;

    #[test]
    fn numbers_are_indexed_one_way() {
        assert_eq!(index_text(&json!(1.0)), "1");
        assert_eq!(index_text(&json!(-0.0)), "0");
        assert_eq!(index_text(&json!(1.5)), "1.5");
        assert_eq!(index_text(&json!(["a", [2.0, {"x": 3.0}]])), r#"["a",[2,{"x":3}]]"#);
        assert_eq!(index_text(&json!(["email", "a@b"])), r#"["email","a@b"]"#);
    }
}
