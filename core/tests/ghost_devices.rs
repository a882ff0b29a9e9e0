//! Bundles carry the signed device list, and the Device API refuses ghost
//! devices (issue 17; PROTOCOL.md 7.2 check 21, 23.5): a device key that no
//! verified list of its pinned user names is refused by every call, and the
//! refusal changes nothing in the store (each test compares every row before
//! and after). A legit second device is accepted once a newer list names it;
//! the pin survives reopening and a backup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::time::UNIX_EPOCH;

use prost::Message as _;
use samizdat::{
    DecodeError, ErrorKind, SessionError,
    address::Address,
    device::{BackupParams, Device, DeviceError},
    keys::IdentityKeyPair,
    prekeys::{BundleError, PreKeyBundle},
    store::{Backend, Expected, MemoryBackend, StorageKey, StoreError, Table, Write},
    user::{DeviceList, DeviceListError, MAX_DEVICE_LIST_LEN, SignedDeviceList, UserIdentityKeyPair},
};
use samizdat_proto::wire;
use support::{
    receive,
    users::{device, list, refusal, rows, user_key},
};

/// `bundle` with `list` in place of the list it carries (what a server can
/// do: the bundle's signature does not cover it).
fn carrying(bundle: &[u8], list: Option<&SignedDeviceList>) -> Vec<u8> {
    let bundle = PreKeyBundle::from_bytes(bundle).unwrap();
    match list {
        Some(list) => bundle.with_device_list(list).unwrap().to_bytes(),
        None => bundle.without_device_list().to_bytes(),
    }
}

/// Field 8 of an encoded bundle set to `bytes`, bypassing every check.
fn with_raw_list(bundle: &[u8], bytes: Vec<u8>) -> Vec<u8> {
    let mut message = wire::PreKeyBundle::decode(&bundle[1..]).unwrap();
    message.device_list = bytes;
    [vec![bundle[0]], message.encode_to_vec()].concat()
}

/// Bob (devices 1 and 2) with his user identity, and Alice who talks to him.
struct Setup {
    alice: Device<MemoryBackend>,
    bob1: Device<MemoryBackend>,
    bob2: Device<MemoryBackend>,
    bob_user: UserIdentityKeyPair,
}

/// Bob's device 1 holds list version 1 naming itself alone; Alice has
/// started a session from its bundle, which pinned Bob's user.
fn pinned() -> Setup {
    let (alice, bob1, bob2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    let bob_user = user_key(0xB0);
    bob1.set_device_list(&list(&bob_user, "bob", 1, &[&bob1])).unwrap();
    alice.start_session(&bob1.prekey_bundle().unwrap()).unwrap();
    Setup { alice, bob1, bob2, bob_user }
}

#[test]
fn a_device_list_travels_in_its_bundles_and_pins_the_user_on_first_use() {
    let (alice, bob) = (device("alice", 1, 1), device("bob", 1, 2));
    // Without a list: field 8 absent, the bundle as before.
    let plain = bob.prekey_bundle().unwrap();
    assert!(PreKeyBundle::from_bytes(&plain).unwrap().device_list().is_none());
    assert_eq!(bob.device_list().unwrap(), None);
    let bob_user = user_key(0xB0);
    let signed = list(&bob_user, "bob", 1, &[&bob]);
    let change = bob.set_device_list(&signed).unwrap();
    assert_eq!(change.added, vec![(1, bob.identity_key())]);
    assert_eq!(bob.device_list().unwrap(), Some(signed.clone()));
    for bundle in bob.prekey_bundles(3).unwrap() {
        assert_eq!(PreKeyBundle::from_bytes(&bundle).unwrap().device_list(), Some(&signed));
    }
    // The same bundle without the list is the same bytes but field 8.
    let bundle = bob.prekey_bundle().unwrap();
    let stripped = carrying(&bundle, None);
    assert!(stripped.len() < bundle.len());
    assert_eq!(with_raw_list(&stripped, signed.to_bytes()), bundle);

    assert_eq!(alice.user_trust("bob").unwrap(), None);
    alice.start_session(&bundle).unwrap();
    let trust = alice.user_trust("bob").unwrap().unwrap();
    assert_eq!(*trust.user_identity_key(), bob_user.public_key());
    assert_eq!(trust.signed_list(), &signed);
    let wire = alice.encrypt(bob.address(), b"hello").unwrap();
    assert_eq!(receive(&bob, alice.address(), &wire).unwrap(), b"hello");
}

#[test]
fn a_ghost_device_is_refused_and_nothing_changes() {
    let Setup { alice, bob1, bob_user, .. } = pinned();
    let genuine = list(&bob_user, "bob", 1, &[&bob1]);
    let ghost = device("bob", 3, 9);
    let impostor = device("bob", 1, 8); // Bob's device id, another key
    let mallory = user_key(0x66);
    let before = rows(&alice);
    let cases: Vec<(&str, Vec<u8>, DeviceListError)> = vec![
        ("no list", ghost.prekey_bundle().unwrap(), DeviceListError::UnlistedDevice { device_id: 3 }),
        (
            "the genuine list attached by the server",
            carrying(&ghost.prekey_bundle().unwrap(), Some(&genuine)),
            DeviceListError::UnlistedDevice { device_id: 3 },
        ),
        (
            "device 1 under another key",
            carrying(&impostor.prekey_bundle().unwrap(), Some(&genuine)),
            DeviceListError::UnlistedDevice { device_id: 1 },
        ),
        (
            "a list of another user key naming the ghost",
            carrying(&ghost.prekey_bundle().unwrap(), Some(&list(&mallory, "bob", 7, &[&bob1, &ghost]))),
            DeviceListError::UntrustedUser { offered: mallory.public_key() },
        ),
    ];
    for (what, bundle, expected) in cases {
        let error = refusal(alice.start_session(&bundle));
        assert_eq!(error, expected, "{what}");
        assert_eq!(DeviceError::from(error).kind(), ErrorKind::UntrustedIdentity, "{what}");
        assert_eq!(rows(&alice), before, "{what}: the store changed");
        assert!(!alice.has_session(ghost.address()).unwrap());
    }
    // Nothing was pinned or replaced: the genuine device still works.
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().signed_list(), &genuine);
    let wire = alice.encrypt(bob1.address(), b"still here").unwrap();
    assert_eq!(receive(&bob1, alice.address(), &wire).unwrap(), b"still here");
}

#[test]
fn a_stripped_list_lets_no_ghost_in_and_the_listed_device_still_starts() {
    let Setup { alice, bob1, .. } = pinned();
    let ghost = device("bob", 3, 9);
    let before = rows(&alice);
    let error = refusal(alice.start_session(&carrying(&ghost.prekey_bundle().unwrap(), None)));
    assert_eq!(error, DeviceListError::UnlistedDevice { device_id: 3 });
    assert_eq!(rows(&alice), before);
    // Bob's own bundle without its list: checked against the pinned list.
    alice.start_session(&carrying(&bob1.prekey_bundle().unwrap(), None)).unwrap();
}

#[test]
fn a_rolled_back_list_changes_no_pin_and_an_equivocating_one_is_refused() {
    let Setup { alice, bob1, bob2, bob_user } = pinned();
    let v2 = list(&bob_user, "bob", 2, &[&bob1, &bob2]);
    alice.update_device_list(&v2).unwrap();
    let before = rows(&alice);
    // An older list in a bundle is taken as no list (PROTOCOL.md 23.5 S2):
    // the pinned version 2 decides, so a ghost the old list names stays out.
    let ghost = device("bob", 3, 9);
    let old_with_ghost = carrying(&ghost.prekey_bundle().unwrap(), Some(&list(&bob_user, "bob", 1, &[&bob1, &ghost])));
    assert_eq!(refusal(alice.start_session(&old_with_ghost)), DeviceListError::UnlistedDevice { device_id: 3 });
    let other = carrying(&bob1.prekey_bundle().unwrap(), Some(&list(&bob_user, "bob", 2, &[&bob1])));
    assert_eq!(refusal(alice.start_session(&other)), DeviceListError::Equivocation { version: 2 });
    assert_eq!(rows(&alice), before);
    // The app's call refuses the rollback.
    let error = refusal(alice.update_device_list(&list(&bob_user, "bob", 1, &[&bob1])));
    assert_eq!(error, DeviceListError::Rollback { seen: 2, offered: 1 });
    assert_eq!(DeviceError::from(error).kind(), ErrorKind::InvalidBundle);
    assert_eq!(rows(&alice), before);
    // The same list again changes nothing and writes nothing.
    assert!(alice.update_device_list(&v2).unwrap().is_empty());
    assert_eq!(rows(&alice), before);
    // A listed device's bundle uploaded under version 1 still starts a
    // session, and the pin stays at version 2.
    let old = carrying(&bob1.prekey_bundle().unwrap(), Some(&list(&bob_user, "bob", 1, &[&bob1])));
    alice.start_session(&old).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
}

#[test]
fn a_prekey_message_from_an_unlisted_device_is_refused_and_nothing_is_consumed() {
    // Bob pins Alice's user (list: device 1). A ghost "alice" device 2,
    // which the server gave Bob's bundle, starts a session with Bob.
    let (alice, bob) = (device("alice", 1, 1), device("bob", 1, 2));
    let alice_user = user_key(0xA0);
    alice.set_device_list(&list(&alice_user, "alice", 1, &[&alice])).unwrap();
    bob.update_device_list(&alice.device_list().unwrap().unwrap()).unwrap();
    bob.refill_prekeys(5, 5, UNIX_EPOCH).unwrap();
    let ghost = device("alice", 2, 9);
    ghost.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wire = ghost.encrypt(bob.address(), b"let me in").unwrap();
    let before = rows(&bob);
    let counts = bob.prekey_counts().unwrap();
    let error = refusal(bob.decrypt(ghost.address(), &wire));
    assert_eq!(error, DeviceListError::UnlistedDevice { device_id: 2 });
    // In a batch: the message's own result, and nothing to commit.
    let batch = bob.decrypt_batch(&[(ghost.address().clone(), wire.clone())]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::UnlistedDevice { device_id: 2 })));
    assert_eq!(batch.results()[0].as_ref().unwrap_err().kind(), ErrorKind::UntrustedIdentity);
    bob.commit_batch(batch).unwrap();
    assert_eq!(rows(&bob), before, "no prekey consumed, no record written");
    assert_eq!(bob.prekey_counts().unwrap(), counts);
    // Even a ghost that claims Alice's own device id, with its own key.
    let claimer = device("alice", 1, 8);
    claimer.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wire = claimer.encrypt(bob.address(), b"it is me").unwrap();
    let before = rows(&bob);
    assert_eq!(refusal(bob.decrypt(claimer.address(), &wire)), DeviceListError::UnlistedDevice { device_id: 1 });
    assert_eq!(rows(&bob), before);
    // Alice's listed device gets through.
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob.address(), b"hi bob").unwrap();
    assert_eq!(receive(&bob, alice.address(), &wire).unwrap(), b"hi bob");
}

#[test]
fn a_second_device_is_accepted_once_a_newer_list_names_it() {
    let Setup { alice, bob1, bob2, bob_user } = pinned();
    // Bob links device 2, but Alice has only seen version 1.
    let before = rows(&alice);
    let unlisted = carrying(&bob2.prekey_bundle().unwrap(), None);
    assert_eq!(refusal(alice.start_session(&unlisted)), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(rows(&alice), before);
    // Bob's devices publish version 2; device 2's bundle carries it.
    let v2 = list(&bob_user, "bob", 2, &[&bob1, &bob2]);
    bob1.set_device_list(&v2).unwrap();
    bob2.set_device_list(&v2).unwrap();
    alice.start_session(&bob2.prekey_bundle().unwrap()).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
    for bob in [&bob1, &bob2] {
        let wire = alice.encrypt(bob.address(), b"to every device").unwrap();
        assert_eq!(receive(bob, alice.address(), &wire).unwrap(), b"to every device");
        let back = bob.encrypt(alice.address(), b"back").unwrap();
        assert_eq!(receive(&alice, bob.address(), &back).unwrap(), b"back");
    }
    // Bob's two devices talk to each other: our own list pins our own user.
    bob1.start_session(&bob2.prekey_bundle().unwrap()).unwrap();
    let wire = bob1.encrypt(bob2.address(), b"sibling").unwrap();
    assert_eq!(receive(&bob2, bob1.address(), &wire).unwrap(), b"sibling");
    let own_ghost = device("bob", 3, 9);
    assert_eq!(
        refusal(bob1.start_session(&own_ghost.prekey_bundle().unwrap())),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
}

#[test]
fn a_removed_device_gets_nothing_and_is_read_no_more() {
    let Setup { alice, bob1, bob2, bob_user } = pinned();
    let v2 = list(&bob_user, "bob", 2, &[&bob1, &bob2]);
    alice.update_device_list(&v2).unwrap();
    alice.start_session(&bob2.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob2.address(), b"before").unwrap();
    assert_eq!(receive(&bob2, alice.address(), &wire).unwrap(), b"before");
    let late = bob2.encrypt(alice.address(), b"in flight").unwrap();
    // Version 3 removes device 2.
    let change = alice.update_device_list(&list(&bob_user, "bob", 3, &[&bob1])).unwrap();
    assert_eq!((change.added, change.removed), (vec![], vec![(2, bob2.identity_key())]));
    let before = rows(&alice);
    assert_eq!(refusal(alice.encrypt(bob2.address(), b"after")), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(refusal(alice.decrypt(bob2.address(), &late)), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(
        refusal(alice.start_session(&carrying(&bob2.prekey_bundle().unwrap(), None))),
        DeviceListError::UnlistedDevice { device_id: 2 }
    );
    assert_eq!(rows(&alice), before);
    // Its session rows are kept (the app may delete them), and device 1
    // works as before.
    assert!(alice.has_session(bob2.address()).unwrap());
    let wire = alice.encrypt(bob1.address(), b"still listed").unwrap();
    assert_eq!(receive(&bob1, alice.address(), &wire).unwrap(), b"still listed");
}

#[test]
fn heal_and_encrypt_kept_refuse_unlisted_devices_and_heal_applies_the_bundles_list() {
    let Setup { alice, bob1, bob2, bob_user } = pinned();
    alice.update_device_list(&list(&bob_user, "bob", 2, &[&bob1, &bob2])).unwrap();
    alice.start_session(&bob2.prekey_bundle().unwrap()).unwrap();
    alice.update_device_list(&list(&bob_user, "bob", 3, &[&bob1])).unwrap();
    let ghost = device("bob", 3, 9);
    let now = UNIX_EPOCH + std::time::Duration::from_secs(1_000);
    let before = rows(&alice);
    assert_eq!(
        refusal(alice.encrypt_kept(bob2.address(), b"kept", now)),
        DeviceListError::UnlistedDevice { device_id: 2 }
    );
    assert_eq!(
        refusal(alice.heal(&bob2.prekey_bundle().unwrap(), &[], now)),
        DeviceListError::UnlistedDevice { device_id: 2 }
    );
    let genuine = list(&bob_user, "bob", 3, &[&bob1]);
    assert_eq!(
        refusal(alice.heal(&carrying(&ghost.prekey_bundle().unwrap(), Some(&genuine)), &[], now)),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
    assert_eq!(rows(&alice), before, "a refusal changed the store");
    assert!(!alice.has_session(ghost.address()).unwrap());

    // The listed device heals; the newer list its bundle carries is pinned
    // with the reset, in the same transaction.
    let v4 = list(&bob_user, "bob", 4, &[&bob1]);
    bob1.set_device_list(&v4).unwrap();
    let kept = alice.encrypt_kept(bob1.address(), b"kept", now).unwrap();
    assert_eq!(receive(&bob1, alice.address(), &kept).unwrap(), b"kept");
    assert!(matches!(alice.heal(&bob1.prekey_bundle().unwrap(), &[], now).unwrap(), samizdat::device::Heal::Sent(_)));
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().signed_list(), &v4);
}

#[test]
fn a_new_user_identity_waits_for_the_apps_decision() {
    let Setup { alice, bob1, .. } = pinned();
    // Bob reinstalls without his user key: a new one, version 1 again.
    let reinstalled = user_key(0xB1);
    let fresh = list(&reinstalled, "bob", 1, &[&bob1]);
    let bundle = carrying(&bob1.prekey_bundle().unwrap(), Some(&fresh));
    let before = rows(&alice);
    let error = refusal(alice.start_session(&bundle));
    assert_eq!(error, DeviceListError::UntrustedUser { offered: reinstalled.public_key() });
    assert_eq!(DeviceError::from(error).kind(), ErrorKind::UntrustedIdentity);
    assert_eq!(
        refusal(alice.update_device_list(&fresh)),
        DeviceListError::UntrustedUser { offered: reinstalled.public_key() }
    );
    assert_eq!(rows(&alice), before);
    // The users compared safety numbers: Alice trusts the new identity.
    alice.trust_new_user_identity(&fresh).unwrap();
    assert_eq!(*alice.user_trust("bob").unwrap().unwrap().user_identity_key(), reinstalled.public_key());
    alice.start_session(&bundle).unwrap();
}

#[test]
fn a_bundles_list_is_parsed_with_typed_errors_and_bounds() {
    let (bob, other) = (device("bob", 1, 2), device("carol", 1, 3));
    let bundle = bob.prekey_bundle().unwrap();
    let bob_user = user_key(0xB0);
    let bad = |bytes: Vec<u8>| match PreKeyBundle::from_bytes(&with_raw_list(&bundle, bytes)) {
        Err(BundleError::DeviceList(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(bad(vec![0xff; 10]), DeviceListError::Malformed(DecodeError::Protobuf));
    assert_eq!(
        bad(vec![0; MAX_DEVICE_LIST_LEN + 1]),
        DeviceListError::Malformed(DecodeError::TooLarge { len: MAX_DEVICE_LIST_LEN + 1, max: MAX_DEVICE_LIST_LEN })
    );
    let mut forged = wire::SignedDeviceList::decode(list(&bob_user, "bob", 1, &[&bob]).to_bytes().as_slice()).unwrap();
    forged.signature[0] ^= 1;
    assert_eq!(bad(forged.encode_to_vec()), DeviceListError::BadSignature);
    assert_eq!(
        bad(list(&bob_user, "carol", 1, &[&other]).to_bytes()),
        DeviceListError::WrongUser { expected: "bob".into(), found: "carol".into() }
    );
    // Every such bundle is invalid_bundle, refused before anything is read.
    let alice = device("alice", 1, 1);
    let before = rows(&alice);
    let result = alice.start_session(&with_raw_list(&bundle, vec![0xff; 10]));
    assert!(matches!(&result, Err(DeviceError::Session(SessionError::Bundle(BundleError::DeviceList(_))))));
    assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidBundle);
    assert_eq!(rows(&alice), before);
    // A bundle with the largest list a user can have is within the bound.
    let many: Vec<_> = (0..32u8)
        .map(|i| (u32::MAX - 31 + u32::from(i), IdentityKeyPair::from_seed(&[i + 1; 32]).public_key()))
        .collect();
    let long_user = "b".repeat(256);
    let largest =
        DeviceList::new(long_user.as_str(), u64::MAX, &bob_user.public_key(), many).unwrap().sign(&bob_user).unwrap();
    let long = device(&long_user, u32::MAX, 4);
    let bundle = PreKeyBundle::from_bytes(&long.prekey_bundle().unwrap()).unwrap().with_device_list(&largest).unwrap();
    let bytes = bundle.to_bytes();
    assert!(bytes.len() <= samizdat::prekeys::MAX_BUNDLE_LEN, "{}", bytes.len());
    assert_eq!(PreKeyBundle::from_bytes(&bytes).unwrap(), bundle);
}

#[test]
fn our_own_list_must_name_us_and_never_goes_back() {
    let (bob1, bob2) = (device("bob", 1, 2), device("bob", 2, 3));
    let bob_user = user_key(0xB0);
    let before = rows(&bob1);
    assert!(matches!(bob1.set_device_list(&list(&bob_user, "bob", 1, &[&bob2])), Err(DeviceError::NotInOwnList)));
    assert_eq!(
        refusal(bob1.set_device_list(&list(&bob_user, "alice", 1, &[&bob1]))),
        DeviceListError::WrongUser { expected: "bob".into(), found: "alice".into() }
    );
    assert_eq!(rows(&bob1), before);
    bob1.set_device_list(&list(&bob_user, "bob", 2, &[&bob1, &bob2])).unwrap();
    let before = rows(&bob1);
    assert_eq!(
        refusal(bob1.set_device_list(&list(&bob_user, "bob", 1, &[&bob1]))),
        DeviceListError::Rollback { seen: 2, offered: 1 }
    );
    assert_eq!(
        refusal(bob1.set_device_list(&list(&bob_user, "bob", 2, &[&bob1]))),
        DeviceListError::Equivocation { version: 2 }
    );
    // A newer list that drops this device: refused.
    assert!(matches!(bob1.set_device_list(&list(&bob_user, "bob", 3, &[&bob2])), Err(DeviceError::NotInOwnList)));
    assert_eq!(rows(&bob1), before);
    // A new user identity for our own user is the app's to set.
    let change = bob1.set_device_list(&list(&user_key(0xB1), "bob", 1, &[&bob1])).unwrap();
    assert_eq!(change.removed, vec![(2, bob2.identity_key())]);
}

#[test]
fn the_pin_survives_reopening_the_store_and_a_backup() {
    let dir = support::temp_dir("ghost-reopen");
    let key = StorageKey::from_bytes([1; 32]);
    let bob = device("bob", 1, 2);
    let bob_user = user_key(0xB0);
    let signed = list(&bob_user, "bob", 1, &[&bob]);
    bob.set_device_list(&signed).unwrap();
    let ghost = device("bob", 3, 9);
    {
        let alice = Device::create(dir.join("alice.db"), &key, Address::new("alice", 1).unwrap(), UNIX_EPOCH).unwrap();
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    }
    let alice = Device::open(dir.join("alice.db"), &key).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().signed_list(), &signed);
    assert_eq!(
        refusal(alice.start_session(&ghost.prekey_bundle().unwrap())),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
    // A backup carries the pins, and the own list.
    let alice_user = user_key(0xA0);
    let own = DeviceList::new("alice", 1, &alice_user.public_key(), [(1, alice.identity_key())])
        .unwrap()
        .sign(&alice_user)
        .unwrap();
    alice.set_device_list(&own).unwrap();
    let file = alice.export_backup(b"passphrase", BackupParams::MINIMUM, UNIX_EPOCH).unwrap();
    let restored =
        Device::restore_in(MemoryBackend::new(), &StorageKey::from_bytes([7; 32]), &file, b"passphrase", UNIX_EPOCH)
            .unwrap();
    assert_eq!(restored.user_trust("bob").unwrap().unwrap().signed_list(), &signed);
    assert_eq!(restored.device_list().unwrap(), Some(own.clone()));
    assert_eq!(PreKeyBundle::from_bytes(&restored.prekey_bundle().unwrap()).unwrap().device_list(), Some(&own));
    let before = rows(&restored);
    assert_eq!(
        refusal(restored.start_session(&ghost.prekey_bundle().unwrap())),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
    assert_eq!(rows(&restored), before);
    restored.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    drop(alice);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_users_row_is_corrupt_never_a_panic() {
    let Setup { alice, bob1, bob_user, .. } = pinned();
    let users = alice.backend().scan(Table::Users).unwrap();
    assert_eq!(users.len(), 1);
    let (key, sealed) = users[0].clone();
    let put = |value: Vec<u8>| {
        alice
            .backend()
            .apply(&[Write { table: Table::Users, key: key.clone(), value: Some(value), expected: Expected::Any }])
            .unwrap();
    };
    let corrupt = |result: Result<(), DeviceError>| {
        assert!(matches!(result, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Users }))), "{result:?}");
    };
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    for damaged in [flipped, sealed[..10].to_vec(), Vec::new()] {
        put(damaged);
        corrupt(alice.user_trust("bob").map(drop));
        corrupt(alice.start_session(&bob1.prekey_bundle().unwrap()).map(drop));
        corrupt(alice.encrypt(bob1.address(), b"x").map(drop));
        corrupt(alice.export_backup(b"p", BackupParams::MINIMUM, UNIX_EPOCH).map(drop));
    }
    // A row moved under another user's key does not open there (the key is
    // in the associated data), and our own row is checked to name us.
    put(sealed.clone());
    alice.user_trust("bob").unwrap().unwrap();
    let carol = device("carol", 1, 5);
    let carol_user = user_key(0xC0);
    carol.set_device_list(&list(&carol_user, "carol", 1, &[&carol])).unwrap();
    alice.start_session(&carol.prekey_bundle().unwrap()).unwrap();
    let rows = alice.backend().scan(Table::Users).unwrap();
    let carol_row = rows.iter().find(|(k, _)| *k != key).unwrap().1.clone();
    put(carol_row);
    corrupt(alice.user_trust("bob").map(drop));
    let _ = bob_user;
}

/// A memory store whose writes fail while `fail` is set: a crash (or a full
/// disk) at the write point of a call.
struct Failing {
    store: std::sync::Arc<MemoryBackend>,
    fail: std::sync::atomic::AtomicBool,
}

impl Backend for Failing {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<samizdat::store::Row>, StoreError> {
        self.store.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::other("the write point failed")));
        }
        self.store.apply(writes)
    }
}

/// The pin and the session are one write: a failure at that point leaves
/// neither (no pin without its session, no session checked against a pin
/// that was never stored), and the call succeeds when tried again.
#[test]
fn a_failed_write_leaves_neither_the_pin_nor_the_session() {
    let store = std::sync::Arc::new(MemoryBackend::new());
    let backend = Failing { store: store.clone(), fail: false.into() };
    let alice =
        Device::create_in(backend, &StorageKey::from_bytes([1; 32]), Address::new("alice", 1).unwrap(), UNIX_EPOCH)
            .unwrap();
    let bob = device("bob", 1, 2);
    bob.set_device_list(&list(&user_key(0xB0), "bob", 1, &[&bob])).unwrap();
    let bundle = bob.prekey_bundle().unwrap();
    let before = store.snapshot();
    alice.backend().fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(alice.start_session(&bundle), Err(DeviceError::Store(StoreError::Io(_)))));
    assert!(matches!(alice.update_device_list(&bob.device_list().unwrap().unwrap()), Err(DeviceError::Store(_))));
    assert_eq!(store.snapshot(), before);
    alice.backend().fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(alice.user_trust("bob").unwrap(), None);
    alice.start_session(&bundle).unwrap();
    assert!(alice.user_trust("bob").unwrap().is_some() && alice.has_session(bob.address()).unwrap());
}

/// Storage-key rotation re-seals the users rows with the rest: the pin and
/// the own list open under the new key, and the old key opens nothing.
#[test]
fn the_users_rows_follow_a_storage_key_rotation() {
    let Setup { alice, bob1, .. } = pinned();
    let alice_user = user_key(0xA0);
    let own = DeviceList::new("alice", 1, &alice_user.public_key(), [(1, alice.identity_key())])
        .unwrap()
        .sign(&alice_user)
        .unwrap();
    alice.set_device_list(&own).unwrap();
    let store = support::copy_of(alice.backend());
    let (old, new) = (StorageKey::from_bytes([1; 32]), StorageKey::from_bytes([0x55; 32]));
    Device::rotate_storage_key_in(&store, &old, &new).unwrap();
    assert!(Device::open_in(support::copy_of(&store), &old).is_err());
    let rotated = Device::open_in(store, &new).unwrap();
    assert_eq!(rotated.device_list().unwrap(), Some(own));
    assert_eq!(rotated.user_trust("bob").unwrap(), alice.user_trust("bob").unwrap());
    let ghost = device("bob", 3, 9);
    assert_eq!(
        refusal(rotated.start_session(&ghost.prekey_bundle().unwrap())),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
    rotated.start_session(&bob1.prekey_bundle().unwrap()).unwrap();
}
