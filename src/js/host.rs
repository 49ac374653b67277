//! Host functions: Rust functions that extensions call as plain synchronous JS globals.
//!
//! A host function takes its arguments as JSON values and returns a JSON value or an error
//! message, which the driver throws as a JS `Error`. The engine crosses into Rust once per call
//! with JSON text, so a host function never sees engine types. A call that blocks (on the store,
//! say) blocks only the runtime that made it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Why a host function refused a call: a message the driver throws as a JS `Error`, prefixed
/// with the function's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for HostError {
    fn from(message: String) -> HostError {
        HostError(message)
    }
}

impl From<&str> for HostError {
    fn from(message: &str) -> HostError {
        HostError(message.to_string())
    }
}

/// What a host function knows about its caller.
pub struct HostCall<'a> {
    /// The id of the extension whose code made the call.
    pub extension_id: &'a str,
}

type ValueFn = dyn Fn(&HostCall<'_>, Vec<Value>) -> Result<Value, HostError> + Send + Sync;
type TextFn = dyn Fn(&HostCall<'_>, Vec<Value>) -> Result<String, HostError> + Send + Sync;

/// A host function answers a JSON value, or JSON text it already has (documents read from a
/// store as text go to JS without being parsed and printed on the way).
#[derive(Clone)]
enum HostFn {
    Value(Arc<ValueFn>),
    Text(Arc<TextFn>),
}

/// The host functions every sandbox gets, by global name.
#[derive(Clone, Default)]
pub struct HostFunctions {
    functions: BTreeMap<String, HostFn>,
}

impl HostFunctions {
    pub fn new() -> HostFunctions {
        HostFunctions::default()
    }

    /// Registers `f` as the global function `name` in every sandbox.
    pub fn register(
        &mut self,
        name: &str,
        f: impl Fn(&HostCall<'_>, Vec<Value>) -> Result<Value, HostError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.functions.insert(name.to_string(), HostFn::Value(Arc::new(f)));
        self
    }

    /// [`HostFunctions::register`] for a function that answers JSON text. The text must be
    /// valid JSON: it goes to JS as it is.
    pub fn register_text(
        &mut self,
        name: &str,
        f: impl Fn(&HostCall<'_>, Vec<Value>) -> Result<String, HostError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.functions.insert(name.to_string(), HostFn::Text(Arc::new(f)));
        self
    }

    pub fn names(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }

    /// Calls `name` with a JSON array of arguments; answers `{"ok":…}` or `{"error":"…"}`.
    pub(crate) fn call_json(&self, extension_id: &str, name: &str, args_json: &str) -> String {
        let started = std::time::Instant::now();
        let answer = self.answer(extension_id, name, args_json);
        crate::timing::record_as(|| format!("native:{name}:{extension_id}"), started, answer.len());
        answer
    }

    /// [`HostFunctions::call_json`] without the timing.
    fn answer(&self, extension_id: &str, name: &str, args_json: &str) -> String {
        let call = HostCall { extension_id };
        let answer = match self.functions.get(name) {
            None => Err(HostError(format!("no host function named {name}"))),
            Some(f) => match (serde_json::from_str::<Vec<Value>>(args_json), f) {
                (Err(e), _) => Err(HostError(format!("arguments are not JSON: {e}"))),
                (Ok(args), HostFn::Value(f)) => f(&call, args).map(|v| v.to_string()),
                (Ok(args), HostFn::Text(f)) => f(&call, args),
            },
        };
        match answer {
            Ok(text) => format!("{{\"ok\":{text}}}"),
            Err(e) => serde_json::json!({ "error": e.0 }).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_json_wraps_results_and_errors() {
        let mut h = HostFunctions::new();
        h.register("add", |_, args| {
            let a = args.first().and_then(Value::as_f64).ok_or("need numbers")?;
            let b = args.get(1).and_then(Value::as_f64).ok_or("need numbers")?;
            Ok(serde_json::json!(a + b))
        });
        assert_eq!(h.call_json("x", "add", "[1,2]"), r#"{"ok":3.0}"#);
        assert_eq!(h.call_json("x", "add", "[1]"), r#"{"error":"need numbers"}"#);
        assert_eq!(h.call_json("x", "nope", "[]"), r#"{"error":"no host function named nope"}"#);
        h.register_text("raw", |_, args| if args.is_empty() { Ok(r#"[{"a": 1}]"#.into()) } else { Err("no".into()) });
        assert_eq!(h.call_json("x", "raw", "[]"), r#"{"ok":[{"a": 1}]}"#);
        assert_eq!(h.call_json("x", "raw", "[0]"), r#"{"error":"no"}"#);
    }
}
