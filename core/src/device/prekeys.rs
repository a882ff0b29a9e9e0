//! The device's own prekeys, one row per key: bundles to upload, upkeep,
//! the rows a prekey message names, and what a committed handshake consumes.
//!
//! Table `prekeys` holds (PROTOCOL.md 14.7): one row per prekey
//! (`signed/<id>`, `one-time/<id>`, `pq-one-time/<id>`, `last-resort/<id>`,
//! ids as 4 big-endian bytes), an index row `meta` (the id counter, the ids
//! held, the creation times the rotation needs, the next ring slot), and the
//! remembered base keys: a lookup row per pair, keyed by a keyed hash
//! (`base-key/<hash>`), and a ring of [`MAX_REMEMBERED_BASE_KEYS`] slot rows
//! (`ring/<slot>`) that says, oldest first, which lookup row to delete when
//! a slot is reused. So a prekey message reads the few rows its header names,
//! and a new session writes the rows it consumes, the index and one slot,
//! whatever the device holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use samizdat_proto::storage;
use zeroize::{Zeroize, Zeroizing};

use super::{Device, DeviceError, Rotated, encode, lock, pending::LoadedRows, retry_on_conflict};
use crate::{
    PreKeyKind, SessionError,
    address::Address,
    clock::unix_seconds,
    keys::{X25519PublicKey, X25519Secret},
    limits::{MAX_LAST_RESORT_PREKEYS, MAX_ONE_TIME_PREKEYS, MAX_REMEMBERED_BASE_KEYS, MAX_SIGNED_PREKEYS},
    prekeys::{
        ConsumedPreKeys, PqPreKeyPair, PreKeyParts, PreKeySet, SignedPreKeyPair, one_time_from_record, one_time_record,
    },
    session::SessionRecord,
    store::{Backend, Expected, Sealer, StoreError, Table, Write},
    wire::Message,
};

/// The index row.
const META_ROW: &[u8] = b"meta";
/// The single row of the format before this one: the whole set (migrated on open).
pub(super) const LEGACY_ROW: &[u8] = b"self";
/// Row key prefixes; a prekey's id follows as 4 big-endian bytes, a ring
/// slot's number likewise, a lookup row's keyed hash as 32 bytes.
const SIGNED: &[u8] = b"signed/";
const ONE_TIME: &[u8] = b"one-time/";
const PQ_ONE_TIME: &[u8] = b"pq-one-time/";
const LAST_RESORT: &[u8] = b"last-resort/";
const BASE_KEY: &[u8] = b"base-key/";
const RING: &[u8] = b"ring/";
/// Format version of the index row.
const META_VERSION: u32 = 1;
/// The ring's slots, one per remembered pair.
const RING_SLOTS: u32 = {
    assert!(MAX_REMEMBERED_BASE_KEYS > 0 && MAX_REMEMBERED_BASE_KEYS <= u32::MAX as usize);
    #[allow(clippy::cast_possible_truncation)]
    let slots = MAX_REMEMBERED_BASE_KEYS as u32;
    slots
};

fn id_row(prefix: &[u8], id: u32) -> Vec<u8> {
    [prefix, &id.to_be_bytes()].concat()
}

fn corrupt() -> StoreError {
    StoreError::Corrupt { table: Table::PreKeys }
}

fn decode<M: prost::Message + Default + Zeroize>(bytes: &[u8]) -> Result<Zeroizing<M>, StoreError> {
    crate::codec::decode_secret::<M>(bytes).map_err(|_| corrupt())
}

/// The encoding of a record that may hold secrets, wiped on drop.
fn encode_secret<M: prost::Message>(message: &M) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(encode(message))
}

/// The lookup row of a remembered pair: `"base-key/" || HMAC-SHA256(base
/// key key, u32be(spk id) || EK_A)`, so that the store reveals no base key.
fn base_key_row(sealer: &Sealer, signed_prekey_id: u32, base_key: &X25519PublicKey) -> Vec<u8> {
    [BASE_KEY, &sealer.base_key_hash(signed_prekey_id, base_key)].concat()
}

/// The index row, as a call reads and changes it.
#[derive(Default)]
struct Meta {
    next_id: u32,
    /// `(id, created_at)`, oldest first; the last is current.
    signed: Vec<(u32, u64)>,
    /// `(id, created_at)`, oldest first; the last is current.
    last_resort: Vec<(u32, u64)>,
    one_time: BTreeSet<u32>,
    pq_one_time: BTreeSet<u32>,
    /// The ring slot of the next remembered pair.
    next_slot: u32,
    /// Every one-time X25519 prekey below this id was handed out in a bundle.
    handed_out: u32,
    /// Every one-time ML-KEM prekey below this id was handed out in a bundle.
    pq_handed_out: u32,
}

impl Meta {
    /// Parses and checks the index row (PROTOCOL.md 14.7); any failure is
    /// `Corrupt`.
    fn from_row(bytes: &[u8]) -> Result<Self, StoreError> {
        let row = crate::codec::decode_secret::<storage::PreKeyMeta>(bytes).map_err(|_| corrupt())?;
        let increasing = |ids: &[u32]| ids.windows(2).all(|w| matches!(w, [a, b] if a < b));
        if row.version != META_VERSION
            || !(1..=MAX_SIGNED_PREKEYS).contains(&row.signed.len())
            || !(1..=MAX_LAST_RESORT_PREKEYS).contains(&row.last_resort.len())
            || row.one_time.len() > MAX_ONE_TIME_PREKEYS
            || row.pq_one_time.len() > MAX_ONE_TIME_PREKEYS
            || !increasing(&row.one_time)
            || !increasing(&row.pq_one_time)
            || row.next_base_key_slot >= RING_SLOTS
            || row.one_time_handed_out.is_some_and(|cursor| cursor > row.next_id)
            || row.pq_one_time_handed_out.is_some_and(|cursor| cursor > row.next_id)
        {
            return Err(corrupt());
        }
        let entries =
            |entries: &[storage::PreKeyEntry]| entries.iter().map(|e| (e.id, e.created_at)).collect::<Vec<_>>();
        let meta = Self {
            next_id: row.next_id,
            signed: entries(&row.signed),
            last_resort: entries(&row.last_resort),
            one_time: row.one_time.iter().copied().collect(),
            pq_one_time: row.pq_one_time.iter().copied().collect(),
            next_slot: row.next_base_key_slot,
            // A row of an earlier release: its bundles offered the lowest ids
            // held, which contacts may still hold; none is offered again.
            handed_out: row.one_time_handed_out.unwrap_or(row.next_id),
            pq_handed_out: row.pq_one_time_handed_out.unwrap_or(row.next_id),
        };
        // Ids are unique across kinds and below the counter.
        let ids = meta.ids().collect::<Vec<_>>();
        let distinct = ids.iter().collect::<BTreeSet<_>>();
        if distinct.len() != ids.len() || ids.iter().any(|id| *id >= meta.next_id) {
            return Err(corrupt());
        }
        Ok(meta)
    }

    /// How many one-time prekeys of each kind no bundle offered yet.
    fn unoffered(&self) -> (usize, usize) {
        (self.one_time.range(self.handed_out..).count(), self.pq_one_time.range(self.pq_handed_out..).count())
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        let entries = self.signed.iter().chain(&self.last_resort).map(|(id, _)| *id);
        entries.chain(self.one_time.iter().copied()).chain(self.pq_one_time.iter().copied())
    }

    fn to_row(&self) -> Zeroizing<Vec<u8>> {
        let entries = |entries: &[(u32, u64)]| {
            entries.iter().map(|(id, created_at)| storage::PreKeyEntry { id: *id, created_at: *created_at }).collect()
        };
        encode_secret(&storage::PreKeyMeta {
            version: META_VERSION,
            next_id: self.next_id,
            signed: entries(&self.signed),
            last_resort: entries(&self.last_resort),
            one_time: self.one_time.iter().copied().collect(),
            pq_one_time: self.pq_one_time.iter().copied().collect(),
            next_base_key_slot: self.next_slot,
            one_time_handed_out: Some(self.handed_out),
            pq_one_time_handed_out: Some(self.pq_handed_out),
        })
    }

    /// The rows of `parts`' keys (each a new row) and their entries in the
    /// index; the counter moves to `parts.next_id`. Remembered pairs are not
    /// rows of this kind: see [`set_rows`].
    fn add_keys(&mut self, parts: &PreKeyParts) -> Vec<Change> {
        let mut changes = Vec::new();
        for key in &parts.signed {
            let record = Zeroizing::new(key.to_record());
            self.signed.push((key.id, record.created_at));
            changes.push((id_row(SIGNED, key.id), Some(encode_secret(&*record))));
        }
        for (id, key) in &parts.one_time {
            self.one_time.insert(*id);
            changes.push((id_row(ONE_TIME, *id), Some(encode_secret(&*Zeroizing::new(one_time_record(*id, key))))));
        }
        for pair in parts.pq_one_time.values() {
            self.pq_one_time.insert(pair.id);
            changes.push((id_row(PQ_ONE_TIME, pair.id), Some(encode_secret(&*Zeroizing::new(pair.to_record())))));
        }
        for pair in &parts.last_resort {
            let record = Zeroizing::new(pair.to_record());
            self.last_resort.push((pair.id, record.created_at));
            changes.push((id_row(LAST_RESORT, pair.id), Some(encode_secret(&*record))));
        }
        self.next_id = self.next_id.max(parts.next_id);
        changes
    }
}

/// A change to one row: its new plaintext, or `None` to delete it.
type Change = (Vec<u8>, Option<Zeroizing<Vec<u8>>>);

/// A row as read: sealed (for the write's precondition) and opened.
type ReadRow = (Vec<u8>, Zeroizing<Vec<u8>>);

/// The prekey rows one call read, and the changes it makes to them. Each row
/// is read once (later reads see the call's own changes), and
/// [`Self::writes`] makes every write conditional on the row as read: its
/// sealed bytes, or `Absent` for a row found absent or created under a fresh
/// id or hash.
#[derive(Default)]
pub(super) struct PreKeyRows {
    /// Row key -> the row as read, or `None`: absent.
    read: BTreeMap<Vec<u8>, Option<ReadRow>>,
    /// Row key -> its new plaintext, or `None`: deleted.
    changed: BTreeMap<Vec<u8>, Option<Zeroizing<Vec<u8>>>>,
}

impl PreKeyRows {
    /// The plaintext of row `key` as this call sees it.
    fn get<B: Backend>(
        &mut self,
        backend: &B,
        sealer: &Sealer,
        key: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        if let Some(changed) = self.changed.get(key) {
            return Ok(changed.clone());
        }
        if !self.read.contains_key(key) {
            let row = match backend.get(Table::PreKeys, key)? {
                Some(sealed) => {
                    let plaintext = sealer.open(Table::PreKeys, key, &sealed)?;
                    Some((sealed, plaintext))
                }
                None => None,
            };
            self.read.insert(key.to_vec(), row);
        }
        Ok(self.read.get(key).and_then(Option::as_ref).map(|(_, plaintext)| plaintext.clone()))
    }

    fn apply(&mut self, changes: Vec<Change>) {
        self.changed.extend(changes);
    }

    /// The conditional writes of every change (none for a row created and
    /// deleted by the same call).
    pub(super) fn writes(&self, sealer: &Sealer) -> Vec<Write> {
        let mut rng = crate::os_rng();
        self.changed
            .iter()
            .filter_map(|(key, value)| {
                let read = self.read.get(key).and_then(Option::as_ref).map(|(sealed, _)| sealed.clone());
                if read.is_none() && value.is_none() {
                    return None;
                }
                Some(Write {
                    table: Table::PreKeys,
                    key: key.clone(),
                    value: value.as_ref().map(|v| sealer.seal(&mut rng, Table::PreKeys, key, v)),
                    expected: Expected::read(read),
                })
            })
            .collect()
    }
}

/// Every row of a whole set, each created (`Absent`): a new device's, or the
/// single row of an older store migrated. Its remembered pairs, oldest first,
/// take ring slots 0, 1, ... (a repeated pair is kept once).
pub(super) fn set_rows(sealer: &Sealer, set: PreKeySet) -> PreKeyRows {
    let parts = set.into_parts();
    let mut meta = Meta::default();
    let mut changes = meta.add_keys(&parts);
    let mut lookups = BTreeSet::new();
    let mut free = 0..RING_SLOTS;
    for (signed_prekey_id, base_key) in &parts.seen_base_keys {
        if free.is_empty() {
            break;
        }
        let lookup = base_key_row(sealer, *signed_prekey_id, base_key);
        if !lookups.insert(lookup.clone()) {
            continue;
        }
        let Some(slot) = free.next() else { break };
        let pair = encode_secret(&storage::SeenBaseKey {
            signed_prekey_id: *signed_prekey_id,
            base_key: base_key.as_bytes().to_vec(),
        });
        changes.push((lookup, Some(pair.clone())));
        changes.push((id_row(RING, slot), Some(pair)));
    }
    meta.next_slot = free.start % RING_SLOTS;
    changes.push((META_ROW.to_vec(), Some(meta.to_row())));
    let mut rows = PreKeyRows::default();
    rows.apply(changes);
    rows
}

impl<B: Backend> Device<B> {
    fn row(&self, rows: &mut PreKeyRows, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        rows.get(&self.backend, &self.sealer, key)
    }

    fn meta(&self, rows: &mut PreKeyRows) -> Result<Meta, StoreError> {
        Meta::from_row(&self.row(rows, META_ROW)?.ok_or_else(corrupt)?)
    }

    fn signed_prekey(&self, rows: &mut PreKeyRows, id: u32) -> Result<Option<SignedPreKeyPair>, StoreError> {
        let Some(bytes) = self.row(rows, &id_row(SIGNED, id))? else { return Ok(None) };
        let record = decode::<storage::SignedPreKeyRecord>(&bytes)?;
        match SignedPreKeyPair::from_record(&record) {
            Ok(pair) if pair.id == id => Ok(Some(pair)),
            _ => Err(corrupt()),
        }
    }

    fn one_time_prekey(&self, rows: &mut PreKeyRows, id: u32) -> Result<Option<X25519Secret>, StoreError> {
        let Some(bytes) = self.row(rows, &id_row(ONE_TIME, id))? else { return Ok(None) };
        let record = decode::<storage::OneTimePreKeyRecord>(&bytes)?;
        match one_time_from_record(&record) {
            Ok((record_id, key)) if record_id == id => Ok(Some(key)),
            _ => Err(corrupt()),
        }
    }

    /// An ML-KEM prekey (`kind`: [`PQ_ONE_TIME`] or [`LAST_RESORT`]).
    fn pq_prekey(&self, rows: &mut PreKeyRows, kind: &[u8], id: u32) -> Result<Option<PqPreKeyPair>, StoreError> {
        let Some(bytes) = self.row(rows, &id_row(kind, id))? else { return Ok(None) };
        let record = decode::<storage::PqPreKeyRecord>(&bytes)?;
        match PqPreKeyPair::from_record(&record) {
            Ok(pair) if pair.id == id => Ok(Some(pair)),
            _ => Err(corrupt()),
        }
    }

    /// The pair of row `key` (a lookup row or a ring slot), if present.
    fn pair(&self, rows: &mut PreKeyRows, key: &[u8]) -> Result<Option<(u32, X25519PublicKey)>, StoreError> {
        let Some(bytes) = self.row(rows, key)? else { return Ok(None) };
        let pair = decode::<storage::SeenBaseKey>(&bytes)?;
        let base_key = X25519PublicKey::from_slice(&pair.base_key, "base_key").map_err(|_| corrupt())?;
        Ok(Some((pair.signed_prekey_id, base_key)))
    }

    /// Whether the pair is remembered: its lookup row exists (and names it).
    fn remembered(
        &self,
        rows: &mut PreKeyRows,
        signed_prekey_id: u32,
        base_key: &X25519PublicKey,
    ) -> Result<bool, StoreError> {
        match self.pair(rows, &base_key_row(&self.sealer, signed_prekey_id, base_key))? {
            None => Ok(false),
            Some(pair) if pair == (signed_prekey_id, *base_key) => Ok(true),
            Some(_) => Err(corrupt()),
        }
    }

    /// The prekeys `message` needs, read from their rows: none for a ratchet
    /// message, an undecodable one (the caller decoded it first) or a prekey
    /// message that its record takes without them
    /// ([`SessionRecord::needs_prekeys`]); otherwise a partial set of the
    /// rows its header names, read in the order of `Respond`'s checks
    /// (PROTOCOL.md 8.5): the signed prekey, then the remembered pair (no
    /// one-time X25519 prekey named) or the one-time X25519 prekey, then the
    /// ML-KEM prekey (one-time, else last-resort), stopping at the first
    /// that the handshake would refuse.
    pub(super) fn prekeys_for(
        &self,
        rows: &mut PreKeyRows,
        record: &SessionRecord,
        message: &Message,
    ) -> Result<PreKeySet, StoreError> {
        let Message::PreKey(prekey) = message else { return Ok(PreKeySet::empty()) };
        let header = prekey.header();
        if !record.needs_prekeys(header) {
            return Ok(PreKeySet::empty());
        }
        let (signed_id, one_time_id, pq_id) = header.prekey_ids();
        let mut parts = PreKeyParts::default();
        let Some(signed) = self.signed_prekey(rows, signed_id)? else { return Ok(PreKeySet::from_parts(parts)) };
        parts.signed.push(signed);
        match one_time_id {
            None if self.remembered(rows, signed_id, &header.base_key())? => {
                parts.seen_base_keys.push_back((signed_id, header.base_key()));
                return Ok(PreKeySet::from_parts(parts));
            }
            None => {}
            Some(id) => match self.one_time_prekey(rows, id)? {
                Some(key) => {
                    parts.one_time.insert(id, key);
                }
                None => return Ok(PreKeySet::from_parts(parts)),
            },
        }
        if let Some(pair) = self.pq_prekey(rows, PQ_ONE_TIME, pq_id)? {
            parts.pq_one_time.insert(pq_id, pair);
        } else if let Some(pair) = self.pq_prekey(rows, LAST_RESORT, pq_id)? {
            parts.last_resort.push(pair);
        }
        Ok(PreKeySet::from_parts(parts))
    }

    /// The changes that apply what a committed handshake consumed (PROTOCOL.md
    /// 6.11, 14.9), checked first: a one-time prekey already gone is
    /// `UnknownPreKey` (`OneTime` before `Pq`), a pair already remembered is
    /// `DuplicatePreKeyMessage`. Deletes the consumed one-time rows; for a
    /// pair, creates its lookup row and writes it to the next ring slot,
    /// deleting the lookup row of the pair that slot held; rewrites the index.
    fn plan_consume(
        &self,
        rows: &mut PreKeyRows,
        consumed: &ConsumedPreKeys,
    ) -> Result<Result<Vec<Change>, SessionError>, StoreError> {
        let mut meta = self.meta(rows)?;
        let mut changes = Vec::new();
        if let Some(id) = consumed.one_time {
            if self.row(rows, &id_row(ONE_TIME, id))?.is_none() {
                return Ok(Err(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, id }));
            }
            meta.one_time.remove(&id);
            changes.push((id_row(ONE_TIME, id), None));
        }
        if let Some(id) = consumed.pq_one_time {
            if self.row(rows, &id_row(PQ_ONE_TIME, id))?.is_none() {
                return Ok(Err(SessionError::UnknownPreKey { kind: PreKeyKind::Pq, id }));
            }
            meta.pq_one_time.remove(&id);
            changes.push((id_row(PQ_ONE_TIME, id), None));
        }
        if let Some((signed_prekey_id, base_key)) = consumed.base_key {
            if self.remembered(rows, signed_prekey_id, &base_key)? {
                return Ok(Err(SessionError::DuplicatePreKeyMessage));
            }
            let slot = id_row(RING, meta.next_slot);
            if let Some((old_id, old_key)) = self.pair(rows, &slot)? {
                // The oldest pair: its lookup row must be there, naming it.
                if !self.remembered(rows, old_id, &old_key)? {
                    return Err(corrupt());
                }
                changes.push((base_key_row(&self.sealer, old_id, &old_key), None));
            }
            let pair =
                encode_secret(&storage::SeenBaseKey { signed_prekey_id, base_key: base_key.as_bytes().to_vec() });
            changes.push((base_key_row(&self.sealer, signed_prekey_id, &base_key), Some(pair.clone())));
            changes.push((slot, Some(pair)));
            // `next_slot` is below `RING_SLOTS` (checked when the index is
            // loaded); the last slot is followed by the first.
            meta.next_slot = meta.next_slot.checked_add(1).filter(|&next| next < RING_SLOTS).unwrap_or(0);
        }
        changes.push((META_ROW.to_vec(), Some(meta.to_row())));
        Ok(Ok(changes))
    }

    /// The prekey writes of a commit: what `consumed` deletes and adds,
    /// conditional on the rows as this call reads them now.
    ///
    /// # Errors
    /// `UnknownPreKey` or `DuplicatePreKeyMessage` as [`Self::plan_consume`]; a store error.
    pub(super) fn consume_writes(&self, consumed: &ConsumedPreKeys) -> Result<Vec<Write>, DeviceError> {
        let mut rows = PreKeyRows::default();
        let changes = self.plan_consume(&mut rows, consumed)??;
        rows.apply(changes);
        Ok(rows.writes(&self.sealer))
    }

    /// Decrypts one message of a batch against `record` and the batch's
    /// prekey rows, and commits it to both in memory: later messages see the
    /// one-time prekeys it consumed as gone and its pair as remembered.
    /// Returns the message's own result (a failed message changes nothing);
    /// a store error fails the whole batch.
    pub(super) fn decrypt_in_batch(
        &self,
        rows: &mut PreKeyRows,
        (row, loaded, record): (&[u8], &mut LoadedRows, &mut SessionRecord),
        peer: &Address,
        ciphertext: &[u8],
    ) -> Result<Result<Vec<u8>, SessionError>, StoreError> {
        let message = match Message::from_bytes(ciphertext) {
            Ok(message) => message,
            // A group message is for `decrypt` (PROTOCOL.md 18.10).
            Err(crate::DecodeError::UnknownKind) if crate::group::GroupMessage::from_bytes(ciphertext).is_ok() => {
                return Ok(Err(SessionError::NotInBatch));
            }
            Err(e) => return Ok(Err(e.into())),
        };
        // A sender its user's pinned list does not name (PROTOCOL.md 23.5).
        if let Some(identity) = super::sessions::sender_identity(&message, record) {
            match self.check_listed(peer, &identity) {
                Ok(()) => {}
                Err(DeviceError::DeviceList(crate::user::DeviceListError::UnlistedDevice { device_id })) => {
                    return Ok(Err(SessionError::UnlistedDevice { device_id }));
                }
                Err(DeviceError::Store(e)) => return Err(e),
                Err(_) => return Err(StoreError::Corrupt { table: Table::Users }),
            }
        }
        let prekeys = self.prekeys_for(rows, record, &message)?;
        let id = crate::heal::message_id(ciphertext);
        let pending = match self.decrypt_loading_seeds((row, loaded, record), peer, &prekeys, &message)? {
            Ok(pending) => pending,
            // A message a resend brought already (PROTOCOL.md 20.6).
            Err(_) if record.healing().was_resent(&id) => return Ok(Err(crate::DecryptError::Resent.into())),
            Err(e) => return Ok(Err(e)),
        };
        // Control content is acted on by `decrypt` and `commit` alone: left
        // unconsumed here, for the app to decrypt by itself.
        if pending.content() == crate::padding::ContentType::Control {
            return Ok(Err(SessionError::NotInBatch));
        }
        let consumed = pending.consumed_prekeys();
        let changes = if consumed.is_empty() {
            Vec::new()
        } else {
            match self.plan_consume(rows, &consumed)? {
                Ok(changes) => changes,
                Err(e) => return Ok(Err(e)),
            }
        };
        // The first copy of a message a resend brought already.
        if record.healing().was_resent(&id) {
            return Ok(Err(crate::DecryptError::Resent.into()));
        }
        let plaintext = pending.plaintext().to_vec();
        if let Err(e) = record.commit(pending) {
            return Ok(Err(e));
        }
        // A message a reset named, read as first sent: its resend is no
        // longer for the app.
        if record.healing().awaits(&id) {
            record.healing_mut().read_first(&id);
        }
        rows.apply(changes);
        Ok(Ok(plaintext))
    }

    /// Converts the single prekey row of a store written before prekeys were
    /// kept one row per key (PROTOCOL.md 14.7) into rows, in one transaction;
    /// does nothing when there is none.
    pub(super) fn migrate_prekeys(&self) -> Result<(), DeviceError> {
        let Some(sealed) = self.backend.get(Table::PreKeys, LEGACY_ROW)? else { return Ok(()) };
        let bytes = self.open_sealed(Table::PreKeys, LEGACY_ROW, &sealed)?;
        let set = PreKeySet::from_bytes(&bytes).map_err(|_| corrupt())?;
        if self.backend.get(Table::PreKeys, META_ROW)?.is_some() {
            // Both formats at once: no release writes that.
            return Err(corrupt().into());
        }
        let mut writes = set_rows(&self.sealer, set).writes(&self.sealer);
        writes.push(Write {
            table: Table::PreKeys,
            key: LEGACY_ROW.to_vec(),
            value: None,
            expected: Expected::Value(sealed),
        });
        self.write(&writes)?;
        Ok(())
    }

    /// A partial set for the first `k` bundles (PROTOCOL.md 6.10): the
    /// current signed prekey, the `k` lowest one-time prekeys of each kind,
    /// and the current last-resort key if fewer than `k` one-time ML-KEM
    /// prekeys are held.
    /// The prekeys of `k` bundles: the current signed prekey, the one-time
    /// prekeys `one_time` and `pq_one_time`, and the last-resort prekey if
    /// there are fewer than `k` of the latter.
    fn bundle_set(
        &self,
        rows: &mut PreKeyRows,
        meta: &Meta,
        one_time: &[u32],
        pq_one_time: &[u32],
        k: usize,
    ) -> Result<PreKeySet, StoreError> {
        let mut parts = PreKeyParts::default();
        let (signed_id, _) = meta.signed.last().ok_or_else(corrupt)?;
        parts.signed.push(self.signed_prekey(rows, *signed_id)?.ok_or_else(corrupt)?);
        for &id in one_time {
            parts.one_time.insert(id, self.one_time_prekey(rows, id)?.ok_or_else(corrupt)?);
        }
        for &id in pq_one_time {
            parts.pq_one_time.insert(id, self.pq_prekey(rows, PQ_ONE_TIME, id)?.ok_or_else(corrupt)?);
        }
        if pq_one_time.len() < k {
            let (last_resort_id, _) = meta.last_resort.last().ok_or_else(corrupt)?;
            parts.last_resort.push(self.pq_prekey(rows, LAST_RESORT, *last_resort_id)?.ok_or_else(corrupt)?);
        }
        Ok(PreKeySet::from_parts(parts))
    }

    /// Keeps at most [`MAX_ONE_TIME_PREKEYS`] one-time prekeys of each kind
    /// by deleting the lowest ids: keys handed out long ago and never
    /// consumed (every unoffered key has a higher id than every handed-out
    /// one, and a refill adds at most that many unoffered keys). A contact
    /// still holding a bundle with one of them gets `out_of_step`, and heals.
    fn prune_handed_out(&self, rows: &mut PreKeyRows, meta: &mut Meta) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        for (ids, kind) in [(&mut meta.one_time, ONE_TIME), (&mut meta.pq_one_time, PQ_ONE_TIME)] {
            while ids.len() > MAX_ONE_TIME_PREKEYS {
                let Some(id) = ids.pop_first() else { break };
                // Read, so that the delete is conditional on the row as read.
                self.row(rows, &id_row(kind, id))?.ok_or_else(corrupt)?;
                changes.push((id_row(kind, id), None));
            }
        }
        Ok(changes)
    }

    /// Deletes the oldest entries of `entries` (rows of `kind`) beyond `max`.
    fn prune(
        &self,
        rows: &mut PreKeyRows,
        entries: &mut Vec<(u32, u64)>,
        kind: &[u8],
        max: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        while entries.len() > max {
            let (id, _) = entries.remove(0);
            // Read, so that the delete is conditional on the row as read.
            self.row(rows, &id_row(kind, id))?.ok_or_else(corrupt)?;
            changes.push((id_row(kind, id), None));
        }
        Ok(changes)
    }

    /// A bundle for one contact to start a session with, as the server
    /// hands it out: a signed prekey, a last-resort or one-time ML-KEM
    /// prekey, and a one-time X25519 prekey. Every call offers one-time
    /// prekeys no earlier call offered (the device remembers what it handed
    /// out), so two contacts never get the same one: a one-time prekey
    /// offered twice lets only the first contact's session start. When every
    /// one-time prekey has been handed out, the bundle offers the signed and
    /// last-resort keys only (sessions still start; refill with
    /// [`Self::refill_prekeys`]). It writes to the store.
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// # use samizdat::{address::Address, device::Device};
    /// # let dir = std::env::temp_dir().join(format!("samizdat-doc-bundle-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = |name: &str| dir.join(name);
    /// let bob = Device::create(path("bob.db"), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
    /// let alice = Device::create(path("alice.db"), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// let carol = Device::create(path("carol.db"), &StorageKey::from_bytes([3; 32]), Address::new("carol", 1)?, SystemTime::now())?;
    /// // Two contacts, two bundles: both sessions start.
    /// alice.start_session(&bob.prekey_bundle()?)?;
    /// carol.start_session(&bob.prekey_bundle()?)?;
    /// for (contact, text) in [(&alice, "from alice"), (&carol, "from carol")] {
    ///     let pending = bob.decrypt(contact.address(), &contact.encrypt(bob.address(), text.as_bytes())?)?;
    ///     assert_eq!(pending.plaintext(), text.as_bytes());
    ///     bob.commit(pending)?;
    /// }
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A store error.
    pub fn prekey_bundle(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(self.prekey_bundles(1)?.into_iter().next().unwrap_or_default())
    }

    /// Up to `count` bundles with distinct one-time prekeys that no earlier
    /// bundle offered, for a server to hand out one per requester (as
    /// [`Self::prekey_bundle`], in one write). There are as many as there
    /// are such one-time prekeys (of either kind), and at least one (for
    /// `count` above 0): when none is left, the one bundle offers only the
    /// signed and the last-resort keys.
    ///
    /// # Errors
    /// A store error.
    pub fn prekey_bundles(&self, count: usize) -> Result<Vec<Vec<u8>>, DeviceError> {
        self.check_process()?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let _guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let mut rows = PreKeyRows::default();
            let mut meta = self.meta(&mut rows)?;
            // The lowest `count` ids of each kind that no bundle offered.
            let unused = |ids: &BTreeSet<u32>, from: u32| ids.range(from..).take(count).copied().collect::<Vec<_>>();
            let (one_time, pq_one_time) =
                (unused(&meta.one_time, meta.handed_out), unused(&meta.pq_one_time, meta.pq_handed_out));
            let k = one_time.len().max(pq_one_time.len()).max(1);
            let prekeys = self.bundle_set(&mut rows, &meta, &one_time, &pq_one_time, k)?;
            // Our own signed device list, if the app set one (PROTOCOL.md 23.5).
            let own_list = self.load_user(self.address.user_id())?.trust;
            let bundles: Vec<Vec<u8>> = (0..k)
                .filter_map(|n| prekeys.bundle_skipping(&self.identity, &self.address, n))
                .map(|mut bundle| {
                    bundle.device_list =
                        own_list.as_ref().map(|trust| (trust.signed_list().clone(), trust.list().clone()));
                    bundle.to_bytes()
                })
                .collect();
            // Handed out: nothing at or below the last id offered is offered again.
            let after = |ids: &[u32], cursor: u32| ids.last().map_or(cursor, |id| id.saturating_add(1));
            let (handed_out, pq_handed_out) =
                (after(&one_time, meta.handed_out), after(&pq_one_time, meta.pq_handed_out));
            if (handed_out, pq_handed_out) != (meta.handed_out, meta.pq_handed_out) {
                meta.handed_out = handed_out;
                meta.pq_handed_out = pq_handed_out;
                rows.apply(vec![(META_ROW.to_vec(), Some(meta.to_row()))]);
                self.write(&rows.writes(&self.sealer))?;
            }
            Ok(bundles)
        })
    }

    /// How many one-time prekeys are held: `(X25519, ML-KEM)`, whether a
    /// bundle offered them or not (they are deleted once consumed).
    ///
    /// # Errors
    /// A store error.
    pub fn prekey_counts(&self) -> Result<(usize, usize), DeviceError> {
        self.check_process()?;
        let meta = self.meta(&mut PreKeyRows::default())?;
        Ok((meta.one_time.len(), meta.pq_one_time.len()))
    }

    /// If fewer than `threshold` one-time prekeys of either kind are left to
    /// hand out (offered by no bundle yet), adds prekeys of each kind until
    /// `target` of each are; returns how many were added in all. Upload new
    /// bundles afterwards. Keys handed out but not consumed yet stay for the
    /// contacts that have them, up to [`MAX_ONE_TIME_PREKEYS`] held of each
    /// kind: past that, the oldest of them are deleted (a contact still
    /// holding one gets `out_of_step` and heals). Call it regularly: it does
    /// nothing while enough keys are left to hand out.
    ///
    /// # Errors
    /// [`PreKeyError::LimitReached`](crate::prekeys::PreKeyError::LimitReached) if `target` is above
    /// [`MAX_ONE_TIME_PREKEYS`]; a store error.
    pub fn refill_prekeys(&self, threshold: usize, target: usize, now: SystemTime) -> Result<usize, DeviceError> {
        self.check_process()?;
        let _guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let mut rows = PreKeyRows::default();
            let mut meta = self.meta(&mut rows)?;
            // What bundles can still offer: keys handed out but not consumed
            // yet are held for the contacts that have them, not counted.
            let unoffered = meta.unoffered();
            if unoffered.0.min(unoffered.1) >= threshold {
                return Ok(0);
            }
            let mut fresh = PreKeySet::from_parts(PreKeyParts { next_id: meta.next_id, ..PreKeyParts::default() });
            let (added_classic, added_pq) =
                fresh.top_up_from(&mut crate::os_rng(), &self.identity, unoffered, target, now)?;
            // Each is at most `MAX_ONE_TIME_PREKEYS`: never saturates.
            let added = added_classic.saturating_add(added_pq);
            if added > 0 {
                let mut changes = meta.add_keys(&fresh.into_parts());
                changes.extend(self.prune_handed_out(&mut rows, &mut meta)?);
                changes.push((META_ROW.to_vec(), Some(meta.to_row())));
                rows.apply(changes);
                self.write(&rows.writes(&self.sealer))?;
            }
            Ok(added)
        })
    }

    /// Rotates the signed prekey and the last-resort ML-KEM prekey if they
    /// are older than `max_age` at `now` (the app drives the clock
    /// and the schedule). Previous keys are kept a while for messages in flight.
    ///
    /// # Errors
    /// A store error.
    pub fn rotate_prekeys(&self, now: SystemTime, max_age: Duration) -> Result<Rotated, DeviceError> {
        let (at_time, now_seconds, max_age) = (now, unix_seconds(now), max_age.as_secs());
        self.check_process()?;
        let _guard = lock(&self.prekey_lock);
        retry_on_conflict(|| {
            let mut rows = PreKeyRows::default();
            let mut meta = self.meta(&mut rows)?;
            let due =
                |current: Option<&(u32, u64)>| current.is_none_or(|(_, at)| now_seconds.saturating_sub(*at) >= max_age);
            let rotated =
                Rotated { signed_prekey: due(meta.signed.last()), last_resort_prekey: due(meta.last_resort.last()) };
            if !rotated.signed_prekey && !rotated.last_resort_prekey {
                return Ok(rotated);
            }
            let mut rng = crate::os_rng();
            let mut fresh = PreKeySet::from_parts(PreKeyParts { next_id: meta.next_id, ..PreKeyParts::default() });
            if rotated.signed_prekey {
                fresh.rotate_signed_prekey(&mut rng, &self.identity, at_time)?;
            }
            if rotated.last_resort_prekey {
                fresh.rotate_last_resort_prekey(&mut rng, &self.identity, at_time)?;
            }
            let mut changes = meta.add_keys(&fresh.into_parts());
            // A signed prekey rotated out leaves its remembered pairs in the
            // ring until they are evicted: a message naming it fails with
            // `UnknownPreKey` before they are looked up (PROTOCOL.md 6.11).
            changes.extend(self.prune(&mut rows, &mut meta.signed, SIGNED, MAX_SIGNED_PREKEYS)?);
            changes.extend(self.prune(&mut rows, &mut meta.last_resort, LAST_RESORT, MAX_LAST_RESORT_PREKEYS)?);
            changes.push((META_ROW.to_vec(), Some(meta.to_row())));
            rows.apply(changes);
            self.write(&rows.writes(&self.sealer))?;
            Ok(rotated)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use crate::store::StorageKey;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::{SessionError, store::MemoryBackend};

    /// Replaces a device's prekey rows by `set` in the single row of the
    /// previous format, written as the previous release wrote it:
    /// `SealRow(prekeys, "self", set.to_bytes())`.
    fn write_legacy_row<B: Backend>(device: &Device<B>, set: &PreKeySet) {
        let mut writes: Vec<Write> = device
            .backend
            .scan(Table::PreKeys)
            .unwrap()
            .into_iter()
            .map(|(key, value)| Write { table: Table::PreKeys, key, value: None, expected: Expected::Value(value) })
            .collect();
        let value = device.sealer.seal(&mut crate::os_rng(), Table::PreKeys, LEGACY_ROW, &set.to_bytes());
        writes.push(Write {
            table: Table::PreKeys,
            key: LEGACY_ROW.to_vec(),
            value: Some(value),
            expected: Expected::Absent,
        });
        device.backend.apply(&writes).unwrap();
    }

    /// A first message to `bob` from a new peer, from the bundle `n` of `set`.
    fn first_message(
        rng: &mut ChaCha20Rng,
        bob: &Device<impl Backend>,
        set: &PreKeySet,
        n: usize,
        name: &str,
    ) -> (Address, Vec<u8>) {
        let peer = Address::new(name, 1).unwrap();
        let identity = crate::keys::IdentityKeyPair::generate(rng);
        let bundle = set.bundle_skipping(&bob.identity, &bob.address, n).unwrap();
        let mut record = SessionRecord::new();
        record.initiate(rng, &identity, &peer, &bundle).unwrap();
        (peer.clone(), record.encrypt(rng, name.as_bytes()).unwrap())
    }

    #[test]
    fn a_store_with_the_single_prekey_row_is_converted_when_opened() {
        let dir = std::env::temp_dir().join(format!("samizdat-prekey-migration-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bob.db");
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let bob = Device::create(&path, &StorageKey::from_bytes([2; 32]), Address::new("bob", 1).unwrap(), UNIX_EPOCH)
            .unwrap();
        // The previous format's prekey set: three one-time pairs, one used by
        // a committed handshake (Dave's), and the pair of a committed
        // handshake without a one-time prekey remembered (Carol's).
        let mut set = PreKeySet::new(&mut rng, &bob.identity, UNIX_EPOCH);
        set.add_one_time_prekeys(&mut rng, &bob.identity, 3, UNIX_EPOCH).unwrap();
        let dave = first_message(&mut rng, &bob, &set, 0, "dave");
        let carol = first_message(&mut rng, &bob, &set, 3, "carol");
        for (peer, wire) in [&dave, &carol] {
            let mut record = SessionRecord::new();
            let (_, consumed) =
                record.decrypt_and_commit(&mut rng, &bob.identity, &bob.address, peer, &set, wire).unwrap();
            set.consume(&consumed);
        }
        let erin = first_message(&mut rng, &bob, &set, 0, "erin");
        write_legacy_row(&bob, &set);
        let before = bob.backend.scan(Table::PreKeys).unwrap();
        assert_eq!(before.len(), 1);
        drop(bob);

        let bob = Device::open(&path, &StorageKey::from_bytes([2; 32])).unwrap();
        let rows = bob.backend.scan(Table::PreKeys).unwrap();
        assert!(rows.iter().all(|(key, _)| key != LEGACY_ROW), "the single row is gone");
        // signed, last-resort, two pairs of one-time prekeys, the meta row,
        // and Carol's pair (a lookup row and ring slot 0).
        assert_eq!(rows.len(), 9, "{:?}", rows.iter().map(|(k, _)| k).collect::<Vec<_>>());
        assert!(rows.iter().any(|(key, _)| *key == id_row(RING, 0)));
        assert_eq!(bob.prekey_counts().unwrap(), (2, 2));
        // Opening again changes nothing.
        drop(bob);
        let bob = Device::open(&path, &StorageKey::from_bytes([2; 32])).unwrap();
        assert_eq!(bob.backend.scan(Table::PreKeys).unwrap(), rows);
        // The converted set works: Erin's message (made from the old set)
        // decrypts; Carol's replay is a duplicate device-wide, Dave's names a
        // one-time prekey that is gone.
        let pending = bob.decrypt(&erin.0, &erin.1).unwrap();
        assert_eq!(pending.plaintext(), b"erin");
        bob.commit(pending).unwrap();
        assert_eq!(bob.prekey_counts().unwrap(), (1, 1));
        assert!(matches!(
            bob.decrypt(&carol.0, &carol.1),
            Err(DeviceError::Session(SessionError::DuplicatePreKeyMessage))
        ));
        assert!(matches!(
            bob.decrypt(&dave.0, &dave.1),
            Err(DeviceError::Session(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, .. }))
        ));
        // The next remembered pair takes ring slot 1.
        let frank = first_message(&mut rng, &bob, &set, 5, "frank");
        bob.commit(bob.decrypt(&frank.0, &frank.1).unwrap()).unwrap();
        assert!(bob.backend.get(Table::PreKeys, &id_row(RING, 1)).unwrap().is_some());
        drop(bob);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_with_both_formats_is_corrupt() {
        let store = std::sync::Arc::new(MemoryBackend::new());
        let bob = Device::create_in(
            store.clone(),
            &StorageKey::from_bytes([2; 32]),
            Address::new("bob", 1).unwrap(),
            UNIX_EPOCH,
        )
        .unwrap();
        let set = PreKeySet::new(&mut crate::os_rng(), &bob.identity, UNIX_EPOCH);
        let value = bob.sealer.seal(&mut crate::os_rng(), Table::PreKeys, LEGACY_ROW, &set.to_bytes());
        store
            .apply(&[Write {
                table: Table::PreKeys,
                key: LEGACY_ROW.to_vec(),
                value: Some(value),
                expected: Expected::Absent,
            }])
            .unwrap();
        let before = store.snapshot();
        let result = Device::open_in(store.clone(), &StorageKey::from_bytes([2; 32]));
        assert!(matches!(result, Err(DeviceError::Store(StoreError::Corrupt { table: Table::PreKeys }))), "{result:?}");
        assert_eq!(store.snapshot(), before);
    }

    #[test]
    fn a_damaged_index_is_a_store_error() {
        let bob = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([2; 32]),
            Address::new("bob", 1).unwrap(),
            UNIX_EPOCH,
        )
        .unwrap();
        let mut rows = PreKeyRows::default();
        let meta = bob.meta(&mut rows).unwrap();
        // An index whose id is not below the counter, or whose ring slot is
        // out of range.
        for bad in [
            Meta { next_id: 2, signed: meta.signed.clone(), last_resort: meta.last_resort.clone(), ..Meta::default() },
            Meta {
                next_id: meta.next_id,
                signed: meta.signed.clone(),
                last_resort: meta.last_resort.clone(),
                next_slot: RING_SLOTS,
                ..Meta::default()
            },
        ] {
            assert!(matches!(Meta::from_row(&bad.to_row()), Err(StoreError::Corrupt { table: Table::PreKeys })));
        }
        assert!(Meta::from_row(&meta.to_row()).is_ok());
    }
}
