//! What a sync writes, in the order that makes it resumable: the locations and `\\Seen` flags
//! of every message the account touches, then — last — the folder caches.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use super::folders::{Folder, FolderCache};
use super::sync::FolderState;
use super::{ImapAccount, EXT_ID};
use crate::store::{Durability, Store, StoreError, WriteResult};
use crate::{ingest, model};

/// Writes locations and `\Seen` flags for every message this account touches, then the folder
/// caches. Unchanged documents are not rewritten.
/// A folder's delimiter and its messages — (uid, message key, seen) — as they now stand.
type FolderNow<'a> = (Option<&'a str>, Vec<(u32, &'a str, bool)>);

/// Writes locations and `\\Seen` flags for every message this account touches, then the folder
/// caches. Unchanged documents are not rewritten.
pub(super) fn write_results(
    store: &dyn Store,
    account: &ImapAccount,
    folders: &[Folder],
    states: &BTreeMap<String, FolderState>,
    caches: &HashMap<String, FolderCache>,
) -> Result<(), StoreError> {
    let current = folders_now(folders, states, caches);
    let now = locations_now(account, &current);
    for batch in touched(&current, caches).chunks(500) {
        write_locations(store, account, &now, batch)?;
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

/// Each folder's messages as they now stand: synced folders from this sync, failed ones from
/// their old cache, folders gone from the list not at all.
fn folders_now<'a>(
    folders: &'a [Folder],
    states: &'a BTreeMap<String, FolderState>,
    caches: &'a HashMap<String, FolderCache>,
) -> BTreeMap<&'a str, FolderNow<'a>> {
    let mut current = BTreeMap::new();
    for folder in folders {
        match states.get(&folder.name) {
            Some(s) if s.failed.is_none() => {
                let msgs = s.entries.values().filter_map(|e| e.key.as_deref().map(|k| (e.uid, k, e.seen))).collect();
                current.insert(folder.name.as_str(), (folder.delim.as_deref(), msgs));
            }
            _ => {
                if let Some(c) = caches.get(&folder.name) {
                    let msgs = c.messages.iter().map(|(u, k, s)| (*u, k.as_str(), *s)).collect();
                    current.insert(folder.name.as_str(), (folder.delim.as_deref(), msgs));
                }
            }
        }
    }
    current
}

/// The messages whose (folder, uid, seen) differ from what the caches recorded after the last
/// complete sync: only those need their documents read and written — a steady-state re-sync
/// reads none. A message that was here before and is in no folder now differs too: it loses
/// this account's locations.
fn touched<'a>(current: &BTreeMap<&'a str, FolderNow<'a>>, caches: &'a HashMap<String, FolderCache>) -> Vec<&'a str> {
    let mut before: BTreeMap<&str, Vec<(&str, u32, bool)>> = BTreeMap::new();
    for c in caches.values() {
        for (uid, key, seen) in &c.messages {
            before.entry(key).or_default().push((&c.folder, *uid, *seen));
        }
    }
    let mut after: BTreeMap<&str, Vec<(&str, u32, bool)>> = BTreeMap::new();
    for (folder, (_, msgs)) in current {
        for (uid, key, seen) in msgs {
            after.entry(key).or_default().push((folder, *uid, *seen));
        }
    }
    for list in before.values_mut().chain(after.values_mut()) {
        list.sort_unstable();
    }
    let keys: BTreeSet<&str> = before.keys().chain(after.keys()).copied().collect();
    keys.into_iter().filter(|k| before.get(k) != after.get(k)).collect()
}

/// Per message key, this account's locations of it and whether it is `\\Seen` in any.
struct LocationsNow<'a> {
    locations: BTreeMap<&'a str, Vec<Value>>,
    seen: BTreeMap<&'a str, bool>,
}

fn locations_now<'a>(account: &ImapAccount, current: &BTreeMap<&'a str, FolderNow<'a>>) -> LocationsNow<'a> {
    let mut now = LocationsNow { locations: BTreeMap::new(), seen: BTreeMap::new() };
    for (folder, (delim, msgs)) in current {
        for (uid, key, is_seen) in msgs {
            now.locations.entry(key).or_default().push(json!({
                "account": account.id, "folder_name": folder, "folder_delim": delim, "uid": uid,
            }));
            *now.seen.entry(key).or_default() |= *is_seen;
        }
    }
    now
}

/// Writes the locations (this account's, beside other accounts') and `\\Seen` flags of the
/// messages with keys `batch`.
fn write_locations(store: &dyn Store, account: &ImapAccount, now: &LocationsNow<'_>, batch: &[&str]) -> Result<(), StoreError> {
    let ids: Vec<String> = batch.iter().filter_map(|k| model::doc_id(&json!(["email", k]), "rd.msg.imap-locations").ok()).collect();
    let existing = store.get_docs(&ids)?;
    let mut items = Vec::new();
    for (key, doc) in batch.iter().zip(existing) {
        let mut all: Vec<Value> = doc
            .as_ref()
            .and_then(|d| d.get("locations"))
            .and_then(Value::as_array)
            .map(|l| l.iter().filter(|x| x.get("account").and_then(Value::as_str) != Some(&account.id)).cloned().collect())
            .unwrap_or_default();
        all.extend(now.locations.get(key).cloned().unwrap_or_default());
        if doc.is_none() && all.is_empty() {
            continue;
        }
        items.push(item(json!(["email", key]), "rd.msg.imap-locations", json!({ "locations": all })));
        if let Some(s) = now.seen.get(key) {
            items.push(item(json!(["email", key]), "rd.msg.seen", json!({ "seen": s, "outgoing_state": "incoming" })));
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
            WriteResult::Conflict { id } => return Err(StoreError::Conflict { id }),
            WriteResult::Error { id, reason } => return Err(StoreError::BadRequest(format!("{id}: {reason}"))),
        }
    }
    Ok(())
}
