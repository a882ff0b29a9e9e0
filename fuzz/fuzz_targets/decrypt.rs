//! Decryption of any bytes against fixed sessions built deterministically
//! (`samizdat_fuzz::scenario`): Bob's Double Ratchet state (even first
//! byte), or Bob's session record and prekeys (odd first byte); the rest of
//! the input is the message.
//!
//! Asserted (PROTOCOL.md 4.6, 4.8, 4.9, 9.5, 9.6):
//! - a failed decryption leaves the state byte for byte as it was, and
//!   draws nothing from the generator;
//! - a successful one gives a plaintext Alice sent and Bob had not
//!   decrypted yet; the state then stays within the limits and round-trips
//!   through its encoding; and the same bytes again are a `Duplicate`.
#![no_main]

use std::sync::OnceLock;

use chacha20::ChaCha20Rng;
use libfuzzer_sys::fuzz_target;
use samizdat::{
    DecryptError, SessionError,
    keys::IdentityKeyPair,
    limits::{MAX_ARCHIVED_STATES, MAX_RECEIVING_CHAINS, MAX_STORED_SKIPPED_KEYS},
    prekeys::PreKeySet,
    rand_core::{Rng, SeedableRng},
    ratchet::DoubleRatchet,
    session::SessionRecord,
    wire::RatchetMessage,
};
use samizdat_fuzz::scenario::{self, RatchetScenario, RecordScenario, Scenario, alice, bob};

struct Fixed {
    ratchet: RatchetScenario,
    record: RecordScenario,
    bob_identity: IdentityKeyPair,
    bob_prekeys: PreKeySet,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let record = scenario::record();
        Fixed {
            bob_identity: IdentityKeyPair::from_seed(&record.bob_seed),
            bob_prekeys: PreKeySet::from_bytes(&record.bob_prekeys).expect("Bob's prekeys load"),
            ratchet: scenario::ratchet(),
            record,
        }
    })
}

/// The generator of one decryption, and a copy to tell whether it was drawn from.
fn generator() -> (ChaCha20Rng, ChaCha20Rng) {
    (ChaCha20Rng::from_seed([0xd5; 32]), ChaCha20Rng::from_seed([0xd5; 32]))
}

fn untouched(mut used: ChaCha20Rng, mut fresh: ChaCha20Rng) {
    assert!(used.next_u64() == fresh.next_u64(), "a failed decryption drew from the generator");
}

fn genuine(scenario: &Scenario, plaintext: &[u8]) {
    assert!(scenario.sent.iter().any(|p| p == plaintext), "decrypted a plaintext Alice never sent");
    assert!(!scenario.delivered.iter().any(|p| p == plaintext), "decrypted a message Bob had decrypted already");
}

fn ratchet(fixed: &Fixed, wire: &[u8]) {
    let Ok(message) = RatchetMessage::from_bytes(wire) else { return };
    let mut state = DoubleRatchet::from_bytes(&fixed.ratchet.bob).expect("Bob's state loads");
    let before = state.to_bytes();
    let (mut rng, fresh) = generator();
    match state.decrypt(&mut rng, &message) {
        Err(_) => {
            assert!(state.to_bytes() == before, "a failed decryption changed the state");
            untouched(rng, fresh);
        }
        Ok(plaintext) => {
            genuine(&fixed.ratchet.messages, &plaintext);
            assert!(state.stored_skipped_keys() <= MAX_STORED_SKIPPED_KEYS, "too many skipped keys");
            assert!(state.receiving_chains() <= MAX_RECEIVING_CHAINS, "too many receiving chains");
            let after = state.to_bytes();
            let reloaded = DoubleRatchet::from_bytes(&after).expect("the new state loads");
            assert!(reloaded.to_bytes() == after, "the new state does not round-trip");
            let replay = state.decrypt(&mut rng, &message);
            assert!(matches!(replay, Err(DecryptError::Duplicate { .. })), "a replay gave {replay:?}");
            assert!(state.to_bytes() == after, "a refused replay changed the state");
        }
    }
}

fn record(fixed: &Fixed, wire: &[u8]) {
    let mut record = SessionRecord::from_bytes(&fixed.record.bob_record).expect("Bob's record loads");
    let before = record.to_bytes();
    let (mut rng, fresh) = generator();
    let decrypt = |record: &mut SessionRecord, rng: &mut ChaCha20Rng| {
        record.decrypt_and_commit(rng, &fixed.bob_identity, &bob(), &alice(), &fixed.bob_prekeys, wire)
    };
    match decrypt(&mut record, &mut rng) {
        Err(_) => {
            assert!(record.to_bytes() == before, "a failed decryption changed the record");
            untouched(rng, fresh);
        }
        Ok((plaintext, _consumed)) => {
            genuine(&fixed.record.messages, &plaintext);
            assert!(record.archived_states() <= MAX_ARCHIVED_STATES, "too many archived states");
            let after = record.to_bytes();
            let reloaded = SessionRecord::from_bytes(&after).expect("the new record loads");
            assert!(reloaded.to_bytes() == after, "the new record does not round-trip");
            let replay = decrypt(&mut record, &mut rng);
            assert!(
                matches!(replay, Err(SessionError::Decrypt(DecryptError::Duplicate { .. }))),
                "a replay gave {replay:?}"
            );
            assert!(record.to_bytes() == after, "a refused replay changed the record");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, wire)) = data.split_first() else { return };
    let fixed = fixed();
    if which % 2 == 0 { ratchet(fixed, wire) } else { record(fixed, wire) }
});
