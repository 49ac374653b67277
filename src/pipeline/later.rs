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

use crate::store::{Doc, Record, Store, StoreError};

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

    /// Drops the values of `ext` (every extension's with `None`); whether there were any.
    pub(super) fn remove(&mut self, ext: Option<&str>) -> bool {
        let before = self.values.len();
        self.values.retain(|id, _| ext.is_some_and(|e| e != id));
        self.changed |= self.values.len() != before;
        self.values.len() != before
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

/// Prefix of the shared queue's records (`--share`). The later_handlers rebuild what many
/// sources share (a conversation from its messages, a summary, a group's counts), which two
/// workers running them at once would each build from what it had seen: so one worker runs
/// them all — the one holding the lease of [`super::share::LATER_SLICE`] — and the others leave
/// their values to it. Each page of a shared worker that gave values writes them in a record of
/// its own, written once and deleted by the runner with the page that ran them: no record is
/// changed by two workers.
pub(super) const SHARED_PREFIX: &str = "rdlater!shared!";
/// The shared queue's record into which `retry-errors` puts back the values of a failed call.
pub(super) const SHARED_RETRY: &str = "rdlater!shared!retry";
/// How soon the runner looks again for values after the feed moved, or a look found some.
/// The others' values come a page after the changes that gave them, so it looks this often
/// [`QUICK_LOOKS`] times; then each look that finds none doubles the wait, up to [`MAX_AGE`].
const FIRST_LOOK: Duration = Duration::from_millis(500);
const QUICK_LOOKS: u32 = 6;
/// Records read per request when the runner looks.
const LOOK_PAGE: usize = 500;

/// Every record whose id starts with `prefix`, a page at a time.
pub(super) fn all_records(store: &dyn Store, prefix: &str) -> Result<Vec<Doc>, StoreError> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.records_after(prefix, after.as_deref(), LOOK_PAGE)?;
        let full = page.len() >= LOOK_PAGE;
        after = page.last().and_then(|d| d.get("_id")).and_then(Value::as_str).map(str::to_string);
        found.extend(page);
        if !full {
            return Ok(found);
        }
    }
}

/// A shared worker's side of the shared queue: the records its pages write, and — for the
/// runner — the records it took in, to be deleted with the page that runs their values.
#[derive(Debug)]
pub(super) struct SharedQueue {
    /// This run's records are `<SHARED_PREFIX><run>!<n>`.
    run: String,
    written: u64,
    /// Records whose values are in the queue being run: (id, revision).
    taken: Vec<(String, String)>,
    last_look: Instant,
    wait: Duration,
    /// Looks that found nothing since the feed last moved or a look found something.
    empty_looks: u32,
    /// The queue of a run without `--share` (the default checkpoint's) was looked at.
    looked_at_unshared: bool,
}

impl SharedQueue {
    pub(super) fn new() -> SharedQueue {
        SharedQueue {
            run: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            written: 0,
            taken: Vec::new(),
            last_look: Instant::now(),
            wait: FIRST_LOOK,
            empty_looks: 0,
            looked_at_unshared: false,
        }
    }

    /// Takes in the values of the queue's records `found`.
    fn take_in(&mut self, found: &[Doc], queue: &mut LaterQueue) {
        for record in found {
            let text = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_string);
            let (Some(id), Some(rev)) = (text("_id"), text("_rev")) else { continue };
            for (ext, waiting) in LaterQueue::from_record(Some(record)).values {
                queue.extend(&ext, waiting.list);
            }
            self.taken.push((id, rev));
        }
    }

    /// For a run without `--share`: takes in every value the shared queue holds (left when the
    /// daemons stopped sharing the work), to be deleted with the page that first writes `queue`.
    pub(super) fn adopt_all(store: &dyn Store, queue: &mut LaterQueue) -> Result<Vec<Record>, StoreError> {
        let mut shared = SharedQueue::new();
        let found = all_records(store, SHARED_PREFIX)?;
        shared.take_in(&found, queue);
        Ok(shared.page_records(&mut LaterQueue::default()))
    }

    /// Records were taken in whose deletion is not yet in a page.
    pub(super) fn holds_taken(&self) -> bool {
        !self.taken.is_empty()
    }

    /// Leaves the records taken in where they are (their values did not run): the next look
    /// takes them again.
    pub(super) fn forget_taken(&mut self) {
        self.taken.clear();
    }

    /// The feed moved: values may follow soon.
    pub(super) fn moved(&mut self) {
        self.wait = FIRST_LOOK;
        self.empty_looks = 0;
    }

    /// Whether the runner should look for values now: soon after the feed went quiet, and
    /// however busy the feed, once [`MAX_AGE`] has passed.
    pub(super) fn look_due(&self, quiet: bool) -> bool {
        let since = self.last_look.elapsed();
        (quiet && since >= self.wait) || since >= MAX_AGE
    }

    /// Takes every value waiting in the shared queue into `queue`; how many records held them.
    /// The first look also takes the queue a run without `--share` left.
    pub(super) fn take_waiting(&mut self, store: &dyn Store, queue: &mut LaterQueue) -> Result<usize, StoreError> {
        self.last_look = Instant::now();
        let mut found = Vec::new();
        if !self.looked_at_unshared {
            // And the queues of shared workers of builds that kept one each (before 2026-12-02).
            found.extend(store.get_records(&[later_id(super::UNSHARED_CHECKPOINT)])?.into_iter().flatten());
            found.extend(all_records(store, &later_id(&super::share::checkpoint_of("")))?);
            self.looked_at_unshared = true;
        }
        found.extend(all_records(store, SHARED_PREFIX)?);
        self.take_in(&found, queue);
        if found.is_empty() {
            self.empty_looks += 1;
            if self.empty_looks > QUICK_LOOKS {
                self.wait = (self.wait * 2).min(MAX_AGE);
            }
        } else {
            self.moved();
        }
        Ok(found.len())
    }

    /// The records a page writes: the values `queue` holds (the page's own, not run) in a new
    /// record of the shared queue, and the records taken in deleted — their values run by this
    /// page.
    pub(super) fn page_records(&mut self, queue: &mut LaterQueue) -> Vec<Record> {
        let mut records: Vec<Record> = std::mem::take(&mut self.taken)
            .into_iter()
            .map(|(id, rev)| Record::Doc(crate::model::tombstone(&id, Some(Value::String(rev)))))
            .collect();
        if !queue.is_empty() {
            queue.oldest = None;
            let values = std::mem::take(&mut queue.values);
            let mut saved = LaterQueue { values, oldest: None, changed: true };
            if let Some(text) = saved.saved() {
                self.written += 1;
                let id = format!("{SHARED_PREFIX}{}!{:010}", self.run, self.written);
                records.push(queue_record(&id, None, &text));
            }
        }
        records
    }
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
    fn shared_values_are_written_once_taken_in_together_and_deleted_with_the_page_that_ran_them() {
        use crate::store::embedded::EmbeddedStore;
        use crate::store::WriteBatch;
        let dir = std::env::temp_dir().join(format!("rd-shared-later-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir.join("db")).unwrap();
        let write = |records: Vec<Record>| {
            let written = store.write(WriteBatch { records, ..WriteBatch::default() }).unwrap();
            assert!(written.records.iter().all(|r| matches!(r, crate::store::WriteResult::Ok { .. })), "{written:?}");
        };
        // Two workers' pages, and a queue a run without --share left.
        let (mut a, mut b) = (SharedQueue::new(), SharedQueue::new());
        let mut page = LaterQueue::default();
        page.extend("ext", vec![json!(1), json!(2)]);
        write(a.page_records(&mut page));
        assert!(page.is_empty(), "the values went to the record");
        page.extend("ext", vec![json!(2), json!(3)]);
        write(b.page_records(&mut page));
        page.extend("other", vec![json!("x")]);
        write(a.page_records(&mut page));
        write(vec![queue_record(&later_id(crate::pipeline::UNSHARED_CHECKPOINT), None, r#"{"ext":[4]}"#)]);
        // The runner takes them all in, each value once, and deletes the records with its page.
        let mut runner = SharedQueue::new();
        let mut queue = LaterQueue::default();
        assert_eq!(runner.take_waiting(&store, &mut queue).unwrap(), 4);
        let taken = queue.take();
        // The unshared queue first; the workers' records in the order of their runs' ids.
        let mut ext: Vec<i64> = taken["ext"].iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(ext[0], 4);
        ext.sort();
        assert_eq!(ext, vec![1, 2, 3, 4]);
        assert_eq!(taken["other"], vec![json!("x")]);
        write(runner.page_records(&mut queue));
        assert_eq!(store.records_after(SHARED_PREFIX, None, 10).unwrap().len(), 0);
        assert!(store.get_records(&[later_id(crate::pipeline::UNSHARED_CHECKPOINT)]).unwrap()[0].is_none());
        // Values taken in but not run (a stop came) stay in their records: the page writes only
        // its own values.
        page.extend("ext", vec![json!(5)]);
        write(a.page_records(&mut page));
        runner.take_waiting(&store, &mut queue).unwrap();
        runner.forget_taken();
        let mut own = LaterQueue::default();
        own.extend("ext", vec![json!(6)]);
        let records = runner.page_records(&mut own);
        assert_eq!(records.len(), 1, "the page's own values, nothing deleted");
        write(records);
        let mut left: Vec<Value> = store.records_after(SHARED_PREFIX, None, 10).unwrap().iter().map(|r| r["values"].clone()).collect();
        left.sort_by_key(|v| v.to_string());
        assert_eq!(left, vec![json!({"ext": [5]}), json!({"ext": [6]})]);
        // A run without --share takes them up, to delete them with its first page.
        let mut unshared = LaterQueue::default();
        let deletions = SharedQueue::adopt_all(&store, &mut unshared).unwrap();
        assert_eq!(deletions.len(), 2);
        let mut values: Vec<i64> = unshared.take()["ext"].iter().map(|v| v.as_i64().unwrap()).collect();
        values.sort();
        assert_eq!(values, vec![5, 6]);
        write(deletions);
        assert!(store.records_after(SHARED_PREFIX, None, 10).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn is_due_when_large() {
        let mut q = LaterQueue::default();
        q.extend("a", (0..MAX_VALUES).map(|i| json!(i)).collect());
        assert!(q.due());
    }
}
