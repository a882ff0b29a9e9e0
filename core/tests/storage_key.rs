//! Storage-key rotation (PROTOCOL.md 14.12): every row re-sealed under a new
//! key in one transaction, the old sealed values gone from the files, the
//! conversations (1:1, group, outbox) going on under the new key; a failure
//! midway, and a process killed midway, leave exactly one key working and
//! nothing lost; a handle still on the old key writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use support::{addr, receive, temp_dir};

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use samizdat::{
    ErrorKind,
    device::{Device, DeviceError, MessageKind},
    store::{Backend, MemoryBackend, Rewrite, Row, Scrub, SqliteBackend, StoreError, Table, Write},
};

const OLD: StorageKey = StorageKey::from_bytes([0x0a; 32]);
const NEW: StorageKey = StorageKey::from_bytes([0x0b; 32]);
const GROUP: &[u8] = b"rotation group";

/// Every row of every table.
fn all_rows(backend: &impl Backend) -> Vec<(Table, Row)> {
    Table::ALL.iter().flat_map(|&t| backend.scan(t).unwrap().into_iter().map(move |row| (t, row))).collect()
}

/// Bob's store with something in every kind of row: sessions with Alice and
/// Carol (Alice's messages kept in her outbox), a group of the three with
/// chains given and received, one-time prekeys, and one message from Alice
/// that Bob has not read yet (returned).
fn conversation<B: Backend>(alice: &Device<B>, bob: &Device<B>, carol: &Device<B>) -> Vec<u8> {
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    carol.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    bob.refill_prekeys(5, 10, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    for i in 0..3 {
        let wire = alice
            .encrypt_kept(bob.address(), format!("alice {i}").as_bytes(), UNIX_EPOCH + Duration::from_secs(10))
            .unwrap();
        assert_eq!(receive(bob, alice.address(), &wire).unwrap(), format!("alice {i}").as_bytes());
        let wire = carol.encrypt(bob.address(), b"carol").unwrap();
        receive(bob, carol.address(), &wire).unwrap();
        let wire = bob.encrypt(alice.address(), b"bob").unwrap();
        receive(alice, bob.address(), &wire).unwrap();
    }
    alice.start_session(&carol.prekey_bundle().unwrap()).unwrap();
    let wire = carol.encrypt(bob.address(), b"to start carol's sessions").unwrap();
    receive(bob, carol.address(), &wire).unwrap();
    let wire = bob.encrypt(carol.address(), b"hi carol").unwrap();
    receive(carol, bob.address(), &wire).unwrap();
    let wire = alice.encrypt(carol.address(), b"hi carol").unwrap();
    receive(carol, alice.address(), &wire).unwrap();
    let wire = carol.encrypt(alice.address(), b"hi alice").unwrap();
    receive(alice, carol.address(), &wire).unwrap();
    for (device, others) in [
        (alice, [bob.address().clone(), carol.address().clone()]),
        (bob, [alice.address().clone(), carol.address().clone()]),
        (carol, [alice.address().clone(), bob.address().clone()]),
    ] {
        device.create_group(GROUP, &others).unwrap();
    }
    group_round(alice, bob, carol, b"group before");
    alice.encrypt_kept(bob.address(), b"in flight across the rotation", UNIX_EPOCH + Duration::from_secs(20)).unwrap()
}

/// Each sends one group message that the two others read.
fn group_round<B: Backend>(alice: &Device<B>, bob: &Device<B>, carol: &Device<B>, text: &[u8]) {
    let devices = [alice, bob, carol];
    for sender in devices {
        let send = sender.group_encrypt(GROUP, text).unwrap();
        for outgoing in &send.distributions {
            let to = devices.iter().find(|d| d.address() == &outgoing.to).unwrap();
            receive(*to, sender.address(), &outgoing.message).unwrap();
        }
        for receiver in devices.iter().filter(|d| d.address() != sender.address()) {
            let pending = receiver.decrypt(sender.address(), &send.message).unwrap();
            assert_eq!(pending.kind(), MessageKind::Group);
            assert_eq!(pending.plaintext(), text);
            receiver.commit(pending).unwrap();
        }
    }
}

/// After the rotation: the message in flight reads, the conversation and
/// the group go on both ways, the outbox still holds Alice's messages.
fn goes_on<B: Backend>(alice: &Device<B>, bob: &Device<B>, carol: &Device<B>, in_flight: &[u8]) {
    assert_eq!(receive(bob, alice.address(), in_flight).unwrap(), b"in flight across the rotation");
    assert!(matches!(bob.decrypt(alice.address(), in_flight), Err(e) if e.kind() == ErrorKind::Duplicate));
    let wire = bob.encrypt(alice.address(), b"after the rotation").unwrap();
    assert_eq!(receive(alice, bob.address(), &wire).unwrap(), b"after the rotation");
    let wire = bob.encrypt(carol.address(), b"after the rotation").unwrap();
    assert_eq!(receive(carol, bob.address(), &wire).unwrap(), b"after the rotation");
    group_round(alice, bob, carol, b"group after");
    // A new session, a prekey consumed, a refill: new rows under the new key.
    let dave =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xd; 32]), addr("dave"), UNIX_EPOCH).unwrap();
    dave.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wire = dave.encrypt(bob.address(), b"dave").unwrap();
    assert_eq!(receive(bob, dave.address(), &wire).unwrap(), b"dave");
    bob.refill_prekeys(20, 30, UNIX_EPOCH + Duration::from_secs(30)).unwrap();
    assert_eq!(bob.prekey_counts().unwrap().0, 30);
}

/// The 32-byte windows of a sealed value that a search of the files looks
/// for: just past the version and nonce (the start of the ciphertext, kept
/// in the row's cell whatever the value's length), and at its end.
fn windows(value: &[u8]) -> Vec<Vec<u8>> {
    vec![value[25..57].to_vec(), value[value.len() - 32..].to_vec()]
}

fn files(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    all
}

fn found(haystack: &[u8], needles: &[Vec<u8>]) -> usize {
    let set: HashSet<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    haystack.windows(32).filter(|w| set.contains(w)).count()
}

/// Alice and Carol on SQLite in `dir`, Bob on SQLite in `dir/bob/`.
fn parties(dir: &Path) -> (Device, Device, Device, PathBuf) {
    let alice =
        Device::create(dir.join("alice.db"), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let carol =
        Device::create(dir.join("carol.db"), &StorageKey::from_bytes([3; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    std::fs::create_dir_all(dir.join("bob")).unwrap();
    let path = dir.join("bob").join("bob.db");
    let bob = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    (alice, bob, carol, path)
}

#[test]
fn a_rotated_store_goes_on_under_the_new_key_and_its_files_keep_no_old_row() {
    let dir = temp_dir("sqlite");
    let (alice, bob, carol, path) = parties(&dir);
    let in_flight = conversation(&alice, &bob, &carol);
    let before = all_rows(bob.backend());
    assert!(before.iter().any(|(t, _)| *t == Table::Groups) && before.iter().any(|(t, _)| *t == Table::PreKeys));
    drop(bob);

    assert_eq!(Device::rotate_storage_key(&path, &OLD, &NEW).unwrap(), Scrub::Done);

    // The old key opens nothing; the new one opens the same device.
    assert!(matches!(Device::open(&path, &OLD), Err(DeviceError::Store(StoreError::WrongKey))));
    let bob = Device::open(&path, &NEW).unwrap();
    assert_eq!(bob.address(), &addr("bob"));
    let after = all_rows(bob.backend());
    // Every row is still there under its key, re-sealed (one more: the naming keys).
    let keys = |rows: &[(Table, Row)]| rows.iter().map(|(t, (k, _))| (*t, k.clone())).collect::<HashSet<_>>();
    let (keys_before, keys_after) = (keys(&before), keys(&after));
    assert!(keys_before.is_subset(&keys_after));
    assert_eq!(keys_after.len(), keys_before.len() + 1, "the naming-keys row is added");
    let values_after: HashSet<&Vec<u8>> = after.iter().map(|(_, (_, v))| v).collect();
    assert!(before.iter().all(|(_, (_, v))| !values_after.contains(v)), "every row was re-sealed");

    // No old sealed value left in the files (and, as a control, every new one found).
    drop(bob);
    let bytes = files(&dir.join("bob"));
    let old: Vec<Vec<u8>> = before.iter().flat_map(|(_, (_, v))| windows(v)).collect();
    let new: Vec<Vec<u8>> = after.iter().flat_map(|(_, (_, v))| windows(v)).collect();
    assert_eq!(found(&bytes, &old), 0, "old sealed values left in the files");
    assert!(found(&bytes, &new) >= new.len(), "the search finds the current values");

    let bob = Device::open(&path, &NEW).unwrap();
    goes_on(&alice, &bob, &carol, &in_flight);
    // Alice's outbox (encrypt_kept) was not Bob's to touch; Bob's own rows
    // of every kind work: a second rotation, with the naming keys present.
    drop(bob);
    let third = [0x0c; 32];
    assert_eq!(Device::rotate_storage_key(&path, &NEW, &StorageKey::from_bytes(third)).unwrap(), Scrub::Done);
    assert!(matches!(Device::open(&path, &NEW), Err(DeviceError::Store(StoreError::WrongKey))));
    let bob = Device::open(&path, &StorageKey::from_bytes(third)).unwrap();
    let wire = alice.encrypt(bob.address(), b"after two rotations").unwrap();
    assert_eq!(receive(&bob, alice.address(), &wire).unwrap(), b"after two rotations");
    group_round(&alice, &bob, &carol, b"group after two");
    drop((alice, bob, carol));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotation_in_memory_and_a_wrong_old_key() {
    let (a, b, c) = (Arc::new(MemoryBackend::new()), Arc::new(MemoryBackend::new()), Arc::new(MemoryBackend::new()));
    let alice = Device::create_in(a, &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob = Device::create_in(Arc::clone(&b), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let carol = Device::create_in(c, &StorageKey::from_bytes([3; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    let in_flight = conversation(&alice, &bob, &carol);
    drop(bob);
    let before = b.snapshot();
    let refused = Device::rotate_storage_key_in(&b, &NEW, &StorageKey::from_bytes([0x0c; 32])).unwrap_err();
    assert!(matches!(refused, DeviceError::Store(StoreError::WrongKey)));
    assert_eq!(refused.kind(), ErrorKind::WrongStorageKey);
    assert_eq!(b.snapshot(), before, "a refused rotation changes nothing");
    assert_eq!(Device::rotate_storage_key_in(&b, &OLD, &NEW).unwrap(), Scrub::Unsupported);
    let bob = Device::open_in(Arc::clone(&b), &NEW).unwrap();
    goes_on(&alice, &bob, &carol, &in_flight);
}

/// A backend that fails a rotation after `fail_after` rows: the rewrite
/// closure of the inner backend returns an error midway.
struct FailingRotation<B: Backend> {
    inner: B,
    fail_after: usize,
}

impl<B: Backend> Backend for FailingRotation<B> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.inner.apply(writes)
    }
    fn rewrite_all(&self, rewrite: &mut Rewrite<'_>) -> Result<Scrub, StoreError> {
        let mut rows = 0;
        self.inner.rewrite_all(&mut |table, key, value| {
            rows += 1;
            if rows > self.fail_after {
                return Err(StoreError::Backend("injected failure".into()));
            }
            rewrite(table, key, value)
        })
    }
}

#[test]
fn a_rotation_that_fails_midway_leaves_the_old_key_working() {
    let dir = temp_dir("midway");
    let (alice, bob, carol, path) = parties(&dir);
    let in_flight = conversation(&alice, &bob, &carol);
    drop(bob);
    let rows = all_rows(&SqliteBackend::open(&path).unwrap()).len();
    for fail_after in [0, 1, rows / 2, rows] {
        let backend = FailingRotation { inner: SqliteBackend::open(&path).unwrap(), fail_after };
        let before = all_rows(&backend);
        let failed = Device::rotate_storage_key_in(&backend, &OLD, &NEW).unwrap_err();
        assert!(matches!(failed, DeviceError::Store(StoreError::Backend(_))), "{failed:?}");
        // Only the fence may have written, under the old key: the check row
        // re-sealed (the same plaintext, a fresh nonce) and the naming-keys
        // row added. Every other row is as it was.
        let after = all_rows(&backend);
        let fence = |(table, _): &&(Table, Row)| *table == Table::Meta;
        assert!(
            before.iter().filter(|row| !fence(row)).all(|row| after.contains(row)),
            "failing after {fail_after} rows changed a row"
        );
        assert_eq!(after.iter().filter(|row| !fence(row)).count(), before.iter().filter(|row| !fence(row)).count());
        assert!(after.len() <= before.len() + 1);
        drop(backend);
        assert!(matches!(Device::open(&path, &NEW), Err(DeviceError::Store(StoreError::WrongKey))));
    }
    let bob = Device::open(&path, &OLD).unwrap();
    goes_on(&alice, &bob, &carol, &in_flight);
    drop((alice, bob, carol));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_handle_still_on_the_old_key_writes_nothing() {
    let dir = temp_dir("stale");
    let (alice, bob, carol, path) = parties(&dir);
    let in_flight = conversation(&alice, &bob, &carol);
    // Another handle (the app's extension, say) keeps the store open on the old key.
    let stale = Device::open(&path, &OLD).unwrap();
    drop(bob);
    assert_eq!(Device::rotate_storage_key(&path, &OLD, &NEW).unwrap(), Scrub::Done);
    let rows = all_rows(stale.backend());

    // Its writes are refused: a new session's row (a write that needs no
    // earlier row), an encryption, a refill.
    let dave =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xd; 32]), addr("dave"), UNIX_EPOCH).unwrap();
    let refused = stale.start_session(&dave.prekey_bundle().unwrap()).unwrap_err();
    assert!(matches!(refused, DeviceError::Store(StoreError::KeyRotated)), "{refused:?}");
    assert_eq!(refused.kind(), ErrorKind::WrongStorageKey);
    // Its reads of rows it cannot open say why: the key was rotated (not a
    // damaged row).
    for error in [
        stale.encrypt(alice.address(), b"stale").unwrap_err(),
        stale.decrypt(alice.address(), &in_flight).map(|_| ()).unwrap_err(),
        stale.peers().map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(error, DeviceError::Store(StoreError::KeyRotated)), "{error:?}");
    }
    // (Prekey rows are read through their own loader: a refill fails as a
    // row that does not open; the recovery is the same, open the store again.)
    let refill = stale.refill_prekeys(50, 60, UNIX_EPOCH + Duration::from_secs(40)).map(|_| ()).unwrap_err();
    assert!(matches!(refill.kind(), ErrorKind::WrongStorageKey | ErrorKind::StoreFailure), "{refill:?}");
    assert_eq!(all_rows(stale.backend()), rows, "the stale handle wrote nothing");
    drop(stale);
    let bob = Device::open(&path, &NEW).unwrap();
    goes_on(&alice, &bob, &carol, &in_flight);
    drop((alice, bob, carol));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Set in the child of [`a_rotation_killed_midway_leaves_exactly_one_key_working`].
const CHILD_ENV: &str = "SAMIZDAT_ROTATION_CHILD";

/// The two keys of round `round`: from, to (round 0 starts from [`OLD`]).
fn round_keys(round: usize) -> ([u8; 32], [u8; 32]) {
    let key = |r: usize| [OLD.as_bytes()[0].wrapping_add(u8::try_from(r % 200).unwrap()); 32];
    (key(round), key(round + 1))
}

#[test]
fn a_rotation_killed_midway_leaves_exactly_one_key_working() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        // The child: rotate from the given key to the next, then exit.
        let (path, round) = spec.split_once('|').unwrap();
        let (from, to) = round_keys(round.parse().unwrap());
        Device::rotate_storage_key(path, &StorageKey::from_bytes(from), &StorageKey::from_bytes(to)).unwrap();
        return;
    }
    let dir = temp_dir("killed");
    let (alice, bob, carol, path) = parties(&dir);
    let mut in_flight = conversation(&alice, &bob, &carol);
    // More rows, so that a rotation takes long enough to be cut.
    for i in 0..40 {
        let peer = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([0x40; 32]),
            addr(&format!("peer {i}")),
            UNIX_EPOCH,
        )
        .unwrap();
        peer.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let wire = peer.encrypt(bob.address(), b"hello").unwrap();
        receive(&bob, peer.address(), &wire).unwrap();
    }
    bob.refill_prekeys(100, 100, UNIX_EPOCH + Duration::from_secs(2)).unwrap();
    drop(bob);

    let exe = std::env::current_exe().unwrap();
    let spawn = |round: usize| {
        std::process::Command::new(&exe)
            .args(["--exact", "a_rotation_killed_midway_leaves_exactly_one_key_working", "--nocapture"])
            .env(CHILD_ENV, format!("{}|{round}", path.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long an uncut rotation takes here (with the child's start).
    let started = Instant::now();
    assert!(spawn(0).wait().unwrap().success());
    let full = started.elapsed();
    let mut round = 1;
    let (mut cut, mut completed) = (0, 0);
    let seed: u64 = std::env::var("SAMIZDAT_ROTATION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let mut state = seed;
    for kill in 0..12 {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let delay = full.mul_f64(f64::from(u32::try_from(state >> 40).unwrap() % 1000) / 1000.0);
        let mut child = spawn(round);
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let (from, to) = round_keys(round);
        let with_old = Device::open(&path, &StorageKey::from_bytes(from));
        let with_new = Device::open(&path, &StorageKey::from_bytes(to));
        let bob = match (with_old, with_new) {
            (Ok(bob), Err(DeviceError::Store(StoreError::WrongKey))) => {
                cut += 1;
                bob
            }
            (Err(DeviceError::Store(StoreError::WrongKey)), Ok(bob)) => {
                completed += 1;
                round += 1;
                bob
            }
            (old, new) => panic!("kill {kill} after {delay:?} ({status}): old key {old:?}, new key {new:?}"),
        };
        // Nothing lost: the message in flight reads, and a new one is sent.
        assert_eq!(receive(&bob, alice.address(), &in_flight).unwrap(), b"in flight across the rotation");
        let wire = bob.encrypt(alice.address(), b"after a kill").unwrap();
        assert_eq!(receive(&alice, bob.address(), &wire).unwrap(), b"after a kill");
        drop(bob);
        // The same message again for the next round (a new one, unread).
        in_flight = alice.encrypt(&addr("bob"), b"in flight across the rotation").unwrap();
        let check: String = rusqlite_check(&path);
        assert_eq!(check, "ok");
    }
    println!(
        "rotation of {} rows: {full:?} uncut; 12 kills (seed {seed}): {cut} left the old key, {completed} the new",
        all_rows(&SqliteBackend::open(&path).unwrap()).len()
    );
    drop((alice, carol));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SQLite's integrity check of the database at `path`.
fn rusqlite_check(path: &Path) -> String {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap()
}
