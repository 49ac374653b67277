//! Values given to `process_later`, held until their extension's `later_handler` runs.
//!
//! A later_handler rebuilds something from the store (a conversation's summary, a group's
//! counts), so running it once per page of changes repeats the same rebuild many times while a
//! message's documents cascade through the pages — and a group summary reads every unread
//! conversation each time. The queue therefore collects distinct values across pages and
//! the pipeline runs the handlers when the feed is drained (everything written, nothing new),
//! or sooner when the queue grows large or old ([`LaterQueue::due`]).
//!
//! The queue is a record in the store (`rdlater!<checkpoint id>`, see
//! `Store::bulk_write_with_records`), written in the same bulk write as the page that changed
//! it, before the page's state records: a source is never
//! recorded as done while the values it gave are not yet kept, so a crash loses none of them
//! (such a source would not run again). On the embedded store that write is one transaction.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::store::{Doc, Record};

/// Prefix of the record holding the values waiting for later_handlers.
pub(super) const LATER_PREFIX: &str = "rdlater!";

/// The id of the queue record of the run whose checkpoint is `checkpoint_id`.
pub(super) fn later_id(checkpoint_id: &str) -> String {
    format!("{LATER_PREFIX}{checkpoint_id}")
}

/// The queue's record: `{"values": {ext id: [values]}}`, with `values` the text
/// [`LaterQueue::saved`] gave. Its one text form.
pub(super) fn queue_record(id: &str, rev: Option<String>, values: &str) -> Record {
    Record::Text { id: id.to_string(), rev, body: format!("{{\"values\":{values}}}") }
}

/// Moves the values of queue record `from` into queue record `to` (a shared worker's queue,
/// left when it went, into the run that takes over its slices), in one write: `to` written with
/// them, `from` deleted, each at the revision read. A write that conflicts (someone adopted it
/// meanwhile) moves nothing; a crash between the two leaves the values in both, and a value
/// run twice by a later_handler gives what it gave once. How many values moved.
pub(super) fn adopt(store: &dyn crate::store::Store, from: &str, to: &str) -> Result<usize, crate::store::StoreError> {
    let [old, mine] = <[Option<Doc>; 2]>::try_from(store.get_records(&[from.to_string(), to.to_string()])?)
        .map_err(|_| crate::store::StoreError::BadRequest("the store answered another number of records".into()))?;
    let Some(old) = old else { return Ok(0) };
    let rev = |d: &Doc| d.get("_rev").and_then(Value::as_str).map(str::to_string);
    let mut queue = LaterQueue::from_record(mine.as_ref());
    let moved = LaterQueue::from_record(Some(&old));
    let count = moved.values.values().map(|w| w.list.len()).sum();
    for (ext, waiting) in moved.values {
        queue.extend(&ext, waiting.list);
    }
    let mut gone = serde_json::Map::new();
    gone.insert("_id".into(), Value::String(from.to_string()));
    gone.insert("_rev".into(), old.get("_rev").cloned().unwrap_or(Value::Null));
    gone.insert("_deleted".into(), Value::Bool(true));
    let saved = queue.saved().unwrap_or_else(|| "{}".to_string());
    let records = vec![queue_record(to, mine.as_ref().and_then(rev), &saved), Record::Doc(gone)];
    let written = store.write(crate::store::WriteBatch { records, ..Default::default() })?;
    Ok(if written.records.iter().all(|r| matches!(r, crate::store::WriteResult::Ok { .. })) { count } else { 0 })
}

/// Distinct values per extension above which the queue is run without waiting for the drain.
const MAX_VALUES: usize = 20_000;
/// Age of the oldest waiting value after which the queue is run without waiting for the drain,
/// so a daemon under steady load still refreshes its summaries.
const MAX_AGE: Duration = Duration::from_secs(10);

/// Waiting values per extension id, each value once, in the order first given.
#[derive(Debug, Default, Clone)]
pub(super) struct LaterQueue {
    values: BTreeMap<String, Waiting>,
    oldest: Option<Instant>,
    /// Changed since [`LaterQueue::saved`] was last called.
    changed: bool,
}

impl LaterQueue {
    /// The queue a record holds (see [`queue_record`]); no record is an empty queue.
    pub(super) fn from_record(record: Option<&Doc>) -> LaterQueue {
        LaterQueue::from_saved(record.and_then(|d| d.get("values")))
    }

    /// The queue as saved (`{ext id: [values]}`); anything else is an empty queue.
    pub(super) fn from_saved(saved: Option<&Value>) -> LaterQueue {
        let mut queue = LaterQueue::default();
        for (ext, values) in saved.and_then(Value::as_object).into_iter().flatten() {
            queue.extend(ext, values.as_array().cloned().unwrap_or_default());
        }
        queue.changed = false;
        queue
    }

    /// The JSON text of the queue to save (`{ext id: [values]}`), if it changed since the last
    /// call. Made of each value's text kept since it came (the queue is saved with nearly every
    /// page, and grows to thousands of values).
    pub(super) fn saved(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let lists: Vec<(&str, String)> = self.values.iter().map(|(ext, waiting)| (ext.as_str(), format!("[{}]", waiting.text))).collect();
        Some(crate::json_text::object(lists.iter().map(|(ext, list)| (*ext, list.as_str()))))
    }

    pub(super) fn extend(&mut self, ext: &str, values: Vec<Value>) {
        if values.is_empty() {
            return;
        }
        let waiting = self.values.entry(ext.to_string()).or_default();
        for v in values {
            let text = v.to_string();
            if !waiting.seen.contains(&text) {
                if !waiting.text.is_empty() {
                    waiting.text.push(',');
                }
                waiting.text.push_str(&text);
                waiting.seen.insert(text);
                waiting.list.push(v);
                self.changed = true;
            }
        }
        self.oldest.get_or_insert_with(Instant::now);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether the queue should run now rather than at the drain.
    pub(super) fn due(&self) -> bool {
        self.values.values().any(|w| w.list.len() >= MAX_VALUES) || self.oldest.is_some_and(|t| t.elapsed() >= MAX_AGE)
    }

    /// Empties the queue, giving each extension's values.
    pub(super) fn take(&mut self) -> BTreeMap<String, Vec<Value>> {
        self.oldest = None;
        self.changed |= !self.values.is_empty();
        std::mem::take(&mut self.values).into_iter().map(|(ext, waiting)| (ext, waiting.list)).collect()
    }
}

/// One extension's waiting values.
#[derive(Debug, Default, Clone)]
struct Waiting {
    list: Vec<Value>,
    /// Each value's JSON text, to keep it once.
    seen: HashSet<String>,
    /// The values' texts joined by commas: the saved list without its brackets.
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_each_value_once_in_first_order_and_round_trips_through_the_store() {
        let mut q = LaterQueue::default();
        assert!(q.is_empty() && !q.due() && q.saved().is_none());
        q.extend("a", vec![json!(["email", "x"]), json!(1), json!(["email", "x"])]);
        q.extend("a", vec![json!(2), json!(1)]);
        q.extend("b", vec![json!("t")]);
        let saved: Value = serde_json::from_str(&q.saved().unwrap()).unwrap();
        assert_eq!(saved, json!({"a": [["email", "x"], 1, 2], "b": ["t"]}));
        q.extend("a", vec![json!(1)]);
        assert!(q.saved().is_none(), "nothing new: nothing to save");
        let mut back = LaterQueue::from_saved(Some(&saved));
        assert!(back.saved().is_none());
        back.extend("a", vec![json!(2)]);
        let taken = back.take();
        assert_eq!(taken["a"], vec![json!(["email", "x"]), json!(1), json!(2)]);
        assert!(back.is_empty());
        assert_eq!(back.saved().as_deref(), Some("{}"), "emptied: saved empty");
        assert!(LaterQueue::from_saved(Some(&json!(null))).is_empty());
    }

    #[test]
    fn is_due_when_large() {
        let mut q = LaterQueue::default();
        q.extend("a", (0..MAX_VALUES).map(|i| json!(i)).collect());
        assert!(q.due());
    }
}
