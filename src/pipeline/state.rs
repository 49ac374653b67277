//! The state record of a source (`rdstate!<source id>`): per extension, the source revision and
//! code fingerprint it last ran on, whether that run failed, and the documents it produced.
//!
//! A source is skipped by an extension whose entry matches the source's revision and the
//! extension's fingerprint, so a second run writes nothing and an edited extension re-runs; the
//! outputs listed are what is withdrawn when a later run no longer makes them, when the source
//! goes, or when `unprocess` asks. Records are the store's records (see
//! `Store::bulk_write_with_records`), written with the page's outputs, after them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Doc, Record};

/// Prefix of state records' ids.
pub(super) const STATE_PREFIX: &str = "rdstate!";

/// The id of `source_id`'s state record.
pub(super) fn state_id(source_id: &str) -> String {
    format!("{STATE_PREFIX}{source_id}")
}

/// One extension's entry in a source's state record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct StateEntry {
    /// The run failed: its outputs are an error document (`retry-errors` runs it again).
    #[serde(default)]
    pub(super) error: bool,
    /// The fingerprint of the extension's code that ran.
    #[serde(default)]
    pub(super) fingerprint: String,
    /// The ids of the documents it produced.
    #[serde(default)]
    pub(super) outputs: Vec<String>,
    /// The source's revision it ran on.
    #[serde(default)]
    pub(super) rev: String,
}

impl StateEntry {
    /// Whether this entry records a run on revision `rev` of the source by code `fingerprint`.
    pub(super) fn is_for(&self, rev: &str, fingerprint: &str) -> bool {
        self.rev == rev && self.fingerprint == fingerprint
    }

    /// The entry's JSON text: its one text form, members in name order as every version wrote.
    fn text(&self) -> String {
        fn json(v: &impl Serialize) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        format!(
            "{{\"error\":{},\"fingerprint\":{},\"outputs\":{},\"rev\":{}}}",
            self.error,
            json(&self.fingerprint),
            json(&self.outputs),
            json(&self.rev)
        )
    }
}

/// A source's state record: per extension id, its entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StateRecord {
    id: String,
    /// Its revision in the store; `None` for a record not stored yet.
    rev: Option<String>,
    entries: BTreeMap<String, StateEntry>,
}

impl StateRecord {
    /// A record not stored yet, for `source_id`.
    pub(super) fn new(source_id: &str) -> StateRecord {
        StateRecord { id: state_id(source_id), rev: None, entries: BTreeMap::new() }
    }

    /// A record as the store gave it. An entry that cannot be read counts as absent: the
    /// extension runs on the source again, as on a source it never saw.
    pub(super) fn from_doc(doc: Doc) -> StateRecord {
        let mut record = StateRecord { id: String::new(), rev: None, entries: BTreeMap::new() };
        for (name, value) in doc {
            match (name.as_str(), value) {
                ("_id", Value::String(id)) => record.id = id,
                ("_rev", Value::String(rev)) => record.rev = Some(rev),
                (name, _) if name.starts_with('_') => {}
                (_, value) => {
                    if let Ok(entry) = serde_json::from_value(value) {
                        record.entries.insert(name, entry);
                    }
                }
            }
        }
        record
    }

    pub(super) fn entry(&self, ext: &str) -> Option<&StateEntry> {
        self.entries.get(ext)
    }

    pub(super) fn entry_mut(&mut self, ext: &str) -> Option<&mut StateEntry> {
        self.entries.get_mut(ext)
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = (&String, &StateEntry)> {
        self.entries.iter()
    }

    pub(super) fn set(&mut self, ext: &str, entry: StateEntry) {
        self.entries.insert(ext.to_string(), entry);
    }

    pub(super) fn remove(&mut self, ext: &str) -> Option<StateEntry> {
        self.entries.remove(ext)
    }

    /// The record to write: its text is the entries' texts (see [`StateEntry::text`]).
    pub(super) fn into_record(self) -> Record {
        let texts: Vec<(String, String)> = self.entries.iter().map(|(ext, e)| (ext.clone(), e.text())).collect();
        let body = crate::json_text::object(texts.iter().map(|(ext, text)| (ext.as_str(), text.as_str())));
        Record::Text { id: self.id, rev: self.rev, body }
    }

    /// The write that deletes the record (its source is gone); `None` when it was never stored.
    pub(super) fn into_tombstone(self) -> Option<Record> {
        let rev = self.rev?;
        Some(Record::Doc(crate::model::tombstone(&self.id, Some(Value::String(rev)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_reads_back_what_it_wrote() {
        let mut record = StateRecord::new("rc!x!s");
        let entry = StateEntry { error: false, fingerprint: "fp".into(), outputs: vec!["a".into(), "b\"c".into()], rev: "1-x".into() };
        record.set("ext.one", entry.clone());
        record.set("ext.two", StateEntry { error: true, ..entry.clone() });
        let Record::Text { id, rev, body } = record.clone().into_record() else { panic!("a new record is text") };
        assert_eq!((id.as_str(), rev), ("rdstate!rc!x!s", None));
        let mut doc: Doc = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["ext.one"], json!({"error": false, "fingerprint": "fp", "outputs": ["a", "b\"c"], "rev": "1-x"}));
        doc.insert("_id".into(), json!(id));
        doc.insert("_rev".into(), json!("3-y"));
        doc.insert("ext.bad".into(), json!([1]));
        let back = StateRecord::from_doc(doc);
        assert_eq!(back.entry("ext.one"), Some(&entry));
        assert!(back.entry("ext.two").is_some_and(|e| e.error && e.is_for("1-x", "fp")));
        assert!(back.entry("ext.bad").is_none(), "an entry that cannot be read is absent");
        assert!(matches!(back.clone().into_record(), Record::Text { rev: Some(r), .. } if r == "3-y"));
        assert!(back.into_tombstone().is_some());
        assert!(StateRecord::new("x").into_tombstone().is_none());
    }
}
