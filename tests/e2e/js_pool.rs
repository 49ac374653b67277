//! The JS pool on the real engine: round trips, unicode, errors with locations, time limits,
//! memory caps, sandbox isolation, and a 2-thread pool under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raindrop::js::{Batch, DocOutcome, ExtensionSource, FailureKind, HostFunctions, JsPool, PoolConfig};
use serde_json::{json, Value};

fn ext(name: &str, src: &str) -> ExtensionSource {
    ExtensionSource::from_string(name, src)
}

fn docs(values: &[Value]) -> Vec<Arc<str>> {
    values.iter().map(|v| Arc::from(v.to_string())).collect()
}

fn emitted(outcome: &DocOutcome) -> Vec<(String, Value)> {
    match outcome {
        DocOutcome::Emitted(e) => e.items.iter().map(|i| (i.schema_id.clone(), Value::Object(i.fields().unwrap_or_default()))).collect(),
        DocOutcome::Failed(e) => panic!("expected emitted items, got {e:?}"),
    }
}

fn failure(outcome: &DocOutcome) -> &raindrop::js::HandlerError {
    match outcome {
        DocOutcome::Failed(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

const ECHO: &str = r#"
extension({
  id: "test.echo",
  source_schemas: ["rd.test"],
  handler(doc) {
    emit_schema("rd.test.out", { same: doc, keys: Object.keys(doc).length }, { rd_key: ["test", doc.k] });
    if (doc.twice) emit_schema("rd.test.second", null);
  },
});
"#;

#[test]
fn emitted_items_round_trip() {
    let pool = JsPool::start(vec![ext("echo.js", ECHO)], PoolConfig::new(1)).unwrap();
    let input = json!({"k": 1, "nested": {"a": [1, 2.5, null, true, "s"]}, "twice": true});
    let r = pool.run(0, docs(std::slice::from_ref(&input)));
    let DocOutcome::Emitted(e) = &r.outcomes[0] else { panic!("{:?}", r.outcomes[0]) };
    assert_eq!(e.items.len(), 2);
    assert_eq!(e.items[0].schema_id, "rd.test.out");
    assert_eq!(e.items[0].fields().unwrap()["same"], input);
    assert_eq!(e.items[0].fields().unwrap()["keys"], 3);
    assert_eq!(e.items[0].rd_key, Some(json!(["test", 1])));
    assert_eq!(e.items[1].schema_id, "rd.test.second");
    assert!(e.items[1].items.is_none());
}

#[test]
fn unicode_survives_and_lone_surrogates_are_rejected() {
    let pool = JsPool::start(vec![ext("echo.js", ECHO)], PoolConfig::new(1)).unwrap();
    let text = "caf\u{e9} \u{6771}\u{4eac} \u{1f600}\u{1d11e} \u{0}";
    let r = pool.run(0, docs(&[json!({"k": text})]));
    assert_eq!(emitted(&r.outcomes[0])[0].1["same"]["k"], text);
    // Escaped astral characters are fine; a lone surrogate is not, and only that document fails.
    let batch: Vec<Arc<str>> = vec![
        Arc::from(r#"{"k":"\ud83d\ude00"}"#),
        Arc::from(r#"{"k":"bad \ud800 here"}"#),
        Arc::from(r#"{"k":"\\ud800 is an escaped backslash"}"#),
        Arc::from(r#"{"k":"\udc00"}"#),
    ];
    let r = pool.run(0, batch);
    assert_eq!(emitted(&r.outcomes[0])[0].1["same"]["k"], "\u{1f600}");
    assert_eq!(failure(&r.outcomes[1]).kind, FailureKind::BadInput);
    assert!(failure(&r.outcomes[1]).message.contains("surrogate"), "{:?}", r.outcomes[1]);
    assert_eq!(emitted(&r.outcomes[2])[0].1["same"]["k"], "\\ud800 is an escaped backslash");
    assert_eq!(failure(&r.outcomes[3]).kind, FailureKind::BadInput);
    // A handler that makes a lone surrogate fails cleanly too.
    let maker = ext("maker.js", r#"extension({id: "t.m", source_schemas: ["x"], handler() { emit_schema("x", {s: "\ud800"}); }});"#);
    let pool = JsPool::start(vec![maker], PoolConfig::new(1)).unwrap();
    let r = pool.run(0, docs(&[json!({})]));
    assert_eq!(failure(&r.outcomes[0]).kind, FailureKind::BadOutput);
}

#[test]
fn an_eight_megabyte_document() {
    let src = r#"extension({id: "t.len", source_schemas: ["x"], handler(doc) { emit_schema("x.len", {n: doc.body.length, tail: doc.body.slice(-3)}); }});"#;
    let pool = JsPool::start(vec![ext("len.js", src)], PoolConfig::new(1)).unwrap();
    let body = "\u{e9}\u{1f600}abcdef".repeat(8 * 1024 * 1024 / 12);
    let r = pool.run(0, docs(&[json!({"body": body})]));
    let out = emitted(&r.outcomes[0]);
    assert_eq!(out[0].1["n"], body.encode_utf16().count());
    assert_eq!(out[0].1["tail"], "def");
}

#[test]
fn an_exception_is_reported_with_file_and_line() {
    let src = "extension({\n  id: \"t.throw\",\n  source_schemas: [\"x\"],\n  handler(doc) {\n    if (doc.bad) {\n      throw new TypeError(\"no good: \" + doc.bad);\n    }\n    emit_schema(\"x.ok\", {});\n  },\n});\n";
    let pool = JsPool::start(vec![ext("exts/thrower.js", src)], PoolConfig::new(1)).unwrap();
    let r = pool.run(0, docs(&[json!({}), json!({"bad": "doc"}), json!({})]));
    assert_eq!(emitted(&r.outcomes[0]).len(), 1);
    let e = failure(&r.outcomes[1]);
    assert_eq!(e.kind, FailureKind::Exception);
    assert_eq!(e.message, "no good: doc");
    assert_eq!(e.file.as_deref(), Some("exts/thrower.js"));
    assert_eq!(e.line, Some(6));
    assert!(e.stack.as_deref().unwrap().contains("handler@exts/thrower.js:6"), "{:?}", e.stack);
    assert_eq!(emitted(&r.outcomes[2]).len(), 1, "the next document in the batch still runs");
}

#[test]
fn load_errors_name_the_file_and_line_and_the_rest_still_load() {
    let sources = vec![
        ext("a-syntax.js", "var x = 1;\nextension({ id: 'a', source_schemas: ['x'], handler() { return 1 +; } });\n"),
        ext("b-decl.js", "\n\nextension({ id: 'b', source_schemas: 'x', handler() {} });\n"),
        ext("c-none.js", "var nothing = 1;\n"),
        ext("d-good.js", "extension({ id: 'd', source_schemas: ['x'], handler() { emit_schema('y', {}); } });\n"),
        ext("e-top.js", "\nthrow new Error('top-level failure');\n"),
        ext("f-dup.js", "extension({ id: 'd', source_schemas: ['x'], handler() {} });\n"),
    ];
    let pool = JsPool::start(sources, PoolConfig::new(1)).unwrap();
    let errs: Vec<String> = pool.extensions().iter().map(|e| e.declaration.clone().err().unwrap_or_default()).collect();
    assert!(errs[0].starts_with("a-syntax.js:2:"), "{}", errs[0]);
    assert!(errs[1].starts_with("b-decl.js:3:") && errs[1].contains("source_schemas"), "{}", errs[1]);
    assert!(errs[2].contains("never calls extension"), "{}", errs[2]);
    assert!(errs[3].is_empty());
    assert!(errs[4].starts_with("e-top.js:2:") && errs[4].contains("top-level failure"), "{}", errs[4]);
    assert!(errs[5].contains("already declared in d-good.js"), "{}", errs[5]);
    let d = pool.find("d").unwrap();
    assert_eq!(emitted(&pool.run(d, docs(&[json!({})])).outcomes[0]).len(), 1);
    // Documents for an extension that did not load fail as such.
    assert_eq!(failure(&pool.run(0, docs(&[json!({})])).outcomes[0]).kind, FailureKind::NotLoaded);
}

#[test]
fn an_infinite_loop_is_stopped_near_its_limit_while_another_thread_keeps_working() {
    let looper = ext(
        "loop.js",
        r#"extension({id: "t.loop", source_schemas: ["x"], time_limit_ms: 400,
        handler(doc) { if (doc.spin) { for (;;) {} } emit_schema("x.ok", {}); }});"#,
    );
    let quick = ext("quick.js", r#"extension({id: "t.quick", source_schemas: ["x"], handler(doc) { emit_schema("x.q", {i: doc.i}); }});"#);
    let pool = JsPool::start(vec![looper, quick], PoolConfig::new(2)).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    pool.submit(Batch { ext: 0, docs: docs(&[json!({"spin": true}), json!({})]), tag: 999 }, &tx);
    for i in 0..50 {
        pool.submit(Batch { ext: 1, docs: docs(&[json!({"i": i})]), tag: i }, &tx);
    }
    let mut quick_done_before_loop = 0;
    let mut loop_result = None;
    for _ in 0..51 {
        let r = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if r.tag == 999 {
            loop_result = Some((r, start.elapsed()));
        } else {
            assert_eq!(emitted(&r.outcomes[0])[0].1["i"], r.tag);
            if loop_result.is_none() {
                quick_done_before_loop += 1;
            }
        }
    }
    let (r, elapsed) = loop_result.unwrap();
    let e = failure(&r.outcomes[0]);
    assert_eq!(e.kind, FailureKind::TimeLimit);
    assert!(e.message.contains("400 ms"), "{}", e.message);
    assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1500), "stopped after {elapsed:?}");
    assert_eq!(emitted(&r.outcomes[1]).len(), 1, "the rest of the batch runs after the stop");
    assert!(quick_done_before_loop >= 40, "the other thread kept processing ({quick_done_before_loop})");
    // The runtime that was interrupted is still usable.
    for _ in 0..4 {
        assert_eq!(emitted(&pool.run(0, docs(&[json!({})])).outcomes[0]).len(), 1);
    }
}

#[test]
fn a_memory_bomb_is_contained() {
    let bomb = ext(
        "bomb.js",
        r#"extension({id: "t.bomb", source_schemas: ["x"], handler(doc) {
        if (doc.kind === "objects") { const a = []; for (;;) a.push({ i: a.length, s: "x" + a.length }); }
        if (doc.kind === "string") { let s = "xxxxxxxxxxxxxxxx"; for (;;) s = s + s; }
        emit_schema("x.ok", { fine: true });
    }});"#,
    );
    let mut config = PoolConfig::new(1);
    config.heap_bytes = 64 << 20;
    // Far longer than a capped bomb takes: a stop by the clock would fail the test, not pass it.
    config.time_limit = Duration::from_secs(120);
    let pool = JsPool::start(vec![bomb], config).unwrap();
    for kind in ["objects", "string"] {
        let start = Instant::now();
        let r = pool.run(0, docs(&[json!({"kind": kind}), json!({})]));
        let e = failure(&r.outcomes[0]);
        match kind {
            "objects" => assert_eq!(e.kind, FailureKind::OutOfMemory, "{e:?}"),
            // Doubling a string makes ropes (a few bytes each) until the longest string the
            // engine allows: a plain exception, not a memory bomb.
            _ => assert!(
                e.kind == FailureKind::OutOfMemory || (e.kind == FailureKind::Exception && e.message.contains("allocation size overflow")),
                "{e:?}"
            ),
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{kind}: {:?}", start.elapsed());
        assert_eq!(emitted(&r.outcomes[1]), vec![("x.ok".to_string(), json!({"fine": true}))], "{kind}: the next document works");
    }
}

#[test]
fn extensions_setting_the_same_global_see_only_their_own() {
    let a = ext(
        "a.js",
        r#"
        var shared = "A";
        globalThis.counter = 0;
        Array.prototype.push = function () { throw new Error("A broke push"); };
        JSON.stringify = function () { return "A broke stringify"; };
        emit_schema = function () { throw new Error("A replaced emit_schema"); };
        extension({id: "t.a", source_schemas: ["x"], handler(doc) {
            counter += 1; doc.touched_by = "A";
            // A broke its own emit_schema: it can only hurt itself.
            try { emit_schema("x", {}); } catch (e) { log("as expected:", e.message); }
        }});"#,
    );
    let b = ext(
        "b.js",
        r#"
        var shared = "B";
        extension({id: "t.b", source_schemas: ["x"], handler(doc) {
            const list = []; list.push(1);
            emit_schema("x.b", { shared, counter: typeof counter, touched: doc.touched_by || null, list, s: JSON.stringify([1]) });
        }});"#,
    );
    let pool = JsPool::start(vec![a, b], PoolConfig::new(1)).unwrap();
    let doc = docs(&[json!({"n": 1})]);
    let ra = pool.run(0, doc.clone());
    assert_eq!(emitted(&ra.outcomes[0]).len(), 0);
    let rb = pool.run(1, doc);
    assert_eq!(
        emitted(&rb.outcomes[0]),
        vec![("x.b".to_string(), json!({"shared": "B", "counter": "undefined", "touched": null, "list": [1], "s": "[1]"}))]
    );
}

#[test]
fn time_in_host_functions_does_not_count_against_the_limit_but_javascript_between_them_does() {
    let mut config = PoolConfig::new(1);
    let mut host = HostFunctions::new();
    // A slow store: each answer takes 300 ms.
    host.register("slow_store", |_, _| {
        std::thread::sleep(Duration::from_millis(300));
        Ok(json!(1))
    });
    config.host_functions = host;
    let src = r#"extension({id: "t.slow", source_schemas: ["x"], time_limit_ms: 400, handler(doc) {
        let n = 0;
        for (let i = 0; i < 4; i++) {
            n += slow_store();
            // JavaScript's own time between the calls: 150 ms each when asked to spin.
            const until = Date.now() + (doc.spin ? 150 : 0);
            while (Date.now() < until) {}
        }
        emit_schema("x.r", { n });
    }});"#;
    let pool = JsPool::start(vec![ext("slow.js", src)], config).unwrap();
    let started = Instant::now();
    let r = pool.run(0, docs(&[json!({}), json!({"spin": true})]));
    // 1.2 s waiting on the host: not the handler's time.
    assert_eq!(emitted(&r.outcomes[0])[0].1, json!({"n": 4}));
    // 600 ms of its own JavaScript: past its 400 ms.
    assert_eq!(failure(&r.outcomes[1]).kind, FailureKind::TimeLimit);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn host_functions_are_plain_synchronous_globals() {
    let mut config = PoolConfig::new(1);
    let mut host = HostFunctions::new();
    host.register("add_numbers", |call, args| {
        let sum: f64 = args.iter().filter_map(Value::as_f64).sum();
        Ok(json!({"sum": sum, "caller": call.extension_id}))
    });
    host.register("always_fails", |_, _| Err("nope".into()));
    config.host_functions = host;
    let src = r#"extension({id: "t.host", source_schemas: ["x"], handler(doc) {
        const r = add_numbers(1, 2, doc.n);
        let err = null;
        try { always_fails(); } catch (e) { err = e.message; }
        emit_schema("x.r", { r, err, raw: typeof __rd_host });
    }});"#;
    let pool = JsPool::start(vec![ext("host.js", src)], config).unwrap();
    let r = pool.run(0, docs(&[json!({"n": 4})]));
    assert_eq!(emitted(&r.outcomes[0])[0].1, json!({"r": {"sum": 7, "caller": "t.host"}, "err": "always_fails: nope", "raw": "undefined"}));
}

#[test]
fn a_two_thread_pool_processes_10000_documents_each_in_its_place() {
    let src = r#"extension({id: "t.double", source_schemas: ["x"], handler(doc) {
        emit_schema("x.double", { i: doc.i, twice: doc.i * 2, label: doc.label.toUpperCase() });
    }});"#;
    let pool = JsPool::start(vec![ext("double.js", src)], PoolConfig::new(2)).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for b in 0..100u64 {
        let batch: Vec<Value> = (0..100)
            .map(|j| {
                let i = b * 100 + j;
                json!({"i": i, "label": format!("doc-{i}-\u{e9}")})
            })
            .collect();
        pool.submit(Batch { ext: 0, docs: docs(&batch), tag: b }, &tx);
    }
    let mut seen = vec![false; 10_000];
    for _ in 0..100 {
        let r = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(r.outcomes.len(), 100);
        for (j, o) in r.outcomes.iter().enumerate() {
            let i = r.tag * 100 + j as u64;
            let out = emitted(o);
            assert_eq!(out[0].1, json!({"i": i, "twice": i * 2, "label": format!("DOC-{i}-\u{c9}")}));
            assert!(!seen[i as usize]);
            seen[i as usize] = true;
        }
    }
    assert!(seen.iter().all(|s| *s));
}
