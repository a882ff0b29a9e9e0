//! Storage: a small byte-level [`Backend`] trait, and the sealing layer that
//! every backend shares.
//!
//! The unit of work is a transaction: a high-level call reads what it needs,
//! computes every change in memory, and hands the backend one batch of
//! [`Write`]s that it applies atomically ([`Backend::apply`]). Nothing is
//! written before everything succeeded. Each write carries a precondition
//! ([`Expected`]): the row must still hold what the call read. So however
//! many handles share a store (threads, processes, an app and its extension),
//! two calls can never both build on the same row: the second one's batch is
//! refused with [`StoreError::Conflict`], and it reads again.
//!
//! Encryption at rest is done here, above the backend, so every backend
//! gets it: each value is sealed with XChaCha20-Poly1305 under a key derived
//! from the app's 32-byte storage key, with the table and the row's key as
//! associated data (a sealed row moved to another row or table no longer
//! opens), and peer addresses are stored only as keyed hashes. The backends
//! see table names, hashed keys and sealed bytes, nothing else.
//!
//! Backends: [`MemoryBackend`] (tests, ephemeral devices) and
//! [`SqliteBackend`] (the default: WAL, `synchronous=FULL`, settings and a
//! scrub that leave no superseded row in the files past a bounded window
//! ([`Backend::scrub`]), a busy timeout, a versioned schema; any number of
//! handles and processes, through SQLite's own locks).

mod memory;
mod sqlite;
mod sqlite_create;
mod storage_key;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub use self::{
    memory::MemoryBackend,
    sqlite::{SCHEMA_VERSION, SqliteBackend},
    storage_key::{InvalidStorageKey, STORAGE_KEY_LEN, StorageKey},
};
use crate::{
    address::Address,
    kdf,
    keys::{Secret32, X25519PublicKey},
    padding,
};

/// The logical tables of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Table {
    /// Store metadata (the storage-key check value).
    Meta,
    /// The device's identity and address (one row).
    Identity,
    /// The device's prekeys: one row per key, an index row and the
    /// remembered base keys (PROTOCOL.md 14.7).
    PreKeys,
    /// One session record per peer device, keyed by the keyed hash of its
    /// address; beside it, its skipped keys' seeds and its outbox entries.
    Sessions,
    /// The index of each peer's outbox (PROTOCOL.md 20.3), keyed as the
    /// peer's session row: a table of its own so that the calls that visit
    /// every outbox read only the peers that have one.
    Outboxes,
    /// Groups: per group its roster and our sending chain, and per member
    /// the chains we keep of it, keyed by keyed hashes of the group id and
    /// the member's address (PROTOCOL.md 18.9).
    Groups,
    /// Users (PROTOCOL.md 23.5): this device's own signed device list (row
    /// `self`), and per peer user the newest list verified for it, keyed by
    /// the keyed hash of the user id (`Sealer::user_key`).
    Users,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 7] =
        [Table::Meta, Table::Identity, Table::PreKeys, Table::Sessions, Table::Groups, Table::Outboxes, Table::Users];

    /// The table's name (also its SQL table name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Identity => "identity",
            Self::PreKeys => "prekeys",
            Self::Sessions => "sessions",
            Self::Groups => "groups",
            Self::Outboxes => "outboxes",
            Self::Users => "users",
        }
    }
}

/// A row: its key and its (sealed) value.
pub type Row = (Vec<u8>, Vec<u8>);

/// What a [`Write`] requires its row to hold when the batch is applied.
/// Backends check it with [`Expected::holds`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// Nothing: the write applies whatever the row holds.
    Any,
    /// The row must not exist.
    Absent,
    /// The row must hold exactly these (sealed) bytes: those the call read.
    /// Every write seals with a fresh nonce, so any rewrite since the read,
    /// even of the same content, fails the comparison.
    Value(Vec<u8>),
}

impl Expected {
    /// The precondition that the row still holds what a read returned:
    /// [`Self::Value`] of it, or [`Self::Absent`] if there was none.
    pub fn read(value: Option<Vec<u8>>) -> Self {
        value.map_or(Self::Absent, Self::Value)
    }

    /// Whether a row holding `current` (`None`: absent) meets this precondition.
    pub fn holds(&self, current: Option<&[u8]>) -> bool {
        match self {
            Self::Any => true,
            Self::Absent => current.is_none(),
            Self::Value(value) => current == Some(value.as_slice()),
        }
    }
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("Any"),
            Self::Absent => f.write_str("Absent"),
            Self::Value(value) => f.debug_struct("Value").field("len", &value.len()).finish_non_exhaustive(),
        }
    }
}

/// One change of a batch: set `key` to `value`, or delete it (`None`), if
/// the row meets `expected`.
#[derive(Clone, PartialEq, Eq)]
pub struct Write {
    /// The table.
    pub table: Table,
    /// The row's key.
    pub key: Vec<u8>,
    /// The new (sealed) value, or `None` to delete the row.
    pub value: Option<Vec<u8>>,
    /// What the row must hold for the batch to apply.
    pub expected: Expected,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write")
            .field("table", &self.table)
            .field("value_len", &self.value.as_ref().map(Vec::len))
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// Why the store failed. A failed call changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage key does not open this store.
    #[error("wrong storage key")]
    WrongKey,
    /// Another connection (another handle or process, or a tool) held the
    /// database's lock for longer than the busy timeout (5 s). Nothing was
    /// written; try again.
    #[error("the store stayed locked by another connection")]
    Locked,
    /// No device exists in this store yet (open it with a create call).
    #[error("no device in this store")]
    NotFound,
    /// A device already exists in this store.
    #[error("a device already exists in this store")]
    AlreadyExists,
    /// The store's storage key was rotated (by another handle or process)
    /// after this handle opened it: nothing was written. Open the store
    /// again with the new key.
    #[error("the storage key was rotated since this handle opened the store")]
    KeyRotated,
    /// The store was written by a newer release.
    #[error("schema version {found} is newer than the supported {supported}")]
    SchemaTooNew {
        /// The schema version found.
        found: u32,
        /// The newest this release understands.
        supported: u32,
    },
    /// A row does not open or does not parse: the file was altered or damaged.
    #[error("corrupt row in table `{}`", .table.name())]
    Corrupt {
        /// The table.
        table: Table,
    },
    /// SQLite reported an error this enum has no variant for.
    #[error("sqlite: {0}")]
    Sqlite(SqliteError),
    /// The database file has more than one name (a hard link), or its path
    /// no longer names the file this handle opened (renamed, replaced or
    /// deleted since). SQLite finds the WAL and its index by the path, so two
    /// names of one file would not see each other's writes: refused, nothing
    /// written. Remove the extra link, or open the store by its new path.
    #[error("the database file has another name, or was moved")]
    MovedOrLinked,
    /// The store was opened in another process: this one is a child of
    /// `fork` that inherited it. Nothing was read or written; open the store
    /// again in this process.
    #[error("the store belongs to the process that opened it, not to this forked child")]
    Forked,
    /// The path names no database file: an empty path, SQLite's `:memory:`,
    /// or a `file:` URI. Nothing was opened or created. (An in-memory device
    /// is made on purpose, with a [`MemoryBackend`].)
    #[error("the path names no database file")]
    InvalidPath,
    /// The database file exists but is empty: the store was truncated, or
    /// its creation never completed. Nothing was created over it: delete the
    /// file to make a new device there, knowing any identity it held is gone.
    #[error("the database file is empty")]
    EmptyFile,
    /// SQLite's integrity check failed on open, or SQLite found the file
    /// malformed or not a database: the file was altered or damaged.
    #[error("the database file is damaged")]
    CorruptDatabase,
    /// The file system failed (finding the database file's identity).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A [`Backend`] of the app's failed in its own way (an I/O error of its
    /// storage, a closed connection). The backends of this crate never
    /// report it; the app's tests use it to inject failures at write points.
    #[error("backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A row of the batch no longer holds what the call read (its
    /// [`Write::expected`]): another handle on the same store wrote it first.
    /// Nothing was applied; read again and recompute.
    #[error("row of table `{}` changed since it was read", .table.name())]
    Conflict {
        /// The table of the first write, in batch order, whose precondition failed.
        table: Table,
    },
}

/// An error SQLite reported: its result code and message, without the
/// SQLite binding's own types (which are not part of this crate's API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteError {
    code: Option<i32>,
    message: String,
}

impl SqliteError {
    pub(crate) fn new(code: Option<i32>, message: String) -> Self {
        Self { code, message }
    }

    /// SQLite's extended result code (<https://sqlite.org/rescode.html>),
    /// when the error came from SQLite itself rather than from reading a
    /// value it returned.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// What went wrong, in SQLite's words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} (code {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqliteError {}

/// What [`Backend::scrub`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scrub {
    /// The backend's files hold no byte of a superseded row (an overwritten
    /// or deleted value) any more: the store was rewritten and its log
    /// emptied. Later writes may leave fragments again, until the next scrub.
    Done,
    /// Another connection kept the scrub from running (it held the write
    /// lock) or from finishing (a read transaction kept the rewritten pages
    /// from the database file) within the backend's short wait. Nothing was
    /// lost; the handle tries again after its next commits, and when it is
    /// dropped. Call again later to know it is done.
    Deferred,
    /// The backend does not scrub: [`MemoryBackend`] (it has no files), and
    /// any backend that keeps the trait's default.
    Unsupported,
}

/// A byte-level key-value store with atomic batches. Implement it to bring
/// your own storage; sealing, hashing and the protocol stay in this crate.
pub trait Backend: Send + Sync {
    /// Reads one row.
    ///
    /// # Errors
    /// A backend failure.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads every row of a table.
    ///
    /// # Errors
    /// A backend failure.
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError>;

    /// Up to `limit` rows of `table` whose keys come after `after` (from the
    /// first row if `None`), in increasing key order: a scan by pages, in
    /// memory bounded by the page. Calls that visit every row of a table
    /// (listing peers) use it.
    ///
    /// The default filters [`Self::scan`] (so each page costs a whole scan);
    /// both backends of this crate read only the page.
    ///
    /// # Errors
    /// A backend failure.
    fn scan_after(&self, table: Table, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, StoreError> {
        let mut rows = self.scan(table)?;
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows.into_iter().filter(|(key, _)| after.is_none_or(|after| key.as_slice() > after)).take(limit).collect())
    }

    /// Applies every write, or none: one transaction, durable when this
    /// returns `Ok`.
    ///
    /// The contract every backend must keep, atomically with respect to
    /// every other `apply` on the same store (through any handle, in any
    /// process): first check the precondition of every write
    /// ([`Write::expected`]) against the row as it is now, before anything
    /// of the batch is written; if one fails, apply nothing and return
    /// [`StoreError::Conflict`] naming the table of the first failing write
    /// in batch order; otherwise apply every write, in order. A backend that
    /// checks and writes in two steps without one lock or transaction around
    /// both breaks the guarantee that no message key is used twice.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if a precondition fails; a backend failure.
    /// Either way nothing was applied.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;

    /// Removes what the backend's files keep of superseded rows (values
    /// overwritten or deleted), without changing any row. Forward secrecy at
    /// rest depends on it: a superseded sealed value left in a file is opened
    /// by the storage key of a seized phone (PROTOCOL.md 16.6).
    ///
    /// [`SqliteBackend`] rewrites the database (`VACUUM`) and empties its log;
    /// it also scrubs by itself when opened (a store of at most 4 MiB) and
    /// after the commits that pass
    /// a budget of bytes written (PROTOCOL.md 14.8). The default does nothing
    /// and returns [`Scrub::Unsupported`]: right for a backend without files;
    /// a backend that has files should say what they keep.
    ///
    /// # Errors
    /// A backend failure; nothing was lost (the rows are as they were).
    fn scrub(&self) -> Result<Scrub, StoreError> {
        Ok(Scrub::Unsupported)
    }

    /// Checks the whole store for damage, changing nothing. The default (a
    /// backend without files, [`MemoryBackend`]) has nothing to check.
    /// [`SqliteBackend`] runs SQLite's `integrity_check` over every page (a
    /// store of at most 4 MiB is also checked when opened; a larger one page
    /// by page as its pages are read).
    ///
    /// # Errors
    /// [`StoreError::CorruptDatabase`] for a damaged store; a backend failure.
    fn check_integrity(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Rewrites every row of every table in one transaction, each to the
    /// value `rewrite(table, key, value)` returns (the storage-key rotation
    /// re-seals every row with it), then scrubs ([`Self::scrub`]) so that
    /// the files keep none of the old values. Either every row is rewritten
    /// or none: if `rewrite` fails for one row, nothing is written and its
    /// error is returned.
    ///
    /// The default scans every table, then applies one batch whose every
    /// write is conditional on its row still holding what the scan read
    /// (so it holds the store in memory twice, and another handle's change
    /// of a row it read makes it fail with [`StoreError::Conflict`]: try
    /// again). It is not atomic against another handle *inserting* a row
    /// between the scan and the batch: that row escapes the rewrite (under
    /// the old key, after a rotation). A backend that several handles share
    /// must override it with one transaction or lock around the whole, as
    /// both backends of this crate do: [`SqliteBackend`] streams the rows
    /// inside one write transaction, in memory bounded by a page of rows;
    /// [`MemoryBackend`] rewrites under its lock.
    ///
    /// # Errors
    /// The error of `rewrite`; [`StoreError::Conflict`]; a backend failure.
    /// Nothing was written. A scrub that fails after the rewrite committed
    /// is reported as [`Scrub::Deferred`], not as an error.
    fn rewrite_all(&self, rewrite: &mut Rewrite<'_>) -> Result<Scrub, StoreError> {
        let mut writes = Vec::new();
        for table in Table::ALL {
            for (key, value) in self.scan(table)? {
                let new = rewrite(table, &key, &value)?;
                writes.push(Write { table, key, value: Some(new), expected: Expected::Value(value) });
            }
        }
        self.apply(&writes)?;
        Ok(self.scrub().unwrap_or(Scrub::Deferred))
    }
}

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        (**self).scan(table)
    }
    fn scan_after(&self, table: Table, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, StoreError> {
        (**self).scan_after(table, after, limit)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        (**self).apply(writes)
    }
    fn scrub(&self) -> Result<Scrub, StoreError> {
        (**self).scrub()
    }
    fn check_integrity(&self) -> Result<(), StoreError> {
        (**self).check_integrity()
    }
    fn rewrite_all(&self, rewrite: &mut Rewrite<'_>) -> Result<Scrub, StoreError> {
        (**self).rewrite_all(rewrite)
    }
}

/// What [`Backend::rewrite_all`] applies to every row: `(table, key, value)`
/// to the row's new value.
pub type Rewrite<'a> = dyn FnMut(Table, &[u8], &[u8]) -> Result<Vec<u8>, StoreError> + 'a;

/// The version byte of a sealed value: its plaintext is padded (14.4).
const SEALED_VERSION: u8 = 2;
/// The version byte of a sealed value written before padding (release 0.1):
/// still read, never written.
const UNPADDED_SEALED_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// The plaintext of the storage-key check row.
const KEY_CHECK_PLAINTEXT: &[u8] = b"samizdat storage key check v1";
/// The plaintext of the storage-key check row of a store whose storage key
/// was rotated: this, then the binding of its naming keys
/// ([`Sealer::naming_binding`]), so that the naming-keys row cannot be
/// deleted or swapped for another store's (PROTOCOL.md 14.12).
const KEY_CHECK_NAMED_PREFIX: &[u8] = b"samizdat storage key check v2";
/// The key of the storage-key check row in [`Table::Meta`].
pub(crate) const KEY_CHECK_ROW: &[u8] = b"key-check";
/// The key of the naming-keys row in [`Table::Meta`]: the keys that name
/// rows (address, base-key, group and outbox hashes), kept sealed once the
/// storage key has been rotated (PROTOCOL.md 14.12). Absent: they derive
/// from the storage key.
pub(crate) const NAMING_KEYS_ROW: &[u8] = b"naming-keys";
/// The version byte of the naming-keys row's plaintext.
const NAMING_KEYS_VERSION: u8 = 1;
/// The length of the naming-keys row's plaintext: version and four keys.
const NAMING_KEYS_LEN: usize = 1 + 4 * 32;

/// Seals and opens rows, and hashes addresses, under keys derived from the
/// app's storage key. Both keys are [`Secret32`]s (boxed, wiped on drop); the
/// derivation's outputs are `Zeroizing` and wiped once copied in; the
/// plaintext [`Self::open`] returns is `Zeroizing`.
pub(crate) struct Sealer {
    seal_key: Secret32,
    address_key: Secret32,
    base_key_key: Secret32,
    group_key: Secret32,
    outbox_key: Secret32,
}

/// What a row of [`Table::Groups`] holds: the first byte hashed into its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupRowKind {
    /// The group's roster.
    Roster = 1,
    /// Our sending chain.
    OwnChain = 2,
    /// The chains of one member.
    Member = 3,
}

impl Sealer {
    /// Derives the sealing key, the address-hashing key and the
    /// base-key-hashing key from the storage key.
    pub(crate) fn new(storage_key: &[u8; 32]) -> Self {
        let seal = kdf::hkdf_expand::<32>(&[0; 32], storage_key, kdf::STORE_SEAL_LABEL);
        let address = kdf::hkdf_expand::<32>(&[0; 32], storage_key, kdf::STORE_ADDRESS_LABEL);
        let base_key = kdf::hkdf_expand::<32>(&[0; 32], storage_key, kdf::STORE_BASE_KEY_LABEL);
        let group = kdf::hkdf_expand::<32>(&[0; 32], storage_key, kdf::STORE_GROUP_LABEL);
        let outbox = kdf::hkdf_expand::<32>(&[0; 32], storage_key, kdf::STORE_OUTBOX_LABEL);
        Self {
            seal_key: Secret32::from_zeroizing(&seal),
            address_key: Secret32::from_zeroizing(&address),
            base_key_key: Secret32::from_zeroizing(&base_key),
            group_key: Secret32::from_zeroizing(&group),
            outbox_key: Secret32::from_zeroizing(&outbox),
        }
    }

    /// The sealer of a store: checks `storage_key` against the store's
    /// check row, and takes the naming keys from the naming-keys row if the
    /// store has one (its storage key was rotated, 14.12). Returns the
    /// sealer and the check row's sealed bytes as read (the guard of every
    /// later write, [`Self::guard`]).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the store has no check row,
    /// [`StoreError::WrongKey`], [`StoreError::Corrupt`] for a naming-keys
    /// row that does not open or parse; a backend failure.
    pub(crate) fn load<B: Backend + ?Sized>(
        backend: &B,
        storage_key: &[u8; 32],
    ) -> Result<(Self, Vec<u8>), StoreError> {
        let check = backend.get(Table::Meta, KEY_CHECK_ROW)?.ok_or(StoreError::NotFound)?;
        let mut sealer = Self::new(storage_key);
        let binding = sealer.verify_key_check(&check)?;
        let corrupt = || StoreError::Corrupt { table: Table::Meta };
        let naming = backend.get(Table::Meta, NAMING_KEYS_ROW)?;
        if binding.is_some() && naming.is_none() {
            // A rotated store without its naming keys: every row would be
            // named anew, and the store would seem empty.
            return Err(corrupt());
        }
        if let Some(sealed) = naming {
            let derived = binding.is_none().then(|| sealer.naming_keys());
            let opened = sealer.open(Table::Meta, NAMING_KEYS_ROW, &sealed)?;
            let (&version, keys) = opened.split_first().ok_or_else(corrupt)?;
            if version != NAMING_KEYS_VERSION || opened.len() != NAMING_KEYS_LEN {
                return Err(corrupt());
            }
            let mut chunks =
                keys.chunks_exact(32).map(|k| Secret32::from_slice(k, "naming key").map_err(|_| corrupt()));
            let mut next = || chunks.next().unwrap_or_else(|| Err(corrupt()));
            sealer.address_key = next()?;
            sealer.base_key_key = next()?;
            sealer.group_key = next()?;
            sealer.outbox_key = next()?;
            let bound = match (binding, derived) {
                // Rotated: the row must be the one the check row binds.
                (Some(binding), _) => bool::from(sealer.naming_binding().ct_eq(&binding)),
                // Not rotated yet (a rotation cut between its two steps):
                // the row must hold the keys the storage key derives.
                (None, Some(derived)) => bool::from(sealer.naming_keys().as_slice().ct_eq(derived.as_slice())),
                (None, None) => false,
            };
            if !bound {
                return Err(corrupt());
            }
        }
        Ok((sealer, check))
    }

    /// A sealer under `storage_key` that names rows as `self` does: the
    /// sealer of a store after its storage key was rotated to `storage_key`.
    pub(crate) fn rekeyed(&self, storage_key: &[u8; 32]) -> Self {
        let seal = kdf::hkdf_expand::<32>(&[0; 32], storage_key, kdf::STORE_SEAL_LABEL);
        Self {
            seal_key: Secret32::from_zeroizing(&seal),
            address_key: Secret32::new(*self.address_key.as_bytes()),
            base_key_key: Secret32::new(*self.base_key_key.as_bytes()),
            group_key: Secret32::new(*self.group_key.as_bytes()),
            outbox_key: Secret32::new(*self.outbox_key.as_bytes()),
        }
    }

    /// The naming-keys row's plaintext: `0x01 || address key || base-key
    /// key || group key || outbox key`.
    pub(crate) fn naming_keys(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(NAMING_KEYS_LEN));
        out.push(NAMING_KEYS_VERSION);
        for key in [&self.address_key, &self.base_key_key, &self.group_key, &self.outbox_key] {
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    /// The guard of a write batch: the check row, unchanged, on the
    /// condition that it still holds `check` (the bytes read when this
    /// sealer was loaded). A store whose storage key was rotated since has
    /// a new check row, so a handle still on the old key cannot write a row
    /// that the new key would not open: its batch is refused
    /// ([`StoreError::Conflict`] on [`Table::Meta`], the only table no
    /// other call writes). Backends need not rewrite a row with the bytes it
    /// holds ([`SqliteBackend`] does not).
    pub(crate) fn guard(check: &[u8]) -> Write {
        Write {
            table: Table::Meta,
            key: KEY_CHECK_ROW.to_vec(),
            value: Some(check.to_vec()),
            expected: Expected::Value(check.to_vec()),
        }
    }

    /// The sealing cipher, keyed from the boxed key without a copy on the
    /// stack (`Key::from(*bytes)` would leave one); the cipher wipes its own
    /// copy when dropped (`chacha20poly1305`'s `zeroize` feature).
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.seal_key.as_bytes().into())
    }

    fn associated_data(table: Table, key: &[u8]) -> Vec<u8> {
        let name = table.name().as_bytes();
        let name_len = u8::try_from(name.len()).unwrap_or(u8::MAX);
        [kdf::STORE_ROW_LABEL, &[name_len], name, key].concat()
    }

    /// `0x01 || nonce (24) || XChaCha20-Poly1305(plaintext, AD = label || len(table) || table || key)`.
    pub(crate) fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        table: Table,
        key: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let cipher = self.cipher();
        let ad = Self::associated_data(table, key);
        // Padded to a size class first, so that a sealed value's length says
        // little about what it holds (14.4).
        let padded = padding::pad_row(plaintext, 0);
        let sealed =
            cipher.encrypt(&XNonce::from(nonce), Payload { msg: padded.as_slice(), aad: &ad }).unwrap_or_default();
        [&[SEALED_VERSION][..], &nonce, &sealed].concat()
    }

    /// Opens a sealed row; [`StoreError::Corrupt`] if it does not authenticate at this place.
    pub(crate) fn open(&self, table: Table, key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let corrupt = || StoreError::Corrupt { table };
        let (&version, rest) = sealed.split_first().ok_or_else(corrupt)?;
        if !(version == SEALED_VERSION || version == UNPADDED_SEALED_VERSION) || rest.len() < NONCE_LEN + 16 {
            return Err(corrupt());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
        let cipher = self.cipher();
        let ad = Self::associated_data(table, key);
        let mut opened = cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: body, aad: &ad })
            .map(Zeroizing::new)
            .map_err(|_| corrupt())?;
        if version == SEALED_VERSION {
            let len = padding::unpadded_row_len(&opened).ok_or_else(corrupt)?;
            opened.truncate(len);
        }
        Ok(opened)
    }

    /// The row key of a peer: `HMAC-SHA256(address key, u32(len(user id)) || user id || u32(device id))`.
    pub(crate) fn address_key(&self, address: &Address) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(self.address_key.as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        let user = address.user_id().as_bytes();
        mac.update(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(user);
        mac.update(&address.device_id().to_be_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The row key of a peer user in [`Table::Users`]: `HMAC-SHA256(address
    /// key, u32(len(user id)) || user id)`. (An address's input has four more
    /// bytes after the same prefix, so the two never share an input; they
    /// are in different tables anyway.)
    pub(crate) fn user_key(&self, user_id: &str) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(self.address_key.as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        let user = user_id.as_bytes();
        mac.update(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(user);
        mac.finalize().into_bytes().to_vec()
    }

    /// The key of a row of [`Table::Groups`]: `HMAC-SHA256(group key, kind ||
    /// u8(len(group id)) || group id [|| u32(len(user id)) || user id ||
    /// u32(device id)])`, the address only for a member's row.
    pub(crate) fn group_row_key(&self, kind: GroupRowKind, group_id: &[u8], member: Option<&Address>) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(self.group_key.as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(&[kind as u8, u8::try_from(group_id.len()).unwrap_or(u8::MAX)]);
        mac.update(group_id);
        if let Some(member) = member {
            let user = member.user_id().as_bytes();
            mac.update(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
            mac.update(user);
            mac.update(&member.device_id().to_be_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The keyed hash of a remembered base key and the id of the signed
    /// prekey its handshake used: `HMAC-SHA256(base key key, u32be(spk id) || EK_A)`.
    pub(crate) fn base_key_hash(&self, signed_prekey_id: u32, base_key: &X25519PublicKey) -> [u8; 32] {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(self.base_key_key.as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(&signed_prekey_id.to_be_bytes());
        mac.update(base_key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The keyed hash of a message id in the row key of its outbox entry:
    /// `HMAC-SHA256(outbox key, id)`, so that a copy of the store without
    /// the storage key does not tell which ciphertexts it kept.
    pub(crate) fn outbox_id_hash(&self, id: &[u8]) -> [u8; 32] {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(self.outbox_key.as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(id);
        mac.finalize().into_bytes().into()
    }

    /// The sealed check value written when a store is created (only into a
    /// store that has none).
    pub(crate) fn key_check<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Write {
        Write {
            table: Table::Meta,
            key: KEY_CHECK_ROW.to_vec(),
            value: Some(self.seal(rng, Table::Meta, KEY_CHECK_ROW, KEY_CHECK_PLAINTEXT)),
            expected: Expected::Absent,
        }
    }

    /// Checks the storage key against a store's check value; returns the
    /// binding of the naming keys it carries (a rotated store), if any.
    pub(crate) fn verify_key_check(&self, sealed: &[u8]) -> Result<Option<[u8; 32]>, StoreError> {
        let opened = self.open(Table::Meta, KEY_CHECK_ROW, sealed).map_err(|_| StoreError::WrongKey)?;
        if bool::from(opened.as_slice().ct_eq(KEY_CHECK_PLAINTEXT)) {
            return Ok(None);
        }
        match opened.split_at_checked(KEY_CHECK_NAMED_PREFIX.len()) {
            Some((prefix, binding)) if bool::from(prefix.ct_eq(KEY_CHECK_NAMED_PREFIX)) => {
                <[u8; 32]>::try_from(binding).map(Some).map_err(|_| StoreError::WrongKey)
            }
            _ => Err(StoreError::WrongKey),
        }
    }

    /// The binding of this sealer's naming keys in the check row of a
    /// rotated store: `SHA-256(NAMING_BINDING_LABEL || NamingKeys)`.
    pub(crate) fn naming_binding(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut hash = Sha256::new();
        hash.update(kdf::STORE_NAMING_LABEL);
        hash.update(self.naming_keys().as_slice());
        hash.finalize().into()
    }

    /// The check row's plaintext for a store rotated to this sealer:
    /// [`KEY_CHECK_NAMED_PREFIX`] and the binding of its naming keys.
    pub(crate) fn named_key_check(&self) -> Vec<u8> {
        [KEY_CHECK_NAMED_PREFIX, &self.naming_binding()].concat()
    }
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn values_sealed_before_padding_still_open_and_padding_is_checked() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let sealer = Sealer::new(&[7; 32]);
        // Release 0.1's format: version 1, the plaintext sealed as it is.
        let ad = Sealer::associated_data(Table::Sessions, b"row");
        let nonce = [9u8; NONCE_LEN];
        let body = sealer.cipher().encrypt(&XNonce::from(nonce), Payload { msg: b"old row", aad: &ad }).unwrap();
        let old = [&[UNPADDED_SEALED_VERSION][..], &nonce, &body].concat();
        assert_eq!(sealer.open(Table::Sessions, b"row", &old).unwrap().as_slice(), b"old row");
        // Now: padded to a bucket, and a padding that does not verify is corrupt.
        let sealed = sealer.seal(&mut rng, Table::Sessions, b"row", b"new row");
        assert_eq!(sealed.len(), 1 + NONCE_LEN + padding::MIN_ROW_BUCKET + 16);
        assert_eq!(sealer.open(Table::Sessions, b"row", &sealed).unwrap().as_slice(), b"new row");
        let bad = sealer
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: &[0u8; padding::MIN_ROW_BUCKET], aad: &ad })
            .unwrap();
        let bad = [&[SEALED_VERSION][..], &nonce, &bad].concat();
        assert!(matches!(sealer.open(Table::Sessions, b"row", &bad), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn rows_open_only_where_they_were_sealed() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal(&mut rng, Table::Sessions, b"row-a", b"secret state");
        assert_eq!(sealer.open(Table::Sessions, b"row-a", &sealed).unwrap().as_slice(), b"secret state");
        assert!(matches!(sealer.open(Table::Sessions, b"row-b", &sealed), Err(StoreError::Corrupt { .. })));
        assert!(matches!(sealer.open(Table::PreKeys, b"row-a", &sealed), Err(StoreError::Corrupt { .. })));
        assert!(Sealer::new(&[8; 32]).open(Table::Sessions, b"row-a", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(sealer.open(Table::Sessions, b"row-a", &bad).is_err());
        }
        assert!(sealer.open(Table::Sessions, b"row-a", &sealed[..20]).is_err());
    }

    /// The contract of `apply`: every precondition checked before anything
    /// is written; a failed one applies nothing and names its table.
    fn conditional_batches(backend: &dyn Backend) {
        let write = |table, key: &[u8], value: Option<&[u8]>, expected| Write {
            table,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            expected,
        };
        let all = |backend: &dyn Backend| Table::ALL.iter().map(|&t| backend.scan(t).unwrap()).collect::<Vec<_>>();
        backend.apply(&[write(Table::Sessions, b"a", Some(b"1"), Expected::Absent)]).unwrap();
        // A row that exists is not absent; a value that differs does not hold.
        let before = all(backend);
        for expected in [Expected::Absent, Expected::Value(b"2".to_vec()), Expected::Value(b"".to_vec())] {
            let result = backend.apply(&[write(Table::Sessions, b"a", Some(b"x"), expected)]);
            assert!(matches!(result, Err(StoreError::Conflict { table: Table::Sessions })));
        }
        // An absent row holds no value.
        let result = backend.apply(&[write(Table::PreKeys, b"p", Some(b"x"), Expected::Value(b"1".to_vec()))]);
        assert!(matches!(result, Err(StoreError::Conflict { table: Table::PreKeys })));
        // The last write's precondition fails: the first, met, is not applied either.
        let result = backend.apply(&[
            write(Table::Sessions, b"a", Some(b"2"), Expected::Value(b"1".to_vec())),
            write(Table::Sessions, b"b", None, Expected::Any),
            write(Table::PreKeys, b"p", Some(b"x"), Expected::Value(b"0".to_vec())),
        ]);
        assert!(matches!(result, Err(StoreError::Conflict { table: Table::PreKeys })));
        // The first failing write in batch order is the one named.
        let result = backend.apply(&[
            write(Table::Identity, b"self", Some(b"i"), Expected::Value(b"0".to_vec())),
            write(Table::PreKeys, b"p", Some(b"x"), Expected::Value(b"0".to_vec())),
        ]);
        assert!(matches!(result, Err(StoreError::Conflict { table: Table::Identity })));
        assert_eq!(all(backend), before, "a refused batch changed nothing");
        // Met preconditions apply, in order; a delete may be conditional too.
        backend
            .apply(&[
                write(Table::Sessions, b"a", Some(b"2"), Expected::Value(b"1".to_vec())),
                write(Table::PreKeys, b"p", Some(b"x"), Expected::Absent),
                write(Table::Sessions, b"c", Some(b"3"), Expected::Any),
            ])
            .unwrap();
        backend.apply(&[write(Table::Sessions, b"c", None, Expected::Value(b"3".to_vec()))]).unwrap();
        assert_eq!(backend.get(Table::Sessions, b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(backend.get(Table::PreKeys, b"p").unwrap(), Some(b"x".to_vec()));
        assert_eq!(backend.get(Table::Sessions, b"c").unwrap(), None);
    }

    /// `scan_after` pages through a table in key order, other tables apart.
    fn paged_scans(backend: &dyn Backend) {
        let rows: Vec<Write> = (0u8..10)
            .map(|i| Write {
                table: Table::Sessions,
                key: vec![i; 3],
                value: Some(vec![i]),
                expected: Expected::Absent,
            })
            .chain([Write { table: Table::PreKeys, key: vec![5], value: Some(vec![0]), expected: Expected::Absent }])
            .collect();
        backend.apply(&rows).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = backend.scan_after(Table::Sessions, after.as_deref(), 3).unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            seen.extend(page);
        }
        assert_eq!(seen, (0u8..10).map(|i| (vec![i; 3], vec![i])).collect::<Vec<_>>());
        assert_eq!(backend.scan_after(Table::PreKeys, None, 5).unwrap(), vec![(vec![5], vec![0])]);
        assert!(backend.scan_after(Table::Groups, None, 5).unwrap().is_empty());
        assert!(backend.scan_after(Table::Sessions, Some(&[9, 9, 9]), 5).unwrap().is_empty());
    }

    /// A backend that keeps the trait's defaults.
    struct Defaults(MemoryBackend);

    impl Backend for Defaults {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(table, key)
        }
        fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
            self.0.scan(table)
        }
        fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
            self.0.apply(writes)
        }
    }

    #[test]
    fn paged_scans_on_every_backend() {
        paged_scans(&MemoryBackend::new());
        paged_scans(&Defaults(MemoryBackend::new()));
        let dir = std::env::temp_dir().join(format!("samizdat-paged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        paged_scans(&SqliteBackend::open(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conditional_batches_in_memory() {
        conditional_batches(&MemoryBackend::new());
    }

    #[test]
    fn conditional_batches_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("samizdat-conditional-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        conditional_batches(&SqliteBackend::open(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_check_and_address_hashes() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let sealer = Sealer::new(&[7; 32]);
        let check = sealer.key_check(&mut rng).value.unwrap();
        assert!(sealer.verify_key_check(&check).is_ok());
        assert!(matches!(Sealer::new(&[9; 32]).verify_key_check(&check), Err(StoreError::WrongKey)));
        let a = sealer.address_key(&Address::new("alice", 1).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, sealer.address_key(&Address::new("alice", 2).unwrap()));
        assert_ne!(a, Sealer::new(&[9; 32]).address_key(&Address::new("alice", 1).unwrap()));
        assert!(!a.windows(5).any(|w| w == b"alice"));
    }

    /// The known answers of PROTOCOL.md 14.3 and 14.7.
    #[test]
    fn base_key_hashes_known_answer() {
        let sealer = Sealer::new(&[7; 32]);
        assert_eq!(
            hex::encode(sealer.base_key_key.as_bytes()),
            "b1bda8634f0813715a72ff16c6e71a3abadc9959a2a56675fd1e4b0aef75bf4b"
        );
        let base_key = X25519PublicKey::from_bytes([9; 32]);
        assert_eq!(
            hex::encode(sealer.base_key_hash(1, &base_key)),
            "a1719a3baeed64d241055959a957c9f5d546251954469af313c20b4b3bc5a0d2"
        );
        assert_ne!(sealer.base_key_hash(2, &base_key), sealer.base_key_hash(1, &base_key));
        assert_ne!(Sealer::new(&[8; 32]).base_key_hash(1, &base_key), sealer.base_key_hash(1, &base_key));
    }
}
