//! User identities and signed device lists (issue 17, items 1 and 2;
//! PROTOCOL.md 23): the format's rules, the pin, rollbacks, ghost devices,
//! and per-user safety numbers. Every refusal is checked to leave the
//! `UserTrust` as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use ed25519_dalek::{Signer, SigningKey};
use prost::Message as _;
use samizdat::{
    DecodeError, ErrorKind,
    fingerprint::SafetyNumber,
    keys::{IdentityKey, IdentityKeyPair},
    user::{
        DeviceList, DeviceListError, ListChange, MAX_DEVICE_LIST_LEN, MAX_DEVICES_PER_USER, SignedDeviceList,
        UserIdentityKeyPair, UserTrust,
    },
};
use samizdat_proto::wire;

const LABEL: &[u8] = b"samizdat/v1/device-list";

fn device(seed: u8) -> IdentityKey {
    IdentityKeyPair::from_seed(&[seed; 32]).public_key()
}

fn user(seed: u8) -> UserIdentityKeyPair {
    UserIdentityKeyPair::from_seed(&[seed; 32])
}

fn list(user_key: &UserIdentityKeyPair, version: u64, devices: &[(u32, u8)]) -> SignedDeviceList {
    DeviceList::new("alice", version, &user_key.public_key(), devices.iter().map(|(id, seed)| (*id, device(*seed))))
        .unwrap()
        .sign(user_key)
        .unwrap()
}

/// Signs arbitrary list bytes with `user` (what a user key, or a thief of
/// it, can sign), the way PROTOCOL.md 23.2 says.
fn signed_bytes(user: &UserIdentityKeyPair, list: &[u8]) -> Vec<u8> {
    let signature = SigningKey::from_bytes(&user.to_seed()).sign(&[LABEL, list].concat());
    wire::SignedDeviceList { list: list.to_vec(), signature: signature.to_bytes().to_vec() }.encode_to_vec()
}

fn proto(user: &UserIdentityKeyPair, version: u64, devices: &[(u32, u8)]) -> wire::DeviceList {
    wire::DeviceList {
        user_id: "alice".into(),
        version,
        user_identity_key: user.public_key().as_bytes().to_vec(),
        devices: devices
            .iter()
            .map(|(id, seed)| wire::DeviceEntry { device_id: *id, identity_key: device(*seed).as_bytes().to_vec() })
            .collect(),
    }
}

/// Parses and verifies `bytes` as a signed list.
fn verify(bytes: &[u8]) -> Result<DeviceList, DeviceListError> {
    SignedDeviceList::from_bytes(bytes)?.verify()
}

#[test]
fn a_list_round_trips_and_verifies() {
    let alice = user(1);
    let signed = list(&alice, 3, &[(7, 10), (2, 11)]);
    let again = SignedDeviceList::from_bytes(&signed.to_bytes()).unwrap();
    assert_eq!(again, signed);
    let verified = again.verify().unwrap();
    assert_eq!(verified.user_id(), "alice");
    assert_eq!(verified.version(), 3);
    assert_eq!(verified.user_identity_key(), &alice.public_key());
    // In increasing device id order, whatever the order given.
    assert_eq!(verified.devices(), &[(2, device(11)), (7, device(10))]);
    assert_eq!(verified.device(7), Some(&device(10)));
    assert_eq!(verified.device(3), None);
    // The signature is the one PROTOCOL.md 23.2 describes, over the label
    // and the list's canonical bytes.
    let by_hand = signed_bytes(&alice, &proto(&alice, 3, &[(2, 11), (7, 10)]).encode_to_vec());
    assert_eq!(signed.to_bytes(), by_hand);
}

#[test]
fn a_ghost_device_is_refused() {
    let alice = user(1);
    let trust = UserTrust::first_use("alice", &list(&alice, 1, &[(1, 10)])).unwrap();
    assert_eq!(trust.check_device(1, &device(10)), Ok(()));
    // A device id the list does not name, and a listed id with another key
    // (the server's own device under Alice's device id).
    assert_eq!(trust.check_device(2, &device(11)), Err(DeviceListError::UnlistedDevice { device_id: 2 }));
    assert_eq!(trust.check_device(1, &device(11)), Err(DeviceListError::UnlistedDevice { device_id: 1 }));
    assert_eq!(DeviceListError::UnlistedDevice { device_id: 2 }.kind(), ErrorKind::UntrustedIdentity);
}

#[test]
fn a_newer_list_adds_and_removes_devices() {
    let alice = user(1);
    let mut trust = UserTrust::first_use("alice", &list(&alice, 1, &[(1, 10), (2, 11)])).unwrap();
    // Device 2 reinstalled (a new key), device 1 removed, device 3 linked.
    let change = trust.update(&list(&alice, 5, &[(2, 12), (3, 13)])).unwrap();
    assert_eq!(
        change,
        ListChange { added: vec![(2, device(12)), (3, device(13))], removed: vec![(1, device(10)), (2, device(11))] }
    );
    assert_eq!(trust.list().version(), 5);
    assert!(trust.check_device(1, &device(10)).is_err(), "a removed device is refused");
    assert!(trust.check_device(2, &device(11)).is_err(), "the old key of a reinstalled device is refused");
    assert!(trust.check_device(3, &device(13)).is_ok());
    // The same list again changes nothing.
    let before = trust.clone();
    assert!(trust.update(&list(&alice, 5, &[(2, 12), (3, 13)])).unwrap().is_empty());
    assert_eq!(trust, before);
}

/// Every refusal of `update`: the error, its code, and an unchanged trust.
#[test]
fn refused_lists_change_nothing() {
    let alice = user(1);
    let mut trust = UserTrust::first_use("alice", &list(&alice, 4, &[(1, 10), (2, 11)])).unwrap();
    let before = trust.clone();
    let mallory = user(9);
    let mut bad_signature = list(&alice, 5, &[(1, 10), (2, 11), (66, 66)]).to_bytes();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 1;
    let cases: Vec<(SignedDeviceList, DeviceListError, ErrorKind)> = vec![
        // The server replays an older list, to bring back a removed device.
        (
            list(&alice, 3, &[(1, 10), (2, 11), (66, 66)]),
            DeviceListError::Rollback { seen: 4, offered: 3 },
            ErrorKind::InvalidBundle,
        ),
        // Another list under the version held.
        (
            list(&alice, 4, &[(1, 10), (2, 11), (66, 66)]),
            DeviceListError::Equivocation { version: 4 },
            ErrorKind::InvalidBundle,
        ),
        // A list signed by another key, with a ghost, at a higher version.
        (
            DeviceList::new("alice", 99, &mallory.public_key(), [(1, device(10)), (2, device(11)), (66, device(66))])
                .unwrap()
                .sign(&mallory)
                .unwrap(),
            DeviceListError::UntrustedUser { offered: mallory.public_key() },
            ErrorKind::UntrustedIdentity,
        ),
        // Bob's list, by Bob's key, served as Alice's.
        (
            DeviceList::new("bob", 9, &mallory.public_key(), [(1, device(66))]).unwrap().sign(&mallory).unwrap(),
            DeviceListError::WrongUser { expected: "alice".into(), found: "bob".into() },
            ErrorKind::InvalidBundle,
        ),
        (
            SignedDeviceList::from_bytes(&bad_signature).unwrap(),
            DeviceListError::BadSignature,
            ErrorKind::InvalidBundle,
        ),
    ];
    for (signed, error, kind) in cases {
        assert_eq!(trust.update(&signed), Err(error.clone()));
        assert_eq!(error.kind(), kind, "{error}");
        assert_eq!(trust, before, "{error} changed the trust");
        assert!(trust.check_device(66, &device(66)).is_err());
    }
}

#[test]
fn only_the_apps_decision_replaces_the_user_identity() {
    let (alice, new_alice) = (user(1), user(2));
    let mut trust = UserTrust::first_use("alice", &list(&alice, 7, &[(1, 10)])).unwrap();
    // Alice lost every device and starts again: a new user key, version 1.
    let fresh =
        DeviceList::new("alice", 1, &new_alice.public_key(), [(1, device(20))]).unwrap().sign(&new_alice).unwrap();
    assert_eq!(trust.update(&fresh), Err(DeviceListError::UntrustedUser { offered: new_alice.public_key() }));
    // The safety number shows it: it changes with the user identity.
    let bob = user(3).public_key();
    let old_number = SafetyNumber::for_users("bob", &bob, "alice", trust.user_identity_key());
    let change = trust.trust_new_identity(&fresh).unwrap();
    assert_eq!(change, ListChange { added: vec![(1, device(20))], removed: vec![(1, device(10))] });
    assert_eq!(trust.user_identity_key(), &new_alice.public_key());
    assert_ne!(SafetyNumber::for_users("bob", &bob, "alice", trust.user_identity_key()).digits(), old_number.digits());
    // The decision cannot roll the new key's list back.
    let newer = DeviceList::new("alice", 2, &new_alice.public_key(), [(1, device(20)), (2, device(21))])
        .unwrap()
        .sign(&new_alice)
        .unwrap();
    trust.update(&newer).unwrap();
    assert_eq!(trust.trust_new_identity(&fresh), Err(DeviceListError::Rollback { seen: 2, offered: 1 }));
    assert_eq!(trust.list().version(), 2);
    // From then on the old key is the untrusted one.
    assert!(matches!(trust.update(&list(&alice, 8, &[(1, 10)])), Err(DeviceListError::UntrustedUser { .. })));
}

#[test]
fn a_stored_trust_loads_and_verifies_again() {
    let alice = user(1);
    let trust = UserTrust::first_use("alice", &list(&alice, 2, &[(1, 10), (5, 11)])).unwrap();
    assert_eq!(UserTrust::from_bytes("alice", &trust.to_bytes()).unwrap(), trust);
    assert!(matches!(UserTrust::from_bytes("bob", &trust.to_bytes()), Err(DeviceListError::WrongUser { .. })));
    let mut altered = trust.to_bytes();
    altered[10] ^= 1;
    assert!(UserTrust::from_bytes("alice", &altered).is_err());
}

#[test]
fn per_user_safety_numbers_ignore_devices_and_differ_from_device_numbers() {
    let (alice, bob) = (user(1), user(2));
    let number = SafetyNumber::for_users("alice", &alice.public_key(), "bob", &bob.public_key());
    let mut trust = UserTrust::first_use(
        "bob",
        &DeviceList::new("bob", 1, &bob.public_key(), [(1, device(30))]).unwrap().sign(&bob).unwrap(),
    )
    .unwrap();
    trust
        .update(
            &DeviceList::new("bob", 2, &bob.public_key(), [(2, device(31)), (3, device(32))])
                .unwrap()
                .sign(&bob)
                .unwrap(),
        )
        .unwrap();
    // Bob's devices changed; the number computed from what Alice holds did not.
    let after = SafetyNumber::for_users("alice", &alice.public_key(), "bob", trust.user_identity_key());
    assert_eq!(after.digits(), number.digits());
    // Both sides see the same digits, and their codes compare.
    let on_bob = SafetyNumber::for_users("bob", &bob.public_key(), "alice", &alice.public_key());
    assert_eq!(on_bob.digits(), number.digits());
    assert_eq!(number.compare_scanned(&on_bob.scannable()), Ok(()));
    // The same keys as device keys give another number, and the codes of
    // the two kinds never compare equal.
    let as_devices = SafetyNumber::new(
        "alice",
        &IdentityKey::from_bytes(alice.public_key().as_bytes()).unwrap(),
        "bob",
        &IdentityKey::from_bytes(bob.public_key().as_bytes()).unwrap(),
    );
    assert_ne!(as_devices.digits(), number.digits());
    assert!(number.compare_scanned(&as_devices.scannable()).is_err());
}

/// Each rule of PROTOCOL.md 23.2, broken alone in a list the user key
/// signed (so that only the rule can refuse it).
#[test]
fn every_format_rule_is_enforced() {
    let alice = user(1);
    let good = proto(&alice, 1, &[(1, 10), (2, 11)]);
    let with = |edit: &dyn Fn(&mut wire::DeviceList)| {
        let mut p = good.clone();
        edit(&mut p);
        signed_bytes(&alice, &p.encode_to_vec())
    };
    let malformed = |e: DecodeError| Err(DeviceListError::Malformed(e));
    assert!(verify(&with(&|_| {})).is_ok());
    assert_eq!(verify(&with(&|p| p.user_id.clear())), malformed(DecodeError::InvalidValue("user_id")));
    assert_eq!(verify(&with(&|p| p.user_id = "a".repeat(257))), malformed(DecodeError::InvalidValue("user_id")));
    assert!(verify(&with(&|p| p.user_id = "a".repeat(256))).is_ok());
    assert_eq!(verify(&with(&|p| p.version = 0)), malformed(DecodeError::InvalidValue("version")));
    assert_eq!(verify(&with(&|p| p.devices.clear())), malformed(DecodeError::InvalidValue("devices")));
    assert_eq!(verify(&with(&|p| p.devices.swap(0, 1))), malformed(DecodeError::InvalidValue("devices.device_id")));
    assert_eq!(
        verify(&with(&|p| p.devices[1].device_id = 1)),
        malformed(DecodeError::InvalidValue("devices.device_id"))
    );
    assert_eq!(
        verify(&with(&|p| p.devices[1].identity_key = p.devices[0].identity_key.clone())),
        malformed(DecodeError::InvalidValue("devices.identity_key"))
    );
    // A small-order device key, and keys of the wrong length.
    let mut small_order = vec![0u8; 32];
    small_order[0] = 1; // the identity point
    assert_eq!(
        verify(&with(&|p| p.devices[0].identity_key = small_order.clone())),
        malformed(DecodeError::InvalidValue("devices.identity_key"))
    );
    assert_eq!(
        verify(&with(&|p| p.devices[0].identity_key.pop().map(drop).unwrap())),
        malformed(DecodeError::InvalidLength { field: "devices.identity_key", expected: 32, actual: 31 })
    );
    assert_eq!(
        verify(&with(&|p| p.user_identity_key.push(0))),
        malformed(DecodeError::InvalidLength { field: "user_identity_key", expected: 32, actual: 33 })
    );
    // 32 devices pass, 33 do not.
    let many = |n: u8| {
        with(&|p| {
            p.devices = (1..=n)
                .map(|i| wire::DeviceEntry { device_id: u32::from(i), identity_key: device(i).as_bytes().to_vec() })
                .collect()
        })
    };
    assert!(verify(&many(32)).is_ok());
    assert_eq!(verify(&many(33)), malformed(DecodeError::InvalidValue("devices")));
    assert_eq!(MAX_DEVICES_PER_USER, 32);
    // Not canonical: a field repeated (prost would merge it).
    let mut repeated = good.encode_to_vec();
    repeated.extend_from_slice(&wire::DeviceList { version: 1, ..Default::default() }.encode_to_vec());
    assert_eq!(verify(&signed_bytes(&alice, &repeated)), malformed(DecodeError::Protobuf));
    // The outer layer: a short signature, extra bytes, an oversized input.
    let short = wire::SignedDeviceList { list: good.encode_to_vec(), signature: vec![0; 63] }.encode_to_vec();
    assert_eq!(verify(&short), malformed(DecodeError::InvalidLength { field: "signature", expected: 64, actual: 63 }));
    let mut trailing = with(&|_| {});
    trailing.push(0);
    assert_eq!(verify(&trailing), malformed(DecodeError::Protobuf));
    assert_eq!(
        verify(&vec![0; MAX_DEVICE_LIST_LEN + 1]),
        malformed(DecodeError::TooLarge { len: MAX_DEVICE_LIST_LEN + 1, max: MAX_DEVICE_LIST_LEN })
    );
    // A signature over the list without the label does not verify.
    let unlabelled = wire::SignedDeviceList {
        list: good.encode_to_vec(),
        signature: SigningKey::from_bytes(&alice.to_seed()).sign(&good.encode_to_vec()).to_bytes().to_vec(),
    }
    .encode_to_vec();
    assert_eq!(verify(&unlabelled), Err(DeviceListError::BadSignature));
}

#[test]
fn the_largest_list_fits_the_limit() {
    let alice = user(1);
    let mut p = proto(&alice, u64::MAX, &[]);
    p.user_id = "a".repeat(256);
    p.devices = (0..32u32)
        .map(|i| wire::DeviceEntry {
            device_id: u32::MAX - i,
            identity_key: device(u8::try_from(i + 1).unwrap()).as_bytes().to_vec(),
        })
        .rev()
        .collect();
    let bytes = signed_bytes(&alice, &p.encode_to_vec());
    println!("largest signed device list: {} bytes (limit {MAX_DEVICE_LIST_LEN})", bytes.len());
    assert!(bytes.len() <= MAX_DEVICE_LIST_LEN);
    assert!(verify(&bytes).is_ok());
}

#[test]
fn lists_are_built_by_the_same_rules() {
    let alice = user(1);
    let key = alice.public_key();
    assert!(matches!(DeviceList::new("alice", 0, &key, [(1, device(1))]), Err(DeviceListError::Malformed(_))));
    assert!(matches!(DeviceList::new("", 1, &key, [(1, device(1))]), Err(DeviceListError::Malformed(_))));
    assert!(matches!(DeviceList::new("alice", 1, &key, []), Err(DeviceListError::Malformed(_))));
    assert!(matches!(
        DeviceList::new("alice", 1, &key, [(1, device(1)), (1, device(2))]),
        Err(DeviceListError::Malformed(_))
    ));
    assert!(matches!(
        DeviceList::new("alice", 1, &key, [(1, device(1)), (2, device(1))]),
        Err(DeviceListError::Malformed(_))
    ));
    assert!(matches!(
        DeviceList::new("alice", 1, &key, (0..40u32).map(|i| (i, device(u8::try_from(i + 1).unwrap())))),
        Err(DeviceListError::Malformed(_))
    ));
    // Signing with another key pair than the list's is the app's mistake.
    let signed = DeviceList::new("alice", 1, &key, [(1, device(1))]).unwrap().sign(&user(2));
    assert_eq!(signed, Err(DeviceListError::WrongSigner));
    assert_eq!(DeviceListError::WrongSigner.kind(), ErrorKind::InvalidArgument);
    // No secret in Debug output: the public key only.
    assert_eq!(format!("{alice:?}"), format!("UserIdentityKeyPair {{ public: {:?}, .. }}", alice.public_key()));
}
