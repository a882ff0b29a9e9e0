//! A device's store filled with rows the fuzzer chose, sealed under the
//! target's storage key (see `samizdat_fuzz::store_input` for the layout),
//! then `Device::open_in` and a sequence of calls on it. This reaches every
//! stored record's decoder as the device uses them: the identity row, the
//! prekey index and key rows, remembered base keys and ring slots, the
//! previous format's single prekey row, session rows (records with their
//! seeds apart, and the previous form with seeds in), and seeds rows.
//!
//! Asserted: no panic; every failed call (opening included) leaves every row
//! as it was; `decrypt` and `decrypt_batch` write nothing; a message whose
//! decryption was committed does not decrypt again in the same store.
#![no_main]

use std::sync::{Arc, Once};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use samizdat::{
    address::Address,
    device::{Device, DeviceError},
    keys::IdentityKey,
    store::{Backend, Expected, MemoryBackend, Write},
};
use samizdat_fuzz::{
    input::Reader,
    seal::{Sealer, self_check},
    store_input::{Call, STORAGE_KEY, peer, read_row},
};

/// Rows and calls per input at most.
const MAX_ROWS: u8 = 48;
const MAX_CALLS: usize = 24;

type Store = Arc<MemoryBackend>;

fn call(device: &mut Device<Store>, backend: &Store, reader: &mut Reader<'_>) {
    let before = backend.snapshot();
    let unchanged = |what: &str| assert!(backend.snapshot() == before, "{what} wrote to the store");
    let result: Result<(), DeviceError> = match Call::from_byte(reader.u8()) {
        Call::Reopen => Device::open_in(backend.clone(), &STORAGE_KEY).map(|opened| *device = opened),
        Call::HasSession => device.has_session(&peer(reader.u8())).map(drop),
        Call::PeerIdentity => device.peer_identity(&peer(reader.u8())).map(drop),
        Call::Encrypt => {
            let (to, len) = (peer(reader.u8()), reader.u8());
            device.encrypt(&to, &vec![0x61; usize::from(len)]).map(drop)
        }
        Call::Decrypt => {
            let (from, bytes, commit) = (peer(reader.u8()), reader.chunk(), reader.u8().is_multiple_of(2));
            match device.decrypt(&from, bytes) {
                Ok(pending) => {
                    unchanged("decrypt");
                    if commit {
                        let committed = device.commit(pending);
                        if committed.is_ok() {
                            let again = backend.snapshot();
                            let replay = device.decrypt(&from, bytes);
                            assert!(replay.is_err(), "a committed message decrypted again");
                            assert!(backend.snapshot() == again, "decrypt wrote to the store");
                        }
                        committed.map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                Err(error) => Err(error),
            }
        }
        Call::Batch => {
            let count = reader.u8() % 5;
            let messages: Vec<(Address, Vec<u8>)> =
                (0..count).map(|_| (peer(reader.u8()), reader.chunk().to_vec())).collect();
            match device.decrypt_batch(&messages) {
                Ok(batch) => {
                    unchanged("decrypt_batch");
                    device.commit_batch(batch)
                }
                Err(error) => Err(error),
            }
        }
        Call::Bundles => {
            let count = usize::from(reader.u8() % 4);
            device.prekey_bundles(count).map(|bundles| assert!(bundles.len() <= count, "too many bundles"))
        }
        Call::Counts => device.prekey_counts().map(drop),
        Call::Refill => {
            let (threshold, target, now) = (reader.u8() % 4, reader.u8() % 4, reader.u16());
            device
                .refill_prekeys(
                    usize::from(threshold),
                    usize::from(target),
                    UNIX_EPOCH + Duration::from_secs(u64::from(now)),
                )
                .map(drop)
        }
        Call::Rotate => device
            .rotate_prekeys(
                UNIX_EPOCH + Duration::from_secs(u64::from(reader.u32())),
                Duration::from_secs(u64::from(reader.u32())),
            )
            .map(drop),
        Call::StartSession => device.start_session(reader.chunk()).map(drop),
        Call::Trust => {
            let (to, key) = (peer(reader.u8()), reader.array::<32>());
            match IdentityKey::from_bytes(&key) {
                Ok(identity) => device.trust_identity(&to, identity),
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        assert!(backend.snapshot() == before, "a call failed ({error:?}) and changed the store");
    }
}

fuzz_target!(|data: &[u8]| {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(self_check);
    let sealer = Sealer::new(STORAGE_KEY.as_bytes());
    let mut reader = Reader::new(data);
    let rows = reader.u8() % MAX_ROWS;
    let writes: Vec<Write> = (0..rows)
        .map(|i| {
            let (table, key, value) = read_row(&mut reader, &sealer, u32::from(i));
            Write { table, key, value: Some(value), expected: Expected::Any }
        })
        .collect();
    let backend: Store = Arc::new(MemoryBackend::new());
    backend.apply(&writes).expect("a memory write");
    let before = backend.snapshot();
    let mut device = match Device::open_in(backend.clone(), &STORAGE_KEY) {
        Ok(device) => device,
        Err(error) => {
            assert!(backend.snapshot() == before, "opening failed ({error:?}) and changed the store");
            return;
        }
    };
    for _ in 0..MAX_CALLS {
        if reader.is_empty() {
            break;
        }
        call(&mut device, &backend, &mut reader);
    }
});
