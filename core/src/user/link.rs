//! Linking a new device to its user (PROTOCOL.md 23.8): a code shown on the
//! new device and scanned on an existing one, then one provisioning message
//! from the existing device to the new one, sealed to the code.
//!
//! ```text
//! code  = LinkCode { 1, user id, device id, IK_new, EK_offer (X25519), secret (32), created_at }
//! key, nonce = HKDF-SHA256(salt = secret, ikm = X25519(EK_link, EK_offer),
//!                          info = LINK_LABEL || code || EK_link_public), 32 + 12 bytes
//! message = 0x01 || EK_link_public (32) || ChaCha20-Poly1305(key, nonce, pad_row(LinkProvisioning),
//!                                                            AD = LINK_LABEL || EK_link_public)
//! ```
//!
//! The code never travels through the server: only a device that saw it
//! knows `secret`, so only it can make a message that opens under the
//! offer, and the server, which relays the message, learns nothing of what
//! it carries (the user identity seed, the new list, the contacts' pinned
//! lists). This module is the pure exchange; the device calls
//! ([`Device::link_offer`](crate::device::Device::link_offer),
//! [`Device::link_device`](crate::device::Device::link_device),
//! [`Device::finish_link`](crate::device::Device::finish_link)) read and
//! write the store.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use prost::Message as _;
use rand_core::CryptoRng;
use samizdat_proto::wire as pb;
use thiserror::Error;
use zeroize::Zeroizing;

use super::{DeviceList, DeviceListError, SignedDeviceList, UserIdentityKeyPair};
use crate::{
    DecodeError, ErrorKind,
    address::{Address, MAX_USER_ID_LEN},
    kdf,
    keys::{IdentityKey, X25519PublicKey, X25519Secret, fixed},
    limits::{MAX_LINK_MESSAGE_LEN, MAX_LINK_PINNED_USERS},
    padding,
};

/// The format version of a link code and of a link message (their first
/// field, and first byte).
pub const LINK_VERSION: u8 = 1;
/// The longest link code: a user id of [`MAX_USER_ID_LEN`] bytes and every
/// other field at its longest take 380 bytes.
pub const MAX_LINK_CODE_LEN: usize = 512;
/// The label of the link key derivation and of the message's associated data.
pub(crate) const LINK_LABEL: &[u8] = b"samizdat/v1/link";
/// The AEAD tag.
const TAG_LEN: usize = 16;
/// The version byte and the linking device's X25519 public key.
const HEADER_LEN: usize = 1 + 32;

/// Why a link failed. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The scanned code is not a link code of this release: not canonical,
    /// another version, a field of the wrong length, a key that is not
    /// valid, a user id of 0 or more than 256 bytes, or more than
    /// [`MAX_LINK_CODE_LEN`] bytes.
    #[error("not a link code: {0}")]
    MalformedCode(DecodeError),
    /// The code is older than
    /// [`LINK_CODE_LIFETIME_SECS`](crate::limits::LINK_CODE_LIFETIME_SECS)
    /// (or that far in the future), or the offer was made that long ago:
    /// show a new code.
    #[error("the link code expired")]
    Expired,
    /// The code is of a device of another user, or the offer of another
    /// device than the one asked to finish it.
    #[error("the link code is of user {found:?}, not {expected:?}")]
    WrongUser {
        /// This device's user id.
        expected: String,
        /// The code's.
        found: String,
    },
    /// The code is this device's own.
    #[error("a device cannot link itself")]
    SelfLink,
    /// This device has no device list of its own yet
    /// ([`Device::set_device_list`](crate::device::Device::set_device_list)),
    /// so it has no list to add a device to.
    #[error("this device has no device list of its own")]
    NoOwnList,
    /// The list is full ([`MAX_DEVICES_PER_USER`](super::MAX_DEVICES_PER_USER)).
    #[error("the device list is full")]
    TooManyDevices,
    /// The linking device has pinned more users than one message carries
    /// ([`MAX_LINK_PINNED_USERS`]).
    #[error("{count} pinned users, more than a link carries ({max})")]
    TooManyUsers {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The message is longer than [`MAX_LINK_MESSAGE_LEN`], or shorter than
    /// any link message, or of another version: it is not a link message.
    #[error("not a link message: {0}")]
    MalformedMessage(DecodeError),
    /// The message does not open under this offer: made for another code
    /// (an older offer, another device's), altered, or forged by someone
    /// who never saw the code.
    #[error("the link message is not for this offer")]
    WrongCode,
    /// The offer was already used to link this device: a message replayed.
    #[error("the link offer was already used")]
    AlreadyUsed,
    /// The message opened, but what it carries breaks a rule (PROTOCOL.md
    /// 23.8): a list that does not verify, that is not this user's, not
    /// under the user identity key it carries, or does not name this
    /// device with its identity key; a pinned list of our own user, or two
    /// of one user.
    #[error("the linked device list is refused: {0}")]
    Provisioning(DeviceListError),
}

impl LinkError {
    /// The stable error code (PROTOCOL.md 19): what the app scanned or
    /// asked is wrong ([`ErrorKind::InvalidArgument`]: scan a new code);
    /// a limit ([`ErrorKind::LimitExceeded`]); a message that is not for
    /// this offer or not well formed ([`ErrorKind::InvalidMessage`]: drop
    /// it); one already used ([`ErrorKind::Duplicate`]).
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::MalformedCode(_) | Self::Expired | Self::WrongUser { .. } | Self::SelfLink | Self::NoOwnList => {
                ErrorKind::InvalidArgument
            }
            Self::TooManyDevices | Self::TooManyUsers { .. } => ErrorKind::LimitExceeded,
            Self::MalformedMessage(_) | Self::WrongCode | Self::Provisioning(_) => ErrorKind::InvalidMessage,
            Self::AlreadyUsed => ErrorKind::Duplicate,
        }
    }
}

/// A new device's offer to be linked: the code to show, and the keys that
/// open the message the scanning device sends back. Made by
/// [`Device::link_offer`](crate::device::Device::link_offer); kept in
/// memory only (its keys are zeroized on drop and never stored), so an app
/// that restarts shows a new code. It links at most once.
pub struct LinkOffer {
    code: Zeroizing<Vec<u8>>,
    address: Address,
    identity: IdentityKey,
    ephemeral: X25519Secret,
    secret: Zeroizing<[u8; 32]>,
    created_at: u64,
    used: AtomicBool,
}

impl LinkOffer {
    /// A new offer for the device at `address` with identity key
    /// `identity`, made at `created_at` (seconds since the Unix epoch).
    pub(crate) fn new<R: CryptoRng + ?Sized>(
        rng: &mut R,
        address: Address,
        identity: IdentityKey,
        created_at: u64,
    ) -> Self {
        let ephemeral = X25519Secret::generate(rng);
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut_slice());
        Self::from_parts(address, identity, ephemeral, secret, created_at)
    }

    /// The offer of given keys (the test vectors draw them).
    pub(crate) fn from_parts(
        address: Address,
        identity: IdentityKey,
        ephemeral: X25519Secret,
        secret: Zeroizing<[u8; 32]>,
        created_at: u64,
    ) -> Self {
        // The message holding the secret is wiped too, not only its encoding.
        let message = Zeroizing::new(pb::LinkCode {
            version: u32::from(LINK_VERSION),
            user_id: address.user_id().to_owned(),
            device_id: address.device_id(),
            identity_key: identity.as_bytes().to_vec(),
            ephemeral_key: ephemeral.public_key().as_bytes().to_vec(),
            secret: secret.to_vec(),
            created_at,
        });
        let code = Zeroizing::new(message.encode_to_vec());
        Self { code, address, identity, ephemeral, secret, created_at, used: AtomicBool::new(false) }
    }

    /// The code to show (as a QR code, say) for an existing device of the
    /// same user to scan. It holds a secret: show it only on this device's
    /// screen, never send it through the server.
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// The device the offer links.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// When the offer was made, in seconds since the Unix epoch.
    pub(crate) fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The identity key of the device the offer links.
    pub(crate) fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    /// Whether the offer linked its device already.
    pub(crate) fn is_used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }

    /// Claims the offer for one finish: `false` if it is used, or claimed
    /// by another call (of any handle) that has not finished.
    pub(crate) fn claim(&self) -> bool {
        self.used.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Gives the offer back after a finish that wrote nothing.
    pub(crate) fn release(&self) {
        self.used.store(false, Ordering::Release);
    }

    /// Opens a link message made for this offer, and checks what it
    /// carries (PROTOCOL.md 23.8, checks K4 to K10).
    ///
    /// # Errors
    /// [`LinkError::MalformedMessage`], [`LinkError::WrongCode`],
    /// [`LinkError::Provisioning`].
    pub(crate) fn open(&self, message: &[u8]) -> Result<Provisioning, LinkError> {
        let malformed = LinkError::MalformedMessage;
        if message.len() > MAX_LINK_MESSAGE_LEN {
            return Err(malformed(DecodeError::TooLarge { len: message.len(), max: MAX_LINK_MESSAGE_LEN }));
        }
        let min = HEADER_LEN + padding::MIN_ROW_BUCKET + TAG_LEN;
        if message.len() < min {
            return Err(malformed(DecodeError::InvalidLength { field: "link", expected: min, actual: message.len() }));
        }
        let (header, sealed) = message.split_at(HEADER_LEN);
        let (version, linker) = header.split_first().ok_or(malformed(DecodeError::Empty))?;
        if *version != LINK_VERSION {
            return Err(malformed(DecodeError::UnsupportedVersion(u32::from(*version))));
        }
        // A length no sealed provisioning has.
        let padded_len = sealed.len().saturating_sub(TAG_LEN);
        if padding::row_padded_len(padded_len.saturating_sub(1)) != padded_len {
            return Err(malformed(DecodeError::InvalidValue("link.length")));
        }
        let linker = X25519PublicKey::from_slice(linker, "link.ephemeral_key").map_err(malformed)?;
        // A key of small order gives all zeros: no message opens.
        let shared = self.ephemeral.diffie_hellman(&linker).ok_or(LinkError::WrongCode)?;
        let (key, nonce) = link_key(&shared, &self.secret, &self.code, &linker);
        let cipher = ChaCha20Poly1305::new((&*key).into());
        let ad = [LINK_LABEL, linker.as_bytes()].concat();
        let mut padded = cipher
            .decrypt(&Nonce::from(*nonce), Payload { msg: sealed, aad: &ad })
            .map(Zeroizing::new)
            .map_err(|_| LinkError::WrongCode)?;
        let len = padding::unpadded_row_len(&padded).ok_or(malformed(DecodeError::InvalidValue("link.padding")))?;
        padded.truncate(len);
        Provisioning::from_bytes(&padded, &self.address, &self.identity)
    }
}

impl fmt::Debug for LinkOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkOffer")
            .field("address", &self.address)
            .field("created_at", &self.created_at)
            .field("used", &self.is_used())
            .finish_non_exhaustive()
    }
}

/// A scanned link code, checked (PROTOCOL.md 23.8, C1 to C7).
pub struct LinkCode {
    code: Zeroizing<Vec<u8>>,
    address: Address,
    identity: IdentityKey,
    ephemeral: X25519PublicKey,
    secret: Zeroizing<[u8; 32]>,
    created_at: u64,
}

impl LinkCode {
    /// Parses a scanned code.
    ///
    /// # Errors
    /// [`LinkError::MalformedCode`] naming the first check that failed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LinkError> {
        let malformed = LinkError::MalformedCode;
        if bytes.len() > MAX_LINK_CODE_LEN {
            return Err(malformed(DecodeError::TooLarge { len: bytes.len(), max: MAX_LINK_CODE_LEN }));
        }
        let code = crate::codec::decode_secret::<pb::LinkCode>(bytes).map_err(malformed)?;
        if code.version != u32::from(LINK_VERSION) {
            return Err(malformed(DecodeError::UnsupportedVersion(code.version)));
        }
        if code.user_id.is_empty() || code.user_id.len() > MAX_USER_ID_LEN {
            return Err(malformed(DecodeError::InvalidValue("link_code.user_id")));
        }
        let address = Address::new(code.user_id.clone(), code.device_id)
            .map_err(|_| malformed(DecodeError::InvalidValue("link_code.user_id")))?;
        let identity = IdentityKey::from_slice(&code.identity_key)
            .map_err(|_| malformed(DecodeError::InvalidValue("link_code.identity_key")))?;
        let ephemeral =
            X25519PublicKey::from_slice(&code.ephemeral_key, "link_code.ephemeral_key").map_err(malformed)?;
        if ephemeral.is_small_order() {
            return Err(malformed(DecodeError::InvalidValue("link_code.ephemeral_key")));
        }
        let secret = Zeroizing::new(fixed::<32>(&code.secret, "link_code.secret").map_err(malformed)?);
        Ok(Self {
            code: Zeroizing::new(bytes.to_vec()),
            address,
            identity,
            ephemeral,
            secret,
            created_at: code.created_at,
        })
    }

    /// The address of the device to link.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The identity key of the device to link.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity
    }

    /// When the offer was made (seconds since the Unix epoch, the new
    /// device's clock).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// Seals `provisioning` to this code, with a fresh X25519 key from
    /// `rng`.
    ///
    /// # Errors
    /// [`LinkError::TooManyUsers`]; [`LinkError::MalformedMessage`] with
    /// [`DecodeError::TooLarge`] past [`MAX_LINK_MESSAGE_LEN`].
    pub(crate) fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        provisioning: &Provisioning,
    ) -> Result<Vec<u8>, LinkError> {
        self.seal_with(&X25519Secret::generate(rng), provisioning)
    }

    /// [`Self::seal`] with a given key (the test vectors draw it).
    pub(crate) fn seal_with(
        &self,
        ephemeral: &X25519Secret,
        provisioning: &Provisioning,
    ) -> Result<Vec<u8>, LinkError> {
        if provisioning.pinned.len() > MAX_LINK_PINNED_USERS {
            return Err(LinkError::TooManyUsers { count: provisioning.pinned.len(), max: MAX_LINK_PINNED_USERS });
        }
        let public = ephemeral.public_key();
        // The code's key was checked not to be of small order.
        let shared = ephemeral.diffie_hellman(&self.ephemeral).ok_or(LinkError::WrongCode)?;
        let (key, nonce) = link_key(&shared, &self.secret, &self.code, &public);
        let plaintext = provisioning.to_bytes();
        let padded = padding::pad_row(&plaintext, TAG_LEN);
        let len = HEADER_LEN.saturating_add(padded.len()).saturating_add(TAG_LEN);
        if len > MAX_LINK_MESSAGE_LEN {
            return Err(LinkError::MalformedMessage(DecodeError::TooLarge { len, max: MAX_LINK_MESSAGE_LEN }));
        }
        let ad = [LINK_LABEL, public.as_bytes()].concat();
        let sealed = ChaCha20Poly1305::new((&*key).into())
            .encrypt(&Nonce::from(*nonce), Payload { msg: padded.as_slice(), aad: &ad })
            .map_err(|_| LinkError::MalformedMessage(DecodeError::TooLarge { len, max: MAX_LINK_MESSAGE_LEN }))?;
        Ok([&[LINK_VERSION][..], public.as_bytes(), &sealed].concat())
    }
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCode")
            .field("address", &self.address)
            .field("identity", &self.identity)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The key and nonce of a link message: HKDF-SHA256 with the code's secret
/// as salt, the X25519 output as input, and the label, the code and the
/// linking device's public key as info.
fn link_key(
    shared: &[u8; 32],
    salt: &[u8; 32],
    code: &[u8],
    linker: &X25519PublicKey,
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 12]>) {
    // The code holds the secret: the info is wiped like it.
    let info = Zeroizing::new([LINK_LABEL, code, linker.as_bytes()].concat());
    let okm = kdf::hkdf_expand::<44>(salt, shared, &info);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = Zeroizing::new([0u8; 12]);
    let (k, n) = okm.split_at(32);
    key.copy_from_slice(k);
    nonce.copy_from_slice(n);
    (key, nonce)
}

/// What a linked device receives (PROTOCOL.md 23.8).
pub(crate) struct Provisioning {
    pub(crate) user_identity: UserIdentityKeyPair,
    pub(crate) device_list: SignedDeviceList,
    /// Pinned contact users' lists, in increasing user id order.
    pub(crate) pinned: Vec<SignedDeviceList>,
    pub(crate) linker_device_id: u32,
}

impl Provisioning {
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let message = Zeroizing::new(pb::LinkProvisioning {
            user_identity_seed: self.user_identity.to_seed().to_vec(),
            device_list: self.device_list.to_bytes(),
            pinned: self.pinned.iter().map(SignedDeviceList::to_bytes).collect(),
            linker_device_id: self.linker_device_id,
        });
        Zeroizing::new(message.encode_to_vec())
    }

    /// Parses and checks the provisioning for the device at `address` with
    /// identity `identity`.
    fn from_bytes(bytes: &[u8], address: &Address, identity: &IdentityKey) -> Result<Self, LinkError> {
        let message =
            crate::codec::decode_secret::<pb::LinkProvisioning>(bytes).map_err(LinkError::MalformedMessage)?;
        let seed = Zeroizing::new(
            fixed::<32>(&message.user_identity_seed, "link.user_identity_seed").map_err(LinkError::MalformedMessage)?,
        );
        let user_identity = UserIdentityKeyPair::from_seed(&seed);
        let refused = LinkError::Provisioning;
        if message.pinned.len() > MAX_LINK_PINNED_USERS {
            return Err(LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")));
        }
        let device_list = SignedDeviceList::from_bytes(&message.device_list).map_err(refused)?;
        let list: DeviceList = device_list.verify().map_err(refused)?;
        if list.user_id() != address.user_id() {
            let (expected, found) = (address.user_id().to_owned(), list.user_id().to_owned());
            return Err(refused(DeviceListError::WrongUser { expected, found }));
        }
        if *list.user_identity_key() != user_identity.public_key() {
            return Err(refused(DeviceListError::WrongSigner));
        }
        if list.device(address.device_id()) != Some(identity) {
            return Err(refused(DeviceListError::UnlistedDevice { device_id: address.device_id() }));
        }
        // The linking device is another device of the list (what the app
        // shows as "linked by").
        if message.linker_device_id == address.device_id() || list.device(message.linker_device_id).is_none() {
            return Err(refused(DeviceListError::UnlistedDevice { device_id: message.linker_device_id }));
        }
        // Strictly increasing user ids (so each once), never our own.
        let mut last: Option<String> = None;
        let mut pinned = Vec::with_capacity(message.pinned.len());
        for bytes in &message.pinned {
            let signed = SignedDeviceList::from_bytes(bytes).map_err(refused)?;
            let list = signed.verify().map_err(refused)?;
            if list.user_id() == address.user_id() || last.as_deref().is_some_and(|last| last >= list.user_id()) {
                return Err(LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")));
            }
            last = Some(list.user_id().to_owned());
            pinned.push(signed);
        }
        Ok(Self { user_identity, device_list, pinned, linker_device_id: message.linker_device_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeyPair;

    struct Parties {
        offer: LinkOffer,
        code: LinkCode,
        user: UserIdentityKeyPair,
        device: IdentityKey,
    }

    fn parties() -> Parties {
        let mut rng = crate::os_rng();
        let device = IdentityKeyPair::generate(&mut rng).public_key();
        let offer = LinkOffer::new(&mut rng, Address::new("alice", 2).unwrap(), device, 1_000);
        let code = LinkCode::from_bytes(offer.code()).unwrap();
        Parties { offer, code, user: UserIdentityKeyPair::generate(&mut rng), device }
    }

    fn list(user_id: &str, user: &UserIdentityKeyPair, devices: &[(u32, IdentityKey)]) -> SignedDeviceList {
        DeviceList::new(user_id, 1, &user.public_key(), devices.iter().copied()).unwrap().sign(user).unwrap()
    }

    fn provisioning(p: &Parties, device_list: SignedDeviceList, pinned: Vec<SignedDeviceList>) -> Provisioning {
        Provisioning {
            user_identity: UserIdentityKeyPair::from_seed(&p.user.to_seed()),
            device_list,
            pinned,
            linker_device_id: 1,
        }
    }

    fn other_key() -> IdentityKey {
        IdentityKeyPair::generate(&mut crate::os_rng()).public_key()
    }

    #[test]
    fn a_sealed_provisioning_opens_under_its_offer_only() {
        let p = parties();
        let bob = UserIdentityKeyPair::generate(&mut crate::os_rng());
        let pinned = vec![list("bob", &bob, &[(1, other_key())]), list("carol", &bob, &[(4, other_key())])];
        let own = list("alice", &p.user, &[(1, other_key()), (2, p.device)]);
        let message = p.code.seal(&mut crate::os_rng(), &provisioning(&p, own.clone(), pinned.clone())).unwrap();
        let opened = p.offer.open(&message).unwrap();
        assert_eq!((opened.device_list, opened.pinned, opened.linker_device_id), (own, pinned, 1));
        assert_eq!(opened.user_identity.public_key(), p.user.public_key());
        // Another offer of the same device does not open it.
        let q = parties();
        assert_eq!(q.offer.open(&message).err(), Some(LinkError::WrongCode));
    }

    #[test]
    fn what_the_provisioning_carries_is_checked() {
        let p = parties();
        let stranger = UserIdentityKeyPair::generate(&mut crate::os_rng());
        let open = |own: SignedDeviceList, pinned: Vec<SignedDeviceList>| {
            let message = p.code.seal(&mut crate::os_rng(), &provisioning(&p, own, pinned)).unwrap();
            p.offer.open(&message).err()
        };
        // K9: the list names this device with its key, is this user's, and
        // is under the user identity carried.
        assert_eq!(
            open(list("alice", &p.user, &[(1, other_key())]), vec![]),
            Some(LinkError::Provisioning(DeviceListError::UnlistedDevice { device_id: 2 }))
        );
        assert_eq!(
            open(list("alice", &p.user, &[(2, other_key())]), vec![]),
            Some(LinkError::Provisioning(DeviceListError::UnlistedDevice { device_id: 2 }))
        );
        assert!(matches!(
            open(list("mallory", &p.user, &[(2, p.device)]), vec![]),
            Some(LinkError::Provisioning(DeviceListError::WrongUser { .. }))
        ));
        assert_eq!(
            open(list("alice", &stranger, &[(2, p.device)]), vec![]),
            Some(LinkError::Provisioning(DeviceListError::WrongSigner))
        );
        // The linking device (1) must be another device of the list.
        assert_eq!(
            open(list("alice", &p.user, &[(2, p.device)]), vec![]),
            Some(LinkError::Provisioning(DeviceListError::UnlistedDevice { device_id: 1 }))
        );
        // K10: pinned lists of other users, each once, in increasing order.
        let own = list("alice", &p.user, &[(1, other_key()), (2, p.device)]);
        let bob = list("bob", &stranger, &[(1, other_key())]);
        let carol = list("carol", &stranger, &[(1, other_key())]);
        let pinned_refused = Some(LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")));
        assert_eq!(open(own.clone(), vec![own.clone()]), pinned_refused);
        assert_eq!(open(own.clone(), vec![bob.clone(), bob.clone()]), pinned_refused);
        assert_eq!(open(own.clone(), vec![carol.clone(), bob.clone()]), pinned_refused);
        assert_eq!(open(own, vec![bob, carol]), None);
    }

    #[test]
    fn the_pinned_users_are_bounded() {
        let p = parties();
        let stranger = UserIdentityKeyPair::generate(&mut crate::os_rng());
        let own = list("alice", &p.user, &[(2, p.device)]);
        let one = list("bob", &stranger, &[(1, other_key())]);
        let too_many = provisioning(&p, own, vec![one; MAX_LINK_PINNED_USERS + 1]);
        assert_eq!(
            p.code.seal(&mut crate::os_rng(), &too_many).err(),
            Some(LinkError::TooManyUsers { count: MAX_LINK_PINNED_USERS + 1, max: MAX_LINK_PINNED_USERS })
        );
    }

    /// The largest link message fits the limit: MAX_LINK_PINNED_USERS lists
    /// at their longest.
    #[test]
    fn the_longest_provisioning_fits_the_message_limit() {
        let longest = super::super::MAX_DEVICE_LIST_LEN + 3; // a bytes field's key and length
        let plaintext = MAX_LINK_PINNED_USERS * longest + 32 + 3 + super::super::MAX_DEVICE_LIST_LEN + 3 + 6;
        let message = HEADER_LEN + padding::row_padded_len(plaintext) + TAG_LEN;
        assert!(message <= MAX_LINK_MESSAGE_LEN, "{message} > {MAX_LINK_MESSAGE_LEN}");
    }

    #[test]
    fn the_longest_code_fits_its_limit() {
        let mut rng = crate::os_rng();
        let device = IdentityKeyPair::generate(&mut rng).public_key();
        let address = Address::new("é".repeat(MAX_USER_ID_LEN / 2), u32::MAX).unwrap();
        let offer = LinkOffer::new(&mut rng, address, device, u64::MAX);
        // version 2, user id 3 + 256, device id 6, three 32-byte fields 34 each, created_at 11.
        assert_eq!(offer.code().len(), 2 + 259 + 6 + 3 * 34 + 11);
        assert!(offer.code().len() <= MAX_LINK_CODE_LEN);
        assert!(LinkCode::from_bytes(offer.code()).is_ok());
    }
}
