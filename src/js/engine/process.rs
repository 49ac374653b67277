//! The process-wide SpiderMonkey engine and the parent runtime that every worker runtime is a
//! child of.
//!
//! `JSEngine::init` may run once per process and `JSEngine` is `!Send`, while pools come and go
//! (tests create many). So one dedicated thread owns the engine and a parent `Runtime` for the
//! life of the process and hands out `ParentRuntime` tokens on request. Child runtimes share the
//! parent's self-hosted code: 0.3 ms and 0.5 MiB each instead of 6 ms and 2 MiB.
//!
//! The engine must be shut down before the process exits: SpiderMonkey's static destructors
//! crash if a runtime is still alive when they run. So the thread registers an `atexit` hook
//! (which runs before those destructors) that drops the parent runtime and the engine, provided
//! every child runtime is gone by then.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use mozjs::rust::{JSEngine, ParentRuntime, Runtime};

use super::EngineError;

enum Request {
    Token(Sender<ParentRuntime>),
    Shutdown(Sender<()>),
}

static ENGINE_THREAD: OnceLock<Result<Sender<Request>, String>> = OnceLock::new();

/// Child runtimes alive now (see [`ChildGuard`]).
static LIVE_CHILDREN: AtomicUsize = AtomicUsize::new(0);

/// Counts one live child runtime; must be dropped after the runtime itself.
pub(super) struct ChildGuard(());

impl ChildGuard {
    pub(super) fn new() -> ChildGuard {
        LIVE_CHILDREN.fetch_add(1, Ordering::SeqCst);
        ChildGuard(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        LIVE_CHILDREN.fetch_sub(1, Ordering::SeqCst);
    }
}

extern "C" fn shutdown_at_exit() {
    let _ = std::panic::catch_unwind(shutdown);
}

/// Shuts the engine down if it was started and no child runtime is alive. Later attempts to
/// create runtimes fail.
pub fn shutdown() {
    let Some(Ok(sender)) = ENGINE_THREAD.get() else { return };
    let (tx, rx) = bounded(1);
    if sender.send(Request::Shutdown(tx)).is_ok() {
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
}

/// Called last thing before the process exits: waits up to `patience` for the child runtimes
/// still alive (a pool being dropped on another thread) and shuts the engine down.
///
/// When some are still alive after that, the exit can no longer be made safely through
/// `exit()` — SpiderMonkey's static destructors would abort on a mutex a live runtime holds,
/// turning a clean stop into SIGABRT — so the process ends here with `_exit(code)`, after
/// flushing what Rust buffered. Raindrop is crash-only: nothing a runtime was doing needs to
/// finish for the database to be whole.
pub fn exit_after_runtimes(code: i32, patience: Duration) {
    let deadline = std::time::Instant::now() + patience;
    while LIVE_CHILDREN.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive = LIVE_CHILDREN.load(Ordering::SeqCst);
    if alive == 0 {
        shutdown();
        return;
    }
    use std::io::Write;
    eprintln!("raindrop: {alive} JavaScript runtime(s) still running at exit; leaving without running SpiderMonkey's destructors");
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process without running atexit handlers or static destructors,
    // which is the point; Rust's buffered output was flushed just above.
    unsafe { libc::_exit(code) }
}

fn start_engine_thread() -> Result<Sender<Request>, String> {
    let (req_tx, req_rx) = crossbeam_channel::unbounded::<Request>();
    let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name("js-engine".into())
        .stack_size(8 << 20)
        .spawn(move || {
            super::memory::keep_freed_memory();
            let engine = match JSEngine::init() {
                Ok(engine) => engine,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("SpiderMonkey failed to start: {e:?}")));
                    return;
                }
            };
            let parent = Runtime::new(engine.handle());
            // SAFETY: registers a plain `extern "C" fn()` that catches panics.
            unsafe { libc::atexit(shutdown_at_exit) };
            let _ = ready_tx.send(Ok(()));
            for request in req_rx {
                match request {
                    // A requester that went away drops its token here, on this thread.
                    Request::Token(reply) => {
                        let _ = reply.send(parent.prepare_for_new_child());
                    }
                    Request::Shutdown(done) => {
                        if LIVE_CHILDREN.load(Ordering::SeqCst) == 0 {
                            drop(parent);
                            drop(engine);
                            let _ = done.send(());
                            return;
                        }
                        let _ = done.send(());
                    }
                }
            }
        })
        .map_err(|e| format!("cannot spawn the js-engine thread: {e}"))?;
    ready_rx.recv().map_err(|_| "the js-engine thread died while starting".to_string())??;
    Ok(req_tx)
}

/// A token from which the calling thread can create its own child runtime.
pub(super) fn parent_token() -> Result<ParentRuntime, EngineError> {
    let sender = ENGINE_THREAD.get_or_init(start_engine_thread).as_ref().map_err(|e| EngineError::Start(e.clone()))?;
    let (tx, rx) = bounded(1);
    sender.send(Request::Token(tx)).map_err(|_| EngineError::Start("the js-engine thread is gone".into()))?;
    rx.recv().map_err(|_| EngineError::Start("the js-engine thread did not answer".into()))
}
