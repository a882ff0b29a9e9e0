//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "hazmat")]
pub mod attacker;
pub mod audit_group;
pub mod group;
pub mod party;
pub mod users;

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use samizdat::{
    address::Address,
    device::{Device, DeviceError},
    keys::X25519Secret,
    ratchet::{DoubleRatchet, RatchetInit},
    store::{Backend, Expected, MemoryBackend, Write},
};

/// Device 1 of `name`.
pub fn addr(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

/// A new, empty directory for one test: `samizdat-test-<name>-<pid>` in the
/// system's temporary directory (each test binary is a process of its own).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("samizdat-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What an app does with a received message: decrypt, (store), commit;
/// returns the plaintext.
pub fn receive<B: Backend>(to: &Device<B>, from: &Address, wire: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let pending = to.decrypt(from, wire)?;
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending)?;
    Ok(plaintext)
}

/// Device 1 of `name` in a new memory store, created at time 0.
pub fn memory_device(name: &str, key: u8) -> Device<MemoryBackend> {
    Device::create_in(
        MemoryBackend::new(),
        &samizdat::store::StorageKey::from_bytes([key; 32]),
        addr(name),
        std::time::UNIX_EPOCH,
    )
    .unwrap()
}

/// What a received message was for the app, once committed.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// A direct message's plaintext.
    App(Vec<u8>),
    /// A control message: what its commit returned to send.
    Control(Vec<samizdat::device::Outgoing>),
    /// A group message's plaintext.
    Group(Vec<u8>),
    /// A sent sync from another device of our own user (PROTOCOL.md 23.7):
    /// the user it went to, and the plaintext.
    SentSync(String, Vec<u8>),
}

/// Decrypt, (store), commit, as an app does: what the message was.
pub fn receive_kind<B: Backend, C: Backend>(to: &Device<B>, from: &Device<C>, wire: &[u8]) -> Result<Got, DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    let kind = pending.kind();
    let plaintext = pending.plaintext().to_vec();
    let recipient = pending.sync_recipient().map(str::to_owned);
    let sent = to.commit(pending)?;
    Ok(match kind {
        samizdat::device::MessageKind::Direct => Got::App(plaintext),
        samizdat::device::MessageKind::Group => Got::Group(plaintext),
        samizdat::device::MessageKind::SentSync => Got::SentSync(recipient.unwrap_or_default(), plaintext),
        _ => Got::Control(sent),
    })
}

/// A copy of a memory store, as a backup holds it (to restore a device from
/// an older copy).
pub fn copy_of(store: &MemoryBackend) -> MemoryBackend {
    let copy = MemoryBackend::new();
    let writes: Vec<Write> = store
        .snapshot()
        .into_iter()
        .map(|((table, key), value)| Write { table, key, value: Some(value), expected: Expected::Any })
        .collect();
    copy.apply(&writes).unwrap();
    copy
}

/// A deterministic generator for tests.
pub fn rng(seed: u64) -> ChaCha20Rng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    ChaCha20Rng::from_seed(bytes)
}

/// Alice (initiator) and Bob (responder) sharing random handshake secrets.
pub fn pair(rng: &mut ChaCha20Rng) -> (DoubleRatchet, DoubleRatchet) {
    let mut rk = [0u8; 32];
    let mut hka = [0u8; 32];
    let mut hkb = [0u8; 32];
    rng.fill_bytes(&mut rk);
    rng.fill_bytes(&mut hka);
    rng.fill_bytes(&mut hkb);
    let ad = b"samizdat test session";
    let bob_key = X25519Secret::generate(rng);
    let bob_public = bob_key.public_key();
    let alice = DoubleRatchet::new_initiator(rng, RatchetInit::new(rk, hka, hkb, ad).unwrap(), &bob_public).unwrap();
    let bob = DoubleRatchet::new_responder(RatchetInit::new(rk, hka, hkb, ad).unwrap(), bob_key);
    (alice, bob)
}

/// Serializes and restores a state, checking the round trip is exact.
pub fn reload(state: &DoubleRatchet) -> DoubleRatchet {
    let bytes = state.to_bytes();
    let restored = DoubleRatchet::from_bytes(&bytes).unwrap();
    assert_eq!(*restored.to_bytes(), *bytes, "serialization round trip changed the state");
    restored
}
