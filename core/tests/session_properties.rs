#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
//! Property tests of sessions over random initiation orders between two
//! devices, Alice and Bob: either may start a session at any time (also while
//! one exists, also both at once), messages are sent, delivered in any order,
//! lost, replayed, and both sides reload their records and prekeys. Every
//! operation is checked against a model that predicts its exact outcome; at
//! the end, everything in flight arrives and a few exchanges must make both
//! sides converge on one session.
//!
//! The model includes the rules of archived states (PROTOCOL.md 9.9, 9.10):
//! an archived state decrypts only on the receiving chains it has, except
//! our initiation that the peer had not answered, which takes the DH step of
//! its first answer; it becomes current again only by the rules of
//! [`World::promotes`]. When a party's current state takes a DH step on a
//! message from the other, every other state it holds keeps only the message
//! keys it had derived and not used (a state with none is dropped), and those
//! decrypt only their own messages, with no promotion; kept keys expire after
//! `MAX_KEPT_STATE_HEALS` heals.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use chacha20::ChaCha20Rng;
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use samizdat::{
    DecryptError, PreKeyKind, SessionError,
    address::Address,
    keys::{IdentityKeyPair, X25519PublicKey},
    limits::{MAX_ARCHIVED_STATES, MAX_KEPT_STATE_HEALS, MAX_RECEIVING_CHAINS},
    prekeys::{ConsumedPreKeys, PqPreKeyKind, PreKeyBundle, PreKeySet},
    session::SessionRecord,
    wire::Message,
};
use support::rng;

/// The longest schedule.
const MAX_OPS: usize = 60;

/// One-time prekeys of each kind per device: few, so that they run out and
/// later bundles fall back to the last-resort ML-KEM key.
const ONE_TIME_PREKEYS: usize = 3;

/// Initiations per schedule beyond this many are skipped, so that no state is
/// ever archived away: with the (at most two) initiations of the final
/// exchanges, a record never holds more than `MAX_ARCHIVED_STATES + 1` states.
const MAX_INITIATIONS: usize = 8;
const _: () = assert!(MAX_INITIATIONS + 2 <= MAX_ARCHIVED_STATES + 1);

/// Exchanges after the schedule within which both sides must use the same session.
const MAX_EXCHANGES: usize = 10;

/// New sessions a peer may start, in the exchanges after the schedule, on a
/// message it could not decrypt.
const MAX_RECOVERIES: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Party {
    Alice,
    Bob,
}

impl Party {
    fn index(self) -> usize {
        match self {
            Self::Alice => 0,
            Self::Bob => 1,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Alice => Self::Bob,
            Self::Bob => Self::Alice,
        }
    }
}

/// A position in a list of any length, as `proptest::sample::Index` picks
/// one (a fixed-point fraction of the length), but constructible, so that
/// a failing schedule can be kept as a test.
#[derive(Debug, Clone, Copy)]
struct Index(usize);

impl Index {
    fn index(self, len: usize) -> usize {
        ((self.0 as u128 * len as u128) >> usize::BITS) as usize
    }
}

fn any_index() -> impl Strategy<Value = Index> {
    any::<usize>().prop_map(Index)
}

/// Which message in flight is delivered.
#[derive(Debug, Clone)]
enum Pick {
    /// Any of them.
    Any(Index),
    /// The one sent last, so that conversations move on to new chains while
    /// older messages stay in flight.
    Newest,
}

#[derive(Debug, Clone)]
enum Op {
    /// `who` fetches the other's bundle and starts a new session.
    Initiate(Party),
    /// `who` encrypts a fresh plaintext and puts it in flight.
    Send(Party),
    /// A message in flight (either way) arrives.
    Deliver(Pick),
    /// A message already delivered arrives again.
    Replay(Index),
    /// A message in flight is lost.
    Drop(Index),
    /// `who` stores and restores its record and its prekeys.
    Reload(Party),
    /// A turn of conversation: the newest message in flight towards `who`
    /// arrives, then `who` sends. Moves sessions on to new chains quickly,
    /// while older messages stay in flight.
    Turn(Party),
}

fn party() -> impl Strategy<Value = Party> {
    prop_oneof![Just(Party::Alice), Just(Party::Bob)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => party().prop_map(Op::Initiate),
        6 => party().prop_map(Op::Send),
        4 => any_index().prop_map(|i| Op::Deliver(Pick::Any(i))),
        2 => Just(Op::Deliver(Pick::Newest)),
        2 => any_index().prop_map(Op::Replay),
        1 => any_index().prop_map(Op::Drop),
        1 => party().prop_map(Op::Reload),
        1 => party().prop_map(Op::Turn),
    ]
}

/// A conversation: 1 to 6 rounds of turns, started by either party.
fn conversation() -> impl Strategy<Value = Vec<Op>> {
    (party(), 1..=6usize)
        .prop_map(|(first, rounds)| (0..rounds).flat_map(|_| [Op::Turn(first), Op::Turn(first.other())]).collect())
}

/// A seed for the devices' generator and 1 to `MAX_OPS - 1` operations:
/// single random ones mixed with conversations, so that schedules both
/// reorder freely and move sessions on through many chains.
fn schedule() -> impl Strategy<Value = (u64, Vec<Op>)> {
    let chunk = prop_oneof![8 => op().prop_map(|op| vec![op]), 1 => conversation()];
    let ops = proptest::collection::vec(chunk, 1..MAX_OPS).prop_map(|chunks| {
        let mut ops: Vec<Op> = chunks.into_iter().flatten().collect();
        ops.truncate(MAX_OPS - 1);
        ops
    });
    (any::<u64>(), ops)
}

/// A device with its identity, its prekeys, and its record for the other device.
struct Device {
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    address: Address,
    record: SessionRecord,
}

impl Device {
    /// The device and the ids of its one-time prekeys (X25519, ML-KEM).
    fn new(rng: &mut ChaCha20Rng, name: &str) -> (Self, Vec<u32>, Vec<u32>) {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH + Duration::from_secs(1_000));
        let (one_time, pq_one_time) = prekeys
            .add_one_time_prekeys(rng, &identity, ONE_TIME_PREKEYS, UNIX_EPOCH + Duration::from_secs(1_000))
            .unwrap();
        let device = Self { identity, prekeys, address: Address::new(name, 1).unwrap(), record: SessionRecord::new() };
        (device, one_time, pq_one_time)
    }

    /// The bundle as a server would serve it: encoded, then parsed and verified.
    fn bundle(&self) -> PreKeyBundle {
        PreKeyBundle::from_bytes(&self.prekeys.bundle(&self.identity, &self.address).unwrap().to_bytes()).unwrap()
    }
}

/// What the model knows about one party.
struct PartyModel {
    /// The session its record encrypts with.
    current: Option<usize>,
    /// How many times its current state took a DH step on a message from
    /// the other party (each time the other states were cut).
    heals: u64,
    /// Its one-time prekeys not yet consumed.
    one_time: BTreeSet<u32>,
    pq_one_time: BTreeSet<u32>,
    /// The id of its last-resort ML-KEM key, once a bundle offered it.
    last_resort: Option<u32>,
}

/// One session, as the model knows it. Both sides' states of a session have
/// the same base key.
struct Session {
    base_key: X25519PublicKey,
    /// The responder's signed prekey its handshake named.
    signed_prekey_id: u32,
    initiator: Party,
    /// The responder's one-time prekeys its handshake named.
    one_time: Option<u32>,
    pq_one_time: Option<u32>,
    /// Per party: what its record holds of this session.
    held: [Held; 2],
    /// Per party: whether its record ever held a state of this session.
    ever_held: [bool; 2],
    /// Per party: the highest of the peer's sending chains it decrypted a
    /// message of. Chains are numbered from 0 on each side: the initiator's
    /// chain `n + 1` starts when it receives the responder's chain `n`, the
    /// responder's chain `n` when it receives the initiator's chain `n`.
    highest: [Option<u32>; 2],
    /// Messages sent per (party, chain).
    sent_on_chain: HashMap<(Party, u32), u32>,
    /// Per party: whether its full state was displaced by a new session of
    /// the other party's while it was current and had heard from it (it may
    /// then still step, and a step makes it current again), until a cut.
    displaced: [bool; 2],
    /// Per party: whether its state came back (was promoted) since its last
    /// heal; rules 5 and 6 bring a state back only once between heals.
    came_back: [bool; 2],
    /// Per party: whether its state, current, replaced a state that had heard
    /// from the other party when it was installed (a new session of the
    /// other's), and has not stepped on a message of the other's since: its
    /// messages carry the left-answered flag (PROTOCOL.md 4.4, 9.9).
    left_answered: [bool; 2],
    /// Per party: whether its state, current, is its initiation that became
    /// current on the other's first answer with the flag, until its next heal
    /// or until it leaves `current`: rule 6 does not leave it.
    followed: [bool; 2],
}

impl Session {
    /// The chain `party` sends on.
    fn sending_chain(&self, party: Party) -> u32 {
        let highest = self.highest[party.index()];
        if party == self.initiator {
            highest.map_or(0, |h| h + 1)
        } else {
            highest.expect("a responder holds a state only once it received")
        }
    }

    /// Whether `party` still sends prekey messages on this session: until the
    /// initiator decrypts a reply.
    fn sends_prekey_messages(&self, party: Party) -> bool {
        party == self.initiator && self.highest[party.index()].is_none()
    }
}

/// What a party's record holds of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// Nothing (never, or dropped).
    No,
    /// A full state.
    Full,
    /// A state cut down at heal `since`, with the keys of these messages of
    /// the other party, as `(chain, counter)`.
    Kept { since: u64, keys: BTreeSet<(u32, u32)> },
}

impl Held {
    fn any(&self) -> bool {
        *self != Self::No
    }
}

/// A message that was encrypted, with what the model knows about it.
struct Sent {
    from: Party,
    session: usize,
    chain: u32,
    counter: u32,
    /// Whether its header carries the left-answered flag.
    left_answered: bool,
    plaintext: Vec<u8>,
    bytes: Vec<u8>,
}

/// What a delivery must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A prekey message that starts the session on the receiver.
    NewSession,
    /// A message of a session the receiver holds.
    Existing,
    /// A message that already decrypted.
    Duplicate { counter: u32 },
    /// A prekey message naming a one-time prekey another session consumed first.
    UnknownOneTime(u32),
    /// The same, for a one-time ML-KEM prekey (the model allows it, but the
    /// two kinds are always offered and consumed together, so the X25519 key
    /// is always reported first).
    UnknownPq(u32),
    /// A message on a sending chain the receiver no longer keeps
    /// ([`MAX_RECEIVING_CHAINS`]), or of a state the receiver cut without
    /// its key, or dropped: it cannot be told from a forgery.
    Stale,
    /// A prekey message whose state the receiver dropped: its base key is
    /// remembered.
    DuplicatePreKey,
    /// A message decrypted with a key an archived state kept when it was
    /// cut: no promotion.
    Kept,
}

impl Expect {
    fn decrypts(self) -> bool {
        matches!(self, Self::NewSession | Self::Existing | Self::Kept)
    }

    fn error(self) -> Option<SessionError> {
        match self {
            Self::NewSession | Self::Existing | Self::Kept => None,
            Self::DuplicatePreKey => Some(SessionError::DuplicatePreKeyMessage),
            Self::Duplicate { counter } => Some(SessionError::Decrypt(DecryptError::Duplicate { counter })),
            Self::UnknownOneTime(id) => Some(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, id }),
            Self::UnknownPq(id) => Some(SessionError::UnknownPreKey { kind: PreKeyKind::Pq, id }),
            Self::Stale => Some(SessionError::Decrypt(DecryptError::NoMatchingState)),
        }
    }
}

/// How often each outcome happened, to check the schedules exercise them all.
#[derive(Debug, Default, Clone)]
struct Stats {
    initiations: usize,
    /// Initiations while the other side's current session was one it had
    /// initiated and that this side does not hold: both initiated at once.
    simultaneous: usize,
    /// Initiations whose bundle named the same one-time prekey as an earlier
    /// initiation still undelivered.
    same_one_time_prekey: usize,
    skipped_initiations: usize,
    sent: usize,
    prekey_messages: usize,
    no_session_sends: usize,
    new_sessions: usize,
    existing: usize,
    /// Decryptions on an archived state, which became current again.
    promoted: usize,
    /// Decryptions on an archived full state, which stayed archived.
    archived_decryptions: usize,
    /// Heals that cut or dropped at least one other state.
    cuts: usize,
    /// States dropped at a heal (no key to keep) or once their kept keys were used or expired.
    dropped: usize,
    /// Decryptions with a key an archived state kept when it was cut.
    kept_decryptions: usize,
    /// Deliveries of a prekey message whose state the receiver had dropped.
    duplicate_prekey: usize,
    unknown_prekey: usize,
    stale: usize,
    replayed_duplicates: usize,
    replayed_stale: usize,
    replayed_unknown_prekey: usize,
    /// Replay operations (not the final replays) of a message whose chain the
    /// receiver no longer keeps: `NoMatchingState`, not `Duplicate`.
    stale_replay_ops: usize,
    drops: usize,
    reloads: usize,
    most_states: usize,
    /// The most sending chains one side of a session used.
    most_chains: u32,
    /// Final exchanges whose first message went to a session the peer can never
    /// start (its one-time prekey was consumed by another session).
    dead_sessions_in_exchanges: usize,
    /// Final exchanges whose first message went to a session the peer had cut or dropped.
    cut_sessions_in_exchanges: usize,
    /// New sessions started in the final exchanges by a peer that could not decrypt.
    recoveries: usize,
    initiations_in_exchanges: usize,
    /// Schedules that needed this many exchanges to converge (index 0 unused).
    exchanges_to_converge: [usize; MAX_EXCHANGES + 1],
    /// Schedules whose records had converged before the exchanges.
    converged_before_exchanges: usize,
    schedules: usize,
    schedules_with_a_decryption: usize,
}

impl Stats {
    fn add(&mut self, other: &Self) {
        self.initiations += other.initiations;
        self.simultaneous += other.simultaneous;
        self.same_one_time_prekey += other.same_one_time_prekey;
        self.skipped_initiations += other.skipped_initiations;
        self.sent += other.sent;
        self.prekey_messages += other.prekey_messages;
        self.no_session_sends += other.no_session_sends;
        self.new_sessions += other.new_sessions;
        self.existing += other.existing;
        self.promoted += other.promoted;
        self.archived_decryptions += other.archived_decryptions;
        self.cuts += other.cuts;
        self.dropped += other.dropped;
        self.kept_decryptions += other.kept_decryptions;
        self.duplicate_prekey += other.duplicate_prekey;
        self.unknown_prekey += other.unknown_prekey;
        self.stale += other.stale;
        self.replayed_duplicates += other.replayed_duplicates;
        self.replayed_stale += other.replayed_stale;
        self.replayed_unknown_prekey += other.replayed_unknown_prekey;
        self.stale_replay_ops += other.stale_replay_ops;
        self.drops += other.drops;
        self.reloads += other.reloads;
        self.most_states = self.most_states.max(other.most_states);
        self.most_chains = self.most_chains.max(other.most_chains);
        self.dead_sessions_in_exchanges += other.dead_sessions_in_exchanges;
        self.cut_sessions_in_exchanges += other.cut_sessions_in_exchanges;
        self.recoveries += other.recoveries;
        self.initiations_in_exchanges += other.initiations_in_exchanges;
        for (total, n) in self.exchanges_to_converge.iter_mut().zip(other.exchanges_to_converge) {
            *total += n;
        }
        self.converged_before_exchanges += other.converged_before_exchanges;
        self.schedules += other.schedules;
        self.schedules_with_a_decryption += other.schedules_with_a_decryption;
    }
}

/// Both devices, the network between them, and the model.
struct World {
    rng: ChaCha20Rng,
    devices: [Device; 2],
    model: [PartyModel; 2],
    sessions: Vec<Session>,
    sent: Vec<Sent>,
    /// Ids of the messages in flight, either way.
    in_flight: Vec<usize>,
    /// Ids of the messages delivered at least once, in the order of their first delivery.
    delivered: Vec<usize>,
    /// Ids of the messages that decrypted.
    decrypted: HashSet<usize>,
    /// Every plaintext a decryption returned.
    plaintexts: HashSet<Vec<u8>>,
    next_sequence: [u32; 2],
    /// Initiations of the schedule so far (towards [`MAX_INITIATIONS`]).
    initiations: usize,
    stats: Stats,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = rng(seed);
        let (alice, alice_one_time, alice_pq) = Device::new(&mut rng, "alice");
        let (bob, bob_one_time, bob_pq) = Device::new(&mut rng, "bob");
        let model = |one_time: Vec<u32>, pq: Vec<u32>| PartyModel {
            current: None,
            heals: 0,
            one_time: one_time.into_iter().collect(),
            pq_one_time: pq.into_iter().collect(),
            last_resort: None,
        };
        Self {
            rng,
            devices: [alice, bob],
            model: [model(alice_one_time, alice_pq), model(bob_one_time, bob_pq)],
            sessions: Vec::new(),
            sent: Vec::new(),
            in_flight: Vec::new(),
            delivered: Vec::new(),
            decrypted: HashSet::new(),
            plaintexts: HashSet::new(),
            next_sequence: [0; 2],
            initiations: 0,
            stats: Stats { schedules: 1, ..Stats::default() },
        }
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        self.check_invariants()?;
        for (step, op) in ops.iter().enumerate() {
            self.apply(op).map_err(|e| TestCaseError::fail(format!("op {step} ({op:?}): {e}")))?;
            self.check_invariants().map_err(|e| TestCaseError::fail(format!("after op {step} ({op:?}): {e}")))?;
        }
        if !self.decrypted.is_empty() {
            self.stats.schedules_with_a_decryption = 1;
        }
        self.finish()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if std::env::var_os("SAMIZDAT_MODEL_TRACE").is_some() {
            eprintln!("op {op:?}  (currents: {:?})", self.model.iter().map(|m| m.current).collect::<Vec<_>>());
        }
        match *op {
            Op::Initiate(who) => {
                if self.initiations < MAX_INITIATIONS {
                    self.initiations += 1;
                    self.initiate(who)?;
                } else {
                    self.stats.skipped_initiations += 1;
                }
            }
            Op::Send(who) => {
                if let Some(id) = self.send(who)? {
                    self.in_flight.push(id);
                }
            }
            Op::Deliver(ref pick) => {
                if !self.in_flight.is_empty() {
                    let i = match pick {
                        Pick::Any(index) => index.index(self.in_flight.len()),
                        Pick::Newest => self.in_flight.len() - 1,
                    };
                    let id = self.in_flight.remove(i);
                    self.deliver(id)?;
                }
            }
            Op::Replay(index) => {
                if !self.delivered.is_empty() {
                    let id = self.delivered[index.index(self.delivered.len())];
                    let decrypted_before = self.decrypted.contains(&id);
                    let outcome = self.deliver(id)?;
                    if outcome == Expect::Stale {
                        self.stats.stale_replay_ops += 1;
                    }
                    // A message refused before (on an archived state that
                    // could not step) may decrypt once its state is current;
                    // one that decrypted never does again.
                    prop_assert!(!(decrypted_before && outcome.decrypts()), "replayed message {} decrypted again", id);
                    // Only the messages that once decrypted are replays in the
                    // strict sense: they are duplicates, or stale.
                    prop_assert!(
                        !decrypted_before
                            || matches!(outcome, Expect::Duplicate { .. } | Expect::Stale | Expect::DuplicatePreKey),
                        "replayed message {} expected {:?}",
                        id,
                        outcome
                    );
                }
            }
            Op::Drop(index) => {
                if !self.in_flight.is_empty() {
                    self.in_flight.remove(index.index(self.in_flight.len()));
                    self.stats.drops += 1;
                }
            }
            Op::Reload(who) => self.reload(who)?,
            Op::Turn(who) => {
                if let Some(i) = self.in_flight.iter().rposition(|&id| self.sent[id].from != who) {
                    let id = self.in_flight.remove(i);
                    self.deliver(id)?;
                }
                if let Some(id) = self.send(who)? {
                    self.in_flight.push(id);
                }
            }
        }
        Ok(())
    }

    /// `who` fetches the other's bundle and initiates.
    fn initiate(&mut self, who: Party) -> Result<(), TestCaseError> {
        let peer = who.other();
        let bundle = self.devices[peer.index()].bundle();
        // The bundle offers the lowest one-time prekeys left, else the last-resort key.
        let peer_model = &mut self.model[peer.index()];
        prop_assert_eq!(bundle.one_time_prekey_id(), peer_model.one_time.first().copied());
        let (pq_id, pq_kind) = bundle.pq_prekey();
        match peer_model.pq_one_time.first() {
            Some(&lowest) => prop_assert_eq!((pq_id, pq_kind), (lowest, PqPreKeyKind::OneTime)),
            None => {
                prop_assert_eq!(pq_kind, PqPreKeyKind::LastResort);
                prop_assert_eq!(*peer_model.last_resort.get_or_insert(pq_id), pq_id);
            }
        }
        let one_time = bundle.one_time_prekey_id();
        let pq_one_time = (pq_kind == PqPreKeyKind::OneTime).then_some(pq_id);

        // Statistics on the order of initiations.
        if let Some(current) = self.model[peer.index()].current {
            let s = &self.sessions[current];
            if s.initiator == peer && !s.ever_held[who.index()] {
                self.stats.simultaneous += 1;
            }
        }
        if one_time.is_some()
            && self.sessions.iter().any(|s| s.initiator == who && s.one_time == one_time && !s.ever_held[peer.index()])
        {
            self.stats.same_one_time_prekey += 1;
        }

        // The state it archives sends no more: no flag.
        if let Some(previous) = self.model[who.index()].current {
            self.sessions[previous].left_answered[who.index()] = false;
            self.sessions[previous].followed[who.index()] = false;
        }
        let device = &mut self.devices[who.index()];
        device.record.initiate(&mut self.rng, &device.identity, &device.address, &bundle).map_err(|e| fail(&e))?;
        let base_key = device.record.current_base_key().expect("a session after initiating");
        prop_assert!(self.sessions.iter().all(|s| s.base_key != base_key), "a base key was used twice");
        let mut held = [Held::No, Held::No];
        held[who.index()] = Held::Full;
        let mut ever_held = [false; 2];
        ever_held[who.index()] = true;
        self.sessions.push(Session {
            base_key,
            signed_prekey_id: bundle.signed_prekey_id(),
            initiator: who,
            one_time,
            pq_one_time,
            held,
            ever_held,
            highest: [None; 2],
            sent_on_chain: HashMap::new(),
            displaced: [false; 2],
            came_back: [false; 2],
            left_answered: [false; 2],
            followed: [false; 2],
        });
        self.model[who.index()].current = Some(self.sessions.len() - 1);
        self.stats.initiations += 1;
        Ok(())
    }

    /// `who` encrypts a fresh plaintext; returns the message's id, or `None`
    /// if `who` has no session (checked to be refused without change).
    fn send(&mut self, who: Party) -> Result<Option<usize>, TestCaseError> {
        let sequence = self.next_sequence[who.index()];
        self.next_sequence[who.index()] += 1;
        let plaintext = format!("{who:?} #{sequence}").into_bytes();
        let device = &mut self.devices[who.index()];
        let before = device.record.to_bytes();
        let result = device.record.encrypt(&mut self.rng, &plaintext);
        let Some(session) = self.model[who.index()].current else {
            prop_assert_eq!(result, Err(SessionError::NoSession));
            prop_assert!(*device.record.to_bytes() == *before, "a refused encryption changed the record");
            self.stats.no_session_sends += 1;
            return Ok(None);
        };
        let bytes = result.map_err(|e| fail(&e))?;
        let s = &mut self.sessions[session];
        let chain = s.sending_chain(who);
        self.stats.most_chains = self.stats.most_chains.max(chain + 1);
        let on_chain = s.sent_on_chain.entry((who, chain)).or_insert(0);
        let counter = *on_chain;
        *on_chain += 1;

        // The kind of message and its prekey header are as the model says.
        let message = Message::from_bytes(&bytes).map_err(|e| fail(&e))?;
        match message {
            Message::PreKey(prekey) => {
                prop_assert!(s.sends_prekey_messages(who), "{:?} sent a prekey message after a reply", who);
                let header = prekey.header();
                prop_assert_eq!(header.base_key(), s.base_key);
                prop_assert_eq!(header.identity_key(), self.devices[who.index()].identity.public_key());
                let (_, one_time, _) = header.prekey_ids();
                prop_assert_eq!(one_time, s.one_time);
                self.stats.prekey_messages += 1;
            }
            Message::Ratchet(_) => {
                prop_assert!(!s.sends_prekey_messages(who), "{:?} sent a ratchet message before a reply", who);
            }
        }

        let left_answered = s.left_answered[who.index()];
        self.sent.push(Sent { from: who, session, chain, counter, left_answered, plaintext, bytes });
        self.stats.sent += 1;
        Ok(Some(self.sent.len() - 1))
    }

    /// What delivering message `id` (again or for the first time) must do.
    fn expect(&self, id: usize) -> Result<Expect, TestCaseError> {
        let m = &self.sent[id];
        let to = m.from.other();
        let s = &self.sessions[m.session];
        let kept_chain = s.highest[to.index()].is_none_or(|h| h < m.chain + MAX_RECEIVING_CHAINS as u32);
        match &s.held[to.index()] {
            Held::Full => {
                let current = self.model[to.index()].current == Some(m.session);
                // A chain the state does not have yet: a DH step, which only
                // the current state and an unanswered initiation may take.
                let step = s.highest[to.index()].is_none_or(|h| m.chain > h);
                let unanswered = s.initiator == to && s.highest[to.index()].is_none();
                let displaced = s.displaced[to.index()];
                return Ok(if !kept_chain || (step && !current && !unanswered && !displaced) {
                    Expect::Stale
                } else if self.decrypted.contains(&id) {
                    Expect::Duplicate { counter: m.counter }
                } else {
                    Expect::Existing
                });
            }
            Held::Kept { keys, .. } => {
                return Ok(if keys.contains(&(m.chain, m.counter)) {
                    Expect::Kept
                } else if kept_chain && self.decrypted.contains(&id) {
                    Expect::Duplicate { counter: m.counter }
                } else {
                    Expect::Stale
                });
            }
            Held::No if s.ever_held[to.index()] => {
                // Dropped: a prekey message is recognised by its base key,
                // anything else no longer opens.
                let is_prekey = matches!(Message::from_bytes(&m.bytes), Ok(Message::PreKey(_)));
                return Ok(if is_prekey { Expect::DuplicatePreKey } else { Expect::Stale });
            }
            Held::No => {}
        }
        // Only the initiator's first messages can reach a party without the state.
        prop_assert!(m.from == s.initiator && m.chain == 0 && !self.decrypted.contains(&id), "model broken");
        let receiver = &self.model[to.index()];
        Ok(match (s.one_time, s.pq_one_time) {
            (Some(k), _) if !receiver.one_time.contains(&k) => Expect::UnknownOneTime(k),
            (_, Some(k)) if !receiver.pq_one_time.contains(&k) => Expect::UnknownPq(k),
            _ => Expect::NewSession,
        })
    }

    /// The keys `party`'s state of session `session` keeps when it is cut: on
    /// each receiving chain still kept, the counters below the chain's `Nr`
    /// that were derived and not used. A closed chain was closed at the
    /// sender's `PN` (all it sent on it); the newest chain ends at the
    /// highest counter received.
    fn kept_keys(&self, party: Party, session: usize) -> BTreeSet<(u32, u32)> {
        let s = &self.sessions[session];
        let Some(highest) = s.highest[party.index()] else { return BTreeSet::new() };
        let peer = party.other();
        let mut received: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for &id in &self.decrypted {
            let m = &self.sent[id];
            if m.session == session && m.from == peer {
                received.entry(m.chain).or_default().insert(m.counter);
            }
        }
        let mut keys = BTreeSet::new();
        for chain in highest.saturating_sub(MAX_RECEIVING_CHAINS as u32 - 1)..=highest {
            let got = received.get(&chain).cloned().unwrap_or_default();
            let mut next = got.last().map_or(0, |&n| n + 1);
            if chain < highest {
                next = next.max(s.sent_on_chain.get(&(peer, chain)).copied().unwrap_or(0));
            }
            keys.extend((0..next).filter(|n| !got.contains(n)).map(|n| (chain, n)));
        }
        keys
    }

    /// Whether `party`'s archived full state of `session`, decrypting a
    /// message (with a prekey header if `prekey`, with a DH step if `step`),
    /// becomes current (PROTOCOL.md 9.10), the model's own statement of the
    /// rules: without a current state, yes. An unanswered initiation of
    /// `party`'s: while the current state is one too, if it is the later of
    /// the two or the current one offered the same one-time prekey;
    /// otherwise if the message is a step with the left-answered flag (the
    /// other party left for it a session on which it had heard from
    /// `party`), or if its base key is the smaller. Nothing else while the
    /// current state is an unanswered initiation. A state displaced by a new
    /// session, on a DH step, unless it came back since the last heal (the
    /// current one is then displaced in turn). A session the other party initiated and sent on
    /// only on its first chain, on a message with a prekey header, unless it
    /// came back since the last heal. Any other, not displaced, if its base
    /// key is the smaller, unless the current session is one the other party
    /// initiated and `party` has not answered yet.
    /// Returns whether it does, and whether by rule 4 (the state it leaves is
    /// then displaced in turn).
    fn promotes(&self, party: Party, session: usize, prekey: bool, step: bool, left: bool) -> (bool, bool) {
        let (plain, back) = ((true, false), (true, true));
        let no = (false, false);
        let Some(current) = self.model[party.index()].current else { return plain };
        let unanswered = |s: &Session| s.initiator == party && s.highest[party.index()].is_none();
        let (s, c) = (&self.sessions[session], &self.sessions[current]);
        let smaller = s.base_key.as_bytes() < c.base_key.as_bytes();
        if unanswered(s) {
            if !unanswered(c) {
                return (left && step || smaller, false);
            }
            let dead = c.one_time.is_some() && c.one_time == s.one_time;
            return (dead || session > current, false);
        }
        if unanswered(c) {
            return no;
        }
        if s.displaced[party.index()] && step && !s.came_back[party.index()] {
            return back;
        }
        // A session chosen over an answered one by the flag (sent, or
        // followed): rule 6 does not leave it (rule 5 may).
        let chosen = c.left_answered[party.index()] || c.followed[party.index()];
        let answered = s.sent_on_chain.get(&(party, 0)).copied().unwrap_or(0) > 0;
        if prekey
            && s.initiator != party
            && s.highest[party.index()] == Some(0)
            && !s.came_back[party.index()]
            && !(c.followed[party.index()] && answered)
        {
            return plain;
        }
        let owes = c.initiator != party
            && c.highest[party.index()] == Some(0)
            && c.sent_on_chain.get(&(party, 0)).copied().unwrap_or(0) == 0;
        // Not a state a new session of the other party's displaced: only
        // rule 4 brings that back (PROTOCOL.md 20.6).
        (!owes && !chosen && !s.displaced[party.index()] && smaller, false)
    }

    /// `party`'s current state took a DH step: every other state it holds is
    /// cut down to its kept keys (dropped if none), and kept keys that are
    /// `MAX_KEPT_STATE_HEALS` heals old are dropped.
    fn heal(&mut self, party: Party) {
        let model = &mut self.model[party.index()];
        model.heals += 1;
        let (heals, current) = (model.heals, model.current);
        if let Some(current) = current {
            self.sessions[current].came_back[party.index()] = false;
            self.sessions[current].left_answered[party.index()] = false;
            self.sessions[current].followed[party.index()] = false;
        }
        let mut changed = false;
        for session in 0..self.sessions.len() {
            if Some(session) == current {
                continue;
            }
            let held = match &self.sessions[session].held[party.index()] {
                Held::No => continue,
                Held::Full => {
                    let keys = self.kept_keys(party, session);
                    if keys.is_empty() { Held::No } else { Held::Kept { since: heals, keys } }
                }
                Held::Kept { since, keys } => {
                    if heals - since >= MAX_KEPT_STATE_HEALS {
                        Held::No
                    } else {
                        Held::Kept { since: *since, keys: keys.clone() }
                    }
                }
            };
            if held == Held::No {
                self.stats.dropped += 1;
            }
            self.sessions[session].displaced[party.index()] = false;
            changed = true;
            self.sessions[session].held[party.index()] = held;
        }
        if changed {
            self.stats.cuts += 1;
        }
    }

    /// Delivers message `id`: decrypt, delete the consumed prekeys, commit.
    /// Checks the outcome against the model and returns it.
    fn deliver(&mut self, id: usize) -> Result<Expect, TestCaseError> {
        let expected = self.expect(id)?;
        if std::env::var_os("SAMIZDAT_MODEL_TRACE").is_some() {
            let m = &self.sent[id];
            eprintln!(
                "  deliver {id} from {:?} session {} chain {} counter {} (flag {}): {expected:?}  (currents: {:?})",
                m.from,
                m.session,
                m.chain,
                m.counter,
                m.left_answered,
                self.model.iter().map(|m| m.current).collect::<Vec<_>>()
            );
        }
        let first_time = !self.delivered.contains(&id);
        if first_time {
            self.delivered.push(id);
        }
        let m = &self.sent[id];
        let (to, from) = (m.from.other(), m.from);
        let sender_identity = self.devices[from.index()].identity.public_key();
        let s = &self.sessions[m.session];
        let expected_consumed = if expected == Expect::NewSession {
            // Without a one-time X25519 prekey the base key is remembered too.
            ConsumedPreKeys {
                one_time: s.one_time,
                pq_one_time: s.pq_one_time,
                base_key: s.one_time.is_none().then_some((s.signed_prekey_id, s.base_key)),
            }
        } else {
            ConsumedPreKeys::default()
        };
        let context = || {
            format!(
                "message {id} from {from:?} (session {}, chain {}, counter {}), first time {first_time}, expected {expected:?}",
                m.session, m.chain, m.counter
            )
        };

        let from_address = self.devices[from.index()].address.clone();
        let device = &mut self.devices[to.index()];
        let record_before = device.record.to_bytes();
        let prekeys_before = device.prekeys.to_bytes();
        let result = device.record.decrypt(
            &mut self.rng,
            &device.identity,
            &device.address,
            &from_address,
            &device.prekeys,
            &m.bytes,
        );
        match (expected.error(), result) {
            (None, Ok(pending)) => {
                prop_assert_eq!(pending.plaintext(), &m.plaintext[..], "{}", context());
                prop_assert_eq!(pending.is_new_session(), expected == Expect::NewSession, "{}", context());
                prop_assert_eq!(pending.sender_identity(), sender_identity, "{}", context());
                prop_assert_eq!(pending.consumed_prekeys(), expected_consumed, "{}", context());
                let plaintext = pending.plaintext().to_vec();
                device.prekeys.consume(&pending.consumed_prekeys());
                device.record.commit(pending).map_err(|e| fail(&e))?;
                prop_assert!(self.plaintexts.insert(plaintext), "a plaintext was returned twice: {}", context());
                self.decrypted.insert(id);

                let was_current = self.model[to.index()].current == Some(m.session);
                let prekey = matches!(Message::from_bytes(&m.bytes), Ok(Message::PreKey(_)));
                let step_here = self.sessions[m.session].highest[to.index()].is_none_or(|h| m.chain > h);
                let was_unanswered =
                    self.sessions[m.session].initiator == to && self.sessions[m.session].highest[to.index()].is_none();
                let (promoted, back) = if expected == Expect::Existing && !was_current {
                    self.promotes(to, m.session, prekey, step_here, m.left_answered)
                } else {
                    (false, false)
                };
                let s = &mut self.sessions[m.session];
                if expected == Expect::Kept {
                    // A kept key: used up, no promotion, no DH step.
                    if let Held::Kept { keys, .. } = &mut s.held[to.index()] {
                        keys.remove(&(m.chain, m.counter));
                        if keys.is_empty() {
                            s.held[to.index()] = Held::No;
                            self.stats.dropped += 1;
                        }
                    }
                    self.stats.kept_decryptions += 1;
                    return Ok(expected);
                }
                let highest = &mut s.highest[to.index()];
                let steps = highest.is_none_or(|h| m.chain > h);
                *highest = Some(highest.map_or(m.chain, |h| h.max(m.chain)));
                if expected == Expect::NewSession {
                    // The state it replaces may still step until a cut, if it
                    // had heard from the other party.
                    let mut left_answered = false;
                    if let Some(previous) = self.model[to.index()].current {
                        let p = &mut self.sessions[previous];
                        p.displaced[to.index()] = p.highest[to.index()].is_some();
                        p.left_answered[to.index()] = false;
                        p.followed[to.index()] = false;
                        // Not for the other's initiation `to` never answered.
                        let owed = p.initiator != to
                            && p.highest[to.index()] == Some(0)
                            && p.sent_on_chain.get(&(to, 0)).copied().unwrap_or(0) == 0;
                        left_answered = p.displaced[to.index()] && !owed;
                    }
                    let s = &mut self.sessions[m.session];
                    s.left_answered[to.index()] = left_answered;
                    s.held[to.index()] = Held::Full;
                    s.ever_held[to.index()] = true;
                    let receiver = &mut self.model[to.index()];
                    if let Some(k) = s.one_time {
                        receiver.one_time.remove(&k);
                    }
                    if let Some(k) = s.pq_one_time {
                        receiver.pq_one_time.remove(&k);
                    }
                    self.stats.new_sessions += 1;
                    self.model[to.index()].current = Some(m.session);
                } else {
                    if promoted {
                        self.stats.promoted += 1;
                        if let Some(previous) = self.model[to.index()].current {
                            let p = &mut self.sessions[previous];
                            // Rule 4: the state it leaves is displaced in turn
                            // (unless it is an unanswered initiation).
                            p.displaced[to.index()] = back && p.highest[to.index()].is_some();
                            p.left_answered[to.index()] = false;
                            p.followed[to.index()] = false;
                        }
                        // Our initiation, followed on a flagged first answer.
                        self.sessions[m.session].followed[to.index()] = was_unanswered && m.left_answered && step_here;
                        self.sessions[m.session].displaced[to.index()] = false;
                        self.sessions[m.session].came_back[to.index()] = true;
                        self.model[to.index()].current = Some(m.session);
                    } else if !was_current {
                        self.stats.archived_decryptions += 1;
                    }
                    self.stats.existing += 1;
                }
                if was_current && steps && expected == Expect::Existing {
                    self.heal(to);
                }
            }
            (Some(error), Err(actual)) => {
                prop_assert_eq!(actual, error, "{}", context());
                prop_assert!(*device.record.to_bytes() == *record_before, "a failed decryption changed the record");
                prop_assert!(*device.prekeys.to_bytes() == *prekeys_before, "a failed decryption changed the prekeys");
                match (expected, first_time) {
                    (Expect::UnknownOneTime(_) | Expect::UnknownPq(_), true) => self.stats.unknown_prekey += 1,
                    (Expect::UnknownOneTime(_) | Expect::UnknownPq(_), false) => {
                        self.stats.replayed_unknown_prekey += 1;
                    }
                    (Expect::Stale, true) => self.stats.stale += 1,
                    (Expect::Stale, false) => self.stats.replayed_stale += 1,
                    (Expect::Duplicate { .. }, _) => self.stats.replayed_duplicates += 1,
                    (Expect::DuplicatePreKey, _) => self.stats.duplicate_prekey += 1,
                    _ => {}
                }
            }
            (None, Err(actual)) => prop_assert!(false, "failed with {:?}: {}", actual, context()),
            (Some(_), Ok(pending)) => {
                prop_assert!(false, "decrypted (new session: {}): {}", pending.is_new_session(), context());
            }
        }
        Ok(expected)
    }

    /// `who` stores and restores its record and prekeys, which must re-serialize identically.
    fn reload(&mut self, who: Party) -> Result<(), TestCaseError> {
        let device = &mut self.devices[who.index()];
        let bytes = device.record.to_bytes();
        let record = SessionRecord::from_bytes(&bytes).map_err(|e| fail(&e))?;
        prop_assert!(*record.to_bytes() == *bytes, "the record re-serializes differently");
        device.record = record;
        let bytes = device.prekeys.to_bytes();
        let prekeys = PreKeySet::from_bytes(&bytes).map_err(|e| fail(&e))?;
        prop_assert!(*prekeys.to_bytes() == *bytes, "the prekey set re-serializes differently");
        device.prekeys = prekeys;
        self.stats.reloads += 1;
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        for party in [Party::Alice, Party::Bob] {
            let device = &self.devices[party.index()];
            let model = &self.model[party.index()];
            let record = &device.record;
            let held = self.sessions.iter().filter(|s| s.held[party.index()].any()).count();
            let kept = self.sessions.iter().filter(|s| matches!(s.held[party.index()], Held::Kept { .. })).count();
            prop_assert_eq!(record.kept_states(), kept, "{:?}'s kept states", party);
            prop_assert_eq!(record.has_session(), model.current.is_some(), "{:?}", party);
            prop_assert_eq!(
                record.current_base_key(),
                model.current.map(|s| self.sessions[s].base_key),
                "{:?}'s current session",
                party
            );
            prop_assert_eq!(record.archived_states(), held.saturating_sub(1), "{:?}'s archived states", party);
            prop_assert!(record.archived_states() <= MAX_ARCHIVED_STATES);
            let peer_identity = self.devices[party.other().index()].identity.public_key();
            prop_assert_eq!(record.trusted_identity(), (held > 0).then_some(peer_identity));
            prop_assert_eq!(device.prekeys.one_time_counts(), (model.one_time.len(), model.pq_one_time.len()));
            self.stats.most_states = self.stats.most_states.max(held);
        }
        Ok(())
    }

    /// Everything in flight arrives; then Alice and Bob take turns sending one
    /// message each (starting a session first if they have none), which must
    /// make them converge on one session within [`MAX_EXCHANGES`] exchanges.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for id in std::mem::take(&mut self.in_flight) {
            self.deliver(id).map_err(|e| TestCaseError::fail(format!("delivering what is in flight: {e}")))?;
            self.check_invariants()?;
        }
        if self.converged() {
            self.stats.converged_before_exchanges += 1;
        }
        let mut converged_at = None;
        let mut recoveries = 0;
        for exchange in 1..=MAX_EXCHANGES {
            for (index, who) in [Party::Alice, Party::Bob].into_iter().enumerate() {
                if !self.devices[who.index()].record.has_session() {
                    self.initiate(who)?;
                    self.stats.initiations_in_exchanges += 1;
                }
                let id = self.send(who)?.expect("a session to send with");
                let outcome = self
                    .deliver(id)
                    .map_err(|e| TestCaseError::fail(format!("exchange {exchange}, message from {who:?}: {e}")))?;
                if !outcome.decrypts() {
                    // The legitimate failures: the message goes to a session
                    // the peer can never start, its one-time prekey having
                    // been consumed by another of the sender's sessions; or
                    // to a session the peer cut without a key for it (its
                    // prekey message is then a duplicate) or dropped.
                    prop_assert!(
                        matches!(outcome, Expect::UnknownOneTime(_) | Expect::DuplicatePreKey | Expect::Stale),
                        "exchange {}, message from {:?} did not decrypt: {:?}",
                        exchange,
                        who,
                        outcome
                    );
                    if matches!(outcome, Expect::UnknownOneTime(_)) {
                        self.stats.dead_sessions_in_exchanges += 1;
                    } else {
                        self.stats.cut_sessions_in_exchanges += 1;
                    }
                    // On the first message, the peer's reply moves the sender
                    // to a live session. After that, the peer that could not
                    // decrypt starts a new session from the sender's bundle:
                    // the recovery of DESIGN.md §6, which session healing
                    // automates. It is needed only when the sender's session
                    // is one the peer cut and the peer's own is dead (PROTOCOL.md
                    // 16.3).
                    if exchange > 1 || index > 0 {
                        prop_assert!(recoveries < MAX_RECOVERIES, "more than {} recoveries", MAX_RECOVERIES);
                        recoveries += 1;
                        self.stats.recoveries += 1;
                        if std::env::var_os("SAMIZDAT_MODEL_TRACE").is_some() {
                            eprintln!("recovery: {who:?}'s message did not decrypt: {outcome:?}");
                        }
                        self.initiate(who.other())?;
                    }
                }
                self.check_invariants()?;
            }
            if self.converged() {
                converged_at.get_or_insert(exchange);
                // Two more exchanges, to see it lasts.
                if exchange >= converged_at.unwrap_or(exchange) + 2 {
                    break;
                }
            } else {
                prop_assert!(converged_at.is_none(), "diverged again after converging at exchange {:?}", converged_at);
            }
        }
        let Some(exchanges) = converged_at else {
            return Err(TestCaseError::fail(format!("not converged after {MAX_EXCHANGES} exchanges")));
        };
        self.stats.exchanges_to_converge[exchanges] += 1;
        // Every message delivered once more: nothing decrypts again.
        for id in self.delivered.clone() {
            let decrypted_before = self.decrypted.contains(&id);
            let outcome = self.deliver(id)?;
            prop_assert!(!(decrypted_before && outcome.decrypts()), "message {} decrypted again", id);
        }
        self.check_invariants()
    }

    fn converged(&self) -> bool {
        let [a, b] = &self.devices;
        a.record.current_base_key().is_some() && a.record.current_base_key() == b.record.current_base_key()
    }
}

fn fail(error: &dyn std::fmt::Debug) -> TestCaseError {
    TestCaseError::fail(format!("unexpected error {error:?}"))
}

fn run_schedule(seed: u64, ops: &[Op]) -> Result<Stats, TestCaseError> {
    if std::env::var_os("SAMIZDAT_MODEL_TRACE").is_some() {
        eprintln!("=== schedule: seed {seed}, {} ops", ops.len());
    }
    let mut world = World::new(seed);
    world.run(ops)?;
    Ok(world.stats)
}

/// `cases` per property, or `PROPTEST_CASES` if set (for longer runs). A
/// failing case is printed minimised, not persisted.
///
/// The schedules come from a fixed seed unless `SAMIZDAT_RANDOM_SCHEDULES`
/// is set, so that the test command is reproducible: a failure found by a
/// random seed is kept as a fixed test (as
/// [`regression_three_initiations_then_a_crossed_turn_converge`] was, one
/// schedule in about 2,000 before the header's left-answered flag). Set the
/// variable (with a large `PROPTEST_CASES`) to explore.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    let rng_seed = if std::env::var_os("SAMIZDAT_RANDOM_SCHEDULES").is_some() {
        proptest::test_runner::RngSeed::Random
    } else {
        proptest::test_runner::RngSeed::Fixed(0x5a31_2026)
    };
    ProptestConfig { cases, failure_persistence: None, rng_seed, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(256))]

    /// Random orders of initiations (simultaneous ones included), sends,
    /// deliveries in any order, losses, replays and reloads: every outcome is
    /// the model's, every plaintext is returned once, failures change nothing,
    /// and both sides converge on one session afterwards.
    #[test]
    fn random_initiation_orders_follow_the_model((seed, ops) in schedule()) {
        run_schedule(seed, &ops)?;
    }
}

/// The schedules of [`random_initiation_orders_follow_the_model`] are not
/// vacuous: over 200 fixed schedules, every outcome the model distinguishes
/// happens (the counts are printed).
#[test]
fn random_initiation_orders_reach_every_outcome() {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = schedule();
    let mut total = Stats::default();
    for _ in 0..200 {
        let (seed, ops) = strategy.new_tree(&mut runner).unwrap().current();
        match run_schedule(seed, &ops) {
            Ok(stats) => total.add(&stats),
            Err(error) => panic!("schedule failed: {error}\nseed {seed}, ops {ops:?}"),
        }
    }
    println!("{total:#?}");

    assert!(total.schedules_with_a_decryption * 10 >= total.schedules * 7, "{total:#?}");
    assert!(total.simultaneous > 0, "{total:#?}");
    assert!(total.same_one_time_prekey > 0, "{total:#?}");
    assert!(total.unknown_prekey > 0, "{total:#?}");
    assert!(total.no_session_sends > 0, "{total:#?}");
    assert!(total.new_sessions > 0, "{total:#?}");
    assert!(total.promoted > 0, "{total:#?}");
    assert!(total.archived_decryptions > 0, "{total:#?}");
    assert!(total.cuts > 0, "{total:#?}");
    assert!(total.dropped > 0, "{total:#?}");
    assert!(total.kept_decryptions > 0, "{total:#?}");
    // A new session after a failure is the exception: needed only when a
    // cut session meets a dead one.
    assert!(total.recoveries * 50 <= total.schedules, "{total:#?}");
    assert!(total.replayed_duplicates > 0, "{total:#?}");
    assert!(total.replayed_unknown_prekey > 0, "{total:#?}");
    assert!(total.reloads > 0, "{total:#?}");
    assert!(total.drops > 0, "{total:#?}");
    assert!(total.dead_sessions_in_exchanges > 0, "{total:#?}");
    assert!(total.stale > 0, "{total:#?}");
    assert!(total.stale_replay_ops > 0, "{total:#?}");
    assert!(total.most_chains > MAX_RECEIVING_CHAINS as u32 + 1, "{total:#?}");
    assert!(total.most_states > 4, "{total:#?}");
}

/// A schedule the random property failed on (a clean-checkout CI run, then
/// `PROPTEST_CASES=3000`). Bob initiates N, receives Alice's initiation S
/// and answers it; Alice receives the answer, then Bob's older N, which
/// displaces S (it may be a reset). Before the fix Bob kept S by rule 2 (its
/// base key is the smaller) while Alice kept N, and S could come back only
/// by a DH step of Bob's, which Bob never took (Alice no longer sent on S):
/// each side read the other on a different session, and neither session
/// stepped again. Now Alice's messages on N carry the header's
/// left-answered flag (she replaced S, which had heard from Bob), and Bob's
/// unanswered N follows it on its first answer (PROTOCOL.md 9.9).
#[test]
fn regression_three_initiations_then_a_crossed_turn_converge() {
    use Op::*;
    use Party::*;
    let ops = [
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Bob),
        Initiate(Alice),
        Send(Bob),
        Send(Alice),
        Turn(Bob),
        Deliver(Pick::Any(Index(9_223_372_036_854_775_808))),
    ];
    if let Err(error) = run_schedule(1_718_189_304_444_255_151, &ops) {
        panic!("{error}");
    }
}

/// A schedule the random property failed on after the left-answered flag
/// (`SAMIZDAT_RANDOM_SCHEDULES=1 PROPTEST_CASES=50000`, after 39,019 passing
/// schedules).
#[test]
fn regression_two_initiations_of_bob_after_a_conversation_converge() {
    use Op::*;
    use Party::*;
    let ops = [
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Turn(Alice),
        Turn(Bob),
        Turn(Alice),
        Turn(Bob),
        Send(Alice),
        Turn(Bob),
        Send(Alice),
        Initiate(Bob),
        Send(Alice),
        Turn(Alice),
        Send(Bob),
        Initiate(Bob),
        Deliver(Pick::Newest),
        Send(Alice),
        Deliver(Pick::Any(Index(11_068_046_444_225_730_970))),
        Deliver(Pick::Any(Index(13_835_058_055_282_163_712))),
    ];
    if let Err(error) = run_schedule(5_431_334_084_410_791_782, &ops) {
        panic!("{error}");
    }
}

/// A schedule the random property failed on once rules 5 and 6 stopped
/// leaving a state chosen by the flag (`SAMIZDAT_RANDOM_SCHEDULES=1`, after
/// 2,780 passing schedules).
#[test]
fn regression_many_initiations_of_alice_with_replays_converge() {
    use Op::*;
    use Party::*;
    let ops = [
        Initiate(Alice),
        Turn(Alice),
        Turn(Bob),
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Send(Alice),
        Send(Alice),
        Send(Alice),
        Send(Alice),
        Deliver(Pick::Any(Index(3_689_348_814_741_910_324))),
        Send(Alice),
        Send(Alice),
        Initiate(Alice),
        Send(Alice),
        Send(Alice),
        Send(Alice),
        Send(Alice),
        Send(Alice),
        Turn(Alice),
        Turn(Bob),
        Turn(Alice),
        Turn(Bob),
        Send(Alice),
        Send(Alice),
        Initiate(Alice),
        Send(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Replay(Index(0)),
        Replay(Index(0)),
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Replay(Index(0)),
        Initiate(Alice),
        Initiate(Alice),
        Send(Alice),
        Deliver(Pick::Newest),
    ];
    if let Err(error) = run_schedule(0, &ops) {
        panic!("{error}");
    }
}

/// A schedule the random property failed on after the flag stopped being
/// set for an initiation never answered (`SAMIZDAT_RANDOM_SCHEDULES=1`,
/// after 38,673 passing schedules).
#[test]
fn regression_two_initiations_of_bob_crossing_alices_converge() {
    use Op::*;
    use Party::*;
    let ops = [
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Send(Alice),
        Deliver(Pick::Any(Index(0))),
        Initiate(Alice),
        Send(Alice),
        Send(Alice),
        Send(Bob),
        Deliver(Pick::Any(Index(0))),
        Initiate(Alice),
        Send(Bob),
        Send(Alice),
        Deliver(Pick::Newest),
        Initiate(Bob),
        Initiate(Bob),
        Initiate(Alice),
        Send(Bob),
        Send(Alice),
        Send(Alice),
        Deliver(Pick::Any(Index(9_223_372_036_854_775_808))),
    ];
    if let Err(error) = run_schedule(0, &ops) {
        panic!("{error}");
    }
}

/// A schedule the random property failed on (`SAMIZDAT_RANDOM_SCHEDULES=1`,
/// after 7,679 passing schedules): an open bug, older than the left-answered
/// flag (it fails the same way on e30b0cc). Bob and Alice had converged on
/// Bob's session 4 when Alice's very old second prekey message of session 0
/// (which Bob had answered long before) arrives: rule 5 brings Bob's state
/// of session 0 back, Bob sends on its old chain, Alice reads it on an
/// archived state without stepping, and neither session steps again. The
/// same class as the audit's finding in `audit_flag.rs` (PROTOCOL.md 9.9,
/// "Still open").
#[test]
#[ignore = "open bug: a late prekey message of a session we answered long ago brings it back by rule 5 (also on e30b0cc)"]
fn regression_three_initiations_of_bob_with_late_deliveries_converge() {
    use Op::*;
    use Party::*;
    let ops = [
        Initiate(Alice),
        Send(Alice),
        Send(Alice),
        Initiate(Alice),
        Deliver(Pick::Any(Index(0))),
        Send(Bob),
        Deliver(Pick::Any(Index(9_223_372_036_854_775_808))),
        Initiate(Bob),
        Send(Bob),
        Initiate(Bob),
        Send(Alice),
        Deliver(Pick::Any(Index(6_148_914_691_236_517_206))),
        Deliver(Pick::Newest),
        Initiate(Bob),
        Send(Alice),
        Send(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Send(Bob),
        Initiate(Bob),
        Deliver(Pick::Any(Index(13_835_058_055_282_163_712))),
        Turn(Bob),
        Turn(Alice),
        Deliver(Pick::Any(Index(12_297_829_382_473_034_411))),
        Deliver(Pick::Any(Index(0))),
    ];
    if let Err(error) = run_schedule(1_765_316_766_924_139_084, &ops) {
        panic!("{error}");
    }
}

/// Found by the random search after the rule-5 fix of the flagged case
/// (one schedule in 21,160 of an 80,000-schedule run): many initiations of
/// Alice's, late deliveries, and no flag involved.
#[test]
#[ignore = "open bug: same class as regression_three_initiations_of_bob_with_late_deliveries_converge (PROTOCOL.md 9.9, Still open)"]
fn regression_many_initiations_of_alice_with_late_deliveries_converge() {
    use Op::*;
    use Party::*;
    let ops = [
        Initiate(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Send(Alice),
        Send(Alice),
        Send(Alice),
        Turn(Bob),
        Send(Alice),
        Send(Alice),
        Send(Bob),
        Initiate(Bob),
        Deliver(Pick::Any(Index(6_148_914_691_236_517_206))),
        Send(Bob),
        Send(Bob),
        Send(Alice),
        Deliver(Pick::Newest),
        Initiate(Bob),
        Send(Alice),
        Deliver(Pick::Any(Index(11_529_215_046_068_469_760))),
        Deliver(Pick::Any(Index(15_811_494_920_322_472_814))),
        Initiate(Alice),
        Send(Alice),
        Initiate(Alice),
        Initiate(Alice),
        Turn(Bob),
        Deliver(Pick::Any(Index(15_811_494_920_322_472_814))),
        Initiate(Alice),
        Initiate(Alice),
    ];
    if let Err(error) = run_schedule(3_223_780_653_961_624_949, &ops) {
        panic!("{error}");
    }
}
