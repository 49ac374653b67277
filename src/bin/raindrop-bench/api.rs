//! `raindrop-bench api`: the JS API through the real daemon (`raindrop run`) over the mail
//! benchmark's database, with 64 keep-alive clients on loopback: requests per second and
//! latency of the inflow conversation list and of one conversation, with 1 and 2 JS threads,
//! the pipeline idle and busy (importing more mail beside); and a fast endpoint's p99 while
//! other clients keep a 500 ms endpoint busy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

const CLIENTS: usize = 64;

/// Routes for the latency scenario, beside the inflow API.
const BENCH_ROUTES: &str = r#"
route({ path: "/bench/fast", handler() { return { json: { ok: true } }; } });
route({ path: "/bench/slow", time_limit_ms: 5000, handler() {
  const until = Date.now() + 500; while (Date.now() < until) {} return { json: { ok: true } };
} });
"#;

/// What one scenario measured.
struct Load {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

pub fn bench_api() {
    let n: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let busy_n = n / 2;
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let window = Duration::from_secs_f64(seconds);
    let dir = std::env::temp_dir().join(format!("raindrop-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let messages = super::mail::mailbox(n + busy_n);
    eprintln!("building the database: {n} messages through the bundled extensions…");
    let db = dir.join("db");
    super::mail::mail_run(&db, &messages[..n], 2, false, true);
    let extra = dir.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    for (i, m) in messages[n..].iter().enumerate() {
        std::fs::write(extra.join(format!("{i}.eml")), m).unwrap();
    }
    let api = dir.join("api");
    std::fs::create_dir_all(&api).unwrap();
    std::fs::copy(repo().join("api/inflow.js"), api.join("inflow.js")).unwrap();
    std::fs::write(api.join("bench.js"), BENCH_ROUTES).unwrap();

    println!("raindrop-bench api — {n} messages, {CLIENTS} keep-alive clients, {seconds} s per row, `raindrop run` on loopback");
    println!(
        "{:>10} {:>8} {:>14} {:>10} {:>9} {:>9} {:>7}",
        "JS threads", "pipeline", "endpoint", "requests/s", "p50 ms", "p99 ms", "errors"
    );
    let mut rates = std::collections::BTreeMap::new();
    for threads in [1usize, 2] {
        // Each thread count on its own copy: the busy rows import into it.
        let copy = dir.join(format!("db-{threads}"));
        copy_db(&db, &copy);
        let daemon = Daemon::start(&copy, &api, threads);
        let (list, convs) = paths(daemon.port);
        for busy in [false, true] {
            let importer = busy.then(|| import_beside(&copy, &extra));
            for (name, paths) in [("list", vec![list.clone()]), ("conversation", convs.clone())] {
                let load = run_load(daemon.port, &[(CLIENTS, paths)], window).remove(0);
                let mode = if busy { "busy" } else { "idle" };
                println!(
                    "{threads:>10} {mode:>8} {name:>14} {:>10.0} {:>9.1} {:>9.1} {:>7}",
                    load.rate, load.p50_ms, load.p99_ms, load.errors
                );
                rates.insert((threads, busy, name), load.rate);
            }
            if let Some(mut child) = importer {
                let _ = child.wait();
            }
        }
        let mixed = run_load(daemon.port, &[(8, vec!["/api/bench/slow".into()]), (CLIENTS - 8, vec!["/api/bench/fast".into()])], window);
        println!(
            "{threads:>10} {:>8} {:>14} {:>10.0} {:>9.1} {:>9.1} {:>7}   (beside 8 clients on a 500 ms endpoint: {:.1} requests/s)",
            "idle", "fast", mixed[1].rate, mixed[1].p50_ms, mixed[1].p99_ms, mixed[1].errors, mixed[0].rate
        );
        rates.insert((threads, false, "fast-p99"), mixed[1].p99_ms);
        drop(daemon);
    }
    for (busy, name) in [(false, "list"), (false, "conversation"), (true, "list"), (true, "conversation")] {
        if let (Some(one), Some(two)) = (rates.get(&(1, busy, name)), rates.get(&(2, busy, name))) {
            println!("{name} ({}): 2 threads / 1 thread: {:.2}x", if busy { "busy" } else { "idle" }, two / one);
        }
    }
    println!(
        "targets: 2 threads >= 1.7x one; >= 5000 list requests/s with 2 threads, pipeline idle; fast p99 <= 50 ms beside the slow endpoint"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `raindrop-bench api-load PORT PATH [SECONDS] [CLIENTS]`: the load of one row against a
/// daemon started by hand (for a profiler attached to it).
pub fn load_only(args: &[String]) {
    let port: u16 = args.first().and_then(|p| p.parse().ok()).expect("usage: raindrop-bench api-load PORT PATH [SECONDS] [CLIENTS]");
    let path = args.get(1).cloned().unwrap_or_else(|| "/api/inflow/groups".into());
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let clients: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(CLIENTS);
    let load = run_load(port, &[(clients, vec![path])], Duration::from_secs_f64(seconds)).remove(0);
    println!("{:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms, {} errors", load.rate, load.p50_ms, load.p99_ms, load.errors);
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the embedded store's file (and its write-ahead log, if one is left).
fn copy_db(from: &Path, to: &Path) {
    let dir = from.parent().unwrap();
    let name = from.file_name().unwrap().to_string_lossy().into_owned();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(suffix) = file.strip_prefix(&name).filter(|s| s.is_empty() || s.starts_with('-')) {
            std::fs::copy(entry.path(), format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

/// The list of the largest group (20 a page), and the first conversations of it.
fn paths(port: u16) -> (String, Vec<String>) {
    let groups = get_json(port, "/api/inflow/groups");
    let mut best = (0u64, String::new());
    for g in groups["groups"].as_array().unwrap() {
        let tag = g["tag"].as_str().unwrap().to_string();
        let total = get_json(port, &format!("/api/inflow/conversations?group={}&limit=1", encode(&tag)))["total"].as_u64().unwrap_or(0);
        if total > best.0 {
            best = (total, tag);
        }
    }
    eprintln!("the largest group: {} ({} conversations)", best.1, best.0);
    let list = format!("/api/inflow/conversations?group={}&limit=20", encode(&best.1));
    let page = get_json(port, &format!("/api/inflow/conversations?group={}&limit=200", encode(&best.1)));
    let convs = page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("/api/inflow/conversations/{}", encode(&c["id"].to_string())))
        .collect();
    (list, convs)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `raindrop import` of `extra` into `db` beside the daemon: the pipeline busy.
fn import_beside(db: &Path, extra: &Path) -> Child {
    Command::new(raindrop_bin()).arg("--db").arg(db).arg("import").arg(extra).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn raindrop_bin() -> PathBuf {
    std::env::current_exe().unwrap().with_file_name("raindrop")
}

/// `raindrop run` with the bundled extensions; stopped (SIGKILL) on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(db: &Path, api: &Path, threads: usize) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(raindrop_bin())
            .arg("--db")
            .arg(db)
            .arg("--extensions")
            .arg(repo().join("js-extensions"))
            .arg("--api")
            .arg(api)
            .args(["--js-threads", &threads.to_string(), "run", "--listen", &format!("127.0.0.1:{port}")])
            .env("RAINDROP_CONFIG", repo().join("tests/fixtures/empty-config.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Daemon { child, port }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(port: u16, path: &str) -> Value {
    let mut c = Client::connect(port);
    let (status, body) = c.get(path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// A keep-alive HTTP/1.1 client as small as the measurement needs (responses carry
/// Content-Length).
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// Groups of (clients, paths each cycles through), all at once for `window`; one `Load` per
/// group.
fn run_load(port: u16, groups: &[(usize, Vec<String>)], window: Duration) -> Vec<Load> {
    // Before the window: the workers' kept groups built, a slow route's average learnt.
    let warmup = Duration::from_secs(3);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (g, (clients, paths)) in groups.iter().enumerate() {
        for c in 0..*clients {
            let (stop, measuring, paths) = (stop.clone(), measuring.clone(), paths.clone());
            handles.push((
                g,
                std::thread::spawn(move || {
                    let mut client = Client::connect(port);
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let (status, _) = client.get(&paths[i % paths.len()]);
                        if measuring.load(Ordering::Relaxed) {
                            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                            errors += u64::from(status != 200);
                        }
                        i += 1;
                    }
                    (latencies, errors)
                }),
            ));
        }
    }
    std::thread::sleep(warmup);
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(window);
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut results: Vec<(Vec<f64>, u64)> = vec![(Vec::new(), 0); groups.len()];
    for (g, h) in handles {
        let (l, e) = h.join().unwrap();
        results[g].0.extend(l);
        results[g].1 += e;
    }
    results
        .into_iter()
        .map(|(mut l, errors)| {
            l.sort_by(f64::total_cmp);
            let at = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0.0);
            Load { rate: l.len() as f64 / window.as_secs_f64(), p50_ms: at(0.5), p99_ms: at(0.99), errors }
        })
        .collect()
}
