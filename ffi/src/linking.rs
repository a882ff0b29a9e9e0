//! Linking a new device to its user (PROTOCOL.md 23.8). Translation only,
//! as in the rest of the crate.
//!
//! 1. The new device makes a [`LinkOffer`] ([`Device::link_offer`]) and
//!    shows its [`LinkOffer::code`] (a QR code, say).
//! 2. An existing device of the same user scans it and links the device
//!    ([`Device::link_device`], with the [`UserIdentity`] the app holds): the
//!    [`Linked`] result has the user's new signed device list (this device
//!    already holds it; the app publishes it) and the message to send to the
//!    new device through the server.
//! 3. The new device opens the message ([`Device::finish_link`]): the list
//!    becomes its own, the contact users the linking device pinned are
//!    pinned, and the [`Provisioned`] result carries the [`UserIdentity`]
//!    for the app to keep.
//!
//! Every refusal is a [`SamizdatError`] with the code of the core's
//! `LinkError` (`invalid_argument`: a code that is not one, expired, of
//! another user, our own, or no list to add it to; `limit_exceeded`: a full
//! list, too many pinned users; `invalid_message`: a message that is not
//! for this offer or not well formed; `duplicate`: an offer already used),
//! and writes nothing.

use std::{fmt, sync::Arc};

use samizdat::{device, user};
use zeroize::Zeroizing;

use crate::{Address, Bytes, Device, SamizdatError, Timestamp, UserIdentity, at, to_i32};

/// A new device's offer to be linked: the code to show, and the keys that
/// open the message the scanning device sends back. Kept in memory only (an
/// app that restarts makes a new one); valid for ten minutes from the `now`
/// it was made at, and links at most once. Its `toString`/`repr` shows no
/// secret.
#[derive(uniffi::Object)]
pub struct LinkOffer {
    inner: user::LinkOffer,
}

/// What [`Device::link_device`] made.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Linked {
    /// The message for the new device: send it through the server as it is
    /// (sealed to the code: only the device that showed it opens it).
    pub message: Bytes,
    /// The user's signed device list, naming the new device: publish it
    /// (contacts take it with `update_device_list`). This device already
    /// holds it as its own.
    pub device_list: Bytes,
    /// The device linked.
    pub device: Address,
    /// Whether the list changed: `false` when it already named the device
    /// with that identity key (the same code scanned again after the first
    /// message was lost: a new message was made).
    pub list_changed: bool,
}

/// What [`Device::finish_link`] gave this device.
#[derive(uniffi::Record)]
pub struct Provisioned {
    /// The user identity key pair: keep it as the app keeps it on the other
    /// devices (store its seed sealed; it signs the user's next lists).
    pub user_identity: Arc<UserIdentity>,
    /// The user's signed device list, now this device's own.
    pub device_list: Bytes,
    /// How many contact users the linking device had pinned.
    pub pinned_users: i32,
    /// How many of them this device pinned now (one it had pinned already
    /// keeps its pin, unless the list it was sent is a newer one under the
    /// same key).
    pub newly_pinned: i32,
    /// The device that linked this one.
    pub linked_by: Address,
}

#[uniffi::export]
impl LinkOffer {
    /// The code to show for an existing device of the same user to scan. It
    /// holds a secret: show it on this device's screen only, never send it
    /// through the server.
    pub fn code(&self) -> Vec<u8> {
        self.inner.code().to_vec()
    }

    /// The device the offer links (this device).
    pub fn address(&self) -> Address {
        self.inner.address().into()
    }
}

#[uniffi::export]
impl Device {
    /// Makes an offer to link this device to its user: show its
    /// [`LinkOffer::code`], then give the message the scanning device sends
    /// back to [`Self::finish_link`] with this offer.
    pub fn link_offer(&self, now: Timestamp) -> Result<Arc<LinkOffer>, SamizdatError> {
        Ok(Arc::new(LinkOffer { inner: self.inner.link_offer(at(now)?)? }))
    }

    /// Links the device whose `code` was scanned: adds it to this user's
    /// device list (a new version signed with `user_identity`, which must be
    /// the key of this device's list), writes that list as this device's
    /// own, and seals for the new device the user identity, the list and
    /// the lists of the contact users this device pinned. Scanning the same
    /// code again (within its lifetime) makes a new message and changes no
    /// list. `InvalidArgument` for a code that is not one, expired (made more
    /// than ten minutes before or after `now`), of another user or of this
    /// device, while this device has no list of its own, or when
    /// `user_identity` is not the key of its list; `LimitExceeded` for a
    /// full list or more pinned users than a link carries. A refusal writes
    /// nothing.
    pub fn link_device(
        &self,
        code: Vec<u8>,
        user_identity: Arc<UserIdentity>,
        now: Timestamp,
    ) -> Result<Linked, SamizdatError> {
        let code = Zeroizing::new(code);
        Ok(self.inner.link_device(&code, &user_identity.inner, at(now)?)?.into())
    }

    /// Finishes linking this device with the `message` the scanning device
    /// sent for `offer`: the list it carries becomes this device's own, and
    /// each contact user it carries is pinned, in one transaction. Keep the
    /// returned user identity. `InvalidMessage` for a message that is not for
    /// this offer (another offer's, altered, forged) or not well formed;
    /// `Duplicate` once the offer linked this device; `InvalidArgument` for
    /// an offer of another device or made more than ten minutes before
    /// `now`. A refusal writes nothing.
    pub fn finish_link(
        &self,
        offer: Arc<LinkOffer>,
        message: Vec<u8>,
        now: Timestamp,
    ) -> Result<Provisioned, SamizdatError> {
        Ok(self.inner.finish_link(&offer.inner, &message, at(now)?)?.into())
    }
}

impl fmt::Debug for LinkOffer {
    /// The core offer's: its address, no code and no key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for Provisioned {
    /// The user identity's public key only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provisioned")
            .field("user_identity", &self.user_identity.inner)
            .field("device_list_len", &self.device_list.len())
            .field("pinned_users", &self.pinned_users)
            .field("newly_pinned", &self.newly_pinned)
            .field("linked_by", &self.linked_by)
            .finish()
    }
}

impl From<device::Linked> for Linked {
    fn from(linked: device::Linked) -> Self {
        Self {
            message: linked.message.into(),
            device_list: linked.device_list.to_bytes().into(),
            device: linked.device.into(),
            list_changed: linked.list_changed,
        }
    }
}

impl From<device::Provisioned> for Provisioned {
    fn from(provisioned: device::Provisioned) -> Self {
        Self {
            user_identity: Arc::new(UserIdentity { inner: provisioned.user_identity }),
            device_list: provisioned.device_list.to_bytes().into(),
            pinned_users: to_i32(provisioned.pinned_users),
            newly_pinned: to_i32(provisioned.newly_pinned),
            linked_by: provisioned.linked_by.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use samizdat::{
        DecodeError,
        device::DeviceError,
        user::{DeviceListError, LinkError},
    };

    use crate::{ErrorKind, Recovery, SamizdatError};

    /// Every `LinkError` reaches the bindings as the variant of its code,
    /// with its recovery and the core's text.
    #[test]
    fn every_link_error_keeps_its_code_recovery_and_text() {
        let wrong_user = LinkError::WrongUser { expected: "alice".to_owned(), found: "carol".to_owned() };
        let cases = [
            (LinkError::MalformedCode(DecodeError::Empty), ErrorKind::InvalidArgument),
            (LinkError::Expired, ErrorKind::InvalidArgument),
            (wrong_user, ErrorKind::InvalidArgument),
            (LinkError::SelfLink, ErrorKind::InvalidArgument),
            (LinkError::NoOwnList, ErrorKind::InvalidArgument),
            (LinkError::TooManyDevices, ErrorKind::LimitExceeded),
            (LinkError::TooManyUsers { count: 10_001, max: 10_000 }, ErrorKind::LimitExceeded),
            (LinkError::MalformedMessage(DecodeError::Empty), ErrorKind::InvalidMessage),
            (LinkError::WrongCode, ErrorKind::InvalidMessage),
            (LinkError::Provisioning(DeviceListError::BadSignature), ErrorKind::InvalidMessage),
            (LinkError::AlreadyUsed, ErrorKind::Duplicate),
        ];
        for (link, kind) in cases {
            let text = link.to_string();
            let error = SamizdatError::from(DeviceError::Link(link.clone()));
            assert_eq!(error.kind(), kind, "{link:?}");
            assert_eq!(error.code(), link.kind().code(), "{link:?}");
            assert_eq!(samizdat::Recovery::from(error.recovery()), link.kind().recovery(), "{link:?}");
            assert!(!text.is_empty());
            assert_eq!(error.to_string(), text, "the core's text, unchanged");
        }
        // The recoveries the apps see: fix the call, or drop the message.
        let code = SamizdatError::from(DeviceError::Link(LinkError::Expired));
        assert_eq!((code.code().as_str(), code.recovery()), ("invalid_argument", Recovery::FixCall));
        let message = SamizdatError::from(DeviceError::Link(LinkError::WrongCode));
        assert_eq!((message.code().as_str(), message.recovery()), ("invalid_message", Recovery::Drop));
        let used = SamizdatError::from(DeviceError::Link(LinkError::AlreadyUsed));
        assert_eq!((used.code().as_str(), used.recovery()), ("duplicate", Recovery::Drop));
    }

    /// The Debug of what crosses the boundary shows no secret: not the
    /// offer's code, not the user identity's seed.
    #[test]
    fn debug_shows_no_secret() {
        use std::{sync::Arc, time::UNIX_EPOCH};

        use samizdat::{
            address::Address,
            device::Device,
            store::{MemoryBackend, StorageKey},
            user::{DeviceList, UserIdentityKeyPair},
        };

        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let now = UNIX_EPOCH;
        let new = |id, key| {
            let address = Address::new("alice", id).unwrap();
            Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address, now).unwrap()
        };
        let (phone, laptop) = (new(1, 1), new(2, 2));
        let alice = UserIdentityKeyPair::from_seed(&[0xA0; 32]);
        let list = DeviceList::new("alice", 1, &alice.public_key(), [(1, phone.identity_key())]).unwrap();
        phone.set_device_list(&list.sign(&alice).unwrap()).unwrap();

        let offer = super::LinkOffer { inner: laptop.link_offer(now).unwrap() };
        let linked = phone.link_device(offer.inner.code(), &alice, now).unwrap();
        let shown = format!("{offer:?}");
        assert!(shown.contains("alice") && !shown.contains(&hex(offer.inner.code())), "{shown}");
        assert!(!shown.contains(&format!("{:?}", offer.inner.code())), "{shown}");
        let provisioned: super::Provisioned = laptop.finish_link(&offer.inner, &linked.message, now).unwrap().into();
        assert_eq!(provisioned.user_identity.public_key(), alice.public_key().as_bytes().to_vec());
        let shown = format!("{provisioned:?}");
        let seed = provisioned.user_identity.seed();
        assert!(!shown.contains(&hex(&seed)) && !shown.contains(&format!("{seed:?}")), "{shown}");
        assert!(shown.contains("linked_by"), "{shown}");
        let _: Arc<super::UserIdentity> = provisioned.user_identity;
    }
}
