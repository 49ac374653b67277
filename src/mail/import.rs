//! Reading messages from files: `.eml` files, mbox files and Maildir folders. A folder is
//! walked; a file that starts like an mbox ("From ") is split into its messages; any other file
//! is one message, whatever its name.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use mailparse::MailHeaderMap;
use serde_json::{json, Map, Value};

/// One message found on disk, as raw bytes with where it came from.
pub struct FoundMessage {
    pub origin: String,
    pub bytes: Vec<u8>,
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
            // Maildir's tmp/ holds messages still being written; dot-files are not messages.
            if name.starts_with('.') || (name == "tmp" && entry.is_dir()) {
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
    if bytes.starts_with(b"From ") {
        for (i, message) in split_mbox(&bytes).into_iter().enumerate() {
            out.push(FoundMessage { origin: format!("{origin}#{}", i + 1), bytes: message });
        }
    } else if !bytes.is_empty() {
        out.push(FoundMessage { origin, bytes });
    }
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
    fn keys_come_from_the_message_id_or_the_bytes() {
        assert_eq!(message_key(b"Message-ID: <a@b>\r\n\r\nx"), "a@b");
        let k1 = message_key(b"Subject: none\r\n\r\nx");
        assert_eq!(k1, message_key(b"Subject: none\r\n\r\nx"));
        assert_ne!(k1, message_key(b"Subject: none\r\n\r\ny"));
        assert!(k1.ends_with("@raindrop.invalid"));
        assert_eq!(message_key(b"Subject: none\n\nx\n"), message_key(b"Subject: none\r\n\r\nx\r\n"));
    }
}
