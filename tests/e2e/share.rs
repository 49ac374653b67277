//! Shared workers (`--share`) on PouchDB Server: daemons on one database split the sample mail
//! through leases, end with the database one worker makes, and take over for one another.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{dump, eventually, ok, raindrop, rd, repo, Daemon, PouchServer, TempDir};

/// Seconds after which a lease not renewed is taken over, in these tests.
const LEASE_TIMEOUT: u64 = 3;

fn exts() -> std::path::PathBuf {
    repo().join("js-extensions")
}

fn import(db: &str, what: &Path) {
    let mut c = rd(db, &exts());
    c.arg("import").arg(what);
    ok(c);
}

/// The documents the mail's processing made, without the leases and the roster.
fn derived(db: &str) -> Vec<Value> {
    dump(db, &exts()).into_iter().filter(|d| !d["_id"].as_str().unwrap_or_default().starts_with("rdshare!")).collect()
}

/// The sample mail processed by one worker alone.
fn one_worker(server: &PouchServer) -> Vec<Value> {
    let db = server.db_url("one");
    import(&db, &repo().join("fixtures/mail"));
    let mut c = rd(&db, &exts());
    c.arg("process");
    ok(c);
    derived(&db)
}

fn worker(db: &str, dir: &Path) -> Daemon {
    let mut c = raindrop();
    c.arg("--db").arg(db).arg("--extensions").arg(exts());
    c.args(["--js-threads", "1", "process", "--continuous", "--share", "--lease-timeout", &LEASE_TIMEOUT.to_string()]);
    Daemon::start(c, dir)
}

/// What `got` lacks of `expected` (documents missing or different), and what it has beyond
/// it, by id.
fn difference(got: &[Value], expected: &[Value]) -> (Vec<String>, Vec<String>) {
    let by_id =
        |docs: &[Value]| docs.iter().map(|d| (d["_id"].as_str().unwrap_or_default().to_string(), d.clone())).collect::<BTreeMap<_, _>>();
    let (g, e) = (by_id(got), by_id(expected));
    let lacking = e.iter().filter(|(id, d)| g.get(*id) != Some(*d)).map(|(id, _)| id.clone()).collect();
    let beyond = g.keys().filter(|id| !e.contains_key(*id)).cloned().collect();
    (lacking, beyond)
}

/// Waits up to `secs` for `db` to hold the `expected` documents; then asserts it does, naming
/// what differs.
fn until_equal(db: &str, expected: &[Value], secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = derived(db);
        let (lacking, beyond) = difference(&got, expected);
        if lacking.is_empty() && beyond.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for error in got.iter().filter(|d| d["rd_schema_id"] == "rd.core.error") {
                eprintln!("error document: {}", error["error_details"]);
            }
            let text = |docs: &[Value], id: &str| docs.iter().find(|d| d["_id"] == id).map(Value::to_string).unwrap_or_default();
            let show = |ids: &[String]| {
                ids.iter().take(3).map(|id| format!("{id}: {} (one worker: {})", text(&got, id), text(expected, id))).collect::<Vec<_>>()
            };
            eprintln!("lacking or different: {lacking:?}\nbeyond: {beyond:?}");
            panic!("{what}: {} lacking or different {:?}, {} beyond {:?}", lacking.len(), show(&lacking), beyond.len(), show(&beyond));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Slices held per worker, from the lease documents.
fn leases(db: &str) -> BTreeMap<String, usize> {
    let url = format!("{db}/_all_docs?startkey=%22rdshare!lease!%22&endkey=%22rdshare!lease!~%22&include_docs=true");
    let all: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
    let mut held = BTreeMap::new();
    // No rows before the first worker made the database.
    for row in all["rows"].as_array().into_iter().flatten() {
        if let Some(owner) = row["doc"]["owner"].as_str() {
            *held.entry(owner.to_string()).or_default() += 1;
        }
    }
    held
}

/// Whether `_local` checkpoint `id` is in the database.
fn has_checkpoint(db: &str, id: &str) -> bool {
    reqwest::blocking::get(format!("{db}/_local/{id}")).unwrap().status().is_success()
}

/// The checkpoints of worker `worker` still in the database, of its main run's and its first
/// catch-ups'.
fn checkpoints_left(db: &str, worker: &str) -> Vec<String> {
    use raindrop::pipeline::share::{catch_up_checkpoint, checkpoint_of};
    std::iter::once(checkpoint_of(worker))
        .chain((1..=8).map(|n| catch_up_checkpoint(worker, n)))
        .filter(|id| has_checkpoint(db, id))
        .collect()
}

/// The records of the shared later queue: the values left for the worker that runs the
/// later_handlers, not yet run.
fn shared_later_records(db: &str) -> usize {
    // The records live in a database of their own beside the documents' (`<db>$records`).
    let url = format!("{db}%24records/_all_docs?startkey=%22rdlater!shared!%22&endkey=%22rdlater!shared!~%22");
    let all: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
    all["rows"].as_array().map_or(0, Vec::len)
}

/// Waits until `n` workers hold every slice between them, each a fair share.
fn settled(db: &str, n: usize) {
    eventually(60, &format!("{n} workers sharing the 16 slices"), || {
        let held = leases(db);
        held.len() == n && held.values().sum::<usize>() == 16 && held.values().all(|&k| k >= 16 / n - 1)
    });
}

/// The handler runs a worker reports when it stops.
fn handler_runs(log: &str) -> u64 {
    let done = log.lines().find(|l| l.starts_with("done in")).unwrap_or_else(|| panic!("the worker did not finish:\n{log}"));
    done.split(" handler runs").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap()
}

fn stop(workers: &mut [Daemon]) -> Vec<u64> {
    for w in workers.iter() {
        w.signal(libc::SIGTERM);
    }
    workers
        .iter_mut()
        .map(|w| {
            assert_eq!(w.wait_exit(30), Some(0), "{}", w.log());
            handler_runs(&w.log())
        })
        .collect()
}

#[test]
fn three_shared_workers_split_the_mail_and_end_with_one_workers_database() {
    let dir = TempDir::new("share-three");
    let server = PouchServer::start();
    let expected = one_worker(&server);
    let db = server.db_url("three");
    let mut workers: Vec<Daemon> = (0..3).map(|_| worker(&db, dir.path())).collect();
    settled(&db, 3);
    import(&db, &repo().join("fixtures/mail"));
    until_equal(&db, &expected, 120, "three shared workers");
    // One of them ran every worker's later_handler values, and took them out of the queue.
    eventually(30, "the shared later queue emptied", || shared_later_records(&db) == 0);
    let ids: Vec<String> = leases(&db).into_keys().collect();
    for id in &ids {
        assert!(has_checkpoint(&db, &raindrop::pipeline::share::checkpoint_of(id)), "worker {id} keeps its main run's checkpoint");
    }
    let runs = stop(&mut workers);
    let total: u64 = runs.iter().sum();
    for r in &runs {
        assert!(*r * 100 >= total * 15 && *r * 100 <= total * 60, "not a real split of the work: {runs:?}");
    }
    // Every lease given back on the way out: a worker that stops leaves no one waiting.
    assert!(leases(&db).is_empty(), "{:?}", leases(&db));
    // Nor checkpoints no run will read again (the next start is a new worker).
    for id in &ids {
        assert_eq!(checkpoints_left(&db, id), Vec::<String>::new(), "worker {id}");
    }
}

#[test]
fn a_killed_worker_s_share_is_taken_over_within_the_lease_timeout() {
    let dir = TempDir::new("share-killed");
    let server = PouchServer::start();
    let expected = one_worker(&server);
    let db = server.db_url("killed");
    let mut workers: Vec<Daemon> = (0..3).map(|_| worker(&db, dir.path())).collect();
    settled(&db, 3);
    import(&db, &repo().join("fixtures/mail"));
    // Killed in the middle: once some of the mail is processed, before all of it is.
    eventually(60, "some of the mail processed", || derived(&db).iter().any(|d| d["rd_schema_id"] == "rd.msg.body"));
    let mut killed = workers.remove(0);
    killed.child.kill().unwrap(); // SIGKILL: no lease given back
    killed.child.wait().unwrap();
    let at = Instant::now();
    until_equal(&db, &expected, LEASE_TIMEOUT + 60, "the others finishing the killed worker's share");
    eprintln!("the killed worker's share was finished {:.1} s after the kill", at.elapsed().as_secs_f64());
    eventually(LEASE_TIMEOUT * 3, "the two survivors to hold every slice", || {
        let held = leases(&db);
        held.len() == 2 && held.values().sum::<usize>() == 16
    });
    stop(&mut workers);
}

#[test]
fn a_worker_joining_in_the_middle_gets_a_share() {
    let dir = TempDir::new("share-join");
    let server = PouchServer::start();
    let expected = one_worker(&server);
    let db = server.db_url("join");
    let mut workers: Vec<Daemon> = (0..2).map(|_| worker(&db, dir.path())).collect();
    settled(&db, 2);
    import(&db, &repo().join("fixtures/mail/raindrop"));
    workers.push(worker(&db, dir.path()));
    settled(&db, 3);
    for part in ["hand-rolled", "mailing-list", "malformed"] {
        import(&db, &repo().join("fixtures/mail").join(part));
    }
    until_equal(&db, &expected, 120, "a worker joined in the middle");
    let ids: Vec<String> = leases(&db).into_keys().collect();
    let runs = stop(&mut workers);
    assert!(runs[2] > 0, "the joiner did none of the work: {runs:?}");
    // Each claimed slices and caught them up: no catch-up's checkpoint is left, nor a main one.
    for id in &ids {
        assert_eq!(checkpoints_left(&db, id), Vec::<String>::new(), "worker {id}");
    }
}

/// Shown here because the tests compare it: the slice of a source under `--worker K/N` is its
/// id's 128-bit FNV-1a digest (as `src/digest.rs`), its first 64 bits modulo N.
pub(crate) fn static_slice(id: &str, n: u64) -> u64 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    let mut chunks = id.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().unwrap()) as u128;
        h = h.wrapping_mul(PRIME);
    }
    for b in chunks.remainder().iter().chain(&[0xff]) {
        h ^= *b as u128;
        h = h.wrapping_mul(PRIME);
    }
    ((h >> 64) as u64) % n
}
