//! # samizdat-ffi
//!
//! The [`samizdat`] Device API for Kotlin, Swift and Python, through UniFFI
//! proc-macros. This layer only translates: every method converts its
//! arguments, calls [`samizdat::device::Device`], and maps the error into the
//! one [`SamizdatError`]. Logic belongs in `samizdat` (core).
//!
//! - Errors (module `error`): [`SamizdatError`] has one variant per stable
//!   error code of the core ([`ErrorKind`], with its [`Recovery`]), chosen
//!   by the core error's `kind()`, so that every binding reports the codes
//!   the core defines; its text is the core error's.
//! - Objects ([`Device`], [`PendingMessage`], [`PendingBatch`]) are
//!   `Arc<Self>` and safe to call from any thread: the
//!   core device locks internally; the pending objects hold their core value
//!   in a `Mutex<Option<_>>` so that a commit takes it exactly once.
//! - Plain data are records ([`Address`], [`PrekeyCounts`], [`Rotated`],
//!   [`IncomingMessage`], [`BatchResult`], [`GroupSend`], [`Outgoing`],
//!   [`HealPolicy`], [`SafetyNumber`]) and enums ([`MessageKind`],
//!   [`ScrubResult`], [`HealResult`]); bytes are `Vec<u8>` in calls, and
//!   [`Bytes`], [`IdentityKey`] or [`UserIdentityKey`] in records (module
//!   `values`: Kotlin classes equal by content; `Data` in Swift, `bytes` in
//!   Python).
//! - Groups (module `groups`): [`Device::create_group`],
//!   [`Device::add_group_members`], [`Device::remove_group_members`],
//!   [`Device::group_members`], [`Device::delete_group`] and
//!   [`Device::group_encrypt`]; member users, whose member devices are their
//!   newest verified device lists' ([`Device::add_group_users`],
//!   [`Device::remove_group_users`], [`Device::group_users`]). Group and control messages arrive through
//!   [`Device::decrypt`] like direct ones ([`PendingMessage::kind`]), and
//!   [`Device::commit`] returns the answer to a request for a lost chain.
//! - Healing (module `healing`): [`Device::encrypt_kept`] keeps the
//!   plaintext in a sealed outbox until [`Device::acknowledge`]
//!   ([`Device::outbox_len`]); after an `out_of_step` failure,
//!   [`Device::heal`] sends the peer a reset naming the unreadable messages
//!   (by [`message_id`], also [`PendingMessage::message_id`]), rate-limited
//!   by [`Device::set_heal_policy`] ([`Device::awaiting_resends`]: what is
//!   still missing); the peer's [`Device::commit`] of it returns those
//!   messages sent again. [`Device::commit`] therefore returns
//!   a list: every message to send, in order (usually none).
//! - Backups (module `backup`): [`Device::export_backup`] seals the
//!   identity and trust decisions under a passphrase (Argon2id,
//!   [`BackupParams`]); [`Device::restore`] makes a new store from it, whose
//!   sessions heal.
//! - Attachments (module `attachment`): [`encrypt_attachment_file`],
//!   [`decrypt_attachment_file`] and [`read_attachment_range`] by file
//!   path, [`AttachmentEncryptor`] and [`AttachmentDecryptor`] a piece at a
//!   time; the [`Attachment`] travels inside a message
//!   ([`Attachment::to_bytes`]).
//! - Users (module `users`): [`UserIdentity`] signs a user's device list,
//!   [`UserTrust`] pins a contact's user identity and refuses devices no
//!   verified list names (a server's "ghost"), rollbacks and lists signed by
//!   another key; [`user_safety_number`] is stable while devices change.
//!   On a [`Device`]: `set_device_list` (its bundles then carry the list),
//!   `device_list`, `update_device_list`, `trust_new_user_identity`,
//!   `user_trust`; a pinned user's device that no verified list names is
//!   refused as [`SamizdatError::UntrustedIdentity`] with no identity key.
//!   Sending to a user: `encrypt_to_user` and `encrypt_to_user_devices`
//!   return a [`FanOut`] (messages to the contact's devices, sent syncs to
//!   our other devices, the listed devices without a session), and
//!   `encrypt_to_user_kept` and `encrypt_to_user_devices_kept` also keep
//!   each message to a contact's device in its outbox for healing; a sync
//!   decrypts as [`MessageKind::SentSync`] with
//!   [`PendingMessage::sync_recipient`]; `user_safety_number` on a device is
//!   the per-user safety number from the pinned lists.
//! - Linking (module `linking`, PROTOCOL.md 23.8): the new device's
//!   [`Device::link_offer`] makes a [`LinkOffer`] whose code it shows; an
//!   existing device's [`Device::link_device`] (with the [`UserIdentity`])
//!   returns [`Linked`]: the new signed list to publish and the message to
//!   send; the new device's [`Device::finish_link`] returns [`Provisioned`]:
//!   the [`UserIdentity`] to keep, its list, and the pins it was given.
//! - Replacing the user identity when a device was lost (module `replace`,
//!   issue 17): a remaining device's [`Device::replace_user_identity`]
//!   (with a fresh [`UserIdentity`]) returns [`Replaced`]: the new signed
//!   list to publish and a handover per other remaining device to send; each
//!   of them decrypts its handover as [`MessageKind::UserIdentity`], whose
//!   [`PendingMessage::new_user_identity`] gives the [`NewUserIdentity`] to
//!   keep before the commit (which makes the list its own); contacts take
//!   the list with `trust_new_user_identity`.
//! - With the `hazmat` feature (test builds only), `hazmat::VectorRatchet`
//!   replays the published ratchet vectors; see that module.
//! - Time: every `now` is the app's clock in whole seconds since the Unix
//!   epoch (UTC); the library never reads the clock itself. Times,
//!   durations and file paths are [`Timestamp`], [`Seconds`] and
//!   [`FilePath`] (module `platform`): `Long`/`String` in Kotlin, `int`/`str`
//!   in Python, `Date`, `TimeInterval` and file `URL` in Swift.
//! - No async runtime: every call is synchronous (each is one SQLite
//!   transaction; run it off the UI thread).
//!
//! The code `setup_scaffolding!` and the derives generate is FFI glue that
//! needs `unsafe`, hence no `#![forbid(unsafe_code)]` here, unlike core. The
//! workspace's `deny(unsafe_code)` still holds for the code written here: it
//! does not fire on the macros' output, and this file has no `unsafe` of its own.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use samizdat::{device, fingerprint, keys, store::Scrub};
use zeroize::Zeroizing;

uniffi::setup_scaffolding!("samizdat");

mod attachment;
mod backup;
mod error;
mod groups;
#[cfg(feature = "hazmat")]
pub mod hazmat;
mod healing;
mod linking;
mod platform;
mod replace;
mod store;
mod users;
mod values;

/// The README's Rust examples, run as doc tests of this crate: it is never
/// published, so the README above it is always there (the `samizdat` crate,
/// packaged alone, has no `../README.md`, and its unpacked doc tests would
/// not build).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub use attachment::{
    Attachment, AttachmentDecryptor, AttachmentEncryptor, SealedTail, decrypt_attachment_file, encrypt_attachment_file,
    read_attachment_range,
};
pub use backup::{BackupParams, backup_params_minimum, backup_params_of, backup_params_recommended};
use error::Details;
pub use error::{ErrorKind, MismatchedSide, Recovery, SamizdatError};
pub use groups::{GroupSend, MessageKind, Outgoing};
pub use healing::{HealPolicy, HealResult, message_id};
pub use linking::{LinkOffer, Linked, Provisioned};
pub use platform::{FilePath, Seconds, Timestamp};
pub use replace::{NewUserIdentity, Replaced};
pub use store::rotate_storage_key;
pub use users::{
    DeviceListChange, DeviceListInfo, FanOut, ListedDevice, UserIdentity, UserTrust, user_safety_number,
    verify_device_list,
};
pub use values::{Bytes, IdentityKey, UserIdentityKey};

/// What [`Device::scrub`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ScrubResult {
    /// The store's files hold no byte of an overwritten or deleted row any
    /// more (until later writes; the store scrubs itself again after a
    /// budget of writes).
    Done,
    /// Another connection to the database kept the scrub from finishing:
    /// nothing is lost, the device retries after its next writes; call
    /// again later to know it is done.
    Deferred,
}

/// A device of a user.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Address {
    /// The app's stable user id (1 to 256 bytes of UTF-8).
    pub user_id: String,
    /// The device id, 0 to 4,294,967,295 (a `u32` in the protocol; signed
    /// here so that Java and Kotlin see a plain `long`).
    pub device_id: i64,
}

/// How many one-time prekeys are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PrekeyCounts {
    /// One-time X25519 prekeys.
    pub one_time: i32,
    /// One-time ML-KEM prekeys.
    pub pq_one_time: i32,
}

/// What [`Device::rotate_prekeys`] replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct Rotated {
    /// Whether the signed prekey was rotated.
    pub signed_prekey: bool,
    /// Whether the last-resort ML-KEM prekey was rotated.
    pub last_resort_prekey: bool,
}

/// A queued message for [`Device::decrypt_batch`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct IncomingMessage {
    /// The sender, as the app's transport names it.
    pub sender: Address,
    /// The message as received.
    pub ciphertext: Bytes,
}

/// One message's outcome in a [`PendingBatch`]: a plaintext or an error.
#[derive(Debug, uniffi::Record)]
pub struct BatchResult {
    /// The plaintext, if the message decrypted.
    pub plaintext: Option<Bytes>,
    /// Why it did not (a failed message changes nothing).
    pub error: Option<SamizdatError>,
}

/// One installation: an identity, its prekeys and its sessions in an
/// encrypted SQLite store. Close it to release the store (`close()` or `use`
/// in Kotlin, `close()` or `with` in Python, `Device` going out of scope in Swift).
#[derive(uniffi::Object)]
pub struct Device {
    inner: device::Device,
}

/// A decrypted message waiting for [`Device::commit`]: a direct message, a
/// group message, or a control message ([`Self::kind`]). Store the
/// plaintext (not for a control message), keyed by [`Self::message_id`] for
/// a direct one, commit, send what the commit returned (usually nothing),
/// then acknowledge the message to the server.
#[derive(uniffi::Object)]
pub struct PendingMessage {
    /// Wiped when the object is freed. (The copies handed to Kotlin, Swift or
    /// Python are byte arrays of those runtimes, out of the library's reach.)
    plaintext: Zeroizing<Vec<u8>>,
    kind: MessageKind,
    group_id: Option<Vec<u8>>,
    sender: Address,
    sender_identity: Option<Vec<u8>>,
    message_id: Option<Vec<u8>>,
    sync_recipient: Option<String>,
    new_user_identity: Option<NewUserIdentity>,
    inner: Mutex<Option<device::PendingMessage>>,
}

/// Decrypted queued messages waiting for [`Device::commit_batch`].
#[derive(uniffi::Object)]
pub struct PendingBatch {
    inner: Mutex<Option<device::PendingBatch>>,
}

/// The safety number of a conversation, as a plain value: 60 digits to
/// read aloud, or a code to scan. Nothing in it is secret.
///
/// Two are equal when they were computed for the same two identities on
/// the same side: the peer's screen shows the same `digits` and the mirror
/// image of `scannable` (compare the digits across devices, or scan).
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct SafetyNumber {
    /// The 60 digits, with no separator.
    pub digits: String,
    /// The digits in 12 groups of 5, as users read them.
    pub display: String,
    /// The bytes a QR code on this screen carries (65 bytes).
    pub scannable: Bytes,
}

#[uniffi::export]
impl Device {
    /// Creates a new device in a new SQLite database at `path`.
    #[uniffi::constructor]
    pub fn create(
        path: FilePath,
        storage_key: Vec<u8>,
        user_id: String,
        device_id: i64,
        now: Timestamp,
    ) -> Result<Arc<Self>, SamizdatError> {
        let (key, address) = (key32(storage_key)?, Address { user_id, device_id }.to_core()?);
        Ok(Arc::new(Self { inner: device::Device::create(path.into_path("path")?, &key, address, at(now)?)? }))
    }

    /// Opens the device in the SQLite database at `path`.
    #[uniffi::constructor]
    pub fn open(path: FilePath, storage_key: Vec<u8>) -> Result<Arc<Self>, SamizdatError> {
        Ok(Arc::new(Self { inner: device::Device::open(path.into_path("path")?, &key32(storage_key)?)? }))
    }

    /// Opens the device at `path`, creating it first if there is none.
    #[uniffi::constructor]
    pub fn open_or_create(
        path: FilePath,
        storage_key: Vec<u8>,
        user_id: String,
        device_id: i64,
        now: Timestamp,
    ) -> Result<Arc<Self>, SamizdatError> {
        let (key, address) = (key32(storage_key)?, Address { user_id, device_id }.to_core()?);
        Ok(Arc::new(Self { inner: device::Device::open_or_create(path.into_path("path")?, &key, address, at(now)?)? }))
    }

    /// This device's address.
    pub fn address(&self) -> Address {
        self.inner.address().into()
    }

    /// This device's identity key (32 bytes).
    pub fn identity_key(&self) -> Vec<u8> {
        self.inner.identity_key().as_bytes().to_vec()
    }

    /// A prekey bundle for one contact. Every call offers one-time prekeys
    /// that no earlier bundle offered (the device remembers what it handed
    /// out; this writes to the store), so the server must give each bundle
    /// to one requester. Once every one-time prekey was handed out, the
    /// bundle offers the signed and last-resort keys only: refill.
    pub fn prekey_bundle(&self) -> Result<Vec<u8>, SamizdatError> {
        Ok(self.inner.prekey_bundle()?)
    }

    /// Up to `count` bundles with distinct one-time prekeys that no earlier
    /// bundle offered, to upload for the server to hand out one per
    /// requester.
    pub fn prekey_bundles(&self, count: i32) -> Result<Vec<Vec<u8>>, SamizdatError> {
        Ok(self.inner.prekey_bundles(count_arg("count", count)?)?)
    }

    /// How many one-time prekeys are held (not consumed yet), whether a
    /// bundle offered them or not.
    pub fn prekey_counts(&self) -> Result<PrekeyCounts, SamizdatError> {
        let (one_time, pq_one_time) = self.inner.prekey_counts()?;
        Ok(PrekeyCounts { one_time: to_i32(one_time), pq_one_time: to_i32(pq_one_time) })
    }

    /// Below `threshold` one-time prekeys of either kind left to hand out
    /// (offered by no bundle yet), tops each kind up to `target` of those;
    /// returns how many were added in all. Call it regularly, then upload
    /// new bundles.
    pub fn refill_prekeys(&self, threshold: i32, target: i32, now: Timestamp) -> Result<i32, SamizdatError> {
        let (threshold, target) = (count_arg("threshold", threshold)?, count_arg("target", target)?);
        Ok(to_i32(self.inner.refill_prekeys(threshold, target, at(now)?)?))
    }

    /// Rotates the signed and last-resort prekeys older than `max_age` seconds.
    pub fn rotate_prekeys(&self, now: Timestamp, max_age: Seconds) -> Result<Rotated, SamizdatError> {
        let rotated = self.inner.rotate_prekeys(at(now)?, max_age.to_duration("max_age")?)?;
        Ok(Rotated { signed_prekey: rotated.signed_prekey, last_resort_prekey: rotated.last_resort_prekey })
    }

    /// Starts a session from a peer's bundle; returns the peer's address.
    pub fn start_session(&self, bundle: Vec<u8>) -> Result<Address, SamizdatError> {
        Ok(self.inner.start_session(&bundle)?.into())
    }

    /// Whether there is a session with `peer`.
    pub fn has_session(&self, peer: Address) -> Result<bool, SamizdatError> {
        Ok(self.inner.has_session(&peer.to_core()?)?)
    }

    /// The identity key trusted for `peer`, if any.
    pub fn peer_identity(&self, peer: Address) -> Result<Option<Vec<u8>>, SamizdatError> {
        Ok(self.inner.peer_identity(&peer.to_core()?)?.map(|key| key.as_bytes().to_vec()))
    }

    /// The safety number with `peer`.
    pub fn safety_number(&self, peer: Address) -> Result<SafetyNumber, SamizdatError> {
        Ok(self.inner.safety_number(&peer.to_core()?)?.into())
    }

    /// Trusts `identity` for `peer` (after [`SamizdatError::UntrustedIdentity`]).
    pub fn trust_identity(&self, peer: Address, identity: Vec<u8>) -> Result<(), SamizdatError> {
        let identity = keys::IdentityKey::from_slice(&identity)
            .map_err(|e| SamizdatError::from_core(e.kind(), format!("invalid identity key: {e}"), Details::None))?;
        Ok(self.inner.trust_identity(&peer.to_core()?, identity)?)
    }

    /// Encrypts for `peer`; the session is committed before this returns.
    /// [`Self::encrypt_kept`] also keeps the plaintext, for a peer's reset.
    pub fn encrypt(&self, peer: Address, plaintext: Vec<u8>) -> Result<Vec<u8>, SamizdatError> {
        Ok(self.inner.encrypt(&peer.to_core()?, &plaintext)?)
    }

    /// Decrypts a message from `sender` (a direct, group or control
    /// message) without changing anything (but see
    /// [`SamizdatError::MissingGroupKey`]).
    pub fn decrypt(&self, sender: Address, ciphertext: Vec<u8>) -> Result<Arc<PendingMessage>, SamizdatError> {
        Ok(Arc::new(self.inner.decrypt(&sender.to_core()?, &ciphertext)?.into()))
    }

    /// Commits a decryption (after the app stored the plaintext). Any commit
    /// attempt uses up `pending`: after an error nothing was written, and the
    /// message decrypts again.
    ///
    /// Returns what to send, in order: the answer when the message was a
    /// member's request for our chain in a group that this device answers;
    /// the messages sent again when it was a peer's reset. Usually empty.
    pub fn commit(&self, pending: Arc<PendingMessage>) -> Result<Vec<Outgoing>, SamizdatError> {
        Ok(self.inner.commit(take(&pending.inner)?)?.into_iter().map(Outgoing::from).collect())
    }

    /// Decrypts queued messages in order; nothing is written until
    /// [`Self::commit_batch`].
    pub fn decrypt_batch(&self, messages: Vec<IncomingMessage>) -> Result<Arc<PendingBatch>, SamizdatError> {
        let messages = messages
            .into_iter()
            .map(|m| Ok((m.sender.to_core()?, m.ciphertext.into_vec())))
            .collect::<Result<Vec<_>, SamizdatError>>()?;
        Ok(Arc::new(PendingBatch { inner: Mutex::new(Some(self.inner.decrypt_batch(&messages)?)) }))
    }

    /// Commits a batch in one transaction.
    pub fn commit_batch(&self, batch: Arc<PendingBatch>) -> Result<(), SamizdatError> {
        Ok(self.inner.commit_batch(take(&batch.inner)?)?)
    }

    /// Rewrites the store's files so that no copy of an overwritten or
    /// deleted row (a used key, an old ratchet state) is left in them: call
    /// it when the app goes to the background or locks. The store also does
    /// it by itself when opened (a store of at most 4 MiB) and after each
    /// budget of writes.
    pub fn scrub(&self) -> Result<ScrubResult, SamizdatError> {
        match self.inner.scrub()? {
            Scrub::Done => Ok(ScrubResult::Done),
            Scrub::Deferred => Ok(ScrubResult::Deferred),
            // A SQLite store always scrubs: another result means the store
            // is not what this device opened.
            other => Err(SamizdatError::from_core(
                samizdat::ErrorKind::StoreFailure,
                format!("the store did not scrub ({other:?})"),
                Details::None,
            )),
        }
    }
}

#[uniffi::export]
impl PendingMessage {
    /// The plaintext: empty for a [`MessageKind::Control`] or
    /// [`MessageKind::UserIdentity`] message; for a
    /// [`MessageKind::SentSync`], what our other device sent.
    pub fn plaintext(&self) -> Vec<u8> {
        self.plaintext.to_vec()
    }

    /// What the message is.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The group of a group or control message (`None` for a direct one).
    pub fn group_id(&self) -> Option<Vec<u8>> {
        self.group_id.clone()
    }

    /// The sender, as the app named it.
    pub fn sender(&self) -> Address {
        self.sender.clone()
    }

    /// The sender's identity key (32 bytes): the one its session
    /// authenticated; for a group message, the identity the sender's chain
    /// came under (trusted for the sender now). `None` only for a group
    /// message from a sender with whom there is no session any more.
    pub fn sender_identity(&self) -> Option<Vec<u8>> {
        self.sender_identity.clone()
    }

    /// The id of a one-to-one message (16 bytes): [`message_id`] of its wire
    /// bytes; for a message sent again after a reset, the id it was first
    /// sent with, so that it is the same either way. Key the stored
    /// plaintext by it, and put it in the delivery receipt for the sender's
    /// [`Device::acknowledge`]. `None` for a group message.
    pub fn message_id(&self) -> Option<Vec<u8>> {
        self.message_id.clone()
    }

    /// For a [`MessageKind::SentSync`] (a copy of what another device of our
    /// own user sent), the user id it was sent to; `None` for every other
    /// kind.
    pub fn sync_recipient(&self) -> Option<String> {
        self.sync_recipient.clone()
    }
}

#[uniffi::export]
impl PendingBatch {
    /// One result per message, in the order given (empty once committed).
    pub fn results(&self) -> Vec<BatchResult> {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let results = guard.as_ref().map(device::PendingBatch::results).unwrap_or_default();
        results.iter().map(|r| r.clone().map_err(SamizdatError::from).into()).collect()
    }
}

#[uniffi::export]
impl SafetyNumber {
    /// Checks a code scanned from the peer's screen (both fingerprints
    /// compared in constant time): [`SamizdatError::IdentityMismatch`] says
    /// which side differs. `InvalidArgument` if this value's own
    /// `scannable` is not a safety number's code (a value not made by the
    /// library).
    pub fn compare_scanned(&self, scanned: Vec<u8>) -> Result<(), SamizdatError> {
        let ours = fingerprint::SafetyNumber::from_scannable(&self.scannable)
            .map_err(|e| SamizdatError::invalid_argument(format!("this safety number's own code: {e}")))?;
        Ok(ours.compare_scanned(&scanned)?)
    }
}

impl Address {
    fn to_core(&self) -> Result<samizdat::address::Address, SamizdatError> {
        // Classified as the core classifies an argument that does not parse.
        let device_id = u32::try_from(self.device_id).map_err(|_| {
            SamizdatError::invalid_argument(format!("device_id {} is outside 0 to {}", self.device_id, u32::MAX))
        })?;
        samizdat::address::Address::new(self.user_id.clone(), device_id)
            .map_err(|e| SamizdatError::invalid_argument(e.to_string()))
    }
}

impl From<&samizdat::address::Address> for Address {
    fn from(address: &samizdat::address::Address) -> Self {
        Self { user_id: address.user_id().to_owned(), device_id: i64::from(address.device_id()) }
    }
}

impl From<samizdat::address::Address> for Address {
    fn from(address: samizdat::address::Address) -> Self {
        (&address).into()
    }
}

impl From<device::PendingMessage> for PendingMessage {
    fn from(pending: device::PendingMessage) -> Self {
        Self {
            plaintext: Zeroizing::new(pending.plaintext().to_vec()),
            kind: pending.kind().into(),
            group_id: pending.group_id().map(<[u8]>::to_vec),
            sender: pending.peer().into(),
            sender_identity: pending.sender_identity().map(|k| k.as_bytes().to_vec()),
            message_id: pending.message_id().map(|id| id.to_vec()),
            sync_recipient: pending.sync_recipient().map(str::to_owned),
            new_user_identity: pending.new_user_identity().map(NewUserIdentity::from),
            inner: Mutex::new(Some(pending)),
        }
    }
}

impl From<fingerprint::SafetyNumber> for SafetyNumber {
    fn from(number: fingerprint::SafetyNumber) -> Self {
        Self { digits: number.digits().to_owned(), display: number.display(), scannable: number.scannable().into() }
    }
}

impl From<Result<Vec<u8>, SamizdatError>> for BatchResult {
    fn from(result: Result<Vec<u8>, SamizdatError>) -> Self {
        let (plaintext, error) = match result {
            Ok(plaintext) => (Some(plaintext.into()), None),
            Err(error) => (None, Some(error)),
        };
        Self { plaintext, error }
    }
}

/// Takes a pending value out of its slot, once.
fn take<T>(slot: &Mutex<Option<T>>) -> Result<T, SamizdatError> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take().ok_or_else(|| {
        SamizdatError::invalid_argument("this pending message or batch was already committed".to_owned())
    })
}

/// The storage key as the core takes it; the copies are zeroized on drop.
fn key32(key: Vec<u8>) -> Result<samizdat::store::StorageKey, SamizdatError> {
    let key = Zeroizing::new(key);
    samizdat::store::StorageKey::try_from(key.as_slice()).map_err(|e| SamizdatError::invalid_argument(e.to_string()))
}

// Integers at the boundary are signed (`Int`/`Long` in Kotlin and Java,
// whose unsigned types mangle the JVM names of every function that takes
// them), and checked here: a negative count, time or id is an
// `InvalidArgument`, never a wrapped-around huge value.

/// A count from the app (`name` is the parameter's, for the message).
fn count_arg(name: &str, value: i32) -> Result<usize, SamizdatError> {
    usize::try_from(value).map_err(|_| SamizdatError::invalid_argument(format!("{name} is negative: {value}")))
}

/// A time, an age or a size from the app (`name` is the parameter's).
fn non_negative(name: &str, value: i64) -> Result<u64, SamizdatError> {
    u64::try_from(value).map_err(|_| SamizdatError::invalid_argument(format!("{name} is negative: {value}")))
}

/// The app's `now` (whole seconds since the Unix epoch) as the core takes it.
fn at(now: Timestamp) -> Result<SystemTime, SamizdatError> {
    now.to_system_time("now")
}

/// A count of the core for the app (saturating; every count is bounded far
/// below `i32::MAX`).
fn to_i32(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}
