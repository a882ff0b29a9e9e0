//! Safety numbers: what two users compare, read aloud or by scanning a code,
//! to check that each holds the other's real identity key.
//!
//! This module owns the derivation of a safety number from two (user id,
//! identity key) pairs, its display forms and the comparison of a scanned
//! code. It does not decide what an app does on a mismatch, nor does it store
//! which peers were verified.
//!
//! # Derivation
//!
//! Each side has a fingerprint `F`, computed by iterated SHA-512 over its
//! identity key `IK` and user id `uid` (UTF-8 bytes):
//!
//! ```text
//! h_0     = SHA-512(0x0001 || "samizdat/v1/safety-number" || u32be(len IK) || IK || u32be(len uid) || uid)
//! h_{i+1} = SHA-512(h_i || IK)
//! F       = h_5199                      (5200 hashes in all, h_0 included)
//! ```
//!
//! The first 30 bytes of `F` make the side's 30 digits: six 5-byte chunks, each
//! read as a big-endian integer, reduced mod 100000 and printed as 5 digits
//! with leading zeros. The safety number is both sides' digits, the
//! lexicographically smaller string first, so both users see the same 60 digits.
//!
//! The first 32 bytes of `F` are the side's scannable fingerprint. A scannable
//! code is `0x01 || F_local[..32] || F_remote[..32]` (65 bytes); the peer checks
//! it with [`SafetyNumber::compare_scanned`].

use std::fmt;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::keys::IdentityKey;

/// Domain-separation label hashed into `h_0` of a per-user fingerprint
/// ([`SafetyNumber::for_users`]), in place of [`SAFETY_NUMBER_LABEL`].
pub(crate) const USER_SAFETY_NUMBER_LABEL: &[u8] = b"samizdat/v1/user-safety-number";

/// Domain-separation label hashed into `h_0` of every fingerprint.
pub(crate) const SAFETY_NUMBER_LABEL: &[u8] = b"samizdat/v1/safety-number";

/// Version of the fingerprint derivation, hashed into `h_0` as 2 big-endian bytes.
pub(crate) const FINGERPRINT_VERSION: u16 = 1;

/// Number of SHA-512 computations per fingerprint, `h_0` included. The cost is
/// for a brute-force search of a key whose digits collide with a target: each
/// guess costs this many hashes (Signal uses the same count).
pub(crate) const ITERATIONS: u32 = 5200;

/// The version byte that starts every scannable code.
pub const SCANNABLE_VERSION: u8 = 1;

/// Length of one side's scannable fingerprint (the first bytes of `F`).
pub const SCANNABLE_FINGERPRINT_LEN: usize = 32;

/// Length of a scannable code: the version byte and two fingerprints.
pub const SCANNABLE_LEN: usize = 1 + 2 * SCANNABLE_FINGERPRINT_LEN;

/// Number of digits of a safety number (30 per side).
pub const SAFETY_NUMBER_DIGITS: usize = 2 * SIDE_DIGITS;

/// Number of decimal digits per side.
const SIDE_DIGITS: usize = DIGIT_CHUNKS * DIGITS_PER_CHUNK;
/// Number of 5-byte chunks of `F` turned into digits (30 bytes in all).
const DIGIT_CHUNKS: usize = 6;
/// Length of one chunk: 40 bits, reduced mod 10^5.
const DIGIT_CHUNK_LEN: usize = 5;
/// Digits printed per chunk.
const DIGITS_PER_CHUNK: usize = 5;
/// 10^[`DIGITS_PER_CHUNK`].
const DIGIT_CHUNK_MODULUS: u64 = 100_000;

/// The safety number of a conversation between a local user and a remote one.
///
/// Both users compute the same [`digits`](Self::digits) from their own and
/// their peer's identity, and compare them aloud or side by side; or one scans
/// the other's [`scannable`](Self::scannable) code and calls
/// [`compare_scanned`](Self::compare_scanned).
///
/// Nothing in it is secret: `Debug` prints the digits.
///
/// # Examples
///
/// ```
/// use samizdat::fingerprint::SafetyNumber;
///
/// # use samizdat::keys::IdentityKeyPair;
/// # let mut rng = samizdat::os_rng();
/// let alice_key = IdentityKeyPair::generate(&mut rng).public_key();
/// let bob_key = IdentityKeyPair::generate(&mut rng).public_key();
/// let on_alice = SafetyNumber::new("alice", &alice_key, "bob", &bob_key);
/// let on_bob = SafetyNumber::new("bob", &bob_key, "alice", &alice_key);
///
/// // Read aloud: both screens show the same 60 digits.
/// assert_eq!(on_alice.digits(), on_bob.digits());
///
/// // Scanned: Alice scans the code on Bob's screen.
/// on_alice.compare_scanned(&on_bob.scannable())?;
/// # Ok::<(), samizdat::fingerprint::ScanError>(())
/// ```
#[derive(Clone)]
pub struct SafetyNumber {
    /// The 60 ASCII digits.
    digits: String,
    /// The local side's scannable fingerprint.
    local: [u8; SCANNABLE_FINGERPRINT_LEN],
    /// The remote side's scannable fingerprint.
    remote: [u8; SCANNABLE_FINGERPRINT_LEN],
}

impl SafetyNumber {
    /// The safety number between the local user (`local_user_id`, with
    /// identity key `local_identity`) and the remote one.
    ///
    /// The user ids are hashed as their UTF-8 bytes, exactly as given: apply
    /// any normalization before calling. Swapping the local and remote sides
    /// gives the same [`digits`](Self::digits) and the mirrored
    /// [`scannable`](Self::scannable) code.
    ///
    /// This computes 2 × 5200 SHA-512 hashes: a few milliseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::SafetyNumber;
    ///
    /// # use samizdat::keys::IdentityKeyPair;
    /// # let mut rng = samizdat::os_rng();
    /// # let (k1, k2, k9) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let number = SafetyNumber::new("alice", &k1, "bob", &k2);
    /// assert_eq!(number.digits().len(), 60);
    /// ```
    pub fn new(
        local_user_id: &str,
        local_identity: &IdentityKey,
        remote_user_id: &str,
        remote_identity: &IdentityKey,
    ) -> Self {
        Self::from_key_bytes(local_user_id, local_identity.as_bytes(), remote_user_id, remote_identity.as_bytes())
    }

    /// [`Self::new`] on raw key bytes (for test vectors, whose keys need not
    /// be valid points).
    pub(crate) fn from_key_bytes(
        local_user_id: &str,
        local_identity: &[u8; 32],
        remote_user_id: &str,
        remote_identity: &[u8; 32],
    ) -> Self {
        Self::with_label(SAFETY_NUMBER_LABEL, (local_user_id, local_identity), (remote_user_id, remote_identity))
    }

    /// The safety number between two users, from their user identity keys
    /// (PROTOCOL.md 23.4): the same derivation as [`Self::new`] under the
    /// label `samizdat/v1/user-safety-number`, so that it is stable while
    /// the users' devices come and go, changes only with a user identity,
    /// and never equals a device-level number (nor does its scannable code
    /// compare equal to one).
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::SafetyNumber;
    /// use samizdat::user::UserIdentityKeyPair;
    ///
    /// # let mut rng = samizdat::os_rng();
    /// let (alice, bob) = (UserIdentityKeyPair::generate(&mut rng), UserIdentityKeyPair::generate(&mut rng));
    /// let on_alice = SafetyNumber::for_users("alice", &alice.public_key(), "bob", &bob.public_key());
    /// let on_bob = SafetyNumber::for_users("bob", &bob.public_key(), "alice", &alice.public_key());
    /// assert_eq!(on_alice.digits(), on_bob.digits());
    /// on_alice.compare_scanned(&on_bob.scannable())?;
    /// # Ok::<(), samizdat::fingerprint::ScanError>(())
    /// ```
    pub fn for_users(
        local_user_id: &str,
        local_user_identity: &crate::user::UserIdentityKey,
        remote_user_id: &str,
        remote_user_identity: &crate::user::UserIdentityKey,
    ) -> Self {
        Self::with_label(
            USER_SAFETY_NUMBER_LABEL,
            (local_user_id, local_user_identity.as_bytes()),
            (remote_user_id, remote_user_identity.as_bytes()),
        )
    }

    /// The safety number whose [`scannable`](Self::scannable) code is `code`:
    /// the same digits, the same code, the same comparisons. The code
    /// carries both sides' scannable fingerprints, and the digits are made
    /// from their first 30 bytes, so nothing is lost: this is how a safety
    /// number kept or handed over as plain data (the bindings give it as
    /// digits and code) is read back to be compared.
    ///
    /// # Errors
    ///
    /// As for a scanned code in [`compare_scanned`](Self::compare_scanned):
    /// [`ScanError::Malformed`] if `code` is empty, or starts with
    /// [`SCANNABLE_VERSION`] but is not [`SCANNABLE_LEN`] bytes long;
    /// [`ScanError::UnsupportedVersion`] if it starts with another version.
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::SafetyNumber;
    ///
    /// # use samizdat::keys::IdentityKeyPair;
    /// # let mut rng = samizdat::os_rng();
    /// # let (k1, k2) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let on_alice = SafetyNumber::new("alice", &k1, "bob", &k2);
    /// let kept = SafetyNumber::from_scannable(&on_alice.scannable())?;
    /// assert_eq!(kept.digits(), on_alice.digits());
    /// kept.compare_scanned(&SafetyNumber::new("bob", &k2, "alice", &k1).scannable())?;
    /// # Ok::<(), samizdat::fingerprint::ScanError>(())
    /// ```
    pub fn from_scannable(code: &[u8]) -> Result<Self, ScanError> {
        let (local, remote) = read_code(code)?;
        Ok(Self::from_fingerprints(*local, *remote))
    }

    fn with_label(label: &[u8], local: (&str, &[u8; 32]), remote: (&str, &[u8; 32])) -> Self {
        let local = side_fingerprint(label, local.0, local.1);
        let remote = side_fingerprint(label, remote.0, remote.1);
        Self::from_fingerprints(scannable_fingerprint(&local), scannable_fingerprint(&remote))
    }

    /// Both sides' digits, the smaller first, from their scannable fingerprints.
    fn from_fingerprints(local: [u8; SCANNABLE_FINGERPRINT_LEN], remote: [u8; SCANNABLE_FINGERPRINT_LEN]) -> Self {
        let (local_digits, remote_digits) = (side_digits(&local), side_digits(&remote));
        let (first, second) =
            if local_digits <= remote_digits { (local_digits, remote_digits) } else { (remote_digits, local_digits) };
        let mut digits = first;
        digits.push_str(&second);
        Self { digits, local, remote }
    }

    /// The 60 ASCII digits, with no separator.
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::SafetyNumber;
    ///
    /// # use samizdat::keys::IdentityKeyPair;
    /// # let mut rng = samizdat::os_rng();
    /// # let (k1, k2, k9) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let number = SafetyNumber::new("alice", &k1, "bob", &k2);
    /// assert!(number.digits().bytes().all(|b| b.is_ascii_digit()));
    /// ```
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The digits as users read them: 12 groups of 5 digits separated by
    /// single spaces (71 characters).
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::SafetyNumber;
    ///
    /// # use samizdat::keys::IdentityKeyPair;
    /// # let mut rng = samizdat::os_rng();
    /// # let (k1, k2, k9) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let shown = SafetyNumber::new("alice", &k1, "bob", &k2).display();
    /// assert_eq!(shown.split(' ').count(), 12);
    /// assert!(shown.split(' ').all(|group| group.len() == 5));
    /// ```
    pub fn display(&self) -> String {
        self.to_string()
    }
}

/// The twelve groups of five digits, as [`SafetyNumber::display`] gives them.
impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = String::with_capacity(SAFETY_NUMBER_DIGITS + SAFETY_NUMBER_DIGITS / DIGITS_PER_CHUNK);
        for (i, digit) in self.digits.chars().enumerate() {
            if i > 0 && i % DIGITS_PER_CHUNK == 0 {
                shown.push(' ');
            }
            shown.push(digit);
        }
        f.write_str(&shown)
    }
}

impl SafetyNumber {
    /// The bytes a QR code on the local screen carries ([`SCANNABLE_LEN`]
    /// bytes): [`SCANNABLE_VERSION`], then the local side's scannable
    /// fingerprint, then the remote side's.
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::{SCANNABLE_LEN, SCANNABLE_VERSION, SafetyNumber};
    ///
    /// # use samizdat::keys::IdentityKeyPair;
    /// # let mut rng = samizdat::os_rng();
    /// # let (k1, k2, k9) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let code = SafetyNumber::new("alice", &k1, "bob", &k2).scannable();
    /// assert_eq!(code.len(), SCANNABLE_LEN);
    /// assert_eq!(code.first(), Some(&SCANNABLE_VERSION));
    /// ```
    pub fn scannable(&self) -> Vec<u8> {
        let mut code = Vec::with_capacity(SCANNABLE_LEN);
        code.push(SCANNABLE_VERSION);
        code.extend_from_slice(&self.local);
        code.extend_from_slice(&self.remote);
        code
    }

    /// Checks a code scanned from the peer's screen (their
    /// [`scannable`](Self::scannable)): the peer's local fingerprint must equal
    /// our remote one, and the peer's remote fingerprint our local one. Both
    /// are compared in constant time, and both are always compared.
    ///
    /// The version byte is checked before the length, so a code of a future
    /// version is reported as [`ScanError::UnsupportedVersion`] whatever its
    /// length.
    ///
    /// # Errors
    ///
    /// - [`ScanError::Malformed`] if `scanned` is empty, or starts with
    ///   [`SCANNABLE_VERSION`] but is not [`SCANNABLE_LEN`] bytes long;
    /// - [`ScanError::UnsupportedVersion`] if the first byte is another version;
    /// - [`ScanError::Mismatch`] if either fingerprint differs, saying which.
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::fingerprint::{MismatchedSide, SafetyNumber, ScanError};
    ///
    /// # use samizdat::keys::IdentityKeyPair;
    /// # let mut rng = samizdat::os_rng();
    /// # let (k1, k2, k9) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let on_alice = SafetyNumber::new("alice", &k1, "bob", &k2);
    /// // Bob holds a different key for Alice (a new device, or an attacker's key).
    /// let on_bob = SafetyNumber::new("bob", &k2, "alice", &k9);
    /// assert_eq!(
    ///     on_alice.compare_scanned(&on_bob.scannable()),
    ///     Err(ScanError::Mismatch(MismatchedSide::Local)),
    /// );
    /// assert_eq!(
    ///     on_bob.compare_scanned(&on_alice.scannable()),
    ///     Err(ScanError::Mismatch(MismatchedSide::Remote)),
    /// );
    /// ```
    pub fn compare_scanned(&self, scanned: &[u8]) -> Result<(), ScanError> {
        let (their_local, their_remote) = read_code(scanned)?;
        // Both comparisons run before either result is looked at.
        let local_matches = bool::from(their_remote.as_slice().ct_eq(self.local.as_slice()));
        let remote_matches = bool::from(their_local.as_slice().ct_eq(self.remote.as_slice()));
        match (local_matches, remote_matches) {
            (true, true) => Ok(()),
            (false, true) => Err(ScanError::Mismatch(MismatchedSide::Local)),
            (true, false) => Err(ScanError::Mismatch(MismatchedSide::Remote)),
            (false, false) => Err(ScanError::Mismatch(MismatchedSide::Both)),
        }
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetyNumber").field("digits", &self.digits).finish_non_exhaustive()
    }
}

/// Why a scanned code does not confirm the safety number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The code is empty, or has the current version byte but not
    /// [`SCANNABLE_LEN`] bytes: not a scan of a safety number.
    #[error("scanned code of {len} bytes is malformed")]
    Malformed {
        /// Length of the scanned code.
        len: usize,
    },
    /// The code starts with a version byte this release does not know: the
    /// peer's app is probably newer (or older) than ours.
    #[error("unsupported scannable code version {0}")]
    UnsupportedVersion(u8),
    /// The code is well formed but does not match: at least one of the two
    /// users holds an identity key or user id for the other that the other
    /// does not have. Do not mark the peer as verified.
    #[error("safety number mismatch ({0})")]
    Mismatch(MismatchedSide),
}

/// Which identity differs between the scanned code and our safety number.
///
/// Not `#[non_exhaustive]`: a conversation has two sides, so these three
/// cases are all there can be, and an app can match them exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchedSide {
    /// The peer sees a different identity (key or user id) for us than our
    /// own: they hold an old or substituted key for us.
    Local,
    /// We hold a different identity (key or user id) for the peer than the one
    /// their screen shows: our key for them is old or substituted.
    Remote,
    /// Both identities differ: for example, the code is from another
    /// conversation, or an attacker sits in both directions.
    Both,
}

impl fmt::Display for MismatchedSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "the peer holds a different identity for us",
            Self::Remote => "we hold a different identity for the peer",
            Self::Both => "both identities differ",
        })
    }
}

/// The two fingerprints of a scannable code (the side that made it first),
/// the version checked before the length.
fn read_code(code: &[u8]) -> Result<(&[u8; SCANNABLE_FINGERPRINT_LEN], &[u8; SCANNABLE_FINGERPRINT_LEN]), ScanError> {
    let malformed = ScanError::Malformed { len: code.len() };
    let Some((&version, rest)) = code.split_first() else {
        return Err(malformed);
    };
    if version != SCANNABLE_VERSION {
        return Err(ScanError::UnsupportedVersion(version));
    }
    let Some((first, second)) = rest.split_first_chunk::<SCANNABLE_FINGERPRINT_LEN>() else {
        return Err(malformed);
    };
    let Ok(second) = <&[u8; SCANNABLE_FINGERPRINT_LEN]>::try_from(second) else {
        return Err(malformed);
    };
    Ok((first, second))
}

/// `F = h_{ITERATIONS-1}` of one side (see the module docs).
fn side_fingerprint(label: &[u8], user_id: &str, identity: &[u8; 32]) -> [u8; 64] {
    let user_id = user_id.as_bytes();
    // h_0: the first of the ITERATIONS hashes.
    let mut hash: [u8; 64] = Sha512::new()
        .chain_update(FINGERPRINT_VERSION.to_be_bytes())
        .chain_update(label)
        .chain_update(length_prefix(identity))
        .chain_update(identity)
        .chain_update(length_prefix(user_id))
        .chain_update(user_id)
        .finalize()
        .into();
    for _ in 1..ITERATIONS {
        hash = Sha512::new().chain_update(hash).chain_update(identity).finalize().into();
    }
    hash
}

/// The length of `field` as 4 big-endian bytes. A field longer than
/// `u32::MAX` bytes (only a user id could be) is prefixed with `u32::MAX`: the
/// encoding stays injective, because the user id is the last field and every
/// field before it has a fixed length.
fn length_prefix(field: &[u8]) -> [u8; 4] {
    u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes()
}

/// The 30 digits of one side: the first 30 bytes of `F` (or of its
/// scannable fingerprint, the same bytes) as six big-endian 40-bit integers,
/// each mod 10^5, each printed as 5 digits.
fn side_digits(fingerprint: &[u8]) -> String {
    let mut digits = String::with_capacity(SIDE_DIGITS);
    for chunk in fingerprint.chunks_exact(DIGIT_CHUNK_LEN).take(DIGIT_CHUNKS) {
        let value = chunk.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        digits.push_str(&format!("{:05}", value % DIGIT_CHUNK_MODULUS));
    }
    digits
}

/// The first [`SCANNABLE_FINGERPRINT_LEN`] bytes of `F`.
fn scannable_fingerprint(fingerprint: &[u8; 64]) -> [u8; SCANNABLE_FINGERPRINT_LEN] {
    let mut out = [0; SCANNABLE_FINGERPRINT_LEN];
    for (out, byte) in out.iter_mut().zip(fingerprint) {
        *out = *byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    const ALICE: [u8; 32] = [1; 32];
    const BOB: [u8; 32] = [2; 32];

    /// Alice's and Bob's views of the same conversation, computed once.
    fn pair() -> &'static (SafetyNumber, SafetyNumber) {
        static PAIR: OnceLock<(SafetyNumber, SafetyNumber)> = OnceLock::new();
        PAIR.get_or_init(|| {
            (
                SafetyNumber::from_key_bytes("alice", &ALICE, "bob", &BOB),
                SafetyNumber::from_key_bytes("bob", &BOB, "alice", &ALICE),
            )
        })
    }

    #[test]
    fn both_sides_agree() {
        let (on_alice, on_bob) = pair();
        assert_eq!(on_alice.digits(), on_bob.digits());
        assert_eq!(on_alice.display(), on_bob.display());
        assert_eq!(on_alice.compare_scanned(&on_bob.scannable()), Ok(()));
        assert_eq!(on_bob.compare_scanned(&on_alice.scannable()), Ok(()));
        // The two codes are mirror images.
        assert_eq!(on_alice.scannable()[1..33], on_bob.scannable()[33..]);
        assert_eq!(on_alice.scannable()[33..], on_bob.scannable()[1..33]);
    }

    #[test]
    fn sixty_ascii_digits_in_twelve_groups() {
        let (on_alice, _) = pair();
        assert_eq!(on_alice.digits().len(), SAFETY_NUMBER_DIGITS);
        assert!(on_alice.digits().bytes().all(|b| b.is_ascii_digit()));
        let shown = on_alice.display();
        assert_eq!(shown.len(), 71);
        let groups: Vec<&str> = shown.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 5));
        assert_eq!(groups.concat(), on_alice.digits());
    }

    /// Builds both views with what Bob holds for Alice and what Alice holds for
    /// Bob, and checks the digits and what each side's scan comparison reports.
    fn mismatch_after(bob_sees_alice: (&str, &[u8; 32]), alice_sees_bob: (&str, &[u8; 32])) {
        let on_alice = SafetyNumber::from_key_bytes("alice", &ALICE, alice_sees_bob.0, alice_sees_bob.1);
        let on_bob = SafetyNumber::from_key_bytes("bob", &BOB, bob_sees_alice.0, bob_sees_alice.1);
        let alice_ok = alice_sees_bob == ("bob", &BOB);
        let bob_ok = bob_sees_alice == ("alice", &ALICE);
        let (expect_on_alice, expect_on_bob) = match (bob_ok, alice_ok) {
            (true, true) => (Ok(()), Ok(())),
            (false, true) => (Err(MismatchedSide::Local), Err(MismatchedSide::Remote)),
            (true, false) => (Err(MismatchedSide::Remote), Err(MismatchedSide::Local)),
            (false, false) => (Err(MismatchedSide::Both), Err(MismatchedSide::Both)),
        };
        assert_eq!(on_alice.digits() == on_bob.digits(), alice_ok && bob_ok);
        assert_eq!(on_alice.compare_scanned(&on_bob.scannable()), expect_on_alice.map_err(ScanError::Mismatch));
        assert_eq!(on_bob.compare_scanned(&on_alice.scannable()), expect_on_bob.map_err(ScanError::Mismatch));
    }

    #[test]
    fn any_changed_input_changes_the_number_and_names_the_side() {
        let other_key = [9; 32];
        // Bob holds a wrong key, or a wrong user id, for Alice.
        mismatch_after(("alice", &other_key), ("bob", &BOB));
        mismatch_after(("alicf", &ALICE), ("bob", &BOB));
        // Alice holds a wrong key, or a wrong user id, for Bob.
        mismatch_after(("alice", &ALICE), ("bob", &other_key));
        mismatch_after(("alice", &ALICE), ("bob2", &BOB));
        // Both.
        mismatch_after(("alice", &other_key), ("bob", &other_key));
        // Nothing changed.
        mismatch_after(("alice", &ALICE), ("bob", &BOB));
    }

    #[test]
    fn one_bit_of_key_changes_the_digits() {
        let mut key = ALICE;
        key[31] ^= 0x01;
        let (on_alice, _) = pair();
        assert_ne!(SafetyNumber::from_key_bytes("alice", &key, "bob", &BOB).digits(), on_alice.digits());
    }

    #[test]
    fn wrong_length_and_version_are_typed_errors() {
        let (on_alice, on_bob) = pair();
        let code = on_bob.scannable();
        assert_eq!(on_alice.compare_scanned(&[]), Err(ScanError::Malformed { len: 0 }));
        assert_eq!(on_alice.compare_scanned(&[SCANNABLE_VERSION]), Err(ScanError::Malformed { len: 1 }));
        assert_eq!(on_alice.compare_scanned(&code[..64]), Err(ScanError::Malformed { len: 64 }));
        let mut long = code.clone();
        long.push(0);
        assert_eq!(on_alice.compare_scanned(&long), Err(ScanError::Malformed { len: 66 }));
        for version in [0, 2, 0xff] {
            let mut other = code.clone();
            other[0] = version;
            assert_eq!(on_alice.compare_scanned(&other), Err(ScanError::UnsupportedVersion(version)));
            assert_eq!(on_alice.compare_scanned(&[version]), Err(ScanError::UnsupportedVersion(version)));
        }
    }

    #[test]
    fn a_code_reads_back_into_its_safety_number() {
        let (on_alice, on_bob) = pair();
        for number in [on_alice, on_bob] {
            let kept = SafetyNumber::from_scannable(&number.scannable()).unwrap();
            assert_eq!(kept.digits(), number.digits());
            assert_eq!(kept.display(), number.display());
            assert_eq!(kept.scannable(), number.scannable());
        }
        let kept = SafetyNumber::from_scannable(&on_alice.scannable()).unwrap();
        assert_eq!(kept.compare_scanned(&on_bob.scannable()), Ok(()));
        assert_eq!(on_bob.compare_scanned(&kept.scannable()), Ok(()));
        let other = SafetyNumber::from_key_bytes("bob", &BOB, "alice", &[9; 32]);
        assert_eq!(kept.compare_scanned(&other.scannable()), Err(ScanError::Mismatch(MismatchedSide::Local)));
    }

    #[test]
    fn a_code_that_is_not_one_does_not_read_back() {
        let code = pair().0.scannable();
        assert_eq!(SafetyNumber::from_scannable(&[]).err(), Some(ScanError::Malformed { len: 0 }));
        assert_eq!(SafetyNumber::from_scannable(&code[..64]).err(), Some(ScanError::Malformed { len: 64 }));
        let mut other = code;
        other[0] = 2;
        assert_eq!(SafetyNumber::from_scannable(&other).err(), Some(ScanError::UnsupportedVersion(2)));
    }

    #[test]
    fn own_code_does_not_verify() {
        let (on_alice, _) = pair();
        assert_eq!(on_alice.compare_scanned(&on_alice.scannable()), Err(ScanError::Mismatch(MismatchedSide::Both)));
    }

    #[test]
    fn user_id_is_hashed_as_utf8_bytes_with_a_length() {
        // Same bytes split differently between fields must not collide, and
        // normalization is the caller's business: "é" precomposed vs decomposed differ.
        assert_ne!(
            side_fingerprint(SAFETY_NUMBER_LABEL, "e\u{301}", &ALICE),
            side_fingerprint(SAFETY_NUMBER_LABEL, "\u{e9}", &ALICE)
        );
        assert_ne!(
            side_fingerprint(SAFETY_NUMBER_LABEL, "", &ALICE),
            side_fingerprint(SAFETY_NUMBER_LABEL, "\0", &ALICE)
        );
    }

    #[test]
    fn debug_prints_the_digits_only() {
        let (on_alice, _) = pair();
        assert_eq!(format!("{on_alice:?}"), format!("SafetyNumber {{ digits: {:?}, .. }}", on_alice.digits()));
    }

    #[test]
    fn label_is_prefixed() {
        assert!(SAFETY_NUMBER_LABEL.starts_with(b"samizdat/v1/"));
    }

    // Known answers, computed independently of this crate with Python's hashlib
    // (python3 kat.py), from the specification in the module docs:
    //
    // import hashlib, struct
    //
    // def fingerprint(user_id, key):  # h_0 .. h_5199: 5200 hashes in all
    //     uid = user_id.encode("utf-8")
    //     h = hashlib.sha512(struct.pack(">H", 1) + b"samizdat/v1/safety-number"
    //                        + struct.pack(">I", len(key)) + key + struct.pack(">I", len(uid)) + uid).digest()
    //     for _ in range(5200 - 1):
    //         h = hashlib.sha512(h + key).digest()
    //     return h
    //
    // def digits(h):
    //     return "".join("%05d" % (int.from_bytes(h[i:i + 5], "big") % 100000) for i in range(0, 30, 5))
    //
    // for (x, kx), (y, ky) in [(("alice", 1), ("bob", 2)), (("zo\u00eb", 3), ("bob", 2))]:
    //     fx, fy = fingerprint(x, bytes([kx] * 32)), fingerprint(y, bytes([ky] * 32))
    //     print(x, digits(fx), "|", y, digits(fy))
    //     print("number:", "".join(sorted([digits(fx), digits(fy)])))
    //     print(x, "scannable:", "01" + fx[:32].hex() + fy[:32].hex())
    #[test]
    fn known_answers() {
        let alice = "523161548019042329094304357159";
        let bob = "791254108841946888889081441287";
        let alice_fp = "040e9a255cb221b25ad8793070748219284a2fad67769402e392968a15c73858";
        let bob_fp = "bf56647ab5bc19abcca01f4c2c0eba29a86595b863c12503dea629c4e7675307";
        let (on_alice, on_bob) = pair();
        assert_eq!(side_digits(&side_fingerprint(SAFETY_NUMBER_LABEL, "alice", &ALICE)), alice);
        assert_eq!(side_digits(&side_fingerprint(SAFETY_NUMBER_LABEL, "bob", &BOB)), bob);
        // Alice's digits are the smaller, so they come first on both screens.
        assert_eq!(on_alice.digits(), format!("{alice}{bob}"));
        assert_eq!(on_bob.digits(), format!("{alice}{bob}"));
        assert_eq!(on_alice.display(), "52316 15480 19042 32909 43043 57159 79125 41088 41946 88888 90814 41287");
        assert_eq!(hex::encode(on_alice.scannable()), format!("01{alice_fp}{bob_fp}"));
        assert_eq!(hex::encode(on_bob.scannable()), format!("01{bob_fp}{alice_fp}"));

        // A user id whose UTF-8 length (4 bytes) differs from its length in characters (3).
        let zoe = "295437144887612899619860145425";
        let zoe_fp = "63364c41c77d76732c381b0f3d395c074590d2296dbc86fd89e9645dbf719aa3";
        let on_zoe = SafetyNumber::from_key_bytes("zo\u{eb}", &[3; 32], "bob", &BOB);
        assert_eq!(on_zoe.digits(), format!("{zoe}{bob}"));
        assert_eq!(hex::encode(on_zoe.scannable()), format!("01{zoe_fp}{bob_fp}"));
    }

    proptest! {
        #[test]
        fn arbitrary_scans_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (on_alice, on_bob) = pair();
            let result = on_alice.compare_scanned(&bytes);
            prop_assert_eq!(result.is_ok(), bytes == on_bob.scannable());
        }

        #[test]
        fn every_well_formed_code_reads_back(fingerprints in proptest::array::uniform::<_, 64>(any::<u8>())) {
            let mut code = vec![SCANNABLE_VERSION];
            code.extend_from_slice(&fingerprints);
            let number = SafetyNumber::from_scannable(&code).unwrap();
            prop_assert_eq!(number.scannable(), code);
            prop_assert_eq!(number.digits().len(), SAFETY_NUMBER_DIGITS);
        }

        #[test]
        fn arbitrary_well_formed_scans_mismatch(fingerprints in proptest::array::uniform::<_, 64>(any::<u8>())) {
            let (on_alice, _) = pair();
            let mut code = vec![SCANNABLE_VERSION];
            code.extend_from_slice(&fingerprints);
            prop_assert!(matches!(on_alice.compare_scanned(&code), Err(ScanError::Mismatch(_))));
        }
    }
}
