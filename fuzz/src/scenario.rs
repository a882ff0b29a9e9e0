//! Sessions built deterministically (a seeded ChaCha20 generator) with
//! messages in flight towards Bob, for the `decrypt` target and its seed
//! corpus. The same code builds them in both, so the corpus holds the very
//! messages the target's states expect.

use chacha20::ChaCha20Rng;
use samizdat::{
    address::Address,
    keys::{IdentityKeyPair, X25519Secret},
    prekeys::{PreKeyBundle, PreKeySet},
    rand_core::{Rng, SeedableRng},
    ratchet::{DoubleRatchet, RatchetInit},
    session::SessionRecord,
    wire::RatchetMessage,
};
use std::time::{Duration, UNIX_EPOCH};

/// Bob's side of a session and what is in flight towards him.
pub struct Scenario {
    /// The messages Alice sent (every plaintext a decryption may give).
    pub sent: Vec<Vec<u8>>,
    /// The plaintexts Bob already decrypted (never again).
    pub delivered: Vec<Vec<u8>>,
    /// Wire bytes of messages not delivered yet, then of those delivered.
    pub in_flight: Vec<Vec<u8>>,
    /// See [`Self::in_flight`].
    pub replays: Vec<Vec<u8>>,
}

/// A Double Ratchet pair's state, at the ratchet layer alone.
pub struct RatchetScenario {
    /// Bob's serialized state.
    pub bob: Vec<u8>,
    /// What Alice sent.
    pub messages: Scenario,
}

/// Bob's session record and prekeys, at the session layer.
pub struct RecordScenario {
    /// Bob's serialized record of Alice.
    pub bob_record: Vec<u8>,
    /// Bob's prekey set.
    pub bob_prekeys: Vec<u8>,
    /// Bob's identity seed.
    pub bob_seed: [u8; 32],
    /// What Alice sent.
    pub messages: Scenario,
}

/// Alice's address.
pub fn alice() -> Address {
    Address::new("alice", 1).expect("a valid address")
}

/// Bob's address.
pub fn bob() -> Address {
    Address::new("bob", 1).expect("a valid address")
}

fn plaintext(label: &str, i: usize) -> Vec<u8> {
    format!("{label} {i}").into_bytes()
}

/// Alice and Bob at the ratchet layer: Bob has skipped keys on two chains, a
/// gap of 69 keys (past the 64 that make a refused message costly) and a
/// DH step in flight.
pub fn ratchet() -> RatchetScenario {
    let mut rng = ChaCha20Rng::from_seed([0x5e; 32]);
    let mut secret = || {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        bytes
    };
    let (rk, hka, hkb) = (secret(), secret(), secret());
    let mut rng = ChaCha20Rng::from_seed([0x5f; 32]);
    let ad = b"samizdat fuzz session";
    let init = || RatchetInit::new(rk, hka, hkb, ad).expect("a short associated data");
    let bob_key = X25519Secret::generate(&mut rng);
    let mut alice = DoubleRatchet::new_initiator(&mut rng, init(), &bob_key.public_key()).expect("a valid key");
    let mut bob = DoubleRatchet::new_responder(init(), bob_key);
    let mut sent = Vec::new();
    let mut send = |alice: &mut DoubleRatchet, rng: &mut ChaCha20Rng| {
        let text = plaintext("alice", sent.len());
        let message = alice.encrypt(rng, &text).expect("alice can send");
        sent.push(text);
        message
    };
    let chain1: Vec<RatchetMessage> = (0..6).map(|_| send(&mut alice, &mut rng)).collect();
    let mut delivered = Vec::new();
    for i in [0, 2, 5] {
        delivered.push(bob.decrypt(&mut rng, &chain1[i]).expect("in-order delivery"));
    }
    let replies: Vec<RatchetMessage> =
        (0..2).map(|i| bob.encrypt(&mut rng, &plaintext("bob", i)).expect("bob can send")).collect();
    alice.decrypt(&mut rng, &replies[1]).expect("alice takes the DH step");
    let chain2: Vec<RatchetMessage> = (0..72).map(|_| send(&mut alice, &mut rng)).collect();
    delivered.push(bob.decrypt(&mut rng, &chain2[1]).expect("bob takes the DH step"));
    let reply = bob.encrypt(&mut rng, &plaintext("bob", 2)).expect("bob can send");
    alice.decrypt(&mut rng, &reply).expect("alice takes a second DH step");
    let chain3: Vec<RatchetMessage> = (0..2).map(|_| send(&mut alice, &mut rng)).collect();
    let in_flight = [&chain1[1], &chain1[3], &chain1[4], &chain2[0], &chain2[2], &chain2[40], &chain2[71]]
        .into_iter()
        .chain(chain3.iter())
        .map(RatchetMessage::to_bytes)
        .collect();
    let replays = [&chain1[0], &chain1[2], &chain1[5], &chain2[1]].into_iter().map(RatchetMessage::to_bytes).collect();
    RatchetScenario { bob: bob.to_bytes().to_vec(), messages: Scenario { sent, delivered, in_flight, replays } }
}

/// Alice and Bob at the session layer: Alice's first session (prekey
/// messages, one of them delivered, then ratchet messages with a gap), and
/// two new sessions Alice started later (one from a bundle with one-time
/// prekeys, one from the last-resort key without a one-time X25519 prekey),
/// their prekey messages in flight.
pub fn record() -> RecordScenario {
    let mut rng = ChaCha20Rng::from_seed([0x6e; 32]);
    let alice_id = IdentityKeyPair::from_seed(&[0xa1; 32]);
    let bob_seed = [0xb0; 32];
    let bob_id = IdentityKeyPair::from_seed(&bob_seed);
    let mut bob_prekeys = PreKeySet::new(&mut rng, &bob_id, UNIX_EPOCH + Duration::from_secs(1_000));
    bob_prekeys
        .add_one_time_prekeys(&mut rng, &bob_id, 3, UNIX_EPOCH + Duration::from_secs(1_000))
        .expect("room for three");
    let bundle = |prekeys: &PreKeySet, n: usize| {
        let bundle = prekeys.bundle_skipping(&bob_id, &bob(), n).expect("a signed prekey");
        PreKeyBundle::from_bytes(&bundle.to_bytes()).expect("a valid bundle")
    };
    let mut alice_record = SessionRecord::new();
    let mut bob_record = SessionRecord::new();
    let mut sent = Vec::new();
    let mut send = |record: &mut SessionRecord, rng: &mut ChaCha20Rng| {
        let text = plaintext("alice", sent.len());
        let wire = record.encrypt(rng, &text).expect("alice can send");
        sent.push(text);
        wire
    };
    alice_record.initiate(&mut rng, &alice_id, &alice(), &bundle(&bob_prekeys, 0)).expect("a fresh record");
    let first: Vec<Vec<u8>> = (0..3).map(|_| send(&mut alice_record, &mut rng)).collect();
    let mut delivered = Vec::new();
    let mut receive = |record: &mut SessionRecord, prekeys: &mut PreKeySet, wire: &[u8], rng: &mut ChaCha20Rng| {
        let (text, consumed) =
            record.decrypt_and_commit(rng, &bob_id, &bob(), &alice(), prekeys, wire).expect("bob decrypts");
        prekeys.consume(&consumed);
        delivered.push(text);
    };
    receive(&mut bob_record, &mut bob_prekeys, &first[1], &mut rng);
    let reply = bob_record.encrypt(&mut rng, b"bob 0").expect("bob can answer");
    let alice_prekeys = PreKeySet::new(&mut rng, &alice_id, UNIX_EPOCH + Duration::from_secs(1_000));
    alice_record
        .decrypt_and_commit(&mut rng, &alice_id, &alice(), &bob(), &alice_prekeys, &reply)
        .expect("alice decrypts the answer");
    let ratchet: Vec<Vec<u8>> = (0..3).map(|_| send(&mut alice_record, &mut rng)).collect();
    receive(&mut bob_record, &mut bob_prekeys, &ratchet[1], &mut rng);
    alice_record.initiate(&mut rng, &alice_id, &alice(), &bundle(&bob_prekeys, 1)).expect("a second session");
    let second: Vec<Vec<u8>> = (0..2).map(|_| send(&mut alice_record, &mut rng)).collect();
    alice_record.initiate(&mut rng, &alice_id, &alice(), &bundle(&bob_prekeys, 10)).expect("a third session");
    let third = send(&mut alice_record, &mut rng);
    let in_flight = vec![
        first[0].clone(),
        first[2].clone(),
        ratchet[0].clone(),
        ratchet[2].clone(),
        second[0].clone(),
        second[1].clone(),
        third,
    ];
    let replays = vec![first[1].clone(), ratchet[1].clone()];
    RecordScenario {
        bob_record: bob_record.to_bytes().to_vec(),
        bob_prekeys: bob_prekeys.to_bytes().to_vec(),
        bob_seed,
        messages: Scenario { sent, delivered, in_flight, replays },
    }
}
