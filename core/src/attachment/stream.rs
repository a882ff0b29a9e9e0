//! Attachments a piece at a time: [`Encryptor`] and [`Decryptor`] take the
//! file in pieces of any size, as an app's own stream or a network download
//! yields them, and hand back the bytes they can already produce. Same
//! construction and checks as [`super::encrypt`] and [`super::decrypt`];
//! memory stays at one chunk's buffer to encrypt and two to decrypt (the
//! sealed chunk and its opening), whatever the file's size (the hash runs
//! on the caller's thread here).
//!
//! ```
//! use samizdat::attachment::{Attachment, Decryptor, Encryptor};
//!
//! let file = vec![3u8; 200_000];
//! let mut encryptor = Encryptor::new();
//! let mut blob = Vec::new();
//! for piece in file.chunks(10_000) {
//!     encryptor.update(piece, &mut blob)?;
//! }
//! let sent: Attachment = encryptor.finish(&mut blob)?;
//!
//! let mut decryptor = Decryptor::new(&sent);
//! let mut out = Vec::new();
//! for piece in blob.chunks(4_096) {
//!     decryptor.update(piece, &mut out)?;
//! }
//! decryptor.finish()?; // the length, the padding and the digest
//! assert_eq!(out, file);
//! # Ok::<(), samizdat::attachment::AttachmentError>(())
//! ```

use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{
    Attachment, AttachmentError, CHUNK_LEN, DigestHash, MAX_ATTACHMENT_LEN, TAG_LEN, body_len, chunks_of,
    ciphertext_len, fresh_key, is_last, open_into, pad, padded_len, plaintext_of, seal_in_place,
};
use crate::keys::Secret32;

/// Encrypts an attachment given a piece at a time under a fresh random key
/// (see the module documentation). Every full chunk is sealed as soon as it is
/// complete; [`Self::finish`] pads and seals the rest.
pub struct Encryptor {
    key: Secret32,
    cipher: ChaCha20Poly1305,
    hash: DigestHash,
    /// The chunk being filled, with room for its tag.
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    index: u64,
    plaintext_len: u64,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor").field("plaintext_len", &self.plaintext_len).finish_non_exhaustive()
    }
}

impl Default for Encryptor {
    fn default() -> Self {
        Self::new()
    }
}

impl Encryptor {
    /// An encryptor under a fresh random key.
    pub fn new() -> Self {
        Self::with_key(fresh_key())
    }

    /// An encryptor under `key` (which must never encrypt another file).
    pub(crate) fn with_key(key: Secret32) -> Self {
        let cipher = ChaCha20Poly1305::new(key.as_bytes().into());
        Self {
            key,
            cipher,
            hash: DigestHash::default(),
            buf: Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN]),
            filled: 0,
            index: 0,
            plaintext_len: 0,
        }
    }

    /// Takes the next `plaintext` bytes and appends to `out` every chunk
    /// they complete, sealed.
    ///
    /// # Errors
    /// [`AttachmentError::TooLarge`] past [`MAX_ATTACHMENT_LEN`] bytes in
    /// all (nothing of this piece is then taken).
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let total = self
            .plaintext_len
            .checked_add(plaintext.len() as u64)
            .filter(|total| *total <= MAX_ATTACHMENT_LEN)
            .ok_or(AttachmentError::TooLarge { max: MAX_ATTACHMENT_LEN })?;
        let mut rest = plaintext;
        while !rest.is_empty() {
            let room = CHUNK_LEN.saturating_sub(self.filled);
            let (now, later) = rest.split_at_checked(room.min(rest.len())).unwrap_or((rest, &[]));
            let end = self.filled.saturating_add(now.len());
            self.buf.get_mut(self.filled..end).ok_or(AttachmentError::WrongLength)?.copy_from_slice(now);
            self.filled = end;
            rest = later;
            // A full chunk is never the last: the padding follows.
            if self.filled == CHUNK_LEN {
                self.seal(CHUNK_LEN, false, out)?;
            }
        }
        self.plaintext_len = total;
        Ok(())
    }

    /// Pads the file, seals what is left, appends it to `out`, and returns
    /// the [`Attachment`] to send.
    ///
    /// # Errors
    /// None in practice ([`AttachmentError::TooLarge`] cannot happen after
    /// [`Self::update`] accepted every piece).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Attachment, AttachmentError> {
        let padded = padded_len(self.plaintext_len);
        let chunks = chunks_of(padded);
        let mut marker = true;
        loop {
            let len = body_len(padded, self.index);
            pad(&mut self.buf, self.filled, len, &mut marker);
            let last = is_last(self.index, chunks);
            self.seal(len, last, out)?;
            if last {
                break;
            }
        }
        let digest = self.hash.finish();
        let plaintext_len = self.plaintext_len;
        Ok(Attachment { key: self.key.clone(), digest, plaintext_len, ciphertext_len: ciphertext_len(plaintext_len) })
    }

    /// Seals the first `len` bytes of the buffer as the next chunk.
    fn seal(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let sealed = seal_in_place(&self.cipher, &mut self.buf, len, self.index, last)?;
        self.hash.update(sealed);
        out.extend_from_slice(sealed);
        self.index = self.index.saturating_add(1);
        self.filled = 0;
        Ok(())
    }
}

/// Decrypts an attachment given a piece at a time (see the
/// module documentation). Each chunk is checked as soon as it is complete and its
/// plaintext handed back; [`Self::finish`] checks that the file ended where
/// it must, its padding and the digest of the whole ciphertext. Until
/// `finish` succeeds, treat what came out as unconfirmed: on any error,
/// discard all of it.
///
/// After an error, every further call fails with
/// [`AttachmentError::Finished`].
pub struct Decryptor {
    cipher: ChaCha20Poly1305,
    digest: [u8; 32],
    plaintext_len: u64,
    padded: u64,
    chunks: u64,
    hash: DigestHash,
    /// The sealed chunk being gathered.
    sealed: Zeroizing<Vec<u8>>,
    filled: usize,
    /// Where the opened chunk goes.
    opened: Zeroizing<Vec<u8>>,
    index: u64,
    padding_ok: bool,
    failed: bool,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("plaintext_len", &self.plaintext_len)
            .field("chunk", &self.index)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor of the file `attachment` describes.
    pub fn new(attachment: &Attachment) -> Self {
        let padded = padded_len(attachment.plaintext_len);
        Self {
            cipher: attachment.cipher(),
            digest: attachment.digest,
            plaintext_len: attachment.plaintext_len,
            padded,
            chunks: chunks_of(padded),
            hash: DigestHash::default(),
            sealed: Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN]),
            filled: 0,
            opened: Zeroizing::new(vec![0u8; CHUNK_LEN]),
            index: 0,
            padding_ok: true,
            failed: false,
        }
    }

    /// Takes the next `ciphertext` bytes and appends to `out` the plaintext
    /// of every chunk they complete.
    ///
    /// # Errors
    /// [`AttachmentError::Unauthenticated`] for a chunk that does not open;
    /// [`AttachmentError::WrongLength`] for bytes past the end of the file;
    /// [`AttachmentError::Finished`] after an earlier error. What this call
    /// appended before failing is left in `out`: discard it with the rest.
    pub fn update(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if self.failed {
            return Err(AttachmentError::Finished);
        }
        let result = self.take(ciphertext, out);
        self.failed = result.is_err();
        result
    }

    fn take(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let mut rest = ciphertext;
        while !rest.is_empty() {
            if self.index >= self.chunks {
                return Err(AttachmentError::WrongLength);
            }
            let len = body_len(self.padded, self.index);
            let sealed_len = len.saturating_add(TAG_LEN);
            let room = sealed_len.saturating_sub(self.filled);
            let (now, later) = rest.split_at_checked(room.min(rest.len())).unwrap_or((rest, &[]));
            let end = self.filled.saturating_add(now.len());
            self.sealed.get_mut(self.filled..end).ok_or(AttachmentError::WrongLength)?.copy_from_slice(now);
            self.filled = end;
            rest = later;
            if self.filled == sealed_len {
                let sealed = self.sealed.get(..sealed_len).ok_or(AttachmentError::WrongLength)?;
                let last = is_last(self.index, self.chunks);
                let body = open_into(&self.cipher, sealed, len, self.index, last, &mut self.opened)?;
                self.hash.update(sealed);
                let start = self.index.saturating_mul(CHUNK_LEN as u64);
                let (plaintext, padding_ok) = plaintext_of(body, start, self.plaintext_len);
                out.extend_from_slice(plaintext);
                self.padding_ok &= padding_ok;
                self.index = self.index.saturating_add(1);
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Checks that the whole file came, that its padding is as it must be,
    /// and that the ciphertext's BLAKE3 digest is the attachment's.
    ///
    /// # Errors
    /// [`AttachmentError::WrongLength`] if the file was cut short;
    /// [`AttachmentError::Mismatch`] for another digest or a wrong padding;
    /// [`AttachmentError::Finished`] after an earlier error.
    pub fn finish(self) -> Result<(), AttachmentError> {
        if self.failed {
            return Err(AttachmentError::Finished);
        }
        if self.index != self.chunks || self.filled != 0 {
            return Err(AttachmentError::WrongLength);
        }
        let digest: [u8; 32] = self.hash.finish();
        if !self.padding_ok || !bool::from(digest.ct_eq(&self.digest)) {
            return Err(AttachmentError::Mismatch);
        }
        Ok(())
    }
}
