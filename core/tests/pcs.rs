//! Post-compromise security of session records: an attacker who once copied
//! a record (a seized phone, a backup) must lose every handle on the session
//! once it has healed, archived states included.
//!
//! The attacker's tool is a copy of Bob's serialized record. From an archived
//! state in it (root key, Bob's ratchet key pair, the next header keys, the
//! associated data) the attacker can build a sender whose first message Bob
//! takes as the peer's next DH step on that state: the same root step on both
//! sides. Before the fix, Bob accepted such a message long after the session
//! had healed, promoted the archived state, and sent his next messages on it,
//! readable by the attacker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use chacha20::ChaCha20Rng;
use prost::Message as _;
use samizdat::{
    DecryptError, SessionError,
    address::Address,
    keys::{IdentityKeyPair, X25519PublicKey},
    prekeys::{PreKeyBundle, PreKeySet},
    ratchet::{DoubleRatchet, RatchetInit},
    session::SessionRecord,
};
use samizdat_proto::storage;
use std::time::{Duration, UNIX_EPOCH};
use support::rng;

struct Party {
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    address: Address,
    record: SessionRecord,
}

impl Party {
    fn new(rng: &mut ChaCha20Rng, name: &str) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH + Duration::from_secs(1_000));
        prekeys.add_one_time_prekeys(rng, &identity, 20, UNIX_EPOCH + Duration::from_secs(1_000)).unwrap();
        Self { identity, prekeys, address: Address::new(name, 1).unwrap(), record: SessionRecord::new() }
    }

    fn bundle(&self) -> PreKeyBundle {
        PreKeyBundle::from_bytes(&self.prekeys.bundle(&self.identity, &self.address).unwrap().to_bytes()).unwrap()
    }

    fn initiate(&mut self, rng: &mut ChaCha20Rng, peer: &Party) {
        let bundle = peer.bundle();
        self.record.initiate(rng, &self.identity, &self.address, &bundle).unwrap();
    }

    fn send(&mut self, rng: &mut ChaCha20Rng, text: &[u8]) -> Vec<u8> {
        self.record.encrypt(rng, text).unwrap()
    }

    fn receive(&mut self, rng: &mut ChaCha20Rng, from: &Address, wire: &[u8]) -> Result<Vec<u8>, SessionError> {
        let pending = self.record.decrypt(rng, &self.identity, &self.address, from, &self.prekeys, wire)?;
        let plaintext = pending.plaintext().to_vec();
        self.prekeys.consume(&pending.consumed_prekeys());
        self.record.commit(pending)?;
        Ok(plaintext)
    }
}

/// A full round trip: Alice to Bob, Bob to Alice (each one a DH step).
fn round_trip(rng: &mut ChaCha20Rng, alice: &mut Party, bob: &mut Party, n: usize) {
    let (a, b) = (alice.address.clone(), bob.address.clone());
    for i in 0..n {
        let text = format!("alice {i}");
        let wire = alice.send(rng, text.as_bytes());
        assert_eq!(bob.receive(rng, &a, &wire).unwrap(), text.as_bytes());
        let text = format!("bob {i}");
        let wire = bob.send(rng, text.as_bytes());
        assert_eq!(alice.receive(rng, &b, &wire).unwrap(), text.as_bytes());
    }
}

/// What an attacker takes out of one state of a stolen record.
struct StolenState {
    root_key: [u8; 32],
    next_receiving_header_key: [u8; 32],
    next_sending_header_key: [u8; 32],
    ratchet_public: X25519PublicKey,
    associated_data: Vec<u8>,
}

/// The full states (with a root key) of a stolen serialized record: the
/// current one first, then the archived ones.
fn stolen_states(record: &[u8]) -> Vec<StolenState> {
    let record = storage::SessionRecord::decode(record).unwrap();
    record
        .current
        .iter()
        .chain(record.archived.iter())
        .filter_map(|state| {
            let ratchet = state.ratchet.as_ref()?;
            let sending = ratchet.sending.as_ref()?;
            Some(StolenState {
                root_key: ratchet.root_key.as_slice().try_into().ok()?,
                next_receiving_header_key: ratchet.next_receiving_header_key.as_slice().try_into().ok()?,
                next_sending_header_key: sending.next_header_key.as_slice().try_into().ok()?,
                ratchet_public: X25519PublicKey::from_bytes(sending.ratchet_public.as_slice().try_into().ok()?),
                associated_data: ratchet.associated_data.clone(),
            })
        })
        .collect()
}

/// A sender that Bob's copied state takes for the peer's next DH step: the
/// attacker's first sending chain comes from the same root step Bob computes
/// when he receives it, and its reply chain from Bob's sending step.
fn impersonate(rng: &mut ChaCha20Rng, state: &StolenState) -> DoubleRatchet {
    let init = RatchetInit::new(
        state.root_key,
        state.next_receiving_header_key,
        state.next_sending_header_key,
        &state.associated_data,
    )
    .unwrap();
    DoubleRatchet::new_initiator(rng, init, &state.ratchet_public).unwrap()
}

/// Tries every full state of the copy against Bob: returns the number of
/// forged messages Bob accepted and whether the attacker could read Bob's
/// next message.
fn attack(rng: &mut ChaCha20Rng, copy: &[u8], alice: &Party, bob: &mut Party) -> (usize, bool) {
    let mut accepted = 0;
    let mut read = false;
    for stolen in stolen_states(copy) {
        let mut forger = impersonate(rng, &stolen);
        let forged = forger.encrypt(rng, b"from the attacker").unwrap().into_bytes();
        let before = bob.record.to_bytes();
        match bob.receive(rng, &alice.address, &forged) {
            Ok(plaintext) => {
                assert_eq!(plaintext, b"from the attacker");
                accepted += 1;
                let reply = bob.send(rng, b"bob's secret");
                let reply = samizdat::wire::RatchetMessage::from_bytes(&reply);
                if let Ok(reply) = reply
                    && forger.decrypt(rng, &reply).is_ok_and(|p| p == b"bob's secret")
                {
                    read = true;
                }
            }
            Err(error) => {
                assert!(
                    matches!(
                        error,
                        SessionError::Decrypt(
                            DecryptError::Unauthenticated
                                | DecryptError::NoMatchingState
                                | DecryptError::Rollback { .. }
                        )
                    ),
                    "a forged message must be refused (as a forgery, of no state, or, made from the stolen \
                     state's header keys, as a sender gone back), got {error:?}"
                );
                assert_eq!(*bob.record.to_bytes(), *before, "a refused forgery changed the record");
            }
        }
    }
    (accepted, read)
}

/// The attack of the issue: a re-initiation leaves an archived state; the
/// attacker copies Bob's record; the session heals; the attacker's message
/// built on the archived state must be refused, and Bob must not send on it.
#[test]
fn an_archived_state_from_a_stolen_record_cannot_be_reentered_after_healing() {
    let mut rng = rng(4242);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());

    // A first session, used for a while.
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    bob.receive(&mut rng, &a, &first).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 3);

    // Alice starts a second session (a new device bundle, a reset button):
    // Bob's first session is archived.
    alice.initiate(&mut rng, &bob);
    let second = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &second).unwrap();
    assert_eq!(bob.record.archived_states(), 1);
    let reply = bob.send(&mut rng, b"ack");
    alice.receive(&mut rng, &b, &reply).unwrap();

    // The phone is seized and its record copied.
    let copy = bob.record.to_bytes().to_vec();

    // The session heals: both sides take fresh DH steps.
    round_trip(&mut rng, &mut alice, &mut bob, 3);

    let (accepted, read) = attack(&mut rng, &copy, &alice, &mut bob);
    assert!(!read, "the attacker read Bob's next message");
    assert_eq!(accepted, 0, "Bob accepted a message built from a stolen state after the session healed");

    // The genuine session still works.
    round_trip(&mut rng, &mut alice, &mut bob, 1);
}

/// The same with Bob's own unanswered initiation archived (simultaneous
/// initiation): after the session healed, a "reply" built from the copied
/// initiator state is refused too.
#[test]
fn an_unanswered_initiation_from_a_stolen_record_cannot_be_answered_after_healing() {
    let mut rng = rng(4343);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());

    // Both initiate; Bob's initiation never reaches Alice.
    bob.initiate(&mut rng, &alice);
    let _lost = bob.send(&mut rng, b"never delivered");
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    bob.receive(&mut rng, &a, &first).unwrap();
    assert_eq!(bob.record.archived_states(), 1, "Bob's unanswered initiation is archived");

    let copy = bob.record.to_bytes().to_vec();

    // Bob replies on Alice's session and they talk: the session heals.
    let reply = bob.send(&mut rng, b"hi");
    alice.receive(&mut rng, &b, &reply).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 3);

    let (accepted, read) = attack(&mut rng, &copy, &alice, &mut bob);
    assert!(!read, "the attacker read Bob's next message");
    assert_eq!(accepted, 0, "Bob accepted a forged reply to a stolen initiator state after the session healed");
    round_trip(&mut rng, &mut alice, &mut bob, 1);
}

/// Messages in flight on an archived state when the session heals: their
/// skipped keys are kept (and only those), they decrypt without the state
/// becoming current again, the state is dropped once its last key is used,
/// and nothing else of it can be derived.
#[test]
fn kept_keys_decrypt_messages_in_flight_and_nothing_more() {
    let mut rng = rng(4444);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let a = alice.address.clone();

    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    bob.receive(&mut rng, &a, &first).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    // Three messages on the first session; Bob gets only the last (the
    // first two are skipped), then Alice's new session.
    let late: Vec<_> = (0..3).map(|i| alice.send(&mut rng, format!("late {i}").as_bytes())).collect();
    let after = alice.send(&mut rng, b"after the skipped ones");
    bob.receive(&mut rng, &a, &late[2]).unwrap();
    alice.initiate(&mut rng, &bob);
    let second = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &second).unwrap();
    assert_eq!(bob.record.kept_states(), 0);
    // Bob heals when a message from Alice makes his current state take a DH
    // step: the second round trip (the first starts on Alice's first chain).
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    assert_eq!(bob.record.kept_states(), 0);
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    // The heal cut the first session down to its two skipped keys.
    assert_eq!((bob.record.archived_states(), bob.record.kept_states()), (1, 1));
    let current = bob.record.current_base_key();

    // A message past what Bob derived is gone with the chain key.
    let before = bob.record.to_bytes();
    assert_eq!(bob.receive(&mut rng, &a, &after), Err(SessionError::Decrypt(DecryptError::NoMatchingState)));
    assert_eq!(*bob.record.to_bytes(), *before);
    // The kept keys decrypt the late messages, without promotion.
    assert_eq!(bob.receive(&mut rng, &a, &late[0]).unwrap(), b"late 0");
    assert_eq!(bob.record.current_base_key(), current);
    assert_eq!(bob.receive(&mut rng, &a, &late[0]), Err(SessionError::Decrypt(DecryptError::Duplicate { counter: 0 })));
    assert_eq!(bob.receive(&mut rng, &a, &late[1]).unwrap(), b"late 1");
    // Its last key used, the kept state is dropped.
    assert_eq!(bob.record.archived_states(), 0);
    assert_eq!(bob.receive(&mut rng, &a, &late[1]), Err(SessionError::Decrypt(DecryptError::NoMatchingState)));
    round_trip(&mut rng, &mut alice, &mut bob, 1);
}

/// Kept keys expire after `MAX_KEPT_STATE_HEALS` heals.
#[test]
fn kept_keys_expire_after_the_limit_of_heals() {
    let mut rng = rng(4545);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let a = alice.address.clone();
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    bob.receive(&mut rng, &a, &first).unwrap();
    let skipped = alice.send(&mut rng, b"skipped");
    let received = alice.send(&mut rng, b"received");
    bob.receive(&mut rng, &a, &received).unwrap();
    alice.initiate(&mut rng, &bob);
    let second = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &second).unwrap();
    // From the second round trip on, each is one heal on Bob's side.
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(bob.record.kept_states(), 1, "cut at the first heal");
    let limit = usize::try_from(samizdat::limits::MAX_KEPT_STATE_HEALS).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, limit - 1);
    assert_eq!(bob.record.kept_states(), 1, "kept {} heals after the cut", limit - 1);
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    assert_eq!(bob.record.kept_states(), 0, "dropped {limit} heals after the cut");
    // (It was sent before Alice heard back, so it carries the prekey header:
    // its state gone, its base key is still remembered.)
    assert_eq!(bob.receive(&mut rng, &a, &skipped), Err(SessionError::DuplicatePreKeyMessage));
}

/// A record with kept states round-trips exactly; stored states that break
/// the rules of kept states are refused.
#[test]
fn records_with_kept_states_serialize_and_are_checked_on_load() {
    let mut rng = rng(4646);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let a = alice.address.clone();
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    bob.receive(&mut rng, &a, &first).unwrap();
    let _skipped = alice.send(&mut rng, b"skipped");
    let received = alice.send(&mut rng, b"received");
    bob.receive(&mut rng, &a, &received).unwrap();
    alice.initiate(&mut rng, &bob);
    let second = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &second).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(bob.record.kept_states(), 1);
    let bytes = bob.record.to_bytes();
    assert_eq!(*SessionRecord::from_bytes(&bytes).unwrap().to_bytes(), *bytes);

    let record = storage::SessionRecord::decode(bytes.as_slice()).unwrap();
    let refused = |edit: &dyn Fn(&mut storage::SessionRecord)| {
        let mut bad = record.clone();
        edit(&mut bad);
        SessionRecord::from_bytes(&bad.encode_to_vec()).map(|_| ()).unwrap_err()
    };
    // A kept state cannot be current.
    refused(&|r| r.current = Some(r.archived[0].clone()));
    // A kept state has no root key and keeps at least one key.
    refused(&|r| r.archived[0].ratchet = r.current.as_ref().unwrap().ratchet.clone());
    refused(&|r| r.archived[0].kept.as_mut().unwrap().receiving.iter_mut().for_each(|c| c.skipped.clear()));
    // No kept chain has a chain key.
    refused(&|r| {
        let key = r.current.as_ref().unwrap().ratchet.as_ref().unwrap().root_key.clone();
        r.archived[0].kept.as_mut().unwrap().receiving.last_mut().unwrap().chain_key = key;
    });
    // It was cut at a heal that happened.
    refused(&|r| r.archived[0].kept_since = r.heals + 1);
    // Remembered counters: 12-byte entries, below the chain's counter, not skipped, once each.
    fn chain(r: &mut storage::SessionRecord) -> &mut storage::ReceivingChain {
        r.current.as_mut().unwrap().ratchet.as_mut().unwrap().receiving.last_mut().unwrap()
    }
    assert!(!chain(&mut record.clone()).used.is_empty());
    refused(&|r| chain(r).used.push(0));
    refused(&|r| {
        let c = chain(r);
        let n = c.counter;
        c.used.splice(0..4, n.to_be_bytes());
    });
    refused(&|r| {
        let c = chain(r);
        let entry = c.used[..12].to_vec();
        c.used.extend(entry);
    });
}

/// A pending decryption made on one record cannot be committed to another,
/// even one at the same generation.
#[test]
fn a_pending_decryption_of_another_record_is_refused() {
    let mut rng = rng(4747);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let mut carol = Party::new(&mut rng, "carol");
    let a = alice.address.clone();
    // Alice talks to Bob and to Carol with two records.
    alice.initiate(&mut rng, &bob);
    let to_bob = alice.send(&mut rng, b"to bob");
    let mut alice_carol = SessionRecord::new();
    alice_carol.initiate(&mut rng, &alice.identity, &alice.address, &carol.bundle()).unwrap();
    let to_carol = alice_carol.encrypt(&mut rng, b"to carol").unwrap();
    bob.receive(&mut rng, &a, &to_bob).unwrap();
    carol.receive(&mut rng, &a, &to_carol).unwrap();
    let m_bob = alice.send(&mut rng, b"second to bob");
    let m_carol = alice_carol.encrypt(&mut rng, b"second to carol").unwrap();
    let pending = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &m_bob).unwrap();
    let before = carol.record.to_bytes();
    assert_eq!(carol.record.commit(pending), Err(SessionError::StalePending));
    assert_eq!(*carol.record.to_bytes(), *before);
    assert_eq!(carol.receive(&mut rng, &a, &m_carol).unwrap(), b"second to carol");
}
