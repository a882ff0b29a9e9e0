//! Issue 17, item 6: three users with two and three devices converse one to
//! one (fan-out, sent syncs) and in a group; a device is linked
//! mid-conversation and one is removed. Every device is a real `Device` in
//! its own memory store; messages go through the calls an app makes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::time::{Duration, UNIX_EPOCH};

use samizdat::{
    device::{Device, DeviceError, GroupError, Outgoing},
    store::MemoryBackend,
    user::{DeviceListError, UserIdentityKeyPair},
};
use support::{
    Got, receive_kind,
    users::{device, list, user_key},
};

const G: &[u8] = b"family";

/// Every device, by address, with the user keys the apps hold.
struct World {
    devices: Vec<Device<MemoryBackend>>,
}

impl World {
    fn get(&self, user: &str, id: u32) -> &Device<MemoryBackend> {
        self.devices
            .iter()
            .find(|d| d.address().user_id() == user && d.address().device_id() == id)
            .unwrap_or_else(|| panic!("no device {user}/{id}"))
    }

    fn of(&self, outgoing_to: &samizdat::address::Address) -> &Device<MemoryBackend> {
        self.get(outgoing_to.user_id(), outgoing_to.device_id())
    }

    /// Delivers `sent` from `from` to each recipient: what each got.
    fn deliver(&self, from: &Device<MemoryBackend>, sent: &[Outgoing]) -> Vec<(String, Got)> {
        sent.iter()
            .map(|o| {
                let to = self.of(&o.to);
                let got = receive_kind(to, from, &o.message).unwrap();
                (format!("{}/{}", o.to.user_id(), o.to.device_id()), got)
            })
            .collect()
    }

    /// Every device takes the other users' lists (what the apps fetch from
    /// the directory, or the bundles carry): a device that only received
    /// sessions has pinned nobody yet.
    fn share(&self, lists: &[&samizdat::user::SignedDeviceList]) {
        for d in &self.devices {
            for signed in lists {
                if signed.verify().unwrap().user_id() != d.address().user_id() {
                    d.update_device_list(signed).unwrap();
                }
            }
        }
    }

    /// Sessions between every two devices (both ways), from their bundles.
    fn connect_all(&self) {
        for a in &self.devices {
            for b in &self.devices {
                if a.address() != b.address() && !a.has_session(b.address()).unwrap() {
                    a.start_session(&b.prekey_bundle().unwrap()).unwrap();
                    let hello = a.encrypt(b.address(), b"hello").unwrap();
                    assert_eq!(receive_kind(b, a, &hello).unwrap(), Got::App(b"hello".to_vec()));
                }
            }
        }
    }

    /// A group message from `from` to every member device it lists,
    /// distributions first; what each member read.
    fn group_send(&self, from: &Device<MemoryBackend>, members: &[&Device<MemoryBackend>], text: &[u8]) -> usize {
        let sent = from.group_encrypt(G, text).unwrap();
        for d in &sent.distributions {
            let _ = receive_kind(self.of(&d.to), from, &d.message).unwrap();
        }
        members
            .iter()
            .filter(|m| matches!(receive_kind(m, from, &sent.message), Ok(Got::Group(t)) if t == text))
            .count()
    }
}

fn now() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000)
}

/// Links `new` to the user of `existing` (who holds `user`'s key): the
/// code scanned, the message delivered, the list returned for the others.
fn link(
    existing: &Device<MemoryBackend>,
    new: &Device<MemoryBackend>,
    user: &UserIdentityKeyPair,
) -> samizdat::user::SignedDeviceList {
    let offer = new.link_offer(now()).unwrap();
    let linked = existing.link_device(offer.code(), user, now()).unwrap();
    let provisioned = new.finish_link(&offer, &linked.message, now()).unwrap();
    assert_eq!(provisioned.user_identity.public_key(), user.public_key());
    linked.device_list
}

#[test]
fn three_users_with_several_devices_converse_link_and_remove() {
    let (alice, bob, carol) = (user_key(0xA0), user_key(0xB0), user_key(0xC0));
    // Alice: 2 devices, Bob: 3, Carol: 1 for now. Each user's first device
    // sets the list; the others are linked to it by a code.
    let world = World {
        devices: vec![
            device("alice", 1, 1),
            device("alice", 2, 2),
            device("bob", 1, 3),
            device("bob", 2, 4),
            device("bob", 3, 5),
            device("carol", 1, 6),
        ],
    };
    let (a1, a2) = (world.get("alice", 1), world.get("alice", 2));
    let (b1, b2, b3) = (world.get("bob", 1), world.get("bob", 2), world.get("bob", 3));
    let c1 = world.get("carol", 1);
    a1.set_device_list(&list(&alice, "alice", 1, &[a1])).unwrap();
    b1.set_device_list(&list(&bob, "bob", 1, &[b1])).unwrap();
    c1.set_device_list(&list(&carol, "carol", 1, &[c1])).unwrap();
    let alices = link(a1, a2, &alice);
    link(b1, b2, &bob);
    let bobs = link(b1, b3, &bob);
    let carols_first = c1.device_list().unwrap().unwrap();
    // b2 learns its user's newest list (the app passes it on).
    b2.update_device_list(&bobs).unwrap();
    assert_eq!(bobs.verify().unwrap().devices().len(), 3);
    // Every device meets every other, and takes the other users' lists.
    world.connect_all();
    world.share(&[&alices, &bobs, &carols_first]);

    // One to one: Alice's phone writes to Bob (the user): his three
    // devices get it, and her laptop gets a sent sync.
    let out = a1.encrypt_to_user("bob", b"dinner at 8?").unwrap();
    assert!(out.missing.is_empty());
    let got = world.deliver(a1, &out.messages);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, g)| *g == Got::App(b"dinner at 8?".to_vec())), "{got:?}");
    let synced = world.deliver(a1, &out.syncs);
    assert_eq!(synced, vec![("alice/2".to_owned(), Got::SentSync("bob".to_owned(), b"dinner at 8?".to_vec()))]);
    // Bob answers from his laptop: Alice's two devices, and his other two as syncs.
    let reply = b2.encrypt_to_user("alice", b"yes").unwrap();
    assert_eq!((reply.messages.len(), reply.syncs.len(), reply.missing.len()), (2, 2, 0));
    assert!(world.deliver(b2, &reply.messages).iter().all(|(_, g)| *g == Got::App(b"yes".to_vec())));
    assert!(world.deliver(b2, &reply.syncs).iter().all(|(_, g)| matches!(g, Got::SentSync(to, _) if to == "alice")));

    // A group of every device.
    for d in &world.devices {
        let others: Vec<_> =
            world.devices.iter().filter(|o| o.address() != d.address()).map(|o| o.address().clone()).collect();
        d.create_group(G, &others).unwrap();
    }
    let everyone: Vec<&Device<MemoryBackend>> = world.devices.iter().collect();
    let others = |me: &Device<MemoryBackend>| {
        everyone.iter().copied().filter(|d| d.address() != me.address()).collect::<Vec<_>>()
    };
    assert_eq!(world.group_send(a1, &others(a1), b"hi all"), 5);
    assert_eq!(world.group_send(c1, &others(c1), b"hi from carol"), 5);

    // Mid-conversation, Carol links her laptop.
    let world = {
        let mut devices = world.devices;
        devices.push(device("carol", 2, 7));
        World { devices }
    };
    let (a1, a2) = (world.get("alice", 1), world.get("alice", 2));
    let (b1, b2, b3) = (world.get("bob", 1), world.get("bob", 2), world.get("bob", 3));
    let (c1, c2) = (world.get("carol", 1), world.get("carol", 2));
    let carols = link(c1, c2, &carol);
    // A ghost the server slips in under Carol's user id is refused: no list
    // names it.
    let ghost = device("carol", 9, 9);
    assert!(matches!(
        a1.start_session(&ghost.prekey_bundle().unwrap()),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 9 }))
    ));
    // The new device's bundle carries the newer list Carol signed: taken.
    a1.start_session(&c2.prekey_bundle().unwrap()).unwrap();
    assert_eq!(a1.user_trust("carol").unwrap().unwrap().list().version(), 2);
    world.share(&[&carols]);
    world.connect_all();
    // Carol's laptop was given the pins of Carol's phone: it checks Alice and Bob against their lists.
    assert!(c2.user_trust("alice").unwrap().is_some() && c2.user_trust("bob").unwrap().is_some());
    // The group takes the new device in: every app adds it; it makes the group.
    for d in [a1, a2, b1, b2, b3, c1] {
        d.add_group_members(G, &[c2.address().clone()]).unwrap();
    }
    let c2_others: Vec<_> = [a1, a2, b1, b2, b3, c1].iter().map(|d| d.address().clone()).collect();
    c2.create_group(G, &c2_others).unwrap();
    let everyone: Vec<&Device<MemoryBackend>> = world.devices.iter().collect();
    let others = |me: &Device<MemoryBackend>| {
        everyone.iter().copied().filter(|d| d.address() != me.address()).collect::<Vec<_>>()
    };
    assert_eq!(world.group_send(b1, &others(b1), b"welcome, carol's laptop"), 6);
    assert_eq!(world.group_send(c2, &others(c2), b"thanks"), 6);
    // Fan-out to Carol now reaches both of her devices.
    let to_carol = a2.encrypt_to_user("carol", b"see you").unwrap();
    assert_eq!(to_carol.messages.len(), 2);
    assert!(world.deliver(a2, &to_carol.messages).iter().all(|(_, g)| *g == Got::App(b"see you".to_vec())));

    // Bob removes his third device (lost): a newer list without it, which
    // every device takes; every app removes it from the group (a rotation).
    let without = list(&bob, "bob", 5, &[b1, b2]);
    b1.set_device_list(&without).unwrap();
    for d in [a1, a2, b2, c1, c2] {
        let change = d.update_device_list(&without).unwrap();
        assert_eq!(change.removed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![3]);
    }
    for d in [a1, a2, b1, b2, c1, c2] {
        d.remove_group_members(G, &[b3.address().clone()]).unwrap();
    }
    // One to one: nothing is made for the removed device any more, and
    // what it sends is refused.
    let after = c1.encrypt_to_user("bob", b"is the lost phone gone?").unwrap();
    assert_eq!(after.messages.iter().map(|o| o.to.device_id()).collect::<Vec<_>>(), vec![1, 2]);
    let from_b3 = b3.encrypt(a1.address(), b"it's me, bob's phone").unwrap();
    assert!(matches!(
        a1.decrypt(b3.address(), &from_b3),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 3 }))
    ));
    // The group: the remaining six read Alice's next message; the removed
    // device reads nothing of it (Alice's new chain never reached it, and
    // its request gets no answer).
    let remaining: Vec<&Device<MemoryBackend>> = [a2, b1, b2, c1, c2].into_iter().collect();
    let sent = a1.group_encrypt(G, b"after the removal").unwrap();
    assert!(sent.distributions.iter().all(|d| d.to != *b3.address()), "no chain for the removed device");
    for d in &sent.distributions {
        let _ = receive_kind(world.of(&d.to), a1, &d.message).unwrap();
    }
    for m in &remaining {
        assert_eq!(receive_kind(m, a1, &sent.message).unwrap(), Got::Group(b"after the removal".to_vec()));
    }
    match receive_kind(b3, a1, &sent.message) {
        Err(DeviceError::Group(GroupError::MissingChain { request, .. })) => {
            if let Some(request) = request {
                // Alice's device takes the request from a device no list names: refused.
                assert!(a1.decrypt(b3.address(), &request).is_err());
            }
        }
        other => panic!("the removed device read the group: {other:?}"),
    }
}

/// A device that its user's newest list no longer names is refused in the
/// groups too, even while an app has not removed it from a group yet: its
/// group messages are `UnlistedDevice`, and nothing changes.
#[test]
fn a_device_the_list_no_longer_names_is_refused_in_groups() {
    let (alice, bob) = (user_key(0xA0), user_key(0xB0));
    let world = World { devices: vec![device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3)] };
    let (a1, b1, b2) = (world.get("alice", 1), world.get("bob", 1), world.get("bob", 2));
    a1.set_device_list(&list(&alice, "alice", 1, &[a1])).unwrap();
    let bobs = list(&bob, "bob", 1, &[b1, b2]);
    b1.set_device_list(&bobs).unwrap();
    b2.set_device_list(&bobs).unwrap();
    world.connect_all();
    world.share(&[&bobs, &a1.device_list().unwrap().unwrap()]);
    for d in &world.devices {
        let others: Vec<_> =
            world.devices.iter().filter(|o| o.address() != d.address()).map(|o| o.address().clone()).collect();
        d.create_group(G, &others).unwrap();
    }
    assert_eq!(world.group_send(b2, &[a1, b1], b"before"), 2);
    // Bob drops device 2 from his list; Alice's app has not removed it from the group.
    let without = list(&bob, "bob", 2, &[b1]);
    a1.update_device_list(&without).unwrap();
    let sent = b2.group_encrypt(G, b"after").unwrap();
    assert!(sent.distributions.is_empty());
    let before = a1.backend().snapshot();
    assert!(matches!(
        receive_kind(a1, b2, &sent.message),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 2 }))
    ));
    assert_eq!(a1.backend().snapshot(), before, "a refused group message changes nothing");
    // Bob's listed device is still read.
    assert_eq!(world.group_send(b1, &[a1], b"still here"), 1);
}
