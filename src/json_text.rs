//! JSON objects read and cut as text: where each top-level member is, and an object of some of
//! them, copied without parsing the values. The pipeline cuts sources down to `source_fields`
//! with it, the embedded store answers field projections, and the model checks the names of
//! emitted fields.

use std::ops::Range;

use serde_json::value::RawValue;

/// An object's top-level members as byte ranges of its text (the name without its quotes, the
/// value), in order.
pub type Members = Vec<(Range<usize>, Range<usize>)>;

/// The members of a JSON object's `text`; `None` when it is not an object or a member name has
/// escapes (names are compared as they are written).
pub fn members(text: &str) -> Option<Members> {
    struct Raw<'a>(Vec<(&'a str, &'a RawValue)>);
    impl<'de> serde::Deserialize<'de> for Raw<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Raw<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry::<&'de str, &'de RawValue>()? {
                        out.push(entry);
                    }
                    Ok(Raw(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let raw: Raw<'_> = serde_json::from_str(text).ok()?;
    let base = text.as_ptr() as usize;
    let range = |s: &str| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    Some(raw.0.into_iter().map(|(name, value)| (range(name), range(value.get()))).collect())
}

/// The names of `members` of `text`.
pub fn names<'a>(text: &'a str, members: &'a Members) -> impl Iterator<Item = &'a str> + 'a {
    members.iter().map(move |(name, _)| &text[name.clone()])
}

/// An object of the members of `text` named in `wanted` (each once, in that order; absent ones
/// left out), their values' text copied as it is.
pub fn pick<'a>(text: &str, members: &Members, wanted: impl IntoIterator<Item = &'a str>) -> String {
    let mut picked: Vec<(&str, &str)> = Vec::new();
    for name in wanted {
        if picked.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Some((_, value)) = members.iter().find(|(n, _)| &text[n.clone()] == name) {
            picked.push((name, &text[value.clone()]));
        }
    }
    let mut out = String::with_capacity(picked.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>() + 2);
    out.push('{');
    for (i, (name, value)) in picked.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(name).to_string());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_and_picked_as_written() {
        let text = r#" {"a": [1, {"x":"}"}], "b":"q\"uo", "c" : 2.50 } "#;
        let m = members(text).unwrap();
        assert_eq!(names(text, &m).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(pick(text, &m, ["c", "missing", "a", "c"]), r#"{"c":2.50,"a":[1, {"x":"}"}]}"#);
        assert_eq!(pick(text, &m, []), "{}");
        assert!(members("[1]").is_none());
        assert!(members(r#"{"a\nb":1}"#).is_none(), "escaped names are not read so");
    }
}
