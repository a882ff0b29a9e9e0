//! Key types: X25519 ratchet keys and the Diffie-Hellman function.
//!
//! Secret keys zeroize on drop, are never printed by `Debug`, and have no
//! `Display`. A Diffie-Hellman output that is all zeros (the peer sent a key of
//! small order) is rejected, never used.

use std::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// Length of an X25519 key.
pub const X25519_KEY_LEN: usize = 32;

/// An X25519 public key (32 bytes, Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct X25519PublicKey([u8; X25519_KEY_LEN]);

impl X25519PublicKey {
    /// Wraps 32 bytes. Any 32 bytes are an encoding of some u-coordinate; keys
    /// of small order are caught when they are used, by
    /// [`X25519Secret::diffie_hellman`].
    pub const fn from_bytes(bytes: [u8; X25519_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the key.
    pub const fn as_bytes(&self) -> &[u8; X25519_KEY_LEN] {
        &self.0
    }

    pub(crate) fn from_slice(bytes: &[u8], field: &'static str) -> Result<Self, crate::DecodeError> {
        Ok(Self(fixed::<X25519_KEY_LEN>(bytes, field)?))
    }
}

impl fmt::Debug for X25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X25519PublicKey(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// An X25519 secret key with its public key. Zeroized on drop; `Debug` shows
/// only the public key.
pub struct X25519Secret {
    secret: StaticSecret,
    public: X25519PublicKey,
}

impl X25519Secret {
    /// A fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(StaticSecret::random_from_rng(rng))
    }

    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = X25519PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The public key.
    pub fn public_key(&self) -> X25519PublicKey {
        self.public
    }

    pub(crate) fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// X25519 with `their_public`; `None` if the output is all zeros
    /// (non-contributory: `their_public` has small order).
    pub(crate) fn diffie_hellman(&self, their_public: &X25519PublicKey) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(their_public.0));
        let out = Zeroizing::new(shared.to_bytes());
        if bool::from(out.ct_eq(&[0u8; 32])) { None } else { Some(out) }
    }
}

impl Clone for X25519Secret {
    fn clone(&self) -> Self {
        Self { secret: self.secret.clone(), public: self.public }
    }
}

impl fmt::Debug for X25519Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519Secret").field("public", &self.public).finish_non_exhaustive()
    }
}

/// A 32-byte symmetric secret (root, chain or header key). Zeroized on drop,
/// compared in constant time, redacted in `Debug`.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub(crate) struct Secret32(Box<[u8; 32]>);

impl Secret32 {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        let mut bytes = Zeroizing::new(bytes);
        Self(Box::new(std::mem::take(&mut *bytes)))
    }

    pub(crate) fn from_zeroizing(bytes: &Zeroizing<[u8; 32]>) -> Self {
        let mut boxed = Box::new([0u8; 32]);
        boxed.copy_from_slice(bytes.as_slice());
        Self(boxed)
    }

    pub(crate) fn from_slice(bytes: &[u8], field: &'static str) -> Result<Self, crate::DecodeError> {
        let mut boxed = Box::new([0u8; 32]);
        boxed.copy_from_slice(&fixed_ref::<32>(bytes, field)?[..]);
        Ok(Self(boxed))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Secret32 {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl Eq for Secret32 {}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// Copies a slice of exactly `N` bytes into an array, or says which field was wrong.
pub(crate) fn fixed<const N: usize>(bytes: &[u8], field: &'static str) -> Result<[u8; N], crate::DecodeError> {
    bytes.try_into().map_err(|_| crate::DecodeError::InvalidLength { field, expected: N, actual: bytes.len() })
}

fn fixed_ref<'a, const N: usize>(bytes: &'a [u8], field: &'static str) -> Result<&'a [u8; N], crate::DecodeError> {
    bytes.try_into().map_err(|_| crate::DecodeError::InvalidLength { field, expected: N, actual: bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
    #[test]
    fn rfc7748_diffie_hellman() {
        let alice = X25519Secret::from_bytes(
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let bob = X25519Secret::from_bytes(
            hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            hex::encode(alice.public_key().as_bytes()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let shared = alice.diffie_hellman(&bob.public_key()).unwrap();
        assert_eq!(hex::encode(shared.as_slice()), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*bob.diffie_hellman(&alice.public_key()).unwrap(), *shared);
    }

    #[test]
    fn small_order_keys_are_rejected() {
        let secret = X25519Secret::from_bytes([9; 32]);
        // The identity point, the point of order 2, and a point of order 8
        // (from the list of small-order points in RFC 7748 implementations).
        let mut order8 = [0u8; 32];
        order8
            .copy_from_slice(&hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap());
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one, order8] {
            assert!(secret.diffie_hellman(&X25519PublicKey::from_bytes(bad)).is_none());
        }
    }

    #[test]
    fn debug_is_redacted() {
        let s = Secret32::new([0xab; 32]);
        assert_eq!(format!("{s:?}"), "Secret32(<redacted>)");
        let k = X25519Secret::from_bytes([0xcd; 32]);
        let printed = format!("{k:?}");
        assert!(printed.starts_with("X25519Secret { public: X25519PublicKey("), "{printed}");
        assert!(printed.ends_with(", .. }"), "{printed}");
        assert!(!printed.contains("cdcdcdcd"));
    }

    #[test]
    fn fixed_reports_lengths() {
        assert_eq!(
            fixed::<32>(&[0; 31], "k"),
            Err(crate::DecodeError::InvalidLength { field: "k", expected: 32, actual: 31 })
        );
    }
}
