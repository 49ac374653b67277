//! The work queue: one changes-feed reader hands each changed document to every extension that
//! wants its schema (in batches, across the JS pool), merges what they emit into schema
//! documents, and writes them back, where they cascade to further extensions.
//!
//! A run is two threads, one page apart:
//! - `follow`: reads a page of the feed and has it prepared by `dispatch` (sources read by
//!   `source`, the extensions that want each one chosen — by schema or by `filter` — and the
//!   pairs not up to date run on the pool; each outcome made into items, removals and a state
//!   entry by `outcome`); it also runs the later_handlers when their queue is due;
//! - `writer`: merges the page's items into their documents and writes them, with the page's
//!   bookkeeping and its checkpoint.
//!
//! Bookkeeping lives in the store, beside the data, as its records:
//! - a state record per source (`state`): per extension, what it last ran on and made;
//! - the values waiting for later_handlers (`later`), written with the page that added them,
//!   before its state records;
//! - the dependency index (`deps`): which outputs to recompute when a document changes;
//! - a checkpoint (`_local` document) with the feed position, advanced only with a page's
//!   writes, and the extensions' fingerprints: when they change, the feed is read from the
//!   start again (unchanged extensions skip cheaply).
//!
//! A crash at any moment leaves a state from which the next run converges to the same documents:
//! a page is either checkpointed with its writes, or re-read; re-running a source produces the
//! same merged documents, which are not written again when they are already there.
//! `maintenance` holds the commands that edit the bookkeeping without running extensions.
//!
//! Invariant: the pipeline talks to the store only through the `Store` trait and to JS only
//! through the pool; it does not know which store it has.

mod deps;
mod dispatch;
mod follow;
mod later;
mod maintenance;
mod outcome;
pub mod share;
mod source;
mod state;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::js::{Category, JsPool};
use crate::store::{Seq, Store, StoreError};

pub use maintenance::{backlog, extension_counts, forget, Counts};
pub use source::project;

/// The schema of the documents that record failures.
const ERROR_SCHEMA: &str = "rd.core.error";
/// The checkpoint of a run that takes every source (no `--worker`, no `--share`).
pub(crate) const UNSHARED_CHECKPOINT: &str = "raindrop-pipeline";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopped at the first handler error (--stop-on-error): {0}")]
    StoppedOnError(String),
    #[error("the pipeline's {0} thread failed: {1}")]
    Thread(&'static str, String),
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Changes read per page (default 2,000). Each page ends with a write, so larger pages cost
    /// less per change.
    pub page_size: usize,
    /// Keep following the feed instead of stopping when it is drained.
    pub continuous: bool,
    /// With `continuous`: follow the feed until this is raised, then finish what it holds (the
    /// later_handlers included) and return. An import that processes as it writes raises it
    /// when its last message is written.
    pub until: Option<Arc<AtomicBool>>,
    /// Raised to stop soon: no new page is read, the pages in flight are written with their
    /// checkpoint, and the run returns (a daemon told to stop, or to take up new extensions).
    pub stop: Option<Arc<AtomicBool>>,
    pub stop_on_error: bool,
    /// `(k, n)`: take only sources whose id hashes to slice `k` of `n`.
    pub worker: Option<(u64, u64)>,
    /// Take only sources in the slices held (`--share`: see `share`); they change as the
    /// run goes.
    pub share: Option<Arc<share::Held>>,
    /// The checkpoint's id, when not the one `worker` implies (a shared worker's own).
    pub checkpoint: Option<String>,
    /// Read the feed from here rather than from the checkpoint (a shared worker's catch-up,
    /// or its first run).
    pub start: Option<Seq>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            page_size: 2000,
            continuous: false,
            until: None,
            stop: None,
            stop_on_error: false,
            worker: None,
            share: None,
            checkpoint: None,
            start: None,
        }
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

impl Stats {
    /// Adds another run's counts (the daemon sums its runs).
    pub fn add(&mut self, other: &Stats) {
        self.changes_read += other.changes_read;
        self.handler_calls += other.handler_calls;
        self.skipped_up_to_date += other.skipped_up_to_date;
        self.docs_written += other.docs_written;
        self.docs_removed += other.docs_removed;
        self.errors += other.errors;
        self.conflicts_retried += other.conflicts_retried;
    }
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
    /// Its later_handler is called once per thread with every value and its share.
    later_shared: bool,
    /// Its later_handler is told of the deleted documents it takes.
    later_deletions: bool,
}

pub struct Pipeline {
    store: Arc<dyn Store>,
    pool: Arc<JsPool>,
    exts: Vec<Ext>,
    /// Where outcomes and pages are counted, if anywhere (the daemon's `/status`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
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
                    fingerprint: e.fingerprint.clone(),
                    uses_dependencies: d.uses_dependencies,
                    filtered: d.source_schemas.is_none() && d.has_filter,
                    smart: d.category == Category::Smart,
                    has_later_handler: d.has_later_handler,
                    fields: d.source_fields.clone(),
                    indexes: d.indexes.clone(),
                    later_in_parts: d.later_in_parts,
                    later_shared: d.later_shared,
                    later_deletions: d.later_deletions,
                })
            })
            .collect();
        Pipeline { store, pool, exts, metrics: None }
    }

    /// Counts outcomes and pages in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Pipeline {
        self.metrics = Some(metrics);
        self
    }

    /// The id of the checkpoint a run with `options` keeps.
    pub fn checkpoint_id(options: &RunOptions) -> String {
        if let Some(id) = &options.checkpoint {
            return id.clone();
        }
        match options.worker {
            Some((k, n)) => format!("raindrop-pipeline-{k}-of-{n}"),
            None => UNSHARED_CHECKPOINT.to_string(),
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
    /// Two stages overlap (see the module's note): this thread follows the feed while a writer
    /// thread writes the previous page and advances the checkpoint past it. A page read ahead
    /// may see a state record the writer has not yet updated; that only costs a re-run whose
    /// identical result is not written again.
    pub fn run(&self, options: &RunOptions, mut progress: impl FnMut(&Stats) + Send) -> Result<Stats, PipelineError> {
        let checkpoint_id = Self::checkpoint_id(options);
        let fingerprints = self.fingerprints();
        for (schema, field) in self.exts.iter().flat_map(|e| &e.indexes) {
            self.store.index_field(schema, field)?;
        }
        let since = match &options.start {
            Some(start) => start.clone(),
            None => self.resume_point(&checkpoint_id, &fingerprints)?,
        };
        // The later queue is kept even when the extensions changed: the sources that gave its
        // values are done and an unchanged extension will not be asked again.
        // A shared worker's values go to the shared queue instead (its failed calls' values
        // too, put back there by retry-errors); it has no queue of its own.
        let (later_id, shared) = match options.share {
            None => (later::later_id(&checkpoint_id), None),
            Some(_) => (later::SHARED_RETRY.to_string(), Some(later::SharedQueue::new())),
        };
        maintenance::bookkeeping_to_records(&*self.store)?;
        let stored = match shared {
            None => self.store.get_records(std::slice::from_ref(&later_id))?.pop().flatten(),
            Some(_) => None,
        };
        let mut queue = later::LaterQueue::from_record(stored.as_ref());
        // A run over every source takes up what shared workers left in the shared queue.
        let shared_left = match (&options.share, options.worker, &options.checkpoint) {
            (None, None, None) => later::SharedQueue::adopt_all(&*self.store, &mut queue)?,
            _ => Vec::new(),
        };
        let later_rev = stored.as_ref().and_then(|d| d.get("_rev")).and_then(Value::as_str).map(str::to_string);
        let stats = Mutex::new(Stats::default());
        let (work_tx, work_rx) = crossbeam_channel::bounded::<follow::ToWrite>(1);
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
        let mut writer = writer::Writer::new(self, checkpoint_id, fingerprints, later_id.clone(), later_rev);
        std::thread::scope(|scope| {
            let writing =
                std::thread::Builder::new().name("pipeline-writer".into()).spawn_scoped(scope, || -> Result<(), PipelineError> {
                    for (work, seq, waiting) in work_rx {
                        let written = writer.write_page(work, &seq, waiting)?;
                        let snapshot = {
                            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                            s.add(&written);
                            s.clone()
                        };
                        progress(&snapshot);
                        let _ = done_tx.send(());
                    }
                    Ok(())
                });
            let writing = writing.map_err(|e| PipelineError::Thread("writer", e.to_string()))?;
            let mut follower = follow::Follower {
                pipeline: self,
                options,
                since,
                later: queue,
                later_id,
                shared,
                shared_left,
                in_flight: 0,
                quiet: false,
            };
            let read_result = follower.run(&work_tx, &done_rx, &stats);
            drop(work_tx);
            let write_result = writing.join().unwrap_or_else(|_| Err(PipelineError::Thread("writer", "it panicked".into())));
            write_result.and(read_result)
        })?;
        Ok(stats.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where the feed is taken up: the checkpoint's position, or the start when there is none
    /// or an extension is new or changed since it was written (one only removed leaves no new
    /// work for the others).
    fn resume_point(&self, checkpoint_id: &str, fingerprints: &Value) -> Result<Seq, StoreError> {
        let unchanged = |c: &Value| match (c.get("fingerprints").and_then(Value::as_object), fingerprints.as_object()) {
            (Some(then), Some(now)) => now.iter().all(|(id, fp)| then.get(id) == Some(fp)),
            _ => false,
        };
        Ok(match self.store.get_local(checkpoint_id)? {
            Some(c) if unchanged(&c) => c.get("seq").and_then(Value::as_str).map(Seq::from_raw).unwrap_or_else(Seq::zero),
            Some(_) => {
                tracing::info!("extensions changed since the last run: re-reading the feed from the start");
                Seq::zero()
            }
            None => Seq::zero(),
        })
    }

    /// Runs `writer` (something that writes to the store: an import) on a thread of its own
    /// while following the feed, and returns once it has finished and everything it wrote has
    /// been processed: its messages are processed as they arrive instead of after it.
    pub fn run_beside<R: Send>(
        &self,
        options: &RunOptions,
        progress: impl FnMut(&Stats) + Send,
        writer: impl FnOnce() -> R + Send,
    ) -> (Result<Stats, PipelineError>, R) {
        /// Raised however the writer ends, a panic included, so the run always ends.
        struct RaiseOnDrop(Arc<AtomicBool>);
        impl Drop for RaiseOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let done = Arc::new(AtomicBool::new(false));
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
}

/// Whether `id` is not for an extension to write with `update_documents`: the pipeline's own
/// records (per-source state, later queues, the dependency index — writing one injected values
/// into another extension's queue) and the server's special documents (`_design/…` would be a
/// live design document on CouchDB, `_local/…` a checkpoint).
pub fn is_reserved_id(id: &str) -> bool {
    id.starts_with('_')
        || [state::STATE_PREFIX, later::LATER_PREFIX, deps::DEPS_PREFIX, share::SHARE_PREFIX].iter().any(|p| id.starts_with(p))
}
