//! Raw ingest: documents that come from outside (an import, an IMAP sync, `add-schemas`)
//! written as schema items with no source, as the original's `add-schemas` did.
//!
//! Protocols write through here; it knows the document model and the `Store` trait, never the
//! pipeline or the JS engine.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::model::{self, SchemaItem};
use crate::store::{Doc, Durability, Store, StoreError, WriteBatch, WriteResult};

/// Writes raw schema items (`{rd_key, rd_schema_id, …fields}`, with optional `rd_ext_id`,
/// `rd_confidence` (0 by default) and
/// `_attachments`), as the original's `add-schemas` did: each becomes (or joins) its schema
/// document as raw data, with no source. A caller writing `Durability::Deferred` calls
/// `Store::sync` before it reports the items kept.
///
/// An item with a `content_digest` (a raw message) replaces a document that has a different
/// one only when its own is lower: two different contents under one key — two messages that
/// claim the same Message-ID — settle on the same one whichever arrives first, so the
/// database does not depend on the order mail comes in. The other is reported as unchanged.
pub fn add_schemas(store: &dyn Store, raw: Vec<Map<String, Value>>, durability: Durability) -> Result<Vec<WriteResult>, StoreError> {
    let mut items = Vec::new();
    let mut digests: Vec<Option<String>> = Vec::new();
    let mut bad = Vec::new();
    for (i, mut fields) in raw.into_iter().enumerate() {
        let rd_key = fields.remove("rd_key").unwrap_or(Value::Null);
        let schema_id = fields.remove("rd_schema_id").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let ext_id = fields.remove("rd_ext_id").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "rd.raw".into());
        let confidence = fields.remove("rd_confidence").and_then(|v| v.as_f64()).filter(|c| c.is_finite()).unwrap_or(0.0);
        let attachments = fields.remove("_attachments").and_then(|v| v.as_object().cloned());
        fields.retain(|k, _| !k.starts_with('_'));
        if schema_id.is_empty() || model::doc_id(&rd_key, &schema_id).is_err() {
            bad.push(WriteResult::Error { id: format!("line {}", i + 1), reason: "needs rd_key [type, value] and rd_schema_id".into() });
            continue;
        }
        digests.push(fields.get("content_digest").and_then(Value::as_str).map(str::to_string));
        items.push(SchemaItem {
            rd_key,
            schema_id,
            ext_id,
            rd_source: None,
            items: Some(model::Fields::from_map(&fields)),
            deps: Vec::new(),
            attachments,
            provider: true,
            confidence,
            fingerprint: String::new(),
        });
    }
    let ids: Vec<String> = items.iter().filter_map(|i| model::doc_id(&i.rd_key, &i.schema_id).ok()).collect();
    let current = store.get_docs(&ids)?;
    let mut merged: BTreeMap<String, Doc> = BTreeMap::new();
    let mut unchanged: Vec<WriteResult> = Vec::new();
    let existing: HashMap<&String, Option<Doc>> = ids.iter().zip(current).collect();
    for ((id, item), digest) in ids.iter().zip(&items).zip(&digests) {
        let base = merged.get(id).cloned().or_else(|| existing.get(id).cloned().flatten());
        let kept = base.as_ref().and_then(|b| b.get("content_digest")).and_then(Value::as_str);
        if let (Some(kept), Some(new)) = (kept, digest.as_deref()) {
            if new >= kept {
                let rev = base.as_ref().and_then(|b| b.get("_rev")).and_then(Value::as_str).unwrap_or_default().to_string();
                unchanged.push(WriteResult::Ok { id: id.clone(), rev });
                continue;
            }
        }
        if let Ok(doc) = model::apply_item(base.as_ref(), item) {
            merged.insert(id.clone(), doc);
        }
    }
    // Adding the same items again changes nothing (and so re-runs nothing).
    merged.retain(|id, doc| match existing.get(id).cloned().flatten() {
        Some(old) if model::same_content(&old, doc) => {
            let rev = old.get("_rev").and_then(Value::as_str).unwrap_or_default().to_string();
            unchanged.push(WriteResult::Ok { id: id.clone(), rev });
            false
        }
        _ => true,
    });
    let mut results = store.write(WriteBatch { docs: merged.into_values().collect(), durability, ..WriteBatch::default() })?.docs;
    results.extend(unchanged);
    results.extend(bad);
    Ok(results)
}
