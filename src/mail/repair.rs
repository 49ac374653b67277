//! A message's header block made readable before `mailparse` sees it, for the damage real
//! mail carries that a careful client reads past:
//!
//! - blank lines before the first header (exported mail, the original's corpus) and an mbox
//!   envelope line (`From sender date`) left at the top of a saved message;
//! - a header block with no blank line before the body: the first line that is neither a header
//!   (`name:`) nor a continuation (leading white space) starts the body, where `mailparse`
//!   would read the whole body as headers;
//! - raw 8-bit bytes inside a Q-encoded word (`=?iso-8859-1?Q?Fr<F6>sche?=`, written by mailers
//!   that forgot to escape them): escaped as `=F6`, so they decode in the word's charset instead
//!   of being dropped.
//!
//! Only the top header block is repaired (an encapsulated message is repaired when it is
//! parsed in its turn). A message that needs none of this is returned as it came, uncopied.

use std::borrow::Cow;

/// The message with its header block repaired.
pub fn header_block(data: &[u8]) -> Cow<'_, [u8]> {
    let data = skip_leading(data);
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    while at < data.len() {
        let end = data[at..].iter().position(|b| *b == b'\n').map_or(data.len(), |i| at + i + 1);
        let line = &data[at..end];
        let content = line.strip_suffix(b"\n").map(|l| l.strip_suffix(b"\r").unwrap_or(l)).unwrap_or(line);
        if content.is_empty() {
            break; // the blank line: the headers end where they should
        }
        let is_continuation = matches!(content[0], b' ' | b'\t');
        if !is_continuation && !is_header_line(content) {
            // The body starts here, without its blank line: give it one.
            let mut buf = out.unwrap_or_else(|| data[..at].to_vec());
            buf.extend_from_slice(if line.ends_with(b"\r\n") { b"\r\n" } else { b"\n" });
            buf.extend_from_slice(&data[at..]);
            return Cow::Owned(buf);
        }
        match escape_8bit_in_encoded_words(line) {
            Some(escaped) => out.get_or_insert_with(|| data[..at].to_vec()).extend_from_slice(&escaped),
            None => {
                if let Some(buf) = out.as_mut() {
                    buf.extend_from_slice(line);
                }
            }
        }
        at = end;
    }
    match out {
        Some(mut buf) => {
            buf.extend_from_slice(&data[at..]);
            Cow::Owned(buf)
        }
        None => Cow::Borrowed(data),
    }
}

/// Blank lines, and an mbox envelope line, before the first header.
fn skip_leading(data: &[u8]) -> &[u8] {
    let mut rest = data;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..end];
        if line.iter().all(|b| b.is_ascii_whitespace()) || (rest.starts_with(b"From ") && !is_header_line(line)) {
            rest = &rest[end + 1..];
        } else {
            break;
        }
    }
    rest
}

/// `name:` with a field name of printable ASCII (RFC 5322 §2.2), white space allowed before
/// the colon (obsolete syntax, still sent).
fn is_header_line(line: &[u8]) -> bool {
    let name_len = line.iter().position(|b| !(33..=126).contains(b) || *b == b':').unwrap_or(line.len());
    name_len > 0 && line[name_len..].iter().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b':')
}

/// The line with every 8-bit byte inside a `=?charset?Q?…?=` word escaped, or `None` when it
/// has none.
fn escape_8bit_in_encoded_words(line: &[u8]) -> Option<Vec<u8>> {
    if line.is_ascii() {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut changed = false;
    let mut i = 0;
    while i < line.len() {
        if let Some(word_end) = q_word_at(line, i) {
            for &b in &line[i..word_end] {
                if b >= 0x80 {
                    out.extend_from_slice(format!("={b:02X}").as_bytes());
                    changed = true;
                } else {
                    out.push(b);
                }
            }
            i = word_end;
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    changed.then_some(out)
}

/// The longest encoded word looked for (RFC 2047 allows 75 bytes; mailers exceed it a little):
/// bounds the search, so a long line of `=?` without an end stays linear.
const MAX_WORD: usize = 256;

/// The end of a Q-encoded word starting at `start`, if one does.
fn q_word_at(line: &[u8], start: usize) -> Option<usize> {
    let rest = line.get(start..(start + MAX_WORD).min(line.len()))?.strip_prefix(b"=?")?;
    let charset_len = rest.iter().position(|b| *b == b'?')?;
    let after_charset = &rest[charset_len + 1..];
    if !(after_charset.starts_with(b"Q?") || after_charset.starts_with(b"q?")) {
        return None;
    }
    let text = &after_charset[2..];
    let text_len = text.windows(2).position(|w| w == b"?=")?;
    // A word never spans white space or a line end.
    if text[..text_len].iter().any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        return None;
    }
    Some(start + 2 + charset_len + 1 + 2 + text_len + 2)
}

#[cfg(test)]
mod tests {
    use super::header_block;

    fn repaired(data: &[u8]) -> String {
        String::from_utf8_lossy(&header_block(data)).into_owned()
    }

    #[test]
    fn a_sound_message_is_not_copied() {
        let m = b"From: a@example.com\r\nSubject: hi\r\n  there\r\n\r\nbody: not a header\r\n";
        assert!(matches!(header_block(m), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn the_first_line_that_is_not_a_header_starts_the_body() {
        assert_eq!(
            repaired(b"From: a@example.com\nSubject: x\nThis is the body\nmore: body\n"),
            "From: a@example.com\nSubject: x\n\nThis is the body\nmore: body\n"
        );
        assert_eq!(repaired(b"Subject: x\r\n\tcontinued\r\nbody\r\n"), "Subject: x\r\n\tcontinued\r\n\r\nbody\r\n");
        assert_eq!(repaired(b"Subject : obsolete spacing\n\nbody\n"), "Subject : obsolete spacing\n\nbody\n");
    }

    #[test]
    fn leading_blank_lines_and_an_envelope_line_are_skipped() {
        assert_eq!(
            repaired(b"\n \nFrom someone@example.com Mon Jan  1 00:00:00 2001\nFrom: a@example.com\n\nx"),
            "From: a@example.com\n\nx"
        );
    }

    #[test]
    fn raw_8bit_bytes_in_a_q_word_are_escaped() {
        assert_eq!(
            repaired(b"Subject: =?iso-8859-1?Q?Fr\xF6sche?= und \xF6\n\nb"),
            "Subject: =?iso-8859-1?Q?Fr=F6sche?= und \u{FFFD}\n\nb"
        );
        let block = header_block(b"Subject: =?iso-8859-1?Q?Fr\xF6sche?=\n\nb");
        let parsed = mailparse::parse_mail(&block).unwrap();
        assert_eq!(mailparse::MailHeaderMap::get_first_value(&parsed.headers[..], "Subject").unwrap(), "Fr\u{f6}sche");
    }

    #[test]
    fn a_long_line_of_unfinished_words_is_read_in_linear_time() {
        let mut m = b"Subject: \x80".to_vec();
        for _ in 0..200_000 {
            m.extend_from_slice(b"=?c?Q?a");
        }
        m.extend_from_slice(b"\n\nbody");
        // 1.4 MB: a search without a bound took ~10^11 steps here (the test would not end).
        let repaired = header_block(&m);
        assert!(repaired.ends_with(b"\n\nbody"));
    }
}
