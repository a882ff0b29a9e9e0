//! Symmetric-key chains: `CK_{i}` and the chain step.

use std::fmt;

use super::message_key::MessageKey;
use crate::{kdf, keys::Secret32};

/// A chain key `CK` at index `i`: the key of message `i` is derived from it,
/// and stepping it yields `CK` at `i + 1`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ChainKey {
    key: Secret32,
    index: u32,
}

impl ChainKey {
    pub(crate) fn new(key: Secret32, index: u32) -> Self {
        Self { key, index }
    }

    /// The index `i` of the message this chain key derives next.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The message key of index `i`: seed `HMAC(CK, 0x01)`.
    pub(crate) fn message_key(&self) -> MessageKey {
        MessageKey::new(Secret32::from_zeroizing(&kdf::chain_message_seed(self.key.as_bytes())), self.index)
    }

    /// `CK_{i+1} = HMAC(CK_i, 0x02)`; `None` when the index would overflow.
    pub(crate) fn next(&self) -> Option<ChainKey> {
        let index = self.index.checked_add(1)?;
        #[cfg(test)]
        STEPS.with(|steps| steps.set(steps.get() + 1));
        Some(ChainKey { key: Secret32::from_zeroizing(&kdf::chain_next(self.key.as_bytes())), index })
    }

    pub(crate) fn as_secret(&self) -> &Secret32 {
        &self.key
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKey").field("index", &self.index).finish_non_exhaustive()
    }
}

#[cfg(test)]
thread_local! {
    /// Chain steps taken by this thread: what unit tests count to check that
    /// a refusal did not derive keys again.
    pub(crate) static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
