//! Strict protobuf decoding: exactly one encoding of each value is accepted.
//!
//! Every protobuf this crate reads (messages, bundles, stored records and
//! rows) goes through [`decode`] or [`decode_secret`]. They accept `bytes`
//! only if `bytes` is the canonical encoding (PROTOCOL.md 12.3) of the value
//! they decode to: known fields only, each at most once, in increasing field
//! number, with their declared wire type, minimal varints, values in range
//! (`uint32` below 2^32, `bool` 0 or 1), implicit-presence fields omitted when
//! they hold their default, and nothing after the last field.
//!
//! The check is "parse, re-encode, compare": prost parses leniently (it skips
//! unknown fields, merges repeats, lets the last `oneof` member win, accepts
//! non-minimal varints and truncates an over-wide `uint32`), but its encoder
//! writes only canonical encodings, so a value that re-encodes to other bytes
//! was not given canonically. Whatever the reason, the error is the same,
//! [`DecodeError::Protobuf`], so two conforming decoders cannot disagree on
//! which error a malformed input gives.

use prost::Message;
use zeroize::{Zeroize, Zeroizing};

use crate::DecodeError;

/// Decodes `bytes` as an `M`, accepting only its canonical encoding.
///
/// # Errors
/// [`DecodeError::Protobuf`] if `bytes` is not the canonical encoding of an `M`.
pub(crate) fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, DecodeError> {
    let value = M::decode(bytes)?;
    if value.encoded_len() != bytes.len() || value.encode_to_vec() != bytes {
        return Err(DecodeError::Protobuf);
    }
    Ok(value)
}

/// As [`decode`], for a record that holds secrets: the parsed value (also a
/// value left half-parsed by an error), every copy prost makes of a `bytes`
/// field on the way ([`WipingBuf`]) and the re-encoding used for the check
/// are wiped on drop, on every path.
///
/// # Errors
/// [`DecodeError::Protobuf`] if `bytes` is not the canonical encoding of an `M`.
pub(crate) fn decode_secret<M: Message + Default + Zeroize>(bytes: &[u8]) -> Result<Zeroizing<M>, DecodeError> {
    let mut value = Zeroizing::new(M::default());
    value.merge(WipingBuf(bytes))?;
    if value.encoded_len() != bytes.len() {
        return Err(DecodeError::Protobuf);
    }
    let again = Zeroizing::new(value.encode_to_vec());
    if again.as_slice() != bytes {
        return Err(DecodeError::Protobuf);
    }
    Ok(value)
}

/// A byte slice as prost's input, whose [`bytes::Buf::copy_to_bytes`] hands
/// out copies that wipe themselves when dropped. prost decodes a `bytes`
/// field by taking such a copy of it and then copying that into the field:
/// with a plain slice the first copy is a [`bytes::Bytes`] freed unwiped,
/// a copy of every key a record holds left in freed memory (found by the
/// outside audit of device linking, `core/tests/audit_linking.rs`).
struct WipingBuf<'a>(&'a [u8]);

/// The owner of a copy handed to prost: wiped when the last `Bytes` of it is
/// dropped.
struct Wiped(Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl bytes::Buf for WipingBuf<'_> {
    fn remaining(&self) -> usize {
        self.0.len()
    }

    fn chunk(&self) -> &[u8] {
        self.0
    }

    fn advance(&mut self, count: usize) {
        self.0 = self.0.get(count..).unwrap_or_default();
    }

    fn copy_to_bytes(&mut self, len: usize) -> bytes::Bytes {
        let (head, tail) = self.0.split_at(len.min(self.0.len()));
        self.0 = tail;
        bytes::Bytes::from_owner(Wiped(head.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use samizdat_proto::wire as pb;

    use super::*;

    fn decode_ratchet(bytes: &[u8]) -> Result<pb::RatchetMessage, DecodeError> {
        decode::<pb::RatchetMessage>(bytes)
    }

    /// `RatchetMessage { header: [0xaa], body: [0xbb, 0xcc] }`, canonically.
    const CANONICAL: [u8; 7] = [0x0a, 0x01, 0xaa, 0x12, 0x02, 0xbb, 0xcc];

    #[test]
    fn the_canonical_encoding_is_accepted() {
        let message = decode_ratchet(&CANONICAL).unwrap();
        assert_eq!(message.header, [0xaa]);
        assert_eq!(message.body.as_ref(), [0xbb, 0xcc]);
        assert_eq!(decode_ratchet(&[]).unwrap(), pb::RatchetMessage::default());
    }

    /// Each of these parses under the lenient proto3 rules to the same value
    /// (or to one whose encoding differs), and each is refused.
    #[test]
    fn every_other_encoding_is_refused() {
        let cases: [(&str, &[u8]); 10] = [
            ("fields reordered", &[0x12, 0x02, 0xbb, 0xcc, 0x0a, 0x01, 0xaa]),
            ("field repeated", &[0x0a, 0x01, 0x00, 0x0a, 0x01, 0xaa, 0x12, 0x02, 0xbb, 0xcc]),
            ("unknown field", &[0x0a, 0x01, 0xaa, 0x12, 0x02, 0xbb, 0xcc, 0x18, 0x01]),
            ("non-minimal length", &[0x0a, 0x81, 0x00, 0xaa, 0x12, 0x02, 0xbb, 0xcc]),
            ("non-minimal key", &[0x8a, 0x00, 0x01, 0xaa, 0x12, 0x02, 0xbb, 0xcc]),
            ("default given", &[0x0a, 0x00, 0x0a, 0x01, 0xaa, 0x12, 0x02, 0xbb, 0xcc]),
            ("known field, wrong wire type", &[0x08, 0x01, 0x12, 0x02, 0xbb, 0xcc]),
            ("field number 0", &[0x02, 0x00, 0x0a, 0x01, 0xaa]),
            ("group", &[0x1b, 0x1c, 0x0a, 0x01, 0xaa]),
            ("truncated", &[0x0a, 0x05, 0xaa]),
        ];
        for (name, bytes) in cases {
            assert_eq!(decode_ratchet(bytes), Err(DecodeError::Protobuf), "{name}");
        }
    }

    #[test]
    fn out_of_range_scalars_are_refused() {
        use samizdat_proto::storage;
        // `SeenBaseKey`-style record with a `uint32` (field 1 of `PreKeyEntry`
        // is not needed: any message with a uint32 and a bool will do).
        let good = pb::PqPreKey { id: 7, public_key: vec![], signature: vec![], last_resort: true };
        let bytes = good.encode_to_vec();
        assert_eq!(bytes, [0x08, 0x07, 0x20, 0x01]);
        assert_eq!(decode::<pb::PqPreKey>(&bytes).unwrap(), good);
        // id = 2^32 + 7: prost keeps the low 32 bits; the re-encoding differs.
        let wide = [0x08, 0x87, 0x80, 0x80, 0x80, 0x10, 0x20, 0x01];
        assert_eq!(decode::<pb::PqPreKey>(&wide), Err(DecodeError::Protobuf));
        // last_resort = 2: prost reads `true`; the re-encoding says 1.
        assert_eq!(decode::<pb::PqPreKey>(&[0x08, 0x07, 0x20, 0x02]), Err(DecodeError::Protobuf));
        // The secret-holding variant applies the same rule.
        let seen = storage::SeenBaseKey::default();
        assert!(decode_secret::<storage::SeenBaseKey>(&seen.encode_to_vec()).is_ok());
        assert_eq!(decode_secret::<storage::SeenBaseKey>(&[0xf8, 0x01, 0x00]).map(|_| ()), Err(DecodeError::Protobuf));
    }

    #[test]
    fn a_oneof_given_twice_is_refused() {
        let ratchet = pb::Envelope {
            body: Some(pb::envelope::Body::Ratchet(pb::RatchetMessage { header: vec![1], body: vec![2].into() })),
        }
        .encode_to_vec();
        let prekey =
            pb::Envelope { body: Some(pb::envelope::Body::Prekey(pb::PreKeyMessage::default())) }.encode_to_vec();
        assert!(decode::<pb::Envelope>(&ratchet).is_ok());
        assert!(decode::<pb::Envelope>(&prekey).is_ok());
        assert_eq!(decode::<pb::Envelope>(&[prekey.clone(), ratchet.clone()].concat()), Err(DecodeError::Protobuf));
        assert_eq!(decode::<pb::Envelope>(&[ratchet.clone(), ratchet].concat()), Err(DecodeError::Protobuf));
    }
}
