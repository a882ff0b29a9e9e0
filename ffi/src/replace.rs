//! Replacing the user identity when a device was lost (issue 17; the
//! core's `device::replace`). Translation only, as in the rest of the crate.
//!
//! A list without a lost device stops the server, not the device's holder:
//! it holds the user identity key (PROTOCOL.md 23.1) and can sign a newer
//! list that names it again. Removing it for good takes a new user identity:
//!
//! 1. A remaining device replaces it ([`Device::replace_user_identity`],
//!    with a fresh [`UserIdentity`] the app keeps first and the devices the
//!    user keeps): the [`Replaced`] result has the new signed list (this
//!    device already holds it; the app publishes it) and one handover per
//!    other kept device to send.
//! 2. Each of them decrypts its handover as a
//!    [`MessageKind::UserIdentity`](crate::MessageKind::UserIdentity)
//!    message: [`PendingMessage::new_user_identity`] gives the
//!    [`NewUserIdentity`] (the key pair to keep before the commit, the list,
//!    the devices removed); the commit makes the list its own.
//! 3. Contacts refuse the new list (`UntrustedIdentity`, with the new user
//!    identity key) until the users compared the new safety number and the
//!    app called [`Device::trust_new_user_identity`]; from then on they
//!    refuse the lost device and every list of the old key.
//!
//! Refusals: `invalid_argument` for an id outside `u32`, no list of our
//! own, or the key our list is already signed by while it names a device not
//! kept (`SameUserIdentity`); `invalid_message` for a handover from a
//! contact's device (`ForeignHandover`). A refusal writes nothing.

use std::{fmt, sync::Arc};

use samizdat::device;

use crate::{
    Address, Bytes, Device, ListedDevice, Outgoing, PendingMessage, SamizdatError, UserIdentity, UserIdentityKey,
};

/// What [`Device::replace_user_identity`] made. This device already holds
/// the new list as its own.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Replaced {
    /// The user's new signed device list, signed by the new user identity:
    /// publish it. Contacts refuse it (`UntrustedIdentity`) until their
    /// users compared the new safety number and they called
    /// `trust_new_user_identity`.
    pub device_list: Bytes,
    /// One handover per other device of the new list with which this device
    /// has a session (under the identity key the list names), in the list's
    /// order: send each to its `to`.
    pub handovers: Vec<Outgoing>,
    /// The devices of the new list that got no handover (no session under
    /// the key the list names): start one ([`Device::start_session`]), then
    /// call [`Device::replace_user_identity`] again with the same user
    /// identity: it makes the handovers again, without a new list.
    pub missing: Vec<Address>,
    /// The devices this call removed from the list (the ones not kept), with
    /// the identity keys it named them with; empty when called again with the
    /// user identity the list is already signed by.
    pub removed: Vec<ListedDevice>,
    /// Whether the list changed: `false` when it was already signed by the
    /// user identity given and named only devices kept (a call made again).
    pub list_changed: bool,
}

/// A new user identity another device of our own user handed over
/// ([`PendingMessage::new_user_identity`]). Keep [`Self::user_identity`] as
/// the app keeps the user identity (its seed, sealed) before the commit: the
/// commit makes the list this device's own. Its `toString`/`repr` shows the
/// public key only.
#[derive(Clone, uniffi::Record)]
pub struct NewUserIdentity {
    /// The new user identity key pair: it signs the user's next lists.
    pub user_identity: Arc<UserIdentity>,
    /// The user's new signed device list, this device's own once committed.
    pub device_list: Bytes,
    /// The devices of our own list that the new list no longer names (the
    /// lost ones): tell the user which devices were removed, and by which
    /// device (the pending message's `sender`).
    pub removed: Vec<ListedDevice>,
    /// The devices of the new list that our own list does not name (linked
    /// by the sender, not seen here yet): show them too.
    pub added: Vec<ListedDevice>,
    /// The user identity key (32 bytes) the handover says it replaces;
    /// `None` if the sender no longer knew it.
    pub replaced: Option<UserIdentityKey>,
}

#[uniffi::export]
impl Device {
    /// Replaces our user's identity because a device may be in someone
    /// else's hands: signs with `user_identity`, a fresh one the app
    /// generated and keeps ([`UserIdentity::generate`]), our own list reduced
    /// to this device and the devices of `keep` (device ids the user confirms
    /// they still hold; an id the list does not name is ignored), takes it
    /// as this device's own, and encrypts a handover of the user identity and
    /// the list to each other device of the new list with a session, in one
    /// transaction. Keep `user_identity` before the call; then publish the
    /// returned `device_list` and send the `handovers`. Called again with the
    /// same user identity and devices, it makes the handovers again and
    /// changes no list. `InvalidArgument` for an id outside 0 to
    /// 4,294,967,295, while this device has no list of its own, or when
    /// `user_identity` is the one the list is already signed by while it
    /// names a device not kept (a lost device holds that key: generate a new
    /// one). A refusal writes nothing.
    pub fn replace_user_identity(
        &self,
        user_identity: Arc<UserIdentity>,
        keep: Vec<i64>,
    ) -> Result<Replaced, SamizdatError> {
        let keep = keep
            .iter()
            .map(|&id| {
                u32::try_from(id).map_err(|_| {
                    SamizdatError::invalid_argument(format!("device id {id} to keep is outside 0 to {}", u32::MAX))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.inner.replace_user_identity(&user_identity.inner, &keep)?.into())
    }

    /// The devices of our own list that have not acknowledged the handover
    /// of our user identity yet: each handover's commit sends an
    /// acknowledgment back (send what `commit` returns). A device still here
    /// after a while missed its handover (a server may drop it): call
    /// `replace_user_identity` again with the same user identity and devices.
    /// Empty when no replacement is pending. Writes nothing.
    pub fn awaiting_handovers(&self) -> Result<Vec<Address>, SamizdatError> {
        Ok(self.inner.awaiting_handovers()?.iter().map(Address::from).collect())
    }
}

#[uniffi::export]
impl PendingMessage {
    /// For a [`MessageKind::UserIdentity`](crate::MessageKind::UserIdentity)
    /// (another device of our own user replaced the user identity), the new
    /// user identity, the new list and the devices removed; `None` for every
    /// other kind.
    pub fn new_user_identity(&self) -> Option<NewUserIdentity> {
        self.new_user_identity.clone()
    }
}

impl fmt::Debug for NewUserIdentity {
    /// The user identity's public key only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUserIdentity")
            .field("user_identity", &self.user_identity.inner)
            .field("device_list_len", &self.device_list.len())
            .field("removed", &self.removed)
            .field("added", &self.added)
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl From<device::Replaced> for Replaced {
    fn from(replaced: device::Replaced) -> Self {
        Self {
            device_list: replaced.device_list.to_bytes().into(),
            handovers: replaced.handovers.into_iter().map(Outgoing::from).collect(),
            missing: replaced.missing.into_iter().map(Address::from).collect(),
            removed: crate::users::listed(&replaced.removed),
            list_changed: replaced.list_changed,
        }
    }
}

impl From<&device::NewUserIdentity> for NewUserIdentity {
    fn from(new: &device::NewUserIdentity) -> Self {
        let user_identity = samizdat::user::UserIdentityKeyPair::from_seed(&new.user_identity().to_seed());
        Self {
            user_identity: Arc::new(UserIdentity { inner: user_identity }),
            device_list: new.device_list().to_bytes().into(),
            removed: crate::users::listed(new.removed()),
            added: crate::users::listed(new.added()),
            replaced: new.replaced().map(|key| key.as_bytes().as_slice().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use samizdat::{device::DeviceError, user::DeviceListError};

    use crate::{ErrorKind, Recovery, SamizdatError};

    /// The two refusals of a replacement reach the bindings with the codes
    /// of their kinds and the core's text.
    #[test]
    fn the_replacement_errors_keep_their_code_recovery_and_text() {
        let cases = [
            (DeviceListError::ForeignHandover { user_id: "bob".to_owned() }, ErrorKind::InvalidMessage, Recovery::Drop),
            (DeviceListError::SameUserIdentity, ErrorKind::InvalidArgument, Recovery::FixCall),
        ];
        for (list_error, kind, recovery) in cases {
            let text = list_error.to_string();
            for error in
                [SamizdatError::from(list_error.clone()), SamizdatError::from(DeviceError::from(list_error.clone()))]
            {
                assert_eq!(error.kind(), kind, "{list_error:?}");
                assert_eq!(error.code(), list_error.kind().code(), "{list_error:?}");
                assert_eq!(error.recovery(), recovery, "{list_error:?}");
                assert!(!text.is_empty());
                assert_eq!(error.to_string(), text, "the core's text, unchanged");
            }
        }
    }

    /// The whole exchange through the translation: a replacement's record,
    /// then the handover's kind and accessor on the other device, whose
    /// Debug shows no seed.
    #[test]
    fn a_handover_crosses_the_boundary_and_shows_no_secret() {
        use std::{sync::Arc, time::UNIX_EPOCH};

        use samizdat::{
            address::Address,
            device::Device,
            store::{MemoryBackend, StorageKey},
            user::{DeviceList, UserIdentityKeyPair},
        };

        use crate::{MessageKind, PendingMessage, UserIdentity};

        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let new = |id, key| {
            let address = Address::new("alice", id).unwrap();
            Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address, UNIX_EPOCH).unwrap()
        };
        let (phone, laptop, tablet) = (new(1, 1), new(2, 2), new(3, 3));
        let alice = UserIdentityKeyPair::from_seed(&[0xA0; 32]);
        let devices = [(1, phone.identity_key()), (2, laptop.identity_key()), (3, tablet.identity_key())];
        let list = DeviceList::new("alice", 1, &alice.public_key(), devices).unwrap().sign(&alice).unwrap();
        for d in [&phone, &laptop, &tablet] {
            d.set_device_list(&list).unwrap();
        }
        laptop.start_session(&phone.prekey_bundle().unwrap()).unwrap();

        let fresh = Arc::new(UserIdentity { inner: UserIdentityKeyPair::from_seed(&[0xA9; 32]) });
        let replaced: super::Replaced = laptop.replace_user_identity(&fresh.inner, &[1]).unwrap().into();
        assert!(replaced.list_changed);
        assert_eq!(replaced.removed.len(), 1);
        assert_eq!(
            (replaced.removed[0].device_id, &replaced.removed[0].identity_key),
            (3, &crate::IdentityKey::from(tablet.identity_key().as_bytes().as_slice()))
        );
        assert!(replaced.missing.is_empty());
        assert_eq!(replaced.handovers.len(), 1);
        assert_eq!(replaced.handovers[0].to, crate::Address::from(phone.address()));
        assert_eq!(Some(replaced.device_list.clone()), laptop.device_list().unwrap().map(|l| l.to_bytes().into()));

        let pending: PendingMessage = phone.decrypt(laptop.address(), &replaced.handovers[0].message).unwrap().into();
        assert_eq!(pending.kind(), MessageKind::UserIdentity);
        assert!(pending.plaintext().is_empty());
        let handed = pending.new_user_identity().unwrap();
        assert_eq!(handed.user_identity.seed(), fresh.seed());
        assert_eq!(handed.device_list, replaced.device_list);
        assert_eq!(handed.removed, replaced.removed);
        assert!(handed.added.is_empty());
        assert_eq!(handed.replaced, Some(alice.public_key().as_bytes().as_slice().into()));
        let shown = format!("{handed:?}");
        let seed = fresh.seed();
        assert!(!shown.contains(&hex(&seed)) && !shown.contains(&format!("{seed:?}")), "{shown}");
        assert!(shown.contains("removed"), "{shown}");
        // The record outlives the commit, which makes the list the phone's own.
        let core = crate::take(&pending.inner).unwrap();
        phone.commit(core).unwrap();
        assert_eq!(pending.new_user_identity().unwrap().device_list, replaced.device_list);
        assert_eq!(Some(replaced.device_list), phone.device_list().unwrap().map(|l| l.to_bytes().into()));
    }
}
