//! JSON objects read and cut as text: where each top-level member is, and an object of some of
//! them, copied without parsing the values. The pipeline cuts sources down to `source_fields`
//! with it, the embedded store answers field projections, and the model checks the names of
//! emitted fields.

use std::ops::Range;

/// An object's top-level members as byte ranges of its text (the name without its quotes, the
/// value), in order.
pub type Members = Vec<(Range<usize>, Range<usize>)>;

/// The members of a JSON object's `text`; `None` when it is not an object or a member name has
/// escapes (names are compared as they are written).
///
/// A scanner of its own rather than serde_json's: values are only skipped, and a string is
/// skipped by looking for its next quote or backslash (`memchr`), which is most of the work on
/// documents holding a message's text — serde_json read such strings byte by byte, ~3% of the
/// mail benchmark's CPU. It accepts what serde_json accepts (unit test), but for control
/// characters inside strings, which it does not look for: the texts it reads were written by
/// serde_json or `JSON.stringify`, which escape them.
pub fn members(text: &str) -> Option<Members> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let name_start = i + 1;
        let name_end = name_start + memchr::memchr2(b'"', b'\\', &b[name_start..])?;
        if b[name_end] != b'"' {
            return None; // an escaped name
        }
        i = skip_ws(b, name_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        let value_end = skip_value(b, value_start, 0)?;
        out.push((name_start..name_end, value_start..value_end));
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

/// Nesting deeper than this is refused, as serde_json refuses it (its recursion limit).
const MAX_DEPTH: usize = 128;

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Where the JSON value starting at `i` ends; `None` when there is none.
fn skip_value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i + 1),
        b'{' | b'[' if depth >= MAX_DEPTH => None,
        b'{' => {
            let mut i = skip_ws(b, i + 1);
            if b.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                i = skip_ws(b, skip_string(b, i + 1)?);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = skip_ws(b, skip_value(b, skip_ws(b, i + 1), depth + 1)?);
                match b.get(i) {
                    Some(b',') => i = skip_ws(b, i + 1),
                    Some(b'}') => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut i = skip_ws(b, i + 1);
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = skip_ws(b, skip_value(b, i, depth + 1)?);
                match b.get(i) {
                    Some(b',') => i = skip_ws(b, i + 1),
                    Some(b']') => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => b[i..].starts_with(b"null").then_some(i + 4),
        b'-' | b'0'..=b'9' => skip_number(b, i),
        _ => None,
    }
}

/// Where the string whose body starts at `i` (after its opening quote) ends, after its
/// closing quote; its escapes are checked.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', &b[i..])?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        match *b.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
            b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
            _ => return None,
        }
    }
}

/// Where the number starting at `i` ends: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| -> usize { b[i..].iter().take_while(|c| c.is_ascii_digit()).count() };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let n = digits(b, i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
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
    object(picked)
}

/// The text of an object of these members: each name (quoted and escaped here) with the JSON
/// text of its value, copied as it is.
pub fn object<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let members: Vec<(&str, &str)> = members.into_iter().collect();
    let mut out = String::with_capacity(members.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>() + 2);
    out.push('{');
    for (i, (name, value)) in members.into_iter().enumerate() {
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
    use serde_json::value::RawValue;

    /// What `members` gave when it was serde_json's: the oracle of the scanner.
    fn members_by_serde(text: &str) -> Option<Vec<(String, String)>> {
        let map: Vec<(String, String)> =
            serde_json::from_str::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(text).ok().map(|_| ()).and_then(|_| {
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
                serde_json::from_str::<Raw<'_>>(text)
                    .ok()
                    .map(|r| r.0.into_iter().map(|(n, v)| (n.to_string(), v.get().to_string())).collect())
            })?;
        Some(map)
    }

    fn members_by_scanner(text: &str) -> Option<Vec<(String, String)>> {
        members(text).map(|m| m.into_iter().map(|(n, v)| (text[n].to_string(), text[v].to_string())).collect())
    }

    /// A small deterministic generator of JSON texts, with odd spacing, escapes and numbers.
    fn random_json(seed: &mut u64, depth: usize) -> String {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let ws = [" ", "", "\n\t ", "\r\n"];
        let w = ws[(next() % 4) as usize];
        let pick = next() % if depth > 3 { 6 } else { 8 };
        match pick {
            0 => "null".into(),
            1 => ["true", "false"][(next() % 2) as usize].into(),
            2 => ["0", "-1", "12.5e+3", "1E-7", "-0.25", "123456789012345678901234"][(next() % 6) as usize].into(),
            3..=5 => {
                let parts = ["plain", "caf\\u00e9 東京", "q\\\"uo\\\\te", "\\n\\t\\/", "\\u00e9\\uD83D\\uDE00", "", "}{][,:"];
                format!("\"{}\"", parts[(next() % parts.len() as u64) as usize])
            }
            6 => {
                let n = next() % 4;
                let items: Vec<String> = (0..n).map(|_| random_json(seed, depth + 1)).collect();
                format!("[{w}{}{w}]", items.join(&format!("{w},{w}")))
            }
            _ => {
                let n = next() % 4;
                let items: Vec<String> = (0..n).map(|i| format!("\"k{i}\"{w}:{w}{}", random_json(seed, depth + 1))).collect();
                format!("{{{w}{}{w}}}", items.join(&format!(",{w}")))
            }
        }
    }

    #[test]
    fn the_scanner_reads_what_serde_json_reads_and_refuses_what_it_refuses() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut objects = 0;
        for _ in 0..3000 {
            let n = seed % 5;
            let members: Vec<String> = (0..n).map(|i| format!("\"m{i}\" : {}", random_json(&mut seed, 0))).collect();
            let text = format!(" {{ {} }} ", members.join(" , "));
            let expected = members_by_serde(&text);
            assert!(expected.is_some(), "the generator makes valid objects: {text}");
            assert_eq!(members_by_scanner(&text), expected, "{text}");
            objects += 1;
            // Cut short anywhere, or with one byte changed: the same verdict as serde_json.
            for cut in (0..text.len()).filter(|c| text.is_char_boundary(*c)).step_by(3) {
                let t = &text[..cut];
                assert_eq!(members_by_scanner(t), members_by_serde(t), "{t:?}");
            }
            let at = (seed as usize) % text.len();
            for c in [b'"', b'\\', b'}', b',', b'x', b'0', b' '] {
                let mut bytes = text.as_bytes().to_vec();
                if !text.is_char_boundary(at) || !text.is_char_boundary(at + 1) {
                    continue;
                }
                bytes[at] = c;
                let t = String::from_utf8(bytes).unwrap();
                assert_eq!(members_by_scanner(&t), members_by_serde(&t), "{t:?}");
            }
        }
        assert_eq!(objects, 3000);
        for odd in [
            "{}",
            " {} ",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12G4\"}",
            "{\"a\":[1,]}",
            "{\"a\":{,}}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":1} x",
            "[1]",
            "\"s\"",
            "",
            "{\"a\":[[[[]]]]}",
            "{\"a\":\"\\ud800\"}",
        ] {
            assert_eq!(members_by_scanner(odd), members_by_serde(odd), "{odd:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(members_by_scanner(&deep), None, "nesting beyond the limit is refused");
    }

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
