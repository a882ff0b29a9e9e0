//! The storage key: the 32 bytes, kept in the platform keystore, that seal a
//! store (PROTOCOL.md 14.3).

use std::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The length of a storage key, in bytes.
pub const STORAGE_KEY_LEN: usize = 32;

/// The key that seals every row of a store: 32 secret bytes that the app
/// keeps in the platform keystore (Android Keystore, the iOS Keychain, the
/// desktop's secret service), never next to the database.
///
/// Its bytes are wiped when it is dropped; two keys compare in constant
/// time; `Debug` shows no byte of it. Make one with [`StorageKey::generate`]
/// when a device is created, store [`StorageKey::as_bytes`] in the keystore,
/// and rebuild it with [`StorageKey::from_bytes`] (or
/// [`StorageKey::try_from`] a slice) at every start.
///
/// # Examples
///
/// ```
/// use samizdat::store::StorageKey;
///
/// let key = StorageKey::generate();
/// let in_keystore: Vec<u8> = key.as_bytes().to_vec(); // the app's keystore keeps these
/// let again = StorageKey::try_from(in_keystore.as_slice())?;
/// assert_eq!(key, again);
/// assert_eq!(format!("{key:?}"), "StorageKey(..)");
/// assert!(StorageKey::try_from(&in_keystore[..31]).is_err());
/// # Ok::<(), samizdat::store::InvalidStorageKey>(())
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey([u8; STORAGE_KEY_LEN]);

impl StorageKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Self {
        Self::generate_with(&mut crate::os_rng())
    }

    /// A new key from `rng`.
    pub fn generate_with<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = Self([0; STORAGE_KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        key
    }

    /// The key of these bytes (as the keystore returns them). The caller
    /// wipes its own copy.
    pub const fn from_bytes(bytes: [u8; STORAGE_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, to put into the platform keystore. Never write them
    /// next to the store, into a log or into a backup.
    pub const fn as_bytes(&self) -> &[u8; STORAGE_KEY_LEN] {
        &self.0
    }
}

/// A storage key of the wrong length: `len` bytes instead of
/// [`STORAGE_KEY_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a storage key is {STORAGE_KEY_LEN} bytes, not {len}")]
pub struct InvalidStorageKey {
    /// The length given.
    pub len: usize,
}

impl TryFrom<&[u8]> for StorageKey {
    type Error = InvalidStorageKey;

    /// The key of exactly [`STORAGE_KEY_LEN`] bytes.
    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let array = <[u8; STORAGE_KEY_LEN]>::try_from(bytes).map_err(|_| InvalidStorageKey { len: bytes.len() })?;
        Ok(Self(array))
    }
}

impl From<[u8; STORAGE_KEY_LEN]> for StorageKey {
    fn from(bytes: [u8; STORAGE_KEY_LEN]) -> Self {
        Self(bytes)
    }
}

/// Constant time: the comparison takes as long whichever byte differs.
impl PartialEq for StorageKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for StorageKey {}

/// `StorageKey(..)`: no byte of the key.
impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_round_trip_through_bytes() {
        let a = StorageKey::generate();
        let b = StorageKey::generate();
        assert_ne!(a, b);
        assert_eq!(StorageKey::from_bytes(*a.as_bytes()), a);
        assert_eq!(StorageKey::try_from(&a.as_bytes()[..]).unwrap(), a);
    }

    #[test]
    fn wrong_lengths_are_refused_with_the_length() {
        for len in [0, 1, 31, 33, 64] {
            assert_eq!(StorageKey::try_from(&vec![7; len][..]), Err(InvalidStorageKey { len }));
        }
    }

    #[test]
    fn debug_shows_no_byte() {
        let key = StorageKey::from_bytes([0xab; STORAGE_KEY_LEN]);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
    }

    #[test]
    fn zeroize_wipes_the_bytes() {
        let mut key = StorageKey::from_bytes([9; STORAGE_KEY_LEN]);
        key.zeroize();
        assert_eq!(key.as_bytes(), &[0; STORAGE_KEY_LEN]);
    }
}
