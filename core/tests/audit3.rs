//! A third outside audit: the SQLite scrub and log truncation (PROTOCOL.md
//! 14.8, 16.6), archived session states under a copied record (9.5, 9.6,
//! 9.10), the creation of a store under a temporary name (14.8 "Creating a
//! store"), the seeds rows of skipped keys (14.7, 13.4) and the skipped keys
//! dropped past `PN` at a DH step (4.6.3 step 8b).
//!
//! Tests named `audit3_<what>` pin a claim that held; tests named
//! `audit3_broken_<what>` assert the secure behaviour and fail on the audited
//! code (their doc comment gives the attack, the claim and a fix).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
#![cfg_attr(not(feature = "hazmat"), allow(dead_code, unused_imports))]

mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use chacha20::ChaCha20Rng;
use samizdat::{
    SessionError,
    address::Address,
    device::{Device, DeviceError},
    keys::IdentityKeyPair,
    prekeys::{PreKeyBundle, PreKeySet},
    session::SessionRecord,
    store::{Backend, Expected, MemoryBackend, Scrub, StoreError, Table, Write},
    wire::{Message, RatchetMessage},
};
use support::rng;

// ---------------------------------------------------------------------------
// Files and superseded values (as in at_rest.rs)
// ---------------------------------------------------------------------------

const WINDOW: usize = 32;

fn addr(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("samizdat-audit3-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn receive<B: Backend>(to: &Device<B>, from: &Address, wire: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let pending = to.decrypt(from, wire)?;
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending)?;
    Ok(plaintext)
}

/// Every sealed value each row ever held, in order; an empty value marks the
/// row deleted.
#[derive(Default)]
struct Seen {
    rows: BTreeMap<(Table, Vec<u8>), Vec<Vec<u8>>>,
}

impl Seen {
    fn record<B: Backend>(&mut self, device: &Device<B>) {
        for table in Table::ALL {
            let rows = device.backend().scan(table).unwrap();
            let present: HashSet<&Vec<u8>> = rows.iter().map(|(key, _)| key).collect();
            for ((t, key), versions) in &mut self.rows {
                if *t == table && !present.contains(key) && versions.last().is_some_and(|v| !v.is_empty()) {
                    versions.push(Vec::new());
                }
            }
            for (key, value) in rows {
                let versions = self.rows.entry((table, key)).or_default();
                if versions.last() != Some(&value) {
                    versions.push(value);
                }
            }
        }
    }

    fn split(&self) -> (Vec<&Vec<u8>>, Vec<&Vec<u8>>) {
        let mut current = Vec::new();
        let mut superseded = Vec::new();
        for versions in self.rows.values() {
            let (last, older) = versions.split_last().unwrap();
            if !last.is_empty() {
                current.push(last);
            }
            superseded.extend(older.iter().filter(|v| !v.is_empty()));
        }
        (current, superseded)
    }

    fn deleted(&self) -> usize {
        self.rows.values().filter(|v| v.last().is_some_and(Vec::is_empty)).count()
    }
}

fn windows(value: &[u8]) -> Vec<[u8; WINDOW]> {
    let last = value.len() - WINDOW;
    let mut offsets: Vec<usize> = (0..6).map(|k| last * k / 6).collect();
    offsets.push(last);
    offsets.dedup();
    offsets.into_iter().map(|o| value[o..o + WINDOW].try_into().unwrap()).collect()
}

/// The database `name` in `dir` and its `-wal`, `-shm` and `-journal`.
fn store_files(dir: &Path, name: &str) -> Vec<(String, Vec<u8>)> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .filter_map(|suffix| {
            let file = format!("{name}{suffix}");
            std::fs::read(dir.join(&file)).ok().map(|bytes| (file, bytes))
        })
        .collect()
}

fn found_in(files: &[(String, Vec<u8>)], values: &[&Vec<u8>]) -> BTreeMap<usize, Vec<String>> {
    let mut needles: HashMap<[u8; WINDOW], Vec<usize>> = HashMap::new();
    for (i, value) in values.iter().enumerate() {
        for w in windows(value) {
            needles.entry(w).or_default().push(i);
        }
    }
    let mut found: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (name, bytes) in files {
        let mut here = HashSet::new();
        for w in bytes.windows(WINDOW) {
            if let Some(owners) = needles.get(w) {
                here.extend(owners.iter().copied());
            }
        }
        for i in here {
            found.entry(i).or_default().push(name.clone());
        }
    }
    found
}

/// No superseded value of `seen` in the files of `name`; every current one is.
fn check_files(dir: &Path, name: &str, seen: &Seen, when: &str, min_superseded: usize) {
    let files = store_files(dir, name);
    let sizes: Vec<String> = files.iter().map(|(n, b)| format!("{n} ({} B)", b.len())).collect();
    let (current, superseded) = seen.split();
    assert!(superseded.len() >= min_superseded, "{when}: only {} superseded values", superseded.len());
    let found = found_in(&files, &current);
    let missing = (0..current.len()).filter(|i| !found.contains_key(i)).count();
    assert_eq!(missing, 0, "{when}: {missing} of {} current values not found in {sizes:?}", current.len());
    let found = found_in(&files, &superseded);
    let mut by_file: BTreeMap<String, usize> = BTreeMap::new();
    for names in found.values() {
        for n in names {
            *by_file.entry(n.clone()).or_default() += 1;
        }
    }
    assert!(
        found.is_empty(),
        "{when}: {} of {} superseded sealed values still in the files {sizes:?} (per file: {by_file:?})",
        found.len(),
        superseded.len()
    );
}

fn wal_len(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// A raw reader on `path` inside a read transaction.
fn reader_in_transaction(path: &Path) -> rusqlite::Connection {
    let reader = rusqlite::Connection::open(path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
    reader
}

/// Bob (SQLite) with `peers` peers (in memory), each of which started a
/// session from a bundle (consuming one-time prekeys) and had messages
/// skipped and delivered out of order (large rows, seeds rows rewritten and
/// deleted). Every call is recorded in `seen`.
fn busy_bob(
    dir: &Path,
    peers: usize,
    seen: &mut Seen,
    mut between: impl FnMut(usize),
) -> (Device, Vec<Device<MemoryBackend>>) {
    let bob = Device::create(dir.join("bob.db"), &[0x22; 32], addr("bob"), 0).unwrap();
    seen.record(&bob);
    bob.refill_prekeys(peers + 2, peers + 4, 0).unwrap();
    seen.record(&bob);
    let mut others = Vec::new();
    for p in 0..peers {
        let peer = Device::create_in(MemoryBackend::new(), &[p as u8; 32], addr(&format!("peer{p}")), 0).unwrap();
        peer.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let wires: Vec<Vec<u8>> =
            (0..40).map(|i| peer.encrypt(bob.address(), format!("{p}.{i}").as_bytes()).unwrap()).collect();
        // The last first: 39 skipped keys (a large row and a seeds row).
        assert_eq!(receive(&bob, peer.address(), &wires[39]).unwrap(), format!("{p}.39").as_bytes());
        seen.record(&bob);
        for (i, wire) in wires.iter().enumerate().take(39).step_by(3) {
            assert_eq!(receive(&bob, peer.address(), wire).unwrap(), format!("{p}.{i}").as_bytes());
            seen.record(&bob);
        }
        let reply = bob.encrypt(peer.address(), b"reply").unwrap();
        seen.record(&bob);
        assert_eq!(receive(&peer, bob.address(), &reply).unwrap(), b"reply");
        // The rest, after a DH step on the peer's side.
        let after = peer.encrypt(bob.address(), b"after").unwrap();
        assert_eq!(receive(&bob, peer.address(), &after).unwrap(), b"after");
        seen.record(&bob);
        for (i, wire) in wires.iter().enumerate().take(39) {
            if i % 3 != 0 {
                assert_eq!(receive(&bob, peer.address(), wire).unwrap(), format!("{p}.{i}").as_bytes());
                seen.record(&bob);
            }
        }
        between(p);
        others.push(peer);
    }
    bob.refill_prekeys(peers + 2, peers + 4, 0).unwrap();
    seen.record(&bob);
    (bob, others)
}

// ---------------------------------------------------------------------------
// 1. Scrub and log truncation
// ---------------------------------------------------------------------------

/// 14.8 "Scrub", 16.6: right after `Scrub::Done`, no superseded or deleted
/// sealed row is in the database, `-wal`, `-shm` or `-journal`, open or
/// closed. Many peers, rows larger than a page (overflow pages), consumed
/// one-time prekeys (deleted rows), seeds rows written and deleted, and a
/// raw reader holding a read transaction over half of the writes (frames the
/// checkpoints could not copy, the log never restarted meanwhile).
#[test]
fn audit3_scrub_done_leaves_no_superseded_row_after_a_reader_and_many_peers() {
    let dir = temp_dir("scrub-reader");
    let path = dir.join("bob.db");
    let mut seen = Seen::default();
    let mut reader: Option<rusqlite::Connection> = None;
    let (bob, _peers) = busy_bob(&dir, 6, &mut seen, |p| match p {
        1 => reader = Some(reader_in_transaction(&path)),
        4 => {
            reader.take().unwrap().execute_batch("COMMIT").unwrap();
        }
        _ => {}
    });
    assert!(seen.deleted() >= 6, "consumed one-time prekeys: {} rows deleted", seen.deleted());
    let largest = seen.rows.values().flatten().map(Vec::len).max().unwrap();
    assert!(largest > 4096, "a row over a page: {largest} B");
    // A second raw connection that just sits there, outside any transaction.
    let idle = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(bob.scrub().unwrap(), Scrub::Done);
    assert_eq!(wal_len(&path), 0);
    check_files(&dir, "bob.db", &seen, "after Scrub::Done, open", 150);
    drop((bob, idle));
    check_files(&dir, "bob.db", &seen, "after Scrub::Done, closed", 150);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 14.8: the app's scrub waits (up to the busy timeout) for a reader that
/// keeps the rewritten pages from the database file; released meanwhile by
/// another thread, the scrub ends `Done` and the files are clean.
#[test]
fn audit3_scrub_waits_for_a_reader_released_meanwhile() {
    let dir = temp_dir("scrub-wait");
    let path = dir.join("bob.db");
    let mut seen = Seen::default();
    let (bob, peers) = busy_bob(&dir, 2, &mut seen, |_| {});
    let reader = reader_in_transaction(&path);
    // Writes while the reader holds its snapshot.
    for (p, peer) in peers.iter().enumerate() {
        for i in 0..5 {
            let wire = peer.encrypt(bob.address(), format!("late {p}.{i}").as_bytes()).unwrap();
            receive(&bob, peer.address(), &wire).unwrap();
            seen.record(&bob);
        }
    }
    assert!(wal_len(&path) > 0, "the reader keeps frames in the log");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
    });
    assert_eq!(bob.scrub().unwrap(), Scrub::Done);
    release.join().unwrap();
    check_files(&dir, "bob.db", &seen, "after a reader let go", 50);
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 14.8: a reader that outlasts the scrub's wait makes it `Deferred`, fails
/// no call, and loses nothing. (The wait is the 5 s busy timeout: a reader
/// holding that long is simulated by a writer lock, which `VACUUM` waits for
/// the same way, released at 5.2 s.) Skipped for speed unless
/// `AUDIT3_SLOW` is set.
#[test]
fn audit3_a_scrub_deferred_by_a_writer_fails_nothing() {
    if std::env::var_os("AUDIT3_SLOW").is_none() {
        return;
    }
    let dir = temp_dir("scrub-deferred");
    let path = dir.join("bob.db");
    let mut seen = Seen::default();
    let (bob, _) = busy_bob(&dir, 1, &mut seen, |_| {});
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(bob.scrub().unwrap(), Scrub::Deferred);
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(bob.scrub().unwrap(), Scrub::Done);
    check_files(&dir, "bob.db", &seen, "after the deferred scrub", 50);
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 14.8: two handles on one store, one scrubbing in a loop on another
/// thread while the other decrypts, commits and encrypts: no call fails, no
/// write is lost (every message of every peer decrypts, every reply reaches
/// its peer), and a final scrub leaves no superseded row.
#[test]
fn audit3_scrubs_racing_writes_of_another_handle_lose_nothing() {
    let dir = temp_dir("scrub-race");
    let path = dir.join("bob.db");
    let mut seen = Seen::default();
    let (bob, peers) = busy_bob(&dir, 3, &mut seen, |_| {});
    let scrubber = Device::open(&path, &[0x22; 32]).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcomes = std::thread::scope(|s| {
        let scrubs = s.spawn(|| {
            let (mut done, mut deferred) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match scrubber.scrub().unwrap() {
                    Scrub::Done => done += 1,
                    _ => deferred += 1,
                }
            }
            (done, deferred)
        });
        for round in 0..8 {
            for (p, peer) in peers.iter().enumerate() {
                let wire = peer.encrypt(bob.address(), format!("r{round} p{p}").as_bytes()).unwrap();
                assert_eq!(receive(&bob, peer.address(), &wire).unwrap(), format!("r{round} p{p}").as_bytes());
                seen.record(&bob);
                let reply = bob.encrypt(peer.address(), format!("back {round}").as_bytes()).unwrap();
                seen.record(&bob);
                assert_eq!(receive(peer, bob.address(), &reply).unwrap(), format!("back {round}").as_bytes());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scrubs.join().unwrap()
    });
    assert!(outcomes.0 > 0, "some scrub finished: {outcomes:?}");
    drop(scrubber);
    // Every write landed: a fresh handle continues every session.
    drop(bob);
    let bob = Device::open(&path, &[0x22; 32]).unwrap();
    for peer in &peers {
        let wire = peer.encrypt(bob.address(), b"still there").unwrap();
        assert_eq!(receive(&bob, peer.address(), &wire).unwrap(), b"still there");
        seen.record(&bob);
        let reply = bob.encrypt(peer.address(), b"yes").unwrap();
        seen.record(&bob);
        assert_eq!(receive(peer, bob.address(), &reply).unwrap(), b"yes");
    }
    assert_eq!(bob.scrub().unwrap(), Scrub::Done);
    check_files(&dir, "bob.db", &seen, "after the race and a last scrub", 150);
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 14.8: `open` never fails because of its scrub: not with a reader in a
/// read transaction over the whole open (the scrub is deferred quietly),
/// and not with another connection holding the write lock for 300 ms (the
/// open waits for it, within the busy timeout).
#[test]
fn audit3_open_never_fails_because_of_its_scrub() {
    let dir = temp_dir("scrub-open");
    let path = dir.join("bob.db");
    let mut seen = Seen::default();
    let (bob, _) = busy_bob(&dir, 1, &mut seen, |_| {});
    drop(bob);
    let reader = reader_in_transaction(&path);
    let during_read = Device::open(&path, &[0x22; 32]).unwrap();
    assert!(during_read.has_session(&addr("peer0")).unwrap());
    drop(reader);
    drop(during_read);
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer.execute_batch("ROLLBACK").unwrap();
    });
    let during_write = Device::open(&path, &[0x22; 32]);
    release.join().unwrap();
    let during_write = during_write.unwrap();
    assert!(during_write.has_session(&addr("peer0")).unwrap());
    assert_eq!(during_write.scrub().unwrap(), Scrub::Done);
    check_files(&dir, "bob.db", &seen, "after the opens", 20);
    drop(during_write);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Set in the child of [`audit3_a_kill_during_scrubs_loses_nothing`].
const CRASH_CHILD_ENV: &str = "SAMIZDAT_AUDIT3_SCRUB_CHILD";

/// The child: opens the store and scrubs, and refills prekeys (writes),
/// until killed.
#[test]
fn audit3_scrub_crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else { return };
    let bob = Device::open(PathBuf::from(path), &[0x22; 32]).unwrap();
    let mut now = 10u64;
    loop {
        let _ = bob.scrub().unwrap();
        now += 1;
        bob.refill_prekeys(40, 40, now).unwrap();
        bob.rotate_prekeys(now, 1).unwrap();
    }
}

/// 14.8, 14.11: killing a process (SIGKILL) in the middle of its scrubs
/// (and of writes between them) loses no committed row and leaves a sound
/// database that opens and scrubs.
#[cfg(unix)]
#[test]
fn audit3_a_kill_during_scrubs_loses_nothing() {
    let dir = temp_dir("scrub-kill");
    let path = dir.join("bob.db");
    let mut seen = Seen::default();
    let (bob, peers) = busy_bob(&dir, 2, &mut seen, |_| {});
    let sessions = bob.backend().scan(Table::Sessions).unwrap();
    drop(bob);
    let exe = std::env::current_exe().unwrap();
    for (k, delay) in [30u64, 45, 60, 80, 110, 150].into_iter().enumerate() {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "audit3_scrub_crash_child", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "kill {k}: the child ran to an end ({status:?})");
        let bob = Device::open(&path, &[0x22; 32]).unwrap();
        assert_eq!(bob.backend().scan(Table::Sessions).unwrap(), sessions, "kill {k}: the sessions changed");
        let check: String = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "kill {k}");
        assert_eq!(bob.scrub().unwrap(), Scrub::Done, "kill {k}");
    }
    let bob = Device::open(&path, &[0x22; 32]).unwrap();
    for peer in &peers {
        let wire = peer.encrypt(bob.address(), b"after the kills").unwrap();
        assert_eq!(receive(&bob, peer.address(), &wire).unwrap(), b"after the kills");
    }
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}
