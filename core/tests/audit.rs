//! An outside audit of the defences built for issue 11: every attack tried,
//! as a test. Tests that pass pin a defence that held; a test that fails on
//! the audited code demonstrates an attack that worked (its message says
//! what the attacker gained).
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
use samizdat::store::StorageKey;
use samizdat::{
    DecryptError, SessionError,
    address::Address,
    ratchet::DoubleRatchet,
    session::SessionRecord,
    wire::{Message, RatchetMessage},
};
use samizdat_proto::storage;
use std::time::{Duration, UNIX_EPOCH};
use support::{
    party::{Party, impersonators, round_trip},
    rng,
};

// ---------------------------------------------------------------------------
// Parties at the session layer, and what an attacker does with a stolen record
// ---------------------------------------------------------------------------

/// The ratchet message inside wire bytes (a prekey message's too).
fn ratchet_of(wire: &[u8]) -> RatchetMessage {
    match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m,
        Message::PreKey(p) => p.message().clone(),
    }
}

/// The full states of a stolen record, as ratchets the attacker can run:
/// the current one first, then the archived ones.
fn stolen_ratchets(record: &[u8]) -> Vec<DoubleRatchet> {
    let record = storage::SessionRecord::decode(record).unwrap();
    record
        .current
        .iter()
        .chain(record.archived.iter())
        .filter_map(|state| state.ratchet.as_ref())
        .map(|ratchet| DoubleRatchet::from_bytes(&ratchet.encode_to_vec()).unwrap())
        .collect()
}

/// Forged messages "from the peer" built from a stolen record, other than
/// with its skipped keys: a DH step on every full state, and a continuation
/// of every receiving chain that still has its chain key (counters `Nr` and
/// `Nr + 3`, hazmat only). Each with a label.
fn forgeries(rng: &mut ChaCha20Rng, record: &[u8]) -> Vec<(String, RatchetMessage)> {
    let mut out = Vec::new();
    for (i, mut forger) in impersonators(rng, record).into_iter().enumerate() {
        out.push((format!("DH step on full state {i}"), forger.encrypt(rng, b"forged step").unwrap()));
    }
    #[cfg(feature = "hazmat")]
    out.extend(forge::continuations(rng, record));
    out
}

#[cfg(feature = "hazmat")]
mod forge {
    //! Messages sealed by hand from stolen chain keys (`samizdat::hazmat`).
    use chacha20::ChaCha20Rng;
    use prost::Message as _;
    use samizdat::{hazmat, wire::RatchetMessage};
    use samizdat_proto::storage;

    /// A message on a chain: chain key `ck` is the key of counter `from`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_chain(
        rng: &mut ChaCha20Rng,
        ad: &[u8],
        header_key: &[u8; 32],
        ratchet_key: &[u8; 32],
        previous_counter: u32,
        mut ck: [u8; 32],
        from: u32,
        counter: u32,
        plaintext: &[u8],
    ) -> RatchetMessage {
        for _ in from..counter {
            ck = hazmat::chain_step(&ck).1;
        }
        let seed = hazmat::chain_step(&ck).0;
        crate::support::attacker::seal(rng, ad, header_key, ratchet_key, previous_counter, &seed, counter, plaintext)
    }

    /// Continuations of every receiving chain with a chain key, in every
    /// full state of a stolen record.
    pub(crate) fn continuations(rng: &mut ChaCha20Rng, record: &[u8]) -> Vec<(String, RatchetMessage)> {
        let record = storage::SessionRecord::decode(record).unwrap();
        let mut out = Vec::new();
        for (s, state) in record.current.iter().chain(record.archived.iter()).enumerate() {
            let Some(ratchet) = state.ratchet.as_ref() else { continue };
            for chain in &ratchet.receiving {
                let Ok(ck) = <[u8; 32]>::try_from(chain.chain_key.as_slice()) else { continue };
                let hk: [u8; 32] = chain.header_key.as_slice().try_into().unwrap();
                let dh: [u8; 32] = chain.ratchet_key.as_slice().try_into().unwrap();
                for counter in [chain.counter, chain.counter + 3] {
                    let m = on_chain(rng, &ratchet.associated_data, &hk, &dh, 0, ck, chain.counter, counter, b"forged");
                    out.push((format!("continuation of state {s} at counter {counter}"), m));
                }
            }
        }
        out
    }
}

/// Tries every forgery of `copy` on `victim` (who receives from `from`):
/// returns the labels of those accepted. A refused one must change nothing.
fn accepted_forgeries(rng: &mut ChaCha20Rng, copy: &[u8], victim: &mut Party, from: &Address) -> Vec<String> {
    let mut accepted = Vec::new();
    for (label, forged) in forgeries(rng, copy) {
        let before = victim.record.to_bytes();
        match victim.receive(rng, from, &forged.to_bytes()) {
            Ok(_) => accepted.push(label),
            Err(_) => assert_eq!(*victim.record.to_bytes(), *before, "a refused forgery ({label}) changed the record"),
        }
    }
    accepted
}

/// Whether `bob` has healed since his archived states were last full: every
/// archived state is cut down to kept keys.
fn all_archived_kept(party: &Party) -> bool {
    party.record.archived_states() == party.record.kept_states()
}

// ---------------------------------------------------------------------------
// Claim 1: a copy made before the heal gets nothing accepted after it
// ---------------------------------------------------------------------------

/// Alice and Bob on a first session, a few round trips in.
fn talking(seed: u64) -> (ChaCha20Rng, Party, Party) {
    let mut rng = rng(seed);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    alice.initiate(&mut rng, &bob);
    let hello = alice.send(&mut rng, b"hello");
    let a = alice.address.clone();
    bob.receive(&mut rng, &a, &hello).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    (rng, alice, bob)
}

/// The session heals (round trips), then every forgery from `copy` is tried
/// on Bob: none may be accepted, and the genuine session goes on.
fn heal_then_attack(rng: &mut ChaCha20Rng, alice: &mut Party, bob: &mut Party, copy: &[u8], scenario: &str) {
    assert!(stolen_ratchets(copy).len() >= 2, "{scenario}: the copy holds an archived full state");
    // Control: on the record as copied, the forgeries work (the attack is real).
    let mut then = bob.with_record(copy);
    let accepted_then = accepted_forgeries(rng, copy, &mut then, &alice.address.clone());
    assert!(!accepted_then.is_empty(), "{scenario}: control: no forgery works even before the heal");
    round_trip(rng, alice, bob, 3);
    assert!(all_archived_kept(bob), "{scenario}: Bob healed");
    let a = alice.address.clone();
    let accepted = accepted_forgeries(rng, copy, bob, &a);
    assert!(
        accepted.is_empty(),
        "{scenario}: after the heal Bob accepted forgeries from a pre-heal copy: {accepted:?}"
    );
    round_trip(rng, alice, bob, 1);
}

/// Copies taken at every interesting point of a re-initiation by either
/// side, of simultaneous initiation, of crossing promotions, of eviction at
/// `MAX_ARCHIVED_STATES`, and around `trust_identity`: after Bob's current
/// state heals, nothing of any of them gets a message accepted.
#[test]
fn audit_1_pre_heal_copies_are_useless_after_the_heal() {
    // Alice re-initiates; the copy is taken before Bob replies.
    {
        let (mut rng, mut alice, mut bob) = talking(1001);
        alice.initiate(&mut rng, &bob);
        let p = alice.send(&mut rng, b"second session");
        bob.receive(&mut rng, &alice.address.clone(), &p).unwrap();
        let copy = bob.copy();
        heal_then_attack(&mut rng, &mut alice, &mut bob, &copy, "re-initiated by Alice");
    }
    // Bob re-initiates; copied while his initiation is unanswered.
    {
        let (mut rng, mut alice, mut bob) = talking(1002);
        bob.initiate(&mut rng, &alice);
        let p = bob.send(&mut rng, b"bob restarts");
        let copy = bob.copy();
        alice.receive(&mut rng, &bob.address.clone(), &p).unwrap();
        heal_then_attack(&mut rng, &mut alice, &mut bob, &copy, "re-initiated by Bob");
    }
    // Simultaneous initiation: copied once both prekey messages arrived.
    {
        let mut rng = rng(1003);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        bob.initiate(&mut rng, &alice);
        let from_alice = alice.send(&mut rng, b"hi bob");
        let from_bob = bob.send(&mut rng, b"hi alice");
        bob.receive(&mut rng, &a, &from_alice).unwrap();
        alice.receive(&mut rng, &b, &from_bob).unwrap();
        let copy = bob.copy();
        heal_then_attack(&mut rng, &mut alice, &mut bob, &copy, "simultaneous initiation");
    }
    // Crossing promotions (9.10's deadlock case): both promote the other's
    // initiation and send on it before hearing back; copied in the middle.
    {
        let mut rng = rng(1004);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        bob.initiate(&mut rng, &alice);
        let from_alice = alice.send(&mut rng, b"hi bob");
        let from_bob = bob.send(&mut rng, b"hi alice");
        bob.receive(&mut rng, &a, &from_alice).unwrap();
        alice.receive(&mut rng, &b, &from_bob).unwrap();
        // Each replies on its current (responder) state; each reply promotes
        // the receiver's initiator state.
        let reply_a = alice.send(&mut rng, b"reply from alice");
        let reply_b = bob.send(&mut rng, b"reply from bob");
        bob.receive(&mut rng, &a, &reply_a).unwrap();
        let copy = bob.copy();
        alice.receive(&mut rng, &b, &reply_b).unwrap();
        let crossing_a = alice.send(&mut rng, b"crossing from alice");
        let crossing_b = bob.send(&mut rng, b"crossing from bob");
        bob.receive(&mut rng, &a, &crossing_a).unwrap();
        alice.receive(&mut rng, &b, &crossing_b).unwrap();
        heal_then_attack(&mut rng, &mut alice, &mut bob, &copy, "crossing promotions");
    }
    // Ten re-initiations (MAX_ARCHIVED_STATES), copied, then more that evict.
    {
        let (mut rng, mut alice, mut bob) = talking(1005);
        let (a, b) = (alice.address.clone(), bob.address.clone());
        let mut copy = Vec::new();
        for i in 0..14 {
            if i % 2 == 0 {
                alice.initiate(&mut rng, &bob);
                let p = alice.send(&mut rng, b"again");
                bob.receive(&mut rng, &a, &p).unwrap();
            } else {
                bob.initiate(&mut rng, &alice);
                let p = bob.send(&mut rng, b"again");
                alice.receive(&mut rng, &b, &p).unwrap();
            }
            if i == 9 {
                assert_eq!(bob.record.archived_states(), samizdat::limits::MAX_ARCHIVED_STATES);
                copy = bob.copy();
            }
        }
        heal_then_attack(&mut rng, &mut alice, &mut bob, &copy, "eviction at MAX_ARCHIVED_STATES");
    }
    // trust_identity of the trusted key before the heal changes nothing.
    {
        let (mut rng, mut alice, mut bob) = talking(1006);
        alice.initiate(&mut rng, &bob);
        let p = alice.send(&mut rng, b"second session");
        bob.receive(&mut rng, &alice.address.clone(), &p).unwrap();
        let copy = bob.copy();
        bob.record.trust_identity(alice.identity.public_key());
        assert_eq!(stolen_ratchets(&bob.copy()).len(), 2, "trusting the trusted key dropped nothing");
        heal_then_attack(&mut rng, &mut alice, &mut bob, &copy, "trust_identity before the heal");
        bob.record.trust_identity(alice.identity.public_key());
        let accepted = accepted_forgeries(&mut rng, &copy, &mut bob, &alice.address.clone());
        assert!(accepted.is_empty(), "trust_identity after the heal brought back a state: {accepted:?}");
    }
}

/// An attacker who stepped an archived full state of Bob's before the heal
/// (from a copy; Bob promoted it and sent on it) loses it at the heal: its
/// next messages and those of the copy are refused, and Bob's next messages
/// are not readable with it.
#[test]
fn audit_1_an_archived_state_stepped_by_the_attacker_does_not_survive_the_heal() {
    let (mut rng, mut alice, mut bob) = talking(1101);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &p).unwrap();
    let copy = bob.copy();
    // The attacker steps the archived first session before the heal.
    let mut forger = impersonators(&mut rng, &copy).pop().unwrap();
    let forged = forger.encrypt(&mut rng, b"forged").unwrap();
    assert_eq!(bob.receive(&mut rng, &a, &forged.to_bytes()).unwrap(), b"forged", "control: before the heal");
    // Before the heal a copy is as good as the record: the first session was
    // displaced by Alice's new one, and a DH step on it brings it back
    // (PROTOCOL.md 9.10, rule 4), once.
    let leaked = bob.send(&mut rng, b"bob on the attacker's state");
    assert_eq!(forger.decrypt(&mut rng, &ratchet_of(&leaked)).unwrap(), b"bob on the attacker's state");
    // Alice's next message promotes her session back; the session heals.
    let genuine = alice.send(&mut rng, b"genuine");
    bob.receive(&mut rng, &a, &genuine).unwrap();
    let reply = bob.send(&mut rng, b"reply");
    alice.receive(&mut rng, &b, &reply).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert!(all_archived_kept(&bob));
    // The attacker's state, continued: refused.
    let before = bob.record.to_bytes();
    let next = forger.encrypt(&mut rng, b"still there?").unwrap();
    assert_eq!(
        bob.receive(&mut rng, &a, &next.to_bytes()),
        Err(SessionError::Decrypt(DecryptError::NoMatchingState)),
        "the attacker's stepped state survived the heal"
    );
    assert_eq!(*bob.record.to_bytes(), *before);
    let later = bob.send(&mut rng, b"after the heal");
    assert!(forger.decrypt(&mut rng, &ratchet_of(&later)).is_err());
    assert!(accepted_forgeries(&mut rng, &copy, &mut bob, &a).is_empty());
}

/// Found broken by the audit (archived full states could step and any
/// decryption promoted them), fixed by the rules of PROTOCOL.md 9.10: the
/// peer's side of attack 1. Bob's record is copied while it
/// holds an archived full state A whose twin is archived, full, in Alice's
/// record (their sessions crossed: Alice restarted while Bob was still
/// sending on A). Then both sides take DH steps with fresh keys on the new
/// session C, and Bob's current state heals (A is cut in Bob's record).
/// Alice's twin of A is cut only when *her current* state steps on Bob's
/// message; her step on C was a promotion, which is not a heal. From the
/// copy alone the attacker continues Bob's sending chain of A: Alice accepts,
/// promotes A and sends on it, readable with the copy. Injecting one more
/// message before each of Bob's genuine ones keeps Alice from ever healing,
/// round trip after round trip. PROTOCOL.md 16.2: "once each side has
/// completed a DH step with a ratchet key drawn after the compromise" the
/// attacker is out; 9.10/16.2: "once the current state has healed, no state
/// of an older copy of the record can be used to get a message accepted".
#[test]
fn audit_1_a_pre_heal_copy_of_bob_cannot_reenter_alices_archived_state_after_bob_healed() {
    let (mut rng, mut alice, mut bob) = talking(1201);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    // Bob sends on A while Alice restarts the session (C): the two cross.
    let on_a = bob.send(&mut rng, b"bob on A");
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"alice starts C");
    // Alice gets Bob's A message: her archived A decrypts it and is promoted.
    assert_eq!(alice.receive(&mut rng, &b, &on_a).unwrap(), b"bob on A");
    // Bob gets Alice's prekey message: C is current, A archived (full).
    bob.receive(&mut rng, &a, &p).unwrap();
    let copy = bob.copy();
    let mut stolen_a = stolen_ratchets(&copy).pop().unwrap();

    // Both sides take DH steps with keys drawn after the copy, on C.
    let c1 = bob.send(&mut rng, b"bob on C");
    assert_eq!(alice.receive(&mut rng, &b, &c1).unwrap(), b"bob on C"); // Alice's C steps (a promotion)
    let c2 = alice.send(&mut rng, b"alice on C");
    assert_eq!(bob.receive(&mut rng, &a, &c2).unwrap(), b"alice on C"); // Bob's current C steps: a heal
    assert!(all_archived_kept(&bob), "Bob healed: A is cut in his record");
    assert_eq!(alice.record.current_base_key(), bob.record.current_base_key(), "both on C");

    // From the copy alone: a message on Bob's sending chain of A; then, each
    // time, one more on the attacker's continuation of A, injected before
    // Bob's next genuine message reaches Alice. Genuine round trips on C go on.
    let mut leaked = Vec::new();
    for round in 0..4 {
        let forged = stolen_a.encrypt(&mut rng, format!("from the attacker, as Bob, {round}").as_bytes()).unwrap();
        if alice.receive(&mut rng, &b, &forged.to_bytes()).is_ok() {
            let secret = alice.send(&mut rng, format!("alice's secret {round}").as_bytes());
            if let Ok(p) = stolen_a.decrypt(&mut rng, &ratchet_of(&secret)) {
                leaked.push((round, String::from_utf8_lossy(&p).into_owned()));
            }
        }
        let r = bob.send(&mut rng, format!("bob {round}").as_bytes());
        assert_eq!(alice.receive(&mut rng, &b, &r).unwrap(), format!("bob {round}").as_bytes());
        let m = alice.send(&mut rng, format!("alice {round}").as_bytes());
        assert_eq!(bob.receive(&mut rng, &a, &m).unwrap(), format!("alice {round}").as_bytes());
    }
    assert!(
        leaked.is_empty(),
        "after Bob healed (and both sides stepped with fresh keys on C, round after round), Alice accepted \
         messages forged from Bob's pre-heal copy, switched to the copied session and the attacker read: {leaked:?}"
    );
}

/// Found broken by the audit (as above), fixed by the rules of PROTOCOL.md
/// 9.10: attack 1 without the heal ever coming. With a copy holding an
/// archived full state, the attacker injects one message on it (a DH step)
/// before each genuine message of Alice's. Each injection promotes the
/// attacker's state; each genuine message then promotes C back by a DH step
/// that is not a heal (only the *current* state's step is). Alice and Bob
/// see no failure, both take DH steps with fresh keys on C at every round
/// trip, and yet Bob's archived states are never cut (full archived states
/// have no age bound) and every other message of Bob's is readable by the
/// attacker, for as long as it keeps injecting. With a single state the same
/// attacker forks the session, and Alice's messages fail: here nothing shows.
#[test]
fn audit_1_an_active_attacker_with_a_copy_cannot_postpone_the_heal() {
    let (mut rng, mut alice, mut bob) = talking(1301);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &p).unwrap();
    let copy = bob.copy();
    let mut forger = impersonators(&mut rng, &copy).pop().unwrap();
    let mut leaked = Vec::new();
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        // The attacker's message first: Bob promotes its state and sends on it.
        let forged = forger.encrypt(&mut rng, format!("forged {round}").as_bytes()).unwrap();
        if bob.receive(&mut rng, &a, &forged.to_bytes()).is_ok() {
            let secret = bob.send(&mut rng, format!("bob's secret {round}").as_bytes());
            if let Ok(p) = forger.decrypt(&mut rng, &ratchet_of(&secret)) {
                leaked.push((round, String::from_utf8_lossy(&p).into_owned()));
            }
        }
        // Genuine round trip on C (both sides take a DH step with fresh keys).
        let m = alice.send(&mut rng, format!("alice {round}").as_bytes());
        assert_eq!(bob.receive(&mut rng, &a, &m).unwrap(), format!("alice {round}").as_bytes());
        let r = bob.send(&mut rng, format!("bob {round}").as_bytes());
        assert_eq!(alice.receive(&mut rng, &b, &r).unwrap(), format!("bob {round}").as_bytes());
    }
    // After a couple of genuine round trips the attacker must be out.
    let late: Vec<_> = leaked.iter().filter(|(round, _)| *round >= 2).collect();
    assert!(
        late.is_empty(),
        "after {ROUNDS} genuine round trips with fresh DH steps on both sides, Bob never healed ({} archived \
         states, {} kept) and the attacker still read: {late:?}",
        bob.record.archived_states(),
        bob.record.kept_states()
    );
}

// ---------------------------------------------------------------------------
// Claim 5: a pending decryption is bound to its record (session layer)
// ---------------------------------------------------------------------------

/// Found broken by the audit, fixed by binding a pending decryption to the
/// record object it was made on. PROTOCOL.md 9.6: "Two records (of two peers, or of two devices) can have
/// equal generations; the base key check binds a pending decryption to the
/// state it was made on ..., so one made on another record is refused too."
/// A first message makes a pending *new session* whose base key is "no
/// current state". Every record a peer has not talked to yet is empty at
/// generation 0, so a pending new session made on Bob's empty record for
/// Alice commits into Carol's empty record for Alice: Carol's record then
/// holds Bob's session (keys from Bob's identity and prekeys), and what
/// Carol sends Alice decrypts at Alice as Bob's.
#[test]
fn audit_5_a_pending_new_session_never_commits_into_another_empty_record() {
    let mut rng = rng(5001);
    let mut alice = Party::new(&mut rng, "alice");
    let bob = Party::new(&mut rng, "bob");
    let mut carol = Party::new(&mut rng, "carol");
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello bob");
    let pending =
        bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &first).unwrap();
    let before = carol.record.to_bytes();
    let result = carol.record.commit(pending);
    if result.is_ok() {
        // What it does: Carol now speaks on Bob's session with Alice.
        let from_carol = carol.send(&mut rng, b"written by carol");
        let at_alice = alice.receive(&mut rng, &bob.address.clone(), &from_carol);
        panic!(
            "Carol's empty record accepted a pending new session made on Bob's: Carol now holds Bob's session \
             keys, and her message decrypts at Alice as Bob's: {:?}",
            at_alice.map(|p| String::from_utf8_lossy(&p).into_owned())
        );
    }
    assert_eq!(result, Err(SessionError::StalePending));
    assert_eq!(*carol.record.to_bytes(), *before);
}

// ---------------------------------------------------------------------------
// Claim 3: a rolled-back sender never reuses a key and nonce; the receiver
// reports Rollback, and a replay is a Duplicate
// ---------------------------------------------------------------------------

/// The keystream of a message: its body XOR the padded plaintext (first 64
/// bytes: the smallest bucket, for short texts).
fn keystream(wire: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let body = ratchet_of(wire).body().to_vec();
    let mut padded = plaintext.to_vec();
    padded.push(0x80);
    padded.resize(64, 0);
    body.iter().zip(&padded).map(|(b, p)| b ^ p).collect()
}

/// A plaintext and the wire bytes it was sent as.
type Sent = (Vec<u8>, Vec<u8>);

/// Every (plaintext, wire) pair has its own keystream.
fn distinct_keystreams(sent: &[Sent]) {
    let mut seen = std::collections::HashMap::new();
    for (text, wire) in sent {
        if let Some(other) = seen.insert(keystream(wire, text), text.clone()) {
            panic!(
                "two plaintexts under one key and nonce: {:?} and {:?}",
                String::from_utf8_lossy(&other),
                String::from_utf8_lossy(text)
            );
        }
    }
}

fn rollback(counter: u32) -> Result<Vec<u8>, SessionError> {
    Err(SessionError::Decrypt(DecryptError::Rollback { counter }))
}

fn duplicate(counter: u32) -> Result<Vec<u8>, SessionError> {
    Err(SessionError::Decrypt(DecryptError::Duplicate { counter }))
}

/// Alice restored to a copy taken before she sent two messages and then
/// took a DH step: on the old chain, a used counter and one past the
/// chain's end are both `Rollback`, never decrypted, never a duplicate, and
/// no keystream repeats. Her restored state is on a closed chain: once Bob's
/// current state's chain moved on, it can never send on the session again
/// (its messages past PN are refused), which is what "session healing" must
/// repair.
#[test]
fn audit_3_rollback_across_a_dh_step() {
    let (mut rng, mut alice, mut bob) = talking(3001);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let snapshot = alice.copy();
    let mut sent = Vec::new();
    for text in [&b"original 0"[..], b"original 1"] {
        let wire = alice.send(&mut rng, text);
        assert_eq!(bob.receive(&mut rng, &a, &wire).unwrap(), text);
        sent.push((text.to_vec(), wire));
    }
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    let mut restored = alice.with_record(&snapshot);
    for (i, text) in [&b"restored 0"[..], b"restored 1", b"restored 2"].into_iter().enumerate() {
        let wire = restored.send(&mut rng, text);
        sent.push((text.to_vec(), wire.clone()));
        let before = bob.record.to_bytes();
        assert_eq!(bob.receive(&mut rng, &a, &wire), rollback(i as u32), "restored message {i}");
        assert_eq!(*bob.record.to_bytes(), *before);
    }
    distinct_keystreams(&sent);
    // The replays of the originals are duplicates.
    assert_eq!(bob.receive(&mut rng, &a, &sent[0].1), duplicate(0));
    assert_eq!(bob.receive(&mut rng, &a, &sent[1].1), duplicate(1));
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    let _ = b;
}

/// Alice restored to a copy taken before she sent her first (prekey)
/// messages: her prekey messages again, with other content, on the same
/// counters, go to the state they built and are `Rollback`: they never
/// build a second session, decrypt or count as duplicates; keystreams
/// differ. Once the responder state is gone from Bob's record, the same
/// messages are `DuplicatePreKeyMessage` (a rollback reported as a
/// duplicate: PROTOCOL.md 16.3 lists only the 128-counter bound and chains
/// no longer kept).
#[test]
fn audit_3_rollback_to_before_the_first_reply() {
    let mut rng = rng(3101);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let snapshot = alice.copy();
    let mut sent = Vec::new();
    for text in [&b"first 0"[..], b"first 1"] {
        let wire = alice.send(&mut rng, text);
        assert!(matches!(Message::from_bytes(&wire).unwrap(), Message::PreKey(_)));
        assert_eq!(bob.receive(&mut rng, &a, &wire).unwrap(), text);
        sent.push((text.to_vec(), wire));
    }
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    let mut restored = alice.with_record(&snapshot);
    let again: Vec<_> = [&b"again 0"[..], b"again 1", b"again 2"]
        .into_iter()
        .map(|text| (text.to_vec(), restored.send(&mut rng, text)))
        .collect();
    for (i, (_, wire)) in again.iter().enumerate() {
        assert!(matches!(Message::from_bytes(wire).unwrap(), Message::PreKey(_)));
        let before = bob.record.to_bytes();
        assert_eq!(bob.receive(&mut rng, &a, wire), rollback(i as u32), "restored prekey message {i}");
        assert_eq!(*bob.record.to_bytes(), *before);
    }
    sent.extend(again.iter().cloned());
    distinct_keystreams(&sent);

    // Bob's responder state goes (Alice restarts, Bob heals, the old state
    // had no skipped key so it is dropped): then the same messages.
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"new session");
    bob.receive(&mut rng, &a, &p).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(bob.record.archived_states(), 0);
    for (i, (_, wire)) in again.iter().enumerate() {
        assert_eq!(
            bob.receive(&mut rng, &a, wire),
            Err(SessionError::DuplicatePreKeyMessage),
            "restored prekey message {i} once its state is gone"
        );
    }
    let _ = b;
}

/// Bob (the receiver) restored: what he sends again on his restored
/// sending chain is `Rollback` at Alice with fresh keystreams. When the
/// restored Bob takes again a DH step he had taken (a redelivered message),
/// his new chain has another ratchet key under the same header key: Alice
/// reports `Unauthenticated` (4.6.1), not `Rollback`.
#[test]
fn audit_3_rollback_of_the_receiver() {
    let (mut rng, mut alice, mut bob) = talking(3201);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    // Bob has a sending chain; snapshot, then he sends two and gets a step.
    let m = alice.send(&mut rng, b"to bob");
    bob.receive(&mut rng, &a, &m).unwrap();
    let snapshot = bob.copy();
    let mut sent = Vec::new();
    for text in [&b"bob 0"[..], b"bob 1"] {
        let wire = bob.send(&mut rng, text);
        assert_eq!(alice.receive(&mut rng, &b, &wire).unwrap(), text);
        sent.push((text.to_vec(), wire));
    }
    let mut restored = bob.with_record(&snapshot);
    // The restored Bob decrypts again what he had decrypted: 16.3, by design.
    for (i, text) in [&b"bob again 0"[..], b"bob again 1", b"bob again 2"].into_iter().enumerate() {
        let wire = restored.send(&mut rng, text);
        sent.push((text.to_vec(), wire.clone()));
        let expected = if i < 2 { rollback(i as u32) } else { Ok(text.to_vec()) };
        assert_eq!(alice.receive(&mut rng, &b, &wire), expected, "restored Bob's message {i}");
    }
    distinct_keystreams(&sent);

    // Alice answers (a step); the restored copy is on a chain Alice's header
    // keys moved past, so Alice's message does not reach it; Bob's original
    // steps and replies. The restored copy given Alice's older message steps
    // again, with a new ratchet key, under the header key Bob used.
    let older = alice.send(&mut rng, b"alice answers");
    let mut restored2 = bob.with_record(&snapshot);
    bob.receive(&mut rng, &a, &older).unwrap();
    let reply = bob.send(&mut rng, b"bob's real reply");
    assert_eq!(alice.receive(&mut rng, &b, &reply).unwrap(), b"bob's real reply");
    restored2.receive(&mut rng, &a, &older).unwrap();
    let restepped = restored2.send(&mut rng, b"bob again, after stepping again");
    let result = alice.receive(&mut rng, &b, &restepped);
    assert!(
        matches!(result, Err(SessionError::Decrypt(DecryptError::Rollback { .. }))),
        "a sender that re-took a DH step: its header opens under the chain's key with another ratchet key, \
         its state went backwards (out of step, not a forgery): {result:?}"
    );
}

/// A replay of any decrypted message, with any body, is `Duplicate`, never
/// `Rollback`: on the current chain, a message decrypted with a skipped key,
/// the first message of a chain (a DH step), a closed chain, a kept state, a
/// prekey message. A header replayed with a bad body before its genuine
/// message arrives burns nothing.
#[test]
fn audit_3_a_replayed_header_with_another_body_is_a_duplicate() {
    let (mut rng, mut alice, mut bob) = talking(3301);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let with_body = |wire: &[u8], body: Vec<u8>| -> Vec<u8> {
        let m = ratchet_of(wire);
        let mut bytes = m.to_bytes();
        // Re-encode with the same header and another body of the same length.
        let header_at = bytes.windows(m.header().len()).position(|w| w == m.header()).unwrap();
        let body_at = bytes.windows(m.body().len()).position(|w| w == m.body()).unwrap();
        assert!(body_at > header_at);
        bytes[body_at..body_at + m.body().len()].copy_from_slice(&body);
        bytes
    };
    let flip = |wire: &[u8]| {
        let mut body = ratchet_of(wire).body().to_vec();
        body[0] ^= 1;
        body
    };

    // A header replayed early with a bad body: nothing burned. (It is a DH
    // step of Alice's: a body that does not open under the chain the step
    // gives may also be our ratchet key gone, so it is reported as opening
    // under no state, PROTOCOL.md 9.5.)
    let early = alice.send(&mut rng, b"early");
    let before = bob.record.to_bytes();
    assert_eq!(
        bob.receive(&mut rng, &a, &with_body(&early, flip(&early))),
        Err(SessionError::Decrypt(DecryptError::NoMatchingState))
    );
    assert_eq!(*bob.record.to_bytes(), *before);
    assert_eq!(bob.receive(&mut rng, &a, &early).unwrap(), b"early");

    // First message of a chain (Alice's DH step on Bob's next chain).
    let r = bob.send(&mut rng, b"r");
    alice.receive(&mut rng, &b, &r).unwrap();
    let step = alice.send(&mut rng, b"step");
    let skipped = alice.send(&mut rng, b"skipped");
    let in_order = alice.send(&mut rng, b"in order");
    bob.receive(&mut rng, &a, &step).unwrap();
    bob.receive(&mut rng, &a, &in_order).unwrap();
    bob.receive(&mut rng, &a, &skipped).unwrap();
    let mut replays = vec![("first of a chain", step.clone(), 0), ("current chain", in_order.clone(), 2)];
    replays.push(("decrypted with a skipped key", skipped.clone(), 1));
    // Close that chain: the same replays land on a closed chain.
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    for (what, wire, counter) in replays.iter().chain([("closed chain", step.clone(), 0)].iter()) {
        for body in [ratchet_of(wire).body().to_vec(), flip(wire), vec![0u8; ratchet_of(wire).body().len()]] {
            let before = bob.record.to_bytes();
            assert_eq!(bob.receive(&mut rng, &a, &with_body(wire, body)), duplicate(*counter), "{what}");
            assert_eq!(*bob.record.to_bytes(), *before);
        }
    }

    // A prekey message and a kept state: Alice restarts with a message in
    // flight on the old session; Bob heals; the late one decrypts with its
    // kept key; its replay is a duplicate.
    let late0 = alice.send(&mut rng, b"late 0");
    let late1 = alice.send(&mut rng, b"late 1");
    let after = alice.send(&mut rng, b"after");
    bob.receive(&mut rng, &a, &after).unwrap();
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"prekey");
    bob.receive(&mut rng, &a, &p).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(bob.record.kept_states(), 1);
    assert_eq!(bob.receive(&mut rng, &a, &late0).unwrap(), b"late 0");
    assert_eq!(bob.record.kept_states(), 1);
    for body in [flip(&late0), ratchet_of(&late0).body().to_vec()] {
        let before = bob.record.to_bytes();
        assert_eq!(bob.receive(&mut rng, &a, &with_body(&late0, body)), duplicate(0), "kept state");
        assert_eq!(*bob.record.to_bytes(), *before);
    }
    assert_eq!(bob.receive(&mut rng, &a, &late1).unwrap(), b"late 1");
    assert_eq!(bob.record.kept_states(), 0, "its last kept key used");
    for body in [flip(&p), ratchet_of(&p).body().to_vec()] {
        assert_eq!(bob.receive(&mut rng, &a, &with_body(&p, body)), duplicate(0), "prekey message");
    }
}

/// Rollback detection within and past the 128 remembered counters
/// (`MAX_USED_COUNTERS`, a documented bound, 16.3), and on a kept state:
/// a restored sender's message on a remembered counter is `Rollback`; on a
/// counter whose tag was evicted it is `Duplicate` (the app drops it: a
/// message lost without a trace, as documented); on a kept chain that is not
/// the newest, past its end, `Rollback`.
#[test]
fn audit_3_rollback_within_and_past_the_remembered_counters_and_on_kept_states() {
    let (mut rng, mut alice, mut bob) = talking(3401);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let r = bob.send(&mut rng, b"r");
    alice.receive(&mut rng, &b, &r).unwrap();
    let snapshot = alice.copy();
    let total = samizdat::limits::MAX_USED_COUNTERS as u32 + 20;
    for i in 0..total {
        let wire = alice.send(&mut rng, format!("original {i}").as_bytes());
        bob.receive(&mut rng, &a, &wire).unwrap();
    }
    let mut restored = alice.with_record(&snapshot);
    let mut results = Vec::new();
    for i in 0..total {
        let wire = restored.send(&mut rng, format!("restored {i}").as_bytes());
        results.push(bob.receive(&mut rng, &a, &wire));
    }
    let evicted = total - samizdat::limits::MAX_USED_COUNTERS as u32;
    for (i, result) in results.iter().enumerate() {
        let i = i as u32;
        let expected = if i < evicted { duplicate(i) } else { rollback(i) };
        assert_eq!(*result, expected, "restored message {i}");
    }

    // Kept state: Alice (restored to before a step on the first session)
    // sends past the end of a closed, non-newest chain of Bob's kept state.
    let (mut rng, mut alice, mut bob) = talking(3402);
    let m0 = alice.send(&mut rng, b"m0");
    let _lost = alice.send(&mut rng, b"lost, skipped at Bob");
    let m2 = alice.send(&mut rng, b"m2");
    bob.receive(&mut rng, &a, &m0).unwrap();
    bob.receive(&mut rng, &a, &m2).unwrap();
    let snapshot = alice.copy();
    round_trip(&mut rng, &mut alice, &mut bob, 1); // closes that chain at Bob (PN = 3)
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &p).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(bob.record.kept_states(), 1, "the first session cut to its one skipped key");
    let mut restored = alice.with_record(&snapshot);
    let past_end = restored.send(&mut rng, b"restored, counter 3");
    let before = bob.record.to_bytes();
    assert_eq!(bob.receive(&mut rng, &a, &past_end), rollback(3));
    assert_eq!(*bob.record.to_bytes(), *before);
}

// ---------------------------------------------------------------------------
// Claim 6: stored records with the new fields never make the loader (or a
// later call) panic; a failed call changes nothing
// ---------------------------------------------------------------------------

/// A record with everything the new fields describe: a current initiator
/// state with its prekey header, an archived full state, a kept state with
/// skipped keys and used counters, `heals > 0`, remembered base keys; and
/// messages of every kind Alice can send it.
fn rich_record() -> (ChaCha20Rng, Party, Party, Vec<Vec<u8>>) {
    let (mut rng, mut alice, mut bob) = talking(6001);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let late: Vec<_> = (0..3).map(|i| alice.send(&mut rng, format!("late {i}").as_bytes())).collect();
    let after = alice.send(&mut rng, b"after");
    bob.receive(&mut rng, &a, &after).unwrap();
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &p).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 3);
    let in_order = alice.send(&mut rng, b"in order");
    let skip = alice.send(&mut rng, b"skip");
    let _ = alice.send(&mut rng, b"gap");
    let ahead = alice.send(&mut rng, b"ahead");
    bob.receive(&mut rng, &a, &ahead).unwrap();
    bob.initiate(&mut rng, &alice);
    let record = storage::SessionRecord::decode(bob.copy().as_slice()).unwrap();
    assert!(record.heals > 0 && record.current.as_ref().unwrap().pending_prekey.is_some());
    assert!(record.archived.iter().any(|s| s.kept.is_some()) && record.archived.iter().any(|s| s.ratchet.is_some()));
    let mut messages = late;
    messages.extend([in_order, skip, p, after]);
    let _ = b;
    (rng, alice, bob, messages)
}

/// Runs the calls of a record on `record` (one loaded from mutated bytes):
/// none may panic, and each that fails must leave the record as it was.
fn exercise(rng: &mut ChaCha20Rng, bob: &Party, record: SessionRecord, alice: &Party, messages: &[Vec<u8>]) {
    let mut bob = Party { record, ..bob.with_record(&SessionRecord::new().to_bytes()) };
    let reloaded = SessionRecord::from_bytes(&bob.record.to_bytes());
    assert!(reloaded.is_ok(), "a record that loads must load again after saving: {reloaded:?}");
    for wire in messages {
        let before = bob.record.to_bytes();
        if bob.receive(rng, &alice.address, wire).is_err() {
            assert_eq!(*bob.record.to_bytes(), *before, "a failed decryption changed the record");
        }
    }
    let before = bob.record.to_bytes();
    if bob.record.encrypt(rng, b"x").is_err() {
        assert_eq!(*bob.record.to_bytes(), *before, "a failed encryption changed the record");
    }
    bob.record.trust_identity(alice.identity.public_key());
    let _ = SessionRecord::from_bytes(&bob.record.to_bytes()).unwrap();
}

#[test]
fn audit_6_mutated_records_are_typed_errors_never_panics() {
    let (mut rng, alice, bob, messages) = rich_record();
    let bytes = bob.copy();
    let proto = storage::SessionRecord::decode(bytes.as_slice()).unwrap();
    let mut loaded = 0usize;
    let mut refused = 0usize;
    let mut check = |rng: &mut ChaCha20Rng, input: &[u8], what: &str| {
        let result = std::panic::catch_unwind(|| SessionRecord::from_bytes(input));
        let Ok(result) = result else { panic!("SessionRecord::from_bytes panicked on {what}") };
        match result {
            Ok(record) => {
                loaded += 1;
                let mut inner = support::rng(loaded as u64);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    exercise(&mut inner, &bob, record, &alice, &messages)
                }));
                if let Err(e) = outcome {
                    let message = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    panic!("a record loaded from {what} broke a later call: {message}");
                }
            }
            Err(_) => refused += 1,
        }
        let _ = rng;
    };

    // Byte flips, truncations, and the bytes of one state moved around.
    for i in 0..bytes.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut m = bytes.clone();
            m[i] ^= x;
            check(&mut rng, &m, &format!("byte {i} ^ {x:#04x}"));
        }
    }
    for len in (0..bytes.len()).step_by(7) {
        check(&mut rng, &bytes[..len], &format!("truncated to {len}"));
    }

    // Field-level edits of the new fields (and neighbours).
    type Edit = Box<dyn Fn(&mut storage::SessionRecord)>;
    fn kept(r: &mut storage::SessionRecord) -> &mut storage::SessionState {
        r.archived.iter_mut().find(|s| s.kept.is_some()).unwrap()
    }
    fn full(r: &mut storage::SessionRecord) -> &mut storage::SessionState {
        r.archived.iter_mut().find(|s| s.ratchet.is_some()).unwrap()
    }
    fn kept_chains(r: &mut storage::SessionRecord) -> &mut Vec<storage::ReceivingChain> {
        &mut kept(r).kept.as_mut().unwrap().receiving
    }
    let edits: Vec<(&str, Edit)> = vec![
        ("heals = 0", Box::new(|r| r.heals = 0)),
        ("heals = u64::MAX", Box::new(|r| r.heals = u64::MAX)),
        (
            "heals and kept_since = u64::MAX",
            Box::new(|r| {
                r.heals = u64::MAX;
                kept(r).kept_since = u64::MAX;
            }),
        ),
        ("kept_since = heals + 1", Box::new(|r| kept(r).kept_since = r.heals + 1)),
        ("kept_since = 0", Box::new(|r| kept(r).kept_since = 0)),
        ("generation = u64::MAX", Box::new(|r| r.generation = u64::MAX)),
        ("kept_since on a full state", Box::new(|r| full(r).kept_since = 1)),
        (
            "kept and ratchet",
            Box::new(|r| {
                let k = kept(r).kept.clone();
                full(r).kept = k;
            }),
        ),
        ("neither kept nor ratchet", Box::new(|r| kept(r).kept = None)),
        ("kept as current", Box::new(|r| r.current = Some(kept(r).clone()))),
        (
            "kept with a prekey header",
            Box::new(|r| {
                let h = r.current.as_ref().unwrap().pending_prekey.clone();
                kept(r).pending_prekey = h;
                kept(r).initiator = true;
            }),
        ),
        ("kept chain with a chain key", Box::new(|r| kept_chains(r).last_mut().unwrap().chain_key = vec![7; 32])),
        ("kept chain with a short chain key", Box::new(|r| kept_chains(r)[0].chain_key = vec![7; 31])),
        ("kept without skipped keys", Box::new(|r| kept_chains(r).iter_mut().for_each(|c| c.skipped.clear()))),
        (
            "kept with six chains",
            Box::new(|r| {
                let c = kept_chains(r)[0].clone();
                while kept_chains(r).len() < 6 {
                    kept_chains(r).push(c.clone());
                }
            }),
        ),
        ("kept chains reversed", Box::new(|r| kept_chains(r).reverse())),
        ("kept AD too long", Box::new(|r| kept(r).kept.as_mut().unwrap().associated_data = vec![1; 1025])),
        (
            "kept chain at u32::MAX",
            Box::new(|r| {
                let c = kept_chains(r).last_mut().unwrap();
                c.counter = u32::MAX;
                for (i, k) in c.skipped.iter_mut().enumerate() {
                    k.counter = u32::MAX - 10 + i as u32;
                }
                c.used = [(u32::MAX - 1).to_be_bytes().to_vec(), vec![9; 8]].concat();
            }),
        ),
        (
            "used entry at the chain's counter",
            Box::new(|r| {
                let c = kept_chains(r).last_mut().unwrap();
                c.used = [c.counter.to_be_bytes().to_vec(), vec![9; 8]].concat();
            }),
        ),
        (
            "used entry on a skipped counter",
            Box::new(|r| {
                let c = kept_chains(r).iter_mut().find(|c| !c.skipped.is_empty()).unwrap();
                c.used = [c.skipped[0].counter.to_be_bytes().to_vec(), vec![9; 8]].concat();
            }),
        ),
        ("used of 11 bytes", Box::new(|r| kept_chains(r)[0].used = vec![0; 11])),
        (
            "used entry twice",
            Box::new(|r| {
                let c = kept_chains(r).iter_mut().find(|c| c.used.len() >= 12).unwrap();
                let e = c.used[..12].to_vec();
                c.used.extend(e);
            }),
        ),
        (
            "129 used counters",
            Box::new(|r| {
                let c = kept_chains(r).last_mut().unwrap();
                c.counter = 10_000;
                c.used = (1_000u32..1_129).flat_map(|n| [n.to_be_bytes().to_vec(), vec![1; 8]].concat()).collect();
            }),
        ),
        (
            "128 used counters in the kept state and more in the current",
            Box::new(|r| {
                let c = kept_chains(r).last_mut().unwrap();
                c.counter = 10_000;
                c.used = (1_000u32..1_128).flat_map(|n| [n.to_be_bytes().to_vec(), vec![1; 8]].concat()).collect();
            }),
        ),
        (
            "eleven archived",
            Box::new(|r| {
                let s = r.archived[0].clone();
                while r.archived.len() < 11 {
                    r.archived.push(s.clone());
                }
            }),
        ),
        (
            "ten archived kept states",
            Box::new(|r| {
                let s = kept(r).clone();
                r.archived = vec![s; 10];
            }),
        ),
        ("archived reversed", Box::new(|r| r.archived.reverse())),
        ("no current", Box::new(|r| r.current = None)),
        (
            "no current, no archived",
            Box::new(|r| {
                r.current = None;
                r.archived.clear();
            }),
        ),
        (
            "kept state with the current's base key",
            Box::new(|r| {
                let k = r.current.as_ref().unwrap().base_key.clone();
                kept(r).base_key = k;
            }),
        ),
        (
            "full archived state with the current's base key",
            Box::new(|r| {
                let k = r.current.as_ref().unwrap().base_key.clone();
                full(r).base_key = k;
            }),
        ),
        ("skipped keys out of order", Box::new(|r| kept_chains(r).iter_mut().for_each(|c| c.skipped.reverse()))),
        (
            "a short skipped seed",
            Box::new(|r| {
                kept_chains(r)
                    .iter_mut()
                    .filter(|c| !c.skipped.is_empty())
                    .for_each(|c| c.skipped[0].seed.pop().map(drop).unwrap_or(()))
            }),
        ),
        ("unknown identity in a kept state", Box::new(|r| kept(r).remote_identity = vec![3; 32])),
        ("trusted identity of 31 bytes", Box::new(|r| r.trusted_identity = vec![3; 31])),
    ];
    for (what, edit) in &edits {
        let mut r = proto.clone();
        edit(&mut r);
        check(&mut rng, &r.encode_to_vec(), what);
    }

    // Protobuf-level: the fields of the record (and of a kept state) emitted
    // again, in reverse, or twice (repeated fields then repeat, messages merge).
    let fields = |r: &storage::SessionRecord| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut one = |f: &dyn Fn(&mut storage::SessionRecord)| {
            let mut x = storage::SessionRecord::default();
            f(&mut x);
            out.push(x.encode_to_vec());
        };
        one(&|x| x.version = r.version);
        one(&|x| x.trusted_identity = r.trusted_identity.clone());
        one(&|x| x.current = r.current.clone());
        for s in &r.archived {
            one(&|x| x.archived = vec![s.clone()]);
        }
        one(&|x| x.seen_base_keys = r.seen_base_keys.clone());
        one(&|x| x.generation = r.generation);
        one(&|x| x.heals = r.heals);
        out
    };
    let parts = fields(&proto);
    check(&mut rng, &parts.iter().rev().flatten().copied().collect::<Vec<_>>(), "fields reversed");
    check(&mut rng, &parts.iter().chain(parts.iter()).flatten().copied().collect::<Vec<_>>(), "fields twice");
    for i in 0..parts.len() {
        let mut twice = parts.clone();
        twice.insert(i, parts[i].clone());
        check(&mut rng, &twice.concat(), &format!("field {i} twice"));
    }
    assert!(loaded > 0 && refused > 0, "loaded {loaded}, refused {refused}");
    eprintln!("mutated records: {loaded} loaded and exercised, {refused} refused");
}

// ---------------------------------------------------------------------------
// Claim 2: no superseded sealed row survives in the SQLite files
// ---------------------------------------------------------------------------

mod at_rest {
    use std::{
        collections::{BTreeMap, HashMap, HashSet},
        path::{Path, PathBuf},
    };

    pub(crate) const WINDOW: usize = 32;
    /// Windows of each value are taken every `STRIDE` bytes: any surviving
    /// fragment of `WINDOW + STRIDE` bytes or more is found.
    pub(crate) const STRIDE: usize = 16;

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("samizdat-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The database files in `dir` (`*.db`, `-wal`, `-shm`, `-journal`).
    pub(crate) fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                ["db", "db-wal", "db-shm", "db-journal"].iter().any(|x| n.ends_with(&format!(".{x}")))
            })
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    }

    /// For each value that has a fragment in the files: its index, and where.
    pub(crate) fn found(files: &[(String, Vec<u8>)], values: &[&Vec<u8>]) -> BTreeMap<usize, HashSet<String>> {
        let mut needles: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, v) in values.iter().enumerate() {
            let mut at = 0;
            while at + WINDOW <= v.len() {
                needles.entry(&v[at..at + WINDOW]).or_default().push(i);
                at += STRIDE;
            }
        }
        let mut out: BTreeMap<usize, HashSet<String>> = BTreeMap::new();
        for (name, bytes) in files {
            for w in bytes.windows(WINDOW) {
                if let Some(owners) = needles.get(w) {
                    for &i in owners {
                        out.entry(i).or_default().insert(name.clone());
                    }
                }
            }
        }
        out
    }

    /// Every version of every row, as seen, and the rows seen deleted (all
    /// of whose versions are superseded).
    #[derive(Default)]
    pub(crate) struct Versions {
        pub(crate) rows: BTreeMap<(String, Vec<u8>), Vec<Vec<u8>>>,
        pub(crate) gone: std::collections::BTreeSet<(String, Vec<u8>)>,
    }

    impl Versions {
        pub(crate) fn see(&mut self, table: &str, key: &[u8], value: &[u8]) {
            let id = (table.to_owned(), key.to_vec());
            self.gone.remove(&id);
            let v = self.rows.entry(id).or_default();
            if v.last().map(Vec::as_slice) != Some(value) {
                v.push(value.to_vec());
            }
        }

        /// Marks every row of `table` that is not in `present` as deleted.
        pub(crate) fn keep_only(&mut self, table: &str, present: &std::collections::BTreeSet<Vec<u8>>) {
            for (t, key) in self.rows.keys() {
                if t == table && !present.contains(key) {
                    self.gone.insert((t.clone(), key.clone()));
                }
            }
        }

        pub(crate) fn split(&self) -> (Vec<&Vec<u8>>, Vec<&Vec<u8>>) {
            let (mut current, mut superseded) = (Vec::new(), Vec::new());
            for (id, v) in &self.rows {
                if self.gone.contains(id) {
                    superseded.extend(v);
                    continue;
                }
                let (last, older) = v.split_last().unwrap();
                current.push(last);
                superseded.extend(older);
            }
            (current, superseded)
        }

        /// How many superseded values have a fragment in the files of `dir`.
        pub(crate) fn stale(&self, dir: &Path) -> usize {
            found(&files(dir), &self.split().1).len()
        }

        /// Panics if a superseded value has a fragment in the files of `dir`
        /// (and checks, as a control, that every current value is found).
        pub(crate) fn check(&self, dir: &Path, when: &str) {
            let files = files(dir);
            let (current, superseded) = self.split();
            let seen = found(&files, &current);
            assert_eq!(seen.len(), current.len(), "{when}: control: current values not all found");
            let stale = found(&files, &superseded);
            let mut per_file: BTreeMap<String, usize> = BTreeMap::new();
            for names in stale.values() {
                for n in names {
                    *per_file.entry(n.clone()).or_default() += 1;
                }
            }
            assert!(
                stale.is_empty(),
                "{when}: {} of {} superseded sealed values have a fragment of at least {} bytes in the files \
                 (values per file: {per_file:?})",
                stale.len(),
                superseded.len(),
                WINDOW + STRIDE
            );
        }
    }
}

/// Found broken: the store's own SQLite settings, many rows. A device with
/// many peers (session rows of a few hundred bytes to a few KiB, rewritten in
/// any order, new peers added) makes SQLite split, merge and rebuild b-tree
/// pages, which the three-device conversation of `at_rest.rs` (two session
/// rows per store: a single leaf page) never does. `secure_delete` zeroes
/// freed cells and pages, but a page rebuilt by a rebalance (`rebuildPage`
/// in SQLite 3.54, unlike `defragmentPage`) does not zero its unallocated
/// gap, which keeps a copy of cells that moved; when such a row is rewritten
/// later, the copy survives it (before the fix: after write 399, a
/// superseded value in `store.db`).
///
/// The fix is a scrub: `VACUUM` (a new database built in memory and copied
/// back page by page) and a truncating checkpoint. It runs when the store is
/// opened, after the commit that takes a handle's bytes written past its
/// budget (`MIN_SCRUB_BUDGET`, or the database's size if larger), and on
/// demand (`Backend::scrub`). The window, exactly: between two scrubs a
/// fragment of a superseded value may survive in the database file (this
/// schedule leaves some, counted before each scrub: if none were ever seen,
/// the schedule would no longer exercise page rebuilds and the test would
/// prove nothing); right after a scrub none does, whether it ran by itself
/// after the budget, on demand, or on opening the store again.
#[test]
fn audit_2_a_scrub_leaves_no_superseded_row_in_the_database_file() {
    use rand_core::Rng;
    use samizdat::{
        limits::MIN_SCRUB_BUDGET,
        store::{Backend, Expected, Scrub, SqliteBackend, Table, Write},
    };
    let dir = at_rest::temp_dir("many-rows");
    let path = dir.join("store.db");
    let mut versions = at_rest::Versions::default();
    let mut rng = rng(2001);
    let mut rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut write = |db: &SqliteBackend, versions: &mut at_rest::Versions, step: u32| -> u64 {
        if rows.len() < 80 && (rows.is_empty() || step.is_multiple_of(10)) {
            let mut key = vec![0u8; 32];
            rng.fill_bytes(&mut key);
            rows.push((key, None));
        }
        let i = (rng.next_u32() as usize) % rows.len();
        let len = 300 + (rng.next_u32() as usize) % 5_000;
        let mut value = vec![0u8; len];
        rng.fill_bytes(&mut value);
        let (key, old) = &mut rows[i];
        db.apply(&[Write {
            table: Table::Sessions,
            key: key.clone(),
            value: Some(value.clone()),
            expected: Expected::read(old.clone()),
        }])
        .unwrap();
        versions.see("sessions", key, &value);
        *old = Some(value);
        (key.len() + len) as u64
    };
    let mut seen_between_scrubs = Vec::new();
    {
        let db = SqliteBackend::open(&path).unwrap();
        // No scrub on demand: the handle scrubs by itself after the commit
        // that takes its bytes written since it was opened past the budget
        // (the minimum: the database stays smaller).
        let mut written = 0;
        let mut automatic = None;
        for step in 0..600u32 {
            written += write(&db, &mut versions, step);
            if written > MIN_SCRUB_BUDGET && automatic.is_none() {
                assert!(std::fs::metadata(&path).unwrap().len() < MIN_SCRUB_BUDGET);
                automatic = Some(step);
                versions.check(&dir, &format!("right after write {step}, which took the handle past its budget"));
            } else if step % 50 == 49 {
                seen_between_scrubs.push(versions.stale(&dir));
            }
        }
        assert!(automatic.is_some(), "the schedule writes more than the budget");
        // Scrubs on demand, every 100 writes.
        for step in 600..1_200u32 {
            write(&db, &mut versions, step);
            if step % 100 == 99 {
                seen_between_scrubs.push(versions.stale(&dir));
                assert_eq!(db.scrub().unwrap(), Scrub::Done);
                versions.check(&dir, &format!("scrubbed after write {step}"));
            }
        }
        // Writes after the last scrub: the store is closed with them.
        for step in 1_200..1_300u32 {
            write(&db, &mut versions, step);
        }
    }
    seen_between_scrubs.push(versions.stale(&dir));
    // Opening the store scrubs it.
    drop(SqliteBackend::open(&path).unwrap());
    versions.check(&dir, "reopened and closed");
    assert!(
        seen_between_scrubs.iter().any(|&n| n > 0),
        "no fragment was ever found between scrubs ({seen_between_scrubs:?}): the schedule no longer makes SQLite \
         rebuild pages, or SQLite now zeroes them (then PROTOCOL.md 16.6 can say so)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Found broken: the same at the device level: Bob on SQLite with 100 peers
/// (one session row each) and ordinary traffic (some messages lost, so rows
/// grow and shrink). A fragment found is opened with the storage key (a
/// seized, unlocked phone) to show what comes back: before the fix, after
/// 400 steps, the first 367 bytes of a superseded session row, which gave
/// back that state's root key, ratchet secret, sending chain key and header
/// key. Now a phone seized right after `Device::scrub` (every 100 steps
/// here), or after the store was closed and opened again, gives back nothing
/// superseded; between scrubs it may (counted, and printed).
#[test]
fn audit_2_a_device_with_many_peers_keeps_no_old_root_key_after_a_scrub() {
    use rand_core::Rng;
    use samizdat::{device::Device, store::MemoryBackend, store::Scrub};
    const STORAGE_KEY: StorageKey = StorageKey::from_bytes([0x5a; 32]);
    let (peer_count, steps) = (100, 1_000);
    let dir = at_rest::temp_dir("many-peers");
    let mut versions = at_rest::Versions::default();
    let mut rng = rng(22);
    let mut leaks_between_scrubs = Vec::new();
    {
        let bob =
            Device::create(dir.join("bob.db"), &STORAGE_KEY, Address::new("bob", 1).unwrap(), UNIX_EPOCH).unwrap();
        bob.refill_prekeys(10, 10, UNIX_EPOCH).unwrap();
        let peers: Vec<Device<MemoryBackend>> = (0..peer_count)
            .map(|i| {
                let key = [i as u8 + 1; 32];
                Device::create_in(
                    MemoryBackend::new(),
                    &StorageKey::from_bytes(key),
                    Address::new(format!("peer{i}"), 1).unwrap(),
                    UNIX_EPOCH,
                )
                .unwrap()
            })
            .collect();
        let mut started = vec![false; peer_count];
        for step in 0..steps {
            let i = (rng.next_u32() as usize) % peer_count;
            let peer = &peers[i];
            if !started[i] || rng.next_u32().is_multiple_of(2) {
                if !started[i] {
                    peer.start_session(&bob.prekey_bundle().unwrap()).unwrap();
                    started[i] = true;
                }
                // Sometimes a burst of which only the last arrives (skipped
                // keys make the rows grow and shrink).
                let burst = if rng.next_u32().is_multiple_of(4) { 1 + rng.next_u32() % 12 } else { 1 };
                let mut wire = Vec::new();
                for _ in 0..burst {
                    wire = peer.encrypt(bob.address(), format!("to bob {step}").as_bytes()).unwrap();
                }
                let pending = bob.decrypt(peer.address(), &wire).unwrap();
                bob.commit(pending).unwrap();
            } else {
                let wire = bob.encrypt(peer.address(), format!("from bob {step}").as_bytes()).unwrap();
                let pending = peer.decrypt(bob.address(), &wire).unwrap();
                peer.commit(pending).unwrap();
            }
            see_store(&mut versions, &bob);
            if step % 100 == 50 {
                bob.refill_prekeys(10, 10, UNIX_EPOCH).unwrap();
                see_store(&mut versions, &bob);
            }
            // A phone is seized at any moment; right after a scrub, it
            // gives back nothing superseded.
            if step % 100 == 99 {
                leaks_between_scrubs.push(leaked_secrets(&dir, &versions, STORAGE_KEY.as_bytes()).len());
                assert_eq!(bob.scrub().unwrap(), Scrub::Done);
                seized(&dir, &versions, STORAGE_KEY.as_bytes(), &format!("scrubbed after step {step}"));
            }
        }
        seized(&dir, &versions, STORAGE_KEY.as_bytes(), "at the end, store open");
    }
    seized(&dir, &versions, STORAGE_KEY.as_bytes(), "store closed");
    println!("superseded session rows readable before each scrub: {leaks_between_scrubs:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What an attacker with the files and the storage key (a seized, unlocked
/// phone) gets back: a superseded row is in the files, or (first) a
/// superseded session row whose beginning survives opens and gives back
/// secrets of the record as it was.
fn seized(dir: &std::path::Path, versions: &at_rest::Versions, storage_key: &[u8; 32], when: &str) {
    let leaks = leaked_secrets(dir, versions, storage_key);
    assert!(
        leaks.is_empty(),
        "{when}: superseded session rows survive in the files, and the storage key opens them:\n{}",
        leaks.join("\n")
    );
    versions.check(dir, when);
}

/// For every superseded session row with a fragment in the files that
/// starts at the row's beginning (version byte and nonce, so the storage key
/// opens it: XChaCha20 needs no tag to decrypt): which secrets of the
/// superseded record the fragment gives back.
fn leaked_secrets(dir: &std::path::Path, versions: &at_rest::Versions, storage_key: &[u8; 32]) -> Vec<String> {
    use chacha20poly1305::{
        KeyInit, XChaCha20Poly1305, XNonce,
        aead::{Aead, Payload},
    };
    let seal_key = {
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; 32]), storage_key)
            .expand(b"samizdat/v1/store/seal", &mut okm)
            .unwrap();
        okm
    };
    let cipher = XChaCha20Poly1305::new(&seal_key.into());
    // XChaCha20-Poly1305's ciphertext is the plaintext XOR a keystream that
    // the associated data does not change: sealing zeros yields it.
    let open_prefix = |sealed: &[u8]| -> Vec<u8> {
        let nonce: [u8; 24] = sealed[1..25].try_into().unwrap();
        let body = &sealed[25..];
        let stream = cipher.encrypt(&XNonce::from(nonce), Payload { msg: &vec![0u8; body.len()], aad: b"" }).unwrap();
        body.iter().zip(stream).map(|(c, k)| c ^ k).collect()
    };
    let files = at_rest::files(dir);
    // The superseded session rows (every version of a deleted row; of
    // another, all but the last), by their first bytes.
    type Owners<'a> = Vec<(&'a [u8], &'a Vec<u8>)>;
    let mut heads: std::collections::HashMap<&[u8], Owners> = std::collections::HashMap::new();
    for (id, history) in &versions.rows {
        let (table, key) = id;
        if table != "sessions" {
            continue;
        }
        let superseded = if versions.gone.contains(id) { &history[..] } else { &history[..history.len() - 1] };
        for old in superseded {
            heads.entry(&old[..at_rest::WINDOW]).or_default().push((key, old));
        }
    }
    let mut leaks = Vec::new();
    for (name, bytes) in &files {
        // Where the first bytes of a superseded row are, and the longest
        // prefix of the row that survives there.
        let starts = bytes.windows(at_rest::WINDOW).enumerate().filter_map(|(pos, w)| Some((pos, heads.get(w)?)));
        for (pos, (key, old)) in starts.flat_map(|(pos, owners)| owners.iter().map(move |o| (pos, *o))) {
            let n = old.iter().zip(&bytes[pos..]).take_while(|(a, b)| a == b).count();
            let recovered = open_prefix(&bytes[pos..pos + n]);
            if key.ends_with(b"/seeds") {
                leaks.push(format!(
                    "{name}, offset {pos}: a superseded row of skipped-key seeds ({} bytes): its first {n} \
                     bytes survive; opened with the storage key they give back {} bytes of seeds",
                    old.len(),
                    recovered.len()
                ));
                continue;
            }
            // The sealed plaintext is padded: the row, a 0x80 marker, zeros.
            let row = open_prefix(old);
            let padded = &row[..row.len() - 16];
            let end = padded.iter().rposition(|&b| b != 0).unwrap();
            assert_eq!(padded[end], 0x80, "padding marker");
            let row = storage::SessionRow::decode(&padded[..end]).unwrap();
            let record = storage::SessionRecord::decode(row.record.as_slice()).unwrap();
            let mut secrets = Vec::new();
            if let Some(r) = record.current.as_ref().and_then(|s| s.ratchet.as_ref()) {
                let s = r.sending.as_ref().unwrap();
                for (what, key) in [
                    ("root key", &r.root_key),
                    ("ratchet secret", &s.ratchet_secret),
                    ("sending chain key", &s.chain_key),
                    ("sending header key", &s.header_key),
                    ("receiving header key", &r.next_receiving_header_key),
                ] {
                    if key.len() == 32 && recovered.windows(32).any(|w| w == key.as_slice()) {
                        secrets.push(what);
                    }
                }
                for c in &r.receiving {
                    if c.chain_key.len() == 32 && recovered.windows(32).any(|w| w == c.chain_key.as_slice()) {
                        secrets.push("receiving chain key");
                    }
                }
            }
            leaks.push(format!(
                "{name}, offset {pos}: a superseded session row ({} bytes) of peer {:?}: its first {n} bytes \
                 survive; opened with the storage key they give back {} bytes of the old record, with its {secrets:?}",
                old.len(),
                row.user_id,
                recovered.len()
            ));
        }
    }
    leaks
}

/// Records every row of a device's store.
fn see_store<B: samizdat::store::Backend>(versions: &mut at_rest::Versions, device: &samizdat::device::Device<B>) {
    for table in samizdat::store::Table::ALL {
        let mut present = std::collections::BTreeSet::new();
        for (key, value) in device.backend().scan(table).unwrap() {
            versions.see(table.name(), &key, &value);
            present.insert(key);
        }
        versions.keep_only(table.name(), &present);
    }
}

/// Other write patterns than `at_rest.rs`: two handles on one database
/// taking turns (and racing, so that writes conflict and are retried),
/// batches committed across several peers in one transaction, identity
/// decisions, prekey refills and rotations, stale commits refused, the
/// stores closed and reopened in between. No superseded value may be left.
#[test]
fn audit_2_two_handles_batches_and_reopening_leave_no_superseded_value() {
    use samizdat::{
        device::{Device, DeviceError},
        store::MemoryBackend,
    };
    const KEY: StorageKey = StorageKey::from_bytes([0x6b; 32]);
    let dir = at_rest::temp_dir("two-handles");
    let path = dir.join("bob.db");
    let mut versions = at_rest::Versions::default();
    let peers: Vec<Device<MemoryBackend>> = (0..4)
        .map(|i| {
            Device::create_in(
                MemoryBackend::new(),
                &StorageKey::from_bytes([i + 1; 32]),
                Address::new(format!("p{i}"), 1).unwrap(),
                UNIX_EPOCH,
            )
            .unwrap()
        })
        .collect();
    drop(Device::create(&path, &KEY, Address::new("bob", 1).unwrap(), UNIX_EPOCH).unwrap());
    for round in 0..6u64 {
        let first = Device::open(&path, &KEY).unwrap();
        let second = Device::open(&path, &KEY).unwrap();
        first.refill_prekeys(8, 8, UNIX_EPOCH + Duration::from_secs(round)).unwrap();
        see_store(&mut versions, &first);
        for peer in &peers {
            if round == 0 {
                peer.start_session(&first.prekey_bundle().unwrap()).unwrap();
                let hello = peer.encrypt(first.address(), b"hello").unwrap();
                first.commit(first.decrypt(peer.address(), &hello).unwrap()).unwrap();
                see_store(&mut versions, &first);
            }
            let reply = second.encrypt(peer.address(), b"reply").unwrap();
            see_store(&mut versions, &first);
            let pending = peer.decrypt(first.address(), &reply).unwrap();
            peer.commit(pending).unwrap();
            first.trust_identity(peer.address(), peer.identity_key()).unwrap();
            see_store(&mut versions, &first);
        }
        // A batch across every peer, decrypted through one handle and
        // committed through the other; first refused as stale (the other
        // handle wrote one of its rows), then decrypted again and committed.
        let wires: Vec<_> = peers
            .iter()
            .flat_map(|peer| {
                (0..3).map(move |k| {
                    (
                        peer.address().clone(),
                        peer.encrypt(&Address::new("bob", 1).unwrap(), format!("{k}").as_bytes()).unwrap(),
                    )
                })
            })
            .collect();
        let batch = first.decrypt_batch(&wires).unwrap();
        assert!(batch.results().iter().all(Result::is_ok));
        let stale = first.decrypt(peers[2].address(), &wires[6].1).unwrap();
        let _ = second.encrypt(peers[3].address(), b"the other handle writes").unwrap();
        see_store(&mut versions, &first);
        let result = second.commit_batch(batch);
        assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
        let batch = first.decrypt_batch(&wires).unwrap();
        second.commit_batch(batch).unwrap();
        see_store(&mut versions, &first);
        assert!(first.commit(stale).is_err());
        // Both handles encrypt at once from threads: conflicts, retried.
        std::thread::scope(|s| {
            for handle in [&first, &second] {
                s.spawn(|| {
                    for _ in 0..10 {
                        let _ = handle.encrypt(peers[0].address(), b"race");
                    }
                });
            }
        });
        see_store(&mut versions, &first);
        first
            .rotate_prekeys(UNIX_EPOCH + Duration::from_secs(1_000 * (round + 1)), Duration::from_secs(1_000))
            .unwrap();
        see_store(&mut versions, &first);
        // One more write, so that the log restarts after the last batch.
        let _ = first.encrypt(peers[1].address(), b"last").unwrap();
        see_store(&mut versions, &first);
        versions.check(&dir, &format!("round {round}, handles open"));
        drop((first, second));
        versions.check(&dir, &format!("round {round}, handles closed"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Found broken (documentation, and a real delay): PROTOCOL.md 14.8 said
/// "while another handle holds a read transaction, the frames of later
/// commits (and the values they superseded) stay in the log until a commit
/// after that read ends". Another connection (the app's own, a backup tool)
/// reads for a while; Bob encrypts meanwhile; the read ends; Bob encrypts
/// once more. That commit checkpointed every frame but did not restart the
/// log (only the next writer did), so the superseded rows stayed in `-wal`
/// until a *second* commit: for ever on a device that went quiet.
///
/// Now every commit checks that its checkpoint copied every frame
/// (`wal_checkpoint(PASSIVE)`) and whether it restarted the log; if not, a
/// truncating checkpoint runs after it, or, while a reader still keeps
/// frames from the database, after each later commit of the handle and when
/// the handle is dropped. The window, exactly: from a commit made during
/// another connection's read transaction until the first commit of this
/// handle after that read ended, or the handle's drop (or a scrub).
#[test]
fn audit_2_superseded_rows_leave_the_log_at_the_first_commit_after_a_long_read() {
    use samizdat::{device::Device, store::MemoryBackend};
    const KEY: StorageKey = StorageKey::from_bytes([0x6c; 32]);
    let dir = at_rest::temp_dir("long-read");
    let path = dir.join("bob.db");
    let mut versions = at_rest::Versions::default();
    let alice = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([1; 32]),
        Address::new("alice", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    let bob = Device::create(&path, &KEY, Address::new("bob", 1).unwrap(), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt(bob.address(), b"hello").unwrap();
    bob.commit(bob.decrypt(alice.address(), &hello).unwrap()).unwrap();
    see_store(&mut versions, &bob);
    for _ in 0..3 {
        let _ = bob.encrypt(alice.address(), b"before").unwrap();
        see_store(&mut versions, &bob);
    }
    versions.check(&dir, "control: no reader");

    let long_read = |bob: &Device, versions: &mut at_rest::Versions| {
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
        for _ in 0..5 {
            let _ = bob.encrypt(alice.address(), b"during the read").unwrap();
            see_store(versions, bob);
        }
        // The window: while the read lasts, the superseded values are in the files.
        assert!(versions.stale(&dir) > 0, "control: the reader keeps superseded values in the files");
        reader.execute_batch("COMMIT").unwrap();
    };
    long_read(&bob, &mut versions);
    let _ = bob.encrypt(alice.address(), b"the first commit after the read").unwrap();
    see_store(&mut versions, &bob);
    versions.check(&dir, "one commit after the read ended");

    // A device that goes quiet after the read: its drop empties the log
    // (another connection is open, so closing Bob's is not the last close,
    // which would empty it anyway).
    long_read(&bob, &mut versions);
    let other = rusqlite::Connection::open(&path).unwrap();
    let _: i64 = other.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
    drop(bob);
    assert!(std::fs::metadata(dir.join("bob.db-wal")).is_ok(), "control: closing Bob's was not the last close");
    versions.check(&dir, "Bob's handle dropped after the read, another connection open");
    drop(other);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Claim 4: no key reuse under any number of handles, any backend that keeps
// the contract of `Backend::apply`
// ---------------------------------------------------------------------------

mod backends {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use samizdat::store::{Backend, MemoryBackend, Row, StoreError, Table, Write};

    type History = HashMap<(Table, Vec<u8>), Vec<Option<Vec<u8>>>>;

    /// One store with a primary that applies batches atomically, as the
    /// contract demands, and reads that may come from a lagging replica
    /// (a value up to `LAG` writes old): `get` is not promised to be fresh.
    pub(crate) struct Replicated {
        primary: MemoryBackend,
        history: Mutex<(History, u64)>,
        /// Batches the primary refused because a read was stale.
        pub(crate) conflicts: std::sync::atomic::AtomicUsize,
    }

    const LAG: usize = 3;

    impl Replicated {
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(Self {
                primary: MemoryBackend::new(),
                history: Mutex::new((HashMap::new(), 1)),
                conflicts: std::sync::atomic::AtomicUsize::new(0),
            })
        }
    }

    /// A handle on a [`Replicated`] store: fresh or lagging reads.
    pub(crate) struct Handle {
        pub(crate) store: Arc<Replicated>,
        pub(crate) lagging: bool,
    }

    impl Backend for Handle {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let mut guard = self.store.history.lock().unwrap();
            let (history, seed) = &mut *guard;
            let Some(versions) = history.get(&(table, key.to_vec())).filter(|_| self.lagging) else {
                drop(guard);
                return self.store.primary.get(table, key);
            };
            // xorshift: how many writes behind this read is.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let behind = (*seed as usize) % (LAG + 1);
            Ok(versions[versions.len().saturating_sub(1 + behind)].clone())
        }
        fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
            self.store.primary.scan(table)
        }
        fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
            let mut guard = self.store.history.lock().unwrap();
            for w in writes {
                let entry = guard.0.entry((w.table, w.key.clone())).or_default();
                if entry.is_empty() {
                    entry.push(self.store.primary.get(w.table, &w.key)?);
                }
            }
            if let Err(e) = self.store.primary.apply(writes) {
                if matches!(e, StoreError::Conflict { .. }) {
                    self.store.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Err(e);
            }
            for w in writes {
                guard.0.entry((w.table, w.key.clone())).or_default().push(w.value.clone());
            }
            Ok(())
        }
    }
}

/// Two handles of Alice's device on a store whose reads may be stale (a
/// replica) while its batches are atomic and conditional on the primary,
/// hammered from threads: every ciphertext has its own keystream, each
/// refusal is a typed error, and Bob decrypts every message once (no
/// `Rollback`: no state was built on twice).
#[test]
fn audit_4_stale_reads_never_make_a_key_reused() {
    use samizdat::{
        device::{Device, DeviceError},
        store::{MemoryBackend, StoreError},
    };
    use std::sync::Mutex;
    const KEY: StorageKey = StorageKey::from_bytes([0x4c; 32]);
    let store = backends::Replicated::new();
    let first = Device::create_in(
        backends::Handle { store: store.clone(), lagging: true },
        &KEY,
        Address::new("alice", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    // (A stale read of a new store may see no device yet: open again.)
    let second = (0..100)
        .find_map(|_| Device::open_in(backends::Handle { store: store.clone(), lagging: true }, &KEY).ok())
        .unwrap();
    let bob = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([0xb0; 32]),
        Address::new("bob", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    let alice = first.address().clone();
    let refusals = std::sync::atomic::AtomicUsize::new(0);
    let retry = |op: &mut dyn FnMut() -> Result<Vec<u8>, DeviceError>| -> Vec<u8> {
        for _ in 0..10_000 {
            match op() {
                Ok(v) => return v,
                // Conflicts, and a stale read from before the session existed.
                Err(
                    DeviceError::Store(StoreError::Conflict { .. }) | DeviceError::Session(SessionError::NoSession),
                ) => {
                    refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => panic!("refused with {e:?}"),
            }
        }
        panic!("never succeeded")
    };
    loop {
        match first.start_session(&bob.prekey_bundle().unwrap()) {
            Ok(_) => break,
            Err(DeviceError::Store(StoreError::Conflict { .. })) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let hello = retry(&mut || first.encrypt(bob.address(), b"hello"));
    bob.commit(bob.decrypt(&alice, &hello).unwrap()).unwrap();
    let replies: Vec<_> = (0..6).map(|i| bob.encrypt(&alice, format!("reply {i}").as_bytes()).unwrap()).collect();
    let sent = Mutex::new(vec![(b"hello".to_vec(), hello)]);
    std::thread::scope(|s| {
        for (t, handle) in [&first, &second, &first, &second].into_iter().enumerate() {
            let (sent, replies, bob_address) = (&sent, &replies, bob.address());
            s.spawn(move || {
                for i in 0..15 {
                    let text = format!("thread {t} message {i}").into_bytes();
                    let wire = retry(&mut || handle.encrypt(bob_address, &text));
                    sent.lock().unwrap().push((text, wire));
                    if i % 5 == 0 {
                        let reply = &replies[(t + i) % replies.len()];
                        // Commit a reply: stale and conflicts are retried; a
                        // duplicate means another thread committed it.
                        for _ in 0..10_000 {
                            let Ok(pending) = handle.decrypt(bob_address, reply) else { break };
                            match handle.commit(pending) {
                                Ok(_) => break,
                                Err(DeviceError::Session(SessionError::StalePending)) => {}
                                Err(DeviceError::Store(StoreError::Conflict { .. })) => {}
                                Err(e) => panic!("commit refused with {e:?}"),
                            }
                        }
                    }
                }
            });
        }
    });
    let sent = sent.into_inner().unwrap();
    // The stale reads were exercised: batches built on them refused by the
    // primary (and recomputed by the device, or surfaced as refusals).
    let conflicts = store.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("audit_4: {conflicts} batches refused, {} refusals surfaced", refusals.into_inner());
    assert!(conflicts > 10, "the stale reads were exercised (writes refused and recomputed)");
    distinct_keystreams(&sent);
    assert_eq!(sent.len(), 1 + 4 * 15);
    for (text, wire) in &sent[1..] {
        let pending = bob.decrypt(&alice, wire);
        let pending = pending.unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(text)));
        assert_eq!(pending.plaintext(), text.as_slice());
        bob.commit(pending).unwrap();
    }
}

/// A backend shared with another handle that runs queued actions (the other
/// handle's calls) just before its own `apply`: deterministic races between
/// a call's read and its write.
struct Interleaving {
    inner: std::sync::Arc<samizdat::store::MemoryBackend>,
    before_apply: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl samizdat::store::Backend for Interleaving {
    fn get(&self, table: samizdat::store::Table, key: &[u8]) -> Result<Option<Vec<u8>>, samizdat::store::StoreError> {
        self.inner.get(table, key)
    }
    fn scan(&self, table: samizdat::store::Table) -> Result<Vec<samizdat::store::Row>, samizdat::store::StoreError> {
        self.inner.scan(table)
    }
    fn apply(&self, writes: &[samizdat::store::Write]) -> Result<(), samizdat::store::StoreError> {
        let action = self.before_apply.lock().unwrap().pop();
        if let Some(action) = action {
            action();
        }
        self.inner.apply(writes)
    }
}

/// Races not covered by `handles.rs`: `commit_batch` against `encrypt` (both
/// ways), `start_session` against `start_session`, a pending against
/// `trust_identity` through the other handle, and two new sessions on one
/// one-time prekey committed through two handles. Every refusal is typed and
/// writes nothing; nothing is lost; no keystream repeats.
#[test]
fn audit_4_and_5_races_between_handles() {
    use std::sync::Arc;

    use samizdat::{
        PreKeyKind,
        device::{Device, DeviceError},
        store::MemoryBackend,
    };
    const KEY: StorageKey = StorageKey::from_bytes([0x4d; 32]);
    let store = Arc::new(MemoryBackend::new());
    let first = Device::create_in(
        Interleaving { inner: store.clone(), before_apply: Default::default() },
        &KEY,
        Address::new("alice", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    let second = Arc::new(Device::open_in(store.clone(), &KEY).unwrap());
    let queue = |action: Box<dyn FnOnce() + Send>| first.backend().before_apply.lock().unwrap().push(action);
    let bob = Arc::new(
        Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([0xb0; 32]),
            Address::new("bob", 1).unwrap(),
            UNIX_EPOCH,
        )
        .unwrap(),
    );
    bob.refill_prekeys(4, 4, UNIX_EPOCH).unwrap();
    let alice = first.address().clone();
    let sent: Arc<std::sync::Mutex<Vec<Sent>>> = Arc::default();

    // start_session raced by start_session: both sessions exist, both work.
    queue(Box::new({
        let (second, bundle, sent) = (second.clone(), bob.prekey_bundle().unwrap(), sent.clone());
        move || {
            second.start_session(&bundle).unwrap();
            sent.lock().unwrap().push((
                b"on the second's session".to_vec(),
                second.encrypt(&Address::new("bob", 1).unwrap(), b"on the second's session").unwrap(),
            ));
        }
    }));
    bob.refill_prekeys(4, 4, UNIX_EPOCH).unwrap();
    first.start_session(&bob.prekey_bundles(2).unwrap()[1]).unwrap();
    sent.lock()
        .unwrap()
        .push((b"on the first's session".to_vec(), first.encrypt(bob.address(), b"on the first's session").unwrap()));
    for (text, wire) in sent.lock().unwrap().iter() {
        let pending = bob.decrypt(&alice, wire).unwrap();
        assert_eq!(pending.plaintext(), text.as_slice());
        bob.commit(pending).unwrap();
    }

    // commit_batch raced by encrypt: stale, nothing written; again: committed.
    let replies: Vec<_> =
        (0..3).map(|i| (bob.address().clone(), bob.encrypt(&alice, format!("r{i}").as_bytes()).unwrap())).collect();
    let batch = first.decrypt_batch(&replies).unwrap();
    assert!(batch.results().iter().all(Result::is_ok));
    queue(Box::new({
        let (second, sent) = (second.clone(), sent.clone());
        move || {
            sent.lock()
                .unwrap()
                .push((b"raced".to_vec(), second.encrypt(&Address::new("bob", 1).unwrap(), b"raced").unwrap()))
        }
    }));
    let before_snapshot = store.snapshot();
    let result = first.commit_batch(batch);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    assert_eq!(store.snapshot().len(), before_snapshot.len());
    let batch = first.decrypt_batch(&replies).unwrap();
    first.commit_batch(batch).unwrap();

    // encrypt raced by commit_batch: recomputed on the batch's row.
    let more: Vec<_> =
        (0..2).map(|i| (bob.address().clone(), bob.encrypt(&alice, format!("m{i}").as_bytes()).unwrap())).collect();
    queue(Box::new({
        let (second, more) = (second.clone(), more.clone());
        move || {
            let batch = second.decrypt_batch(&more).unwrap();
            second.commit_batch(batch).unwrap();
        }
    }));
    sent.lock().unwrap().push((b"after the batch".to_vec(), first.encrypt(bob.address(), b"after the batch").unwrap()));
    assert!(matches!(
        first.decrypt(bob.address(), &more[0].1),
        Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
    ));

    // A pending against trust_identity through the other handle: stale.
    let reply = bob.encrypt(&alice, b"trusted?").unwrap();
    let pending = first.decrypt(bob.address(), &reply).unwrap();
    second.trust_identity(bob.address(), bob.identity_key()).unwrap();
    let result = first.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    first.commit(first.decrypt(bob.address(), &reply).unwrap()).unwrap();

    // Two new sessions from one one-time prekey (the server served one bundle
    // twice), committed through two handles: the second is refused.
    let carol = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([0xc0; 32]),
        Address::new("carol", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    let dave = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([0xd0; 32]),
        Address::new("dave", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    first.refill_prekeys(3, 3, UNIX_EPOCH).unwrap();
    let bundle = first.prekey_bundle().unwrap();
    carol.start_session(&bundle).unwrap();
    dave.start_session(&bundle).unwrap();
    let from_carol = carol.encrypt(&alice, b"carol").unwrap();
    let from_dave = dave.encrypt(&alice, b"dave").unwrap();
    let carol_pending = first.decrypt(carol.address(), &from_carol).unwrap();
    let dave_pending = second.decrypt(dave.address(), &from_dave).unwrap();
    second.commit(dave_pending).unwrap();
    let before = store.snapshot();
    let result = first.commit(carol_pending);
    assert!(
        matches!(result, Err(DeviceError::Session(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, .. }))),
        "{result:?}"
    );
    assert_eq!(store.snapshot(), before, "a refused commit wrote nothing");

    // Everything Alice sent decrypts once at Bob, with its own keystream.
    let sent = sent.lock().unwrap().clone();
    distinct_keystreams(&sent);
    for (text, wire) in &sent[2..] {
        let pending = bob.decrypt(&alice, wire).unwrap();
        assert_eq!(pending.plaintext(), text.as_slice());
        bob.commit(pending).unwrap();
    }
}

/// Prekey messages replayed into kept states: the first message of a session
/// whose state was cut to its kept keys goes to that state and is a
/// `Duplicate`; a restored initiator's new prekey message on it is refused;
/// neither builds a second session. Once the kept state is gone, both are
/// `DuplicatePreKeyMessage` (the record remembers the base key).
#[test]
fn audit_1_prekey_messages_replayed_into_kept_states_build_nothing() {
    let mut rng = rng(1401);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let snapshot = alice.copy();
    let hello = alice.send(&mut rng, b"hello");
    let _lost = alice.send(&mut rng, b"lost");
    let third = alice.send(&mut rng, b"third");
    bob.receive(&mut rng, &a, &hello).unwrap();
    bob.receive(&mut rng, &a, &third).unwrap();
    let reply = bob.send(&mut rng, b"reply");
    alice.receive(&mut rng, &b, &reply).unwrap();
    alice.initiate(&mut rng, &bob);
    let p = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &p).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(bob.record.kept_states(), 1, "the first session is kept for its lost message");
    let mut restored = alice.with_record(&snapshot);
    let restored_first = restored.send(&mut rng, b"restored hello");
    let sessions = |bob: &Party| (bob.record.archived_states(), bob.record.current_base_key());
    let before = (bob.record.to_bytes(), sessions(&bob));
    assert_eq!(bob.receive(&mut rng, &a, &hello), duplicate(0));
    assert_eq!(bob.receive(&mut rng, &a, &restored_first), rollback(0));
    assert_eq!((bob.record.to_bytes(), sessions(&bob)), before, "nothing built");
    // The kept state expires; the base key is still remembered.
    round_trip(&mut rng, &mut alice, &mut bob, samizdat::limits::MAX_KEPT_STATE_HEALS as usize);
    assert_eq!(bob.record.kept_states(), 0);
    assert_eq!(bob.receive(&mut rng, &a, &hello), Err(SessionError::DuplicatePreKeyMessage));
    assert_eq!(bob.receive(&mut rng, &a, &restored_first), Err(SessionError::DuplicatePreKeyMessage));
}

/// The exception of 9.10 is wider than "the skipped keys it already held":
/// a copy holds the current receiving chain key, and when the peer's next
/// DH step closes that chain at its `PN`, Bob derives (after the copy) and
/// keeps the keys of every counter he has not received, which the copy
/// derives too. An attacker who dropped Alice's messages sent after the copy
/// substitutes its own for them after the heal. This is inherent to skipped
/// keys (the same holds in the Double Ratchet): the test pins the true
/// bound, `[Nr at the copy, PN)` of the copied chain, and that such a
/// message promotes nothing and changes Bob's sending state in no way.
#[cfg(feature = "hazmat")]
#[test]
fn audit_1_keys_derived_after_the_copy_from_a_copied_chain_key_are_forgeable_until_pn() {
    let (mut rng, mut alice, mut bob) = talking(1501);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let m = alice.send(&mut rng, b"on Alice's chain");
    bob.receive(&mut rng, &a, &m).unwrap();
    let copy = bob.copy();
    let chain = {
        let r = storage::SessionRecord::decode(copy.as_slice()).unwrap();
        let ratchet = r.current.unwrap().ratchet.unwrap();
        let c = ratchet.receiving.last().unwrap().clone();
        (ratchet.associated_data, c)
    };
    let (ad, c) = chain;
    let nr = c.counter;
    // Alice's next messages on that chain are dropped by the attacker.
    let dropped: Vec<_> = (0..4).map(|i| alice.send(&mut rng, format!("dropped {i}").as_bytes())).collect();
    let r = bob.send(&mut rng, b"bob");
    alice.receive(&mut rng, &b, &r).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2); // Bob heals
    assert!(all_archived_kept(&bob));
    let forge = |rng: &mut ChaCha20Rng, counter: u32| {
        forge::on_chain(
            rng,
            &ad,
            c.header_key.as_slice().try_into().unwrap(),
            c.ratchet_key.as_slice().try_into().unwrap(),
            0,
            c.chain_key.as_slice().try_into().unwrap(),
            nr,
            counter,
            b"substituted by the attacker",
        )
    };
    let current = bob.record.current_base_key();
    let pn = nr + dropped.len() as u32;
    for counter in nr..pn {
        let forged = forge(&mut rng, counter);
        assert_eq!(bob.receive(&mut rng, &a, &forged.to_bytes()).unwrap(), b"substituted by the attacker");
        assert_eq!(bob.record.current_base_key(), current);
    }
    // The genuine ones are then reported as Bob's duplicates or rollbacks.
    for (i, wire) in dropped.iter().enumerate() {
        assert_eq!(bob.receive(&mut rng, &a, wire), rollback(nr + i as u32));
    }
    // At and past PN: refused, as a rollback (the chain is closed there).
    for counter in [pn, pn + 1] {
        let before = bob.record.to_bytes();
        let forged = forge(&mut rng, counter);
        assert_eq!(bob.receive(&mut rng, &a, &forged.to_bytes()), rollback(counter));
        assert_eq!(*bob.record.to_bytes(), *before);
    }
    round_trip(&mut rng, &mut alice, &mut bob, 1);
}

/// Found broken (minor): `PendingBatch::results` says "a failed message
/// changes nothing", but `commit_batch` wrote a row for every peer the batch
/// named, also when every message from it failed. A server that queues
/// forgeries "from" made-up addresses made the app store one (empty) session
/// row per address: the store grew without bound, and its row count (which a
/// copy of the files shows, 16.6) no longer told anything, or told the
/// server's story. Now a batch writes only the records it changed: no row
/// for a made-up sender, and the row of a known peer whose messages all
/// failed is left as it was (its sealed bytes unchanged), while a genuine
/// message in the same batch is committed.
#[test]
fn audit_6_a_batch_of_failed_messages_writes_no_rows() {
    use samizdat::{
        device::Device,
        store::{Backend, MemoryBackend, Table},
    };
    let (mut rng, mut alice, bob) = talking(6101);
    let device = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([0x42; 32]),
        Address::new("victim", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    let carol = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([0x43; 32]),
        Address::new("carol", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    let dave = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([0x44; 32]),
        Address::new("dave", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    for peer in [&carol, &dave] {
        peer.start_session(&device.prekey_bundle().unwrap()).unwrap();
        let hello = peer.encrypt(device.address(), b"hello").unwrap();
        device.commit(device.decrypt(peer.address(), &hello).unwrap()).unwrap();
    }
    // Well-framed ratchet messages that authenticate under nothing.
    let mut forged: Vec<_> = (0..50)
        .map(|i| {
            let genuine = alice.send(&mut rng, b"x");
            (Address::new(format!("nobody{i}"), 1).unwrap(), genuine)
        })
        .collect();
    // Carol's row exists; her messages in the batch all fail (a forgery and
    // garbage). Dave's message is genuine.
    forged.push((carol.address().clone(), alice.send(&mut rng, b"x")));
    forged.push((carol.address().clone(), b"garbage".to_vec()));
    let genuine = dave.encrypt(device.address(), b"genuine").unwrap();
    forged.push((dave.address().clone(), genuine.clone()));
    let _ = bob;
    let before = device.backend().snapshot();
    let rows_before = device.backend().scan(Table::Sessions).unwrap().len();
    let batch = device.decrypt_batch(&forged).unwrap();
    let (last, failed) = batch.results().split_last().unwrap();
    assert!(failed.iter().all(Result::is_err));
    assert_eq!(last.as_deref().unwrap(), b"genuine");
    device.commit_batch(batch).unwrap();
    let after = device.backend().snapshot();
    let rows_after = device.backend().scan(Table::Sessions).unwrap().len();
    assert_eq!(
        rows_after,
        rows_before,
        "a batch whose every message failed wrote {} session rows for made-up senders",
        rows_after - rows_before
    );
    let changed: Vec<_> = after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    assert_eq!(changed.len(), 1, "only Dave's row is rewritten: {changed:?}");
    // Dave's message was committed: a redelivery is a duplicate.
    let redelivered = device.decrypt(dave.address(), &genuine);
    assert!(
        matches!(
            redelivered,
            Err(samizdat::device::DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
        ),
        "{redelivered:?}"
    );
}
