//! Store-backed host functions for extensions: `open_schemas`, `open_attachment`,
//! `find_schemas` (a key/schema query), `update_documents`. Each blocks only the runtime that calls it.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use super::model;
use crate::js::HostFunctions;
use crate::store::{Store, WriteResult};

/// Registers the store-backed functions in `host`, and `get_my_identities` answering
/// `identities` (the user's own identity ids, from the configuration).
pub fn register_natives(host: &mut HostFunctions, store: Arc<dyn Store>, identities: Vec<Value>) {
    host.register("get_my_identities", move |_, _| Ok(Value::Array(identities.clone())));
    let s = store.clone();
    // open_schemas([[rd_key, schema_id], …][, fields]) → [doc or null, …]
    host.register("open_schemas", move |_, args| {
        let wanted = args.first().and_then(Value::as_array).ok_or("open_schemas needs an array of [rd_key, schema_id] pairs")?;
        let mut ids = Vec::with_capacity(wanted.len());
        for pair in wanted {
            let (key, schema) = match pair.as_array().map(Vec::as_slice) {
                Some([key, Value::String(schema)]) => (key, schema),
                _ => return Err(format!("not an [rd_key, schema_id] pair: {pair}")),
            };
            ids.push(model::doc_id(key, schema).map_err(|e| e.to_string())?);
        }
        let docs = s.get_many(&ids).map_err(|e| e.to_string())?;
        Ok(Value::Array(docs.into_iter().map(|d| d.map(|d| only_fields(d, args.get(1))).unwrap_or(Value::Null)).collect()))
    });
    let s = store.clone();
    // open_attachment(doc or id, name[, {encoding: "base64"}]) → text (UTF-8) or base64
    host.register("open_attachment", move |_, args| {
        let id = match args.first() {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Object(doc)) => doc.get("_id").and_then(Value::as_str).ok_or("the document has no _id")?.to_string(),
            _ => return Err("open_attachment needs a document or its id".into()),
        };
        let name = args.get(1).and_then(Value::as_str).ok_or("open_attachment needs an attachment name")?;
        let base64 = args.get(2).and_then(|o| o.get("encoding")).and_then(Value::as_str) == Some("base64");
        // A bare name finds the attachment any contributor stored as "<ext>/<name>".
        let mut full = name.to_string();
        if !name.contains('/') {
            if let Some(doc) = s.get(&id, false).map_err(|e| e.to_string())? {
                if let Some(found) = doc.get("_attachments").and_then(Value::as_object).and_then(|a| {
                    a.keys().find(|k| k.rsplit_once('/').is_some_and(|(_, n)| n == name)).cloned()
                }) {
                    full = found;
                }
            }
        }
        match s.get_attachment(&id, &full).map_err(|e| e.to_string())? {
            None => Ok(Value::Null),
            Some(att) if base64 => Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(att.data))),
            Some(att) => Ok(Value::String(String::from_utf8_lossy(&att.data).into_owned())),
        }
    });
    let s = store.clone();
    // find_schemas(schema_id[, field, value[, limit[, fields]]]) → [doc, …]: a key/schema query
    host.register("find_schemas", move |_, args| {
        let schema = args.first().and_then(Value::as_str).ok_or("find_schemas needs a schema id")?;
        let field = match (args.get(1), args.get(2)) {
            (Some(Value::String(f)), Some(v)) => Some((f.as_str(), v)),
            (None | Some(Value::Null), _) => None,
            _ => return Err("find_schemas(schema_id, field, value): field must be a top-level field name".into()),
        };
        let limit = args.get(3).and_then(Value::as_u64).unwrap_or(1000) as usize;
        let docs = s.find(schema, field, limit).map_err(|e| e.to_string())?;
        Ok(Value::Array(docs.into_iter().map(|d| only_fields(d, args.get(4))).collect()))
    });
    let s = store;
    // update_documents([doc, …]) → [{id, rev} | {id, error}, …]; `_id` defaults to the id of
    // the document's rd_key and rd_schema_id
    host.register("update_documents", move |_, args| {
        let docs = args.first().and_then(Value::as_array).ok_or("update_documents needs an array of documents")?;
        let mut docs = docs.iter().map(|d| d.as_object().cloned().ok_or("every document must be an object")).collect::<Result<Vec<_>, _>>()?;
        // A document without `_id` gets the id of its `rd_key` and `rd_schema_id`.
        for doc in docs.iter_mut().filter(|d| !d.contains_key("_id")) {
            if let (Some(key), Some(Value::String(schema))) = (doc.get("rd_key"), doc.get("rd_schema_id")) {
                let id = model::doc_id(key, schema).map_err(|e| e.to_string())?;
                doc.insert("_id".into(), Value::String(id));
            }
        }
        let results = s.bulk_write(docs).map_err(|e| e.to_string())?;
        Ok(Value::Array(results.into_iter().map(|r| match r {
            WriteResult::Ok { id, rev } => json!({"id": id, "rev": rev}),
            WriteResult::Conflict { id } => json!({"id": id, "error": "conflict"}),
            WriteResult::Error { id, reason } => json!({"id": id, "error": reason}),
        }).collect()))
    });
}

/// `doc`, cut down to `rd_key` and the fields named in `fields` when that is a list: much less
/// to hand to JS when a caller reads many documents for a few fields.
fn only_fields(mut doc: crate::store::Doc, fields: Option<&Value>) -> Value {
    if let Some(keep) = fields.and_then(Value::as_array) {
        doc.retain(|k, _| k == "rd_key" || keep.iter().any(|f| f.as_str() == Some(k.as_str())));
    }
    Value::Object(doc)
}
