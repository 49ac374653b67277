//! Test helpers: real servers on loopback, started and stopped by the tests, and the real binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fresh temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("raindrop-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Makes a child die with the test process, even if the test panics or is killed.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Where `pouchdb-server` is: `RAINDROP_POUCHDB_SERVER`, or the set-up script's cache.
fn pouchdb_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RAINDROP_POUCHDB_SERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("RAINDROP_CACHE").map(PathBuf::from).unwrap_or_else(|_| dirs_home().join(".cache/raindrop"));
    cache.join("node/node_modules/.bin/pouchdb-server")
}

fn dirs_home() -> PathBuf {
    std::env::var("HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/root"))
}

/// A real PouchDB Server (a CouchDB-protocol server) on a loopback port, with its data in a
/// temporary folder. Killed on drop.
pub struct PouchServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl PouchServer {
    pub fn start() -> PouchServer {
        let dir = TempDir::new("pouchdb");
        let mut s = PouchServer { child: None, port: free_port(), dir };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = pouchdb_server_bin();
        assert!(bin.exists(), "pouchdb-server not found at {} — run scripts/setup.sh (or set RAINDROP_POUCHDB_SERVER)", bin.display());
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--dir", "data", "--no-stdout-logs"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("start pouchdb-server"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/", self.port);
        while Instant::now() < deadline {
            if reqwest::blocking::get(&url).map(|r| r.status().is_success()).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pouchdb-server did not come up on port {}", self.port);
    }

    /// The URL of database `name` on this server.
    pub fn db_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PouchServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `raindrop` binary built for these tests.
pub fn raindrop() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raindrop"));
    cmd.env_remove("RAINDROP_DB").env_remove("RUST_LOG").env("RAINDROP_CONFIG", repo().join("tests/fixtures/empty-config.toml"));
    cmd
}

/// The repository root (for `js-extensions/`, fixtures …).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---- Running the binary and reading the database back -------------------------------------

pub fn rd(db: &str, exts: &Path) -> Command {
    let mut c = raindrop();
    c.arg("--db").arg(db).arg("--extensions").arg(exts).args(["--js-threads", "2"]);
    c
}

pub fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{:?} failed: {}", c, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every live document, normalised: revisions and attachments' `revpos` (which depend on
/// write history) are blanked.
pub fn dump(db: &str, exts: &Path) -> Vec<Value> {
    let out = rd(db, exts).args(["db", "dump"]).output().unwrap();
    assert!(out.status.success());
    let mut docs: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| normalise(serde_json::from_str(l).unwrap())).collect();
    docs.sort_by(|a, b| a["_id"].as_str().cmp(&b["_id"].as_str()));
    docs
}

pub fn normalise(v: Value) -> Value {
    match v {
        Value::String(s) if s.split_once('-').is_some_and(|(n, h)| n.parse::<u64>().is_ok() && h.len() == 32) => {
            Value::String("REV".into())
        }
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(k, _)| k != "_rev" && k != "revpos").map(|(k, v)| (k, normalise(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
        other => other,
    }
}

pub fn of_schema<'a>(docs: &'a [Value], schema: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["rd_schema_id"] == schema).collect()
}

// ---- Dovecot: a real IMAP server on loopback with a throwaway mail store --------------------

/// Debian's `dovecot-imapd`, started on a free loopback port with its own config, passwd file
/// and Maildir homes in a temporary directory; stopped on drop.
pub struct Dovecot {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// The uid owning the mail store (dovecot will not deliver mail as root).
    mail_uid: u32,
}

impl Dovecot {
    pub fn start(users: &[(&str, &str)]) -> Dovecot {
        let bin = Path::new("/usr/sbin/dovecot");
        assert!(bin.exists(), "dovecot not found — run scripts/setup.sh --test (it installs dovecot-imapd)");
        let dir = TempDir::new("dovecot");
        let root = dir.path().to_path_buf();
        // Login processes run as other users: they must be able to reach the sockets.
        set_mode(&root, 0o755);
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let (mail_uid, mail_gid) = if uid == 0 { (65534, 65534) } else { (uid, gid) };
        let port = free_port();
        let mut passwd = String::new();
        for (user, password) in users {
            passwd.push_str(&format!("{user}:{{PLAIN}}{password}\n"));
        }
        std::fs::write(root.join("passwd"), passwd).unwrap();
        let as_user = if uid == 0 {
            String::new()
        } else {
            let me = std::env::var("USER").unwrap_or_else(|_| "nobody".into());
            format!("default_internal_user = {me}\ndefault_login_user = {me}\nservice imap-login {{\n  chroot =\n}}\n")
        };
        let r = root.display();
        let conf = format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {r}/run\nstate_dir = {r}/state\nlog_path = {r}/dovecot.log\n\
             ssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\nfirst_valid_uid = 0\n\
             mail_location = maildir:~/Maildir\n{as_user}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {r}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={mail_uid} gid={mail_gid} home={r}/home/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             namespace inbox {{\n  inbox = yes\n  mailbox Trash {{\n    special_use = \\Trash\n  }}\n  mailbox Sent {{\n    special_use = \\Sent\n  }}\n  mailbox Junk {{\n    special_use = \\Junk\n  }}\n}}\n"
        );
        std::fs::write(root.join("dovecot.conf"), conf).unwrap();
        let mut d = Dovecot { child: None, port, dir, mail_uid };
        for (user, _) in users {
            d.folder(user, None);
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-F").arg("-c").arg(root.join("dovecot.conf")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        d.child = Some(cmd.spawn().expect("start dovecot"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dovecot did not come up: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// The Maildir folder (`None` = INBOX), created if needed.
    pub fn folder(&self, user: &str, folder: Option<&str>) -> PathBuf {
        let mut path = self.dir.path().join("home").join(user).join("Maildir");
        if let Some(f) = folder {
            path = path.join(format!(".{f}"));
        }
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(path.join(sub)).unwrap();
        }
        self.chown_home(user);
        path
    }

    /// Puts a message straight into the mail store, `\Seen` or not.
    pub fn deliver(&self, user: &str, folder: Option<&str>, name: &str, bytes: &[u8], seen: bool) {
        let dir = self.folder(user, folder);
        let path = if seen { dir.join("cur").join(format!("{name}:2,S")) } else { dir.join("new").join(name) };
        std::fs::write(&path, bytes).unwrap();
        self.chown_home(user);
    }

    fn chown_home(&self, user: &str) {
        let home = self.dir.path().join("home").join(user);
        let _ = Command::new("chown").arg("-R").arg(format!("{0}:{0}", self.mail_uid)).arg(&home).status();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the master stops its children too.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A TCP proxy on loopback that cuts the first `cuts` connections once `after_bytes` bytes have
/// come back from the server: a network failure in the middle of a fetch, on demand.
pub struct CuttingProxy {
    pub port: u16,
    pub cuts_done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(target: u16, after_bytes: usize, cuts: usize) -> CuttingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts_done = Arc::new(AtomicUsize::new(0));
        let done = cuts_done.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                });
                let done = done.clone();
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut sent = 0usize;
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if sent + n > after_bytes && done.load(Ordering::SeqCst) < cuts {
                            done.fetch_add(1, Ordering::SeqCst);
                            let _ = client.write_all(&buf[..after_bytes.saturating_sub(sent)]);
                            break;
                        }
                        sent += n;
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port, cuts_done }
    }
}

/// Asserts two dumps hold the same documents, naming the first few that differ.
pub fn assert_same_docs(got: &[Value], expected: &[Value], context: &str) {
    if got == expected {
        return;
    }
    let by_id = |docs: &[Value]| {
        docs.iter().map(|d| (d["_id"].as_str().unwrap_or_default().to_string(), d.clone())).collect::<std::collections::BTreeMap<_, _>>()
    };
    let (g, e) = (by_id(got), by_id(expected));
    let missing: Vec<&String> = e.keys().filter(|id| !g.contains_key(*id)).take(5).collect();
    let extra: Vec<&String> = g.keys().filter(|id| !e.contains_key(*id)).take(5).collect();
    let changed: Vec<String> = e
        .iter()
        .filter(|(id, d)| g.get(*id).is_some_and(|x| x != *d))
        .take(3)
        .map(|(id, d)| format!("{id}:\n  expected {d}\n  got      {}", g[id]))
        .collect();
    panic!(
        "{context}: {} documents, expected {}; missing {missing:?}; unexpected {extra:?}; differing:\n{}",
        got.len(),
        expected.len(),
        changed.join("\n")
    );
}

/// Seeds databases with `seed` and processes them with `process` (a command on the database):
/// once uninterrupted and then, per round, in runs SIGKILLed after each delay (ms) and one run
/// to the end. Every round must end in the uninterrupted database, which is returned.
pub fn kill_rounds(dir: &TempDir, exts: &Path, seed: impl Fn(&str), process: impl Fn(&str) -> Command, rounds: &[&[u64]]) -> Vec<Value> {
    let reference = dir.path().join("reference").to_string_lossy().into_owned();
    seed(&reference);
    ok(process(&reference));
    let expected = dump(&reference, exts);
    for (round, delays) in rounds.iter().enumerate() {
        let db = dir.path().join(format!("killed-{round}")).to_string_lossy().into_owned();
        seed(&db);
        let mut kills = 0;
        for delay in delays.iter() {
            let mut child = process(&db).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(*delay));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            child.wait().unwrap();
        }
        ok(process(&db));
        assert!(kills > 0, "round {round}: no run was killed; use shorter delays");
        assert_same_docs(&dump(&db, exts), &expected, &format!("round {round}: the database differs after {kills} kills"));
    }
    expected
}

/// Polls `check` until it holds or `secs` pass.
pub fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    panic!("not within {secs} s: {what}");
}

/// A daemon child process, its stderr going to a file read by `log()`; SIGKILLed on drop.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
    pub port: u16,
}

impl Daemon {
    pub fn start(mut cmd: Command, dir: &Path) -> Daemon {
        let log = dir.join(format!("daemon-{}.log", free_port()));
        let port = free_port();
        let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        Daemon { child, log, port }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> reqwest::blocking::Response {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut request = client.get(format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send().unwrap()
    }

    pub fn status(&self) -> Value {
        self.get("/status", None).json().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling this test's own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the process to end; its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Every JS pool is stopped and joined before the process exits; a runtime
                // left running would have made SpiderMonkey's destructors abort the exit.
                let log = self.log();
                assert!(!log.contains("still running at exit"), "a JS runtime outlived the daemon:\n{log}");
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the daemon did not exit within {secs} s:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
