//! Promise jobs: a job queue for each runtime, drained before a handler call ends.
//!
//! SpiderMonkey keeps the queue of promise jobs (microtasks) itself, but asks the embedding for
//! a `JS::JobQueue` the moment a promise reaction is queued; with none set it dereferences null
//! and the process dies (`.then()`, `await` or an `async` function in any extension did that).
//! Each runtime gets a `RustJobQueue` from mozjs's glue whose hooks answer "no host-defined
//! data" (there is no HTML incumbent-global notion here), and the jobs are run by [`run_jobs`],
//! which the driver calls (`__rd_host.drain`) after each handler returns: extensions are
//! synchronous, so the jobs a call queued run within that call. A job stopped by the watchdog
//! ends the drain; whatever is left is thrown away ([`discard_jobs`]) when the call is over, so
//! no job of one call ever runs in another.

use std::cell::Cell;
use std::ptr;

use mozjs::context::{JSContext, RawJSContext};
use mozjs::glue::{CreateJobQueue, DeleteJobQueue, JobQueueTraps, RustJobQueue};
use mozjs::jsapi::{GetExecutionGlobalFromJSMicroTask, JSObject, JSTracer, MutableHandleObject, ToMaybeWrappedJSMicroTask, Value};
use mozjs::jsval::UndefinedValue;
use mozjs::realm::AutoRealm;
use mozjs::rooted;
use mozjs::rust::wrappers2::{HasAnyMicroTasks, JS_DequeueNextMicroTask, RunJSMicroTask, SetJobQueue};

thread_local! {
    /// A drain is running on this thread: a job that reaches `drain` again changes nothing.
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// A runtime's job queue object; deleted when dropped, which must be after the runtime.
pub(super) struct JobQueue(*mut RustJobQueue);

impl JobQueue {
    /// Makes a job queue and installs it in `cx`.
    pub(super) fn install(cx: &mut JSContext) -> JobQueue {
        let traps = JobQueueTraps {
            getHostDefinedData: Some(host_defined_data),
            getHostDefinedGlobal: Some(host_defined_global),
            runJobs: Some(run_jobs_trap),
            traceNonGCThingMicroTask: Some(trace_nothing),
        };
        // SAFETY: the glue copies the traps; every trap is an `extern "C"` function that does
        // not unwind. The queue lives until `Drop`, which the owner runs after the runtime.
        let queue = unsafe { CreateJobQueue(&traps) };
        // SAFETY: `queue` is a live `JS::JobQueue` (RustJobQueue derives from it).
        unsafe { SetJobQueue(cx, queue as *mut mozjs::jsapi::JobQueue) };
        JobQueue(queue)
    }
}

impl Drop for JobQueue {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: made by CreateJobQueue; the runtime that used it is gone (field order of
            // the owner), so nothing refers to it any more.
            unsafe { DeleteJobQueue(self.0) };
        }
    }
}

/// The job queue's answer to "what host-defined data goes with a job": none.
///
/// # Safety
/// Called by SpiderMonkey with this thread's live context. The out-parameters are live handles it passed.
unsafe extern "C" fn host_defined_data(
    _cx: *mut RawJSContext,
    incumbent_global: MutableHandleObject,
    optional_host_defined_data: MutableHandleObject,
) -> bool {
    incumbent_global.set(ptr::null_mut());
    optional_host_defined_data.set(ptr::null_mut());
    true
}

/// The job queue's answer to "what is the incumbent global": none.
///
/// # Safety
/// Called by SpiderMonkey with this thread's live context.
unsafe extern "C" fn host_defined_global(_cx: *mut RawJSContext, _data: MutableHandleObject) -> bool {
    true
}

/// Called by the engine only around debugger interruptions, which Raindrop never makes; it
/// drains like the driver's call would.
///
/// # Safety
/// Called by SpiderMonkey with this thread's live context.
unsafe extern "C" fn run_jobs_trap(cx: *mut RawJSContext) {
    let Some(raw) = std::ptr::NonNull::new(cx) else { return };
    // SAFETY: the engine passes this thread's live context.
    let mut cx = unsafe { JSContext::from_ptr(raw) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as above; a failure leaves the exception pending for the engine.
        unsafe { run_jobs(&mut cx) }
    }));
}

/// Nothing to trace: every job is a GC thing the engine traces itself.
///
/// # Safety
/// Called by SpiderMonkey's tracer; it touches nothing.
unsafe extern "C" fn trace_nothing(_trc: *mut JSTracer, _value: *mut Value) {}

/// Runs the queued promise jobs, and the jobs they queue, until none is left. `false` when a
/// job ended with an exception its promise could not take (it stays pending, for the caller to
/// throw) or was stopped from outside (nothing pending: the stop goes on up the stack).
///
/// # Safety
/// `cx` must be this thread's live context, outside any GC.
pub(super) unsafe fn run_jobs(cx: &mut JSContext) -> bool {
    if DRAINING.with(|d| d.replace(true)) {
        return true;
    }
    // SAFETY: the caller's contract; each value is rooted before the next call that may GC.
    let done = unsafe {
        loop {
            if !HasAnyMicroTasks(cx) {
                break true;
            }
            rooted!(&in(cx) let mut task = UndefinedValue());
            JS_DequeueNextMicroTask(cx, task.handle_mut());
            let job: *mut JSObject = ToMaybeWrappedJSMicroTask(&*task);
            if job.is_null() {
                continue;
            }
            rooted!(&in(cx) let job = job);
            let global = GetExecutionGlobalFromJSMicroTask(job.get());
            if global.is_null() {
                continue;
            }
            rooted!(&in(cx) let global = global);
            let mut realm = AutoRealm::new_from_handle(cx, global.handle());
            if !RunJSMicroTask(&mut realm, job.handle()) {
                break false;
            }
        }
    };
    DRAINING.with(|d| d.set(false));
    done
}

/// Throws away the jobs left in the queue (a drain that was stopped, jobs queued after the
/// last drain), so none runs in a later call.
///
/// # Safety
/// `cx` must be this thread's live context.
pub(super) unsafe fn discard_jobs(cx: &mut JSContext) {
    // SAFETY: the caller's contract; the dequeued value is rooted while it is dropped.
    unsafe {
        while HasAnyMicroTasks(cx) {
            rooted!(&in(cx) let mut task = UndefinedValue());
            JS_DequeueNextMicroTask(cx, task.handle_mut());
        }
    }
}
