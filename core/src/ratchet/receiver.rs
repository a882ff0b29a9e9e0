//! Receiving chains and the message keys skipped on them.
//!
//! With header encryption the receiver cannot index skipped keys by the
//! sender's ratchet key (it is inside the encrypted header), so skipped keys
//! live with the receiving chain whose header key opens their header: a chain
//! is `(DHr, HKr, CKr, Nr, skipped keys)`. Only the current (newest) chain
//! keeps its chain key; when a DH step closes a chain, its keys up to the
//! peer's `PN` are derived and stored, and the chain key is dropped.
//!
//! A chain also remembers, for the counters it decrypted most recently, a
//! [`NonceTag`] of the message that used each: a replay of that message is a
//! duplicate, while another message on the same counter can only come from a
//! sender whose state went backwards (restored, cloned or forked): a
//! rollback.

use std::{collections::VecDeque, fmt};

use super::{
    chain::ChainKey,
    header::{HEADER_NONCE_LEN, HeaderKey},
    message_key::MessageKey,
};
use crate::keys::X25519PublicKey;

/// Length of a [`NonceTag`].
pub(crate) const NONCE_TAG_LEN: usize = 8;

/// What a chain remembers of a message it decrypted: the first 8 bytes of its
/// header nonce. The nonce is fresh randomness sealed into the authenticated
/// header, so only the sender can make another message with the same counter,
/// and then (but with probability 2^-64) with another tag.
pub(crate) type NonceTag = [u8; NONCE_TAG_LEN];

/// The tag of a message with header nonce `nonce`.
pub(crate) fn nonce_tag(nonce: &[u8; HEADER_NONCE_LEN]) -> NonceTag {
    nonce.first_chunk::<NONCE_TAG_LEN>().copied().unwrap_or_default()
}

/// One receiving chain.
#[derive(Clone)]
pub(crate) struct ReceivingChain {
    /// The peer's ratchet public key `DHr` of this chain.
    pub(crate) ratchet_key: X25519PublicKey,
    /// The header key `HKr` of this chain.
    pub(crate) header_key: HeaderKey,
    /// `CKr`, only on the current chain.
    chain_key: Option<ChainKey>,
    /// `Nr` of a closed chain (the current chain's is its chain key's index).
    closed_at: u32,
    /// Skipped message keys, in increasing counter order.
    pub(crate) skipped: VecDeque<MessageKey>,
    /// Counters decrypted on this chain and the tags of their messages, in
    /// the order they were decrypted (bounded per state by
    /// [`MAX_USED_COUNTERS`](crate::limits::MAX_USED_COUNTERS)).
    pub(crate) used: VecDeque<(u32, NonceTag)>,
    /// Counters whose skipped keys were evicted unused, increasing (bounded
    /// per state by [`MAX_EVICTED_COUNTERS`](crate::limits::MAX_EVICTED_COUNTERS)).
    pub(crate) evicted: VecDeque<u32>,
}

impl ReceivingChain {
    pub(crate) fn new(
        ratchet_key: X25519PublicKey,
        header_key: HeaderKey,
        chain_key: Option<ChainKey>,
        closed_at: u32,
        skipped: VecDeque<MessageKey>,
        used: VecDeque<(u32, NonceTag)>,
    ) -> Self {
        Self { ratchet_key, header_key, chain_key, closed_at, skipped, used, evicted: VecDeque::new() }
    }

    /// This chain with the counters `evicted` (increasing) remembered as
    /// evicted.
    pub(crate) fn with_evicted(mut self, evicted: VecDeque<u32>) -> Self {
        self.evicted = evicted;
        self
    }

    /// Whether the key of `counter` was evicted unused (and that is still
    /// remembered).
    pub(crate) fn was_evicted(&self, counter: u32) -> bool {
        self.evicted.binary_search(&counter).is_ok()
    }

    /// Drops the `count` oldest skipped keys, remembering their counters as
    /// evicted.
    pub(crate) fn evict_skipped(&mut self, count: usize) {
        let count = count.min(self.skipped.len());
        for key in self.skipped.drain(..count) {
            remember_evicted(&mut self.evicted, key.counter());
        }
    }

    /// `Nr`: the counter of the next message not yet derived on this chain.
    pub(crate) fn next_counter(&self) -> u32 {
        self.chain_key.as_ref().map_or(self.closed_at, ChainKey::index)
    }

    pub(crate) fn chain_key(&self) -> Option<&ChainKey> {
        self.chain_key.as_ref()
    }

    pub(crate) fn set_chain_key(&mut self, chain_key: ChainKey) {
        self.chain_key = Some(chain_key);
    }

    /// Ends the chain: no key past `Nr` will ever be derived on it.
    pub(crate) fn close(&mut self) {
        if let Some(ck) = self.chain_key.take() {
            self.closed_at = ck.index();
        }
    }

    /// Closes the chain where the peer closed it (its `PN`, up to which the
    /// chain key was derived first): the skipped keys and used counters at
    /// or past `end` are dropped (only forgeries made them), and the chain
    /// ends there.
    pub(crate) fn close_at(&mut self, end: u32) {
        self.skipped.retain(|key| key.counter() < end);
        self.used.retain(|(counter, _)| *counter < end);
        self.evicted.retain(|counter| *counter < end);
        if let Some(ck) = self.chain_key.take() {
            self.closed_at = ck.index().min(end);
        }
    }

    /// The position and key of the skipped message `counter`, if kept.
    pub(crate) fn find_skipped(&self, counter: u32) -> Option<(usize, &MessageKey)> {
        let position = self.skipped.binary_search_by_key(&counter, MessageKey::counter).ok()?;
        self.skipped.get(position).map(|key| (position, key))
    }

    /// The tag of the message that used `counter`, if still remembered.
    pub(crate) fn used_tag(&self, counter: u32) -> Option<&NonceTag> {
        self.used.iter().find(|(c, _)| *c == counter).map(|(_, tag)| tag)
    }
}

/// Adds `counter` to the increasing list `evicted` (once). Skipped keys are
/// evicted lowest first and later ones are higher, so this is an append but
/// for a counter that is somehow not past the last one.
pub(crate) fn remember_evicted(evicted: &mut VecDeque<u32>, counter: u32) {
    match evicted.back() {
        Some(last) if *last >= counter => {
            if let Err(at) = evicted.binary_search(&counter) {
                evicted.insert(at, counter);
            }
        }
        _ => evicted.push_back(counter),
    }
}

/// Forgets the oldest evicted counters (oldest chain first, lowest counter
/// first) until at most [`MAX_EVICTED_COUNTERS`](crate::limits::MAX_EVICTED_COUNTERS)
/// remain over `chains`, the chains of one state.
pub(crate) fn bound_evicted(chains: &mut VecDeque<ReceivingChain>) {
    let total: usize = chains.iter().map(|c| c.evicted.len()).sum();
    let mut excess = total.saturating_sub(crate::limits::MAX_EVICTED_COUNTERS);
    for chain in chains.iter_mut() {
        let len = chain.evicted.len();
        chain.evicted.drain(..excess.min(len));
        excess = excess.saturating_sub(len);
    }
}

impl fmt::Debug for ReceivingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingChain")
            .field("next_counter", &self.next_counter())
            .field("current", &self.chain_key.is_some())
            .field("skipped", &self.skipped.len())
            .field("used", &self.used.len())
            .field("evicted", &self.evicted.len())
            .finish_non_exhaustive()
    }
}
