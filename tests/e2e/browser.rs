//! The mail page in a real browser: Debian's `chromium`, headless, driven over the DevTools
//! protocol (a WebSocket on loopback): the sample mail's subjects appear, a conversation opens
//! with its messages, and marking one read changes what the page shows.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::api::{sample_mail_db, serve};
use crate::support::{die_with_parent, eventually, repo, TempDir};

/// A headless chromium and a DevTools connection to its one page; killed on drop.
struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
        let bin = bin.expect("chromium not found — run scripts/setup.sh --test (it installs Debian's chromium)");
        let mut cmd = Command::new(bin);
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            .args(["--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let mut port = None;
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop)); // keep its stderr drained
        let port = port.expect("chromium did not say where DevTools listens");
        let targets: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list")).unwrap().json().unwrap();
        let ws =
            targets.as_array().unwrap().iter().find(|t| t["type"] == "page").unwrap()["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (page, _) = tungstenite::connect(ws).unwrap();
        if let MaybeTlsStream::Plain(s) = page.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Browser { child, page, next_id: 1 }
    }

    /// Calls a DevTools method and waits for its answer (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.page.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).unwrap();
        loop {
            let Message::Text(text) = self.page.read().unwrap() else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JS expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        r["result"]["value"].clone()
    }

    fn text(&mut self) -> String {
        self.eval("document.body.innerText").as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_shows_the_mail_opens_a_conversation_and_marks_a_message_read() {
    let dir = TempDir::new("browser");
    let db = sample_mail_db(dir.path());
    let daemon = serve(&db, &repo().join("api"), dir.path(), "2");
    let mut browser = Browser::start(&dir.path().join("profile"));
    browser.call("Page.navigate", json!({"url": format!("http://127.0.0.1:{}/", daemon.port)}));

    // The groups, and the first group's conversations.
    eventually(30, "the groups in the page", || browser.text().contains("Bugzilla"));
    browser.eval("location.hash = '#group=' + encodeURIComponent('mailing-list-test.lists.example.com')");
    eventually(30, "the list's subjects", || browser.text().contains("What is the answer to this question?"));

    // Opening the conversation shows its message.
    let opened = browser.eval(
        "(() => { const a = [...document.querySelectorAll('a.conv')].find((e) => e.innerText.includes('What is the answer')); a.click(); return !!a; })()",
    );
    assert_eq!(opened, json!(true));
    eventually(30, "the conversation's message", || {
        browser
            .eval("document.getElementById('conversation').innerText")
            .as_str()
            .unwrap_or_default()
            .contains("The answer to that question is what.")
    });
    assert_eq!(browser.eval("document.querySelectorAll('#conversation .msg.unread').length"), json!(1));
    assert_eq!(browser.eval("document.querySelector('a.conv.current').classList.contains('unread')"), json!(true));

    // Marking it read: the message at once, the conversation in the list once the
    // extensions have taken the change up.
    browser.eval("document.querySelector('#conversation button.mark').click()");
    eventually(30, "the message shown read", || browser.eval("document.querySelectorAll('#conversation .msg.unread').length") == json!(0));
    eventually(30, "the conversation shown read in the list", || {
        browser.eval("window.dispatchEvent(new HashChangeEvent('hashchange'))");
        std::thread::sleep(Duration::from_millis(300));
        browser.eval("document.querySelector('a.conv.current')?.classList.contains('unread')") == json!(false)
    });
}
