//! Outside audit of the store's rotation, deletion and backup features
//! (PROTOCOL.md 14.1, 14.6, 14.8, 14.9, 14.12, 21), attacking them as an
//! adversary with write access to the files, or as an unlucky app with
//! several handles, threads and crashes.
//!
//! What was attacked, and the outcome:
//!
//! - Storage-key rotation racing another handle's writes:
//!   - on SQLite (two `SqliteBackend`s, threads): held. Every write that
//!     returned `Ok` is readable under the new key, every later one is
//!     `KeyRotated`, no row is left under the old key.
//!   - through the trait's default `rewrite_all` (an `Arc<MemoryBackend>`,
//!     or any backend an app brings): **finding 1**, fixed. A stale handle's
//!     new row (`Expected::Absent`) written between the rotation's scan and
//!     its `apply` passed the guard (the check row was not re-sealed yet) and
//!     survived the rotation sealed under the old key. Now the rotation first
//!     fences (re-seals the check row under the old key, so every handle
//!     opened before is refused), and `MemoryBackend` rewrites under its lock.
//!     `finding_1_default_rewrite_all_lets_a_stale_insert_survive_the_rotation`.
//! - Rotating to the same key; a stale handle whose reads still open (same
//!   key), so that only the guard stops its `Absent`/`Any` writes: held.
//! - The naming-keys row altered, truncated, resealed with a wrong length or
//!   version, or given another row's value: held (`Corrupt { meta }`).
//!   Deleted, or swapped in from another store rotated to the same key:
//!   **finding 2**, fixed: the store opened as if it had no peers. Now a
//!   rotated store's check row binds its naming keys (`Corrupt { meta }`).
//!   `finding_2_a_rotated_store_without_its_naming_keys_row_opens_as_if_empty`.
//! - A crash between the rotation's fence and the rewrite: held (the old key
//!   opens, a handle opened before is fenced out and opens again, a later
//!   rotation completes).
//! - `delete_session` racing `encrypt` and `commit` on two handles (memory
//!   and SQLite): held; no deleted session comes back, every ciphertext
//!   handed out decrypts once, none twice.
//! - A damaged session row: **finding 3**, fixed: `delete_session` could
//!   not remove it, and it blocked `peers`, `export_backup` and
//!   `rotate_storage_key` for good. Now `delete_session` deletes the rows as
//!   stored, without opening them. `finding_3_a_damaged_session_row_cannot_be_deleted_and_blocks_backup_and_rotation`.
//! - Hostile backup plaintexts (made by a passphrase holder): too many
//!   peers, duplicates, out of order, the device itself, invalid addresses,
//!   invalid keys, a wrong seed, unknown fields, invalid UTF-8, trailing
//!   bytes, header parameters at and past the bounds: held, each a typed
//!   error, nothing written. (Hostile files without the passphrase are
//!   covered by core/tests/backup.rs.)
//! - Concurrent restores on one path, and a restore racing a create on one
//!   shared store: held (exactly one device, the other `AlreadyExists`).
//! - The restored device's prekey ids: held (fresh, above 2^20, two
//!   restores of one backup do not share a signed prekey).
//! - Debug output of devices, errors and parameters around an export: held
//!   (no seed, no passphrase).
//! - The scrub's debt tampered with (negative, huge, a real, a text, the
//!   row or the table deleted, and huge while a handle has the store open):
//!   held, a typed error or harmless, never a panic or a loop; the store's
//!   rows are untouched and it works again once the counter is repaired.
//!   (Hardening note, not a finding: a real or text value makes every open
//!   fail with `StoreError::Sqlite`, and a debt of `i64::MAX` set under an
//!   open handle makes each of its writes fail, `bytes + n` overflowing to a
//!   real, until it is reopened; reading the counter leniently and treating
//!   an unreadable one as a scrub owed would make both harmless.)
//! - A store over 4 MiB with a damaged page: held, typed errors
//!   (`CorruptDatabase`), no panic, a failed rotation changes nothing.
//! - Rotation and writes waiting for another connection's write lock (the
//!   busy handler): held.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use support::{addr, temp_dir};

use std::{
    path::Path,
    sync::{Arc, Barrier, Mutex},
    thread,
    time::{Duration, Instant},
};

use samizdat::{
    ErrorKind, SessionError,
    address::Address,
    device::{BackupParams, Device, DeviceError},
    store::{Backend, Expected, MemoryBackend, Rewrite, Row, Scrub, SqliteBackend, StoreError, Table, Write},
};

const OLD: StorageKey = StorageKey::from_bytes([0x1a; 32]);
const NEW: StorageKey = StorageKey::from_bytes([0x1b; 32]);
const PASSPHRASE: &[u8] = b"an auditor's long passphrase";

type Mem = Arc<MemoryBackend>;
/// What a hook's call returned, for the test to check after the rotation.
type Outcome = Arc<Mutex<Option<Result<Vec<u8>, DeviceError>>>>;

fn memory_device(name: &str, key: u8) -> Device<MemoryBackend> {
    Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), addr(name), UNIX_EPOCH).unwrap()
}

fn receive<B: Backend, C: Backend>(to: &Device<B>, from: &Device<C>, wire: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending)?;
    Ok(plaintext)
}

/// A round trip each way between two devices.
fn converse<B: Backend, C: Backend>(a: &Device<B>, b: &Device<C>, tag: &str) {
    let text = format!("{tag}: a to b");
    let wire = a.encrypt(b.address(), text.as_bytes()).unwrap();
    assert_eq!(receive(b, a, &wire).unwrap(), text.as_bytes());
    let text = format!("{tag}: b to a");
    let wire = b.encrypt(a.address(), text.as_bytes()).unwrap();
    assert_eq!(receive(a, b, &wire).unwrap(), text.as_bytes());
}

fn all_rows(backend: &impl Backend) -> Vec<(Table, Row)> {
    Table::ALL.iter().flat_map(|&t| backend.scan(t).unwrap().into_iter().map(move |row| (t, row))).collect()
}

fn is_store(error: &DeviceError, f: impl Fn(&StoreError) -> bool) -> bool {
    matches!(error, DeviceError::Store(e) if f(e))
}

fn key_rotated(error: &DeviceError) -> bool {
    is_store(error, |e| matches!(e, StoreError::KeyRotated))
}

// ---------------------------------------------------------------------------
// Storage-key rotation racing other handles.
// ---------------------------------------------------------------------------

/// A backend that keeps every default of the trait (`rewrite_all` and
/// `scan_after` included), as an app's own backend would, over a shared
/// memory store; it runs `hook` once, right after the first scan of `when`.
struct Hooked {
    inner: Mem,
    when: Table,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Backend for Hooked {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let rows = self.inner.scan(table)?;
        if table == self.when {
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        Ok(rows)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.inner.apply(writes)
    }
}

/// FINDING 1 (medium): the trait's default `rewrite_all` scans every table,
/// then applies one batch conditional on each row it scanned. A row that
/// another handle *inserts* between the scan and the apply is in no
/// precondition, and the other handle's guard (the check row unchanged)
/// still holds then, because the check row is re-sealed only by that final
/// apply. So a stale handle's new session row (or new prekey, new outbox
/// entry: every `Expected::Absent` write) survives the rotation sealed
/// under the old key, and the new key reads it as `Corrupt`: the session
/// whose first message was already handed out is lost, and `peers`,
/// `export_backup` and the next rotation fail on it. `Arc<MemoryBackend>`
/// (documented as shared between handles) and every app-provided backend
/// use this default; `SqliteBackend` does not (one write transaction).
///
/// Fix: make the guard fail before the scan. In `rotate_storage_key_in`,
/// first re-seal the key-check row under the *old* key with a fresh nonce
/// (`Value(check)` precondition, like the naming-keys step), so that every
/// other handle's later batch is refused with `KeyRotated`; then rotate
/// with every write of the rewrite conditional on that new check value (a
/// stale insert can no longer land). Alternatively override `rewrite_all`
/// in `MemoryBackend` under its lock, and document for app backends that
/// the default is unsafe with concurrent writers.
#[test]
fn finding_1_default_rewrite_all_lets_a_stale_insert_survive_the_rotation() {
    let store: Mem = Arc::new(MemoryBackend::new());
    let bob = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    let dave = memory_device("dave", 4);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    converse(&bob, &alice, "before");
    // Another handle of Bob's store (an app extension), opened on the old key.
    let stale = Arc::new(Device::open_in(Arc::clone(&store), &OLD).unwrap());
    let dave_bundle = dave.prekey_bundle().unwrap();
    let outcome: Outcome = Arc::new(Mutex::new(None));
    let hooked = Hooked {
        inner: Arc::clone(&store),
        when: Table::Sessions,
        hook: Mutex::new(Some(Box::new({
            let (stale, outcome) = (Arc::clone(&stale), Arc::clone(&outcome));
            move || {
                // The stale handle starts a session with Dave and sends him
                // its first message, while the rotation is between its scan
                // of table `sessions` and its apply.
                let sent = stale
                    .start_session(&dave_bundle)
                    .and_then(|dave| stale.encrypt(&dave, b"hello dave, from the extension"));
                *outcome.lock().unwrap() = Some(sent);
            }
        }))),
    };
    drop(bob);
    Device::rotate_storage_key_in(&hooked, &OLD, &NEW).unwrap();
    let sent = outcome.lock().unwrap().take().expect("the hook ran");
    let bob = Device::open_in(Arc::clone(&store), &NEW).unwrap();
    match sent {
        // Refused: the defence held (what the fix gives).
        Err(error) => assert!(key_rotated(&error), "{error:?}"),
        // Handed out: then Bob, under the new key, must have that session.
        Ok(wire) => {
            assert_eq!(receive(&dave, &bob, &wire).unwrap(), b"hello dave, from the extension");
            let read = bob.has_session(dave.address());
            assert!(
                matches!(read, Ok(true)),
                "a session whose first message was sent is unreadable after the rotation: {read:?}"
            );
            assert!(bob.peers().is_ok());
        }
    }
}

/// The same race on SQLite, for real (threads, two handles): the rotation
/// is one write transaction, so a write lands either before it (and is
/// re-sealed) or after it (and is refused by the guard). Every session
/// whose start returned `Ok` is readable under the new key, every refused
/// call is `KeyRotated`, and nothing is left under the old key.
#[test]
fn rotation_racing_another_sqlite_handle_loses_nothing_and_leaves_no_old_row() {
    let dir = temp_dir("race");
    let path = dir.join("bob.db");
    let bob = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    converse(&bob, &alice, "before");
    drop(bob);
    let peers: Vec<_> = (0..24).map(|i| memory_device(&format!("peer{i:02}"), 40 + i)).collect();
    let bundles: Vec<_> = peers.iter().map(|p| p.prekey_bundle().unwrap()).collect();
    let writer = Device::open(&path, &OLD).unwrap();
    let barrier = Barrier::new(2);
    let (started, sent) = thread::scope(|scope| {
        let handle = scope.spawn(|| {
            barrier.wait();
            let mut started = Vec::new();
            let mut sent = Vec::new();
            for bundle in &bundles {
                match writer.start_session(bundle) {
                    Ok(peer) => started.push(peer),
                    Err(error) => {
                        assert!(key_rotated(&error), "{error:?}");
                        break;
                    }
                }
                match writer.encrypt(alice.address(), b"from the second handle") {
                    Ok(wire) => sent.push(wire),
                    Err(error) => {
                        assert!(key_rotated(&error), "{error:?}");
                        break;
                    }
                }
            }
            (started, sent)
        });
        barrier.wait();
        thread::sleep(Duration::from_millis(30));
        Device::rotate_storage_key(&path, &OLD, &NEW).unwrap();
        handle.join().unwrap()
    });
    // Once rotated, the second handle writes nothing more.
    let refused = writer.encrypt(alice.address(), b"late").unwrap_err();
    assert!(key_rotated(&refused), "{refused:?}");
    drop(writer);
    let bob = Device::open(&path, &NEW).unwrap();
    let mut listed = bob.peers().unwrap();
    listed.sort();
    let mut expected: Vec<Address> = started.clone();
    expected.push(alice.address().clone());
    expected.sort();
    assert_eq!(listed, expected, "every session started before the rotation, and only those");
    for wire in &sent {
        assert_eq!(receive(&alice, &bob, wire).unwrap(), b"from the second handle");
    }
    converse(&bob, &alice, "after");
    // No row is left that the new key does not open: a second rotation
    // (which opens every row) succeeds.
    drop(bob);
    Device::rotate_storage_key(&path, &NEW, &OLD).unwrap();
    Device::open(&path, &OLD).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rotating to the same key re-seals every row and the check row: a stale
/// handle, whose reads still open (same key), is stopped by the guard
/// alone, for its `Absent` writes (a new session, new prekeys) and its
/// `Any` writes (acknowledging outbox entries) too. The store goes on.
#[test]
fn rotating_to_the_same_key_works_and_the_guard_alone_stops_a_stale_handle() {
    let store: Mem = Arc::new(MemoryBackend::new());
    let bob = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    let dave = memory_device("dave", 4);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    converse(&bob, &alice, "before");
    let kept = bob.encrypt_kept(alice.address(), b"kept", UNIX_EPOCH + Duration::from_secs(5)).unwrap();
    let kept_id = samizdat::heal::message_id(&kept);
    let stale = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    assert_eq!(Device::rotate_storage_key_in(&store, &OLD, &OLD).unwrap(), Scrub::Unsupported);
    let before = store.snapshot();
    // Its reads open (same key)...
    assert!(stale.has_session(alice.address()).unwrap());
    // ...but none of its writes land.
    let attempts: Vec<(&str, DeviceError)> = vec![
        ("start_session", stale.start_session(&dave.prekey_bundle().unwrap()).unwrap_err()),
        ("encrypt", stale.encrypt(alice.address(), b"stale").unwrap_err()),
        ("refill_prekeys", stale.refill_prekeys(10, 20, UNIX_EPOCH + Duration::from_secs(9)).unwrap_err()),
        ("acknowledge", stale.acknowledge(alice.address(), &[kept_id]).unwrap_err()),
        ("delete_session", stale.delete_session(alice.address()).unwrap_err()),
        ("trust_identity", stale.trust_identity(dave.address(), dave.identity_key()).unwrap_err()),
    ];
    for (call, error) in attempts {
        assert!(key_rotated(&error), "{call}: {error:?}");
        assert_eq!(error.kind(), ErrorKind::WrongStorageKey, "{call}");
    }
    assert_eq!(store.snapshot(), before, "the stale handle wrote nothing");
    drop((bob, stale));
    let bob = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    assert_eq!(bob.outbox_len(alice.address()).unwrap(), 1);
    converse(&bob, &alice, "after");
    // And a rotation away and back again: the naming keys stay those of the
    // first key throughout.
    drop(bob);
    Device::rotate_storage_key_in(&store, &OLD, &NEW).unwrap();
    Device::rotate_storage_key_in(&store, &NEW, &OLD).unwrap();
    let bob = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    assert!(
        matches!(Device::open_in(Arc::clone(&store), &NEW), Err(e) if is_store(&e, |e| matches!(e, StoreError::WrongKey)))
    );
    converse(&bob, &alice, "back");
}

/// Two rotations from the same old key, concurrently, to two new keys: one
/// wins, the other is `WrongKey`, and exactly the winner's key opens.
#[test]
fn two_concurrent_rotations_leave_exactly_one_key() {
    let dir = temp_dir("two-rotations");
    let path = dir.join("bob.db");
    let bob = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    drop(bob);
    let keys = [[0x21; 32], [0x22; 32]];
    let barrier = Barrier::new(2);
    let results: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = keys
            .iter()
            .map(|key| {
                let (path, barrier) = (&path, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    Device::rotate_storage_key(path, &OLD, &StorageKey::from_bytes(*key))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let lost = 1 - won[0];
    let error = results[lost].as_ref().unwrap_err();
    assert!(is_store(error, |e| matches!(e, StoreError::WrongKey)), "{error:?}");
    assert!(Device::open(&path, &StorageKey::from_bytes(keys[lost])).is_err());
    assert!(Device::open(&path, &OLD).is_err());
    let bob = Device::open(&path, &StorageKey::from_bytes(keys[won[0]])).unwrap();
    converse(&bob, &alice, "after");
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// The naming-keys row.
// ---------------------------------------------------------------------------

const NAMING_KEYS_ROW: &[u8] = b"naming-keys";
const KEY_CHECK_ROW: &[u8] = b"key-check";

fn put(store: &impl Backend, table: Table, key: &[u8], value: Option<Vec<u8>>) {
    store.apply(&[Write { table, key: key.to_vec(), value, expected: Expected::Any }]).unwrap();
}

fn corrupt_meta<B: Backend>(opened: Result<Device<B>, DeviceError>) -> bool {
    matches!(opened, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Meta })))
}

/// Bob (memory) with a session and trust for Alice, rotated OLD -> NEW.
fn rotated_bob() -> (Mem, Device<MemoryBackend>) {
    let store: Mem = Arc::new(MemoryBackend::new());
    let bob = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    converse(&bob, &alice, "before");
    drop(bob);
    Device::rotate_storage_key_in(&store, &OLD, &NEW).unwrap();
    (store, alice)
}

/// An altered naming-keys row, a truncated one, and another row's sealed
/// value in its place are `Corrupt { meta }`: the sealing binds the row to
/// its place. Put back, the store opens and finds its peers.
#[test]
fn an_altered_or_moved_naming_keys_row_is_corrupt() {
    let (store, alice) = rotated_bob();
    let naming = store.get(Table::Meta, NAMING_KEYS_ROW).unwrap().expect("written by the first rotation");
    let check = store.get(Table::Meta, KEY_CHECK_ROW).unwrap().unwrap();
    let mut flipped = naming.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut in_body = naming.clone();
    in_body[40] ^= 0x80;
    for bad in [flipped, in_body, naming[..40].to_vec(), Vec::new(), check] {
        put(&store, Table::Meta, NAMING_KEYS_ROW, Some(bad));
        assert!(corrupt_meta(Device::open_in(Arc::clone(&store), &NEW)));
        // The rotation refuses it too, and changes nothing.
        let before = store.snapshot();
        assert!(Device::rotate_storage_key_in(&store, &NEW, &OLD).is_err());
        assert_eq!(store.snapshot(), before);
    }
    put(&store, Table::Meta, NAMING_KEYS_ROW, Some(naming));
    let bob = Device::open_in(Arc::clone(&store), &NEW).unwrap();
    assert_eq!(bob.peers().unwrap(), vec![alice.address().clone()]);
    converse(&bob, &alice, "after");
}

/// FINDING 2 (low): after a rotation, the naming keys come only from the
/// naming-keys row, and nothing records that the store *has* one. Deleting
/// that single row (no key needed), or replacing it with the naming-keys
/// row of another store rotated to the same storage key, makes the store
/// open normally under the new key with every peer's session, trust
/// decision, group and remembered base key invisible: the device silently
/// trusts the next identity key of any peer on first use, and a replayed
/// prekey message finds neither the record nor the lookup row that would
/// refuse it. Deleting rows one by one has the same effect (16.6,
/// "Deletion"), but here one row does it for the whole store, and it is
/// exactly the outcome 14.8 bumps the schema version to prevent for an old
/// release ("start over beside them"). `peers()` then fails with `Corrupt`
/// (the rows' keys no longer match), while `has_session` says `false`.
///
/// Fix: make the key-check row say whether the store has naming keys, and
/// bind them: after the first rotation seal, as the check row's plaintext,
/// `KEY_CHECK_PLAINTEXT || HMAC(seal-independent key, naming keys)` (or a
/// distinct "rotated" check plaintext with a hash of the naming keys), so
/// that `Sealer::load` refuses a rotated store whose naming-keys row is
/// absent or is another store's (`Corrupt { meta }`).
#[test]
fn finding_2_a_rotated_store_without_its_naming_keys_row_opens_as_if_empty() {
    // Deleted.
    let (store, alice) = rotated_bob();
    put(&store, Table::Meta, NAMING_KEYS_ROW, None);
    let opened = Device::open_in(Arc::clone(&store), &NEW);
    if let Ok(bob) = &opened {
        // What an app sees today: no session, no trusted identity, silently.
        println!(
            "deleted naming-keys row: has_session {:?}, peer_identity {:?}, peers {:?}",
            bob.has_session(alice.address()),
            bob.peer_identity(alice.address()).map(|k| k.is_some()),
            bob.peers().map(|p| p.len())
        );
    }
    assert!(corrupt_meta(opened), "a rotated store without its naming keys must be refused, not opened empty");

    // Swapped in from another store (first made under another storage key)
    // rotated to the same key.
    let (store, alice) = rotated_bob();
    let other: Mem = Arc::new(MemoryBackend::new());
    drop(Device::create_in(Arc::clone(&other), &StorageKey::from_bytes([0x3c; 32]), addr("bob"), UNIX_EPOCH).unwrap());
    Device::rotate_storage_key_in(&other, &StorageKey::from_bytes([0x3c; 32]), &NEW).unwrap();
    let foreign = other.get(Table::Meta, NAMING_KEYS_ROW).unwrap().unwrap();
    put(&store, Table::Meta, NAMING_KEYS_ROW, Some(foreign));
    let opened = Device::open_in(Arc::clone(&store), &NEW);
    if let Ok(bob) = &opened {
        assert!(!bob.has_session(alice.address()).unwrap(), "the swap hides the session");
    }
    assert!(corrupt_meta(opened), "another store's naming keys must be refused");
}

#[cfg(feature = "hazmat")]
mod naming_keys_sealed_with_the_key {
    use samizdat::hazmat;

    use super::*;

    /// A naming-keys row that opens (sealed with the right key, by another
    /// implementation or a bug) but holds the wrong length or version is
    /// `Corrupt { meta }`.
    #[test]
    fn a_naming_keys_row_of_the_wrong_shape_is_corrupt() {
        let (store, _alice) = rotated_bob();
        let good = store.get(Table::Meta, NAMING_KEYS_ROW).unwrap().unwrap();
        let plaintext = hazmat::open_row(NEW.as_bytes(), Table::Meta, NAMING_KEYS_ROW, &good).unwrap().to_vec();
        assert_eq!((plaintext.len(), plaintext[0]), (129, 1));
        let mut version_2 = plaintext.clone();
        version_2[0] = 2;
        let mut longer = plaintext.clone();
        longer.push(0);
        for bad in [version_2, plaintext[..128].to_vec(), longer, vec![1], Vec::new()] {
            let sealed = hazmat::seal_row(NEW.as_bytes(), Table::Meta, NAMING_KEYS_ROW, &bad, &[9; 24]);
            put(&store, Table::Meta, NAMING_KEYS_ROW, Some(sealed));
            assert!(corrupt_meta(Device::open_in(Arc::clone(&store), &NEW)), "{} bytes", bad.len());
        }
        // The row is bound to the store's current key: sealed under the old
        // key, it does not open either.
        let sealed = hazmat::seal_row(OLD.as_bytes(), Table::Meta, NAMING_KEYS_ROW, &plaintext, &[9; 24]);
        put(&store, Table::Meta, NAMING_KEYS_ROW, Some(sealed));
        assert!(corrupt_meta(Device::open_in(Arc::clone(&store), &NEW)));
        let sealed = hazmat::seal_row(NEW.as_bytes(), Table::Meta, NAMING_KEYS_ROW, &plaintext, &[9; 24]);
        put(&store, Table::Meta, NAMING_KEYS_ROW, Some(sealed));
        assert!(Device::open_in(Arc::clone(&store), &NEW).is_ok());
    }
}

/// A backend whose rotation fails before rewriting any row: the crash
/// between the naming-keys row and the rewrite.
struct FailingRewrite(Mem);

impl Backend for FailingRewrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.0.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.0.apply(writes)
    }
    fn rewrite_all(&self, _: &mut Rewrite<'_>) -> Result<Scrub, StoreError> {
        Err(StoreError::Backend("injected failure".into()))
    }
}

/// Interrupted after its fence (the check row re-sealed under the old key,
/// the naming-keys row written): the old key still opens; a handle opened
/// before is fenced out (`KeyRotated`: it opens the store again, with the
/// new key and then the old one); a handle opened after names rows as the
/// old key derives them; and the next rotation completes with every row
/// readable.
#[test]
fn a_crash_between_the_naming_keys_row_and_the_rewrite_changes_nothing() {
    let store: Mem = Arc::new(MemoryBackend::new());
    let bob = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    let dave = memory_device("dave", 4);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    converse(&bob, &alice, "before");
    let failing = FailingRewrite(Arc::clone(&store));
    let error = Device::rotate_storage_key_in(&failing, &OLD, &NEW).unwrap_err();
    assert!(is_store(&error, |e| matches!(e, StoreError::Backend(_))), "{error:?}");
    assert!(store.get(Table::Meta, NAMING_KEYS_ROW).unwrap().is_some(), "the naming-keys row was written");
    assert!(Device::open_in(Arc::clone(&store), &NEW).is_err());
    // The handle opened before is fenced out; opened again it goes on, and
    // another new one sees what it wrote.
    let refused = bob.start_session(&dave.prekey_bundle().unwrap()).unwrap_err();
    assert!(key_rotated(&refused), "{refused:?}");
    drop(bob);
    let bob = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    converse(&bob, &alice, "after the crash");
    bob.start_session(&dave.prekey_bundle().unwrap()).unwrap();
    let reopened = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    assert!(reopened.has_session(dave.address()).unwrap());
    let mut peers = reopened.peers().unwrap();
    peers.sort();
    assert_eq!(peers, vec![alice.address().clone(), dave.address().clone()]);
    drop((bob, reopened));
    Device::rotate_storage_key_in(&store, &OLD, &NEW).unwrap();
    let bob = Device::open_in(Arc::clone(&store), &NEW).unwrap();
    assert_eq!(bob.peers().unwrap().len(), 2);
    converse(&bob, &alice, "rotated");
    let wire = bob.encrypt(dave.address(), b"hi dave").unwrap();
    assert_eq!(receive(&dave, &bob, &wire).unwrap(), b"hi dave");
}

// ---------------------------------------------------------------------------
// delete_session racing encrypt and commit.
// ---------------------------------------------------------------------------

/// Handle 2 encrypts to Alice in a loop while handle 1 deletes the session:
/// the deleted session never comes back, every ciphertext handed out
/// decrypts at Alice exactly once (no message key used twice), and a new
/// session after the delete works.
fn delete_races_encrypt<B: Backend>(one: &Device<B>, two: &Device<B>) {
    let alice = memory_device("alice", 1);
    one.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    let barrier = Barrier::new(2);
    let (sent, deleted) = thread::scope(|scope| {
        let sender = scope.spawn(|| {
            barrier.wait();
            let mut sent = Vec::new();
            for i in 0..200 {
                match two.encrypt(alice.address(), format!("m{i}").as_bytes()) {
                    Ok(wire) => sent.push((i, wire)),
                    Err(error) => {
                        assert_eq!(error.kind(), ErrorKind::NoSession, "{error:?}");
                        break;
                    }
                }
            }
            sent
        });
        barrier.wait();
        thread::sleep(Duration::from_millis(5));
        let deleted = one.delete_session(alice.address()).unwrap();
        (sender.join().unwrap(), deleted)
    });
    assert!(deleted);
    for device in [one, two] {
        assert!(!device.has_session(alice.address()).unwrap(), "a deleted session came back");
        assert!(device.peer_identity(alice.address()).unwrap().is_none());
        assert!(device.peers().unwrap().is_empty());
    }
    // Every ciphertext handed out decrypts once, in order; none is a
    // duplicate of another (which a reused message key would be).
    for (i, wire) in &sent {
        assert_eq!(receive(&alice, one, wire).unwrap(), format!("m{i}").as_bytes());
    }
    if let Some((_, wire)) = sent.last() {
        let again = alice.decrypt(one.address(), wire).map(|_| ()).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Duplicate, "{again:?}");
    }
    // A new session after the delete.
    one.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    let wire = two.encrypt(alice.address(), b"new session").unwrap();
    assert_eq!(receive(&alice, one, &wire).unwrap(), b"new session");
}

#[test]
fn delete_session_racing_encrypt_in_memory() {
    let store: Mem = Arc::new(MemoryBackend::new());
    let one = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let two = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    delete_races_encrypt(&one, &two);
}

#[test]
fn delete_session_racing_encrypt_on_sqlite() {
    let dir = temp_dir("delete-race");
    let path = dir.join("bob.db");
    let one = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let two = Device::open(&path, &OLD).unwrap();
    delete_races_encrypt(&one, &two);
    drop((one, two));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A message decrypted before the delete and committed after it is stale:
/// the commit writes nothing, so the session does not come back with it.
/// A batch likewise.
#[test]
fn a_commit_after_delete_session_is_stale_and_resurrects_nothing() {
    let store: Mem = Arc::new(MemoryBackend::new());
    let bob = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let other = Device::open_in(Arc::clone(&store), &OLD).unwrap();
    let alice = memory_device("alice", 1);
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    converse(&alice, &bob, "before");
    let wire = alice.encrypt(bob.address(), b"in flight").unwrap();
    let wire2 = alice.encrypt(bob.address(), b"in flight 2").unwrap();
    let pending = bob.decrypt(alice.address(), &wire).unwrap();
    let batch = bob.decrypt_batch(&[(alice.address().clone(), wire2)]).unwrap();
    assert!(other.delete_session(alice.address()).unwrap());
    let before = store.snapshot();
    let error = bob.commit(pending).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::StalePending)), "{error:?}");
    let error = bob.commit_batch(batch).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::StalePending)), "{error:?}");
    assert_eq!(store.snapshot(), before, "nothing written");
    assert!(!bob.has_session(alice.address()).unwrap());
    // The message now finds no state.
    let again = bob.decrypt(alice.address(), &wire).map(|_| ()).unwrap_err();
    assert!(matches!(again.kind(), ErrorKind::NoSession | ErrorKind::OutOfStep), "{again:?}");
}

/// FINDING 3 (low-medium, availability): a session row that does not open
/// (a damaged sector, a tampered byte) can never be removed through the
/// API: `delete_session` opens the row before deleting it and fails with
/// `Corrupt`. Meanwhile that one row makes `peers()` fail for every peer,
/// `export_backup` fail (so the user cannot back up the identity any more),
/// and `rotate_storage_key` refuse the store (no key rotation ever again).
/// `check_integrity` passes (SQLite sees a valid row), and the recovery
/// that error kind `store_failure` suggests, reopening, changes nothing.
///
/// Fix: let `delete_session` delete what it cannot open: the session row,
/// its seeds row and outbox index, each conditional on the sealed bytes as
/// read (`Value`), without opening them; find the outbox entries of an
/// index that does not open by a prefix scan (`scan_after` from `row ||
/// "/out/"`). Then an app can drop the damaged peer and keep the rest.
#[test]
fn finding_3_a_damaged_session_row_cannot_be_deleted_and_blocks_backup_and_rotation() {
    let store: Mem = Arc::new(MemoryBackend::new());
    let bob = Device::create_in(Arc::clone(&store), &OLD, addr("bob"), UNIX_EPOCH).unwrap();
    let alice = memory_device("alice", 1);
    let carol = memory_device("carol", 3);
    bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    bob.start_session(&carol.prekey_bundle().unwrap()).unwrap();
    converse(&bob, &alice, "before");
    converse(&bob, &carol, "before");
    // Damage one byte of one 32-byte-keyed session row (Alice's or Carol's:
    // the keys are keyed hashes, the attacker does not know which).
    let (key, mut value) =
        store.scan(Table::Sessions).unwrap().into_iter().find(|(k, _)| k.len() == 32).expect("a session row");
    value[60] ^= 1;
    put(&store, Table::Sessions, &key, Some(value));
    let damaged = [alice.address(), carol.address()]
        .into_iter()
        .find(|peer| bob.has_session(peer).is_err())
        .expect("one peer's row no longer opens")
        .clone();
    assert!(bob.peers().is_err());
    // What the app tries: drop that peer, keep the rest.
    let deleted = bob.delete_session(&damaged);
    assert!(matches!(deleted, Ok(true)), "a damaged row cannot be deleted: {deleted:?}");
    assert_eq!(bob.peers().unwrap().len(), 1);
    bob.export_backup(PASSPHRASE, BackupParams::MINIMUM, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    drop(bob);
    Device::rotate_storage_key_in(&store, &OLD, &NEW).unwrap();
}

// ---------------------------------------------------------------------------
// Backups: hostile plaintexts, concurrent restores, fresh prekeys, Debug.
// ---------------------------------------------------------------------------

#[cfg(feature = "hazmat")]
mod hostile_backups {
    use prost::Message;
    use samizdat::{
        DecodeError,
        device::BackupError,
        hazmat,
        prekeys::{PqPreKeyKind, PreKeyBundle},
    };
    use samizdat_proto::storage::{Backup, BackupPeer};

    use super::*;

    /// Small Argon2id parameters: a file may state them (only an export
    /// refuses them).
    const SMALL: BackupParams = BackupParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    fn valid_key(seed: u8) -> Vec<u8> {
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([seed; 32]), addr("k"), UNIX_EPOCH)
            .unwrap()
            .identity_key()
            .as_bytes()
            .to_vec()
    }

    fn peer(user: &str, device: u32, key: &[u8]) -> BackupPeer {
        BackupPeer { user_id: user.into(), device_id: device, identity_key: key.to_vec() }
    }

    fn good() -> Backup {
        let key = valid_key(5);
        Backup {
            version: 1,
            seed: vec![7; 32],
            user_id: "alice".into(),
            device_id: 1,
            created_at: 10,
            peers: vec![peer("bob", 1, &key), peer("bob", 2, &key), peer("carol", 1, &key)],
            // No list and no pinned user: the plaintext of the releases before lists.
            own_device_list: Vec::new(),
            users: Vec::new(),
        }
    }

    fn seal(plaintext: &[u8]) -> Vec<u8> {
        hazmat::backup_seal(PASSPHRASE, SMALL, [3; 16], [4; 24], plaintext).unwrap()
    }

    /// Restores `file` into a fresh store: the error, and the store checked
    /// empty (nothing written).
    fn refused(file: &[u8]) -> BackupError {
        let store: Mem = Arc::new(MemoryBackend::new());
        let started = Instant::now();
        let result = Device::restore_in(
            Arc::clone(&store),
            &StorageKey::from_bytes([8; 32]),
            file,
            PASSPHRASE,
            UNIX_EPOCH + Duration::from_secs(100),
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(store.snapshot().is_empty(), "a refused restore wrote rows");
        match result {
            Err(DeviceError::Backup(error)) => error,
            Err(other) => panic!("not a backup error: {other:?}"),
            Ok(device) => panic!("accepted: {device:?}"),
        }
    }

    fn invalid(what: &'static str) -> BackupError {
        BackupError::Malformed(DecodeError::InvalidValue(what))
    }

    #[test]
    fn the_good_plaintext_restores() {
        let restored = Device::restore_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([8; 32]),
            &seal(&good().encode_to_vec()),
            PASSPHRASE,
            UNIX_EPOCH + Duration::from_secs(100),
        )
        .unwrap();
        assert_eq!(restored.address(), &addr("alice"));
        assert_eq!(restored.peers().unwrap().len(), 3);
    }

    #[test]
    fn hostile_peer_lists_are_refused() {
        let key = valid_key(5);
        let mut cases: Vec<(&str, Backup, BackupError)> = Vec::new();
        let mut m = good();
        m.peers.push(m.peers[2].clone());
        cases.push(("duplicate", m, invalid("backup.peers")));
        let mut m = good();
        m.peers.swap(1, 2);
        cases.push(("out of order", m, invalid("backup.peers")));
        let mut m = good();
        m.peers.swap(0, 1);
        cases.push(("same user, devices out of order", m, invalid("backup.peers")));
        let mut m = good();
        m.peers.insert(0, peer("alice", 1, &key));
        cases.push(("the device itself", m, invalid("backup.peers")));
        let mut m = good();
        m.peers.insert(0, peer("", 1, &key));
        cases.push(("empty user id", m, invalid("backup.peers.user_id")));
        let mut m = good();
        m.peers.push(peer(&"z".repeat(257), 1, &key));
        cases.push(("257-byte user id", m, invalid("backup.peers.user_id")));
        let mut m = good();
        m.peers[1].identity_key = vec![0; 32];
        cases.push(("zero key", m, invalid("backup.peers.identity_key")));
        let mut m = good();
        let mut identity_point = vec![0; 32];
        identity_point[0] = 1;
        m.peers[1].identity_key = identity_point;
        cases.push(("small-order key", m, invalid("backup.peers.identity_key")));
        let mut m = good();
        m.peers[1].identity_key = key[..31].to_vec();
        cases.push((
            "short key",
            m,
            BackupError::Malformed(DecodeError::InvalidLength {
                field: "backup.peers.identity_key",
                expected: 32,
                actual: 31,
            }),
        ));
        let mut m = good();
        m.peers[1].identity_key.push(0);
        cases.push((
            "long key",
            m,
            BackupError::Malformed(DecodeError::InvalidLength {
                field: "backup.peers.identity_key",
                expected: 32,
                actual: 33,
            }),
        ));
        let mut m = good();
        m.peers.clear();
        m.user_id = "a".repeat(257);
        cases.push(("own user id too long", m, invalid("backup.user_id")));
        let mut m = good();
        m.seed = vec![7; 33];
        cases.push((
            "seed",
            m,
            BackupError::Malformed(DecodeError::InvalidLength { field: "backup.seed", expected: 32, actual: 33 }),
        ));
        let mut m = good();
        m.version = 0;
        cases.push(("version 0", m, BackupError::UnsupportedVersion(0)));
        let mut m = good();
        m.version = u32::MAX;
        cases.push(("version max", m, BackupError::UnsupportedVersion(u32::MAX)));
        for (what, message, expected) in cases {
            assert_eq!(refused(&seal(&message.encode_to_vec())), expected, "{what}");
        }
        // An empty plaintext: every field at its default (version 0).
        assert_eq!(refused(&seal(&[])), BackupError::UnsupportedVersion(0));
    }

    /// One peer more than the limit: refused by its count, before any peer
    /// is checked or any row written, and quickly.
    #[test]
    fn one_peer_over_the_limit_is_refused() {
        let key = valid_key(5);
        let mut m = good();
        m.peers = (0..=samizdat::limits::MAX_BACKUP_PEERS).map(|i| peer(&format!("p{i:06}"), 1, &key)).collect();
        let file = seal(&m.encode_to_vec());
        assert_eq!(refused(&file), invalid("backup.peers"));
    }

    /// Bytes that are not the canonical encoding: unknown fields, fields
    /// out of order, trailing bytes, invalid UTF-8 in a string, a
    /// truncated message.
    #[test]
    fn non_canonical_plaintexts_are_refused() {
        let bytes = good().encode_to_vec();
        let protobuf = BackupError::Malformed(DecodeError::Protobuf);
        let mut unknown = bytes.clone();
        unknown.extend_from_slice(&[7 << 3, 1]); // field 7, varint 1
        let mut trailing = bytes.clone();
        trailing.push(0);
        // created_at (field 5) moved to the front.
        let created_at = [5 << 3, 10];
        let at = bytes.windows(2).position(|w| w == created_at).unwrap();
        let mut reordered = created_at.to_vec();
        reordered.extend_from_slice(&bytes[..at]);
        reordered.extend_from_slice(&bytes[at + 2..]);
        // "alice" with an invalid UTF-8 byte.
        let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
        let mut not_utf8 = bytes.clone();
        not_utf8[at] = 0xff;
        let truncated = bytes[..bytes.len() - 3].to_vec();
        for (what, plaintext) in [
            ("unknown field", unknown),
            ("trailing byte", trailing),
            ("reordered", reordered),
            ("invalid UTF-8", not_utf8),
            ("truncated", truncated),
        ] {
            assert_eq!(refused(&seal(&plaintext)), protobuf, "{what}");
        }
        // Bytes after the sealed file, and a file cut to its header plus a
        // bucket: refused by length before the key is derived.
        let mut longer = seal(&bytes);
        longer.extend_from_slice(&[0; 16]);
        assert!(matches!(refused(&longer), BackupError::Malformed(_)));
    }

    /// The header's parameters at the edges of Argon2's own rule `m >= 8p`
    /// and the bounds: `m = 8p` opens; one below, `p = 0` or `5`, `t = 0`
    /// or `11`, are refused before the derivation; a version byte of 2 is
    /// unsupported.
    #[test]
    fn header_parameters_at_their_edges() {
        let plaintext = good().encode_to_vec();
        let edge = BackupParams { memory_kib: 32, iterations: 1, parallelism: 4 };
        let file = hazmat::backup_seal(PASSPHRASE, edge, [3; 16], [4; 24], &plaintext).unwrap();
        assert!(
            Device::restore_in(
                MemoryBackend::new(),
                &StorageKey::from_bytes([8; 32]),
                &file,
                PASSPHRASE,
                UNIX_EPOCH + Duration::from_secs(1)
            )
            .is_ok()
        );
        let with = |offset: usize, value: u32| {
            let mut altered = file.clone();
            altered[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
            altered
        };
        for (what, altered) in [
            ("m = 8p - 1", with(5, 31)),
            ("m = 0", with(5, 0)),
            ("p = 0", with(13, 0)),
            ("p = 5", with(13, 5)),
            ("t = 0", with(9, 0)),
            ("t = 11", with(9, 11)),
        ] {
            let started = Instant::now();
            assert!(matches!(refused(&altered), BackupError::ParamsOutOfBounds { .. }), "{what}");
            assert!(started.elapsed() < Duration::from_millis(500), "{what}: {:?}", started.elapsed());
        }
        let mut version = file.clone();
        version[4] = 2;
        assert_eq!(refused(&version), BackupError::UnsupportedVersion(2));
        // m lowered but still within the rule: another key, the tag fails.
        assert_eq!(refused(&with(5, 40)), BackupError::WrongPassphrase);
    }

    /// The restored device's prekeys are new: ids from 2^20 up, never the
    /// lost installation's signed prekey, and two restores of one backup
    /// do not share one either. Its refills never reuse an id.
    #[test]
    fn a_restored_device_reuses_no_prekey_id() {
        let alice = memory_device("alice", 1);
        alice.refill_prekeys(5, 10, UNIX_EPOCH).unwrap();
        let exported =
            alice.export_backup(PASSPHRASE, BackupParams::MINIMUM, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let file = seal(&hazmat::backup_open(PASSPHRASE, &exported).unwrap());
        let original = PreKeyBundle::from_bytes(&alice.prekey_bundle().unwrap()).unwrap();
        let mut signed = vec![original.signed_prekey_id()];
        for key in [8u8, 9] {
            let restored = Device::restore_in(
                MemoryBackend::new(),
                &StorageKey::from_bytes([key; 32]),
                &file,
                PASSPHRASE,
                UNIX_EPOCH + Duration::from_secs(2),
            )
            .unwrap();
            assert_eq!(restored.identity_key(), alice.identity_key());
            restored.refill_prekeys(5, 10, UNIX_EPOCH + Duration::from_secs(2)).unwrap();
            let bundles = restored.prekey_bundles(10).unwrap();
            let mut ids = Vec::new();
            for bytes in &bundles {
                let bundle = PreKeyBundle::from_bytes(bytes).unwrap();
                assert!(bundle.signed_prekey_id() >= 1 << 20);
                ids.extend(bundle.one_time_prekey_id());
                if let (id, PqPreKeyKind::OneTime) = bundle.pq_prekey() {
                    ids.push(id);
                }
            }
            let spk = PreKeyBundle::from_bytes(&bundles[0]).unwrap().signed_prekey_id();
            assert!(!signed.contains(&spk), "signed prekey id {spk} given out before");
            signed.push(spk);
            assert!(ids.iter().all(|&id| id >= 1 << 20), "{ids:?}");
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), ids.len(), "an id given out twice: {ids:?}");
        }
    }

    /// Nothing around an export prints the seed or the passphrase: the
    /// device, the restored device, the errors of a refused restore, the
    /// parameters.
    #[test]
    fn no_secret_in_debug_output() {
        let alice = memory_device("alice", 1);
        let exported =
            alice.export_backup(PASSPHRASE, BackupParams::MINIMUM, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let plaintext = hazmat::backup_open(PASSPHRASE, &exported).unwrap();
        let seed = Backup::decode(plaintext.as_slice()).unwrap().seed;
        let file = seal(&plaintext);
        let restored = Device::restore_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([8; 32]),
            &file,
            PASSPHRASE,
            UNIX_EPOCH + Duration::from_secs(2),
        )
        .unwrap();
        let mut printed = vec![
            format!("{alice:?}"),
            format!("{restored:?}"),
            format!("{:?}", BackupParams::of_file(&file)),
            format!(
                "{:?}",
                Device::restore_in(
                    MemoryBackend::new(),
                    &StorageKey::from_bytes([8; 32]),
                    &file,
                    b"wrong",
                    UNIX_EPOCH + Duration::from_secs(2)
                )
            ),
            format!(
                "{}",
                Device::restore_in(
                    MemoryBackend::new(),
                    &StorageKey::from_bytes([8; 32]),
                    &file,
                    b"wrong",
                    UNIX_EPOCH + Duration::from_secs(2)
                )
                .unwrap_err()
            ),
            format!("{:?}", restored.backend()),
        ];
        let mut seed_only = good();
        seed_only.seed = seed.clone();
        seed_only.peers[0].user_id = String::new();
        printed.push(format!(
            "{:?}",
            Device::restore_in(
                MemoryBackend::new(),
                &StorageKey::from_bytes([8; 32]),
                &seal(&seed_only.encode_to_vec()),
                PASSPHRASE,
                UNIX_EPOCH + Duration::from_secs(2)
            )
        ));
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let decimal = format!("{:?}", &seed[..4]);
        let decimal = &decimal[1..decimal.len() - 1];
        let passphrase = std::str::from_utf8(PASSPHRASE).unwrap();
        for text in &printed {
            assert!(!text.contains(&hex[..16]), "{text}");
            assert!(!text.contains(decimal), "{text}");
            assert!(!text.contains(passphrase), "{text}");
        }
    }

    /// Two restores at once on one path (two installations of the app, two
    /// threads): exactly one device is made, the other is `AlreadyExists`,
    /// and the store is the winner's, whole. And two restores into one
    /// existing, empty store through two handles.
    #[test]
    fn concurrent_restores_make_exactly_one_device() {
        let dir = temp_dir("restores");
        let files: Vec<(Vec<u8>, Address)> = ["alice", "alicia"]
            .iter()
            .map(|name| {
                let mut m = good();
                m.user_id = (*name).into();
                m.seed = vec![u8::try_from(name.len()).unwrap(); 32];
                (seal(&m.encode_to_vec()), addr(name))
            })
            .collect();
        for round in 0..2 {
            let path = dir.join(format!("store{round}.db"));
            if round == 1 {
                // An existing store file with the schema and no device.
                drop(SqliteBackend::open(&path).unwrap());
            }
            let barrier = Barrier::new(2);
            let results: Vec<_> = thread::scope(|scope| {
                let handles: Vec<_> = files
                    .iter()
                    .enumerate()
                    .map(|(i, (file, _))| {
                        let (path, barrier) = (&path, &barrier);
                        scope.spawn(move || {
                            let key = [0x30 + u8::try_from(i).unwrap(); 32];
                            if round == 0 {
                                barrier.wait();
                                Device::restore(
                                    path,
                                    &StorageKey::from_bytes(key),
                                    file,
                                    PASSPHRASE,
                                    UNIX_EPOCH + Duration::from_secs(5),
                                )
                                .map(|d| d.address().clone())
                            } else {
                                let backend = SqliteBackend::open(path).unwrap();
                                barrier.wait();
                                Device::restore_in(
                                    backend,
                                    &StorageKey::from_bytes(key),
                                    file,
                                    PASSPHRASE,
                                    UNIX_EPOCH + Duration::from_secs(5),
                                )
                                .map(|d| d.address().clone())
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: {results:?}");
            let lost = results[1 - won[0]].as_ref().unwrap_err();
            assert!(is_store(lost, |e| matches!(e, StoreError::AlreadyExists)), "round {round}: {lost:?}");
            let winner =
                Device::open(&path, &StorageKey::from_bytes([0x30 + u8::try_from(won[0]).unwrap(); 32])).unwrap();
            assert_eq!(winner.address(), &files[won[0]].1);
            assert_eq!(winner.peers().unwrap().len(), 3);
            assert!(
                Device::open(&path, &StorageKey::from_bytes([0x30 + u8::try_from(1 - won[0]).unwrap(); 32])).is_err()
            );
        }
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".samizdat-new-")), "a temporary file was left: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A restore and a create racing on one shared memory store: exactly
    /// one device.
    #[test]
    fn a_restore_racing_a_create_on_one_store() {
        let file = seal(&good().encode_to_vec());
        for _ in 0..4 {
            let store: Mem = Arc::new(MemoryBackend::new());
            let barrier = Barrier::new(2);
            let (restored, created) = thread::scope(|scope| {
                let restore = scope.spawn(|| {
                    barrier.wait();
                    Device::restore_in(
                        Arc::clone(&store),
                        &StorageKey::from_bytes([8; 32]),
                        &file,
                        PASSPHRASE,
                        UNIX_EPOCH + Duration::from_secs(5),
                    )
                    .map(|_| ())
                });
                let create = scope.spawn(|| {
                    barrier.wait();
                    Device::create_in(
                        Arc::clone(&store),
                        &StorageKey::from_bytes([8; 32]),
                        addr("alice"),
                        UNIX_EPOCH + Duration::from_secs(5),
                    )
                    .map(|_| ())
                });
                (restore.join().unwrap(), create.join().unwrap())
            });
            assert!(restored.is_ok() != created.is_ok(), "{restored:?} {created:?}");
            for error in [restored, created].into_iter().filter_map(Result::err) {
                assert!(is_store(&error, |e| matches!(e, StoreError::AlreadyExists)), "{error:?}");
            }
            let device = Device::open_in(Arc::clone(&store), &StorageKey::from_bytes([8; 32])).unwrap();
            assert_eq!(device.address(), &addr("alice"));
            assert_eq!(store.scan(Table::Identity).unwrap().len(), 1);
        }
    }
}

// ---------------------------------------------------------------------------
// SQLite: the scrub's debt, a large damaged store, the busy handler.
// ---------------------------------------------------------------------------

fn sql(path: &Path, statement: &str) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.execute_batch(statement).unwrap();
}

fn debt(path: &Path) -> Option<i64> {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.query_row("SELECT bytes FROM scrub_debt WHERE id = 0", [], |row| row.get(0)).ok()
}

/// The scrub's debt is a counter, not a secret, but the store reads it on
/// every open and writes it in every commit. Tampered with (the store
/// closed), it is either harmless (a negative or huge integer: the open
/// scrubs and resets it, the device works) or a typed store error on open
/// (a real, a text, the row or the table gone), never a panic or a loop;
/// the rows are untouched, and repairing the counter brings the store back.
#[test]
fn a_tampered_scrub_debt_is_harmless_or_a_typed_error() {
    let dir = temp_dir("debt");
    let path = dir.join("bob.db");
    let alice = memory_device("alice", 1);
    {
        let bob = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        converse(&bob, &alice, "before");
    }
    let rows = all_rows(&SqliteBackend::open(&path).unwrap());
    let repair = "DROP TABLE IF EXISTS scrub_debt;
        CREATE TABLE scrub_debt (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
        INSERT INTO scrub_debt (id, bytes) VALUES (0, 0);";
    for (what, tamper, harmless) in [
        ("negative", "UPDATE scrub_debt SET bytes = -1", true),
        ("most negative", "UPDATE scrub_debt SET bytes = -9223372036854775808", true),
        ("huge", "UPDATE scrub_debt SET bytes = 9223372036854775807", true),
        ("a real", "UPDATE scrub_debt SET bytes = 1e300", false),
        ("a text", "UPDATE scrub_debt SET bytes = 'lots'", false),
        ("row deleted", "DELETE FROM scrub_debt", false),
        ("table dropped", "DROP TABLE scrub_debt", false),
    ] {
        sql(&path, tamper);
        let started = Instant::now();
        let opened = Device::open(&path, &OLD);
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: {:?}", started.elapsed());
        match opened {
            Ok(bob) => {
                converse(&bob, &alice, what);
                drop(bob);
                let after = debt(&path).unwrap();
                assert!((0..1 << 20).contains(&after), "{what}: the debt was not reset: {after}");
            }
            Err(error) => {
                assert!(!harmless, "{what}: {error:?}");
                assert!(is_store(&error, |e| matches!(e, StoreError::Sqlite(_))), "{what}: {error:?}");
                assert_eq!(error.kind(), ErrorKind::StoreFailure, "{what}");
                sql(&path, repair);
                converse(&Device::open(&path, &OLD).unwrap(), &alice, what);
            }
        }
    }
    // Every row is as it was but the session rows the conversations moved on.
    let after = all_rows(&SqliteBackend::open(&path).unwrap());
    assert_eq!(
        after.iter().filter(|(t, _)| *t == Table::Identity).collect::<Vec<_>>(),
        rows.iter().filter(|(t, _)| *t == Table::Identity).collect::<Vec<_>>()
    );

    // Tampered while a handle has the store open: its next writes are a
    // typed error or succeed; none panics, and a reopen resets it.
    let bob = Device::open(&path, &OLD).unwrap();
    sql(&path, "UPDATE scrub_debt SET bytes = 9223372036854775807");
    for i in 0..3 {
        match bob.encrypt(alice.address(), b"while tampered") {
            Ok(wire) => assert_eq!(receive(&alice, &bob, &wire).unwrap(), b"while tampered"),
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::StoreFailure, "{i}: {error:?}");
                println!("write {i} with the debt at i64::MAX: {error}");
            }
        }
    }
    drop(bob);
    let bob = Device::open(&path, &OLD).unwrap();
    converse(&bob, &alice, "reopened");
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A store over 4 MiB (not checked whole on open) with one damaged page,
/// at several places: every call returns or fails with a typed error
/// (mostly `CorruptDatabase`), none panics; `check_integrity` finds the
/// damage; a rotation that fails changes nothing.
#[cfg(feature = "hazmat")]
#[test]
fn a_large_store_with_a_damaged_page_fails_typed() {
    let dir = temp_dir("large");
    let path = dir.join("bob.db");
    let alice = memory_device("alice", 1);
    {
        let bob = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        converse(&bob, &alice, "before");
        bob.refill_prekeys(20, 40, UNIX_EPOCH).unwrap();
        // Filler rows, sealed like any row (so that a rotation opens them):
        // 80 rows of 60 KB in table `groups`.
        let filler = vec![0x42u8; 60_000];
        let writes: Vec<Write> = (0u8..80)
            .map(|i| {
                let key = [i; 32].to_vec();
                let value = samizdat::hazmat::seal_row(OLD.as_bytes(), Table::Groups, &key, &filler, &[i; 24]);
                Write { table: Table::Groups, key, value: Some(value), expected: Expected::Absent }
            })
            .collect();
        bob.backend().apply(&writes).unwrap();
        bob.scrub().unwrap();
    }
    let pristine = std::fs::read(&path).unwrap();
    assert!(pristine.len() > 4 * 1024 * 1024, "{}", pristine.len());
    let page = 4096;
    let pages = pristine.len() / page;
    let typed = |what: &str, error: &DeviceError| {
        assert!(
            matches!(error.kind(), ErrorKind::StoreFailure | ErrorKind::WrongStorageKey),
            "{what}: {error:?} is {:?}",
            error.kind()
        );
    };
    let mut opened_damaged = 0;
    for target in [1, 2, 3, 4, pages / 10, pages / 2, pages - 2] {
        let mut damaged = pristine.clone();
        damaged[target * page..(target + 1) * page].fill(0x5a);
        std::fs::write(&path, &damaged).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let opened = Device::open(&path, &OLD);
        println!("page {target} of {pages}: open {:?}", opened.as_ref().map(|_| ()));
        let bob = match opened {
            Ok(bob) => bob,
            Err(error) => {
                typed("open", &error);
                continue;
            }
        };
        opened_damaged += 1;
        let integrity = bob.check_integrity();
        assert!(
            matches!(integrity, Err(DeviceError::Store(StoreError::CorruptDatabase))),
            "page {target}: {integrity:?}"
        );
        let mut results: Vec<(&str, Result<(), DeviceError>)> = vec![
            ("has_session", bob.has_session(alice.address()).map(|_| ())),
            ("peers", bob.peers().map(|_| ())),
            ("encrypt", bob.encrypt(alice.address(), b"x").map(|_| ())),
            ("prekey_bundle", bob.prekey_bundle().map(|_| ())),
            ("refill", bob.refill_prekeys(50, 60, UNIX_EPOCH + Duration::from_secs(1)).map(|_| ())),
            ("delete_session", bob.delete_session(alice.address()).map(|_| ())),
            ("scrub", bob.scrub().map(|_| ())),
        ];
        drop(bob);
        let rotated = Device::rotate_storage_key(&path, &OLD, &NEW).map(|_| ());
        if rotated.is_err() {
            // Nothing rotated: the new key does not open it.
            assert!(Device::open(&path, &NEW).is_err(), "page {target}: a failed rotation rotated");
        }
        results.push(("rotate", rotated));
        for (what, result) in &results {
            println!("  {what}: {result:?}");
            if let Err(error) = result {
                typed(&format!("page {target}: {what}"), error);
            }
        }
    }
    // The damage was past the open's reach at least once (a large store is
    // not checked whole): the calls above ran on a damaged store.
    assert!(opened_damaged > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Another connection holding the write lock for a while: a rotation and a
/// device's write wait for it (the busy handler) and then complete; the
/// lock wait is counted.
#[test]
fn rotation_and_writes_wait_for_another_connections_lock() {
    let dir = temp_dir("busy");
    let path = dir.join("bob.db");
    let alice = memory_device("alice", 1);
    {
        let bob = Device::create(&path, &OLD, addr("bob"), UNIX_EPOCH).unwrap();
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
    }
    let hold = |ms: u64| {
        let path = path.clone();
        let barrier = Arc::new(Barrier::new(2));
        let held = Arc::clone(&barrier);
        let handle = thread::spawn(move || {
            let connection = rusqlite::Connection::open(&path).unwrap();
            connection.execute_batch("BEGIN IMMEDIATE").unwrap();
            held.wait();
            thread::sleep(Duration::from_millis(ms));
            connection.execute_batch("ROLLBACK").unwrap();
        });
        barrier.wait();
        handle
    };
    let holder = hold(300);
    let started = Instant::now();
    assert_eq!(Device::rotate_storage_key(&path, &OLD, &NEW).unwrap(), Scrub::Done);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    holder.join().unwrap();
    let bob = Device::open(&path, &NEW).unwrap();
    let waited = bob.backend().lock_wait().unwrap();
    let holder = hold(200);
    converse(&bob, &alice, "after the wait");
    holder.join().unwrap();
    assert!(bob.backend().lock_wait().unwrap() >= waited + Duration::from_millis(150));
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}
