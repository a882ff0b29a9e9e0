//! Groups through the Device API: the scenarios of issue 14's "done when".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use samizdat::{
    DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError, GroupError, MessageKind},
    limits::{MAX_GROUP_KEY_ANSWERS, MAX_GROUP_KEY_REQUESTS, MAX_KEPT_CONTROL_MESSAGE_LEN},
    store::{Backend, MemoryBackend, Table},
    wire::Message,
};
use std::time::UNIX_EPOCH;
use support::group::{Got, World, address, missing_chain};

const G: &[u8] = b"g1";

fn decrypt_error(result: Result<Got, DeviceError>) -> DecryptError {
    match result {
        Err(DeviceError::Group(GroupError::Decrypt(e))) => e,
        other => panic!("expected a group decryption error, got {other:?}"),
    }
}

fn snapshot(device: &Device<MemoryBackend>) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    Table::ALL.iter().map(|&t| device.backend().scan(t).unwrap()).collect()
}

/// Five members, every one sending, delivered out of order; a removal after
/// which no removed device reads anything; the member added back reads from
/// then on only; distributions only to those that lack the chain.
#[test]
fn five_members_out_of_order_with_a_removal_and_a_member_added_back() {
    let world = World::new(5);
    world.create(G, &[0, 1, 2, 3, 4]);
    // Every member sends three messages; every other member receives them
    // in reverse order.
    let mut sent = Vec::new();
    for from in 0..5 {
        let first = world.send(from, G, format!("{from}:0").as_bytes());
        assert_eq!(first.distributions.len(), 4, "the chain goes to every other member once");
        let mut messages = vec![first.message];
        for k in 1..3 {
            let next = world.send(from, G, format!("{from}:{k}").as_bytes());
            assert!(next.distributions.is_empty(), "never re-sent to members that have it");
            messages.push(next.message);
        }
        sent.push(messages);
    }
    for (from, messages) in sent.iter().enumerate() {
        for to in (0..5).filter(|&to| to != from) {
            for (k, message) in messages.iter().enumerate().rev() {
                assert_eq!(world.receive(from, to, message).unwrap(), Got::Group(format!("{from}:{k}").into_bytes()));
            }
        }
    }
    // Member 4 is removed everywhere (its own device is told too).
    for i in 0..4 {
        world.device(i).remove_group_members(G, &[address(4)]).unwrap();
    }
    for from in 0..4 {
        let after = world.send(from, G, format!("{from} after").as_bytes());
        assert_eq!(after.distributions.len(), 3, "a new chain, to the remaining members only");
        assert!(after.distributions.iter().all(|d| d.to != address(4)));
        for to in (0..4).filter(|&to| to != from) {
            assert_eq!(
                world.receive(from, to, &after.message).unwrap(),
                Got::Group(format!("{from} after").into_bytes())
            );
        }
        // The removed device cannot read it: it lacks the new chain, and its
        // request is not answered.
        let request = missing_chain(world.receive(from, 4, &after.message)).expect("a missing chain");
        let request = request.expect("member 4 still has a session and asks");
        assert_eq!(world.receive(4, from, &request).unwrap(), Got::Control(None));
        assert!(missing_chain(world.receive(from, 4, &after.message)).is_some());
        // And its messages are refused by the remaining members.
        let from_removed = world.device(4).group_encrypt(G, b"still here?").unwrap();
        assert!(matches!(
            world.receive(4, from, &from_removed.message),
            Err(DeviceError::Group(GroupError::NotMember))
        ));
    }
    // Member 4 is added back: it reads what is sent from now on.
    let absent = world.send(0, G, b"while 4 was out");
    for i in 0..4 {
        world.device(i).add_group_members(G, &[address(4)]).unwrap();
    }
    let back = world.send(0, G, b"welcome back");
    assert_eq!(back.distributions.len(), 1);
    assert_eq!(back.distributions[0].to, address(4));
    assert_eq!(world.receive(0, 4, &back.message).unwrap(), Got::Group(b"welcome back".to_vec()));
    // What was sent before it came back stays unreadable to it.
    assert_eq!(decrypt_error(world.receive(0, 4, &absent.message)), DecryptError::Duplicate { counter: 1 });
    for to in 1..4 {
        assert_eq!(world.receive(0, to, &absent.message).unwrap(), Got::Group(b"while 4 was out".to_vec()));
        assert_eq!(world.receive(0, to, &back.message).unwrap(), Got::Group(b"welcome back".to_vec()));
    }
    // Member 4 speaks again: the others dropped its chains when it was
    // removed, and its device believes they have them. Each asks for the
    // chain, member 4's device answers, and the message decrypts: no person
    // involved.
    let again = world.device(4).group_encrypt(G, b"4 is back").unwrap();
    assert!(again.distributions.is_empty());
    for to in 0..4 {
        let request = missing_chain(world.receive(4, to, &again.message)).unwrap().unwrap();
        let Got::Control(Some(answer)) = world.receive(to, 4, &request).unwrap() else { panic!("no answer") };
        assert_eq!(world.receive(4, to, &answer.message).unwrap(), Got::Control(None));
        assert_eq!(world.receive(4, to, &again.message).unwrap(), Got::Group(b"4 is back".to_vec()));
    }
}

/// Forged signatures, bodies and salts; a replay; a chain id from another
/// group; a message moved to another group or attributed to another
/// member: all refused, and nothing in the store changes.
#[test]
fn forgeries_replays_and_moved_messages_are_refused_without_changing_state() {
    let world = World::new(3);
    world.create(b"g1", &[0, 1, 2]);
    world.create(b"g2", &[0, 1, 2]);
    let one = world.send(0, b"g1", b"in g1");
    let two = world.send(0, b"g2", b"in g2");
    let bob = world.device(1);
    // Every byte after the group id (chain id, iteration, salt, body, signature).
    let message = &one.message;
    for i in 7..message.len() {
        let mut bad = message.clone();
        bad[i] ^= 0x01;
        let result = world.receive(0, 1, &bad);
        assert!(result.is_err(), "byte {i} flipped was accepted");
        assert!(!matches!(result, Ok(Got::Group(_))));
    }
    // Moved to the other group (same length ids): a chain of g1 is not one of g2's.
    let mut moved = one.message.clone();
    let at = moved.windows(2).position(|w| w == b"g1").unwrap();
    moved[at + 1] = b'2';
    let result = world.receive(0, 1, &moved);
    assert!(matches!(result, Err(DeviceError::Group(GroupError::MissingChain { .. }))), "{result:?}");
    // Attributed to another member (member 2 as the sender).
    assert!(world.receive(2, 1, &one.message).is_err());
    // Only the bounded request bookkeeping changed (the request's session
    // step): every chain is as it was, and the genuine messages decrypt.
    assert_eq!(world.receive(0, 1, &one.message).unwrap(), Got::Group(b"in g1".to_vec()));
    assert_eq!(world.receive(0, 1, &two.message).unwrap(), Got::Group(b"in g2".to_vec()));
    // A replay is a duplicate and writes nothing.
    let after = snapshot(bob);
    assert_eq!(decrypt_error(world.receive(0, 1, &one.message)), DecryptError::Duplicate { counter: 0 });
    assert_eq!(snapshot(bob), after);
}

/// A forged group message changes nothing at all in the store.
#[test]
fn a_forged_signature_writes_nothing() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let sent = world.send(0, G, b"genuine");
    let mut forged = sent.message.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    let before = snapshot(world.device(1));
    assert_eq!(decrypt_error(world.receive(0, 1, &forged)), DecryptError::Unauthenticated);
    assert_eq!(snapshot(world.device(1)), before);
    assert_eq!(world.receive(0, 1, &sent.message).unwrap(), Got::Group(b"genuine".to_vec()));
}

/// A lost distribution is recovered without a person: the member's error
/// carries a request, the sender's commit answers it, and the held message
/// then decrypts.
#[test]
fn a_lost_distribution_is_recovered_automatically() {
    let world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let first = world.device(0).group_encrypt(G, b"first").unwrap();
    // The distribution to member 1 is lost; member 2 gets its own.
    for d in first.distributions.iter().filter(|d| d.to == address(2)) {
        world.receive(0, 2, &d.message).unwrap();
    }
    let second = world.send(0, G, b"second");
    let request = missing_chain(world.receive(0, 1, &second.message)).unwrap().unwrap();
    let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    assert_eq!(answer.to, address(1));
    assert_eq!(world.receive(0, 1, &answer.message).unwrap(), Got::Control(None));
    // The message that was missing its chain decrypts, and the next ones.
    assert_eq!(world.receive(0, 1, &second.message).unwrap(), Got::Group(b"second".to_vec()));
    // Member 1 was given the chain at the first message it asked for:
    // the first one, sent before it asked, too (the recovery window).
    let third = world.send(0, G, b"third");
    assert!(third.distributions.is_empty(), "member 1 has the chain now");
    assert_eq!(world.receive(0, 1, &third.message).unwrap(), Got::Group(b"third".to_vec()));
}

/// Requests are bounded on both sides: a member makes at most
/// MAX_GROUP_KEY_REQUESTS new requests for a chain (then the last one
/// again, the same bytes), and a sender makes at most MAX_GROUP_KEY_ANSWERS
/// new answers to one member's requests on one chain (then the last one
/// again), however many it gets: one message in, at most one out.
#[test]
fn requests_and_answers_are_bounded() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let sent = world.device(0).group_encrypt(G, b"lost chain").unwrap();
    let mut requests: Vec<Vec<u8>> = Vec::new();
    for _ in 0..MAX_GROUP_KEY_REQUESTS + 3 {
        let request = missing_chain(world.receive(0, 1, &sent.message)).unwrap().unwrap();
        if !requests.contains(&request) {
            requests.push(request);
        }
    }
    assert_eq!(requests.len(), MAX_GROUP_KEY_REQUESTS as usize, "new requests per chain");
    // A hostile member forgets it asked (deletes and recreates the group)
    // and asks again and again.
    for _ in 0..3 {
        world.device(1).delete_group(G).unwrap();
        world.device(1).create_group(G, &[address(0)]).unwrap();
        for _ in 0..2 {
            let request = missing_chain(world.receive(0, 1, &sent.message)).unwrap().unwrap();
            if !requests.contains(&request) {
                requests.push(request);
            }
        }
    }
    let mut answers: Vec<Vec<u8>> = Vec::new();
    for request in &requests {
        let Got::Control(Some(answer)) = world.receive(1, 0, request).unwrap() else { panic!("no answer") };
        if !answers.contains(&answer.message) {
            answers.push(answer.message);
        }
    }
    assert_eq!(answers.len(), MAX_GROUP_KEY_ANSWERS as usize, "new answers per member and chain");
}

/// A member whose app removes a sender and adds it back, again and again,
/// while the sender's app never removes the member (so the sender never
/// rotates): each time it lost the sender's chain and asks for it from where
/// it had read (its floor). Past the sender's new answers per member and
/// chain, the last answer handed again would be one the member has read (a
/// duplicate to it) and it would read nothing of the sender until the
/// sender rotates (the quickstart's fourth run found it); a request from
/// further on than the last answer gets a new answer from there.
#[test]
fn a_sender_removed_and_added_back_again_and_again_is_read_every_time() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let first = world.send(0, G, b"round 0");
    assert_eq!(world.receive(0, 1, &first.message).unwrap(), Got::Group(b"round 0".to_vec()));
    for round in 1..=MAX_GROUP_KEY_ANSWERS + 3 {
        world.device(1).remove_group_members(G, &[address(0)]).unwrap();
        world.device(1).add_group_members(G, &[address(0)]).unwrap();
        let text = format!("round {round}");
        let sent = world.device(0).group_encrypt(G, text.as_bytes()).unwrap();
        assert!(sent.distributions.is_empty(), "the sender's app never removed the member");
        let request = missing_chain(world.receive(0, 1, &sent.message)).unwrap().unwrap();
        let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
        assert_eq!(world.receive(0, 1, &answer.message).unwrap(), Got::Control(None), "round {round}");
        assert_eq!(world.receive(0, 1, &sent.message).unwrap(), Got::Group(text.into_bytes()));
    }
}

/// Past the budget, the member hands its last request again: byte for byte,
/// writing nothing. The sender reads it once (if it never came, after a
/// crash of the member's app) and refuses a second copy as a duplicate,
/// changing nothing. Another chain id gets its own last request, never
/// this one.
#[test]
fn a_request_handed_again_is_the_same_bytes_and_writes_nothing() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let first = world.device(0).group_encrypt(G, b"on the first chain").unwrap();
    let mut last = Vec::new();
    for _ in 0..MAX_GROUP_KEY_REQUESTS {
        let request = missing_chain(world.receive(0, 1, &first.message)).unwrap().unwrap();
        assert_ne!(request, last, "a new request each time within the budget");
        last = request;
    }
    for _ in 0..3 {
        let before = snapshot(world.device(1));
        let again = missing_chain(world.receive(0, 1, &first.message)).unwrap().unwrap();
        assert_eq!(again, last, "the last request again, byte for byte");
        assert!(snapshot(world.device(1)) == before, "a request handed again wrote something");
    }
    // The sender reads it once (the app died before sending it), and
    // refuses the copy.
    let Got::Control(Some(_)) = world.receive(1, 0, &last).unwrap() else { panic!("no answer") };
    let before = snapshot(world.device(0));
    assert!(matches!(
        world.receive(1, 0, &last),
        Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
    ));
    assert!(snapshot(world.device(0)) == before, "a copy refused changed the sender's store");
    // Another chain id of the sender: a new request of its own.
    world.device(0).rotate_group_chain(G).unwrap();
    let second = world.device(0).group_encrypt(G, b"on the second chain").unwrap();
    let other = missing_chain(world.receive(0, 1, &second.message)).unwrap().unwrap();
    assert_ne!(other, last);
}

/// Past its new answers, the sender hands the last answer again for a
/// request on its current chain: the same bytes, and no group row written
/// (the request itself is consumed by the session). The member reads it
/// once; a second copy is a duplicate. After a rotation the old answer is
/// never handed again: a request gets a new answer with the new chain.
#[test]
fn an_answer_handed_again_is_the_same_bytes_and_only_for_the_current_chain() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let sent = world.device(0).group_encrypt(G, b"lost chain").unwrap();
    let mut answers = Vec::new();
    // Every answer dies with the sender's app.
    for _ in 0..MAX_GROUP_KEY_ANSWERS {
        let request = missing_chain(world.receive(0, 1, &sent.message)).unwrap().unwrap();
        let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
        answers.push(answer.message);
    }
    let request = missing_chain(world.receive(0, 1, &sent.message)).unwrap().unwrap();
    let groups = Table::ALL.iter().position(|t| *t == Table::Groups).unwrap();
    let before = snapshot(world.device(0));
    let Got::Control(Some(again)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer again") };
    assert_eq!(Some(&again.message), answers.last(), "the last answer again, byte for byte");
    assert!(snapshot(world.device(0))[groups] == before[groups], "an answer handed again wrote a group row");
    assert_eq!(world.receive(0, 1, &again.message).unwrap(), Got::Control(None));
    assert!(matches!(
        world.receive(0, 1, &again.message),
        Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
    ));
    assert_eq!(world.receive(0, 1, &sent.message).unwrap(), Got::Group(b"lost chain".to_vec()));

    // A rotation: the old answer goes stale. The member lacks the new
    // chain (its distribution lost) and asks: a new answer, on the new chain.
    world.device(0).rotate_group_chain(G).unwrap();
    let rotated = world.device(0).group_encrypt(G, b"new chain").unwrap();
    let request = missing_chain(world.receive(0, 1, &rotated.message)).unwrap().unwrap();
    let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    assert!(!answers.contains(&answer.message), "a stale answer handed again after a rotation");
    assert_eq!(world.receive(0, 1, &answer.message).unwrap(), Got::Control(None));
    assert_eq!(world.receive(0, 1, &rotated.message).unwrap(), Got::Group(b"new chain".to_vec()));
}

/// A request or an answer kept to hand again fits the limit, even a request
/// in a prekey message (a session not yet answered) with the longest group
/// id.
#[test]
fn kept_requests_and_answers_fit_their_limit() {
    let long = [0x47; samizdat::limits::MAX_GROUP_ID_LEN];
    let a = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), address(0), UNIX_EPOCH).unwrap();
    let b = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), address(1), UNIX_EPOCH).unwrap();
    // Both sessions started by each side and never answered: prekey messages.
    a.start_session(&b.prekey_bundle().unwrap()).unwrap();
    b.start_session(&a.prekey_bundle().unwrap()).unwrap();
    a.create_group(&long, &[address(1)]).unwrap();
    b.create_group(&long, &[address(0)]).unwrap();
    let sent = a.group_encrypt(&long, b"x").unwrap();
    let Err(DeviceError::Group(GroupError::MissingChain { request: Some(request), .. })) =
        b.decrypt(&address(0), &sent.message)
    else {
        panic!("no request")
    };
    assert!(matches!(Message::from_bytes(&request).unwrap(), Message::PreKey(_)));
    let pending = a.decrypt(&address(1), &request).unwrap();
    let answer = a.commit(pending).unwrap().pop().unwrap();
    for kept in [&request, &answer.message] {
        assert!(kept.len() <= MAX_KEPT_CONTROL_MESSAGE_LEN, "{} bytes", kept.len());
    }
}

/// Messages in flight on a chain the sender has rotated away from still
/// decrypt (the old chain is kept), and the new chain reads the new ones.
#[test]
fn messages_in_flight_across_a_rotation_decrypt() {
    let world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let old = world.send(0, G, b"old chain");
    world.device(0).remove_group_members(G, &[address(2)]).unwrap();
    world.device(1).remove_group_members(G, &[address(2)]).unwrap();
    let new = world.send(0, G, b"new chain");
    assert_eq!(world.receive(0, 1, &new.message).unwrap(), Got::Group(b"new chain".to_vec()));
    assert_eq!(world.receive(0, 1, &old.message).unwrap(), Got::Group(b"old chain".to_vec()));
}

/// Messages from unknown groups and from devices that are not members are
/// refused; a group of this device's own address is refused at creation.
#[test]
fn unknown_groups_and_strangers_are_refused() {
    let world = World::new(3);
    world.create(G, &[0, 1]);
    let sent = world.send(0, G, b"hi");
    assert!(matches!(world.receive(0, 2, &sent.message), Err(DeviceError::Group(GroupError::UnknownGroup))));
    world.device(2).create_group(G, &[address(1)]).unwrap();
    assert!(matches!(world.receive(0, 2, &sent.message), Err(DeviceError::Group(GroupError::NotMember))));
    let me = world.device(0).address().clone();
    assert!(matches!(world.device(0).create_group(b"g9", &[me]), Err(DeviceError::Group(GroupError::SelfAsMember))));
    assert!(matches!(
        world.device(0).create_group(G, &[address(1)]),
        Err(DeviceError::Group(GroupError::AlreadyExists))
    ));
    assert!(matches!(world.device(0).create_group(&[0; 65], &[]), Err(DeviceError::Group(GroupError::InvalidGroupId))));
    assert!(matches!(world.device(0).group_encrypt(b"nope", b"x"), Err(DeviceError::Group(GroupError::UnknownGroup))));
    assert_eq!(world.device(0).group_members(G).unwrap(), vec![address(1)]);
}

/// A member without a session is reported, and gets the chain with the
/// first message after its session exists (from that message on).
#[test]
fn a_member_without_a_session_gets_the_chain_once_there_is_one() {
    let world = World::new(3);
    let stranger = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([9; 32]),
        Address::new("s", 1).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap();
    world.device(0).create_group(G, &[address(1), stranger.address().clone()]).unwrap();
    stranger.create_group(G, &[address(0)]).unwrap();
    let first = world.device(0).group_encrypt(G, b"one").unwrap();
    assert_eq!(first.without_session, vec![stranger.address().clone()]);
    assert_eq!(first.distributions.len(), 1);
    world.device(0).start_session(&stranger.prekey_bundle().unwrap()).unwrap();
    let second = world.device(0).group_encrypt(G, b"two").unwrap();
    assert!(second.without_session.is_empty());
    assert_eq!(second.distributions.len(), 1);
    let d = &second.distributions[0];
    let pending = stranger.decrypt(world.device(0).address(), &d.message).unwrap();
    assert_eq!((pending.kind(), pending.group_id()), (MessageKind::Control, Some(G)));
    stranger.commit(pending).unwrap();
    let pending = stranger.decrypt(world.device(0).address(), &second.message).unwrap();
    assert_eq!(pending.plaintext(), b"two");
    stranger.commit(pending).unwrap();
    let third = world.device(0).group_encrypt(G, b"three").unwrap();
    assert!(third.distributions.is_empty() && third.without_session.is_empty());
}

/// Control and group messages in a batch are left for `decrypt`, unconsumed.
#[test]
fn a_batch_leaves_control_messages_for_decrypt() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let sent = world.device(0).group_encrypt(G, b"x").unwrap();
    let direct = world.device(0).encrypt(&address(1), b"direct").unwrap();
    let bob = world.device(1);
    let batch = bob
        .decrypt_batch(&[
            (address(0), sent.distributions[0].message.clone()),
            (address(0), direct),
            (address(0), sent.message.clone()),
        ])
        .unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::NotInBatch)));
    assert_eq!(batch.results()[1].as_deref().unwrap(), b"direct");
    assert!(matches!(batch.results()[2], Err(SessionError::NotInBatch)));
    bob.commit_batch(batch).unwrap();
    assert_eq!(world.receive(0, 1, &sent.distributions[0].message).unwrap(), Got::Control(None));
    assert_eq!(world.receive(0, 1, &sent.message).unwrap(), Got::Group(b"x".to_vec()));
}

/// A member that missed more than MAX_SKIP of a sender's messages asks for
/// the chain from the message it got, and reads on from there.
#[test]
fn a_member_far_behind_recovers_through_a_request() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let first = world.send(0, G, b"first");
    assert_eq!(world.receive(0, 1, &first.message).unwrap(), Got::Group(b"first".to_vec()));
    for _ in 0..samizdat::limits::MAX_SKIP + 1 {
        world.device(0).group_encrypt(G, b"lost").unwrap();
    }
    let far = world.device(0).group_encrypt(G, b"far ahead").unwrap();
    let request = missing_chain(world.receive(0, 1, &far.message)).unwrap().unwrap();
    let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    assert_eq!(world.receive(0, 1, &answer.message).unwrap(), Got::Control(None));
    assert_eq!(world.receive(0, 1, &far.message).unwrap(), Got::Group(b"far ahead".to_vec()));
    let next = world.send(0, G, b"next");
    assert_eq!(world.receive(0, 1, &next.message).unwrap(), Got::Group(b"next".to_vec()));
}

/// A rotation without a removal: every member gets the new chain with the
/// next message, once.
#[test]
fn a_rotation_on_demand_gives_every_member_a_new_chain() {
    let world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let before = world.send(0, G, b"before");
    world.device(0).rotate_group_chain(G).unwrap();
    let after = world.send(0, G, b"after");
    assert_eq!(after.distributions.len(), 2);
    let again = world.send(0, G, b"again");
    assert!(again.distributions.is_empty());
    for to in 1..3 {
        for (sent, text) in [(&after, &b"after"[..]), (&before, b"before"), (&again, b"again")] {
            assert_eq!(world.receive(0, to, &sent.message).unwrap(), Got::Group(text.to_vec()));
        }
    }
}
