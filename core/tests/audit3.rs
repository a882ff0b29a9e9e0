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

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use support::{addr, receive, temp_dir};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use samizdat::{
    SessionError,
    address::Address,
    device::{Device, DeviceError},
    keys::IdentityKeyPair,
    prekeys::{PreKeyBundle, PreKeySet},
    session::SessionRecord,
    store::{Backend, Expected, MemoryBackend, Scrub, StoreError, Table, Write},
};
use support::rng;

// ---------------------------------------------------------------------------
// Files and superseded values (as in at_rest.rs)
// ---------------------------------------------------------------------------

const WINDOW: usize = 32;

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
    let bob = Device::create(dir.join("bob.db"), &StorageKey::from_bytes([0x22; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    seen.record(&bob);
    bob.refill_prekeys(peers + 2, peers + 4, UNIX_EPOCH).unwrap();
    seen.record(&bob);
    let mut others = Vec::new();
    for p in 0..peers {
        let peer = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([p as u8; 32]),
            addr(&format!("peer{p}")),
            UNIX_EPOCH,
        )
        .unwrap();
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
    bob.refill_prekeys(peers + 2, peers + 4, UNIX_EPOCH).unwrap();
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
    let scrubber = Device::open(&path, &StorageKey::from_bytes([0x22; 32])).unwrap();
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
    let bob = Device::open(&path, &StorageKey::from_bytes([0x22; 32])).unwrap();
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
    let during_read = Device::open(&path, &StorageKey::from_bytes([0x22; 32])).unwrap();
    assert!(during_read.has_session(&addr("peer0")).unwrap());
    drop(reader);
    drop(during_read);
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer.execute_batch("ROLLBACK").unwrap();
    });
    let during_write = Device::open(&path, &StorageKey::from_bytes([0x22; 32]));
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
    let bob = Device::open(PathBuf::from(path), &StorageKey::from_bytes([0x22; 32])).unwrap();
    let mut now = 10u64;
    loop {
        let _ = bob.scrub().unwrap();
        now += 1;
        bob.refill_prekeys(40, 40, UNIX_EPOCH + Duration::from_secs(now)).unwrap();
        bob.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(now), Duration::from_secs(1)).unwrap();
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
        let bob = Device::open(&path, &StorageKey::from_bytes([0x22; 32])).unwrap();
        assert_eq!(bob.backend().scan(Table::Sessions).unwrap(), sessions, "kill {k}: the sessions changed");
        let check: String =
            rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "kill {k}");
        assert_eq!(bob.scrub().unwrap(), Scrub::Done, "kill {k}");
    }
    let bob = Device::open(&path, &StorageKey::from_bytes([0x22; 32])).unwrap();
    for peer in &peers {
        let wire = peer.encrypt(bob.address(), b"after the kills").unwrap();
        assert_eq!(receive(&bob, peer.address(), &wire).unwrap(), b"after the kills");
    }
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// 3. Store creation under a temporary name
// ---------------------------------------------------------------------------

/// Sets the modification time of the file `path` two minutes back.
fn age(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(120);
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_modified(old).unwrap();
}

/// Found broken (fixed: only names of the exact form, regular files, empty
/// or SQLite databases, are removed). PROTOCOL.md 14.8 "Creating a store"
/// and the code's own documentation of `temporaries` ("only files of this
/// store, never anything else"): stale removal deleted files that are not
/// temporaries of a creation at all.
///
/// Attack (or accident): the user (or another program) keeps a file beside
/// the store whose name merely starts with `<store name>.samizdat-new-`,
/// e.g. `bob.db.samizdat-new-notes.txt` or a manual backup
/// `bob.db.samizdat-new-backup`, last modified more than a minute ago.
/// `Device::create` (or `open_or_create`) of `bob.db` calls `remove_stale`,
/// which takes every directory entry with that prefix (only `-wal`/`-shm`
/// endings excluded) and older than 60 s as a crashed creation's leftover,
/// and deletes it, together with `<that name>-wal` and `<that name>-shm`.
/// The user's unrelated files are gone. (Anyone who can make the app create a
/// store in a shared directory can likewise have it delete such files.)
///
/// Suggested fix: remove only names of the exact form
/// `<name>.samizdat-new-<digits>-<digits>` (parse them), and only regular
/// files that are empty or start with the SQLite header
/// (`SQLite format 3\0`); leave anything else alone.
#[cfg(unix)]
#[test]
fn audit3_create_never_deletes_unrelated_files_that_share_the_temporary_prefix() {
    let dir = temp_dir("create-user-files");
    let path = dir.join("bob.db");
    let notes = dir.join("bob.db.samizdat-new-notes.txt");
    let backup = dir.join("bob.db.samizdat-new-backup");
    let backup_wal = dir.join("bob.db.samizdat-new-backup-wal");
    // Even at a name of the exact form, a file that is not a database stays.
    let lookalike = dir.join("bob.db.samizdat-new-1-2");
    for file in [&notes, &backup, &backup_wal, &lookalike] {
        std::fs::write(file, b"the user's own data, not SQLite").unwrap();
        age(file);
    }
    let bob = Device::create(&path, &StorageKey::from_bytes([0x22; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    drop(bob);
    let gone: Vec<String> = [&notes, &backup, &backup_wal, &lookalike]
        .iter()
        .filter(|f| !f.exists())
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(gone.is_empty(), "Device::create deleted the user's files {gone:?}");
    // What a crashed creation leaves (an empty reserved name, a database
    // with its log) is removed once stale, by the next creation.
    let other = dir.join("carol.db");
    let reserved = dir.join("carol.db.samizdat-new-7-8");
    let built = dir.join("carol.db.samizdat-new-9-10");
    let built_wal = dir.join("carol.db.samizdat-new-9-10-wal");
    std::fs::write(&reserved, b"").unwrap();
    let mut database = b"SQLite format 3\0".to_vec();
    database.resize(4096, 0);
    std::fs::write(&built, &database).unwrap();
    std::fs::write(&built_wal, b"log").unwrap();
    for file in [&reserved, &built, &built_wal] {
        age(file);
    }
    drop(Device::create(&other, &StorageKey::from_bytes([0x22; 32]), addr("carol"), UNIX_EPOCH).unwrap());
    let left: Vec<_> = [&reserved, &built, &built_wal].into_iter().filter(|f| f.exists()).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(left.is_empty(), "stale leftovers stayed: {left:?}");
}

/// 14.8: symbolic links at temporary names (of the next names this process
/// will try, and a `-wal` beside one) pointing to an old user file: never
/// followed, the target survives untouched and the store is made.
#[cfg(unix)]
#[test]
fn audit3_stale_links_at_temporary_names_are_never_followed() {
    let dir = temp_dir("create-links");
    let path = dir.join("bob.db");
    let target = dir.join("precious.txt");
    std::fs::write(&target, b"precious").unwrap();
    age(&target);
    let name = dir.join(format!("bob.db.samizdat-new-{}-999", std::process::id()));
    std::os::unix::fs::symlink(&target, &name).unwrap();
    let wal = dir.join(format!("bob.db.samizdat-new-{}-999-wal", std::process::id()));
    std::os::unix::fs::symlink(&target, &wal).unwrap();
    let bob = Device::create(&path, &StorageKey::from_bytes([0x22; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    drop(bob);
    assert!(Device::open(&path, &StorageKey::from_bytes([0x22; 32])).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 14.8: concurrent creators of one store (threads of one process): exactly
/// one makes it, the others get `AlreadyExists`, no temporary name is left,
/// and the store opens with the winner's key.
#[test]
fn audit3_concurrent_creators_make_one_store_and_leave_nothing() {
    let dir = temp_dir("create-race");
    let path = dir.join("bob.db");
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|k| {
                let path = path.clone();
                s.spawn(move || {
                    Device::create(&path, &StorageKey::from_bytes([k + 1; 32]), addr("bob"), UNIX_EPOCH)
                        .map(drop)
                        .map_err(|e| format!("{e:?}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners = results.iter().filter(|r| r.is_ok()).count();
    // A loser that found the store already there opens it with its own key:
    // `AlreadyExists` or `WrongKey`, never anything else.
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.contains("AlreadyExists") || r.contains("WrongKey"), "{r}");
    }
    assert!(winners >= 1, "{results:?}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("samizdat-new"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let opened = (1..=4u8).filter(|k| Device::open(&path, &StorageKey::from_bytes([*k; 32])).is_ok()).count();
    assert_eq!(opened, 1, "one key opens the store ({results:?})");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// 4. Seeds rows
// ---------------------------------------------------------------------------

/// Bob with a peer whose messages 0..n were skipped (their seeds in the seeds
/// row); returns the unread wires.
fn bob_with_skipped(path: &Path) -> (Device, Device<MemoryBackend>, Vec<Vec<u8>>) {
    let bob = Device::create(path, &StorageKey::from_bytes([0x22; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0x11; 32]), addr("alice"), UNIX_EPOCH)
        .unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wires: Vec<Vec<u8>> =
        (0..12).map(|i| alice.encrypt(bob.address(), format!("m{i}").as_bytes()).unwrap()).collect();
    assert_eq!(receive(&bob, alice.address(), &wires[11]).unwrap(), b"m11");
    (bob, alice, wires)
}

/// 14.7, 13.4: two handles on one store decrypting, from two threads, the
/// skipped messages of one peer (each commit rewrites the session row and
/// its seeds row): a healthy store never reports `Corrupt`; every message is
/// delivered exactly once.
#[test]
fn audit3_two_handles_using_skipped_keys_never_see_corrupt() {
    let dir = temp_dir("seeds-race");
    let path = dir.join("bob.db");
    let (bob, alice, wires) = bob_with_skipped(&path);
    let other = Device::open(&path, &StorageKey::from_bytes([0x22; 32])).unwrap();
    let delivered = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (h, handle) in [&bob, &other].into_iter().enumerate() {
            let (wires, delivered, alice) = (&wires, &delivered, alice.address());
            s.spawn(move || {
                for k in 0..11 {
                    let i = if h == 0 { k } else { 10 - k };
                    loop {
                        match handle.decrypt(alice, &wires[i]) {
                            Ok(pending) => {
                                let text = pending.plaintext().to_vec();
                                match handle.commit(pending) {
                                    Ok(_) => {
                                        delivered.lock().unwrap().push(text);
                                        break;
                                    }
                                    Err(DeviceError::Session(SessionError::StalePending)) => continue,
                                    Err(e) => panic!("commit {i}: {e:?}"),
                                }
                            }
                            Err(DeviceError::Session(SessionError::Decrypt(_))) => break, // the other got it
                            Err(DeviceError::Store(StoreError::Conflict { .. })) => continue,
                            Err(e) => panic!("decrypt {i} on handle {h}: {e:?}"),
                        }
                    }
                }
            });
        }
    });
    let mut delivered = delivered.into_inner().unwrap();
    delivered.sort();
    let mut expected: Vec<Vec<u8>> = (0..11).map(|i| format!("m{i}").into_bytes()).collect();
    expected.sort();
    assert_eq!(delivered, expected, "each skipped message exactly once");
    drop((bob, other));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 14.7, 13.4: a missing or damaged seeds row (a damaged store) is reported
/// as `Corrupt` by a decryption that needs it, after a bounded number of
/// attempts, with no panic; messages that need no seed still decrypt.
#[test]
fn audit3_a_damaged_seeds_row_is_corrupt_not_a_loop() {
    let dir = temp_dir("seeds-damaged");
    let path = dir.join("bob.db");
    let (bob, alice, wires) = bob_with_skipped(&path);
    let rows = bob.backend().scan(Table::Sessions).unwrap();
    assert_eq!(rows.len(), 2, "a session row and its seeds row");
    let seeds_key = rows.iter().map(|(k, _)| k.clone()).find(|k| k.ends_with(b"/seeds")).unwrap();
    let original = bob.backend().get(Table::Sessions, &seeds_key).unwrap().unwrap();
    for damage in [None, Some(vec![0u8; original.len()]), Some(original[..original.len() - 1].to_vec())] {
        bob.backend()
            .apply(&[Write {
                table: Table::Sessions,
                key: seeds_key.clone(),
                value: damage.clone(),
                expected: Expected::Any,
            }])
            .unwrap();
        let started = std::time::Instant::now();
        let result = bob.decrypt(alice.address(), &wires[3]);
        assert!(
            matches!(result, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Sessions }))),
            "damage {:?}: {result:?}",
            damage.as_ref().map(Vec::len)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // A new message needs no seed.
        let fresh = alice.encrypt(bob.address(), b"fresh").unwrap();
        let pending = bob.decrypt(alice.address(), &fresh).unwrap();
        assert_eq!(pending.plaintext(), b"fresh");
    }
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// 2 and 5. Sessions (records directly)
// ---------------------------------------------------------------------------

struct Party {
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    address: Address,
    record: SessionRecord,
}

impl Party {
    fn new(rng: &mut chacha20::ChaCha20Rng, name: &str) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH + Duration::from_secs(1_000));
        prekeys.add_one_time_prekeys(rng, &identity, 40, UNIX_EPOCH + Duration::from_secs(1_000)).unwrap();
        Self { identity, prekeys, address: Address::new(name, 1).unwrap(), record: SessionRecord::new() }
    }

    fn bundle(&self) -> PreKeyBundle {
        PreKeyBundle::from_bytes(&self.prekeys.bundle(&self.identity, &self.address).unwrap().to_bytes()).unwrap()
    }

    fn initiate(&mut self, rng: &mut chacha20::ChaCha20Rng, peer: &Party) {
        self.record.initiate(rng, &self.identity, &self.address, &peer.bundle()).unwrap();
    }

    fn send(&mut self, rng: &mut chacha20::ChaCha20Rng, text: &[u8]) -> Vec<u8> {
        self.record.encrypt(rng, text).unwrap()
    }

    fn receive(
        &mut self,
        rng: &mut chacha20::ChaCha20Rng,
        from: &Address,
        wire: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let pending = self.record.decrypt(rng, &self.identity, &self.address, from, &self.prekeys, wire)?;
        let plaintext = pending.plaintext().to_vec();
        self.prekeys.consume(&pending.consumed_prekeys());
        self.record.commit(pending)?;
        Ok(plaintext)
    }
}

/// 4.6.3 step 8b, 4.7: skipped keys past `PN` are dropped at a DH step, but
/// no genuine message is ever past `PN`. Alice sends bursts on three chains
/// (each after a reply of Bob's made her step); Bob receives each burst's
/// last message or a later chain's first, and the rest of every burst
/// arrives afterwards in reverse order, after two more DH steps, with
/// reloads in between: every genuine message decrypts, once.
#[test]
fn audit3_no_genuine_in_flight_message_is_lost_at_a_dh_step() {
    let mut rng = rng(3_001);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let (a, b) = (alice.address.clone(), bob.address.clone());
    alice.initiate(&mut rng, &bob);
    let mut late = Vec::new();
    for chain in 0..4 {
        let burst: Vec<(String, Vec<u8>)> = (0..6)
            .map(|i| {
                let text = format!("chain {chain} message {i}");
                let wire = alice.send(&mut rng, text.as_bytes());
                (text, wire)
            })
            .collect();
        // Only the middle one now (Bob skips 0..2, and 4..5 stay in flight
        // past the next DH step, with counters up to PN - 1).
        assert_eq!(bob.receive(&mut rng, &a, &burst[3].1).unwrap(), burst[3].0.as_bytes());
        late.extend(burst.into_iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, m)| m));
        let reply = bob.send(&mut rng, format!("bob {chain}").as_bytes());
        assert_eq!(alice.receive(&mut rng, &b, &reply).unwrap(), format!("bob {chain}").as_bytes());
        bob.record = SessionRecord::from_bytes(&bob.record.to_bytes()).unwrap();
    }
    let last = alice.send(&mut rng, b"last");
    assert_eq!(bob.receive(&mut rng, &a, &last).unwrap(), b"last");
    let mut lost = Vec::new();
    for (text, wire) in late.iter().rev() {
        match bob.receive(&mut rng, &a, wire) {
            Ok(p) => assert_eq!(p, text.as_bytes()),
            Err(e) => lost.push(format!("{text}: {e:?}")),
        }
    }
    assert!(lost.is_empty(), "genuine in-flight messages lost: {lost:?}");
    for (text, wire) in &late {
        assert!(bob.receive(&mut rng, &a, wire).is_err(), "{text} delivered twice");
    }
}

/// 9.9, 9.10: simultaneous initiation with crossing messages, delayed prekey
/// messages delivered late, and a re-initiation: honest peers converge on one
/// session within a few round trips, and every message of the final
/// exchanges decrypts both ways.
#[test]
fn audit3_simultaneous_and_crossing_sessions_converge() {
    let mut failures = Vec::new();
    for seed in 0..24u64 {
        let mut rng = rng(3_100 + seed);
        let mut alice = Party::new(&mut rng, "alice");
        let mut bob = Party::new(&mut rng, "bob");
        let (a, b) = (alice.address.clone(), bob.address.clone());
        alice.initiate(&mut rng, &bob);
        bob.initiate(&mut rng, &alice);
        let from_alice: Vec<_> = (0..2).map(|i| alice.send(&mut rng, format!("a{i}").as_bytes())).collect();
        let from_bob: Vec<_> = (0..2).map(|i| bob.send(&mut rng, format!("b{i}").as_bytes())).collect();
        // Crossing: each gets the other's first; the second ones come late.
        let _ = bob.receive(&mut rng, &a, &from_alice[0]);
        let _ = alice.receive(&mut rng, &b, &from_bob[0]);
        if seed % 3 == 0 {
            // Alice re-initiates meanwhile.
            alice.initiate(&mut rng, &bob);
            let again = alice.send(&mut rng, b"again");
            let _ = bob.receive(&mut rng, &a, &again);
        }
        let _ = bob.receive(&mut rng, &a, &from_alice[1]);
        let _ = alice.receive(&mut rng, &b, &from_bob[1]);
        let mut ok_trips = 0;
        for trip in 0..10 {
            let wire = alice.send(&mut rng, format!("alice {trip}").as_bytes());
            let ab = bob.receive(&mut rng, &a, &wire).is_ok();
            let wire = bob.send(&mut rng, format!("bob {trip}").as_bytes());
            let ba = alice.receive(&mut rng, &b, &wire).is_ok();
            ok_trips = if ab && ba { ok_trips + 1 } else { 0 };
            if ok_trips >= 3 {
                break;
            }
        }
        if ok_trips < 3 || alice.record.current_base_key() != bob.record.current_base_key() {
            failures.push(seed);
        }
    }
    assert!(failures.is_empty(), "seeds that did not converge within ten round trips: {failures:?}");
}
