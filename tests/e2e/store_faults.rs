//! Faults between Raindrop and a CouchDB-protocol server: a server that is not there, one that
//! dies and comes back in the middle of a changes read, one that answers garbage, and a wrong
//! password. Each ends in a clear error or a complete read, never a panic or a lost change.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use raindrop::store::couch::{CouchStore, RetryPolicy};
use raindrop::store::{Doc, Seq, Store, StoreError};
use serde_json::json;

use crate::support::{free_port, PouchServer};

fn quick_retry() -> RetryPolicy {
    RetryPolicy { attempts: 3, first_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(200), ..RetryPolicy::default() }
}

#[test]
fn server_not_running_is_a_clear_error_after_bounded_retries() {
    let port = free_port();
    let start = Instant::now();
    let err = CouchStore::open(&format!("http://raindrop:hunter2@127.0.0.1:{port}/db"), quick_retry()).err().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}/db")) && msg.contains("after 3 attempts"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

/// Serves every request with the same canned HTTP response, until the test ends.
fn canned_server(status: &str, content_type: &str, body: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let response =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut content_length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; content_length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn an_html_error_page_is_retried_then_reported() {
    let port = canned_server("503 Service Unavailable", "text/html", "<html><body>Bad Gateway</body></html>");
    let err = CouchStore::open(&format!("http://127.0.0.1:{port}/db"), quick_retry()).err().unwrap();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
}

#[test]
fn an_html_page_or_malformed_json_is_a_protocol_error() {
    for (ctype, body) in [("text/html", "<html>Welcome to nginx</html>"), ("application/json", "{\"db_name\": \"x\", ")] {
        let port = canned_server("200 OK", ctype, body);
        // The HEAD probe at open succeeds; reading the info then fails cleanly.
        let store = CouchStore::open(&format!("http://127.0.0.1:{port}/db"), quick_retry()).unwrap();
        let err = store.info().err().unwrap();
        assert!(matches!(err, StoreError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains(ctype), "{err}");
        let err = store.changes(&Seq::zero(), 10, false).err().unwrap();
        assert!(matches!(err, StoreError::Protocol { .. }), "{err}");
    }
}

#[test]
fn a_wrong_password_is_a_clear_error_without_the_password() {
    let server = PouchServer::start();
    let admin = reqwest::blocking::Client::new()
        .put(format!("http://127.0.0.1:{}/_config/admins/raindrop", server.port))
        .body("\"right-password\"")
        .send()
        .unwrap();
    assert!(admin.status().is_success(), "cannot create an admin: {}", admin.status());
    let url = format!("http://raindrop:wrong-password@127.0.0.1:{}/secret", server.port);
    let err = CouchStore::open(&url, quick_retry()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{msg}");
    assert!(msg.contains("raindrop") && !msg.contains("wrong-password"), "{msg}");
    // The right password works.
    let ok = CouchStore::open(&format!("http://raindrop:right-password@127.0.0.1:{}/secret", server.port), quick_retry());
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn a_changes_read_survives_the_server_being_killed_and_restarted() {
    let mut server = PouchServer::start();
    let url = server.db_url("restart");
    let store = CouchStore::open(&url, RetryPolicy::default()).unwrap();
    let docs: Vec<Doc> = (0..3000).map(|i| json!({"_id": format!("r{i:04}"), "i": i}).as_object().unwrap().clone()).collect();
    for chunk in docs.chunks(1000) {
        store.write(raindrop::store::WriteBatch::docs(chunk.to_vec())).unwrap();
    }
    // Read in small pages; kill the server after the first pages and bring it back a second
    // later. The reader resumes from the last sequence it returned.
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let reader = std::thread::spawn(move || {
        let mut since = Seq::zero();
        let mut seen = Vec::new();
        loop {
            let page = store.changes(&since, 100, false).expect("the read resumes after the restart");
            if page.changes.is_empty() {
                return seen;
            }
            seen.extend(page.changes.into_iter().map(|c| c.id));
            since = page.last_seq;
            let _ = tx.send(seen.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    while rx.recv().unwrap() < 500 {}
    server.kill();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let seen = reader.join().unwrap();
    let mut expected: Vec<String> = (0..3000).map(|i| format!("r{i:04}")).collect();
    let mut got = seen.clone();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), 3000, "missed or duplicated changes");
    assert_eq!(got, expected);
}
