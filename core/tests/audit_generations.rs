//! Outside audit of chain generations (commit fa8f8e0, issue 14; PROTOCOL.md
//! 18.2, 18.6, 18.7, 18.9, 18.12): distributions carry the chain's
//! generation, a member that forgets a floor raises its `min_generation`
//! for the sender and ignores later distributions of chains it neither
//! keeps nor floors below it, and a sender whose generation is below a
//! member's minimum "leaps" on that member's request.
//!
//! The attacker controls the server (holds, reorders, replays any message,
//! one-to-one or group), or is a hostile member (a modified client, which
//! edits its own rows), or seized a phone. Every test asserts the secure
//! behaviour; those marked `#[ignore = "finding: ..."]` fail and reproduce
//! a finding (run them with `--ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::sync::atomic::Ordering;

use prost::Message as _;
use samizdat::rand_core::Rng as _;
use samizdat::{
    EncryptError, SessionError,
    device::{DeviceError, GroupError, GroupSend},
    limits::{MAX_CHAIN_FLOORS, MAX_GROUP_KEY_ANSWERS, MAX_LEAPS_PER_ROTATION, MAX_SENDER_CHAINS},
    store::{Backend, Expected, MemoryBackend, StoreError, Table, Write},
};
use samizdat_proto::storage;
use support::audit_group::*;

const G: &[u8] = b"generations group";

/// A large step for a hostile minimum (the leap limit of the audited
/// commit, fa8f8e0, was this far above the sender's generation).
const STEP: u64 = 1 << 32;

/// Chains of one sender a member sees before it forgets its first floor.
const HELD: usize = MAX_SENDER_CHAINS + MAX_CHAIN_FLOORS;

fn group_rows(store: &MemoryBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.scan(Table::Groups).unwrap()
}

fn generation(net: &Net, i: usize) -> u64 {
    net.own_row(G, i).generation
}

fn min_generation(net: &Net, i: usize, sender: usize) -> u64 {
    net.member_row(i, G, sender).unwrap().min_generation
}

/// What a hostile member's modified client sends: `sender` sends a message
/// (its distributions, if any, are delivered to everyone but `member`);
/// `member`'s client edits its own row of `sender` (no chain of it, no
/// request counted, the minimum it likes) and reads the message: the
/// request it makes carries `min_generation`.
fn hostile_request(net: &Net, sender: usize, member: usize, min_generation: u64) -> (Vec<u8>, GroupSend) {
    let sent = net.dev(sender).group_encrypt(G, b"x").unwrap();
    for outgoing in &sent.distributions {
        let to = net.index(&outgoing.to);
        if to != member {
            net.receive(sender, to, &outgoing.message).unwrap();
        }
    }
    let keys = net.keys(member);
    let key = keys.group_row(MEMBER, G, Some(&addr(sender)));
    let mut row: storage::SenderChainsRow = keys.read(net.dev(member).backend(), &key).unwrap();
    row.chains.clear();
    row.requested.clear();
    row.requests = 0;
    row.min_generation = min_generation;
    keys.write(net.dev(member).backend(), &key, &row);
    let request = missing_chain(net.receive(sender, member, &sent.message)).unwrap().expect("a request");
    (request, sent)
}

/// Alice rotates `n` times, and Bob reads a message on each new chain.
fn rotations(net: &Net, alice: usize, bob: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            net.dev(alice).rotate_group_chain(G).unwrap();
            net.send_read(G, alice, bob, format!("rotation {k}").as_bytes())
        })
        .collect()
}

/// Tries, over `rounds` rounds, to get one message of `sender` read by
/// `member` as an app would: deliver the send's distributions, the message;
/// on `MissingChain`, deliver the request and the answer, and the message
/// again; else rotate (as the app of `sender` may) and send again. Returns
/// the round at which `member` read, if it did.
fn heals_within(net: &Net, sender: usize, member: usize, rounds: usize) -> Option<usize> {
    for round in 0..rounds {
        let text = format!("round {round}");
        let sent = net.dev(sender).group_encrypt(G, text.as_bytes()).unwrap();
        net.distribute(sender, &sent);
        match net.receive(sender, member, &sent.message) {
            Ok(Got::Group(_)) => return Some(round),
            result => {
                if let Some(Some(request)) = missing_chain(result)
                    && let Ok(Got::Control(Some(answer))) = net.receive(member, sender, &request)
                {
                    let _ = net.receive(sender, member, &answer.message);
                    if matches!(net.receive(sender, member, &sent.message), Ok(Got::Group(_))) {
                        return Some(round);
                    }
                }
            }
        }
        net.dev(sender).rotate_group_chain(G).unwrap();
    }
    None
}

// ---------------------------------------------------------------------------
// 1. Nothing read decrypts twice.
// ---------------------------------------------------------------------------

/// A leap answer the server holds back. Bob forgot floors of Alice's
/// chains; Alice's app deletes the group and makes it again (her
/// generation goes back to 1); Bob refuses her new chain and asks; Alice
/// leaps and answers, and the server holds that answer. Bob gets the leapt
/// chain through a second request (answered from iteration 0) and reads
/// three messages on it. Alice then rotates `rotations` times (Bob reads
/// each new chain). The server delivers the held leap answer (iteration 0)
/// and replays the three messages. Returns how many decrypt again.
fn replays_after_held_leap_answer(rotations_before: usize) -> usize {
    let net = Net::new(3);
    let (alice, bob, carol) = (0, 1, 2);
    net.create(G, &[alice, bob, carol]);
    net.send_read(G, alice, bob, b"first");
    rotations(&net, alice, bob, HELD + 1);
    let minimum = min_generation(&net, bob, alice);
    assert!(minimum > 1);
    net.dev(alice).delete_group(G).unwrap();
    net.dev(alice).create_group(G, &[addr(bob), addr(carol)]).unwrap();
    let stale = net.dev(alice).group_encrypt(G, b"refused").unwrap();
    net.distribute(alice, &stale);
    let request = missing_chain(net.receive(alice, bob, &stale.message)).unwrap().expect("a request");
    let Got::Control(Some(held)) = net.receive(bob, alice, &request).unwrap() else { panic!("no leap answer") };
    assert_eq!(generation(&net, alice), minimum, "a leap");
    // Bob gets the leapt chain by a second request.
    let sent = net.send(alice, G, b"leapt 0");
    let again = missing_chain(net.receive(alice, bob, &sent.message)).unwrap().expect("a second request");
    let Got::Control(Some(answer)) = net.receive(bob, alice, &again).unwrap() else { panic!("no answer") };
    assert_eq!(net.receive(alice, bob, &answer.message).unwrap(), Got::Control(None));
    assert_eq!(net.receive(alice, bob, &sent.message).unwrap(), Got::Group(b"leapt 0".to_vec()));
    let read = vec![sent.message, net.send_read(G, alice, bob, b"leapt 1"), net.send_read(G, alice, bob, b"leapt 2")];
    rotations(&net, alice, bob, rotations_before);
    assert_eq!(net.reopened(alice, bob, &read), 0, "before the held answer");
    assert_eq!(net.receive(alice, bob, &held.message).unwrap(), Got::Control(None));
    net.reopened(alice, bob, &read)
}

/// The held leap answer delivered while Bob keeps the leapt chain.
#[test]
fn a_held_leap_answer_delivered_while_the_chain_is_kept_reopens_nothing() {
    assert_eq!(replays_after_held_leap_answer(0), 0);
}

/// The held leap answer delivered after the leapt chain was evicted (its
/// floor holds it).
#[test]
fn a_held_leap_answer_delivered_after_eviction_reopens_nothing() {
    assert_eq!(replays_after_held_leap_answer(MAX_SENDER_CHAINS), 0);
}

/// The held leap answer delivered after the leapt chain's floor was
/// forgotten (its generation holds it).
#[test]
fn a_held_leap_answer_delivered_after_its_floor_was_forgotten_reopens_nothing() {
    assert_eq!(replays_after_held_leap_answer(HELD + 2), 0);
}

/// Out of generation order: the server withholds from Bob every message of
/// Alice's next 11 chains (generations 2 to 12), lets Bob read on chain 13,
/// then delivers the 11 withheld distributions, oldest first. Bob takes
/// them in as newest (eviction is by arrival, not generation): chain 13 is
/// evicted and its floor forgotten, so Bob's minimum passes Alice's
/// generation. Property: Bob refuses chain 13's later messages, asks with
/// his minimum, Alice leaps once and Bob reads from then on; nothing read
/// decrypts twice (replays at the end: replays of messages on chains Bob
/// lacks spend his requests, see the report). Lost: Alice's messages on
/// chain 13 sent after the late distributions.
#[test]
fn distributions_out_of_generation_order_reopen_nothing_and_heal_by_one_leap() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut read = vec![net.send_read(G, alice, bob, b"first")];
    let mut withheld = Vec::new();
    for k in 0..HELD {
        net.dev(alice).rotate_group_chain(G).unwrap();
        let sent = net.dev(alice).group_encrypt(G, format!("withheld {k}").as_bytes()).unwrap();
        assert_eq!(sent.distributions.len(), 1);
        withheld.push((sent.distributions[0].message.clone(), sent.message));
    }
    net.dev(alice).rotate_group_chain(G).unwrap();
    read.push(net.send_read(G, alice, bob, b"on 13, 0"));
    read.push(net.send_read(G, alice, bob, b"on 13, 1"));
    let current = generation(&net, alice);
    assert_eq!(current, HELD as u64 + 2);
    for (distribution, _) in &withheld {
        assert_eq!(net.receive(alice, bob, distribution).unwrap(), Got::Control(None));
    }
    assert_eq!(min_generation(&net, bob, alice), current + 1, "the current chain's floor was pushed out");
    // Alice's next message on chain 13: refused, and one leap heals.
    let lost = net.dev(alice).group_encrypt(G, b"lost").unwrap();
    assert!(lost.distributions.is_empty());
    let request = missing_chain(net.receive(alice, bob, &lost.message)).unwrap().expect("a request");
    let Got::Control(Some(answer)) = net.receive(bob, alice, &request).unwrap() else { panic!("no answer") };
    assert_eq!(generation(&net, alice), current + 1, "Alice leapt to Bob's minimum");
    assert_eq!(net.receive(alice, bob, &answer.message).unwrap(), Got::Control(None));
    assert!(!matches!(net.receive(alice, bob, &lost.message), Ok(Got::Group(_))), "lost");
    read.push(net.send_read(G, alice, bob, b"after the leap"));
    // Replays: nothing read opens again; of the withheld messages, those of
    // the chains Bob keeps open once, never twice.
    assert_eq!(net.reopened(alice, bob, &read), 0);
    let late: Vec<Vec<u8>> = withheld.iter().map(|(_, m)| m.clone()).collect();
    let first_time = net.reopened(alice, bob, &late);
    assert!(first_time <= MAX_SENDER_CHAINS, "{first_time}");
    assert_eq!(net.reopened(alice, bob, &late), 0);
}

/// The server's replays of messages read on chains Bob no longer has spend
/// his requests to Alice (`MAX_GROUP_REQUESTS_PER_SENDER`), and then,
/// once the schedule above has pushed Alice's current chain out, Bob cannot
/// ask for the leap: he refuses Alice until her app rotates (the request
/// budget predates this commit; recorded here as the limit of the healing
/// by a leap). Property checked: a rotation by Alice's app heals.
#[test]
fn with_requests_spent_by_replays_the_next_rotation_heals() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut read = vec![net.send_read(G, alice, bob, b"first")];
    let mut withheld = Vec::new();
    for k in 0..HELD {
        net.dev(alice).rotate_group_chain(G).unwrap();
        let sent = net.dev(alice).group_encrypt(G, format!("withheld {k}").as_bytes()).unwrap();
        withheld.push((sent.distributions[0].message.clone(), sent.message));
    }
    net.dev(alice).rotate_group_chain(G).unwrap();
    read.push(net.send_read(G, alice, bob, b"on 13, 0"));
    for (distribution, _) in &withheld {
        net.receive(alice, bob, distribution).unwrap();
    }
    // The server replays what it has, three times.
    read.extend(withheld.iter().map(|(_, m)| m.clone()));
    for _ in 0..3 {
        let _ = net.reopened(alice, bob, &read);
    }
    assert_eq!(net.member_row(bob, G, alice).unwrap().requests, 8, "requests spent");
    let stuck = net.dev(alice).group_encrypt(G, b"stuck").unwrap();
    let result = net.receive(alice, bob, &stuck.message);
    assert_eq!(missing_chain(result), Some(None), "no request left");
    assert_eq!(heals_within(&net, alice, bob, 2), Some(1), "the rotation heals");
}

/// Remove and add back, with rotations, three times: each removal gives up
/// Bob's chains of Alice (floors, some pushed out), and the tombstone keeps
/// the floors and `min_generation`, which never goes down. While Alice is
/// removed, a held copy changes no group row. After the last add-back the
/// server delivers every other distribution it held back (one per chain,
/// those the pairwise session can still open): nothing Bob read decrypts
/// again.
#[test]
fn remove_and_add_back_cycles_keep_the_minimum_and_reopen_nothing() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut held = Vec::new();
    let mut read = Vec::new();
    let mut minimum = 0;
    for cycle in 0..3 {
        for k in 0..4 {
            if cycle > 0 || k > 0 {
                net.dev(alice).rotate_group_chain(G).unwrap();
            }
            let (copy, m0) = net.send_holding_distribution(G, alice, bob, format!("c{cycle} k{k}").as_bytes());
            held.push(copy);
            read.push(m0);
            read.push(net.send_read(G, alice, bob, format!("c{cycle} k{k} m1").as_bytes()));
        }
        let before = min_generation(&net, bob, alice);
        assert!(before >= minimum);
        net.dev(bob).remove_group_members(G, &[addr(alice)]).unwrap();
        let tombstone = net.member_row(bob, G, alice).unwrap();
        assert!(tombstone.removed && tombstone.chains.is_empty());
        assert!(tombstone.min_generation >= before, "the tombstone keeps the minimum");
        minimum = tombstone.min_generation;
        // While removed: a held copy changes no group row.
        let rows = group_rows(&net.stores[bob]);
        let _ = net.receive(alice, bob, &held.pop().unwrap());
        assert_eq!(group_rows(&net.stores[bob]), rows);
        net.dev(bob).add_group_members(G, &[addr(alice)]).unwrap();
        assert_eq!(min_generation(&net, bob, alice), minimum, "added back with the minimum");
    }
    assert!(minimum > 1, "floors were forgotten");
    let mut delivered = 0;
    for copy in &held {
        if net.receive(alice, bob, copy).is_ok() {
            delivered += 1;
        }
    }
    eprintln!("held copies delivered after the last add-back: {delivered} of {}", held.len());
    assert!(delivered > 0);
    assert_eq!(net.reopened(alice, bob, &read), 0);
}

/// Held-back copies of the first 13 chains (one per chain, each chain read
/// through an answer), delivered in reverse generation order after all 13
/// (those the pairwise session can still open; the oldest are past its
/// bound of old receiving chains): every one of them is refused or taken
/// at its floor; nothing reopens, after each delivery.
#[test]
fn held_copies_delivered_newest_first_reopen_nothing() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut held = Vec::new();
    let mut read = Vec::new();
    for k in 0..HELD + 2 {
        if k > 0 {
            net.dev(alice).rotate_group_chain(G).unwrap();
        }
        let (copy, m0) = net.send_holding_distribution(G, alice, bob, format!("chain {k}").as_bytes());
        held.push(copy);
        read.push(m0);
    }
    let mut delivered = 0;
    for copy in held.iter().rev() {
        if net.receive(alice, bob, copy).is_ok() {
            delivered += 1;
        }
        assert_eq!(net.reopened(alice, bob, &read), 0);
    }
    eprintln!("held copies the session still opened: {delivered} of {}", held.len());
    assert!(delivered > 0);
}

/// Documented limit (PROTOCOL.md 18.6: "under the same identity with
/// another signing key, no floor: only the sender itself can do that"),
/// checked here because generations do not change it. Schedule: Bob reads
/// two messages on Alice's chain X, got through an answer while the server
/// holds X's original distribution. Alice's modified client (or whoever
/// holds her seized, unlocked phone) gives chain id X again with another
/// signing key: Bob replaces X without a floor. The server then delivers
/// the held original (same id, Alice's first key): it replaces again,
/// without a floor, from iteration 0, and the server's replays of the two
/// messages decrypt a second time at Bob. Impact: only the holder of
/// Alice's chain can do it, and it could as well sign those plaintexts
/// again; the generation carried is the same (X's), so `min_generation`
/// plays no part.
#[test]
#[ignore = "finding (documented limit, 18.6): the sender itself re-keying its chain id makes Bob decrypt its read messages twice"]
fn the_sender_re_keying_its_own_chain_id_reopens_nothing() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let (held, m0) = net.send_holding_distribution(G, alice, bob, b"x 0");
    let read = vec![m0, net.send_read(G, alice, bob, b"x 1")];
    let mut chain = net.own_chain(alice, G).unwrap();
    let mut seed = [0u8; 32];
    samizdat::os_rng().fill_bytes(&mut seed);
    chain.signing_seed = seed.to_vec();
    chain.signing_public.clear();
    net.set_own_chain(alice, G, chain);
    net.send_read(G, alice, bob, b"re-keyed");
    assert_eq!(net.receive(alice, bob, &held).unwrap(), Got::Control(None));
    assert_eq!(net.reopened(alice, bob, &read), 0);
}

// ---------------------------------------------------------------------------
// 2. Leaps: bounds, amplification, exhaustion, denial of service.
// ---------------------------------------------------------------------------

/// Finding (fixed: at most MAX_LEAPS_PER_ROTATION leaps in all until the
/// app rotates). Schedule: a group of Alice, Carol (honest) and two hostile
/// member devices H1, H2 (one hostile user with two devices is enough).
/// Alice's app never rotates. Repeatedly: H1's modified client sends a
/// request carrying `min_generation = Alice's + STEP`; Alice
/// leaps (H1's `answered` + 1, every other member `has_chain = false`);
/// Alice's next `group_encrypt` gives the new chain to H2 and Carol and sets
/// their `answered` back to 0 (PROTOCOL.md 18.10); H2 does the same as H1,
/// which gives H1 its answers back on Alice's next message; and so on.
/// Impact: PROTOCOL.md 18.7 ("a hostile member makes us start at most two
/// chains until our app rotates") does not hold: two colluding devices make
/// Alice start a new chain on every one of her messages, without bound, and
/// each leap makes Alice's next message carry a distribution to every other
/// member (a one-to-one message per member; up to 5,000), and raises her
/// generation by 2^32 (u64 exhaustion, `ChainExhausted` for good, after
/// 2^32 leaps, i.e. about 2^32 of Alice's messages). It also feeds the
/// permanent refusal of
/// `a_hostile_leap_then_a_generation_gone_back_heals_by_a_leap`.
#[test]
fn two_hostile_members_leap_a_bounded_number_of_times() {
    let net = Net::new(4);
    let (alice, h1, h2, carol) = (0, 1, 2, 3);
    net.create(G, &[alice, h1, h2, carol]);
    net.send_read(G, alice, carol, b"first");
    let start = generation(&net, alice);
    let mut leaps = 0u32;
    let mut to_carol = 0usize;
    for round in 0..12 {
        let hostile = if round % 2 == 0 { h1 } else { h2 };
        let before = generation(&net, alice);
        let (request, sent) = hostile_request(&net, alice, hostile, before + STEP);
        to_carol += sent.distributions.iter().filter(|d| d.to == addr(carol)).count();
        // Carol, honest, keeps reading.
        assert_eq!(net.receive(alice, carol, &sent.message).unwrap(), Got::Group(b"x".to_vec()));
        let _ = net.receive(hostile, alice, &request).unwrap();
        if generation(&net, alice) == before + STEP {
            leaps += 1;
        }
    }
    eprintln!(
        "leaps: {leaps}; distributions to Carol: {to_carol}; generation {start} -> {} (= {start} + {} * 2^32)",
        generation(&net, alice),
        (generation(&net, alice) - start) / STEP
    );
    assert!(
        leaps <= MAX_LEAPS_PER_ROTATION,
        "{leaps} leaps without a rotation by Alice's app; Carol was sent {to_carol} distributions"
    );
}

/// Property: one hostile member alone (no other leap in the group) is held
/// to `MAX_GROUP_KEY_ANSWERS` leaps however many messages Alice sends.
#[test]
fn one_hostile_member_leaps_at_most_twice_across_many_sends() {
    let net = Net::new(3);
    let (alice, mallory, carol) = (0, 1, 2);
    net.create(G, &[alice, mallory, carol]);
    net.send_read(G, alice, carol, b"first");
    let mut leaps = 0u32;
    for _ in 0..8 {
        let before = generation(&net, alice);
        let (request, sent) = hostile_request(&net, alice, mallory, before + STEP);
        assert_eq!(net.receive(alice, carol, &sent.message).unwrap(), Got::Group(b"x".to_vec()));
        let _ = net.receive(mallory, alice, &request).unwrap();
        leaps += u32::from(generation(&net, alice) != before);
    }
    assert_eq!(leaps, MAX_GROUP_KEY_ANSWERS);
}

/// Finding (fixed: a leap may go to any generation up to
/// MAX_LEAP_GENERATION, however far above ours). Schedule: Alice, Bob
/// (honest) and Mallory (hostile member).
/// Mallory's modified client sends two requests (the two answers she may
/// have until a rotation), each with `min_generation = Alice's +
/// STEP` (within the bound): Alice leaps to generation
/// 2^33 + 1. Alice goes on as usual; after 12 of her rotations
/// Bob has forgotten the floor of a chain of generation above 2^33, so his
/// minimum is above 2^33 + 1. Then Alice's generation goes back, in one of
/// the two ways PROTOCOL.md 18.6/18.7 say heal by a leap: here her app
/// deletes the group and makes it again (a store restored from a copy made
/// before Mallory's leap does the same). Bob refuses her new chain and asks
/// with his minimum; it is more than `STEP` above Alice's
/// generation, so Alice makes no leap and answers with the chain Bob
/// refuses. Every later rotation raises Alice's generation by one: Bob
/// would need about 2^32 of them. Bob removing and adding Alice back does
/// not help (the tombstone keeps the minimum); only Bob's own
/// `delete_group` does. Impact: one request of a hostile member, made at
/// any time before, turns an honest sender's recovery into a permanent
/// loss of every message from that sender at every member that forgot a
/// floor of a post-leap chain (no person can fix it from the sender's
/// side). With one leap of 2^32 only, it heals after a few rotations (the
/// gap falls back under the limit); with the two allowed, about 2^32
/// rotations. The doc's premise "an honest member's minimum is at most one
/// more than the largest generation we ever made" is about generations
/// the sender forgot.
#[test]
fn a_hostile_leap_then_a_generation_gone_back_heals_by_a_leap() {
    let net = Net::new(3);
    let (alice, bob, mallory) = (0, 1, 2);
    net.create(G, &[alice, bob, mallory]);
    net.send_read(G, alice, bob, b"first");
    for _ in 0..MAX_GROUP_KEY_ANSWERS {
        let before = generation(&net, alice);
        let (request, sent) = hostile_request(&net, alice, mallory, before + STEP);
        assert_eq!(net.receive(alice, bob, &sent.message).unwrap(), Got::Group(b"x".to_vec()));
        let _ = net.receive(mallory, alice, &request).unwrap();
        assert_eq!(generation(&net, alice), before + STEP, "Mallory's leap");
    }
    rotations(&net, alice, bob, HELD + 1);
    let minimum = min_generation(&net, bob, alice);
    assert!(minimum > 2 * STEP + 1, "{minimum}");
    net.dev(alice).delete_group(G).unwrap();
    net.dev(alice).create_group(G, &[addr(bob), addr(mallory)]).unwrap();
    let healed = heals_within(&net, alice, bob, 8);
    eprintln!(
        "Bob's minimum {minimum}, Alice's generation {} after 8 rounds: healed {healed:?}",
        generation(&net, alice)
    );
    // Bob's app removes Alice and adds her back: the tombstone keeps the
    // minimum (it even rises: her kept chains become floors), and she is
    // still refused.
    net.dev(bob).remove_group_members(G, &[addr(alice)]).unwrap();
    net.dev(bob).add_group_members(G, &[addr(alice)]).unwrap();
    assert!(min_generation(&net, bob, alice) >= minimum);
    let after_add_back = heals_within(&net, alice, bob, 4);
    eprintln!("after Bob's remove and add back: healed {after_add_back:?}");
    assert!(healed.is_some(), "Bob never reads Alice again");
}

/// Property (the same schedule without Mallory): a sender whose generation
/// went back (delete and create) is read again by Bob within two rounds
/// of `heals_within` (the message of the refused chain is lost; the leap
/// heals).
#[test]
fn a_generation_gone_back_without_a_hostile_leap_heals_in_one_round() {
    let net = Net::new(3);
    let (alice, bob, carol) = (0, 1, 2);
    net.create(G, &[alice, bob, carol]);
    net.send_read(G, alice, bob, b"first");
    rotations(&net, alice, bob, HELD + 1);
    assert!(min_generation(&net, bob, alice) > 1);
    net.dev(alice).delete_group(G).unwrap();
    net.dev(alice).create_group(G, &[addr(bob), addr(carol)]).unwrap();
    // Round 0: the message on the refused chain is lost, the leap answered;
    // round 1 (after a rotation) reads.
    assert!(heals_within(&net, alice, bob, 4).is_some_and(|round| round <= 1));
    assert_eq!(heals_within(&net, alice, carol, 1), Some(0));
}

/// Property: a removed member's request (its tombstone) makes no leap and
/// changes no group row, however large its minimum.
#[test]
fn a_removed_members_request_makes_no_leap_and_writes_nothing() {
    let net = Net::new(3);
    let (alice, mallory, carol) = (0, 1, 2);
    net.create(G, &[alice, mallory, carol]);
    net.send_read(G, alice, carol, b"first");
    let (request, _) = hostile_request(&net, alice, mallory, 5 + STEP / 2);
    net.dev(alice).remove_group_members(G, &[addr(mallory)]).unwrap();
    let rows = group_rows(&net.stores[alice]);
    let got = net.receive(mallory, alice, &request).unwrap();
    assert_eq!(got, Got::Control(None));
    assert_eq!(group_rows(&net.stores[alice]), rows);
}

/// Property: a request at the answers' limit asking another chain id than
/// Alice's current makes no leap and changes no group row.
#[test]
fn a_request_past_the_answers_limit_makes_no_leap_and_writes_nothing() {
    let net = Net::new(2);
    let (alice, mallory) = (0, 1);
    net.create(G, &[alice, mallory]);
    net.send_read(G, alice, mallory, b"first");
    for _ in 0..MAX_GROUP_KEY_ANSWERS {
        let before = generation(&net, alice);
        let (request, _) = hostile_request(&net, alice, mallory, before + 1);
        net.receive(mallory, alice, &request).unwrap();
        assert_eq!(generation(&net, alice), before + 1);
    }
    let before = generation(&net, alice);
    let (request, _) = hostile_request(&net, alice, mallory, before + 1);
    let rows = group_rows(&net.stores[alice]);
    let _ = net.receive(mallory, alice, &request).unwrap();
    assert_eq!(generation(&net, alice), before);
    assert_eq!(group_rows(&net.stores[alice]), rows);
}

// ---------------------------------------------------------------------------
// 3. Honest recovery.
// ---------------------------------------------------------------------------

/// Alice's store is restored from a copy made after her first chain, before
/// 12 rotations (her generation goes back from 14 to 1; her pairwise
/// sessions go back too, and her app starts new ones with Bob and Carol,
/// the session healing of PROTOCOL.md 20). Bob read every chain (he forgot
/// floors); Carol, added after the copy, saw only the last chain. Property:
/// both read Alice again within a few rounds of `heals_within` (Bob at
/// round 1: the restored chain's message is lost, then a leap), with no
/// person, and nothing read decrypts twice.
#[test]
fn a_sender_restored_from_an_older_copy_is_read_again_and_reopens_nothing() {
    let mut net = Net::new(3);
    let (alice, bob, carol) = (0, 1, 2);
    net.create(G, &[alice, bob]);
    let mut read_bob = vec![net.send_read(G, alice, bob, b"first")];
    let backup = support::copy_of(&net.stores[alice]);
    read_bob.extend(rotations(&net, alice, bob, HELD + 1));
    // Carol joins late (both sides add her).
    net.dev(alice).add_group_members(G, &[addr(carol)]).unwrap();
    net.dev(carol).create_group(G, &[addr(alice), addr(bob)]).unwrap();
    net.dev(alice).rotate_group_chain(G).unwrap();
    let sent = net.send(alice, G, b"with carol");
    assert_eq!(net.receive(alice, carol, &sent.message).unwrap(), Got::Group(b"with carol".to_vec()));
    let read_carol = vec![sent.message.clone()];
    read_bob.push(sent.message);
    assert_eq!(net.receive(alice, bob, read_bob.last().unwrap()).unwrap(), Got::Group(b"with carol".to_vec()));
    // The restore (her app adds Carol again, as it knows she is a member).
    let store = std::sync::Arc::new(backup);
    net.stores[alice] = store.clone();
    net.devices[alice] = samizdat::device::Device::open_in(
        Hooked::new(store),
        &samizdat::store::StorageKey::from_bytes(storage_key(alice)),
    )
    .unwrap();
    net.dev(alice).add_group_members(G, &[addr(carol)]).unwrap();
    // Alice's sessions went back: the peers see a rollback on her next
    // one-to-one message; her app starts new sessions (the heal).
    for peer in [bob, carol] {
        net.dev(alice).start_session(&net.dev(peer).prekey_bundle().unwrap()).unwrap();
        let hello = net.dev(alice).encrypt(&addr(peer), b"new session").unwrap();
        assert_eq!(net.receive(alice, peer, &hello).unwrap(), Got::Direct(b"new session".to_vec()));
    }
    let bob_round = heals_within(&net, alice, bob, 4);
    let carol_round = heals_within(&net, alice, carol, 4);
    eprintln!("Bob read again at round {bob_round:?}, Carol at {carol_round:?}");
    assert!(bob_round.is_some() && carol_round.is_some());
    assert_eq!(net.reopened(alice, bob, &read_bob), 0);
    assert_eq!(net.reopened(alice, carol, &read_carol), 0);
}

// ---------------------------------------------------------------------------
// 4. State handling.
// ---------------------------------------------------------------------------

/// A leap whose transaction fails (injected store failure) writes nothing
/// in any table; delivered again, the request leaps once, and a third
/// delivery is refused by the session (a duplicate) and leaps no more.
#[test]
fn a_failed_leap_writes_nothing_and_the_retry_leaps_once() {
    let net = Net::new(3);
    let (alice, bob, carol) = (0, 1, 2);
    net.create(G, &[alice, bob, carol]);
    net.send_read(G, alice, bob, b"first");
    let before_generation = generation(&net, alice);
    let (request, _) = hostile_request(&net, alice, bob, before_generation + 7);
    let rows = all_rows(&net.stores[alice]);
    net.dev(alice).backend().fail_next_applies.store(1, Ordering::SeqCst);
    assert!(net.receive(bob, alice, &request).is_err());
    assert_eq!(all_rows(&net.stores[alice]), rows, "a failed leap wrote something");
    let Got::Control(Some(answer)) = net.receive(bob, alice, &request).unwrap() else { panic!("no answer") };
    assert_eq!(generation(&net, alice), before_generation + 7);
    let chain = net.own_row(G, alice).chain.unwrap().chain_id;
    assert!(net.receive(bob, alice, &request).is_err(), "a duplicate");
    assert_eq!(
        (generation(&net, alice), net.own_row(G, alice).chain.unwrap().chain_id),
        (before_generation + 7, chain)
    );
    assert_eq!(net.receive(alice, bob, &answer.message).unwrap(), Got::Control(None));
}

/// Another handle of Alice sends (on her chain before the leap) between the
/// leap's read of the rows and its write: the leap's transaction is refused
/// and writes nothing; the message of the other handle stays readable; the
/// request, decrypted again, leaps once.
#[test]
fn a_send_on_another_handle_in_the_middle_of_a_leap_is_not_lost() {
    let net = Net::new(3);
    let (alice, mallory, carol) = (0, 1, 2);
    net.create(G, &[alice, mallory, carol]);
    net.send_read(G, alice, carol, b"first");
    let before = generation(&net, alice);
    let (request, sent) = hostile_request(&net, alice, mallory, before + 3);
    assert_eq!(net.receive(alice, carol, &sent.message).unwrap(), Got::Group(b"x".to_vec()));
    let old_chain = net.own_row(G, alice).chain.unwrap().chain_id;
    let other = std::sync::Arc::new(net.second_handle(alice));
    let sender = other.clone();
    let middle = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = middle.clone();
    net.dev(alice).backend().before_next_apply(move || {
        *out.lock().unwrap() = Some(sender.group_encrypt(G, b"in the middle").unwrap());
    });
    let first = net.receive(mallory, alice, &request);
    assert!(!net.dev(alice).backend().hook_pending(), "the send ran in the middle");
    let in_middle = middle.lock().unwrap().take().unwrap();
    assert_eq!(decode_group(&in_middle.message).chain_id, old_chain);
    assert!(matches!(first, Err(DeviceError::Session(SessionError::StalePending))), "{first:?}");
    assert_eq!(generation(&net, alice), before, "a refused leap wrote nothing");
    let Got::Control(Some(_)) = net.receive(mallory, alice, &request).unwrap() else { panic!("no answer") };
    assert_eq!(generation(&net, alice), before + 3);
    assert_ne!(net.own_row(G, alice).chain.unwrap().chain_id, old_chain);
    net.distribute(alice, &in_middle);
    assert_eq!(net.receive(alice, carol, &in_middle.message).unwrap(), Got::Group(b"in the middle".to_vec()));
    let after = net.send(alice, G, b"after");
    assert_eq!(net.receive(alice, carol, &after.message).unwrap(), Got::Group(b"after".to_vec()));
}

/// A stale distribution (of a generation below Bob's minimum) with no
/// request outstanding changes no row of any table but the session.
#[test]
fn a_stale_distribution_writes_no_group_row() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let (held, _) = net.send_holding_distribution(G, alice, bob, b"first");
    rotations(&net, alice, bob, HELD + 1);
    assert!(min_generation(&net, bob, alice) > 1);
    let rows = group_rows(&net.stores[bob]);
    assert_eq!(net.receive(alice, bob, &held).unwrap(), Got::Control(None));
    assert_eq!(group_rows(&net.stores[bob]), rows);
}

/// Rewrites the sealed row `key` of device `i` with `bytes` (a damaged or
/// hand-made encoding).
fn write_raw(net: &Net, i: usize, key: &[u8], bytes: &[u8]) {
    let keys = net.keys(i);
    let sealed = keys.seal(Table::Groups, key, bytes);
    net.dev(i)
        .backend()
        .apply(&[Write { table: Table::Groups, key: key.to_vec(), value: Some(sealed), expected: Expected::Any }])
        .unwrap();
}

fn is_corrupt(error: &DeviceError) -> bool {
    matches!(error, DeviceError::Store(StoreError::Corrupt { table: Table::Groups }))
}

/// A damaged encoding of a member row.
type Damage<'a> = Box<dyn Fn(&storage::SenderChainsRow) -> Vec<u8> + 'a>;

/// Damaged encodings of the new fields (a wrong wire type, a varint of 11
/// bytes) in the member row (`min_generation`, a floor's and a chain's
/// `generation`) and in the own-chain row (`generation`) are `Corrupt`,
/// never a panic, and nothing is written.
#[test]
fn damaged_generation_fields_are_corrupt() {
    let too_long_varint = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    // Member row (Bob's of Alice): field 11, min_generation.
    let member_cases: Vec<Damage> = vec![
        Box::new(|row| [row.encode_to_vec(), vec![0x5a, 0x01, 0x00]].concat()),
        Box::new(|row| [row.encode_to_vec(), vec![0x58], too_long_varint.to_vec()].concat()),
        // A floor whose generation (field 3) is length-delimited.
        Box::new(|row| [row.encode_to_vec(), vec![0x4a, 0x05, 0x08, 0x07, 0x1a, 0x01, 0x00]].concat()),
        // A chain whose generation (field 9) is an 11-byte varint.
        Box::new(|row| {
            let mut chain = row.chains[0].encode_to_vec();
            chain.push(0x48);
            chain.extend_from_slice(&too_long_varint);
            let mut other = row.clone();
            other.chains.clear();
            let mut out = other.encode_to_vec();
            out.push(0x2a); // SenderChainsRow.chains is field 5
            out.push(u8::try_from(chain.len() & 0x7f).unwrap() | 0x80);
            out.push(u8::try_from(chain.len() >> 7).unwrap());
            out.extend_from_slice(&chain);
            out
        }),
    ];
    for (k, case) in member_cases.iter().enumerate() {
        let net = Net::new(2);
        let (alice, bob) = (0, 1);
        net.create(G, &[alice, bob]);
        net.send_read(G, alice, bob, b"first");
        let keys = net.keys(bob);
        let key = keys.group_row(MEMBER, G, Some(&addr(alice)));
        let row: storage::SenderChainsRow = keys.read(net.dev(bob).backend(), &key).unwrap();
        assert_eq!(row.chains.len(), 1);
        write_raw(&net, bob, &key, &case(&row));
        let rows = all_rows(&net.stores[bob]);
        let sent = net.dev(alice).group_encrypt(G, b"next").unwrap();
        let error = net.receive(alice, bob, &sent.message).unwrap_err();
        assert!(is_corrupt(&error), "case {k}: {error:?}");
        let error = net.dev(bob).remove_group_members(G, &[addr(alice)]).unwrap_err();
        assert!(is_corrupt(&error), "case {k}: {error:?}");
        assert_eq!(all_rows(&net.stores[bob]), rows, "case {k}");
    }
    // Own-chain row (Alice's): field 5, generation.
    for (k, tail) in [vec![0x2a, 0x01, 0x00], [vec![0x28], too_long_varint.to_vec()].concat()].iter().enumerate() {
        let net = Net::new(2);
        let (alice, bob) = (0, 1);
        net.create(G, &[alice, bob]);
        net.send_read(G, alice, bob, b"first");
        let keys = net.keys(alice);
        let key = keys.group_row(OWN_CHAIN, G, None);
        let row: storage::OwnChainRow = keys.read(net.dev(alice).backend(), &key).unwrap();
        write_raw(&net, alice, &key, &[row.encode_to_vec(), tail.clone()].concat());
        let rows = all_rows(&net.stores[alice]);
        let error = net.dev(alice).group_encrypt(G, b"next").unwrap_err();
        assert!(is_corrupt(&error), "own case {k}: {error:?}");
        assert_eq!(all_rows(&net.stores[alice]), rows, "own case {k}");
    }
}

/// Extreme values load and fail closed: an own-chain row at generation
/// `u64::MAX` with no chain makes `group_encrypt` fail with
/// `ChainExhausted` and write nothing; a member row whose minimum and floors
/// are at `u64::MAX` loads, refuses the sender's chains and asks with that
/// minimum, which makes no leap (more than `STEP` above);
/// nothing panics.
#[test]
fn generations_at_the_limit_fail_closed() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    net.send_read(G, alice, bob, b"first");
    // Alice at the last generation, after a rotation.
    net.dev(alice).rotate_group_chain(G).unwrap();
    let keys = net.keys(alice);
    let own_key = keys.group_row(OWN_CHAIN, G, None);
    let mut own: storage::OwnChainRow = keys.read(net.dev(alice).backend(), &own_key).unwrap();
    own.generation = u64::MAX - 1;
    keys.write(net.dev(alice).backend(), &own_key, &own);
    net.send_read(G, alice, bob, b"the last chain");
    assert_eq!(generation(&net, alice), u64::MAX);
    net.dev(alice).rotate_group_chain(G).unwrap();
    let rows = all_rows(&net.stores[alice]);
    let error = net.dev(alice).group_encrypt(G, b"none").unwrap_err();
    assert!(matches!(error, DeviceError::Group(GroupError::Encrypt(EncryptError::ChainExhausted))), "{error:?}");
    assert_eq!(all_rows(&net.stores[alice]), rows);
    // Bob's row with the largest minimum and floors.
    let net = Net::new(2);
    net.create(G, &[alice, bob]);
    net.send_read(G, alice, bob, b"first");
    let keys = net.keys(bob);
    let key = keys.group_row(MEMBER, G, Some(&addr(alice)));
    let mut row: storage::SenderChainsRow = keys.read(net.dev(bob).backend(), &key).unwrap();
    row.chains.clear();
    row.min_generation = u64::MAX;
    row.floors = (0..u32::try_from(MAX_CHAIN_FLOORS).unwrap())
        .map(|k| storage::ChainFloor { chain_id: 1000 + k, iteration: 5, generation: u64::MAX })
        .collect();
    keys.write(net.dev(bob).backend(), &key, &row);
    net.dev(alice).rotate_group_chain(G).unwrap();
    let sent = net.dev(alice).group_encrypt(G, b"refused").unwrap();
    let group_before = group_rows(&net.stores[bob]);
    assert_eq!(net.receive(alice, bob, &sent.distributions[0].message).unwrap(), Got::Control(None));
    assert_eq!(group_rows(&net.stores[bob]), group_before);
    let request = missing_chain(net.receive(alice, bob, &sent.message)).unwrap().expect("a request");
    let before = generation(&net, alice);
    let _ = net.receive(bob, alice, &request).unwrap();
    assert_eq!(generation(&net, alice), before, "no leap");
}

// ---------------------------------------------------------------------------
// 5. The text.
// ---------------------------------------------------------------------------

/// PROTOCOL.md 18.2: "each new chain's [generation] is larger than every
/// earlier one's". After Mallory's leap to `g + 10`, the next chain of
/// Alice's app is `g + 11`, and Bob (who got both) keeps generations in the
/// order of their arrival, each larger.
#[test]
fn each_new_chain_has_a_larger_generation_across_leaps() {
    let net = Net::new(3);
    let (alice, bob, mallory) = (0, 1, 2);
    net.create(G, &[alice, bob, mallory]);
    net.send_read(G, alice, bob, b"first");
    let g = generation(&net, alice);
    let (request, sent) = hostile_request(&net, alice, mallory, g + 10);
    net.receive(alice, bob, &sent.message).unwrap();
    let _ = net.receive(mallory, alice, &request).unwrap();
    net.send_read(G, alice, bob, b"leapt");
    net.dev(alice).rotate_group_chain(G).unwrap();
    net.send_read(G, alice, bob, b"next");
    let kept: Vec<u64> = net.member_row(bob, G, alice).unwrap().chains.iter().map(|c| c.generation).collect();
    assert_eq!(kept, vec![g, g + 10, g + 11]);
}
