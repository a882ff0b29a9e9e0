//! **Hazardous material**, compiled only with the `hazmat` feature: a bare
//! Double Ratchet whose randomness the caller scripts, so that the Kotlin,
//! Swift and Python tests can replay `vectors/ratchet_transcript.json`
//! through the bindings byte for byte.
//!
//! Nothing here is for apps. A ratchet fed chosen "random" bytes reuses
//! header nonces and ratchet keys at the caller's will, and it has no
//! handshake, no identity checks and no store: apps use [`crate::Device`].
//! The libraries and packages an app ships are built without this feature
//! (`cargo xtask bindings`, the shipped Swift sources); only the test builds
//! of `cargo xtask test` enable it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use samizdat::{
    DecryptError, EncryptError,
    hazmat::FixedBytes,
    keys::{X25519PublicKey, X25519Secret},
    ratchet::{DoubleRatchet, RatchetInit},
    wire::RatchetMessage,
};
use zeroize::Zeroizing;

/// Why a [`VectorRatchet`] call failed: the ratchet's own errors, kept apart
/// (unlike [`crate::SamizdatError`]) because the vectors name each one.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum VectorRatchetError {
    /// The message was already decrypted (or its skipped key was evicted).
    #[error("duplicate message (counter {counter})")]
    Duplicate {
        /// The message's counter on its chain, from its authenticated header.
        counter: u32,
    },
    /// Another message on a counter already used, from a sender whose state
    /// went backwards (restored from a backup, cloned, forked).
    #[error("the sender's state went backwards (counter {counter} reused)")]
    Rollback {
        /// The message's counter on its chain, from its authenticated header.
        counter: u32,
    },
    /// The message's key was evicted unused before it arrived.
    #[error("the key of this message was evicted before it arrived (counter {counter})")]
    KeyEvicted {
        /// The message's counter on its chain, from its authenticated header.
        counter: u32,
    },
    /// No state opens the message's header (another session, a state gone
    /// apart, or a forgery: they cannot be told apart).
    #[error("no state of the session opens this message")]
    NoMatchingState,
    /// The header opened but the body does not authenticate (forged or
    /// altered).
    #[error("message failed authentication")]
    Unauthenticated,
    /// The message is further ahead of its chain than the skip limit.
    #[error("message is {gap} messages ahead, more than the limit of {max}")]
    TooFarAhead {
        /// How many keys it would skip.
        gap: u32,
        /// The limit.
        max: u32,
    },
    /// The bytes are not a well-formed ratchet message or state.
    #[error("malformed: {reason}")]
    Malformed {
        /// What does not parse.
        reason: String,
    },
    /// This state cannot encrypt (a responder that has not received yet, a
    /// plaintext over the limit, an exhausted chain).
    #[error("cannot encrypt: {reason}")]
    CannotEncrypt {
        /// Why.
        reason: String,
    },
    /// An argument is invalid: a key that is not 32 bytes, associated data
    /// over the limit, or scripted randomness of the wrong length (the state
    /// is then left as it was).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
}

/// A bare Double Ratchet with header encryption and scripted randomness,
/// for replaying test vectors. **Not for apps**: see the module docs.
///
/// Every call that draws randomness takes it as `random`, and must consume
/// exactly those bytes: an encryption draws the 24-byte header nonce, a
/// decryption that performs a DH step draws the 32-byte secret of the new
/// ratchet key, any other decryption draws nothing. A call given the wrong
/// number of bytes fails with [`VectorRatchetError::InvalidArgument`] and
/// leaves the state as it was.
#[derive(uniffi::Object)]
pub struct VectorRatchet {
    inner: Mutex<DoubleRatchet>,
}

#[uniffi::export]
impl VectorRatchet {
    /// The initiator's state (`RatchetInitAliceHE`) from the handshake's
    /// output `SK`, `HKa`, `NHKb` and `AD`, and the responder's ratchet public
    /// key. `random` is the initiator's first ratchet secret (32 bytes).
    #[uniffi::constructor]
    pub fn initiator(
        root_key: Vec<u8>,
        initiator_header_key: Vec<u8>,
        responder_header_key: Vec<u8>,
        associated_data: Vec<u8>,
        responder_ratchet_key: Vec<u8>,
        random: Vec<u8>,
    ) -> Result<Arc<Self>, VectorRatchetError> {
        let init = ratchet_init(&root_key, &initiator_header_key, &responder_header_key, &associated_data)?;
        let peer = X25519PublicKey::from_bytes(array("responder_ratchet_key", &responder_ratchet_key)?);
        let mut rng = FixedBytes::new(&random);
        let ratchet = DoubleRatchet::new_initiator(&mut rng, init, &peer).map_err(invalid_argument)?;
        exactly_drawn(&rng, random.len())?;
        Ok(Arc::new(Self { inner: Mutex::new(ratchet) }))
    }

    /// The responder's state (`RatchetInitBobHE`) from the same handshake
    /// output and its ratchet secret (the signed prekey's, 32 bytes).
    #[uniffi::constructor]
    pub fn responder(
        root_key: Vec<u8>,
        initiator_header_key: Vec<u8>,
        responder_header_key: Vec<u8>,
        associated_data: Vec<u8>,
        ratchet_secret: Vec<u8>,
    ) -> Result<Arc<Self>, VectorRatchetError> {
        let init = ratchet_init(&root_key, &initiator_header_key, &responder_header_key, &associated_data)?;
        let secret = Zeroizing::new(array("ratchet_secret", &ratchet_secret)?);
        let ratchet = DoubleRatchet::new_responder(init, X25519Secret::from_bytes(*secret));
        Ok(Arc::new(Self { inner: Mutex::new(ratchet) }))
    }

    /// A state from its stored encoding ([`Self::state`]).
    #[uniffi::constructor]
    pub fn from_state(state: Vec<u8>) -> Result<Arc<Self>, VectorRatchetError> {
        let ratchet = DoubleRatchet::from_bytes(&state).map_err(malformed)?;
        Ok(Arc::new(Self { inner: Mutex::new(ratchet) }))
    }

    /// Encrypts `plaintext` with the 24-byte header nonce `random`; returns
    /// the encoded ratchet message (the wire bytes).
    pub fn encrypt(&self, plaintext: Vec<u8>, random: Vec<u8>) -> Result<Vec<u8>, VectorRatchetError> {
        let mut ratchet = self.lock();
        let before = ratchet.to_bytes();
        let mut rng = FixedBytes::new(&random);
        let message = ratchet
            .encrypt(&mut rng, &plaintext)
            .map_err(|e: EncryptError| VectorRatchetError::CannotEncrypt { reason: e.to_string() })?;
        restore_unless_exact(&mut ratchet, &before, &rng, random.len())?;
        Ok(message.to_bytes())
    }

    /// Decrypts an encoded ratchet message, drawing exactly `random` (32
    /// bytes for a DH step, none otherwise). On any error the state is as it
    /// was.
    pub fn decrypt(&self, message: Vec<u8>, random: Vec<u8>) -> Result<Vec<u8>, VectorRatchetError> {
        let message = RatchetMessage::from_bytes(&message).map_err(malformed)?;
        let mut ratchet = self.lock();
        let before = ratchet.to_bytes();
        let mut rng = FixedBytes::new(&random);
        let plaintext = ratchet.decrypt(&mut rng, &message).map_err(|e| match e {
            DecryptError::Duplicate { counter } => VectorRatchetError::Duplicate { counter },
            DecryptError::Rollback { counter } => VectorRatchetError::Rollback { counter },
            DecryptError::TooFarAhead { gap, max } => VectorRatchetError::TooFarAhead { gap, max },
            DecryptError::KeyEvicted { counter } => VectorRatchetError::KeyEvicted { counter },
            DecryptError::NoMatchingState => VectorRatchetError::NoMatchingState,
            DecryptError::Malformed(e) => malformed(e),
            // Unauthenticated, and any reason a later core adds: refused.
            _ => VectorRatchetError::Unauthenticated,
        })?;
        restore_unless_exact(&mut ratchet, &before, &rng, random.len())?;
        Ok(plaintext)
    }

    /// Our current ratchet public key `DHs` (32 bytes).
    pub fn ratchet_public_key(&self) -> Vec<u8> {
        self.lock().ratchet_public_key().as_bytes().to_vec()
    }

    /// How many skipped message keys are stored.
    pub fn stored_skipped_keys(&self) -> u32 {
        u32::try_from(self.lock().stored_skipped_keys()).unwrap_or(u32::MAX)
    }

    /// How many receiving chains are kept.
    pub fn receiving_chains(&self) -> u32 {
        u32::try_from(self.lock().receiving_chains()).unwrap_or(u32::MAX)
    }

    /// The stored encoding of the state (secret: it holds every key).
    pub fn state(&self) -> Vec<u8> {
        self.lock().to_bytes().to_vec()
    }
}

impl VectorRatchet {
    /// The state; a panic elsewhere cannot leave it half-changed (every
    /// change is computed first), so a poisoned lock is still consistent.
    fn lock(&self) -> MutexGuard<'_, DoubleRatchet> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn ratchet_init(
    root_key: &[u8],
    initiator_header_key: &[u8],
    responder_header_key: &[u8],
    associated_data: &[u8],
) -> Result<RatchetInit, VectorRatchetError> {
    let root_key = Zeroizing::new(array("root_key", root_key)?);
    let hka = Zeroizing::new(array("initiator_header_key", initiator_header_key)?);
    let nhkb = Zeroizing::new(array("responder_header_key", responder_header_key)?);
    RatchetInit::new(*root_key, *hka, *nhkb, associated_data).map_err(invalid_argument)
}

fn array(name: &str, bytes: &[u8]) -> Result<[u8; 32], VectorRatchetError> {
    bytes.try_into().map_err(|_| VectorRatchetError::InvalidArgument {
        reason: format!("{name} must be 32 bytes, not {}", bytes.len()),
    })
}

fn exactly_drawn(rng: &FixedBytes, given: usize) -> Result<(), VectorRatchetError> {
    if rng.drawn() == given {
        Ok(())
    } else {
        Err(VectorRatchetError::InvalidArgument {
            reason: format!("random: {given} bytes given, {} drawn", rng.drawn()),
        })
    }
}

/// Puts the state back as it was if the call did not draw exactly the
/// scripted bytes (the change was made with made-up randomness).
fn restore_unless_exact(
    ratchet: &mut DoubleRatchet,
    before: &[u8],
    rng: &FixedBytes,
    given: usize,
) -> Result<(), VectorRatchetError> {
    let drawn = exactly_drawn(rng, given);
    if drawn.is_err() {
        *ratchet = DoubleRatchet::from_bytes(before).map_err(malformed)?;
    }
    drawn
}

fn malformed(error: impl std::fmt::Display) -> VectorRatchetError {
    VectorRatchetError::Malformed { reason: error.to_string() }
}

fn invalid_argument(error: impl std::fmt::Display) -> VectorRatchetError {
    VectorRatchetError::InvalidArgument { reason: error.to_string() }
}
