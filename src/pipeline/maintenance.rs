//! The maintenance commands over the pipeline's bookkeeping, without a pool: per-extension
//! counts (`status`), forgetting what extensions did (`reprocess`, `unprocess`,
//! `retry-errors`), putting failed later_handler calls' values back in their queues, and moving
//! an older database's bookkeeping documents to records.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

use super::deps::DEPS_PREFIX;
use super::later::{all_records, later_id, queue_record, LaterQueue, LATER_PREFIX, SHARED_PREFIX, SHARED_RETRY};
use super::share;
use super::state::{StateRecord, STATE_PREFIX};
use super::{PipelineError, ERROR_SCHEMA};
use crate::model;
use crate::store::{Doc, Record, Seq, Store, StoreError, WriteBatch, WriteResult};

/// Calls `f` with each page of the sources' state records, in id order.
fn state_pages<E: From<StoreError>>(store: &dyn Store, size: usize, mut f: impl FnMut(Vec<StateRecord>) -> Result<(), E>) -> Result<(), E> {
    let mut after: Option<String> = None;
    loop {
        let records = store.records_after(STATE_PREFIX, after.as_deref(), size)?;
        let Some(last) = records.last() else { return Ok(()) };
        after = last.get("_id").and_then(Value::as_str).map(str::to_string);
        f(records.into_iter().map(StateRecord::from_doc).collect())?;
    }
}

/// How many changes of the feed lie after the checkpoint `checkpoint_id` (all of them, with no
/// checkpoint): what a run has yet to read.
pub fn backlog(store: &dyn Store, checkpoint_id: &str) -> Result<u64, StoreError> {
    let checkpoint = store.get_local(checkpoint_id)?;
    let mut since = checkpoint.as_ref().and_then(|c| c.get("seq")).and_then(Value::as_str).map(Seq::from_raw).unwrap_or_else(Seq::zero);
    let mut backlog = 0u64;
    loop {
        let page = store.changes(&since, 5000, false)?;
        if page.changes.is_empty() {
            return Ok(backlog);
        }
        backlog += page.changes.len() as u64;
        since = page.last_seq;
    }
}

/// What the state records count: per extension, (processed sources, errors); per schema, the
/// documents extensions emitted for their sources (later_handlers' outputs are not counted).
#[derive(Debug, Default)]
pub struct Counts {
    pub extensions: BTreeMap<String, (u64, u64)>,
    pub schemas: BTreeMap<String, u64>,
}

/// [`Counts`] from the state records.
pub fn extension_counts(store: &dyn Store) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    state_pages(store, 1000, |records| -> Result<(), StoreError> {
        for record in &records {
            for (ext, entry) in record.entries() {
                let e = counts.extensions.entry(ext.clone()).or_default();
                e.0 += 1;
                e.1 += u64::from(entry.error);
                for schema in entry.outputs.iter().filter_map(|id| crate::model::schema_of_id(id)) {
                    *counts.schemas.entry(schema.to_string()).or_default() += 1;
                }
            }
        }
        Ok(())
    })?;
    Ok(counts)
}

/// Forgets what `ext` (or every extension) did, so the next run re-runs it; with `remove`, its
/// outputs are also withdrawn (`unprocess`). With `only_errors`, only failed runs are forgotten
/// (`retry-errors`). Returns how many source states changed.
pub fn forget(store: &dyn Store, ext: Option<&str>, remove: bool, only_errors: bool) -> Result<u64, PipelineError> {
    let mut changed = 0;
    let started = Instant::now();
    state_pages(store, 500, |records| -> Result<(), PipelineError> {
        let mut removals = Vec::new();
        let mut writes = Vec::new();
        for mut record in records {
            let names: Vec<String> = record.entries().map(|(name, _)| name.clone()).filter(|name| ext.is_none_or(|e| e == name)).collect();
            let mut touched = false;
            for name in names {
                if only_errors && !record.entry(&name).is_some_and(|e| e.error) {
                    continue;
                }
                let Some(entry) = record.remove(&name) else { continue };
                if remove || only_errors {
                    for out in entry.outputs {
                        if remove || model::schema_of_id(&out) == Some(ERROR_SCHEMA) {
                            removals.push((out, name.clone()));
                        }
                    }
                }
                touched = true;
            }
            if touched {
                changed += 1;
                writes.push(record.into_record());
            }
        }
        if !removals.is_empty() || !writes.is_empty() {
            withdraw(store, removals, writes)?;
        }
        Ok(())
    })?;
    if only_errors {
        changed += requeue_later_failures(store, ext)?;
    } else if remove {
        changed += discard_later_values(store, ext)?;
    }
    tracing::info!(changed, elapsed = ?started.elapsed(), "forgot processing state");
    Ok(changed)
}

/// Bookkeeping kept as documents before (on the embedded store the dependency index and the
/// later queues before 2026-11-28; on CouchDB all of it, the sources' states too, before
/// 2026-12-02) becomes records, as it is kept now: out of the changes feed, which read every
/// version of a growing queue or index again, and out of CouchDB's view.
pub(super) fn bookkeeping_to_records(store: &dyn Store) -> Result<(), StoreError> {
    for prefix in [DEPS_PREFIX, LATER_PREFIX, STATE_PREFIX] {
        let moved = store.move_to_records(prefix)?;
        if moved > 0 {
            tracing::info!(moved, prefix, "bookkeeping documents moved to records");
        }
    }
    Ok(())
}

/// One error document holding later_handler values (a failed call's, or those of an
/// extension that was not loaded).
struct LaterFailure {
    id: String,
    ext_id: String,
    queue: String,
    values: Vec<Value>,
}

/// The error documents holding later_handler values, of `ext` (or every extension).
fn later_failures(store: &dyn Store, ext: Option<&str>) -> Result<Vec<LaterFailure>, StoreError> {
    let mut found = Vec::new();
    for doc in store.find_docs(ERROR_SCHEMA, None, usize::MAX)? {
        let Some(details) = doc.get("error_details") else { continue };
        let (Some(Value::Array(values)), Some(Value::String(queue)), Some(Value::String(ext_id))) =
            (details.get("later_values"), details.get("later_queue"), details.get("ext_id"))
        else {
            continue;
        };
        if ext.is_some_and(|e| e != ext_id) || !queue.starts_with(LATER_PREFIX) {
            continue;
        }
        let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default().to_string();
        found.push(LaterFailure { id, ext_id: ext_id.clone(), queue: queue.clone(), values: values.clone() });
    }
    Ok(found)
}

/// `unprocess` (and a daemon withdrawing an extension gone from its folder): the values the
/// extension gave to `process_later` go with the rest of what it did — those kept in error
/// documents, and those waiting in a run's queue (its own, or the shared queue's retries).
/// The shared queue's page records are left: each is written once by one worker and deleted
/// by the runner that took it, and a value there whose extension is gone waits in an error
/// document when it comes to run.
fn discard_later_values(store: &dyn Store, ext: Option<&str>) -> Result<u64, PipelineError> {
    let removals: Vec<(String, String)> = later_failures(store, ext)?.into_iter().map(|f| (f.id, f.ext_id)).collect();
    let mut discarded = removals.len() as u64;
    if !removals.is_empty() {
        withdraw(store, removals, Vec::new())?;
    }
    let mut records = Vec::new();
    for doc in all_records(store, LATER_PREFIX)? {
        let id = doc.get("_id").and_then(Value::as_str).unwrap_or_default();
        if id.starts_with(SHARED_PREFIX) && id != SHARED_RETRY {
            continue;
        }
        let mut queue = LaterQueue::from_record(Some(&doc));
        if let (true, Some(values)) = (queue.remove(ext), queue.saved()) {
            let rev = doc.get("_rev").and_then(Value::as_str).map(str::to_string);
            records.push(queue_record(id, rev, &values));
        }
    }
    if records.is_empty() {
        return Ok(discarded);
    }
    discarded += records.len() as u64;
    for result in store.write(WriteBatch { records, ..WriteBatch::default() })?.records {
        if !matches!(result, WriteResult::Ok { .. }) {
            tracing::warn!("a later queue changed meanwhile ({result:?}); its values of the extension stay: run the command again");
        }
    }
    Ok(discarded)
}

/// Puts the values of failed later_handler calls (kept in their `rd.core.error` documents) back
/// in the queues they came from, then withdraws those documents. Returns how many calls.
fn requeue_later_failures(store: &dyn Store, ext: Option<&str>) -> Result<u64, PipelineError> {
    // queue id → (error document id, extension id, values)
    let mut by_queue: BTreeMap<String, Vec<(String, String, Vec<Value>)>> = BTreeMap::new();
    for LaterFailure { id, ext_id, queue, values } in later_failures(store, ext)? {
        // A shared worker's own queue (before one worker ran every later_handler) is read by
        // no run any more: its values go to the shared queue.
        let queue = if queue.starts_with(&later_id(&share::checkpoint_of(""))) { SHARED_RETRY.to_string() } else { queue };
        by_queue.entry(queue).or_default().push((id, ext_id, values));
    }
    let mut requeued = 0;
    bookkeeping_to_records(store)?;
    for (queue, failures) in by_queue {
        let existing = store.get_records(std::slice::from_ref(&queue))?.pop().flatten();
        let mut later = LaterQueue::from_record(existing.as_ref());
        let mut removals = Vec::new();
        for (id, ext_id, values) in failures {
            later.extend(&ext_id, values);
            removals.push((id, ext_id));
        }
        // The queue first: the error documents go only once their values are safe in it.
        if let Some(values) = later.saved() {
            let rev = existing.as_ref().and_then(|d| d.get("_rev")).and_then(Value::as_str).map(str::to_string);
            let record = queue_record(&queue, rev, &values);
            match store.write(WriteBatch { records: vec![record], ..WriteBatch::default() })?.records.pop() {
                Some(WriteResult::Ok { .. }) => {}
                other => {
                    tracing::warn!("could not update {queue} ({other:?}); run the command again");
                    continue;
                }
            }
        }
        requeued += removals.len() as u64;
        withdraw(store, removals, Vec::new())?;
    }
    Ok(requeued)
}

/// Withdraws contributions — (document id, extension id) — and writes `states` with them.
fn withdraw(store: &dyn Store, removals: Vec<(String, String)>, states: Vec<Record>) -> Result<(), StoreError> {
    let ids: Vec<String> = removals.iter().map(|(id, _)| id.clone()).collect();
    let current = store.get_docs(&ids)?;
    let mut docs: BTreeMap<String, Option<Doc>> = BTreeMap::new();
    for ((id, ext), existing) in removals.iter().zip(current) {
        let base = docs.get(id).cloned().unwrap_or(existing);
        let rev = base.as_ref().and_then(|d| d.get("_rev").cloned());
        let next = base.and_then(|d| model::remove_contributor(&d, ext));
        match (next, rev) {
            (Some(d), _) => {
                docs.insert(id.clone(), Some(d));
            }
            (None, Some(rev)) => {
                docs.insert(id.clone(), Some(model::tombstone(id, Some(rev))));
            }
            (None, None) => {}
        }
    }
    let writes: Vec<Doc> = docs.into_values().flatten().collect();
    let written = store.write(WriteBatch { docs: writes, records: states, ..WriteBatch::default() })?;
    for r in written.docs.into_iter().chain(written.records) {
        if let WriteResult::Conflict { id } | WriteResult::Error { id, .. } = r {
            tracing::warn!("could not update {id}; run the command again");
        }
    }
    Ok(())
}
