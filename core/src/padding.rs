//! Plaintext padding, so that ciphertext lengths leak little.
//!
//! A plaintext of `n` bytes is followed by one `0x80` byte and then zero bytes
//! up to the bucket size `b(n + 1)`:
//!
//! - `b(m) = 64` for `m <= 64`;
//! - the next power of two for `64 < m <= 4096`;
//! - the next multiple of 4096 above that.
//!
//! So a ciphertext reveals the length class of the message, never its exact
//! length. Removing the padding checks it exactly; a padding that does not
//! verify is reported by the caller as an authentication failure, never as an
//! error an attacker could tell apart.

use crate::limits::MAX_PLAINTEXT_LEN;

/// The smallest bucket.
pub(crate) const MIN_BUCKET: usize = 64;
/// Above this size buckets grow linearly rather than by powers of two.
pub(crate) const LINEAR_STEP: usize = 4096;
/// The byte that ends the plaintext of an app message (and a stored value).
const MARKER: u8 = 0x80;
/// The byte that ends the content of a control message: content the library
/// exchanges with a peer's library inside a session (PROTOCOL.md 5.2), never
/// handed to the app.
const CONTROL_MARKER: u8 = 0x81;

/// What a padded plaintext holds, as its end marker says: like TLS 1.3's
/// inner content type, it is inside the encryption, so only the two ends of
/// a session see it and nobody between can change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentType {
    /// The app's message (marker `0x80`).
    App,
    /// A control message between the two libraries (marker `0x81`).
    Control,
}

impl ContentType {
    fn marker(self) -> u8 {
        match self {
            Self::App => MARKER,
            Self::Control => CONTROL_MARKER,
        }
    }
}

/// The padded length of a plaintext of `len` bytes.
pub(crate) fn padded_len(len: usize) -> usize {
    let needed = len.saturating_add(1);
    if needed <= MIN_BUCKET {
        MIN_BUCKET
    } else if needed <= LINEAR_STEP {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(LINEAR_STEP).saturating_mul(LINEAR_STEP)
    }
}

/// Pads `plaintext`; `None` if it is longer than [`MAX_PLAINTEXT_LEN`].
#[cfg(any(test, feature = "hazmat"))]
pub(crate) fn pad(plaintext: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    pad_with_room(plaintext, 0).map(zeroize::Zeroizing::new)
}

/// Pads `plaintext` into a buffer with `room` spare bytes of capacity (for
/// an AEAD tag appended in place, so that the buffer never moves while it
/// holds plaintext). The caller wipes or encrypts it.
pub(crate) fn pad_with_room(plaintext: &[u8], room: usize) -> Option<Vec<u8>> {
    pad_content(plaintext, room, ContentType::App)
}

/// As [`pad_with_room`], ending the content with the marker of `content`.
pub(crate) fn pad_content(plaintext: &[u8], room: usize, content: ContentType) -> Option<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return None;
    }
    let len = padded_len(plaintext.len());
    let mut out = Vec::with_capacity(len.saturating_add(room));
    out.extend_from_slice(plaintext);
    out.push(content.marker());
    out.resize(len, 0);
    Some(out)
}

/// Removes the padding; `None` unless `padded` is exactly what [`pad`] makes.
#[cfg(any(test, feature = "hazmat"))]
pub(crate) fn unpad(padded: &[u8]) -> Option<&[u8]> {
    padded.get(..unpadded_len(padded)?)
}

/// The length of the plaintext inside `padded`; `None` unless `padded` is
/// exactly what [`pad_with_room`] makes.
pub(crate) fn unpadded_len(padded: &[u8]) -> Option<usize> {
    match unpadded_content(padded)? {
        (len, ContentType::App) => Some(len),
        (_, ContentType::Control) => None,
    }
}

/// The length of the content inside `padded` and its type; `None` unless
/// `padded` is exactly what [`pad_content`] makes.
pub(crate) fn unpadded_content(padded: &[u8]) -> Option<(usize, ContentType)> {
    // The last non-zero byte: skip zero words first (the padding can be 4 KiB).
    let mut end = padded.len();
    for word in padded.rchunks_exact(8) {
        if word != [0u8; 8] {
            break;
        }
        end = end.saturating_sub(8);
    }
    let content = padded.get(..end)?.iter().rposition(|&b| b != 0)?;
    let kind = match padded.get(content) {
        Some(&MARKER) => ContentType::App,
        Some(&CONTROL_MARKER) => ContentType::Control,
        _ => return None,
    };
    if padded.len() != padded_len(content) {
        return None;
    }
    Some((content, kind))
}

/// The smallest padded size of a sealed store value: large enough that
/// small rows (the identity row with a user id of any allowed length, a few
/// skipped keys' seeds, the key check) all look alike.
pub(crate) const MIN_ROW_BUCKET: usize = 512;

/// The padded length of a stored value of `len` bytes: the bucket of a
/// plaintext of that length, at least [`MIN_ROW_BUCKET`].
pub(crate) fn row_padded_len(len: usize) -> usize {
    padded_len(len).max(MIN_ROW_BUCKET)
}

/// Pads a value to be stored (no length limit: stored values are not
/// messages) into a wiping buffer with `room` spare bytes of capacity.
pub(crate) fn pad_row(value: &[u8], room: usize) -> zeroize::Zeroizing<Vec<u8>> {
    let len = row_padded_len(value.len());
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(len.saturating_add(room)));
    out.extend_from_slice(value);
    out.push(MARKER);
    out.resize(len, 0);
    out
}

/// The length of the value inside a padded stored value; `None` unless it
/// is exactly what [`pad_row`] makes.
pub(crate) fn unpadded_row_len(padded: &[u8]) -> Option<usize> {
    let mut end = padded.len();
    for word in padded.rchunks_exact(8) {
        if word != [0u8; 8] {
            break;
        }
        end = end.saturating_sub(8);
    }
    let content = padded.get(..end)?.iter().rposition(|&b| b != 0)?;
    if padded.get(content) != Some(&MARKER) || padded.len() != row_padded_len(content) {
        return None;
    }
    Some(content)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bucket_sizes() {
        assert_eq!(padded_len(0), 64);
        assert_eq!(padded_len(63), 64);
        assert_eq!(padded_len(64), 128);
        assert_eq!(padded_len(127), 128);
        assert_eq!(padded_len(128), 256);
        assert_eq!(padded_len(4095), 4096);
        assert_eq!(padded_len(4096), 8192);
        assert_eq!(padded_len(8191), 8192);
        assert_eq!(padded_len(8192), 12288);
    }

    #[test]
    fn too_long_is_refused() {
        assert!(pad(&vec![0; MAX_PLAINTEXT_LEN]).is_some());
        assert!(pad(&vec![0; MAX_PLAINTEXT_LEN + 1]).is_none());
    }

    #[test]
    fn malformed_padding_is_rejected() {
        assert_eq!(unpad(&[]), None);
        assert_eq!(unpad(&[0; 64]), None);
        let mut p = pad(b"hi").unwrap();
        p[2] = 0x81;
        assert_eq!(unpad(&p), None, "wrong marker");
        let p = pad(b"hi").unwrap();
        assert_eq!(unpad(&p[..63]), None, "wrong bucket");
        let mut long = p.to_vec();
        long.extend_from_slice(&[0; 64]);
        assert_eq!(unpad(&long), None, "too much padding");
    }

    #[test]
    fn control_content_is_told_apart_and_never_read_as_app_content() {
        let control = pad_content(b"ctl", 0, ContentType::Control).unwrap();
        assert_eq!(control[3], 0x81);
        assert_eq!(unpadded_content(&control), Some((3, ContentType::Control)));
        assert_eq!(unpad(&control), None);
        let app = pad(b"ctl").unwrap();
        assert_eq!(unpadded_content(&app), Some((3, ContentType::App)));
        let mut other = app.to_vec();
        other[3] = 0x82;
        assert_eq!(unpadded_content(&other), None);
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let p = pad(&data).unwrap();
            prop_assert_eq!(p.len(), padded_len(data.len()));
            prop_assert!(p.len() > data.len());
            prop_assert_eq!(unpad(&p), Some(&data[..]));
        }

        #[test]
        fn unpad_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unpad(&data);
            let _ = unpadded_row_len(&data);
        }

        #[test]
        fn rows_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let p = pad_row(&data, 0);
            prop_assert_eq!(p.len(), row_padded_len(data.len()));
            prop_assert!(p.len() >= MIN_ROW_BUCKET && p.len() > data.len());
            prop_assert_eq!(unpadded_row_len(&p), Some(data.len()));
        }
    }
}
