//! One session state: a Double Ratchet (or what is kept of it) and what the
//! handshake bound it to.

use std::fmt;

use rand_core::CryptoRng;
use samizdat_proto::storage;

use std::collections::VecDeque;

use crate::{
    DecodeError,
    keys::{IdentityKey, MLKEM_CIPHERTEXT_LEN, X25519PublicKey, fixed},
    padding::ContentType,
    ratchet::{DecryptPlan, DoubleRatchet, KeptKeys, PlanError, ReceivingChain, Seeds},
    wire::{PreKeyHeader, RatchetMessage},
};

/// The keys of a state.
pub(crate) enum Keys {
    /// A full ratchet: it can encrypt, decrypt and take DH steps.
    Full(DoubleRatchet),
    /// An archived state cut down once the session healed: it decrypts only
    /// with the skipped keys it kept.
    Kept(KeptKeys),
}

/// A session state.
pub(crate) struct SessionState {
    pub(crate) keys: Keys,
    pub(crate) remote_identity: IdentityKey,
    /// The initiator's ephemeral key of the handshake that built this state.
    pub(crate) base_key: X25519PublicKey,
    pub(crate) initiator: bool,
    /// The prekey header to send until the first reply decrypts (initiator only).
    pub(crate) pending_prekey: Option<PreKeyHeader>,
    /// The record's heal count when the state was cut down to its kept keys.
    pub(crate) kept_since: u64,
    /// For a state we initiated, the record's initiation count just after
    /// (the later of two initiations has the larger); 0 for one we responded to.
    pub(crate) initiated: u64,
    /// Whether this archived state was current, and had heard from the peer,
    /// when the peer's new session replaced it: it may still step, and a
    /// step makes it current again (PROTOCOL.md 9.10). Cleared by a cut.
    pub(crate) displaced: bool,
    /// Whether the state became current again by `SessionRecord::promotes`
    /// since the last heal: rules 4 and 5 bring a state back once only.
    pub(crate) came_back: bool,
    /// Whether this state, a session the peer started, replaced a state that
    /// had heard from the peer when it was installed: until the peer's first
    /// DH step on it (or until it is archived), its messages carry the
    /// header's left-answered flag, which tells a peer still holding that
    /// replaced session as current to follow us here (PROTOCOL.md 9.6 rule
    /// 2, 9.9). Only on the current state.
    pub(crate) left_answered: bool,
    /// Whether this state, our initiation, became current on the peer's
    /// first answer with the left-answered flag (rule 2): the peer left a
    /// session for it, so until the next heal rule 6 does not leave it for
    /// a late message of another session (PROTOCOL.md 9.6, 9.9). Only on the
    /// current state.
    pub(crate) followed: bool,
}

impl SessionState {
    pub(crate) fn is_full(&self) -> bool {
        matches!(self.keys, Keys::Full(_))
    }

    /// Whether this is a state the peer initiated that we have not answered
    /// yet: a responder state with only the peer's first chain, on which we
    /// have not sent. The peer waits for our answer on it (it keeps a
    /// session it initiated until it is answered).
    pub(crate) fn owes_an_answer(&self) -> bool {
        !self.initiator
            && matches!(&self.keys, Keys::Full(ratchet) if ratchet.chains().len() == 1 && !ratchet.has_sent_on_chain())
    }

    /// Whether this is a state we initiated whose first messages the peer
    /// has not answered yet (it still sends the prekey header): the only
    /// kind of archived state a message can make current again.
    pub(crate) fn is_unanswered_initiation(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// Decrypts `message` without changing the state: a full state may take
    /// a DH step if `allow_step`, a kept one only uses its kept keys.
    pub(crate) fn plan_decrypt<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        message: &RatchetMessage,
        allow_step: bool,
    ) -> Result<(Vec<u8>, ContentType, DecryptPlan), PlanError> {
        match &self.keys {
            Keys::Full(ratchet) => ratchet.plan_decrypt(rng, message, allow_step),
            Keys::Kept(kept) => kept.plan_decrypt(message),
        }
    }

    /// Whether `message`'s header opens under this state's next header key
    /// (a DH step of the peer's); `false` for a cut state.
    pub(crate) fn opens_as_step(&self, message: &RatchetMessage) -> bool {
        match &self.keys {
            Keys::Full(ratchet) => ratchet.opens_as_step(message),
            Keys::Kept(_) => false,
        }
    }

    /// Applies a plan made by [`Self::plan_decrypt`] on this very state.
    pub(crate) fn apply(&mut self, plan: DecryptPlan) {
        match &mut self.keys {
            Keys::Full(ratchet) => {
                ratchet.apply(plan);
                // A message on a state we initiated is the peer's reply:
                // stop sending the prekey header.
                self.pending_prekey = None;
            }
            Keys::Kept(kept) => kept.apply(plan),
        }
    }

    /// Cuts a full state down to its kept keys (at heal number `heals`);
    /// `None` if it would keep no key (it is then dropped).
    pub(crate) fn cut(self, heals: u64) -> Option<Self> {
        let Self {
            keys,
            remote_identity,
            base_key,
            initiator,
            pending_prekey: _,
            kept_since,
            initiated,
            displaced: _,
            came_back: _,
            left_answered: _,
            followed: _,
        } = self;
        let (kept, kept_since) = match keys {
            Keys::Full(ratchet) => (ratchet.into_kept_keys(), heals),
            Keys::Kept(kept) => (kept, kept_since),
        };
        (kept.stored_skipped_keys() > 0).then_some(Self {
            keys: Keys::Kept(kept),
            remote_identity,
            base_key,
            initiator,
            pending_prekey: None,
            kept_since,
            initiated,
            displaced: false,
            came_back: false,
            left_answered: false,
            followed: false,
        })
    }

    /// The session's associated data.
    pub(crate) fn ratchet_associated_data(&self) -> &[u8] {
        match &self.keys {
            Keys::Full(ratchet) => ratchet.associated_data(),
            Keys::Kept(kept) => kept.associated_data(),
        }
    }

    /// The receiving chains (with their skipped keys).
    pub(crate) fn chains(&self) -> &VecDeque<ReceivingChain> {
        match &self.keys {
            Keys::Full(ratchet) => ratchet.chains(),
            Keys::Kept(kept) => kept.chains(),
        }
    }

    pub(crate) fn chains_mut(&mut self) -> &mut VecDeque<ReceivingChain> {
        match &mut self.keys {
            Keys::Full(ratchet) => ratchet.chains_mut(),
            Keys::Kept(kept) => kept.chains_mut(),
        }
    }

    /// How many skipped keys the state holds, over all its chains.
    pub(crate) fn skipped_count(&self) -> usize {
        self.chains().iter().map(|chain| chain.skipped.len()).sum()
    }

    /// Whether a kept state has used up its keys (it is then dropped).
    pub(crate) fn is_spent(&self) -> bool {
        matches!(&self.keys, Keys::Kept(kept) if kept.stored_skipped_keys() == 0)
    }

    pub(crate) fn to_record(&self, seeds: Seeds) -> storage::SessionState {
        let (ratchet, kept) = match &self.keys {
            Keys::Full(ratchet) => (Some(ratchet.to_record_with(seeds)), None),
            Keys::Kept(kept) => (None, Some(kept.to_record_with(seeds))),
        };
        storage::SessionState {
            ratchet,
            remote_identity: self.remote_identity.as_bytes().to_vec(),
            base_key: self.base_key.as_bytes().to_vec(),
            initiator: self.initiator,
            pending_prekey: self.pending_prekey.as_ref().map(|h| storage::PendingPreKey {
                signed_prekey_id: h.signed_prekey_id,
                one_time_prekey_id: h.one_time_prekey_id,
                pq_prekey_id: h.pq_prekey_id,
                pq_ciphertext: h.pq_ciphertext.to_vec(),
                identity_key: h.identity_key.as_bytes().to_vec(),
            }),
            kept,
            kept_since: self.kept_since,
            initiated: self.initiated,
            displaced: self.displaced,
            came_back: self.came_back,
            left_answered: self.left_answered,
            followed: self.followed,
        }
    }

    pub(crate) fn from_record(record: &storage::SessionState, seeds: Seeds) -> Result<Self, DecodeError> {
        let keys = match (&record.ratchet, &record.kept) {
            (Some(ratchet), None) if record.kept_since == 0 => {
                Keys::Full(DoubleRatchet::from_record_with(ratchet, seeds)?)
            }
            (None, Some(kept)) => {
                let kept = KeptKeys::from_record(kept, seeds)?;
                if kept.stored_skipped_keys() == 0 {
                    return Err(DecodeError::InvalidValue("kept"));
                }
                Keys::Kept(kept)
            }
            (None, None) => return Err(DecodeError::MissingField("ratchet")),
            _ => return Err(DecodeError::InvalidValue("ratchet")),
        };
        let remote_identity = IdentityKey::from_stored_slice(&record.remote_identity, "remote_identity")?;
        let base_key = X25519PublicKey::from_slice(&record.base_key, "base_key")?;
        let pending_prekey = match &record.pending_prekey {
            None => None,
            // Only a full initiator state that has not heard back sends it.
            Some(p) if record.initiator && matches!(&keys, Keys::Full(r) if !r.has_received()) => Some(PreKeyHeader {
                identity_key: IdentityKey::from_stored_slice(&p.identity_key, "pending_prekey.identity_key")?,
                base_key,
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                pq_prekey_id: p.pq_prekey_id,
                pq_ciphertext: Box::new(fixed::<MLKEM_CIPHERTEXT_LEN>(
                    &p.pq_ciphertext,
                    "pending_prekey.pq_ciphertext",
                )?),
            }),
            Some(_) => return Err(DecodeError::InvalidValue("pending_prekey")),
        };
        if !record.initiator && record.initiated != 0 {
            return Err(DecodeError::InvalidValue("initiated"));
        }
        if record.displaced && (pending_prekey.is_some() || !matches!(keys, Keys::Full(_))) {
            return Err(DecodeError::InvalidValue("displaced"));
        }
        if record.came_back && !matches!(keys, Keys::Full(_)) {
            return Err(DecodeError::InvalidValue("came_back"));
        }
        if record.left_answered && (record.initiator || !matches!(keys, Keys::Full(_))) {
            return Err(DecodeError::InvalidValue("left_answered"));
        }
        if record.followed && (!record.initiator || !matches!(keys, Keys::Full(_))) {
            return Err(DecodeError::InvalidValue("followed"));
        }
        Ok(Self {
            keys,
            remote_identity,
            base_key,
            initiator: record.initiator,
            pending_prekey,
            kept_since: record.kept_since,
            initiated: record.initiated,
            displaced: record.displaced,
            came_back: record.came_back,
            left_answered: record.left_answered,
            followed: record.followed,
        })
    }
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SessionState");
        s.field("remote_identity", &self.remote_identity)
            .field("initiator", &self.initiator)
            .field("pending_prekey", &self.pending_prekey.is_some());
        match &self.keys {
            Keys::Full(ratchet) => s.field("ratchet", ratchet),
            Keys::Kept(kept) => s.field("kept", kept),
        };
        s.finish_non_exhaustive()
    }
}
