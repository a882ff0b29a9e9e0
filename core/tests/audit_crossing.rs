//! An outside audit (by a helper) of a fix, since reverted, for the crossed
//! initiation that never converges (PROTOCOL.md 9.9; the random schedule
//! `regression_three_initiations_then_a_crossed_turn_converge` in
//! `session_properties.rs`). The fix let rule 6 of `promotes` (9.6) bring
//! back a *displaced* archived state that awaited our reply (our
//! initiation, answered by the peer once, nothing sent on it since), by the
//! order of base keys. The audit broke it three ways (`crossing_broken_*`:
//! a forged or late message on the old session undoing the peer's new
//! session or its heal), so it was reverted; those tests now pass and stay
//! as guards that any later fix must keep passing. The crossed case itself
//! (`crossing_held_the_crossed_answer_converges_for_both_orders`) is the
//! bug they guarded against; it is fixed by the header's left-answered flag
//! (PROTOCOL.md 4.4, 9.6 rule 2, 9.9), which leaves rule 6 as it was.
//!
//! The window is not rare: every session we initiate is in it from the
//! peer's first answer until our first reply (Alice says "hi", Bob answers
//! and goes on talking). Any new session of the peer's in that window (its
//! heal, PROTOCOL.md 20.5, which a forged message can make it start; or a
//! plain `start_session`) displaces the state.
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
use samizdat::{
    DecryptError, ErrorKind, SessionError,
    device::{Device, Heal},
    store::Backend,
    wire::{Message, RatchetMessage},
};
use std::time::{Duration, UNIX_EPOCH};
#[cfg(feature = "hazmat")]
use support::attacker;
use support::{
    Got, memory_device as device,
    party::{Party, round_trip},
    receive_kind as receive, rng,
};

// ---------------------------------------------------------------------------
// Session-layer parties
// ---------------------------------------------------------------------------

fn ratchet_of(wire: &[u8]) -> RatchetMessage {
    match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m,
        Message::PreKey(p) => p.message().clone(),
    }
}

/// Alice initiated S (base key `s`), sent one prekey message; Bob built S
/// and answered once (`b1`), Alice read the answer and has sent nothing
/// since: Alice's S `AwaitsOurReply`. Bob has also sent `b2` on S (same
/// chain), not delivered yet. Then Bob starts a new session N (base key
/// `n`, with `s < n`) and sends its first prekey message `p`. Returns
/// everything, Bob's `b2` and `p`, and a copy of Alice's record taken while
/// S was current and answered (a seized phone).
struct Window {
    rng: ChaCha20Rng,
    alice: Party,
    bob: Party,
    b1: Vec<u8>,
    b2: Vec<u8>,
    p: Vec<u8>,
    s: [u8; 32],
    n: [u8; 32],
    copy: Vec<u8>,
}

fn window(first_seed: u64) -> Window {
    for seed in first_seed..first_seed + 64 {
        let mut rng = rng(seed);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        let hello = alice.send(&mut rng, b"hello");
        bob.receive(&mut rng, &a, &hello).unwrap();
        let b1 = bob.send(&mut rng, b"hello back");
        alice.receive(&mut rng, &b, &b1).unwrap();
        let s = alice.current();
        let copy = alice.copy();
        let b2 = bob.send(&mut rng, b"bob, old session");
        bob.initiate(&mut rng, &alice);
        let n = bob.current();
        if s >= n {
            continue;
        }
        let p = bob.send(&mut rng, b"bob starts N");
        return Window { rng, alice, bob, b1, b2, p, s, n, copy };
    }
    unreachable!("one seed in 64 gives s < n")
}

// ---------------------------------------------------------------------------
// 1. A copy of the record moves the victim back to the copied session
// ---------------------------------------------------------------------------

/// **Broken: one forged message, made from a copy of Alice's record, moves
/// Alice off a session the copy cannot read and onto one it can, and keeps
/// her there (the peer's steps are refused) until an app-level heal.**
///
/// 1. Alice initiates S, Bob answers once; Alice has not replied (S
///    `AwaitsOurReply`). The attacker copies Alice's record (a seized phone:
///    S's receiving chain key, and Alice's sending chain of S, drawn when
///    she read Bob's answer, on which she has sent nothing).
/// 2. Bob starts a new session N (his heal, or `start_session`), `s < n`
///    (half of all cases). Alice reads its prekey message (N current, S
///    archived *displaced*) and answers on N with a fresh ratchet key the
///    copy does not hold; Bob reads it and heals (his copy of S is cut).
/// 3. The attacker delivers one message forged on S's receiving chain from
///    the copied chain key (no DH step, so rule 4 and `came_back` do not
///    apply). Rule 6, with the new exception (S displaced but
///    `AwaitsOurReply`, smaller base key, N no longer owes an answer),
///    makes S current again (a `Plain` promotion: N is archived *not*
///    displaced, so it may no longer step).
/// 4. Alice now sends on S's sending chain, which the copy holds: the
///    attacker reads everything she sends; Bob cannot read it (his S is cut,
///    `NoMatchingState`). Bob's replies on N are DH steps of an archived
///    state that may not step: `NoMatchingState` at Alice. Nothing heals
///    until an app heal (rate-limited to one per interval).
///
/// Before 6d9850f rule 6 refused every displaced state, and the only way
/// back was a forged DH step (rule 4), which is a `Back` promotion: Bob's
/// next step on N brings Alice back at once, and `came_back` makes it
/// one-shot. The exception is neither.
///
/// Suggested fix: the record alone cannot tell this from the crossing of
/// 9.9 (in both, the message that triggers the exception is a message on
/// the answer's chain, which a copy can forge). At least: (a) make the
/// exception one-shot (`&& !state.came_back`) and a `Promotion::Back`, so
/// that the state it leaves is displaced and the peer's next step on it
/// restores it (as rule 4 does); (b) for resets, see
/// `crossing_broken_a_forged_heal_and_a_held_back_message_undo_the_reset`;
/// (c) to close it for good, let the peer settle the crossing instead
/// (the side that answered our initiation while its own was unanswered
/// knows it is a crossing; e.g. it could mark its next message on our
/// session, or answer on its own initiation), and drop the exception.
/// PROTOCOL.md 9.10 point 2 still says rule 6 moves "never to a displaced
/// state"; it is no longer true.
#[cfg(feature = "hazmat")]
#[test]
fn crossing_broken_a_copy_forges_one_message_to_bring_back_the_awaiting_state() {
    let Window { mut rng, mut alice, mut bob, p, s, n, copy, .. } = window(6_100);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    let forge_on = attacker::receiving(&copy, &s);
    let alice_on_s = attacker::sending(&copy, &s);

    alice.receive(&mut rng, &b, &p).unwrap();
    assert_eq!(alice.current(), n);
    let a1 = alice.send(&mut rng, b"alice answers N");
    assert!(attacker::read(&alice_on_s, &ratchet_of(&a1)).is_none(), "control: the copy cannot read N");
    bob.receive(&mut rng, &a, &a1).unwrap();
    assert_eq!(bob.current(), n);

    let forged = attacker::forge(&mut rng, &forge_on, forge_on.counter, b"forged on S");
    let forged_result = alice.receive(&mut rng, &b, &forged.to_bytes());
    let moved = alice.current() == s;

    // The consequences, for the report.
    let secret = alice.send(&mut rng, b"alice's secret");
    let leaked = attacker::read(&alice_on_s, &ratchet_of(&secret));
    let at_bob = bob.receive(&mut rng, &a, &secret);
    let reply = bob.send(&mut rng, b"bob on N");
    let at_alice = alice.receive(&mut rng, &b, &reply);
    assert!(
        !moved && leaked.is_none(),
        "a message forged from a copy ({forged_result:?}) moved Alice from N back to the copied S \
         (moved: {moved}); the copy read what she sent next: {:?}; Bob read it: {at_bob:?}; Bob's next \
         message at Alice: {at_alice:?}",
        leaked.map(|p| String::from_utf8_lossy(&p).into_owned()),
    );
}

/// Held: the same forgery when Alice had replied on S before Bob's new
/// session (S no longer `AwaitsOurReply`, the case 20.6 calls the only one
/// a reset leaves): rule 6 refuses the displaced state, Alice stays on N.
#[cfg(feature = "hazmat")]
#[test]
fn crossing_held_a_copy_cannot_bring_back_a_displaced_state_we_replied_on() {
    for seed in 6_200..6_264 {
        let mut rng = rng(seed);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        let hello = alice.send(&mut rng, b"hello");
        bob.receive(&mut rng, &a, &hello).unwrap();
        let b1 = bob.send(&mut rng, b"hello back");
        alice.receive(&mut rng, &b, &b1).unwrap();
        let replied = alice.send(&mut rng, b"alice replies on S");
        bob.receive(&mut rng, &a, &replied).unwrap();
        let s = alice.current();
        let copy = alice.copy();
        bob.initiate(&mut rng, &alice);
        let n = bob.current();
        if s >= n {
            continue;
        }
        let p = bob.send(&mut rng, b"bob starts N");
        alice.receive(&mut rng, &b, &p).unwrap();
        let a1 = alice.send(&mut rng, b"alice answers N");
        bob.receive(&mut rng, &a, &a1).unwrap();
        let forge_on = attacker::receiving(&copy, &s);
        let forged = attacker::forge(&mut rng, &forge_on, forge_on.counter, b"forged on S");
        let _ = alice.receive(&mut rng, &b, &forged.to_bytes());
        assert_eq!(alice.current(), n, "seed {seed}");
        round_trip(&mut rng, &mut bob, &mut alice, 2);
        assert_eq!((alice.current(), bob.current()), (n, n));
        return;
    }
    unreachable!("one seed in 64 gives s < n");
}

// ---------------------------------------------------------------------------
// 2. A late genuine message undoes the peer's new session (session layer)
// ---------------------------------------------------------------------------

/// **Broken: a late genuine message of the old session undoes the peer's
/// new session whenever our state in it awaits our reply (finding 6 of
/// `audit_healing.rs`, reopened by the exception).**
///
/// 1. Alice initiates S; Bob answers (`b1`, read) and sends `b2` on the
///    same chain (delayed by the network or a server). Alice has not
///    replied: S `AwaitsOurReply`.
/// 2. Bob starts N (`s < n`), Alice reads its prekey message and answers on
///    N; Bob reads the answer: a DH step of his current N, he heals and
///    cuts S.
/// 3. `b2` arrives at Alice: it decrypts on the displaced S (no step), and
///    rule 6 (S awaits our reply, is the smaller, N no longer owes an
///    answer) makes S current again.
/// 4. Alice sends on S: Bob cannot read it (`NoMatchingState`). Bob sends on
///    N (a DH step): Alice's N is archived not displaced and may not step
///    (`NoMatchingState`). Both out of step until an app-level heal; what
///    was sent with `encrypt` meanwhile is lost.
///
/// PROTOCOL.md 9.9 says a reset "rarely looks like this case" and needs "a
/// prekey message of ours delayed past the peer's answer and a restore of
/// the peer's store"; it needs neither, only the peer's new session inside
/// the window between its first answer and our first reply, and one of its
/// messages of the old session delivered late.
#[test]
fn crossing_broken_a_late_message_of_the_old_session_undoes_the_peers_new_session() {
    let Window { mut rng, mut alice, mut bob, b2, p, s, n, .. } = window(6_300);
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.receive(&mut rng, &b, &p).unwrap();
    let a1 = alice.send(&mut rng, b"alice answers N");
    bob.receive(&mut rng, &a, &a1).unwrap();
    assert_eq!(alice.receive(&mut rng, &b, &b2).unwrap(), b"bob, old session");
    let alice_on = alice.current();
    let to_bob = alice.send(&mut rng, b"a");
    let to_alice = bob.send(&mut rng, b"b");
    let (at_bob, at_alice) = (bob.receive(&mut rng, &a, &to_bob), alice.receive(&mut rng, &b, &to_alice));
    assert!(
        alice_on == n && at_bob.is_ok() && at_alice.is_ok(),
        "Bob's late message of S moved Alice back to S (s < n; Alice on s: {}); then Alice's message at Bob: \
         {at_bob:?}, Bob's at Alice: {at_alice:?}",
        alice_on == s
    );
}

// ---------------------------------------------------------------------------
// 3. The same with the library's healing (device layer)
// ---------------------------------------------------------------------------

fn heal<B: Backend, C: Backend>(healer: &Device<B>, peer: &Device<C>, unreadable: &[Vec<u8>], now: u64) -> Vec<u8> {
    match healer.heal(&peer.prekey_bundle().unwrap(), unreadable, UNIX_EPOCH + Duration::from_secs(now)).unwrap() {
        Heal::Sent(reset) => reset.message,
        other => panic!("no reset: {other:?}"),
    }
}

/// **Broken: anyone who can inject one message and delay another undoes a
/// peer's heal half the time, when the healer's peer has not replied since
/// its initiation was answered.**
///
/// 1. Alice starts a session (`start_session`, `hello`), Bob answers
///    (`hello back`), Alice reads it and has not written since.
/// 2. Bob writes again (`bob, old session`); the server holds it back.
/// 3. The server sends Bob a garbage message "from Alice": no state opens
///    it, `NoMatchingState`, code `out_of_step`, recovery `heal`: Bob's app
///    heals (PROTOCOL.md 9.5: "a forgery can make the app heal", once per
///    interval). Alice reads the reset, installs N (S displaced, still
///    `AwaitsOurReply`) and writes on N; Bob reads it and heals N (S cut).
/// 4. The server releases the held message: it decrypts on S, and rule 6's
///    exception makes S current again when `s < n`.
/// 5. Alice's next message is `out_of_step` at Bob, Bob's at Alice; Bob's
///    rate limit keeps him from healing for an interval; messages sent with
///    `encrypt` meanwhile are lost for good.
///
/// Before 6d9850f this schedule never broke (rule 6 refused displaced
/// states, the fix of finding 6 of `audit_healing.rs`).
///
/// Suggested fix (checked on a scratch copy of the tree: this test and
/// the crossing tests pass, as do `audit_healing`, `healing`,
/// `healing_properties`, `session_properties`, `audit2` and `pcs`): a
/// device knows that the message it commits is a reset (control content,
/// `ControlAction::Reset`). There, mark every displaced archived state as
/// left by the peer (e.g. set its `came_back`), and let the exception
/// require `!state.came_back`: `!state.displaced || (state.awaits_our_reply()
/// && !state.came_back)`. A plain new session of the peer's stays ambiguous
/// (the two session-layer tests above).
#[cfg(feature = "hazmat")]
#[test]
fn crossing_broken_a_forged_heal_and_a_held_back_message_undo_the_reset() {
    const RUNS: usize = 24;
    let mut broken = Vec::new();
    for run in 0..RUNS {
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let hello = alice.encrypt(bob.address(), b"hello").unwrap();
        assert_eq!(receive(&bob, &alice, &hello).unwrap(), Got::App(b"hello".to_vec()));
        let back = bob.encrypt(alice.address(), b"hello back").unwrap();
        assert_eq!(receive(&alice, &bob, &back).unwrap(), Got::App(b"hello back".to_vec()));

        let held = bob.encrypt(alice.address(), b"bob, old session").unwrap();
        // A garbage message in the shape of a ratchet message.
        let shape = ratchet_of(&held);
        let mut header = *shape.header();
        header.iter_mut().enumerate().for_each(|(i, x)| *x = (i as u8).wrapping_mul(37) ^ (run as u8));
        let garbage = samizdat::hazmat::ratchet_message(header, vec![0x5a; shape.body().len()]).to_bytes();
        let error = receive(&bob, &alice, &garbage).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::OutOfStep, "{error:?}");
        let reset = heal(&bob, &alice, &[garbage], 10);

        assert!(matches!(receive(&alice, &bob, &reset).unwrap(), Got::Control(_)));
        let a1 = alice.encrypt(bob.address(), b"alice on N").unwrap();
        assert_eq!(receive(&bob, &alice, &a1).unwrap(), Got::App(b"alice on N".to_vec()));
        assert_eq!(receive(&alice, &bob, &held).unwrap(), Got::App(b"bob, old session".to_vec()));

        let to_bob = alice.encrypt(bob.address(), b"a").unwrap();
        let to_alice = bob.encrypt(alice.address(), b"b").unwrap();
        let (at_bob, at_alice) = (receive(&bob, &alice, &to_bob), receive(&alice, &bob, &to_alice));
        if at_bob.is_err() || at_alice.is_err() {
            broken.push((run, at_bob.err().map(|e| e.kind()), at_alice.err().map(|e| e.kind())));
        }
    }
    assert!(broken.is_empty(), "{} of {RUNS} heals undone by one held-back message: {broken:?}", broken.len());
}

// ---------------------------------------------------------------------------
// 4. What the change is for still holds
// ---------------------------------------------------------------------------

/// Held: the crossing of 9.9 ("when B answered A's initiation before A
/// received B's") converges in both orders of the base keys, and heals on
/// the next round trip, with nothing refused. It converges on Bob's session
/// N, whatever the order: Alice left her answered S for it (9.6, a new
/// session of the peer's may be a reset), and her messages on N say so (the
/// header's left-answered flag), so Bob follows (rule 2) instead of keeping
/// S by the order of base keys. (The audit expected the smaller base key;
/// the fix that landed makes the side that knows it left a session decide.)
#[test]
fn crossing_held_the_crossed_answer_converges_for_both_orders() {
    let mut seen = [false, false];
    for seed in 6_400..6_464 {
        let mut rng = rng(seed);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        let pa = alice.send(&mut rng, b"alice's prekey message");
        bob.initiate(&mut rng, &alice);
        let pb = bob.send(&mut rng, b"bob's prekey message");
        let (ea, eb) = (alice.current(), bob.current());
        // Bob reads Alice's first and answers on R(EK_A).
        assert_eq!(bob.receive(&mut rng, &a, &pa).unwrap(), b"alice's prekey message");
        let answer = bob.send(&mut rng, b"bob answers A");
        // Alice reads the answer, then Bob's older prekey message.
        alice.receive(&mut rng, &b, &answer).unwrap();
        alice.receive(&mut rng, &b, &pb).unwrap();
        let order = usize::from(ea < eb);
        seen[order] = true;
        // Normal talk from here, Alice first (she owes an answer on R(EK_B)).
        for i in 0..3 {
            let m = alice.send(&mut rng, format!("a{i}").as_bytes());
            bob.receive(&mut rng, &a, &m).unwrap_or_else(|e| panic!("seed {seed} a{i}: {e:?}"));
            let m = bob.send(&mut rng, format!("b{i}").as_bytes());
            alice.receive(&mut rng, &b, &m).unwrap_or_else(|e| panic!("seed {seed} b{i}: {e:?}"));
        }
        round_trip(&mut rng, &mut alice, &mut bob, 2);
        assert_eq!((alice.current(), bob.current()), (eb, eb), "seed {seed}");
        assert_eq!(alice.record.archived_states(), alice.record.kept_states(), "seed {seed}: Alice healed");
        assert_eq!(bob.record.archived_states(), bob.record.kept_states(), "seed {seed}: Bob healed");
        if seen == [true, true] {
            return;
        }
    }
    panic!("both orders not seen: {seen:?}");
}

/// Held: a replay of the peer's answer on the awaiting state (the message
/// that made it answered), after the peer's new session, is a duplicate and
/// moves nothing.
#[test]
fn crossing_held_a_replayed_answer_moves_nothing() {
    let Window { mut rng, mut alice, bob, b1, p, n, .. } = window(6_500);
    let b = bob.address.clone();
    alice.receive(&mut rng, &b, &p).unwrap();
    let _a1 = alice.send(&mut rng, b"alice answers N");
    let before = alice.record.to_bytes();
    let replayed = alice.receive(&mut rng, &b, &b1);
    assert_eq!(replayed, Err(SessionError::Decrypt(DecryptError::Duplicate { counter: 0 })));
    assert_eq!(*alice.record.to_bytes(), *before);
    assert_eq!(alice.current(), n);
}
