//! Several handles on one store never reuse a message key (PROTOCOL.md 14.9,
//! 14.11): two `Device`s over one database (by one path, or through a
//! symbolic link) and over one shared `MemoryBackend`, hammered from threads
//! that encrypt to the same peer and commit decryptions; each write point
//! raced by another handle between its read and its write, deterministically;
//! a second name of the database file (a hard link) refused; and a device
//! inherited through `fork` refused in the child, the parent going on.
//!
//! Key reuse is checked on the ciphertexts themselves: a body is
//! `ChaCha20-Poly1305(padded plaintext)`, so `body XOR padded(plaintext)` is
//! the keystream of its message key and nonce, and no two may be equal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use support::{addr, temp_dir};

use std::{
    collections::HashSet,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use samizdat::{
    DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError, PendingMessage},
    limits::MAX_WRITE_ATTEMPTS,
    store::{Backend, MemoryBackend, Row, SqliteBackend, StoreError, Table, Write},
    wire::Message,
};

const KEY: StorageKey = StorageKey::from_bytes([0x4b; 32]);
/// Threads per handle, and messages each thread encrypts.
const THREADS_PER_HANDLE: usize = 2;
const MESSAGES_PER_THREAD: usize = 20;
/// Replies from the peer, committed by the hammering threads.
const REPLIES: usize = 8;
/// Attempts of one call refused with a typed error before the test gives up.
const TEST_RETRIES: usize = 1_000;

/// A refusal that the caller may retry: another handle wrote the row first
/// (after the library's own retries), or SQLite stayed busy.
fn retryable(e: &DeviceError) -> bool {
    matches!(e, DeviceError::Store(StoreError::Conflict { .. } | StoreError::Locked))
}

/// The keystream of a message: its body XOR the padded plaintext (64 bytes: the
/// smallest bucket).
fn keystream(wire: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let body = match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m.body().to_vec(),
        Message::PreKey(p) => p.message().body().to_vec(),
    };
    let mut padded = plaintext.to_vec();
    padded.push(0x80);
    padded.resize(64, 0);
    assert!(body.len() >= 64 + 16, "a body is at least one bucket and a tag");
    body.iter().zip(&padded).map(|(b, p)| b ^ p).collect()
}

/// A plaintext and the ciphertext it was sent as.
type Sent = (Vec<u8>, Vec<u8>);

/// Counts the calls refused with a retryable typed error.
#[derive(Default)]
struct Refusals(AtomicUsize);

impl Refusals {
    fn retry<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, DeviceError>) -> T {
        for _ in 0..TEST_RETRIES {
            match op() {
                Ok(value) => return value,
                Err(e) if retryable(&e) => {
                    self.0.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("{what}: refused with {e:?}"),
            }
        }
        panic!("{what}: still refused after {TEST_RETRIES} attempts");
    }
}

/// Decrypts and commits on `handle`, decrypting again when the commit finds the
/// session changed (another thread or handle committed or encrypted meanwhile).
fn receive<B: Backend>(refusals: &Refusals, handle: &Device<B>, from: &Address, wire: &[u8]) -> Vec<u8> {
    for _ in 0..TEST_RETRIES {
        let pending: PendingMessage = refusals.retry("decrypt", || handle.decrypt(from, wire));
        let plaintext = pending.plaintext().to_vec();
        match handle.commit(pending) {
            Ok(_) => return plaintext,
            Err(DeviceError::Session(SessionError::StalePending)) => {
                refusals.0.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if retryable(&e) => {
                refusals.0.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("commit: refused with {e:?}"),
        }
    }
    panic!("commit: still refused after {TEST_RETRIES} attempts");
}

/// Two handles on one store of Alice's, hammered by threads that encrypt to
/// Bob and commit Bob's replies; then Bob decrypts everything.
fn hammer<B: Backend>(first: &Device<B>, second: &Device<B>) {
    assert_eq!(first.identity_key(), second.identity_key(), "two handles of one device");
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xb0; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let alice = first.address().clone();
    let refusals = Refusals::default();
    first.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = first.encrypt(bob.address(), b"hello").unwrap();
    assert_eq!(bob.decrypt(&alice, &hello).map(|p| bob.commit(p)).unwrap().ok(), Some(Vec::new()));
    let replies: Vec<Vec<u8>> =
        (0..REPLIES).map(|r| bob.encrypt(&alice, format!("reply {r}").as_bytes()).unwrap()).collect();

    let sent: Mutex<Vec<Sent>> = Mutex::new(vec![(b"hello".to_vec(), hello)]);
    let handles = [first, second];
    let threads = handles.len() * THREADS_PER_HANDLE;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (handle, replies, sent, refusals, bob) = (handles[t % 2], &replies, &sent, &refusals, &bob);
            s.spawn(move || {
                let mut mine = Vec::new();
                let mut my_replies = (t..REPLIES).step_by(threads);
                for n in 0..MESSAGES_PER_THREAD {
                    let text = format!("thread {t} message {n}").into_bytes();
                    let wire = refusals.retry("encrypt", || handle.encrypt(bob.address(), &text));
                    mine.push((text, wire));
                    if n % 4 == 1
                        && let Some(r) = my_replies.next()
                    {
                        let plaintext = receive(refusals, handle, bob.address(), &replies[r]);
                        assert_eq!(plaintext, format!("reply {r}").as_bytes());
                    }
                }
                for r in my_replies {
                    assert_eq!(receive(refusals, handle, bob.address(), &replies[r]), format!("reply {r}").as_bytes());
                }
                sent.lock().unwrap().extend(mine);
            });
        }
    });

    let sent = sent.into_inner().unwrap();
    assert_eq!(sent.len(), 1 + threads * MESSAGES_PER_THREAD);
    // No two messages share a key and nonce.
    let keystreams: HashSet<Vec<u8>> = sent.iter().map(|(text, wire)| keystream(wire, text)).collect();
    assert_eq!(keystreams.len(), sent.len(), "{} messages reused a keystream", sent.len() - keystreams.len());
    // Bob decrypts every message once, to what was sent.
    for (text, wire) in &sent[1..] {
        let pending = bob.decrypt(&alice, wire).unwrap_or_else(|e| {
            panic!("{}: {e:?}", String::from_utf8_lossy(text));
        });
        assert_eq!(pending.plaintext(), text.as_slice());
        bob.commit(pending).unwrap();
    }
    for (_, wire) in &sent {
        assert!(matches!(
            bob.decrypt(&alice, wire),
            Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
        ));
    }
    // The conversation goes on from both handles.
    for handle in handles {
        let reply = bob.encrypt(&alice, b"after").unwrap();
        assert_eq!(receive(&refusals, handle, bob.address(), &reply), b"after");
        let wire = handle.encrypt(bob.address(), b"still here").unwrap();
        assert_eq!(bob.commit(bob.decrypt(&alice, &wire).unwrap()).ok(), Some(Vec::new()));
    }
    println!("{} calls refused and retried", refusals.0.load(Ordering::Relaxed));
}

fn integrity_ok(path: &Path) {
    let check = rusqlite::Connection::open(path).unwrap();
    let result: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(result, "ok");
}

#[test]
fn two_handles_through_a_symbolic_link() {
    let dir = temp_dir("symlink");
    let path = dir.join("alice.db");
    let link = dir.join("link.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let first = Device::create(&path, &KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let second = Device::open(&link, &KEY).unwrap();
    hammer(&first, &second);
    drop((first, second));
    integrity_ok(&path);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_handles_on_one_path() {
    let dir = temp_dir("same-path");
    let path = dir.join("alice.db");
    let first = Device::create(&path, &KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let second = Device::open(&path, &KEY).unwrap();
    hammer(&first, &second);
    drop((first, second));
    integrity_ok(&path);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hard link gives the file a second name, and SQLite would give that name
/// its own WAL and index: a handle through either name is refused, and so are
/// the open handle's writes while the link exists. Nothing is lost, and once
/// the link is gone two handles go on.
#[test]
fn a_second_name_by_hard_link_is_refused() {
    let dir = temp_dir("hardlink");
    let path = dir.join("alice.db");
    let link = dir.join("link.db");
    let first = Device::create(&path, &KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let carol = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xc0; 32]), addr("carol"), UNIX_EPOCH)
        .unwrap();
    first.start_session(&carol.prekey_bundle().unwrap()).unwrap();
    let before = first.encrypt(carol.address(), b"before the link").unwrap();

    std::fs::hard_link(&path, &link).unwrap();
    for name in [&link, &path] {
        let result = Device::open(name, &KEY);
        assert!(matches!(result, Err(DeviceError::Store(StoreError::MovedOrLinked))), "{result:?}");
    }
    let result = first.encrypt(carol.address(), b"while linked");
    assert!(matches!(result, Err(DeviceError::Store(StoreError::MovedOrLinked))), "{result:?}");
    std::fs::remove_file(&link).unwrap();

    assert_eq!(carol.decrypt(first.address(), &before).unwrap().plaintext(), b"before the link");
    let second = Device::open(&path, &KEY).unwrap();
    hammer(&first, &second);
    drop((first, second));
    integrity_ok(&path);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_handles_over_one_memory_backend() {
    let store = Arc::new(MemoryBackend::new());
    let first = Device::create_in(store.clone(), &KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let second = Device::open_in(store.clone(), &KEY).unwrap();
    hammer(&first, &second);
}

/// A backend shared with other handles that runs queued actions (another
/// handle's calls) just before each of its own `apply`s: a deterministic
/// race between reading a row and writing it.
struct Interleaving {
    inner: Arc<MemoryBackend>,
    before_apply: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    conflicts: AtomicUsize,
}

impl Interleaving {
    fn new(inner: Arc<MemoryBackend>) -> Self {
        Self { inner, before_apply: Mutex::new(Vec::new()), conflicts: AtomicUsize::new(0) }
    }

    fn queue(&self, action: impl FnOnce() + Send + 'static) {
        self.before_apply.lock().unwrap().push(Box::new(action));
    }
}

impl Backend for Interleaving {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let action = self.before_apply.lock().unwrap().pop();
        if let Some(action) = action {
            action();
        }
        let result = self.inner.apply(writes);
        if matches!(result, Err(StoreError::Conflict { .. })) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

#[test]
fn a_write_raced_by_another_handle_is_recomputed_or_refused() {
    let store = Arc::new(MemoryBackend::new());
    let first = Device::create_in(Interleaving::new(store.clone()), &KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let second = Arc::new(Device::open_in(store.clone(), &KEY).unwrap());
    let bob = Arc::new(
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xb0; 32]), addr("bob"), UNIX_EPOCH).unwrap(),
    );
    let conflicts = || first.backend().conflicts.load(Ordering::SeqCst);
    let alice = first.address().clone();
    let mut sent: Vec<Sent> = Vec::new();
    let raced: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let encrypt_on_second = |text: &'static [u8]| {
        let (second, bob, raced) = (second.clone(), bob.clone(), raced.clone());
        move || raced.lock().unwrap().push((text.to_vec(), second.encrypt(bob.address(), text).unwrap()))
    };

    // start_session: the other handle starts one first; this one builds on it.
    first.backend().queue({
        let (second, bundle) = (second.clone(), bob.prekey_bundle().unwrap());
        move || drop(second.start_session(&bundle).unwrap())
    });
    first.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    assert_eq!(conflicts(), 1);

    // encrypt: the other handle encrypts between this one's read and write.
    first.backend().queue(encrypt_on_second(b"from the second handle"));
    sent.push((b"from the first handle".to_vec(), first.encrypt(bob.address(), b"from the first handle").unwrap()));
    assert_eq!(conflicts(), 2);

    // Past MAX_WRITE_ATTEMPTS races in a row the call is refused, having written nothing.
    for _ in 0..MAX_WRITE_ATTEMPTS {
        first.backend().queue(encrypt_on_second(b"racing"));
    }
    let before = store.snapshot();
    let result = first.encrypt(bob.address(), b"never sent");
    assert!(matches!(result, Err(DeviceError::Store(StoreError::Conflict { table: Table::Sessions }))), "{result:?}");
    assert_eq!(conflicts(), 2 + MAX_WRITE_ATTEMPTS);
    assert_ne!(store.snapshot(), before, "the other handle's encryptions are stored");
    sent.extend(raced.lock().unwrap().drain(..));

    // Bob decrypts everything that was handed out, once each, with distinct keystreams.
    let keystreams: HashSet<Vec<u8>> = sent.iter().map(|(text, wire)| keystream(wire, text)).collect();
    assert_eq!(keystreams.len(), sent.len());
    for (text, wire) in &sent {
        let pending = bob.decrypt(&alice, wire).unwrap();
        assert_eq!(pending.plaintext(), text.as_slice());
        bob.commit(pending).unwrap();
    }

    // commit: the session row is rewritten between the check and the write:
    // stale, nothing written; decrypted again, it commits.
    let reply = bob.encrypt(&alice, b"reply").unwrap();
    let pending = first.decrypt(bob.address(), &reply).unwrap();
    first.backend().queue(encrypt_on_second(b"rewrites the row"));
    let result = first.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    let pending = first.decrypt(bob.address(), &reply).unwrap();
    first.commit(pending).unwrap();
    // A pending made through one handle commits through the other: one device.
    let reply = bob.encrypt(&alice, b"reply 2").unwrap();
    second.commit(first.decrypt(bob.address(), &reply).unwrap()).unwrap();

    // commit of a new session: the prekey row changes (the other handle
    // refills) between the read and the write; the prekeys are read again.
    first.refill_prekeys(2, 2, UNIX_EPOCH).unwrap();
    let carol = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xc0; 32]), addr("carol"), UNIX_EPOCH)
        .unwrap();
    carol.start_session(&first.prekey_bundle().unwrap()).unwrap();
    let hello = carol.encrypt(&alice, b"hello from carol").unwrap();
    let pending = first.decrypt(carol.address(), &hello).unwrap();
    let conflicts_before = conflicts();
    first.backend().queue({
        let second = second.clone();
        // One of each kind is left to hand out (carol's bundle took the other).
        move || assert_eq!(second.refill_prekeys(5, 5, UNIX_EPOCH).unwrap(), 8)
    });
    first.commit(pending).unwrap();
    assert_eq!(conflicts(), conflicts_before + 1);
    assert_eq!(first.prekey_counts().unwrap(), (5, 5), "carol's one-time prekeys consumed from the refilled set");

    // Prekey changes race too: the refill is recomputed on the rotated set.
    first.backend().queue({
        let second = second.clone();
        move || {
            assert!(
                second
                    .rotate_prekeys(UNIX_EPOCH + Duration::from_secs(1_000_000), Duration::from_secs(1))
                    .unwrap()
                    .signed_prekey
            )
        }
    });
    let conflicts_before = conflicts();
    assert_eq!(first.refill_prekeys(10, 10, UNIX_EPOCH).unwrap(), 10);
    assert_eq!(conflicts(), conflicts_before + 1);
    assert_eq!(second.prekey_counts().unwrap(), (10, 10));

    // create: another handle created a device meanwhile.
    let shared = Arc::new(MemoryBackend::new());
    let racing = Interleaving::new(shared.clone());
    racing.queue({
        let shared = shared.clone();
        move || drop(Device::create_in(shared, &KEY, addr("other"), UNIX_EPOCH).unwrap())
    });
    let result = Device::create_in(racing, &KEY, addr("alice"), UNIX_EPOCH);
    assert!(matches!(result, Err(DeviceError::Store(StoreError::AlreadyExists))), "{result:?}");
    assert_eq!(Device::open_in(shared, &KEY).unwrap().address(), &addr("other"));
}

/// Whether a call made in a forked child was refused as it must be.
fn refused_in_child<T>(result: &Result<T, DeviceError>) -> bool {
    matches!(result, Err(DeviceError::Forked))
}

/// Forks, runs `child` in the child (which exits with the code it returns,
/// without running destructors of the parent's state or flushing anything),
/// and returns the child's exit code.
#[allow(unsafe_code)]
fn in_forked_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child`, which calls the device (whose
    // refusal comes before any lock or store access) and drops it, then
    // `_exit`s; the parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child at once, as a child of fork must.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status), "the child did not exit normally: status {status}");
    libc::WEXITSTATUS(status)
}

/// Every call that touches state, on a device inherited through `fork`: 0 if
/// all were refused, else 10 plus the index of the first that was not.
fn calls_in_child<B: Backend>(device: &Device<B>, bob: &Address, pending: PendingMessage, wire: &[u8]) -> i32 {
    let results = [
        refused_in_child(&device.encrypt(bob, b"from the child")),
        refused_in_child(&device.decrypt(bob, wire)),
        refused_in_child(&device.commit(pending)),
        refused_in_child(&device.decrypt_batch(&[(bob.clone(), wire.to_vec())])),
        refused_in_child(&device.has_session(bob)),
        refused_in_child(&device.peer_identity(bob)),
        refused_in_child(&device.safety_number(bob)),
        refused_in_child(&device.trust_identity(bob, device.identity_key())),
        refused_in_child(&device.prekey_bundle()),
        refused_in_child(&device.prekey_bundles(2)),
        refused_in_child(&device.prekey_counts()),
        refused_in_child(&device.refill_prekeys(10, 10, UNIX_EPOCH)),
        refused_in_child(&device.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(1 << 40), Duration::from_secs(0))),
        refused_in_child(&device.start_session(b"not a bundle")),
    ];
    results.iter().position(|refused| !refused).map_or(0, |i| i32::try_from(i).map_or(99, |i| 10 + i))
}

/// Forks with `alice` open: in the child every call is refused (and
/// `backend_refused` holds of the inherited backend); the parent goes on.
fn fork_leaves_the_parent_intact<B: Backend>(
    alice: Device<B>,
    backend_refused: impl Fn(&B) -> bool,
    check: impl Fn(&Device<B>),
) {
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0xb0; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt(bob.address(), b"hello").unwrap();
    bob.commit(bob.decrypt(alice.address(), &hello).unwrap()).unwrap();
    let first = bob.encrypt(alice.address(), b"first").unwrap();
    let second = bob.encrypt(alice.address(), b"second").unwrap();
    let pending = alice.decrypt(bob.address(), &first).unwrap();
    let child_pending = alice.decrypt(bob.address(), &first).unwrap();

    let mut alice = Some(alice);
    let code = in_forked_child(|| {
        let device = alice.as_ref().unwrap();
        let code = calls_in_child(device, bob.address(), child_pending, &second);
        let code = if code == 0 && !backend_refused(device.backend()) { 9 } else { code };
        // Dropping the device in the child must not close the parent's connection.
        drop(alice.take());
        code
    });
    let alice = alice.unwrap();
    assert_ne!(code, 9, "the backend was used in the child");
    assert_eq!(code, 0, "call {} of calls_in_child was not refused in the child", code - 10);

    // The parent goes on: what it decrypted before the fork commits, and the
    // conversation continues both ways.
    alice.commit(pending).unwrap();
    let pending = alice.decrypt(bob.address(), &second).unwrap();
    assert_eq!(pending.plaintext(), b"second");
    alice.commit(pending).unwrap();
    let wire = alice.encrypt(bob.address(), b"after the fork").unwrap();
    let pending = bob.decrypt(alice.address(), &wire).unwrap();
    assert_eq!(pending.plaintext(), b"after the fork");
    bob.commit(pending).unwrap();
    check(&alice);
}

#[test]
fn a_forked_child_is_refused_and_the_parent_goes_on() {
    let dir = temp_dir("fork");
    let path = dir.join("alice.db");
    let refused = |backend: &SqliteBackend| matches!(backend.get(Table::Meta, b"key-check"), Err(StoreError::Forked));
    fork_leaves_the_parent_intact(Device::create(&path, &KEY, addr("alice"), UNIX_EPOCH).unwrap(), refused, |alice| {
        assert!(alice.has_session(&addr("bob")).unwrap());
        // The child did not close the parent's connection (which could have
        // removed the log and the index from under it).
        assert!(dir.join("alice.db-wal").exists() && dir.join("alice.db-shm").exists());
        integrity_ok(&path);
    });
    integrity_ok(&path);
    let reopened = Device::open(&path, &KEY).unwrap();
    assert!(reopened.has_session(&addr("bob")).unwrap());
    drop(reopened);
    std::fs::remove_dir_all(&dir).unwrap();

    let memory = Device::create_in(MemoryBackend::new(), &KEY, addr("alice"), UNIX_EPOCH).unwrap();
    fork_leaves_the_parent_intact(memory, |_| true, |_| {});
}
