#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Property tests of the Double Ratchet over random schedules of sends,
//! deliveries, losses, duplicates, forgeries and reloads between Alice (the
//! initiator) and Bob (the responder), checked against a model of what each
//! message must do; plus parsers fed arbitrary and corrupted bytes.

mod support;

use std::collections::{HashMap, HashSet};

use chacha20::ChaCha20Rng;
use proptest::{
    prelude::*,
    sample::Index,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use samizdat::{
    DecryptError, EncryptError,
    keys::X25519PublicKey,
    limits::{MAX_RECEIVING_CHAINS, MAX_SKIP, MAX_STORED_SKIPPED_KEYS},
    ratchet::DoubleRatchet,
    wire::{RatchetMessage, WIRE_VERSION},
};
use support::{pair, reload, rng};

/// The longest schedule: far too short to reach [`MAX_SKIP`] or
/// [`MAX_STORED_SKIPPED_KEYS`], whatever the schedule.
const MAX_OPS: usize = 120;
const _: () = assert!(MAX_OPS < MAX_SKIP as usize && MAX_OPS < MAX_STORED_SKIPPED_KEYS);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn tag(self) -> u8 {
        match self {
            Self::Alice => b'A',
            Self::Bob => b'B',
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `from` encrypts a fresh plaintext with `len` filler bytes and puts it in flight.
    Send { from: Party, len: usize },
    /// One of the messages in flight towards `to` is delivered (for the first time).
    Deliver { to: Party, pick: Pick },
    /// One of the messages in flight (either way) is lost for ever.
    Drop { index: Index },
    /// One of the messages already delivered to `to` is delivered again.
    Duplicate { to: Party, index: Index },
    /// One bit of the encoding of a message in flight towards `to` is flipped;
    /// the original stays in flight.
    Tamper { to: Party, index: Index, bit: Index },
    /// `who` is serialized and restored.
    Reload { who: Party },
}

fn party() -> impl Strategy<Value = Party> {
    prop_oneof![Just(Party::Alice), Just(Party::Bob)]
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

impl Pick {
    fn index(&self, len: usize) -> usize {
        match self {
            Self::Any(index) => index.index(len),
            Self::Newest => len - 1,
        }
    }
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![any::<Index>().prop_map(Pick::Any), Just(Pick::Newest)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (party(), 0usize..300).prop_map(|(from, len)| Op::Send { from, len }),
        8 => (party(), pick()).prop_map(|(to, pick)| Op::Deliver { to, pick }),
        1 => any::<Index>().prop_map(|index| Op::Drop { index }),
        1 => (party(), any::<Index>()).prop_map(|(to, index)| Op::Duplicate { to, index }),
        1 => (party(), any::<Index>(), any::<Index>()).prop_map(|(to, index, bit)| Op::Tamper { to, index, bit }),
        1 => party().prop_map(|who| Op::Reload { who }),
    ]
}

/// A turn of conversation: one of the messages in flight towards `who`
/// arrives (mostly the other party's latest, which moves the conversation on
/// to a new chain), then `who` sends a few messages.
fn turn() -> impl Strategy<Value = Vec<Op>> {
    let pick = prop_oneof![1 => any::<Index>().prop_map(Pick::Any), 3 => Just(Pick::Newest)];
    (party(), pick, proptest::collection::vec(0usize..300, 1..4)).prop_map(|(who, pick, lens)| {
        let mut ops = vec![Op::Deliver { to: who, pick }];
        ops.extend(lens.into_iter().map(|len| Op::Send { from: who, len }));
        ops
    })
}

/// A seed and 1 to `MAX_OPS - 1` operations: single random ones mixed with
/// turns, so that schedules both reorder freely and go through many chains.
fn schedule() -> impl Strategy<Value = (u64, Vec<Op>)> {
    schedule_of(1..MAX_OPS)
}

/// A seed and `chunks` single operations or turns, at most `MAX_OPS - 1` operations.
fn schedule_of(chunks: std::ops::Range<usize>) -> impl Strategy<Value = (u64, Vec<Op>)> {
    let chunk = prop_oneof![3 => op().prop_map(|op| vec![op]), 2 => turn()];
    let ops = proptest::collection::vec(chunk, chunks).prop_map(|chunks| {
        let mut ops: Vec<Op> = chunks.into_iter().flatten().collect();
        ops.truncate(MAX_OPS - 1);
        ops
    });
    (any::<u64>(), ops)
}

/// A message that was encrypted, with what the model knows about it.
struct Sent {
    to: Party,
    /// The sender's ratchet public key when it encrypted: the chain's id.
    chain: X25519PublicKey,
    /// Its position on that chain.
    counter: u32,
    plaintext: Vec<u8>,
    message: RatchetMessage,
}

/// What the model knows about one party as a receiver.
#[derive(Default)]
struct Receiver {
    /// Every chain with at least one decrypted message, in the order they
    /// first decrypted (which is the order the peer started them).
    chains: Vec<X25519PublicKey>,
    /// Per chain: how many of its messages decrypted, and the highest counter among them.
    progress: HashMap<X25519PublicKey, (u32, u32)>,
    /// Every message delivered (by id into `World::sent`) and whether it decrypted.
    delivered: Vec<(usize, bool)>,
}

impl Receiver {
    /// The chains the library must still keep: the newest [`MAX_RECEIVING_CHAINS`].
    fn kept(&self) -> &[X25519PublicKey] {
        &self.chains[self.chains.len().saturating_sub(MAX_RECEIVING_CHAINS)..]
    }

    fn is_kept(&self, chain: &X25519PublicKey) -> bool {
        self.kept().contains(chain)
    }

    fn is_known(&self, chain: &X25519PublicKey) -> bool {
        self.chains.contains(chain)
    }
}

/// How often each outcome happened, to check the schedules exercise them all.
#[derive(Debug, Default, Clone)]
struct Stats {
    sent: usize,
    refused_sends: usize,
    decrypted: usize,
    new_chains: usize,
    out_of_order: usize,
    stale: usize,
    duplicates: usize,
    stale_duplicates: usize,
    forgeries: usize,
    reloads: usize,
    most_chains: usize,
    most_skipped: usize,
}

impl Stats {
    fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.refused_sends += other.refused_sends;
        self.decrypted += other.decrypted;
        self.new_chains += other.new_chains;
        self.out_of_order += other.out_of_order;
        self.stale += other.stale;
        self.duplicates += other.duplicates;
        self.stale_duplicates += other.stale_duplicates;
        self.forgeries += other.forgeries;
        self.reloads += other.reloads;
        self.most_chains = self.most_chains.max(other.most_chains);
        self.most_skipped = self.most_skipped.max(other.most_skipped);
    }
}

/// Both parties, the network between them, and the model.
struct World {
    rng: ChaCha20Rng,
    parties: [DoubleRatchet; 2],
    receivers: [Receiver; 2],
    sent: Vec<Sent>,
    /// How many messages each sending chain carried.
    sent_on_chain: HashMap<X25519PublicKey, u32>,
    next_sequence: [u32; 2],
    /// Ids of the messages in flight, either way.
    in_flight: Vec<usize>,
    /// Every plaintext a decryption returned.
    plaintexts: HashSet<Vec<u8>>,
    stats: Stats,
}

/// A plaintext no other message of the run has: sender, sequence number, filler.
fn plaintext(from: Party, sequence: u32, len: usize) -> Vec<u8> {
    let mut out = vec![from.tag()];
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend(std::iter::repeat_n(sequence.to_le_bytes()[0], len));
    out
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = rng(seed);
        let (alice, bob) = pair(&mut rng);
        Self {
            rng,
            parties: [alice, bob],
            receivers: [Receiver::default(), Receiver::default()],
            sent: Vec::new(),
            sent_on_chain: HashMap::new(),
            next_sequence: [0; 2],
            in_flight: Vec::new(),
            plaintexts: HashSet::new(),
            stats: Stats::default(),
        }
    }

    /// Runs `ops`, then delivers everything still in flight and replays
    /// everything delivered.
    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        self.run_ops(ops)?;
        self.finish()
    }

    fn run_ops(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        self.check_invariants()?;
        for op in ops {
            match *op {
                Op::Send { from, len } => self.send(from, len)?,
                Op::Deliver { to, ref pick } => {
                    let towards: Vec<usize> =
                        (0..self.in_flight.len()).filter(|&i| self.sent[self.in_flight[i]].to == to).collect();
                    if !towards.is_empty() {
                        let id = self.in_flight.remove(towards[pick.index(towards.len())]);
                        self.deliver(id, true)?;
                    }
                }
                Op::Drop { index } => {
                    if !self.in_flight.is_empty() {
                        self.in_flight.remove(index.index(self.in_flight.len()));
                    }
                }
                Op::Duplicate { to, index } => {
                    let delivered = &self.receivers[to.index()].delivered;
                    if !delivered.is_empty() {
                        let (id, _) = delivered[index.index(delivered.len())];
                        self.deliver(id, false)?;
                    }
                }
                Op::Tamper { to, index, bit } => {
                    let towards: Vec<usize> =
                        self.in_flight.iter().copied().filter(|&id| self.sent[id].to == to).collect();
                    if !towards.is_empty() {
                        self.tamper(towards[index.index(towards.len())], bit)?;
                    }
                }
                Op::Reload { who } => {
                    // `reload` checks that the restored state re-serializes identically.
                    self.parties[who.index()] = reload(&self.parties[who.index()]);
                    self.stats.reloads += 1;
                }
            }
            self.check_invariants()?;
        }
        Ok(())
    }

    /// Everything still in flight arrives at last, then everything delivered
    /// arrives again.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for id in std::mem::take(&mut self.in_flight) {
            self.deliver(id, true)?;
            self.check_invariants()?;
        }
        for to in [Party::Alice, Party::Bob] {
            let delivered: Vec<usize> = self.receivers[to.index()].delivered.iter().map(|&(id, _)| id).collect();
            for id in delivered {
                self.deliver(id, false)?;
            }
            self.check_invariants()?;
        }
        Ok(())
    }

    fn send(&mut self, from: Party, len: usize) -> Result<(), TestCaseError> {
        let to = from.other();
        let sequence = self.next_sequence[from.index()];
        let text = plaintext(from, sequence, len);
        // The responder can send once it has decrypted something.
        let can_send = from == Party::Alice || !self.receivers[from.index()].chains.is_empty();
        let state = &mut self.parties[from.index()];
        prop_assert_eq!(state.can_send(), can_send);
        let chain = state.ratchet_public_key();
        let before = state.to_bytes();
        match state.encrypt(&mut self.rng, &text) {
            Ok(message) => {
                prop_assert!(can_send, "{from:?} sent without a sending chain");
                prop_assert_eq!(state.ratchet_public_key(), chain);
                let on_chain = self.sent_on_chain.entry(chain).or_insert(0);
                let counter = *on_chain;
                *on_chain += 1;
                self.in_flight.push(self.sent.len());
                self.sent.push(Sent { to, chain, counter, plaintext: text, message });
                self.next_sequence[from.index()] += 1;
                self.stats.sent += 1;
            }
            Err(error) => {
                prop_assert!(!can_send, "{from:?} could not send: {error:?}");
                prop_assert_eq!(error, EncryptError::NoSendingChain);
                prop_assert!(*state.to_bytes() == *before, "a failed encryption changed the state");
                self.stats.refused_sends += 1;
            }
        }
        Ok(())
    }

    /// Delivers message `id`, for the first time or again, and checks the
    /// outcome against the model.
    fn deliver(&mut self, id: usize, first_time: bool) -> Result<(), TestCaseError> {
        let sent = &self.sent[id];
        let to = sent.to;
        let received = RatchetMessage::from_bytes(&sent.message.to_bytes());
        prop_assert_eq!(received.as_ref(), Ok(&sent.message));
        let received = received.unwrap();

        let receiver = &self.receivers[to.index()];
        let known = receiver.is_known(&sent.chain);
        let kept = receiver.is_kept(&sent.chain);
        let expected = if first_time {
            // A chain the receiver no longer keeps: no key of its opens the header.
            if kept || !known { Ok(sent.plaintext.clone()) } else { Err(DecryptError::NoMatchingState) }
        } else {
            let decrypted_before = receiver.delivered.iter().any(|&(d, ok)| d == id && ok);
            if decrypted_before && kept {
                Err(DecryptError::Duplicate { counter: sent.counter })
            } else {
                Err(DecryptError::NoMatchingState)
            }
        };

        let state = &mut self.parties[to.index()];
        let before = state.to_bytes();
        let result = state.decrypt(&mut self.rng, &received);
        prop_assert_eq!(
            &result,
            &expected,
            "message {} to {:?} (chain {} of {:?}, counter {}, first time: {})",
            id,
            to,
            receiver.chains.iter().position(|c| *c == sent.chain).map_or(-1, |p| p as i64),
            receiver.chains.len(),
            sent.counter,
            first_time
        );

        let receiver = &mut self.receivers[to.index()];
        match result {
            Ok(text) => {
                prop_assert!(self.plaintexts.insert(text), "a plaintext was delivered twice");
                if !known {
                    receiver.chains.push(sent.chain);
                    self.stats.new_chains += 1;
                }
                let progress = receiver.progress.entry(sent.chain).or_insert((0, 0));
                if progress.0 > 0 && sent.counter < progress.1 {
                    self.stats.out_of_order += 1;
                }
                progress.0 += 1;
                progress.1 = progress.1.max(sent.counter);
                receiver.delivered.push((id, true));
                self.stats.decrypted += 1;
            }
            Err(_) => {
                prop_assert!(*state.to_bytes() == *before, "a failed decryption changed the state");
                if first_time {
                    receiver.delivered.push((id, false));
                    self.stats.stale += 1;
                } else if kept {
                    self.stats.duplicates += 1;
                } else {
                    self.stats.stale_duplicates += 1;
                }
            }
        }
        Ok(())
    }

    /// Flips one bit of the encoding of message `id`: if the result still
    /// parses to a different message, it must not decrypt.
    fn tamper(&mut self, id: usize, bit: Index) -> Result<(), TestCaseError> {
        let sent = &self.sent[id];
        let mut bytes = sent.message.to_bytes();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let Ok(forged) = RatchetMessage::from_bytes(&bytes) else {
            return Ok(());
        };
        if forged == sent.message {
            return Ok(());
        }
        let state = &mut self.parties[sent.to.index()];
        let before = state.to_bytes();
        let result = state.decrypt(&mut self.rng, &forged);
        prop_assert!(result.is_err(), "flipping bit {bit} of message {id} still decrypted");
        prop_assert!(*state.to_bytes() == *before, "a forgery changed the state");
        self.stats.forgeries += 1;
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        for party in [Party::Alice, Party::Bob] {
            let state = &self.parties[party.index()];
            let receiver = &self.receivers[party.index()];
            prop_assert!(state.stored_skipped_keys() <= MAX_STORED_SKIPPED_KEYS);
            prop_assert!(state.receiving_chains() <= MAX_RECEIVING_CHAINS);
            prop_assert_eq!(state.receiving_chains(), receiver.kept().len(), "{:?}'s receiving chains", party);
            prop_assert_eq!(state.can_send(), party == Party::Alice || !receiver.chains.is_empty());
            // A skipped key is stored for every message not yet decrypted below
            // the end of a kept chain: for the current chain, the highest
            // counter decrypted; for a closed one, the sender's last message
            // on it (the `PN` of the sender's next chain).
            let kept = receiver.kept();
            let mut skipped = 0;
            for (i, chain) in kept.iter().enumerate() {
                let (decrypted, highest) = receiver.progress[chain];
                let end = if i + 1 == kept.len() { highest + 1 } else { self.sent_on_chain[chain] };
                skipped += (end - decrypted) as usize;
            }
            prop_assert_eq!(state.stored_skipped_keys(), skipped, "{:?}'s stored skipped keys", party);
            self.stats.most_chains = self.stats.most_chains.max(receiver.chains.len());
            self.stats.most_skipped = self.stats.most_skipped.max(skipped);
        }
        Ok(())
    }
}

fn run_schedule(seed: u64, ops: &[Op]) -> Result<Stats, TestCaseError> {
    let mut world = World::new(seed);
    world.run(ops)?;
    Ok(world.stats)
}

/// `cases` per property, or `PROPTEST_CASES` if set (for longer runs). A
/// failing case is printed minimised, not persisted.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Random schedules of sends, deliveries in any order, losses, duplicates,
    /// forgeries and reloads behave exactly as the model says.
    #[test]
    fn random_schedules_follow_the_model((seed, ops) in schedule()) {
        run_schedule(seed, &ops)?;
    }
}

/// The schedules of [`random_schedules_follow_the_model`] are not vacuous:
/// over a fixed sample, every outcome the model distinguishes happens.
#[test]
fn random_schedules_reach_every_outcome() {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = schedule();
    let mut total = Stats::default();
    for _ in 0..64 {
        let (seed, ops) = strategy.new_tree(&mut runner).unwrap().current();
        match run_schedule(seed, &ops) {
            Ok(stats) => total.add(&stats),
            Err(error) => panic!("schedule failed: {error}\nseed {seed}, ops {ops:?}"),
        }
    }
    println!("{total:?}");
    assert!(total.refused_sends > 0, "{total:?}");
    assert!(total.out_of_order > 0, "{total:?}");
    assert!(total.stale > 0, "{total:?}");
    assert!(total.duplicates > 0, "{total:?}");
    assert!(total.stale_duplicates > 0, "{total:?}");
    assert!(total.forgeries > 0, "{total:?}");
    assert!(total.reloads > 0, "{total:?}");
    assert!(total.most_chains > MAX_RECEIVING_CHAINS, "{total:?}");
}

#[derive(Debug, Clone)]
enum Resize {
    Keep,
    Truncate(Index),
    Extend(Vec<u8>),
}

fn resize() -> impl Strategy<Value = Resize> {
    prop_oneof![
        2 => Just(Resize::Keep),
        1 => any::<Index>().prop_map(Resize::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Resize::Extend),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary bytes never make a parser panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = DoubleRatchet::from_bytes(&bytes);
        let _ = RatchetMessage::from_bytes(&bytes);
        // Past the version byte, into the protobuf parser.
        let mut framed = vec![WIRE_VERSION];
        framed.extend_from_slice(&bytes);
        let _ = RatchetMessage::from_bytes(&framed);
    }

    /// A stored state with random bytes changed, cut short or extended never
    /// makes `from_bytes` panic; if it still parses, the state can be used and
    /// stored again.
    #[test]
    fn corrupted_states_never_panic(
        (seed, ops) in schedule_of(1..16),
        who in party(),
        mutations in proptest::collection::vec((any::<Index>(), 1..=255u8), 0..6),
        resize in resize(),
    ) {
        let mut world = World::new(seed);
        world.run_ops(&ops)?;
        // Every message ever sent to `who`: replays, and the ones lost or still in flight.
        let messages: Vec<RatchetMessage> =
            world.sent.iter().filter(|s| s.to == who).map(|s| s.message.clone()).collect();
        let mut bytes = world.parties[who.index()].to_bytes().to_vec();
        for (index, mask) in mutations {
            let i = index.index(bytes.len());
            bytes[i] ^= mask;
        }
        match resize {
            Resize::Keep => {}
            Resize::Truncate(index) => bytes.truncate(index.index(bytes.len())),
            Resize::Extend(tail) => bytes.extend_from_slice(&tail),
        }
        let Ok(mut state) = DoubleRatchet::from_bytes(&bytes) else {
            return Ok(());
        };
        // Whatever was accepted can be stored and restored exactly.
        let stored = state.to_bytes();
        let restored = DoubleRatchet::from_bytes(&stored);
        prop_assert!(restored.is_ok(), "an accepted state does not parse once re-serialized: {:?}", restored.err());
        prop_assert!(*restored.unwrap().to_bytes() == *stored, "an accepted state re-serializes differently");
        let _ = state.can_send();
        let _ = state.stored_skipped_keys();
        let _ = state.receiving_chains();
        for message in &messages {
            let _ = state.decrypt(&mut world.rng, message);
        }
        if let Ok(message) = state.encrypt(&mut world.rng, b"after corruption") {
            let peer = who.other();
            let _ = world.parties[peer.index()].decrypt(&mut world.rng, &message);
        }
    }
}
