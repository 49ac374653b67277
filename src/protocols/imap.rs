//! IMAP sync: an account's folders into `rd.msg.rfc822`, `rd.msg.imap-locations`,
//! `rd.msg.seen` and `rd.imap.mailbox-cache` documents.
//!
//! One sync of one account:
//! 1. log in once to list the folders (special-use Trash / Junk / All skipped, then the
//!    configured exclusions; INBOX first, then Sent and Drafts, then the rest);
//! 2. a queue of jobs served by up to `connections` (≤ 6) threads, each with its own connection:
//!    *scan* a folder (EXAMINE, read-only; UIDs, flags and sizes of everything; the headers of
//!    UIDs the folder's cache does not know, for their Message-ID), then *fetch* the bodies that
//!    are in no folder's store yet with `BODY.PEEK[]` in chunks of ≤ 30 messages or ≤ 500 KB,
//!    each chunk written as soon as it arrives;
//! 3. the locations, `\Seen` flags and — last — the folder caches are written.
//!
//! Why this shape resumes: a body is written before anything records that it was fetched, and
//! a folder's cache (UIDVALIDITY, the UIDs it knows) only after all its bodies are in. A
//! connection lost mid-fetch is reconnected and the job retried; a folder that still fails
//! keeps its old cache, so the next sync scans it again and fetches only what is still missing
//! from the store. Nothing is lost, nothing is stored twice (a message's document id is its
//! Message-ID), and a re-sync of an unchanged account writes nothing.
//!
//! The password is read from an environment variable or a file at sync time; it is never
//! stored, logged or put in an error message.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use imap::types::Flag;
use imap_proto::NameAttribute;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::mail::import::{message_id, message_key, rfc822_item};
use crate::{ingest, model};
use crate::store::{Durability, Store, StoreError, WriteResult};

const EXT_ID: &str = "proto.imap";
const MAX_CONNECTIONS: usize = 6;
const CHUNK_MESSAGES: usize = 30;
const CHUNK_BYTES: u64 = 500 * 1024;
/// Header fetches for Message-IDs, per command.
const HEADER_BATCH: usize = 200;
/// Tries per job before its folder is left for the next sync.
const JOB_TRIES: u32 = 4;
/// How long a connection may take to open, and a read or a write to make progress, when the
/// account does not say (`timeout_secs`): a server that accepts and then says nothing fails
/// the job after this long instead of holding the sync for ever.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `timeout_secs` an account may set.
const MAX_TIMEOUT_SECS: u64 = 600;

/// How the connection is protected. `plain` is allowed only to a loopback address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Tls,
    Starttls,
    Plain,
}

/// One `[[accounts]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapAccount {
    /// Names the account in documents (`locations[].account`) and on the command line.
    pub id: String,
    pub host: String,
    /// Default: 993 for `tls`, 143 otherwise.
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: Security,
    pub username: String,
    /// The environment variable holding the password (default `RAINDROP_IMAP_PASSWORD`).
    pub password_env: Option<String>,
    /// A file holding the password (its first line); takes precedence over `password_env`.
    pub password_file: Option<PathBuf>,
    /// Folder names not to sync, besides the special-use Trash, Junk and All Mail.
    #[serde(default)]
    pub exclude_folders: Vec<String>,
    /// Connections to open at most (1–6, default 6).
    pub connections: Option<usize>,
    /// Seconds a connection may take to open, and a read or a write to make progress
    /// (1–600, default 60).
    pub timeout_secs: Option<u64>,
}

fn default_security() -> Security {
    Security::Tls
}

/// A password, redacted from every `Debug` print.
pub struct Password(String);

impl Password {
    /// `text` with the password (as sent, and as IMAP quotes it) blotted out: a hostile or
    /// broken server may echo the LOGIN line into an error that Raindrop reports.
    fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_string();
        }
        let quoted = self.0.replace('\\', "\\\\").replace('"', "\\\"");
        text.replace(&quoted, "<password>").replace(&self.0, "<password>")
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("account {account}: {message}")]
    Config { account: String, message: String },
    #[error("account {account}: cannot reach {server}: {reason}")]
    Connect { account: String, server: String, reason: String },
    #[error("account {account}: {server} refused the login of user {user}: {reason}")]
    Login { account: String, server: String, user: String, reason: String },
    #[error("account {account}: {failed} folder(s) not synced, they resume on the next sync (first: {first})")]
    Folders { account: String, failed: usize, first: String },
    #[error("account {account}: {source}")]
    Store { account: String, source: StoreError },
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub folders: usize,
    /// Messages in the synced folders (not flagged `\Deleted`).
    pub messages: usize,
    /// Bodies fetched and written in this sync.
    pub fetched: usize,
    /// Messages not fetched because they were already stored: known from the folder's cache,
    /// stored by an earlier sync, or fetched from another folder in this one.
    pub already_stored: usize,
    /// Jobs that lost their connection and were retried.
    pub retries: usize,
}

impl ImapAccount {
    fn port(&self) -> u16 {
        self.port.unwrap_or(if self.security == Security::Tls { 993 } else { 143 })
    }

    fn server(&self) -> String {
        format!("{}:{}", self.host, self.port())
    }

    fn connections(&self) -> usize {
        self.connections.unwrap_or(MAX_CONNECTIONS).clamp(1, MAX_CONNECTIONS)
    }

    fn timeout(&self) -> Duration {
        self.timeout_secs.map_or(DEFAULT_TIMEOUT, Duration::from_secs)
    }

    fn config_error(&self, message: impl Into<String>) -> SyncError {
        SyncError::Config { account: self.id.clone(), message: message.into() }
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), SyncError> {
        if self.id.is_empty() || self.host.is_empty() || self.username.is_empty() {
            return Err(self.config_error("id, host and username are required"));
        }
        if self.timeout_secs.is_some_and(|t| !(1..=MAX_TIMEOUT_SECS).contains(&t)) {
            return Err(self.config_error(format!("timeout_secs must be from 1 to {MAX_TIMEOUT_SECS}")));
        }
        if self.security == Security::Plain && !is_loopback(&self.host) {
            return Err(self.config_error(format!(
                "security = \"plain\" is allowed only on loopback, not {}; use \"tls\" or \"starttls\"",
                self.host
            )));
        }
        Ok(())
    }

    /// The password, from `password_file` or the environment variable.
    pub fn password(&self) -> Result<Password, SyncError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| self.config_error(format!("cannot read password_file {}: {e}", path.display())))?;
            return Ok(Password(text.lines().next().unwrap_or_default().to_string()));
        }
        let var = self.password_env.as_deref().unwrap_or("RAINDROP_IMAP_PASSWORD");
        std::env::var(var)
            .map(Password)
            .map_err(|_| self.config_error(format!("no password: set the environment variable {var} (or password_file)")))
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

type Session = imap::Session<imap::Connection>;

enum ConnectError {
    /// The server said no to the credentials: retrying will not help.
    Refused(String),
    /// The network or the protocol failed: worth another try.
    Failed(String),
}

/// Opens and logs in a session; the errors' text never holds the password.
fn connect(account: &ImapAccount, password: &Password) -> Result<Session, ConnectError> {
    match open_session(account, password) {
        Err(ConnectError::Refused(r)) => Err(ConnectError::Refused(password.redact(&r))),
        Err(ConnectError::Failed(r)) => Err(ConnectError::Failed(password.redact(&r))),
        ok => ok,
    }
}

fn open_session(account: &ImapAccount, password: &Password) -> Result<Session, ConnectError> {
    let failed = |e: &dyn std::fmt::Display| ConnectError::Failed(e.to_string());
    let addr = (account.host.as_str(), account.port())
        .to_socket_addrs()
        .map_err(|e| failed(&e))?
        .next()
        .ok_or_else(|| ConnectError::Failed("the host name has no address".into()))?;
    let timeout = account.timeout();
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed(&e))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    let mut client = match account.security {
        Security::Plain => {
            let mut c = imap::Client::new(Box::new(tcp) as imap::Connection);
            c.read_greeting().map_err(|e| failed(&e))?;
            c
        }
        Security::Tls => {
            let mut c = imap::Client::new(Box::new(tls(&account.host, tcp)?) as imap::Connection);
            c.read_greeting().map_err(|e| failed(&e))?;
            c
        }
        Security::Starttls => {
            let tcp = starttls(tcp).map_err(|e| failed(&e))?;
            // No second greeting after STARTTLS.
            imap::Client::new(Box::new(tls(&account.host, tcp)?) as imap::Connection)
        }
    };
    client.debug = false;
    client.login(&account.username, &password.0).map_err(|(e, _)| match e {
        imap::Error::No(_) | imap::Error::Bad(_) => ConnectError::Refused(e.to_string()),
        other => ConnectError::Failed(other.to_string()),
    })
}

/// Reads the greeting and asks for STARTTLS, line by line on the bare socket (nothing may be
/// buffered past the server's OK: the TLS handshake follows it).
fn starttls(mut tcp: TcpStream) -> std::io::Result<TcpStream> {
    use std::io::{Read, Write};
    let read_line = |tcp: &mut TcpStream| -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if tcp.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    };
    read_line(&mut tcp)?;
    tcp.write_all(b"rd0 STARTTLS\r\n")?;
    loop {
        let line = read_line(&mut tcp)?;
        if let Some(status) = line.strip_prefix("rd0 ") {
            if status.starts_with("OK") {
                return Ok(tcp);
            }
            return Err(std::io::Error::other(format!("STARTTLS refused: {}", status.trim_end())));
        }
    }
}

fn tls(host: &str, tcp: TcpStream) -> Result<rustls_connector::TlsStream<TcpStream>, ConnectError> {
    let config = rustls_connector::RustlsConnectorConfig::new_with_native_certs()
        .map_err(|e| ConnectError::Failed(format!("no TLS root certificates: {e}")))?;
    config.connector_with_no_client_auth().connect(host, tcp).map_err(|e| ConnectError::Failed(format!("TLS: {e}")))
}

/// A folder to sync.
#[derive(Debug, Clone)]
struct Folder {
    name: String,
    delim: Option<String>,
}

/// Lists the folders worth syncing, in the order to sync them.
fn list_folders(session: &mut Session, account: &ImapAccount) -> imap::error::Result<Vec<Folder>> {
    let names = session.list(Some(""), Some("*"))?;
    let mut folders: Vec<(u8, Folder)> = Vec::new();
    for name in names.iter() {
        let attrs = name.attributes();
        let skip_attr = attrs.iter().any(|a| match a {
            NameAttribute::NoSelect | NameAttribute::All | NameAttribute::Trash | NameAttribute::Junk => true,
            NameAttribute::Extension(x) => x.eq_ignore_ascii_case("\\Spam") || x.eq_ignore_ascii_case("\\AllMail"),
            _ => false,
        });
        let folder = Folder { name: name.name().to_string(), delim: name.delimiter().map(str::to_string) };
        let leaf = match &folder.delim {
            Some(d) if !d.is_empty() => folder.name.rsplit(d.as_str()).next().unwrap_or(&folder.name),
            _ => &folder.name,
        };
        let has_special_use = attrs.iter().any(|a| {
            matches!(a, NameAttribute::Sent | NameAttribute::Drafts | NameAttribute::Archive | NameAttribute::Flagged)
        });
        // Servers without special-use attributes: go by the usual names.
        let skip_name = !has_special_use
            && ["trash", "spam", "junk", "deleted messages", "deleted items", "all mail"].contains(&leaf.to_lowercase().as_str());
        let excluded = account.exclude_folders.iter().any(|x| x == &folder.name);
        if skip_attr || skip_name || excluded {
            tracing::debug!(account = %account.id, folder = %folder.name, "folder skipped");
            continue;
        }
        let is_sent_or_drafts = attrs.iter().any(|a| matches!(a, NameAttribute::Sent | NameAttribute::Drafts))
            || ["sent", "sent items", "sent messages", "drafts"].contains(&leaf.to_lowercase().as_str());
        let nested = folder.delim.as_deref().is_some_and(|d| !d.is_empty() && folder.name.contains(d));
        let rank = if folder.name.eq_ignore_ascii_case("INBOX") {
            0
        } else if is_sent_or_drafts {
            1
        } else if !nested {
            2
        } else {
            3
        };
        folders.push((rank, folder));
    }
    folders.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    Ok(folders.into_iter().map(|(_, f)| f).collect())
}

/// What Raindrop knew of a folder after its last complete sync (`rd.imap.mailbox-cache`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct FolderCache {
    account: String,
    folder: String,
    #[serde(default)]
    delim: Option<String>,
    uidvalidity: u32,
    uidnext: u32,
    /// `[uid, message key, seen]` of every message in the folder.
    messages: Vec<(u32, String, bool)>,
}

fn load_caches(store: &dyn Store, account: &str) -> Result<HashMap<String, FolderCache>, StoreError> {
    let docs = store.find_docs("rd.imap.mailbox-cache", Some(("account", &json!(account))), usize::MAX)?;
    Ok(docs
        .into_iter()
        .filter_map(|d| serde_json::from_value::<FolderCache>(Value::Object(d)).ok())
        .map(|c| (c.folder.clone(), c))
        .collect())
}

/// A message seen by a folder scan.
#[derive(Debug, Clone)]
struct Entry {
    uid: u32,
    seen: bool,
    size: u32,
    /// Known from the cache, read from the headers, or learnt when the body is fetched.
    key: Option<String>,
    /// The message has no Message-ID: its key comes from its bytes.
    needs_body_for_key: bool,
}

enum Job {
    Scan { folder: Folder, cache: Option<Arc<FolderCache>> },
    Fetch { folder: String, uids: Vec<u32> },
}

impl Job {
    fn folder(&self) -> &str {
        match self {
            Job::Scan { folder, .. } => &folder.name,
            Job::Fetch { folder, .. } => folder,
        }
    }
}

enum Outcome {
    Scanned { folder: Folder, uidvalidity: u32, uidnext: u32, entries: Vec<Entry>, retries: usize },
    Fetched { folder: String, keys: Vec<(u32, String)>, retries: usize },
    Failed { folder: String, error: String, retries: usize },
    LoginRefused(String),
}

enum JobError {
    Imap(String),
    Refused(String),
    Store(String),
}

impl From<imap::Error> for JobError {
    fn from(e: imap::Error) -> JobError {
        JobError::Imap(e.to_string())
    }
}

/// One connection's thread: serves jobs until the queue closes, reconnecting after a failure.
fn worker(account: &ImapAccount, password: &Password, store: &dyn Store, jobs: Receiver<Job>, out: Sender<Outcome>) {
    // The open session and the folder it has examined.
    let mut conn: Option<(Session, Option<String>)> = None;
    for job in jobs.iter() {
        let mut retries = 0usize;
        let outcome = loop {
            match attempt(account, password, store, &mut conn, &job) {
                Ok(mut o) => {
                    match &mut o {
                        Outcome::Scanned { retries: r, .. } | Outcome::Fetched { retries: r, .. } => *r = retries,
                        _ => {}
                    }
                    break o;
                }
                Err(JobError::Refused(reason)) => break Outcome::LoginRefused(reason),
                Err(JobError::Store(error)) => break Outcome::Failed { folder: job.folder().to_string(), error, retries },
                Err(JobError::Imap(error)) => {
                    // A server that knows the password may put it in any answer.
                    let error = password.redact(&error);
                    conn = None;
                    retries += 1;
                    if retries as u32 >= JOB_TRIES {
                        break Outcome::Failed { folder: job.folder().to_string(), error, retries };
                    }
                    tracing::warn!(account = %account.id, folder = %job.folder(), %error, "IMAP connection lost; reconnecting");
                    std::thread::sleep(Duration::from_millis(250 << retries));
                }
            }
        };
        if out.send(outcome).is_err() {
            break;
        }
    }
    if let Some((mut session, _)) = conn {
        let _ = session.logout();
    }
}

fn attempt(
    account: &ImapAccount,
    password: &Password,
    store: &dyn Store,
    conn: &mut Option<(Session, Option<String>)>,
    job: &Job,
) -> Result<Outcome, JobError> {
    let (session, examined) = match conn {
        Some(open) => open,
        None => {
            let session = connect(account, password).map_err(|e| match e {
                ConnectError::Refused(r) => JobError::Refused(r),
                ConnectError::Failed(r) => JobError::Imap(r),
            })?;
            conn.insert((session, None))
        }
    };
    match job {
        Job::Scan { folder, cache } => {
            *examined = None;
            let mailbox = session.examine(&folder.name)?;
            *examined = Some(folder.name.clone());
            let (entries, uidvalidity) = scan(session, &mailbox, cache.as_deref())?;
            Ok(Outcome::Scanned { folder: folder.clone(), uidvalidity, uidnext: mailbox.uid_next.unwrap_or(0), entries, retries: 0 })
        }
        Job::Fetch { folder, uids } => {
            if examined.as_deref() != Some(folder.as_str()) {
                *examined = None;
                session.examine(folder)?;
                *examined = Some(folder.clone());
            }
            let fetches = session.uid_fetch(uid_set(uids), "(UID BODY.PEEK[])")?;
            let mut items = Vec::new();
            let mut keys = Vec::new();
            for f in fetches.iter() {
                let (Some(uid), Some(body)) = (f.uid, f.body()) else { continue };
                if !uids.contains(&uid) {
                    continue;
                }
                keys.push((uid, message_key(body)));
                items.push(rfc822_item(body, EXT_ID));
            }
            drop(fetches);
            for r in ingest::add_schemas(store, items, Durability::Immediate).map_err(|e| JobError::Store(e.to_string()))? {
                match r {
                    WriteResult::Ok { .. } | WriteResult::Conflict { .. } => {} // a conflict: the same message, stored by a concurrent writer
                    WriteResult::Error { id, reason } => return Err(JobError::Store(format!("{id}: {reason}"))),
                }
            }
            Ok(Outcome::Fetched { folder: folder.clone(), keys, retries: 0 })
        }
    }
}

/// UIDs, flags and sizes of everything in the examined folder; Message-IDs of what the cache
/// does not know.
fn scan(session: &mut Session, mailbox: &imap::types::Mailbox, cache: Option<&FolderCache>) -> Result<(Vec<Entry>, u32), JobError> {
    let uidvalidity = mailbox.uid_validity.unwrap_or(0);
    let mut entries = Vec::new();
    if mailbox.exists > 0 {
        let fetches = session.uid_fetch("1:*", "(UID FLAGS RFC822.SIZE)")?;
        for f in fetches.iter() {
            let Some(uid) = f.uid else { continue };
            if f.flags().iter().any(|x| matches!(x, Flag::Deleted)) {
                continue;
            }
            let seen = f.flags().iter().any(|x| matches!(x, Flag::Seen));
            entries.push(Entry { uid, seen, size: f.size.unwrap_or(0), key: None, needs_body_for_key: false });
        }
    }
    let known: HashMap<u32, &str> = match cache {
        Some(c) if c.uidvalidity == uidvalidity => c.messages.iter().map(|(uid, key, _)| (*uid, key.as_str())).collect(),
        _ => HashMap::new(),
    };
    let mut unknown = Vec::new();
    for e in entries.iter_mut() {
        match known.get(&e.uid) {
            Some(k) => e.key = Some(k.to_string()),
            None => unknown.push(e.uid),
        }
    }
    let mut ids: HashMap<u32, Option<String>> = HashMap::new();
    for batch in unknown.chunks(HEADER_BATCH) {
        let fetches = session.uid_fetch(uid_set(batch), "(UID BODY.PEEK[HEADER])")?;
        for f in fetches.iter() {
            if let (Some(uid), Some(header)) = (f.uid, f.header()) {
                ids.insert(uid, message_id(header));
            }
        }
    }
    for e in entries.iter_mut().filter(|e| e.key.is_none()) {
        match ids.remove(&e.uid).flatten() {
            Some(id) => e.key = Some(id),
            None => e.needs_body_for_key = true,
        }
    }
    Ok((entries, uidvalidity))
}

/// `1:3,7,9:10` for sorted or unsorted UIDs.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// A folder's progress during a sync.
struct FolderState {
    folder: Folder,
    uidvalidity: u32,
    uidnext: u32,
    entries: BTreeMap<u32, Entry>,
    failed: Option<String>,
}

/// Syncs one account once. `progress` gets a line per folder.
pub fn sync_account(store: &dyn Store, account: &ImapAccount, progress: &mut dyn FnMut(&str)) -> Result<SyncReport, SyncError> {
    account.validate()?;
    let password = account.password()?;
    let store_error = |e: StoreError| SyncError::Store { account: account.id.clone(), source: e };
    let mut lister = connect(account, &password).map_err(|e| match e {
        ConnectError::Refused(reason) => SyncError::Login {
            account: account.id.clone(),
            server: account.server(),
            user: account.username.clone(),
            reason,
        },
        ConnectError::Failed(reason) => SyncError::Connect { account: account.id.clone(), server: account.server(), reason },
    })?;
    let folders = list_folders(&mut lister, account)
        .map_err(|e| SyncError::Connect { account: account.id.clone(), server: account.server(), reason: password.redact(&e.to_string()) })?;
    let _ = lister.logout();
    let caches = load_caches(store, &account.id).map_err(store_error)?;

    let (job_tx, job_rx) = unbounded::<Job>();
    let (out_tx, out_rx) = unbounded::<Outcome>();
    let mut report = SyncReport { folders: folders.len(), ..SyncReport::default() };
    let mut states: BTreeMap<String, FolderState> = BTreeMap::new();
    let mut refused: Option<String> = None;

    std::thread::scope(|scope| -> Result<(), SyncError> {
        for _ in 0..account.connections().min(folders.len().max(1)) {
            let (jobs, out, password) = (job_rx.clone(), out_tx.clone(), &password);
            scope.spawn(move || worker(account, password, store, jobs, out));
        }
        drop(out_tx);
        let mut pending = 0usize;
        for folder in &folders {
            let cache = caches.get(&folder.name).cloned().map(Arc::new);
            let _ = job_tx.send(Job::Scan { folder: folder.clone(), cache });
            pending += 1;
        }
        // Message keys some fetch job of this sync will store: another folder need not.
        let mut scheduled: HashSet<String> = HashSet::new();
        while pending > 0 {
            let Ok(outcome) = out_rx.recv() else { break };
            pending -= 1;
            match outcome {
                Outcome::Scanned { folder, uidvalidity, uidnext, entries, retries } => {
                    report.retries += retries;
                    let to_fetch = plan_fetches(store, &entries, &mut scheduled, &mut report).map_err(store_error)?;
                    for uids in to_fetch {
                        let _ = job_tx.send(Job::Fetch { folder: folder.name.clone(), uids });
                        pending += 1;
                    }
                    let entries = entries.into_iter().map(|e| (e.uid, e)).collect();
                    states.insert(folder.name.clone(), FolderState { folder, uidvalidity, uidnext, entries, failed: None });
                }
                Outcome::Fetched { folder, keys, retries } => {
                    report.retries += retries;
                    report.fetched += keys.len();
                    if let Some(state) = states.get_mut(&folder) {
                        for (uid, key) in keys {
                            if let Some(e) = state.entries.get_mut(&uid) {
                                e.key = Some(key);
                                e.needs_body_for_key = false;
                            }
                        }
                    }
                }
                Outcome::Failed { folder, error, retries } => {
                    report.retries += retries;
                    tracing::warn!(account = %account.id, %folder, %error, "folder not synced");
                    mark_failed(&mut states, &folders, &folder, error);
                }
                Outcome::LoginRefused(reason) => {
                    refused.get_or_insert(reason);
                }
            }
        }
        drop(job_tx);
        Ok(())
    })?;
    if let Some(reason) = refused {
        return Err(SyncError::Login { account: account.id.clone(), server: account.server(), user: account.username.clone(), reason });
    }

    // A fetched UID that the server no longer had leaves its entry without a key: it is gone.
    for state in states.values_mut() {
        if state.failed.is_none() {
            state.entries.retain(|_, e| e.key.is_some() && !e.needs_body_for_key);
        }
    }
    for state in states.values() {
        let line = match &state.failed {
            Some(error) => format!("{}: not synced ({error}); it resumes on the next sync", state.folder.name),
            None => format!("{}: {} message(s)", state.folder.name, state.entries.len()),
        };
        progress(&line);
    }
    report.messages = states.values().filter(|s| s.failed.is_none()).map(|s| s.entries.len()).sum();
    write_results(store, account, &folders, &states, &caches)
        .map_err(|source| SyncError::Store { account: account.id.clone(), source })?;
    let failed: Vec<&FolderState> = states.values().filter(|s| s.failed.is_some()).collect();
    let unscanned = folders.iter().filter(|f| !states.contains_key(&f.name)).count();
    if !failed.is_empty() || unscanned > 0 {
        let first = failed.first().map(|s| format!("{}: {}", s.folder.name, s.failed.as_deref().unwrap_or_default())).unwrap_or_default();
        return Err(SyncError::Folders { account: account.id.clone(), failed: failed.len() + unscanned, first });
    }
    Ok(report)
}

fn mark_failed(states: &mut BTreeMap<String, FolderState>, folders: &[Folder], name: &str, error: String) {
    let state = states.entry(name.to_string()).or_insert_with(|| FolderState {
        folder: folders.iter().find(|f| f.name == name).cloned().unwrap_or(Folder { name: name.to_string(), delim: None }),
        uidvalidity: 0,
        uidnext: 0,
        entries: BTreeMap::new(),
        failed: None,
    });
    state.failed.get_or_insert(error);
}

/// Which new messages need their bodies fetched, in chunks of ≤ 30 messages or ≤ 500 KB.
fn plan_fetches(
    store: &dyn Store,
    entries: &[Entry],
    scheduled: &mut HashSet<String>,
    report: &mut SyncReport,
) -> Result<Vec<Vec<u32>>, StoreError> {
    let new_with_id: Vec<&Entry> = entries.iter().filter(|e| e.key.is_some()).collect();
    let mut wanted: Vec<&Entry> = entries.iter().filter(|e| e.needs_body_for_key).collect();
    for batch in new_with_id.chunks(500) {
        let ids: Vec<String> = batch
            .iter()
            .filter_map(|e| model::doc_id(&json!(["email", e.key.as_deref().unwrap_or_default()]), "rd.msg.rfc822").ok())
            .collect();
        let docs = store.get_docs(&ids)?;
        for (e, doc) in batch.iter().zip(docs) {
            let key = e.key.as_deref().unwrap_or_default();
            if doc.is_some() || scheduled.contains(key) {
                continue;
            }
            scheduled.insert(key.to_string());
            wanted.push(e);
        }
    }
    // Only the UIDs that were new to the cache can be missing; count those that were not.
    report.already_stored += entries.len().saturating_sub(wanted.len());
    let mut chunks = Vec::new();
    let (mut chunk, mut bytes) = (Vec::new(), 0u64);
    for e in wanted {
        if !chunk.is_empty() && (chunk.len() >= CHUNK_MESSAGES || bytes + e.size as u64 > CHUNK_BYTES) {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        chunk.push(e.uid);
        bytes += e.size as u64;
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// Writes locations and `\Seen` flags for every message this account touches, then the folder
/// caches. Unchanged documents are not rewritten.
fn write_results(
    store: &dyn Store,
    account: &ImapAccount,
    folders: &[Folder],
    states: &BTreeMap<String, FolderState>,
    caches: &HashMap<String, FolderCache>,
) -> Result<(), StoreError> {
    // Each folder's messages as they now stand: synced folders from this sync, failed ones from
    // their old cache, folders gone from the list not at all.
    let mut current: BTreeMap<&str, (Option<&str>, Vec<(u32, &str, bool)>)> = BTreeMap::new();
    for folder in folders {
        match states.get(&folder.name) {
            Some(s) if s.failed.is_none() => {
                let msgs = s.entries.values().filter_map(|e| e.key.as_deref().map(|k| (e.uid, k, e.seen))).collect();
                current.insert(&folder.name, (folder.delim.as_deref(), msgs));
            }
            _ => {
                if let Some(c) = caches.get(&folder.name) {
                    let msgs = c.messages.iter().map(|(u, k, s)| (*u, k.as_str(), *s)).collect();
                    current.insert(&folder.name, (folder.delim.as_deref(), msgs));
                }
            }
        }
    }
    let mut locations: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
    for (folder, (delim, msgs)) in &current {
        for (uid, key, is_seen) in msgs {
            locations.entry(key).or_default().push(json!({
                "account": account.id, "folder_name": folder, "folder_delim": delim, "uid": uid,
            }));
            *seen.entry(key).or_default() |= *is_seen;
        }
    }
    // Only messages whose (folder, uid, seen) differ from what the caches recorded after the
    // last complete sync need their documents read and written — a steady-state re-sync reads
    // none. A message that was here before and is in no folder now differs too: it loses this
    // account's locations.
    let mut before: BTreeMap<&str, Vec<(&str, u32, bool)>> = BTreeMap::new();
    for c in caches.values() {
        for (uid, key, seen) in &c.messages {
            before.entry(key).or_default().push((&c.folder, *uid, *seen));
        }
    }
    let mut after: BTreeMap<&str, Vec<(&str, u32, bool)>> = BTreeMap::new();
    for (folder, (_, msgs)) in &current {
        for (uid, key, seen) in msgs {
            after.entry(key).or_default().push((folder, *uid, *seen));
        }
    }
    for list in before.values_mut().chain(after.values_mut()) {
        list.sort_unstable();
    }
    let touched: Vec<&str> = before
        .keys()
        .chain(after.keys())
        .copied()
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .filter(|k| before.get(k) != after.get(k))
        .collect();
    for batch in touched.chunks(500) {
        let ids: Vec<String> = batch
            .iter()
            .filter_map(|k| model::doc_id(&json!(["email", k]), "rd.msg.imap-locations").ok())
            .collect();
        let existing = store.get_docs(&ids)?;
        let mut items = Vec::new();
        for (key, doc) in batch.iter().zip(existing) {
            let mut all: Vec<Value> = doc
                .as_ref()
                .and_then(|d| d.get("locations"))
                .and_then(Value::as_array)
                .map(|l| l.iter().filter(|x| x.get("account").and_then(Value::as_str) != Some(&account.id)).cloned().collect())
                .unwrap_or_default();
            all.extend(locations.get(key).cloned().unwrap_or_default());
            if doc.is_none() && all.is_empty() {
                continue;
            }
            items.push(item(json!(["email", key]), "rd.msg.imap-locations", json!({ "locations": all })));
            if let Some(s) = seen.get(key) {
                items.push(item(json!(["email", key]), "rd.msg.seen", json!({ "seen": s, "outgoing_state": "incoming" })));
            }
        }
        check(ingest::add_schemas(store, items, Durability::Immediate)?)?;
    }
    // The caches last: they record that everything above is done.
    let mut items = Vec::new();
    for folder in folders {
        if let Some(s) = states.get(&folder.name).filter(|s| s.failed.is_none()) {
            let cache = FolderCache {
                account: account.id.clone(),
                folder: folder.name.clone(),
                delim: folder.delim.clone(),
                uidvalidity: s.uidvalidity,
                uidnext: s.uidnext,
                messages: s.entries.values().filter_map(|e| e.key.clone().map(|k| (e.uid, k, e.seen))).collect(),
            };
            items.push(cache_item(&cache));
        }
    }
    for (name, old) in caches {
        if !folders.iter().any(|f| &f.name == name) && !old.messages.is_empty() {
            items.push(cache_item(&FolderCache { messages: Vec::new(), ..old.clone() }));
        }
    }
    check(ingest::add_schemas(store, items, Durability::Immediate)?)
}

fn cache_item(cache: &FolderCache) -> Map<String, Value> {
    let fields = serde_json::to_value(cache).unwrap_or_default();
    item(json!(["imap-mailbox", [cache.account, cache.folder]]), "rd.imap.mailbox-cache", fields)
}

fn item(rd_key: Value, schema: &str, fields: Value) -> Map<String, Value> {
    let mut m = fields.as_object().cloned().unwrap_or_default();
    m.insert("rd_key".into(), rd_key);
    m.insert("rd_schema_id".into(), json!(schema));
    m.insert("rd_ext_id".into(), json!(EXT_ID));
    m
}

fn check(results: Vec<WriteResult>) -> Result<(), StoreError> {
    for r in results {
        match r {
            WriteResult::Ok { .. } => {}
            WriteResult::Conflict { id } => return Err(StoreError::Conflict { id }.into()),
            WriteResult::Error { id, reason } => return Err(StoreError::BadRequest(format!("{id}: {reason}")).into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 10, 7]), "1:3,5,7,9:10");
        assert_eq!(uid_set(&[4]), "4");
    }

    #[test]
    fn plain_is_only_for_loopback_and_passwords_never_print() {
        let mut a: ImapAccount = toml::from_str(
            "id = \"a\"\nhost = \"mail.example.com\"\nusername = \"me\"\nsecurity = \"plain\"\npassword_env = \"RD_TEST_NO_SUCH_VAR\"",
        )
        .unwrap();
        assert!(a.validate().unwrap_err().to_string().contains("loopback"));
        a.host = "127.0.0.1".into();
        assert!(a.validate().is_ok());
        assert!(a.password().unwrap_err().to_string().contains("RD_TEST_NO_SUCH_VAR"));
        assert_eq!(format!("{:?}", Password("hunter2".into())), "Password(<redacted>)");
    }
}
