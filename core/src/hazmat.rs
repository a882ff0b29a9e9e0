//! Low-level building blocks, for test vectors and independent
//! implementations.
//!
//! **Hazardous material.** These functions expose single steps of the
//! protocol — key derivations, header sealing with a chosen nonce, the PQXDH
//! transcript and key schedule, a group's chains and messages with chosen
//! salts — so that `vectors/` can show every
//! intermediate value and an auditor can check each one. They make no
//! attempt to stop misuse (a chosen nonce reused is a broken cipher). Apps
//! use [`crate::device`] or [`crate::session`]; nothing here is needed to
//! send a message. Enabled by the `hazmat` feature.

use zeroize::Zeroizing;

use crate::{
    address::Address,
    device::GroupError,
    group::{Control, Distribution, GroupId, GroupMessage, OwnChain, Request, SALT_LEN, SenderChains},
    handshake::pqxdh::{self, Transcript},
    kdf,
    keys::{
        IdentityKey, IdentityKeyPair, MLKEM_CIPHERTEXT_LEN, MlKemKeyPair, MlKemPublicKey, Secret32, X25519PublicKey,
        X25519Secret,
    },
    padding,
    prekeys::PqPreKeyKind,
    ratchet::{
        ENCRYPTED_HEADER_LEN,
        chain::ChainKey,
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

/// The 41-byte header `0x01 || DHs || PN || N` (first byte `0x03` with the
/// left-answered flag, PROTOCOL.md 4.4), sealed under `header_key` with the
/// given 24-byte nonce and associated data.
pub fn seal_header(
    header_key: &[u8; 32],
    nonce: [u8; 24],
    (ratchet_key, previous_counter, counter): (&[u8; 32], u32, u32),
    left_answered: bool,
    associated_data: &[u8],
) -> [u8; ENCRYPTED_HEADER_LEN] {
    let key = HeaderKey::new(Secret32::new(*header_key));
    let header =
        Header { ratchet_key: X25519PublicKey::from_bytes(*ratchet_key), previous_counter, counter, left_answered };
    key.seal(nonce, header, associated_data)
}

/// Opens a sealed header: `(DHs, PN, N, left-answered flag)`.
pub fn open_header(
    header_key: &[u8; 32],
    encrypted: &[u8; ENCRYPTED_HEADER_LEN],
    associated_data: &[u8],
) -> Option<([u8; 32], u32, u32, bool)> {
    let key = HeaderKey::new(Secret32::new(*header_key));
    key.open(encrypted, associated_data)
        .map(|h| (*h.ratchet_key.as_bytes(), h.previous_counter, h.counter, h.left_answered))
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
    pub initiator_address: &'a Address,
    /// The responder's address.
    pub responder_address: &'a Address,
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
pub fn peer_row_key(storage_key: &[u8; 32], peer: &Address) -> Vec<u8> {
    crate::store::Sealer::new(storage_key).address_key(peer)
}

// Groups (PROTOCOL.md 18): the steps of the Sender Keys protocol, each on
// its own, and a sending chain and a sender's chains built from given values.

/// A group id the app gave, checked as the Device API checks it.
fn group_id(bytes: &[u8]) -> Result<GroupId, GroupError> {
    GroupId::new(bytes).ok_or(GroupError::InvalidGroupId)
}

/// One step of a group chain at `iteration`, through the chain type the
/// group code steps: `(seed HMAC(CK, 0x01), next chain key HMAC(CK, 0x02))`.
/// The next chain key is `None` at iteration `2^32 - 1`: the chain cannot
/// step past it, so no sender uses that iteration.
pub fn group_chain_step(chain_key: &[u8; 32], iteration: u32) -> ([u8; 32], Option<[u8; 32]>) {
    let chain = ChainKey::new(Secret32::new(*chain_key), iteration);
    let key = chain.message_key();
    // A message key made from a chain key always holds its seed.
    let seed = key.seed().map_or([0; 32], |seed| *seed.as_bytes());
    (seed, chain.next().map(|next| *next.as_secret().as_bytes()))
}

/// `GROUP_MESSAGE_KEY(seed, salt)`: the ChaCha20-Poly1305 key and nonce of
/// a group message (HKDF-SHA256, salt the message's 24-byte salt, info
/// `"samizdat/v1/group/message-key"`).
pub fn group_message_key(seed: &[u8; 32], salt: &[u8; SALT_LEN]) -> ([u8; 32], [u8; 12]) {
    let out = kdf::group_message_key(seed, salt);
    (*out.key, out.nonce)
}

/// The associated data of a group message sent by `sender`.
///
/// # Errors
/// [`GroupError::InvalidGroupId`] unless the group id is 1 to 64 bytes.
pub fn group_associated_data(
    group: &[u8],
    sender: &Address,
    chain_id: u32,
    iteration: u32,
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, GroupError> {
    let message = GroupMessage {
        group_id: group_id(group)?,
        chain_id,
        iteration,
        salt: *salt,
        body: Vec::new(),
        signature: [0; 64],
    };
    Ok(message.associated_data(sender))
}

/// What the signature of `message` sent by `sender` covers: its associated
/// data, then its body.
pub fn group_signed_bytes(message: &GroupMessage, sender: &Address) -> Vec<u8> {
    message.signed_bytes(sender)
}

/// Every field of a group message as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessageParts {
    /// The group id.
    pub group_id: Vec<u8>,
    /// The id of the sender's chain.
    pub chain_id: u32,
    /// The message's iteration on its chain.
    pub iteration: u32,
    /// The salt of the message key.
    pub salt: [u8; SALT_LEN],
    /// The ciphertext and its tag.
    pub body: Vec<u8>,
    /// The Ed25519 signature by the chain's signing key.
    pub signature: [u8; 64],
}

/// The fields of a group message.
pub fn group_message_parts(message: &GroupMessage) -> GroupMessageParts {
    GroupMessageParts {
        group_id: message.group_id.as_bytes().to_vec(),
        chain_id: message.chain_id,
        iteration: message.iteration,
        salt: message.salt,
        body: message.body.clone(),
        signature: message.signature,
    }
}

/// A group message from its fields, checked as [`GroupMessage::from_bytes`]
/// checks them (nothing is verified).
///
/// # Errors
/// The [`DecodeError`](crate::DecodeError) of the first field that is wrong.
pub fn group_message_from_parts(parts: &GroupMessageParts) -> Result<GroupMessage, crate::DecodeError> {
    GroupMessage::from_proto(samizdat_proto::wire::GroupMessage {
        group_id: parts.group_id.clone(),
        chain_id: parts.chain_id,
        iteration: parts.iteration,
        salt: parts.salt.to_vec(),
        body: parts.body.clone(),
        signature: parts.signature.to_vec(),
    })
}

/// A sending chain in one group from given values (PROTOCOL.md 18): what
/// a device keeps of its own chain, with its randomness already drawn.
pub struct GroupSendingChain {
    chain: OwnChain,
}

impl GroupSendingChain {
    /// The chain `chain_id` whose key at `iteration` is `chain_key`, signed
    /// by the Ed25519 key of `signing_seed`.
    pub fn new(chain_id: u32, iteration: u32, chain_key: &[u8; 32], signing_seed: &[u8; 32]) -> Self {
        let record = samizdat_proto::storage::OwnChain {
            chain_id,
            iteration,
            chain_key: chain_key.to_vec(),
            signing_seed: signing_seed.to_vec(),
            recovery_key: chain_key.to_vec(),
            recovery_iteration: iteration,
            // Derived from the seed.
            signing_public: Vec::new(),
        };
        let chain = OwnChain::from_record(&record, 0).unwrap_or_else(|_| {
            unreachable!("32-byte keys and a recovery copy at the chain's own iteration always load")
        });
        Self { chain }
    }

    /// The same chain, of generation `generation` among its sender's chains
    /// in the group (PROTOCOL.md 18.6; [`Self::new`] makes generation 0, a
    /// chain of an earlier release).
    #[must_use]
    pub fn with_generation(self, generation: u64) -> Self {
        let chain = OwnChain::from_record(&self.chain.to_record(), generation)
            .unwrap_or_else(|_| unreachable!("a chain's own record always loads"));
        Self { chain }
    }

    /// The iteration of the next message.
    pub fn iteration(&self) -> u32 {
        self.chain.iteration()
    }

    /// The control content of the chain's distribution at its current
    /// iteration (PROTOCOL.md 18.6), as the pairwise sessions carry it.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`].
    pub fn distribution(&self, group: &[u8]) -> Result<Vec<u8>, GroupError> {
        let group = group_id(group)?;
        Ok(Control::Distribution(self.chain.distribution(&group, self.chain.iteration())).to_bytes().to_vec())
    }

    /// Encrypts `plaintext` as the chain's next message from `sender`, drawing
    /// the 24-byte salt from `rng`, and steps the chain. Changes nothing on
    /// error.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`] (before anything is drawn);
    /// [`GroupError::Encrypt`] with [`crate::EncryptError::ChainExhausted`] at
    /// iteration `2^32 - 1`, or [`crate::EncryptError::MessageTooLarge`].
    pub fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        group: &[u8],
        sender: &Address,
        plaintext: &[u8],
    ) -> Result<GroupMessage, GroupError> {
        let group = group_id(group)?;
        Ok(self.chain.encrypt(rng, &group, sender, plaintext)?)
    }
}

impl std::fmt::Debug for GroupSendingChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.chain.fmt(f)
    }
}

/// Parsed control content (PROTOCOL.md 18.6).
#[derive(Clone, PartialEq, Eq)]
pub enum GroupControl {
    /// A sender's chain at one iteration.
    Distribution {
        /// The group id.
        group_id: Vec<u8>,
        /// The chain's id.
        chain_id: u32,
        /// The iteration of `chain_key`.
        iteration: u32,
        /// The chain key at `iteration` (wiped when the value is dropped).
        chain_key: [u8; 32],
        /// The chain's Ed25519 signing public key.
        signing_key: [u8; 32],
        /// The chain's generation among its sender's chains (0: of an
        /// earlier release).
        generation: u64,
    },
    /// A member asks for a chain it lacks.
    Request {
        /// The group id.
        group_id: Vec<u8>,
        /// The chain asked for.
        chain_id: u32,
        /// The iteration of the message that needed it.
        iteration: u32,
        /// The lowest generation of a new chain the member takes in (0: any).
        min_generation: u64,
    },
    /// The first message of a session started to heal (PROTOCOL.md 20.5).
    Reset {
        /// The ids of the messages its sender could not read.
        unreadable: Vec<[u8; 16]>,
    },
    /// A message of the outbox sent again (PROTOCOL.md 20.6).
    Resend {
        /// The id of the message as first sent.
        id: [u8; 16],
        /// The ids of its earlier resends.
        also: Vec<[u8; 16]>,
        /// The app's plaintext (wiped when the value is dropped).
        plaintext: Vec<u8>,
    },
}

impl Drop for GroupControl {
    fn drop(&mut self) {
        match self {
            Self::Distribution { chain_key, .. } => zeroize::Zeroize::zeroize(chain_key),
            Self::Resend { plaintext, .. } => zeroize::Zeroize::zeroize(plaintext),
            Self::Request { .. } | Self::Reset { .. } => {}
        }
    }
}

impl std::fmt::Debug for GroupControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Distribution { chain_id, iteration, generation, .. } => f
                .debug_struct("Distribution")
                .field("chain_id", chain_id)
                .field("iteration", iteration)
                .field("generation", generation)
                .finish_non_exhaustive(),
            Self::Request { chain_id, iteration, min_generation, .. } => f
                .debug_struct("Request")
                .field("chain_id", chain_id)
                .field("iteration", iteration)
                .field("min_generation", min_generation)
                .finish_non_exhaustive(),
            Self::Reset { unreadable } => f.debug_struct("Reset").field("unreadable", &unreadable.len()).finish(),
            Self::Resend { plaintext, .. } => {
                f.debug_struct("Resend").field("plaintext_len", &plaintext.len()).finish_non_exhaustive()
            }
        }
    }
}

/// Parses control content, as a device does the content of a pairwise
/// message marked `0x81`.
///
/// # Errors
/// The [`DecodeError`](crate::DecodeError) of the first check that fails.
pub fn parse_group_control(content: &[u8]) -> Result<GroupControl, crate::DecodeError> {
    Ok(match Control::from_bytes(content)? {
        Control::Distribution(d) => GroupControl::Distribution {
            group_id: d.group_id.as_bytes().to_vec(),
            chain_id: d.chain_id,
            iteration: d.iteration,
            chain_key: *d.chain_key.as_bytes(),
            signing_key: *d.signing_key.as_bytes(),
            generation: d.generation,
        },
        Control::Request(r) => GroupControl::Request {
            group_id: r.group_id.as_bytes().to_vec(),
            chain_id: r.chain_id,
            iteration: r.iteration,
            min_generation: r.min_generation,
        },
        Control::Reset(unreadable) => GroupControl::Reset { unreadable },
        Control::Resend { id, also, plaintext } => GroupControl::Resend { id, also, plaintext: plaintext.to_vec() },
    })
}

/// The canonical encoding of control content (no version byte, no
/// padding). Refuses what [`parse_group_control`] refuses.
///
/// # Errors
/// A group id of 0 or more than 64 bytes, or a signing key that is not a
/// valid Ed25519 key: the [`DecodeError`](crate::DecodeError) the parser gives.
pub fn encode_group_control(control: &GroupControl) -> Result<Vec<u8>, crate::DecodeError> {
    let control = match control {
        GroupControl::Distribution { group_id, chain_id, iteration, chain_key, signing_key, generation } => {
            Control::Distribution(Distribution {
                group_id: GroupId::from_wire(group_id, "distribution.group_id")?,
                chain_id: *chain_id,
                iteration: *iteration,
                chain_key: Secret32::new(*chain_key),
                signing_key: IdentityKey::from_bytes(signing_key)
                    .map_err(|_| crate::DecodeError::InvalidValue("distribution.signing_key"))?,
                generation: *generation,
            })
        }
        GroupControl::Request { group_id, chain_id, iteration, min_generation } => Control::Request(Request {
            group_id: GroupId::from_wire(group_id, "request.group_id")?,
            chain_id: *chain_id,
            iteration: *iteration,
            min_generation: *min_generation,
        }),
        GroupControl::Reset { unreadable } => Control::Reset(unreadable.clone()),
        GroupControl::Resend { id, also, plaintext } => {
            Control::Resend { id: *id, also: also.clone(), plaintext: Zeroizing::new(plaintext.clone()) }
        }
    };
    let bytes = control.to_bytes().to_vec();
    // What the parser refuses is refused here too (too many ids, a repeat,
    // a plaintext too long).
    Control::from_bytes(&bytes)?;
    Ok(bytes)
}

/// The identity of the one session every distribution of a
/// [`GroupReceiver`] comes in (a device binds each chain to the identity of
/// its session, PROTOCOL.md 18.5; here there is one sender and one session).
fn receiver_session() -> IdentityKey {
    IdentityKey::from_stored_slice(&[0; 32], "session").unwrap_or_else(|_| unreachable!("32 bytes"))
}

/// One chain of a sender, as [`GroupReceiver::chains`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupChainSummary {
    /// The chain's id.
    pub chain_id: u32,
    /// The next iteration the chain key derives.
    pub iteration: u32,
    /// How many skipped keys are kept for it.
    pub skipped_keys: usize,
    /// How many decrypted iterations are remembered for it.
    pub used_iterations: usize,
}

/// A chain given up (evicted), as [`GroupReceiver::floors`] lists it: none
/// of its messages below `iteration` opens again (PROTOCOL.md 18.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupFloor {
    /// The chain's id.
    pub chain_id: u32,
    /// The first iteration that may still open.
    pub iteration: u32,
    /// The chain's generation, as its distribution gave it.
    pub generation: u64,
}

/// The chains a member keeps of one sender in one group (PROTOCOL.md 18.5,
/// 18.6): what a device decrypts that sender's messages with. The device
/// picks it by the message's group id and the transport's sender address;
/// here the caller does.
#[derive(Default)]
pub struct GroupReceiver {
    chains: SenderChains,
}

impl GroupReceiver {
    /// No chain yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in parsed control content from the sender. Returns whether the
    /// chains changed; a request changes nothing.
    pub fn receive(&mut self, control: &GroupControl) -> bool {
        let GroupControl::Distribution { group_id, chain_id, iteration, chain_key, signing_key, generation } = control
        else {
            return false;
        };
        let (Some(group_id), Ok(signing_key)) = (GroupId::new(group_id), IdentityKey::from_bytes(signing_key)) else {
            return false;
        };
        self.chains.receive(
            &Distribution {
                group_id,
                chain_id: *chain_id,
                iteration: *iteration,
                chain_key: Secret32::new(*chain_key),
                signing_key,
                generation: *generation,
            },
            receiver_session(),
        )
    }

    /// Decrypts `message` from `sender` and, only if it decrypts, updates the
    /// chains (PROTOCOL.md 18.5).
    ///
    /// # Errors
    /// [`GroupError::MissingChain`] (with no request: none is made here),
    /// [`GroupError::Decrypt`]. Nothing changes on error.
    pub fn decrypt(&mut self, sender: &Address, message: &GroupMessage) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        match self.chains.plan_decrypt(sender, Some(&receiver_session()), message) {
            Ok((plaintext, plan)) => {
                self.chains.apply(plan);
                Ok(plaintext)
            }
            Err(crate::group::GroupDecrypt::MissingChain) => {
                Err(GroupError::MissingChain { chain_id: message.chain_id(), request: None })
            }
            // The pure protocol refuses it; a device asks for the chain
            // from later on instead (PROTOCOL.md 18.5, 18.7).
            Err(crate::group::GroupDecrypt::TooFarAhead { gap }) => {
                Err(GroupError::Decrypt(crate::DecryptError::TooFarAhead { gap, max: crate::limits::MAX_SKIP }))
            }
            Err(crate::group::GroupDecrypt::Failed(error)) => Err(GroupError::Decrypt(error)),
        }
    }

    /// The chains kept, oldest first.
    pub fn chains(&self) -> Vec<GroupChainSummary> {
        let (chains, _) = self.chains.to_records();
        chains
            .iter()
            .map(|c| GroupChainSummary {
                chain_id: c.chain_id,
                iteration: c.iteration,
                skipped_keys: c.skipped.len(),
                used_iterations: c.used.chunks_exact(12).count(),
            })
            .collect()
    }

    /// The floors of the chains given up, oldest first (at most
    /// [`MAX_CHAIN_FLOORS`](crate::limits::MAX_CHAIN_FLOORS)).
    pub fn floors(&self) -> Vec<GroupFloor> {
        self.chains
            .floor_records()
            .iter()
            .map(|f| GroupFloor { chain_id: f.chain_id, iteration: f.iteration, generation: f.generation })
            .collect()
    }

    /// The lowest generation of a chain, neither kept nor floored, that is
    /// still taken in: one more than the largest generation of a floor
    /// forgotten, 0 while none was (PROTOCOL.md 18.6).
    pub fn min_generation(&self) -> u64 {
        self.chains.min_generation()
    }
}

impl std::fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReceiver")
            .field("chains", &self.chains())
            .field("floors", &self.floors())
            .field("min_generation", &self.min_generation())
            .finish()
    }
}

/// What a padded plaintext holds, by its end marker (PROTOCOL.md 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// The app's message: marker `0x80`.
    App,
    /// Control content between two libraries: marker `0x81`.
    Control,
}

/// The padded form of `content`, ended by the marker of `kind` (`None` over
/// the size limit).
pub fn pad_content(content: &[u8], kind: ContentKind) -> Option<Vec<u8>> {
    let kind = match kind {
        ContentKind::App => padding::ContentType::App,
        ContentKind::Control => padding::ContentType::Control,
    };
    padding::pad_content(content, 0, kind)
}

/// Removes the padding of either content type: the content and its kind
/// (`None` if the padding does not verify). [`unpad`] is the app's: it
/// refuses control content.
pub fn unpad_content(padded: &[u8]) -> Option<(Vec<u8>, ContentKind)> {
    let (len, kind) = padding::unpadded_content(padded)?;
    let kind = match kind {
        padding::ContentType::App => ContentKind::App,
        padding::ContentType::Control => ContentKind::Control,
    };
    Some((padded.get(..len)?.to_vec(), kind))
}

/// Seals the encoding of a `Backup` message (PROTOCOL.md 21) into a backup
/// file with a chosen salt and nonce and any parameters within the bounds of
/// [`crate::limits`], below an export's minimum included: for test vectors
/// that an outside implementation checks quickly. A chosen nonce reused
/// under one passphrase and salt breaks the cipher.
///
/// # Errors
/// [`crate::backup::BackupError::ParamsOutOfBounds`] above the bounds;
/// [`crate::backup::BackupError::OutOfMemory`].
pub fn backup_seal(
    passphrase: &[u8],
    params: crate::backup::BackupParams,
    salt: [u8; crate::backup::BACKUP_SALT_LEN],
    nonce: [u8; crate::backup::BACKUP_NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, crate::backup::BackupError> {
    crate::backup::seal_plaintext(passphrase, params, salt, nonce, plaintext)
}

/// Opens a backup file: the checks of PROTOCOL.md 21.4 up to the tag, and
/// the plaintext unpadded (the encoding of a `Backup`, not loaded).
///
/// # Errors
/// As [`crate::device::Device::restore_in`]'s backup errors, but for those
/// of the plaintext's loader.
pub fn backup_open(passphrase: &[u8], file: &[u8]) -> Result<Zeroizing<Vec<u8>>, crate::backup::BackupError> {
    crate::backup::open_plaintext(passphrase, file)
}

/// The key of a backup (PROTOCOL.md 21.2): Argon2id of `passphrase` with
/// `params` and `salt`, then HKDF with `samizdat/v1/backup`; with the
/// Argon2id output before HKDF.
///
/// # Errors
/// As [`backup_seal`].
pub fn backup_key(
    passphrase: &[u8],
    params: crate::backup::BackupParams,
    salt: &[u8; crate::backup::BACKUP_SALT_LEN],
) -> Result<crate::backup::KeySteps, crate::backup::BackupError> {
    crate::backup::derive_key_steps(passphrase, params, salt)
}

/// Encrypts `plaintext` as an attachment (PROTOCOL.md 22) under `key`
/// instead of a fresh random one, for the test vectors: returns the
/// description (81 bytes) and the ciphertext. A key must never encrypt two
/// files.
///
/// # Errors
/// As [`crate::attachment::encrypt`].
pub fn attachment_encrypt_with_key(
    key: &[u8; 32],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), crate::attachment::AttachmentError> {
    let mut ciphertext = Vec::new();
    let attachment = crate::attachment::encrypt_with_key(Secret32::new(*key), plaintext, &mut ciphertext, None)?;
    Ok((attachment.to_bytes().to_vec(), ciphertext))
}

/// A link offer of given keys (PROTOCOL.md 23.8): the device at (`user_id`,
/// `device_id`) with identity key `identity_key`, its X25519 secret
/// `ephemeral_secret`, the code's `secret` and time `created_at`.
///
/// # Errors
/// [`crate::user::LinkError::MalformedCode`] for an address or identity key
/// that is not valid.
pub fn link_offer(
    user_id: &str,
    device_id: u32,
    identity_key: &[u8; 32],
    ephemeral_secret: [u8; 32],
    secret: [u8; 32],
    created_at: u64,
) -> Result<crate::user::LinkOffer, crate::user::LinkError> {
    let malformed = |field| crate::user::LinkError::MalformedCode(crate::DecodeError::InvalidValue(field));
    let address = Address::new(user_id, device_id).map_err(|_| malformed("link_code.user_id"))?;
    let identity = IdentityKey::from_bytes(identity_key).map_err(|_| malformed("link_code.identity_key"))?;
    Ok(crate::user::LinkOffer::from_parts(
        address,
        identity,
        X25519Secret::from_bytes(ephemeral_secret),
        Zeroizing::new(secret),
        created_at,
    ))
}

/// What a link message carried (PROTOCOL.md 23.8), as its parts' bytes.
pub struct LinkOpened {
    /// The user identity's Ed25519 seed (wiped when the value is dropped).
    pub user_identity_seed: Zeroizing<[u8; 32]>,
    /// The user's signed device list.
    pub device_list: Vec<u8>,
    /// The pinned contact users' signed lists.
    pub pinned: Vec<Vec<u8>>,
    /// The linking device's id.
    pub linker_device_id: u32,
}

impl std::fmt::Debug for LinkOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOpened")
            .field("pinned", &self.pinned.len())
            .field("linker_device_id", &self.linker_device_id)
            .finish_non_exhaustive()
    }
}

/// Seals a provisioning to `code` with the linking device's X25519 secret
/// `linker_ephemeral_secret` (PROTOCOL.md 23.8): the link message.
///
/// # Errors
/// [`crate::user::LinkError::MalformedCode`] for a code that does not read;
/// [`crate::user::LinkError::Provisioning`] for a list that does not parse;
/// [`crate::user::LinkError::TooManyUsers`].
pub fn link_seal(
    code: &[u8],
    linker_ephemeral_secret: [u8; 32],
    user_identity_seed: &[u8; 32],
    device_list: &[u8],
    pinned: &[Vec<u8>],
    linker_device_id: u32,
) -> Result<Vec<u8>, crate::user::LinkError> {
    use crate::user::{LinkCode, LinkError, Provisioning, SignedDeviceList, UserIdentityKeyPair};
    let code = LinkCode::from_bytes(code)?;
    let list = |bytes: &[u8]| SignedDeviceList::from_bytes(bytes).map_err(LinkError::Provisioning);
    let provisioning = Provisioning {
        user_identity: UserIdentityKeyPair::from_seed(user_identity_seed),
        device_list: list(device_list)?,
        pinned: pinned.iter().map(|p| list(p)).collect::<Result<_, _>>()?,
        linker_device_id,
    };
    code.seal_with(&X25519Secret::from_bytes(linker_ephemeral_secret), &provisioning)
}

/// Opens a link message under `offer` and checks what it carries
/// (PROTOCOL.md 23.8, K4 to K10).
///
/// # Errors
/// The first check that fails, as [`crate::user::LinkError`].
pub fn link_open(offer: &crate::user::LinkOffer, message: &[u8]) -> Result<LinkOpened, crate::user::LinkError> {
    let opened = offer.open(message)?;
    Ok(LinkOpened {
        user_identity_seed: opened.user_identity.to_seed(),
        device_list: opened.device_list.to_bytes(),
        pinned: opened.pinned.iter().map(crate::user::SignedDeviceList::to_bytes).collect(),
        linker_device_id: opened.linker_device_id,
    })
}

/// The control content of a sent sync (PROTOCOL.md 23.7): the canonical
/// encoding of a `Control` whose body is `sent_sync` (field 5), for the
/// test vectors. Nothing is checked: a recipient or a plaintext past the
/// limits encodes all the same (and is refused by [`parse_sent_sync`]).
pub fn sent_sync_content(recipient: &str, plaintext: &[u8]) -> Vec<u8> {
    let sync =
        crate::user::sync::SentSync { recipient: recipient.to_owned(), plaintext: Zeroizing::new(plaintext.to_vec()) };
    sync.to_control_bytes().to_vec()
}

/// Reads control content as the device API does before the checks of 18.6:
/// `None` if it does not begin with `0x2a` (not a sent sync), else the
/// recipient and the plaintext, or the first of checks Y1 to Y4 of
/// PROTOCOL.md 23.7 that fails.
pub fn parse_sent_sync(content: &[u8]) -> Option<Result<(String, Vec<u8>), crate::DecodeError>> {
    crate::user::sync::SentSync::from_control_bytes(content)
        .map(|parsed| parsed.map(|sync| (sync.recipient.clone(), sync.plaintext.to_vec())))
}

/// A handover as [`parse_handover`] reads it: the new user identity's
/// public key, the signed list's bytes, and the key it replaces (if named).
pub type HandoverParts = ([u8; 32], Vec<u8>, Option<[u8; 32]>);

/// The control content of a user identity handover (PROTOCOL.md 23.9): the
/// canonical encoding of a `Control` whose body is `handover` (field 6),
/// for the test vectors. Nothing is checked: any seed, list and `replaces`
/// bytes encode all the same (and are refused by [`parse_handover`]); an
/// empty field is absent.
pub fn handover_content(seed: &[u8], device_list: &[u8], replaces: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    let control = samizdat_proto::wire::Control {
        body: Some(samizdat_proto::wire::control::Body::Handover(samizdat_proto::wire::UserIdentityHandover {
            seed: seed.to_vec(),
            device_list: device_list.to_vec(),
            replaces: replaces.to_vec(),
        })),
    };
    control.encode_to_vec()
}

/// Reads control content as the device API does before the checks of 18.6:
/// `None` if it does not begin with `0x32` (not a handover), else the new
/// user identity's public key, the signed list's bytes and the key it
/// replaces, or the first of checks H1 to H5 of PROTOCOL.md 23.9 that fails.
pub fn parse_handover(content: &[u8]) -> Option<Result<HandoverParts, crate::DecodeError>> {
    crate::user::handover::Handover::from_control_bytes(content).map(|parsed| {
        parsed.map(|handover| {
            (
                *handover.user_identity.public_key().as_bytes(),
                handover.device_list.to_bytes(),
                handover.replaces.map(|key| *key.as_bytes()),
            )
        })
    })
}

/// The control content of a handover's acknowledgment (PROTOCOL.md 23.9):
/// the canonical encoding of a `Control` whose body is `handover_ack`
/// (field 7), for the test vectors. Nothing is checked.
pub fn handover_ack_content(user_identity_key: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    let control = samizdat_proto::wire::Control {
        body: Some(samizdat_proto::wire::control::Body::HandoverAck(samizdat_proto::wire::HandoverAck {
            user_identity_key: user_identity_key.to_vec(),
        })),
    };
    control.encode_to_vec()
}

/// Reads control content as the device API does before the checks of 18.6:
/// `None` if it does not begin with `0x3a` (not an acknowledgment), else the
/// user identity key it acknowledges, or the first of checks A1 and A2 of
/// PROTOCOL.md 23.9 that fails.
pub fn parse_handover_ack(content: &[u8]) -> Option<Result<[u8; 32], crate::DecodeError>> {
    crate::user::handover::HandoverAck::from_control_bytes(content)
        .map(|parsed| parsed.map(|ack| *ack.user_identity_key.as_bytes()))
}
