//! The store-backed host functions: `open_schemas`, `open_attachment`, `find_schemas` (a
//! key/schema query) and `find_schemas_each` (the same for many values), `update_documents`,
//! `get_my_identities`. Each blocks only the runtime that calls it.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::js::{HostError, HostFunctions};
use crate::model;
use crate::store::{Find, Store, WriteResult};

/// Registers the store-backed functions in `host`, and `get_my_identities` answering
/// `identities` (the user's own identity ids, from the configuration).
pub fn register(host: &mut HostFunctions, store: Arc<dyn Store>, identities: Vec<Value>) {
    host.register("get_my_identities", move |_, _| Ok(Value::Array(identities.clone())));
    open_schemas(host, store.clone());
    read_ahead(host, store.clone());
    open_attachment(host, store.clone());
    find_schemas(host, store.clone());
    find_schemas_each(host, store.clone());
    open_view(host, store.clone());
    count_view(host, store.clone());
    update_documents(host, store);
}

/// `open_view({key | schema | schema, field, value | schema, field, prefix | source | ext |
/// dep, limit, skip, descending, include_docs})` → `[{id, key, value[, doc]}, …]`: rows of the
/// megaview (see `store::megaview`), at most `limit` (default 1,000).
fn open_view(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("open_view", move |_, args| {
        let o = args
            .first()
            .and_then(Value::as_object)
            .ok_or("open_view needs an object: {key | schema | field and value | source | ext | dep, limit, skip, descending}")?;
        let ask = crate::schema::ViewAsk::from_object(o).map_err(HostError)?;
        let key = ask.key(&*s).map_err(HostError)?;
        let number = |name: &str, default: u64| match o.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| HostError(format!("{name} must be a whole number"))),
        };
        let flag = |name: &str| match o.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(HostError(format!("{name} must be true or false, not {other}"))),
        };
        let query = crate::store::ViewQuery {
            key,
            limit: number("limit", 1000)? as usize,
            skip: number("skip", 0)? as usize,
            descending: flag("descending")?,
        };
        let rows = s.megaview(&query)?;
        let mut out: Vec<Value> = rows.iter().map(|r| json!({ "id": r.id, "key": r.key, "value": r.value })).collect();
        if flag("include_docs")? {
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            for (row, doc) in out.iter_mut().zip(s.get_docs(&ids)?) {
                row["doc"] = doc.map_or(Value::Null, Value::Object);
            }
        }
        Ok(Value::Array(out))
    });
}

/// `count_view({...})` → how many rows `open_view` would give for the question with no limit,
/// without reading them (the unread conversations of a group: the field index's entries on the
/// embedded store, the view's `_count` on CouchDB).
fn count_view(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("count_view", move |_, args| {
        let o = args.first().and_then(Value::as_object).ok_or("count_view needs an object, the question open_view takes")?;
        let key = crate::schema::ViewAsk::from_object(o).map_err(HostError)?.key(&*s).map_err(HostError)?;
        Ok(json!(s.megaview_count(&key)?))
    });
}

/// `add_schemas(items)` → one `{id, rev}` or `{id, error}` per item (see
/// [`super::register_api`]).
pub(super) fn register_add_schemas(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("add_schemas", move |_, args| {
        let items = args.first().and_then(Value::as_array).ok_or("add_schemas needs an array of items")?;
        let mut raw = Vec::with_capacity(items.len());
        for item in items {
            let mut fields = item.as_object().cloned().ok_or("every item must be an object {rd_key, rd_schema_id, …fields}")?;
            fields.entry("rd_ext_id").or_insert_with(|| json!("rd.api"));
            fields.entry("rd_confidence").or_insert_with(|| json!(10));
            raw.push(fields);
        }
        let results = crate::ingest::add_schemas(&*s, raw, crate::store::Durability::Immediate)?;
        Ok(Value::Array(
            results
                .into_iter()
                .map(|r| match r {
                    WriteResult::Ok { id, rev } => json!({"id": id, "rev": rev}),
                    WriteResult::Conflict { id } => json!({"id": id, "error": "conflict"}),
                    WriteResult::Error { id, reason } => json!({"id": id, "error": reason}),
                })
                .collect(),
        ))
    });
}

/// `changes_since(seq[, limit])` → `{last_seq, changes: [{id, deleted}, …]}`: up to `limit`
/// (default 1,000, at most 10,000) changes after `seq`; `changes_since(null)` gives only the
/// current `last_seq`, to start from.
pub(super) fn register_changes_since(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("changes_since", move |_, args| {
        let since = match args.first() {
            Some(Value::String(seq)) => crate::store::Seq::from_raw(seq.clone()),
            None | Some(Value::Null) => return Ok(json!({ "last_seq": s.info()?.update_seq, "changes": [] })),
            Some(other) => return Err(HostError(format!("changes_since: the seq is a string from an earlier answer, not {other}"))),
        };
        let limit = args.get(1).and_then(Value::as_u64).unwrap_or(1000).clamp(1, 10_000) as usize;
        let page = s.changes(&since, limit, false)?;
        let changes: Vec<Value> = page.changes.iter().map(|c| json!({ "id": c.id, "deleted": c.deleted })).collect();
        Ok(json!({ "last_seq": page.last_seq.as_str(), "changes": changes }))
    });
}

/// `open_documents([id, …][, fields])` → `[doc or null, …]`, as `open_schemas` by id.
pub(super) fn register_open_documents(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register_text("open_documents", move |_, args| {
        let ids = args.first().and_then(Value::as_array).ok_or("open_documents needs an array of document ids")?;
        let ids = ids.iter().map(|i| i.as_str().map(str::to_string).ok_or("document ids are strings")).collect::<Result<Vec<_>, _>>()?;
        let fields = field_list(args.get(1))?;
        let docs = s.get_many(&ids, fields.as_deref())?;
        Ok(json_list(docs.iter().map(|d| d.as_deref().unwrap_or("null"))))
    });
}

/// `open_schemas([[rd_key, schema_id], …][, fields])` → `[doc or null, …]`; with fields, each
/// cut down to them (a summary reads many bodies' few fields). The store's text goes to JS.
fn open_schemas(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register_text("open_schemas", move |_, args| {
        let wanted = args.first().and_then(Value::as_array).ok_or("open_schemas needs an array of [rd_key, schema_id] pairs")?;
        let mut ids = Vec::with_capacity(wanted.len());
        for pair in wanted {
            let (key, schema) = match pair.as_array().map(Vec::as_slice) {
                Some([key, Value::String(schema)]) => (key, schema),
                _ => return Err(HostError(format!("not an [rd_key, schema_id] pair: {pair}"))),
            };
            ids.push(model::doc_id(key, schema)?);
        }
        let fields = field_list(args.get(1))?;
        let docs = super::read_ahead::get_many(&*s, &ids, fields.as_deref())?;
        Ok(json_list(docs.iter().map(|d| d.as_deref().unwrap_or("null"))))
    });
}

/// `read_ahead({docs: [[rd_key, schema_id], …], finds: [{schema, field, value}, …],
/// attachments: [document id, …], reset})`: reads the documents, the finds' documents and the
/// given documents' attachments now, in as few requests as the store allows, so that
/// `open_schemas`, `find_schemas` and the attachment readers answer them from memory for the
/// rest of the call. The driver calls it at the start of every call, with `reset`, for what
/// the extension's `reads` and `reads_attachments` declare; an extension may call it too.
fn read_ahead(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("read_ahead", move |_, args| {
        let empty = serde_json::Map::new();
        let ask = match args.first() {
            Some(Value::Object(o)) => o,
            None | Some(Value::Null) => &empty,
            Some(other) => return Err(HostError(format!("read_ahead takes {{docs, finds, attachments}}, not {other}"))),
        };
        if ask.get("reset") == Some(&Value::Bool(true)) {
            super::read_ahead::reset();
        }
        let list = |name: &str| ask.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut ids = Vec::new();
        for pair in list("docs") {
            match pair.as_array().map(Vec::as_slice) {
                Some([key, Value::String(schema)]) => ids.push(model::doc_id(key, schema)?),
                _ => return Err(HostError(format!("not an [rd_key, schema_id] pair: {pair}"))),
            }
        }
        let mut finds = Vec::new();
        for f in list("finds") {
            match (f.get("schema"), f.get("field"), f.get("value")) {
                (Some(Value::String(schema)), Some(Value::String(field)), Some(value)) => {
                    finds.push(super::read_ahead::FindAhead { schema: schema.clone(), field: field.clone(), value: value.clone() })
                }
                _ => return Err(HostError(format!("a find is {{schema, field, value}}, not {f}"))),
            }
        }
        let mut with_attachments = Vec::new();
        for id in list("attachments") {
            with_attachments.push(id.as_str().ok_or("attachments are read by document id, a string")?.to_string());
        }
        super::read_ahead::fetch(&*s, &ids, &with_attachments, &finds)?;
        Ok(Value::Null)
    });
}

/// `open_attachment(doc or id, name[, {encoding: "base64"}])` → its text (UTF-8) or base64.
fn open_attachment(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("open_attachment", move |_, args| {
        let base64 = args.get(2).and_then(|o| o.get("encoding")).and_then(Value::as_str) == Some("base64");
        Ok(match read_attachment(&*s, &args)? {
            None => Value::Null,
            Some(data) if base64 => Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
            Some(data) => Value::String(String::from_utf8_lossy(&data).into_owned()),
        })
    });
}

/// `find_schemas(schema_id[, field, value[, limit[, fields]]])` → `[doc, …]`: a key/schema
/// query.
fn find_schemas(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register_text("find_schemas", move |_, args| {
        let schema = args.first().and_then(Value::as_str).ok_or("find_schemas needs a schema id")?;
        let by = match (args.get(1), args.get(2)) {
            (Some(Value::String(f)), Some(v)) => Some((f.as_str(), std::slice::from_ref(v))),
            (None | Some(Value::Null), _) => None,
            _ => return Err("find_schemas(schema_id, field, value): field must be a top-level field name".into()),
        };
        let limit = args.get(3).and_then(Value::as_u64).unwrap_or(1000) as usize;
        let fields = field_list(args.get(4))?;
        if let Some((field, [value])) = by {
            if let Some(found) = super::read_ahead::find(schema, field, value, limit, fields.as_deref()) {
                return Ok(json_list(found.iter().map(String::as_str)));
            }
        }
        let found = s.find(&Find { schema, by, limit, fields: fields.as_deref() })?;
        Ok(json_list(found.iter().flatten().map(String::as_str)))
    });
}

/// `find_schemas_each(schema_id, field, [value, …][, limit[, fields]])` → `[[doc, …], …]`:
/// `find_schemas` for each value, in one call.
fn find_schemas_each(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register_text("find_schemas_each", move |_, args| {
        let (schema, field, values) = match (args.first(), args.get(1), args.get(2)) {
            (Some(Value::String(s)), Some(Value::String(f)), Some(Value::Array(v))) => (s, f, v),
            _ => return Err("find_schemas_each needs a schema id, a top-level field name and an array of values".into()),
        };
        let limit = args.get(3).and_then(Value::as_u64).unwrap_or(1000) as usize;
        let fields = field_list(args.get(4))?;
        let found = s.find(&Find { schema, by: Some((field, values)), limit, fields: fields.as_deref() })?;
        let lists: Vec<String> = found.iter().map(|docs| json_list(docs.iter().map(String::as_str))).collect();
        Ok(json_list(lists.iter().map(String::as_str)))
    });
}

/// `update_documents([doc, …])` → `[{id, rev} | {id, error}, …]`; `_id` defaults to the id of
/// the document's `rd_key` and `rd_schema_id`; the pipeline's records and the server's special
/// documents are refused.
fn update_documents(host: &mut HostFunctions, s: Arc<dyn Store>) {
    host.register("update_documents", move |_, args| {
        let docs = args.first().and_then(Value::as_array).ok_or("update_documents needs an array of documents")?;
        let mut docs =
            docs.iter().map(|d| d.as_object().cloned().ok_or("every document must be an object")).collect::<Result<Vec<_>, _>>()?;
        // A document without `_id` gets the id of its `rd_key` and `rd_schema_id`.
        for doc in docs.iter_mut().filter(|d| !d.contains_key("_id")) {
            if let (Some(key), Some(Value::String(schema))) = (doc.get("rd_key"), doc.get("rd_schema_id")) {
                let id = model::doc_id(key, schema)?;
                doc.insert("_id".into(), Value::String(id));
            }
        }
        // What was read ahead is read again after a write.
        super::read_ahead::reset();
        // One answer per document, in order: the refused ones here, the others from the store.
        let mut answers: Vec<Option<Value>> = Vec::with_capacity(docs.len());
        let mut writes = Vec::new();
        for doc in docs {
            match doc.get("_id").and_then(Value::as_str) {
                Some(id) if crate::pipeline::is_reserved_id(id) => {
                    answers.push(Some(json!({"id": id, "error": "reserved: this id belongs to Raindrop's bookkeeping or to the server"})));
                }
                _ => {
                    answers.push(None);
                    writes.push(doc);
                }
            }
        }
        let mut results = s.bulk_write(writes)?.into_iter().map(|r| match r {
            WriteResult::Ok { id, rev } => json!({"id": id, "rev": rev}),
            WriteResult::Conflict { id } => json!({"id": id, "error": "conflict"}),
            WriteResult::Error { id, reason } => json!({"id": id, "error": reason}),
        });
        Ok(Value::Array(answers.into_iter().map(|a| a.unwrap_or_else(|| results.next().unwrap_or(Value::Null))).collect()))
    });
}

/// The attachment named by `args` (`[doc or id, name]`); a bare name finds the attachment any
/// contributor stored as `<ext>/<name>`.
pub(super) fn read_attachment(store: &dyn Store, args: &[Value]) -> Result<Option<Vec<u8>>, HostError> {
    let id = match args.first() {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Object(doc)) => doc.get("_id").and_then(Value::as_str).ok_or("the document has no _id")?.to_string(),
        _ => return Err("the first argument must be a document or its id".into()),
    };
    let name = args.get(1).and_then(Value::as_str).ok_or("the second argument must be an attachment name")?;
    if let Some(read) = super::read_ahead::attachment(&id, name) {
        return Ok(read);
    }
    let find = |doc: &crate::store::Doc| {
        doc.get("_attachments")
            .and_then(Value::as_object)
            .and_then(|a| a.keys().find(|k| k.rsplit_once('/').is_some_and(|(_, n)| n == name)).cloned())
    };
    let mut full = name.to_string();
    if !name.contains('/') {
        // The names in the document given, else (a bare id, or a document cut down to a few
        // fields) in the stored one.
        let given = args.first().and_then(Value::as_object).and_then(find);
        let found = match given {
            Some(f) => Some(f),
            None => store.get(&id, false)?.as_ref().and_then(find),
        };
        if let Some(found) = found {
            full = found;
        }
    }
    Ok(store.get_attachment(&id, &full)?.map(|att| att.data))
}

/// A JSON array of the JSON texts `items`.
fn json_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// The optional list of fields to keep (besides `rd_key`) of the documents a call reads: much
/// less to read and to hand to JS when a caller wants a few fields of many documents.
fn field_list(arg: Option<&Value>) -> Result<Option<Vec<String>>, HostError> {
    match arg {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map(str::to_string).ok_or_else(|| HostError(format!("field names must be strings, not {n}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(HostError(format!("the field list must be an array of names, not {other}"))),
    }
}
