//! The Rust functions SpiderMonkey calls: the natives of `__rd_host` and the interrupt, garbage
//! collection and out-of-memory callbacks.
//!
//! They reach the rest of Raindrop through the thread's installed [`Host`]. Each native runs its
//! body under `catch_unwind`: a panic becomes a JS `Error`, never an unwind through C++.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use mozjs::context::{JSContext, RawJSContext};
use mozjs::conversions::ToJSValConvertible;
use mozjs::jsapi::{CallArgs, JS_ReportErrorUTF8, Value};
use mozjs::jsval::UndefinedValue;
use mozjs::rooted;

use super::Host;

thread_local! {
    static HOST: RefCell<Option<Box<dyn Host>>> = RefCell::new(None);
    /// The id (or file) of the extension whose code is running, for tagging.
    static CURRENT: RefCell<String> = const { RefCell::new(String::new()) };
    static OOM: Cell<bool> = const { Cell::new(false) };
    /// The cap on this thread's runtime's memory: its GC heap and the memory its objects own
    /// outside it (array buffers, long strings), as the engine counts them.
    static MEMORY_CAP: Cell<u64> = const { Cell::new(u64::MAX) };
}

pub(super) fn set_memory_cap(bytes: u64) {
    MEMORY_CAP.with(|c| c.set(bytes));
}

pub(super) fn host_installed() -> bool {
    HOST.with(|h| h.borrow().is_some())
}

pub(super) fn install_host(host: Box<dyn Host>) {
    HOST.with(|h| *h.borrow_mut() = Some(host));
}

pub(super) fn uninstall_host() {
    HOST.with(|h| h.borrow_mut().take());
}

pub(super) fn set_current(ext: &str) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.push_str(ext);
    });
}

/// Returns whether an out-of-memory was signalled since the last call, and clears the flag.
pub(super) fn take_oom() -> bool {
    OOM.with(|o| o.replace(false))
}

pub(super) fn native_names() -> Vec<String> {
    HOST.with(|h| h.borrow().as_ref().map(|h| h.native_names()).unwrap_or_default())
}

fn with_host<R>(f: impl FnOnce(&dyn Host, &str) -> R) -> Option<R> {
    HOST.with(|h| {
        let h = h.borrow();
        let host = h.as_deref()?;
        Some(CURRENT.with(|c| f(host, &c.borrow())))
    })
}

/// The engine asks this whenever an interrupt was requested (by the watchdog, after a garbage
/// collection, or internally): `false` ends the running script with an uncatchable
/// termination. A runtime whose memory is over its cap is stopped here, as one whose time is
/// up: the GC heap cap alone leaves array buffers and string characters uncounted (twelve
/// 256 MiB buffers took a process past 3 GB), and reaching it makes the collector thrash for
/// tens of seconds first.
///
/// # Safety
/// Called by SpiderMonkey with this thread's live context.
pub(super) unsafe extern "C" fn interrupt_callback(cx: *mut RawJSContext) -> bool {
    catch_unwind(|| {
        // SAFETY: the engine passes this thread's live context; the query only reads counters.
        if let Some(raw) = NonNull::new(cx) {
            let cx = unsafe { JSContext::from_ptr(raw) };
            // SAFETY: as above.
            let used = unsafe { mozjs::rust::wrappers2::GetGCHeapUsage(&cx) };
            if used > MEMORY_CAP.with(Cell::get) {
                OOM.with(|o| o.set(true));
                return false;
            }
        }
        !with_host(|h, _| h.should_interrupt()).unwrap_or(false)
    })
    .unwrap_or(true)
}

/// After each collection, asks for the interrupt callback, which compares what the runtime
/// holds with its cap. Collections are what the engine runs as memory grows (the malloc'd kind
/// included), so a runaway allocation is seen within one collection of going over.
///
/// # Safety
/// Called by SpiderMonkey with this thread's live context. It only asks for an interrupt.
pub(super) unsafe extern "C" fn gc_callback(
    cx: *mut RawJSContext,
    status: mozjs::jsapi::JSGCStatus,
    _reason: mozjs::jsapi::GCReason,
    _data: *mut std::ffi::c_void,
) {
    if status == mozjs::jsapi::JSGCStatus::JSGC_END && !cx.is_null() {
        // SAFETY: asking for an interrupt is safe from any point, this thread's context is live.
        unsafe { mozjs::jsapi::JS_RequestInterruptCallback(cx) };
    }
}

/// Records that the runtime ran out of memory (read after the call by `take_oom`).
///
/// # Safety
/// Called by SpiderMonkey with this thread's live context. It only sets a flag.
pub(super) unsafe extern "C" fn oom_callback(_cx: *mut RawJSContext, _data: *mut std::ffi::c_void) {
    OOM.with(|o| o.set(true));
}

/// Runs a native's body with panics caught; `Err(message)` is thrown as a JS `Error`.
///
/// # Safety
/// `raw`, `argc` and `vp` must be the arguments SpiderMonkey passed to a `JSNative`.
unsafe fn guarded(
    raw: *mut RawJSContext,
    argc: u32,
    vp: *mut Value,
    name: &str,
    body: impl FnOnce(&mut JSContext, &CallArgs) -> Result<(), String>,
) -> bool {
    let Some(raw) = NonNull::new(raw) else { return false };
    // SAFETY: SpiderMonkey passes the live context of this thread to the native.
    let mut cx = unsafe { JSContext::from_ptr(raw) };
    // SAFETY: `vp`/`argc` come straight from the engine for this call.
    let args = unsafe { CallArgs::from_vp(vp, argc) };
    let result = catch_unwind(AssertUnwindSafe(|| body(&mut cx, &args)));
    let message = match result {
        Ok(Ok(())) => return true,
        Ok(Err(message)) => message,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            format!("{name}: internal error (panic: {what})")
        }
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: reporting an error on this thread's context, with a "%s" format.
    unsafe { JS_ReportErrorUTF8(cx.raw_cx(), c"%s".as_ptr(), message.as_ptr()) };
    false
}

/// Converts argument `i` to a Rust string (JS `String(arg)` semantics).
///
/// # Safety
/// `cx` must be this thread's live context and `args` the arguments of the native running.
unsafe fn arg_string(cx: &mut JSContext, args: &CallArgs, i: u32) -> Result<String, String> {
    // SAFETY: the handle belongs to this call's arguments, which the engine keeps rooted.
    let v = unsafe { mozjs::rust::Handle::from_raw(args.get(i)) };
    // SAFETY: ToString may GC; its result is rooted at once.
    rooted!(&in(cx) let s = unsafe { mozjs::rust::ToString(cx, v) });
    let s = NonNull::new(s.get()).ok_or_else(|| "cannot convert an argument to a string".to_string())?;
    // SAFETY: `s` is a live, rooted string.
    Ok(unsafe { super::js_string(cx, s) })
}

/// `__rd_host.log(level, text)`: a log line, tagged with the running extension.
///
/// # Safety
/// Called by SpiderMonkey as a `JSNative`: `raw`, `argc` and `vp` are what it passed, on
/// the thread whose runtime is running.
pub(super) unsafe extern "C" fn js_log(raw: *mut RawJSContext, argc: u32, vp: *mut Value) -> bool {
    // SAFETY: called by SpiderMonkey as a JSNative.
    unsafe {
        guarded(raw, argc, vp, "log", |cx, args| {
            let level = arg_string(cx, args, 0)?;
            let text = arg_string(cx, args, 1)?;
            with_host(|h, ext| h.log(ext, &level, &text));
            args.rval().set(UndefinedValue());
            Ok(())
        })
    }
}

/// `__rd_host.begin()`: a handler call starts now (the watchdog's clock).
///
/// # Safety
/// Called by SpiderMonkey as a `JSNative`: `raw`, `argc` and `vp` are what it passed, on
/// the thread whose runtime is running.
pub(super) unsafe extern "C" fn js_begin(raw: *mut RawJSContext, argc: u32, vp: *mut Value) -> bool {
    // SAFETY: called by SpiderMonkey as a JSNative.
    unsafe {
        guarded(raw, argc, vp, "begin", |_cx, args| {
            with_host(|h, _| h.begin_call());
            args.rval().set(UndefinedValue());
            Ok(())
        })
    }
}

/// `__rd_host.drain()`: runs the promise jobs queued so far (see `jobs`). Not `guarded`: a job
/// stopped by the watchdog must end the call the same way, with `false` and nothing pending.
///
/// # Safety
/// Called by SpiderMonkey as a `JSNative`: `raw`, `argc` and `vp` are what it passed, on
/// the thread whose runtime is running.
pub(super) unsafe extern "C" fn js_drain(raw: *mut RawJSContext, argc: u32, vp: *mut Value) -> bool {
    let Some(raw) = NonNull::new(raw) else { return false };
    // SAFETY: SpiderMonkey passes the live context of this thread to the native.
    let mut cx = unsafe { JSContext::from_ptr(raw) };
    // SAFETY: `vp`/`argc` come straight from the engine for this call.
    let args = unsafe { CallArgs::from_vp(vp, argc) };
    args.rval().set(UndefinedValue());
    // SAFETY: this thread's live context, inside a native (no GC in progress).
    match catch_unwind(AssertUnwindSafe(|| unsafe { super::jobs::run_jobs(&mut cx) })) {
        Ok(done) => done,
        Err(_) => {
            // SAFETY: reporting an error on this thread's context.
            unsafe { JS_ReportErrorUTF8(cx.raw_cx(), c"%s".as_ptr(), c"drain: internal error (panic)".as_ptr()) };
            false
        }
    }
}

/// `__rd_host.call(name, json)`: calls host function `name` with a JSON array of arguments.
///
/// `__rd_host.lib(name)`: evaluates `lib/<name>.js` in the calling sandbox's global, under
/// that file name (so its errors name their line), and returns its completion value. Not
/// `guarded`: an exception the library throws stays pending as it is.
///
/// # Safety
/// Called by SpiderMonkey as a `JSNative`: `raw`, `argc` and `vp` are what it passed, on
/// the thread whose runtime is running.
pub(super) unsafe extern "C" fn js_lib(raw: *mut RawJSContext, argc: u32, vp: *mut Value) -> bool {
    let Some(raw) = NonNull::new(raw) else { return false };
    // SAFETY: SpiderMonkey passes the live context of this thread to the native.
    let mut cx = unsafe { JSContext::from_ptr(raw) };
    // SAFETY: `vp`/`argc` come straight from the engine for this call.
    let args = unsafe { CallArgs::from_vp(vp, argc) };
    let report = |cx: &mut JSContext, message: String| {
        let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: reporting an error on this thread's context, with a "%s" format.
        unsafe { JS_ReportErrorUTF8(cx.raw_cx(), c"%s".as_ptr(), message.as_ptr()) };
        false
    };
    let evaluated = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: this call's arguments, on this thread's live context.
        let name = match unsafe { arg_string(&mut cx, &args, 0) } {
            Ok(name) => name,
            Err(e) => return Err(e),
        };
        let Some((file, source)) = with_host(|h, _| h.lib_source(&name)).flatten() else {
            return Err(format!("load_lib: there is no lib/{name}.js in the extensions folder"));
        };
        // SAFETY: the current realm's global is live while its code runs; the completion value
        // goes to the call's return slot, which the engine roots.
        unsafe {
            rooted!(&in(&mut cx) let global = mozjs::rust::wrappers2::CurrentGlobalOrNull(&cx));
            if global.get().is_null() {
                return Err("load_lib: no global to load into".into());
            }
            let file = CString::new(file.replace('\0', " ")).unwrap_or_default();
            let opts = mozjs::rust::CompileOptionsWrapper::new(&cx, file, 1);
            let rval = mozjs::rust::MutableHandle::from_raw(args.rval());
            Ok(mozjs::rust::evaluate_script(&mut cx, global.handle(), &source, rval, opts).is_ok())
        }
    }));
    match evaluated {
        Ok(Ok(done)) => done,
        Ok(Err(message)) => report(&mut cx, message),
        Err(_) => report(&mut cx, "load_lib: internal error (panic)".into()),
    }
}

/// # Safety
/// Called by SpiderMonkey as a `JSNative`: `raw`, `argc` and `vp` are what it passed, on
/// the thread whose runtime is running.
pub(super) unsafe extern "C" fn js_call(raw: *mut RawJSContext, argc: u32, vp: *mut Value) -> bool {
    // SAFETY: called by SpiderMonkey as a JSNative.
    unsafe {
        guarded(raw, argc, vp, "call", |cx, args| {
            let name = arg_string(cx, args, 0)?;
            let json = arg_string(cx, args, 1)?;
            let answer = with_host(|h, ext| h.call_native(ext, &name, &json)).ok_or_else(|| "no host is installed".to_string())?;
            answer.to_jsval(cx, mozjs::rust::MutableHandle::from_raw(args.rval()));
            Ok(())
        })
    }
}
