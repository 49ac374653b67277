//! One conformance suite, run against both stores: the embedded SQLite store and a real
//! PouchDB Server (CouchDB protocol) on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use raindrop::store::couch::{inline_attachment, CouchStore, RetryPolicy};
use raindrop::store::embedded::EmbeddedStore;
use raindrop::store::{parse_doc, Attachment, Doc, Durability, Find, Record, Seq, Store, WriteBatch, WriteResult};
use serde_json::{json, Value};

use crate::support::{PouchServer, TempDir};

/// A store under test plus whatever keeps it alive.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _server: Option<PouchServer>,
}

pub fn embedded() -> Fixture {
    let dir = TempDir::new("store");
    let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
    Fixture { store: Arc::new(store), _dir: Some(dir), _server: None }
}

pub fn pouchdb() -> Fixture {
    let server = PouchServer::start();
    let store = CouchStore::open(&server.db_url("conformance"), RetryPolicy::default()).unwrap();
    Fixture { store: Arc::new(store), _dir: None, _server: Some(server) }
}

fn doc(v: Value) -> Doc {
    v.as_object().unwrap().clone()
}

fn ok_rev(r: &WriteResult) -> String {
    match r {
        WriteResult::Ok { rev, .. } => rev.clone(),
        other => panic!("expected ok, got {other:?}"),
    }
}

fn write1(s: &dyn Store, d: Value) -> WriteResult {
    s.bulk_write(vec![doc(d)]).unwrap().pop().unwrap()
}

/// All changes from the start, following pages of `limit`.
fn all_changes(s: &dyn Store, limit: usize) -> Vec<raindrop::store::Change> {
    let mut since = Seq::zero();
    let mut out = Vec::new();
    loop {
        let page = s.changes(&since, limit, false).unwrap();
        if page.changes.is_empty() {
            return out;
        }
        assert!(page.changes.len() <= limit);
        out.extend(page.changes);
        since = page.last_seq;
    }
}

fn crud_with_revisions(s: &dyn Store) {
    let r1 = ok_rev(&write1(s, json!({"_id": "a", "n": 1})));
    assert!(r1.starts_with("1-"), "{r1}");
    let got = s.get("a", false).unwrap().unwrap();
    assert_eq!(got["n"], 1);
    assert_eq!(got["_rev"], r1.as_str());
    let r2 = ok_rev(&write1(s, json!({"_id": "a", "_rev": r1, "n": 2})));
    assert!(r2.starts_with("2-"), "{r2}");
    assert_eq!(s.get("a", false).unwrap().unwrap()["n"], 2);
    let r3 = ok_rev(&write1(s, json!({"_id": "a", "_rev": r2, "_deleted": true})));
    assert!(r3.starts_with("3-"));
    assert!(s.get("a", false).unwrap().is_none());
    assert!(s.get("never", false).unwrap().is_none());
    // A deleted document can be created again, without a rev.
    let r4 = ok_rev(&write1(s, json!({"_id": "a", "n": 4})));
    assert!(r4.starts_with("4-"), "{r4}");
    let info = s.info().unwrap();
    assert_eq!(info.doc_count, 1);
}

fn conflicts(s: &dyn Store) {
    let r1 = ok_rev(&write1(s, json!({"_id": "c", "v": 1})));
    // No rev for an existing document, and a stale rev, are both conflicts.
    assert_eq!(write1(s, json!({"_id": "c", "v": 2})), WriteResult::Conflict { id: "c".into() });
    let r2 = ok_rev(&write1(s, json!({"_id": "c", "_rev": r1, "v": 2})));
    assert_eq!(write1(s, json!({"_id": "c", "_rev": r1, "v": 3})), WriteResult::Conflict { id: "c".into() });
    // Per-document results in one bulk write.
    let res = s
        .bulk_write(vec![
            doc(json!({"_id": "c", "_rev": r2, "v": 3})),
            doc(json!({"_id": "c", "_rev": r2, "v": 4})),
            doc(json!({"_id": "d"})),
        ])
        .unwrap();
    // Two updates of one revision: exactly one wins (PouchDB Server does not always let the
    // first one win), and the document holds the winner's value.
    let winners: Vec<usize> = (0..2).filter(|&i| matches!(res[i], WriteResult::Ok { .. })).collect();
    assert_eq!(winners.len(), 1, "{res:?}");
    assert_eq!(res[1 - winners[0]], WriteResult::Conflict { id: "c".into() });
    assert!(matches!(res[2], WriteResult::Ok { .. }));
    assert_eq!(s.get("c", false).unwrap().unwrap()["v"], 3 + winners[0]);
}

fn tombstones_in_the_feed(s: &dyn Store) {
    let r = ok_rev(&write1(s, json!({"_id": "t", "x": 1})));
    write1(s, json!({"_id": "u"}));
    ok_rev(&write1(s, json!({"_id": "t", "_rev": r, "_deleted": true})));
    let changes = all_changes(s, 100);
    // Each document appears once, at its latest change; the deletion is last.
    assert_eq!(changes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["u", "t"]);
    assert!(changes[1].deleted && !changes[0].deleted);
    assert!(changes[1].rev.starts_with("2-"));
}

fn the_feed_and_get_many_give_each_documents_text(s: &dyn Store) {
    let mut with_att = doc(json!({"_id": "att", "k": "é 東京", "n": [1, {"a": null}]}));
    with_att.insert("_attachments".into(), json!({ "raw": inline_attachment("text/plain", b"hello") }));
    s.bulk_write(vec![with_att, doc(json!({"_id": "plain", "s": "\"quoted\" \\ line\nbreak"})), doc(json!({"_id": "empty"}))]).unwrap();
    let r = ok_rev(&write1(s, json!({"_id": "gone", "x": 1})));
    ok_rev(&write1(s, json!({"_id": "gone", "_rev": r, "_deleted": true})));
    let page = s.changes(&Seq::zero(), 100, true).unwrap();
    let bare = s.changes(&Seq::zero(), 100, false).unwrap();
    assert_eq!(page.last_seq, bare.last_seq);
    assert_eq!(page.changes.len(), 4);
    for (c, b) in page.changes.iter().zip(&bare.changes) {
        assert_eq!((&c.id, &c.rev, c.deleted, &c.seq), (&b.id, &b.rev, b.deleted, &b.seq));
        assert!(b.doc.is_none());
        let from_feed = parse_doc(c.doc.as_deref().unwrap()).unwrap();
        if c.deleted {
            assert_eq!(from_feed.get("_deleted"), Some(&json!(true)), "{}", c.id);
            continue;
        }
        let stored = s.get(&c.id, false).unwrap().unwrap();
        assert_eq!(from_feed, stored, "{}", c.id);
        let many = s.get_many(std::slice::from_ref(&c.id), None).unwrap();
        assert_eq!(parse_doc(many[0].as_deref().unwrap()).unwrap(), stored, "{}", c.id);
    }
}

fn ids_in_feed_order(changes: &[raindrop::store::Change]) -> Vec<String> {
    changes.iter().map(|c| c.id.clone()).collect()
}

fn since_paging_with_limit(s: &dyn Store) {
    let docs: Vec<Doc> = (0..25).map(|i| doc(json!({"_id": format!("p{i:02}"), "i": i}))).collect();
    s.bulk_write(docs).unwrap();
    // Every document exactly once (the order within one bulk write is the server's business:
    // PouchDB Server may commit its documents in a different order).
    let changes = all_changes(s, 7);
    let mut ids: Vec<_> = changes.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    let expected: Vec<_> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(ids, expected);
    // Handing back a page's last seq continues exactly after it: no overlap, nothing skipped.
    let page = s.changes(&Seq::zero(), 10, true).unwrap();
    let next = s.changes(&page.last_seq, 10, true).unwrap();
    let first: Vec<_> = page.changes.iter().map(|c| c.id.clone()).collect();
    let second: Vec<_> = next.changes.iter().map(|c| c.id.clone()).collect();
    assert_eq!(first, ids_in_feed_order(&changes)[..10]);
    assert_eq!(second, ids_in_feed_order(&changes)[10..20]);
    for c in &next.changes {
        assert_eq!(parse_doc(c.doc.as_deref().unwrap()).unwrap()["_id"], c.id.as_str());
    }
    let end = s.changes(&all_changes(s, 100).last().unwrap().seq, 10, false).unwrap();
    assert!(end.changes.is_empty());
}

fn waiting_feed_wakes_on_write(s: &Arc<dyn Store>) {
    write1(&**s, json!({"_id": "w0"}));
    let since = s.changes(&Seq::zero(), 100, false).unwrap().last_seq;
    let writer = s.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        write1(&*writer, json!({"_id": "w1"}));
    });
    let start = Instant::now();
    assert!(s.wait_changes(&since, Duration::from_secs(20)).unwrap(), "a change came");
    let waited = start.elapsed();
    t.join().unwrap();
    let page = s.changes(&since, 10, false).unwrap();
    assert_eq!(page.changes.len(), 1, "{page:?}");
    assert_eq!(page.changes[0].id, "w1");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(10), "{waited:?}");
    // With nothing new, it times out saying so.
    let start = Instant::now();
    assert!(!s.wait_changes(&page.last_seq, Duration::from_millis(300)).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(250));
    // Something there already: no wait.
    assert!(s.wait_changes(&since, Duration::from_secs(20)).unwrap());
}

fn unicode_ids(s: &dyn Store) {
    let ids = ["caf\u{e9}", "\u{6771}\u{4eac}/\u{65e5}\u{672c}", "emoji-\u{1f600}", "rc!email.WyJhIiwgImIiXQ==!rd.msg.body", "sp ace?&#%"];
    for id in ids {
        ok_rev(&write1(s, json!({"_id": id, "v": id})));
        let got = s.get(id, false).unwrap().unwrap_or_else(|| panic!("{id} not found"));
        assert_eq!(got["_id"], id);
        assert_eq!(got["v"], id);
    }
    let many = s.get_many(&ids.iter().map(|s| s.to_string()).chain(["missing".to_string()]).collect::<Vec<_>>(), None).unwrap();
    assert_eq!(many.len(), 6);
    assert!(many[5].is_none());
    for (id, text) in ids.iter().zip(&many) {
        assert_eq!(parse_doc(text.as_deref().unwrap()).unwrap()["_id"], *id);
    }
}

fn eight_megabyte_document(s: &dyn Store) {
    let big: String = "\u{e9}abcdefghij\u{1f600}".repeat(8 * 1024 * 1024 / 16);
    assert!(big.len() >= 8 * 1024 * 1024);
    ok_rev(&write1(s, json!({"_id": "big", "text": big})));
    let got = s.get("big", false).unwrap().unwrap();
    assert_eq!(got["text"].as_str().unwrap(), big);
}

fn binary_attachments(s: &dyn Store) {
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let mut d = doc(json!({"_id": "att", "x": 1}));
    d.insert("_attachments".into(), json!({ "raw": inline_attachment("application/octet-stream", &data) }));
    let r1 = ok_rev(&write1(s, Value::Object(d)));
    let got = s.get_attachment("att", "raw").unwrap().unwrap();
    assert_eq!(got.data, data);
    // Stubs when not asked for bodies; inline base64 when asked.
    let stub = s.get("att", false).unwrap().unwrap();
    assert_eq!(stub["_attachments"]["raw"]["stub"], true);
    let full = s.get("att", true).unwrap().unwrap();
    let b64 = full["_attachments"]["raw"]["data"].as_str().unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64).unwrap(), data);
    // put_attachment adds one; an update that keeps the stubs keeps the attachments.
    let second = Attachment { content_type: "text/plain".into(), data: b"\x00\xffhello".to_vec() };
    let r2 = s.put_attachment("att", &r1, "second", &second).unwrap();
    assert_eq!(s.get_attachment("att", "second").unwrap().unwrap().data, b"\x00\xffhello");
    let mut d = s.get("att", false).unwrap().unwrap();
    assert_eq!(d["_rev"], r2.as_str());
    d.insert("x".into(), json!(2));
    ok_rev(&s.bulk_write(vec![d]).unwrap()[0]);
    assert_eq!(s.get_attachment("att", "raw").unwrap().unwrap().data, data);
    assert!(s.get_attachment("att", "nope").unwrap().is_none());
    assert!(matches!(s.put_attachment("att", &r1, "x", &second), Err(raindrop::store::StoreError::Conflict { .. })));
}

fn bulk_write_10000(s: &dyn Store) {
    let docs: Vec<Doc> = (0..10_000).map(|i| doc(json!({"_id": format!("bulk{i:05}"), "i": i, "pad": "x".repeat(100)}))).collect();
    let res = s.bulk_write(docs).unwrap();
    assert_eq!(res.len(), 10_000);
    assert!(res.iter().all(|r| matches!(r, WriteResult::Ok { .. })));
    assert_eq!(s.info().unwrap().doc_count, 10_000);
    let changes = all_changes(s, 2500);
    assert_eq!(changes.len(), 10_000);
    let ids: std::collections::HashSet<_> = changes.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 10_000);
}

fn checkpoint_documents(s: &dyn Store) {
    assert!(s.get_local("ckpt").unwrap().is_none());
    s.put_local("ckpt", &json!({"seq": "5"})).unwrap();
    s.put_local("ckpt", &json!({"seq": "9", "note": "\u{e9}"})).unwrap();
    assert_eq!(s.get_local("ckpt").unwrap().unwrap(), json!({"seq": "9", "note": "\u{e9}"}));
    // Checkpoints never show in the feed or the counts.
    assert!(all_changes(s, 100).is_empty());
    assert_eq!(s.info().unwrap().doc_count, 0);
    // Deleted, it is gone; deleting one that is not there is no error; written again, it is back.
    s.delete_local("ckpt").unwrap();
    assert!(s.get_local("ckpt").unwrap().is_none());
    s.delete_local("ckpt").unwrap();
    s.put_local("ckpt", &json!({"seq": "10"})).unwrap();
    assert_eq!(s.get_local("ckpt").unwrap().unwrap(), json!({"seq": "10"}));
}

/// The documents of `schema` (with `field`, those where it has the value), parsed.
fn find(s: &dyn Store, schema: &str, field: Option<(&str, &Value)>, limit: usize) -> Result<Vec<Doc>, raindrop::store::StoreError> {
    s.find_docs(schema, field, limit)
}

/// [`Store::find`] for many values of `field`, parsed.
fn find_each(s: &dyn Store, schema: &str, field: &str, values: &[Value], limit: usize, fields: Option<&[String]>) -> Vec<Vec<Doc>> {
    let found = s.find(&Find { schema, by: Some((field, values)), limit, fields }).unwrap();
    found.into_iter().map(|l| l.iter().map(|t| parse_doc(t).unwrap()).collect()).collect()
}

fn find_by_schema_and_field(s: &dyn Store) {
    let docs: Vec<Doc> = (0..30)
        .map(|i| {
            doc(json!({"_id": format!("rc!t.{i}!rd.test.{}", if i % 3 == 0 { "three" } else { "other" }),
                              "rd_schema_id": if i % 3 == 0 { "rd.test.three" } else { "rd.test.other" },
                              "name": format!("n{}", i % 2), "i": i, "flag": i % 2 == 0}))
        })
        .collect();
    s.bulk_write(docs).unwrap();
    let threes = find(s, "rd.test.three", None, 100).unwrap();
    assert_eq!(threes.len(), 10);
    let n0 = find(s, "rd.test.three", Some(("name", &json!("n0"))), 100).unwrap();
    let mut found: Vec<u64> = n0.iter().map(|d| d["i"].as_u64().unwrap()).collect();
    found.sort();
    assert_eq!(found, vec![0, 6, 12, 18, 24]);
    assert_eq!(find(s, "rd.test.other", Some(("i", &json!(7))), 100).unwrap().len(), 1);
    assert_eq!(find(s, "rd.test.other", Some(("flag", &json!(true))), 100).unwrap().len(), 10);
    assert_eq!(find(s, "rd.test.three", None, 3).unwrap().len(), 3);
    assert!(find(s, "rd.test.none", None, 10).unwrap().is_empty());
    // Deleted documents are not found.
    let d = s.get("rc!t.0!rd.test.three", false).unwrap().unwrap();
    s.bulk_write(vec![doc(json!({"_id": d["_id"], "_rev": d["_rev"], "_deleted": true}))]).unwrap();
    assert_eq!(find(s, "rd.test.three", None, 100).unwrap().len(), 9);
    assert_eq!(find(s, "rd.test.three", Some(("name", &json!("n0"))), 100).unwrap().len(), 4);
    // Writes after a field was first asked about are found; changed values move.
    let d = s.get("rc!t.6!rd.test.three", false).unwrap().unwrap();
    let mut changed = d.clone();
    changed.insert("name".into(), json!("n1"));
    s.bulk_write(vec![changed]).unwrap();
    assert_eq!(find(s, "rd.test.three", Some(("name", &json!("n0"))), 100).unwrap().len(), 3);
    s.bulk_write(vec![doc(json!({"_id": "rc!t.new!rd.test.three", "rd_schema_id": "rd.test.three", "name": "n0"}))]).unwrap();
    assert_eq!(find(s, "rd.test.three", Some(("name", &json!("n0"))), 100).unwrap().len(), 4);
    // Array values, objects, and membership in an array (`name[]`).
    s.bulk_write(vec![
        doc(json!({"_id": "rc!t.a1!rd.test.arr", "rd_schema_id": "rd.test.arr", "conv": ["conv", ["email", "x@y"]], "tags": ["a", "b"], "o": {"k": 1, "a": [2]}})),
        doc(json!({"_id": "rc!t.a2!rd.test.arr", "rd_schema_id": "rd.test.arr", "conv": ["conv", ["email", "z@y"]], "tags": ["b"]})),
    ]).unwrap();
    assert_eq!(find(s, "rd.test.arr", Some(("conv", &json!(["conv", ["email", "x@y"]]))), 10).unwrap().len(), 1);
    assert_eq!(find(s, "rd.test.arr", Some(("tags[]", &json!("b"))), 10).unwrap().len(), 2);
    assert_eq!(find(s, "rd.test.arr", Some(("tags[]", &json!("a"))), 10).unwrap().len(), 1);
    assert_eq!(find(s, "rd.test.arr", Some(("o", &json!({"a": [2], "k": 1}))), 10).unwrap().len(), 1);
}

fn reading_only_some_fields(s: &dyn Store) {
    s.bulk_write(vec![
        doc(json!({"_id": "rc!t.p1!rd.test.p", "rd_key": ["t", "p1"], "rd_schema_id": "rd.test.p", "k": "same", "big": "x".repeat(10_000), "n": 1, "nested": {"a": [1, "é"]}})),
        doc(json!({"_id": "rc!t.p2!rd.test.p", "rd_key": ["t", "p2"], "rd_schema_id": "rd.test.p", "k": "same", "n": 2})),
    ]).unwrap();
    let ids = vec!["rc!t.p1!rd.test.p".to_string(), "rc!missing!rd.test.p".to_string(), "rc!t.p2!rd.test.p".to_string()];
    let fields = vec!["n".to_string(), "nested".to_string(), "absent".to_string()];
    let parse = |t: &String| serde_json::from_str::<Value>(t).unwrap();
    let got = s.get_many(&ids, Some(&fields)).unwrap();
    assert_eq!(got[0].as_ref().map(parse), Some(json!({"rd_key": ["t", "p1"], "n": 1, "nested": {"a": [1, "é"]}})));
    assert_eq!(got[1], None);
    assert_eq!(got[2].as_ref().map(parse), Some(json!({"rd_key": ["t", "p2"], "n": 2})));
    let mut found: Vec<Value> =
        find_each(s, "rd.test.p", "k", &[json!("same")], 10, Some(&[])).remove(0).into_iter().map(Value::Object).collect();
    found.sort_by_key(|d| d.to_string());
    assert_eq!(found, vec![json!({"rd_key": ["t", "p1"]}), json!({"rd_key": ["t", "p2"]})]);
    let all = s.find(&Find { schema: "rd.test.p", by: None, limit: 10, fields: Some(&["n".to_string()]) }).unwrap();
    assert_eq!(all.len(), 1, "one list when asked by no field");
    assert_eq!(all[0].len(), 2);
    let each = find_each(s, "rd.test.p", "k", &[json!("same"), json!("other")], 10, Some(&["n".to_string(), "nested".to_string()]));
    let mut first: Vec<Value> = each[0].iter().cloned().map(Value::Object).collect();
    first.sort_by_key(|d| d.to_string());
    assert_eq!(first, vec![json!({"rd_key": ["t", "p1"], "n": 1, "nested": {"a": [1, "é"]}}), json!({"rd_key": ["t", "p2"], "n": 2})]);
    assert!(each[1].is_empty());
}

fn finding_for_many_values_at_once(s: &dyn Store) {
    s.bulk_write(
        (0..6)
            .map(|i| {
                doc(json!({"_id": format!("rc!t.e{i}!rd.test.e"), "rd_key": ["t", format!("e{i}")],
        "rd_schema_id": "rd.test.e", "group": ["g", i % 3], "n": i}))
            })
            .collect(),
    )
    .unwrap();
    let values = [json!(["g", 2]), json!(["g", 9]), json!(["g", 0]), json!(["g", 2])];
    let keys = |lists: Vec<Vec<Doc>>| -> Vec<Vec<Value>> {
        lists
            .into_iter()
            .map(|l| {
                let mut k: Vec<Value> = l.into_iter().map(|d| d["rd_key"].clone()).collect();
                k.sort_by_key(Value::to_string);
                k
            })
            .collect()
    };
    let expected = vec![
        vec![json!(["t", "e2"]), json!(["t", "e5"])],
        vec![],
        vec![json!(["t", "e0"]), json!(["t", "e3"])],
        vec![json!(["t", "e2"]), json!(["t", "e5"])],
    ];
    assert_eq!(keys(find_each(s, "rd.test.e", "group", &values, 100, None)), expected);
    let projected = find_each(s, "rd.test.e", "group", &values, 1, Some(&["n".to_string()]));
    assert!(projected.iter().all(|l| l.len() <= 1), "{projected:?}");
    assert_eq!(projected[0][0].len(), 2, "rd_key and n only: {projected:?}");
    assert!(find_each(s, "rd.test.e", "group", &[], 10, None).is_empty());
}

fn an_index_readied_before_the_documents_finds_them(s: &dyn Store) {
    // Readied while the schema has no documents: the writes that follow keep it up to date.
    s.index_field("rd.test.late", "tag").unwrap();
    s.index_field("rd.test.late", "tags[]").unwrap();
    s.bulk_write(
        (0..5)
            .map(|i| {
                doc(json!({"_id": format!("rc!t.l{i}!rd.test.late"), "rd_key": ["t", format!("l{i}")],
        "rd_schema_id": "rd.test.late", "tag": i % 2, "tags": [format!("x{i}"), "all"]}))
            })
            .collect(),
    )
    .unwrap();
    assert_eq!(find(s, "rd.test.late", Some(("tag", &json!(1))), 10).unwrap().len(), 2);
    assert_eq!(find(s, "rd.test.late", Some(("tags[]", &json!("all"))), 10).unwrap().len(), 5);
    assert_eq!(find(s, "rd.test.late", Some(("tags[]", &json!("x3"))), 10).unwrap().len(), 1);
    // Readying it again changes nothing.
    s.index_field("rd.test.late", "tag").unwrap();
    assert_eq!(find(s, "rd.test.late", Some(("tag", &json!(0))), 10).unwrap().len(), 3);
}

fn records_beside_documents(s: &dyn Store) {
    // Written with a page of documents, read back by id, updated at their revision only.
    let data = doc(json!({"_id": "rc!t.r!rd.test.r", "rd_key": ["t", "r"], "rd_schema_id": "rd.test.r", "n": 1}));
    // Records as documents, and one as text.
    let mut records: Vec<Record> = (0..2).map(|i| doc(json!({"_id": format!("rdtest!{i}"), "ext": {"done": i}})).into()).collect();
    records.push(Record::Text { id: "rdtest!2".into(), rev: None, body: r#"{"ext":{"done":2}}"#.into() });
    let checkpoint = json!({"seq": "x"});
    let written = s
        .write(WriteBatch {
            docs: vec![data],
            records,
            checkpoint: Some(("rdtest-ckpt", &checkpoint)),
            durability: Durability::Deferred,
            ..WriteBatch::default()
        })
        .unwrap();
    let (docs, recs) = (written.docs, written.records);
    assert!(matches!(docs[..], [WriteResult::Ok { .. }]), "{docs:?}");
    let revs: Vec<String> = recs.iter().map(ok_rev).collect();
    assert_eq!(s.get_local("rdtest-ckpt").unwrap(), Some(json!({"seq": "x"})));
    let ids: Vec<String> = ["rdtest!1", "rdtest!9", "rdtest!0"].iter().map(|s| s.to_string()).collect();
    let got = s.get_records(&ids).unwrap();
    assert_eq!(got[0].as_ref().unwrap()["ext"], json!({"done": 1}));
    assert_eq!(got[0].as_ref().unwrap()["_rev"], json!(revs[1]));
    assert!(got[1].is_none());
    // A stale revision is a conflict; the current one replaces; a delete removes.
    let stale = doc(json!({"_id": "rdtest!1", "ext": {"done": 7}}));
    let current = Record::Text { id: "rdtest!2".into(), rev: Some(revs[2].clone()), body: r#"{"ext":{"done":8}}"#.into() };
    let gone = doc(json!({"_id": "rdtest!0", "_rev": revs[0], "_deleted": true}));
    let recs = s.write(WriteBatch { records: vec![stale.into(), current, gone.into()], ..WriteBatch::default() }).unwrap().records;
    assert!(matches!(recs[0], WriteResult::Conflict { .. }), "{recs:?}");
    assert!(matches!(recs[1], WriteResult::Ok { .. }) && matches!(recs[2], WriteResult::Ok { .. }), "{recs:?}");
    let got = s.get_records(&["rdtest!0".into(), "rdtest!2".into()]).unwrap();
    assert!(got[0].is_none());
    assert_eq!(got[1].as_ref().unwrap()["ext"], json!({"done": 8}));
    // Listed by prefix, in pages.
    let first = s.records_after("rdtest!", None, 1).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["_id"], "rdtest!1");
    let rest = s.records_after("rdtest!", Some("rdtest!1"), 10).unwrap();
    assert_eq!(rest.iter().map(|d| d["_id"].clone()).collect::<Vec<_>>(), vec![json!("rdtest!2")]);
    assert!(s.records_after("rdtest!", Some("rdtest!2"), 10).unwrap().is_empty());
    assert!(s.records_after("rdtesu", None, 10).unwrap().is_empty());
    // Both stores keep them out of the documents' feed (CouchDB in a database of their own).
    assert!(all_changes(s, 100).iter().all(|c| !c.id.starts_with("rdtest!")), "records stay out of the feed");
    assert!(s.get("rdtest!2", false).unwrap().is_none(), "a record is not a document");
}

fn bookkeeping_documents_move_to_records(s: &dyn Store) {
    // A database from before kept its bookkeeping as documents.
    let old: Vec<Doc> = (0..3).map(|i| doc(json!({"_id": format!("rdold!{i}"), "n": i}))).collect();
    s.bulk_write(old).unwrap();
    write1(s, json!({"_id": "rdolder", "n": 9}));
    assert!(s.move_to_records("rdold!").unwrap() >= 3);
    let ids: Vec<String> = (0..3).map(|i| format!("rdold!{i}")).collect();
    let moved = s.get_records(&ids).unwrap();
    assert_eq!(
        moved.iter().map(|r| r.as_ref().map(|d| d["n"].clone())).collect::<Vec<_>>(),
        vec![Some(json!(0)), Some(json!(1)), Some(json!(2))]
    );
    assert!(ids.iter().all(|id| s.get(id, false).unwrap().is_none()), "no longer documents");
    assert!(s.get("rdolder", false).unwrap().is_some(), "only the prefix moves");
    assert_eq!(s.records_after("rdold!", None, 10).unwrap().len(), 3);
    // Moved records are written at their revision like any other.
    let rev = moved[0].as_ref().unwrap()["_rev"].as_str().unwrap().to_string();
    let again = doc(json!({"_id": "rdold!0", "_rev": rev, "n": 10}));
    assert!(matches!(
        s.write(WriteBatch { records: vec![again.into()], ..WriteBatch::default() }).unwrap().records[..],
        [WriteResult::Ok { .. }]
    ));
    assert_eq!(s.move_to_records("rdold!").unwrap(), 0, "nothing left to move");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { let f = super::embedded(); super::$name(&*f.store); } )*
            #[test] fn waiting_feed_wakes_on_write() { let f = super::embedded(); super::waiting_feed_wakes_on_write(&f.store); }
        }
        mod pouchdb {
            $( #[test] fn $name() { let f = super::pouchdb(); super::$name(&*f.store); } )*
            #[test] fn waiting_feed_wakes_on_write() { let f = super::pouchdb(); super::waiting_feed_wakes_on_write(&f.store); }
        }
    };
}

conformance!(
    records_beside_documents,
    bookkeeping_documents_move_to_records,
    an_index_readied_before_the_documents_finds_them,
    crud_with_revisions,
    conflicts,
    tombstones_in_the_feed,
    the_feed_and_get_many_give_each_documents_text,
    since_paging_with_limit,
    unicode_ids,
    eight_megabyte_document,
    binary_attachments,
    bulk_write_10000,
    checkpoint_documents,
    find_by_schema_and_field,
    finding_for_many_values_at_once,
    reading_only_some_fields,
);
