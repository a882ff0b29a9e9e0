//! User identities and signed device lists (PROTOCOL.md 23): what a peer
//! checks before it talks to a device of a user, so that a server cannot add
//! a "ghost" device. Translation only, as in the rest of the crate.
//!
//! - [`UserIdentity`]: the user identity key pair every device of the user
//!   holds; [`UserIdentity::sign_device_list`] makes the bytes the app
//!   publishes.
//! - [`UserTrust`]: what the app keeps of a contact: pinned on first use
//!   ([`UserTrust::first_use`]), moved on by newer lists
//!   ([`UserTrust::update`]: rollbacks, equivocations, other keys and other
//!   users' lists are refused), asked before a device is used
//!   ([`UserTrust::check_device`]).
//! - [`verify_device_list`] reads a list without a pin; [`user_safety_number`]
//!   is the safety number of two users, stable while their devices change.
//!
//! - On a [`Device`] (PROTOCOL.md 23.5): [`Device::set_device_list`] gives
//!   the device its user's list, which its bundles then carry;
//!   [`Device::update_device_list`] and [`Device::trust_new_user_identity`]
//!   move a pin on; [`Device::user_trust`] reads one. A contact's bundle
//!   with a list pins its user on first use, and from then on the device
//!   refuses, in `start_session`, `heal`, `encrypt`, `encrypt_kept` and
//!   `decrypt`, every device of that user the newest verified list does
//!   not name ([`SamizdatError::UntrustedIdentity`] with an empty
//!   `identity`), changing nothing.
//! - Sending to a user (PROTOCOL.md 23.6, 23.7): [`Device::encrypt_to_user`]
//!   and [`Device::encrypt_to_user_devices`] return a [`FanOut`]; our other
//!   devices receive a `MessageKind::SentSync`. Their `_kept` forms
//!   ([`Device::encrypt_to_user_kept`], [`Device::encrypt_to_user_devices_kept`])
//!   also keep each message to a contact's device in its outbox for healing. [`Device::user_safety_number`]
//!   is the per-user safety number from the pinned lists.

use std::sync::{Arc, Mutex, PoisonError};

use samizdat::{
    device, fingerprint, keys,
    user::{self, DeviceListError},
};
use zeroize::Zeroizing;

use crate::{Address, Details, Device, IdentityKey, Outgoing, SafetyNumber, SamizdatError, Timestamp, UserIdentityKey};

/// What [`Device::encrypt_to_user`] (or one of its forms) made: send each
/// message to its `to`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FanOut {
    /// One message per device of the contact's pinned list that has a
    /// session, in increasing device id order.
    pub messages: Vec<Outgoing>,
    /// One sent sync per other device of our own list that has a session.
    pub syncs: Vec<Outgoing>,
    /// The listed devices with no session (the contact's, then ours): start
    /// sessions from their bundles, then [`Device::encrypt_to_user_devices`].
    pub missing: Vec<Address>,
}

/// A device in a list: its id and its identity key (32 bytes).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ListedDevice {
    /// The device id (0 to 4,294,967,295).
    pub device_id: i64,
    /// The device's identity key (32 bytes).
    pub identity_key: IdentityKey,
}

/// A verified device list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceListInfo {
    /// The user id.
    pub user_id: String,
    /// The list's version (each new list of the user has a larger one).
    pub version: i64,
    /// The user identity key that signed it (32 bytes).
    pub user_identity_key: UserIdentityKey,
    /// The devices, in increasing device id order.
    pub devices: Vec<ListedDevice>,
}

/// The devices a newer list added and removed (a reinstalled device, with a
/// new key, is in both).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceListChange {
    /// Devices the new list names that the old one did not (with that key).
    pub added: Vec<ListedDevice>,
    /// Devices the old list named that the new one does not (with that key).
    pub removed: Vec<ListedDevice>,
}

/// A user identity key pair (Ed25519): signs the user's device lists. Every
/// device of the user holds it; store its [`Self::seed`] sealed.
#[derive(uniffi::Object)]
pub struct UserIdentity {
    /// Also read and made by the `linking` module.
    pub(crate) inner: user::UserIdentityKeyPair,
}

#[uniffi::export]
impl UserIdentity {
    /// A new user identity, from the operating system's generator.
    #[uniffi::constructor]
    pub fn generate() -> Arc<Self> {
        Arc::new(Self { inner: user::UserIdentityKeyPair::generate(&mut samizdat::os_rng()) })
    }

    /// The user identity of a stored 32-byte seed.
    #[uniffi::constructor]
    pub fn from_seed(seed: Vec<u8>) -> Result<Arc<Self>, SamizdatError> {
        let seed = Zeroizing::new(seed);
        let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| {
            SamizdatError::invalid_argument(format!("a user identity seed is 32 bytes, not {}", seed.len()))
        })?;
        Ok(Arc::new(Self { inner: user::UserIdentityKeyPair::from_seed(seed) }))
    }

    /// The 32-byte seed, to store sealed (the app's keystore).
    pub fn seed(&self) -> Vec<u8> {
        self.inner.to_seed().to_vec()
    }

    /// The public user identity key (32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.inner.public_key().as_bytes().to_vec()
    }

    /// Signs the list of `devices` (in any order) of `user_id` at `version`:
    /// the bytes to publish.
    pub fn sign_device_list(
        &self,
        user_id: String,
        version: i64,
        devices: Vec<ListedDevice>,
    ) -> Result<Vec<u8>, SamizdatError> {
        let version = crate::non_negative("version", version)?;
        let devices = devices.iter().map(ListedDevice::to_core).collect::<Result<Vec<_>, _>>()?;
        let list = user::DeviceList::new(user_id, version, &self.inner.public_key(), devices)?;
        Ok(list.sign(&self.inner)?.to_bytes())
    }
}

/// What the app keeps of a contact: the user identity pinned on first use
/// and the newest device list verified under it. Store [`Self::to_bytes`].
#[derive(uniffi::Object)]
pub struct UserTrust {
    inner: Mutex<user::UserTrust>,
}

#[uniffi::export]
impl UserTrust {
    /// Trust on first use of `user_id`'s signed list.
    #[uniffi::constructor]
    pub fn first_use(user_id: String, signed_list: Vec<u8>) -> Result<Arc<Self>, SamizdatError> {
        let signed = user::SignedDeviceList::from_bytes(&signed_list)?;
        Ok(Arc::new(Self { inner: Mutex::new(user::UserTrust::first_use(&user_id, &signed)?) }))
    }

    /// A trust stored with [`Self::to_bytes`] (verified again).
    #[uniffi::constructor]
    pub fn from_bytes(user_id: String, bytes: Vec<u8>) -> Result<Arc<Self>, SamizdatError> {
        Ok(Arc::new(Self { inner: Mutex::new(user::UserTrust::from_bytes(&user_id, &bytes)?) }))
    }

    /// A newer list of the pinned user; returns what it added and removed.
    /// A refused list changes nothing.
    pub fn update(&self, signed_list: Vec<u8>) -> Result<DeviceListChange, SamizdatError> {
        let signed = user::SignedDeviceList::from_bytes(&signed_list)?;
        Ok(self.lock().update(&signed)?.into())
    }

    /// The app's decision to trust a new user identity (after an
    /// `UntrustedIdentity` error from [`Self::update`], once the users
    /// compared safety numbers).
    pub fn trust_new_identity(&self, signed_list: Vec<u8>) -> Result<DeviceListChange, SamizdatError> {
        let signed = user::SignedDeviceList::from_bytes(&signed_list)?;
        Ok(self.lock().trust_new_identity(&signed)?.into())
    }

    /// Whether the newest verified list names device `device_id` with this
    /// identity key (`UntrustedIdentity` if not: a ghost, a removed device,
    /// or an old key).
    pub fn check_device(&self, device_id: i64, identity_key: Vec<u8>) -> Result<(), SamizdatError> {
        let (id, key) = ListedDevice { device_id, identity_key: identity_key.into() }.to_core()?;
        Ok(self.lock().check_device(id, &key)?)
    }

    /// The newest verified list.
    pub fn list(&self) -> DeviceListInfo {
        self.lock().list().into()
    }

    /// The pinned user identity key (32 bytes).
    pub fn user_identity_key(&self) -> Vec<u8> {
        self.lock().user_identity_key().as_bytes().to_vec()
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lock().to_bytes()
    }
}

impl UserTrust {
    fn from_core(trust: user::UserTrust) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(trust) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, user::UserTrust> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[uniffi::export]
impl Device {
    /// Gives this device its user's signed device list (from
    /// [`UserIdentity::sign_device_list`]): its bundles then carry it, and it
    /// pins our own user. It must name this device with its identity key
    /// (else `InvalidArgument`); a list under the user identity already held
    /// must be newer (`InvalidBundle`: a rollback, or another list with the
    /// same version). Returns the devices added and removed. A refused list
    /// changes nothing.
    pub fn set_device_list(&self, signed_list: Vec<u8>) -> Result<DeviceListChange, SamizdatError> {
        let signed = user::SignedDeviceList::from_bytes(&signed_list)?;
        Ok(self.inner.set_device_list(&signed)?.into())
    }

    /// This device's own signed device list, if one was set.
    pub fn device_list(&self) -> Result<Option<Vec<u8>>, SamizdatError> {
        Ok(self.inner.device_list()?.map(|signed| signed.to_bytes()))
    }

    /// A newer signed list of a user (a contact's, or our own): pins the
    /// user on first use, else must be newer than the one held
    /// (`InvalidBundle` for a rollback) and signed by the pinned user
    /// identity (`UntrustedIdentity`, with that key as `identity`: the
    /// decision is [`Self::trust_new_user_identity`]). A device the new
    /// list drops is refused from then on. A refused list changes nothing.
    pub fn update_device_list(&self, signed_list: Vec<u8>) -> Result<DeviceListChange, SamizdatError> {
        let signed = user::SignedDeviceList::from_bytes(&signed_list)?;
        Ok(self.inner.update_device_list(&signed)?.into())
    }

    /// The app's decision to trust a new user identity for a user (after an
    /// `UntrustedIdentity` error with a user identity key, once the users
    /// compared safety numbers): pins the key that signed `signed_list` and
    /// its list.
    pub fn trust_new_user_identity(&self, signed_list: Vec<u8>) -> Result<DeviceListChange, SamizdatError> {
        let signed = user::SignedDeviceList::from_bytes(&signed_list)?;
        Ok(self.inner.trust_new_user_identity(&signed)?.into())
    }

    /// What this device trusts of `user_id` (our own list for our own user
    /// id), or nothing if the user is not pinned. A copy: changing it changes
    /// nothing on the device.
    pub fn user_trust(&self, user_id: String) -> Result<Option<Arc<UserTrust>>, SamizdatError> {
        Ok(self.inner.user_trust(&user_id)?.map(UserTrust::from_core))
    }

    /// The safety number of our user with `user_id`, from the user identity
    /// of our own list and the one pinned for `user_id`: stable while either
    /// user's devices change, changed by a new user identity.
    /// `InvalidArgument` while our own list is not set; `NoSession` for a
    /// user that is not pinned.
    pub fn user_safety_number(&self, user_id: String) -> Result<SafetyNumber, SamizdatError> {
        Ok(self.inner.user_safety_number(&user_id)?.into())
    }

    /// Encrypts `plaintext` for a contact user: one message per device of
    /// its pinned list that has a session, and a sent sync per other device
    /// of our own list that has one, all written in one transaction before
    /// they are returned. `NoSession` for a user that is not pinned;
    /// `LimitExceeded` past `MAX_FAN_OUT_PLAINTEXT_LEN`. A failure wrote
    /// nothing: send nothing.
    pub fn encrypt_to_user(&self, user_id: String, plaintext: Vec<u8>) -> Result<FanOut, SamizdatError> {
        Ok(self.inner.encrypt_to_user(&user_id, &plaintext)?.into())
    }

    /// [`Self::encrypt_to_user`] for only these devices of the fan-out
    /// (typically its `missing`, once sessions with them are started).
    /// `UntrustedIdentity` for a device the list does not name;
    /// `InvalidArgument` for another user's address, or our own.
    pub fn encrypt_to_user_devices(
        &self,
        user_id: String,
        plaintext: Vec<u8>,
        devices: Vec<Address>,
    ) -> Result<FanOut, SamizdatError> {
        let devices = devices.iter().map(Address::to_core).collect::<Result<Vec<_>, _>>()?;
        Ok(self.inner.encrypt_to_user_devices(&user_id, &plaintext, &devices)?.into())
    }

    /// [`Self::encrypt_to_user`], keeping each message to the contact's
    /// devices in that device's outbox as [`Self::encrypt_kept`] does
    /// (PROTOCOL.md 23.6): a reset from one of them brings the message again
    /// without the app, until [`Self::acknowledge`] for that device (or the
    /// heal policy drops it). Sent syncs are not kept. `now` dates the
    /// entries for the policy's `outbox_max_age`.
    pub fn encrypt_to_user_kept(
        &self,
        user_id: String,
        plaintext: Vec<u8>,
        now: Timestamp,
    ) -> Result<FanOut, SamizdatError> {
        Ok(self.inner.encrypt_to_user_kept(&user_id, &plaintext, crate::at(now)?)?.into())
    }

    /// [`Self::encrypt_to_user_devices`], keeping each message to the
    /// contact's devices as [`Self::encrypt_to_user_kept`] does.
    pub fn encrypt_to_user_devices_kept(
        &self,
        user_id: String,
        plaintext: Vec<u8>,
        devices: Vec<Address>,
        now: Timestamp,
    ) -> Result<FanOut, SamizdatError> {
        let devices = devices.iter().map(Address::to_core).collect::<Result<Vec<_>, _>>()?;
        Ok(self.inner.encrypt_to_user_devices_kept(&user_id, &plaintext, &devices, crate::at(now)?)?.into())
    }
}

/// Reads and verifies a signed device list without any pin (who the key
/// belongs to is the app's question: see [`UserTrust`]).
#[uniffi::export]
pub fn verify_device_list(signed_list: Vec<u8>) -> Result<DeviceListInfo, SamizdatError> {
    Ok((&user::SignedDeviceList::from_bytes(&signed_list)?.verify()?).into())
}

/// The safety number of two users, from their user identity keys: the same
/// whatever devices they link or remove.
#[uniffi::export]
pub fn user_safety_number(
    local_user_id: String,
    local_user_identity_key: Vec<u8>,
    remote_user_id: String,
    remote_user_identity_key: Vec<u8>,
) -> Result<SafetyNumber, SamizdatError> {
    let key = |name: &str, bytes: &[u8]| {
        user::UserIdentityKey::from_slice(bytes).map_err(|e| SamizdatError::invalid_argument(format!("{name}: {e}")))
    };
    let (local, remote) = (
        key("local_user_identity_key", &local_user_identity_key)?,
        key("remote_user_identity_key", &remote_user_identity_key)?,
    );
    Ok(fingerprint::SafetyNumber::for_users(&local_user_id, &local, &remote_user_id, &remote).into())
}

impl ListedDevice {
    fn to_core(&self) -> Result<(u32, keys::IdentityKey), SamizdatError> {
        let id = u32::try_from(self.device_id).map_err(|_| {
            SamizdatError::invalid_argument(format!("device_id {} is outside 0 to {}", self.device_id, u32::MAX))
        })?;
        let key = keys::IdentityKey::from_slice(&self.identity_key)
            .map_err(|e| SamizdatError::invalid_argument(format!("identity_key of device {id}: {e}")))?;
        Ok((id, key))
    }
}

/// A list's devices (or a change's) as the bindings give them; `replace`
/// uses it too.
pub(crate) fn listed(devices: &[(u32, keys::IdentityKey)]) -> Vec<ListedDevice> {
    devices
        .iter()
        .map(|(id, key)| ListedDevice { device_id: i64::from(*id), identity_key: key.as_bytes().as_slice().into() })
        .collect()
}

impl From<&user::DeviceList> for DeviceListInfo {
    fn from(list: &user::DeviceList) -> Self {
        Self {
            user_id: list.user_id().to_owned(),
            // A version past 2^63 - 1 (signed by the user, never reached by
            // counting) shows as the largest.
            version: i64::try_from(list.version()).unwrap_or(i64::MAX),
            user_identity_key: list.user_identity_key().as_bytes().as_slice().into(),
            devices: listed(list.devices()),
        }
    }
}

impl From<device::FanOut> for FanOut {
    fn from(out: device::FanOut) -> Self {
        Self {
            messages: out.messages.into_iter().map(Outgoing::from).collect(),
            syncs: out.syncs.into_iter().map(Outgoing::from).collect(),
            missing: out.missing.into_iter().map(Address::from).collect(),
        }
    }
}

impl From<user::ListChange> for DeviceListChange {
    fn from(change: user::ListChange) -> Self {
        Self { added: listed(&change.added), removed: listed(&change.removed) }
    }
}

impl From<DeviceListError> for SamizdatError {
    fn from(error: DeviceListError) -> Self {
        let (kind, message) = (error.kind(), error.to_string());
        let details = match error {
            DeviceListError::UntrustedUser { offered } => Details::UserIdentity(*offered.as_bytes()),
            _ => Details::None,
        };
        Self::from_core(kind, message, details)
    }
}
