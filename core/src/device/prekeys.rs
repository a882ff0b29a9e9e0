//! The device's own prekeys: bundles to upload, upkeep, and what a
//! committed handshake consumes.

use crate::{
    PreKeyKind, SessionError,
    prekeys::{ConsumedPreKeys, PreKeySet},
    session::SessionRecord,
    store::{Backend, Expected, Sealer, StoreError, Table, Write},
    wire::Message,
};

use super::{Device, DeviceError, Rotated, SINGLE_ROW, lock, pending::LoadedPreKeys, retry_on_conflict};

impl<B: Backend> Device<B> {
    /// The prekey row as read (sealed) and the set it holds.
    pub(super) fn load_prekeys(&self) -> Result<LoadedPreKeys, StoreError> {
        let sealed =
            self.backend.get(Table::PreKeys, SINGLE_ROW)?.ok_or(StoreError::Corrupt { table: Table::PreKeys })?;
        let bytes = self.sealer.open(Table::PreKeys, SINGLE_ROW, &sealed)?;
        let set = PreKeySet::from_bytes(&bytes).map_err(|_| StoreError::Corrupt { table: Table::PreKeys })?;
        Ok((sealed, set))
    }

    /// The prekeys `message` needs: none for a ratchet message, or for a
    /// prekey message that its record takes without them
    /// ([`SessionRecord::needs_prekeys`]: it goes to a state of the record,
    /// or its base key is one the record remembers); the set otherwise.
    pub(super) fn prekeys_for(&self, record: &SessionRecord, message: &Message) -> Result<PreKeySet, StoreError> {
        match message {
            Message::PreKey(prekey) if record.needs_prekeys(prekey.header()) => Ok(self.load_prekeys()?.1),
            _ => Ok(PreKeySet::empty()),
        }
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
    /// [`PreKeyError::LimitReached`](crate::prekeys::PreKeyError::LimitReached) if `target` is above
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
}

/// Deletes consumed prekeys, refusing if one is already gone (another session
/// used the same one-time key first).
pub(super) fn consume_checked(prekeys: &mut PreKeySet, consumed: &ConsumedPreKeys) -> Result<(), SessionError> {
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

/// The write of the prekey row, conditional on `expected`.
pub(super) fn prekeys_write(sealer: &Sealer, prekeys: &PreKeySet, expected: Expected) -> Write {
    let value = sealer.seal(&mut crate::os_rng(), Table::PreKeys, SINGLE_ROW, &prekeys.to_bytes());
    Write { table: Table::PreKeys, key: SINGLE_ROW.to_vec(), value: Some(value), expected }
}
