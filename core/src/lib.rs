//! # Samizdat
//!
//! End-to-end encrypted messaging: a Double Ratchet with header encryption
//! (and, as the crate grows, a post-quantum PQXDH handshake, sessions, groups
//! and an encrypted store).
//!
//! The layers, bottom up:
//! - [`kdf`](crate) (private): every key derivation and its label;
//! - [`keys`]: X25519 keys, zeroizing secret types;
//! - [`ratchet`]: the Double Ratchet state machine;
//! - [`wire`]: the versioned wire envelope;
//! - [`limits`]: every limit, in one place.
//!
//! Randomness is always injected: every function that needs it takes a
//! [`rand_core::CryptoRng`]. Use [`os_rng`] in production and a seeded
//! generator in tests.
//!
//! The protocol is specified in `PROTOCOL.md` at the root of the repository.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
mod codec;
pub mod device;
mod error;
pub mod fingerprint;
mod handshake;
#[cfg(feature = "hazmat")]
pub mod hazmat;
mod kdf;
pub mod keys;
pub mod limits;
mod padding;
pub mod prekeys;
pub mod ratchet;
pub mod session;
pub mod store;
pub mod wire;

pub use error::{DecodeError, DecryptError, EncryptError, PreKeyKind, SessionError};
pub use rand_core;

/// The operating system's random number generator, as a [`rand_core::CryptoRng`].
pub type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// A handle on the operating system's generator. It panics only if the OS
/// cannot provide randomness at all, which no caller could recover from.
pub fn os_rng() -> OsRng {
    rand_core::UnwrapErr(getrandom::SysRng)
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod loader_checks_tests;
#[cfg(test)]
mod wycheproof_tests;
#[cfg(test)]
mod zeroize_tests;
