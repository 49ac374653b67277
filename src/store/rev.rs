//! Revision ids in CouchDB's `N-hash` form.

/// The generation number of a revision (`3` for `3-abc…`); 0 for anything unparsable.
pub fn generation(rev: &str) -> u64 {
    rev.split_once('-').and_then(|(n, _)| n.parse().ok()).unwrap_or(0)
}

/// The revision that follows `prev` (or the first one) for this content.
pub fn next(prev: Option<&str>, deleted: bool, body: &[u8], attachment_digests: &[&str]) -> String {
    let n = prev.map_or(0, generation) + 1;
    let mut parts: Vec<&[u8]> = vec![prev.unwrap_or("").as_bytes(), if deleted { b"d" } else { b"l" }, body];
    parts.extend(attachment_digests.iter().map(|d| d.as_bytes()));
    format!("{n}-{}", crate::digest::digest(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_count_up_and_depend_on_content() {
        let r1 = next(None, false, b"{}", &[]);
        assert!(r1.starts_with("1-") && r1.len() == 34, "{r1}");
        let r2 = next(Some(&r1), false, b"{}", &[]);
        assert_eq!(generation(&r2), 2);
        assert_ne!(next(Some(&r1), false, b"{\"a\":1}", &[]), r2);
        assert_ne!(next(Some(&r1), true, b"{}", &[]), r2);
        assert_eq!(generation("garbage"), 0);
    }
}
