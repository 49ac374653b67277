//! Reading what the driver returns for a batch: one outcome per document, each read on its own
//! so that one bad emission fails only its own document, and lone UTF-16 surrogates (which no
//! store can hold) looked for in the text.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::pool::{DocOutcome, Emission, EmittedItem, FailureKind, HandlerError};

/// Whether JSON text holds a `\\uHHHH` escape of a surrogate that is not part of a pair.
pub(super) fn has_lone_surrogate(json: &str) -> bool {
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

/// The same failure for each of `n` documents.
pub(super) fn fail_all(n: usize, kind: FailureKind, message: &str) -> Vec<DocOutcome> {
    vec![DocOutcome::Failed(HandlerError::new(kind, message)); n]
}

#[derive(Deserialize)]
pub(super) struct JsError {
    #[serde(default)]
    pub(super) message: String,
    pub(super) file: Option<String>,
    pub(super) line: Option<u32>,
    pub(super) stack: Option<String>,
    /// `"schema"`: an emitted item broke its schema's definition (the driver marks the call
    /// failed even if the handler caught the error).
    #[serde(default)]
    pub(super) kind: Option<String>,
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
                let kind = if e.kind.as_deref() == Some("schema") {
                    FailureKind::SchemaViolation
                } else if out_of_memory && e.message.contains("out of memory") {
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
pub(super) fn parse_outcomes(text: &str, expected: usize, out_of_memory: bool) -> Vec<DocOutcome> {
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
