//! Merging contributions: a document from its contributors (fields in ascending confidence,
//! a lone contributor's at the top level only), a new document's text made from one item's,
//! withdrawing a contributor, and whether two versions say the same thing.

use serde_json::{Map, Value};

use super::{doc_id, Fields, ModelError, SchemaItem};
use crate::store::Doc;

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
    if let Some(v) = item.version {
        entry.insert(VERSION.into(), Value::from(v));
    }
    entry
}

/// The member recording a definition's version: in each contributor's entry, and at the top
/// level the lowest of them (what an upgrade looks for).
const VERSION: &str = "rd_schema_version";

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
    let mut body =
        String::with_capacity(fields.map_or(0, str::len) + rd_key.len() + 2 * ext.len() + entry.len() + item.schema_id.len() + 80);
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
    if let Some(v) = item.version {
        body.push_str(",\"rd_schema_version\":");
        body.push_str(&v.to_string());
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

    let mut attachments: Map<String, Value> =
        existing.and_then(|d| d.get("_attachments")).and_then(Value::as_object).cloned().unwrap_or_default();
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
const MODEL_KEYS: [&str; 5] = ["rd_key", "rd_schema_id", "rd_schema_items", "rd_schema_provider", VERSION];

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
    // The lowest of the contributors' versions, one that records none counting as version 1;
    // none recorded, no member (version 1).
    if contributors.values().any(|e| e.get(VERSION).is_some()) {
        let lowest = contributors.values().map(|e| e.get(VERSION).and_then(Value::as_u64).unwrap_or(1)).min().unwrap_or(1);
        doc.insert(VERSION.into(), Value::from(lowest));
    }
    doc.insert("rd_schema_items".into(), Value::Object(contributors));
    if !attachments.is_empty() {
        doc.insert("_attachments".into(), Value::Object(attachments));
    }
    doc
}

/// One contributor's part of a document, for an upgrade.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub ext_id: String,
    /// Its fields (`None` for an assertion).
    pub fields: Option<Map<String, Value>>,
    /// The definition version it was written under (1 when none is recorded).
    pub version: u32,
}

/// Every contributor's part of `doc`.
pub fn contributions(doc: &Doc) -> Vec<Contribution> {
    contributors(doc)
        .into_iter()
        .map(|(ext_id, entry)| Contribution {
            fields: entry.get("schema").and_then(Value::as_object).cloned(),
            version: entry.get(VERSION).and_then(Value::as_u64).map_or(1, |v| v.clamp(1, u32::MAX as u64) as u32),
            ext_id,
        })
        .collect()
}

/// `doc` with these contributions' fields and versions in place of their old ones, merged
/// again (`_id`, `_rev`, attachments and the other contributors kept).
pub fn upgraded(doc: &Doc, parts: &[Contribution]) -> Doc {
    let mut entries = contributors(doc);
    for part in parts {
        if let Some(Value::Object(entry)) = entries.get_mut(&part.ext_id) {
            entry.insert("schema".into(), part.fields.clone().map_or(Value::Null, Value::Object));
            entry.insert(VERSION.into(), Value::from(part.version));
        }
    }
    let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default().to_string();
    let rd_key = doc.get("rd_key").cloned().unwrap_or(Value::Null);
    let schema = doc.get("rd_schema_id").and_then(Value::as_str).unwrap_or_default().to_string();
    let attachments = doc.get("_attachments").and_then(Value::as_object).cloned().unwrap_or_default();
    aggregate(&id, Some(doc), &rd_key, &schema, entries, attachments)
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
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, vx)| y.get(k).is_some_and(|vy| same_value(vx, vy))),
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
            a.len() == b.len() && a.iter().all(|(name, x)| b.get(name).is_some_and(|y| x.get("content_type") == y.get("content_type")))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::value::RawValue;

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
            version: None,
        }
    }

    #[test]
    fn versions_are_recorded_and_upgrades_replace_each_contribution() {
        let mut lone = item("a", 1.0, json!({"n": 1}));
        lone.version = Some(2);
        let doc = apply_item(None, &lone).unwrap();
        assert_eq!(doc["rd_schema_version"], 2);
        assert_eq!(doc["rd_schema_items"]["a"]["rd_schema_version"], 2);
        // The new document's text says the same as the merge.
        let text: Doc = serde_json::from_str(&new_doc_body(&lone).unwrap()).unwrap();
        let mut merged = doc.clone();
        merged.remove("_id");
        assert_eq!(Value::Object(text), Value::Object(merged));

        // Two contributors, one with no recorded version (version 1): the document's is the lowest.
        let doc = apply_item(Some(&doc), &item("b", 2.0, json!({"m": true}))).unwrap();
        assert_eq!(doc.get("rd_schema_version"), Some(&json!(1)));
        let parts = contributions(&doc);
        assert_eq!(parts.iter().map(|p| (p.ext_id.as_str(), p.version)).collect::<Vec<_>>(), vec![("a", 2), ("b", 1)]);
        let b = parts.into_iter().find(|p| p.ext_id == "b").unwrap();
        let up = Contribution { fields: Some(json!({"m": "yes"}).as_object().unwrap().clone()), version: 3, ..b };
        let doc = upgraded(&doc, &[up]);
        assert_eq!(doc["m"], "yes");
        assert_eq!(doc["n"], 1);
        assert_eq!(doc["rd_schema_items"]["b"]["rd_schema_version"], 3);
        assert_eq!(doc["rd_schema_version"], 2);

        // A lone contributor's upgrade keeps its fields at the top level only.
        let doc = apply_item(None, &item("a", 1.0, json!({"n": 1}))).unwrap();
        let part = contributions(&doc).pop().unwrap();
        assert_eq!((part.version, part.fields.clone()), (1, json!({"n": 1}).as_object().cloned()));
        let doc = upgraded(&doc, &[Contribution { fields: json!({"n": 2}).as_object().cloned(), version: 2, ..part }]);
        assert_eq!(doc["n"], 2);
        assert!(doc["rd_schema_items"]["a"].get("schema").is_none(), "{doc:?}");
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
        for named in [
            r#"{"rd_key": 1}"#,
            r#"{"_id": "x"}"#,
            r#"{"a": 1, "rd_schema_items": {}}"#,
            r#"{"\u005frev": "1-x"}"#,
            r#"{"rd_anything": 0}"#,
        ] {
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
