//! An outside audit (by a helper) of commit 93b803b, the two changes of
//! issue 15:
//!
//! 1. healing: `heal()` sends its reset again on the session of the last
//!    one only while `Healing::may_repeat_reset` holds (the peer was not
//!    heard from since that reset, `heard_since_reset`, set at every
//!    `SessionRecord::commit`; and every unreadable id the app names is
//!    awaited or delivered already); otherwise it starts a new session
//!    (PROTOCOL.md 20.4, 20.5);
//! 2. rule 5 of `promotes` no longer brings back a state we answered while
//!    the current state is `followed` (PROTOCOL.md 9.6, 9.9, 9.10).
//!
//! The attacker holds the network (drop, delay, replay, inject bytes under
//! the peer's address) and possibly a copy of an old store. Tests named
//! `held_*` are defences that held; an attack that works is a test that
//! fails on 93b803b, marked `#[ignore = "finding: ..."]`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::{
    ErrorKind, Recovery,
    address::Address,
    device::{Device, DeviceError, Heal, HealPolicy, MessageKind, Outgoing},
    limits::MAX_ARCHIVED_STATES,
    store::{MemoryBackend, StorageKey},
    wire::Message,
};
use std::time::{Duration, UNIX_EPOCH};
use support::{copy_of, party::Party, rng};

type Dev = Device<MemoryBackend>;

const INTERVAL: u64 = 10;

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn device(name: &str, key: u8) -> Dev {
    let device =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address(name), UNIX_EPOCH).unwrap();
    device.set_heal_policy(policy()).unwrap();
    device
}

fn policy() -> HealPolicy {
    HealPolicy { reset_interval: Duration::from_secs(INTERVAL), ..HealPolicy::default() }
}

/// Alice and Bob with a session both ways (each has read the other).
fn pair() -> (Dev, Dev) {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt_kept(bob.address(), b"hello", UNIX_EPOCH).unwrap();
    assert_eq!(receive(&bob, &alice, &hello).unwrap(), Got::App(b"hello".to_vec()));
    let back = bob.encrypt_kept(alice.address(), b"hello back", UNIX_EPOCH).unwrap();
    assert_eq!(receive(&alice, &bob, &back).unwrap(), Got::App(b"hello back".to_vec()));
    (alice, bob)
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    App(Vec<u8>),
    Control(Vec<Outgoing>),
}

fn receive(to: &Dev, from: &Dev, wire: &[u8]) -> Result<Got, DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    let kind = pending.kind();
    let plaintext = pending.plaintext().to_vec();
    let sent = to.commit(pending)?;
    Ok(match kind {
        MessageKind::Direct => Got::App(plaintext),
        _ => Got::Control(sent),
    })
}

/// `who` heals with `peer` after `unreadable`, at `now`: the reset.
fn heal(who: &Dev, peer: &Dev, unreadable: &[Vec<u8>], now: u64) -> Vec<u8> {
    match who.heal(&peer.prekey_bundle().unwrap(), unreadable, UNIX_EPOCH + Duration::from_secs(now)).unwrap() {
        Heal::Sent(reset) => reset.message,
        other => panic!("no reset: {other:?}"),
    }
}

/// The base key of a reset's session (a reset is a prekey message).
fn base_key(wire: &[u8]) -> [u8; 32] {
    match Message::from_bytes(wire).unwrap() {
        Message::PreKey(prekey) => *prekey.header().base_key().as_bytes(),
        Message::Ratchet(_) => panic!("a reset starts a session"),
    }
}

/// Each side sends one message the other reads.
fn converse(alice: &Dev, bob: &Dev, tag: &str) {
    let to_bob = alice.encrypt_kept(bob.address(), format!("a {tag}").as_bytes(), UNIX_EPOCH).unwrap();
    assert_eq!(receive(bob, alice, &to_bob).unwrap(), Got::App(format!("a {tag}").into_bytes()), "{tag}");
    let to_alice = bob.encrypt_kept(alice.address(), format!("b {tag}").as_bytes(), UNIX_EPOCH).unwrap();
    assert_eq!(receive(alice, bob, &to_alice).unwrap(), Got::App(format!("b {tag}").into_bytes()), "{tag}");
}

/// Bytes a hostile server injects under Alice's address that Bob's app is
/// told to heal for (`out_of_step`): a genuine message with a byte of its
/// encrypted header changed (what `healing.rs`'s forgery test does). Each
/// call a new one (a new id).
fn forged_out_of_step(alice: &Dev, bob: &Dev, n: u8) -> Vec<u8> {
    // A message of Alice's (the network keeps it: never delivered).
    let genuine = alice.encrypt(bob.address(), format!("template {n}").as_bytes()).unwrap();
    for flip in 1..=255u8 {
        let mut forged = genuine.clone();
        forged[10] ^= flip;
        if let Err(e) = bob.decrypt(alice.address(), &forged)
            && e.kind() == ErrorKind::OutOfStep
        {
            assert_eq!(e.kind().recovery(), Recovery::Heal);
            return forged;
        }
    }
    panic!("no out-of-step forgery");
}

// ---------------------------------------------------------------------------
// 1. What sets `heard_since_reset`
// ---------------------------------------------------------------------------

/// "Heard" is set only by an authenticated commit. After Bob's reset (Alice
/// away), the network replays a message of Alice's Bob read before, a copy
/// of one with its body changed, and delivers a genuine one that Bob's app
/// decrypts but never commits (it crashed before storing): none of them
/// makes the next heal start a new session; the reset goes on the same
/// session, so no one-time prekey of Alice's is spent.
#[test]
fn held_only_a_committed_message_counts_as_heard() {
    let (alice, bob) = pair();
    let read_before = alice.encrypt_kept(bob.address(), b"read before", UNIX_EPOCH).unwrap();
    assert_eq!(receive(&bob, &alice, &read_before).unwrap(), Got::App(b"read before".to_vec()));
    let in_flight = alice.encrypt_kept(bob.address(), b"in flight", UNIX_EPOCH).unwrap();
    let first = heal(&bob, &alice, &[], 100);

    // A replay: a duplicate, dropped.
    let error = bob.decrypt(alice.address(), &read_before).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Duplicate, "{error:?}");
    // The body changed: the header opens, the body does not.
    let mut tampered = in_flight.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let error = bob.decrypt(alice.address(), &tampered).unwrap_err();
    assert_eq!(error.kind().recovery(), Recovery::Drop, "{error:?}");
    // Decrypted, never committed.
    let pending = bob.decrypt(alice.address(), &in_flight).unwrap();
    assert_eq!(pending.plaintext(), b"in flight");
    drop(pending);

    let second = heal(&bob, &alice, &[], 100 + INTERVAL);
    assert_eq!(base_key(&first), base_key(&second), "nothing of Alice's was committed: the same session");
    // And within the interval, even once heard, nothing.
    assert_eq!(receive(&bob, &alice, &in_flight).unwrap(), Got::App(b"in flight".to_vec()));
    assert!(matches!(
        bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(100 + INTERVAL + 1)).unwrap(),
        Heal::TooSoon { .. }
    ));
    let third = heal(&bob, &alice, &[], 100 + 2 * INTERVAL);
    assert_ne!(base_key(&third), base_key(&first), "heard: a new session");
    // Alice reads all three resets in order, and the pair converges.
    for reset in [&first, &second, &third] {
        assert!(matches!(receive(&alice, &bob, reset).unwrap(), Got::Control(_)));
    }
    converse(&alice, &bob, "after three resets");
}

/// `heard_since_reset` is written with the record: a handle opened again on
/// the store (an app restart) sees it, both ways: silent, the reset is
/// repeated on its session; heard, a new session.
#[test]
fn held_heard_since_reset_survives_reopening_the_store() {
    let reopen = |bob: &Dev| {
        let reopened = Device::open_in(copy_of(bob.backend()), &StorageKey::from_bytes([2; 32])).unwrap();
        reopened.set_heal_policy(policy()).unwrap();
        reopened
    };
    // Silent.
    let (alice, bob) = pair();
    let first = heal(&bob, &alice, &[], 100);
    let bob = reopen(&bob);
    let again = heal(&bob, &alice, &[], 100 + INTERVAL);
    assert_eq!(base_key(&first), base_key(&again), "silent, reopened: the same session");
    // Heard, then reopened.
    let late = alice.encrypt_kept(bob.address(), b"late", UNIX_EPOCH).unwrap();
    assert_eq!(receive(&bob, &alice, &late).unwrap(), Got::App(b"late".to_vec()));
    let bob = reopen(&bob);
    let heard = heal(&bob, &alice, &[], 100 + 2 * INTERVAL);
    assert_ne!(base_key(&first), base_key(&heard), "heard, reopened: a new session");
    // Reset clears it again, across a reopening too.
    let bob = reopen(&bob);
    let silent = heal(&bob, &alice, &[], 100 + 3 * INTERVAL);
    assert_eq!(base_key(&heard), base_key(&silent));
    for reset in [&first, &again, &heard, &silent] {
        assert!(matches!(receive(&alice, &bob, reset).unwrap(), Got::Control(_)));
    }
    converse(&alice, &bob, "after the reopenings");
}

/// A store rolled back (a backup copy, or a seized phone's old copy put
/// back) to between Bob's reset and Alice's answer: the restored record has
/// `heard_since_reset` false and the reset's session unanswered. Bob's next
/// heal repeats the reset on it; Alice, who read the first one and answered
/// (resends), decrypts the repeat on the state she has, and answers again;
/// the pair converges, and the message Bob lost in the rollback comes back.
#[test]
fn held_a_store_rolled_back_between_reset_and_heard_converges() {
    let (alice, bob) = pair();
    let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH).unwrap();
    let first = heal(&bob, &alice, std::slice::from_ref(&lost), 100);
    let snapshot = copy_of(bob.backend());
    let resent = match receive(&alice, &bob, &first).unwrap() {
        Got::Control(sent) => sent,
        other => panic!("{other:?}"),
    };
    assert_eq!(resent.len(), 1);
    assert_eq!(receive(&bob, &alice, &resent[0].message).unwrap(), Got::App(b"lost".to_vec()));
    converse(&alice, &bob, "before the rollback");

    // Bob's store goes back to the snapshot.
    let bob = Device::open_in(snapshot, &StorageKey::from_bytes([2; 32])).unwrap();
    bob.set_heal_policy(policy()).unwrap();
    // Alice's next message: on the reset's session, which Bob's restored
    // record still has (as an unanswered initiation) or cannot read.
    let after = alice.encrypt_kept(bob.address(), b"after the rollback", UNIX_EPOCH).unwrap();
    let mut unreadable = Vec::new();
    match receive(&bob, &alice, &after) {
        Ok(got) => assert_eq!(got, Got::App(b"after the rollback".to_vec())),
        Err(e) => {
            assert_eq!(e.kind().recovery(), Recovery::Heal, "{e:?}");
            unreadable.push(after.clone());
        }
    }
    // Bob heals as told (once the interval passed); whatever it sends,
    // Alice reads and answers, and the pair then talks.
    let mut got_back = unreadable.is_empty();
    for round in 0..3u64 {
        if bob.awaiting_resends(alice.address()).unwrap() == 0 && unreadable.is_empty() {
            break;
        }
        let reset = heal(&bob, &alice, &unreadable, 100 + (round + 1) * INTERVAL);
        unreadable.clear();
        if let Got::Control(sent) = receive(&alice, &bob, &reset).unwrap() {
            for out in sent {
                if receive(&bob, &alice, &out.message).unwrap() == Got::App(b"after the rollback".to_vec()) {
                    got_back = true;
                }
            }
        }
    }
    assert!(got_back, "the message Alice still holds reached Bob");
    converse(&alice, &bob, "after the rollback");
}

// ---------------------------------------------------------------------------
// 2. Forged unreadable messages while the peer is away
// ---------------------------------------------------------------------------

/// FINDING (fixed, below). Schedule: Alice and Bob talk; Alice sends `m` (kept in her
/// outbox) and goes away: the network holds `m` and everything after.
/// Bob's app heals (say, for a message it could not read). Then, once per
/// interval, the hostile server injects under Alice's address a fresh
/// forgery (a genuine message with a header byte changed: `out_of_step`,
/// so Bob's app heals for it, as the error codes say). Each heal names an
/// id no reset named, so `may_repeat_reset` is false and each starts a
/// **new** session instead of repeating the reset on the unanswered one.
///
/// Impact: (a) every interval one more of Alice's one-time prekeys is
/// spent, while before 93b803b a heal on an unanswered reset spent none;
/// (b) after `MAX_ARCHIVED_STATES` (10) such heals the state that the first
/// heal displaced, the session Alice is still on, falls off Bob's record,
/// which is exactly what PROTOCOL.md 20.5 says the repeat rule exists to
/// prevent. When Alice comes back, her message `m` in flight on that session
/// is `out_of_step` at Bob (on 93b803b's parent it is read on the displaced
/// state); a message she sent with plain `encrypt` is lost for good, a kept
/// one costs one more heal.
///
/// Root cause: `may_repeat_reset` treats any unreadable id not yet named as
/// proof that the peer is not away, but such ids are unauthenticated: anyone
/// who can put bytes under the peer's address makes them.
///
/// Suggested fix: decide the repeat only on authenticated evidence
/// (`heard_since_reset`), and name the new ids in the repeated reset
/// (which `to_name` already does); or, if unreadable ids must count, keep
/// the state the first unanswered reset displaced (pin it against
/// `MAX_ARCHIVED_STATES` until a heal), and count a repeat-breaking id only
/// once per answered reset.
///
/// FIXED (the second suggestion): `Healing.broke_on_ids` (storage field 9,
/// loader check H14). Unreadable ids break a repeat once; until the peer is
/// heard from, later heals repeat that reset. So at most two sessions start
/// while the peer is away (the first heal's and one break), and the state
/// Alice is on stays on Bob's record. Fails on 93b803b (12 sessions, `m`
/// `out_of_step`).
#[test]
fn regression_forged_unreadables_while_the_peer_is_away_break_the_repeat_once() {
    let (alice, bob) = pair();
    let m = alice.encrypt_kept(bob.address(), b"sent before going away", UNIX_EPOCH).unwrap();
    let first = heal(&bob, &alice, &[], 100);
    let mut sessions = vec![base_key(&first)];
    let mut resets = vec![first];
    for n in 0..u8::try_from(MAX_ARCHIVED_STATES + 1).unwrap() {
        let forged = forged_out_of_step(&alice, &bob, n);
        let now = 100 + (u64::from(n) + 1) * INTERVAL;
        let reset = heal(&bob, &alice, &[forged], now);
        if !sessions.contains(&base_key(&reset)) {
            sessions.push(base_key(&reset));
        }
        resets.push(reset);
    }
    // The property the repeat rule promises while the peer is silent.
    let readable = bob.decrypt(alice.address(), &m).map(|p| p.plaintext().to_vec());
    assert!(
        sessions.len() <= 2 && readable.is_ok(),
        "{} sessions started while Alice was away (one one-time prekey each); her message in flight: {:?}",
        sessions.len(),
        readable.map_err(|e| e.kind())
    );
}

/// The same schedule, without forgeries: Alice away, Bob's app heals every
/// interval for what it still awaits. Every reset goes on the first reset's
/// session (no prekey spent), and Alice's message in flight on the old
/// session stays readable however long she is away.
#[test]
fn held_a_silent_peer_gets_the_same_session_every_interval() {
    let (alice, bob) = pair();
    let m = alice.encrypt_kept(bob.address(), b"sent before going away", UNIX_EPOCH).unwrap();
    let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH).unwrap();
    let first = heal(&bob, &alice, std::slice::from_ref(&lost), 100);
    let mut resets = vec![first.clone()];
    for n in 1..=u64::try_from(MAX_ARCHIVED_STATES + 2).unwrap() {
        assert!(bob.awaiting_resends(alice.address()).unwrap() > 0);
        let reset = heal(&bob, &alice, std::slice::from_ref(&lost), 100 + n * INTERVAL);
        assert_eq!(base_key(&reset), base_key(&first));
        resets.push(reset);
    }
    assert_eq!(receive(&bob, &alice, &m).unwrap(), Got::App(b"sent before going away".to_vec()));
    // Alice back: she reads the resets; the first sends `lost` again.
    let mut got = Vec::new();
    for reset in &resets {
        if let Got::Control(sent) = receive(&alice, &bob, reset).unwrap() {
            for out in sent {
                // A second resend of one delivered already: a duplicate.
                if let Ok(g) = receive(&bob, &alice, &out.message) {
                    got.push(g);
                }
            }
        }
    }
    assert_eq!(got.first(), Some(&Got::App(b"lost".to_vec())));
    converse(&alice, &bob, "back");
}

/// What the finding costs a message Alice kept: after the forged heals and
/// Alice's return (she reads every reset, then sends), her message in flight
/// on the evicted session is `out_of_step` at Bob; his app heals naming it,
/// and her outbox sends it again: it arrives once, and the pair talks. (A
/// message sent with plain `encrypt` would be lost: no outbox holds it.)
#[test]
fn held_after_forged_heals_a_kept_message_comes_back_by_one_more_heal() {
    let (alice, bob) = pair();
    let m = alice.encrypt_kept(bob.address(), b"sent before going away", UNIX_EPOCH).unwrap();
    let mut resets = vec![heal(&bob, &alice, &[], 100)];
    let rounds = u64::try_from(MAX_ARCHIVED_STATES + 1).unwrap();
    for n in 0..rounds {
        let forged = forged_out_of_step(&alice, &bob, u8::try_from(n).unwrap());
        resets.push(heal(&bob, &alice, &[forged], 100 + (n + 1) * INTERVAL));
    }
    // Alice back: every reset read (no resend: none named a message of hers).
    for reset in &resets {
        assert!(matches!(receive(&alice, &bob, reset).unwrap(), Got::Control(_)));
    }
    let mut unreadable = Vec::new();
    match receive(&bob, &alice, &m) {
        Ok(got) => assert_eq!(got, Got::App(b"sent before going away".to_vec())),
        Err(e) => {
            assert_eq!(e.kind().recovery(), Recovery::Heal);
            unreadable.push(m.clone());
        }
    }
    if !unreadable.is_empty() {
        let reset = heal(&bob, &alice, &unreadable, 100 + (rounds + 1) * INTERVAL);
        let Got::Control(sent) = receive(&alice, &bob, &reset).unwrap() else { panic!("a reset") };
        assert_eq!(sent.len(), 1);
        assert_eq!(receive(&bob, &alice, &sent[0].message).unwrap(), Got::App(b"sent before going away".to_vec()));
    }
    converse(&alice, &bob, "back");
}

// ---------------------------------------------------------------------------
// 3. Rule 5 and `followed`
// ---------------------------------------------------------------------------

/// The crossing of 9.9 with two prekey messages of Alice's on S (`pa`,
/// `pa2`): Bob reads `pa` and answers on S (`ra`), Alice reads `ra` then
/// Bob's initiation N (`pb`) and leaves S for N with the flag; her first
/// message on N makes Bob follow (`followed`). Returns the parties, the
/// late `pa2`, a copy of Alice's record taken right after `pa2` (her S an
/// unanswered initiation: she still waits for Bob's answer on it), and the
/// two base keys.
struct Followed {
    rng: chacha20::ChaCha20Rng,
    alice: Party,
    bob: Party,
    pa2: Vec<u8>,
    alice_before: Vec<u8>,
    ea: [u8; 32],
    eb: [u8; 32],
}

fn followed(seed: u64) -> Followed {
    let mut rng = rng(seed);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let pa = alice.send(&mut rng, b"pa");
    let pa2 = alice.send(&mut rng, b"pa2");
    let alice_before = alice.copy();
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
    Followed { rng, alice, bob, pa2, alice_before, ea, eb }
}

/// Ten exchanges: every message must be read, or its reader told to heal
/// (`NoMatchingState`, code `out_of_step`); if every message was read, the
/// two must be on one session, each with every other state cut (a DH step
/// was taken: the session healed). `Ok(true)` when an app was told to heal.
fn ten_exchanges(rng: &mut chacha20::ChaCha20Rng, alice: &mut Party, bob: &mut Party) -> Result<bool, String> {
    let (a, b) = (alice.address.clone(), bob.address.clone());
    for i in 0..10 {
        let m = alice.send(rng, format!("a{i}").as_bytes());
        match bob.receive(rng, &a, &m) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::OutOfStep => return Ok(true),
            Err(e) => return Err(format!("a{i} at Bob: {e:?}")),
        }
        let m = bob.send(rng, format!("b{i}").as_bytes());
        match alice.receive(rng, &b, &m) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::OutOfStep => return Ok(true),
            Err(e) => return Err(format!("b{i} at Alice: {e:?}")),
        }
    }
    let healed = |p: &Party| p.record.archived_states() == p.record.kept_states();
    if alice.current() == bob.current() && healed(alice) && healed(bob) {
        Ok(false)
    } else {
        Err("every message read, and the pair is not on one healed session".into())
    }
}

/// The narrowed rule 5 against a peer that really does wait for our answer
/// on a state we answered: Alice's store is restored (a backup) to right
/// after she sent `pa2`, before Bob's answer and his initiation reached her,
/// while Bob is on N with `followed`. Restored Alice sends a third prekey
/// message on S (she waits for Bob's answer there). Rule 5 no longer brings
/// S back at Bob (S is answered, N `followed`), so Bob keeps sending on N,
/// which restored Alice never had: that must be `out_of_step` at her (her
/// app heals), never a silent schedule in which both read everything and
/// nothing heals. Over 32 seeds, both orders of the base keys.
#[test]
fn held_a_peer_restored_to_before_its_move_is_told_to_heal() {
    let mut seen = [false, false];
    for seed in 15_000..15_032 {
        let Followed { mut rng, alice, mut bob, alice_before, ea, eb, .. } = followed(seed);
        seen[usize::from(ea < eb)] = true;
        let mut restored = alice.with_record(&alice_before);
        let a = restored.address.clone();
        let pa3 = restored.send(&mut rng, b"pa3");
        assert_eq!(bob.receive(&mut rng, &a, &pa3).unwrap(), b"pa3", "seed {seed}");
        assert_eq!(bob.current(), eb, "seed {seed}: rule 5 does not leave a followed N for an answered S");
        let outcome = ten_exchanges(&mut rng, &mut restored, &mut bob);
        assert!(outcome.is_ok(), "seed {seed}: {outcome:?}");
    }
    assert_eq!(seen, [true, true]);
}

/// The late `pa2` (the fixed finding of `audit_flag.rs`), and then a replay
/// of it, and of `pa`, by the network: Bob stays on N every time, and the
/// pair heals on N. (A replay is a duplicate; the first copy is read on S.)
#[test]
fn held_late_and_replayed_prekey_messages_of_the_left_session_keep_the_follow() {
    for seed in 15_100..15_116 {
        let Followed { mut rng, mut alice, mut bob, pa2, eb, .. } = followed(seed);
        let a = alice.address.clone();
        assert_eq!(bob.receive(&mut rng, &a, &pa2).unwrap(), b"pa2");
        assert_eq!(bob.current(), eb, "seed {seed}");
        assert!(bob.receive(&mut rng, &a, &pa2).is_err(), "seed {seed}: a replay");
        assert_eq!(bob.current(), eb, "seed {seed}");
        bob.reload();
        let outcome = ten_exchanges(&mut rng, &mut alice, &mut bob);
        assert_eq!(outcome, Ok(false), "seed {seed}");
        assert_eq!(alice.current(), eb);
    }
}

// ---------------------------------------------------------------------------
// 4. Stores written before the field
// ---------------------------------------------------------------------------

/// The golden stores of schema 3 (written before `heard_since_reset`
/// existed) open, and healing on them works as for a new store: a silent
/// peer gets the reset on one session, a heard one a new session, and the
/// pair converges. (A record written with `heard_since_reset` false has no
/// field 8 at all, proto3: the same bytes an older release writes, so an
/// older record reads as "not heard", the behaviour before 93b803b.)
#[test]
fn held_golden_schema3_stores_heal_with_the_new_rule() {
    let dir = std::env::temp_dir().join(format!("samizdat-audit15-golden-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema3");
    for name in ["alice.db", "bob.db", "message.bin"] {
        std::fs::copy(golden.join(name), dir.join(name)).unwrap();
    }
    let alice = Device::open(dir.join("alice.db"), &StorageKey::from_bytes([0x11; 32])).unwrap();
    let bob = Device::open(dir.join("bob.db"), &StorageKey::from_bytes([0x22; 32])).unwrap();
    bob.set_heal_policy(policy()).unwrap();
    let bundle = alice.prekey_bundle().unwrap();
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let sent = |h: Heal| match h {
        Heal::Sent(o) => o.message,
        other => panic!("{other:?}"),
    };
    let first = sent(bob.heal(&bundle, &[], at(1_000_000)).unwrap());
    let silent = sent(bob.heal(&alice.prekey_bundle().unwrap(), &[], at(1_000_000 + INTERVAL)).unwrap());
    assert_eq!(base_key(&first), base_key(&silent));
    // Alice's kept, unread message of the golden store: heard.
    let pending = bob.decrypt(alice.address(), &std::fs::read(dir.join("message.bin")).unwrap()).unwrap();
    bob.commit(pending).unwrap();
    let heard = sent(bob.heal(&alice.prekey_bundle().unwrap(), &[], at(1_000_000 + 2 * INTERVAL)).unwrap());
    assert_ne!(base_key(&heard), base_key(&first));
    for reset in [&first, &silent, &heard] {
        let pending = alice.decrypt(bob.address(), reset).unwrap();
        alice.commit(pending).unwrap();
    }
    let to_bob = alice.encrypt(bob.address(), b"golden a").unwrap();
    let pending = bob.decrypt(alice.address(), &to_bob).unwrap();
    assert_eq!(pending.plaintext(), b"golden a");
    bob.commit(pending).unwrap();
    let to_alice = bob.encrypt(alice.address(), b"golden b").unwrap();
    let pending = alice.decrypt(bob.address(), &to_alice).unwrap();
    assert_eq!(pending.plaintext(), b"golden b");
    alice.commit(pending).unwrap();
    drop((alice, bob));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// 5. A rolled-back store that repeats its reset without hearing anything
// ---------------------------------------------------------------------------

/// Apps that follow the error codes: everything in flight delivered, a
/// control's commit sends what it returns, an `out_of_step` message makes
/// its reader heal (at most once per interval; `TooSoon` is skipped). Each
/// round each side sends one kept message; returns the first round in
/// which both read each other's, and the texts each app got.
fn drive(alice: &Dev, bob: &Dev, start: u64, mut flight: Vec<(usize, Vec<u8>)>) -> (Option<u64>, Vec<Vec<u8>>) {
    let mut got: Vec<Vec<u8>> = Vec::new();
    for round in 0..4u64 {
        let now = start + round * 2 * INTERVAL;
        let to_bob = alice
            .encrypt_kept(bob.address(), format!("a r{round}").as_bytes(), UNIX_EPOCH + Duration::from_secs(now))
            .unwrap();
        let to_alice = bob
            .encrypt_kept(alice.address(), format!("b r{round}").as_bytes(), UNIX_EPOCH + Duration::from_secs(now))
            .unwrap();
        flight.push((1, to_bob));
        flight.push((0, to_alice));
        let mut ok = [false, false];
        let mut guard = 0;
        while !flight.is_empty() {
            let (to, wire) = flight.remove(0);
            guard += 1;
            assert!(guard < 200, "a loop");
            let (dev, peer) = if to == 0 { (alice, bob) } else { (bob, alice) };
            match receive(dev, peer, &wire) {
                Ok(Got::App(text)) => {
                    if text.ends_with(format!("r{round}").as_bytes()) {
                        ok[to] = true;
                    }
                    got.push(text);
                }
                Ok(Got::Control(sent)) => flight.extend(sent.into_iter().map(|o| (1 - to, o.message))),
                Err(e) if e.kind().recovery() == Recovery::Heal => {
                    if let Ok(Heal::Sent(reset)) =
                        dev.heal(&peer.prekey_bundle().unwrap(), &[wire], UNIX_EPOCH + Duration::from_secs(now))
                    {
                        flight.push((1 - to, reset.message));
                    }
                }
                Err(e) => assert_eq!(e.kind().recovery(), Recovery::Drop, "{e:?}"),
            }
        }
        if ok == [true, true] {
            return (Some(round), got);
        }
    }
    (None, got)
}

/// Bob's store is rolled back to right after his reset R1 (its resend of
/// `lost` and a conversation on R1 came after). Nothing of Alice's reaches
/// Bob before his app heals again (it still awaits `lost`): the restored
/// record has `heard_since_reset` false and R1 unanswered, so the reset is
/// repeated on R1, from the restored sending chain (a counter Bob's
/// forgotten timeline may have used: Alice sees `Rollback`, `out_of_step`).
/// With the apps following the error codes, the pair talks again within
/// three rounds. (`lost` reached Bob's app before the rollback.)
#[test]
fn held_a_rolled_back_store_that_repeats_its_reset_converges() {
    for run in 0..8 {
        let (alice, bob) = pair();
        let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH).unwrap();
        let first = heal(&bob, &alice, std::slice::from_ref(&lost), 100);
        let snapshot = copy_of(bob.backend());
        let Got::Control(resent) = receive(&alice, &bob, &first).unwrap() else { panic!("a reset") };
        assert_eq!(receive(&bob, &alice, &resent[0].message).unwrap(), Got::App(b"lost".to_vec()));
        converse(&alice, &bob, "before the rollback");
        let bob = Device::open_in(snapshot, &StorageKey::from_bytes([2; 32])).unwrap();
        bob.set_heal_policy(policy()).unwrap();
        assert_eq!(bob.awaiting_resends(alice.address()).unwrap(), 1);
        let again = heal(&bob, &alice, &[], 100 + INTERVAL);
        assert_eq!(base_key(&again), base_key(&first), "silent since the snapshot: the same session");
        let (clean, _) = drive(&alice, &bob, 200, vec![(0, again)]);
        assert!(clean.is_some_and(|r| r < 3), "run {run}: not talking after 3 rounds: {clean:?}");
    }
}
