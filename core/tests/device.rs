//! The Device API over the memory and SQLite stores: encryption at rest,
//! two-phase decryption across restarts, batches, failure injection,
//! concurrency, prekey maintenance and identity changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use support::{addr, receive, temp_dir};

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use samizdat::{
    DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError},
    store::{Backend, Expected, MemoryBackend, Row, StoreError, Table, Write},
};

fn is_duplicate(e: &DeviceError) -> bool {
    matches!(e, DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
}

#[test]
fn conversation_on_sqlite_leaves_no_secret_or_name_on_disk() {
    let dir = temp_dir("at-rest");
    let (ka, kb) = ([0x5a; 32], [0xa5; 32]);
    let secrets: Vec<Vec<u8>> = {
        let alice =
            Device::create(dir.join("alice.db"), &StorageKey::from_bytes(ka), addr("alice-user-7341"), UNIX_EPOCH)
                .unwrap();
        let bob =
            Device::create(dir.join("bob.db"), &StorageKey::from_bytes(kb), addr("bob-user-9925"), UNIX_EPOCH).unwrap();
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let mut plaintexts = Vec::new();
        for i in 0..20 {
            let text = format!("attack at dawn, plan number {i:04}").into_bytes();
            let wire = alice.encrypt(bob.address(), &text).unwrap();
            assert_eq!(receive(&bob, alice.address(), &wire).unwrap(), text);
            let reply = format!("confirmed, plan number {i:04} in motion").into_bytes();
            let wire = bob.encrypt(alice.address(), &reply).unwrap();
            assert_eq!(receive(&alice, bob.address(), &wire).unwrap(), reply);
            plaintexts.push(text);
            plaintexts.push(reply);
        }
        let mut secrets = plaintexts;
        secrets.push(b"alice-user-7341".to_vec());
        secrets.push(b"bob-user-9925".to_vec());
        secrets.push(alice.identity_key().as_bytes().to_vec());
        secrets.push(bob.identity_key().as_bytes().to_vec());
        secrets.push(ka.to_vec());
        secrets.push(kb.to_vec());
        // Scan while open (the WAL holds recent pages), then again after closing.
        scan_files(&dir, &secrets);
        secrets
    };
    scan_files(&dir, &secrets);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn scan_files(dir: &Path, secrets: &[Vec<u8>]) {
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                "{} contains {:?}",
                path.display(),
                String::from_utf8_lossy(secret)
            );
            // Any 16-byte slice of a key must not appear either.
            if secret.len() == 32 {
                assert!(!bytes.windows(16).any(|w| w == &secret[8..24]), "{} contains key bytes", path.display());
            }
        }
    }
    assert!(scanned > 8192, "nothing scanned");
}

#[test]
fn wrong_storage_key_is_refused_and_changes_nothing() {
    let dir = temp_dir("wrong-key");
    let path = dir.join("d.db");
    drop(Device::create(&path, &StorageKey::from_bytes([1; 32]), addr("me"), UNIX_EPOCH).unwrap());
    // Every row, as stored. (Not the file's bytes: opening a SQLite store
    // scrubs it, PROTOCOL.md 14.8, which rewrites the file and no row.)
    let rows = || {
        let db = rusqlite::Connection::open(&path).unwrap();
        let mut rows = Vec::new();
        for table in Table::ALL {
            let mut statement = db.prepare(&format!("SELECT key, value FROM {} ORDER BY key", table.name())).unwrap();
            let found = statement.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))).unwrap();
            rows.push(found.collect::<Result<Vec<_>, _>>().unwrap());
        }
        rows
    };
    let before = rows();
    assert!(matches!(
        Device::open(&path, &StorageKey::from_bytes([2; 32])),
        Err(DeviceError::Store(StoreError::WrongKey))
    ));
    assert_eq!(rows(), before);
    assert!(matches!(
        Device::create(&path, &StorageKey::from_bytes([1; 32]), addr("me"), UNIX_EPOCH),
        Err(DeviceError::Store(StoreError::AlreadyExists))
    ));
    let device = Device::open(&path, &StorageKey::from_bytes([1; 32])).unwrap();
    assert_eq!(device.address(), &addr("me"));
    // A second handle on the same store is fine (its writes are conditional).
    let second = Device::open(&path, &StorageKey::from_bytes([1; 32])).unwrap();
    assert_eq!(second.identity_key(), device.identity_key());
    assert!(matches!(
        Device::open(&path, &StorageKey::from_bytes([2; 32])),
        Err(DeviceError::Store(StoreError::WrongKey))
    ));
    drop((device, second));
    assert!(matches!(
        Device::open(dir.join("empty.db"), &StorageKey::from_bytes([1; 32])),
        Err(DeviceError::Store(StoreError::NotFound))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_phase_decrypt_survives_a_restart() {
    let dir = temp_dir("two-phase");
    let (pa, pb) = (dir.join("a.db"), dir.join("b.db"));
    let alice = Device::create(&pa, &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob = Device::create(&pb, &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let first = alice.encrypt(bob.address(), b"one").unwrap();
    let second = alice.encrypt(bob.address(), b"two").unwrap();
    let counts_before = bob.prekey_counts().unwrap();

    // Decrypted but not committed, then the process "restarts".
    let pending = bob.decrypt(alice.address(), &first).unwrap();
    assert_eq!(pending.plaintext(), b"one");
    drop(pending);
    drop(bob);
    let bob = Device::open(&pb, &StorageKey::from_bytes([2; 32])).unwrap();
    assert!(!bob.has_session(alice.address()).unwrap());
    assert_eq!(bob.prekey_counts().unwrap(), counts_before);
    // Redelivered: decrypts again; committed: a redelivery is a duplicate.
    assert_eq!(receive(&bob, alice.address(), &first).unwrap(), b"one");
    drop(bob);
    let bob = Device::open(&pb, &StorageKey::from_bytes([2; 32])).unwrap();
    assert!(is_duplicate(&receive(&bob, alice.address(), &first).unwrap_err()));
    assert_eq!(receive(&bob, alice.address(), &second).unwrap(), b"two");
    assert!(bob.has_session(alice.address()).unwrap());
    // A stale pending commit is refused.
    let third = alice.encrypt(bob.address(), b"three").unwrap();
    let fourth = alice.encrypt(bob.address(), b"four").unwrap();
    let p3 = bob.decrypt(alice.address(), &third).unwrap();
    let p4 = bob.decrypt(alice.address(), &fourth).unwrap();
    bob.commit(p3).unwrap();
    assert!(matches!(bob.commit(p4), Err(DeviceError::Session(SessionError::StalePending))));
    assert_eq!(receive(&bob, alice.address(), &fourth).unwrap(), b"four");
    // So is one made before Bob encrypted to Alice (committing it would roll
    // back his sending chain), and the reply still decrypts.
    let fifth = alice.encrypt(bob.address(), b"five").unwrap();
    let p5 = bob.decrypt(alice.address(), &fifth).unwrap();
    let reply = bob.encrypt(alice.address(), b"reply").unwrap();
    assert!(matches!(bob.commit(p5), Err(DeviceError::Session(SessionError::StalePending))));
    assert_eq!(receive(&bob, alice.address(), &fifth).unwrap(), b"five");
    assert_eq!(receive(&alice, bob.address(), &reply).unwrap(), b"reply");
    // A pending whose row did not change commits (the record decrypt parsed is reused).
    let sixth = alice.encrypt(bob.address(), b"six").unwrap();
    let p6 = bob.decrypt(alice.address(), &sixth).unwrap();
    bob.commit(p6).unwrap();
    assert!(is_duplicate(&receive(&bob, alice.address(), &sixth).unwrap_err()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn batch_of_a_thousand_queued_messages() {
    let dir = temp_dir("batch");
    let alice = Device::create(dir.join("a.db"), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let carol = Device::create(dir.join("c.db"), &StorageKey::from_bytes([3; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    let bob = Device::create(dir.join("b.db"), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    carol.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let mut queue = Vec::new();
    for i in 0..1000u32 {
        let (from, text) = if i % 3 == 0 { (&carol, format!("c{i}")) } else { (&alice, format!("a{i}")) };
        queue.push((from.address().clone(), from.encrypt(bob.address(), text.as_bytes()).unwrap(), text));
    }
    // One forged message in the middle fails alone.
    queue[500].1[60] ^= 1;
    let messages: Vec<(Address, Vec<u8>)> = queue.iter().map(|(a, w, _)| (a.clone(), w.clone())).collect();
    let batch = bob.decrypt_batch(&messages).unwrap();
    for (i, (result, (_, _, text))) in batch.results().iter().zip(&queue).enumerate() {
        if i == 500 {
            assert!(result.is_err());
        } else {
            assert_eq!(result.as_ref().unwrap(), text.as_bytes(), "message {i}");
        }
    }
    // Nothing was written before the commit: the batch decrypts again.
    let again = bob.decrypt_batch(&messages[..10]).unwrap();
    assert!(again.results().iter().all(Result::is_ok));
    drop(again);
    bob.commit_batch(batch).unwrap();
    let redelivered = bob.decrypt_batch(&messages[..10]).unwrap();
    assert!(
        redelivered.results().iter().all(|r| matches!(r, Err(SessionError::Decrypt(DecryptError::Duplicate { .. }))))
    );
    // A batch made before another commit is stale.
    let next = alice.encrypt(bob.address(), b"next").unwrap();
    let stale = bob.decrypt_batch(&[(alice.address().clone(), next.clone())]).unwrap();
    receive(&bob, alice.address(), &next).unwrap();
    assert!(matches!(bob.commit_batch(stale), Err(DeviceError::Session(SessionError::StalePending))));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A backend that fails the n-th `apply` (0-based), to inject a failure at
/// each durable write point.
struct Failing {
    inner: MemoryBackend,
    fail_at: AtomicUsize,
    applies: AtomicUsize,
}

impl Failing {
    fn new() -> Self {
        Self { inner: MemoryBackend::new(), fail_at: AtomicUsize::new(usize::MAX), applies: AtomicUsize::new(0) }
    }
    fn fail_next(&self) {
        self.fail_at.store(self.applies.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Backend for Failing {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let n = self.applies.fetch_add(1, Ordering::SeqCst);
        if n == self.fail_at.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected failure".into()));
        }
        self.inner.apply(writes)
    }
}

/// Runs `op` with a failure injected at its write: it must fail with the
/// injected error and leave every row as it was; then it must succeed.
fn at_write_point<T>(device: &Device<Arc<Failing>>, name: &str, op: impl Fn() -> Result<T, DeviceError>) -> T {
    let before = device.backend().inner.snapshot();
    device.backend().fail_next();
    match op() {
        Err(DeviceError::Store(StoreError::Backend(_))) => {}
        other => panic!("{name}: expected the injected failure, got {:?}", other.err()),
    }
    assert_eq!(device.backend().inner.snapshot(), before, "{name} changed the store");
    op().unwrap_or_else(|e| panic!("{name} after the failure: {e}"))
}

#[test]
fn injected_failures_at_every_write_point_change_nothing() {
    let a_store = Arc::new(Failing::new());
    let b_store = Arc::new(Failing::new());
    // Write point: creation (identity, prekeys and key check in one batch).
    b_store.fail_next();
    assert!(matches!(
        Device::create_in(b_store.clone(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH),
        Err(DeviceError::Store(StoreError::Backend(_)))
    ));
    assert!(b_store.inner.snapshot().is_empty());
    let alice =
        Device::create_in(a_store.clone(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob = Device::create_in(b_store.clone(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    // Write point: prekey refill and rotation.
    assert_eq!(at_write_point(&bob, "refill", || bob.refill_prekeys(5, 10, UNIX_EPOCH + Duration::from_secs(10))), 20);
    at_write_point(&bob, "rotate", || {
        bob.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(100_000), Duration::from_secs(1_000))
    });
    // Write point: starting a session.
    let bundle = bob.prekey_bundle().unwrap();
    at_write_point(&alice, "start_session", || alice.start_session(&bundle));
    // Write point: encrypt (the ciphertext is only returned once committed).
    let first = at_write_point(&alice, "encrypt", || alice.encrypt(bob.address(), b"hello"));
    // Write point: commit of a prekey message (session + consumed prekeys).
    let counts = bob.prekey_counts().unwrap();
    let pending = bob.decrypt(alice.address(), &first).unwrap();
    let before = b_store.inner.snapshot();
    b_store.fail_next();
    assert!(matches!(bob.commit(pending), Err(DeviceError::Store(StoreError::Backend(_)))));
    assert_eq!(b_store.inner.snapshot(), before);
    assert_eq!(bob.prekey_counts().unwrap(), counts);
    assert_eq!(receive(&bob, alice.address(), &first).unwrap(), b"hello");
    assert_eq!(bob.prekey_counts().unwrap(), (counts.0 - 1, counts.1 - 1));
    // Write point: batch commit.
    let m = alice.encrypt(bob.address(), b"batched").unwrap();
    let batch = bob.decrypt_batch(&[(alice.address().clone(), m.clone())]).unwrap();
    let before = b_store.inner.snapshot();
    b_store.fail_next();
    assert!(matches!(bob.commit_batch(batch), Err(DeviceError::Store(StoreError::Backend(_)))));
    assert_eq!(b_store.inner.snapshot(), before);
    let batch = bob.decrypt_batch(&[(alice.address().clone(), m)]).unwrap();
    bob.commit_batch(batch).unwrap();
    // Write point: trust decision.
    let identity = alice.identity_key();
    at_write_point(&bob, "trust_identity", || bob.trust_identity(alice.address(), identity));
    // The conversation continues.
    let reply = bob.encrypt(alice.address(), b"still here").unwrap();
    assert_eq!(receive(&alice, bob.address(), &reply).unwrap(), b"still here");
}

#[test]
fn a_device_is_shared_across_threads() {
    let hub = Arc::new(
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([9; 32]), addr("hub"), UNIX_EPOCH).unwrap(),
    );
    let peers: Vec<Device<MemoryBackend>> = (0..4)
        .map(|i| {
            Device::create_in(
                MemoryBackend::new(),
                &StorageKey::from_bytes([i; 32]),
                addr(&format!("peer{i}")),
                UNIX_EPOCH,
            )
            .unwrap()
        })
        .collect();
    hub.refill_prekeys(10, 10, UNIX_EPOCH).unwrap();
    for peer in &peers {
        hub.start_session(&peer.prekey_bundle().unwrap()).unwrap();
    }
    let peers = Arc::new(peers);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (hub, peers) = (hub.clone(), peers.clone());
            std::thread::spawn(move || {
                let peer = &peers[i];
                for n in 0..25 {
                    let text = format!("to peer {i}: {n}");
                    let wire = hub.encrypt(peer.address(), text.as_bytes()).unwrap();
                    assert_eq!(receive(peer, hub.address(), &wire).unwrap(), text.as_bytes());
                    let back = peer.encrypt(hub.address(), text.as_bytes()).unwrap();
                    assert_eq!(receive(&*hub, peer.address(), &back).unwrap(), text.as_bytes());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    // Many threads encrypting to the same peer never reuse a counter: all decrypt, once each.
    let target = peers[0].address().clone();
    let wires: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let (hub, target) = (&hub, &target);
                s.spawn(move || (0..10u8).map(|n| hub.encrypt(target, &[t, n]).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut seen = std::collections::HashSet::new();
    for wire in &wires {
        assert!(seen.insert(receive(&peers[0], hub.address(), wire).unwrap()));
    }
    assert_eq!(seen.len(), 40);
}

#[test]
fn prekeys_are_refilled_and_rotated() {
    let bob = Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([2; 32]),
        addr("bob"),
        UNIX_EPOCH + Duration::from_secs(1_000),
    )
    .unwrap();
    assert_eq!(bob.prekey_counts().unwrap(), (0, 0));
    assert_eq!(bob.refill_prekeys(3, 8, UNIX_EPOCH + Duration::from_secs(1_000)).unwrap(), 16, "8 of each kind");
    assert_eq!(
        bob.refill_prekeys(3, 8, UNIX_EPOCH + Duration::from_secs(1_000)).unwrap(),
        0,
        "above the threshold: nothing to do"
    );
    let handed_out = bob.prekey_bundles(20).unwrap();
    assert_eq!(handed_out.len(), 8);
    assert_eq!(bob.prekey_bundles(20).unwrap().len(), 1, "every one-time prekey was handed out: one bundle without");
    assert!(matches!(bob.refill_prekeys(300, 300, UNIX_EPOCH), Err(DeviceError::PreKey(_))));
    let rotated = bob.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(1_500), Duration::from_secs(1_000)).unwrap();
    assert!(!rotated.signed_prekey && !rotated.last_resort_prekey);
    let old_bundle = bob.prekey_bundle().unwrap();
    let rotated = bob.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(2_000), Duration::from_secs(1_000)).unwrap();
    assert!(rotated.signed_prekey && rotated.last_resort_prekey);
    assert_ne!(bob.prekey_bundle().unwrap(), old_bundle);
    // A session started from the previous bundle still works (old keys are
    // kept a while). The 8 one-time prekeys of each kind were all handed out
    // above, so that bundle offered none, and none is consumed.
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    alice.start_session(&old_bundle).unwrap();
    let wire = alice.encrypt(bob.address(), b"from an old bundle").unwrap();
    assert_eq!(receive(&bob, alice.address(), &wire).unwrap(), b"from an old bundle");
    assert_eq!(bob.prekey_counts().unwrap(), (8, 8));
    // One of the bundles handed out earlier is used: one of each kind consumed.
    let bundles = bob.prekey_bundles(0).unwrap();
    assert!(bundles.is_empty());
    let carol =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([3; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    carol.start_session(&handed_out[3]).unwrap();
    let wire = carol.encrypt(bob.address(), b"from a handed-out bundle").unwrap();
    assert_eq!(receive(&bob, carol.address(), &wire).unwrap(), b"from a handed-out bundle");
    assert_eq!(bob.prekey_counts().unwrap(), (7, 7));
    // A refill counts the keys left to hand out (none: every one was handed
    // out), and keeps the 7 of each kind handed out and not consumed for the
    // contacts that hold them.
    assert_eq!(bob.refill_prekeys(8, 9, UNIX_EPOCH + Duration::from_secs(3_000)).unwrap(), 18, "9 of each kind");
    assert_eq!(bob.prekey_counts().unwrap(), (16, 16));
    assert_eq!(
        bob.refill_prekeys(8, 9, UNIX_EPOCH + Duration::from_secs(3_000)).unwrap(),
        0,
        "9 of each left to hand out"
    );
    // The new ones are offered next.
    assert_eq!(bob.prekey_bundles(20).unwrap().len(), 9);
}

#[test]
fn identity_changes_need_a_decision_and_safety_numbers_match() {
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob.address(), b"hi").unwrap();
    receive(&bob, alice.address(), &wire).unwrap();
    assert_eq!(
        alice.safety_number(bob.address()).unwrap().digits(),
        bob.safety_number(alice.address()).unwrap().digits()
    );
    // Bob reinstalls with a new identity under the same address.
    let new_bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([3; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let err = alice.start_session(&new_bob.prekey_bundle().unwrap()).unwrap_err();
    assert!(
        matches!(err, DeviceError::Session(SessionError::UntrustedIdentity { identity }) if identity == new_bob.identity_key())
    );
    alice.trust_identity(bob.address(), new_bob.identity_key()).unwrap();
    alice.start_session(&new_bob.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob.address(), b"hi again").unwrap();
    assert_eq!(receive(&new_bob, alice.address(), &wire).unwrap(), b"hi again");
    assert!(Address::new("", 1).is_err());
}

/// A pending decryption belongs to the device that made it: committed on
/// another device (an app with several accounts mixing them up), it is
/// refused and neither store changes.
#[test]
fn a_pending_decryption_commits_only_on_its_own_device() {
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let carol =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([3; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    // Bob and Carol each have a session with Alice, in the same steps.
    for peer in [&bob, &carol] {
        alice.start_session(&peer.prekey_bundle().unwrap()).unwrap();
        let wire = alice.encrypt(peer.address(), b"hello").unwrap();
        receive(peer, alice.address(), &wire).unwrap();
        let wire = peer.encrypt(alice.address(), b"hi").unwrap();
        receive(&alice, peer.address(), &wire).unwrap();
    }
    let to_bob = alice.encrypt(bob.address(), b"for bob only").unwrap();
    let to_carol = alice.encrypt(carol.address(), b"for carol only").unwrap();
    let (bob_before, carol_before) = (bob.backend().snapshot(), carol.backend().snapshot());

    let pending = bob.decrypt(alice.address(), &to_bob).unwrap();
    let result = carol.commit(pending);
    assert!(matches!(result, Err(DeviceError::ForeignPending)), "Carol committed Bob's pending decryption: {result:?}");
    let batch = bob.decrypt_batch(&[(alice.address().clone(), to_bob.clone())]).unwrap();
    let result = carol.commit_batch(batch);
    assert!(matches!(result, Err(DeviceError::ForeignPending)), "Carol committed Bob's batch: {result:?}");
    assert_eq!(bob.backend().snapshot(), bob_before);
    assert_eq!(carol.backend().snapshot(), carol_before);

    // Both sessions go on.
    assert_eq!(receive(&bob, alice.address(), &to_bob).unwrap(), b"for bob only");
    assert_eq!(receive(&carol, alice.address(), &to_carol).unwrap(), b"for carol only");

    // A first message (a new session, made from no row at all) committed on
    // a device that has no session with its sender either.
    let erin =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([5; 32]), addr("erin"), UNIX_EPOCH).unwrap();
    let dave =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([4; 32]), addr("dave"), UNIX_EPOCH).unwrap();
    erin.refill_prekeys(5, 5, UNIX_EPOCH).unwrap();
    dave.refill_prekeys(5, 5, UNIX_EPOCH).unwrap();
    alice.start_session(&erin.prekey_bundle().unwrap()).unwrap();
    let first = alice.encrypt(erin.address(), b"hello erin").unwrap();
    let (erin_before, dave_before) = (erin.backend().snapshot(), dave.backend().snapshot());
    let pending = erin.decrypt(alice.address(), &first).unwrap();
    let result = dave.commit(pending);
    assert!(matches!(result, Err(DeviceError::ForeignPending)), "Dave committed Erin's new session: {result:?}");
    assert_eq!(erin.backend().snapshot(), erin_before);
    assert_eq!(dave.backend().snapshot(), dave_before);
    assert!(!dave.has_session(alice.address()).unwrap());
    assert_eq!(receive(&erin, alice.address(), &first).unwrap(), b"hello erin");
}

/// What the device and store layers print never holds a plaintext, a sealed
/// value or a key: only lengths, tables and public keys.
#[test]
fn debug_output_is_redacted() {
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let secret = "SECRET-PLAINTEXT-0123456789";
    let wire = alice.encrypt(bob.address(), secret.as_bytes()).unwrap();
    let pending = bob.decrypt(alice.address(), &wire).unwrap();
    let batch = bob.decrypt_batch(&[(alice.address().clone(), wire.clone())]).unwrap();
    let sealed = bob.backend().scan(Table::PreKeys).unwrap().remove(0).1;
    let write = Write {
        table: Table::PreKeys,
        key: b"self".to_vec(),
        value: Some(sealed.clone()),
        expected: Expected::Value(sealed.clone()),
    };
    let printed = format!("{bob:?} {pending:?} {batch:?} {write:?} {:?}", Expected::Value(sealed.clone()));
    assert!(!printed.contains(secret), "{printed}");
    assert!(printed.contains(&format!("value_len: Some({})", sealed.len())), "{printed}");
    let as_listed = |bytes: &[u8]| bytes.iter().map(|b| format!("{b}")).collect::<Vec<_>>().join(", ");
    assert!(!printed.contains(&as_listed(&sealed[..8])), "a sealed value printed: {printed}");
    assert!(!printed.contains(&as_listed(&secret.as_bytes()[..8])), "{printed}");
}

/// The prekey trap closed (issue 19): `prekey_bundle()` called once per
/// contact never offers a one-time prekey twice, across handles on one
/// store and across a reopen, so that every contact's first message reads.
/// (It used to offer the lowest one-time prekey until it was consumed: the
/// second contact's first message failed with an unknown prekey.)
#[test]
fn every_bundle_offers_one_time_prekeys_no_other_bundle_offered() {
    use samizdat::prekeys::{PqPreKeyKind, PreKeyBundle};
    let dir = temp_dir("bundles");
    let path = dir.join("bob.db");
    let bob = Device::create(&path, &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let other_handle = Device::open(&path, &StorageKey::from_bytes([2; 32])).unwrap();
    bob.refill_prekeys(6, 6, UNIX_EPOCH).unwrap();
    let mut bundles: Vec<Vec<u8>> = Vec::new();
    for round in 0..2 {
        bundles.push(bob.prekey_bundle().unwrap());
        bundles.push(other_handle.prekey_bundle().unwrap());
        if round == 0 {
            bundles.extend(bob.prekey_bundles(1).unwrap());
        }
    }
    drop((bob, other_handle));
    let bob = Device::open(&path, &StorageKey::from_bytes([2; 32])).unwrap();
    bundles.push(bob.prekey_bundle().unwrap()); // the sixth and last of each kind
    let parsed: Vec<PreKeyBundle> = bundles.iter().map(|b| PreKeyBundle::from_bytes(b).unwrap()).collect();
    let one_time: std::collections::BTreeSet<u32> = parsed.iter().map(|b| b.one_time_prekey_id().unwrap()).collect();
    let pq: std::collections::BTreeSet<u32> = parsed
        .iter()
        .map(|b| match b.pq_prekey() {
            (id, PqPreKeyKind::OneTime) => id,
            other => panic!("a one-time ML-KEM prekey was left: {other:?}"),
        })
        .collect();
    assert_eq!((one_time.len(), pq.len()), (6, 6), "six calls, six keys of each kind, none twice");

    // Every one handed out: the next bundle offers none, and still starts a session.
    let last = PreKeyBundle::from_bytes(&bob.prekey_bundle().unwrap()).unwrap();
    assert_eq!(last.one_time_prekey_id(), None);
    assert!(matches!(last.pq_prekey(), (_, PqPreKeyKind::LastResort)));
    bundles.push(last.to_bytes());

    // Seven contacts, one bundle each: every first message reads.
    for (i, bundle) in bundles.iter().enumerate() {
        let contact = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([9; 32]),
            addr(&format!("contact{i}")),
            UNIX_EPOCH,
        )
        .unwrap();
        contact.start_session(bundle).unwrap();
        let wire = contact.encrypt(bob.address(), b"hello bob").unwrap();
        assert_eq!(receive(&bob, contact.address(), &wire).unwrap(), b"hello bob", "contact {i}");
    }
    assert_eq!(bob.prekey_counts().unwrap(), (0, 0));
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}
