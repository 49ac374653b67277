//! CouchDB's wire format beside the requests: URLs and ids in them (credentials redacted),
//! sequences, the rows of bulk answers, and errors of the HTTP client described without the
//! URL.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::store::{Doc, Seq, StoreError};

/// The view behind `find`: every schema document under `[schema]`, and under
/// `[schema, field, value]` for each top-level field (arrays and objects up to 512 bytes of
/// JSON), like the original's megaview.
/// The megaview's map function (see `store::megaview`): what `find` and `megaview` query.
pub(super) const MEGAVIEW_MAP: &str = "function (doc) {
  if (!doc.rd_schema_id || doc._id.indexOf('rc!') !== 0) return;
  var sid = doc.rd_schema_id, key = doc.rd_key === undefined ? null : doc.rd_key;
  var base = { _rev: doc._rev, rd_key: key, rd_schema_id: sid };
  emit(['schema_id', sid], base);
  if (key !== null) {
    emit(['key', key], base);
    emit(['key-schema_id', [key, sid]], base);
    var items = doc.rd_schema_items || {};
    for (var ext in items) {
      var e = items[ext] || {}, src = e.rd_source || null;
      var v = { _rev: doc._rev, rd_key: key, rd_schema_id: sid, rd_ext_id: ext, rd_source: src };
      var sourceId = src && typeof src[0] === 'string' ? src[0] : null;
      emit(['ext_id', ext], v);
      emit(['source', sourceId], v);
      emit(['ext_id-source', [ext, sourceId]], v);
      var deps = e.rd_deps || [];
      for (var d = 0; d < deps.length; d++) emit(['dep', deps[d]], v);
    }
  }
  for (var k in doc) {
    if (k.charAt(0) === '_' || k.indexOf('rd_') === 0) continue;
    var val = doc[k];
    if (val === null || typeof val !== 'object' || JSON.stringify(val).length <= 512) emit([sid, k, val], base);
    if (Array.isArray(val)) for (var i = 0; i < val.length; i++) {
      if (val[i] === null || typeof val[i] !== 'object' || JSON.stringify(val[i]).length <= 512) emit([sid, k + '[]', val[i]], base);
    }
  }
}";

/// The rows of an `_all_docs` or view answer with `include_docs`, each document as text.
#[derive(Deserialize)]
pub(super) struct Rows {
    pub(super) rows: Vec<Row>,
}

#[derive(Deserialize)]
pub(super) struct Row {
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) key: Value,
    #[serde(default)]
    pub(super) value: Value,
    pub(super) doc: Option<Box<RawValue>>,
}

/// A document's text, or it cut down to `rd_key` and `fields`.
pub(super) fn shaped(doc: &RawValue, fields: Option<&[String]>) -> Result<String, StoreError> {
    match fields {
        None => Ok(doc.get().to_string()),
        Some(fields) => {
            let doc: Doc = crate::store::parse_doc(doc.get())?;
            Ok(Value::Object(crate::store::project(doc, fields)).to_string())
        }
    }
}

/// A URL with its credentials removed, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

/// Percent-encodes a document id for a URL path, keeping the `/` of `_design/` and `_local/`.
pub(super) fn encode_id(id: &str) -> String {
    for prefix in ["_design/", "_local/"] {
        if let Some(rest) = id.strip_prefix(prefix) {
            return format!("{prefix}{}", encode_component(rest));
        }
    }
    encode_component(id)
}

pub(super) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A sequence as CouchDB gave it: strings verbatim, numbers in their JSON form.
/// What a request is, for counting them: its method and endpoint (`POST _all_docs`, `GET
/// view`, `GET attachment`, …) from its path after the database's.
pub(super) fn request_kind(method: &reqwest::Method, path: &str) -> String {
    let path = path.trim_start_matches('/');
    let endpoint = match path.split('/').next().unwrap_or("") {
        "" => "database",
        "_design" if path.contains("/_view/") => "view",
        e if e.starts_with('_') => e,
        _ if path.contains('/') => "attachment",
        _ => "document",
    };
    format!("{method} {endpoint}")
}

/// The attachments a document read with `attachments=true` carries inline, decoded.
pub(super) fn inline_attachments(doc: &str) -> Result<crate::store::Attachments, String> {
    #[derive(Deserialize)]
    struct Inline {
        content_type: Option<String>,
        data: Option<String>,
    }
    #[derive(Deserialize)]
    struct WithAttachments {
        #[serde(rename = "_attachments", default)]
        attachments: std::collections::BTreeMap<String, Inline>,
    }
    let doc: WithAttachments = serde_json::from_str(doc).map_err(|e| format!("a document with its attachments: {e}"))?;
    doc.attachments
        .into_iter()
        .map(|(name, a)| {
            let data = a.data.ok_or_else(|| format!("attachment {name} came without its data"))?;
            let data = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("attachment {name}: {e}"))?;
            Ok((name, crate::store::Attachment { content_type: a.content_type.unwrap_or_else(|| "application/octet-stream".into()), data }))
        })
        .collect()
}

pub(super) fn seq_from_json(v: &Value) -> Seq {
    match v {
        Value::String(s) => Seq::from_raw(s.clone()),
        other => Seq::from_raw(other.to_string()),
    }
}

pub(super) fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest's messages include the URL; ours never carries credentials, but keep only the
    // cause chain to stay short.
    let mut msg = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Inline attachment data for a document written through `_bulk_docs`.
pub fn inline_attachment(content_type: &str, data: &[u8]) -> Value {
    json!({ "content_type": content_type, "data": base64::engine::general_purpose::STANDARD.encode(data) })
}

/// `_bulk_docs` rows put back in the order of the documents written. CouchDB answers in input
/// order, PouchDB Server not always (the records of a pipeline write came back before its
/// documents now and then): each row goes back to the document with its id, and rows naming
/// no document of the batch (ids the server chose) fill the rest in the order they came.
pub(super) fn in_input_order<R>(rows: Vec<R>, batch: &[Doc], id_of: impl Fn(&R) -> Option<&str>) -> Vec<R> {
    let mut by_id: std::collections::HashMap<String, std::collections::VecDeque<usize>> = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(id) = id_of(row) {
            by_id.entry(id.to_string()).or_default().push_back(i);
        }
    }
    let mut taken = vec![false; rows.len()];
    let mut order: Vec<Option<usize>> = batch
        .iter()
        .map(|doc| {
            let i = doc.get("_id").and_then(Value::as_str).and_then(|id| by_id.get_mut(id)).and_then(|q| q.pop_front())?;
            taken[i] = true;
            Some(i)
        })
        .collect();
    let mut rest = (0..rows.len()).filter(|i| !taken[*i]);
    for slot in order.iter_mut().filter(|s| s.is_none()) {
        *slot = rest.next();
    }
    let mut rows: Vec<Option<R>> = rows.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| rows.get_mut(i?)?.take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_credentials() {
        assert_eq!(redact("http://bob:s3cret@127.0.0.1:5984/db"), "http://127.0.0.1:5984/db");
        assert!(!redact("http://bob:s3cret@h/db").contains("s3cret"));
    }

    #[test]
    fn ids_are_encoded_for_paths() {
        assert_eq!(encode_id("rc!email.abc=!rd.msg.body"), "rc%21email.abc%3D%21rd.msg.body");
        assert_eq!(encode_id("_design/x y"), "_design/x%20y");
        assert_eq!(encode_id("é"), "%C3%A9");
    }

    #[test]
    fn credentials_are_percent_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aw"), "p@ss:w");
        assert_eq!(percent_decode("plain%"), "plain%");
    }

    #[test]
    fn bulk_rows_go_back_to_their_documents() {
        let batch: Vec<Doc> = [json!({"_id": "a"}), json!({}), json!({"_id": "b"}), json!({"_id": "a"})]
            .iter()
            .map(|d| d.as_object().unwrap().clone())
            .collect();
        // As a server might answer: out of order, one id of its own choosing.
        let rows = vec![Some("b"), Some("a"), Some("fresh"), Some("a")];
        let back = in_input_order(rows.clone(), &batch, |r| *r);
        assert_eq!(back, vec![Some("a"), Some("fresh"), Some("b"), Some("a")]);
        assert_eq!(in_input_order(vec![Some("a"), Some("x")], &batch[..2], |r| *r), vec![Some("a"), Some("x")]);
    }

    #[test]
    fn requests_are_named_by_endpoint() {
        use reqwest::Method;
        assert_eq!(request_kind(&Method::POST, "/_all_docs"), "POST _all_docs");
        assert_eq!(request_kind(&Method::GET, "/_design/raindrop/_view/megaview"), "GET view");
        assert_eq!(request_kind(&Method::PUT, "/_local/ckpt"), "PUT _local");
        assert_eq!(request_kind(&Method::GET, "/rc!x!y/rfc822"), "GET attachment");
        assert_eq!(request_kind(&Method::GET, "/rc!x!y"), "GET document");
        assert_eq!(request_kind(&Method::HEAD, ""), "HEAD database");
    }

    #[test]
    fn inline_attachments_are_decoded() {
        let doc = r#"{"_id":"a","_attachments":{"x/rfc822":{"content_type":"message/rfc822","data":"aGVsbG8="}}}"#;
        let atts = inline_attachments(doc).unwrap();
        assert_eq!(atts.len(), 1);
        assert_eq!(
            (atts[0].0.as_str(), atts[0].1.content_type.as_str(), &atts[0].1.data[..]),
            ("x/rfc822", "message/rfc822", &b"hello"[..])
        );
        assert_eq!(inline_attachments(r#"{"_id":"b"}"#).unwrap().len(), 0);
        assert!(inline_attachments(r#"{"_attachments":{"s":{"stub":true}}}"#).unwrap_err().contains("without its data"));
    }

    #[test]
    fn sequences_keep_their_text() {
        assert_eq!(seq_from_json(&json!(12)).as_str(), "12");
        assert_eq!(seq_from_json(&json!("12-g1AAA")).as_str(), "12-g1AAA");
    }
}
