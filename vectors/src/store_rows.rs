//! Sealed store rows (PROTOCOL.md 14.4), peer row keys (14.5) and the row
//! keys of a peer's outbox (20.3).

use chacha20::ChaCha20Rng;
use hkdf::Hkdf;
use samizdat::store::StorageKey;
use samizdat::{
    address::Address,
    device::Device,
    hazmat, heal,
    store::{MemoryBackend, Table},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::UNIX_EPOCH;

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, err, h, random, random_vec, xchacha20poly1305_seal},
};

/// `store_rows.json`.
pub(crate) struct StoreRows;

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum RowCase {
    /// `SealRow(table, key, plaintext)` with the drawn `nonce`.
    Seal {
        name: String,
        storage_key: String,
        table: String,
        key: String,
        plaintext: String,
        nonce: String,
        #[serde(default)]
        sealed: String,
    },
    /// `OpenRow(table, key, sealed)`: the plaintext, or the error.
    Open {
        name: String,
        storage_key: String,
        table: String,
        key: String,
        sealed: String,
        #[serde(default)]
        result: Value,
    },
    /// `row_key(peer)` of table `sessions`.
    PeerRowKey {
        name: String,
        storage_key: String,
        user_id: String,
        device_id: u32,
        #[serde(default)]
        row_key: String,
    },
    /// The row keys of the peer's outbox (20.3): the index, and the entry
    /// of the message `id`.
    OutboxRowKeys {
        name: String,
        storage_key: String,
        user_id: String,
        device_id: u32,
        id: String,
        /// `HKDF(0^32, storage_key, "samizdat/v1/store/outbox", 32)` (14.3).
        #[serde(default)]
        outbox_key: String,
        /// `HMAC-SHA256(outbox_key, id)`.
        #[serde(default)]
        id_hash: String,
        /// `row_key(peer)`, in table `outboxes`.
        #[serde(default)]
        index_key: String,
        /// `row_key(peer) || "/out/" || id_hash`.
        #[serde(default)]
        entry_key: String,
    },
    /// The two `meta` rows of a store made under `first_key` and rotated to
    /// `storage_key` (14.12): the naming-keys row and the check row.
    Rotated {
        name: String,
        first_key: String,
        storage_key: String,
        nonce_naming: String,
        nonce_check: String,
        /// `0x01 || address_key || base_key_key || group_key || outbox_key`,
        /// each derived from `first_key` (14.3).
        #[serde(default)]
        naming_keys: String,
        /// `SHA-256(STORE_NAMING_LABEL || naming_keys)`.
        #[serde(default)]
        binding: String,
        /// `KEY_CHECK_NAMED_PREFIX || binding`.
        #[serde(default)]
        check_plaintext: String,
        /// `SealRow(meta, "naming-keys", naming_keys)` under `storage_key`.
        #[serde(default)]
        sealed_naming: String,
        /// `SealRow(meta, "key-check", check_plaintext)` under `storage_key`.
        #[serde(default)]
        sealed_check: String,
    },
}

impl VectorSet for StoreRows {
    type Case = RowCase;
    const META: Meta = Meta {
        file: "store_rows.json",
        section: "14.2 Tables and rows; 14.3 Keys derived from the storage key; 14.4 Sealed values; 14.5 Peer addresses as row keys; 14.12 Storage-key rotation (the rotated meta rows); 15.10 StoreError; 20.3 The outbox (its row keys)",
        description: "`seal`: SealRow(table, key, plaintext) of 14.4 under the seal_key derived from `storage_key` \
            (14.3), drawing `nonce` (24 bytes); `sealed` = 0x02 || nonce || XChaCha20-Poly1305(seal_key, nonce, \
            AAD(table, key), PAD_ROW(plaintext)), 41 + ROW_BUCKET(len(plaintext)) bytes. `table` is the table's name \
            (14.2), `key` the row key. `open`: OpenRow(table, key, sealed): `result` is `{\"plaintext\": hex}` or \
            `{\"error\": \"corrupt\", \"table\": <name>}` (StoreError::Corrupt): a value moved to another row or \
            table, sealed under another storage key, altered, too short, of an unknown version, or whose padding \
            does not verify. Version 0x01 values (release 0.1, no padding) still open. `peer_row_key`: \
            HMAC-SHA256(address_key, u32be(len(user_id)) || user_id || u32be(device_id)) (14.5). \
            `outbox_row_keys`: the row keys of the outbox for that peer (20.3): `outbox_key` = \
            HKDF(salt = 0^32, ikm = storage_key, info = \"samizdat/v1/store/outbox\", L = 32) (14.3); `id_hash` = \
            HMAC-SHA256(outbox_key, id), `id` being the message id (16 bytes, 20.2) of the kept message; \
            `index_key` = row_key(peer) (32 bytes), in table `outboxes` (since release 0.5; before it, \
            row_key(peer) || \"/outbox\" in table `sessions`); `entry_key` = row_key(peer) || \"/out/\" || \
            id_hash (69 bytes), in table `sessions`. `rotated`: the two `meta` rows of a store made under `first_key` \
            and rotated to `storage_key` (14.12): `naming_keys` = 0x01 || address_key || base_key_key || group_key || \
            outbox_key, each HKDF(salt = 0^32, ikm = first_key, info = its label, L = 32) (14.3), 129 bytes; \
            `binding` = SHA-256(\"samizdat/v1/store/naming-keys\" || naming_keys); `check_plaintext` = \
            \"samizdat storage key check v2\" || binding (61 bytes); `sealed_naming` = SealRow(meta, \"naming-keys\", \
            naming_keys) and `sealed_check` = SealRow(meta, \"key-check\", check_plaintext), both under the seal_key \
            of `storage_key`, with the nonces given. Each case is also checked against a device the library rotates \
            so (its rows open to the same plaintexts).",
        seed: 19,
        inputs: &[
            "operation",
            "name",
            "storage_key",
            "table",
            "key",
            "plaintext",
            "nonce",
            "sealed",
            "user_id",
            "device_id",
            "id",
            "first_key",
            "nonce_naming",
            "nonce_check",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<RowCase>, VErr> {
        let storage_key = random::<32>(rng);
        let other_key = random::<32>(rng);
        let peer = b"0123456789abcdef0123456789abcdef".to_vec();
        let seal = |name: &str, table: Table, key: &[u8], plaintext: Vec<u8>, nonce: [u8; 24]| RowCase::Seal {
            name: name.to_owned(),
            storage_key: h(storage_key),
            table: table.name().to_owned(),
            key: h(key),
            plaintext: h(plaintext),
            nonce: h(nonce),
            sealed: String::new(),
        };
        let open = |name: &str, with: &[u8; 32], table: Table, key: &[u8], sealed: &[u8]| RowCase::Open {
            name: name.to_owned(),
            storage_key: h(with),
            table: table.name().to_owned(),
            key: h(key),
            sealed: h(sealed),
            result: Value::Null,
        };
        let mut cases = Vec::new();
        // Sizes at the edges of the row buckets (ROW_BUCKET(n) = max(512, B(n + 1))).
        for len in [0usize, 1, 511, 512, 1023, 4095, 4096, 8191] {
            cases.push(seal(
                &format!("seal_{len}_bytes"),
                Table::Sessions,
                &peer,
                random_vec(rng, len),
                random::<24>(rng),
            ));
        }
        cases.push(seal("seal_key_check_row", Table::Meta, b"key-check", b"samizdat".to_vec(), random::<24>(rng)));

        let plaintext = random_vec(rng, 100);
        let nonce = random::<24>(rng);
        let genuine = hazmat::seal_row(&storage_key, Table::Sessions, &peer, &plaintext, &nonce);
        let mut altered = genuine.clone();
        if let Some(byte) = altered.last_mut() {
            *byte ^= 0x01;
        }
        let mut version_3 = genuine.clone();
        if let Some(byte) = version_3.first_mut() {
            *byte = 0x03;
        }
        let seal_key = derive(&storage_key, b"samizdat/v1/store/seal")?;
        let raw = |version: u8, table: Table, key: &[u8], inner: &[u8], nonce: &[u8; 24]| -> R<Vec<u8>> {
            let sealed = xchacha20poly1305_seal(&seal_key, nonce, &aad(table, key), inner)?;
            Ok([&[version][..], &sealed].concat())
        };
        let legacy = raw(0x01, Table::Sessions, &peer, &plaintext, &random::<24>(rng))?;
        let no_marker =
            raw(0x02, Table::Sessions, &peer, &[plaintext.clone(), vec![0; 411]].concat(), &random::<24>(rng))?;
        let wrong_bucket = raw(
            0x02,
            Table::Sessions,
            &peer,
            &[plaintext.clone(), vec![0x80], vec![0; 1024 - 101]].concat(),
            &random::<24>(rng),
        )?;
        let marker_then_byte = raw(
            0x02,
            Table::Sessions,
            &peer,
            &[plaintext.clone(), vec![0x80], vec![0; 410], vec![0x01]].concat(),
            &random::<24>(rng),
        )?;
        let other_peer = b"fedcba9876543210fedcba9876543210".to_vec();
        cases.extend([
            open("open_genuine", &storage_key, Table::Sessions, &peer, &genuine),
            open("open_under_another_storage_key", &other_key, Table::Sessions, &peer, &genuine),
            open("open_moved_to_another_row", &storage_key, Table::Sessions, &other_peer, &genuine),
            open("open_moved_to_another_table", &storage_key, Table::PreKeys, &peer, &genuine),
            open("open_altered_tag", &storage_key, Table::Sessions, &peer, &altered),
            open("open_version_3", &storage_key, Table::Sessions, &peer, &version_3),
            open("open_40_bytes", &storage_key, Table::Sessions, &peer, genuine.get(..40).unwrap_or_default()),
            open("open_empty", &storage_key, Table::Sessions, &peer, &[]),
            open("open_version_1_unpadded", &storage_key, Table::Sessions, &peer, &legacy),
            open("open_padding_without_marker", &storage_key, Table::Sessions, &peer, &no_marker),
            open("open_padding_to_another_bucket", &storage_key, Table::Sessions, &peer, &wrong_bucket),
            open("open_padding_byte_after_marker", &storage_key, Table::Sessions, &peer, &marker_then_byte),
        ]);
        for (name, user, device) in [("bob_2", "bob", 2u32), ("alice_1", "alice", 1), ("unicode_0", "Zoë 🌍", 0)] {
            cases.push(RowCase::PeerRowKey {
                name: format!("peer_row_key_{name}"),
                storage_key: h([7u8; 32]),
                user_id: user.to_owned(),
                device_id: device,
                row_key: String::new(),
            });
        }
        // The outbox of a peer: the known answer of PROTOCOL.md 14.3 and 20.3
        // (the id of `abc`, 20.2), and two more (nothing is drawn).
        let outbox =
            |name: &str, storage_key: [u8; 32], user: &str, device: u32, id: [u8; 16]| RowCase::OutboxRowKeys {
                name: format!("outbox_row_keys_{name}"),
                storage_key: h(storage_key),
                user_id: user.to_owned(),
                device_id: device,
                id: h(id),
                outbox_key: String::new(),
                id_hash: String::new(),
                index_key: String::new(),
                entry_key: String::new(),
            };
        cases.extend([
            outbox("bob_2_abc", [7; 32], "bob", 2, heal::message_id(b"abc")),
            outbox("bob_2_message_0", [7; 32], "bob", 2, heal::message_id(b"message 0")),
            outbox("unicode_0_zero_id", storage_key, "Zoë 🌍", 0, [0; 16]),
        ]);
        // A store rotated once: from the known answer's key `07` x 32 to
        // `08` x 32; and once more with drawn keys.
        let rotated = |name: &str, first: [u8; 32], to: [u8; 32], nonces: ([u8; 24], [u8; 24])| RowCase::Rotated {
            name: format!("rotated_{name}"),
            first_key: h(first),
            storage_key: h(to),
            nonce_naming: h(nonces.0),
            nonce_check: h(nonces.1),
            naming_keys: String::new(),
            binding: String::new(),
            check_plaintext: String::new(),
            sealed_naming: String::new(),
            sealed_check: String::new(),
        };
        cases.push(rotated("07_to_08", [7; 32], [8; 32], ([1; 24], [2; 24])));
        cases.push(rotated("drawn", random::<32>(rng), random::<32>(rng), (random::<24>(rng), random::<24>(rng))));
        Ok(cases)
    }

    fn compute(case: &RowCase) -> R<RowCase> {
        Ok(match case {
            RowCase::Seal { name, storage_key, table, key, plaintext, nonce, .. } => {
                let storage_key = array::<32>("storage_key", storage_key)?;
                let table = table_named(table)?;
                let (key, plaintext) = (bytes("key", key)?, bytes("plaintext", plaintext)?);
                let nonce = array::<24>("nonce", nonce)?;
                let sealed = hazmat::seal_row(&storage_key, table, &key, &plaintext, &nonce);
                // The same value from the formulas of 14.3 and 14.4 alone.
                let seal_key = derive(&storage_key, b"samizdat/v1/store/seal")?;
                let padded = pad_row(&plaintext);
                let again =
                    [&[0x02][..], &xchacha20poly1305_seal(&seal_key, &nonce, &aad(table, &key), &padded)?].concat();
                agree("sealed", &sealed, &again)?;
                RowCase::Seal {
                    name: name.clone(),
                    storage_key: h(storage_key),
                    table: table.name().to_owned(),
                    key: h(key),
                    plaintext: h(plaintext),
                    nonce: h(nonce),
                    sealed: h(sealed),
                }
            }
            RowCase::Open { name, storage_key, table, key, sealed, .. } => {
                let with = array::<32>("storage_key", storage_key)?;
                let table_value = table_named(table)?;
                let result = match hazmat::open_row(&with, table_value, &bytes("key", key)?, &bytes("sealed", sealed)?)
                {
                    Ok(plaintext) => json!({ "plaintext": h(plaintext.as_slice()) }),
                    Err(samizdat::store::StoreError::Corrupt { table }) => {
                        json!({"error": "corrupt", "table": table.name()})
                    }
                    Err(other) => json!({"error": format!("{other:?}")}),
                };
                RowCase::Open {
                    name: name.clone(),
                    storage_key: storage_key.clone(),
                    table: table.clone(),
                    key: key.clone(),
                    sealed: sealed.clone(),
                    result,
                }
            }
            RowCase::PeerRowKey { name, storage_key, user_id, device_id, .. } => {
                let key = array::<32>("storage_key", storage_key)?;
                let address = Address::new(user_id.clone(), *device_id).map_err(|e| err("user_id", e.to_string()))?;
                let row_key = hazmat::peer_row_key(&key, &address);
                // The same hash from 14.5's formula.
                let address_key = derive(&key, b"samizdat/v1/store/address")?;
                let user = user_id.as_bytes();
                let length = u32::try_from(user.len()).map_err(|_| err("user_id", "too long"))?.to_be_bytes();
                let again = hmac(&address_key, &[&length[..], user, &device_id.to_be_bytes()].concat())?;
                agree("row_key", &row_key, &again)?;
                RowCase::PeerRowKey {
                    name: name.clone(),
                    storage_key: storage_key.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    row_key: h(row_key),
                }
            }
            RowCase::OutboxRowKeys { name, storage_key, user_id, device_id, id, .. } => {
                let key = array::<32>("storage_key", storage_key)?;
                let id_bytes = array::<16>("id", id)?;
                let address = Address::new(user_id.clone(), *device_id).map_err(|e| err("user_id", e.to_string()))?;
                let row_key = hazmat::peer_row_key(&key, &address);
                let outbox_key = derive(&key, b"samizdat/v1/store/outbox")?;
                let id_hash = hmac(&outbox_key, &id_bytes)?;
                // The same formulas give the rows a device writes.
                outbox_rows_of_a_device(&key, &address, &row_key, &outbox_key)?;
                RowCase::OutboxRowKeys {
                    name: name.clone(),
                    storage_key: storage_key.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    id: id.clone(),
                    outbox_key: h(outbox_key),
                    index_key: h(&row_key),
                    entry_key: h([row_key.as_slice(), b"/out/", &id_hash].concat()),
                    id_hash: h(id_hash),
                }
            }
            RowCase::Rotated { name, first_key, storage_key, nonce_naming, nonce_check, .. } => {
                let first = array::<32>("first_key", first_key)?;
                let key = array::<32>("storage_key", storage_key)?;
                let nonces = (array::<24>("nonce_naming", nonce_naming)?, array::<24>("nonce_check", nonce_check)?);
                let mut naming_keys = vec![0x01];
                for label in [
                    &b"samizdat/v1/store/address"[..],
                    b"samizdat/v1/store/base-key",
                    b"samizdat/v1/store/group",
                    b"samizdat/v1/store/outbox",
                ] {
                    naming_keys.extend(derive(&first, label)?);
                }
                let binding = {
                    use sha2::Digest;
                    Sha256::new().chain_update(b"samizdat/v1/store/naming-keys").chain_update(&naming_keys).finalize()
                };
                let check_plaintext = [&b"samizdat storage key check v2"[..], &binding].concat();
                let seal_key = derive(&key, b"samizdat/v1/store/seal")?;
                let seal = |row: &[u8], plaintext: &[u8], nonce: &[u8; 24]| -> R<Vec<u8>> {
                    let sealed = xchacha20poly1305_seal(&seal_key, nonce, &aad(Table::Meta, row), &pad_row(plaintext))?;
                    Ok([&[0x02][..], nonce, &sealed].concat())
                };
                // The library rotates a store to the same two rows.
                rotated_rows_of_a_device(&first, &key, &naming_keys, &check_plaintext)?;
                RowCase::Rotated {
                    name: name.clone(),
                    first_key: first_key.clone(),
                    storage_key: storage_key.clone(),
                    nonce_naming: nonce_naming.clone(),
                    nonce_check: nonce_check.clone(),
                    sealed_naming: h(seal(b"naming-keys", &naming_keys, &nonces.0)?),
                    sealed_check: h(seal(b"key-check", &check_plaintext, &nonces.1)?),
                    naming_keys: h(naming_keys),
                    binding: h(binding),
                    check_plaintext: h(check_plaintext),
                }
            }
        })
    }
}

/// Checks the outbox row keys of 20.3 against the library: a device with
/// `storage_key` keeps one message for the peer `peer` (`encrypt_kept`), and
/// its store must then hold, for that peer, exactly the session row, the
/// index at `row_key` in table `outboxes` and the entry at `row_key ||
/// "/out/" || HMAC-SHA256(outbox_key, the message's id)`. (The message is random, so
/// its id is not the case's: the library does not hash a given id.)
fn outbox_rows_of_a_device(storage_key: &[u8; 32], peer: &Address, row_key: &[u8], outbox_key: &[u8; 32]) -> R<()> {
    let fail = |e: samizdat::device::DeviceError| err("entry_key", format!("the device failed: {e}"));
    let own = Address::new("vectors-outbox-sender", 1).map_err(|e| err("user_id", e.to_string()))?;
    let device = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes(*storage_key), own, UNIX_EPOCH)
        .map_err(fail)?;
    let other = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0x55; 32]), peer.clone(), UNIX_EPOCH)
        .map_err(fail)?;
    let to = device.start_session(&other.prekey_bundle().map_err(fail)?).map_err(fail)?;
    let wire = device.encrypt_kept(&to, b"kept", UNIX_EPOCH).map_err(fail)?;
    let entry = [row_key, b"/out/", &hmac(outbox_key, &heal::message_id(&wire))?].concat();
    let mut expected =
        vec![(Table::Outboxes, row_key.to_vec()), (Table::Sessions, row_key.to_vec()), (Table::Sessions, entry)];
    expected.sort();
    let mut written: Vec<(Table, Vec<u8>)> = device
        .backend()
        .snapshot()
        .into_keys()
        .filter(|(table, key)| matches!(table, Table::Sessions | Table::Outboxes) && key.starts_with(row_key))
        .collect();
    written.sort();
    if written == expected {
        Ok(())
    } else {
        let listed: Vec<String> = written.iter().map(|(table, key)| format!("{}:{}", table.name(), h(key))).collect();
        Err(err("entry_key", format!("the device wrote the rows {listed:?}, the formulas give other keys")))
    }
}

/// Checks the rotated `meta` rows of 14.12 against the library: a device
/// made under `first` and rotated to `key` holds, under `key`, a naming-keys
/// row opening to `naming_keys` and a check row opening to
/// `check_plaintext`, and opens under `key`.
fn rotated_rows_of_a_device(first: &[u8; 32], key: &[u8; 32], naming_keys: &[u8], check_plaintext: &[u8]) -> R<()> {
    let fail = |e: samizdat::device::DeviceError| err("sealed_check", format!("the device failed: {e}"));
    let backend = std::sync::Arc::new(MemoryBackend::new());
    let own = Address::new("vectors-rotated", 1).map_err(|e| err("first_key", e.to_string()))?;
    let (first, key) = (StorageKey::from_bytes(*first), StorageKey::from_bytes(*key));
    drop(Device::create_in(std::sync::Arc::clone(&backend), &first, own, UNIX_EPOCH).map_err(fail)?);
    Device::rotate_storage_key_in(&backend, &first, &key).map_err(fail)?;
    Device::open_in(std::sync::Arc::clone(&backend), &key).map_err(fail)?;
    let snapshot = backend.snapshot();
    for (row, expected, field) in
        [(&b"naming-keys"[..], naming_keys, "naming_keys"), (b"key-check", check_plaintext, "check_plaintext")]
    {
        let sealed =
            snapshot.get(&(Table::Meta, row.to_vec())).ok_or_else(|| err(field, "the device wrote no such row"))?;
        let opened =
            hazmat::open_row(key.as_bytes(), Table::Meta, row, sealed).map_err(|e| err(field, format!("{e:?}")))?;
        agree(field, opened.as_slice(), expected)?;
    }
    Ok(())
}

fn table_named(name: &str) -> R<Table> {
    [Table::Meta, Table::Identity, Table::PreKeys, Table::Sessions]
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| err("table", format!("no table {name}")))
}

/// `HKDF(salt = 0^32, ikm = storage_key, info = label, L = 32)` (14.3).
fn derive(storage_key: &[u8; 32], label: &[u8]) -> R<[u8; 32]> {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), storage_key)
        .expand(label, &mut out)
        .map_err(|_| err("storage_key", "HKDF refused"))?;
    Ok(out)
}

fn hmac(key: &[u8; 32], data: &[u8]) -> R<Vec<u8>> {
    // HMAC-SHA256 from HKDF's extract step: HKDF-Extract(salt = key, ikm = data) is HMAC(key, data).
    let (prk, _) = Hkdf::<Sha256>::extract(Some(key), data);
    Ok(prk.to_vec())
}

/// `AAD(table, key)` of 14.4.
fn aad(table: Table, key: &[u8]) -> Vec<u8> {
    let name = table.name().as_bytes();
    [b"samizdat/v1/store/row".as_slice(), &[u8::try_from(name.len()).unwrap_or(u8::MAX)], name, key].concat()
}

/// The message buckets of section 5: 64, powers of two to 4,096, then multiples of 4,096.
fn bucket(n: usize) -> usize {
    if n <= 4096 { n.max(64).next_power_of_two() } else { n.div_ceil(4096).saturating_mul(4096) }
}

/// `PAD_ROW(p)` of 14.4.
fn pad_row(plaintext: &[u8]) -> Vec<u8> {
    let size = bucket(plaintext.len().saturating_add(1)).max(512);
    let mut out = plaintext.to_vec();
    out.push(0x80);
    out.resize(size, 0);
    out
}
