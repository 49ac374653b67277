//! Merging and writing: a page's items merged into their current documents (an unchanged
//! document is not rewritten), withdrawn contributions removed, and everything written in one
//! store write with the page's bookkeeping and its checkpoint — the data first, then as records
//! the dependency index and the later queue, then the sources' state records.
//!
//! A conflict (another writer got there first) re-reads and re-merges, a bounded number of
//! times. An output the store refuses becomes an error document against its source, written
//! right after.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::deps::DepsIndex;
use super::dispatch::PageWork;
use super::follow::LaterWrites;
use super::later::queue_record;
use super::outcome::{error_item, refused_later_output_item};
use super::state::{state_id, StateRecord};
use super::{Pipeline, PipelineError, Stats, ERROR_SCHEMA};
use crate::js::{FailureKind, HandlerError};
use crate::model::{self, SchemaItem};
use crate::store::{Doc, Durability, NewDoc, Record, Seq, StoreError, WriteBatch, WriteResult, Written};
use crate::timing::span;

/// How many times a conflicting write is re-merged before it becomes an error.
const CONFLICT_RETRIES: usize = 5;

/// The writer stage of a run: it owns what the writes of one run carry from page to page.
pub(super) struct Writer<'p> {
    pipeline: &'p Pipeline,
    checkpoint_id: String,
    /// The extensions' fingerprints, recorded with each checkpoint.
    fingerprints: Value,
    later_id: String,
    /// The later queue record's revision as last written or read; `None` when it must be read
    /// again before the next write (never written, or the last write failed).
    later_rev: Option<String>,
    deps: DepsIndex,
    /// (output id, extension id, source id), hashed → writes since the feed last settled.
    rewrites: HashMap<u64, u32>,
    rewrites_since: Instant,
}

/// An output that is not written: its id, the items that made it, and why (the message of the
/// error documents that take its place).
type Refused = (String, Vec<SchemaItem>, String);

/// How many times one extension may rewrite one document from one source before the feed
/// settles (is read to its end) once. Past it the extensions are feeding each other — each
/// write changes the source revision the other records — and the output is not written.
const CASCADE_LIMIT: u32 = 25;
/// At most this many (output, extension, source) counts are kept, and for at most this long.
const CASCADE_TRACKED: usize = 500_000;
const CASCADE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// What one write carries: items to merge, contributions (document id, extension id) to
/// withdraw, and as records the bookkeeping and then the sources' states.
struct Outputs {
    items: Vec<SchemaItem>,
    removals: Vec<(String, String)>,
    bookkeeping: Vec<Record>,
    states: Vec<Record>,
}

/// One document of a write, as the merge made it.
enum Write {
    Doc(Doc),
    New(NewDoc),
}

impl<'p> Writer<'p> {
    pub(super) fn new(
        pipeline: &'p Pipeline,
        checkpoint_id: String,
        fingerprints: Value,
        later_id: String,
        later_rev: Option<String>,
    ) -> Writer<'p> {
        Writer {
            pipeline,
            checkpoint_id,
            fingerprints,
            later_id,
            later_rev,
            deps: DepsIndex::default(),
            rewrites: HashMap::new(),
            rewrites_since: Instant::now(),
        }
    }

    /// Writes one page: its work, what it changed of the later queue, and the checkpoint at
    /// `seq`. Returns what it wrote, as counts.
    pub(super) fn write_page(&mut self, work: PageWork, seq: &Seq, later: LaterWrites) -> Result<Stats, PipelineError> {
        let _t = span("W:write");
        let mut stats = Stats::default();
        // The queue is written before the states of the sources that fed it, and the
        // dependency index too: if a crash comes between (a store whose write is not one
        // transaction), it names outputs not yet written, which costs a re-run.
        let queue = self.later_record(later.queue)?;
        let t = span("W:deps");
        let mut bookkeeping = self.deps.updates(&*self.pipeline.store, work.dependencies)?;
        drop(t);
        bookkeeping.extend(queue);
        bookkeeping.extend(later.shared);
        let checkpoint = json!({ "seq": seq.as_str(), "fingerprints": self.fingerprints });
        // A new stretch: the feed settled, or the count grew too big or too old to be about
        // a loop (two extensions feeding each other rewrite within seconds).
        if work.settled || self.rewrites.len() > CASCADE_TRACKED || self.rewrites_since.elapsed() > CASCADE_WINDOW {
            self.rewrites.clear();
            self.rewrites_since = Instant::now();
        }
        let outcomes = self.pipeline.metrics.as_ref().map(|_| page_outcomes(&work.processed, &work.items));
        let (items, runaway) = self.runaway_cascades(work.items)?;
        let batch = Outputs { items, removals: work.removals, bookkeeping, states: work.states };
        let results = self.write(batch, &checkpoint, &mut stats, runaway)?;
        self.deps.written(&results);
        if let Some(metrics) = &self.pipeline.metrics {
            metrics.page();
            for (ext, processed, errors, last) in outcomes.into_iter().flatten() {
                metrics.outcomes(&ext, processed, errors, last);
            }
        }
        for result in results {
            if let WriteResult::Ok { id, rev } = result {
                if id == self.later_id {
                    self.later_rev = Some(rev);
                }
            }
        }
        Ok(stats)
    }

    /// The later queue's record for its new text, at the revision it replaces.
    fn later_record(&mut self, waiting: Option<String>) -> Result<Option<Record>, StoreError> {
        let Some(values) = waiting else { return Ok(None) };
        if self.later_rev.is_none() {
            let stored = self.pipeline.store.get_records(std::slice::from_ref(&self.later_id))?.pop().flatten();
            self.later_rev = stored.and_then(|d| d.get("_rev").and_then(Value::as_str).map(str::to_string));
        }
        Ok(Some(queue_record(&self.later_id, self.later_rev.take(), &values)))
    }

    /// The page's items, without those of a runaway cascade: an output one extension keeps
    /// rewriting from one source while the feed never settles (two extensions feeding each
    /// other). Those come back as refused, to be recorded as an error document naming the
    /// extensions, which breaks the loop: the source is then up to date for the extension.
    fn runaway_cascades(&mut self, items: Vec<SchemaItem>) -> Result<(Vec<SchemaItem>, Vec<Refused>), StoreError> {
        let mut kept = Vec::with_capacity(items.len());
        let mut runaway = Vec::new();
        for item in items {
            // A source at its first revision has not been rewritten, so it is in no loop yet;
            // most sources are, and not counting them keeps this off the hot path (counting
            // every output cost the mail benchmark ~8%).
            let Some((source, _)) = item.rd_source.as_ref().filter(|(_, rev)| crate::store::rev::generation(rev) != 1) else {
                kept.push(item);
                continue;
            };
            // Hashed as it stands: the output's id (its key written out) only when it is reported.
            let key = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                hash_json(&item.rd_key, &mut h);
                (&item.schema_id, &item.ext_id, source).hash(&mut h);
                h.finish()
            };
            let count = self.rewrites.entry(key).or_default();
            *count += 1;
            let id = match model::doc_id(&item.rd_key, &item.schema_id) {
                Ok(id) if *count > CASCADE_LIMIT => id,
                _ => {
                    kept.push(item);
                    continue;
                }
            };
            let makers = self
                .pipeline
                .store
                .get(source, false)?
                .and_then(|d| d.get("rd_schema_items").and_then(Value::as_object).map(|m| m.keys().cloned().collect::<Vec<_>>()))
                .unwrap_or_default();
            let message = format!(
                "runaway cascade: {} rewrote {id} from {source} more than {CASCADE_LIMIT} times while the feed never settled; {source} is made by {} — extensions that feed each other must stop changing what they emit",
                item.ext_id,
                if makers.is_empty() { "(unknown)".to_string() } else { makers.join(", ") }
            );
            tracing::warn!("{message}");
            runaway.push((id, vec![item], message));
        }
        Ok((kept, runaway))
    }

    /// Merges and writes (see the module's note); returns the results of writing `bookkeeping`.
    /// `runaway` are outputs not to write, recorded as error documents with those the store
    /// refuses.
    fn write(
        &self,
        outputs: Outputs,
        checkpoint: &Value,
        stats: &mut Stats,
        runaway: Vec<Refused>,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let (bookkeeping_results, mut refused) = self.write_merged(outputs, checkpoint, stats)?;
        refused.extend(runaway);
        if !refused.is_empty() {
            let (errors, states) = self.refusal_errors(refused, stats)?;
            // Once: an error document the store refuses too is only logged.
            let errors = Outputs { items: errors, removals: Vec::new(), bookkeeping: Vec::new(), states };
            let (_, refused_again) = self.write_merged(errors, checkpoint, stats)?;
            for (id, _, reason) in refused_again {
                tracing::error!("the store refused {id}, the error document of an output it refused: {reason}");
            }
        }
        Ok(bookkeeping_results)
    }

    /// [`Writer::write`] without the second chance for refused outputs: also returns the
    /// documents the store refused, with the items that made each and the store's reason.
    fn write_merged(
        &self,
        outputs: Outputs,
        checkpoint: &Value,
        stats: &mut Stats,
    ) -> Result<(Vec<WriteResult>, Vec<Refused>), StoreError> {
        let Outputs { items, removals, bookkeeping, states } = outputs;
        let store = &*self.pipeline.store;
        let mut pending = Pending::new(items, removals);
        let mut ids = pending.ids();
        let mut refused: Vec<Refused> = Vec::new();
        // Records, written with the first attempt only: the bookkeeping before the states.
        let n_bookkeeping = bookkeeping.len();
        let mut records = bookkeeping;
        records.extend(states);
        let mut bookkeeping_results = Vec::new();
        for attempt in 0..=CONFLICT_RETRIES {
            let t = span("W:get_many").items(ids.len());
            let current = store.get_docs(&ids)?;
            drop(t);
            let t = span("W:merge");
            // Each document merges on its own: the page's documents merge side by side.
            let (writes, new_docs) = pending.merge_all(&ids, current);
            stats.docs_removed += writes.iter().filter(|d| d.contains_key("_deleted")).count() as u64;
            drop(t);
            let records = std::mem::take(&mut records);
            if writes.is_empty() && new_docs.is_empty() && records.is_empty() {
                if attempt == 0 {
                    store.put_local(&self.checkpoint_id, checkpoint)?;
                }
                return Ok((bookkeeping_results, refused));
            }
            let t = span("W:bulk_write").items(writes.len() + new_docs.len() + records.len());
            let batch = WriteBatch {
                docs: writes,
                new_docs,
                records,
                checkpoint: Some((&self.checkpoint_id, checkpoint)),
                durability: Durability::Deferred,
            };
            let Written { docs: results, records: record_results } = store.write(batch)?;
            drop(t);
            for r in &record_results {
                if let WriteResult::Conflict { id } | WriteResult::Error { id, .. } = r {
                    tracing::warn!("the record {id} changed under us; it will be rewritten on the next run");
                }
            }
            if attempt == 0 {
                bookkeeping_results = record_results;
                bookkeeping_results.truncate(n_bookkeeping);
            }
            let mut conflicted: Vec<String> = Vec::new();
            for r in results {
                match r {
                    WriteResult::Ok { .. } => stats.docs_written += 1,
                    WriteResult::Conflict { id } => conflicted.push(id),
                    WriteResult::Error { id, reason } => {
                        tracing::warn!("the store refused {id}: {reason}");
                        let made_by = pending.items.remove(&id).unwrap_or_default();
                        let message = format!("the store refused the output {id}: {reason}");
                        refused.push((id, made_by, message));
                    }
                }
            }
            if conflicted.is_empty() {
                return Ok((bookkeeping_results, refused));
            }
            stats.conflicts_retried += conflicted.len() as u64;
            ids = conflicted;
        }
        tracing::error!("documents still conflicting after {CONFLICT_RETRIES} retries: {ids:?}");
        Ok((bookkeeping_results, refused))
    }

    /// The error documents for outputs the store refused (a name or a value it does not take,
    /// a size over its limit), each against the source whose handler made it, and those
    /// sources' state records marked failed (so `status` counts them and `retry-errors` runs
    /// them again).
    fn refusal_errors(&self, refused: Vec<Refused>, stats: &mut Stats) -> Result<(Vec<SchemaItem>, Vec<Record>), StoreError> {
        let mut errors = Vec::new();
        // source id → extension id → (refused output, error document) pairs
        let mut by_source: BTreeMap<String, BTreeMap<String, Vec<(String, String)>>> = BTreeMap::new();
        for (id, made_by, message) in refused {
            for item in made_by {
                let Some(ext) = self.pipeline.exts.iter().find(|e| e.id == item.ext_id) else {
                    // Only the error document of values kept for an extension not loaded here.
                    stats.errors += 1;
                    tracing::error!(%id, ext = %item.ext_id, "the database refused a document made for an extension not loaded here, and it is not written: {message}");
                    continue;
                };
                stats.errors += 1;
                let e = HandlerError::new(FailureKind::BadOutput, message.clone());
                if let Some(metrics) = &self.pipeline.metrics {
                    metrics.outcomes(&ext.id, 0, 1, Some((e.message.clone(), None, None)));
                }
                let Some((sid, srev)) = &item.rd_source else {
                    errors.push(refused_later_output_item(ext, &e, &id));
                    continue;
                };
                let key = model::rd_key_of_id(sid).unwrap_or_else(|| item.rd_key.clone());
                let error = error_item(&key, (sid, srev), ext, &e);
                if let Ok(error_id) = model::doc_id(&error.rd_key, &error.schema_id) {
                    by_source.entry(sid.clone()).or_default().entry(ext.id.clone()).or_default().push((id.clone(), error_id));
                }
                errors.push(error);
            }
        }
        let ids: Vec<String> = by_source.keys().map(|sid| state_id(sid)).collect();
        let mut states = Vec::new();
        for (stored, (_, by_ext)) in self.pipeline.store.get_records(&ids)?.into_iter().zip(by_source) {
            let Some(stored) = stored else { continue };
            let mut record = StateRecord::from_doc(stored);
            for (ext_id, swaps) in by_ext {
                let Some(entry) = record.entry_mut(&ext_id) else { continue };
                for (output, error_id) in swaps {
                    entry.outputs.retain(|o| *o != output);
                    if !entry.outputs.contains(&error_id) {
                        entry.outputs.push(error_id);
                    }
                }
                entry.error = true;
            }
            states.push(record.into_record());
        }
        Ok((errors, states))
    }
}

/// A page's items and removals by document id, waiting to be merged.
struct Pending {
    items: BTreeMap<String, Vec<SchemaItem>>,
    removals: BTreeMap<String, Vec<String>>,
}

impl Pending {
    fn new(items: Vec<SchemaItem>, removals: Vec<(String, String)>) -> Pending {
        let mut by_id: BTreeMap<String, Vec<SchemaItem>> = BTreeMap::new();
        for item in items {
            if let Ok(id) = model::doc_id(&item.rd_key, &item.schema_id) {
                by_id.entry(id).or_default().push(item);
            }
        }
        let mut removed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, ext) in removals {
            // A contribution emitted again in the same page is not withdrawn.
            if !by_id.get(&id).is_some_and(|v| v.iter().any(|i| i.ext_id == ext)) {
                removed.entry(id).or_default().push(ext);
            }
        }
        Pending { items: by_id, removals: removed }
    }

    /// Every document id the page touches, sorted.
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.items.keys().chain(self.removals.keys()).cloned().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The writes for `ids` given their `current` documents, merged on a few threads: the
    /// documents to write as values, and the new ones made as text.
    fn merge_all(&self, ids: &[String], current: Vec<Option<Doc>>) -> (Vec<Doc>, Vec<NewDoc>) {
        let mut writes = Vec::new();
        let mut new_docs = Vec::new();
        let merged = crate::par::map_in_parts(ids.iter().zip(current).collect(), 256, |(id, existing)| self.merge(id, existing));
        for write in merged.into_iter().flatten() {
            match write {
                Write::Doc(d) => writes.push(d),
                Write::New(d) => new_docs.push(d),
            }
        }
        (writes, new_docs)
    }

    /// The write that brings document `id` (now `existing`) up to date; `None` when it already
    /// says what the page would write. A new document from one item is made as text (see
    /// `model::Fields`).
    fn merge(&self, id: &String, existing: Option<Doc>) -> Option<Write> {
        let items = self.items.get(id).map(Vec::as_slice).unwrap_or_default();
        if let (None, None, [item]) = (&existing, self.removals.get(id), items) {
            if let Some(body) = model::new_doc_body(item) {
                return Some(Write::New(NewDoc { id: id.clone(), schema: item.schema_id.clone(), body }));
            }
        }
        let mut doc = existing.clone();
        for ext in self.removals.get(id).into_iter().flatten() {
            doc = doc.and_then(|d| model::remove_contributor(&d, ext));
        }
        for item in items {
            if doc.as_ref().is_some_and(|d| model::holds_same_from_other_source(d, item)) {
                continue;
            }
            match model::apply_item_at(id, doc.as_ref(), item) {
                Ok(d) => doc = Some(d),
                Err(e) => tracing::error!("cannot merge into {id}: {e}"),
            }
        }
        match (existing, doc) {
            (Some(old), Some(new)) if model::same_content(&old, &new) => None,
            (Some(old), None) => Some(Write::Doc(model::tombstone(id, old.get("_rev").cloned()))),
            (_, new) => new.map(Write::Doc),
        }
    }
}

/// Per extension, a written page's outcomes for the metrics: the sources it ran on, the error
/// documents made for it (handlers' and later_handlers'), and the last one's message and place.
fn page_outcomes(processed: &BTreeMap<String, u64>, items: &[SchemaItem]) -> Vec<(String, u64, u64, Option<LastError>)> {
    let mut out: BTreeMap<&str, (u64, u64, Option<LastError>)> = processed.iter().map(|(id, n)| (id.as_str(), (*n, 0, None))).collect();
    for item in items.iter().filter(|i| i.schema_id == ERROR_SCHEMA) {
        let entry = out.entry(item.ext_id.as_str()).or_default();
        entry.1 += 1;
        entry.2 = item.items.as_ref().map(|f| f.to_map()).and_then(|m| {
            let d = m.get("error_details")?;
            Some((
                d.get("message")?.as_str()?.to_string(),
                d.get("file").and_then(Value::as_str).map(str::to_string),
                d.get("line").and_then(Value::as_u64).map(|l| l as u32),
            ))
        });
    }
    out.into_iter().map(|(id, (processed, errors, last))| (id.to_string(), processed, errors, last)).collect()
}

/// Feeds a JSON value to a hasher, member by member, without writing it out.
fn hash_json(value: &Value, h: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(items) => {
            (4u8, items.len()).hash(h);
            items.iter().for_each(|v| hash_json(v, h));
        }
        Value::Object(members) => {
            (5u8, members.len()).hash(h);
            for (k, v) in members {
                k.hash(h);
                hash_json(v, h);
            }
        }
    }
}

/// An error's message, file and line.
type LastError = (String, Option<String>, Option<u32>);
