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
        }
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
}
