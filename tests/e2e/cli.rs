//! The `raindrop` binary as a user meets it.

use crate::support::{raindrop, TempDir};

#[test]
fn ext_run_prints_each_emitted_item_as_a_json_line() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("hello.js");
    std::fs::write(&file, "extension({\n  id: 'me.hello',\n  source_schemas: ['rd.msg.body'],\n  handler(doc) {\n    emit_schema('me.greeting', { text: 'Hello, ' + doc.name });\n    emit_schema('me.count', { n: doc.name.length });\n  },\n});\n").unwrap();
    let out = raindrop().args(["ext", "run"]).arg(&file).args(["--doc", r#"{"name":"Wörld"}"#]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"schema_id": "me.greeting", "items": {"text": "Hello, Wörld"}}),
            serde_json::json!({"schema_id": "me.count", "items": {"n": 5}}),
        ]
    );
    // The document can come from a file.
    let doc = dir.path().join("doc.json");
    std::fs::write(&doc, r#"{"name":"file"}"#).unwrap();
    let out = raindrop().args(["ext", "run"]).arg(&file).arg("--doc").arg(format!("@{}", doc.display())).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("Hello, file"));
}

#[test]
fn ext_run_reports_errors_with_file_and_line() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("oops.js");
    std::fs::write(&file, "extension({ id: 'oops', source_schemas: ['x'],\n  handler(doc) {\n    return doc.missing.field;\n  } });\n")
        .unwrap();
    let out = raindrop().args(["ext", "run"]).arg(&file).args(["--doc", "{}"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&format!("{}:3:", file.display())) && err.contains("doc.missing is undefined"), "{err}");
    // Bad input is refused before any JS runs.
    let out = raindrop().args(["ext", "run"]).arg(&file).args(["--doc", r#"{"a":"\ud800"}"#]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[test]
fn ext_list_shows_declarations_and_load_errors() {
    let dir = TempDir::new("cli");
    std::fs::write(dir.path().join("a.js"), "extension({ id: 'a.one', source_schemas: ['s1', 's2'], category: 'extender', confidence: 2,\n source_fields: ['x'], indexes: [['s3', 'y']], handler() {}, later_handler() {}, later_in_parts: true });").unwrap();
    std::fs::write(dir.path().join("b.js"), "extension({ id: 'b.two', source_schemas: ['s1'],\n handler() { syntax error here } });")
        .unwrap();
    let out = raindrop().args(["ext", "list", "--json", "--extensions"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a load error makes the listing fail");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["id"], "a.one");
    assert_eq!(lines[0]["category"], "extender");
    assert_eq!(lines[0]["source_schemas"], serde_json::json!(["s1", "s2"]));
    // The whole declaration: what the handler reads, what it looks up, how its later values run.
    assert_eq!(lines[0]["source_fields"], serde_json::json!(["x"]));
    assert_eq!(lines[0]["indexes"], serde_json::json!([["s3", "y"]]));
    assert_eq!(lines[0]["later_in_parts"], serde_json::json!(true));
    assert_eq!(lines[0]["has_later_handler"], serde_json::json!(true));
    assert!(lines[0]["file"].as_str().unwrap().ends_with("a.js"), "{}", lines[0]);
    assert!(lines[1]["error"].as_str().unwrap().contains("b.js:2:"), "{}", lines[1]);
}
