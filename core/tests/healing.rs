//! Healing (issue 15, items 2 and 3): a device that finds a session out of
//! step starts a new one from the peer's fresh bundle and sends a reset
//! naming what it could not read; the peer installs the new session and
//! sends those messages again from its sealed outbox. Each scenario of the
//! issue is here: more than 2,000 dropped messages, an evicted key, either
//! side restored from a backup, a reinstalled peer, a forgery, crossing
//! resets; and the outbox's bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use samizdat::{
    DecryptError, ErrorKind, Recovery, SessionError,
    address::Address,
    device::{Device, DeviceError, Heal, HealPolicy, MessageKind, Outgoing},
    heal::message_id,
    limits::{MAX_OUTBOX_MESSAGES, MAX_RESET_IDS, MAX_SKIP, MAX_STORED_SKIPPED_KEYS},
    store::{Backend, MemoryBackend, Table},
};
use std::time::{Duration, UNIX_EPOCH};
use support::copy_of;

type Dev = Device<MemoryBackend>;

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn device(name: &str, key: u8) -> Dev {
    Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address(name), UNIX_EPOCH).unwrap()
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
    /// A message for the app.
    App(Vec<u8>),
    /// A control message; what its commit returned to send.
    Control(Vec<Outgoing>),
}

/// Decrypts and commits `wire` from `from` at `to`.
fn receive(to: &Dev, from: &Dev, wire: &[u8]) -> Result<Got, DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    let kind = pending.kind();
    let plaintext = pending.plaintext().to_vec();
    let sent = to.commit(pending)?;
    Ok(match kind {
        MessageKind::Direct => {
            assert!(sent.is_empty());
            Got::App(plaintext)
        }
        _ => Got::Control(sent),
    })
}

fn kind(result: Result<Got, DeviceError>) -> ErrorKind {
    result.expect_err("an error").kind()
}

/// Bob heals with Alice after `unreadable`, at `now`: the reset.
fn heal(bob: &Dev, alice: &Dev, unreadable: &[Vec<u8>], now: u64) -> Vec<u8> {
    match bob.heal(&alice.prekey_bundle().unwrap(), unreadable, UNIX_EPOCH + Duration::from_secs(now)).unwrap() {
        Heal::Sent(reset) => {
            assert_eq!(&reset.to, alice.address());
            reset.message
        }
        other => panic!("no reset: {other:?}"),
    }
}

/// Alice commits Bob's reset: the messages she sends again.
fn answer(alice: &Dev, bob: &Dev, reset: &[u8]) -> Vec<Vec<u8>> {
    match receive(alice, bob, reset).unwrap() {
        Got::Control(sent) => sent.into_iter().map(|o| o.message).collect(),
        other => panic!("a reset read as {other:?}"),
    }
}

/// Each side sends one message the other reads: the session works both ways.
fn converse(alice: &Dev, bob: &Dev, tag: &str) {
    let to_bob = alice.encrypt_kept(bob.address(), format!("a {tag}").as_bytes(), UNIX_EPOCH).unwrap();
    assert_eq!(receive(bob, alice, &to_bob).unwrap(), Got::App(format!("a {tag}").into_bytes()));
    let to_alice = bob.encrypt_kept(alice.address(), format!("b {tag}").as_bytes(), UNIX_EPOCH).unwrap();
    assert_eq!(receive(alice, bob, &to_alice).unwrap(), Got::App(format!("b {tag}").into_bytes()));
}

/// The first case: more than 2,000 messages dropped. Every later
/// message from Alice is out of step at Bob, while his still reach her. Bob
/// heals naming the ones he saw; Alice sends again those her outbox holds;
/// each reaches Bob's app once, and the session works both ways after.
#[test]
fn more_than_2000_dropped_messages_heal_and_the_held_ones_arrive_once() {
    let (alice, bob) = pair();
    for i in 0..=MAX_SKIP {
        alice
            .encrypt_kept(bob.address(), format!("dropped {i}").as_bytes(), UNIX_EPOCH + Duration::from_secs(1))
            .unwrap();
    }
    // The outbox kept the latest MAX_OUTBOX_MESSAGES of them (and "hello").
    assert_eq!(alice.outbox_len(bob.address()).unwrap(), MAX_OUTBOX_MESSAGES);
    let seen: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            alice
                .encrypt_kept(bob.address(), format!("seen {i}").as_bytes(), UNIX_EPOCH + Duration::from_secs(2))
                .unwrap()
        })
        .collect();
    for wire in &seen {
        let error = bob.decrypt(alice.address(), wire).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::OutOfStep, "{error:?}");
        assert_eq!(error.kind().recovery(), Recovery::Heal);
    }
    // Bob's replies still reach Alice: only her direction is broken.
    let reply = bob.encrypt_kept(alice.address(), b"still here", UNIX_EPOCH + Duration::from_secs(2)).unwrap();
    assert_eq!(receive(&alice, &bob, &reply).unwrap(), Got::App(b"still here".to_vec()));

    let reset = heal(&bob, &alice, &seen, 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(resent.len(), 3, "the three messages Bob named, all in the outbox");
    for (i, wire) in resent.iter().enumerate() {
        let pending = bob.decrypt(alice.address(), wire).unwrap();
        assert_eq!(pending.kind(), MessageKind::Direct);
        assert_eq!(pending.plaintext(), format!("seen {i}").as_bytes());
        assert_eq!(pending.message_id(), Some(message_id(&seen[i])), "the id of the message as first sent");
        bob.commit(pending).unwrap();
    }
    // A copy of a resend is a duplicate; so is a copy of an original now.
    for wire in resent.iter().chain(&seen) {
        assert_eq!(kind(receive(&bob, &alice, wire)), ErrorKind::Duplicate);
    }
    converse(&alice, &bob, "after the heal");
    converse(&alice, &bob, "and again");
}

/// The second case: a message whose skipped key was evicted is
/// `KeyEvicted` (heal), and healing brings it.
#[test]
fn a_message_whose_key_was_evicted_heals() {
    let (alice, bob) = pair();
    let held = alice.encrypt_kept(bob.address(), b"held back", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    // A gap that fills Bob's skipped keys ("held back" among them), then
    // one more skipped key that evicts the oldest, "held back"'s.
    let gap = u32::try_from(MAX_STORED_SKIPPED_KEYS).unwrap() - 1;
    let mut last = Vec::new();
    for i in 0..=gap {
        last = alice.encrypt(bob.address(), format!("m{i}").as_bytes()).unwrap();
    }
    receive(&bob, &alice, &last).unwrap();
    alice.encrypt(bob.address(), b"skipped too").unwrap();
    let after = alice.encrypt(bob.address(), b"after").unwrap();
    receive(&bob, &alice, &after).unwrap();
    let error = bob.decrypt(alice.address(), &held).unwrap_err();
    assert!(
        matches!(&error, DeviceError::Session(SessionError::Decrypt(DecryptError::KeyEvicted { .. }))),
        "{error:?}"
    );
    let reset = heal(&bob, &alice, std::slice::from_ref(&held), 5);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(resent.len(), 1);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"held back".to_vec()));
    converse(&alice, &bob, "after");
}

/// Bob's store restored from a backup: Alice's later messages open under
/// no state of his (`NoMatchingState`). He heals; she sends them again.
#[test]
fn a_store_restored_from_a_backup_heals() {
    let (alice, bob) = pair();
    let backup = copy_of(bob.backend());
    converse(&alice, &bob, "after the backup");
    converse(&alice, &bob, "and more");
    let lost: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            alice
                .encrypt_kept(bob.address(), format!("lost {i}").as_bytes(), UNIX_EPOCH + Duration::from_secs(3))
                .unwrap()
        })
        .collect();
    let bob = Device::open_in(backup, &StorageKey::from_bytes([2; 32])).unwrap();
    for wire in &lost {
        let error = bob.decrypt(alice.address(), wire).unwrap_err();
        assert_eq!(error.kind().recovery(), Recovery::Heal, "{error:?}");
    }
    let reset = heal(&bob, &alice, &lost, 10);
    let resent = answer(&alice, &bob, &reset);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, wire).unwrap()).collect();
    assert_eq!(got, vec![Got::App(b"lost 0".to_vec()), Got::App(b"lost 1".to_vec())]);
    converse(&alice, &bob, "healed");
}

/// Alice's store restored: she reuses counters (`Rollback` at Bob, out of
/// step). Bob heals; what restored Alice sent since is in her outbox and
/// comes again.
#[test]
fn a_restored_sender_is_healed_by_its_peer() {
    let (alice, bob) = pair();
    let backup = copy_of(alice.backend());
    converse(&alice, &bob, "after the backup");
    let alice = Device::open_in(backup, &StorageKey::from_bytes([1; 32])).unwrap();
    let reused = alice.encrypt_kept(bob.address(), b"from the past", UNIX_EPOCH + Duration::from_secs(4)).unwrap();
    let error = bob.decrypt(alice.address(), &reused).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfStep, "{error:?}");
    let reset = heal(&bob, &alice, std::slice::from_ref(&reused), 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(resent.len(), 1);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"from the past".to_vec()));
    converse(&alice, &bob, "healed");
}

/// Alice reinstalled (a new identity): Bob's app trusts it first. What
/// Bob had sent the old Alice, which the new one cannot read, comes again
/// when she heals only if Bob's policy allows a newly trusted identity to
/// get it; by default it does not, so that a key trusted later (an
/// attacker's, accepted in error) gets nothing sent before.
#[test]
fn a_reinstalled_peer_heals_after_the_apps_trust_decision() {
    for allowed in [false, true] {
        let (alice, bob) = pair();
        bob.set_heal_policy(HealPolicy { resend_to_new_identity: allowed, ..HealPolicy::default() }).unwrap();
        let in_flight =
            bob.encrypt_kept(alice.address(), b"to the old install", UNIX_EPOCH + Duration::from_secs(3)).unwrap();
        drop(alice);
        let alice = device("alice", 9);
        // The new Alice has no session: Bob's message is out of reach.
        assert_eq!(kind(receive(&alice, &bob, &in_flight)), ErrorKind::NoSession);
        // Healing first needs Bob's app to trust the new identity.
        let reset = heal(&alice, &bob, std::slice::from_ref(&in_flight), 10);
        let error = bob.decrypt(alice.address(), &reset).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UntrustedIdentity);
        bob.trust_identity(alice.address(), alice.identity_key()).unwrap();
        let resent = answer(&bob, &alice, &reset);
        if allowed {
            assert_eq!(resent.len(), 1);
            assert_eq!(receive(&alice, &bob, &resent[0]).unwrap(), Got::App(b"to the old install".to_vec()));
        } else {
            assert!(resent.is_empty(), "sent to the old identity: not to the new one");
        }
        converse(&alice, &bob, "healed");
        // What Bob sends from now on is the new identity's.
        let now_kept =
            bob.encrypt_kept(alice.address(), b"for the new install", UNIX_EPOCH + Duration::from_secs(20)).unwrap();
        let reset = heal(&alice, &bob, std::slice::from_ref(&now_kept), 4_000);
        let resent = answer(&bob, &alice, &reset);
        assert_eq!(resent.len(), 1);
        assert_eq!(receive(&alice, &bob, &resent[0]).unwrap(), Got::App(b"for the new install".to_vec()));
    }
}

/// At most one reset per peer per interval: forged messages (all
/// `NoMatchingState`) can make the app ask for many, but only the first is
/// made; the next only after the interval. Nothing is written for a refusal.
#[test]
fn resets_are_rate_limited_so_forgeries_trigger_at_most_one() {
    let (alice, bob) = pair();
    let genuine = alice.encrypt(bob.address(), b"genuine").unwrap();
    let forgeries: Vec<Vec<u8>> = (0..20u8)
        .map(|i| {
            let mut forged = genuine.clone();
            // The header is encrypted: change a byte of it.
            forged[10] ^= i + 1;
            forged
        })
        .collect();
    let mut sent = 0;
    for (i, forged) in forgeries.iter().enumerate() {
        let error = bob.decrypt(alice.address(), forged).unwrap_err();
        if error.kind().recovery() != Recovery::Heal {
            continue;
        }
        let now = 100 + u64::try_from(i).unwrap();
        let before = copy_of(bob.backend());
        match bob
            .heal(&alice.prekey_bundle().unwrap(), std::slice::from_ref(forged), UNIX_EPOCH + Duration::from_secs(now))
            .unwrap()
        {
            Heal::Sent(_) => sent += 1,
            Heal::TooSoon { retry_at } => {
                assert_eq!(retry_at, UNIX_EPOCH + Duration::from_secs(100) + HealPolicy::default().reset_interval);
                assert!(before.snapshot() == bob.backend().snapshot(), "a refused reset wrote");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, 1, "one reset for twenty forgeries");
    // The interval set by the app; a reset again once it passed.
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(60), ..HealPolicy::default() }).unwrap();
    assert!(
        matches!(bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(159)).unwrap(), Heal::TooSoon { retry_at } if retry_at == UNIX_EPOCH + Duration::from_secs(160))
    );
    assert!(matches!(
        bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(160)).unwrap(),
        Heal::Sent(_)
    ));
    // The genuine message, in flight all along, still decrypts.
    assert_eq!(receive(&bob, &alice, &genuine).unwrap(), Got::App(b"genuine".to_vec()));
}

/// Both sides heal at once: each reset installs the other's session, and
/// the two converge on one (the rule for simultaneous initiation); the
/// resends cross, and each reaches its app once.
#[test]
fn crossing_resets_converge_to_one_session() {
    let (alice, bob) = pair();
    let to_bob = alice.encrypt_kept(bob.address(), b"for bob", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let to_alice = bob.encrypt_kept(alice.address(), b"for alice", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let from_bob = heal(&bob, &alice, std::slice::from_ref(&to_bob), 10);
    let from_alice = heal(&alice, &bob, std::slice::from_ref(&to_alice), 10);
    let bob_resends = answer(&bob, &alice, &from_alice);
    let alice_resends = answer(&alice, &bob, &from_bob);
    assert_eq!((alice_resends.len(), bob_resends.len()), (1, 1));
    assert_eq!(receive(&bob, &alice, &alice_resends[0]).unwrap(), Got::App(b"for bob".to_vec()));
    assert_eq!(receive(&alice, &bob, &bob_resends[0]).unwrap(), Got::App(b"for alice".to_vec()));
    // The originals, delivered late, are duplicates now.
    for (to, from, wire) in [(&bob, &alice, &to_bob), (&alice, &bob, &to_alice)] {
        let error = to.decrypt(from.address(), wire).unwrap_err();
        assert!(matches!(error, DeviceError::Session(SessionError::Decrypt(DecryptError::Resent))), "{error:?}");
        assert_eq!(error.kind(), ErrorKind::Duplicate);
    }
    for round in 0..4 {
        converse(&alice, &bob, &format!("round {round}"));
    }
}

/// The original, delivered after its resend, is a duplicate; delivered
/// before it, the resend is nothing for the app. Either way the app gets it
/// once.
#[test]
fn a_message_reaches_the_app_once_whichever_copy_comes_first() {
    for original_first in [false, true] {
        let (alice, bob) = pair();
        let delayed = alice.encrypt_kept(bob.address(), b"delayed", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let reset = heal(&bob, &alice, std::slice::from_ref(&delayed), 10);
        let resent = answer(&alice, &bob, &reset);
        assert_eq!(resent.len(), 1);
        let (first, second) = if original_first { (&delayed, &resent[0]) } else { (&resent[0], &delayed) };
        assert_eq!(receive(&bob, &alice, first).unwrap(), Got::App(b"delayed".to_vec()));
        match receive(&bob, &alice, second) {
            Ok(got) => assert_eq!(got, Got::Control(Vec::new()), "original first: the resend is no message"),
            Err(error) => assert_eq!(error.kind(), ErrorKind::Duplicate, "{error:?}"),
        }
        converse(&alice, &bob, "after");
    }
}

/// A reset names at most MAX_RESET_IDS messages (the latest), and one that
/// names messages the outbox does not hold sends nothing for them.
#[test]
fn a_reset_names_at_most_the_limit_and_unknown_ids_send_nothing() {
    let (alice, bob) = pair();
    let junk: Vec<Vec<u8>> = (0..MAX_RESET_IDS + 10).map(|i| format!("never sent {i}").into_bytes()).collect();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let mut unreadable = junk.clone();
    unreadable.push(kept.clone());
    let reset = heal(&bob, &alice, &unreadable, 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(resent.len(), 1, "only the one message Alice holds");
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
}

/// The outbox keeps at most the policy's count and age, forgets what is
/// acknowledged, and deletes the rows of what it no longer keeps.
#[test]
fn the_outbox_is_bounded_in_count_and_age_and_forgets_what_is_acknowledged() {
    let (alice, bob) = pair();
    let peer = bob.address();
    let rows = |alice: &Dev| {
        alice.backend().scan(Table::Sessions).unwrap().len() + alice.backend().scan(Table::Outboxes).unwrap().len()
    };
    // `pair` left "hello" in the outbox: one entry row beside the session
    // row, and the index in table `outboxes`.
    assert_eq!((alice.outbox_len(peer).unwrap(), rows(&alice)), (1, 3));
    alice
        .set_heal_policy(HealPolicy {
            outbox_max_messages: 3,
            outbox_max_age: Duration::from_secs(100),
            ..HealPolicy::default()
        })
        .unwrap();
    let sent: Vec<Vec<u8>> =
        (0..5).map(|i| alice.encrypt_kept(peer, &[i], UNIX_EPOCH + Duration::from_secs(10)).unwrap()).collect();
    assert_eq!((alice.outbox_len(peer).unwrap(), rows(&alice)), (3, 5));
    // The two oldest are gone: a reset naming them gets nothing.
    let reset = heal(&bob, &alice, &sent, 20);
    let resent = answer(&alice, &bob, &reset);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, wire).unwrap()).collect();
    assert_eq!(got, vec![Got::App(vec![2]), Got::App(vec![3]), Got::App(vec![4])]);
    // Acknowledged: removed, unknown ids ignored.
    assert_eq!(alice.acknowledge(peer, &[message_id(&sent[3]), [0; 16]]).unwrap(), 1);
    assert_eq!(alice.outbox_len(peer).unwrap(), 2);
    // Past the age, the next send drops the old ones.
    alice.encrypt_kept(peer, b"late", UNIX_EPOCH + Duration::from_secs(110)).unwrap();
    assert_eq!((alice.outbox_len(peer).unwrap(), rows(&alice)), (1, 3));
    assert_eq!(alice.acknowledge(peer, &[message_id(&sent[4])]).unwrap(), 0);
    // The policy's bound is checked.
    let too_many = HealPolicy { outbox_max_messages: MAX_OUTBOX_MESSAGES + 1, ..HealPolicy::default() };
    assert_eq!(alice.set_heal_policy(too_many).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // `encrypt` keeps nothing.
    alice.encrypt(peer, b"not kept").unwrap();
    assert_eq!(alice.outbox_len(peer).unwrap(), 1);
}

/// What the outbox keeps is sealed: no plaintext in the store's bytes.
#[test]
fn the_outbox_is_sealed() {
    let (alice, bob) = pair();
    let secret = b"a plaintext that must not be stored in the clear";
    let wire = alice.encrypt_kept(bob.address(), secret, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let id = message_id(&wire);
    for (key, value) in alice.backend().scan(Table::Sessions).unwrap() {
        assert!(!value.windows(secret.len()).any(|w| w == secret), "a plaintext in the clear");
        // Nor the id, which the server can compute from what it carried.
        for bytes in [&key, &value] {
            assert!(!bytes.windows(id.len()).any(|w| w == id), "a message id in the clear");
        }
    }
}

/// A failed commit of a reset (its row rewritten meanwhile) writes nothing
/// and sends nothing; decrypting it again works.
#[test]
fn a_stale_reset_commit_sends_nothing() {
    let (alice, bob) = pair();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&kept), 10);
    let pending = alice.decrypt(bob.address(), &reset).unwrap();
    // Another write to the session meanwhile.
    alice.encrypt(bob.address(), b"meanwhile").unwrap();
    let error = alice.commit(pending).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::StalePending)), "{error:?}");
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(resent.len(), 1);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
}

/// A reset lost on the way: the messages it named are still awaited, and
/// the next heal (after the interval) names them again by itself; a lost
/// reset does not count. A message the peer never sends again (a forgery's
/// id, here) is named by at most MAX_RESET_NAMINGS resets the peer answered,
/// then given up: waiting for it cannot make resets for ever.
#[test]
fn a_lost_reset_is_made_again_and_what_never_comes_is_given_up() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(10), ..HealPolicy::default() }).unwrap();
    let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let forged = b"never sent by anyone".to_vec();
    // Three resets lost on the way: none counts.
    for now in [100, 110, 120] {
        let given: &[Vec<u8>] = if now == 100 { &[lost.clone(), forged.clone()] } else { &[] };
        let _dropped = heal(&bob, &alice, given, now);
        assert_eq!(bob.awaiting_resends(alice.address()).unwrap(), 2, "at {now}");
    }
    // Too soon: nothing; then the app heals at retry_at, naming nothing new.
    assert_eq!(
        bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(125)).unwrap(),
        Heal::TooSoon { retry_at: UNIX_EPOCH + Duration::from_secs(130) }
    );
    let again = heal(&bob, &alice, &[], 130);
    let resent = answer(&alice, &bob, &again);
    assert_eq!(resent.len(), 1, "the forgery's id is not Alice's");
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"lost".to_vec()));
    // The forgery's id: named by answered resets until the limit, then
    // given up.
    let mut resets = 0;
    let mut now = 130;
    while bob.awaiting_resends(alice.address()).unwrap() > 0 {
        now += 10;
        resets += 1;
        assert!(resets <= samizdat::limits::MAX_RESET_NAMINGS, "{resets} resets for one forgery");
        let reset = heal(&bob, &alice, &[], now);
        assert!(answer(&alice, &bob, &reset).is_empty());
        // Alice's reply answers the reset.
        converse(&alice, &bob, &format!("at {now}"));
    }
    assert_eq!(resets, samizdat::limits::MAX_RESET_NAMINGS - 1, "the reset at 130 was the first answered");
    converse(&alice, &bob, "after");
}

/// A reset is a control message of no group, with nothing for the app;
/// so is a resend not for the app (the original was read first).
#[test]
fn healing_control_messages_belong_to_no_group() {
    let (alice, bob) = pair();
    let delayed = alice.encrypt_kept(bob.address(), b"delayed", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&delayed), 10);
    let pending = alice.decrypt(bob.address(), &reset).unwrap();
    assert_eq!((pending.kind(), pending.group_id(), pending.plaintext()), (MessageKind::Control, None, &[][..]));
    let resent = alice.commit(pending).unwrap();
    assert_eq!(receive(&bob, &alice, &delayed).unwrap(), Got::App(b"delayed".to_vec()));
    let pending = bob.decrypt(alice.address(), &resent[0].message).unwrap();
    assert_eq!((pending.kind(), pending.group_id(), pending.plaintext()), (MessageKind::Control, None, &[][..]));
    bob.commit(pending).unwrap();
}

/// A restored receiver that took its own DH step again (so drew another
/// ratchet key than the one the peer answered) gets the peer's next step as
/// out of step, whether it is the step's first message or one far down its
/// chain (past the 64 keys that make a refused body "costly": that case used
/// to be `Unauthenticated`, drop).
#[test]
fn a_step_on_a_ratchet_key_we_no_longer_have_is_out_of_step_however_far() {
    for skipped in [0, 64, 200] {
        let (alice, bob) = pair();
        converse(&alice, &bob, "m1");
        let m2 = alice.encrypt(bob.address(), b"m2").unwrap();
        let backup = copy_of(bob.backend());
        receive(&bob, &alice, &m2).unwrap();
        let r2 = bob.encrypt(alice.address(), b"r2").unwrap();
        receive(&alice, &bob, &r2).unwrap();
        let restored = Device::open_in(backup, &StorageKey::from_bytes([2; 32])).unwrap();
        // The copy reads m2 again: it draws another ratchet key than r2's.
        receive(&restored, &alice, &m2).unwrap();
        let mut last = Vec::new();
        for i in 0..=skipped {
            last = alice.encrypt(bob.address(), format!("n{i}").as_bytes()).unwrap();
        }
        let error = restored.decrypt(alice.address(), &last).unwrap_err();
        assert!(
            matches!(error, DeviceError::Session(SessionError::Decrypt(DecryptError::NoMatchingState))),
            "{skipped} skipped: {error:?}"
        );
        assert_eq!(error.kind(), ErrorKind::OutOfStep);
    }
}

/// A heal while our last reset is unanswered goes on that reset's session
/// (no state piles up while the peer is away), unless the peer's fresh
/// bundle offers another signed prekey (it rotated): then a new session,
/// which the peer can read.
/// The base key of a reset's session (a reset is a prekey message).
fn reset_base_key(wire: &[u8]) -> [u8; 32] {
    match samizdat::wire::Message::from_bytes(wire).unwrap() {
        samizdat::wire::Message::PreKey(prekey) => *prekey.header().base_key().as_bytes(),
        samizdat::wire::Message::Ratchet(_) => panic!("a reset starts a session"),
    }
}

/// A heal goes on the unanswered session of the last reset again only while
/// the peer is silent (PROTOCOL.md 20.5): once a message of the peer was
/// read on another session, or the app names one it could not read that no
/// reset named, the next heal starts a new session. (Repeating it on a
/// session the peer had read the reset on and left changed nothing at the
/// peer, every interval, for ever: `healing_properties.rs`,
/// `regression_audit_flag_schedule_settles`.)
#[test]
fn a_heal_after_the_peer_was_heard_from_starts_a_new_session() {
    let policy = HealPolicy { reset_interval: Duration::from_secs(10), ..HealPolicy::default() };
    // Heard: a message of Alice's read on the session the reset displaced.
    let (alice, bob) = pair();
    bob.set_heal_policy(policy).unwrap();
    let late = alice.encrypt_kept(bob.address(), b"sent before the reset", UNIX_EPOCH).unwrap();
    let first = heal(&bob, &alice, &[], 100);
    let silent = heal(&bob, &alice, &[], 110);
    assert_eq!(reset_base_key(&first), reset_base_key(&silent), "the peer is silent: the same session");
    assert_eq!(receive(&bob, &alice, &late).unwrap(), Got::App(b"sent before the reset".to_vec()));
    let heard = heal(&bob, &alice, &[], 120);
    assert_ne!(reset_base_key(&heard), reset_base_key(&first), "the peer was heard from: a new session");
    // The session still unanswered, and silence again: that one is repeated.
    let again = heal(&bob, &alice, &[], 130);
    assert_eq!(reset_base_key(&again), reset_base_key(&heard));
    assert!(answer(&alice, &bob, &again).is_empty());
    converse(&alice, &bob, "after a new session");

    // Heard: the app names a message it could not read that no reset named.
    let (alice, bob) = pair();
    bob.set_heal_policy(policy).unwrap();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH).unwrap();
    let first = heal(&bob, &alice, std::slice::from_ref(&kept), 100);
    let named_again = heal(&bob, &alice, std::slice::from_ref(&kept), 110);
    assert_eq!(reset_base_key(&first), reset_base_key(&named_again), "named already: nothing new");
    let unreadable = b"a message no reset named".to_vec();
    let new = heal(&bob, &alice, &[unreadable], 120);
    assert_ne!(reset_base_key(&new), reset_base_key(&first), "a new unreadable message: a new session");
    let resent = answer(&alice, &bob, &new);
    assert_eq!(resent.len(), 1);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
    converse(&alice, &bob, "after the resend");
}

#[test]
fn a_heal_reuses_an_unanswered_reset_unless_the_peer_rotated_its_prekey() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(10), ..HealPolicy::default() }).unwrap();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let first = heal(&bob, &alice, std::slice::from_ref(&kept), 100);
    let again = heal(&bob, &alice, &[], 110);
    let base_key = |wire: &[u8]| match samizdat::wire::Message::from_bytes(wire).unwrap() {
        samizdat::wire::Message::PreKey(prekey) => prekey.header().base_key(),
        samizdat::wire::Message::Ratchet(_) => panic!("a reset starts a session"),
    };
    assert_eq!(base_key(&first), base_key(&again), "the same unanswered session");
    // Alice rotates her signed prekey: the next heal starts a new session.
    alice.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(1_000_000), Duration::from_secs(0)).unwrap();
    let rotated = heal(&bob, &alice, &[], 120);
    assert_ne!(base_key(&rotated), base_key(&first));
    // The first reset was lost; the last one brings the message.
    let resent = answer(&alice, &bob, &rotated);
    assert_eq!(resent.len(), 1);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
    converse(&alice, &bob, "after");
}
