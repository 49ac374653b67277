//! The connections' work: a job scans a folder or fetches a chunk of bodies (written as soon as
//! they arrive); a lost connection is reconnected and the job tried again, a bounded number of
//! times.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::folders::{scan, uid_set, Entry, Folder, FolderCache};
use super::session::{connect, ConnectError, Session};
use super::{ImapAccount, Password, EXT_ID};
use crate::ingest;
use crate::mail::import::{message_key, rfc822_item};
use crate::store::{Durability, Store, WriteResult};

/// Tries per job before its folder is left for the next sync.
const JOB_TRIES: u32 = 4;

pub(super) enum Job {
    Scan { folder: Folder, cache: Option<Arc<FolderCache>> },
    Fetch { folder: String, uids: Vec<u32> },
}

impl Job {
    pub(super) fn folder(&self) -> &str {
        match self {
            Job::Scan { folder, .. } => &folder.name,
            Job::Fetch { folder, .. } => folder,
        }
    }
}

pub(super) enum Outcome {
    Scanned { folder: Folder, uidvalidity: u32, uidnext: u32, entries: Vec<Entry>, retries: usize },
    Fetched { folder: String, keys: Vec<(u32, String)>, retries: usize },
    Failed { folder: String, error: String, retries: usize },
    LoginRefused(String),
}

pub(super) enum JobError {
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
pub(super) fn worker(account: &ImapAccount, password: &Password, store: &dyn Store, jobs: Receiver<Job>, out: Sender<Outcome>) {
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
