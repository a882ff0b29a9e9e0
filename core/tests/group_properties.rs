#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
//! Property tests of groups over random schedules: 3 to 5 member devices
//! (memory stores, sessions between every two), random sends by random
//! members, delivery in any order, drops, duplicates, tampering, removals
//! and members added back. Every delivery is checked against a model that
//! predicts its exact outcome (PROTOCOL.md 18.5 to 18.7, as
//! `core/src/device/groups.rs` implements them): the plaintext, or
//! `MissingChain` with or without a request, `Duplicate`, `NotMember`,
//! `UnknownGroup`, a forgery; every `group_encrypt`'s distributions, chain
//! and iteration; every commit's answer.
//!
//! Besides the model, on every call:
//! - a group message decrypts only to the plaintext its sender sent, at
//!   most once per device, and only at a device that was in the sender's
//!   roster when it was sent: removed members read nothing sent after their
//!   removal, members added later nothing sent before;
//! - a refused message changes nothing in the store (every row of every
//!   table compared), but for the request a missing chain makes;
//! - a tampered message is refused.
//!
//! The network: a group message goes to every other device (also to
//! removed ones: the server may route it anyway); the distributions, the
//! requests and the answers to their recipients. Drops take group messages
//! and distributions (a request or an answer lost for good would spend the
//! bounded budget; the crash test covers that). The app holds a group
//! message whose chain is missing (without decrypting the later ones of
//! that chain again) and tries it again after a control message of its
//! sender, or when told to (`Retry`).
//!
//! At the end everything in flight arrives and held messages are retried
//! until nothing moves, then every member sends once more and that arrives
//! too. Every delivered message for a device entitled to it must then have
//! decrypted exactly once, or its loss be one the model explains (refused
//! because the sender was no longer a member there, or the recipient had
//! left; its chain rotated away before it was recovered; ...): those are
//! counted by cause, and [`random_schedules_reach_every_outcome`] prints
//! them. Three defects showed up, each now fixed and pinned by a
//! deterministic test at the end:
//! - a chain recovered by a request started at the iteration asked, so
//!   earlier messages of that chain that arrived later were lost, and
//!   refused as `Duplicate` though they never decrypted
//!   ([`a_recovered_chain_loses_earlier_messages_and_calls_them_duplicates`]);
//! - a device forgot a member's chains when it removed it; once the member
//!   was added back, an old chain of it that reached the device again (a
//!   delayed distribution or answer, or the answer of a member that kept its
//!   chain) was taken in from its old iteration, and replayed messages
//!   decrypted a second time
//!   ([`a_removed_member_s_old_chain_taken_again_opens_no_old_message`],
//!   [`a_member_added_back_without_a_new_chain_opens_no_old_message`]).
//!   The device now keeps each given-up chain's floor, and the model
//!   follows it: no message decrypts twice, except at a device that deleted
//!   the group and created it anew (a deletion forgets everything, the
//!   limitation PROTOCOL.md 18.12 names), counted apart;
//! - requests for chains that never come (a chain the sender rotated away
//!   from, or a forged chain id) stayed counted for good, so that after
//!   [`MAX_REQUESTED_CHAINS`] of them the member could never ask that
//!   sender again ([`requests_for_chains_that_never_come_block_every_later_request`]).
//!
//! `SAMIZDAT_MODEL_TRACE` prints every step.
//! `PROPTEST_CASES` sets the number of cases (for longer runs).

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use prost::Message as _;
use samizdat::{
    DecryptError,
    address::Address,
    device::{DeviceError, GroupError, MessageKind, PendingMessage},
    group::GroupMessage,
    limits::{
        MAX_CHAIN_FLOORS, MAX_GROUP_KEY_ANSWERS, MAX_GROUP_KEY_REQUESTS, MAX_GROUP_REQUESTS_PER_SENDER,
        MAX_REQUESTED_CHAINS, MAX_SENDER_CHAINS,
    },
    store::Table,
};
use samizdat_proto::wire as pb;
use support::group::{Got, World, address, missing_chain};

const G: &[u8] = b"g";

/// The longest schedule.
const MAX_OPS: usize = 64;

/// A choice among what there is (of any length): `pick % len`.
type Pick = u64;

fn index(pick: Pick, len: usize) -> usize {
    (pick % len as u64) as usize
}

/// What a tampering changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Iteration,
    Salt,
    Body,
    Signature,
    GroupId,
}

#[derive(Debug, Clone)]
enum Op {
    /// A current member sends a group message.
    Send(Pick),
    /// A message in flight arrives.
    Deliver(Pick),
    /// A message sent earlier arrives (again).
    Duplicate(Pick),
    /// A group message or a distribution in flight is lost.
    Drop(Pick),
    /// A copy of a message in flight arrives altered: a field of a group
    /// message, a bit of a one-to-one message.
    Tamper(Pick, Field, Pick, u8),
    /// A member is removed everywhere; it deletes the group, or keeps its
    /// state (and may still get messages).
    Remove(Pick, bool),
    /// A device that is not a member is added back.
    Readd(Pick),
    /// Every device tries its held messages again.
    Retry,
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Iteration),
        Just(Field::Salt),
        Just(Field::Body),
        Just(Field::Signature),
        Just(Field::GroupId)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<Pick>().prop_map(Op::Send),
        9 => any::<Pick>().prop_map(Op::Deliver),
        2 => any::<Pick>().prop_map(Op::Duplicate),
        2 => any::<Pick>().prop_map(Op::Drop),
        2 => (any::<Pick>(), field(), any::<Pick>(), any::<u8>()).prop_map(|(m, f, at, bit)| Op::Tamper(m, f, at, bit)),
        1 => (any::<Pick>(), any::<bool>()).prop_map(|(i, delete)| Op::Remove(i, delete)),
        1 => any::<Pick>().prop_map(Op::Readd),
        1 => Just(Op::Retry),
    ]
}

/// 3 to 5 devices and up to `MAX_OPS` operations.
fn schedule() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (3..=5usize, proptest::collection::vec(op(), 1..MAX_OPS))
}

// ------------------------------------------------------------------ the model

/// A member in a device's roster, as the device keeps it.
#[derive(Debug, Clone, Default)]
struct Member {
    has_chain: bool,
    given_at: u32,
    answered: u32,
    /// The last answer made to it: the chain it gives, its bytes.
    last_answer: Option<(u32, u32, Vec<u8>)>,
}

/// A device's own side of the group: its roster and its chain.
#[derive(Debug, Clone, Default)]
struct Own {
    roster: Vec<(usize, Member)>,
    /// The chain id and its next iteration.
    chain: Option<(u32, u32)>,
    distributed: bool,
}

/// A chain of a sender kept by a device.
#[derive(Debug, Clone)]
struct Kept {
    chain: u32,
    start: u32,
    decrypted: BTreeSet<u32>,
}

/// What a device keeps of one member (its member row).
#[derive(Debug, Clone, Default)]
struct Chains {
    chains: VecDeque<Kept>,
    /// Chains given up (evicted, or their sender removed), oldest first:
    /// (chain, the iteration below which nothing of it opens again).
    floors: VecDeque<(u32, u32)>,
    /// Chain ids asked for: how many new requests, the last one's bytes.
    requested: Vec<(u32, u32, Option<Vec<u8>>)>,
    /// Requests sent since the sender last proved itself.
    requests: u32,
}

impl Chains {
    fn find(&self, chain: u32) -> Option<&Kept> {
        self.chains.iter().find(|k| k.chain == chain)
    }

    /// Counts a request if the limits allow one.
    fn count_request(&mut self, chain: u32) -> bool {
        if self.requests >= MAX_GROUP_REQUESTS_PER_SENDER {
            return false;
        }
        if let Some((_, count, _)) = self.requested.iter_mut().find(|(c, _, _)| *c == chain) {
            if *count >= MAX_GROUP_KEY_REQUESTS {
                return false;
            }
            *count += 1;
            self.requests += 1;
            return true;
        }
        if self.requested.len() >= MAX_REQUESTED_CHAINS {
            self.requested.remove(0);
        }
        self.requested.push((chain, 1, None));
        self.requests += 1;
        true
    }

    /// Keeps the request just counted for `chain`.
    fn keep_request(&mut self, chain: u32, bytes: Vec<u8>) {
        if let Some((_, _, last)) = self.requested.iter_mut().find(|(c, _, _)| *c == chain) {
            *last = Some(bytes);
        }
    }

    /// The last request for `chain`, handed again when no new one may be made.
    fn last_request(&self, chain: u32) -> Option<&Vec<u8>> {
        self.requested.iter().find(|(c, _, _)| *c == chain)?.2.as_ref()
    }

    /// The sender proved itself: what was asked of it is settled.
    fn settle(&mut self) {
        self.requested.clear();
        self.requests = 0;
    }

    fn would_request(&self, chain: u32) -> bool {
        self.clone().count_request(chain)
    }

    /// Takes a chain in; returns the chain evicted, if any. A chain given
    /// up comes back from its floor if that is later.
    fn receive(&mut self, chain: u32, start: u32) -> Option<u32> {
        self.settle();
        if self.find(chain).is_some() {
            return None;
        }
        let mut start = start;
        if let Some(at) = self.floors.iter().position(|(c, _)| *c == chain) {
            let (_, floor) = self.floors.remove(at).unwrap();
            start = start.max(floor);
        }
        self.chains.push_back(Kept { chain, start, decrypted: BTreeSet::new() });
        if self.chains.len() <= MAX_SENDER_CHAINS {
            return None;
        }
        let evicted = self.chains.pop_front().unwrap();
        self.retire(&evicted);
        Some(evicted.chain)
    }

    /// Keeps the floor of a chain given up: the iteration after the last
    /// one it opened (or its start).
    fn retire(&mut self, kept: &Kept) {
        let floor = kept.decrypted.iter().next_back().map_or(kept.start, |last| (last + 1).max(kept.start));
        if let Some((_, f)) = self.floors.iter_mut().find(|(c, _)| *c == kept.chain) {
            *f = (*f).max(floor);
            return;
        }
        self.floors.push_back((kept.chain, floor));
        while self.floors.len() > MAX_CHAIN_FLOORS {
            self.floors.pop_front();
        }
    }

    /// The sender was removed: its chains are given up.
    fn retire_all(&mut self) {
        while let Some(kept) = self.chains.pop_front() {
            self.retire(&kept);
        }
        self.settle();
    }

    fn floor(&self, chain: u32) -> Option<u32> {
        self.floors.iter().filter(|(c, _)| *c == chain).map(|(_, f)| *f).max()
    }
}

/// What the model knows of one device.
#[derive(Debug, Clone, Default)]
struct Model {
    /// `None` when the device has no group.
    own: Option<Own>,
    /// Per member: its member row.
    kept: BTreeMap<usize, Chains>,
    /// Per member removed: the floors its row keeps.
    removed: BTreeMap<usize, Chains>,
}

impl Model {
    fn create(&mut self, members: &BTreeSet<usize>) {
        self.own = Some(Own {
            roster: members.iter().map(|&m| (m, Member::default())).collect(),
            chain: None,
            distributed: false,
        });
        self.kept = members.iter().map(|&m| (m, Chains::default())).collect();
        self.removed.clear();
    }

    fn add(&mut self, member: usize) {
        let own = self.own.as_mut().unwrap();
        if own.roster.iter().any(|(m, _)| *m == member) {
            return;
        }
        own.roster.push((member, Member::default()));
        own.distributed = false;
        let chains = self.removed.remove(&member).unwrap_or_default();
        self.kept.insert(member, chains);
    }

    fn remove(&mut self, member: usize) {
        let own = self.own.as_mut().unwrap();
        if !own.roster.iter().any(|(m, _)| *m == member) {
            return;
        }
        own.roster.retain(|(m, _)| *m != member);
        for (_, m) in &mut own.roster {
            *m = Member::default();
        }
        own.chain = None;
        own.distributed = false;
        let mut chains = self.kept.remove(&member).unwrap_or_default();
        chains.retire_all();
        self.removed.insert(member, chains);
    }

    fn roster(&self) -> BTreeSet<usize> {
        self.own.as_ref().map(|own| own.roster.iter().map(|(m, _)| *m).collect()).unwrap_or_default()
    }
}

/// What a sender does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A new answer: the chain and the iteration it gives.
    New(u32, u32),
    /// The last answer, handed again.
    Again(Vec<u8>),
}

/// The outcome of a group message's decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Plaintext,
    /// The chain is missing; whether a request was made.
    Missing(bool),
    Duplicate,
    NotMember,
    UnknownGroup,
    Forged,
}

fn outcome(result: &Result<PendingMessage, DeviceError>) -> Result<Outcome, TestCaseError> {
    Ok(match result {
        Ok(_) => Outcome::Plaintext,
        Err(DeviceError::Group(GroupError::MissingChain { request, .. })) => Outcome::Missing(request.is_some()),
        Err(DeviceError::Group(GroupError::Decrypt(DecryptError::Duplicate { .. }))) => Outcome::Duplicate,
        Err(DeviceError::Group(GroupError::NotMember)) => Outcome::NotMember,
        Err(DeviceError::Group(GroupError::UnknownGroup)) => Outcome::UnknownGroup,
        Err(DeviceError::Group(GroupError::Decrypt(DecryptError::Unauthenticated))) => Outcome::Forged,
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
    })
}

// ------------------------------------------------------------------ the world

/// A group message as sent (once for every recipient).
#[derive(Debug)]
struct Text {
    from: usize,
    plaintext: Vec<u8>,
    chain: u32,
    iteration: u32,
    /// The sender's roster when it was sent: the devices that may read it.
    entitled: BTreeSet<usize>,
    last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    Group {
        text: usize,
    },
    /// A chain, from `group_encrypt` or (`answer`) answering a request.
    Distribution {
        chain: u32,
        start: u32,
        answer: bool,
    },
    Request {
        chain: u32,
        iteration: u32,
    },
}

#[derive(Debug, Clone)]
struct Msg {
    id: usize,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    what: What,
}

/// What the schedules did, summed over them.
#[derive(Debug, Default)]
struct Stats {
    schedules: u64,
    sends: u64,
    distributions: u64,
    decrypted: u64,
    missing_with_request: u64,
    missing_without_request: u64,
    duplicates: u64,
    not_member: u64,
    unknown_group: u64,
    forged: u64,
    held_behind: u64,
    answers: u64,
    /// Answers handed again (past `MAX_GROUP_KEY_ANSWERS`).
    answers_again: u64,
    /// Requests handed again (past the request budgets).
    requests_again: u64,
    requests_unanswered: u64,
    pairwise_duplicates: u64,
    tampered_pairwise: u64,
    drops: u64,
    removals: u64,
    readds: u64,
    evicted_chains: u64,
    /// Chains a device took in again after giving them up (its sender
    /// removed and added back): they open nothing below their floor.
    retaken_chains: u64,
    /// Group messages decrypted again by a device that had deleted the group
    /// and created it anew (a deletion forgets what was read).
    decrypted_again_after_delete: u64,
    /// Delivered to an entitled device and never decrypted, by cause.
    lost: BTreeMap<&'static str, u64>,
    /// A member that could not read another member's last message, by cause.
    last_unread: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn add(&mut self, other: &Self) {
        self.schedules += other.schedules;
        self.sends += other.sends;
        self.distributions += other.distributions;
        self.decrypted += other.decrypted;
        self.missing_with_request += other.missing_with_request;
        self.missing_without_request += other.missing_without_request;
        self.duplicates += other.duplicates;
        self.not_member += other.not_member;
        self.unknown_group += other.unknown_group;
        self.forged += other.forged;
        self.held_behind += other.held_behind;
        self.answers += other.answers;
        self.answers_again += other.answers_again;
        self.requests_again += other.requests_again;
        self.requests_unanswered += other.requests_unanswered;
        self.pairwise_duplicates += other.pairwise_duplicates;
        self.tampered_pairwise += other.tampered_pairwise;
        self.drops += other.drops;
        self.removals += other.removals;
        self.readds += other.readds;
        self.evicted_chains += other.evicted_chains;
        self.retaken_chains += other.retaken_chains;
        self.decrypted_again_after_delete += other.decrypted_again_after_delete;
        for (k, v) in &other.lost {
            *self.lost.entry(k).or_insert(0) += v;
        }
        for (k, v) in &other.last_unread {
            *self.last_unread.entry(k).or_insert(0) += v;
        }
    }
}

struct Run {
    world: World,
    n: usize,
    /// The app's roster.
    members: BTreeSet<usize>,
    model: Vec<Model>,
    texts: Vec<Text>,
    flight: Vec<Msg>,
    /// Every message put in flight.
    sent: Vec<Msg>,
    /// One-to-one messages their recipient committed.
    consumed: BTreeSet<usize>,
    /// (text, device): decrypted / reached the device.
    decrypted: BTreeSet<(usize, usize)>,
    delivered: BTreeSet<(usize, usize)>,
    /// (text, device): what its last decryption there gave.
    last: BTreeMap<(usize, usize), Outcome>,
    /// (text, device): held when the device left the group (deleting it).
    left: BTreeSet<(usize, usize)>,
    /// Per device, the group messages waiting for their chain.
    held: Vec<Vec<Msg>>,
    /// (device, sender, chain) evicted past `MAX_SENDER_CHAINS`.
    evicted: BTreeSet<(usize, usize, u32)>,
    /// (device, sender, chain): every chain a device took in.
    taken: BTreeSet<(usize, usize, u32)>,
    /// Chains a device had taken in before it deleted the group, and those
    /// of them it took in again after creating it anew: a deletion forgets
    /// everything, so their old messages may decrypt again there (the known
    /// limitation of `Device::delete_group`, PROTOCOL.md 18.12).
    forgotten: BTreeSet<(usize, usize, u32)>,
    reopened: BTreeSet<(usize, usize, u32)>,
    /// Every chain id each device used.
    chains_used: Vec<BTreeSet<u32>>,
    stats: Stats,
}

/// Whether `SAMIZDAT_MODEL_TRACE` asks for every step to be printed.
fn trace() -> bool {
    std::env::var_os("SAMIZDAT_MODEL_TRACE").is_some()
}

fn fail(what: String) -> TestCaseError {
    TestCaseError::fail(what)
}

/// The bytes of `message` with `field` altered.
fn tamper_group(bytes: &[u8], field: Field, bit: u8) -> Vec<u8> {
    let envelope = pb::Envelope::decode(&bytes[1..]).unwrap();
    let Some(pb::envelope::Body::Group(mut group)) = envelope.body else { panic!("not a group message") };
    let flip = |bytes: &mut Vec<u8>| {
        let at = usize::from(bit) * 8 % (bytes.len() * 8);
        bytes[at / 8] ^= 1 << (at % 8);
    };
    match field {
        Field::Iteration => group.iteration ^= 1 << (bit % 32),
        Field::Salt => flip(&mut group.salt),
        Field::Body => flip(&mut group.body),
        Field::Signature => flip(&mut group.signature),
        Field::GroupId => flip(&mut group.group_id),
    }
    let mut out = vec![bytes[0]];
    pb::Envelope { body: Some(pb::envelope::Body::Group(group)) }.encode(&mut out).unwrap();
    out
}

impl Run {
    fn new(n: usize) -> Self {
        let world = World::new(n);
        let all: Vec<usize> = (0..n).collect();
        world.create(G, &all);
        let members: BTreeSet<usize> = all.iter().copied().collect();
        let model = (0..n)
            .map(|i| {
                let mut model = Model::default();
                model.create(&members.iter().copied().filter(|&m| m != i).collect());
                model
            })
            .collect();
        Self {
            world,
            n,
            members,
            model,
            texts: Vec::new(),
            flight: Vec::new(),
            sent: Vec::new(),
            consumed: BTreeSet::new(),
            decrypted: BTreeSet::new(),
            delivered: BTreeSet::new(),
            last: BTreeMap::new(),
            left: BTreeSet::new(),
            held: vec![Vec::new(); n],
            evicted: BTreeSet::new(),
            taken: BTreeSet::new(),
            forgotten: BTreeSet::new(),
            reopened: BTreeSet::new(),
            chains_used: vec![BTreeSet::new(); n],
            stats: Stats { schedules: 1, ..Stats::default() },
        }
    }

    fn put(&mut self, from: usize, to: usize, bytes: Vec<u8>, what: What) {
        // A request or an answer handed again: the same message, sent once
        // (a copy would be a duplicate to its recipient; duplicates are
        // delivered by `Op::Duplicate`).
        if self.sent.iter().any(|m| (m.from, m.to) == (from, to) && m.bytes == bytes) {
            return;
        }
        let message = Msg { id: self.sent.len(), from, to, bytes, what };
        self.sent.push(message.clone());
        self.flight.push(message);
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        for op in ops {
            self.op(op)?;
        }
        self.flush()?;
        // Every member speaks once more; it must reach every member.
        let speakers: Vec<usize> = self.members.iter().copied().collect();
        for from in speakers {
            self.send(from, true)?;
        }
        self.flush()?;
        self.check_losses()
    }

    fn op(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if trace() {
            eprintln!("== {op:?}");
        }
        match op {
            Op::Send(i) => {
                let members: Vec<usize> = self.members.iter().copied().collect();
                self.send(members[index(*i, members.len())], false)
            }
            Op::Deliver(i) => {
                if self.flight.is_empty() {
                    return Ok(());
                }
                let message = self.flight.remove(index(*i, self.flight.len()));
                self.deliver(&message, true)
            }
            Op::Duplicate(i) => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let message = self.sent[index(*i, self.sent.len())].clone();
                self.deliver(&message, true)
            }
            Op::Drop(i) => {
                if self.flight.is_empty() {
                    return Ok(());
                }
                let at = index(*i, self.flight.len());
                if matches!(self.flight[at].what, What::Group { .. } | What::Distribution { answer: false, .. }) {
                    self.flight.remove(at);
                    self.stats.drops += 1;
                }
                Ok(())
            }
            Op::Tamper(i, field, at, bit) => {
                if self.flight.is_empty() {
                    return Ok(());
                }
                let message = self.flight[index(*i, self.flight.len())].clone();
                self.tamper(&message, *field, index(*at, message.bytes.len() * 8), *bit)
            }
            Op::Remove(i, delete) => {
                if self.members.len() <= 2 {
                    return Ok(());
                }
                let members: Vec<usize> = self.members.iter().copied().collect();
                self.remove(members[index(*i, members.len())], *delete)
            }
            Op::Readd(i) => {
                let outside: Vec<usize> = (0..self.n).filter(|m| !self.members.contains(m)).collect();
                if outside.is_empty() {
                    return Ok(());
                }
                self.readd(outside[index(*i, outside.len())])
            }
            Op::Retry => {
                for m in 0..self.n {
                    self.retry_held(m, None)?;
                }
                Ok(())
            }
        }
    }

    /// `from` sends a group message: distributions exactly to the members
    /// that lack its chain, the chain it has (or a new one), the next iteration.
    fn send(&mut self, from: usize, last: bool) -> Result<(), TestCaseError> {
        let text = self.texts.len();
        let plaintext = format!("{text} from m{from}").into_bytes();
        let sent =
            self.world.device(from).group_encrypt(G, &plaintext).map_err(|e| fail(format!("group_encrypt: {e:?}")))?;
        prop_assert!(sent.without_session.is_empty());
        let message = GroupMessage::from_bytes(&sent.message).unwrap();
        let own = self.model[from].own.as_mut().expect("a member has the group");
        match own.chain {
            Some((chain, next)) => {
                prop_assert_eq!((message.chain_id(), message.iteration()), (chain, next), "m{} kept its chain", from);
            }
            None => {
                prop_assert_eq!(message.iteration(), 0, "a new chain starts at 0");
                prop_assert!(self.chains_used[from].insert(message.chain_id()), "m{} used a chain id again", from);
                own.distributed = false;
            }
        }
        let (chain, iteration) = (message.chain_id(), message.iteration());
        let mut expected = Vec::new();
        if !own.distributed {
            for (m, member) in own.roster.iter_mut().filter(|(_, member)| !member.has_chain) {
                *member = Member { has_chain: true, given_at: iteration, answered: 0, last_answer: None };
                expected.push(address(*m));
            }
            own.distributed = true;
        }
        own.chain = Some((chain, iteration + 1));
        let entitled = self.model[from].roster();
        let given: Vec<Address> = sent.distributions.iter().map(|d| d.to.clone()).collect();
        prop_assert_eq!(given, expected, "the members given the chain");
        self.stats.sends += 1;
        self.stats.distributions += sent.distributions.len() as u64;
        for outgoing in sent.distributions {
            let to = self.world.index(&outgoing.to);
            self.put(from, to, outgoing.message, What::Distribution { chain, start: iteration, answer: false });
        }
        self.texts.push(Text { from, plaintext, chain, iteration, entitled, last });
        for to in (0..self.n).filter(|&to| to != from) {
            self.put(from, to, sent.message.clone(), What::Group { text });
        }
        Ok(())
    }

    fn deliver(&mut self, message: &Msg, hold: bool) -> Result<(), TestCaseError> {
        match message.what {
            What::Group { text } => self.deliver_group(message, text, hold).map(drop),
            _ => self.deliver_control(message),
        }
    }

    /// What the model says a group message of `from` on (`chain`,
    /// `iteration`) does at `to` (without changing the model).
    fn predict(&self, from: usize, to: usize, chain: u32, iteration: u32) -> Outcome {
        let model = &self.model[to];
        if model.own.is_none() {
            return Outcome::UnknownGroup;
        }
        let Some(kept) = model.kept.get(&from) else { return Outcome::NotMember };
        match kept.find(chain) {
            None if kept.floor(chain).is_some_and(|floor| iteration < floor) => Outcome::Duplicate,
            None => Outcome::Missing(kept.would_request(chain) || kept.last_request(chain).is_some()),
            Some(k) if iteration < k.start || k.decrypted.contains(&iteration) => Outcome::Duplicate,
            Some(_) => Outcome::Plaintext,
        }
    }

    /// Delivers a group message; returns what its decryption gave (`None`:
    /// held without one).
    fn deliver_group(&mut self, message: &Msg, t: usize, hold: bool) -> Result<Option<Outcome>, TestCaseError> {
        let (from, to) = (message.from, message.to);
        let (chain, iteration) = (self.texts[t].chain, self.texts[t].iteration);
        self.delivered.insert((t, to));
        // The app holds it behind a message of the same chain that waits.
        if hold && self.held[to].iter().any(|h| h.from == from && self.chain_of(h) == chain) {
            if !self.held[to].iter().any(|h| h.what == message.what) {
                self.held[to].push(message.clone());
            }
            self.stats.held_behind += 1;
            if trace() {
                eprintln!("text {t} of m{from} at m{to}: held behind another");
            }
            return Ok(None);
        }
        let expected = self.predict(from, to, chain, iteration);
        let before = self.world.snapshot(to);
        let result = self.world.device(to).decrypt(&address(from), &message.bytes);
        let got = outcome(&result)?;
        if trace() {
            eprintln!("text {t} of m{from} (chain {chain:x}, iteration {iteration}) at m{to}: {got:?}");
        }
        self.last.insert((t, to), got);
        prop_assert_eq!(got, expected, "text {} of m{} (chain {}, iteration {}) at m{}", t, from, chain, iteration, to);
        if !matches!(got, Outcome::Plaintext | Outcome::Missing(true)) {
            prop_assert!(
                self.world.snapshot(to) == before,
                "a refused message ({:?}) changed the store of m{}",
                got,
                to
            );
        }
        match got {
            Outcome::Plaintext => {
                let pending = result.unwrap();
                let text = &self.texts[t];
                prop_assert_eq!(pending.kind(), MessageKind::Group);
                prop_assert_eq!(pending.group_id(), Some(G));
                prop_assert!(pending.plaintext() == text.plaintext.as_slice(), "another plaintext");
                prop_assert!(
                    text.entitled.contains(&to),
                    "m{} read text {} of m{}, sent when it was not a member",
                    to,
                    t,
                    from
                );
                if !self.decrypted.insert((t, to)) {
                    // Only on a chain taken again after the recipient deleted
                    // the group and created it anew (it forgot everything).
                    prop_assert!(self.reopened.contains(&(to, from, chain)), "text {} decrypted twice at m{}", t, to);
                    self.stats.decrypted_again_after_delete += 1;
                }
                let answer = self.world.device(to).commit(pending).map_err(|e| fail(format!("commit: {e:?}")))?;
                prop_assert!(answer.is_empty());
                let kept = self.model[to].kept.get_mut(&from).unwrap();
                kept.chains.iter_mut().find(|k| k.chain == chain).unwrap().decrypted.insert(iteration);
                kept.settle();
                self.held[to].retain(|h| h.what != message.what);
                self.stats.decrypted += 1;
            }
            Outcome::Missing(asked) => {
                if asked {
                    let request = match result {
                        Err(DeviceError::Group(GroupError::MissingChain { request: Some(request), .. })) => request,
                        _ => unreachable!(),
                    };
                    let kept = self.model[to].kept.get_mut(&from).unwrap();
                    if kept.count_request(chain) {
                        kept.keep_request(chain, request.clone());
                    } else {
                        // No new request may be made: the last one again,
                        // byte for byte, and nothing written.
                        prop_assert!(kept.last_request(chain) == Some(&request), "not the last request again");
                        prop_assert!(self.world.snapshot(to) == before, "a request handed again changed the store");
                        self.stats.requests_again += 1;
                    }
                    // A missing chain is asked for from its floor if it was
                    // given up (else from 0); one too far ahead, from
                    // MAX_SKIP before the message (PROTOCOL.md 18.7).
                    let kept = &self.model[to].kept[&from];
                    let asked = match kept.find(chain) {
                        None => kept.floor(chain).unwrap_or(0),
                        Some(_) => iteration.saturating_sub(samizdat::limits::MAX_SKIP),
                    };
                    self.put(to, from, request, What::Request { chain, iteration: asked });
                    self.stats.missing_with_request += 1;
                } else {
                    self.stats.missing_without_request += 1;
                }
                if !self.held[to].iter().any(|h| h.what == message.what) {
                    self.held[to].push(message.clone());
                }
            }
            other => {
                self.held[to].retain(|h| h.what != message.what);
                match other {
                    Outcome::Duplicate => self.stats.duplicates += 1,
                    Outcome::NotMember => self.stats.not_member += 1,
                    Outcome::UnknownGroup => self.stats.unknown_group += 1,
                    _ => return Err(fail(format!("a genuine message refused as {other:?}"))),
                }
            }
        }
        Ok(Some(got))
    }

    fn chain_of(&self, message: &Msg) -> u32 {
        match message.what {
            What::Group { text } => self.texts[text].chain,
            _ => unreachable!(),
        }
    }

    fn deliver_control(&mut self, message: &Msg) -> Result<(), TestCaseError> {
        let (from, to) = (message.from, message.to);
        let before = self.world.snapshot(to);
        let result = self.world.device(to).decrypt(&address(from), &message.bytes);
        if self.consumed.contains(&message.id) {
            prop_assert!(result.is_err(), "a one-to-one message decrypted twice");
            prop_assert!(self.world.snapshot(to) == before, "a refused duplicate changed the store");
            self.stats.pairwise_duplicates += 1;
            return Ok(());
        }
        let pending = result.map_err(|e| fail(format!("a one-to-one message ({:?}) refused: {e:?}", message.what)))?;
        prop_assert_eq!(pending.kind(), MessageKind::Control);
        prop_assert_eq!(pending.group_id(), Some(G));
        let mut answers = self.world.device(to).commit(pending).map_err(|e| fail(format!("commit: {e:?}")))?;
        prop_assert!(answers.len() <= 1, "one control message, at most one answer");
        let answer = answers.pop();
        if trace() {
            eprintln!("{:?} from m{from} at m{to}: answer {}", message.what, answer.is_some());
        }
        self.consumed.insert(message.id);
        match message.what {
            What::Distribution { chain, start, .. } => {
                prop_assert!(answer.is_none(), "a distribution answered");
                if self.model[to].own.is_some()
                    && let Some(kept) = self.model[to].kept.get_mut(&from)
                {
                    if kept.find(chain).is_none() && !self.taken.insert((to, from, chain)) {
                        self.stats.retaken_chains += 1;
                        if self.forgotten.contains(&(to, from, chain)) {
                            self.reopened.insert((to, from, chain));
                        }
                    }
                    if let Some(evicted) = kept.receive(chain, start) {
                        self.evicted.insert((to, from, evicted));
                        self.stats.evicted_chains += 1;
                    }
                }
            }
            What::Request { chain, iteration } => {
                let expected = self.answer(to, from, chain, iteration);
                prop_assert_eq!(
                    answer.is_some(),
                    expected.is_some(),
                    "m{} answering m{} for chain {}",
                    to,
                    from,
                    chain
                );
                match (answer, expected) {
                    (Some(answer), Some(Answer::New(chain, start))) => {
                        prop_assert_eq!(&answer.to, &address(from));
                        let (_, m) =
                            self.model[to].own.as_mut().unwrap().roster.iter_mut().find(|(m, _)| *m == from).unwrap();
                        m.last_answer = Some((chain, start, answer.message.clone()));
                        self.put(to, from, answer.message, What::Distribution { chain, start, answer: true });
                        self.stats.answers += 1;
                    }
                    (Some(answer), Some(Answer::Again(bytes))) => {
                        prop_assert_eq!(&answer.to, &address(from));
                        prop_assert!(answer.message == bytes, "not the last answer again");
                        // The request consumed; nothing else written.
                        let groups = Table::ALL.iter().position(|t| *t == Table::Groups).unwrap();
                        prop_assert!(
                            self.world.snapshot(to)[groups] == before[groups],
                            "an answer handed again changed a group row"
                        );
                        // The same message as before (its bytes name it).
                        self.put(to, from, answer.message, What::Distribution { chain, start: 0, answer: true });
                        self.stats.answers_again += 1;
                    }
                    _ => self.stats.requests_unanswered += 1,
                }
            }
            What::Group { .. } => unreachable!(),
        }
        // The chain may have come: the app tries what waits for it.
        self.retry_held(to, Some(from))
    }

    /// The model of `sender` answering a request of `member`: the chain
    /// and iteration a new answer gives, or the last answer again, if it
    /// answers.
    fn answer(&mut self, sender: usize, member: usize, chain: u32, iteration: u32) -> Option<Answer> {
        let own = self.model[sender].own.as_mut()?;
        let (current, next) = own.chain?;
        let (_, m) = own.roster.iter_mut().find(|(m, _)| *m == member)?;
        // Past the new answers, a request from further on than the last
        // answer on our current chain gets a new one (PROTOCOL.md 18.7).
        let later = matches!(&m.last_answer, Some((given, start, _))
            if chain == current && *given == current && m.has_chain && iteration > *start && iteration <= next);
        if m.answered >= MAX_GROUP_KEY_ANSWERS && !later {
            return match &m.last_answer {
                Some((given, _, bytes)) if chain == current && *given == current => Some(Answer::Again(bytes.clone())),
                _ => None,
            };
        }
        if chain != current && m.has_chain {
            return None;
        }
        let from = if chain != current {
            next
        } else if m.has_chain {
            iteration.max(m.given_at)
        } else {
            next
        }
        .min(next);
        if !m.has_chain {
            m.given_at = from;
        }
        m.has_chain = true;
        m.answered = (m.answered + 1).min(MAX_GROUP_KEY_ANSWERS);
        own.distributed = own.roster.iter().all(|(_, m)| m.has_chain);
        Some(Answer::New(current, from))
    }

    /// Tries the held messages of `to` again (from `from` only, if given),
    /// oldest first; after one whose chain is still missing, not the others
    /// of that chain (they would only spend requests).
    fn retry_held(&mut self, to: usize, from: Option<usize>) -> Result<(), TestCaseError> {
        let mut missing = BTreeSet::new();
        let held: Vec<Msg> = self.held[to].iter().filter(|h| from.is_none_or(|f| h.from == f)).cloned().collect();
        if trace() {
            eprintln!("retry at m{to} ({from:?}): {:?}", held.iter().map(|h| &h.what).collect::<Vec<_>>());
        }
        for message in held {
            let chain = (message.from, self.chain_of(&message));
            if self.held[to].iter().any(|h| h.what == message.what) && !missing.contains(&chain) {
                let What::Group { text } = message.what else { unreachable!() };
                if let Some(Outcome::Missing(_)) = self.deliver_group(&message, text, false)? {
                    missing.insert(chain);
                }
            }
        }
        Ok(())
    }

    fn tamper(&mut self, message: &Msg, field: Field, at: usize, bit: u8) -> Result<(), TestCaseError> {
        let to = message.to;
        let (bytes, expected) = match message.what {
            What::Group { text } => {
                let (from, chain, iteration) = (message.from, self.texts[text].chain, self.texts[text].iteration);
                // A chain given up: below its floor a message is a duplicate
                // before any signature (there is no key to check it with).
                let floor = self.model[to]
                    .kept
                    .get(&from)
                    .filter(|k| self.model[to].own.is_some() && k.find(chain).is_none())
                    .and_then(|k| k.floor(chain));
                let expected = if field == Field::GroupId {
                    Outcome::UnknownGroup
                } else if let Some(floor) = floor {
                    let iteration = if field == Field::Iteration { iteration ^ (1 << (bit % 32)) } else { iteration };
                    if iteration >= floor {
                        // A request, as for any message on a missing chain.
                        return Ok(());
                    }
                    Outcome::Duplicate
                } else {
                    match self.predict(message.from, to, self.texts[text].chain, self.texts[text].iteration) {
                        // A message on a missing chain makes a request however it was altered.
                        Outcome::Missing(_) => return Ok(()),
                        Outcome::Plaintext | Outcome::Duplicate => Outcome::Forged,
                        other => other,
                    }
                };
                (tamper_group(&message.bytes, field, bit), Some(expected))
            }
            _ => {
                let mut bytes = message.bytes.clone();
                bytes[at / 8] ^= 1 << (at % 8);
                (bytes, None)
            }
        };
        let before = self.world.snapshot(to);
        let result = self.world.device(to).decrypt(&address(message.from), &bytes);
        prop_assert!(result.is_err(), "a tampered message ({:?}, {:?}) decrypted", message.what, field);
        if let Some(expected) = expected {
            prop_assert_eq!(outcome(&result)?, expected, "tampered {:?}", field);
            if expected == Outcome::Forged {
                self.stats.forged += 1;
            }
        } else {
            self.stats.tampered_pairwise += 1;
        }
        prop_assert!(self.world.snapshot(to) == before, "a tampered message changed the store of m{}", to);
        Ok(())
    }

    fn remove(&mut self, gone: usize, delete: bool) -> Result<(), TestCaseError> {
        self.members.remove(&gone);
        let members: Vec<usize> = self.members.iter().copied().collect();
        for m in members {
            self.world
                .device(m)
                .remove_group_members(G, &[address(gone)])
                .map_err(|e| fail(format!("remove: {e:?}")))?;
            self.model[m].remove(gone);
        }
        if delete {
            self.world.device(gone).delete_group(G).map_err(|e| fail(format!("delete_group: {e:?}")))?;
            self.model[gone] = Model::default();
            let forgotten: Vec<_> = self.taken.iter().filter(|(to, _, _)| *to == gone).copied().collect();
            self.forgotten.extend(forgotten);
            for message in std::mem::take(&mut self.held[gone]) {
                let What::Group { text } = message.what else { unreachable!() };
                self.left.insert((text, gone));
            }
        }
        self.stats.removals += 1;
        Ok(())
    }

    fn readd(&mut self, back: usize) -> Result<(), TestCaseError> {
        let members = self.members.clone();
        for &m in &members {
            self.world.device(m).add_group_members(G, &[address(back)]).map_err(|e| fail(format!("add: {e:?}")))?;
            self.model[m].add(back);
        }
        let device = self.world.device(back);
        if self.model[back].own.is_none() {
            let addresses: Vec<Address> = members.iter().map(|&m| address(m)).collect();
            device.create_group(G, &addresses).map_err(|e| fail(format!("create_group: {e:?}")))?;
            self.model[back].create(&members);
        } else {
            // It kept its state (and its chain): its app brings its roster up to date.
            let roster = self.model[back].roster();
            for &m in members.difference(&roster) {
                device.add_group_members(G, &[address(m)]).map_err(|e| fail(format!("add: {e:?}")))?;
                self.model[back].add(m);
            }
            for &m in roster.difference(&members) {
                device.remove_group_members(G, &[address(m)]).map_err(|e| fail(format!("remove: {e:?}")))?;
                self.model[back].remove(m);
            }
        }
        let roster: Vec<Address> = self.world.device(back).group_members(G).unwrap();
        prop_assert_eq!(roster.into_iter().collect::<BTreeSet<_>>(), members.iter().map(|&m| address(m)).collect());
        self.members.insert(back);
        self.stats.readds += 1;
        Ok(())
    }

    /// Everything in flight arrives, held messages are tried again, until nothing moves.
    fn flush(&mut self) -> Result<(), TestCaseError> {
        loop {
            while !self.flight.is_empty() {
                let message = self.flight.remove(0);
                self.deliver(&message, true)?;
            }
            for m in 0..self.n {
                self.retry_held(m, None)?;
            }
            if self.flight.is_empty() {
                return Ok(());
            }
        }
    }

    /// Why `to` never decrypted text `t` that reached it.
    fn cause(&self, t: usize, to: usize) -> &'static str {
        let text = &self.texts[t];
        if self.left.contains(&(t, to)) && self.last.get(&(t, to)).is_none_or(|o| matches!(o, Outcome::Missing(_))) {
            return "the recipient left the group (deleting it) while it waited for its chain";
        }
        match self.last.get(&(t, to)) {
            Some(Outcome::NotMember) => return "refused: the sender was not a member at the recipient then",
            Some(Outcome::UnknownGroup) => return "refused: the recipient had no group then",
            // Never decrypted, so below the start of the chain it had then.
            Some(Outcome::Duplicate) => {
                return "refused as Duplicate: below the start of its chain as recovered, or below its floor";
            }
            Some(Outcome::Missing(_)) | None => {}
            Some(other) => panic!("a genuine message's last outcome {other:?}"),
        }
        let model = &self.model[to];
        if model.own.is_none() {
            return "the recipient left the group (deleting it) before it arrived";
        }
        let Some(kept) = model.kept.get(&text.from) else { return "NOT DECRYPTED: held, and the sender is gone" };
        match kept.find(text.chain) {
            Some(k) if text.iteration < k.start => {
                "its chain was recovered from a later iteration (refused as Duplicate)"
            }
            Some(_) => "NOT DECRYPTED, though the recipient holds its chain",
            None if kept.floor(text.chain).is_some_and(|f| text.iteration < f) => {
                "its chain was given up (evicted, or its sender removed) with it unread"
            }
            None if self.evicted.contains(&(to, text.from, text.chain)) => "its chain was evicted (MAX_SENDER_CHAINS)",
            None if self.model[text.from].own.as_ref().and_then(|o| o.chain).is_none_or(|(c, _)| c != text.chain) => {
                "the sender rotated before the chain was recovered"
            }
            None if kept.requests >= MAX_GROUP_REQUESTS_PER_SENDER => {
                "no more requests: MAX_GROUP_REQUESTS_PER_SENDER spent"
            }
            None => "no more requests: MAX_GROUP_KEY_REQUESTS spent",
        }
    }

    fn check_losses(&mut self) -> Result<(), TestCaseError> {
        for t in 0..self.texts.len() {
            for to in self.texts[t].entitled.clone() {
                if !self.delivered.contains(&(t, to)) || self.decrypted.contains(&(t, to)) {
                    continue;
                }
                let cause = self.cause(t, to);
                prop_assert!(!cause.starts_with("NOT"), "text {} at m{}: {}", t, to, cause);
                *self.stats.lost.entry(cause).or_insert(0) += 1;
                if self.texts[t].last && self.members.contains(&to) {
                    *self.stats.last_unread.entry(cause).or_insert(0) += 1;
                }
            }
        }
        Ok(())
    }
}

fn run_schedule(n: usize, ops: &[Op]) -> Result<Stats, TestCaseError> {
    let mut run = Run::new(n);
    run.run(ops)?;
    Ok(run.stats)
}

/// `cases` per property, or `PROPTEST_CASES` if set (for longer runs). A
/// failing case is printed minimised, not persisted.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Random schedules of sends, deliveries in any order, drops,
    /// duplicates, tampering, removals and re-adds: every outcome is the
    /// model's, nothing decrypts twice or for a device that was not a
    /// member, refusals change nothing, and every loss has a known cause.
    #[test]
    fn random_group_schedules_follow_the_model((n, ops) in schedule()) {
        run_schedule(n, &ops)?;
    }
}

/// The schedules of [`random_group_schedules_follow_the_model`] are not
/// vacuous: over 100 fixed schedules every outcome happens (the counts,
/// and the losses by cause, are printed).
#[test]
fn random_schedules_reach_every_outcome() {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = schedule();
    let mut total = Stats::default();
    for _ in 0..100 {
        let (n, ops) = strategy.new_tree(&mut runner).unwrap().current();
        match run_schedule(n, &ops) {
            Ok(stats) => total.add(&stats),
            Err(error) => panic!("schedule failed: {error}\nn {n}, ops {ops:?}"),
        }
    }
    println!("{total:#?}");
    assert!(total.decrypted > total.sends, "{total:#?}");
    assert!(total.distributions > 0, "{total:#?}");
    assert!(total.missing_with_request > 0, "{total:#?}");
    // Every missing chain now gets a request, new or again (none only for a
    // chain id never asked once the budget is spent: forged ids, not made
    // here).
    assert!(total.requests_again > 0 && total.answers_again > 0, "{total:#?}");
    assert!(total.duplicates > 0, "{total:#?}");
    assert!(total.not_member > 0, "{total:#?}");
    assert!(total.unknown_group > 0, "{total:#?}");
    assert!(total.forged > 0, "{total:#?}");
    assert!(total.held_behind > 0, "{total:#?}");
    assert!(total.answers > 0, "{total:#?}");
    assert!(total.requests_unanswered > 0, "{total:#?}");
    assert!(total.pairwise_duplicates > 0, "{total:#?}");
    assert!(total.tampered_pairwise > 0, "{total:#?}");
    assert!(total.drops > 0 && total.removals > 0 && total.readds > 0, "{total:#?}");
}

// ------------------------------------------------------------ the defects

/// A member whose distribution was lost asks for the chain at the first
/// message it sees; if that is not the chain's earliest (the network
/// reordered them), the answer starts at the iteration asked, and the
/// earlier messages, which the member was entitled to (it was given the
/// chain before them), can never be read. Worse, they are refused as
/// `Duplicate`: an app that follows PROTOCOL.md 14.11 acknowledges a
/// duplicate as stored, and loses them silently. (Fixed: a request asks
/// from the earliest iteration, and the answer gives the chain from where
/// the member was first given it.)
#[test]
fn a_recovered_chain_loses_earlier_messages_and_calls_them_duplicates() {
    let world = World::new(2);
    world.create(G, &[0, 1]);
    let first = world.device(0).group_encrypt(G, b"first").unwrap(); // its distribution is lost
    let second = world.device(0).group_encrypt(G, b"second").unwrap();
    // The second message arrives first.
    let request = missing_chain(world.receive(0, 1, &second.message)).unwrap().unwrap();
    let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    world.receive(0, 1, &answer.message).unwrap();
    assert_eq!(world.receive(0, 1, &second.message).unwrap(), Got::Group(b"second".to_vec()));
    let late = world.receive(0, 1, &first.message);
    assert_eq!(late.unwrap(), Got::Group(b"first".to_vec()), "the member was given the chain before the first message");
}

/// A member asks for a chain it lacks; the sender rotated away from it
/// meanwhile (a member was removed), so the chain never comes: the answer
/// gives the new chain. Chain ids that never come (forged by the server, or
/// rotated away) used to fill the [`MAX_REQUESTED_CHAINS`] slots for good;
/// now a new id takes the oldest one's place (fixed).
#[test]
fn requests_for_chains_that_never_come_block_every_later_request() {
    let world = World::new(3);
    world.create(G, &[0, 1, 2]);
    // Forged chain ids (the server altered messages of member 0).
    let genuine = world.send(0, G, b"genuine").message;
    for chain in 1..=MAX_REQUESTED_CHAINS as u32 {
        let envelope = pb::Envelope::decode(&genuine[1..]).unwrap();
        let Some(pb::envelope::Body::Group(mut group)) = envelope.body else { unreachable!() };
        group.chain_id = group.chain_id.wrapping_add(chain);
        let mut forged = vec![genuine[0]];
        pb::Envelope { body: Some(pb::envelope::Body::Group(group)) }.encode(&mut forged).unwrap();
        let request = missing_chain(world.receive(0, 1, &forged)).unwrap();
        assert!(request.is_some(), "a request for forged chain {chain}");
    }
    // Member 0 rotates (member 2 is removed); its new distribution to
    // member 1 is lost.
    world.device(0).remove_group_members(G, &[address(2)]).unwrap();
    world.device(1).remove_group_members(G, &[address(2)]).unwrap();
    let rotated = world.device(0).group_encrypt(G, b"on the new chain").unwrap();
    // Member 1 must be able to ask for the chain it lacks.
    let request = missing_chain(world.receive(0, 1, &rotated.message)).expect("missing");
    assert!(request.is_some(), "member 1 can never ask member 0 for a chain again");
}

/// A device used to forget a member's chains, and which of their messages
/// it decrypted, when it removed the member; once the member was added back
/// it took an old chain of it again if one reached it: here an answer to a
/// request of its, delayed by the network past the removal and the re-add
/// (the member itself started afresh, with a new chain). The server then
/// replayed an old message on that chain, and it decrypted a second time.
/// (Fixed: the removal keeps the chain's floor, and the chain taken again
/// opens nothing below it.)
#[test]
fn a_removed_member_s_old_chain_taken_again_opens_no_old_message() {
    let world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let sent = world.device(0).group_encrypt(G, b"before the removal").unwrap();
    let to_1 = sent.distributions.iter().find(|d| d.to == address(1)).unwrap();
    // The message overtakes the chain: member 1 asks; the answer is delayed.
    let request = missing_chain(world.receive(0, 1, &sent.message)).unwrap().unwrap();
    let Got::Control(Some(delayed)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    world.receive(0, 1, &to_1.message).unwrap();
    assert_eq!(world.receive(0, 1, &sent.message).unwrap(), Got::Group(b"before the removal".to_vec()));
    // Member 0 is removed (it leaves: deletes the group), then added back.
    for m in [1, 2] {
        world.device(m).remove_group_members(G, &[address(0)]).unwrap();
    }
    world.device(0).delete_group(G).unwrap();
    world.device(0).create_group(G, &[address(1), address(2)]).unwrap();
    for m in [1, 2] {
        world.device(m).add_group_members(G, &[address(0)]).unwrap();
    }
    // The delayed answer arrives, then the server replays the old message.
    assert_eq!(world.receive(0, 1, &delayed.message).unwrap(), Got::Control(None));
    let again = world.receive(0, 1, &sent.message);
    assert!(
        matches!(again, Err(DeviceError::Group(GroupError::Decrypt(DecryptError::Duplicate { counter: 0 })))),
        "a replayed message: {again:?}"
    );
    // The member's new chain opens: member 1 reads it again from now on.
    let sent = world.send(0, G, b"after the re-add");
    assert_eq!(world.receive(0, 1, &sent.message).unwrap(), Got::Group(b"after the re-add".to_vec()));
}

/// A member removed while its app was not told (it kept its state) and then
/// added back keeps its chain; the others used to forget that chain, and
/// what they had decrypted on it, when they removed it. The server replayed
/// an old message of it: the recipient asked for the chain from iteration
/// 0, the member answered from where it had first given the chain, and the
/// old message decrypted a second time. (Fixed: the recipient keeps the
/// chain's floor, refuses what is below it as a duplicate without asking,
/// and asks for the chain from the floor when a later message comes.)
#[test]
fn a_member_added_back_without_a_new_chain_opens_no_old_message() {
    let world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let old = world.send(0, G, b"before the removal").message;
    assert_eq!(world.receive(0, 1, &old).unwrap(), Got::Group(b"before the removal".to_vec()));
    // Member 0 is removed, then added back; its own app never heard of it.
    for m in [1, 2] {
        world.device(m).remove_group_members(G, &[address(0)]).unwrap();
    }
    for m in [1, 2] {
        world.device(m).add_group_members(G, &[address(0)]).unwrap();
    }
    // The server replays the old message to member 1: below the floor of
    // the chain, refused without asking for anything.
    let before = world.snapshot(1);
    let replay = world.receive(0, 1, &old);
    assert!(
        matches!(replay, Err(DeviceError::Group(GroupError::Decrypt(DecryptError::Duplicate { counter: 0 })))),
        "a replayed message: {replay:?}"
    );
    assert!(world.snapshot(1) == before, "a refused replay changed the store");
    // A new message of member 0 on the same chain: member 1 asks for the
    // chain from its floor, gets it, reads the message and not the old one.
    let new = world.send(0, G, b"after the re-add").message;
    let request = missing_chain(world.receive(0, 1, &new)).unwrap().expect("a request");
    let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    world.receive(0, 1, &answer.message).unwrap();
    assert_eq!(world.receive(0, 1, &new).unwrap(), Got::Group(b"after the re-add".to_vec()));
    let again = world.receive(0, 1, &old);
    assert!(!matches!(again, Ok(Got::Group(_))), "a replayed message decrypted twice: {again:?}");
}

/// Found by the random schedules once a request from further on than the
/// last answer got a new answer (PROTOCOL.md 18.7): kept as it was found.
#[test]
fn regression_a_readded_member_asks_past_the_last_answer() {
    use Op::*;
    let ops = [
        Send(4_484_682_108_549_801_654),
        Send(2_891_389_227_122_880_232),
        Deliver(19_748_492_745_817_367),
        Send(13_395_332_199_087_417_757),
        Retry,
        Send(3_388_863_891_745_609_353),
        Deliver(2_550_007_766_911_456_648),
        Deliver(5_246_479_040_364_938_284),
        Send(0),
        Send(0),
        Send(0),
        Send(0),
        Send(0),
        Remove(13_329_260_737_247_927_500, false),
        Send(0),
        Send(0),
        Readd(0),
    ];
    if let Err(error) = run_schedule(3, &ops) {
        panic!("{error}");
    }
}
