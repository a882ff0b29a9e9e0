//! Prekeys and bundles.
//!
//! A device publishes, through its server, a *bundle*: its identity key, a
//! signed X25519 prekey, possibly a one-time X25519 prekey, and a signed
//! ML-KEM-1024 prekey (one-time, or the last-resort key that is reused until
//! rotated). Every signature covers a label naming the key's kind, the key's
//! id and its bytes (`kdf::prekey_signature_input`), so a signature on one
//! kind of key never verifies as another kind.
//!
//! [`PreKeyBundle::from_bytes`] parses *and verifies* a bundle: there is no
//! unverified bundle type to misuse. [`PreKeySet`] holds the secret halves on
//! the device that published them.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::SystemTime,
};

use prost::Message as _;
use rand_core::CryptoRng;
use samizdat_proto::{storage, wire as pb};
use zeroize::Zeroizing;

use crate::{
    DecodeError,
    address::Address,
    kdf,
    keys::{
        IdentityKey, IdentityKeyPair, KeyError, MlKemKeyPair, MlKemPublicKey, SIGNATURE_LEN, X25519PublicKey,
        X25519Secret, fixed,
    },
    limits::{MAX_LAST_RESORT_PREKEYS, MAX_ONE_TIME_PREKEYS, MAX_REMEMBERED_BASE_KEYS, MAX_SIGNED_PREKEYS},
    user::{DeviceList, DeviceListError, SignedDeviceList},
    wire::WIRE_VERSION,
};

/// The largest serialized prekey set accepted: every key at its limit
/// (ML-KEM pairs are about 4.8 KB each) plus the remembered base keys.
pub const MAX_PREKEY_SET_LEN: usize =
    (MAX_ONE_TIME_PREKEYS + MAX_LAST_RESORT_PREKEYS + 1) * 5_000 + MAX_REMEMBERED_BASE_KEYS * 48 + 64 * 1024;

/// The largest encoded bundle accepted. A bundle at every limit takes 2,164
/// bytes without a device list (a 256-byte user id, ids of five varint
/// bytes, a one-time prekey) and 3,884 with the largest valid list (1,717
/// bytes, [`MAX_DEVICE_LIST_LEN`](crate::user::MAX_DEVICE_LIST_LEN) being
/// the bound a list is refused above): PROTOCOL.md 7.1.
pub const MAX_BUNDLE_LEN: usize = 4096;

/// Why a bundle was rejected. One variant per field, so a test (and an app's
/// log) can tell which check failed; a bundle comes from the server, which
/// learns nothing from the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes are not a well-formed bundle.
    #[error("malformed bundle: {0}")]
    Decode(#[from] DecodeError),
    /// The identity key is invalid or weak.
    #[error("invalid identity key: {0}")]
    IdentityKey(KeyError),
    /// The signed prekey is invalid or of small order.
    #[error("invalid signed prekey: {0}")]
    SignedPreKey(KeyError),
    /// The signed prekey's signature does not verify.
    #[error("signed prekey signature does not verify")]
    SignedPreKeySignature,
    /// The one-time prekey is invalid or of small order.
    #[error("invalid one-time prekey: {0}")]
    OneTimePreKey(KeyError),
    /// The ML-KEM prekey is not a valid encapsulation key.
    #[error("invalid ML-KEM prekey: {0}")]
    PqPreKey(KeyError),
    /// The ML-KEM prekey's signature does not verify.
    #[error("ML-KEM prekey signature does not verify")]
    PqPreKeySignature,
    /// The bundle's own signature, over everything it says (the address
    /// and the one-time prekey included), does not verify.
    #[error("bundle signature does not verify")]
    Signature,
    /// The device list the bundle carries is not a list its user signed
    /// (PROTOCOL.md 7.2, check 21): malformed, a signature that does not
    /// verify under the key it names, or another user's list
    /// ([`DeviceListError::WrongUser`]).
    #[error("invalid device list: {0}")]
    DeviceList(DeviceListError),
}

/// Whether an ML-KEM prekey is used once or is the last-resort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PqPreKeyKind {
    /// Deleted once a session used it.
    OneTime,
    /// Reused until rotated; the fallback when no one-time key is left.
    LastResort,
}

impl PqPreKeyKind {
    fn label(self) -> &'static [u8] {
        match self {
            Self::OneTime => kdf::PQ_ONE_TIME_PREKEY_LABEL,
            Self::LastResort => kdf::PQ_LAST_RESORT_PREKEY_LABEL,
        }
    }

    /// The byte that stands for this kind in the handshake transcript.
    pub(crate) fn transcript_byte(self) -> u8 {
        match self {
            Self::OneTime => 0x01,
            Self::LastResort => 0x02,
        }
    }
}

/// A verified bundle: everything a device needs to start a session.
#[derive(Clone, PartialEq, Eq)]
pub struct PreKeyBundle {
    pub(crate) address: Address,
    pub(crate) identity_key: IdentityKey,
    pub(crate) signed_prekey_id: u32,
    pub(crate) signed_prekey: X25519PublicKey,
    pub(crate) signed_prekey_signature: [u8; SIGNATURE_LEN],
    pub(crate) one_time_prekey: Option<(u32, X25519PublicKey)>,
    pub(crate) pq_prekey_id: u32,
    pub(crate) pq_prekey_kind: PqPreKeyKind,
    pub(crate) pq_prekey: MlKemPublicKey,
    pub(crate) pq_prekey_signature: [u8; SIGNATURE_LEN],
    /// By the identity key, over [`kdf::bundle_signature_input`].
    pub(crate) signature: [u8; SIGNATURE_LEN],
    /// The owner's user's signed device list, verified (L1 to L12) and of
    /// the bundle's user id; not covered by `signature`.
    pub(crate) device_list: Option<(SignedDeviceList, DeviceList)>,
}

impl PreKeyBundle {
    /// The owner's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The owner's identity key.
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// The id of the signed X25519 prekey.
    pub fn signed_prekey_id(&self) -> u32 {
        self.signed_prekey_id
    }

    /// The id of the one-time X25519 prekey, if the bundle has one.
    pub fn one_time_prekey_id(&self) -> Option<u32> {
        self.one_time_prekey.map(|(id, _)| id)
    }

    /// The id and kind of the ML-KEM prekey.
    pub fn pq_prekey(&self) -> (u32, PqPreKeyKind) {
        (self.pq_prekey_id, self.pq_prekey_kind)
    }

    /// The signed device list of the owner's user, if the bundle carries
    /// one: verified under the user identity key it names, and of the
    /// bundle's user id. Whether that key is the user's is the pin's
    /// question ([`UserTrust`](crate::user::UserTrust), PROTOCOL.md 23.5).
    pub fn device_list(&self) -> Option<&SignedDeviceList> {
        self.device_list.as_ref().map(|(signed, _)| signed)
    }

    /// The list of [`Self::device_list`], decoded.
    pub fn verified_device_list(&self) -> Option<&DeviceList> {
        self.device_list.as_ref().map(|(_, list)| list)
    }

    /// The bundle with `signed` as its device list, in place of any it
    /// carried. The bundle's signature does not cover the list, so the
    /// bundle stays valid; the list must be one its user signed.
    ///
    /// # Errors
    /// [`BundleError::DeviceList`] if `signed` does not verify or is the
    /// list of another user id than the bundle's.
    pub fn with_device_list(mut self, signed: &SignedDeviceList) -> Result<Self, BundleError> {
        self.device_list = Some(verified_list_of(&self.address, signed).map_err(BundleError::DeviceList)?);
        Ok(self)
    }

    /// The bundle without its device list (what a server that strips it
    /// serves).
    pub fn without_device_list(mut self) -> Self {
        self.device_list = None;
        self
    }

    /// Encodes the bundle: version byte, then the protobuf `PreKeyBundle`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let message = pb::PreKeyBundle {
            identity_key: self.identity_key.as_bytes().to_vec(),
            user_id: self.address.user_id().to_owned(),
            device_id: self.address.device_id(),
            signed_prekey: Some(pb::SignedPreKey {
                id: self.signed_prekey_id,
                public_key: self.signed_prekey.as_bytes().to_vec(),
                signature: self.signed_prekey_signature.to_vec(),
            }),
            one_time_prekey: self
                .one_time_prekey
                .map(|(id, key)| pb::OneTimePreKey { id, public_key: key.as_bytes().to_vec() }),
            pq_prekey: Some(pb::PqPreKey {
                id: self.pq_prekey_id,
                public_key: self.pq_prekey.as_bytes().to_vec(),
                signature: self.pq_prekey_signature.to_vec(),
                last_resort: self.pq_prekey_kind == PqPreKeyKind::LastResort,
            }),
            signature: self.signature.to_vec(),
            device_list: self.device_list.as_ref().map(|(signed, _)| signed.to_bytes()).unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(message.encoded_len().saturating_add(1));
        out.push(WIRE_VERSION);
        // Encoding into a Vec cannot run out of space.
        let _ = message.encode(&mut out);
        out
    }

    /// Parses and verifies a bundle completely: lengths, the identity key
    /// (not weak), the X25519 prekeys (not of small order), the ML-KEM key
    /// (FIPS 203 encapsulation-key check), both prekey signatures (strict
    /// Ed25519, over the kind's label, the id and the key), the bundle's own
    /// signature over everything it says (address and one-time prekey
    /// included), and that the bytes are the canonical encoding of what
    /// they say: a bundle altered in any bit is refused. Then the device
    /// list, if the bundle carries one: it must verify (PROTOCOL.md 23.2,
    /// L1 to L12) and be the list of the bundle's user id. The bundle's
    /// signature does not cover the list (the user identity key signs it),
    /// so a server can strip it; a peer that pinned the user checks the
    /// device against the pinned list all the same (23.5).
    ///
    /// # Errors
    /// A [`BundleError`] naming the first field that failed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_BUNDLE_LEN }.into());
        }
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(u32::from(version)).into());
        }
        let message = crate::codec::decode::<pb::PreKeyBundle>(rest)?;
        let identity_key = IdentityKey::from_slice(&message.identity_key).map_err(BundleError::IdentityKey)?;
        let address = Address::new(message.user_id, message.device_id).map_err(DecodeError::from)?;

        let spk = message.signed_prekey.ok_or(DecodeError::MissingField("signed_prekey"))?;
        let signed_prekey = x25519_public(&spk.public_key).map_err(BundleError::SignedPreKey)?;
        let signed_prekey_signature = fixed::<SIGNATURE_LEN>(&spk.signature, "signed_prekey.signature")?;
        let input = kdf::prekey_signature_input(kdf::SIGNED_PREKEY_LABEL, spk.id, signed_prekey.as_bytes());
        if !identity_key.verify(&input, &signed_prekey_signature) {
            return Err(BundleError::SignedPreKeySignature);
        }

        let one_time_prekey = match message.one_time_prekey {
            Some(opk) => Some((opk.id, x25519_public(&opk.public_key).map_err(BundleError::OneTimePreKey)?)),
            None => None,
        };

        let pq = message.pq_prekey.ok_or(DecodeError::MissingField("pq_prekey"))?;
        let pq_prekey = MlKemPublicKey::from_slice(&pq.public_key).map_err(BundleError::PqPreKey)?;
        let pq_prekey_signature = fixed::<SIGNATURE_LEN>(&pq.signature, "pq_prekey.signature")?;
        let pq_prekey_kind = if pq.last_resort { PqPreKeyKind::LastResort } else { PqPreKeyKind::OneTime };
        let input = kdf::prekey_signature_input(pq_prekey_kind.label(), pq.id, pq_prekey.as_bytes());
        if !identity_key.verify(&input, &pq_prekey_signature) {
            return Err(BundleError::PqPreKeySignature);
        }

        let signature = fixed::<SIGNATURE_LEN>(&message.signature, "signature")?;
        let bundle = Self {
            address,
            identity_key,
            signed_prekey_id: spk.id,
            signed_prekey,
            signed_prekey_signature,
            one_time_prekey,
            pq_prekey_id: pq.id,
            pq_prekey_kind,
            pq_prekey,
            pq_prekey_signature,
            signature,
            device_list: None,
        };
        if !identity_key.verify(&bundle.signature_input(), &bundle.signature) {
            return Err(BundleError::Signature);
        }
        if message.device_list.is_empty() {
            return Ok(bundle);
        }
        let signed = SignedDeviceList::from_bytes(&message.device_list).map_err(BundleError::DeviceList)?;
        bundle.with_device_list(&signed)
    }

    /// The bytes the bundle's own signature covers.
    fn signature_input(&self) -> Vec<u8> {
        kdf::bundle_signature_input(&kdf::BundleFields {
            identity_key: self.identity_key.as_bytes(),
            user_id: self.address.user_id(),
            device_id: self.address.device_id(),
            signed_prekey: (self.signed_prekey_id, self.signed_prekey.as_bytes()),
            one_time_prekey: self.one_time_prekey.as_ref().map(|(id, key)| (*id, key.as_bytes())),
            pq_prekey: (self.pq_prekey_kind.transcript_byte(), self.pq_prekey_id, self.pq_prekey.as_bytes()),
        })
    }
}

impl fmt::Debug for PreKeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeyBundle")
            .field("address", &self.address)
            .field("identity_key", &self.identity_key)
            .field("signed_prekey_id", &self.signed_prekey_id)
            .field("one_time_prekey_id", &self.one_time_prekey_id())
            .field("pq_prekey", &self.pq_prekey())
            .finish_non_exhaustive()
    }
}

/// `signed`'s list, verified, if it is the list of `address`'s user.
fn verified_list_of(
    address: &Address,
    signed: &SignedDeviceList,
) -> Result<(SignedDeviceList, DeviceList), DeviceListError> {
    let list = signed.verify()?;
    if list.user_id() != address.user_id() {
        return Err(DeviceListError::WrongUser {
            expected: address.user_id().to_owned(),
            found: list.user_id().to_owned(),
        });
    }
    Ok((signed.clone(), list))
}

fn x25519_public(bytes: &[u8]) -> Result<X25519PublicKey, KeyError> {
    let bytes: [u8; 32] =
        bytes.try_into().map_err(|_| KeyError::InvalidLength { expected: 32, actual: bytes.len() })?;
    let key = X25519PublicKey::from_bytes(bytes);
    if key.is_small_order() {
        return Err(KeyError::SmallOrder);
    }
    Ok(key)
}

/// What a handshake used up, applied to the prekey set together with
/// storing the new session, never before: one-time prekeys to delete, and
/// for a handshake without a one-time X25519 prekey, its base key to
/// remember (with the id of the signed prekey it used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumedPreKeys {
    /// The one-time X25519 prekey, if one was used.
    pub one_time: Option<u32>,
    /// The one-time ML-KEM prekey, if one was used (a last-resort key is never consumed).
    pub pq_one_time: Option<u32>,
    /// `(signed prekey id, base key)` to remember, for a handshake that used
    /// no one-time X25519 prekey.
    pub base_key: Option<(u32, X25519PublicKey)>,
}

impl ConsumedPreKeys {
    /// Whether nothing was consumed.
    pub fn is_empty(&self) -> bool {
        self.one_time.is_none() && self.pq_one_time.is_none() && self.base_key.is_none()
    }
}

/// Why prekeys could not be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreKeyError {
    /// The set would hold more keys of this kind than its limit.
    #[error("at most {max} prekeys of this kind may be held")]
    LimitReached {
        /// The limit.
        max: usize,
    },
    /// Prekey ids are exhausted (2^32 keys made by one device).
    #[error("prekey ids exhausted")]
    IdsExhausted,
}

pub(crate) struct SignedPreKeyPair {
    pub(crate) id: u32,
    pub(crate) key: X25519Secret,
    signature: [u8; SIGNATURE_LEN],
    created_at: u64,
}

impl SignedPreKeyPair {
    /// The storage record (it holds the secret: wrap it in `Zeroizing`).
    pub(crate) fn to_record(&self) -> storage::SignedPreKeyRecord {
        storage::SignedPreKeyRecord {
            id: self.id,
            secret: self.key.to_bytes().to_vec(),
            signature: self.signature.to_vec(),
            created_at: self.created_at,
        }
    }

    /// Loads a storage record: `secret` is 32 bytes, then `signature` is 64
    /// (PROTOCOL.md 13.5, check 7a). The id is not checked here.
    pub(crate) fn from_record(record: &storage::SignedPreKeyRecord) -> Result<Self, DecodeError> {
        Ok(Self {
            id: record.id,
            key: X25519Secret::from_bytes(*Zeroizing::new(fixed::<32>(&record.secret, "signed.secret")?)),
            signature: fixed::<SIGNATURE_LEN>(&record.signature, "signed.signature")?,
            created_at: record.created_at,
        })
    }
}

pub(crate) struct PqPreKeyPair {
    pub(crate) id: u32,
    pub(crate) key: MlKemKeyPair,
    signature: [u8; SIGNATURE_LEN],
    created_at: u64,
}

impl PqPreKeyPair {
    /// The storage record (it holds the secret: wrap it in `Zeroizing`).
    pub(crate) fn to_record(&self) -> storage::PqPreKeyRecord {
        storage::PqPreKeyRecord {
            id: self.id,
            secret: self.key.secret_bytes().to_vec(),
            public_key: self.key.public_key().as_bytes().to_vec(),
            signature: self.signature.to_vec(),
            created_at: self.created_at,
        }
    }

    /// Loads a storage record: the key pair (PROTOCOL.md 13.5, check 7c),
    /// then the signature's length. The id is not checked here.
    pub(crate) fn from_record(record: &storage::PqPreKeyRecord) -> Result<Self, DecodeError> {
        Ok(Self {
            id: record.id,
            key: MlKemKeyPair::from_bytes(&record.secret, &record.public_key)?,
            signature: fixed::<SIGNATURE_LEN>(&record.signature, "pq.signature")?,
            created_at: record.created_at,
        })
    }
}

/// The storage record of a one-time X25519 prekey (it holds the secret:
/// wrap it in `Zeroizing`).
pub(crate) fn one_time_record(id: u32, key: &X25519Secret) -> storage::OneTimePreKeyRecord {
    storage::OneTimePreKeyRecord { id, secret: key.to_bytes().to_vec() }
}

/// Loads the storage record of a one-time X25519 prekey: `secret` is 32
/// bytes (PROTOCOL.md 13.5, check 7b). The id is not checked here.
pub(crate) fn one_time_from_record(record: &storage::OneTimePreKeyRecord) -> Result<(u32, X25519Secret), DecodeError> {
    Ok((record.id, X25519Secret::from_bytes(*Zeroizing::new(fixed::<32>(&record.secret, "one_time.secret")?))))
}

/// The parts of a [`PreKeySet`], for a store that keeps each key in its own
/// row: a set built from some of them holds only those (PROTOCOL.md 14.7).
#[derive(Default)]
pub(crate) struct PreKeyParts {
    /// Oldest first; the last is current.
    pub(crate) signed: Vec<SignedPreKeyPair>,
    pub(crate) one_time: BTreeMap<u32, X25519Secret>,
    pub(crate) pq_one_time: BTreeMap<u32, PqPreKeyPair>,
    /// Oldest first; the last is current.
    pub(crate) last_resort: Vec<PqPreKeyPair>,
    pub(crate) next_id: u32,
    /// `(signed prekey id, base key)`, oldest first.
    pub(crate) seen_base_keys: VecDeque<(u32, X25519PublicKey)>,
}

/// A device's own prekeys: the secret halves of what it publishes.
///
/// Holds the current signed prekey and a few previous ones (messages made
/// from an older bundle may still be in flight), up to
/// [`MAX_ONE_TIME_PREKEYS`] one-time keys of each kind, and the last-resort
/// ML-KEM key with a few previous ones. Ids are unique across all kinds.
pub struct PreKeySet {
    /// Oldest first; the last is current.
    signed: Vec<SignedPreKeyPair>,
    one_time: BTreeMap<u32, X25519Secret>,
    pq_one_time: BTreeMap<u32, PqPreKeyPair>,
    /// Oldest first; the last is current.
    last_resort: Vec<PqPreKeyPair>,
    next_id: u32,
    /// `(signed prekey id, base key)`, oldest first (see [`MAX_REMEMBERED_BASE_KEYS`]).
    seen_base_keys: VecDeque<(u32, X25519PublicKey)>,
}

impl PreKeySet {
    /// A new set with a signed prekey and a last-resort ML-KEM prekey, made
    /// at `now` (the app's clock; kept in whole seconds since the Unix epoch).
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R, identity: &IdentityKeyPair, now: SystemTime) -> Self {
        Self::new_from_id(rng, identity, now, 1)
    }

    /// [`Self::new`] with ids counted from `first_id`: a restored device's
    /// set (PROTOCOL.md 21.6), whose ids must not be those the lost
    /// installation of the same identity gave out.
    pub(crate) fn new_from_id<R: CryptoRng + ?Sized>(
        rng: &mut R,
        identity: &IdentityKeyPair,
        now: SystemTime,
        first_id: u32,
    ) -> Self {
        let mut set = Self {
            signed: Vec::new(),
            one_time: BTreeMap::new(),
            pq_one_time: BTreeMap::new(),
            last_resort: Vec::new(),
            next_id: first_id.max(1),
            seen_base_keys: VecDeque::new(),
        };
        // A fresh set has every id free; these cannot fail.
        let _ = set.rotate_signed_prekey(rng, identity, now);
        let _ = set.rotate_last_resort_prekey(rng, identity, now);
        set
    }

    /// A set with no keys at all, for decrypting messages that need none
    /// (every prekey lookup in it fails).
    pub(crate) fn empty() -> Self {
        Self::from_parts(PreKeyParts { next_id: 1, ..PreKeyParts::default() })
    }

    /// A set of exactly these parts, unchecked: a *partial* set, holding
    /// only the keys a device read from its rows (those a prekey header
    /// names, those a bundle offers), or none, to make new keys from
    /// `next_id` on. Lookups of any other key fail as they would in a set
    /// that does not hold it.
    pub(crate) fn from_parts(parts: PreKeyParts) -> Self {
        let PreKeyParts { signed, one_time, pq_one_time, last_resort, next_id, seen_base_keys } = parts;
        Self { signed, one_time, pq_one_time, last_resort, next_id, seen_base_keys }
    }

    /// The set's parts.
    pub(crate) fn into_parts(self) -> PreKeyParts {
        let Self { signed, one_time, pq_one_time, last_resort, next_id, seen_base_keys } = self;
        PreKeyParts { signed, one_time, pq_one_time, last_resort, next_id, seen_base_keys }
    }

    fn take_id(&mut self) -> Result<u32, PreKeyError> {
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(PreKeyError::IdsExhausted)?;
        Ok(id)
    }

    /// Makes a new signed prekey the current one; keeps the previous ones up
    /// to [`MAX_SIGNED_PREKEYS`] in all.
    ///
    /// # Errors
    /// [`PreKeyError::IdsExhausted`].
    pub fn rotate_signed_prekey<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        now: SystemTime,
    ) -> Result<u32, PreKeyError> {
        let id = self.take_id()?;
        let key = X25519Secret::generate(rng);
        let signature =
            identity.sign(&kdf::prekey_signature_input(kdf::SIGNED_PREKEY_LABEL, id, key.public_key().as_bytes()));
        self.signed.push(SignedPreKeyPair { id, key, signature, created_at: crate::clock::unix_seconds(now) });
        if self.signed.len() > MAX_SIGNED_PREKEYS {
            let gone = self.signed.remove(0);
            // A message naming a signed prekey that is gone fails anyway.
            self.seen_base_keys.retain(|(spk, _)| *spk != gone.id);
        }
        Ok(id)
    }

    /// Makes a new last-resort ML-KEM prekey the current one; keeps the
    /// previous ones up to [`MAX_LAST_RESORT_PREKEYS`] in all.
    ///
    /// # Errors
    /// [`PreKeyError::IdsExhausted`].
    pub fn rotate_last_resort_prekey<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        now: SystemTime,
    ) -> Result<u32, PreKeyError> {
        let id = self.take_id()?;
        let pair = Self::pq_pair(rng, identity, id, PqPreKeyKind::LastResort, now);
        self.last_resort.push(pair);
        if self.last_resort.len() > MAX_LAST_RESORT_PREKEYS {
            self.last_resort.remove(0);
        }
        Ok(id)
    }

    fn pq_pair<R: CryptoRng + ?Sized>(
        rng: &mut R,
        identity: &IdentityKeyPair,
        id: u32,
        kind: PqPreKeyKind,
        now: SystemTime,
    ) -> PqPreKeyPair {
        let key = MlKemKeyPair::generate(rng);
        let signature = identity.sign(&kdf::prekey_signature_input(kind.label(), id, key.public_key().as_bytes()));
        PqPreKeyPair { id, key, signature, created_at: crate::clock::unix_seconds(now) }
    }

    /// Adds `count` one-time X25519 prekeys and `count` one-time ML-KEM
    /// prekeys; returns the new ids of each kind.
    ///
    /// # Errors
    /// [`PreKeyError::LimitReached`] if either kind would exceed
    /// [`MAX_ONE_TIME_PREKEYS`]; nothing is added then.
    pub fn add_one_time_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        count: usize,
        now: SystemTime,
    ) -> Result<(Vec<u32>, Vec<u32>), PreKeyError> {
        if self.one_time.len().saturating_add(count) > MAX_ONE_TIME_PREKEYS
            || self.pq_one_time.len().saturating_add(count) > MAX_ONE_TIME_PREKEYS
        {
            return Err(PreKeyError::LimitReached { max: MAX_ONE_TIME_PREKEYS });
        }
        // Two ids per pair: check they exist before adding anything.
        let needed = u32::try_from(count).ok().and_then(|c| c.checked_mul(2)).ok_or(PreKeyError::IdsExhausted)?;
        if self.next_id.checked_add(needed).is_none() {
            return Err(PreKeyError::IdsExhausted);
        }
        let (mut classic, mut pq) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for _ in 0..count {
            let id = self.take_id()?;
            self.one_time.insert(id, X25519Secret::generate(rng));
            classic.push(id);
            let id = self.take_id()?;
            self.pq_one_time.insert(id, Self::pq_pair(rng, identity, id, PqPreKeyKind::OneTime, now));
            pq.push(id);
        }
        Ok((classic, pq))
    }

    /// Adds one-time prekeys of each kind until each kind has `target`
    /// (the two counts can differ: a server may hand out a bundle without
    /// its X25519 one-time key). Returns how many of each were added.
    ///
    /// # Errors
    /// [`PreKeyError::LimitReached`] if `target` is above
    /// [`MAX_ONE_TIME_PREKEYS`]; [`PreKeyError::IdsExhausted`]. Nothing is
    /// added then.
    pub fn top_up_one_time_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        target: usize,
        now: SystemTime,
    ) -> Result<(usize, usize), PreKeyError> {
        let held = (self.one_time.len(), self.pq_one_time.len());
        self.top_up_from(rng, identity, held, target, now)
    }

    /// [`Self::top_up_one_time_prekeys`] for a set that holds `held` one-time
    /// prekeys `(X25519, ML-KEM)` elsewhere (a partial set): adds the new
    /// keys to this one.
    pub(crate) fn top_up_from<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        (held_classic, held_pq): (usize, usize),
        target: usize,
        now: SystemTime,
    ) -> Result<(usize, usize), PreKeyError> {
        if target > MAX_ONE_TIME_PREKEYS {
            return Err(PreKeyError::LimitReached { max: MAX_ONE_TIME_PREKEYS });
        }
        let classic = target.saturating_sub(held_classic);
        let pq = target.saturating_sub(held_pq);
        let needed = classic.checked_add(pq).and_then(|n| u32::try_from(n).ok()).ok_or(PreKeyError::IdsExhausted)?;
        if self.next_id.checked_add(needed).is_none() {
            return Err(PreKeyError::IdsExhausted);
        }
        for _ in 0..classic {
            let id = self.take_id()?;
            self.one_time.insert(id, X25519Secret::generate(rng));
        }
        for _ in 0..pq {
            let id = self.take_id()?;
            self.pq_one_time.insert(id, Self::pq_pair(rng, identity, id, PqPreKeyKind::OneTime, now));
        }
        Ok((classic, pq))
    }

    /// How many one-time prekeys are left: `(X25519, ML-KEM)`.
    pub fn one_time_counts(&self) -> (usize, usize) {
        (self.one_time.len(), self.pq_one_time.len())
    }

    /// Creation time of the current signed prekey and of the current
    /// last-resort key, for the app's rotation schedule.
    pub fn current_created_at(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let at = crate::clock::from_unix_seconds;
        (self.signed.last().map(|k| at(k.created_at)), self.last_resort.last().map(|k| at(k.created_at)))
    }

    /// A bundle offering the current signed prekey, the lowest-numbered
    /// one-time X25519 prekey (if any) and the lowest-numbered one-time
    /// ML-KEM prekey, or the last-resort key when none is left.
    ///
    /// Offering a key does not consume it: keys are consumed when a prekey
    /// message that used them is committed.
    pub fn bundle(&self, identity: &IdentityKeyPair, address: &Address) -> Option<PreKeyBundle> {
        self.bundle_skipping(identity, address, 0)
    }

    /// Like [`Self::bundle`], offering the `n`-th one-time keys (0-based) so
    /// that a server can be given several distinct bundles.
    pub fn bundle_skipping(&self, identity: &IdentityKeyPair, address: &Address, n: usize) -> Option<PreKeyBundle> {
        let signed = self.signed.last()?;
        let pq = self.pq_one_time.values().nth(n).map(|p| (p, PqPreKeyKind::OneTime));
        let (pq, pq_kind) = pq.or_else(|| self.last_resort.last().map(|p| (p, PqPreKeyKind::LastResort)))?;
        let mut bundle = PreKeyBundle {
            address: address.clone(),
            identity_key: identity.public_key(),
            signed_prekey_id: signed.id,
            signed_prekey: signed.key.public_key(),
            signed_prekey_signature: signed.signature,
            one_time_prekey: self.one_time.iter().nth(n).map(|(id, key)| (*id, key.public_key())),
            pq_prekey_id: pq.id,
            pq_prekey_kind: pq_kind,
            pq_prekey: pq.key.public_key().clone(),
            pq_prekey_signature: pq.signature,
            signature: [0; SIGNATURE_LEN],
            device_list: None,
        };
        bundle.signature = identity.sign(&bundle.signature_input());
        Some(bundle)
    }

    pub(crate) fn signed_prekey(&self, id: u32) -> Option<&SignedPreKeyPair> {
        self.signed.iter().find(|k| k.id == id)
    }

    pub(crate) fn one_time_prekey(&self, id: u32) -> Option<&X25519Secret> {
        self.one_time.get(&id)
    }

    pub(crate) fn pq_prekey(&self, id: u32) -> Option<(&PqPreKeyPair, PqPreKeyKind)> {
        self.pq_one_time
            .get(&id)
            .map(|p| (p, PqPreKeyKind::OneTime))
            .or_else(|| self.last_resort.iter().find(|p| p.id == id).map(|p| (p, PqPreKeyKind::LastResort)))
    }

    /// Whether the one-time X25519 prekey `id` is still held.
    pub fn has_one_time_prekey(&self, id: u32) -> bool {
        self.one_time.contains_key(&id)
    }

    /// Whether the one-time ML-KEM prekey `id` is still held.
    pub fn has_pq_one_time_prekey(&self, id: u32) -> bool {
        self.pq_one_time.contains_key(&id)
    }

    /// Whether a handshake with this base key and signed prekey, and no
    /// one-time X25519 prekey, was already committed.
    pub fn has_seen_base_key(&self, signed_prekey_id: u32, base_key: &X25519PublicKey) -> bool {
        self.seen_base_keys.iter().any(|(spk, key)| *spk == signed_prekey_id && key == base_key)
    }

    /// Applies what a committed handshake used: deletes its one-time
    /// prekeys and remembers its base key if it had no one-time X25519 prekey.
    pub fn consume(&mut self, consumed: &ConsumedPreKeys) {
        if let Some(id) = consumed.one_time {
            self.one_time.remove(&id);
        }
        if let Some(id) = consumed.pq_one_time {
            self.pq_one_time.remove(&id);
        }
        if let Some((spk, base_key)) = consumed.base_key
            && !self.has_seen_base_key(spk, &base_key)
        {
            self.seen_base_keys.push_back((spk, base_key));
            while self.seen_base_keys.len() > MAX_REMEMBERED_BASE_KEYS {
                self.seen_base_keys.pop_front();
            }
        }
    }

    /// Serializes the set (storage protobuf `PreKeySet`). Seal the bytes.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let record = Zeroizing::new(storage::PreKeySet {
            version: 1,
            signed: self.signed.iter().map(SignedPreKeyPair::to_record).collect(),
            one_time: self.one_time.iter().map(|(id, k)| one_time_record(*id, k)).collect(),
            pq_one_time: self.pq_one_time.values().map(PqPreKeyPair::to_record).collect(),
            last_resort: self.last_resort.iter().map(PqPreKeyPair::to_record).collect(),
            next_id: self.next_id,
            seen_base_keys: self
                .seen_base_keys
                .iter()
                .map(|(spk, key)| storage::SeenBaseKey { signed_prekey_id: *spk, base_key: key.as_bytes().to_vec() })
                .collect(),
        });
        let mut out = Zeroizing::new(Vec::with_capacity(record.encoded_len()));
        let _ = record.encode(&mut *out);
        out
    }

    /// Parses a set serialized by [`Self::to_bytes`].
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_PREKEY_SET_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_PREKEY_SET_LEN });
        }
        let record = crate::codec::decode_secret::<storage::PreKeySet>(bytes)?;
        if record.version != 1 {
            return Err(DecodeError::UnsupportedVersion(record.version));
        }
        if record.signed.is_empty() || record.signed.len() > MAX_SIGNED_PREKEYS {
            return Err(DecodeError::InvalidValue("signed"));
        }
        if record.last_resort.is_empty() || record.last_resort.len() > MAX_LAST_RESORT_PREKEYS {
            return Err(DecodeError::InvalidValue("last_resort"));
        }
        if record.one_time.len() > MAX_ONE_TIME_PREKEYS || record.pq_one_time.len() > MAX_ONE_TIME_PREKEYS {
            return Err(DecodeError::InvalidValue("one_time"));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut check_id = |id: u32| {
            if id >= record.next_id || !ids.insert(id) { Err(DecodeError::InvalidValue("id")) } else { Ok(()) }
        };
        let mut signed = Vec::with_capacity(record.signed.len());
        for k in &record.signed {
            check_id(k.id)?;
            signed.push(SignedPreKeyPair::from_record(k)?);
        }
        let mut one_time = BTreeMap::new();
        for k in &record.one_time {
            check_id(k.id)?;
            let (id, key) = one_time_from_record(k)?;
            one_time.insert(id, key);
        }
        let mut pq_one_time = BTreeMap::new();
        for p in &record.pq_one_time {
            check_id(p.id)?;
            pq_one_time.insert(p.id, PqPreKeyPair::from_record(p)?);
        }
        let mut last_resort = Vec::with_capacity(record.last_resort.len());
        for p in &record.last_resort {
            check_id(p.id)?;
            last_resort.push(PqPreKeyPair::from_record(p)?);
        }
        if record.seen_base_keys.len() > MAX_REMEMBERED_BASE_KEYS {
            return Err(DecodeError::InvalidValue("seen_base_keys"));
        }
        let seen_base_keys = record
            .seen_base_keys
            .iter()
            .map(|k| Ok((k.signed_prekey_id, X25519PublicKey::from_slice(&k.base_key, "seen_base_keys.base_key")?)))
            .collect::<Result<_, DecodeError>>()?;
        Ok(Self { signed, one_time, pq_one_time, last_resort, next_id: record.next_id, seen_base_keys })
    }
}

impl fmt::Debug for PreKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeySet")
            .field("signed", &self.signed.iter().map(|k| k.id).collect::<Vec<_>>())
            .field("one_time", &self.one_time.len())
            .field("pq_one_time", &self.pq_one_time.len())
            .field("last_resort", &self.last_resort.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::user::UserIdentityKeyPair;

    /// PROTOCOL.md 7.1: a bundle with every field at its limit (a 256-byte
    /// user id, ids and device id of five varint bytes, a one-time prekey,
    /// the last-resort flag) and the largest valid device list takes 3,884
    /// bytes, within [`MAX_BUNDLE_LEN`]; without the list, 2,164.
    #[test]
    fn the_largest_bundle_with_a_list_fits_the_limit() {
        let mut rng = crate::os_rng();
        let identity = IdentityKeyPair::from_seed(&[1; 32]);
        let address = Address::new("a".repeat(256), u32::MAX).unwrap();
        let mut set = PreKeySet::new(&mut rng, &identity, UNIX_EPOCH);
        set.add_one_time_prekeys(&mut rng, &identity, 1, UNIX_EPOCH).unwrap();
        let mut bundle = set.bundle(&identity, &address).unwrap();
        let id = u32::MAX;
        bundle.signed_prekey_id = id;
        bundle.signed_prekey_signature =
            identity.sign(&kdf::prekey_signature_input(kdf::SIGNED_PREKEY_LABEL, id, bundle.signed_prekey.as_bytes()));
        bundle.one_time_prekey = bundle.one_time_prekey.map(|(_, key)| (id, key));
        let last_resort = set.last_resort.last().unwrap();
        bundle.pq_prekey_id = id;
        bundle.pq_prekey_kind = PqPreKeyKind::LastResort;
        bundle.pq_prekey = last_resort.key.public_key().clone();
        bundle.pq_prekey_signature = identity.sign(&kdf::prekey_signature_input(
            PqPreKeyKind::LastResort.label(),
            id,
            bundle.pq_prekey.as_bytes(),
        ));
        bundle.signature = identity.sign(&bundle.signature_input());
        assert!(bundle.one_time_prekey.is_some());
        assert_eq!(bundle.to_bytes().len(), 2_164);
        assert_eq!(PreKeyBundle::from_bytes(&bundle.to_bytes()).unwrap(), bundle);

        let user = UserIdentityKeyPair::from_seed(&[2; 32]);
        let devices =
            (0..32u8).map(|i| (u32::MAX - u32::from(i), IdentityKeyPair::from_seed(&[i + 3; 32]).public_key()));
        let list =
            DeviceList::new("a".repeat(256), u64::MAX, &user.public_key(), devices).unwrap().sign(&user).unwrap();
        assert_eq!(list.to_bytes().len(), 1_717);
        let bundle = bundle.with_device_list(&list).unwrap();
        let bytes = bundle.to_bytes();
        // Field 8: a tag byte, a two-byte length, the list.
        assert_eq!(bytes.len(), 2_164 + 1 + 2 + list.to_bytes().len());
        assert_eq!(bytes.len(), 3_884);
        assert!(bytes.len() <= MAX_BUNDLE_LEN);
        assert_eq!(PreKeyBundle::from_bytes(&bytes).unwrap(), bundle);
    }
}
