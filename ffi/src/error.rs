//! The one error of the bindings, [`SamizdatError`]: a variant per stable
//! error code of the core ([`samizdat::ErrorKind`]), the same fifteen codes
//! in Kotlin, Swift and Python, each with its [`Recovery`].
//!
//! Every [`SamizdatError`] is made by [`SamizdatError::from_core`], which
//! picks the variant from the core error's `kind()`: the bindings cannot
//! report another code than the core does. The text is the core error's
//! `Display`. Fields are strings and numbers only (bytes go as lowercase
//! hex), so that the message Kotlin builds from them stays readable; the
//! bytes come back decoded from the methods [`SamizdatError::identity_key`]
//! and [`SamizdatError::request`].

use samizdat::{
    SessionError,
    device::{DeviceError, GroupError},
    fingerprint::{self, ScanError},
    keys::IdentityKey,
};

/// Every failure of the bindings: one variant per stable error code
/// ([`ErrorKind`]), named like it. `code()` gives the code (`"out_of_step"`),
/// `recovery()` what the app does about it.
///
/// Every variant's first field, `message`, is the core error's text (never
/// empty). Kotlin names it `reason` (`SamizdatException.Duplicate.reason`),
/// because its `Throwable` already has a `message`: that one reads
/// `reason=…` followed by the other fields.
///
/// Kotlin: `SamizdatException.Duplicate` etc.; Swift: `SamizdatError.Duplicate`;
/// Python: `samizdat.SamizdatError.Duplicate`.
///
/// Not `#[non_exhaustive]`, like [`samizdat::ErrorKind`]: the fifteen codes
/// are the contract, and a new failure joins one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum SamizdatError {
    /// The message was already decrypted and committed (a redelivery or a
    /// replay): drop it and acknowledge it.
    #[error("{message}")]
    Duplicate {
        /// What happened (the core error's text).
        message: String,
    },
    /// The message is malformed, or forged or altered (a header that opened
    /// on a chain the session has, and a body that did not): drop it and
    /// acknowledge it.
    #[error("{message}")]
    InvalidMessage {
        /// What happened (the core error's text).
        message: String,
    },
    /// No state of the session can read the message, and healing can bring
    /// it: its key was evicted, it is further ahead than the skip limit (the
    /// gap and the limit are in `message`), the sender went back to an older
    /// state, or no state opens it (our store restored, a state gone, a
    /// prekey we no longer have; a keyless forgery looks the same, which is
    /// why resets are rate-limited). Heal: fetch the peer's bundle and call
    /// `Device.heal` with the messages that failed so.
    #[error("{message}")]
    OutOfStep {
        /// What happened (the core error's text).
        message: String,
    },
    /// There is no session with this peer (or this side cannot send on it
    /// yet): fetch its bundle and start one. Also a user with no verified
    /// device list on this device, for a fan-out or a group's member users
    /// (`add_group_users`): a bundle of the user carries its list.
    #[error("{message}")]
    NoSession {
        /// What happened (the core error's text).
        message: String,
    },
    /// The peer's identity key changed (a reinstall, or an attacker). Nothing
    /// is sent to or accepted from it until the user verified the new key
    /// and the app called [`crate::Device::trust_identity`] with
    /// [`Self::identity_key`]. From [`crate::UserTrust`]: a contact's device
    /// list signed by another user identity key (`identity` is that key; the
    /// decision is [`crate::UserTrust::trust_new_identity`]), or a device no
    /// verified list names (`identity` is empty: do not use the device).
    /// From a [`crate::Device`] (PROTOCOL.md 23.5): the same two, for a
    /// pinned user (`start_session`, `encrypt`, `decrypt`, a message of
    /// `decrypt_batch`, `update_device_list`); nothing was changed.
    #[error("{message}")]
    UntrustedIdentity {
        /// What happened (the core error's text).
        message: String,
        /// The new identity key (32 bytes) in lowercase hex; the bytes are
        /// [`SamizdatError::identity_key`].
        identity: String,
    },
    /// A scanned safety number does not match: do not mark the peer as
    /// verified; ask the user to compare again.
    #[error("{message}")]
    IdentityMismatch {
        /// What happened (the core error's text).
        message: String,
        /// Which identity differs (`Both` for a scan that is not a safety
        /// number this release reads).
        side: MismatchedSide,
    },
    /// A prekey bundle is malformed or its signatures do not verify: fetch
    /// it again.
    #[error("{message}")]
    InvalidBundle {
        /// What happened (the core error's text).
        message: String,
    },
    /// A group message came on a chain of its sender that this device does
    /// not have (its distribution was lost or has not arrived yet, it is
    /// too far ahead, or this device was removed from the group). The
    /// message was not consumed: keep it and decrypt it again once the
    /// chain arrives.
    ///
    /// [`SamizdatError::request`], if any, is a one-to-one message asking
    /// the sender for the chain: send it to the sender as it is (making it
    /// advanced the session with the sender, already committed). The
    /// sender's commit of it returns the answer. It is absent when there is
    /// no session with the sender or this device already asked often enough.
    #[error("{message}")]
    MissingGroupKey {
        /// What happened (the core error's text).
        message: String,
        /// The chain id of the message.
        chain_id: i64,
        /// The request in lowercase hex, if one may be sent; the bytes are
        /// [`SamizdatError::request`]. (Not named `request`: in Python the
        /// field would hide that method.)
        request_hex: Option<String>,
    },
    /// A group message of a group this device is not in, or from a device
    /// that is not a member of it (never added, or removed), or a group call
    /// on an unknown group: drop the message.
    #[error("{message}")]
    NotInGroup {
        /// What happened (the core error's text).
        message: String,
    },
    /// The session changed since this decryption was made, or a batch left
    /// this message to a call of its own (a group or control message).
    /// Nothing was consumed: decrypt the message again (alone, with
    /// [`crate::Device::decrypt`]).
    #[error("{message}")]
    StalePending {
        /// What happened (the core error's text).
        message: String,
    },
    /// The store stayed busy (another handle or process writing) longer than
    /// the wait, or changed under this call more often than it retried:
    /// nothing was written; call again later.
    #[error("{message}")]
    StoreBusy {
        /// What happened (the core error's text).
        message: String,
    },
    /// The storage key does not open this store (nothing was changed): open
    /// it again with the right key.
    #[error("{message}")]
    WrongStorageKey {
        /// What happened (the core error's text).
        message: String,
    },
    /// The store failed: I/O, a damaged file or row, a schema newer than
    /// this release, or a device inherited
    /// through `fork()` (Python's `multiprocessing` on Linux forks by
    /// default). Open the store again (in this process).
    #[error("{message}")]
    StoreFailure {
        /// What happened (the core error's text).
        message: String,
    },
    /// A documented limit was reached (plaintext size, group size, prekey
    /// count, a chain's 2^32 messages): send less, or start a new session
    /// or chain.
    #[error("{message}")]
    LimitExceeded {
        /// What happened (the core error's text, with the limit).
        message: String,
    },
    /// The call is wrong: an invalid argument (an empty user id, a storage
    /// key that is not 32 bytes, a malformed identity key, a group id that
    /// is not 1 to 64 bytes, this device named as a member of its own
    /// group, a group that already exists, a device of a member user given
    /// to `remove_group_members`), a store with no device (or one
    /// already, or the device of another address), a pending value given to
    /// another device or committed twice.
    #[error("{message}")]
    InvalidArgument {
        /// What happened (the core error's text).
        message: String,
    },
}

/// The stable error code of a [`SamizdatError`]: what logs, telemetry and
/// the other languages compare (`code()` gives it in `snake_case`). The
/// same as [`samizdat::ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ErrorKind {
    /// The message was already decrypted: [`Recovery::Drop`].
    Duplicate,
    /// Malformed, forged or altered (or of no state; naming a prekey this
    /// device lacks): [`Recovery::Drop`].
    InvalidMessage,
    /// The peer's (its header opened), but no state of the session can read
    /// it: [`Recovery::Heal`].
    OutOfStep,
    /// No session with the peer: [`Recovery::FetchBundle`].
    NoSession,
    /// The peer's identity key changed: [`Recovery::VerifyIdentity`].
    UntrustedIdentity,
    /// A scanned safety number does not match: [`Recovery::VerifyIdentity`].
    IdentityMismatch,
    /// A prekey bundle that does not verify: [`Recovery::FetchBundle`].
    InvalidBundle,
    /// A group message on a chain not (yet) received: [`Recovery::RetryLater`].
    MissingGroupKey,
    /// Unknown group, or a sender not in it: [`Recovery::Drop`].
    NotInGroup,
    /// The session changed since the decryption: [`Recovery::DecryptAgain`].
    StalePending,
    /// Other handles kept the store busy: [`Recovery::RetryLater`].
    StoreBusy,
    /// The storage key does not open the store: [`Recovery::ReopenStore`].
    WrongStorageKey,
    /// I/O, corruption, a newer schema, a forked process:
    /// [`Recovery::ReopenStore`].
    StoreFailure,
    /// A documented limit was reached: [`Recovery::FixCall`].
    LimitExceeded,
    /// The call itself is wrong: [`Recovery::FixCall`].
    InvalidArgument,
}

/// What an app does about a failure of an [`ErrorKind`]. The same as
/// [`samizdat::Recovery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Recovery {
    /// Drop the message and acknowledge it to the server: it will never
    /// decrypt.
    Drop,
    /// Keep what was being done and try again later.
    RetryLater,
    /// Decrypt the message again now (nothing was consumed).
    DecryptAgain,
    /// Heal the session: fetch the peer's bundle and call `Device.heal` with
    /// the messages that failed; send the reset it returns.
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

/// Which identity differs between a scanned code and our safety number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MismatchedSide {
    /// The peer holds a different identity for us.
    Local,
    /// We hold a different identity for the peer.
    Remote,
    /// Both differ (for example a code from another conversation).
    Both,
}

#[uniffi::export]
impl SamizdatError {
    /// The stable error code.
    pub fn kind(&self) -> ErrorKind {
        self.core_kind().into()
    }

    /// What the app does about it.
    pub fn recovery(&self) -> Recovery {
        self.core_kind().recovery().into()
    }

    /// The stable error code in `snake_case` (`"out_of_step"`), as every
    /// binding spells it.
    pub fn code(&self) -> String {
        self.core_kind().code().to_owned()
    }

    /// The peer's new identity key (32 bytes) of an
    /// [`SamizdatError::UntrustedIdentity`], to give to
    /// [`crate::Device::trust_identity`] once the user verified it; `None`
    /// for every other variant.
    pub fn identity_key(&self) -> Option<Vec<u8>> {
        match self {
            Self::UntrustedIdentity { identity, .. } => from_hex(identity),
            _ => None,
        }
    }

    /// The request of a [`SamizdatError::MissingGroupKey`], to send to the
    /// message's sender as it is; `None` when no request may be sent, and
    /// for every other variant.
    pub fn request(&self) -> Option<Vec<u8>> {
        match self {
            Self::MissingGroupKey { request_hex: Some(request), .. } => from_hex(request),
            _ => None,
        }
    }
}

#[uniffi::export]
impl ErrorKind {
    /// The stable code in `snake_case` (`"out_of_step"`).
    pub fn code(&self) -> String {
        samizdat::ErrorKind::from(*self).code().to_owned()
    }

    /// What an app does about it.
    pub fn recovery(&self) -> Recovery {
        samizdat::ErrorKind::from(*self).recovery().into()
    }
}

#[uniffi::export]
impl Recovery {
    /// The stable name in `snake_case` (`"retry_later"`).
    pub fn code(&self) -> String {
        samizdat::Recovery::from(*self).code().to_owned()
    }
}

impl SamizdatError {
    /// The one place a [`SamizdatError`] is made: the variant is the one of
    /// `kind`, `message` its text, and `details` fill the fields of the
    /// variants that have more. The core gives those kinds only with their
    /// details (an untrusted identity with its key, a missing group key with
    /// its chain, a mismatch with its side), so the fallbacks below are never
    /// taken; they keep this function total.
    pub(crate) fn from_core(kind: samizdat::ErrorKind, message: String, details: Details) -> Self {
        use samizdat::ErrorKind as Kind;
        let message = if message.is_empty() { kind.code().to_owned() } else { message };
        match kind {
            Kind::Duplicate => Self::Duplicate { message },
            Kind::InvalidMessage => Self::InvalidMessage { message },
            Kind::OutOfStep => Self::OutOfStep { message },
            Kind::NoSession => Self::NoSession { message },
            Kind::UntrustedIdentity => {
                let identity = match details {
                    Details::Identity(key) => to_hex(key.as_bytes()),
                    Details::UserIdentity(key) => to_hex(&key),
                    _ => String::new(),
                };
                Self::UntrustedIdentity { message, identity }
            }
            Kind::IdentityMismatch => {
                let side = match details {
                    Details::Side(side) => side,
                    _ => MismatchedSide::Both,
                };
                Self::IdentityMismatch { message, side }
            }
            Kind::InvalidBundle => Self::InvalidBundle { message },
            Kind::MissingGroupKey => {
                let (chain_id, request) = match details {
                    Details::Chain { chain_id, request } => (chain_id, request),
                    _ => (0, None),
                };
                Self::MissingGroupKey { message, chain_id, request_hex: request.as_deref().map(to_hex) }
            }
            Kind::NotInGroup => Self::NotInGroup { message },
            Kind::StalePending => Self::StalePending { message },
            Kind::StoreBusy => Self::StoreBusy { message },
            Kind::WrongStorageKey => Self::WrongStorageKey { message },
            Kind::StoreFailure => Self::StoreFailure { message },
            Kind::LimitExceeded => Self::LimitExceeded { message },
            Kind::InvalidArgument => Self::InvalidArgument { message },
        }
    }

    /// A failure of the bindings' own checks (a storage key of the wrong
    /// length, a pending value committed twice): the call is wrong.
    pub(crate) fn invalid_argument(message: String) -> Self {
        Self::from_core(samizdat::ErrorKind::InvalidArgument, message, Details::None)
    }

    /// The core kind of this variant (the inverse of [`Self::from_core`]).
    fn core_kind(&self) -> samizdat::ErrorKind {
        use samizdat::ErrorKind as Kind;
        match self {
            Self::Duplicate { .. } => Kind::Duplicate,
            Self::InvalidMessage { .. } => Kind::InvalidMessage,
            Self::OutOfStep { .. } => Kind::OutOfStep,
            Self::NoSession { .. } => Kind::NoSession,
            Self::UntrustedIdentity { .. } => Kind::UntrustedIdentity,
            Self::IdentityMismatch { .. } => Kind::IdentityMismatch,
            Self::InvalidBundle { .. } => Kind::InvalidBundle,
            Self::MissingGroupKey { .. } => Kind::MissingGroupKey,
            Self::NotInGroup { .. } => Kind::NotInGroup,
            Self::StalePending { .. } => Kind::StalePending,
            Self::StoreBusy { .. } => Kind::StoreBusy,
            Self::WrongStorageKey { .. } => Kind::WrongStorageKey,
            Self::StoreFailure { .. } => Kind::StoreFailure,
            Self::LimitExceeded { .. } => Kind::LimitExceeded,
            Self::InvalidArgument { .. } => Kind::InvalidArgument,
        }
    }
}

/// What a core error carries besides its kind and its text: the values of
/// the variants that have fields.
pub(crate) enum Details {
    /// Nothing more.
    None,
    /// The new identity key of an untrusted identity.
    Identity(IdentityKey),
    /// The user identity key of a device list signed by another key than
    /// the pinned one.
    UserIdentity([u8; 32]),
    /// The chain of a missing group key, and the request for it.
    Chain {
        /// The chain id of the message.
        chain_id: i64,
        /// The request to send, if any.
        request: Option<Vec<u8>>,
    },
    /// Which side of a scanned safety number differs.
    Side(MismatchedSide),
}

impl From<DeviceError> for SamizdatError {
    fn from(error: DeviceError) -> Self {
        let (kind, message) = (error.kind(), error.to_string());
        let details = match error {
            DeviceError::Session(SessionError::UntrustedIdentity { identity }) => Details::Identity(identity),
            // The same code and text as the list error it wraps.
            DeviceError::DeviceList(error) => return error.into(),
            DeviceError::Group(GroupError::MissingChain { chain_id, request }) => {
                Details::Chain { chain_id: i64::from(chain_id), request }
            }
            _ => Details::None,
        };
        Self::from_core(kind, message, details)
    }
}

impl From<SessionError> for SamizdatError {
    fn from(error: SessionError) -> Self {
        DeviceError::Session(error).into()
    }
}

impl From<ScanError> for SamizdatError {
    fn from(error: ScanError) -> Self {
        let (kind, message) = (error.kind(), error.to_string());
        let details = match error {
            ScanError::Mismatch(side) => Details::Side(side.into()),
            _ => Details::None,
        };
        Self::from_core(kind, message, details)
    }
}

impl From<samizdat::ErrorKind> for ErrorKind {
    fn from(kind: samizdat::ErrorKind) -> Self {
        use samizdat::ErrorKind as Kind;
        match kind {
            Kind::Duplicate => Self::Duplicate,
            Kind::InvalidMessage => Self::InvalidMessage,
            Kind::OutOfStep => Self::OutOfStep,
            Kind::NoSession => Self::NoSession,
            Kind::UntrustedIdentity => Self::UntrustedIdentity,
            Kind::IdentityMismatch => Self::IdentityMismatch,
            Kind::InvalidBundle => Self::InvalidBundle,
            Kind::MissingGroupKey => Self::MissingGroupKey,
            Kind::NotInGroup => Self::NotInGroup,
            Kind::StalePending => Self::StalePending,
            Kind::StoreBusy => Self::StoreBusy,
            Kind::WrongStorageKey => Self::WrongStorageKey,
            Kind::StoreFailure => Self::StoreFailure,
            Kind::LimitExceeded => Self::LimitExceeded,
            Kind::InvalidArgument => Self::InvalidArgument,
        }
    }
}

impl From<ErrorKind> for samizdat::ErrorKind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Duplicate => Self::Duplicate,
            ErrorKind::InvalidMessage => Self::InvalidMessage,
            ErrorKind::OutOfStep => Self::OutOfStep,
            ErrorKind::NoSession => Self::NoSession,
            ErrorKind::UntrustedIdentity => Self::UntrustedIdentity,
            ErrorKind::IdentityMismatch => Self::IdentityMismatch,
            ErrorKind::InvalidBundle => Self::InvalidBundle,
            ErrorKind::MissingGroupKey => Self::MissingGroupKey,
            ErrorKind::NotInGroup => Self::NotInGroup,
            ErrorKind::StalePending => Self::StalePending,
            ErrorKind::StoreBusy => Self::StoreBusy,
            ErrorKind::WrongStorageKey => Self::WrongStorageKey,
            ErrorKind::StoreFailure => Self::StoreFailure,
            ErrorKind::LimitExceeded => Self::LimitExceeded,
            ErrorKind::InvalidArgument => Self::InvalidArgument,
        }
    }
}

impl From<samizdat::Recovery> for Recovery {
    fn from(recovery: samizdat::Recovery) -> Self {
        use samizdat::Recovery as Core;
        match recovery {
            Core::Drop => Self::Drop,
            Core::RetryLater => Self::RetryLater,
            Core::DecryptAgain => Self::DecryptAgain,
            Core::Heal => Self::Heal,
            Core::FetchBundle => Self::FetchBundle,
            Core::VerifyIdentity => Self::VerifyIdentity,
            Core::ReopenStore => Self::ReopenStore,
            Core::FixCall => Self::FixCall,
        }
    }
}

impl From<Recovery> for samizdat::Recovery {
    fn from(recovery: Recovery) -> Self {
        match recovery {
            Recovery::Drop => Self::Drop,
            Recovery::RetryLater => Self::RetryLater,
            Recovery::DecryptAgain => Self::DecryptAgain,
            Recovery::Heal => Self::Heal,
            Recovery::FetchBundle => Self::FetchBundle,
            Recovery::VerifyIdentity => Self::VerifyIdentity,
            Recovery::ReopenStore => Self::ReopenStore,
            Recovery::FixCall => Self::FixCall,
        }
    }
}

impl From<fingerprint::MismatchedSide> for MismatchedSide {
    fn from(side: fingerprint::MismatchedSide) -> Self {
        match side {
            fingerprint::MismatchedSide::Local => Self::Local,
            fingerprint::MismatchedSide::Remote => Self::Remote,
            fingerprint::MismatchedSide::Both => Self::Both,
        }
    }
}

/// Lowercase hex.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes of [`to_hex`]'s output; `None` for anything else (an odd
/// length, a character that is not a hex digit, an empty string).
fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_kind_makes_its_own_variant_and_code() {
        let mut codes = std::collections::BTreeSet::new();
        for kind in samizdat::ErrorKind::ALL {
            let error = SamizdatError::from_core(kind, String::new(), Details::None);
            assert_eq!(error.core_kind(), kind);
            assert_eq!(error.code(), kind.code());
            assert_eq!(error.kind().code(), kind.code());
            assert_eq!(samizdat::ErrorKind::from(error.kind()), kind);
            assert_eq!(samizdat::Recovery::from(error.recovery()), kind.recovery());
            assert_eq!(error.recovery().code(), kind.recovery().code());
            // Never an empty text, even from an empty core text.
            assert_eq!(error.to_string(), kind.code());
            // The variant's name is the code in CamelCase, as the foreign tests check.
            let variant = format!("{error:?}");
            let camel: String = kind.code().split('_').map(|word| word[..1].to_uppercase() + &word[1..]).collect();
            assert!(variant.starts_with(&format!("{camel} {{")), "{variant} for {kind}");
            codes.insert(error.code());
        }
        assert_eq!(codes.len(), 15);
    }

    #[test]
    fn bytes_travel_as_hex_and_come_back() {
        let request = vec![0x00, 0x7f, 0x80, 0xff];
        let error = SamizdatError::from_core(
            samizdat::ErrorKind::MissingGroupKey,
            "no chain 7 of this sender".to_owned(),
            Details::Chain { chain_id: 7, request: Some(request.clone()) },
        );
        assert_eq!(
            error,
            SamizdatError::MissingGroupKey {
                message: "no chain 7 of this sender".to_owned(),
                chain_id: 7,
                request_hex: Some("007f80ff".to_owned()),
            }
        );
        assert_eq!(error.request(), Some(request));
        assert_eq!(error.identity_key(), None);
        for bad in ["", "0", "0g", "+f", "é1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(from_hex("0A0b"), Some(vec![10, 11]));
    }
}
