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
//! A field's rows are also asked as a range — every value that is an array starting with a
//! prefix, in collation order ([`MegaKey::FieldPrefix`]: the latest unread conversations of a
//! group, `[tag, time]` pairs) — and counted ([`crate::store::Store::megaview_count`]: a
//! CouchDB `_count` reduce), so an ordered or counted question reads no document.
//!
//! A row's value is `{_rev, rd_key, rd_schema_id}`, with `rd_ext_id` and `rd_source` on a
//! contributor's rows. CouchDB keeps it as a view of a design document; the embedded store
//! answers from its tables (the documents, the field index, and a table of contributors
//! brought up to date when a query needs it, as a view is).

use serde::Serialize;
use serde_json::Value;

/// One megaview key. A key's variants carry the document ids it stands for (made by the
/// document model, which a store does not know), for a store that answers by id.
#[derive(Debug, Clone, PartialEq)]
pub enum MegaKey {
    /// An rd_key: the ids of its documents all start with `id_prefix`.
    Key {
        key: Value,
        id_prefix: String,
    },
    Schema(String),
    KeySchema {
        key: Value,
        schema: String,
        id: String,
    },
    Ext(String),
    /// A source document's id (`None`: raw data, with no source).
    Source(Option<String>),
    ExtSource(String, Option<String>),
    Dep(Value),
    /// `[schema, field, value]`; `field` ends in `[]` for an element of an array field.
    Field(String, String, Value),
    /// Every `[schema, field, value]` whose value is an array starting with these elements,
    /// ordered by value (CouchDB's collation), then by document id. Each row's key is its own.
    FieldPrefix(String, String, Vec<Value>),
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
            MegaKey::Key { key, .. } => json!(["key", key]),
            MegaKey::Schema(s) => json!(["schema_id", s]),
            MegaKey::KeySchema { key, schema, .. } => json!(["key-schema_id", [key, schema]]),
            MegaKey::Ext(e) => json!(["ext_id", e]),
            MegaKey::Source(s) => json!(["source", source(s)]),
            MegaKey::ExtSource(e, s) => json!(["ext_id-source", [e, source(s)]]),
            MegaKey::Dep(d) => json!(["dep", d]),
            MegaKey::Field(schema, field, value) => json!([schema, field, value]),
            MegaKey::FieldPrefix(schema, field, prefix) => json!([schema, field, prefix]),
        }
    }
}

/// CouchDB's order of JSON values: null, false, true, numbers, strings, arrays (element by
/// element, the shorter first), objects (member by member). Strings are compared by code point
/// here, where CouchDB uses the Unicode collation (`"a" < "B"`): a store ordering strings needs
/// no more than the same order for equal prefixes.
pub fn collate(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(false) => 1,
            Value::Bool(true) => 2,
            Value::Number(_) => 3,
            Value::String(_) => 4,
            Value::Array(_) => 5,
            Value::Object(_) => 6,
        }
    }
    match (a, b) {
        // Integers exactly (past 2^53 a float would call neighbours equal), else as floats.
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(p), Some(q), _, _) => p.cmp(&q),
            (_, _, Some(p), Some(q)) => p.cmp(&q),
            _ => x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            x.iter().zip(y).map(|(p, q)| collate(p, q)).find(|o| o.is_ne()).unwrap_or_else(|| x.len().cmp(&y.len()))
        }
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .zip(y)
            .map(|((k, p), (l, q))| k.cmp(l).then_with(|| collate(p, q)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_in_their_json_form() {
        let k = json!(["email", "a@b"]);
        assert_eq!(MegaKey::Key { key: k.clone(), id_prefix: "rc!".into() }.to_json(), json!(["key", k]));
        assert_eq!(
            MegaKey::KeySchema { key: k.clone(), schema: "rd.msg.body".into(), id: "x".into() }.to_json(),
            json!(["key-schema_id", [k, "rd.msg.body"]])
        );
        assert_eq!(MegaKey::Source(None).to_json(), json!(["source", null]));
        assert_eq!(MegaKey::ExtSource("x".into(), Some("rc!y".into())).to_json(), json!(["ext_id-source", ["x", "rc!y"]]));
        assert_eq!(MegaKey::Field("s".into(), "f[]".into(), json!(1)).to_json(), json!(["s", "f[]", 1]));
    }

    #[test]
    fn values_collate_as_in_couchdb() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1.5),
            json!(1),
            json!(1.25),
            json!(10),
            json!(""),
            json!("a"),
            json!("ab"),
            json!([]),
            json!(["a"]),
            json!(["a", 2]),
            json!(["a", 10]),
            json!(["a", "b"]),
            json!(["b"]),
            json!({}),
            json!({"a": 1}),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(collate(a, b), i.cmp(&j), "{a} against {b}");
            }
        }
        assert!(collate(&json!(1), &json!(1.0)).is_eq());
        assert!(collate(&json!(9007199254740992u64), &json!(9007199254740993u64)).is_lt(), "integers past 2^53");
        assert!(collate(&json!(-1), &json!(u64::MAX)).is_lt());
    }
}
