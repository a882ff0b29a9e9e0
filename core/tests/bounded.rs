//! What a peer can make a device store, and what a call on its session reads
//! and writes (issue 12, item 3), counted on a backend that records every
//! row a call touches: no timing, so the checks hold on any machine.
//!
//! - Skipped keys are bounded over all of a peer's states, not per state: a
//!   peer that opens 11 sessions, each 2,000 messages ahead, used to leave an
//!   823 KiB sealed row.
//! - The seeds of skipped keys live in their own row: encrypting and
//!   decrypting in order neither read nor write them, so their cost does not
//!   grow with how many are stored.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use samizdat::store::StorageKey;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use samizdat::{
    address::Address,
    device::Device,
    limits::MAX_STORED_SKIPPED_KEYS,
    store::{Backend, MemoryBackend, Row, StoreError, Table, Write},
};

/// What a backend saw: every row read (table, key, bytes) and written.
#[derive(Default)]
struct Counts {
    reads: Vec<(Table, Vec<u8>, usize)>,
    writes: Vec<(Table, Vec<u8>, usize)>,
}

/// A memory backend that records every access.
#[derive(Default)]
struct Counting {
    inner: MemoryBackend,
    counts: Mutex<Counts>,
}

impl Counting {
    fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

impl Backend for Counting {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.inner.get(table, key)?;
        let len = value.as_ref().map_or(0, Vec::len);
        self.counts.lock().unwrap().reads.push((table, key.to_vec(), len));
        Ok(value)
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let rows = self.inner.scan(table)?;
        let mut counts = self.counts.lock().unwrap();
        for (key, value) in &rows {
            counts.reads.push((table, key.clone(), value.len()));
        }
        Ok(rows)
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.inner.apply(writes)?;
        let mut counts = self.counts.lock().unwrap();
        for write in writes {
            counts.writes.push((write.table, write.key.clone(), write.value.as_ref().map_or(0, Vec::len)));
        }
        Ok(())
    }
}

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

/// Bob on a counting backend, and Alice, with a session from Alice to Bob
/// that Bob has answered.
fn pair() -> (Device<Arc<Counting>>, Arc<Counting>, Device<MemoryBackend>) {
    let counting = Arc::new(Counting::default());
    let bob =
        Device::create_in(counting.clone(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH).unwrap();
    let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH)
        .unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let first = alice.encrypt(&address("bob"), b"hello").unwrap();
    bob.commit(bob.decrypt(&address("alice"), &first).unwrap()).unwrap();
    let reply = bob.encrypt(&address("alice"), b"hi").unwrap();
    alice.commit(alice.decrypt(&address("bob"), &reply).unwrap()).unwrap();
    (bob, counting, alice)
}

/// Bytes of every sealed session row Bob holds, and their total.
fn session_rows(counting: &Counting) -> (usize, usize) {
    let rows = counting.inner.scan(Table::Sessions).unwrap();
    (rows.len(), rows.iter().map(|(_, value)| value.len()).sum())
}

#[test]
fn encrypting_and_decrypting_in_order_do_not_touch_the_skipped_keys() {
    let (bob, counting, alice) = pair();
    // Alice sends 1,500 messages; Bob gets only the last: 1,499 skipped keys.
    let mut late = Vec::new();
    for i in 0..1_500 {
        late.push(alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap());
    }
    let last = late.pop().unwrap();
    bob.commit(bob.decrypt(&address("alice"), &last).unwrap()).unwrap();
    let (rows, total) = session_rows(&counting);
    assert_eq!(rows, 2, "the session row and the row of its seeds");
    counting.take();

    // Encrypt, and an in-order message: the session row only, and it is small.
    let wire = bob.encrypt(&address("alice"), b"reply").unwrap();
    let encrypt = counting.take();
    alice.commit(alice.decrypt(&address("bob"), &wire).unwrap()).unwrap();
    let in_order = alice.encrypt(&address("bob"), b"in order").unwrap();
    counting.take();
    bob.commit(bob.decrypt(&address("alice"), &in_order).unwrap()).unwrap();
    let decrypt = counting.take();
    for (what, counts) in [("encrypt", &encrypt), ("in-order decrypt + commit", &decrypt)] {
        let sessions: Vec<_> =
            counts.reads.iter().chain(&counts.writes).filter(|(t, _, _)| *t == Table::Sessions).collect();
        assert!(
            sessions.iter().all(|(_, key, _)| key.len() == 32),
            "{what} touched a row other than the session row: {:?}",
            sessions.iter().map(|(_, k, l)| (k.len(), *l)).collect::<Vec<_>>()
        );
        let bytes: usize = sessions.iter().map(|(_, _, len)| len).sum();
        assert!(bytes < 3 * 16 * 1024, "{what} moved {bytes} bytes of session rows (all rows: {total})");
    }

    // A late message needs its seed: the seeds row is read and rewritten.
    bob.commit(bob.decrypt(&address("alice"), &late[10]).unwrap()).unwrap();
    let out_of_order = counting.take();
    assert!(out_of_order.reads.iter().any(|(_, key, len)| key.len() > 32 && *len > 1_499 * 32));
    assert!(out_of_order.writes.iter().any(|(_, key, len)| key.len() > 32 && *len > 1_498 * 32));
    // Every late message still decrypts exactly once.
    for (i, wire) in late.iter().enumerate().filter(|(i, _)| *i != 10) {
        let pending = bob.decrypt(&address("alice"), wire).unwrap();
        assert_eq!(pending.plaintext(), format!("m{i}").as_bytes());
        bob.commit(pending).unwrap();
    }
    assert!(bob.decrypt(&address("alice"), &late[0]).is_err());
    // No skipped key left: the seeds row is gone.
    assert_eq!(session_rows(&counting).0, 1);
}

/// Attack 3 of issue 12 (its first part): a hostile peer opens 11 sessions,
/// each 2,000 messages ahead. Skipped keys are now bounded over all of the
/// peer's states, so Bob's rows for it stay bounded (823 KiB before).
#[test]
fn a_peer_cannot_make_a_device_store_more_than_the_limit_of_skipped_keys() {
    let counting = Arc::new(Counting::default());
    let bob =
        Device::create_in(counting.clone(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH).unwrap();
    bob.refill_prekeys(20, 20, UNIX_EPOCH).unwrap();
    let mallory =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([6; 32]), address("mallory"), UNIX_EPOCH)
            .unwrap();
    for _ in 0..11 {
        mallory.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let first = mallory.encrypt(&address("bob"), b"open").unwrap();
        bob.commit(bob.decrypt(&address("mallory"), &first).unwrap()).unwrap();
        let mut ahead = Vec::new();
        for _ in 0..=2_000 {
            ahead = mallory.encrypt(&address("bob"), b"ahead").unwrap();
        }
        bob.commit(bob.decrypt(&address("mallory"), &ahead).unwrap()).unwrap();
    }
    let (_, total) = session_rows(&counting);
    // 2,000 seeds of 32 bytes and their framing, one row of states: far below
    // the 11 x 2,000 keys (823 KiB) a per-state limit allowed.
    let bound = MAX_STORED_SKIPPED_KEYS * 48 + 64 * 1024;
    assert!(total < bound, "Bob keeps {total} bytes of session rows for one peer (bound {bound})");
    // A garbage message from that peer reads its session row only (not the
    // seeds: the prekey rows are another matter, see prekey_rows.rs).
    counting.take();
    let mut garbage = mallory.encrypt(&address("bob"), b"x").unwrap();
    let last = garbage.len() - 1;
    garbage[last] ^= 1;
    assert!(bob.decrypt(&address("mallory"), &garbage).is_err());
    let read: usize =
        counting.take().reads.iter().filter(|(table, _, _)| *table == Table::Sessions).map(|(_, _, len)| len).sum();
    assert!(read < 32 * 1024, "a garbage message read {read} bytes of session rows");
}

/// A missing or damaged seeds row is a store error, never a silent loss.
#[test]
fn a_missing_seeds_row_is_a_store_error() {
    let (bob, counting, alice) = pair();
    let late = alice.encrypt(&address("bob"), b"late").unwrap();
    let last = alice.encrypt(&address("bob"), b"last").unwrap();
    bob.commit(bob.decrypt(&address("alice"), &last).unwrap()).unwrap();
    let seeds: Vec<Vec<u8>> =
        counting.inner.scan(Table::Sessions).unwrap().into_iter().map(|(k, _)| k).filter(|k| k.len() > 32).collect();
    assert_eq!(seeds.len(), 1);
    let mut damaged = counting.inner.get(Table::Sessions, &seeds[0]).unwrap().unwrap();
    damaged[40] ^= 1;
    let put = |value: Option<Vec<u8>>| {
        counting
            .inner
            .apply(&[Write {
                table: Table::Sessions,
                key: seeds[0].clone(),
                value,
                expected: samizdat::store::Expected::Any,
            }])
            .unwrap();
    };
    let original = counting.inner.get(Table::Sessions, &seeds[0]).unwrap();
    put(Some(damaged));
    assert!(matches!(
        bob.decrypt(&address("alice"), &late),
        Err(samizdat::device::DeviceError::Store(StoreError::Corrupt { table: Table::Sessions }))
    ));
    put(None);
    assert!(matches!(
        bob.decrypt(&address("alice"), &late),
        Err(samizdat::device::DeviceError::Store(StoreError::Corrupt { table: Table::Sessions }))
    ));
    put(original);
    assert_eq!(bob.decrypt(&address("alice"), &late).unwrap().plaintext(), b"late");
}
