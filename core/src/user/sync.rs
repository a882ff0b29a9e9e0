//! The sent sync (PROTOCOL.md 23.7): what a fan-out gives our own other
//! devices, so that each learns what we sent and to whom.
//!
//! It travels as control content (the padding's marker `0x81`, PROTOCOL.md
//! 5.2) of a one-to-one message: a `Control` whose body is field 5,
//! `sent_sync`. This module owns its encoding and parsing only; who may send
//! one (a device our own pinned list names) is the device API's check
//! (`device/fanout.rs`).

use std::fmt;

use samizdat_proto::wire as pb;
use zeroize::Zeroizing;

use crate::{DecodeError, address::MAX_USER_ID_LEN, limits::MAX_FAN_OUT_PLAINTEXT_LEN};

/// The first byte of a sent sync's control content: the key of field 5 with
/// wire type 2 (length-delimited), `5 << 3 | 2`. A one-byte key is the only
/// minimal encoding of it, so control content that starts with any other
/// byte is not a sent sync.
pub(crate) const SENT_SYNC_KEY: u8 = 0x2a;

/// A copy of what this user sent to `recipient`, for the user's other
/// devices. The plaintext is wiped on drop; `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentSync {
    /// The user id the message went to (1 to [`MAX_USER_ID_LEN`] bytes).
    pub(crate) recipient: String,
    /// The app's plaintext, as sent (at most [`MAX_FAN_OUT_PLAINTEXT_LEN`]).
    pub(crate) plaintext: Zeroizing<Vec<u8>>,
}

impl SentSync {
    /// The control content of this sync: the canonical encoding of a
    /// `Control` with body `sent_sync` (no version byte: it travels only
    /// encrypted, as control content). Wiped on drop.
    pub(crate) fn to_control_bytes(&self) -> Zeroizing<Vec<u8>> {
        use prost::Message as _;
        let control = Zeroizing::new(pb::Control {
            body: Some(pb::control::Body::SentSync(pb::SentSync {
                recipient: self.recipient.clone(),
                plaintext: self.plaintext.to_vec(),
            })),
        });
        let mut out = Zeroizing::new(Vec::with_capacity(control.encoded_len()));
        // Encoding into a Vec cannot run out of space.
        let _ = control.encode(&mut *out);
        out
    }

    /// Reads control content as a sent sync: `None` if it does not start
    /// with [`SENT_SYNC_KEY`] (another control kind, for the group and
    /// healing parser), else the sync or why it is malformed. The checks, in
    /// order (PROTOCOL.md 23.7, Y1 to Y4): the canonical encoding of a
    /// `Control` whose body is `sent_sync`; a recipient that is not empty;
    /// at most [`MAX_USER_ID_LEN`] bytes; a plaintext of at most
    /// [`MAX_FAN_OUT_PLAINTEXT_LEN`] bytes.
    pub(crate) fn from_control_bytes(content: &[u8]) -> Option<Result<Self, DecodeError>> {
        (content.first() == Some(&SENT_SYNC_KEY)).then(|| Self::parse(content))
    }

    fn parse(content: &[u8]) -> Result<Self, DecodeError> {
        let control = crate::codec::decode_secret::<pb::Control>(content)?;
        let Some(pb::control::Body::SentSync(sync)) = &control.body else {
            // Field 5 is `sent_sync`: a canonical encoding that starts with
            // its key is one.
            return Err(DecodeError::Protobuf);
        };
        if sync.recipient.is_empty() {
            return Err(DecodeError::MissingField("sent_sync.recipient"));
        }
        if sync.recipient.len() > MAX_USER_ID_LEN {
            return Err(DecodeError::InvalidValue("sent_sync.recipient"));
        }
        if sync.plaintext.len() > MAX_FAN_OUT_PLAINTEXT_LEN {
            return Err(DecodeError::InvalidValue("sent_sync.plaintext"));
        }
        Ok(Self { recipient: sync.recipient.clone(), plaintext: Zeroizing::new(sync.plaintext.clone()) })
    }
}

impl fmt::Debug for SentSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentSync")
            .field("recipient", &self.recipient)
            .field("plaintext_len", &self.plaintext.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{limits::MAX_PLAINTEXT_LEN, padding::ContentType};

    fn sync(recipient: &str, plaintext: &[u8]) -> SentSync {
        SentSync { recipient: recipient.to_owned(), plaintext: Zeroizing::new(plaintext.to_vec()) }
    }

    #[test]
    fn a_sent_sync_round_trips_and_has_the_documented_layout() {
        let value = sync("bob", b"hi");
        let bytes = value.to_control_bytes();
        // Built by hand from PROTOCOL.md 23.7: 0x2a len (0x0a 3 "bob" 0x12 2 "hi").
        let inner = [&[0x0a, 3][..], b"bob", &[0x12, 2], b"hi"].concat();
        let expected = [&[SENT_SYNC_KEY, u8::try_from(inner.len()).unwrap()][..], &inner].concat();
        assert_eq!(bytes.as_slice(), expected.as_slice());
        assert_eq!(SentSync::from_control_bytes(&bytes), Some(Ok(value)));
        // An empty plaintext is allowed (its field is absent).
        let empty = sync("bob", b"");
        assert_eq!(empty.to_control_bytes().as_slice(), &[SENT_SYNC_KEY, 5, 0x0a, 3, b'b', b'o', b'b']);
        assert_eq!(SentSync::from_control_bytes(&empty.to_control_bytes()), Some(Ok(empty)));
    }

    #[test]
    fn other_control_kinds_are_not_read_as_a_sent_sync() {
        // A reset (field 3), a distribution (field 1), a kind of a later
        // release (field 6), the empty content.
        for content in [&[0x1a, 0x00][..], &[0x0a, 0x00], &[0x32, 0x00], &[]] {
            assert_eq!(SentSync::from_control_bytes(content), None, "{content:02x?}");
        }
    }

    #[test]
    fn each_check_refuses_what_it_should() {
        let parse = |bytes: &[u8]| SentSync::from_control_bytes(bytes).unwrap();
        // Y1: not canonical (a trailing byte; a field of SentSync unknown).
        let mut trailing = sync("bob", b"x").to_control_bytes().to_vec();
        trailing.push(0);
        assert_eq!(parse(&trailing), Err(DecodeError::Protobuf));
        assert_eq!(parse(&[SENT_SYNC_KEY, 2, 0x18, 0x01]), Err(DecodeError::Protobuf));
        assert_eq!(parse(&[SENT_SYNC_KEY]), Err(DecodeError::Protobuf));
        // Y2: no recipient.
        assert_eq!(parse(&[SENT_SYNC_KEY, 0]), Err(DecodeError::MissingField("sent_sync.recipient")));
        // Y3: the user id limit, at and past it.
        let longest = "u".repeat(MAX_USER_ID_LEN);
        assert!(parse(&sync(&longest, b"x").to_control_bytes()).is_ok());
        let over = "u".repeat(MAX_USER_ID_LEN + 1);
        assert_eq!(parse(&sync(&over, b"x").to_control_bytes()), Err(DecodeError::InvalidValue("sent_sync.recipient")));
        // Y4: the plaintext limit, at and past it.
        let at = vec![7; MAX_FAN_OUT_PLAINTEXT_LEN];
        assert!(parse(&sync("bob", &at).to_control_bytes()).is_ok());
        let past = vec![7; MAX_FAN_OUT_PLAINTEXT_LEN + 1];
        assert_eq!(
            parse(&sync("bob", &past).to_control_bytes()),
            Err(DecodeError::InvalidValue("sent_sync.plaintext"))
        );
        // Not UTF-8: prost refuses the string.
        assert_eq!(parse(&[SENT_SYNC_KEY, 3, 0x0a, 1, 0xff]), Err(DecodeError::Protobuf));
    }

    /// The largest sync (the longest recipient, the largest plaintext) fits
    /// in one message's padded content: [`MAX_FAN_OUT_PLAINTEXT_LEN`] leaves
    /// room for the sync's own fields.
    #[test]
    fn the_largest_sent_sync_fits_in_one_message() {
        let largest = sync(&"u".repeat(MAX_USER_ID_LEN), &vec![1; MAX_FAN_OUT_PLAINTEXT_LEN]);
        let bytes = largest.to_control_bytes();
        assert!(bytes.len() <= MAX_PLAINTEXT_LEN, "{} bytes", bytes.len());
        assert!(crate::padding::pad_content(&bytes, 0, ContentType::Control).is_some());
    }

    #[test]
    fn debug_shows_no_plaintext() {
        let shown = format!("{:?}", sync("bob", b"secret words"));
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("plaintext_len: 12"), "{shown}");
    }
}
