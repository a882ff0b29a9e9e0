//! What prekey messages and prekey upkeep cost the store, pinned without
//! timing: a counting backend records every row read and written, and the
//! tests bound them whatever the device holds (a minimal prekey set, 200
//! one-time prekeys of each kind, 10,000 remembered base keys). PROTOCOL.md
//! 14.7 gives the rows; BENCHMARKS.md the times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use samizdat::store::StorageKey;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use chacha20::ChaCha20Rng;
use prost::Message as _;
use rand_core::SeedableRng;
use samizdat::{
    DecryptError, PreKeyKind, SessionError,
    address::Address,
    device::{Device, DeviceError},
    keys::{IdentityKey, IdentityKeyPair},
    prekeys::PreKeyBundle,
    session::SessionRecord,
    store::{Backend, MemoryBackend, Row, StoreError, Table, Write},
    wire::Message,
};
use samizdat_proto::wire as pb;

/// One call to the backend, as the counting wrapper saw it.
#[derive(Debug, Clone)]
enum Op {
    /// A `get`: the table and the bytes returned (0 when absent).
    Get(Table, usize),
    /// A `scan`: the table, the rows and the bytes returned.
    Scan(Table, usize, usize),
    /// A write of an applied batch: the table, the key, and the bytes
    /// written (`None`: a delete).
    Put(Table, Vec<u8>, Option<usize>),
}

/// A backend that logs every row read and written.
#[derive(Default)]
struct Counting {
    inner: MemoryBackend,
    log: Mutex<Vec<Op>>,
}

impl Backend for Counting {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.inner.get(table, key)?;
        self.log.lock().unwrap().push(Op::Get(table, value.as_ref().map_or(0, Vec::len)));
        Ok(value)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let rows = self.inner.scan(table)?;
        let bytes = rows.iter().map(|(_, v)| v.len()).sum();
        self.log.lock().unwrap().push(Op::Scan(table, rows.len(), bytes));
        Ok(rows)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.inner.apply(writes)?;
        let mut log = self.log.lock().unwrap();
        for write in writes {
            log.push(Op::Put(write.table, write.key.clone(), write.value.as_ref().map(Vec::len)));
        }
        Ok(())
    }
}

/// What the prekey table saw during one step.
#[derive(Debug, Default)]
struct Cost {
    /// Rows read (a scan counts each row it returns) and their bytes.
    rows_read: usize,
    bytes_read: usize,
    /// Keys written (`None` value: deleted) and the bytes written.
    written: Vec<(Vec<u8>, Option<usize>)>,
    bytes_written: usize,
}

impl Counting {
    /// The prekey table's cost since the last call.
    fn take(&self) -> Cost {
        let mut cost = Cost::default();
        for op in std::mem::take(&mut *self.log.lock().unwrap()) {
            match op {
                Op::Get(Table::PreKeys, bytes) => {
                    cost.rows_read += 1;
                    cost.bytes_read += bytes;
                }
                Op::Scan(Table::PreKeys, rows, bytes) => {
                    cost.rows_read += rows;
                    cost.bytes_read += bytes;
                }
                Op::Put(Table::PreKeys, key, bytes) => {
                    cost.bytes_written += bytes.unwrap_or(0);
                    cost.written.push((key, bytes));
                }
                _ => {}
            }
        }
        cost
    }
}

/// The most prekey rows a prekey message's decryption reads: the signed
/// prekey, the one-time X25519 prekey or the remembered base key, and the
/// ML-KEM prekey (one-time, or else last-resort: two lookups).
const DECRYPT_ROWS: usize = 4;
/// The most bytes those rows hold: two ML-KEM key pairs (sealed, about
/// 4.9 KB each) and small rows.
const DECRYPT_BYTES: usize = 12_000;
/// The most prekey rows a commit reads: the meta row, then either the
/// one-time X25519 row, or the base key's lookup row, its ring slot and the
/// lookup row that slot evicts; and the one-time ML-KEM row.
const COMMIT_ROWS: usize = 5;
/// The most bytes those rows hold: the meta row (every id held), one ML-KEM
/// key pair and small rows.
const COMMIT_BYTES: usize = 10_000;
/// The most prekey rows a commit writes: the meta row, the consumed one-time
/// rows (deleted), and for a handshake without a one-time X25519 prekey the
/// new lookup row, its ring slot and the evicted lookup row (deleted).
const COMMIT_WRITES: usize = 5;
/// The most bytes a commit writes to the prekey table (deletes write none).
const COMMIT_WRITE_BYTES: usize = 4_000;

fn addr(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

/// Bob, with `one_time` one-time prekeys of each kind.
fn new_bob(one_time: usize) -> Device<Arc<Counting>> {
    let bob =
        Device::create_in(Arc::new(Counting::default()), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH)
            .unwrap();
    if one_time > 0 {
        bob.refill_prekeys(one_time, one_time, UNIX_EPOCH).unwrap();
    }
    bob.backend().take();
    bob
}

/// Initiators: one identity, a new address for each session.
struct Peers {
    rng: ChaCha20Rng,
    identity: IdentityKeyPair,
    next: usize,
}

impl Peers {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let identity = IdentityKeyPair::generate(&mut rng);
        Self { rng, identity, next: 0 }
    }

    /// The first message of a new session from a new peer, from `bundle`.
    fn first_message(&mut self, bundle: &[u8]) -> (Address, Vec<u8>) {
        let peer = addr(&format!("peer-{}", self.next));
        self.next += 1;
        let bundle = PreKeyBundle::from_bytes(bundle).unwrap();
        let mut record = SessionRecord::new();
        record.initiate(&mut self.rng, &self.identity, &peer, &bundle).unwrap();
        (peer, record.encrypt(&mut self.rng, b"hello").unwrap())
    }
}

/// The prekey ids a prekey message names: `(signed, one-time X25519, ML-KEM)`.
fn prekey_ids(wire: &[u8]) -> (u32, Option<u32>, u32) {
    match Message::from_bytes(wire).unwrap() {
        Message::PreKey(prekey) => prekey.header().prekey_ids(),
        Message::Ratchet(_) => panic!("not a prekey message"),
    }
}

fn is_duplicate_prekey(result: Result<impl Sized, DeviceError>) -> bool {
    matches!(result, Err(DeviceError::Session(SessionError::DuplicatePreKeyMessage)))
}

/// Bob decrypts and commits a first message from a new peer; returns what
/// the decryption and the commit cost the prekey table.
fn new_session(bob: &Device<Arc<Counting>>, peers: &mut Peers) -> (Vec<u8>, Cost, Cost) {
    let bundle = bob.prekey_bundle().unwrap();
    let (peer, wire) = peers.first_message(&bundle);
    bob.backend().take();
    let pending = bob.decrypt(&peer, &wire).unwrap();
    assert_eq!(pending.plaintext(), b"hello");
    let decrypt = bob.backend().take();
    bob.commit(pending).unwrap();
    let commit = bob.backend().take();
    (wire, decrypt, commit)
}

/// The bounds every prekey message meets, whatever the device holds.
fn assert_bounded(what: &str, decrypt: &Cost, commit: &Cost) {
    assert!(
        decrypt.rows_read <= DECRYPT_ROWS && decrypt.bytes_read <= DECRYPT_BYTES,
        "{what}: decrypt read {} prekey rows, {} bytes (at most {DECRYPT_ROWS}, {DECRYPT_BYTES})",
        decrypt.rows_read,
        decrypt.bytes_read
    );
    assert!(decrypt.written.is_empty(), "{what}: decrypt wrote {:?}", decrypt.written);
    assert!(
        commit.rows_read <= COMMIT_ROWS && commit.bytes_read <= COMMIT_BYTES,
        "{what}: commit read {} prekey rows, {} bytes (at most {COMMIT_ROWS}, {COMMIT_BYTES})",
        commit.rows_read,
        commit.bytes_read
    );
    assert!(
        commit.written.len() <= COMMIT_WRITES && commit.bytes_written <= COMMIT_WRITE_BYTES,
        "{what}: commit wrote {} prekey rows, {} bytes (at most {COMMIT_WRITES}, {COMMIT_WRITE_BYTES})",
        commit.written.len(),
        commit.bytes_written
    );
}

fn key_with_id(prefix: &str, id: u32) -> Vec<u8> {
    [prefix.as_bytes(), &id.to_be_bytes()].concat()
}

fn keys_with_prefix<'a>(cost: &'a Cost, prefix: &'a str) -> impl Iterator<Item = &'a (Vec<u8>, Option<usize>)> {
    cost.written.iter().filter(move |(key, _)| key.starts_with(prefix.as_bytes()))
}

#[test]
fn a_prekey_message_costs_the_same_rows_with_a_minimal_set_and_with_every_one_time_prekey_held() {
    let mut peers = Peers::new();
    // A minimal set (a signed and a last-resort prekey) and one one-time
    // prekey of each kind; then 200 of each.
    for held in [1, 200] {
        let bob = new_bob(held);
        let (wire, decrypt, commit) = new_session(&bob, &mut peers);
        assert_bounded(&format!("{held}+{held} one-time prekeys"), &decrypt, &commit);
        // The commit deletes the two one-time rows it consumed and rewrites
        // the meta row: nothing else.
        let (_, one_time, pq) = prekey_ids(&wire);
        let mut written = commit.written.iter().map(|(key, value)| (key.clone(), value.is_some())).collect::<Vec<_>>();
        written.sort();
        let mut expected =
            vec![(key_with_id("one-time/", one_time.unwrap()), false), (key_with_id("pq-one-time/", pq), false)];
        expected.push((b"meta".to_vec(), true));
        expected.sort();
        assert_eq!(written, expected, "{held}+{held}: the rows written");
        assert_eq!(bob.prekey_counts().unwrap(), (held - 1, held - 1));
    }
    // Without one-time prekeys: the signed and last-resort prekeys, and the
    // base key remembered in a lookup row and a ring slot.
    let bob = new_bob(0);
    let (_, decrypt, commit) = new_session(&bob, &mut peers);
    assert_bounded("minimal set", &decrypt, &commit);
    assert_eq!(commit.written.len(), 3, "meta, lookup and ring rows: {:?}", commit.written);
    assert_eq!(keys_with_prefix(&commit, "meta").count(), 1);
    assert_eq!(keys_with_prefix(&commit, "base-key/").filter(|(_, v)| v.is_some()).count(), 1);
    assert_eq!(keys_with_prefix(&commit, "ring/").count(), 1);
}

#[test]
fn ten_thousand_remembered_base_keys_cost_no_more_and_the_next_evicts_the_oldest() {
    use samizdat::limits::MAX_REMEMBERED_BASE_KEYS;
    let bob = new_bob(0);
    let mut peers = Peers::new();
    let mut firsts = Vec::new();
    for _ in 0..MAX_REMEMBERED_BASE_KEYS {
        let (wire, decrypt, commit) = new_session(&bob, &mut peers);
        if firsts.len() < 2 {
            assert_bounded("the first remembered base keys", &decrypt, &commit);
            firsts.push(wire);
        }
    }
    // Delivered under another address, a remembered first message is a
    // duplicate device-wide (its record knows nothing of it).
    let mallory = addr("mallory");
    bob.backend().take();
    assert!(is_duplicate_prekey(bob.decrypt(&mallory, &firsts[0])));
    let replay = bob.backend().take();
    assert!(replay.rows_read <= DECRYPT_ROWS && replay.bytes_read <= DECRYPT_BYTES, "a replay read {replay:?}");
    // The 10,001st costs what the first did, and evicts the oldest pair.
    let (_, decrypt, commit) = new_session(&bob, &mut peers);
    assert_bounded("10,000 remembered base keys", &decrypt, &commit);
    assert_eq!(commit.written.len(), 4, "meta, lookup, ring and evicted lookup rows: {:?}", commit.written);
    assert_eq!(keys_with_prefix(&commit, "base-key/").filter(|(_, v)| v.is_none()).count(), 1, "one lookup deleted");
    // The oldest is forgotten: its handshake runs (and fails, under another
    // address); the second oldest is still remembered.
    assert!(matches!(
        bob.decrypt(&mallory, &firsts[0]),
        Err(DeviceError::Session(SessionError::Decrypt(DecryptError::NoMatchingState)))
    ));
    assert!(is_duplicate_prekey(bob.decrypt(&mallory, &firsts[1])));
}

#[test]
fn junk_and_undecodable_prekey_messages_read_no_prekey_row() {
    let bob = new_bob(200);
    let mut peers = Peers::new();
    let (peer, wire) = peers.first_message(&bob.prekey_bundle().unwrap());
    // A genuine prekey message with its ML-KEM ciphertext cut short: its
    // envelope says "prekey", its fields do not decode.
    let mut envelope = pb::Envelope::decode(&wire[1..]).unwrap();
    let Some(pb::envelope::Body::Prekey(prekey)) = &mut envelope.body else { panic!("not a prekey message") };
    prekey.pq_ciphertext.truncate(100);
    let cut = [&[1u8][..], &envelope.encode_to_vec()].concat();
    // ... and with an identity key that does not decode.
    let mut envelope = pb::Envelope::decode(&wire[1..]).unwrap();
    let Some(pb::envelope::Body::Prekey(prekey)) = &mut envelope.body else { panic!("not a prekey message") };
    prekey.identity_key = (0..=u8::MAX).map(|i| vec![i; 32]).find(|k| IdentityKey::from_slice(k).is_err()).unwrap();
    let not_a_point = [&[1u8][..], &envelope.encode_to_vec()].concat();
    let junk: [(&str, &[u8]); 4] = [
        ("a 3-byte prekey envelope", &[1, 0x0a, 0x00]),
        ("a cut ML-KEM ciphertext", &cut),
        ("an identity key that is not a valid key", &not_a_point),
        ("random bytes", &[0x5a; 200]),
    ];
    for (what, bytes) in junk {
        bob.backend().take();
        let result = bob.decrypt(&peer, bytes);
        assert!(matches!(result, Err(DeviceError::Session(SessionError::Malformed(_)))), "{what}: {result:?}");
        let cost = bob.backend().take();
        assert_eq!((cost.rows_read, cost.bytes_read), (0, 0), "{what} read prekey rows");
    }
    // The genuine message still decrypts.
    bob.commit(bob.decrypt(&peer, &wire).unwrap()).unwrap();
}

#[test]
fn a_prekey_message_for_a_known_session_or_base_key_reads_no_prekey_row() {
    let bob = new_bob(200);
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    // Until Bob replies, every message of Alice's carries the prekey header.
    let first = alice.encrypt(bob.address(), b"first").unwrap();
    let second = alice.encrypt(bob.address(), b"second").unwrap();
    bob.commit(bob.decrypt(alice.address(), &first).unwrap()).unwrap();
    bob.backend().take();
    // The second goes to the session the first built.
    let pending = bob.decrypt(alice.address(), &second).unwrap();
    assert_eq!(pending.plaintext(), b"second");
    let cost = bob.backend().take();
    assert_eq!((cost.rows_read, cost.bytes_read), (0, 0), "a message of a known session read prekey rows");
    bob.commit(pending).unwrap();
    // A replay of the first goes there too, as a duplicate.
    bob.backend().take();
    let replay = bob.decrypt(alice.address(), &first);
    assert!(
        matches!(replay, Err(DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))),
        "{replay:?}"
    );
    let cost = bob.backend().take();
    assert_eq!((cost.rows_read, cost.bytes_read), (0, 0), "a replay read prekey rows");
}

#[test]
fn prekey_upkeep_touches_only_the_rows_it_changes() {
    let bob = new_bob(200);
    bob.backend().take();
    // Counts: the meta row only.
    assert_eq!(bob.prekey_counts().unwrap(), (200, 200));
    let counts = bob.backend().take();
    assert!(counts.rows_read == 1 && counts.bytes_read < 4_000, "counts read {counts:?}");
    // A bundle: the meta row, the current signed prekey, a one-time X25519
    // and a one-time ML-KEM prekey.
    bob.prekey_bundle().unwrap();
    let bundle = bob.backend().take();
    // (Sealed values are padded to size classes, PROTOCOL.md 14.4: up to
    // about 12% more than their content.)
    assert!(bundle.rows_read <= 4 && bundle.bytes_read < 12_000, "a bundle read {bundle:?}");
    // A refill to 200: two bundles were handed out (that one and the new
    // session's, whose keys are consumed), so 198 of each kind are left to
    // hand out and 199 held. It adds 2 of each and, to hold at most 200,
    // deletes the oldest key handed out and not consumed (the first
    // bundle's): it reads the meta row and the two rows it deletes, and
    // writes four new rows, two deletes and the meta row.
    let mut peers = Peers::new();
    new_session(&bob, &mut peers);
    assert_eq!(bob.refill_prekeys(200, 200, UNIX_EPOCH).unwrap(), 4);
    let refill = bob.backend().take();
    assert!(refill.rows_read == 3 && refill.bytes_read < 12_000, "a refill read {refill:?}");
    assert_eq!(refill.written.len(), 7, "a refill wrote {:?}", refill.written);
    assert_eq!(refill.written.iter().filter(|(_, v)| v.is_none()).count(), 2, "{:?}", refill.written);
    assert!(refill.bytes_written < 20_000, "a refill wrote {} bytes", refill.bytes_written);
    assert_eq!(bob.prekey_counts().unwrap(), (200, 200));
    // Rotations: a new signed and a new last-resort row and the meta row,
    // then (past three of each) the oldest of each deleted.
    for (round, now) in [1_000, 2_000, 3_000].into_iter().enumerate() {
        bob.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(now), Duration::from_secs(1_000)).unwrap();
        let rotate = bob.backend().take();
        let deleted = rotate.written.iter().filter(|(_, v)| v.is_none()).count();
        assert_eq!(deleted, if round < 2 { 0 } else { 2 }, "rotation {round} wrote {:?}", rotate.written);
        assert_eq!(rotate.written.len() - deleted, 3, "rotation {round} wrote {:?}", rotate.written);
        assert!(rotate.bytes_read < 20_000 && rotate.bytes_written < 10_000, "rotation {round}: {rotate:?}");
    }
}

#[test]
fn row_keys_reveal_no_base_key() {
    let bob = new_bob(0);
    let mut peers = Peers::new();
    let (wire, _, _) = new_session(&bob, &mut peers);
    let Message::PreKey(prekey) = Message::from_bytes(&wire).unwrap() else { panic!("not a prekey message") };
    let base_key = prekey.header().base_key();
    for (key, _) in bob.backend().inner.scan(Table::PreKeys).unwrap() {
        assert!(
            !key.windows(8).any(|w| base_key.as_bytes().windows(8).any(|b| b == w)),
            "a row key holds the base key"
        );
    }
}

#[test]
fn batches_see_what_earlier_messages_consumed() {
    let bob = new_bob(2);
    let mut peers = Peers::new();
    let bundle = bob.prekey_bundle().unwrap();
    // Two sessions from one bundle: the second names a one-time prekey the
    // first consumed.
    let a = peers.first_message(&bundle);
    let b = peers.first_message(&bundle);
    // And a first message without a one-time prekey, twice: once as sent,
    // once relabelled (a duplicate device-wide).
    let minimal = new_bob(0);
    let c = peers.first_message(&minimal.prekey_bundle().unwrap());
    let batch = bob.decrypt_batch(&[a.clone(), b.clone()]).unwrap();
    assert!(batch.results()[0].is_ok());
    assert!(
        matches!(batch.results()[1], Err(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, .. })),
        "{:?}",
        batch.results()[1]
    );
    bob.commit_batch(batch).unwrap();
    assert_eq!(bob.prekey_counts().unwrap(), (1, 1));
    let batch = minimal.decrypt_batch(&[c.clone(), (addr("mallory"), c.1.clone())]).unwrap();
    assert!(batch.results()[0].is_ok());
    assert!(matches!(batch.results()[1], Err(SessionError::DuplicatePreKeyMessage)), "{:?}", batch.results()[1]);
    minimal.commit_batch(batch).unwrap();
    assert!(is_duplicate_prekey(minimal.decrypt(&addr("mallory"), &c.1)));
    // A batch made before another commit consumed its prekeys is stale.
    let d = peers.first_message(&bob.prekey_bundle().unwrap());
    let batch = bob.decrypt_batch(std::slice::from_ref(&d)).unwrap();
    let other = peers.first_message(&bob.prekey_bundle().unwrap());
    bob.commit(bob.decrypt(&other.0, &other.1).unwrap()).unwrap();
    assert!(matches!(bob.commit_batch(batch), Err(DeviceError::Session(SessionError::StalePending))));
}
