//! Address-list headers as `{name, address}` objects.
//!
//! `mailparse` reads RFC 5322 address lists but refuses the whole header when one address has
//! no domain (`From: Whomever`, `<moderator>`, as list software and old gateways write), and it
//! keeps comments inside an address (`pete(his account)@silly.test`). A careful client shows
//! such a sender rather than none: here a list `mailparse` refuses is read again leniently,
//! comments are taken out of addresses, and an address without a domain is kept as the header
//! gave it (the extensions give it an identity of its own kind, not an email one).

use mailparse::{MailAddr, MailHeader};
use serde_json::{json, Value};

/// A header's addresses (its encoded words decoded), groups flattened.
pub fn from_header(header: &MailHeader<'_>) -> Value {
    match mailparse::addrparse_header(header) {
        Ok(list) => Value::Array(list.iter().flat_map(flatten).collect()),
        Err(_) => lenient(&header.get_value()),
    }
}

/// A header value's addresses (already decoded text).
pub fn from_text(text: &str) -> Value {
    match mailparse::addrparse(text) {
        Ok(list) => Value::Array(list.iter().flat_map(flatten).collect()),
        Err(_) => lenient(text),
    }
}

fn flatten(a: &MailAddr) -> Vec<Value> {
    match a {
        MailAddr::Single(s) => vec![entry(s.display_name.clone(), &s.addr)],
        MailAddr::Group(g) => g.addrs.iter().map(|s| entry(s.display_name.clone(), &s.addr)).collect(),
    }
}

fn entry(name: Option<String>, address: &str) -> Value {
    let address = if address.contains('(') { strip_comments(address) } else { address.trim().to_string() };
    json!({"name": name.filter(|n| !n.is_empty()), "address": address})
}

/// Reads what `mailparse` refused: the list split at commas outside quotes, angle brackets
/// and comments; each piece an address in `<…>` with the words before it as the name, or a
/// bare address. A group's `name:` and `;` are dropped.
fn lenient(text: &str) -> Value {
    let mut out = Vec::new();
    for piece in split_top_level(text) {
        let piece = piece.trim().trim_end_matches(';').trim();
        let piece = match group_prefix_end(piece) {
            Some(i) => piece[i + 1..].trim(),
            None => piece,
        };
        if piece.is_empty() {
            continue;
        }
        let (name, address) = match (piece.rfind('<'), piece.rfind('>')) {
            (Some(open), Some(close)) if open < close => (Some(display_name(&piece[..open])), piece[open + 1..close].to_string()),
            _ => (None, piece.to_string()),
        };
        let address = strip_comments(&address);
        // Whatever is left must look like an address: no specials (a stray "<", a quote).
        if !address.is_empty() && !address.contains(['<', '>', '(', ')', '[', ']', '"', ';', ':', ',', '\\']) {
            out.push(json!({"name": name.filter(|n| !n.is_empty()), "address": address}));
        }
    }
    Value::Array(out)
}

/// The text split at the commas that separate addresses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut pieces, mut start) = (Vec::new(), 0);
    let (mut quoted, mut angle, mut comment, mut escaped) = (false, false, 0u32, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || comment > 0 => escaped = true,
            '"' if comment == 0 => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            ',' if !quoted && !angle && comment == 0 => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// Where a group's `display-name:` ends, if the piece starts with one.
fn group_prefix_end(piece: &str) -> Option<usize> {
    let colon = piece.find(':')?;
    let before = &piece[..colon];
    (!before.contains(['<', '"', '@', '('])).then_some(colon)
}

/// A display name as written before `<…>`: comments dropped, a quoted string unquoted (its
/// quoted pairs undone), white space collapsed.
fn display_name(text: &str) -> String {
    let (mut out, mut depth, mut quoted, mut escaped) = (String::new(), 0u32, false, false);
    for c in text.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                if depth == 0 {
                    out.push(c);
                }
            }
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An address without its `(comments)` (nested, with quoted pairs) and white space around `@`.
fn strip_comments(text: &str) -> String {
    let (mut out, mut depth, mut escaped, mut quoted) = (String::new(), 0u32, false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' if depth > 0 || quoted => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let collapsed: Vec<&str> = out.split_whitespace().collect();
    // Around the '@' and dots of an address, white space is not part of it.
    collapsed.join(" ").replace(" @ ", "@").replace(" @", "@").replace("@ ", "@")
}

#[cfg(test)]
mod tests {
    use super::from_text;
    use serde_json::json;

    #[test]
    fn rfc_5322_appendix_a_addresses() {
        // A.1.2, A.1.3: display names, a group, an empty group.
        assert_eq!(
            from_text("\"Joe Q. Public\" <john.q.public@example.com>"),
            json!([{"name": "Joe Q. Public", "address": "john.q.public@example.com"}])
        );
        assert_eq!(
            from_text("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;"),
            json!([{"name": "Ed Jones", "address": "c@a.test"}, {"name": null, "address": "joe@where.test"}, {"name": "John", "address": "jdoe@one.test"}])
        );
        assert_eq!(from_text("Undisclosed recipients:;"), json!([]));
        // A.5: comments in and around an address.
        assert_eq!(
            from_text("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"),
            json!([{"name": "Pete", "address": "pete@silly.test"}])
        );
    }

    #[test]
    fn addresses_without_a_domain_are_kept() {
        assert_eq!(from_text("Whomever"), json!([{"name": null, "address": "Whomever"}]));
        assert_eq!(from_text("<moderator>"), json!([{"name": null, "address": "moderator"}]));
        assert_eq!(
            from_text("List Moderator <moderator>, b@example.com"),
            json!([{"name": "List Moderator", "address": "moderator"}, {"name": null, "address": "b@example.com"}])
        );
        assert_eq!(from_text("\"Smith, Jo\" <jo>"), json!([{"name": "Smith, Jo", "address": "jo"}]));
        assert_eq!(from_text("John @ Home <jo>"), json!([{"name": "John @ Home", "address": "jo"}]));
        assert_eq!(from_text("\"A \\\"B\\\"\" (x) <jo>"), json!([{"name": "A \"B\"", "address": "jo"}]));
        assert_eq!(from_text(""), json!([]));
    }
}
