//! Linking a new device to its user in the Device API (PROTOCOL.md 23.8).
//!
//! 1. The new device makes an offer ([`Device::link_offer`]) and shows its
//!    code.
//! 2. An existing device of the same user scans it and links the device
//!    ([`Device::link_device`]): it adds the device to the user's list
//!    (signed with the user identity key the app holds), writes that list as
//!    its own, and seals one message to the code: the user identity key, the
//!    new list and the lists of every contact user it pinned. The app
//!    publishes the new list (so contacts accept the new device) and sends
//!    the message to the new device through the server.
//! 3. The new device opens it ([`Device::finish_link`]): the list becomes
//!    its own, every contact user is pinned as the linking device had it,
//!    and the app keeps the user identity key it returns.
//!
//! The exchange is authenticated by the code's secret: the server relays
//! the message but cannot read it, and cannot make one the new device
//! accepts (it never saw the code).

use std::{fmt, time::SystemTime};

use super::{Device, DeviceError, lock, retry_on_conflict};
use crate::{
    address::Address,
    clock::unix_seconds,
    limits::LINK_CODE_LIFETIME_SECS,
    store::Backend,
    user::{
        DeviceList, DeviceListError, LinkCode, LinkError, LinkOffer, MAX_DEVICES_PER_USER, Provisioning,
        SignedDeviceList, UserIdentityKeyPair, UserTrust,
    },
};

/// What [`Device::link_device`] made.
#[derive(Clone, PartialEq, Eq)]
pub struct Linked {
    /// The message for the new device: send it through the server as it is
    /// (it is sealed to the code; only the device that showed the code opens
    /// it).
    pub message: Vec<u8>,
    /// The user's device list, naming the new device: publish it (contacts
    /// take it with [`Device::update_device_list`], or from the new
    /// device's bundles). This device already holds it as its own.
    pub device_list: SignedDeviceList,
    /// The device linked.
    pub device: Address,
    /// Whether the list changed: `false` when it already named the device
    /// with that identity key (the same code scanned again, within its
    /// lifetime, after the first message was lost: a new message is made).
    pub list_changed: bool,
}

impl fmt::Debug for Linked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Linked")
            .field("message_len", &self.message.len())
            .field("device", &self.device)
            .field("list_changed", &self.list_changed)
            .finish_non_exhaustive()
    }
}

/// What [`Device::finish_link`] gave this device.
#[derive(Debug)]
pub struct Provisioned {
    /// The user identity key: keep it as the app keeps it on the other
    /// devices (it signs the user's next lists).
    pub user_identity: UserIdentityKeyPair,
    /// The user's device list, now this device's own (its bundles carry it).
    pub device_list: SignedDeviceList,
    /// How many contact users the linking device had pinned.
    pub pinned_users: usize,
    /// How many of them this device pinned now (a user it had pinned
    /// already keeps its pin, unless the linking device's list is a newer
    /// one under the same key).
    pub newly_pinned: usize,
    /// The device that linked this one.
    pub linked_by: Address,
}

/// Whether a time `at` (seconds) is within the code lifetime of `now`.
fn within_lifetime(now: u64, at: u64) -> bool {
    now.abs_diff(at) <= LINK_CODE_LIFETIME_SECS
}

impl<B: Backend> Device<B> {
    /// Makes an offer to link this device to its user (PROTOCOL.md 23.8):
    /// show [`LinkOffer::code`] for an existing device of the user to scan,
    /// then give the message it sends back to [`Self::finish_link`]. The
    /// offer holds its keys in memory only; it is valid for
    /// [`LINK_CODE_LIFETIME_SECS`] from `now` and links at most once.
    ///
    /// # Errors
    /// [`DeviceError::Forked`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// use samizdat::{address::Address, device::Device, store::{MemoryBackend, StorageKey}, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// // Alice's phone has her user identity and a list naming it.
    /// let now = SystemTime::now();
    /// let phone = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, now)?;
    /// let alice = UserIdentityKeyPair::generate(&mut samizdat::os_rng());
    /// phone.set_device_list(&DeviceList::new("alice", 1, &alice.public_key(), [(1, phone.identity_key())])?.sign(&alice)?)?;
    ///
    /// // Her new laptop shows a code; the phone scans it and links the laptop.
    /// let laptop = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("alice", 2)?, now)?;
    /// let offer = laptop.link_offer(now)?;
    /// let linked = phone.link_device(offer.code(), &alice, now)?;
    /// // The phone's app publishes linked.device_list and sends linked.message to the laptop.
    /// let provisioned = laptop.finish_link(&offer, &linked.message, now)?;
    /// assert_eq!(provisioned.user_identity.public_key(), alice.public_key());
    /// assert_eq!(laptop.device_list()?, Some(linked.device_list));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn link_offer(&self, now: SystemTime) -> Result<LinkOffer, DeviceError> {
        self.check_process()?;
        Ok(LinkOffer::new(&mut crate::os_rng(), self.address.clone(), self.identity_key(), unix_seconds(now)))
    }

    /// Links the device whose code was scanned (PROTOCOL.md 23.8): adds it
    /// to this user's device list (a new version, signed with `user`, the
    /// user identity key pair the app holds), writes that list as this
    /// device's own, and seals for the new device the user identity key,
    /// the new list and the list of every contact user this device pinned.
    /// The list is written before the message is returned; if the app dies
    /// before sending it, scanning the same code again (within its
    /// lifetime) makes a new one and changes no list.
    ///
    /// # Errors
    /// [`DeviceError::Link`] with [`LinkError::MalformedCode`],
    /// [`LinkError::Expired`] (a code made more than
    /// [`LINK_CODE_LIFETIME_SECS`] before or after `now`),
    /// [`LinkError::WrongUser`], [`LinkError::SelfLink`],
    /// [`LinkError::NoOwnList`], [`LinkError::TooManyDevices`],
    /// [`LinkError::TooManyUsers`]; [`DeviceError::DeviceList`] with
    /// [`DeviceListError::WrongSigner`] when `user` is not the key of this
    /// device's list; a store error. Nothing is written.
    pub fn link_device(&self, code: &[u8], user: &UserIdentityKeyPair, now: SystemTime) -> Result<Linked, DeviceError> {
        self.check_process()?;
        let code = LinkCode::from_bytes(code)?;
        if !within_lifetime(unix_seconds(now), code.created_at()) {
            return Err(LinkError::Expired.into());
        }
        let user_id = self.address.user_id();
        if code.address().user_id() != user_id {
            let (expected, found) = (user_id.to_owned(), code.address().user_id().to_owned());
            return Err(LinkError::WrongUser { expected, found }.into());
        }
        if code.address().device_id() == self.address.device_id() {
            return Err(LinkError::SelfLink.into());
        }
        let user_lock = self.peer_lock(&self.user_lock_key(user_id));
        let _guard = lock(&user_lock);
        retry_on_conflict(|| {
            let loaded = self.load_user(user_id)?;
            let trust = loaded.trust.clone().ok_or(LinkError::NoOwnList)?;
            if *trust.user_identity_key() != user.public_key() {
                return Err(DeviceListError::WrongSigner.into());
            }
            let list = trust.list();
            let (device_id, identity) = (code.address().device_id(), *code.identity_key());
            let list_changed = list.device(device_id) != Some(&identity);
            let device_list = if list_changed {
                // The device added, or its entry given its new key (a
                // reinstalled device under its old id).
                let devices: Vec<_> = list
                    .devices()
                    .iter()
                    .copied()
                    .filter(|(id, _)| *id != device_id)
                    .chain(std::iter::once((device_id, identity)))
                    .collect();
                if devices.len() > MAX_DEVICES_PER_USER {
                    return Err(LinkError::TooManyDevices.into());
                }
                let version = list
                    .version()
                    .checked_add(1)
                    .ok_or(DeviceListError::Malformed(crate::DecodeError::InvalidValue("version")))?;
                DeviceList::new(user_id, version, trust.user_identity_key(), devices)?.sign(user)?
            } else {
                trust.signed_list().clone()
            };
            let (_, users) = self.user_rows()?;
            let provisioning = Provisioning {
                user_identity: UserIdentityKeyPair::from_seed(&user.to_seed()),
                device_list: device_list.clone(),
                pinned: users.into_iter().map(|(_, list)| list).collect(),
                linker_device_id: self.address.device_id(),
            };
            let message = code.seal(&mut crate::os_rng(), &provisioning)?;
            if list_changed {
                let mut updated = trust.clone();
                updated.update(&device_list)?;
                self.write(&[self.user_write(&loaded, &updated)])?;
            }
            Ok(Linked { message, device_list, device: code.address().clone(), list_changed })
        })
    }

    /// Finishes linking this device with the message the scanning device
    /// sent for `offer` (PROTOCOL.md 23.8): the list it carries becomes
    /// this device's own, and every contact user it carries is pinned (one
    /// this device pinned already keeps its pin, unless the list is a newer
    /// one under the same key), in one transaction. The app keeps the
    /// returned user identity key.
    ///
    /// # Errors
    /// [`DeviceError::Link`] with [`LinkError::WrongUser`] (an offer of
    /// another device), [`LinkError::AlreadyUsed`] (the offer linked this
    /// device already: a message replayed), [`LinkError::Expired`] (an
    /// offer made more than [`LINK_CODE_LIFETIME_SECS`] before `now`),
    /// [`LinkError::MalformedMessage`], [`LinkError::WrongCode`] (a message
    /// for another offer, altered, or made without the code),
    /// [`LinkError::Provisioning`]; a store error. Nothing is written.
    pub fn finish_link(&self, offer: &LinkOffer, message: &[u8], now: SystemTime) -> Result<Provisioned, DeviceError> {
        self.check_process()?;
        if offer.address() != &self.address || *offer.identity() != self.identity_key() {
            let (expected, found) = (self.address.user_id().to_owned(), offer.address().user_id().to_owned());
            return Err(LinkError::WrongUser { expected, found }.into());
        }
        if offer.is_used() {
            return Err(LinkError::AlreadyUsed.into());
        }
        if unix_seconds(now).saturating_sub(offer.created_at()) > LINK_CODE_LIFETIME_SECS {
            return Err(LinkError::Expired.into());
        }
        let provisioning = offer.open(message)?;
        let user_id = self.address.user_id();
        let linked_by = Address::new(user_id, provisioning.linker_device_id)
            .map_err(|_| LinkError::MalformedMessage(crate::DecodeError::InvalidValue("link.linker_device_id")))?;
        // One finish at a time, whichever handle: the offer is claimed
        // before anything is written, and given back if nothing was (two
        // handles of one store finishing at once linked twice, the second
        // time with a thief's message: the outside audit).
        if !offer.claim() {
            return Err(LinkError::AlreadyUsed.into());
        }
        let result = self.finish_claimed(&provisioning);
        if result.is_err() {
            offer.release();
        }
        let newly_pinned = result?;
        let pinned_users = provisioning.pinned.len();
        let Provisioning { user_identity, device_list, .. } = provisioning;
        Ok(Provisioned { user_identity, device_list, pinned_users, newly_pinned, linked_by })
    }

    /// The writes of [`Self::finish_link`] for an offer claimed: our own list
    /// and the pins, in one transaction. Returns how many users were pinned
    /// now.
    fn finish_claimed(&self, provisioning: &Provisioning) -> Result<usize, DeviceError> {
        let user_id = self.address.user_id();
        let user_lock = self.peer_lock(&self.user_lock_key(user_id));
        let _guard = lock(&user_lock);
        retry_on_conflict(|| {
            let mut writes = Vec::with_capacity(provisioning.pinned.len().saturating_add(1));
            // Our own list: as set_device_list sets it (a new user identity
            // is taken: the code's secret authenticated it).
            let own = self.load_user(user_id)?;
            let trust = match own.trust.clone() {
                None => UserTrust::first_use(user_id, &provisioning.device_list)?,
                Some(mut trust) => {
                    trust.trust_new_identity(&provisioning.device_list)?;
                    trust
                }
            };
            if own.trust.as_ref() != Some(&trust) {
                writes.push(self.user_write(&own, &trust));
            }
            let mut newly_pinned = 0usize;
            for signed in &provisioning.pinned {
                let list = signed.verify()?;
                let loaded = self.load_user(list.user_id())?;
                match loaded.trust.clone() {
                    None => {
                        writes.push(self.user_write(&loaded, &UserTrust::first_use(list.user_id(), signed)?));
                        newly_pinned = newly_pinned.saturating_add(1);
                    }
                    // Our own pin stands; a newer list under it is taken.
                    Some(mut trust) => {
                        if trust.update(signed).is_ok() && loaded.trust.as_ref() != Some(&trust) {
                            writes.push(self.user_write(&loaded, &trust));
                        }
                    }
                }
            }
            self.write(&writes)?;
            Ok(newly_pinned)
        })
    }
}
