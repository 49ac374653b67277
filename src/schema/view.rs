//! Asking the megaview the way a user thinks of it — by key, schema, field and value, source,
//! extension or dependency — for `open_view` and `raindrop db megaview`. A field the schema's
//! definition calls `expandable` is looked up element by element (its `field[]` rows), as the
//! original's `rd_megaview_expandable` did; the definition is read from its document in the
//! database, so any process asking gets the same answer.

use serde_json::Value;

use super::DEFINITION_SCHEMA;
use crate::model;
use crate::store::{MegaKey, Store, StoreError};

/// The parts of a megaview question; which may go together is checked by [`ViewAsk::key`].
#[derive(Debug, Clone, Default)]
pub struct ViewAsk {
    pub key: Option<Value>,
    pub schema: Option<String>,
    pub field: Option<String>,
    pub value: Option<Value>,
    /// Instead of `value`: every value that is an array starting with these elements, in order.
    pub prefix: Option<Vec<Value>>,
    /// `Some(None)`: raw data, with no source.
    pub source: Option<Option<String>>,
    pub ext: Option<String>,
    pub dep: Option<Value>,
}

impl ViewAsk {
    /// Reads the question's parts from an object (`open_view({...})`): `key`, `schema`,
    /// `field` and `value` (or `prefix`), `source`, `ext`, `dep`.
    pub fn from_object(o: &serde_json::Map<String, Value>) -> Result<ViewAsk, String> {
        let text = |name: &str| match o.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{name} must be a string, not {other}")),
        };
        Ok(ViewAsk {
            key: o.get("key").cloned(),
            schema: text("schema")?,
            field: text("field")?,
            value: o.get("value").cloned(),
            prefix: match o.get("prefix") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(items.clone()),
                Some(other) => return Err(format!("prefix must be an array (the first elements of the values asked), not {other}")),
            },
            source: match o.get("source") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(Value::String(s)) => Some(Some(s.clone())),
                Some(other) => return Err(format!("source must be a document id or null, not {other}")),
            },
            ext: text("ext")?,
            dep: o.get("dep").cloned(),
        })
    }

    /// The one megaview key the parts make: `key` (with `schema`: that document), `schema`
    /// (with `field` and `value`: by a field's value; with `field` and `prefix`: the values that
    /// are arrays starting so, in order), `ext` and/or `source`, or `dep`.
    pub fn key(&self, store: &dyn Store) -> Result<MegaKey, String> {
        let many = "ask by one of: key (and schema), schema (and field with value or prefix), ext and/or source, dep";
        let field_of = |s: &str, f: &str| -> Result<String, String> {
            let expand = !f.ends_with("[]") && expandable(store, s, f).map_err(|e| e.to_string())?;
            Ok(if expand { format!("{f}[]") } else { f.to_string() })
        };
        if let Some(prefix) = &self.prefix {
            return match self {
                ViewAsk { key: None, schema: Some(s), field: Some(f), value: None, source: None, ext: None, dep: None, .. } => {
                    Ok(MegaKey::FieldPrefix(s.clone(), field_of(s, f)?, prefix.clone()))
                }
                _ => Err("prefix goes with schema and field alone (instead of value)".into()),
            };
        }
        match self {
            ViewAsk { key: Some(k), schema, field: None, value: None, source: None, ext: None, dep: None, .. } => {
                let id = |schema: &str| model::doc_id(k, schema).map_err(|e| e.to_string());
                Ok(match schema {
                    Some(s) => MegaKey::KeySchema { key: k.clone(), schema: s.clone(), id: id(s)? },
                    None => MegaKey::Key { key: k.clone(), id_prefix: id("")? },
                })
            }
            ViewAsk { key: None, schema: Some(s), field: None, value: None, source: None, ext: None, dep: None, .. } => {
                Ok(MegaKey::Schema(s.clone()))
            }
            ViewAsk { key: None, schema: Some(s), field: Some(f), value: Some(v), source: None, ext: None, dep: None, .. } => {
                Ok(MegaKey::Field(s.clone(), field_of(s, f)?, v.clone()))
            }
            ViewAsk { field: Some(_), value: None, .. } | ViewAsk { field: None, value: Some(_), .. } => {
                Err("field and value go together (and with schema)".into())
            }
            ViewAsk { key: None, schema: None, field: None, value: None, source: Some(s), ext: Some(e), dep: None, .. } => {
                Ok(MegaKey::ExtSource(e.clone(), s.clone()))
            }
            ViewAsk { key: None, schema: None, field: None, value: None, source: None, ext: Some(e), dep: None, .. } => {
                Ok(MegaKey::Ext(e.clone()))
            }
            ViewAsk { key: None, schema: None, field: None, value: None, source: Some(s), ext: None, dep: None, .. } => {
                Ok(MegaKey::Source(s.clone()))
            }
            ViewAsk { key: None, schema: None, field: None, value: None, source: None, ext: None, dep: Some(d), .. } => {
                Ok(MegaKey::Dep(d.clone()))
            }
            _ => Err(many.into()),
        }
    }
}

/// Whether `field` of `schema` is expandable, by the definition's document in the database.
fn expandable(store: &dyn Store, schema: &str, field: &str) -> Result<bool, StoreError> {
    let id = model::doc_id(&serde_json::json!(["schema", schema]), DEFINITION_SCHEMA).unwrap_or_default();
    let Some(text) = store.get_many(&[id], Some(&["expandable".to_string()]))?.pop().flatten() else { return Ok(false) };
    let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(doc.get("expandable").and_then(Value::as_array).is_some_and(|e| e.iter().any(|f| f.as_str() == Some(field))))
}
