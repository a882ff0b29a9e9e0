//! Message keys: one ChaCha20-Poly1305 key and nonce per message.

use std::fmt;

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag, aead::inout::InOutBuf};
use zeroize::{Zeroize, Zeroizing};

use super::header::HEADER_NONCE_LEN;
use crate::{kdf, keys::Secret32};

/// The seed `HMAC(CK_i, 0x01)` of message `i`, from which its AEAD key and
/// nonce are expanded, salted by the message's header nonce. Skipped keys are
/// stored in this form.
///
/// A skipped key loaded from a session row whose seeds are stored apart (the
/// device keeps them in their own row, read only when needed) has its counter
/// but no seed until they are attached: it cannot open anything.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MessageKey {
    seed: Option<Secret32>,
    counter: u32,
}

impl MessageKey {
    pub(crate) fn new(seed: Secret32, counter: u32) -> Self {
        Self { seed: Some(seed), counter }
    }

    /// A skipped key whose seed is stored apart and not loaded.
    pub(crate) fn apart(counter: u32) -> Self {
        Self { seed: None, counter }
    }

    pub(crate) fn counter(&self) -> u32 {
        self.counter
    }

    /// The seed, unless it is stored apart and not loaded.
    pub(crate) fn seed(&self) -> Option<&Secret32> {
        self.seed.as_ref()
    }

    pub(crate) fn has_seed(&self) -> bool {
        self.seed.is_some()
    }

    /// Gives a key loaded without its seed its seed.
    pub(crate) fn attach(&mut self, seed: Secret32) {
        self.seed = Some(seed);
    }

    /// The AEAD key and nonce of this message: the seed expanded with the
    /// message's header nonce as salt ([`kdf::message_key`]); `None` without a seed.
    fn cipher(&self, header_nonce: &[u8; HEADER_NONCE_LEN]) -> Option<(ChaCha20Poly1305, Nonce)> {
        let material = kdf::message_key(self.seed.as_ref()?.as_bytes(), header_nonce);
        // Keyed from the wiping buffer itself: no unwiped copy of the key on
        // the stack. The cipher wipes its own copy on drop (`zeroize` feature).
        let cipher = ChaCha20Poly1305::new_from_slice(material.key.as_slice())
            .unwrap_or_else(|_| unreachable!("a ChaCha20-Poly1305 key is 32 bytes"));
        Some((cipher, Nonce::from(material.nonce)))
    }

    /// Seals the padded plaintext in `buffer` in place with associated data
    /// `ad` and appends the 16-byte tag: `buffer` becomes the body. Give it
    /// [`TAG_LEN`] spare bytes of capacity so that it never moves (a move
    /// would leave a copy of the plaintext behind). `header_nonce` is the
    /// random nonce of the message's encrypted header.
    pub(crate) fn seal_in_place(&self, buffer: &mut Vec<u8>, ad: &[u8], header_nonce: &[u8; HEADER_NONCE_LEN]) {
        // Only chain keys encrypt, and they always have their seed; never
        // leave plaintext behind if one did not.
        let Some((cipher, nonce)) = self.cipher(header_nonce) else { return buffer.zeroize() };
        match cipher.encrypt_inout_detached(&nonce, ad, buffer.as_mut_slice().into()) {
            Ok(tag) => buffer.extend_from_slice(&tag),
            // ChaCha20-Poly1305 fails only for inputs over 256 GiB; ours are
            // capped far below by MAX_PLAINTEXT_LEN. Never leave plaintext.
            Err(_) => buffer.zeroize(),
        }
    }

    /// Opens a body, decrypting straight from it into a new buffer; `None`
    /// if the tag does not verify (then nothing was decrypted). The buffer
    /// holds plaintext: wipe it if it is not handed to the app.
    pub(crate) fn open(
        &self,
        body: &[u8],
        ad: &[u8],
        header_nonce: &[u8; HEADER_NONCE_LEN],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let (ciphertext, tag) = body.split_at_checked(body.len().checked_sub(TAG_LEN)?)?;
        let tag = Tag::try_from(tag).ok()?;
        let mut out = Zeroizing::new(vec![0u8; ciphertext.len()]);
        let (cipher, nonce) = self.cipher(header_nonce)?;
        let buffer = InOutBuf::new(ciphertext, out.as_mut_slice()).ok()?;
        cipher.decrypt_inout_detached(&nonce, ad, buffer, &tag).ok()?;
        Some(out)
    }
}

/// Length of the ChaCha20-Poly1305 tag that ends a body.
pub(crate) const TAG_LEN: usize = 16;

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageKey").field("counter", &self.counter).finish_non_exhaustive()
    }
}
