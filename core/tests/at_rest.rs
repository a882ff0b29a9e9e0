//! Forward secrecy at rest: once a row is rewritten, no file the SQLite store
//! wrote keeps its previous sealed value (PROTOCOL.md 14.8, 16.6).
//!
//! Three devices on SQLite hold a conversation of a few hundred messages,
//! with prekey refills and rotations and new sessions that consume one-time
//! prekeys. After every call the test reads every row of every store through
//! the backend and keeps each sealed value it sees. Then it searches the
//! database, `-wal`, `-shm` and `-journal` files, while the stores are open
//! and again after they are closed, for 32-byte windows taken at several
//! places of each superseded value, and of every value of a deleted row (a
//! consumed one-time prekey; a value larger than a page is split over
//! overflow pages, so no single window need be contiguous in a file): none may
//! be there. As a control, every current value must be found.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use support::{addr, temp_dir};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use samizdat::{
    address::Address,
    device::{Device, DeviceError},
    store::{Backend, Table},
};

const WINDOW: usize = 32;

fn receive(to: &Device, from: &Address, wire: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let pending = to.decrypt(from, wire)?;
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending)?;
    Ok(plaintext)
}

/// Every sealed value each row of each store ever held, in the order seen;
/// an empty value marks the row deleted (a consumed or rotated-out prekey).
#[derive(Default)]
struct Seen {
    rows: BTreeMap<(String, Table, Vec<u8>), Vec<Vec<u8>>>,
}

impl Seen {
    fn record(&mut self, name: &str, device: &Device) {
        for table in Table::ALL {
            let rows = device.backend().scan(table).unwrap();
            let present: HashSet<&Vec<u8>> = rows.iter().map(|(key, _)| key).collect();
            for ((owner, t, key), versions) in &mut self.rows {
                if owner == name
                    && *t == table
                    && !present.contains(key)
                    && versions.last().is_some_and(|v| !v.is_empty())
                {
                    versions.push(Vec::new());
                }
            }
            for (key, value) in rows {
                let versions = self.rows.entry((name.to_owned(), table, key)).or_default();
                if versions.last() != Some(&value) {
                    assert!(!versions.contains(&value), "a sealed value came back");
                    versions.push(value);
                }
            }
        }
    }

    /// The last value of each row that exists, and every other value (all
    /// those of a deleted row).
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
}

/// Windows of `value` at its start, its end and every sixth in between.
fn windows(value: &[u8]) -> Vec<[u8; WINDOW]> {
    assert!(value.len() >= WINDOW, "sealed values are at least 41 bytes");
    let last = value.len() - WINDOW;
    let mut offsets: Vec<usize> = (0..6).map(|k| last * k / 6).collect();
    offsets.push(last);
    offsets.dedup();
    offsets.into_iter().map(|o| value[o..o + WINDOW].try_into().unwrap()).collect()
}

/// The store files in `dir`: each database and its `-wal`, `-shm` and `-journal`.
fn store_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            ["db", "db-wal", "db-shm", "db-journal"].iter().any(|ext| name.ends_with(&format!(".{ext}")))
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Which of `values` have at least one window in the files (index into `values`).
fn found_in(files: &[(PathBuf, Vec<u8>)], values: &[&Vec<u8>]) -> BTreeMap<usize, Vec<String>> {
    let mut needles: HashMap<[u8; WINDOW], Vec<usize>> = HashMap::new();
    for (i, value) in values.iter().enumerate() {
        for w in windows(value) {
            needles.entry(w).or_default().push(i);
        }
    }
    let mut found: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (path, bytes) in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
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

/// Searches the files for every superseded value (none may be found) and
/// every current one (each must be, or the search sees nothing).
fn check(dir: &Path, seen: &Seen, when: &str) {
    let files = store_files(dir);
    let names: Vec<String> = files.iter().map(|(p, b)| format!("{} ({} B)", p.display(), b.len())).collect();
    let (current, superseded) = seen.split();
    assert!(superseded.len() > 500, "the conversation rewrote rows: {} superseded values", superseded.len());

    let missing: Vec<usize> = {
        let found = found_in(&files, &current);
        (0..current.len()).filter(|i| !found.contains_key(i)).collect()
    };
    assert!(
        missing.is_empty(),
        "{when}: {} of {} current values not found in {names:#?}",
        missing.len(),
        current.len()
    );

    let found = found_in(&files, &superseded);
    let mut by_file: BTreeMap<String, usize> = BTreeMap::new();
    for files in found.values() {
        for f in files {
            *by_file.entry(f.clone()).or_default() += 1;
        }
    }
    assert!(
        found.is_empty(),
        "{when}: {} of {} superseded sealed values are still in the files (per file: {by_file:?})",
        found.len(),
        superseded.len()
    );
}

#[test]
fn superseded_rows_leave_no_trace_in_the_files() {
    let dir = temp_dir("conversation");
    let mut seen = Seen::default();
    {
        let alice =
            Device::create(dir.join("alice.db"), &StorageKey::from_bytes([0x11; 32]), addr("alice"), UNIX_EPOCH)
                .unwrap();
        let bob =
            Device::create(dir.join("bob.db"), &StorageKey::from_bytes([0x22; 32]), addr("bob"), UNIX_EPOCH).unwrap();
        let carol =
            Device::create(dir.join("carol.db"), &StorageKey::from_bytes([0x33; 32]), addr("carol"), UNIX_EPOCH)
                .unwrap();
        let record = |seen: &mut Seen| {
            seen.record("alice", &alice);
            seen.record("bob", &bob);
            seen.record("carol", &carol);
        };
        record(&mut seen);
        bob.refill_prekeys(4, 6, UNIX_EPOCH).unwrap();
        record(&mut seen);
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        record(&mut seen);

        let mut now = 0;
        for i in 0..150u32 {
            // Alice sends one to three messages, Bob receives them, then replies.
            let wires: Vec<_> = (0..1 + i % 3)
                .map(|k| {
                    let wire = alice.encrypt(bob.address(), format!("alice {i}.{k}").as_bytes()).unwrap();
                    record(&mut seen);
                    wire
                })
                .collect();
            for (k, wire) in wires.iter().enumerate() {
                let pending = bob.decrypt(alice.address(), wire).unwrap();
                assert_eq!(pending.plaintext(), format!("alice {i}.{k}").as_bytes());
                bob.commit(pending).unwrap();
                record(&mut seen);
            }
            let reply = bob.encrypt(alice.address(), format!("bob {i}").as_bytes()).unwrap();
            record(&mut seen);
            assert_eq!(receive(&alice, bob.address(), &reply).unwrap(), format!("bob {i}").as_bytes());
            record(&mut seen);

            // Now and then: Carol (re)starts a session with Bob, consuming one-time
            // prekeys, and Bob refills and rotates his prekeys.
            if i % 25 == 7 {
                carol.trust_identity(bob.address(), bob.identity_key()).unwrap();
                carol.start_session(&bob.prekey_bundle().unwrap()).unwrap();
                record(&mut seen);
                let wire = carol.encrypt(bob.address(), b"carol here").unwrap();
                record(&mut seen);
                assert_eq!(receive(&bob, carol.address(), &wire).unwrap(), b"carol here");
                record(&mut seen);
            }
            if i % 25 == 13 {
                now += 1_000;
                bob.refill_prekeys(6, 6, UNIX_EPOCH + Duration::from_secs(now)).unwrap();
                record(&mut seen);
                bob.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(now), Duration::from_secs(1_000)).unwrap();
                record(&mut seen);
            }
        }
        check(&dir, &seen, "stores open");
    }
    check(&dir, &seen, "stores closed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sealed values are padded to size classes (issue 12, item 5): a copy of
/// the store no longer tells the length of our own user id, and session rows
/// come in a few sizes only.
#[test]
fn sealed_values_are_padded_to_size_classes() {
    use samizdat::store::MemoryBackend;
    let identity_size = |user: &str| {
        let device = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([3; 32]),
            Address::new(user, 1).unwrap(),
            UNIX_EPOCH,
        )
        .unwrap();
        device.backend().scan(Table::Identity).unwrap()[0].1.len()
    };
    let short = identity_size("a");
    assert_eq!(identity_size(&"x".repeat(100)), short);
    assert_eq!(identity_size(&"y".repeat(256)), short, "the user id's length shows in the identity row");
    // Every sealed value: version, nonce, a padded plaintext of a bucket size, tag.
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    for i in 0..50 {
        let wire = alice.encrypt(&addr("bob"), format!("message {i}").as_bytes()).unwrap();
        bob.commit(bob.decrypt(&addr("alice"), &wire).unwrap()).unwrap();
        for table in Table::ALL {
            for (_, value) in bob.backend().scan(table).unwrap() {
                let padded = value.len() - 1 - 24 - 16;
                assert!(
                    padded >= 512 && (padded.is_power_of_two() || padded % 4096 == 0),
                    "{table:?}: a sealed value of {} bytes",
                    value.len()
                );
            }
        }
    }
}
