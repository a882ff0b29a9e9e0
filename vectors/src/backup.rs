//! Encrypted backups (PROTOCOL.md 21): the passphrase's key, a sealed file,
//! and files that must be refused.
//!
//! Every file is computed twice: by the library (`hazmat::backup_seal`) and
//! here from the formula (the header laid out byte by byte, the plaintext
//! padded by hand, HKDF with the `hkdf` crate, XChaCha20-Poly1305 with the
//! `chacha20poly1305` crate); the vector is not written if the two disagree.
//! Argon2id is the library's (the `argon2` crate, RFC 9106). The parameters
//! are small (a restore accepts them; an export does not) so that an outside
//! implementation checks the file in milliseconds; one key is derived at the
//! export's minimum (19 MiB, 2 passes).

use chacha20::ChaCha20Rng;
use hkdf::Hkdf;
use samizdat::{
    backup::{BackupError, BackupParams},
    hazmat,
    keys::IdentityKeyPair,
};
use samizdat_proto::{Message, storage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, decode_error, err, h, random, xchacha20poly1305_seal},
};

/// `backup.json`.
pub(crate) struct Backup;

/// `"samizdat/v1/backup"`: HKDF `info` of the key (PROTOCOL.md 3, 21.2).
const BACKUP_LABEL: &[u8] = b"samizdat/v1/backup";
/// The smallest padded plaintext of a stored row (14.4).
const MIN_ROW_BUCKET: usize = 512;

/// One trust decision of a backup.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Peer {
    user_id: String,
    device_id: u32,
    /// The trusted identity key (hex, 32 bytes).
    identity_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum BackupCase {
    /// The key of a backup: `argon2id` = Argon2id v0x13 (passphrase, salt,
    /// m, t, p, 32 bytes), `key` = HKDF-SHA256(0^32, argon2id, label).
    DeriveKey {
        name: String,
        passphrase: String,
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        salt: String,
        #[serde(default)]
        argon2id: String,
        #[serde(default)]
        key: String,
    },
    /// A backup sealed from its plaintext fields.
    Seal {
        name: String,
        passphrase: String,
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        salt: String,
        nonce: String,
        /// The identity seed (hex, 32 bytes).
        seed: String,
        user_id: String,
        device_id: u32,
        created_at: u64,
        peers: Vec<Peer>,
        /// The identity key of `seed` (what a restored device is).
        #[serde(default)]
        identity_key: String,
        /// The canonical encoding of the `Backup` message.
        #[serde(default)]
        plaintext: String,
        /// Its padded length: a stored row's bucket (at least 512).
        #[serde(default)]
        padded_len: usize,
        #[serde(default)]
        header: String,
        #[serde(default)]
        key: String,
        /// `header || ciphertext || tag`.
        #[serde(default)]
        file: String,
    },
    /// A file opened: the plaintext (unpadded), or the error the checks of
    /// 21.4 give, up to the tag.
    Open {
        name: String,
        passphrase: String,
        file: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        plaintext: String,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        error: Value,
    },
}

/// A [`BackupError`] as JSON: `{"error": "wrong_passphrase"}`.
fn backup_error(e: &BackupError) -> Value {
    match e {
        BackupError::WrongPassphrase => json!({"error": "wrong_passphrase"}),
        BackupError::Malformed(cause) => json!({"error": "malformed", "cause": decode_error(cause)}),
        BackupError::UnsupportedVersion(v) => json!({"error": "unsupported_version", "version": v}),
        BackupError::ParamsOutOfBounds { params } => json!({
            "error": "params_out_of_bounds",
            "memory_kib": params.memory_kib,
            "iterations": params.iterations,
            "parallelism": params.parallelism,
        }),
        other => json!({"error": format!("{other:?}")}),
    }
}

fn params(memory_kib: u32, iterations: u32, parallelism: u32) -> BackupParams {
    BackupParams { memory_kib, iterations, parallelism }
}

fn failed(field: &str, e: &BackupError) -> VErr {
    err(field, format!("{e}"))
}

/// The key by hand from the Argon2id output: HKDF-SHA256 with a zero salt.
fn key_by_hand(argon2id: &[u8]) -> R<[u8; 32]> {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), argon2id)
        .expand(BACKUP_LABEL, &mut key)
        .map_err(|_| err("key", "HKDF refused"))?;
    Ok(key)
}

/// A stored row's padded length for `len` bytes (5, 14.4).
fn row_bucket(len: usize) -> usize {
    let needed = len + 1;
    let bucket = if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    };
    bucket.max(MIN_ROW_BUCKET)
}

/// The inputs of the sealed files the `open` cases alter.
struct Sealed {
    passphrase: Vec<u8>,
    file: Vec<u8>,
}

impl VectorSet for Backup {
    type Case = BackupCase;
    const META: Meta = Meta {
        file: "backup.json",
        section: "21 Encrypted backups; 3 Labels and constants",
        description: "`derive_key`: `argon2id` = Argon2id version 0x13 of `passphrase` with `salt` (16 bytes), \
            `memory_kib` KiB, `iterations` passes, `parallelism` lanes, 32 bytes, no secret and no associated \
            data (RFC 9106); `key` = HKDF-SHA256(salt = 32 zero bytes, ikm = argon2id, info = \
            \"samizdat/v1/backup\", 32 bytes). `seal`: `plaintext` = the canonical encoding of the Backup message \
            (version 1, seed, user_id, device_id, created_at, peers in increasing address order); `header` = \
            \"SZBK\" || 0x01 || u32be(memory_kib) || u32be(iterations) || u32be(parallelism) || salt || nonce (57 \
            bytes); `file` = header || XChaCha20-Poly1305(key, nonce, plaintext || 0x80 || zeros to `padded_len`, \
            associated data = header); `identity_key` is the Ed25519 public key of `seed`. The parameters are \
            small (a restore takes any within the bounds; an export refuses less than 19 MiB and 2 passes). \
            `open`: the checks of 21.4 up to the tag on `file`, in order (length, magic, version, parameter \
            bounds, padded length, the tag, the padding), and `plaintext` (unpadded) or the first `error`: \
            wrong_passphrase (the tag: a wrong passphrase or any altered byte), malformed, unsupported_version, \
            params_out_of_bounds (refused before any key is derived).",
        seed: 22,
        inputs: &[
            "operation",
            "name",
            "passphrase",
            "memory_kib",
            "iterations",
            "parallelism",
            "salt",
            "nonce",
            "seed",
            "user_id",
            "device_id",
            "created_at",
            "peers",
            "file",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<BackupCase>, VErr> {
        let derive =
            |name: &str, passphrase: &[u8], (m, t, p): (u32, u32, u32), salt: [u8; 16]| BackupCase::DeriveKey {
                name: name.to_owned(),
                passphrase: h(passphrase),
                memory_kib: m,
                iterations: t,
                parallelism: p,
                salt: h(salt),
                argon2id: String::new(),
                key: String::new(),
            };
        let peer = |user: &str, device: u32, seed: [u8; 32]| Peer {
            user_id: user.to_owned(),
            device_id: device,
            identity_key: h(IdentityKeyPair::from_seed(&seed).public_key().as_bytes()),
        };
        let passphrase = b"correct horse battery staple".to_vec();
        let mut cases = vec![
            derive("smallest_memory", b"password", (8, 1, 1), [0x02; 16]),
            derive("empty_passphrase", b"", (64, 1, 1), random(rng)),
            derive("two_lanes", &passphrase, (64, 2, 2), random(rng)),
            derive("unicode_passphrase_nfc", "pässwörd 🔑".as_bytes(), (256, 2, 1), random(rng)),
            derive("export_minimum_19_mib", &passphrase, (19_456, 2, 1), random(rng)),
        ];
        let seal = |name: &str, (m, t, p): (u32, u32, u32), rng: &mut ChaCha20Rng, peers: Vec<Peer>| BackupCase::Seal {
            name: name.to_owned(),
            passphrase: h(&passphrase),
            memory_kib: m,
            iterations: t,
            parallelism: p,
            salt: h(random::<16>(rng)),
            nonce: h(random::<24>(rng)),
            seed: h(random::<32>(rng)),
            user_id: "alice".to_owned(),
            device_id: 1,
            created_at: 1_700_000_000,
            peers,
            identity_key: String::new(),
            plaintext: String::new(),
            padded_len: 0,
            header: String::new(),
            key: String::new(),
            file: String::new(),
        };
        let three = vec![peer("bob", 1, [0x0b; 32]), peer("bob", 2, [0x0c; 32]), peer("carol", 1, [0x0d; 32])];
        let many: Vec<Peer> = (1..=12u8).map(|i| peer(&format!("peer{i:02}"), u32::from(i), [i; 32])).collect();
        let sealed = [
            seal("no_peers", (64, 1, 1), rng, Vec::new()),
            seal("three_peers", (256, 2, 1), rng, three),
            seal("twelve_peers_next_bucket", (64, 1, 1), rng, many),
        ];
        // The file of `three_peers`, for the cases that open it.
        let base = match Self::compute(&sealed[1])? {
            BackupCase::Seal { file, .. } => Sealed { passphrase: passphrase.clone(), file: bytes("file", &file)? },
            _ => return Err(err("file", "not a seal case")),
        };
        cases.extend(sealed);
        let open = |name: &str, passphrase: &[u8], file: Vec<u8>| BackupCase::Open {
            name: name.to_owned(),
            passphrase: h(passphrase),
            file: h(file),
            plaintext: String::new(),
            error: Value::Null,
        };
        let altered = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut file = base.file.clone();
            edit(&mut file);
            file
        };
        let word = |at: usize, value: u32| {
            move |file: &mut Vec<u8>| {
                if let Some(slot) = file.get_mut(at..at + 4) {
                    slot.copy_from_slice(&value.to_be_bytes());
                }
            }
        };
        let flip = |at: usize, bit: u8| {
            move |file: &mut Vec<u8>| {
                if let Some(byte) = file.get_mut(at) {
                    *byte ^= bit;
                }
            }
        };
        cases.extend([
            open("opens", &base.passphrase, base.file.clone()),
            open("wrong_passphrase", b"correct horse battery stapler", base.file.clone()),
            open("magic_altered", &base.passphrase, altered(&flip(0, 0x01))),
            open("version_2", &base.passphrase, altered(&flip(4, 0x03))),
            open("iterations_altered", &base.passphrase, altered(&word(9, 3))),
            open("salt_bit_flipped", &base.passphrase, altered(&flip(17, 0x80))),
            open("nonce_bit_flipped", &base.passphrase, altered(&flip(56, 0x01))),
            open("ciphertext_bit_flipped", &base.passphrase, altered(&flip(57, 0x01))),
            open("tag_bit_flipped", &base.passphrase, altered(&flip(base.file.len() - 1, 0x01))),
            open(
                "truncated_by_one_byte",
                &base.passphrase,
                altered(&|f| {
                    f.pop();
                }),
            ),
            open("header_only", &base.passphrase, altered(&|f| f.truncate(57))),
            open("memory_over_the_bound", &base.passphrase, altered(&word(5, 262_145))),
            open("memory_4_tib", &base.passphrase, altered(&word(5, u32::MAX))),
            open("iterations_over_the_bound", &base.passphrase, altered(&word(9, 11))),
            open("parallelism_over_the_bound", &base.passphrase, altered(&word(13, 5))),
            open("parallelism_zero", &base.passphrase, altered(&word(13, 0))),
            open("memory_below_8_per_lane", &base.passphrase, altered(&word(5, 7))),
        ]);
        Ok(cases)
    }

    fn compute(case: &BackupCase) -> R<BackupCase> {
        match case {
            BackupCase::DeriveKey { name, passphrase, memory_kib, iterations, parallelism, salt, .. } => {
                let passphrase_bytes = bytes("passphrase", passphrase)?;
                let salt_bytes = array::<16>("salt", salt)?;
                let (argon2id, key) =
                    hazmat::backup_key(&passphrase_bytes, params(*memory_kib, *iterations, *parallelism), &salt_bytes)
                        .map_err(|e| failed("argon2id", &e))?;
                agree("key", key.as_slice(), &key_by_hand(argon2id.as_slice())?)?;
                Ok(BackupCase::DeriveKey {
                    name: name.clone(),
                    passphrase: passphrase.clone(),
                    memory_kib: *memory_kib,
                    iterations: *iterations,
                    parallelism: *parallelism,
                    salt: salt.clone(),
                    argon2id: h(argon2id.as_slice()),
                    key: h(key.as_slice()),
                })
            }
            BackupCase::Seal {
                name,
                passphrase,
                memory_kib,
                iterations,
                parallelism,
                salt,
                nonce,
                seed,
                user_id,
                device_id,
                created_at,
                peers,
                ..
            } => {
                let passphrase_bytes = bytes("passphrase", passphrase)?;
                let salt_bytes = array::<16>("salt", salt)?;
                let nonce_bytes = array::<24>("nonce", nonce)?;
                let seed_bytes = array::<32>("seed", seed)?;
                let message = storage::Backup {
                    version: 1,
                    seed: seed_bytes.to_vec(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    created_at: *created_at,
                    peers: peers
                        .iter()
                        .map(|peer| {
                            Ok(storage::BackupPeer {
                                user_id: peer.user_id.clone(),
                                device_id: peer.device_id,
                                identity_key: array::<32>("peers.identity_key", &peer.identity_key)?.to_vec(),
                            })
                        })
                        .collect::<R<Vec<_>>>()?,
                    // No device list and no pinned user (PROTOCOL.md 23.5):
                    // fields 7 and 8 absent.
                    ..storage::Backup::default()
                };
                let plaintext = message.encode_to_vec();
                let chosen = params(*memory_kib, *iterations, *parallelism);
                let file = hazmat::backup_seal(&passphrase_bytes, chosen, salt_bytes, nonce_bytes, &plaintext)
                    .map_err(|e| failed("file", &e))?;
                // By hand: the header, the padding, the key, the AEAD.
                let header = [
                    &b"SZBK"[..],
                    &[1],
                    &memory_kib.to_be_bytes(),
                    &iterations.to_be_bytes(),
                    &parallelism.to_be_bytes(),
                    &salt_bytes,
                    &nonce_bytes,
                ]
                .concat();
                let padded_len = row_bucket(plaintext.len());
                let mut padded = plaintext.clone();
                padded.push(0x80);
                padded.resize(padded_len, 0);
                let (argon2id, key) =
                    hazmat::backup_key(&passphrase_bytes, chosen, &salt_bytes).map_err(|e| failed("key", &e))?;
                agree("key", key.as_slice(), &key_by_hand(argon2id.as_slice())?)?;
                let sealed = xchacha20poly1305_seal(&key, &nonce_bytes, &header, &padded)?;
                let by_hand = [&header[..], sealed.get(24..).unwrap_or_default()].concat();
                agree("file", &file, &by_hand)?;
                // And it opens.
                let opened = hazmat::backup_open(&passphrase_bytes, &file).map_err(|e| failed("file", &e))?;
                agree("plaintext", &opened, &plaintext)?;
                Ok(BackupCase::Seal {
                    name: name.clone(),
                    passphrase: passphrase.clone(),
                    memory_kib: *memory_kib,
                    iterations: *iterations,
                    parallelism: *parallelism,
                    salt: salt.clone(),
                    nonce: nonce.clone(),
                    seed: seed.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    created_at: *created_at,
                    peers: peers.clone(),
                    identity_key: h(IdentityKeyPair::from_seed(&seed_bytes).public_key().as_bytes()),
                    plaintext: h(&plaintext),
                    padded_len,
                    header: h(&header),
                    key: h(key.as_slice()),
                    file: h(&file),
                })
            }
            BackupCase::Open { name, passphrase, file, .. } => {
                let passphrase_bytes = bytes("passphrase", passphrase)?;
                let file_bytes = bytes("file", file)?;
                let (plaintext, error) = match hazmat::backup_open(&passphrase_bytes, &file_bytes) {
                    Ok(plaintext) => (h(plaintext.as_slice()), Value::Null),
                    Err(e) => (String::new(), backup_error(&e)),
                };
                Ok(BackupCase::Open {
                    name: name.clone(),
                    passphrase: passphrase.clone(),
                    file: file.clone(),
                    plaintext,
                    error,
                })
            }
        }
    }
}
