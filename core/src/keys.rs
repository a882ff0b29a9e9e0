//! Key types: the Ed25519 identity, X25519 keys and ML-KEM-1024 keys.
//!
//! Secret keys zeroize on drop, are never printed by `Debug`, and have no
//! `Display`. A Diffie-Hellman output that is all zeros (the peer sent a key of
//! small order) is rejected, never used; public keys of small order are
//! rejected when they are parsed from a bundle or a prekey message.
//!
//! A device's identity is one Ed25519 key pair. Its X25519 form (the secret is
//! the clamped scalar of SHA-512(seed), the public key the Montgomery form of
//! the Edwards point) is used for the handshake's Diffie-Hellman, so a peer is
//! one 32-byte key and one safety number. PROTOCOL.md ("Identity keys") argues
//! why this is sound here.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libcrux_ml_kem::mlkem1024;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

/// Length of an X25519 key.
pub const X25519_KEY_LEN: usize = 32;

/// An X25519 public key (32 bytes, Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct X25519PublicKey([u8; X25519_KEY_LEN]);

impl X25519PublicKey {
    /// Wraps 32 bytes. Any 32 bytes are an encoding of some u-coordinate; keys
    /// of small order are caught when they are used, by
    /// `X25519Secret::diffie_hellman`.
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

    /// Whether the key has small order: it encodes a point of order 1, 2, 4
    /// or 8 on the curve or its twist, the keys that make every X25519 output
    /// all zeros (every clamped scalar is a multiple of 8).
    ///
    /// Those points have five u-coordinates (0, 1, -1 and the two of order 8),
    /// and with the non-canonical encodings `p` and `p + 1` of 0 and 1 they
    /// have seven encodings once the ignored top bit is masked
    /// (`SMALL_ORDER_ENCODINGS`). The key is compared with each in constant
    /// time: no scalar multiplication.
    pub fn is_small_order(&self) -> bool {
        let mut masked = self.0;
        if let Some(last) = masked.last_mut() {
            *last &= 0x7f;
        }
        let found = SMALL_ORDER_ENCODINGS.iter().fold(subtle::Choice::from(0), |found, bad| found | masked.ct_eq(bad));
        bool::from(found)
    }
}

/// The encodings, top bit clear, of the X25519 public keys of small order
/// (see [`X25519PublicKey::is_small_order`]); little-endian u-coordinates.
const SMALL_ORDER_ENCODINGS: [[u8; X25519_KEY_LEN]; 7] = {
    const fn le(last: u8, first: u8, fill: u8) -> [u8; 32] {
        let mut bytes = [fill; 32];
        bytes[0] = first;
        bytes[31] = last;
        bytes
    }
    [
        // 0 (order 2; with the point at infinity, the X25519 output of order 1).
        le(0x00, 0x00, 0x00),
        // 1 (order 4).
        le(0x00, 0x01, 0x00),
        // 3256062509...7233504 (order 8).
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09,
            0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
        ],
        // 3938235723...3445705823 (order 8).
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44,
            0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
        ],
        // p - 1 = -1 (order 4).
        le(0x7f, 0xec, 0xff),
        // p, a non-canonical 0.
        le(0x7f, 0xed, 0xff),
        // p + 1, a non-canonical 1.
        le(0x7f, 0xee, 0xff),
    ]
};

/// The 32 bytes in lowercase hex.
impl fmt::Display for X25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
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
///
/// The public key of a key loaded from storage is computed on first use (a
/// base-point multiplication), not on load: most stored keys (archived
/// sessions, one-time prekeys) are never asked for theirs.
pub struct X25519Secret {
    secret: StaticSecret,
    public: std::sync::OnceLock<X25519PublicKey>,
}

impl X25519Secret {
    /// A fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(StaticSecret::random_from_rng(rng))
    }

    /// The key pair of a 32-byte secret scalar (clamped on use, RFC 7748).
    /// Meant for test vectors and storage; generate keys with [`Self::generate`].
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        Self { secret, public: std::sync::OnceLock::new() }
    }

    /// A stored secret with its stored public key, taken as given (not
    /// checked: that would cost the scalar multiplication it saves).
    pub(crate) fn from_bytes_and_public(bytes: [u8; 32], public: X25519PublicKey) -> Self {
        Self::with_public(StaticSecret::from(bytes), public)
    }

    /// A secret whose public key the caller already knows.
    fn with_public(secret: StaticSecret, public: X25519PublicKey) -> Self {
        Self { secret, public: std::sync::OnceLock::from(public) }
    }

    /// The public key (computed on the first call).
    pub fn public_key(&self) -> X25519PublicKey {
        *self.public.get_or_init(|| X25519PublicKey(x25519_dalek::PublicKey::from(&self.secret).to_bytes()))
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
        Self { secret: self.secret.clone(), public: self.public.clone() }
    }
}

impl fmt::Debug for X25519Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519Secret").field("public", &self.public_key()).finish_non_exhaustive()
    }
}

/// Length of an Ed25519 public key.
pub const IDENTITY_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a public key was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes have the wrong length.
    #[error("key has {actual} bytes, expected {expected}")]
    InvalidLength {
        /// The length it must have.
        expected: usize,
        /// The length it has.
        actual: usize,
    },
    /// The bytes are not a valid point encoding.
    #[error("invalid key encoding")]
    InvalidEncoding,
    /// The key has small order: it would contribute nothing to a key exchange.
    #[error("key of small order")]
    SmallOrder,
    /// The key has a torsion component, or a non-canonical encoding: refused
    /// only where one key must have one encoding and one signer one key (a
    /// user identity, PROTOCOL.md 23.1).
    #[error("key with a torsion component or a non-canonical encoding")]
    NotPrimeOrder,
}

/// A device's identity public key: an Ed25519 verifying key that is not of
/// small order (weak keys are rejected; see PROTOCOL.md 6.1).
#[derive(Clone, Copy, PartialEq, Eq)]
/// Holds the 32-byte encoding, checked in full when it comes from outside
/// ([`Self::from_bytes`]) and for length only when read back from storage;
/// the point is decompressed again when it is used (a few microseconds, once
/// per handshake or bundle), which keeps the type small and `Copy`.
pub struct IdentityKey([u8; IDENTITY_KEY_LEN]);

impl IdentityKey {
    /// Parses and checks a 32-byte Ed25519 public key.
    ///
    /// # Errors
    /// [`KeyError::InvalidEncoding`] if the bytes are not a point,
    /// [`KeyError::SmallOrder`] for a weak key.
    pub fn from_bytes(bytes: &[u8; IDENTITY_KEY_LEN]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidEncoding)?;
        if key.is_weak() {
            return Err(KeyError::SmallOrder);
        }
        // A key of mixed order (a torsion component) also has a small-order
        // Montgomery image after clamping only if it is weak, which is checked
        // above; the X25519 form is checked again below for robustness.
        if X25519PublicKey(key.to_montgomery().to_bytes()).is_small_order() {
            return Err(KeyError::SmallOrder);
        }
        Ok(Self(key.to_bytes()))
    }

    /// A key read back from this library's own storage: the length is
    /// checked, the point is not. Every stored identity key passed
    /// [`Self::from_bytes`] before it was stored, and a store authenticates
    /// its rows; re-checking on every load cost a decompression and an
    /// inversion per key per session load. Should a stored key still not be
    /// a point, it fails where it is used: [`Self::to_x25519`] gives the
    /// all-zero key, which every Diffie-Hellman rejects, and no signature
    /// verifies under it.
    pub(crate) fn from_stored_slice(bytes: &[u8], field: &'static str) -> Result<Self, crate::DecodeError> {
        Ok(Self(fixed::<IDENTITY_KEY_LEN>(bytes, field)?))
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
        &self.0
    }

    /// The X25519 form of the key (the Montgomery form of the point).
    pub fn to_x25519(&self) -> X25519PublicKey {
        // Checked when it arrived; a stored key that is not a point (a store
        // altered under its own key) gives the all-zero key, which every
        // Diffie-Hellman rejects.
        VerifyingKey::from_bytes(&self.0)
            .map_or(X25519PublicKey([0; 32]), |k| X25519PublicKey(k.to_montgomery().to_bytes()))
    }

    /// Strict Ed25519 verification (RFC 8032 with the checks of
    /// `verify_strict`: canonical `S`, no small-order `R` or key).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        VerifyingKey::from_bytes(&self.0)
            .is_ok_and(|key| key.verify_strict(message, &Signature::from_bytes(signature)).is_ok())
    }
}

/// The 32 bytes of the encoded key in lowercase hex (for logs and
/// debugging screens; users compare safety numbers, not keys).
///
/// ```
/// # let key = samizdat::keys::IdentityKeyPair::generate(&mut samizdat::os_rng()).public_key();
/// assert_eq!(key.to_string().len(), 64);
/// ```
impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl std::hash::Hash for IdentityKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// A device's identity key pair (Ed25519). Zeroized on drop; `Debug` shows
/// only the public key.
pub struct IdentityKeyPair {
    signing: SigningKey,
    public: IdentityKey,
}

impl IdentityKeyPair {
    /// A fresh identity from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_signing(SigningKey::generate(rng))
    }

    /// The identity of a 32-byte Ed25519 seed (for stored identities and test vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_signing(SigningKey::from_bytes(seed))
    }

    fn from_signing(signing: SigningKey) -> Self {
        // A key from a seed has full order with overwhelming probability; the
        // check in `IdentityKey::from_bytes` is for keys that come from outside.
        let public = IdentityKey(signing.verifying_key().to_bytes());
        Self { signing, public }
    }

    /// The 32-byte seed, for storage. Seal it before it leaves memory.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity key.
    pub fn public_key(&self) -> IdentityKey {
        self.public
    }

    /// The public key as the signing crate holds it (decompressed).
    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs `message` (Ed25519, deterministic).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 form of the identity: the clamped scalar of SHA-512(seed),
    /// with the Montgomery form of the public point (held decompressed by
    /// the signing key: no scalar multiplication, no decompression).
    pub(crate) fn to_x25519(&self) -> X25519Secret {
        let mut scalar = self.signing.to_scalar_bytes();
        let secret = StaticSecret::from(scalar);
        scalar.zeroize();
        let public = X25519PublicKey(self.signing.verifying_key().to_montgomery().to_bytes());
        X25519Secret::with_public(secret, public)
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Length of an ML-KEM-1024 encapsulation (public) key.
pub const MLKEM_PUBLIC_KEY_LEN: usize = 1568;
/// Length of an ML-KEM-1024 decapsulation (secret) key.
pub const MLKEM_SECRET_KEY_LEN: usize = 3168;
/// Length of the K-PKE secret at the start of an ML-KEM-1024 decapsulation key.
const MLKEM_DK_PKE_LEN: usize = 1536;
/// Length of an ML-KEM-1024 ciphertext.
pub const MLKEM_CIPHERTEXT_LEN: usize = 1568;

/// An ML-KEM-1024 encapsulation key, checked as FIPS 203 requires (the
/// encoded coefficients are reduced modulo q).
#[derive(Clone, PartialEq, Eq)]
pub struct MlKemPublicKey(Box<[u8; MLKEM_PUBLIC_KEY_LEN]>);

impl MlKemPublicKey {
    /// Parses and validates an encapsulation key.
    ///
    /// # Errors
    /// [`KeyError::InvalidLength`] or [`KeyError::InvalidEncoding`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; MLKEM_PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::InvalidLength { expected: MLKEM_PUBLIC_KEY_LEN, actual: bytes.len() })?;
        if !mlkem1024::validate_public_key(&mlkem1024::MlKem1024PublicKey::from(&array)) {
            return Err(KeyError::InvalidEncoding);
        }
        Ok(Self(Box::new(array)))
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8; MLKEM_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// `ML-KEM.Encaps`: a ciphertext and a 32-byte shared secret, from 32
    /// bytes of `rng` output.
    pub(crate) fn encapsulate<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> (Box<[u8; MLKEM_CIPHERTEXT_LEN]>, Zeroizing<[u8; 32]>) {
        let mut randomness = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(randomness.as_mut_slice());
        let public = mlkem1024::MlKem1024PublicKey::from(&*self.0);
        let (ciphertext, shared) = mlkem1024::encapsulate(&public, *randomness);
        let mut ct = Box::new([0u8; MLKEM_CIPHERTEXT_LEN]);
        ct.copy_from_slice(ciphertext.as_ref());
        (ct, Zeroizing::new(shared))
    }
}

impl fmt::Debug for MlKemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlKemPublicKey(")?;
        for b in self.0.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// An ML-KEM-1024 key pair. The secret key is zeroized on drop.
pub(crate) struct MlKemKeyPair {
    /// Exactly [`MLKEM_SECRET_KEY_LEN`] bytes.
    secret: Zeroizing<Vec<u8>>,
    public: MlKemPublicKey,
}

impl MlKemKeyPair {
    /// `ML-KEM.KeyGen` from 64 bytes of `rng` output (d || z).
    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; libcrux_ml_kem::KEY_GENERATION_SEED_SIZE]);
        rng.fill_bytes(seed.as_mut_slice());
        let pair = mlkem1024::generate_key_pair(*seed);
        let (secret, public) = pair.into_parts();
        let mut secret_bytes: [u8; MLKEM_SECRET_KEY_LEN] = secret.into();
        let boxed = Zeroizing::new(secret_bytes.to_vec());
        secret_bytes.zeroize();
        let public: [u8; MLKEM_PUBLIC_KEY_LEN] = public.into();
        Self { secret: boxed, public: MlKemPublicKey(Box::new(public)) }
    }

    /// Rebuilds a stored key pair.
    pub(crate) fn from_bytes(secret: &[u8], public: &[u8]) -> Result<Self, crate::DecodeError> {
        if secret.len() != MLKEM_SECRET_KEY_LEN {
            return Err(crate::DecodeError::InvalidLength {
                field: "mlkem.secret",
                expected: MLKEM_SECRET_KEY_LEN,
                actual: secret.len(),
            });
        }
        let boxed = Zeroizing::new(secret.to_vec());
        let public =
            MlKemPublicKey::from_slice(public).map_err(|_| crate::DecodeError::InvalidValue("mlkem.public"))?;
        // FIPS 203 decapsulation key: dk_PKE (1536) || ek (1568) || H(ek) (32) || z (32).
        // The embedded ek must be `public`, and H(ek) must match (the "hash check" of 7.3).
        if secret.get(MLKEM_DK_PKE_LEN..MLKEM_DK_PKE_LEN + MLKEM_PUBLIC_KEY_LEN) != Some(public.as_bytes().as_slice()) {
            return Err(crate::DecodeError::InvalidValue("mlkem.secret"));
        }
        let mut array = Zeroizing::new([0u8; MLKEM_SECRET_KEY_LEN]);
        array.copy_from_slice(secret);
        let check = mlkem1024::MlKem1024PrivateKey::from(&*array);
        // The ciphertext argument is only there for its length; the check reads the key alone.
        let valid = mlkem1024::validate_private_key(&check, &mlkem1024::MlKem1024Ciphertext::default());
        let mut copy: [u8; MLKEM_SECRET_KEY_LEN] = check.into();
        copy.zeroize();
        if !valid {
            return Err(crate::DecodeError::InvalidValue("mlkem.secret"));
        }
        Ok(Self { secret: boxed, public })
    }

    pub(crate) fn public_key(&self) -> &MlKemPublicKey {
        &self.public
    }

    pub(crate) fn secret_bytes(&self) -> &[u8] {
        &self.secret
    }

    /// `ML-KEM.Decaps`. ML-KEM rejects implicitly: a wrong ciphertext yields
    /// a pseudorandom secret, and the handshake then fails to authenticate.
    pub(crate) fn decapsulate(&self, ciphertext: &[u8; MLKEM_CIPHERTEXT_LEN]) -> Zeroizing<[u8; 32]> {
        let mut array = Zeroizing::new([0u8; MLKEM_SECRET_KEY_LEN]);
        array.copy_from_slice(&self.secret);
        let secret = mlkem1024::MlKem1024PrivateKey::from(&*array);
        let ct = mlkem1024::MlKem1024Ciphertext::from(ciphertext);
        let shared = Zeroizing::new(mlkem1024::decapsulate(&secret, &ct));
        let mut copy: [u8; MLKEM_SECRET_KEY_LEN] = secret.into();
        copy.zeroize();
        shared
    }
}

impl Clone for MlKemKeyPair {
    fn clone(&self) -> Self {
        Self { secret: self.secret.clone(), public: self.public.clone() }
    }
}

impl fmt::Debug for MlKemKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlKemKeyPair").field("public", &self.public).finish_non_exhaustive()
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
    fn identity_x25519_form_matches() {
        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([3; 32]);
        let a = IdentityKeyPair::generate(&mut rng);
        let b = IdentityKeyPair::generate(&mut rng);
        // The X25519 secret's public key is the Montgomery form of the Ed25519 key.
        assert_eq!(a.to_x25519().public_key(), a.public_key().to_x25519());
        let ab = a.to_x25519().diffie_hellman(&b.public_key().to_x25519()).unwrap();
        let ba = b.to_x25519().diffie_hellman(&a.public_key().to_x25519()).unwrap();
        assert_eq!(*ab, *ba);
        let restored = IdentityKeyPair::from_seed(&a.to_seed());
        assert_eq!(restored.public_key(), a.public_key());
        let sig = a.sign(b"msg");
        assert!(a.public_key().verify(b"msg", &sig));
        assert!(!a.public_key().verify(b"msh", &sig));
        assert!(!b.public_key().verify(b"msg", &sig));
    }

    #[test]
    fn weak_identity_keys_are_rejected() {
        // The Edwards identity point (0, 1) and a point of order 2 (0, -1).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(IdentityKey::from_bytes(&identity), Err(KeyError::SmallOrder));
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        assert_eq!(IdentityKey::from_bytes(&minus_one), Err(KeyError::SmallOrder));
        assert_eq!(IdentityKey::from_slice(&[0; 31]), Err(KeyError::InvalidLength { expected: 32, actual: 31 }));
    }

    #[test]
    fn mlkem_round_trip_and_validation() {
        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([4; 32]);
        let pair = MlKemKeyPair::generate(&mut rng);
        let (ct, ss) = pair.public_key().encapsulate(&mut rng);
        assert_eq!(*pair.decapsulate(&ct), *ss);
        let restored = MlKemKeyPair::from_bytes(pair.secret_bytes(), pair.public_key().as_bytes()).unwrap();
        assert_eq!(*restored.decapsulate(&ct), *ss);
        // A coefficient of 0xfff (>= q = 3329) is not a valid encoding.
        let mut bad = *pair.public_key().as_bytes();
        bad[0] = 0xff;
        bad[1] |= 0x0f;
        assert_eq!(MlKemPublicKey::from_slice(&bad), Err(KeyError::InvalidEncoding));
        assert!(matches!(MlKemPublicKey::from_slice(&bad[..100]), Err(KeyError::InvalidLength { .. })));
        // Implicit rejection: a modified ciphertext gives another secret.
        let mut ct2 = *ct;
        ct2[0] ^= 1;
        assert_ne!(*pair.decapsulate(&ct2), *ss);
    }

    #[test]
    fn mismatched_mlkem_pairs_are_rejected() {
        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([5; 32]);
        let (a, b) = (MlKemKeyPair::generate(&mut rng), MlKemKeyPair::generate(&mut rng));
        assert_eq!(
            MlKemKeyPair::from_bytes(a.secret_bytes(), b.public_key().as_bytes()).unwrap_err(),
            crate::DecodeError::InvalidValue("mlkem.secret")
        );
        let mut corrupt = a.secret_bytes().to_vec();
        corrupt[MLKEM_DK_PKE_LEN + MLKEM_PUBLIC_KEY_LEN] ^= 1;
        assert!(MlKemKeyPair::from_bytes(&corrupt, a.public_key().as_bytes()).is_err());
    }

    #[test]
    fn small_order_public_keys_are_detected() {
        assert!(X25519PublicKey::from_bytes([0; 32]).is_small_order());
        assert!(!X25519Secret::from_bytes([7; 32]).public_key().is_small_order());
    }

    /// Stored identity keys are checked for length only; one that is not a
    /// point (a store altered under its own key) is useless, never usable.
    #[test]
    fn stored_identity_keys_that_are_not_points_cannot_be_used() {
        let not_a_point = (2u8..)
            .map(|k| {
                let mut bytes = [0u8; 32];
                bytes[0] = k;
                bytes
            })
            .find(|bytes| IdentityKey::from_bytes(bytes) == Err(KeyError::InvalidEncoding))
            .unwrap();
        let stored = IdentityKey::from_stored_slice(&not_a_point, "remote_identity").unwrap();
        assert_eq!(stored.to_x25519().as_bytes(), &[0u8; 32]);
        let ours = X25519Secret::from_bytes([7; 32]);
        assert!(ours.diffie_hellman(&stored.to_x25519()).is_none());
        assert!(!stored.verify(b"message", &[0; 64]));
        assert_eq!(
            IdentityKey::from_stored_slice(&[1; 31], "remote_identity"),
            Err(crate::DecodeError::InvalidLength { field: "remote_identity", expected: 32, actual: 31 })
        );
    }

    /// The table agrees with the definition: a key is of small order exactly
    /// when a clamped scalar (a multiple of 8) maps it to zero, computed here
    /// by a full X25519 ladder. Checked for every listed encoding with either
    /// top bit, their neighbours, and random keys.
    #[test]
    fn small_order_table_matches_the_ladder() {
        let by_ladder = |key: [u8; 32]| x25519_dalek::x25519([9; 32], key) == [0u8; 32];
        let mut keys = Vec::new();
        for bad in SMALL_ORDER_ENCODINGS {
            for top in [0x00, 0x80] {
                let mut key = bad;
                key[31] |= top;
                keys.push(key);
                let mut next = key;
                next[0] = next[0].wrapping_add(1);
                keys.push(next);
                let mut previous = key;
                previous[0] = previous[0].wrapping_sub(1);
                keys.push(previous);
            }
        }
        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed([8; 32]);
        for _ in 0..2_000 {
            let mut key = [0u8; 32];
            rand_core::Rng::fill_bytes(&mut rng, &mut key);
            keys.push(key);
        }
        let mut small = 0;
        for key in keys {
            let public = X25519PublicKey::from_bytes(key);
            assert_eq!(public.is_small_order(), by_ladder(key), "{public:?}");
            small += usize::from(by_ladder(key));
        }
        // The 14 listed encodings, and the 12 neighbours that are listed too
        // (0 and 1, p - 1, p and p + 1 are adjacent); no random key.
        assert_eq!(small, 14 + 12);
    }

    #[test]
    fn fixed_reports_lengths() {
        assert_eq!(
            fixed::<32>(&[0; 31], "k"),
            Err(crate::DecodeError::InvalidLength { field: "k", expected: 32, actual: 31 })
        );
    }
}
