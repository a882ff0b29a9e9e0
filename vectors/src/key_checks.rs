//! `key_checks.json`: negative vectors for the rules on received keys. It
//! covers strict Ed25519 verification (6.1), the identity-key check and its
//! two decoding relaxations (6.1), the small-order check of X25519 keys
//! (6.4), the ML-KEM modulus check (6.6), and the same checks reached through
//! the bundle (7.2) and prekey-message (8.8) decoders.
//!
//! Each case is built so that a plausible misreading of one rule gets it
//! wrong (`vectors/tests/misreadings_keys.rs` shows which). Three things must
//! agree before a case is written: what the construction says the result is,
//! what the library returns, and an independent model of the rule. For
//! signatures the model is 6.1's four checks, one by one: the decoding and
//! order of points on `curve_model` (our own field arithmetic, also the model
//! of the identity-key check), the equation on `curve25519-dalek` points. For X25519 keys it is 6.4's definition, `X25519(k0, u)`, on
//! `curve25519-dalek`'s ladder (the library compares with a table). For
//! ML-KEM keys it is our own `ByteDecode12`.

use chacha20::ChaCha20Rng;
use curve25519_dalek::{
    constants::EIGHT_TORSION,
    edwards::{CompressedEdwardsY, EdwardsPoint},
    montgomery::MontgomeryPoint,
    scalar::Scalar,
};
use samizdat::{
    DecodeError,
    address::Address,
    hazmat::{self, SignedKind},
    keys::{IdentityKey, KeyError, MlKemPublicKey, X25519PublicKey},
    prekeys::BundleError,
};
use samizdat_proto::{Message as _, wire as pb};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use crate::{
    bundles::{PqOffer, PreKeyRandomness, device},
    curve_model::{self, MLKEM_Q, Point},
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, decode_error, err, h, random, random_vec},
    wire::{Decoder, bundle_error, decode_with, key_error},
};

/// `key_checks.json`.
pub(crate) struct KeyChecks;

/// One case; `operation` says which check it runs.
#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum KeyCheckCase {
    /// Strict Ed25519 verification (6.1) of `signature` on `message` under `identity_key`.
    VerifySignature {
        name: String,
        pins: String,
        identity_key: String,
        message: String,
        signature: String,
        #[serde(default)]
        valid: bool,
    },
    /// "Checking a received identity key" (6.1).
    CheckIdentityKey {
        name: String,
        pins: String,
        key: String,
        #[serde(default)]
        result: Value,
    },
    /// The small-order check of a received X25519 public key (6.4).
    #[serde(rename = "check_x25519_public_key")]
    CheckX25519Key {
        name: String,
        pins: String,
        key: String,
        #[serde(default)]
        x25519_with_k0: String,
        #[serde(default)]
        result: Value,
    },
    /// The check of a received ML-KEM-1024 encapsulation key (6.6).
    #[serde(rename = "check_mlkem_encapsulation_key")]
    CheckMlKemKey {
        name: String,
        pins: String,
        key: String,
        #[serde(default)]
        result: Value,
    },
    /// A bundle, parsed and verified (7.2), with one key altered.
    DecodeBundle {
        name: String,
        pins: String,
        field: String,
        input: String,
        #[serde(default)]
        result: Value,
    },
    /// A message given to the decoder of any message (12.4, 8.8), a prekey
    /// message with one key altered.
    DecodePrekeyMessage {
        name: String,
        pins: String,
        field: String,
        input: String,
        #[serde(default)]
        result: Value,
    },
}

impl KeyCheckCase {
    fn name(&self) -> &str {
        match self {
            Self::VerifySignature { name, .. }
            | Self::CheckIdentityKey { name, .. }
            | Self::CheckX25519Key { name, .. }
            | Self::CheckMlKemKey { name, .. }
            | Self::DecodeBundle { name, .. }
            | Self::DecodePrekeyMessage { name, .. } => name,
        }
    }

    fn result(&self) -> Option<&Value> {
        match self {
            Self::VerifySignature { .. } => None,
            Self::CheckIdentityKey { result, .. }
            | Self::CheckX25519Key { result, .. }
            | Self::CheckMlKemKey { result, .. }
            | Self::DecodeBundle { result, .. }
            | Self::DecodePrekeyMessage { result, .. } => Some(result),
        }
    }
}

impl VectorSet for KeyChecks {
    type Case = KeyCheckCase;
    const META: Meta = Meta {
        file: "key_checks.json",
        section: "6.1 The identity key (strict verification; checking a received identity key); 6.4 X25519 public keys of small order; 6.6 ML-KEM-1024 (checking a received encapsulation key); 7.2 Parsing and verification (bundles); 8.8 The prekey message (decoding); 15.4 DecodeError; 15.5 KeyError; 15.6 BundleError",
        description: "Keys and signatures that a plausible misreading of the key rules gets wrong; `pins` says which \
            rule each case pins and how it would be misread. `verify_signature`: `valid` is strict Ed25519 \
            verification (6.1: S < L without reduction; R decodes and is not of small order; the key is a valid \
            identity key; the encoding of [S]B - [k]A, k = SHA-512(R || identity_key || message) mod L, equals the \
            32 bytes of R). `check_identity_key`: the identity-key check of 6.1 (length; decoding with y taken \
            modulo p and x = 0 accepted with either sign bit; not of small order; X25519 form not of small order); \
            `result` is the error (a KeyError) or, when accepted, `identity_key` (the 32 bytes as kept: exactly \
            as received) and `x25519_form` (its Montgomery u-coordinate, 6.2). `check_x25519_public_key`: 6.4; \
            `x25519_with_k0` is X25519(k0, key) with k0 = 09 repeated 32 times (32 zero bytes exactly for the keys \
            of small order); `result` is {\"accepted\": true} or {\"error\": \"small_order\"}. \
            `check_mlkem_encapsulation_key`: 6.6 (length 1,568; every 12-bit coefficient of the first 1,536 bytes \
            below q = 3329; the last 32 bytes not checked); `result` is {\"accepted\": true} or the KeyError. \
            `decode_bundle` and `decode_prekey_message`: `input` is an encoded bundle (PreKeyBundle::from_bytes, \
            7.2) or message (Message::from_bytes, 8.8) in which the key named by `field` was replaced (and, where \
            the key check passes or comes after a signature, every signature made again, so that the key check is \
            what decides); `result` is as in wire.json: the decoded bundle or message, or the error.",
        seed: 15,
        inputs: &["operation", "name", "pins", "identity_key", "message", "signature", "key", "field", "input"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<KeyCheckCase>, VErr> {
        let signer = Signer::new(random::<32>(rng))?;
        let mut cases = Cases::default();
        signature_cases(&mut cases, &signer, rng)?;
        identity_key_cases(&mut cases, &signer)?;
        x25519_cases(&mut cases, rng)?;
        mlkem_cases(&mut cases, rng)?;
        bundle_cases(&mut cases, &signer, rng)?;
        prekey_message_cases(&mut cases, &signer, rng)?;
        // What each construction says must be what the library (and, inside
        // `compute`, the independent model) gives.
        for (case, expect) in &cases.0 {
            expect.check(case.name(), &Self::compute(case)?)?;
        }
        let mut names: Vec<&str> = cases.0.iter().map(|(c, _)| c.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(err("name", format!("{pair:?}: names must be unique")));
        }
        Ok(cases.0.into_iter().map(|(case, _)| case).collect())
    }

    fn compute(case: &KeyCheckCase) -> R<KeyCheckCase> {
        Ok(match case {
            KeyCheckCase::VerifySignature { name, pins, identity_key, message, signature, .. } => {
                let key = array::<32>("identity_key", identity_key)?;
                let m = bytes("message", message)?;
                let sig = array::<64>("signature", signature)?;
                let valid = hazmat::verify(&key, &m, &sig);
                if valid != model_verify(&key, &m, &sig) {
                    return Err(err("valid", format!("the library says {valid}, the model of 6.1 says {}", !valid)));
                }
                KeyCheckCase::VerifySignature {
                    name: name.clone(),
                    pins: pins.clone(),
                    identity_key: identity_key.clone(),
                    message: message.clone(),
                    signature: signature.clone(),
                    valid,
                }
            }
            KeyCheckCase::CheckIdentityKey { name, pins, key, .. } => {
                let data = bytes("key", key)?;
                let result = match IdentityKey::from_slice(&data) {
                    Ok(k) => {
                        let point = model_identity_key(&data)
                            .map_err(|e| err("result", format!("the library accepts, the model says {e:?}")))?;
                        agree("result.identity_key", k.as_bytes(), &data)?;
                        agree("result.x25519_form", k.to_x25519().as_bytes(), &point.montgomery_u())?;
                        json!({"identity_key": h(k.as_bytes()), "x25519_form": h(k.to_x25519().as_bytes())})
                    }
                    Err(e) => {
                        same_outcome("result", Err(e), model_identity_key(&data).map(|_| ()))?;
                        key_error(&e)
                    }
                };
                KeyCheckCase::CheckIdentityKey { name: name.clone(), pins: pins.clone(), key: key.clone(), result }
            }
            KeyCheckCase::CheckX25519Key { name, pins, key, .. } => {
                let u = array::<32>("key", key)?;
                let small = X25519PublicKey::from_bytes(u).is_small_order();
                let with_k0 = hazmat::x25519(&K0, &u).unwrap_or([0; 32]);
                agree("x25519_with_k0", &with_k0, &MontgomeryPoint(u).mul_clamped(K0).to_bytes())?;
                if small != (with_k0 == [0; 32]) {
                    return Err(err("result", "is_small_order disagrees with X25519(k0, key) = 0 (6.4)"));
                }
                KeyCheckCase::CheckX25519Key {
                    name: name.clone(),
                    pins: pins.clone(),
                    key: key.clone(),
                    x25519_with_k0: h(with_k0),
                    result: if small { key_error(&KeyError::SmallOrder) } else { json!({"accepted": true}) },
                }
            }
            KeyCheckCase::CheckMlKemKey { name, pins, key, .. } => {
                let data = bytes("key", key)?;
                let library = MlKemPublicKey::from_slice(&data).map(|_| ());
                same_outcome("result", library, model_mlkem_key(&data))?;
                KeyCheckCase::CheckMlKemKey {
                    name: name.clone(),
                    pins: pins.clone(),
                    key: key.clone(),
                    result: library.map_or_else(|e| key_error(&e), |()| json!({"accepted": true})),
                }
            }
            KeyCheckCase::DecodeBundle { name, pins, field, input, .. } => {
                let data = bytes("input", input)?;
                let (result, _) = decode_with(Decoder::Bundle, &data)?;
                let message = pb::PreKeyBundle::decode(data.get(1..).unwrap_or_default())
                    .map_err(|e| err("input", format!("not a protobuf bundle: {e}")))?;
                let (key, wrap): (&[u8], fn(KeyError) -> BundleError) = match field.as_str() {
                    "identity_key" => (&message.identity_key, BundleError::IdentityKey),
                    "signed_prekey.public_key" => (
                        message.signed_prekey.as_ref().map(|k| k.public_key.as_slice()).unwrap_or_default(),
                        BundleError::SignedPreKey,
                    ),
                    "one_time_prekey.public_key" => (
                        message.one_time_prekey.as_ref().map(|k| k.public_key.as_slice()).unwrap_or_default(),
                        BundleError::OneTimePreKey,
                    ),
                    "pq_prekey.public_key" => (
                        message.pq_prekey.as_ref().map(|k| k.public_key.as_slice()).unwrap_or_default(),
                        BundleError::PqPreKey,
                    ),
                    other => return Err(err("field", format!("not a key of a bundle: {other:?}"))),
                };
                let failed = key_check(field, key)?;
                let wrapped = failed.map(|e| bundle_error(&wrap(e)));
                let variant = bundle_error(&wrap(KeyError::SmallOrder)).get("error").cloned();
                consistent(&result, wrapped.as_ref(), |r| r.get("error") == variant.as_ref())?;
                KeyCheckCase::DecodeBundle {
                    name: name.clone(),
                    pins: pins.clone(),
                    field: field.clone(),
                    input: input.clone(),
                    result,
                }
            }
            KeyCheckCase::DecodePrekeyMessage { name, pins, field, input, .. } => {
                let data = bytes("input", input)?;
                let (result, _) = decode_with(Decoder::Message, &data)?;
                let envelope = pb::Envelope::decode(data.get(1..).unwrap_or_default())
                    .map_err(|e| err("input", format!("not a protobuf envelope: {e}")))?;
                let Some(pb::envelope::Body::Prekey(message)) = envelope.body else {
                    return Err(err("input", "not a prekey message"));
                };
                // 8.8: P1 reports any failure of the identity key as one
                // value error; P2 and P3 keep the length apart.
                let (key, wrap): (&[u8], fn(KeyError) -> DecodeError) = match field.as_str() {
                    "identity_key" => (&message.identity_key, |_| DecodeError::InvalidValue("prekey.identity_key")),
                    "base_key" => (&message.base_key, |e| match e {
                        KeyError::InvalidLength { expected, actual } => {
                            DecodeError::InvalidLength { field: "prekey.base_key", expected, actual }
                        }
                        _ => DecodeError::InvalidValue("prekey.base_key"),
                    }),
                    other => return Err(err("field", format!("not a key of a prekey message: {other:?}"))),
                };
                let failed = key_check(field, key)?;
                let wrapped = failed.map(|e| decode_error(&wrap(e)));
                let named = json!(format!("prekey.{field}"));
                consistent(&result, wrapped.as_ref(), |r| r.get("field") == Some(&named))?;
                KeyCheckCase::DecodePrekeyMessage {
                    name: name.clone(),
                    pins: pins.clone(),
                    field: field.clone(),
                    input: input.clone(),
                    result,
                }
            }
        })
    }
}

/// 6.4's `k0`: `0x09` repeated 32 times.
const K0: [u8; 32] = [9; 32];

/// The encoding of the identity point (0, 1).
const IDENTITY_POINT: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
};

/// The cases and what their construction says the result is.
#[derive(Default)]
struct Cases(Vec<(KeyCheckCase, Expect)>);

/// What a case's construction says the library must return.
enum Expect {
    Valid(bool),
    Accepted,
    Rejected(Value),
}

impl Expect {
    fn check(&self, name: &str, computed: &KeyCheckCase) -> R<()> {
        let ok = match (self, computed) {
            (Self::Valid(v), KeyCheckCase::VerifySignature { valid, .. }) => v == valid,
            (Self::Accepted, case) => case.result().is_some_and(|r| r.get("error").is_none()),
            (Self::Rejected(e), case) => case.result() == Some(e),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            let got = match computed {
                KeyCheckCase::VerifySignature { valid, .. } => json!({"valid": valid}),
                case => case.result().cloned().unwrap_or(Value::Null),
            };
            let expected = match self {
                Self::Valid(v) => json!({"valid": v}),
                Self::Accepted => json!("accepted"),
                Self::Rejected(e) => e.clone(),
            };
            Err(err(name, format!("the construction says {expected}, the library gives {got}")))
        }
    }
}

impl Cases {
    fn verify(&mut self, name: &str, pins: &str, key: &[u8; 32], message: &[u8], sig: &[u8; 64], valid: bool) {
        self.0.push((
            KeyCheckCase::VerifySignature {
                name: name.to_owned(),
                pins: pins.to_owned(),
                identity_key: h(key),
                message: h(message),
                signature: h(sig),
                valid: false,
            },
            Expect::Valid(valid),
        ));
    }

    fn identity(&mut self, name: &str, pins: &str, key: &[u8], expect: Expect) {
        let case = KeyCheckCase::CheckIdentityKey {
            name: name.to_owned(),
            pins: pins.to_owned(),
            key: h(key),
            result: Value::Null,
        };
        self.0.push((case, expect));
    }

    fn x25519(&mut self, name: &str, pins: &str, key: &[u8; 32], expect: Expect) {
        let case = KeyCheckCase::CheckX25519Key {
            name: name.to_owned(),
            pins: pins.to_owned(),
            key: h(key),
            x25519_with_k0: String::new(),
            result: Value::Null,
        };
        self.0.push((case, expect));
    }

    fn mlkem(&mut self, name: &str, pins: &str, key: &[u8], expect: Expect) {
        let case = KeyCheckCase::CheckMlKemKey {
            name: name.to_owned(),
            pins: pins.to_owned(),
            key: h(key),
            result: Value::Null,
        };
        self.0.push((case, expect));
    }

    fn bundle(&mut self, name: &str, pins: &str, field: &str, input: &[u8], expect: Expect) {
        let case = KeyCheckCase::DecodeBundle {
            name: name.to_owned(),
            pins: pins.to_owned(),
            field: field.to_owned(),
            input: h(input),
            result: Value::Null,
        };
        self.0.push((case, expect));
    }

    fn prekey(&mut self, name: &str, pins: &str, field: &str, input: &[u8], expect: Expect) {
        let case = KeyCheckCase::DecodePrekeyMessage {
            name: name.to_owned(),
            pins: pins.to_owned(),
            field: field.to_owned(),
            input: h(input),
            result: Value::Null,
        };
        self.0.push((case, expect));
    }
}

fn small_order() -> Expect {
    Expect::Rejected(key_error(&KeyError::SmallOrder))
}

fn invalid_encoding() -> Expect {
    Expect::Rejected(key_error(&KeyError::InvalidEncoding))
}

fn invalid_length(expected: usize, actual: usize) -> Expect {
    Expect::Rejected(key_error(&KeyError::InvalidLength { expected, actual }))
}

fn bundle_rejects(e: &BundleError) -> Expect {
    Expect::Rejected(bundle_error(e))
}

fn message_rejects(e: &DecodeError) -> Expect {
    Expect::Rejected(decode_error(e))
}

/// Fails with `message` unless `condition` holds: a construction that does
/// not do what its case claims.
fn ensure(condition: bool, field: &str, message: &str) -> R<()> {
    if condition { Ok(()) } else { Err(err(field, format!("construction: {message}"))) }
}

/// An identity whose signing scalar we hold, to build signatures that the
/// library's signer never makes.
struct Signer {
    seed: [u8; 32],
    /// The signing scalar `s` of 6.1 (reduced modulo `L`, which changes no
    /// multiple of `B`).
    scalar: Scalar,
    point: EdwardsPoint,
    key: [u8; 32],
}

impl Signer {
    fn new(seed: [u8; 32]) -> R<Self> {
        let digest: [u8; 64] = Sha512::digest(seed).into();
        let mut s = *digest.first_chunk::<32>().unwrap_or(&[0; 32]);
        // RFC 8032, 5.1.5: prune.
        s[0] &= 248;
        s[31] &= 127;
        s[31] |= 64;
        let scalar = Scalar::from_bytes_mod_order(s);
        let point = EdwardsPoint::mul_base(&scalar);
        let key = point.compress().to_bytes();
        agree("identity_key", &key, &hazmat::identity_forms(&seed).0)?;
        Ok(Self { seed, scalar, point, key })
    }
}

/// `k = SHA-512(R || A || M)` modulo `L`.
fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[u8]) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(r);
    hash.update(key);
    hash.update(message);
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// `R || S` with `S = r + k·a`, `k` the challenge of `R`, `key`, `message`.
fn sign_with(r: &Scalar, big_r: &[u8; 32], a: &Scalar, key: &[u8; 32], message: &[u8]) -> [u8; 64] {
    let s = r + challenge(big_r, key, message) * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(big_r);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// Whether `k` is a multiple of 8 (then `[k]T` is the identity for every
/// `T` of small order).
fn multiple_of_8(k: &Scalar) -> bool {
    k.as_bytes().first().is_some_and(|b| b & 7 == 0)
}

/// A nonce from a label and a counter: any scalar will do, it only needs
/// to be fixed.
fn nonce(label: &[u8], counter: u32) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(b"samizdat-vectors key_checks nonce");
    hash.update(label);
    hash.update(counter.to_be_bytes());
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// A signature under `key = A + T` (A = [a]B, T of small order) that
/// satisfies the cofactorless equation: the nonce is redrawn until `k` is a
/// multiple of 8, so that `[S]B - [k](A + T) = [r]B = R`.
fn sign_mixed(a: &Scalar, key: &[u8; 32], message: &[u8]) -> R<[u8; 64]> {
    for counter in 0..1000 {
        let r = nonce(message, counter);
        let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
        if multiple_of_8(&challenge(&big_r, key, message)) {
            return Ok(sign_with(&r, &big_r, a, key, message));
        }
    }
    Err(err("signature", "no nonce in 1000 gives a multiple of 8"))
}

/// The first message `label || counter` whose challenge under `big_r` and
/// `key` is (or is not) a multiple of 8.
fn search_message(label: &str, big_r: &[u8; 32], key: &[u8; 32], want_multiple: bool) -> R<Vec<u8>> {
    (0..1000u32)
        .map(|i| format!("{label} {i}").into_bytes())
        .find(|m| multiple_of_8(&challenge(big_r, key, m)) == want_multiple)
        .ok_or_else(|| err("message", "no message in 1000 has the challenge wanted"))
}

/// Point `i` of `curve25519-dalek`'s table of the 8 points of small order
/// (`[i]T` for a point `T` of order 8).
fn torsion(i: usize) -> R<EdwardsPoint> {
    EIGHT_TORSION.get(i).copied().ok_or_else(|| err("key", "no such point of small order"))
}

/// The order of a point of small order: the least `2^j` with `[2^j]P = O`.
fn small_order_of(point: &EdwardsPoint) -> Option<u32> {
    (0..4).map(|j| 1u32 << j).find(|&n| (Scalar::from(n) * point).compress().to_bytes() == IDENTITY_POINT)
}

fn with_sign_bit(mut bytes: [u8; 32]) -> [u8; 32] {
    bytes[31] |= 0x80;
    bytes
}

/// 6.1's strict verification, check by check, on `curve25519-dalek` points
/// and `curve_model` decoding: not the library's code path.
fn model_verify(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    let r = *sig.first_chunk::<32>().unwrap_or(&[0; 32]);
    let s = *sig_s(sig);
    // 1. S < L, no reduction.
    if !curve_model::below_l(&s) {
        return false;
    }
    // 2. R decodes and is not of small order.
    if Point::decode(&r).is_none_or(|p| p.has_small_order()) {
        return false;
    }
    // 3. The key is a valid identity key (not of small order).
    if model_identity_key(key).is_err() {
        return false;
    }
    // 4. The cofactorless equation, compared as bytes.
    let (Some(a), Some(s)) =
        (CompressedEdwardsY(*key).decompress(), Option::<Scalar>::from(Scalar::from_canonical_bytes(s)))
    else {
        return false;
    };
    (EdwardsPoint::mul_base(&s) - challenge(&r, key, message) * a).compress().to_bytes() == r
}

/// 6.1's identity-key check on `curve_model`.
fn model_identity_key(key: &[u8]) -> Result<Point, KeyError> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| KeyError::InvalidLength { expected: 32, actual: key.len() })?;
    let point = Point::decode(&bytes).ok_or(KeyError::InvalidEncoding)?;
    if point.has_small_order() {
        return Err(KeyError::SmallOrder);
    }
    // Check 4, the X25519 form by 6.4's definition.
    if MontgomeryPoint(point.montgomery_u()).mul_clamped(K0).to_bytes() == [0; 32] {
        return Err(KeyError::SmallOrder);
    }
    Ok(point)
}

/// 6.4 on `curve25519-dalek`'s Montgomery ladder, for a key of any length.
fn model_x25519_key(key: &[u8]) -> Result<(), KeyError> {
    let u: [u8; 32] = key.try_into().map_err(|_| KeyError::InvalidLength { expected: 32, actual: key.len() })?;
    if MontgomeryPoint(u).mul_clamped(K0).to_bytes() == [0; 32] { Err(KeyError::SmallOrder) } else { Ok(()) }
}

/// 6.6 on `curve_model::byte_decode_12`.
fn model_mlkem_key(key: &[u8]) -> Result<(), KeyError> {
    if key.len() != MLKEM_KEY_LEN {
        return Err(KeyError::InvalidLength { expected: MLKEM_KEY_LEN, actual: key.len() });
    }
    let coefficients = curve_model::byte_decode_12(key.get(..MLKEM_T_LEN).unwrap_or_default());
    if coefficients.iter().all(|&c| c < MLKEM_Q) { Ok(()) } else { Err(KeyError::InvalidEncoding) }
}

/// The length of an encapsulation key, and of its part `t` (before `ρ`).
const MLKEM_KEY_LEN: usize = 1568;
const MLKEM_T_LEN: usize = 1536;

/// The library's own check of the key a decoder case alters (the public
/// call for that kind of key), compared with the model: the error, if any.
fn key_check(field: &str, key: &[u8]) -> R<Option<KeyError>> {
    let (library, model) = match field {
        "identity_key" => (IdentityKey::from_slice(key).map(|_| ()), model_identity_key(key).map(|_| ())),
        "signed_prekey.public_key" | "one_time_prekey.public_key" | "base_key" => {
            let library = <[u8; 32]>::try_from(key)
                .map_err(|_| KeyError::InvalidLength { expected: 32, actual: key.len() })
                .and_then(|u| {
                    if X25519PublicKey::from_bytes(u).is_small_order() { Err(KeyError::SmallOrder) } else { Ok(()) }
                });
            (library, model_x25519_key(key))
        }
        "pq_prekey.public_key" => (MlKemPublicKey::from_slice(key).map(|_| ()), model_mlkem_key(key)),
        other => return Err(err("field", format!("unknown key {other:?}"))),
    };
    same_outcome("result", library, model)?;
    Ok(library.err())
}

/// Fails unless the library and the model reach the same outcome.
fn same_outcome(field: &str, library: Result<(), KeyError>, model: Result<(), KeyError>) -> R<()> {
    if library == model {
        Ok(())
    } else {
        Err(err(field, format!("the library gives {library:?}, the model {model:?}")))
    }
}

/// A decoder's result agrees with the key check of the field it alters: the
/// wrapped error when the key fails, and no error about that field when it
/// passes (`names_field` tells whether a result is such an error).
fn consistent(result: &Value, wrapped: Option<&Value>, names_field: impl Fn(&Value) -> bool) -> R<()> {
    match wrapped {
        Some(expected) if result != expected => {
            Err(err("result", format!("the key check fails, so the decoder must return {expected}, not {result}")))
        }
        None if names_field(result) => {
            Err(err("result", format!("the key check passes, yet the decoder says {result}")))
        }
        _ => Ok(()),
    }
}

fn signature_cases(cases: &mut Cases, signer: &Signer, rng: &mut ChaCha20Rng) -> R<()> {
    let key = signer.key;
    let a = &signer.scalar;
    let message = b"samizdat/v1 key check".as_slice();
    let valid = hazmat::sign(&signer.seed, message);
    cases.verify(
        "valid_signature",
        "6.1 strict verification: a signature made by the library's signer verifies (the baseline for the \
         cases below).",
        &key,
        message,
        &valid,
        true,
    );

    // R' = [r]B + T: the cofactored equation holds, the cofactorless one does not.
    let t8 = torsion(1)?;
    ensure(small_order_of(&t8) == Some(8), "signature", "T does not have order 8")?;
    let r = Scalar::from_bytes_mod_order_wide(&random::<64>(rng));
    let big_r = (EdwardsPoint::mul_base(&r) + t8).compress().to_bytes();
    let sig = sign_with(&r, &big_r, a, &key, message);
    let k = challenge(&big_r, &key, message);
    let s = Scalar::from_bytes_mod_order(*sig_s(&sig));
    let r_point = CompressedEdwardsY(big_r).decompress().ok_or_else(|| err("signature", "R' does not decode"))?;
    let difference = EdwardsPoint::mul_base(&s) - k * signer.point - r_point;
    ensure(difference.compress() != CompressedEdwardsY(IDENTITY_POINT), "signature", "cofactorless equation holds")?;
    ensure(difference.mul_by_cofactor().compress().to_bytes() == IDENTITY_POINT, "signature", "cofactored fails")?;
    cases.verify(
        "r_with_small_order_component",
        "6.1 check 4: the cofactorless equation, the encoding of [S]B - [k]A equal to R byte for byte. R = [r]B + T \
         with T of order 8, S = r + k*a: [S]B - [k]A = [r]B = R - T. A cofactored verifier ([8][S]B = [8]R + \
         [8][k]A) accepts it; strict verification rejects it.",
        &key,
        message,
        &sig,
        false,
    );

    // S + L: the same signature with S not reduced.
    let s_plus_l = curve_model::plus_l(sig_s(&valid)).ok_or_else(|| err("signature", "S + L overflows"))?;
    ensure(s_plus_l[31] & 0xe0 == 0, "signature", "S + L has one of its top 3 bits set")?;
    ensure(
        Scalar::from_bytes_mod_order(s_plus_l) == Scalar::from_bytes_mod_order(*sig_s(&valid)),
        "signature",
        "S + L does not reduce to S",
    )?;
    let mut unreduced = valid;
    unreduced[32..].copy_from_slice(&s_plus_l);
    cases.verify(
        "s_plus_l",
        "6.1 check 1: S < L, with no reduction. This is valid_signature with S replaced by S + L (its top 3 bits \
         are clear). A verifier that reduces S modulo L, or checks only the top 3 bits, accepts it.",
        &key,
        message,
        &unreduced,
        false,
    );

    // R = identity, S = k*a: the equation holds, R has small order.
    let k = challenge(&IDENTITY_POINT, &key, message);
    let sig = sign_with(&Scalar::ZERO, &IDENTITY_POINT, a, &key, message);
    ensure(
        (EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(*sig_s(&sig))) - k * signer.point).compress().to_bytes()
            == IDENTITY_POINT,
        "signature",
        "the equation does not hold for R = identity",
    )?;
    cases.verify(
        "r_small_order",
        "6.1 check 2: R must not have small order. R is the identity point and S = k*a, so the cofactorless \
         equation holds ([S]B - [k]A is the identity, whose encoding is R); only the small-order check on R \
         rejects it.",
        &key,
        message,
        &sig,
        false,
    );

    // A of small order, R = [r]B (not of small order), S = r: [S]B - [k]A = R
    // whenever [k]A is the identity, so only check 3 can reject.
    let r = Scalar::from_bytes_mod_order_wide(&random::<64>(rng));
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let holds = |key: &[u8; 32], m: &[u8], sig: &[u8; 64]| -> R<()> {
        let point = CompressedEdwardsY(*key).decompress().ok_or_else(|| err("identity_key", "does not decode"))?;
        let s = Scalar::from_bytes_mod_order(*sig_s(sig));
        let lhs = EdwardsPoint::mul_base(&s) - challenge(&big_r, key, m) * point;
        ensure(lhs.compress().to_bytes() == big_r, "signature", "the cofactorless equation does not hold")
    };
    let sig = sign_with(&r, &big_r, &Scalar::ZERO, &IDENTITY_POINT, message);
    holds(&IDENTITY_POINT, message, &sig)?;
    cases.verify(
        "a_identity",
        "6.1 check 3: the key must not have small order. A is the identity point, R = [r]B (not of small \
         order) and S = r: [S]B - [k]A = R for every message, so the equation holds; only the check of the key \
         rejects it. A verifier that skips that check accepts it.",
        &IDENTITY_POINT,
        message,
        &sig,
        false,
    );
    let t8_key = t8.compress().to_bytes();
    let m = search_message("samizdat/v1 key check: order-8 key", &big_r, &t8_key, true)?;
    let sig = sign_with(&r, &big_r, &Scalar::ZERO, &t8_key, &m);
    holds(&t8_key, &m, &sig)?;
    cases.verify(
        "a_order_8",
        "6.1 check 3: the key must not have small order, whatever the point (not only the identity or the \
         all-zero key). A has order 8, R = [r]B, S = r, and the message makes k a multiple of 8: [S]B - [k]A = \
         R, so the equation holds; only the check of the key rejects it.",
        &t8_key,
        &m,
        &sig,
        false,
    );

    // A' = A + T (mixed order): accepted when k = 0 mod 8.
    let mixed = (signer.point + t8).compress().to_bytes();
    let r = Scalar::from_bytes_mod_order_wide(&random::<64>(rng));
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let m = search_message("samizdat/v1 key check: mixed-order key", &big_r, &mixed, true)?;
    let sig = sign_with(&r, &big_r, a, &mixed, &m);
    let mixed_point =
        CompressedEdwardsY(mixed).decompress().ok_or_else(|| err("identity_key", "A' does not decode"))?;
    let s = Scalar::from_bytes_mod_order(*sig_s(&sig));
    ensure(
        (EdwardsPoint::mul_base(&s) - challenge(&big_r, &mixed, &m) * mixed_point).compress().to_bytes() == big_r,
        "signature",
        "the cofactorless equation does not hold under A + T",
    )?;
    cases.verify(
        "mixed_order_key_accepted",
        "6.1 checks 3 and 4: a key of mixed order (A + T, T of order 8) is not of small order and is accepted. \
         R = [r]B, S = r + k*a, and the message makes k a multiple of 8, so [S]B - [k](A + T) = R: the signature \
         verifies. An implementation that rejects keys with a small-order component (requires [L]A = O) rejects \
         it.",
        &mixed,
        &m,
        &sig,
        true,
    );
    let m = search_message("samizdat/v1 key check: mixed-order key", &big_r, &mixed, false)?;
    let sig = sign_with(&r, &big_r, a, &mixed, &m);
    cases.verify(
        "mixed_order_key_k_not_multiple_of_8",
        "6.1 check 4: the cofactorless equation. The same key and R as mixed_order_key_accepted, a message whose \
         k is not a multiple of 8: [S]B - [k](A + T) = R - [k]T differs from R. A cofactored verifier accepts it.",
        &mixed,
        &m,
        &sig,
        false,
    );
    Ok(())
}

/// The `S` half of a signature.
fn sig_s(sig: &[u8; 64]) -> &[u8; 32] {
    sig.last_chunk::<32>().unwrap_or(&[0; 32])
}

/// The identity keys: the encodings of the relaxed decoding of 6.1, every
/// encoding of every point of small order, and lengths.
fn identity_key_cases(cases: &mut Cases, signer: &Signer) -> R<()> {
    cases.identity(
        "valid_key",
        "6.1 checking a received identity key: a key made by the library is accepted (the baseline).",
        &signer.key,
        Expect::Accepted,
    );
    let mixed = (signer.point + torsion(1)?).compress().to_bytes();
    let model = Point::decode(&mixed).ok_or_else(|| err("key", "A + T does not decode"))?;
    ensure(!model.has_small_order() && !model.is_torsion_free(), "key", "A + T is not of mixed order")?;
    cases.identity(
        "mixed_order_key",
        "6.1 check 3: only keys of small order are rejected. A + T (T of order 8) has mixed order and is \
         accepted; an implementation that requires a torsion-free key rejects it.",
        &mixed,
        Expect::Accepted,
    );
    let (y, non_canonical) = non_canonical_key()?;
    cases.identity(
        &format!("non_canonical_y_{y}_plus_p"),
        &format!(
            "6.1 check 2, first relaxation: the y-coordinate is taken modulo p. The key encodes y = {y} + p \
             (below 2^255), a point not of small order (y = {y} is the smallest that gives one), so it is \
             accepted, and kept as the 32 bytes received. A strict RFC 8032 decoder rejects it \
             (InvalidEncoding)."
        ),
        &non_canonical,
        Expect::Accepted,
    );
    let (y, not_on_curve) = not_on_curve_key()?;
    cases.identity(
        &format!("y_{y}_not_on_curve"),
        &format!(
            "6.1 check 2: y = {y} has no x ((y^2 - 1) / (d y^2 + 1) is not a square mod p; the smallest such y): \
             InvalidEncoding."
        ),
        &not_on_curve,
        invalid_encoding(),
    );
    cases.identity(
        &format!("y_{y}_plus_p_not_on_curve"),
        &format!("6.1 check 2: y = {y} + p is reduced to y = {y}, which has no x: InvalidEncoding."),
        &curve_model::p_plus(y),
        invalid_encoding(),
    );
    for (name, key, pins) in small_order_identity_keys()? {
        cases.identity(&name, &pins, &key, small_order());
    }
    for len in [31, 33] {
        cases.identity(
            &format!("identity_key_length_{len}"),
            "6.1 check 1: an identity key is 32 bytes: InvalidLength.",
            &vec![0x42; len],
            invalid_length(32, len),
        );
    }
    Ok(())
}

/// The smallest `y < 19` whose non-canonical encoding `y + p` decodes to a
/// point not of small order.
fn non_canonical_key() -> R<(u64, [u8; 32])> {
    (0..19u64)
        .map(|y| (y, curve_model::p_plus(y)))
        .find(|(_, bytes)| {
            Point::decode(bytes).is_some_and(|p| !p.has_small_order() && !p.is_canonical_encoding(bytes))
        })
        .ok_or_else(|| err("key", "no y below 19 gives a non-canonical point not of small order"))
}

/// The smallest `y >= 2` with no `x`.
fn not_on_curve_key() -> R<(u64, [u8; 32])> {
    (2..100u64)
        .map(|y| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&y.to_le_bytes());
            (y, bytes)
        })
        .find(|(_, bytes)| Point::decode(bytes).is_none())
        .ok_or_else(|| err("key", "every y below 100 has an x"))
}

/// Every encoding of every point of small order: the 8 canonical ones, the
/// identity and the point of order 2 (x = 0) with the sign bit set, and the
/// non-canonical `p` and `p + 1` (y = 0 and y = 1) with either sign bit.
fn small_order_identity_keys() -> R<Vec<(String, [u8; 32], String)>> {
    let mut out = Vec::new();
    let mut order_8 = 0;
    for i in 0..8 {
        let point = torsion(i)?;
        let key = point.compress().to_bytes();
        let order = small_order_of(&point).ok_or_else(|| err("key", "a torsion point not of small order"))?;
        let name = match order {
            1 => "small_order_identity".to_owned(),
            2 => "small_order_order_2".to_owned(),
            4 => format!("small_order_order_4_{}", if key[31] & 0x80 == 0 { "x_even" } else { "x_odd" }),
            _ => {
                order_8 += 1;
                format!("small_order_order_8_{order_8}")
            }
        };
        out.push((
            name,
            key,
            format!(
                "6.1 check 3: a point of order {order} (canonical encoding) is rejected: SmallOrder. A check that \
                 rejects only the all-zero key, or only the identity, accepts it."
            ),
        ));
        if order <= 2 {
            out.push((
                format!("small_order_{}_sign_bit_set", if order == 1 { "identity" } else { "order_2" }),
                with_sign_bit(key),
                format!(
                    "6.1 check 2, second relaxation: x = 0 with the sign bit set decodes (to the point of order \
                     {order} with x = 0), so the key fails check 3 (SmallOrder), not check 2. A strict RFC 8032 \
                     decoder returns InvalidEncoding."
                ),
            ));
        }
    }
    for (y, what) in [(0, "order_4"), (1, "identity")] {
        let key = curve_model::p_plus(y);
        for (suffix, key) in [("", key), ("_sign_bit_set", with_sign_bit(key))] {
            out.push((
                format!("small_order_{what}_y_plus_p{suffix}"),
                key,
                format!(
                    "6.1 checks 2 and 3: y = {y} + p is reduced to y = {y} (first relaxation), a point of small \
                     order: SmallOrder. A strict RFC 8032 decoder returns InvalidEncoding; a small-order check on \
                     the bytes (compared with a list of canonical encodings) misses it."
                ),
            ));
        }
    }
    for (name, key, _) in &out {
        let point = Point::decode(key).ok_or_else(|| err(name.clone(), "does not decode in the model"))?;
        ensure(point.has_small_order(), name, "not of small order in the model")?;
        let relaxed = name.ends_with("_plus_p") || name.ends_with("_sign_bit_set");
        ensure(point.is_canonical_encoding(key) != relaxed, name, "canonical or not, unlike its name")?;
    }
    Ok(out)
}

/// 6.4's list of X25519 encodings of small order, the top bit clear: u = 0,
/// 1, the two of order 8, p - 1, p and p + 1.
fn small_order_x25519_keys() -> R<Vec<(&'static str, [u8; 32])>> {
    let order_8 = |i| -> R<[u8; 32]> { Ok(torsion(i)?.to_montgomery().to_bytes()) };
    Ok(vec![
        ("u_0", [0; 32]),
        ("u_1", IDENTITY_POINT),
        ("u_order_8_a", order_8(1)?),
        ("u_order_8_b", order_8(3)?),
        ("u_p_minus_1", curve_model::p_minus(1)),
        ("u_p", curve_model::p_plus(0)),
        ("u_p_plus_1", curve_model::p_plus(1)),
    ])
}

/// A mixed-order X25519 key: the u-coordinate of `[r]B + T`.
fn mixed_x25519_key(rng: &mut ChaCha20Rng) -> R<[u8; 32]> {
    let r = Scalar::from_bytes_mod_order_wide(&random::<64>(rng));
    Ok((EdwardsPoint::mul_base(&r) + torsion(1)?).to_montgomery().to_bytes())
}

fn x25519_cases(cases: &mut Cases, rng: &mut ChaCha20Rng) -> R<()> {
    cases.x25519(
        "u_valid",
        "6.4: an X25519 public key X25519(secret, 9) is accepted (the baseline).",
        &hazmat::x25519_public(&random::<32>(rng)),
        Expect::Accepted,
    );
    for (name, key) in small_order_x25519_keys()? {
        let pins = if key == [0; 32] {
            "6.4: u = 0 has small order: SmallOrder (the one key that a check of the all-zero key alone catches)."
        } else {
            "6.4: every encoding for which X25519(k0, u) is all zero is of small order and rejected, not only \
             u = 0: SmallOrder. A check that rejects only the all-zero key accepts it."
        };
        cases.x25519(name, pins, &key, small_order());
        cases.x25519(
            &format!("{name}_top_bit_set"),
            "6.4 and 2.2: the top bit of a received X25519 key is ignored, so the key with its top bit set has \
             small order too: SmallOrder. A check that compares all 32 bytes with a list misses it.",
            &with_sign_bit(key),
            small_order(),
        );
    }
    cases.x25519(
        "u_mixed_order",
        "6.4: a key of mixed order (the u-coordinate of [r]B + T, T of order 8) is accepted: X25519 with a \
         clamped scalar removes T. An implementation that rejects keys with a small-order component rejects it.",
        &mixed_x25519_key(rng)?,
        Expect::Accepted,
    );
    Ok(())
}

fn mlkem_cases(cases: &mut Cases, rng: &mut ChaCha20Rng) -> R<()> {
    let (_, ek) = hazmat::mlkem_keygen(&random::<64>(rng));
    ensure(ek.len() == MLKEM_KEY_LEN, "key", "ML-KEM key length")?;
    cases.mlkem("mlkem_valid", "6.6: a key made by ML-KEM.KeyGen is accepted (the baseline).", &ek, Expect::Accepted);
    let with = |index: usize, value: u16| {
        let mut key = ek.clone();
        curve_model::set_coefficient(&mut key, index, value);
        key
    };
    cases.mlkem(
        "mlkem_coefficient_0_is_3329",
        "6.6: the FIPS 203 modulus check. The first 12-bit coefficient is q = 3329: InvalidEncoding. An \
         implementation without the check accepts it.",
        &with(0, MLKEM_Q),
        invalid_encoding(),
    );
    cases.mlkem(
        "mlkem_coefficient_1_is_3329",
        "6.6: the modulus check covers both coefficients of each 3 bytes. The second coefficient (the high 12 bits \
         of bytes 0 to 2) is 3329: InvalidEncoding.",
        &with(1, MLKEM_Q),
        invalid_encoding(),
    );
    cases.mlkem(
        "mlkem_coefficient_1023_is_4095",
        "6.6: the modulus check covers all 1,024 coefficients. The last one is 4095: InvalidEncoding.",
        &with(1023, 4095),
        invalid_encoding(),
    );
    let mut largest = with(0, MLKEM_Q - 1);
    if let Some(rho) = largest.get_mut(MLKEM_T_LEN..) {
        rho.fill(0xff);
    }
    cases.mlkem(
        "mlkem_coefficient_0_is_3328_rho_ff",
        "6.6: 3328 = q - 1 is allowed, and the last 32 bytes (rho) are not checked: set to ff, they would be \
         coefficients of 4095. Accepted.",
        &largest,
        Expect::Accepted,
    );
    for len in [MLKEM_KEY_LEN - 1, MLKEM_KEY_LEN + 1] {
        let mut key = ek.clone();
        key.resize(len, 0);
        cases.mlkem(
            &format!("mlkem_length_{len}"),
            "6.6: an encapsulation key is 1,568 bytes: InvalidLength.",
            &key,
            invalid_length(MLKEM_KEY_LEN, len),
        );
    }
    Ok(())
}

/// The encoded bundle: version byte, then the protobuf.
fn encode_bundle(bundle: &pb::PreKeyBundle) -> Vec<u8> {
    let mut out = vec![0x01];
    out.extend_from_slice(&bundle.encode_to_vec());
    out
}

/// Signs the bundle's two prekeys and the bundle itself again with `sign`.
fn resign(bundle: &mut pb::PreKeyBundle, sign: &dyn Fn(&[u8]) -> R<[u8; 64]>) -> R<()> {
    let identity = array::<32>("input.identity_key", &h(&bundle.identity_key))?;
    let spk = bundle.signed_prekey.as_mut().ok_or_else(|| err("input", "no signed prekey"))?;
    spk.signature = sign(&hazmat::prekey_signature_input(SignedKind::X25519, spk.id, &spk.public_key))?.to_vec();
    let signed = (spk.id, array::<32>("input.signed_prekey", &h(&spk.public_key))?);
    let pq = bundle.pq_prekey.as_mut().ok_or_else(|| err("input", "no ML-KEM prekey"))?;
    let kind = if pq.last_resort { SignedKind::MlKemLastResort } else { SignedKind::MlKemOneTime };
    pq.signature = sign(&hazmat::prekey_signature_input(kind, pq.id, &pq.public_key))?.to_vec();
    let pq_prekey = (pq.last_resort, pq.id, pq.public_key.clone());
    let one_time = match &bundle.one_time_prekey {
        Some(k) => Some((k.id, array::<32>("input.one_time_prekey", &h(&k.public_key))?)),
        None => None,
    };
    let input = hazmat::bundle_signature_input(
        &identity,
        &bundle.user_id,
        bundle.device_id,
        (signed.0, &signed.1),
        one_time.as_ref().map(|(id, key)| (*id, key)),
        (pq_prekey.0, pq_prekey.1, &pq_prekey.2),
    );
    bundle.signature = sign(&input)?.to_vec();
    Ok(())
}

fn bundle_cases(cases: &mut Cases, signer: &Signer, rng: &mut ChaCha20Rng) -> R<()> {
    let address = Address::new("bob", 7).map_err(|e| err("input", e.to_string()))?;
    let dev = device("input", &signer.seed, &address, &PreKeyRandomness::draw(rng), true, PqOffer::OneTime)?;
    let original = pb::PreKeyBundle::decode(dev.bundle.to_bytes().get(1..).unwrap_or_default())
        .map_err(|e| err("input", e.to_string()))?;
    let honest = |m: &[u8]| -> R<[u8; 64]> { Ok(hazmat::sign(&signer.seed, m)) };
    // The bundle with one change, signed again by the owner (when `resigned`).
    let altered = |change: &dyn Fn(&mut pb::PreKeyBundle), resigned: bool| -> R<Vec<u8>> {
        let mut b = original.clone();
        change(&mut b);
        if resigned {
            resign(&mut b, &honest)?;
        }
        Ok(encode_bundle(&b))
    };
    cases.bundle(
        "bundle_valid",
        "7.2: the bundle as the library makes it is accepted (the baseline for the cases below).",
        "identity_key",
        &encode_bundle(&original),
        Expect::Accepted,
    );

    // Identity keys (7.2 check 5, before any signature).
    let identity = |key: Vec<u8>| altered(&move |b: &mut pb::PreKeyBundle| b.identity_key.clone_from(&key), false);
    let (_, not_on_curve) = not_on_curve_key()?;
    let (_, non_canonical) = non_canonical_key()?;
    let wrap = |e| bundle_rejects(&BundleError::IdentityKey(e));
    cases.bundle(
        "bundle_identity_key_not_on_curve",
        "7.2 check 5 and 6.1 check 2: an identity key that does not decode: IdentityKey(InvalidEncoding).",
        "identity_key",
        &identity(not_on_curve.to_vec())?,
        wrap(KeyError::InvalidEncoding),
    );
    cases.bundle(
        "bundle_identity_key_identity_sign_bit_set",
        "7.2 check 5 and 6.1 check 2, second relaxation: x = 0 with the sign bit set decodes to the identity: \
         IdentityKey(SmallOrder), not IdentityKey(InvalidEncoding).",
        "identity_key",
        &identity(with_sign_bit(IDENTITY_POINT).to_vec())?,
        wrap(KeyError::SmallOrder),
    );
    cases.bundle(
        "bundle_identity_key_order_4_y_plus_p",
        "7.2 check 5 and 6.1 checks 2 and 3: y = p (non-canonical 0) encodes a point of order 4: \
         IdentityKey(SmallOrder).",
        "identity_key",
        &identity(curve_model::p_plus(0).to_vec())?,
        wrap(KeyError::SmallOrder),
    );
    cases.bundle(
        "bundle_identity_key_order_8",
        "7.2 check 5 and 6.1 check 3: a point of order 8: IdentityKey(SmallOrder). A check that rejects only the \
         all-zero key accepts it (and fails later, on a signature).",
        "identity_key",
        &identity(torsion(1)?.compress().to_bytes().to_vec())?,
        wrap(KeyError::SmallOrder),
    );
    cases.bundle(
        "bundle_identity_key_length_31",
        "7.2 check 5 and 6.1 check 1: IdentityKey(InvalidLength { expected: 32, actual: 31 }).",
        "identity_key",
        &identity(signer.key.get(..31).unwrap_or_default().to_vec())?,
        wrap(KeyError::InvalidLength { expected: 32, actual: 31 }),
    );
    cases.bundle(
        "bundle_identity_key_non_canonical_y",
        "7.2 check 5 and 6.1 check 2, first relaxation: the identity key encodes a small y plus p, a point not of \
         small order, so check 5 passes and the bundle fails at check 11 (SignedPreKeySignature: nobody knows \
         the key's discrete logarithm, so nobody can sign for it). A strict RFC 8032 decoder fails at check 5 \
         instead (IdentityKey(InvalidEncoding)).",
        "identity_key",
        &identity(non_canonical.to_vec())?,
        Expect::Rejected(bundle_error(&BundleError::SignedPreKeySignature)),
    );
    let mixed = (signer.point + torsion(1)?).compress().to_bytes();
    let mut b = original.clone();
    b.identity_key = mixed.to_vec();
    resign(&mut b, &|m| sign_mixed(&signer.scalar, &mixed, m))?;
    cases.bundle(
        "bundle_identity_key_mixed_order",
        "7.2 checks 5, 11, 18 and 20 with 6.1: the identity key is A + T (T of order 8), of mixed order, and all \
         three signatures are made with nonces for which k is a multiple of 8, so they verify strictly: the \
         bundle is accepted. An implementation that rejects keys of mixed order rejects it.",
        "identity_key",
        &encode_bundle(&b),
        Expect::Accepted,
    );

    // X25519 prekeys (7.2 checks 9 and 13), signed again so that only the key check can fail.
    let small = small_order_x25519_keys()?;
    let pick = |name: &str| -> R<[u8; 32]> {
        small.iter().find(|(n, _)| *n == name).map(|(_, k)| *k).ok_or_else(|| err("input", "no such key"))
    };
    let mixed_u = mixed_x25519_key(rng)?;
    let signed_prekey = |key: [u8; 32]| {
        altered(
            &move |b: &mut pb::PreKeyBundle| {
                if let Some(k) = b.signed_prekey.as_mut() {
                    k.public_key = key.to_vec();
                }
            },
            true,
        )
    };
    for (name, key) in [("u_1", pick("u_1")?), ("u_p", pick("u_p")?), ("u_order_8", pick("u_order_8_a")?)] {
        cases.bundle(
            &format!("bundle_signed_prekey_{name}"),
            "7.2 check 9 and 6.4: a signed prekey of small order other than zero, with valid signatures: \
             SignedPreKey(SmallOrder). A check that rejects only the all-zero key accepts the bundle.",
            "signed_prekey.public_key",
            &signed_prekey(key)?,
            bundle_rejects(&BundleError::SignedPreKey(KeyError::SmallOrder)),
        );
    }
    cases.bundle(
        "bundle_signed_prekey_mixed_order",
        "7.2 check 9 and 6.4: a signed prekey of mixed order, with valid signatures, is accepted.",
        "signed_prekey.public_key",
        &signed_prekey(mixed_u)?,
        Expect::Accepted,
    );
    let one_time = |key: [u8; 32]| {
        altered(
            &move |b: &mut pb::PreKeyBundle| {
                if let Some(k) = b.one_time_prekey.as_mut() {
                    k.public_key = key.to_vec();
                }
            },
            true,
        )
    };
    for (name, key) in
        [("u_p_minus_1", pick("u_p_minus_1")?), ("u_p_plus_1_top_bit_set", with_sign_bit(pick("u_p_plus_1")?))]
    {
        cases.bundle(
            &format!("bundle_one_time_prekey_{name}"),
            "7.2 check 13 and 6.4: a one-time prekey of small order other than zero, with valid signatures: \
             OneTimePreKey(SmallOrder).",
            "one_time_prekey.public_key",
            &one_time(key)?,
            bundle_rejects(&BundleError::OneTimePreKey(KeyError::SmallOrder)),
        );
    }
    cases.bundle(
        "bundle_one_time_prekey_mixed_order",
        "7.2 check 13 and 6.4: a one-time prekey of mixed order, with valid signatures, is accepted.",
        "one_time_prekey.public_key",
        &one_time(mixed_u)?,
        Expect::Accepted,
    );

    // ML-KEM prekeys (7.2 checks 15 and 16, before the signature).
    let pq = |change: &dyn Fn(&mut Vec<u8>)| {
        altered(
            &|b: &mut pb::PreKeyBundle| {
                if let Some(k) = b.pq_prekey.as_mut() {
                    change(&mut k.public_key);
                }
            },
            true,
        )
    };
    let wrap = |e| bundle_rejects(&BundleError::PqPreKey(e));
    cases.bundle(
        "bundle_pq_prekey_coefficient_3329",
        "7.2 check 16 and 6.6: an ML-KEM key with a coefficient equal to q = 3329, with valid signatures: \
         PqPreKey(InvalidEncoding). Without the modulus check the bundle is accepted.",
        "pq_prekey.public_key",
        &pq(&|k| curve_model::set_coefficient(k, 0, MLKEM_Q))?,
        wrap(KeyError::InvalidEncoding),
    );
    cases.bundle(
        "bundle_pq_prekey_coefficient_4095",
        "7.2 check 16 and 6.6: the last coefficient is 4095, with valid signatures: PqPreKey(InvalidEncoding).",
        "pq_prekey.public_key",
        &pq(&|k| curve_model::set_coefficient(k, 1023, 4095))?,
        wrap(KeyError::InvalidEncoding),
    );
    cases.bundle(
        "bundle_pq_prekey_coefficient_3328_rho_ff",
        "7.2 check 16 and 6.6: a coefficient of 3328 and rho set to ff (not checked), with valid signatures: \
         accepted.",
        "pq_prekey.public_key",
        &pq(&|k| {
            curve_model::set_coefficient(k, 0, MLKEM_Q - 1);
            if let Some(rho) = k.get_mut(MLKEM_T_LEN..) {
                rho.fill(0xff);
            }
        })?,
        Expect::Accepted,
    );
    cases.bundle(
        "bundle_pq_prekey_length_1567",
        "7.2 check 15 and 6.6: PqPreKey(InvalidLength { expected: 1568, actual: 1567 }).",
        "pq_prekey.public_key",
        &pq(&|k| k.truncate(MLKEM_KEY_LEN - 1))?,
        wrap(KeyError::InvalidLength { expected: MLKEM_KEY_LEN, actual: MLKEM_KEY_LEN - 1 }),
    );
    Ok(())
}

fn prekey_message_cases(cases: &mut Cases, signer: &Signer, rng: &mut ChaCha20Rng) -> R<()> {
    let original = pb::PreKeyMessage {
        identity_key: signer.key.to_vec(),
        base_key: hazmat::x25519_public(&random::<32>(rng)).to_vec(),
        signed_prekey_id: 1,
        one_time_prekey_id: Some(3),
        pq_prekey_id: 4,
        pq_ciphertext: random_vec(rng, 1568),
        message: Some(pb::RatchetMessage { header: random_vec(rng, 81), body: random_vec(rng, 80).into() }),
    };
    let encode = |p: pb::PreKeyMessage| {
        let mut out = vec![0x01];
        out.extend_from_slice(&pb::Envelope { body: Some(pb::envelope::Body::Prekey(p)) }.encode_to_vec());
        out
    };
    let with_identity = |key: Vec<u8>| encode(pb::PreKeyMessage { identity_key: key, ..original.clone() });
    let with_base = |key: [u8; 32]| encode(pb::PreKeyMessage { base_key: key.to_vec(), ..original.clone() });
    cases.prekey(
        "prekey_valid",
        "8.8: a prekey message with valid keys decodes (the baseline for the cases below).",
        "identity_key",
        &encode(original.clone()),
        Expect::Accepted,
    );
    let (_, not_on_curve) = not_on_curve_key()?;
    let (_, non_canonical) = non_canonical_key()?;
    let rejected_identities: [(&str, &str, Vec<u8>); 5] = [
        ("not_on_curve", "6.1 check 2: the key does not decode.", not_on_curve.to_vec()),
        (
            "identity_sign_bit_set",
            "6.1 check 2, second relaxation, and check 3: x = 0 with the sign bit set, the identity.",
            with_sign_bit(IDENTITY_POINT).to_vec(),
        ),
        (
            "identity_y_plus_p",
            "6.1 checks 2 and 3: y = p + 1, a non-canonical encoding of the identity.",
            curve_model::p_plus(1).to_vec(),
        ),
        ("order_8", "6.1 check 3: a point of order 8.", torsion(3)?.compress().to_bytes().to_vec()),
        ("length_33", "6.1 check 1: 33 bytes; P1 reports a wrong length as InvalidValue too.", {
            let mut k = signer.key.to_vec();
            k.push(0);
            k
        }),
    ];
    for (name, why, key) in rejected_identities {
        cases.prekey(
            &format!("prekey_identity_key_{name}"),
            &format!("8.8 check P1: {why} Whatever the reason: InvalidValue(\"prekey.identity_key\")."),
            "identity_key",
            &with_identity(key),
            message_rejects(&DecodeError::InvalidValue("prekey.identity_key")),
        );
    }
    cases.prekey(
        "prekey_identity_key_non_canonical_y",
        "8.8 check P1 and 6.1 check 2, first relaxation: an identity key encoding a small y plus p, not of small \
         order, is accepted and kept as received: the message decodes. A strict RFC 8032 decoder rejects it.",
        "identity_key",
        &with_identity(non_canonical.to_vec()),
        Expect::Accepted,
    );
    cases.prekey(
        "prekey_identity_key_mixed_order",
        "8.8 check P1 and 6.1 check 3: an identity key of mixed order (A + T) is accepted: the message decodes.",
        "identity_key",
        &with_identity((signer.point + torsion(1)?).compress().to_bytes().to_vec()),
        Expect::Accepted,
    );
    let small = small_order_x25519_keys()?;
    for name in ["u_1", "u_order_8_b", "u_p", "u_p_minus_1"] {
        let key = small.iter().find(|(n, _)| *n == name).map(|(_, k)| *k).ok_or_else(|| err("input", "no key"))?;
        let key = if name == "u_p_minus_1" { with_sign_bit(key) } else { key };
        let name = if name == "u_p_minus_1" { "u_p_minus_1_top_bit_set" } else { name };
        cases.prekey(
            &format!("prekey_base_key_{name}"),
            "8.8 check P3 and 6.4: a base key of small order other than zero: InvalidValue(\"prekey.base_key\"). \
             A check that rejects only the all-zero key accepts it.",
            "base_key",
            &with_base(key),
            message_rejects(&DecodeError::InvalidValue("prekey.base_key")),
        );
    }
    cases.prekey(
        "prekey_base_key_mixed_order",
        "8.8 check P3 and 6.4: a base key of mixed order is accepted: the message decodes.",
        "base_key",
        &with_base(mixed_x25519_key(rng)?),
        Expect::Accepted,
    );
    Ok(())
}
