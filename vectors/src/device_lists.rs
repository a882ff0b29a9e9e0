//! User identities and signed device lists (PROTOCOL.md 23).
//!
//! Every signed list is made twice: by the library (`DeviceList::sign`) and
//! here from the formula alone (the protobuf built field by field, signed
//! with the `ed25519-dalek` crate over the label and the bytes); every
//! per-user safety number too (the library, and the iterated SHA-512 of
//! 10.1 under the user label). The file is not written if they disagree.

use chacha20::ChaCha20Rng;
use ed25519_dalek::{Signer, SigningKey};
use samizdat::{
    fingerprint::SafetyNumber,
    hazmat,
    keys::IdentityKey,
    user::{DeviceList, DeviceListError, SignedDeviceList, UserIdentityKey, UserIdentityKeyPair, UserTrust},
};
use samizdat_proto::prost::Message as _;
use samizdat_proto::wire;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    format::{Meta, VectorSet},
    safety::{digits, fingerprint_with},
    util::{R, VErr, agree, array, bytes, decode_error, err, h, random},
};

/// `device_lists.json`.
pub(crate) struct DeviceLists;

const DEVICE_LIST_LABEL: &[u8] = b"samizdat/v1/device-list";
const USER_SAFETY_NUMBER_LABEL: &[u8] = b"samizdat/v1/user-safety-number";

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Device {
    device_id: u32,
    identity_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum DeviceListCase {
    /// Sign a list.
    Sign {
        name: String,
        user_seed: String,
        user_id: String,
        version: u64,
        devices: Vec<Device>,
        #[serde(default)]
        user_identity_key: String,
        #[serde(default)]
        list: String,
        #[serde(default)]
        signature: String,
        #[serde(default)]
        signed: String,
    },
    /// Read and verify a signed list (checks L1 to L12).
    Verify {
        name: String,
        signed: String,
        #[serde(default)]
        result: Value,
    },
    /// A peer holding `held` (pinned on first use for `user_id`) is offered
    /// `offered`.
    Update {
        name: String,
        user_id: String,
        held: String,
        offered: String,
        #[serde(default)]
        result: Value,
    },
    /// Whether a peer holding `held` talks to a device.
    CheckDevice {
        name: String,
        user_id: String,
        held: String,
        device_id: u32,
        identity_key: String,
        #[serde(default)]
        result: Value,
    },
    /// The per-user safety number.
    UserSafetyNumber {
        name: String,
        local_user_id: String,
        local_user_identity: String,
        remote_user_id: String,
        remote_user_identity: String,
        #[serde(default)]
        local_h0_input: String,
        #[serde(default)]
        digits: String,
        #[serde(default)]
        scannable: String,
    },
    /// The control content of a sent sync (23.7).
    EncodeSentSync {
        name: String,
        recipient: String,
        plaintext: String,
        #[serde(default)]
        content: String,
    },
    /// Control content read as a sent sync (23.7, checks Y1 to Y4).
    DecodeSentSync {
        name: String,
        content: String,
        #[serde(default)]
        result: Value,
    },
    /// The control content of a user identity handover (23.9).
    EncodeHandover {
        name: String,
        user_seed: String,
        signed: String,
        replaces: String,
        #[serde(default)]
        content: String,
    },
    /// Control content read as a handover (23.9, checks H1 to H5).
    DecodeHandover {
        name: String,
        content: String,
        #[serde(default)]
        result: Value,
    },
    /// The control content of a handover's acknowledgment (23.9).
    EncodeHandoverAck {
        name: String,
        user_identity_key: String,
        #[serde(default)]
        content: String,
    },
    /// Control content read as an acknowledgment (23.9, checks A1 and A2).
    DecodeHandoverAck {
        name: String,
        content: String,
        #[serde(default)]
        result: Value,
    },
}

impl VectorSet for DeviceLists {
    type Case = DeviceListCase;
    const META: Meta = Meta {
        file: "device_lists.json",
        section: "23 Users and signed device lists (23.2 the list and its checks, 23.3 the rules, 23.4 safety numbers per user, 23.7 the sent sync, 23.9 the handover)",
        description: "`sign`: the user identity key pair of the 32-byte Ed25519 seed `user_seed` signs the list \
            (user_id, version, user_identity_key = its public key, devices in increasing device_id order): `list` is \
            the canonical protobuf DeviceList, `signature` = Ed25519(user key, \"samizdat/v1/device-list\" || list), \
            `signed` the protobuf SignedDeviceList { list, signature }. `verify`: checks L1 to L12 of 23.2 on \
            `signed`; `result` is {ok: the list} or the first failure ({error: ...} as the other decoders' errors, or \
            bad_signature). `update`: a peer pinned `held` on first use for `user_id`, then is offered `offered` \
            (23.3); `result` is the devices added and removed, or the refusal (wrong_user, untrusted_user, rollback, \
            equivocation, or a check of 23.2). `check_device`: ok, or unlisted_device. `user_safety_number`: 10.1 \
            and 10.2 with the label \"samizdat/v1/user-safety-number\" over the user identity keys. \
            `encode_sent_sync`: the control content (no padding) of a sent sync, the canonical protobuf \
            Control { sent_sync = 5: SentSync { recipient = 1 (UTF-8), plaintext = 2 } } (`plaintext` in hex; the \
            field is absent when empty). `decode_sent_sync`: `result` is {ok: {recipient, plaintext}}, \
            not_a_sent_sync for content that does not begin with 0x2a (another control kind), or the first failure \
            of checks Y1 to Y4 (protobuf; missing_field or invalid_value of sent_sync.recipient, over 256 bytes; \
            invalid_value of sent_sync.plaintext, over 245,248 bytes). `encode_handover`: the control content (no \
            padding) of a user identity handover, the canonical protobuf Control { handover = 6: \
            UserIdentityHandover { seed = 1 (the new user key's 32-byte seed, `user_seed`), device_list = 2 (the \
            SignedDeviceList bytes `signed`) } }. `decode_handover`: `result` is {ok: {user_identity_key, \
            device_list}} (the seed's public key, and the list's bytes), not_a_handover for content that does not \
            begin with 0x32, or the first failure of checks H1 to H4 (protobuf; invalid_length of handover.seed; \
            invalid_value of handover.device_list for list bytes that do not read or verify, L1 to L12; \
            invalid_value of handover.seed for a seed whose public key is not the list's user_identity_key; \
            invalid_length or invalid_value of handover.replaces, checked after the seed and before the list). \
            `encode_handover_ack`: the control content of a handover's acknowledgment, Control { handover_ack = 7: \
            HandoverAck { user_identity_key = 1 } }. `decode_handover_ack`: {ok: {user_identity_key}}, \
            not_a_handover_ack for content that does not begin with 0x3a, or the first failure of A1 (protobuf) and \
            A2 (invalid_length or invalid_value of handover_ack.user_identity_key).",
        seed: 23,
        inputs: &[
            "operation",
            "name",
            "user_seed",
            "user_id",
            "version",
            "devices",
            "signed",
            "held",
            "offered",
            "device_id",
            "identity_key",
            "local_user_id",
            "local_user_identity",
            "remote_user_id",
            "remote_user_identity",
            "recipient",
            "plaintext",
            "content",
            "replaces",
            "user_identity_key",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<DeviceListCase>, VErr> {
        let user_seed = random::<32>(rng);
        let other_seed = random::<32>(rng);
        let keys: [[u8; 32]; 4] = std::array::from_fn(|_| device_key(&random::<32>(rng)));
        let [k0, k1, k2, k3] = keys;
        let dev =
            |id: u32, k: usize| Device { device_id: id, identity_key: h(keys.get(k).copied().unwrap_or_default()) };
        let sign =
            |name: &str, seed: &[u8; 32], user_id: &str, version: u64, devices: Vec<Device>| DeviceListCase::Sign {
                name: name.to_owned(),
                user_seed: h(seed),
                user_id: user_id.to_owned(),
                version,
                devices,
                user_identity_key: String::new(),
                list: String::new(),
                signature: String::new(),
                signed: String::new(),
            };
        // The signed lists the other cases use, made from the formula.
        let v1 = by_hand(&user_seed, "alice", 1, &[(1, k0)])?;
        let v2 = by_hand(&user_seed, "alice", 2, &[(1, k0), (2, k1)])?;
        let v2_other = by_hand(&user_seed, "alice", 2, &[(1, k0), (3, k2)])?;
        let v3 = by_hand(&user_seed, "alice", 3, &[(2, k3), (3, k2)])?;
        let mallory = by_hand(&other_seed, "alice", 9, &[(1, k0), (66, k3)])?;
        let bob = by_hand(&other_seed, "bob", 1, &[(1, k3)])?;
        let mut flipped = v2.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 0x01;
        }
        let verify = |name: &str, signed: &[u8]| DeviceListCase::Verify {
            name: name.to_owned(),
            signed: h(signed),
            result: Value::Null,
        };
        let update = |name: &str, held: &[u8], offered: &[u8]| DeviceListCase::Update {
            name: name.to_owned(),
            user_id: "alice".to_owned(),
            held: h(held),
            offered: h(offered),
            result: Value::Null,
        };
        let check = |name: &str, device_id: u32, k: usize| DeviceListCase::CheckDevice {
            name: name.to_owned(),
            user_id: "alice".to_owned(),
            held: h(&v2),
            device_id,
            identity_key: h(keys.get(k).copied().unwrap_or_default()),
            result: Value::Null,
        };
        // Lists breaking one rule each, signed by the user key.
        let base = list_proto(&device_key(&user_seed), "alice", 1, &[(1, k0), (2, k1)]);
        let broken = |edit: &dyn Fn(&mut wire::DeviceList)| -> R<Vec<u8>> {
            let mut p = base.clone();
            edit(&mut p);
            Ok(signed_by_hand(&user_seed, &p.encode_to_vec()))
        };
        let mut small_order = vec![0u8; 32];
        if let Some(first) = small_order.first_mut() {
            *first = 1;
        }
        let unlabelled = wire::SignedDeviceList {
            list: base.encode_to_vec(),
            signature: SigningKey::from_bytes(&user_seed).sign(&base.encode_to_vec()).to_bytes().to_vec(),
        }
        .encode_to_vec();
        let short_signature =
            wire::SignedDeviceList { list: base.encode_to_vec(), signature: vec![0; 63] }.encode_to_vec();
        let mut trailing = v1.clone();
        trailing.push(0);
        let (a, b) = (device_key(&user_seed), device_key(&other_seed));
        let user_number =
            |name: &str, local: (&str, [u8; 32]), remote: (&str, [u8; 32])| DeviceListCase::UserSafetyNumber {
                name: name.to_owned(),
                local_user_id: local.0.to_owned(),
                local_user_identity: h(local.1),
                remote_user_id: remote.0.to_owned(),
                remote_user_identity: h(remote.1),
                local_h0_input: String::new(),
                digits: String::new(),
                scannable: String::new(),
            };
        let mut cases = vec![
            sign("sign_one_device", &user_seed, "alice", 1, vec![dev(1, 0)]),
            sign(
                "sign_devices_given_out_of_order",
                &user_seed,
                "alice",
                7,
                vec![dev(9, 2), dev(2, 1), dev(4_000_000_000, 3)],
            ),
            sign("sign_utf8_user_id", &other_seed, "Zoë 🌍", 9_007_199_254_740_991, vec![dev(0, 0)]),
            verify("verify_ok", &v2),
            verify("verify_flipped_signature_byte", &flipped),
            verify("verify_signature_without_label", &unlabelled),
            verify("verify_signature_63_bytes", &short_signature),
            verify("verify_trailing_byte", &trailing),
            verify("verify_2049_bytes", &vec![0; 2049]),
            verify(
                "verify_user_key_31_bytes",
                &broken(&|p| {
                    let _ = p.user_identity_key.pop();
                })?,
            ),
            verify(
                "verify_small_order_device_key",
                &broken(&|p| {
                    if let Some(d) = p.devices.first_mut() {
                        d.identity_key = small_order.clone();
                    }
                })?,
            ),
            verify("verify_empty_user_id", &broken(&|p| p.user_id.clear())?),
            verify("verify_user_id_257_bytes", &broken(&|p| p.user_id = "a".repeat(257))?),
            verify("verify_version_0", &broken(&|p| p.version = 0)?),
            verify("verify_no_device", &broken(&|p| p.devices.clear())?),
            verify(
                "verify_33_devices",
                &broken(&|p| {
                    p.devices = (1..=33u32)
                        .map(|i| wire::DeviceEntry {
                            device_id: i,
                            identity_key: device_key(&[u8::try_from(i).unwrap_or(0); 32]).to_vec(),
                        })
                        .collect();
                })?,
            ),
            verify("verify_device_ids_decreasing", &broken(&|p| p.devices.swap(0, 1))?),
            verify(
                "verify_device_id_twice",
                &broken(&|p| {
                    if let Some(d) = p.devices.get_mut(1) {
                        d.device_id = 1;
                    }
                })?,
            ),
            verify(
                "verify_identity_key_twice",
                &broken(&|p| {
                    let first = p.devices.first().map(|d| d.identity_key.clone()).unwrap_or_default();
                    if let Some(d) = p.devices.get_mut(1) {
                        d.identity_key = first;
                    }
                })?,
            ),
            update("update_newer_list", &v1, &v2),
            update("update_reinstall_and_removal", &v2, &v3),
            update("update_same_list", &v2, &v2),
            update("update_rollback", &v2, &v1),
            update("update_equivocation", &v2, &v2_other),
            update("update_another_user_key", &v2, &mallory),
            update("update_another_users_list", &v2, &bob),
            update("update_bad_signature", &v1, &flipped),
            check("check_listed_device", 2, 1),
            check("check_ghost_device", 66, 3),
            check("check_listed_id_with_another_key", 1, 2),
            user_number("user_safety_number_alice", ("alice", a), ("bob", b)),
            user_number("user_safety_number_bob", ("bob", b), ("alice", a)),
            // L6 holds a user key to more than 6.1 holds a device key.
            verify("verify_mixed_order_user_key", &broken(&|p| p.user_identity_key = mixed_order(&a).to_vec())?),
            verify("verify_non_canonical_user_key", &broken(&|p| p.user_identity_key = NON_CANONICAL_MIXED.to_vec())?),
            // ...while a device key with a torsion component is accepted (L7),
            // and the count (L5) comes before every key.
            verify(
                "verify_mixed_order_device_key",
                &broken(&|p| {
                    if let Some(d) = p.devices.first_mut() {
                        d.identity_key = mixed_order(&k0).to_vec();
                    }
                })?,
            ),
            verify(
                "verify_33_devices_and_a_short_user_key",
                &broken(&|p| {
                    p.user_identity_key.truncate(31);
                    p.devices =
                        (1..=33u32).map(|i| wire::DeviceEntry { device_id: i, identity_key: vec![0; 31] }).collect();
                })?,
            ),
        ];
        cases.extend(sent_sync_cases());
        cases.extend(handover_cases()?);
        Ok(cases)
    }

    fn compute(case: &DeviceListCase) -> R<DeviceListCase> {
        Ok(match case {
            DeviceListCase::Sign { name, user_seed, user_id, version, devices, .. } => {
                let seed = array::<32>("user_seed", user_seed)?;
                let user = UserIdentityKeyPair::from_seed(&seed);
                let parsed = devices
                    .iter()
                    .map(|d| Ok((d.device_id, array::<32>("identity_key", &d.identity_key)?)))
                    .collect::<R<Vec<(u32, [u8; 32])>>>()?;
                let keys = parsed
                    .iter()
                    .map(|(id, k)| {
                        IdentityKey::from_bytes(k).map(|k| (*id, k)).map_err(|e| err("identity_key", e.to_string()))
                    })
                    .collect::<R<Vec<_>>>()?;
                let signed = DeviceList::new(user_id.as_str(), *version, &user.public_key(), keys)
                    .and_then(|list| list.sign(&user))
                    .map_err(|e| err("signed", e.to_string()))?
                    .to_bytes();
                agree("signed", &signed, &by_hand(&seed, user_id, *version, &parsed)?)?;
                let outer =
                    wire::SignedDeviceList::decode(signed.as_slice()).map_err(|e| err("signed", e.to_string()))?;
                DeviceListCase::Sign {
                    name: name.clone(),
                    user_seed: user_seed.clone(),
                    user_id: user_id.clone(),
                    version: *version,
                    devices: devices.clone(),
                    user_identity_key: h(device_key(&seed)),
                    list: h(&outer.list),
                    signature: h(&outer.signature),
                    signed: h(&signed),
                }
            }
            DeviceListCase::Verify { name, signed, .. } => {
                let result = match SignedDeviceList::from_bytes(&bytes("signed", signed)?).and_then(|s| s.verify()) {
                    Ok(list) => json!({ "ok": list_json(&list) }),
                    Err(e) => list_error(&e),
                };
                DeviceListCase::Verify { name: name.clone(), signed: signed.clone(), result }
            }
            DeviceListCase::Update { name, user_id, held, offered, .. } => {
                let mut trust =
                    UserTrust::from_bytes(user_id, &bytes("held", held)?).map_err(|e| err("held", e.to_string()))?;
                let before = trust.clone();
                let result =
                    match SignedDeviceList::from_bytes(&bytes("offered", offered)?).and_then(|s| trust.update(&s)) {
                        Ok(change) => {
                            json!({ "added": devices_json(&change.added), "removed": devices_json(&change.removed) })
                        }
                        Err(e) => {
                            if trust != before {
                                return Err(err("result", "a refused list changed the trust"));
                            }
                            list_error(&e)
                        }
                    };
                DeviceListCase::Update {
                    name: name.clone(),
                    user_id: user_id.clone(),
                    held: held.clone(),
                    offered: offered.clone(),
                    result,
                }
            }
            DeviceListCase::CheckDevice { name, user_id, held, device_id, identity_key, .. } => {
                let trust =
                    UserTrust::from_bytes(user_id, &bytes("held", held)?).map_err(|e| err("held", e.to_string()))?;
                let key = IdentityKey::from_bytes(&array::<32>("identity_key", identity_key)?)
                    .map_err(|e| err("identity_key", e.to_string()))?;
                let result = match trust.check_device(*device_id, &key) {
                    Ok(()) => json!("ok"),
                    Err(e) => list_error(&e),
                };
                DeviceListCase::CheckDevice {
                    name: name.clone(),
                    user_id: user_id.clone(),
                    held: held.clone(),
                    device_id: *device_id,
                    identity_key: identity_key.clone(),
                    result,
                }
            }
            DeviceListCase::UserSafetyNumber {
                name,
                local_user_id,
                local_user_identity,
                remote_user_id,
                remote_user_identity,
                ..
            } => {
                let local = array::<32>("local_user_identity", local_user_identity)?;
                let remote = array::<32>("remote_user_identity", remote_user_identity)?;
                let key =
                    |k: &[u8; 32], field: &str| UserIdentityKey::from_bytes(k).map_err(|e| err(field, e.to_string()));
                let number = SafetyNumber::for_users(
                    local_user_id,
                    &key(&local, "local_user_identity")?,
                    remote_user_id,
                    &key(&remote, "remote_user_identity")?,
                );
                let (local_input, local_f) = fingerprint_with(USER_SAFETY_NUMBER_LABEL, local_user_id, &local)?;
                let (_, remote_f) = fingerprint_with(USER_SAFETY_NUMBER_LABEL, remote_user_id, &remote)?;
                let (ld, rd) = (digits(&local_f), digits(&remote_f));
                let both = if ld <= rd { format!("{ld}{rd}") } else { format!("{rd}{ld}") };
                agree("digits", number.digits().as_bytes(), both.as_bytes())?;
                let mut scannable = vec![0x01];
                scannable.extend_from_slice(local_f.get(..32).unwrap_or_default());
                scannable.extend_from_slice(remote_f.get(..32).unwrap_or_default());
                agree("scannable", &number.scannable(), &scannable)?;
                DeviceListCase::UserSafetyNumber {
                    name: name.clone(),
                    local_user_id: local_user_id.clone(),
                    local_user_identity: local_user_identity.clone(),
                    remote_user_id: remote_user_id.clone(),
                    remote_user_identity: remote_user_identity.clone(),
                    local_h0_input: h(&local_input),
                    digits: number.digits().to_owned(),
                    scannable: h(number.scannable()),
                }
            }
            DeviceListCase::EncodeSentSync { name, recipient, plaintext, .. } => {
                let plain = bytes("plaintext", plaintext)?;
                let content = hazmat::sent_sync_content(recipient, &plain);
                agree("content", &content, &sent_sync_by_hand(recipient.as_bytes(), &plain))?;
                DeviceListCase::EncodeSentSync {
                    name: name.clone(),
                    recipient: recipient.clone(),
                    plaintext: plaintext.clone(),
                    content: h(&content),
                }
            }
            DeviceListCase::EncodeHandover { name, user_seed, signed, replaces, .. } => {
                let (seed, list) = (bytes("user_seed", user_seed)?, bytes("signed", signed)?);
                let replaced = bytes("replaces", replaces)?;
                let content = hazmat::handover_content(&seed, &list, &replaced);
                agree("content", &content, &handover_by_hand(&seed, &list, &replaced))?;
                DeviceListCase::EncodeHandover {
                    name: name.clone(),
                    user_seed: user_seed.clone(),
                    signed: signed.clone(),
                    replaces: replaces.clone(),
                    content: h(&content),
                }
            }
            DeviceListCase::DecodeHandover { name, content, .. } => {
                let result = match hazmat::parse_handover(&bytes("content", content)?) {
                    None => json!("not_a_handover"),
                    Some(Ok((key, list, replaces))) => json!({ "ok": {
                        "user_identity_key": h(key),
                        "device_list": h(&list),
                        "replaces": replaces.map(h),
                    } }),
                    Some(Err(e)) => decode_error(&e),
                };
                DeviceListCase::DecodeHandover { name: name.clone(), content: content.clone(), result }
            }
            DeviceListCase::EncodeHandoverAck { name, user_identity_key, .. } => {
                let key = bytes("user_identity_key", user_identity_key)?;
                let content = hazmat::handover_ack_content(&key);
                agree("content", &content, &handover_ack_by_hand(&key))?;
                DeviceListCase::EncodeHandoverAck {
                    name: name.clone(),
                    user_identity_key: user_identity_key.clone(),
                    content: h(&content),
                }
            }
            DeviceListCase::DecodeHandoverAck { name, content, .. } => {
                let result = match hazmat::parse_handover_ack(&bytes("content", content)?) {
                    None => json!("not_a_handover_ack"),
                    Some(Ok(key)) => json!({ "ok": { "user_identity_key": h(key) } }),
                    Some(Err(e)) => decode_error(&e),
                };
                DeviceListCase::DecodeHandoverAck { name: name.clone(), content: content.clone(), result }
            }
            DeviceListCase::DecodeSentSync { name, content, .. } => {
                let result = match hazmat::parse_sent_sync(&bytes("content", content)?) {
                    None => json!("not_a_sent_sync"),
                    Some(Ok((recipient, plaintext))) => {
                        json!({ "ok": { "recipient": recipient, "plaintext": h(&plaintext) } })
                    }
                    Some(Err(e)) => decode_error(&e),
                };
                DeviceListCase::DecodeSentSync { name: name.clone(), content: content.clone(), result }
            }
        })
    }
}

/// The sent sync cases: encodings (the example of 23.7, an empty plaintext,
/// the longest recipient), and content read as a sync, one check failing
/// each. They draw nothing from the generator.
fn sent_sync_cases() -> Vec<DeviceListCase> {
    let encode = |name: &str, recipient: &str, plaintext: &[u8]| DeviceListCase::EncodeSentSync {
        name: name.to_owned(),
        recipient: recipient.to_owned(),
        plaintext: h(plaintext),
        content: String::new(),
    };
    let decode = |name: &str, content: &[u8]| DeviceListCase::DecodeSentSync {
        name: name.to_owned(),
        content: h(content),
        result: Value::Null,
    };
    let longest = "u".repeat(256);
    let mut trailing = sent_sync_by_hand(b"bob", b"hi");
    trailing.push(0);
    vec![
        encode("encode_sent_sync_hi_to_bob", "bob", b"hi"),
        encode("encode_sent_sync_empty_plaintext", "bob", b""),
        encode("encode_sent_sync_longest_recipient", &longest, b"hello"),
        decode("decode_sent_sync_hi_to_bob", &sent_sync_by_hand(b"bob", b"hi")),
        decode("decode_sent_sync_longest_recipient", &sent_sync_by_hand(longest.as_bytes(), b"x")),
        decode("decode_sent_sync_recipient_too_long", &sent_sync_by_hand("u".repeat(257).as_bytes(), b"x")),
        decode("decode_sent_sync_no_recipient", &[0x2a, 0x00]),
        decode("decode_sent_sync_trailing_byte", &trailing),
        decode("decode_sent_sync_unknown_field", &[0x2a, 0x02, 0x18, 0x01]),
        decode("decode_sent_sync_recipient_not_utf8", &[0x2a, 0x03, 0x0a, 0x01, 0xff]),
        decode("decode_a_reset_is_not_a_sent_sync", &[0x1a, 0x00]),
        decode("decode_empty_content_is_not_a_sent_sync", &[]),
    ]
}

/// The handover cases: encodings (with and without the key replaced), and
/// content read as a handover, one check failing each (H2 before H3 before
/// H4: a short seed with a short `replaces` and no list fails on the seed).
/// They draw nothing from the generator.
fn handover_cases() -> R<Vec<DeviceListCase>> {
    let seed = [0x5a; 32];
    let old = device_key(&[0x50; 32]);
    let devices = [(1, device_key(&[0x11; 32])), (2, device_key(&[0x22; 32]))];
    let list = by_hand(&seed, "alice", 2, &devices)?;
    let mut flipped = list.clone();
    if let Some(last) = flipped.last_mut() {
        *last ^= 1;
    }
    let decode = |name: &str, content: &[u8]| DeviceListCase::DecodeHandover {
        name: name.to_owned(),
        content: h(content),
        result: Value::Null,
    };
    let encode = |name: &str, replaces: &[u8]| DeviceListCase::EncodeHandover {
        name: name.to_owned(),
        user_seed: h(seed),
        signed: h(&list),
        replaces: h(replaces),
        content: String::new(),
    };
    let ack = |name: &str, content: &[u8]| DeviceListCase::DecodeHandoverAck {
        name: name.to_owned(),
        content: h(content),
        result: Value::Null,
    };
    let mut trailing = handover_by_hand(&seed, &list, &old);
    trailing.push(0);
    // A small-order point (the identity): 32 bytes, not a user key.
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    Ok(vec![
        encode("encode_handover_alice", &old),
        encode("encode_handover_alice_no_key_replaced", &[]),
        decode("decode_handover_alice", &handover_by_hand(&seed, &list, &old)),
        decode("decode_handover_alice_no_key_replaced", &handover_by_hand(&seed, &list, &[])),
        decode("decode_handover_trailing_byte", &trailing),
        decode("decode_handover_unknown_field", &[0x32, 0x02, 0x20, 0x01]),
        decode("decode_handover_seed_of_31_bytes", &handover_by_hand(&seed[..31], &list, &old)),
        decode("decode_handover_no_seed", &handover_by_hand(&[], &list, &old)),
        decode("decode_handover_seed_of_31_bytes_and_no_list", &handover_by_hand(&seed[..31], &[], &old[..31])),
        decode("decode_handover_replaces_of_31_bytes_and_no_list", &handover_by_hand(&seed, &[], &old[..31])),
        decode("decode_handover_replaces_small_order", &handover_by_hand(&seed, &list, &identity_point)),
        decode("decode_handover_list_not_a_list", &handover_by_hand(&seed, b"not a list", &old)),
        decode("decode_handover_no_list", &handover_by_hand(&seed, &[], &old)),
        decode("decode_handover_list_bad_signature", &handover_by_hand(&seed, &flipped, &old)),
        decode("decode_handover_seed_of_another_key", &handover_by_hand(&[0x5b; 32], &list, &old)),
        decode("decode_a_sent_sync_is_not_a_handover", &sent_sync_by_hand(b"bob", b"hi")),
        decode("decode_empty_content_is_not_a_handover", &[]),
        DeviceListCase::EncodeHandoverAck {
            name: "encode_handover_ack".to_owned(),
            user_identity_key: h(device_key(&seed)),
            content: String::new(),
        },
        ack("decode_handover_ack", &handover_ack_by_hand(&device_key(&seed))),
        ack("decode_handover_ack_key_of_31_bytes", &handover_ack_by_hand(&device_key(&seed)[..31])),
        ack("decode_handover_ack_no_key", &handover_ack_by_hand(&[])),
        ack("decode_handover_ack_small_order_key", &handover_ack_by_hand(&identity_point)),
        ack("decode_handover_ack_unknown_field", &[0x3a, 0x02, 0x10, 0x01]),
        ack("decode_a_handover_is_not_a_handover_ack", &handover_by_hand(&seed, &list, &old)),
    ])
}

/// The acknowledgment's content from 23.9's layout:
/// `0x3a varint(len(A)) A`, `A = [0x0a varint(len(k)) k]` (absent when empty).
fn handover_ack_by_hand(key: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    if !key.is_empty() {
        inner.push(0x0a);
        varint(key.len(), &mut inner);
        inner.extend_from_slice(key);
    }
    let mut out = vec![0x3a];
    varint(inner.len(), &mut out);
    out.extend_from_slice(&inner);
    out
}

/// The handover's content from 23.9's layout, field by field:
/// `0x32 varint(len(H)) H`, `H = [0x0a varint(len(s)) s] [0x12 varint(len(d)) d]
/// [0x1a varint(len(r)) r]` (each field absent when empty).
fn handover_by_hand(seed: &[u8], list: &[u8], replaces: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (key, field) in [(0x0a, seed), (0x12, list), (0x1a, replaces)] {
        if !field.is_empty() {
            inner.push(key);
            varint(field.len(), &mut inner);
            inner.extend_from_slice(field);
        }
    }
    let mut out = vec![0x32];
    varint(inner.len(), &mut out);
    out.extend_from_slice(&inner);
    out
}

/// A protobuf varint, for the encodings by hand.
fn varint(mut value: usize, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).unwrap_or_default() | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).unwrap_or_default());
}

/// The sent sync's content from 23.7's layout, field by field:
/// `0x2a varint(len(S)) S`, `S = 0x0a varint(len(r)) r [0x12 varint(len(p)) p]`.
fn sent_sync_by_hand(recipient: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x0a];
    varint(recipient.len(), &mut inner);
    inner.extend_from_slice(recipient);
    if !plaintext.is_empty() {
        inner.push(0x12);
        varint(plaintext.len(), &mut inner);
        inner.extend_from_slice(plaintext);
    }
    let mut out = vec![0x2a];
    varint(inner.len(), &mut out);
    out.extend_from_slice(&inner);
    out
}

/// y = 3 + p: a non-canonical encoding (y >= p) of a point of mixed order.
const NON_CANONICAL_MIXED: [u8; 32] = {
    let mut key = [0xff; 32];
    key[0] = 0xf0;
    key[31] = 0x7f;
    key
};

/// `key` plus a point of order 8: a valid encoding, not of small order, with
/// a torsion component.
fn mixed_order(key: &[u8; 32]) -> [u8; 32] {
    use curve25519_dalek::{constants::EIGHT_TORSION, edwards::CompressedEdwardsY};
    let point = CompressedEdwardsY(*key).decompress().unwrap_or_default();
    let torsion = EIGHT_TORSION.get(1).copied().unwrap_or_default();
    (point + torsion).compress().to_bytes()
}

/// The Ed25519 public key of a seed (a device's identity key, or a user's:
/// both are Ed25519 keys of a seed).
pub(crate) fn device_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// The `DeviceList` protobuf, field by field, devices as given.
fn list_proto(user_key: &[u8; 32], user_id: &str, version: u64, devices: &[(u32, [u8; 32])]) -> wire::DeviceList {
    wire::DeviceList {
        user_id: user_id.to_owned(),
        version,
        user_identity_key: user_key.to_vec(),
        devices: devices.iter().map(|(id, k)| wire::DeviceEntry { device_id: *id, identity_key: k.to_vec() }).collect(),
    }
}

/// `SignedDeviceList { list, Ed25519(seed, LABEL || list) }`.
fn signed_by_hand(seed: &[u8; 32], list: &[u8]) -> Vec<u8> {
    let signature = SigningKey::from_bytes(seed).sign(&[DEVICE_LIST_LABEL, list].concat());
    wire::SignedDeviceList { list: list.to_vec(), signature: signature.to_bytes().to_vec() }.encode_to_vec()
}

/// A signed list from the formula: devices sorted by id, then signed.
pub(crate) fn by_hand(seed: &[u8; 32], user_id: &str, version: u64, devices: &[(u32, [u8; 32])]) -> R<Vec<u8>> {
    let mut sorted = devices.to_vec();
    sorted.sort_by_key(|(id, _)| *id);
    Ok(signed_by_hand(seed, &list_proto(&device_key(seed), user_id, version, &sorted).encode_to_vec()))
}

fn devices_json(devices: &[(u32, IdentityKey)]) -> Value {
    devices.iter().map(|(id, k)| json!({ "device_id": id, "identity_key": h(k.as_bytes()) })).collect()
}

fn list_json(list: &DeviceList) -> Value {
    json!({
        "user_id": list.user_id(),
        "version": list.version(),
        "user_identity_key": h(list.user_identity_key().as_bytes()),
        "devices": devices_json(list.devices()),
    })
}

/// A refusal in the file's form.
fn list_error(e: &DeviceListError) -> Value {
    match e {
        DeviceListError::Malformed(e) => decode_error(e),
        DeviceListError::BadSignature => json!({ "error": "bad_signature" }),
        DeviceListError::WrongSigner => json!({ "error": "wrong_signer" }),
        DeviceListError::WrongUser { expected, found } => {
            json!({ "error": "wrong_user", "expected": expected, "found": found })
        }
        DeviceListError::UntrustedUser { offered } => {
            json!({ "error": "untrusted_user", "offered": h(offered.as_bytes()) })
        }
        DeviceListError::Rollback { seen, offered } => json!({ "error": "rollback", "seen": seen, "offered": offered }),
        DeviceListError::Equivocation { version } => json!({ "error": "equivocation", "version": version }),
        DeviceListError::UnlistedDevice { device_id } => json!({ "error": "unlisted_device", "device_id": device_id }),
        _ => json!({ "error": "unknown" }),
    }
}
