//! One person, several devices: a user identity key signs the list of the
//! user's devices (PROTOCOL.md 23).
//!
//! The server hands out bundles, so without this layer it decides which
//! devices a user has, and a hostile or compelled server can add a "ghost"
//! device that reads along. Here a peer pins the user identity on first use
//! (the same trust decision as a device identity today, now per user), and
//! accepts a device only if the newest list it verified names it, with that
//! very identity key; a list signed by another key, or older than one it has
//! seen, is refused.
//!
//! What this module holds:
//! - [`UserIdentityKeyPair`] and [`UserIdentityKey`]: the user identity, an
//!   Ed25519 key of its own type, so that a device key can never be taken
//!   for it (or the reverse);
//! - [`DeviceList`], signed into a [`SignedDeviceList`]: user id, a version
//!   that only grows, each device's id and identity key;
//! - [`UserTrust`]: what a peer keeps of a user (the pinned key and the
//!   newest verified list), the rules for a new list ([`UserTrust::update`])
//!   and the ghost-device check ([`UserTrust::check_device`]);
//! - [`SafetyNumber::for_users`](crate::fingerprint::SafetyNumber::for_users):
//!   safety numbers from the user identities, stable while devices come and
//!   go.
//!
//! # Examples
//!
//! ```
//! use samizdat::keys::IdentityKeyPair;
//! use samizdat::user::{DeviceList, DeviceListError, UserIdentityKeyPair, UserTrust};
//!
//! let mut rng = samizdat::os_rng();
//! let alice = UserIdentityKeyPair::generate(&mut rng);
//! let phone = IdentityKeyPair::generate(&mut rng).public_key();
//! let laptop = IdentityKeyPair::generate(&mut rng).public_key();
//!
//! // Alice's devices publish a list; Bob pins it on first use.
//! let first = DeviceList::new("alice", 1, &alice.public_key(), [(1, phone)])?.sign(&alice)?;
//! let mut trust = UserTrust::first_use("alice", &first)?;
//! assert!(trust.check_device(1, &phone).is_ok());
//! // A device the server slips in is refused: no list names it.
//! assert_eq!(trust.check_device(2, &laptop), Err(DeviceListError::UnlistedDevice { device_id: 2 }));
//!
//! // Alice links her laptop: a newer list, signed by the same user key.
//! let second = DeviceList::new("alice", 2, &alice.public_key(), [(1, phone), (2, laptop)])?.sign(&alice)?;
//! let change = trust.update(&second)?;
//! assert_eq!(change.added, vec![(2, laptop)]);
//! assert!(trust.check_device(2, &laptop).is_ok());
//! // The server cannot roll it back.
//! assert_eq!(trust.update(&first), Err(DeviceListError::Rollback { seen: 2, offered: 1 }));
//! # Ok::<(), DeviceListError>(())
//! ```

mod error;
pub(crate) mod handover;
mod link;
mod list;
pub(crate) mod sync;
mod trust;

use std::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

pub use error::DeviceListError;
pub(crate) use link::Provisioning;
pub use link::{LINK_VERSION, LinkCode, LinkError, LinkOffer, MAX_LINK_CODE_LEN};
#[cfg(test)]
pub(crate) use list::DEVICE_LIST_LABEL;
pub use list::{DeviceList, MAX_DEVICE_LIST_LEN, MAX_DEVICES_PER_USER, SignedDeviceList};
pub use trust::{ListChange, UserTrust};

use crate::keys::{IDENTITY_KEY_LEN, IdentityKey, IdentityKeyPair, KeyError, SIGNATURE_LEN};

/// A user identity key pair (Ed25519): signs the user's device lists. Every
/// device of the user holds it (PROTOCOL.md 23.1 argues why). Zeroized on
/// drop; `Debug` shows only the public key.
pub struct UserIdentityKeyPair(IdentityKeyPair);

impl UserIdentityKeyPair {
    /// A fresh user identity from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(IdentityKeyPair::generate(rng))
    }

    /// The user identity of a 32-byte Ed25519 seed (for storage, linking and
    /// test vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(IdentityKeyPair::from_seed(seed))
    }

    /// The 32-byte seed, for storage. Seal it before it leaves memory.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        self.0.to_seed()
    }

    /// The public user identity key.
    pub fn public_key(&self) -> UserIdentityKey {
        UserIdentityKey(self.0.public_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message)
    }
}

impl fmt::Debug for UserIdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIdentityKeyPair").field("public", &self.public_key()).finish_non_exhaustive()
    }
}

/// A user identity public key: an Ed25519 key checked as a device identity
/// key is (no small order, PROTOCOL.md 6.1), of its own type.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserIdentityKey(IdentityKey);

impl UserIdentityKey {
    /// Parses and checks a 32-byte Ed25519 public key: as a device identity
    /// key (6.1), and also in the prime-order subgroup and canonically
    /// encoded. A device key may have a torsion component (X25519's clamping
    /// removes it), but a user key is only ever a signature key: with a
    /// torsion component its holder could make one list verify under up to
    /// eight keys (and eight safety numbers), and verifiers that check
    /// signatures differently could disagree on its lists (PROTOCOL.md 23.2).
    ///
    /// # Errors
    /// [`KeyError::InvalidEncoding`], [`KeyError::SmallOrder`] or
    /// [`KeyError::NotPrimeOrder`].
    pub fn from_bytes(bytes: &[u8; IDENTITY_KEY_LEN]) -> Result<Self, KeyError> {
        let key = IdentityKey::from_bytes(bytes)?;
        let point = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidEncoding)?.to_edwards();
        if !point.is_torsion_free() || point.compress().to_bytes() != *bytes {
            return Err(KeyError::NotPrimeOrder);
        }
        Ok(Self(key))
    }

    /// Parses a slice (see [`Self::from_bytes`]).
    ///
    /// # Errors
    /// As [`Self::from_bytes`], plus [`KeyError::InvalidLength`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let bytes: &[u8; IDENTITY_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::InvalidLength { expected: IDENTITY_KEY_LEN, actual: bytes.len() })?;
        Self::from_bytes(bytes)
    }

    /// The 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; IDENTITY_KEY_LEN] {
        self.0.as_bytes()
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        self.0.verify(message, signature)
    }
}

/// The key in lowercase hex.
impl fmt::Display for UserIdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for UserIdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserIdentityKey({})", self.0)
    }
}
