//! A damaged SQLite store (issue 13, part 4, item 3): truncated, overwritten
//! at random places, its log (`-wal`) deleted, or given another device's log.
//! Opening and using it gives a typed error or works, never panics, and
//! keeps two promises wherever SQLite can tell what it holds:
//!
//! - a message whose decryption was committed never decrypts again as new;
//! - a message key that encrypted a message sent never encrypts another.
//!
//! What SQLite cannot see is shown as it is and documented in PROTOCOL.md
//! 16.6: a log deleted while it held committed transactions (another
//! connection's read kept them out of the database, and the process was
//! killed) loses them; a log of another time, or of another store under
//! the same storage key, is replayed into the database. `store_errors.rs`
//! covers empty files, swapped databases and bytes flipped at regular
//! offsets; randomness here is seeded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use samizdat::{
    DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError},
    rand_core::Rng,
    store::{Backend, StoreError, Table},
    wire::Message,
};

const KEY_ALICE: StorageKey = StorageKey::from_bytes([1; 32]);
const KEY_BOB: StorageKey = StorageKey::from_bytes([2; 32]);
const KEY_CAROL: StorageKey = StorageKey::from_bytes([3; 32]);

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `path` with `suffix` appended (`-wal`, `-shm`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `bytes` as the database at `path`, with no log or index beside it
/// (a closed store, or what a killed process leaves once its log is gone).
fn put_database(path: &Path, bytes: &[u8]) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(path, suffix));
    }
    std::fs::write(path, bytes).unwrap();
}

fn receive(to: &Device, from: &Address, wire: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let pending = to.decrypt(from, wire)?;
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending)?;
    Ok(plaintext)
}

/// What Bob did before his store was damaged.
#[derive(Default)]
struct History {
    /// Alice's messages whose decryption Bob committed.
    committed: Vec<Vec<u8>>,
    /// Bob's messages to Alice, with their plaintexts.
    sent: Vec<(Vec<u8>, Vec<u8>)>,
}

impl History {
    fn send(&mut self, bob: &Device, text: &str) -> Vec<u8> {
        let wire = bob.encrypt(&address("alice"), text.as_bytes()).unwrap();
        self.sent.push((wire.clone(), text.as_bytes().to_vec()));
        wire
    }

    fn commit(&mut self, bob: &Device, wire: &[u8]) {
        receive(bob, &address("alice"), wire).unwrap();
        self.committed.push(wire.to_vec());
    }
}

/// Alice (`dir/alice.db`) and Bob (`dir/bob.db`) talk: Alice's first
/// message, replies both ways (each a DH step), and messages of Alice that
/// Bob gets out of order (so he keeps skipped keys, in their own row). Bob's
/// store is closed at the end.
fn converse(dir: &Path) -> (Device, History) {
    let alice = Device::create(dir.join("alice.db"), &KEY_ALICE, address("alice"), UNIX_EPOCH).unwrap();
    let mut history = History::default();
    {
        let bob = Device::create(dir.join("bob.db"), &KEY_BOB, address("bob"), UNIX_EPOCH).unwrap();
        bob.refill_prekeys(5, 5, UNIX_EPOCH).unwrap();
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        for round in 0..4 {
            let wires: Vec<_> = (0..3)
                .map(|i| alice.encrypt(&address("bob"), format!("alice {round}.{i}").as_bytes()).unwrap())
                .collect();
            // The last first, then the others: two skipped keys for a while.
            history.commit(&bob, &wires[2]);
            history.commit(&bob, &wires[0]);
            if round < 3 {
                history.commit(&bob, &wires[1]);
            }
            for i in 0..2 {
                let wire = history.send(&bob, &format!("bob {round}.{i}"));
                receive(&alice, &address("bob"), &wire).unwrap();
            }
        }
        // One skipped key left; Alice's last message is still to come.
    }
    (alice, history)
}

/// The padded plaintext of a message as it was encrypted: the content,
/// `0x80`, then zeros (PROTOCOL.md 5; at least 64 bytes).
fn padded(text: &[u8]) -> Vec<u8> {
    let mut padded = text.to_vec();
    padded.push(0x80);
    padded.resize(padded.len().max(64), 0);
    padded
}

fn body(wire: &[u8]) -> Vec<u8> {
    match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m.body().to_vec(),
        Message::PreKey(p) => p.message().body().to_vec(),
    }
}

/// Whether two messages were encrypted with the same keystream: then the
/// XOR of their bodies is the XOR of their padded plaintexts.
fn same_keystream((wire1, text1): (&[u8], &[u8]), (wire2, text2): (&[u8], &[u8])) -> bool {
    let (body1, body2, padded1, padded2) = (body(wire1), body(wire2), padded(text1), padded(text2));
    let len = (body1.len().min(body2.len()) - 16).min(padded1.len()).min(padded2.len());
    (0..len).all(|k| body1[k] ^ body2[k] == padded1[k] ^ padded2[k])
}

/// What a damaged store of Bob's did.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Refused at open, with a store error.
    RefusedAtOpen(String),
    /// Opened; a later call failed with a store error.
    RefusedInUse(String),
    /// Opened, and the session with Alice is gone (the record reads as
    /// empty).
    SessionGone,
    /// Opened, and what Bob encrypts now Alice cannot decrypt (his state
    /// is not the one she talks to).
    Diverged(String),
    /// Opened, and the conversation goes on: Alice decrypts what Bob sends.
    Intact,
}

fn store_error(e: &StoreError) -> String {
    let name = format!("{e:?}");
    name.split(['(', ' ', '{']).next().unwrap().to_owned()
}

/// Opens Bob's store at `path` and checks the two promises: no message of
/// Alice that Bob committed decrypts again, and what Bob encrypts now shares
/// no keystream with what he sent before. `Err` names a broken promise.
fn check(path: &Path, alice: &Device, history: &History, text: &str) -> Result<Outcome, String> {
    let bob = match Device::open(path, &KEY_BOB) {
        Ok(bob) => bob,
        Err(DeviceError::Store(e)) => return Ok(Outcome::RefusedAtOpen(store_error(&e))),
        Err(e) => return Err(format!("open failed with a non-store error: {e:?}")),
    };
    let mut refused = None;
    for (i, wire) in history.committed.iter().enumerate() {
        match bob.decrypt(&address("alice"), wire) {
            Ok(pending) => {
                return Err(format!("committed message {i} decrypted again: {:?}", pending.plaintext()));
            }
            Err(DeviceError::Store(e)) => refused = refused.or(Some(store_error(&e))),
            Err(DeviceError::Session(_)) => {}
            Err(e) => return Err(format!("committed message {i}: {e:?}")),
        }
    }
    match bob.encrypt(&address("alice"), text.as_bytes()) {
        Ok(wire) => {
            if let Some((i, _)) = history
                .sent
                .iter()
                .enumerate()
                .find(|(_, (old, old_text))| same_keystream((&wire, text.as_bytes()), (old, old_text)))
            {
                return Err(format!("the message key of sent message {i} encrypted again"));
            }
            if let Some(refused) = refused {
                return Ok(Outcome::RefusedInUse(refused));
            }
            // Alice only looks: her store is not changed.
            match alice.decrypt(&address("bob"), &wire) {
                Ok(pending) if pending.plaintext() == text.as_bytes() => Ok(Outcome::Intact),
                Ok(_) => Err("Alice decrypted another plaintext".into()),
                Err(DeviceError::Session(e)) => Ok(Outcome::Diverged(format!("{e:?}"))),
                Err(e) => Err(format!("Alice: {e:?}")),
            }
        }
        Err(DeviceError::Store(e)) => Ok(Outcome::RefusedInUse(refused.unwrap_or_else(|| store_error(&e)))),
        Err(DeviceError::Session(SessionError::NoSession)) => {
            Ok(refused.map_or(Outcome::SessionGone, Outcome::RefusedInUse))
        }
        Err(e) => Err(format!("encrypt: {e:?}")),
    }
}

/// Tallies outcomes; panics on a broken promise, naming the damage.
fn tally(outcomes: &mut BTreeMap<Outcome, usize>, damage: &str, result: Result<Outcome, String>) {
    match result {
        Ok(outcome) => *outcomes.entry(outcome).or_default() += 1,
        Err(broken) => panic!("{damage}: {broken}"),
    }
}

/// Damage is refused or harmless: never a session that vanished, or one
/// that changed without a store error.
fn assert_detected(outcomes: &BTreeMap<Outcome, usize>) {
    assert!(
        outcomes.keys().all(|o| !matches!(o, Outcome::SessionGone | Outcome::Diverged(_))),
        "damage went unnoticed: {outcomes:?}"
    );
}

/// A store cut short anywhere (at every page boundary, inside the header, at
/// seeded random lengths) is refused with a store error when opened, unless
/// the cut took only zeros (the unused end of the last page, which SQLite
/// reads back as zeros): then it works as before. It never breaks a promise,
/// and the session never vanishes or changes unnoticed.
#[test]
fn a_truncated_store_is_refused_and_breaks_no_promise() {
    let dir = dir("truncated");
    let path = dir.join("bob.db");
    let (alice, history) = converse(&dir);
    let pristine = std::fs::read(&path).unwrap();
    let page = 4096;
    assert_eq!(pristine.len() % page, 0);
    let mut rng = support::rng(0x7e11_0c47);
    let mut lengths: Vec<usize> = (0..pristine.len() / page).map(|k| k * page).collect();
    lengths.extend([1, 50, 99, 100, 101, page - 1, page + 1]);
    lengths.extend((0..40).map(|_| rng.next_u32() as usize % pristine.len()));
    let mut outcomes = BTreeMap::new();
    for (n, len) in lengths.iter().enumerate() {
        put_database(&path, &pristine[..*len]);
        let result = check(&path, &alice, &history, &format!("t{n}"));
        // SQLite reads past the end of the file as zeros: a cut that took
        // only zeros (the unused tail of the last page) lost nothing.
        let lost = pristine[*len..].iter().any(|&b| b != 0);
        assert!(!(lost && result == Ok(Outcome::Intact)), "cut to {len}: the store worked without its data");
        tally(&mut outcomes, &format!("truncated to {len}"), result);
    }
    println!("truncation ({} cuts of {} bytes): {outcomes:?}", lengths.len(), pristine.len());
    assert_detected(&outcomes);

    // Control: the whole file works, and Alice reads what Bob sends.
    put_database(&path, &pristine);
    assert_eq!(check(&path, &alice, &history, "whole"), Ok(Outcome::Intact));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Where the keys of Bob's session rows (the keyed hashes of his peers'
/// addresses) lie in the file at `path`, as the store is now.
fn row_key_spots(path: &Path) -> Vec<usize> {
    let bob = Device::open(path, &KEY_BOB).unwrap();
    let keys: Vec<Vec<u8>> = bob.backend().scan(Table::Sessions).unwrap().into_iter().map(|(key, _)| key).collect();
    drop(bob);
    let file = std::fs::read(path).unwrap();
    file.windows(32).enumerate().filter(|(_, w)| keys.iter().any(|k| k[..32] == **w)).map(|(i, _)| i).collect()
}

/// Random bytes written over a closed store, at one to three seeded random
/// places of 1 to 64 bytes each: the store works, or a call fails with a
/// store error; never a broken promise. A session vanishes only where the
/// damage hit the key of its row (next test); it never changes unnoticed.
#[test]
fn a_store_overwritten_at_random_places_breaks_no_promise() {
    let dir = dir("overwritten");
    let path = dir.join("bob.db");
    let (alice, history) = converse(&dir);
    let spots = row_key_spots(&path);
    let pristine = std::fs::read(&path).unwrap();
    let mut rng = support::rng(0x0bad_5eed);
    let (mut outcomes, mut key_hits) = (BTreeMap::new(), BTreeMap::new());
    let trials = 150;
    for trial in 0..trials {
        let mut damaged = pristine.clone();
        let mut places = Vec::new();
        for _ in 0..1 + rng.next_u32() % 3 {
            let len = 1 + rng.next_u32() as usize % 64;
            let offset = rng.next_u32() as usize % (damaged.len() - len);
            rng.fill_bytes(&mut damaged[offset..offset + len]);
            places.push((offset, len));
        }
        let hits_key = places.iter().any(|&(offset, len)| spots.iter().any(|&k| offset < k + 32 && k < offset + len));
        put_database(&path, &damaged);
        tally(
            if hits_key { &mut key_hits } else { &mut outcomes },
            &format!("trial {trial}, overwritten at {places:?}"),
            check(&path, &alice, &history, &format!("o{trial}")),
        );
    }
    println!("overwrites ({trials} trials of {} bytes): {outcomes:?}; on a row key: {key_hits:?}", pristine.len());
    assert_detected(&outcomes);
    assert!(key_hits.keys().all(|o| !matches!(o, Outcome::Diverged(_))), "{key_hits:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The limitation (PROTOCOL.md 16.6, "Deletion"): a row is found by its key,
/// which is not sealed. One bit flipped in the key of Bob's session row with
/// Alice, in the database file, makes the row unreachable: SQLite's quick
/// check passes, and the session reads as empty, as if the row were
/// deleted. Alice's identity is no longer trusted (the next key offered for
/// her address is trusted on first use). No promise is broken: her
/// committed messages stay refused (her first one consumed a one-time
/// prekey), and Bob has no session to encrypt with.
#[test]
fn a_flipped_bit_in_a_row_key_reads_as_a_deleted_row() {
    let dir = dir("row-key");
    let path = dir.join("bob.db");
    let (alice, history) = converse(&dir);
    let spots = row_key_spots(&path);
    let pristine = std::fs::read(&path).unwrap();
    let mut gone = 0;
    for &spot in &spots {
        for bit in [0, 7 * 8 + 3, 31 * 8 + 7] {
            let mut damaged = pristine.clone();
            damaged[spot + bit / 8] ^= 1 << (bit % 8);
            put_database(&path, &damaged);
            let outcome = check(&path, &alice, &history, "after the flip").unwrap();
            if outcome == Outcome::SessionGone {
                assert_eq!(quick_check(&path), "ok");
                let bob = Device::open(&path, &KEY_BOB).unwrap();
                assert_eq!(bob.peer_identity(&address("alice")).unwrap(), None);
                gone += 1;
            }
        }
    }
    assert!(gone > 0, "no flip made the session vanish (row keys at {spots:?})");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A read transaction on `path` through a connection of its own (the app's,
/// a backup tool's): while it lasts, checkpoints cannot copy later commits
/// into the database, and they stay in the log only.
fn pin(path: &Path) -> rusqlite::Connection {
    let reader = rusqlite::Connection::open(path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader.query_row("SELECT count(*) FROM sessions", [], |row| row.get(0)).unwrap();
    reader
}

fn copy_files(from: &Path, to: &Path, suffixes: &[&str]) {
    for suffix in suffixes {
        std::fs::copy(with_suffix(from, suffix), with_suffix(to, suffix)).unwrap();
    }
}

/// A directory of its own under `dir`, holding a copy of Bob's database
/// (and of its log, with `log`) as the files are now: what a kill leaves,
/// with the log deleted or not.
fn image(dir: &Path, name: &str, log: bool) -> PathBuf {
    let image = dir.join(name);
    std::fs::create_dir_all(&image).unwrap();
    let to = image.join("bob.db");
    copy_files(&dir.join("bob.db"), &to, if log { &["", "-wal"] } else { &[""] });
    to
}

fn quick_check(path: &Path) -> String {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.query_row("PRAGMA quick_check", [], |row| row.get(0)).unwrap()
}

/// Every commit is checkpointed into the database at once (PROTOCOL.md
/// 14.8), so a log deleted after a kill, or from under an open store (which
/// goes on, and another handle opens it meanwhile), loses nothing.
#[test]
fn a_deleted_log_loses_nothing_that_was_checkpointed() {
    let dir = dir("log-deleted");
    let path = dir.join("bob.db");
    let (alice, mut history) = converse(&dir);
    let bob = Device::open(&path, &KEY_BOB).unwrap();
    let late = alice.encrypt(&address("bob"), b"late").unwrap();
    history.commit(&bob, &late);
    let wire = history.send(&bob, "bob late");
    receive(&alice, &address("bob"), &wire).unwrap();
    assert!(std::fs::metadata(with_suffix(&path, "-wal")).unwrap().len() > 0, "the log still holds the frames");

    // Killed now, and the log deleted: nothing lost.
    let killed = image(&dir, "killed", false);
    assert_eq!(check(&killed, &alice, &history, "after the kill"), Ok(Outcome::Intact));

    // The log deleted from under the open store: the handle goes on, a
    // second handle opens the store (with a new log) and writes too.
    std::fs::remove_file(with_suffix(&path, "-wal")).unwrap();
    let next = alice.encrypt(&address("bob"), b"next").unwrap();
    history.commit(&bob, &next);
    let second = Device::open(&path, &KEY_BOB).unwrap();
    let other = alice.encrypt(&address("bob"), b"other").unwrap();
    history.commit(&second, &other);
    let wire = history.send(&bob, "bob again");
    receive(&alice, &address("bob"), &wire).unwrap();
    drop((bob, second));
    assert_eq!(check(&path, &alice, &history, "reopened"), Ok(Outcome::Intact));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The limitation (PROTOCOL.md 16.6): while another connection reads, a
/// checkpoint cannot copy later commits into the database; they are in the
/// log only. A kill then, and the log deleted, loses them, and nothing can
/// tell: the database is consistent (SQLite's quick check passes) and opens
/// with the rows as they were before. A message whose decryption was
/// committed decrypts again as new; the session encrypts again on a counter
/// it used, under another key (salted by the header nonce: no keystream is
/// reused), and the peer reports `Rollback`. With its log, the same copy
/// loses nothing.
#[test]
fn a_log_deleted_while_it_held_commits_loses_them() {
    let dir = dir("log-held");
    let path = dir.join("bob.db");
    let (alice, mut history) = converse(&dir);
    let bob = Device::open(&path, &KEY_BOB).unwrap();
    let reader = pin(&path);
    let before = history.committed.len();
    let late = alice.encrypt(&address("bob"), b"late").unwrap();
    history.commit(&bob, &late);
    let sent = history.send(&bob, "bob late");
    receive(&alice, &address("bob"), &sent).unwrap();

    // Killed now: with its log the copy is whole.
    let whole = image(&dir, "with-log", true);
    assert_eq!(check(&whole, &alice, &history, "with its log"), Ok(Outcome::Intact));

    // Without its log: consistent, and behind.
    let behind = image(&dir, "without-log", false);
    assert_eq!(quick_check(&behind), "ok");
    let restored = Device::open(&behind, &KEY_BOB).unwrap();
    for wire in &history.committed[..before] {
        assert!(restored.decrypt(&address("alice"), wire).is_err(), "a message committed before the read came back");
    }
    let again = restored.decrypt(&address("alice"), &late).expect("the lost commit: the message decrypts again");
    assert_eq!(again.plaintext(), b"late");
    let text = b"bob, restored";
    let wire = restored.encrypt(&address("alice"), text).unwrap();
    for (old, old_text) in &history.sent {
        assert!(!same_keystream((&wire, text), (old, old_text)), "a message key encrypted twice");
    }
    assert!(matches!(
        alice.decrypt(&address("bob"), &wire),
        Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Rollback { .. })))
    ));
    drop((reader, bob, restored));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SQLite replays whatever log lies beside a database when it opens it: it
/// has no way to tell that the log belongs to another time or another
/// store.
///
/// - Bob's own log from an earlier moment (a backup, a copy) rolls back the
///   pages it holds: the messages Bob committed since decrypt again, as with
///   any older copy of a store (16.6); no keystream is reused.
/// - Carol's log (her store under her own storage key): the rows it replaced
///   do not open (`Corrupt`) and nothing else changes.
/// - Dave's log, his store under Bob's storage key: the rows open, and
///   Dave's session with Alice becomes Bob's (the row key is the same keyed
///   hash of Alice's address). What Bob sends then Alice cannot read as
///   his, and reads as Dave's. The promises still hold; the lesson is one
///   storage key per store (16.6).
#[test]
fn a_log_from_another_time_or_store_is_replayed() {
    let dir = dir("log-swapped");
    let path = dir.join("bob.db");
    let (alice, mut history) = converse(&dir);

    // Bob's log as it is right after a commit (its frames checkpointed,
    // the log not yet restarted), copied aside.
    let bob = Device::open(&path, &KEY_BOB).unwrap();
    let late = alice.encrypt(&address("bob"), b"late").unwrap();
    history.commit(&bob, &late);
    let old_log = std::fs::read(with_suffix(&path, "-wal")).unwrap();
    let since = history.committed.len();
    for i in 0..3 {
        let wire = alice.encrypt(&address("bob"), format!("later {i}").as_bytes()).unwrap();
        history.commit(&bob, &wire);
        let wire = history.send(&bob, &format!("bob later {i}"));
        receive(&alice, &address("bob"), &wire).unwrap();
    }
    drop(bob);
    assert!(!with_suffix(&path, "-wal").exists(), "the last close removed the log");
    let current = std::fs::read(&path).unwrap();

    std::fs::write(with_suffix(&path, "-wal"), &old_log).unwrap();
    let restored = Device::open(&path, &KEY_BOB).unwrap();
    for wire in &history.committed[..since] {
        assert!(restored.decrypt(&address("alice"), wire).is_err(), "a message committed before the copy came back");
    }
    // The first message committed after the copy decrypts again (the later
    // ones are on chains of Bob's lost ratchet keys: not decryptable now).
    let again = restored.decrypt(&address("alice"), &history.committed[since]).expect("the rolled-back commit");
    assert_eq!(again.plaintext(), b"later 0");
    let text = b"bob, rolled back";
    let wire = restored.encrypt(&address("alice"), text).unwrap();
    for (old, old_text) in &history.sent {
        assert!(!same_keystream((&wire, text), (old, old_text)), "a message key encrypted twice");
    }
    assert!(matches!(
        alice.decrypt(&address("bob"), &wire),
        Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Rollback { .. })))
    ));
    drop(restored);

    // Carol under her own key, Dave under Bob's: each with a session with
    // Alice, its log held by a reader.
    for (key, name) in [(KEY_CAROL, "carol"), (KEY_BOB, "dave")] {
        let other_path = dir.join(format!("{name}.db"));
        let other = Device::create(&other_path, &key, address(name), UNIX_EPOCH).unwrap();
        let reader = pin(&other_path);
        alice.start_session(&other.prekey_bundle().unwrap()).unwrap();
        let first = alice.encrypt(&address(name), b"hello").unwrap();
        receive(&other, &address("alice"), &first).unwrap();
        put_database(&path, &current);
        std::fs::copy(with_suffix(&other_path, "-wal"), with_suffix(&path, "-wal")).unwrap();
        let outcome = check(&path, &alice, &history, name);
        if key == KEY_CAROL {
            assert_eq!(outcome, Ok(Outcome::RefusedInUse("Corrupt".into())), "{name}");
        } else {
            assert_eq!(outcome, Ok(Outcome::Diverged("Decrypt(NoMatchingState)".into())), "{name}");
            // Bob, on Dave's session: Alice reads him as Dave.
            let bob = Device::open(&path, &KEY_BOB).unwrap();
            assert_eq!(bob.address(), &address("bob"));
            let wire = bob.encrypt(&address("alice"), b"who am I").unwrap();
            assert_eq!(alice.decrypt(&address(name), &wire).unwrap().plaintext(), b"who am I");
        }
        drop((reader, other));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
