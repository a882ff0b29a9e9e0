//! Sending to a user, not to a device (PROTOCOL.md 23.4, 23.6, 23.7).
//!
//! What this layer owns: the fan-out of one plaintext to every device of a
//! contact's pinned verified list and, as a "sent sync", to every other
//! device of our own list, in one transaction ([`Device::encrypt_to_user`]);
//! the check that a sent sync comes from a device our own list names
//! ([`Device::check_sync_sender`], called by `decrypt`); and the per-user
//! safety number of a pinned user ([`Device::user_safety_number`]).
//!
//! What it does not own: the sessions underneath stay per device, and each
//! message goes through the same encryption as [`Device::encrypt`]
//! ([`Device::encrypt_on_row`]: the list check, then the ratchet); the rules
//! for lists are [`UserTrust`]'s; the sent sync's encoding is
//! `user::sync`'s.

use std::time::SystemTime;

use zeroize::Zeroizing;

use super::{Device, DeviceError, Outgoing, lock, retry_on_conflict};
use crate::{
    DecodeError, EncryptError, SessionError,
    address::Address,
    clock::unix_seconds,
    fingerprint::SafetyNumber,
    keys::IdentityKey,
    limits::MAX_FAN_OUT_PLAINTEXT_LEN,
    padding::ContentType,
    store::{Backend, StoreError, Table},
    user::{DeviceListError, UserTrust, sync::SentSync},
};

// A fan-out's plaintext always fits an outbox entry (`encrypt_to_user_kept`).
const _: () = assert!(MAX_FAN_OUT_PLAINTEXT_LEN <= crate::limits::MAX_KEPT_PLAINTEXT_LEN);

/// What a fan-out made ([`Device::encrypt_to_user`]): send each message to
/// its [`Outgoing::to`]. Nothing in it was sent before the sessions it
/// advanced were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FanOut {
    /// One message per device of the contact's pinned list that has a
    /// session (with the identity key the list names), in the list's order
    /// (increasing device id).
    pub messages: Vec<Outgoing>,
    /// One sent sync per other device of our own list that has a session
    /// (PROTOCOL.md 23.7), in the list's order: our other devices learn what
    /// we sent, and to whom ([`MessageKind::SentSync`](super::MessageKind::SentSync)).
    pub syncs: Vec<Outgoing>,
    /// The devices of the two lists that got nothing because this device has
    /// no session with them under the identity key their list names: the
    /// contact's first, then our own, each in the list's order. Fetch their
    /// bundles, [`Device::start_session`] with each, then
    /// [`Device::encrypt_to_user_devices`] with these addresses.
    pub missing: Vec<Address>,
}

/// A device a fan-out is for: its address, the identity key its list names,
/// its session row's key, and whether it is one of our own (a sent sync).
struct Target {
    address: Address,
    identity: IdentityKey,
    row: Vec<u8>,
    own: bool,
}

impl<B: Backend> Device<B> {
    /// The safety number of our user with `user_id` (PROTOCOL.md 23.4), from
    /// the user identity key of our own list (row `"self"`, set by
    /// [`Self::set_device_list`]) and the one pinned for `user_id`: the same
    /// on both sides, unchanged while either user links or removes devices
    /// (newer lists under the same user identity), changed when either
    /// user's identity changes ([`Self::trust_new_user_identity`]). Verifying
    /// it once covers every device their verified lists name. Writes nothing.
    ///
    /// # Errors
    /// [`DeviceListError::NoOwnList`] if our own list is not set;
    /// [`DeviceListError::NotPinned`] if `user_id` is not pinned; a store
    /// error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, store::MemoryBackend, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let new = |user: &str, key: u8| Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), Address::new(user, 1).unwrap(), SystemTime::now());
    /// let (alice, bob) = (new("alice", 1)?, new("bob", 2)?);
    /// let mut rng = samizdat::os_rng();
    /// let (alice_user, bob_user) = (UserIdentityKeyPair::generate(&mut rng), UserIdentityKeyPair::generate(&mut rng));
    /// alice.set_device_list(&DeviceList::new("alice", 1, &alice_user.public_key(), [(1, alice.identity_key())])?.sign(&alice_user)?)?;
    /// bob.set_device_list(&DeviceList::new("bob", 1, &bob_user.public_key(), [(1, bob.identity_key())])?.sign(&bob_user)?)?;
    /// // Each pins the other from a bundle.
    /// alice.start_session(&bob.prekey_bundle()?)?;
    /// bob.start_session(&alice.prekey_bundle()?)?;
    /// assert_eq!(alice.user_safety_number("bob")?.digits(), bob.user_safety_number("alice")?.digits());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn user_safety_number(&self, user_id: &str) -> Result<SafetyNumber, DeviceError> {
        self.check_process()?;
        let own = self.load_user(self.address.user_id())?.trust.ok_or(DeviceListError::NoOwnList)?;
        let peer = self.pinned(user_id)?;
        Ok(SafetyNumber::for_users(self.address.user_id(), own.user_identity_key(), user_id, peer.user_identity_key()))
    }

    /// Encrypts `plaintext` for the user `user_id` (a contact, not our own
    /// user): one message to each device of the user's pinned verified list
    /// with which this device has a session, and one *sent sync* (PROTOCOL.md
    /// 23.7) to each other device of our own list (if set) with which it has
    /// one, so that our other devices learn what we sent and to whom. The
    /// devices listed with no session (or a session with another identity key
    /// than the list's) get nothing and are returned in
    /// [`FanOut::missing`]. A device no list names gets nothing, whatever
    /// session this device has with it (a ghost, or a device a newer list
    /// removed).
    ///
    /// **One transaction** (PROTOCOL.md 23.6): every session the fan-out
    /// advances is written in one `apply`, conditional on the rows as read,
    /// before anything is returned; if the call fails, nothing was written
    /// and nothing may be sent. Each message is made as [`Self::encrypt`]
    /// makes one (the list check, then the ratchet); none is kept in an
    /// outbox for healing (that is [`Self::encrypt_to_user_kept`]).
    ///
    /// # Errors
    /// [`DeviceListError::NotPinned`] if the user is not pinned (fetch its
    /// bundles: their list pins it); [`DeviceError::InvalidArgument`] for our
    /// own user id; [`SessionError::Encrypt`] with
    /// [`EncryptError::MessageTooLarge`] past
    /// [`MAX_FAN_OUT_PLAINTEXT_LEN`]; a store error
    /// ([`StoreError::Conflict`] if other handles kept writing the sessions
    /// for [`MAX_WRITE_ATTEMPTS`](crate::limits::MAX_WRITE_ATTEMPTS)
    /// attempts). Nothing is written.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::{Device, MessageKind}, store::MemoryBackend, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let new = |user: &str, id: u32, key: u8| Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), Address::new(user, id).unwrap(), SystemTime::now());
    /// let (phone, laptop) = (new("alice", 1, 1)?, new("alice", 2, 2)?);
    /// let (bob1, bob2) = (new("bob", 1, 3)?, new("bob", 2, 4)?);
    /// // Each user's devices share its user identity and set its list.
    /// let mut rng = samizdat::os_rng();
    /// let (alice, bob) = (UserIdentityKeyPair::generate(&mut rng), UserIdentityKeyPair::generate(&mut rng));
    /// let alice_list = DeviceList::new("alice", 1, &alice.public_key(), [(1, phone.identity_key()), (2, laptop.identity_key())])?.sign(&alice)?;
    /// let bob_list = DeviceList::new("bob", 1, &bob.public_key(), [(1, bob1.identity_key()), (2, bob2.identity_key())])?.sign(&bob)?;
    /// for device in [&phone, &laptop] { device.set_device_list(&alice_list)?; }
    /// for device in [&bob1, &bob2] { device.set_device_list(&bob_list)?; }
    ///
    /// // The phone has sessions with Bob's first device (its bundle pins
    /// // Bob) and with Alice's laptop, not yet with Bob's second device.
    /// phone.start_session(&bob1.prekey_bundle()?)?;
    /// phone.start_session(&laptop.prekey_bundle()?)?;
    /// let sent = phone.encrypt_to_user("bob", b"hello Bob")?;
    /// assert_eq!(sent.missing, vec![Address::new("bob", 2)?]);
    ///
    /// let pending = bob1.decrypt(phone.address(), &sent.messages[0].message)?;
    /// assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Direct, &b"hello Bob"[..]));
    /// bob1.commit(pending)?;
    /// // The laptop learns what the phone sent, and to whom.
    /// let pending = laptop.decrypt(phone.address(), &sent.syncs[0].message)?;
    /// assert_eq!((pending.kind(), pending.sync_recipient()), (MessageKind::SentSync, Some("bob")));
    /// assert_eq!(pending.plaintext(), b"hello Bob");
    /// laptop.commit(pending)?;
    ///
    /// // The missing device: a session from its bundle, then the same
    /// // fan-out to it alone.
    /// phone.start_session(&bob2.prekey_bundle()?)?;
    /// let rest = phone.encrypt_to_user_devices("bob", b"hello Bob", &sent.missing)?;
    /// assert_eq!((rest.messages.len(), rest.syncs.len(), rest.missing.len()), (1, 0, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encrypt_to_user(&self, user_id: &str, plaintext: &[u8]) -> Result<FanOut, DeviceError> {
        self.fan_out(user_id, plaintext, None, None)
    }

    /// [`Self::encrypt_to_user`], keeping each message to the contact's
    /// devices in that device's outbox, as [`Self::encrypt_kept`] does: a
    /// reset from one of them (PROTOCOL.md 20.5) brings the message again
    /// without the app, until the app acknowledges it
    /// ([`Self::acknowledge`], per device) or the policy's bounds drop it.
    /// Sent syncs are not kept (our own devices learn of the message from
    /// the sync only). Every message, entry and index is written in the
    /// fan-out's one transaction.
    ///
    /// # Errors
    /// As [`Self::encrypt_to_user`] ([`MAX_FAN_OUT_PLAINTEXT_LEN`] is below
    /// [`MAX_KEPT_PLAINTEXT_LEN`](crate::limits::MAX_KEPT_PLAINTEXT_LEN));
    /// [`StoreError::Corrupt`] if an outbox's index does not parse.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::{Duration, UNIX_EPOCH};
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, heal::message_id, store::MemoryBackend, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let new = |user: &str, id: u32, key: u8| Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), Address::new(user, id).unwrap(), UNIX_EPOCH);
    /// let (alice, bob1, bob2) = (new("alice", 1, 1)?, new("bob", 1, 2)?, new("bob", 2, 3)?);
    /// let bob = UserIdentityKeyPair::generate(&mut samizdat::os_rng());
    /// let list = DeviceList::new("bob", 1, &bob.public_key(), [(1, bob1.identity_key()), (2, bob2.identity_key())])?.sign(&bob)?;
    /// for device in [&bob1, &bob2] { device.set_device_list(&list)?; alice.start_session(&device.prekey_bundle()?)?; }
    ///
    /// let sent = alice.encrypt_to_user_kept("bob", b"kept on both", UNIX_EPOCH + Duration::from_secs(1_000))?;
    /// assert_eq!(sent.messages.len(), 2);
    /// assert_eq!((alice.outbox_len(bob1.address())?, alice.outbox_len(bob2.address())?), (1, 1));
    /// // Each device's copy is acknowledged on its own.
    /// assert_eq!(alice.acknowledge(bob1.address(), &[message_id(&sent.messages[0].message)])?, 1);
    /// assert_eq!((alice.outbox_len(bob1.address())?, alice.outbox_len(bob2.address())?), (0, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encrypt_to_user_kept(
        &self,
        user_id: &str,
        plaintext: &[u8],
        now: SystemTime,
    ) -> Result<FanOut, DeviceError> {
        self.fan_out(user_id, plaintext, None, Some(now))
    }

    /// [`Self::encrypt_to_user`] for only some devices of the fan-out:
    /// typically its [`FanOut::missing`] once sessions with them are
    /// started. Each address must be a device the fan-out is for (a device
    /// of the contact's pinned list, or another device of our own list,
    /// which gets a sent sync); the others in the fan-out get nothing.
    ///
    /// # Errors
    /// As [`Self::encrypt_to_user`]; [`DeviceListError::UnlistedDevice`] for
    /// an address of the user, or of our own user, that the list does not
    /// name (nothing is written); [`DeviceError::InvalidArgument`] for an
    /// address of another user, or this device's own.
    pub fn encrypt_to_user_devices(
        &self,
        user_id: &str,
        plaintext: &[u8],
        devices: &[Address],
    ) -> Result<FanOut, DeviceError> {
        self.fan_out(user_id, plaintext, Some(devices), None)
    }

    /// [`Self::encrypt_to_user_devices`], keeping each message to the
    /// contact's devices as [`Self::encrypt_to_user_kept`] does.
    ///
    /// # Errors
    /// As [`Self::encrypt_to_user_devices`] and
    /// [`Self::encrypt_to_user_kept`].
    pub fn encrypt_to_user_devices_kept(
        &self,
        user_id: &str,
        plaintext: &[u8],
        devices: &[Address],
        now: SystemTime,
    ) -> Result<FanOut, DeviceError> {
        self.fan_out(user_id, plaintext, Some(devices), Some(now))
    }

    /// Refuses a sent sync from `peer` with `identity` unless `peer` is a
    /// device of our own user that our own pinned list names with that key
    /// (PROTOCOL.md 23.7). Writes nothing.
    ///
    /// # Errors
    /// [`DeviceListError::ForeignSentSync`] for another user's device;
    /// [`DeviceListError::NoOwnList`] while our own list is not set;
    /// [`DeviceListError::UnlistedDevice`]; a store error.
    pub(super) fn check_sync_sender(&self, peer: &Address, identity: &IdentityKey) -> Result<(), DeviceError> {
        if peer.user_id() != self.address.user_id() {
            return Err(DeviceListError::ForeignSentSync { user_id: peer.user_id().to_owned() }.into());
        }
        let own = self.load_user(self.address.user_id())?.trust.ok_or(DeviceListError::NoOwnList)?;
        Ok(own.check_device(peer.device_id(), identity)?)
    }

    /// The trust pinned for `user_id`, or [`DeviceListError::NotPinned`].
    fn pinned(&self, user_id: &str) -> Result<UserTrust, DeviceError> {
        let trust = self.load_user(user_id)?.trust;
        Ok(trust.ok_or_else(|| DeviceListError::NotPinned { user_id: user_id.to_owned() })?)
    }

    /// `FanOut(user_id, plaintext, only)` of PROTOCOL.md 23.6; `kept`: the
    /// time at which the contact's messages are kept in their outboxes.
    fn fan_out(
        &self,
        user_id: &str,
        plaintext: &[u8],
        only: Option<&[Address]>,
        kept: Option<SystemTime>,
    ) -> Result<FanOut, DeviceError> {
        self.check_process()?;
        let keep = kept.map(|now| (unix_seconds(now), self.heal_policy()));
        if user_id == self.address.user_id() {
            return Err(DeviceError::InvalidArgument(DecodeError::InvalidValue("user_id")));
        }
        if plaintext.len() > MAX_FAN_OUT_PLAINTEXT_LEN {
            let error = EncryptError::MessageTooLarge { len: plaintext.len(), max: MAX_FAN_OUT_PLAINTEXT_LEN };
            return Err(SessionError::Encrypt(error).into());
        }
        if let Some(only) = only
            && only
                .iter()
                .any(|a| (a.user_id() != user_id && a.user_id() != self.address.user_id()) || *a == self.address)
        {
            return Err(DeviceError::InvalidArgument(DecodeError::InvalidValue("devices")));
        }
        let sync = SentSync { recipient: user_id.to_owned(), plaintext: Zeroizing::new(plaintext.to_vec()) };
        let sync = sync.to_control_bytes();
        retry_on_conflict(|| {
            let targets = self.fan_out_targets(user_id, only)?;
            // The peer locks of every target, in increasing row-key order
            // (PROTOCOL.md 14.9), for the whole attempt.
            let mut rows: Vec<&[u8]> = targets.iter().map(|t| t.row.as_slice()).collect();
            rows.sort_unstable();
            rows.dedup();
            let locks: Vec<_> = rows.iter().map(|row| self.peer_lock(row)).collect();
            let _guards: Vec<_> = locks.iter().map(|l| lock(l)).collect();
            let mut out = FanOut::default();
            let mut writes = Vec::new();
            for target in &targets {
                let (loaded, record) = self.load_record(&target.row)?;
                if !record.has_session() || record.trusted_identity() != Some(target.identity) {
                    out.missing.push(target.address.clone());
                    continue;
                }
                let (content, content_type) =
                    if target.own { (sync.as_slice(), ContentType::Control) } else { (plaintext, ContentType::App) };
                let (message, more) =
                    self.encrypt_on_row(&target.address, &target.row, (loaded, record), content, content_type)?;
                writes.extend(more);
                if let Some((now, policy)) = keep.as_ref().filter(|_| !target.own) {
                    writes.extend(self.keep_writes(
                        &target.row,
                        Some(target.identity),
                        &message,
                        plaintext,
                        *now,
                        policy,
                    )?);
                }
                let outgoing = Outgoing { to: target.address.clone(), message };
                if target.own { out.syncs.push(outgoing) } else { out.messages.push(outgoing) }
            }
            // One transaction for every session advanced; the ciphertexts of
            // a refused write are dropped, never returned.
            self.write(&writes)?;
            Ok(out)
        })
    }

    /// The devices a fan-out to `user_id` is for, as the lists read now
    /// name them: the contact's, then our own other devices; only those of
    /// `only` if given (each of which must be one of them).
    fn fan_out_targets(&self, user_id: &str, only: Option<&[Address]>) -> Result<Vec<Target>, DeviceError> {
        let contact = self.pinned(user_id)?;
        let own = self.load_user(self.address.user_id())?.trust;
        let listed = |trust: &UserTrust, own: bool| -> Result<Vec<Target>, DeviceError> {
            let user = trust.list().user_id();
            let mut targets = Vec::new();
            for (device_id, identity) in trust.list().devices() {
                if own && *device_id == self.address.device_id() {
                    continue;
                }
                // A verified list's user id is a valid one (L8).
                let address =
                    Address::new(user, *device_id).map_err(|_| StoreError::Corrupt { table: Table::Users })?;
                let row = self.sealer.address_key(&address);
                targets.push(Target { address, identity: *identity, row, own });
            }
            Ok(targets)
        };
        let mut targets = listed(&contact, false)?;
        if let Some(own) = &own {
            targets.extend(listed(own, true)?);
        }
        if let Some(only) = only {
            if let Some(unlisted) = only.iter().find(|a| !targets.iter().any(|t| t.address == **a)) {
                return Err(DeviceListError::UnlistedDevice { device_id: unlisted.device_id() }.into());
            }
            targets.retain(|t| only.contains(&t.address));
        }
        Ok(targets)
    }
}
