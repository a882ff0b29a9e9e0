//! Sessions with peer devices: starting them, trust decisions, encryption
//! and the two-phase decryption.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use samizdat_proto::storage;
use zeroize::Zeroizing;

use crate::{
    DecodeError, DecryptError, SessionError,
    address::Address,
    fingerprint::SafetyNumber,
    group::GroupMessage,
    heal::message_id,
    keys::IdentityKey,
    padding::ContentType,
    prekeys::{PreKeyBundle, PreKeySet},
    ratchet::{ENCRYPTED_HEADER_LEN, header, message_key::MessageKey},
    session::{Attempt, PendingDecrypt, SessionRecord},
    store::{Backend, Expected, StoreError, Table, Write},
    user::{
        handover::{Handover, HandoverAck},
        sync::SentSync,
    },
    wire::{Message, RatchetMessage},
};

use super::{
    Device, DeviceError, Outgoing, PendingBatch, PendingMessage, ROW_VERSION, encode,
    groups::ControlAction,
    lock,
    pending::{Inner, LoadedRecord, LoadedRows},
    prekeys::PreKeyRows,
    replace::OwnPlan,
    retry_on_conflict,
    users::OwnExtras,
};

/// The row key of the seeds of a peer's skipped keys: its session row's key
/// followed by this suffix (PROTOCOL.md 14.7).
const SEEDS_ROW_SUFFIX: &[u8] = b"/seeds";

pub(super) fn seeds_key(row: &[u8]) -> Vec<u8> {
    [row, SEEDS_ROW_SUFFIX].concat()
}

/// The most headers a device remembers as costly to refuse.
const MAX_REFUSED_HEADERS: usize = 32;

/// A header (of a peer's session row) that came with a forged body after
/// costing many chain steps to find its key (a counter far ahead), and that
/// key. A replay of the header with another broken body is refused by one
/// AEAD with it instead of deriving the key again; a body that opens under it
/// (the genuine message, delivered after a broken copy) is decrypted as usual.
/// The key is the header's own: it never lets anything else through.
pub(super) struct RefusedHeader {
    row: Vec<u8>,
    header: [u8; ENCRYPTED_HEADER_LEN],
    key: Box<MessageKey>,
    associated_data: Vec<u8>,
}

impl<B: Backend> Device<B> {
    pub(super) fn peer_lock(&self, row: &[u8]) -> Arc<Mutex<()>> {
        lock(&self.peer_locks).entry(row.to_vec()).or_default().clone()
    }

    /// The session record of `row` without its skipped keys' seeds (they
    /// are in their own row, read only when a call needs them), and the row
    /// as read (sealed; `None` if there is none, which is an empty record).
    /// Every rewrite of a row seals it with a fresh nonce, so the sealed bytes
    /// tell whether it changed.
    pub(super) fn load_record(&self, row: &[u8]) -> Result<(LoadedRows, SessionRecord), StoreError> {
        let corrupt = || StoreError::Corrupt { table: Table::Sessions };
        let Some(sealed) = self.backend.get(Table::Sessions, row)? else {
            return Ok((LoadedRows { record: None, seeds: None }, SessionRecord::new()));
        };
        let bytes = self.open_sealed(Table::Sessions, row, &sealed)?;
        let parsed = crate::codec::decode_secret::<storage::SessionRow>(bytes.as_slice()).map_err(|_| corrupt())?;
        if parsed.version != ROW_VERSION {
            return Err(corrupt());
        }
        let record = SessionRecord::from_stored_bytes(&parsed.record).map_err(|_| corrupt())?;
        Ok((LoadedRows { record: Some(sealed), seeds: None }, record))
    }

    /// Reads the seeds row of `row` and gives `record`'s skipped keys their
    /// seeds; remembers in `loaded` what it read.
    ///
    /// The seeds row is written only with the session row, but read after
    /// it: another handle may rewrite both in between (and a backend's reads
    /// need not be fresh). Seeds that open and parse but leave a skipped key
    /// of `record` without its seed (or no seeds row, when the record needs
    /// one) are then of another version of the session row than the one
    /// read: [`StoreError::Conflict`], and the call reads again. A seeds row
    /// that does not open or parse is `Corrupt`.
    fn load_seeds(&self, row: &[u8], loaded: &mut LoadedRows, record: &mut SessionRecord) -> Result<(), StoreError> {
        let changed = StoreError::Conflict { table: Table::Sessions };
        let key = seeds_key(row);
        let sealed = self.backend.get(Table::Sessions, &key)?;
        if let Some(sealed) = &sealed {
            let bytes = self.open_sealed(Table::Sessions, &key, sealed)?;
            match record.attach_seeds(&bytes) {
                Ok(()) => {}
                Err(DecodeError::InvalidValue("seeds")) => return Err(changed),
                Err(_) => return Err(StoreError::Corrupt { table: Table::Sessions }),
            }
        } else if !record.has_all_seeds() {
            return Err(changed);
        }
        loaded.seeds = Some(sealed);
        Ok(())
    }

    /// The writes of a session record: its row, conditional on the row
    /// holding what `loaded` says was read; and, when its skipped keys
    /// changed, the row of their seeds (read first if the call had not read
    /// it), rewritten or deleted, conditional likewise.
    pub(super) fn record_writes(
        &self,
        row: &[u8],
        peer: &Address,
        record: &mut SessionRecord,
        loaded: &mut LoadedRows,
    ) -> Result<Vec<Write>, StoreError> {
        let mut writes = Vec::with_capacity(2);
        if record.skipped_changed() {
            if loaded.seeds.is_none() {
                self.load_seeds(row, loaded, record)?;
            }
            let key = seeds_key(row);
            let value = match record.seeds_to_bytes() {
                Some(bytes) if record.skipped_count() > 0 => {
                    Some(self.sealer.seal(&mut crate::os_rng(), Table::Sessions, &key, &bytes))
                }
                Some(_) => None,
                None => return Err(StoreError::Corrupt { table: Table::Sessions }),
            };
            let read = loaded.seeds.clone().flatten();
            if value.is_some() || read.is_some() {
                writes.push(Write { table: Table::Sessions, key, value, expected: Expected::read(read) });
            }
        }
        // The serialized record moves into the row (no copy), and the row and
        // its encoding are wiped on drop.
        let mut serialized = record.to_hot_bytes();
        let session_row = Zeroizing::new(storage::SessionRow {
            version: ROW_VERSION,
            user_id: peer.user_id().to_owned(),
            device_id: peer.device_id(),
            record: std::mem::take(&mut *serialized),
        });
        let bytes = Zeroizing::new(encode(&*session_row));
        let value = self.sealer.seal(&mut crate::os_rng(), Table::Sessions, row, &bytes);
        writes.push(Write {
            table: Table::Sessions,
            key: row.to_vec(),
            value: Some(value),
            expected: Expected::read(loaded.record.clone()),
        });
        Ok(writes)
    }

    /// Decrypts on a record loaded without its seeds; if the message needs
    /// one, reads them and decrypts again.
    pub(super) fn decrypt_loading_seeds(
        &self,
        (row, loaded, record): (&[u8], &mut LoadedRows, &mut SessionRecord),
        peer: &Address,
        prekeys: &PreKeySet,
        decoded: &Message,
    ) -> Result<Result<PendingDecrypt, SessionError>, StoreError> {
        let forged = || SessionError::from(DecryptError::Unauthenticated);
        let message = match decoded {
            Message::Ratchet(message) => message,
            Message::PreKey(prekey) => prekey.message(),
        };
        if self.refused_again(row, message) {
            return Ok(Err(forged()));
        }
        let mut rng = crate::os_rng();
        let attempt = |record: &SessionRecord, rng: &mut crate::OsRng| {
            record.decrypt_decoded(rng, &self.identity, &self.address, peer, prekeys, decoded)
        };
        let mut result = attempt(record, &mut rng);
        if matches!(result, Err(Attempt::NeedSeeds)) {
            self.load_seeds(row, loaded, record)?;
            result = attempt(record, &mut rng);
        }
        Ok(match result {
            Ok(pending) => Ok(pending),
            Err(Attempt::Failed(error)) => Err(error),
            Err(Attempt::Costly { key, associated_data }) => {
                self.remember_refused(row, *message.header(), key, associated_data);
                Err(forged())
            }
            // Every seed is loaded now.
            Err(Attempt::NeedSeeds) => Err(forged()),
        })
    }

    /// Whether `message` has a header remembered as costly to refuse, and a
    /// body that does not open under its key: a replay with a broken body.
    fn refused_again(&self, row: &[u8], message: &RatchetMessage) -> bool {
        let refused = lock(&self.refused);
        let Some(entry) = refused.iter().find(|entry| entry.row == row && entry.header == *message.header()) else {
            return false;
        };
        let mut ad = entry.associated_data.clone();
        ad.extend_from_slice(message.header());
        entry.key.open(message.body(), &ad, &header::nonce_of(message.header())).is_none()
    }

    fn remember_refused(
        &self,
        row: &[u8],
        header: [u8; ENCRYPTED_HEADER_LEN],
        key: Box<MessageKey>,
        associated_data: Vec<u8>,
    ) {
        let mut refused = lock(&self.refused);
        if refused.iter().any(|entry| entry.row == row && entry.header == header) {
            return;
        }
        if refused.len() >= MAX_REFUSED_HEADERS {
            refused.pop_front();
        }
        refused.push_back(RefusedHeader { row: row.to_vec(), header, key, associated_data });
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
            // The user's trust first (PROTOCOL.md 23.5): a ghost device is
            // refused before anything is computed or written.
            let user_write = self.plan_bundle_trust(&bundle)?;
            let (mut loaded, mut record) = self.load_record(&row)?;
            record.initiate(&mut crate::os_rng(), &self.identity, &self.address, &bundle)?;
            let mut writes = self.record_writes(&row, &peer, &mut record, &mut loaded)?;
            writes.extend(user_write);
            self.write(&writes)?;
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
            let (mut loaded, mut record) = self.load_record(&row)?;
            record.trust_identity(identity);
            self.write(&self.record_writes(&row, peer, &mut record, &mut loaded)?)?;
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
            let (ciphertext, writes) =
                self.encrypt_on_row(peer, &row, self.load_record(&row)?, plaintext, ContentType::App)?;
            // A ciphertext whose write is refused is dropped, never returned.
            self.write(&writes)?;
            Ok(ciphertext)
        })
    }

    /// One encryption of `content` (of type `content_type`) to `peer`, on
    /// its record as loaded from `row`: `CheckListed` (PROTOCOL.md 23.5)
    /// with the identity the record trusts, then `Encrypt` (9.4). Returns
    /// the ciphertext and the writes of the advanced record, conditional on
    /// the rows as read; the caller applies them (alone, or with others in
    /// one transaction: a fan-out, 23.6) and hands the ciphertext out only
    /// once they are written.
    ///
    /// # Errors
    /// [`DeviceListError::UnlistedDevice`](crate::user::DeviceListError::UnlistedDevice),
    /// [`SessionError::NoSession`], [`SessionError::Encrypt`], a store error.
    pub(super) fn encrypt_on_row(
        &self,
        peer: &Address,
        row: &[u8],
        (mut loaded, mut record): (LoadedRows, SessionRecord),
        content: &[u8],
        content_type: ContentType,
    ) -> Result<(Vec<u8>, Vec<Write>), DeviceError> {
        // A device its user's pinned list no longer names (or never did)
        // gets nothing (PROTOCOL.md 23.5).
        if let Some(identity) = record.trusted_identity() {
            self.check_listed(peer, &identity)?;
        }
        let ciphertext = record.encrypt_content(&mut crate::os_rng(), content, content_type)?;
        let writes = self.record_writes(row, peer, &mut record, &mut loaded)?;
        Ok((ciphertext, writes))
    }

    /// Decrypts a message from `peer` (the sender as the app's transport
    /// names it) without changing anything: see [`PendingMessage`].
    ///
    /// # Errors
    /// [`SessionError::Decrypt`] (duplicate, forged, too far ahead),
    /// [`SessionError::UntrustedIdentity`], [`SessionError::UnknownPreKey`],
    /// [`SessionError::NoSession`], a store error ([`StoreError::Conflict`]
    /// if other handles kept rewriting the session between its reads for
    /// [`MAX_WRITE_ATTEMPTS`](crate::limits::MAX_WRITE_ATTEMPTS) attempts).
    pub fn decrypt(&self, peer: &Address, ciphertext: &[u8]) -> Result<PendingMessage, DeviceError> {
        self.check_process()?;
        // Decoded in full first: junk reads nothing.
        let message = match crate::wire::decode_envelope(ciphertext).map_err(SessionError::from)? {
            samizdat_proto::wire::envelope::Body::Group(group) => {
                let message = GroupMessage::from_proto(group).map_err(SessionError::from)?;
                return self.decrypt_group(peer, &message);
            }
            _ => Message::from_bytes(ciphertext).map_err(SessionError::from)?,
        };
        let row = self.sealer.address_key(peer);
        // Read again if the seeds row turns out to be of another version of
        // the session row (rewritten between the two reads).
        let mut read = Vec::new();
        let result = retry_on_conflict(|| {
            let (mut loaded, mut record) = self.load_record(&row)?;
            read.push(loaded.record.clone());
            // A sender its user's pinned list does not name is refused
            // before any prekey is read (PROTOCOL.md 23.5).
            if let Some(identity) = sender_identity(&message, &record) {
                self.check_listed(peer, &identity)?;
            }
            // Only the prekey rows the message needs (PROTOCOL.md 14.9).
            let prekeys = self.prekeys_for(&mut PreKeyRows::default(), &record, &message)?;
            let mut id = message_id(ciphertext);
            let pending =
                match self.decrypt_loading_seeds((&row, &mut loaded, &mut record), peer, &prekeys, &message)? {
                    Ok(pending) => pending,
                    // A message a resend brought already: whatever no longer
                    // reads it (the heal cut its state), it is a duplicate.
                    Err(_) if record.healing().was_resent(&id) => {
                        return Err(SessionError::from(DecryptError::Resent).into());
                    }
                    Err(e) => return Err(e.into()),
                };
            let (mut sync, mut own) = (None, None);
            let mut control = match pending.content() {
                // The first copy of a message a resend brought already.
                ContentType::App if record.healing().was_resent(&id) => {
                    return Err(SessionError::from(DecryptError::Resent).into());
                }
                ContentType::App => None,
                // A sent sync (PROTOCOL.md 23.7): parsed, then accepted only
                // from a device our own pinned list names.
                ContentType::Control => {
                    let content = pending.plaintext();
                    if let Some(parsed) = SentSync::from_control_bytes(content) {
                        // A sent sync (PROTOCOL.md 23.7): parsed, then
                        // accepted only from a device our own pinned list
                        // names.
                        let parsed = parsed.map_err(SessionError::from)?;
                        self.check_sync_sender(peer, &pending.sender_identity())?;
                        sync = Some(parsed);
                        None
                    } else if let Some(parsed) = Handover::from_control_bytes(content) {
                        // A user identity handover (PROTOCOL.md 23.9):
                        // parsed (H1 to H5), then checked against our own
                        // list (H6 to H13).
                        let parsed = parsed.map_err(SessionError::from)?;
                        let plan = self.plan_handover(peer, &pending.sender_identity(), parsed)?;
                        own = Some(Box::new(OwnPlan::Handover(plan)));
                        None
                    } else if let Some(parsed) = HandoverAck::from_control_bytes(content) {
                        // Its acknowledgment (PROTOCOL.md 23.9): parsed (A1,
                        // A2), then checked against our own list (A3 to A5).
                        let parsed = parsed.map_err(SessionError::from)?;
                        own = Some(Box::new(self.plan_ack(peer, &pending.sender_identity(), parsed)?));
                        None
                    } else {
                        Some(self.plan_control(peer, pending.sender_identity(), content, record.healing())?)
                    }
                }
            };
            // A resend reaching the app: its own wire id is the message's
            // too (a later copy of it is a duplicate).
            if let Some(ControlAction::Resent { id: first, also, .. }) = &mut control {
                also.push(id);
                id = *first;
            }
            Ok(PendingMessage {
                device: self.identity.public_key(),
                peer: peer.clone(),
                inner: Inner::Pairwise { pending, loaded, record, control, id, sync, own },
            })
        });
        corrupt_if_unchanged(result, &read)
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
    /// A group message commits its sender's chains; a control message also
    /// does what it says (stores a chain; answers a request, whose answer is
    /// returned: send it to the peer). A new answer is written (the member's
    /// answer count, the answer itself) in the same transaction, before it
    /// is returned. Past
    /// [`MAX_GROUP_KEY_ANSWERS`](crate::limits::MAX_GROUP_KEY_ANSWERS) answers
    /// to the peer on our current chain, a request for that chain returns the
    /// last answer again, the same bytes, and nothing but the session is
    /// written: an answer that died with the app before it was sent goes
    /// now, and a copy of one sent is a duplicate to the peer. One request
    /// returns at most one answer.
    ///
    /// A reset from the peer (its [`Self::heal`]) installs its new session
    /// and returns the messages it named that our outbox still holds
    /// ([`Self::encrypt_kept`]), each encrypted again on that session, at
    /// most [`MAX_RESET_IDS`](crate::limits::MAX_RESET_IDS): the session
    /// advanced by them is written before they are returned. Send them all,
    /// in order. Every other commit returns nothing or one message.
    ///
    /// # Errors
    /// [`DeviceError::ForeignPending`] if another device made it;
    /// [`SessionError::StalePending`] if the session changed since the
    /// decryption (decrypt again: the message was not consumed);
    /// [`SessionError::UnknownPreKey`] if another session consumed the same
    /// one-time prekey first; a store error (nothing written).
    pub fn commit(&self, message: PendingMessage) -> Result<Vec<Outgoing>, DeviceError> {
        self.check_process()?;
        let PendingMessage { device, peer, inner } = message;
        if device != self.identity.public_key() {
            return Err(DeviceError::ForeignPending);
        }
        let (pending, mut loaded, mut record, control, id, own) = match inner {
            Inner::Group(group) => return self.commit_group(group).map(|()| Vec::new()),
            Inner::Pairwise { pending, loaded, record, control, id, sync: _, own } => {
                (pending, loaded, record, control, id, own)
            }
        };
        // Group rows first, as every call that takes both locks; then our
        // own user's row (a handover or its acknowledgment), then the peer's.
        let _group_guard = control.as_ref().filter(|c| c.is_group()).map(|_| lock(&self.group_lock));
        let user_lock = own.as_ref().map(|_| self.peer_lock(&self.user_lock_key(self.address.user_id())));
        let _user_guard = user_lock.as_ref().map(|l| lock(l));
        let row = self.sealer.address_key(&peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        // Checked first, so that a stale pending is reported as such rather
        // than by what the prekey checks make of it.
        if self.backend.get(Table::Sessions, &row)? != loaded.record {
            return Err(SessionError::StalePending.into());
        }
        let consumed = pending.consumed_prekeys();
        record.commit(pending)?;
        let (mut control_writes, mut answer) = match control {
            Some(action) => self.control_writes(action, &peer, &mut record)?,
            None => {
                // A message our reset named, read as first sent: its resend
                // is no longer for the app.
                if record.healing().awaits(&id) {
                    record.healing_mut().read_first(&id);
                }
                (Vec::new(), Vec::new())
            }
        };
        // A handover's list becomes our own, and its acknowledgment goes back
        // on the session (also for a list we held already: a handover made
        // again is acknowledged again); an acknowledgment takes its sender
        // off the devices awaiting ours. Each write is conditional on our own
        // row as the decryption read it (PROTOCOL.md 23.9).
        match own.as_deref() {
            Some(OwnPlan::Handover(plan)) => {
                if let Some(trust) = &plan.trust {
                    let extras = OwnExtras { replaced: plan.identity.replaced().copied(), awaiting: Vec::new() };
                    control_writes.push(self.user_write_with(&plan.own, trust, &extras));
                }
                let user_identity_key = plan.identity.user_identity().public_key();
                let ack = HandoverAck { user_identity_key }.to_control_bytes();
                let message = record.encrypt_content(&mut crate::os_rng(), &ack, ContentType::Control)?;
                answer.push(Outgoing { to: peer.clone(), message });
            }
            Some(OwnPlan::Ack(Some((own_row, trust, extras)))) => {
                control_writes.push(self.user_write_with(own_row, trust, extras));
            }
            Some(OwnPlan::Ack(None)) | None => {}
        }
        // Seeds of another version of the row: it changed since the decryption.
        let mut session_writes = self
            .record_writes(&row, &peer, &mut record, &mut loaded)
            .map_err(|e| stale_on_session_conflict(e.into()))?;
        session_writes.extend(control_writes);
        if consumed.is_empty() {
            self.write(&session_writes).map_err(|e| stale_on_group_or_session_conflict(e.into()))?;
            return Ok(answer);
        }
        let _prekey_guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let mut writes = session_writes.clone();
            writes.extend(self.consume_writes(&consumed)?);
            // A conflict on the session row is final (stale); one on the
            // prekey rows alone is retried with them read again.
            self.write(&writes).map_err(|e| stale_on_group_or_session_conflict(e.into()))
        })?;
        Ok(answer)
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
        // Read again if a seeds row turns out to be of another version of its
        // session row (rewritten between the two reads).
        let mut read = Vec::new();
        let result = retry_on_conflict(|| self.decrypt_batch_once(messages, &mut read));
        corrupt_if_unchanged(result, &read)
    }

    /// One attempt of [`Self::decrypt_batch`]; pushes the session rows it
    /// read (sealed, in the order read) to `read`.
    fn decrypt_batch_once(
        &self,
        messages: &[(Address, Vec<u8>)],
        read: &mut Vec<Vec<Option<Vec<u8>>>>,
    ) -> Result<PendingBatch, DeviceError> {
        read.push(Vec::new());
        let mut records: BTreeMap<Vec<u8>, LoadedRecord> = BTreeMap::new();
        let mut prekeys = PreKeyRows::default();
        let mut results = Vec::with_capacity(messages.len());
        for (peer, ciphertext) in messages {
            let row = self.sealer.address_key(peer);
            if !records.contains_key(&row) {
                let (loaded, record) = self.load_record(&row)?;
                if let Some(rows) = read.last_mut() {
                    rows.push(loaded.record.clone());
                }
                let as_loaded = record.to_hot_bytes();
                records.insert(row.clone(), LoadedRecord { peer: peer.clone(), loaded, as_loaded, record });
            }
            let Some(LoadedRecord { loaded, record, .. }) = records.get_mut(&row) else { continue };
            results.push(self.decrypt_in_batch(&mut prekeys, (&row, loaded, record), peer, ciphertext)?);
        }
        Ok(PendingBatch { device: self.identity.public_key(), results, records, prekeys })
    }

    /// Commits a batch in one transaction, after the app stored the
    /// plaintexts. Only the session records the batch changed are written (a
    /// peer all of whose messages failed gets no row written or created),
    /// with the prekey rows its messages consumed. Every write is conditional
    /// on its row still holding the sealed bytes [`Self::decrypt_batch`] read.
    ///
    /// # Errors
    /// [`DeviceError::ForeignPending`] if another device made it;
    /// [`SessionError::StalePending`] if a session row or a prekey row the
    /// batch changes was rewritten since [`Self::decrypt_batch`] (even with the same content;
    /// through any handle): nothing is written, decrypt the batch again; a
    /// store error (nothing written).
    pub fn commit_batch(&self, mut batch: PendingBatch) -> Result<(), DeviceError> {
        self.check_process()?;
        if batch.device != self.identity.public_key() {
            return Err(DeviceError::ForeignPending);
        }
        let locks: Vec<_> = batch.records.keys().map(|row| self.peer_lock(row)).collect();
        let _guards: Vec<_> = locks.iter().map(|l| lock(l)).collect();
        let _prekey_guard = lock(&self.prekey_lock);
        let mut writes = Vec::with_capacity(batch.records.len().saturating_add(1));
        // Only the records the batch changed: a peer all of whose messages
        // failed keeps its rows as they are (none is created for it).
        for (row, entry) in batch.records.iter_mut().filter(|(_, entry)| entry.changed()) {
            let LoadedRecord { peer, loaded, record, .. } = entry;
            // Seeds of another version of the row: it changed since the batch.
            writes.extend(
                self.record_writes(row, peer, record, loaded).map_err(|e| stale_on_session_conflict(e.into()))?,
            );
        }
        writes.extend(batch.prekeys.writes(&self.sealer));
        match self.write(&writes) {
            Err(StoreError::Conflict { .. }) => Err(SessionError::StalePending.into()),
            result => Ok(result?),
        }
    }
}

/// The identity a message claims to come from: the prekey header's, or for
/// a message of an established session, the identity its record trusts.
pub(super) fn sender_identity(message: &Message, record: &SessionRecord) -> Option<IdentityKey> {
    match message {
        Message::PreKey(prekey) => Some(prekey.header().identity_key()),
        Message::Ratchet(_) => record.trusted_identity(),
    }
}

/// A call that writes nothing, refused [`MAX_WRITE_ATTEMPTS`](crate::limits::MAX_WRITE_ATTEMPTS) times with a
/// `Conflict` on the sessions table (a seeds row that does not match its
/// session row, PROTOCOL.md 13.4) although every attempt read the very same
/// session rows: nobody rewrote them meanwhile, so the seeds row is damaged
/// or missing, and the store is `Corrupt`.
fn corrupt_if_unchanged<T, R: PartialEq>(result: Result<T, DeviceError>, read: &[R]) -> Result<T, DeviceError> {
    match result {
        Err(DeviceError::Store(StoreError::Conflict { table: Table::Sessions }))
            if read.len() >= crate::limits::MAX_WRITE_ATTEMPTS && read.iter().all(|r| Some(r) == read.first()) =>
        {
            Err(StoreError::Corrupt { table: Table::Sessions }.into())
        }
        result => result,
    }
}

/// A commit's session or group write refused because the row changed: the
/// pending decryption is stale.
fn stale_on_group_or_session_conflict(error: DeviceError) -> DeviceError {
    match error {
        DeviceError::Store(StoreError::Conflict { table: Table::Groups | Table::Users }) => {
            SessionError::StalePending.into()
        }
        error => stale_on_session_conflict(error),
    }
}

/// A commit's session write refused because the row changed: the pending
/// decryption is stale.
fn stale_on_session_conflict(error: DeviceError) -> DeviceError {
    match error {
        DeviceError::Store(StoreError::Conflict { table: Table::Sessions | Table::Outboxes }) => {
            SessionError::StalePending.into()
        }
        error => error,
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use crate::store::StorageKey;
    use prost::Message as _;

    use super::*;
    use crate::{
        ratchet::chain::STEPS,
        store::{Backend, MemoryBackend},
    };

    fn steps() -> usize {
        STEPS.with(std::cell::Cell::get)
    }

    /// A backend over a shared store that runs a closure, once, just before
    /// its first read of a seeds row: another handle acting between a
    /// call's read of a session row and its read of the seeds row.
    struct Interleaved {
        store: Arc<MemoryBackend>,
        before_seeds: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Backend for Interleaved {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            if key.ends_with(SEEDS_ROW_SUFFIX)
                && let Some(hook) = lock(&self.before_seeds).take()
            {
                hook();
            }
            self.store.get(table, key)
        }
        fn scan(&self, table: Table) -> Result<Vec<crate::store::Row>, StoreError> {
            self.store.scan(table)
        }
        fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
            self.store.apply(writes)
        }
    }

    /// Another handle rewrites a session row and its seeds row between a
    /// decryption's read of the one and of the other: the seeds no longer
    /// cover the record read. That is a race, not damage: the decryption
    /// reads again and succeeds (it used to fail with `Corrupt`), and so do
    /// a batch and a commit that needs the seeds.
    #[test]
    fn seeds_rewritten_between_the_two_reads_are_read_again_not_corrupt() {
        let address = |name: &str| Address::new(name, 1).unwrap();
        let store = Arc::new(MemoryBackend::new());
        let other = Arc::new(
            Device::create_in(store.clone(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH).unwrap(),
        );
        let alice =
            Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH)
                .unwrap();
        alice.start_session(&other.prekey_bundle().unwrap()).unwrap();
        let wire: Vec<_> =
            (0..7).map(|i| alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap()).collect();
        // The last first: m1 to m5 are skipped, their seeds in the seeds row.
        other.commit(other.decrypt(&address("alice"), &wire[0]).unwrap()).unwrap();
        other.commit(other.decrypt(&address("alice"), &wire[6]).unwrap()).unwrap();
        let interleaved = |then: Vec<u8>| {
            let other = other.clone();
            let hook: Box<dyn FnOnce() + Send> = Box::new(move || {
                other.commit(other.decrypt(&address("alice"), &then).unwrap()).unwrap();
            });
            Interleaved { store: store.clone(), before_seeds: Mutex::new(Some(hook)) }
        };
        // decrypt: the other handle consumes m2's key meanwhile.
        let bob = Device::open_in(interleaved(wire[2].clone()), &StorageKey::from_bytes([2; 32])).unwrap();
        let pending = bob.decrypt(&address("alice"), &wire[1]).unwrap();
        assert_eq!(pending.plaintext(), b"m1");
        bob.commit(pending).unwrap();
        // decrypt_batch: m4's key consumed meanwhile.
        let bob = Device::open_in(interleaved(wire[4].clone()), &StorageKey::from_bytes([2; 32])).unwrap();
        let batch = bob.decrypt_batch(&[(address("alice"), wire[3].clone())]).unwrap();
        assert_eq!(batch.results()[0].as_deref().unwrap(), b"m3");
        bob.commit_batch(batch).unwrap();
        // commit: a message ahead on the current chain needs no seed to
        // decrypt, but its commit adds skipped keys, so it reads the seeds
        // row to rewrite it; the other handle consumes m5's key meanwhile.
        // The row changed since the decryption: stale (it used to be
        // `Corrupt`), and decrypting again works.
        let next: Vec<_> =
            (0..3).map(|i| alice.encrypt(&address("bob"), format!("n{i}").as_bytes()).unwrap()).collect();
        let bob = Device::open_in(interleaved(wire[5].clone()), &StorageKey::from_bytes([2; 32])).unwrap();
        let pending = bob.decrypt(&address("alice"), &next[2]).unwrap();
        assert!(lock(&bob.backend().before_seeds).is_some(), "the decryption read no seeds");
        let result = bob.commit(pending);
        assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
        assert!(lock(&bob.backend().before_seeds).is_none());
        let pending = bob.decrypt(&address("alice"), &next[2]).unwrap();
        assert_eq!(pending.plaintext(), b"n2");
        bob.commit(pending).unwrap();
    }

    /// Issue 12, item 3: a genuine header far ahead with a broken body used
    /// to cost its thousands of chain steps again at every replay. A replay
    /// with any broken body is now refused without a chain step, and the
    /// genuine message still decrypts.
    #[test]
    fn a_replayed_far_ahead_header_costs_no_chain_step() {
        let address = |name: &str| Address::new(name, 1).unwrap();
        let alice =
            Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH)
                .unwrap();
        let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH)
            .unwrap();
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let first = alice.encrypt(&address("bob"), b"first").unwrap();
        bob.commit(bob.decrypt(&address("alice"), &first).unwrap()).unwrap();
        let mut genuine = Vec::new();
        for i in 0..1_000 {
            genuine = alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap();
        }
        let broken = |flip: usize| {
            let mut bytes = genuine.clone();
            let at = bytes.len() - 1 - flip;
            bytes[at] ^= 1;
            bytes
        };
        let forged = || DeviceError::Session(SessionError::Decrypt(DecryptError::Unauthenticated));
        let before = steps();
        assert!(matches!(bob.decrypt(&address("alice"), &broken(0)), Err(e) if e.to_string() == forged().to_string()));
        assert!(steps() - before >= 999, "the first refusal derives the keys: {}", steps() - before);
        for flip in 0..20 {
            let before = steps();
            assert!(bob.decrypt(&address("alice"), &broken(flip)).is_err());
            assert_eq!(steps() - before, 0, "replay {flip} derived keys again");
        }
        let pending = bob.decrypt(&address("alice"), &genuine).unwrap();
        assert_eq!(pending.plaintext(), b"m999");
        bob.commit(pending).unwrap();
    }

    /// Bob's row for Alice after Alice skipped `skipped` messages: the
    /// devices, the messages Alice did not deliver, and the row's record.
    fn skipped_setup(skipped: usize) -> (Device<MemoryBackend>, Device<MemoryBackend>, Vec<Vec<u8>>) {
        let address = |name: &str| Address::new(name, 1).unwrap();
        let alice =
            Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH)
                .unwrap();
        let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH)
            .unwrap();
        alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let held: Vec<Vec<u8>> =
            (0..skipped).map(|i| alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap()).collect();
        let last = alice.encrypt(&address("bob"), b"last").unwrap();
        bob.commit(bob.decrypt(&address("alice"), &last).unwrap()).unwrap();
        (alice, bob, held)
    }

    fn stored_record(bob: &Device<MemoryBackend>) -> storage::SessionRecord {
        let row = bob.sealer.address_key(&Address::new("alice", 1).unwrap());
        let sealed = bob.backend.get(Table::Sessions, &row).unwrap().unwrap();
        let opened = bob.sealer.open(Table::Sessions, &row, &sealed).unwrap();
        let parsed = storage::SessionRow::decode(opened.as_slice()).unwrap();
        storage::SessionRecord::decode(parsed.record.as_slice()).unwrap()
    }

    /// The session row holds the skipped keys' counters as ranges
    /// (`skipped_apart`), not one `SkippedKey` message each: what every call
    /// parses and writes stays small however many keys are stored; a peer
    /// that delivers every other message of a gap costs two small numbers
    /// per key.
    #[test]
    fn the_session_row_holds_skipped_counters_as_ranges() {
        let address = Address::new("alice", 1).unwrap();
        let (_, bob, held) = skipped_setup(500);
        let ranges = |bob: &Device<MemoryBackend>| {
            let record = stored_record(bob);
            assert!(record.seeds_apart);
            let chains = &record.current.as_ref().unwrap().ratchet.as_ref().unwrap().receiving;
            assert!(chains.iter().all(|c| c.skipped.is_empty()));
            chains.iter().flat_map(|c| c.skipped_apart.iter().copied()).collect::<Vec<u32>>()
        };
        let row_len = |bob: &Device<MemoryBackend>| {
            bob.backend.get(Table::Sessions, &bob.sealer.address_key(&address)).unwrap().unwrap().len()
        };
        assert_eq!(ranges(&bob), vec![0, 500]);
        let contiguous = row_len(&bob);
        assert!(contiguous <= 1_100, "a row of {contiguous} bytes");
        for message in held.iter().skip(1).step_by(2) {
            bob.commit(bob.decrypt(&address, message).unwrap()).unwrap();
        }
        let expected: Vec<u32> = [0, 1].into_iter().chain((0..249).flat_map(|_| [1, 1])).collect();
        assert_eq!(ranges(&bob), expected);
        // The 250 deliveries also fill the 128 used counters (12 bytes each,
        // 4.8), and the row is padded to its size class (14.4).
        assert!(row_len(&bob) <= 4_608, "a row of {} bytes", row_len(&bob));
    }

    /// A session row written by a release that kept the seeds in the record
    /// (`seeds_apart` false) still loads; its skipped keys decrypt, and its
    /// next commit stores it the current way (counters packed, seeds in their
    /// own row).
    #[test]
    fn a_row_with_its_seeds_inside_is_read_and_converted() {
        let (_, bob, held) = skipped_setup(3);
        let address = Address::new("alice", 1).unwrap();
        let row = bob.sealer.address_key(&address);
        // Rewrite Bob's rows as the previous release stored them: the whole
        // record, seeds included, and no seeds row.
        let (_, record) = bob.load_record(&row).unwrap();
        let mut loaded = LoadedRows { record: None, seeds: None };
        let mut record = record;
        bob.load_seeds(&row, &mut loaded, &mut record).unwrap();
        let legacy = storage::SessionRow {
            version: ROW_VERSION,
            user_id: "alice".to_owned(),
            device_id: 1,
            record: record.to_bytes().to_vec(),
        };
        let sealed = bob.sealer.seal(&mut crate::os_rng(), Table::Sessions, &row, &encode(&legacy));
        bob.backend
            .apply(&[
                Write { table: Table::Sessions, key: row.clone(), value: Some(sealed), expected: Expected::Any },
                Write { table: Table::Sessions, key: seeds_key(&row), value: None, expected: Expected::Any },
            ])
            .unwrap();
        assert!(!stored_record(&bob).seeds_apart);
        let pending = bob.decrypt(&address, &held[1]).unwrap();
        assert_eq!(pending.plaintext(), b"m1");
        bob.commit(pending).unwrap();
        let converted = stored_record(&bob);
        assert!(converted.seeds_apart);
        assert!(bob.backend.get(Table::Sessions, &seeds_key(&row)).unwrap().is_some());
        for (i, message) in [(0, &held[0]), (2, &held[2])] {
            let pending = bob.decrypt(&address, message).unwrap();
            assert_eq!(pending.plaintext(), format!("m{i}").as_bytes());
            bob.commit(pending).unwrap();
        }
    }
}
