//! Low-level building blocks, for test vectors and independent
//! implementations.
//!
//! **Hazardous material.** These functions expose single steps of the
//! protocol — key derivations, header sealing with a chosen nonce, the PQXDH
//! transcript and key schedule — so that `vectors/` can show every
//! intermediate value and an auditor can check each one. They make no
//! attempt to stop misuse (a chosen nonce reused is a broken cipher). Apps
//! use [`crate::device`] or [`crate::session`]; nothing here is needed to
//! send a message. Enabled by the `hazmat` feature.

use zeroize::Zeroizing;

use crate::{
    handshake::pqxdh::{self, Transcript},
    kdf,
    keys::{
        IdentityKey, IdentityKeyPair, MLKEM_CIPHERTEXT_LEN, MlKemKeyPair, MlKemPublicKey, X25519PublicKey, X25519Secret,
    },
    padding,
    prekeys::PqPreKeyKind,
    ratchet::{
        ENCRYPTED_HEADER_LEN,
        header::{Header, HeaderKey},
    },
    wire::RatchetMessage,
};

/// `KDF_RK_HE(RK, dh_out)`: `(RK', CK, NHK)`.
pub fn root_step(root_key: &[u8; 32], dh_output: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let out = kdf::root_step(root_key, dh_output);
    (*out.root_key, *out.chain_key, *out.next_header_key)
}

/// One chain step: `(message key seed, next chain key)`.
pub fn chain_step(chain_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (*kdf::chain_message_seed(chain_key), *kdf::chain_next(chain_key))
}

/// The ChaCha20-Poly1305 key and nonce of a message key seed, salted by the
/// message's 24-byte header nonce.
pub fn message_key(seed: &[u8; 32], header_nonce: &[u8; 24]) -> ([u8; 32], [u8; 12]) {
    let out = kdf::message_key(seed, header_nonce);
    (*out.key, out.nonce)
}

/// The padded form of `plaintext` (`None` over the size limit).
pub fn pad(plaintext: &[u8]) -> Option<Vec<u8>> {
    padding::pad(plaintext).map(|p| p.to_vec())
}

/// Removes padding (`None` if it does not verify).
pub fn unpad(padded: &[u8]) -> Option<Vec<u8>> {
    padding::unpad(padded).map(<[u8]>::to_vec)
}

/// The 41-byte header `0x01 || DHs || PN || N`, sealed under `header_key`
/// with the given 24-byte nonce and associated data.
pub fn seal_header(
    header_key: &[u8; 32],
    nonce: [u8; 24],
    ratchet_key: &[u8; 32],
    previous_counter: u32,
    counter: u32,
    associated_data: &[u8],
) -> [u8; ENCRYPTED_HEADER_LEN] {
    let key = HeaderKey::new(crate::keys::Secret32::new(*header_key));
    let header = Header { ratchet_key: X25519PublicKey::from_bytes(*ratchet_key), previous_counter, counter };
    key.seal(nonce, header, associated_data)
}

/// Opens a sealed header: `(DHs, PN, N)`.
pub fn open_header(
    header_key: &[u8; 32],
    encrypted: &[u8; ENCRYPTED_HEADER_LEN],
    associated_data: &[u8],
) -> Option<([u8; 32], u32, u32)> {
    let key = HeaderKey::new(crate::keys::Secret32::new(*header_key));
    key.open(encrypted, associated_data).map(|h| (*h.ratchet_key.as_bytes(), h.previous_counter, h.counter))
}

/// A ratchet message from its parts (to encode it with [`RatchetMessage::to_bytes`]).
pub fn ratchet_message(header: [u8; ENCRYPTED_HEADER_LEN], body: Vec<u8>) -> RatchetMessage {
    RatchetMessage::new(header, body)
}

/// X25519 (RFC 7748); `None` for an all-zero output.
pub fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> Option<[u8; 32]> {
    X25519Secret::from_bytes(*secret).diffie_hellman(&X25519PublicKey::from_bytes(*public)).map(|s| *s)
}

/// The X25519 public key of a secret scalar.
pub fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    *X25519Secret::from_bytes(*secret).public_key().as_bytes()
}

/// The identity of an Ed25519 seed: `(Ed25519 public key, X25519 secret, X25519 public key)`.
pub fn identity_forms(seed: &[u8; 32]) -> ([u8; 32], Zeroizing<[u8; 32]>, [u8; 32]) {
    let pair = IdentityKeyPair::from_seed(seed);
    let x = pair.to_x25519();
    (*pair.public_key().as_bytes(), x.to_bytes(), *x.public_key().as_bytes())
}

/// An Ed25519 signature (deterministic, RFC 8032) by the identity of `seed`.
pub fn sign(seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
    IdentityKeyPair::from_seed(seed).sign(message)
}

/// Strict Ed25519 verification by an identity key.
pub fn verify(identity: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    IdentityKey::from_bytes(identity).is_ok_and(|key| key.verify(message, signature))
}

/// Which prekey a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedKind {
    /// A signed X25519 prekey.
    X25519,
    /// A one-time ML-KEM-1024 prekey.
    MlKemOneTime,
    /// The last-resort ML-KEM-1024 prekey.
    MlKemLastResort,
}

/// The bytes a prekey signature covers: `label || u32-BE id || key`.
pub fn prekey_signature_input(kind: SignedKind, id: u32, public_key: &[u8]) -> Vec<u8> {
    let label = match kind {
        SignedKind::X25519 => kdf::SIGNED_PREKEY_LABEL,
        SignedKind::MlKemOneTime => kdf::PQ_ONE_TIME_PREKEY_LABEL,
        SignedKind::MlKemLastResort => kdf::PQ_LAST_RESORT_PREKEY_LABEL,
    };
    kdf::prekey_signature_input(label, id, public_key)
}

/// The bytes a bundle's own signature covers (PROTOCOL.md 7.1): the label,
/// the identity key, the address, the signed prekey, the one-time prekey if
/// any, and the ML-KEM prekey with its kind (`last_resort`).
pub fn bundle_signature_input(
    identity_key: &[u8; 32],
    user_id: &str,
    device_id: u32,
    signed_prekey: (u32, &[u8; 32]),
    one_time_prekey: Option<(u32, &[u8; 32])>,
    pq_prekey: (bool, u32, &[u8]),
) -> Vec<u8> {
    let (last_resort, pq_id, pq_key) = pq_prekey;
    let kind = if last_resort { PqPreKeyKind::LastResort } else { PqPreKeyKind::OneTime };
    kdf::bundle_signature_input(&kdf::BundleFields {
        identity_key,
        user_id,
        device_id,
        signed_prekey,
        one_time_prekey,
        pq_prekey: (kind.transcript_byte(), pq_id, pq_key),
    })
}

/// ML-KEM-1024 key generation from `d || z`: `(decapsulation key, encapsulation key)`.
pub fn mlkem_keygen(d_z: &[u8; 64]) -> (Vec<u8>, Vec<u8>) {
    let pair = MlKemKeyPair::generate(&mut FixedBytes::new(d_z));
    (pair.secret_bytes().to_vec(), pair.public_key().as_bytes().to_vec())
}

/// ML-KEM-1024 encapsulation with the message `m`: `(ciphertext, shared secret)`;
/// `None` for an invalid encapsulation key.
pub fn mlkem_encapsulate(public: &[u8], m: &[u8; 32]) -> Option<(Vec<u8>, [u8; 32])> {
    let key = MlKemPublicKey::from_slice(public).ok()?;
    let (ct, ss) = key.encapsulate(&mut FixedBytes::new(m));
    Some((ct.to_vec(), *ss))
}

/// ML-KEM-1024 decapsulation; `None` for malformed inputs.
pub fn mlkem_decapsulate(secret: &[u8], public: &[u8], ciphertext: &[u8]) -> Option<[u8; 32]> {
    let pair = MlKemKeyPair::from_bytes(secret, public).ok()?;
    let ct: [u8; MLKEM_CIPHERTEXT_LEN] = ciphertext.try_into().ok()?;
    Some(*pair.decapsulate(&ct))
}

/// The public values of a PQXDH run, in transcript order.
#[derive(Debug, Clone)]
pub struct TranscriptInput<'a> {
    /// `IK_A` (Ed25519).
    pub initiator_identity: &'a [u8; 32],
    /// `IK_B` (Ed25519).
    pub responder_identity: &'a [u8; 32],
    /// Id of `SPK_B`.
    pub signed_prekey_id: u32,
    /// `SPK_B`.
    pub signed_prekey: &'a [u8; 32],
    /// `(id, OPK_B)`, if used.
    pub one_time_prekey: Option<(u32, &'a [u8; 32])>,
    /// Whether `PQPK_B` is the last-resort key.
    pub pq_last_resort: bool,
    /// Id of `PQPK_B`.
    pub pq_prekey_id: u32,
    /// `PQPK_B` (1568 bytes).
    pub pq_prekey: &'a [u8],
    /// `EK_A`.
    pub base_key: &'a [u8; 32],
    /// `CT` (1568 bytes).
    pub pq_ciphertext: &'a [u8],
    /// The initiator's address.
    pub initiator_address: &'a crate::address::Address,
    /// The responder's address.
    pub responder_address: &'a crate::address::Address,
}

/// The PQXDH transcript bytes; `None` if a key is malformed.
pub fn pqxdh_transcript(input: &TranscriptInput<'_>) -> Option<Vec<u8>> {
    let initiator = IdentityKey::from_bytes(input.initiator_identity).ok()?;
    let responder = IdentityKey::from_bytes(input.responder_identity).ok()?;
    let pq_prekey = MlKemPublicKey::from_slice(input.pq_prekey).ok()?;
    let ct: [u8; MLKEM_CIPHERTEXT_LEN] = input.pq_ciphertext.try_into().ok()?;
    let spk = X25519PublicKey::from_bytes(*input.signed_prekey);
    let opk = input.one_time_prekey.map(|(id, key)| (id, X25519PublicKey::from_bytes(*key)));
    let base = X25519PublicKey::from_bytes(*input.base_key);
    let transcript = Transcript {
        initiator_identity: &initiator,
        responder_identity: &responder,
        signed_prekey_id: input.signed_prekey_id,
        signed_prekey: &spk,
        one_time_prekey: opk.as_ref().map(|(id, key)| (*id, key)),
        pq_prekey_kind: if input.pq_last_resort { PqPreKeyKind::LastResort } else { PqPreKeyKind::OneTime },
        pq_prekey_id: input.pq_prekey_id,
        pq_prekey: &pq_prekey,
        base_key: &base,
        pq_ciphertext: &ct,
        initiator_address: input.initiator_address,
        responder_address: input.responder_address,
    };
    Some(transcript.to_bytes())
}

/// The PQXDH key schedule: `RK || HKa || NHKb` from the DH outputs (3 or 4),
/// the ML-KEM shared secret and the transcript.
pub fn pqxdh_secrets(dh_outputs: &[[u8; 32]], kem_secret: &[u8; 32], transcript: &[u8]) -> [u8; 96] {
    use sha2::Digest;
    let hash: [u8; 32] = sha2::Sha256::digest(transcript).into();
    let refs: Vec<&[u8; 32]> = dh_outputs.iter().collect();
    let out = kdf::pqxdh(&refs, kem_secret, &hash);
    let mut bytes = [0u8; 96];
    let (rk, rest) = bytes.split_at_mut(32);
    let (hka, hkb) = rest.split_at_mut(32);
    rk.copy_from_slice(&out.root_key);
    hka.copy_from_slice(&out.initiator_header_key);
    hkb.copy_from_slice(&out.responder_header_key);
    bytes
}

/// The session's associated data `label || IK_A || IK_B`; `None` for invalid keys.
pub fn session_associated_data(initiator: &[u8; 32], responder: &[u8; 32]) -> Option<Vec<u8>> {
    Some(pqxdh::associated_data(&IdentityKey::from_bytes(initiator).ok()?, &IdentityKey::from_bytes(responder).ok()?))
}

/// A safety number from raw identity key bytes.
pub fn safety_number(
    local_user_id: &str,
    local_identity: &[u8; 32],
    remote_user_id: &str,
    remote_identity: &[u8; 32],
) -> crate::fingerprint::SafetyNumber {
    crate::fingerprint::SafetyNumber::from_key_bytes(local_user_id, local_identity, remote_user_id, remote_identity)
}

/// A "generator" that returns given bytes in order, then zeros: it lets a
/// vector script every random value a protocol step draws. Not random.
#[derive(Debug, Clone)]
pub struct FixedBytes {
    bytes: Vec<u8>,
    position: usize,
}

impl FixedBytes {
    /// Returns `bytes` in order.
    pub fn new(bytes: &[u8]) -> Self {
        Self { bytes: bytes.to_vec(), position: 0 }
    }

    /// How many bytes were drawn so far.
    pub fn drawn(&self) -> usize {
        self.position
    }
}

impl rand_core::TryRng for FixedBytes {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for byte in dst {
            *byte = self.bytes.get(self.position).copied().unwrap_or(0);
            self.position = self.position.saturating_add(1);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FixedBytes {}

/// `SealRow(table, key, plaintext)` of PROTOCOL.md 14.4 under the keys
/// derived from `storage_key` (14.3), with the given nonce.
pub fn seal_row(
    storage_key: &[u8; 32],
    table: crate::store::Table,
    key: &[u8],
    plaintext: &[u8],
    nonce: &[u8; 24],
) -> Vec<u8> {
    crate::store::Sealer::new(storage_key).seal(&mut FixedBytes::new(nonce), table, key, plaintext)
}

/// `OpenRow(table, key, sealed)` of PROTOCOL.md 14.4.
///
/// # Errors
/// [`crate::store::StoreError::Corrupt`] if the value does not open at this
/// place under this storage key, or its padding does not verify.
pub fn open_row(
    storage_key: &[u8; 32],
    table: crate::store::Table,
    key: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, crate::store::StoreError> {
    crate::store::Sealer::new(storage_key).open(table, key, sealed)
}

/// The row key of a peer in table `sessions` (PROTOCOL.md 14.5).
pub fn peer_row_key(storage_key: &[u8; 32], peer: &crate::address::Address) -> Vec<u8> {
    crate::store::Sealer::new(storage_key).address_key(peer)
}
