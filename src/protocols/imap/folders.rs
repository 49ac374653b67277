//! Folders: which to sync and in what order, what Raindrop knew of each after its last
//! complete sync (its cache document), and scanning one (UIDs, flags, sizes, Message-IDs).

use std::collections::HashMap;

use imap::types::Flag;
use imap_proto::NameAttribute;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::jobs::JobError;
use super::session::Session;
use super::ImapAccount;
use crate::mail::import::message_id;
use crate::store::{Store, StoreError};

/// Header fetches for Message-IDs, per command.
const HEADER_BATCH: usize = 200;

/// A folder to sync.
#[derive(Debug, Clone)]
pub(super) struct Folder {
    pub(super) name: String,
    pub(super) delim: Option<String>,
}

/// Lists the folders worth syncing, in the order to sync them.
pub(super) fn list_folders(session: &mut Session, account: &ImapAccount) -> imap::error::Result<Vec<Folder>> {
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
        let has_special_use = attrs
            .iter()
            .any(|a| matches!(a, NameAttribute::Sent | NameAttribute::Drafts | NameAttribute::Archive | NameAttribute::Flagged));
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
pub(super) struct FolderCache {
    pub(super) account: String,
    pub(super) folder: String,
    #[serde(default)]
    pub(super) delim: Option<String>,
    pub(super) uidvalidity: u32,
    pub(super) uidnext: u32,
    /// `[uid, message key, seen]` of every message in the folder.
    pub(super) messages: Vec<(u32, String, bool)>,
}

pub(super) fn load_caches(store: &dyn Store, account: &str) -> Result<HashMap<String, FolderCache>, StoreError> {
    let docs = store.find_docs("rd.imap.mailbox-cache", Some(("account", &json!(account))), usize::MAX)?;
    Ok(docs
        .into_iter()
        .filter_map(|d| serde_json::from_value::<FolderCache>(Value::Object(d)).ok())
        .map(|c| (c.folder.clone(), c))
        .collect())
}

/// A message seen by a folder scan.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) uid: u32,
    pub(super) seen: bool,
    pub(super) size: u32,
    /// Known from the cache, read from the headers, or learnt when the body is fetched.
    pub(super) key: Option<String>,
    /// The message has no Message-ID: its key comes from its bytes.
    pub(super) needs_body_for_key: bool,
}

/// UIDs, flags and sizes of everything in the examined folder; Message-IDs of what the cache
/// does not know.
pub(super) fn scan(
    session: &mut Session,
    mailbox: &imap::types::Mailbox,
    cache: Option<&FolderCache>,
) -> Result<(Vec<Entry>, u32), JobError> {
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
pub(super) fn uid_set(uids: &[u32]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 10, 7]), "1:3,5,7,9:10");
        assert_eq!(uid_set(&[4]), "4");
    }
}
