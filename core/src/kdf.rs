//! Every key derivation of the protocol and its label.
//!
//! Nothing else in the crate calls HKDF or HMAC directly: a reader can check
//! the whole key schedule here, against the label table in `PROTOCOL.md`.
//!
//! Notation follows the Signal Double Ratchet specification: `RK` root key,
//! `CK` chain key, `MK` message key, `HK`/`NHK` header key and next header key.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// HKDF `info` of the root step `KDF_RK_HE`.
pub(crate) const ROOT_LABEL: &[u8] = b"samizdat/v1/ratchet/root";
/// HKDF `info` that turns a message key seed into a ChaCha20-Poly1305 key and nonce.
pub(crate) const MESSAGE_KEY_LABEL: &[u8] = b"samizdat/v1/ratchet/message-key";
/// HMAC input that derives a message key seed from a chain key.
pub(crate) const CHAIN_MESSAGE_SEED_INPUT: u8 = 0x01;
/// HMAC input that derives the next chain key from a chain key.
pub(crate) const CHAIN_NEXT_INPUT: u8 = 0x02;

/// Signature label of a signed X25519 prekey.
pub(crate) const SIGNED_PREKEY_LABEL: &[u8] = b"samizdat/v1/prekey/x25519-signed";
/// Signature label of a one-time ML-KEM-1024 prekey.
pub(crate) const PQ_ONE_TIME_PREKEY_LABEL: &[u8] = b"samizdat/v1/prekey/mlkem1024-one-time";
/// Signature label of a last-resort ML-KEM-1024 prekey.
pub(crate) const PQ_LAST_RESORT_PREKEY_LABEL: &[u8] = b"samizdat/v1/prekey/mlkem1024-last-resort";
/// HKDF `info` prefix of the PQXDH key derivation (followed by the transcript hash).
pub(crate) const PQXDH_LABEL: &[u8] = b"samizdat/v1/pqxdh";
/// Prefix of a session's associated data (followed by both identity keys).
pub(crate) const SESSION_AD_LABEL: &[u8] = b"samizdat/v1/session-ad";
/// The 32 bytes of 0xFF that start the PQXDH input key material (as in X3DH,
/// so it can never be mistaken for an X25519 output or an Ed25519 input).
pub(crate) const PQXDH_IKM_PREFIX: [u8; 32] = [0xff; 32];

/// The bytes an Ed25519 prekey signature covers: `label || u32-BE id || public key`.
pub(crate) fn prekey_signature_input(label: &[u8], id: u32, public_key: &[u8]) -> Vec<u8> {
    [label, &id.to_be_bytes(), public_key].concat()
}

/// Signature label of a whole bundle (followed by [`bundle_signature_input`]'s fields).
pub(crate) const BUNDLE_LABEL: &[u8] = b"samizdat/v1/bundle";

/// What a bundle's own signature covers: everything the bundle says.
///
/// ```text
/// BUNDLE_LABEL || IK (32) || u32(len(user id)) || user id || u32(device id)
///   || u32(spk id) || SPK (32)
///   || 0x00                               (no one-time X25519 prekey)
///    | 0x01 || u32(opk id) || OPK (32)
///   || kind byte (0x01 one-time, 0x02 last resort) || u32(pq id) || PQPK (1568)
/// ```
///
/// Integers are big-endian. Built by this function, never by re-encoding
/// the protobuf.
pub(crate) struct BundleFields<'a> {
    pub(crate) identity_key: &'a [u8; 32],
    pub(crate) user_id: &'a str,
    pub(crate) device_id: u32,
    pub(crate) signed_prekey: (u32, &'a [u8; 32]),
    pub(crate) one_time_prekey: Option<(u32, &'a [u8; 32])>,
    pub(crate) pq_prekey: (u8, u32, &'a [u8]),
}

/// The bytes a bundle's signature covers (see [`BundleFields`]).
pub(crate) fn bundle_signature_input(fields: &BundleFields<'_>) -> Vec<u8> {
    let user = fields.user_id.as_bytes();
    let (pq_kind, pq_id, pq_key) = fields.pq_prekey;
    // Everything but the user id and the ML-KEM key has a fixed length.
    const FIXED_LEN: usize = BUNDLE_LABEL.len() + 32 + 8 + 36 + 37 + 5;
    let mut out = Vec::with_capacity(FIXED_LEN.saturating_add(user.len()).saturating_add(pq_key.len()));
    out.extend_from_slice(BUNDLE_LABEL);
    out.extend_from_slice(fields.identity_key);
    out.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(user);
    out.extend_from_slice(&fields.device_id.to_be_bytes());
    let (spk_id, spk) = fields.signed_prekey;
    out.extend_from_slice(&spk_id.to_be_bytes());
    out.extend_from_slice(spk);
    match fields.one_time_prekey {
        None => out.push(0x00),
        Some((id, key)) => {
            out.push(0x01);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(key);
        }
    }
    out.push(pq_kind);
    out.extend_from_slice(&pq_id.to_be_bytes());
    out.extend_from_slice(pq_key);
    out
}

/// Prefix of a group message's associated data, which its signature also
/// covers (then the group id, the sender's address, the chain id, the
/// iteration and the salt; PROTOCOL.md 18.4).
pub(crate) const GROUP_MESSAGE_LABEL: &[u8] = b"samizdat/v1/group/message";
/// HKDF `info` that turns a group message key seed into a ChaCha20-Poly1305
/// key and nonce.
pub(crate) const GROUP_MESSAGE_KEY_LABEL: &[u8] = b"samizdat/v1/group/message-key";

/// `GROUP_MESSAGE_KEY(seed, salt)`: HKDF-SHA256 with salt the message's
/// 24-byte salt, ikm the seed `HMAC(CK_i, 0x01)` of its iteration, info
/// [`GROUP_MESSAGE_KEY_LABEL`]: 44 bytes, the key then the nonce. As in the
/// one-to-one ratchet, a sender restored to an earlier iteration draws
/// another salt, so it never seals twice under one key and nonce.
pub(crate) fn group_message_key(seed: &[u8; 32], salt: &[u8; MESSAGE_KEY_SALT_LEN]) -> MessageKeyMaterial {
    let okm = hkdf_expand::<44>(salt, seed, GROUP_MESSAGE_KEY_LABEL);
    let mut out = MessageKeyMaterial { key: Zeroizing::new([0; 32]), nonce: [0; 12] };
    let (key, nonce) = okm.split_at(32);
    out.key.copy_from_slice(key);
    out.nonce.copy_from_slice(nonce);
    out
}

/// HKDF `info` of the store's group-hashing key (from the app's storage
/// key): group ids are stored only as keyed hashes.
pub(crate) const STORE_GROUP_LABEL: &[u8] = b"samizdat/v1/store/group";

/// HKDF `info` of the store's row-sealing key (from the app's storage key).
pub(crate) const STORE_SEAL_LABEL: &[u8] = b"samizdat/v1/store/seal";
/// HKDF `info` of the store's address-hashing key (from the app's storage key).
pub(crate) const STORE_ADDRESS_LABEL: &[u8] = b"samizdat/v1/store/address";
/// HKDF `info` of the store's key that hashes remembered base keys into row
/// keys (from the app's storage key).
pub(crate) const STORE_BASE_KEY_LABEL: &[u8] = b"samizdat/v1/store/base-key";
/// HKDF `info` of the store's key that hashes message ids into the row keys
/// of the outbox (from the app's storage key, PROTOCOL.md 20.3).
pub(crate) const STORE_OUTBOX_LABEL: &[u8] = b"samizdat/v1/store/outbox";
/// Prefix of a sealed row's associated data (then the table and the row key).
pub(crate) const STORE_ROW_LABEL: &[u8] = b"samizdat/v1/store/row";
/// The label of the binding of a rotated store's naming keys in its check
/// row (PROTOCOL.md 14.12).
pub(crate) const STORE_NAMING_LABEL: &[u8] = b"samizdat/v1/store/naming-keys";

/// HKDF `info` of a backup's key, from the Argon2id output of the user's
/// passphrase (PROTOCOL.md 21.2).
pub(crate) const BACKUP_LABEL: &[u8] = b"samizdat/v1/backup";

/// Output of PQXDH: `RK_0 || HKa || NHKb`.
pub(crate) struct HandshakeSecrets {
    pub(crate) root_key: [u8; 32],
    pub(crate) initiator_header_key: [u8; 32],
    pub(crate) responder_header_key: [u8; 32],
}

impl Drop for HandshakeSecrets {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.root_key.zeroize();
        self.initiator_header_key.zeroize();
        self.responder_header_key.zeroize();
    }
}

/// `SK = HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS,
/// info = PQXDH_LABEL || SHA-256(transcript))`, 96 bytes split into the first
/// root key, the initiator's header key and the responder's next header key.
pub(crate) fn pqxdh(dh_outputs: &[&[u8; 32]], kem_secret: &[u8; 32], transcript_hash: &[u8; 32]) -> HandshakeSecrets {
    let parts: Vec<&[u8]> = [&PQXDH_IKM_PREFIX[..]]
        .into_iter()
        .chain(dh_outputs.iter().map(|dh| dh.as_slice()))
        .chain([kem_secret.as_slice()])
        .collect();
    // `concat` allocates the exact length once: no reallocation leaves a
    // copy of the secrets behind.
    let ikm = Zeroizing::new(parts.concat());
    let info = [PQXDH_LABEL, transcript_hash].concat();
    let okm = hkdf_expand::<96>(&[0; 32], &ikm, &info);
    let mut out = HandshakeSecrets { root_key: [0; 32], initiator_header_key: [0; 32], responder_header_key: [0; 32] };
    let (rk, rest) = okm.split_at(32);
    let (hka, hkb) = rest.split_at(32);
    out.root_key.copy_from_slice(rk);
    out.initiator_header_key.copy_from_slice(hka);
    out.responder_header_key.copy_from_slice(hkb);
    out
}

/// Output of the root step: `RK' || CK || NHK`.
pub(crate) struct RootStepOutput {
    pub(crate) root_key: Zeroizing<[u8; 32]>,
    pub(crate) chain_key: Zeroizing<[u8; 32]>,
    pub(crate) next_header_key: Zeroizing<[u8; 32]>,
}

/// `KDF_RK_HE(RK, dh_out)`: HKDF-SHA256 with salt `RK`, ikm the DH output, info
/// [`ROOT_LABEL`], 96 bytes split into the new root key, a chain key and the
/// next header key.
pub(crate) fn root_step(root_key: &[u8; 32], dh_output: &[u8; 32]) -> RootStepOutput {
    let okm = hkdf_expand::<96>(root_key, dh_output, ROOT_LABEL);
    let mut out = RootStepOutput {
        root_key: Zeroizing::new([0; 32]),
        chain_key: Zeroizing::new([0; 32]),
        next_header_key: Zeroizing::new([0; 32]),
    };
    let (rk, rest) = okm.split_at(32);
    let (ck, nhk) = rest.split_at(32);
    out.root_key.copy_from_slice(rk);
    out.chain_key.copy_from_slice(ck);
    out.next_header_key.copy_from_slice(nhk);
    out
}

/// `HMAC-SHA256(CK, 0x01)`: the seed of the message key at the chain's index.
pub(crate) fn chain_message_seed(chain_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    hmac_byte(chain_key, CHAIN_MESSAGE_SEED_INPUT)
}

/// `HMAC-SHA256(CK, 0x02)`: the next chain key.
pub(crate) fn chain_next(chain_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    hmac_byte(chain_key, CHAIN_NEXT_INPUT)
}

/// The ChaCha20-Poly1305 key and nonce of one message.
pub(crate) struct MessageKeyMaterial {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 12],
}

/// Length of the salt of [`message_key`]: the random nonce that starts the
/// message's encrypted header.
pub(crate) const MESSAGE_KEY_SALT_LEN: usize = 24;

/// `MESSAGE_KEY(seed, salt)`: HKDF-SHA256 with salt the message's 24-byte
/// header nonce, ikm the message key seed, info [`MESSAGE_KEY_LABEL`]: 44
/// bytes, the first 32 the ChaCha20-Poly1305 key, the last 12 its nonce.
///
/// The seed depends on the chain position alone; the salt is fresh
/// randomness that travels with the message. A sender whose state was
/// rolled back, cloned or forked reaches the same position again, but with
/// another header nonce, so it never encrypts two plaintexts under one key
/// and nonce.
pub(crate) fn message_key(seed: &[u8; 32], salt: &[u8; MESSAGE_KEY_SALT_LEN]) -> MessageKeyMaterial {
    let okm = hkdf_expand::<44>(salt, seed, MESSAGE_KEY_LABEL);
    let mut out = MessageKeyMaterial { key: Zeroizing::new([0; 32]), nonce: [0; 12] };
    let (key, nonce) = okm.split_at(32);
    out.key.copy_from_slice(key);
    out.nonce.copy_from_slice(nonce);
    out
}

/// HKDF-SHA256 extract-then-expand into `N` bytes.
pub(crate) fn hkdf_expand<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut okm = Zeroizing::new([0; N]);
    // HKDF-SHA256 can expand up to 255 * 32 bytes; every caller asks for far less,
    // which `expand_never_fails_for_our_lengths` checks.
    if Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, okm.as_mut_slice()).is_err() {
        unreachable!("HKDF output length {N} is within 255 * 32");
    }
    okm
}

fn hmac_byte(key: &[u8; 32], input: u8) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length; 32 bytes never fail.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(&[input]);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 5869 test case 1 (HKDF-SHA256), computed independently of this crate.
    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm = hkdf_expand::<42>(&salt, &ikm, &info);
        assert_eq!(
            hex::encode(okm.as_slice()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    // The chain step must equal HMAC-SHA256 over one input byte. The expected
    // value is computed here from SHA-256 alone (RFC 2104), not through `hmac`.
    #[test]
    fn chain_steps_are_hmac_of_distinct_bytes() {
        use sha2::Digest;
        let ck = [7u8; 32];
        let rfc2104 = |byte: u8| -> [u8; 32] {
            let mut block = [0u8; 64];
            block[..32].copy_from_slice(&ck);
            let inner = Sha256::new().chain_update(block.map(|b| b ^ 0x36)).chain_update([byte]).finalize();
            Sha256::new().chain_update(block.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
        };
        assert_eq!(*chain_message_seed(&ck), rfc2104(0x01));
        assert_eq!(*chain_next(&ck), rfc2104(0x02));
    }

    #[test]
    fn root_step_splits_96_bytes() {
        let out = root_step(&[1; 32], &[2; 32]);
        let okm = hkdf_expand::<96>(&[1; 32], &[2; 32], ROOT_LABEL);
        assert_eq!(out.root_key.as_slice(), &okm[..32]);
        assert_eq!(out.chain_key.as_slice(), &okm[32..64]);
        assert_eq!(out.next_header_key.as_slice(), &okm[64..]);
    }

    #[test]
    fn message_key_and_nonce_are_one_expansion_salted_by_the_header_nonce() {
        let mk = message_key(&[3; 32], &[4; 24]);
        let okm = hkdf_expand::<44>(&[4; 24], &[3; 32], MESSAGE_KEY_LABEL);
        assert_eq!(mk.key.as_slice(), &okm[..32]);
        assert_eq!(&mk.nonce, &okm[32..]);
        // Another header nonce, another key and nonce for the same seed.
        let other = message_key(&[3; 32], &[5; 24]);
        assert_ne!(*other.key, *mk.key);
        assert_ne!(other.nonce, mk.nonce);
    }

    #[test]
    fn labels_are_distinct_and_prefixed() {
        let labels = [
            ROOT_LABEL,
            MESSAGE_KEY_LABEL,
            SIGNED_PREKEY_LABEL,
            PQ_ONE_TIME_PREKEY_LABEL,
            PQ_LAST_RESORT_PREKEY_LABEL,
            BUNDLE_LABEL,
            PQXDH_LABEL,
            SESSION_AD_LABEL,
            crate::fingerprint::SAFETY_NUMBER_LABEL,
            STORE_SEAL_LABEL,
            STORE_ADDRESS_LABEL,
            STORE_BASE_KEY_LABEL,
            STORE_ROW_LABEL,
            STORE_GROUP_LABEL,
            STORE_OUTBOX_LABEL,
            STORE_NAMING_LABEL,
            crate::heal::MESSAGE_ID_LABEL,
            GROUP_MESSAGE_LABEL,
            GROUP_MESSAGE_KEY_LABEL,
            BACKUP_LABEL,
            crate::user::DEVICE_LIST_LABEL,
            crate::fingerprint::USER_SAFETY_NUMBER_LABEL,
        ];
        for (i, a) in labels.iter().enumerate() {
            assert!(a.starts_with(b"samizdat/v1/"));
            for b in &labels[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
