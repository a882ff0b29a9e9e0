//! Issue 17, items 3 and 4: groups address users, and their verified device
//! lists decide the member devices (PROTOCOL.md 18.8). A device a newer
//! list drops stops being a member, with a rotation, before the next send,
//! whether or not the app removed it; a device a newer list adds becomes
//! one; a device of a pinned user that no list names is never one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::{
    address::Address,
    device::{Device, DeviceError, GroupError},
    store::MemoryBackend,
    user::DeviceListError,
};
use support::{
    Got, receive_kind,
    users::{device, list, user_key},
};

const G: &[u8] = b"team";

type Dev = Device<MemoryBackend>;

/// Sessions both ways between every two of `devices`.
fn connect(devices: &[&Dev]) {
    for a in devices {
        for b in devices {
            if a.address() != b.address() && !a.has_session(b.address()).unwrap() {
                a.start_session(&b.prekey_bundle().unwrap()).unwrap();
                let hello = a.encrypt(b.address(), b"hello").unwrap();
                assert_eq!(receive_kind(*b, *a, &hello).unwrap(), Got::App(b"hello".to_vec()));
            }
        }
    }
}

/// `from` sends `text` to the group; the distributions are delivered to
/// their recipients among `devices`. Returns the group message and who was
/// given a chain.
fn send(from: &Dev, devices: &[&Dev], text: &[u8]) -> (Vec<u8>, Vec<Address>) {
    let sent = from.group_encrypt(G, text).unwrap();
    for d in &sent.distributions {
        let to = devices.iter().find(|x| *x.address() == d.to).expect("a distribution to a known device");
        assert!(matches!(receive_kind(*to, from, &d.message).unwrap(), Got::Control(_)));
    }
    (sent.message, sent.distributions.iter().map(|d| d.to.clone()).collect())
}

fn reads(to: &Dev, from: &Dev, message: &[u8], text: &[u8]) -> bool {
    matches!(receive_kind(to, from, message), Ok(Got::Group(t)) if t == text)
}

/// The attack this closes: Bob's phone is stolen and he drops it from his
/// list. Alice's device takes the new list, but her app has not removed
/// the phone from the group (it was added per device). Before, the phone
/// kept Alice's chain and read every later message; now the roster follows
/// the list before Alice's next send: the phone is removed, her chain
/// rotates, and the phone reads nothing.
#[test]
fn a_device_dropped_from_its_list_reads_nothing_sent_after_even_if_the_app_never_removed_it() {
    let bob = user_key(0xB0);
    let (a1, b1, b2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    let all = [&a1, &b1, &b2];
    connect(&all);
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1, &b2])).unwrap();
    a1.create_group(G, &[b1.address().clone(), b2.address().clone()]).unwrap();
    for d in [&b1, &b2] {
        let others: Vec<_> = all.iter().filter(|o| o.address() != d.address()).map(|o| o.address().clone()).collect();
        d.create_group(G, &others).unwrap();
    }
    let (message, _) = send(&a1, &all, b"before");
    assert!(reads(&b1, &a1, &message, b"before") && reads(&b2, &a1, &message, b"before"));

    // The phone (b2) is dropped from Bob's list; Alice's device takes it.
    a1.update_device_list(&list(&bob, "bob", 2, &[&b1])).unwrap();
    let (message, given) = send(&a1, &all, b"after");
    assert_eq!(given, vec![b1.address().clone()], "a new chain, to the listed device only");
    assert!(reads(&b1, &a1, &message, b"after"));
    assert!(
        matches!(receive_kind(&b2, &a1, &message), Err(DeviceError::Group(GroupError::MissingChain { .. }))),
        "the dropped device read a message sent after its removal"
    );
    assert_eq!(a1.group_members(G).unwrap(), vec![b1.address().clone()]);
}

/// The same when the newer list comes in a bundle (a session started with
/// Bob's other device): every write of a list moves the mark.
#[test]
fn a_list_carried_by_a_bundle_moves_the_roster_too() {
    let bob = user_key(0xB0);
    let (a1, b1, b2, b3) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3), device("bob", 3, 4));
    connect(&[&a1, &b1, &b2]);
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1, &b2])).unwrap();
    a1.create_group(G, &[b1.address().clone(), b2.address().clone()]).unwrap();
    let (_, given) = send(&a1, &[&b1, &b2], b"before");
    assert_eq!(given.len(), 2);
    // Bob replaces b2 by b3; b3's bundle carries the list.
    b3.set_device_list(&list(&bob, "bob", 2, &[&b1, &b3])).unwrap();
    a1.start_session(&b3.prekey_bundle().unwrap()).unwrap();
    assert_eq!(a1.group_members(G).unwrap(), vec![b1.address().clone()]);
    let (_, given) = send(&a1, &[&b1, &b2, &b3], b"after");
    assert_eq!(given, vec![b1.address().clone()], "b3 was never added (per device), b2 is gone");
}

/// Member users: the listed devices are members, a device a newer list adds
/// becomes one before the next send, and can send to the group at once.
#[test]
fn member_users_follow_their_lists_both_ways() {
    let (alice, bob) = (user_key(0xA0), user_key(0xB0));
    let (a1, b1, b2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    connect(&[&a1, &b1, &b2]);
    let bobs = list(&bob, "bob", 1, &[&b1]);
    let alices = list(&alice, "alice", 1, &[&a1]);
    a1.set_device_list(&alices).unwrap();
    b1.set_device_list(&bobs).unwrap();
    a1.update_device_list(&bobs).unwrap();
    for (d, other) in [(&b1, "alice"), (&b2, "alice")] {
        d.update_device_list(&alices).unwrap();
        d.create_group(G, &[]).unwrap();
        d.add_group_users(G, &[other]).unwrap();
    }
    a1.create_group(G, &[]).unwrap();
    a1.add_group_users(G, &["bob"]).unwrap();
    assert_eq!(a1.group_users(G).unwrap(), vec!["bob".to_owned()]);
    assert_eq!(a1.group_members(G).unwrap(), vec![b1.address().clone()]);
    let (message, given) = send(&a1, &[&b1, &b2], b"one");
    assert_eq!(given, vec![b1.address().clone()]);
    assert!(reads(&b1, &a1, &message, b"one"));

    // Bob links b2: a newer list. Bob's new device writes first, before
    // Alice's device ever sent since taking the list: its chain and its
    // message are taken (the roster follows the list on the spot).
    let both = list(&bob, "bob", 2, &[&b1, &b2]);
    b2.set_device_list(&both).unwrap();
    a1.update_device_list(&both).unwrap();
    let (message, given) = send(&b2, &[&a1], b"hi, new laptop here");
    assert_eq!(given, vec![a1.address().clone()]);
    assert!(reads(&a1, &b2, &message, b"hi, new laptop here"));
    assert_eq!(a1.group_members(G).unwrap(), vec![b1.address().clone(), b2.address().clone()]);
    // Alice's next message gives her chain to b2, which reads it; b1 already has it.
    let (message, given) = send(&a1, &[&b1, &b2], b"welcome");
    assert_eq!(given, vec![b2.address().clone()]);
    assert!(reads(&b1, &a1, &message, b"welcome") && reads(&b2, &a1, &message, b"welcome"));

    // Bob drops b1: removed and a rotation, without any group call.
    a1.update_device_list(&list(&bob, "bob", 3, &[&b2])).unwrap();
    let (message, given) = send(&a1, &[&b1, &b2], b"b1 is gone");
    assert_eq!(given, vec![b2.address().clone()]);
    assert!(reads(&b2, &a1, &message, b"b1 is gone"));
    assert!(!reads(&b1, &a1, &message, b"b1 is gone"));
    assert_eq!(a1.group_members(G).unwrap(), vec![b2.address().clone()]);
}

/// A message from the new device is taken even when its chain arrives
/// first through a request: the group message finds no member row, the
/// roster follows the newer list, and the chain is asked for.
#[test]
fn a_new_listed_device_whose_chain_was_lost_is_asked_for_it() {
    let bob = user_key(0xB0);
    let (a1, b1, b2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    connect(&[&a1, &b1, &b2]);
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1])).unwrap();
    a1.create_group(G, &[]).unwrap();
    a1.add_group_users(G, &["bob"]).unwrap();
    b2.create_group(G, &[a1.address().clone()]).unwrap();
    a1.update_device_list(&list(&bob, "bob", 2, &[&b1, &b2])).unwrap();
    // b2's distribution is lost; its group message arrives alone.
    let sent = b2.group_encrypt(G, b"lost chain").unwrap();
    let request = match receive_kind(&a1, &b2, &sent.message) {
        Err(DeviceError::Group(GroupError::MissingChain { request: Some(request), .. })) => request,
        other => panic!("expected a request for the chain, got {other:?}"),
    };
    let answer = match receive_kind(&b2, &a1, &request).unwrap() {
        Got::Control(answer) => answer,
        other => panic!("expected an answer, got {other:?}"),
    };
    assert_eq!(answer.len(), 1);
    assert!(matches!(receive_kind(&a1, &b2, &answer[0].message).unwrap(), Got::Control(_)));
    assert!(reads(&a1, &b2, &sent.message, b"lost chain"));
}

/// The rules of the calls: a device of a pinned user that its list does not
/// name cannot be added; a device of a member user is removed with its
/// user; a user with no verified list cannot be a member user. Nothing is
/// written by a refusal.
#[test]
fn the_calls_refuse_what_the_lists_rule_out() {
    let bob = user_key(0xB0);
    let (a1, b1, b2, c1) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3), device("carol", 1, 4));
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1])).unwrap();
    assert!(matches!(
        a1.create_group(G, &[b2.address().clone()]),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 2 }))
    ));
    a1.create_group(G, &[c1.address().clone()]).unwrap();
    let before = a1.backend().snapshot();
    assert!(matches!(
        a1.add_group_members(G, &[b2.address().clone()]),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 2 }))
    ));
    assert!(matches!(a1.add_group_users(G, &["dave"]), Err(DeviceError::Group(GroupError::UnpinnedUser))));
    assert_eq!(a1.backend().snapshot(), before);
    assert_eq!(DeviceError::Group(GroupError::UnpinnedUser).kind(), samizdat::ErrorKind::NoSession);

    // Carol is not pinned: her device is a member per device, as before.
    a1.add_group_users(G, &["bob"]).unwrap();
    assert_eq!(a1.group_members(G).unwrap(), vec![c1.address().clone(), b1.address().clone()]);
    let before = a1.backend().snapshot();
    assert!(matches!(
        a1.remove_group_members(G, &[b1.address().clone()]),
        Err(DeviceError::Group(GroupError::FollowedUser))
    ));
    assert_eq!(a1.backend().snapshot(), before);
    assert_eq!(DeviceError::Group(GroupError::FollowedUser).kind(), samizdat::ErrorKind::InvalidArgument);

    a1.remove_group_users(G, &["bob", "nobody"]).unwrap();
    assert!(a1.group_users(G).unwrap().is_empty());
    assert_eq!(a1.group_members(G).unwrap(), vec![c1.address().clone()]);
    // Nothing to remove: nothing written.
    let before = a1.backend().snapshot();
    a1.remove_group_users(G, &["bob"]).unwrap();
    assert_eq!(a1.backend().snapshot(), before);
    assert!(matches!(a1.group_users(b"no such group"), Err(DeviceError::Group(GroupError::UnknownGroup))));
}

/// A removed member user's devices read nothing after; it can be added back.
#[test]
fn a_removed_user_reads_nothing_after_and_can_come_back() {
    let bob = user_key(0xB0);
    let (a1, b1, b2, c1) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3), device("carol", 1, 4));
    let all = [&a1, &b1, &b2, &c1];
    connect(&all);
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1, &b2])).unwrap();
    a1.create_group(G, &[c1.address().clone()]).unwrap();
    a1.add_group_users(G, &["bob"]).unwrap();
    for d in [&b1, &b2, &c1] {
        d.create_group(G, &[a1.address().clone()]).unwrap();
    }
    let (message, given) = send(&a1, &all, b"all of us");
    assert_eq!(given.len(), 3);
    assert!([&b1, &b2, &c1].iter().all(|d| reads(d, &a1, &message, b"all of us")));
    a1.remove_group_users(G, &["bob"]).unwrap();
    let (message, given) = send(&a1, &all, b"carol only");
    assert_eq!(given, vec![c1.address().clone()]);
    assert!(reads(&c1, &a1, &message, b"carol only"));
    assert!(!reads(&b1, &a1, &message, b"carol only") && !reads(&b2, &a1, &message, b"carol only"));
    a1.add_group_users(G, &["bob"]).unwrap();
    let (message, given) = send(&a1, &all, b"bob is back");
    assert_eq!(given, vec![b1.address().clone(), b2.address().clone()]);
    assert!(reads(&b1, &a1, &message, b"bob is back") && reads(&b2, &a1, &message, b"bob is back"));
}

/// Our own user as a member user: our other devices follow our own list.
#[test]
fn our_own_user_as_a_member_user_follows_our_own_list() {
    let alice = user_key(0xA0);
    let (a1, a2, a3) = (device("alice", 1, 1), device("alice", 2, 2), device("alice", 3, 3));
    a1.set_device_list(&list(&alice, "alice", 1, &[&a1, &a2])).unwrap();
    a1.create_group(G, &[]).unwrap();
    a1.add_group_users(G, &["alice"]).unwrap();
    assert_eq!(a1.group_members(G).unwrap(), vec![a2.address().clone()]);
    a1.set_device_list(&list(&alice, "alice", 2, &[&a1, &a3])).unwrap();
    assert_eq!(a1.group_members(G).unwrap(), vec![a3.address().clone()]);
}

/// No list written since the roster last followed: a send reads one more
/// row and writes nothing more (the roster is not read).
#[test]
fn without_a_new_list_a_send_writes_only_its_chain() {
    let bob = user_key(0xB0);
    let (a1, b1) = (device("alice", 1, 1), device("bob", 1, 2));
    connect(&[&a1, &b1]);
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1])).unwrap();
    a1.create_group(G, &[]).unwrap();
    a1.add_group_users(G, &["bob"]).unwrap();
    send(&a1, &[&b1], b"first");
    let before = a1.backend().snapshot();
    send(&a1, &[&b1], b"second");
    let after = a1.backend().snapshot();
    let changed = after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).count();
    assert_eq!(changed, 1, "only our chain's row");
}

/// The roster's new fields are checked when it loads (PROTOCOL.md 18.9): a
/// member user twice, a member user that is no valid user id, a member's
/// recorded identity key of the wrong length or that does not decode, are
/// `Corrupt`, never a panic; the row as written loads.
#[test]
fn a_roster_with_bad_users_or_identities_is_corrupt() {
    use samizdat::store::{StoreError, Table};
    use samizdat_proto::storage;
    use support::audit_group::{ROSTER, StoreKeys};

    let bob = user_key(0xB0);
    let (a1, b1) = (device("alice", 1, 1), device("bob", 1, 2));
    a1.update_device_list(&list(&bob, "bob", 1, &[&b1])).unwrap();
    a1.create_group(G, &[]).unwrap();
    a1.add_group_users(G, &["bob"]).unwrap();
    let keys = StoreKeys::new(&[1; 32]);
    let key = keys.group_row(ROSTER, G, None);
    let good: storage::GroupRow = keys.read(a1.backend(), &key).unwrap();
    assert_eq!(good.users, vec!["bob".to_owned()]);
    assert_eq!(good.members[0].identity, b1.identity_key().as_bytes().to_vec(), "the listed key is recorded");
    let bad_rows: Vec<(&str, storage::GroupRow)> = vec![
        ("a user twice", storage::GroupRow { users: vec!["bob".into(), "bob".into()], ..good.clone() }),
        ("an empty user id", storage::GroupRow { users: vec![String::new()], ..good.clone() }),
        ("an identity of 31 bytes", {
            let mut row = good.clone();
            row.members[0].identity = vec![9; 31];
            row
        }),
        ("an identity that does not decode", {
            let mut row = good.clone();
            row.members[0].identity = vec![0; 32];
            row
        }),
    ];
    for (what, row) in bad_rows {
        keys.write(a1.backend(), &key, &row);
        assert!(
            matches!(a1.group_members(G), Err(DeviceError::Store(StoreError::Corrupt { table: Table::Groups }))),
            "{what}"
        );
    }
    keys.write(a1.backend(), &key, &good);
    assert_eq!(a1.group_members(G).unwrap(), vec![b1.address().clone()]);
}
