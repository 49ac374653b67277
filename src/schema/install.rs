//! Putting the definitions into the database: one `rd.schema.definition` document per
//! definition (so any CouchDB client can read them), and the upgrade pass that brings the
//! documents of a schema whose version went up to that version.
//!
//! The upgrade is crash-safe and idempotent because a document's version is written with its
//! upgraded fields, in one revision-checked write: a document is upgraded exactly when it
//! still records an older version, and a pass stopped anywhere leaves each document either
//! upgraded or not. A document changed under the pass (a conflict) is left for the next one.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Definition, Definitions};
use crate::js::{DocOutcome, FailureKind};
use crate::model::{self, Contribution};
use crate::store::{Doc, Durability, Find, Store, StoreError, WriteBatch, WriteResult};

pub use crate::model::DEFINITION_SCHEMA;
/// The contributor the definition documents are written as.
const WRITER: &str = "rd.core.schemas";
/// Documents read, upgraded and written at a time.
const UPGRADE_PAGE: usize = 200;
/// Failed upgrades of one schema after which a start stops upgrading it (the next start tries
/// again).
const MAX_FAILURES: usize = 100;

/// What [`install`] did.
#[derive(Debug, Default)]
pub struct Installed {
    /// Definition documents written (new or changed) and withdrawn (definition gone).
    pub written: usize,
    pub withdrawn: usize,
    /// Documents upgraded to their definition's version.
    pub upgraded: usize,
    /// Documents whose upgrade failed, with why: left at their old version, tried again at
    /// the next start.
    pub failed: Vec<(String, String)>,
    /// Schemas whose upgrade pass stopped early (an upgrade out of time or memory, or too many
    /// failures): what is left is tried again at the next start.
    pub stopped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot install the schema definitions: {0}")]
    Store(#[from] StoreError),
}

/// Writes the definition documents that are new or changed, withdraws those whose definition
/// is gone, then upgrades every document older than its definition.
pub fn install(store: &dyn Store, defs: &Definitions) -> Result<Installed, InstallError> {
    let mut done = Installed::default();
    // Stamped with their own definition's version, so they are not upgraded again each start.
    let own_version = defs.get(DEFINITION_SCHEMA).map(|d| d.decl.version);
    let raw: Vec<Map<String, Value>> = defs.iter().map(|d| definition_document(d, own_version)).collect();
    let ids: Vec<String> = defs.iter().filter_map(|d| model::doc_id(&json!(["schema", d.decl.id]), DEFINITION_SCHEMA).ok()).collect();
    let before: Vec<Option<String>> =
        store.get_docs(&ids)?.into_iter().map(|d| d.and_then(|d| d.get("_rev").and_then(Value::as_str).map(str::to_string))).collect();
    let results = crate::ingest::add_schemas(store, raw, Durability::Immediate)?;
    done.written = results
        .iter()
        .filter(|r| matches!(r, WriteResult::Ok { id, rev } if ids.iter().zip(&before).all(|(i, b)| i != id || b.as_deref() != Some(rev.as_str()))))
        .count();
    done.withdrawn = withdraw_gone(store, defs)?;
    for def in defs.iter() {
        if def.decl.version > 1 {
            upgrade_schema(store, defs, def, &mut done)?;
        }
    }
    Ok(done)
}

/// Tells the user what [`install`] changed (nothing when nothing did).
pub fn report(done: &Installed) {
    if done.written + done.withdrawn > 0 {
        eprintln!("raindrop: schema definitions: {} written, {} withdrawn", done.written, done.withdrawn);
    }
    if done.upgraded > 0 {
        eprintln!("raindrop: {} document(s) upgraded to their schema definition's version", done.upgraded);
    }
    for (id, why) in &done.failed {
        eprintln!("raindrop: {id} could not be upgraded ({why}); it keeps its version and is tried again at the next start");
    }
    for schema in &done.stopped {
        eprintln!("raindrop: the upgrade pass over {schema} stopped: its upgrade() keeps failing; what is left is tried at the next start");
    }
}

/// The raw item of a definition's document.
fn definition_document(def: &Definition, own_version: Option<u32>) -> Map<String, Value> {
    let d = &def.decl;
    let mut doc = Map::new();
    let members = json!({
        "rd_key": ["schema", d.id],
        "rd_schema_id": DEFINITION_SCHEMA,
        "rd_ext_id": WRITER,
        "id": d.id,
        "version": d.version,
        "fields": d.fields,
        "expandable": d.expandable,
        "open": d.open,
        "has_validate": d.has_validate,
        "has_upgrade": d.has_upgrade,
        "file": def.source.file_name(),
        "source": def.source.source,
    });
    doc.extend(members.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(v) = own_version {
        doc.insert("rd_schema_version".into(), json!(v));
    }
    doc
}

/// Deletes the definition documents of schemas that no longer have a definition.
fn withdraw_gone(store: &dyn Store, defs: &Definitions) -> Result<usize, StoreError> {
    let existing = store.find_docs(DEFINITION_SCHEMA, None, usize::MAX)?;
    let gone: Vec<Doc> = existing
        .iter()
        .filter(|d| d.get("id").and_then(Value::as_str).is_some_and(|id| defs.get(id).is_none()))
        .filter(|d| d.get("rd_schema_items").and_then(Value::as_object).is_some_and(|items| items.contains_key(WRITER)))
        .filter_map(|d| Some(model::tombstone(d.get("_id")?.as_str()?, d.get("_rev").cloned())))
        .collect();
    let n = gone.len();
    if n > 0 {
        store.write(WriteBatch::docs(gone))?;
    }
    Ok(n)
}

/// The ids of `schema`'s documents written under a version older than `version`.
fn stale_ids(store: &dyn Store, schema: &str, version: u32) -> Result<Vec<String>, StoreError> {
    let fields = ["rd_schema_version".to_string()];
    let found = store.find(&Find { schema, by: None, limit: usize::MAX, fields: Some(&fields) })?;
    let mut ids = Vec::new();
    for text in found.into_iter().flatten() {
        let Ok(doc) = serde_json::from_str::<Doc>(&text) else { continue };
        let at = doc.get("rd_schema_version").and_then(Value::as_u64).unwrap_or(1);
        // A projection keeps `rd_key`, which names the document.
        if at < version as u64 {
            ids.extend(doc.get("rd_key").and_then(|key| model::doc_id(key, schema).ok()));
        }
    }
    Ok(ids)
}

/// Upgrades `def`'s documents page by page: each contribution older than the definition goes
/// through its `upgrade(fields, fromVersion)` (and the definition's checks), and the document
/// is written back with every contribution at the new version.
fn upgrade_schema(store: &dyn Store, defs: &Definitions, def: &Definition, done: &mut Installed) -> Result<(), StoreError> {
    let Some((pool, ext)) = defs.upgrader(&def.decl.id) else { return Ok(()) };
    let version = def.decl.version;
    let ids = stale_ids(store, &def.decl.id, version)?;
    let failed_before = done.failed.len();
    if !ids.is_empty() {
        tracing::info!(schema = %def.decl.id, version, documents = ids.len(), "upgrading documents to their definition's version");
    }
    for page in ids.chunks(UPGRADE_PAGE) {
        let docs: Vec<Doc> = store.get_docs(page)?.into_iter().flatten().collect();
        // One input per stale contribution: (document index, contributor).
        let mut inputs: Vec<Arc<str>> = Vec::new();
        let mut owners: Vec<(usize, Contribution)> = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            for part in model::contributions(doc).into_iter().filter(|p| p.version < version) {
                let fields = part.fields.clone().unwrap_or_default();
                inputs.push(Arc::from(json!({"fields": fields, "from": part.version}).to_string()));
                owners.push((i, part));
            }
        }
        let (outcomes, hopeless) = run_upgrades(pool, ext, inputs);
        let mut parts: HashMap<usize, Vec<Contribution>> = HashMap::new();
        let mut broken: HashMap<usize, String> = HashMap::new();
        // Documents the pass stopped before (or that have no contribution to upgrade) are left.
        let mut left: std::collections::HashSet<usize> = owners[outcomes.len()..].iter().map(|(i, _)| *i).collect();
        left.extend((0..docs.len()).filter(|i| !owners.iter().any(|(j, _)| j == i)));
        for ((i, part), outcome) in owners.into_iter().zip(outcomes) {
            match upgraded_fields(part, outcome, version) {
                Ok(p) => parts.entry(i).or_default().push(p),
                Err(why) => {
                    broken.entry(i).or_insert(why);
                }
            }
        }
        let mut writes = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default().to_string();
            if left.contains(&i) {
                continue;
            }
            if let Some(why) = broken.remove(&i) {
                tracing::warn!(schema = %def.decl.id, id = %id, "cannot upgrade: {why}");
                done.failed.push((id, why));
                continue;
            }
            writes.push(model::upgraded(doc, parts.get(&i).map(Vec::as_slice).unwrap_or_default()));
        }
        for result in store.write(WriteBatch::docs(writes))?.docs {
            match result {
                WriteResult::Ok { .. } => done.upgraded += 1,
                // Changed since it was read: the next start upgrades what it is then.
                WriteResult::Conflict { id } => tracing::info!(id = %id, "changed while being upgraded: left for the next start"),
                WriteResult::Error { id, reason } => done.failed.push((id, reason)),
            }
        }
        if hopeless || done.failed.len() - failed_before >= MAX_FAILURES {
            done.stopped.push(def.decl.id.clone());
            break;
        }
    }
    Ok(())
}

/// Runs the upgrades of `inputs`, a few at a time (the first alone): an upgrade that runs out
/// of time or memory would do so for every document, a time limit each, at every start, so the
/// pass stops at the first such failure (`true`) with the outcomes so far.
fn run_upgrades(pool: &crate::js::JsPool, ext: usize, inputs: Vec<Arc<str>>) -> (Vec<DocOutcome>, bool) {
    let mut outcomes = Vec::with_capacity(inputs.len());
    let mut rest = inputs.as_slice();
    let mut size = 1;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(size.min(rest.len()));
        let done = pool.run(ext, now.to_vec()).outcomes;
        let stop =
            done.iter().any(|o| matches!(o, DocOutcome::Failed(e) if matches!(e.kind, FailureKind::TimeLimit | FailureKind::OutOfMemory)));
        outcomes.extend(done);
        if stop {
            return (outcomes, true);
        }
        rest = later;
        size = 20;
    }
    (outcomes, false)
}

/// A contribution's fields as the upgrade returned them, at `version`. Fields named like the
/// store's or the model's own members are refused, as they are from `emit_schema`: an
/// upgrade must not delete, move or re-key the document it upgrades.
fn upgraded_fields(part: Contribution, outcome: DocOutcome, version: u32) -> Result<Contribution, String> {
    let emission = match outcome {
        DocOutcome::Emitted(e) => e,
        DocOutcome::Failed(e) => return Err(format!("upgrade() to version {version}: {e}")),
    };
    let fields = emission.items.first().and_then(|item| item.fields()).ok_or("upgrade() gave no fields")?;
    if let Some(name) = fields.keys().find(|k| model::is_reserved_field(k)) {
        return Err(format!(
            "upgrade() to version {version} gave field `{name}`: names starting with `_` or `rd_` belong to the store and the model"
        ));
    }
    // An assertion stays one: an upgrade of nothing that returns nothing.
    let fields = if part.fields.is_none() && fields.is_empty() { None } else { Some(fields) };
    Ok(Contribution { fields, version, ..part })
}
