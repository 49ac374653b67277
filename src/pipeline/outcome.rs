//! What a handler's outcome gives its page: the schema items it emitted (or the error document
//! that takes their place), the contributions it withdrew or no longer makes, the documents
//! its outputs depend on, its `process_later` values, and its new state entry.

use serde_json::{json, Map, Value};

use super::source::Source;
use super::state::StateEntry;
use super::{Ext, ERROR_SCHEMA};
use crate::js::{DocOutcome, EmittedItem, FailureKind, HandlerError};
use crate::model::{self, SchemaItem};

/// What one job (an extension on a source) gives its page.
pub(super) struct JobResult {
    pub(super) later: Vec<Value>,
    pub(super) items: Vec<SchemaItem>,
    /// (document id, extension id) contributions to withdraw.
    pub(super) removals: Vec<(String, String)>,
    /// (document depended on, source, extension).
    pub(super) dependencies: Vec<(String, String, String)>,
    /// Its entry in the source's state record.
    pub(super) state: StateEntry,
    pub(super) error: Option<HandlerError>,
}

/// What `ext` running on `src` (whose state entry was `previous`) gives the page.
pub(super) fn job_result(src: &Source, ext: &Ext, previous: Option<&StateEntry>, outcome: DocOutcome) -> JobResult {
    let mut later = Vec::new();
    let mut withdrawn: Vec<(String, String)> = Vec::new();
    let (mut produced, error) = match outcome {
        DocOutcome::Emitted(emission) => {
            later = emission.later;
            let (taken_back, emitted): (Vec<EmittedItem>, Vec<EmittedItem>) = emission.items.into_iter().partition(|e| e.withdraw);
            match withdrawals(ext, Some(&src.rd_key), taken_back) {
                Ok(w) => {
                    withdrawn = w;
                    items_from_emission(src, ext, emitted)
                }
                Err(e) => (Vec::new(), Some(e)),
            }
        }
        DocOutcome::Failed(e) => (Vec::new(), Some(e)),
    };
    if let Some(e) = &error {
        produced.push(error_item(&src.rd_key, (&src.id, &src.rev), ext, e));
    }
    let mut outputs: Vec<String> = produced.iter().filter_map(|i| model::doc_id(&i.rd_key, &i.schema_id).ok()).collect();
    let mut dependencies = Vec::new();
    for item in &produced {
        for dep in &item.deps {
            if let Some(Ok(dep_id)) = dep.as_array().and_then(|d| Some(model::doc_id(d.first()?, d.get(1)?.as_str()?))) {
                dependencies.push((dep_id, src.id.clone(), ext.id.clone()));
            }
        }
    }
    // What `withdraw_schema` named goes (unless the call failed) and is no output.
    if error.is_some() {
        withdrawn.clear();
    }
    let is_withdrawn = |o: &String| withdrawn.iter().any(|(w, _)| w == o);
    outputs.retain(|o| !is_withdrawn(o));
    let previous: Vec<String> = previous.map(|p| p.outputs.iter().filter(|o| !is_withdrawn(o)).cloned().collect()).unwrap_or_default();
    let mut removals = withdrawn;
    if ext.smart {
        // Kept (and still listed, so `unprocess` can withdraw them).
        let kept: Vec<String> = previous.into_iter().filter(|o| !outputs.contains(o)).collect();
        outputs.extend(kept);
    } else {
        for old in previous.iter().filter(|o| !outputs.contains(o)) {
            removals.push((old.clone(), ext.id.clone()));
        }
    }
    let state = StateEntry { error: error.is_some(), fingerprint: ext.fingerprint.clone(), outputs, rev: src.rev.clone() };
    JobResult { later, items: produced, removals, dependencies, state, error }
}

/// The schema items of a handler's emissions; the first bad one fails the whole call.
fn items_from_emission(src: &Source, ext: &Ext, emitted: Vec<EmittedItem>) -> (Vec<SchemaItem>, Option<HandlerError>) {
    let mut out = Vec::with_capacity(emitted.len());
    for mut e in emitted {
        let rd_key = e.rd_key.take().unwrap_or_else(|| src.rd_key.clone());
        let problem = if e.deps.as_ref().and_then(Value::as_array).is_some_and(|d| !d.is_empty()) && !ext.uses_dependencies {
            Some(format!("emit_schema({}): deps need `uses_dependencies: true` in the declaration", e.schema_id))
        } else {
            model::doc_id(&rd_key, &e.schema_id).err().map(|err| format!("emit_schema({}): {err}", e.schema_id))
        };
        if let Some(problem) = problem {
            return (Vec::new(), Some(HandlerError::new(FailureKind::BadOutput, problem)));
        }
        match schema_item(ext, rd_key, Some((src.id.clone(), src.rev.clone())), e) {
            Ok(item) => out.push(item),
            Err(err) => return (Vec::new(), Some(err)),
        }
    }
    (out, None)
}

/// Items emitted by a `later_handler`: each names its `rd_key` (and, optionally, its
/// `rd_source` as `[id, rev]`).
pub(super) fn later_items(ext: &Ext, emitted: Vec<EmittedItem>) -> Result<Vec<SchemaItem>, HandlerError> {
    let bad = |message: String| HandlerError::new(FailureKind::BadOutput, message);
    emitted
        .into_iter()
        .map(|mut e| {
            let rd_key = e.rd_key.take().ok_or_else(|| bad(format!("emit_schema({}) in later_handler needs an rd_key", e.schema_id)))?;
            model::doc_id(&rd_key, &e.schema_id).map_err(|err| bad(format!("emit_schema({}): {err}", e.schema_id)))?;
            let rd_source = e.rd_source.as_ref().and_then(Value::as_array).and_then(|s| match s.as_slice() {
                [Value::String(id), Value::String(rev)] => Some((id.clone(), rev.clone())),
                _ => None,
            });
            schema_item(ext, rd_key, rd_source, e)
        })
        .collect()
}

/// The (document id, extension id) pairs `withdraw_schema` named; each names its `rd_key`, or
/// takes `default_key` (the source's, in a handler).
pub(super) fn withdrawals(ext: &Ext, default_key: Option<&Value>, items: Vec<EmittedItem>) -> Result<Vec<(String, String)>, HandlerError> {
    let bad = |message: String| HandlerError::new(FailureKind::BadOutput, message);
    items
        .into_iter()
        .map(|e| {
            let key = e
                .rd_key
                .as_ref()
                .or(default_key)
                .ok_or_else(|| bad(format!("withdraw_schema({}) in later_handler needs an rd_key", e.schema_id)))?;
            let id = model::doc_id(key, &e.schema_id).map_err(|err| bad(format!("withdraw_schema({}): {err}", e.schema_id)))?;
            Ok((id, ext.id.clone()))
        })
        .collect()
}

/// The schema item for one `emit_schema` call of `ext`.
fn schema_item(ext: &Ext, rd_key: Value, rd_source: Option<(String, String)>, e: EmittedItem) -> Result<SchemaItem, HandlerError> {
    let items = match e.items {
        Some(raw) => Some(
            model::Fields::from_raw(raw)
                .map_err(|err| HandlerError::new(FailureKind::BadOutput, format!("emit_schema({}): {err}", e.schema_id)))?,
        ),
        None => None,
    };
    Ok(SchemaItem {
        rd_key,
        schema_id: e.schema_id,
        ext_id: ext.id.clone(),
        rd_source,
        items,
        deps: match e.deps {
            Some(Value::Array(deps)) => deps,
            _ => Vec::new(),
        },
        attachments: match e.attachments {
            Some(Value::Object(atts)) => Some(atts),
            _ => None,
        },
        provider: ext.provider,
        confidence: ext.confidence,
        fingerprint: ext.fingerprint.clone(),
        version: e.version,
    })
}

/// The `rd.core.error` item recording a failed handler against its source.
pub(super) fn error_item(rd_key: &Value, source: (&str, &str), ext: &Ext, e: &HandlerError) -> SchemaItem {
    error_item_with(rd_key, source, (&ext.id, &ext.fingerprint), e, Map::new())
}

/// [`error_item`] with more members in its `error_details`; `ext` is the extension's id and
/// fingerprint.
fn error_item_with(rd_key: &Value, source: (&str, &str), ext: (&str, &str), e: &HandlerError, more: Map<String, Value>) -> SchemaItem {
    let (ext_id, fingerprint) = ext;
    let mut details = json!({
        "ext_id": ext_id,
        "kind": e.kind,
        "message": e.message,
        "file": e.file,
        "line": e.line,
        "stack": e.stack,
        "source": [source.0, source.1],
    });
    if let Value::Object(d) = &mut details {
        d.extend(more);
    }
    let mut fields = Map::new();
    fields.insert("error_details".into(), details);
    SchemaItem {
        rd_key: rd_key.clone(),
        schema_id: ERROR_SCHEMA.into(),
        ext_id: ext_id.to_string(),
        rd_source: Some((source.0.to_string(), source.1.to_string())),
        items: Some(model::Fields::from_map(&fields)),
        deps: Vec::new(),
        attachments: None,
        provider: true,
        confidence: 0.0,
        fingerprint: fingerprint.to_string(),
        version: None,
    }
}

/// The `rd.core.error` item of a later_handler call that failed: one document per failed call
/// (its key names the extension and a digest of the values), holding the values and the queue
/// record they were taken from.
pub(super) fn later_error_item(ext: &Ext, e: &HandlerError, values: Vec<Value>, later_id: &str) -> SchemaItem {
    later_values_error_item((&ext.id, &ext.fingerprint), e, values, later_id)
}

/// [`later_error_item`] for values whose extension is not loaded (no fingerprint known).
pub(super) fn unloaded_later_error_item(ext_id: &str, e: &HandlerError, values: Vec<Value>, later_id: &str) -> SchemaItem {
    later_values_error_item((ext_id, ""), e, values, later_id)
}

/// The error item holding `values` for `retry-errors`; `ext` is the extension's id and
/// fingerprint.
fn later_values_error_item(ext: (&str, &str), e: &HandlerError, values: Vec<Value>, later_id: &str) -> SchemaItem {
    let digest = crate::digest::digest(&[Value::Array(values.clone()).to_string().as_bytes()]);
    let rd_key = json!(["ext", format!("{}#later-{}", ext.0, &digest[..16])]);
    let mut more = Map::new();
    more.insert("later_values".into(), Value::Array(values));
    more.insert("later_queue".into(), Value::String(later_id.to_string()));
    error_item_with(&rd_key, (&format!("ext!{}", ext.0), ""), ext, e, more)
}

/// The `rd.core.error` item of a later_handler's output the store refused: its own document,
/// keyed by the extension and the refused document.
pub(super) fn refused_later_output_item(ext: &Ext, e: &HandlerError, refused_id: &str) -> SchemaItem {
    let digest = crate::digest::digest(&[refused_id.as_bytes()]);
    let rd_key = json!(["ext", format!("{}#refused-{}", ext.id, &digest[..16])]);
    error_item(&rd_key, (&format!("ext!{}", ext.id), ""), ext, e)
}
