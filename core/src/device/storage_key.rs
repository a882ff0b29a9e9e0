//! Storage-key rotation: every row re-sealed under a new storage key, in one
//! transaction (PROTOCOL.md 14.12).
//!
//! Why rotate: the store's files, the file system's freed blocks and flash
//! wear-levelling may keep old sealed rows that no scrub reaches (14.8). Once
//! the store is re-sealed under a new key and the old key is destroyed in the
//! platform keystore, nothing the blocks kept can be opened any more.
//!
//! The rows keep their keys: a row's key is a keyed hash (of an address, a
//! group id, a base key, a message id) whose preimage the store does not
//! always keep (a remembered base key is kept only as its hash), so the keys
//! that name rows cannot change. At the first rotation they are written,
//! sealed, into the naming-keys row of [`Table::Meta`], and from then on a
//! store's naming keys come from that row, its sealing key from the current
//! storage key. The naming keys only name rows; they open none.

use std::path::Path;

use super::{Device, DeviceError, retry_on_conflict};
use crate::store::{
    Backend, Expected, KEY_CHECK_ROW, NAMING_KEYS_ROW, Scrub, Sealer, SqliteBackend, StorageKey, StoreError, Table,
    Write,
};

impl Device<SqliteBackend> {
    /// Re-seals every row of the store at `path` under `new_key`, in one
    /// transaction, then scrubs its files: see [`Device::rotate_storage_key_in`].
    ///
    /// # Errors
    /// As [`Device::rotate_storage_key_in`] and [`SqliteBackend::open`]
    /// ([`StoreError::NotFound`] if the file holds no device).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// use samizdat::{address::Address, device::Device, store::{Scrub, StorageKey}};
    ///
    /// let dir = std::env::temp_dir().join(format!("samizdat-rotate-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("alice.db");
    /// let (old_key, new_key) = (StorageKey::generate(), StorageKey::generate());
    /// drop(Device::create(&path, &old_key, Address::new("alice", 1)?, SystemTime::now())?);
    ///
    /// // The app keeps both keys in its keystore until the call returns.
    /// assert_eq!(Device::rotate_storage_key(&path, &old_key, &new_key)?, Scrub::Done);
    /// // Now only the new key opens the store: the old one can be destroyed.
    /// assert!(Device::open(&path, &old_key).is_err());
    /// let alice = Device::open(&path, &new_key)?;
    /// assert_eq!(alice.address().user_id(), "alice");
    /// # drop(alice);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rotate_storage_key(
        path: impl AsRef<Path>,
        old_key: &StorageKey,
        new_key: &StorageKey,
    ) -> Result<Scrub, DeviceError> {
        let backend = SqliteBackend::open_existing(path)?;
        Self::rotate_storage_key_in(&backend, old_key, new_key)
    }
}

impl<B: Backend> Device<B> {
    /// Re-seals every row of the store in `backend` under `new_key`, in one
    /// transaction ([`Backend::rewrite_all`]), then scrubs the backend's
    /// files so that they keep no row sealed under `old_key`
    /// ([`Scrub::Done`]; [`Scrub::Deferred`] if another connection kept the
    /// scrub from running: the store tries again after its next commits).
    ///
    /// A crash or a failure midway leaves the store as it was, under
    /// `old_key`. So the app keeps both keys in its keystore until this
    /// returns, and on start opens with the new key first, then the old one;
    /// after it returns, the old key is destroyed.
    ///
    /// Other handles on the store (threads, processes, an app extension)
    /// that were opened with `old_key` write nothing after the rotation:
    /// their writes fail with [`StoreError::KeyRotated`] (every write of a
    /// device is conditional on the store's check row, which the rotation
    /// re-seals), and so do their reads of session and group rows (a
    /// prekey row that no longer opens is [`StoreError::Corrupt`]). The
    /// codes are `wrong_storage_key` and `store_failure`, whose recovery is
    /// to open the store again, with the new key. Close them
    /// first where you can: the rotation holds the database's write lock
    /// while it runs, and their calls wait for it.
    ///
    /// # Errors
    /// [`StoreError::WrongKey`] if `old_key` does not open the store (or
    /// another handle rotated it first); [`StoreError::NotFound`] if it
    /// holds no device; [`StoreError::Corrupt`] if a row does not open
    /// under `old_key` (nothing is rotated: a store with a damaged row is
    /// not re-sealed around it); a backend failure. Nothing was changed.
    pub fn rotate_storage_key_in(
        backend: &B,
        old_key: &StorageKey,
        new_key: &StorageKey,
    ) -> Result<Scrub, DeviceError> {
        let mut rng = crate::os_rng();
        // First, the fence, under the old key: the check row re-sealed
        // (fresh nonce, same plaintext), and the naming keys written if the
        // store has none yet. Every handle opened before now has its next
        // batch refused by its guard (`KeyRotated`), so none can insert a
        // row under the old key while the rows are read and re-sealed (which
        // a backend's default `rewrite_all` could otherwise miss). A crash
        // after this changes nothing: the naming keys are those the old key
        // derives (PROTOCOL.md 14.12).
        let old = retry_on_conflict(|| {
            let (old, check) = Sealer::load(backend, old_key.as_bytes())?;
            let plaintext = old.open(Table::Meta, KEY_CHECK_ROW, &check)?;
            let mut fence = vec![Write {
                table: Table::Meta,
                key: KEY_CHECK_ROW.to_vec(),
                value: Some(old.seal(&mut rng, Table::Meta, KEY_CHECK_ROW, &plaintext)),
                expected: Expected::Value(check),
            }];
            if backend.get(Table::Meta, NAMING_KEYS_ROW)?.is_none() {
                let naming = old.naming_keys();
                fence.push(Write {
                    table: Table::Meta,
                    key: NAMING_KEYS_ROW.to_vec(),
                    value: Some(old.seal(&mut rng, Table::Meta, NAMING_KEYS_ROW, &naming)),
                    expected: Expected::Absent,
                });
            }
            backend.apply(&fence)?;
            Ok(old)
        })?;
        let new = old.rekeyed(new_key.as_bytes());
        // The check row of a rotated store binds its naming keys.
        let new_check = new.named_key_check();
        retry_on_conflict(|| {
            Ok(backend.rewrite_all(&mut |table, key, value| {
                let opened = old.open(table, key, value).map_err(|e| {
                    // The check row no longer opens: another handle rotated
                    // the store since it was read.
                    if table == Table::Meta && key == KEY_CHECK_ROW { StoreError::WrongKey } else { e }
                })?;
                if table == Table::Meta && key == KEY_CHECK_ROW {
                    return Ok(new.seal(&mut rng, table, key, &new_check));
                }
                Ok(new.seal(&mut rng, table, key, &opened))
            })?)
        })
    }
}
