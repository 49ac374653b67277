//! The pool: N worker threads, each owning one SpiderMonkey runtime with every extension loaded,
//! fed batches of documents over one shared crossbeam queue.
//!
//! A batch names one extension and carries documents as JSON text; the worker hands the whole
//! batch to the extension's sandbox in one call and gets back one outcome per document. Whatever
//! an extension does (throws, loops, exhausts its heap) ends as a [`HandlerError`] for that one
//! document; the worker recycles its runtime if the heap filled up, and the pool keeps serving.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::engine::{CallFailure, JsRuntime, LoadFailure, RuntimeLimits, SandboxId};
use super::extension::{Declaration, ExtensionSource, LoadedExtension};
use super::host::HostFunctions;
use super::watchdog::{WatchSlot, Watchdog};

/// A later_handler call gets its extension's time limit once per this many values (a handler
/// call, once per document).
pub const LATER_VALUES_PER_LIMIT: usize = 2_000;

/// How a pool is set up.
#[derive(Clone)]
pub struct PoolConfig {
    /// Worker threads, each with one runtime.
    pub threads: usize,
    /// Default time limit for one handler call; an extension may set its own.
    pub time_limit: Duration,
    /// Cap on each runtime's GC heap.
    pub heap_bytes: u32,
    /// Host functions defined in every sandbox.
    pub host_functions: HostFunctions,
}

impl PoolConfig {
    pub fn new(threads: usize) -> PoolConfig {
        PoolConfig {
            threads: threads.max(1),
            time_limit: Duration::from_secs(5),
            heap_bytes: 512 << 20,
            host_functions: HostFunctions::new(),
        }
    }
}

/// Documents for one extension's handler.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Index into [`JsPool::extensions`].
    pub ext: usize,
    /// Each document as JSON text.
    pub docs: Vec<Arc<str>>,
    /// Echoed back in the result, for the caller's bookkeeping.
    pub tag: u64,
}

/// One outcome per document of a [`Batch`], in order.
#[derive(Debug)]
pub struct BatchResult {
    pub tag: u64,
    pub ext: usize,
    pub outcomes: Vec<DocOutcome>,
}

#[derive(Debug, Clone)]
pub enum DocOutcome {
    Emitted(Emission),
    Failed(HandlerError),
}

/// What one handler call emitted.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Emission {
    #[serde(rename = "ok")]
    pub items: Vec<EmittedItem>,
    /// Values given to `process_later`.
    #[serde(default)]
    pub later: Vec<Value>,
}

/// One `emit_schema(schema_id, items, opts)` call.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct EmittedItem {
    pub schema_id: String,
    /// The fields as the JSON text the handler emitted (an object, or absent for `null`): the
    /// pipeline writes most of them into a new document's text without parsing them.
    pub items: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rd_key: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deps: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rd_source: Option<Value>,
    /// `withdraw_schema`: the extension's contribution to the document is taken back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdraw: bool,
}

impl EmittedItem {
    /// The fields parsed (`None` for `null`, or text that is not an object).
    pub fn fields(&self) -> Option<serde_json::Map<String, Value>> {
        self.items.as_ref().and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// Why a handler call produced nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HandlerError {
    pub kind: FailureKind,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub stack: Option<String>,
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The handler threw.
    Exception,
    /// The handler ran past its time limit and was stopped.
    TimeLimit,
    /// The runtime's heap cap was reached.
    OutOfMemory,
    /// The document could not be handed to JS (not JSON).
    BadInput,
    /// What the handler emitted could not be read back (e.g. a lone surrogate).
    BadOutput,
    /// The extension did not load.
    NotLoaded,
}

impl HandlerError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> HandlerError {
        HandlerError { kind, message: message.into(), file: None, line: None, stack: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start the JS pool: {0}")]
    Engine(#[from] super::engine::EngineError),
    #[error("cannot start the JS pool: cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("cannot start the JS pool: a JS worker died while starting")]
    WorkerDied,
}

enum Job {
    Run(Batch, Sender<BatchResult>),
    /// Ask the extension's `filter(id, rev, schema_id)` about each key.
    Filter { ext: usize, keys: Arc<FilterKeys>, reply: Sender<Vec<Result<bool, HandlerError>>> },
    /// Call the extension's `later_handler(values)`.
    Later { ext: usize, values: Vec<Value>, reply: Sender<DocOutcome> },
}

/// The running pool. Dropping it stops and joins every worker.
pub struct JsPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    extensions: Vec<LoadedExtension>,
    _watchdog: Watchdog,
}

struct Shared {
    sources: Vec<ExtensionSource>,
    config: PoolConfig,
}

impl JsPool {
    /// Starts `config.threads` workers and loads every extension into each. Extensions that
    /// fail to load are listed with their error; the others work.
    pub fn start(sources: Vec<ExtensionSource>, config: PoolConfig) -> Result<JsPool, PoolError> {
        let watchdog = Watchdog::start()?;
        let shared = Arc::new(Shared { sources, config });
        let (job_tx, job_rx) = bounded::<Job>(shared.config.threads * 4);
        let mut workers = Vec::new();
        let mut ready = Vec::new();
        for i in 0..shared.config.threads {
            let (ready_tx, ready_rx) = bounded(1);
            let (shared, jobs, slot) = (shared.clone(), job_rx.clone(), watchdog.slot());
            let handle = std::thread::Builder::new()
                .name(format!("js-{i}"))
                .stack_size(16 << 20)
                .spawn(move || worker_main(&shared, slot, jobs, ready_tx))?;
            workers.push(handle);
            ready.push(ready_rx);
        }
        let mut declarations = None;
        for r in ready {
            let decls = r.recv().map_err(|_| PoolError::WorkerDied)??;
            declarations.get_or_insert(decls);
        }
        let extensions = shared
            .sources
            .iter()
            .cloned()
            .zip(declarations.unwrap_or_default())
            .map(|(source, declaration)| LoadedExtension { source, declaration })
            .collect();
        Ok(JsPool { jobs: Some(job_tx), workers, extensions, _watchdog: watchdog })
    }

    /// Every extension, in load order, with its declaration or load error.
    /// How many calls can run side by side.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    pub fn extensions(&self) -> &[LoadedExtension] {
        &self.extensions
    }

    /// Index of the loaded extension with this id.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.extensions.iter().position(|e| e.id() == Some(id))
    }

    /// Queues a batch; its result arrives on `reply`. Blocks while the queue is full.
    pub fn submit(&self, batch: Batch, reply: &Sender<BatchResult>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Run(batch, reply.clone()));
        }
    }

    /// Starts asking extension `ext`'s `filter(id, rev, schema_id)` about each of `keys` and
    /// returns at once, so several extensions' filters run on the pool's threads side by side
    /// over keys encoded once. An error (or a filter that throws) is that key's `Err`.
    pub fn submit_filter(&self, ext: usize, keys: &Arc<FilterKeys>) -> PendingFilter {
        let (tx, rx) = bounded(1);
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Filter { ext, keys: keys.clone(), reply: tx });
        }
        PendingFilter { answers: rx, n: keys.len }
    }

    /// Calls extension `ext`'s `later_handler(values)` with the values its handlers gave to
    /// `process_later`.
    pub fn run_later(&self, ext: usize, values: Vec<Value>) -> DocOutcome {
        self.submit_later(ext, values).wait()
    }

    /// Starts a `later_handler` call and returns at once, so several extensions' calls can run
    /// on the pool's threads side by side.
    pub fn submit_later(&self, ext: usize, values: Vec<Value>) -> PendingLater {
        let (tx, rx) = bounded(1);
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Later { ext, values, reply: tx });
        }
        PendingLater(rx)
    }

    /// Runs one batch and waits for its result.
    pub fn run(&self, ext: usize, docs: Vec<Arc<str>>) -> BatchResult {
        let (tx, rx) = bounded(1);
        let n = docs.len();
        self.submit(Batch { ext, docs, tag: 0 }, &tx);
        rx.recv().unwrap_or_else(|_| BatchResult {
            tag: 0,
            ext,
            outcomes: vec![DocOutcome::Failed(HandlerError::new(FailureKind::Exception, "the JS pool is gone")); n],
        })
    }
}

impl Drop for JsPool {
    fn drop(&mut self) {
        self.jobs.take(); // workers see the queue close and exit
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The engine's view of this worker: logs, the watchdog clock, host functions.
struct WorkerHost {
    slot: Arc<WatchSlot>,
    functions: HostFunctions,
}

impl super::engine::Host for WorkerHost {
    fn log(&self, ext: &str, level: &str, text: &str) {
        match level {
            "error" => tracing::error!(target: "raindrop::ext", ext, "{text}"),
            "warn" => tracing::warn!(target: "raindrop::ext", ext, "{text}"),
            "debug" => tracing::debug!(target: "raindrop::ext", ext, "{text}"),
            _ => tracing::info!(target: "raindrop::ext", ext, "{text}"),
        }
    }
    fn begin_call(&self) {
        self.slot.begin_call();
    }
    fn should_interrupt(&self) -> bool {
        self.slot.should_stop()
    }
    fn native_names(&self) -> Vec<String> {
        self.functions.names()
    }
    fn call_native(&self, ext: &str, name: &str, args_json: &str) -> String {
        self.functions.call_json(ext, name, args_json)
    }
}

/// A worker's runtime with every extension loaded into it.
struct Loaded {
    rt: JsRuntime,
    sandboxes: Vec<Option<SandboxId>>,
}

struct Worker<'a> {
    shared: &'a Shared,
    slot: Arc<WatchSlot>,
    loaded: Option<Loaded>,
    declarations: Vec<Result<Declaration, String>>,
    /// The batch's JSON text, reused so each batch does not allocate (and fault in) anew.
    json: String,
}

fn worker_main(
    shared: &Shared,
    slot: Arc<WatchSlot>,
    jobs: Receiver<Job>,
    ready: Sender<Result<Vec<Result<Declaration, String>>, super::engine::EngineError>>,
) {
    let mut worker = Worker { shared, slot, loaded: None, declarations: Vec::new(), json: String::new() };
    if let Err(e) = worker.load() {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(worker.declarations.clone()));
    for job in jobs {
        match job {
            Job::Run(batch, reply) => {
                // A panic here is a bug in Raindrop, not in an extension: fail the batch, rebuild
                // the runtime, keep serving.
                let tag = batch.tag;
                let ext = batch.ext;
                let n = batch.docs.len();
                let t0 = std::time::Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run(&batch)));
                crate::timing::record_as(|| job_label("run", shared, ext), t0, n);
                let outcomes = result.unwrap_or_else(|_| {
                    worker.recycle();
                    vec![DocOutcome::Failed(HandlerError::new(FailureKind::Exception, "internal error in the JS worker")); n]
                });
                let _ = reply.send(BatchResult { tag, ext, outcomes });
            }
            Job::Filter { ext, keys, reply } => {
                let n = keys.len;
                let t0 = std::time::Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.filter(ext, &keys)));
                crate::timing::record_as(|| job_label("filter", shared, ext), t0, n);
                let answers = result.unwrap_or_else(|_| {
                    worker.recycle();
                    vec![Err(HandlerError::new(FailureKind::Exception, "internal error in the JS worker")); n]
                });
                let _ = reply.send(answers);
            }
            Job::Later { ext, values, reply } => {
                let t0 = std::time::Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.later(ext, &values)));
                crate::timing::record_as(|| job_label("later", shared, ext), t0, values.len());
                let outcome = result.unwrap_or_else(|_| {
                    worker.recycle();
                    DocOutcome::Failed(HandlerError::new(FailureKind::Exception, "internal error in the JS worker"))
                });
                let _ = reply.send(outcome);
            }
        }
    }
    worker.loaded = None;
}

/// A job's label in the timing table: its kind and the extension's file.
fn job_label(kind: &str, shared: &Shared, ext: usize) -> String {
    let file = shared.sources.get(ext).map(|s| s.file_name()).unwrap_or_default();
    format!("{kind}:{file}")
}

impl Worker<'_> {
    /// Creates the runtime and loads every extension into it.
    fn load(&mut self) -> Result<(), super::engine::EngineError> {
        // Only one runtime may exist per thread: drop the old one first.
        self.loaded = None;
        self.slot.set_interrupter(None);
        let host = WorkerHost { slot: self.slot.clone(), functions: self.shared.config.host_functions.clone() };
        let limits = RuntimeLimits { heap_bytes: self.shared.config.heap_bytes };
        let mut rt = JsRuntime::new(Box::new(host), limits)?;
        self.slot.set_interrupter(Some(rt.interrupter()));
        let mut sandboxes = Vec::new();
        let mut declarations = Vec::new();
        let mut seen_ids: Vec<(String, String)> = Vec::new();
        let limit = self.shared.config.time_limit;
        for (i, source) in self.shared.sources.iter().enumerate() {
            let file = source.file_name();
            // A file that failed to load in this worker's first runtime fails the same way in
            // a recycled one: it is not run again (a top-level loop cost its time limit at
            // every recycle).
            if let Some(Err(e)) = self.declarations.get(i) {
                sandboxes.push(None);
                declarations.push(Err(e.clone()));
                continue;
            }
            // Loading runs top-level extension code: it gets the default time limit too.
            self.slot.arm(limit);
            let loaded = rt.load(&file, &source.source);
            self.slot.disarm();
            let decl = loaded.map_err(|failure| load_error(&file, failure, limit, self.shared.config.heap_bytes)).and_then(|(id, json)| {
                let decl: Declaration = serde_json::from_str(&json)
                    .map_err(|e| format!("{file}: the driver described the extension badly: {e}"))?;
                if let Some((_, other)) = seen_ids.iter().find(|(i, _)| *i == decl.id) {
                    return Err(format!("{}: extension id {} is already declared in {other}", decl.site, decl.id));
                }
                seen_ids.push((decl.id.clone(), file.clone()));
                Ok((id, decl))
            });
            match decl {
                Ok((id, decl)) => {
                    sandboxes.push(Some(id));
                    declarations.push(Ok(decl));
                }
                Err(e) => {
                    sandboxes.push(None);
                    declarations.push(Err(e));
                }
            }
        }
        self.loaded = Some(Loaded { rt, sandboxes });
        self.declarations = declarations;
        Ok(())
    }

    fn recycle(&mut self) {
        tracing::debug!("recycling a JS runtime");
        if let Err(e) = self.load() {
            tracing::error!("cannot recreate a JS runtime: {e}");
        }
    }

    fn run(&mut self, batch: &Batch) -> Vec<DocOutcome> {
        let decl = match self.declaration(batch.ext) {
            Ok(d) => d,
            Err(e) => return vec![DocOutcome::Failed(e); batch.docs.len()],
        };
        // JS would accept a lone surrogate escape; Raindrop's documents are valid Unicode, so
        // such a document is refused here and the others go ahead.
        if !batch.docs.iter().any(|d| has_lone_surrogate(d)) {
            return self.run_valid(&decl, batch);
        }
        let mut outcomes = Vec::with_capacity(batch.docs.len());
        let mut good = Vec::new();
        for doc in &batch.docs {
            if has_lone_surrogate(doc) {
                if !good.is_empty() {
                    outcomes.extend(self.run_valid(&decl, &Batch { ext: batch.ext, docs: std::mem::take(&mut good), tag: 0 }));
                }
                outcomes.push(DocOutcome::Failed(HandlerError::new(FailureKind::BadInput, "the document contains a lone surrogate (invalid Unicode)")));
            } else {
                good.push(doc.clone());
            }
        }
        if !good.is_empty() {
            outcomes.extend(self.run_valid(&decl, &Batch { ext: batch.ext, docs: good, tag: 0 }));
        }
        outcomes
    }

    /// The declaration of extension `ext`, or why it cannot run.
    fn declaration(&self, ext: usize) -> Result<Declaration, HandlerError> {
        match self.declarations.get(ext) {
            Some(Ok(d)) => Ok(d.clone()),
            Some(Err(e)) => Err(HandlerError::new(FailureKind::NotLoaded, e.clone())),
            None => Err(HandlerError::new(FailureKind::NotLoaded, "no such extension")),
        }
    }

    /// The time limit for one call of `decl`'s functions: its own, or the pool's default.
    fn time_limit(&self, decl: &Declaration) -> Duration {
        decl.time_limit().unwrap_or(self.shared.config.time_limit)
    }

    /// One call of a control method other than `run`, under the extension's time limit; the
    /// runtime is recycled after an out-of-memory.
    /// One call of `method`, stopped after the extension's time limit times `units`.
    fn call_once(&mut self, ext: usize, method: &std::ffi::CStr, arg: &str, units: u32) -> Result<String, HandlerError> {
        let decl = self.declaration(ext)?;
        let limit = self.time_limit(&decl).checked_mul(units.max(1)).unwrap_or(Duration::MAX);
        let Some(Loaded { rt, sandboxes }) = self.loaded.as_mut() else {
            return Err(HandlerError::new(FailureKind::Exception, "the JS runtime could not be recreated"));
        };
        let Some(sandbox) = sandboxes[ext] else {
            return Err(HandlerError::new(FailureKind::NotLoaded, "the extension did not load"));
        };
        self.slot.arm(limit);
        let call = rt.call(sandbox, &decl.id, method, Some(arg));
        self.slot.disarm();
        let oom = call.out_of_memory;
        let result = match call.result {
            Ok(text) => Ok(text),
            Err(_) if oom => Err(HandlerError::new(FailureKind::OutOfMemory, out_of_memory_message(self.shared.config.heap_bytes))),
            Err(CallFailure::Interrupted) => Err(HandlerError::new(FailureKind::TimeLimit, format!("ran past its time limit of {} ms and was stopped", limit.as_millis()))),
            Err(CallFailure::Threw(e)) => Err(HandlerError::new(FailureKind::Exception, e.to_string())),
            Err(CallFailure::BadInput(e)) => Err(HandlerError::new(FailureKind::BadInput, e.to_string())),
        };
        if oom {
            self.recycle();
        }
        result
    }

    fn filter(&mut self, ext: usize, keys: &FilterKeys) -> Vec<Result<bool, HandlerError>> {
        match self.call_once(ext, c"filter", &keys.json, 1) {
            Err(e) => vec![Err(e); keys.len],
            Ok(text) => {
                let answers: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
                if answers.len() != keys.len {
                    return vec![Err(HandlerError::new(FailureKind::BadOutput, "the filter gave the wrong number of answers")); keys.len];
                }
                answers
                    .into_iter()
                    .map(|a| match a {
                        Value::Bool(b) => Ok(b),
                        other => {
                            let e: Option<JsError> = other.get("error").and_then(|e| serde_json::from_value(e.clone()).ok());
                            Err(match e {
                                Some(e) => HandlerError { kind: FailureKind::Exception, message: e.message, file: e.file, line: e.line, stack: e.stack },
                                None => HandlerError::new(FailureKind::BadOutput, "the filter gave no answer"),
                            })
                        }
                    })
                    .collect()
            }
        }
    }

    fn later(&mut self, ext: usize, values: &[Value]) -> DocOutcome {
        let arg = serde_json::to_string(values).unwrap_or_else(|_| "[]".into());
        // One call handles all the values: it gets the time limit once per LATER_VALUES_PER_LIMIT
        // of them, so a large queue is not cut short while a handler that never returns still is.
        let units = u32::try_from(values.len().div_ceil(LATER_VALUES_PER_LIMIT)).unwrap_or(u32::MAX);
        match self.call_once(ext, c"runLater", &arg, units) {
            Err(e) => DocOutcome::Failed(e),
            Ok(text) => parse_outcomes(&text, 1, false).pop().unwrap_or_else(|| DocOutcome::Failed(HandlerError::new(FailureKind::BadOutput, "no outcome"))),
        }
    }

    fn run_valid(&mut self, decl: &Declaration, batch: &Batch) -> Vec<DocOutcome> {
        let limit = self.time_limit(decl);
        let mut outcomes = Vec::with_capacity(batch.docs.len());
        let mut rest: &[Arc<str>] = &batch.docs;
        while !rest.is_empty() {
            let Some(Loaded { rt, sandboxes }) = self.loaded.as_mut() else {
                outcomes.extend(fail_all(rest.len(), FailureKind::Exception, "the JS runtime could not be recreated"));
                break;
            };
            let Some(sandbox) = sandboxes[batch.ext] else {
                return fail_all(batch.docs.len(), FailureKind::NotLoaded, "the extension did not load");
            };
            json_array(rest, &mut self.json);
            self.slot.arm(limit);
            let call = rt.call(sandbox, &decl.id, c"run", Some(&self.json));
            self.slot.disarm();
            let mut out_of_memory = call.out_of_memory;
            match call.result {
                Ok(text) => {
                    outcomes.extend(parse_outcomes(&text, rest.len(), out_of_memory));
                    rest = &[];
                }
                Err(CallFailure::BadInput(e)) if !out_of_memory => {
                    if rest.len() == 1 {
                        outcomes.push(DocOutcome::Failed(HandlerError::new(FailureKind::BadInput, e.message)));
                    } else {
                        // Find the bad document by handing them over one at a time.
                        for doc in rest {
                            let single = Batch { ext: batch.ext, docs: vec![doc.clone()], tag: 0 };
                            outcomes.extend(self.run(&single));
                        }
                    }
                    rest = &[];
                }
                Err(failure) => {
                    // Stopped (or failed outside the per-document try) part-way: keep the
                    // outcomes of the documents that finished, fail the one that was running,
                    // and go on with the rest.
                    let (kind, message) = match failure {
                        CallFailure::Interrupted if !out_of_memory => {
                            (FailureKind::TimeLimit, format!("the handler ran past its time limit of {} ms and was stopped", limit.as_millis()))
                        }
                        _ if out_of_memory => (FailureKind::OutOfMemory, format!("the handler {}", out_of_memory_message(self.shared.config.heap_bytes))),
                        CallFailure::Threw(e) => (FailureKind::Exception, e.to_string()),
                        CallFailure::BadInput(e) => (FailureKind::BadInput, e.to_string()),
                        CallFailure::Interrupted => unreachable!("handled above"),
                    };
                    if out_of_memory {
                        rt.collect_garbage();
                    }
                    let partial = rt.call(sandbox, &decl.id, c"partial", None);
                    out_of_memory |= partial.out_of_memory;
                    let done = match partial.result {
                        Ok(text) => parse_outcomes(&text, usize::MAX, false),
                        Err(_) => Vec::new(),
                    };
                    let finished = done.len().min(rest.len() - 1);
                    outcomes.extend(done.into_iter().take(finished));
                    outcomes.push(DocOutcome::Failed(HandlerError::new(kind, message)));
                    rest = &rest[finished + 1..];
                }
            }
            if out_of_memory {
                self.recycle();
            }
        }
        outcomes
    }
}

/// Why an extension did not load, as `ext list` and the logs say it.
fn load_error(file: &str, failure: LoadFailure, limit: Duration, heap_bytes: u32) -> String {
    match failure {
        LoadFailure::Threw(e) => e.to_string(),
        LoadFailure::Interrupted => format!(
            "{file}: its top-level code ran past the load time limit of {} ms and was stopped (a loop at the top level?)",
            limit.as_millis()
        ),
        LoadFailure::OutOfMemory => format!("{file}: its top-level code {}", out_of_memory_message(heap_bytes)),
    }
}

fn out_of_memory_message(heap_bytes: u32) -> String {
    format!("ran out of memory: over the runtime's cap of {} MiB (JS objects, strings and array buffers)", heap_bytes >> 20)
}

/// Whether JSON text holds a `\\uHHHH` escape of a surrogate that is not part of a pair.
fn has_lone_surrogate(json: &str) -> bool {
    let b = json.as_bytes();
    // Fast path: no `\\u` followed by d/D anywhere (one SIMD scan for backslashes).
    if !memchr::memchr_iter(b'\\', b).any(|i| b.get(i + 1) == Some(&b'u') && matches!(b.get(i + 2), Some(b'd' | b'D'))) {
        return false;
    }
    let hex = |i: usize| -> Option<u32> { std::str::from_utf8(b.get(i..i + 4)?).ok().and_then(|h| u32::from_str_radix(h, 16).ok()) };
    let mut pending_high = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') {
                let Some(cp) = hex(i + 2) else { return false };
                match cp {
                    0xD800..=0xDBFF if pending_high => return true,
                    0xD800..=0xDBFF => pending_high = true,
                    0xDC00..=0xDFFF if !pending_high => return true,
                    0xDC00..=0xDFFF => pending_high = false,
                    _ if pending_high => return true,
                    _ => {}
                }
                i += 6;
            } else {
                if pending_high {
                    return true;
                }
                i += 2;
            }
            continue;
        }
        if pending_high {
            return true;
        }
        i += 1;
    }
    pending_high
}

fn fail_all(n: usize, kind: FailureKind, message: &str) -> Vec<DocOutcome> {
    vec![DocOutcome::Failed(HandlerError::new(kind, message)); n]
}

fn json_array(docs: &[Arc<str>], json: &mut String) {
    json.clear();
    json.reserve(docs.iter().map(|d| d.len() + 1).sum::<usize>() + 2);
    json.push('[');
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(d);
    }
    json.push(']');
}

#[derive(Deserialize)]
struct JsError {
    #[serde(default)]
    message: String,
    file: Option<String>,
    line: Option<u32>,
    stack: Option<String>,
}

/// One document's outcome as the driver writes it: `{"ok":[…],"later":[…]}` or `{"error":{…}}`.
#[derive(Deserialize)]
struct OneOutcome {
    ok: Option<Vec<EmittedItem>>,
    #[serde(default)]
    later: Vec<Value>,
    error: Option<JsError>,
}

impl OneOutcome {
    fn into_outcome(self, out_of_memory: bool) -> DocOutcome {
        match (self.ok, self.error) {
            (_, Some(e)) => {
                let kind = if out_of_memory && e.message.contains("out of memory") {
                    FailureKind::OutOfMemory
                } else {
                    FailureKind::Exception
                };
                DocOutcome::Failed(HandlerError { kind, message: e.message, file: e.file, line: e.line, stack: e.stack })
            }
            (Some(items), None) => DocOutcome::Emitted(Emission { items, later: self.later }),
            (None, None) => DocOutcome::Failed(HandlerError::new(FailureKind::BadOutput, "the driver gave an empty outcome")),
        }
    }
}

/// Reads the driver's per-document outcomes. `expected` is the number of documents (or
/// `usize::MAX` for a partial run); each outcome is read on its own, so one bad emission fails
/// only its own document.
fn parse_outcomes(text: &str, expected: usize, out_of_memory: bool) -> Vec<DocOutcome> {
    // The common case in one pass; per-document reading only when something is wrong. Emitted
    // fields are kept as text, which serde_json takes without decoding its escapes: a lone
    // surrogate (that no store can hold) is looked for here instead.
    let lone = has_lone_surrogate(text);
    if let (false, Ok(all)) = (lone, serde_json::from_str::<Vec<OneOutcome>>(text)) {
        if expected == usize::MAX || all.len() == expected {
            return all.into_iter().map(|o| o.into_outcome(out_of_memory)).collect();
        }
    }
    let raw: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let n = if expected == usize::MAX { 0 } else { expected };
            return fail_all(n, FailureKind::BadOutput, &format!("cannot read the handler's output: {e}"));
        }
    };
    let mut out: Vec<DocOutcome> = raw
        .into_iter()
        .map(|one| match serde_json::from_str::<OneOutcome>(one.get()) {
            Ok(_) if lone && has_lone_surrogate(one.get()) => DocOutcome::Failed(HandlerError::new(
                FailureKind::BadOutput,
                "the handler emitted a string holding a lone UTF-16 surrogate, which JSON text cannot carry",
            )),
            Ok(o) => o.into_outcome(out_of_memory),
            Err(e) => DocOutcome::Failed(HandlerError::new(
                FailureKind::BadOutput,
                format!("the handler emitted something that is not valid JSON text: {e}"),
            )),
        })
        .collect();
    if expected != usize::MAX && out.len() != expected {
        out = fail_all(expected, FailureKind::BadOutput, "the driver returned the wrong number of outcomes");
    }
    out
}

/// A `later_handler` call under way ([`JsPool::submit_later`]).
pub struct PendingLater(Receiver<DocOutcome>);

/// The `[id, rev, schema_id]` keys a filter is asked about, as the JSON text handed to it.
pub struct FilterKeys {
    json: String,
    len: usize,
}

impl FilterKeys {
    pub fn new(keys: &[(String, String, String)]) -> FilterKeys {
        FilterKeys { json: serde_json::to_string(keys).unwrap_or_else(|_| "[]".into()), len: keys.len() }
    }
}

/// A filter call started by [`JsPool::submit_filter`]: one answer per key.
pub struct PendingFilter {
    answers: Receiver<Vec<Result<bool, HandlerError>>>,
    n: usize,
}

impl PendingFilter {
    pub fn wait(self) -> Vec<Result<bool, HandlerError>> {
        self.answers.recv().unwrap_or_else(|_| vec![Err(HandlerError::new(FailureKind::Exception, "the JS pool is gone")); self.n])
    }
}

impl PendingLater {
    pub fn wait(self) -> DocOutcome {
        self.0.recv().unwrap_or_else(|_| DocOutcome::Failed(HandlerError::new(FailureKind::Exception, "the JS pool is gone")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_read_one_by_one() {
        let text = r#"[{"ok":[{"schema_id":"a","items":{"x":1}}]},{"error":{"message":"boom","file":"f.js","line":3}},{"ok":[{"schema_id":"b","items":{"s":"\ud800"}}]}]"#;
        let out = parse_outcomes(text, 3, false);
        assert!(matches!(&out[0], DocOutcome::Emitted(e) if e.items[0].schema_id == "a"));
        assert!(matches!(&out[1], DocOutcome::Failed(e) if e.message == "boom" && e.line == Some(3)));
        assert!(matches!(&out[2], DocOutcome::Failed(e) if e.kind == FailureKind::BadOutput), "{:?}", out[2]);
    }

    #[test]
    fn lone_surrogates_are_found_and_pairs_are_not() {
        assert!(!has_lone_surrogate(r#"{"a":"plain"}"#));
        assert!(!has_lone_surrogate(r#"{"a":"\ud83d\ude00"}"#));
        assert!(!has_lone_surrogate(r#"{"a":"\\ud800"}"#));
        assert!(has_lone_surrogate(r#"{"a":"\ud800"}"#));
        assert!(has_lone_surrogate(r#"{"a":"\udc00x"}"#));
        assert!(has_lone_surrogate(r#"{"a":"\ud800\n"}"#));
        assert!(has_lone_surrogate(r#"{"a":"\ud800\u0041"}"#));
    }

    #[test]
    fn a_wrong_count_fails_every_document() {
        let out = parse_outcomes(r#"[{"ok":[]}]"#, 2, false);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| matches!(o, DocOutcome::Failed(_))));
    }
}
