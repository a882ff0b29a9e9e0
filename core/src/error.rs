//! Error types, one per operation.
//!
//! Every error is `#[non_exhaustive]` and carries structure rather than
//! strings. Failures of authentication are deliberately opaque
//! ([`DecryptError::Unauthenticated`]): telling a forger *which* check failed
//! would help them.

use thiserror::Error;

/// Bytes from the wire or from a store that do not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is empty.
    #[error("empty input")]
    Empty,
    /// The input is longer than the limit for its kind.
    #[error("input of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The leading version byte (wire) or version field (storage) is not one
    /// this release understands.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// The bytes are not the one canonical protobuf encoding of a value of
    /// the expected type: malformed, or another encoding of a well-formed
    /// value (unknown, reordered or repeated fields, non-minimal varints,
    /// out-of-range values, trailing bytes). PROTOCOL.md 12.3 and 12.4.
    #[error("not a canonical protobuf encoding")]
    Protobuf,
    /// The envelope carries no message kind this release knows.
    #[error("unknown message kind")]
    UnknownKind,
    /// A required field is missing or empty.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong length.
    #[error("field `{field}` has {actual} bytes, expected {expected}")]
    InvalidLength {
        /// The field.
        field: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        actual: usize,
    },
    /// A field's value is out of range or the record breaks an invariant of
    /// the protocol (for example more skipped keys than the limit).
    #[error("invalid value in `{0}`")]
    InvalidValue(&'static str),
}

impl From<prost::DecodeError> for DecodeError {
    fn from(_: prost::DecodeError) -> Self {
        Self::Protobuf
    }
}

/// Why a message could not be encrypted. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// The plaintext is longer than [`MAX_PLAINTEXT_LEN`](crate::limits::MAX_PLAINTEXT_LEN).
    #[error("plaintext of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Length of the plaintext.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The responder of a session cannot send before it has received the
    /// initiator's first message (the sending chain does not exist yet).
    #[error("no sending chain yet: wait for the peer's first message")]
    NoSendingChain,
    /// The sending chain has used every counter (2^32 messages without a reply).
    #[error("sending chain exhausted")]
    ChainExhausted,
}

/// Why a message could not be decrypted. In every case the session is left
/// exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The bytes are not a well-formed message.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// The message was already decrypted (its key was used and deleted), or
    /// its counter is so old that the session no longer remembers whether it
    /// was (PROTOCOL.md 4.8). A message whose key was evicted unused is
    /// [`Self::KeyEvicted`] instead, as long as the session remembers the
    /// eviction.
    #[error("duplicate message (counter {counter})")]
    Duplicate {
        /// The message's counter on its chain.
        counter: u32,
    },
    /// The message reached the app already, sent again by the peer after a
    /// reset of ours (PROTOCOL.md 20.6): this first copy of it, which
    /// arrived late, is a duplicate.
    #[error("duplicate message (delivered already by a resend)")]
    Resent,
    /// The sender's state went backwards: the message's header is authentic
    /// (only the peer can make it), but its counter was already used by
    /// another message, or lies past the end of a chain the peer had closed.
    /// A sender restored from a backup, cloned or forked makes such messages;
    /// its message keys differ from the originals' (they are salted by the
    /// header nonce), so nothing was encrypted twice under one key, but this
    /// message cannot be decrypted: its counter's key is gone.
    #[error("the sender's state went backwards (counter {counter} reused)")]
    Rollback {
        /// The message's counter on its chain.
        counter: u32,
    },
    /// The message's header is authentic (only the peer can make it) and its
    /// counter was skipped, but its key was evicted unused under
    /// [`MAX_STORED_SKIPPED_KEYS`](crate::limits::MAX_STORED_SKIPPED_KEYS)
    /// before it arrived: it was never decrypted, and now cannot be. The
    /// sessions are out of step for this message; the sender must send it
    /// again (PROTOCOL.md 4.8).
    #[error("the key of this message was evicted before it arrived (counter {counter})")]
    KeyEvicted {
        /// The message's counter on its chain.
        counter: u32,
    },
    /// No state of the session opens the message's header (or the one that
    /// does is an archived state cut down to its skipped keys, and holds no
    /// key for this counter): the message is not one of the peer's messages
    /// on a chain this session can still read. Either
    /// the peer's state and ours went apart (our store restored from an
    /// older copy, a chain dropped past the limits, the peer restored or
    /// reinstalled) or the message is forged; the two cannot be told apart
    /// without the keys. A message whose header opens but whose body does
    /// not is [`Self::Unauthenticated`]: only a forger makes those.
    #[error("no state of the session opens this message")]
    NoMatchingState,
    /// The message would make the session skip more message keys in one gap
    /// than [`MAX_SKIP`](crate::limits::MAX_SKIP).
    #[error("message is {gap} messages ahead, more than the limit of {max}")]
    TooFarAhead {
        /// How many keys it would skip.
        gap: u32,
        /// The limit.
        max: u32,
    },
    /// The message does not authenticate: a header key of the session opened
    /// its header, but it was forged or altered after that (its body, its
    /// padding), or breaks the protocol in a way only a forger or a broken
    /// peer would. (A message whose header opens under no key is
    /// [`Self::NoMatchingState`].) Opaque on purpose, like `aead::Error`:
    /// which check failed is not for an attacker to learn.
    #[error("message failed authentication")]
    Unauthenticated,
}

/// Which of a device's prekeys a message named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreKeyKind {
    /// A signed X25519 prekey.
    Signed,
    /// A one-time X25519 prekey.
    OneTime,
    /// An ML-KEM-1024 prekey (one-time or last resort).
    Pq,
}

/// Why a session operation failed. In every case the session record is
/// left exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The bytes are not a well-formed message.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer's bundle was rejected.
    #[error("invalid bundle: {0}")]
    Bundle(#[from] crate::prekeys::BundleError),
    /// Encryption failed.
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
    /// Decryption failed (duplicate, rollback, key evicted, too far ahead,
    /// no matching state, or unauthenticated).
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// There is no session with this peer to encrypt with or to decrypt a
    /// ratchet message with.
    #[error("no session")]
    NoSession,
    /// The peer's identity key differs from the one trusted for this address.
    /// Nothing is sent to or accepted from it until the app calls
    /// [`SessionRecord::trust_identity`](crate::session::SessionRecord::trust_identity).
    #[error("the peer's identity key changed")]
    UntrustedIdentity {
        /// The new identity key.
        identity: crate::keys::IdentityKey,
    },
    /// A prekey message names a prekey this device does not have (never
    /// had, or already consumed or rotated away).
    #[error("unknown {kind:?} prekey {id}")]
    UnknownPreKey {
        /// The kind of prekey.
        kind: PreKeyKind,
        /// Its id.
        id: u32,
    },
    /// A prekey message that was already processed (its base key is known)
    /// and whose session state is no longer kept.
    #[error("duplicate prekey message")]
    DuplicatePreKeyMessage,
    /// A pending decryption was committed to a record that changed since it
    /// was made; decrypt again.
    #[error("the session changed since this decryption was made")]
    StalePending,
    /// In a batch ([`Device::decrypt_batch`](crate::device::Device::decrypt_batch)):
    /// a group message, or a control message of the peer's library (a
    /// group's chain, or a request for one), which a batch leaves as it is.
    /// It was not consumed: decrypt and commit it with
    /// [`Device::decrypt`](crate::device::Device::decrypt).
    #[error("a group or control message: decrypt it with `Device::decrypt`")]
    NotInBatch,
    /// In a batch ([`Device::decrypt_batch`](crate::device::Device::decrypt_batch)):
    /// the sender is a device of a user whose device list is pinned, and the
    /// newest list does not name it with this identity key (what
    /// [`DeviceListError::UnlistedDevice`](crate::user::DeviceListError::UnlistedDevice)
    /// says outside a batch, PROTOCOL.md 23.5). Nothing of it was consumed.
    #[error("device {device_id} is not in the user's verified device list with this identity key")]
    UnlistedDevice {
        /// The sender's device id.
        device_id: u32,
    },
}
