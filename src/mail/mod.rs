//! Mail: MIME parsing for extensions (`raindrop.mail.parse`) and reading messages from files
//! (`raindrop import`). Built on `mailparse`; nothing here knows about JS engines or stores.

pub mod import;

use mailparse::{MailAddr, MailHeaderMap, ParsedMail};
use serde_json::{json, Map, Value};

/// A date header's value as seconds since the epoch, if it can be read.
pub fn date(text: &str) -> Option<i64> {
    mailparse::dateparse(text).ok()
}

/// The message from its first header on: blank or whitespace-only lines before the headers
/// (seen in exported mail, and in the original's corpus) would otherwise end the header block
/// before it starts.
pub fn headers_start(data: &[u8]) -> &[u8] {
    let mut rest = data;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        if rest[..end].iter().all(|b| b.is_ascii_whitespace()) {
            rest = &rest[end + 1..];
        } else {
            break;
        }
    }
    rest
}

/// An address-list header value (`A <a@x>, "B, Jr" <b@y>, group: c@z;`) as `{name, address}`
/// objects, groups flattened. What cannot be parsed is left out, never an error.
pub fn addresses(text: &str) -> Value {
    let list = mailparse::addrparse(text).map(|l| l.iter().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let mut out = Vec::new();
    for a in list {
        match a {
            MailAddr::Single(s) => out.push(json!({"name": s.display_name, "address": s.addr})),
            MailAddr::Group(g) => out.extend(g.addrs.into_iter().map(|s| json!({"name": s.display_name, "address": s.addr}))),
        }
    }
    Value::Array(out)
}

/// Parses a message. Never fails: what could not be read is listed under `problems`.
///
/// The result: `headers` (lower-cased name → list of decoded values), `subject`, `from`, `to`,
/// `cc`, `reply_to` (lists of `{name, address}`), `date`, `timestamp` (seconds since the epoch),
/// `message_id`, `in_reply_to`, `references` (ids without `<>`), `multipart`, `parts` (every leaf
/// part: `content_type`, `charset`, `filename`, `disposition`, `size`), `text` (the decoded
/// text/plain parts that are not attachments, joined), `problems`.
pub fn parse(data: &[u8]) -> Value {
    let data = headers_start(data);
    let mut problems: Vec<String> = Vec::new();
    let mail = match mailparse::parse_mail(data) {
        Ok(m) => m,
        Err(e) => {
            return json!({
                "headers": {}, "subject": null, "from": [], "to": [], "cc": [], "reply_to": [],
                "date": null, "timestamp": null, "message_id": null, "in_reply_to": [], "references": [],
                "multipart": false, "parts": [], "text": String::from_utf8_lossy(data),
                "problems": [format!("not a MIME message: {e}")],
            })
        }
    };
    let mut headers = Map::new();
    for h in &mail.headers {
        let entry = headers.entry(h.get_key().to_lowercase()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(Value::String(h.get_value()));
        }
    }
    let addresses = |name: &str, problems: &mut Vec<String>| -> Value {
        let mut out = Vec::new();
        for h in mail.headers.get_all_headers(name) {
            match mailparse::addrparse_header(h) {
                Ok(list) => {
                    for a in list.iter() {
                        match a {
                            MailAddr::Single(s) => out.push(json!({"name": s.display_name, "address": s.addr})),
                            MailAddr::Group(g) => out.extend(g.addrs.iter().map(|s| json!({"name": s.display_name, "address": s.addr}))),
                        }
                    }
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        Value::Array(out)
    };
    let from = addresses("From", &mut problems);
    let to = addresses("To", &mut problems);
    let cc = addresses("Cc", &mut problems);
    let reply_to = addresses("Reply-To", &mut problems);
    let date = mail.headers.get_first_value("Date");
    let timestamp = date.as_deref().and_then(|d| match mailparse::dateparse(d) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("Date: {e}"));
            None
        }
    });
    let ids = |name: &str| -> Vec<String> {
        mail.headers
            .get_all_values(name)
            .iter()
            .flat_map(|v| mailparse::msgidparse(v).map(|l| l.iter().cloned().collect::<Vec<_>>()).unwrap_or_default())
            .collect()
    };
    let message_id = ids("Message-ID").into_iter().next().or_else(|| {
        mail.headers.get_first_value("Message-ID").map(|v| v.trim().trim_matches(['<', '>']).to_string()).filter(|v| !v.is_empty())
    });
    let mut parts = Vec::new();
    let mut text = String::new();
    walk(&mail, &mut parts, &mut text, &mut problems);
    json!({
        "headers": headers,
        "subject": mail.headers.get_first_value("Subject"),
        "from": from, "to": to, "cc": cc, "reply_to": reply_to,
        "date": date,
        "timestamp": timestamp,
        "message_id": message_id,
        "in_reply_to": ids("In-Reply-To"),
        "references": ids("References"),
        "multipart": !mail.subparts.is_empty(),
        "parts": parts,
        "text": text,
        "problems": problems,
    })
}

fn walk(part: &ParsedMail<'_>, parts: &mut Vec<Value>, text: &mut String, problems: &mut Vec<String>) {
    if !part.subparts.is_empty() {
        let alternative = part.ctype.mimetype.eq_ignore_ascii_case("multipart/alternative");
        for (i, sub) in part.subparts.iter().enumerate() {
            // Of the alternatives, the text goes once: take the first text/plain one.
            if alternative && i > 0 && part.subparts[..i].iter().any(|p| p.ctype.mimetype == "text/plain") {
                let mut ignored = String::new();
                walk(sub, parts, &mut ignored, problems);
            } else {
                walk(sub, parts, text, problems);
            }
        }
        return;
    }
    let disposition = part.get_content_disposition();
    let filename = disposition.params.get("filename").or_else(|| part.ctype.params.get("name")).cloned();
    let is_attachment = matches!(disposition.disposition, mailparse::DispositionType::Attachment) || filename.is_some();
    let size = part.get_body_raw().map(|b| b.len()).unwrap_or(0);
    parts.push(json!({
        "content_type": part.ctype.mimetype,
        "charset": part.ctype.charset,
        "filename": filename,
        "disposition": if is_attachment { "attachment" } else { "inline" },
        "size": size,
    }));
    if part.ctype.mimetype == "text/plain" && !is_attachment {
        match part.get_body() {
            Ok(body) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&body);
            }
            Err(e) => problems.push(format!("text part: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &[u8] = b"From: =?utf-8?q?Zo=C3=AB?= <Zoe@Example.com>\r\nTo: a@x.org, \"B, Jr\" <b@y.org>\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n folded\r\nDate: Tue, 14 Jul 2009 10:00:00 +0000\r\nMessage-ID: <abc@host>\r\nReferences: <r1@h> <r2@h>\r\n\r\nHello\r\n";

    #[test]
    fn headers_addresses_dates_and_text_are_decoded() {
        let m = parse(SIMPLE);
        assert_eq!(m["subject"], "café folded");
        assert_eq!(m["from"], json!([{"name": "Zoë", "address": "Zoe@Example.com"}]));
        assert_eq!(m["to"][1], json!({"name": "B, Jr", "address": "b@y.org"}));
        assert_eq!(m["timestamp"], 1247565600);
        assert_eq!(m["message_id"], "abc@host");
        assert_eq!(m["references"], json!(["r1@h", "r2@h"]));
        assert_eq!(m["text"], "Hello\r\n");
        assert_eq!(m["problems"], json!([]));
        assert_eq!(
            addresses("A <a@x.org>, \"B, Jr\" <b@y.org>, c@z"),
            json!([
                {"name": "A", "address": "a@x.org"}, {"name": "B, Jr", "address": "b@y.org"}, {"name": null, "address": "c@z"}
            ])
        );
        assert_eq!(addresses("<<<"), json!([]));
    }

    #[test]
    fn bad_input_never_fails() {
        for bytes in
            [&b""[..], b"\xff\xfe\x00garbage", b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n", b"Date: not a date\r\n\r\nx"]
        {
            let m = parse(bytes);
            assert!(m.get("problems").is_some(), "{m}");
        }
        assert_eq!(parse(b"   \r\n\nSubject: hi\r\n\r\nx")["subject"], "hi");
        // Every prefix of a real message parses to something.
        for n in 0..SIMPLE.len() {
            let _ = parse(&SIMPLE[..n]);
        }
    }

    /// A property test: mutated corpus mail and random bytes never make `parse`, `addresses`
    /// or the importer's key and mbox code panic, and `parse` always answers with its full
    /// shape. Deterministic (a fixed xorshift seed), so a failure is reproducible.
    #[test]
    fn mutated_mail_never_panics() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mail");
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for kind in ["hand-rolled", "mailing-list", "malformed"] {
            for e in std::fs::read_dir(corpus.join(kind)).unwrap() {
                seeds.push(std::fs::read(e.unwrap().path()).unwrap());
            }
        }
        let tokens: [&[u8]; 12] = [
            b"\r\n\r\n",
            b"--",
            b"boundary=\"x\"",
            b"=?utf-8?b?",
            b"=?iso-8859-1?q?=E9",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n",
            b"\xff\xfe",
            b"<",
            b">,",
            b"From ",
            b"\r\n ",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3000 {
            let mut m = if round % 10 == 0 {
                (0..(next() % 2000)).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].clone()
            };
            for _ in 0..(next() % 8) {
                let at = if m.is_empty() { 0 } else { (next() % m.len() as u64) as usize };
                match next() % 4 {
                    0 => m.truncate(at),
                    1 if !m.is_empty() => m[at] = next() as u8,
                    _ => {
                        let t = tokens[(next() % tokens.len() as u64) as usize];
                        m.splice(at..at, t.iter().copied());
                    }
                }
            }
            let v = parse(&m);
            for field in ["headers", "from", "to", "parts", "text", "problems"] {
                assert!(v.get(field).is_some(), "round {round}: no {field}");
            }
            let _ = addresses(&String::from_utf8_lossy(&m));
            let _ = import::message_key(&m);
            let mut mbox = b"From x Sat Jan  1 00:00:00 2000\n".to_vec();
            mbox.extend_from_slice(&m);
            for one in import::split_mbox(&mbox) {
                let _ = import::rfc822_item(&one, "t");
            }
        }
    }
}
