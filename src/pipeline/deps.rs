//! The dependency index: for each document that outputs declared in `deps`, a record
//! `rddeps!<doc id>` (`{"dependents": [[source id, extension id], …], "sealed": [record id, …]}`)
//! listing the pairs whose outputs depend on it, so a change to it re-runs them.
//!
//! A popular document — the user's own identity, which every message's grouping tag depends
//! on — gathers a pair per message, and nearly every page adds some. Rewriting one list of
//! them all at each page would cost each page the size of the mailbox (~11 MB at 100,000
//! messages). So a record holds at most [`CHUNK`] pairs: when it fills, its pairs move to a
//! sealed record of their own (`rddeps!~<unique>!<doc id>`, never written again) named in its
//! `sealed` list, and it starts empty. And the writer keeps the records it has read or written
//! in this run as text with the set of pairs they hold, and appends to that: a page costs what
//! it adds, not a read, parse and print of the record.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::store::{Doc, Record, Store, StoreError, WriteResult};

/// Prefix of dependency index records' ids.
pub(super) const DEPS_PREFIX: &str = "rddeps!";

/// Pairs a record holds before they move to a sealed record.
const CHUNK: usize = 1_000;

/// The id of the index record of document `doc_id`.
pub(super) fn deps_id(doc_id: &str) -> String {
    format!("{DEPS_PREFIX}{doc_id}")
}

/// The (source, extension) pairs of the index records of `doc_ids` — sealed ones included —
/// in no order, possibly repeated.
pub(super) fn dependents_of(store: &dyn Store, doc_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
    let ids: Vec<String> = doc_ids.iter().map(|id| deps_id(id)).collect();
    let records: Vec<Doc> = store.get_records(&ids)?.into_iter().flatten().collect();
    let sealed: Vec<String> = records.iter().flat_map(sealed_ids).collect();
    let more: Vec<Doc> = if sealed.is_empty() { Vec::new() } else { store.get_records(&sealed)?.into_iter().flatten().collect() };
    let mut pairs = Vec::new();
    for record in records.iter().chain(&more) {
        for pair in record.get("dependents").and_then(Value::as_array).into_iter().flatten() {
            if let Some([Value::String(src), Value::String(ext)]) = pair.as_array().map(Vec::as_slice) {
                pairs.push((src.clone(), ext.clone()));
            }
        }
    }
    Ok(pairs)
}

fn sealed_ids(record: &Doc) -> Vec<String> {
    record.get("sealed").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

/// The index records as this run knows them (see the module's note). Owned by the writer.
#[derive(Default)]
pub(super) struct DepsIndex {
    known: HashMap<String, Known>,
}

struct Known {
    /// Its revision in the store; `None` before it is first written.
    rev: Option<String>,
    /// Each pair's JSON text: the record's, and those it sealed in this run.
    pairs: HashSet<String>,
    /// The record's own pairs' texts joined by commas: the list without its brackets.
    list: String,
    /// How many pairs `list` holds.
    count: usize,
    /// The ids of the records its full lists moved to.
    sealed: Vec<String>,
}

impl Known {
    fn text(&self) -> String {
        format!("{{\"dependents\":[{}],\"sealed\":{}}}", self.list, Value::from(self.sealed.clone()))
    }
}

impl DepsIndex {
    /// The records to write for `dependencies` (document depended on, source, extension):
    /// those that gain a pair, each at the revision it replaces, and the sealed records of
    /// those that filled.
    pub(super) fn updates(&mut self, store: &dyn Store, dependencies: Vec<(String, String, String)>) -> Result<Vec<Record>, StoreError> {
        let mut by_record: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (dep, src, ext) in dependencies {
            by_record.entry(deps_id(&dep)).or_default().push(Value::from(vec![src, ext]).to_string());
        }
        let unknown: Vec<String> = by_record.keys().filter(|id| !self.known.contains_key(*id)).cloned().collect();
        if !unknown.is_empty() {
            for (id, record) in unknown.iter().zip(store.get_records(&unknown)?) {
                let rev = record.as_ref().and_then(|r| r.get("_rev")).and_then(Value::as_str).map(str::to_string);
                let texts: Vec<String> = record
                    .as_ref()
                    .and_then(|r| r.get("dependents"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(Value::to_string)
                    .collect();
                let sealed = record.as_ref().map(sealed_ids).unwrap_or_default();
                let pairs: HashSet<String> = texts.iter().cloned().collect();
                self.known.insert(id.clone(), Known { rev, list: texts.join(","), count: texts.len(), pairs, sealed });
            }
        }
        let mut writes = Vec::new();
        for (id, pairs) in by_record {
            let Some(known) = self.known.get_mut(&id) else { continue };
            let mut added = false;
            for pair in pairs {
                if known.pairs.insert(pair.clone()) {
                    if !known.list.is_empty() {
                        known.list.push(',');
                    }
                    known.list.push_str(&pair);
                    known.count += 1;
                    added = true;
                }
            }
            if !added {
                continue;
            }
            if known.count >= CHUNK {
                let sealed_id = format!("{DEPS_PREFIX}~{}!{}", crate::store::new_doc_id(), &id[DEPS_PREFIX.len()..]);
                let body = format!("{{\"dependents\":[{}]}}", std::mem::take(&mut known.list));
                writes.push(Record::Text { id: sealed_id.clone(), rev: None, body });
                known.sealed.push(sealed_id);
                known.count = 0;
            }
            writes.push(Record::Text { id, rev: known.rev.clone(), body: known.text() });
        }
        Ok(writes)
    }

    /// Notes what writing the records gave: their new revisions, or — for one that changed
    /// under us (another process) — that it must be read again.
    pub(super) fn written(&mut self, results: &[WriteResult]) {
        for result in results {
            match result {
                WriteResult::Ok { id, rev } => {
                    if let Some(known) = self.known.get_mut(id) {
                        known.rev = Some(rev.clone());
                    }
                }
                WriteResult::Conflict { id } | WriteResult::Error { id, .. } => {
                    self.known.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::WriteBatch;

    fn write(store: &EmbeddedStore, index: &mut DepsIndex, records: Vec<Record>) {
        let written = store.write(WriteBatch { records, ..WriteBatch::default() }).unwrap();
        index.written(&written.records);
    }

    fn dependents(store: &EmbeddedStore, id: &str) -> Value {
        store.get_records(&[id.to_string()]).unwrap().pop().flatten().map(|r| r["dependents"].clone()).unwrap_or(Value::Null)
    }

    #[test]
    fn a_full_record_seals_its_pairs_and_every_page_writes_only_what_it_adds() {
        let dir = std::env::temp_dir().join(format!("rd-deps-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir.join("db")).unwrap();
        let mut index = DepsIndex::default();
        let n = CHUNK * 2 + 10;
        let mut largest = 0;
        for page in (0..n).collect::<Vec<_>>().chunks(7) {
            let pairs = page.iter().map(|i| ("me".to_string(), format!("src{i}"), "ext".to_string())).collect();
            let records = index.updates(&store, pairs).unwrap();
            largest = largest.max(
                records
                    .iter()
                    .map(|r| match r {
                        Record::Text { body, .. } => body.len(),
                        _ => 0,
                    })
                    .sum::<usize>(),
            );
            write(&store, &mut index, records);
        }
        assert!(largest < 2 * CHUNK * 20, "a page wrote {largest} bytes");
        let head = store.get_records(&[deps_id("me")]).unwrap().pop().flatten().unwrap();
        assert_eq!(sealed_ids(&head).len(), 2);
        // Pages of 7: a record seals when a page takes it to 1,000 or more (1,001 here).
        assert_eq!(head["dependents"].as_array().unwrap().len(), n - 2 * 1_001);
        let mut all: Vec<String> = dependents_of(&store, &["me".to_string()]).unwrap().into_iter().map(|(s, _)| s).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every pair, sealed or not");
        // A new run (nothing known) goes on from the stored record; a pair it gives again that
        // is in a sealed record is listed twice (readers take each pair once).
        let mut again = DepsIndex::default();
        let records =
            again.updates(&store, vec![("me".into(), "src0".into(), "ext".into()), ("me".into(), "new".into(), "ext".into())]).unwrap();
        write(&store, &mut again, records);
        let mut pairs = dependents_of(&store, &["me".to_string()]).unwrap();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), n + 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pairs_are_appended_once_and_a_record_changed_elsewhere_is_read_again() {
        let dir = std::env::temp_dir().join(format!("rd-deps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir.join("db")).unwrap();
        let pair = |d: &str, s: &str| (d.to_string(), s.to_string(), "ext".to_string());
        let mut index = DepsIndex::default();
        let records = index.updates(&store, vec![pair("me", "a"), pair("me", "b"), pair("me", "a"), pair("you", "a")]).unwrap();
        assert_eq!(records.len(), 2);
        write(&store, &mut index, records);
        assert_eq!(dependents(&store, "rddeps!me"), serde_json::json!([["a", "ext"], ["b", "ext"]]));
        // Nothing new: nothing to write; something new: appended, at the revision written.
        assert!(index.updates(&store, vec![pair("me", "b")]).unwrap().is_empty());
        let records = index.updates(&store, vec![pair("me", "c")]).unwrap();
        write(&store, &mut index, records);
        assert_eq!(dependents(&store, "rddeps!me"), serde_json::json!([["a", "ext"], ["b", "ext"], ["c", "ext"]]));
        // Another writer changes the record: this one's write conflicts, is forgotten, and the
        // next one reads the record again and keeps both.
        let mut other = DepsIndex::default();
        let records = other.updates(&store, vec![pair("me", "x")]).unwrap();
        write(&store, &mut other, records);
        let records = index.updates(&store, vec![pair("me", "d")]).unwrap();
        write(&store, &mut index, records);
        assert_eq!(dependents(&store, "rddeps!me").as_array().unwrap().len(), 4, "the conflicting write changed nothing");
        let records = index.updates(&store, vec![pair("me", "d")]).unwrap();
        write(&store, &mut index, records);
        assert_eq!(
            dependents(&store, "rddeps!me"),
            serde_json::json!([["a", "ext"], ["b", "ext"], ["c", "ext"], ["x", "ext"], ["d", "ext"]])
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
