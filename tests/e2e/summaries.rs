//! The summaries kept incrementally (conversation summaries brought forward by their new
//! messages, group summaries from an ordered, counted index) against the same mail processed
//! from scratch: the derived databases must be equal.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{assert_same_docs, dump, of_schema, ok, raindrop, rd, repo, TempDir};

fn exts() -> PathBuf {
    repo().join("js-extensions")
}

fn command(db: &str, args: &[&str]) -> std::process::Command {
    let mut c = rd(db, &exts());
    c.arg("--config").arg(repo().join("fixtures/corpus-config.toml"));
    c.args(args);
    c
}

fn run(db: &str, args: &[&str]) -> String {
    ok(command(db, args))
}

/// What a command prints on its standard output.
fn printed(db: &str, args: &[&str]) -> String {
    let out = command(db, args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Message `i` of a generated mailbox: thread "a" (a chain of replies) takes most messages,
/// thread "b" a few, every fifth message has an attachment, and message 30 answers both
/// threads (the two conversations merge). Dates rise with `i`.
fn message(i: usize) -> String {
    let thread = if i % 6 == 5 { "b" } else { "a" };
    let root = if thread == "a" { 0 } else { 5 };
    let mut refs = String::new();
    if i != root && i != 0 && !(thread == "b" && i == 5) {
        let parent = if thread == "a" { (0..i).rev().find(|j| j % 6 != 5).unwrap_or(0) } else { i - 6 };
        refs = format!("In-Reply-To: <m{parent}@t.example>\r\nReferences: <m{root}@t.example> <m{parent}@t.example>\r\n");
    }
    if i == 30 {
        refs = "In-Reply-To: <m29@t.example>\r\nReferences: <m0@t.example> <m5@t.example> <m29@t.example>\r\n".to_string();
    }
    let who = ["Ann <ann@t.example>", "Bob <bob@t.example>", "Cyd <cyd@t.example>", "Dee <dee@t.example>"][i % 4];
    let head = format!(
        "From: {who}\r\nTo: Me <me@example.com>\r\nSubject: {}\r\nDate: Mon, 1 Mar 2010 {:02}:{:02}:00 +0000\r\nMessage-ID: <m{i}@t.example>\r\n{refs}MIME-Version: 1.0\r\n",
        if thread == "a" { "Thread a" } else { "Thread b" },
        i / 60,
        i % 60
    );
    if i % 5 == 3 {
        format!(
            "{head}Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nbody {i}\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"f{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
        )
    } else {
        format!("{head}Content-Type: text/plain\r\n\r\nbody {i}, see https://t.example/{i}\r\n")
    }
}

/// A Maildir holding messages `range`, message `i` seen when `seen(i)`.
fn maildir(root: &Path, range: std::ops::Range<usize>, seen: impl Fn(usize) -> bool) -> PathBuf {
    let _ = std::fs::remove_dir_all(root);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for i in range {
        let name = if seen(i) { format!("cur/{i}.host:2,S") } else { format!("new/{i}.host") };
        std::fs::write(root.join(name), message(i)).unwrap();
    }
    root.to_path_buf()
}

#[test]
fn summaries_kept_one_message_at_a_time_equal_a_rebuild_from_scratch() {
    let dir = TempDir::new("summaries");
    let n = 40;
    let seen = |i: usize| i.is_multiple_of(3);
    let box_of = |name: &str, upto: usize, seen: &dyn Fn(usize) -> bool| maildir(&dir.path().join(name).join("INBOX"), 0..upto, seen);

    // One message at a time, processed after each: the summaries are brought forward.
    let one = dir.path().join("one").to_string_lossy().into_owned();
    for upto in 1..=n {
        let mail = box_of("grow", upto, &seen);
        run(&one, &["import", mail.to_str().unwrap()]);
        run(&one, &["process"]);
    }
    // An earlier message arriving last (out of order: the conversation is rebuilt), then
    // changes to messages already summarised: one read, one deleted.
    let late = dir.path().join("late.eml");
    std::fs::write(&late, message(n).replace("Date: Mon, 1 Mar 2010", "Date: Sun, 28 Feb 2010")).unwrap();
    let seen_later = |i: usize| i.is_multiple_of(3) || i == 37;
    run(&one, &["import", late.to_str().unwrap()]);
    run(&one, &["process"]);
    run(&one, &["import", box_of("grow", n, &seen_later).to_str().unwrap()]);
    run(&one, &["process"]);
    let deleted = dir.path().join("deleted.jsonl");
    std::fs::write(
        &deleted,
        json!({"rd_key": ["email", "m38@t.example"], "rd_schema_id": "rd.msg.deleted", "deleted": true}).to_string() + "\n",
    )
    .unwrap();
    run(&one, &["add-schemas", deleted.to_str().unwrap()]);
    run(&one, &["process"]);

    // The same mail in its final state, processed once.
    let all = dir.path().join("all").to_string_lossy().into_owned();
    run(&all, &["import", box_of("final", n, &seen_later).to_str().unwrap(), late.to_str().unwrap()]);
    run(&all, &["add-schemas", deleted.to_str().unwrap()]);
    run(&all, &["process"]);

    let (got, expected) = (dump(&one, &exts()), dump(&all, &exts()));
    assert_eq!(of_schema(&expected, "rd.core.error").len(), 0);
    let summaries = of_schema(&expected, "rd.conv.summary");
    assert_eq!(summaries.len(), 1, "the two threads merged into one conversation: {summaries:?}");
    let s = summaries[0];
    assert_eq!(s["message_ids"].as_array().unwrap().len(), n, "every message but the deleted one, the late one included");
    assert_eq!(s["messages"][2]["id"], json!(["email", "m39@t.example"]));
    assert!(s["messages"].as_array().unwrap().iter().any(|m| !m["attachments"].as_array().unwrap().is_empty()));
    let group = of_schema(&expected, "rd.grouping.summary");
    assert!(!group.is_empty());
    assert_eq!(group.iter().map(|g| g["num_unread"].as_u64().unwrap()).max(), Some(1));
    assert_eq!(s["unread_grouping_timestamp"].as_array().unwrap().len(), s["unread_grouping_tags"].as_array().unwrap().len());
    assert_same_docs(&got, &expected, "one message at a time against all at once");
}

#[test]
fn a_group_summary_is_counted_and_ordered_from_the_index_as_a_full_sort_would() {
    // Many unread conversations in one group, several sharing a time (the fifth place tied):
    // the latest five and the count must be those of sorting every unread conversation.
    let dir = TempDir::new("group-summary");
    let root = dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let n = 30;
    for i in 0..n {
        // Minutes 0..3, each several times: ties everywhere.
        let text = format!(
            "From: Person {i} <p{i}@t.example>\r\nTo: Me <me@example.com>\r\nSubject: topic {i}\r\nDate: Mon, 1 Mar 2010 10:{:02}:00 +0000\r\nMessage-ID: <g{i}@t.example>\r\nList-Id: Group <group.t.example>\r\nContent-Type: text/plain\r\n\r\nhello {i}\r\n",
            i % 4
        );
        let name = if i % 7 == 0 { format!("cur/{i}.h:2,S") } else { format!("new/{i}.h") };
        std::fs::write(root.join(name), text).unwrap();
    }
    let db = dir.path().join("db").to_string_lossy().into_owned();
    run(&db, &["import", root.to_str().unwrap()]);
    run(&db, &["process"]);
    let docs = dump(&db, &exts());
    assert_eq!(of_schema(&docs, "rd.core.error").len(), 0);
    let mut biggest = (String::new(), 0);
    for g in of_schema(&docs, "rd.grouping.summary") {
        let tag = g["rd_key"][1].as_str().unwrap();
        let mut unread: Vec<(f64, String, Value)> = of_schema(&docs, "rd.conv.summary")
            .into_iter()
            .filter(|s| s["unread_grouping_tags"].as_array().unwrap().iter().any(|t| t == tag))
            .map(|s| {
                let ts = s["grouping-timestamp"].as_array().unwrap().iter().find(|p| p[0] == tag).unwrap()[1].as_f64().unwrap();
                (ts, s["rd_key"].to_string(), s["rd_key"].clone())
            })
            .collect();
        unread.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then_with(|| a.1.cmp(&b.1)));
        let latest: Vec<Value> = unread.iter().take(5).map(|u| u.2.clone()).collect();
        assert_eq!(g["num_unread"], json!(unread.len()), "{tag}");
        assert_eq!(g["unread"], json!(latest), "{tag}");
        if unread.len() > biggest.1 {
            biggest = (tag.to_string(), unread.len());
            assert_eq!(unread[4].0, unread[5].0, "the fifth place is tied in {tag}");
        }
    }
    let (tag, unread) = biggest;
    assert!(unread >= 20, "a group of the list's unread conversations: {tag} has {unread}");
    let prefix = json!([tag]).to_string();
    let counted = printed(
        &db,
        &["db", "megaview", "--schema", "rd.conv.summary", "--field", "unread_grouping_timestamp", "--prefix", &prefix, "--count"],
    );
    assert_eq!(counted.trim(), unread.to_string());
    let rows = printed(
        &db,
        &["db", "megaview", "--schema", "rd.conv.summary", "--field", "unread_grouping_timestamp", "--prefix", &prefix, "--descending"],
    );
    let times: Vec<f64> = rows.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["key"][2][1].as_f64().unwrap()).collect();
    assert_eq!(times.len(), unread);
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "latest first: {times:?}");
}

#[test]
fn summaries_shared_among_threads_equal_those_of_one_thread() {
    // Enough mail that convo-to-summary's later_handler runs as one call per thread, each
    // taking the conversations of its share, in batches (so summaries are also brought
    // forward): the database must be that of one thread doing everything.
    let dir = TempDir::new("summaries-shared");
    let derive = |name: &str, threads: &str| -> Vec<Value> {
        let db = dir.path().join(name).to_string_lossy().into_owned();
        for (batch, range) in [0..120, 120..200, 200..300].into_iter().enumerate() {
            let mail = dir.path().join(format!("{name}-{batch}")).join("INBOX");
            // Ten conversations at a time, each message answering the one ten before.
            let _ = std::fs::remove_dir_all(&mail);
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(mail.join(sub)).unwrap();
            }
            for i in range {
                let refs = if i >= 10 {
                    format!("In-Reply-To: <s{}@t.example>\r\nReferences: <s{}@t.example>\r\n", i - 10, i % 10)
                } else {
                    String::new()
                };
                let text = format!(
                    "From: P{} <p{}@t.example>\r\nTo: Me <me@example.com>\r\nSubject: s{}\r\nDate: Mon, 1 Mar 2010 {:02}:{:02}:00 +0000\r\nMessage-ID: <s{i}@t.example>\r\n{refs}Content-Type: text/plain\r\n\r\nbody {i} https://t.example/{i}\r\n",
                    i % 7, i % 7, i % 10, i / 60, i % 60
                );
                let name = if i % 4 == 0 { format!("cur/{i}.h:2,S") } else { format!("new/{i}.h") };
                std::fs::write(mail.join(name), text).unwrap();
            }
            for args in [vec!["import", mail.to_str().unwrap()], vec!["process"]] {
                let mut c = raindrop();
                c.args(["--db", &db, "--extensions"]).arg(exts()).args(["--js-threads", threads]);
                c.arg("--config").arg(repo().join("fixtures/corpus-config.toml")).args(&args);
                ok(c);
            }
        }
        dump(&db, &exts())
    };
    let one = derive("one", "1");
    assert_eq!(of_schema(&one, "rd.core.error").len(), 0);
    assert_eq!(of_schema(&one, "rd.conv.summary").len(), 10);
    assert!(of_schema(&one, "rd.conv.summary").iter().all(|s| s["message_ids"].as_array().unwrap().len() == 30));
    assert_same_docs(&derive("two", "2"), &one, "two threads sharing the summaries against one");
}

#[test]
fn a_message_that_goes_leaves_its_conversation_summary() {
    // A message's documents withdrawn (its raw mail deleted: everything derived from it goes)
    // reach convo-to-summary as deletions: the summary must be the one of the mail without it.
    let dir = TempDir::new("summaries-deleted");
    let n = 12;
    let without = 4;
    let full = dir.path().join("full").to_string_lossy().into_owned();
    run(&full, &["import", maildir(&dir.path().join("a").join("INBOX"), 0..n, |_| false).to_str().unwrap()]);
    run(&full, &["process"]);
    let rfc = dump(&full, &exts())
        .into_iter()
        .find(|d| d["rd_schema_id"] == "rd.msg.rfc822" && d["rd_key"] == json!(["email", format!("m{without}@t.example")]))
        .unwrap();
    let rev = printed(&full, &["db", "get", rfc["_id"].as_str().unwrap()]);
    let rev: Value = serde_json::from_str(&rev).unwrap();
    run(&full, &["db", "put", &json!({"_id": rfc["_id"], "_rev": rev["_rev"], "_deleted": true}).to_string()]);
    run(&full, &["process"]);

    let fewer = dir.path().join("fewer").to_string_lossy().into_owned();
    let mail = maildir(&dir.path().join("b").join("INBOX"), 0..n, |_| false);
    std::fs::remove_file(mail.join(format!("new/{without}.host"))).unwrap();
    run(&fewer, &["import", mail.to_str().unwrap()]);
    run(&fewer, &["process"]);
    let (got, expected) = (dump(&full, &exts()), dump(&fewer, &exts()));
    let summaries = |docs: &[Value]| -> Vec<Value> { of_schema(docs, "rd.conv.summary").into_iter().cloned().collect() };
    let expected_summaries = summaries(&expected);
    assert_eq!(expected_summaries.len(), 2, "threads a and b");
    assert_eq!(expected_summaries.iter().map(|s| s["message_ids"].as_array().unwrap().len()).sum::<usize>(), n - 1);
    assert_same_docs(&summaries(&got), &expected_summaries, "the summary after a message went");
    assert_same_docs(
        &of_schema(&got, "rd.grouping.summary").into_iter().cloned().collect::<Vec<_>>(),
        &of_schema(&expected, "rd.grouping.summary").into_iter().cloned().collect::<Vec<_>>(),
        "the group summaries",
    );
}
