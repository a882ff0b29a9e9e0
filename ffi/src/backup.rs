//! Encrypted backup and restore (PROTOCOL.md 21): a device's identity and
//! trust decisions sealed under a key derived from the user's passphrase
//! with Argon2id, restored on a new installation, whose sessions then heal
//! (PROTOCOL.md 20). Translation only, as in the rest of the crate.
//!
//! - [`Device::export_backup`] makes the file; [`BackupParams`] states its
//!   Argon2id cost ([`backup_params_recommended`]: 64 MiB, 3 passes, 1 lane;
//!   [`backup_params_minimum`]: the least an export takes).
//! - [`Device::restore`] makes a new store from it: the identity and
//!   address, fresh prekeys, and the trust decisions, no session. A peer's
//!   message on the old session is then [`SamizdatError::OutOfStep`]: heal
//!   (`Device.heal`), and the peer sends again what its outbox holds.
//! - A wrong passphrase, or an altered file, is
//!   [`SamizdatError::WrongStorageKey`]; a file that is not a backup,
//!   [`SamizdatError::InvalidArgument`]; parameters out of bounds,
//!   [`SamizdatError::LimitExceeded`] (refused before any key is derived).

use std::sync::Arc;

use samizdat::device;
use zeroize::Zeroizing;

use crate::{Device, FilePath, SamizdatError, Timestamp, key32};

/// The Argon2id parameters of a backup: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct BackupParams {
    /// Memory, in KiB (Argon2's `m`).
    pub memory_kib: i64,
    /// Passes over the memory (Argon2's `t`).
    pub iterations: i64,
    /// Lanes (Argon2's `p`).
    pub parallelism: i64,
}

impl From<device::BackupParams> for BackupParams {
    fn from(params: device::BackupParams) -> Self {
        Self {
            memory_kib: i64::from(params.memory_kib),
            iterations: i64::from(params.iterations),
            parallelism: i64::from(params.parallelism),
        }
    }
}

impl TryFrom<BackupParams> for device::BackupParams {
    type Error = SamizdatError;

    /// Each parameter must fit Argon2's 32 bits (the core checks the rest).
    fn try_from(params: BackupParams) -> Result<Self, SamizdatError> {
        let field = |name: &str, value: i64| {
            u32::try_from(value)
                .map_err(|_| SamizdatError::invalid_argument(format!("{name} is outside 0 to {}: {value}", u32::MAX)))
        };
        Ok(Self {
            memory_kib: field("memory_kib", params.memory_kib)?,
            iterations: field("iterations", params.iterations)?,
            parallelism: field("parallelism", params.parallelism)?,
        })
    }
}

/// The default parameters: 64 MiB, 3 passes, 1 lane (RFC 9106's second
/// recommended option, with one lane for phones).
#[uniffi::export]
pub fn backup_params_recommended() -> BackupParams {
    device::BackupParams::RECOMMENDED.into()
}

/// The weakest parameters an export takes: 19 MiB, 2 passes, 1 lane.
#[uniffi::export]
pub fn backup_params_minimum() -> BackupParams {
    device::BackupParams::MINIMUM.into()
}

/// The parameters a backup file states, read without the passphrase (to
/// tell the user how long a restore takes).
#[uniffi::export]
pub fn backup_params_of(backup: Vec<u8>) -> Result<BackupParams, SamizdatError> {
    Ok(device::BackupParams::of_file(&backup).map_err(device::DeviceError::from)?.into())
}

#[uniffi::export]
impl Device {
    /// An encrypted backup of this device's identity and trust decisions,
    /// under `passphrase` (its bytes as given: normalize them the same way
    /// at restore) with `params`. `now` is recorded as its creation time.
    /// Nothing is written.
    pub fn export_backup(
        &self,
        passphrase: Vec<u8>,
        params: BackupParams,
        now: Timestamp,
    ) -> Result<Vec<u8>, SamizdatError> {
        let passphrase = Zeroizing::new(passphrase);
        Ok(self.inner.export_backup(&passphrase, params.try_into()?, crate::at(now)?)?)
    }

    /// Restores `backup` into a new SQLite database at `path` under
    /// `storage_key`: the identity, the address, fresh prekeys and the trust
    /// decisions (no session: they heal). Refuses a store that holds a
    /// device; a wrong passphrase creates no file.
    #[uniffi::constructor]
    pub fn restore(
        path: FilePath,
        storage_key: Vec<u8>,
        backup: Vec<u8>,
        passphrase: Vec<u8>,
        now: Timestamp,
    ) -> Result<Arc<Self>, SamizdatError> {
        let (key, passphrase) = (key32(storage_key)?, Zeroizing::new(passphrase));
        Ok(Arc::new(Self {
            inner: device::Device::restore(path.into_path("path")?, &key, &backup, &passphrase, crate::at(now)?)?,
        }))
    }
}
