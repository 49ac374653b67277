//! The living daemon through the real binary: extensions added, edited, broken and deleted
//! while it runs; SIGTERM and SIGHUP; `/healthz`, `/status` and `/metrics` (read by a
//! Prometheus text-format parser); the token rule; `ext run` on the database; runaway cascades.
//! Outcomes are polled for, not slept on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{dump, eventually, free_port, of_schema, ok, raindrop, rd, repo, Daemon, TempDir};

const A: &str = r#"extension({ id: "live.a", source_schemas: ["rd.test.a"],
  handler(doc) { emit_schema("rd.test.b", { v: doc.v + 1 }); } });"#;

fn b_times(k: u32) -> String {
    format!("extension({{ id: \"live.b\", source_schemas: [\"rd.test.b\"],\n  handler(doc) {{ emit_schema(\"rd.test.c\", {{ v: doc.v * {k} }}); }} }});\n")
}

fn seed(db: &str, exts: &Path, dir: &Path, from: u32, n: u32) {
    let path = dir.join(format!("seed-{from}.jsonl"));
    let lines: String =
        (from..from + n).map(|i| json!({"rd_key": ["test", i], "rd_schema_id": "rd.test.a", "v": i}).to_string() + "\n").collect();
    std::fs::write(&path, lines).unwrap();
    ok({
        let mut c = rd(db, exts);
        c.arg("add-schemas").arg(&path);
        c
    });
}

fn values(db: &str, exts: &Path, schema: &str) -> Vec<i64> {
    let mut v: Vec<i64> = of_schema(&dump(db, exts), schema).iter().map(|d| d["v"].as_i64().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn extensions_are_picked_up_changed_kept_and_withdrawn_while_the_daemon_runs() {
    let dir = TempDir::new("live");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(exts.join("a.js"), A).unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(&db, &exts, dir.path(), 0, 5);
    let mut cmd = rd(&db, &exts);
    let port = free_port();
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]);
    let mut daemon = Daemon::start(cmd, dir.path());
    daemon.port = port;
    eventually(60, "the first extension's outputs", || values(&db, &exts, "rd.test.b") == vec![1, 2, 3, 4, 5]);

    // A new file: loaded, run over the documents already there.
    std::fs::write(exts.join("b.js"), b_times(2)).unwrap();
    eventually(30, "a new extension's outputs", || values(&db, &exts, "rd.test.c") == vec![2, 4, 6, 8, 10]);
    // Edited: exactly its outputs re-derived.
    std::fs::write(exts.join("b.js"), b_times(3)).unwrap();
    eventually(30, "an edited extension's outputs", || values(&db, &exts, "rd.test.c") == vec![3, 6, 9, 12, 15]);
    // Broken: reported with file and line; the last version that loaded keeps running.
    std::fs::write(
        exts.join("b.js"),
        "extension({ id: \"live.b\", source_schemas: [\"rd.test.b\"],\n  handler(doc) { emit_schema( } });\n",
    )
    .unwrap();
    eventually(30, "the broken file in /status", || {
        daemon.status()["failed_to_load"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x["error"].as_str().unwrap_or_default().contains("b.js:2:")))
    });
    seed(&db, &exts, dir.path(), 10, 1);
    eventually(30, "the kept version on a new document", || values(&db, &exts, "rd.test.c") == vec![3, 6, 9, 12, 15, 33]);
    // Deleted: its outputs withdrawn, and the log says so.
    std::fs::remove_file(exts.join("b.js")).unwrap();
    eventually(30, "a deleted extension's outputs withdrawn", || values(&db, &exts, "rd.test.c").is_empty());
    assert!(daemon.log().contains("extension live.b is gone from the folder: its outputs"), "{}", daemon.log());
    assert_eq!(values(&db, &exts, "rd.test.b").len(), 6, "the other extension's outputs stay");

    // What it serves.
    assert_eq!(daemon.get("/healthz", None).text().unwrap(), "ok\n");
    let status = daemon.status();
    let a = &status["extensions"]["live.a"];
    assert!(a["processed"].as_u64().unwrap() >= 6, "{status}");
    assert!(a["docs_per_second"].as_f64().unwrap() > 0.0, "{status}");
    assert!(a["mean_ms"].as_f64().is_some() && a["p99_ms"].as_f64().is_some(), "{status}");
    eventually(15, "a backlog of 0 in /status", || daemon.status()["backlog"] == json!(0));
    assert_eq!(status["daemon"]["db"], json!(db));
    let text = daemon.get("/metrics", None).text().unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let processed = scrape
        .samples
        .iter()
        .find(|s| s.metric == "raindrop_documents_processed_total" && s.labels.get("extension") == Some("live.a"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(matches!(processed.value, prometheus_parse::Value::Counter(n) if n >= 6.0), "{processed:?}");
    assert!(
        scrape.samples.iter().any(|s| s.metric == "raindrop_handler_seconds" || s.metric.starts_with("raindrop_handler_seconds")),
        "{text}"
    );
    assert!(scrape.samples.iter().any(|s| s.metric == "raindrop_backlog_changes"), "{text}");
    // `raindrop status` reads the running daemon.
    let out = rd(&db, &exts)
        .arg("status")
        .env("RAINDROP_CONFIG", write_config(dir.path(), &format!("listen = \"127.0.0.1:{port}\"\n")))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("daemon: pid") && shown.contains("live.a"), "{shown}");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(10), Some(0), "{}", daemon.log());
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join(format!("config-{}.toml", free_port()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sigterm_in_a_busy_run_exits_cleanly_and_the_next_run_derives_the_rest() {
    let dir = TempDir::new("sigterm");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    // About 2 ms a document: a run of 3,000 sources takes several seconds.
    std::fs::write(
        exts.join("slow.js"),
        r#"extension({ id: "busy.slow", source_schemas: ["rd.test.a"], handler(doc) {
        const until = Date.now() + 2; while (Date.now() < until) {}
        emit_schema("rd.test.b", { v: doc.v + 1 });
    } });"#,
    )
    .unwrap();
    std::fs::write(exts.join("next.js"), b_times(2).replace("live.b", "busy.next")).unwrap();
    let reference = dir.path().join("reference").to_string_lossy().into_owned();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(&reference, &exts, dir.path(), 0, 3000);
    seed(&db, &exts, dir.path(), 0, 3000);
    ok({
        let mut c = rd(&reference, &exts);
        c.arg("process");
        c
    });
    let mut cmd = rd(&db, &exts);
    cmd.args(["process", "--continuous", "--page-size", "200"]);
    let mut daemon = Daemon::start(cmd, dir.path());
    eventually(60, "some pages written", || !values(&db, &exts, "rd.test.b").is_empty());
    let asked = Instant::now();
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(12), Some(0), "{}", daemon.log());
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert!(values(&db, &exts, "rd.test.b").len() < 3000, "the stop came in the middle of the run");
    ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    crate::support::assert_same_docs(&dump(&db, &exts), &dump(&reference, &exts), "after a SIGTERM and a second run");
}

#[test]
fn sighup_reads_the_config_file_again() {
    let dir = TempDir::new("sighup");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    for (folder, src) in [(&first, A.to_string()), (&second, A.replace("live.a", "live.second").replace("rd.test.b", "rd.test.second"))] {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("x.js"), src).unwrap();
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(&db, &first, dir.path(), 0, 3);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("extensions = {:?}\n", first.display().to_string())).unwrap();
    let mut cmd = raindrop();
    cmd.arg("--db").arg(&db).args(["--js-threads", "2"]).env("RAINDROP_CONFIG", &config).args(["run", "--listen", "off"]);
    let mut daemon = Daemon::start(cmd, dir.path());
    eventually(60, "the first folder's extension", || values(&db, &first, "rd.test.b").len() == 3);
    // A config file broken meanwhile: said, and the settings in use kept.
    std::fs::write(&config, "extensions = [[[\n").unwrap();
    daemon.signal(libc::SIGHUP);
    eventually(30, "the broken config reported", || daemon.log().contains("the settings in use are kept"));
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running:\n{}", daemon.log());
    std::fs::write(&config, format!("extensions = {:?}\n", second.display().to_string())).unwrap();
    daemon.signal(libc::SIGHUP);
    eventually(30, "the second folder's extension after SIGHUP", || values(&db, &first, "rd.test.second").len() == 3);
    eventually(30, "the first folder's extension withdrawn", || values(&db, &first, "rd.test.b").is_empty());
    assert!(daemon.log().contains("SIGHUP"), "{}", daemon.log());
    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.wait_exit(10), Some(0));
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let dir = TempDir::new("token");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(exts.join("a.js"), A).unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let out = rd(&db, &exts).args(["run", "--listen", &listen]).env_remove("RAINDROP_API_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"), "{}", String::from_utf8_lossy(&out.stderr));

    let mut cmd = rd(&db, &exts);
    cmd.args(["run", "--listen", &listen]).env("RAINDROP_API_TOKEN", "s3cret-token");
    let mut daemon = Daemon::start(cmd, dir.path());
    daemon.port = port;
    eventually(30, "the listener", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let denied = daemon.get("/status", None);
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(daemon.get("/metrics", Some("wrong")).status().as_u16(), 401);
    let allowed = daemon.get("/status", Some("s3cret-token"));
    assert_eq!(allowed.status().as_u16(), 200);
    assert!(!daemon.log().contains("s3cret-token"));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(10), Some(0));
}

#[test]
fn ext_run_tries_every_bundled_extension_on_the_sample_mail_and_writes_nothing() {
    let dir = TempDir::new("ext-run-db");
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let bundled = repo().join("js-extensions");
    ok({
        let mut c = rd(&db, &bundled);
        c.arg("import").arg(repo().join("fixtures/mail"));
        c
    });
    // IMAP folder locations come only from a sync; one made by hand stands in for them.
    let seed = dir.path().join("locations.jsonl");
    let locations = json!({"rd_key": ["email", "seed@example.com"], "rd_schema_id": "rd.msg.imap-locations",
        "locations": [{"account": "work", "folder_name": "Archive", "uid": 7}]});
    std::fs::write(&seed, locations.to_string()).unwrap();
    ok({
        let mut c = rd(&db, &bundled);
        c.arg("add-schemas").arg(&seed);
        c
    });
    ok({
        let mut c = rd(&db, &bundled);
        c.arg("process");
        c
    });
    let before = dump(&db, &bundled);
    let list = rd(&db, &bundled).args(["ext", "list", "--json"]).output().unwrap();
    let declarations: Vec<Value> = String::from_utf8_lossy(&list.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(declarations.len() >= 17);
    for d in &declarations {
        let file = d["file"].as_str().unwrap();
        // By schema for one that declares its schemas, else (a filter) on message bodies.
        let schema = d["source_schemas"].as_array().and_then(|s| s.first()).and_then(Value::as_str).unwrap_or("rd.msg.body").to_string();
        let Some(doc) = of_schema(&before, &schema).first().map(|d| d["_id"].as_str().unwrap().to_string()) else {
            panic!("no {schema} document in the sample mail for {file}");
        };
        let out = rd(&db, &bundled).args(["ext", "run", file, "--id", &doc]).output().unwrap();
        assert!(out.status.success(), "{file} on {doc}: {}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let item: Value = serde_json::from_str(line).unwrap();
            assert!(item.get("schema_id").is_some() || item.get("process_later").is_some(), "{file}: {line}");
        }
        let by_schema = rd(&db, &bundled).args(["ext", "run", file, "--schema", &schema, "--limit", "3"]).output().unwrap();
        assert!(by_schema.status.success(), "{file} on {schema}: {}", String::from_utf8_lossy(&by_schema.stderr));
    }
    // msg-email-to-body, on a message, emits its body.
    let email = of_schema(&before, "rd.msg.email")[0]["_id"].as_str().unwrap().to_string();
    let out =
        rd(&db, &bundled).args(["ext", "run", bundled.join("msg-email-to-body.js").to_str().unwrap(), "--id", &email]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"rd.msg.body\""), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(dump(&db, &bundled), before, "ext run wrote nothing");
}

#[test]
fn two_extensions_feeding_each_other_are_stopped_with_an_error_naming_both() {
    // Story: two extensions that keep rewriting each other's outputs (each write changes the
    // source revision the other records) spun for ever.
    let dir = TempDir::new("cascade");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("ping.js"),
        r#"extension({ id: "loop.ping", source_schemas: ["rd.test.ping"],
        handler(doc) { emit_schema("rd.test.pong", { seen: doc._rev }); } });"#,
    )
    .unwrap();
    std::fs::write(
        exts.join("pong.js"),
        r#"extension({ id: "loop.pong", source_schemas: ["rd.test.pong"],
        handler(doc) { emit_schema("rd.test.ping", { echo: doc._rev }); } });"#,
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let seed = dir.path().join("seed.jsonl");
    std::fs::write(&seed, json!({"rd_key": ["t", 1], "rd_schema_id": "rd.test.ping", "n": 0}).to_string()).unwrap();
    ok({
        let mut c = rd(&db, &exts);
        c.arg("add-schemas").arg(&seed);
        c
    });
    let started = Instant::now();
    let out = rd(&db, &exts).arg("process").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(60));
    let errors = of_schema(&dump(&db, &exts), "rd.core.error").into_iter().cloned().collect::<Vec<_>>();
    let messages: Vec<String> = errors.iter().map(|e| e["error_details"]["message"].as_str().unwrap_or_default().to_string()).collect();
    assert!(messages.iter().any(|m| m.contains("runaway cascade") && m.contains("loop.ping") && m.contains("loop.pong")), "{messages:?}");
    // Settled: a second run has nothing to do.
    let again = ok({
        let mut c = rd(&db, &exts);
        c.arg("process");
        c
    });
    assert!(again.contains("0 documents written"), "{again}");
}

#[test]
fn init_writes_a_commented_config_that_loads() {
    let dir = TempDir::new("init");
    let path = dir.path().join("conf/raindrop.toml");
    let out = raindrop().arg("--config").arg(&path).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("# listen = \"127.0.0.1:5985\"") && text.contains("[[accounts]]"));
    let again = raindrop().arg("--config").arg(&path).arg("init").output().unwrap();
    assert_eq!(again.status.code(), Some(1), "an existing file is kept");
    let forced = raindrop().arg("--config").arg(&path).args(["init", "--force"]).output().unwrap();
    assert!(forced.status.success());
}

#[test]
fn a_library_edit_re_derives_its_users_outputs_and_errors_show_in_status() {
    let dir = TempDir::new("lib");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(exts.join("lib")).unwrap();
    std::fs::write(exts.join("lib/scale.js"), "function scale(v) { return v * 2; }\n").unwrap();
    std::fs::write(
        exts.join("scaled.js"),
        r#"load_lib("scale");
extension({ id: "lib.user", source_schemas: ["rd.test.a"], handler(doc) {
  if (doc.v === 3) throw new Error("three is not welcome");
  emit_schema("rd.test.b", { v: scale(doc.v) });
} });"#,
    )
    .unwrap();
    std::fs::write(
        exts.join("missing.js"),
        "load_lib(\"nowhere\");\nextension({ id: \"lib.missing\", source_schemas: [\"rd.test.a\"], handler() {} });\n",
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    seed(&db, &exts, dir.path(), 1, 3);
    let mut cmd = rd(&db, &exts);
    let port = free_port();
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]);
    let mut daemon = Daemon::start(cmd, dir.path());
    daemon.port = port;
    eventually(60, "the library's user's outputs", || values(&db, &exts, "rd.test.b") == vec![2, 4]);
    let status = daemon.status();
    let user = &status["extensions"]["lib.user"];
    assert_eq!(user["errors"], json!(1), "{status}");
    let last = &user["last_error"];
    assert_eq!(last["message"], json!("three is not welcome"), "{status}");
    assert!(last["file"].as_str().unwrap_or_default().ends_with("scaled.js") && last["line"] == json!(3), "{status}");
    let failed = &status["failed_to_load"][0];
    assert!(failed["file"].as_str().unwrap_or_default().ends_with("missing.js"), "{status}");
    assert!(failed["error"].as_str().unwrap_or_default().contains("missing.js:1: load_lib: there is no lib/nowhere.js"), "{status}");
    // The library changes: its user's outputs are re-derived.
    std::fs::write(exts.join("lib/scale.js"), "function scale(v) { return v * 5; }\n").unwrap();
    eventually(30, "outputs re-derived after a library edit", || values(&db, &exts, "rd.test.b") == vec![5, 10]);
    // A broken library: its user keeps running as it last loaded, library and all.
    std::fs::write(exts.join("lib/scale.js"), "function scale(v) { return v * ; }\n").unwrap();
    eventually(30, "the broken library reported", || daemon.status()["failed_to_load"].to_string().contains("lib/scale.js:1"));
    seed(&db, &exts, dir.path(), 4, 1);
    eventually(30, "the kept version on a new document", || values(&db, &exts, "rd.test.b") == vec![5, 10, 20]);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(10), Some(0), "{}", daemon.log());
}

#[test]
fn a_database_that_goes_away_is_waited_for_and_the_daemon_carries_on() {
    let mut server = crate::support::PouchServer::start();
    let url = server.db_url("daemonwait");
    let dir = TempDir::new("db-away");
    let exts = dir.path().join("exts");
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(exts.join("a.js"), A).unwrap();
    seed(&url, &exts, dir.path(), 0, 3);
    let mut cmd = rd(&url, &exts);
    cmd.args(["run", "--listen", "off"]).env("RAINDROP_DB_TIMEOUT_SECS", "5");
    let mut daemon = Daemon::start(cmd, dir.path());
    eventually(60, "outputs before the database goes away", || values(&url, &exts, "rd.test.b") == vec![1, 2, 3]);
    server.kill();
    eventually(60, "the daemon saying it waits", || daemon.log().contains("unreachable"));
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running:\n{}", daemon.log());
    server.restart();
    seed(&url, &exts, dir.path(), 10, 2);
    eventually(90, "outputs of documents added after the database came back", || values(&url, &exts, "rd.test.b") == vec![1, 2, 3, 11, 12]);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(10), Some(0), "{}", daemon.log());
}
