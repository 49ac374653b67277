//! A message's MIME tree walked into the list of its leaf parts and the text a mail client
//! shows as its body.
//!
//! What counts as body text, decided as careful clients (Thunderbird, Gmail) show it:
//! - `text/plain` leaves that are not attachments. A `text/plain` part with a file name is an
//!   attachment, unless its `Content-Disposition` says `inline` explicitly: then it is shown
//!   in the body (and still listed with its name, as an inline part).
//! - Of a `multipart/alternative`, the first `text/plain` alternative only.
//! - An encapsulated message (`message/rfc822`: a forward, or each member of a
//!   `multipart/digest`, whose parts are messages by default) that is not an attachment is
//!   descended into: its header block (From, Date, Subject, To, Cc) and its own body text,
//!   quoted with `> ` under a `---------- Forwarded message ----------` line, as clients
//!   quote a forward. Its leaf parts are listed after it, so attachments of a forwarded
//!   message are attachments of the message. An attached one (`Content-Disposition:
//!   attachment`) stays one part.
//! - Text without a declared charset is read as UTF-8 when its bytes are valid UTF-8 (what
//!   mailers that forget the charset send today), else as Windows-1252.
//! - A base64 body with junk after its data (a signature, a truncated line, a second
//!   padding) keeps what decodes before the junk, and says so in `problems`.

use mailparse::{DispositionType, MailHeaderMap, ParsedMail};
use serde_json::{json, Value};

use super::{address, repair};

/// How deep encapsulated messages are descended into (a forward of a forward of …).
const MAX_DEPTH: usize = 8;

/// What the walk gathers.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) parts: Vec<Value>,
    pub(super) text: String,
    pub(super) problems: Vec<String>,
}

impl Walk {
    fn push_text(&mut self, text: &str) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(text);
    }
}

/// Walks `part` (at `depth` encapsulations); its text goes into `out.text` when `keep_text`.
pub(super) fn walk(part: &ParsedMail<'_>, depth: usize, keep_text: bool, out: &mut Walk) {
    if !part.subparts.is_empty() {
        let alternative = part.ctype.mimetype == "multipart/alternative";
        for (i, sub) in part.subparts.iter().enumerate() {
            // Of the alternatives, the text goes once: the first text/plain one.
            let shown_before = alternative && part.subparts[..i].iter().any(|p| p.ctype.mimetype == "text/plain");
            walk(sub, depth, keep_text && !shown_before, out);
        }
        return;
    }
    let disposition = part.get_content_disposition();
    let explicit_inline =
        disposition.disposition == DispositionType::Inline && part.headers.get_first_value("Content-Disposition").is_some();
    let filename = disposition.params.get("filename").or_else(|| part.ctype.params.get("name")).cloned();
    let mimetype = part.ctype.mimetype.as_str();
    let is_attachment = disposition.disposition == DispositionType::Attachment
        || (filename.is_some() && !(explicit_inline && mimetype == "text/plain") && mimetype != "message/rfc822");
    let (bytes, problem) = decoded(part);
    if let Some(p) = problem {
        out.problems.push(p);
    }
    out.parts.push(json!({
        "content_type": mimetype,
        "charset": part.ctype.charset,
        "filename": filename,
        "disposition": if is_attachment { "attachment" } else { "inline" },
        "size": bytes.len(),
    }));
    if is_attachment {
        return;
    }
    if mimetype == "message/rfc822" {
        if depth >= MAX_DEPTH {
            out.problems.push(format!("messages encapsulated more than {MAX_DEPTH} deep are not read"));
            return;
        }
        match mailparse::parse_mail(&repair::header_block(&bytes)) {
            Ok(inner) => encapsulated(&inner, depth + 1, keep_text, out),
            Err(e) => out.problems.push(format!("encapsulated message: {e}")),
        }
    } else if mimetype == "text/plain" && keep_text {
        let text = text_of(part, &bytes);
        out.push_text(&text);
    }
}

/// An encapsulated message: its parts listed, its headers and text quoted into the body.
fn encapsulated(inner: &ParsedMail<'_>, depth: usize, keep_text: bool, out: &mut Walk) {
    let mut sub = Walk::default();
    walk(inner, depth, keep_text, &mut sub);
    out.parts.append(&mut sub.parts);
    out.problems.extend(sub.problems.into_iter().map(|p| format!("encapsulated message: {p}")));
    if !keep_text {
        return;
    }
    let mut quoted = String::new();
    for name in ["From", "Date", "Subject", "To", "Cc"] {
        if let Some(value) = inner.headers.get_first_value(name) {
            let value = match name {
                "From" | "To" | "Cc" => shown_addresses(inner.headers.get_first_header(name)).unwrap_or(value),
                _ => value,
            };
            quoted.push_str(&format!("> {name}: {}\n", value.trim()));
        }
    }
    quoted.push_str(">\n");
    for line in sub.text.lines() {
        quoted.push_str(if line.is_empty() { ">" } else { "> " });
        quoted.push_str(line);
        quoted.push('\n');
    }
    out.push_text(&format!("---------- Forwarded message ----------\n{}", quoted.trim_end_matches('\n')));
}

/// `Name <address>, …` as a client shows an address header.
fn shown_addresses(header: Option<&mailparse::MailHeader<'_>>) -> Option<String> {
    let list = address::from_header(header?);
    let shown: Vec<String> = list
        .as_array()?
        .iter()
        .map(|a| match (a["name"].as_str(), a["address"].as_str().unwrap_or_default()) {
            (Some(name), address) => format!("{name} <{address}>"),
            (None, address) => address.to_string(),
        })
        .collect();
    (!shown.is_empty()).then(|| shown.join(", "))
}

/// The part's body with its transfer encoding undone, and a problem when some was lost.
fn decoded(part: &ParsedMail<'_>) -> (Vec<u8>, Option<String>) {
    match part.get_body_raw() {
        Ok(bytes) => (bytes, None),
        Err(e) => match part.get_body_encoded() {
            mailparse::body::Body::Base64(encoded) => {
                let bytes = base64_prefix(encoded.get_raw());
                let problem = format!("base64 body: {e}; the {} bytes before the junk kept", bytes.len());
                (bytes, Some(problem))
            }
            _ => (Vec::new(), Some(format!("body: {e}"))),
        },
    }
}

/// The longest prefix of `raw` (white space ignored) that is base64, decoded.
fn base64_prefix(raw: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let data: Vec<u8> = raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut end = data.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')).unwrap_or(data.len());
    // Padding that completes the last quantum belongs to the data; what follows is junk.
    let pads = data[end..].iter().take(2).take_while(|b| **b == b'=').count();
    match (1..=pads).find(|k| (end + k) % 4 == 0) {
        Some(k) => end += k,
        // A lone character cannot be decoded; two or three give one or two bytes.
        None if end % 4 == 1 => end -= 1,
        None => {}
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(&data[..end]).unwrap_or_default()
}

/// A text part's bytes as text, in its charset (see the module's note for parts without one).
fn text_of(part: &ParsedMail<'_>, bytes: &[u8]) -> String {
    match part.ctype.params.get("charset") {
        None => match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(_) => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0.into_owned(),
        },
        Some(label) => match charset::Charset::for_label(label.trim().as_bytes()) {
            Some(cs) => cs.decode_without_bom_handling(bytes).0.into_owned(),
            None => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0.into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::base64_prefix;

    #[test]
    fn base64_is_decoded_up_to_the_junk() {
        assert_eq!(base64_prefix(b"aGVsbG8gd29ybGQ=\n--junk--\n"), b"hello world");
        assert_eq!(base64_prefix(b"aGVs\nbG8=\n=\n"), b"hello");
        assert_eq!(base64_prefix(b"aGVsbG8gd29y*bGQ"), b"hello wor");
        assert_eq!(base64_prefix(b"aGVsbG8"), b"hello");
        assert_eq!(base64_prefix(b"!!"), b"");
    }
}
