//! The core email extensions end to end: the original's test mail imported and processed by the
//! bundled extensions, the mailing-list unsubscribe flows, and bad mail that must never crash
//! anything.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{dump, kill_rounds, of_schema, ok, rd, repo, TempDir};

fn exts() -> PathBuf {
    repo().join("js-extensions")
}

/// `raindrop` on `db` with the bundled extensions and the corpus' identities.
fn rdm(db: &str) -> std::process::Command {
    let mut c = rd(db, &exts());
    c.arg("--config").arg(repo().join("fixtures/corpus-config.toml"));
    c
}

fn run(db: &str, args: &[&str]) -> String {
    ok({
        let mut c = rdm(db);
        c.args(args);
        c
    })
}

fn import(db: &str, path: &Path) {
    ok({
        let mut c = rdm(db);
        c.arg("import").arg(path);
        c
    });
}

fn find<'a>(docs: &'a [Value], schema: &str, rd_key: Value) -> Option<&'a Value> {
    of_schema(docs, schema).into_iter().find(|d| d["rd_key"] == rd_key)
}

fn email(id: &str) -> Value {
    json!(["email", id])
}

#[test]
fn sigkill_while_processing_mail_ends_in_the_same_database() {
    // The bundled extensions over the test mail, in pages of two changes (many checkpoints),
    // killed at several moments: the conversations (a later_handler), contacts and summaries
    // must come out as in an uninterrupted run.
    let dir = TempDir::new("mail-kill");
    let mail = repo().join("fixtures/mail");
    let seed = |db: &str| import(db, &mail);
    let process = |db: &str| {
        let mut c = rdm(db);
        c.args(["process", "--page-size", "2"]);
        c
    };
    let expected = kill_rounds(&dir, &exts(), seed, process, &[&[120, 160, 200], &[150, 90, 250], &[180, 130, 110]]);
    assert_eq!(of_schema(&expected, "rd.core.error").len(), 0);
    assert!(of_schema(&expected, "rd.msg.conversation").len() >= 24);
}

#[test]
fn the_test_mail_is_imported_and_processed_by_the_core_extensions() {
    let dir = TempDir::new("mail");
    let mail = repo().join("fixtures/mail");
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let log = run(&db, &["import", mail.to_str().unwrap()]);
    assert!(log.contains("30 message(s) read, 0 refused"), "{log}");
    run(&db, &["process"]);
    let docs = dump(&db, &exts());
    let raw = of_schema(&docs, "rd.msg.rfc822").len();
    assert!(raw >= 24, "{raw} messages");
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0, "{:?}", of_schema(&docs, "rd.core.error"));
    assert_eq!(of_schema(&docs, "rd.msg.email").len(), raw);
    assert_eq!(of_schema(&docs, "rd.msg.body").len(), raw, "exactly one rd.msg.body per message");

    // rd.msg.body as the original's: lower-cased identities, display names, decoded subject.
    let sent = "d3d08a8a534c464881a95b75300e9011@something";
    let body = find(&docs, "rd.msg.body", email(sent)).unwrap();
    assert_eq!(body["from"], json!(["email", "raindrop_test_user@mozillamessaging.com"]));
    assert_eq!(body["from_display"], "Raindrop Test User");
    assert_eq!(body["to"], json!([["email", "raindrop_test_recip@mozillamessaging.com"]]));
    assert_eq!(body["cc"].as_array().unwrap().len(), 2);
    assert!(body["timestamp"].as_i64().unwrap() > 1_000_000_000);

    // Conversations: the reply pair is one, and the bounce joins it.
    let conv = |id: &str| find(&docs, "rd.msg.conversation", email(id)).map(|d| d["conversation_id"].clone());
    let original = conv(sent).expect("the original message has a conversation");
    assert_eq!(conv("78cb2eb5dbc74cdd9691dcfdb266d1b9@something"), Some(original.clone()));
    assert_eq!(conv("20090914000500.DSN1@smtp1.adl2.mozillamessaging.com"), Some(original.clone()), "the bounce joins");
    let summary = find(&docs, "rd.conv.summary", original.clone()).expect("a summary of the conversation");
    assert_eq!(summary["message_ids"].as_array().unwrap().len(), 3, "{summary}");
    assert_eq!(summary["unread_ids"].as_array().unwrap().len(), 3);
    assert!(summary["messages"].as_array().unwrap().len() <= 3);
    assert!(summary["identities"].as_array().unwrap().contains(&json!(["email", "raindrop_test_recip2@mozillamessaging.com"])));
    // One summary per conversation: the bounce's first conversation, merged into the pair's,
    // leaves no summary behind (withdraw_schema).
    let ids = |schema: &str, field: &str| {
        of_schema(&docs, schema).iter().map(|d| d[field].to_string()).collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids("rd.conv.summary", "rd_key"), ids("rd.msg.conversation", "conversation_id"));

    // Identities and contacts for everyone I wrote to.
    let contacts = of_schema(&docs, "rd.contact");
    let names: Vec<&str> = contacts.iter().map(|c| c["displayName"].as_str().unwrap()).collect();
    for name in ["Raindrop Test Recipient", "Raindrop Test Recipient 2", "Raindrop Test Recipient 3"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let link = find(&docs, "rd.identity.contacts", json!(["identity", ["email", "raindrop_test_recip2@mozillamessaging.com"]])).unwrap();
    assert_eq!(link["contacts"][0][1], "email");
    assert!(find(&docs, "rd.identity.exists", json!(["identity", ["email", "raindrop_test_recip2@mozillamessaging.com"]])).is_some());

    // Grouping tags.
    let tag = |id: &str| find(&docs, "rd.msg.grouping-tag", email(id)).map(|d| d["tag"].as_str().unwrap().to_string());
    assert_eq!(tag("201002032206.o13M6SDE032300@pm-app-bugs02.mozilla.org").as_deref(), Some("bugzilla-message"));
    assert_eq!(tag("4ac4f85d89769_1de3156943569ffc176015a@mx007.twitter.com.tmail").as_deref(), Some("twitter-notification"));
    assert_eq!(tag(sent).as_deref(), Some("identity-email-raindrop_test_user@mozillamessaging.com"), "sent by me");
    assert_eq!(tag("40c05b9d93ba4695a30e72174c5c8126@example.com").as_deref(), Some("mailing-list-test.lists.example.com"));
    let facebook: Vec<String> = of_schema(&docs, "rd.msg.grouping-tag")
        .iter()
        .filter_map(|d| d["tag"].as_str())
        .filter(|t| t.starts_with("facebook-"))
        .map(String::from)
        .collect();
    assert!(facebook.contains(&"facebook-comment".to_string()) && facebook.contains(&"facebook-message".to_string()), "{facebook:?}");
    let group = find(&docs, "rd.grouping.summary", json!(["display-group", "bugzilla-message"])).unwrap();
    assert_eq!(group["num_unread"], 1);

    // Every mailing-list message is assigned its list.
    for (name, bytes) in std::fs::read_dir(mail.join("mailing-list"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
    {
        let key = raindrop::mail::import::message_key(&bytes);
        let list = find(&docs, "rd.msg.email.mailing-list", email(&key));
        assert!(list.is_some(), "{name} has no list");
    }
    let lists: Vec<&str> = of_schema(&docs, "rd.mailing-list").iter().map(|d| d["id"].as_str().unwrap()).collect();
    for id in ["test.lists.example.com", "mozilla-labs-personas.googlegroups.com", "tortoisehg-develop.lists.sourceforge.net"] {
        assert!(lists.contains(&id), "{lists:?}");
    }

    // Attachments and links, summarised per message.
    let virus = "200908230339.n7N3d46c000556@smtp1.adl2.mozillamessaging.com";
    let files: Vec<&Value> = of_schema(&docs, "rd.attach.file").into_iter().filter(|d| d["message"] == email(virus)).collect();
    assert_eq!(files.len(), 1);
    let att = find(&docs, "rd.msg.attachment-summary", email(virus)).unwrap();
    assert_eq!(att["attachments"].as_array().unwrap().len(), 1);
    assert!(!of_schema(&docs, "rd.attach.link").is_empty());

    // Importing again adds nothing and so processes nothing.
    run(&db, &["import", mail.to_str().unwrap()]);
    let log = run(&db, &["process"]);
    assert!(log.contains("0 handler runs"), "{log}");
}

#[test]
fn importing_with_process_derives_what_import_then_process_does() {
    // The pipeline follows the feed while the import writes: the same documents in the end.
    let dir = TempDir::new("mail-beside");
    let mail = repo().join("fixtures/mail");
    let after = dir.path().join("after").to_string_lossy().into_owned();
    run(&after, &["import", mail.to_str().unwrap()]);
    run(&after, &["process"]);
    let beside = dir.path().join("beside").to_string_lossy().into_owned();
    let log = run(&beside, &["import", "--process", mail.to_str().unwrap()]);
    assert!(log.contains("30 message(s) read, 0 refused") && log.contains("0 errors"), "{log}");
    crate::support::assert_same_docs(&dump(&beside, &exts()), &dump(&after, &exts()), "import --process");
    let log = run(&beside, &["process"]);
    assert!(log.contains("0 handler runs"), "{log}");
}

#[test]
fn importing_beside_a_running_daemon_is_processed_by_it() {
    // Two processes on one embedded database: `raindrop process --continuous` (as `raindrop
    // run` does) and imports beside it. The daemon used to die with "database is locked".
    let dir = TempDir::new("mail-two-processes");
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let mut daemon = rdm(&db);
    daemon.args(["process", "--continuous"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut daemon = daemon.spawn().unwrap();
    let mail = repo().join("fixtures/mail");
    for part in ["hand-rolled", "mailing-list", "malformed", "raindrop"] {
        import(&db, &mail.join(part));
    }
    let bodies = || of_schema(&dump(&db, &exts()), "rd.msg.body").len();
    // Until the daemon is idle: nothing left in the feed, and nothing written for a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut before = String::new();
    loop {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon stopped");
        assert!(std::time::Instant::now() < deadline, "the daemon did not finish in time: {} bodies; {before}", bodies());
        let status = || String::from_utf8_lossy(&rdm(&db).arg("status").output().unwrap().stdout).into_owned();
        before = status();
        std::thread::sleep(std::time::Duration::from_secs(1));
        if before.contains("backlog: 0 change") && bodies() == 25 && status() == before {
            break;
        }
    }
    let alive = daemon.try_wait().unwrap().is_none();
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(alive && !log.contains("locked"), "{log}");
    assert_eq!(bodies(), 25);
    let log = run(&db, &["process"]);
    assert!(log.contains("0 handler runs"), "{log}");
}

/// One list's unsubscribe flow: `steps` are (fixture, expected status after it); before
/// `pending_at` the UI's request is recorded as the original's front end did it.
fn unsubscribe_flow(list: &str, pending_before: usize, pending_at: i64, steps: &[(&str, &str)], confirm_to: &str) {
    let dir = TempDir::new("unsub");
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let list_id = raindrop::model::doc_id(&json!(["mailing-list", list]), "rd.mailing-list").unwrap();
    let status = || -> Value {
        let out = rdm(&db).args(["db", "get", &list_id]).output().unwrap();
        assert!(out.status.success(), "no list {list}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for (i, (fixture, want)) in steps.iter().enumerate() {
        if i == pending_before {
            let mut doc = status();
            doc["status"] = json!("unsubscribe-pending");
            doc["changed_timestamp"] = json!(pending_at);
            run(&db, &["db", "put", &doc.to_string()]);
        }
        import(&db, &repo().join("fixtures/mail/mailing-list").join(format!("{fixture}.rfc822.txt")));
        run(&db, &["process"]);
        assert_eq!(status()["status"], json!(want), "after {fixture}");
    }
    let docs = dump(&db, &exts());
    let replies = of_schema(&docs, "rd.msg.outgoing.simple");
    assert_eq!(replies.len(), 1, "exactly one confirming reply: {replies:?}");
    assert_eq!(replies[0]["to"], json!([["email", confirm_to]]));
    assert_eq!(replies[0]["outgoing_state"], "outgoing");
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0);
}

/// Mailman, Google Groups v1 (noreply@ with X-Google-Loop) and v2 (<list>+unsubconfirm@,
/// <list>+noreply@). The corpus has each confirmation in an older and a newer variant with one
/// Message-ID — one message, so each variant is its own database.
#[test]
fn unsubscribe_flows_as_the_original() {
    let lists = [
        // (list, when the UI asked, message, request, confirmation prefix, confirming address)
        (
            "test.lists.example.com",
            1_251_090_000,
            "mailman-message-older",
            "mailman-unsub-conf-req",
            "mailman-unsub-conf",
            "test-confirm+018e404890076d94e6026d8333c887f8edd0c41f@lists.example.com",
        ),
        (
            "mozilla-labs-personas.googlegroups.com",
            1_250_100_000,
            "google-groups-message-older",
            "google-groups-unsub-conf-req",
            "google-groups-unsub-conf",
            "mozilla-labs-personas+unsubconfirm-sdchiwwaaaal-swq-5e5bow-sol8od9v@googlegroups.com",
        ),
        (
            "mozilla-labs-personas.googlegroups.com",
            1_261_429_200,
            "google-groups-message-newer",
            "google-groups-2-unsub-conf-req",
            "google-groups-2-unsub-conf",
            "mozilla-labs-personas+unsubconfirm@googlegroups.com",
        ),
    ];
    for (list, asked, message, request, confirmation, confirm_to) in lists {
        // A confirmation dated before the request changes nothing; a later one ends it.
        for (variant, end) in [("older", "unsubscribe-confirmed"), ("newer", "unsubscribed")] {
            let confirmation = format!("{confirmation}-{variant}");
            unsubscribe_flow(
                list,
                1,
                asked,
                &[(message, "subscribed"), (request, "unsubscribe-confirmed"), (&confirmation, end)],
                confirm_to,
            );
        }
    }
}

/// Every corpus file cut short at many points, imported and processed: no crash, one body per
/// message, and any failure is an error document, never a lost message.
#[test]
fn truncated_mail_never_crashes_anything() {
    let dir = TempDir::new("truncated");
    let cut = dir.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let mut n = 0;
    for kind in ["hand-rolled", "mailing-list", "malformed"] {
        for entry in std::fs::read_dir(repo().join("fixtures/mail").join(kind)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for i in 1..=12 {
                let len = bytes.len() * i / 13;
                // A distinct Message-ID per cut, so each is its own message.
                let mut m = format!("Message-ID: <cut-{n}@raindrop.test>\r\n").into_bytes();
                m.extend_from_slice(&bytes[..len]);
                std::fs::write(cut.join(format!("{n}.eml")), m).unwrap();
                n += 1;
            }
        }
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    import(&db, &cut);
    run(&db, &["process"]);
    let docs = dump(&db, &exts());
    assert_eq!(of_schema(&docs, "rd.msg.rfc822").len(), n);
    assert_eq!(of_schema(&docs, "rd.msg.body").len(), n, "one rd.msg.body per truncated message");
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0, "{:?}", of_schema(&docs, "rd.core.error").first());
}

/// Every message file under `dir`, sorted.
fn message_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(message_files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn the_same_mail_gives_the_same_database_in_any_order() {
    // The derived database must be a function of the set of messages, not of the order they
    // reach the feed (CouchDB's feed with more than one shard is not in insertion order). The
    // test mail, one import per message, forward, reversed, shuffled, and one message at a
    // time with `process` after each (later_handlers and shared documents see every
    // intermediate state then).
    let dir = TempDir::new("mail-order");
    let files = message_files(&repo().join("fixtures/mail"));
    let derive = |name: &str, order: &[PathBuf], process_each: bool| -> Vec<Value> {
        let db = dir.path().join(name).to_string_lossy().into_owned();
        for file in order {
            import(&db, file);
            if process_each {
                run(&db, &["process"]);
            }
        }
        run(&db, &["process"]);
        dump(&db, &exts())
    };
    let forward = derive("forward", &files, false);
    assert_eq!(of_schema(&forward, "rd.core.error").len(), 0);
    assert!(of_schema(&forward, "rd.mailing-list").len() >= 3);
    let reversed: Vec<PathBuf> = files.iter().rev().cloned().collect();
    crate::support::assert_same_docs(&derive("reversed", &reversed, false), &forward, "reversed");
    let mut shuffled = files.clone();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..shuffled.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        shuffled.swap(i, (state % (i as u64 + 1)) as usize);
    }
    crate::support::assert_same_docs(&derive("shuffled", &shuffled, false), &forward, "shuffled");
    crate::support::assert_same_docs(&derive("one-by-one", &reversed, true), &forward, "one at a time, reversed");
}

#[test]
fn maildir_folders_and_flags_and_mbox_files_are_imported() {
    let dir = TempDir::new("mail-maildir");
    let root = dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let msg = |id: &str, subject: &str| {
        format!("From: a@example.com\nTo: me@example.com\nMessage-ID: <{id}>\nSubject: {subject}\nDate: Mon, 1 Jan 2001 00:00:00 +0000\n\nbody of {subject}\n")
    };
    std::fs::write(root.join("cur/1.host:2,S"), msg("read@x", "read")).unwrap();
    std::fs::write(root.join("new/2.host"), msg("unread@x", "unread")).unwrap();
    std::fs::write(root.join(".Sent/cur/3.host:2,RS"), msg("sent@x", "sent")).unwrap();
    std::fs::write(root.join("tmp/4.host"), msg("partial@x", "still being written")).unwrap();
    let mbox = dir.path().join("archive.mbox");
    std::fs::write(
        &mbox,
        format!(
            "From a@example.com Mon Jan  1 00:00:00 2001\n{}From b@example.com Mon Jan  1 00:00:00 2001\n{}>From the mbox's quoting\n",
            msg("m1@x", "first of the mbox"),
            msg("m2@x", "second of the mbox")
        ),
    )
    .unwrap();
    let db = dir.path().join("db").to_string_lossy().into_owned();
    let log = run(&db, &["import", root.to_str().unwrap(), mbox.to_str().unwrap()]);
    assert!(log.contains("5 message(s) read, 0 refused"), "{log}");
    run(&db, &["process"]);
    let docs = dump(&db, &exts());
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0);
    let seen = |id: &str| find(&docs, "rd.msg.seen", email(id)).map(|d| d["seen"].clone());
    assert_eq!((seen("read@x"), seen("unread@x"), seen("sent@x")), (Some(json!(true)), Some(json!(false)), Some(json!(true))));
    assert_eq!(seen("m1@x"), None, "an mbox says nothing of flags");
    assert!(find(&docs, "rd.msg.rfc822", email("partial@x")).is_none(), "tmp/ is not read");
    assert_eq!(find(&docs, "rd.msg.maildir-location", email("sent@x")).unwrap()["folders"], json!(["Sent"]));
    assert_eq!(find(&docs, "rd.msg.grouping-tag", email("sent@x")).unwrap()["tag"], "folder-Sent");
    assert_ne!(find(&docs, "rd.msg.grouping-tag", email("read@x")).map(|d| d["tag"].clone()), Some(json!("folder-INBOX")));
    let body = |id: &str| find(&docs, "rd.msg.body", email(id)).unwrap()["body"].as_str().unwrap().to_string();
    assert_eq!(body("m1@x"), "body of first of the mbox\n");
    assert_eq!(body("m2@x"), "body of second of the mbox\nFrom the mbox's quoting\n");
    // Importing again adds nothing.
    run(&db, &["import", root.to_str().unwrap(), mbox.to_str().unwrap()]);
    let log = run(&db, &["process"]);
    assert!(log.contains("0 handler runs"), "{log}");
}

#[test]
fn a_mailing_lists_state_is_that_of_its_newest_message_in_any_order() {
    // Posts and an unsubscription notice of one Mailman list, handled one at a time in
    // opposite orders: the newest message decides the status, and the newest post the list's
    // addresses. (With the old rule a post to a subscribed list advanced nothing, so post 1,
    // post 3, notice 2 ended unsubscribed, and every other order subscribed.)
    let dir = TempDir::new("mail-list-order");
    let list_msg = |n: u32, day: u32, admin: bool| {
        let (subject, extra) = if admin {
            ("You have been unsubscribed from the Test mailing list".to_string(), "X-List-Administrivia: yes\n")
        } else {
            (format!("post {n}"), "")
        };
        format!(
            "From: {from}\nTo: me@example.com\nMessage-ID: <m{n}@lists.example.com>\nSubject: {subject}\nDate: {day} Jan 2010 10:00:00 +0000\nList-Id: Test list <test.lists.example.com>\nList-Post: <mailto:test-{n}@lists.example.com>\n{extra}\nbody {n}\n",
            from = if admin { "test-bounces@lists.example.com" } else { "someone@example.com" },
        )
    };
    let files: Vec<PathBuf> = [(1, 1, false), (2, 2, true), (3, 3, false)]
        .iter()
        .map(|&(n, day, admin)| {
            let path = dir.path().join(format!("{n}.eml"));
            std::fs::write(&path, list_msg(n, day, admin)).unwrap();
            path
        })
        .collect();
    let state = |name: &str, order: &[usize]| -> Value {
        let db = dir.path().join(name).to_string_lossy().into_owned();
        for &i in order {
            import(&db, &files[i]);
            run(&db, &["process"]);
        }
        let docs = dump(&db, &exts());
        let list = find(&docs, "rd.mailing-list", json!(["mailing-list", "test.lists.example.com"])).unwrap().clone();
        json!({"status": list["status"], "post": list["post"]})
    };
    let expected = json!({"status": "subscribed", "post": {"mailto": "test-3@lists.example.com"}});
    for (name, order) in [("a", [0, 1, 2]), ("b", [0, 2, 1]), ("c", [1, 0, 2]), ("d", [1, 2, 0]), ("e", [2, 0, 1]), ("f", [2, 1, 0])] {
        assert_eq!(state(name, &order), expected, "order {order:?}");
    }
}
