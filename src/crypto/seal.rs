//! Sealing bytes with AES-256-GCM: a random 96-bit nonce per message, stored in front of the
//! ciphertext, the 128-bit tag after it (`nonce · ciphertext · tag`), and associated data
//! that says what the bytes are and where they belong.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

pub use aws_lc_rs::aead::NONCE_LEN;

/// Bytes a sealed message adds to its plaintext: the nonce and the tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const TAG_LEN: usize = 16;

/// An AES-256-GCM key. Its bytes never leave it; `Debug` shows nothing of it.
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Sealed bytes that do not open: altered, truncated, sealed under another key, or sealed
/// for another place (the associated data differs). AES-GCM cannot tell these apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFailed;

impl SealKey {
    pub fn new(key: &[u8; 32]) -> SealKey {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid");
        SealKey(LessSafeKey::new(unbound))
    }

    /// Seals `plain` into a new buffer.
    pub fn seal(&self, plain: &[u8], ad: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plain);
        self.seal_tail(&mut out, 0, ad);
        out
    }

    /// Seals in place the message that starts at `start` of `buf`: `buf[start..start + 12]`
    /// was reserved for the nonce (see [`reserve`]) and the plaintext follows it to the end;
    /// the nonce is filled in and the tag appended.
    pub fn seal_tail(&self, buf: &mut Vec<u8>, start: usize, ad: &[u8]) {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random source works");
        buf[start..start + NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(ad),
                &mut buf[start + NONCE_LEN..],
            )
            .expect("sealing fits AES-GCM's message limit");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Opens a sealed message in place; the plaintext is the returned part of `sealed`.
    pub fn open<'b>(&self, sealed: &'b mut [u8], ad: &[u8]) -> Result<&'b mut [u8], OpenFailed> {
        if sealed.len() < OVERHEAD {
            return Err(OpenFailed);
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenFailed)?;
        self.0
            .open_in_place(nonce, Aad::from(ad), rest)
            .map(|plain| &mut plain[..])
            .map_err(|_| OpenFailed)
    }

    /// Opens a sealed message into a new buffer.
    pub fn open_to_vec(&self, sealed: &[u8], ad: &[u8]) -> Result<Vec<u8>, OpenFailed> {
        let mut buf = sealed.to_vec();
        let len = self.open(&mut buf, ad)?.len();
        buf.drain(..NONCE_LEN);
        buf.truncate(len);
        Ok(buf)
    }
}

/// Reserves room for a nonce at the end of `buf`, where a message to be sealed in place
/// with [`SealKey::seal_tail`] begins; returns where it begins.
pub fn reserve(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; NONCE_LEN]);
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_unaltered_under_the_same_key_and_associated_data() {
        let key = SealKey::new(&[7; 32]);
        let sealed = key.seal(b"vectors", b"here");
        assert_eq!(sealed.len(), 7 + OVERHEAD);
        assert_eq!(key.open_to_vec(&sealed, b"here").unwrap(), b"vectors");
        assert_eq!(key.open_to_vec(&sealed, b"there"), Err(OpenFailed));
        assert_eq!(
            SealKey::new(&[8; 32]).open_to_vec(&sealed, b"here"),
            Err(OpenFailed)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(key.open_to_vec(&bad, b"here"), Err(OpenFailed), "byte {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(key.open_to_vec(&sealed[..len], b"here"), Err(OpenFailed));
        }
    }

    #[test]
    fn in_place_sealing_matches_the_copying_one_and_nonces_differ() {
        let key = SealKey::new(&[1; 32]);
        let mut buf = b"prefix".to_vec();
        let start = reserve(&mut buf);
        buf.extend_from_slice(b"payload");
        key.seal_tail(&mut buf, start, b"ad");
        let mut sealed = buf[start..].to_vec();
        assert_eq!(key.open(&mut sealed, b"ad").unwrap(), b"payload");
        assert_eq!(&buf[..start], b"prefix");
        assert_ne!(
            key.seal(b"x", b""),
            key.seal(b"x", b""),
            "a fresh nonce each time"
        );
        assert_eq!(format!("{key:?}"), "SealKey(..)");
    }
}
