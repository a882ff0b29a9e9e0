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
        let mut prekeys = PreKeySet::new(rng, &identity, 1_000);
        prekeys.add_one_time_prekeys(rng, &identity, 20, 1_000).unwrap();
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
                    matches!(error, SessionError::Decrypt(DecryptError::Unauthenticated)),
                    "a forged message must be an opaque forgery, got {error:?}"
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
