//! Stable error codes: what an app can do about a failure.
//!
//! Every error type of the crate has a `kind()` that names one of the fifteen
//! [`ErrorKind`]s, and every kind has one [`Recovery`]: the action an app
//! takes. The codes are stable across releases and identical in every
//! binding (Kotlin, Swift and Python see the same names, from the same
//! table: PROTOCOL.md 19). An app that handles the fifteen codes handles every
//! failure, whatever variant a later release adds under them.
//!
//! | code | recovery | what happened |
//! |---|---|---|
//! | `duplicate` | drop | the message was already decrypted |
//! | `invalid_message` | drop | malformed, forged, altered, or of no state this session keeps |
//! | `out_of_step` | heal | authentic (its header opened), but no state of the session can read it |
//! | `no_session` | fetch bundle | no session with the peer |
//! | `untrusted_identity` | verify identity | the peer's identity key changed |
//! | `identity_mismatch` | verify identity | a scanned safety number does not match |
//! | `invalid_bundle` | fetch bundle | a prekey bundle that does not verify |
//! | `missing_group_key` | retry later | a group message on a chain not (yet) received |
//! | `not_in_group` | drop | unknown group, or a sender not in it |
//! | `stale_pending` | decrypt again | the session changed since the decryption |
//! | `store_busy` | retry later | other handles kept the store busy |
//! | `wrong_storage_key` | reopen store | the storage key does not open the store (or a backup's passphrase does not open the backup) |
//! | `store_failure` | reopen store | I/O, corruption, a newer schema, a forked process |
//! | `limit_exceeded` | fix call | a documented limit was reached |
//! | `invalid_argument` | fix call | the call itself is wrong |
//!
//! # Example
//!
//! ```
//! # use std::time::SystemTime;
//! # use samizdat::store::StorageKey;
//! use samizdat::{ErrorKind, Recovery, address::Address, device::Device, store::MemoryBackend};
//!
//! let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
//! let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
//! alice.start_session(&bob.prekey_bundle()?)?;
//! let wire = alice.encrypt(bob.address(), b"hello")?;
//! bob.commit(bob.decrypt(alice.address(), &wire)?)?;
//!
//! // The server delivers the message again.
//! let error = bob.decrypt(alice.address(), &wire).unwrap_err();
//! assert_eq!(error.kind(), ErrorKind::Duplicate);
//! assert_eq!(error.kind().recovery(), Recovery::Drop);
//! assert_eq!(error.kind().code(), "duplicate");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use crate::{
    DecodeError, DecryptError, EncryptError, SessionError,
    backup::BackupError,
    device::{DeviceError, GroupError},
    fingerprint::ScanError,
    keys::KeyError,
    prekeys::{BundleError, PreKeyError},
    ratchet::InitError,
    store::StoreError,
};

/// A stable error code: one of fifteen classes of failure, each with one
/// [`Recovery`]. See the module documentation for the table.
///
/// Not `#[non_exhaustive]`: the set is part of the contract with apps and
/// bindings, and a new failure joins one of these classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The message was already decrypted and committed (a redelivery or a
    /// replay). Drop it and acknowledge it to the server.
    Duplicate,
    /// The message is malformed, forged or altered (a header opened and
    /// the rest did not authenticate; or it is of a kind this release does
    /// not know). Drop it and acknowledge it.
    InvalidMessage,
    /// No state of the session can read the message, and healing can bring
    /// it: its key was evicted before it arrived, it is further ahead than
    /// the skip limit, or its counter was reused by a sender that went back
    /// to an older state (each of these has a header that opened under a key
    /// only the peer holds); or its header opens under no state at all
    /// ([`DecryptError::NoMatchingState`]: our store restored from an older
    /// copy, a state gone, a prekey message for prekeys we no longer have),
    /// or it names a prekey we do not have ([`SessionError::UnknownPreKey`]).
    /// A forger without any key makes the last two as well, which is why
    /// healing is rate-limited. Heal: fetch the peer's bundle and call
    /// [`Device::heal`](crate::device::Device::heal) with the messages that
    /// failed so; at most one reset per peer per interval is sent, and the
    /// session we had keeps reading the peer's messages in flight.
    OutOfStep,
    /// There is no session with this peer. Fetch its bundle and start one.
    NoSession,
    /// The peer's identity key changed (a reinstall, or an attacker). Ask the
    /// user to verify the new key; trust it only then.
    UntrustedIdentity,
    /// A scanned safety number does not match (or the scan is not a safety
    /// number this release reads). Do not mark the peer as verified; ask the
    /// users to compare again.
    IdentityMismatch,
    /// A prekey bundle is malformed or its signatures do not verify. Fetch
    /// the bundle again (and distrust the server that sent this one).
    InvalidBundle,
    /// A group message came on a chain of its sender that this device does
    /// not have yet. Send the request the error carries (if any), keep the
    /// message, and decrypt it again once the chain arrives.
    MissingGroupKey,
    /// A group message for a group this device is not in, or from a device
    /// that is not a member of it (or a group call on an unknown group). Drop
    /// the message.
    NotInGroup,
    /// A pending decryption whose session changed since it was made, or a
    /// message a batch leaves to a call of its own. Nothing was consumed:
    /// decrypt the message again (alone).
    StalePending,
    /// Other handles or processes kept the store busy longer than the wait,
    /// or changed it under this call more often than it retried. Nothing was
    /// written: call again later.
    StoreBusy,
    /// The storage key does not open this store. Nothing was changed: open it
    /// again with the right key. Also a backup that does not open under the
    /// passphrase given ([`BackupError::WrongPassphrase`]: a wrong passphrase,
    /// or an altered file): ask for the passphrase again.
    WrongStorageKey,
    /// The store failed: I/O, a damaged file or row, a schema newer than this
    /// release, or a device used in a forked child. Reopen the store (in this
    /// process; after an update if newer).
    StoreFailure,
    /// A documented limit was reached (plaintext size, group size, prekey
    /// count, a chain's 2^32 messages, a backup's Argon2id parameters). Fix
    /// the call: send less, or start a new session or chain.
    LimitExceeded,
    /// The call is wrong: an invalid argument, a store with no device (or
    /// one already, or the device of another address), a pending value given
    /// to the wrong device or committed twice. Fix the call.
    InvalidArgument,
}

/// What an app does about a failure of an [`ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Drop the message and acknowledge it to the server: it will never
    /// decrypt.
    Drop,
    /// Keep what was being done and try again later.
    RetryLater,
    /// Decrypt the message again now (nothing was consumed).
    DecryptAgain,
    /// Heal the session: fetch the peer's bundle and start a new session from
    /// it, then send (the peer installs it as its current session).
    Heal,
    /// Fetch the peer's prekey bundle from the server and start a session.
    FetchBundle,
    /// Ask the user to verify the peer's identity (compare safety numbers).
    VerifyIdentity,
    /// Open the store again (with the right key; in this process).
    ReopenStore,
    /// The call itself is wrong: fix the code that made it.
    FixCall,
}

impl Recovery {
    /// The stable name, in `snake_case`.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::RetryLater => "retry_later",
            Self::DecryptAgain => "decrypt_again",
            Self::Heal => "heal",
            Self::FetchBundle => "fetch_bundle",
            Self::VerifyIdentity => "verify_identity",
            Self::ReopenStore => "reopen_store",
            Self::FixCall => "fix_call",
        }
    }
}

impl ErrorKind {
    /// Every kind, in the order of the table.
    pub const ALL: [Self; 15] = [
        Self::Duplicate,
        Self::InvalidMessage,
        Self::OutOfStep,
        Self::NoSession,
        Self::UntrustedIdentity,
        Self::IdentityMismatch,
        Self::InvalidBundle,
        Self::MissingGroupKey,
        Self::NotInGroup,
        Self::StalePending,
        Self::StoreBusy,
        Self::WrongStorageKey,
        Self::StoreFailure,
        Self::LimitExceeded,
        Self::InvalidArgument,
    ];

    /// The stable code, in `snake_case`: what logs, telemetry and other
    /// languages compare.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::InvalidMessage => "invalid_message",
            Self::OutOfStep => "out_of_step",
            Self::NoSession => "no_session",
            Self::UntrustedIdentity => "untrusted_identity",
            Self::IdentityMismatch => "identity_mismatch",
            Self::InvalidBundle => "invalid_bundle",
            Self::MissingGroupKey => "missing_group_key",
            Self::NotInGroup => "not_in_group",
            Self::StalePending => "stale_pending",
            Self::StoreBusy => "store_busy",
            Self::WrongStorageKey => "wrong_storage_key",
            Self::StoreFailure => "store_failure",
            Self::LimitExceeded => "limit_exceeded",
            Self::InvalidArgument => "invalid_argument",
        }
    }

    /// The kind of a [`code`](Self::code), if it is one.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// What an app does about it.
    pub const fn recovery(self) -> Recovery {
        match self {
            Self::Duplicate | Self::InvalidMessage | Self::NotInGroup => Recovery::Drop,
            Self::OutOfStep => Recovery::Heal,
            Self::NoSession | Self::InvalidBundle => Recovery::FetchBundle,
            Self::UntrustedIdentity | Self::IdentityMismatch => Recovery::VerifyIdentity,
            Self::MissingGroupKey | Self::StoreBusy => Recovery::RetryLater,
            Self::StalePending => Recovery::DecryptAgain,
            Self::WrongStorageKey | Self::StoreFailure => Recovery::ReopenStore,
            Self::LimitExceeded | Self::InvalidArgument => Recovery::FixCall,
        }
    }
}

/// The stable name, [`Recovery::code`].
impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl DecodeError {
    /// Bytes from the wire that do not parse: [`ErrorKind::InvalidMessage`].
    /// (An argument that does not parse is [`DeviceError::InvalidArgument`].)
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidMessage
    }
}

impl KeyError {
    /// A key given by the app that is not a valid key:
    /// [`ErrorKind::InvalidArgument`].
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl InitError {
    /// [`ErrorKind::InvalidArgument`]: the ratchet was given bad inputs.
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl BundleError {
    /// [`ErrorKind::InvalidBundle`].
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidBundle
    }
}

impl PreKeyError {
    /// [`ErrorKind::LimitExceeded`].
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::LimitExceeded
    }
}

impl ScanError {
    /// [`ErrorKind::IdentityMismatch`]: a code that does not match, or one
    /// that is not a scan of a safety number of this release (a bad scan, or
    /// the peer's app of another version). Either way the peer is not
    /// verified, and the users compare again.
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::IdentityMismatch
    }
}

impl EncryptError {
    /// [`ErrorKind::LimitExceeded`] for a plaintext too large or a chain
    /// exhausted; [`ErrorKind::NoSession`] for a responder that cannot send
    /// yet (it has no sending chain until the peer's first message arrives).
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::NoSendingChain => ErrorKind::NoSession,
            _ => ErrorKind::LimitExceeded,
        }
    }
}

impl DecryptError {
    /// [`ErrorKind::Duplicate`]; [`ErrorKind::InvalidMessage`] for a
    /// malformed message and a forged one whose header opened;
    /// [`ErrorKind::OutOfStep`] for a message no state can read (a key
    /// evicted, a counter reused, a gap past the skip limit, a header no
    /// state opens).
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Duplicate { .. } | Self::Resent => ErrorKind::Duplicate,
            Self::Malformed(_) | Self::Unauthenticated => ErrorKind::InvalidMessage,
            Self::KeyEvicted { .. } | Self::Rollback { .. } | Self::TooFarAhead { .. } | Self::NoMatchingState => {
                ErrorKind::OutOfStep
            }
        }
    }
}

impl SessionError {
    /// The kind of the failure: see [`ErrorKind`].
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Malformed(e) => e.kind(),
            Self::Bundle(e) => e.kind(),
            Self::Encrypt(e) => e.kind(),
            Self::Decrypt(e) => e.kind(),
            Self::NoSession => ErrorKind::NoSession,
            Self::UntrustedIdentity { .. } | Self::UnlistedDevice { .. } => ErrorKind::UntrustedIdentity,
            // The peer built its session on a prekey we no longer have (a
            // stale bundle, our reinstall), or a forger changed a prekey id:
            // like a header no state opens, healing brings the message, and
            // resets are rate-limited (PROTOCOL.md 20.1).
            Self::UnknownPreKey { .. } => ErrorKind::OutOfStep,
            // A prekey message of a state no longer kept (a heal cut it, or
            // it fell off the archived states): the record remembers its
            // base key, not which of its messages were read, so it may never
            // have been: only healing brings it. (A replay of one read long
            // ago is named too; the sender no longer holds what the app
            // acknowledged, and a resend carries the message's first id, by
            // which the app keeps what it stores, PROTOCOL.md 20.8.)
            Self::DuplicatePreKeyMessage => ErrorKind::OutOfStep,
            Self::StalePending | Self::NotInBatch => ErrorKind::StalePending,
        }
    }
}

impl StoreError {
    /// [`ErrorKind::WrongStorageKey`] (also when the key was rotated since
    /// the store was opened), [`ErrorKind::StoreBusy`] for a lock
    /// or a conflict that outlasted the retries, [`ErrorKind::InvalidArgument`]
    /// for a store opened with the wrong call (no device, or one already; a
    /// path that names no database), and [`ErrorKind::StoreFailure`] for the
    /// rest.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongKey | Self::KeyRotated => ErrorKind::WrongStorageKey,
            Self::Locked | Self::Conflict { .. } => ErrorKind::StoreBusy,
            Self::NotFound | Self::AlreadyExists | Self::InvalidPath => ErrorKind::InvalidArgument,
            Self::SchemaTooNew { .. }
            | Self::Corrupt { .. }
            | Self::Sqlite(_)
            | Self::MovedOrLinked
            | Self::Forked
            | Self::EmptyFile
            | Self::CorruptDatabase
            | Self::Io(_)
            | Self::Backend(_) => ErrorKind::StoreFailure,
        }
    }
}

impl crate::attachment::AttachmentError {
    /// [`ErrorKind::InvalidMessage`] for an attachment that does not open or
    /// check (drop it: altered, cut, extended, another file's, or a
    /// malformed description), [`ErrorKind::LimitExceeded`] past the largest
    /// size or range, [`ErrorKind::InvalidArgument`] for a range outside the
    /// file or a stream used after it failed, and
    /// [`ErrorKind::StoreFailure`] for the app's input or output failing.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Unauthenticated { .. } | Self::WrongLength | Self::Mismatch | Self::Malformed => {
                ErrorKind::InvalidMessage
            }
            Self::TooLarge { .. } | Self::RangeTooLong { .. } => ErrorKind::LimitExceeded,
            Self::OutOfRange { .. } | Self::Finished => ErrorKind::InvalidArgument,
            Self::Io(_) => ErrorKind::StoreFailure,
        }
    }
}

impl GroupError {
    /// The kind of the failure: see [`ErrorKind`].
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidGroupId | Self::AlreadyExists | Self::SelfAsMember | Self::FollowedUser => {
                ErrorKind::InvalidArgument
            }
            Self::UnpinnedUser => ErrorKind::NoSession,
            Self::UnknownGroup | Self::NotMember => ErrorKind::NotInGroup,
            Self::TooManyMembers { .. } => ErrorKind::LimitExceeded,
            Self::MissingChain { .. } => ErrorKind::MissingGroupKey,
            Self::Decrypt(e) => e.kind(),
            Self::Encrypt(e) => e.kind(),
        }
    }
}

impl DeviceError {
    /// The kind of the failure: see [`ErrorKind`].
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Session(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::PreKey(e) => e.kind(),
            Self::Group(e) => e.kind(),
            // A store of another device is sound: the call named the wrong
            // one (reopening it would fail the same way for ever).
            Self::InvalidArgument(_) | Self::ForeignPending | Self::OtherDevice { .. } => ErrorKind::InvalidArgument,
            Self::Forked => ErrorKind::StoreFailure,
            Self::Backup(e) => e.kind(),
            Self::DeviceList(e) => e.kind(),
            // The app gave its device a list that does not name it.
            Self::NotInOwnList => ErrorKind::InvalidArgument,
            Self::Link(e) => e.kind(),
        }
    }
}

impl BackupError {
    /// [`ErrorKind::WrongStorageKey`] for a backup that does not open under
    /// the passphrase (a wrong passphrase, or an altered file: ask for the
    /// passphrase again, or take another copy of the file);
    /// [`ErrorKind::InvalidArgument`] for a file that is not a backup of a
    /// format this release reads; [`ErrorKind::LimitExceeded`] for Argon2id
    /// parameters out of bounds, more peers than a backup holds, or memory
    /// this device cannot allocate.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongPassphrase => ErrorKind::WrongStorageKey,
            Self::Malformed(_) | Self::UnsupportedVersion(_) => ErrorKind::InvalidArgument,
            Self::ParamsOutOfBounds { .. } | Self::TooManyPeers { .. } | Self::OutOfMemory { .. } => {
                ErrorKind::LimitExceeded
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut codes: Vec<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
            assert_eq!(kind.to_string(), kind.code());
        }
        assert_eq!(ErrorKind::from_code("Duplicate"), None);
    }
}
