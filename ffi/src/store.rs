//! The store as an app administers it (PROTOCOL.md 14.9, 14.12): the peers
//! it keeps, deleting one, the skipped keys of one, and the rotation of the
//! storage key. Translation only, as in the rest of the crate.

use samizdat::{device, store::Scrub};

use crate::{Address, Device, FilePath, SamizdatError, ScrubResult, error::Details, key32};

#[uniffi::export]
impl Device {
    /// Every peer device this device keeps a record of (a session, or only a
    /// trusted identity), in no particular order. It reads every session
    /// row: for a settings screen, not per message.
    pub fn peers(&self) -> Result<Vec<Address>, SamizdatError> {
        Ok(self.inner.peers()?.iter().map(Address::from).collect())
    }

    /// Deletes everything kept of `peer` (its session, skipped keys,
    /// trusted identity and outbox) in one transaction; returns whether
    /// there was anything. Call `scrub` afterwards to remove every copy from
    /// the files now.
    pub fn delete_session(&self, peer: Address) -> Result<bool, SamizdatError> {
        Ok(self.inner.delete_session(&peer.to_core()?)?)
    }

    /// Checks the whole store for damage, changing nothing. Opening checks
    /// a store of at most 4 MiB whole; a larger one is checked page by page
    /// as it is read, so call this in the background now and then (about
    /// 0.2 s for 100,000 sessions). Damage is `StoreFailure`.
    pub fn check_integrity(&self) -> Result<(), SamizdatError> {
        Ok(self.inner.check_integrity()?)
    }

    /// How many skipped message keys (for messages of `peer` that have not
    /// arrived) the store holds.
    pub fn skipped_key_count(&self, peer: Address) -> Result<i32, SamizdatError> {
        let count = self.inner.skipped_key_count(&peer.to_core()?)?;
        Ok(crate::to_i32(count))
    }
}

/// Re-seals every row of the store at `path` under `new_key`, in one
/// transaction, then scrubs its files, so that nothing sealed under
/// `old_key` can be opened once the app destroys it. Close every `Device`
/// of the store first (one left open fails with `WrongStorageKey` until it
/// is opened again with the new key). Keep both keys in the keystore until
/// this returns: a crash midway leaves the store under `old_key`.
#[uniffi::export]
pub fn rotate_storage_key(path: FilePath, old_key: Vec<u8>, new_key: Vec<u8>) -> Result<ScrubResult, SamizdatError> {
    let (old_key, new_key) = (key32(old_key)?, key32(new_key)?);
    match device::Device::rotate_storage_key(path.into_path("path")?, &old_key, &new_key)? {
        Scrub::Done => Ok(ScrubResult::Done),
        Scrub::Deferred => Ok(ScrubResult::Deferred),
        other => Err(SamizdatError::from_core(
            samizdat::ErrorKind::StoreFailure,
            format!("the store did not scrub ({other:?})"),
            Details::None,
        )),
    }
}
