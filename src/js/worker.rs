//! One worker thread of the pool: its runtime with every extension loaded, and the calls it
//! makes into them — batches of documents, filters, later_handlers — each under the watchdog's
//! time limit; a runtime that ran out of memory (or a panic in Raindrop's code) is recycled.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use super::engine::{CallFailure, EngineError, JsRuntime, LoadFailure, RuntimeLimits, SandboxId};
use super::extension::{Declaration, ExtensionSource, Libs, SchemaSources};
use super::host::HostFunctions;
use super::outcomes::{fail_all, has_lone_surrogate, parse_outcomes, JsError};
use super::pool::{Batch, BatchResult, DocOutcome, FailureKind, FilterKeys, HandlerError, Job, PoolConfig, LATER_VALUES_PER_LIMIT};
use super::watchdog::WatchSlot;

/// What every worker of a pool shares: the extensions' sources and the pool's settings.
pub(super) struct Shared {
    pub(super) sources: Vec<ExtensionSource>,
    pub(super) config: PoolConfig,
}

/// The engine's view of this worker: logs, the watchdog clock, host functions.
struct WorkerHost {
    slot: Arc<WatchSlot>,
    functions: HostFunctions,
    clock: Rc<DocClock>,
    /// The libraries of the extension being loaded (`load_lib` runs only then).
    libs: Rc<RefCell<Arc<Libs>>>,
    /// The definitions `emit_schema` checks items against.
    schemas: Arc<SchemaSources>,
}

/// How the driver names a schema's definition to `__rd_host.lib` (no library's name has a `:`).
const SCHEMA_PREFIX: &str = "schema:";

/// Times each document of a batch, from one handler call's start to the next's (the driver
/// marks each start), for the handler-time histogram: gathered here, handed to the metrics
/// once per batch.
#[derive(Default)]
struct DocClock {
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The extension whose batch is running, when its current document began, and the
    /// times of those done.
    running: RefCell<Option<(String, Option<Instant>)>>,
    times: RefCell<Vec<f64>>,
}

impl DocClock {
    fn start(&self, ext: &str) {
        if self.metrics.is_some() {
            *self.running.borrow_mut() = Some((ext.to_string(), None));
            self.times.borrow_mut().clear();
        }
    }

    /// A document begins (and the one before, if any, ends).
    fn tick(&self) {
        if let Some((_, began)) = self.running.borrow_mut().as_mut() {
            let now = Instant::now();
            if let Some(began) = began.replace(now) {
                self.times.borrow_mut().push(now.duration_since(began).as_secs_f64());
            }
        }
    }

    /// The batch's call returned: its last document ended.
    fn finish(&self) {
        if let Some((ext, began)) = self.running.borrow_mut().take() {
            let mut times = self.times.borrow_mut();
            times.extend(began.map(|b| b.elapsed().as_secs_f64()));
            if let Some(metrics) = &self.metrics {
                metrics.handler_times(&ext, &times);
            }
            times.clear();
        }
    }
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
        self.clock.tick();
    }
    fn should_interrupt(&self) -> bool {
        self.slot.should_stop()
    }
    fn native_names(&self) -> Vec<String> {
        self.functions.names()
    }
    /// The time a host function takes is not the handler's: see [`WatchSlot::credit`].
    fn call_native(&self, ext: &str, name: &str, args_json: &str) -> String {
        let began = std::time::Instant::now();
        let answer = self.functions.call_json(ext, name, args_json);
        self.slot.credit(began.elapsed());
        answer
    }
    fn lib_source(&self, name: &str) -> Option<(String, String)> {
        if let Some(id) = name.strip_prefix(SCHEMA_PREFIX) {
            return Some(self.schemas.definition_source(id));
        }
        self.libs.borrow().get(name).map(|source| (format!("lib/{name}.js"), source.clone()))
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
    clock: Rc<DocClock>,
}

pub(super) fn worker_main(
    shared: &Shared,
    slot: Arc<WatchSlot>,
    jobs: Receiver<Job>,
    ready: Sender<Result<Vec<Result<Declaration, String>>, EngineError>>,
) {
    let clock = Rc::new(DocClock { metrics: shared.config.metrics.clone(), ..DocClock::default() });
    let mut worker = Worker { shared, slot, loaded: None, declarations: Vec::new(), json: String::new(), clock };
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
            Job::Request { ext, request, limit, reply } => {
                let t0 = std::time::Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.request(ext, &request, limit)));
                crate::timing::record_as(|| job_label("request", shared, ext), t0, 1);
                let answer = result.unwrap_or_else(|_| {
                    worker.recycle();
                    Err(HandlerError::new(FailureKind::Exception, "internal error in the JS worker"))
                });
                reply(answer);
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
    fn load(&mut self) -> Result<(), EngineError> {
        // Only one runtime may exist per thread: drop the old one first.
        self.loaded = None;
        self.slot.set_interrupter(None);
        let libs = Rc::new(RefCell::new(Arc::default()));
        let host = WorkerHost {
            slot: self.slot.clone(),
            functions: self.shared.config.host_functions.clone(),
            clock: self.clock.clone(),
            libs: libs.clone(),
            schemas: self.shared.config.schemas.clone(),
        };
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
            *libs.borrow_mut() = source.libs.clone();
            // Loading runs top-level extension code: it gets the default time limit too.
            self.slot.arm(limit);
            let loaded = rt.load(&file, &source.source);
            self.slot.disarm();
            let decl = loaded.map_err(|failure| load_error(&file, failure, limit, self.shared.config.heap_bytes)).and_then(|(id, json)| {
                let decl: Declaration =
                    serde_json::from_str(&json).map_err(|e| format!("{file}: the driver described the extension badly: {e}"))?;
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
                outcomes.push(DocOutcome::Failed(HandlerError::new(
                    FailureKind::BadInput,
                    "the document contains a lone surrogate (invalid Unicode)",
                )));
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

    /// One call of a control method other than `run`, stopped after the extension's time limit
    /// times `units`; the runtime is recycled after an out-of-memory.
    fn call_once(&mut self, ext: usize, method: &std::ffi::CStr, arg: &str, units: u32) -> Result<String, HandlerError> {
        let decl = self.declaration(ext)?;
        let limit = self.time_limit(&decl).checked_mul(units.max(1)).unwrap_or(Duration::MAX);
        self.call_limited(ext, &decl, method, arg, limit)
    }

    /// One request through a route (`{"route": i, "req": …}`), stopped after `limit` or the
    /// pool's time limit.
    fn request(&mut self, ext: usize, request: &str, limit: Option<Duration>) -> Result<String, HandlerError> {
        let decl = self.declaration(ext)?;
        let limit = limit.unwrap_or(self.shared.config.time_limit);
        self.call_limited(ext, &decl, c"request", request, limit)
    }

    fn call_limited(
        &mut self,
        ext: usize,
        decl: &Declaration,
        method: &std::ffi::CStr,
        arg: &str,
        limit: Duration,
    ) -> Result<String, HandlerError> {
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
            Err(CallFailure::Interrupted) => Err(HandlerError::new(
                FailureKind::TimeLimit,
                format!("ran past its time limit of {} ms and was stopped", limit.as_millis()),
            )),
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
                                Some(e) => HandlerError {
                                    kind: FailureKind::Exception,
                                    message: e.message,
                                    file: e.file,
                                    line: e.line,
                                    stack: e.stack,
                                },
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
            Ok(text) => parse_outcomes(&text, 1, false)
                .pop()
                .unwrap_or_else(|| DocOutcome::Failed(HandlerError::new(FailureKind::BadOutput, "no outcome"))),
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
            self.clock.start(&decl.id);
            let call = rt.call(sandbox, &decl.id, c"run", Some(&self.json));
            self.clock.finish();
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
                        CallFailure::Interrupted if !out_of_memory => (
                            FailureKind::TimeLimit,
                            format!("the handler ran past its time limit of {} ms and was stopped", limit.as_millis()),
                        ),
                        _ if out_of_memory => {
                            (FailureKind::OutOfMemory, format!("the handler {}", out_of_memory_message(self.shared.config.heap_bytes)))
                        }
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

/// The documents as one JSON array, in a buffer reused from batch to batch.
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
