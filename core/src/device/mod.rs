//! The device: the high-level API over an encrypted store.
//!
//! A [`Device`] is one installation of an app: an identity, its prekeys, and
//! a session record per peer device, all kept in a [`Backend`] and sealed
//! under the app's 32-byte storage key. Every call is one transaction: it
//! reads what it needs, computes in memory, and writes once.
//!
//! - [`Device::encrypt`] commits the advanced session before it returns the
//!   ciphertext, so a message key is never used twice, even across a crash.
//! - [`Device::decrypt`] is two-phase: it returns a [`PendingMessage`] with
//!   the plaintext and changes nothing. The app stores the plaintext (keyed
//!   by its transport's message id, so that storing twice is harmless), then
//!   calls [`Device::commit`], then acknowledges the message to its server.
//!   Before the commit the same ciphertext decrypts again; after it, a
//!   redelivery is reported as a duplicate.
//! - [`Device::decrypt_batch`] does the same for many queued messages in one
//!   transaction.
//!
//! **Time.** Every `now: SystemTime` a call takes is the app's clock
//! (`SystemTime::now()`, or a test's fixed time), and every age or interval
//! a `Duration`. The device keeps times in whole seconds since the Unix
//! epoch (a time before it counts as the epoch itself; one past the
//! platform's last representable second, as that second). The device never
//! reads the clock itself; a clock set back or ahead is tolerated within the
//! bounds PROTOCOL.md 20.5 states.
//!
//! **The storage key** is a [`StorageKey`]: 32 secret bytes, made once with
//! [`StorageKey::generate`], kept in the platform keystore, wiped from memory
//! when dropped.
//!
//! A `Device` is `Send + Sync`: calls for different peers run in parallel
//! (each peer has its own lock; the database serializes only the writes).
//!
//! Several handles may share one store (two `Device`s over one database, in
//! one process or several, or over one `Arc<MemoryBackend>`). Every write is
//! conditional on its rows still holding the sealed bytes the call read
//! ([`Expected`]): when another handle wrote first, a call that has handed
//! nothing out reads again and recomputes (at most [`MAX_WRITE_ATTEMPTS`]
//! times), and a commit of a decryption made on the old row is refused as
//! stale. No two encryptions ever build on the same state, so no message key
//! is used twice.
//!
//! A `Device` belongs to the process that made it: in a child of `fork`,
//! every call that touches its state fails with [`DeviceError::Forked`]
//! before it reaches the store (the child would otherwise encrypt from a copy
//! of the state, or through the parent's database connection). The child
//! opens the device again.
//!
//! # Example
//!
//! ```
//! # use std::time::SystemTime;
//! # use samizdat::store::StorageKey;
//! use samizdat::{address::Address, device::Device, store::MemoryBackend};
//!
//! let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
//! let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
//!
//! let bob_address = alice.start_session(&bob.prekey_bundle()?)?;
//! let wire = alice.encrypt(&bob_address, b"hello")?;
//!
//! let pending = bob.decrypt(alice.address(), &wire)?;
//! assert_eq!(pending.plaintext(), b"hello");
//! // ... the app stores the plaintext durably here ...
//! bob.commit(pending)?;
//! // ... and only then acknowledges the message to its server.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backup;
mod fanout;
mod group_users;
mod groups;
mod healing;
mod linking;
mod peers;
mod pending;
mod prekeys;
mod replace;
mod sessions;
mod storage_key;
mod users;

use self::sessions::RefusedHeader;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use samizdat_proto::storage;
use zeroize::Zeroizing;

use crate::{
    DecodeError, SessionError,
    address::Address,
    keys::{IdentityKey, IdentityKeyPair, fixed},
    limits::MAX_WRITE_ATTEMPTS,
    prekeys::{PreKeyError, PreKeySet},
    store::{Backend, Expected, KEY_CHECK_ROW, Scrub, Sealer, SqliteBackend, StorageKey, StoreError, Table, Write},
    user::DeviceListError,
};

use self::prekeys::set_rows;
pub use self::{
    fanout::FanOut,
    groups::{GroupError, GroupSend, Outgoing},
    healing::{Heal, HealPolicy},
    linking::{Linked, Provisioned},
    pending::{MessageKind, PendingBatch, PendingMessage},
    replace::{NewUserIdentity, Replaced},
};
pub use crate::backup::{BackupError, BackupParams};

/// The row key of the identity row (the table has one row).
const SINGLE_ROW: &[u8] = b"self";
/// Format version of the identity and session rows.
const ROW_VERSION: u32 = 1;

/// Why a device call failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The session layer refused (duplicate, forged, untrusted identity, no
    /// session, unknown prekey, ...).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store failed or was opened with the wrong key.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Prekeys could not be generated.
    #[error(transparent)]
    PreKey(#[from] PreKeyError),
    /// A group call failed (unknown group, not a member, a chain missing,
    /// a group message that does not decrypt, ...).
    #[error(transparent)]
    Group(GroupError),
    /// An argument is invalid (for example an empty user id).
    #[error("invalid argument: {0}")]
    InvalidArgument(DecodeError),
    /// This device was made in another process: this one is a child of
    /// `fork` that inherited it. Nothing was read or written; open the device
    /// again in this process.
    #[error("the device belongs to the process that opened it, not to this forked child")]
    Forked,
    /// The store holds the device of another address than the one asked for
    /// (two stores swapped, for example): it was not opened.
    #[error("the store holds the device of {found:?}")]
    OtherDevice {
        /// The address of the device the store holds.
        found: Address,
    },
    /// An encrypted backup could not be made or restored (a wrong
    /// passphrase, a file that is not a backup, parameters out of bounds).
    /// Nothing was written.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A [`PendingMessage`] or [`PendingBatch`] made by another device was
    /// given to this one's commit. Nothing was written; commit it on the
    /// device that decrypted it.
    #[error("this pending decryption was made by another device")]
    ForeignPending,
    /// A device list was refused, or a device that the pinned list of its
    /// user does not name (PROTOCOL.md 23.5): a list that does not verify,
    /// of another user, older than the one held
    /// ([`DeviceListError::Rollback`]; from the app's calls only: an older
    /// list in a bundle is taken as no list), another with the same version
    /// ([`DeviceListError::Equivocation`]), signed by another user identity
    /// than the pinned one ([`DeviceListError::UntrustedUser`]), or a ghost
    /// or removed device ([`DeviceListError::UnlistedDevice`]). Nothing was
    /// written.
    #[error(transparent)]
    DeviceList(#[from] DeviceListError),
    /// [`Device::set_device_list`] was given a list that does not name this
    /// device (its device id with its identity key). Nothing was written.
    #[error("the device list does not name this device with its identity key")]
    NotInOwnList,
    /// Linking a device failed (PROTOCOL.md 23.7): a code that is not one,
    /// expired, of another user; a message that is not for the offer, or
    /// replayed. Nothing was written.
    #[error(transparent)]
    Link(#[from] crate::user::LinkError),
}

/// What [`Device::rotate_prekeys`] replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// Whether the signed prekey was rotated.
    pub signed_prekey: bool,
    /// Whether the last-resort ML-KEM prekey was rotated.
    pub last_resort_prekey: bool,
}

/// One installation: an identity, its prekeys and its sessions, in a store.
///
/// Two rules keep every message (see the module's documentation):
/// - **Decrypt, store, commit, then acknowledge, one message at a time.**
///   [`Self::decrypt`] changes nothing; [`Self::commit`] applies it. A
///   [`PendingMessage`] is valid until the next change of that peer's
///   session, so decrypting two messages of one peer before committing the
///   first makes the second commit fail with `StalePending` (decrypt it
///   again). Take several queued messages at once with
///   [`Self::decrypt_batch`] and [`Self::commit_batch`].
/// - **Every bundle goes to one contact.** [`Self::prekey_bundle`] offers
///   one-time prekeys no earlier bundle offered; the server must give each
///   bundle to one requester.
pub struct Device<B: Backend = SqliteBackend> {
    backend: B,
    sealer: Sealer,
    /// The store's check row as this handle read it: the guard of every
    /// write ([`Sealer::guard`]).
    key_check: Vec<u8>,
    identity: IdentityKeyPair,
    address: Address,
    peer_locks: Mutex<HashMap<Vec<u8>, Arc<Mutex<()>>>>,
    prekey_lock: Mutex<()>,
    /// Serializes this handle's group calls (taken before any peer lock).
    group_lock: Mutex<()>,
    /// Headers whose forged bodies were costly to refuse, with the key that
    /// opens their bodies (see [`sessions`]): in memory only, bounded.
    refused: Mutex<VecDeque<RefusedHeader>>,
    /// How this handle heals sessions.
    heal_policy: Mutex<HealPolicy>,
    /// User rows this handle verified, by their sealed bytes (see [`users`]).
    users: Mutex<users::UserCache>,
    /// The process that made this device.
    pid: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value here is `()` or a map of locks: nothing can be
    // left half-updated by a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `attempt` (read, compute, conditional write) again while its write
/// is refused because another handle wrote the rows it read, at most
/// [`MAX_WRITE_ATTEMPTS`] times in all. Only for calls whose result has not
/// been handed out: a refused attempt wrote nothing and its result is dropped.
fn retry_on_conflict<T>(mut attempt: impl FnMut() -> Result<T, DeviceError>) -> Result<T, DeviceError> {
    for _ in 1..MAX_WRITE_ATTEMPTS {
        match attempt() {
            Err(DeviceError::Store(StoreError::Conflict { .. })) => {}
            result => return result,
        }
    }
    attempt()
}

impl Device<SqliteBackend> {
    /// Creates a new device in a new SQLite database at `path`.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the database already holds a device;
    /// as [`SqliteBackend::open`].
    pub fn create(
        path: impl AsRef<Path>,
        storage_key: &StorageKey,
        address: Address,
        now: SystemTime,
    ) -> Result<Self, DeviceError> {
        let path = path.as_ref();
        if path.exists() {
            return Self::create_in(SqliteBackend::open(path)?, storage_key, address, now);
        }
        if !SqliteBackend::create_new(path, |backend| Self::build(backend, storage_key, &address, now))? {
            return Err(StoreError::AlreadyExists.into());
        }
        Self::open_in(SqliteBackend::open(path)?, storage_key)
    }

    /// Creates the device of `address` under `storage_key` in `backend` (a
    /// new, empty store under its temporary name, 14.6).
    fn build(
        backend: &SqliteBackend,
        storage_key: &StorageKey,
        address: &Address,
        now: SystemTime,
    ) -> Result<(), DeviceError> {
        Self::create_rows(backend, &Sealer::new(storage_key.as_bytes()), address, now).map(|_| ())
    }

    /// Opens the device in the SQLite database at `path`. Nothing is
    /// created: a missing or empty file holds no device.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it holds no device, [`StoreError::WrongKey`]
    /// for the wrong storage key (nothing is changed); as
    /// [`SqliteBackend::open`].
    pub fn open(path: impl AsRef<Path>, storage_key: &StorageKey) -> Result<Self, DeviceError> {
        Self::open_in(SqliteBackend::open_existing(path)?, storage_key)
    }

    /// Opens the device at `path`, which must be the device of `address`,
    /// creating it first if there is no database file there (or one that
    /// holds no device yet).
    ///
    /// # Errors
    /// [`StoreError::EmptyFile`] for an existing empty file (a truncated
    /// store: nothing is created over it); [`DeviceError::OtherDevice`] if the
    /// database holds the device of another address (two stores swapped, for
    /// example); as [`Self::open`] and [`Self::create`].
    pub fn open_or_create(
        path: impl AsRef<Path>,
        storage_key: &StorageKey,
        address: Address,
        now: SystemTime,
    ) -> Result<Self, DeviceError> {
        let path = path.as_ref();
        if std::fs::metadata(path).is_ok_and(|metadata| metadata.len() == 0) {
            return Err(StoreError::EmptyFile.into());
        }
        // A new store is made whole under a temporary name, then named: a
        // crash never leaves an empty or half-made file at `path`.
        SqliteBackend::create_new(path, |backend| Self::build(backend, storage_key, &address, now))?;
        let backend = SqliteBackend::open(path)?;
        if backend.get(Table::Meta, KEY_CHECK_ROW)?.is_none() {
            let sealer = Sealer::new(storage_key.as_bytes());
            match retry_on_conflict(|| Self::create_rows(&backend, &sealer, &address, now)) {
                Ok((identity, key_check)) => return Ok(Self::assemble(backend, sealer, key_check, identity, address)),
                // Another handle created it meanwhile: open that one.
                Err(DeviceError::Store(StoreError::AlreadyExists)) => {}
                Err(e) => return Err(e),
            }
        }
        let device = Self::open_in(backend, storage_key)?;
        if device.address != address {
            return Err(DeviceError::OtherDevice { found: device.address.clone() });
        }
        Ok(device)
    }
}

/// Checks the storage key against `backend`'s key-check row and reads the
/// device's identity and address.
fn read_identity<B: Backend>(backend: &B, sealer: &Sealer) -> Result<(IdentityKeyPair, Address), DeviceError> {
    let corrupt = || StoreError::Corrupt { table: Table::Identity };
    let sealed = backend.get(Table::Identity, SINGLE_ROW)?.ok_or_else(corrupt)?;
    let bytes = sealer.open(Table::Identity, SINGLE_ROW, &sealed)?;
    let row = crate::codec::decode_secret::<storage::IdentityRow>(bytes.as_slice()).map_err(|_| corrupt())?;
    let seed = Zeroizing::new(fixed::<32>(&row.seed, "seed").map_err(|_| corrupt())?);
    let address = Address::new(row.user_id.clone(), row.device_id).map_err(|_| corrupt())?;
    if row.version != ROW_VERSION {
        return Err(corrupt().into());
    }
    Ok((IdentityKeyPair::from_seed(&seed), address))
}

impl<B: Backend> Device<B> {
    /// Creates a new device (a fresh identity, a signed prekey and a
    /// last-resort ML-KEM prekey) in an empty backend, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the backend already holds a device
    /// (also when another handle created one meanwhile).
    pub fn create_in(
        backend: B,
        storage_key: &StorageKey,
        address: Address,
        now: SystemTime,
    ) -> Result<Self, DeviceError> {
        // A new store has no naming-keys row: its sealer is the storage key's.
        let sealer = Sealer::new(storage_key.as_bytes());
        let (identity, key_check) = retry_on_conflict(|| Self::create_rows(&backend, &sealer, &address, now))?;
        Ok(Self::assemble(backend, sealer, key_check, identity, address))
    }

    /// Writes a new device's rows into a backend that has none (each write
    /// conditional on its row being absent) and returns its identity and
    /// the sealed key-check value it wrote.
    fn create_rows(
        backend: &B,
        sealer: &Sealer,
        address: &Address,
        now: SystemTime,
    ) -> Result<(IdentityKeyPair, Vec<u8>), DeviceError> {
        if backend.get(Table::Meta, KEY_CHECK_ROW)?.is_some() {
            return Err(StoreError::AlreadyExists.into());
        }
        let mut rng = crate::os_rng();
        let identity = IdentityKeyPair::generate(&mut rng);
        let prekeys = PreKeySet::new(&mut rng, &identity, now);
        let row = Zeroizing::new(storage::IdentityRow {
            version: ROW_VERSION,
            seed: identity.to_seed().to_vec(),
            user_id: address.user_id().to_owned(),
            device_id: address.device_id(),
        });
        // The seed is in `row` (wiped on drop) and in its encoding (wiped too).
        let encoded = Zeroizing::new(encode(&*row));
        let identity_write = Write {
            table: Table::Identity,
            key: SINGLE_ROW.to_vec(),
            value: Some(sealer.seal(&mut rng, Table::Identity, SINGLE_ROW, &encoded)),
            expected: Expected::Absent,
        };
        let key_check = sealer.key_check(&mut rng);
        let check = key_check.value.clone().unwrap_or_default();
        let mut writes = vec![key_check, identity_write, healing::outboxes_marker(sealer)];
        writes.extend(set_rows(sealer, prekeys).writes(sealer));
        backend.apply(&writes)?;
        Ok((identity, check))
    }

    /// Opens the device in `backend`. A store written before prekeys were
    /// kept one row per key has its single prekey row converted, in one
    /// transaction (PROTOCOL.md 14.6, 14.7); opening writes nothing else.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::WrongKey`] (nothing changed),
    /// or [`StoreError::Corrupt`]; a store error of the conversion (nothing
    /// converted).
    pub fn open_in(backend: B, storage_key: &StorageKey) -> Result<Self, DeviceError> {
        let (sealer, key_check) = Sealer::load(&backend, storage_key.as_bytes())?;
        let (identity, address) = read_identity(&backend, &sealer)?;
        let device = Self::assemble(backend, sealer, key_check, identity, address);
        // A store of the previous format: its prekeys, one row, become rows;
        // a store made before release 0.5: its outbox indexes move to their
        // table.
        retry_on_conflict(|| device.migrate_prekeys())?;
        retry_on_conflict(|| device.move_outboxes())?;
        Ok(device)
    }

    fn assemble(backend: B, sealer: Sealer, key_check: Vec<u8>, identity: IdentityKeyPair, address: Address) -> Self {
        Self {
            backend,
            sealer,
            key_check,
            identity,
            address,
            peer_locks: Mutex::new(HashMap::new()),
            prekey_lock: Mutex::new(()),
            group_lock: Mutex::new(()),
            refused: Mutex::new(VecDeque::new()),
            heal_policy: Mutex::new(HealPolicy::default()),
            users: Mutex::new(users::UserCache::default()),
            pid: std::process::id(),
        }
    }

    /// Refuses every call that touches state in a forked child, before any
    /// lock or store access (a lock may have been held by another thread of
    /// the parent when it forked).
    fn check_process(&self) -> Result<(), DeviceError> {
        if std::process::id() == self.pid { Ok(()) } else { Err(DeviceError::Forked) }
    }

    /// Applies `writes` in one batch, guarded: refused with
    /// [`StoreError::KeyRotated`] if the store's storage key was rotated
    /// since this handle opened it (a row sealed under the old key would
    /// not open under the new one). Every write of the device goes through
    /// here.
    fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(writes.len().saturating_add(2));
        batch.push(Sealer::guard(&self.key_check));
        batch.extend_from_slice(writes);
        // A user's list written: a new lists mark, which every group's
        // roster follows before its next send (PROTOCOL.md 18.8),
        // conditional on the mark as read now (every caller retries the
        // whole call on a `Conflict`).
        if writes.iter().any(|w| w.table == Table::Users) {
            batch.push(self.lists_mark_write()?);
        }
        match self.backend.apply(&batch) {
            // The guard failed, or another row of `meta` changed (the outbox
            // mark, written once): only the first is a rotation.
            Err(StoreError::Conflict { table: Table::Meta }) if self.key_check_changed() => Err(StoreError::KeyRotated),
            result => result,
        }
    }

    /// Opens a sealed row read from the store. A row that does not open is
    /// [`StoreError::Corrupt`], unless the store's key-check row no longer
    /// holds what this handle read when it opened the store: then another
    /// handle rotated the storage key ([`StoreError::KeyRotated`]: open the
    /// store again with the new key), and the row is not damaged at all.
    fn open_sealed(&self, table: Table, key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.sealer
            .open(table, key, sealed)
            .map_err(|e| if self.key_check_changed() { StoreError::KeyRotated } else { e })
    }

    /// Whether the store's key-check row no longer holds what this handle
    /// read when it opened the store (another handle rotated the storage
    /// key). A row gone or unreadable is not taken for a rotation.
    fn key_check_changed(&self) -> bool {
        matches!(self.backend.get(Table::Meta, KEY_CHECK_ROW), Ok(Some(check)) if check != self.key_check)
    }

    /// The backend (for tests and tools).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// This device's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// This device's identity key.
    pub fn identity_key(&self) -> IdentityKey {
        self.identity.public_key()
    }

    /// Removes from the store's files every byte of a superseded row (a
    /// session or prekey row overwritten or deleted), so that the storage
    /// key of a seized phone opens none of the keys the protocol deleted.
    /// Changes no row.
    ///
    /// On SQLite ([`Backend::scrub`]) this rewrites the database and empties
    /// its log; the store also does it by itself when opened (a store of at
    /// most 4 MiB) and after the commits that pass a budget of bytes written (PROTOCOL.md 14.8, 16.6),
    /// so calling it is needed only to close the window between those
    /// scrubs now: before the app goes to the background, or after deleting
    /// sessions, say. It costs about as much as copying the database twice.
    /// Another handle or process that holds the store's write lock, or
    /// reads, past the busy timeout (5 s) makes it [`Scrub::Deferred`],
    /// never an error: nothing is lost, and the store tries again after its
    /// next commits and when it is dropped. A
    /// [`MemoryBackend`](crate::store::MemoryBackend) has no files:
    /// [`Scrub::Unsupported`].
    ///
    /// # Errors
    /// [`DeviceError::Forked`] in a forked child; a store error (nothing is
    /// lost: the rows are as they were).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, store::Scrub};
    ///
    /// let dir = std::env::temp_dir().join(format!("samizdat-scrub-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let alice = Device::create(dir.join("alice.db"), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// alice.refill_prekeys(10, 20, SystemTime::now())?;
    /// assert_eq!(alice.scrub()?, Scrub::Done);
    /// # drop(alice);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn scrub(&self) -> Result<Scrub, DeviceError> {
        self.check_process()?;
        Ok(self.backend.scrub()?)
    }

    /// Checks the whole store for damage, changing nothing
    /// ([`Backend::check_integrity`]). Opening checks a SQLite store of at
    /// most 4 MiB whole; a larger one is checked page by page as calls read
    /// it, so that opening stays fast: call this in the background now and
    /// then (it reads every page: about 0.2 s for 100,000 sessions).
    ///
    /// # Errors
    /// [`StoreError::CorruptDatabase`] for a damaged store (recovery: restore
    /// a backup); [`DeviceError::Forked`]; a store error.
    pub fn check_integrity(&self) -> Result<(), DeviceError> {
        self.check_process()?;
        Ok(self.backend.check_integrity()?)
    }
}

impl<B: Backend> fmt::Debug for Device<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("address", &self.address)
            .field("identity", &self.identity.public_key())
            .finish_non_exhaustive()
    }
}

/// The encoding of `message`, in a buffer of exactly its length (it is never
/// reallocated, so no copy of a secret is left behind); the caller wraps it
/// in `Zeroizing` when it holds secrets.
fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.encoded_len());
    // Encoding into a Vec cannot run out of space.
    let _ = message.encode(&mut out);
    out
}
