//! Header encryption (the Signal specification, section 4).
//!
//! The header `(version and flags, DHs, PN, N)` is serialized to 41 fixed
//! bytes:
//!
//! ```text
//! version and flags (1 byte: 0x01, or 0x03) || ratchet public key (32) || PN (u32 BE) || N (u32 BE)
//! ```
//!
//! The first byte is the version, `0x01`, with one flag bit that the session
//! layer sets: [`HEADER_FLAG_LEFT_ANSWERED`] (`0x02`, PROTOCOL.md 4.4 and
//! 9.9). Inside the encryption, so the server never sees it.
//!
//! and sealed with XChaCha20-Poly1305 under the chain's header key, with a
//! fresh random 24-byte nonce and the session's associated data as AEAD
//! associated data. The encrypted header is `nonce || ciphertext || tag`,
//! 81 bytes. A header key lives for a whole chain, so the nonce is random
//! (192 bits: collisions are negligible), never a counter.

use std::fmt;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand_core::CryptoRng;

use crate::keys::{Secret32, X25519PublicKey};

/// The header format version inside the encrypted header.
pub(crate) const HEADER_VERSION: u8 = 1;
/// The flag bit of the header's first byte that says the sender's state
/// replaced, when it was installed, a session on which the sender had heard
/// from us: a receiver holding this session as its unanswered initiation
/// follows it (PROTOCOL.md 9.6, rule 2; 9.9).
pub(crate) const HEADER_FLAG_LEFT_ANSWERED: u8 = 0x02;
/// Length of a serialized header.
pub(crate) const HEADER_LEN: usize = 1 + 32 + 4 + 4;
/// Length of the XChaCha20-Poly1305 nonce.
pub(crate) const HEADER_NONCE_LEN: usize = 24;
/// Length of an encrypted header: nonce, sealed header, tag.
pub const ENCRYPTED_HEADER_LEN: usize = HEADER_NONCE_LEN + HEADER_LEN + 16;

/// 24 random bytes for [`HeaderKey::seal`]: a header key lives for a whole
/// chain, so its nonces are random, never counters.
pub(crate) fn fresh_nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; HEADER_NONCE_LEN] {
    let mut nonce = [0u8; HEADER_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// The nonce that starts an encrypted header (in the clear on the wire).
pub(crate) fn nonce_of(encrypted: &[u8; ENCRYPTED_HEADER_LEN]) -> [u8; HEADER_NONCE_LEN] {
    // An encrypted header is longer than its nonce: the chunk always exists.
    encrypted.first_chunk::<HEADER_NONCE_LEN>().copied().unwrap_or_default()
}

/// A message header in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The sender's current ratchet public key `DHs`.
    pub(crate) ratchet_key: X25519PublicKey,
    /// `PN`: number of messages in the sender's previous sending chain.
    pub(crate) previous_counter: u32,
    /// `N`: this message's index in the sending chain.
    pub(crate) counter: u32,
    /// The [`HEADER_FLAG_LEFT_ANSWERED`] bit.
    pub(crate) left_answered: bool,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let (version, rest) = out.split_at_mut(1);
        let (key, rest) = rest.split_at_mut(32);
        let (pn, n) = rest.split_at_mut(4);
        let flags = if self.left_answered { HEADER_FLAG_LEFT_ANSWERED } else { 0 };
        version.copy_from_slice(&[HEADER_VERSION | flags]);
        key.copy_from_slice(self.ratchet_key.as_bytes());
        pn.copy_from_slice(&self.previous_counter.to_be_bytes());
        n.copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; HEADER_LEN] = bytes.try_into().ok()?;
        let (version, rest) = bytes.split_first()?;
        // Version 1, with or without the one flag: any other bit set is
        // another version, which this one treats as not opening.
        if *version & !HEADER_FLAG_LEFT_ANSWERED != HEADER_VERSION {
            return None;
        }
        let (key, rest) = rest.split_at(32);
        let (pn, n) = rest.split_at(4);
        Some(Self {
            ratchet_key: X25519PublicKey::from_bytes(key.try_into().ok()?),
            previous_counter: u32::from_be_bytes(pn.try_into().ok()?),
            counter: u32::from_be_bytes(n.try_into().ok()?),
            left_answered: *version & HEADER_FLAG_LEFT_ANSWERED != 0,
        })
    }
}

/// A header key `HK`: seals the headers of one sending chain.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HeaderKey(Secret32);

impl HeaderKey {
    pub(crate) fn new(key: Secret32) -> Self {
        Self(key)
    }

    pub(crate) fn as_secret(&self) -> &Secret32 {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // Keyed from the secret itself (no copy on the stack); the cipher wipes
        // its own copy on drop.
        XChaCha20Poly1305::new_from_slice(self.0.as_bytes())
            .unwrap_or_else(|_| unreachable!("an XChaCha20-Poly1305 key is 32 bytes"))
    }

    /// `HENCRYPT(HK, header)` with associated data `ad`, under `nonce`: 24
    /// fresh random bytes ([`fresh_nonce`]), which also salt the message's
    /// body key.
    pub(crate) fn seal(&self, nonce: [u8; HEADER_NONCE_LEN], header: Header, ad: &[u8]) -> [u8; ENCRYPTED_HEADER_LEN] {
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: &header.to_bytes(), aad: ad })
            .unwrap_or_default();
        let mut out = [0u8; ENCRYPTED_HEADER_LEN];
        let (n, rest) = out.split_at_mut(HEADER_NONCE_LEN);
        n.copy_from_slice(&nonce);
        // `sealed` is HEADER_LEN + 16 bytes: XChaCha20-Poly1305 cannot fail on 41 bytes.
        if rest.len() == sealed.len() {
            rest.copy_from_slice(&sealed);
        }
        out
    }

    /// `HDECRYPT(HK, encrypted_header)`; `None` if it does not authenticate
    /// under this key or is not a version-1 header (with or without its flag).
    pub(crate) fn open(&self, encrypted: &[u8; ENCRYPTED_HEADER_LEN], ad: &[u8]) -> Option<Header> {
        let (nonce, sealed) = encrypted.split_at(HEADER_NONCE_LEN);
        let nonce: [u8; HEADER_NONCE_LEN] = nonce.try_into().ok()?;
        let plain = self.cipher().decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad: ad }).ok()?;
        Header::from_bytes(&plain)
    }
}

impl fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderKey").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn header() -> Header {
        Header {
            ratchet_key: X25519PublicKey::from_bytes([5; 32]),
            previous_counter: 7,
            counter: 0x0102_0304,
            left_answered: false,
        }
    }

    #[test]
    fn layout_is_fixed() {
        let bytes = header().to_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &[5; 32]);
        assert_eq!(&bytes[33..37], &[0, 0, 0, 7]);
        assert_eq!(&bytes[37..41], &[1, 2, 3, 4]);
        assert_eq!(Header::from_bytes(&bytes), Some(header()));
    }

    #[test]
    fn seal_open_and_reject() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let hk = HeaderKey::new(Secret32::new([9; 32]));
        let sealed = hk.seal(fresh_nonce(&mut rng), header(), b"ad");
        assert_eq!(hk.open(&sealed, b"ad"), Some(header()));
        assert_eq!(hk.open(&sealed, b"other ad"), None);
        assert_eq!(HeaderKey::new(Secret32::new([8; 32])).open(&sealed, b"ad"), None);
        for i in 0..ENCRYPTED_HEADER_LEN {
            let mut bad = sealed;
            bad[i] ^= 0x01;
            assert_eq!(hk.open(&bad, b"ad"), None, "bit flip at byte {i}");
        }
        // Fresh nonce each time: two seals of the same header differ.
        assert_ne!(hk.seal(fresh_nonce(&mut rng), header(), b"ad"), sealed);
        assert_eq!(nonce_of(&sealed), sealed[..HEADER_NONCE_LEN]);
    }

    #[test]
    fn the_flag_is_the_second_bit_of_the_first_byte() {
        let flagged = Header { left_answered: true, ..header() };
        let bytes = flagged.to_bytes();
        assert_eq!(bytes[0], 0x03);
        assert_eq!(bytes[1..], header().to_bytes()[1..]);
        assert_eq!(Header::from_bytes(&bytes), Some(flagged));
    }

    #[test]
    fn wrong_inner_version_is_rejected() {
        let mut bytes = header().to_bytes();
        // Every first byte but 0x01 and 0x03: the flag alone (0x02), other
        // bits, other versions.
        for first in (0..=u8::MAX).filter(|b| *b != 0x01 && *b != 0x03) {
            bytes[0] = first;
            assert_eq!(Header::from_bytes(&bytes), None, "first byte {first:#04x}");
        }
        assert_eq!(Header::from_bytes(&bytes[..40]), None);
    }
}
