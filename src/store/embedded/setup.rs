//! Opening the file: refusing one that is another program's, making or bringing up to date
//! the tables, each connection's settings, and the thread that copies the write-ahead log into
//! the database file.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::StoreError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    seq     INTEGER PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    rev     TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    has_att INTEGER NOT NULL,
    body    TEXT NOT NULL,
    schema  TEXT
);
CREATE TABLE IF NOT EXISTS attachments (
    doc_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    length       INTEGER NOT NULL,
    digest       TEXT NOT NULL,
    revpos       INTEGER NOT NULL,
    data         BLOB NOT NULL,
    UNIQUE (doc_id, name)
);
CREATE TABLE IF NOT EXISTS local (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indexed_fields (
    schema TEXT NOT NULL,
    field  TEXT NOT NULL,
    PRIMARY KEY (schema, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS field_index (
    schema TEXT NOT NULL,
    field  TEXT NOT NULL,
    value  TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (schema, field, value, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS field_index_by_id ON field_index (id);
CREATE TABLE IF NOT EXISTS contributors (
    id        TEXT NOT NULL,
    ext       TEXT NOT NULL,
    source    TEXT,
    PRIMARY KEY (id, ext)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contributors_by_ext ON contributors (ext, source);
CREATE INDEX IF NOT EXISTS contributors_by_source ON contributors (source);
CREATE TABLE IF NOT EXISTS contributor_deps (
    dep TEXT NOT NULL,
    id  TEXT NOT NULL,
    ext TEXT NOT NULL,
    PRIMARY KEY (dep, id, ext)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contributor_deps_by_id ON contributor_deps (id);
CREATE TABLE IF NOT EXISTS contributors_seq (
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id   TEXT NOT NULL UNIQUE,
    rev  TEXT NOT NULL,
    body TEXT NOT NULL
);
";

/// Copies the write-ahead log into the database file on a thread of its own. SQLite would do
/// it inside whichever commit crosses 1,000 log pages, stalling the pipeline's writer (~5% of
/// a chain benchmark); here the writer only says it committed.
pub(super) struct Checkpointer {
    /// (commits since the last checkpoint, stop) and its wake-up.
    state: Arc<(Mutex<(u64, bool)>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = connect(path)?;
        let state = Arc::new((Mutex::new((0u64, false)), Condvar::new()));
        let shared = state.clone();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || loop {
                let (lock, wake) = &*shared;
                let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                while guard.0 == 0 && !guard.1 {
                    guard = wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                if guard.1 {
                    return;
                }
                drop(guard);
                // Let a burst of commits gather, then copy them at once.
                std::thread::sleep(Duration::from_millis(100));
                lock.lock().unwrap_or_else(|p| p.into_inner()).0 = 0;
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!("checkpointing the log of {} failed (retried after the next commit): {e}", path.display());
                }
            })
            .map_err(|e| StoreError::Embedded { path: String::new(), reason: format!("cannot start the checkpoint thread: {e}") })?;
        Ok(Checkpointer { state, thread: Some(thread) })
    }

    pub(super) fn committed(&self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
        wake.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Brings a database made by an earlier version up to date: the `schema` column (each
/// document's `rd_schema_id`, indexed for `find`) was added after the first release.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_schema: bool =
        conn.query_row("SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = 'schema'", [], |r| r.get::<_, i64>(0))? > 0;
    if !has_schema {
        conn.execute_batch(
            "ALTER TABLE docs ADD COLUMN schema TEXT;
             UPDATE docs SET schema = json_extract(body, '$.rd_schema_id') WHERE deleted = 0;",
        )?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS docs_by_schema ON docs (schema) WHERE schema IS NOT NULL;")
}

pub(super) fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded { path: path.display().to_string(), reason: e.to_string() }
}

/// Refuses a file that is not a Raindrop database, before anything writes to it: a mistyped
/// `--db` pointing at another program's SQLite file would otherwise get tables added, a
/// column added to a `docs` table of its own, and its journal switched to a write-ahead log.
/// A missing or empty file, or an SQLite database without tables, is a new store.
pub(super) fn refuse_foreign(path: &Path) -> Result<(), StoreError> {
    let refuse = |why: String| {
        Err(StoreError::Embedded {
            path: path.display().to_string(),
            reason: format!("{why}; refusing to use it as a Raindrop database (nothing was changed)"),
        })
    };
    let mut head = [0u8; 16];
    let n = match std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e)),
    };
    if n == 0 {
        return Ok(());
    }
    if n < head.len() || &head != b"SQLite format 3\0" {
        return refuse("the file is not an SQLite database".into());
    }
    let Ok(conn) =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)
    else {
        // Not readable as it is (a log to recover, say): the full open below reports it.
        return Ok(());
    };
    let tables: Vec<String> = match conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>())
    {
        Ok(t) => t,
        Err(e) => return refuse(format!("its tables cannot be read ({e})")),
    };
    if tables.is_empty() {
        return Ok(());
    }
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('docs')")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>())
        .unwrap_or_default();
    let ours = ["seq", "id", "rev", "deleted", "has_att", "body"].iter().all(|c| columns.iter().any(|have| have == c))
        && tables.iter().any(|t| t == "local");
    if ours {
        Ok(())
    } else {
        refuse(format!("it is an SQLite database of another program (its tables: {})", tables.join(", ")))
    }
}

/// The writer's connection, with the tables made or brought up to date. Two processes opening
/// a new file at once (`raindrop import` and `raindrop run`) race to make it, and turning a new
/// file's journal into a write-ahead log answers "busy" at once instead of waiting: the loser
/// tries again (for up to the busy timeout) rather than failing.
pub(super) fn set_up(path: &Path) -> Result<Connection, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = open_connection(path).and_then(|c| {
            // All the tables in one transaction: a process opening the file meanwhile sees
            // none or all of them, never a `docs` table alone that looks like another
            // program's database. (A failed attempt's connection is dropped: rolled back.)
            c.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))?;
            migrate(&c)?;
            Ok(c)
        });
        match attempt {
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(|e| err(path, e)),
        }
    }
}

pub(super) fn connect(path: &Path) -> Result<Connection, StoreError> {
    open_connection(path).map_err(|e| err(path, e))
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL + synchronous=FULL: every commit is durable once it returns (but for a
    // `Durability::Deferred` write, see `write_all`), readers run beside the writer, and a crash
    // leaves the last committed state. The log is copied into the database
    // by the `Checkpointer`, not by the commits. Reads of the database file go through a memory
    // map of the whole file (up to 64 GiB; `.cargo/config.toml` lifts SQLite's built-in 2 GiB
    // bound) instead of a `pread` per page: the mail run's attachment and feed reads were mostly
    // system calls, and past a 1 GiB map a 100,000-message database's random reads (the
    // writer's merges, extensions' lookups) cost 4-5x what they did at 10,000. The price: a disk I/O error while reading ends the process
    // (SIGBUS) instead of returning an error — a crash, after which a run resumes from its
    // last checkpoint like after any other. Pages of 16 KiB (for a new database; an existing
    // one keeps its size): a message body or mail attachment spans a few pages instead of a
    // chain of many 4 KiB overflow pages, which made commits ~10% of the mail run's CPU
    // (8 KiB measured in between, 32 KiB the same as 16; the store benchmark did not change).
    conn.execute_batch(
        "PRAGMA busy_timeout=10000; PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-32768; PRAGMA mmap_size=68719476736;",
    )?;
    // Room for every statement the store uses (rusqlite keeps 16 by default): an evicted one
    // is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(64);
    // One query plan per statement, whatever the bound values: without it SQLite re-parsed
    // and re-planned the field-index query at every run (its plan depended on the values),
    // which profiles of the mail run showed as ~4% of all CPU.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}
