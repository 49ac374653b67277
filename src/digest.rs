//! A small, stable content digest used for revision hashes and code fingerprints.

/// 128-bit FNV-1a over the given parts (each part is followed by a separator byte, so part
/// boundaries count), as 32 hex digits. Stable across builds and platforms; not cryptographic.
pub fn digest(parts: &[&[u8]]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        // Eight bytes at a time, then the tail: same quality, far fewer 128-bit multiplies.
        let mut chunks = part.chunks_exact(8);
        for c in &mut chunks {
            h ^= u64::from_le_bytes(c.try_into().expect("chunk of 8")) as u128;
            h = h.wrapping_mul(PRIME);
        }
        for b in chunks.remainder().iter().chain(&[0xff]) {
            h ^= *b as u128;
            h = h.wrapping_mul(PRIME);
        }
    }
    format!("{h:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_changes_with_any_byte_and_with_part_boundaries() {
        let a = digest(&[b"abcdefghij", b"def"]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, digest(&[b"abcdefghij", b"def"]));
        assert_ne!(a, digest(&[b"abcdefghij", b"deg"]));
        assert_ne!(a, digest(&[b"abcdefghijd", b"ef"]));
        assert_ne!(digest(&[b"abcdefgh"]), digest(&[b"abcdefgi"]));
    }
}
