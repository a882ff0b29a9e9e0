//! Attachments as files: encrypt or decrypt one file into another, whole or
//! nothing, and read a byte range of an encrypted file.
//!
//! The output is written to a temporary file beside it
//! (`.samizdat-partial-<16 random hex digits>`, in the same directory,
//! readable and writable by its owner only on Unix), synced, and renamed
//! over `output` only once everything checked: a decryption that fails (an
//! altered blob, a digest that does not match) leaves no plaintext behind
//! and `output` untouched. A crash midway can leave that temporary file,
//! holding unchecked plaintext: an app that decrypts into a directory of
//! its own can delete `.samizdat-partial-*` files there at start.
//!
//! ```
//! use samizdat::attachment;
//!
//! let dir = std::env::temp_dir().join(format!("samizdat-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! std::fs::write(dir.join("photo.jpg"), vec![9u8; 300_000])?;
//! let sent = attachment::encrypt_file(&dir.join("photo.jpg"), &dir.join("blob"))?;
//! // … `sent.to_bytes()` in a message, the blob through the server …
//! attachment::decrypt_file(&sent, &dir.join("blob"), &dir.join("received.jpg"))?;
//! assert_eq!(std::fs::read(dir.join("received.jpg"))?, vec![9u8; 300_000]);
//! let range = attachment::read_range(&sent, &dir.join("blob"), 100_000, 10)?;
//! assert_eq!(&range[..], &[9u8; 10]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use super::{Attachment, AttachmentError, decrypt, decrypt_range, encrypt_with_key, fresh_key};

/// The most bytes [`read_range`] returns at once (16 MiB): a larger range
/// is read in several calls, or with [`super::decrypt_range`] into a writer.
pub const MAX_RANGE_LEN: u64 = 16 << 20;

/// Encrypts the file at `input` into a new file at `output` (replaced if it
/// exists, only once the whole file is encrypted); returns the
/// [`Attachment`] to send. See [`super::encrypt`].
///
/// # Errors
/// [`AttachmentError::Io`] (the input cannot be read, the output cannot be
/// written); [`AttachmentError::TooLarge`].
pub fn encrypt_file(input: &Path, output: &Path) -> Result<Attachment, AttachmentError> {
    let source = File::open(input)?;
    let len = source.metadata().ok().map(|metadata| metadata.len());
    write_atomically(output, |file| encrypt_with_key(fresh_key(), source, file, len))
}

/// Decrypts the encrypted file at `input` into a new file at `output`
/// (replaced if it exists), checking everything [`super::decrypt`] checks;
/// on any error nothing is left at `output`'s place that was not there
/// before.
///
/// # Errors
/// As [`super::decrypt`].
pub fn decrypt_file(attachment: &Attachment, input: &Path, output: &Path) -> Result<(), AttachmentError> {
    let source = File::open(input)?;
    write_atomically(output, |file| decrypt(attachment, source, file))
}

/// The plaintext bytes `offset .. offset + len` of the encrypted file at
/// `input`, reading only the chunks they fall in (see
/// [`super::decrypt_range`]: each chunk is authenticated, the digest of the
/// whole file is not checked).
///
/// # Errors
/// [`AttachmentError::RangeTooLong`] past [`MAX_RANGE_LEN`]; otherwise as
/// [`super::decrypt_range`].
pub fn read_range(
    attachment: &Attachment,
    input: &Path,
    offset: u64,
    len: u64,
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    if len > MAX_RANGE_LEN {
        return Err(AttachmentError::RangeTooLong { len, max: MAX_RANGE_LEN });
    }
    let mut out = Zeroizing::new(Vec::with_capacity(usize::try_from(len).unwrap_or(0)));
    decrypt_range(attachment, File::open(input)?, offset, len, &mut *out)?;
    Ok(out)
}

/// Runs `write` on a new temporary file beside `output`, then syncs it and
/// renames it to `output`; removes it if anything failed.
fn write_atomically<T>(
    output: &Path,
    write: impl FnOnce(&mut File) -> Result<T, AttachmentError>,
) -> Result<T, AttachmentError> {
    let partial = partial_path(output);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial)?;
    let result = write(&mut file).and_then(|value| {
        file.flush()?;
        file.sync_all()?;
        Ok(value)
    });
    drop(file);
    let result = result.and_then(|value| {
        fs::rename(&partial, output)?;
        Ok(value)
    });
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// `.samizdat-partial-<16 random hex digits>` in `output`'s directory: a
/// name of fixed length, so that any output name the file system takes
/// works (a name derived from the output's could be too long).
fn partial_path(output: &Path) -> PathBuf {
    let mut tag = [0u8; 8];
    rand_core::Rng::fill_bytes(&mut crate::os_rng(), &mut tag);
    let name = format!(".samizdat-partial-{:016x}", u64::from_be_bytes(tag));
    match output.parent() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}
