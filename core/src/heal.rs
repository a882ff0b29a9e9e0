//! Healing: message ids, and what a session record remembers of its resets
//! and resends (PROTOCOL.md 20).
//!
//! A device that finds a session with a peer out of step (a message
//! reported with [`Recovery::Heal`](crate::Recovery::Heal)) starts a new
//! session from the peer's fresh bundle and sends inside it a *reset* naming
//! the messages it could not read, by their [`message_id`]s
//! ([`Device::heal`](crate::device::Device::heal)). The peer installs the new
//! session and sends again, from its sealed outbox, those it still holds
//! (*resends*, each carrying the id of the message it replaces). This module
//! holds the pure parts: the id, and the record's bookkeeping that makes a
//! resend reach the app at most once.

use std::collections::VecDeque;

use samizdat_proto::storage;
use sha2::{Digest, Sha256};

use crate::{
    DecodeError,
    limits::{MAX_AWAITED_RESENDS, MAX_DELIVERED_RESENDS, MAX_RESET_IDS, MAX_RESET_NAMINGS},
};

/// The length of a [`MessageId`].
pub const MESSAGE_ID_LEN: usize = 16;

/// A message's id: the first 16 bytes of SHA-256 over a label and the
/// message's wire bytes (PROTOCOL.md 20.2). Both sides compute it from the
/// same bytes; it names a message in a reset and in the outbox, and it is
/// what an app can put in its delivery receipts
/// ([`Device::acknowledge`](crate::device::Device::acknowledge)).
pub type MessageId = [u8; MESSAGE_ID_LEN];

/// The label hashed before the wire bytes.
const MESSAGE_ID_LABEL: &[u8] = b"Samizdat_MessageId_v1";

/// The id of the message whose wire bytes are `wire` (any bytes: the id of
/// something that does not parse is defined too).
///
/// # Examples
///
/// ```
/// let id = samizdat::heal::message_id(b"some wire bytes");
/// assert_eq!(id.len(), 16);
/// assert_ne!(id, samizdat::heal::message_id(b"other wire bytes"));
/// ```
pub fn message_id(wire: &[u8]) -> MessageId {
    let digest = Sha256::new().chain_update(MESSAGE_ID_LABEL).chain_update(wire).finalize();
    let mut id = [0; MESSAGE_ID_LEN];
    id.copy_from_slice(digest.get(..MESSAGE_ID_LEN).unwrap_or(&[0; MESSAGE_ID_LEN]));
    id
}

/// Parses a stored or received id.
pub(crate) fn id_from_slice(bytes: &[u8], field: &'static str) -> Result<MessageId, DecodeError> {
    MessageId::try_from(bytes).map_err(|_| DecodeError::InvalidLength {
        field,
        expected: MESSAGE_ID_LEN,
        actual: bytes.len(),
    })
}

/// What a session record remembers of healing with its peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Healing {
    /// When we last sent the peer a reset, if ever.
    pub(crate) last_reset_at: Option<u64>,
    /// Ids our resets named that no resend has brought yet, oldest first,
    /// with how many resets named each.
    pub(crate) awaited: VecDeque<(MessageId, u32)>,
    /// Ids a resend brought to the app, oldest first.
    pub(crate) delivered: VecDeque<MessageId>,
}

impl Healing {
    /// The first time a reset may be sent under `interval`, if one was sent.
    pub(crate) fn next_reset_at(&self, interval: u64) -> Option<u64> {
        self.last_reset_at.map(|last| last.saturating_add(interval))
    }

    /// What the next reset names: the awaited ids not yet named
    /// [`MAX_RESET_NAMINGS`] times, then `ids` (the messages the app could
    /// not read now) not delivered already; the latest
    /// [`MAX_RESET_IDS`] of them.
    pub(crate) fn to_name(&self, ids: &[MessageId]) -> Vec<MessageId> {
        let mut named: Vec<MessageId> = Vec::new();
        let again = self.awaited.iter().filter(|(_, n)| *n < MAX_RESET_NAMINGS).map(|(id, _)| id);
        for id in again.chain(ids.iter()) {
            if !named.contains(id) && !self.delivered.contains(id) && !self.given_up(id) {
                named.push(*id);
            }
        }
        let excess = named.len().saturating_sub(MAX_RESET_IDS);
        named.drain(..excess);
        named
    }

    /// Whether `id` is awaited but was named the most times already.
    fn given_up(&self, id: &MessageId) -> bool {
        self.awaited.iter().any(|(a, n)| a == id && *n >= MAX_RESET_NAMINGS)
    }

    /// How many awaited ids a reset would still name.
    pub(crate) fn awaiting(&self) -> usize {
        self.awaited.iter().filter(|(_, n)| *n < MAX_RESET_NAMINGS).count()
    }

    /// A reset naming `named` (from [`Self::to_name`]) was sent at `now`:
    /// each is awaited, named once more; an awaited id named the most times
    /// and not named now is given up (the oldest awaited make room).
    pub(crate) fn reset_sent(&mut self, now: u64, named: &[MessageId]) {
        self.last_reset_at = Some(now);
        self.awaited.retain(|(id, n)| *n < MAX_RESET_NAMINGS || named.contains(id));
        for id in named {
            match self.awaited.iter_mut().find(|(a, _)| a == id) {
                Some((_, n)) => *n = n.saturating_add(1).min(MAX_RESET_NAMINGS),
                None => {
                    if self.awaited.len() >= MAX_AWAITED_RESENDS {
                        self.awaited.pop_front();
                    }
                    self.awaited.push_back((*id, 1));
                }
            }
        }
    }

    /// Whether a resend of `id` is for the app: a message our reset named,
    /// and not yet brought by another resend or read as first sent.
    pub(crate) fn awaits(&self, id: &MessageId) -> bool {
        self.awaited.iter().any(|(a, _)| a == id)
    }

    /// Whether the message `id` reached the app by a resend already: its
    /// first copy, read now, is a duplicate.
    pub(crate) fn was_resent(&self, id: &MessageId) -> bool {
        self.delivered.contains(id)
    }

    /// The message `id` reached the app (as first sent if `!resent`): a
    /// resend of it is no longer awaited, and once resent, the first copy is
    /// a duplicate.
    pub(crate) fn delivered(&mut self, id: &MessageId, resent: bool) {
        let was_awaited = self.awaited.iter().position(|(a, _)| a == id).map(|i| self.awaited.remove(i));
        if resent && was_awaited.is_some() {
            push_bounded(&mut self.delivered, *id, MAX_DELIVERED_RESENDS);
        }
    }

    pub(crate) fn to_proto(&self) -> Option<storage::Healing> {
        if *self == Self::default() {
            return None;
        }
        Some(storage::Healing {
            reset_sent: self.last_reset_at.is_some(),
            last_reset_at: self.last_reset_at.unwrap_or(0),
            awaited: self.awaited.iter().map(|(id, _)| id.to_vec()).collect(),
            delivered: self.delivered.iter().map(|id| id.to_vec()).collect(),
            namings: self.awaited.iter().map(|(_, n)| *n).collect(),
        })
    }

    /// Parses stored bookkeeping: every id 16 bytes, each list within its
    /// bound and without repeats, a naming count of 1 to
    /// [`MAX_RESET_NAMINGS`] for each awaited id (PROTOCOL.md 13.4, 20.4).
    pub(crate) fn from_proto(stored: Option<&storage::Healing>) -> Result<Self, DecodeError> {
        let Some(stored) = stored else { return Ok(Self::default()) };
        if !stored.reset_sent && stored.last_reset_at != 0 {
            return Err(DecodeError::InvalidValue("healing.last_reset_at"));
        }
        let ids = |list: &[Vec<u8>], max: usize, field: &'static str| -> Result<VecDeque<MessageId>, DecodeError> {
            if list.len() > max {
                return Err(DecodeError::InvalidValue(field));
            }
            let ids: VecDeque<MessageId> = list.iter().map(|id| id_from_slice(id, field)).collect::<Result<_, _>>()?;
            if ids.iter().enumerate().any(|(i, id)| ids.iter().skip(i + 1).any(|other| other == id)) {
                return Err(DecodeError::InvalidValue(field));
            }
            Ok(ids)
        };
        let awaited = ids(&stored.awaited, MAX_AWAITED_RESENDS, "healing.awaited")?;
        if stored.namings.len() != awaited.len() || stored.namings.iter().any(|n| !(1..=MAX_RESET_NAMINGS).contains(n))
        {
            return Err(DecodeError::InvalidValue("healing.namings"));
        }
        let healing = Self {
            last_reset_at: stored.reset_sent.then_some(stored.last_reset_at),
            awaited: awaited.into_iter().zip(stored.namings.iter().copied()).collect(),
            delivered: ids(&stored.delivered, MAX_DELIVERED_RESENDS, "healing.delivered")?,
        };
        if healing.awaited.iter().any(|(id, _)| healing.delivered.contains(id)) {
            return Err(DecodeError::InvalidValue("healing.awaited"));
        }
        Ok(healing)
    }
}

fn push_bounded(list: &mut VecDeque<MessageId>, id: MessageId, max: usize) {
    if list.len() >= max {
        list.pop_front();
    }
    list.push_back(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_sha256_of_the_label_and_the_bytes_cut_to_16() {
        // Computed independently: printf 'Samizdat_MessageId_v1abc' | sha256sum
        assert_eq!(hex::encode(message_id(b"abc")), "cf3b0fd72967d02ede8d15fd99aa461d");
    }

    #[test]
    fn a_resend_reaches_the_app_once_and_then_its_original_is_a_duplicate() {
        let (a, b) = (message_id(b"a"), message_id(b"b"));
        let mut healing = Healing::default();
        let named = healing.to_name(&[a, b, a]);
        assert_eq!(named, vec![a, b]);
        healing.reset_sent(10, &named);
        assert!(healing.awaits(&a) && healing.awaiting() == 2);
        healing.delivered(&a, true);
        assert!(!healing.awaits(&a) && healing.was_resent(&a));
        // b read as first sent: its resend is no longer for the app, and
        // its first copy is not a duplicate either.
        healing.delivered(&b, false);
        assert!(!healing.awaits(&b) && !healing.was_resent(&b));
        // A delivered id is not named again.
        assert!(healing.to_name(&[a]).is_empty());
        let stored = healing.to_proto();
        assert_eq!(Healing::from_proto(stored.as_ref()).unwrap(), healing);
    }

    #[test]
    fn an_id_is_named_at_most_the_limit_of_times_then_given_up() {
        let lost = message_id(b"lost");
        let mut healing = Healing::default();
        for round in 1..=MAX_RESET_NAMINGS {
            // Named again by itself, the app passing nothing new.
            let given: &[MessageId] = if round == 1 { &[lost] } else { &[] };
            let named = healing.to_name(given);
            assert_eq!(named, vec![lost], "round {round}");
            healing.reset_sent(u64::from(round), &named);
        }
        assert_eq!(healing.awaiting(), 0);
        // Given up: neither named again alone nor when the app names it.
        assert!(healing.to_name(&[lost]).is_empty());
        healing.reset_sent(9, &[]);
        assert!(!healing.awaits(&lost), "given up when a reset goes without it");
    }

    #[test]
    fn the_lists_are_bounded_and_checked_when_loaded() {
        let mut healing = Healing::default();
        let ids: Vec<MessageId> = (0..MAX_AWAITED_RESENDS + 5).map(|i| message_id(&i.to_le_bytes())).collect();
        let named = healing.to_name(&ids);
        assert_eq!(named.len(), MAX_RESET_IDS);
        assert_eq!(named.first(), ids.get(ids.len() - MAX_RESET_IDS), "the latest");
        healing.reset_sent(0, &named);
        assert_eq!(healing.awaited.len(), MAX_AWAITED_RESENDS);
        let mut stored = healing.to_proto().unwrap();
        stored.awaited.push(message_id(b"one more").to_vec());
        stored.namings.push(1);
        assert!(Healing::from_proto(Some(&stored)).is_err(), "too many");
        stored.awaited.truncate(2);
        stored.namings.truncate(2);
        assert!(Healing::from_proto(Some(&stored)).is_ok());
        stored.namings[1] = MAX_RESET_NAMINGS + 1;
        assert!(Healing::from_proto(Some(&stored)).is_err(), "named too often");
        stored.namings[1] = 0;
        assert!(Healing::from_proto(Some(&stored)).is_err(), "never named");
        stored.namings.truncate(1);
        assert!(Healing::from_proto(Some(&stored)).is_err(), "a count missing");
        stored.namings.push(1);
        stored.awaited[1] = stored.awaited[0].clone();
        assert!(Healing::from_proto(Some(&stored)).is_err(), "a repeat");
        stored.awaited[1] = vec![0; 15];
        assert!(Healing::from_proto(Some(&stored)).is_err(), "a short id");
        stored.awaited.truncate(1);
        stored.namings.truncate(1);
        stored.delivered = vec![stored.awaited[0].clone()];
        assert!(Healing::from_proto(Some(&stored)).is_err(), "awaited and delivered");
        let never = storage::Healing { reset_sent: false, last_reset_at: 5, ..Default::default() };
        assert!(Healing::from_proto(Some(&never)).is_err(), "a time without a reset");
    }
}
