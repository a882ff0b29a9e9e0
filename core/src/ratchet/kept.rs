//! What an archived session state keeps once the session healed: its
//! receiving chains, closed, with their skipped message keys and remembered
//! counters (PROTOCOL.md 9.6, 9.10).
//!
//! A [`KeptKeys`] decrypts only a message whose key it still holds (a
//! message in flight when the session moved on). It has no root key, no
//! ratchet key pair, no chain key and no next header key: it can derive no
//! key and take no DH step, so a copy of the full state made before the
//! session healed gives an attacker no way back in.

use std::{collections::VecDeque, fmt};

use samizdat_proto::storage;

use super::{
    DecryptPlan, Found, PlanError, PlanKind, Seeds, chain_to_record, chains_from_record, evict,
    header::nonce_of,
    open_body,
    receiver::{ReceivingChain, nonce_tag},
    try_chain,
};
use crate::{DecodeError, DecryptError, limits::MAX_ASSOCIATED_DATA_LEN, padding::ContentType, wire::RatchetMessage};

/// The closed receiving chains of an archived state.
pub(crate) struct KeptKeys {
    associated_data: Vec<u8>,
    /// Oldest first, all closed.
    receiving: VecDeque<ReceivingChain>,
}

impl KeptKeys {
    pub(crate) fn new(associated_data: Vec<u8>, receiving: VecDeque<ReceivingChain>) -> Self {
        Self { associated_data, receiving }
    }

    /// The session's associated data.
    pub(crate) fn associated_data(&self) -> &[u8] {
        &self.associated_data
    }

    /// The receiving chains, oldest first.
    pub(crate) fn chains(&self) -> &VecDeque<ReceivingChain> {
        &self.receiving
    }

    /// The receiving chains, to attach seeds stored apart.
    pub(crate) fn chains_mut(&mut self) -> &mut VecDeque<ReceivingChain> {
        &mut self.receiving
    }

    /// How many skipped message keys are kept.
    pub(crate) fn stored_skipped_keys(&self) -> usize {
        self.receiving.iter().map(|c| c.skipped.len()).sum()
    }

    /// Decrypts `message` with a kept key, without changing anything.
    pub(crate) fn plan_decrypt(
        &self,
        message: &RatchetMessage,
    ) -> Result<(Vec<u8>, ContentType, DecryptPlan), PlanError> {
        let tag = nonce_tag(&nonce_of(message.header()));
        let ad = &self.associated_data;
        let last = self.receiving.len().saturating_sub(1);
        let (message_key, found) = self
            .receiving
            .iter()
            .enumerate()
            .rev()
            .find_map(|(index, chain)| try_chain(index, chain, message, ad, &tag))
            .unwrap_or(Err(DecryptError::NoMatchingState.into()))
            .map_err(|error| match error {
                // The newest chain was cut where we had got to, not where the
                // peer stopped: a message past it is one whose key was never
                // derived (and never will be), not a rollback.
                PlanError::Decrypt(DecryptError::Rollback { counter })
                    if self.receiving.get(last).is_some_and(|chain| counter >= chain.next_counter()) =>
                {
                    DecryptError::NoMatchingState.into()
                }
                error => error,
            })?;
        // Every chain is closed: a key is found among the skipped ones, or not at all.
        let Found::Skipped { chain, position } = found else {
            return Err(DecryptError::NoMatchingState.into());
        };
        let (plaintext, counter, content) = open_body(ad, message, &message_key)?;
        Ok((
            plaintext,
            content,
            DecryptPlan { kind: PlanKind::Skipped { chain, position }, used: (counter, tag), left_answered: false },
        ))
    }

    /// Applies a plan made by [`Self::plan_decrypt`] on this very value.
    pub(crate) fn apply(&mut self, plan: DecryptPlan) {
        if let PlanKind::Skipped { chain, position } = plan.kind
            && let Some(chain) = self.receiving.get_mut(chain)
        {
            chain.skipped.remove(position);
            chain.used.push_back(plan.used);
        }
        evict(&mut self.receiving);
    }

    /// The stored form, with the seeds in it or apart (as
    /// [`super::DoubleRatchet::to_record_with`]).
    pub(crate) fn to_record_with(&self, seeds: Seeds) -> storage::KeptKeys {
        storage::KeptKeys {
            associated_data: self.associated_data.clone(),
            receiving: self.receiving.iter().map(|chain| chain_to_record(chain, seeds)).collect(),
        }
    }

    pub(crate) fn from_record(record: &storage::KeptKeys, seeds: Seeds) -> Result<Self, DecodeError> {
        if record.associated_data.len() > MAX_ASSOCIATED_DATA_LEN {
            return Err(DecodeError::InvalidValue("kept.associated_data"));
        }
        let receiving = chains_from_record(&record.receiving, false, seeds)?;
        Ok(Self { associated_data: record.associated_data.clone(), receiving })
    }
}

impl fmt::Debug for KeptKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptKeys").field("receiving_chains", &self.receiving).finish_non_exhaustive()
    }
}
