//! JSON-lines input (`add-schemas`, `db load`): one JSON object per line, blank lines skipped.

use std::io::BufRead;

use serde_json::{Map, Value};

/// Why a JSON-lines input could not be read: the line, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum LinesError {
    #[error("{label}:{line}: not a JSON object: {reason}")]
    NotAnObject { label: String, line: usize, reason: String },
    #[error("cannot read {label}: {source}")]
    Read { label: String, source: std::io::Error },
}

/// The objects of a JSON-lines input, in order; `label` names it in errors (a file name).
pub fn read_objects(reader: impl BufRead, label: &str) -> Result<Vec<Map<String, Value>>, LinesError> {
    let mut out = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|source| LinesError::Read { label: label.to_string(), source })?;
        // A byte-order mark some editors write at the start.
        let line = if n == 0 { line.strip_prefix(b"\xef\xbb\xbf").map(<[u8]>::to_vec).unwrap_or(line) } else { line };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let object = serde_json::from_slice(&line).map_err(|e| LinesError::NotAnObject {
            label: label.to_string(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        out.push(object);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_read_by_line_and_a_bad_line_is_named() {
        let text = "{\"a\":1}\r\n\n  \n{\"b\":[2]}\n";
        let objects = read_objects(text.as_bytes(), "f.jsonl").unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1]["b"], serde_json::json!([2]));
        for (bad, line) in [("{\"a\":1}\n[1]\n", 2), ("\n\n{\"a\":", 3), ("{\"a\":\"\\ud800\"}", 1)] {
            let e = read_objects(bad.as_bytes(), "f.jsonl").unwrap_err().to_string();
            assert!(e.starts_with(&format!("f.jsonl:{line}: not a JSON object")), "{bad:?}: {e}");
        }
        assert_eq!(read_objects("\u{feff}{\"a\":1}".as_bytes(), "x").unwrap().len(), 1, "a leading byte-order mark");
        let invalid_utf8: &[u8] = b"{\"a\":\"\xff\"}\n";
        assert!(read_objects(invalid_utf8, "x").is_err());
    }
}
