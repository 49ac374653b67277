//! What the extension API promises, end to end through the real binary: outputs recomputed
//! when what they depend on changes, source fields, later handlers in parts, filters, the
//! identity and conversation helpers, withdrawn outputs, stopping on errors and retrying
//! them, and a daemon following the feed.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::{chain_dir, seed_file};
use crate::support::{dump, of_schema, ok, raindrop, rd, TempDir};

#[test]
fn an_output_is_recomputed_when_a_document_it_depends_on_changes() {
    let dir = TempDir::new("deps");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("sum.js"),
        r#"extension({ id: "test.sum", source_schemas: ["rd.test.a"], uses_dependencies: true,
      handler(doc) {
        const key = ["test", "rate"];
        const [rate] = open_schemas([[key, "rd.test.rate"]]);
        emit_schema("rd.test.sum", { total: doc.v * (rate ? rate.factor : 1) }, { deps: [[key, "rd.test.rate"]] });
      } });"#,
    )
    .unwrap();
    std::fs::write(
        exts.join("nodeps.js"),
        r#"extension({ id: "test.nodeps", source_schemas: ["rd.test.a"],
      handler(doc) { emit_schema("rd.test.bad", {}, { deps: [[["test", "rate"], "rd.test.rate"]] }); } });"#,
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let seed = seed_file(dir.path(), 5);
    let rate = |f: u32| {
        let p = dir.path().join(format!("rate{f}.jsonl"));
        std::fs::write(&p, json!({"rd_key": ["test", "rate"], "rd_schema_id": "rd.test.rate", "factor": f}).to_string()).unwrap();
        p
    };
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(&seed).arg(rate(10));
        c
    });
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let totals = |docs: &[Value]| -> Vec<Value> { of_schema(docs, "rd.test.sum").iter().map(|d| d["total"].clone()).collect() };
    let first = dump(&db, &exts);
    assert_eq!(totals(&first), vec![json!(0), json!(10), json!(20), json!(30), json!(40)]);
    // Declaring deps without uses_dependencies is an error, as in the original.
    assert_eq!(of_schema(&first, "rd.core.error").len(), 5);
    // The rate changes: every sum is recomputed, nothing else runs.
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(rate(3));
        c
    });
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    // (the sum of 0 stays 0, so four documents change)
    assert!(log.contains("5 handler runs") && log.contains("4 documents written"), "{log}");
    assert_eq!(totals(&dump(&db, &exts)), vec![json!(0), json!(3), json!(6), json!(9), json!(12)]);
}

#[test]
fn a_handler_with_source_fields_sees_only_those_fields() {
    let dir = TempDir::new("fields");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("some.js"),
        r#"extension({ id: "test.some", source_schemas: ["rd.test.wide"],
      source_fields: ["wanted", "absent", "wanted"],
      handler(doc) { emit_schema("rd.test.seen", { keys: Object.keys(doc).sort(), wanted: doc.wanted }); } });"#,
    )
    .unwrap();
    std::fs::write(
        exts.join("all.js"),
        r#"extension({ id: "test.all", source_schemas: ["rd.test.wide"],
      handler(doc) { emit_schema("rd.test.all", { has_body: typeof doc.body === "string" }); } });"#,
    )
    .unwrap();
    std::fs::write(exts.join("bad.js"), r#"extension({ id: "test.bad", source_schemas: ["x"], source_fields: "wanted", handler() {} });"#)
        .unwrap();
    let seed = dir.path().join("wide.jsonl");
    std::fs::write(&seed, r#"{"rd_key": ["test", 1], "rd_schema_id": "rd.test.wide", "wanted": {"a": [1, "é\n\"x\""]}, "body": "long text that the handler never reads"}"#).unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(&seed);
        c
    });
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let docs = dump(&db, &exts);
    let seen = of_schema(&docs, "rd.test.seen");
    assert_eq!(seen.len(), 1, "{log}");
    // The document's identity and the fields asked for, as they were; nothing else.
    assert_eq!(seen[0]["keys"], json!(["_id", "_rev", "rd_key", "rd_schema_id", "wanted"]));
    assert_eq!(seen[0]["wanted"], json!({"a": [1, "é\n\"x\""]}));
    // Another extension on the same source still gets all of it.
    assert_eq!(of_schema(&docs, "rd.test.all")[0]["has_body"], json!(true));
    // A malformed declaration is a load error naming the file.
    let out = raindrop().args(["ext", "list", "--extensions"]).arg(&exts).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("bad.js:1") && listing.contains("source_fields must be an array"), "{listing}");
}

#[test]
fn a_later_handler_in_parts_runs_side_by_side_and_misses_no_value() {
    // 500 values over 2 threads (the tests' setting): two calls of 250, each emitting its values; the declared
    // index is ready before the run (find_schemas by it answers from the first call).
    let dir = TempDir::new("later-parts");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("parts.js"),
        r#"extension({ id: "test.parts", source_schemas: ["rd.test.a"],
      indexes: [["rd.test.a", "v"]],
      later_in_parts: true,
      handler(doc) { process_later(doc.v); },
      later_handler(values) {
        for (const v of values) {
          const found = find_schemas("rd.test.a", "v", v, 2, []);
          emit_schema("rd.test.tallied", { v, found: found.length }, { rd_key: ["tally", v] });
        }
        emit_schema("rd.test.part", { n: values.length }, { rd_key: ["part", values[0]] });
      } });"#,
    )
    .unwrap();
    std::fs::write(
        exts.join("whole.js"),
        r#"extension({ id: "test.whole", source_schemas: ["rd.test.a"],
      handler(doc) { process_later(doc.v); },
      later_handler(values) { emit_schema("rd.test.whole", { n: values.length }, { rd_key: ["whole", 1] }); } });"#,
    )
    .unwrap();
    std::fs::write(exts.join("bad-index.js"), r#"extension({ id: "test.bad1", source_schemas: ["x"], indexes: [["x"]], handler() {} });"#)
        .unwrap();
    std::fs::write(
        exts.join("bad-parts.js"),
        r#"extension({ id: "test.bad2", source_schemas: ["x"], later_in_parts: true, handler() {} });"#,
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 500));
        c
    });
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let docs = dump(&db, &exts);
    let tallied = of_schema(&docs, "rd.test.tallied");
    assert_eq!(tallied.len(), 500, "{log}");
    assert!(tallied.iter().all(|d| d["found"] == json!(1)), "every value found by the declared index");
    let mut parts: Vec<i64> = of_schema(&docs, "rd.test.part").iter().map(|d| d["n"].as_i64().unwrap()).collect();
    parts.sort();
    assert_eq!(parts, vec![250, 250]);
    // Without later_in_parts, one call sees every value.
    assert_eq!(of_schema(&docs, "rd.test.whole")[0]["n"], json!(500));
    let out = raindrop().args(["ext", "list", "--extensions"]).arg(&exts).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("bad-index.js:1") && listing.contains("indexes must be an array of [schema id, field] pairs"), "{listing}");
    assert!(listing.contains("bad-parts.js:1") && listing.contains("later_in_parts needs a later_handler"), "{listing}");
}

#[test]
fn filters_choose_sources_and_later_handlers_see_the_collected_values() {
    let dir = TempDir::new("filter");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("odd.js"),
        r#"extension({ id: "test.odd",
      // Accepts its own output too (rc!test.MQ==!rd.test.odd): that must not loop.
      filter(id, rev, schema) { return id.includes("MQ=="); },
      handler(doc) { emit_schema("rd.test.odd", { v: doc.v }); process_later(doc.v); },
      later_handler(values) {
        values.sort((a, b) => a - b);
        emit_schema("rd.test.summary", { seen: values }, { rd_key: ["test", "summary"] });
      } });"#,
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 4));
        c
    });
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    let docs = dump(&db, &exts);
    // Keys ["test", 0..3] encode as MA==, MQ==, Mg==, Mw==: the filter takes exactly "MQ==".
    let odd: Vec<_> = of_schema(&docs, "rd.test.odd").iter().map(|d| d["v"].clone()).collect();
    assert_eq!(odd, vec![json!(1)], "{log}");
    let summary = of_schema(&docs, "rd.test.summary");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["seen"], json!([1]));
}

#[test]
fn identities_contacts_and_conversations_from_the_extension_api() {
    let dir = TempDir::new("convo");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("msg.js"),
        r#"extension({ id: "test.msg", source_schemas: ["rd.test.msg"],
      handler(doc) {
        const contact = emit_related_identities([[["email", doc.from], "from"]], { displayName: doc.name });
        const conv = find_and_emit_conversation([doc.rd_key].concat(doc.refs.map((r) => ["email", r])));
        emit_schema("rd.test.seen", { contact, conv, mine: get_my_identities() });
      } });"#,
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "identities = [[\"email\", \"me@example.com\"]]\n").unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let add = |id: &str, from: &str, name: &str, refs: &[&str]| {
        let p = dir.path().join(format!("{id}.jsonl"));
        std::fs::write(
            &p,
            json!({"rd_key": ["email", id], "rd_schema_id": "rd.test.msg", "from": from, "name": name, "refs": refs}).to_string(),
        )
        .unwrap();
        ok({
            let mut c = rd(&db, &exts);
            c.arg("--config").arg(&config).arg("add-schemas").arg(&p);
            c
        });
        ok({
            let mut c = rd(&db, &exts);
            c.arg("--config").arg(&config).arg("process");
            c
        });
    };
    add("m1", "ann@example.com", "Ann", &[]);
    add("m2", "bob@example.com", "Bob", &["m1"]);
    add("m3", "Ann@example.com", "Ann", &[]);
    add("m4", "carl@example.com", "Ann", &["m3", "m1"]);
    let docs = dump(&db, &exts);
    let conv_of = |id: &str| {
        of_schema(&docs, "rd.msg.conversation")
            .iter()
            .find(|d| d["rd_key"] == json!(["email", id]))
            .map(|d| d["conversation_id"].clone())
            .unwrap()
    };
    // m4 links m3's conversation and m1's (with m2): they merge into one, the smaller id.
    for m in ["m1", "m2", "m3", "m4"] {
        assert_eq!(conv_of(m), json!(["conv", ["email", "m1"]]), "{m}");
    }
    // "Ann" is one contact whatever address she writes from (found by display name); Bob another.
    let contacts = of_schema(&docs, "rd.contact");
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    let seen: Vec<_> = of_schema(&docs, "rd.test.seen").iter().map(|d| (d["rd_key"][1].clone(), d["contact"].clone())).collect();
    let contact_of = |m: &str| seen.iter().find(|(k, _)| k == m).unwrap().1.clone();
    assert_eq!(contact_of("m3"), contact_of("m1"));
    assert_eq!(contact_of("m4"), contact_of("m1"), "carl is linked to Ann's contact by display name");
    assert_ne!(contact_of("m2"), contact_of("m1"));
    assert_eq!(of_schema(&docs, "rd.identity.exists").len(), 4);
    assert_eq!(of_schema(&docs, "rd.test.seen")[0]["mine"], json!([["email", "me@example.com"]]));
}

#[test]
fn outputs_no_longer_emitted_are_withdrawn_except_for_smart_extensions() {
    let dir = TempDir::new("withdraw");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    let source = |category: &str, emit_second: bool| {
        format!(
            r#"extension({{ id: "test.{category}", category: "{category}", source_schemas: ["rd.test.a"],
          handler(doc) {{ emit_schema("rd.test.{category}.one", {{ v: doc.v }}); {} }} }});"#,
            if emit_second { format!(r#"emit_schema("rd.test.{category}.two", {{ v: doc.v }});"#) } else { String::new() }
        )
    };
    std::fs::write(exts.join("p.js"), source("provider", true)).unwrap();
    std::fs::write(exts.join("s.js"), source("smart", true)).unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 3));
        c
    });
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    std::fs::write(exts.join("p.js"), source("provider", false)).unwrap();
    std::fs::write(exts.join("s.js"), source("smart", false)).unwrap();
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    assert!(log.contains("3 removed"), "{log}");
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.test.provider.two").len(), 0, "the provider's withdrawn outputs are gone");
    assert_eq!(of_schema(&docs, "rd.test.smart.two").len(), 3, "a smart extension's are kept");
    // unprocess withdraws everything an extension made, smart or not.
    ok({
        let mut c = rd(&db, &exts);
        c.args(["unprocess", "--ext", "test.smart"]);
        c
    });
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.test.smart.one").len() + of_schema(&docs, "rd.test.smart.two").len(), 0);
    assert_eq!(of_schema(&docs, "rd.test.provider.one").len(), 3);
}

#[test]
fn stop_on_error_stops_and_retry_errors_reruns_what_failed() {
    let dir = TempDir::new("retry");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    // Fails until a "switch" document exists: a failure that goes away without a code change.
    std::fs::write(
        exts.join("x.js"),
        r#"extension({ id: "test.switch", source_schemas: ["rd.test.a"],
      handler(doc) {
        const [sw] = open_schemas([[["test", "switch"], "rd.test.switch"]]);
        if (!sw && doc.v % 2 === 1) throw new Error("no switch yet for " + doc.v);
        emit_schema("rd.test.out", { v: doc.v });
      } });"#,
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 6));
        c
    });
    let out = rd(&db, &exts).args(["process", "--stop-on-error"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped at the first handler error") && err.contains("no switch yet for"), "{err}");
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    assert_eq!(of_schema(&dump(&db, &exts), "rd.core.error").len(), 3);
    let status = rd(&db, &exts).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("test.switch") && status.lines().any(|l| l.starts_with("test.switch") && l.trim_end().ends_with('3')),
        "{status}"
    );
    let sw = dir.path().join("switch.jsonl");
    std::fs::write(&sw, json!({"rd_key": ["test", "switch"], "rd_schema_id": "rd.test.switch"}).to_string()).unwrap();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(&sw);
        c
    });
    let log = ok({
        let mut c = rd(&db, &exts);
        c.arg("retry-errors");
        c
    });
    assert!(log.contains("3 source(s) to run again"), "{log}");
    let docs = dump(&db, &exts);
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0);
    assert_eq!(of_schema(&docs, "rd.test.out").len(), 6);
}

#[test]
fn the_daemon_follows_the_feed() {
    let dir = TempDir::new("daemon");
    let exts = chain_dir(dir.path());
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(seed_file(dir.path(), 3));
        c
    });
    let mut daemon = rd(&db, &exts).args(["run", "--listen", "off"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if of_schema(&dump(&db, &exts), "rd.test.d").len() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(wait_for(3), "the daemon processed what was there");
    // A document added while it runs is picked up without a restart.
    let more = dir.path().join("more.jsonl");
    std::fs::write(&more, json!({"rd_key": ["test", 10], "rd_schema_id": "rd.test.a", "v": 10}).to_string()).unwrap();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(&more);
        c
    });
    assert!(wait_for(4), "the daemon picked up the new document");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

#[test]
fn contacts_survive_their_extension_running_again() {
    // Story: editing sent-relationships (or upgrading the driver, which every extension's
    // fingerprint takes in) re-ran it over every message; the links and contacts already there
    // were not emitted again, and so were withdrawn: 3 contacts became 0.
    let dir = TempDir::new("contacts-rerun");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    for entry in std::fs::read_dir(crate::support::repo().join("js-extensions")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "js") {
            std::fs::copy(&path, exts.join(path.file_name().unwrap())).unwrap();
        }
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("--config").arg(crate::support::repo().join("fixtures/corpus-config.toml"));
        c.args(["import", "--process"]).arg(crate::support::repo().join("fixtures/mail"));
        c
    });
    let contacts = |docs: &[Value]| -> Vec<Value> {
        ["rd.contact", "rd.identity.contacts"]
            .iter()
            .flat_map(|s| of_schema(docs, s))
            .map(|d| crate::support::normalise(d.clone()))
            .collect()
    };
    let before = contacts(&dump(&db, &exts));
    assert!(before.len() >= 2, "the sample mail makes contacts: {before:#?}");
    let file = exts.join("sent-relationships.js");
    let source = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{source}\n// edited\n")).unwrap();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("--config").arg(crate::support::repo().join("fixtures/corpus-config.toml")).arg("process");
        c
    });
    let after = contacts(&dump(&db, &exts));
    let names =
        |docs: &[Value]| docs.iter().map(|d| (d["_id"].clone(), d["displayName"].clone(), d["contacts"].clone())).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "the contacts and links after the re-run");
}
