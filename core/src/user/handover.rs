//! The user identity handover (PROTOCOL.md 23.9): what a device that
//! replaced its user's identity (a device was lost) gives each of the
//! user's other devices: the new user identity key and the list it signed.
//!
//! It travels as control content (the padding's marker `0x81`, PROTOCOL.md
//! 5.2) of a one-to-one message: a `Control` whose body is field 6,
//! `handover`. This module owns its encoding and parsing only; who may send
//! one and what a device does with it are the device API's
//! (`device/replace.rs`).

use std::fmt;

use samizdat_proto::wire as pb;
use zeroize::Zeroizing;

use super::{DeviceList, SignedDeviceList, UserIdentityKey, UserIdentityKeyPair};
use crate::DecodeError;

/// The first byte of a handover's control content: the key of field 6 with
/// wire type 2 (length-delimited), `6 << 3 | 2`. A one-byte key is the only
/// minimal encoding of it, so control content that starts with any other
/// byte is not a handover.
pub(crate) const HANDOVER_KEY: u8 = 0x32;

/// The length of a user identity key's seed.
const SEED_LEN: usize = 32;

/// A new user identity and the list it signed. The key pair is wiped on
/// drop; `Debug` shows its public key only.
pub(crate) struct Handover {
    /// The new user identity.
    pub(crate) user_identity: UserIdentityKeyPair,
    /// The list the new identity signed, verified (L1 to L12) and signed by
    /// `user_identity`.
    pub(crate) device_list: SignedDeviceList,
    /// `device_list`, as verified.
    pub(crate) list: DeviceList,
    /// The user identity key the new one replaces (`None`: the sender no
    /// longer knows it, a handover made again from a restored store).
    pub(crate) replaces: Option<UserIdentityKey>,
}

impl Handover {
    /// The control content of this handover: the canonical encoding of a
    /// `Control` with body `handover`. Wiped on drop.
    pub(crate) fn to_control_bytes(&self) -> Zeroizing<Vec<u8>> {
        use prost::Message as _;
        let control = Zeroizing::new(pb::Control {
            body: Some(pb::control::Body::Handover(pb::UserIdentityHandover {
                seed: self.user_identity.to_seed().to_vec(),
                device_list: self.device_list.to_bytes(),
                replaces: self.replaces.map(|key| key.as_bytes().to_vec()).unwrap_or_default(),
            })),
        });
        let mut out = Zeroizing::new(Vec::with_capacity(control.encoded_len()));
        // Encoding into a Vec cannot run out of space.
        let _ = control.encode(&mut *out);
        out
    }

    /// Reads control content as a handover: `None` if it does not start with
    /// [`HANDOVER_KEY`] (another control kind), else the handover or why it
    /// is malformed. The checks, in order (PROTOCOL.md 23.9, H1 to H5): the
    /// canonical encoding of a `Control` whose body is `handover`; a seed of
    /// 32 bytes; `replaces` absent or a user identity key (32 bytes, 23.2
    /// L6); a list that reads and verifies (L1 to L12); signed by the seed's
    /// key.
    pub(crate) fn from_control_bytes(content: &[u8]) -> Option<Result<Self, DecodeError>> {
        (content.first() == Some(&HANDOVER_KEY)).then(|| Self::parse(content))
    }

    fn parse(content: &[u8]) -> Result<Self, DecodeError> {
        let control = crate::codec::decode_secret::<pb::Control>(content)?;
        let Some(pb::control::Body::Handover(handover)) = &control.body else {
            // Field 6 is `handover`: a canonical encoding that starts with
            // its key is one.
            return Err(DecodeError::Protobuf);
        };
        let seed: Zeroizing<[u8; SEED_LEN]> = Zeroizing::new(handover.seed.as_slice().try_into().map_err(|_| {
            DecodeError::InvalidLength { field: "handover.seed", expected: SEED_LEN, actual: handover.seed.len() }
        })?);
        let replaces = match handover.replaces.as_slice() {
            [] => None,
            bytes if bytes.len() != SEED_LEN => {
                let actual = bytes.len();
                return Err(DecodeError::InvalidLength { field: "handover.replaces", expected: SEED_LEN, actual });
            }
            bytes => {
                Some(UserIdentityKey::from_slice(bytes).map_err(|_| DecodeError::InvalidValue("handover.replaces"))?)
            }
        };
        let device_list = SignedDeviceList::from_bytes(&handover.device_list)
            .map_err(|_| DecodeError::InvalidValue("handover.device_list"))?;
        let list = device_list.verify().map_err(|_| DecodeError::InvalidValue("handover.device_list"))?;
        let user_identity = UserIdentityKeyPair::from_seed(&seed);
        if *list.user_identity_key() != user_identity.public_key() {
            return Err(DecodeError::InvalidValue("handover.seed"));
        }
        Ok(Self { user_identity, device_list, list, replaces })
    }
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover").field("user_identity", &self.user_identity).finish_non_exhaustive()
    }
}

/// The first byte of a handover acknowledgment's control content: the key
/// of field 7 with wire type 2, `7 << 3 | 2`.
pub(crate) const HANDOVER_ACK_KEY: u8 = 0x3a;

/// What a device sends back when it took a handover (or had taken it): the
/// user identity key it now holds (PROTOCOL.md 23.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandoverAck {
    /// The user identity key of the list the device now holds.
    pub(crate) user_identity_key: UserIdentityKey,
}

impl HandoverAck {
    /// The control content of this acknowledgment: the canonical encoding
    /// of a `Control` with body `handover_ack`.
    pub(crate) fn to_control_bytes(self) -> Vec<u8> {
        use prost::Message as _;
        pb::Control {
            body: Some(pb::control::Body::HandoverAck(pb::HandoverAck {
                user_identity_key: self.user_identity_key.as_bytes().to_vec(),
            })),
        }
        .encode_to_vec()
    }

    /// Reads control content as an acknowledgment: `None` if it does not
    /// start with [`HANDOVER_ACK_KEY`], else the acknowledgment or why it is
    /// malformed (PROTOCOL.md 23.9, A1 and A2): the canonical encoding of a
    /// `Control` whose body is `handover_ack`; a user identity key (32
    /// bytes, 23.2 L6).
    pub(crate) fn from_control_bytes(content: &[u8]) -> Option<Result<Self, DecodeError>> {
        (content.first() == Some(&HANDOVER_ACK_KEY)).then(|| {
            let control = crate::codec::decode_secret::<pb::Control>(content)?;
            let Some(pb::control::Body::HandoverAck(ack)) = &control.body else {
                return Err(DecodeError::Protobuf);
            };
            let key = ack.user_identity_key.as_slice();
            if key.len() != SEED_LEN {
                let actual = key.len();
                return Err(DecodeError::InvalidLength {
                    field: "handover_ack.user_identity_key",
                    expected: 32,
                    actual,
                });
            }
            let user_identity_key = UserIdentityKey::from_slice(key)
                .map_err(|_| DecodeError::InvalidValue("handover_ack.user_identity_key"))?;
            Ok(Self { user_identity_key })
        })
    }
}
