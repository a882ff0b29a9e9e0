//! Message keys: one ChaCha20-Poly1305 key and nonce per message.

use std::fmt;

use chacha20poly1305::{
    ChaCha20Poly1305, Key, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

use crate::{kdf, keys::Secret32};

/// The seed `HMAC(CK_i, 0x01)` of message `i`, from which its AEAD key and
/// nonce are expanded. Skipped keys are stored in this form.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MessageKey {
    seed: Secret32,
    counter: u32,
}

impl MessageKey {
    pub(crate) fn new(seed: Secret32, counter: u32) -> Self {
        Self { seed, counter }
    }

    pub(crate) fn counter(&self) -> u32 {
        self.counter
    }

    pub(crate) fn seed(&self) -> &Secret32 {
        &self.seed
    }

    fn cipher(&self) -> (ChaCha20Poly1305, Nonce) {
        let material = kdf::message_key(self.seed.as_bytes());
        let key = Key::from(*material.key);
        let cipher = ChaCha20Poly1305::new(&key);
        (cipher, Nonce::from(material.nonce))
    }

    /// Seals the padded plaintext with associated data `ad`.
    pub(crate) fn seal(&self, padded: &[u8], ad: &[u8]) -> Vec<u8> {
        let (cipher, nonce) = self.cipher();
        // ChaCha20-Poly1305 fails only for inputs over 256 GiB; ours are capped
        // far below by MAX_PLAINTEXT_LEN.
        cipher.encrypt(&nonce, Payload { msg: padded, aad: ad }).unwrap_or_default()
    }

    /// Opens a body; `None` if the tag does not verify.
    pub(crate) fn open(&self, body: &[u8], ad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (cipher, nonce) = self.cipher();
        cipher.decrypt(&nonce, Payload { msg: body, aad: ad }).ok().map(Zeroizing::new)
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageKey").field("counter", &self.counter).finish_non_exhaustive()
    }
}
