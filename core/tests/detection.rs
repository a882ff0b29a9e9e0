//! Detection (issue 15, item 1): the device tells a replay from a forgery,
//! from a message that no state can read because the two sides' states went
//! apart. Each case is reported with its own typed error and stable code, and
//! detecting it changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use samizdat::{
    DecryptError, ErrorKind, Recovery, SessionError,
    address::Address,
    device::{Device, DeviceError},
    limits::{MAX_SKIP, MAX_STORED_SKIPPED_KEYS},
    store::MemoryBackend,
};
use std::time::UNIX_EPOCH;
use support::copy_of;

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn device(name: &str, key: u8) -> Device<MemoryBackend> {
    Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address(name), UNIX_EPOCH).unwrap()
}

fn receive(to: &Device<MemoryBackend>, from: &str, wire: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let pending = to.decrypt(&address(from), wire)?;
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending)?;
    Ok(plaintext)
}

fn decrypt_error(error: DeviceError) -> DecryptError {
    match error {
        DeviceError::Session(SessionError::Decrypt(e)) => e,
        other => panic!("not a decryption error: {other:?}"),
    }
}

/// The second case: a message never delivered, whose skipped key was
/// evicted, used to be reported as `Duplicate`, so the app acknowledged it
/// and it was lost. It is `KeyEvicted` now (out of step: heal), while a true
/// replay stays `Duplicate`; neither changes the store.
#[test]
fn a_message_whose_key_was_evicted_is_not_a_duplicate() {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let first = alice.encrypt(&address("bob"), b"first").unwrap();
    receive(&bob, "alice", &first).unwrap();
    // m0 is held back; a gap of 2,000 fills Bob's skipped keys (m0 among them),
    // and one more skipped key evicts m0's.
    let held = alice.encrypt(&address("bob"), b"held back").unwrap();
    let gap = u32::try_from(MAX_STORED_SKIPPED_KEYS).unwrap() - 1;
    let mut last = Vec::new();
    for i in 0..=gap {
        last = alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap();
    }
    receive(&bob, "alice", &last).unwrap();
    let skipped = alice.encrypt(&address("bob"), b"skipped too").unwrap();
    let after = alice.encrypt(&address("bob"), b"after").unwrap();
    receive(&bob, "alice", &after).unwrap();

    let before = bob.backend().snapshot();
    let error = bob.decrypt(&address("alice"), &held).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep);
    assert_eq!(error.kind().recovery(), Recovery::Heal);
    assert_eq!(decrypt_error(error), DecryptError::KeyEvicted { counter: 1 });
    assert_eq!(bob.backend().snapshot(), before, "detection changed the store");

    // A message delivered before is a duplicate, as ever.
    let error = bob.decrypt(&address("alice"), &after).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Duplicate);
    assert!(matches!(decrypt_error(error), DecryptError::Duplicate { .. }));
    // The last skipped key is still there.
    assert_eq!(receive(&bob, "alice", &skipped).unwrap(), b"skipped too");
    // And the eviction is remembered across a reopen of the store (it is in
    // the session row).
    let reopened = Device::open_in(copy_of(bob.backend()), &StorageKey::from_bytes([2; 32])).unwrap();
    let error = reopened.decrypt(&address("alice"), &held).unwrap_err();
    assert_eq!(decrypt_error(error), DecryptError::KeyEvicted { counter: 1 });
}

/// The first case: after more than `MAX_SKIP` dropped messages,
/// every later message of the chain is refused. It is reported as out of
/// step (heal), never as a forgery, and changes nothing.
#[test]
fn a_gap_past_the_skip_limit_is_out_of_step() {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    receive(&bob, "alice", &alice.encrypt(&address("bob"), b"first").unwrap()).unwrap();
    let mut wire = Vec::new();
    for i in 0..=MAX_SKIP + 1 {
        wire = alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap();
    }
    let before = bob.backend().snapshot();
    let error = bob.decrypt(&address("alice"), &wire).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep);
    assert!(matches!(decrypt_error(error), DecryptError::TooFarAhead { .. }));
    assert_eq!(bob.backend().snapshot(), before);
}

/// Our own store restored from an older copy: the peer moved on to a chain
/// whose keys the copy never had. Its messages open under no state:
/// `NoMatchingState`, told apart from a forgery (a header that opens, a body
/// that does not: `Unauthenticated`). Its code is `invalid_message` all the
/// same: anyone can make a message no state opens, so it must not trigger a
/// heal (which would archive a live state and lose the peer's messages in
/// flight: `audit_detection.rs`).
#[test]
fn our_store_restored_from_an_older_copy_is_no_matching_state() {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    receive(&bob, "alice", &alice.encrypt(&address("bob"), b"m1").unwrap()).unwrap();
    receive(&alice, "bob", &bob.encrypt(&address("alice"), b"r1").unwrap()).unwrap();
    let m2 = alice.encrypt(&address("bob"), b"m2").unwrap();
    // Bob's backup is taken before m2 arrives.
    let backup = copy_of(bob.backend());
    receive(&bob, "alice", &m2).unwrap();
    receive(&alice, "bob", &bob.encrypt(&address("alice"), b"r2").unwrap()).unwrap();
    let m3 = alice.encrypt(&address("bob"), b"m3").unwrap();

    let restored = Device::open_in(backup, &StorageKey::from_bytes([2; 32])).unwrap();
    let before = restored.backend().snapshot();
    let error = restored.decrypt(&address("alice"), &m3).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep);
    assert_eq!(decrypt_error(error), DecryptError::NoMatchingState);
    assert_eq!(restored.backend().snapshot(), before);

    // m3 is a DH step of Alice's: an altered copy of it is told from a
    // store restored after Bob's ratchet key changed by nothing (the header
    // opens under the next header key, the body under no chain our key
    // gives), so it is out of step too, and healing is rate-limited.
    let mut altered = m3.clone();
    *altered.last_mut().unwrap() ^= 1;
    let error = bob.decrypt(&address("alice"), &altered).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep);
    assert_eq!(decrypt_error(error), DecryptError::NoMatchingState);
    assert_eq!(receive(&bob, "alice", &m3).unwrap(), b"m3");
    // On the chain Bob has, an altered message is a forgery: the key the
    // chain gives is the one, and the body does not open under it.
    let m4 = alice.encrypt(&address("bob"), b"m4").unwrap();
    let mut altered = m4.clone();
    *altered.last_mut().unwrap() ^= 1;
    let error = bob.decrypt(&address("alice"), &altered).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidMessage);
    assert_eq!(decrypt_error(error), DecryptError::Unauthenticated);
    assert_eq!(receive(&bob, "alice", &m4).unwrap(), b"m4");
}

/// A sender restored from an older copy reuses a counter with new content:
/// the receiver reports it as out of step (`Rollback`), and a replay of a
/// message it read as a duplicate.
#[test]
fn a_sender_restored_from_an_older_copy_is_out_of_step() {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    receive(&bob, "alice", &alice.encrypt(&address("bob"), b"m1").unwrap()).unwrap();
    receive(&alice, "bob", &bob.encrypt(&address("alice"), b"r1").unwrap()).unwrap();
    let backup = copy_of(alice.backend());
    receive(&bob, "alice", &alice.encrypt(&address("bob"), b"m2").unwrap()).unwrap();
    let restored = Device::open_in(backup, &StorageKey::from_bytes([1; 32])).unwrap();
    let again = restored.encrypt(&address("bob"), b"m2, other content").unwrap();
    let error = bob.decrypt(&address("alice"), &again).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep);
    assert!(matches!(decrypt_error(error), DecryptError::Rollback { .. }));
}

/// A ratchet message from a peer we have no session with at all (our store
/// lost it, or was never told): `NoSession`, fetch the bundle.
#[test]
fn a_message_without_any_session_asks_for_the_bundle() {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    receive(&bob, "alice", &alice.encrypt(&address("bob"), b"m1").unwrap()).unwrap();
    receive(&alice, "bob", &bob.encrypt(&address("alice"), b"r1").unwrap()).unwrap();
    let m2 = alice.encrypt(&address("bob"), b"m2").unwrap();
    let bob_reinstalled = device("bob", 3);
    let error = bob_reinstalled.decrypt(&address("alice"), &m2).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NoSession);
    assert_eq!(error.kind().recovery(), Recovery::FetchBundle);
}

/// Skipped keys evicted over the whole record (past
/// `MAX_STORED_SKIPPED_KEYS` counted over every state, PROTOCOL.md 9.6) are
/// remembered as evicted too: a message of an archived state whose key went
/// so is `KeyEvicted`, not a duplicate.
#[test]
fn keys_evicted_over_the_whole_record_are_not_duplicates() {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    receive(&bob, "alice", &alice.encrypt(&address("bob"), b"first").unwrap()).unwrap();
    // 1,500 skipped keys on the first session, the first of them held back.
    let held = alice.encrypt(&address("bob"), b"held back").unwrap();
    let mut last = Vec::new();
    for i in 0..1_500 {
        last = alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap();
    }
    receive(&bob, "alice", &last).unwrap();
    // Alice starts a new session; on it, 1,000 more skipped keys: past the
    // record's limit, the oldest state's oldest keys go.
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let mut last = Vec::new();
    for i in 0..1_001 {
        last = alice.encrypt(&address("bob"), format!("n{i}").as_bytes()).unwrap();
    }
    receive(&bob, "alice", &last).unwrap();
    let error = bob.decrypt(&address("alice"), &held).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep, "{error:?}");
    assert_eq!(decrypt_error(error), DecryptError::KeyEvicted { counter: 1 });
}
