//! The only module that touches SpiderMonkey (`mozjs`).
//!
//! A [`JsRuntime`] is one SpiderMonkey runtime, created and used on one thread. It holds one
//! sandbox global per loaded extension, each in its own compartment, so extensions cannot see or
//! patch one another. Every sandbox starts by evaluating `driver/main.js`, which defines the
//! extension API and returns a *control* object; the host drives the sandbox only through that
//! object's methods, with JSON text going in and JSON text coming out. Everything above this
//! module sees strings and plain Rust types, never a `JSValue`.
//!
//! Callbacks into Rust (log, the watchdog clock, registered host functions) go through the
//! [`Host`] trait object installed for the runtime's thread. Every native catches panics, so none
//! unwinds into the engine.

#![allow(unsafe_code)]

mod jobs;
mod memory;
mod natives;
mod process;

pub use process::{exit_after_runtimes, shutdown};

use std::ffi::CStr;
use std::ptr::{self, NonNull};

use mozjs::context::JSContext;
use mozjs::gc::RootedTraceableBox;
use mozjs::jsapi::{GCReason, HandleValueArray, Heap, JSGCParamKey, JSObject, OnNewGlobalHookOption};
use mozjs::jsval::{ObjectValue, UndefinedValue};
use mozjs::realm::AutoRealm;
use mozjs::rooted;
use mozjs::rust::wrappers2::{
    JS_AddInterruptCallback, JS_CallFunctionName, JS_ClearPendingException, JS_DefineFunction, JS_DefineProperty, JS_GetGCParameter,
    JS_GetProperty, JS_IsExceptionPending, JS_NewGlobalObject, JS_NewPlainObject, JS_ParseJSON, JS_ParseJSON2, JS_SetGCCallback,
    JS_SetGCParameter, SetOutOfMemoryCallback, JS_GC,
};
use mozjs::rust::{evaluate_script, CompileOptionsWrapper, IntoHandle, RealmOptions, Runtime, SIMPLE_GLOBAL_CLASS};

/// The driver script, evaluated first in every sandbox.
pub const DRIVER_SOURCE: &str = include_str!("../../../driver/main.js");
const DRIVER_FILE: &str = "driver/main.js";

/// What the engine calls back into while JS runs on this thread.
pub trait Host {
    /// `log(...)` from the extension currently running (`ext` is its id, or its file while it
    /// loads).
    fn log(&self, ext: &str, level: &str, text: &str);
    /// A handler call starts now: the watchdog measures the time limit from here.
    fn begin_call(&self);
    /// Whether the running call must stop (asked from the engine's interrupt callback).
    fn should_interrupt(&self) -> bool;
    /// Names of the host functions defined as globals in every sandbox.
    fn native_names(&self) -> Vec<String>;
    /// Calls host function `name` with a JSON array of arguments; returns JSON text
    /// `{"ok": value}` or `{"error": "message"}`.
    fn call_native(&self, ext: &str, name: &str, args_json: &str) -> String;
    /// What `__rd_host.lib(name)` evaluates, if there is such a file: the file name its errors
    /// and stacks report, and its source. `name` is a library's (`lib/<name>.js` in the
    /// extensions folder), or one the driver asks for itself (`schema:<id>`, a definition).
    fn lib_source(&self, name: &str) -> Option<(String, String)>;
}

/// Why the engine could not start a runtime.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Start(String),
}

/// An exception raised by JS, with where it was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: {}", self.message),
            (Some(file), None) => write!(f, "{file}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// How a call into a sandbox's control object ended.
#[derive(Debug)]
pub struct CallResult {
    /// The JSON text the method returned, or why it returned none.
    pub result: Result<String, CallFailure>,
    /// The runtime hit its heap cap during the call (even if JS caught the error).
    pub out_of_memory: bool,
}

/// Why a call returned no value.
#[derive(Debug)]
pub enum CallFailure {
    /// The method threw.
    Threw(ScriptError),
    /// The argument was not JSON the engine could read (a lone surrogate, say).
    BadInput(ScriptError),
    /// The call was stopped from outside: the interrupt callback said stop.
    Interrupted,
}

/// Why an extension did not load.
#[derive(Debug)]
pub enum LoadFailure {
    /// Its code (or its declaration) threw; the error names file and line.
    Threw(ScriptError),
    /// Its top-level code was stopped by the time limit.
    Interrupted,
    /// Its top-level code went over the runtime's memory cap.
    OutOfMemory,
}

/// Interrupts a runtime from any thread (the watchdog's handle on it).
#[derive(Clone)]
pub struct Interrupter(mozjs::rust::ThreadSafeJSContext);

impl Interrupter {
    /// Asks the runtime to run its interrupt callback soon; a no-op once the runtime is gone.
    pub fn interrupt(&self) {
        self.0.request_interrupt_callback();
    }
}

/// Identifies a sandbox within its runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SandboxId(usize);

struct Sandbox {
    name: String,
    global: RootedTraceableBox<Heap<*mut JSObject>>,
    control: RootedTraceableBox<Heap<*mut JSObject>>,
}

/// Limits applied to each runtime.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeLimits {
    /// The cap on the runtime's memory, in bytes: its GC heap, and with it the memory its
    /// objects own outside that heap (array buffers, strings' characters).
    pub heap_bytes: u32,
}

/// One SpiderMonkey runtime with its sandboxes. `!Send`: it lives and dies on one thread, and
/// only one may exist per thread at a time.
pub struct JsRuntime {
    // Field order is drop order: the rooted sandboxes must go before the runtime, and the job
    // queue after it.
    sandboxes: Vec<Sandbox>,
    rt: Runtime,
    _jobs: jobs::JobQueue,
    utf16: Vec<u16>,
    _child: process::ChildGuard,
}

impl JsRuntime {
    /// Creates a runtime on the calling thread, as a child of the process's parent runtime.
    pub fn new(host: Box<dyn Host>, limits: RuntimeLimits) -> Result<JsRuntime, EngineError> {
        if natives::host_installed() {
            return Err(EngineError::Start("a JsRuntime already exists on this thread".into()));
        }
        let token = process::parent_token()?;
        // SAFETY: the parent runtime lives on the js-engine thread for the rest of the process,
        // so it outlives this child. The crate panics when the engine cannot make a context
        // (out of memory: a thousand threads asked for at once); that is an error here.
        let made = std::panic::catch_unwind(|| unsafe { Runtime::create_with_parent(token) });
        let mut rt = made.map_err(|_| EngineError::Start("SpiderMonkey could not create a runtime (out of memory?)".into()))?;
        let child = process::ChildGuard::new();
        natives::install_host(host);
        natives::set_memory_cap(u64::from(limits.heap_bytes));
        let cx = rt.cx();
        let jobs = jobs::JobQueue::install(cx);
        // SAFETY: plain JSAPI calls on this thread's live context; the callbacks are
        // `extern "C"` functions that catch panics.
        unsafe {
            JS_SetGCParameter(cx, JSGCParamKey::JSGC_MAX_BYTES, limits.heap_bytes);
            JS_AddInterruptCallback(cx, Some(natives::interrupt_callback));
            JS_SetGCCallback(cx, Some(natives::gc_callback), ptr::null_mut());
            SetOutOfMemoryCallback(cx, Some(natives::oom_callback), ptr::null_mut());
        }
        Ok(JsRuntime { sandboxes: Vec::new(), rt, _jobs: jobs, utf16: Vec::new(), _child: child })
    }

    /// Creates a sandbox, evaluates the driver and then `source` (reported as `file_name`) in
    /// it, runs the promise jobs its top-level code queued, and returns the sandbox with its
    /// `describe()` JSON.
    pub fn load(&mut self, file_name: &str, source: &str) -> Result<(SandboxId, String), LoadFailure> {
        natives::take_oom();
        let loaded = self.load_sandbox(file_name, source);
        let cx = self.rt.cx();
        // SAFETY: this thread's live context, between calls.
        unsafe { jobs::discard_jobs(cx) };
        let out_of_memory = natives::take_oom();
        match loaded {
            Err(LoadFailure::Threw(_) | LoadFailure::Interrupted) if out_of_memory => Err(LoadFailure::OutOfMemory),
            other => other,
        }
    }

    fn load_sandbox(&mut self, file_name: &str, source: &str) -> Result<(SandboxId, String), LoadFailure> {
        natives::set_current(file_name);
        let names = natives::native_names();
        let names_json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
        let cx = self.rt.cx();
        let mut options = RealmOptions::default();
        options.creationOptions_.toSource_ = true;
        // SAFETY: a fresh global in its own compartment (the RealmOptions default); every value
        // is rooted before the next call that may GC.
        unsafe {
            rooted!(&in(cx) let global = JS_NewGlobalObject(
                cx, &SIMPLE_GLOBAL_CLASS, ptr::null_mut(),
                OnNewGlobalHookOption::FireOnNewGlobalHook, &*options));
            if global.get().is_null() {
                return Err(LoadFailure::Threw(take_error(cx, "cannot create a sandbox global")));
            }
            let mut realm = AutoRealm::new_from_handle(cx, global.handle());
            let cx: &mut JSContext = &mut realm;

            if !define_host(cx, global.handle(), &mut self.utf16, &names_json) {
                return Err(LoadFailure::Threw(take_error(cx, "cannot define the host natives")));
            }

            rooted!(&in(cx) let mut control = UndefinedValue());
            let opts = CompileOptionsWrapper::new(cx, c"driver/main.js".to_owned(), 1);
            if evaluate_script(cx, global.handle(), DRIVER_SOURCE, control.handle_mut(), opts).is_err() {
                if !JS_IsExceptionPending(cx) {
                    return Err(LoadFailure::Interrupted);
                }
                let mut e = take_error(cx, "the driver script failed");
                e.file.get_or_insert_with(|| DRIVER_FILE.to_string());
                return Err(LoadFailure::Threw(e));
            }
            if !control.get().is_object() {
                return Err(LoadFailure::Threw(ScriptError {
                    message: "the driver script did not return its control object".into(),
                    file: Some(DRIVER_FILE.into()),
                    line: None,
                    column: None,
                }));
            }

            let file_c = std::ffi::CString::new(file_name.replace('\0', "")).unwrap_or_default();
            let mut opts = CompileOptionsWrapper::new(cx, file_c, 1);
            opts.set_no_script_rval(true);
            rooted!(&in(cx) let mut ignored = UndefinedValue());
            // The top-level code, then the promise jobs it queued (an extension may declare
            // itself from a `.then`).
            if evaluate_script(cx, global.handle(), source, ignored.handle_mut(), opts).is_err() || !jobs::run_jobs(cx) {
                if !JS_IsExceptionPending(cx) {
                    return Err(LoadFailure::Interrupted);
                }
                let mut e = take_error(cx, "the extension failed to load");
                e.file.get_or_insert_with(|| file_name.to_string());
                return Err(LoadFailure::Threw(e));
            }

            let sandbox = Sandbox {
                name: file_name.to_string(),
                global: RootedTraceableBox::new(Heap::default()),
                control: RootedTraceableBox::new(Heap::default()),
            };
            sandbox.global.set(global.get());
            sandbox.control.set(control.get().to_object());
            drop(realm);
            self.sandboxes.push(sandbox);
        }
        self.describe(SandboxId(self.sandboxes.len() - 1), file_name)
    }

    /// The declaration of a sandbox just loaded, as its `describe()` JSON; a sandbox that
    /// cannot describe itself is dropped.
    fn describe(&mut self, id: SandboxId, file_name: &str) -> Result<(SandboxId, String), LoadFailure> {
        let described = self.call(id, file_name, c"describe", None);
        match described.result {
            _ if described.out_of_memory => {
                self.sandboxes.pop();
                Err(LoadFailure::OutOfMemory)
            }
            Ok(json) => Ok((id, json)),
            Err(CallFailure::Threw(e) | CallFailure::BadInput(e)) => {
                // describe() reports "file:line: problem" in its message; keep it whole.
                self.sandboxes.pop();
                Err(LoadFailure::Threw(ScriptError { message: e.message, file: None, line: None, column: None }))
            }
            Err(CallFailure::Interrupted) => {
                self.sandboxes.pop();
                Err(LoadFailure::Interrupted)
            }
        }
    }

    /// Calls `method` on a sandbox's control object, with `arg_json` parsed into a JS value in
    /// the sandbox's own realm (so the extension sees objects made with its own prototypes).
    /// `ext` tags the logs made during the call.
    pub fn call(&mut self, id: SandboxId, ext: &str, method: &CStr, arg_json: Option<&str>) -> CallResult {
        natives::set_current(ext);
        natives::take_oom();
        let JsRuntime { sandboxes, rt, utf16, .. } = self;
        let sandbox = &sandboxes[id.0];
        let cx = rt.cx();
        // SAFETY: the sandbox's global and control object are rooted by their
        // RootedTraceableBoxes for as long as `self` lives; values made here are rooted
        // before the next call that may GC.
        let result = unsafe {
            let mut realm = AutoRealm::new_from_handle(cx, sandbox.global.handle());
            let cx: &mut JSContext = &mut realm;
            rooted!(&in(cx) let mut arg = UndefinedValue());
            if let Some(json) = arg_json {
                if !parse_json(cx, utf16, json, arg.handle_mut()) {
                    let e = take_error(cx, "the input is not valid JSON");
                    let e = ScriptError { message: format!("invalid input: {}", e.message), file: None, line: None, column: None };
                    return CallResult { result: Err(CallFailure::BadInput(e)), out_of_memory: natives::take_oom() };
                }
            }
            rooted!(&in(cx) let mut rval = UndefinedValue());
            let args = if arg_json.is_some() { HandleValueArray::from(arg.handle().into_handle()) } else { HandleValueArray::empty() };
            let ok = JS_CallFunctionName(cx, sandbox.control.handle(), method.as_ptr(), &args, rval.handle_mut());
            if !ok {
                if JS_IsExceptionPending(cx) {
                    Err(CallFailure::Threw(take_error(cx, "the call failed")))
                } else {
                    Err(CallFailure::Interrupted)
                }
            } else if let Some(s) = rval.get().is_string().then(|| NonNull::new(rval.get().to_string())).flatten() {
                Ok(js_string(cx, s))
            } else {
                Err(CallFailure::Threw(ScriptError {
                    message: format!("the driver's {} did not return a string", method.to_string_lossy()),
                    file: Some(DRIVER_FILE.into()),
                    line: None,
                    column: None,
                }))
            }
        };
        // Jobs a stopped drain left behind must not run in the next call.
        // SAFETY: this thread's live context, between calls.
        unsafe { jobs::discard_jobs(rt.cx()) };
        // A handler may catch the out-of-memory exception and return normally: report it all
        // the same, so the caller can recycle a runtime whose heap is full.
        CallResult { result, out_of_memory: natives::take_oom() }
    }

    /// A handle through which another thread can interrupt this runtime.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.rt.thread_safe_js_context())
    }

    /// The file name a sandbox was loaded from.
    pub fn sandbox_name(&self, id: SandboxId) -> &str {
        &self.sandboxes[id.0].name
    }

    /// Bytes currently allocated in this runtime's GC heap.
    pub fn heap_bytes(&self) -> u32 {
        // SAFETY: a read-only parameter query on this thread's context.
        unsafe { JS_GetGCParameter(self.rt.cx_no_gc(), JSGCParamKey::JSGC_BYTES) }
    }

    /// Runs a full garbage collection.
    pub fn collect_garbage(&mut self) {
        // SAFETY: a GC on this thread's context, outside any JS call.
        unsafe { JS_GC(self.rt.cx(), GCReason::API) }
    }
}

impl Drop for JsRuntime {
    fn drop(&mut self) {
        // The sandboxes and then the runtime drop after this body (field order). Callbacks that
        // might still fire while the context is destroyed find no host and do nothing.
        self.sandboxes.clear();
        natives::uninstall_host();
    }
}

/// Defines `__rd_host` on `global` (the current realm's): the natives the driver takes and
/// hides (`log`, `begin`, `call`, `drain`, `lib`) and the names of the host functions. False with an
/// exception pending when the engine refused.
///
/// # Safety
/// `cx` must be this thread's live context, in `global`'s realm, with `global` rooted.
unsafe fn define_host(cx: &mut JSContext, global: mozjs::rust::HandleObject, utf16: &mut Vec<u16>, names_json: &str) -> bool {
    // SAFETY: the caller's contract; every value is rooted before the next call that may GC.
    unsafe {
        rooted!(&in(cx) let host_obj = JS_NewPlainObject(cx));
        if host_obj.get().is_null()
            || JS_DefineFunction(cx, host_obj.handle(), c"log".as_ptr(), Some(natives::js_log), 2, 0).is_null()
            || JS_DefineFunction(cx, host_obj.handle(), c"begin".as_ptr(), Some(natives::js_begin), 0, 0).is_null()
            || JS_DefineFunction(cx, host_obj.handle(), c"call".as_ptr(), Some(natives::js_call), 2, 0).is_null()
            || JS_DefineFunction(cx, host_obj.handle(), c"drain".as_ptr(), Some(natives::js_drain), 0, 0).is_null()
            || JS_DefineFunction(cx, host_obj.handle(), c"lib".as_ptr(), Some(natives::js_lib), 1, 0).is_null()
        {
            return false;
        }
        rooted!(&in(cx) let mut names_val = UndefinedValue());
        if !parse_json(cx, utf16, names_json, names_val.handle_mut())
            || !JS_DefineProperty(cx, host_obj.handle(), c"natives".as_ptr(), names_val.handle(), 0)
        {
            return false;
        }
        rooted!(&in(cx) let host_val = ObjectValue(host_obj.get()));
        JS_DefineProperty(cx, global, c"__rd_host".as_ptr(), host_val.handle(), 0)
    }
}

/// Parses JSON text into `out`, in the current realm. False with an exception pending on error.
///
/// # Safety
/// `cx` must be this thread's live context, in the realm `out` is for, with `out` rooted.
unsafe fn parse_json(cx: &mut JSContext, utf16: &mut Vec<u16>, json: &str, out: mozjs::rust::MutableHandleValue) -> bool {
    if json.len() >= u32::MAX as usize {
        // SAFETY: reporting an error on the current context.
        unsafe { mozjs::jsapi::JS_ReportErrorASCII(cx.raw_cx(), c"document too large".as_ptr()) };
        return false;
    }
    if json.is_ascii() {
        // SAFETY: ASCII is valid Latin-1; the pointer and length describe `json`.
        unsafe { JS_ParseJSON2(cx, json.as_ptr(), json.len() as u32, out) }
    } else {
        if utf16.len() < json.len() + 1 {
            utf16.resize(json.len() + 1, 0);
        }
        let n = encoding_rs::mem::convert_utf8_to_utf16(json.as_bytes(), utf16);
        // SAFETY: the first `n` units of `utf16` hold the converted text.
        unsafe { JS_ParseJSON(cx, utf16.as_ptr(), n as u32, out) }
    }
}

/// A JS string as UTF-8. mozjs's `jsstr_to_string` decodes a two-byte string one character at
/// a time (`String::from_utf16_lossy`); encoding_rs converts it in bulk — it was a tenth of a
/// handler thread's time on mail, whose outputs are mostly two-byte strings. Unpaired
/// surrogates become U+FFFD, as before.
///
/// # Safety
/// `cx` must be this thread's live context and `s` a live, rooted string.
pub(super) unsafe fn js_string(cx: &mut JSContext, s: std::ptr::NonNull<mozjs::jsapi::JSString>) -> String {
    // SAFETY: `s` is a live string rooted by the caller; nothing here can GC, so the
    // characters stay where they are while they are read.
    unsafe {
        if mozjs::jsapi::JS_DeprecatedStringHasLatin1Chars(s.as_ptr()) {
            return mozjs::conversions::latin1_to_string(cx, s);
        }
        let mut length = 0;
        let chars = mozjs::rust::wrappers2::JS_GetTwoByteStringCharsAndLength(cx, s.as_ptr(), &mut length);
        if chars.is_null() {
            return String::new();
        }
        let units = std::slice::from_raw_parts(chars, length);
        // At most three UTF-8 bytes per UTF-16 unit.
        let mut out = vec![0u8; units.len() * 3];
        let n = encoding_rs::mem::convert_utf16_to_utf8(units, &mut out);
        out.truncate(n);
        String::from_utf8_unchecked(out)
    }
}

/// Takes the pending exception (if any) as a [`ScriptError`].
///
/// # Safety
/// `cx` must be this thread's live context, in the realm where the exception is pending.
unsafe fn take_error(cx: &mut JSContext, fallback: &str) -> ScriptError {
    rooted!(&in(cx) let mut exc = UndefinedValue());
    let Some(info) = mozjs::rust::error_info_from_exception_stack(cx, exc.handle_mut()) else {
        return ScriptError { message: fallback.to_string(), file: None, line: None, column: None };
    };
    let mut error = ScriptError {
        message: info.message,
        file: (!info.filename.is_empty()).then_some(info.filename),
        line: (info.line > 0).then_some(info.line),
        column: (info.col > 0).then_some(info.col),
    };
    // The driver moves an error it raises for an extension (a bad call, a missing library) to
    // the extension's line by setting `fileName`/`lineNumber`; the engine's report keeps the
    // place the error was made, so the properties win when they are there.
    if exc.get().is_object() {
        rooted!(&in(cx) let obj = exc.get().to_object());
        // SAFETY: `obj` is rooted; reading its properties may run getters, whose exception is
        // cleared — the error being described stays the one reported.
        let (file, line) = unsafe { (property(cx, obj.handle(), c"fileName"), property(cx, obj.handle(), c"lineNumber")) };
        if let (Some(file), Some(line)) = (file.as_ref().and_then(|v| v.as_str()), line.as_ref().and_then(|v| v.as_u64())) {
            if error.file.as_deref() != Some(file) || error.line != Some(line as u32) {
                error.file = Some(file.to_string());
                error.line = Some(line as u32);
                error.column = None;
            }
        }
    }
    error
}

/// `obj[name]` when it is a string or a number, as JSON; `None` otherwise or when reading throws.
///
/// # Safety
/// `cx` must be this thread's live context and `obj` a rooted object of its current realm.
unsafe fn property(cx: &mut JSContext, obj: mozjs::rust::HandleObject, name: &CStr) -> Option<serde_json::Value> {
    rooted!(&in(cx) let mut v = UndefinedValue());
    // SAFETY: per this function's contract; the value read is rooted.
    if !unsafe { JS_GetProperty(cx, obj, name.as_ptr(), v.handle_mut()) } {
        // SAFETY: the same live context.
        unsafe { JS_ClearPendingException(cx) };
        return None;
    }
    let value = v.get();
    if value.is_string() {
        let s = NonNull::new(value.to_string())?;
        // SAFETY: `s` is held by the rooted `v` above for as long as it is read.
        Some(serde_json::Value::from(unsafe { js_string(cx, s) }))
    } else if value.is_int32() {
        Some(serde_json::Value::from(value.to_int32()))
    } else if value.is_double() && value.to_double().fract() == 0.0 && value.to_double() >= 0.0 {
        Some(serde_json::Value::from(value.to_double() as u64))
    } else {
        None
    }
}
