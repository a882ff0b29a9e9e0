//! A store that says what is wrong (issue 12, item 4): damage is a store
//! error, never a vanished session; paths that name no file, empty files and
//! swapped stores are refused with typed errors, and nothing is created over
//! them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use samizdat::store::StorageKey;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use samizdat::{
    address::Address,
    device::{Device, DeviceError},
    store::StoreError,
};

const KEY: StorageKey = StorageKey::from_bytes([7; 32]);

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("store-errors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn store_error(result: Result<Device, DeviceError>) -> StoreError {
    match result {
        Err(DeviceError::Store(e)) => e,
        Err(e) => panic!("not a store error: {e:?}"),
        Ok(_) => panic!("opened"),
    }
}

#[test]
fn paths_that_name_no_file_are_refused() {
    let dir = dir("paths");
    let before: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    for path in ["", ":memory:", "file::memory:?cache=shared", "file:x.db?mode=memory"] {
        assert!(
            matches!(store_error(Device::create(path, &KEY, address("a"), UNIX_EPOCH)), StoreError::InvalidPath),
            "{path:?}"
        );
        assert!(matches!(store_error(Device::open(path, &KEY)), StoreError::InvalidPath), "{path:?}");
        assert!(
            matches!(
                store_error(Device::open_or_create(path, &KEY, address("a"), UNIX_EPOCH)),
                StoreError::InvalidPath
            ),
            "{path:?}"
        );
    }
    // Nothing was left behind, here or in the working directory.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before.len());
    assert!(!Path::new(":memory:").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_file_is_not_a_place_for_a_new_identity() {
    let dir = dir("empty");
    let path = dir.join("truncated.db");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        store_error(Device::open_or_create(&path, &KEY, address("a"), UNIX_EPOCH)),
        StoreError::EmptyFile
    ));
    assert!(matches!(store_error(Device::open(&path, &KEY)), StoreError::NotFound));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing was written over it");
    // Opening a missing file creates nothing either.
    let missing = dir.join("missing.db");
    assert!(matches!(store_error(Device::open(&missing, &KEY)), StoreError::NotFound));
    assert!(!missing.exists());
    // A new path is created as before.
    let fresh = dir.join("fresh.db");
    let device = Device::open_or_create(&fresh, &KEY, address("a"), UNIX_EPOCH).unwrap();
    drop(device);
    assert_eq!(Device::open_or_create(&fresh, &KEY, address("a"), UNIX_EPOCH).unwrap().address(), &address("a"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A new store is made under a temporary name of its own and named only once
/// whole, so a crash never leaves an empty file (which a later open refuses,
/// above) where the store should be (`crash.rs` kills creations at random
/// points). What crashes leave under temporary names is removed once stale;
/// a second name left by a kill between naming and unlinking is removed on
/// open; nothing planted at a temporary name is ever opened or followed.
#[test]
fn a_creation_that_crashed_leaves_no_file_in_the_way() {
    let dir = dir("creating");
    let path = dir.join("store.db");
    let stale = |name: &str| {
        let file = std::fs::File::options().write(true).open(dir.join(name)).unwrap();
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3_600)).unwrap();
    };
    // Left by crashes: an empty file, a complete device under another key
    // (with its log), both an hour old.
    std::fs::write(dir.join("store.db.samizdat-new-11-0"), b"").unwrap();
    drop(
        Device::create(
            dir.join("store.db.samizdat-new-12-3"),
            &StorageKey::from_bytes([9; 32]),
            address("a"),
            UNIX_EPOCH,
        )
        .unwrap(),
    );
    std::fs::write(dir.join("store.db.samizdat-new-12-3-wal"), b"log").unwrap();
    stale("store.db.samizdat-new-11-0");
    stale("store.db.samizdat-new-12-3");
    // A recent one (another creator may be building in it) and a symbolic
    // link to a file elsewhere: left alone, never opened.
    std::fs::write(dir.join("store.db.samizdat-new-13-0"), b"").unwrap();
    let elsewhere = dir.join("elsewhere.db");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&elsewhere, dir.join("store.db.samizdat-new-0-0")).unwrap();

    let device = Device::open_or_create(&path, &KEY, address("a"), UNIX_EPOCH).unwrap();
    let identity = device.identity_key();
    drop(device);
    assert_eq!(Device::open(&path, &KEY).unwrap().identity_key(), identity);
    assert!(!elsewhere.exists(), "nothing was created through the link");
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    entries.sort();
    let mut expected = vec!["store.db", "store.db.samizdat-new-13-0"];
    if cfg!(unix) {
        expected.insert(1, "store.db.samizdat-new-0-0");
    }
    assert_eq!(entries, expected, "the stale leftovers are gone, the rest left alone");

    // Killed between naming the store and removing its temporary name: the
    // store has two names, and the temporary one is removed on open.
    std::fs::hard_link(&path, dir.join("store.db.samizdat-new-14-0")).unwrap();
    assert_eq!(Device::open(&path, &KEY).unwrap().identity_key(), identity);
    assert!(!dir.join("store.db.samizdat-new-14-0").exists());
    // A second name that is not a temporary one is still refused.
    let other = dir.join("other-name.db");
    std::fs::hard_link(&path, &other).unwrap();
    assert!(matches!(store_error(Device::open(&path, &KEY)), StoreError::MovedOrLinked));
    std::fs::remove_file(&other).unwrap();

    // `create` over an existing store still fails.
    assert!(matches!(store_error(Device::create(&path, &KEY, address("a"), UNIX_EPOCH)), StoreError::AlreadyExists));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two handles creating one store at once (two threads; two processes would
/// do the same): each builds under its own temporary name, one names its
/// store, the other opens that one. Both end with the same device, and no
/// temporary file is left.
#[test]
fn handles_creating_one_store_at_once_end_with_one_device() {
    let dir = dir("racing");
    for round in 0..10 {
        let path = dir.join(format!("store-{round}.db"));
        let barrier = std::sync::Barrier::new(2);
        let identities: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        Device::open_or_create(&path, &KEY, address("a"), UNIX_EPOCH)
                            .map(|device| device.identity_key())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let identities: Vec<_> = identities.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(identities[0], identities[1], "round {round}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".samizdat-new-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn swapped_stores_are_detected() {
    let dir = dir("swapped");
    let (a, b) = (dir.join("a.db"), dir.join("b.db"));
    drop(Device::create(&a, &KEY, address("alice"), UNIX_EPOCH).unwrap());
    drop(Device::create(&b, &KEY, address("bob"), UNIX_EPOCH).unwrap());
    let tmp = dir.join("tmp.db");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    assert!(matches!(
        Device::open_or_create(&a, &KEY, address("alice"), UNIX_EPOCH),
        Err(DeviceError::OtherDevice { found }) if found == address("bob")
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Overwrites 16 bytes at many places of a closed store: each time, the
/// store opens and the session is intact, or a call fails with a store
/// error. Never does the session quietly vanish (`NoSession`), never a panic.
#[test]
fn damage_is_a_store_error_never_a_vanished_session() {
    let dir = dir("damage");
    let path = dir.join("bob.db");
    let alice =
        Device::create(dir.join("alice.db"), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH).unwrap();
    {
        let bob = Device::create(&path, &KEY, address("bob"), UNIX_EPOCH).unwrap();
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let first = alice.encrypt(&address("bob"), b"hello").unwrap();
        bob.commit(bob.decrypt(&address("alice"), &first).unwrap()).unwrap();
        let reply = bob.encrypt(&address("alice"), b"hi").unwrap();
        alice.commit(alice.decrypt(&address("bob"), &reply).unwrap()).unwrap();
    }
    let pristine = std::fs::read(&path).unwrap();
    let next = alice.encrypt(&address("bob"), b"next").unwrap();
    let (mut intact, mut refused) = (0, 0);
    let mut vanished = Vec::new();
    for offset in (0..pristine.len().saturating_sub(16)).step_by(97) {
        let mut damaged = pristine.clone();
        for (i, byte) in damaged[offset..offset + 16].iter_mut().enumerate() {
            *byte ^= 0x5a ^ i as u8;
        }
        std::fs::write(&path, &damaged).unwrap();
        let _ = std::fs::remove_file(dir.join("bob.db-wal"));
        let _ = std::fs::remove_file(dir.join("bob.db-shm"));
        let outcome = Device::open(&path, &KEY).map_err(|e| format!("{e:?}")).and_then(|bob| {
            let has = bob.has_session(&address("alice")).map_err(|e| format!("{e:?}"))?;
            if !has {
                return Ok(false);
            }
            bob.decrypt(&address("alice"), &next).map(|p| p.plaintext() == b"next").map_err(|e| format!("{e:?}"))
        });
        match outcome {
            Ok(true) => intact += 1,
            Ok(false) => vanished.push(offset),
            Err(e) if e.starts_with("Store(") => refused += 1,
            Err(e) => panic!("offset {offset}: {e}"),
        }
    }
    println!("damage: {intact} intact, {refused} refused as store errors, {} vanished", vanished.len());
    assert!(vanished.is_empty(), "the session vanished after damage at offsets {vanished:?}");
    assert!(refused > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
