//! Audit of the floors of given-up chains, the tombstones of removed
//! members and the stored signing public key of our own chain (PROTOCOL.md
//! 18.2, 18.5 to 18.12; commits 7df3ccb and 279e3e2).
//!
//! The attacker controls the server (holds, reorders, replays any message,
//! one-to-one or group), or is a hostile member, or seized a phone. Every
//! test asserts the secure behaviour. Those marked `#[ignore = "defect: ..."]`
//! fail: they reproduce a defect (run them with `--ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ed25519_dalek::{Signer, SigningKey};
use samizdat::{
    DecryptError,
    device::{Device, DeviceError, GroupError, MessageKind},
    limits::{MAX_CHAIN_FLOORS, MAX_GROUP_KEY_ANSWERS, MAX_LEAP_GENERATION, MAX_PLAINTEXT_LEN, MAX_SENDER_CHAINS},
    store::{Backend, MemoryBackend, Table},
};
use samizdat_proto::storage;
use support::audit_group::*;

const G: &[u8] = b"floors group";

fn group_error(result: Result<Got, DeviceError>) -> GroupError {
    match result {
        Err(DeviceError::Group(e)) => e,
        other => panic!("expected a group error, got {other:?}"),
    }
}

fn decrypt_error(result: Result<Got, DeviceError>) -> DecryptError {
    match group_error(result) {
        GroupError::Decrypt(e) => e,
        other => panic!("expected a group decryption error, got {other:?}"),
    }
}

fn random32() -> [u8; 32] {
    use samizdat::rand_core::Rng;
    let mut out = [0u8; 32];
    samizdat::os_rng().fill_bytes(&mut out);
    out
}

/// Every opened row of device `i`'s store, concatenated.
fn store_plaintext(net: &Net, i: usize) -> Vec<u8> {
    net.keys(i).open_all(net.dev(i).backend()).into_iter().flat_map(|(_, bytes)| bytes).collect()
}

fn floor_of(row: &storage::SenderChainsRow, chain_id: u32) -> Option<u32> {
    row.floors.iter().find(|f| f.chain_id == chain_id).map(|f| f.iteration)
}

fn chain_of(row: &storage::SenderChainsRow, chain_id: u32) -> Option<&storage::SenderChain> {
    row.chains.iter().find(|c| c.chain_id == chain_id)
}

// ---------------------------------------------------------------------------
// Floors: a chain given up and taken again opens nothing read before.
// ---------------------------------------------------------------------------

/// Alice's first chain reaches Bob by an answer; the server holds its
/// original distribution. Alice rotates three times: the first chain is
/// evicted at Bob (floor 3). The server then delivers the held
/// distribution (iteration 0) and replays the three messages read: none
/// opens again; the chain is taken at its floor, so a message of it still
/// in flight (iteration 3, withheld until now) does open, once.
#[test]
fn a_delayed_distribution_of_an_evicted_chain_is_taken_from_its_floor() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let (held, m0) = net.send_holding_distribution(G, alice, bob, b"c1 m0");
    let first = net.own_chain(alice, G).unwrap().chain_id;
    let read = vec![m0, net.send_read(G, alice, bob, b"c1 m1"), net.send_read(G, alice, bob, b"c1 m2")];
    let in_flight = net.dev(alice).group_encrypt(G, b"c1 m3").unwrap().message;
    let mut second_chain = Vec::new();
    for k in 0..MAX_SENDER_CHAINS {
        net.dev(alice).rotate_group_chain(G).unwrap();
        let message = net.send_read(G, alice, bob, format!("chain {} m0", k + 2).as_bytes());
        if k == 0 {
            second_chain.push(message);
        }
    }
    let row = net.member_row(bob, G, alice).unwrap();
    assert!(chain_of(&row, first).is_none());
    assert_eq!(floor_of(&row, first), Some(3));
    assert_eq!(net.reopened(alice, bob, &read), 0);
    // The held copy of the first chain, from iteration 0.
    assert_eq!(net.receive(alice, bob, &held).unwrap(), Got::Control(None));
    let row = net.member_row(bob, G, alice).unwrap();
    assert_eq!(chain_of(&row, first).map(|c| c.iteration), Some(3), "stepped up to the floor");
    assert_eq!(floor_of(&row, first), None);
    for (k, message) in read.iter().enumerate() {
        assert_eq!(
            decrypt_error(net.receive(alice, bob, message)),
            DecryptError::Duplicate { counter: u32::try_from(k).unwrap() }
        );
    }
    assert_eq!(net.receive(alice, bob, &in_flight).unwrap(), Got::Group(b"c1 m3".to_vec()));
    assert_eq!(net.reopened(alice, bob, &[in_flight]), 0);
    // Taking the first chain back evicted the second: its floor holds too.
    assert_eq!(net.reopened(alice, bob, &second_chain), 0);
}

/// A cascade: four chains of Alice, each read by Bob through an answer
/// while the server holds its original distribution. The server delivers
/// the held copies in an order that makes every one of them take back an
/// evicted chain and evict another, replaying every message read after
/// each step: none ever decrypts a second time.
#[test]
fn an_eviction_cascade_of_delayed_distributions_reopens_nothing() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut held = Vec::new();
    let mut read = Vec::new();
    for k in 0..4 {
        if k > 0 {
            net.dev(alice).rotate_group_chain(G).unwrap();
        }
        let (copy, m0) = net.send_holding_distribution(G, alice, bob, format!("c{k} m0").as_bytes());
        held.push(copy);
        read.push(m0);
        read.push(net.send_read(G, alice, bob, format!("c{k} m1").as_bytes()));
    }
    // Bob holds chains 1..3, a floor of chain 0. Held copies: 0 evicts 1,
    // 1 evicts 2, 2 evicts 3, 3 evicts 0.
    for copy in &held {
        assert_eq!(net.receive(alice, bob, copy).unwrap(), Got::Control(None));
        assert_eq!(net.reopened(alice, bob, &read), 0);
        let row = net.member_row(bob, G, alice).unwrap();
        assert_eq!(row.chains.len(), MAX_SENDER_CHAINS);
        assert_eq!(row.floors.len(), 1);
    }
}

/// Builds `chains` chains of Alice at Bob, the first one read through an
/// answer while the server holds its original distribution; then delivers
/// the held copy and replays the first chain's messages. Returns how many
/// decrypted a second time.
fn replays_after_delayed_distribution(chains: usize) -> usize {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let (held, m0) = net.send_holding_distribution(G, alice, bob, b"c1 m0");
    let read = vec![m0, net.send_read(G, alice, bob, b"c1 m1"), net.send_read(G, alice, bob, b"c1 m2")];
    for k in 1..chains {
        net.dev(alice).rotate_group_chain(G).unwrap();
        net.send_read(G, alice, bob, format!("chain {k}").as_bytes());
    }
    assert_eq!(net.reopened(alice, bob, &read), 0, "before the held copy");
    assert_eq!(net.receive(alice, bob, &held).unwrap(), Got::Control(None));
    net.reopened(alice, bob, &read)
}

/// At the bound: 3 chains kept and 8 floors, so the first chain (given up
/// 8 chains ago) still has its floor.
#[test]
fn floors_hold_for_the_last_eight_chains_given_up() {
    assert_eq!(replays_after_delayed_distribution(MAX_SENDER_CHAINS + MAX_CHAIN_FLOORS), 0);
}

/// Finding (fixed by chain generations, PROTOCOL.md 18.6): one chain past
/// the bound, the server replayed every message Bob read on Alice's first
/// chain and each decrypted a second time. It needs
/// only 11 rotations by Alice (a removal or a scheduled
/// `rotate_group_chain` each; a daily schedule takes 11 days) and one
/// one-to-one message held back meanwhile (the chain's original
/// distribution, whose skipped key the pairwise session keeps). PROTOCOL.md
/// 18.11/18.12 list this bound, but the claimed property ("no group
/// message ever decrypts twice, except after delete_group + create_group")
/// does not hold past it, and the server, which sees chain ids in the
/// clear, knows exactly when a floor has been pushed out.
#[test]
fn a_delayed_distribution_after_eleven_rotations_reopens_nothing() {
    assert_eq!(replays_after_delayed_distribution(MAX_SENDER_CHAINS + MAX_CHAIN_FLOORS + 1), 0);
}

/// Well past the bound (40 chains: 29 floors forgotten), every delayed
/// distribution of the first chain is still refused: it is of a generation
/// below the lowest Bob still takes in.
#[test]
fn a_delayed_distribution_after_forty_rotations_reopens_nothing() {
    assert_eq!(replays_after_delayed_distribution(40), 0);
}

/// Generations: each chain of Alice has a larger one (in her row and in
/// what Bob keeps); a floor forgotten at Bob raises the lowest generation
/// he takes in past its own, and no further.
#[test]
fn generations_grow_per_chain_and_a_forgotten_floor_raises_the_minimum() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    assert_eq!(net.own_row(G, alice).generation, 0, "no chain yet");
    net.send_read(G, alice, bob, b"first");
    assert_eq!(net.own_row(G, alice).generation, 1);
    let mut generations = vec![1];
    for k in 2..=(MAX_SENDER_CHAINS + MAX_CHAIN_FLOORS + 2) as u64 {
        net.dev(alice).rotate_group_chain(G).unwrap();
        assert_eq!(net.own_row(G, alice).generation, k - 1, "a rotation keeps the generation");
        assert!(net.own_row(G, alice).chain.is_none());
        net.send_read(G, alice, bob, b"next");
        assert_eq!(net.own_row(G, alice).generation, k);
        generations.push(k);
        let row = net.member_row(bob, G, alice).unwrap();
        let kept: Vec<u64> = row.chains.iter().map(|c| c.generation).collect();
        let floored: Vec<u64> = row.floors.iter().map(|f| f.generation).collect();
        let held = kept.len() + floored.len();
        // Oldest first: the chains kept are the newest, the floors before them.
        assert_eq!([floored, kept].concat(), generations[generations.len() - held..].to_vec());
        // Floors forgotten: every generation before those held.
        let forgotten = generations.len() - held;
        assert_eq!(row.min_generation, if forgotten == 0 { 0 } else { generations[forgotten - 1] + 1 });
    }
    assert_eq!(net.member_row(bob, G, alice).unwrap().min_generation, 3, "two floors forgotten");
}

/// Alice's generation goes back (her app deleted the group and made it
/// again; a store restored from an older copy does the same), after Bob
/// forgot floors of her chains. Bob refuses her new chain (its generation
/// is below his minimum) without changing a row, and asks for the chain
/// with his minimum; Alice's commit of the request starts a chain of that
/// generation and answers with it; Bob reads her messages from then on,
/// and Carol, a member that had forgotten nothing, gets the new chain with
/// Alice's next message. The messages of the refused chain stay unreadable
/// at Bob (PROTOCOL.md 18.7).
#[test]
fn a_sender_whose_generation_went_back_leaps_to_the_members_minimum() {
    let net = Net::new(3);
    let (alice, bob, carol) = (0, 1, 2);
    net.create(G, &[alice, bob, carol]);
    for _ in 0..MAX_SENDER_CHAINS + MAX_CHAIN_FLOORS + 3 {
        net.dev(alice).rotate_group_chain(G).unwrap();
        net.send_read(G, alice, bob, b"chain");
    }
    let minimum = net.member_row(bob, G, alice).unwrap().min_generation;
    assert!(minimum > 1);
    net.dev(alice).delete_group(G).unwrap();
    net.dev(alice).create_group(G, &[addr(bob), addr(carol)]).unwrap();
    let lost = net.dev(alice).group_encrypt(G, b"refused chain").unwrap();
    assert_eq!(lost.distributions.len(), 2);
    assert_eq!(net.own_row(G, alice).generation, 1);
    let stale = lost.distributions.iter().find(|d| d.to == addr(bob)).unwrap();
    let groups_before = net.stores[bob].scan(Table::Groups).unwrap();
    assert_eq!(net.receive(alice, bob, &stale.message).unwrap(), Got::Control(None));
    assert_eq!(net.stores[bob].scan(Table::Groups).unwrap(), groups_before, "a stale chain changes no group row");
    let request = missing_chain(net.receive(alice, bob, &lost.message)).unwrap().expect("a request");
    let Got::Control(Some(answer)) = net.receive(bob, alice, &request).unwrap() else { panic!("no answer") };
    assert_eq!(net.own_row(G, alice).generation, minimum, "Alice leapt to Bob's minimum");
    assert!(!net.own_row(G, alice).distributed, "Carol lacks the new chain");
    assert_eq!(net.receive(alice, bob, &answer.message).unwrap(), Got::Control(None));
    assert!(net.member_row(bob, G, alice).unwrap().chains.iter().any(|c| c.generation == minimum));
    assert!(!matches!(net.receive(alice, bob, &lost.message), Ok(Got::Group(_))), "the refused chain's message");
    let after = net.dev(alice).group_encrypt(G, b"after the leap").unwrap();
    let to: Vec<_> = after.distributions.iter().map(|d| d.to.clone()).collect();
    assert_eq!(to, vec![addr(carol)], "only Carol lacks the new chain");
    net.receive(alice, carol, &after.distributions[0].message).unwrap();
    assert_eq!(net.receive(alice, bob, &after.message).unwrap(), Got::Group(b"after the leap".to_vec()));
    assert_eq!(net.receive(alice, carol, &after.message).unwrap(), Got::Group(b"after the leap".to_vec()));
}

/// What Bob's modified client sends: a request for Alice's current chain
/// carrying `min_generation` (its own row edited to hold that minimum and
/// no chain of hers, as a hostile member's client can).
fn hostile_request(net: &Net, alice: usize, bob: usize, min_generation: u64) -> Vec<u8> {
    // Alice sends (a distribution too after a rotation, never delivered).
    let sent = net.dev(alice).group_encrypt(G, b"x").unwrap();
    let keys = net.keys(bob);
    let key = keys.group_row(MEMBER, G, Some(&addr(alice)));
    let mut row: storage::SenderChainsRow = keys.read(net.dev(bob).backend(), &key).unwrap();
    row.chains.clear();
    row.requested.clear();
    row.requests = 0;
    row.min_generation = min_generation;
    keys.write(net.dev(bob).backend(), &key, &row);
    missing_chain(net.receive(alice, bob, &sent.message)).unwrap().expect("a request")
}

/// A member's requests make us leap at most `MAX_GROUP_KEY_ANSWERS` times
/// until our app rotates: a hostile member cannot make us rotate at will.
#[test]
fn a_hostile_members_requests_leap_a_bounded_number_of_times() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    net.send_read(G, alice, bob, b"first");
    let mut generation = 1;
    for k in 1..=4u32 {
        let wanted = generation + 10;
        let request = hostile_request(&net, alice, bob, wanted);
        let before = net.own_row(G, alice).chain.unwrap().chain_id;
        let _ = net.receive(bob, alice, &request).unwrap();
        let row = net.own_row(G, alice);
        if k <= MAX_GROUP_KEY_ANSWERS {
            assert_eq!(row.generation, wanted, "leap {k}");
            assert_ne!(row.chain.unwrap().chain_id, before, "a new chain");
        } else {
            assert_eq!(row.generation, generation, "no leap past the answers' limit (request {k})");
            assert_eq!(row.chain.unwrap().chain_id, before);
        }
        generation = row.generation;
    }
    // The app's rotation gives the member new answers (and leaps).
    net.dev(alice).rotate_group_chain(G).unwrap();
    let request = hostile_request(&net, alice, bob, generation + 100);
    let _ = net.receive(bob, alice, &request).unwrap();
    assert_eq!(net.own_row(G, alice).generation, generation + 100);
}

/// A request for a generation above `MAX_LEAP_GENERATION` makes no leap
/// (it is answered as a request for our chain): a hostile member cannot
/// exhaust our generations. One at it leaps, however far above ours.
#[test]
fn a_request_past_the_leap_limit_makes_no_leap() {
    for (wanted, leaps) in [(u64::MAX, false), (MAX_LEAP_GENERATION + 1, false), (MAX_LEAP_GENERATION, true)] {
        let net = Net::new(2);
        let (alice, bob) = (0, 1);
        net.create(G, &[alice, bob]);
        net.send_read(G, alice, bob, b"first");
        let chain = net.own_row(G, alice).chain.unwrap().chain_id;
        let request = hostile_request(&net, alice, bob, wanted);
        let Got::Control(Some(_)) = net.receive(bob, alice, &request).unwrap() else { panic!("no answer") };
        let row = net.own_row(G, alice);
        if leaps {
            assert_eq!(row.generation, wanted);
        } else {
            assert_eq!((row.generation, row.chain.unwrap().chain_id), (1, chain), "{wanted}");
        }
    }
}

/// Finding: a chain replaced because it came "under another identity"
/// leaves no floor. Carol, a hostile member, was given Alice's chain at
/// iteration 0 (its key and public signing key, as every member is). Bob's
/// app is made to trust a new identity for Alice's address (the server
/// hands out Carol's bundle for it, and Bob's app accepts the change, as
/// Signal-like apps do after a warning). Carol distributes Alice's chain
/// id, chain key at 0 and Alice's public signing key under that identity:
/// Bob replaces Alice's chain with it (same id, other identity) without a
/// floor, and the server's replays of Alice's genuine messages, which Bob
/// had read, decrypted again, now attributed to Carol's identity. (Fixed:
/// a chain replaced under another identity leaves its floor.)
#[test]
fn a_chain_taken_again_under_a_new_identity_reopens_nothing() {
    let net = Net::new(3);
    let (alice, bob, carol) = (0, 1, 2);
    net.create(G, &[alice, bob, carol]);
    let first = net.send(alice, G, b"genuine 0");
    // What Carol's (modified) client kept of the distribution it was given.
    let given = net.member_row(carol, G, alice).unwrap().chains[0].clone();
    assert_eq!(given.iteration, 0);
    let read = vec![first.message, net.send_read(G, alice, bob, b"genuine 1")];
    assert_eq!(net.receive(alice, bob, &read[0]).unwrap(), Got::Group(b"genuine 0".to_vec()));
    // Carol's device under Alice's address, with an identity of its own.
    let fake_key = [0x5a; 32];
    let fake = Device::create_in(
        Hooked::new(Arc::new(MemoryBackend::new())),
        &StorageKey::from_bytes(fake_key),
        addr(alice),
        UNIX_EPOCH,
    )
    .unwrap();
    net.dev(bob).trust_identity(&addr(alice), fake.identity_key()).unwrap();
    net.dev(bob).start_session(&fake.prekey_bundle().unwrap()).unwrap();
    let hello = net.dev(bob).encrypt(&addr(alice), b"hello").unwrap();
    fake.commit(fake.decrypt(&addr(bob), &hello).unwrap()).unwrap();
    fake.create_group(G, &[addr(bob)]).unwrap();
    let keys = StoreKeys::new(&fake_key);
    let own_key = keys.group_row(OWN_CHAIN, G, None);
    let mut own: storage::OwnChainRow = keys.read(fake.backend(), &own_key).unwrap();
    own.chain = Some(storage::OwnChain {
        chain_id: given.chain_id,
        iteration: 0,
        chain_key: given.chain_key.clone(),
        signing_seed: random32().to_vec(),
        // Alice's public key: the stored public key goes in distributions.
        signing_public: given.signing_key.clone(),
        recovery_key: given.chain_key.clone(),
        recovery_iteration: 0,
    });
    own.distributed = false;
    keys.write(fake.backend(), &own_key, &own);
    let sent = fake.group_encrypt(G, b"carol").unwrap();
    assert_eq!(sent.distributions.len(), 1);
    let pending = net.dev(bob).decrypt(&addr(alice), &sent.distributions[0].message).unwrap();
    assert_eq!(pending.kind(), MessageKind::Control);
    net.dev(bob).commit(pending).unwrap();
    // The server replays Alice's genuine messages, which Bob read.
    assert_eq!(net.reopened(alice, bob, &read), 0, "a message read before decrypted again");
}

// ---------------------------------------------------------------------------
// Tombstones: a removed member is no member, and its floors survive cycles.
// ---------------------------------------------------------------------------

fn is_tombstone(row: &storage::SenderChainsRow) -> bool {
    row.removed && row.chains.is_empty() && row.requested.is_empty() && row.requests == 0
}

/// Bob removes Alice and adds her back, twice, while Alice (whose app did
/// not remove Bob) keeps her chain. While removed, her messages are
/// `NotMember`, her distribution and her request change no group row and
/// get no answer. Added back, the held original distribution (iteration 0)
/// and an answer to Bob's request (from the floor) each take the chain from
/// its floor: no message read before is decrypted again, and her new
/// messages open exactly once.
#[test]
fn remove_and_add_back_cycles_reopen_nothing() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let (held, m0) = net.send_holding_distribution(G, alice, bob, b"m0");
    let mut read = vec![m0, net.send_read(G, alice, bob, b"m1")];
    let chain_id = net.own_chain(alice, G).unwrap().chain_id;
    // Cycle 1: removed.
    net.dev(bob).remove_group_members(G, &[addr(alice)]).unwrap();
    let tomb = net.member_row(bob, G, alice).unwrap();
    assert!(is_tombstone(&tomb));
    assert_eq!(floor_of(&tomb, chain_id), Some(2));
    let m2 = net.dev(alice).group_encrypt(G, b"m2").unwrap().message;
    assert_eq!(group_error(net.receive(alice, bob, &m2)), GroupError::NotMember);
    assert_eq!(group_error(net.receive(alice, bob, &read[0])), GroupError::NotMember);
    // Alice's request for Bob's chain, sent while Bob has her removed.
    let bobs = net.dev(bob).group_encrypt(G, b"from bob").unwrap();
    let request = missing_chain(net.receive(bob, alice, &bobs.message)).unwrap().expect("a request");
    let groups_before = net.stores[bob].scan(Table::Groups).unwrap();
    assert_eq!(net.receive(alice, bob, &request).unwrap(), Got::Control(None), "no answer to a removed member");
    assert_eq!(net.stores[bob].scan(Table::Groups).unwrap(), groups_before);
    // Added back: the held copy from iteration 0 is stepped to the floor.
    net.dev(bob).add_group_members(G, &[addr(alice)]).unwrap();
    assert_eq!(net.receive(alice, bob, &held).unwrap(), Got::Control(None));
    assert_eq!(chain_of(&net.member_row(bob, G, alice).unwrap(), chain_id).unwrap().iteration, 2);
    assert_eq!(net.reopened(alice, bob, &read), 0);
    assert_eq!(net.receive(alice, bob, &m2).unwrap(), Got::Group(b"m2".to_vec()));
    read.push(m2);
    // Cycle 2: removed and added back; Alice's next message asks for her
    // chain from the floor, and her answer is taken from there.
    net.dev(bob).remove_group_members(G, &[addr(alice)]).unwrap();
    assert_eq!(floor_of(&net.member_row(bob, G, alice).unwrap(), chain_id), Some(3));
    net.dev(bob).add_group_members(G, &[addr(alice)]).unwrap();
    let m3 = net.dev(alice).group_encrypt(G, b"m3").unwrap().message;
    let request = missing_chain(net.receive(alice, bob, &m3)).unwrap().expect("a request");
    let Got::Control(Some(answer)) = net.receive(bob, alice, &request).unwrap() else { panic!("no answer") };
    assert_eq!(net.receive(alice, bob, &answer.message).unwrap(), Got::Control(None));
    assert_eq!(net.reopened(alice, bob, &read), 0);
    assert_eq!(net.receive(alice, bob, &m3).unwrap(), Got::Group(b"m3".to_vec()));
    read.push(m3);
    assert_eq!(net.reopened(alice, bob, &read), 0);
}

/// What a seized phone holds of a removed member: nothing of its chains.
/// Alice has three chains at Bob, each with skipped keys (messages read
/// out of order). Before the removal Bob's store holds those seeds (the
/// check can fail); after it, no chain key of any of her chains at any
/// iteration up to where Bob was, no skipped seed, no signing public key.
/// Added back, still none.
#[test]
fn a_removed_members_keys_leave_the_store() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut skipped_seeds = Vec::new();
    for k in 0..MAX_SENDER_CHAINS {
        if k > 0 {
            net.dev(alice).rotate_group_chain(G).unwrap();
        }
        let sent: Vec<_> = (0..4).map(|j| net.send(alice, G, format!("c{k} m{j}").as_bytes()).message).collect();
        let chain = net.own_chain(alice, G).unwrap();
        let start: [u8; 32] = chain.recovery_key.as_slice().try_into().unwrap();
        assert_eq!(chain.recovery_iteration, 0);
        for i in 0..6 {
            let key = chain_ahead(&start, i);
            secrets.push(key.to_vec());
            secrets.push(chain_step(&key).0.to_vec());
        }
        let seed: [u8; 32] = chain.signing_seed.as_slice().try_into().unwrap();
        secrets.push(SigningKey::from_bytes(&seed).verifying_key().as_bytes().to_vec());
        // Out of order: 3 then 0; 1 and 2 stay skipped.
        net.receive(alice, bob, &sent[3]).unwrap();
        net.receive(alice, bob, &sent[0]).unwrap();
        skipped_seeds.push(chain_step(&chain_ahead(&start, 1)).0.to_vec());
    }
    let before = store_plaintext(&net, bob);
    assert!(skipped_seeds.iter().all(|s| contains(&before, s)), "the skipped seeds are stored before");
    net.dev(bob).remove_group_members(G, &[addr(alice)]).unwrap();
    let row = net.member_row(bob, G, alice).unwrap();
    assert!(is_tombstone(&row));
    assert_eq!(row.floors.len(), MAX_SENDER_CHAINS);
    let after = store_plaintext(&net, bob);
    for secret in &secrets {
        assert!(!contains(&after, secret), "a key of a removed member's chain is still stored");
    }
    net.dev(bob).add_group_members(G, &[addr(alice)]).unwrap();
    let back = store_plaintext(&net, bob);
    assert!(secrets.iter().all(|s| !contains(&back, s)));
}

/// Refused messages write nothing: a message naming a floored chain below
/// its floor (forged: its signature is garbage) is `Duplicate`; a removed
/// member's message is `NotMember`; neither changes a row of any table. A
/// removed member's distribution advances the session only.
#[test]
fn refused_messages_below_a_floor_or_from_a_tombstone_write_nothing() {
    let net = Net::new(3);
    let (alice, bob, eve) = (0, 1, 2);
    net.create(G, &[alice, bob, eve]);
    let old = net.send_read(G, alice, bob, b"c1 m0");
    net.send_read(G, alice, bob, b"c1 m1");
    let first = net.own_chain(alice, G).unwrap().chain_id;
    for _ in 0..MAX_SENDER_CHAINS {
        net.dev(alice).rotate_group_chain(G).unwrap();
        net.send_read(G, alice, bob, b"next");
    }
    assert_eq!(floor_of(&net.member_row(bob, G, alice).unwrap(), first), Some(2));
    let mut forged = decode_group(&old);
    forged.iteration = 1;
    forged.signature = vec![0xee; 64];
    forged.body = vec![0; 80];
    let before = all_rows(&net.stores[bob]);
    assert_eq!(decrypt_error(net.receive(alice, bob, &encode_group(forged))), DecryptError::Duplicate { counter: 1 });
    assert_eq!(all_rows(&net.stores[bob]), before);
    // Eve, removed.
    let eves = net.send(eve, G, b"eve").message;
    net.dev(bob).remove_group_members(G, &[addr(eve)]).unwrap();
    let before = all_rows(&net.stores[bob]);
    assert_eq!(group_error(net.receive(eve, bob, &eves)), GroupError::NotMember);
    assert_eq!(all_rows(&net.stores[bob]), before);
    net.dev(eve).rotate_group_chain(G).unwrap();
    let sent = net.dev(eve).group_encrypt(G, b"eve again").unwrap();
    let to_bob = sent.distributions.iter().find(|o| o.to == addr(bob)).unwrap();
    let groups = net.stores[bob].scan(Table::Groups).unwrap();
    assert_eq!(net.receive(eve, bob, &to_bob.message).unwrap(), Got::Control(None));
    assert_eq!(net.stores[bob].scan(Table::Groups).unwrap(), groups);
    assert!(is_tombstone(&net.member_row(bob, G, eve).unwrap()));
    assert_eq!(group_error(net.receive(eve, bob, &sent.message)), GroupError::NotMember);
}

// ---------------------------------------------------------------------------
// The signer: RFC 8032 signatures from the expanded key and stored public key.
// ---------------------------------------------------------------------------

/// The signature of `message` (wire bytes) from `sender` as RFC 8032
/// gives it for `seed`, over AD || body.
fn rfc8032(message: &[u8], sender: usize, seed: &[u8]) -> ([u8; 64], SigningKey) {
    let decoded = decode_group(message);
    let salt: [u8; 24] = decoded.salt.as_slice().try_into().unwrap();
    let ad = group_ad(&decoded.group_id, &addr(sender), decoded.chain_id, decoded.iteration, &salt);
    let key = SigningKey::from_bytes(seed.try_into().unwrap());
    (key.sign(&[ad.as_slice(), &decoded.body].concat()).to_bytes(), key)
}

/// For every size of plaintext (empty, around the padding buckets, the
/// largest), the device's signature is byte for byte `SigningKey::sign`'s
/// for the stored seed, and verifies strictly. A row of an earlier release
/// (no public key) signs the same, and gets the right public key back.
#[test]
fn the_chain_signer_is_rfc8032_for_every_size_and_for_old_rows() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    net.send(alice, G, b"first");
    let sizes = [0, 1, 14, 15, 16, 63, 64, 65, 255, 4095, 4096, 4097, 65_536, MAX_PLAINTEXT_LEN];
    for (k, size) in sizes.into_iter().enumerate() {
        let seed = net.own_chain(alice, G).unwrap().signing_seed;
        let plaintext = vec![u8::try_from(k).unwrap(); size];
        let sent = net.send(alice, G, &plaintext);
        let decoded = decode_group(&sent.message);
        let (expected, key) = rfc8032(&sent.message, alice, &seed);
        assert_eq!(decoded.signature, expected.to_vec(), "size {size}");
        let salt: [u8; 24] = decoded.salt.as_slice().try_into().unwrap();
        let ad = group_ad(G, &addr(alice), decoded.chain_id, decoded.iteration, &salt);
        let signature = ed25519_dalek::Signature::from_bytes(&expected);
        key.verifying_key().verify_strict(&[ad.as_slice(), &decoded.body].concat(), &signature).unwrap();
        assert_eq!(net.receive(alice, bob, &sent.message).unwrap(), Got::Group(plaintext));
    }
    // A row of an earlier release: no public key.
    let keys = net.keys(alice);
    let own_key = keys.group_row(OWN_CHAIN, G, None);
    let mut own: storage::OwnChainRow = keys.read(net.dev(alice).backend(), &own_key).unwrap();
    let public = own.chain.as_ref().unwrap().signing_public.clone();
    own.chain.as_mut().unwrap().signing_public.clear();
    keys.write(net.dev(alice).backend(), &own_key, &own);
    let seed = own.chain.unwrap().signing_seed;
    let sent = net.send(alice, G, b"");
    assert_eq!(decode_group(&sent.message).signature, rfc8032(&sent.message, alice, &seed).0.to_vec());
    assert_eq!(net.receive(alice, bob, &sent.message).unwrap(), Got::Group(Vec::new()));
    assert_eq!(net.own_chain(alice, G).unwrap().signing_public, public, "the derived key is stored back");
}

/// The stored public key is trusted, not checked against the seed (only
/// the store's own sealed writes can put one there: the seal binds it to
/// the row, and a rolled-back row holds a matching pair). Were it wrong,
/// the chain fails closed: the distribution carries that key and members
/// refuse every message as `Unauthenticated`; nothing opens under a key
/// the sender does not hold.
#[test]
fn a_stored_public_key_not_of_the_seed_fails_closed() {
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    let mut chain = storage::OwnChain {
        chain_id: 7,
        iteration: 0,
        chain_key: random32().to_vec(),
        signing_seed: random32().to_vec(),
        signing_public: SigningKey::from_bytes(&random32()).verifying_key().as_bytes().to_vec(),
        recovery_key: Vec::new(),
        recovery_iteration: 0,
    };
    chain.recovery_key = chain.chain_key.clone();
    let seed = chain.signing_seed.clone();
    net.set_own_chain(alice, G, chain);
    let sent = net.send(alice, G, b"x");
    assert_ne!(decode_group(&sent.message).signature, rfc8032(&sent.message, alice, &seed).0.to_vec());
    assert_eq!(decrypt_error(net.receive(alice, bob, &sent.message)), DecryptError::Unauthenticated);
}

/// An own-chain row that counts more leaps than `MAX_LEAPS_PER_ROTATION`
/// is `Corrupt` (nothing written, no panic); at the limit it loads, and the
/// app's rotation counts anew.
#[test]
fn an_own_chain_row_with_more_leaps_than_the_limit_is_corrupt() {
    use samizdat::{limits::MAX_LEAPS_PER_ROTATION, store::StoreError};
    let net = Net::new(2);
    let (alice, bob) = (0, 1);
    net.create(G, &[alice, bob]);
    net.send_read(G, alice, bob, b"first");
    let keys = net.keys(alice);
    let key = keys.group_row(OWN_CHAIN, G, None);
    let mut own: storage::OwnChainRow = keys.read(net.dev(alice).backend(), &key).unwrap();
    own.leaps = MAX_LEAPS_PER_ROTATION + 1;
    keys.write(net.dev(alice).backend(), &key, &own);
    let rows = all_rows(&net.stores[alice]);
    let refused = net.dev(alice).group_encrypt(G, b"x");
    assert!(matches!(refused, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Groups }))), "{refused:?}");
    assert_eq!(all_rows(&net.stores[alice]), rows);
    own.leaps = MAX_LEAPS_PER_ROTATION;
    keys.write(net.dev(alice).backend(), &key, &own);
    net.send_read(G, alice, bob, b"at the limit");
    net.dev(alice).rotate_group_chain(G).unwrap();
    assert_eq!(net.own_row(G, alice).leaps, 0, "a rotation counts anew");
}
