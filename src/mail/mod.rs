//! Mail: MIME parsing for extensions (`raindrop.mail.parse`) and reading messages from files
//! (`raindrop import`). Built on `mailparse`; nothing here knows about JS engines or stores.

mod address;
mod body;
mod date;
pub mod import;
mod repair;

use mailparse::MailHeaderMap;
use serde_json::{json, Map, Value};

/// A date header's value as seconds since the epoch, if it can be read (RFC 5322, and the
/// looser forms Python's `email.utils.parsedate_tz` reads).
pub fn date(text: &str) -> Option<i64> {
    date::parse(text)
}

/// An address-list header value (`A <a@x>, "B, Jr" <b@y>, group: c@z;`) as `{name, address}`
/// objects, groups flattened, comments dropped. An address without a domain (`Whomever`,
/// `<moderator>`) is kept as written; what cannot be read at all is left out, never an error.
pub fn addresses(text: &str) -> Value {
    address::from_text(text)
}

/// Parses a message. Never fails: what could not be read is listed under `problems`.
///
/// The result: `headers` (lower-cased name → list of decoded values), `subject`, `from`, `to`,
/// `cc`, `reply_to` (lists of `{name, address}`), `date`, `timestamp` (seconds since the epoch),
/// `message_id`, `in_reply_to`, `references` (ids without `<>`), `multipart`, `parts` (every leaf
/// part, encapsulated messages' too: `content_type`, `charset`, `filename`, `disposition`,
/// `size`), `text` (what a mail client shows as the body: see `body.rs`), `problems`.
/// The header block is repaired first where real mail breaks it (`repair.rs`).
pub fn parse(data: &[u8]) -> Value {
    let data = repair::header_block(data);
    let mut problems: Vec<String> = Vec::new();
    let mail = match mailparse::parse_mail(&data) {
        Ok(m) => m,
        Err(e) => {
            return json!({
                "headers": {}, "subject": null, "from": [], "to": [], "cc": [], "reply_to": [],
                "date": null, "timestamp": null, "message_id": null, "in_reply_to": [], "references": [],
                "multipart": false, "parts": [], "text": String::from_utf8_lossy(&data),
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
    let addresses = |name: &str| -> Value {
        Value::Array(
            mail.headers
                .get_all_headers(name)
                .into_iter()
                .flat_map(|h| match address::from_header(h) {
                    Value::Array(list) => list,
                    _ => Vec::new(),
                })
                .collect(),
        )
    };
    let date = mail.headers.get_first_value("Date");
    let timestamp = date.as_deref().and_then(|d| {
        let t = date::parse(d);
        if t.is_none() {
            problems.push(format!("Date: cannot read {d:?}"));
        }
        t
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
    let mut walked = body::Walk::default();
    body::walk(&mail, 0, true, &mut walked);
    problems.append(&mut walked.problems);
    json!({
        "headers": headers,
        "subject": mail.headers.get_first_value("Subject"),
        "from": addresses("From"), "to": addresses("To"), "cc": addresses("Cc"), "reply_to": addresses("Reply-To"),
        "date": date,
        "timestamp": timestamp,
        "message_id": message_id,
        "in_reply_to": ids("In-Reply-To"),
        "references": ids("References"),
        "multipart": !mail.subparts.is_empty(),
        "parts": walked.parts,
        "text": walked.text,
        "problems": problems,
    })
}

/// The message from its first header on, its header block repaired (see `repair.rs`).
pub(crate) fn header_block(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    repair::header_block(data)
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

    /// RFC 2046 §5.2.1: a message whose whole body is another message (a forward).
    #[test]
    fn a_forwarded_message_is_quoted_into_the_body() {
        let m = parse(b"From: Ann <ann@example.com>\nSubject: Fwd: lunch\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\nFrom: Bob <bob@example.com>\nTo: ann@example.com\nSubject: lunch\nDate: Mon, 1 Jan 2001 12:00:00 +0000\n\nNoon at the usual place?\n\nBob\n");
        assert_eq!(
            m["text"],
            "---------- Forwarded message ----------\n> From: Bob <bob@example.com>\n> Date: Mon, 1 Jan 2001 12:00:00 +0000\n> Subject: lunch\n> To: ann@example.com\n>\n> Noon at the usual place?\n>\n> Bob"
        );
        assert_eq!(m["parts"][0]["content_type"], "message/rfc822");
        assert_eq!(m["parts"][0]["disposition"], "inline");
        assert_eq!(m["parts"][1]["content_type"], "text/plain");
        // Inside a multipart/mixed, after the sender's own words; an attached one stays a part.
        let m = parse(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nSee below.\n--b\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner text\n--b\nContent-Type: message/rfc822\nContent-Disposition: attachment\n\nSubject: attached\n\nnot shown\n--b--\n");
        assert_eq!(m["text"], "See below.\n---------- Forwarded message ----------\n> Subject: inner\n>\n> inner text");
        assert_eq!(m["parts"].as_array().unwrap().len(), 4, "{}", m["parts"]);
        assert_eq!(m["parts"][3]["disposition"], "attachment");
    }

    /// RFC 2046 §5.1.5: a digest's parts are messages unless they say otherwise.
    #[test]
    fn each_member_of_a_digest_is_read() {
        let m = parse(b"From: list@example.com\nSubject: Digest 42\nContent-Type: multipart/mixed; boundary=\"---- main boundary ----\"\n\n------ main boundary ----\n\n  ...Introductory text or table of contents...\n\n------ main boundary ----\nContent-Type: multipart/digest;\n     boundary=\"---- next message ----\"\n\n------ next message ----\n\nFrom: someone-else\nDate: Fri, 26 Mar 1993 11:13:32 -0500\nSubject: my opinion\n\n  ...body goes here ...\n\n------ next message ----\n\nFrom: someone-else-again\nDate: Fri, 26 Mar 1993 10:07:13 -0500\nSubject: my different opinion\n\n  ...another body goes here...\n\n------ next message ------\n\n------ main boundary ------\n");
        let text = m["text"].as_str().unwrap();
        assert!(text.starts_with("  ...Introductory text or table of contents...\n"), "{text}");
        assert!(
            text.contains(
                "> From: someone-else\n> Date: Fri, 26 Mar 1993 11:13:32 -0500\n> Subject: my opinion\n>\n>   ...body goes here ..."
            ),
            "{text}"
        );
        assert!(text.contains("> Subject: my different opinion\n>\n>   ...another body goes here..."), "{text}");
        assert_eq!(m["problems"], json!([]));
    }

    /// RFC 2047 words, one carrying raw 8-bit bytes its mailer forgot to escape.
    #[test]
    fn encoded_words_decode_in_their_charset_even_with_raw_bytes() {
        let m = parse(b"From: =?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>\nTo: =?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>\nSubject: =?iso-8859-1?Q?Fr\xF6sche?= und =?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\n\nx\n");
        assert_eq!(m["subject"], "Fr\u{f6}sche und If you can read this yo");
        assert_eq!(m["to"], json!([{"name": "Keld J\u{f8}rn Simonsen", "address": "keld@dkuug.dk"}]));
        assert_eq!(m["from"][0]["name"], "Keith Moore");
    }

    #[test]
    fn a_header_block_without_its_blank_line_ends_at_the_body() {
        let m = parse(
            b"From: a@example.com\nSubject: no blank line\nDate: Mon, 1 Jan 2001 00:00:00 +0000\nThis is the body,\nand: this too.\n",
        );
        assert_eq!(m["subject"], "no blank line");
        assert_eq!(m["text"], "This is the body,\nand: this too.\n");
        assert_eq!(m["headers"].as_object().unwrap().len(), 3);
    }

    /// RFC 2231 §3-4: parameters with a charset and language, and continuations.
    #[test]
    fn rfc_2231_parameters_are_understood() {
        let m = parse(b"Content-Type: multipart/mixed; boundary*=us-ascii'en'XyZ\n\n--XyZ\nContent-Type: text/plain\n\nhello\n--XyZ\nContent-Type: application/octet-stream\nContent-Disposition: attachment;\n filename*0*=iso-8859-1'de'R%E9sum;\n filename*1=\"e.pdf\"\n\ndata\n--XyZ--\n");
        assert_eq!(m["text"], "hello");
        assert_eq!(m["parts"][1]["filename"], "R\u{e9}sume.pdf");
    }

    #[test]
    fn text_without_a_charset_is_utf8_when_it_can_be_else_windows_1252() {
        assert_eq!(
            parse("Content-Type: text/plain\n\nGr\u{fc}\u{df}e aus K\u{f6}ln\n".as_bytes())["text"],
            "Gr\u{fc}\u{df}e aus K\u{f6}ln\n"
        );
        assert_eq!(parse(b"Subject: x\n\nGr\xfc\xdfe \x93quoted\x94\n")["text"], "Gr\u{fc}\u{df}e \u{201c}quoted\u{201d}\n");
        // A declared charset is believed.
        assert_eq!(parse(b"Content-Type: text/plain; charset=iso-8859-1\n\ncaf\xe9\n")["text"], "caf\u{e9}\n");
    }

    #[test]
    fn base64_with_junk_after_its_padding_keeps_the_text() {
        let m = parse(
            b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ=\n-- \nsent from a phone\n",
        );
        assert_eq!(m["text"], "hello world");
        assert!(m["problems"][0].as_str().unwrap().starts_with("base64 body"), "{}", m["problems"]);
    }

    #[test]
    fn loose_dates_give_a_timestamp_and_garbage_gives_none() {
        assert_eq!(parse(b"Date: 01 Jan 2001 00:01+0000\n\nx")["timestamp"], 978307260);
        let m = parse(b"Date: sometime soon\n\nx");
        assert_eq!(m["timestamp"], Value::Null);
        assert_eq!(m["problems"], json!(["Date: cannot read \"sometime soon\""]));
    }

    #[test]
    fn senders_without_a_domain_are_kept() {
        assert_eq!(parse(b"From: Whomever\n\nx")["from"], json!([{"name": null, "address": "Whomever"}]));
        assert_eq!(parse(b"From: List Moderator <moderator>\n\nx")["from"], json!([{"name": "List Moderator", "address": "moderator"}]));
    }

    /// A text/plain part with a file name is body text when it says `inline`, an attachment
    /// otherwise (as Thunderbird and Gmail show them).
    #[test]
    fn an_inline_text_file_is_body_text() {
        let m = parse(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nmine\n--b\nContent-Type: text/plain; name=log.txt\nContent-Disposition: inline; filename=log.txt\n\nthe log\n--b\nContent-Type: text/plain; name=notes.txt\n\nnot shown\n--b--\n");
        assert_eq!(m["text"], "mine\nthe log");
        assert_eq!((&m["parts"][1]["filename"], &m["parts"][1]["disposition"]), (&json!("log.txt"), &json!("inline")));
        assert_eq!(m["parts"][2]["disposition"], "attachment");
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
