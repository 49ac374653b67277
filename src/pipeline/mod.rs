//! The work queue: one changes-feed reader hands each changed document to every extension that
//! wants its schema (in batches, across the JS pool), merges what they emit into schema
//! documents, and writes them back, where they cascade to further extensions.
//!
//! Bookkeeping lives in the store, beside the data:
//! - a *state record* per source (`rdstate!<source id>`) records, per extension, the source
//!   revision and code fingerprint it last ran on and the documents it produced. A source is
//!   skipped when both match (so a second run writes nothing, and an edited extension re-runs);
//!   outputs no longer emitted are removed. State records are written in the same bulk write
//!   as the outputs, after them, as the store's records (`Store::bulk_write_with_records`): the
//!   embedded store keeps them out of the changes feed; on CouchDB they are documents.
//! - a checkpoint (`_local` document) holds the feed position, advanced only after a page's
//!   writes are done, and the extensions' fingerprints: when they change, the feed is read from
//!   the start again (unchanged extensions skip cheaply).
//! - the values waiting for later_handlers (`rdlater!<checkpoint id>`, see `later`), written
//!   with the page that added them, before its state records, and the dependency index
//!   (`rddeps!<doc id>`): records too.
//!
//! A crash at any moment leaves a state from which the next run converges to the same documents:
//! a page is either checkpointed after its writes, or re-read; re-running a source produces the
//! same merged documents, which are not written again when they are already there.
//!
//! Invariant: the pipeline talks to the store only through the `Store` trait and to JS only
//! through the pool; it does not know which store it has.

mod deps;
mod later;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::js::{Batch, Category, DocOutcome, EmittedItem, FilterKeys, HandlerError, JsPool};
use crate::json_text::{self, Members};
use crate::store::{Change, Doc, Durability, NewDoc, Record, Seq, Store, StoreError, WriteResult};
use deps::{DepsIndex, DEPS_PREFIX};
use later::LaterQueue;
use crate::model::{self, SchemaItem};


/// Prefix of state records' ids.
const STATE_PREFIX: &str = "rdstate!";
/// The schema of the documents that record failures.
const ERROR_SCHEMA: &str = "rd.core.error";
/// Prefix of the record holding the values waiting for later_handlers (see `later`).
const LATER_PREFIX: &str = "rdlater!";
/// How many times a conflicting write is re-merged before it becomes an error.
const CONFLICT_RETRIES: usize = 5;
/// Documents per handler batch.
const HANDLER_BATCH: usize = 100;
/// Fewest values in a part of a `later_in_parts` later_handler's values.
const MIN_LATER_PART: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopped at the first handler error (--stop-on-error): {0}")]
    StoppedOnError(String),
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Changes read per page (default 2,000). Each page ends with a write, so larger pages cost
    /// less per change: 2,000 processed the generated mailbox ~1.4× faster than 500
    /// (BENCHMARKS.md, before later_handlers were moved out of the pages).
    pub page_size: usize,
    /// Keep following the feed instead of stopping when it is drained.
    pub continuous: bool,
    /// With `continuous`: follow the feed until this is raised, then finish what it holds (the
    /// later_handlers included) and return. An import that processes as it writes raises it
    /// when its last message is written.
    pub until: Option<Arc<std::sync::atomic::AtomicBool>>,
    pub stop_on_error: bool,
    /// `(k, n)`: take only sources whose id hashes to slice `k` of `n`.
    pub worker: Option<(u64, u64)>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { page_size: 2000, continuous: false, until: None, stop_on_error: false, worker: None }
    }
}

/// Counters of a run, for progress and the final report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub changes_read: u64,
    pub handler_calls: u64,
    pub skipped_up_to_date: u64,
    pub docs_written: u64,
    pub docs_removed: u64,
    pub errors: u64,
    pub conflicts_retried: u64,
}

/// What the pipeline knows of one loaded extension.
#[derive(Debug, Clone)]
struct Ext {
    pool_index: usize,
    id: String,
    schemas: Vec<String>,
    provider: bool,
    confidence: f64,
    fingerprint: String,
    uses_dependencies: bool,
    /// No `source_schemas`: its `filter(id, rev, schema_id)` chooses its sources.
    filtered: bool,
    /// A smart extension manages its own outputs: what it stops emitting is not withdrawn.
    smart: bool,
    has_later_handler: bool,
    /// `source_fields`: the handler gets only these members of a source.
    fields: Option<Vec<String>>,
    /// `[schema, field]` pairs it finds documents by, indexed before a run starts.
    indexes: Vec<(String, String)>,
    /// Its later_handler may be called on parts of its values, side by side.
    later_in_parts: bool,
}

/// What one page of changes leads to: items to merge, contributions to withdraw, and the
/// sources' new state documents (written last).
#[derive(Default)]
struct PageWork {
    items: Vec<SchemaItem>,
    removals: Vec<(String, String)>,
    states: Vec<Record>,
    /// (document depended on, source, extension): outputs to recompute when it changes.
    dependencies: Vec<(String, String, String)>,
    /// Values given to `process_later`, by extension id.
    later: BTreeMap<String, Vec<Value>>,
}

/// One extension to run on one source.
struct Job {
    source: usize,
    ext: usize,
}

/// What one job gives its page (see `Pipeline::job_result`).
struct JobResult {
    later: Vec<Value>,
    items: Vec<SchemaItem>,
    removals: Vec<(String, String)>,
    dependencies: Vec<(String, String, String)>,
    /// Its entry in the source's state record, as JSON text.
    state: String,
    error: Option<HandlerError>,
}

pub struct Pipeline {
    store: Arc<dyn Store>,
    pool: Arc<JsPool>,
    exts: Vec<Ext>,
}

impl Pipeline {
    /// A pipeline over the extensions of `pool` that loaded (the others are reported by
    /// `raindrop ext list`).
    pub fn new(store: Arc<dyn Store>, pool: Arc<JsPool>) -> Pipeline {
        let exts = pool
            .extensions()
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let d = e.declaration.as_ref().ok()?;
                Some(Ext {
                    pool_index: i,
                    id: d.id.clone(),
                    schemas: d.source_schemas.clone().unwrap_or_default(),
                    provider: d.category != Category::Extender,
                    confidence: d.confidence,
                    fingerprint: e.source.fingerprint(),
                    uses_dependencies: d.uses_dependencies,
                    filtered: d.source_schemas.is_none() && d.has_filter,
                    smart: d.category == Category::Smart,
                    has_later_handler: d.has_later_handler,
                    fields: d.source_fields.clone(),
                    indexes: d.indexes.clone(),
                    later_in_parts: d.later_in_parts,
                })
            })
            .collect();
        Pipeline { store, pool, exts }
    }

    fn checkpoint_id(options: &RunOptions) -> String {
        match options.worker {
            Some((k, n)) => format!("raindrop-pipeline-{k}-of-{n}"),
            None => "raindrop-pipeline".to_string(),
        }
    }

    fn fingerprints(&self) -> Value {
        Value::Object(self.exts.iter().map(|e| (e.id.clone(), Value::String(e.fingerprint.clone()))).collect())
    }

    /// Forgets the feed position, so the next run reads the feed from the start.
    pub fn reset_checkpoint(&self, options: &RunOptions) -> Result<(), StoreError> {
        self.store.put_local(&Self::checkpoint_id(options), &json!({ "seq": null }))
    }

    /// Processes the feed from the checkpoint until it is drained (or forever, continuous).
    /// `progress` is called after every page is written.
    ///
    /// Two stages overlap: this thread reads a page and runs the extensions over it (on the
    /// pool) while a writer thread merges and writes the previous page and then advances the
    /// checkpoint past it. A page read ahead may see a state document the writer has not yet
    /// updated; that only costs a re-run whose identical result is not written again.
    ///
    /// Values given to `process_later` wait in a queue (see `later`) until the feed is drained
    /// and everything is written, then the later_handlers run over them in one more page.
    pub fn run(&self, options: &RunOptions, progress: impl FnMut(&Stats) + Send) -> Result<Stats, PipelineError> {
        let ckpt_id = Self::checkpoint_id(options);
        let fingerprints = self.fingerprints();
        for ext in &self.exts {
            for (schema, field) in &ext.indexes {
                self.store.index_field(schema, field)?;
            }
        }
        let saved = self.store.get_local(&ckpt_id)?;
        let mut since = match &saved {
            Some(c) if c.get("fingerprints") == Some(&fingerprints) => {
                c.get("seq").and_then(Value::as_str).map(Seq::from_raw).unwrap_or_else(Seq::zero)
            }
            Some(_) => {
                tracing::info!("extensions changed since the last run: re-reading the feed from the start");
                Seq::zero()
            }
            None => Seq::zero(),
        };
        // Kept even when the extensions changed: the sources that gave these values are done
        // and an unchanged extension will not be asked again.
        let later_id = format!("{LATER_PREFIX}{ckpt_id}");
        bookkeeping_to_records(&*self.store)?;
        let later_doc = self.store.get_records(std::slice::from_ref(&later_id))?.pop().flatten();
        let mut later = LaterQueue::from_saved(later_doc.as_ref().and_then(|d| d.get("values")));
        let rev_of = |d: Option<Doc>| d.and_then(|d| d.get("_rev").and_then(Value::as_str).map(str::to_string));
        let mut later_rev: Option<String> = rev_of(later_doc);
        let stats = std::sync::Mutex::new(Stats::default());
        // A page's work, the feed position after it, and the later queue if the page changed it.
        let (work_tx, work_rx) = crossbeam_channel::bounded::<(PageWork, Seq, Option<String>)>(1);
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new().name("pipeline-writer".into()).spawn_scoped(scope, || -> Result<(), PipelineError> {
                let mut progress = progress;
                let mut deps_index = DepsIndex::default();
                for (work, seq, waiting) in work_rx {
                    let mut local = Stats::default();
                    let t0 = Instant::now();
                    // The queue is written before the states of the sources that fed it.
                    let mut bookkeeping = Vec::new();
                    if let Some(values) = waiting {
                        if later_rev.is_none() {
                            // Not written by this run yet (or its last write failed).
                            later_rev = rev_of(self.store.get_records(std::slice::from_ref(&later_id))?.pop().flatten());
                        }
                        bookkeeping.push(Record::Text { id: later_id.clone(), rev: later_rev.take(), body: format!("{{\"values\":{values}}}") });
                    }
                    // The dependency index before the states, in the same write: if a crash
                    // comes between, it names outputs not yet written, which costs a re-run.
                    let t1 = Instant::now();
                    let mut index = deps_index.updates(&*self.store, work.dependencies)?;
                    crate::timing::record("W:deps", t1, 0);
                    index.append(&mut bookkeeping);
                    let checkpoint = json!({ "seq": seq.as_str(), "fingerprints": fingerprints });
                    let bookkeeping_results = self.write(work.items, work.removals, index, work.states, (&ckpt_id, &checkpoint), &mut local)?;
                    deps_index.written(&bookkeeping_results);
                    for result in bookkeeping_results {
                        if let WriteResult::Ok { id, rev } = result {
                            if id == later_id {
                                later_rev = Some(rev);
                            }
                        }
                    }
                    crate::timing::record("W:write", t0, 0);
                    let snapshot = {
                        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                        s.docs_written += local.docs_written;
                        s.docs_removed += local.docs_removed;
                        s.conflicts_retried += local.conflicts_retried;
                        s.errors += local.errors;
                        s.clone()
                    };
                    progress(&snapshot);
                    let _ = done_tx.send(());
                }
                Ok(())
            });
            let writer = match writer {
                Ok(w) => w,
                Err(e) => return Err(PipelineError::Store(StoreError::BadRequest(format!("cannot start the writer thread: {e}")))),
            };
            let add_stats = |local: &Stats| {
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                s.changes_read += local.changes_read;
                s.handler_calls += local.handler_calls;
                s.skipped_up_to_date += local.skipped_up_to_date;
                s.errors += local.errors;
            };
            let mut read = || -> Result<(), PipelineError> {
                let mut in_flight = 0usize;
                // Short waits when a signal may end the run, so it is seen soon.
                let wait = if options.until.is_some() { Duration::from_millis(20) } else { Duration::from_secs(30) };
                loop {
                    // Read before the page: raised then, everything it was raised after is in
                    // the feed this page reads.
                    let stopping = options.until.as_ref().is_some_and(|u| u.load(std::sync::atomic::Ordering::SeqCst));
                    let t0 = Instant::now();
                    let page = if options.continuous && in_flight == 0 && later.is_empty() {
                        // Wait for something new, then read it as text like any page.
                        let news = self.store.wait_changes(&since, 1, false, wait)?;
                        if news.changes.is_empty() {
                            crate::store::ChangesPage { changes: Vec::new(), last_seq: since.clone() }
                        } else {
                            self.store.changes_text(&since, options.page_size)?
                        }
                    } else {
                        self.store.changes_text(&since, options.page_size)?
                    };
                    crate::timing::record("R:changes", t0, page.changes.len());
                    while done_rx.try_recv().is_ok() {
                        in_flight -= 1;
                    }
                    let drained = page.changes.is_empty();
                    // Waits for the writer to finish one page; false when it stopped (its error
                    // is reported below).
                    let written = |in_flight: &mut usize| {
                        let ok = done_rx.recv().is_ok();
                        *in_flight -= usize::from(ok);
                        ok
                    };
                    if drained && in_flight > 0 {
                        // What the writer is writing may cascade: wait for it, then look again.
                        if !written(&mut in_flight) {
                            return Ok(());
                        }
                        continue;
                    }
                    if drained && later.is_empty() {
                        if options.continuous && !stopping {
                            continue;
                        }
                        return Ok(());
                    }
                    let mut local = Stats { changes_read: page.changes.len() as u64, ..Stats::default() };
                    let t0 = Instant::now();
                    let (mut work, mut first_error) = self.prepare_page(&page.changes, options, &mut local)?;
                    crate::timing::record("R:prepare", t0, 0);
                    for (ext, values) in std::mem::take(&mut work.later) {
                        later.extend(&ext, values);
                    }
                    // The later_handlers run once everything before is written and the feed has
                    // nothing new (they then read settled documents), or when the queue is due.
                    if drained || later.due() {
                        // Settled means written: a later_handler (the conversations) may build
                        // on what the previous run of the queue emitted.
                        while in_flight > 0 {
                            if !written(&mut in_flight) {
                                return Ok(());
                            }
                        }
                        let t0 = Instant::now();
                        let (items, removals, error) = self.run_later(later.take(), &later_id, &mut local);
                        crate::timing::record("R:later", t0, 0);
                        work.items.extend(items);
                        work.removals.extend(removals);
                        first_error = first_error.or(error);
                    }
                    add_stats(&local);
                    if !drained {
                        since = page.last_seq.clone();
                    }
                    let t0 = Instant::now();
                    if work_tx.send((work, since.clone(), later.saved())).is_err() {
                        return Ok(()); // the writer stopped; its error is reported below
                    }
                    crate::timing::record("R:send-wait", t0, 0);
                    in_flight += 1;
                    if let (true, Some(e)) = (options.stop_on_error, first_error) {
                        return Err(PipelineError::StoppedOnError(e));
                    }
                }
            };
            let read_result = read();
            drop(work_tx);
            let write_result = writer.join().unwrap_or_else(|_| Err(PipelineError::Store(StoreError::BadRequest("the writer thread panicked".into()))));
            write_result.and(read_result)
        })?;
        Ok(stats.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `writer` (something that writes to the store: an import) on a thread of its own
    /// while following the feed, and returns once it has finished and everything it wrote has
    /// been processed: its messages are processed as they arrive instead of after it.
    pub fn run_beside<R: Send>(&self, options: &RunOptions, progress: impl FnMut(&Stats) + Send, writer: impl FnOnce() -> R + Send) -> (Result<Stats, PipelineError>, R) {
        /// Raised however the writer ends, a panic included, so the run always ends.
        struct RaiseOnDrop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for RaiseOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let options = RunOptions { continuous: true, until: Some(done.clone()), ..options.clone() };
        std::thread::scope(|scope| {
            let raise = RaiseOnDrop(done);
            let written = scope.spawn(move || {
                let _raise = raise;
                writer()
            });
            let stats = self.run(&options, progress);
            match written.join() {
                Ok(r) => (stats, r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs every wanting extension over one page of changes and returns what to write, with
    /// the first handler error, if any (recorded as an `rd.core.error` document in the work).
    fn prepare_page(&self, changes: &[Change<Arc<str>>], options: &RunOptions, stats: &mut Stats) -> Result<(PageWork, Option<String>), PipelineError> {
        // Dependents of the documents that changed: outputs that declared one of them in `deps`
        // are recomputed, whatever their state says.
        let mut forced: Vec<(String, String)> = Vec::new();
        let mut extra_sources: Vec<Source> = Vec::new();
        if self.exts.iter().any(|e| e.uses_dependencies) {
            let index_ids: Vec<String> = changes.iter().filter(|c| model::schema_of_id(&c.id).is_some()).map(|c| format!("{DEPS_PREFIX}{}", c.id)).collect();
            for index in self.store.get_records(&index_ids)?.into_iter().flatten() {
                for pair in index.get("dependents").and_then(Value::as_array).into_iter().flatten() {
                    if let Some([Value::String(src), Value::String(ext)]) = pair.as_array().map(Vec::as_slice) {
                        forced.push((src.clone(), ext.clone()));
                    }
                }
            }
            forced.sort();
            forced.dedup();
            let in_page: std::collections::HashSet<&str> = changes.iter().map(|c| c.id.as_str()).collect();
            let mut missing: Vec<String> = forced
                .iter()
                .map(|(src, _)| src.clone())
                .filter(|src| !in_page.contains(src.as_str()) && in_slice(src, options.worker))
                .collect();
            missing.dedup();
            extra_sources = self.store.get_many(&missing)?.into_iter().flatten().filter(|d| d.contains_key("rd_schema_provider")).map(|d| Source::from_doc(&d)).collect();
        }

        // Sources: live schema documents (in this worker's slice) that a provider completed.
        let mut sources: Vec<Source> = extra_sources;
        let mut deleted: Vec<&str> = Vec::new();
        for c in changes {
            if model::schema_of_id(&c.id).is_none() || !in_slice(&c.id, options.worker) {
                continue;
            }
            match (&c.doc, c.deleted) {
                (_, true) => deleted.push(&c.id),
                (Some(text), false) => match Source::from_text(text.clone()) {
                    Some(source) if source.provider => sources.push(source),
                    Some(_) => {}
                    None => tracing::warn!(id = %c.id, "a document of the feed is not a JSON object; skipped"),
                },
                _ => {}
            }
        }
        if sources.is_empty() && deleted.is_empty() {
            return Ok((PageWork::default(), None));
        }
        let state_ids: Vec<String> = sources
            .iter()
            .map(|d| state_id(&d.id))
            .chain(deleted.iter().map(|id| state_id(id)))
            .collect();
        let t0 = Instant::now();
        let mut states: Vec<Option<Doc>> = self.store.get_records(&state_ids)?;
        crate::timing::record("P:states", t0, state_ids.len());
        let t0 = Instant::now();

        // Extensions without source_schemas are asked, per source, through their filter().
        // Error documents are not offered to filters: a filter that failed on every document
        // failed again on each error document it caused, and so without end (4 sources made
        // 228,000 writes). An extension that wants them names `rd.core.error` in its
        // source_schemas.
        let mut accepted: HashMap<usize, Vec<bool>> = HashMap::new();
        let mut filter_failures: Vec<(usize, usize, HandlerError)> = Vec::new();
        let offered: Vec<usize> = (0..sources.len()).filter(|&si| sources[si].schema != ERROR_SCHEMA).collect();
        if !offered.is_empty() && self.exts.iter().any(|e| e.filtered) {
            let keys: Vec<(String, String, String)> = offered
                .iter()
                .map(|&si| (sources[si].id.clone(), sources[si].rev.clone(), sources[si].schema.clone()))
                .collect();
            // Encoded once for all filters, which run side by side.
            let keys = Arc::new(FilterKeys::new(&keys));
            let pending: Vec<_> = self
                .exts
                .iter()
                .enumerate()
                .filter(|(_, e)| e.filtered)
                .map(|(ei, ext)| (ei, self.pool.submit_filter(ext.pool_index, &keys)))
                .collect();
            for (ei, call) in pending {
                let answers = call.wait();
                let mut yes = vec![false; sources.len()];
                for (&si, answer) in offered.iter().zip(answers) {
                    match answer {
                        Ok(b) => yes[si] = b,
                        // The extension would not run on its own output anyway, and an error
                        // recorded there would be its output again.
                        Err(_) if sources[si].contributors.contains(&self.exts[ei].id) => {}
                        Err(e) => filter_failures.push((si, ei, e)),
                    }
                }
                accepted.insert(ei, yes);
            }
        }

        crate::timing::record("P:filter", t0, 0);
        // Which (source, extension) pairs need running.
        let mut jobs: Vec<Job> = Vec::new();
        for (si, src) in sources.iter().enumerate() {
            let schema = src.schema.as_str();
            let rev = src.rev.as_str();
            for (ei, ext) in self.exts.iter().enumerate() {
                let wanted = match accepted.get(&ei) {
                    Some(yes) => yes[si],
                    None => ext.schemas.iter().any(|s| s == schema),
                };
                // An extension never runs on a document it contributes to: its own output would
                // feed it again, forever (the original refused this too).
                let own_output = src.contributors.contains(&ext.id);
                if !wanted || own_output {
                    continue;
                }
                let done = states[si].as_ref().and_then(|s| s.get(&ext.id));
                let is_forced = !forced.is_empty()
                    && forced.binary_search(&(src.id.clone(), ext.id.clone())).is_ok();
                let up_to_date = !is_forced && done.is_some_and(|d| {
                    d.get("rev").and_then(Value::as_str) == Some(rev)
                        && d.get("fingerprint").and_then(Value::as_str) == Some(&ext.fingerprint)
                });
                if up_to_date {
                    stats.skipped_up_to_date += 1;
                } else {
                    jobs.push(Job { source: si, ext: ei });
                }
            }
        }

        // Each outcome becomes its items, removals and state as it arrives, while the pool
        // runs the page's other batches; they are gathered in job order below.
        let t0 = Instant::now();
        let mut results: Vec<Option<JobResult>> = (0..jobs.len()).map(|_| None).collect();
        self.run_jobs(&sources, &jobs, |j, outcome| {
            let job = &jobs[j];
            results[j] = Some(self.job_result(&sources[job.source], &self.exts[job.ext], states[job.source].as_ref(), outcome));
        });
        crate::timing::record("P:run_jobs", t0, jobs.len());
        let t0 = Instant::now();
        stats.handler_calls += jobs.len() as u64;
        for (si, ei, e) in filter_failures {
            jobs.push(Job { source: si, ext: ei });
            results.push(Some(self.job_result(&sources[si], &self.exts[ei], states[si].as_ref(), DocOutcome::Failed(e))));
        }

        let mut items: Vec<SchemaItem> = Vec::new();
        let mut removals: Vec<(String, String)> = Vec::new(); // (doc id, ext id)
        let mut first_error = None;
        // Each source's new state entries as text, by extension id.
        let mut new_states: HashMap<usize, BTreeMap<String, String>> = HashMap::new();
        let mut dependencies: Vec<(String, String, String)> = Vec::new();
        let mut later: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
        for (job, result) in jobs.iter().zip(results) {
            let Some(result) = result else { continue };
            let (src, ext) = (&sources[job.source], &self.exts[job.ext]);
            if let Some(e) = &result.error {
                stats.errors += 1;
                tracing::warn!(ext = %ext.id, source = %src.id, "handler failed: {e}");
                first_error.get_or_insert_with(|| format!("{}: {e}", ext.id));
            }
            if !result.later.is_empty() {
                later.entry(job.ext).or_default().extend(result.later);
            }
            removals.extend(result.removals);
            dependencies.extend(result.dependencies);
            new_states.entry(job.source).or_default().insert(ext.id.clone(), result.state);
            items.extend(result.items);
        }

        crate::timing::record("P:outcomes", t0, 0);
        // Sources that were deleted: their outputs go, and so does their state.
        let mut state_writes: Vec<Record> = Vec::new();
        for (k, id) in deleted.iter().enumerate() {
            let si = sources.len() + k;
            if let Some(state) = states[si].take() {
                for (ext_id, entry) in state.iter().filter(|(k, _)| !k.starts_with('_')) {
                    for out in entry.get("outputs").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                        removals.push((out.to_string(), ext_id.clone()));
                    }
                }
                state_writes.push(model::tombstone(&state_id(id), state.get("_rev").cloned()).into());
            }
        }
        for (si, entries) in new_states {
            let id = state_id(&sources[si].id);
            match states[si].take() {
                // Joining a record written before (another extension's state, an older run).
                Some(mut state) => {
                    for (ext, text) in entries {
                        state.insert(ext, serde_json::from_str(&text).unwrap_or(Value::Null));
                    }
                    state_writes.push(state.into());
                }
                // Most sources: a new record, whose text is the entries' joined.
                None => {
                    let body = json_text::object(entries.iter().map(|(ext, text)| (ext.as_str(), text.as_str())));
                    state_writes.push(Record::Text { id, rev: None, body });
                }
            }
        }

        let later = later.into_iter().map(|(ei, values)| (self.exts[ei].id.clone(), values)).collect();
        Ok((PageWork { items, removals, states: state_writes, dependencies, later }, first_error))
    }

    /// Runs the later_handlers over the values their extensions gave to `process_later`; the
    /// extensions' calls run side by side, their results are taken in extension order. Returns
    /// the items they emitted and the first error. A call that fails (or emits what cannot be
    /// written) leaves an `rd.core.error` document holding its values and the queue they came
    /// from (`later_id`), so `retry-errors` can queue them again: nothing is lost to a
    /// handler that failed for a while (a time limit, a store that was away).
    fn run_later(&self, values: BTreeMap<String, Vec<Value>>, later_id: &str, stats: &mut Stats) -> (Vec<SchemaItem>, Vec<(String, String)>, Option<String>) {
        let mut items = Vec::new();
        let mut removals = Vec::new();
        let mut first_error = None;
        let mut calls: Vec<(usize, Vec<Value>)> = Vec::new();
        for (ext_id, values) in values {
            let Some(ei) = self.exts.iter().position(|e| e.id == ext_id) else {
                tracing::warn!(ext = %ext_id, "process_later values of an extension that is no longer loaded are dropped");
                continue;
            };
            let ext = &self.exts[ei];
            if !ext.has_later_handler {
                tracing::warn!(ext = %ext.id, "process_later was called but the extension has no later_handler");
                continue;
            }
            // Independent values are cut into one part per thread (each part big enough to be
            // worth a call of its own); otherwise the handler sees them all at once.
            let parts = if ext.later_in_parts { self.pool.threads().min(values.len() / MIN_LATER_PART).max(1) } else { 1 };
            let size = values.len().div_ceil(parts);
            let mut values = values;
            while !values.is_empty() {
                let rest = values.split_off(size.min(values.len()));
                calls.push((ei, std::mem::replace(&mut values, rest)));
            }
        }
        // Whole calls first: the parts then fill in around them.
        calls.sort_by_key(|(ei, _)| self.exts[*ei].later_in_parts);
        let pending: Vec<_> = calls
            .into_iter()
            .map(|(ei, values)| (ei, values.clone(), self.pool.submit_later(self.exts[ei].pool_index, values)))
            .collect();
        for (ei, values, call) in pending {
            let ext = &self.exts[ei];
            let failure = match call.wait() {
                DocOutcome::Emitted(emission) => {
                    let (withdrawn, emitted): (Vec<EmittedItem>, Vec<EmittedItem>) = emission.items.into_iter().partition(|e| e.withdraw);
                    match (self.later_items(ext, emitted), withdrawals(ext, None, withdrawn)) {
                        (Ok(produced), Ok(withdrawn)) => {
                            items.extend(produced);
                            removals.extend(withdrawn);
                            continue;
                        }
                        (Err(e), _) | (_, Err(e)) => HandlerError::new(crate::js::FailureKind::BadOutput, e),
                    }
                }
                DocOutcome::Failed(e) => e,
            };
            stats.errors += 1;
            tracing::warn!(ext = %ext.id, values = values.len(), "later_handler failed (its values are kept for retry-errors): {failure}");
            first_error.get_or_insert_with(|| format!("{}: {failure}", ext.id));
            items.push(later_error_item(ext, &failure, values, later_id));
        }

        (items, removals, first_error)
    }

    /// Submits the jobs to the pool in per-extension batches and returns one outcome per job.
    /// Runs `jobs` across the pool and gives `each` every job's outcome (by job index) as its
    /// batch comes back.
    fn run_jobs(&self, sources: &[Source], jobs: &[Job], mut each: impl FnMut(usize, DocOutcome)) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut by_ext: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (j, job) in jobs.iter().enumerate() {
            by_ext.entry(job.ext).or_default().push(j);
        }
        let mut batches: Vec<Vec<usize>> = Vec::new();
        // Sources cut down to `source_fields`, by (source, fields): extensions that ask for the
        // same fields share one cut.
        let mut cut: HashMap<(usize, &[String]), Arc<str>> = HashMap::new();
        for (ext, job_ids) in by_ext {
            let fields = self.exts[ext].fields.as_deref();
            for chunk in job_ids.chunks(HANDLER_BATCH) {
                let docs = chunk
                    .iter()
                    .map(|&j| {
                        let source = &sources[jobs[j].source];
                        let Some(fields) = fields else { return source.text.clone() };
                        cut.entry((jobs[j].source, fields))
                            .or_insert_with(|| {
                                source.members.as_ref().map_or_else(|| source.text.clone(), |m| Arc::from(project_members(&source.text, m, fields)))
                            })
                            .clone()
                    })
                    .collect();
                self.pool.submit(Batch { ext: self.exts[ext].pool_index, docs, tag: batches.len() as u64 }, &tx);
                batches.push(chunk.to_vec());
            }
        }
        drop(tx);
        let mut answered = vec![false; jobs.len()];
        for result in rx.iter() {
            for (&j, outcome) in batches[result.tag as usize].iter().zip(result.outcomes) {
                answered[j] = true;
                each(j, outcome);
            }
        }
        for (j, _) in answered.iter().enumerate().filter(|(_, a)| !**a) {
            each(j, DocOutcome::Failed(HandlerError {
                kind: crate::js::FailureKind::Exception,
                message: "the JS pool returned no outcome".into(),
                file: None, line: None, stack: None,
            }));
        }
    }

    /// What `ext` running on `src` (whose state record is `state`) gives the page: the items
    /// it emitted (or its error document), the outputs it no longer makes or withdrew, the
    /// documents they depend on, its values for `process_later` and its new state.
    fn job_result(&self, src: &Source, ext: &Ext, state: Option<&Doc>, outcome: DocOutcome) -> JobResult {
        let mut later = Vec::new();
        let mut withdrawn: Vec<(String, String)> = Vec::new();
        let (mut produced, error) = match outcome {
            DocOutcome::Emitted(emission) => {
                later = emission.later;
                let (taken_back, emitted): (Vec<EmittedItem>, Vec<EmittedItem>) = emission.items.into_iter().partition(|e| e.withdraw);
                match withdrawals(ext, Some(&src.rd_key), taken_back) {
                    Ok(w) => {
                        withdrawn = w;
                        self.items_from_emission(src, ext, emitted)
                    }
                    Err(e) => (Vec::new(), Some(HandlerError::new(crate::js::FailureKind::BadOutput, e))),
                }
            }
            DocOutcome::Failed(e) => (Vec::new(), Some(e)),
        };
        if let Some(e) = &error {
            produced.push(error_item(&src.rd_key, (&src.id, &src.rev), ext, e));
        }
        let mut output_ids: Vec<String> = produced.iter().filter_map(|i| model::doc_id(&i.rd_key, &i.schema_id).ok()).collect();
        let mut dependencies = Vec::new();
        for item in &produced {
            for dep in &item.deps {
                if let Some(Ok(dep_id)) = dep.as_array().and_then(|d| Some(model::doc_id(d.first()?, d.get(1)?.as_str()?))) {
                    dependencies.push((dep_id, src.id.clone(), ext.id.clone()));
                }
            }
        }
        let previous: Vec<String> = state
            .and_then(|s| s.get(&ext.id))
            .and_then(|d| d.get("outputs"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        // What `withdraw_schema` named goes (unless the call failed) and is no output.
        if error.is_some() {
            withdrawn.clear();
        }
        let is_withdrawn = |o: &String| withdrawn.iter().any(|(w, _)| w == o);
        output_ids.retain(|o| !is_withdrawn(o));
        let previous: Vec<String> = previous.into_iter().filter(|o| !is_withdrawn(o)).collect();
        let mut removals = withdrawn;
        if ext.smart {
            // Kept (and still listed, so `unprocess` can withdraw them).
            output_ids.extend(previous.into_iter().filter(|o| !output_ids.contains(o)).collect::<Vec<_>>());
        } else {
            for old in previous.iter().filter(|o| !output_ids.contains(o)) {
                removals.push((old.clone(), ext.id.clone()));
            }
        }
        // Printed here, as the record's text holds it (members in serde_json's order).
        fn json(v: &impl serde::Serialize) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        let state = format!(
            "{{\"error\":{},\"fingerprint\":{},\"outputs\":{},\"rev\":{}}}",
            error.is_some(),
            json(&ext.fingerprint),
            json(&output_ids),
            json(&src.rev),
        );
        JobResult { later, items: produced, removals, dependencies, state, error }
    }

    fn items_from_emission(&self, src: &Source, ext: &Ext, emitted: Vec<EmittedItem>) -> (Vec<SchemaItem>, Option<HandlerError>) {
        let mut out = Vec::with_capacity(emitted.len());
        for mut e in emitted {
            let rd_key = e.rd_key.take().unwrap_or_else(|| src.rd_key.clone());
            if e.deps.as_ref().and_then(Value::as_array).is_some_and(|d| !d.is_empty()) && !ext.uses_dependencies {
                let problem = HandlerError::new(crate::js::FailureKind::BadOutput, format!("emit_schema({}): deps need `uses_dependencies: true` in the declaration", e.schema_id));
                return (Vec::new(), Some(problem));
            }
            if let Err(err) = model::doc_id(&rd_key, &e.schema_id) {
                let problem = HandlerError::new(crate::js::FailureKind::BadOutput, format!("emit_schema({}): {err}", e.schema_id));
                return (Vec::new(), Some(problem));
            }
            let source = Some((src.id.clone(), src.rev.clone()));
            match schema_item(ext, rd_key, source, e) {
                Ok(item) => out.push(item),
                Err(err) => {
                    let problem = HandlerError::new(crate::js::FailureKind::BadOutput, err);
                    return (Vec::new(), Some(problem));
                }
            }
        }
        (out, None)
    }

    /// Items emitted by a `later_handler`: each names its `rd_key` (and, optionally, its
    /// `rd_source` as `[id, rev]`).
    fn later_items(&self, ext: &Ext, emitted: Vec<EmittedItem>) -> Result<Vec<SchemaItem>, String> {
        emitted
            .into_iter()
            .map(|mut e| {
                let rd_key = e.rd_key.take().ok_or_else(|| format!("emit_schema({}) in later_handler needs an rd_key", e.schema_id))?;
                model::doc_id(&rd_key, &e.schema_id).map_err(|err| err.to_string())?;
                let rd_source = e.rd_source.as_ref().and_then(Value::as_array).and_then(|s| match s.as_slice() {
                    [Value::String(id), Value::String(rev)] => Some((id.clone(), rev.clone())),
                    _ => None,
                });
                schema_item(ext, rd_key, rd_source, e)
            })
            .collect()
    }

    /// Merges items into their documents, removes withdrawn contributions, writes everything
    /// (the data, then as records the `bookkeeping` — dependency index, later queue — and the
    /// sources' `states` last), and
    /// re-merges on conflicts a bounded number of times; each write also puts the `checkpoint`
    /// (the embedded store commits it all at once). Returns the results of writing
    /// `bookkeeping`.
    fn write(&self, items: Vec<SchemaItem>, removals: Vec<(String, String)>, bookkeeping: Vec<Record>, states: Vec<Record>, checkpoint: (&str, &Value), stats: &mut Stats) -> Result<Vec<WriteResult>, StoreError> {
        let (bookkeeping_results, refused) = self.write_merged(items, removals, bookkeeping, states, checkpoint, stats)?;
        if !refused.is_empty() {
            let (errors, states) = self.refusal_errors(refused, stats)?;
            // Once: an error document the store refuses too is only logged (below).
            let (_, refused_again) = self.write_merged(errors, Vec::new(), Vec::new(), states, checkpoint, stats)?;
            for (id, _, reason) in refused_again {
                tracing::error!("the store refused {id}, the error document of an output it refused: {reason}");
            }
        }
        Ok(bookkeeping_results)
    }

    /// [`Pipeline::write`] without the second chance: also returns the documents the store
    /// refused, with the items that made each and the store's reason.
    fn write_merged(&self, items: Vec<SchemaItem>, removals: Vec<(String, String)>, bookkeeping: Vec<Record>, states: Vec<Record>, checkpoint: (&str, &Value), stats: &mut Stats) -> Result<(Vec<WriteResult>, Vec<Refused>), StoreError> {
        let mut refused: Vec<Refused> = Vec::new();
        let mut pending_items: BTreeMap<String, Vec<SchemaItem>> = BTreeMap::new();
        for item in items {
            if let Ok(id) = model::doc_id(&item.rd_key, &item.schema_id) {
                pending_items.entry(id).or_default().push(item);
            }
        }
        let mut pending_removals: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, ext) in removals {
            if !pending_items.get(&id).is_some_and(|v| v.iter().any(|i| i.ext_id == ext)) {
                pending_removals.entry(id).or_default().push(ext);
            }
        }
        let mut ids: Vec<String> = pending_items.keys().chain(pending_removals.keys()).cloned().collect();
        ids.sort();
        ids.dedup();
        // Records, written with the first attempt only: the bookkeeping before the states (on a
        // store whose write is not one transaction, a crash in between then leaves no state
        // naming what is not kept).
        let n_bookkeeping = bookkeeping.len();
        let mut records = bookkeeping;
        records.extend(states);
        let mut bookkeeping_results = Vec::new();
        for attempt in 0..=CONFLICT_RETRIES {
            let t0 = Instant::now();
            let current = self.store.get_many(&ids)?;
            crate::timing::record("W:get_many", t0, ids.len());
            let t0 = Instant::now();
            // Each document merges on its own: the page's documents merge side by side. A new
            // document from one item is made as text (see `model::Fields`).
            let merge = |(id, existing): (&String, Option<Doc>)| -> Option<Write> {
                let items = pending_items.get(id).map(Vec::as_slice).unwrap_or_default();
                if let (None, None, [item]) = (&existing, pending_removals.get(id), items) {
                    if let Some(body) = model::new_doc_body(item) {
                        return Some(Write::New(NewDoc { id: id.clone(), schema: item.schema_id.clone(), body }));
                    }
                }
                let mut doc = existing.clone();
                for ext in pending_removals.get(id).into_iter().flatten() {
                    doc = doc.and_then(|d| model::remove_contributor(&d, ext));
                }
                for item in pending_items.get(id).into_iter().flatten() {
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
            };
            let mut writes: Vec<Doc> = Vec::new();
            let mut new_docs: Vec<NewDoc> = Vec::new();
            for write in crate::par::map_in_parts(ids.iter().zip(current).collect(), 256, merge).into_iter().flatten() {
                match write {
                    Write::Doc(d) => writes.push(d),
                    Write::New(d) => new_docs.push(d),
                }
            }
            stats.docs_removed += writes.iter().filter(|d| d.contains_key("_deleted")).count() as u64;
            let records = std::mem::take(&mut records);
            if writes.is_empty() && new_docs.is_empty() && records.is_empty() {
                if attempt == 0 {
                    self.store.put_local(checkpoint.0, checkpoint.1)?;
                }
                return Ok((bookkeeping_results, refused));
            }
            crate::timing::record("W:merge", t0, 0);
            let t0 = Instant::now();
            let nw = writes.len() + new_docs.len() + records.len();
            let (results, record_results) = self.store.bulk_write_with_records(writes, new_docs, records, Some(checkpoint), Durability::Deferred)?;
            crate::timing::record("W:bulk_write", t0, nw);
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
            for r in &results {
                match r {
                    WriteResult::Ok { .. } => stats.docs_written += 1,
                    WriteResult::Conflict { id } => conflicted.push(id.clone()),
                    WriteResult::Error { id, reason } => {
                        tracing::warn!("the store refused {id}: {reason}");
                        let made_by = pending_items.remove(id).unwrap_or_default();
                        refused.push((id.clone(), made_by, reason.clone()));
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
    /// them again). Written in a write of their own right after the page's.
    fn refusal_errors(&self, refused: Vec<Refused>, stats: &mut Stats) -> Result<(Vec<SchemaItem>, Vec<Record>), StoreError> {
        let mut errors = Vec::new();
        // source id → extension id → (refused output, error document) pairs
        let mut by_source: BTreeMap<String, BTreeMap<String, Vec<(String, String)>>> = BTreeMap::new();
        for (id, made_by, reason) in refused {
            for item in made_by {
                let Some(ext) = self.exts.iter().find(|e| e.id == item.ext_id) else { continue };
                stats.errors += 1;
                let e = HandlerError::new(crate::js::FailureKind::BadOutput, format!("the store refused the output {id}: {reason}"));
                let error = match &item.rd_source {
                    Some((sid, srev)) => {
                        let key = model::rd_key_of_id(sid).unwrap_or_else(|| item.rd_key.clone());
                        error_item(&key, (sid, srev), ext, &e)
                    }
                    // A later_handler's output: an error document of its own, keyed by it.
                    None => error_item(&json!(["ext", format!("{}#refused-{}", ext.id, &crate::digest::digest(&[id.as_bytes()])[..16])]), (&format!("ext!{}", ext.id), ""), ext, &e),
                };
                if let (Some((sid, _)), Ok(error_id)) = (&item.rd_source, model::doc_id(&error.rd_key, &error.schema_id)) {
                    by_source.entry(sid.clone()).or_default().entry(ext.id.clone()).or_default().push((id.clone(), error_id));
                }
                errors.push(error);
            }
        }
        let ids: Vec<String> = by_source.keys().map(|sid| state_id(sid)).collect();
        let mut states = Vec::new();
        for (state, (_, by_ext)) in self.store.get_records(&ids)?.into_iter().zip(by_source) {
            let Some(mut state) = state else { continue };
            for (ext_id, swaps) in by_ext {
                let Some(Value::Object(entry)) = state.get_mut(&ext_id) else { continue };
                let mut outputs: Vec<Value> = entry.get("outputs").and_then(Value::as_array).cloned().unwrap_or_default();
                for (output, error_id) in swaps {
                    outputs.retain(|o| o.as_str() != Some(output.as_str()));
                    if !outputs.iter().any(|o| o.as_str() == Some(error_id.as_str())) {
                        outputs.push(Value::String(error_id));
                    }
                }
                entry.insert("outputs".into(), Value::Array(outputs));
                entry.insert("error".into(), Value::Bool(true));
            }
            states.push(Record::Doc(state));
        }
        Ok((errors, states))
    }
}

/// A document the store refused: its id, the items that made it, and the store's reason.
type Refused = (String, Vec<SchemaItem>, String);

/// The (document id, extension id) pairs `withdraw_schema` named; each names its `rd_key`, or
/// takes `default_key` (the source's, in a handler).
fn withdrawals(ext: &Ext, default_key: Option<&Value>, items: Vec<EmittedItem>) -> Result<Vec<(String, String)>, String> {
    items
        .into_iter()
        .map(|e| {
            let key = e.rd_key.as_ref().or(default_key).ok_or_else(|| format!("withdraw_schema({}) in later_handler needs an rd_key", e.schema_id))?;
            let id = model::doc_id(key, &e.schema_id).map_err(|err| format!("withdraw_schema({}): {err}", e.schema_id))?;
            Ok((id, ext.id.clone()))
        })
        .collect()
}

/// One document of a write, as the merge made it.
enum Write {
    Doc(Doc),
    New(NewDoc),
}

/// The schema item for one `emit_schema` call of `ext`.
fn schema_item(ext: &Ext, rd_key: Value, rd_source: Option<(String, String)>, e: EmittedItem) -> Result<SchemaItem, String> {
    let items = match e.items {
        Some(raw) => Some(model::Fields::from_raw(raw).map_err(|err| format!("emit_schema({}): {err}", e.schema_id))?),
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
    })
}

fn doc_str<'a>(doc: &'a Doc, key: &str) -> &'a str {
    doc.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Whether `id` is not for an extension to write with `update_documents`: the pipeline's own
/// records (per-source state, later queues, the dependency index — writing one injected values
/// into another extension's queue) and the server's special documents (`_design/…` would be a
/// live design document on CouchDB, `_local/…` a checkpoint).
pub fn is_reserved_id(id: &str) -> bool {
    id.starts_with('_') || [STATE_PREFIX, LATER_PREFIX, DEPS_PREFIX].iter().any(|p| id.starts_with(p))
}

fn state_id(source_id: &str) -> String {
    format!("{STATE_PREFIX}{source_id}")
}

/// Whether document `id` belongs to worker slice `k` of `n` (a stable hash of the id).
fn in_slice(id: &str, worker: Option<(u64, u64)>) -> bool {
    match worker {
        None => true,
        Some((k, n)) => {
            let h = crate::digest::digest(&[id.as_bytes()]);
            u64::from_str_radix(&h[..16], 16).unwrap_or(0) % n == k
        }
    }
}

/// The `rd.core.error` item recording a failed handler against its source.
fn error_item(rd_key: &Value, source: (&str, &str), ext: &Ext, e: &HandlerError) -> SchemaItem {
    error_item_with(rd_key, source, ext, e, Map::new())
}

/// [`error_item`] with more members in its `error_details`.
fn error_item_with(rd_key: &Value, source: (&str, &str), ext: &Ext, e: &HandlerError, more: Map<String, Value>) -> SchemaItem {
    let mut details = json!({
        "ext_id": ext.id,
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
        ext_id: ext.id.clone(),
        rd_source: Some((source.0.to_string(), source.1.to_string())),
        items: Some(model::Fields::from_map(&fields)),
        deps: Vec::new(),
        attachments: None,
        provider: true,
        confidence: 0.0,
        fingerprint: ext.fingerprint.clone(),
    }
}

/// The `rd.core.error` item of a later_handler call that failed: one document per failed call
/// (its key names the extension and a digest of the values), holding the values and the queue
/// document they were taken from.
fn later_error_item(ext: &Ext, e: &HandlerError, values: Vec<Value>, later_id: &str) -> SchemaItem {
    let digest = crate::digest::digest(&[Value::Array(values.clone()).to_string().as_bytes()]);
    let rd_key = json!(["ext", format!("{}#later-{}", ext.id, &digest[..16])]);
    let mut more = Map::new();
    more.insert("later_values".into(), Value::Array(values));
    more.insert("later_queue".into(), Value::String(later_id.to_string()));
    error_item_with(&rd_key, (&format!("ext!{}", ext.id), ""), ext, e, more)
}

/// A source document as the pipeline sees it: the few members it reads, and the JSON text that
/// goes to the extensions as the store gave it (parsing whole documents only to print them
/// again for JS was most of the reader's time on mail).
struct Source {
    id: String,
    rev: String,
    schema: String,
    rd_key: Value,
    /// A provider completed it (`rd_schema_provider`): only then is it a source.
    provider: bool,
    /// The extensions contributing to it (the keys of `rd_schema_items`).
    contributors: Vec<String>,
    text: Arc<str>,
    /// Its members in `text`, for cutting it down to `source_fields`; `None` when they could
    /// not be read so (the whole text is handed over).
    members: Option<Members>,
}

/// A document's JSON `text` with only the top-level `fields` (and its `_id`, `_rev`, `rd_key`
/// and `rd_schema_id`), for a handler that declared `source_fields`: the parts it never reads
/// (a message's body, say) are not parsed again in JS for it. The members keep their text as
/// it was. `None` when `text` is not an object with plain (unescaped) member names; the caller
/// then hands over the whole text.
pub fn project(text: &str, fields: &[String]) -> Option<String> {
    Some(project_members(text, &json_text::members(text)?, fields))
}

/// [`project`] from members already read.
fn project_members(text: &str, members: &Members, fields: &[String]) -> String {
    json_text::pick(text, members, ["_id", "_rev", "rd_key", "rd_schema_id"].into_iter().chain(fields.iter().map(String::as_str)))
}

impl Source {
    /// Reads where each member is and the few the pipeline needs, in one pass over the text
    /// (the rest is not parsed into values); `None` when the text is not a JSON object.
    fn from_text(text: Arc<str>) -> Option<Source> {
        if let Some(members) = json_text::members(&text) {
            let mut source = Source { id: String::new(), rev: String::new(), schema: String::new(), rd_key: Value::Null, provider: false, contributors: Vec::new(), text: text.clone(), members: None };
            let mut plain = true;
            for (name, value) in &members {
                let value = &text[value.clone()];
                match &text[name.clone()] {
                    "_id" => plain &= serde_json::from_str(value).map(|v| source.id = v).is_ok(),
                    "_rev" => plain &= serde_json::from_str(value).map(|v| source.rev = v).is_ok(),
                    "rd_schema_id" => source.schema = serde_json::from_str::<String>(value).unwrap_or_default(),
                    "rd_key" => plain &= serde_json::from_str(value).map(|v| source.rd_key = v).is_ok(),
                    "rd_schema_provider" => source.provider = true,
                    "rd_schema_items" => {
                        plain &= serde_json::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(value)
                            .map(|m| source.contributors = m.into_keys().collect())
                            .is_ok()
                    }
                    _ => {}
                }
            }
            if plain {
                source.members = Some(members);
                return Some(source);
            }
        }
        // Not read so (escaped member names, or an `_id`, `_rev` or `rd_schema_items` of an
        // unexpected type): the slow way, as a whole document.
        let doc: Doc = serde_json::from_str(&text).ok()?;
        Some(Source::from_map(&doc, text))
    }

    fn from_doc(doc: &Doc) -> Source {
        Source::from_map(doc, Arc::from(serde_json::to_string(doc).unwrap_or_else(|_| "{}".into())))
    }

    fn from_map(doc: &Doc, text: Arc<str>) -> Source {
        Source {
            id: doc_str(doc, "_id").to_string(),
            rev: doc_str(doc, "_rev").to_string(),
            schema: doc_str(doc, "rd_schema_id").to_string(),
            rd_key: doc.get("rd_key").cloned().unwrap_or(Value::Null),
            provider: doc.contains_key("rd_schema_provider"),
            contributors: doc.get("rd_schema_items").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default(),
            text,
            members: None,
        }
    }
}

/// Calls `f` with each page of the sources' state records: from the store's records, or —
/// from a store whose records are ordinary documents — from the changes feed.
fn state_pages<E: From<StoreError>>(store: &dyn Store, size: usize, mut f: impl FnMut(Vec<Doc>) -> Result<(), E>) -> Result<(), E> {
    let mut after: Option<String> = None;
    while let Some(records) = store.records_after(STATE_PREFIX, after.as_deref(), size)? {
        let Some(last) = records.last() else { return Ok(()) };
        after = Some(doc_str(last, "_id").to_string());
        f(records)?;
    }
    let mut since = Seq::zero();
    loop {
        let page = store.changes(&since, size, true)?;
        if page.changes.is_empty() {
            return Ok(());
        }
        f(page.changes.into_iter().filter(|c| c.id.starts_with(STATE_PREFIX) && !c.deleted).filter_map(|c| c.doc).collect())?;
        since = page.last_seq;
    }
}

/// Per-extension counts from the state records: (processed sources, errors).
pub fn extension_counts(store: &dyn Store) -> Result<BTreeMap<String, (u64, u64)>, StoreError> {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    state_pages(store, 1000, |states| -> Result<(), StoreError> {
        for doc in &states {
            for (ext, entry) in doc.iter().filter(|(k, _)| !k.starts_with('_')) {
                let e = counts.entry(ext.clone()).or_default();
                e.0 += 1;
                if entry.get("error").and_then(Value::as_bool).unwrap_or(false) {
                    e.1 += 1;
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
    state_pages(store, 500, |states| -> Result<(), PipelineError> {
        let mut removals = Vec::new();
        let mut writes = Vec::new();
        for mut doc in states {
            let keys: Vec<String> = doc.keys().filter(|k| !k.starts_with('_') && ext.is_none_or(|e| e == *k)).cloned().collect();
            let mut touched = false;
            for k in keys {
                let entry = &doc[&k];
                if only_errors && !entry.get("error").and_then(Value::as_bool).unwrap_or(false) {
                    continue;
                }
                if remove || only_errors {
                    for out in entry.get("outputs").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                        if remove || model::schema_of_id(out) == Some(ERROR_SCHEMA) {
                            removals.push((out.to_string(), k.clone()));
                        }
                    }
                }
                doc.remove(&k);
                touched = true;
            }
            if touched {
                changed += 1;
                writes.push(Record::Doc(doc));
            }
        }
        if !removals.is_empty() || !writes.is_empty() {
            Remover { store }.apply(removals, writes)?;
        }
        Ok(())
    })?;
    if only_errors {
        changed += requeue_later_failures(store, ext)?;
    }
    tracing::info!(changed, elapsed = ?started.elapsed(), "forgot processing state");
    Ok(changed)
}

/// Bookkeeping kept as documents before 2026-11-28 (the dependency index, the later queues)
/// becomes records, as it is kept now: out of the changes feed, which read every version of a
/// growing queue or index again.
fn bookkeeping_to_records(store: &dyn Store) -> Result<(), StoreError> {
    for prefix in [DEPS_PREFIX, LATER_PREFIX] {
        let moved = store.move_to_records(prefix)?;
        if moved > 0 {
            tracing::info!(moved, prefix, "bookkeeping documents moved to records");
        }
    }
    Ok(())
}

/// Puts the values of failed later_handler calls (kept in their `rd.core.error` documents) back
/// in the queues they came from, then withdraws those documents. Returns how many calls.
fn requeue_later_failures(store: &dyn Store, ext: Option<&str>) -> Result<u64, PipelineError> {
    // queue id → (error document id, extension id, values)
    let mut by_queue: BTreeMap<String, Vec<(String, String, Vec<Value>)>> = BTreeMap::new();
    for doc in store.find(ERROR_SCHEMA, None, usize::MAX)? {
        let Some(details) = doc.get("error_details") else { continue };
        let (Some(Value::Array(values)), Some(Value::String(queue)), Some(Value::String(ext_id))) =
            (details.get("later_values"), details.get("later_queue"), details.get("ext_id"))
        else {
            continue;
        };
        if ext.is_some_and(|e| e != ext_id) || !queue.starts_with(LATER_PREFIX) {
            continue;
        }
        by_queue.entry(queue.clone()).or_default().push((doc_str(&doc, "_id").to_string(), ext_id.clone(), values.clone()));
    }
    let mut requeued = 0;
    bookkeeping_to_records(store)?;
    for (queue, failures) in by_queue {
        let existing = store.get_records(std::slice::from_ref(&queue))?.pop().flatten();
        let mut later = LaterQueue::from_saved(existing.as_ref().and_then(|d| d.get("values")));
        let mut removals = Vec::new();
        for (id, ext_id, values) in failures {
            later.extend(&ext_id, values);
            removals.push((id, ext_id));
        }
        // The queue first: the error documents go only once their values are safe in it.
        if let Some(values) = later.saved() {
            let rev = existing.as_ref().and_then(|d| d.get("_rev")).and_then(Value::as_str).map(str::to_string);
            let record = Record::Text { id: queue.clone(), rev, body: format!("{{\"values\":{values}}}") };
            match store.bulk_write_with_records(Vec::new(), Vec::new(), vec![record], None, Durability::Immediate)?.1.pop() {
                Some(WriteResult::Ok { .. }) => {}
                other => {
                    tracing::warn!("could not update {queue} ({other:?}); run the command again");
                    continue;
                }
            }
        }
        requeued += removals.len() as u64;
        Remover { store }.apply(removals, Vec::new())?;
    }
    Ok(requeued)
}

/// Withdraws contributions without a pool (for `unprocess` and `retry-errors`).
struct Remover<'a> {
    store: &'a dyn Store,
}

impl Remover<'_> {
    fn apply(&self, removals: Vec<(String, String)>, states: Vec<Record>) -> Result<(), StoreError> {
        let ids: Vec<String> = removals.iter().map(|(id, _)| id.clone()).collect();
        let current = self.store.get_many(&ids)?;
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
        let (results, record_results) = self.store.bulk_write_with_records(writes, Vec::new(), states, None, Durability::Immediate)?;
        for r in results.into_iter().chain(record_results) {
            if let WriteResult::Conflict { id } | WriteResult::Error { id, .. } = r {
                tracing::warn!("could not update {id}; run the command again");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{project, project_members, Source};
    use serde_json::json;

    #[test]
    fn a_projection_keeps_the_identity_and_the_fields_asked_for_as_they_were() {
        let text = r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["x",1],"rd_schema_id":"s","body":"big","headers":{"a":["\u00e9 \"q\""]},"n":1.50}"#;
        let cut = project(text, &["headers".into(), "n".into(), "missing".into(), "n".into()]).unwrap();
        assert_eq!(cut, r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["x",1],"rd_schema_id":"s","headers":{"a":["\u00e9 \"q\""]},"n":1.50}"#);
        assert_eq!(project(text, &[]).unwrap(), r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["x",1],"rd_schema_id":"s"}"#);
        // Not an object, or a member name with an escape: the caller hands over the whole text.
        assert_eq!(project("[1]", &[]), None);
        assert_eq!(project(r#"{"a\nb":1}"#, &[]), None);
    }

    #[test]
    fn a_source_is_read_from_its_text_without_the_rest() {
        let text = r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["email","m"],"rd_schema_id":"s","rd_schema_provider":null,
                       "rd_schema_items":{"e1":{"rd_source":null},"e2":{}},"body":"long \"text\" é"}"#;
        let s = Source::from_text(text.into()).unwrap();
        assert_eq!((s.id.as_str(), s.rev.as_str(), s.schema.as_str()), ("rc!x!s", "1-a", "s"));
        assert_eq!(s.rd_key, json!(["email", "m"]));
        assert!(s.provider, "present, even null, is a provider's mark");
        assert_eq!(s.contributors, vec!["e1".to_string(), "e2".to_string()]);
        assert_eq!(&*s.text, text, "the text goes on as it came");
        assert_eq!(project_members(&s.text, s.members.as_ref().unwrap(), &["body".into()]),
                   r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["email","m"],"rd_schema_id":"s","body":"long \"text\" é"}"#);
        // Escaped member names are read the slow way, and then not cut down.
        let escaped = Source::from_text(r#"{"_id":"e","rd_schema_provider":1,"a\u0062":2}"#.into()).unwrap();
        assert!(escaped.provider && escaped.members.is_none());
        // Odd member types are read the slow way; what is not an object is no source.
        let odd = Source::from_text(r#"{"_id":"i","rd_schema_items":[1],"rd_schema_id":3}"#.into()).unwrap();
        assert_eq!((odd.id.as_str(), odd.schema.as_str(), odd.provider), ("i", "", false));
        assert!(odd.contributors.is_empty());
        assert!(Source::from_text("[1]".into()).is_none());
    }
}
