//! Replacing the user identity when a device was lost (PROTOCOL.md 23.9).
//!
//! Every device of a user holds the user identity key (PROTOCOL.md 23.1),
//! so a list without a lost phone stops the server, not the phone's holder:
//! whoever has it can sign a newer list that names it again. Removing a
//! device that may be in someone else's hands therefore takes a new user
//! identity:
//!
//! 1. A remaining device replaces it ([`Device::replace_user_identity`]):
//!    the app gives a fresh user identity key; the device signs with it the
//!    list of the devices the user keeps, takes it as its own, and encrypts a
//!    *handover* (the new key and the list) to each other remaining device
//!    over its one-to-one session, in one transaction.
//! 2. Each of them reads it ([`MessageKind::UserIdentity`](super::MessageKind::UserIdentity)): the app
//!    keeps the new key ([`PendingMessage::new_user_identity`]); the list
//!    becomes its own on commit, which returns an acknowledgment for the
//!    replacing device. That device lists the devices that have not
//!    acknowledged yet ([`Device::awaiting_handovers`]) and, for those, is
//!    called again with the same key pair.
//! 3. Contacts see a new user identity (their next list of ours is refused
//!    with [`DeviceListError::UntrustedUser`]): the users compare the new
//!    safety number, then each contact calls
//!    [`Device::trust_new_user_identity`]. From then on, no list the old key
//!    signs is accepted, whatever version it carries.
//!
//! What this layer owns: the call, the planning of a handover and of its
//! acknowledgment read by `decrypt` (their checks, H6 to H13 and A3 to A5)
//! and what their commits write. Their encodings are `user::handover`'s.

use std::fmt;

use super::{Device, DeviceError, Outgoing, PendingMessage, lock, retry_on_conflict};
use crate::{
    DecodeError, SessionError,
    address::Address,
    keys::IdentityKey,
    padding::ContentType,
    store::{Backend, StoreError, Table},
    user::{
        DeviceList, DeviceListError, SignedDeviceList, UserIdentityKey, UserIdentityKeyPair, UserTrust,
        handover::{Handover, HandoverAck},
    },
};

use super::users::{LoadedUser, OwnExtras};

/// What [`Device::replace_user_identity`] made. This device already holds
/// the new list as its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replaced {
    /// The user's new device list, signed by the new user identity: publish
    /// it. Contacts refuse it ([`DeviceListError::UntrustedUser`]) until
    /// their users compared the new safety number and they called
    /// [`Device::trust_new_user_identity`].
    pub device_list: SignedDeviceList,
    /// One handover per other device of the new list with which this device
    /// has a session (under the identity key the list names), in the list's
    /// order: send each to its [`Outgoing::to`].
    pub handovers: Vec<Outgoing>,
    /// The devices of the new list that got no handover, because this
    /// device has no session with them under the key the list names. Start
    /// one ([`Device::start_session`]), then call
    /// [`Device::replace_user_identity`] again with the same key pair: it
    /// makes the handovers again, without a new list.
    pub missing: Vec<Address>,
    /// The devices this call removed from the list, the ones not kept (with
    /// the identity keys it named them with); empty when it was called again
    /// with the key pair the list is already signed by.
    pub removed: Vec<(u32, IdentityKey)>,
    /// Whether the list changed: `false` when it was already signed by the
    /// key pair given and named only the devices kept (a call made again).
    pub list_changed: bool,
}

/// A new user identity that another device of our own user handed over
/// ([`MessageKind::UserIdentity`](super::MessageKind::UserIdentity), PROTOCOL.md 23.9). Keep the key pair as
/// the app keeps the user identity, before the commit: the commit makes the
/// list this device's own and returns the acknowledgment to send back. The
/// key pair is wiped on drop; `Debug` shows its public key only.
#[derive(Debug)]
pub struct NewUserIdentity {
    user_identity: UserIdentityKeyPair,
    device_list: SignedDeviceList,
    removed: Vec<(u32, IdentityKey)>,
    added: Vec<(u32, IdentityKey)>,
    replaced: Option<UserIdentityKey>,
}

impl NewUserIdentity {
    /// The new user identity key pair: it signs the user's next lists.
    pub fn user_identity(&self) -> &UserIdentityKeyPair {
        &self.user_identity
    }

    /// The user's new device list, this device's own once committed.
    pub fn device_list(&self) -> &SignedDeviceList {
        &self.device_list
    }

    /// The devices of our own list that the new list no longer names (the
    /// lost ones): tell the user which devices were removed, and by which
    /// device ([`PendingMessage::peer`]).
    pub fn removed(&self) -> &[(u32, IdentityKey)] {
        &self.removed
    }

    /// The devices of the new list that our own list does not name (with
    /// those keys): devices the sender had linked that this device had not
    /// seen yet. Show them too: the user confirms they are theirs.
    pub fn added(&self) -> &[(u32, IdentityKey)] {
        &self.added
    }

    /// The user identity key the handover says it replaces (`None` if the
    /// sender no longer knew it).
    pub fn replaced(&self) -> Option<&UserIdentityKey> {
        self.replaced.as_ref()
    }
}

/// A handover as `decrypt` planned it: what the app is told, our own row as
/// read, and the trust to write there on commit (`None`: our own list is
/// already the handed one).
pub(super) struct HandoverPlan {
    pub(super) identity: NewUserIdentity,
    pub(super) own: LoadedUser,
    pub(super) trust: Option<UserTrust>,
}

/// What a message about our own user identity does at its commit, as
/// `decrypt` planned it (PROTOCOL.md 23.9). (Boxed whole in the pending
/// message: the handover variant is the large one.)
#[allow(clippy::large_enum_variant)]
pub(super) enum OwnPlan {
    /// A handover ([`MessageKind::UserIdentity`](super::MessageKind::UserIdentity)):
    /// our own row written if the list is new; an acknowledgment sent back.
    Handover(HandoverPlan),
    /// An acknowledgment of our handover (a control message): our own row
    /// written without the sender among the devices awaiting it, or nothing
    /// (`None`: an acknowledgment of another identity, or one already
    /// taken).
    Ack(Option<(LoadedUser, UserTrust, OwnExtras)>),
}

impl fmt::Debug for OwnPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handover(plan) => f.debug_tuple("Handover").field(&plan.identity).finish(),
            Self::Ack(write) => f.debug_tuple("Ack").field(&write.is_some()).finish(),
        }
    }
}

impl PendingMessage {
    /// For a [`MessageKind::UserIdentity`](super::MessageKind::UserIdentity), the new user identity another
    /// device of ours handed over; `None` for every other kind.
    pub fn new_user_identity(&self) -> Option<&NewUserIdentity> {
        self.handover().map(|plan| &plan.identity)
    }
}

impl<B: Backend> Device<B> {
    /// Replaces our user's identity because a device may be in someone
    /// else's hands (lost, stolen, seized; PROTOCOL.md 23.9): signs with
    /// `user_identity`, a fresh key pair the app generated and keeps
    /// ([`UserIdentityKeyPair::generate`]), our own list reduced to this
    /// device and the devices of `keep` (the ones the user confirms they
    /// still hold), takes it as this device's own, and encrypts a handover
    /// of the key pair and the list to each other device of it, on its
    /// one-to-one session, in one transaction.
    ///
    /// The user names the devices to keep, not the one lost: a device the
    /// holder of the lost one listed meanwhile with the old key (a ghost)
    /// is dropped unless the user confirms it. A device of `keep` that our
    /// list does not name is ignored. The new list's version is one more
    /// than ours (1 if ours is the last one), and the handover names the key
    /// it replaces, so that our other devices take it whatever list the old
    /// key signed meanwhile.
    ///
    /// Keep `user_identity` before the call; then publish
    /// [`Replaced::device_list`] and send [`Replaced::handovers`]. A lost
    /// device keeps the old key, and every list it signs with it is refused
    /// by our own devices once they took the handover, and by each contact
    /// once it trusted the new identity. Called again with the same key pair
    /// and the same devices (after sessions with [`Replaced::missing`]
    /// devices were started, or when handovers were lost), it makes the
    /// handovers again and changes no list.
    ///
    /// # Errors
    /// [`DeviceListError::NoOwnList`]; [`DeviceListError::SameUserIdentity`]
    /// if `user_identity` is the one our list is signed by while the list
    /// names a device not kept (the lost device holds that key: a new one
    /// is the point); [`SessionError::Encrypt`];
    /// a store error. Nothing is written.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// use samizdat::{address::Address, device::{Device, MessageKind}, store::{MemoryBackend, StorageKey}, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let mut rng = samizdat::os_rng();
    /// let new = |id: u32| Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([id as u8; 32]), Address::new("alice", id).unwrap(), SystemTime::now());
    /// let (phone, laptop, tablet) = (new(1)?, new(2)?, new(3)?);
    /// let alice = UserIdentityKeyPair::generate(&mut rng);
    /// let devices = [(1, phone.identity_key()), (2, laptop.identity_key()), (3, tablet.identity_key())];
    /// let list = DeviceList::new("alice", 1, &alice.public_key(), devices)?.sign(&alice)?;
    /// for device in [&phone, &laptop, &tablet] {
    ///     device.set_device_list(&list)?;
    /// }
    /// laptop.start_session(&phone.prekey_bundle()?)?;
    ///
    /// // The tablet was stolen: on the laptop, the user keeps the phone.
    /// let fresh = UserIdentityKeyPair::generate(&mut rng);
    /// let replaced = laptop.replace_user_identity(&fresh, &[1])?;
    /// assert_eq!(replaced.removed, vec![(3, tablet.identity_key())]);
    ///
    /// // The phone reads the handover: the new list is its own once committed.
    /// let handover = &replaced.handovers[0];
    /// let pending = phone.decrypt(laptop.address(), &handover.message)?;
    /// assert_eq!(pending.kind(), MessageKind::UserIdentity);
    /// let new_identity = pending.new_user_identity().expect("a handover");
    /// assert_eq!(new_identity.user_identity().public_key(), fresh.public_key());
    /// // (the phone's app keeps new_identity.user_identity() here)
    /// phone.commit(pending)?;
    /// assert_eq!(phone.device_list()?, Some(replaced.device_list));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replace_user_identity(
        &self,
        user_identity: &UserIdentityKeyPair,
        keep: &[u32],
    ) -> Result<Replaced, DeviceError> {
        self.check_process()?;
        let user_id = self.address.user_id();
        let kept = |id: u32| id == self.address.device_id() || keep.contains(&id);
        // The user lock before the peer locks, as a handover's commit.
        let user_lock = self.peer_lock(&self.user_lock_key(user_id));
        let _guard = lock(&user_lock);
        retry_on_conflict(|| {
            let loaded = self.load_user(user_id)?;
            let trust = loaded.trust.clone().ok_or(DeviceListError::NoOwnList)?;
            let list = trust.list();
            let removed: Vec<_> = list.devices().iter().copied().filter(|(id, _)| !kept(*id)).collect();
            let same_key = *trust.user_identity_key() == user_identity.public_key();
            if same_key && !removed.is_empty() {
                return Err(DeviceListError::SameUserIdentity.into());
            }
            let (device_list, updated, replaces) = if same_key {
                // Made again: the key replaced, as the first call kept it.
                (trust.signed_list().clone(), None, self.own_extras(&loaded).replaced)
            } else {
                let devices = list.devices().iter().copied().filter(|(id, _)| kept(*id));
                // A list at the last version (the old key's holder may sign
                // one) leaves no larger one: a new identity starts again.
                let version = list.version().checked_add(1).unwrap_or(1);
                let signed =
                    DeviceList::new(user_id, version, &user_identity.public_key(), devices)?.sign(user_identity)?;
                let mut updated = trust.clone();
                updated.trust_new_identity(&signed)?;
                (signed, Some(updated), Some(*trust.user_identity_key()))
            };
            let handover = Handover {
                user_identity: UserIdentityKeyPair::from_seed(&user_identity.to_seed()),
                device_list: device_list.clone(),
                list: device_list.verify()?,
                replaces,
            };
            let content = handover.to_control_bytes();
            let (handovers, missing, mut writes) = self.handover_to_own_devices(handover.list.devices(), &content)?;
            if let Some(updated) = &updated {
                // Every other device of the new list awaits the handover
                // until it acknowledges it.
                let me = self.address.device_id();
                let awaiting = handover.list.devices().iter().map(|(id, _)| *id).filter(|id| *id != me).collect();
                writes.push(self.user_write_with(&loaded, updated, &OwnExtras { replaced: replaces, awaiting }));
            }
            // One transaction: the ciphertexts of a refused write are
            // dropped, never returned.
            self.write(&writes)?;
            Ok(Replaced { device_list, handovers, missing, removed, list_changed: updated.is_some() })
        })
    }

    /// The handovers of `content` to every device of `devices` but this
    /// one that has a session under the key listed, under their peer locks
    /// (increasing row-key order): the messages, the devices with no such
    /// session, and the session writes (not applied).
    #[allow(clippy::type_complexity)]
    fn handover_to_own_devices(
        &self,
        devices: &[(u32, IdentityKey)],
        content: &[u8],
    ) -> Result<(Vec<Outgoing>, Vec<Address>, Vec<crate::store::Write>), DeviceError> {
        let user_id = self.address.user_id();
        let mut targets = Vec::with_capacity(devices.len());
        for (device_id, identity) in devices.iter().filter(|(id, _)| *id != self.address.device_id()) {
            // A verified list's user id is a valid one (L8).
            let address = Address::new(user_id, *device_id).map_err(|_| StoreError::Corrupt { table: Table::Users })?;
            targets.push((self.sealer.address_key(&address), address, *identity));
        }
        let mut rows: Vec<&[u8]> = targets.iter().map(|(row, ..)| row.as_slice()).collect();
        rows.sort_unstable();
        let locks: Vec<_> = rows.iter().map(|row| self.peer_lock(row)).collect();
        let _guards: Vec<_> = locks.iter().map(|l| lock(l)).collect();
        let (mut handovers, mut missing, mut writes) = (Vec::new(), Vec::new(), Vec::new());
        for (row, address, identity) in targets {
            let (loaded, record) = self.load_record(&row)?;
            if !record.has_session() || record.trusted_identity() != Some(identity) {
                missing.push(address);
                continue;
            }
            let (message, more) =
                self.encrypt_on_row(&address, &row, (loaded, record), content, ContentType::Control)?;
            writes.extend(more);
            handovers.push(Outgoing { to: address, message });
        }
        Ok((handovers, missing, writes))
    }

    /// Plans a handover read by `decrypt` from `peer`, whose session
    /// authenticated `identity` (PROTOCOL.md 23.9, H6 to H13). Writes
    /// nothing.
    ///
    /// # Errors
    /// [`DeviceListError::ForeignHandover`] (H6), [`DeviceListError::NoOwnList`]
    /// (H7), [`DeviceListError::UnlistedDevice`] for the sender (H8),
    /// [`DeviceListError::WrongUser`] (H9),
    /// [`SessionError::Malformed`] for a list that drops the receiver or
    /// the sender (H10, H11), [`DeviceListError::Rollback`] (H13); a store
    /// error.
    pub(super) fn plan_handover(
        &self,
        peer: &Address,
        identity: &IdentityKey,
        handover: Handover,
    ) -> Result<HandoverPlan, DeviceError> {
        let (own, trust) = self.own_sender(peer, identity)?;
        let user_id = self.address.user_id();
        let Handover { user_identity, device_list, list, replaces } = handover;
        if list.user_id() != user_id {
            let (expected, found) = (user_id.to_owned(), list.user_id().to_owned());
            return Err(DeviceListError::WrongUser { expected, found }.into());
        }
        // No genuine library hands a list that drops the receiver (it sends
        // handovers to the devices of the new list only) or the sender (it
        // always keeps itself): a message that breaks the rule.
        if list.device(self.address.device_id()) != Some(&self.identity_key())
            || list.device(peer.device_id()) != Some(identity)
        {
            return Err(SessionError::Malformed(DecodeError::InvalidValue("handover.device_list")).into());
        }
        let held = trust.list();
        // A list of the identity we hold, not newer than ours: we took this
        // identity already (and moved on to a newer list of it, a linking
        // say): nothing changes, and the commit acknowledges it again, so
        // that the sender stops awaiting us (the second outside audit).
        let taken = device_list == *trust.signed_list()
            || (list.user_identity_key() == trust.user_identity_key() && list.version() <= held.version());
        let (removed, added) = if taken {
            (Vec::new(), Vec::new())
        } else {
            (
                held.devices().iter().copied().filter(|(id, key)| list.device(*id) != Some(key)).collect(),
                list.devices().iter().copied().filter(|(id, key)| held.device(*id) != Some(key)).collect(),
            )
        };
        // Taken if it replaces the key we hold, whatever list that key signed
        // meanwhile (the lost device's holder may sign any version), or if it
        // is newer than our list (a device that missed a replacement);
        // else it is an old handover.
        let updated = if taken {
            None
        } else if replaces.as_ref() == Some(trust.user_identity_key()) || list.version() > held.version() {
            let mut updated = trust.clone();
            updated.trust_new_identity(&device_list)?;
            Some(updated)
        } else {
            return Err(DeviceListError::Rollback { seen: held.version(), offered: list.version() }.into());
        };
        let identity = NewUserIdentity { user_identity, device_list, removed, added, replaced: replaces };
        Ok(HandoverPlan { identity, own, trust: updated })
    }

    /// Our own row and trust, for a handover or an acknowledgment from
    /// `peer` whose session authenticated `identity`: refused unless `peer`
    /// is a device of our own user (H6, A3) that our own list, which must be
    /// set (H7, A4), names with that key (H8, A5).
    fn own_sender(&self, peer: &Address, identity: &IdentityKey) -> Result<(LoadedUser, UserTrust), DeviceError> {
        let user_id = self.address.user_id();
        if peer.user_id() != user_id {
            return Err(DeviceListError::ForeignHandover { user_id: peer.user_id().to_owned() }.into());
        }
        let own = self.load_user(user_id)?;
        let trust = own.trust.clone().ok_or(DeviceListError::NoOwnList)?;
        trust.check_device(peer.device_id(), identity)?;
        Ok((own, trust))
    }

    /// Plans an acknowledgment of our handover read by `decrypt` from
    /// `peer`, whose session authenticated `identity` (PROTOCOL.md 23.9, A3
    /// to A5). Writes nothing.
    ///
    /// # Errors
    /// [`DeviceListError::ForeignHandover`], [`DeviceListError::NoOwnList`],
    /// [`DeviceListError::UnlistedDevice`]; a store error.
    pub(super) fn plan_ack(
        &self,
        peer: &Address,
        identity: &IdentityKey,
        ack: HandoverAck,
    ) -> Result<OwnPlan, DeviceError> {
        let (own, trust) = self.own_sender(peer, identity)?;
        let mut extras = self.own_extras(&own);
        if ack.user_identity_key != *trust.user_identity_key() || !extras.awaiting.contains(&peer.device_id()) {
            return Ok(OwnPlan::Ack(None));
        }
        extras.awaiting.retain(|id| *id != peer.device_id());
        Ok(OwnPlan::Ack(Some((own, trust, extras))))
    }

    /// The devices of our own list that have not acknowledged the handover
    /// of our user identity (PROTOCOL.md 23.9): those
    /// [`Self::replace_user_identity`] handed it to, or could not, until each
    /// took it and its acknowledgment came back. A server that drops a
    /// handover leaves its device here: call
    /// [`Self::replace_user_identity`] again with the same key pair (and
    /// start a session with a device that has none). Empty when no
    /// replacement is pending, and on a device that took a handover. Writes
    /// nothing.
    ///
    /// # Errors
    /// A store error.
    pub fn awaiting_handovers(&self) -> Result<Vec<Address>, DeviceError> {
        self.check_process()?;
        let user_id = self.address.user_id();
        let own = self.load_user(user_id)?;
        let Some(trust) = &own.trust else { return Ok(Vec::new()) };
        let mut awaiting = Vec::new();
        for id in self.own_extras(&own).awaiting.into_iter().filter(|id| trust.list().device(*id).is_some()) {
            // A verified list's user id is a valid one (L8).
            awaiting.push(Address::new(user_id, id).map_err(|_| StoreError::Corrupt { table: Table::Users })?);
        }
        Ok(awaiting)
    }
}
