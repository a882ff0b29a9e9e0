//! Wire encodings of every message kind, and the decoders' errors.

use chacha20::ChaCha20Rng;
use samizdat::{
    address::Address,
    hazmat::{self, FixedBytes},
    keys::{IdentityKeyPair, KeyError},
    prekeys::{BundleError, PreKeyBundle},
    session::SessionRecord,
    wire::{Message, RatchetMessage},
};
use samizdat_proto::{Message as _, wire as pb};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    bundles::{PqOffer, PreKeyRandomness, device},
    format::{Meta, VectorSet},
    util::{R, VErr, array, bytes, decode_error, err, h, non_minimal_varint, random, random_vec, varint},
};

/// `wire.json`.
pub(crate) struct Wire;

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum WireCase {
    /// Encode a ratchet message from its parts.
    EncodeRatchetMessage {
        name: String,
        header: String,
        body: String,
        #[serde(default)]
        encoded: String,
    },
    /// Decode bytes with one of the decoders.
    Decode {
        name: String,
        decoder: Decoder,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_repeat: Option<Repeat>,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        reencoded: Option<String>,
    },
}

/// Which decoder a case uses.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decoder {
    /// Expects a ratchet message (`RatchetMessage::from_bytes`, PROTOCOL.md 12.4).
    RatchetMessage,
    /// Any message of the one-to-one protocol (`Message::from_bytes`).
    Message,
    /// A bundle (`PreKeyBundle::from_bytes`): parses and verifies.
    Bundle,
}

/// An input too long to list: `prefix`, then `byte` repeated up to `len` bytes in all.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Repeat {
    prefix: String,
    byte: String,
    len: usize,
}

impl Repeat {
    /// `prefix`, then `byte` until the input is `len` bytes long.
    pub(crate) fn new(prefix: &[u8], byte: u8, len: usize) -> Self {
        Self { prefix: h(prefix), byte: h([byte]), len }
    }

    /// The bytes it stands for.
    pub(crate) fn expand(&self) -> R<Vec<u8>> {
        let mut data = bytes("input_repeat.prefix", &self.prefix)?;
        let [byte] = array::<1>("input_repeat.byte", &self.byte)?;
        data.resize(self.len.max(data.len()), byte);
        Ok(data)
    }
}

impl VectorSet for Wire {
    type Case = WireCase;
    const META: Meta = Meta {
        file: "wire.json",
        section: "12 Wire format (12.1 framing, 12.3 encoding, 12.4 decoding); 8.8 The prekey message; 7.2 Parsing and verification (bundles); 15.4 DecodeError; 15.5 KeyError; 15.6 BundleError",
        description: "`encode_ratchet_message`: the canonical encoding 0x01 || protobuf Envelope { ratchet = \
            RatchetMessage { header, body } }. `decode`: the bytes `input` (or `input_repeat`: `prefix`, then `byte` \
            repeated up to `len` bytes in all) given to one decoder: `ratchet_message` (expects a ratchet message), \
            `message` (a prekey or a ratchet message) or `bundle` (parses and verifies a bundle). `result` is the \
            decoded message (`kind` ratchet, prekey or bundle, with its fields) or the error (`error` and its \
            fields, named as the variants of DecodeError and BundleError in snake case); `reencoded` is the \
            canonical encoding of what was decoded (it differs from the input when the input was not canonical).",
        seed: 13,
        inputs: &["operation", "name", "header", "body", "decoder", "input", "input_repeat"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<WireCase>, VErr> {
        let header = random::<81>(rng);
        let body = random_vec(rng, 80);
        let smallest = hazmat::ratchet_message(header, body.clone()).to_bytes();
        let mut cases = vec![
            WireCase::EncodeRatchetMessage {
                name: "smallest_ratchet_message".to_owned(),
                header: h(header),
                body: h(&body),
                encoded: String::new(),
            },
            WireCase::EncodeRatchetMessage {
                name: "ratchet_message_bucket_128".to_owned(),
                header: h(random::<81>(rng)),
                body: h(random_vec(rng, 144)),
                encoded: String::new(),
            },
        ];
        let decode = decode_case;
        let repeat = |name: &str, decoder: Decoder, len: usize| WireCase::Decode {
            name: name.to_owned(),
            decoder,
            input: None,
            input_repeat: Some(Repeat { prefix: "01".to_owned(), byte: "00".to_owned(), len }),
            result: Value::Null,
            reencoded: None,
        };
        let framed = |envelope: pb::Envelope| {
            let mut out = vec![0x01];
            out.extend_from_slice(&envelope.encode_to_vec());
            out
        };
        let ratchet = |header: Vec<u8>, body: Vec<u8>| {
            framed(pb::Envelope {
                body: Some(pb::envelope::Body::Ratchet(pb::RatchetMessage { header, body: body.into() })),
            })
        };
        // Body before header, and an unknown field 15 (varint 1) inside the ratchet message.
        let mut inner = vec![0x12, 0x50];
        inner.extend_from_slice(&body);
        inner.extend_from_slice(&[0x0a, 0x51]);
        inner.extend_from_slice(&header);
        inner.extend_from_slice(&[0x78, 0x01]);
        let mut reordered = vec![0x01, 0x12, 0xa7, 0x01];
        reordered.extend_from_slice(&inner);
        let mut unknown_envelope_field = smallest.clone();
        unknown_envelope_field.extend_from_slice(&[0x4a, 0x00]);
        let with_first = |mut bytes: Vec<u8>, value: u8| {
            if let Some(b) = bytes.first_mut() {
                *b = value;
            }
            bytes
        };
        use Decoder::{Bundle, Message as Any, RatchetMessage as Ratchet};
        cases.extend([
            decode("ratchet_smallest", Ratchet, &smallest),
            decode("ratchet_non_canonical_field_order_and_unknown_field", Ratchet, &reordered),
            decode("ratchet_unknown_envelope_field", Ratchet, &unknown_envelope_field),
            decode("ratchet_via_message_decoder", Any, &smallest),
            decode("empty", Ratchet, b""),
            decode("version_0", Ratchet, &with_first(smallest.clone(), 0x00)),
            decode("version_2", Ratchet, &with_first(smallest.clone(), 0x02)),
            decode("version_255", Any, &with_first(smallest.clone(), 0xff)),
            decode("no_body", Ratchet, &[0x01]),
            decode("unknown_kind_field_9", Ratchet, &[0x01, 0x4a, 0x00]),
            decode("unknown_kind_field_3_sender_key", Any, &[0x01, 0x1a, 0x00]),
            decode("bad_protobuf", Ratchet, &[0x01, 0x12, 0x05, 0x0a]),
            decode("header_80_bytes", Ratchet, &ratchet(vec![0; 80], vec![0; 80])),
            decode("body_79_bytes", Ratchet, &ratchet(vec![0; 81], vec![0; 79])),
            decode("missing_header", Ratchet, &ratchet(Vec::new(), vec![0; 80])),
            repeat("too_large", Ratchet, 262_145),
            repeat("at_size_limit_then_bad_protobuf", Ratchet, 262_144),
        ]);

        // A real prekey message and bundle, and altered copies.
        let (prekey_message, bundle) = handshake(rng)?;
        let envelope = pb::Envelope::decode(prekey_message.get(1..).unwrap_or_default())
            .map_err(|e| err("input", e.to_string()))?;
        let Some(pb::envelope::Body::Prekey(prekey)) = envelope.body else {
            return Err(err("input", "not a prekey message"));
        };
        let prekey_with = |change: &dyn Fn(&mut pb::PreKeyMessage)| {
            let mut p = prekey.clone();
            change(&mut p);
            framed(pb::Envelope { body: Some(pb::envelope::Body::Prekey(p)) })
        };
        let bundle_pb =
            pb::PreKeyBundle::decode(bundle.get(1..).unwrap_or_default()).map_err(|e| err("input", e.to_string()))?;
        let bundle_with = |change: &dyn Fn(&mut pb::PreKeyBundle)| {
            let mut b = bundle_pb.clone();
            change(&mut b);
            let mut out = vec![0x01];
            out.extend_from_slice(&b.encode_to_vec());
            out
        };
        cases.extend([
            decode("prekey_message", Any, &prekey_message),
            decode("prekey_message_to_ratchet_decoder", Ratchet, &prekey_message),
            decode("prekey_small_order_base_key", Any, &prekey_with(&|p| p.base_key = vec![0; 32])),
            decode("prekey_invalid_identity_key", Any, &prekey_with(&|p| p.identity_key = vec![0; 32])),
            decode("prekey_short_ciphertext", Any, &prekey_with(&|p| p.pq_ciphertext.truncate(1567))),
            decode("prekey_missing_message", Any, &prekey_with(&|p| p.message = None)),
            decode("bundle", Bundle, &bundle),
            decode("bundle_version_2", Bundle, &with_first(bundle.clone(), 0x02)),
            decode(
                "bundle_altered_signed_prekey_signature",
                Bundle,
                &bundle_with(&|b| {
                    if let Some(s) = b.signed_prekey.as_mut().and_then(|k| k.signature.first_mut()) {
                        *s ^= 0x01;
                    }
                }),
            ),
            decode(
                "bundle_one_time_pq_key_claimed_last_resort",
                Bundle,
                &bundle_with(&|b| {
                    if let Some(pq) = b.pq_prekey.as_mut() {
                        pq.last_resort = !pq.last_resort;
                    }
                }),
            ),
            decode(
                "bundle_small_order_signed_prekey",
                Bundle,
                &bundle_with(&|b| {
                    if let Some(k) = b.signed_prekey.as_mut() {
                        k.public_key = vec![0; 32];
                    }
                }),
            ),
            decode("bundle_missing_pq_prekey", Bundle, &bundle_with(&|b| b.pq_prekey = None)),
            decode("bundle_relabelled_user_id", Bundle, &bundle_with(&|b| b.user_id = "mallory".to_owned())),
            decode("bundle_relabelled_device_id", Bundle, &bundle_with(&|b| b.device_id ^= 1)),
            decode("bundle_one_time_prekey_removed", Bundle, &bundle_with(&|b| b.one_time_prekey = None)),
            decode("bundle_missing_signature", Bundle, &bundle_with(&|b| b.signature.clear())),
            decode("bundle_unknown_field", Bundle, &{
                let mut extended = bundle.clone();
                extended.extend_from_slice(&[0x48, 0x01]); // field 9, varint 1: not in the schema
                extended
            }),
            repeat("bundle_too_large", Bundle, samizdat::prekeys::MAX_BUNDLE_LEN + 1),
        ]);
        cases.extend(canonical_cases(&header, &body, &prekey, &bundle_pb)?);
        Ok(cases)
    }

    fn compute(case: &WireCase) -> R<WireCase> {
        match case {
            WireCase::EncodeRatchetMessage { name, header, body, .. } => Ok(WireCase::EncodeRatchetMessage {
                name: name.clone(),
                header: header.clone(),
                body: body.clone(),
                encoded: h(hazmat::ratchet_message(array::<81>("header", header)?, bytes("body", body)?).to_bytes()),
            }),
            WireCase::Decode { name, decoder, input, input_repeat, .. } => {
                let data = match (input, input_repeat) {
                    (Some(text), None) => bytes("input", text)?,
                    (None, Some(r)) => r.expand()?,
                    _ => return Err(err("input", "give exactly one of input and input_repeat")),
                };
                let (result, reencoded) = decode_with(*decoder, &data)?;
                Ok(WireCase::Decode {
                    name: name.clone(),
                    decoder: *decoder,
                    input: input.clone(),
                    input_repeat: input_repeat.clone(),
                    result,
                    reencoded: reencoded.map(h),
                })
            }
        }
    }
}

/// A `decode` case of `input`, outputs left to compute.
fn decode_case(name: &str, decoder: Decoder, input: &[u8]) -> WireCase {
    WireCase::Decode {
        name: name.to_owned(),
        decoder,
        input: Some(h(input)),
        input_repeat: None,
        result: Value::Null,
        reencoded: None,
    }
}

fn ratchet_json(m: &RatchetMessage) -> Value {
    json!({"kind": "ratchet", "header": h(m.header()), "body": h(m.body())})
}

pub(crate) fn decode_with(decoder: Decoder, data: &[u8]) -> R<(Value, Option<Vec<u8>>)> {
    Ok(match decoder {
        Decoder::RatchetMessage => match RatchetMessage::from_bytes(data) {
            Ok(m) => (ratchet_json(&m), Some(m.to_bytes())),
            Err(e) => (decode_error(&e), None),
        },
        Decoder::Message => match Message::from_bytes(data) {
            Ok(Message::Ratchet(m)) => (ratchet_json(&m), Some(m.to_bytes())),
            Ok(message @ Message::PreKey(_)) => {
                let Message::PreKey(p) = &message else { return Err(err("result", "unreachable")) };
                // The ciphertext has no getter: read it from the protobuf.
                let ciphertext = match pb::Envelope::decode(data.get(1..).unwrap_or_default()).map(|e| e.body) {
                    Ok(Some(pb::envelope::Body::Prekey(pb))) => pb.pq_ciphertext,
                    _ => Vec::new(),
                };
                let header = p.header();
                let (signed, one_time, pq) = header.prekey_ids();
                let value = json!({
                    "kind": "prekey",
                    "identity_key": h(header.identity_key().as_bytes()),
                    "base_key": h(header.base_key().as_bytes()),
                    "signed_prekey_id": signed,
                    "one_time_prekey_id": one_time,
                    "pq_prekey_id": pq,
                    "pq_ciphertext": h(ciphertext),
                    "header": h(p.message().header()),
                    "body": h(p.message().body()),
                });
                (value, Some(message.to_bytes()))
            }
            Err(e) => (decode_error(&e), None),
        },
        Decoder::Bundle => match PreKeyBundle::from_bytes(data) {
            Ok(b) => {
                let (pq_id, pq_kind) = b.pq_prekey();
                let value = json!({
                    "kind": "bundle",
                    "identity_key": h(b.identity_key().as_bytes()),
                    "user_id": b.address().user_id(),
                    "device_id": b.address().device_id(),
                    "one_time_prekey_id": b.one_time_prekey_id(),
                    "pq_prekey_id": pq_id,
                    "pq_prekey_last_resort": pq_kind == samizdat::prekeys::PqPreKeyKind::LastResort,
                });
                (value, Some(b.to_bytes()))
            }
            Err(e) => (bundle_error(&e), None),
        },
    })
}

pub(crate) fn key_error(e: &KeyError) -> Value {
    match e {
        KeyError::InvalidLength { expected, actual } => {
            json!({"error": "invalid_length", "expected": expected, "actual": actual})
        }
        KeyError::InvalidEncoding => json!({"error": "invalid_encoding"}),
        KeyError::SmallOrder => json!({"error": "small_order"}),
        other => json!({"error": format!("{other:?}")}),
    }
}

pub(crate) fn bundle_error(e: &BundleError) -> Value {
    match e {
        BundleError::Decode(d) => json!({"error": "decode", "cause": decode_error(d)}),
        BundleError::IdentityKey(k) => json!({"error": "identity_key", "cause": key_error(k)}),
        BundleError::SignedPreKey(k) => json!({"error": "signed_prekey", "cause": key_error(k)}),
        BundleError::SignedPreKeySignature => json!({"error": "signed_prekey_signature"}),
        BundleError::OneTimePreKey(k) => json!({"error": "one_time_prekey", "cause": key_error(k)}),
        BundleError::PqPreKey(k) => json!({"error": "pq_prekey", "cause": key_error(k)}),
        BundleError::PqPreKeySignature => json!({"error": "pq_prekey_signature"}),
        BundleError::Signature => json!({"error": "signature"}),
        other => json!({"error": format!("{other:?}")}),
    }
}

/// A length-delimited field: key (wire type 2), length, payload.
fn field(number: u64, payload: &[u8]) -> Vec<u8> {
    [varint(number << 3 | 2), varint(payload.len() as u64), payload.to_vec()].concat()
}

/// A varint field: key (wire type 0), then the value's varint.
fn varint_field(number: u64, value: u64) -> Vec<u8> {
    [varint(number << 3), varint(value)].concat()
}

/// Other encodings of well-formed values, and malformed encodings: each is
/// accepted by some plausible lenient reading of proto3, and each must be
/// refused (`protobuf`), except the few canonical ones listed first, which
/// must be accepted as they are (12.3, 12.4).
fn canonical_cases(
    header: &[u8; 81],
    body: &[u8],
    prekey: &pb::PreKeyMessage,
    bundle: &pb::PreKeyBundle,
) -> R<Vec<WireCase>> {
    let decode = decode_case;
    let message = |envelope: &[u8]| [&[0x01][..], envelope].concat();
    let ratchet_inner = [field(1, header), field(2, body)].concat();
    let ratchet = |inner: &[u8]| message(&field(2, inner));
    let canonical = ratchet(&ratchet_inner);
    let with_key_prefix = |bytes: &[u8], old: &[u8], new: &[u8]| -> R<Vec<u8>> {
        let rest = bytes.strip_prefix(old).ok_or_else(|| err("input", "unexpected prefix"))?;
        Ok([new, rest].concat())
    };

    // A prekey message rebuilt field by field: `before` are fields 1 and 2,
    // `after` fields 4 to 7, so that field 3 can be written by hand.
    let prekey_bytes = |p: &pb::PreKeyMessage| message(&field(1, &p.encode_to_vec()));
    let split_prekey = |signed_prekey_id: &[u8]| {
        let before = pb::PreKeyMessage {
            identity_key: prekey.identity_key.clone(),
            base_key: prekey.base_key.clone(),
            ..Default::default()
        };
        let after =
            pb::PreKeyMessage { signed_prekey_id: 0, identity_key: Vec::new(), base_key: Vec::new(), ..prekey.clone() };
        message(&field(1, &[before.encode_to_vec(), signed_prekey_id.to_vec(), after.encode_to_vec()].concat()))
    };
    let prekey_with = |change: &dyn Fn(&mut pb::PreKeyMessage)| {
        let mut p = prekey.clone();
        change(&mut p);
        prekey_bytes(&p)
    };

    // A bundle rebuilt with its field 3 (device id) or 6 (ML-KEM prekey) by hand.
    let bundle_bytes = |device_id: &[u8], pq: &[u8]| {
        let head = pb::PreKeyBundle {
            identity_key: bundle.identity_key.clone(),
            user_id: bundle.user_id.clone(),
            ..Default::default()
        };
        let middle = pb::PreKeyBundle {
            signed_prekey: bundle.signed_prekey.clone(),
            one_time_prekey: bundle.one_time_prekey.clone(),
            ..Default::default()
        };
        [&[0x01][..], &head.encode_to_vec(), device_id, &middle.encode_to_vec(), pq, &field(7, &bundle.signature)]
            .concat()
    };
    let device_id = varint_field(3, u64::from(bundle.device_id));
    let pq = bundle.pq_prekey.clone().ok_or_else(|| err("input", "bundle without an ML-KEM prekey"))?;
    let pq_field = |bytes: &[u8]| field(6, bytes);
    let pq_canonical = pq.encode_to_vec();
    let pq_bool_2 = [pb::PqPreKey { last_resort: false, ..pq.clone() }.encode_to_vec(), vec![0x20, 0x02]].concat();
    let signed = bundle.signed_prekey.clone().ok_or_else(|| err("input", "bundle without a signed prekey"))?;
    let bundle_with = |change: &dyn Fn(&mut pb::PreKeyBundle)| {
        let mut b = bundle.clone();
        change(&mut b);
        [&[0x01][..], &b.encode_to_vec()].concat()
    };

    use Decoder::{Bundle, Message as Any, RatchetMessage as Ratchet};
    Ok(vec![
        // Canonical, built here field by field: accepted.
        decode("canonical_ratchet_by_hand", Ratchet, &canonical),
        decode("canonical_prekey_one_time_prekey_id_0_present", Any, &prekey_with(&|p| p.one_time_prekey_id = Some(0))),
        decode("canonical_prekey_one_time_prekey_id_absent", Any, &prekey_with(&|p| p.one_time_prekey_id = None)),
        decode("canonical_bundle_by_hand", Bundle, &bundle_bytes(&device_id, &pq_field(&pq_canonical))),
        // Another encoding of the same ratchet message.
        decode("ratchet_fields_reordered", Ratchet, &ratchet(&[field(2, body), field(1, header)].concat())),
        decode("ratchet_header_given_twice", Ratchet, &ratchet(&[field(1, &[0; 81]), ratchet_inner.clone()].concat())),
        decode(
            "ratchet_body_given_twice",
            Ratchet,
            &ratchet(&[field(1, header), field(2, &[0; 80]), field(2, body)].concat()),
        ),
        decode("ratchet_unknown_field_15", Ratchet, &ratchet(&[ratchet_inner.clone(), vec![0x78, 0x01]].concat())),
        decode("ratchet_non_minimal_key", Ratchet, &ratchet(&with_key_prefix(&ratchet_inner, &[0x0a], &[0x8a, 0x00])?)),
        decode(
            "ratchet_non_minimal_header_length",
            Ratchet,
            &ratchet(&with_key_prefix(&ratchet_inner, &[0x0a, 0x51], &[0x0a, 0xd1, 0x00])?),
        ),
        decode(
            "envelope_non_minimal_length",
            Ratchet,
            &message(&[vec![0x12], non_minimal_varint(ratchet_inner.len() as u64), ratchet_inner.clone()].concat()),
        ),
        decode(
            "envelope_ratchet_given_twice",
            Ratchet,
            &message(&[field(2, &ratchet_inner), field(2, &ratchet_inner)].concat()),
        ),
        decode(
            "envelope_prekey_then_ratchet",
            Ratchet,
            &message(&[field(1, &prekey.encode_to_vec()), field(2, &ratchet_inner)].concat()),
        ),
        decode("ratchet_trailing_zero_bytes", Ratchet, &[canonical.clone(), vec![0x00, 0x00]].concat()),
        // Malformed: a known field with another wire type, field number 0, a
        // group, a varint of 11 bytes.
        decode("ratchet_header_as_varint", Ratchet, &ratchet(&[ratchet_inner.clone(), vec![0x08, 0x00]].concat())),
        decode("ratchet_body_as_fixed32", Ratchet, &ratchet(&[ratchet_inner.clone(), vec![0x15, 0, 0, 0, 0]].concat())),
        decode("ratchet_field_number_0", Ratchet, &ratchet(&[ratchet_inner.clone(), vec![0x02, 0x00]].concat())),
        decode("ratchet_group_field_3", Ratchet, &ratchet(&[ratchet_inner.clone(), vec![0x1b, 0x1c]].concat())),
        decode(
            "ratchet_varint_of_11_bytes",
            Ratchet,
            &ratchet(&[ratchet_inner.clone(), vec![0x18], vec![0xff; 10], vec![0x01]].concat()),
        ),
        // Unknown kinds: only one well-formed length-delimited field of an
        // unknown number is `unknown_kind`; its content is not examined.
        decode("unknown_kind_field_4_with_content", Any, &[0x01, 0x22, 0x03, 0xde, 0xad, 0xbe]),
        decode("unknown_kind_field_536870911", Any, &[0x01, 0xfa, 0xff, 0xff, 0xff, 0x0f, 0x00]),
        decode("unknown_kind_field_9_as_varint", Any, &[0x01, 0x48, 0x00]),
        decode("unknown_kind_field_9_non_minimal_length", Any, &[0x01, 0x4a, 0x80, 0x00]),
        decode("unknown_kind_field_9_twice", Any, &[0x01, 0x4a, 0x00, 0x4a, 0x00]),
        decode("unknown_kind_then_ratchet", Ratchet, &message(&[vec![0x4a, 0x00], field(2, &ratchet_inner)].concat())),
        decode("unknown_kind_length_past_end", Any, &[0x01, 0x4a, 0x05, 0x00]),
        // Prekey messages: default values, optional fields, ranges.
        decode("prekey_signed_prekey_id_0_given", Any, &split_prekey(&[0x18, 0x00])),
        decode(
            "prekey_signed_prekey_id_plus_2_pow_32",
            Any,
            &split_prekey(&varint_field(3, u64::from(prekey.signed_prekey_id) + (1 << 32))),
        ),
        decode(
            "prekey_signed_prekey_id_non_minimal",
            Any,
            &split_prekey(&[vec![0x18], non_minimal_varint(u64::from(prekey.signed_prekey_id))].concat()),
        ),
        decode("prekey_empty_ratchet_message", Any, &prekey_with(&|p| p.message = Some(pb::RatchetMessage::default()))),
        // Bundles: a value out of range that a lenient reading would
        // truncate (and then verify), a bool of 2, a repeated embedded message.
        decode(
            "bundle_device_id_plus_2_pow_32",
            Bundle,
            &bundle_bytes(&varint_field(3, u64::from(bundle.device_id) + (1 << 32)), &pq_field(&pq_canonical)),
        ),
        decode("bundle_last_resort_2", Bundle, &bundle_bytes(&device_id, &pq_field(&pq_bool_2))),
        // The remaining single-input errors of 7.2 and 8.8.
        decode("bundle_empty", Bundle, &[]),
        decode("bundle_bad_protobuf", Bundle, &[0x01, 0x0a, 0x05]),
        decode("bundle_user_id_empty", Bundle, &bundle_with(&|b| b.user_id.clear())),
        decode("bundle_user_id_257_bytes", Bundle, &bundle_with(&|b| b.user_id = "u".repeat(257))),
        // 256 bytes pass check 6 and fail only the signature (the id was relabelled).
        decode("bundle_user_id_256_bytes", Bundle, &bundle_with(&|b| b.user_id = "u".repeat(256))),
        decode("bundle_missing_signed_prekey", Bundle, &bundle_with(&|b| b.signed_prekey = None)),
        decode(
            "bundle_signed_prekey_signature_63_bytes",
            Bundle,
            &bundle_with(&|b| {
                if let Some(k) = b.signed_prekey.as_mut() {
                    k.signature.truncate(63);
                }
            }),
        ),
        decode(
            "bundle_pq_prekey_signature_65_bytes",
            Bundle,
            &bundle_with(&|b| {
                if let Some(k) = b.pq_prekey.as_mut() {
                    k.signature.push(0);
                }
            }),
        ),
        decode("prekey_base_key_31_bytes", Any, &prekey_with(&|p| p.base_key.truncate(31))),
        decode(
            "bundle_signed_prekey_given_twice",
            Bundle,
            &bundle_bytes(&device_id, &[field(4, &signed.encode_to_vec()), pq_field(&pq_canonical)].concat()),
        ),
    ])
}

/// A bundle and the first message of a session started from it.
fn handshake(rng: &mut ChaCha20Rng) -> R<(Vec<u8>, Vec<u8>)> {
    let bob_seed = random::<32>(rng);
    let address = Address::new("bob", 7).map_err(|e| err("input", e.to_string()))?;
    let bob = device("input", &bob_seed, &address, &PreKeyRandomness::draw(rng), true, PqOffer::OneTime)?;
    let bundle = bob.bundle.to_bytes();
    let alice = IdentityKeyPair::from_seed(&random::<32>(rng));
    let mut record = SessionRecord::new();
    let parsed = PreKeyBundle::from_bytes(&bundle).map_err(|e| err("input", e.to_string()))?;
    let mut fixed = FixedBytes::new(&random_vec(rng, 96));
    let alice_address = Address::new("alice", 1).map_err(|e| err("input", e.to_string()))?;
    record.initiate(&mut fixed, &alice, &alice_address, &parsed).map_err(|e| err("input", e.to_string()))?;
    let mut fixed = FixedBytes::new(&random_vec(rng, 24));
    let first = record.encrypt(&mut fixed, b"hello").map_err(|e| err("input", e.to_string()))?;
    Ok((first, bundle))
}
