//! The dependency index: for each document that outputs declared in `deps`, a record
//! `rddeps!<doc id>` (`{"dependents": [[source id, extension id], …]}`) listing the pairs whose
//! outputs depend on it, so a change to it re-runs them.
//!
//! A popular document — the user's own identity, which every message's grouping tag depends
//! on — gathers thousands of pairs, and nearly every page adds some. So the writer keeps the
//! records it has read or written in this run as text with the set of pairs they hold, and
//! appends to that: a page costs what it adds, not a read, parse and print of the whole list
//! (~1 MB on the mail benchmark's 10,000 messages).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::store::{Record, Store, StoreError, WriteResult};

/// Prefix of dependency index records' ids.
pub(super) const DEPS_PREFIX: &str = "rddeps!";

/// The index records as this run knows them (see the module's note). Owned by the writer.
#[derive(Default)]
pub(super) struct DepsIndex {
    known: HashMap<String, Known>,
}

struct Known {
    /// Its revision in the store; `None` before it is first written.
    rev: Option<String>,
    /// Each pair's JSON text.
    pairs: HashSet<String>,
    /// The pairs' texts joined by commas: the list without its brackets.
    list: String,
}

impl DepsIndex {
    /// The records to write for `dependencies` (document depended on, source, extension):
    /// those that gain a pair, each at the revision it replaces.
    pub(super) fn updates(&mut self, store: &dyn Store, dependencies: Vec<(String, String, String)>) -> Result<Vec<Record>, StoreError> {
        let mut by_record: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (dep, src, ext) in dependencies {
            by_record.entry(format!("{DEPS_PREFIX}{dep}")).or_default().push(Value::from(vec![src, ext]).to_string());
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
                let pairs: HashSet<String> = texts.iter().cloned().collect();
                self.known.insert(id.clone(), Known { rev, list: texts.join(","), pairs });
            }
        }
        let mut writes = Vec::new();
        for (id, pairs) in by_record {
            let Some(known) = self.known.get_mut(&id) else { continue };
            let mut added = false;
            for pair in pairs {
                if !known.pairs.contains(&pair) {
                    if !known.list.is_empty() {
                        known.list.push(',');
                    }
                    known.list.push_str(&pair);
                    known.pairs.insert(pair);
                    added = true;
                }
            }
            if added {
                writes.push(Record::Text { id, rev: known.rev.clone(), body: format!("{{\"dependents\":[{}]}}", known.list) });
            }
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
