//! What a CouchDB-protocol server spends on a mail run's documents with no pipeline at all:
//! the run's documents copied into fresh databases of the same server and indexed once. Set
//! beside the run's own figure, it tells the part of the server's CPU any client writing those
//! documents would cost (the floor) from the part the pipeline's requests add.

use reqwest::blocking::Client;
use serde_json::{json, Value};

/// One way of storing the documents again: the name printed, and the design document's map
/// (`None`: no design document, so nothing is indexed).
const VARIANTS: [(&str, Option<MapOf>); 3] =
    [("stored, no view", None), ("stored, a view emitting nothing", Some(MapOf::Nothing)), ("stored, the megaview", Some(MapOf::Run))];

#[derive(Clone, Copy)]
enum MapOf {
    /// `function (doc) {}`: what indexing costs per document before any row.
    Nothing,
    /// The run's own design document, copied.
    Run,
}

/// The server CPU seconds of each [`VARIANTS`] entry for the documents of database `db` at
/// `base` (the server process `server`): every document without its revision, raw mail with
/// its attachment, written in pages of 100 (as the pipeline's pages), then the view asked once.
pub(crate) fn server_floor(base: &str, db: &str, server: u32, cpu: fn(u32) -> f64) -> Result<Vec<(&'static str, f64)>, String> {
    // Indexing a big run's documents at once takes longer than the default 30 s.
    let client = Client::builder().timeout(std::time::Duration::from_secs(1800)).build().map_err(|e| e.to_string())?;
    let mut design = None;
    let mut docs = Vec::new();
    for row in all_rows(&client, &format!("{base}/{db}"))? {
        let mut doc = row["doc"].clone();
        let Some(fields) = doc.as_object_mut() else { continue };
        fields.remove("_rev");
        if let Some(atts) = fields.get_mut("_attachments").and_then(Value::as_object_mut) {
            for att in atts.values_mut() {
                *att = json!({ "content_type": att["content_type"], "data": att["data"] });
            }
        }
        if row["id"].as_str().is_some_and(|id| id.starts_with("_design/")) {
            design = Some(doc);
        } else {
            docs.push(doc);
        }
    }
    let design = design.ok_or("the run left no design document")?;
    let mut figures = Vec::new();
    for (k, (name, map)) in VARIANTS.into_iter().enumerate() {
        let target = format!("{base}/{db}-floor-{k}");
        let put = |url: String, body: &Value| {
            client.put(&url).json(body).send().and_then(|r| r.error_for_status()).map(drop).map_err(|e| format!("PUT {url}: {e}"))
        };
        put(target.clone(), &json!({}))?;
        if let Some(map) = map {
            let mut ddoc = design.clone();
            if let MapOf::Nothing = map {
                ddoc["views"]["megaview"]["map"] = json!("function (doc) {}");
            }
            put(format!("{target}/_design/raindrop"), &ddoc)?;
        }
        let before = cpu(server);
        for page in docs.chunks(100) {
            let resp = client.post(format!("{target}/_bulk_docs")).json(&json!({ "docs": page })).send().map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("{name}: _bulk_docs answered {}", resp.status()));
            }
        }
        if map.is_some() {
            let view = format!("{target}/_design/raindrop/_view/megaview?limit=1&reduce=false");
            client.get(view).send().and_then(|r| r.error_for_status()).map_err(|e| format!("{name}: the view: {e}"))?;
        }
        figures.push((name, cpu(server) - before));
    }
    Ok(figures)
}

/// Every row of `_all_docs` of the database at `db`, with its document and attachments, read a
/// page at a time (a big run's documents do not fit one answer comfortably).
fn all_rows(client: &Client, db: &str) -> Result<Vec<Value>, String> {
    const PAGE: usize = 1000;
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{db}/_all_docs?include_docs=true&attachments=true&limit={PAGE}");
        if let Some(last) = &after {
            url.push_str(&format!("&skip=1&startkey={}", urlencode(&Value::String(last.clone()).to_string())));
        }
        let page: Value =
            client.get(&url).send().and_then(|r| r.error_for_status()).and_then(|r| r.json()).map_err(|e| format!("GET {url}: {e}"))?;
        let got: Vec<Value> = page["rows"].as_array().cloned().unwrap_or_default();
        let n = got.len();
        after = got.last().and_then(|r| r["id"].as_str()).map(str::to_string);
        rows.extend(got);
        if n < PAGE {
            return Ok(rows);
        }
    }
}

/// `text` percent-encoded for a query string.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
