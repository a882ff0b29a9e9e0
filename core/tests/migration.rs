//! Stores written by an earlier schema open, migrate and keep working; the
//! golden stores of every schema (`data/schema1` to `schema4`, with
//! their storage keys and the conversations that made them, documented
//! below) go on with their conversations; a newer schema is refused.
//!
//! `data/schema1/` holds two stores of schema version 1 (release 0.2: the
//! tables `meta`, `identity`, `prekeys` and `sessions`, no `groups`): Alice's
//! and Bob's, with a session between them, and a message from Alice that Bob
//! has not decrypted yet. They were made by `make_schema1_stores` below and
//! then taken back to schema 1 (`DROP TABLE groups; PRAGMA user_version = 1;
//! VACUUM;` with Python's sqlite3), the row formats being those of release
//! 0.2. Opening them applies migration 2 (PROTOCOL.md 14.8, 18.9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use samizdat::store::StorageKey;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use samizdat::{
    address::Address,
    device::{Device, MessageKind},
};

const ALICE_KEY: StorageKey = StorageKey::from_bytes([0x11; 32]);
const BOB_KEY: StorageKey = StorageKey::from_bytes([0x22; 32]);
/// Bob's storage key before the rotation in the golden stores of schema 3.
const BOB_FIRST_KEY: StorageKey = StorageKey::from_bytes([0x21; 32]);

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema1")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("samizdat-migration-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn user_version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    // The SQLite header keeps the user version at offset 60, big-endian.
    u32::from_be_bytes(bytes[60..64].try_into().unwrap())
}

#[test]
fn schema_1_stores_open_migrate_and_gain_groups() {
    let dir = scratch("open");
    for name in ["alice.db", "bob.db", "message.bin"] {
        std::fs::copy(data().join(name), dir.join(name)).unwrap();
    }
    assert_eq!(user_version(&dir.join("alice.db")), 1);
    let alice = Device::open(dir.join("alice.db"), &ALICE_KEY).unwrap();
    let bob = Device::open(dir.join("bob.db"), &BOB_KEY).unwrap();
    // The message written before the migration decrypts after it.
    let message = std::fs::read(dir.join("message.bin")).unwrap();
    let pending = bob.decrypt(alice.address(), &message).unwrap();
    assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Direct, &b"written by schema 1"[..]));
    bob.commit(pending).unwrap();
    // Groups work on the migrated stores.
    alice.create_group(b"after", &[bob.address().clone()]).unwrap();
    bob.create_group(b"after", &[alice.address().clone()]).unwrap();
    let sent = alice.group_encrypt(b"after", b"group on a migrated store").unwrap();
    for d in &sent.distributions {
        bob.commit(bob.decrypt(alice.address(), &d.message).unwrap()).unwrap();
    }
    let pending = bob.decrypt(alice.address(), &sent.message).unwrap();
    assert_eq!(pending.plaintext(), b"group on a migrated store");
    bob.commit(pending).unwrap();
    drop((alice, bob));
    assert_eq!(user_version(&dir.join("alice.db")), samizdat::store::SCHEMA_VERSION);
    // And they open again, already migrated.
    let bob = Device::open(dir.join("bob.db"), &BOB_KEY).unwrap();
    assert_eq!(bob.group_members(b"after").unwrap(), vec![Address::new("alice", 1).unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Makes the stores of `data/schema1` (at the current schema; see the
/// module's documentation for the step back to schema 1).
#[test]
#[ignore = "run by hand to make the golden stores"]
fn make_schema1_stores() {
    let dir = scratch("make");
    let alice =
        Device::create(dir.join("alice.db"), &ALICE_KEY, Address::new("alice", 1).unwrap(), UNIX_EPOCH).unwrap();
    let bob = Device::create(dir.join("bob.db"), &BOB_KEY, Address::new("bob", 1).unwrap(), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt(bob.address(), b"hello").unwrap();
    bob.commit(bob.decrypt(alice.address(), &hello).unwrap()).unwrap();
    let back = bob.encrypt(alice.address(), b"hello back").unwrap();
    alice.commit(alice.decrypt(bob.address(), &back).unwrap()).unwrap();
    let message = alice.encrypt(bob.address(), b"written by schema 1").unwrap();
    std::fs::write(dir.join("message.bin"), message).unwrap();
    drop((alice, bob));
    println!("{}", dir.display());
}

/// The golden stores of a schema: Alice's and Bob's, made by
/// [`make_golden_stores`] with the code that wrote that schema (storage keys
/// [`ALICE_KEY`] and [`BOB_KEY`]): `schema2` by commit 1f0e46f (release
/// 0.4's rows, schema 2), `schema3` by commit 3b9f193 (schema 3, no table
/// `users`), `schema4` by this release (both devices hold their own device
/// list, and Alice pinned Bob's user from his bundle), Bob's store then
/// rotated from [`BOB_FIRST_KEY`] to [`BOB_KEY`] (so it holds the
/// naming-keys row, PROTOCOL.md 14.12). The conversation that made them:
/// Alice starts a session with Bob (Bob having refilled 5 one-time
/// prekeys), they exchange "hello" and "hello back", Alice sends two
/// messages kept in her outbox (`encrypt_kept` at times 100 and 101, one read
/// by Bob, one left unread in `message.bin`), both create the group "golden"
/// and each sends "group hello" (read by the other), then Alice sends
/// "group pending" (left unread in `group.bin`).
fn golden(schema: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/schema{schema}"))
}

/// Opens the golden stores of `schema` (migrating them to the current
/// schema) and goes on with their conversation.
fn golden_stores_go_on(schema: u32) {
    let dir = scratch(&format!("golden{schema}"));
    for name in ["alice.db", "bob.db", "message.bin", "group.bin"] {
        std::fs::copy(golden(schema).join(name), dir.join(name)).unwrap();
    }
    assert_eq!(user_version(&dir.join("alice.db")), schema);
    assert_eq!(user_version(&dir.join("bob.db")), schema);
    let alice = Device::open(dir.join("alice.db"), &ALICE_KEY).unwrap();
    let bob = Device::open(dir.join("bob.db"), &BOB_KEY).unwrap();
    assert_eq!(alice.outbox_len(bob.address()).unwrap(), 2, "the outbox survives");
    // Its index is in table `outboxes` (moved there from `sessions` when a
    // store of schema 2 is opened, PROTOCOL.md 20.3).
    use samizdat::store::{Backend, Table};
    assert_eq!(alice.backend().scan(Table::Outboxes).unwrap().len(), 1);
    assert!(!alice.backend().scan(Table::Sessions).unwrap().iter().any(|(key, _)| key.ends_with(b"/outbox")));
    assert_eq!(bob.prekey_counts().unwrap().0, 4, "one of Bob's five one-time prekeys was consumed");
    // The messages written before the upgrade decrypt after it.
    let pending = bob.decrypt(alice.address(), &std::fs::read(dir.join("message.bin")).unwrap()).unwrap();
    assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Direct, &b"kept, unread"[..]));
    let id = pending.message_id();
    bob.commit(pending).unwrap();
    alice.acknowledge(bob.address(), &[id.unwrap()]).unwrap();
    assert_eq!(alice.outbox_len(bob.address()).unwrap(), 1);
    let pending = bob.decrypt(alice.address(), &std::fs::read(dir.join("group.bin")).unwrap()).unwrap();
    assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Group, &b"group pending"[..]));
    bob.commit(pending).unwrap();
    // The conversation goes on, both ways, 1:1 and in the group.
    for round in 0..3 {
        let text = format!("after the upgrade {round}");
        let wire = bob.encrypt(alice.address(), text.as_bytes()).unwrap();
        let pending = alice.decrypt(bob.address(), &wire).unwrap();
        assert_eq!(pending.plaintext(), text.as_bytes());
        alice.commit(pending).unwrap();
        let wire = alice.encrypt_kept(bob.address(), text.as_bytes(), UNIX_EPOCH + Duration::from_secs(200)).unwrap();
        let pending = bob.decrypt(alice.address(), &wire).unwrap();
        assert_eq!(pending.plaintext(), text.as_bytes());
        bob.commit(pending).unwrap();
        for (from, to) in [(&alice, &bob), (&bob, &alice)] {
            let sent = from.group_encrypt(b"golden", text.as_bytes()).unwrap();
            assert!(sent.distributions.is_empty(), "the chain was given before the upgrade");
            let pending = to.decrypt(from.address(), &sent.message).unwrap();
            assert_eq!(pending.plaintext(), text.as_bytes());
            to.commit(pending).unwrap();
        }
    }
    assert_eq!(bob.group_members(b"golden").unwrap(), vec![Address::new("alice", 1).unwrap()]);
    drop((alice, bob));
    assert_eq!(user_version(&dir.join("alice.db")), samizdat::store::SCHEMA_VERSION);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn schema_2_stores_upgrade_and_go_on() {
    golden_stores_go_on(2);
}

/// `device`'s list (version 1, naming it alone) under the user identity of
/// `[seed; 32]`.
fn own_list<B: samizdat::store::Backend>(device: &Device<B>, user: &str, seed: u8) -> samizdat::user::SignedDeviceList {
    let uik = samizdat::user::UserIdentityKeyPair::from_seed(&[seed; 32]);
    samizdat::user::DeviceList::new(user, 1, &uik.public_key(), [(1, device.identity_key())])
        .unwrap()
        .sign(&uik)
        .unwrap()
}

/// A store of schema 3 (no table `users`) gains the table when opened and
/// takes device lists: its own, and a peer's pinned from a bundle.
#[test]
fn schema_3_stores_gain_the_users_table() {
    let dir = scratch("golden3-users");
    for name in ["alice.db", "bob.db"] {
        std::fs::copy(golden(3).join(name), dir.join(name)).unwrap();
    }
    let alice = Device::open(dir.join("alice.db"), &ALICE_KEY).unwrap();
    let bob = Device::open(dir.join("bob.db"), &BOB_KEY).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap(), None);
    assert_eq!(bob.device_list().unwrap(), None);
    let bob_list = own_list(&bob, "bob", 0xB0);
    bob.set_device_list(&bob_list).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().signed_list(), &bob_list);
    drop((alice, bob));
    assert_eq!(user_version(&dir.join("alice.db")), samizdat::store::SCHEMA_VERSION);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn schema_3_stores_upgrade_and_go_on() {
    golden_stores_go_on(3);
    // Bob's store was rotated: its first key no longer opens it.
    let dir = scratch("golden3-first-key");
    std::fs::copy(golden(3).join("bob.db"), dir.join("bob.db")).unwrap();
    assert!(Device::open(dir.join("bob.db"), &BOB_FIRST_KEY).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn schema_4_stores_of_this_release_go_on() {
    golden_stores_go_on(4);
    // Their device lists and Alice's pin of Bob's user, as stored.
    let dir = scratch("golden4-users");
    for name in ["alice.db", "bob.db"] {
        std::fs::copy(golden(4).join(name), dir.join(name)).unwrap();
    }
    let alice = Device::open(dir.join("alice.db"), &ALICE_KEY).unwrap();
    let bob = Device::open(dir.join("bob.db"), &BOB_KEY).unwrap();
    assert_eq!(alice.device_list().unwrap(), Some(own_list(&alice, "alice", 0xA0)));
    assert_eq!(bob.device_list().unwrap(), Some(own_list(&bob, "bob", 0xB0)));
    assert_eq!(alice.user_trust("bob").unwrap().unwrap().signed_list(), &own_list(&bob, "bob", 0xB0));
    drop((alice, bob));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Makes the golden stores of the current schema into a scratch directory
/// (printed): copy them to `data/schema<SCHEMA_VERSION>/` when the schema
/// changes. See [`golden`] for the conversation.
#[test]
#[ignore = "run by hand to make the golden stores"]
fn make_golden_stores() {
    let dir = scratch("make-golden");
    let alice =
        Device::create(dir.join("alice.db"), &ALICE_KEY, Address::new("alice", 1).unwrap(), UNIX_EPOCH).unwrap();
    let bob = Device::create(dir.join("bob.db"), &BOB_FIRST_KEY, Address::new("bob", 1).unwrap(), UNIX_EPOCH).unwrap();
    bob.refill_prekeys(5, 5, UNIX_EPOCH).unwrap();
    // Schema 4: both hold their own device list; Alice pins Bob's user from
    // his bundle.
    for (device, name, seed) in [(&alice, "alice", 0xA0), (&bob, "bob", 0xB0)] {
        device.set_device_list(&own_list(device, name, seed)).unwrap();
    }
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt(bob.address(), b"hello").unwrap();
    bob.commit(bob.decrypt(alice.address(), &hello).unwrap()).unwrap();
    let back = bob.encrypt(alice.address(), b"hello back").unwrap();
    alice.commit(alice.decrypt(bob.address(), &back).unwrap()).unwrap();
    let read = alice.encrypt_kept(bob.address(), b"kept, read", UNIX_EPOCH + Duration::from_secs(100)).unwrap();
    bob.commit(bob.decrypt(alice.address(), &read).unwrap()).unwrap();
    let unread = alice.encrypt_kept(bob.address(), b"kept, unread", UNIX_EPOCH + Duration::from_secs(101)).unwrap();
    std::fs::write(dir.join("message.bin"), unread).unwrap();
    alice.create_group(b"golden", &[bob.address().clone()]).unwrap();
    bob.create_group(b"golden", &[alice.address().clone()]).unwrap();
    for (from, to) in [(&alice, &bob), (&bob, &alice)] {
        let sent = from.group_encrypt(b"golden", b"group hello").unwrap();
        for d in &sent.distributions {
            to.commit(to.decrypt(from.address(), &d.message).unwrap()).unwrap();
        }
        to.commit(to.decrypt(from.address(), &sent.message).unwrap()).unwrap();
    }
    let pending = alice.group_encrypt(b"golden", b"group pending").unwrap();
    assert!(pending.distributions.is_empty());
    std::fs::write(dir.join("group.bin"), pending.message).unwrap();
    drop((alice, bob));
    Device::rotate_storage_key(dir.join("bob.db"), &BOB_FIRST_KEY, &BOB_KEY).unwrap();
    println!("{}", dir.display());
}

#[test]
fn a_store_of_a_newer_schema_is_refused_and_left_as_it_was() {
    let dir = scratch("newer");
    let path = dir.join("bob.db");
    let mut bytes = std::fs::read(golden(4).join("bob.db")).unwrap();
    // The SQLite header keeps the user version at offset 60, big-endian.
    bytes[60..64].copy_from_slice(&(samizdat::store::SCHEMA_VERSION + 1).to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let refused = Device::open(&path, &BOB_KEY).unwrap_err();
    assert!(
        matches!(
            refused,
            samizdat::device::DeviceError::Store(samizdat::store::StoreError::SchemaTooNew { found, supported })
                if found == samizdat::store::SCHEMA_VERSION + 1 && supported == samizdat::store::SCHEMA_VERSION
        ),
        "{refused:?}"
    );
    assert_eq!(refused.kind(), samizdat::ErrorKind::StoreFailure);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing written");
    std::fs::remove_dir_all(&dir).unwrap();
}
