//! Test helpers: real servers on loopback, started and stopped by the tests, and the real binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let cache = std::env::var("RAINDROP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dirs_home().join(".cache/raindrop"));
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
        assert!(
            bin.exists(),
            "pouchdb-server not found at {} — run scripts/setup.sh (or set RAINDROP_POUCHDB_SERVER)",
            bin.display()
        );
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
