//! Users with several devices (PROTOCOL.md 23): devices in memory stores,
//! signed device lists, the store's rows to compare before and after a
//! refusal, and (with `hazmat`) control content a modified library sends
//! (`fan_out.rs`).
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::{collections::BTreeMap, time::UNIX_EPOCH};

use samizdat::{
    address::Address,
    device::{Device, DeviceError},
    store::{MemoryBackend, StorageKey, Table},
    user::{DeviceList, DeviceListError, SignedDeviceList, UserIdentityKeyPair},
};

/// Device `id` of `user` in a new memory store under the storage key
/// `[key; 32]`, created at time 0.
pub fn device(user: &str, id: u32, key: u8) -> Device<MemoryBackend> {
    Device::create_in(
        MemoryBackend::new(),
        &StorageKey::from_bytes([key; 32]),
        Address::new(user, id).unwrap(),
        UNIX_EPOCH,
    )
    .unwrap()
}

/// The user identity of the seed `[seed; 32]`.
pub fn user_key(seed: u8) -> UserIdentityKeyPair {
    UserIdentityKeyPair::from_seed(&[seed; 32])
}

/// `user`'s list at `version`, naming `devices`, signed by `uik`.
pub fn list(
    uik: &UserIdentityKeyPair,
    user: &str,
    version: u64,
    devices: &[&Device<MemoryBackend>],
) -> SignedDeviceList {
    let entries = devices.iter().map(|d| (d.address().device_id(), d.identity_key()));
    DeviceList::new(user, version, &uik.public_key(), entries).unwrap().sign(uik).unwrap()
}

/// Every row of every table of a device's store.
pub fn rows(device: &Device<MemoryBackend>) -> BTreeMap<(Table, Vec<u8>), Vec<u8>> {
    device.backend().snapshot()
}

/// The device-list refusal a call returned.
pub fn refusal(result: Result<impl std::fmt::Debug, DeviceError>) -> DeviceListError {
    match result {
        Err(DeviceError::DeviceList(e)) => e,
        other => panic!("expected a device-list refusal, got {other:?}"),
    }
}

/// A control message (marker `0x81`) holding `content`, sealed by hand on
/// the current sending chain of `sender`'s session with `to`, at its next
/// counter: what a modified library of the sender can send (the app's calls
/// make app content only). `storage_key` is the byte of the sender's
/// storage key ([`device`]). The sender's state does not move.
#[cfg(feature = "hazmat")]
pub fn forged_control(sender: &Device<MemoryBackend>, storage_key: u8, to: &Address, content: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    use samizdat::{hazmat, store::Backend};
    use samizdat_proto::storage;

    let key = [storage_key; 32];
    let row = hazmat::peer_row_key(&key, to);
    let sealed = sender.backend().get(Table::Sessions, &row).unwrap().expect("a session with the recipient");
    let opened = hazmat::open_row(&key, Table::Sessions, &row, &sealed).unwrap();
    let session_row = storage::SessionRow::decode(opened.as_slice()).unwrap();
    let record = storage::SessionRecord::decode(session_row.record.as_slice()).unwrap();
    let current = record.current.as_ref().unwrap();
    let previous_counter = current.ratchet.as_ref().unwrap().sending.as_ref().unwrap().previous_counter;
    let chain = super::attacker::sending(&session_row.record, current.base_key.as_slice().try_into().unwrap());
    let seed = hazmat::chain_step(&chain.chain_key).0;
    let padded = super::attacker::pad_control(content);
    let mut rng = super::rng(0x5e);
    super::attacker::seal_padded(
        &mut rng,
        &chain.ad,
        &chain.header_key,
        (&chain.ratchet_key, previous_counter),
        &seed,
        chain.counter,
        &padded,
    )
    .to_bytes()
}

/// `replace_user_identity` as an app whose user named the devices `lost`:
/// every other device of `device`'s own list is kept.
pub fn replace_lost<B: samizdat::store::Backend>(
    device: &Device<B>,
    user_identity: &UserIdentityKeyPair,
    lost: &[u32],
) -> Result<samizdat::device::Replaced, DeviceError> {
    let keep: Vec<u32> = match device.device_list()? {
        Some(own) => {
            own.verify().unwrap().devices().iter().map(|(id, _)| *id).filter(|id| !lost.contains(id)).collect()
        }
        None => Vec::new(),
    };
    device.replace_user_identity(user_identity, &keep)
}
