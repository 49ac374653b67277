//! Schema definitions end to end: items checked at emit (types, required fields, `validate`),
//! the definitions as documents, version upgrades that survive SIGKILL, the megaview on both
//! stores, and a definition edited while the daemon runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::*;

fn exts(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let ext = dir.join("exts");
    std::fs::create_dir_all(ext.join("schemas")).unwrap();
    for (name, source) in files {
        std::fs::write(ext.join(name), source).unwrap();
    }
    ext
}

fn seed(db: &str, exts: &Path, dir: &Path, lines: &[Value]) {
    let path = dir.join(format!("seed-{}.jsonl", free_port()));
    std::fs::write(&path, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    ok({
        let mut c = rd(db, exts);
        c.arg("add-schemas").arg(&path);
        c
    });
}

fn process(db: &str, exts: &Path, more: &[&str]) -> String {
    ok({
        let mut c = rd(db, exts);
        c.args(more).arg("process");
        c
    })
}

const OUT_SCHEMA: &str = r#"schema({
  id: "t.out", version: 1,
  fields: { name: "string", size: "integer?", tags: "[string]?" },
  expandable: ["tags"],
  validate(doc) { if (doc.name === "forbidden") return "the name may not be forbidden"; },
});
"#;

/// Each source says what to emit; one handler catches the error emit_schema throws.
const EMITTER: &str = r#"extension({ id: "t.emitter", source_schemas: ["t.in"], handler(doc) {
  if (doc.catch) { try { emit_schema("t.out", doc.item); } catch (e) { log("caught " + e.message); } return; }
  emit_schema(doc.schema || "t.out", doc.item);
} });
"#;

#[test]
fn emitted_items_are_checked_against_their_definitions() {
    let dir = TempDir::new("schema-check");
    let exts = exts(dir.path(), &[("emitter.js", EMITTER), ("schemas/t.out.js", OUT_SCHEMA)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let cases = [
        json!({"name": "ok", "size": 3, "tags": ["a", "b"]}),
        json!({"name": 5}),
        json!({"size": 3}),
        json!({"name": "x", "size": 2.5}),
        json!({"name": "forbidden"}),
        json!({"name": "x", "colour": "red"}),
        json!({"name": "x", "tags": ["a", 1]}),
    ];
    let mut lines: Vec<Value> =
        cases.iter().enumerate().map(|(i, item)| json!({"rd_key": ["in", i], "rd_schema_id": "t.in", "item": item})).collect();
    lines.push(json!({"rd_key": ["in", "caught"], "rd_schema_id": "t.in", "catch": true, "item": {"name": 7}}));
    lines.push(json!({"rd_key": ["in", "undefined"], "rd_schema_id": "t.in", "schema": "t.nodef", "item": {"anything": 1}}));
    seed(&db, &exts, dir.path(), &lines);
    process(&db, &exts, &[]);
    let docs = dump(&db, &exts);

    let outs = of_schema(&docs, "t.out");
    assert_eq!(outs.len(), 1, "only the valid item is written: {outs:#?}");
    assert_eq!(outs[0]["name"], "ok");
    assert_eq!(outs[0]["rd_schema_version"], 1, "documents record their definition's version");
    assert_eq!(of_schema(&docs, "t.nodef").len(), 1, "a schema without a definition is written");

    let message_of = |key: Value| -> String {
        let source = format!("rc!in.{}!t.in", base64(&key));
        of_schema(&docs, "rd.core.error")
            .into_iter()
            .find(|e| e["error_details"]["source"][0] == source.as_str())
            .map(|e| {
                assert_eq!(e["error_details"]["kind"], "schema-violation", "{e}");
                assert_eq!(e["error_details"]["ext_id"], "t.emitter");
                assert_eq!(e["error_details"]["line"], 3, "the line of the emit_schema call: {e}");
                e["error_details"]["message"].as_str().unwrap().to_string()
            })
            .unwrap_or_else(|| panic!("no error document for source {key}"))
    };
    assert_eq!(message_of(json!(1)), "t.emitter emitted t.out, field name: expected string, got a number");
    assert_eq!(message_of(json!(2)), "t.emitter emitted t.out, field name: the field is required and missing");
    assert_eq!(message_of(json!(3)), "t.emitter emitted t.out, field size: expected integer?, got a number");
    assert_eq!(message_of(json!(4)), "t.emitter emitted t.out: the name may not be forbidden");
    assert!(message_of(json!(5)).starts_with("t.emitter emitted t.out, field colour: not a field of the schema"));
    assert_eq!(message_of(json!(6)), "t.emitter emitted t.out, field tags: expected [string]?, got an array of 2");
    // Caught by the handler, and an error document all the same (placed at the emit's line).
    let caught = of_schema(&docs, "rd.core.error")
        .into_iter()
        .find(|e| e["error_details"]["source"][0].as_str().unwrap().contains(&base64(&json!("caught"))))
        .cloned();
    let caught = caught.expect("the caught violation is an error document");
    assert_eq!(caught["error_details"]["line"], 2);

    // The definition as a document any client can read.
    let def = docs.iter().find(|d| d["rd_schema_id"] == "rd.schema.definition" && d["id"] == "t.out").expect("t.out's definition document");
    assert_eq!(def["rd_key"], json!(["schema", "t.out"]));
    assert_eq!(def["version"], 1);
    assert_eq!(def["fields"], json!({"name": "string", "size": "integer?", "tags": "[string]?"}));
    assert_eq!(def["expandable"], json!(["tags"]));
    assert_eq!(def["has_validate"], true);
    assert_eq!(def["source"], OUT_SCHEMA);
    // Every bundled definition is there too.
    let defined: BTreeSet<&str> = of_schema(&docs, "rd.schema.definition").iter().filter_map(|d| d["id"].as_str()).collect();
    for schema in ["rd.msg.rfc822", "rd.msg.email", "rd.msg.body", "rd.conv.summary", "rd.core.error", "rd.schema.definition"] {
        assert!(defined.contains(schema), "{schema} has no definition document: {defined:?}");
    }

    // `raindrop status` names the schema written without a definition.
    let status = rd(&db, &exts).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("undefined: 1 schema(s)") && text.contains("t.nodef"), "{text}");

    // Strict: the undefined schema is an error too.
    let strict = dir.path().join("strict").to_string_lossy().into_owned();
    seed(&strict, &exts, dir.path(), &lines[lines.len() - 1..]);
    process(&strict, &exts, &["--strict-schemas"]);
    let docs = dump(&strict, &exts);
    assert!(of_schema(&docs, "t.nodef").is_empty());
    let errors = of_schema(&docs, "rd.core.error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error_details"]["message"], "t.emitter emitted t.nodef: the schema has no definition (strict mode)");
}

/// `base64(python json(v))`, as in a document id.
fn base64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(raindrop::model::python_json(v))
}

const UP_V2: &str = r#"schema({
  id: "t.up", version: 2,
  fields: { n: "integer", label: "string", upgrades: "integer", from: "integer" },
  upgrade(doc, from) {
    // Some work per document, so the pass takes long enough to be killed in its middle.
    let x = 0;
    for (let i = 0; i < 50000; i++) x += i % 7;
    doc.label = "item " + doc.n + (x < 0 ? "?" : "");
    doc.upgrades = (doc.upgrades || 0) + 1;
    doc.from = from;
    return doc;
  },
});
"#;

const DOWN: &str = r#"extension({ id: "t.down", source_schemas: ["t.up"], handler(doc) {
  emit_schema("t.down", { label: doc.label || null, upgrades: doc.upgrades || 0 });
} });
"#;

#[test]
fn a_version_upgrade_reaches_every_document_exactly_once_through_sigkills() {
    let dir = TempDir::new("schema-upgrade");
    let exts = exts(dir.path(), &[("down.js", DOWN), ("schemas/t.up.js", UP_V2)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let lines: Vec<Value> = (0..10_000).map(|n| json!({"rd_key": ["up", n], "rd_schema_id": "t.up", "n": n})).collect();
    seed(&db, &exts, dir.path(), &lines);
    let upgraded = || of_schema(&dump(&db, &exts), "t.up").iter().filter(|d| d["rd_schema_version"] == 2).count();
    // Killed again and again until a kill has landed in the middle of the pass.
    let mut partial = Vec::new();
    for delay in [400u64, 700, 500, 600, 800, 450, 650, 550] {
        let mut child =
            rd(&db, &exts).arg("process").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = upgraded();
        partial.push(n);
        if n == 10_000 {
            break;
        }
    }
    assert!(partial.iter().any(|n| (1..10_000).contains(n)), "no kill landed in the middle of the upgrade: {partial:?}");
    process(&db, &exts, &[]);
    let docs = dump(&db, &exts);
    let ups = of_schema(&docs, "t.up");
    assert_eq!(ups.len(), 10_000);
    for d in &ups {
        assert_eq!((d["upgrades"].as_u64(), d["from"].as_u64(), d["rd_schema_version"].as_u64()), (Some(1), Some(1), Some(2)), "{d}");
        assert_eq!(d["label"], format!("item {}", d["n"]));
    }
    // What depends on them ran again on the upgraded documents.
    let downs = of_schema(&docs, "t.down");
    assert_eq!(downs.len(), 10_000);
    assert!(downs.iter().all(|d| d["upgrades"] == 1 && d["label"].as_str().is_some_and(|l| l.starts_with("item "))));

    // Raw data written now is of the version the database's definition says, not upgraded again.
    seed(
        &db,
        &exts,
        dir.path(),
        &[json!({"rd_key": ["up", "new"], "rd_schema_id": "t.up", "n": 1, "label": "new", "upgrades": 0, "from": 2})],
    );
    process(&db, &exts, &[]);
    let docs = dump(&db, &exts);
    let new = of_schema(&docs, "t.up").into_iter().find(|d| d["rd_key"] == json!(["up", "new"])).unwrap();
    assert_eq!((&new["rd_schema_version"], &new["upgrades"]), (&json!(2), &json!(0)), "{new}");
}

fn megaview(db: &str, exts: &Path, args: &[&str]) -> BTreeSet<String> {
    megaview_in_order(db, exts, &[&["--limit", "100000"], args].concat()).into_iter().collect()
}

/// The lines `raindrop db megaview` prints, in its order, each normalised.
fn megaview_in_order(db: &str, exts: &Path, args: &[&str]) -> Vec<String> {
    let out = rd(db, exts).args(["db", "megaview"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| normalise(serde_json::from_str(l).unwrap()).to_string()).collect()
}

#[test]
fn the_megaview_answers_the_same_rows_on_both_stores() {
    let dir = TempDir::new("megaview");
    let pouch = PouchServer::start();
    let exts = repo().join("js-extensions");
    let embedded = dir.path().join("db").to_string_lossy().into_owned();
    let couch = pouch.db_url("megaview");
    for db in [&embedded, &couch] {
        ok({
            let mut c = rd(db, &exts);
            c.args(["import", "--process"]).arg(repo().join("fixtures/mail"));
            c
        });
    }
    let docs = dump(&embedded, &exts);
    let body = of_schema(&docs, "rd.msg.body")
        .into_iter()
        .find(|d| d["to"].as_array().is_some_and(|t| !t.is_empty()) && d["rd_schema_items"].get("rd.ext.core.msg-email-to-body").is_some())
        .expect("a body with recipients");
    let dep = docs
        .iter()
        .find_map(|d| d["rd_schema_items"].as_object()?.values().find_map(|e| e["rd_deps"].as_array()?.first().cloned()))
        .expect("a document with a dependency");
    let source = body["rd_schema_items"]["rd.ext.core.msg-email-to-body"]["rd_source"][0].as_str().unwrap().to_string();
    let (key, to, from) =
        (body["rd_key"].to_string(), body["to"][body["to"].as_array().unwrap().len() - 1].to_string(), body["from"].to_string());
    let questions: Vec<Vec<&str>> = vec![
        vec!["--schema", "rd.msg.body"],
        vec!["--schema", "rd.conv.summary"],
        vec!["--key", &key],
        vec!["--key", &key, "--schema", "rd.msg.email"],
        vec!["--ext", "rd.ext.core.msg-email-to-convo"],
        vec!["--source", "null"],
        vec!["--source", &source],
        vec!["--ext", "rd.ext.core.msg-email-to-body", "--source", &source],
        vec!["--schema", "rd.msg.body", "--field", "from", "--value", &from],
        // Expandable: one row per element of `to`.
        vec!["--schema", "rd.msg.body", "--field", "to", "--value", &to],
    ];
    let dep_text = dep.to_string();
    let mut questions = questions;
    questions.push(vec!["--dep", &dep_text]);
    for q in &questions {
        let (a, b) = (megaview(&embedded, &exts, q), megaview(&couch, &exts, q));
        assert!(!a.is_empty(), "no rows for {q:?}");
        assert_eq!(a, b, "the stores differ for {q:?}");
    }
    // A group's unread conversations in order (a prefix of [tag, time] pairs), and counts.
    let mut tags: BTreeMap<String, usize> = BTreeMap::new();
    for s in of_schema(&docs, "rd.conv.summary") {
        for t in s["unread_grouping_tags"].as_array().unwrap() {
            *tags.entry(t.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let (tag, unread) = tags.into_iter().max_by_key(|(_, n)| *n).expect("a conversation with an unread tag");
    assert!(unread >= 3, "{tag}: {unread}");
    let prefix = json!([tag]).to_string();
    let ordered = ["--schema", "rd.conv.summary", "--field", "unread_grouping_timestamp", "--prefix", prefix.as_str()];
    for extra in [&[][..], &["--descending"], &["--count"], &["--descending", "--limit", "2"]] {
        let q: Vec<&str> = ordered.iter().chain(extra).copied().collect();
        let (a, b) = (megaview_in_order(&embedded, &exts, &q), megaview_in_order(&couch, &exts, &q));
        assert!(!a.is_empty(), "no rows for {q:?}");
        assert_eq!(a, b, "the stores differ for {q:?}");
    }
    let counted = |db: &str, q: &[&str]| megaview_in_order(db, &exts, &[q, &["--count"]].concat());
    assert_eq!(counted(&embedded, &questions[9]), vec![megaview(&embedded, &exts, &questions[9]).len().to_string()]);
    assert_eq!(counted(&embedded, &questions[9]), counted(&couch, &questions[9]));
    let by_to = megaview(&embedded, &exts, &questions[9]);
    assert!(by_to.iter().any(|row| row.contains(body["_id"].as_str().unwrap())), "the body is found by its last recipient: {by_to:?}");
    let by_key = megaview(&embedded, &exts, &questions[2]);
    assert!(by_key.len() >= 3, "a message's key finds its rfc822, email and body documents: {by_key:?}");
}

const EDIT_V1: &str = r#"schema({ id: "t.live", version: 1, fields: { n: "any" } });
"#;
const EDIT_STRICT: &str = r#"schema({ id: "t.live", version: 1, fields: { n: "number" } });
"#;
const EDIT_V2: &str = r##"schema({ id: "t.live", version: 2, fields: { n: "string" }, upgrade(doc, from) { doc.n = "#" + doc.n; return doc; } });
"##;
const LIVE: &str = r#"extension({ id: "t.live-emitter", source_schemas: ["t.in"], handler(doc) { emit_schema("t.live", { n: doc.v }); } });
"#;

#[test]
fn a_definition_edited_while_the_daemon_runs_is_taken_up() {
    let dir = TempDir::new("schema-live");
    let exts = exts(dir.path(), &[("live.js", LIVE), ("schemas/t.live.js", EDIT_V1)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(
        &db,
        &exts,
        dir.path(),
        &[json!({"rd_key": ["in", 1], "rd_schema_id": "t.in", "v": 1}), json!({"rd_key": ["in", 2], "rd_schema_id": "t.in", "v": 2})],
    );
    let port = free_port();
    let mut cmd = rd(&db, &exts);
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]);
    let mut daemon = Daemon::start(cmd, dir.path());
    daemon.port = port;
    let values = |docs: &[Value]| -> Vec<Value> { of_schema(docs, "t.live").iter().map(|d| d["n"].clone()).collect() };
    eventually(60, "the first outputs", || values(&dump(&db, &exts)) == vec![json!(1), json!(2)]);

    // Stricter, same version: a new item that breaks it is an error document.
    std::fs::write(exts.join("schemas/t.live.js"), EDIT_STRICT).unwrap();
    eventually(30, "the stricter definition's document", || {
        dump(&db, &exts).iter().any(|d| d["rd_schema_id"] == "rd.schema.definition" && d["fields"]["n"] == "number")
    });
    seed(&db, &exts, dir.path(), &[json!({"rd_key": ["in", 3], "rd_schema_id": "t.in", "v": "three"})]);
    eventually(30, "an error document for the item that breaks it", || {
        of_schema(&dump(&db, &exts), "rd.core.error")
            .iter()
            .any(|e| e["error_details"]["message"] == "t.live-emitter emitted t.live, field n: expected number, got a string")
    });

    // Version 2: the documents there are upgraded in place.
    std::fs::write(exts.join("schemas/t.live.js"), EDIT_V2).unwrap();
    eventually(30, "the documents upgraded to version 2", || {
        let docs = dump(&db, &exts);
        let live = of_schema(&docs, "t.live");
        live.len() == 2 && live.iter().all(|d| d["rd_schema_version"] == 2) && values(&docs) == vec![json!("#1"), json!("#2")]
    });
    assert!(daemon.log().contains("2 document(s) upgraded"), "{}", daemon.log());
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(20), Some(0));
}

/// Every type of the grammar, on the real engine through the library: which values each
/// accepts, and definitions the driver refuses (reported with their file and line).
#[test]
fn the_type_grammar_accepts_and_refuses_what_it_says() {
    use raindrop::js::extension::SchemaSources;
    use raindrop::js::{DocOutcome, ExtensionSource, FailureKind, JsPool, PoolConfig};
    use std::sync::Arc;
    let types = [
        ("s", "string"),
        ("n", "number"),
        ("i", "integer"),
        ("b", "boolean"),
        ("o", "object"),
        ("a", "any"),
        ("z", "null"),
        ("id", "identity"),
        ("k", "key"),
        ("arr", "[string]"),
        ("nest", "[[integer]]"),
        ("u", "string|[string]"),
        ("opt", "number"),
        ("el", "[string|null]"),
    ];
    let fields: String = types.iter().map(|(f, t)| format!("{f}: \"{t}?\", ")).collect();
    let definition = format!("schema({{ id: \"t.types\", version: 3, fields: {{ {fields} }} }});");
    let mut by_id = std::collections::HashMap::new();
    by_id.insert("t.types".to_string(), ExtensionSource::from_string("schemas/t.types.js", &definition));
    let mut config = PoolConfig::new(1);
    config.schemas = Arc::new(SchemaSources { by_id, strict: false });
    let emitter = r#"extension({ id: "t.types-emitter", source_schemas: ["x"], handler(doc) { emit_schema("t.types", doc.item); } });"#;
    let pool = JsPool::start(vec![ExtensionSource::from_string("emitter.js", emitter)], config).unwrap();
    let cases: Vec<(Value, bool)> = vec![
        (json!({"s": "x", "n": 1.5, "i": -3, "b": false, "o": {}, "a": [1], "z": null}), true),
        (json!({"id": ["email", "a@b"], "k": ["conv", {"x": [1]}], "arr": [], "nest": [[1, 2], []]}), true),
        (json!({"u": "one", "opt": 2, "el": ["a", null]}), true),
        (json!({"u": ["a", "b"]}), true),
        (json!({"s": 1}), false),
        (json!({"i": 1.5}), false),
        (json!({"b": 0}), false),
        (json!({"o": []}), false),
        (json!({"id": ["email"]}), false),
        (json!({"id": ["", "x"]}), false),
        (json!({"id": ["email", {"x": 1}]}), false),
        (json!({"k": "conv"}), false),
        (json!({"nest": [[1.5]]}), false),
        (json!({"u": 3}), false),
        (json!({"el": [1]}), false),
        (json!({"z": 0}), false),
        (json!({"unknown": 1}), false),
    ];
    let docs: Vec<Arc<str>> = cases.iter().map(|(item, _)| Arc::from(json!({ "item": item }).to_string())).collect();
    let result = pool.run(0, docs);
    for ((item, accepted), outcome) in cases.iter().zip(&result.outcomes) {
        match (outcome, accepted) {
            (DocOutcome::Emitted(e), true) => assert_eq!(e.items[0].version, Some(3), "{item}"),
            (DocOutcome::Failed(e), false) => assert_eq!(e.kind, FailureKind::SchemaViolation, "{item}: {e:?}"),
            (other, _) => panic!("{item}: expected accepted = {accepted}, got {other:?}"),
        }
    }

    // Definitions the driver refuses, each with its file and line.
    let dir = TempDir::new("schema-bad");
    let exts = exts(dir.path(), &[]);
    let bad = [
        ("bad-type.js", "schema({ id: \"t.a\",\n  fields: { x: \"strin\" } });", "bad-type.js:1:", "field x: unknown type \"strin\""),
        (
            "bad-bracket.js",
            "schema({ id: \"t.b\", fields: { x: \"[string\" } });",
            "bad-bracket.js:1:",
            "field x: expected ] at character 8",
        ),
        (
            "bad-version.js",
            "schema({ id: \"t.c\", version: 0, fields: {} });",
            "bad-version.js:1:",
            "version must be a whole number from 1",
        ),
        (
            "bad-name.js",
            "schema({ id: \"t.d\", fields: { rd_x: \"any\" } });",
            "bad-name.js:1:",
            "field rd_x: names starting with _ or rd_",
        ),
        (
            "bad-expand.js",
            "schema({ id: \"t.e\", fields: { x: \"any\" }, expandable: [\"y\"] });",
            "bad-expand.js:1:",
            "expandable must be",
        ),
        (
            "twice.js",
            "schema({ id: \"t.f\", fields: {} });\nschema({ id: \"t.g\", fields: {} });",
            "twice.js:2:",
            "schema() called more than once",
        ),
    ];
    for (file, source, _, _) in &bad {
        std::fs::write(exts.join("schemas").join(file), source).unwrap();
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let out = rd(&db, &exts).arg("process").output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (file, _, site, message) in &bad {
        let line = stderr.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("{file} not reported:\n{stderr}"));
        assert!(line.contains(site) && line.contains(message), "{file}: {line}");
    }
}

const BAD_UP: &str = r#"schema({ id: "t.bad", version: 2, fields: { n: "integer" }, open: true, upgrade(doc) {
  if (doc.n === 1) return { n: 1, _deleted: true };
  if (doc.n === 2) return { n: 2, rd_key: ["evil", 2], rd_schema_id: "rd.msg.body" };
  if (doc.n === 3) return { n: 3, _id: "zzz", _rev: null };
  if (doc.n === 4) throw new Error("cannot upgrade four");
  if (doc.n === 5) return "not fields";
  return doc;
} });
"#;

#[test]
fn an_upgrade_cannot_delete_move_or_rekey_a_document_and_a_failing_one_changes_nothing() {
    let dir = TempDir::new("schema-bad-upgrade");
    let exts = exts(dir.path(), &[("schemas/t.bad.js", BAD_UP)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(&db, &exts, dir.path(), &(1..=6).map(|n| json!({"rd_key": ["bad", n], "rd_schema_id": "t.bad", "n": n})).collect::<Vec<_>>());
    let before = of_schema(&dump(&db, &exts), "t.bad").into_iter().cloned().collect::<Vec<_>>();
    let stderr = process(&db, &exts, &[]);
    let docs = dump(&db, &exts);
    let after = of_schema(&docs, "t.bad");
    assert_eq!(after.len(), 6, "no document deleted or added: {after:#?}");
    assert!(docs.iter().all(|d| d["_id"] != "zzz"));
    for (old, new) in before.iter().zip(&after) {
        if new["n"] == 6 {
            assert_eq!(new["rd_schema_version"], 2, "the good one is upgraded");
        } else {
            assert_eq!(*old, **new, "a refused upgrade leaves the document as it was");
        }
    }
    for n in 1..=5 {
        let id = format!("rc!bad.{}!t.bad", base64(&json!(n)));
        assert!(stderr.lines().any(|l| l.contains(&id) && l.contains("could not be upgraded")), "{n} not reported:\n{stderr}");
    }
    assert!(stderr.contains("gave field `_deleted`") && stderr.contains("cannot upgrade four"), "{stderr}");

    // An upgrade that loops stops the pass at its first document, not one time limit each.
    std::fs::write(
        exts.join("schemas/t.bad.js"),
        "schema({ id: \"t.bad\", version: 3, fields: { n: \"integer\" }, open: true, upgrade(doc) { for (;;) {} } });",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut c = rd(&db, &exts);
    c.arg("process");
    let stderr = ok(c);
    assert!(stderr.contains("the upgrade pass over t.bad stopped"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
}

#[test]
fn checks_hold_against_a_mutating_validate_and_a_patched_prototype() {
    let dir = TempDir::new("schema-tamper");
    let def = r#"schema({ id: "t.t", fields: { n: "string" }, validate(doc) { doc.n = 42; doc.extra = "sneaky"; } });"#;
    let patcher = r#"Object.prototype.open = true;
extension({ id: "t.patcher", source_schemas: ["t.in"], handler(doc) { emit_schema("t.t", { n: "x", extra: 1 }, { rd_key: ["p", 1] }); } });"#;
    let plain = r#"extension({ id: "t.plain", source_schemas: ["t.in"], handler(doc) { emit_schema("t.t", { n: "ok" }, { rd_key: ["q", 1] }); } });"#;
    let exts = exts(dir.path(), &[("schemas/t.t.js", def), ("patcher.js", patcher), ("plain.js", plain)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(&db, &exts, dir.path(), &[json!({"rd_key": ["in", 1], "rd_schema_id": "t.in"})]);
    process(&db, &exts, &[]);
    let docs = dump(&db, &exts);
    let written = of_schema(&docs, "t.t");
    assert_eq!(written.len(), 1, "{written:#?}");
    assert_eq!((&written[0]["n"], written[0].get("extra")), (&json!("ok"), None), "what validate() did to its argument is not written");
    let errors = of_schema(&docs, "rd.core.error");
    assert!(
        errors.iter().any(|e| e["error_details"]["message"]
            == "t.patcher emitted t.t, field extra: not a field of the schema (open: true in the definition allows others)"),
        "{errors:#?}"
    );

    // A --schemas folder that is not there is an error, not silently no definitions.
    let out = rd(&db, &exts).args(["--schemas", "/nonexistent/schemas", "process"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/schemas"), "{}", String::from_utf8_lossy(&out.stderr));
}
