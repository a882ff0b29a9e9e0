//! What a peer keeps of a user, and the rules for a new list (PROTOCOL.md
//! 23.3).

use super::{DeviceList, DeviceListError, SignedDeviceList, UserIdentityKey};
use crate::keys::IdentityKey;

/// The devices a verified list added and removed, in increasing device id
/// order. A device whose identity key changed (reinstalled) is in both: its
/// old key removed, its new one added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListChange {
    /// Devices the new list names that the old one did not (with that key).
    pub added: Vec<(u32, IdentityKey)>,
    /// Devices the old list named that the new one does not (with that key).
    pub removed: Vec<(u32, IdentityKey)>,
}

impl ListChange {
    /// Whether the list named the same devices as before.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// What a peer trusts of one user: the user identity key pinned on first use
/// and the newest device list verified under it. Store it with
/// [`Self::to_bytes`] (the signed list, verified again when loaded).
///
/// Every method that takes a list computes its outcome first and changes
/// the value only when it succeeds: a refused list leaves it as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTrust {
    list: DeviceList,
    signed: SignedDeviceList,
}

impl UserTrust {
    /// Trust on first use: pins the user identity key that signed `signed`,
    /// and its list, for `user_id`. As with a device identity, the users can
    /// confirm the pin by comparing safety numbers
    /// ([`SafetyNumber::for_users`](crate::fingerprint::SafetyNumber::for_users)).
    ///
    /// # Errors
    /// [`DeviceListError::Malformed`], [`DeviceListError::BadSignature`],
    /// [`DeviceListError::WrongUser`].
    pub fn first_use(user_id: &str, signed: &SignedDeviceList) -> Result<Self, DeviceListError> {
        let list = verified_for(user_id, signed)?;
        Ok(Self { list, signed: signed.clone() })
    }

    /// A newer list of the pinned user: it replaces the one held, and the
    /// devices it adds and removes are returned. The same list again changes
    /// nothing (an empty change).
    ///
    /// # Errors
    /// In this order: [`DeviceListError::Malformed`] and
    /// [`DeviceListError::BadSignature`] (not a list the key it names
    /// signed), [`DeviceListError::WrongUser`],
    /// [`DeviceListError::UntrustedUser`] (signed by another user identity
    /// key than the pinned one), [`DeviceListError::Rollback`] (older than
    /// the list held), [`DeviceListError::Equivocation`] (another list with
    /// the same version).
    pub fn update(&mut self, signed: &SignedDeviceList) -> Result<ListChange, DeviceListError> {
        let list = verified_for(self.list.user_id(), signed)?;
        if list.user_identity_key() != self.list.user_identity_key() {
            return Err(DeviceListError::UntrustedUser { offered: *list.user_identity_key() });
        }
        let (seen, offered) = (self.list.version(), list.version());
        if offered < seen {
            return Err(DeviceListError::Rollback { seen, offered });
        }
        if offered == seen {
            // The very same list (as signed) changes nothing; any other one
            // under the same version means the user key signed two.
            return if list == self.list {
                Ok(ListChange::default())
            } else {
                Err(DeviceListError::Equivocation { version: seen })
            };
        }
        let change = change_between(&self.list, &list);
        *self = Self { list, signed: signed.clone() };
        Ok(change)
    }

    /// The app's decision to trust a new user identity for this user (after
    /// [`DeviceListError::UntrustedUser`], typically once the users compared
    /// safety numbers): pins the key that signed `signed` and its list,
    /// whatever the version (a new identity counts from 1 again). A list of
    /// the key already pinned is no new identity: it goes through
    /// [`Self::update`], so that this call cannot roll a list back.
    ///
    /// # Errors
    /// [`DeviceListError::Malformed`], [`DeviceListError::BadSignature`],
    /// [`DeviceListError::WrongUser`]; for the pinned key, as
    /// [`Self::update`].
    pub fn trust_new_identity(&mut self, signed: &SignedDeviceList) -> Result<ListChange, DeviceListError> {
        let list = verified_for(self.list.user_id(), signed)?;
        if list.user_identity_key() == self.list.user_identity_key() {
            return self.update(signed);
        }
        let change = change_between(&self.list, &list);
        *self = Self { list, signed: signed.clone() };
        Ok(change)
    }

    /// Whether device `device_id` with `identity_key` may be talked to: the
    /// newest verified list names it with that very key.
    ///
    /// # Errors
    /// [`DeviceListError::UnlistedDevice`]: a device no verified list names
    /// (a ghost), a removed one, or one listed with another key.
    pub fn check_device(&self, device_id: u32, identity_key: &IdentityKey) -> Result<(), DeviceListError> {
        match self.list.device(device_id) {
            Some(listed) if listed == identity_key => Ok(()),
            _ => Err(DeviceListError::UnlistedDevice { device_id }),
        }
    }

    /// The newest verified list.
    pub fn list(&self) -> &DeviceList {
        &self.list
    }

    /// The pinned user identity key.
    pub fn user_identity_key(&self) -> &UserIdentityKey {
        self.list.user_identity_key()
    }

    /// The signed list held, as received (to store, or to show a peer).
    pub fn signed_list(&self) -> &SignedDeviceList {
        &self.signed
    }

    /// The bytes to store: the signed list held.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.signed.to_bytes()
    }

    /// A trust stored with [`Self::to_bytes`], for `user_id`; the list is
    /// verified again.
    ///
    /// # Errors
    /// As [`SignedDeviceList::from_bytes`] and [`Self::first_use`].
    pub fn from_bytes(user_id: &str, bytes: &[u8]) -> Result<Self, DeviceListError> {
        Self::first_use(user_id, &SignedDeviceList::from_bytes(bytes)?)
    }
}

/// `signed`'s list, verified, if it is `user_id`'s.
fn verified_for(user_id: &str, signed: &SignedDeviceList) -> Result<DeviceList, DeviceListError> {
    let list = signed.verify()?;
    if list.user_id() != user_id {
        return Err(DeviceListError::WrongUser { expected: user_id.to_owned(), found: list.user_id().to_owned() });
    }
    Ok(list)
}

/// The devices `new` adds to `old` and removes from it (both lists are in
/// increasing device id order).
fn change_between(old: &DeviceList, new: &DeviceList) -> ListChange {
    let in_list = |list: &DeviceList, (id, key): &(u32, IdentityKey)| list.device(*id) == Some(key);
    ListChange {
        added: new.devices().iter().filter(|device| !in_list(old, device)).copied().collect(),
        removed: old.devices().iter().filter(|device| !in_list(new, device)).copied().collect(),
    }
}
