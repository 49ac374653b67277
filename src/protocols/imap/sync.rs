//! One sync of one account: list the folders, serve the jobs over up to `connections`
//! connections, plan the fetches as the scans come back, then write what was learnt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crossbeam_channel::unbounded;
use serde_json::json;

use super::documents::write_results;
use super::folders::{list_folders, load_caches, Entry, Folder, FolderCache};
use super::jobs::{worker, Job, Outcome};
use super::session::{connect, ConnectError};
use super::{ImapAccount, Password, SyncError, SyncReport};
use crate::model;
use crate::store::{Store, StoreError};

const CHUNK_MESSAGES: usize = 30;
const CHUNK_BYTES: u64 = 500 * 1024;

/// A folder's progress during a sync.
pub(super) struct FolderState {
    pub(super) folder: Folder,
    pub(super) uidvalidity: u32,
    pub(super) uidnext: u32,
    pub(super) entries: BTreeMap<u32, Entry>,
    pub(super) failed: Option<String>,
}

/// Syncs one account once. `progress` gets a line per folder.
pub fn sync_account(store: &dyn Store, account: &ImapAccount, progress: &mut dyn FnMut(&str)) -> Result<SyncReport, SyncError> {
    account.validate()?;
    let password = account.password()?;
    let store_error = |e: StoreError| SyncError::Store { account: account.id.clone(), source: e };
    let mut lister = connect(account, &password).map_err(|e| match e {
        ConnectError::Refused(reason) => {
            SyncError::Login { account: account.id.clone(), server: account.server(), user: account.username.clone(), reason }
        }
        ConnectError::Failed(reason) => SyncError::Connect { account: account.id.clone(), server: account.server(), reason },
    })?;
    let folders = list_folders(&mut lister, account).map_err(|e| SyncError::Connect {
        account: account.id.clone(),
        server: account.server(),
        reason: password.redact(&e.to_string()),
    })?;
    let _ = lister.logout();
    let caches = load_caches(store, &account.id).map_err(store_error)?;
    let mut sync = Sync {
        store,
        account,
        folders: &folders,
        report: SyncReport { folders: folders.len(), ..SyncReport::default() },
        states: BTreeMap::new(),
        refused: None,
    };
    sync.serve(&password, &caches).map_err(store_error)?;
    let Sync { mut report, mut states, refused, .. } = sync;
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
    write_results(store, account, &folders, &states, &caches).map_err(store_error)?;
    let failed: Vec<&FolderState> = states.values().filter(|s| s.failed.is_some()).collect();
    let unscanned = folders.iter().filter(|f| !states.contains_key(&f.name)).count();
    if !failed.is_empty() || unscanned > 0 {
        let first = failed.first().map(|s| format!("{}: {}", s.folder.name, s.failed.as_deref().unwrap_or_default())).unwrap_or_default();
        return Err(SyncError::Folders { account: account.id.clone(), failed: failed.len() + unscanned, first });
    }
    Ok(report)
}

/// One sync under way: what its jobs have found so far.
struct Sync<'a> {
    store: &'a dyn Store,
    account: &'a ImapAccount,
    folders: &'a [Folder],
    report: SyncReport,
    states: BTreeMap<String, FolderState>,
    /// The server refused the login of some connection.
    refused: Option<String>,
}

impl Sync<'_> {
    /// Scans every folder and fetches what is missing over up to `connections` connections,
    /// planning the fetches of a folder as its scan comes back.
    fn serve(&mut self, password: &Password, caches: &HashMap<String, FolderCache>) -> Result<(), StoreError> {
        let (job_tx, job_rx) = unbounded::<Job>();
        let (out_tx, out_rx) = unbounded::<Outcome>();
        let (account, store) = (self.account, self.store);
        std::thread::scope(|scope| {
            for _ in 0..account.connections().min(self.folders.len().max(1)) {
                let (jobs, out) = (job_rx.clone(), out_tx.clone());
                scope.spawn(move || worker(account, password, store, jobs, out));
            }
            drop(out_tx);
            let mut pending = 0usize;
            for folder in self.folders {
                let cache = caches.get(&folder.name).cloned().map(Arc::new);
                let _ = job_tx.send(Job::Scan { folder: folder.clone(), cache });
                pending += 1;
            }
            // Message keys some fetch job of this sync will store: another folder need not.
            let mut scheduled: HashSet<String> = HashSet::new();
            while pending > 0 {
                let Ok(outcome) = out_rx.recv() else { break };
                pending -= 1;
                for job in self.take(outcome, &mut scheduled)? {
                    let _ = job_tx.send(job);
                    pending += 1;
                }
            }
            drop(job_tx);
            Ok(())
        })
    }

    /// Takes in one job's outcome; returns the jobs it leads to (a scanned folder's fetches).
    fn take(&mut self, outcome: Outcome, scheduled: &mut HashSet<String>) -> Result<Vec<Job>, StoreError> {
        match outcome {
            Outcome::Scanned { folder, uidvalidity, uidnext, entries, retries } => {
                self.report.retries += retries;
                let to_fetch = plan_fetches(self.store, &entries, scheduled, &mut self.report)?;
                let jobs = to_fetch.into_iter().map(|uids| Job::Fetch { folder: folder.name.clone(), uids }).collect();
                let entries = entries.into_iter().map(|e| (e.uid, e)).collect();
                self.states.insert(folder.name.clone(), FolderState { folder, uidvalidity, uidnext, entries, failed: None });
                return Ok(jobs);
            }
            Outcome::Fetched { folder, keys, retries } => {
                self.report.retries += retries;
                self.report.fetched += keys.len();
                if let Some(state) = self.states.get_mut(&folder) {
                    for (uid, key) in keys {
                        if let Some(e) = state.entries.get_mut(&uid) {
                            e.key = Some(key);
                            e.needs_body_for_key = false;
                        }
                    }
                }
            }
            Outcome::Failed { folder, error, retries } => {
                self.report.retries += retries;
                tracing::warn!(account = %self.account.id, %folder, %error, "folder not synced");
                mark_failed(&mut self.states, self.folders, &folder, error);
            }
            Outcome::LoginRefused(reason) => {
                self.refused.get_or_insert(reason);
            }
        }
        Ok(Vec::new())
    }
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
