//! Issue 17 with issue 15: a fan-out kept for healing
//! (`encrypt_to_user_kept`, PROTOCOL.md 23.6). Each message to a contact's
//! device is kept in that device's outbox, so a reset from it brings the
//! message again without the app; sent syncs are not kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::time::{Duration, UNIX_EPOCH};

use samizdat::{
    device::{Device, Heal, MessageKind},
    heal::message_id,
    store::MemoryBackend,
};
use support::{
    Got, receive_kind,
    users::{device, list, user_key},
};

type Dev = Device<MemoryBackend>;

fn at(seconds: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// Alice's phone and laptop, Bob's two devices; sessions both ways between
/// the phone and every other device; every list pinned where it is needed.
fn world() -> (Dev, Dev, Dev, Dev) {
    let (a1, a2, b1, b2) = (device("alice", 1, 1), device("alice", 2, 2), device("bob", 1, 3), device("bob", 2, 4));
    let (alice, bob) = (user_key(0xA0), user_key(0xB0));
    let alices = list(&alice, "alice", 1, &[&a1, &a2]);
    let bobs = list(&bob, "bob", 1, &[&b1, &b2]);
    for d in [&a1, &a2] {
        d.set_device_list(&alices).unwrap();
    }
    for d in [&b1, &b2] {
        d.set_device_list(&bobs).unwrap();
    }
    for other in [&a2, &b1, &b2] {
        a1.start_session(&other.prekey_bundle().unwrap()).unwrap();
        let hello = a1.encrypt(other.address(), b"hello").unwrap();
        assert_eq!(receive_kind(other, &a1, &hello).unwrap(), Got::App(b"hello".to_vec()));
        let back = other.encrypt(a1.address(), b"hi").unwrap();
        assert_eq!(receive_kind(&a1, other, &back).unwrap(), Got::App(b"hi".to_vec()));
    }
    (a1, a2, b1, b2)
}

#[test]
fn a_kept_fan_out_is_resent_to_the_device_that_heals_and_only_to_it() {
    let (a1, a2, b1, b2) = world();
    let sent = a1.encrypt_to_user_kept("bob", b"meet at the station", at(100)).unwrap();
    assert_eq!((sent.messages.len(), sent.syncs.len()), (2, 1));
    assert_eq!(a1.outbox_len(b1.address()).unwrap(), 1);
    assert_eq!(a1.outbox_len(b2.address()).unwrap(), 1);
    assert_eq!(a1.outbox_len(a2.address()).unwrap(), 0, "a sent sync is not kept");
    // The plain fan-out keeps nothing.
    a1.encrypt_to_user("bob", b"not kept").unwrap();
    assert_eq!(a1.outbox_len(b1.address()).unwrap(), 1);

    // b1 reads its copy; b2's is lost, and b2 heals naming it.
    let to_b1 = sent.messages.iter().find(|o| o.to == *b1.address()).unwrap();
    let to_b2 = sent.messages.iter().find(|o| o.to == *b2.address()).unwrap();
    assert_eq!(receive_kind(&b1, &a1, &to_b1.message).unwrap(), Got::App(b"meet at the station".to_vec()));
    let reset = match b2.heal(&a1.prekey_bundle().unwrap(), std::slice::from_ref(&to_b2.message), at(200)).unwrap() {
        Heal::Sent(reset) => reset.message,
        other => panic!("no reset: {other:?}"),
    };
    let resent = match receive_kind(&a1, &b2, &reset).unwrap() {
        Got::Control(resent) => resent,
        other => panic!("a reset read as {other:?}"),
    };
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].to, *b2.address());
    let pending = b2.decrypt(a1.address(), &resent[0].message).unwrap();
    assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Direct, &b"meet at the station"[..]));
    assert_eq!(pending.message_id(), Some(message_id(&to_b2.message)), "the id of the message as first sent");
    b2.commit(pending).unwrap();

    // Each device's copy is acknowledged on its own.
    assert_eq!(a1.acknowledge(b1.address(), &[message_id(&to_b1.message)]).unwrap(), 1);
    assert_eq!(a1.outbox_len(b1.address()).unwrap(), 0);
    assert_eq!(a1.acknowledge(b2.address(), &[message_id(&to_b2.message)]).unwrap(), 1);
    assert_eq!(a1.outbox_len(b2.address()).unwrap(), 0);
}

#[test]
fn a_kept_fan_out_to_some_devices_keeps_only_theirs() {
    let (a1, a2, b1, b2) = world();
    let sent = a1.encrypt_to_user_devices_kept("bob", b"only b2", &[b2.address().clone()], at(100)).unwrap();
    assert_eq!(sent.messages.iter().map(|o| o.to.clone()).collect::<Vec<_>>(), vec![b2.address().clone()]);
    assert!(sent.syncs.is_empty());
    assert_eq!(a1.outbox_len(b1.address()).unwrap(), 0);
    assert_eq!(a1.outbox_len(b2.address()).unwrap(), 1);
    assert_eq!(a1.outbox_len(a2.address()).unwrap(), 0);
}
