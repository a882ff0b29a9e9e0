//! # Samizdat
//!
//! End-to-end encrypted messaging: a post-quantum PQXDH handshake
//! (X25519 and ML-KEM-1024), a Double Ratchet with header encryption,
//! sessions that heal themselves, Sender Keys groups, attachments, and an
//! encrypted SQLite store. Start from a [`device::Device`]: one
//! installation, its identity, prekeys and sessions.
//!
//! ```
//! use std::time::SystemTime;
//!
//! use samizdat::{
//!     address::Address,
//!     device::Device,
//!     store::{MemoryBackend, StorageKey},
//! };
//!
//! // `Device::create` / `Device::open` take a database path. The storage
//! // key is made once, kept in the platform keystore, and read back at
//! // every start (`StorageKey::from_bytes`).
//! let alice_key = StorageKey::generate();
//! let alice = Device::create_in(MemoryBackend::new(), &alice_key, Address::new("alice", 1)?, SystemTime::now())?;
//! let bob = Device::create_in(MemoryBackend::new(), &StorageKey::generate(), Address::new("bob", 1)?, SystemTime::now())?;
//!
//! // Bob's bundle travels through a server (one bundle per contact);
//! // Alice verifies it and opens a PQXDH session.
//! let bob_address = alice.start_session(&bob.prekey_bundle()?)?;
//! let wire = alice.encrypt(&bob_address, b"hello")?; // committed before it is returned
//!
//! // Bob decrypts in two phases: store the plaintext, commit, then
//! // acknowledge the message to the server.
//! let pending = bob.decrypt(alice.address(), &wire)?;
//! assert_eq!(pending.plaintext(), b"hello");
//! bob.commit(pending)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The modules:
//! - [`device`]: the API an app uses (sessions, groups, healing, the
//!   outbox, prekeys, backups, storage-key rotation), over a [`store`];
//! - [`attachment`]: files of any size, streamed, padded and seekable;
//! - [`fingerprint`]: safety numbers to compare or scan;
//! - [`backup`], [`heal`], [`group`]: the formats of backups, resets and
//!   group messages;
//! - the protocol underneath: [`keys`], [`prekeys`], [`session`],
//!   [`ratchet`], [`wire`], and every bound in [`limits`];
//! - errors: each has `kind()`, one of the stable [`ErrorKind`] codes with
//!   its [`Recovery`].
//!
//! Randomness is injected where a caller may want to fix it (every
//! protocol function that needs it takes a [`rand_core::CryptoRng`]); the
//! device uses [`os_rng`].
//!
//! The protocol is specified in `PROTOCOL.md` at the root of the
//! repository, precisely enough to reimplement it and reproduce the test
//! vectors in `vectors/`.
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
mod clock;
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
pub mod user;
pub mod wire;

pub use error::{DecodeError, DecryptError, EncryptError, PreKeyKind, SessionError};
pub use kind::{ErrorKind, Recovery};
pub use rand_core;

/// The operating system's random number generator, as a
/// [`rand_core::CryptoRng`]: what the calls that take a generator want,
/// outside tests with scripted randomness. It panics only if the OS cannot
/// provide randomness at all, which no caller could recover from.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRng(());

impl rand_core::TryRng for OsRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand_core::Rng::next_u32(&mut rand_core::UnwrapErr(getrandom::SysRng)))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand_core::Rng::next_u64(&mut rand_core::UnwrapErr(getrandom::SysRng)))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand_core::Rng::fill_bytes(&mut rand_core::UnwrapErr(getrandom::SysRng), dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for OsRng {}

/// A handle on the operating system's generator ([`OsRng`]).
pub fn os_rng() -> OsRng {
    OsRng(())
}

#[cfg(test)]
mod loader_checks_tests;
#[cfg(test)]
mod wycheproof_tests;
#[cfg(test)]
mod zeroize_tests;
