//! The root chain: `RK` and the root step `KDF_RK_HE`.

use std::fmt;

use super::{chain::ChainKey, header::HeaderKey};
use crate::{kdf, keys::Secret32};

/// The root key `RK`. Each DH ratchet step feeds one X25519 output into it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RootKey(Secret32);

impl RootKey {
    pub(crate) fn new(key: Secret32) -> Self {
        Self(key)
    }

    /// `KDF_RK_HE(RK, dh_out)`: the next root key, a new chain key (index 0)
    /// and the next header key of that direction.
    pub(crate) fn advance(&self, dh_output: &[u8; 32]) -> (RootKey, ChainKey, HeaderKey) {
        let out = kdf::root_step(self.0.as_bytes(), dh_output);
        (
            RootKey(Secret32::from_zeroizing(&out.root_key)),
            ChainKey::new(Secret32::from_zeroizing(&out.chain_key), 0),
            HeaderKey::new(Secret32::from_zeroizing(&out.next_header_key)),
        )
    }

    pub(crate) fn as_secret(&self) -> &Secret32 {
        &self.0
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey").finish_non_exhaustive()
    }
}
