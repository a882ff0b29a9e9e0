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
    limits::{CLOCK_CORRECTION, MAX_AWAITED_RESENDS, MAX_DELIVERED_RESENDS, MAX_RESET_IDS, MAX_RESET_NAMINGS},
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
pub(crate) const MESSAGE_ID_LABEL: &[u8] = b"samizdat/v1/message-id";

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

/// Whether some item of `items` appears twice (the lists are at most a few
/// dozen long).
pub(crate) fn has_repeats<T: PartialEq>(items: &[T]) -> bool {
    items.iter().enumerate().any(|(i, item)| items.iter().skip(i.saturating_add(1)).any(|other| other == item))
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
    /// with how many answered resets named each, and whether the last reset
    /// named it.
    pub(crate) awaited: VecDeque<(MessageId, u32, bool)>,
    /// The base key of the session our last reset started.
    pub(crate) last_reset_base_key: Option<[u8; 32]>,
    /// Ids a resend brought to the app, oldest first.
    pub(crate) delivered: VecDeque<MessageId>,
    /// Whether a message of the peer was committed since our last reset:
    /// the peer is not away, so a next heal starts a new session rather
    /// than sending on that reset's again (PROTOCOL.md 20.5).
    pub(crate) heard_since_reset: bool,
    /// Whether our last reset started a new session only because the app
    /// brought unreadable messages not named before, while the reset before
    /// it was outstanding and the peer unheard. Those messages are not
    /// authenticated (anyone who can send under the peer's address makes
    /// them), so they break a repeat once: until the peer is heard from,
    /// later heals repeat this reset (PROTOCOL.md 20.5).
    pub(crate) broke_on_ids: bool,
}

impl Healing {
    /// When a reset at `now` is too soon under `interval`, the first time
    /// one may be sent; `None` if one may be sent now. A clock set back by
    /// more than [`CLOCK_CORRECTION`] since the last reset is taken for a
    /// corrected clock: the last reset's time was wrong, and does not hold
    /// resets back (PROTOCOL.md 20.5).
    pub(crate) fn too_soon(&self, now: u64, interval: u64) -> Option<u64> {
        let last = self.last_reset_at?;
        let retry_at = last.saturating_add(interval);
        match now.checked_sub(last) {
            Some(elapsed) if elapsed >= interval => None,
            Some(_) => Some(retry_at),
            None if last.saturating_sub(now) > CLOCK_CORRECTION => None,
            None => Some(retry_at),
        }
    }

    /// Our last reset was answered (the peer replied on its session, or the
    /// session is gone, which takes a reply): what it named counts as named
    /// once more; or it was not (it may have been lost): it does not count.
    pub(crate) fn last_reset_answered(&mut self, answered: bool) {
        for (_, n, in_last) in &mut self.awaited {
            if *in_last && answered {
                *n = n.saturating_add(1).min(MAX_RESET_NAMINGS);
            }
            *in_last = false;
        }
    }

    /// What the next reset names: the awaited ids not yet named by
    /// [`MAX_RESET_NAMINGS`] answered resets, then `ids` (the messages the
    /// app could not read now) not delivered already; the latest
    /// [`MAX_RESET_IDS`] of them.
    pub(crate) fn to_name(&self, ids: &[MessageId]) -> Vec<MessageId> {
        let mut named: Vec<MessageId> = Vec::new();
        let again = self.awaited.iter().filter(|(_, n, _)| *n < MAX_RESET_NAMINGS).map(|(id, _, _)| id);
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
        self.awaited.iter().any(|(a, n, _)| a == id && *n >= MAX_RESET_NAMINGS)
    }

    /// How many awaited ids a reset would still name.
    pub(crate) fn awaiting(&self) -> usize {
        self.awaited.iter().filter(|(_, n, _)| *n < MAX_RESET_NAMINGS).count()
    }

    /// A reset naming `named` (from [`Self::to_name`]) was sent at `now`, in
    /// the session of base key `base_key`: each is awaited (the oldest
    /// awaited make room), and counts as named once more when that reset is
    /// answered ([`Self::last_reset_answered`]). An id named by the most
    /// answered resets is not named again, but stays awaited: a resend that
    /// comes late still reaches the app.
    pub(crate) fn reset_sent(&mut self, now: u64, base_key: [u8; 32], named: &[MessageId]) {
        self.last_reset_at = Some(now);
        self.last_reset_base_key = Some(base_key);
        self.heard_since_reset = false;
        for id in named {
            match self.awaited.iter_mut().find(|(a, _, _)| a == id) {
                Some((_, _, in_last)) => *in_last = true,
                None => {
                    if self.awaited.len() >= MAX_AWAITED_RESENDS {
                        self.awaited.pop_front();
                    }
                    self.awaited.push_back((*id, 0, true));
                }
            }
        }
    }

    /// A message of the peer was committed: if a reset was sent, the peer
    /// is not away since.
    pub(crate) fn heard(&mut self) {
        if self.last_reset_at.is_some() {
            self.heard_since_reset = true;
        }
    }

    /// Whether a heal may send its reset on the session of our last one
    /// again, if that is still unanswered: only while nothing of the peer's
    /// came since that reset, neither a message read on another session nor
    /// one the app could not read (`ids`, the app's unreadable messages, any
    /// not named already). A peer that sends, and not on that session, read
    /// the reset and stayed elsewhere, or sends from a session we cannot
    /// read: one more message of the reset's session would change nothing.
    /// Unreadable messages are not authenticated, so they break a repeat
    /// only once ([`Self::broke_on_ids`]): forgeries, one per interval,
    /// must not start a session each while the peer is away (each spends
    /// one of its one-time prekeys, and the state it is on would fall off
    /// the record after `MAX_ARCHIVED_STATES`).
    pub(crate) fn may_repeat_reset(&self, ids: &[MessageId]) -> bool {
        !self.heard_since_reset
            && (self.broke_on_ids || ids.iter().all(|id| self.awaits(id) || self.delivered.contains(id)))
    }

    /// What [`Self::broke_on_ids`] becomes with the next reset, which
    /// repeats the last one if `repeat`: unchanged by a repeat; else true
    /// only if a reset is outstanding and the peer unheard (the new session
    /// is started on unreadable ids alone).
    pub(crate) fn breaks_on_ids(&self, repeat: bool) -> bool {
        if repeat { self.broke_on_ids } else { self.last_reset_at.is_some() && !self.heard_since_reset }
    }

    /// Whether a resend of `id` is for the app: a message our reset named,
    /// and not yet brought by another resend or read as first sent.
    pub(crate) fn awaits(&self, id: &MessageId) -> bool {
        self.awaited.iter().any(|(a, _, _)| a == id)
    }

    /// A resend of the message first sent as `id`, whose earlier resends
    /// were `also`, reached the app (it was awaited under one of these ids):
    /// none of them is awaited any more, and a later copy of any is a
    /// duplicate.
    pub(crate) fn resent(&mut self, id: &MessageId, also: &[MessageId]) {
        for any in std::iter::once(id).chain(also) {
            self.awaited.retain(|(a, _, _)| a != any);
            if !self.delivered.contains(any) {
                push_bounded(&mut self.delivered, *any, MAX_DELIVERED_RESENDS);
            }
        }
    }

    /// Whether the message `id` reached the app by a resend already: its
    /// first copy, read now, is a duplicate.
    pub(crate) fn was_resent(&self, id: &MessageId) -> bool {
        self.delivered.contains(id)
    }

    /// The message `id` reached the app as first sent: a resend of it is no
    /// longer awaited.
    pub(crate) fn read_first(&mut self, id: &MessageId) {
        self.awaited.retain(|(a, _, _)| a != id);
    }

    pub(crate) fn to_proto(&self) -> Option<storage::Healing> {
        if *self == Self::default() {
            return None;
        }
        Some(storage::Healing {
            reset_sent: self.last_reset_at.is_some(),
            last_reset_at: self.last_reset_at.unwrap_or(0),
            awaited: self.awaited.iter().map(|(id, _, _)| id.to_vec()).collect(),
            delivered: self.delivered.iter().map(|id| id.to_vec()).collect(),
            namings: self.awaited.iter().map(|(_, n, _)| *n).collect(),
            last_reset_base_key: self.last_reset_base_key.map(|k| k.to_vec()).unwrap_or_default(),
            in_last_reset: self.awaited.iter().map(|(_, _, in_last)| *in_last).collect(),
            heard_since_reset: self.heard_since_reset,
            broke_on_ids: self.broke_on_ids,
        })
    }

    /// Parses stored bookkeeping: every id 16 bytes, each list within its
    /// bound and without repeats, a naming count of 1 to
    /// [`MAX_RESET_NAMINGS`] for each awaited id (PROTOCOL.md 13.4, 20.4).
    pub(crate) fn from_proto(stored: Option<&storage::Healing>) -> Result<Self, DecodeError> {
        let Some(stored) = stored else { return Ok(Self::default()) };
        // Nothing to remember is written as no field: a present, empty one
        // is not the canonical encoding.
        if *stored == storage::Healing::default() {
            return Err(DecodeError::InvalidValue("healing"));
        }
        if !stored.reset_sent && stored.last_reset_at != 0 {
            return Err(DecodeError::InvalidValue("healing.last_reset_at"));
        }
        let ids = |list: &[Vec<u8>], max: usize, field: &'static str| -> Result<VecDeque<MessageId>, DecodeError> {
            if list.len() > max {
                return Err(DecodeError::InvalidValue(field));
            }
            let ids: Vec<MessageId> = list.iter().map(|id| id_from_slice(id, field)).collect::<Result<_, _>>()?;
            if has_repeats(&ids) {
                return Err(DecodeError::InvalidValue(field));
            }
            Ok(ids.into())
        };
        let awaited = ids(&stored.awaited, MAX_AWAITED_RESENDS, "healing.awaited")?;
        if stored.namings.len() != awaited.len() || stored.namings.iter().any(|n| *n > MAX_RESET_NAMINGS) {
            return Err(DecodeError::InvalidValue("healing.namings"));
        }
        if stored.in_last_reset.len() != awaited.len() {
            return Err(DecodeError::InvalidValue("healing.in_last_reset"));
        }
        let last_reset_base_key = match stored.last_reset_base_key.as_slice() {
            [] => None,
            key => Some(<[u8; 32]>::try_from(key).map_err(|_| DecodeError::InvalidLength {
                field: "healing.last_reset_base_key",
                expected: 32,
                actual: key.len(),
            })?),
        };
        // A reset sent, and only then, has a session.
        if last_reset_base_key.is_some() != stored.reset_sent {
            return Err(DecodeError::InvalidValue("healing.last_reset_base_key"));
        }
        let healing = Self {
            last_reset_at: stored.reset_sent.then_some(stored.last_reset_at),
            awaited: awaited
                .into_iter()
                .zip(stored.namings.iter().copied())
                .zip(stored.in_last_reset.iter().copied())
                .map(|((id, n), in_last)| (id, n, in_last))
                .collect(),
            last_reset_base_key,
            delivered: ids(&stored.delivered, MAX_DELIVERED_RESENDS, "healing.delivered")?,
            heard_since_reset: stored.heard_since_reset,
            broke_on_ids: stored.broke_on_ids,
        };
        if healing.awaited.iter().any(|(id, _, _)| healing.delivered.contains(id)) {
            return Err(DecodeError::InvalidValue("healing.awaited"));
        }
        // Heard since a reset only if one was sent.
        if stored.heard_since_reset && !stored.reset_sent {
            return Err(DecodeError::InvalidValue("healing.heard_since_reset"));
        }
        // A reset broke a repeat only if one was sent.
        if stored.broke_on_ids && !stored.reset_sent {
            return Err(DecodeError::InvalidValue("healing.broke_on_ids"));
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

    const BASE: [u8; 32] = [9; 32];

    #[test]
    fn the_id_is_sha256_of_the_label_and_the_bytes_cut_to_16() {
        // Computed independently: printf 'samizdat/v1/message-idabc' | sha256sum
        assert_eq!(hex::encode(message_id(b"abc")), "a8e5bf1e8921649b0338016308de60bd");
    }

    #[test]
    fn a_resend_reaches_the_app_once_and_then_its_original_is_a_duplicate() {
        let (a, b) = (message_id(b"a"), message_id(b"b"));
        let mut healing = Healing::default();
        let named = healing.to_name(&[a, b, a]);
        assert_eq!(named, vec![a, b]);
        healing.reset_sent(10, BASE, &named);
        assert!(healing.awaits(&a) && healing.awaiting() == 2);
        healing.resent(&a, &[]);
        assert!(!healing.awaits(&a) && healing.was_resent(&a));
        // b read as first sent: its resend is no longer for the app, and
        // its first copy is not a duplicate either.
        healing.read_first(&b);
        assert!(!healing.awaits(&b) && !healing.was_resent(&b));
        // A delivered id is not named again.
        assert!(healing.to_name(&[a]).is_empty());
        let stored = healing.to_proto();
        assert_eq!(Healing::from_proto(stored.as_ref()).unwrap(), healing);
    }

    #[test]
    fn an_id_is_given_up_after_the_limit_of_answered_resets_and_lost_ones_do_not_count() {
        let lost = message_id(b"lost");
        let mut healing = Healing::default();
        healing.reset_sent(0, BASE, &healing.to_name(&[lost]));
        // Resets lost on the way (never answered) do not count.
        for round in 1..=10 {
            healing.last_reset_answered(false);
            let named = healing.to_name(&[]);
            assert_eq!(named, vec![lost], "unanswered round {round}");
            healing.reset_sent(round, BASE, &named);
        }
        for round in 1..=MAX_RESET_NAMINGS {
            healing.last_reset_answered(true);
            let named = healing.to_name(&[]);
            if round < MAX_RESET_NAMINGS {
                assert_eq!(named, vec![lost], "answered round {round}");
            } else {
                assert!(named.is_empty(), "named by {round} answered resets: given up");
            }
            healing.reset_sent(100 + u64::from(round), BASE, &named);
        }
        assert_eq!(healing.awaiting(), 0);
        // Given up: not named again even when the app names it; but still
        // awaited, so that a resend that comes late is read.
        assert!(healing.to_name(&[lost]).is_empty());
        assert!(healing.awaits(&lost), "a late resend is still for the app");
    }

    #[test]
    fn the_lists_are_bounded_and_checked_when_loaded() {
        let mut healing = Healing::default();
        let ids: Vec<MessageId> = (0..MAX_AWAITED_RESENDS + 5).map(|i| message_id(&i.to_le_bytes())).collect();
        let named = healing.to_name(&ids);
        assert_eq!(named.len(), MAX_RESET_IDS);
        assert_eq!(named.first(), ids.get(ids.len() - MAX_RESET_IDS), "the latest");
        healing.reset_sent(0, BASE, &named);
        assert_eq!(healing.awaited.len(), MAX_AWAITED_RESENDS);
        let good = healing.to_proto().unwrap();
        let check = |edit: &dyn Fn(&mut storage::Healing), what: &str| {
            let mut stored = good.clone();
            stored.awaited.truncate(2);
            stored.namings.truncate(2);
            stored.in_last_reset.truncate(2);
            assert!(Healing::from_proto(Some(&stored)).is_ok(), "{what}: the base case");
            edit(&mut stored);
            assert!(Healing::from_proto(Some(&stored)).is_err(), "{what}");
        };
        let mut too_many = good.clone();
        too_many.awaited.push(message_id(b"one more").to_vec());
        too_many.namings.push(1);
        too_many.in_last_reset.push(false);
        assert!(Healing::from_proto(Some(&too_many)).is_err(), "too many");
        check(&|s| s.namings[1] = MAX_RESET_NAMINGS + 1, "named too often");
        check(&|s| s.namings.truncate(1), "a count missing");
        check(&|s| s.in_last_reset.truncate(1), "a flag missing");
        check(&|s| s.awaited[1] = s.awaited[0].clone(), "a repeat");
        check(&|s| s.awaited[1] = vec![0; 15], "a short id");
        check(&|s| s.delivered = vec![s.awaited[0].clone()], "awaited and delivered");
        check(&|s| s.last_reset_base_key = vec![1; 31], "a short base key");
        check(&|s| s.last_reset_base_key.clear(), "a reset without its session");
        check(
            &|s| {
                s.reset_sent = false;
                s.last_reset_at = 0;
                s.last_reset_base_key.clear();
                s.heard_since_reset = true;
            },
            "heard since a reset never sent",
        );
        check(
            &|s| {
                s.reset_sent = false;
                s.last_reset_at = 0;
                s.last_reset_base_key.clear();
                s.broke_on_ids = true;
            },
            "a repeat broken by a reset never sent",
        );
        // Present and empty: not the canonical encoding (the fuzzer's
        // decode_session_record round trip found it).
        assert!(Healing::from_proto(Some(&storage::Healing::default())).is_err(), "an empty field");
        assert_eq!(Healing::default().to_proto(), None);
        let never = storage::Healing { reset_sent: false, last_reset_at: 5, ..Default::default() };
        assert!(Healing::from_proto(Some(&never)).is_err(), "a time without a reset");
    }
}
