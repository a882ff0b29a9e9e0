//! A second outside audit, of the rules for archived states (PROTOCOL.md
//! 9.1, 9.5, 9.6, 9.9, 9.10, 13.4, 16.2, 16.5, 16.7), of pending decryptions
//! bound to their record object, and of a new SQLite store built under a
//! temporary name. Tests named `audit2_<n>_*` pin a defence that held; tests
//! named `audit2_<n>_broken_*` assert the secure behaviour and fail on the
//! audited code (their doc comment gives the attack step by step).
//!
//! Claims: 1, PROTOCOL.md 9.10 point 2 (a copy cannot postpone the heal);
//! 2, point 1 (after the heal a copy is useless); 3, convergence without an
//! attacker; 4, pending decryptions; 5, the temporary name of a new store;
//! 6, the loader's checks of 13.4.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
// The attacks need `samizdat::hazmat`; without it their helpers are unused.
#![cfg_attr(not(feature = "hazmat"), allow(dead_code, unused_imports))]

mod support;

use chacha20::ChaCha20Rng;
use prost::Message as _;
use samizdat::{
    DecodeError, DecryptError, SessionError,
    ratchet::DoubleRatchet,
    session::SessionRecord,
    wire::{Message, RatchetMessage},
};
use samizdat_proto::storage;
#[cfg(feature = "hazmat")]
use support::attacker;
use support::{
    party::{Party, impersonators, round_trip},
    rng,
};

// ---------------------------------------------------------------------------
// Parties (`support::party`)
// ---------------------------------------------------------------------------

fn ratchet_of(wire: &[u8]) -> RatchetMessage {
    match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m,
        Message::PreKey(p) => p.message().clone(),
    }
}

fn is_prekey(wire: &[u8]) -> bool {
    matches!(Message::from_bytes(wire).unwrap(), Message::PreKey(_))
}

/// Alice and Bob on a first session (Alice initiated), a few round trips in;
/// the last message went from Bob to Alice.
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

fn all_archived_kept(party: &Party) -> bool {
    party.record.archived_states() == party.record.kept_states()
}

/// The impersonator of the state with `base_key` in a stolen record.
fn impersonator_of(rng: &mut ChaCha20Rng, record: &[u8], base_key: &[u8; 32]) -> DoubleRatchet {
    let decoded = storage::SessionRecord::decode(record).unwrap();
    let index = decoded
        .current
        .iter()
        .chain(decoded.archived.iter())
        .filter(|s| s.ratchet.is_some())
        .position(|s| s.base_key.as_slice() == base_key)
        .expect("a full state with that base key");
    impersonators(rng, record).swap_remove(index)
}

// ---------------------------------------------------------------------------
// Claim 1: PROTOCOL.md 9.10 point 2, "Before the heal, the copy cannot
// postpone it."
// ---------------------------------------------------------------------------

/// Alice re-initiates (session N) over a running session S whose base key is
/// the smaller; Bob has received Alice's first prekey message on N (current
/// N, S archived and displaced). Returns the parties and Alice's first
/// prekey message on N, with (S, N).
fn reinitiated_with_smaller_old_session(first_seed: u64) -> (ChaCha20Rng, Party, Party, Vec<u8>, [u8; 32], [u8; 32]) {
    let (rng, alice, bob, p1, s, n, _) = reinitiated_with_a_copy_before(first_seed);
    (rng, alice, bob, p1, s, n)
}

/// As [`reinitiated_with_smaller_old_session`], with a copy of Bob's record
/// taken on S, before Alice re-initiated.
#[allow(clippy::type_complexity)]
fn reinitiated_with_a_copy_before(
    first_seed: u64,
) -> (ChaCha20Rng, Party, Party, Vec<u8>, [u8; 32], [u8; 32], Vec<u8>) {
    for seed in first_seed..first_seed + 64 {
        let (mut rng, mut alice, mut bob) = talking(seed);
        let before = bob.copy();
        let s = bob.current();
        alice.initiate(&mut rng, &bob);
        let n = alice.current();
        if s >= n {
            continue;
        }
        let p1 = alice.send(&mut rng, b"alice starts N");
        bob.receive(&mut rng, &alice.address.clone(), &p1).unwrap();
        assert_eq!(bob.current(), n);
        return (rng, alice, bob, p1, s, n, before);
    }
    unreachable!("one seed in 64 gives the order")
}

/// Found broken, fixed (rule 5 brings a state back once between heals; rule
/// 6 never leaves a session the peer waits for us to answer). PROTOCOL.md 9.10 point 2 ("Before the heal, the copy cannot
/// postpone it ... Rule 6 moves only to a smaller base key, so it cannot
/// move the record back and forth: a copy can use it at most once per state
/// it holds. Every move puts the victim on a state the genuine peer also
/// holds; the next round trip on it takes a DH step on each side, which
/// heals"), 16.2 ("the archived states give such an attacker no way to keep
/// the current state from healing") and 16.7 #1.
///
/// Rule 5 moves *up* (to a responder state of any base key), rule 6 moves
/// *down*; together they move a record back and forth without end, and the
/// genuine peer supplies the rule-5 messages itself:
///
/// 1. Alice and Bob talk on S (Alice's last message on S was answered).
///    Alice starts a new session N (say, the app's recovery), with
///    `S < N` bytewise (half of all cases). Bob gets her first prekey
///    message: current N (a responder state with one receiving chain), S
///    archived (displaced). The attacker copies Bob's record now.
/// 2. Each round: right after a genuine message of Alice's reaches Bob, the
///    attacker delivers one forged message on S: a continuation of Alice's
///    receiving chain of S from the copied chain key (no DH step). Bob's
///    archived S decrypts it; rule 6 (S is smaller) makes S current.
/// 3. Bob replies on S, on his old sending chain of S: the copy reads it.
///    Alice's archived S decrypts it on the chain it has; rule 3 (her
///    current N is an unanswered initiation) keeps her on N. No error.
/// 4. Alice, still unanswered on N, sends a prekey message on N (its first
///    chain: the copy reads it). At Bob it decrypts on the archived N and
///    rule 5 (a prekey message, a responder state with one chain) makes N
///    current again. Back to 2.
///
/// Every message decrypts on both sides, nobody sees an error, no DH step
/// is ever taken, neither side ever heals, and the attacker reads every
/// message both ways for as long as it injects one message per round: the
/// copy postpones the heal for ever. Rule 6 is used once per round, not
/// once per state.
///
/// Suggested fix: make the non-monotonic moves (rules 4 and 5) one-shot per
/// state, or refuse rule 6 away from a state that came back by rule 4 or 5
/// until a step; equivalently, never let a record leave by rule 6 a state
/// that the peer is known to be waiting on (a responder state with one chain
/// that we have never answered on).
#[cfg(feature = "hazmat")]
#[test]
fn audit2_1_rules_5_and_6_cannot_alternate_after_a_reinitiation() {
    let (mut rng, mut alice, mut bob, _, s, n) = reinitiated_with_smaller_old_session(2100);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let copy = bob.copy();
    let forge_on = attacker::receiving(&copy, &s); // Alice's chain of S, as Bob receives it
    let bob_on_s = attacker::sending(&copy, &s); // Bob's sending chain of S
    let alice_on_n = attacker::receiving(&copy, &n); // Alice's first chain of N

    let (mut leaked, mut refused, mut bob_on) = (Vec::new(), Vec::new(), Vec::new());
    const ROUNDS: u32 = 8;
    for round in 0..ROUNDS {
        let forged = attacker::forge(&mut rng, &forge_on, forge_on.counter + round, b"ok");
        if bob.receive(&mut rng, &a, &forged.to_bytes()).is_err() {
            refused.push(format!("forgery {round} at Bob"));
        }
        bob_on.push(bob.current() == s);
        let text = format!("bob's secret {round}");
        let reply = bob.send(&mut rng, text.as_bytes());
        if attacker::read(&bob_on_s, &ratchet_of(&reply)).is_some() {
            leaked.push((round, text.clone()));
        }
        match alice.receive(&mut rng, &b, &reply) {
            Ok(p) => assert_eq!(p, text.as_bytes()),
            Err(e) => refused.push(format!("bob {round} at Alice: {e:?}")),
        }
        let text = format!("alice's secret {round}");
        let message = alice.send(&mut rng, text.as_bytes());
        if attacker::read(&alice_on_n, &ratchet_of(&message)).is_some() {
            leaked.push((round, text.clone()));
        }
        match bob.receive(&mut rng, &a, &message) {
            Ok(p) => assert_eq!(p, text.as_bytes()),
            Err(e) => refused.push(format!("alice {round} at Bob: {e:?}")),
        }
    }
    let late: Vec<_> = leaked.iter().filter(|(round, _)| *round >= 3).collect();
    assert!(
        late.is_empty(),
        "after {ROUNDS} rounds in which both sides sent and received, Bob was moved to the copied session S \
         before each reply ({} of {ROUNDS} times), Alice never left her unanswered N, nobody healed (Bob: {} \
         archived, {} kept; Alice still sends prekey messages: {}), {} messages were refused ({refused:?}), and \
         the attacker read {} messages, late ones: {late:?}",
        bob_on.iter().filter(|on| **on).count(),
        bob.record.archived_states(),
        bob.record.kept_states(),
        is_prekey(&alice.send(&mut rng, b"still prekey?")),
        refused.len(),
        leaked.len(),
    );
}

/// Found broken, fixed as above. As above, with a copy of Bob's record made while Alice and Bob
/// were still on S, before Alice re-initiated (an old backup): the copy holds
/// nothing of N, yet it postpones the heal for ever and reads every message
/// Bob sends. 9.10: "A copy made before the heal ... can impersonate and read
/// until the state heals" -- here the heal never comes.
#[cfg(feature = "hazmat")]
#[test]
fn audit2_1_a_copy_made_before_the_reinitiation_cannot_postpone_the_heal() {
    let (mut rng, mut alice, mut bob, _, s, _, copy) = reinitiated_with_a_copy_before(2150);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let forge_on = attacker::receiving(&copy, &s);
    let bob_on_s = attacker::sending(&copy, &s);
    let (mut leaked, mut refused) = (Vec::new(), Vec::new());
    const ROUNDS: u32 = 8;
    for round in 0..ROUNDS {
        let forged = attacker::forge(&mut rng, &forge_on, forge_on.counter + round, b"ok");
        if let Err(e) = bob.receive(&mut rng, &a, &forged.to_bytes()) {
            refused.push(format!("forgery {round}: {e:?}"));
        }
        let text = format!("bob's secret {round}");
        let reply = bob.send(&mut rng, text.as_bytes());
        if attacker::read(&bob_on_s, &ratchet_of(&reply)).is_some() {
            leaked.push(round);
        }
        if let Err(e) = alice.receive(&mut rng, &b, &reply) {
            refused.push(format!("bob {round}: {e:?}"));
        }
        let message = alice.send(&mut rng, format!("alice {round}").as_bytes());
        if let Err(e) = bob.receive(&mut rng, &a, &message) {
            refused.push(format!("alice {round}: {e:?}"));
        }
    }
    let late: Vec<_> = leaked.iter().filter(|round| **round >= 3).collect();
    assert!(
        late.is_empty(),
        "a copy of Bob's record from before Alice's new session read Bob's replies of rounds {leaked:?} of \
         {ROUNDS}; refused: {refused:?}; Bob healed: {}, Alice healed: {}",
        all_archived_kept(&bob),
        all_archived_kept(&alice)
    );
}

/// Control for the attack above: the same schedule without the attacker's
/// messages heals on the first round trip, and the copy then reads nothing
/// and gets nothing accepted.
#[cfg(feature = "hazmat")]
#[test]
fn audit2_1_the_same_schedule_without_the_attacker_heals() {
    let (mut rng, mut alice, mut bob, _, s, n) = reinitiated_with_smaller_old_session(2100);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let copy = bob.copy();
    let bob_on_n = attacker::sending(&copy, &n);
    let reply = bob.send(&mut rng, b"bob answers on N");
    assert!(attacker::read(&bob_on_n, &ratchet_of(&reply)).is_some(), "control: the copy reads Bob before the heal");
    alice.receive(&mut rng, &b, &reply).unwrap();
    assert!(all_archived_kept(&alice), "Alice's current state stepped: she healed");
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    assert!(all_archived_kept(&bob), "Bob healed");
    assert_eq!((alice.current(), bob.current()), (n, n));
    let later = bob.send(&mut rng, b"after the heal");
    assert!(attacker::read(&bob_on_n, &ratchet_of(&later)).is_none());
    // The forgery of the attack, on S, is now refused and changes nothing.
    let forge_on = attacker::receiving(&copy, &s);
    let before = bob.record.to_bytes();
    let forged = attacker::forge(&mut rng, &forge_on, forge_on.counter, b"too late");
    assert_eq!(
        bob.receive(&mut rng, &a, &forged.to_bytes()),
        Err(SessionError::Decrypt(DecryptError::NoMatchingState))
    );
    assert_eq!(*bob.record.to_bytes(), *before);
    alice.receive(&mut rng, &b, &later).unwrap();
}

/// Both sides initiated at once (9.9); `victim` initiated the session with
/// the smaller base key, `peer` the other. Each got the other's prekey
/// message, and the peer's first message on its responder state reached the
/// victim, whose rule 2 made its own initiation current (a step, not a heal).
/// Returns (rng, victim, peer, peer's prekey message, winner, loser).
fn simultaneous_decided(seed: u64) -> (ChaCha20Rng, Party, Party, Vec<u8>, [u8; 32], [u8; 32]) {
    let mut rng = rng(seed);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    alice.initiate(&mut rng, &bob);
    bob.initiate(&mut rng, &alice);
    let (mut victim, mut peer) = if alice.current() < bob.current() { (alice, bob) } else { (bob, alice) };
    let (v, p) = (victim.address.clone(), peer.address.clone());
    let (winner, loser) = (victim.current(), peer.current());
    let from_victim = victim.send(&mut rng, b"victim's prekey message");
    let from_peer = peer.send(&mut rng, b"peer's prekey message");
    victim.receive(&mut rng, &p, &from_peer).unwrap();
    peer.receive(&mut rng, &v, &from_victim).unwrap();
    assert_eq!((victim.current(), peer.current()), (loser, winner), "each on its responder state");
    let first = peer.send(&mut rng, b"peer on the winner");
    victim.receive(&mut rng, &p, &first).unwrap();
    assert_eq!(victim.current(), winner, "rule 2: the smaller base key");
    (rng, victim, peer, from_peer, winner, loser)
}

/// Found broken, fixed as above. The same claims as above (9.10 point 2, 16.2, 16.7 #1), in the
/// documented simultaneous initiation of 9.9, with forged prekey messages.
///
/// 1. Both initiate; each builds a responder state from the other's prekey
///    message. The victim's initiation W has the smaller base key; the
///    peer's is L. The peer's first message on W reaches the victim, whose
///    archived initiation W steps and, by rule 2, becomes current. The
///    victim's responder state of L is archived, full, with one receiving
///    chain. The attacker copies the victim's record.
/// 2. Before each reply of the victim, the attacker delivers a *prekey*
///    message it made itself: the peer's prekey header on L (public, from the
///    network) around a continuation of the peer's chain of L (copied chain
///    key). Step 2 of 9.5 sends it to the victim's archived L, which
///    decrypts it without a step; rule 5 (a prekey message, a responder
///    state with one chain) makes L current. Rule 5 needs no message of the
///    peer's: 9.10 says the peer "stops sending" them, but the attacker
///    does not.
/// 3. The victim replies on L (its responder sending chain: the copy reads
///    it). The peer's archived initiation of L decrypts it, once with its
///    first-answer step, then on that chain; rule 2/6 keep the peer on W.
/// 4. The peer replies on W, on the one chain it has there (the copy reads
///    it). The victim's archived W decrypts it on the chain it has; rule 6
///    (W is the smaller) makes W current again, without a step. Back to 2.
///
/// All messages decrypt, no DH step is taken after the first, and nobody
/// heals: rule 5 is renewable by anyone holding the copied chain key.
///
/// Suggested fix: as above; and rule 5 should not take a prekey header's
/// word for it: the peer's genuine prekey messages on L all come before its
/// first message on W (it stops sending them when it moved), so a prekey
/// message on L after a message on W promoted W is not the peer's.
#[cfg(feature = "hazmat")]
#[test]
fn audit2_1_forged_prekey_messages_cannot_renew_rule_5_after_simultaneous_initiation() {
    let (mut rng, mut victim, mut peer, prekey_of_l, winner, loser) = simultaneous_decided(2200);
    let (v, p) = (victim.address.clone(), peer.address.clone());
    let copy = victim.copy();
    let peer_chain_on_l = attacker::receiving(&copy, &loser);
    let victim_on_l = attacker::sending(&copy, &loser);
    let peer_on_w = attacker::receiving(&copy, &winner);

    let (mut leaked, mut refused, mut moved) = (Vec::new(), Vec::new(), 0);
    const ROUNDS: u32 = 8;
    for round in 0..ROUNDS {
        let inner = attacker::forge(&mut rng, &peer_chain_on_l, peer_chain_on_l.counter + round, b"ok");
        let forged = attacker::with_prekey_header(&prekey_of_l, &inner);
        match victim.receive(&mut rng, &p, &forged) {
            Ok(_) if victim.current() == loser => moved += 1,
            Ok(_) => {}
            Err(e) => refused.push(format!("forgery {round}: {e:?}")),
        }
        let text = format!("victim's secret {round}");
        let reply = victim.send(&mut rng, text.as_bytes());
        if attacker::read(&victim_on_l, &ratchet_of(&reply)).is_some() {
            leaked.push((round, text.clone()));
        }
        match peer.receive(&mut rng, &v, &reply) {
            Ok(plaintext) => assert_eq!(plaintext, text.as_bytes()),
            Err(e) => refused.push(format!("victim {round} at the peer: {e:?}")),
        }
        let text = format!("peer's secret {round}");
        let message = peer.send(&mut rng, text.as_bytes());
        if attacker::read(&peer_on_w, &ratchet_of(&message)).is_some() {
            leaked.push((round, text.clone()));
        }
        match victim.receive(&mut rng, &p, &message) {
            Ok(plaintext) => assert_eq!(plaintext, text.as_bytes()),
            Err(e) => refused.push(format!("peer {round} at the victim: {e:?}")),
        }
    }
    let late: Vec<_> = leaked.iter().filter(|(round, _)| *round >= 3).collect();
    assert!(
        late.is_empty(),
        "forged prekey messages moved the victim to the copied responder state {moved} times in {ROUNDS} rounds; \
         all genuine messages decrypted (refused: {refused:?}); victim healed: {}, peer healed: {}; the attacker \
         read {} messages, late ones: {late:?}",
        all_archived_kept(&victim),
        all_archived_kept(&peer),
        leaked.len(),
    );
}

/// Control: 9.9 as documented. Without the forgeries both sides end on the
/// smaller base key and heal within a round trip; the copy made after the
/// rule-2 promotion then reads nothing and gets no forged prekey message,
/// ratchet continuation or DH step accepted.
#[cfg(feature = "hazmat")]
#[test]
fn audit2_2_after_simultaneous_initiation_heals_the_copy_is_useless() {
    let (mut rng, mut victim, mut peer, prekey_of_l, winner, loser) = simultaneous_decided(2200);
    let p = peer.address.clone();
    let copy = victim.copy();
    round_trip(&mut rng, &mut victim, &mut peer, 2);
    assert!(all_archived_kept(&victim) && all_archived_kept(&peer), "both healed");
    assert_eq!((victim.current(), peer.current()), (winner, winner));
    let before = victim.record.to_bytes();
    // Forged prekey messages on L, ratchet continuations of every copied
    // chain, DH steps on every copied full state: all refused.
    let on_l = attacker::receiving(&copy, &loser);
    for counter in [on_l.counter, on_l.counter + 1, on_l.counter + 5] {
        let inner = attacker::forge(&mut rng, &on_l, counter, b"late");
        let wire = attacker::with_prekey_header(&prekey_of_l, &inner);
        assert!(victim.receive(&mut rng, &p, &wire).is_err(), "a forged prekey message on L after the heal");
        assert!(victim.receive(&mut rng, &p, &inner.to_bytes()).is_err(), "a continuation of L after the heal");
    }
    let on_w = attacker::receiving(&copy, &winner);
    let forged = attacker::forge(&mut rng, &on_w, on_w.counter + 2, b"late");
    assert!(victim.receive(&mut rng, &p, &forged.to_bytes()).is_err(), "a continuation of W after the heal");
    for mut forger in impersonators(&mut rng, &copy) {
        let step = forger.encrypt(&mut rng, b"late step").unwrap();
        assert!(victim.receive(&mut rng, &p, &step.to_bytes()).is_err(), "a DH step from the copy after the heal");
    }
    // A genuine prekey message replayed: refused, nothing changes.
    assert!(victim.receive(&mut rng, &p, &prekey_of_l).is_err());
    assert_eq!(*victim.record.to_bytes(), *before, "refused messages changed the record");
    round_trip(&mut rng, &mut victim, &mut peer, 1);
}

/// Replayed genuine prekey messages (the network keeps them) never flip a
/// record: one already decrypted is a `Duplicate` on its state, changes
/// nothing, and in particular does not apply rule 5. (Since the fix of the
/// `audit2_1_*` breaks, the forged continuation on S no longer moves Bob
/// either: he owes Alice an answer on N, and rule 6 never leaves such a
/// session. The original test moved Bob to S first.)
#[cfg(feature = "hazmat")]
#[test]
fn audit2_1_replayed_genuine_prekey_messages_flip_nothing() {
    let (mut rng, mut alice, mut bob, p1, s, n) = reinitiated_with_smaller_old_session(2300);
    let a = alice.address.clone();
    let copy = bob.copy();
    // A forged continuation of Alice's chain of S (from the copy): decrypts,
    // but Bob stays on N, which he has not answered yet.
    let on_s = attacker::receiving(&copy, &s);
    let forged = attacker::forge(&mut rng, &on_s, on_s.counter, b"to S");
    bob.receive(&mut rng, &a, &forged.to_bytes()).unwrap();
    assert_eq!(bob.current(), n, "rule 6 left a session Bob owes an answer on");
    assert_ne!(s, n);
    for _ in 0..3 {
        let before = bob.record.to_bytes();
        assert!(matches!(bob.receive(&mut rng, &a, &p1), Err(SessionError::Decrypt(DecryptError::Duplicate { .. }))));
        assert_eq!(*bob.record.to_bytes(), *before);
    }
    // A genuine one not yet delivered does (rule 5), once.
    let p2 = alice.send(&mut rng, b"second prekey message on N");
    bob.receive(&mut rng, &a, &p2).unwrap();
    assert_eq!(bob.current(), n);
    assert!(matches!(bob.receive(&mut rng, &a, &p2), Err(SessionError::Decrypt(DecryptError::Duplicate { .. }))));
    assert_eq!(bob.current(), n);
}

/// Rule 4 is one-shot: the attacker's DH step on the displaced state S
/// brings it back once; after the peer's prekey message on N moved Bob back
/// (rule 5), S is no longer displaced and a second step from the copy is
/// refused.
#[test]
fn audit2_1_rule_4_brings_a_displaced_state_back_once() {
    let (mut rng, mut alice, mut bob) = talking(2400);
    let a = alice.address.clone();
    let s = bob.current();
    alice.initiate(&mut rng, &bob);
    let n = alice.current();
    let p1 = alice.send(&mut rng, b"N");
    bob.receive(&mut rng, &a, &p1).unwrap();
    let copy = bob.copy();
    let mut forger = impersonator_of(&mut rng, &copy, &s);
    let step = forger.encrypt(&mut rng, b"step on S").unwrap();
    bob.receive(&mut rng, &a, &step.to_bytes()).unwrap();
    assert_eq!(bob.current(), s, "control: rule 4");
    let p2 = alice.send(&mut rng, b"N again");
    bob.receive(&mut rng, &a, &p2).unwrap();
    assert_eq!(bob.current(), n, "rule 5 brings N back");
    let before = bob.record.to_bytes();
    let mut fresh = impersonator_of(&mut rng, &copy, &s);
    let again = fresh.encrypt(&mut rng, b"step on S again").unwrap();
    assert!(
        matches!(
            bob.receive(&mut rng, &a, &again.to_bytes()),
            Err(SessionError::Decrypt(DecryptError::Rollback { .. }))
        ),
        "a second DH step on S from the copy"
    );
    assert_eq!(*bob.record.to_bytes(), *before);
}

// ---------------------------------------------------------------------------
// Claim 2: PROTOCOL.md 9.10 point 1, "After a heal, a copy made before it is
// useless."
// ---------------------------------------------------------------------------

/// Copies of Bob taken at every step of a re-initiation and of the flips of
/// rules 4 and 5 (a copy after the attacker's rule-4 step holds the
/// attacker's own chain): once Bob's current state heals, nothing of any of
/// them is accepted, neither as a ratchet message nor wrapped in the genuine
/// prekey header.
#[cfg(feature = "hazmat")]
#[test]
fn audit2_2_copies_taken_during_the_flips_are_useless_after_the_heal() {
    let (mut rng, mut alice, mut bob) = talking(2500);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let s = bob.current();
    let mut copies = vec![bob.copy()];
    alice.initiate(&mut rng, &bob);
    let n = alice.current();
    let p1 = alice.send(&mut rng, b"N");
    bob.receive(&mut rng, &a, &p1).unwrap();
    copies.push(bob.copy());
    let mut forger = impersonator_of(&mut rng, &copies[1], &s);
    let step = forger.encrypt(&mut rng, b"step on S").unwrap();
    bob.receive(&mut rng, &a, &step.to_bytes()).unwrap();
    copies.push(bob.copy());
    let p2 = alice.send(&mut rng, b"N again");
    bob.receive(&mut rng, &a, &p2).unwrap();
    copies.push(bob.copy());
    // The genuine round trip on N: Alice heals, then Bob.
    let r = bob.send(&mut rng, b"bob on N");
    alice.receive(&mut rng, &b, &r).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 1);
    assert!(all_archived_kept(&bob) && all_archived_kept(&alice));
    assert_eq!((alice.current(), bob.current()), (n, n));
    let before = bob.record.to_bytes();
    let mut accepted = Vec::new();
    for (i, copy) in copies.iter().enumerate() {
        for base in [s, n] {
            let Some(chain) = attacker::try_receiving(copy, &base) else { continue };
            for counter in [chain.counter, chain.counter + 1, chain.counter + 4] {
                let m = attacker::forge(&mut rng, &chain, counter, b"late");
                if bob.receive(&mut rng, &a, &m.to_bytes()).is_ok() {
                    accepted.push(format!("copy {i}, continuation of {base:?} at {counter}"));
                }
                if bob.receive(&mut rng, &a, &attacker::with_prekey_header(&p1, &m)).is_ok() {
                    accepted.push(format!("copy {i}, prekey-wrapped continuation at {counter}"));
                }
            }
        }
        for (k, mut forger) in impersonators(&mut rng, copy).into_iter().enumerate() {
            let m = forger.encrypt(&mut rng, b"late step").unwrap();
            if bob.receive(&mut rng, &a, &m.to_bytes()).is_ok() {
                accepted.push(format!("copy {i}, DH step on state {k}"));
            }
        }
    }
    // The attacker's own state of the rule-4 step, continued.
    let next = forger.encrypt(&mut rng, b"attacker's chain").unwrap();
    if bob.receive(&mut rng, &a, &next.to_bytes()).is_ok() {
        accepted.push("the attacker's stepped chain".into());
    }
    assert!(accepted.is_empty(), "after the heal Bob accepted: {accepted:?}");
    assert_eq!(*bob.record.to_bytes(), *before);
    round_trip(&mut rng, &mut alice, &mut bob, 1);
}

// ---------------------------------------------------------------------------
// Claim 3: convergence without an attacker
// ---------------------------------------------------------------------------

/// How two honest parties end after `trips` round trips in which every
/// message is delivered: whether each message decrypted, whether both are on
/// one session, and whether both healed.
struct Ending {
    refused: Vec<String>,
    same: bool,
    healed: bool,
}

fn settle(rng: &mut ChaCha20Rng, alice: &mut Party, bob: &mut Party, trips: usize) -> Ending {
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let mut refused = Vec::new();
    for i in 0..trips {
        let m = alice.send(rng, format!("alice {i}").as_bytes());
        if let Err(e) = bob.receive(rng, &a, &m) {
            refused.push(format!("alice {i}: {e:?}"));
        }
        let m = bob.send(rng, format!("bob {i}").as_bytes());
        if let Err(e) = alice.receive(rng, &b, &m) {
            refused.push(format!("bob {i}: {e:?}"));
        }
    }
    Ending {
        refused,
        same: alice.current() == bob.current(),
        healed: all_archived_kept(alice) && all_archived_kept(bob),
    }
}

fn check(failures: &mut Vec<String>, label: &str, ending: &Ending) {
    if !(ending.same && ending.healed) {
        failures.push(format!(
            "{label}: same {}, healed {}, refused {}",
            ending.same,
            ending.healed,
            ending.refused.len()
        ));
    }
}

/// Realistic schedules: simultaneous initiation with each side's second
/// prekey message delayed past the first answers (rule 5 on a delayed
/// genuine message), both sides re-initiating at once over a running session
/// with one old message each in flight, and the same with both records
/// reloaded. Every one converges on one session and heals. (A single
/// re-initiation with an old message in flight does not: see the next test.)
#[test]
fn audit2_3_realistic_schedules_converge_and_heal() {
    let mut failures = Vec::new();
    for seed in 3000..3004u64 {
        for reload in [false, true] {
            // Simultaneous initiation, second prekey messages delayed.
            let mut rng = rng(seed);
            let mut alice = Party::new(&mut rng, "alice");
            let mut bob = Party::new(&mut rng, "bob");
            let (a, b) = (alice.address.clone(), bob.address.clone());
            alice.initiate(&mut rng, &bob);
            bob.initiate(&mut rng, &alice);
            let a1 = alice.send(&mut rng, b"a1");
            let a2 = alice.send(&mut rng, b"a2");
            let b1 = bob.send(&mut rng, b"b1");
            let b2 = bob.send(&mut rng, b"b2");
            bob.receive(&mut rng, &a, &a1).unwrap();
            alice.receive(&mut rng, &b, &b1).unwrap();
            if reload {
                alice.reload();
                bob.reload();
            }
            let x = alice.send(&mut rng, b"x");
            let y = bob.send(&mut rng, b"y");
            let _ = bob.receive(&mut rng, &a, &x);
            let _ = alice.receive(&mut rng, &b, &y);
            let _ = bob.receive(&mut rng, &a, &a2);
            let _ = alice.receive(&mut rng, &b, &b2);
            if reload {
                alice.reload();
                bob.reload();
            }
            let ending = settle(&mut rng, &mut alice, &mut bob, 4);
            check(
                &mut failures,
                &format!("simultaneous, delayed prekey messages, seed {seed}, reload {reload}"),
                &ending,
            );

            // Both re-initiate at once over S (both saw failures), with one
            // S message each in flight, delivered in the middle.
            let (mut rng, mut alice, mut bob) = talking(seed + 100);
            let old_a = alice.send(&mut rng, b"old from alice");
            let old_b = bob.send(&mut rng, b"old from bob");
            alice.initiate(&mut rng, &bob);
            bob.initiate(&mut rng, &alice);
            let pa = alice.send(&mut rng, b"pa");
            let pb = bob.send(&mut rng, b"pb");
            bob.receive(&mut rng, &a, &pa).unwrap();
            let _ = alice.receive(&mut rng, &b, &old_b);
            alice.receive(&mut rng, &b, &pb).unwrap();
            let _ = bob.receive(&mut rng, &a, &old_a);
            if reload {
                alice.reload();
                bob.reload();
            }
            let ending = settle(&mut rng, &mut alice, &mut bob, 4);
            check(&mut failures, &format!("both re-initiate, S in flight, seed {seed}, reload {reload}"), &ending);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Found broken (loud, but for ever), fixed: rule 4 brings a state back once
/// between heals and displaces the state it leaves, so the peer's next step
/// on the new session brings that one back. PROTOCOL.md 9.10: "the peer's new session
/// wins over the state it displaced unless the peer steps on that state
/// again (rule 4: a prekey message delayed until the peer had moved on)";
/// `promotes` rule 4: "the peer answered our latest message on it, so the
/// new session's prekey message was one it sent long ago"; 16.5 limits
/// the loud failures to "a delayed prekey message and a deliberate new
/// session cross in flight". Here no prekey message is delayed: one
/// ordinary message of the old session is, and rule 4 takes a step sent
/// *before* the new session for one sent after it.
///
/// 1. Alice and Bob talk on S; Bob's last message reached Alice.
/// 2. Alice replies on S (a DH step: a new chain), then starts a new
///    session N (her app's recovery, a new bundle ...). The network delays
///    her S message.
/// 3. Bob gets N's prekey message (N current, S displaced) and answers on
///    N; Alice's current N steps: she heals, S is cut on her side.
/// 4. The delayed S message reaches Bob: his displaced S may step, and rule 4
///    makes S current again.
/// 5. From now on every message fails on both sides: Bob sends on S, which
///    Alice no longer has; Alice sends on N with a new chain, which Bob's
///    archived N may not step to. Nothing recovers until one side starts yet
///    another session, and neither side has anything telling it to.
///
/// Without rule 4 (DESIGN.md's plain rule) the late message would be the
/// only loss. Suggested fix: do not apply rule 4 (nor let S step) once we
/// have sent on the displacing session, or once the peer stepped on it: the
/// peer then has our answer and heals on N, so a step on S can only be an
/// old message.
#[test]
fn audit2_3_one_late_message_of_the_old_session_does_not_deadlock_both_sides() {
    let mut failures = Vec::new();
    for seed in 3100..3104u64 {
        let (mut rng, mut alice, mut bob) = talking(seed);
        let (a, b) = (alice.address.clone(), bob.address.clone());
        let late = alice.send(&mut rng, b"late on S");
        alice.initiate(&mut rng, &bob);
        let p = alice.send(&mut rng, b"N");
        bob.receive(&mut rng, &a, &p).unwrap();
        let r = bob.send(&mut rng, b"bob on N");
        alice.receive(&mut rng, &b, &r).unwrap();
        assert!(all_archived_kept(&alice), "Alice healed on N");
        let late_result = bob.receive(&mut rng, &a, &late);
        let ending = settle(&mut rng, &mut alice, &mut bob, 4);
        if !(ending.same && ending.healed) {
            failures.push(format!(
                "seed {seed}: the late S message: {:?}; then {} of 8 messages refused, same session: {}",
                late_result.map(|p| String::from_utf8_lossy(&p).into_owned()),
                ending.refused.len(),
                ending.same
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "one reordered message of the old session left both sides unable to talk: {failures:#?}"
    );
}

// ---------------------------------------------------------------------------
// Claim 4: pending decryptions
// ---------------------------------------------------------------------------

/// A pending decryption commits only into the record object it was made on,
/// unchanged since: not into Bob's record of another peer at the same
/// generation, not into the same record reloaded, not after
/// `trust_identity` (even of the trusted key), not after an encryption, not
/// twice; it follows the object when the record is moved or swapped.
#[test]
fn audit2_4_pending_decryptions_commit_only_where_they_were_made() {
    let (mut rng, mut alice, mut bob) = talking(4000);
    let a = alice.address.clone();
    let mut carol = Party::new(&mut rng, "carol");
    // Bob's record of Carol at the generation of his record of Alice.
    let mut bobs_carol = SessionRecord::new();
    carol.initiate(&mut rng, &bob);
    let hello = carol.send(&mut rng, b"hello bob");
    bobs_carol.decrypt_and_commit(&mut rng, &bob.identity, &bob.address, &carol.address, &bob.prekeys, &hello).unwrap();
    let m1 = alice.send(&mut rng, b"m1");
    let m2 = alice.send(&mut rng, b"m2");
    let decrypt = |bob: &Party, wire: &[u8], rng: &mut ChaCha20Rng| {
        bob.record.decrypt(rng, &bob.identity, &bob.address, &a, &bob.prekeys, wire).unwrap()
    };

    // Another record.
    let pending = decrypt(&bob, &m1, &mut rng);
    let before = bobs_carol.to_bytes();
    assert_eq!(bobs_carol.commit(pending), Err(SessionError::StalePending));
    assert_eq!(*bobs_carol.to_bytes(), *before);
    // The same record reloaded.
    let pending = decrypt(&bob, &m1, &mut rng);
    bob.reload();
    let before = bob.record.to_bytes();
    assert_eq!(bob.record.commit(pending), Err(SessionError::StalePending));
    assert_eq!(*bob.record.to_bytes(), *before);
    // trust_identity of the trusted key.
    let pending = decrypt(&bob, &m1, &mut rng);
    bob.record.trust_identity(alice.identity.public_key());
    assert_eq!(bob.record.commit(pending), Err(SessionError::StalePending));
    // An encryption in between.
    let pending = decrypt(&bob, &m1, &mut rng);
    let _ = bob.send(&mut rng, b"in between");
    assert_eq!(bob.record.commit(pending), Err(SessionError::StalePending));
    // Two pending decryptions: only the first commits.
    let first = decrypt(&bob, &m1, &mut rng);
    let second = decrypt(&bob, &m2, &mut rng);
    bob.record.commit(first).unwrap();
    assert_eq!(bob.record.commit(second), Err(SessionError::StalePending));
    // Moved and swapped records: the pending follows the object.
    let to_carol = decrypt(&bob, &m2, &mut rng);
    let to_alice = decrypt(&bob, &m2, &mut rng);
    let mut moved = std::mem::take(&mut bob.record);
    std::mem::swap(&mut moved, &mut bobs_carol);
    assert_eq!(moved.commit(to_carol), Err(SessionError::StalePending), "Carol's record, now in `moved`");
    bobs_carol.commit(to_alice).unwrap();
    assert!(matches!(
        bobs_carol.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &m2),
        Err(SessionError::Decrypt(DecryptError::Duplicate { .. }))
    ));
}

/// A pending *new session* (the case of `audit_5`) made on an empty record
/// commits neither into a fresh empty record nor into the same empty record
/// saved and loaded again; and one made while another record (same peer,
/// another object) was empty does not commit once that record holds a
/// session either.
#[test]
fn audit2_4_pending_new_sessions_stay_with_their_object() {
    let mut rng = rng(4100);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    let a = alice.address.clone();
    let pending = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &first).unwrap();
    let mut reloaded = SessionRecord::from_bytes(&bob.record.to_bytes()).unwrap();
    assert_eq!(reloaded.commit(pending), Err(SessionError::StalePending));
    assert!(!reloaded.has_session());
    let pending = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &first).unwrap();
    let mut fresh = SessionRecord::new();
    assert_eq!(fresh.commit(pending), Err(SessionError::StalePending));
    // Two pending new sessions from one record: the second is stale.
    let p1 = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &first).unwrap();
    let p2 = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &first).unwrap();
    bob.record.commit(p1).unwrap();
    assert_eq!(bob.record.commit(p2), Err(SessionError::StalePending));
    let reply = bob.send(&mut rng, b"hi");
    assert_eq!(alice.receive(&mut rng, &bob.address.clone(), &reply).unwrap(), b"hi");
}

// ---------------------------------------------------------------------------
// Claim 6: the loader's checks (13.4: S8, S9, 8a, 9a, 9b)
// ---------------------------------------------------------------------------

/// Bob's record: current = an unanswered initiation (initiated 2), archived
/// = [an answered initiation (initiated 1), a kept state]; initiations 2.
fn record_with_every_kind() -> storage::SessionRecord {
    let (mut rng, mut alice, mut bob) = talking(6000);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    // A skipped key on S at Bob.
    let _lost = alice.send(&mut rng, b"lost");
    let m = alice.send(&mut rng, b"received");
    bob.receive(&mut rng, &a, &m).unwrap();
    bob.initiate(&mut rng, &alice);
    let p = bob.send(&mut rng, b"bob starts");
    alice.receive(&mut rng, &b, &p).unwrap();
    let r = alice.send(&mut rng, b"answer");
    bob.receive(&mut rng, &a, &r).unwrap(); // Bob's current steps: a heal, S is cut
    bob.initiate(&mut rng, &alice);
    let record = storage::SessionRecord::decode(bob.copy().as_slice()).unwrap();
    assert!(record.current.as_ref().unwrap().pending_prekey.is_some());
    assert_eq!(record.current.as_ref().unwrap().initiated, 2);
    assert_eq!(record.archived.len(), 2);
    assert!(record.archived[0].ratchet.is_some() && record.archived[0].initiator);
    assert_eq!(record.archived[0].initiated, 1);
    assert!(record.archived[1].kept.is_some());
    assert_eq!(record.initiations, 2);
    assert!(record.archived[1].kept_since <= record.heals);
    record
}

fn load(record: &storage::SessionRecord) -> Result<SessionRecord, DecodeError> {
    SessionRecord::from_bytes(&record.encode_to_vec())
}

#[test]
fn audit2_6_the_loader_refuses_records_that_break_the_invariants_of_9_1() {
    let base = record_with_every_kind();
    assert!(load(&base).is_ok(), "control");
    type Mutation = Box<dyn Fn(&mut storage::SessionRecord)>;
    let cases: Vec<(&str, Mutation, DecodeError)> = vec![
        (
            "S9 before 8a: a displaced current unanswered initiation",
            Box::new(|r| r.current.as_mut().unwrap().displaced = true),
            DecodeError::InvalidValue("displaced"),
        ),
        (
            "8a: a displaced current state",
            Box::new(|r| {
                let c = r.current.as_mut().unwrap();
                c.pending_prekey = None;
                c.displaced = true;
            }),
            DecodeError::InvalidValue("current"),
        ),
        (
            "8a: a kept current state",
            Box::new(|r| r.current = Some(r.archived[1].clone())),
            DecodeError::InvalidValue("current"),
        ),
        (
            "S8: initiated on a responder (archived)",
            Box::new(|r| r.archived[0].initiator = false),
            DecodeError::InvalidValue("initiated"),
        ),
        (
            "S8 before 8a: a displaced current responder with initiated",
            Box::new(|r| {
                let c = r.current.as_mut().unwrap();
                c.pending_prekey = None;
                c.initiator = false;
                c.displaced = true;
            }),
            DecodeError::InvalidValue("initiated"),
        ),
        (
            "9b: initiated above initiations (archived)",
            Box::new(|r| r.archived[0].initiated = 3),
            DecodeError::InvalidValue("initiated"),
        ),
        (
            "9b: initiated above initiations (current)",
            Box::new(|r| r.initiations = 1),
            DecodeError::InvalidValue("initiated"),
        ),
        (
            "S9: a displaced kept state",
            Box::new(|r| r.archived[1].displaced = true),
            DecodeError::InvalidValue("displaced"),
        ),
        (
            "9a before 9b",
            Box::new(|r| {
                r.archived[1].kept_since = r.heals + 1;
                r.archived[0].initiated = 3;
            }),
            DecodeError::InvalidValue("kept_since"),
        ),
        (
            "S9 on an archived unanswered initiation",
            Box::new(|r| {
                let current = r.current.take().unwrap();
                r.current = Some(r.archived[0].clone());
                r.archived[0] = current;
                r.archived[0].displaced = true;
            }),
            DecodeError::InvalidValue("displaced"),
        ),
    ];
    for (label, mutate, expected) in cases {
        let mut record = base.clone();
        mutate(&mut record);
        assert_eq!(load(&record).err(), Some(expected), "{label}");
    }
    // Valid: a displaced archived full answered state; an initiator state
    // of a record written before initiations were counted.
    let mut record = base.clone();
    record.archived[0].displaced = true;
    let loaded = load(&record).unwrap();
    assert_eq!(*loaded.to_bytes(), record.encode_to_vec()[..], "round trip");
    let mut record = base.clone();
    record.current.as_mut().unwrap().initiated = 0;
    record.archived[0].initiated = 0;
    record.initiations = 0;
    assert!(load(&record).is_ok());
}

// ---------------------------------------------------------------------------
// Claim 5: the temporary name of a new store (`<path>.samizdat-new`)
// ---------------------------------------------------------------------------

mod store {
    use std::path::{Path, PathBuf};

    use std::time::UNIX_EPOCH;

    use samizdat::{
        address::Address,
        device::{Device, DeviceError},
        store::StorageKey,
    };

    pub(crate) const KEY: StorageKey = StorageKey::from_bytes([0x5a; 32]);

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("samizdat-audit2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The temporary name the audited release used (one per store), and
    /// the names the fixed release tries first in this process
    /// (`<path>.samizdat-new-<pid>-<n>`).
    pub(crate) fn building(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".samizdat-new");
        PathBuf::from(name)
    }

    pub(crate) fn building_names(path: &Path, count: u64) -> Vec<PathBuf> {
        (0..count)
            .map(|n| {
                let mut name = path.as_os_str().to_owned();
                name.push(format!(".samizdat-new-{}-{n}", std::process::id()));
                PathBuf::from(name)
            })
            .collect()
    }

    pub(crate) fn alice() -> Address {
        Address::new("alice", 1).unwrap()
    }

    pub(crate) fn open_or_create(path: &Path, address: Address) -> Result<Device, DeviceError> {
        Device::open_or_create(path, &KEY, address, UNIX_EPOCH)
    }
}

/// Found broken (fixed: a temporary name is created exclusively, so nothing
/// planted there is ever opened; each creation uses its own name). A symbolic link planted at `<path>.samizdat-new` (by anyone who
/// can write in the app's directory before the first start; or left there by
/// a backup or sync tool) decides where the new store lives:
///
/// 1. `SqliteBackend::create_new` opens `<path>.samizdat-new`; SQLite follows
///    the link and creates the database at its target (here: a file in
///    another directory, which the planter chose).
/// 2. `std::fs::hard_link(<path>.samizdat-new, path)` does not follow a
///    symbolic link on Linux (`linkat` without `AT_SYMLINK_FOLLOW`): `path`
///    becomes a second name *of the link*, and the temporary name is removed.
/// 3. The device opens through `path`, a symbolic link, which 14.8 accepts:
///    the identity, prekeys and sessions are written to the target, with
///    its `-wal` and `-shm` beside it, outside the app's directory.
///
/// The comment of `create_new` says the temporary file is "reused if a crash
/// left one: `build` sees what it holds": a symbolic link is not something a
/// crash leaves. Suggested fix: open the temporary name with `O_NOFOLLOW`
/// (SQLite: `SQLITE_OPEN_NOFOLLOW`, or `symlink_metadata` first and remove
/// anything that is not a regular file), and link with the file's own name.
#[cfg(unix)]
#[test]
fn audit2_5_a_symlink_at_a_temporary_name_is_never_followed() {
    let dir = store::temp_dir("symlink");
    let elsewhere = store::temp_dir("symlink-target");
    let path = dir.join("device.db");
    let target = elsewhere.join("planted.db");
    // At the name the audited release used, and at the first names this
    // process would try now.
    std::os::unix::fs::symlink(&target, store::building(&path)).unwrap();
    for name in store::building_names(&path, 4) {
        std::os::unix::fs::symlink(&target, name).unwrap();
    }
    let result = store::open_or_create(&path, store::alice());
    let path_is_a_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    let at_target = target.exists();
    let secure = !at_target && !path_is_a_link;
    assert!(
        secure,
        "open_or_create returned {:?}; the store was created at the planted target {} (exists: {at_target}); \
         {} is a symbolic link: {path_is_a_link}",
        result.as_ref().map(|d| d.address().clone()).map_err(|e| format!("{e:?}")),
        target.display(),
        path.display(),
    );
}

/// A directory at a temporary name (the audited release's, or one this
/// process would try): left alone, with what it holds; the store is made
/// under another name.
#[cfg(unix)]
#[test]
fn audit2_5_a_directory_at_a_temporary_name_is_left_alone() {
    let dir = store::temp_dir("directory");
    let path = dir.join("device.db");
    let mut planted = store::building_names(&path, 2);
    planted.push(store::building(&path));
    for name in &planted {
        std::fs::create_dir(name).unwrap();
        std::fs::write(name.join("keep"), b"user data").unwrap();
    }
    let device = store::open_or_create(&path, store::alice()).unwrap();
    assert_eq!(device.address(), &store::alice());
    for name in &planted {
        assert_eq!(std::fs::read(name.join("keep")).unwrap(), b"user data");
    }
}

/// What a crash leaves at a temporary name is never taken for the store: a
/// complete device there (even the one asked for: it was never handed out,
/// since a creation returns only once its store is named) is not reused; a
/// second name left by a kill between link and unlink is removed on open.
#[test]
fn audit2_5_leftovers_at_the_temporary_name() {
    let dir = store::temp_dir("leftover-same");
    let path = dir.join("device.db");
    let leftover = store::building_names(&path, 1).pop().unwrap();
    let left = store::open_or_create(&leftover, store::alice()).unwrap();
    let identity = left.identity_key();
    drop(left);
    let device = store::open_or_create(&path, store::alice()).unwrap();
    assert_ne!(device.identity_key(), identity, "a leftover is not the store");
    drop(device);
    // Killed between link and unlink: two names; open removes the second.
    let dir = store::temp_dir("leftover-linked");
    let path = dir.join("device.db");
    let device = store::open_or_create(&path, store::alice()).unwrap();
    let identity = device.identity_key();
    drop(device);
    let second = store::building_names(&path, 1).pop().unwrap();
    std::fs::hard_link(&path, &second).unwrap();
    let device = samizdat::device::Device::open(&path, &store::KEY).unwrap();
    assert_eq!(device.identity_key(), identity);
    assert!(!second.exists());
}

/// Found broken (fixed: each creation builds under a name of its own and no
/// other creator opens it). Two handles creating one store at once used to
/// share the temporary name: one removed the other's log while it was open
/// (`SQLITE_IOERR_SHORT_READ`), and could leave `path` naming a store without
/// a device. The same race slowed down: a connection holding a read
/// transaction on a temporary name, as a second creator's build would.
/// The creation goes on under its own name and succeeds; `path` holds the
/// device.
#[test]
fn audit2_5_a_second_creator_in_its_build_does_not_disturb_a_creation() {
    let dir = store::temp_dir("race");
    let path = dir.join("device.db");
    let mut busy = store::building_names(&path, 1);
    busy.push(store::building(&path));
    let others: Vec<_> = busy
        .iter()
        .map(|name| {
            let other = rusqlite::Connection::open(name).unwrap();
            let mode: String = other.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)).unwrap();
            assert_eq!(mode, "wal");
            other.execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;").unwrap();
            other
        })
        .collect();
    let first = store::open_or_create(&path, store::alice()).map(|d| d.identity_key());
    for other in others {
        other.execute_batch("COMMIT;").unwrap();
    }
    let again = samizdat::device::Device::open(&path, &store::KEY).map(|d| d.identity_key());
    assert!(
        first.is_ok() && first.as_ref().ok() == again.as_ref().ok(),
        "with another creator's connection open: open_or_create gave {first:?}; opening the store afterwards \
         gives {again:?}",
    );
}

/// Found broken, fixed (a DH step drops the closed chain's skipped keys at
/// and past the header's PN). 9.10 point 1 and 16.2: after the heal nothing of a copy gets a
/// message accepted "except the keys of messages already sent when it was
/// made", which 16.2 bounds by "the counter at which the peer closed it (its
/// `PN`)". Keys the attacker makes Bob *store* before the heal are not so
/// bounded:
///
/// 1. Bob receives Alice's message on her chain C; the attacker copies Bob.
/// 2. Bob replies; Alice steps and sends on a new chain, closing C at `PN`
///    (she never sends on C again).
/// 3. Before that message reaches Bob, the attacker delivers a forgery on C
///    (copied chain key) at counter `PN + 1,999`: Bob's current state
///    decrypts it and stores skipped keys for every counter from `PN` on.
/// 4. Alice's message arrives: Bob's current state steps (a heal) and keeps
///    C's skipped keys, although the header says C ended at `PN`. Round
///    trips follow; Bob heals again and again.
/// 5. After the heals, the attacker gets forgeries accepted under counters
///    `PN ..` (up to `MAX_SKIP` = 2,000 of them), none of which Alice ever
///    sent, as long as C stays among Bob's receiving chains.
///
/// Suggested fix: at a DH step, drop the skipped keys of the closed chain at
/// and past the header's `PN` (no genuine message has them); and document
/// that keys planted before the heal outlive it otherwise.
#[cfg(feature = "hazmat")]
#[test]
fn audit2_2_keys_planted_past_pn_before_the_heal_are_dropped_at_it() {
    let (mut rng, mut alice, mut bob) = talking(2600);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let m = alice.send(&mut rng, b"on chain C");
    bob.receive(&mut rng, &a, &m).unwrap();
    let copy = bob.copy();
    let c = attacker::receiving(&copy, &bob.current());
    let r = bob.send(&mut rng, b"bob");
    alice.receive(&mut rng, &b, &r).unwrap();
    let next = alice.send(&mut rng, b"alice on a new chain: PN closes C"); // PN = c.counter
    let planted = attacker::forge(&mut rng, &c, c.counter + 1_999, b"planted");
    let planted_result = bob.receive(&mut rng, &a, &planted.to_bytes());
    bob.receive(&mut rng, &a, &next).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    let mut accepted = Vec::new();
    for counter in [c.counter, c.counter + 1, c.counter + 2, c.counter + 1_000, c.counter + 1_998] {
        let forged = attacker::forge(&mut rng, &c, counter, b"after the heal");
        if bob.receive(&mut rng, &a, &forged.to_bytes()).is_ok() {
            accepted.push(counter);
        }
    }
    assert!(
        accepted.is_empty(),
        "before the heal the attacker's message at counter {} was {:?}; after two round trips (Bob healed) Bob \
         accepted forgeries at counters {accepted:?}, all at or past C's PN = {}: Alice never sent them",
        c.counter + 1_999,
        planted_result.map(|_| "accepted"),
        c.counter
    );
}
