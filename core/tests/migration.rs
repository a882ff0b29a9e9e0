//! Stores written by an earlier schema open, migrate and keep working.
//!
//! `data/schema1/` holds two stores of schema version 1 (release 0.2: the
//! tables `meta`, `identity`, `prekeys` and `sessions`, no `groups`): Alice's
//! and Bob's, with a session between them, and a message from Alice that Bob
//! has not decrypted yet. They were made by `make_schema1_stores` below and
//! then taken back to schema 1 (`DROP TABLE groups; PRAGMA user_version = 1;
//! VACUUM;` with Python's sqlite3), the row formats being those of release
//! 0.2. Opening them applies migration 2 (PROTOCOL.md 14.8, 18.9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};

use samizdat::{
    address::Address,
    device::{Device, MessageKind},
};

const ALICE_KEY: [u8; 32] = [0x11; 32];
const BOB_KEY: [u8; 32] = [0x22; 32];

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
    let alice = Device::create(dir.join("alice.db"), &ALICE_KEY, Address::new("alice", 1).unwrap(), 0).unwrap();
    let bob = Device::create(dir.join("bob.db"), &BOB_KEY, Address::new("bob", 1).unwrap(), 0).unwrap();
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
