//! The JS API under `/api/` through the real daemon: the bundled inflow endpoints on the sample
//! mail; requests side by side; handlers that throw, loop or eat memory, and the server still
//! serving; bad requests, big bodies and slow clients; route files changed while it runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{eventually, free_port, ok, rd, repo, Daemon, TempDir};

/// A database of the sample mail, processed.
pub fn sample_mail_db(dir: &Path) -> String {
    let db = dir.join("db").to_string_lossy().into_owned();
    let exts = repo().join("js-extensions");
    for args in [vec!["import", repo().join("fixtures/mail").to_str().unwrap()], vec!["process"]] {
        ok({
            let mut c = rd(&db, &exts);
            c.arg("--config").arg(repo().join("fixtures/corpus-config.toml")).args(args);
            c
        });
    }
    db
}

/// `raindrop run` on `db` with the bundled extensions and the API folder `api`, listening on
/// a free port; returns once `/healthz` answers.
pub fn serve(db: &str, api: &Path, dir: &Path, threads: &str) -> Daemon {
    let port = free_port();
    let mut cmd = crate::support::raindrop();
    cmd.arg("--db").arg(db).arg("--extensions").arg(repo().join("js-extensions")).args(["--js-threads", threads]);
    cmd.arg("--config").arg(repo().join("fixtures/corpus-config.toml")).arg("--api").arg(api);
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]);
    let mut daemon = Daemon::start(cmd, dir);
    daemon.port = port;
    eventually(60, "the daemon listening", || {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).is_ok_and(|r| r.status().is_success())
    });
    daemon
}

/// `raindrop run` on an empty database serving an API folder of `files` (name, source), on 2
/// JS threads; the folder is `dir/api`.
fn api_daemon(tag: &str, files: &[(&str, &str)]) -> (TempDir, Daemon) {
    let dir = TempDir::new(tag);
    let api = dir.path().join("api");
    std::fs::create_dir_all(&api).unwrap();
    for (name, source) in files {
        std::fs::write(api.join(name), source).unwrap();
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let daemon = serve(&db, &api, dir.path(), "2");
    (dir, daemon)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

fn get(d: &Daemon, path: &str) -> (u16, Value) {
    let r = client().get(format!("http://127.0.0.1:{}{path}", d.port)).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn post(d: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(format!("http://127.0.0.1:{}{path}", d.port)).json(body).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn conv_path(id: &Value) -> String {
    let text = id.to_string();
    let encoded: String =
        text.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    format!("/api/inflow/conversations/{encoded}")
}

#[test]
fn every_inflow_endpoint_answers_on_the_sample_mail() {
    let dir = TempDir::new("inflow");
    let db = sample_mail_db(dir.path());
    let daemon = serve(&db, &repo().join("api"), dir.path(), "2");

    let (status, groups) = get(&daemon, "/api/inflow/groups");
    assert_eq!(status, 200, "{groups}");
    let tags: Vec<&str> = groups["groups"].as_array().unwrap().iter().map(|g| g["tag"].as_str().unwrap()).collect();
    assert!(tags.contains(&"mailing-list-test.lists.example.com") && tags.contains(&"bugzilla-message"), "{tags:?}");

    let list_path = "/api/inflow/conversations?group=mailing-list-test.lists.example.com&limit=2";
    let (status, list) = get(&daemon, list_path);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["conversations"].as_array().unwrap().len(), 2);
    assert!(list["total"].as_u64().unwrap() >= 5, "{list}");
    let (_, all) = get(&daemon, "/api/inflow/conversations?group=mailing-list-test.lists.example.com&limit=50");
    let question =
        all["conversations"].as_array().unwrap().iter().find(|c| c["subject"] == "What is the answer to this question?").unwrap().clone();
    assert_eq!(question["unread"], json!(1));

    let (status, conv) = get(&daemon, &conv_path(&question["id"]));
    assert_eq!(status, 200, "{conv}");
    let message = &conv["messages"][0];
    assert_eq!(message["body"], json!("The answer to that question is what.\n"));
    assert_eq!(message["seen"], json!(false));
    assert!(message["quoted"].is_array() && message["links"].is_array() && message["files"].is_array());
    // A message with links: the Facebook friend request.
    let (_, search) = get(&daemon, "/api/inflow/search?q=added%20you%20as%20a%20friend");
    let friend = &search["conversations"][0];
    let (_, fb) = get(&daemon, &conv_path(&friend["id"]));
    assert!(
        fb["messages"][0]["links"].as_array().unwrap().iter().any(|l| l["url"].as_str().unwrap_or_default().contains("facebook.com")),
        "{fb}"
    );
    assert_eq!(get(&daemon, &conv_path(&json!(["email", "nope"]))).0, 404);
    assert_eq!(get(&daemon, "/api/inflow/conversations/not-json").0, 400);

    let (_, contacts) = get(&daemon, "/api/inflow/contacts");
    assert!(contacts["contacts"].as_array().unwrap().iter().any(|c| c["name"] == "Raindrop Test Recipient"), "{contacts}");
    let (_, identities) = get(&daemon, "/api/inflow/identities");
    assert!(identities["mine"].as_array().unwrap().contains(&json!(["email", "raindrop_test_user@mozillamessaging.com"])), "{identities}");
    let (_, search) = get(&daemon, "/api/inflow/search?q=ANSWER");
    assert!(search["conversations"].as_array().unwrap().iter().any(|c| c["subject"] == "What is the answer to this question?"), "{search}");
    assert_eq!(get(&daemon, "/api/inflow/search").0, 400);

    // Marking the message read: the message at once, the conversation once the extensions ran.
    let (status, marked) = post(&daemon, "/api/inflow/messages/seen", &json!({"messages": [message["id"]], "seen": true}));
    assert_eq!((status, &marked["written"]), (200, &json!(1)), "{marked}");
    assert_eq!(get(&daemon, &conv_path(&question["id"])).1["messages"][0]["seen"], json!(true));
    eventually(30, "the conversation counted as read", || {
        let (_, all) = get(&daemon, "/api/inflow/conversations?group=mailing-list-test.lists.example.com&limit=50");
        all["conversations"].as_array().unwrap().iter().any(|c| c["id"] == question["id"] && c["unread"] == json!(0))
    });
    assert_eq!(post(&daemon, "/api/inflow/messages/seen", &json!({"messages": "x"})).0, 400);

    // Leaving a list: pending once, refused the second time.
    let (_, lists) = get(&daemon, "/api/inflow/mailing-lists");
    let subscribed =
        lists["lists"].as_array().unwrap().iter().find(|l| l["status"] == "subscribed").unwrap()["id"].as_str().unwrap().to_string();
    let (status, left) = post(&daemon, &format!("/api/inflow/mailing-lists/{subscribed}/unsubscribe"), &json!({}));
    assert_eq!((status, &left["status"]), (202, &json!("unsubscribe-pending")), "{left}");
    assert_eq!(post(&daemon, &format!("/api/inflow/mailing-lists/{subscribed}/unsubscribe"), &json!({})).0, 409);
    let (_, lists) = get(&daemon, "/api/inflow/mailing-lists");
    assert!(lists["lists"].as_array().unwrap().iter().any(|l| l["id"] == json!(subscribed) && l["status"] == "unsubscribe-pending"));

    // What is not served.
    let (status, body) = get(&daemon, "/api/nowhere");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no route"), "{body}");
    let r = client().delete(format!("http://127.0.0.1:{}/api/inflow/groups", daemon.port)).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}

const TRICKY: &str = r#"
route({ path: "/fast", handler() { return { json: { fast: true } }; } });
route({ path: "/slow", handler() { const until = Date.now() + 1500; while (Date.now() < until) {} return { json: { slow: true } }; } });
route({ path: "/throws", handler() {
  throw new Error("no such thing");
} });
route({ path: "/loops", time_limit_ms: 300, handler() { for (;;) {} } });
route({ path: "/eats", handler() { const a = []; for (;;) a.push(new ArrayBuffer(8 << 20)); } });
route({ path: "/bad-answer", handler() { return 42; } });
route({ method: "POST", path: "/echo/:name", handler(req) {
  return { status: 201, json: { name: req.params.name, q: req.query, got: req.json === undefined ? null : req.json, text: req.body } };
} });
"#;

#[test]
fn handlers_that_fail_are_answered_clearly_and_the_server_keeps_serving() {
    let (_dir, daemon) = api_daemon("api-tricky", &[("tricky.js", TRICKY)]);

    let (status, body) = get(&daemon, "/api/throws");
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no such thing"), "{body}");
    assert!(body["file"].as_str().unwrap().ends_with("tricky.js") && body["line"] == json!(5), "{body}");
    assert_eq!(get(&daemon, "/api/fast").1, json!({"fast": true}));
    let (status, body) = get(&daemon, "/api/loops");
    assert_eq!(status, 504, "{body}");
    assert_eq!(get(&daemon, "/api/fast").0, 200);
    let (status, body) = get(&daemon, "/api/eats");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("out of memory"), "{body}");
    assert_eq!(get(&daemon, "/api/fast").0, 200);
    let (status, body) = get(&daemon, "/api/bad-answer");
    assert_eq!(status, 500);
    assert!(body["error"].as_str().unwrap().contains("returns an object") && body["line"] == json!(9), "{body}");

    // Bodies: JSON and not, too big; a parameter and the query decoded.
    let url = format!("http://127.0.0.1:{}/api/echo/a%20b?x=1&y=two%20words", daemon.port);
    let r = client().post(&url).body("{\"k\": [1, 2]}").send().unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let echoed: Value = r.json().unwrap();
    assert_eq!((&echoed["name"], &echoed["q"]["y"], &echoed["got"]["k"]), (&json!("a b"), &json!("two words"), &json!([1, 2])));
    let r = client().post(&url).body("{not json").send().unwrap();
    let echoed: Value = r.json().unwrap();
    assert_eq!((&echoed["got"], &echoed["text"]), (&Value::Null, &json!("{not json")));
    let r = client().post(&url).body(vec![b'x'; 2 << 20]).send().unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let r = client().post(&url).body(vec![0xff, 0xfe]).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A malformed request line, and a client that sends a byte a second: both let go, and
    // others served meanwhile.
    let mut raw = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    raw.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut answer = String::new();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let mut slow = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET /api/fast HTTP/1.1\r\nHost: x\r\nX-Slow: yes".iter().cycle().take(40) {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        assert_eq!(get(&daemon, "/api/fast").0, 200);
        std::thread::sleep(Duration::from_millis(1000));
        let mut probe = [0u8; 64];
        slow.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        if let Ok(0) = slow.read(&mut probe) {
            closed = true;
            break;
        }
    }
    assert!(closed && started.elapsed() < Duration::from_secs(20), "a byte-a-second client is let go after 10 s");
}

#[test]
fn a_fast_request_is_answered_while_a_slow_one_runs() {
    let (_dir, daemon) = api_daemon("api-concurrency", &[("tricky.js", TRICKY)]);
    let port = daemon.port;
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let r = client().get(format!("http://127.0.0.1:{port}/api/slow")).send().unwrap();
        (r.status().as_u16(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(get(&daemon, "/api/fast").0, 200);
    let fast = started.elapsed();
    let (status, slow_took) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(slow_took >= Duration::from_millis(1500));
    assert!(fast < Duration::from_millis(1000), "the fast request waited {fast:?} behind the slow one");
}

#[test]
fn route_files_are_picked_up_changed_and_kept_while_the_daemon_runs() {
    let dir = TempDir::new("api-live");
    let api = dir.path().join("api");
    std::fs::create_dir_all(&api).unwrap();
    let version = |v: u32| format!("route({{ path: \"/version\", handler() {{ return {{ json: {{ v: {v} }} }}; }} }});\n");
    std::fs::write(api.join("v.js"), version(1)).unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let daemon = serve(&db, &api, dir.path(), "1");
    assert_eq!(get(&daemon, "/api/version").1, json!({"v": 1}));
    std::fs::write(api.join("v.js"), version(2)).unwrap();
    eventually(30, "the edited route", || get(&daemon, "/api/version").1 == json!({"v": 2}));
    std::fs::write(api.join("new.js"), "route({ path: \"/new\", handler: () => ({ body: \"hi\" }) });\n").unwrap();
    eventually(30, "a new file's route", || get(&daemon, "/api/new").0 == 200);
    // Broken: said where, and the last version that loaded keeps serving.
    std::fs::write(api.join("v.js"), "route({ path: \"/version\",\n handler() { return { json: ; } } });\n").unwrap();
    eventually(30, "the broken file in /status", || daemon.status()["api"]["failed_to_load"].to_string().contains("v.js:2:"));
    assert_eq!(get(&daemon, "/api/version").1, json!({"v": 2}));
    std::fs::remove_file(api.join("new.js")).unwrap();
    eventually(30, "a removed file's route gone", || get(&daemon, "/api/new").0 == 404);
}

const HOSTILE: &str = r#"
route({ path: "/forever", time_limit_ms: 3600000, handler() { for (;;) {} } });
route({ path: "/framing", handler() { return { body: "hi", headers: { "content-length": "1000" } }; } });
route({ path: "/bad-value", handler() { return { body: "hi", headers: { "x-a": "line\r\nx-b: injected" } }; } });
route({ method: "POST", path: "/write", handler(req) { return { json: { wrote: req.json } }; } });
"#;

#[test]
fn pages_of_other_sites_cannot_call_the_api_and_handlers_cannot_break_the_framing() {
    // Found by probing as a hostile user: any web page could POST to the API (mark mail
    // read, leave lists), a DNS-rebinding page could read it through another Host name, and a
    // handler's content-length header left the client hanging.
    let dir = TempDir::new("api-hostile");
    let api = dir.path().join("api");
    std::fs::create_dir_all(&api).unwrap();
    std::fs::write(api.join("hostile.js"), HOSTILE).unwrap();
    // A route declared again (another file), a parameter named twice, a ".." segment, a file
    // that is not UTF-8: each reported, none keeping the rest from serving.
    std::fs::write(api.join("later.js"), "route({ method: \"POST\", path: \"/write\", handler() { return { json: 'second' }; } });")
        .unwrap();
    std::fs::write(api.join("params.js"), "route({ path: \"/p/:a/:a\", handler() { return { json: 1 }; } });").unwrap();
    std::fs::write(api.join("dots.js"), "route({ path: \"/../etc\", handler() { return { json: 1 }; } });").unwrap();
    std::fs::write(api.join("latin1.js"), b"// caf\xe9\nroute({ path: \"/l\", handler() { return { json: 1 }; } });").unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let daemon = serve(&db, &api, dir.path(), "2");
    let failed = daemon.status()["api"]["failed_to_load"].to_string();
    for what in ["declared already at", "parameter :a twice", "segments . and .."] {
        assert!(failed.contains(what), "{what}: {failed}");
    }
    assert_eq!(get(&daemon, "/api/l").0, 200, "a file not in UTF-8 loads on its own: {failed}");
    let url = format!("http://127.0.0.1:{}/api/write", daemon.port);
    let send = |origin: Option<&str>, host: Option<&str>| {
        let mut r = client().post(&url).body("{\"a\": 1}");
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(h) = host {
            r = r.header("Host", h);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null))
    };
    let (status, body) = send(Some("https://evil.example"), None);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cors_origins"), "{body}");
    let (status, body) = send(Some(&format!("http://127.0.0.1:{}", daemon.port)), None);
    assert_eq!((status, &body["wrote"]), (200, &json!({"a": 1})), "the page's own origin, and the first file's route");
    assert_eq!(send(None, None).0, 200, "curl sends no Origin");
    assert_eq!(send(None, Some("evil.example")).0, 403, "another host name");
    assert_eq!(send(None, Some(&format!("localhost:{}", daemon.port))).0, 200);

    let (status, body) = get(&daemon, "/api/framing");
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().unwrap().contains("content-length"), "{body}");
    let (status, body) = get(&daemon, "/api/bad-value");
    assert_eq!(status, 500, "{body}");
}

#[test]
fn a_stop_while_a_handler_runs_for_an_hour_exits_cleanly_at_once() {
    // Found by probing: SIGTERM during a handler with an hour's time limit waited 10 s, then
    // crashed in SpiderMonkey's destructors (exit 139). The running call is now stopped.
    let (_dir, mut daemon) = api_daemon("api-stop", &[("hostile.js", HOSTILE)]);
    let port = daemon.port;
    let _waiting = std::thread::spawn(move || client().get(format!("http://127.0.0.1:{port}/api/forever")).send().map(|r| r.status()));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(15), Some(0), "{}", daemon.log());
    assert!(started.elapsed() < Duration::from_secs(9), "took {:?}:\n{}", started.elapsed(), daemon.log());
}

#[test]
fn a_burst_of_slow_first_requests_leaves_a_thread_for_a_fast_one() {
    // Found by probing: right after a start or a reload nothing was known of a route, so a
    // burst of its slow requests took every thread and a fast request waited behind them.
    let (_dir, daemon) = api_daemon("api-burst", &[("tricky.js", TRICKY)]);
    let port = daemon.port;
    let slow: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || client().get(format!("http://127.0.0.1:{port}/api/slow")).send().unwrap().status().as_u16()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&daemon, "/api/fast").0, 200);
    let fast = started.elapsed();
    for s in slow {
        assert_eq!(s.join().unwrap(), 200);
    }
    assert!(fast < Duration::from_millis(1000), "the fast request waited {fast:?} behind the first slow ones");
}
