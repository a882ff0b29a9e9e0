//! Groups (Sender Keys, PROTOCOL.md 18): the group calls of [`Device`] and
//! the records they return. Translation only, as in the rest of the crate;
//! their errors are the core's `GroupError`s, as [`SamizdatError`]s of the
//! same kind (`NotInGroup`, `MissingGroupKey`, ...).
//!
//! The app owns the roster: every member device is told who is in the group
//! ([`Device::create_group`], [`Device::add_group_members`],
//! [`Device::remove_group_members`]), per device or per user
//! ([`Device::add_group_users`], [`Device::remove_group_users`],
//! [`Device::group_users`]: a member user's member devices are those of its
//! newest verified device list, PROTOCOL.md 18.8). [`Device::group_encrypt`] returns one
//! group message for every member and the one-to-one messages
//! ([`Outgoing`]) that carry our chain to the members that lack it. The
//! receiving side is [`Device::decrypt`], whose pending message says what it
//! got ([`MessageKind`]); [`Device::commit`] returns the answer to a
//! member's request for a lost chain, to send like any other message.

use samizdat::device;

use crate::{Address, Bytes, Device, SamizdatError};

/// What a decrypted message is ([`crate::PendingMessage::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MessageKind {
    /// A one-to-one message for the app.
    Direct,
    /// A group message for the app, in the group `group_id()`.
    Group,
    /// A message between the two devices' libraries (a group's chain, or a
    /// request for one, of the group `group_id()`; a reset that heals the
    /// session, of no group): nothing to show or store (its plaintext is
    /// empty). Commit it all the same, send what the commit returns (an
    /// answer, the messages a reset asked for), then acknowledge it.
    Control,
    /// A copy of a message our own user sent from another of its devices
    /// (a fan-out's sent sync): its plaintext went to the user
    /// `sync_recipient()`. Show it as sent by us; commit it as any other.
    /// It came from a device our own list names (PROTOCOL.md 23.7).
    SentSync,
    /// A new user identity that another device of our own user handed over
    /// after it removed a lost device (its `sender()`):
    /// `new_user_identity()` gives it. Keep its user identity as the app
    /// keeps the user identity, tell the user which devices were removed,
    /// then commit: the new list becomes this device's own. No plaintext.
    UserIdentity,
}

/// A one-to-one message the library made for a peer (a group's chain, the
/// answer to a request for one, a reset, a message sent again after a
/// reset): send it to `to` like any other message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Outgoing {
    /// The recipient.
    pub to: Address,
    /// The wire bytes.
    pub message: Bytes,
}

/// What [`Device::group_encrypt`] made. Send `distributions` (each to its
/// recipient) before or with `message`, and `message` to every member.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupSend {
    /// The group message: the same bytes for every member.
    pub message: Bytes,
    /// Our chain, one message per member that lacked it: never again to a
    /// member that has it.
    pub distributions: Vec<Outgoing>,
    /// Members that lack the chain but with whom there is no session: start
    /// one ([`Device::start_session`]); the next message gives them the chain.
    pub without_session: Vec<Address>,
}

#[uniffi::export]
impl Device {
    /// Creates the group `group_id` (1 to 64 bytes) with `members`, the other
    /// member devices (this device always is one).
    pub fn create_group(&self, group_id: Vec<u8>, members: Vec<Address>) -> Result<(), SamizdatError> {
        Ok(self.inner.create_group(&group_id, &to_core(&members)?)?)
    }

    /// Adds member devices: the next message gives them our chain from then
    /// on (they cannot read what was sent before). Members already in the
    /// group are left as they are.
    pub fn add_group_members(&self, group_id: Vec<u8>, members: Vec<Address>) -> Result<(), SamizdatError> {
        Ok(self.inner.add_group_members(&group_id, &to_core(&members)?)?)
    }

    /// Removes member devices: their messages are refused from now on, and
    /// our next message starts a new chain that only the remaining members
    /// get. Names that are not members are ignored. A device of a member
    /// user is refused (`InvalidArgument`, nothing written): its user's list
    /// decides; remove the user ([`Self::remove_group_users`]), or the device
    /// from the list.
    pub fn remove_group_members(&self, group_id: Vec<u8>, members: Vec<Address>) -> Result<(), SamizdatError> {
        Ok(self.inner.remove_group_members(&group_id, &to_core(&members)?)?)
    }

    /// The member devices of a group (besides this one), in the order they
    /// were added, as the newest verified device lists make them now (see
    /// [`Self::add_group_users`]).
    pub fn group_members(&self, group_id: Vec<u8>) -> Result<Vec<Address>, SamizdatError> {
        Ok(self.inner.group_members(&group_id)?.into_iter().map(Address::from).collect())
    }

    /// Adds member users (PROTOCOL.md 18.8): each user's member devices are
    /// from now on the devices of its newest verified device list (this
    /// device apart). Its listed devices are added now; a device a newer
    /// list adds becomes a member before our next message; a device a newer
    /// list drops stops being one before our next message, which then
    /// starts a new chain it never receives, even if the app never removed
    /// it. Our own user may be one (our other devices are then members).
    /// Users already members are left as they are. `NoSession` for a user
    /// with no verified list on this device (start a session from one of its
    /// bundles, or give its list: [`Self::update_device_list`]);
    /// `LimitExceeded` past 5,000 member devices. A refusal writes nothing.
    pub fn add_group_users(&self, group_id: Vec<u8>, users: Vec<String>) -> Result<(), SamizdatError> {
        Ok(self.inner.add_group_users(&group_id, &user_ids(&users))?)
    }

    /// Removes member users: the users, and every member device of theirs
    /// (also one added per device), as [`Self::remove_group_members`]
    /// removes devices: our next message starts a new chain that none of
    /// them receives. Names that are neither member users nor users of a
    /// member device are ignored.
    pub fn remove_group_users(&self, group_id: Vec<u8>, users: Vec<String>) -> Result<(), SamizdatError> {
        Ok(self.inner.remove_group_users(&group_id, &user_ids(&users))?)
    }

    /// The member users of a group, in the order they were added
    /// ([`Self::group_members`] gives the member devices).
    pub fn group_users(&self, group_id: Vec<u8>) -> Result<Vec<String>, SamizdatError> {
        Ok(self.inner.group_users(&group_id)?)
    }

    /// Deletes a group from this device (leaving it): its messages are
    /// refused from then on.
    pub fn delete_group(&self, group_id: Vec<u8>) -> Result<(), SamizdatError> {
        Ok(self.inner.delete_group(&group_id)?)
    }

    /// Encrypts `plaintext` for the group, and gives our chain to the
    /// members that lack it. Committed before it returns.
    pub fn group_encrypt(&self, group_id: Vec<u8>, plaintext: Vec<u8>) -> Result<GroupSend, SamizdatError> {
        Ok(self.inner.group_encrypt(&group_id, &plaintext)?.into())
    }
}

fn to_core(members: &[Address]) -> Result<Vec<samizdat::address::Address>, SamizdatError> {
    members.iter().map(Address::to_core).collect()
}

fn user_ids(users: &[String]) -> Vec<&str> {
    users.iter().map(String::as_str).collect()
}

impl From<device::MessageKind> for MessageKind {
    fn from(kind: device::MessageKind) -> Self {
        match kind {
            device::MessageKind::Direct => Self::Direct,
            device::MessageKind::Group => Self::Group,
            device::MessageKind::SentSync => Self::SentSync,
            device::MessageKind::UserIdentity => Self::UserIdentity,
            // Control, and any kind a later core adds: nothing for the app to show.
            _ => Self::Control,
        }
    }
}

impl From<device::Outgoing> for Outgoing {
    fn from(outgoing: device::Outgoing) -> Self {
        Self { to: outgoing.to.into(), message: outgoing.message.into() }
    }
}

impl From<device::GroupSend> for GroupSend {
    fn from(sent: device::GroupSend) -> Self {
        Self {
            message: sent.message.into(),
            distributions: sent.distributions.into_iter().map(Outgoing::from).collect(),
            without_session: sent.without_session.into_iter().map(Address::from).collect(),
        }
    }
}
