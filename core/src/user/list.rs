//! The device list and its signed form (PROTOCOL.md 23.2).

use prost::Message as _;
use samizdat_proto::wire;

use super::{DeviceListError, UserIdentityKey, UserIdentityKeyPair};
use crate::{
    DecodeError,
    address::Address,
    keys::{IdentityKey, KeyError, SIGNATURE_LEN},
};

/// The most devices one list names.
pub const MAX_DEVICES_PER_USER: usize = 32;

/// The longest signed device list accepted, in bytes: a list at every limit
/// (a 256-byte user id, version `u64::MAX`, [`MAX_DEVICES_PER_USER`] devices
/// with the largest ids) takes 1,717 bytes (`the_largest_list_fits_the_limit`
/// in `core/tests/device_lists.rs`).
pub const MAX_DEVICE_LIST_LEN: usize = 2048;

/// The label the list's signature covers before the list's bytes.
pub(crate) const DEVICE_LIST_LABEL: &[u8] = b"samizdat/v1/device-list";

/// A user's devices, as the user identity signs them: the user id, a
/// version that grows with every new list, the user identity key, and each
/// device's id and identity key, in increasing device id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    user_id: String,
    version: u64,
    user_key: UserIdentityKey,
    devices: Vec<(u32, IdentityKey)>,
}

impl DeviceList {
    /// A list of `devices` (in any order) for `user_id`, at `version`,
    /// under `user_key`.
    ///
    /// # Errors
    /// [`DeviceListError::Malformed`] for an empty or too long user id
    /// (`user_id`), version 0 (`version`), no device or more than
    /// [`MAX_DEVICES_PER_USER`] (`devices`), a device id twice
    /// (`devices.device_id`), or an identity key twice
    /// (`devices.identity_key`).
    pub fn new(
        user_id: impl Into<String>,
        version: u64,
        user_key: &UserIdentityKey,
        devices: impl IntoIterator<Item = (u32, IdentityKey)>,
    ) -> Result<Self, DeviceListError> {
        let mut devices: Vec<(u32, IdentityKey)> = devices.into_iter().take(MAX_DEVICES_PER_USER + 1).collect();
        devices.sort_by_key(|(id, _)| *id);
        let list = Self { user_id: user_id.into(), version, user_key: *user_key, devices };
        list.check()?;
        Ok(list)
    }

    /// The rules every list follows (after decoding: PROTOCOL.md 23.2, L8 to
    /// L11; a decoded list passed L5 already, a constructed one checks it
    /// here).
    fn check(&self) -> Result<(), DecodeError> {
        // An address's user id, by the same rules.
        Address::new(self.user_id.as_str(), 0)?;
        if self.version == 0 {
            return Err(DecodeError::InvalidValue("version"));
        }
        if self.devices.is_empty() || self.devices.len() > MAX_DEVICES_PER_USER {
            return Err(DecodeError::InvalidValue("devices"));
        }
        if self.devices.windows(2).any(|pair| matches!(pair, [(a, _), (b, _)] if a >= b)) {
            return Err(DecodeError::InvalidValue("devices.device_id"));
        }
        // At most 32 devices: the pairs are few.
        let mut rest = self.devices.as_slice();
        while let Some(((_, key), others)) = rest.split_first() {
            if others.iter().any(|(_, other)| other == key) {
                return Err(DecodeError::InvalidValue("devices.identity_key"));
            }
            rest = others;
        }
        Ok(())
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The user identity key that signs the list.
    pub fn user_identity_key(&self) -> &UserIdentityKey {
        &self.user_key
    }

    /// The devices, in increasing device id order.
    pub fn devices(&self) -> &[(u32, IdentityKey)] {
        &self.devices
    }

    /// The identity key the list gives device `device_id`, if it names it.
    pub fn device(&self, device_id: u32) -> Option<&IdentityKey> {
        self.devices
            .binary_search_by_key(&device_id, |(id, _)| *id)
            .ok()
            .and_then(|i| self.devices.get(i))
            .map(|(_, key)| key)
    }

    /// Signs the list with `user`, which must be the list's user identity.
    ///
    /// # Errors
    /// [`DeviceListError::WrongSigner`] if `user`'s public key is not the
    /// list's [`Self::user_identity_key`].
    pub fn sign(&self, user: &UserIdentityKeyPair) -> Result<SignedDeviceList, DeviceListError> {
        if user.public_key() != self.user_key {
            return Err(DeviceListError::WrongSigner);
        }
        let list = self.to_proto().encode_to_vec();
        let signature = user.sign(&signature_input(&list));
        Ok(SignedDeviceList { list, signature })
    }

    fn to_proto(&self) -> wire::DeviceList {
        wire::DeviceList {
            user_id: self.user_id.clone(),
            version: self.version,
            user_identity_key: self.user_key.as_bytes().to_vec(),
            devices: self
                .devices
                .iter()
                .map(|(device_id, key)| wire::DeviceEntry {
                    device_id: *device_id,
                    identity_key: key.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    /// Decodes and checks the list's bytes (not the signature).
    fn from_list_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let list = crate::codec::decode::<wire::DeviceList>(bytes)?;
        // The count first: a hostile list costs at most 33 point decodings.
        if list.devices.is_empty() || list.devices.len() > MAX_DEVICES_PER_USER {
            return Err(DecodeError::InvalidValue("devices"));
        }
        let user_key = UserIdentityKey::from_slice(&list.user_identity_key)
            .map_err(|error| key_error(error, "user_identity_key"))?;
        let devices = list
            .devices
            .iter()
            .map(|entry| {
                IdentityKey::from_slice(&entry.identity_key)
                    .map(|key| (entry.device_id, key))
                    .map_err(|error| key_error(error, "devices.identity_key"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let list = Self { user_id: list.user_id, version: list.version, user_key, devices };
        list.check()?;
        Ok(list)
    }
}

/// A key that does not parse, as the decoder reports it.
fn key_error(error: KeyError, field: &'static str) -> DecodeError {
    match error {
        KeyError::InvalidLength { expected, actual } => DecodeError::InvalidLength { field, expected, actual },
        _ => DecodeError::InvalidValue(field),
    }
}

/// `DEVICE_LIST_LABEL || list`: what the signature covers.
fn signature_input(list: &[u8]) -> Vec<u8> {
    [DEVICE_LIST_LABEL, list].concat()
}

/// A device list with the user identity's signature, as it travels (with
/// bundles, or on its own from the server). Verify it with [`Self::verify`],
/// or through a [`UserTrust`](super::UserTrust).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedDeviceList {
    /// The canonical encoding of the list: what the signature covers.
    list: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl SignedDeviceList {
    /// The wire encoding (protobuf `SignedDeviceList`).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::SignedDeviceList { list: self.list.clone(), signature: self.signature.to_vec() }.encode_to_vec()
    }

    /// Parses the wire encoding; the list inside is checked by
    /// [`Self::verify`].
    ///
    /// # Errors
    /// [`DeviceListError::Malformed`]: longer than [`MAX_DEVICE_LIST_LEN`]
    /// (`TooLarge`), not canonical (`Protobuf`), a signature of other than 64
    /// bytes (`InvalidLength` of `signature`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeviceListError> {
        if bytes.len() > MAX_DEVICE_LIST_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_DEVICE_LIST_LEN }.into());
        }
        let signed = crate::codec::decode::<wire::SignedDeviceList>(bytes)?;
        let signature: [u8; SIGNATURE_LEN] = signed.signature.as_slice().try_into().map_err(|_| {
            DecodeError::InvalidLength { field: "signature", expected: SIGNATURE_LEN, actual: signed.signature.len() }
        })?;
        Ok(Self { list: signed.list, signature })
    }

    /// The list, once its bytes follow every rule of PROTOCOL.md 23.2 and the
    /// signature verifies under the user identity key it names. Who that key
    /// belongs to is the pin's question ([`UserTrust`](super::UserTrust)).
    ///
    /// # Errors
    /// [`DeviceListError::Malformed`] for a list that breaks a rule,
    /// [`DeviceListError::BadSignature`].
    pub fn verify(&self) -> Result<DeviceList, DeviceListError> {
        let list = DeviceList::from_list_bytes(&self.list)?;
        if !list.user_key.verify(&signature_input(&self.list), &self.signature) {
            return Err(DeviceListError::BadSignature);
        }
        Ok(list)
    }
}

impl std::fmt::Debug for SignedDeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedDeviceList").field("len", &self.list.len()).finish_non_exhaustive()
    }
}
