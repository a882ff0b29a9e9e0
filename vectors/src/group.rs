//! Groups (Sender Keys, PROTOCOL.md 18): the chain step, the message key,
//! the associated data, whole group messages and their decryption against a
//! sender's chains, the group message decoder, control content and the
//! padding's content types.
//!
//! Every value the library computes that a formula can give is computed here
//! a second time from the formulas alone (HMAC and HKDF from the `hkdf`
//! crate, ChaCha20-Poly1305 from `chacha20poly1305`, Ed25519 signatures from
//! `curve25519-dalek` and SHA-512, protobuf by hand), and the file is not
//! written if the two disagree. What only the library computes (the
//! decryption results, the decoders' errors) is checked byte for byte by
//! `tests/vectors.rs`, and the decryptions also by the independent model of
//! `tests/misreadings_group.rs`.

use chacha20::ChaCha20Rng;
use curve25519_dalek::{EdwardsPoint, Scalar, edwards::CompressedEdwardsY};
use hkdf::Hkdf;
use samizdat::{
    address::Address,
    device::GroupError,
    group::GroupMessage,
    hazmat::{self, ContentKind, FixedBytes, GroupControl, GroupReceiver, GroupSendingChain},
    limits::{MAX_KEPT_PLAINTEXT_LEN, MAX_RESEND_IDS, MAX_RESET_IDS},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

use crate::{
    curve_model::plus_l,
    format::{Meta, VectorSet},
    healing::message_id_by_hand,
    limits::encrypt_error,
    util::{
        R, VErr, agree, array, bytes, chacha20poly1305_seal, check_drawn, decode_error, decrypt_error, err, h, random,
        random_vec, varint,
    },
    wire::{Decoder, Repeat, decode_with},
};

/// `group.json`.
pub(crate) struct Group;

/// `"samizdat/v1/group/message"`: the first bytes of the associated data.
const AD_LABEL: &[u8] = b"samizdat/v1/group/message";
/// `"samizdat/v1/group/message-key"`: the HKDF info of the message key.
const KEY_LABEL: &[u8] = b"samizdat/v1/group/message-key";
/// The one-to-one ratchet's message-key label, for a body sealed under the wrong one.
const RATCHET_KEY_LABEL: &[u8] = b"samizdat/v1/ratchet/message-key";
/// `MAX_SKIP`.
const MAX_SKIP: u32 = 2000;

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum GroupCase {
    /// The chain from `chain_key` at `iteration`, `count` steps.
    ChainStep {
        name: String,
        chain_key: String,
        iteration: u32,
        count: u32,
        #[serde(default)]
        chain: Vec<ChainEntry>,
    },
    /// `GROUP_MESSAGE_KEY(seed, salt)`.
    MessageKey {
        name: String,
        message_key_seed: String,
        salt: String,
        #[serde(default)]
        key: String,
        #[serde(default)]
        nonce: String,
    },
    /// The associated data and the signed bytes of given fields.
    AssociatedData {
        name: String,
        group_id: String,
        user_id: String,
        device_id: u32,
        chain_id: u32,
        iteration: u32,
        salt: String,
        body: String,
        #[serde(default)]
        result: Value,
    },
    /// One message of a sending chain.
    Encrypt {
        name: String,
        chain_id: u32,
        iteration: u32,
        chain_key: String,
        signing_seed: String,
        group_id: String,
        user_id: String,
        device_id: u32,
        plaintext: String,
        salt: String,
        #[serde(default)]
        result: Value,
    },
    /// A member's chains of one sender, from nothing, through `steps`.
    Decrypt { name: String, rule: String, steps: Vec<Step> },
    /// Bytes given to a decoder.
    Decode {
        name: String,
        decoder: GroupDecoder,
        input: String,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        reencoded: Option<String>,
    },
    /// Control content from its fields.
    EncodeControl {
        name: String,
        control: ControlFields,
        #[serde(default)]
        encoded: String,
    },
    /// Control content parsed: `input`, or `input_repeat` for content too
    /// long to list (a resend's plaintext).
    DecodeControl {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_repeat: Option<Repeat>,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        reencoded: Option<String>,
    },
    /// Content padded with the marker of its type.
    PadContent {
        name: String,
        content: String,
        content_type: Kind,
        #[serde(default)]
        padded: Option<String>,
    },
    /// Padding removed, for either type, and by the app's unpadding.
    UnpadContent {
        name: String,
        data: String,
        #[serde(default)]
        unpadded: Value,
        #[serde(default)]
        app_unpadded: Option<String>,
    },
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub(crate) struct ChainEntry {
    iteration: u32,
    chain_key: String,
    message_key_seed: String,
    next_chain_key: Option<String>,
}

/// One step of a `decrypt` case.
#[derive(Serialize, Deserialize, Clone)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum Step {
    /// Control content from the sender (a distribution), as the pairwise
    /// session delivers it.
    Receive {
        note: String,
        content: String,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        chains: Vec<ChainState>,
        /// The floors of the chains given up, after the step (absent: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        floors: Vec<FloorState>,
        /// The lowest generation still taken in, after the step (absent: 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        min_generation: u64,
    },
    /// A group message, with the sender's address as the transport gives it.
    Decrypt {
        note: String,
        message: String,
        user_id: String,
        device_id: u32,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        chains: Vec<ChainState>,
        /// The floors of the chains given up, after the step (absent: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        floors: Vec<FloorState>,
        /// The lowest generation still taken in, after the step (absent: 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        min_generation: u64,
    },
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub(crate) struct FloorState {
    chain_id: u32,
    iteration: u32,
    /// The chain's generation (absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    generation: u64,
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub(crate) struct ChainState {
    chain_id: u32,
    iteration: u32,
    skipped_keys: usize,
    used_iterations: usize,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GroupDecoder {
    /// `GroupMessage::from_bytes` (PROTOCOL.md 18.4).
    GroupMessage,
    /// The one-to-one decoder `Message::from_bytes` (12.4).
    Message,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    App,
    Control,
}

/// The fields of control content.
#[derive(Serialize, Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ControlFields {
    Distribution {
        group_id: String,
        chain_id: u32,
        iteration: u32,
        chain_key: String,
        signing_key: String,
        /// Field 6 (absent: 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        generation: u64,
    },
    Request {
        group_id: String,
        chain_id: u32,
        iteration: u32,
        /// Field 4 (absent: 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        min_generation: u64,
    },
    Reset {
        unreadable: Vec<String>,
    },
    Resend {
        id: String,
        also: Vec<String>,
        plaintext: String,
    },
}

impl VectorSet for Group {
    type Case = GroupCase;
    const META: Meta = Meta {
        file: "group.json",
        section: "18 Groups (18.4 the group message, 18.5 decryption, 18.6 control content); 20.5, 20.6 Healing (reset and resend control content); 5.2 Content types; 12.4 Decoding; 15.3 DecryptError; 15.4 DecodeError",
        description: "`chain_step`: the chain from `chain_key` at `iteration`, `count` entries: seed = HMAC-SHA256(ck, \
            0x01), next = HMAC-SHA256(ck, 0x02); `next_chain_key` is null at iteration 2^32 - 1 (the chain cannot \
            step, so no sender uses it). `message_key`: GROUP_MESSAGE_KEY(seed, salt) = HKDF-SHA256(salt = salt (24 \
            bytes), ikm = message_key_seed, info = \"samizdat/v1/group/message-key\", L = 44): key (32) || nonce \
            (12). `associated_data`: AD = \"samizdat/v1/group/message\" || u8(len(group_id)) || group_id || \
            u32be(len(user_id)) || user_id || u32be(device_id) || u32be(chain_id) || u32be(iteration) || salt, \
            and signed_bytes = AD || body (the sender's address is the transport's, never on the wire); a group id \
            of 0 or more than 64 bytes is invalid_group_id. `encrypt`: the sending chain `chain_id` at `iteration` \
            with key `chain_key` and Ed25519 seed `signing_seed` encrypts `plaintext` from (`user_id`, \
            `device_id`), drawing `salt`: the signing public key, the control content of the chain's distribution \
            at `iteration`, the seed, key and nonce, the padded plaintext (marker 0x80), AD, body = \
            ChaCha20-Poly1305(key, nonce, AD, padded), signature = Ed25519(signing_seed, AD || body), the wire \
            bytes 0x01 || Envelope { group = GroupMessage { group_id, chain_id, iteration, salt, body, signature } \
            } and the chain key after the step; or the error (nothing is drawn). `decrypt`: the chains one member \
            keeps of one sender in one group, from none, through `steps`: `receive` parses control content (a \
            distribution, as a pairwise session delivers it) and takes it in (`changed`); `decrypt` decodes \
            `message` and decrypts it as sent by (`user_id`, `device_id`): `{\"plaintext\": hex}`, a GroupError, or \
            a DecodeError. `chains` lists the chains kept after the step, oldest first. A failed step changes \
            nothing. `decode`: `input` given to the group message decoder (`group_message`) or the one-to-one \
            decoder (`message`): the decoded message or the error, and its canonical re-encoding. \
            `encode_control` / `decode_control`: the canonical protobuf Control { distribution = 1 | request = 2 \
            | reset = 3 | resend = 4 } (no version byte, no padding) of the fields, and the parser's result: a \
            reset's `unreadable` message ids (at most 64, each 16 bytes, distinct), a resend's `id` (16 bytes), \
            `plaintext` (at most MAX_KEPT_PLAINTEXT_LEN = 245632 bytes) and `also` (field 3: the ids of the \
            message's earlier resends, at most MAX_RESEND_IDS = 4, each 16 bytes, all distinct and none equal to \
            `id`; checked in the order plaintext, id, the count of `also`, each length, repeats); content of a control kind unknown to this \
            release (field 5 or more) is unknown_kind. A `decode_control` input too long to list is \
            `input_repeat`: `prefix`, then `byte` repeated up to `len` bytes in all. `pad_content`: content || \
            marker (0x80 app, 0x81 control) || zeros to the bucket of 5. `unpad_content`: the content and its type, \
            or null; `app_unpadded`: what the app's UNPAD gives (null for control content).",
        seed: 20,
        inputs: &[
            "operation",
            "name",
            "chain_key",
            "iteration",
            "count",
            "message_key_seed",
            "salt",
            "group_id",
            "user_id",
            "device_id",
            "chain_id",
            "body",
            "signing_seed",
            "plaintext",
            "rule",
            "steps[].operation",
            "steps[].note",
            "steps[].content",
            "steps[].message",
            "steps[].user_id",
            "steps[].device_id",
            "decoder",
            "input",
            "input_repeat",
            "control",
            "content",
            "content_type",
            "data",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<GroupCase>, VErr> {
        let mut cases = chain_cases(rng);
        cases.extend(associated_data_cases(rng)?);
        cases.extend(encrypt_cases(rng)?);
        cases.extend(decrypt_cases(rng)?);
        cases.extend(decode_cases(rng)?);
        cases.extend(control_cases(rng)?);
        cases.extend(padding_cases(rng)?);
        cases.extend(floor_cases(rng)?);
        Ok(cases)
    }

    fn compute(case: &GroupCase) -> R<GroupCase> {
        Ok(match case {
            GroupCase::ChainStep { name, chain_key, iteration, count, .. } => GroupCase::ChainStep {
                name: name.clone(),
                chain_key: chain_key.clone(),
                iteration: *iteration,
                count: *count,
                chain: chain_entries(&array::<32>("chain_key", chain_key)?, *iteration, *count)?,
            },
            GroupCase::MessageKey { name, message_key_seed, salt, .. } => {
                let seed = array::<32>("message_key_seed", message_key_seed)?;
                let salt_bytes = array::<24>("salt", salt)?;
                let (key, nonce) = hazmat::group_message_key(&seed, &salt_bytes);
                let okm = group_key(&seed, &salt_bytes, KEY_LABEL)?;
                agree("key", &key, okm.get(..32).unwrap_or_default())?;
                agree("nonce", &nonce, okm.get(32..).unwrap_or_default())?;
                GroupCase::MessageKey {
                    name: name.clone(),
                    message_key_seed: message_key_seed.clone(),
                    salt: salt.clone(),
                    key: h(key),
                    nonce: h(nonce),
                }
            }
            GroupCase::AssociatedData {
                name, group_id, user_id, device_id, chain_id, iteration, salt, body, ..
            } => {
                let group = bytes("group_id", group_id)?;
                let sender = address("user_id", user_id, *device_id)?;
                let salt_bytes = array::<24>("salt", salt)?;
                let body_bytes = bytes("body", body)?;
                let result = match hazmat::group_associated_data(&group, &sender, *chain_id, *iteration, &salt_bytes) {
                    Ok(ad) => {
                        agree(
                            "result.associated_data",
                            &ad,
                            &associated_data(&group, &sender, *chain_id, *iteration, &salt_bytes),
                        )?;
                        let parts = hazmat::GroupMessageParts {
                            group_id: group.clone(),
                            chain_id: *chain_id,
                            iteration: *iteration,
                            salt: salt_bytes,
                            body: body_bytes.clone(),
                            signature: [0; 64],
                        };
                        let message = hazmat::group_message_from_parts(&parts)
                            .map_err(|e| err("body", format!("not a group message body: {e}")))?;
                        let signed = hazmat::group_signed_bytes(&message, &sender);
                        agree("result.signed_bytes", &signed, &[ad.as_slice(), &body_bytes].concat())?;
                        json!({"associated_data": h(ad), "signed_bytes": h(signed)})
                    }
                    Err(e) => group_error(&e),
                };
                GroupCase::AssociatedData {
                    name: name.clone(),
                    group_id: group_id.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    chain_id: *chain_id,
                    iteration: *iteration,
                    salt: salt.clone(),
                    body: body.clone(),
                    result,
                }
            }
            GroupCase::Encrypt {
                name,
                chain_id,
                iteration,
                chain_key,
                signing_seed,
                group_id,
                user_id,
                device_id,
                plaintext,
                salt,
                ..
            } => {
                let input = EncryptInput {
                    chain_id: *chain_id,
                    iteration: *iteration,
                    chain_key: array::<32>("chain_key", chain_key)?,
                    signing_seed: array::<32>("signing_seed", signing_seed)?,
                    group: bytes("group_id", group_id)?,
                    sender: address("user_id", user_id, *device_id)?,
                    plaintext: bytes("plaintext", plaintext)?,
                    salt: bytes("salt", salt)?,
                };
                GroupCase::Encrypt {
                    name: name.clone(),
                    chain_id: *chain_id,
                    iteration: *iteration,
                    chain_key: chain_key.clone(),
                    signing_seed: signing_seed.clone(),
                    group_id: group_id.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    plaintext: plaintext.clone(),
                    salt: salt.clone(),
                    result: encrypt(&input)?,
                }
            }
            GroupCase::Decrypt { name, rule, steps } => {
                GroupCase::Decrypt { name: name.clone(), rule: rule.clone(), steps: run_steps(steps)? }
            }
            GroupCase::Decode { name, decoder, input, .. } => {
                let data = bytes("input", input)?;
                let (result, reencoded) = match decoder {
                    GroupDecoder::GroupMessage => match GroupMessage::from_bytes(&data) {
                        Ok(message) => (message_json(&message), Some(message.to_bytes())),
                        Err(e) => (decode_error(&e), None),
                    },
                    GroupDecoder::Message => decode_with(Decoder::Message, &data)?,
                };
                GroupCase::Decode {
                    name: name.clone(),
                    decoder: *decoder,
                    input: input.clone(),
                    result,
                    reencoded: reencoded.map(h),
                }
            }
            GroupCase::EncodeControl { name, control, .. } => {
                let parsed = control_from_fields(control)?;
                let encoded = hazmat::encode_group_control(&parsed).map_err(|e| err("control", e.to_string()))?;
                agree("encoded", &encoded, &control_by_hand(control)?)?;
                GroupCase::EncodeControl { name: name.clone(), control: control.clone(), encoded: h(encoded) }
            }
            GroupCase::DecodeControl { name, input, input_repeat, .. } => {
                let data = match (input, input_repeat) {
                    (Some(text), None) => bytes("input", text)?,
                    (None, Some(repeat)) => repeat.expand()?,
                    _ => return Err(err("input", "give exactly one of input and input_repeat")),
                };
                let (result, reencoded) = match hazmat::parse_group_control(&data) {
                    Ok(control) => {
                        let fields = fields_of(&control);
                        let again =
                            hazmat::encode_group_control(&control).map_err(|e| err("reencoded", e.to_string()))?;
                        agree("reencoded", &again, &control_by_hand(&fields)?)?;
                        (serde_json::to_value(&fields).map_err(|e| err("result", e.to_string()))?, Some(h(again)))
                    }
                    Err(e) => (decode_error(&e), None),
                };
                GroupCase::DecodeControl {
                    name: name.clone(),
                    input: input.clone(),
                    input_repeat: input_repeat.clone(),
                    result,
                    reencoded,
                }
            }
            GroupCase::PadContent { name, content, content_type, .. } => {
                let data = bytes("content", content)?;
                let kind = match content_type {
                    Kind::App => ContentKind::App,
                    Kind::Control => ContentKind::Control,
                };
                let padded = hazmat::pad_content(&data, kind);
                if let Some(padded) = &padded {
                    agree("padded", padded, &pad(&data, marker(*content_type)))?;
                }
                GroupCase::PadContent {
                    name: name.clone(),
                    content: content.clone(),
                    content_type: *content_type,
                    padded: padded.map(h),
                }
            }
            GroupCase::UnpadContent { name, data, .. } => {
                let padded = bytes("data", data)?;
                let unpadded = hazmat::unpad_content(&padded);
                let model = unpad(&padded);
                let same = match (&unpadded, &model) {
                    (Some((a, kind)), Some((b, marker))) => a == b && pad_marker(*kind) == *marker,
                    (None, None) => true,
                    _ => false,
                };
                agree("unpadded", &[u8::from(same)], &[1])?;
                let app = hazmat::unpad(&padded);
                let app_model = model.filter(|(_, m)| *m == 0x80).map(|(content, _)| content);
                agree("app_unpadded", &[u8::from(app == app_model)], &[1])?;
                GroupCase::UnpadContent {
                    name: name.clone(),
                    data: data.clone(),
                    unpadded: match unpadded {
                        Some((content, kind)) => json!({
                            "content": h(content),
                            "content_type": if kind == ContentKind::App { "app" } else { "control" },
                        }),
                        None => Value::Null,
                    },
                    app_unpadded: app.map(h),
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The formulas, from other crates than the library.

/// HMAC-SHA256 from HKDF's extract step: HKDF-Extract(salt = key, ikm = data) is HMAC(key, data).
fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(key), data);
    prk.into()
}

/// `(seed, next chain key)` of a chain key.
fn step(chain_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (hmac(chain_key, &[0x01]), hmac(chain_key, &[0x02]))
}

/// The chain key `steps` steps after `chain_key`.
fn advance(chain_key: &[u8; 32], steps: u32) -> [u8; 32] {
    (0..steps).fold(*chain_key, |ck, _| step(&ck).1)
}

/// HKDF-SHA256(salt, ikm = seed, info = label), 44 bytes.
fn group_key(seed: &[u8; 32], salt: &[u8; 24], label: &[u8]) -> R<[u8; 44]> {
    let mut okm = [0u8; 44];
    Hkdf::<Sha256>::new(Some(salt), seed).expand(label, &mut okm).map_err(|_| err("key", "HKDF refused"))?;
    Ok(okm)
}

/// The associated data of 18.4.
fn associated_data(group: &[u8], sender: &Address, chain_id: u32, iteration: u32, salt: &[u8; 24]) -> Vec<u8> {
    let user = sender.user_id().as_bytes();
    [
        AD_LABEL,
        &[u8::try_from(group.len()).unwrap_or(u8::MAX)],
        group,
        &u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes(),
        user,
        &sender.device_id().to_be_bytes(),
        &chain_id.to_be_bytes(),
        &iteration.to_be_bytes(),
        salt,
    ]
    .concat()
}

/// The buckets of section 5.
fn bucket(n: usize) -> usize {
    if n <= 4096 { n.max(64).next_power_of_two() } else { n.div_ceil(4096).saturating_mul(4096) }
}

fn marker(kind: Kind) -> u8 {
    match kind {
        Kind::App => 0x80,
        Kind::Control => 0x81,
    }
}

fn pad_marker(kind: ContentKind) -> u8 {
    match kind {
        ContentKind::App => 0x80,
        ContentKind::Control => 0x81,
    }
}

/// `content || marker || zeros` to the bucket of `len(content) + 1`.
fn pad(content: &[u8], marker: u8) -> Vec<u8> {
    let mut out = content.to_vec();
    out.push(marker);
    out.resize(bucket(content.len().saturating_add(1)), 0);
    out
}

/// The content and marker of a padded plaintext, if the padding verifies.
fn unpad(padded: &[u8]) -> Option<(Vec<u8>, u8)> {
    let end = padded.iter().rposition(|&b| b != 0)?;
    let marker = *padded.get(end)?;
    ((marker == 0x80 || marker == 0x81) && padded.len() == bucket(end.saturating_add(1)))
        .then(|| (padded.get(..end).unwrap_or_default().to_vec(), marker))
}

/// The Ed25519 public key of a seed (RFC 8032 5.1.5).
fn ed25519_scalar(seed: &[u8; 32]) -> (Scalar, [u8; 32], [u8; 32]) {
    let digest: [u8; 64] = Sha512::digest(seed).into();
    let mut s = *digest.first_chunk::<32>().unwrap_or(&[0; 32]);
    s[0] &= 248;
    s[31] &= 127;
    s[31] |= 64;
    let scalar = Scalar::from_bytes_mod_order(s);
    let public = EdwardsPoint::mul_base(&scalar).compress().to_bytes();
    let prefix = *digest.last_chunk::<32>().unwrap_or(&[0; 32]);
    (scalar, public, prefix)
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_scalar(seed).1
}

/// An Ed25519 signature (RFC 8032 5.1.6).
fn ed25519_sign(seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
    let (a, public, prefix) = ed25519_scalar(seed);
    let r =
        Scalar::from_bytes_mod_order_wide(&Sha512::new().chain_update(prefix).chain_update(message).finalize().into());
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new().chain_update(big_r).chain_update(public).chain_update(message).finalize().into(),
    );
    let s = r + k * a;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&big_r);
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

/// A protobuf field key.
fn field_key(field: u32, wire_type: u32) -> Vec<u8> {
    varint(u64::from(field << 3 | wire_type))
}

/// A length-delimited field, always written.
fn ld(field: u32, value: &[u8]) -> Vec<u8> {
    [field_key(field, 2), varint(value.len() as u64), value.to_vec()].concat()
}

/// A `bytes` field, omitted when empty (12.3).
fn opt_bytes(field: u32, value: &[u8]) -> Vec<u8> {
    if value.is_empty() { Vec::new() } else { ld(field, value) }
}

/// A `uint32` field, omitted when 0 (12.3).
fn uint(field: u32, value: u32) -> Vec<u8> {
    uint64(field, u64::from(value))
}

fn uint64(field: u32, value: u64) -> Vec<u8> {
    if value == 0 { Vec::new() } else { [field_key(field, 0), varint(value)].concat() }
}

/// The fields of a group message, of any lengths.
#[derive(Clone)]
struct Parts {
    group_id: Vec<u8>,
    chain_id: u32,
    iteration: u32,
    salt: Vec<u8>,
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl Parts {
    fn inner(&self) -> Vec<u8> {
        [
            opt_bytes(1, &self.group_id),
            uint(2, self.chain_id),
            uint(3, self.iteration),
            opt_bytes(4, &self.salt),
            opt_bytes(5, &self.body),
            opt_bytes(6, &self.signature),
        ]
        .concat()
    }

    /// `0x01 || Envelope { group = 3 }`, canonically.
    fn wire(&self) -> Vec<u8> {
        framed(&self.inner())
    }

    fn of(wire: &[u8]) -> R<Self> {
        let message = GroupMessage::from_bytes(wire).map_err(|e| err("message", e.to_string()))?;
        let p = hazmat::group_message_parts(&message);
        Ok(Self {
            group_id: p.group_id,
            chain_id: p.chain_id,
            iteration: p.iteration,
            salt: p.salt.to_vec(),
            body: p.body,
            signature: p.signature.to_vec(),
        })
    }
}

/// `0x01 || Envelope { group = inner }`.
fn framed(inner: &[u8]) -> Vec<u8> {
    [vec![0x01], ld(3, inner)].concat()
}

/// The canonical Control encoding of `fields`, by hand.
fn control_by_hand(fields: &ControlFields) -> R<Vec<u8>> {
    Ok(match fields {
        ControlFields::Distribution { group_id, chain_id, iteration, chain_key, signing_key, generation } => ld(
            1,
            &[
                opt_bytes(1, &bytes("control.group_id", group_id)?),
                uint(2, *chain_id),
                uint(3, *iteration),
                opt_bytes(4, &bytes("control.chain_key", chain_key)?),
                opt_bytes(5, &bytes("control.signing_key", signing_key)?),
                uint64(6, *generation),
            ]
            .concat(),
        ),
        ControlFields::Request { group_id, chain_id, iteration, min_generation } => ld(
            2,
            &[
                opt_bytes(1, &bytes("control.group_id", group_id)?),
                uint(2, *chain_id),
                uint(3, *iteration),
                uint64(4, *min_generation),
            ]
            .concat(),
        ),
        ControlFields::Reset { unreadable } => ld(
            3,
            &unreadable
                .iter()
                .map(|id| Ok(ld(1, &bytes("control.unreadable", id)?)))
                .collect::<R<Vec<Vec<u8>>>>()?
                .concat(),
        ),
        ControlFields::Resend { id, also, plaintext } => ld(
            4,
            &[
                opt_bytes(1, &bytes("control.id", id)?),
                opt_bytes(2, &bytes("control.plaintext", plaintext)?),
                also.iter()
                    .map(|other| Ok(ld(3, &bytes("control.also", other)?)))
                    .collect::<R<Vec<Vec<u8>>>>()?
                    .concat(),
            ]
            .concat(),
        ),
    })
}

// ---------------------------------------------------------------------------
// The library's side.

fn address(field: &str, user_id: &str, device_id: u32) -> R<Address> {
    Address::new(user_id, device_id).map_err(|e| err(field, e.to_string()))
}

/// A [`GroupError`] as JSON: `{"error": "decrypt", "cause": {"error": "duplicate", "counter": 3}}`.
pub(crate) fn group_error(e: &GroupError) -> Value {
    match e {
        GroupError::InvalidGroupId => json!({"error": "invalid_group_id"}),
        GroupError::MissingChain { chain_id, request } => {
            json!({"error": "missing_chain", "chain_id": chain_id, "request": request.as_ref().map(h)})
        }
        GroupError::Decrypt(e) => json!({"error": "decrypt", "cause": decrypt_error(e)}),
        GroupError::Encrypt(e) => json!({"error": "encrypt", "cause": encrypt_error(e)}),
        other => json!({"error": format!("{other:?}")}),
    }
}

fn chain_entries(chain_key: &[u8; 32], iteration: u32, count: u32) -> R<Vec<ChainEntry>> {
    let mut out = Vec::new();
    let mut ck = *chain_key;
    for i in 0..count {
        let at = iteration.checked_add(i).ok_or_else(|| err("count", "past iteration 2^32 - 1"))?;
        let (seed, next) = hazmat::group_chain_step(&ck, at);
        let (model_seed, model_next) = step(&ck);
        agree(&format!("chain[{i}].message_key_seed"), &seed, &model_seed)?;
        if let Some(next) = next {
            agree(&format!("chain[{i}].next_chain_key"), &next, &model_next)?;
        } else if at != u32::MAX {
            return Err(err(format!("chain[{i}].next_chain_key"), "the library cannot step below 2^32 - 1"));
        }
        out.push(ChainEntry {
            iteration: at,
            chain_key: h(ck),
            message_key_seed: h(seed),
            next_chain_key: next.map(h),
        });
        ck = model_next;
    }
    Ok(out)
}

struct EncryptInput {
    chain_id: u32,
    iteration: u32,
    chain_key: [u8; 32],
    signing_seed: [u8; 32],
    group: Vec<u8>,
    sender: Address,
    plaintext: Vec<u8>,
    salt: Vec<u8>,
}

fn encrypt(input: &EncryptInput) -> R<Value> {
    let mut chain = GroupSendingChain::new(input.chain_id, input.iteration, &input.chain_key, &input.signing_seed);
    let mut fixed = FixedBytes::new(&input.salt);
    let distribution = chain.distribution(&input.group);
    let message = chain.encrypt(&mut fixed, &input.group, &input.sender, &input.plaintext);
    check_drawn("salt", &fixed, input.salt.len())?;
    let (message, distribution) = match (message, distribution) {
        (Ok(message), Ok(distribution)) => (message, distribution),
        (Err(e), _) | (Ok(_), Err(e)) => {
            if chain.iteration() != input.iteration {
                return Err(err("result", "a failed encryption stepped the chain"));
            }
            return Ok(group_error(&e));
        }
    };
    // Every value again from the formulas.
    let salt = array::<24>("salt", &h(&input.salt))?;
    let (seed, next) = step(&input.chain_key);
    let okm = group_key(&seed, &salt, KEY_LABEL)?;
    let key = *okm.first_chunk::<32>().unwrap_or(&[0; 32]);
    let nonce = *okm.last_chunk::<12>().unwrap_or(&[0; 12]);
    let padded = pad(&input.plaintext, 0x80);
    let ad = associated_data(&input.group, &input.sender, input.chain_id, input.iteration, &salt);
    let body = chacha20poly1305_seal(&key, &nonce, &ad, &padded)?;
    let signature = ed25519_sign(&input.signing_seed, &[ad.as_slice(), &body].concat());
    let signing_key = ed25519_public(&input.signing_seed);
    let parts = Parts {
        group_id: input.group.clone(),
        chain_id: input.chain_id,
        iteration: input.iteration,
        salt: salt.to_vec(),
        body: body.clone(),
        signature: signature.to_vec(),
    };
    let wire = message.to_bytes();
    agree("result.wire", &wire, &parts.wire())?;
    agree(
        "result.associated_data",
        &hazmat::group_signed_bytes(&message, &input.sender),
        &[ad.as_slice(), &body].concat(),
    )?;
    let by_hand = control_by_hand(&ControlFields::Distribution {
        group_id: h(&input.group),
        chain_id: input.chain_id,
        iteration: input.iteration,
        chain_key: h(input.chain_key),
        signing_key: h(signing_key),
        generation: 0,
    })?;
    agree("result.distribution", &distribution, &by_hand)?;
    if chain.iteration() != input.iteration.wrapping_add(1) {
        return Err(err("result.next_chain_key", "the chain did not step once"));
    }
    Ok(json!({
        "signing_key": h(signing_key),
        "distribution": h(distribution),
        "message_key_seed": h(seed),
        "key": h(key),
        "nonce": h(nonce),
        "padded": h(padded),
        "associated_data": h(ad),
        "body": h(body),
        "signature": h(signature),
        "wire": h(wire),
        "next_chain_key": h(next),
    }))
}

fn chains_json(receiver: &GroupReceiver) -> Vec<ChainState> {
    receiver
        .chains()
        .into_iter()
        .map(|c| ChainState {
            chain_id: c.chain_id,
            iteration: c.iteration,
            skipped_keys: c.skipped_keys,
            used_iterations: c.used_iterations,
        })
        .collect()
}

fn floors_json(receiver: &GroupReceiver) -> Vec<FloorState> {
    receiver
        .floors()
        .into_iter()
        .map(|f| FloorState { chain_id: f.chain_id, iteration: f.iteration, generation: f.generation })
        .collect()
}

fn run_steps(steps: &[Step]) -> R<Vec<Step>> {
    let mut receiver = GroupReceiver::new();
    let mut out = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let field = |name: &str| format!("steps[{i}].{name}");
        let before = (chains_json(&receiver), floors_json(&receiver), receiver.min_generation());
        let (step, failed) = match step {
            Step::Receive { note, content, .. } => {
                let (result, failed) = match hazmat::parse_group_control(&bytes(&field("content"), content)?) {
                    Ok(control) => (json!({"changed": receiver.receive(&control)}), false),
                    Err(e) => (decode_error(&e), true),
                };
                let (chains, floors) = (chains_json(&receiver), floors_json(&receiver));
                let min_generation = receiver.min_generation();
                (
                    Step::Receive {
                        note: note.clone(),
                        content: content.clone(),
                        result,
                        chains,
                        floors,
                        min_generation,
                    },
                    failed,
                )
            }
            Step::Decrypt { note, message, user_id, device_id, .. } => {
                let sender = address(&field("user_id"), user_id, *device_id)?;
                let result = match GroupMessage::from_bytes(&bytes(&field("message"), message)?) {
                    Ok(decoded) => match receiver.decrypt(&sender, &decoded) {
                        Ok(plaintext) => Ok(json!({"plaintext": h(plaintext.as_slice())})),
                        Err(e) => Err(group_error(&e)),
                    },
                    Err(e) => Err(decode_error(&e)),
                };
                let failed = result.is_err();
                let step = Step::Decrypt {
                    note: note.clone(),
                    message: message.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    result: result.unwrap_or_else(|e| e),
                    chains: chains_json(&receiver),
                    floors: floors_json(&receiver),
                    min_generation: receiver.min_generation(),
                };
                (step, failed)
            }
        };
        let after = match &step {
            Step::Receive { chains, floors, min_generation, .. }
            | Step::Decrypt { chains, floors, min_generation, .. } => (chains.clone(), floors.clone(), *min_generation),
        };
        if failed && after != before {
            return Err(err(field("chains"), "a failed step changed the chains"));
        }
        out.push(step);
    }
    Ok(out)
}

fn message_json(m: &GroupMessage) -> Value {
    let p = hazmat::group_message_parts(m);
    json!({
        "kind": "group",
        "group_id": h(&p.group_id),
        "chain_id": p.chain_id,
        "iteration": p.iteration,
        "salt": h(p.salt),
        "body": h(&p.body),
        "signature": h(p.signature),
    })
}

fn control_from_fields(fields: &ControlFields) -> R<GroupControl> {
    Ok(match fields {
        ControlFields::Distribution { group_id, chain_id, iteration, chain_key, signing_key, generation } => {
            GroupControl::Distribution {
                group_id: bytes("control.group_id", group_id)?,
                chain_id: *chain_id,
                iteration: *iteration,
                chain_key: array::<32>("control.chain_key", chain_key)?,
                signing_key: array::<32>("control.signing_key", signing_key)?,
                generation: *generation,
            }
        }
        ControlFields::Request { group_id, chain_id, iteration, min_generation } => GroupControl::Request {
            group_id: bytes("control.group_id", group_id)?,
            chain_id: *chain_id,
            iteration: *iteration,
            min_generation: *min_generation,
        },
        ControlFields::Reset { unreadable } => GroupControl::Reset {
            unreadable: unreadable.iter().map(|id| array::<16>("control.unreadable", id)).collect::<R<_>>()?,
        },
        ControlFields::Resend { id, also, plaintext } => GroupControl::Resend {
            id: array::<16>("control.id", id)?,
            also: also.iter().map(|other| array::<16>("control.also", other)).collect::<R<_>>()?,
            plaintext: bytes("control.plaintext", plaintext)?,
        },
    })
}

fn fields_of(control: &GroupControl) -> ControlFields {
    match control {
        GroupControl::Distribution { group_id, chain_id, iteration, chain_key, signing_key, generation } => {
            ControlFields::Distribution {
                group_id: h(group_id),
                chain_id: *chain_id,
                iteration: *iteration,
                chain_key: h(chain_key),
                signing_key: h(signing_key),
                generation: *generation,
            }
        }
        GroupControl::Request { group_id, chain_id, iteration, min_generation } => ControlFields::Request {
            group_id: h(group_id),
            chain_id: *chain_id,
            iteration: *iteration,
            min_generation: *min_generation,
        },
        GroupControl::Reset { unreadable } => ControlFields::Reset { unreadable: unreadable.iter().map(h).collect() },
        GroupControl::Resend { id, also, plaintext } => {
            ControlFields::Resend { id: h(id), also: also.iter().map(h).collect(), plaintext: h(plaintext) }
        }
    }
}

// ---------------------------------------------------------------------------
// The inputs.

fn chain_cases(rng: &mut ChaCha20Rng) -> Vec<GroupCase> {
    let chain = |name: &str, chain_key: [u8; 32], iteration: u32, count: u32| GroupCase::ChainStep {
        name: name.to_owned(),
        chain_key: h(chain_key),
        iteration,
        count,
        chain: Vec::new(),
    };
    let message_key = |name: &str, seed: [u8; 32], salt: [u8; 24]| GroupCase::MessageKey {
        name: name.to_owned(),
        message_key_seed: h(seed),
        salt: h(salt),
        key: String::new(),
        nonce: String::new(),
    };
    let (zero_seed, _) = step(&[0; 32]);
    let seed = random::<32>(rng);
    vec![
        chain("chain_zero_key", [0; 32], 0, 5),
        chain("chain_random_key", random::<32>(rng), 0, 5),
        chain("chain_from_iteration_1000", random::<32>(rng), 1000, 3),
        chain("chain_last_iterations", random::<32>(rng), u32::MAX - 2, 3),
        message_key("message_key_zero", [0; 32], [0; 24]),
        message_key("message_key_seed_of_zero_chain_key", zero_seed, random::<24>(rng)),
        message_key("message_key_random", seed, random::<24>(rng)),
        message_key("message_key_random_other_salt", seed, random::<24>(rng)),
    ]
}

fn associated_data_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let mut case = |name: &str, group: &[u8], user: &str, device_id: u32, chain_id: u32, iteration: u32| {
        GroupCase::AssociatedData {
            name: name.to_owned(),
            group_id: h(group),
            user_id: user.to_owned(),
            device_id,
            chain_id,
            iteration,
            salt: h(random::<24>(rng)),
            body: h(random_vec(rng, 80)),
            result: Value::Null,
        }
    };
    Ok(vec![
        case("ad_group_id_1_byte", b"g", "alice", 1, 0x0102_0304, 5),
        case("ad_group_id_64_bytes_unicode_user", &[0x47; 64], "Zoë 🌍", 7, 0, 0),
        case("ad_largest_integers", b"family", "bob", u32::MAX, u32::MAX, u32::MAX),
        case("ad_group_id_empty", b"", "alice", 1, 1, 1),
        case("ad_group_id_65_bytes", &[0x47; 65], "alice", 1, 1, 1),
    ])
}

fn encrypt_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let mut cases = Vec::new();
    let mut case =
        |rng: &mut ChaCha20Rng, name: &str, iteration: u32, group: &[u8], user: &str, plaintext: &[u8], draws: bool| {
            cases.push(GroupCase::Encrypt {
                name: name.to_owned(),
                chain_id: u32::from_be_bytes(random::<4>(rng)),
                iteration,
                chain_key: h(random::<32>(rng)),
                signing_seed: h(random::<32>(rng)),
                group_id: h(group),
                user_id: user.to_owned(),
                device_id: 1,
                plaintext: h(plaintext),
                salt: if draws { h(random::<24>(rng)) } else { String::new() },
                result: Value::Null,
            });
        };
    let group = random::<16>(rng);
    case(rng, "encrypt_hello", 0, &group, "alice", b"hello, group", true);
    case(rng, "encrypt_empty_plaintext", 1, &group, "alice", b"", true);
    let p63 = random_vec(rng, 63);
    case(rng, "encrypt_63_bytes", 7, &group, "alice", &p63, true);
    let p64 = random_vec(rng, 64);
    case(rng, "encrypt_64_bytes", 8, &group, "alice", &p64, true);
    case(rng, "encrypt_group_id_64_bytes_unicode_sender", 300, &[0xee; 64], "Zoë 🌍", b"hi", true);
    case(rng, "encrypt_group_id_1_byte", 0, b"g", "alice", b"hi", true);
    case(rng, "encrypt_last_iteration", u32::MAX - 1, &group, "alice", b"last", true);
    case(rng, "encrypt_chain_exhausted", u32::MAX, &group, "alice", b"one too many", false);
    case(rng, "encrypt_group_id_empty", 0, b"", "alice", b"hi", false);
    case(rng, "encrypt_group_id_65_bytes", 0, &[0xee; 65], "alice", b"hi", false);
    Ok(cases)
}

/// A sending chain of the generator: its messages come from the library
/// (`GroupSendingChain`), its crafted messages from the formulas.
struct Chain {
    chain_id: u32,
    /// The iteration of `chain_key`.
    base: u32,
    chain_key: [u8; 32],
    signing_seed: [u8; 32],
    group: Vec<u8>,
    sender: Address,
    /// The chain's generation (0: none, as an earlier release).
    generation: u64,
}

impl Chain {
    fn new(rng: &mut ChaCha20Rng, group: &[u8], sender: &Address) -> Self {
        Self {
            chain_id: u32::from_be_bytes(random::<4>(rng)),
            base: 0,
            chain_key: random::<32>(rng),
            signing_seed: random::<32>(rng),
            group: group.to_vec(),
            sender: sender.clone(),
            generation: 0,
        }
    }

    /// A new chain of generation `generation`.
    fn of_generation(rng: &mut ChaCha20Rng, group: &[u8], sender: &Address, generation: u64) -> Self {
        Self { generation, ..Self::new(rng, group, sender) }
    }

    /// The same chain with another id (and, if given, another key and signing seed).
    fn sibling(&self, rng: &mut ChaCha20Rng, new_keys: bool) -> Self {
        Self {
            chain_id: u32::from_be_bytes(random::<4>(rng)),
            base: self.base,
            chain_key: if new_keys { random::<32>(rng) } else { self.chain_key },
            signing_seed: if new_keys { random::<32>(rng) } else { self.signing_seed },
            group: self.group.clone(),
            sender: self.sender.clone(),
            generation: self.generation,
        }
    }

    /// The chain key at `iteration` (not before `base`).
    fn key(&self, iteration: u32) -> [u8; 32] {
        advance(&self.chain_key, iteration.saturating_sub(self.base))
    }

    fn at(&self, iteration: u32) -> GroupSendingChain {
        GroupSendingChain::new(self.chain_id, iteration, &self.key(iteration), &self.signing_seed)
            .with_generation(self.generation)
    }

    fn distribution(&self, iteration: u32) -> R<Vec<u8>> {
        self.at(iteration).distribution(&self.group).map_err(|e| err("content", format!("{e:?}")))
    }

    /// The message at `iteration` with the given salt.
    fn message_with(&self, iteration: u32, salt: &[u8; 24], plaintext: &[u8]) -> R<Vec<u8>> {
        let message = self
            .at(iteration)
            .encrypt(&mut FixedBytes::new(salt), &self.group, &self.sender, plaintext)
            .map_err(|e| err("message", format!("{e:?}")))?;
        Ok(message.to_bytes())
    }

    /// The message at `iteration`, drawing its salt from `rng`; the plaintext names it.
    fn message(&self, rng: &mut ChaCha20Rng, iteration: u32) -> R<Vec<u8>> {
        self.message_with(iteration, &random::<24>(rng), format!("message {iteration}").as_bytes())
    }

    /// A message sealed and signed from the formulas: `padded` sealed under
    /// the key of `label`, with `aad` (None: the message's AD), signed over
    /// AD || body.
    fn craft(
        &self,
        rng: &mut ChaCha20Rng,
        iteration: u32,
        padded: &[u8],
        label: &[u8],
        aad: Option<&[u8]>,
    ) -> R<Vec<u8>> {
        let salt = random::<24>(rng);
        let (seed, _) = step(&self.key(iteration));
        let okm = group_key(&seed, &salt, label)?;
        let key = *okm.first_chunk::<32>().unwrap_or(&[0; 32]);
        let nonce = *okm.last_chunk::<12>().unwrap_or(&[0; 12]);
        let ad = associated_data(&self.group, &self.sender, self.chain_id, iteration, &salt);
        let body = chacha20poly1305_seal(&key, &nonce, aad.unwrap_or(&ad), padded)?;
        Ok(self.signed(Parts {
            group_id: self.group.clone(),
            chain_id: self.chain_id,
            iteration,
            salt: salt.to_vec(),
            body,
            signature: Vec::new(),
        }))
    }

    /// `parts` signed again by this chain's key, encoded.
    fn signed(&self, mut parts: Parts) -> Vec<u8> {
        let salt = <[u8; 24]>::try_from(parts.salt.as_slice()).unwrap_or([0; 24]);
        let ad = associated_data(&parts.group_id, &self.sender, parts.chain_id, parts.iteration, &salt);
        parts.signature = ed25519_sign(&self.signing_seed, &[ad.as_slice(), &parts.body].concat()).to_vec();
        parts.wire()
    }
}

/// Builds the steps of a `decrypt` case, with what each must give, so that
/// a construction that does not do what its note says is caught.
struct Steps {
    steps: Vec<Step>,
    expected: Vec<&'static str>,
}

impl Steps {
    fn new() -> Self {
        Self { steps: Vec::new(), expected: Vec::new() }
    }

    fn receive(&mut self, note: &str, content: &[u8]) {
        self.steps.push(Step::Receive {
            note: note.to_owned(),
            content: h(content),
            result: Value::Null,
            chains: Vec::new(),
            floors: Vec::new(),
            min_generation: 0,
        });
        self.expected.push("changed");
    }

    fn receive_unchanged(&mut self, note: &str, content: &[u8]) {
        self.receive(note, content);
        if let Some(last) = self.expected.last_mut() {
            *last = "unchanged";
        }
    }

    fn decrypt(&mut self, note: &str, message: &[u8], sender: &Address, expected: &'static str) {
        self.steps.push(Step::Decrypt {
            note: note.to_owned(),
            message: h(message),
            user_id: sender.user_id().to_owned(),
            device_id: sender.device_id(),
            result: Value::Null,
            chains: Vec::new(),
            floors: Vec::new(),
            min_generation: 0,
        });
        self.expected.push(expected);
    }

    /// The case, after checking every step's outcome.
    fn case(self, name: &str, rule: &str) -> R<GroupCase> {
        let computed = run_steps(&self.steps)?;
        for (i, (step, expected)) in computed.iter().zip(&self.expected).enumerate() {
            let result = match step {
                Step::Receive { result, .. } | Step::Decrypt { result, .. } => result,
            };
            let outcome = if result.get("plaintext").is_some() {
                "ok"
            } else if let Some(changed) = result.get("changed").and_then(Value::as_bool) {
                if changed { "changed" } else { "unchanged" }
            } else if let Some(cause) = result.get("cause").and_then(|c| c.get("error")).and_then(Value::as_str) {
                cause
            } else {
                result.get("error").and_then(Value::as_str).unwrap_or("?")
            };
            if outcome != *expected {
                return Err(err(
                    format!("{name}: steps[{i}].result"),
                    format!("construction: expected {expected}, the library gives {result}"),
                ));
            }
        }
        Ok(GroupCase::Decrypt { name: name.to_owned(), rule: rule.to_owned(), steps: self.steps })
    }
}

fn with(mut parts: Parts, change: impl FnOnce(&mut Parts)) -> Vec<u8> {
    change(&mut parts);
    parts.wire()
}

fn flip(bytes: &mut [u8], index: usize) {
    if let Some(b) = bytes.get_mut(index) {
        *b ^= 0x01;
    }
}

#[allow(clippy::too_many_lines)]
fn decrypt_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let alice = address("user_id", "alice", 1)?;
    let group = random::<16>(rng);
    let mut cases = Vec::new();

    // In order, out of order, duplicates.
    let a = Chain::new(rng, &group, &alice);
    let mut s = Steps::new();
    s.receive("the distribution of chain A at iteration 0", &a.distribution(0)?);
    let m0 = a.message(rng, 0)?;
    let m1 = a.message(rng, 1)?;
    let m2 = a.message(rng, 2)?;
    s.decrypt("A 0", &m0, &alice, "ok");
    s.decrypt("A 2: iteration 1 is skipped, its key kept", &m2, &alice, "ok");
    s.decrypt("A 1, from the kept key", &m1, &alice, "ok");
    s.decrypt("A 1 again", &m1, &alice, "duplicate");
    s.decrypt("A 0 again", &m0, &alice, "duplicate");
    s.decrypt("A 3 (empty plaintext)", &a.message_with(3, &random::<24>(rng), b"")?, &alice, "ok");
    cases.push(s.case(
        "decrypt_in_order_out_of_order_duplicates",
        "18.5: a message ahead of the chain stores the keys of the iterations it skips; a skipped key decrypts once; \
         a decrypted iteration again is Duplicate.",
    )?);

    // Every field of the signed bytes.
    let a = Chain::new(rng, &group, &alice);
    let b = a.sibling(rng, false);
    let mut s = Steps::new();
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    s.receive("chain B at iteration 5: A's signing key and chain key under another chain id", &b.distribution(5)?);
    let m0 = a.message(rng, 0)?;
    let m1 = a.message(rng, 1)?;
    s.decrypt("A 0", &m0, &alice, "ok");
    s.decrypt("A 1", &m1, &alice, "ok");
    let p = Parts::of(&m1)?;
    let unauthenticated = "unauthenticated";
    s.decrypt(
        "A 1, group id altered (last byte)",
        &with(p.clone(), |p| flip(&mut p.group_id, 15)),
        &alice,
        unauthenticated,
    );
    s.decrypt(
        "A 1, group id one byte shorter",
        &with(p.clone(), |p| {
            p.group_id.pop();
        }),
        &alice,
        unauthenticated,
    );
    s.decrypt("A 1 from another user id of the same length", &m1, &address("user_id", "alicf", 1)?, unauthenticated);
    s.decrypt("A 1 from another device of the sender", &m1, &address("user_id", "alice", 2)?, unauthenticated);
    s.decrypt("A 1 relabelled as chain B", &with(p.clone(), |p| p.chain_id = b.chain_id), &alice, unauthenticated);
    s.decrypt("A 1 relabelled as iteration 0", &with(p.clone(), |p| p.iteration = 0), &alice, unauthenticated);
    s.decrypt("A 1, salt altered (first byte)", &with(p.clone(), |p| flip(&mut p.salt, 0)), &alice, unauthenticated);
    s.decrypt("A 1, salt altered (last byte)", &with(p.clone(), |p| flip(&mut p.salt, 23)), &alice, unauthenticated);
    s.decrypt("A 1, body altered (first byte)", &with(p.clone(), |p| flip(&mut p.body, 0)), &alice, unauthenticated);
    s.decrypt("A 1, signature altered (R)", &with(p.clone(), |p| flip(&mut p.signature, 0)), &alice, unauthenticated);
    s.decrypt("A 1, signature altered (S)", &with(p.clone(), |p| flip(&mut p.signature, 32)), &alice, unauthenticated);
    let s_plus_l = p
        .signature
        .last_chunk::<32>()
        .and_then(plus_l)
        .ok_or_else(|| err("signature", "S + L does not fit 32 bytes"))?;
    s.decrypt(
        "A 1, S replaced by S + L (the same signature for a non-strict verifier)",
        &with(p.clone(), |p| {
            p.signature.truncate(32);
            p.signature.extend_from_slice(&s_plus_l);
        }),
        &alice,
        unauthenticated,
    );
    s.decrypt("A 2: nothing changed", &a.message(rng, 2)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_every_signed_field",
        "18.4, 18.5: the signature covers the label, the group id with its length, the sender's address (user id \
         with its length, device id), the chain id, the iteration, the salt and the body, and is verified strictly \
         (S < L) before the iteration is looked at. Each copy of A 1 with one of them changed, or with its signature \
         altered, is Unauthenticated: a verifier that leaves a field out, or checks the iteration first, reports \
         Duplicate (iteration 1 is used; chain B has the same signing key and is at iteration 5) or Rollback \
         (iteration 0, or a salt whose first 8 bytes differ).",
    )?);

    // Validly signed, but the body does not open.
    let a = Chain::new(rng, &group, &alice);
    let mut s = Steps::new();
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    s.decrypt("A 0", &a.message(rng, 0)?, &alice, "ok");
    let m3 = a.message(rng, 3)?;
    let mut p3 = Parts::of(&m3)?;
    flip(&mut p3.body, 0);
    s.decrypt("A 3, body altered and signed again", &a.signed(p3), &alice, unauthenticated);
    let mut bad = pad(b"message 3", 0x80);
    if let Some(last) = bad.last_mut() {
        *last = 0x01;
    }
    s.decrypt("A 3: a byte after the marker", &a.craft(rng, 3, &bad, KEY_LABEL, None)?, &alice, unauthenticated);
    s.decrypt("A 3: no marker (64 zero bytes)", &a.craft(rng, 3, &[0; 64], KEY_LABEL, None)?, &alice, unauthenticated);
    s.decrypt(
        "A 3: control content (marker 0x81) in a group body",
        &a.craft(rng, 3, &pad(b"message 3", 0x81), KEY_LABEL, None)?,
        &alice,
        unauthenticated,
    );
    s.decrypt(
        "A 3: key and nonce from the one-to-one label",
        &a.craft(rng, 3, &pad(b"message 3", 0x80), RATCHET_KEY_LABEL, None)?,
        &alice,
        unauthenticated,
    );
    s.decrypt(
        "A 3: sealed with empty associated data (signed over the right AD)",
        &a.craft(rng, 3, &pad(b"message 3", 0x80), KEY_LABEL, Some(&[]))?,
        &alice,
        unauthenticated,
    );
    s.decrypt(
        "A 3, sealed from the formulas: it opens",
        &a.craft(rng, 3, &pad(b"message 3", 0x80), KEY_LABEL, None)?,
        &alice,
        "ok",
    );
    s.decrypt("A 1, from a key kept when A 3 decrypted", &a.message(rng, 1)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_signed_but_not_authentic",
        "18.5, 5.2: a message validly signed whose body does not open (altered, sealed under another key or \
         associated data) or whose padding does not verify or holds control content (0x81) is Unauthenticated, and \
         stores no skipped key: the chains change only when the body opens.",
    )?);

    // MAX_SKIP.
    let a = Chain::new(rng, &group, &alice);
    let mut s = Steps::new();
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    let far = a.message(rng, MAX_SKIP + 1)?;
    s.decrypt("A 2001: gap 2,001", &far, &alice, "too_far_ahead");
    s.decrypt("A 2000: gap 2,000, 2,000 keys kept", &a.message(rng, MAX_SKIP)?, &alice, "ok");
    s.decrypt("A 0, from a kept key", &a.message(rng, 0)?, &alice, "ok");
    s.decrypt("A 1999, from a kept key", &a.message(rng, MAX_SKIP - 1)?, &alice, "ok");
    s.decrypt("A 2001 again: now the next iteration", &far, &alice, "ok");
    cases.push(s.case(
        "decrypt_too_far_ahead",
        "18.5, 11: one message skips at most MAX_SKIP = 2,000 iterations: gap = iteration - the chain's next \
         iteration; 2,001 is TooFarAhead { gap: 2001, max: 2000 } and changes nothing, 2,000 is accepted.",
    )?);

    let a = Chain::new(rng, &group, &alice);
    let mut s = Steps::new();
    s.receive("chain A at iteration 10", &a.distribution(10)?);
    s.decrypt("A 9: before the distribution", &a.message(rng, 9)?, &alice, "duplicate");
    s.decrypt("A 2011: gap 2,001 from iteration 10", &a.message(rng, 2011)?, &alice, "too_far_ahead");
    s.decrypt("A 2010: gap 2,000", &a.message(rng, 2010)?, &alice, "ok");
    s.decrypt("A 10, from a kept key", &a.message(rng, 10)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_gap_from_the_distribution",
        "18.5: the gap is counted from the chain's iteration (here the distribution's, 10), not from 0; an iteration \
         before the distribution was never the member's to read: Duplicate.",
    )?);

    // Rollback.
    let a = Chain::new(rng, &group, &alice);
    let mut s = Steps::new();
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    let m1_salt = random::<24>(rng);
    let m1 = a.message_with(1, &m1_salt, b"message 1")?;
    s.decrypt("A 0", &a.message(rng, 0)?, &alice, "ok");
    s.decrypt("A 1", &m1, &alice, "ok");
    s.decrypt(
        "A 1 from the sender restored to iteration 1: another salt",
        &a.message_with(1, &random::<24>(rng), b"message 1 again")?,
        &alice,
        "rollback",
    );
    let mut same_tag = random::<24>(rng);
    same_tag[..8].copy_from_slice(&m1_salt[..8]);
    s.decrypt(
        "A 1, restored, with a salt whose first 8 bytes are those of A 1's",
        &a.message_with(1, &same_tag, b"message 1 again")?,
        &alice,
        "duplicate",
    );
    s.decrypt("A 1 again", &m1, &alice, "duplicate");
    s.decrypt("A 0 from the sender restored to iteration 0", &a.message(rng, 0)?, &alice, "rollback");
    s.decrypt("A 2 from the restored sender", &a.message(rng, 2)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_rollback",
        "18.5, 4.8: a validly signed message on a decrypted iteration is Rollback when the first 8 bytes of its salt \
         differ from those of the message decrypted there (the sender's state went back), Duplicate when they are the \
         same.",
    )?);

    // Missing chain, replays, rotation.
    let a = Chain::new(rng, &group, &alice);
    let b = Chain::new(rng, &group, &alice);
    let c = Chain::new(rng, &group, &alice);
    let d = Chain::new(rng, &group, &alice);
    let b2 = Chain { chain_id: b.chain_id, ..Chain::new(rng, &group, &alice) };
    let mut s = Steps::new();
    let a0 = a.message(rng, 0)?;
    s.decrypt("A 0 before A's distribution", &a0, &alice, "missing_chain");
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    s.decrypt("A 0", &a0, &alice, "ok");
    s.receive_unchanged("chain A at iteration 0 again (a replayed distribution)", &a.distribution(0)?);
    s.decrypt("A 0 again: the chain was not taken back", &a0, &alice, "duplicate");
    s.receive("chain B at iteration 0", &b.distribution(0)?);
    s.receive("chain C at iteration 0", &c.distribution(0)?);
    s.receive("chain D at iteration 0: a fourth chain, A is dropped", &d.distribution(0)?);
    s.decrypt("A 1", &a.message(rng, 1)?, &alice, "missing_chain");
    let b_old = b.message(rng, 1)?;
    s.decrypt("B 0", &b.message(rng, 0)?, &alice, "ok");
    s.decrypt("D 0", &d.message(rng, 0)?, &alice, "ok");
    s.receive("chain B again, with another signing key and chain key: it replaces B", &b2.distribution(0)?);
    s.decrypt("B 1 signed by B's first key", &b_old, &alice, unauthenticated);
    s.decrypt("B 0 of the new chain", &b2.message(rng, 0)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_missing_chain_and_distributions",
        "18.5, 18.6: a message on a chain not kept is MissingChain and changes nothing; a distribution of a chain \
         already kept with the same signing key changes nothing (it never takes the chain back); with another \
         signing key it replaces the chain, which becomes the newest; past MAX_SENDER_CHAINS = 3 the oldest chain \
         is dropped.",
    )?);

    // The last iteration.
    let a = Chain { base: u32::MAX - 1, ..Chain::new(rng, &group, &alice) };
    let mut s = Steps::new();
    s.receive("chain A at iteration 2^32 - 2", &a.distribution(u32::MAX - 1)?);
    s.decrypt("A 2^32 - 2", &a.message(rng, u32::MAX - 1)?, &alice, "ok");
    s.decrypt(
        "A 2^32 - 1, sealed and signed from the formulas",
        &a.craft(rng, u32::MAX, &pad(b"past the end", 0x80), KEY_LABEL, None)?,
        &alice,
        unauthenticated,
    );
    cases.push(s.case(
        "decrypt_last_iteration",
        "18.5: no sender uses iteration 2^32 - 1 (its chain cannot step): a message there, even validly signed \
         and sealed, is Unauthenticated.",
    )?);

    // Eviction of skipped keys over the chains.
    let a = Chain::new(rng, &group, &alice);
    let b = Chain::new(rng, &group, &alice);
    let mut s = Steps::new();
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    s.decrypt("A 2000: 2,000 keys kept", &a.message(rng, MAX_SKIP)?, &alice, "ok");
    s.receive("chain B at iteration 0", &b.distribution(0)?);
    s.decrypt("B 5: 5 keys more, the 5 oldest of A dropped", &b.message(rng, 5)?, &alice, "ok");
    s.decrypt(
        "A 4: its key was dropped unused (never delivered: not a duplicate)",
        &a.message(rng, 4)?,
        &alice,
        "key_evicted",
    );
    s.decrypt("A 5", &a.message(rng, 5)?, &alice, "ok");
    s.decrypt("B 0", &b.message(rng, 0)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_skipped_key_eviction",
        "18.5, 11: at most MAX_GROUP_SKIPPED_KEYS = 2,000 skipped keys per sender over all its chains; past it the \
         oldest chain's lowest iterations go first, and are remembered as evicted (at most \
         MAX_GROUP_EVICTED_ITERATIONS = 2,000 per sender): a message on one is KeyEvicted.",
    )?);
    Ok(cases)
}

fn decode_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let alice = address("user_id", "alice", 1)?;
    let group = random::<16>(rng);
    let a = Chain::new(rng, &group, &alice);
    let wire = a.message(rng, 3)?;
    let p = Parts::of(&wire)?;
    let decode = |name: &str, decoder: GroupDecoder, input: &[u8]| GroupCase::Decode {
        name: name.to_owned(),
        decoder,
        input: h(input),
        result: Value::Null,
        reencoded: None,
    };
    let change = |f: &dyn Fn(&mut Parts)| {
        let mut q = p.clone();
        f(&mut q);
        q.wire()
    };
    let inner = p.inner();
    let fields = [
        opt_bytes(1, &p.group_id),
        uint(2, p.chain_id),
        uint(3, p.iteration),
        opt_bytes(4, &p.salt),
        opt_bytes(5, &p.body),
        opt_bytes(6, &p.signature),
    ];
    let reordered =
        [&fields[1], &fields[0], &fields[2], &fields[3], &fields[4], &fields[5]].map(Vec::as_slice).concat();
    let ratchet = hazmat::ratchet_message(random::<81>(rng), random_vec(rng, 80)).to_bytes();
    let mut version_2 = wire.clone();
    if let Some(first) = version_2.first_mut() {
        *first = 0x02;
    }
    use GroupDecoder::{GroupMessage as G, Message as One};
    Ok(vec![
        decode("group_message", G, &wire),
        decode(
            "chain_id_and_iteration_0_omitted",
            G,
            &change(&|q| {
                q.chain_id = 0;
                q.iteration = 0;
            }),
        ),
        decode("group_id_1_byte", G, &change(&|q| q.group_id = vec![0x67])),
        decode("group_id_64_bytes", G, &change(&|q| q.group_id = vec![0x67; 64])),
        decode("group_id_empty", G, &change(&|q| q.group_id.clear())),
        decode("group_id_65_bytes", G, &change(&|q| q.group_id = vec![0x67; 65])),
        decode("salt_empty", G, &change(&|q| q.salt.clear())),
        decode("salt_23_bytes", G, &change(&|q| q.salt.truncate(23))),
        decode("salt_25_bytes", G, &change(&|q| q.salt.push(0))),
        decode("signature_empty", G, &change(&|q| q.signature.clear())),
        decode("signature_63_bytes", G, &change(&|q| q.signature.truncate(63))),
        decode("signature_65_bytes", G, &change(&|q| q.signature.push(0))),
        decode("body_empty", G, &change(&|q| q.body.clear())),
        decode("body_79_bytes", G, &change(&|q| q.body.truncate(79))),
        decode("body_80_bytes", G, &change(&|q| q.body.truncate(80))),
        decode(
            "order_group_id_before_salt",
            G,
            &change(&|q| {
                q.group_id.clear();
                q.salt.truncate(23);
            }),
        ),
        decode(
            "order_salt_before_signature",
            G,
            &change(&|q| {
                q.salt.truncate(23);
                q.signature.truncate(63);
            }),
        ),
        decode(
            "order_signature_before_body",
            G,
            &change(&|q| {
                q.signature.truncate(63);
                q.body.truncate(79);
            }),
        ),
        decode("empty_group_message", G, &framed(&[])),
        decode(
            "chain_id_0_given",
            G,
            &framed(
                &[
                    fields[0].clone(),
                    vec![0x10, 0x00],
                    fields[2].clone(),
                    fields[3].clone(),
                    fields[4].clone(),
                    fields[5].clone(),
                ]
                .concat(),
            ),
        ),
        decode("fields_reordered", G, &framed(&reordered)),
        decode("unknown_field_7", G, &framed(&[inner.clone(), vec![0x38, 0x01]].concat())),
        decode(
            "iteration_non_minimal_varint",
            G,
            &framed(
                &[
                    fields[0].clone(),
                    fields[1].clone(),
                    vec![0x18],
                    crate::util::non_minimal_varint(u64::from(p.iteration)),
                    fields[3].clone(),
                    fields[4].clone(),
                    fields[5].clone(),
                ]
                .concat(),
            ),
        ),
        decode(
            "chain_id_plus_2_pow_32",
            G,
            &framed(
                &[
                    fields[0].clone(),
                    vec![0x10],
                    varint(u64::from(p.chain_id) + (1 << 32)),
                    fields[2].clone(),
                    fields[3].clone(),
                    fields[4].clone(),
                    fields[5].clone(),
                ]
                .concat(),
            ),
        ),
        decode("group_id_given_twice", G, &framed(&[ld(1, b"other"), inner.clone()].concat())),
        decode("trailing_zero_byte", G, &[wire.clone(), vec![0x00]].concat()),
        decode("empty", G, &[]),
        decode("version_2", G, &version_2),
        decode("ratchet_message_to_group_decoder", G, &ratchet),
        decode("unknown_kind_field_9", G, &[0x01, 0x4a, 0x00]),
        decode("group_message_to_one_to_one_decoder", One, &wire),
        decode("malformed_group_message_to_one_to_one_decoder", One, &change(&|q| q.salt.truncate(23))),
    ])
}

fn control_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let group = random::<16>(rng);
    let chain_key = random::<32>(rng);
    let signing_key = ed25519_public(&random::<32>(rng));
    let distribution_of = |group: &[u8], chain_id: u32, iteration: u32, generation: u64| ControlFields::Distribution {
        group_id: h(group),
        chain_id,
        iteration,
        chain_key: h(chain_key),
        signing_key: h(signing_key),
        generation,
    };
    let distribution = |group: &[u8], chain_id: u32, iteration: u32| distribution_of(group, chain_id, iteration, 0);
    let request_of = |group: &[u8], chain_id: u32, iteration: u32, min_generation: u64| ControlFields::Request {
        group_id: h(group),
        chain_id,
        iteration,
        min_generation,
    };
    let request = |group: &[u8], chain_id: u32, iteration: u32| request_of(group, chain_id, iteration, 0);
    let encode = |name: &str, control: ControlFields| GroupCase::EncodeControl {
        name: name.to_owned(),
        control,
        encoded: String::new(),
    };
    let chain_id = u32::from_be_bytes(random::<4>(rng));
    let mut cases = vec![
        encode("encode_distribution", distribution(&group, chain_id, 42)),
        encode("encode_distribution_chain_id_and_iteration_0", distribution(&group, 0, 0)),
        encode("encode_distribution_group_id_64_bytes", distribution(&[0x47; 64], u32::MAX, u32::MAX)),
        encode("encode_request", request(&group, chain_id, 42)),
        encode("encode_request_chain_id_and_iteration_0", request(&group, 0, 0)),
        encode("encode_distribution_generation", distribution_of(&group, chain_id, 42, 300)),
        encode("encode_distribution_generation_max", distribution_of(&[0x47; 64], u32::MAX, u32::MAX, u64::MAX)),
        encode("encode_request_min_generation", request_of(&group, chain_id, 42, 300)),
        encode("encode_request_min_generation_max", request_of(&[0x47; 64], u32::MAX, u32::MAX, u64::MAX)),
    ];

    let decode = |name: &str, input: &[u8]| GroupCase::DecodeControl {
        name: name.to_owned(),
        input: Some(h(input)),
        input_repeat: None,
        result: Value::Null,
        reencoded: None,
    };
    // A distribution's inner fields by hand, each replaceable.
    let inner = |group: &[u8], chain_key: &[u8], signing_key: &[u8]| {
        [opt_bytes(1, group), uint(2, chain_id), uint(3, 42), opt_bytes(4, chain_key), opt_bytes(5, signing_key)]
            .concat()
    };
    let dist = |group: &[u8], chain_key: &[u8], signing_key: &[u8]| ld(1, &inner(group, chain_key, signing_key));
    let req = |group: &[u8]| ld(2, &[opt_bytes(1, group), uint(2, chain_id), uint(3, 42)].concat());
    // The small-order point of order 1 (the identity), a y with no x, and a key of mixed order.
    let identity_point = {
        let mut k = [0u8; 32];
        k[0] = 1;
        k
    };
    let not_on_curve = (2u8..=255)
        .map(|y| {
            let mut k = [0u8; 32];
            k[0] = y;
            k
        })
        .find(|k| CompressedEdwardsY(*k).decompress().is_none())
        .ok_or_else(|| err("input", "no small y off the curve"))?;
    let mixed_order = {
        let point = CompressedEdwardsY(signing_key).decompress().ok_or_else(|| err("input", "not a point"))?;
        (point + curve25519_dalek::constants::EIGHT_TORSION[1]).compress().to_bytes()
    };
    let good = dist(&group, &chain_key, &signing_key);
    cases.extend([
        decode("distribution", &good),
        decode("request", &req(&group)),
        decode("distribution_group_id_64_bytes", &dist(&[0x47; 64], &chain_key, &signing_key)),
        decode("distribution_signing_key_mixed_order", &dist(&group, &chain_key, &mixed_order)),
        decode("empty_content", &[]),
        decode("empty_distribution", &ld(1, &[])),
        decode("empty_request", &ld(2, &[])),
        // Field 3 was unknown (`unknown_member_field_3`) until resets: an
        // empty one is now a reset naming nothing.
        decode("reset_naming_nothing", &ld(3, &[])),
        decode("distribution_and_request", &[good.clone(), req(&group)].concat()),
        decode("distribution_group_id_empty", &dist(&[], &chain_key, &signing_key)),
        decode("distribution_group_id_65_bytes", &dist(&[0x47; 65], &chain_key, &signing_key)),
        decode("distribution_chain_key_empty", &dist(&group, &[], &signing_key)),
        decode("distribution_chain_key_31_bytes", &dist(&group, &chain_key[..31], &signing_key)),
        decode("distribution_chain_key_33_bytes", &dist(&group, &[&chain_key[..], &[0]].concat(), &signing_key)),
        decode("distribution_signing_key_empty", &dist(&group, &chain_key, &[])),
        decode("distribution_signing_key_31_bytes", &dist(&group, &chain_key, &signing_key[..31])),
        decode("distribution_signing_key_small_order", &dist(&group, &chain_key, &identity_point)),
        decode("distribution_signing_key_not_on_curve", &dist(&group, &chain_key, &not_on_curve)),
        decode("order_group_id_before_chain_key", &dist(&[], &chain_key[..31], &identity_point)),
        decode("order_chain_key_before_signing_key", &dist(&group, &chain_key[..31], &identity_point)),
        decode("request_group_id_empty", &req(&[])),
        decode("request_group_id_65_bytes", &req(&[0x47; 65])),
        decode(
            "distribution_chain_id_0_given",
            &ld(
                1,
                &[
                    opt_bytes(1, &group),
                    vec![0x10, 0x00],
                    uint(3, 42),
                    opt_bytes(4, &chain_key),
                    opt_bytes(5, &signing_key),
                ]
                .concat(),
            ),
        ),
        decode(
            "distribution_fields_reordered",
            &ld(
                1,
                &[
                    opt_bytes(4, &chain_key),
                    opt_bytes(1, &group),
                    uint(2, chain_id),
                    uint(3, 42),
                    opt_bytes(5, &signing_key),
                ]
                .concat(),
            ),
        ),
        decode(
            "request_unknown_field_5",
            &ld(2, &[opt_bytes(1, &group), uint(2, chain_id), uint(3, 42), vec![0x28, 0x01]].concat()),
        ),
        decode(
            "distribution_unknown_field_7",
            &ld(
                1,
                &[
                    opt_bytes(1, &group),
                    uint(2, chain_id),
                    uint(3, 42),
                    opt_bytes(4, &chain_key),
                    opt_bytes(5, &signing_key),
                    vec![0x38, 0x01],
                ]
                .concat(),
            ),
        ),
        decode(
            "distribution_generation_non_minimal",
            &ld(
                1,
                &[
                    opt_bytes(1, &group),
                    uint(2, chain_id),
                    uint(3, 42),
                    opt_bytes(4, &chain_key),
                    opt_bytes(5, &signing_key),
                    vec![0x30, 0x81, 0x00],
                ]
                .concat(),
            ),
        ),
        decode(
            "request_min_generation_explicit_zero",
            &ld(2, &[opt_bytes(1, &group), uint(2, chain_id), uint(3, 42), vec![0x20, 0x00]].concat()),
        ),
        decode("control_content_still_padded", &pad(&good, 0x81)),
    ]);
    cases.extend(healing_control_cases());
    Ok(cases)
}

/// Resets and resends (PROTOCOL.md 20.5, 20.6), with ids made from fixed
/// messages: nothing is drawn, so the cases after them keep their bytes.
fn healing_control_cases() -> Vec<GroupCase> {
    let id = |i: usize| message_id_by_hand(format!("message {i}").as_bytes());
    let ids = |n: usize| (0..n).map(id).collect::<Vec<_>>();
    let reset = |ids: &[[u8; 16]]| ControlFields::Reset { unreadable: ids.iter().map(h).collect() };
    let resend_also = |plaintext: &[u8], also: &[[u8; 16]]| ControlFields::Resend {
        id: h(id(0)),
        also: also.iter().map(h).collect(),
        plaintext: h(plaintext),
    };
    let resend = |plaintext: &[u8]| resend_also(plaintext, &[]);
    let encode = |name: &str, control: ControlFields| GroupCase::EncodeControl {
        name: name.to_owned(),
        control,
        encoded: String::new(),
    };
    let decode = |name: &str, input: &[u8]| GroupCase::DecodeControl {
        name: name.to_owned(),
        input: Some(h(input)),
        input_repeat: None,
        result: Value::Null,
        reencoded: None,
    };
    // A reset of any entries, each `unreadable` as it is (any length).
    let reset_of = |entries: &[Vec<u8>]| ld(3, &entries.iter().flat_map(|e| ld(1, e)).collect::<Vec<u8>>());
    let entries = |ids: &[[u8; 16]]| ids.iter().map(|id| id.to_vec()).collect::<Vec<_>>();
    let resend_of = |id: &[u8], plaintext: &[u8]| ld(4, &[opt_bytes(1, id), opt_bytes(2, plaintext)].concat());
    // A resend with `also` entries, each as it is (any length), after the
    // plaintext (the canonical order).
    let resend_also_of = |id: &[u8], plaintext: &[u8], also: &[Vec<u8>]| {
        let also: Vec<u8> = also.iter().flat_map(|other| ld(3, other)).collect();
        ld(4, &[opt_bytes(1, id), opt_bytes(2, plaintext), also].concat())
    };
    // A resend whose plaintext, the last field, is `len` bytes of 0x70.
    let long_resend = |name: &str, id: &[u8], len: usize| {
        let fields = [opt_bytes(1, id), vec![0x12], varint(len as u64)].concat();
        let prefix = [vec![0x22], varint(fields.len().saturating_add(len) as u64), fields].concat();
        let total = prefix.len().saturating_add(len);
        GroupCase::DecodeControl {
            name: name.to_owned(),
            input: None,
            input_repeat: Some(Repeat::new(&prefix, 0x70, total)),
            result: Value::Null,
            reencoded: None,
        }
    };
    let text = b"a message the outbox kept, sent again";
    let too_many = entries(&ids(MAX_RESET_IDS + 1));
    let mut short_first = too_many.clone();
    if let Some(first) = short_first.first_mut() {
        first.truncate(15);
    }
    let (a, b, c) = (id(0).to_vec(), id(1).to_vec(), id(2).to_vec());
    let mut short = a.clone();
    short.truncate(15);
    let mut long = a.clone();
    long.push(0);
    // The ids of earlier resends: ids 1 to 5.
    let others = |n: usize| (1..=n).map(id).collect::<Vec<_>>();
    let also_entries = |n: usize| entries(&others(n));
    let mut five_short_first = also_entries(MAX_RESEND_IDS + 1);
    if let Some(first) = five_short_first.first_mut() {
        first.truncate(15);
    }
    vec![
        encode("encode_reset_naming_nothing", reset(&[])),
        encode("encode_reset_one_id", reset(&ids(1))),
        encode("encode_reset_64_ids", reset(&ids(MAX_RESET_IDS))),
        encode("encode_resend", resend(text)),
        encode("encode_resend_empty_plaintext", resend(&[])),
        encode("encode_resend_also_one_id", resend_also(text, &others(1))),
        encode("encode_resend_also_4_ids", resend_also(text, &others(MAX_RESEND_IDS))),
        encode("encode_resend_also_empty_plaintext", resend_also(&[], &others(2))),
        decode("reset_one_id", &reset_of(&entries(&ids(1)))),
        decode("reset_64_ids", &reset_of(&entries(&ids(MAX_RESET_IDS)))),
        decode("reset_65_ids", &reset_of(&too_many)),
        decode("reset_id_repeated", &reset_of(&[a.clone(), a.clone()])),
        decode("reset_id_repeated_not_adjacent", &reset_of(&[a.clone(), b.clone(), c.clone(), a.clone()])),
        decode("reset_id_15_bytes", &reset_of(&[b.clone(), short.clone()])),
        decode("reset_id_17_bytes", &reset_of(&[long.clone()])),
        decode("reset_id_empty", &reset_of(&[Vec::new()])),
        decode("reset_order_count_before_length", &reset_of(&short_first)),
        decode("reset_order_length_before_repeat", &reset_of(&[a.clone(), a.clone(), short.clone()])),
        decode("reset_unknown_field_2", &ld(3, &[ld(1, &a), vec![0x10, 0x01]].concat())),
        decode("resend", &resend_of(&a, text)),
        decode("resend_empty_plaintext", &resend_of(&a, &[])),
        decode("empty_resend", &ld(4, &[])),
        decode("resend_id_15_bytes", &resend_of(&short, text)),
        decode("resend_id_17_bytes", &resend_of(&long, text)),
        decode("resend_unknown_field_4", &ld(4, &[opt_bytes(1, &a), opt_bytes(2, text), vec![0x20, 0x01]].concat())),
        decode("resend_also_as_a_varint", &ld(4, &[opt_bytes(1, &a), opt_bytes(2, text), vec![0x18, 0x01]].concat())),
        long_resend("resend_plaintext_too_long", &a, MAX_KEPT_PLAINTEXT_LEN + 1),
        long_resend("resend_order_plaintext_before_id", &short, MAX_KEPT_PLAINTEXT_LEN + 1),
        decode("resend_also_one_id", &resend_also_of(&a, text, &also_entries(1))),
        decode("resend_also_4_ids", &resend_also_of(&a, text, &also_entries(MAX_RESEND_IDS))),
        decode("resend_also_empty_plaintext", &resend_also_of(&a, &[], &also_entries(2))),
        decode("resend_also_5_ids", &resend_also_of(&a, text, &also_entries(MAX_RESEND_IDS + 1))),
        decode("resend_also_equal_to_id", &resend_also_of(&a, text, &[b.clone(), a.clone()])),
        decode("resend_also_repeated", &resend_also_of(&a, text, &[b.clone(), c.clone(), b.clone()])),
        decode("resend_also_15_bytes", &resend_also_of(&a, text, &[b.clone(), short.clone()])),
        decode("resend_also_17_bytes", &resend_also_of(&a, text, &[long.clone()])),
        decode("resend_also_empty", &resend_also_of(&a, text, &[Vec::new()])),
        decode("resend_order_id_before_also", &resend_also_of(&short, text, &also_entries(MAX_RESEND_IDS + 1))),
        decode("resend_order_also_count_before_length", &resend_also_of(&a, text, &five_short_first)),
        decode(
            "resend_order_also_length_before_repeat",
            &resend_also_of(&a, text, &[b.clone(), b.clone(), short.clone()]),
        ),
        decode("resend_also_before_plaintext", &ld(4, &[opt_bytes(1, &a), ld(3, &b), opt_bytes(2, text)].concat())),
        decode("unknown_member_field_5", &ld(5, &[])),
        decode("unknown_member_field_5_with_content", &ld(5, &[0xaa, 0xbb])),
    ]
}

fn padding_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let pad_case = |name: &str, content: &[u8], kind: Kind| GroupCase::PadContent {
        name: name.to_owned(),
        content: h(content),
        content_type: kind,
        padded: None,
    };
    let unpad_case = |name: &str, data: &[u8]| GroupCase::UnpadContent {
        name: name.to_owned(),
        data: h(data),
        unpadded: Value::Null,
        app_unpadded: None,
    };
    let alice = address("user_id", "alice", 1)?;
    let group = random::<16>(rng);
    let distribution = Chain::new(rng, &group, &alice).distribution(0)?;
    let c63 = random_vec(rng, 63);
    let c64 = random_vec(rng, 64);
    let control = pad(b"ctl", 0x81);
    let marker_82 = pad(b"ctl", 0x82);
    let mut byte_after = control.clone();
    if let Some(last) = byte_after.last_mut() {
        *last = 0x01;
    }
    let mut wrong_bucket = control.clone();
    wrong_bucket.resize(128, 0);
    Ok(vec![
        pad_case("pad_control_short", b"ctl", Kind::Control),
        pad_case("pad_app_short", b"ctl", Kind::App),
        pad_case("pad_control_63_bytes", &c63, Kind::Control),
        pad_case("pad_control_64_bytes", &c64, Kind::Control),
        pad_case("pad_control_distribution", &distribution, Kind::Control),
        unpad_case("unpad_control", &control),
        unpad_case("unpad_app", &pad(b"ctl", 0x80)),
        unpad_case("unpad_control_distribution", &pad(&distribution, 0x81)),
        unpad_case("unpad_marker_0x82", &marker_82),
        unpad_case("unpad_control_byte_after_marker", &byte_after),
        unpad_case("unpad_control_wrong_bucket", &wrong_bucket),
    ])
}

/// Chains given up and taken again (PROTOCOL.md 18.5, 18.6): drawn last, so
/// that the cases before them keep their bytes.
fn floor_cases(rng: &mut ChaCha20Rng) -> R<Vec<GroupCase>> {
    let alice = address("user_id", "alice", 1)?;
    let group = random::<16>(rng);
    let mut cases = Vec::new();

    let a = Chain::new(rng, &group, &alice);
    let (b, c, d, e) = (
        Chain::new(rng, &group, &alice),
        Chain::new(rng, &group, &alice),
        Chain::new(rng, &group, &alice),
        Chain::new(rng, &group, &alice),
    );
    let (a0, a1, a2) = (a.message(rng, 0)?, a.message(rng, 1)?, a.message(rng, 2)?);
    let (a3, a4) = (a.message(rng, 3)?, a.message(rng, 4)?);
    let mut s = Steps::new();
    s.receive("chain A at iteration 0", &a.distribution(0)?);
    s.decrypt("A 0", &a0, &alice, "ok");
    s.decrypt("A 2: iteration 1 skipped", &a2, &alice, "ok");
    s.receive("chain B at iteration 0", &b.distribution(0)?);
    s.receive("chain C at iteration 0", &c.distribution(0)?);
    s.receive("chain D at iteration 0: A is evicted, its floor is 3", &d.distribution(0)?);
    s.decrypt("A 0 again: below the floor", &a0, &alice, "duplicate");
    s.decrypt("A 1 (its key went with the chain): below the floor", &a1, &alice, "duplicate");
    s.decrypt("A 3: at the floor, the chain is missing", &a3, &alice, "missing_chain");
    s.receive(
        "chain A again at iteration 0 (a delayed copy): taken from its floor, 3; B is evicted",
        &a.distribution(0)?,
    );
    s.decrypt("A 1 again: below where the chain was taken", &a1, &alice, "duplicate");
    s.decrypt("A 2 again", &a2, &alice, "duplicate");
    s.decrypt("A 4: iteration 3 skipped", &a4, &alice, "ok");
    s.decrypt("A 3", &a3, &alice, "ok");
    s.receive("chain E at iteration 0: C is evicted, B's floor is kept", &e.distribution(0)?);
    s.receive("chain B again at iteration 0: its floor is 0, taken as given; D is evicted", &b.distribution(0)?);
    s.decrypt("B 0", &b.message(rng, 0)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_floors",
        "18.5, 18.6: a chain evicted past MAX_SENDER_CHAINS leaves a floor, its next iteration; a message below a \
         floor of its chain id is Duplicate though no chain is kept; a distribution of that chain id is taken from \
         the floor (the chain key stepped up to it) and the floor is spent.",
    )?);

    // More than MAX_SKIP below the floor: ignored; exactly MAX_SKIP: stepped.
    let a = Chain::new(rng, &group, &alice);
    let (b, c, d) = (Chain::new(rng, &group, &alice), Chain::new(rng, &group, &alice), Chain::new(rng, &group, &alice));
    let far = MAX_SKIP + 1;
    let mut s = Steps::new();
    s.receive("chain A at iteration 2001", &a.distribution(far)?);
    s.decrypt("A 2001", &a.message(rng, far)?, &alice, "ok");
    s.receive("chain B at iteration 0", &b.distribution(0)?);
    s.receive("chain C at iteration 0", &c.distribution(0)?);
    s.receive("chain D at iteration 0: A is evicted, its floor is 2002", &d.distribution(0)?);
    s.receive_unchanged("chain A at iteration 1: 2,001 below the floor, ignored", &a.distribution(1)?);
    s.decrypt("A 2001 again: still below the floor", &a.message(rng, far)?, &alice, "duplicate");
    s.receive("chain A at iteration 2: 2,000 below the floor, stepped up to it; B is evicted", &a.distribution(2)?);
    s.decrypt("A 2002", &a.message(rng, far + 1)?, &alice, "ok");
    cases.push(s.case(
        "decrypt_floor_too_far_below",
        "18.6: a distribution more than MAX_SKIP = 2,000 iterations below the floor of its chain id is ignored \
         (the floor stays); at most 2,000 below, its chain key is stepped up to the floor.",
    )?);

    // Generations: a floor forgotten raises the lowest generation taken in.
    let chains: Vec<Chain> = (1..=12).map(|g| Chain::of_generation(rng, &group, &alice, g)).collect();
    let first = chains.first().ok_or_else(|| err("chains", "none"))?;
    let (m0, m1) = (first.message(rng, 0)?, first.message(rng, 1)?);
    let mut s = Steps::new();
    s.receive("chain 1 (generation 1) at iteration 0", &first.distribution(0)?);
    s.decrypt("chain 1, message 0", &m0, &alice, "ok");
    for (k, chain) in chains.iter().enumerate().skip(1) {
        let note = match k + 1 {
            4 => "chain 4 (generation 4): chain 1 is evicted, its floor is 1".to_owned(),
            12 => "chain 12 (generation 12): 9 chains given up; the floor of chain 1 is forgotten, so the lowest \
                   generation taken in is 2"
                .to_owned(),
            n => format!("chain {n} (generation {n})"),
        };
        s.receive(&note, &chain.distribution(0)?);
    }
    s.receive_unchanged(
        "chain 1 again at iteration 0 (a delayed copy): generation 1, below 2, neither kept nor floored: ignored",
        &first.distribution(0)?,
    );
    s.decrypt("chain 1, message 0 again: no chain (not taken again)", &m0, &alice, "missing_chain");
    s.decrypt("chain 1, message 1: no chain", &m1, &alice, "missing_chain");
    let older = Chain::of_generation(rng, &group, &alice, 1);
    s.receive_unchanged("another chain of generation 1, never seen: ignored", &older.distribution(0)?);
    let legacy = Chain::new(rng, &group, &alice);
    s.receive_unchanged("a chain without a generation (0): ignored", &legacy.distribution(0)?);
    let at_minimum = Chain::of_generation(rng, &group, &alice, 2);
    s.receive("a chain of generation 2, the lowest taken in, never seen: taken in", &at_minimum.distribution(0)?);
    let floored = chains.get(4).ok_or_else(|| err("chains", "too few"))?;
    s.receive(
        "chain 5 again at iteration 0: its floor is kept (generation 5), taken from the floor, 0",
        &floored.distribution(0)?,
    );
    s.receive(
        "the chain of generation 2 again at iteration 5: kept, so taken (moved forward) though 2 is below the \
         minimum, 3",
        &at_minimum.distribution(5)?,
    );
    cases.push(s.case(
        "decrypt_generations",
        "18.6: a distribution carries its chain's generation; a floor forgotten raises the lowest generation \
         taken in past its own (min_generation); a distribution of a chain neither kept nor floored below it is \
         ignored, so a chain given up past MAX_CHAIN_FLOORS never opens again; one kept or floored is ruled by \
         its chain or floor.",
    )?);
    Ok(cases)
}
