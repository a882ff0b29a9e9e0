//! Three devices on memory stores, a hostile network between them, and the
//! model the `interaction` target checks them against.
//!
//! # What is asserted, and why only that
//!
//! The network may drop, duplicate, reorder and alter messages; a device may
//! restart (open its store again), or have its store replaced by an earlier
//! snapshot of it (a restored backup). PROTOCOL.md promises, and the model
//! checks after every call:
//!
//! 1. **Nothing is accepted that was not sent** (4.6, 9.5, 16.2): every
//!    successful decryption gives exactly the plaintext some device sent to
//!    this one, under the sender address the transport named. An altered
//!    message decrypts only if it still is the original (then it counts as
//!    a delivery of the original).
//! 2. **At most once per store history** (4.8, 9.6, 9.8, 16.4): a message
//!    whose commit a store holds never decrypts again in that store.
//!    Restoring an older copy of a store brings back what it had not yet
//!    committed: by design (16.3 "Replay after restoring a state", 16.6
//!    "Rollback of a row is not detected"; session healing is later work), a
//!    restored receiver decrypts again the messages it had committed after
//!    the copy was made, once each. So the model restores, with a store, the
//!    set of messages that store had committed, and "exactly once" is checked
//!    against the store's own history, not against the wall clock.
//! 3. **Refusals are typed, and honest stores are never corrupt**: a
//!    message that does not decrypt is refused with a `SessionError` (never a
//!    store error: the stores here are only ever written by the library, so
//!    `Corrupt` would be a bug); a `Rollback` (4.8) is reported only for a
//!    sender whose store went back to an earlier copy, since an honest sender
//!    never uses a counter twice.
//! 4. **Two phases** (9.5, 9.6, 14.9): `decrypt` writes nothing, decrypting
//!    the same bytes twice gives the same result, and a pending decryption
//!    whose session row was rewritten since is refused as stale.
//! 5. **Failed calls change nothing** (4.9, 14.1): the whole store is
//!    compared before and after every call that returned an error.
//! 6. **Limits** (`samizdat::limits`, PROTOCOL.md 11 and 14.7): after every
//!    call that wrote, every row of the store opens, parses and keeps within
//!    the limits, seeds rows match their records, and the prekey index
//!    matches the key rows ([`check_store`]).
//!
//! Not asserted: that every message is eventually delivered. Messages may be
//! lost by design: on chains older than the five kept (16.3), past evicted
//! skipped keys, or when sessions cross (16.5 "Crossing sessions can cost
//! messages"); the property tests of `core/tests/session_properties.rs`
//! model those cases exactly. Here a message is either decrypted (once per
//! store history) or refused with a typed error.
//!
//! The devices draw their keys from the OS generator (the device API takes
//! no generator), so a run is reproducible in its events and in what the
//! model asserts, not in its key bytes: which of two crossing sessions wins
//! depends on the base keys (9.9).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, OnceLock},
};

use chacha20::ChaCha20Rng;
use samizdat::{
    DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError},
    keys::IdentityKeyPair,
    prekeys::PreKeySet,
    rand_core::SeedableRng,
    store::{Backend, Expected, MemoryBackend, Table, Write},
};
use samizdat_proto::storage;

use crate::{
    input::Reader,
    rows::{Rows, check_store},
    seal::{KEY_CHECK_PLAINTEXT, KEY_CHECK_ROW, SINGLE_ROW, Sealer},
};

/// The devices, by index.
pub const PARTIES: [(&str, u32); 3] = [("alice", 1), ("bob", 1), ("carol", 7)];

/// Events per input at most (a bound on the time one input takes).
const MAX_EVENTS: usize = 96;
/// Snapshots kept per device.
const MAX_SNAPSHOTS: usize = 4;
/// Bundles kept for later (stale) use.
const MAX_BUNDLES: usize = 8;
/// Messages kept for replays.
const MAX_SENT: usize = 64;

type Store = Arc<MemoryBackend>;

fn address(index: usize) -> Address {
    let (user, device) = PARTIES[index];
    Address::new(user, device).expect("a valid address")
}

fn storage_key(index: usize) -> [u8; 32] {
    [0x30 + u8::try_from(index).expect("three parties"); 32]
}

/// A store holding exactly `rows`.
pub fn store_of(rows: &Rows) -> Store {
    let backend = Arc::new(MemoryBackend::new());
    let writes: Vec<Write> = rows
        .iter()
        .map(|((table, key), value)| Write {
            table: *table,
            key: key.clone(),
            value: Some(value.clone()),
            expected: Expected::Absent,
        })
        .collect();
    backend.apply(&writes).expect("a memory write");
    backend
}

/// The initial stores, made once: an identity from a fixed seed and the
/// prekeys of a seeded generator (two one-time prekeys of each kind), written
/// as a store of the previous prekey format that opening converts (14.7).
fn initial_stores() -> &'static [Rows] {
    static STORES: OnceLock<Vec<Rows>> = OnceLock::new();
    STORES.get_or_init(|| {
        (0..PARTIES.len())
            .map(|index| {
                let key = storage_key(index);
                let sealer = Sealer::new(&key);
                let seed = [0x10 + u8::try_from(index).expect("three parties"); 32];
                let identity = IdentityKeyPair::from_seed(&seed);
                let mut rng = ChaCha20Rng::from_seed(seed);
                let mut prekeys = PreKeySet::new(&mut rng, &identity, 0);
                prekeys.add_one_time_prekeys(&mut rng, &identity, 2, 0).expect("room for two");
                let row = storage::IdentityRow {
                    version: 1,
                    seed: seed.to_vec(),
                    user_id: PARTIES[index].0.to_owned(),
                    device_id: PARTIES[index].1,
                };
                let mut rows = Rows::new();
                let mut put = |table, key: &[u8], plaintext: &[u8]| {
                    let sealed = sealer.seal(table, key, plaintext, [u8::try_from(rows.len()).unwrap_or(0); 24]);
                    rows.insert((table, key.to_vec()), sealed);
                };
                put(Table::Meta, KEY_CHECK_ROW, KEY_CHECK_PLAINTEXT);
                put(Table::Identity, SINGLE_ROW, &prost::Message::encode_to_vec(&row));
                put(Table::PreKeys, SINGLE_ROW, &prekeys.to_bytes());
                let backend = store_of(&rows);
                let device = Device::open_in(backend.clone(), &key).expect("the initial store opens");
                assert_eq!(device.address(), &address(index));
                let converted = backend.snapshot();
                check_store(&converted, &sealer);
                converted
            })
            .collect()
    })
}

/// One device and what the model knows of its store.
pub struct Party {
    address: Address,
    storage_key: [u8; 32],
    sealer: Sealer,
    backend: Store,
    device: Device<Store>,
    /// Ids of the messages the store committed (restored with the store).
    delivered: BTreeSet<u64>,
    /// Whether the store was ever replaced by an earlier copy.
    restored: bool,
    snapshots: Vec<(Rows, BTreeSet<u64>)>,
}

impl Party {
    fn new(index: usize) -> Self {
        let storage_key = storage_key(index);
        let backend = store_of(&initial_stores()[index]);
        let device = Device::open_in(backend.clone(), &storage_key).expect("the initial store opens");
        Self {
            address: address(index),
            storage_key,
            sealer: Sealer::new(&storage_key),
            backend,
            device,
            delivered: BTreeSet::new(),
            restored: false,
            snapshots: Vec::new(),
        }
    }

    fn rows(&self) -> Rows {
        self.backend.snapshot()
    }

    /// After a call: unchanged if it failed; within the limits if it wrote.
    fn after<T>(&self, call: &str, before: &Rows, result: &Result<T, DeviceError>) {
        let now = self.rows();
        match result {
            Err(error) => assert!(now == *before, "{call} failed ({error:?}) and changed the store"),
            Ok(_) if now != *before => check_store(&now, &self.sealer),
            Ok(_) => {}
        }
    }
}

/// A message on the network.
#[derive(Clone)]
struct Message {
    id: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    tampered: bool,
}

/// The devices, the network, and what was sent.
pub struct World {
    parties: Vec<Party>,
    flight: Vec<Message>,
    sent: Vec<Message>,
    /// Every plaintext sent: id -> (from, to, plaintext).
    originals: BTreeMap<u64, (usize, usize, Vec<u8>)>,
    bundles: Vec<(usize, Vec<u8>)>,
    next_id: u64,
    now: u64,
}

/// What decrypting a message may legitimately fail with: a session error.
fn assert_session_error(call: &str, error: &DeviceError) {
    assert!(matches!(error, DeviceError::Session(_)), "{call}: an error other than a session error: {error:?}");
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// Three devices with no session yet.
    pub fn new() -> Self {
        Self {
            parties: (0..PARTIES.len()).map(Party::new).collect(),
            flight: Vec::new(),
            sent: Vec::new(),
            originals: BTreeMap::new(),
            bundles: Vec::new(),
            next_id: 0,
            now: 0,
        }
    }

    /// Runs the events of `input`, then delivers everything still in flight.
    pub fn run(input: &[u8]) {
        let mut world = Self::new();
        let mut reader = Reader::new(input);
        for _ in 0..MAX_EVENTS {
            if reader.is_empty() {
                break;
            }
            world.event(&mut reader);
        }
        while !world.flight.is_empty() {
            let message = world.flight.remove(0);
            world.deliver(&message, true);
        }
    }

    fn party_pair(reader: &mut Reader<'_>) -> (usize, usize) {
        let from = reader.below(PARTIES.len());
        let to = (from + 1 + reader.below(PARTIES.len() - 1)) % PARTIES.len();
        (from, to)
    }

    fn pick(&self, reader: &mut Reader<'_>) -> Option<usize> {
        let index = reader.u8();
        (!self.flight.is_empty()).then(|| usize::from(index) % self.flight.len())
    }

    fn event(&mut self, reader: &mut Reader<'_>) {
        match reader.u8() % 16 {
            0 | 1 => {
                let (from, to) = Self::party_pair(reader);
                let extra = reader.u8();
                self.send(from, to, extra);
            }
            2 | 3 => {
                if let Some(i) = self.pick(reader) {
                    let message = self.flight.remove(i);
                    self.deliver(&message, true);
                }
            }
            4 => {
                // Delivered, and left in flight: a duplicate comes later.
                if let Some(i) = self.pick(reader) {
                    let message = self.flight[i].clone();
                    self.deliver(&message, true);
                }
            }
            5 => {
                let index = reader.u8();
                if !self.sent.is_empty() {
                    let message = self.sent[usize::from(index) % self.sent.len()].clone();
                    self.deliver(&message, true);
                }
            }
            6 => {
                if let Some(i) = self.pick(reader) {
                    self.flight.remove(i);
                }
            }
            7 => {
                let (position, bit) = (reader.u16(), reader.u8());
                if let Some(i) = self.pick(reader) {
                    let mut message = self.flight[i].clone();
                    if !message.bytes.is_empty() {
                        let at = usize::from(position) % message.bytes.len();
                        message.bytes[at] ^= 1 << (bit % 8);
                        message.tampered = true;
                        self.flight.push(message);
                    }
                }
            }
            8 => {
                // Decrypted but not committed (the app crashed first).
                if let Some(i) = self.pick(reader) {
                    let message = self.flight[i].clone();
                    self.deliver(&message, false);
                }
            }
            9 => {
                let party = &mut self.parties[reader.below(PARTIES.len())];
                if party.snapshots.len() == MAX_SNAPSHOTS {
                    party.snapshots.remove(0);
                }
                party.snapshots.push((party.rows(), party.delivered.clone()));
            }
            10 => {
                let (index, which) = (reader.below(PARTIES.len()), reader.u8());
                self.restore(index, which);
            }
            11 => self.restart(reader.below(PARTIES.len())),
            12 => {
                let (from, to) = Self::party_pair(reader);
                let which = reader.u8();
                self.start_session(from, to, which);
            }
            13 => {
                let (index, target, step) = (reader.below(PARTIES.len()), reader.u8() % 4, reader.u8());
                self.prekeys(index, usize::from(target), u64::from(step));
            }
            14 => {
                let (to, count) = (reader.below(PARTIES.len()), reader.u8() % 5);
                self.batch(to, usize::from(count));
            }
            _ => {
                if let Some(i) = self.pick(reader) {
                    let message = self.flight[i].clone();
                    self.stale_commit(&message);
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, extra: u8) -> bool {
        let id = self.next_id;
        let mut plaintext = id.to_be_bytes().to_vec();
        plaintext.extend(std::iter::repeat_n(id.to_le_bytes()[0], usize::from(extra)));
        let party = &self.parties[from];
        let before = party.rows();
        let result = party.device.encrypt(&self.parties[to].address, &plaintext);
        party.after("encrypt", &before, &result);
        match result {
            Ok(bytes) => {
                self.next_id += 1;
                self.originals.insert(id, (from, to, plaintext));
                let message = Message { id, from, to, bytes, tampered: false };
                if self.sent.len() == MAX_SENT {
                    self.sent.remove(0);
                }
                self.sent.push(message.clone());
                self.flight.push(message);
                true
            }
            Err(error) => {
                assert_session_error("encrypt", &error);
                false
            }
        }
    }

    /// Checks that a decryption gave a plaintext that was sent, from the
    /// sender the transport named, to this device; returns its id.
    fn genuine(&self, message: &Message, plaintext: &[u8], peer: &Address) -> u64 {
        assert!(*peer == self.parties[message.from].address, "a pending decryption names another peer");
        let id = plaintext
            .get(..8)
            .map(|head| u64::from_be_bytes(head.try_into().expect("eight bytes")))
            .expect("a plaintext nobody sent (too short)");
        let (from, to, original) = self.originals.get(&id).expect("a plaintext nobody sent");
        assert!(
            (*from, *to, original.as_slice()) == (message.from, message.to, plaintext) && id == message.id,
            "decrypted a plaintext other than the one sent (message {}, got {id})",
            message.id
        );
        id
    }

    /// What a refused message may be refused with.
    fn refused(&self, message: &Message, error: &DeviceError) {
        assert_session_error("decrypt", error);
        if let DeviceError::Session(SessionError::Decrypt(DecryptError::Rollback { .. })) = error {
            assert!(
                self.parties[message.from].restored,
                "Rollback reported for a sender whose store never went back (message {})",
                message.id
            );
        }
    }

    fn deliver(&mut self, message: &Message, commit: bool) {
        let party = &self.parties[message.to];
        let peer = &self.parties[message.from].address;
        let before = party.rows();
        let result = party.device.decrypt(peer, &message.bytes);
        assert!(party.rows() == before, "decrypt changed the store");
        // Decrypting again, before any commit, gives the same result.
        let again = party.device.decrypt(peer, &message.bytes);
        match (&result, &again) {
            (Ok(a), Ok(b)) => assert!(a.plaintext() == b.plaintext(), "two decryptions differ"),
            (Err(a), Err(b)) => assert!(format!("{a:?}") == format!("{b:?}"), "two refusals differ: {a:?}, {b:?}"),
            _ => panic!("decrypting twice gave {:?} then {:?}", result.is_ok(), again.is_ok()),
        }
        drop(again);
        let pending = match result {
            Ok(pending) => pending,
            Err(error) => return self.refused(message, &error),
        };
        let id = self.genuine(message, pending.plaintext(), pending.peer());
        let party = &self.parties[message.to];
        assert!(!party.delivered.contains(&id), "message {id} decrypted again in a store that committed it");
        if !commit {
            return;
        }
        let result = party.device.commit(pending);
        party.after("commit", &before, &result);
        match result {
            Ok(_) => {
                self.parties[message.to].delivered.insert(id);
            }
            Err(error) => assert_session_error("commit", &error),
        }
    }

    fn batch(&mut self, to: usize, count: usize) {
        let mut messages = Vec::new();
        let mut i = 0;
        while messages.len() < count && i < self.flight.len() {
            if self.flight[i].to == to {
                messages.push(self.flight.remove(i));
            } else {
                i += 1;
            }
        }
        let party = &self.parties[to];
        let input: Vec<(Address, Vec<u8>)> =
            messages.iter().map(|m| (self.parties[m.from].address.clone(), m.bytes.clone())).collect();
        let before = party.rows();
        let batch = party.device.decrypt_batch(&input).expect("a batch from a sound store");
        assert!(party.rows() == before, "decrypt_batch changed the store");
        let mut ids = BTreeSet::new();
        for (message, result) in messages.iter().zip(batch.results()) {
            match result {
                Ok(plaintext) => {
                    let id = self.genuine(message, plaintext, &self.parties[message.from].address);
                    assert!(!party.delivered.contains(&id), "message {id} decrypted again in a batch");
                    assert!(ids.insert(id), "message {id} decrypted twice in one batch");
                }
                Err(error) => self.refused(message, &DeviceError::Session(error.clone())),
            }
        }
        let result = party.device.commit_batch(batch);
        party.after("commit_batch", &before, &result);
        match result {
            Ok(()) => self.parties[to].delivered.extend(ids),
            Err(error) => assert_session_error("commit_batch", &error),
        }
    }

    /// A decryption made, then the session row rewritten (a reply sent),
    /// then the decryption committed: refused as stale if the reply went out.
    fn stale_commit(&mut self, message: &Message) {
        let party = &self.parties[message.to];
        let before = party.rows();
        let Ok(pending) = party.device.decrypt(&self.parties[message.from].address, &message.bytes) else { return };
        self.genuine(message, pending.plaintext(), pending.peer());
        if !self.send(message.to, message.from, 0) {
            // Nothing was written: the pending decryption is still good.
            let party = &self.parties[message.to];
            let id = message.id;
            assert!(!party.delivered.contains(&id), "message {id} decrypted again in a store that committed it");
            let result = party.device.commit(pending);
            party.after("commit", &before, &result);
            if result.is_ok() {
                self.parties[message.to].delivered.insert(id);
            }
            return;
        }
        let party = &self.parties[message.to];
        let rows = party.rows();
        let result = party.device.commit(pending);
        party.after("commit", &rows, &result);
        assert!(
            matches!(result, Err(DeviceError::Session(SessionError::StalePending))),
            "a pending decryption committed after its row was rewritten: {result:?}"
        );
    }

    fn restore(&mut self, index: usize, which: u8) {
        let party = &mut self.parties[index];
        if party.snapshots.is_empty() {
            return;
        }
        let (rows, delivered) = party.snapshots[usize::from(which) % party.snapshots.len()].clone();
        party.backend = store_of(&rows);
        party.device = Device::open_in(party.backend.clone(), &party.storage_key).expect("a restored store opens");
        assert!(party.rows() == rows, "opening a restored store changed it");
        party.delivered = delivered;
        party.restored = true;
    }

    fn restart(&mut self, index: usize) {
        let party = &mut self.parties[index];
        let before = party.rows();
        party.device = Device::open_in(party.backend.clone(), &party.storage_key).expect("a store opens again");
        assert!(party.rows() == before, "opening a store changed it");
    }

    fn start_session(&mut self, from: usize, to: usize, which: u8) {
        let stale: Vec<&Vec<u8>> = self.bundles.iter().filter(|(owner, _)| *owner == to).map(|(_, b)| b).collect();
        let bundle = if which < 160 || stale.is_empty() {
            let party = &self.parties[to];
            let before = party.rows();
            let bundle = party.device.prekey_bundle().expect("a bundle from a sound store");
            assert!(party.rows() == before, "handing out a bundle changed the store");
            if self.bundles.len() == MAX_BUNDLES {
                self.bundles.remove(0);
            }
            self.bundles.push((to, bundle.clone()));
            bundle
        } else {
            stale[usize::from(which) % stale.len()].clone()
        };
        let party = &self.parties[from];
        let before = party.rows();
        let result = party.device.start_session(&bundle);
        party.after("start_session", &before, &result);
        match result {
            Ok(peer) => assert!(peer == self.parties[to].address, "a session with another address"),
            Err(error) => assert_session_error("start_session", &error),
        }
    }

    fn prekeys(&mut self, index: usize, target: usize, step: u64) {
        self.now += step * 3_600;
        let party = &self.parties[index];
        let before = party.rows();
        let result = party.device.refill_prekeys(target, target, self.now);
        party.after("refill_prekeys", &before, &result);
        result.expect("a refill within the limits");
        let before = party.rows();
        let result = party.device.rotate_prekeys(self.now, 4 * 3_600);
        party.after("rotate_prekeys", &before, &result);
        result.expect("a rotation");
    }
}
