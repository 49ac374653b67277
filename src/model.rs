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

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::store::Doc;

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
        Some([Value::String(key_type), key_value]) => Ok(format!(
            "rc!{key_type}.{}!{schema_id}",
            base64::engine::general_purpose::STANDARD.encode(python_json(key_value))
        )),
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

/// Adds (or replaces) `item`'s contribution in `existing` (the current document, if any) and
/// returns the new document. `_id` and `_rev` are kept from `existing`.
pub fn apply_item(existing: Option<&Doc>, item: &SchemaItem) -> Result<Doc, ModelError> {
    let id = doc_id(&item.rd_key, &item.schema_id)?;
    apply_item_at(&id, existing, item)
}

/// `item`'s entry in `rd_schema_items`, without its `schema` (its fields).
fn contributor_entry(item: &SchemaItem) -> Map<String, Value> {
    let mut entry = Map::new();
    entry.insert(
        "rd_source".into(),
        match &item.rd_source {
            Some((sid, srev)) => Value::Array(vec![Value::String(sid.clone()), Value::String(srev.clone())]),
            None => Value::Null,
        },
    );
    if !item.deps.is_empty() {
        entry.insert("rd_deps".into(), Value::Array(item.deps.clone()));
    }
    entry.insert("confidence".into(), number(item.confidence));
    entry.insert("rd_fingerprint".into(), Value::String(item.fingerprint.clone()));
    if item.provider {
        entry.insert("provider".into(), Value::Bool(true));
    }
    entry
}

/// The stored body (every member but `_id`) of the document `item` makes when its document does
/// not exist yet: what [`apply_item_at`] would give with no existing document, built from the
/// fields' text without parsing them. `None` when that shortcut does not apply: the item has
/// attachments.
pub fn new_doc_body(item: &SchemaItem) -> Option<String> {
    if item.attachments.is_some() {
        return None;
    }
    let mut entry = contributor_entry(item);
    let fields = match &item.items {
        Some(fields) => {
            let text = fields.text().trim();
            // Checked when made: an object without reserved names; the members between the
            // braces.
            Some(text.strip_prefix('{')?.strip_suffix('}')?.trim())
        }
        None => {
            entry.insert("schema".into(), Value::Null);
            None
        }
    };
    let provider = item.provider || item.rd_source.is_none();
    // Model members printed as serde_json prints them; their values are small.
    fn json(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    let (rd_key, ext, entry) = (json(&item.rd_key), json(&item.ext_id), json(&Value::Object(entry)));
    // Sized once: the fields are most of it, and growing would copy them.
    let mut body = String::with_capacity(fields.map_or(0, str::len) + rd_key.len() + 2 * ext.len() + entry.len() + item.schema_id.len() + 80);
    body.push_str("{\"rd_key\":");
    body.push_str(&rd_key);
    body.push_str(",\"rd_schema_id\":");
    body.push_str(&json(&item.schema_id));
    if let Some(f) = fields.filter(|f| !f.is_empty()) {
        body.push(',');
        body.push_str(f);
    }
    if provider {
        body.push_str(",\"rd_schema_provider\":");
        body.push_str(&ext);
    }
    body.push_str(",\"rd_schema_items\":{");
    body.push_str(&ext);
    body.push(':');
    body.push_str(&entry);
    body.push_str("}}");
    Some(body)
}


/// [`apply_item`] for a caller that has the document's id already (it is `item`'s).
pub fn apply_item_at(id: &str, existing: Option<&Doc>, item: &SchemaItem) -> Result<Doc, ModelError> {
    let mut contributors: Map<String, Value> = existing.map(contributors).unwrap_or_default();
    let mut entry = contributor_entry(item);
    entry.insert("schema".into(), item.items.as_ref().map(|f| Value::Object(f.to_map())).unwrap_or(Value::Null));
    contributors.insert(item.ext_id.clone(), Value::Object(entry));

    let mut attachments: Map<String, Value> = existing
        .and_then(|d| d.get("_attachments"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let prefix = format!("{}/", item.ext_id);
    attachments.retain(|name, _| !name.starts_with(&prefix));
    if let Some(atts) = &item.attachments {
        for (name, att) in atts {
            attachments.insert(format!("{prefix}{name}"), att.clone());
        }
    }
    Ok(aggregate(id, existing, &item.rd_key, &item.schema_id, contributors, attachments))
}

/// Whether `doc` already holds what `item` says, from another source of the same extension.
/// Such an item is not written: two sources whose outputs coincide (two messages placing a third
/// in one conversation) would otherwise take the extension's one entry from each other on every
/// run, each write waking the other's dependencies, for ever.
pub fn holds_same_from_other_source(doc: &Doc, item: &SchemaItem) -> bool {
    // Read in place: this runs for every item whose document exists, and copying the
    // contributors (a lone one's fields included) only to compare was most of its cost.
    let Some(entries) = doc.get("rd_schema_items").and_then(Value::as_object) else { return false };
    let Some(entry) = entries.get(&item.ext_id) else { return false };
    let other_source = match (&item.rd_source, entry.get("rd_source").and_then(Value::as_array)) {
        (Some((id, _)), Some(src)) => src.first().and_then(Value::as_str) != Some(id.as_str()),
        _ => false,
    };
    if !other_source || item.attachments.is_some() || entry.get("confidence").and_then(Value::as_f64) != Some(item.confidence) {
        return false;
    }
    let fields = item.items.as_ref().map(Fields::to_map);
    match (entry.get("schema"), &fields) {
        (Some(Value::Object(held)), Some(fields)) => held == fields,
        (Some(Value::Null), None) => true,
        // A lone contributor's fields are the document's own (see `contributors`).
        (None, Some(fields)) if entries.len() == 1 => {
            let own = doc.keys().filter(|k| !k.starts_with('_') && !MODEL_KEYS.contains(&k.as_str())).count();
            own == fields.len() && fields.iter().all(|(k, v)| doc.get(k) == Some(v))
        }
        _ => false,
    }
}

/// Removes extension `ext_id`'s contribution; `None` when no contributor is left (the document
/// should then be deleted).
pub fn remove_contributor(existing: &Doc, ext_id: &str) -> Option<Doc> {
    let mut contributors = contributors(existing);
    contributors.remove(ext_id);
    if contributors.is_empty() {
        return None;
    }
    let mut attachments = existing.get("_attachments").and_then(Value::as_object).cloned().unwrap_or_default();
    let prefix = format!("{ext_id}/");
    attachments.retain(|name, _| !name.starts_with(&prefix));
    let id = existing.get("_id").and_then(Value::as_str).unwrap_or_default().to_string();
    let rd_key = existing.get("rd_key").cloned().unwrap_or(Value::Null);
    let schema = existing.get("rd_schema_id").and_then(Value::as_str).unwrap_or_default().to_string();
    Some(aggregate(&id, Some(existing), &rd_key, &schema, contributors, attachments))
}

/// The keys of a schema document that are the model's, not a contributor's field.
const MODEL_KEYS: [&str; 4] = ["rd_key", "rd_schema_id", "rd_schema_items", "rd_schema_provider"];

/// A document's contributor entries, each with its `schema`: a lone contributor's fields are
/// read back from the top level (see the module's note).
fn contributors(doc: &Doc) -> Map<String, Value> {
    let mut contributors = doc.get("rd_schema_items").and_then(Value::as_object).cloned().unwrap_or_default();
    if contributors.len() == 1 {
        if let Some(Value::Object(entry)) = contributors.values_mut().next() {
            if !entry.contains_key("schema") {
                let fields: Map<String, Value> = doc
                    .iter()
                    .filter(|(k, _)| !k.starts_with('_') && !MODEL_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                entry.insert("schema".into(), Value::Object(fields));
            }
        }
    }
    contributors
}

/// Builds a document from its contributors: fields merged in ascending confidence (ties by
/// extension id, so the result does not depend on arrival order).
fn aggregate(
    id: &str,
    existing: Option<&Doc>,
    rd_key: &Value,
    schema_id: &str,
    mut contributors: Map<String, Value>,
    attachments: Map<String, Value>,
) -> Doc {
    let mut doc = Map::new();
    doc.insert("_id".into(), Value::String(id.to_string()));
    if let Some(rev) = existing.and_then(|d| d.get("_rev")) {
        doc.insert("_rev".into(), rev.clone());
    }
    doc.insert("rd_key".into(), rd_key.clone());
    doc.insert("rd_schema_id".into(), Value::String(schema_id.to_string()));
    let lone = contributors.len() == 1;
    let provider = {
        let mut order: Vec<(&String, &Value)> = contributors.iter().collect();
        order.sort_by(|a, b| {
            let ca = a.1.get("confidence").and_then(Value::as_f64).unwrap_or(0.0);
            let cb = b.1.get("confidence").and_then(Value::as_f64).unwrap_or(0.0);
            ca.total_cmp(&cb).then_with(|| a.0.cmp(b.0))
        });
        if !lone {
            for (_, entry) in &order {
                if let Some(fields) = entry.get("schema").and_then(Value::as_object) {
                    for (k, v) in fields {
                        doc.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        order
            .iter()
            .find(|(_, entry)| {
                entry.get("provider").and_then(Value::as_bool).unwrap_or(false) || entry.get("rd_source").is_some_and(Value::is_null)
            })
            .map(|(ext, _)| (*ext).clone())
    };
    if lone {
        if let Some(Value::Object(entry)) = contributors.values_mut().next() {
            // Fields (not an assertion's null) live at the top level only: moved, not copied.
            if entry.get("schema").is_some_and(Value::is_object) {
                if let Some(Value::Object(fields)) = entry.remove("schema") {
                    doc.extend(fields);
                }
            }
        }
    }
    if let Some(p) = provider {
        doc.insert("rd_schema_provider".into(), Value::String(p));
    }
    doc.insert("rd_schema_items".into(), Value::Object(contributors));
    if !attachments.is_empty() {
        doc.insert("_attachments".into(), Value::Object(attachments));
    }
    doc
}

/// The write that deletes document `id` at revision `rev`.
pub fn tombstone(id: &str, rev: Option<Value>) -> Doc {
    let mut doc = Map::new();
    doc.insert("_id".into(), Value::String(id.to_string()));
    doc.insert("_rev".into(), rev.unwrap_or(Value::Null));
    doc.insert("_deleted".into(), Value::Bool(true));
    doc
}

/// Whether two versions of a document say the same thing (ignoring `_rev` and how the store
/// reports attachments), so an unchanged result is not written again.
pub fn same_content(a: &Doc, b: &Doc) -> bool {
    let significant = |d: &Doc| d.keys().filter(|k| *k != "_rev").count();
    if significant(a) != significant(b) {
        return false;
    }
    a.iter().filter(|(k, _)| *k != "_rev").all(|(k, va)| match (k.as_str(), b.get(k)) {
        (_, None) => false,
        ("_attachments", Some(vb)) => same_attachments(va, vb),
        (_, Some(vb)) => same_value(va, vb),
    })
}

/// JSON equality where numbers compare by value: a server that stores `0.0` gives back `0`.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, vx)| y.get(k).is_some_and(|vy| same_value(vx, vy)))
        }
        _ => a == b,
    }
}

/// A whole number as an integer (as JavaScript and CouchDB write it), anything else as a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// Attachments compare by name and content type: bodies are stored once and not re-sent.
fn same_attachments(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().all(|(name, x)| b.get(name).is_some_and(|y| x.get("content_type") == y.get("content_type")))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(ext: &str, confidence: f64, fields: Value) -> SchemaItem {
        SchemaItem {
            rd_key: json!(["email", "a@b"]),
            schema_id: "rd.msg.body".into(),
            ext_id: ext.into(),
            rd_source: Some(("src".into(), "1-x".into())),
            items: fields.as_object().map(Fields::from_map),
            deps: vec![],
            attachments: None,
            provider: true,
            confidence,
            fingerprint: "fp".into(),
        }
    }

    #[test]
    fn a_new_documents_text_is_what_the_merge_makes() {
        let raw = |text: &str| Fields::from_raw(RawValue::from_string(text.to_string()).unwrap()).unwrap();
        let mut cases = vec![
            item("ext.a", 0.0, json!({"body": "x \" é", "n": [1, 2.5, {"k": null}]})),
            item("ext.a", 0.0, json!({})),
            item("ext.a", 10.0, Value::Null),
        ];
        let mut extender = item("ext.b", 5.0, json!({"tag": "t"}));
        extender.provider = false;
        extender.deps = vec![json!([["email", "d"], "rd.msg.body"])];
        cases.push(extender);
        let mut raw_data = item("proto.import", 0.0, json!({"a": 1}));
        raw_data.rd_source = None;
        raw_data.provider = false;
        cases.push(raw_data);
        let mut spaced = item("ext.c", 0.0, Value::Null);
        spaced.items = Some(raw(" { \"a\" : [ 1 ] , \"b\":{} } "));
        cases.push(spaced);
        for case in cases {
            let mut merged = apply_item(None, &case).unwrap();
            merged.remove("_id");
            let body = new_doc_body(&case).expect("a plain item");
            assert_eq!(serde_json::from_str::<Doc>(&body).unwrap(), merged, "{body}");
        }
        // Members the model or the store own cannot be fields at all.
        for named in [r#"{"rd_key": 1}"#, r#"{"_id": "x"}"#, r#"{"a": 1, "rd_schema_items": {}}"#, r#"{"\u005frev": "1-x"}"#, r#"{"rd_anything": 0}"#] {
            let refused = Fields::from_raw(RawValue::from_string(named.to_string()).unwrap());
            assert!(matches!(refused, Err(ModelError::ReservedField(_))), "{named}: {refused:?}");
        }
        assert_eq!(Fields::from_map(json!({"_id": 1, "rd_x": 2, "a": 3}).as_object().unwrap()).text(), r#"{"a":3}"#);
        let mut attached = item("ext.a", 0.0, json!({"a": 1}));
        attached.attachments = Some(Map::new());
        assert_eq!(new_doc_body(&attached), None);
        assert!(Fields::from_raw(RawValue::from_string("[1]".into()).unwrap()).is_err());
    }

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

    #[test]
    fn contributors_merge_in_ascending_confidence() {
        let low = item("ext.low", 0.0, json!({"subject": "low", "only_low": 1}));
        let high = item("ext.high", 1.0, json!({"subject": "high"}));
        let d1 = apply_item(None, &high).unwrap();
        let d2 = apply_item(Some(&d1), &low).unwrap();
        assert_eq!(d2["subject"], "high");
        assert_eq!(d2["only_low"], 1);
        assert_eq!(d2["rd_schema_items"].as_object().unwrap().len(), 2);
        assert_eq!(d2["rd_schema_items"]["ext.low"]["schema"]["subject"], "low", "two contributors keep their own fields");
        // The order of arrival does not matter.
        let d3 = apply_item(Some(&apply_item(None, &low).unwrap()), &high).unwrap();
        assert!(same_content(&d2, &d3));
        assert_eq!(d2["rd_schema_provider"], "ext.low");
    }

    #[test]
    fn removing_contributors_restores_the_rest_and_deletes_the_last() {
        let a = item("ext.a", 0.0, json!({"x": 1}));
        let b = item("ext.b", 1.0, json!({"x": 2, "y": 3}));
        let both = apply_item(Some(&apply_item(None, &a).unwrap()), &b).unwrap();
        assert_eq!(both["x"], 2);
        let only_a = remove_contributor(&both, "ext.b").unwrap();
        assert_eq!(only_a["x"], 1);
        assert!(only_a.get("y").is_none());
        assert!(only_a["rd_schema_items"]["ext.a"].get("schema").is_none(), "a lone contributor's fields are the top level");
        assert!(remove_contributor(&only_a, "ext.a").is_none());
        // A second contributor joining a lone one takes its fields back from the top level.
        let again = apply_item(Some(&only_a), &b).unwrap();
        assert!(same_content(&again, &both));
        assert_eq!(again["rd_schema_items"]["ext.a"]["schema"], json!({"x": 1}));
    }

    #[test]
    fn extenders_do_not_provide_and_raw_data_does() {
        let mut ext = item("ext.extender", 0.0, json!({"tag": 1}));
        ext.provider = false;
        let d = apply_item(None, &ext).unwrap();
        assert!(d.get("rd_schema_provider").is_none());
        let mut raw = item("proto.imap", 0.0, json!({}));
        raw.provider = false;
        raw.rd_source = None;
        let d = apply_item(Some(&d), &raw).unwrap();
        assert_eq!(d["rd_schema_provider"], "proto.imap");
    }

    #[test]
    fn numbers_compare_by_value() {
        let a = json!({"_id": "x", "_rev": "1-a", "n": 0.0, "l": [1.5, {"k": 2}]}).as_object().cloned().unwrap();
        let b = json!({"_id": "x", "_rev": "2-b", "n": 0, "l": [1.5, {"k": 2.0}]}).as_object().cloned().unwrap();
        assert!(same_content(&a, &b));
        let c = json!({"_id": "x", "n": 1, "l": [1.5, {"k": 2}]}).as_object().cloned().unwrap();
        assert!(!same_content(&a, &c));
        assert_eq!(number(0.0), json!(0));
        assert_eq!(number(0.5), json!(0.5));
    }

    #[test]
    fn attachments_are_named_for_their_extension() {
        let mut a = item("ext.a", 0.0, json!({}));
        a.attachments = json!({"rfc822": {"content_type": "message/rfc822", "data": "aGk="}}).as_object().cloned();
        let d = apply_item(None, &a).unwrap();
        assert!(d["_attachments"].get("ext.a/rfc822").is_some());
        let mut again = a.clone();
        again.attachments = None;
        let d2 = apply_item(Some(&d), &again).unwrap();
        assert!(d2.get("_attachments").is_none(), "an item emitted again without it drops it");
    }

    #[test]
    fn the_same_output_from_another_source_is_not_rewritten() {
        let a = item("ext", 0.0, json!({"conversation_id": ["conv", 1]}));
        let doc = apply_item(None, &a).unwrap();
        let mut b = a.clone();
        b.rd_source = Some(("other".into(), "1-y".into()));
        assert!(holds_same_from_other_source(&doc, &b), "same fields, other source: keep");
        assert!(!holds_same_from_other_source(&doc, &a), "the same source re-emitting is applied");
        b.items = json!({"conversation_id": ["conv", 2]}).as_object().map(Fields::from_map);
        assert!(!holds_same_from_other_source(&doc, &b), "different fields are applied");
        b.items = json!({"conversation_id": ["conv", 1], "more": 1}).as_object().map(Fields::from_map);
        assert!(!holds_same_from_other_source(&doc, &b), "more fields are applied");
        // With two contributors each entry holds its own fields.
        let both = apply_item(Some(&doc), &item("ext2", 1.0, json!({"tag": "x"}))).unwrap();
        b.items = a.items.clone();
        assert!(holds_same_from_other_source(&both, &b));
        b.items = json!({"tag": "x"}).as_object().map(Fields::from_map);
        assert!(!holds_same_from_other_source(&both, &b), "another contributor's fields are not this one's");
    }
}
