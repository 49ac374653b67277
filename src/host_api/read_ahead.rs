//! Reads fetched ahead for a whole call: what a batch's handlers will open, asked of the store
//! in one request instead of one per document.
//!
//! On CouchDB every `open_schemas` and every attachment read is a round trip that costs the
//! server milliseconds, and the bundled extensions read once or twice per message. An
//! extension declares what its handler reads (`reads(doc)`, `reads_attachments`), the driver
//! asks for all of a batch's at once (`read_ahead`), and the reads the handlers then make are
//! answered here. Within one call the documents read are also kept, so reading the same
//! document again (a later_handler's helpers do) costs nothing.
//!
//! The cache belongs to the thread's current driver call: every call the driver makes starts
//! by resetting it, so nothing read for one batch answers another's (a call stopped at its
//! time limit leaves its cache to the next call's reset, never to be read). A write through
//! `update_documents` empties it: what was written must be read back as it is now. Answers are
//! text, so each read gives JavaScript objects of its own, as the store would.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::store::{Attachments, Store, StoreError};

/// Documents per request: a batch's reads in a few requests of a sensible size.
const DOCS_PER_REQUEST: usize = 1000;
/// Documents per request when their attachments come too (raw mail can be megabytes).
const ATTACHMENTS_PER_REQUEST: usize = 50;
/// How many documents a find read ahead keeps per value: a lookup asking for more, when the
/// value had this many, asks the store.
const FIND_LIMIT: usize = 100;

/// A find to read ahead: documents of `schema` whose `field` is `value`.
pub(super) struct FindAhead {
    pub(super) schema: String,
    pub(super) field: String,
    pub(super) value: serde_json::Value,
}

#[derive(Default)]
struct Cache {
    /// Document id → its text as read (`None`: missing), whole or cut to the fields listed.
    docs: HashMap<String, (Option<Vec<String>>, Option<String>)>,
    /// Document id → its attachments by full name (`None`: the document is missing).
    attachments: HashMap<String, Option<Attachments>>,
    /// `[schema, field, value]` as JSON text → the whole documents found, at most
    /// [`FIND_LIMIT`].
    finds: HashMap<String, Vec<String>>,
}

fn find_key(schema: &str, field: &str, value: &serde_json::Value) -> String {
    serde_json::json!([schema, field, value]).to_string()
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Forgets everything read: a new call starts, or the store was written to.
pub(super) fn reset() {
    CACHE.with(|c| *c.borrow_mut() = Cache::default());
}

/// Reads `ids` whole, `with_attachments` with their attachments, and the documents `finds`
/// find, into the cache (those not there yet), in as few requests as the store allows.
pub(super) fn fetch(store: &dyn Store, ids: &[String], with_attachments: &[String], finds: &[FindAhead]) -> Result<(), StoreError> {
    fetch_finds(store, finds)?;
    let missing: Vec<String> = CACHE.with(|c| {
        let c = c.borrow();
        let mut seen = std::collections::HashSet::new();
        ids.iter().filter(|id| !matches!(c.docs.get(*id), Some((None, _))) && seen.insert(*id)).cloned().collect()
    });
    for chunk in missing.chunks(DOCS_PER_REQUEST) {
        let docs = store.get_many(chunk, None)?;
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            for (id, doc) in chunk.iter().zip(docs) {
                c.docs.insert(id.clone(), (None, doc));
            }
        });
    }
    let missing: Vec<String> = CACHE.with(|c| {
        let c = c.borrow();
        let mut seen = std::collections::HashSet::new();
        with_attachments.iter().filter(|id| !c.attachments.contains_key(*id) && seen.insert(*id)).cloned().collect()
    });
    for chunk in missing.chunks(ATTACHMENTS_PER_REQUEST) {
        let found = store.get_attachments_of(chunk)?;
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            for (id, atts) in chunk.iter().zip(found) {
                c.attachments.insert(id.clone(), atts);
            }
        });
    }
    Ok(())
}

/// The finds not cached yet, one store request per (schema, field).
fn fetch_finds(store: &dyn Store, finds: &[FindAhead]) -> Result<(), StoreError> {
    let mut groups: HashMap<(&str, &str), Vec<serde_json::Value>> = HashMap::new();
    CACHE.with(|c| {
        let c = c.borrow();
        let mut seen = std::collections::HashSet::new();
        for f in finds {
            let key = find_key(&f.schema, &f.field, &f.value);
            if !c.finds.contains_key(&key) && seen.insert(key) {
                groups.entry((&f.schema, &f.field)).or_default().push(f.value.clone());
            }
        }
    });
    for ((schema, field), values) in groups {
        let found = store.find(&crate::store::Find { schema, by: Some((field, &values)), limit: FIND_LIMIT, fields: None })?;
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            for (value, docs) in values.iter().zip(found) {
                c.finds.insert(find_key(schema, field, value), docs);
            }
        });
    }
    Ok(())
}

/// A find's answer from the cache: the first `limit` documents of `schema` whose `field` is
/// `value`, cut to `fields` — `None` when it was not read ahead, or more were asked for than
/// were kept.
pub(super) fn find(schema: &str, field: &str, value: &serde_json::Value, limit: usize, fields: Option<&[String]>) -> Option<Vec<String>> {
    CACHE.with(|c| {
        let c = c.borrow();
        let docs = c.finds.get(&find_key(schema, field, value))?;
        if limit > docs.len() && docs.len() >= FIND_LIMIT {
            return None;
        }
        docs.iter().take(limit).map(|d| answer(None, Some(d), fields).flatten()).collect()
    })
}

/// [`Store::get_many`] answered from the cache where it can be, the rest asked of the store
/// in one request and kept.
pub(super) fn get_many(store: &dyn Store, ids: &[String], fields: Option<&[String]>) -> Result<Vec<Option<String>>, StoreError> {
    let mut out: Vec<Option<Option<String>>> = CACHE.with(|c| {
        let c = c.borrow();
        ids.iter().map(|id| c.docs.get(id).and_then(|(had, text)| answer(had.as_deref(), text.as_deref(), fields))).collect()
    });
    let asked: Vec<String> = ids.iter().zip(&out).filter(|(_, a)| a.is_none()).map(|(id, _)| id.clone()).collect();
    if asked.is_empty() {
        return Ok(out.into_iter().map(Option::flatten).collect());
    }
    let read = store.get_many(&asked, fields)?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        for (id, text) in asked.iter().zip(&read) {
            c.docs.insert(id.clone(), (fields.map(<[String]>::to_vec), text.clone()));
        }
    });
    let mut read = read.into_iter();
    for slot in out.iter_mut().filter(|a| a.is_none()) {
        *slot = Some(read.next().flatten());
    }
    Ok(out.into_iter().map(Option::flatten).collect())
}

/// The cached text `text` (read with the fields `had`, `None` for whole) as asked with
/// `fields`, or `None` when it does not hold them all.
fn answer(had: Option<&[String]>, text: Option<&str>, fields: Option<&[String]>) -> Option<Option<String>> {
    let covers = match (had, fields) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(had), Some(want)) => want.iter().all(|f| had.contains(f)),
    };
    if !covers {
        return None;
    }
    let Some(text) = text else { return Some(None) };
    match (had, fields) {
        (Some(had), Some(want)) if had == want => Some(Some(text.to_string())),
        (_, Some(want)) => {
            let doc = crate::store::parse_doc(text).ok()?;
            Some(Some(serde_json::Value::Object(crate::store::project(doc, want)).to_string()))
        }
        (_, None) => Some(Some(text.to_string())),
    }
}

/// Attachment `name` of document `id` if the cache holds the document's attachments:
/// `Some(None)` when it has no such attachment. A bare name finds `<ext>/<name>`.
pub(super) fn attachment(id: &str, name: &str) -> Option<Option<Vec<u8>>> {
    CACHE.with(|c| {
        let c = c.borrow();
        let atts = c.attachments.get(id)?;
        let Some(atts) = atts else { return Some(None) };
        let found = atts.iter().find(|(n, _)| n == name).or_else(|| {
            (!name.contains('/')).then(|| atts.iter().find(|(n, _)| n.rsplit_once('/').is_some_and(|(_, n)| n == name))).flatten()
        });
        Some(found.map(|(_, a)| a.data.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::answer;

    fn fields(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_cached_document_answers_what_it_holds() {
        let whole = r#"{"_id":"a","_rev":"1-x","rd_key":["k",1],"x":1,"y":2}"#;
        assert_eq!(answer(None, Some(whole), None), Some(Some(whole.to_string())));
        let cut = answer(None, Some(whole), Some(&fields(&["x"]))).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&cut).unwrap(), serde_json::json!({"rd_key": ["k", 1], "x": 1}));
        let xy = fields(&["x", "y"]);
        let cut_text = r#"{"rd_key":["k",1],"x":1,"y":2}"#;
        assert_eq!(answer(Some(&xy), Some(cut_text), Some(&xy)), Some(Some(cut_text.to_string())));
        // Fewer fields than asked, or a whole document asked of a cut one: not an answer.
        assert_eq!(answer(Some(&fields(&["x"])), Some(cut_text), Some(&xy)), None);
        assert_eq!(answer(Some(&xy), Some(cut_text), None), None);
        // A missing document is missing whatever the fields.
        assert_eq!(answer(None, None, Some(&xy)), Some(None));
    }
}
