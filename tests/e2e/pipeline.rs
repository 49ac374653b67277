//! The work queue end to end through the real binary: a chain of extensions over thousands of
//! documents on both stores, idempotence, edits, errors, SIGKILL at several points, later
//! handlers, and two workers sharing one CouchDB-protocol database. What extensions can ask
//! of it (dependencies, fields, filters, withdrawals) is in `extension_api.rs`.

use std::path::Path;
use std::process::Stdio;

use serde_json::{json, Value};

use crate::support::{dump, kill_rounds, of_schema, ok, rd, PouchServer, TempDir};

const A: &str = r#"extension({ id: "chain.a", source_schemas: ["rd.test.a"],
  handler(doc) { emit_schema("rd.test.b", { v: doc.v + 1 }); } });"#;
const B: &str = r#"extension({ id: "chain.b", source_schemas: ["rd.test.b"],
  handler(doc) { emit_schema("rd.test.c", { v: doc.v * 2 }); } });"#;
const C: &str = r#"extension({ id: "chain.c", source_schemas: ["rd.test.c"],
  handler(doc) { if (doc.v === 2 * 778) throw new Error("778 is cursed"); emit_schema("rd.test.d", { v: doc.v - 3, s: "d" }); } });"#;

pub(crate) fn chain_dir(dir: &Path) -> std::path::PathBuf {
    let ext = dir.join("exts");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::write(ext.join("a.js"), A).unwrap();
    std::fs::write(ext.join("b.js"), B).unwrap();
    std::fs::write(ext.join("c.js"), C).unwrap();
    ext
}

/// An extensions folder with chain extension A and `files` (name, source) after it.
fn exts_after_a(dir: &Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let ext = dir.join("exts");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::write(ext.join("a.js"), A).unwrap();
    for (name, source) in files {
        std::fs::write(ext.join(name), source).unwrap();
    }
    ext
}

pub(crate) fn seed_file(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("seed.jsonl");
    let lines: String = (0..n).map(|i| json!({"rd_key": ["test", i], "rd_schema_id": "rd.test.a", "v": i}).to_string() + "\n").collect();
    std::fs::write(&path, lines).unwrap();
    path
}

fn check_chain(docs: &[Value], n: usize) {
    let d = of_schema(docs, "rd.test.d");
    assert_eq!(d.len(), n - 1, "every source but the cursed one reaches rd.test.d");
    for doc in d {
        let i = doc["rd_key"][1].as_i64().unwrap();
        assert_eq!(doc["v"], json!((i + 1) * 2 - 3));
        assert_eq!(doc["rd_schema_provider"], "chain.c");
    }
    let errors = of_schema(docs, "rd.core.error");
    assert_eq!(errors.len(), 1);
    let e = &errors[0]["error_details"];
    assert_eq!(e["ext_id"], "chain.c");
    assert_eq!(e["message"], "778 is cursed");
    assert!(e["file"].as_str().unwrap().ends_with("c.js") && e["line"] == 2, "{e}");
}

fn chain_on(db: &str, dir: &TempDir) {
    let n = 2000;
    let exts = chain_dir(dir.path());
    ok({
        let mut c = rd(db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), n));
        c
    });
    let log = ok({
        let mut c = rd(db, &exts);
        c.arg("process");
        c
    });
    assert!(log.contains(&format!("{} handler runs", 3 * n)) && log.contains("1 errors"), "{log}");
    let first = dump(db, &exts);
    check_chain(&first, n);

    // Running again over an up-to-date database writes nothing.
    let log = ok({
        let mut c = rd(db, &exts);
        c.arg("process");
        c
    });
    assert!(log.contains("0 documents written"), "{log}");
    let log = ok({
        let mut c = rd(db, &exts);
        c.arg("reprocess");
        c
    });
    // reprocess re-runs every handler; unchanged results are not written again.
    assert!(log.contains("0 documents written") && log.contains(&format!("{} handler runs", 3 * n)), "{log}");
    let again = dump(db, &exts);
    if again != first {
        let diff: Vec<_> = again.iter().zip(&first).filter(|(a, b)| a != b).take(2).collect();
        panic!("reprocess changed documents ({} vs {}): {diff:?}", again.len(), first.len());
    }

    // Editing one extension re-runs exactly it: its outputs change, the others are skipped.
    std::fs::write(exts.join("c.js"), C.replace("s: \"d\"", "s: \"edited\"")).unwrap();
    let log = ok({
        let mut c = rd(db, &exts);
        c.arg("process");
        c
    });
    // Its n outputs change (n - 1 results and the error record, whose fingerprint changed).
    assert!(log.contains(&format!("{} handler runs", n)) && log.contains(&format!("{} documents written", n)), "{log}");
    let after = dump(db, &exts);
    assert!(of_schema(&after, "rd.test.d").iter().all(|d| d["s"] == "edited"));
    assert_eq!(of_schema(&after, "rd.test.b"), of_schema(&first, "rd.test.b"));

    // Fixing the extension and retrying the error clears it.
    std::fs::write(exts.join("c.js"), C.replace("if (doc.v === 2 * 778) throw new Error(\"778 is cursed\");", "")).unwrap();
    ok({
        let mut c = rd(db, &exts);
        c.arg("process");
        c
    });
    let fixed = dump(db, &exts);
    assert_eq!(of_schema(&fixed, "rd.core.error").len(), 0);
    assert_eq!(of_schema(&fixed, "rd.test.d").len(), n);
}

#[test]
fn a_chain_of_extensions_on_the_embedded_store() {
    let dir = TempDir::new("chain");
    chain_on(dir.path().join("db").to_str().unwrap(), &dir);
}

#[test]
fn a_chain_of_extensions_on_pouchdb_server() {
    let dir = TempDir::new("chain-pouch");
    let server = PouchServer::start();
    chain_on(&server.db_url("chain"), &dir);
}

/// `kill_rounds` for the runs of this file: `seed` added as raw schema items, pages of 100.
fn kill_rounds_of(dir: &TempDir, exts: &Path, seed: &Path, rounds: &[&[u64]]) -> Vec<Value> {
    let seed_db = |db: &str| {
        ok({
            let mut c = rd(db, exts);
            c.arg("add-schemas").arg(seed);
            c
        });
    };
    let process = |db: &str| {
        let mut c = rd(db, exts);
        c.args(["process", "--page-size", "100"]);
        c
    };
    kill_rounds(dir, exts, seed_db, process, rounds)
}

#[test]
fn sigkill_at_any_moment_ends_in_the_same_database() {
    let dir = TempDir::new("kill");
    let exts = chain_dir(dir.path());
    let seed = seed_file(dir.path(), 3000);
    kill_rounds_of(&dir, &exts, &seed, &[&[30, 80, 150], &[60, 10, 250], &[120, 40, 40]]);
}

#[test]
fn a_failed_later_handler_keeps_its_values_for_retry_errors() {
    // A later_handler that fails for a while (here: a flag document says the store is away)
    // leaves its values in an rd.core.error document; retry-errors queues them again.
    let dir = TempDir::new("later-fail");
    let exts = exts_after_a(
        dir.path(),
        &[(
            "tally.js",
            r#"extension({ id: "test.tally", source_schemas: ["rd.test.b"],
      handler(doc) { process_later(doc.v); },
      later_handler(values) {
        const flag = open_schemas([[["flag", "x"], "rd.test.flag"]])[0];
        if (flag && flag.fail) throw new Error("the store is away");
        for (const v of values) emit_schema("rd.test.tallied", { v }, { rd_key: ["tally", v] });
      } });"#,
        )],
    );
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let flag = |fail: bool| {
        let path = dir.path().join("flag.jsonl");
        std::fs::write(&path, json!({"rd_key": ["flag", "x"], "rd_schema_id": "rd.test.flag", "fail": fail}).to_string()).unwrap();
        ok({
            let mut c = rd(&db, &exts);
            c.arg("add-schemas").arg(&path);
            c
        });
    };
    flag(true);
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 50));
        c
    });
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.test.tallied").len(), 0);
    let errors = of_schema(&docs, "rd.core.error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error_details"]["later_values"].as_array().map(Vec::len), Some(50), "{}", errors[0]);
    assert!(errors[0]["error_details"]["message"].as_str().unwrap().contains("the store is away"));
    flag(false);
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("retry-errors");
        c
    });
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.test.tallied").len(), 50, "{log}");
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0, "{log}");
}

#[test]
fn a_later_handler_gets_time_by_its_values_and_one_that_never_ends_is_stopped() {
    // time_limit_ms 200: a later_handler over 4,001 values has 3 x 200 ms; this one needs
    // ~300 ms. One that never returns is stopped all the same, and its values are kept.
    let dir = TempDir::new("later-time");
    let exts = exts_after_a(
        dir.path(),
        &[
            (
                "slow.js",
                r#"extension({ id: "test.slow", source_schemas: ["rd.test.b"], time_limit_ms: 200,
      handler(doc) { process_later(doc.v); },
      later_handler(values) {
        const until = Date.now() + values.length * 0.075;
        while (Date.now() < until) {}
        emit_schema("rd.test.counted", { n: values.length }, { rd_key: ["count", 1] });
      } });"#,
            ),
            (
                "stuck.js",
                r#"extension({ id: "test.stuck", source_schemas: ["rd.test.b"], time_limit_ms: 200,
      handler(doc) { process_later(doc.v); },
      later_handler(values) { for (;;) {} } });"#,
            ),
        ],
    );
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 4001));
        c
    });
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.test.counted").first().map(|d| d["n"].clone()), Some(json!(4001)));
    let errors = of_schema(&docs, "rd.core.error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let details = &errors[0]["error_details"];
    assert_eq!((details["ext_id"].as_str(), details["kind"].as_str()), (Some("test.stuck"), Some("time-limit")), "{}", details["message"]);
    assert!(details["message"].as_str().unwrap().contains("600 ms"), "three times the limit: {}", details["message"]);
    assert_eq!(details["later_values"].as_array().map(Vec::len), Some(4001));
}

/// An extension that gives each `rd.test.b`'s `v` to `process_later` and writes one
/// `rd.test.tallied` per value its later_handler gets.
const TALLY: &str = r#"extension({ id: "test.tally", source_schemas: ["rd.test.b"],
      handler(doc) { process_later(doc.v); },
      later_handler(values) { for (const v of values) emit_schema("rd.test.tallied", { v }, { rd_key: ["tally", v] }); } });"#;

#[test]
fn process_later_values_survive_sigkill() {
    // The later_handler runs when the feed is drained; until then its values wait in the
    // store. Kill runs before the drain: no value may be lost behind the checkpoint.
    let dir = TempDir::new("kill-later");
    let exts = exts_after_a(dir.path(), &[("tally.js", TALLY)]);
    let seed = seed_file(dir.path(), 3000);
    let expected = kill_rounds_of(&dir, &exts, &seed, &[&[60, 150], &[100, 40], &[130, 50]]);
    assert_eq!(of_schema(&expected, "rd.test.tallied").len(), 3000);
}

/// Writes into the embedded database at `db` the record a shared worker (`worker`) leaves for
/// the one that runs the later_handlers: its `n`th page's `process_later` values, by extension.
fn leave_shared_values(db: &Path, worker: &str, n: u32, values: Value) {
    write_later_record(db, &format!("rdlater!shared!{worker}!{n:010}"), values);
}

/// Writes a record of `process_later` values waiting for their later_handlers (by extension).
fn write_later_record(db: &Path, id: &str, values: Value) {
    use raindrop::store::{embedded::EmbeddedStore, Record, Store, WriteBatch};
    let store = EmbeddedStore::open(db).unwrap();
    let body = json!({ "values": values }).to_string();
    let rev = store
        .get_records(&[id.to_string()])
        .unwrap()
        .pop()
        .flatten()
        .and_then(|d| d.get("_rev").and_then(Value::as_str).map(str::to_string));
    let records = vec![Record::Text { id: id.to_string(), rev, body }];
    store.write(WriteBatch { records, ..WriteBatch::default() }).unwrap();
}

#[test]
fn a_run_without_share_takes_up_what_shared_workers_left_in_their_queue() {
    // Shared workers leave their process_later values in the shared queue's records for the
    // one of them that runs the later_handlers; when the daemons stop sharing, a plain run
    // runs them and deletes the records.
    use raindrop::store::{embedded::EmbeddedStore, Store};
    let dir = TempDir::new("shared-left");
    let exts = exts_after_a(dir.path(), &[("tally.js", TALLY)]);
    let db = dir.path().join("db");
    for i in 0..2 {
        leave_shared_values(&db, &format!("gone{i}"), 1, json!({"test.tally": [i * 10, i * 10 + 1]}));
    }
    let db = db.to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let tallied: Vec<Value> = of_schema(&dump(&db, &exts), "rd.test.tallied").into_iter().map(|d| d["v"].clone()).collect();
    assert_eq!(tallied.len(), 4, "{tallied:?}");
    for v in [0, 1, 10, 11] {
        assert!(tallied.contains(&json!(v)), "{v} in {tallied:?}");
    }
    let store = EmbeddedStore::open(Path::new(&db)).unwrap();
    assert!(store.records_after("rdlater!shared!", None, 10).unwrap().is_empty(), "the records went with the page that ran them");
}

#[test]
fn later_values_of_an_extension_not_loaded_wait_in_an_error_document_for_retry_errors() {
    // A queue can hold values of an extension the run has not loaded (removed meanwhile, or
    // under --share missing from the runner's folder): they are kept in an error document, and
    // once the extension is back, retry-errors queues them again and the next run runs them.
    use raindrop::store::{embedded::EmbeddedStore, Store};
    let dir = TempDir::new("later-unloaded");
    let exts = exts_after_a(dir.path(), &[("tally.js", TALLY)]);
    let db_path = dir.path().join("db");
    leave_shared_values(&db_path, "w1", 1, json!({"test.tally": [1], "test.gone": [7, 8]}));
    let db = db_path.to_string_lossy().into_owned();
    let process = |exts: &Path| {
        let mut c = rd(&db, exts);
        c.arg("process");
        c
    };
    let out = process(&exts).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("test.gone"), "the run names the extension");
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.test.tallied").len(), 1, "the loaded extension's value ran");
    let errors = of_schema(&docs, "rd.core.error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let details = &errors[0]["error_details"];
    assert_eq!((details["ext_id"].as_str(), details["kind"].as_str()), (Some("test.gone"), Some("not-loaded")), "{details}");
    assert_eq!(details["later_values"], json!([7, 8]));
    let store = EmbeddedStore::open(Path::new(&db)).unwrap();
    assert!(store.records_after("rdlater!shared!", None, 10).unwrap().is_empty(), "the values are in the error document now");
    drop(store);
    // The extension comes back.
    let gone = TALLY.replace("test.tally", "test.gone").replace("[\"tally\", v]", "[\"gone\", v]");
    std::fs::write(exts.join("gone.js"), gone).unwrap();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("retry-errors");
        c
    });
    ok(process(&exts));
    let docs = dump(&db, &exts);
    let mut tallied: Vec<Value> = of_schema(&docs, "rd.test.tallied").into_iter().map(|d| d["v"].clone()).collect();
    tallied.sort_by_key(|v| v.as_i64());
    assert_eq!(tallied, vec![json!(1), json!(7), json!(8)]);
    assert!(of_schema(&docs, "rd.core.error").is_empty(), "retry-errors took the error document");
    // Removed for good: unprocess discards values kept for it.
    std::fs::remove_file(exts.join("gone.js")).unwrap();
    leave_shared_values(&db_path, "w1", 2, json!({"test.gone": [9]}));
    process(&exts).output().unwrap();
    assert_eq!(of_schema(&dump(&db, &exts), "rd.core.error").len(), 1);
    // Values of it still waiting in the run's own queue go too; another extension's stay.
    write_later_record(&db_path, "rdlater!raindrop-pipeline", json!({"test.gone": [10], "test.tally": [20]}));
    ok({
        let mut c = rd(&db, &exts);
        c.args(["unprocess", "--ext", "test.gone"]);
        c
    });
    assert!(of_schema(&dump(&db, &exts), "rd.core.error").is_empty(), "unprocess discarded the kept values");
    ok(process(&exts));
    let docs = dump(&db, &exts);
    assert!(of_schema(&docs, "rd.core.error").is_empty(), "no value of the extension was left to wait");
    assert!(of_schema(&docs, "rd.test.tallied").iter().any(|d| d["v"] == json!(20)), "the other extension's value ran");
}

#[test]
fn two_workers_on_one_pouchdb_database_equal_one_worker() {
    let dir = TempDir::new("workers");
    let server = PouchServer::start();
    let exts = chain_dir(dir.path());
    let seed = seed_file(dir.path(), 800);
    let one = server.db_url("one");
    let two = server.db_url("two");
    ok({
        let mut c = rd(&one, &exts);
        c.arg("add-schemas").arg(&seed);
        c
    });
    ok({
        let mut c = rd(&one, &exts);
        c.arg("process");
        c
    });
    ok({
        let mut c = rd(&two, &exts);
        c.arg("add-schemas").arg(&seed);
        c
    });
    // Two daemons side by side, each on its slice; a slice's outputs can be the other's
    // sources, so each runs until neither has anything left. Each source is run by one worker
    // only: the handler runs add up to a single worker's, and each did a real share (both
    // doing everything would give the same final database, but twice the runs).
    let runs =
        |log: &str| -> u64 { log.lines().filter_map(|l| l.split(" handler runs").next()?.rsplit(' ').next()?.parse::<u64>().ok()).sum() };
    let mut per_worker = [0u64; 2];
    for _ in 0..4 {
        let w0 = rd(&two, &exts).args(["process", "--worker", "0/2"]).stderr(Stdio::piped()).spawn().unwrap();
        let w1 = rd(&two, &exts).args(["process", "--worker", "1/2"]).stderr(Stdio::piped()).spawn().unwrap();
        let (o0, o1) = (w0.wait_with_output().unwrap(), w1.wait_with_output().unwrap());
        assert!(
            o0.status.success() && o1.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o0.stderr),
            String::from_utf8_lossy(&o1.stderr)
        );
        let finals = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.starts_with("done in")).collect::<Vec<_>>().join("\n")
        };
        per_worker[0] += runs(&finals(&o0));
        per_worker[1] += runs(&finals(&o1));
    }
    // Each worker ran exactly the sources of its slice: the documents of rd.test.a, b and c
    // (each the source of one extension) whose ids hash to it.
    let b = dump(&two, &exts);
    let mut expected = [0u64; 2];
    for d in b.iter().filter(|d| ["rd.test.a", "rd.test.b", "rd.test.c"].contains(&d["rd_schema_id"].as_str().unwrap_or_default())) {
        expected[crate::share::static_slice(d["_id"].as_str().unwrap(), 2) as usize] += 1;
    }
    assert_eq!(expected[0] + expected[1], 3 * 800);
    assert_eq!(per_worker, expected, "each worker's handler runs are the sources of its slice");
    assert!(expected.iter().all(|&n| n > 800), "a lopsided split: {expected:?}");
    let a = dump(&one, &exts);
    check_chain(&b, 800);
    assert_eq!(a, b);
}
