//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod audit_group;
pub mod group;
pub mod party;

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use samizdat::{
    keys::X25519Secret,
    ratchet::{DoubleRatchet, RatchetInit},
    store::{Backend, Expected, MemoryBackend, Write},
};

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
