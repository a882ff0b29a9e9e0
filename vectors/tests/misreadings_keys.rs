//! Evidence that `key_checks.json` pins the key rules of PROTOCOL.md.
//!
//! A small checker reads every case of the file and predicts its outcome
//! (signature valid or not, key accepted or the error, the decoder's error).
//! With [`Rules::default`] it follows PROTOCOL.md and must agree with every
//! case. Each other [`Rules`] value turns on one plausible misreading, and
//! the tests assert that the checker then disagrees with the named cases:
//! an implementation that misreads the rule that way fails them.
//! The table "Keys and signatures" of `vectors/RULES.md` (written as
//! `vectors/RULES-keys.md`) lists the same misreadings and cases.
//!
//! The checker is written here from the text of PROTOCOL.md, on
//! `curve25519-dalek` points. It does not use the generator's code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::{fs, path::PathBuf};

use curve25519_dalek::{
    constants::EIGHT_TORSION,
    edwards::{CompressedEdwardsY, EdwardsPoint},
    montgomery::MontgomeryPoint,
    scalar::Scalar,
    traits::IsIdentity,
};
use samizdat_proto::{Message as _, wire as pb};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

/// How the checker reads the rules. The default is PROTOCOL.md; each flag
/// is one misreading.
#[derive(Default, Clone, Copy, Debug)]
struct Rules {
    /// 6.1 check 4 read as the cofactored equation `[8][S]B = [8]R + [8][k]A`.
    cofactored: bool,
    /// 6.1 check 1 read as "reduce S modulo L" (any S with its top 3 bits clear is taken).
    reduce_s: bool,
    /// 6.1 check 2 dropped: R of small order accepted.
    small_order_r: bool,
    /// 6.1 check 3 dropped when verifying: a key of small order accepted.
    small_order_key_in_verify: bool,
    /// Keys of mixed order rejected (a torsion-free key required), for identity and X25519 keys.
    reject_mixed_order: bool,
    /// RFC 8032 decoding without 6.1's two relaxations: y >= p, and x = 0 with the sign bit set, rejected.
    strict_decoding: bool,
    /// The small-order checks reject only the all-zero key (identity and X25519 keys).
    zero_only: bool,
    /// Identity keys of small order found by comparing the bytes with the 8 canonical encodings.
    identity_canonical_list: bool,
    /// X25519 keys of small order found by comparing all 32 bytes (top bit included) with 6.4's 7 encodings.
    x25519_list_with_top_bit: bool,
    /// An accepted identity key is kept as its canonical re-encoding, not as the bytes received.
    reencode_identity_key: bool,
    /// No ML-KEM modulus check.
    no_modulus_check: bool,
    /// The modulus check applied to the last 32 bytes (rho) too.
    modulus_check_on_rho: bool,
    /// 8.8 P1 reports a wrong-length identity key as InvalidLength (like P2), not InvalidValue.
    prekey_identity_length_as_invalid_length: bool,
}

fn small_order() -> Value {
    json!({"error": "small_order"})
}

fn invalid_encoding() -> Value {
    json!({"error": "invalid_encoding"})
}

fn invalid_length(expected: usize, actual: usize) -> Value {
    json!({"error": "invalid_length", "expected": expected, "actual": actual})
}

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// `p - 1`, `p`, `p + 1`, little-endian.
const P_MINUS_1: &str = "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f";
const P: &str = "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f";
const P_PLUS_1: &str = "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f";

/// 6.1's check of a received identity key: the point, or the `KeyError`.
fn identity_key(rules: Rules, key: &[u8]) -> Result<EdwardsPoint, Value> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| invalid_length(32, key.len()))?;
    // curve25519-dalek decodes with both relaxations of 6.1.
    let point = CompressedEdwardsY(bytes).decompress().ok_or_else(invalid_encoding)?;
    if rules.strict_decoding && point.compress().to_bytes() != bytes {
        return Err(invalid_encoding());
    }
    let small = if rules.zero_only {
        bytes == [0; 32]
    } else if rules.identity_canonical_list {
        EIGHT_TORSION.iter().any(|t| t.compress().to_bytes() == bytes)
    } else {
        point.is_small_order()
    };
    if small || (rules.reject_mixed_order && !point.is_torsion_free()) {
        return Err(small_order());
    }
    Ok(point)
}

/// 6.4's check of a received X25519 key.
fn x25519_key(rules: Rules, key: &[u8]) -> Result<(), Value> {
    let u: [u8; 32] = key.try_into().map_err(|_| invalid_length(32, key.len()))?;
    let small = if rules.zero_only {
        u == [0; 32]
    } else if rules.x25519_list_with_top_bit {
        let mut list = vec![[0; 32], hex32(P_MINUS_1), hex32(P), hex32(P_PLUS_1)];
        list.push({
            let mut one = [0; 32];
            one[0] = 1;
            one
        });
        list.extend(EIGHT_TORSION.iter().map(|t| t.to_montgomery().to_bytes()));
        list.contains(&u)
    } else {
        MontgomeryPoint(u).mul_clamped([9; 32]).to_bytes() == [0; 32]
    };
    let mixed = || MontgomeryPoint(u).to_edwards(0).is_some_and(|p| !p.is_torsion_free());
    if small || (rules.reject_mixed_order && mixed()) { Err(small_order()) } else { Ok(()) }
}

/// 6.6's check of a received ML-KEM-1024 encapsulation key.
fn mlkem_key(rules: Rules, key: &[u8]) -> Result<(), Value> {
    if key.len() != 1568 {
        return Err(invalid_length(1568, key.len()));
    }
    let checked = if rules.modulus_check_on_rho { key } else { &key[..1536] };
    // ByteDecode12: two 12-bit coefficients in every 3 bytes, the first in the low bits.
    let too_big = checked.chunks_exact(3).any(|c| {
        let word = u32::from(c[0]) | u32::from(c[1]) << 8 | u32::from(c[2]) << 16;
        word & 0xfff >= 3329 || word >> 12 >= 3329
    });
    if too_big && !rules.no_modulus_check { Err(invalid_encoding()) } else { Ok(()) }
}

/// 6.1's strict verification.
fn verify(rules: Rules, key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    let r_bytes: [u8; 32] = sig[..32].try_into().unwrap();
    let s_bytes: [u8; 32] = sig[32..].try_into().unwrap();
    let s = if rules.reduce_s {
        if s_bytes[31] & 0xe0 != 0 {
            return false;
        }
        Scalar::from_bytes_mod_order(s_bytes)
    } else {
        match Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) {
            Some(s) => s,
            None => return false,
        }
    };
    let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
    if !rules.small_order_r && r.is_small_order() {
        return false;
    }
    let a = match identity_key(rules, key) {
        Ok(a) => a,
        Err(e) if rules.small_order_key_in_verify && e == small_order() => {
            CompressedEdwardsY(*key).decompress().unwrap()
        }
        Err(_) => return false,
    };
    let mut hash = Sha512::new();
    hash.update(r_bytes);
    hash.update(key);
    hash.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
    let difference = EdwardsPoint::mul_base(&s) - k * a;
    if rules.cofactored {
        (difference - r).mul_by_cofactor().is_identity()
    } else {
        difference.compress().to_bytes() == r_bytes
    }
}

/// What the checker predicts for a decoder case: `Some(error)` when the
/// altered key fails, the error the decoder returns; `None` when it passes.
fn bundle_prediction(rules: Rules, field: &str, input: &[u8]) -> Option<Value> {
    let b = pb::PreKeyBundle::decode(&input[1..]).unwrap();
    let (variant, failure) = match field {
        "identity_key" => ("identity_key", identity_key(rules, &b.identity_key).err()),
        "signed_prekey.public_key" => ("signed_prekey", x25519_key(rules, &b.signed_prekey.unwrap().public_key).err()),
        "one_time_prekey.public_key" => {
            ("one_time_prekey", x25519_key(rules, &b.one_time_prekey.unwrap().public_key).err())
        }
        "pq_prekey.public_key" => ("pq_prekey", mlkem_key(rules, &b.pq_prekey.unwrap().public_key).err()),
        other => panic!("unknown field {other}"),
    };
    failure.map(|cause| json!({"error": variant, "cause": cause}))
}

fn prekey_prediction(rules: Rules, field: &str, input: &[u8]) -> Option<Value> {
    let Some(pb::envelope::Body::Prekey(p)) = pb::Envelope::decode(&input[1..]).unwrap().body else {
        panic!("not a prekey message")
    };
    let (name, key, failure) = match field {
        "identity_key" => ("prekey.identity_key", &p.identity_key, identity_key(rules, &p.identity_key).err()),
        "base_key" => ("prekey.base_key", &p.base_key, x25519_key(rules, &p.base_key).err()),
        other => panic!("unknown field {other}"),
    };
    let length_reported = field == "base_key" || rules.prekey_identity_length_as_invalid_length;
    failure.map(|e| {
        if length_reported && e["error"] == "invalid_length" {
            json!({"error": "invalid_length", "field": name, "expected": 32, "actual": key.len()})
        } else {
            json!({"error": "invalid_value", "field": name})
        }
    })
}

fn bytes_of(case: &Value, field: &str) -> Vec<u8> {
    hex::decode(case[field].as_str().unwrap()).unwrap()
}

/// Whether the checker reading the rules as `rules` gets `case` right.
fn agrees(rules: Rules, case: &Value) -> bool {
    let result = &case["result"];
    match case["operation"].as_str().unwrap() {
        "verify_signature" => {
            let key: [u8; 32] = bytes_of(case, "identity_key").try_into().unwrap();
            let sig: [u8; 64] = bytes_of(case, "signature").try_into().unwrap();
            verify(rules, &key, &bytes_of(case, "message"), &sig) == case["valid"].as_bool().unwrap()
        }
        "check_identity_key" => {
            let key = bytes_of(case, "key");
            let predicted = identity_key(rules, &key).map_or_else(
                |e| e,
                |point| {
                    let kept = if rules.reencode_identity_key { point.compress().to_bytes().to_vec() } else { key };
                    json!({
                        "identity_key": hex::encode(kept),
                        "x25519_form": hex::encode(point.to_montgomery().to_bytes()),
                    })
                },
            );
            predicted == *result
        }
        "check_x25519_public_key" => {
            x25519_key(rules, &bytes_of(case, "key")).map_or_else(|e| e, |()| json!({"accepted": true})) == *result
        }
        "check_mlkem_encapsulation_key" => {
            mlkem_key(rules, &bytes_of(case, "key")).map_or_else(|e| e, |()| json!({"accepted": true})) == *result
        }
        "decode_bundle" => {
            let field = case["field"].as_str().unwrap();
            match bundle_prediction(rules, field, &bytes_of(case, "input")) {
                Some(error) => error == *result,
                None => {
                    let variant = field.split('.').next().unwrap();
                    result["error"] != variant
                }
            }
        }
        "decode_prekey_message" => {
            let field = case["field"].as_str().unwrap();
            match prekey_prediction(rules, field, &bytes_of(case, "input")) {
                Some(error) => error == *result,
                None => result["field"] != format!("prekey.{field}").as_str(),
            }
        }
        other => panic!("unknown operation {other}"),
    }
}

fn cases() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("key_checks.json");
    let document: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    document["cases"].as_array().unwrap().clone()
}

/// The names of the cases that a checker reading the rules as `rules` gets wrong.
fn disagreements(rules: Rules) -> Vec<String> {
    cases().iter().filter(|case| !agrees(rules, case)).map(|case| case["name"].as_str().unwrap().to_owned()).collect()
}

/// Asserts that the misreading `rules` gets every case of `expected` wrong
/// (and prints every case it gets wrong).
fn caught(rules: Rules, expected: &[&str]) {
    let wrong = disagreements(rules);
    println!("{rules:?}\n  gets {} cases wrong: {}", wrong.len(), wrong.join(", "));
    assert!(!wrong.is_empty(), "{rules:?} passes every case");
    let missed: Vec<&&str> = expected.iter().filter(|name| !wrong.iter().any(|w| w == *name)).collect();
    assert!(missed.is_empty(), "{rules:?} gets these cases right: {missed:?} (wrong: {wrong:?})");
}

#[test]
fn the_protocol_reading_agrees_with_every_case() {
    assert_eq!(cases().len(), 84);
    assert_eq!(disagreements(Rules::default()), Vec::<String>::new());
}

#[test]
fn cofactored_verification_is_caught() {
    caught(
        Rules { cofactored: true, ..Rules::default() },
        &["r_with_small_order_component", "mixed_order_key_k_not_multiple_of_8"],
    );
}

#[test]
fn reducing_s_is_caught() {
    caught(Rules { reduce_s: true, ..Rules::default() }, &["s_plus_l"]);
}

#[test]
fn accepting_small_order_r_is_caught() {
    caught(Rules { small_order_r: true, ..Rules::default() }, &["r_small_order"]);
}

#[test]
fn accepting_small_order_keys_in_verification_is_caught() {
    caught(Rules { small_order_key_in_verify: true, ..Rules::default() }, &["a_identity", "a_order_8"]);
}

#[test]
fn lax_verification_is_caught() {
    // All four at once: RFC 8032's cofactored verification as many libraries do it.
    let lax = Rules {
        cofactored: true,
        reduce_s: true,
        small_order_r: true,
        small_order_key_in_verify: true,
        ..Rules::default()
    };
    caught(
        lax,
        &[
            "r_with_small_order_component",
            "mixed_order_key_k_not_multiple_of_8",
            "s_plus_l",
            "r_small_order",
            "a_identity",
            "a_order_8",
        ],
    );
}

#[test]
fn verification_without_the_small_order_checks_is_caught() {
    // Checks 2 and 3 dropped, the cofactorless equation kept: ed25519-dalek's
    // `verify`, as opposed to its `verify_strict`.
    let rules = Rules { small_order_r: true, small_order_key_in_verify: true, ..Rules::default() };
    caught(rules, &["r_small_order", "a_identity", "a_order_8"]);
}

#[test]
fn rejecting_mixed_order_keys_is_caught() {
    caught(
        Rules { reject_mixed_order: true, ..Rules::default() },
        &[
            "mixed_order_key_accepted",
            "mixed_order_key",
            "u_mixed_order",
            "bundle_identity_key_mixed_order",
            "bundle_signed_prekey_mixed_order",
            "bundle_one_time_prekey_mixed_order",
            "prekey_identity_key_mixed_order",
            "prekey_base_key_mixed_order",
        ],
    );
}

#[test]
fn strict_rfc8032_decoding_is_caught() {
    caught(
        Rules { strict_decoding: true, ..Rules::default() },
        &[
            "non_canonical_y_3_plus_p",
            "small_order_identity_sign_bit_set",
            "small_order_order_2_sign_bit_set",
            "small_order_order_4_y_plus_p",
            "small_order_identity_y_plus_p_sign_bit_set",
            "bundle_identity_key_identity_sign_bit_set",
            "bundle_identity_key_order_4_y_plus_p",
            "bundle_identity_key_non_canonical_y",
            "prekey_identity_key_non_canonical_y",
        ],
    );
}

#[test]
fn zero_only_small_order_check_is_caught() {
    caught(
        Rules { zero_only: true, ..Rules::default() },
        &[
            // Identity keys, directly and through the decoders, and in verification.
            "small_order_identity",
            "small_order_order_8_1",
            "small_order_identity_y_plus_p",
            "bundle_identity_key_order_8",
            "prekey_identity_key_order_8",
            "a_identity",
            "a_order_8",
            // X25519 keys, directly and through the decoders.
            "u_1",
            "u_order_8_a",
            "u_order_8_b",
            "u_p_minus_1",
            "u_p",
            "u_p_plus_1",
            "u_0_top_bit_set",
            "bundle_signed_prekey_u_1",
            "bundle_signed_prekey_u_p",
            "bundle_signed_prekey_u_order_8",
            "bundle_one_time_prekey_u_p_minus_1",
            "bundle_one_time_prekey_u_p_plus_1_top_bit_set",
            "prekey_base_key_u_1",
            "prekey_base_key_u_order_8_b",
            "prekey_base_key_u_p",
            "prekey_base_key_u_p_minus_1_top_bit_set",
        ],
    );
}

#[test]
fn small_order_identity_keys_by_canonical_list_is_caught() {
    caught(
        Rules { identity_canonical_list: true, ..Rules::default() },
        &[
            "small_order_identity_sign_bit_set",
            "small_order_order_2_sign_bit_set",
            "small_order_order_4_y_plus_p",
            "small_order_order_4_y_plus_p_sign_bit_set",
            "small_order_identity_y_plus_p",
            "small_order_identity_y_plus_p_sign_bit_set",
            "bundle_identity_key_identity_sign_bit_set",
            "bundle_identity_key_order_4_y_plus_p",
            "prekey_identity_key_identity_sign_bit_set",
            "prekey_identity_key_identity_y_plus_p",
        ],
    );
}

#[test]
fn small_order_x25519_keys_with_top_bit_is_caught() {
    caught(
        Rules { x25519_list_with_top_bit: true, ..Rules::default() },
        &[
            "u_0_top_bit_set",
            "u_1_top_bit_set",
            "u_order_8_a_top_bit_set",
            "u_order_8_b_top_bit_set",
            "u_p_minus_1_top_bit_set",
            "u_p_top_bit_set",
            "u_p_plus_1_top_bit_set",
            "bundle_one_time_prekey_u_p_plus_1_top_bit_set",
            "prekey_base_key_u_p_minus_1_top_bit_set",
        ],
    );
}

#[test]
fn reencoding_identity_keys_is_caught() {
    caught(Rules { reencode_identity_key: true, ..Rules::default() }, &["non_canonical_y_3_plus_p"]);
}

#[test]
fn no_modulus_check_is_caught() {
    caught(
        Rules { no_modulus_check: true, ..Rules::default() },
        &[
            "mlkem_coefficient_0_is_3329",
            "mlkem_coefficient_1_is_3329",
            "mlkem_coefficient_1023_is_4095",
            "bundle_pq_prekey_coefficient_3329",
            "bundle_pq_prekey_coefficient_4095",
        ],
    );
}

#[test]
fn modulus_check_on_rho_is_caught() {
    caught(
        Rules { modulus_check_on_rho: true, ..Rules::default() },
        &["mlkem_coefficient_0_is_3328_rho_ff", "bundle_pq_prekey_coefficient_3328_rho_ff"],
    );
}

#[test]
fn prekey_identity_length_as_invalid_length_is_caught() {
    caught(
        Rules { prekey_identity_length_as_invalid_length: true, ..Rules::default() },
        &["prekey_identity_key_length_33"],
    );
}
