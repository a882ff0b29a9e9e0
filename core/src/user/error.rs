//! What can go wrong with a device list.

use thiserror::Error;

use super::UserIdentityKey;
use crate::{DecodeError, ErrorKind};

/// Why a device list, or a device, was refused. Every refusal leaves the
/// [`UserTrust`](super::UserTrust) as it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The bytes are not a signed device list, or the list breaks a rule of
    /// its format (PROTOCOL.md 23.2): not canonical, an empty or too long
    /// user id, version 0, a key that is not a valid point, no device, too
    /// many, device ids not strictly increasing, one identity key twice.
    #[error("malformed device list: {0}")]
    Malformed(#[from] DecodeError),
    /// The key pair asked to sign a list is not the list's user identity.
    #[error("the key pair is not the device list's user identity key")]
    WrongSigner,
    /// The signature does not verify under the user identity key the list
    /// names.
    #[error("the device list's signature does not verify")]
    BadSignature,
    /// The list is another user's.
    #[error("the device list is of user {found:?}, not {expected:?}")]
    WrongUser {
        /// The user id asked for.
        expected: String,
        /// The user id the list names.
        found: String,
    },
    /// The list is signed by another user identity key than the one pinned:
    /// a new user identity (a reinstall without the old key), or an
    /// attacker's. Only the app's decision, after the users compared safety
    /// numbers, replaces the pin ([`UserTrust::trust_new_identity`](super::UserTrust::trust_new_identity)).
    #[error("the device list is signed by a user identity key that is not the trusted one")]
    UntrustedUser {
        /// The key that signed the offered list.
        offered: UserIdentityKey,
    },
    /// The list is older than one already verified: a server replaying an
    /// old list (to bring back a removed device, for one). A removed device
    /// that still holds the user key can sign a newer one: see PROTOCOL.md
    /// 23.1 for why removing a lost device needs a new user identity.
    #[error("device list version {offered} is older than version {seen}, already seen")]
    Rollback {
        /// The newest version verified.
        seen: u64,
        /// The version offered.
        offered: u64,
    },
    /// Another list with the same version as the one verified: the user
    /// identity signed two different lists with one version (a device of
    /// the user that went back in time, or a stolen user key).
    #[error("two different device lists with version {version}")]
    Equivocation {
        /// The version both lists carry.
        version: u64,
    },
    /// The device is not in the newest verified list with this identity
    /// key: a ghost device, a removed one, or a reinstalled one the user
    /// has not listed yet.
    #[error("device {device_id} is not in the user's verified device list with this identity key")]
    UnlistedDevice {
        /// The device id.
        device_id: u32,
    },
    /// The user is not pinned: this device has seen no list of it (no
    /// bundle that carried one, no [`update_device_list`](crate::device::Device::update_device_list)),
    /// so it knows neither the user identity nor the user's devices
    /// (a per-user safety number, a fan-out, PROTOCOL.md 23.4, 23.6).
    /// Fetch the user's bundles (their list pins the user) or its list.
    #[error("no device list of user {user_id:?} is pinned")]
    NotPinned {
        /// The user id asked for.
        user_id: String,
    },
    /// This device has no list of its own user
    /// ([`set_device_list`](crate::device::Device::set_device_list) was
    /// never called): it has no user identity to compute a per-user safety
    /// number from, and no list to check a sent sync's sender against
    /// (PROTOCOL.md 23.4, 23.7). Set it first.
    #[error("this device has no device list of its own user")]
    NoOwnList,
    /// A sent sync (PROTOCOL.md 23.7) came from a device of another user: a
    /// contact cannot speak for our own user's sends. The message is
    /// refused and changes nothing.
    #[error("a sent sync from a device of user {user_id:?}, not of our own user")]
    ForeignSentSync {
        /// The user id of the device it came from.
        user_id: String,
    },
    /// A user identity handover (PROTOCOL.md 23.9) came from a device of
    /// another user: only our own devices may give us a user identity. The
    /// message is refused and changes nothing.
    #[error("a user identity handover from a device of user {user_id:?}, not of our own user")]
    ForeignHandover {
        /// The user id of the device it came from.
        user_id: String,
    },
    /// [`replace_user_identity`](crate::device::Device::replace_user_identity)
    /// was given the user identity our list is already signed by, while the
    /// list still names a lost device: the lost device holds that key, so
    /// only a new one removes it for good. Generate a new key pair.
    #[error("the user identity to replace is the one the list is already signed by")]
    SameUserIdentity,
}

impl DeviceListError {
    /// The stable error code (PROTOCOL.md 19):
    /// - [`ErrorKind::UntrustedIdentity`] for a new user identity (the user
    ///   must verify it) and an unlisted device (nothing may be sent to it
    ///   or read from it until a verified list names it);
    /// - [`ErrorKind::InvalidArgument`] for a list signed with the wrong key
    ///   pair, for a call that needs our own list before it is set (the
    ///   app's call: set it first), and for a replacement with the key pair
    ///   the list is already signed by;
    /// - [`ErrorKind::NoSession`] for a user that is not pinned (fetch its
    ///   bundles, whose list pins it);
    /// - [`ErrorKind::InvalidMessage`] for a sent sync or a handover from a
    ///   contact (drop it: no contact may send one);
    /// - [`ErrorKind::InvalidBundle`] for everything else: what the server
    ///   served is not a list the user made, or is an old one.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongSigner | Self::NoOwnList | Self::SameUserIdentity => ErrorKind::InvalidArgument,
            Self::NotPinned { .. } => ErrorKind::NoSession,
            Self::ForeignSentSync { .. } | Self::ForeignHandover { .. } => ErrorKind::InvalidMessage,
            Self::UntrustedUser { .. } | Self::UnlistedDevice { .. } => ErrorKind::UntrustedIdentity,
            Self::Malformed(_)
            | Self::BadSignature
            | Self::WrongUser { .. }
            | Self::Rollback { .. }
            | Self::Equivocation { .. } => ErrorKind::InvalidBundle,
        }
    }
}
