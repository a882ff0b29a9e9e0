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
//! use samizdat::{address::Address, device::Device, store::MemoryBackend};
//!
//! let alice = Device::create_in(MemoryBackend::new(), &[1; 32], Address::new("alice", 1)?, 0)?;
//! let bob = Device::create_in(MemoryBackend::new(), &[2; 32], Address::new("bob", 1)?, 0)?;
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

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use prost::Message as _;
use samizdat_proto::storage;
use zeroize::{Zeroize, Zeroizing};

use crate::{
    DecodeError, PreKeyKind, SessionError,
    address::Address,
    fingerprint::SafetyNumber,
    keys::{IdentityKey, IdentityKeyPair, fixed},
    limits::MAX_WRITE_ATTEMPTS,
    prekeys::{ConsumedPreKeys, PreKeyBundle, PreKeyError, PreKeySet},
    session::{PendingDecrypt, SessionRecord},
    store::{Backend, Expected, KEY_CHECK_ROW, Sealer, SqliteBackend, StoreError, Table, Write},
    wire::MessageKind,
};

/// The row key of the identity and prekey rows (each table has one row).
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
    /// An argument is invalid (for example an empty user id).
    #[error("invalid argument: {0}")]
    InvalidArgument(DecodeError),
    /// This device was made in another process: this one is a child of
    /// `fork` that inherited it. Nothing was read or written; open the device
    /// again in this process.
    #[error("the device belongs to the process that opened it, not to this forked child")]
    Forked,
    /// A [`PendingMessage`] or [`PendingBatch`] made by another device was
    /// given to this one's commit. Nothing was written; commit it on the
    /// device that decrypted it.
    #[error("this pending decryption was made by another device")]
    ForeignPending,
}

/// A decrypted message waiting for [`Device::commit`].
///
/// It is bound to the device that made it, by that device's identity key:
/// the value every handle of one store shares (it is the store's identity
/// row) and that tells two devices apart (each identity comes from its own
/// random seed), public, and checked before anything is read. A pending
/// committed on another device is refused with [`DeviceError::ForeignPending`].
/// It is also bound to the session row it was made from (its sealed bytes):
/// any rewrite of that row since, through any handle, makes it stale. (A
/// copy of a store opened as a second store has the same identity; there the
/// row's sealed bytes decide, and a commit they allow is exactly the one the
/// original store would have made.)
pub struct PendingMessage {
    /// The identity key of the device that made it.
    device: IdentityKey,
    peer: Address,
    pending: PendingDecrypt,
    /// The session row as read (sealed; `None`: absent), and the record
    /// parsed from it. The commit requires the row to hold exactly these
    /// bytes still, and then applies the decryption to this record (it is
    /// not read and parsed again).
    loaded: Option<Vec<u8>>,
    record: SessionRecord,
}

impl PendingMessage {
    /// The plaintext.
    pub fn plaintext(&self) -> &[u8] {
        self.pending.plaintext()
    }

    /// The peer it came from (as the app named it).
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// The sender's identity key.
    pub fn sender_identity(&self) -> IdentityKey {
        self.pending.sender_identity()
    }
}

impl fmt::Debug for PendingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingMessage").field("peer", &self.peer).field("pending", &self.pending).finish()
    }
}

/// A peer's address, its session row as loaded (sealed; `None` if there was
/// none), and the record as changed.
type LoadedRecord = (Address, Option<Vec<u8>>, SessionRecord);

/// The prekey row as loaded (sealed), and the set it holds.
type LoadedPreKeys = (Vec<u8>, PreKeySet);

/// The result of [`Device::decrypt_batch`]: one result per message, in
/// order, and the changes to commit with [`Device::commit_batch`]. Bound to
/// its device and to the rows it read, as a [`PendingMessage`] is.
pub struct PendingBatch {
    /// The identity key of the device that made it.
    device: IdentityKey,
    results: Vec<Result<Vec<u8>, SessionError>>,
    /// Row key -> (peer, the row as loaded (sealed), the record after the batch).
    records: BTreeMap<Vec<u8>, LoadedRecord>,
    /// The prekey row as loaded (sealed) and the set after the batch, if a
    /// message consumed prekeys.
    prekeys: Option<LoadedPreKeys>,
}

impl PendingBatch {
    /// One result per message, in the order given: the plaintext, or why it
    /// did not decrypt (a failed message changes nothing).
    pub fn results(&self) -> &[Result<Vec<u8>, SessionError>] {
        &self.results
    }
}

impl Drop for PendingBatch {
    fn drop(&mut self) {
        // The plaintexts are handed out by reference only: wipe them here.
        for plaintext in self.results.iter_mut().flatten() {
            plaintext.zeroize();
        }
    }
}

impl fmt::Debug for PendingBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingBatch")
            .field("messages", &self.results.len())
            .field("peers", &self.records.len())
            .finish_non_exhaustive()
    }
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
pub struct Device<B: Backend = SqliteBackend> {
    backend: B,
    sealer: Sealer,
    identity: IdentityKeyPair,
    address: Address,
    peer_locks: Mutex<HashMap<Vec<u8>, Arc<Mutex<()>>>>,
    prekey_lock: Mutex<()>,
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
    let mut attempts = 1;
    loop {
        match attempt() {
            Err(DeviceError::Store(StoreError::Conflict { .. })) if attempts < MAX_WRITE_ATTEMPTS => attempts += 1,
            result => return result,
        }
    }
}

impl Device<SqliteBackend> {
    /// Creates a new device in a new SQLite database at `path`.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the database already holds a device;
    /// as [`SqliteBackend::open`].
    pub fn create(
        path: impl AsRef<Path>,
        storage_key: &[u8; 32],
        address: Address,
        now: u64,
    ) -> Result<Self, DeviceError> {
        Self::create_in(SqliteBackend::open(path)?, storage_key, address, now)
    }

    /// Opens the device in the SQLite database at `path`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it holds no device, [`StoreError::WrongKey`]
    /// for the wrong storage key (nothing is changed); as
    /// [`SqliteBackend::open`].
    pub fn open(path: impl AsRef<Path>, storage_key: &[u8; 32]) -> Result<Self, DeviceError> {
        Self::open_in(SqliteBackend::open(path)?, storage_key)
    }

    /// Opens the device at `path`, creating it first if the database holds none.
    ///
    /// # Errors
    /// As [`Self::open`] and [`Self::create`].
    pub fn open_or_create(
        path: impl AsRef<Path>,
        storage_key: &[u8; 32],
        address: Address,
        now: u64,
    ) -> Result<Self, DeviceError> {
        let backend = SqliteBackend::open(path)?;
        if backend.get(Table::Meta, KEY_CHECK_ROW)?.is_none() {
            let sealer = Sealer::new(storage_key);
            match retry_on_conflict(|| Self::create_rows(&backend, &sealer, &address, now)) {
                Ok(identity) => return Ok(Self::assemble(backend, sealer, identity, address)),
                // Another handle created it meanwhile: open that one.
                Err(DeviceError::Store(StoreError::AlreadyExists)) => {}
                Err(e) => return Err(e),
            }
        }
        Self::open_in(backend, storage_key)
    }
}

impl<B: Backend> Device<B> {
    /// Creates a new device (a fresh identity, a signed prekey and a
    /// last-resort ML-KEM prekey) in an empty backend, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the backend already holds a device
    /// (also when another handle created one meanwhile).
    pub fn create_in(backend: B, storage_key: &[u8; 32], address: Address, now: u64) -> Result<Self, DeviceError> {
        let sealer = Sealer::new(storage_key);
        let identity = retry_on_conflict(|| Self::create_rows(&backend, &sealer, &address, now))?;
        Ok(Self::assemble(backend, sealer, identity, address))
    }

    /// Writes a new device's rows into a backend that has none (each write
    /// conditional on its row being absent) and returns its identity.
    fn create_rows(backend: &B, sealer: &Sealer, address: &Address, now: u64) -> Result<IdentityKeyPair, DeviceError> {
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
        let prekeys_write = prekeys_write(sealer, &prekeys, Expected::Absent);
        backend.apply(&[sealer.key_check(&mut rng), identity_write, prekeys_write])?;
        Ok(identity)
    }

    /// Opens the device in `backend`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::WrongKey`] (nothing changed),
    /// or [`StoreError::Corrupt`].
    pub fn open_in(backend: B, storage_key: &[u8; 32]) -> Result<Self, DeviceError> {
        let sealer = Sealer::new(storage_key);
        let check = backend.get(Table::Meta, KEY_CHECK_ROW)?.ok_or(StoreError::NotFound)?;
        sealer.verify_key_check(&check)?;
        let sealed = backend.get(Table::Identity, SINGLE_ROW)?.ok_or(StoreError::Corrupt { table: Table::Identity })?;
        let bytes = sealer.open(Table::Identity, SINGLE_ROW, &sealed)?;
        let corrupt = || StoreError::Corrupt { table: Table::Identity };
        let row = Zeroizing::new(storage::IdentityRow::decode(bytes.as_slice()).map_err(|_| corrupt())?);
        let seed = Zeroizing::new(fixed::<32>(&row.seed, "seed").map_err(|_| corrupt())?);
        let address = Address::new(row.user_id.clone(), row.device_id).map_err(|_| corrupt())?;
        if row.version != ROW_VERSION {
            return Err(StoreError::Corrupt { table: Table::Identity }.into());
        }
        Ok(Self::assemble(backend, sealer, IdentityKeyPair::from_seed(&seed), address))
    }

    fn assemble(backend: B, sealer: Sealer, identity: IdentityKeyPair, address: Address) -> Self {
        Self {
            backend,
            sealer,
            identity,
            address,
            peer_locks: Mutex::new(HashMap::new()),
            prekey_lock: Mutex::new(()),
            pid: std::process::id(),
        }
    }

    /// Refuses every call that touches state in a forked child, before any
    /// lock or store access (a lock may have been held by another thread of
    /// the parent when it forked).
    fn check_process(&self) -> Result<(), DeviceError> {
        if std::process::id() == self.pid { Ok(()) } else { Err(DeviceError::Forked) }
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

    // ---- prekeys ----

    /// The prekey row as read (sealed) and the set it holds.
    fn load_prekeys(&self) -> Result<LoadedPreKeys, StoreError> {
        let sealed =
            self.backend.get(Table::PreKeys, SINGLE_ROW)?.ok_or(StoreError::Corrupt { table: Table::PreKeys })?;
        let bytes = self.sealer.open(Table::PreKeys, SINGLE_ROW, &sealed)?;
        let set = PreKeySet::from_bytes(&bytes).map_err(|_| StoreError::Corrupt { table: Table::PreKeys })?;
        Ok((sealed, set))
    }

    /// A bundle to upload: the current signed prekey, the lowest one-time
    /// prekeys, and an ML-KEM prekey (one-time, or the last-resort key).
    ///
    /// # Errors
    /// A store error.
    pub fn prekey_bundle(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(self.prekey_bundles(1)?.into_iter().next().unwrap_or_default())
    }

    /// Up to `count` bundles with distinct one-time prekeys, for a server to
    /// hand out one per requester. There are as many as there are one-time
    /// prekeys (of either kind), and at least one: when none is left, the one
    /// bundle offers only the signed and the last-resort keys.
    ///
    /// # Errors
    /// A store error.
    pub fn prekey_bundles(&self, count: usize) -> Result<Vec<Vec<u8>>, DeviceError> {
        self.check_process()?;
        let (_, prekeys) = self.load_prekeys()?;
        let (classic, pq) = prekeys.one_time_counts();
        Ok((0..count.min(classic.max(pq).max(1)))
            .filter_map(|n| prekeys.bundle_skipping(&self.identity, &self.address, n))
            .map(|bundle| bundle.to_bytes())
            .collect())
    }

    /// How many one-time prekeys are left: `(X25519, ML-KEM)`.
    ///
    /// # Errors
    /// A store error.
    pub fn prekey_counts(&self) -> Result<(usize, usize), DeviceError> {
        self.check_process()?;
        Ok(self.load_prekeys()?.1.one_time_counts())
    }

    /// If fewer than `threshold` one-time prekeys of either kind are left,
    /// adds prekeys of each kind until each has `target`; returns how many
    /// were added in all. Upload new bundles afterwards.
    ///
    /// # Errors
    /// [`PreKeyError::LimitReached`] if `target` is above
    /// [`MAX_ONE_TIME_PREKEYS`](crate::limits::MAX_ONE_TIME_PREKEYS); a store error.
    pub fn refill_prekeys(&self, threshold: usize, target: usize, now: u64) -> Result<usize, DeviceError> {
        self.check_process()?;
        let _guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let (loaded, mut prekeys) = self.load_prekeys()?;
            let (classic, pq) = prekeys.one_time_counts();
            if classic.min(pq) >= threshold {
                return Ok(0);
            }
            let (added_classic, added_pq) =
                prekeys.top_up_one_time_prekeys(&mut crate::os_rng(), &self.identity, target, now)?;
            if added_classic + added_pq > 0 {
                self.backend.apply(&[prekeys_write(&self.sealer, &prekeys, Expected::Value(loaded))])?;
            }
            Ok(added_classic + added_pq)
        })
    }

    /// Rotates the signed prekey and the last-resort ML-KEM prekey if they
    /// are older than `max_age` seconds at `now` (the app drives the clock
    /// and the schedule). Previous keys are kept a while for messages in flight.
    ///
    /// # Errors
    /// A store error.
    pub fn rotate_prekeys(&self, now: u64, max_age: u64) -> Result<Rotated, DeviceError> {
        self.check_process()?;
        let _guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let (loaded, mut prekeys) = self.load_prekeys()?;
            let (signed_at, last_resort_at) = prekeys.current_created_at();
            let due = |at: Option<u64>| at.is_none_or(|at| now.saturating_sub(at) >= max_age);
            let mut rng = crate::os_rng();
            let rotated = Rotated { signed_prekey: due(signed_at), last_resort_prekey: due(last_resort_at) };
            if rotated.signed_prekey {
                prekeys.rotate_signed_prekey(&mut rng, &self.identity, now)?;
            }
            if rotated.last_resort_prekey {
                prekeys.rotate_last_resort_prekey(&mut rng, &self.identity, now)?;
            }
            if rotated.signed_prekey || rotated.last_resort_prekey {
                self.backend.apply(&[prekeys_write(&self.sealer, &prekeys, Expected::Value(loaded))])?;
            }
            Ok(rotated)
        })
    }

    // ---- sessions ----

    fn peer_lock(&self, row: &[u8]) -> Arc<Mutex<()>> {
        lock(&self.peer_locks).entry(row.to_vec()).or_default().clone()
    }

    /// The session record of `row`, and the row as read (sealed; `None` if
    /// there is none, which is an empty record). Every rewrite of a row seals
    /// it with a fresh nonce, so the sealed bytes tell whether it changed.
    fn load_record(&self, row: &[u8]) -> Result<(Option<Vec<u8>>, SessionRecord), StoreError> {
        let corrupt = || StoreError::Corrupt { table: Table::Sessions };
        let Some(sealed) = self.backend.get(Table::Sessions, row)? else {
            return Ok((None, SessionRecord::new()));
        };
        let bytes = self.sealer.open(Table::Sessions, row, &sealed)?;
        let parsed = Zeroizing::new(storage::SessionRow::decode(bytes.as_slice()).map_err(|_| corrupt())?);
        if parsed.version != ROW_VERSION {
            return Err(corrupt());
        }
        let record = SessionRecord::from_bytes(&parsed.record).map_err(|_| corrupt())?;
        Ok((Some(sealed), record))
    }

    /// The write of a session row, conditional on the row holding `loaded`
    /// (the sealed bytes the call read; `None`: it must be absent).
    fn record_write(&self, row: &[u8], peer: &Address, record: &SessionRecord, loaded: Option<Vec<u8>>) -> Write {
        // The serialized record moves into the row (no copy), and the row and
        // its encoding are wiped on drop.
        let mut serialized = record.to_bytes();
        let session_row = Zeroizing::new(storage::SessionRow {
            version: ROW_VERSION,
            user_id: peer.user_id().to_owned(),
            device_id: peer.device_id(),
            record: std::mem::take(&mut *serialized),
        });
        let bytes = Zeroizing::new(encode(&*session_row));
        let value = self.sealer.seal(&mut crate::os_rng(), Table::Sessions, row, &bytes);
        Write { table: Table::Sessions, key: row.to_vec(), value: Some(value), expected: Expected::read(loaded) }
    }

    /// Starts a session from a peer's bundle (as its server sent it: it is
    /// parsed and verified here) and returns the peer's address. An identity
    /// is trusted on first use; a changed one is refused until
    /// [`Self::trust_identity`].
    ///
    /// # Errors
    /// [`SessionError::Bundle`] for a bad bundle,
    /// [`SessionError::UntrustedIdentity`], a store error.
    pub fn start_session(&self, bundle: &[u8]) -> Result<Address, DeviceError> {
        self.check_process()?;
        let bundle = PreKeyBundle::from_bytes(bundle).map_err(SessionError::from)?;
        let peer = bundle.address().clone();
        let row = self.sealer.address_key(&peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            let (loaded, mut record) = self.load_record(&row)?;
            record.initiate(&mut crate::os_rng(), &self.identity, &self.address, &bundle)?;
            self.backend.apply(&[self.record_write(&row, &peer, &record, loaded)])?;
            Ok(())
        })?;
        Ok(peer)
    }

    /// Whether there is a session with `peer`.
    ///
    /// # Errors
    /// A store error.
    pub fn has_session(&self, peer: &Address) -> Result<bool, DeviceError> {
        self.check_process()?;
        Ok(self.load_record(&self.sealer.address_key(peer))?.1.has_session())
    }

    /// The identity key trusted for `peer`, if any.
    ///
    /// # Errors
    /// A store error.
    pub fn peer_identity(&self, peer: &Address) -> Result<Option<IdentityKey>, DeviceError> {
        self.check_process()?;
        Ok(self.load_record(&self.sealer.address_key(peer))?.1.trusted_identity())
    }

    /// The safety number with `peer`, from the identity trusted for it.
    ///
    /// # Errors
    /// [`SessionError::NoSession`] if no identity is known for `peer`.
    pub fn safety_number(&self, peer: &Address) -> Result<SafetyNumber, DeviceError> {
        let identity = self.peer_identity(peer)?.ok_or(SessionError::NoSession)?;
        Ok(SafetyNumber::new(self.address.user_id(), &self.identity_key(), peer.user_id(), &identity))
    }

    /// The app's decision to trust `identity` for `peer` (after
    /// [`SessionError::UntrustedIdentity`]). Sessions with another identity
    /// are dropped; start a new one or wait for the peer's.
    ///
    /// # Errors
    /// A store error.
    pub fn trust_identity(&self, peer: &Address, identity: IdentityKey) -> Result<(), DeviceError> {
        self.check_process()?;
        let row = self.sealer.address_key(peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            let (loaded, mut record) = self.load_record(&row)?;
            record.trust_identity(identity);
            self.backend.apply(&[self.record_write(&row, peer, &record, loaded)])?;
            Ok(())
        })
    }

    /// Encrypts `plaintext` for `peer`. The advanced session is committed
    /// before the ciphertext is returned: if this returns an error, nothing
    /// was written and nothing may be sent.
    ///
    /// # Errors
    /// [`SessionError::NoSession`], [`SessionError::Encrypt`], a store error
    /// ([`StoreError::Conflict`] if other handles kept writing the session
    /// for [`MAX_WRITE_ATTEMPTS`] attempts).
    pub fn encrypt(&self, peer: &Address, plaintext: &[u8]) -> Result<Vec<u8>, DeviceError> {
        self.check_process()?;
        let row = self.sealer.address_key(peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            let (loaded, mut record) = self.load_record(&row)?;
            let ciphertext = record.encrypt(&mut crate::os_rng(), plaintext)?;
            // A ciphertext whose write is refused is dropped, never returned.
            self.backend.apply(&[self.record_write(&row, peer, &record, loaded)])?;
            Ok(ciphertext)
        })
    }

    /// Decrypts a message from `peer` (the sender as the app's transport
    /// names it) without changing anything: see [`PendingMessage`].
    ///
    /// # Errors
    /// [`SessionError::Decrypt`] (duplicate, forged, too far ahead),
    /// [`SessionError::UntrustedIdentity`], [`SessionError::UnknownPreKey`],
    /// [`SessionError::NoSession`], a store error.
    pub fn decrypt(&self, peer: &Address, ciphertext: &[u8]) -> Result<PendingMessage, DeviceError> {
        self.check_process()?;
        let row = self.sealer.address_key(peer);
        let (loaded, record) = self.load_record(&row)?;
        // Only a prekey message needs the prekeys: loading them (ML-KEM keys
        // are checked on load) costs milliseconds when many are held.
        let prekeys = match MessageKind::of(ciphertext).map_err(SessionError::from)? {
            MessageKind::PreKey => self.load_prekeys()?.1,
            MessageKind::Ratchet => PreKeySet::empty(),
        };
        let pending =
            record.decrypt(&mut crate::os_rng(), &self.identity, &self.address, peer, &prekeys, ciphertext)?;
        Ok(PendingMessage { device: self.identity.public_key(), peer: peer.clone(), pending, loaded, record })
    }

    /// Commits a decryption: the session advances and the prekeys it used
    /// are deleted, in one transaction. Call it after the plaintext is stored.
    ///
    /// The session row must still hold the sealed bytes the decryption read
    /// (any rewrite since, through any handle, makes the pending stale), and
    /// the write is conditional on it. The prekey write is conditional on the
    /// prekey row as this call read it; when another handle changed the
    /// prekeys meanwhile, they are read and checked again.
    ///
    /// # Errors
    /// [`DeviceError::ForeignPending`] if another device made it;
    /// [`SessionError::StalePending`] if the session changed since the
    /// decryption (decrypt again: the message was not consumed);
    /// [`SessionError::UnknownPreKey`] if another session consumed the same
    /// one-time prekey first; a store error (nothing written).
    pub fn commit(&self, message: PendingMessage) -> Result<(), DeviceError> {
        self.check_process()?;
        let PendingMessage { device, peer, pending, loaded, mut record } = message;
        if device != self.identity.public_key() {
            return Err(DeviceError::ForeignPending);
        }
        let row = self.sealer.address_key(&peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        // Checked first, so that a stale pending is reported as such rather
        // than by what the prekey checks make of it.
        if self.backend.get(Table::Sessions, &row)? != loaded {
            return Err(SessionError::StalePending.into());
        }
        let consumed = pending.consumed_prekeys();
        record.commit(pending)?;
        let session_write = self.record_write(&row, &peer, &record, loaded);
        if consumed.is_empty() {
            return self.backend.apply(&[session_write]).map_err(|e| stale_on_session_conflict(e.into()));
        }
        let _prekey_guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let (loaded_prekeys, mut prekeys) = self.load_prekeys()?;
            consume_checked(&mut prekeys, &consumed)?;
            let prekeys_write = prekeys_write(&self.sealer, &prekeys, Expected::Value(loaded_prekeys));
            // A conflict on the session row is final (stale); one on the
            // prekey row alone is retried with the prekeys read again.
            self.backend.apply(&[session_write.clone(), prekeys_write]).map_err(|e| stale_on_session_conflict(e.into()))
        })
    }

    /// Decrypts many queued messages (a device coming back online) and
    /// prepares one transaction for all of them; nothing is written until
    /// [`Self::commit_batch`]. Messages are processed in order, each seeing
    /// the sessions as the earlier ones left them.
    ///
    /// # Errors
    /// A store error; per-message failures are in [`PendingBatch::results`].
    pub fn decrypt_batch(&self, messages: &[(Address, Vec<u8>)]) -> Result<PendingBatch, DeviceError> {
        self.check_process()?;
        let mut rng = crate::os_rng();
        let mut records: BTreeMap<Vec<u8>, LoadedRecord> = BTreeMap::new();
        let (loaded_prekeys, mut prekeys) = self.load_prekeys()?;
        let mut prekeys_changed = false;
        let mut results = Vec::with_capacity(messages.len());
        for (peer, ciphertext) in messages {
            let row = self.sealer.address_key(peer);
            if !records.contains_key(&row) {
                let (loaded, record) = self.load_record(&row)?;
                records.insert(row.clone(), (peer.clone(), loaded, record));
            }
            let Some((_, _, record)) = records.get_mut(&row) else { continue };
            let result = record.decrypt(&mut rng, &self.identity, &self.address, peer, &prekeys, ciphertext).and_then(
                |pending| {
                    let plaintext = pending.plaintext().to_vec();
                    let consumed = pending.consumed_prekeys();
                    record.commit(pending)?;
                    if !consumed.is_empty() {
                        prekeys.consume(&consumed);
                        prekeys_changed = true;
                    }
                    Ok(plaintext)
                },
            );
            results.push(result);
        }
        Ok(PendingBatch {
            device: self.identity.public_key(),
            results,
            records,
            prekeys: prekeys_changed.then_some((loaded_prekeys, prekeys)),
        })
    }

    /// Commits a batch in one transaction, after the app stored the
    /// plaintexts. Every write is conditional on its row still holding the
    /// sealed bytes [`Self::decrypt_batch`] read.
    ///
    /// # Errors
    /// [`DeviceError::ForeignPending`] if another device made it;
    /// [`SessionError::StalePending`] if a session row or the prekey row was
    /// rewritten since [`Self::decrypt_batch`] (even with the same content;
    /// through any handle): nothing is written, decrypt the batch again; a
    /// store error (nothing written).
    pub fn commit_batch(&self, batch: PendingBatch) -> Result<(), DeviceError> {
        self.check_process()?;
        if batch.device != self.identity.public_key() {
            return Err(DeviceError::ForeignPending);
        }
        let locks: Vec<_> = batch.records.keys().map(|row| self.peer_lock(row)).collect();
        let _guards: Vec<_> = locks.iter().map(|l| lock(l)).collect();
        let _prekey_guard = lock(&self.prekey_lock);
        let mut writes = Vec::with_capacity(batch.records.len() + 1);
        for (row, (peer, loaded, record)) in &batch.records {
            writes.push(self.record_write(row, peer, record, loaded.clone()));
        }
        if let Some((loaded, prekeys)) = &batch.prekeys {
            writes.push(prekeys_write(&self.sealer, prekeys, Expected::Value(loaded.clone())));
        }
        match self.backend.apply(&writes) {
            Err(StoreError::Conflict { .. }) => Err(SessionError::StalePending.into()),
            result => Ok(result?),
        }
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

/// Deletes consumed prekeys, refusing if one is already gone (another session
/// used the same one-time key first).
fn consume_checked(prekeys: &mut PreKeySet, consumed: &ConsumedPreKeys) -> Result<(), SessionError> {
    if let Some(id) = consumed.one_time
        && !prekeys.has_one_time_prekey(id)
    {
        return Err(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, id });
    }
    if let Some(id) = consumed.pq_one_time
        && !prekeys.has_pq_one_time_prekey(id)
    {
        return Err(SessionError::UnknownPreKey { kind: PreKeyKind::Pq, id });
    }
    if let Some((spk, base_key)) = &consumed.base_key
        && prekeys.has_seen_base_key(*spk, base_key)
    {
        return Err(SessionError::DuplicatePreKeyMessage);
    }
    prekeys.consume(consumed);
    Ok(())
}

/// A commit's session write refused because the row changed: the pending
/// decryption is stale.
fn stale_on_session_conflict(error: DeviceError) -> DeviceError {
    match error {
        DeviceError::Store(StoreError::Conflict { table: Table::Sessions }) => SessionError::StalePending.into(),
        error => error,
    }
}

/// The write of the prekey row, conditional on `expected`.
fn prekeys_write(sealer: &Sealer, prekeys: &PreKeySet, expected: Expected) -> Write {
    let value = sealer.seal(&mut crate::os_rng(), Table::PreKeys, SINGLE_ROW, &prekeys.to_bytes());
    Write { table: Table::PreKeys, key: SINGLE_ROW.to_vec(), value: Some(value), expected }
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
