//! The chains this device keeps for one sender of one group, and the
//! decryption of that sender's messages.

use std::{collections::VecDeque, sync::OnceLock};

use ed25519_dalek::{Signature, VerifyingKey};

use samizdat_proto::storage;
use zeroize::Zeroizing;

use super::{Distribution, GroupMessage, open};
use crate::{
    DecodeError, DecryptError,
    address::Address,
    keys::{IdentityKey, Secret32},
    limits::{
        MAX_CHAIN_FLOORS, MAX_GROUP_EVICTED_ITERATIONS, MAX_GROUP_KEY_REQUESTS, MAX_GROUP_REQUESTS_PER_SENDER,
        MAX_GROUP_SKIPPED_KEYS, MAX_GROUP_USED_ITERATIONS, MAX_KEPT_CONTROL_MESSAGE_LEN, MAX_REQUESTED_CHAINS,
        MAX_SENDER_CHAINS, MAX_SKIP,
    },
    ratchet::{chain::ChainKey, ranges_len, remember_evicted, skipped_ranges, to_ranges},
};

/// Bytes of a message's salt kept per decrypted iteration.
const SALT_TAG_LEN: usize = 8;
type SaltTag = [u8; SALT_TAG_LEN];

fn salt_tag(message: &GroupMessage) -> SaltTag {
    message.salt.first_chunk::<SALT_TAG_LEN>().copied().unwrap_or_default()
}

/// One chain of a sender.
#[derive(Clone)]
struct Chain {
    chain_id: u32,
    /// The chain's generation, as its distribution gave it.
    generation: u64,
    signing_key: IdentityKey,
    /// `signing_key` decompressed, the first time a message is checked
    /// (once per chain while the chains stay in memory, as in
    /// [`crate::hazmat::GroupReceiver`]; a device loads the row per message).
    verifying: OnceLock<Option<VerifyingKey>>,
    /// The identity key of the session the chain came in: the chain is used
    /// only while that identity is the one trusted for the sender.
    identity: IdentityKey,
    /// The chain key at the next iteration expected.
    chain: ChainKey,
    /// Seeds of skipped iterations, in increasing order.
    skipped: VecDeque<(u32, Secret32)>,
    /// Decrypted iterations with their messages' salt tags, oldest first.
    used: VecDeque<(u32, SaltTag)>,
    /// Iterations whose skipped keys were evicted unused, increasing.
    evicted: VecDeque<u32>,
}

/// What is kept of a chain given up (evicted by newer chains, or its sender
/// removed from the group): the iteration below which none of its messages
/// opens again, whatever distribution of it comes later (PROTOCOL.md 18.6).
/// No key is kept, not even the public signing key: the chain id names the
/// chain among its sender's (a sender's new chain that drew the id of one
/// of its own floors loses the messages below that floor; the odds are at
/// most 8 in 2^32).
#[derive(Clone)]
struct Floor {
    chain_id: u32,
    /// The first iteration that may still open.
    iteration: u32,
    /// The chain's generation: when the floor is forgotten, no new chain of
    /// this generation or an earlier one is taken in any more.
    generation: u64,
}

/// A chain id asked of the sender and not received yet.
#[derive(Clone, PartialEq, Eq)]
struct Asked {
    chain_id: u32,
    /// New requests made for it: 1 to [`MAX_GROUP_KEY_REQUESTS`].
    count: u32,
    /// The wire bytes of the last one, to hand again (`None` in a row of an
    /// earlier release).
    message: Option<Vec<u8>>,
}

/// The last answer this device gave the sender (as a member asking for our
/// chain), to hand again.
#[derive(Clone, PartialEq, Eq)]
struct Answered {
    /// Our chain that the answer gives.
    chain_id: u32,
    message: Vec<u8>,
    /// The iteration from which it gives the chain.
    iteration: u32,
}

/// The chains of one sender of one group, the chain ids asked of it, and
/// the last answer this device gave it.
#[derive(Clone, Default)]
pub(crate) struct SenderChains {
    /// Oldest first; the last is the newest.
    chains: VecDeque<Chain>,
    /// Chains given up, oldest first: at most [`MAX_CHAIN_FLOORS`].
    floors: VecDeque<Floor>,
    /// Oldest first: at most [`MAX_REQUESTED_CHAINS`].
    requested: Vec<Asked>,
    /// Requests made since the sender last proved itself (a distribution
    /// taken in, a message decrypted).
    requests: u32,
    /// The last answer to a request of this member (the other side: our
    /// chain, for it).
    answer: Option<Answered>,
    /// The lowest generation of a chain, neither kept nor with a floor, that
    /// is still taken in: one more than the largest generation of a floor
    /// forgotten (PROTOCOL.md 18.6). So a chain whose floor was forgotten
    /// never comes back, however late its distribution: it is of that
    /// generation or an earlier one.
    min_generation: u64,
}

/// How a decryption changes a sender's chains; applied by
/// [`SenderChains::apply`] on the value it was made on.
pub(crate) struct GroupPlan {
    chain: usize,
    kind: PlanKind,
    used: (u32, SaltTag),
}

enum PlanKind {
    /// The key was a skipped one, at this position.
    Skipped(usize),
    /// The chain advanced: its new key, and the keys skipped on the way.
    Advance { chain: ChainKey, skipped: Vec<(u32, Secret32)> },
}

/// Why a group message did not decrypt on a sender's chains.
#[derive(Debug)]
pub(crate) enum GroupDecrypt {
    /// No chain of this sender has the message's chain id.
    MissingChain,
    /// The message, signed by the sender, is more than [`MAX_SKIP`] ahead of
    /// where its chain is: the chain is needed from the message's iteration.
    TooFarAhead {
        /// How far ahead (read by the `hazmat` replay of group vectors; the
        /// device asks for the chain from the message's iteration instead).
        #[cfg_attr(not(feature = "hazmat"), allow(dead_code))]
        gap: u32,
    },
    /// The message does not decrypt (forged, duplicate, ...).
    Failed(DecryptError),
}

impl From<DecryptError> for GroupDecrypt {
    fn from(error: DecryptError) -> Self {
        Self::Failed(error)
    }
}

impl SenderChains {
    /// How many skipped keys are kept, over every chain.
    pub(crate) fn skipped_count(&self) -> usize {
        self.chains.iter().map(|c| c.skipped.len()).sum()
    }

    /// How many chains are kept.
    #[cfg(test)]
    pub(crate) fn chain_count(&self) -> usize {
        self.chains.len()
    }

    /// Decrypts `message` from `sender`, whose trusted identity is
    /// `trusted`, without changing anything (PROTOCOL.md 18.5): the chain
    /// (one that came from that identity), then the signature, then the
    /// iteration, and only then the keys and the body. A forged message
    /// costs one signature verification and derives no key.
    pub(crate) fn plan_decrypt(
        &self,
        sender: &Address,
        trusted: Option<&IdentityKey>,
        message: &GroupMessage,
    ) -> Result<(Zeroizing<Vec<u8>>, GroupPlan), GroupDecrypt> {
        let forged = || GroupDecrypt::Failed(DecryptError::Unauthenticated);
        // A chain that came from an identity no longer trusted for the
        // sender (a phone replaced, its old identity seized) is as good as
        // missing.
        let Some((index, chain)) = self
            .chains
            .iter()
            .enumerate()
            .rev()
            .find(|(_, c)| c.chain_id == message.chain_id && Some(&c.identity) == trusted)
        else {
            // Below the floor of a chain given up: it can never open again
            // (what the chain's key would be asked for could not open it).
            return Err(match self.floor(message.chain_id) {
                Some(floor) if message.iteration < floor => {
                    GroupDecrypt::Failed(DecryptError::Duplicate { counter: message.iteration })
                }
                _ => GroupDecrypt::MissingChain,
            });
        };
        let verifying = chain.verifying.get_or_init(|| VerifyingKey::from_bytes(chain.signing_key.as_bytes()).ok());
        let signature = Signature::from_bytes(&message.signature);
        // Strict Ed25519 (as `IdentityKey::verify`): canonical S, no small-order R or key.
        if !verifying.is_some_and(|key| key.verify_strict(&message.signed_bytes(sender), &signature).is_ok()) {
            return Err(forged());
        }
        let iteration = message.iteration;
        let tag = salt_tag(message);
        let (seed, kind) = if iteration < chain.chain.index() {
            let Some(position) = chain.skipped.iter().position(|(i, _)| *i == iteration) else {
                // Signed by the sender: a replay, or its state went back.
                // Its key evicted unused: it never arrived before.
                return Err(match chain.used.iter().find(|(i, _)| *i == iteration) {
                    Some((_, used)) if *used != tag => DecryptError::Rollback { counter: iteration },
                    None if chain.evicted.binary_search(&iteration).is_ok() => {
                        DecryptError::KeyEvicted { counter: iteration }
                    }
                    _ => DecryptError::Duplicate { counter: iteration },
                }
                .into());
            };
            let seed = chain.skipped.get(position).map(|(_, seed)| seed.clone()).ok_or_else(forged)?;
            (seed, PlanKind::Skipped(position))
        } else {
            let gap = iteration.saturating_sub(chain.chain.index());
            if gap > MAX_SKIP {
                return Err(GroupDecrypt::TooFarAhead { gap });
            }
            let mut key = chain.chain.clone();
            let mut skipped = Vec::with_capacity(usize::try_from(gap).unwrap_or(0));
            while key.index() < iteration {
                let seed = key.message_key().seed().cloned().ok_or_else(forged)?;
                skipped.push((key.index(), seed));
                key = key.next().ok_or_else(forged)?;
            }
            let seed = key.message_key().seed().cloned().ok_or_else(forged)?;
            // A sender never uses the last iteration (its chain would not step).
            let next = key.next().ok_or_else(forged)?;
            (seed, PlanKind::Advance { chain: next, skipped })
        };
        let ad = message.associated_data(sender);
        let plaintext = open(&seed, &message.salt, &ad, &message.body).ok_or_else(forged)?;
        Ok((plaintext, GroupPlan { chain: index, kind, used: (iteration, tag) }))
    }

    /// Applies a plan made by [`Self::plan_decrypt`] on this very value,
    /// then evicts past the limits.
    pub(crate) fn apply(&mut self, plan: GroupPlan) {
        if let Some(chain) = self.chains.get_mut(plan.chain) {
            match plan.kind {
                PlanKind::Skipped(position) => {
                    chain.skipped.remove(position);
                }
                PlanKind::Advance { chain: key, skipped } => {
                    chain.chain = key;
                    chain.skipped.extend(skipped);
                }
            }
            chain.used.push_back(plan.used);
        }
        // A message the sender signed on a chain we have: it is alive, and
        // what was asked of it so far is settled.
        self.requested.clear();
        self.requests = 0;
        self.evict();
    }

    /// The oldest skipped keys (their iterations remembered as evicted),
    /// used iterations and evicted iterations go first past the limits.
    fn evict(&mut self) {
        let mut excess = self.skipped_count().saturating_sub(MAX_GROUP_SKIPPED_KEYS);
        for chain in &mut self.chains {
            let drop = excess.min(chain.skipped.len());
            for (iteration, _) in chain.skipped.drain(..drop) {
                remember_evicted(&mut chain.evicted, iteration);
            }
            excess = excess.saturating_sub(drop);
        }
        let mut excess =
            self.chains.iter().map(|c| c.evicted.len()).sum::<usize>().saturating_sub(MAX_GROUP_EVICTED_ITERATIONS);
        for chain in &mut self.chains {
            let drop = excess.min(chain.evicted.len());
            chain.evicted.drain(..drop);
            excess = excess.saturating_sub(drop);
        }
        let mut excess =
            self.chains.iter().map(|c| c.used.len()).sum::<usize>().saturating_sub(MAX_GROUP_USED_ITERATIONS);
        for chain in &mut self.chains {
            let drop = excess.min(chain.used.len());
            chain.used.drain(..drop);
            excess = excess.saturating_sub(drop);
        }
    }

    /// Takes in a distribution from the sender (PROTOCOL.md 18.6). A chain
    /// already kept with the same id and signing key moves forward to the
    /// distribution's iteration if that is later (the keys in between are
    /// not derived: those messages are given up), and is otherwise kept as
    /// it is (a copy of a chain never takes it back to an earlier iteration,
    /// which would let a replayed distribution decrypt messages twice); one
    /// with another signing key, or that came from another identity, is
    /// replaced. `identity` is the identity key of the session it came in. A new chain becomes the newest, and
    /// past [`MAX_SENDER_CHAINS`] the oldest is dropped. Every request
    /// counted for this sender is forgotten. Returns whether anything changed.
    pub(crate) fn receive(&mut self, distribution: &Distribution, identity: IdentityKey) -> bool {
        let mut chain = Chain {
            chain_id: distribution.chain_id,
            generation: distribution.generation,
            signing_key: distribution.signing_key,
            verifying: OnceLock::new(),
            identity,
            chain: ChainKey::new(distribution.chain_key.clone(), distribution.iteration),
            skipped: VecDeque::new(),
            used: VecDeque::new(),
            evicted: VecDeque::new(),
        };
        // The sender answered or gave its current chain: what was asked of
        // it before is settled (a chain asked for and rotated away never
        // comes; left in the list it would keep later requests from being
        // made).
        let was_requested = !self.requested.is_empty() || self.requests > 0;
        self.requested.clear();
        self.requests = 0;
        if let Some(position) = self.chains.iter().position(|c| c.chain_id == distribution.chain_id) {
            if let Some(kept) = self.chains.get_mut(position)
                && kept.signing_key == distribution.signing_key
                && kept.identity == identity
            {
                // The same chain from later on (the answer to a message too
                // far ahead): it moves forward, keeping its skipped keys and
                // used iterations; never back.
                if distribution.iteration > kept.chain.index() {
                    kept.chain = chain.chain;
                    return true;
                }
                return was_requested;
            }
            // Replaced. Under another identity (the sender's device
            // replaced, or a hostile member now trusted for its address that
            // kept the chain it was given) the old chain leaves its floor, so
            // the chain taken again opens nothing read before. Under the same
            // identity with another signing key, no floor: only the sender
            // itself can do that, and what it signed it could send again.
            if let Some(replaced) = self.chains.remove(position)
                && replaced.identity != identity
            {
                self.retire(&replaced);
            }
        }
        // A chain given up before comes back from where it was, never from
        // earlier: its messages already read (or given up) stay unreadable.
        let floored = self.floors.iter().position(|f| f.chain_id == distribution.chain_id);
        // A chain neither kept nor floored, of a generation below the
        // lowest still taken in: a chain whose floor was forgotten (or
        // older), whose messages read before would open again. Ignored.
        if floored.is_none()
            && !self.chains.iter().any(|c| c.chain_id == distribution.chain_id)
            && distribution.generation < self.min_generation
        {
            return was_requested;
        }
        if let Some(position) = floored {
            let floor = self.floors.get(position).map_or(0, |f| f.iteration);
            if floor > chain.chain.index() {
                // Far behind (never from this device's own requests, which
                // ask from the floor): ignored; the next message of the
                // chain asks for it from the floor.
                if floor.saturating_sub(chain.chain.index()) > MAX_SKIP {
                    return was_requested;
                }
                let mut key = chain.chain;
                while key.index() < floor {
                    let Some(next) = key.next() else { return was_requested };
                    key = next;
                }
                chain.chain = key;
            }
            self.floors.remove(position);
        }
        self.chains.push_back(chain);
        while self.chains.len() > MAX_SENDER_CHAINS {
            if let Some(evicted) = self.chains.pop_front() {
                self.retire(&evicted);
            }
        }
        self.evict();
        true
    }

    /// Keeps the floor of a chain given up: its next iteration. A floor of
    /// the same chain kept already rises to it if it is later; past
    /// [`MAX_CHAIN_FLOORS`] the oldest floor is forgotten.
    /// A floor forgotten raises the lowest generation taken in past its own.
    fn retire(&mut self, chain: &Chain) {
        let floor = chain.chain.index();
        if let Some(kept) = self.floors.iter_mut().find(|f| f.chain_id == chain.chain_id) {
            kept.iteration = kept.iteration.max(floor);
            kept.generation = kept.generation.max(chain.generation);
            return;
        }
        self.floors.push_back(Floor { chain_id: chain.chain_id, iteration: floor, generation: chain.generation });
        while self.floors.len() > MAX_CHAIN_FLOORS {
            if let Some(forgotten) = self.floors.pop_front() {
                self.min_generation = self.min_generation.max(forgotten.generation.saturating_add(1));
            }
        }
    }

    /// The lowest generation of a new chain of the sender still taken in
    /// (sent in requests, PROTOCOL.md 18.7).
    pub(crate) fn min_generation(&self) -> u64 {
        self.min_generation
    }

    /// Gives up every chain of the sender (it was removed from the group):
    /// their keys are dropped and only their floors kept, so that a chain
    /// of it taken again if it is added back opens none of the messages
    /// read before. What was asked of it, and the last answer it was
    /// given, are forgotten.
    pub(crate) fn retire_all(&mut self) {
        while let Some(chain) = self.chains.pop_front() {
            self.retire(&chain);
        }
        self.requested.clear();
        self.requests = 0;
        self.answer = None;
    }

    /// Whether nothing but floors is kept (what a removed member's row
    /// holds).
    pub(crate) fn only_floors(&self) -> bool {
        self.chains.is_empty() && self.requested.is_empty() && self.requests == 0 && self.answer.is_none()
    }

    /// The iteration from which a chain given up may open messages again
    /// (`None`: no chain of that id was given up).
    pub(crate) fn floor(&self, chain_id: u32) -> Option<u32> {
        self.floors.iter().find(|f| f.chain_id == chain_id).map(|f| f.iteration)
    }

    /// Counts a new request for `chain_id` if the limits allow one: at most
    /// [`MAX_GROUP_KEY_REQUESTS`] per chain id among the last
    /// [`MAX_REQUESTED_CHAINS`] chain ids asked and not received (a new one
    /// takes the place of the oldest), and at most
    /// [`MAX_GROUP_REQUESTS_PER_SENDER`] in all until the sender proves
    /// itself again (a distribution, or a message that decrypts). The
    /// request made is then kept with [`Self::keep_request`].
    pub(crate) fn count_request(&mut self, chain_id: u32) -> bool {
        if self.requests >= MAX_GROUP_REQUESTS_PER_SENDER {
            return false;
        }
        if let Some(asked) = self.requested.iter_mut().find(|a| a.chain_id == chain_id) {
            if asked.count >= MAX_GROUP_KEY_REQUESTS {
                return false;
            }
            asked.count = asked.count.saturating_add(1);
            self.requests = self.requests.saturating_add(1);
            return true;
        }
        // A new chain id takes the place of the oldest one asked for: chain
        // ids that never come (made up by a forger, or rotated away) cannot
        // keep a device from asking for one that does.
        if self.requested.len() >= MAX_REQUESTED_CHAINS {
            self.requested.remove(0);
        }
        self.requested.push(Asked { chain_id, count: 1, message: None });
        self.requests = self.requests.saturating_add(1);
        true
    }

    /// Keeps `message`, the request just counted for `chain_id`, to hand
    /// again ([`Self::last_request`]).
    pub(crate) fn keep_request(&mut self, chain_id: u32, message: Vec<u8>) {
        if let Some(asked) = self.requested.iter_mut().find(|a| a.chain_id == chain_id) {
            asked.message = Some(message);
        }
    }

    /// The last request made for `chain_id`, if it is still asked for.
    pub(crate) fn last_request(&self, chain_id: u32) -> Option<&[u8]> {
        self.requested.iter().find(|a| a.chain_id == chain_id)?.message.as_deref()
    }

    /// Keeps `message`, an answer that gives the member our chain
    /// `chain_id` from `iteration`, to hand again ([`Self::last_answer`]).
    pub(crate) fn keep_answer(&mut self, chain_id: u32, iteration: u32, message: Vec<u8>) {
        self.answer = Some(Answered { chain_id, message, iteration });
    }

    /// The last answer given the member, if it gives our chain `chain_id`,
    /// with the iteration from which it gives it.
    pub(crate) fn last_answer(&self, chain_id: u32) -> Option<(&[u8], u32)> {
        self.answer.as_ref().filter(|a| a.chain_id == chain_id).map(|a| (a.message.as_slice(), a.iteration))
    }

    /// The last answer, for storage.
    pub(crate) fn answer_record(&self) -> Option<storage::LastAnswer> {
        self.answer.as_ref().map(|a| storage::LastAnswer {
            chain_id: a.chain_id,
            message: a.message.clone(),
            iteration: a.iteration,
        })
    }

    /// Requests made since the sender last proved itself.
    pub(crate) fn requests(&self) -> u32 {
        self.requests
    }

    /// The floors, for storage.
    pub(crate) fn floor_records(&self) -> Vec<storage::ChainFloor> {
        self.floors
            .iter()
            .map(|f| storage::ChainFloor { chain_id: f.chain_id, iteration: f.iteration, generation: f.generation })
            .collect()
    }

    pub(crate) fn to_records(&self) -> (Vec<storage::SenderChain>, Vec<storage::RequestedChain>) {
        let chains = self
            .chains
            .iter()
            .map(|c| storage::SenderChain {
                chain_id: c.chain_id,
                signing_key: c.signing_key.as_bytes().to_vec(),
                identity_key: c.identity.as_bytes().to_vec(),
                iteration: c.chain.index(),
                chain_key: c.chain.as_secret().as_bytes().to_vec(),
                skipped: c
                    .skipped
                    .iter()
                    .map(|(iteration, seed)| storage::GroupSkippedKey {
                        iteration: *iteration,
                        seed: seed.as_bytes().to_vec(),
                    })
                    .collect(),
                used: c.used.iter().flat_map(|(i, tag)| i.to_be_bytes().into_iter().chain(*tag)).collect(),
                evicted: to_ranges(c.evicted.iter().copied()),
                generation: c.generation,
            })
            .collect();
        let requested = self
            .requested
            .iter()
            .map(|a| storage::RequestedChain {
                chain_id: a.chain_id,
                count: a.count,
                message: a.message.clone().unwrap_or_default(),
            })
            .collect();
        (chains, requested)
    }

    /// Loads stored chains, checking every field and every limit.
    pub(crate) fn from_records(
        chains: &[storage::SenderChain],
        requested: &[storage::RequestedChain],
        requests: u32,
        floors: &[storage::ChainFloor],
        answer: Option<&storage::LastAnswer>,
        min_generation: u64,
    ) -> Result<Self, DecodeError> {
        // At most the limit, one per chain id, none of a chain kept.
        let floor_ids: std::collections::BTreeSet<u32> = floors.iter().map(|f| f.chain_id).collect();
        if floors.len() > MAX_CHAIN_FLOORS
            || floor_ids.len() != floors.len()
            || chains.iter().any(|c| floor_ids.contains(&c.chain_id))
        {
            return Err(DecodeError::InvalidValue("sender.floors"));
        }
        if requests > MAX_GROUP_REQUESTS_PER_SENDER
            || requested.iter().map(|r| r.count).fold(0u32, u32::saturating_add) > requests
        {
            return Err(DecodeError::InvalidValue("sender.requests"));
        }
        if chains.len() > MAX_SENDER_CHAINS {
            return Err(DecodeError::InvalidValue("sender.chains"));
        }
        // Each chain id once; a kept message (empty: none, from an earlier
        // release) within the limit.
        let requested_ids: std::collections::BTreeSet<u32> = requested.iter().map(|r| r.chain_id).collect();
        if requested.len() > MAX_REQUESTED_CHAINS
            || requested_ids.len() != requested.len()
            || requested.iter().any(|r| {
                r.count == 0 || r.count > MAX_GROUP_KEY_REQUESTS || r.message.len() > MAX_KEPT_CONTROL_MESSAGE_LEN
            })
        {
            return Err(DecodeError::InvalidValue("sender.requested"));
        }
        if answer.is_some_and(|a| a.message.is_empty() || a.message.len() > MAX_KEPT_CONTROL_MESSAGE_LEN) {
            return Err(DecodeError::InvalidValue("sender.last_answer"));
        }
        let mut out = Self {
            chains: VecDeque::with_capacity(chains.len()),
            floors: floors
                .iter()
                .map(|f| Floor { chain_id: f.chain_id, iteration: f.iteration, generation: f.generation })
                .collect(),
            requested: requested
                .iter()
                .map(|r| Asked {
                    chain_id: r.chain_id,
                    count: r.count,
                    message: (!r.message.is_empty()).then(|| r.message.clone()),
                })
                .collect(),
            requests,
            answer: answer.map(|a| Answered {
                chain_id: a.chain_id,
                message: a.message.clone(),
                iteration: a.iteration,
            }),
            min_generation,
        };
        let mut total_evicted = 0usize;
        for c in chains {
            if out.chains.iter().any(|kept| kept.chain_id == c.chain_id) {
                return Err(DecodeError::InvalidValue("sender.chain_id"));
            }
            let mut skipped = VecDeque::with_capacity(c.skipped.len());
            for key in &c.skipped {
                if key.iteration >= c.iteration || skipped.back().is_some_and(|(last, _)| *last >= key.iteration) {
                    return Err(DecodeError::InvalidValue("sender.skipped"));
                }
                skipped.push_back((key.iteration, Secret32::from_slice(&key.seed, "sender.skipped.seed")?));
            }
            if c.used.len() % (4 + SALT_TAG_LEN) != 0 {
                return Err(DecodeError::InvalidLength {
                    field: "sender.used",
                    expected: c.used.len().next_multiple_of(4 + SALT_TAG_LEN),
                    actual: c.used.len(),
                });
            }
            let used = c
                .used
                .chunks_exact(4 + SALT_TAG_LEN)
                .filter_map(|entry| {
                    let (iteration, tag) = entry.split_first_chunk::<4>()?;
                    Some((u32::from_be_bytes(*iteration), tag.first_chunk::<SALT_TAG_LEN>().copied()?))
                })
                .collect::<VecDeque<_>>();
            // Evicted iterations: within the limit (counted before any is
            // expanded), derived, neither skipped nor used.
            total_evicted = total_evicted.saturating_add(ranges_len(&c.evicted, "sender.evicted")?);
            if total_evicted > MAX_GROUP_EVICTED_ITERATIONS {
                return Err(DecodeError::InvalidValue("sender.limits"));
            }
            let mut evicted = VecDeque::new();
            for iteration in skipped_ranges(&c.evicted, "sender.evicted")? {
                if iteration >= c.iteration
                    || skipped.binary_search_by_key(&iteration, |(i, _)| *i).is_ok()
                    || used.iter().any(|(i, _)| *i == iteration)
                {
                    return Err(DecodeError::InvalidValue("sender.evicted"));
                }
                evicted.push_back(iteration);
            }
            out.chains.push_back(Chain {
                chain_id: c.chain_id,
                generation: c.generation,
                signing_key: IdentityKey::from_stored_slice(&c.signing_key, "sender.signing_key")?,
                verifying: OnceLock::new(),
                identity: IdentityKey::from_stored_slice(&c.identity_key, "sender.identity_key")?,
                chain: ChainKey::new(Secret32::from_slice(&c.chain_key, "sender.chain_key")?, c.iteration),
                skipped,
                used,
                evicted,
            });
        }
        if out.skipped_count() > MAX_GROUP_SKIPPED_KEYS
            || out.chains.iter().map(|c| c.used.len()).sum::<usize>() > MAX_GROUP_USED_ITERATIONS
        {
            return Err(DecodeError::InvalidValue("sender.limits"));
        }
        Ok(out)
    }
}
