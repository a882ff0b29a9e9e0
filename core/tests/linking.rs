//! Linking a new device to its user (issue 17, item 3; PROTOCOL.md 23.8): a
//! code shown on the new device, scanned on an existing one, and one sealed
//! provisioning message back. Every refusal is checked to leave every row
//! of the store as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;
use samizdat::{
    ErrorKind,
    address::Address,
    device::{Device, DeviceError, Provisioned},
    keys::IdentityKeyPair,
    limits::{LINK_CODE_LIFETIME_SECS, MAX_LINK_MESSAGE_LEN},
    store::{Backend, MemoryBackend, Row, StorageKey, StoreError, Table, Write},
    user::{
        DeviceList, DeviceListError, LinkCode, LinkError, MAX_DEVICES_PER_USER, MAX_LINK_CODE_LEN, UserIdentityKeyPair,
    },
};
use samizdat_proto::wire;
use support::receive;

/// One day after the epoch: codes made then are within their lifetime.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(86_400)
}

fn device(user: &str, id: u32, key: u8) -> Device<MemoryBackend> {
    Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), Address::new(user, id).unwrap(), now())
        .unwrap()
}

fn user_key(seed: u8) -> UserIdentityKeyPair {
    UserIdentityKeyPair::from_seed(&[seed; 32])
}

fn rows(device: &Device<impl Backend>) -> BTreeMap<(Table, Vec<u8>), Vec<u8>> {
    Table::ALL
        .iter()
        .flat_map(|&table| device.backend().scan(table).unwrap().into_iter().map(move |(k, v)| ((table, k), v)))
        .collect()
}

fn link_error<T: std::fmt::Debug>(result: Result<T, DeviceError>) -> LinkError {
    match result {
        Err(DeviceError::Link(e)) => e,
        other => panic!("expected a link error, got {other:?}"),
    }
}

/// Alice's phone (device 1) with her user identity and a list naming it;
/// Bob (device 1, his own user) who talks to her phone and pinned her user.
struct World {
    alice: UserIdentityKeyPair,
    phone: Device<MemoryBackend>,
    bob: Device<MemoryBackend>,
}

fn world() -> World {
    let alice = user_key(0xA0);
    let phone = device("alice", 1, 1);
    phone
        .set_device_list(
            &DeviceList::new("alice", 1, &alice.public_key(), [(1, phone.identity_key())])
                .unwrap()
                .sign(&alice)
                .unwrap(),
        )
        .unwrap();
    let bob_user = user_key(0xB0);
    let bob = device("bob", 1, 2);
    bob.set_device_list(
        &DeviceList::new("bob", 1, &bob_user.public_key(), [(1, bob.identity_key())]).unwrap().sign(&bob_user).unwrap(),
    )
    .unwrap();
    // Each pins the other's user from the bundle's list, and they talk.
    bob.start_session(&phone.prekey_bundle().unwrap()).unwrap();
    phone.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = bob.encrypt(phone.address(), b"hello alice").unwrap();
    assert_eq!(receive(&phone, bob.address(), &hello).unwrap(), b"hello alice");
    assert!(phone.user_trust("bob").unwrap().is_some() && bob.user_trust("alice").unwrap().is_some());
    World { alice, phone, bob }
}

/// Alice links her laptop mid-conversation: the laptop gets her user
/// identity and her list, and Bob's pinned user; Bob refuses the laptop
/// until he has the new list (no ghost), then talks to it; the phone and
/// Bob keep talking throughout.
#[test]
fn a_laptop_is_linked_mid_conversation_and_gets_the_user_identity_and_the_pins() {
    let World { alice, phone, bob } = world();
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(now()).unwrap();
    assert!(offer.code().len() <= MAX_LINK_CODE_LEN);
    let linked = phone.link_device(offer.code(), &alice, now()).unwrap();
    assert!(linked.list_changed);
    assert_eq!(linked.device, *laptop.address());
    let list = linked.device_list.verify().unwrap();
    assert_eq!(list.version(), 2);
    assert_eq!(list.device(2), Some(&laptop.identity_key()));
    assert_eq!(list.device(1), Some(&phone.identity_key()));
    assert_eq!(phone.device_list().unwrap(), Some(linked.device_list.clone()), "the phone holds the new list");

    // Bob still has the old list: the laptop's bundle names a device it does not list.
    let laptop_bundle_before = laptop.prekey_bundle().unwrap();
    assert!(matches!(
        bob.start_session(&laptop_bundle_before),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 2 }))
    ));

    let Provisioned { user_identity, device_list, pinned_users, newly_pinned, linked_by } =
        laptop.finish_link(&offer, &linked.message, now()).unwrap();
    assert_eq!(user_identity.public_key(), alice.public_key());
    assert_eq!(*user_identity.to_seed(), *alice.to_seed());
    assert_eq!(device_list, linked.device_list);
    assert_eq!((pinned_users, newly_pinned), (1, 1));
    assert_eq!(linked_by, *phone.address());
    assert_eq!(laptop.device_list().unwrap(), Some(linked.device_list.clone()));
    assert_eq!(
        laptop.user_trust("bob").unwrap().unwrap().signed_list(),
        phone.user_trust("bob").unwrap().unwrap().signed_list(),
        "Bob pinned as the phone pinned him"
    );

    // Bob takes the new list (the app published it); now the laptop is listed.
    bob.update_device_list(&linked.device_list).unwrap();
    bob.start_session(&laptop.prekey_bundle().unwrap()).unwrap();
    let to_laptop = bob.encrypt(laptop.address(), b"hi laptop").unwrap();
    assert_eq!(receive(&laptop, bob.address(), &to_laptop).unwrap(), b"hi laptop");
    // The laptop checks Bob against the pin it was given.
    laptop.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let back = laptop.encrypt(bob.address(), b"hi bob, from the laptop").unwrap();
    assert_eq!(receive(&bob, laptop.address(), &back).unwrap(), b"hi bob, from the laptop");
    // The phone's conversation goes on.
    let more = bob.encrypt(phone.address(), b"still there?").unwrap();
    assert_eq!(receive(&phone, bob.address(), &more).unwrap(), b"still there?");

    // The laptop, holding the user identity, can sign the next list.
    let third = IdentityKeyPair::generate(&mut samizdat::os_rng()).public_key();
    let next = DeviceList::new(
        "alice",
        3,
        &user_identity.public_key(),
        [(1, phone.identity_key()), (2, laptop.identity_key()), (3, third)],
    )
    .unwrap()
    .sign(&user_identity)
    .unwrap();
    laptop.set_device_list(&next).unwrap();
    phone.update_device_list(&next).unwrap();
}

/// The message replayed to the linked device, or given to another offer,
/// or altered anywhere, or made with a code whose secret differs (a forger
/// that never saw the code): refused with a typed error, and nothing
/// written.
#[test]
fn a_wrong_replayed_altered_or_forged_message_is_refused_and_writes_nothing() {
    let World { alice, phone, .. } = world();
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(now()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, now()).unwrap();
    let before = rows(&laptop);

    // Another offer of the same device: the message is not for it.
    let other = laptop.link_offer(now()).unwrap();
    let e = link_error(laptop.finish_link(&other, &linked.message, now()));
    assert_eq!((e.clone(), e.kind()), (LinkError::WrongCode, ErrorKind::InvalidMessage));

    // Altered: the version, the linking key, the body, the tag; one byte longer or shorter.
    let m = &linked.message;
    for (at, expected) in [(0, "malformed"), (1, "wrong"), (40, "wrong"), (m.len() - 1, "wrong")] {
        let mut bad = m.clone();
        bad[at] ^= 0x01;
        let e = link_error(laptop.finish_link(&offer, &bad, now()));
        match expected {
            "malformed" => assert!(matches!(e, LinkError::MalformedMessage(_)), "byte {at}: {e:?}"),
            _ => assert_eq!(e, LinkError::WrongCode, "byte {at}"),
        }
    }
    for bad in [[m.as_slice(), &[0]].concat(), m[..m.len() - 1].to_vec(), Vec::new(), vec![1; 40]] {
        assert!(matches!(link_error(laptop.finish_link(&offer, &bad, now())), LinkError::MalformedMessage(_)));
    }
    let too_long = vec![1u8; MAX_LINK_MESSAGE_LEN + 1];
    assert!(matches!(
        link_error(laptop.finish_link(&offer, &too_long, now())),
        LinkError::MalformedMessage(samizdat::DecodeError::TooLarge { .. })
    ));

    // Forged: a code with another secret (what a server that did not see
    // the code could use) makes a message the offer does not open.
    let mut forged = wire::LinkCode::decode(offer.code()).unwrap();
    forged.secret = vec![0x11; 32];
    let forged_linked = phone.link_device(&forged.encode_to_vec(), &alice, now()).unwrap();
    assert!(!forged_linked.list_changed, "the same device and key: the list is not changed again");
    assert_eq!(link_error(laptop.finish_link(&offer, &forged_linked.message, now())), LinkError::WrongCode);
    assert_eq!(rows(&laptop), before, "no refusal wrote anything");

    // The genuine message links; the same message again is a replay.
    laptop.finish_link(&offer, &linked.message, now()).unwrap();
    let after = rows(&laptop);
    let e = link_error(laptop.finish_link(&offer, &linked.message, now()));
    assert_eq!((e.clone(), e.kind()), (LinkError::AlreadyUsed, ErrorKind::Duplicate));
    assert_eq!(rows(&laptop), after);
}

/// Codes: expired (made more than the lifetime before, or after, the
/// scanning device's clock), malformed in every field, of another user,
/// the device's own; and the calls that need the user key and a list.
/// Each is refused with its typed error and writes nothing.
#[test]
fn bad_codes_and_bad_calls_are_refused_and_write_nothing() {
    let World { alice, phone, bob } = world();
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(now()).unwrap();
    let before = rows(&phone);
    let life = Duration::from_secs(LINK_CODE_LIFETIME_SECS);
    // At the lifetime: accepted (checked on a copy so the phone stays unchanged).
    let copy = Device::open_in(support::copy_of(phone.backend()), &StorageKey::from_bytes([1; 32])).unwrap();
    copy.link_device(offer.code(), &alice, now() + life).unwrap();
    copy.link_device(offer.code(), &alice, now() - life).unwrap();
    for when in [now() + life + Duration::from_secs(1), now() - life - Duration::from_secs(1)] {
        let e = link_error(phone.link_device(offer.code(), &alice, when));
        assert_eq!((e.clone(), e.kind()), (LinkError::Expired, ErrorKind::InvalidArgument));
    }
    // Malformed codes.
    let code = wire::LinkCode::decode(offer.code()).unwrap();
    let with = |change: &dyn Fn(&mut wire::LinkCode)| {
        let mut c = code.clone();
        change(&mut c);
        c.encode_to_vec()
    };
    let small_order = [0u8; 32].to_vec();
    let bad_codes: Vec<Vec<u8>> = vec![
        Vec::new(),
        offer.code()[..offer.code().len() - 1].to_vec(),
        [offer.code(), &[0x40, 0x01]].concat(), // field 8, unknown
        vec![0x0a; MAX_LINK_CODE_LEN + 1],
        with(&|c| c.version = 2),
        with(&|c| c.user_id = String::new()),
        with(&|c| c.user_id = "a".repeat(257)),
        with(&|c| c.identity_key.truncate(31)),
        with(&|c| c.identity_key = small_order.clone()),
        with(&|c| c.ephemeral_key = small_order.clone()),
        with(&|c| c.ephemeral_key.push(0)),
        with(&|c| c.secret.truncate(16)),
    ];
    for (k, bad) in bad_codes.iter().enumerate() {
        let e = link_error(phone.link_device(bad, &alice, now()));
        assert!(matches!(e, LinkError::MalformedCode(_)), "code {k}: {e:?}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    // Another user's device; the phone's own code.
    let bobs = device("bob", 2, 4).link_offer(now()).unwrap();
    assert!(matches!(link_error(phone.link_device(bobs.code(), &alice, now())), LinkError::WrongUser { .. }));
    let own = phone.link_offer(now()).unwrap();
    assert_eq!(link_error(phone.link_device(own.code(), &alice, now())), LinkError::SelfLink);
    // Another user key than the list's.
    assert!(matches!(
        phone.link_device(offer.code(), &user_key(0x77), now()),
        Err(DeviceError::DeviceList(DeviceListError::WrongSigner))
    ));
    assert_eq!(rows(&phone), before);
    // A device with no list of its own.
    let bare = device("alice", 5, 5);
    assert_eq!(link_error(bare.link_device(offer.code(), &alice, now())), LinkError::NoOwnList);
    // An offer of another device given to finish.
    let linked = phone.link_device(offer.code(), &alice, now()).unwrap();
    assert!(matches!(link_error(bare.finish_link(&offer, &linked.message, now())), LinkError::WrongUser { .. }));
    // The offer expired on the new device.
    let laptop_rows = rows(&laptop);
    assert_eq!(
        link_error(laptop.finish_link(&offer, &linked.message, now() + life + Duration::from_secs(1))),
        LinkError::Expired
    );
    assert_eq!(rows(&laptop), laptop_rows);
    let _ = bob;
}

/// The list is full at MAX_DEVICES_PER_USER devices: linking one more is
/// refused (`limit_exceeded`) and writes nothing; a device already listed
/// with its key is provisioned again without a new list.
#[test]
fn a_full_list_refuses_a_new_device_and_a_listed_one_is_provisioned_again() {
    let alice = user_key(0xA0);
    let phone = device("alice", 1, 1);
    let others: Vec<_> = (2..=u32::try_from(MAX_DEVICES_PER_USER).unwrap())
        .map(|id| (id, IdentityKeyPair::generate(&mut samizdat::os_rng()).public_key()))
        .collect();
    let full = DeviceList::new(
        "alice",
        1,
        &alice.public_key(),
        std::iter::once((1, phone.identity_key())).chain(others.iter().copied()),
    )
    .unwrap()
    .sign(&alice)
    .unwrap();
    phone.set_device_list(&full).unwrap();
    let before = rows(&phone);
    let newcomer = device("alice", 100, 3);
    let e = link_error(phone.link_device(newcomer.link_offer(now()).unwrap().code(), &alice, now()));
    assert_eq!((e.clone(), e.kind()), (LinkError::TooManyDevices, ErrorKind::LimitExceeded));
    assert_eq!(rows(&phone), before);

    // A device already listed with its key is provisioned again with no new
    // list: the same code scanned twice gives the same list.
    let small =
        DeviceList::new("alice", 2, &alice.public_key(), [(1, phone.identity_key())]).unwrap().sign(&alice).unwrap();
    phone.set_device_list(&small).unwrap();
    let laptop = device("alice", 2, 4);
    let offer = laptop.link_offer(now()).unwrap();
    let first = phone.link_device(offer.code(), &alice, now()).unwrap();
    let again = phone.link_device(offer.code(), &alice, now()).unwrap();
    assert!(first.list_changed && !again.list_changed);
    assert_eq!(again.device_list, first.device_list);
    assert_ne!(again.message, first.message, "a fresh sealing");
    // Either message links the laptop (the first was lost, say).
    laptop.finish_link(&offer, &again.message, now()).unwrap();
}

/// A reinstalled device under its old device id, with a new identity key:
/// linking it replaces its entry (a new version), and the old key is no
/// longer listed.
#[test]
fn a_reinstalled_device_replaces_its_entry() {
    let World { alice, phone, bob } = world();
    let old = device("alice", 2, 3);
    let offer = old.link_offer(now()).unwrap();
    let first = phone.link_device(offer.code(), &alice, now()).unwrap();
    let reinstalled = device("alice", 2, 9);
    let offer2 = reinstalled.link_offer(now()).unwrap();
    let second = phone.link_device(offer2.code(), &alice, now()).unwrap();
    let list = second.device_list.verify().unwrap();
    assert_eq!(list.version(), 3);
    assert_eq!(list.device(2), Some(&reinstalled.identity_key()));
    reinstalled.finish_link(&offer2, &second.message, now()).unwrap();
    // The first message names the old key with the old list: the old
    // device takes it (its own key is listed there), but Bob, given the
    // newest list, refuses the old device.
    old.finish_link(&offer, &first.message, now()).unwrap();
    bob.update_device_list(&second.device_list).unwrap();
    assert!(matches!(
        bob.start_session(&old.prekey_bundle().unwrap()),
        Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { device_id: 2 }))
    ));
}

/// A code altered to carry another identity key (or another device id)
/// than the device's: the list the linking device makes names that key,
/// and the device refuses the provisioning (its own key is not listed).
#[test]
fn a_provisioning_that_does_not_list_the_device_is_refused() {
    let World { alice, phone, .. } = world();
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(now()).unwrap();
    let mut code = wire::LinkCode::decode(offer.code()).unwrap();
    code.identity_key = IdentityKeyPair::generate(&mut samizdat::os_rng()).public_key().as_bytes().to_vec();
    let swapped_key = code.encode_to_vec();
    let mut code = wire::LinkCode::decode(offer.code()).unwrap();
    code.device_id = 7;
    let swapped_id = code.encode_to_vec();
    let before = rows(&laptop);
    for bad in [swapped_key, swapped_id] {
        // The code is bound into the key: a changed code opens nothing.
        let linked = phone.link_device(&bad, &alice, now()).unwrap();
        assert_eq!(link_error(laptop.finish_link(&offer, &linked.message, now())), LinkError::WrongCode);
    }
    assert_eq!(rows(&laptop), before);
}

/// A pin the new device holds already stands: a contact's list under
/// another user key in the provisioning does not replace it, and one that
/// is newer under the same key updates it.
#[test]
fn the_new_devices_own_pins_stand() {
    let World { alice, phone, bob } = world();
    let laptop = device("alice", 2, 3);
    // The laptop pinned a "bob" under another user key (a server's bundle, say).
    let fake_bob_user = user_key(0xEE);
    let fake = device("bob", 1, 8);
    fake.set_device_list(
        &DeviceList::new("bob", 5, &fake_bob_user.public_key(), [(1, fake.identity_key())])
            .unwrap()
            .sign(&fake_bob_user)
            .unwrap(),
    )
    .unwrap();
    laptop.start_session(&fake.prekey_bundle().unwrap()).unwrap();
    let pinned_before = laptop.user_trust("bob").unwrap().unwrap();
    let offer = laptop.link_offer(now()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, now()).unwrap();
    let provisioned = laptop.finish_link(&offer, &linked.message, now()).unwrap();
    assert_eq!((provisioned.pinned_users, provisioned.newly_pinned), (1, 0));
    assert_eq!(laptop.user_trust("bob").unwrap().unwrap(), pinned_before, "the laptop's own decision stands");
    let _ = bob;
}

/// A memory store whose writes fail while `fail` is set.
struct Failing {
    store: Arc<MemoryBackend>,
    fail: AtomicBool,
}

impl Backend for Failing {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.store.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::other("the write point failed")));
        }
        self.store.apply(writes)
    }
}

/// The write points: a failure of the linking device's write returns no
/// message and leaves its list as it was; a failure of the new device's
/// write leaves nothing pinned and the offer usable, and the same message
/// links it when tried again.
#[test]
fn failed_write_points_leave_nothing_and_the_link_succeeds_when_tried_again() {
    let alice = user_key(0xA0);
    let store = Arc::new(MemoryBackend::new());
    let phone = Device::create_in(
        Failing { store: store.clone(), fail: false.into() },
        &StorageKey::from_bytes([1; 32]),
        Address::new("alice", 1).unwrap(),
        now(),
    )
    .unwrap();
    phone
        .set_device_list(
            &DeviceList::new("alice", 1, &alice.public_key(), [(1, phone.identity_key())])
                .unwrap()
                .sign(&alice)
                .unwrap(),
        )
        .unwrap();
    let laptop_store = Arc::new(MemoryBackend::new());
    let laptop = Device::create_in(
        Failing { store: laptop_store.clone(), fail: false.into() },
        &StorageKey::from_bytes([3; 32]),
        Address::new("alice", 2).unwrap(),
        now(),
    )
    .unwrap();
    let offer = laptop.link_offer(now()).unwrap();

    let before = store.snapshot();
    phone.backend().fail.store(true, Ordering::SeqCst);
    assert!(matches!(phone.link_device(offer.code(), &alice, now()), Err(DeviceError::Store(StoreError::Io(_)))));
    assert_eq!(store.snapshot(), before);
    phone.backend().fail.store(false, Ordering::SeqCst);
    let linked = phone.link_device(offer.code(), &alice, now()).unwrap();
    assert!(linked.list_changed);

    let before = laptop_store.snapshot();
    laptop.backend().fail.store(true, Ordering::SeqCst);
    assert!(matches!(laptop.finish_link(&offer, &linked.message, now()), Err(DeviceError::Store(StoreError::Io(_)))));
    assert_eq!(laptop_store.snapshot(), before);
    assert_eq!(laptop.device_list().unwrap(), None);
    laptop.backend().fail.store(false, Ordering::SeqCst);
    laptop.finish_link(&offer, &linked.message, now()).unwrap();
    assert_eq!(laptop.device_list().unwrap(), Some(linked.device_list));
}

/// The code parses as the device that made it; its Debug shows no secret.
#[test]
fn a_code_names_its_device_and_debug_shows_no_secret() {
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(now()).unwrap();
    let code = LinkCode::from_bytes(offer.code()).unwrap();
    assert_eq!(code.address(), laptop.address());
    assert_eq!(*code.identity_key(), laptop.identity_key());
    let secret = wire::LinkCode::decode(offer.code()).unwrap().secret;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    for shown in [format!("{offer:?}"), format!("{code:?}")] {
        assert!(!shown.contains(&hex) && !shown.contains(&format!("{secret:?}")), "{shown}");
    }
}
