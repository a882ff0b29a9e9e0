//! Attachments: files of any size encrypted as a stream, in constant memory,
//! padded, and readable by byte range (PROTOCOL.md 22).
//!
//! A file is encrypted under a fresh random 32-byte key. Its plaintext,
//! followed by the padding `0x80 || 0x00…` up to a size class
//! ([`padded_len`]), is cut into chunks of [`CHUNK_LEN`] bytes (the last one
//! shorter or equal), and chunk `i` is sealed with ChaCha20-Poly1305 under
//! the key and the nonce `u88be(i) || last`, `last` being `0x01` for the
//! final chunk and `0x00` for every other (a STREAM construction: each
//! chunk's place and the end of the file are bound into its nonce). So a
//! chunk moved, repeated, dropped, or any bit flipped fails to open, and a
//! file cut short or extended is refused.
//!
//! What travels in the message is an [`Attachment`]: the key, the BLAKE3
//! digest of the ciphertext (so that the server's copy is checked whole),
//! and both lengths, 81 bytes ([`Attachment::to_bytes`]). The ciphertext
//! goes to the server as a blob.
//!
//! ```
//! use samizdat::attachment::{self, Attachment};
//!
//! let photo = vec![7u8; 100_000];
//! let mut blob = Vec::new();
//! let sent: Attachment = attachment::encrypt(&photo[..], &mut blob)?;
//! // `sent.to_bytes()` goes inside an encrypted message; `blob` to the server.
//! let received = Attachment::from_bytes(&sent.to_bytes())?;
//! let mut out = Vec::new();
//! attachment::decrypt(&received, &blob[..], &mut out)?;
//! assert_eq!(out, photo);
//! // A video player seeks: only the chunks the range covers are read.
//! let mut range = Vec::new();
//! attachment::decrypt_range(&received, std::io::Cursor::new(&blob), 70_000, 20, &mut range)?;
//! assert_eq!(range, photo[70_000..70_020]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    fmt,
    io::{self, Read, Seek, SeekFrom, Write},
};

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag, aead::inout::InOutBuf};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::Secret32;

mod file;
mod pipeline;
mod stream;

pub use file::{MAX_RANGE_LEN, decrypt_file, encrypt_file, read_range};
use pipeline::{Job, Pipeline};
pub use stream::{Decryptor, Encryptor};

/// The plaintext bytes of every chunk but the last (64 KiB).
pub const CHUNK_LEN: usize = 64 * 1024;
/// The bytes a chunk's tag adds.
pub const TAG_LEN: usize = 16;
/// The least padded length: a file of fewer bytes is padded to this, so that
/// small files (a short voice note, a thumbnail) all look alike.
pub const MIN_PADDED_LEN: u64 = 1024;
/// The largest plaintext: 2^48 bytes (256 TiB), far above any file, so that
/// every length and offset computation stays exact in 64 bits.
pub const MAX_ATTACHMENT_LEN: u64 = 1 << 48;
/// The length of [`Attachment::to_bytes`].
pub const ATTACHMENT_LEN: usize = 1 + 32 + 32 + 8 + 8;
/// The version byte of [`Attachment::to_bytes`]: 2, the digest being
/// BLAKE3 (version 1, never released, had SHA-256's; it is refused as
/// [`AttachmentError::Malformed`] rather than failing as a mismatch).
const ATTACHMENT_VERSION: u8 = 2;

/// The hash of the digest (PROTOCOL.md 22.2): BLAKE3 with a 32-byte output,
/// of the whole ciphertext in order.
///
/// BLAKE3 rather than SHA-256, the library's hash elsewhere: the digest
/// covers every byte of a file, and over a 64 KiB chunk SHA-256 (with the
/// SHA extensions) costs about 36 µs beside sealing's 42 µs, where BLAKE3
/// costs 11 to 14 µs (BENCHMARKS.md, "Attachments"). Both give 128-bit collision resistance,
/// which is all the digest needs: it binds the description to one blob
/// (the ciphertext is public, so nothing here is secret or keyed). Boxed:
/// the state is about 2 KiB, and moves between the pipeline's threads.
#[derive(Clone, Default)]
pub(super) struct DigestHash(Box<blake3::Hasher>);

impl DigestHash {
    /// Hashes `bytes` after what was hashed so far.
    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The 32-byte digest of everything hashed.
    pub(super) fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// The padded length of a plaintext of `len` bytes: Padmé (Nikitin et al.,
/// PETS 2019) of `len + 1` (room for the `0x80` marker), at least
/// [`MIN_PADDED_LEN`]. Padmé keeps the top `⌊log2 e⌋ + 1` bits of the length
/// `L` (`e = ⌊log2 L⌋`) and rounds the rest up, so the length leaks
/// `O(log log L)` bits and the overhead is at most 12 %.
pub fn padded_len(len: u64) -> u64 {
    let total = len.saturating_add(1);
    // e = ⌊log2 total⌋ (total ≥ 1); s = ⌊log2 e⌋ + 1 (0 for e = 0).
    let e = 63u32.saturating_sub(total.leading_zeros());
    let s = 32u32.saturating_sub(e.leading_zeros());
    let low_bits = e.saturating_sub(s);
    let mask = (1u64 << low_bits).saturating_sub(1);
    let padme = total.saturating_add(mask) & !mask;
    padme.max(MIN_PADDED_LEN)
}

/// The number of chunks of a file whose padded length is `padded`.
fn chunks_of(padded: u64) -> u64 {
    padded.div_ceil(CHUNK_LEN as u64)
}

/// Whether chunk `index` of `chunks` is the last.
fn is_last(index: u64, chunks: u64) -> bool {
    index.checked_add(1) == Some(chunks)
}

/// The plaintext (padding included) bytes of chunk `index` of a file whose
/// padded length is `padded`: [`CHUNK_LEN`], or fewer for the last.
fn body_len(padded: u64, index: u64) -> usize {
    let start = index.saturating_mul(CHUNK_LEN as u64);
    let len = padded.saturating_sub(start).min(CHUNK_LEN as u64);
    usize::try_from(len).unwrap_or(CHUNK_LEN)
}

/// Where chunk `index` starts in the ciphertext.
fn chunk_offset(index: u64) -> u64 {
    index.saturating_mul((CHUNK_LEN + TAG_LEN) as u64)
}

/// The ciphertext length of a plaintext of `len` bytes.
pub fn ciphertext_len(len: u64) -> u64 {
    let padded = padded_len(len);
    padded.saturating_add(chunks_of(padded).saturating_mul(TAG_LEN as u64))
}

/// Why an attachment could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// Reading the input or writing the output failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A chunk does not open: the ciphertext was altered, a chunk moved,
    /// repeated or taken from another file, or the key is not this file's.
    /// What was written to the output before this error must be discarded.
    #[error("chunk {chunk} of the attachment does not authenticate")]
    Unauthenticated {
        /// The chunk's index.
        chunk: u64,
    },
    /// The ciphertext is shorter or longer than the attachment says.
    #[error("the attachment's ciphertext has the wrong length")]
    WrongLength,
    /// The ciphertext's BLAKE3 digest is not the attachment's (another
    /// file, of the same length, under the same key), or its padding is not
    /// `0x80` then zeros. Discard the output.
    #[error("the attachment's digest or padding does not match")]
    Mismatch,
    /// The attachment's description (81 bytes) is malformed: another
    /// length, an unknown version, or lengths that do not agree.
    #[error("malformed attachment description")]
    Malformed,
    /// The plaintext is longer than [`MAX_ATTACHMENT_LEN`].
    #[error("the attachment is larger than {max} bytes")]
    TooLarge {
        /// [`MAX_ATTACHMENT_LEN`].
        max: u64,
    },
    /// A range longer than [`MAX_RANGE_LEN`] was asked of [`read_range`]
    /// (which returns it in memory).
    #[error("a range of {len} bytes is longer than the {max} bytes read at once")]
    RangeTooLong {
        /// The length asked for.
        len: u64,
        /// [`MAX_RANGE_LEN`].
        max: u64,
    },
    /// An [`Encryptor`] or [`Decryptor`] was used after it failed.
    #[error("the attachment stream already failed")]
    Finished,
    /// The byte range asked for is not within the plaintext.
    #[error("the range {offset}+{len} is outside the attachment's {plaintext_len} bytes")]
    OutOfRange {
        /// The first byte asked for.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// The plaintext's length.
        plaintext_len: u64,
    },
}

/// What the recipient needs to fetch, check and decrypt an attachment: its
/// key, the BLAKE3 digest of its ciphertext, and both lengths. Send
/// [`Self::to_bytes`] inside an encrypted message. The key is wiped on drop
/// and never shown by `Debug`.
#[derive(Clone)]
pub struct Attachment {
    key: Secret32,
    digest: [u8; 32],
    plaintext_len: u64,
    ciphertext_len: u64,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("plaintext_len", &self.plaintext_len)
            .field("ciphertext_len", &self.ciphertext_len)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Attachment {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.key.as_bytes().ct_eq(other.key.as_bytes()))
            && self.digest == other.digest
            && self.plaintext_len == other.plaintext_len
            && self.ciphertext_len == other.ciphertext_len
    }
}

impl Eq for Attachment {}

impl Attachment {
    /// The plaintext's length in bytes.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The ciphertext's length in bytes (what the server stores).
    pub fn ciphertext_len(&self) -> u64 {
        self.ciphertext_len
    }

    /// The BLAKE3 digest of the ciphertext (32 bytes).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// `0x02 || key (32) || digest (32) || u64be(plaintext_len) ||
    /// u64be(ciphertext_len)`: 81 bytes, secret (it holds the key).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(ATTACHMENT_LEN));
        out.push(ATTACHMENT_VERSION);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.plaintext_len.to_be_bytes());
        out.extend_from_slice(&self.ciphertext_len.to_be_bytes());
        out
    }

    /// Parses [`Self::to_bytes`]. The lengths must agree
    /// (`ciphertext_len == ciphertext_len(plaintext_len)`), and the
    /// plaintext be at most [`MAX_ATTACHMENT_LEN`].
    ///
    /// # Errors
    /// [`AttachmentError::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttachmentError> {
        let malformed = || AttachmentError::Malformed;
        if bytes.len() != ATTACHMENT_LEN || bytes.first() != Some(&ATTACHMENT_VERSION) {
            return Err(malformed());
        }
        let field = |range: std::ops::Range<usize>| bytes.get(range).ok_or_else(malformed);
        let key = Secret32::from_slice(field(1..33)?, "attachment.key").map_err(|_| malformed())?;
        let digest: [u8; 32] = field(33..65)?.try_into().map_err(|_| malformed())?;
        let plaintext_len = u64::from_be_bytes(field(65..73)?.try_into().map_err(|_| malformed())?);
        let ciphertext_len = u64::from_be_bytes(field(73..81)?.try_into().map_err(|_| malformed())?);
        if plaintext_len > MAX_ATTACHMENT_LEN || ciphertext_len != self::ciphertext_len(plaintext_len) {
            return Err(malformed());
        }
        Ok(Self { key, digest, plaintext_len, ciphertext_len })
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(self.key.as_bytes().into())
    }
}

/// The nonce of chunk `index`: `u88be(index) || last`.
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let index = index.to_be_bytes();
    let [a, b, c, d, e, f, g, h] = index;
    Nonce::from([0, 0, 0, a, b, c, d, e, f, g, h, u8::from(last)])
}

/// Reads until `buf` is full or the input ends; returns how many bytes.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else { break };
        match input.read(rest) {
            Ok(0) => break,
            // A reader that says it read more than it was given breaks
            // `Read`'s contract: the lengths would no longer be the bytes
            // sealed.
            Ok(n) if n > rest.len() => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the reader reported more bytes than it read"));
            }
            Ok(n) => filled = filled.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes all of `buf` (`Write::write_all`, which slices past the buffer,
/// and so panics, for a writer that reports more bytes than it was given:
/// here that breach of `Write`'s contract is an error).
fn write_full<W: Write>(output: &mut W, buf: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while let Some(rest) = buf.get(written..).filter(|rest| !rest.is_empty()) {
        match output.write(rest) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the writer accepted no byte")),
            Ok(n) if n > rest.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the writer reported more bytes than it was given",
                ));
            }
            Ok(n) => written = written.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encrypts everything `input` yields into `output`, under a fresh random
/// key, in memory bounded by a few chunks (at most 4 sealed chunks, about
/// 256 KiB, whatever the file's size); returns the [`Attachment`] to send.
///
/// Past the first 64 KiB chunk, the digest of the ciphertext, and a share
/// of the sealing, run on a second, scoped thread, joined before this
/// returns (if no thread can be started, on this one): `input` and `output`
/// are only ever used from the calling thread.
///
/// # Errors
/// [`AttachmentError::Io`]; [`AttachmentError::TooLarge`] past
/// [`MAX_ATTACHMENT_LEN`]. What was written to `output` is then incomplete.
pub fn encrypt<R: Read, W: Write>(input: R, output: W) -> Result<Attachment, AttachmentError> {
    encrypt_with_key(fresh_key(), input, output, None)
}

/// A fresh random key, for one file.
fn fresh_key() -> Secret32 {
    let mut fresh = Zeroizing::new([0u8; 32]);
    rand_core::Rng::fill_bytes(&mut crate::os_rng(), &mut *fresh);
    Secret32::from_zeroizing(&fresh)
}

/// [`encrypt`] under `key` (a key must never encrypt two files; the vectors'
/// `hazmat` entry point gives its own) of an input of `len` bytes, if known
/// (the second thread then starts at once, for two chunks or more).
pub(crate) fn encrypt_with_key<R: Read, W: Write>(
    key: Secret32,
    input: R,
    output: W,
    len: Option<u64>,
) -> Result<Attachment, AttachmentError> {
    let cipher = ChaCha20Poly1305::new(key.as_bytes().into());
    let (plaintext_len, digest) = std::thread::scope(|scope| {
        let mut pipeline = Pipeline::new(scope, &cipher);
        if len.is_some_and(|len| chunks_of(padded_len(len)) >= 2) {
            pipeline.start_thread();
        }
        seal_stream(input, output, pipeline)
    })?;
    Ok(Attachment { key, digest, plaintext_len, ciphertext_len: ciphertext_len(plaintext_len) })
}

/// [`encrypt_with_key`] through `pipeline` (in whose buffers the chunks are
/// read and sealed); returns the plaintext's length and the digest.
fn seal_stream<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    mut pipeline: Pipeline<'_, '_>,
) -> Result<(u64, [u8; 32]), AttachmentError> {
    let too_large = || AttachmentError::TooLarge { max: MAX_ATTACHMENT_LEN };
    let mut write = |_: Job, sealed: &[u8]| write_full(&mut output, sealed).map_err(AttachmentError::from);
    // The plaintext: every full chunk is sealed as it fills. None of them is
    // the last: the padding adds at least one byte after the plaintext.
    let mut index = 0u64;
    let mut plaintext_len = 0u64;
    let (mut buf, mut filled);
    loop {
        buf = pipeline.buffer(&mut write)?;
        filled = match read_full(&mut input, buf.get_mut(..CHUNK_LEN).ok_or_else(too_large)?) {
            Ok(filled) => filled,
            Err(error) => {
                // The chunks read before are written first (a failing
                // writer is reported before a failing reader).
                pipeline.drain(&mut write)?;
                return Err(error.into());
            }
        };
        plaintext_len = plaintext_len.saturating_add(filled as u64);
        if plaintext_len > MAX_ATTACHMENT_LEN {
            pipeline.drain(&mut write)?;
            return Err(too_large());
        }
        if filled < CHUNK_LEN {
            break;
        }
        // A full chunk: the file has two chunks or more.
        pipeline.start_thread();
        pipeline.submit(buf, CHUNK_LEN, Job::Seal { index, last: false })?;
        index = index.saturating_add(1);
    }
    // The padding: 0x80, then zeros up to the padded length, chunk by chunk.
    let padded = padded_len(plaintext_len);
    let chunks = chunks_of(padded);
    let mut marker = true;
    loop {
        let len = body_len(padded, index);
        pad(&mut buf, filled, len, &mut marker);
        let last = is_last(index, chunks);
        pipeline.submit(buf, len, Job::Seal { index, last })?;
        if last {
            break;
        }
        index = index.saturating_add(1);
        buf = pipeline.buffer(&mut write)?;
        filled = 0;
    }
    let digest = pipeline.finish(&mut write)?;
    Ok((plaintext_len, digest))
}

/// Seals the first `len` bytes of `buf` in place as chunk `index`, its tag
/// after them; returns the sealed chunk (`len + TAG_LEN` bytes).
fn seal_in_place<'b>(
    cipher: &ChaCha20Poly1305,
    buf: &'b mut [u8],
    len: usize,
    index: u64,
    last: bool,
) -> Result<&'b [u8], AttachmentError> {
    let too_large = || AttachmentError::TooLarge { max: MAX_ATTACHMENT_LEN };
    let sealed_len = len.checked_add(TAG_LEN).ok_or_else(too_large)?;
    let sealed = buf.get_mut(..sealed_len).ok_or_else(too_large)?;
    let (body, tag) = sealed.split_at_mut_checked(len).ok_or_else(too_large)?;
    let made = cipher.encrypt_inout_detached(&chunk_nonce(index, last), &[], body.into()).map_err(|_| too_large())?;
    tag.copy_from_slice(&made);
    Ok(sealed)
}

/// Opens the sealed chunk `index` (`len` bytes then the tag) into `out`
/// (at least `len` bytes), leaving `sealed` as it was; returns the opened
/// bytes, padding included.
fn open_into<'o>(
    cipher: &ChaCha20Poly1305,
    sealed: &[u8],
    len: usize,
    index: u64,
    last: bool,
    out: &'o mut [u8],
) -> Result<&'o [u8], AttachmentError> {
    let (ciphertext, tag) = sealed.split_at_checked(len).ok_or(AttachmentError::WrongLength)?;
    let tag = Tag::try_from(tag).map_err(|_| AttachmentError::WrongLength)?;
    let body = out.get_mut(..len).ok_or(AttachmentError::WrongLength)?;
    let inout = InOutBuf::new(ciphertext, &mut *body).map_err(|_| AttachmentError::WrongLength)?;
    cipher
        .decrypt_inout_detached(&chunk_nonce(index, last), &[], inout, &tag)
        .map_err(|_| AttachmentError::Unauthenticated { chunk: index })?;
    Ok(body)
}

/// Opens the sealed chunk `index` (`len` bytes then the tag, at the start
/// of `buf`) in place; returns the opened bytes, padding included. On an
/// error `buf` is left as it was.
fn open_in_place<'b>(
    cipher: &ChaCha20Poly1305,
    buf: &'b mut [u8],
    len: usize,
    index: u64,
    last: bool,
) -> Result<&'b [u8], AttachmentError> {
    let sealed = buf.get_mut(..len.saturating_add(TAG_LEN)).ok_or(AttachmentError::WrongLength)?;
    let (body, tag) = sealed.split_at_mut_checked(len).ok_or(AttachmentError::WrongLength)?;
    let tag = Tag::try_from(&*tag).map_err(|_| AttachmentError::WrongLength)?;
    cipher
        .decrypt_inout_detached(&chunk_nonce(index, last), &[], (&mut *body).into(), &tag)
        .map_err(|_| AttachmentError::Unauthenticated { chunk: index })?;
    Ok(body)
}

/// Writes the padding into bytes `filled..len` of `buf`: `0x80` if `marker`
/// (which is then cleared: the marker is the first padding byte of the
/// file), zeros after.
fn pad(buf: &mut [u8], filled: usize, len: usize, marker: &mut bool) {
    if let Some(padding) = buf.get_mut(filled..len) {
        padding.fill(0);
        if let Some(first) = padding.first_mut().filter(|_| std::mem::take(marker)) {
            *first = 0x80;
        }
    }
}

/// Splits the opened chunk `body`, which starts at plaintext offset
/// `start`, into its plaintext and whether its padding part is as it must
/// be (`0x80` first if the plaintext ends in this chunk, then zeros); the
/// padding is checked in full, without stopping at the first wrong byte.
fn plaintext_of(body: &[u8], start: u64, plaintext_len: u64) -> (&[u8], bool) {
    let keep = usize::try_from(plaintext_len.saturating_sub(start)).unwrap_or(usize::MAX).min(body.len());
    let (plaintext, padding) = body.split_at_checked(keep).unwrap_or((body, &[]));
    let marker_here = plaintext_len >= start && !padding.is_empty();
    let mut ok = true;
    for (i, byte) in padding.iter().enumerate() {
        let expected = if i == 0 && marker_here { 0x80 } else { 0 };
        ok &= *byte == expected;
    }
    (plaintext, ok)
}

/// Reads, checks the length of and opens chunk `index` into `buf`; returns
/// its plaintext (padding included).
fn open_chunk<'b, R: Read>(
    attachment: &Attachment,
    cipher: &ChaCha20Poly1305,
    input: &mut R,
    buf: &'b mut [u8],
    index: u64,
) -> Result<&'b [u8], AttachmentError> {
    let padded = padded_len(attachment.plaintext_len);
    let len = body_len(padded, index);
    let sealed_len = len.saturating_add(TAG_LEN);
    let sealed = buf.get_mut(..sealed_len).ok_or(AttachmentError::WrongLength)?;
    if read_full(input, sealed)? != sealed_len {
        return Err(AttachmentError::WrongLength);
    }
    open_in_place(cipher, buf, len, index, is_last(index, chunks_of(padded)))
}

/// Decrypts the whole attachment from `input` into `output`, in memory
/// bounded by a few chunks (at most 4 sealed chunks, about 256 KiB),
/// checking every chunk, the end of the file, the padding and the digest of
/// the ciphertext.
///
/// The plaintext is written as it is decrypted: if this returns an error,
/// discard what was written (a chunk that did not open was not written,
/// but the digest is known only at the end). As in [`encrypt`], for a file
/// of two chunks or more the digest, and a share of the opening, run on a
/// second, scoped thread.
///
/// # Errors
/// [`AttachmentError::Unauthenticated`], [`AttachmentError::WrongLength`],
/// [`AttachmentError::Mismatch`], [`AttachmentError::Io`].
pub fn decrypt<R: Read, W: Write>(attachment: &Attachment, input: R, output: W) -> Result<(), AttachmentError> {
    let cipher = attachment.cipher();
    std::thread::scope(|scope| {
        let mut pipeline = Pipeline::new(scope, &cipher);
        if chunks_of(padded_len(attachment.plaintext_len)) >= 2 {
            pipeline.start_thread();
        }
        open_stream(attachment, input, output, pipeline)
    })
}

/// [`decrypt`] through `pipeline` (in whose buffers the sealed chunks are
/// read, hashed, then opened in place).
fn open_stream<R: Read, W: Write>(
    attachment: &Attachment,
    mut input: R,
    mut output: W,
    mut pipeline: Pipeline<'_, '_>,
) -> Result<(), AttachmentError> {
    let padded = padded_len(attachment.plaintext_len);
    let chunks = chunks_of(padded);
    let mut padding_ok = true;
    let mut write = |job: Job, body: &[u8]| {
        let Job::Open { index, .. } = job else { return Err(AttachmentError::WrongLength) };
        let start = index.saturating_mul(CHUNK_LEN as u64);
        let (plaintext, padding_here) = plaintext_of(body, start, attachment.plaintext_len);
        padding_ok &= padding_here;
        write_full(&mut output, plaintext).map_err(AttachmentError::from)
    };
    // An input that fails or ends early, or goes on after the last chunk,
    // is reported once the chunks before are released: a chunk that does
    // not open is reported first, as if each chunk were opened before the
    // next is read.
    for index in 0..chunks {
        let len = body_len(padded, index);
        let sealed_len = len.saturating_add(TAG_LEN);
        let mut sealed = pipeline.buffer(&mut write)?;
        let sealed_bytes = sealed.get_mut(..sealed_len).ok_or(AttachmentError::WrongLength)?;
        match read_full(&mut input, sealed_bytes) {
            Ok(read) if read == sealed_len => {}
            Ok(_) => {
                pipeline.drain(&mut write)?;
                return Err(AttachmentError::WrongLength);
            }
            Err(error) => {
                pipeline.drain(&mut write)?;
                return Err(error.into());
            }
        }
        pipeline.submit(sealed, len, Job::Open { index, last: is_last(index, chunks) })?;
    }
    pipeline.drain(&mut write)?;
    // Nothing after the last chunk.
    let mut extra = [0u8; 1];
    if read_full(&mut input, &mut extra)? != 0 {
        return Err(AttachmentError::WrongLength);
    }
    let digest = pipeline.finish(&mut write)?;
    if !padding_ok || !bool::from(digest.ct_eq(&attachment.digest)) {
        return Err(AttachmentError::Mismatch);
    }
    Ok(())
}

/// Decrypts the plaintext bytes `offset .. offset + len` into `output`,
/// reading and opening only the chunks they fall in (a seek to the first):
/// a video player seeks without decrypting the whole file. Each chunk is
/// authenticated (its place and whether it is the last are in its nonce);
/// the digest of the whole file and its padding are not checked. So the
/// bytes are the file's only if the blob is the one the description names:
/// where that matters (the sender is not trusted to have sealed one blob
/// only), run [`decrypt`] once over the downloaded blob into
/// [`std::io::sink`] and read ranges only from a blob that passed
/// (PROTOCOL.md 22.2).
///
/// # Errors
/// [`AttachmentError::OutOfRange`] if the range is not within the
/// plaintext; [`AttachmentError::Unauthenticated`];
/// [`AttachmentError::WrongLength`] if the input ends early;
/// [`AttachmentError::Io`].
pub fn decrypt_range<R: Read + Seek, W: Write>(
    attachment: &Attachment,
    mut input: R,
    offset: u64,
    len: u64,
    mut output: W,
) -> Result<(), AttachmentError> {
    let end = offset
        .checked_add(len)
        .filter(|end| *end <= attachment.plaintext_len)
        .ok_or(AttachmentError::OutOfRange { offset, len, plaintext_len: attachment.plaintext_len })?;
    if len == 0 {
        return Ok(());
    }
    let cipher = attachment.cipher();
    let chunk = CHUNK_LEN as u64;
    let (first, last) = (offset.div_euclid(chunk), end.saturating_sub(1).div_euclid(chunk));
    input.seek(SeekFrom::Start(chunk_offset(first)))?;
    let mut buf = Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN]);
    for index in first..=last {
        let start = index.saturating_mul(chunk);
        let body = open_chunk(attachment, &cipher, &mut input, &mut buf, index)?;
        let from = usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX);
        let to = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX).min(body.len());
        write_full(&mut output, body.get(from..to).ok_or(AttachmentError::WrongLength)?)?;
    }
    buf.zeroize();
    Ok(())
}
