//! Sessions with peer devices: starting them, trust decisions, encryption
//! and the two-phase decryption.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prost::Message as _;
use samizdat_proto::storage;
use zeroize::Zeroizing;

use crate::{
    SessionError,
    address::Address,
    fingerprint::SafetyNumber,
    keys::IdentityKey,
    prekeys::PreKeyBundle,
    session::SessionRecord,
    store::{Backend, Expected, StoreError, Table, Write},
    wire::Message,
};

use super::{
    Device, DeviceError, PendingBatch, PendingMessage, ROW_VERSION, encode, lock, pending::LoadedRecord,
    prekeys::PreKeyRows, retry_on_conflict,
};

impl<B: Backend> Device<B> {
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
    /// for [`MAX_WRITE_ATTEMPTS`](crate::limits::MAX_WRITE_ATTEMPTS) attempts).
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
        // Decoded in full first: junk reads nothing.
        let message = Message::from_bytes(ciphertext).map_err(SessionError::from)?;
        let row = self.sealer.address_key(peer);
        let (loaded, record) = self.load_record(&row)?;
        // Only the prekey rows the message needs (PROTOCOL.md 14.9).
        let prekeys = self.prekeys_for(&mut PreKeyRows::default(), &record, &message)?;
        let pending =
            record.decrypt_decoded(&mut crate::os_rng(), &self.identity, &self.address, peer, &prekeys, &message)?;
        Ok(PendingMessage { device: self.identity.public_key(), peer: peer.clone(), pending, loaded, record })
    }

    /// Commits a decryption: the session advances and the prekeys it used
    /// are deleted, in one transaction. Call it after the plaintext is stored.
    ///
    /// The session row must still hold the sealed bytes the decryption read
    /// (any rewrite since, through any handle, makes the pending stale), and
    /// the write is conditional on it. The prekey writes (the consumed
    /// one-time prekeys deleted, the base key remembered, the index row) are
    /// conditional on those rows as this call read them; when another handle
    /// changed them meanwhile, they are read and checked again.
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
            let mut writes = vec![session_write.clone()];
            writes.extend(self.consume_writes(&consumed)?);
            // A conflict on the session row is final (stale); one on the
            // prekey rows alone is retried with them read again.
            self.backend.apply(&writes).map_err(|e| stale_on_session_conflict(e.into()))
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
        let mut prekeys = PreKeyRows::default();
        let mut results = Vec::with_capacity(messages.len());
        for (peer, ciphertext) in messages {
            let row = self.sealer.address_key(peer);
            if !records.contains_key(&row) {
                let (loaded, record) = self.load_record(&row)?;
                records.insert(row.clone(), (peer.clone(), loaded, record));
            }
            let Some((_, _, record)) = records.get_mut(&row) else { continue };
            results.push(self.decrypt_in_batch(&mut rng, &mut prekeys, record, peer, ciphertext)?);
        }
        Ok(PendingBatch { device: self.identity.public_key(), results, records, prekeys })
    }

    /// Commits a batch in one transaction, after the app stored the
    /// plaintexts. Every write is conditional on its row still holding the
    /// sealed bytes [`Self::decrypt_batch`] read.
    ///
    /// # Errors
    /// [`DeviceError::ForeignPending`] if another device made it;
    /// [`SessionError::StalePending`] if a session row or a prekey row the
    /// batch changes was rewritten since [`Self::decrypt_batch`] (even with the same content;
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
        writes.extend(batch.prekeys.writes(&self.sealer));
        match self.backend.apply(&writes) {
            Err(StoreError::Conflict { .. }) => Err(SessionError::StalePending.into()),
            result => Ok(result?),
        }
    }
}

/// A commit's session write refused because the row changed: the pending
/// decryption is stale.
fn stale_on_session_conflict(error: DeviceError) -> DeviceError {
    match error {
        DeviceError::Store(StoreError::Conflict { table: Table::Sessions }) => SessionError::StalePending.into(),
        error => error,
    }
}
