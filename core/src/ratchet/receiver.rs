//! Receiving chains and the message keys skipped on them.
//!
//! With header encryption the receiver cannot index skipped keys by the
//! sender's ratchet key (it is inside the encrypted header), so skipped keys
//! live with the receiving chain whose header key opens their header: a chain
//! is `(DHr, HKr, CKr, Nr, skipped keys)`. Only the current (newest) chain
//! keeps its chain key; when a DH step closes a chain, its keys up to the
//! peer's `PN` are derived and stored, and the chain key is dropped.

use std::{collections::VecDeque, fmt};

use super::{chain::ChainKey, header::HeaderKey, message_key::MessageKey};
use crate::keys::X25519PublicKey;

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
}

impl ReceivingChain {
    pub(crate) fn new(
        ratchet_key: X25519PublicKey,
        header_key: HeaderKey,
        chain_key: Option<ChainKey>,
        closed_at: u32,
        skipped: VecDeque<MessageKey>,
    ) -> Self {
        Self { ratchet_key, header_key, chain_key, closed_at, skipped }
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

    /// The position and key of the skipped message `counter`, if kept.
    pub(crate) fn find_skipped(&self, counter: u32) -> Option<(usize, &MessageKey)> {
        let position = self.skipped.binary_search_by_key(&counter, MessageKey::counter).ok()?;
        self.skipped.get(position).map(|key| (position, key))
    }
}

impl fmt::Debug for ReceivingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingChain")
            .field("next_counter", &self.next_counter())
            .field("current", &self.chain_key.is_some())
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}
