//! Reading messages from files: `.eml` files, mbox files and Maildir folders. A folder is
//! walked; a file that starts like an mbox ("From ") is split into its messages; any other file
//! is one message, whatever its name.
//!
//! A message in a Maildir (a file in the `cur/` or `new/` of a folder that has both) also
//! tells its folder and whether it was read: `new/` is unread, `cur/` is read when its flags
//! (`…:2,FRS`) hold `S`. The folder is the Maildir's name — a Maildir++ subfolder's without its
//! dot (`.Lists.rust` is `Lists.rust`), and `INBOX` for a Maildir++ root or one named
//! `Maildir`. [`place_items`] makes documents of them.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use mailparse::MailHeaderMap;
use serde_json::{json, Map, Value};

/// One message found on disk, as raw bytes with where it came from.
pub struct FoundMessage {
    pub origin: String,
    pub bytes: Vec<u8>,
    /// Its folder and read state, when it came from a Maildir.
    pub maildir: Option<MaildirPlace>,
}

/// Where a Maildir keeps a message.
#[derive(Debug, Clone, PartialEq)]
pub struct MaildirPlace {
    pub folder: String,
    pub seen: bool,
}

/// A file or folder an import could not read, and why.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Every message under `path` (sorted by file name, so imports are repeatable). What cannot be
/// read — a file without permission, a folder reached again through a symbolic link loop — is
/// listed in `skipped` and the walk goes on: one bad file does not stop a mailbox's import.
pub fn read_messages(path: &Path, out: &mut Vec<FoundMessage>, skipped: &mut Vec<Unreadable>) {
    walk(path, out, skipped, &mut std::collections::HashSet::new());
}

fn walk(path: &Path, out: &mut Vec<FoundMessage>, skipped: &mut Vec<Unreadable>, folders_read: &mut std::collections::HashSet<PathBuf>) {
    let mut skip = |error: std::io::Error| skipped.push(Unreadable { path: path.to_path_buf(), error });
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return skip(e),
    };
    if meta.is_dir() {
        // Each folder once, by its real path: a link back up the tree is not walked for ever.
        match std::fs::canonicalize(path) {
            Ok(real) if !folders_read.insert(real.clone()) => {
                return skip(std::io::Error::other(format!("{} was read already (a symbolic link loop?)", real.display())));
            }
            Ok(_) => {}
            Err(e) => return skip(e),
        }
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return skip(e),
        };
        entries.sort();
        for entry in entries {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Maildir's tmp/ holds messages still being written; dot-files are not messages,
            // but a dot-folder that is a Maildir is a Maildir++ subfolder.
            if (name.starts_with('.') && !is_maildir(&entry)) || (name == "tmp" && entry.is_dir()) {
                continue;
            }
            walk(&entry, out, skipped, folders_read);
        }
        return;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return skip(e),
    };
    let origin = path.display().to_string();
    let maildir = maildir_place(path);
    if maildir.is_none() && bytes.starts_with(b"From ") {
        for (i, message) in split_mbox(&bytes).into_iter().enumerate() {
            out.push(FoundMessage { origin: format!("{origin}#{}", i + 1), bytes: message, maildir: None });
        }
    } else if !bytes.is_empty() {
        out.push(FoundMessage { origin, bytes, maildir });
    }
}

fn is_maildir(dir: &Path) -> bool {
    dir.join("cur").is_dir() && dir.join("new").is_dir()
}

/// The folder and read state of a file in a Maildir's `cur/` or `new/`.
fn maildir_place(file: &Path) -> Option<MaildirPlace> {
    let sub = file.parent()?;
    let sub_name = sub.file_name()?.to_str()?;
    if sub_name != "cur" && sub_name != "new" {
        return None;
    }
    // Named by its real path: `raindrop import .` inside a Maildir names it too.
    let maildir = std::fs::canonicalize(sub.parent()?).ok()?;
    let maildir = maildir.as_path();
    if !is_maildir(maildir) {
        return None;
    }
    let seen = sub_name == "cur" && file.file_name()?.to_str()?.rsplit_once(":2,").is_some_and(|(_, flags)| flags.contains('S'));
    let name = maildir.file_name().and_then(|n| n.to_str()).unwrap_or("INBOX");
    let has_subfolders = std::fs::read_dir(maildir)
        .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with('.') && is_maildir(&e.path())))
        .unwrap_or(false);
    let folder = match name.strip_prefix('.') {
        Some(sub) if !sub.is_empty() => sub.to_string(),
        _ if has_subfolders || name.eq_ignore_ascii_case("maildir") || name.eq_ignore_ascii_case("inbox") => "INBOX".to_string(),
        _ => name.to_string(),
    };
    Some(MaildirPlace { folder, seen })
}

/// For the Maildir messages among `found`: per message (by key), `rd.msg.maildir-location`
/// (`folders`: every folder it was found in, sorted) and `rd.msg.seen` (read in any of them),
/// written by `ext_id`.
pub fn place_items(found: &[FoundMessage], ext_id: &str) -> Vec<Map<String, Value>> {
    let mut places: std::collections::BTreeMap<String, (std::collections::BTreeSet<String>, bool)> = Default::default();
    for m in found {
        if let Some(place) = &m.maildir {
            let entry = places.entry(message_key(&m.bytes)).or_default();
            entry.0.insert(place.folder.clone());
            entry.1 |= place.seen;
        }
    }
    let mut items = Vec::new();
    for (key, (folders, seen)) in places {
        for (schema, fields) in [
            ("rd.msg.maildir-location", json!({ "folders": folders })),
            ("rd.msg.seen", json!({ "seen": seen, "outgoing_state": "incoming" })),
        ] {
            let mut item = Map::new();
            item.insert("rd_key".into(), json!(["email", key]));
            item.insert("rd_schema_id".into(), json!(schema));
            item.insert("rd_ext_id".into(), json!(ext_id));
            if let Value::Object(f) = fields {
                item.extend(f);
            }
            items.push(item);
        }
    }
    items
}

/// Splits an mbox into messages: a line starting "From " begins one; ">From " lines are
/// unquoted (mboxrd).
pub(crate) fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                messages.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let unquoted = line.iter().position(|b| *b != b'>').filter(|&n| n > 0 && line[n..].starts_with(b"From "));
        match unquoted {
            Some(_) => m.extend_from_slice(&line[1..]),
            None => m.extend_from_slice(line),
        }
    }
    messages.extend(current);
    messages
}

/// The message's rd_key value: its Message-ID without `<>`, or — for a message without one —
/// an id derived from its bytes, so importing it twice gives the same document. Line endings
/// are normalised first: an IMAP server hands out CRLF what a file may hold with LF, and the
/// same message must get the same key either way.
pub fn message_key(bytes: &[u8]) -> String {
    message_id(bytes).unwrap_or_else(|| format!("{}@raindrop.invalid", content_digest(bytes)))
}

/// The digest of a message's bytes with its line endings normalised (CRLF as LF): the same
/// message from a server and from a file has the same digest.
pub fn content_digest(bytes: &[u8]) -> String {
    let mut lf = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
        lf.extend_from_slice(&rest[..i]);
        lf.push(b'\n');
        rest = &rest[i + 2..];
    }
    lf.extend_from_slice(rest);
    crate::digest::digest(&[&lf])
}

/// The Message-ID of a message (or of its header block alone) without `<>`, if it has one.
pub fn message_id(bytes: &[u8]) -> Option<String> {
    mailparse::parse_headers(&super::header_block(bytes)).ok().and_then(|(headers, _)| headers.get_first_value("Message-ID")).and_then(
        |v| {
            let v = v.trim().trim_start_matches('<').trim_end_matches('>').trim().to_string();
            (!v.is_empty()).then_some(v)
        },
    )
}

/// The raw schema item for a message: `rd.msg.rfc822` with the bytes as attachment `rfc822`,
/// written by `ext_id` (`proto.import`, `proto.imap`). Its `content_digest` settles which of
/// two different messages claiming one Message-ID is kept, whatever order they come in
/// (see `ingest::add_schemas`).
pub fn rfc822_item(bytes: &[u8], ext_id: &str) -> Map<String, Value> {
    let item = json!({
        "rd_key": ["email", message_key(bytes)],
        "rd_schema_id": "rd.msg.rfc822",
        "rd_ext_id": ext_id,
        "content_digest": content_digest(bytes),
        "_attachments": { "rfc822": {
            "content_type": "message/rfc822",
            "data": base64::engine::general_purpose::STANDARD.encode(bytes),
        }},
    });
    match item {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_is_split_and_unquoted() {
        let mbox =
            b"From a@b Sat Jan  1 00:00:00 2000\nSubject: one\n\n>From here\nbody\nFrom c@d Sat Jan  1 00:00:00 2000\nSubject: two\n\nx\n";
        let parts = split_mbox(mbox);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], b"Subject: one\n\nFrom here\nbody\n");
        assert_eq!(parts[1], b"Subject: two\n\nx\n");
    }

    #[test]
    fn maildir_folders_and_flags_are_read() {
        let root = std::env::temp_dir().join(format!("raindrop-maildir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in [
            "Maildir/cur",
            "Maildir/new",
            "Maildir/tmp",
            "Maildir/.Lists.rust/cur",
            "Maildir/.Lists.rust/new",
            "Mail/Sent/cur",
            "Mail/Sent/new",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let write = |path: &str, id: &str| std::fs::write(root.join(path), format!("Message-ID: <{id}>\nSubject: s\n\nx\n")).unwrap();
        write("Maildir/cur/1.host:2,S", "a@x");
        write("Maildir/new/2.host", "b@x");
        write("Maildir/.Lists.rust/cur/3.host:2,RF", "c@x");
        write("Maildir/.Lists.rust/cur/4.host:2,FS", "a@x");
        write("Maildir/tmp/5.host", "d@x");
        write("Mail/Sent/cur/6.host:2,S", "e@x");
        let (mut found, mut skipped) = (Vec::new(), Vec::new());
        read_messages(&root, &mut found, &mut skipped);
        let places: Vec<(String, Option<MaildirPlace>)> = found.iter().map(|m| (message_key(&m.bytes), m.maildir.clone())).collect();
        let place = |folder: &str, seen: bool| Some(MaildirPlace { folder: folder.into(), seen });
        assert_eq!(
            places,
            vec![
                ("e@x".to_string(), place("Sent", true)),
                ("c@x".to_string(), place("Lists.rust", false)),
                ("a@x".to_string(), place("Lists.rust", true)),
                ("a@x".to_string(), place("INBOX", true)),
                ("b@x".to_string(), place("INBOX", false)),
            ]
        );
        let items = place_items(&found, "proto.import");
        let a: Vec<&Map<String, Value>> = items.iter().filter(|i| i["rd_key"] == json!(["email", "a@x"])).collect();
        assert_eq!(a[0]["folders"], json!(["INBOX", "Lists.rust"]));
        assert_eq!(a[1]["seen"], json!(true));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn keys_come_from_the_message_id_or_the_bytes() {
        assert_eq!(message_key(b"Message-ID: <a@b>\r\n\r\nx"), "a@b");
        let k1 = message_key(b"Subject: none\r\n\r\nx");
        assert_eq!(k1, message_key(b"Subject: none\r\n\r\nx"));
        assert_ne!(k1, message_key(b"Subject: none\r\n\r\ny"));
        assert!(k1.ends_with("@raindrop.invalid"));
        assert_eq!(message_key(b"Subject: none\n\nx\n"), message_key(b"Subject: none\r\n\r\nx\r\n"));
    }
}
