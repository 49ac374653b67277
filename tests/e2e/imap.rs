//! IMAP sync end to end: a real Dovecot on loopback seeded from the test mail, the real
//! binary, cut connections through a proxy, the daemon's periodic sync.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{dump, of_schema, ok, rd, repo, CuttingProxy, Dovecot, TempDir};

const PASSWORD: &str = "correct-horse-battery";

fn fixtures(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(repo().join("fixtures/mail").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

fn key(bytes: &[u8]) -> String {
    raindrop::mail::import::message_key(bytes)
}

/// A config file with one account on `port`; `extra` goes at the top, `account_extra` into
/// the account's table.
fn config_with(dir: &Path, port: u16, connections: usize, extra: &str, account_extra: &str) -> PathBuf {
    let path = dir.join("raindrop.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[accounts]]\nid = \"alice\"\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"plain\"\n\
             username = \"alice@example.com\"\npassword_env = \"TEST_IMAP_PASSWORD\"\nconnections = {connections}\n{account_extra}\n"
        ),
    )
    .unwrap();
    path
}

fn config(dir: &Path, port: u16, connections: usize, extra: &str) -> PathBuf {
    config_with(dir, port, connections, extra, "")
}

fn sync(db: &str, config: &Path, password: &str) -> std::process::Output {
    let exts = repo().join("js-extensions");
    let mut c = rd(db, &exts);
    c.arg("--config").arg(config).env("TEST_IMAP_PASSWORD", password).args(["-vv", "sync"]);
    c.output().unwrap()
}

fn sync_ok(db: &str, config: &Path) -> String {
    let out = sync(db, config, PASSWORD);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sync failed: {err}");
    assert!(!err.contains(PASSWORD), "the password reached the log");
    err
}

fn process(db: &str) {
    ok({
        let mut c = rd(db, &repo().join("js-extensions"));
        c.arg("process");
        c
    });
}

fn update_seq(db: &str) -> String {
    let out = ok_stdout(&["db", "info"], db);
    serde_json::from_str::<Value>(&out).unwrap()["update_seq"].to_string()
}

fn ok_stdout(args: &[&str], db: &str) -> String {
    let out = rd(db, &repo().join("js-extensions")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn imap_session(port: u16) -> imap::Session<imap::Connection> {
    let client = imap::ClientBuilder::new("127.0.0.1", port).mode(imap::ConnectionMode::Plaintext).connect().unwrap();
    client.login("alice@example.com", PASSWORD).map_err(|(e, _)| e).unwrap()
}

fn message(id: &str, subject: &str, body_lines: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bob <bob@example.com>\r\nTo: alice@example.com\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n\
         Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    for i in 0..body_lines {
        m.push_str(&format!("line {i} of a message long enough to span several network reads\r\n"));
    }
    m.into_bytes()
}

fn ids(docs: &[Value], schema: &str) -> BTreeSet<String> {
    of_schema(docs, schema).iter().map(|d| d["rd_key"][1].as_str().unwrap().to_string()).collect()
}

#[test]
fn imap_sync_stores_each_message_once_resyncs_nothing_and_follows_changes() {
    let dir = TempDir::new("imap-sync");
    let server = Dovecot::start(&[("alice@example.com", PASSWORD)]);
    let user = "alice@example.com";
    let mut expected = BTreeSet::new();
    let mut seen_keys = BTreeSet::new();
    for (i, (name, bytes)) in fixtures("hand-rolled").into_iter().chain(fixtures("malformed")).enumerate() {
        let seen = i % 2 == 0;
        server.deliver(user, None, &name, &bytes, seen);
        expected.insert(key(&bytes));
        if seen {
            seen_keys.insert(key(&bytes));
        }
    }
    for (name, bytes) in fixtures("mailing-list") {
        server.deliver(user, Some("lists.moz"), &name, &bytes, false);
        expected.insert(key(&bytes));
    }
    // The same message in Sent as in INBOX; messages only in Trash and Junk are never synced.
    let (_, bugzilla) = fixtures("hand-rolled").into_iter().find(|(n, _)| n.starts_with("bugzilla")).unwrap();
    server.deliver(user, Some("Sent"), "bz", &bugzilla, true);
    server.deliver(user, Some("Trash"), "t", &message("trash-only@example.com", "gone", 3), true);
    server.deliver(user, Some("Junk"), "j", &message("junk-only@example.com", "spam", 3), false);

    let db = dir.path().join("db").to_string_lossy().into_owned();
    let cfg = config(dir.path(), server.port, 3, "");
    let log = sync_ok(&db, &cfg);
    assert!(log.contains("synced 3 folder(s)"), "{log}");
    let exts = repo().join("js-extensions");
    let docs = dump(&db, &exts);
    assert_eq!(ids(&docs, "rd.msg.rfc822"), expected, "every message once, Trash and Junk skipped");
    let fetched: usize = log.split(", ").find_map(|p| p.strip_suffix(" fetched")).unwrap().parse().unwrap();
    assert_eq!(fetched, expected.len(), "each body fetched once: {log}");
    let locations = of_schema(&docs, "rd.msg.imap-locations");
    let bz = locations.iter().find(|d| d["rd_key"][1] == json!(key(&bugzilla))).unwrap();
    let folders: BTreeSet<&str> = bz["locations"].as_array().unwrap().iter().map(|l| l["folder_name"].as_str().unwrap()).collect();
    assert_eq!(folders, BTreeSet::from(["INBOX", "Sent"]));
    let seen_now: BTreeSet<String> = of_schema(&docs, "rd.msg.seen")
        .iter()
        .filter(|d| d["seen"] == json!(true))
        .map(|d| d["rd_key"][1].as_str().unwrap().to_string())
        .collect();
    let mut want_seen = seen_keys.clone();
    want_seen.insert(key(&bugzilla)); // seen in Sent
    assert_eq!(seen_now, want_seen);
    assert!(!serde_json::to_string(&docs).unwrap().contains(PASSWORD));

    // A re-sync of an unchanged account fetches and writes nothing.
    let seq = update_seq(&db);
    let log = sync_ok(&db, &cfg);
    assert!(log.contains(" 0 fetched"), "{log}");
    assert_eq!(update_seq(&db), seq, "a re-sync wrote documents");

    // A message appended over IMAP arrives; a flag set over IMAP becomes rd.msg.seen.
    let mut session = imap_session(server.port);
    session.append("INBOX", &message("appended@example.com", "Appended over IMAP", 5)).finish().unwrap();
    session.select("lists.moz").unwrap();
    session.uid_store("1", "+FLAGS (\\Seen)").unwrap();
    session.logout().unwrap();
    let log = sync_ok(&db, &cfg);
    assert!(log.contains(" 1 fetched"), "{log}");

    // And everything is processed: one rd.msg.body per message, no errors.
    process(&db);
    let docs = dump(&db, &exts);
    expected.insert("appended@example.com".into());
    assert_eq!(ids(&docs, "rd.msg.rfc822"), expected);
    assert_eq!(ids(&docs, "rd.msg.body"), expected);
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0, "{:?}", of_schema(&docs, "rd.core.error"));
    let first_in_list =
        of_schema(&docs, "rd.imap.mailbox-cache").iter().find(|d| d["folder"] == "lists.moz").unwrap()["messages"][0][1].clone();
    let seen = of_schema(&docs, "rd.msg.seen").into_iter().find(|d| d["rd_key"][1] == first_in_list).unwrap();
    assert_eq!(seen["seen"], json!(true));

    // Excluding a folder takes its messages' locations away (they are still stored), and the
    // folder tag then says they are archived.
    let (_, simple) = fixtures("mailing-list").into_iter().find(|(n, _)| n.starts_with("simple-message.")).unwrap();
    let log = sync_ok(&db, &config_with(dir.path(), server.port, 3, "", "exclude_folders = [\"lists.moz\"]"));
    assert!(log.contains("synced 2 folder(s)"), "{log}");
    process(&db);
    let docs = dump(&db, &exts);
    let loc = of_schema(&docs, "rd.msg.imap-locations").into_iter().find(|d| d["rd_key"][1] == json!(key(&simple))).unwrap();
    assert_eq!(loc["locations"], json!([]));
    let tag = of_schema(&docs, "rd.msg.grouping-tag").into_iter().find(|d| d["rd_key"][1] == json!(key(&simple))).unwrap();
    assert_eq!(tag["tag"], "mailing-list-test.lists.example.com", "the list's tag (confidence 10) still wins over archived (5)");
    assert_eq!(tag["rd_schema_items"]["rd.ext.core.folder-to-grouping-tag"]["schema"]["tag"], "archived");
    assert!(ids(&docs, "rd.msg.rfc822").contains(&key(&simple)));
}

#[test]
fn a_connection_cut_mid_fetch_is_resumed_without_loss() {
    let dir = TempDir::new("imap-cut");
    let server = Dovecot::start(&[("alice@example.com", PASSWORD)]);
    let user = "alice@example.com";
    let mut expected = BTreeSet::new();
    for i in 0..40 {
        let m = message(&format!("m{i}@example.com"), &format!("message {i}"), 40);
        server.deliver(user, None, &format!("m{i}"), &m, false);
        expected.insert(format!("m{i}@example.com"));
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let exts = repo().join("js-extensions");

    // Two connections in a row are cut in the middle of a body fetch: the sync reconnects.
    let proxy = CuttingProxy::start(server.port, 40_000, 2);
    let log = sync_ok(&db, &config(dir.path(), proxy.port, 1, ""));
    assert_eq!(proxy.cuts_done.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(log.contains("2 reconnect(s)"), "{log}");
    assert_eq!(ids(&dump(&db, &exts), "rd.msg.rfc822"), expected);

    // Every connection cut: the sync gives up with a clear error, and the next one (with a
    // working network) fetches exactly what is missing.
    for i in 40..80 {
        let m = message(&format!("m{i}@example.com"), &format!("message {i}"), 40);
        server.deliver(user, None, &format!("m{i}"), &m, false);
        expected.insert(format!("m{i}@example.com"));
    }
    let broken = CuttingProxy::start(server.port, 20_000, usize::MAX);
    let out = sync(&db, &config(dir.path(), broken.port, 1, ""), PASSWORD);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not synced") && err.contains("resume"), "{err}");
    let stored_before = ids(&dump(&db, &exts), "rd.msg.rfc822").len();
    let log = sync_ok(&db, &config(dir.path(), server.port, 1, ""));
    let fetched: usize = log.split(", ").find_map(|p| p.strip_suffix(" fetched")).unwrap().parse().unwrap();
    assert_eq!(stored_before + fetched, expected.len(), "{log}");
    assert_eq!(ids(&dump(&db, &exts), "rd.msg.rfc822"), expected);
}

#[test]
fn a_wrong_password_is_a_clear_error_that_does_not_show_it() {
    let dir = TempDir::new("imap-login");
    let server = Dovecot::start(&[("alice@example.com", PASSWORD)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let cfg = config(dir.path(), server.port, 2, "");
    let out = sync(&db, &cfg, "not-the-password-1234");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("refused the login of user alice@example.com"), "{err}");
    assert!(!err.contains("not-the-password-1234"), "{err}");
    // No password at all: says where it should come from.
    let mut c = rd(&db, &repo().join("js-extensions"));
    let out = c.arg("--config").arg(&cfg).env_remove("TEST_IMAP_PASSWORD").arg("sync").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEST_IMAP_PASSWORD"));
}

#[test]
fn the_daemon_syncs_on_an_interval_and_processes_what_arrives() {
    let dir = TempDir::new("imap-daemon");
    let server = Dovecot::start(&[("alice@example.com", PASSWORD)]);
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let exts = repo().join("js-extensions");
    let cfg = config(dir.path(), server.port, 2, "sync_interval_secs = 1");
    let mut daemon = rd(&db, &exts)
        .arg("--config")
        .arg(&cfg)
        .env("TEST_IMAP_PASSWORD", PASSWORD)
        .args(["run", "--listen", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut session = imap_session(server.port);
    session.append("INBOX", &message("while-running@example.com", "Hello daemon", 3)).finish().unwrap();
    let reply =
        [b"In-Reply-To: <while-running@example.com>\r\n".as_slice(), &message("reply-while-running@example.com", "Re: Hello daemon", 1)]
            .concat();
    session.append("INBOX", &reply).finish().unwrap();
    session.logout().unwrap();
    let id = |msg: &str, schema: &str| raindrop::model::doc_id(&json!(["email", msg]), schema).unwrap();
    let get = |id: &str| {
        let out = rd(&db, &exts).args(["db", "get", id]).output().unwrap();
        out.status.success().then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    // The body, then both conversations (assigned by a later_handler once the feed is drained).
    let wanted = [
        id("while-running@example.com", "rd.msg.body"),
        id("while-running@example.com", "rd.msg.conversation"),
        id("reply-while-running@example.com", "rd.msg.conversation"),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        let docs: Vec<Option<Value>> = wanted.iter().map(|w| get(w)).collect();
        if docs.iter().all(Option::is_some) || Instant::now() > deadline {
            break docs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let [body, conv, reply_conv] = [0, 1, 2].map(|i| found[i].clone().unwrap_or_else(|| panic!("the daemon never wrote {}", wanted[i])));
    assert_eq!(body["subject"], "Hello daemon");
    assert_eq!(conv["conversation_id"], reply_conv["conversation_id"], "the reply joins the message's conversation");
}
