//! Attachments (PROTOCOL.md 22): files of any size encrypted under a fresh
//! key, padded, checked whole or read by range. Translation only, as in the
//! rest of the crate: the construction is `samizdat::attachment`.
//!
//! - By file path: [`encrypt_attachment_file`] and
//!   [`decrypt_attachment_file`] (the output appears only once everything
//!   checked), [`read_attachment_range`] (a video player's seek).
//! - A piece at a time, for the app's own streams: [`AttachmentEncryptor`]
//!   and [`AttachmentDecryptor`] (`update`, then `finish`).
//! - What travels inside a message: [`Attachment::to_bytes`] (81 bytes,
//!   secret: it holds the key), read back with [`Attachment::from_bytes`].
//!
//! Failures are [`SamizdatError::InvalidMessage`] for a blob or a
//! description that does not check (drop it), `LimitExceeded` past the
//! largest size or range, `InvalidArgument` for a range outside the file or
//! a stream used after it failed, and `StoreFailure` for a file that cannot
//! be read or written.

use std::sync::{Arc, Mutex, PoisonError};

use samizdat::attachment::{self, AttachmentError};

use crate::{Bytes, FilePath, SamizdatError, error::Details};

impl From<AttachmentError> for SamizdatError {
    fn from(error: AttachmentError) -> Self {
        SamizdatError::from_core(error.kind(), error.to_string(), Details::None)
    }
}

/// What the recipient needs to fetch, check and decrypt an attachment: its
/// key, the BLAKE3 digest of its ciphertext and both lengths. Send
/// [`Self::to_bytes`] inside an encrypted message (never in the clear: it
/// holds the key).
#[derive(Debug, uniffi::Object)]
pub struct Attachment {
    inner: attachment::Attachment,
}

#[uniffi::export]
impl Attachment {
    /// Reads the 81 bytes of [`Self::to_bytes`]; `InvalidMessage` if they
    /// are not a description (another length or version, lengths that
    /// disagree).
    #[uniffi::constructor]
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Arc<Self>, SamizdatError> {
        let bytes = zeroize::Zeroizing::new(bytes);
        Ok(Arc::new(Self { inner: attachment::Attachment::from_bytes(&bytes)? }))
    }

    /// The description to send inside a message: 81 bytes, secret.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes().to_vec()
    }

    /// The plaintext's length in bytes.
    pub fn plaintext_len(&self) -> i64 {
        i64::try_from(self.inner.plaintext_len()).unwrap_or(i64::MAX)
    }

    /// The ciphertext's length in bytes (what the server stores; padded).
    pub fn ciphertext_len(&self) -> i64 {
        i64::try_from(self.inner.ciphertext_len()).unwrap_or(i64::MAX)
    }

    /// The BLAKE3 digest of the ciphertext (32 bytes): the blob the server
    /// returns must have it.
    pub fn digest(&self) -> Vec<u8> {
        self.inner.digest().to_vec()
    }
}

/// Encrypts the file at `input_path` into a new file at `output_path` (the
/// blob to upload; replaced if it exists, only once complete) under a fresh
/// key, in constant memory; returns its [`Attachment`].
#[uniffi::export]
pub fn encrypt_attachment_file(input_path: FilePath, output_path: FilePath) -> Result<Arc<Attachment>, SamizdatError> {
    Ok(Arc::new(Attachment {
        inner: attachment::encrypt_file(&input_path.into_path("input_path")?, &output_path.into_path("output_path")?)?,
    }))
}

/// Decrypts the blob at `input_path` into a new file at `output_path`,
/// checking every chunk, the length, the padding and the digest; the file
/// appears at `output_path` only if everything checked (on an error,
/// nothing is left there that was not before).
#[uniffi::export]
pub fn decrypt_attachment_file(
    attachment: Arc<Attachment>,
    input_path: FilePath,
    output_path: FilePath,
) -> Result<(), SamizdatError> {
    Ok(attachment::decrypt_file(
        &attachment.inner,
        &input_path.into_path("input_path")?,
        &output_path.into_path("output_path")?,
    )?)
}

/// The plaintext bytes `offset .. offset + len` of the blob at
/// `input_path`, decrypting only the chunks they fall in (each one
/// authenticated; the whole file's digest and padding are not checked, so
/// the bytes are the file's only if the blob is the one the description
/// names: where the sender is not trusted, decrypt the blob whole once,
/// e.g. with `decryptAttachmentFile`, before reading ranges of it;
/// PROTOCOL.md 22.2). At most 16 MiB at once (`LimitExceeded` past it);
/// `InvalidArgument` for a range outside the file.
#[uniffi::export]
pub fn read_attachment_range(
    attachment: Arc<Attachment>,
    input_path: FilePath,
    offset: i64,
    len: i64,
) -> Result<Vec<u8>, SamizdatError> {
    let (offset, len) = (crate::non_negative("offset", offset)?, crate::non_negative("len", len)?);
    Ok(attachment::read_range(&attachment.inner, &input_path.into_path("input_path")?, offset, len)?.to_vec())
}

/// Encrypts an attachment given a piece at a time (wrap the app's own
/// stream around it): [`Self::update`] with each piece, in order, returns
/// the sealed bytes ready so far (whole 64 KiB chunks); [`Self::finish`]
/// returns the last ones and the [`Attachment`]. Memory stays at one chunk.
#[derive(uniffi::Object)]
pub struct AttachmentEncryptor {
    inner: Mutex<Option<attachment::Encryptor>>,
}

/// What [`AttachmentEncryptor::finish`] returns.
#[derive(uniffi::Record)]
pub struct SealedTail {
    /// The last sealed bytes of the blob (after everything `update`
    /// returned).
    pub ciphertext: Bytes,
    /// The description to send.
    pub attachment: Arc<Attachment>,
}

/// A stream used after `finish` or after it failed.
fn finished() -> SamizdatError {
    AttachmentError::Finished.into()
}

#[uniffi::export]
impl AttachmentEncryptor {
    /// An encryptor under a fresh random key.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(Some(attachment::Encryptor::new())) })
    }

    /// Takes the next `plaintext` bytes; returns the sealed bytes they
    /// complete (possibly none).
    pub fn update(&self, plaintext: Vec<u8>) -> Result<Vec<u8>, SamizdatError> {
        let plaintext = zeroize::Zeroizing::new(plaintext);
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let encryptor = guard.as_mut().ok_or_else(finished)?;
        let mut out = Vec::with_capacity(plaintext.len().saturating_add(attachment::TAG_LEN));
        encryptor.update(&plaintext, &mut out)?;
        Ok(out)
    }

    /// Pads and seals the rest; returns the last sealed bytes and the
    /// [`Attachment`]. The encryptor is then spent.
    pub fn finish(&self) -> Result<SealedTail, SamizdatError> {
        let encryptor = self.inner.lock().unwrap_or_else(PoisonError::into_inner).take().ok_or_else(finished)?;
        let mut ciphertext = Vec::new();
        let inner = encryptor.finish(&mut ciphertext)?;
        Ok(SealedTail { ciphertext: ciphertext.into(), attachment: Arc::new(Attachment { inner }) })
    }
}

/// Decrypts an attachment given a piece at a time: [`Self::update`] with
/// each piece of the blob, in order, returns the plaintext of the chunks
/// completed so far; [`Self::finish`] checks the end of the file, the
/// padding and the digest. Until `finish` succeeded, the plaintext is
/// unconfirmed: on any error, discard all of it. After an error, every call
/// fails with `InvalidArgument`.
#[derive(uniffi::Object)]
pub struct AttachmentDecryptor {
    inner: Mutex<Option<attachment::Decryptor>>,
}

#[uniffi::export]
impl AttachmentDecryptor {
    /// A decryptor of the file `attachment` describes.
    #[uniffi::constructor]
    pub fn new(attachment: Arc<Attachment>) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(Some(attachment::Decryptor::new(&attachment.inner))) })
    }

    /// Takes the next `ciphertext` bytes; returns the plaintext of the
    /// chunks they complete (possibly none).
    pub fn update(&self, ciphertext: Vec<u8>) -> Result<Vec<u8>, SamizdatError> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let decryptor = guard.as_mut().ok_or_else(finished)?;
        let mut out = Vec::with_capacity(ciphertext.len());
        decryptor.update(&ciphertext, &mut out)?;
        Ok(out)
    }

    /// Checks that the whole blob came, its padding and its digest. The
    /// decryptor is then spent.
    pub fn finish(&self) -> Result<(), SamizdatError> {
        let decryptor = self.inner.lock().unwrap_or_else(PoisonError::into_inner).take().ok_or_else(finished)?;
        Ok(decryptor.finish()?)
    }
}
