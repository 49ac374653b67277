//! The document model, kept from the original Raindrop so its data and tools stay meaningful.
//!
//! One document per (`rd_key`, `rd_schema_id`), with id
//! `rc!<key type>.<base64(json(key value))>!<schema id>` where the JSON is Python's default
//! `json.dumps` (separators `", "` and `": "`, non-ASCII escaped), so ids match the original's.
//! Each contributing extension keeps its own entry in `rd_schema_items` (its `rd_source`, its
//! fields under `schema`, its `rd_deps`, and the fingerprint of the code that wrote it); the
//! top-level fields are the merge of the contributors in ascending confidence.
//!
//! As in the original, a lone contributor's fields are not repeated under its entry: its entry
//! has no `schema` key and its fields are the document's top-level fields (every key but `_*`
//! and the model's own `rd_key`, `rd_schema_id`, `rd_schema_items`, `rd_schema_provider`).
//! Most documents have one contributor, and a message body stored twice made every write, every
//! feed read and every handler call pay for it twice. With two or more contributors each entry
//! keeps its `schema`, so removing or re-merging one never has to guess whose a field is.
//!
//! Difference from the original, on purpose: each entry records `rd_fingerprint`, so edited
//! extensions are re-run.

mod merge;

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::store::Doc;

pub use merge::{
    apply_item, apply_item_at, contributions, holds_same_from_other_source, new_doc_body, remove_contributor, same_content, upgraded,
    Contribution,
};

/// The schema of the schema definitions' own documents, keyed `["schema", id]` (written by
/// `schema::install`; its `version` is what a raw item of that schema is written under).
pub const DEFINITION_SCHEMA: &str = "rd.schema.definition";

/// A schema item: what one extension contributes to one document.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaItem {
    pub rd_key: Value,
    pub schema_id: String,
    pub ext_id: String,
    /// `[source id, source rev]`, or `None` for raw data.
    pub rd_source: Option<(String, String)>,
    /// The fields, or `None` for an assertion schema (e.g. `rd.identity.exists`).
    pub items: Option<Fields>,
    pub deps: Vec<Value>,
    /// Attachments as given (`{name: {content_type, data(base64)}}`); stored as `<ext>/<name>`.
    pub attachments: Option<Map<String, Value>>,
    /// Whether this item completes (provides) the schema: providers and raw data do.
    pub provider: bool,
    pub confidence: f64,
    pub fingerprint: String,
    /// The version of the schema's definition the fields were checked against, recorded as the
    /// entry's `rd_schema_version` (none: no definition, which counts as version 1).
    pub version: Option<u32>,
}

/// An item's fields as the JSON text of an object, as the handler emitted them.
///
/// Kept as text from the JS thread to the store: most items make a new document with one
/// contributor, whose text is then the fields' text inside the model's members
/// ([`new_doc_body`]). Parsing every emission into values, copying them into a document and
/// printing that again was ~15% of the mail run's CPU, most of it on the writer thread. The
/// fields are parsed only when they merge into a document that exists ([`Fields::to_map`]).
///
/// No field is named like a member the store or the model owns ([`is_reserved_field`]): an
/// emitted `_id` and `_rev` replaced another document outright, and an `rd_schema_items`
/// would corrupt the merge.
#[derive(Debug, Clone)]
pub struct Fields(Box<RawValue>);

/// Whether a field name belongs to the store (`_id`, `_rev`, `_deleted`, `_attachments`, …)
/// or to the document model (`rd_key`, `rd_schema_id`, `rd_schema_items`, …): no extension
/// may emit one.
pub fn is_reserved_field(name: &str) -> bool {
    name.starts_with('_') || name.starts_with("rd_")
}

impl Fields {
    /// The fields of JSON text that must be an object without reserved names.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Fields, ModelError> {
        let text = raw.get();
        let reserved = match crate::json_text::members(text) {
            Some(members) => crate::json_text::names(text, &members).find(|n| is_reserved_field(n)).map(str::to_string),
            // Not an object, or a name written with escapes: read the names the slow way.
            None => match serde_json::from_str::<Map<String, Value>>(text) {
                Ok(map) => map.keys().find(|n| is_reserved_field(n)).cloned(),
                Err(_) => return Err(ModelError::NotAnObject(text.chars().take(60).collect())),
            },
        };
        match reserved {
            Some(name) => Err(ModelError::ReservedField(name)),
            None => Ok(Fields(raw)),
        }
    }

    /// The fields of `map`, leaving out reserved names (raw data written by `add-schemas`).
    pub fn from_map(map: &Map<String, Value>) -> Fields {
        let kept: Map<String, Value> = map.iter().filter(|(k, _)| !is_reserved_field(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        // A map of JSON values always prints.
        Fields(serde_json::value::to_raw_value(&kept).expect("a JSON map serialises"))
    }

    pub fn to_map(&self) -> Map<String, Value> {
        // Valid JSON text of an object (checked when made): the parse cannot fail.
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    pub fn text(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.text() == other.text() || self.to_map() == other.to_map()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("the fields must be an object, not {0}")]
    NotAnObject(String),
    #[error("field `{0}` is reserved: names starting with `_` or `rd_` belong to the store and the document model")]
    ReservedField(String),
    #[error("rd_key must be [key type (a string), key value], not {0}")]
    BadKey(String),
}

/// Python's `json.dumps(value)` with its default settings.
pub fn python_json(v: &Value) -> String {
    let mut out = String::new();
    write_python_json(v, &mut out);
    out
}

fn write_python_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            out.push('"');
            for unit in s.encode_utf16() {
                match unit {
                    0x22 => out.push_str("\\\""),
                    0x5c => out.push_str("\\\\"),
                    0x0a => out.push_str("\\n"),
                    0x0d => out.push_str("\\r"),
                    0x09 => out.push_str("\\t"),
                    0x08 => out.push_str("\\b"),
                    0x0c => out.push_str("\\f"),
                    0x20..=0x7e => out.push(unit as u8 as char),
                    _ => out.push_str(&format!("\\u{unit:04x}")),
                }
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(&Value::String(k.clone()), out);
                out.push_str(": ");
                write_python_json(item, out);
            }
            out.push('}');
        }
    }
}

/// The document id for (`rd_key`, `schema_id`).
pub fn doc_id(rd_key: &Value, schema_id: &str) -> Result<String, ModelError> {
    match rd_key.as_array().map(Vec::as_slice) {
        Some([Value::String(key_type), key_value]) => {
            Ok(format!("rc!{key_type}.{}!{schema_id}", base64::engine::general_purpose::STANDARD.encode(python_json(key_value))))
        }
        _ => Err(ModelError::BadKey(rd_key.to_string())),
    }
}

/// The `rd_key` a document id made by [`doc_id`] encodes; `None` for other documents.
pub fn rd_key_of_id(id: &str) -> Option<Value> {
    let rest = id.strip_prefix("rc!")?;
    // Base64 holds neither `.` nor `!`.
    let (key, schema) = rest.rsplit_once('!')?;
    let (key_type, encoded) = key.rsplit_once('.')?;
    let json = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let value: Value = serde_json::from_slice(&json).ok()?;
    let rd_key = Value::Array(vec![Value::String(key_type.to_string()), value]);
    // Read back only if it makes the same id (a `!` in a schema id would fool the cut).
    (doc_id(&rd_key, schema).ok()? == id).then_some(rd_key)
}

/// The schema id of a document id made by [`doc_id`]; `None` for other documents.
pub fn schema_of_id(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("rc!")?;
    rest.rsplit_once('!').map(|(_, schema)| schema)
}

/// The write that deletes document `id` at revision `rev`.
pub fn tombstone(id: &str, rev: Option<Value>) -> Doc {
    let mut doc = Map::new();
    doc.insert("_id".into(), Value::String(id.to_string()));
    doc.insert("_rev".into(), rev.unwrap_or(Value::Null));
    doc.insert("_deleted".into(), Value::Bool(true));
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_match_the_originals() {
        // From the original's docs: ["acct","INBOX"] encodes with Python's ", " separator.
        assert_eq!(base64::engine::general_purpose::STANDARD.encode(python_json(&json!(["acct", "INBOX"]))), "WyJhY2N0IiwgIklOQk9YIl0=");
        assert_eq!(python_json(&json!({"a": [1, "é😀\n"]})), r#"{"a": [1, "\u00e9\ud83d\ude00\n"]}"#);
        let id = doc_id(&json!(["email", "d3d08a8a534c464881a95b75300e9011@something"]), "rd.msg.body").unwrap();
        assert_eq!(id, "rc!email.ImQzZDA4YThhNTM0YzQ2NDg4MWE5NWI3NTMwMGU5MDExQHNvbWV0aGluZyI=!rd.msg.body");
        assert_eq!(schema_of_id(&id), Some("rd.msg.body"));
        assert_eq!(rd_key_of_id(&id), Some(json!(["email", "d3d08a8a534c464881a95b75300e9011@something"])));
        let odd = json!(["conv", ["email", "é!.x"]]);
        assert_eq!(rd_key_of_id(&doc_id(&odd, "rd.conv.summary").unwrap()), Some(odd));
        assert_eq!(rd_key_of_id("rdstate!x"), None);
        assert_eq!(schema_of_id("sample!x"), None);
        assert!(doc_id(&json!("nope"), "s").is_err());
        assert!(doc_id(&json!([1, 2]), "s").is_err());
    }
}
