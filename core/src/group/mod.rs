//! Groups: Sender Keys (PROTOCOL.md 18).
//!
//! Each member device of a group has its own sending chain per group: a
//! random chain id, a symmetric chain key stepped once per message (as the
//! one-to-one ratchet's chains are), and an Ed25519 signing key. A message is
//! encrypted once for the whole group and signed by the chain's key; the
//! chain (its key at one iteration and the signing public key) reaches each
//! member in a *distribution*, which travels only inside the pairwise
//! sessions, so it is authenticated by them and never seen by the server.
//!
//! This module is the pure protocol: the sending chain (`OwnChain`), the
//! chains kept per sender (`SenderChains`), the wire message
//! ([`GroupMessage`]) and the control messages. Membership, the store and the
//! exchange of distributions are the [`Device`](crate::device::Device)'s.

mod message;
mod receiver;
mod sender;

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag, aead::inout::InOutBuf};
use zeroize::{Zeroize, Zeroizing};

pub use self::message::{GroupMessage, SALT_LEN};
pub(crate) use self::{
    message::{Control, Distribution, Request},
    receiver::{GroupDecrypt, SenderChains},
    sender::OwnChain,
};
use crate::{
    DecodeError, EncryptError, kdf,
    keys::Secret32,
    limits::{MAX_GROUP_ID_LEN, MAX_PLAINTEXT_LEN},
    padding,
    ratchet::message_key::TAG_LEN,
};

/// A group id: 1 to [`MAX_GROUP_ID_LEN`] bytes the app chooses.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupId(Vec<u8>);

impl GroupId {
    /// Checks the length of a group id the app gives.
    pub(crate) fn new(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty() && bytes.len() <= MAX_GROUP_ID_LEN).then(|| Self(bytes.to_vec()))
    }

    /// A group id read from a message or a row.
    pub(crate) fn from_wire(bytes: &[u8], field: &'static str) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::MissingField(field));
        }
        Self::new(bytes).ok_or(DecodeError::InvalidValue(field))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId({} bytes)", self.0.len())
    }
}

/// The cipher and nonce of the message of seed `seed` and salt `salt`.
fn cipher(seed: &Secret32, salt: &[u8; SALT_LEN]) -> (ChaCha20Poly1305, Nonce) {
    let material = kdf::group_message_key(seed.as_bytes(), salt);
    // Keyed from the wiping buffer; the cipher wipes its copy on drop.
    let cipher = ChaCha20Poly1305::new_from_slice(material.key.as_slice())
        .unwrap_or_else(|_| unreachable!("a ChaCha20-Poly1305 key is 32 bytes"));
    (cipher, Nonce::from(material.nonce))
}

/// Pads `plaintext` and seals it in place: the body of a group message.
fn seal(seed: &Secret32, salt: &[u8; SALT_LEN], ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
    let too_large = EncryptError::MessageTooLarge { len: plaintext.len(), max: MAX_PLAINTEXT_LEN };
    let mut body = padding::pad_with_room(plaintext, TAG_LEN).ok_or(too_large.clone())?;
    let (cipher, nonce) = cipher(seed, salt);
    match cipher.encrypt_inout_detached(&nonce, ad, body.as_mut_slice().into()) {
        Ok(tag) => {
            body.extend_from_slice(&tag);
            Ok(body)
        }
        Err(_) => {
            body.zeroize();
            Err(too_large)
        }
    }
}

/// Opens a body and removes its padding; `None` unless it authenticates
/// and holds the app's content.
fn open(seed: &Secret32, salt: &[u8; SALT_LEN], ad: &[u8], body: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (ciphertext, tag) = body.split_at_checked(body.len().checked_sub(TAG_LEN)?)?;
    let tag = Tag::try_from(tag).ok()?;
    let mut out = Zeroizing::new(vec![0u8; ciphertext.len()]);
    let (cipher, nonce) = cipher(seed, salt);
    let buffer = InOutBuf::new(ciphertext, out.as_mut_slice()).ok()?;
    cipher.decrypt_inout_detached(&nonce, ad, buffer, &tag).ok()?;
    let len = padding::unpadded_len(&out)?;
    out.truncate(len);
    Some(out)
}

#[cfg(test)]
mod tests;
