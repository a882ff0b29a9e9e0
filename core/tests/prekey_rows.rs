//! What prekey messages cost the store, pinned without timing: a counting
//! backend records every row read and written. A message that is junk, that
//! does not decode, or that its session record takes without prekeys reads
//! no prekey row at all (PROTOCOL.md 9.5, 14.9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::{Arc, Mutex};

use chacha20::ChaCha20Rng;
use prost::Message as _;
use rand_core::SeedableRng;
use samizdat::{
    DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError},
    keys::{IdentityKey, IdentityKeyPair},
    prekeys::PreKeyBundle,
    session::SessionRecord,
    store::{Backend, MemoryBackend, Row, StoreError, Table, Write},
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

fn addr(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

/// Bob, with `one_time` one-time prekeys of each kind.
fn new_bob(one_time: usize) -> Device<Arc<Counting>> {
    let bob = Device::create_in(Arc::new(Counting::default()), &[2; 32], addr("bob"), 0).unwrap();
    if one_time > 0 {
        bob.refill_prekeys(one_time, one_time, 0).unwrap();
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
    let alice = Device::create_in(MemoryBackend::new(), &[1; 32], addr("alice"), 0).unwrap();
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
