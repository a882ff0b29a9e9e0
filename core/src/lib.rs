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
// No panics and no unchecked arithmetic in the library: every failure is a
// typed error (the workspace lints warn on the first four; here they are
// errors whatever the command line says). Tests may unwrap, index and panic
// (`clippy.toml`), and do arithmetic.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod address;
pub mod attachment;
pub mod backup;
mod codec;
pub mod device;
mod error;
pub mod fingerprint;
pub mod group;
mod handshake;
#[cfg(feature = "hazmat")]
pub mod hazmat;
pub mod heal;
mod kdf;
pub mod keys;
mod kind;
pub mod limits;
mod padding;
pub mod prekeys;
pub mod ratchet;
pub mod session;
pub mod store;
pub mod wire;

pub use error::{DecodeError, DecryptError, EncryptError, PreKeyKind, SessionError};
pub use kind::{ErrorKind, Recovery};
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
