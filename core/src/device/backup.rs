//! Encrypted backup and restore of a device's identity and trust decisions
//! (PROTOCOL.md 21): the device calls over [`crate::backup`].
//!
//! A backup carries no session state: the restored device has the identity,
//! the address and, for each peer it trusted, a record holding only that
//! trust decision, with new prekeys. Its conversations heal (PROTOCOL.md
//! 20): a peer's message on the old session is `out_of_step`, the app heals,
//! and the peer sends again what its outbox holds.

use std::{path::Path, time::SystemTime};

use rand_core::Rng;
use samizdat_proto::storage;
use zeroize::Zeroizing;

use crate::{
    address::Address,
    backup::{self, BackupContents, BackupError, BackupParams},
    keys::IdentityKey,
    prekeys::PreKeySet,
    session::SessionRecord,
    store::{Backend, Expected, KEY_CHECK_ROW, Sealer, SqliteBackend, StorageKey, StoreError, Table, Write},
};

use super::{Device, DeviceError, ROW_VERSION, SINGLE_ROW, encode, prekeys::set_rows, retry_on_conflict};

impl<B: Backend> Device<B> {
    /// Exports an encrypted backup of this device's identity and trust
    /// decisions, sealed under a key derived from `passphrase` with Argon2id
    /// (`params`; [`BackupParams::default()`] is 64 MiB and 3 passes: 155 ms
    /// on the project's 2-core machine in a release build, more on a phone). `now` is the app's clock, recorded as the
    /// backup's creation time.
    ///
    /// The backup holds the identity seed, this device's address and, for
    /// every peer device whose identity key this device trusts, its address
    /// and that key: what a new installation needs to be this device and to
    /// keep refusing the identities this one would refuse. It holds no
    /// session, prekey, outbox or group: after [`Device::restore`] the
    /// sessions heal (PROTOCOL.md 20), and the app makes its groups again.
    /// The passphrase's bytes are used as given: normalize them (Unicode NFC,
    /// say) the same way at export and at restore.
    ///
    /// The session rows are read by pages of 256 (memory bounded by a page,
    /// whatever the number of peers: a trust decision changed during the
    /// export is in the file as it was before or after the change), and the
    /// identity is the one this handle holds. Nothing is written.
    ///
    /// # Errors
    /// [`BackupError::ParamsOutOfBounds`] for parameters below
    /// [`BackupParams::MINIMUM`] or above the bounds of
    /// [`crate::limits`] (before anything is read);
    /// [`BackupError::TooManyPeers`]; [`BackupError::OutOfMemory`]; a store
    /// error ([`StoreError::Corrupt`] for a session row that does not load).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::{Duration, UNIX_EPOCH};
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::{BackupParams, Device}, store::MemoryBackend, ErrorKind};
    ///
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, UNIX_EPOCH)?;
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, UNIX_EPOCH)?;
    /// alice.start_session(&bob.prekey_bundle()?)?;
    ///
    /// // The weakest parameters an export takes, to keep the example fast;
    /// // an app uses the default (64 MiB, 3 passes).
    /// let file = alice.export_backup(b"correct horse battery staple", BackupParams::MINIMUM, UNIX_EPOCH + Duration::from_secs(1_700_000_000))?;
    ///
    /// // Alice's phone is lost: a new installation, a new store and storage key.
    /// let wrong = Device::restore_in(MemoryBackend::new(), &StorageKey::from_bytes([3; 32]), &file, b"Tr0ub4dor&3", UNIX_EPOCH + Duration::from_secs(1_700_000_100));
    /// assert_eq!(wrong.unwrap_err().kind(), ErrorKind::WrongStorageKey);
    /// let restored = Device::restore_in(MemoryBackend::new(), &StorageKey::from_bytes([3; 32]), &file, b"correct horse battery staple", UNIX_EPOCH + Duration::from_secs(1_700_000_100))?;
    /// assert_eq!(restored.identity_key(), alice.identity_key());
    /// assert_eq!(restored.peer_identity(bob.address())?, Some(bob.identity_key()));
    /// assert!(!restored.has_session(bob.address())?); // it heals: PROTOCOL.md 20
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export_backup(
        &self,
        passphrase: &[u8],
        params: BackupParams,
        now: SystemTime,
    ) -> Result<Vec<u8>, DeviceError> {
        self.check_process()?;
        params.check_export()?;
        let peers = self.trusted_peers()?;
        let (own_device_list, users) = self.user_rows()?;
        if users.len() > crate::limits::MAX_BACKUP_PEERS {
            return Err(BackupError::TooManyPeers { count: users.len(), max: crate::limits::MAX_BACKUP_PEERS }.into());
        }
        let contents = BackupContents {
            seed: self.identity.to_seed(),
            address: self.address.clone(),
            created_at: crate::clock::unix_seconds(now),
            peers,
            own_device_list,
            users,
        };
        Ok(backup::seal(&mut crate::os_rng(), passphrase, params, &contents)?)
    }

    /// Every peer whose record trusts an identity key, in increasing address
    /// order, from table `sessions` read by pages of 256 rows (memory bounded
    /// by a page and the list, whatever the number of peers; a trust
    /// decision changed meanwhile is in the backup as it was before or after
    /// the change).
    fn trusted_peers(&self) -> Result<Vec<(Address, IdentityKey)>, DeviceError> {
        let mut peers = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.backend.scan_after(Table::Sessions, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            // Session rows are keyed by the 32-byte keyed hash of the
            // address; the seeds and outbox entry rows beside them are longer.
            self.trusted_in(page.into_iter().filter(|(key, _)| key.len() == 32), &mut peers)?;
        }
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(peers)
    }

    /// Adds the trust decisions of the session rows `rows` to `peers`.
    fn trusted_in(
        &self,
        rows: impl Iterator<Item = crate::store::Row>,
        peers: &mut Vec<(Address, IdentityKey)>,
    ) -> Result<(), DeviceError> {
        let corrupt = || StoreError::Corrupt { table: Table::Sessions };
        for (key, sealed) in rows {
            let bytes = self.open_sealed(Table::Sessions, &key, &sealed)?;
            let row = crate::codec::decode_secret::<storage::SessionRow>(bytes.as_slice()).map_err(|_| corrupt())?;
            if row.version != ROW_VERSION {
                return Err(corrupt().into());
            }
            let address = Address::new(row.user_id.clone(), row.device_id).map_err(|_| corrupt())?;
            // The address the row names is the one its key hashes.
            if self.sealer.address_key(&address) != key {
                return Err(corrupt().into());
            }
            let record = SessionRecord::from_stored_bytes(&row.record).map_err(|_| corrupt())?;
            if let Some(identity) = record.trusted_identity() {
                peers.push((address, identity));
            }
        }
        Ok(())
    }

    /// Restores a backup made by [`Device::export_backup`] into `backend`,
    /// a new store under `storage_key`: the backed-up identity and address,
    /// fresh prekeys (a new signed prekey and a new last-resort ML-KEM prekey,
    /// never the old ones), and for each trusted peer a record that holds
    /// only that trust decision. One transaction; like
    /// [`Device::create_in`], it refuses a store that holds a device.
    ///
    /// The restored device has no session: a peer's message on the old one
    /// is `out_of_step` (heal with [`Device::heal`], and the peer sends again
    /// what its outbox holds), and [`Device::encrypt`] is `no_session` (start
    /// one with [`Device::start_session`]: the peer accepts it, the identity
    /// being the one it trusts). Publish new bundles
    /// ([`Device::refill_prekeys`]) before the peers need them.
    ///
    /// The passphrase's Argon2id runs before the store is written: with the
    /// file's parameters, which may be smaller than an export's minimum but
    /// never above the bounds of [`crate::limits`] (checked first).
    ///
    /// # Errors
    /// [`BackupError::WrongPassphrase`] (a wrong passphrase or an altered
    /// file), [`BackupError::Malformed`], [`BackupError::UnsupportedVersion`],
    /// [`BackupError::ParamsOutOfBounds`] (nothing derived),
    /// [`BackupError::OutOfMemory`]: nothing is written.
    /// [`StoreError::AlreadyExists`] if the store holds a device; a store
    /// error.
    pub fn restore_in(
        backend: B,
        storage_key: &StorageKey,
        backup: &[u8],
        passphrase: &[u8],
        now: SystemTime,
    ) -> Result<Self, DeviceError> {
        // A store that has a device is refused before the costly derivation
        // (and again, by the writes' preconditions, after it).
        if backend.get(Table::Meta, KEY_CHECK_ROW)?.is_some() {
            return Err(StoreError::AlreadyExists.into());
        }
        let contents = backup::open(passphrase, backup)?;
        retry_on_conflict(|| restore_rows(&backend, &Sealer::new(storage_key.as_bytes()), &contents, now))?;
        Self::open_in(backend, storage_key)
    }
}

impl Device<SqliteBackend> {
    /// [`Device::restore_in`] into a new SQLite database at `path`, made
    /// whole under a temporary name and then named, as [`Device::create`]
    /// does: a crash never leaves a half-restored store at `path`.
    ///
    /// # Errors
    /// As [`Device::restore_in`] (a wrong passphrase creates no file); as
    /// [`Device::create`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::{Duration, UNIX_EPOCH};
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::{BackupParams, Device}, store::MemoryBackend};
    ///
    /// let dir = std::env::temp_dir().join(format!("samizdat-restore-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, UNIX_EPOCH)?;
    /// let file = alice.export_backup(b"a long passphrase", BackupParams::MINIMUM, UNIX_EPOCH)?;
    ///
    /// let path = dir.join("alice.db");
    /// assert!(Device::restore(&path, &StorageKey::from_bytes([7; 32]), &file, b"a wrong passphrase", UNIX_EPOCH + Duration::from_secs(10)).is_err());
    /// assert!(!path.exists()); // nothing created
    /// let restored = Device::restore(&path, &StorageKey::from_bytes([7; 32]), &file, b"a long passphrase", UNIX_EPOCH + Duration::from_secs(10))?;
    /// assert_eq!(restored.identity_key(), alice.identity_key());
    /// restored.refill_prekeys(50, 100, UNIX_EPOCH + Duration::from_secs(10))?; // fresh prekeys to publish
    /// # drop(restored);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore(
        path: impl AsRef<Path>,
        storage_key: &StorageKey,
        backup: &[u8],
        passphrase: &[u8],
        now: SystemTime,
    ) -> Result<Self, DeviceError> {
        let path = path.as_ref();
        if path.exists() {
            return Self::restore_in(SqliteBackend::open(path)?, storage_key, backup, passphrase, now);
        }
        let contents = backup::open(passphrase, backup)?;
        let sealer = Sealer::new(storage_key.as_bytes());
        if !SqliteBackend::create_new(path, |backend| restore_rows(backend, &sealer, &contents, now))? {
            return Err(StoreError::AlreadyExists.into());
        }
        Self::open(path, storage_key)
    }
}

/// Writes the rows of a restored device into a backend that has none, in
/// one transaction, each write conditional on its row being absent
/// (PROTOCOL.md 21.6): the key check, the identity row, the rows of a new
/// prekey set, and a session row per trusted peer holding a record with the
/// trust decision alone.
fn restore_rows<C: Backend + ?Sized>(
    backend: &C,
    sealer: &Sealer,
    contents: &BackupContents,
    now: SystemTime,
) -> Result<(), DeviceError> {
    if backend.get(Table::Meta, KEY_CHECK_ROW)?.is_some() {
        return Err(StoreError::AlreadyExists.into());
    }
    let mut rng = crate::os_rng();
    let identity = contents.identity();
    // Ids from a random point in [2^20, 2^30): the lost installation gave
    // out ids from 1 under the same identity, and a peer tells a bundle's
    // prekeys by id (a heal goes on its unanswered session while the
    // bundle offers the same signed prekey id, PROTOCOL.md 20.5).
    let mut first = [0u8; 4];
    rng.fill_bytes(&mut first);
    let first_id = u32::from_be_bytes(first).wrapping_shr(2) | (1 << 20);
    let prekeys = PreKeySet::new_from_id(&mut rng, &identity, now, first_id);
    let row = Zeroizing::new(storage::IdentityRow {
        version: ROW_VERSION,
        seed: contents.seed.to_vec(),
        user_id: contents.address.user_id().to_owned(),
        device_id: contents.address.device_id(),
    });
    let encoded = Zeroizing::new(encode(&*row));
    let mut writes = vec![
        sealer.key_check(&mut rng),
        Write {
            table: Table::Identity,
            key: SINGLE_ROW.to_vec(),
            value: Some(sealer.seal(&mut rng, Table::Identity, SINGLE_ROW, &encoded)),
            expected: Expected::Absent,
        },
        super::healing::outboxes_marker(sealer),
    ];
    writes.extend(set_rows(sealer, prekeys).writes(sealer));
    for (peer, identity) in &contents.peers {
        let mut record = SessionRecord::new();
        record.trust_identity(*identity);
        let key = sealer.address_key(peer);
        let session_row = Zeroizing::new(storage::SessionRow {
            version: ROW_VERSION,
            user_id: peer.user_id().to_owned(),
            device_id: peer.device_id(),
            record: record.to_hot_bytes().to_vec(),
        });
        let bytes = Zeroizing::new(encode(&*session_row));
        writes.push(Write {
            table: Table::Sessions,
            value: Some(sealer.seal(&mut rng, Table::Sessions, &key, &bytes)),
            key,
            expected: Expected::Absent,
        });
    }
    // Our own list and the pinned users (PROTOCOL.md 23.5), verified when
    // the backup was opened.
    let user_rows = contents
        .own_device_list
        .iter()
        .map(|list| (super::users::OWN_LIST_ROW.to_vec(), contents.address.user_id(), list))
        .chain(contents.users.iter().map(|(user_id, list)| (sealer.user_key(user_id), user_id.as_str(), list)));
    for (key, user_id, list) in user_rows {
        // A backup carries the lists, not what a replacement kept in our own
        // row: a handover made again from a restored device names no key
        // replaced (its receivers order it by version, PROTOCOL.md 23.9), and
        // no device awaits it.
        let row = storage::UserRow {
            version: ROW_VERSION,
            user_id: user_id.to_owned(),
            device_list: list.to_bytes(),
            replaced_identity: Vec::new(),
            awaiting_handover: Vec::new(),
        };
        let bytes = Zeroizing::new(encode(&row));
        writes.push(Write {
            table: Table::Users,
            value: Some(sealer.seal(&mut rng, Table::Users, &key, &bytes)),
            key,
            expected: Expected::Absent,
        });
    }
    backend.apply(&writes)?;
    Ok(())
}
