//! Choosing and running jobs: which extensions want each source of a page (by schema, or by
//! their `filter`), which of those (source, extension) pairs are not up to date, running them
//! in per-extension batches on the pool, and gathering their outcomes into the page's work.
//! The later_handlers' runs over their queued values are here too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::outcome::{self, JobResult};
use super::source::{in_slice, project_members, Source};
use super::state::{state_id, StateRecord};
use super::{Ext, Pipeline, PipelineError, RunOptions, Stats, ERROR_SCHEMA};
use crate::js::{Batch, DocOutcome, EmittedItem, FailureKind, FilterKeys, HandlerError};
use crate::model::{self, SchemaItem};
use crate::store::{Change, Record};
use crate::timing::span;

/// Documents per handler batch.
const HANDLER_BATCH: usize = 100;
/// Fewest values in a part of a `later_in_parts` later_handler's values.
const MIN_LATER_PART: usize = 100;

/// What one page of changes leads to: items to merge, contributions to withdraw, and the
/// sources' new state records (written last).
#[derive(Default)]
pub(super) struct PageWork {
    pub(super) items: Vec<SchemaItem>,
    /// (document id, extension id) contributions to withdraw.
    pub(super) removals: Vec<(String, String)>,
    pub(super) states: Vec<Record>,
    /// (document depended on, source, extension): outputs to recompute when it changes.
    pub(super) dependencies: Vec<(String, String, String)>,
    /// Values given to `process_later`, by extension id.
    pub(super) later: BTreeMap<String, Vec<Value>>,
    /// Per extension, the sources it ran on (for the metrics, counted once the page is written).
    pub(super) processed: BTreeMap<String, u64>,
    /// The feed had been read to its end before this page was made (the later_handlers' page,
    /// or the first after the feed was quiet).
    pub(super) settled: bool,
}

/// One extension (an index into `Pipeline::exts`) to run on one source (an index into the
/// page's sources).
struct Job {
    source: usize,
    ext: usize,
}

/// (source id, extension id) pairs to run whatever their state says, sorted.
type Forced = Vec<(String, String)>;

/// One later_handler call: an extension (an index into `Pipeline::exts`), its values, and for
/// a `later_in_parts: "shared"` extension its share (part, parts).
struct LaterCall {
    ext: usize,
    share: Option<(usize, usize)>,
    values: Vec<Value>,
}

/// A filter that failed on a source: (source index, extension index, why).
type FilterFailure = (usize, usize, HandlerError);

/// The sources of a page and what is known of them.
struct PageSources<'c> {
    sources: Vec<Source>,
    /// Sources whose document was deleted: their outputs go.
    deleted: Vec<&'c str>,
    /// (source, extension) pairs whose outputs depend on a document of the page: run again,
    /// whatever their state says. Sorted.
    forced: Vec<(String, String)>,
}

impl Pipeline {
    /// Runs every wanting extension over one page of changes and returns what to write, with
    /// the first handler error, if any (recorded as an `rd.core.error` document in the work).
    pub(super) fn prepare_page(
        &self,
        changes: &[Change<Arc<str>>],
        options: &RunOptions,
        stats: &mut Stats,
    ) -> Result<(PageWork, Option<String>), PipelineError> {
        let page = self.page_sources(changes, options)?;
        if page.sources.is_empty() && page.deleted.is_empty() {
            return Ok((PageWork::default(), None));
        }
        let state_ids: Vec<String> =
            page.sources.iter().map(|s| state_id(&s.id)).chain(page.deleted.iter().map(|id| state_id(id))).collect();
        let t = span("P:states").items(state_ids.len());
        let mut states: Vec<Option<StateRecord>> =
            self.store.get_records(&state_ids)?.into_iter().map(|d| d.map(StateRecord::from_doc)).collect();
        drop(t);

        let t = span("P:filter");
        let (accepted, filter_failures) = self.filter_answers(&page.sources);
        drop(t);
        let mut jobs = self.jobs(&page, &accepted, &states, stats);

        // Each outcome becomes its items, removals and state as it arrives, while the pool
        // runs the page's other batches; they are gathered in job order below.
        let t = span("P:run_jobs").items(jobs.len());
        let mut results: Vec<Option<JobResult>> = (0..jobs.len()).map(|_| None).collect();
        self.run_jobs(&page.sources, &jobs, |j, outcome| {
            let job = &jobs[j];
            let previous = states[job.source].as_ref().and_then(|s| s.entry(&self.exts[job.ext].id));
            results[j] = Some(outcome::job_result(&page.sources[job.source], &self.exts[job.ext], previous, outcome));
        });
        drop(t);
        stats.handler_calls += jobs.len() as u64;
        for (si, ei, e) in filter_failures {
            let previous = states[si].as_ref().and_then(|s| s.entry(&self.exts[ei].id));
            results.push(Some(outcome::job_result(&page.sources[si], &self.exts[ei], previous, DocOutcome::Failed(e))));
            jobs.push(Job { source: si, ext: ei });
        }
        let _t = span("P:outcomes");
        let (mut work, first_error) = self.gather(&page, &jobs, results, &mut states, stats);
        for (ext, values) in self.deletions_for_later(changes, options) {
            work.later.entry(ext).or_default().extend(values);
        }
        Ok((work, first_error))
    }

    /// `{"deleted": [rd_key, schema_id]}` for each deleted schema document of the page that an
    /// extension declaring `later_deletions` takes (by `source_schemas`, or by its `filter`:
    /// a filter that fails on one counts as taking it), per extension id.
    fn deletions_for_later(&self, changes: &[Change<Arc<str>>], options: &RunOptions) -> Vec<(String, Vec<Value>)> {
        let gone: Vec<(&Change<Arc<str>>, &str)> = changes
            .iter()
            .filter(|c| c.deleted && in_slice(&c.id, options))
            .filter_map(|c| model::schema_of_id(&c.id).map(|s| (c, s)))
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let value =
            |c: &Change<Arc<str>>, schema: &str| model::rd_key_of_id(&c.id).map(|key| serde_json::json!({ "deleted": [key, schema] }));
        let keys: Vec<(String, String, String)> = gone.iter().map(|(c, s)| (c.id.clone(), c.rev.clone(), s.to_string())).collect();
        let wants = |e: &Ext| e.later_deletions && e.has_later_handler;
        let mut filtered: HashMap<usize, Vec<Result<bool, HandlerError>>> =
            self.ask_filters(&keys, |e| wants(e) && e.filtered).into_iter().collect();
        let mut out = Vec::new();
        for (ei, ext) in self.exts.iter().enumerate().filter(|(_, e)| wants(e)) {
            let taken: Vec<bool> = match filtered.remove(&ei) {
                Some(answers) => answers.into_iter().map(|a| a.unwrap_or(true)).collect(),
                None => gone.iter().map(|(_, s)| ext.schemas.iter().any(|w| w == s)).collect(),
            };
            let values: Vec<Value> = gone.iter().zip(taken).filter(|(_, yes)| *yes).filter_map(|((c, s), _)| value(c, s)).collect();
            if !values.is_empty() {
                out.push((ext.id.clone(), values));
            }
        }
        out
    }

    /// The page's sources: live schema documents (in this worker's slice) that a provider
    /// completed, the deleted ones, and the sources outside the page whose outputs depend on a
    /// document of the page.
    fn page_sources<'c>(&self, changes: &'c [Change<Arc<str>>], options: &RunOptions) -> Result<PageSources<'c>, PipelineError> {
        let (forced, mut sources) = self.dependents(changes, options)?;
        let mut deleted: Vec<&str> = Vec::new();
        for c in changes {
            if model::schema_of_id(&c.id).is_none() || !in_slice(&c.id, options) {
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
        Ok(PageSources { sources, deleted, forced })
    }

    /// The (source, extension) pairs whose outputs declared a document of the page in `deps`,
    /// sorted, and those sources that are not in the page themselves.
    fn dependents(&self, changes: &[Change<Arc<str>>], options: &RunOptions) -> Result<(Forced, Vec<Source>), PipelineError> {
        if !self.exts.iter().any(|e| e.uses_dependencies) {
            return Ok((Vec::new(), Vec::new()));
        }
        let doc_ids: Vec<String> = changes.iter().filter(|c| model::schema_of_id(&c.id).is_some()).map(|c| c.id.clone()).collect();
        let mut forced = super::deps::dependents_of(&*self.store, &doc_ids)?;
        forced.sort();
        forced.dedup();
        let in_page: HashSet<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        let mut missing: Vec<String> =
            forced.iter().map(|(src, _)| src.clone()).filter(|src| !in_page.contains(src.as_str()) && in_slice(src, options)).collect();
        missing.dedup();
        let extra = self
            .store
            .get_many(&missing, None)?
            .into_iter()
            .flatten()
            .filter_map(|text| Source::from_text(Arc::from(text)))
            .filter(|s| s.provider)
            .collect();
        Ok((forced, extra))
    }

    /// Asks the extensions `asked` picks (each choosing its sources by `filter`) about each
    /// `(id, rev, schema_id)` of `keys`, side by side over keys encoded once: per extension
    /// index, one answer per key.
    fn ask_filters(
        &self,
        keys: &[(String, String, String)],
        asked: impl Fn(&Ext) -> bool,
    ) -> Vec<(usize, Vec<Result<bool, HandlerError>>)> {
        let keys = Arc::new(FilterKeys::new(keys));
        let pending: Vec<_> = self
            .exts
            .iter()
            .enumerate()
            .filter(|(_, e)| asked(e))
            .map(|(ei, ext)| (ei, self.pool.submit_filter(ext.pool_index, &keys)))
            .collect();
        pending.into_iter().map(|(ei, call)| (ei, call.wait())).collect()
    }

    /// Asks the extensions without `source_schemas` about each source through their
    /// `filter()`, side by side over keys encoded once: per extension, one answer per source,
    /// and the (source, extension, error) of the filters that failed.
    ///
    /// Error documents are not offered to filters: a filter that failed on every document failed
    /// again on each error document it caused, and so without end (4 sources made 228,000
    /// writes). An extension that wants them names `rd.core.error` in its `source_schemas`.
    fn filter_answers(&self, sources: &[Source]) -> (HashMap<usize, Vec<bool>>, Vec<FilterFailure>) {
        let mut accepted: HashMap<usize, Vec<bool>> = HashMap::new();
        let mut failures: Vec<FilterFailure> = Vec::new();
        let offered: Vec<usize> = (0..sources.len()).filter(|&si| sources[si].schema != ERROR_SCHEMA).collect();
        if offered.is_empty() || !self.exts.iter().any(|e| e.filtered) {
            return (accepted, failures);
        }
        let keys: Vec<(String, String, String)> =
            offered.iter().map(|&si| (sources[si].id.clone(), sources[si].rev.clone(), sources[si].schema.clone())).collect();
        for (ei, answers) in self.ask_filters(&keys, |e| e.filtered) {
            let mut yes = vec![false; sources.len()];
            for (&si, answer) in offered.iter().zip(answers) {
                match answer {
                    Ok(b) => yes[si] = b,
                    // The extension would not run on its own output anyway, and an error
                    // recorded there would be its output again.
                    Err(_) if sources[si].contributors.contains(&self.exts[ei].id) => {}
                    Err(e) => failures.push((si, ei, e)),
                }
            }
            accepted.insert(ei, yes);
        }
        (accepted, failures)
    }

    /// The (source, extension) pairs to run: wanted, not the extension's own output, and not
    /// up to date (or forced by a dependency).
    fn jobs(
        &self,
        page: &PageSources<'_>,
        accepted: &HashMap<usize, Vec<bool>>,
        states: &[Option<StateRecord>],
        stats: &mut Stats,
    ) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (si, src) in page.sources.iter().enumerate() {
            for (ei, ext) in self.exts.iter().enumerate() {
                let wanted = match accepted.get(&ei) {
                    Some(yes) => yes[si],
                    None => ext.schemas.contains(&src.schema),
                };
                // An extension never runs on a document it contributes to: its own output would
                // feed it again, forever (the original refused this too).
                if !wanted || src.contributors.contains(&ext.id) {
                    continue;
                }
                let forced = !page.forced.is_empty() && page.forced.binary_search(&(src.id.clone(), ext.id.clone())).is_ok();
                let done = states[si].as_ref().and_then(|s| s.entry(&ext.id));
                if !forced && done.is_some_and(|d| d.is_for(&src.rev, &ext.fingerprint)) {
                    stats.skipped_up_to_date += 1;
                } else {
                    jobs.push(Job { source: si, ext: ei });
                }
            }
        }
        jobs
    }

    /// The page's work from its jobs' results: items, removals, dependencies and later values
    /// in job order; each source's state record with its new entries; the deleted sources'
    /// outputs withdrawn and their records deleted. With the first error's text.
    fn gather(
        &self,
        page: &PageSources<'_>,
        jobs: &[Job],
        results: Vec<Option<JobResult>>,
        states: &mut [Option<StateRecord>],
        stats: &mut Stats,
    ) -> (PageWork, Option<String>) {
        let mut work = PageWork::default();
        let mut first_error = None;
        let mut touched: BTreeMap<usize, StateRecord> = BTreeMap::new();
        let mut later: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
        for (job, result) in jobs.iter().zip(results) {
            let Some(result) = result else { continue };
            let (src, ext) = (&page.sources[job.source], &self.exts[job.ext]);
            if let Some(e) = &result.error {
                stats.errors += 1;
                tracing::warn!(ext = %ext.id, source = %src.id, "handler failed: {e}");
                first_error.get_or_insert_with(|| format!("{}: {e}", ext.id));
            }
            if !result.later.is_empty() {
                later.entry(job.ext).or_default().extend(result.later);
            }
            work.removals.extend(result.removals);
            work.dependencies.extend(result.dependencies);
            let record =
                touched.entry(job.source).or_insert_with(|| states[job.source].take().unwrap_or_else(|| StateRecord::new(&src.id)));
            record.set(&ext.id, result.state);
            work.items.extend(result.items);
        }
        for (k, _) in page.deleted.iter().enumerate() {
            if let Some(record) = states[page.sources.len() + k].take() {
                for (ext_id, entry) in record.entries() {
                    work.removals.extend(entry.outputs.iter().map(|out| (out.clone(), ext_id.clone())));
                }
                work.states.extend(record.into_tombstone());
            }
        }
        work.states.extend(touched.into_values().map(StateRecord::into_record));
        let mut processed = vec![0u64; self.exts.len()];
        for job in jobs {
            processed[job.ext] += 1;
        }
        work.processed = processed.into_iter().enumerate().filter(|(_, n)| *n > 0).map(|(ei, n)| (self.exts[ei].id.clone(), n)).collect();
        work.later = later.into_iter().map(|(ei, values)| (self.exts[ei].id.clone(), values)).collect();
        (work, first_error)
    }

    /// Runs `jobs` across the pool in per-extension batches and gives `each` every job's
    /// outcome (by job index) as its batch comes back.
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
                                source
                                    .members
                                    .as_ref()
                                    .map_or_else(|| source.text.clone(), |m| Arc::from(project_members(&source.text, m, fields)))
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
            each(j, DocOutcome::Failed(HandlerError::new(FailureKind::Exception, "the JS pool returned no outcome")));
        }
    }

    /// Runs the later_handlers over the values their extensions gave to `process_later`; the
    /// extensions' calls run side by side, their results are taken in extension order. Returns
    /// the items they emitted, the contributions they withdrew, and the first error. A call
    /// that fails (or emits what cannot be written) leaves an `rd.core.error` document holding
    /// its values and the queue they came from (`later_id`), so `retry-errors` can queue them
    /// again: nothing is lost to a handler that failed for a while (a time limit, a store that
    /// was away).
    pub(super) fn run_later(
        &self,
        values: BTreeMap<String, Vec<Value>>,
        later_id: &str,
        stats: &mut Stats,
    ) -> (Vec<SchemaItem>, Vec<(String, String)>, Option<String>) {
        let mut items = Vec::new();
        let mut removals = Vec::new();
        let mut first_error = None;
        let (calls, unloaded) = self.later_calls(values);
        // Values of an extension not loaded here (removed, or under `--share` not in this
        // runner's folder) wait in an error document for `retry-errors`, as a failed call's do.
        for (ext_id, values) in unloaded {
            let message = format!(
                "{} process_later value(s) of {ext_id}, which is not loaded here: kept in this document; load the extension and run `raindrop retry-errors`, or discard them with `raindrop unprocess --ext {ext_id}`",
                values.len()
            );
            tracing::warn!(ext = %ext_id, values = values.len(), "process_later values of an extension that is not loaded are kept in an error document");
            stats.errors += 1;
            first_error.get_or_insert_with(|| message.clone());
            items.push(outcome::unloaded_later_error_item(&ext_id, &HandlerError::new(FailureKind::NotLoaded, message), values, later_id));
        }
        let pending: Vec<_> = calls
            .into_iter()
            .map(|LaterCall { ext: ei, share, values }| {
                // A shared call's values go to the driver after its part marker; an error
                // document keeps them without it.
                let sent = match share {
                    Some((part, parts)) => {
                        std::iter::once(serde_json::json!({ "rd_part": [part, parts] })).chain(values.iter().cloned()).collect()
                    }
                    None => values.clone(),
                };
                (ei, values, self.pool.submit_later(self.exts[ei].pool_index, sent))
            })
            .collect();
        for (ei, values, call) in pending {
            let ext = &self.exts[ei];
            let failure = match call.wait() {
                DocOutcome::Emitted(emission) => {
                    let (withdrawn, emitted): (Vec<EmittedItem>, Vec<EmittedItem>) = emission.items.into_iter().partition(|e| e.withdraw);
                    match (outcome::later_items(ext, emitted), outcome::withdrawals(ext, None, withdrawn)) {
                        (Ok(produced), Ok(withdrawn)) => {
                            items.extend(produced);
                            removals.extend(withdrawn);
                            continue;
                        }
                        (Err(e), _) | (_, Err(e)) => e,
                    }
                }
                DocOutcome::Failed(e) => e,
            };
            stats.errors += 1;
            tracing::warn!(ext = %ext.id, values = values.len(), "later_handler failed (its values are kept for retry-errors): {failure}");
            first_error.get_or_insert_with(|| format!("{}: {failure}", ext.id));
            items.push(outcome::later_error_item(ext, &failure, values, later_id));
        }
        (items, removals, first_error)
    }

    /// The later_handler calls for the queued values: one per extension, or — for one that
    /// declared `later_in_parts` — one per part, a part per thread (each big enough to be worth
    /// a call of its own), or for `later_in_parts: "shared"` one per thread with every value
    /// after a `{"rd_part": [index, count]}` the driver takes off. Whole calls first: the parts
    /// then fill in around them.
    /// Values of an extension not loaded here come back apart, with its id.
    fn later_calls(&self, values: BTreeMap<String, Vec<Value>>) -> (Vec<LaterCall>, Vec<(String, Vec<Value>)>) {
        let mut calls: Vec<LaterCall> = Vec::new();
        let mut unloaded = Vec::new();
        for (ext_id, mut values) in values {
            let Some(ei) = self.exts.iter().position(|e| e.id == ext_id) else {
                unloaded.push((ext_id, values));
                continue;
            };
            let ext: &Ext = &self.exts[ei];
            if !ext.has_later_handler {
                tracing::warn!(ext = %ext.id, "process_later was called but the extension has no later_handler");
                continue;
            }
            let parts =
                if ext.later_in_parts || ext.later_shared { self.pool.threads().min(values.len() / MIN_LATER_PART).max(1) } else { 1 };
            if ext.later_shared && parts > 1 {
                calls.extend((0..parts).map(|part| LaterCall { ext: ei, share: Some((part, parts)), values: values.clone() }));
                continue;
            }
            let size = values.len().div_ceil(parts);
            while !values.is_empty() {
                let rest = values.split_off(size.min(values.len()));
                calls.push(LaterCall { ext: ei, share: None, values: std::mem::replace(&mut values, rest) });
            }
        }
        calls.sort_by_key(|c| c.share.is_some() || self.exts[c.ext].later_in_parts);
        (calls, unloaded)
    }
}
