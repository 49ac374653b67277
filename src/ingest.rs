//! Raw ingest: documents that come from outside (an import, an IMAP sync, `add-schemas`)
//! written as schema items with no source, as the original's `add-schemas` did.
//!
//! Protocols write through here; it knows the document model and the `Store` trait, never the
//! pipeline or the JS engine.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::model::{self, SchemaItem};
use crate::store::{Doc, Durability, Store, StoreError, WriteBatch, WriteResult};

/// Gives each item that names no version the version of its schema's definition, as the
/// database holds it (an `rd.schema.definition` document), when that is above 1: raw data
/// written after a definition went up is not taken for older data and upgraded again at the
/// next start. (No version means 1: raw data of a first definition stays as it always was,
/// whether a definition was installed before it came in or not.) One read of the few
/// definitions a batch's schemas have.
fn stamp_versions(store: &dyn Store, items: &mut [SchemaItem]) -> Result<(), StoreError> {
    let mut schemas: Vec<&str> = items.iter().filter(|i| i.version.is_none()).map(|i| i.schema_id.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    if schemas.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> =
        schemas.iter().filter_map(|s| model::doc_id(&serde_json::json!(["schema", s]), model::DEFINITION_SCHEMA).ok()).collect();
    let found = store.get_many(&ids, Some(&["version".to_string()]))?;
    let versions: HashMap<String, u32> = schemas
        .iter()
        .zip(found)
        .filter_map(|(s, text)| {
            let doc: Value = serde_json::from_str(&text?).ok()?;
            Some((s.to_string(), u32::try_from(doc.get("version")?.as_u64()?).ok()?)).filter(|(_, v)| *v > 1)
        })
        .collect();
    for item in items.iter_mut().filter(|i| i.version.is_none()) {
        item.version = versions.get(&item.schema_id).copied();
    }
    Ok(())
}

/// Writes raw schema items (`{rd_key, rd_schema_id, …fields}`, with optional `rd_ext_id`,
/// `rd_confidence` (0 by default), `rd_schema_version` (the definition version the fields
/// follow) and
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
        let version = fields.remove("rd_schema_version").and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok()).filter(|v| *v >= 1);
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
            version,
        });
    }
    stamp_versions(store, &mut items)?;
    let ids: Vec<String> = items.iter().filter_map(|i| model::doc_id(&i.rd_key, &i.schema_id).ok()).collect();
    let current = store.get_docs(&ids)?;
    let mut merged: BTreeMap<String, Doc> = BTreeMap::new();
    let mut unchanged: Vec<WriteResult> = Vec::new();
    let existing: HashMap<&String, Option<Doc>> = ids.iter().zip(current).collect();
    for ((id, item), digest) in ids.iter().zip(&items).zip(&digests) {
        let base = merged.get(id).cloned().or_else(|| existing.get(id).cloned().flatten());
        let kept = base.as_ref().and_then(|b| b.get("content_digest")).and_then(Value::as_str);
        // The same content from a source not yet among the contributors joins them (the
        // message from IMAP and from a file): either order ends with both.
        let joins = |b: &Doc| b.get("rd_schema_items").and_then(Value::as_object).is_some_and(|items| !items.contains_key(&item.ext_id));
        if let (Some(kept), Some(new)) = (kept, digest.as_deref()) {
            if new > kept || (new == kept && !base.as_ref().is_some_and(joins)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(ext: &str, digest: &str) -> Map<String, Value> {
        let item = json!({"rd_key": ["email", "one@x"], "rd_schema_id": "rd.msg.rfc822", "rd_ext_id": ext, "content_digest": digest});
        item.as_object().cloned().unwrap_or_default()
    }

    /// The document two arrivals leave behind, as (its digest, its contributors).
    fn after(first: Map<String, Value>, second: Map<String, Value>) -> (Value, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("raindrop-ingest-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        let embedded = crate::store::embedded::EmbeddedStore::open(&dir).unwrap();
        let store: &dyn Store = &embedded;
        add_schemas(store, vec![first], Durability::Immediate).unwrap();
        add_schemas(store, vec![second], Durability::Immediate).unwrap();
        let id = model::doc_id(&json!(["email", "one@x"]), "rd.msg.rfc822").unwrap();
        let doc = store.get_docs(&[id]).unwrap().remove(0).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let contributors = doc["rd_schema_items"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        (doc["content_digest"].clone(), contributors)
    }

    #[test]
    fn of_two_messages_under_one_key_the_lower_digest_stays_in_either_order() {
        let (a, b) = (message("proto.import", "0aaa"), message("proto.import", "0bbb"));
        assert_eq!(after(a.clone(), b.clone()).0, json!("0aaa"));
        assert_eq!(after(b, a).0, json!("0aaa"));
    }

    #[test]
    fn the_same_message_from_two_sources_keeps_both_in_either_order() {
        let (imap, file) = (message("proto.imap", "0aaa"), message("proto.import", "0aaa"));
        let both = vec!["proto.imap".to_string(), "proto.import".to_string()];
        assert_eq!(after(imap.clone(), file.clone()), (json!("0aaa"), both.clone()));
        assert_eq!(after(file, imap), (json!("0aaa"), both));
    }
}
