//! Healing a session that went out of step, and the sealed outbox that
//! lets the peer send again what was lost (PROTOCOL.md 20).
//!
//! - [`Device::encrypt_kept`] encrypts as [`Device::encrypt`] does and keeps
//!   the plaintext, sealed, in the store's outbox for that peer, until
//!   [`Device::acknowledge`], or until it is older than
//!   [`HealPolicy::outbox_max_age`] or pushed out by newer ones
//!   ([`HealPolicy::outbox_max_messages`]).
//! - A decryption that fails with [`Recovery::Heal`](crate::Recovery::Heal)
//!   tells the app to fetch the peer's bundle and call [`Device::heal`] with
//!   the messages it could not read: a new session, and inside it a reset
//!   that names them, at most once per peer per
//!   [`HealPolicy::reset_interval`].
//! - The peer's [`Device::commit`] of that reset installs the new session
//!   and returns, ready to send, the named messages its outbox still holds,
//!   each sent again on the new session. They reach the app as direct
//!   messages, at most once each ([`PendingMessage::message_id`] is the id of
//!   the message as first sent).

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use samizdat_proto::storage;
use zeroize::Zeroizing;

use crate::{
    DecodeError, EncryptError, SessionError,
    address::Address,
    clock::{from_unix_seconds, unix_seconds},
    group::Control,
    heal::{MessageId, has_repeats, id_from_slice, message_id},
    keys::{IdentityKey, X25519PublicKey},
    limits::{CLOCK_CORRECTION, MAX_KEPT_PLAINTEXT_LEN, MAX_OUTBOX_MESSAGES, MAX_RESEND_IDS},
    padding::ContentType,
    prekeys::PreKeyBundle,
    session::SessionRecord,
    store::{Backend, Expected, Sealer, StoreError, Table, Write},
};

use super::{Device, DeviceError, Outgoing, encode, groups::ControlAction, lock, retry_on_conflict};

/// The format version of outbox rows.
const OUTBOX_VERSION: u32 = 1;

/// The row key, in table `sessions`, of a peer's outbox index as stores
/// before release 0.5 kept it: its session row's key and this. Such rows are
/// moved to table `outboxes` when the store is opened
/// ([`Device::move_outboxes`]).
const LEGACY_OUTBOX_INDEX_SUFFIX: &[u8] = b"/outbox";

/// The row of table `meta` that says the store keeps its outbox indexes in
/// table `outboxes` (written when the store is made, or when its indexes
/// were moved there).
pub(crate) const OUTBOXES_ROW: &[u8] = b"outboxes";
/// The plaintext of [`OUTBOXES_ROW`].
const OUTBOXES_PLAINTEXT: &[u8] = b"samizdat outboxes v1";

/// The row key of one outbox entry: its session row's key, this, its id.
const OUTBOX_ENTRY_SUFFIX: &[u8] = b"/out/";

/// Rows read at a time by [`Device::expire_outbox`].
const OUTBOX_SCAN_PAGE: usize = 256;

/// The start of the row keys of `row`'s outbox entries: `row || "/out/"`.
pub(super) fn entry_prefix(row: &[u8]) -> Vec<u8> {
    [row, OUTBOX_ENTRY_SUFFIX].concat()
}

/// The write that marks a new store as keeping its outbox indexes in table
/// `outboxes`.
pub(super) fn outboxes_marker(sealer: &Sealer) -> Write {
    Write {
        table: Table::Meta,
        key: OUTBOXES_ROW.to_vec(),
        value: Some(sealer.seal(&mut crate::os_rng(), Table::Meta, OUTBOXES_ROW, OUTBOXES_PLAINTEXT)),
        expected: Expected::Absent,
    }
}

/// How a device heals: set with [`Device::set_heal_policy`]. Times are in
/// the app's clock (the `now` it passes), counted in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealPolicy {
    /// The least time between two resets sent to one peer: a forged message
    /// can make the app ask for a reset, but not for more than one per this
    /// interval. Default: one hour. (Zero turns the limit off: for tests.)
    pub reset_interval: Duration,
    /// How long the outbox keeps a plaintext no acknowledgement removed.
    /// Default: 30 days.
    pub outbox_max_age: Duration,
    /// The most plaintexts the outbox keeps per peer (the oldest make room),
    /// at most [`MAX_OUTBOX_MESSAGES`]. Default: that.
    pub outbox_max_messages: usize,
    /// Whether a reset from the peer under another identity than the one
    /// trusted when a message was sent (the peer reinstalled, and the app
    /// trusted its new key) gets that message again. Default: `false`: a
    /// message goes only to the identity it was encrypted for, so that a key
    /// trusted later (perhaps an attacker's, accepted in error) gets none of
    /// what was sent before. An app that sets it gives every newly trusted
    /// identity of a peer the plaintexts its outbox holds for that peer.
    pub resend_to_new_identity: bool,
}

impl Default for HealPolicy {
    fn default() -> Self {
        Self {
            reset_interval: Duration::from_secs(3_600),
            outbox_max_age: Duration::from_secs(30 * 24 * 3_600),
            outbox_max_messages: MAX_OUTBOX_MESSAGES,
            resend_to_new_identity: false,
        }
    }
}

impl HealPolicy {
    /// Whether `slot` is past the outbox's age at `now`: older than
    /// `outbox_max_age`, or stamped more than [`CLOCK_CORRECTION`] ahead of
    /// `now` (a clock that was wrong then; or is now: either way the entry's
    /// age is unknown, and keeping it would keep it for as long as the clock
    /// was off).
    fn expired(&self, slot: &Slot, now: u64) -> bool {
        match now.checked_sub(slot.sent_at) {
            Some(age) => age >= self.outbox_max_age.as_secs(),
            None => slot.sent_at.saturating_sub(now) > CLOCK_CORRECTION,
        }
    }

    /// Splits `entries` (oldest first) into those the outbox keeps at `now`
    /// and the ids of those it lets go: past the age, or the oldest past
    /// `outbox_max_messages`.
    fn prune(&self, entries: Vec<Slot>, now: u64) -> (Vec<Slot>, Vec<MessageId>) {
        let excess = entries.len().saturating_sub(self.outbox_max_messages);
        let mut dropped = Vec::new();
        let mut kept = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            if i < excess || self.expired(&entry, now) { dropped.push(entry.id) } else { kept.push(entry) }
        }
        (kept, dropped)
    }
}

/// The latest time an outbox was given, after a call at `now`: the later
/// of the two, unless the clock was set back by more than
/// [`CLOCK_CORRECTION`] (then the stored time was a wrong clock's, and
/// `now` replaces it, so that new entries are not taken for old ones).
fn advance_clock(seen_at: u64, now: u64) -> u64 {
    if seen_at.saturating_sub(now) > CLOCK_CORRECTION { now } else { seen_at.max(now) }
}

/// What [`Device::heal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Heal {
    /// A new session was started and its first message, the reset, is to
    /// be sent to the peer.
    Sent(Outgoing),
    /// A reset was sent to this peer less than
    /// [`HealPolicy::reset_interval`] ago: nothing was done; heal again at
    /// `retry_at` if the session is still out of step then.
    TooSoon {
        /// The first time a reset may be sent again.
        retry_at: SystemTime,
    },
}

/// A peer's outbox index as read: its sealed bytes and entries, oldest
/// first.
pub(super) struct Index {
    pub(super) sealed: Option<Vec<u8>>,
    pub(super) entries: Vec<Slot>,
    /// The latest `now` a call on this outbox was given.
    seen_at: u64,
}

/// One entry of an outbox index.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) id: MessageId,
    sent_at: u64,
    /// The ids of its resends, oldest first.
    resent_as: Vec<MessageId>,
}

impl Slot {
    fn answers_to(&self, id: &MessageId) -> bool {
        self.id == *id || self.resent_as.contains(id)
    }
}

/// What a reset from the peer will send again: per entry (at most once
/// each), its position in the index and its plaintext; and the index as
/// read, to record the resends' ids in.
pub(super) struct Resends {
    messages: Vec<(usize, Zeroizing<Vec<u8>>)>,
    index: Index,
}

impl<B: Backend> Device<B> {
    /// Sets how this handle heals sessions (each handle of a store keeps its
    /// own policy: give every handle the same).
    ///
    /// # Errors
    /// [`DeviceError::InvalidArgument`] if
    /// [`HealPolicy::outbox_max_messages`] is above [`MAX_OUTBOX_MESSAGES`].
    pub fn set_heal_policy(&self, policy: HealPolicy) -> Result<(), DeviceError> {
        if policy.outbox_max_messages > MAX_OUTBOX_MESSAGES {
            return Err(DeviceError::InvalidArgument(DecodeError::InvalidValue("outbox_max_messages")));
        }
        *lock(&self.heal_policy) = policy;
        Ok(())
    }

    /// This handle's healing policy.
    pub fn heal_policy(&self) -> HealPolicy {
        *lock(&self.heal_policy)
    }

    /// Encrypts `plaintext` for `peer` as [`Self::encrypt`] does, and keeps
    /// it, sealed, in the outbox for `peer`, so that a reset from the peer
    /// brings it again without the app ([`Self::commit`] of the reset
    /// returns it, encrypted anew). The session, the entry and the outbox's
    /// index are written in one transaction before the ciphertext is
    /// returned. Entries older than the policy's `outbox_max_age` at `now`,
    /// and the oldest past its `outbox_max_messages`, are deleted in the
    /// same transaction.
    ///
    /// # Errors
    /// As [`Self::encrypt`]; [`EncryptError::MessageTooLarge`] for a
    /// plaintext over [`MAX_KEPT_PLAINTEXT_LEN`]; [`StoreError::Corrupt`] if
    /// the outbox's index does not parse.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::{Duration, UNIX_EPOCH};
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, heal::message_id, store::MemoryBackend};
    ///
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, UNIX_EPOCH)?;
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, UNIX_EPOCH)?;
    /// let bob_address = alice.start_session(&bob.prekey_bundle()?)?;
    ///
    /// let wire = alice.encrypt_kept(&bob_address, b"kept until acknowledged", UNIX_EPOCH + Duration::from_secs(1_000))?;
    /// assert_eq!(alice.outbox_len(&bob_address)?, 1);
    /// // Bob's app acknowledges the message (a delivery receipt with its id).
    /// let pending = bob.decrypt(alice.address(), &wire)?;
    /// let id = pending.message_id().expect("a one-to-one message");
    /// bob.commit(pending)?;
    /// assert_eq!(id, message_id(&wire));
    /// assert_eq!(alice.acknowledge(&bob_address, &[id])?, 1);
    /// assert_eq!(alice.outbox_len(&bob_address)?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encrypt_kept(&self, peer: &Address, plaintext: &[u8], now: SystemTime) -> Result<Vec<u8>, DeviceError> {
        let now = unix_seconds(now);
        self.check_process()?;
        if plaintext.len() > MAX_KEPT_PLAINTEXT_LEN {
            let error = EncryptError::MessageTooLarge { len: plaintext.len(), max: MAX_KEPT_PLAINTEXT_LEN };
            return Err(SessionError::Encrypt(error).into());
        }
        let policy = self.heal_policy();
        let row = self.sealer.address_key(peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            let (mut loaded, mut record) = self.load_record(&row)?;
            // As `encrypt`: a device its user's pinned list does not name
            // gets nothing (PROTOCOL.md 23.5).
            if let Some(identity) = record.trusted_identity() {
                self.check_listed(peer, &identity)?;
            }
            let ciphertext = record.encrypt(&mut crate::os_rng(), plaintext)?;
            let mut writes = self.record_writes(&row, peer, &mut record, &mut loaded)?;
            writes.extend(self.keep_writes(&row, record.trusted_identity(), &ciphertext, plaintext, now, &policy)?);
            self.write(&writes)?;
            Ok(ciphertext)
        })
    }

    /// The writes that keep `plaintext`, just encrypted as `ciphertext` for
    /// the peer of row `row` under its trusted `identity`, in the peer's
    /// outbox at `now` (unix seconds): its sealed entry and the
    /// outbox's index, pruned by `policy` (the entries it drops deleted).
    /// The caller holds the peer's lock and writes them with the session.
    pub(super) fn keep_writes(
        &self,
        row: &[u8],
        identity: Option<IdentityKey>,
        ciphertext: &[u8],
        plaintext: &[u8],
        now: u64,
        policy: &HealPolicy,
    ) -> Result<Vec<Write>, DeviceError> {
        let id = message_id(ciphertext);
        let mut index = self.load_index(row)?;
        let mut writes = Vec::new();
        let sealed_index = index.sealed.take();
        let seen_at = advance_clock(index.seen_at, now);
        let mut entries = std::mem::take(&mut index.entries);
        entries.push(Slot { id, sent_at: now, resent_as: Vec::new() });
        let (kept, dropped) = policy.prune(entries, seen_at);
        if kept.iter().any(|slot| slot.id == id) {
            let identity = identity.map(|key| key.as_bytes().to_vec()).unwrap_or_default();
            let entry = Zeroizing::new(storage::OutboxEntry {
                version: OUTBOX_VERSION,
                id: id.to_vec(),
                plaintext: plaintext.to_vec(),
                identity,
            });
            let bytes = Zeroizing::new(encode(&*entry));
            let key = self.entry_key(row, &id);
            let value = self.sealer.seal(&mut crate::os_rng(), Table::Sessions, &key, &bytes);
            writes.push(Write { table: Table::Sessions, key, value: Some(value), expected: Expected::Absent });
        }
        writes.extend(self.outbox_writes(row, sealed_index, &kept, seen_at, dropped.iter().filter(|d| **d != id)));
        Ok(writes)
    }

    /// Removes from the outbox for `peer` the messages of these ids (the
    /// app's transport or the peer's app said they arrived), deleting their
    /// plaintexts; returns how many it held. Ids it does not hold are
    /// ignored.
    ///
    /// # Errors
    /// A store error (nothing removed); [`StoreError::Corrupt`] if the
    /// outbox's index does not parse.
    pub fn acknowledge(&self, peer: &Address, ids: &[MessageId]) -> Result<usize, DeviceError> {
        self.check_process()?;
        let row = self.sealer.address_key(peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        let ids: HashSet<&MessageId> = ids.iter().collect();
        retry_on_conflict(|| {
            let index = self.load_index(&row)?;
            let (gone, kept): (Vec<_>, Vec<_>) =
                index.entries.into_iter().partition(|slot| ids.iter().any(|id| slot.answers_to(id)));
            if gone.is_empty() {
                return Ok(0);
            }
            let dropped: Vec<MessageId> = gone.iter().map(|slot| slot.id).collect();
            self.write(&self.outbox_writes(&row, index.sealed, &kept, index.seen_at, dropped.iter()))?;
            Ok(gone.len())
        })
    }

    /// Deletes from the outbox, for every peer, the plaintexts past
    /// [`HealPolicy::outbox_max_age`] at `now` (and the oldest past
    /// [`HealPolicy::outbox_max_messages`], if the policy was lowered), and
    /// returns how many. Call it when the app starts or goes to the
    /// background: `encrypt_kept` prunes only the outbox of the peer it sends
    /// to, and a reset never sends again an entry past its age as of the
    /// latest `now` its outbox was given (this call's included; an index is
    /// rewritten for that only when the time moved by an hour or more).
    ///
    /// Cost: one read of table `outboxes` (one row per peer that has an
    /// outbox, read by pages of 256: it does not grow with the number of
    /// sessions), then one transaction per peer whose outbox changes. Call it
    /// at start or when going to the background, not per message.
    ///
    /// # Errors
    /// A store error, or [`StoreError::Corrupt`] if an index does not parse:
    /// the peers done before it keep their deletions, the others are not
    /// visited (call it again).
    pub fn expire_outbox(&self, now: SystemTime) -> Result<usize, DeviceError> {
        let now = unix_seconds(now);
        self.check_process()?;
        let policy = self.heal_policy();
        // The outbox indexes: the rows of table `outboxes`, by pages (memory
        // bounded by a page, whatever the number of peers).
        let mut rows: Vec<Vec<u8>> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.backend.scan_after(Table::Outboxes, after.as_deref(), OUTBOX_SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            rows.extend(page.into_iter().map(|(key, _)| key));
        }
        let mut deleted = 0usize;
        for row in rows {
            let peer_lock = self.peer_lock(&row);
            let _guard = lock(&peer_lock);
            deleted = deleted.saturating_add(retry_on_conflict(|| {
                let index = self.load_index(&row)?;
                let seen_at = advance_clock(index.seen_at, now);
                let (kept, dropped) = policy.prune(index.entries, seen_at);
                // The time alone is written back only when it moved by an
                // hour or more (not one write per peer at every call).
                if dropped.is_empty() && seen_at.abs_diff(index.seen_at) < 3_600 {
                    return Ok(0);
                }
                self.write(&self.outbox_writes(&row, index.sealed, &kept, seen_at, dropped.iter()))?;
                Ok(dropped.len())
            })?);
        }
        Ok(deleted)
    }

    /// How many plaintexts the outbox holds for `peer`.
    ///
    /// # Errors
    /// A store error; [`StoreError::Corrupt`] if the index does not parse.
    pub fn outbox_len(&self, peer: &Address) -> Result<usize, DeviceError> {
        self.check_process()?;
        Ok(self.load_index(&self.sealer.address_key(peer))?.entries.len())
    }

    /// Heals the session with the peer whose fresh bundle this is (as its
    /// server sent it), after a decryption from it failed with
    /// [`Recovery::Heal`](crate::Recovery::Heal): starts a new session and
    /// returns its first message, a reset naming the messages in
    /// `unreadable` (their wire bytes, as received) and those earlier resets
    /// named that no resend has brought yet ([`Self::awaiting_resends`]); at
    /// most the latest [`MAX_RESET_IDS`](crate::limits::MAX_RESET_IDS)
    /// distinct ones, and none named by
    /// [`MAX_RESET_NAMINGS`](crate::limits::MAX_RESET_NAMINGS) answered
    /// resets already. Send it to the peer: its device installs the new session and
    /// sends again those of them its outbox still holds.
    ///
    /// At most one reset per peer per [`HealPolicy::reset_interval`]: a
    /// second call sooner does nothing and returns [`Heal::TooSoon`]. The
    /// session we had is kept (archived), so that the peer's messages still
    /// in flight on it decrypt.
    ///
    /// # Errors
    /// As [`Self::start_session`] ([`SessionError::UntrustedIdentity`] for a
    /// peer whose identity changed: the app's trust decision comes first;
    /// the rules of a pinned user's list, PROTOCOL.md 23.5, before anything
    /// else, even within the reset interval).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::{Duration, UNIX_EPOCH};
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::{Device, Heal}, store::MemoryBackend};
    ///
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, UNIX_EPOCH)?;
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, UNIX_EPOCH)?;
    /// let bob_address = alice.start_session(&bob.prekey_bundle()?)?;
    /// let first = alice.encrypt_kept(&bob_address, b"first", UNIX_EPOCH)?;
    /// bob.commit(bob.decrypt(alice.address(), &first)?)?;
    /// let lost = alice.encrypt_kept(&bob_address, b"lost", UNIX_EPOCH)?;
    ///
    /// // Say Bob could not read `lost`: he heals with Alice's fresh bundle.
    /// let Heal::Sent(reset) = bob.heal(&alice.prekey_bundle()?, &[lost], UNIX_EPOCH + Duration::from_secs(10))? else { unreachable!() };
    /// // Alice's commit of the reset sends `lost` again on the new session.
    /// let resends = alice.commit(alice.decrypt(bob.address(), &reset.message)?)?;
    /// let again = bob.decrypt(alice.address(), &resends[0].message)?;
    /// assert_eq!(again.plaintext(), b"lost");
    /// bob.commit(again)?;
    /// // A second reset within the interval is refused.
    /// assert!(matches!(bob.heal(&alice.prekey_bundle()?, &[], UNIX_EPOCH + Duration::from_secs(20))?, Heal::TooSoon { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn heal(&self, bundle: &[u8], unreadable: &[Vec<u8>], now: SystemTime) -> Result<Heal, DeviceError> {
        let now = unix_seconds(now);
        self.check_process()?;
        let bundle = PreKeyBundle::from_bytes(bundle).map_err(SessionError::from)?;
        let peer = bundle.address().clone();
        let interval = self.heal_policy().reset_interval.as_secs();
        let unreadable: Vec<MessageId> = unreadable.iter().map(|wire| message_id(wire)).collect();
        let row = self.sealer.address_key(&peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            // As `start_session`: the user's trust first (PROTOCOL.md 23.5),
            // so a ghost's bundle heals nothing.
            let user_write = self.plan_bundle_trust(&bundle)?;
            let (mut loaded, mut record) = self.load_record(&row)?;
            if let Some(retry_at) = record.healing().too_soon(now, interval) {
                return Ok(Heal::TooSoon { retry_at: from_unix_seconds(retry_at) });
            }
            // What our last reset named counts only if the peer answered it.
            let answered = record.healing().last_reset_base_key.is_some_and(|key| record.answered(&key));
            record.healing_mut().last_reset_answered(answered);
            let named = record.healing().to_name(&unreadable);
            // Our last reset's session, if the peer has been silent since
            // (it may be away): the reset goes on it again (20.5).
            let repeat = record.healing().may_repeat_reset(&unreadable);
            let broke_on_ids = record.healing().breaks_on_ids(repeat);
            let previous = record.healing().last_reset_base_key.filter(|_| repeat).map(X25519PublicKey::from_bytes);
            record.initiate_heal(&mut crate::os_rng(), &self.identity, &self.address, &bundle, previous)?;
            let content = Control::Reset(named.clone()).to_bytes();
            let message = record.encrypt_content(&mut crate::os_rng(), &content, ContentType::Control)?;
            let base_key = record.current_base_key().map(|key| *key.as_bytes()).unwrap_or_default();
            record.healing_mut().reset_sent(now, base_key, &named);
            record.healing_mut().broke_on_ids = broke_on_ids;
            let mut writes = self.record_writes(&row, &peer, &mut record, &mut loaded)?;
            writes.extend(user_write);
            self.write(&writes)?;
            Ok(Heal::Sent(Outgoing { to: peer.clone(), message }))
        })
    }

    /// How many messages from `peer` this device still waits for since its
    /// resets named them (a resend has not brought them, and they were not
    /// read as first sent), counting only those a next reset would name
    /// again: each is named until
    /// [`MAX_RESET_NAMINGS`](crate::limits::MAX_RESET_NAMINGS) resets that
    /// the peer answered named it (a reset lost on the way does not count),
    /// then given up (the peer no longer holds it, or it was a forgery); a
    /// resend that comes later is still read. While
    /// this is not zero, the app heals again at the `retry_at` of
    /// [`Heal::TooSoon`] (or after [`HealPolicy::reset_interval`]): a reset
    /// or a resend may have been lost on the way.
    ///
    /// # Errors
    /// A store error.
    pub fn awaiting_resends(&self, peer: &Address) -> Result<usize, DeviceError> {
        self.check_process()?;
        let (_, record) = self.load_record(&self.sealer.address_key(peer))?;
        // As the next heal would count them.
        let mut healing = record.healing().clone();
        healing.last_reset_answered(healing.last_reset_base_key.is_some_and(|key| record.answered(&key)));
        Ok(healing.awaiting())
    }

    /// What a reset from `peer` naming `ids` will send again: the
    /// plaintexts of the outbox entries they name (by the id a message was
    /// sent as, or the id of one of its resends), each once, read now. At
    /// most [`MAX_RESET_IDS`](crate::limits::MAX_RESET_IDS) rows are read.
    pub(super) fn plan_reset(
        &self,
        peer: &Address,
        identity: IdentityKey,
        ids: &[MessageId],
    ) -> Result<ControlAction, DeviceError> {
        let policy = self.heal_policy();
        let to_any_identity = policy.resend_to_new_identity;
        let row = self.sealer.address_key(peer);
        let index = self.load_index(&row)?;
        let newest = index.entries.iter().map(|slot| slot.sent_at).max().unwrap_or(0);
        let seen_at = index.seen_at.max(newest);
        let mut messages: Vec<(usize, Zeroizing<Vec<u8>>)> = Vec::new();
        for id in ids {
            let Some(at) = index.entries.iter().position(|slot| slot.answers_to(id)) else { continue };
            if messages.iter().any(|(other, _)| *other == at) {
                continue;
            }
            let Some(slot) = index.entries.get(at) else { continue };
            // Past its age as of the latest time this outbox was given (at
            // least its newest entry's): never sent again (`expire_outbox`
            // deletes it).
            if policy.expired(slot, seen_at) {
                continue;
            }
            let key = self.entry_key(&row, &slot.id);
            // An entry the index names but that is gone: another handle
            // acknowledged it meanwhile.
            let Some(sealed) = self.backend.get(Table::Sessions, &key)? else { continue };
            let bytes = self.open_sealed(Table::Sessions, &key, &sealed)?;
            let corrupt = || StoreError::Corrupt { table: Table::Sessions };
            let entry = crate::codec::decode_secret::<storage::OutboxEntry>(bytes.as_slice()).map_err(|_| corrupt())?;
            if entry.version != OUTBOX_VERSION
                || entry.id.as_slice() != slot.id.as_slice()
                || entry.plaintext.len() > MAX_KEPT_PLAINTEXT_LEN
                || entry.identity.len() != 32
            {
                return Err(corrupt().into());
            }
            // Sent to another identity of the peer's (it reinstalled, or
            // the app trusted an attacker's key): not sent again unless the
            // app's policy allows it.
            if entry.identity.as_slice() != identity.as_bytes().as_slice() && !to_any_identity {
                continue;
            }
            messages.push((at, Zeroizing::new(entry.plaintext.clone())));
        }
        Ok(ControlAction::Reset(Box::new(Resends { messages, index })))
    }

    /// The resends of a reset, encrypted on the record's current state (the
    /// one the reset's commit left current); and the write of the outbox index that remembers their ids,
    /// conditional on the index as the decryption read it.
    pub(super) fn encrypt_resends(
        &self,
        peer: &Address,
        record: &mut SessionRecord,
        resends: Resends,
    ) -> Result<(Vec<Write>, Vec<Outgoing>), DeviceError> {
        let Resends { messages, mut index } = resends;
        if messages.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut out = Vec::with_capacity(messages.len());
        for (at, plaintext) in messages {
            let Some(slot) = index.entries.get_mut(at) else { continue };
            // Under the id it was first sent with, and the ids of its
            // earlier resends: the reset may have named any of them.
            let content = Control::Resend { id: slot.id, also: slot.resent_as.clone(), plaintext }.to_bytes();
            let message = match record.encrypt_content(&mut crate::os_rng(), &content, ContentType::Control) {
                Ok(message) => message,
                // Cannot be with a plaintext within MAX_KEPT_PLAINTEXT_LEN;
                // an entry that does not fit is not sent rather than failing
                // every other resend of the reset.
                Err(SessionError::Encrypt(EncryptError::MessageTooLarge { .. })) => continue,
                Err(e) => return Err(e.into()),
            };
            if slot.resent_as.len() >= MAX_RESEND_IDS {
                slot.resent_as.remove(0);
            }
            slot.resent_as.push(message_id(&message));
            out.push(Outgoing { to: peer.clone(), message });
        }
        let row = self.sealer.address_key(peer);
        let writes = self.outbox_writes(&row, index.sealed, &index.entries, index.seen_at, std::iter::empty());
        Ok((writes, out))
    }

    /// The row key of the outbox entry of message `id` for session row
    /// `row`: the row's key, a suffix, and the keyed hash of the id (a copy
    /// of the store without the storage key does not tell which ciphertexts
    /// it kept, PROTOCOL.md 20.3).
    pub(super) fn entry_key(&self, row: &[u8], id: &MessageId) -> Vec<u8> {
        [row, OUTBOX_ENTRY_SUFFIX, &self.sealer.outbox_id_hash(id)].concat()
    }

    /// The outbox index of session row `row` (empty if none).
    pub(super) fn load_index(&self, row: &[u8]) -> Result<Index, StoreError> {
        let Some(sealed) = self.backend.get(Table::Outboxes, row)? else {
            return Ok(Index { sealed: None, entries: Vec::new(), seen_at: 0 });
        };
        let corrupt = || StoreError::Corrupt { table: Table::Outboxes };
        let bytes = self.open_sealed(Table::Outboxes, row, &sealed)?;
        let index = crate::codec::decode_secret::<storage::OutboxIndex>(bytes.as_slice()).map_err(|_| corrupt())?;
        if index.version != OUTBOX_VERSION || index.entries.len() > MAX_OUTBOX_MESSAGES {
            return Err(corrupt());
        }
        let mut entries: Vec<Slot> = Vec::with_capacity(index.entries.len());
        for slot in &index.entries {
            let id = id_from_slice(&slot.id, "outbox.id").map_err(|_| corrupt())?;
            if slot.resent_as.len() > MAX_RESEND_IDS {
                return Err(corrupt());
            }
            let resent_as = slot
                .resent_as
                .iter()
                .map(|alias| id_from_slice(alias, "outbox.resent_as"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| corrupt())?;
            entries.push(Slot { id, sent_at: slot.sent_at, resent_as });
        }
        // Every id, of an entry or of one of its resends, names one entry.
        let all: Vec<&MessageId> =
            entries.iter().flat_map(|slot| std::iter::once(&slot.id).chain(&slot.resent_as)).collect();
        if has_repeats(&all) {
            return Err(corrupt());
        }
        Ok(Index { sealed: Some(sealed), entries, seen_at: index.seen_at })
    }

    /// The writes that leave `kept` as the outbox index of `row` (deleted
    /// when empty), conditional on the index as read, and delete the entries
    /// of `dropped`.
    fn outbox_writes<'a>(
        &self,
        row: &[u8],
        read: Option<Vec<u8>>,
        kept: &[Slot],
        seen_at: u64,
        dropped: impl Iterator<Item = &'a MessageId>,
    ) -> Vec<Write> {
        let key = row.to_vec();
        let value = (!kept.is_empty()).then(|| {
            let index = storage::OutboxIndex {
                version: OUTBOX_VERSION,
                seen_at,
                entries: kept
                    .iter()
                    .map(|slot| storage::OutboxSlot {
                        id: slot.id.to_vec(),
                        sent_at: slot.sent_at,
                        resent_as: slot.resent_as.iter().map(|id| id.to_vec()).collect(),
                    })
                    .collect(),
            };
            self.sealer.seal(&mut crate::os_rng(), Table::Outboxes, &key, &encode(&index))
        });
        let mut writes = Vec::new();
        if value.is_some() || read.is_some() {
            writes.push(Write { table: Table::Outboxes, key, value, expected: Expected::read(read) });
        }
        // The index, written conditionally, guards the entries: one it
        // named is deleted whatever it holds.
        writes.extend(dropped.map(|id| Write {
            table: Table::Sessions,
            key: self.entry_key(row, id),
            value: None,
            expected: Expected::Any,
        }));
        writes
    }
}

impl<B: Backend> Device<B> {
    /// Moves the outbox indexes of a store made before release 0.5 from
    /// table `sessions` (under `row_key(peer) || "/outbox"`) to table
    /// `outboxes` (under `row_key(peer)`), re-sealed for their new place, and
    /// marks the store as done ([`OUTBOXES_ROW`]), in one transaction; does
    /// nothing for a store that has the mark (every store made since). The
    /// one call that reads every session row, once in a store's life.
    pub(super) fn move_outboxes(&self) -> Result<(), DeviceError> {
        if self.backend.get(Table::Meta, OUTBOXES_ROW)?.is_some() {
            return Ok(());
        }
        let mut writes = vec![outboxes_marker(&self.sealer)];
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.backend.scan_after(Table::Sessions, after.as_deref(), OUTBOX_SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, sealed) in page {
                let Some(row) = key.strip_suffix(LEGACY_OUTBOX_INDEX_SUFFIX) else { continue };
                if row.len() != LEGACY_ROW_KEY_LEN {
                    continue;
                }
                let bytes = self.open_sealed(Table::Sessions, &key, &sealed)?;
                let value = self.sealer.seal(&mut crate::os_rng(), Table::Outboxes, row, &bytes);
                writes.push(Write {
                    table: Table::Outboxes,
                    key: row.to_vec(),
                    value: Some(value),
                    expected: Expected::Absent,
                });
                writes.push(Write { table: Table::Sessions, key, value: None, expected: Expected::Value(sealed) });
            }
        }
        self.write(&writes)?;
        Ok(())
    }
}

/// The length of a session row's key (a keyed hash of the address).
const LEGACY_ROW_KEY_LEN: usize = 32;
