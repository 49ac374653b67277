//! The megaview, as in the original Raindrop: one index over every schema document, asked by
//! one key at a time. Its keys:
//!
//! - `["key", rd_key]`, `["schema_id", schema]`, `["key-schema_id", [rd_key, schema]]`;
//! - per contributor in `rd_schema_items`: `["ext_id", ext]`, `["source", source id | null]`,
//!   `["ext_id-source", [ext, source id | null]]`, and `["dep", dep]` for each of its
//!   `rd_deps`;
//! - per top-level field: `[schema, field, value]` (values up to 512 bytes of JSON), and
//!   `[schema, "field[]", element]` for each element of an array field.
//!
//! A row's value is `{_rev, rd_key, rd_schema_id}`, with `rd_ext_id` and `rd_source` on a
//! contributor's rows. CouchDB keeps it as a view of a design document; the embedded store
//! answers from its tables (the documents, the field index, and a table of contributors
//! made the first time it is needed and kept by every write after).

use serde::Serialize;
use serde_json::Value;

use super::StoreError;

/// One megaview key, read from its JSON form.
#[derive(Debug, Clone, PartialEq)]
pub enum MegaKey {
    Key(Value),
    Schema(String),
    KeySchema(Value, String),
    Ext(String),
    /// A source document's id (`None`: raw data, with no source).
    Source(Option<String>),
    ExtSource(String, Option<String>),
    Dep(Value),
    /// `[schema, field, value]`; `field` ends in `[]` for an element of an array field.
    Field(String, String, Value),
}

impl MegaKey {
    /// Reads a key in the megaview's JSON form (see the module's note).
    pub fn parse(key: &Value) -> Result<MegaKey, StoreError> {
        let bad = || StoreError::BadRequest(format!("not a megaview key: {key} (see `raindrop db megaview --help`)"));
        let parts = key.as_array().ok_or_else(bad)?;
        let source = |v: &Value| match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(bad()),
        };
        Ok(match parts.as_slice() {
            [Value::String(kind), arg] => match (kind.as_str(), arg) {
                ("key", k) => MegaKey::Key(k.clone()),
                ("schema_id", Value::String(s)) => MegaKey::Schema(s.clone()),
                ("key-schema_id", Value::Array(pair)) if pair.len() == 2 && pair[1].is_string() => {
                    MegaKey::KeySchema(pair[0].clone(), pair[1].as_str().unwrap_or_default().to_string())
                }
                ("ext_id", Value::String(e)) => MegaKey::Ext(e.clone()),
                ("source", s) => MegaKey::Source(source(s)?),
                ("ext_id-source", Value::Array(pair)) if pair.len() == 2 && pair[0].is_string() => {
                    MegaKey::ExtSource(pair[0].as_str().unwrap_or_default().to_string(), source(&pair[1])?)
                }
                ("dep", d) => MegaKey::Dep(d.clone()),
                _ => return Err(bad()),
            },
            [Value::String(schema), Value::String(field), value] => MegaKey::Field(schema.clone(), field.clone(), value.clone()),
            _ => return Err(bad()),
        })
    }
}

/// A query of the megaview: the rows of one key, in document id order (reversed when
/// `descending`), `skip` rows left out, at most `limit`.
#[derive(Debug, Clone)]
pub struct ViewQuery {
    pub key: MegaKey,
    pub limit: usize,
    pub skip: usize,
    pub descending: bool,
}

/// One row of the megaview.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewRow {
    pub id: String,
    pub key: Value,
    pub value: Value,
}

impl MegaKey {
    /// The key in its JSON form.
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        let source = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        match self {
            MegaKey::Key(k) => json!(["key", k]),
            MegaKey::Schema(s) => json!(["schema_id", s]),
            MegaKey::KeySchema(k, s) => json!(["key-schema_id", [k, s]]),
            MegaKey::Ext(e) => json!(["ext_id", e]),
            MegaKey::Source(s) => json!(["source", source(s)]),
            MegaKey::ExtSource(e, s) => json!(["ext_id-source", [e, source(s)]]),
            MegaKey::Dep(d) => json!(["dep", d]),
            MegaKey::Field(schema, field, value) => json!([schema, field, value]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_read_back_as_written() {
        for key in [
            json!(["key", ["email", "a@b"]]),
            json!(["schema_id", "rd.msg.body"]),
            json!(["key-schema_id", [["email", "a@b"], "rd.msg.body"]]),
            json!(["ext_id", "x"]),
            json!(["source", null]),
            json!(["source", "rc!x"]),
            json!(["ext_id-source", ["x", "rc!y"]]),
            json!(["dep", [["email", "a"], "rd.msg.conversation"]]),
            json!(["rd.msg.body", "subject", "hi"]),
        ] {
            assert_eq!(MegaKey::parse(&key).unwrap().to_json(), key);
        }
        for bad in [json!("key"), json!(["schema_id", 1]), json!(["nope", "x"]), json!(["source", 3]), json!([1, 2, 3])] {
            assert!(MegaKey::parse(&bad).is_err(), "{bad}");
        }
    }
}
