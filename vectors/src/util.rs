//! Hex, randomness and error helpers shared by the vector files.

use chacha20::{ChaCha20Rng, rand_core::Rng};
use samizdat::{DecodeError, DecryptError, hazmat::FixedBytes};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Why a case could not be computed: the field at fault and what is wrong.
#[derive(Debug, Clone)]
pub(crate) struct VErr {
    pub(crate) field: String,
    pub(crate) message: String,
}

/// The result of a computation over a case.
pub(crate) type R<T> = Result<T, VErr>;

/// A [`VErr`] on `field`.
pub(crate) fn err(field: impl Into<String>, message: impl Into<String>) -> VErr {
    VErr { field: field.into(), message: message.into() }
}

/// Lower-case hex.
pub(crate) fn h(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

/// Decodes the hex input `field`.
pub(crate) fn bytes(field: &str, text: &str) -> R<Vec<u8>> {
    hex::decode(text).map_err(|e| err(field, format!("not hex: {e}")))
}

/// Decodes the hex input `field`, which must be `N` bytes long.
pub(crate) fn array<const N: usize>(field: &str, text: &str) -> R<[u8; N]> {
    let v = bytes(field, text)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| err(field, format!("has {} bytes, expected {N}", v.len())))
}

/// `N` bytes from the generator.
pub(crate) fn random<const N: usize>(rng: &mut ChaCha20Rng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

/// `n` bytes from the generator.
pub(crate) fn random_vec(rng: &mut ChaCha20Rng, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rng.fill_bytes(&mut out);
    out
}

/// Hex of `n` random bytes.
pub(crate) fn random_hex(rng: &mut ChaCha20Rng, n: usize) -> String {
    h(random_vec(rng, n))
}

/// Fails unless the scripted generator gave out exactly the bytes listed.
pub(crate) fn check_drawn(field: &str, rng: &FixedBytes, listed: usize) -> R<()> {
    if rng.drawn() == listed {
        Ok(())
    } else {
        Err(err(field, format!("{listed} random bytes are listed, the computation drew {}", rng.drawn())))
    }
}

/// Fails if two computations of the same value disagree (the public API and
/// the single steps of `hazmat`): the vector would not show what the code does.
pub(crate) fn agree(field: &str, api: &[u8], steps: &[u8]) -> R<()> {
    if api == steps {
        Ok(())
    } else {
        Err(err(field, format!("the API gives {}, the single steps give {}", h(api), h(steps))))
    }
}

/// SHA-256.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A [`DecodeError`] as JSON: `{"error": "too_large", "len": .., "max": ..}`.
pub(crate) fn decode_error(e: &DecodeError) -> Value {
    match e {
        DecodeError::Empty => json!({"error": "empty"}),
        DecodeError::TooLarge { len, max } => json!({"error": "too_large", "len": len, "max": max}),
        DecodeError::UnsupportedVersion(v) => json!({"error": "unsupported_version", "version": v}),
        DecodeError::Protobuf => json!({"error": "protobuf"}),
        DecodeError::UnknownKind => json!({"error": "unknown_kind"}),
        DecodeError::MissingField(field) => json!({"error": "missing_field", "field": field}),
        DecodeError::InvalidLength { field, expected, actual } => {
            json!({"error": "invalid_length", "field": field, "expected": expected, "actual": actual})
        }
        DecodeError::InvalidValue(field) => json!({"error": "invalid_value", "field": field}),
        other => json!({"error": format!("{other:?}")}),
    }
}

/// A [`DecryptError`] as JSON: `{"error": "duplicate", "counter": 3}`.
pub(crate) fn decrypt_error(e: &DecryptError) -> Value {
    match e {
        DecryptError::Duplicate { counter } => json!({"error": "duplicate", "counter": counter}),
        DecryptError::Rollback { counter } => json!({"error": "rollback", "counter": counter}),
        DecryptError::TooFarAhead { gap, max } => json!({"error": "too_far_ahead", "gap": gap, "max": max}),
        DecryptError::Unauthenticated => json!({"error": "unauthenticated"}),
        DecryptError::NoMatchingState => json!({"error": "no_matching_state"}),
        DecryptError::KeyEvicted { counter } => json!({"error": "key_evicted", "counter": counter}),
        DecryptError::Malformed(inner) => json!({"error": "malformed", "cause": decode_error(inner)}),
        other => json!({"error": format!("{other:?}")}),
    }
}

/// ChaCha20-Poly1305 (RFC 8439): ciphertext || tag.
pub(crate) fn chacha20poly1305_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> R<Vec<u8>> {
    use chacha20poly1305::{
        ChaCha20Poly1305, Key, KeyInit, Nonce,
        aead::{Aead, Payload},
    };
    ChaCha20Poly1305::new(&Key::from(*key))
        .encrypt(&Nonce::from(*nonce), Payload { msg: plaintext, aad })
        .map_err(|_| err("body", "ChaCha20-Poly1305 refused to seal"))
}

/// XChaCha20-Poly1305: nonce || ciphertext || tag.
pub(crate) fn xchacha20poly1305_seal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plaintext: &[u8]) -> R<Vec<u8>> {
    use chacha20poly1305::{
        Key, KeyInit, XChaCha20Poly1305, XNonce,
        aead::{Aead, Payload},
    };
    let sealed = XChaCha20Poly1305::new(&Key::from(*key))
        .encrypt(&XNonce::from(*nonce), Payload { msg: plaintext, aad })
        .map_err(|_| err("sealed", "XChaCha20-Poly1305 refused to seal"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A protobuf varint (PROTOCOL.md 12.3), minimal.
#[allow(clippy::cast_possible_truncation)] // masked to 7 bits first
pub(crate) fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push((value & 0x7f) as u8);
    out
}

/// The same value as [`varint`], one byte longer: a final group of zero.
pub(crate) fn non_minimal_varint(value: u64) -> Vec<u8> {
    let mut out = varint(value);
    if let Some(last) = out.last_mut() {
        *last |= 0x80;
    }
    out.push(0x00);
    out
}
