//! Outside audit of the Device-level refusal of ghost devices (issue 17,
//! merge b1e1a5d; PROTOCOL.md 7.2 check 21, 23.5). Each test is an attack:
//! one that holds is a passing test; a finding is a test that fails now,
//! marked `#[ignore = "finding: ..."]`, with its schedule and impact.
//! Observations (behaviour as specified, but worth knowing) pass and say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::time::{Duration, UNIX_EPOCH};

use prost::Message as _;
use samizdat::{
    SessionError,
    address::Address,
    device::{Device, DeviceError, Heal},
    keys::IdentityKeyPair,
    prekeys::{BundleError, PreKeyBundle},
    store::{Backend, MemoryBackend, StorageKey, Table},
    user::{DeviceList, DeviceListError, SignedDeviceList, UserIdentityKeyPair},
};
use samizdat_proto::wire;
use support::receive;

fn device(user: &str, id: u32, key: u8) -> Device<MemoryBackend> {
    Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([key; 32]),
        Address::new(user, id).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap()
}

fn user_key(seed: u8) -> UserIdentityKeyPair {
    UserIdentityKeyPair::from_seed(&[seed; 32])
}

/// `user`'s list at `version`, naming `devices`, signed by `uik`.
fn list(uik: &UserIdentityKeyPair, user: &str, version: u64, devices: &[&Device<MemoryBackend>]) -> SignedDeviceList {
    let entries = devices.iter().map(|d| (d.address().device_id(), d.identity_key()));
    DeviceList::new(user, version, &uik.public_key(), entries).unwrap().sign(uik).unwrap()
}

/// `bundle` with `list` in place of the list it carries (a server can: the
/// bundle's signature does not cover it).
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

fn rows(device: &Device<MemoryBackend>) -> std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>> {
    device.backend().snapshot()
}

fn refusal(result: Result<impl std::fmt::Debug, DeviceError>) -> DeviceListError {
    match result {
        Err(DeviceError::DeviceList(e)) => e,
        other => panic!("expected a device-list refusal, got {other:?}"),
    }
}

fn now() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000)
}

/// Alice pinned Bob's user at version 2 (devices 1 and 2) and has a session
/// with each, both answered (each Bob device read Alice's first message and
/// wrote back, so the next messages each way are ratchet messages).
struct Two {
    alice: Device<MemoryBackend>,
    bob1: Device<MemoryBackend>,
    bob2: Device<MemoryBackend>,
    bob_user: UserIdentityKeyPair,
}

fn two() -> Two {
    let (alice, bob1, bob2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    alice.refill_prekeys(5, 5, UNIX_EPOCH).unwrap();
    let bob_user = user_key(0xB0);
    let v2 = list(&bob_user, "bob", 2, &[&bob1, &bob2]);
    bob1.set_device_list(&v2).unwrap();
    bob2.set_device_list(&v2).unwrap();
    for bob in [&bob1, &bob2] {
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let wire = alice.encrypt(bob.address(), b"hi").unwrap();
        assert_eq!(receive(bob, alice.address(), &wire).unwrap(), b"hi");
        let back = bob.encrypt(alice.address(), b"hello").unwrap();
        assert_eq!(receive(&alice, bob.address(), &back).unwrap(), b"hello");
    }
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
    Two { alice, bob1, bob2, bob_user }
}

// ---------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------

/// FINDING, FIXED (PROTOCOL.md 23.5 S2: an older list under the pinned key
/// is taken as no list). Availability, with an honest server. Schedule: Bob's device 1
/// uploads a batch of bundles (`prekey_bundles(3)`) while his list is at
/// version 1; the server stores them verbatim, as servers do. Bob links
/// device 2 (list version 2, both devices set it). Alice meets device 2
/// first: its bundle pins version 2. Later Alice fetches one of device 1's
/// stored bundles (to start a session, or to `heal` one): it carries
/// version 1, and `start_session` / `heal` refuse it with `Rollback { seen:
/// 2, offered: 1 }` although device 1 is listed, with the same key, in the
/// pinned version 2. Every bundle a device uploaded before its user's list
/// changed is unusable to every peer that has seen the newer list, until
/// the device uploads new bundles (and one-time prekeys stay on the server
/// unused). The same holds for fresh bundles of a device that has not yet
/// set its user's newest list (one of Bob's devices lags the other; seen in
/// `held_a_backup_keeps_the_newest_pin_and_an_older_backup_rolls_it_back`
/// before its set-up updated device 1 too). A hostile server gains nothing
/// from the refusal either way: an
/// older list in a bundle says nothing the pinned list does not overrule.
///
/// Root cause: `Device::plan_bundle_trust` (core/src/device/users.rs) runs
/// `UserTrust::update` on the bundle's list and propagates its `Rollback`
/// (PROTOCOL.md 23.5 S2 says so). Suggested fix: in S2, a list under the
/// pinned user key with a version below the pinned one is ignored (as a
/// stripped list: trust2 = trust, then S3 against the pinned list);
/// `UntrustedUser` and `Equivocation` stay refusals (they are evidence).
#[test]
fn finding_a_bundle_uploaded_before_the_list_changed_still_starts_a_session() {
    let (alice, bob1, bob2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    let bob_user = user_key(0xB0);
    bob1.set_device_list(&list(&bob_user, "bob", 1, &[&bob1])).unwrap();
    bob1.refill_prekeys(3, 3, UNIX_EPOCH).unwrap();
    let uploaded = bob1.prekey_bundles(3).unwrap();
    // Bob links device 2.
    let v2 = list(&bob_user, "bob", 2, &[&bob1, &bob2]);
    bob1.set_device_list(&v2).unwrap();
    bob2.set_device_list(&v2).unwrap();
    alice.start_session(&bob2.prekey_bundle().unwrap()).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
    // Device 1 is listed in the pinned version 2 with this very key.
    assert!(alice.user_trust("bob").unwrap().unwrap().check_device(1, &bob1.identity_key()).is_ok());
    let started = alice.start_session(&uploaded[0]);
    assert!(started.is_ok(), "a genuine, listed device's stored bundle refused: {started:?}");
    let wire = alice.encrypt(bob1.address(), b"hello").unwrap();
    assert_eq!(receive(&bob1, alice.address(), &wire).unwrap(), b"hello");
    let healed = alice.heal(&uploaded[1], &[], now());
    assert!(matches!(healed, Ok(Heal::Sent(_))), "heal from a stored bundle refused: {healed:?}");
}

/// FINDING, FIXED (only `set_device_list` pins our own user; PROTOCOL.md
/// 23.5 `ApplyList`). A hostile server pins our OWN user to its key, and peers then
/// accept its ghost of us). Schedule: Alice's device has not set its own
/// list yet (a new device, or an app that feeds every list it receives to
/// `update_device_list`, as its documentation invites: "a contact's list,
/// fetched from the server or pushed by it; or our own"). The server pushes
/// a list for user "alice" signed by Mallory's key, naming Alice's device 1
/// with its public identity key (public: it is in her bundles) and a ghost
/// device 9. `update_device_list` pins it on first use: the `self` row now
/// holds Mallory's key, and every bundle Alice's device publishes carries
/// Mallory's list. Bob, meeting Alice, pins Mallory's key for "alice" from
/// Alice's own genuine bundle, and then accepts the ghost alice/9's prekey
/// messages (listed!), while Alice's genuine list, once she sets it, is
/// `UntrustedUser` at Bob. Our own user identity is the app's (23.5: "a
/// new user identity is the app's to set"), never something to learn on
/// first use from the server.
///
/// Root cause: `Device::apply_list` (core/src/device/users.rs) runs
/// `UserTrust::first_use` for our own user id under `Rule::Update` too;
/// PROTOCOL.md 23.5 `ApplyList` does not distinguish our own user.
/// Suggested fix: `update_device_list` of our own user id with no own list
/// set is refused (e.g. `UntrustedUser { offered }` or a new
/// `OwnListNotSet`): only `set_device_list` (the app's own, or over the
/// linking channel) pins our own user.
#[test]
fn finding_a_server_list_for_our_own_user_is_not_pinned_on_first_use() {
    let (alice, bob) = (device("alice", 1, 1), device("bob", 1, 2));
    let ghost = device("alice", 9, 9);
    let mallory = user_key(0x66);
    let forged = list(&mallory, "alice", 1, &[&alice, &ghost]);
    let result = alice.update_device_list(&forged);
    if result.is_ok() {
        // The impact, as it stands: Alice's bundles spread Mallory's list,
        // Bob pins it from them and lets the ghost in.
        let bundle = alice.prekey_bundle().unwrap();
        assert_eq!(PreKeyBundle::from_bytes(&bundle).unwrap().device_list(), Some(&forged));
        bob.start_session(&bundle).unwrap();
        assert_eq!(*bob.user_trust("alice").unwrap().unwrap().user_identity_key(), mallory.public_key());
        ghost.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let wire = ghost.encrypt(bob.address(), b"it is me, alice").unwrap();
        assert_eq!(receive(&bob, ghost.address(), &wire).unwrap(), b"it is me, alice");
        // And Alice's genuine list is now refused at Bob.
        let alice_user = user_key(0xA0);
        let genuine = list(&alice_user, "alice", 2, &[&alice]);
        alice.set_device_list(&genuine).unwrap();
        assert!(matches!(refusal(bob.update_device_list(&genuine)), DeviceListError::UntrustedUser { .. }));
    }
    assert!(matches!(result, Err(DeviceError::DeviceList(_))), "our own user pinned from a server list: {result:?}");
    assert_eq!(alice.device_list().unwrap(), None);
}

// ---------------------------------------------------------------------------
// Attacks that hold
// ---------------------------------------------------------------------------

/// A hostile server serves a ghost's bundle with a valid but stale list
/// naming it: refused (`UnlistedDevice`: the pinned list decides), nothing
/// written; a genuine device's bundle with that list is accepted.
#[test]
fn held_a_stale_list_in_a_bundle_changes_nothing() {
    let Two { alice, bob1, bob2, bob_user } = two();
    let ghost = device("bob", 9, 9);
    let v1_with_ghost = list(&bob_user, "bob", 1, &[&bob1, &ghost]);
    let before = rows(&alice);
    let bundle = carrying(&ghost.prekey_bundle().unwrap(), Some(&v1_with_ghost));
    // Since the fix of the first finding an older list is taken as no
    // list: the ghost is checked against the pinned version 2.
    assert_eq!(refusal(alice.start_session(&bundle)), DeviceListError::UnlistedDevice { device_id: 9 });
    assert_eq!(refusal(alice.heal(&bundle, &[], now())), DeviceListError::UnlistedDevice { device_id: 9 });
    assert_eq!(rows(&alice), before);
    // The genuine device 2's bundle with the stale list starts a session and
    // leaves the pin at version 2.
    alice.start_session(&carrying(&bob2.prekey_bundle().unwrap(), Some(&v1_with_ghost))).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
}

/// A list of another user id in field 8 (raw, bypassing `with_device_list`),
/// and a list for 33 devices with a garbage signature: refused at parsing,
/// the size limit before the signature, nothing written.
#[test]
fn held_a_list_of_another_user_or_over_the_limits_is_refused_at_parsing() {
    let Two { alice, bob1, .. } = two();
    let carol = device("carol", 1, 5);
    let carols = list(&user_key(0xC0), "carol", 7, &[&carol]);
    let bundle = bob1.prekey_bundle().unwrap();
    let before = rows(&alice);
    let result = alice.start_session(&with_raw_list(&bundle, carols.to_bytes()));
    assert!(
        matches!(
            &result,
            Err(DeviceError::Session(SessionError::Bundle(BundleError::DeviceList(DeviceListError::WrongUser { .. }))))
        ),
        "{result:?}"
    );
    // 33 devices (L-limit: 32), with a signature that does not verify.
    let devices = (1..=33u32)
        .map(|i| wire::DeviceEntry {
            device_id: i,
            identity_key: IdentityKeyPair::from_seed(&[u8::try_from(i).unwrap(); 32]).public_key().as_bytes().to_vec(),
        })
        .collect();
    let inner = wire::DeviceList {
        user_id: "bob".into(),
        version: 99,
        user_identity_key: user_key(0xB0).public_key().as_bytes().to_vec(),
        devices,
    };
    let signed = wire::SignedDeviceList { list: inner.encode_to_vec(), signature: vec![0; 64] };
    let result = alice.start_session(&with_raw_list(&bundle, signed.encode_to_vec()));
    assert!(
        matches!(
            &result,
            Err(DeviceError::Session(SessionError::Bundle(BundleError::DeviceList(DeviceListError::Malformed(_)))))
        ),
        "{result:?}"
    );
    assert_eq!(rows(&alice), before);
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
}

/// decrypt_batch with a mix: a listed device's ratchet message, a removed
/// device's ratchet message, a ghost's prekey message, the listed device
/// again. Only the listed device's messages are read; the ghost consumes no
/// prekey and gets no row; the removed device's row is untouched.
#[test]
fn held_a_mixed_batch_reads_only_the_listed_device() {
    let Two { alice, bob1, bob2, bob_user } = two();
    let ghost = device("bob", 9, 9);
    ghost.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    let from_ghost = ghost.encrypt(alice.address(), b"ghost").unwrap();
    let from_bob2 = bob2.encrypt(alice.address(), b"removed").unwrap();
    let (one, two) = (bob1.encrypt(alice.address(), b"one").unwrap(), bob1.encrypt(alice.address(), b"two").unwrap());
    let bob2_keys = session_rows(&alice, &bob2);
    alice.update_device_list(&list(&bob_user, "bob", 3, &[&bob1])).unwrap();
    let counts = alice.prekey_counts().unwrap();
    let bob2_rows = |alice: &Device<MemoryBackend>| {
        bob2_keys.iter().map(|key| alice.backend().get(Table::Sessions, key).unwrap()).collect::<Vec<_>>()
    };
    let bob2_before = bob2_rows(&alice);
    let batch = alice
        .decrypt_batch(&[
            (bob1.address().clone(), one),
            (bob2.address().clone(), from_bob2),
            (ghost.address().clone(), from_ghost),
            (bob1.address().clone(), two),
        ])
        .unwrap();
    let results = batch.results();
    assert_eq!(results[0].as_deref().unwrap(), b"one");
    assert!(matches!(results[1], Err(SessionError::UnlistedDevice { device_id: 2 })), "{:?}", results[1]);
    assert!(matches!(results[2], Err(SessionError::UnlistedDevice { device_id: 9 })), "{:?}", results[2]);
    assert_eq!(results[3].as_deref().unwrap(), b"two");
    alice.commit_batch(batch).unwrap();
    assert!(!alice.has_session(ghost.address()).unwrap());
    assert_eq!(alice.prekey_counts().unwrap(), counts, "the ghost consumed a prekey");
    assert_eq!(bob2_rows(&alice), bob2_before, "the removed device's rows changed");
    let wire = alice.encrypt(bob1.address(), b"still here").unwrap();
    assert_eq!(receive(&bob1, alice.address(), &wire).unwrap(), b"still here");
}

/// The sessions rows of `peer` in `device`'s store: those that change when
/// `device` encrypts to `peer` alone (found by difference).
fn session_rows(device: &Device<MemoryBackend>, peer: &Device<MemoryBackend>) -> Vec<Vec<u8>> {
    let before = rows(device);
    device.encrypt(peer.address(), b"probe").unwrap();
    let after = rows(device);
    let changed: Vec<_> = after
        .iter()
        .filter(|((table, key), value)| *table == Table::Sessions && before.get(&(*table, key.clone())) != Some(value))
        .map(|((_, key), _)| key.clone())
        .collect();
    assert!(!changed.is_empty());
    changed
}

/// A removed device listed again with the same key works again; a device
/// re-listed under a new key (reinstalled) is not reached through its old
/// session, and the per-device decision (9.2) still applies to the new key.
#[test]
fn held_a_relisted_device_and_a_rekeyed_device() {
    let Two { alice, bob1, bob2, bob_user } = two();
    alice.update_device_list(&list(&bob_user, "bob", 3, &[&bob1])).unwrap();
    assert_eq!(refusal(alice.encrypt(bob2.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 2 });
    alice.update_device_list(&list(&bob_user, "bob", 4, &[&bob1, &bob2])).unwrap();
    let wire = alice.encrypt(bob2.address(), b"welcome back").unwrap();
    assert_eq!(receive(&bob2, alice.address(), &wire).unwrap(), b"welcome back");
    // Device 2 reinstalled: same address, another key, listed in version 5.
    let bob2b = device("bob", 2, 4);
    let v5 = list(&bob_user, "bob", 5, &[&bob1, &bob2b]);
    alice.update_device_list(&v5).unwrap();
    let before = rows(&alice);
    assert_eq!(refusal(alice.encrypt(bob2.address(), b"old key")), DeviceListError::UnlistedDevice { device_id: 2 });
    let late = bob2.encrypt(alice.address(), b"from the old key").unwrap();
    assert_eq!(refusal(alice.decrypt(bob2.address(), &late)), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(rows(&alice), before);
    // The new key's bundle: listed, but the record trusts the old key.
    bob2b.set_device_list(&v5).unwrap();
    let result = alice.start_session(&bob2b.prekey_bundle().unwrap());
    assert!(matches!(result, Err(DeviceError::Session(SessionError::UntrustedIdentity { .. }))), "{result:?}");
    assert_eq!(rows(&alice), before);
    // The app's decision: the old key's sessions are dropped with it.
    alice.trust_identity(bob2b.address(), bob2b.identity_key()).unwrap();
    alice.start_session(&bob2b.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob2b.address(), b"new key").unwrap();
    assert_eq!(receive(&bob2b, alice.address(), &wire).unwrap(), b"new key");
}

/// A heal within the reset interval with a bundle carrying a newer list
/// writes nothing (TooSoon), and a ghost's heal is refused even within the
/// interval (the user's rules come before the interval).
#[test]
fn held_heal_within_the_interval_writes_no_list_and_refuses_ghosts() {
    let Two { alice, bob1, bob2, bob_user } = two();
    assert!(matches!(alice.heal(&bob1.prekey_bundle().unwrap(), &[], now()).unwrap(), Heal::Sent(_)));
    let v3 = list(&bob_user, "bob", 3, &[&bob1, &bob2]);
    bob1.set_device_list(&v3).unwrap();
    let before = rows(&alice);
    assert!(matches!(alice.heal(&bob1.prekey_bundle().unwrap(), &[], now()).unwrap(), Heal::TooSoon { .. }));
    assert_eq!(rows(&alice), before, "a TooSoon heal wrote something");
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().list().version(), 2);
    let ghost = device("bob", 9, 9);
    let bundle = carrying(&ghost.prekey_bundle().unwrap(), Some(&v3));
    assert_eq!(refusal(alice.heal(&bundle, &[], now())), DeviceListError::UnlistedDevice { device_id: 9 });
    assert_eq!(rows(&alice), before);
}

/// trust_new_user_identity with the pinned key goes through Update: no
/// rollback, no equivocation through the "app's decision" door.
#[test]
fn held_trust_new_user_identity_is_no_rollback_door() {
    let Two { alice, bob1, bob2, bob_user } = two();
    let before = rows(&alice);
    let ghost = device("bob", 9, 9);
    assert_eq!(
        refusal(alice.trust_new_user_identity(&list(&bob_user, "bob", 1, &[&bob1, &ghost]))),
        DeviceListError::Rollback { seen: 2, offered: 1 }
    );
    assert_eq!(
        refusal(alice.trust_new_user_identity(&list(&bob_user, "bob", 2, &[&bob1, &bob2, &ghost]))),
        DeviceListError::Equivocation { version: 2 }
    );
    assert_eq!(rows(&alice), before);
}

/// A bundle of our own user (another device id) carrying a list signed by
/// another key, while we have set no own list: the list is not applied (our
/// own user is not pinned from a bundle), and once the app sets our list the
/// ghost is refused by every call.
#[test]
fn held_a_bundle_never_pins_our_own_user() {
    let alice = device("alice", 1, 1);
    let ghost = device("alice", 9, 9);
    let mallory = user_key(0x66);
    let forged = list(&mallory, "alice", 1, &[&alice, &ghost]);
    ghost.set_device_list(&list(&mallory, "alice", 1, &[&ghost])).unwrap();
    let bundle = carrying(&ghost.prekey_bundle().unwrap(), Some(&forged));
    alice.start_session(&bundle).unwrap(); // per device (9.2): not pinned
    assert_eq!(alice.device_list().unwrap(), None);
    assert!(PreKeyBundle::from_bytes(&alice.prekey_bundle().unwrap()).unwrap().device_list().is_none());
    let alice_user = user_key(0xA0);
    alice.set_device_list(&list(&alice_user, "alice", 1, &[&alice])).unwrap();
    let before = rows(&alice);
    assert_eq!(refusal(alice.encrypt(ghost.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 9 });
    assert_eq!(refusal(alice.start_session(&bundle)), DeviceListError::UnlistedDevice { device_id: 9 });
    assert_eq!(rows(&alice), before);
}

/// Two handles on one SQLite store: a list update through one is seen by
/// the other at once (the verified-row cache is keyed by the sealed bytes).
#[test]
fn held_a_second_handle_sees_a_removal_at_once() {
    let dir = support::temp_dir("audit17-handles");
    let key = StorageKey::from_bytes([1; 32]);
    let path = dir.join("alice.db");
    let (bob1, bob2) = (device("bob", 1, 2), device("bob", 2, 3));
    let bob_user = user_key(0xB0);
    let v2 = list(&bob_user, "bob", 2, &[&bob1, &bob2]);
    bob2.set_device_list(&v2).unwrap();
    let first = Device::create(&path, &key, Address::new("alice", 1).unwrap(), UNIX_EPOCH).unwrap();
    let second = Device::open(&path, &key).unwrap();
    first.start_session(&bob2.prekey_bundle().unwrap()).unwrap();
    second.encrypt(bob2.address(), b"cached").unwrap(); // the second handle caches version 2
    first.update_device_list(&list(&bob_user, "bob", 3, &[&bob1])).unwrap();
    assert_eq!(refusal(second.encrypt(bob2.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(
        refusal(second.encrypt_kept(bob2.address(), b"x", now())),
        DeviceListError::UnlistedDevice { device_id: 2 }
    );
    drop((first, second));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Observations: as specified, worth knowing
// ---------------------------------------------------------------------------

/// OBSERVATION (first-use race, as specified: 23.5 S2 FirstUse). Alice had
/// a per-device session with Bob's device 1 before Bob had a list. A
/// hostile server serves one ghost bundle carrying a list signed by
/// Mallory's key: Alice pins Mallory's key on first use without comparing
/// it with the devices she already trusts per device, so the ghost gets a
/// session, the genuine device 1 is cut off (`UnlistedDevice`) and Bob's
/// genuine list is `UntrustedUser` until the app decides. Without lists the
/// ghost would have been accepted too (per device), but device 1 would not
/// have been cut off. Possible hardening: a first-use list that does not
/// name a device this device already trusts for that user (per-device
/// record with a trusted identity) is `UntrustedUser` (the app decides).
#[test]
fn observation_a_first_use_pin_ignores_devices_already_trusted() {
    let (alice, bob1) = (device("alice", 1, 1), device("bob", 1, 2));
    alice.start_session(&bob1.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob1.address(), b"before lists").unwrap();
    assert_eq!(receive(&bob1, alice.address(), &wire).unwrap(), b"before lists");
    let ghost = device("bob", 9, 9);
    let mallory = user_key(0x66);
    let forged = list(&mallory, "bob", 1, &[&ghost]);
    alice.start_session(&carrying(&ghost.prekey_bundle().unwrap(), Some(&forged))).unwrap();
    assert_eq!(*alice.user_trust("bob").unwrap().unwrap().user_identity_key(), mallory.public_key());
    assert_eq!(refusal(alice.encrypt(bob1.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 1 });
    let genuine = list(&user_key(0xB0), "bob", 1, &[&bob1]);
    assert!(matches!(refusal(alice.update_device_list(&genuine)), DeviceListError::UntrustedUser { .. }));
    // The first list wins the race the other way round too: once the
    // genuine list is pinned, Mallory's is refused and writes nothing.
    let carol = device("carol", 1, 5);
    carol.start_session(&bob1.prekey_bundle().unwrap()).unwrap();
    carol.update_device_list(&genuine).unwrap();
    let before = rows(&carol);
    assert!(matches!(
        refusal(carol.start_session(&carrying(&ghost.prekey_bundle().unwrap(), Some(&forged)))),
        DeviceListError::UntrustedUser { .. }
    ));
    assert_eq!(rows(&carol), before);
}

/// OBSERVATION (two-phase decrypt, as specified: commit does not check).
/// A prekey message from Bob's device 2, decrypted while listed; the app
/// then applies a list that removes device 2, then commits the pending
/// message: the commit writes a session for the removed device and consumes
/// the one-time prekey. Every later call refuses the device, so nothing
/// more is read or sent; only the store gains a row for a removed device.
#[test]
fn observation_a_pending_message_commits_after_its_device_is_removed() {
    let (alice, bob1, bob2) = (device("alice", 1, 1), device("bob", 1, 2), device("bob", 2, 3));
    alice.refill_prekeys(3, 3, UNIX_EPOCH).unwrap();
    let bob_user = user_key(0xB0);
    alice.update_device_list(&list(&bob_user, "bob", 1, &[&bob1, &bob2])).unwrap();
    bob2.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    let wire = bob2.encrypt(alice.address(), b"just before").unwrap();
    let pending = alice.decrypt(bob2.address(), &wire).unwrap();
    alice.update_device_list(&list(&bob_user, "bob", 2, &[&bob1])).unwrap();
    let counts = alice.prekey_counts().unwrap();
    alice.commit(pending).unwrap();
    assert!(alice.has_session(bob2.address()).unwrap());
    assert!(alice.prekey_counts().unwrap().0 < counts.0);
    assert_eq!(refusal(alice.encrypt(bob2.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 2 });
}

/// Was an observation (a documented gap): a device removed from its user's
/// pinned list still received the group's chain (a distribution over its
/// kept pairwise session) from `group_encrypt`, and so read the group's
/// messages. Closed: the roster follows the lists before the send (PROTOCOL.md
/// 18.8), so the device is removed, our chain rotates, and the device reads
/// nothing sent after.
#[test]
fn a_removed_device_no_longer_gets_the_group_chain() {
    let Two { alice, bob1, bob2, bob_user } = two();
    alice.create_group(b"group", &[bob1.address().clone(), bob2.address().clone()]).unwrap();
    bob2.create_group(b"group", &[alice.address().clone(), bob1.address().clone()]).unwrap();
    let before = alice.group_encrypt(b"group", b"before").unwrap();
    let to_bob2 = before.distributions.iter().find(|out| out.to == *bob2.address()).expect("bob2 is listed");
    receive(&bob2, alice.address(), &to_bob2.message).unwrap();
    assert_eq!(receive(&bob2, alice.address(), &before.message).unwrap(), b"before");
    alice.update_device_list(&list(&bob_user, "bob", 3, &[&bob1])).unwrap();
    assert_eq!(refusal(alice.encrypt(bob2.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 2 });
    let send = alice.group_encrypt(b"group", b"for the group").unwrap();
    assert!(send.distributions.iter().all(|out| out.to != *bob2.address()), "a chain for the removed device");
    assert!(receive(&bob2, alice.address(), &send.message).is_err(), "the removed device read the group");
    assert_eq!(alice.group_members(b"group").unwrap(), vec![bob1.address().clone()]);
}

/// A damaged or misplaced `self` row (our own list) is `Corrupt`, never a
/// panic, for every call that reads it; calls on other users still work.
/// The `self` row of another device of our user, sealed under the same
/// storage key, is moved in: it opens (or not), but does not name us (U5).
#[test]
fn held_a_damaged_or_foreign_own_list_row_is_corrupt() {
    let (alice, alice2, bob) = (device("alice", 1, 1), device("alice", 2, 1), device("bob", 1, 2));
    let alice_user = user_key(0xA0);
    alice.set_device_list(&list(&alice_user, "alice", 1, &[&alice])).unwrap();
    alice2.set_device_list(&list(&alice_user, "alice", 1, &[&alice2])).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let own_row = |device: &Device<MemoryBackend>| {
        device.backend().get(Table::Users, b"self").unwrap().expect("a users row keyed \"self\"")
    };
    let (sealed, foreign) = (own_row(&alice), own_row(&alice2));
    let put = |value: Vec<u8>| {
        alice
            .backend()
            .apply(&[samizdat::store::Write {
                table: Table::Users,
                key: b"self".to_vec(),
                value: Some(value),
                expected: samizdat::store::Expected::Any,
            }])
            .unwrap();
    };
    let corrupt = |what: &str, result: Result<(), DeviceError>| {
        assert!(
            matches!(result, Err(DeviceError::Store(samizdat::store::StoreError::Corrupt { table: Table::Users }))),
            "{what}: {result:?}"
        );
    };
    let mut flipped = sealed.clone();
    flipped[5] ^= 0x40;
    for damaged in [foreign, flipped, sealed[..sealed.len() / 2].to_vec()] {
        put(damaged);
        corrupt("device_list", alice.device_list().map(drop));
        corrupt("prekey_bundle", alice.prekey_bundle().map(drop));
        corrupt("prekey_bundles", alice.prekey_bundles(2).map(drop));
        corrupt("export_backup", alice.export_backup(b"p", samizdat::device::BackupParams::MINIMUM, now()).map(drop));
        corrupt("start_session (own device)", alice.start_session(&alice2.prekey_bundle().unwrap()).map(drop));
        // Bob's user is not ours: unaffected.
        let wire = alice.encrypt(bob.address(), b"unaffected").unwrap();
        assert_eq!(receive(&bob, alice.address(), &wire).unwrap(), b"unaffected");
    }
    put(sealed);
    assert!(alice.device_list().unwrap().is_some());
}

/// The first-use race between two handles of one store: one starts a
/// session from Bob's genuine bundle, the other, at the same time, from a
/// ghost's bundle carrying Mallory's list for "bob". Exactly one pin wins
/// (the users write is conditional on the row read), the loser is refused
/// (`UntrustedUser`) and leaves no session, and the pinned key is the
/// winner's.
#[test]
fn held_a_concurrent_first_use_race_pins_exactly_one_key() {
    let dir = support::temp_dir("audit17-race");
    let key = StorageKey::from_bytes([1; 32]);
    let bob = device("bob", 1, 2);
    let bob_user = user_key(0xB0);
    bob.set_device_list(&list(&bob_user, "bob", 1, &[&bob])).unwrap();
    let ghost = device("bob", 9, 9);
    let mallory = user_key(0x66);
    let ghost_bundle = carrying(&ghost.prekey_bundle().unwrap(), Some(&list(&mallory, "bob", 1, &[&ghost])));
    let mut wins = [0usize; 2];
    for round in 0..12 {
        let path = dir.join(format!("alice{round}.db"));
        let first = Device::create(&path, &key, Address::new("alice", 1).unwrap(), UNIX_EPOCH).unwrap();
        let second = Device::open(&path, &key).unwrap();
        let genuine = bob.prekey_bundle().unwrap();
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                barrier.wait();
                first.start_session(&genuine)
            });
            let b = scope.spawn(|| {
                barrier.wait();
                second.start_session(&ghost_bundle)
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        let pinned = *first.user_trust("bob").unwrap().unwrap().user_identity_key();
        match (a, b) {
            (Ok(_), Err(e)) => {
                assert!(matches!(e, DeviceError::DeviceList(DeviceListError::UntrustedUser { .. })), "{e:?}");
                assert_eq!(pinned, bob_user.public_key());
                assert!(!first.has_session(ghost.address()).unwrap());
                wins[0] += 1;
            }
            (Err(e), Ok(_)) => {
                assert!(matches!(e, DeviceError::DeviceList(DeviceListError::UntrustedUser { .. })), "{e:?}");
                assert_eq!(pinned, mallory.public_key());
                assert!(!first.has_session(bob.address()).unwrap());
                wins[1] += 1;
            }
            other => panic!("round {round}: both or neither pinned: {other:?}"),
        }
    }
    assert_eq!(wins[0] + wins[1], 12);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A backup taken after a removal keeps the newest pin: the restored device
/// refuses the removed device. OBSERVATION: restoring an OLDER backup (taken
/// before the removal) brings the older pin back, so the removed device is
/// accepted again until a newer list is seen (a backup is a snapshot; 21.x
/// has no freshness).
#[test]
fn held_a_backup_keeps_the_newest_pin_and_an_older_backup_rolls_it_back() {
    let Two { alice, bob1, bob2, bob_user } = two();
    let params = samizdat::device::BackupParams::MINIMUM;
    let older = alice.export_backup(b"pass", params, now()).unwrap();
    let v3 = list(&bob_user, "bob", 3, &[&bob1]);
    bob1.set_device_list(&v3).unwrap();
    alice.update_device_list(&v3).unwrap();
    let newer = alice.export_backup(b"pass", params, now()).unwrap();
    let restore = |file: &[u8], key: u8| {
        Device::restore_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), file, b"pass", now()).unwrap()
    };
    let restored = restore(&newer, 7);
    assert_eq!(restored.user_trust("bob").unwrap().unwrap().list().version(), 3);
    let stripped = carrying(&bob2.prekey_bundle().unwrap(), None);
    let before = rows(&restored);
    assert_eq!(refusal(restored.start_session(&stripped)), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(rows(&restored), before);
    restored.start_session(&bob1.prekey_bundle().unwrap()).unwrap();
    // The older backup: version 2, which names device 2.
    let rolled_back = restore(&older, 8);
    assert_eq!(rolled_back.user_trust("bob").unwrap().unwrap().list().version(), 2);
    rolled_back.start_session(&stripped).unwrap();
    // Until the newer list is seen again, which removes it at once.
    rolled_back.update_device_list(&v3).unwrap();
    assert_eq!(refusal(rolled_back.encrypt(bob2.address(), b"x")), DeviceListError::UnlistedDevice { device_id: 2 });
}

/// Our own other devices are checked against our own list for decryption
/// too: a prekey message from a ghost device of our own user is refused and
/// consumes nothing, while a listed sibling's is read.
#[test]
fn held_a_ghost_of_our_own_user_is_not_read() {
    let (alice1, alice2, ghost) = (device("alice", 1, 1), device("alice", 2, 2), device("alice", 9, 9));
    alice1.refill_prekeys(3, 3, UNIX_EPOCH).unwrap();
    let alice_user = user_key(0xA0);
    let own = list(&alice_user, "alice", 1, &[&alice1, &alice2]);
    alice1.set_device_list(&own).unwrap();
    alice2.set_device_list(&own).unwrap();
    ghost.start_session(&alice1.prekey_bundle().unwrap()).unwrap();
    let wire = ghost.encrypt(alice1.address(), b"I am you").unwrap();
    let before = rows(&alice1);
    assert_eq!(refusal(alice1.decrypt(ghost.address(), &wire)), DeviceListError::UnlistedDevice { device_id: 9 });
    let batch = alice1.decrypt_batch(&[(ghost.address().clone(), wire)]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::UnlistedDevice { device_id: 9 })));
    alice1.commit_batch(batch).unwrap();
    assert_eq!(rows(&alice1), before);
    alice2.start_session(&alice1.prekey_bundle().unwrap()).unwrap();
    let wire = alice2.encrypt(alice1.address(), b"sibling").unwrap();
    assert_eq!(receive(&alice1, alice2.address(), &wire).unwrap(), b"sibling");
}
