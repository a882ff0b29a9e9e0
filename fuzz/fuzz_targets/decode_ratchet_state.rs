//! `DoubleRatchet::from_bytes` (a stored ratchet state, PROTOCOL.md 13.1 to
//! 13.3): no panic, a loaded state round-trips (exactly, but for the one
//! difference 13.3 documents: `samizdat_fuzz::normal`) and keeps within the limits,
//! and using it (an encryption) fails only with a typed error and changes
//! nothing when it fails.
#![no_main]

use chacha20::ChaCha20Rng;
use libfuzzer_sys::fuzz_target;
use samizdat::{
    limits::{MAX_ASSOCIATED_DATA_LEN, MAX_RECEIVING_CHAINS, MAX_STORED_SKIPPED_KEYS},
    rand_core::SeedableRng,
    ratchet::DoubleRatchet,
};
use samizdat_fuzz::{assert_round_trip_normal, normal};

fuzz_target!(|data: &[u8]| {
    let Ok(mut state) = DoubleRatchet::from_bytes(data) else { return };
    assert_round_trip_normal(
        "RatchetState",
        data,
        &state,
        |s| s.to_bytes().to_vec(),
        DoubleRatchet::from_bytes,
        normal::ratchet_state,
    );
    assert!(state.stored_skipped_keys() <= MAX_STORED_SKIPPED_KEYS, "too many skipped keys loaded");
    assert!(state.receiving_chains() <= MAX_RECEIVING_CHAINS, "too many receiving chains loaded");
    assert!(state.associated_data().len() <= MAX_ASSOCIATED_DATA_LEN, "associated data too long");
    let _ = state.ratchet_public_key();
    let before = state.to_bytes();
    let can_send = state.can_send();
    match state.encrypt(&mut ChaCha20Rng::from_seed([3; 32]), b"fuzz") {
        Ok(_) => assert!(can_send, "a state that cannot send encrypted"),
        Err(_) => assert!(state.to_bytes() == before, "a failed encryption changed the state"),
    }
});
