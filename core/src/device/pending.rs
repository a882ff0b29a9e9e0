//! Decryptions waiting for their commit: bound to the device that made them
//! and to the rows they read.

use std::{collections::BTreeMap, fmt};

use zeroize::{Zeroize, Zeroizing};

use crate::{
    SessionError,
    address::Address,
    heal::MessageId,
    keys::IdentityKey,
    session::{PendingDecrypt, SessionRecord},
    user::sync::SentSync,
};

use super::{
    groups::{ControlAction, GroupPending},
    prekeys::PreKeyRows,
    replace::{HandoverPlan, OwnPlan},
};

/// A decrypted message waiting for [`Device::commit`](super::Device::commit).
///
/// It is bound to the device that made it, by that device's identity key:
/// the value every handle of one store shares (it is the store's identity
/// row) and that tells two devices apart (each identity comes from its own
/// random seed), public, and checked before anything is read. A pending
/// committed on another device is refused with [`DeviceError::ForeignPending`](super::DeviceError::ForeignPending).
/// It is also bound to the session row it was made from (its sealed bytes):
/// any rewrite of that row since, through any handle, makes it stale. (A
/// copy of a store opened as a second store has the same identity; there the
/// row's sealed bytes decide, and a commit they allow is exactly the one the
/// original store would have made.)
pub struct PendingMessage {
    /// The identity key of the device that made it.
    pub(super) device: IdentityKey,
    pub(super) peer: Address,
    pub(super) inner: Inner,
}

/// What a pending decryption holds. (The one-to-one variant, the common
/// one, is the large one: boxing it would cost every message an allocation.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Inner {
    /// A one-to-one message: the app's, or control content of the peer's
    /// library (`control`, what its commit does besides the session's).
    Pairwise {
        pending: PendingDecrypt,
        /// The session row as read (sealed; `None`: absent), and the record
        /// parsed from it. The commit requires the row to hold exactly these
        /// bytes still, and then applies the decryption to this record (it
        /// is not read and parsed again).
        loaded: LoadedRows,
        record: SessionRecord,
        control: Option<ControlAction>,
        /// The message's id: of its wire bytes, or for a resend, of the
        /// message as first sent (PROTOCOL.md 20.2).
        id: MessageId,
        /// A sent sync from another device of our own user (PROTOCOL.md
        /// 23.7), checked to come from a device our own list names; then
        /// `control` is `None` (the commit only advances the session).
        sync: Option<SentSync>,
        /// A user identity handover from another device of our own user, or
        /// its acknowledgment (PROTOCOL.md 23.9), checked and planned; then
        /// `control` and `sync` are `None` (the commit writes our own row
        /// too).
        own: Option<Box<OwnPlan>>,
    },
    /// A group message.
    Group(GroupPending),
}

/// What a message's kind is, as [`PendingMessage::kind`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKind {
    /// A one-to-one message for the app: [`PendingMessage::plaintext`]
    /// (also one the peer sent again after a reset, under the id it was
    /// first sent with, [`PendingMessage::message_id`]).
    Direct,
    /// A group message for the app: [`PendingMessage::plaintext`], in the
    /// group [`PendingMessage::group_id`].
    Group,
    /// A control message between the two devices' libraries (a group's
    /// chain, or a request for one, of the group [`PendingMessage::group_id`];
    /// a reset that heals the session): nothing for the app to show or store.
    /// Commit it all the same (the session advances, and the library acts on
    /// it; send what the commit returns), then acknowledge it.
    Control,
    /// A copy of a message our own user sent from another of its devices
    /// (its fan-out's "sent sync", PROTOCOL.md 23.7): the plaintext
    /// [`PendingMessage::plaintext`] went to the user
    /// [`PendingMessage::sync_recipient`]. It came from a device our own
    /// pinned list names (the device API refuses it from anyone else). Show
    /// it as sent by us, in the conversation with that user; commit it as
    /// any other.
    SentSync,
    /// A new user identity that another device of our own user handed over
    /// after it removed a lost device (PROTOCOL.md 23.9):
    /// [`PendingMessage::new_user_identity`]. Keep its key pair as the app
    /// keeps the user identity, tell the user which devices were removed,
    /// then commit: the new list becomes this device's own.
    UserIdentity,
}

impl PendingMessage {
    /// The plaintext: empty for a [`MessageKind::Control`] or
    /// [`MessageKind::UserIdentity`] message; for a
    /// [`MessageKind::SentSync`], what our other device sent.
    pub fn plaintext(&self) -> &[u8] {
        match &self.inner {
            Inner::Pairwise { own: Some(_), .. } => &[],
            Inner::Pairwise { sync: Some(sync), .. } => &sync.plaintext,
            Inner::Pairwise { control: Some(ControlAction::Resent { plaintext, .. }), .. } => plaintext,
            Inner::Pairwise { control: Some(_), .. } => &[],
            Inner::Pairwise { pending, .. } => pending.plaintext(),
            Inner::Group(group) => &group.plaintext,
        }
    }

    /// What the message is.
    pub fn kind(&self) -> MessageKind {
        match &self.inner {
            Inner::Pairwise { sync: Some(_), .. } => MessageKind::SentSync,
            Inner::Pairwise { own: Some(plan), .. } => match **plan {
                OwnPlan::Handover(_) => MessageKind::UserIdentity,
                OwnPlan::Ack(_) => MessageKind::Control,
            },
            Inner::Pairwise { control: Some(ControlAction::Resent { .. }), .. } => MessageKind::Direct,
            Inner::Pairwise { control: Some(_), .. } => MessageKind::Control,
            Inner::Pairwise { .. } => MessageKind::Direct,
            Inner::Group(_) => MessageKind::Group,
        }
    }

    /// The group of a group message or of a group's control message.
    pub fn group_id(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Pairwise { control: Some(control), .. } => control.group_id(),
            Inner::Pairwise { .. } => None,
            Inner::Group(group) => Some(&group.group_id),
        }
    }

    /// The id of a one-to-one message ([`message_id`](crate::heal::message_id)
    /// of its wire bytes; for a message sent again after a reset, the id of
    /// the message as first sent, so that it is the same id either way): what
    /// the app keys the stored plaintext by, and puts in a delivery receipt
    /// for the sender's [`Device::acknowledge`](super::Device::acknowledge).
    /// `None` for a group message.
    pub fn message_id(&self) -> Option<MessageId> {
        match &self.inner {
            Inner::Pairwise { id, .. } => Some(*id),
            Inner::Group(_) => None,
        }
    }

    /// For a [`MessageKind::SentSync`], the user id the message went to;
    /// `None` for every other kind.
    pub fn sync_recipient(&self) -> Option<&str> {
        match &self.inner {
            Inner::Pairwise { sync: Some(sync), .. } => Some(&sync.recipient),
            _ => None,
        }
    }

    /// The handover of a [`MessageKind::UserIdentity`] message.
    pub(super) fn handover(&self) -> Option<&HandoverPlan> {
        match &self.inner {
            Inner::Pairwise { own: Some(plan), .. } => match &**plan {
                OwnPlan::Handover(plan) => Some(plan),
                OwnPlan::Ack(_) => None,
            },
            _ => None,
        }
    }

    /// The peer it came from (as the app named it).
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// The sender's identity key: the one its session authenticated; for a
    /// group message, the identity trusted for the sender, under which the
    /// sender's chain came (a chain that came under another identity opens
    /// nothing). `None` only for a group message from a sender with whom
    /// there is no session any more.
    pub fn sender_identity(&self) -> Option<IdentityKey> {
        match &self.inner {
            Inner::Pairwise { pending, .. } => Some(pending.sender_identity()),
            Inner::Group(group) => group.identity,
        }
    }
}

impl fmt::Debug for PendingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingMessage")
            .field("peer", &self.peer)
            .field("kind", &self.kind())
            .field("plaintext_len", &self.plaintext().len())
            .finish_non_exhaustive()
    }
}

/// What a call read of a peer's session: its session row (sealed; `None` if
/// there was none), and the row of its skipped keys' seeds if the call read
/// it (`None`: not read; `Some(None)`: read, absent).
pub(super) struct LoadedRows {
    pub(super) record: Option<Vec<u8>>,
    pub(super) seeds: Option<Option<Vec<u8>>>,
}

/// A peer's session in a batch: what the batch read of it, and the record
/// as the batch's messages changed it.
pub(super) struct LoadedRecord {
    /// The peer (as the app named it).
    pub(super) peer: Address,
    /// The rows as read (sealed).
    pub(super) loaded: LoadedRows,
    /// The record as loaded, serialized without its seeds
    /// ([`SessionRecord::to_hot_bytes`]; an empty record's if there was no
    /// row): the batch writes the peer's rows only if the record no longer
    /// serializes to this, so a peer all of whose messages failed (unknown
    /// senders, garbage) gets no row written, and none created.
    pub(super) as_loaded: Zeroizing<Vec<u8>>,
    /// The record after the batch.
    pub(super) record: SessionRecord,
}

impl LoadedRecord {
    /// Whether the batch changed the record (its skipped keys included).
    pub(super) fn changed(&self) -> bool {
        self.record.skipped_changed() || self.record.to_hot_bytes().as_slice() != self.as_loaded.as_slice()
    }
}

/// The result of [`Device::decrypt_batch`](super::Device::decrypt_batch): one result per message, in
/// order, and the changes to commit with [`Device::commit_batch`](super::Device::commit_batch). Bound to
/// its device and to the rows it read, as a [`PendingMessage`] is.
pub struct PendingBatch {
    /// The identity key of the device that made it.
    pub(super) device: IdentityKey,
    pub(super) results: Vec<Result<Vec<u8>, SessionError>>,
    /// Row key -> the peer's session as loaded and as changed.
    pub(super) records: BTreeMap<Vec<u8>, LoadedRecord>,
    /// The prekey rows the batch read (sealed) and what its messages
    /// consumed, to write conditionally on them.
    pub(super) prekeys: PreKeyRows,
}

impl PendingBatch {
    /// One result per message, in the order given: the plaintext, or why it
    /// did not decrypt (a failed message changes nothing).
    pub fn results(&self) -> &[Result<Vec<u8>, SessionError>] {
        &self.results
    }
}

impl Drop for PendingBatch {
    fn drop(&mut self) {
        // The plaintexts are handed out by reference only: wipe them here.
        for plaintext in self.results.iter_mut().flatten() {
            plaintext.zeroize();
        }
    }
}

impl fmt::Debug for PendingBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingBatch")
            .field("messages", &self.results.len())
            .field("peers", &self.records.len())
            .finish_non_exhaustive()
    }
}
