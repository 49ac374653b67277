//! The pool: N worker threads, each owning one SpiderMonkey runtime with every extension loaded,
//! fed batches of documents over one shared crossbeam queue.
//!
//! A batch names one extension and carries documents as JSON text; the worker hands the whole
//! batch to the extension's sandbox in one call and gets back one outcome per document. Whatever
//! an extension does (throws, loops, exhausts its heap) ends as a [`HandlerError`] for that one
//! document; the worker recycles its runtime if the heap filled up, and the pool keeps serving.
//!
//! `worker` is one worker thread's loop and its runtime; `outcomes` reads what the driver
//! returns for a batch.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::extension::{ExtensionSource, LoadedExtension};
use super::host::HostFunctions;
use super::watchdog::Watchdog;
use super::worker::{worker_main, Shared};

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
    /// Where handler times are counted, if anywhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The job queue has no bound. The pipeline's has one (it is held back when the pool is
    /// behind); the API's has none: requests are bounded by the listener's connections, and
    /// submitting one must never block the listener's thread.
    pub unbounded_queue: bool,
    /// The schema definitions every `emit_schema` is checked against (none: nothing checked).
    pub schemas: Arc<super::extension::SchemaSources>,
}

impl PoolConfig {
    pub fn new(threads: usize) -> PoolConfig {
        PoolConfig {
            threads: threads.max(1),
            time_limit: Duration::from_secs(5),
            heap_bytes: 512 << 20,
            host_functions: HostFunctions::new(),
            metrics: None,
            unbounded_queue: false,
            schemas: Arc::default(),
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
    /// The version of the schema's definition the item was checked against (none: no
    /// definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
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
    /// An item it emitted broke its schema's definition (a field's type, a required field, the
    /// definition's `validate`).
    SchemaViolation,
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

pub(super) enum Job {
    Run(Batch, Sender<BatchResult>),
    /// Ask the extension's `filter(id, rev, schema_id)` about each key.
    Filter {
        ext: usize,
        keys: Arc<FilterKeys>,
        reply: Sender<Vec<Result<bool, HandlerError>>>,
    },
    /// Call the extension's `later_handler(values)`.
    Later {
        ext: usize,
        values: Vec<Value>,
        reply: Sender<DocOutcome>,
    },
    /// Run one request through a route of an API file: `request` is `{"route": i, "req": …}`.
    Request {
        ext: usize,
        request: String,
        limit: Option<Duration>,
        reply: Reply,
    },
}

/// What is done with a request's answer, on the worker's thread as soon as it is there (the
/// caller need not wait on a thread of its own). Dropped uncalled if the pool is dropped first.
pub type Reply = Box<dyn FnOnce(Result<String, HandlerError>) + Send>;

/// The running pool. Dropping it stops and joins every worker.
pub struct JsPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    extensions: Vec<LoadedExtension>,
    /// Each worker's clock, to stop what runs when the pool is dropped.
    slots: Vec<Arc<super::watchdog::WatchSlot>>,
    _watchdog: Watchdog,
}

impl JsPool {
    /// Starts `config.threads` workers and loads every extension into each. Extensions that
    /// fail to load are listed with their error; the others work.
    pub fn start(sources: Vec<ExtensionSource>, config: PoolConfig) -> Result<JsPool, PoolError> {
        let watchdog = Watchdog::start()?;
        let shared = Arc::new(Shared { sources, config });
        let (job_tx, job_rx) =
            if shared.config.unbounded_queue { crossbeam_channel::unbounded::<Job>() } else { bounded::<Job>(shared.config.threads * 4) };
        let mut workers = Vec::new();
        let mut ready = Vec::new();
        let mut slots = Vec::new();
        for i in 0..shared.config.threads {
            let (ready_tx, ready_rx) = bounded(1);
            let (shared, jobs, slot) = (shared.clone(), job_rx.clone(), watchdog.slot());
            slots.push(slot.clone());
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
            .map(|(source, declaration)| LoadedExtension::new(source, declaration))
            .collect();
        Ok(JsPool { jobs: Some(job_tx), workers, extensions, slots, _watchdog: watchdog })
    }

    /// How many calls can run side by side.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Every extension, in load order, with its declaration or load error.
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

    /// Runs one request through route `route` of API file `ext` (`req` as JSON text) and waits
    /// for the response's JSON text (`{status, headers, json | body}`), stopped after `limit`
    /// (else the pool's time limit).
    pub fn request(&self, ext: usize, route: usize, req: &str, limit: Option<Duration>) -> Result<String, HandlerError> {
        let (tx, rx) = bounded(1);
        self.submit_request(
            ext,
            route,
            req,
            limit,
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        rx.recv().unwrap_or_else(|_| Err(HandlerError::new(FailureKind::Exception, "the JS pool is gone")))
    }

    /// [`JsPool::request`] without waiting: `reply` gets the answer.
    pub fn submit_request(&self, ext: usize, route: usize, req: &str, limit: Option<Duration>, reply: Reply) {
        let request = format!("{{\"route\":{route},\"req\":{req}}}");
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Request { ext, request, limit, reply });
        }
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
    /// Calls still running are stopped as if past their time limit (an API handler given an
    /// hour must not hold up a stopping daemon); the workers see the queue close and exit.
    fn drop(&mut self) {
        self.jobs.take();
        for slot in &self.slots {
            slot.stop_now();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A `later_handler` call under way ([`JsPool::submit_later`]).
pub struct PendingLater(Receiver<DocOutcome>);

/// The `[id, rev, schema_id]` keys a filter is asked about, as the JSON text handed to it.
pub struct FilterKeys {
    pub(super) json: String,
    pub(super) len: usize,
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
