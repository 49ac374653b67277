//! A source document as the pipeline sees it: the few members it reads, where every member
//! is in its JSON text, and that text, which goes to the extensions as the store gave it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::json_text::{self, Members};
use crate::store::Doc;

/// A source document as the pipeline sees it: the few members it reads, and the JSON text that
/// goes to the extensions as the store gave it (parsing whole documents only to print them
/// again for JS was most of the reader's time on mail).
pub(super) struct Source {
    pub(super) id: String,
    pub(super) rev: String,
    pub(super) schema: String,
    pub(super) rd_key: Value,
    /// A provider completed it (`rd_schema_provider`): only then is it a source.
    pub(super) provider: bool,
    /// The extensions contributing to it (the keys of `rd_schema_items`).
    pub(super) contributors: Vec<String>,
    pub(super) text: Arc<str>,
    /// Its members in `text`, for cutting it down to `source_fields`; `None` when they could
    /// not be read so (the whole text is handed over).
    pub(super) members: Option<Members>,
}

/// A document's JSON `text` with only the top-level `fields` (and its `_id`, `_rev`, `rd_key`
/// and `rd_schema_id`), for a handler that declared `source_fields`: the parts it never reads
/// (a message's body, say) are not parsed again in JS for it. The members keep their text as
/// it was. `None` when `text` is not an object with plain (unescaped) member names; the caller
/// then hands over the whole text.
pub fn project(text: &str, fields: &[String]) -> Option<String> {
    Some(project_members(text, &json_text::members(text)?, fields))
}

/// [`project`] from members already read.
pub(super) fn project_members(text: &str, members: &Members, fields: &[String]) -> String {
    json_text::pick(text, members, ["_id", "_rev", "rd_key", "rd_schema_id"].into_iter().chain(fields.iter().map(String::as_str)))
}

impl Source {
    /// Reads where each member is and the few the pipeline needs, in one pass over the text
    /// (the rest is not parsed into values); `None` when the text is not a JSON object.
    pub(super) fn from_text(text: Arc<str>) -> Option<Source> {
        if let Some(members) = json_text::members(&text) {
            let mut source = Source {
                id: String::new(),
                rev: String::new(),
                schema: String::new(),
                rd_key: Value::Null,
                provider: false,
                contributors: Vec::new(),
                text: text.clone(),
                members: None,
            };
            let mut plain = true;
            for (name, value) in &members {
                let value = &text[value.clone()];
                match &text[name.clone()] {
                    "_id" => plain &= serde_json::from_str(value).map(|v| source.id = v).is_ok(),
                    "_rev" => plain &= serde_json::from_str(value).map(|v| source.rev = v).is_ok(),
                    "rd_schema_id" => source.schema = serde_json::from_str::<String>(value).unwrap_or_default(),
                    "rd_key" => plain &= serde_json::from_str(value).map(|v| source.rd_key = v).is_ok(),
                    "rd_schema_provider" => source.provider = true,
                    "rd_schema_items" => {
                        plain &= serde_json::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(value)
                            .map(|m| source.contributors = m.into_keys().collect())
                            .is_ok()
                    }
                    _ => {}
                }
            }
            if plain {
                source.members = Some(members);
                return Some(source);
            }
        }
        // Not read so (escaped member names, or an `_id`, `_rev` or `rd_schema_items` of an
        // unexpected type): the slow way, as a whole document.
        let doc: Doc = serde_json::from_str(&text).ok()?;
        Some(Source::from_map(&doc, text))
    }

    fn from_map(doc: &Doc, text: Arc<str>) -> Source {
        Source {
            id: doc_str(doc, "_id").to_string(),
            rev: doc_str(doc, "_rev").to_string(),
            schema: doc_str(doc, "rd_schema_id").to_string(),
            rd_key: doc.get("rd_key").cloned().unwrap_or(Value::Null),
            provider: doc.contains_key("rd_schema_provider"),
            contributors: doc.get("rd_schema_items").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default(),
            text,
            members: None,
        }
    }
}

/// Whether document `id` is this run's to take: in its worker slice `k` of `n` (a stable hash
/// of the id), and in the slices its shared worker holds.
pub(super) fn in_slice(id: &str, options: &super::RunOptions) -> bool {
    let static_slice = match options.worker {
        None => true,
        Some((k, n)) => id_hash(id) % n == k,
    };
    static_slice && options.share.as_ref().is_none_or(|held| held.takes(id))
}

/// The stable hash sources are sliced by (`--worker K/N` and `--share`'s slices): the first 64
/// bits of the id's digest.
pub(super) fn id_hash(id: &str) -> u64 {
    let h = crate::digest::digest(&[id.as_bytes()]);
    u64::from_str_radix(&h[..16], 16).unwrap_or(0)
}

fn doc_str<'a>(doc: &'a Doc, key: &str) -> &'a str {
    doc.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{project, project_members, Source};
    use serde_json::json;

    #[test]
    fn a_projection_keeps_the_identity_and_the_fields_asked_for_as_they_were() {
        let text =
            r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["x",1],"rd_schema_id":"s","body":"big","headers":{"a":["\u00e9 \"q\""]},"n":1.50}"#;
        let cut = project(text, &["headers".into(), "n".into(), "missing".into(), "n".into()]).unwrap();
        assert_eq!(cut, r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["x",1],"rd_schema_id":"s","headers":{"a":["\u00e9 \"q\""]},"n":1.50}"#);
        assert_eq!(project(text, &[]).unwrap(), r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["x",1],"rd_schema_id":"s"}"#);
        // Not an object, or a member name with an escape: the caller hands over the whole text.
        assert_eq!(project("[1]", &[]), None);
        assert_eq!(project(r#"{"a\nb":1}"#, &[]), None);
    }

    #[test]
    fn a_source_is_read_from_its_text_without_the_rest() {
        let text = r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["email","m"],"rd_schema_id":"s","rd_schema_provider":null,
                       "rd_schema_items":{"e1":{"rd_source":null},"e2":{}},"body":"long \"text\" é"}"#;
        let s = Source::from_text(text.into()).unwrap();
        assert_eq!((s.id.as_str(), s.rev.as_str(), s.schema.as_str()), ("rc!x!s", "1-a", "s"));
        assert_eq!(s.rd_key, json!(["email", "m"]));
        assert!(s.provider, "present, even null, is a provider's mark");
        assert_eq!(s.contributors, vec!["e1".to_string(), "e2".to_string()]);
        assert_eq!(&*s.text, text, "the text goes on as it came");
        assert_eq!(
            project_members(&s.text, s.members.as_ref().unwrap(), &["body".into()]),
            r#"{"_id":"rc!x!s","_rev":"1-a","rd_key":["email","m"],"rd_schema_id":"s","body":"long \"text\" é"}"#
        );
        // Escaped member names are read the slow way, and then not cut down.
        let escaped = Source::from_text(r#"{"_id":"e","rd_schema_provider":1,"a\u0062":2}"#.into()).unwrap();
        assert!(escaped.provider && escaped.members.is_none());
        // Odd member types are read the slow way; what is not an object is no source.
        let odd = Source::from_text(r#"{"_id":"i","rd_schema_items":[1],"rd_schema_id":3}"#.into()).unwrap();
        assert_eq!((odd.id.as_str(), odd.schema.as_str(), odd.provider), ("i", "", false));
        assert!(odd.contributors.is_empty());
        assert!(Source::from_text("[1]".into()).is_none());
    }
}
