//! An outside audit (by a helper) of 9d6fd02, the header's left-answered
//! flag (PROTOCOL.md 4.4, 9.6 rule 2, 9.9 "A crossing answered before it
//! arrives", 9.10). An attacker holds a copy of one side's record (a seized
//! phone: it forges any message a state of the copy can make, the flag
//! included) and the network (drop, delay, reorder, replay). Tests named
//! `held_*` are defences that held; an attack that works is a test that
//! fails, marked `#[ignore = "finding: ..."]`.
//!
//! What is here:
//! 1. the crossing of 9.9 at the session layer, with every record reloaded
//!    byte for byte, the flag observed on the wire and dropped at the heal,
//!    and late messages of the session that was left;
//! 2. forged flagged messages from a copy: how often they move `current`
//!    (9.10 point 2), and what they cost;
//! 3. the loader's checks S11, S12, 9c and 9d (13.4);
//! 4. the crossing through `Device` (two `start_session`s, crossing resets
//!    with kept messages, a store restored into the crossing, a group's
//!    distribution as the first flagged message);
//! 5. failed decryptions on the flag's paths change nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
#![cfg_attr(not(feature = "hazmat"), allow(dead_code, unused_imports))]

mod support;

use chacha20::ChaCha20Rng;
use prost::Message as _;
use samizdat::{
    DecodeError, DecryptError, ErrorKind, Recovery, SessionError,
    address::Address,
    device::{Device, Heal, HealPolicy},
    session::SessionRecord,
    store::{Backend, MemoryBackend, StorageKey, Table},
    wire::{Message, RatchetMessage},
};
use samizdat_proto::storage;
use std::time::{Duration, UNIX_EPOCH};
#[cfg(feature = "hazmat")]
use support::attacker;
use support::{
    Got, copy_of, memory_device as device,
    party::{Party, round_trip},
    receive_kind as receive, rng,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn ratchet_of(wire: &[u8]) -> RatchetMessage {
    match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m,
        Message::PreKey(p) => p.message().clone(),
    }
}

/// The record saved and loaded again must encode to the same bytes, and
/// the party goes on with the loaded one (an app restart at every step).
fn reload_exact(party: &mut Party, at: &str) {
    let bytes = party.record.to_bytes();
    let loaded = SessionRecord::from_bytes(&bytes).unwrap_or_else(|e| panic!("{at}: the record does not load: {e:?}"));
    assert_eq!(*loaded.to_bytes(), *bytes, "{at}: reloading changed the record");
    party.record = loaded;
}

/// The stored form of a record (the protobuf), to look at its flags.
fn stored(party: &Party) -> storage::SessionRecord {
    storage::SessionRecord::decode(party.record.to_bytes().as_slice()).unwrap()
}

fn flags_of(state: &storage::SessionState) -> (bool, bool) {
    (state.left_answered, state.followed)
}

/// The current state's flags `(left_answered, followed)`.
fn current_flags(party: &Party) -> (bool, bool) {
    flags_of(stored(party).current.as_ref().unwrap())
}

/// Whether no archived state is full (every other state was cut by a heal).
fn healed(party: &Party) -> bool {
    party.record.archived_states() == party.record.kept_states()
}

/// The header flag of a message sent on `chain` (a sending chain read out
/// of a copy of the sender's record before it sent).
#[cfg(feature = "hazmat")]
fn flag_on(chain: &attacker::Chain, wire: &[u8]) -> Option<bool> {
    let message = ratchet_of(wire);
    samizdat::hazmat::open_header(&chain.header_key, message.header(), &chain.ad).map(|(_, _, _, flag)| flag)
}

/// A message sealed by hand on `chain` at `counter`, with the header flag
/// `flag` (what a holder of the chain's keys can make; `attacker::seal`
/// without the fixed `false`).
#[cfg(feature = "hazmat")]
fn seal_flagged(rng: &mut ChaCha20Rng, chain: &attacker::Chain, counter: u32, flag: bool, text: &[u8]) -> Vec<u8> {
    use chacha20poly1305::{
        ChaCha20Poly1305, KeyInit, Nonce,
        aead::{Aead, Payload},
    };
    use rand_core::Rng;
    use samizdat::hazmat;
    let mut ck = chain.chain_key;
    for _ in chain.counter..counter {
        ck = hazmat::chain_step(&ck).1;
    }
    let seed = hazmat::chain_step(&ck).0;
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let header = hazmat::seal_header(&chain.header_key, nonce, (&chain.ratchet_key, 0, counter), flag, &chain.ad);
    let (key, body_nonce) = hazmat::message_key(&seed, &nonce);
    let mut aad = chain.ad.clone();
    aad.extend_from_slice(&header);
    let body = ChaCha20Poly1305::new_from_slice(&key)
        .unwrap()
        .encrypt(&Nonce::from(body_nonce), Payload { msg: &hazmat::pad(text).unwrap(), aad: &aad })
        .unwrap();
    hazmat::ratchet_message(header, body).to_bytes()
}

/// The crossing of 9.9 "answered before it arrives", at the session layer:
/// Alice initiates S (`pa`), Bob initiates N (`pb`); Bob reads `pa` and
/// answers on S (`ra`, and `ra2` which stays in flight); Alice reads `ra`
/// (S answered), then `pb`: she installs N, which carries the flag.
struct Crossed {
    rng: ChaCha20Rng,
    alice: Party,
    bob: Party,
    /// Bob's second message on S, sent before he follows Alice to N.
    ra2: Vec<u8>,
    ea: [u8; 32],
    eb: [u8; 32],
}

fn crossed(seed: u64) -> Crossed {
    crossed_with(seed, false)
}

/// As [`crossed`]; with `gap`, Bob also sends `ra3` on S, which Alice
/// reads before `pb`, so that her S holds the skipped key of `ra2`.
fn crossed_with(seed: u64, gap: bool) -> Crossed {
    let mut rng = rng(seed);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let pa = alice.send(&mut rng, b"pa");
    bob.initiate(&mut rng, &alice);
    let pb = bob.send(&mut rng, b"pb");
    let (ea, eb) = (alice.current(), bob.current());
    reload_exact(&mut alice, "alice initiated");
    reload_exact(&mut bob, "bob initiated");
    assert_eq!(bob.receive(&mut rng, &a, &pa).unwrap(), b"pa");
    reload_exact(&mut bob, "bob read pa");
    let ra = bob.send(&mut rng, b"ra");
    let ra2 = bob.send(&mut rng, b"ra2");
    assert_eq!(alice.receive(&mut rng, &b, &ra).unwrap(), b"ra");
    reload_exact(&mut alice, "alice read ra");
    if gap {
        let ra3 = bob.send(&mut rng, b"ra3");
        assert_eq!(alice.receive(&mut rng, &b, &ra3).unwrap(), b"ra3");
    }
    assert_eq!(alice.receive(&mut rng, &b, &pb).unwrap(), b"pb");
    reload_exact(&mut alice, "alice read pb");
    assert_eq!(alice.current(), eb);
    assert_eq!(current_flags(&alice), (true, false), "Alice left an answered S for N: N carries the flag");
    Crossed { rng, alice, bob, ra2, ea, eb }
}

// ---------------------------------------------------------------------------
// 1. The crossing at the session layer
// ---------------------------------------------------------------------------

/// Held: in the crossing of 9.9 (both orders of the base keys), Alice's
/// messages on N carry the flag, delivered out of order too; Bob follows
/// (N current, `followed`), his answer heals Alice and her next message
/// has no flag and heals Bob; Bob's late message of S, delivered after
/// Bob followed and again after the heals, moves nobody. Every record
/// along the way reloads and encodes to the same bytes.
#[cfg(feature = "hazmat")]
#[test]
fn held_the_flag_is_sent_until_the_peers_step_and_records_reload_exactly() {
    let mut seen = [false, false];
    for seed in 7_000..7_064 {
        let Crossed { mut rng, mut alice, mut bob, ra2, ea, eb } = crossed(seed);
        let (a, b) = (alice.address.clone(), bob.address.clone());
        seen[usize::from(ea < eb)] = true;
        let on_n = attacker::sending(&alice.copy(), &eb);
        let a1 = alice.send(&mut rng, b"a1");
        let a2 = alice.send(&mut rng, b"a2");
        reload_exact(&mut alice, "alice sent on N");
        assert_eq!(flag_on(&on_n, &a1), Some(true), "seed {seed}");
        assert_eq!(flag_on(&on_n, &a2), Some(true), "seed {seed}");
        // The second first: it is Bob's DH step all the same.
        assert_eq!(bob.receive(&mut rng, &a, &a2).unwrap(), b"a2");
        assert_eq!(bob.current(), eb, "seed {seed}: Bob follows Alice to N");
        assert_eq!(current_flags(&bob), (false, true), "seed {seed}");
        reload_exact(&mut bob, "bob followed");
        assert_eq!(bob.receive(&mut rng, &a, &a1).unwrap(), b"a1");
        // Bob's late message on S: rule 6 must not take Alice off N.
        assert_eq!(alice.receive(&mut rng, &b, &ra2).unwrap(), b"ra2");
        assert_eq!(alice.current(), eb, "seed {seed}: a late message of S undid the flag");
        reload_exact(&mut alice, "alice read ra2");
        let b1 = bob.send(&mut rng, b"b1");
        assert_eq!(alice.receive(&mut rng, &b, &b1).unwrap(), b"b1");
        assert!(healed(&alice), "seed {seed}: Bob's step on N heals Alice");
        assert_eq!(current_flags(&alice), (false, false), "seed {seed}: the heal drops the flag");
        reload_exact(&mut alice, "alice healed");
        let after = attacker::sending(&alice.copy(), &eb);
        let a3 = alice.send(&mut rng, b"a3");
        assert_eq!(flag_on(&after, &a3), Some(false), "seed {seed}: no flag after the heal");
        assert_eq!(bob.receive(&mut rng, &a, &a3).unwrap(), b"a3");
        assert!(healed(&bob), "seed {seed}");
        assert_eq!(current_flags(&bob), (false, false), "seed {seed}");
        reload_exact(&mut bob, "bob healed");
        // A replay of a flagged message, after both heals: a duplicate (its
        // key was used), nothing moves.
        let before = bob.record.to_bytes();
        assert!(bob.receive(&mut rng, &a, &a2).is_err());
        assert_eq!(*bob.record.to_bytes(), *before);
        round_trip(&mut rng, &mut alice, &mut bob, 2);
        assert_eq!((alice.current(), bob.current()), (eb, eb), "seed {seed}");
        if seen == [true, true] {
            return;
        }
    }
    panic!("both orders of the base keys not seen: {seen:?}");
}

/// Held: Bob's late message of S delivered to Alice *before* she has sent
/// anything on N (the window where Alice's N is current with the flag and
/// S is displaced and answered): Alice stays on N, her first message on N
/// still has the flag, and the pair converges on N.
#[cfg(feature = "hazmat")]
#[test]
fn held_a_late_message_of_the_left_session_before_alice_sends_moves_nothing() {
    for seed in 7_100..7_116 {
        let Crossed { mut rng, mut alice, mut bob, ra2, eb, .. } = crossed(seed);
        let (a, b) = (alice.address.clone(), bob.address.clone());
        assert_eq!(alice.receive(&mut rng, &b, &ra2).unwrap(), b"ra2");
        assert_eq!(alice.current(), eb, "seed {seed}");
        let on_n = attacker::sending(&alice.copy(), &eb);
        let a1 = alice.send(&mut rng, b"a1");
        assert_eq!(flag_on(&on_n, &a1), Some(true));
        bob.receive(&mut rng, &a, &a1).unwrap();
        round_trip(&mut rng, &mut bob, &mut alice, 2);
        assert_eq!((alice.current(), bob.current()), (eb, eb), "seed {seed}");
        assert!(healed(&alice) && healed(&bob), "seed {seed}");
    }
}

/// Alice sent two prekey messages on S (`pa`, `pa2`) before Bob's answer;
/// `pa2` is delayed by the network until Bob has followed Alice to N. Run
/// for both orders of the base keys: returns, per order, whether the pair
/// ended on one session, healed, after ten exchanges in which every
/// message was read.
fn late_second_prekey_message(seed: u64) -> (bool, Result<(), String>) {
    let mut rng = rng(seed);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let pa = alice.send(&mut rng, b"pa");
    let pa2 = alice.send(&mut rng, b"pa2");
    bob.initiate(&mut rng, &alice);
    let pb = bob.send(&mut rng, b"pb");
    let (ea, eb) = (alice.current(), bob.current());
    bob.receive(&mut rng, &a, &pa).unwrap();
    let ra = bob.send(&mut rng, b"ra");
    alice.receive(&mut rng, &b, &ra).unwrap();
    alice.receive(&mut rng, &b, &pb).unwrap();
    let a1 = alice.send(&mut rng, b"a1");
    bob.receive(&mut rng, &a, &a1).unwrap();
    assert_eq!(bob.current(), eb, "Bob follows");
    // The late prekey message of S.
    assert_eq!(bob.receive(&mut rng, &a, &pa2).unwrap(), b"pa2");
    let bob_after = bob.current();
    let mut log = Vec::new();
    for i in 0..10 {
        let m = alice.send(&mut rng, format!("a{i}").as_bytes());
        if let Err(e) = bob.receive(&mut rng, &a, &m) {
            return (ea < eb, Err(format!("a{i} at Bob: {e:?}")));
        }
        let m = bob.send(&mut rng, format!("b{i}").as_bytes());
        if let Err(e) = alice.receive(&mut rng, &b, &m) {
            return (ea < eb, Err(format!("b{i} at Alice: {e:?}")));
        }
        log.push((alice.current() == ea, bob.current() == ea));
    }
    if alice.current() == bob.current() && healed(&alice) && healed(&bob) {
        (ea < eb, Ok(()))
    } else {
        (
            ea < eb,
            Err(format!(
                "after pa2 Bob on {}; after ten exchanges, every message read, Alice on {}, Bob on {} \
                 (Alice healed: {}, Bob healed: {}); no DH step was ever taken again",
                if bob_after == ea { "S" } else { "N" },
                if alice.current() == ea { "S" } else { "N" },
                if bob.current() == ea { "S" } else { "N" },
                healed(&alice),
                healed(&bob),
            )),
        )
    }
}

/// **Finding: a late second prekey message of Alice's initiation S takes
/// Bob off the session he followed (rule 5), and when S's base key is the
/// smaller, the pair never takes a DH step again: every message is read
/// (each side reads the other on an archived state's old chain), so
/// nothing is `out_of_step` and no app heals, but neither session ever
/// heals (post-compromise security lost for the pair, the very outcome
/// 9.9 says the flag prevents).**
///
/// 1. Alice initiates S and sends two prekey messages (`pa`, `pa2`); Bob
///    initiates N (`pb`). Bob reads `pa`, answers on S (`ra`); Alice reads
///    `ra`, then `pb`: she installs N with the flag.
/// 2. Alice's first message on N reaches Bob: rule 2 with the flag, Bob
///    follows to N (`followed`).
/// 3. The network delivers `pa2` now. It goes to Bob's archived S (9.5 step
///    2) with a prekey header; S is a responder state with one receiving
///    chain that never came back: rule 5 makes it current again
///    (`followed` forbids rule 6 only).
/// 4. Bob now sends on S's old sending chain (the chain of `ra`), which
///    Alice reads on her archived, displaced S without a step; Alice sends
///    on N's chain (flagged, unchanged), which Bob reads on his archived N
///    without a step. With `ea < eb` rule 6 does not bring Bob back to N,
///    and Alice's `left_answered` keeps her off S. Nothing steps again.
///
/// Suggested fix: rule 5 must not leave a `followed` current state either
/// (or: rule 5 needs the state not to have been answered by us after the
/// peer's flagged answer; at least `!current.followed` like rule 6). The
/// peer's flagged DH step says the peer left S for N after hearing from
/// us on S, so any later prekey message of S was sent before it.
///
/// Fixed (the second form): rule 5 does not leave a `followed` current
/// state for a state we answered (PROTOCOL.md 9.6, 9.9). Blocking it for
/// every state made a follow on a late flagged answer stick
/// (`regression_two_initiations_of_bob_crossing_alices_converge`).
#[test]
fn finding_a_late_second_prekey_message_undoes_the_follow_and_nothing_heals() {
    let mut failures = Vec::new();
    let mut seen = [false, false];
    for seed in 7_600..7_632 {
        let (smaller_first, result) = late_second_prekey_message(seed);
        if std::env::var_os("AUDIT_TRACE").is_some() {
            eprintln!("seed {seed}: ea < eb {smaller_first}: {result:?}");
        }
        seen[usize::from(smaller_first)] = true;
        if let Err(e) = result {
            failures.push((seed, smaller_first, e));
        }
    }
    assert_eq!(seen, [true, true]);
    assert!(failures.is_empty(), "{} of 32 seeds: {failures:#?}", failures.len());
}

// ---------------------------------------------------------------------------
// 2. Forged flags from a copy of a record
// ---------------------------------------------------------------------------

/// Simultaneous initiation, `ea < eb`: without an attacker both converge
/// on S (rule 2, the smaller base key; no message has the flag). Alice has
/// read `pb` (N current, S archived unanswered); the attacker copied her
/// record then (it holds N's sending chain). Bob has read `pa` (S current,
/// N archived, unanswered) and sent `ra` on S, in flight to Alice.
struct Simultaneous {
    rng: ChaCha20Rng,
    alice: Party,
    bob: Party,
    ra: Vec<u8>,
    ea: [u8; 32],
    eb: [u8; 32],
    copy: Vec<u8>,
}

fn simultaneous(first_seed: u64) -> Simultaneous {
    for seed in first_seed..first_seed + 64 {
        let mut rng = rng(seed);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        let pa = alice.send(&mut rng, b"pa");
        bob.initiate(&mut rng, &alice);
        let pb = bob.send(&mut rng, b"pb");
        let (ea, eb) = (alice.current(), bob.current());
        if ea >= eb {
            continue;
        }
        alice.receive(&mut rng, &b, &pb).unwrap();
        assert_eq!(current_flags(&alice), (false, false), "S was unanswered: no flag");
        let copy = alice.copy();
        bob.receive(&mut rng, &a, &pa).unwrap();
        let ra = bob.send(&mut rng, b"ra");
        return Simultaneous { rng, alice, bob, ra, ea, eb, copy };
    }
    unreachable!("one seed in 64 gives ea < eb")
}

/// Held (9.10 point 2, rule 2 with the flag): one message forged from a
/// copy of Alice's record, on N's sending chain with the flag, moves Bob
/// to N although its base key is the larger (what the flag adds: "at most
/// that one promotion ... for the larger base key too"). It moves him
/// once: further forged messages, flagged or not, on that chain or as
/// replays, move nothing, and none brings S back (`followed` keeps rule 6
/// off). What it costs the pair: when Bob's answer on S (`ra`) was already
/// in flight, Alice goes to S by rule 2 while Bob stays on N: each side's
/// next DH step is `NoMatchingState` at the other (code `out_of_step`,
/// recovery `heal`), and a new session converges. Without the flag the
/// same forgery moves nothing (control).
#[cfg(feature = "hazmat")]
#[test]
fn held_a_forged_flag_moves_an_unanswered_initiation_once_and_a_heal_recovers() {
    // Control: the same forgery without the flag moves nothing.
    {
        let Simultaneous { mut rng, mut bob, alice, ea, eb, copy, .. } = simultaneous(7_200);
        let a = alice.address.clone();
        let chain = attacker::sending(&copy, &eb);
        let forged = seal_flagged(&mut rng, &chain, 3, false, b"forged, no flag");
        assert_eq!(bob.receive(&mut rng, &a, &forged).unwrap(), b"forged, no flag");
        assert_eq!(bob.current(), ea, "control: without the flag the larger base key does not win");
    }
    let Simultaneous { mut rng, mut alice, mut bob, ra, ea, eb, copy } = simultaneous(7_200);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let chain = attacker::sending(&copy, &eb);
    let forged = seal_flagged(&mut rng, &chain, 3, true, b"forged, flagged");
    assert_eq!(bob.receive(&mut rng, &a, &forged).unwrap(), b"forged, flagged");
    assert_eq!(bob.current(), eb, "the flag moved Bob to the larger base key");
    assert_eq!(current_flags(&bob), (false, true));
    let mut moves = 1;
    let mut last = bob.current();
    // More forgeries: later counters flagged and not, a replay, a lower
    // counter (a skipped key).
    for (counter, flag) in [(4, true), (5, false), (9, true), (0, true)] {
        let m = seal_flagged(&mut rng, &chain, counter, flag, b"again");
        let _ = bob.receive(&mut rng, &a, &m);
        if bob.current() != last {
            moves += 1;
            last = bob.current();
        }
    }
    let _ = bob.receive(&mut rng, &a, &forged);
    // Genuine messages of S that Alice sent before (her `pa` again: a
    // duplicate), and Bob's rule 6 looking at S (smaller): nothing moves.
    assert_eq!(moves, 1, "forged flagged messages moved Bob {moves} times");
    assert_eq!(bob.current(), eb);
    // The genuine peer: Alice reads `ra` and goes to S (rule 2, smaller).
    alice.receive(&mut rng, &b, &ra).unwrap();
    assert_eq!(alice.current(), ea);
    let from_alice = alice.send(&mut rng, b"alice on S");
    let at_bob = bob.receive(&mut rng, &a, &from_alice).unwrap_err();
    assert_eq!(at_bob, SessionError::Decrypt(DecryptError::NoMatchingState));
    assert_eq!((at_bob.kind(), at_bob.kind().recovery()), (ErrorKind::OutOfStep, Recovery::Heal));
    let from_bob = bob.send(&mut rng, b"bob on N");
    // The copy reads what Bob sends on N until the heal (it holds Alice's
    // ratchet key of N): what the copy always gave before the heal (9.10.3).
    let at_alice = alice.receive(&mut rng, &b, &from_bob).unwrap_err();
    assert_eq!(at_alice.kind(), ErrorKind::OutOfStep);
    assert_eq!(bob.current(), eb);
    // Bob's app heals: a new session; Alice installs it; converged and healed.
    bob.initiate(&mut rng, &alice);
    let reset = bob.send(&mut rng, b"reset");
    alice.receive(&mut rng, &b, &reset).unwrap();
    round_trip(&mut rng, &mut alice, &mut bob, 2);
    assert_eq!(alice.current(), bob.current());
    assert!(healed(&alice) && healed(&bob));
    // After the heal, the copy's chain is useless: a forged flagged message
    // on it moves nothing.
    let now = bob.current();
    let late = seal_flagged(&mut rng, &chain, 20, true, b"after the heal");
    assert!(bob.receive(&mut rng, &a, &late).is_err());
    assert_eq!(bob.current(), now);
}

/// Held (9.10 point 2, interleaving): with a copy of Alice's record taken
/// in the crossing (it holds N with the flag, and S), the attacker
/// delivers, before each genuine message of Alice's, one forged message
/// on every chain the copy can send on, flagged and not. Bob's current
/// moves at most once, and he heals on Alice's second genuine message at
/// the latest; after that nothing forged moves him.
#[cfg(feature = "hazmat")]
#[test]
fn held_interleaved_forged_flags_do_not_postpone_the_heal() {
    for seed in 7_300..7_316 {
        let Crossed { mut rng, mut alice, mut bob, ea, eb, .. } = crossed(seed);
        let a = alice.address.clone();
        let b = bob.address.clone();
        let copy = alice.copy();
        let chains: Vec<attacker::Chain> = [ea, eb]
            .iter()
            .filter_map(|k| {
                let record = storage::SessionRecord::decode(copy.as_slice()).unwrap();
                let has = record
                    .current
                    .iter()
                    .chain(record.archived.iter())
                    .any(|s| s.base_key.as_slice() == k && s.ratchet.as_ref().is_some_and(|r| r.sending.is_some()));
                has.then(|| attacker::sending(&copy, k))
            })
            .collect();
        assert!(!chains.is_empty());
        let mut moves = 0;
        let mut last = bob.current();
        for round in 0..4u32 {
            for chain in &chains {
                for flag in [true, false] {
                    let m = seal_flagged(&mut rng, chain, 10 + round * 2 + u32::from(flag), flag, b"forged");
                    let _ = bob.receive(&mut rng, &a, &m);
                    if bob.current() != last {
                        moves += 1;
                        last = bob.current();
                    }
                }
            }
            let genuine = alice.send(&mut rng, format!("a{round}").as_bytes());
            let _ = bob.receive(&mut rng, &a, &genuine);
            if bob.current() != last {
                moves += 1;
                last = bob.current();
            }
            let reply = bob.send(&mut rng, format!("b{round}").as_bytes());
            let _ = alice.receive(&mut rng, &b, &reply);
        }
        assert!(moves <= 1, "seed {seed}: Bob's current moved {moves} times");
        assert!(healed(&bob), "seed {seed}: Bob never healed");
        assert_eq!(alice.current(), bob.current(), "seed {seed}");
        round_trip(&mut rng, &mut alice, &mut bob, 1);
    }
}

// ---------------------------------------------------------------------------
// 3. The loader (PROTOCOL.md 13.4: S11, S12, 9c, 9d)
// ---------------------------------------------------------------------------

fn load_edited(bytes: &[u8], edit: impl FnOnce(&mut storage::SessionRecord)) -> Result<SessionRecord, DecodeError> {
    let mut record = storage::SessionRecord::decode(bytes).unwrap();
    edit(&mut record);
    SessionRecord::from_bytes(&record.encode_to_vec())
}

/// Held: every place 13.4 forbids the flags is refused, with the error
/// the table gives, and the first failing check in the table's order
/// decides; the places it allows load and encode back to the same bytes.
#[test]
fn held_the_loader_refuses_the_flags_where_13_4_forbids_them() {
    // Alice just after she installed N: current N (responder, with the
    // flag), archived S (our initiation, answered, displaced).
    let Crossed { mut rng, mut alice, mut bob, .. } = crossed_with(7_400, true);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let alice_bytes = alice.record.to_bytes().to_vec();
    let a1 = alice.send(&mut rng, b"a1");
    bob.receive(&mut rng, &a, &a1).unwrap();
    // Bob after he followed: current N (our initiation, `followed`),
    // archived S (responder, full).
    let bob_bytes = bob.record.to_bytes().to_vec();
    let invalid = |field| Err(DecodeError::InvalidValue(field));
    let check = |bytes: &[u8], edit: &dyn Fn(&mut storage::SessionRecord)| {
        load_edited(bytes, |r| edit(r)).map(|loaded| {
            // A record that loads encodes back to what was loaded.
            let mut expected = storage::SessionRecord::decode(bytes).unwrap();
            edit(&mut expected);
            assert_eq!(*loaded.to_bytes(), expected.encode_to_vec());
        })
    };
    // The baselines load.
    assert_eq!(check(&alice_bytes, &|_| {}), Ok(()));
    assert_eq!(check(&bob_bytes, &|_| {}), Ok(()));
    assert!(storage::SessionRecord::decode(alice_bytes.as_slice()).unwrap().current.unwrap().left_answered);
    assert!(storage::SessionRecord::decode(bob_bytes.as_slice()).unwrap().current.unwrap().followed);
    // S11: the flag on an initiator state (current), on Bob's archived
    // initiation... and 9c on an archived responder state.
    assert_eq!(check(&bob_bytes, &|r| r.current.as_mut().unwrap().left_answered = true), invalid("left_answered"));
    assert_eq!(check(&alice_bytes, &|r| r.archived[0].left_answered = true), invalid("left_answered"));
    assert_eq!(check(&bob_bytes, &|r| r.archived[0].left_answered = true), invalid("left_answered"));
    // S12: followed on a responder state, current or archived; 9d on an
    // archived initiator state.
    assert_eq!(check(&alice_bytes, &|r| r.current.as_mut().unwrap().followed = true), invalid("followed"));
    assert_eq!(check(&bob_bytes, &|r| r.archived[0].followed = true), invalid("followed"));
    assert_eq!(check(&alice_bytes, &|r| r.archived[0].followed = true), invalid("followed"));
    // Both flags on one state: S11 passes on a responder, S12 refuses;
    // on an initiator, S11 refuses first.
    assert_eq!(
        check(&alice_bytes, &|r| {
            let c = r.current.as_mut().unwrap();
            c.left_answered = true;
            c.followed = true;
        }),
        invalid("followed")
    );
    assert_eq!(check(&bob_bytes, &|r| r.current.as_mut().unwrap().left_answered = true), invalid("left_answered"));
    // Order: 9b (initiated) before 9d (followed).
    assert_eq!(
        check(&alice_bytes, &|r| {
            r.archived[0].followed = true;
            r.archived[0].initiated = r.initiations + 1;
        }),
        invalid("initiated")
    );
    // A displaced current state with the flag: S11 passes (a responder),
    // then 8a refuses it.
    assert_eq!(check(&alice_bytes, &|r| r.current.as_mut().unwrap().displaced = true), invalid("current"));
    // Alice heals on Bob's step on N: her S, holding the skipped key of
    // `ra2`, is kept.
    let ra3 = {
        let b1 = bob.send(&mut rng, b"b1");
        alice.receive(&mut rng, &b, &b1).unwrap();
        alice.record.to_bytes().to_vec()
    };
    let record = storage::SessionRecord::decode(ra3.as_slice()).unwrap();
    let kept = record.archived.iter().position(|s| s.kept.is_some()).expect("S kept with ra2's key");
    assert_eq!(check(&ra3, &|_| {}), Ok(()));
    assert_eq!(check(&ra3, &|r| r.archived[kept].left_answered = true), invalid("left_answered"));
    assert_eq!(check(&ra3, &|r| r.archived[kept].followed = true), invalid("followed"));
    assert_eq!(
        check(&ra3, &|r| {
            r.archived[kept].followed = true;
            r.archived[kept].initiator = true;
        }),
        invalid("followed")
    );
    let _ = rng;
}

// ---------------------------------------------------------------------------
// 5. Failed decryptions and stale commits on the flag's paths
// ---------------------------------------------------------------------------

/// Held: on Bob's side, just before he follows, failures on the flag's
/// path leave the record byte-identical: a flagged first answer whose body
/// was altered, a flagged header under the wrong key, and the commit of a
/// pending flagged answer made stale by another commit (`StalePending`).
#[cfg(feature = "hazmat")]
#[test]
fn held_failures_on_the_flag_path_change_nothing() {
    let Crossed { mut rng, mut alice, bob, eb, .. } = crossed(7_500);
    let a = alice.address.clone();
    let on_n = attacker::sending(&alice.copy(), &eb);
    let a1 = alice.send(&mut rng, b"a1");
    let a2 = alice.send(&mut rng, b"a2");
    let before = bob.record.to_bytes();
    // The body altered.
    let mut altered = ratchet_of(&a1).to_bytes();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let pending = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &altered);
    assert!(pending.is_err());
    assert_eq!(*bob.record.to_bytes(), *before);
    // A flagged header under a key no state has.
    let mut wrong = on_n.clone();
    wrong.header_key[0] ^= 1;
    let forged = seal_flagged(&mut rng, &wrong, 0, true, b"x");
    let error = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &forged).unwrap_err();
    assert_eq!(error, SessionError::Decrypt(DecryptError::NoMatchingState));
    assert_eq!(*bob.record.to_bytes(), *before);
    // Two pending flagged answers: the second commit is stale and applies
    // nothing.
    let mut bob = bob;
    let p1 = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &a1).unwrap();
    let p2 = bob.record.decrypt(&mut rng, &bob.identity, &bob.address, &a, &bob.prekeys, &a2).unwrap();
    bob.record.commit(p1).unwrap();
    let committed = bob.record.to_bytes();
    assert_eq!(bob.record.commit(p2), Err(SessionError::StalePending));
    assert_eq!(*bob.record.to_bytes(), *committed);
    assert_eq!(bob.current(), eb);
}

// ---------------------------------------------------------------------------
// 4. Through the Device API
// ---------------------------------------------------------------------------

type Dev = Device<MemoryBackend>;

fn at(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The stored record of `peer` in `dev`'s store (sealed with `[key; 32]`).
#[cfg(feature = "hazmat")]
fn row_record(dev: &Dev, key: u8, peer: &Address) -> storage::SessionRecord {
    use samizdat::hazmat;
    let storage_key = [key; 32];
    let row = hazmat::peer_row_key(&storage_key, peer);
    let sealed = dev.backend().get(Table::Sessions, &row).unwrap().unwrap();
    let opened = hazmat::open_row(&storage_key, Table::Sessions, &row, &sealed).unwrap();
    let session_row = storage::SessionRow::decode(opened.as_slice()).unwrap();
    storage::SessionRecord::decode(session_row.record.as_slice()).unwrap()
}

#[cfg(feature = "hazmat")]
fn current_of(dev: &Dev, key: u8, peer: &Address) -> (Vec<u8>, bool, bool) {
    let record = row_record(dev, key, peer);
    let current = record.current.unwrap();
    (current.base_key, current.left_answered, current.followed)
}

#[cfg(feature = "hazmat")]
fn device_healed(dev: &Dev, key: u8, peer: &Address) -> bool {
    row_record(dev, key, peer).archived.iter().all(|s| s.ratchet.is_none())
}

/// Held: the crossing of 9.9 through `Device`: both `start_session`, Bob
/// reads Alice's first message and answers, Alice reads the answer, then
/// Bob's first message. Alice's stored current state has the flag; Bob
/// follows on her first message (`followed` stored), both heal on the
/// next round trip and stay on Bob's session, whatever the base keys;
/// nothing is refused. Both orders of the base keys are seen.
#[cfg(feature = "hazmat")]
#[test]
fn held_device_crossed_sessions_answered_before_arrival_converge() {
    let mut seen = [false, false];
    for run in 0..48 {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let (a, b) = (alice.address().clone(), bob.address().clone());
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let pa = alice.encrypt(&b, b"pa").unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        let pb = bob.encrypt(&a, b"pb").unwrap();
        let (ea, _, _) = current_of(&alice, 1, &b);
        let (eb, _, _) = current_of(&bob, 2, &a);
        assert_eq!(receive(&bob, &alice, &pa).unwrap(), Got::App(b"pa".to_vec()));
        let ra = bob.encrypt(&a, b"ra").unwrap();
        let ra2 = bob.encrypt(&a, b"ra2").unwrap();
        assert_eq!(receive(&alice, &bob, &ra).unwrap(), Got::App(b"ra".to_vec()));
        assert_eq!(receive(&alice, &bob, &pb).unwrap(), Got::App(b"pb".to_vec()));
        assert_eq!(current_of(&alice, 1, &b), (eb.clone(), true, false), "run {run}");
        // The store reopened (an app restart) keeps the flag.
        let alice = Device::open_in(copy_of(alice.backend()), &StorageKey::from_bytes([1; 32])).unwrap();
        let a1 = alice.encrypt(&b, b"a1").unwrap();
        assert_eq!(receive(&bob, &alice, &a1).unwrap(), Got::App(b"a1".to_vec()));
        assert_eq!(current_of(&bob, 2, &a), (eb.clone(), false, true), "run {run}: Bob follows");
        assert_eq!(receive(&alice, &bob, &ra2).unwrap(), Got::App(b"ra2".to_vec()));
        for i in 0..3 {
            let m = bob.encrypt(&a, format!("b{i}").as_bytes()).unwrap();
            assert_eq!(receive(&alice, &bob, &m).unwrap(), Got::App(format!("b{i}").into_bytes()), "run {run}");
            let m = alice.encrypt(&b, format!("a{i}").as_bytes()).unwrap();
            assert_eq!(receive(&bob, &alice, &m).unwrap(), Got::App(format!("a{i}").into_bytes()), "run {run}");
        }
        assert_eq!(current_of(&alice, 1, &b), (eb.clone(), false, false), "run {run}");
        assert_eq!(current_of(&bob, 2, &a), (eb.clone(), false, false), "run {run}");
        assert!(device_healed(&alice, 1, &b) && device_healed(&bob, 2, &a), "run {run}");
        seen[usize::from(ea < eb)] = true;
        if seen == [true, true] {
            return;
        }
    }
    panic!("both orders not seen: {seen:?}");
}

/// Held: crossing *resets* (both apps heal at once, each naming a kept
/// message it could not read), where Bob reads Alice's reset and his
/// resend reaches Alice before Bob's reset does. Alice's resend, sent
/// while she installs Bob's reset, is the flagged first answer of Bob's
/// reset session: Bob follows, each kept message reaches its app once,
/// and both end healed on Bob's reset session whatever the base keys.
/// (PROTOCOL.md 20.8 still says crossing resets "converge on the session
/// with the smaller base key"; in this order they converge on the
/// session of the reset that arrived last, as 9.9 now says.)
#[cfg(feature = "hazmat")]
#[test]
fn held_device_crossing_resets_answered_before_arrival_converge_and_resend_once() {
    let mut seen = [false, false];
    for run in 0..48 {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let (a, b) = (alice.address().clone(), bob.address().clone());
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let hello = alice.encrypt_kept(&b, b"hello", at(1)).unwrap();
        receive(&bob, &alice, &hello).unwrap();
        let back = bob.encrypt_kept(&a, b"hello back", at(1)).unwrap();
        receive(&alice, &bob, &back).unwrap();
        let to_bob = alice.encrypt_kept(&b, b"for bob", at(2)).unwrap();
        let to_alice = bob.encrypt_kept(&a, b"for alice", at(2)).unwrap();
        let reset_of = |healer: &Dev, peer: &Dev, unreadable: &[u8]| match healer
            .heal(&peer.prekey_bundle().unwrap(), &[unreadable.to_vec()], at(10))
            .unwrap()
        {
            Heal::Sent(o) => o.message,
            other => panic!("{other:?}"),
        };
        let from_bob = reset_of(&bob, &alice, &to_bob);
        let from_alice = reset_of(&alice, &bob, &to_alice);
        let (ea, _, _) = current_of(&alice, 1, &b);
        let (eb, _, _) = current_of(&bob, 2, &a);
        // Bob reads Alice's reset first and resends "for alice" on it.
        let Got::Control(bob_resends) = receive(&bob, &alice, &from_alice).unwrap() else { panic!() };
        assert_eq!(bob_resends.len(), 1);
        assert_eq!(receive(&alice, &bob, &bob_resends[0].message).unwrap(), Got::App(b"for alice".to_vec()));
        // Then Alice reads Bob's reset: she left her answered reset session.
        let Got::Control(alice_resends) = receive(&alice, &bob, &from_bob).unwrap() else { panic!() };
        assert_eq!(current_of(&alice, 1, &b), (eb.clone(), true, false), "run {run}");
        assert_eq!(alice_resends.len(), 1);
        assert_eq!(receive(&bob, &alice, &alice_resends[0].message).unwrap(), Got::App(b"for bob".to_vec()));
        assert_eq!(current_of(&bob, 2, &a).0, eb, "run {run}: Bob follows Alice to his reset's session");
        // The originals, late: duplicates.
        assert_eq!(receive(&bob, &alice, &to_bob).unwrap_err().kind(), ErrorKind::Duplicate);
        assert_eq!(receive(&alice, &bob, &to_alice).unwrap_err().kind(), ErrorKind::Duplicate);
        for i in 0..3 {
            let m = bob.encrypt_kept(&a, format!("b{i}").as_bytes(), at(11)).unwrap();
            assert_eq!(receive(&alice, &bob, &m).unwrap(), Got::App(format!("b{i}").into_bytes()), "run {run}");
            let m = alice.encrypt_kept(&b, format!("a{i}").as_bytes(), at(11)).unwrap();
            assert_eq!(receive(&bob, &alice, &m).unwrap(), Got::App(format!("a{i}").into_bytes()), "run {run}");
        }
        assert_eq!(current_of(&alice, 1, &b), (eb.clone(), false, false), "run {run}");
        assert_eq!(current_of(&bob, 2, &a), (eb.clone(), false, false), "run {run}");
        assert!(device_healed(&alice, 1, &b) && device_healed(&bob, 2, &a), "run {run}");
        assert_eq!((alice.awaiting_resends(&b).unwrap(), bob.awaiting_resends(&a).unwrap()), (0, 0));
        seen[usize::from(ea < eb)] = true;
        if seen == [true, true] {
            return;
        }
    }
    panic!("both orders not seen: {seen:?}");
}

/// Held: a group distribution (control content over the pairwise session,
/// `encrypt_content` in groups.rs) is Alice's first message on N in the
/// crossing: it carries the flag, Bob follows on it, and the group message
/// and the pairwise session both work after.
#[cfg(feature = "hazmat")]
#[test]
fn held_a_group_distribution_is_the_flagged_first_answer() {
    for run in 0..8 {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let (a, b) = (alice.address().clone(), bob.address().clone());
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let pa = alice.encrypt(&b, b"pa").unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        let pb = bob.encrypt(&a, b"pb").unwrap();
        let (eb, _, _) = current_of(&bob, 2, &a);
        receive(&bob, &alice, &pa).unwrap();
        let ra = bob.encrypt(&a, b"ra").unwrap();
        receive(&alice, &bob, &ra).unwrap();
        receive(&alice, &bob, &pb).unwrap();
        assert_eq!(current_of(&alice, 1, &b), (eb.clone(), true, false));
        alice.create_group(b"the group", std::slice::from_ref(&b)).unwrap();
        bob.create_group(b"the group", std::slice::from_ref(&a)).unwrap();
        let sent = alice.group_encrypt(b"the group", b"hello group").unwrap();
        assert_eq!(sent.distributions.len(), 1);
        assert!(matches!(receive(&bob, &alice, &sent.distributions[0].message).unwrap(), Got::Control(_)));
        assert_eq!(current_of(&bob, 2, &a), (eb.clone(), false, true), "run {run}: Bob follows the distribution");
        assert_eq!(receive(&bob, &alice, &sent.message).unwrap(), Got::Group(b"hello group".to_vec()));
        for i in 0..2 {
            let m = bob.encrypt(&a, format!("b{i}").as_bytes()).unwrap();
            assert_eq!(receive(&alice, &bob, &m).unwrap(), Got::App(format!("b{i}").into_bytes()));
            let m = alice.encrypt(&b, format!("a{i}").as_bytes()).unwrap();
            assert_eq!(receive(&bob, &alice, &m).unwrap(), Got::App(format!("a{i}").into_bytes()));
        }
        assert!(device_healed(&alice, 1, &b) && device_healed(&bob, 2, &a));
        assert_eq!(current_of(&alice, 1, &b).0, eb);
    }
}

/// Held: a device whose store is restored, inside the crossing, to a copy
/// taken while its current state had the flag and before the heal (Alice
/// sends flagged messages again, on counters Bob has used): the apps
/// follow the error codes (heal on `out_of_step`), and within three rounds
/// both read each other again, nothing kept is lost.
#[cfg(feature = "hazmat")]
#[test]
fn held_device_a_store_restored_into_the_crossing_heals() {
    for run in 0..8 {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let policy = HealPolicy { reset_interval: Duration::from_secs(10), ..HealPolicy::default() };
        alice.set_heal_policy(policy).unwrap();
        bob.set_heal_policy(policy).unwrap();
        let (a, b) = (alice.address().clone(), bob.address().clone());
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let pa = alice.encrypt(&b, b"pa").unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        let pb = bob.encrypt(&a, b"pb").unwrap();
        receive(&bob, &alice, &pa).unwrap();
        let ra = bob.encrypt(&a, b"ra").unwrap();
        receive(&alice, &bob, &ra).unwrap();
        receive(&alice, &bob, &pb).unwrap();
        assert!(current_of(&alice, 1, &b).1);
        let backup = copy_of(alice.backend());
        let a1 = alice.encrypt_kept(&b, b"a1", at(1)).unwrap();
        receive(&bob, &alice, &a1).unwrap();
        let b1 = bob.encrypt_kept(&a, b"b1", at(1)).unwrap();
        receive(&alice, &bob, &b1).unwrap();
        // Alice restored: her N with the flag again, before Bob's step.
        let alice = Device::open_in(backup, &StorageKey::from_bytes([1; 32])).unwrap();
        let mut clean = None;
        for round in 0..4u64 {
            let now = 20 + round * 100;
            let to_bob = alice.encrypt_kept(&b, format!("a r{round}").as_bytes(), at(now)).unwrap();
            let to_alice = bob.encrypt_kept(&a, format!("b r{round}").as_bytes(), at(now)).unwrap();
            let mut ok = [false, false];
            let mut flight: Vec<(usize, Vec<u8>)> = vec![(1, to_bob), (0, to_alice)];
            let mut guard = 0;
            while let Some((to, wire)) = flight.pop() {
                guard += 1;
                assert!(guard < 64);
                let (dev, peer) = if to == 0 { (&alice, &bob) } else { (&bob, &alice) };
                match receive(dev, peer, &wire) {
                    Ok(Got::App(text)) => {
                        if text.ends_with(format!("r{round}").as_bytes()) {
                            ok[to] = true;
                        }
                    }
                    Ok(Got::Control(sent)) => flight.extend(sent.into_iter().map(|o| (1 - to, o.message))),
                    Ok(Got::Group(_) | Got::SentSync(..)) => unreachable!(),
                    Err(e) if e.kind().recovery() == Recovery::Heal => {
                        if let Ok(Heal::Sent(reset)) = dev.heal(&peer.prekey_bundle().unwrap(), &[wire], at(now)) {
                            flight.insert(0, (1 - to, reset.message));
                        }
                    }
                    Err(e) => assert_eq!(e.kind().recovery(), Recovery::Drop, "run {run}: {e:?}"),
                }
            }
            if ok == [true, true] {
                clean = Some(round);
                break;
            }
        }
        assert!(clean.is_some_and(|r| r < 3), "run {run}: not talking again after 3 rounds: {clean:?}");
    }
}

/// **Finding (the same as
/// `finding_a_late_second_prekey_message_undoes_the_follow_and_nothing_heals`,
/// through `Device`):** Alice writes twice before Bob's answer (two
/// prekey messages), Bob starts a session at the same time; the second
/// prekey message is delayed until Bob has followed Alice. With Alice's
/// base key the smaller, Bob goes back to S (rule 5), and from then on
/// every message of both is read, no error reaches either app (nothing is
/// `out_of_step`, so no app heals), and neither session ever takes a DH
/// step: the stored records never heal.
#[cfg(feature = "hazmat")]
#[test]
fn finding_device_a_late_second_prekey_message_leaves_the_pair_unhealed() {
    let mut tried = 0;
    for _ in 0..64 {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        let (a, b) = (alice.address().clone(), bob.address().clone());
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let pa = alice.encrypt(&b, b"hi").unwrap();
        let pa2 = alice.encrypt(&b, b"how are you").unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        let pb = bob.encrypt(&a, b"pb").unwrap();
        let (ea, _, _) = current_of(&alice, 1, &b);
        let (eb, _, _) = current_of(&bob, 2, &a);
        if ea >= eb {
            continue;
        }
        tried += 1;
        receive(&bob, &alice, &pa).unwrap();
        let ra = bob.encrypt(&a, b"ra").unwrap();
        receive(&alice, &bob, &ra).unwrap();
        receive(&alice, &bob, &pb).unwrap();
        let a1 = alice.encrypt(&b, b"a1").unwrap();
        receive(&bob, &alice, &a1).unwrap();
        assert_eq!(current_of(&bob, 2, &a).0, eb, "Bob follows");
        assert_eq!(receive(&bob, &alice, &pa2).unwrap(), Got::App(b"how are you".to_vec()));
        for i in 0..10 {
            let m = alice.encrypt(&b, format!("a{i}").as_bytes()).unwrap();
            assert_eq!(receive(&bob, &alice, &m).unwrap(), Got::App(format!("a{i}").into_bytes()));
            let m = bob.encrypt(&a, format!("b{i}").as_bytes()).unwrap();
            assert_eq!(receive(&alice, &bob, &m).unwrap(), Got::App(format!("b{i}").into_bytes()));
        }
        let (on_alice, on_bob) = (current_of(&alice, 1, &b).0, current_of(&bob, 2, &a).0);
        assert!(
            on_alice == on_bob && device_healed(&alice, 1, &b) && device_healed(&bob, 2, &a),
            "after ten exchanges with every message read: Alice on {}, Bob on {}; Alice healed: {}, Bob healed: {}",
            if on_alice == ea { "S" } else { "N" },
            if on_bob == ea { "S" } else { "N" },
            device_healed(&alice, 1, &b),
            device_healed(&bob, 2, &a),
        );
        if tried == 4 {
            return;
        }
    }
    panic!("not enough runs with ea < eb: {tried}");
}

// ---------------------------------------------------------------------------
// The healing property (core/tests/healing_properties.rs) with more cases
// ---------------------------------------------------------------------------
//
// `PROPTEST_CASES=2000 cargo test -p samizdat --all-features --release --test
// healing_properties` (random seed) failed after 336 schedules: "healing never
// settles: a loop". The shrunk schedule below, pasted into that file as
// `run(&events)` (with `use Event::*`) and run 400 times (the devices draw
// their keys from the OS, so the outcome varies), fails 259 of 400 at e30b0cc
// (before the flag), 276 of 400 at 9d6fd02, and 293 of 400 with the rule-5 fix
// suggested above: not caused by the flag, and not fixed by it. Failures are
// "healing never settles: a loop" and "no convergence". The file cannot be
// called from here (its World is private), so the schedule is kept as text:
//
// [Carry{pick:17577115429838493254,fate:79},
// Send(0),
// Carry{pick:14476643783701168531,fate:28},
// Carry{pick:356397219898729145,fate:25},
// Carry{pick:5966471717631042824,fate:38},
// Tick(13),
// Carry{pick:16183825011403206401,fate:90},
// Send(0),
// Restore{side:1,pick:553275856835251951},
// Carry{pick:13290868157020648095,fate:44},
// Carry{pick:10705908432033262630,fate:33},
// Carry{pick:11696407065058874303,fate:51},
// Carry{pick:9271666413861849955,fate:25},
// Send(1),
// Tick(2),
// Send(0),
// Send(0),
// Reinstall(0),
// Carry{pick:5003337119150297674,fate:70},
// Send(1),
// Carry{pick:13070319930546478677,fate:11},
// Send(0),
// Carry{pick:2279771478995241065,fate:63},
// Carry{pick:14535422062061027695,fate:84},
// Send(1),
// Carry{pick:4601846931995459641,fate:36},
// Send(1),
// Carry{pick:798068016638741215,fate:2},
// Snapshot(1),
// Restore{side:0,pick:4610544565864754886},
// Send(1),
// Carry{pick:7400639267927902106,fate:59},
// Send(0),
// Restore{side:1,pick:1641902890388692923},
// Tick(19),
// Carry{pick:15805347646449435593,fate:69},
// Carry{pick:4727703292219577636,fate:89},
// Snapshot(1),
// Carry{pick:1465951473253943123,fate:72},
// Send(1),
// Carry{pick:14924543335396361140,fate:37},
// Carry{pick:15454711924133913442,fate:86},
// Carry{pick:9475319614729133644,fate:76},
// Send(0),
// Carry{pick:2730136845209315586,fate:79},
// Send(1),
// Send(1),
// Send(1),
// Tick(19),
// Snapshot(0),
// Carry{pick:17732987419004290173,fate:14},
// Snapshot(0),
// Send(0),
// Restore{side:1,pick:17412122257857692571},
// Carry{pick:6289513002326360099,fate:58},
// Send(1),
// Send(1),
// Tick(11),
// Send(1),
// Carry{pick:10306139776801959121,fate:27},
// Send(1),
// Carry{pick:5964745487018590745,fate:42},
// Carry{pick:2905421474681614505,fate:77},
// Carry{pick:15896786933159468024,fate:36},
// Send(1),
// Carry{pick:4895283548338832693,fate:60},
// Send(1),
// Carry{pick:4557755963043946263,fate:70},
// Tick(15),
// ]
