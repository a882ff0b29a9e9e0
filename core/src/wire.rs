//! The wire envelope: protobuf to typed values, in one place.
//!
//! Every encoded message is one version byte ([`WIRE_VERSION`]) followed by a
//! protobuf `samizdat.wire.v1.Envelope`. Decoding checks the size limit first,
//! then the version, then parses the envelope and every field's length. The
//! generated protobuf types never leave this module.

use prost::Message as _;
use samizdat_proto::wire as pb;

use crate::{
    DecodeError,
    keys::{IdentityKey, MLKEM_CIPHERTEXT_LEN, X25519PublicKey, fixed},
    limits::MAX_MESSAGE_LEN,
    padding::MIN_BUCKET,
    ratchet::{ENCRYPTED_HEADER_LEN, message_key::TAG_LEN},
};

/// The version byte that starts every message of protocol v1.
pub const WIRE_VERSION: u8 = 1;

/// A Double Ratchet message: the encrypted header and the encrypted body.
#[derive(Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    header: [u8; ENCRYPTED_HEADER_LEN],
    body: Vec<u8>,
}

impl RatchetMessage {
    pub(crate) fn new(header: [u8; ENCRYPTED_HEADER_LEN], body: Vec<u8>) -> Self {
        Self { header, body }
    }

    /// The encrypted header (nonce, sealed header, tag).
    pub fn header(&self) -> &[u8; ENCRYPTED_HEADER_LEN] {
        &self.header
    }

    /// The encrypted, padded body with its tag.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Encodes the message for the wire: version byte, then the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.clone().into_bytes()
    }

    /// As [`Self::to_bytes`], without copying the body first.
    pub fn into_bytes(self) -> Vec<u8> {
        encode_envelope(pb::envelope::Body::Ratchet(self.into_proto()))
    }

    /// Decodes a message encoded by [`Self::to_bytes`].
    ///
    /// # Errors
    /// A [`DecodeError`] if the bytes are not a well-formed ratchet message
    /// (including an envelope of another kind: [`DecodeError::UnknownKind`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match Message::from_bytes(bytes)? {
            Message::Ratchet(message) => Ok(message),
            Message::PreKey(_) => Err(DecodeError::UnknownKind),
        }
    }

    fn into_proto(self) -> pb::RatchetMessage {
        pb::RatchetMessage { header: self.header.to_vec(), body: self.body.into() }
    }

    fn from_proto(message: pb::RatchetMessage) -> Result<Self, DecodeError> {
        let header = fixed::<ENCRYPTED_HEADER_LEN>(&message.header, "ratchet.header")?;
        if message.body.len() < MIN_BUCKET + TAG_LEN {
            return Err(DecodeError::InvalidLength {
                field: "ratchet.body",
                expected: MIN_BUCKET + TAG_LEN,
                actual: message.body.len(),
            });
        }
        // The decoder's own copy, unshared: converted without a copy.
        Ok(Self { header, body: message.body.into() })
    }
}

impl std::fmt::Debug for RatchetMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RatchetMessage").field("body_len", &self.body.len()).finish_non_exhaustive()
    }
}

/// The PQXDH values an initiator sends with its messages until it hears back.
#[derive(Clone, PartialEq, Eq)]
pub struct PreKeyHeader {
    pub(crate) identity_key: IdentityKey,
    pub(crate) base_key: X25519PublicKey,
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
    pub(crate) pq_prekey_id: u32,
    pub(crate) pq_ciphertext: Box<[u8; MLKEM_CIPHERTEXT_LEN]>,
}

impl PreKeyHeader {
    /// The initiator's identity key.
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// The initiator's ephemeral key `EK_A` (the "base key").
    pub fn base_key(&self) -> X25519PublicKey {
        self.base_key
    }

    /// Ids of the responder's prekeys used: `(signed, one-time X25519, ML-KEM)`.
    pub fn prekey_ids(&self) -> (u32, Option<u32>, u32) {
        (self.signed_prekey_id, self.one_time_prekey_id, self.pq_prekey_id)
    }
}

impl std::fmt::Debug for PreKeyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreKeyHeader")
            .field("identity_key", &self.identity_key)
            .field("base_key", &self.base_key)
            .field("prekey_ids", &self.prekey_ids())
            .finish_non_exhaustive()
    }
}

/// A first message of a session: the prekey header and a ratchet message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PreKeyMessage {
    pub(crate) header: PreKeyHeader,
    pub(crate) message: RatchetMessage,
}

impl PreKeyMessage {
    /// The prekey header.
    pub fn header(&self) -> &PreKeyHeader {
        &self.header
    }

    /// The ratchet message it carries.
    pub fn message(&self) -> &RatchetMessage {
        &self.message
    }
}

/// Any message of the one-to-one protocol.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// A message carrying the PQXDH prekey header.
    PreKey(Box<PreKeyMessage>),
    /// A message of an established session.
    Ratchet(RatchetMessage),
}

impl Message {
    /// Encodes the message: version byte, then the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.clone().into_bytes()
    }

    /// As [`Self::to_bytes`], without copying the body first.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Ratchet(message) => message.into_bytes(),
            Self::PreKey(prekey) => {
                let PreKeyMessage { header: h, message } = *prekey;
                encode_envelope(pb::envelope::Body::Prekey(pb::PreKeyMessage {
                    identity_key: h.identity_key.as_bytes().to_vec(),
                    base_key: h.base_key.as_bytes().to_vec(),
                    signed_prekey_id: h.signed_prekey_id,
                    one_time_prekey_id: h.one_time_prekey_id,
                    pq_prekey_id: h.pq_prekey_id,
                    pq_ciphertext: h.pq_ciphertext.to_vec(),
                    message: Some(message.into_proto()),
                }))
            }
        }
    }

    /// Decodes any message, checking the size limit, the version, the kind
    /// and every field (lengths; the identity key is a full-order Ed25519 key;
    /// the base key is not of small order).
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match decode_envelope(bytes)? {
            pb::envelope::Body::Ratchet(message) => Ok(Self::Ratchet(RatchetMessage::from_proto(message)?)),
            pb::envelope::Body::Prekey(prekey) => {
                let identity_key = IdentityKey::from_slice(&prekey.identity_key)
                    .map_err(|_| DecodeError::InvalidValue("prekey.identity_key"))?;
                let base_key = X25519PublicKey::from_slice(&prekey.base_key, "prekey.base_key")?;
                if base_key.is_small_order() {
                    return Err(DecodeError::InvalidValue("prekey.base_key"));
                }
                let pq_ciphertext =
                    Box::new(fixed::<MLKEM_CIPHERTEXT_LEN>(&prekey.pq_ciphertext, "prekey.pq_ciphertext")?);
                let message = prekey.message.ok_or(DecodeError::MissingField("prekey.message"))?;
                Ok(Self::PreKey(Box::new(PreKeyMessage {
                    header: PreKeyHeader {
                        identity_key,
                        base_key,
                        signed_prekey_id: prekey.signed_prekey_id,
                        one_time_prekey_id: prekey.one_time_prekey_id,
                        pq_prekey_id: prekey.pq_prekey_id,
                        pq_ciphertext,
                    },
                    message: RatchetMessage::from_proto(message)?,
                })))
            }
            // A group message is not a one-to-one message (PROTOCOL.md 12.4).
            pb::envelope::Body::Group(_) => Err(DecodeError::UnknownKind),
        }
    }
}

pub(crate) fn encode_envelope(body: pb::envelope::Body) -> Vec<u8> {
    let envelope = pb::Envelope { body: Some(body) };
    let mut out = Vec::with_capacity(envelope.encoded_len().saturating_add(1));
    out.push(WIRE_VERSION);
    // Encoding into a Vec cannot run out of space.
    let _ = envelope.encode(&mut out);
    out
}

/// Checks size and version, then parses the envelope and returns its body.
pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<pb::envelope::Body, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_MESSAGE_LEN });
    }
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(u32::from(version)));
    }
    if is_unknown_kind(rest) {
        return Err(DecodeError::UnknownKind);
    }
    crate::codec::decode::<pb::Envelope>(rest)?.body.ok_or(DecodeError::UnknownKind)
}

/// Whether `envelope` is one well-formed length-delimited field whose number
/// is not a message kind of this release (PROTOCOL.md 12.4 check 5): a kind
/// added by a later version. Its content is not looked at.
fn is_unknown_kind(envelope: &[u8]) -> bool {
    is_unknown_field(envelope, 3)
}

/// Whether `bytes` is one well-formed length-delimited field whose number is
/// above `last_known` (and a valid field number): a `oneof` member of a later
/// release. Its content is not looked at.
pub(crate) fn is_unknown_field(bytes: &[u8], last_known: u64) -> bool {
    let Some((key, rest)) = read_varint(bytes) else { return false };
    let Some((len, rest)) = read_varint(rest) else { return false };
    let (field, wire_type) = (key >> 3, key & 7);
    wire_type == 2
        && field > last_known
        && field < 0x2000_0000
        && usize::try_from(len).is_ok_and(|len| len == rest.len())
}

/// Reads one minimally encoded varint of at most 5 bytes (a value below
/// 2^35, enough for a field key or a length within the size limit).
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let last = bytes.iter().take(5).position(|byte| byte & 0x80 == 0)?;
    let (groups, rest) = bytes.split_at_checked(last.checked_add(1)?)?;
    if let [_, .., 0] = groups {
        return None; // a final group of zero: not minimal
    }
    // At most 5 groups of 7 bits: no bit is shifted out of the u64.
    let value = groups.iter().rev().fold(0u64, |value, byte| value.wrapping_shl(7) | u64::from(byte & 0x7f));
    Some((value, rest))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> RatchetMessage {
        RatchetMessage::new([0x11; ENCRYPTED_HEADER_LEN], vec![0x22; 80])
    }

    #[test]
    fn round_trip_and_layout() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes[0], WIRE_VERSION);
        // Envelope field 2 (ratchet), length-delimited.
        assert_eq!(bytes[1], 0x12);
        assert_eq!(RatchetMessage::from_bytes(&bytes).unwrap(), sample());
    }

    #[test]
    fn typed_errors() {
        assert_eq!(RatchetMessage::from_bytes(&[]), Err(DecodeError::Empty));
        let mut bytes = sample().to_bytes();
        bytes[0] = 2;
        assert_eq!(RatchetMessage::from_bytes(&bytes), Err(DecodeError::UnsupportedVersion(2)));
        assert_eq!(RatchetMessage::from_bytes(&[1]), Err(DecodeError::UnknownKind));
        // An envelope whose only field is one this release does not know (field 9).
        assert_eq!(RatchetMessage::from_bytes(&[1, 0x4a, 0x00]), Err(DecodeError::UnknownKind));
        assert_eq!(RatchetMessage::from_bytes(&[1, 0x12, 0x05, 0x0a]), Err(DecodeError::Protobuf));
        let big = vec![1u8; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            RatchetMessage::from_bytes(&big),
            Err(DecodeError::TooLarge { len: MAX_MESSAGE_LEN + 1, max: MAX_MESSAGE_LEN })
        );
        let short = RatchetMessage::new([0; ENCRYPTED_HEADER_LEN], vec![0; 79]).to_bytes();
        assert!(matches!(
            RatchetMessage::from_bytes(&short),
            Err(DecodeError::InvalidLength { field: "ratchet.body", .. })
        ));
        let bad_header = encode_envelope(pb::envelope::Body::Ratchet(pb::RatchetMessage {
            header: vec![0; ENCRYPTED_HEADER_LEN - 1],
            body: vec![0; 80].into(),
        }));
        assert!(matches!(
            RatchetMessage::from_bytes(&bad_header),
            Err(DecodeError::InvalidLength { field: "ratchet.header", .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RatchetMessage::from_bytes(&bytes);
        }

        #[test]
        fn arbitrary_envelopes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = vec![WIRE_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = RatchetMessage::from_bytes(&framed);
        }
    }
}
