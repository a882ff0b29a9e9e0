//! Three devices on memory stores, a hostile network between them, and the
//! model the `interaction` target checks them against.
//!
//! # What is asserted, and why only that
//!
//! The network may drop, duplicate, reorder and alter messages; a device may
//! restart (open its store again), or have its store replaced by an earlier
//! snapshot of it (a restored backup). The apps heal as PROTOCOL.md 20.1
//! says: a send may keep its plaintext in the outbox (`encrypt_kept`); an
//! app keeps the wire bytes of the last few messages it could not read with
//! the code `out_of_step`, and heals (an event) with the peer's current
//! bundle naming them; a sender acknowledges (an event) a message its peer
//! committed, by the `message_id()` the peer read it under; the model's
//! clock advances (an event), and the apps' reset interval is short
//! ([`RESET_INTERVAL`]) so that resets happen. What a commit returns (the
//! resends of a reset) goes on the network like any message, to be dropped,
//! duplicated or altered. After the events, everything in flight is
//! delivered and the apps heal for a few rounds, as they would while
//! messages from a peer stay unreadable or resends awaited. PROTOCOL.md
//! promises, and the model checks after every call:
//!
//! 1. **Nothing is accepted that was not sent** (4.6, 9.5, 16.2, 20.6):
//!    every plaintext that reaches the app is exactly the plaintext some
//!    device sent to this one, under the sender address the transport
//!    named. An altered message decrypts only if it still is the original
//!    (then it counts as a delivery of the original). A resend that reaches
//!    the app (kind `Direct`, from a reset's commit) carries exactly the
//!    plaintext of a message its sender kept for this device, and its
//!    `message_id()` is the id of that message's first wire bytes; every
//!    other control message (a reset, a resend not for the app) reaches the
//!    app as nothing (kind `Control`, no plaintext), and an app message is
//!    never read as one. Only a reset's commit returns messages to send,
//!    addressed to the reset's sender.
//! 2. **At most once per store history** (4.8, 9.6, 9.8, 16.4, 20.6, 20.8):
//!    a message whose commit a store holds does not reach the app again in
//!    that store, whether as first sent or as a resend. Restoring an older
//!    copy of a store brings back what it had not yet committed: by design
//!    (16.3 "Replay after restoring a state", 16.6 "Rollback of a row is not
//!    detected"), a restored receiver decrypts again the messages it had
//!    committed after the copy was made, once each. So the model restores,
//!    with a store, the set of messages that store had committed, and
//!    "exactly once" is checked against the store's own history, not
//!    against the wall clock. Within a store's history, healing makes
//!    three exceptions, and the model allows these and no others:
//!    - a message read as first sent whose id the app named again in a
//!      later reset (a copy or replay of it failed `out_of_step`: the record
//!      does not remember which messages were read; 20.8 "A replay of a
//!      message read long ago") may come again by a resend, under the same
//!      `message_id()`. The model does not know which message a resend
//!      carries until it decrypts, so a reset naming any resend counts as
//!      naming every message of that sender read before (the resend may
//!      have been one of its);
//!    - a message sent before the receiver's store was last restored may
//!      come again the same way, though the store read it as first sent
//!      after the restore: a resend of it, made in the history the store
//!      forgot, failed; the restored store's reset named that resend (it
//!      awaits the resend's id, not knowing whose it is), and the sender
//!      answers with the message again. `core/tests/healing_properties.rs`
//!      allows the same (a message sent before the receiver's last
//!      restore); PROTOCOL.md 20.8 does not list it. Found while writing
//!      this model: the last seed script of `examples/seed_corpus.rs` plays
//!      it;
//!    - once a store's list of delivered resends (`MAX_DELIVERED_RESENDS`)
//!      may have pushed a message's id out, its copies are read again (20.8
//!      "The lists are bounded at 64").
//! 3. **Refusals are typed, and honest stores are never corrupt**: a
//!    message that does not decrypt is refused with a `SessionError` (never a
//!    store error: the stores here are only ever written by the library, so
//!    `Corrupt` would be a bug); a `Rollback` (4.8) is reported only for a
//!    sender whose store went back to an earlier copy, since an honest sender
//!    never uses a counter twice.
//! 4. **Two phases** (9.5, 9.6, 14.9): `decrypt` writes nothing, decrypting
//!    the same bytes twice gives the same result (kind, plaintext and id),
//!    and a pending decryption whose session row was rewritten since is
//!    refused as stale.
//! 5. **Failed calls change nothing** (4.9, 14.1): the whole store is
//!    compared before and after every call that returned an error (`heal`
//!    and `acknowledge` included); a heal refused as `TooSoon` writes nothing
//!    and gives a retry time within the interval; an acknowledgement that
//!    removes nothing writes nothing, and one that removes an entry shrinks
//!    `outbox_len` by one; `encrypt_kept` leaves 1 to
//!    [`OUTBOX_MAX_MESSAGES`] entries, `encrypt` leaves the outbox alone.
//! 6. **Limits** (`samizdat::limits`, PROTOCOL.md 11, 14.7, 20.3, 20.4):
//!    after every call that wrote, every row of the store opens, parses and
//!    keeps within the limits, seeds rows match their records, the prekey
//!    index matches the key rows, the outbox's index and entry rows match,
//!    and each record's healing bookkeeping keeps its bounds
//!    ([`check_store`]).
//!
//! Not asserted: that every message is eventually delivered. Messages may be
//! lost by design: on chains older than the five kept (16.3), past evicted
//! skipped keys, or when sessions cross (16.5 "Crossing sessions can cost
//! messages"); healing brings back only what the sender still keeps, and
//! only when a reset and its resends get through (20.8); the property tests
//! of `core/tests/session_properties.rs` and
//! `core/tests/healing_properties.rs` model those cases exactly. Here a
//! message is either decrypted (once per store history, but for the
//! exceptions above) or refused with a typed error.
//!
//! The devices draw their keys from the OS generator (the device API takes
//! no generator), so a run is reproducible in its events and in what the
//! model asserts, not in its key bytes: which of two crossing sessions wins
//! depends on the base keys (9.9).

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, OnceLock},
};

use chacha20::ChaCha20Rng;
use samizdat::{
    DecryptError, ErrorKind, SessionError,
    address::Address,
    device::{Device, DeviceError, Heal, HealPolicy, MessageKind, Outgoing, PendingMessage},
    heal::{MessageId, message_id},
    keys::IdentityKeyPair,
    limits::{MAX_AWAITED_RESENDS, MAX_DELIVERED_RESENDS, MAX_RESEND_IDS, MAX_RESET_IDS},
    prekeys::PreKeySet,
    rand_core::SeedableRng,
    store::{Backend, Expected, MemoryBackend, Table, Write},
};
use samizdat_proto::storage;

use crate::{
    input::Reader,
    rows::{Rows, check_store},
    seal::{KEY_CHECK_PLAINTEXT, KEY_CHECK_ROW, SINGLE_ROW, Sealer, self_check},
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
/// Messages an app keeps to name in its next reset (the latest).
const MAX_UNREADABLE: usize = 8;
/// Receipts kept for acknowledgements (the latest).
const MAX_RECEIPTS: usize = 32;
/// Rounds of healing after the events, at most.
const SETTLE_ROUNDS: usize = 3;
/// The apps' reset interval, in ticks of the model's clock: short, so that
/// resets happen.
pub const RESET_INTERVAL: u64 = 5;
/// How long the apps' outboxes keep a plaintext (the prekey event moves the
/// clock by hours: everything kept expires then).
const OUTBOX_MAX_AGE: u64 = 64;
/// The most plaintexts the apps' outboxes keep per peer: few, so that the
/// oldest make room.
pub const OUTBOX_MAX_MESSAGES: usize = 6;

type Store = Arc<MemoryBackend>;

/// Whether `WORLD_TRACE` is set: the events and what they gave go to
/// stderr (for reading a finding: `WORLD_TRACE=1 interaction crash-...`).
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("WORLD_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

fn address(index: usize) -> Address {
    let (user, device) = PARTIES[index];
    Address::new(user, device).expect("a valid address")
}

fn storage_key(index: usize) -> [u8; 32] {
    [0x30 + u8::try_from(index).expect("three parties"); 32]
}

/// The apps' healing policy (a handle's policy is not stored: set at every open).
fn policy() -> HealPolicy {
    HealPolicy {
        reset_interval: Duration::from_secs(RESET_INTERVAL),
        outbox_max_age: Duration::from_secs(OUTBOX_MAX_AGE),
        outbox_max_messages: OUTBOX_MAX_MESSAGES,
        ..HealPolicy::default()
    }
}

/// The device of a store, with the apps' policy.
fn open(backend: Store, storage_key: &[u8; 32], what: &str) -> Device<Store> {
    let device =
        Device::open_in(backend, &StorageKey::from_bytes(*storage_key)).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    device.set_heal_policy(policy()).expect("a policy within the limits");
    device
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
/// The row sealing of `seal` is checked against the library's first.
fn initial_stores() -> &'static [Rows] {
    static STORES: OnceLock<Vec<Rows>> = OnceLock::new();
    STORES.get_or_init(|| {
        self_check();
        (0..PARTIES.len())
            .map(|index| {
                let key = storage_key(index);
                let sealer = Sealer::new(&key);
                let seed = [0x10 + u8::try_from(index).expect("three parties"); 32];
                let identity = IdentityKeyPair::from_seed(&seed);
                let mut rng = ChaCha20Rng::from_seed(seed);
                let mut prekeys = PreKeySet::new(&mut rng, &identity, UNIX_EPOCH);
                prekeys.add_one_time_prekeys(&mut rng, &identity, 2, UNIX_EPOCH).expect("room for two");
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
                let device =
                    Device::open_in(backend.clone(), &StorageKey::from_bytes(key)).expect("the initial store opens");
                assert_eq!(device.address(), &address(index));
                let converted = backend.snapshot();
                check_store(&converted, &sealer);
                converted
            })
            .collect()
    })
}

/// What the model knows of a store's history: restored with the store.
#[derive(Clone, Default)]
struct History {
    /// The app messages the store committed, by id.
    delivered: BTreeMap<u64, Delivery>,
    /// Per sender, a bound on how many ids the store's healing bookkeeping
    /// pushed into its list of delivered resends (PROTOCOL.md 20.4): at most
    /// `1 + MAX_RESEND_IDS` per control message committed.
    pushed: [usize; PARTIES.len()],
}

/// How a committed app message reached the app.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    /// By a resend (not read as first sent).
    resent: bool,
    /// A reset sent after it was committed named it (or some resend of its
    /// sender, which may have been one of its).
    named_since: bool,
    /// [`History::pushed`] for its sender before its commit.
    pushed_at: usize,
}

impl Delivery {
    /// Whether the message may reach the app again, `resent` or as first
    /// sent, in the store that committed it (PROTOCOL.md 20.8): if it was
    /// read as first sent, by a resend after a reset named it again, or if
    /// it was sent before the receiver's last restore (`forgotten`); if a
    /// resend brought it, once its id may have left the store's list of
    /// delivered resends.
    fn may_come_again(&self, resent: bool, pushed_now: usize, forgotten: bool) -> bool {
        let pushed_out = pushed_now.saturating_sub(self.pushed_at) >= MAX_DELIVERED_RESENDS;
        (resent && !self.resent && (self.named_since || forgotten)) || (self.resent && pushed_out)
    }
}

/// One device and what the model knows of its store and its app.
pub struct Party {
    address: Address,
    storage_key: [u8; 32],
    sealer: Sealer,
    backend: Store,
    device: Device<Store>,
    history: History,
    /// Whether the store was ever replaced by an earlier copy.
    restored: bool,
    /// The messages sent before the store was last replaced by an earlier
    /// copy: those of ids below this.
    forgot_before: u64,
    snapshots: Vec<(Rows, History)>,
    /// Messages the app could not read (`out_of_step`), to name in its next
    /// reset to their sender: the latest [`MAX_UNREADABLE`].
    unreadable: Vec<Message>,
}

impl Party {
    fn new(index: usize) -> Self {
        let storage_key = storage_key(index);
        let backend = store_of(&initial_stores()[index]);
        let device = open(backend.clone(), &storage_key, "the initial store opens");
        Self {
            address: address(index),
            storage_key,
            sealer: Sealer::new(&storage_key),
            backend,
            device,
            history: History::default(),
            restored: false,
            forgot_before: 0,
            snapshots: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    fn rows(&self) -> Rows {
        self.backend.snapshot()
    }

    /// After a bundle was handed out: only the prekey index changed (its
    /// cursors, PROTOCOL.md 14.7), and the store is within its limits.
    fn after_bundle(&self, before: &Rows) {
        let now = self.rows();
        let index = (Table::PreKeys, b"meta".to_vec());
        let without_index = |rows: &Rows| -> Rows {
            rows.iter().filter(|(key, _)| **key != index).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        assert!(
            without_index(&now) == without_index(before),
            "handing out a bundle changed more than the prekey index"
        );
        assert!(now.contains_key(&index), "handing out a bundle deleted the prekey index");
        if now != *before {
            check_store(&now, &self.sealer);
        }
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

    /// How many plaintexts the outbox keeps for `peer` (a read: no write).
    fn outbox_len(&self, peer: &Address) -> usize {
        let before = self.rows();
        let len = self.device.outbox_len(peer).expect("an outbox index from a sound store");
        assert!(self.rows() == before, "outbox_len changed the store");
        len
    }
}

/// What a message on the network carries, as far as the model knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carries {
    /// An app message, by the model's id.
    App(u64),
    /// Control content: a reset (from `heal`) or a resend (from a reset's
    /// commit), whose plaintext, if any, is known when it decrypts.
    Control,
}

/// A message on the network.
#[derive(Clone)]
struct Message {
    carries: Carries,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    tampered: bool,
}

/// An app message sent.
struct Original {
    from: usize,
    to: usize,
    plaintext: Vec<u8>,
    /// The id of its wire bytes as first sent.
    first_id: MessageId,
    /// Sent with `encrypt_kept`.
    kept: bool,
}

/// The devices, the network, and what was sent.
pub struct World {
    parties: Vec<Party>,
    flight: Vec<Message>,
    sent: Vec<Message>,
    /// Every app message sent, by id.
    originals: BTreeMap<u64, Original>,
    bundles: Vec<(usize, Vec<u8>)>,
    /// Receipts: (sender, receiver, the id the receiver committed it under).
    receipts: Vec<(usize, usize, MessageId)>,
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
            receipts: Vec::new(),
            next_id: 0,
            now: 0,
        }
    }

    /// Runs the events of `input`, then settles: delivers everything still
    /// in flight (with the resends that delivering resets returns), and
    /// lets the apps heal what they could not read, a few rounds at most.
    pub fn run(input: &[u8]) {
        let mut world = Self::new();
        let mut reader = Reader::new(input);
        for _ in 0..MAX_EVENTS {
            if reader.is_empty() {
                break;
            }
            world.event(&mut reader);
        }
        world.settle();
    }

    /// Delivers everything in flight, in order. It ends: only `heal` makes a
    /// reset, and only a reset's commit returns messages.
    fn flush(&mut self) {
        while !self.flight.is_empty() {
            let message = self.flight.remove(0);
            self.deliver(&message, true);
        }
    }

    /// After the events, rounds as an app's life goes on (PROTOCOL.md 20.1,
    /// step 3): everything in flight is delivered; then, once the interval
    /// has passed, every app heals with each peer it has messages from that
    /// it could not read, or whose resends it still awaits. At most
    /// [`SETTLE_ROUNDS`] rounds: not every message comes back (20.8), so
    /// nothing is asserted of what is left.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            self.flush();
            self.now += RESET_INTERVAL;
            let mut healed = false;
            for index in 0..PARTIES.len() {
                for peer in (0..PARTIES.len()).filter(|peer| *peer != index) {
                    let party = &self.parties[index];
                    let awaiting = party.device.awaiting_resends(&self.parties[peer].address);
                    let awaiting = awaiting.expect("a record from a sound store");
                    if awaiting > 0 || party.unreadable.iter().any(|m| m.from == peer) {
                        healed |= self.heal(index, peer, false) == Some(true);
                    }
                }
            }
            if !healed {
                break;
            }
        }
        self.flush();
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
        let event = reader.u8() % 20;
        trace!("event {event} at {} ({} in flight)", self.now, self.flight.len());
        match event {
            0 | 1 => {
                // The extra byte: its top bit clear keeps the plaintext (`encrypt_kept`).
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
                party.snapshots.push((party.rows(), party.history.clone()));
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
            15 => {
                if let Some(i) = self.pick(reader) {
                    let message = self.flight[i].clone();
                    self.stale_commit(&message);
                }
            }
            16 | 17 => {
                // The app heals with the sender of the oldest message it could
                // not read, if any (unless the top bit of the byte says
                // otherwise), else with a peer the byte names; it waits until
                // the interval allows if the next bit says so.
                let (index, choice) = (reader.below(PARTIES.len()), reader.u8());
                let peer = match self.parties[index].unreadable.first() {
                    Some(message) if choice & 0x80 == 0 => message.from,
                    _ => (index + 1 + usize::from(choice & 1)) % PARTIES.len(),
                };
                self.heal(index, peer, choice & 0x40 != 0);
            }
            18 => {
                let which = reader.u8();
                self.acknowledge(which);
            }
            _ => self.now += u64::from(reader.u8() % 8),
        }
    }

    /// Puts a message on the network (and among those kept for replays).
    fn post(&mut self, message: Message) {
        if self.sent.len() == MAX_SENT {
            self.sent.remove(0);
        }
        self.sent.push(message.clone());
        self.flight.push(message);
    }

    fn send(&mut self, from: usize, to: usize, extra: u8) -> bool {
        let id = self.next_id;
        let kept = extra & 0x80 == 0;
        let mut plaintext = id.to_be_bytes().to_vec();
        plaintext.extend(std::iter::repeat_n(id.to_le_bytes()[0], usize::from(extra & 0x7f)));
        let party = &self.parties[from];
        let peer = &self.parties[to].address;
        let held = party.outbox_len(peer);
        let before = party.rows();
        let result = if kept {
            party.device.encrypt_kept(peer, &plaintext, UNIX_EPOCH + Duration::from_secs(self.now))
        } else {
            party.device.encrypt(peer, &plaintext)
        };
        party.after(if kept { "encrypt_kept" } else { "encrypt" }, &before, &result);
        trace!(
            "send {id} {from} -> {to} (kept: {kept}): {:?}",
            result.as_ref().map(Vec::len).map_err(DeviceError::kind)
        );
        match result {
            Ok(bytes) => {
                let now_held = party.outbox_len(peer);
                if kept {
                    assert!(
                        (1..=OUTBOX_MAX_MESSAGES.min(held + 1)).contains(&now_held),
                        "encrypt_kept left {now_held} entries (before: {held})"
                    );
                } else {
                    assert_eq!(now_held, held, "encrypt changed the outbox");
                }
                self.next_id += 1;
                let first_id = message_id(&bytes);
                self.originals.insert(id, Original { from, to, plaintext, first_id, kept });
                self.post(Message { carries: Carries::App(id), from, to, bytes, tampered: false });
                true
            }
            Err(error) => {
                assert_session_error("encrypt", &error);
                false
            }
        }
    }

    /// Checks what a decryption of `message` gave; returns the app message
    /// it brings, if any.
    fn genuine(&self, message: &Message, pending: &PendingMessage) -> Option<u64> {
        assert!(*pending.peer() == self.parties[message.from].address, "a pending decryption names another peer");
        match pending.kind() {
            MessageKind::Direct => Some(self.direct(message, pending.plaintext(), pending.message_id())),
            MessageKind::Control => {
                assert!(message.carries == Carries::Control, "an app message read as control content");
                assert!(pending.plaintext().is_empty(), "control content with a plaintext for the app");
                assert!(
                    pending.message_id() == Some(message_id(&message.bytes)),
                    "control content under another id than its own"
                );
                None
            }
            kind => panic!("a one-to-one message of kind {kind:?}"),
        }
    }

    /// Checks a plaintext that reached the app from `message` (under the id
    /// `given`, where the call tells it): one sent to this device by the
    /// named sender, at most once per store history but for the exceptions
    /// of [`Delivery::may_come_again`]. Returns its id.
    fn direct(&self, message: &Message, plaintext: &[u8], given: Option<MessageId>) -> u64 {
        let id = plaintext
            .get(..8)
            .map(|head| u64::from_be_bytes(head.try_into().expect("eight bytes")))
            .expect("a plaintext nobody sent (too short)");
        let original = self.originals.get(&id).expect("a plaintext nobody sent");
        assert!(
            (original.from, original.to, original.plaintext.as_slice()) == (message.from, message.to, plaintext),
            "decrypted a plaintext other than one sent to this device by its sender (got {id})"
        );
        let resent = match message.carries {
            Carries::App(sent) => {
                assert!(id == sent, "decrypted a plaintext other than the one sent (message {sent}, got {id})");
                assert!(
                    given.is_none_or(|given| given == message_id(&message.bytes)),
                    "message {id} read under another id than that of its bytes"
                );
                false
            }
            Carries::Control => {
                assert!(original.kept, "a resend of message {id}, which was not kept");
                assert!(given == Some(original.first_id), "a resend of message {id} under another id than its first");
                true
            }
        };
        let party = &self.parties[message.to];
        if let Some(first) = party.history.delivered.get(&id) {
            assert!(
                first.may_come_again(resent, party.history.pushed[message.from], id < party.forgot_before),
                "message {id} reached the app again (resent: {resent}) in a store that committed it ({first:?})"
            );
        }
        id
    }

    /// What a refused message may be refused with; the app keeps one it
    /// could not read with the code `out_of_step`, to name in a reset.
    fn refused(&mut self, message: &Message, error: &DeviceError) {
        assert_session_error("decrypt", error);
        if let DeviceError::Session(SessionError::Decrypt(DecryptError::Rollback { .. })) = error {
            assert!(
                self.parties[message.from].restored,
                "Rollback reported for a sender whose store never went back (message {:?})",
                message.carries
            );
        }
        if error.kind() == ErrorKind::OutOfStep {
            let party = &mut self.parties[message.to];
            if party.unreadable.iter().all(|m| m.bytes != message.bytes) {
                if party.unreadable.len() == MAX_UNREADABLE {
                    party.unreadable.remove(0);
                }
                party.unreadable.push(message.clone());
            }
        }
    }

    /// After the commit of `message`, which brought app message `app` (if
    /// any) under `id`: the store's history, the receipt its sender may
    /// acknowledge, and what the commit returned on the network.
    fn committed(&mut self, message: &Message, app: Option<u64>, id: Option<MessageId>, outgoing: Vec<Outgoing>) {
        trace!("  committed at {}: app message {app:?}, {} to send", message.to, outgoing.len());
        let party = &mut self.parties[message.to];
        let pushed_at = party.history.pushed[message.from];
        if message.carries == Carries::Control {
            party.history.pushed[message.from] += 1 + MAX_RESEND_IDS;
        }
        if let Some(app) = app {
            let resent = message.carries == Carries::Control;
            party.history.delivered.insert(app, Delivery { resent, named_since: false, pushed_at });
            let id = id.expect("a one-to-one message has an id");
            if self.receipts.len() == MAX_RECEIPTS {
                self.receipts.remove(0);
            }
            self.receipts.push((message.from, message.to, id));
        }
        assert!(
            outgoing.is_empty() || (message.carries == Carries::Control && app.is_none()),
            "a commit other than a reset's returned messages"
        );
        assert!(outgoing.len() <= MAX_RESET_IDS, "a reset's commit returned {} resends", outgoing.len());
        for resend in outgoing {
            assert!(resend.to == self.parties[message.from].address, "a resend to another address");
            self.post(Message {
                carries: Carries::Control,
                from: message.to,
                to: message.from,
                bytes: resend.message,
                tampered: false,
            });
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
            (Ok(a), Ok(b)) => assert!(
                (a.kind(), a.plaintext(), a.message_id()) == (b.kind(), b.plaintext(), b.message_id()),
                "two decryptions differ"
            ),
            (Err(a), Err(b)) => assert!(format!("{a:?}") == format!("{b:?}"), "two refusals differ: {a:?}, {b:?}"),
            _ => panic!("decrypting twice gave {:?} then {:?}", result.is_ok(), again.is_ok()),
        }
        drop(again);
        trace!(
            "deliver {:?} {} -> {}{}: {:?}",
            message.carries,
            message.from,
            message.to,
            if message.tampered { " (altered)" } else { "" },
            result.as_ref().map(|p| (p.kind(), p.plaintext().get(..8).map(<[u8]>::to_vec))).map_err(DeviceError::kind)
        );
        let pending = match result {
            Ok(pending) => pending,
            Err(error) => return self.refused(message, &error),
        };
        let app = self.genuine(message, &pending);
        if !commit {
            return;
        }
        let id = pending.message_id();
        let party = &self.parties[message.to];
        let result = party.device.commit(pending);
        party.after("commit", &before, &result);
        match result {
            Ok(outgoing) => self.committed(message, app, id, outgoing),
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
        let mut read: Vec<(&Message, u64)> = Vec::new();
        let mut refused = Vec::new();
        for (message, result) in messages.iter().zip(batch.results()) {
            match result {
                Ok(plaintext) => {
                    // Control content (resets, resends) is left to `decrypt`.
                    assert!(matches!(message.carries, Carries::App(_)), "control content read in a batch");
                    let id = self.direct(message, plaintext, None);
                    assert!(read.iter().all(|(_, other)| *other != id), "message {id} decrypted twice in one batch");
                    read.push((message, id));
                }
                Err(error) => refused.push((message, DeviceError::Session(error.clone()))),
            }
        }
        for (message, error) in &refused {
            self.refused(message, error);
        }
        let party = &self.parties[to];
        let result = party.device.commit_batch(batch);
        party.after("commit_batch", &before, &result);
        match result {
            Ok(()) => {
                for (message, id) in read {
                    self.committed(message, Some(id), Some(message_id(&message.bytes)), Vec::new());
                }
            }
            Err(error) => assert_session_error("commit_batch", &error),
        }
    }

    /// A decryption made, then the session row rewritten (a reply sent),
    /// then the decryption committed: refused as stale if the reply went out.
    fn stale_commit(&mut self, message: &Message) {
        let party = &self.parties[message.to];
        let before = party.rows();
        let Ok(pending) = party.device.decrypt(&self.parties[message.from].address, &message.bytes) else { return };
        let app = self.genuine(message, &pending);
        let id = pending.message_id();
        if !self.send(message.to, message.from, 0) {
            // Nothing was written: the pending decryption is still good.
            let party = &self.parties[message.to];
            let result = party.device.commit(pending);
            party.after("commit", &before, &result);
            match result {
                Ok(outgoing) => self.committed(message, app, id, outgoing),
                Err(error) => assert_session_error("commit", &error),
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

    /// The app of `index` heals its session with `peer` (PROTOCOL.md 20.1):
    /// the peer's current bundle, and the messages from it that the app
    /// could not read. Told `TooSoon`, an app that `waits` heals again at
    /// the time it was given, which must then be allowed. Returns whether a
    /// reset was sent (`None`: the call failed).
    fn heal(&mut self, index: usize, peer: usize, wait: bool) -> Option<bool> {
        let owner = &self.parties[peer];
        let before = owner.rows();
        let bundle = owner.device.prekey_bundle().expect("a bundle from a sound store");
        owner.after_bundle(&before);
        let party = &self.parties[index];
        let named: Vec<Message> = party.unreadable.iter().filter(|m| m.from == peer).cloned().collect();
        let wires: Vec<Vec<u8>> = named.iter().map(|m| m.bytes.clone()).collect();
        let before = party.rows();
        let awaiting = party.device.awaiting_resends(&owner.address).expect("a record from a sound store");
        assert!(party.rows() == before, "awaiting_resends changed the store");
        assert!(awaiting <= MAX_AWAITED_RESENDS, "{awaiting} resends awaited");
        let result = party.device.heal(&bundle, &wires, UNIX_EPOCH + Duration::from_secs(self.now));
        party.after("heal", &before, &result);
        trace!(
            "heal {index} with {peer} at {} naming {} (awaiting {awaiting}): {:?}",
            self.now,
            wires.len(),
            result.as_ref().map(|h| matches!(h, Heal::Sent(_))).map_err(DeviceError::kind)
        );
        match result {
            Ok(Heal::Sent(reset)) => {
                assert!(reset.to == owner.address, "a reset to another address");
                let ids: BTreeSet<MessageId> = named.iter().map(|m| message_id(&m.bytes)).collect();
                let any_resend = named.iter().any(|m| m.carries == Carries::Control);
                let originals = &self.originals;
                let party = &mut self.parties[index];
                party.unreadable.retain(|m| m.from != peer);
                for (app, delivery) in &mut party.history.delivered {
                    let original = &originals[app];
                    if original.from == peer && (any_resend || ids.contains(&original.first_id)) {
                        delivery.named_since = true;
                    }
                }
                self.post(Message {
                    carries: Carries::Control,
                    from: index,
                    to: peer,
                    bytes: reset.message,
                    tampered: false,
                });
                Some(true)
            }
            Ok(Heal::TooSoon { retry_at }) => {
                assert!(party.rows() == before, "a heal refused as too soon wrote");
                let retry_at = retry_at.duration_since(UNIX_EPOCH).expect("a time after the epoch").as_secs();
                assert!(
                    self.now < retry_at && retry_at <= self.now + RESET_INTERVAL,
                    "a heal at {} refused until {retry_at}",
                    self.now
                );
                if wait {
                    self.now = retry_at;
                    let retried = self.heal(index, peer, false);
                    assert!(retried != Some(false), "a heal at the time TooSoon gave is refused again");
                    if retried == Some(true) {
                        // And one more at once is too soon, whatever it names.
                        let party = &self.parties[index];
                        let before = party.rows();
                        let again = party.device.heal(&bundle, &[], UNIX_EPOCH + Duration::from_secs(self.now));
                        assert!(matches!(again, Ok(Heal::TooSoon { .. })), "a second heal at once: {again:?}");
                        assert!(party.rows() == before, "a heal refused as too soon wrote");
                    }
                }
                Some(false)
            }
            Ok(other) => panic!("heal: {other:?}"),
            Err(error) => {
                assert_session_error("heal", &error);
                None
            }
        }
    }

    /// A sender's app acknowledges a message its peer committed (a receipt
    /// with the id the peer read it under); with no receipt yet, an id its
    /// outbox does not hold.
    fn acknowledge(&mut self, which: u8) {
        let (sender, receiver, id) = if self.receipts.is_empty() {
            let sender = usize::from(which) % PARTIES.len();
            (sender, (sender + 1) % PARTIES.len(), message_id(&[which]))
        } else {
            self.receipts[usize::from(which) % self.receipts.len()]
        };
        let party = &self.parties[sender];
        let peer = &self.parties[receiver].address;
        let held = party.outbox_len(peer);
        let before = party.rows();
        let result = party.device.acknowledge(peer, &[id]);
        party.after("acknowledge", &before, &result);
        let gone = result.expect("an acknowledgement on a sound store");
        trace!("acknowledge at {sender} for {receiver}: {gone} of {held}");
        assert!(gone <= 1, "one id acknowledged {gone} entries");
        assert_eq!(party.outbox_len(peer), held - gone, "an acknowledgement and the outbox's length");
        if gone == 0 {
            assert!(party.rows() == before, "an acknowledgement that removed nothing wrote");
        }
    }

    fn restore(&mut self, index: usize, which: u8) {
        let party = &mut self.parties[index];
        if party.snapshots.is_empty() {
            return;
        }
        let (rows, history) = party.snapshots[usize::from(which) % party.snapshots.len()].clone();
        party.backend = store_of(&rows);
        party.device = open(party.backend.clone(), &party.storage_key, "a restored store opens");
        assert!(party.rows() == rows, "opening a restored store changed it");
        party.history = history;
        party.restored = true;
        party.forgot_before = self.next_id;
        // The app is restored with its store: what it meant to name, it forgot.
        party.unreadable.clear();
    }

    fn restart(&mut self, index: usize) {
        let party = &mut self.parties[index];
        let before = party.rows();
        party.device = open(party.backend.clone(), &party.storage_key, "a store opens again");
        assert!(party.rows() == before, "opening a store changed it");
    }

    fn start_session(&mut self, from: usize, to: usize, which: u8) {
        let stale: Vec<&Vec<u8>> = self.bundles.iter().filter(|(owner, _)| *owner == to).map(|(_, b)| b).collect();
        let bundle = if which < 160 || stale.is_empty() {
            let party = &self.parties[to];
            let before = party.rows();
            let bundle = party.device.prekey_bundle().expect("a bundle from a sound store");
            party.after_bundle(&before);
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
        let result = party.device.refill_prekeys(target, target, UNIX_EPOCH + Duration::from_secs(self.now));
        party.after("refill_prekeys", &before, &result);
        result.expect("a refill within the limits");
        let before = party.rows();
        let result =
            party.device.rotate_prekeys(UNIX_EPOCH + Duration::from_secs(self.now), Duration::from_secs(4 * 3_600));
        party.after("rotate_prekeys", &before, &result);
        result.expect("a rotation");
    }
}
