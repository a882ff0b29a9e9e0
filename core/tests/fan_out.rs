//! Sending to users, not devices (issue 17; PROTOCOL.md 23.4, 23.6, 23.7):
//! a fan-out reaches every device of a contact's pinned verified list that
//! has a session, and every other device of our own list as a sent sync, in
//! one transaction; devices without a session are reported; a ghost or a
//! removed device gets nothing; a sent sync is accepted only from a device
//! our own list names; per-user safety numbers are the same on both sides,
//! stable across device changes, changed by a new user identity. Every
//! refusal is checked to leave every row of the store as it was.
//!
//! Three users: Alice (devices 1 and 2), Bob (1 to 3), Carol (1). Each
//! user's devices hold the user's identity and set the user's list.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::UNIX_EPOCH,
};

use samizdat::{
    DecodeError, EncryptError, ErrorKind, SessionError,
    address::{Address, MAX_USER_ID_LEN},
    device::{Device, DeviceError, MessageKind, Outgoing},
    fingerprint::SafetyNumber,
    limits::MAX_FAN_OUT_PLAINTEXT_LEN,
    store::{Backend, MemoryBackend, Row, StorageKey, StoreError, Table, Write},
    user::{DeviceListError, UserIdentityKeyPair},
};
use support::{
    Got, receive_kind,
    users::{device, list, refusal, rows, user_key},
};

type Dev = Device<MemoryBackend>;

struct World {
    a1: Dev,
    a2: Dev,
    b1: Dev,
    b2: Dev,
    b3: Dev,
    c1: Dev,
    alice: UserIdentityKeyPair,
    bob: UserIdentityKeyPair,
}

/// The three users, each device holding its user's list (version 1); no
/// session yet, and no contact pinned.
fn world() -> World {
    let (a1, a2) = (device("alice", 1, 0xA1), device("alice", 2, 0xA2));
    let (b1, b2, b3) = (device("bob", 1, 0xB1), device("bob", 2, 0xB2), device("bob", 3, 0xB3));
    let c1 = device("carol", 1, 0xC1);
    let (alice, bob, carol) = (user_key(0xA0), user_key(0xB0), user_key(0xC0));
    let alice_list = list(&alice, "alice", 1, &[&a1, &a2]);
    let bob_list = list(&bob, "bob", 1, &[&b1, &b2, &b3]);
    for d in [&a1, &a2] {
        d.set_device_list(&alice_list).unwrap();
    }
    for d in [&b1, &b2, &b3] {
        d.set_device_list(&bob_list).unwrap();
    }
    c1.set_device_list(&list(&carol, "carol", 1, &[&c1])).unwrap();
    World { a1, a2, b1, b2, b3, c1, alice, bob }
}

/// [`world`], with Alice's device 1 holding a session with every other
/// device (from their bundles, which pin Bob and Carol).
fn connected() -> World {
    let w = world();
    for other in [&w.b1, &w.b2, &w.b3, &w.c1, &w.a2] {
        w.a1.start_session(&other.prekey_bundle().unwrap()).unwrap();
    }
    w
}

fn addresses(out: &[Outgoing]) -> Vec<Address> {
    out.iter().map(|o| o.to.clone()).collect()
}

fn at(user: &str, id: u32) -> Address {
    Address::new(user, id).unwrap()
}

/// The rows of `after` that differ from `before` (changed, added or
/// removed).
fn changed(
    before: &BTreeMap<(Table, Vec<u8>), Vec<u8>>,
    after: &BTreeMap<(Table, Vec<u8>), Vec<u8>>,
) -> (usize, usize, usize) {
    let rewritten = before.iter().filter(|(k, v)| after.get(*k).is_some_and(|w| w != *v)).count();
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    (rewritten, added, removed)
}

/// The sent sync's control content, built by hand from PROTOCOL.md 23.7
/// (not by the library): `0x2a len(S) S`, `S = 0x0a len(r) r 0x12 len(p) p`,
/// for short fields.
fn sync_content(recipient: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut s = vec![0x0a, u8::try_from(recipient.len()).unwrap()];
    s.extend_from_slice(recipient.as_bytes());
    s.extend_from_slice(&[0x12, u8::try_from(plaintext.len()).unwrap()]);
    s.extend_from_slice(plaintext);
    [vec![0x2a, u8::try_from(s.len()).unwrap()], s].concat()
}

#[test]
fn a_fan_out_reaches_every_listed_device_and_our_other_device() {
    let w = connected();
    let before = rows(&w.a1);
    let sent = w.a1.encrypt_to_user("bob", b"hello Bob").unwrap();
    assert_eq!(addresses(&sent.messages), [at("bob", 1), at("bob", 2), at("bob", 3)]);
    assert_eq!(addresses(&sent.syncs), [at("alice", 2)]);
    assert!(sent.missing.is_empty());
    // One session row advanced per message, nothing else.
    assert_eq!(changed(&before, &rows(&w.a1)), (4, 0, 0));
    for (bob, out) in [&w.b1, &w.b2, &w.b3].into_iter().zip(&sent.messages) {
        assert_eq!(receive_kind(bob, &w.a1, &out.message).unwrap(), Got::App(b"hello Bob".to_vec()));
    }
    // Alice's other device learns what was sent, and to whom.
    let pending = w.a2.decrypt(w.a1.address(), &sent.syncs[0].message).unwrap();
    assert_eq!(pending.kind(), MessageKind::SentSync);
    assert_eq!(pending.sync_recipient(), Some("bob"));
    assert_eq!(pending.plaintext(), b"hello Bob");
    assert_eq!(pending.sender_identity(), Some(w.a1.identity_key()));
    w.a2.commit(pending).unwrap();

    // The sessions go on: a second fan-out, and replies the other way.
    let again = w.a1.encrypt_to_user("bob", b"again").unwrap();
    for (bob, out) in [&w.b1, &w.b2, &w.b3].into_iter().zip(&again.messages) {
        assert_eq!(receive_kind(bob, &w.a1, &out.message).unwrap(), Got::App(b"again".to_vec()));
        let reply = bob.encrypt(w.a1.address(), b"reply").unwrap();
        assert_eq!(receive_kind(&w.a1, bob, &reply).unwrap(), Got::App(b"reply".to_vec()));
    }
    assert_eq!(
        receive_kind(&w.a2, &w.a1, &again.syncs[0].message).unwrap(),
        Got::SentSync("bob".into(), b"again".to_vec())
    );

    // Carol has one device: one message, and the sync names Carol.
    let sent = w.a1.encrypt_to_user("carol", b"hello Carol").unwrap();
    assert_eq!(addresses(&sent.messages), [at("carol", 1)]);
    assert_eq!(receive_kind(&w.c1, &w.a1, &sent.messages[0].message).unwrap(), Got::App(b"hello Carol".to_vec()));
    assert_eq!(
        receive_kind(&w.a2, &w.a1, &sent.syncs[0].message).unwrap(),
        Got::SentSync("carol".into(), b"hello Carol".to_vec())
    );
}

#[test]
fn devices_without_a_session_are_missing_until_the_app_starts_one() {
    let w = world();
    w.a1.start_session(&w.b1.prekey_bundle().unwrap()).unwrap();
    let before = rows(&w.a1);
    let sent = w.a1.encrypt_to_user("bob", b"hi").unwrap();
    assert_eq!(addresses(&sent.messages), [at("bob", 1)]);
    assert!(sent.syncs.is_empty());
    assert_eq!(sent.missing, [at("bob", 2), at("bob", 3), at("alice", 2)]);
    // Only the one session advanced; no row made for the missing devices.
    assert_eq!(changed(&before, &rows(&w.a1)), (1, 0, 0));
    assert_eq!(receive_kind(&w.b1, &w.a1, &sent.messages[0].message).unwrap(), Got::App(b"hi".to_vec()));

    // The app fetches their bundles, starts sessions, and sends to them alone.
    for other in [&w.b2, &w.b3, &w.a2] {
        w.a1.start_session(&other.prekey_bundle().unwrap()).unwrap();
    }
    let rest = w.a1.encrypt_to_user_devices("bob", b"hi", &sent.missing).unwrap();
    assert_eq!(addresses(&rest.messages), [at("bob", 2), at("bob", 3)]);
    assert_eq!(addresses(&rest.syncs), [at("alice", 2)]);
    assert!(rest.missing.is_empty());
    for (bob, out) in [&w.b2, &w.b3].into_iter().zip(&rest.messages) {
        assert_eq!(receive_kind(bob, &w.a1, &out.message).unwrap(), Got::App(b"hi".to_vec()));
    }
    assert_eq!(
        receive_kind(&w.a2, &w.a1, &rest.syncs[0].message).unwrap(),
        Got::SentSync("bob".into(), b"hi".to_vec())
    );

    // Devices that are not the fan-out's are refused, writing nothing.
    let before = rows(&w.a1);
    let unlisted = w.a1.encrypt_to_user_devices("bob", b"x", &[at("bob", 1), at("bob", 9)]);
    assert_eq!(refusal(unlisted), DeviceListError::UnlistedDevice { device_id: 9 });
    for wrong in [at("carol", 1), w.a1.address().clone()] {
        let result = w.a1.encrypt_to_user_devices("bob", b"x", &[wrong]);
        assert!(
            matches!(result, Err(DeviceError::InvalidArgument(DecodeError::InvalidValue("devices")))),
            "{result:?}"
        );
    }
    assert_eq!(rows(&w.a1), before);
}

#[test]
fn a_ghost_device_with_a_session_receives_nothing() {
    let w = world();
    // A session with a ghost of Bob's, started before Alice pinned Bob (a
    // bundle without a list: trusted per device then), then Bob's genuine
    // bundles pin his list, which does not name it.
    let ghost = device("bob", 9, 0x99);
    w.a1.start_session(&ghost.prekey_bundle().unwrap()).unwrap();
    for bob in [&w.b1, &w.b2, &w.b3] {
        w.a1.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    }
    assert!(w.a1.has_session(ghost.address()).unwrap());
    let before = rows(&w.a1);
    let sent = w.a1.encrypt_to_user("bob", b"not for the ghost").unwrap();
    assert_eq!(addresses(&sent.messages), [at("bob", 1), at("bob", 2), at("bob", 3)]);
    assert_eq!(sent.missing, [at("alice", 2)]);
    // Three rows advanced: the ghost's is not among them.
    assert_eq!(changed(&before, &rows(&w.a1)), (3, 0, 0));
    for out in &sent.messages {
        assert!(ghost.decrypt(w.a1.address(), &out.message).is_err(), "the ghost read a message to {}", out.to);
    }
    assert!(matches!(
        refusal(w.a1.encrypt_to_user_devices("bob", b"x", &[ghost.address().clone()])),
        DeviceListError::UnlistedDevice { device_id: 9 }
    ));
}

#[test]
fn a_device_a_newer_list_removed_receives_nothing_after_the_update() {
    let w = connected();
    let sent = w.a1.encrypt_to_user("bob", b"before").unwrap();
    assert!(addresses(&sent.messages).contains(&at("bob", 3)));
    // Bob removes device 3.
    let newer = list(&w.bob, "bob", 2, &[&w.b1, &w.b2]);
    w.b1.set_device_list(&newer).unwrap();
    w.a1.update_device_list(&newer).unwrap();
    let before = rows(&w.a1);
    let sent = w.a1.encrypt_to_user("bob", b"after").unwrap();
    assert_eq!(addresses(&sent.messages), [at("bob", 1), at("bob", 2)]);
    assert!(sent.missing.is_empty());
    assert_eq!(changed(&before, &rows(&w.a1)), (3, 0, 0)); // Bob 1 and 2, Alice 2
    for out in sent.messages.iter().chain(&sent.syncs) {
        assert!(w.b3.decrypt(w.a1.address(), &out.message).is_err());
    }
    // A device the list adds back is reached again.
    let back = list(&w.bob, "bob", 3, &[&w.b1, &w.b2, &w.b3]);
    w.a1.update_device_list(&back).unwrap();
    let sent = w.a1.encrypt_to_user("bob", b"back").unwrap();
    assert_eq!(addresses(&sent.messages), [at("bob", 1), at("bob", 2), at("bob", 3)]);
}

#[test]
fn a_reinstalled_device_is_missing_until_the_app_trusts_its_new_key() {
    let w = connected();
    // Bob's device 2 is reinstalled: a new identity key under the same
    // address, which Bob's newer list names.
    let b2_new = device("bob", 2, 0xB5);
    let newer = list(&w.bob, "bob", 2, &[&w.b1, &b2_new, &w.b3]);
    for d in [&w.b1, &b2_new, &w.b3] {
        d.set_device_list(&newer).unwrap();
    }
    w.a1.update_device_list(&newer).unwrap();
    // The old session trusts the old key: nothing for it, it is missing.
    let before = rows(&w.a1);
    let sent = w.a1.encrypt_to_user("bob", b"hi").unwrap();
    assert_eq!(addresses(&sent.messages), [at("bob", 1), at("bob", 3)]);
    assert_eq!(sent.missing, [at("bob", 2)]);
    assert_eq!(changed(&before, &rows(&w.a1)), (3, 0, 0)); // Bob 1 and 3, Alice 2
    // Its new bundle is a changed identity (9.2): the app's decision.
    let bundle = b2_new.prekey_bundle().unwrap();
    let result = w.a1.start_session(&bundle);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::UntrustedIdentity { .. }))), "{result:?}");
    w.a1.trust_identity(&at("bob", 2), b2_new.identity_key()).unwrap();
    w.a1.start_session(&bundle).unwrap();
    let rest = w.a1.encrypt_to_user_devices("bob", b"hi", &sent.missing).unwrap();
    assert_eq!(addresses(&rest.messages), [at("bob", 2)]);
    assert_eq!(receive_kind(&b2_new, &w.a1, &rest.messages[0].message).unwrap(), Got::App(b"hi".to_vec()));
}

#[test]
fn a_user_that_is_not_pinned_is_a_typed_error_and_writes_nothing() {
    let w = world();
    // Dave has no list: a session with his device is trusted per device,
    // but a fan-out needs his list.
    let dave = device("dave", 1, 0xD1);
    w.a1.start_session(&dave.prekey_bundle().unwrap()).unwrap();
    let before = rows(&w.a1);
    for user in ["dave", "nobody"] {
        let error = w.a1.encrypt_to_user(user, b"hi").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NoSession);
        assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::NotPinned { user_id: user.to_owned() });
        assert_eq!(refusal(w.a1.user_safety_number(user)), DeviceListError::NotPinned { user_id: user.to_owned() });
    }
    // Our own user is not a contact.
    let own = w.a1.encrypt_to_user("alice", b"hi");
    assert!(matches!(own, Err(DeviceError::InvalidArgument(DecodeError::InvalidValue("user_id")))), "{own:?}");
    assert_eq!(rows(&w.a1), before);
}

#[test]
fn the_plaintext_limit_leaves_room_for_the_longest_recipient() {
    // A contact whose user id is as long as a user id may be.
    let long = "u".repeat(MAX_USER_ID_LEN);
    let w = world();
    let contact = device(&long, 1, 0x10);
    contact.set_device_list(&list(&user_key(0x11), &long, 1, &[&contact])).unwrap();
    w.a1.start_session(&contact.prekey_bundle().unwrap()).unwrap();
    w.a1.start_session(&w.a2.prekey_bundle().unwrap()).unwrap();
    let largest = vec![0x42; MAX_FAN_OUT_PLAINTEXT_LEN];
    let sent = w.a1.encrypt_to_user(&long, &largest).unwrap();
    assert_eq!(receive_kind(&contact, &w.a1, &sent.messages[0].message).unwrap(), Got::App(largest.clone()));
    assert_eq!(receive_kind(&w.a2, &w.a1, &sent.syncs[0].message).unwrap(), Got::SentSync(long.clone(), largest));
    // One byte more is refused before anything is computed or written.
    let before = rows(&w.a1);
    let result = w.a1.encrypt_to_user(&long, &vec![0x42; MAX_FAN_OUT_PLAINTEXT_LEN + 1]);
    assert!(
        matches!(
            result,
            Err(DeviceError::Session(SessionError::Encrypt(EncryptError::MessageTooLarge { len, max })))
                if len == MAX_FAN_OUT_PLAINTEXT_LEN + 1 && max == MAX_FAN_OUT_PLAINTEXT_LEN
        ),
        "{result:?}"
    );
    assert_eq!(rows(&w.a1), before);
}

/// A memory store that counts its transactions and can refuse them:
/// `Conflict` a given number of times (another handle writing first), or
/// a failure of the backend (a full disk) while `fail` is set.
#[derive(Default)]
struct Flaky {
    store: MemoryBackend,
    applies: AtomicUsize,
    conflicts: AtomicUsize,
    fail: Mutex<bool>,
}

impl Backend for Flaky {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.store.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if *self.fail.lock().unwrap() {
            return Err(StoreError::Backend("the disk is full".into()));
        }
        if self.conflicts.load(Ordering::SeqCst) > 0 {
            self.conflicts.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Conflict { table: Table::Sessions });
        }
        self.store.apply(writes)
    }
}

#[test]
fn the_fan_out_is_one_transaction_and_a_failed_one_writes_nothing() {
    let w = world();
    let a1 =
        Device::create_in(Flaky::default(), &StorageKey::from_bytes([0xA1; 32]), at("alice", 1), UNIX_EPOCH).unwrap();
    // Alice's list names this device 1 (not the world's) and device 2.
    let alice_list = {
        let entries = [(1, a1.identity_key()), (2, w.a2.identity_key())];
        samizdat::user::DeviceList::new("alice", 2, &w.alice.public_key(), entries).unwrap().sign(&w.alice).unwrap()
    };
    a1.set_device_list(&alice_list).unwrap();
    w.a2.set_device_list(&alice_list).unwrap();
    for other in [&w.b1, &w.b2, &w.b3, &w.a2] {
        a1.start_session(&other.prekey_bundle().unwrap()).unwrap();
    }
    let snapshot = |d: &Device<Flaky>| d.backend().store.snapshot();

    // Four sessions advanced, one transaction.
    let applies = a1.backend().applies.load(Ordering::SeqCst);
    let sent = a1.encrypt_to_user("bob", b"one").unwrap();
    assert_eq!((sent.messages.len(), sent.syncs.len()), (3, 1));
    assert_eq!(a1.backend().applies.load(Ordering::SeqCst), applies + 1);

    // The backend fails: an error, no row changed, nothing handed out.
    let before = snapshot(&a1);
    *a1.backend().fail.lock().unwrap() = true;
    let failed = a1.encrypt_to_user("bob", b"lost");
    assert!(matches!(failed, Err(DeviceError::Store(StoreError::Backend(_)))), "{failed:?}");
    *a1.backend().fail.lock().unwrap() = false;
    assert_eq!(snapshot(&a1), before);

    // Another handle wins the write twice: the fan-out reads again and
    // computes again; what it returns is what was written.
    a1.backend().conflicts.store(2, Ordering::SeqCst);
    let applies = a1.backend().applies.load(Ordering::SeqCst);
    let retried = a1.encrypt_to_user("bob", b"two").unwrap();
    assert_eq!(a1.backend().applies.load(Ordering::SeqCst), applies + 3);
    // Every device reads both messages in order: the first fan-out's, then
    // the retried one's (the failed calls used no message key).
    for (i, bob) in [&w.b1, &w.b2, &w.b3].into_iter().enumerate() {
        let first = bob.decrypt(a1.address(), &sent.messages[i].message).unwrap();
        assert_eq!(first.plaintext(), b"one");
        bob.commit(first).unwrap();
        let second = bob.decrypt(a1.address(), &retried.messages[i].message).unwrap();
        assert_eq!(second.plaintext(), b"two");
        bob.commit(second).unwrap();
    }
    for (sync, text) in [(&sent.syncs[0], b"one"), (&retried.syncs[0], b"two")] {
        let pending = w.a2.decrypt(a1.address(), &sync.message).unwrap();
        assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::SentSync, &text[..]));
        w.a2.commit(pending).unwrap();
    }
}

/// Two handles of one store fan out at once: every fan-out's write is
/// conditional on the rows it read, so no message key is used twice; each
/// of the 2 x 8 messages decrypts once on every device. A fan-out that the
/// other handle kept beating for `MAX_WRITE_ATTEMPTS` attempts fails with
/// `Conflict` (`store_busy`, having written nothing): the app calls again,
/// as here.
#[test]
fn two_handles_fanning_out_at_once_never_reuse_a_key() {
    let w = world();
    let store = std::sync::Arc::new(MemoryBackend::new());
    let key = StorageKey::from_bytes([0x1A; 32]);
    let first = Device::create_in(store.clone(), &key, at("alice", 1), UNIX_EPOCH).unwrap();
    let second = Device::open_in(store.clone(), &key).unwrap();
    let alice_list = {
        let entries = [(1, first.identity_key()), (2, w.a2.identity_key())];
        samizdat::user::DeviceList::new("alice", 2, &w.alice.public_key(), entries).unwrap().sign(&w.alice).unwrap()
    };
    first.set_device_list(&alice_list).unwrap();
    w.a2.set_device_list(&alice_list).unwrap();
    for other in [&w.b1, &w.b2, &w.b3, &w.a2] {
        first.start_session(&other.prekey_bundle().unwrap()).unwrap();
    }
    let sent: Vec<Vec<samizdat::device::FanOut>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&first, &second]
            .into_iter()
            .enumerate()
            .map(|(h, handle)| {
                scope.spawn(move || {
                    let send = |text: String| {
                        for _ in 0..100 {
                            match handle.encrypt_to_user("bob", text.as_bytes()) {
                                Err(e) if e.kind() == ErrorKind::StoreBusy => continue,
                                result => return result.unwrap(),
                            }
                        }
                        panic!("store busy 100 times in a row");
                    };
                    (0..8).map(|i| send(format!("h{h} m{i}"))).collect()
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let all: Vec<&samizdat::device::FanOut> = sent.iter().flatten().collect();
    assert_eq!(all.len(), 16);
    for (i, bob) in [&w.b1, &w.b2, &w.b3].into_iter().enumerate() {
        let mut read: Vec<Vec<u8>> = Vec::new();
        for out in &all {
            assert_eq!(out.messages[i].to, *bob.address());
            let pending = bob.decrypt(first.address(), &out.messages[i].message).unwrap();
            read.push(pending.plaintext().to_vec());
            bob.commit(pending).unwrap();
        }
        read.sort();
        read.dedup();
        assert_eq!(read.len(), 16, "a message of {} read twice or lost", bob.address());
    }
    for out in &all {
        let pending = w.a2.decrypt(first.address(), &out.syncs[0].message).unwrap();
        assert_eq!(pending.kind(), MessageKind::SentSync);
        w.a2.commit(pending).unwrap();
    }
}

#[test]
fn a_sent_sync_in_a_batch_is_left_for_decrypt() {
    let w = connected();
    let sent = w.a1.encrypt_to_user("bob", b"hi").unwrap();
    let batch = w.a2.decrypt_batch(&[(w.a1.address().clone(), sent.syncs[0].message.clone())]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::NotInBatch)));
    drop(batch);
    assert_eq!(
        receive_kind(&w.a2, &w.a1, &sent.syncs[0].message).unwrap(),
        Got::SentSync("bob".into(), b"hi".to_vec())
    );
}

#[test]
fn a_sent_sync_from_an_unlisted_own_device_is_refused_and_changes_nothing() {
    let w = connected();
    // Alice's device 2 gets a session with Bob, then Alice's list drops it.
    w.a2.start_session(&w.b1.prekey_bundle().unwrap()).unwrap();
    let first = w.a1.encrypt_to_user("bob", b"first").unwrap();
    receive_kind(&w.a2, &w.a1, &first.syncs[0].message).unwrap();
    let without = list(&w.alice, "alice", 2, &[&w.a1]);
    w.a1.set_device_list(&without).unwrap();
    // Device 2 still holds version 1, which names device 1: its fan-out
    // sends device 1 a sync.
    let sent = w.a2.encrypt_to_user("bob", b"from the dropped device").unwrap();
    assert_eq!(addresses(&sent.syncs), [at("alice", 1)]);
    let before = rows(&w.a1);
    let refused = w.a1.decrypt(w.a2.address(), &sent.syncs[0].message);
    assert_eq!(refusal(refused), DeviceListError::UnlistedDevice { device_id: 2 });
    assert_eq!(rows(&w.a1), before);
}

#[test]
fn a_sent_sync_needs_our_own_list_and_is_read_once_it_is_set() {
    // Alice's device 1 has not set her list yet; device 2 has.
    let (a1, a2) = (device("alice", 1, 0xA1), device("alice", 2, 0xA2));
    let (b1, alice) = (device("bob", 1, 0xB1), user_key(0xA0));
    b1.set_device_list(&list(&user_key(0xB0), "bob", 1, &[&b1])).unwrap();
    let alice_list = list(&alice, "alice", 1, &[&a1, &a2]);
    a2.set_device_list(&alice_list).unwrap();
    for other in [&a1, &b1] {
        a2.start_session(&other.prekey_bundle().unwrap()).unwrap();
    }
    let sent = a2.encrypt_to_user("bob", b"hi").unwrap();
    let before = rows(&a1);
    let error = a1.decrypt(a2.address(), &sent.syncs[0].message).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::NoOwnList);
    assert_eq!(rows(&a1), before);
    // The recovery: set the list, decrypt again.
    a1.set_device_list(&alice_list).unwrap();
    assert_eq!(receive_kind(&a1, &a2, &sent.syncs[0].message).unwrap(), Got::SentSync("bob".into(), b"hi".to_vec()));
}

/// A contact's modified library seals a sent sync by hand on its session
/// with Alice: refused, every row unchanged, and Bob's genuine next message
/// (on the same counter) still reads. The same forgery from Alice's own
/// listed device is accepted: the refusal is the sender check's.
#[cfg(feature = "hazmat")]
#[test]
fn a_forged_sent_sync_from_a_contact_is_refused_and_changes_nothing() {
    use support::users::forged_control;

    let w = connected();
    let sent = w.a1.encrypt_to_user("bob", b"hi").unwrap();
    receive_kind(&w.b1, &w.a1, &sent.messages[0].message).unwrap();
    receive_kind(&w.a2, &w.a1, &sent.syncs[0].message).unwrap();
    let content = sync_content("carol", b"I never sent this");

    let forged = forged_control(&w.b1, 0xB1, w.a1.address(), &content);
    let before = rows(&w.a1);
    let error = w.a1.decrypt(w.b1.address(), &forged).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidMessage);
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::ForeignSentSync { user_id: "bob".into() });
    assert_eq!(rows(&w.a1), before);
    let genuine = w.b1.encrypt(w.a1.address(), b"genuine").unwrap();
    assert_eq!(receive_kind(&w.a1, &w.b1, &genuine).unwrap(), Got::App(b"genuine".to_vec()));

    // A malformed sync from our own device is a malformed message (Y2: no
    // recipient), refused without a change.
    let empty = forged_control(&w.a2, 0xA2, w.a1.address(), &[0x2a, 0x00]);
    let before = rows(&w.a1);
    let result = w.a1.decrypt(w.a2.address(), &empty);
    assert!(
        matches!(
            result,
            Err(DeviceError::Session(SessionError::Malformed(DecodeError::MissingField("sent_sync.recipient"))))
        ),
        "{result:?}"
    );
    assert_eq!(rows(&w.a1), before);

    // The control: the same content as Bob's, sealed so by Alice's device 2
    // (on the counter the malformed one did not use up).
    let from_own = forged_control(&w.a2, 0xA2, w.a1.address(), &content);
    assert_eq!(
        receive_kind(&w.a1, &w.a2, &from_own).unwrap(),
        Got::SentSync("carol".into(), b"I never sent this".to_vec())
    );
}

#[test]
fn user_safety_numbers_match_stay_across_devices_and_change_with_the_identity() {
    let w = connected();
    // Bob's device pins Alice from her list.
    w.b1.update_device_list(&list(&w.alice, "alice", 1, &[&w.a1, &w.a2])).unwrap();
    let number = w.a1.user_safety_number("bob").unwrap().digits().to_owned();
    // The scanned code of one side matches on the other.
    let scanned = w.b1.user_safety_number("alice").unwrap().scannable();
    w.a1.user_safety_number("bob").unwrap().compare_scanned(&scanned).unwrap();
    assert_eq!(number, w.b1.user_safety_number("alice").unwrap().digits().to_owned());
    // From the two user identity keys alone, whatever the devices.
    assert_eq!(number, SafetyNumber::for_users("alice", &w.alice.public_key(), "bob", &w.bob.public_key()).digits());
    // It is not a device's safety number.
    assert_ne!(number, w.a1.safety_number(w.b1.address()).unwrap().digits());

    // Bob links a fourth device: a newer list, the same number.
    let b4 = device("bob", 4, 0xB4);
    let newer = list(&w.bob, "bob", 2, &[&w.b1, &w.b2, &w.b3, &b4]);
    w.b1.set_device_list(&newer).unwrap();
    w.a1.update_device_list(&newer).unwrap();
    assert_eq!(w.a1.user_safety_number("bob").unwrap().digits().to_owned(), number);
    assert_eq!(w.b1.user_safety_number("alice").unwrap().digits().to_owned(), number);

    // Bob moves to a new user identity: Alice's device trusts it only by her
    // decision, and the number changes, the same on both sides again.
    let bob_new = user_key(0xB7);
    let renewed = list(&bob_new, "bob", 1, &[&w.b1, &w.b2]);
    let before = rows(&w.a1);
    assert!(matches!(refusal(w.a1.update_device_list(&renewed)), DeviceListError::UntrustedUser { .. }));
    assert_eq!(w.a1.user_safety_number("bob").unwrap().digits().to_owned(), number);
    assert_eq!(rows(&w.a1), before);
    w.a1.trust_new_user_identity(&renewed).unwrap();
    w.b1.set_device_list(&renewed).unwrap();
    let changed_number = w.a1.user_safety_number("bob").unwrap().digits().to_owned();
    assert_ne!(changed_number, number);
    assert_eq!(changed_number, w.b1.user_safety_number("alice").unwrap().digits().to_owned());
    assert_eq!(
        changed_number,
        SafetyNumber::for_users("alice", &w.alice.public_key(), "bob", &bob_new.public_key()).digits()
    );

    // Without our own list there is no user identity to compute from.
    let lone = device("erin", 1, 0xE1);
    lone.update_device_list(&renewed).unwrap();
    let before = rows(&lone);
    let error = lone.user_safety_number("bob").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::NoOwnList);
    assert_eq!(rows(&lone), before);
    // Carol's device has not pinned Alice.
    assert_eq!(refusal(w.c1.user_safety_number("alice")), DeviceListError::NotPinned { user_id: "alice".into() });
}
