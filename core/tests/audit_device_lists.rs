//! Outside audit of users and signed device lists (PROTOCOL.md 23;
//! `core/src/user/`, `SafetyNumber::for_users`; commits 95d35dc, b8cff4a,
//! 95930ef).
//!
//! The threat: a hostile or compelled server that serves bundles and device
//! lists and wants to add a ghost device to a user, roll a list back to
//! bring a removed device back, or make a victim accept a list the pinned
//! user identity did not sign; and a thief of a user identity key (the
//! limitation PROTOCOL.md 23.1 documents).
//!
//! Tests named `held_*` are attacks the code resisted. Tests marked
//! `#[ignore = "finding: ..."]` fail on the code as audited: each doc
//! comment gives the flaw and the fix suggested. Three, none of which lets
//! a server without the user key add, bring back or substitute a device:
//! a removed (lost) device keeps the shared user key and can re-add itself,
//! which PROTOCOL.md 23.1 glosses over; L5 says "full order" where the code
//! accepts mixed-order keys; and 23.2's "at most 33 point decodings" is 54.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use ed25519_dalek::{
    Signer, SigningKey, VerifyingKey,
    hazmat::{ExpandedSecretKey, raw_sign},
};
use prost::Message as _;
use samizdat::{
    DecodeError, ErrorKind,
    fingerprint::{MismatchedSide, SafetyNumber, ScanError},
    hazmat,
    keys::{IdentityKey, IdentityKeyPair},
    user::{
        DeviceList, DeviceListError, ListChange, MAX_DEVICE_LIST_LEN, MAX_DEVICES_PER_USER, SignedDeviceList,
        UserIdentityKey, UserIdentityKeyPair, UserTrust,
    },
};
use samizdat_proto::wire;
use sha2::{Digest as _, Sha512};

const LABEL: &[u8] = b"samizdat/v1/device-list";

/// The group order L, little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Every encoding of a point of small order that decompresses (canonical,
/// y >= p, and x = 0 with the sign bit set): computed with the RFC 8032
/// formulas.
const SMALL_ORDER_ENCODINGS: [&str; 14] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// A point of order 8.
const ORDER_8: &str = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a";

/// y = 3 + p: a non-canonical encoding (y >= p) of a point of mixed order.
const NON_CANONICAL_MIXED: &str = "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f";

/// y = 2: not the y-coordinate of any point.
const NOT_A_POINT: [u8; 32] = {
    let mut bytes = [0; 32];
    bytes[0] = 2;
    bytes
};

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

fn device(seed: u8) -> IdentityKey {
    IdentityKeyPair::from_seed(&[seed; 32]).public_key()
}

fn user(seed: u8) -> UserIdentityKeyPair {
    UserIdentityKeyPair::from_seed(&[seed; 32])
}

/// A list for "alice" built and signed by the library.
fn list(user_key: &UserIdentityKeyPair, version: u64, devices: &[(u32, u8)]) -> SignedDeviceList {
    list_for("alice", user_key, version, devices)
}

fn list_for(user_id: &str, user_key: &UserIdentityKeyPair, version: u64, devices: &[(u32, u8)]) -> SignedDeviceList {
    DeviceList::new(user_id, version, &user_key.public_key(), devices.iter().map(|(id, seed)| (*id, device(*seed))))
        .unwrap()
        .sign(user_key)
        .unwrap()
}

fn proto(user_key: &[u8], version: u64, devices: &[(u32, u8)]) -> wire::DeviceList {
    wire::DeviceList {
        user_id: "alice".into(),
        version,
        user_identity_key: user_key.to_vec(),
        devices: devices
            .iter()
            .map(|(id, seed)| wire::DeviceEntry { device_id: *id, identity_key: device(*seed).as_bytes().to_vec() })
            .collect(),
    }
}

fn outer(list: &[u8], signature: &[u8]) -> Vec<u8> {
    wire::SignedDeviceList { list: list.to_vec(), signature: signature.to_vec() }.encode_to_vec()
}

/// Signs arbitrary list bytes with `user`, as PROTOCOL.md 23.2 says (what
/// the key's holder, or a thief of it, can do).
fn signed_bytes(user: &UserIdentityKeyPair, list: &[u8]) -> Vec<u8> {
    outer(list, &sign_over(user, &[LABEL, list].concat()))
}

fn sign_over(user: &UserIdentityKeyPair, message: &[u8]) -> Vec<u8> {
    SigningKey::from_bytes(&user.to_seed()).sign(message).to_bytes().to_vec()
}

fn verify(bytes: &[u8]) -> Result<DeviceList, DeviceListError> {
    SignedDeviceList::from_bytes(bytes)?.verify()
}

fn malformed<T>(error: DecodeError) -> Result<T, DeviceListError> {
    Err(DeviceListError::Malformed(error))
}

/// A protobuf field with a length-delimited payload.
fn ld(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(payload);
    out
}

/// Every other encoding of one list, each signed by the user key over its
/// very bytes, is refused: a list has one encoding, so one signature input.
#[test]
fn held_one_list_has_one_encoding() {
    let alice = user(1);
    let key = alice.public_key();
    let user_id = ld(0x0a, b"alice");
    let version = vec![0x10, 0x02];
    let uik = ld(0x1a, key.as_bytes());
    let entry = |id: u8, seed: u8| [vec![0x08, id], ld(0x12, device(seed).as_bytes())].concat();
    let (e1, e2) = (entry(1, 10), entry(2, 11));
    let (d1, d2) = (ld(0x22, &e1), ld(0x22, &e2));
    let canonical = [user_id.clone(), version.clone(), uik.clone(), d1.clone(), d2.clone()].concat();
    assert_eq!(canonical, proto(key.as_bytes(), 2, &[(1, 10), (2, 11)]).encode_to_vec());
    assert!(verify(&signed_bytes(&alice, &canonical)).is_ok());

    let entry_reversed = ld(0x22, &[ld(0x12, device(10).as_bytes()), vec![0x08, 1]].concat());
    let id_zero_given = ld(0x22, &[vec![0x08, 0], ld(0x12, device(10).as_bytes())].concat());
    let entry_unknown = ld(0x22, &[e1.clone(), vec![0x18, 1]].concat());
    let entry_id_wide = ld(0x22, &[vec![0x08, 0x81, 0x80, 0x80, 0x80, 0x10], ld(0x12, device(10).as_bytes())].concat());
    let mut long_len = vec![0x0a, 0x85, 0x00];
    long_len.extend_from_slice(b"alice");
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("version before user_id", [version.clone(), user_id.clone(), uik.clone(), d1.clone(), d2.clone()].concat()),
        ("devices before the key", [user_id.clone(), version.clone(), d1.clone(), d2.clone(), uik.clone()].concat()),
        ("a field between devices", [user_id.clone(), uik.clone(), d1.clone(), version.clone(), d2.clone()].concat()),
        (
            "version non-minimal",
            [user_id.clone(), vec![0x10, 0x82, 0x00], uik.clone(), d1.clone(), d2.clone()].concat(),
        ),
        ("user_id length non-minimal", [long_len, version.clone(), uik.clone(), d1.clone(), d2.clone()].concat()),
        (
            "version given twice",
            [user_id.clone(), vec![0x10, 0x01, 0x10, 0x02], uik.clone(), d1.clone(), d2.clone()].concat(),
        ),
        ("unknown field 5", [canonical.clone(), vec![0x28, 0x01]].concat()),
        ("entry fields reversed", [user_id.clone(), version.clone(), uik.clone(), entry_reversed, d2.clone()].concat()),
        (
            "device id 0 given",
            [user_id.clone(), version.clone(), uik.clone(), id_zero_given, ld(0x22, &entry(2, 11))].concat(),
        ),
        (
            "unknown field in an entry",
            [user_id.clone(), version.clone(), uik.clone(), entry_unknown, d2.clone()].concat(),
        ),
        ("device id over 32 bits", [user_id.clone(), version.clone(), uik.clone(), entry_id_wide, d2.clone()].concat()),
        ("version as fixed64", [user_id.clone(), vec![0x11, 2, 0, 0, 0, 0, 0, 0, 0], uik.clone(), d1, d2].concat()),
    ];
    for (name, bytes) in variants {
        assert_eq!(verify(&signed_bytes(&alice, &bytes)), malformed(DecodeError::Protobuf), "{name}");
    }

    // The outer layer likewise.
    let signature = sign_over(&alice, &[LABEL, &canonical].concat());
    let (list_field, sig_field) = (ld(0x0a, &canonical), ld(0x12, &signature));
    let mut list_long = vec![0x0a, 0x80 | (canonical.len() & 0x7f) as u8, 0x80 | (canonical.len() >> 7) as u8, 0];
    list_long.extend_from_slice(&canonical);
    let outer_variants: Vec<(&str, Vec<u8>)> = vec![
        ("signature first", [sig_field.clone(), list_field.clone()].concat()),
        ("unknown field 3", [list_field.clone(), sig_field.clone(), vec![0x18, 0x01]].concat()),
        ("a junk signature first", [list_field.clone(), ld(0x12, &[0; 64]), sig_field.clone()].concat()),
        ("list length non-minimal", [list_long, sig_field.clone()].concat()),
        ("trailing zero", [list_field.clone(), sig_field.clone(), vec![0]].concat()),
    ];
    for (name, bytes) in outer_variants {
        assert_eq!(verify(&bytes), malformed(DecodeError::Protobuf), "{name}");
    }
    assert!(verify(&[list_field, sig_field].concat()).is_ok());
}

/// The signature covers `DEVICE_LIST_LABEL || list`, exactly: not the list
/// alone, not another label, not a neighbouring list.
#[test]
fn held_the_signature_covers_exactly_the_label_and_the_list() {
    let alice = user(1);
    let key = alice.public_key();
    let good = proto(key.as_bytes(), 5, &[(1, 10), (2, 11)]).encode_to_vec();
    let other = proto(key.as_bytes(), 6, &[(1, 10), (2, 11), (3, 66)]).encode_to_vec();
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("the list alone", good.clone()),
        ("label || list || 0", [LABEL, &good, &[0]].concat()),
        ("label without its last byte", [&LABEL[..LABEL.len() - 1], &good].concat()),
        ("label || 0 || list", [LABEL, &[0], &good].concat()),
        ("the bundle label", [b"samizdat/v1/bundle".as_slice(), &good].concat()),
        ("the signed prekey label", [b"samizdat/v1/prekey/x25519-signed".as_slice(), &good].concat()),
        ("SHA-512 of label || list", Sha512::digest([LABEL, &good].concat()).to_vec()),
        ("another list", [LABEL, &other].concat()),
    ];
    for (name, message) in messages {
        let bytes = outer(&good, &sign_over(&alice, &message));
        assert_eq!(verify(&bytes), Err(DeviceListError::BadSignature), "{name}");
    }
    // A list's signature on another list.
    let moved = outer(&other, &sign_over(&alice, &[LABEL, &good].concat()));
    assert_eq!(verify(&moved), Err(DeviceListError::BadSignature));
    assert!(verify(&signed_bytes(&alice, &good)).is_ok());
}

/// Strict verification: `S + L`, a flipped sign of `R`, a small-order `R`.
#[test]
fn held_signature_malleability_is_refused() {
    let alice = user(1);
    let signed = list(&alice, 1, &[(1, 10)]);
    let bytes = signed.to_bytes();
    let parsed = wire::SignedDeviceList::decode(bytes.as_slice()).unwrap();
    let (r, s) = parsed.signature.split_at(32);
    // S + L (S < L, so this fits in 253 bits).
    let mut s_plus_l = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(GROUP_ORDER[i]) + carry;
        s_plus_l[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    let mut r_flipped = r.to_vec();
    r_flipped[31] ^= 0x80;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("S + L".into(), [r, s_plus_l.as_slice()].concat()),
        ("R's sign flipped".into(), [r_flipped.as_slice(), s].concat()),
    ];
    for encoding in SMALL_ORDER_ENCODINGS {
        cases.push((format!("R = {encoding}, S = 0"), [hex32(encoding).as_slice(), &[0; 32]].concat()));
        cases.push((format!("R = {encoding}, S kept"), [hex32(encoding).as_slice(), s].concat()));
    }
    for (name, signature) in cases {
        assert_eq!(verify(&outer(&parsed.list, &signature)), Err(DeviceListError::BadSignature), "{name}");
    }
    assert!(verify(&bytes).is_ok());
}

/// A user identity key of small order, in every encoding, is refused at L5,
/// even with the signature that verifies under the identity point for any
/// message (`R` = identity, `S` = 0).
#[test]
fn held_small_order_user_keys_are_refused_in_every_encoding() {
    let identity_point = hex32(SMALL_ORDER_ENCODINGS[4]);
    let universal = [identity_point.as_slice(), &[0; 32]].concat();
    for encoding in SMALL_ORDER_ENCODINGS {
        let key = hex32(encoding);
        assert!(UserIdentityKey::from_bytes(&key).is_err(), "{encoding}");
        let list = proto(&key, 1, &[(1, 10)]).encode_to_vec();
        assert_eq!(
            verify(&outer(&list, &universal)),
            malformed(DecodeError::InvalidValue("user_identity_key")),
            "{encoding}"
        );
        // And as a device's key.
        let mut with_device = proto(user(1).public_key().as_bytes(), 1, &[(1, 10)]);
        with_device.devices[0].identity_key = key.to_vec();
        assert_eq!(
            verify(&signed_bytes(&user(1), &with_device.encode_to_vec())),
            malformed(DecodeError::InvalidValue("devices.identity_key")),
            "{encoding}"
        );
    }
}

/// FINDING (low; spec and code disagree). PROTOCOL.md 23.2, L5 and L6: the
/// user identity key is "a valid point of full order (6.1)". The code
/// (`IdentityKey::from_bytes`) refuses small order only, as 6.1 says for a
/// device key, and accepts points of mixed order (`A + T`, `T` of order 8)
/// and non-canonical encodings (y >= p) of mixed-order points. 6.1 justifies
/// that for a device key by X25519's clamping; a user identity key is never
/// used in X25519, only to verify signatures, where a torsion component
/// makes cofactorless and cofactored verifiers disagree (the key's holder
/// can grind a signature valid for one and not the other) and gives the
/// same signer up to 8 distinct "user identities" (8 safety numbers). The
/// server gains nothing (it holds no secret for such a key).
///
/// Fix: either check the user identity key for torsion and canonical
/// encoding at L5 (`is_torsion_free` and re-compression equal to the
/// input), or write "not of small order (6.1; mixed order and y >= p are
/// accepted)" in L5 and L6 instead of "of full order".
#[test]
fn finding_mixed_order_user_identity_key_is_accepted() {
    let seed = [1u8; 32];
    let honest = VerifyingKey::from(&SigningKey::from_bytes(&seed));
    let torsion = VerifyingKey::from_bytes(&hex32(ORDER_8)).unwrap();
    let mixed = VerifyingKey::from(honest.to_edwards() + torsion.to_edwards());
    let expanded = ExpandedSecretKey::from(&seed);
    // The holder of the seed grinds a list whose k is a multiple of 8: the
    // torsion then vanishes from [k]A and the cofactorless check passes.
    let verified = (1..=400u64).find_map(|version| {
        let list = proto(mixed.as_bytes(), version, &[(1, 10)]).encode_to_vec();
        let signature = raw_sign::<Sha512>(&expanded, &[LABEL, &list].concat(), &mixed);
        verify(&outer(&list, &signature.to_bytes())).ok()
    });
    // Both prints show what the code does today.
    println!("list under a mixed-order user key verified: {}", verified.is_some());
    println!(
        "non-canonical mixed-order key accepted: {}",
        UserIdentityKey::from_bytes(&hex32(NON_CANONICAL_MIXED)).is_ok()
    );
    assert!(UserIdentityKey::from_bytes(mixed.as_bytes()).is_err(), "L5: a mixed-order user identity key");
    assert!(verified.is_none(), "L5: a list under a mixed-order user identity key verified");
    assert!(UserIdentityKey::from_bytes(&hex32(NON_CANONICAL_MIXED)).is_err(), "L5: y >= p");
}

/// No other signature input of the library can be a device list's: no
/// `samizdat/v1/...` label in the sources is a prefix of
/// `DEVICE_LIST_LABEL` or has it as a prefix, and the prekey and bundle
/// inputs (the other Ed25519 signatures by a long-term key) start with
/// their own labels. So even a seed used both as a device identity and as
/// a user identity (an app's mistake) gives no signature that crosses over.
#[test]
fn held_device_list_signatures_do_not_cross_protocols() {
    fn scan(dir: &Path, labels: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, labels);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (start, _) in text.match_indices("b\"samizdat/v1/") {
                    let rest = &text[start + 2..];
                    labels.insert(rest[..rest.find('"').unwrap()].to_owned());
                }
            }
        }
    }
    let mut labels = BTreeSet::new();
    scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut labels);
    let ours = std::str::from_utf8(LABEL).unwrap();
    assert!(labels.contains(ours), "{labels:?}");
    assert!(labels.len() > 20, "{labels:?}");
    // (The bare prefix "samizdat/v1/" appears in a test; it is no label.)
    for label in labels.iter().filter(|label| label.as_str() != ours && label.as_str() != "samizdat/v1/") {
        assert!(!label.starts_with(ours) && !ours.starts_with(label.as_str()), "{label}");
    }
    // The other signature inputs, built by the library.
    let seed = [1u8; 32];
    let inputs = [
        hazmat::prekey_signature_input(hazmat::SignedKind::X25519, 1, &[7; 32]),
        hazmat::prekey_signature_input(hazmat::SignedKind::MlKemOneTime, 1, &[7; 1568]),
        hazmat::prekey_signature_input(hazmat::SignedKind::MlKemLastResort, 1, &[7; 1568]),
        hazmat::bundle_signature_input(&[1; 32], "alice", 1, (1, &[2; 32]), None, (true, 1, &[7; 1568])),
    ];
    for input in &inputs {
        assert!(!input.starts_with(LABEL));
    }
    // A device list signature does not verify as a prekey signature under
    // the same key bytes, nor the reverse.
    let same = UserIdentityKeyPair::from_seed(&seed);
    let signed = list(&same, 1, &[(1, 10)]);
    let parsed = wire::SignedDeviceList::decode(signed.to_bytes().as_slice()).unwrap();
    let list_signature: [u8; 64] = parsed.signature.as_slice().try_into().unwrap();
    let public = *same.public_key().as_bytes();
    for input in &inputs {
        assert!(!hazmat::verify(&public, input, &list_signature));
        let prekey_signature = hazmat::sign(&seed, input);
        assert_eq!(verify(&outer(&parsed.list, &prekey_signature)), Err(DeviceListError::BadSignature));
    }
}

/// Every refusal of `update` and `trust_new_identity` leaves the trust
/// byte for byte as it was (`to_bytes`, the list, and `==`).
#[test]
fn held_every_refusal_leaves_the_trust_byte_identical() {
    let (alice, mallory) = (user(1), user(9));
    let key = alice.public_key();
    let held = list(&alice, 4, &[(1, 10), (2, 11)]);
    let trust = UserTrust::first_use("alice", &held).unwrap();
    let signed = |p: wire::DeviceList| SignedDeviceList::from_bytes(&signed_bytes(&alice, &p.encode_to_vec())).unwrap();
    let base = proto(key.as_bytes(), 9, &[(1, 10), (2, 11), (66, 66)]);
    let with = |edit: &dyn Fn(&mut wire::DeviceList)| {
        let mut p = base.clone();
        edit(&mut p);
        signed(p)
    };
    let mut bad_signature = list(&alice, 9, &[(1, 10), (66, 66)]).to_bytes();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x40;
    let mallory_list = |version| {
        DeviceList::new("alice", version, &mallory.public_key(), [(1, device(10)), (66, device(66))])
            .unwrap()
            .sign(&mallory)
            .unwrap()
    };
    // (list, refusal by update, refusal by trust_new_identity if any)
    let cases: Vec<(SignedDeviceList, DeviceListError, Option<DeviceListError>)> = vec![
        (with(&|p| p.user_id.clear()), DeviceListError::Malformed(DecodeError::InvalidValue("user_id")), None),
        (with(&|p| p.version = 0), DeviceListError::Malformed(DecodeError::InvalidValue("version")), None),
        (with(&|p| p.devices.clear()), DeviceListError::Malformed(DecodeError::InvalidValue("devices")), None),
        (
            with(&|p| p.devices.swap(0, 2)),
            DeviceListError::Malformed(DecodeError::InvalidValue("devices.device_id")),
            None,
        ),
        (
            with(&|p| p.devices[2].identity_key = p.devices[0].identity_key.clone()),
            DeviceListError::Malformed(DecodeError::InvalidValue("devices.identity_key")),
            None,
        ),
        (
            with(&|p| p.devices[2].identity_key = NOT_A_POINT.to_vec()),
            DeviceListError::Malformed(DecodeError::InvalidValue("devices.identity_key")),
            None,
        ),
        (
            with(&|p| p.user_identity_key = hex32(SMALL_ORDER_ENCODINGS[4]).to_vec()),
            DeviceListError::Malformed(DecodeError::InvalidValue("user_identity_key")),
            None,
        ),
        (SignedDeviceList::from_bytes(&bad_signature).unwrap(), DeviceListError::BadSignature, None),
        (
            list_for("bob", &alice, 9, &[(1, 66)]),
            DeviceListError::WrongUser { expected: "alice".into(), found: "bob".into() },
            None,
        ),
        (list(&alice, 3, &[(1, 10), (2, 11), (66, 66)]), DeviceListError::Rollback { seen: 4, offered: 3 }, None),
        (list(&alice, 4, &[(1, 10), (66, 66)]), DeviceListError::Equivocation { version: 4 }, None),
        // The pinned key's list at a lower version, through the app's
        // decision, is still a rollback.
        (
            list(&alice, 1, &[(1, 10), (66, 66)]),
            DeviceListError::Rollback { seen: 4, offered: 1 },
            Some(DeviceListError::Rollback { seen: 4, offered: 1 }),
        ),
        (
            list(&alice, 4, &[(66, 66)]),
            DeviceListError::Equivocation { version: 4 },
            Some(DeviceListError::Equivocation { version: 4 }),
        ),
        (mallory_list(99), DeviceListError::UntrustedUser { offered: mallory.public_key() }, None),
        (mallory_list(1), DeviceListError::UntrustedUser { offered: mallory.public_key() }, None),
    ];
    for (offered, error, by_decision) in cases {
        let mut updated = trust.clone();
        assert_eq!(updated.update(&offered), Err(error.clone()));
        assert_eq!(updated.to_bytes(), held.to_bytes(), "{error}");
        assert_eq!(updated, trust, "{error}");
        assert!(updated.check_device(66, &device(66)).is_err(), "{error}");
        let mut decided = trust.clone();
        let outcome = decided.trust_new_identity(&offered);
        match (&error, by_decision) {
            // The app's decision on a new key is the one way it is accepted.
            (DeviceListError::UntrustedUser { .. }, _) => {
                assert!(outcome.is_ok());
                assert_eq!(decided.user_identity_key(), &mallory.public_key());
            }
            (_, Some(expected)) => assert_eq!(outcome, Err(expected)),
            (_, None) => assert_eq!(outcome, Err(error.clone())),
        }
        if !matches!(error, DeviceListError::UntrustedUser { .. }) {
            assert_eq!(decided.to_bytes(), held.to_bytes(), "{error}");
            assert_eq!(decided, trust, "{error}");
        }
    }
    assert_eq!(trust.user_identity_key(), &key);
}

/// Two rules broken at once: the earlier one in PROTOCOL.md 23.2's table
/// is reported; then the order of `Update`'s refusals (23.3).
#[test]
fn held_checks_run_in_the_documented_order() {
    let alice = user(1);
    let key = alice.public_key();
    let good = proto(key.as_bytes(), 3, &[(1, 10), (2, 11)]);
    let sign = |p: &wire::DeviceList| signed_bytes(&alice, &p.encode_to_vec());
    let with = |edit: &dyn Fn(&mut wire::DeviceList)| {
        let mut p = good.clone();
        edit(&mut p);
        p
    };
    let short_sig = |list: &[u8]| outer(list, &[1; 63]);
    let non_canonical = [good.encode_to_vec(), vec![0x28, 0x01]].concat();
    let mut outer_non_canonical = short_sig(&good.encode_to_vec());
    outer_non_canonical.extend_from_slice(&[0x18, 0x01]);
    // L1 before L2.
    assert_eq!(
        verify(&[0xff; MAX_DEVICE_LIST_LEN + 1]),
        malformed(DecodeError::TooLarge { len: MAX_DEVICE_LIST_LEN + 1, max: MAX_DEVICE_LIST_LEN })
    );
    // L2 before L3; L3 before L4.
    assert_eq!(verify(&outer_non_canonical), malformed(DecodeError::Protobuf));
    assert_eq!(
        verify(&short_sig(&non_canonical)),
        malformed(DecodeError::InvalidLength { field: "signature", expected: 64, actual: 63 })
    );
    // L4 before L5.
    let short_key = with(&|p| p.user_identity_key.truncate(31));
    let bad = [short_key.encode_to_vec(), vec![0x28, 0x01]].concat();
    assert_eq!(verify(&signed_bytes(&alice, &bad)), malformed(DecodeError::Protobuf));
    // L5: the length, then the point; L5 before L6.
    let small = hex32(SMALL_ORDER_ENCODINGS[4]).to_vec();
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.user_identity_key.truncate(31);
            p.devices[0].identity_key = small.clone();
        }))),
        malformed(DecodeError::InvalidLength { field: "user_identity_key", expected: 32, actual: 31 })
    );
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.user_identity_key = small.clone();
            p.devices[0].identity_key.truncate(31);
        }))),
        malformed(DecodeError::InvalidValue("user_identity_key"))
    );
    // L6 in the devices' order.
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.devices[0].identity_key = NOT_A_POINT.to_vec();
            p.devices[1].identity_key.truncate(31);
        }))),
        malformed(DecodeError::InvalidValue("devices.identity_key"))
    );
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.devices[0].identity_key.truncate(31);
            p.devices[1].identity_key = NOT_A_POINT.to_vec();
        }))),
        malformed(DecodeError::InvalidLength { field: "devices.identity_key", expected: 32, actual: 31 })
    );
    // L6 before L7, L7 before L8, L8 before L9.
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.devices[1].identity_key = small.clone();
            p.user_id.clear();
        }))),
        malformed(DecodeError::InvalidValue("devices.identity_key"))
    );
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.user_id = "a".repeat(257);
            p.version = 0;
        }))),
        malformed(DecodeError::InvalidValue("user_id"))
    );
    // The device count comes before every key (the bound of 33 point
    // decodings; the order changed after this audit's finding 3).
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.version = 0;
            p.devices.clear();
        }))),
        malformed(DecodeError::InvalidValue("devices"))
    );
    assert_eq!(
        verify(&sign(&with(&|p| {
            p.user_identity_key.truncate(31);
            p.devices.clear();
        }))),
        malformed(DecodeError::InvalidValue("devices"))
    );
    // L9 before L10; L10 before L11; L11 before L12.
    let many: Vec<wire::DeviceEntry> = (1..=33u8)
        .rev()
        .map(|i| wire::DeviceEntry { device_id: u32::from(i), identity_key: device(i).as_bytes().to_vec() })
        .collect();
    assert_eq!(verify(&sign(&with(&|p| p.devices = many.clone()))), malformed(DecodeError::InvalidValue("devices")));
    assert_eq!(
        verify(&sign(&with(&|p| p.devices[1] = p.devices[0].clone()))),
        malformed(DecodeError::InvalidValue("devices.device_id"))
    );
    let duplicate = with(&|p| p.devices[1].identity_key = p.devices[0].identity_key.clone()).encode_to_vec();
    assert_eq!(verify(&outer(&duplicate, &[7; 64])), malformed(DecodeError::InvalidValue("devices.identity_key")));
    assert_eq!(verify(&outer(&good.encode_to_vec(), &[7; 64])), Err(DeviceListError::BadSignature));

    // Update: WrongUser before UntrustedUser, UntrustedUser before Rollback
    // and Equivocation.
    let mut trust = UserTrust::first_use("alice", &list(&alice, 3, &[(1, 10)])).unwrap();
    let mallory = user(9);
    assert!(matches!(trust.update(&list_for("bob", &mallory, 1, &[(1, 66)])), Err(DeviceListError::WrongUser { .. })));
    let mallory_old = DeviceList::new("alice", 2, &mallory.public_key(), [(1, device(66))]).unwrap().sign(&mallory);
    assert_eq!(
        trust.update(&mallory_old.unwrap()),
        Err(DeviceListError::UntrustedUser { offered: mallory.public_key() })
    );
    let mallory_same = DeviceList::new("alice", 3, &mallory.public_key(), [(1, device(66))]).unwrap().sign(&mallory);
    assert_eq!(
        trust.update(&mallory_same.unwrap()),
        Err(DeviceListError::UntrustedUser { offered: mallory.public_key() })
    );
}

/// `check_device` accepts exactly the listed (id, key) pairs: no id
/// collision, no key under a neighbouring id, the extreme ids included.
#[test]
fn held_check_device_accepts_exactly_the_listed_pairs() {
    let alice = user(0xf0);
    let ids: Vec<u32> = (0..32u32)
        .map(|i| match i {
            0 => 0,
            31 => u32::MAX,
            i => i.wrapping_mul(0x9e37_79b9) | 1,
        })
        .collect();
    let devices: Vec<(u32, u8)> = ids.iter().zip(1u8..).map(|(id, seed)| (*id, seed)).collect();
    let trust = UserTrust::first_use("alice", &list(&alice, 1, &devices)).unwrap();
    assert_eq!(trust.list().devices().len(), MAX_DEVICES_PER_USER);
    for &(id, seed) in &devices {
        assert_eq!(trust.check_device(id, &device(seed)), Ok(()));
        for &(other_id, other_seed) in &devices {
            if other_id != id {
                assert_eq!(
                    trust.check_device(other_id, &device(seed)),
                    Err(DeviceListError::UnlistedDevice { device_id: other_id })
                );
            }
            if other_seed != seed {
                assert!(trust.check_device(id, &device(other_seed)).is_err());
            }
        }
        for near in [id.wrapping_add(1), id.wrapping_sub(1)] {
            if !ids.contains(&near) {
                assert!(trust.check_device(near, &device(seed)).is_err());
            }
        }
        // The user key is not a device.
        let as_device = IdentityKey::from_bytes(user(0xf0).public_key().as_bytes()).unwrap();
        assert!(trust.check_device(id, &as_device).is_err());
    }
    assert_eq!(DeviceListError::UnlistedDevice { device_id: 0 }.kind(), ErrorKind::UntrustedIdentity);
}

/// The largest number of device entries with 32-byte keys (ids all 0, the
/// shortest user id and version) that fits in `MAX_DEVICE_LIST_LEN`, and
/// the signed bytes of such a list whose last key is `last`.
fn crowded_list(alice: &UserIdentityKeyPair, last: Option<[u8; 32]>) -> (usize, Vec<u8>) {
    let build = |n: usize| {
        let mut p = proto(alice.public_key().as_bytes(), 1, &[]);
        p.user_id = "a".into();
        p.devices = (0..n)
            .map(|i| wire::DeviceEntry {
                device_id: 0,
                identity_key: IdentityKeyPair::from_seed(&[
                    i as u8, 0xa5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8,
                    9, 0,
                ])
                .public_key()
                .as_bytes()
                .to_vec(),
            })
            .collect();
        if let (Some(key), Some(entry)) = (last, p.devices.last_mut()) {
            entry.identity_key = key.to_vec();
        }
        signed_bytes(alice, &p.encode_to_vec())
    };
    let n = (1..200).take_while(|&n| build(n).len() <= MAX_DEVICE_LIST_LEN).last().unwrap();
    (n, build(n))
}

/// FINDING (low; a documented bound is false). PROTOCOL.md 23.2: "every
/// earlier check is cheap and bounded (at most 33 point decodings)". L6
/// (decode every device key) runs before L9 (at most 32 devices), and the
/// 2,048-byte limit leaves room for 53 entries with 32-byte keys (all with
/// device id 0, itself refused only at L10): the code decodes 54 points
/// (decompression, small-order check and Montgomery conversion each)
/// before it refuses such a list. The cost stays bounded (about 1.6 times
/// the documented bound; `held_a_hostile_list_costs_about_one_honest_list`
/// times it), but the documented number is wrong.
///
/// Fix: count the entries (L9) before decoding their keys (reorder L6 and
/// L9 in the code, the table and the vectors), or state the true bound
/// (1 + 53 = 54 decodings) in 23.2.
#[test]
fn finding_a_hostile_list_decodes_more_than_33_points() {
    let alice = user(1);
    let (n, bytes) = crowded_list(&alice, Some(NOT_A_POINT));
    println!("{n} device entries fit in {MAX_DEVICE_LIST_LEN} bytes");
    assert!(n > MAX_DEVICES_PER_USER + 1);
    // The bad point is the last entry, far past the 32nd: if the code
    // decodes at most 33 points, it refuses the list before reaching it.
    assert_ne!(
        verify(&bytes),
        malformed(DecodeError::InvalidValue("devices.identity_key")),
        "entry {n}'s key was decoded: {} point decodings before the list was refused",
        n + 1
    );
}

/// The coarse cost of one hostile list: the most decodings any input can
/// force (the crowded list above), and a list at every limit with a bad
/// signature, each against the verification of an honest list at every
/// limit (33 decodings and one signature check). Minimum of many runs,
/// with a wide margin for a shared machine.
#[test]
fn held_a_hostile_list_costs_about_one_honest_list() {
    fn fastest(bytes: &[u8], runs: usize) -> Duration {
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                let _ = std::hint::black_box(verify(std::hint::black_box(bytes)));
                start.elapsed()
            })
            .min()
            .unwrap()
    }
    let alice = user(1);
    let mut honest = proto(alice.public_key().as_bytes(), u64::MAX, &[]);
    honest.user_id = "a".repeat(256);
    honest.devices = (0..32u32)
        .map(|i| wire::DeviceEntry {
            device_id: u32::MAX - 31 + i,
            identity_key: device(i as u8 + 1).as_bytes().to_vec(),
        })
        .collect();
    let honest_bytes = signed_bytes(&alice, &honest.encode_to_vec());
    assert!(verify(&honest_bytes).is_ok());
    let mut bad_signature = honest_bytes.clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let (_, crowded) = crowded_list(&alice, None);
    assert_eq!(verify(&crowded), malformed(DecodeError::InvalidValue("devices")));

    let runs = 40;
    let baseline = fastest(&honest_bytes, runs);
    let worst_decoding = fastest(&crowded, runs);
    let worst_signature = fastest(&bad_signature, runs);
    println!("honest {baseline:?}, crowded {worst_decoding:?}, bad signature {worst_signature:?}");
    assert!(worst_decoding <= baseline * 3, "crowded {worst_decoding:?} vs honest {baseline:?}");
    assert!(worst_signature <= baseline * 3, "bad signature {worst_signature:?} vs honest {baseline:?}");
    assert!(worst_decoding < Duration::from_millis(50));
}

/// `for_users` is exactly 23.4's derivation (recomputed here from the
/// text), never equals a device-level number for the same inputs, and its
/// scannable code never confirms a device-level one.
#[test]
fn held_user_safety_numbers_follow_23_4_and_never_match_device_numbers() {
    fn side(label: &[u8], user_id: &str, key: &[u8; 32]) -> [u8; 64] {
        let mut hash: [u8; 64] = Sha512::new()
            .chain_update(1u16.to_be_bytes())
            .chain_update(label)
            .chain_update(32u32.to_be_bytes())
            .chain_update(key)
            .chain_update((user_id.len() as u32).to_be_bytes())
            .chain_update(user_id.as_bytes())
            .finalize()
            .into();
        for _ in 1..5200 {
            hash = Sha512::new().chain_update(hash).chain_update(key).finalize().into();
        }
        hash
    }
    fn digits(fingerprint: &[u8; 64]) -> String {
        fingerprint
            .chunks_exact(5)
            .take(6)
            .map(|chunk| format!("{:05}", chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) % 100_000))
            .collect()
    }
    let user_label = b"samizdat/v1/user-safety-number";
    let device_label = b"samizdat/v1/safety-number";
    assert_eq!(user_label.len(), 30);
    assert_eq!(user_label[..12], device_label[..12]);
    assert_ne!(user_label[12], device_label[12]);
    for (a, b) in [(1u8, 2u8), (3, 4)] {
        let (ka, kb) = (user(a).public_key(), user(b).public_key());
        let number = SafetyNumber::for_users("alice", &ka, "bob", &kb);
        let (fa, fb) = (side(user_label, "alice", ka.as_bytes()), side(user_label, "bob", kb.as_bytes()));
        let (da, db) = (digits(&fa), digits(&fb));
        let expected = if da <= db { da + &db } else { db + &da };
        assert_eq!(number.digits(), expected);
        assert_eq!(number.scannable()[1..33], fa[..32]);
        assert_eq!(number.scannable()[33..], fb[..32]);
        // The same ids and key bytes as device identities.
        let as_device = hazmat::safety_number("alice", ka.as_bytes(), "bob", kb.as_bytes());
        assert_ne!(as_device.digits(), number.digits());
        let device_on_bob = hazmat::safety_number("bob", kb.as_bytes(), "alice", ka.as_bytes());
        assert_eq!(number.compare_scanned(&device_on_bob.scannable()), Err(ScanError::Mismatch(MismatchedSide::Both)));
        assert!(as_device.compare_scanned(&SafetyNumber::for_users("bob", &kb, "alice", &ka).scannable()).is_err());
        // The user id is bound: the same keys under swapped names differ.
        let swapped = SafetyNumber::for_users("bob", &ka, "alice", &kb);
        assert_ne!(swapped.digits(), number.digits());
    }
}

/// A server that answers a first contact with its own user identity key
/// for "alice" is accepted by `first_use` (trust on first use cannot tell),
/// and its ghost passes `check_device`; the per-user safety number is what
/// catches it: Alice's screen and Bob's never agree.
#[test]
fn held_a_first_use_substitution_shows_in_the_user_safety_number() {
    let (alice, bob, server) = (user(1), user(2), user(66));
    let forged = list(&server, 1, &[(1, 66)]);
    let trust = UserTrust::first_use("alice", &forged).unwrap();
    assert!(trust.check_device(1, &device(66)).is_ok());
    let on_bob = SafetyNumber::for_users("bob", &bob.public_key(), "alice", trust.user_identity_key());
    let on_alice = SafetyNumber::for_users("alice", &alice.public_key(), "bob", &bob.public_key());
    assert_ne!(on_bob.digits(), on_alice.digits());
    assert_eq!(on_bob.compare_scanned(&on_alice.scannable()), Err(ScanError::Mismatch(MismatchedSide::Remote)));
    // Once the real list arrives, it is UntrustedUser: the app must decide.
    let mut trust = trust;
    assert_eq!(
        trust.update(&list(&alice, 1, &[(1, 10)])),
        Err(DeviceListError::UntrustedUser { offered: alice.public_key() })
    );
}

/// PROTOCOL.md 23.1's claims about a stolen user key, checked: the same
/// version twice is `Equivocation`, an older one `Rollback`, and a thief's
/// higher version is accepted (as documented); a thief's list at
/// `u64::MAX` then shuts the real user out until a new user identity.
#[test]
fn held_the_stolen_key_limitation_is_as_documented() {
    let alice = user(1);
    let thief = UserIdentityKeyPair::from_seed(&alice.to_seed());
    let mut trust = UserTrust::first_use("alice", &list(&alice, 5, &[(1, 10)])).unwrap();
    assert_eq!(trust.update(&list(&thief, 5, &[(1, 10), (66, 66)])), Err(DeviceListError::Equivocation { version: 5 }));
    assert_eq!(
        trust.update(&list(&thief, 4, &[(1, 10), (66, 66)])),
        Err(DeviceListError::Rollback { seen: 5, offered: 4 })
    );
    let change = trust.update(&list(&thief, u64::MAX, &[(1, 10), (66, 66)])).unwrap();
    assert_eq!(change, ListChange { added: vec![(66, device(66))], removed: vec![] });
    assert!(trust.check_device(66, &device(66)).is_ok());
    // The real user cannot out-bid u64::MAX.
    assert_eq!(
        trust.update(&list(&alice, u64::MAX, &[(1, 10)])),
        Err(DeviceListError::Equivocation { version: u64::MAX })
    );
    assert_eq!(
        trust.update(&list(&alice, 6, &[(1, 10)])),
        Err(DeviceListError::Rollback { seen: u64::MAX, offered: 6 })
    );
    // A new user identity (seen in the safety number) starts again.
    let fresh = user(2);
    let change = trust.trust_new_identity(&list(&fresh, 1, &[(1, 10)])).unwrap();
    assert_eq!(change.removed, vec![(66, device(66))]);
    assert!(trust.check_device(66, &device(66)).is_err());
}

/// FINDING (medium), fixed by a new user identity (PROTOCOL.md 23.9). The
/// lost phone holds `UIK` too: whoever has it can sign a list at a higher
/// version that puts it back (or adds ghosts), and contacts accept it; a
/// list without it under the same key only stops a server that replays an
/// old list. The remedy is `replace_user_identity`: a new `UIK`, which
/// contacts trust after comparing the changed safety number; from then on
/// no list of the old key is accepted. (The device-API story is
/// `lost_device.rs`.)
#[test]
fn a_removed_device_re_adds_itself_until_the_user_identity_is_replaced() {
    let alice = user(1);
    let mut bob_trust = UserTrust::first_use("alice", &list(&alice, 1, &[(1, 10), (2, 11)])).unwrap();
    // The phone (device 2) is lost; the laptop publishes a list without it,
    // under the same user key.
    let change = bob_trust.update(&list(&alice, 2, &[(1, 10)])).unwrap();
    assert_eq!(change.removed, vec![(2, device(11))]);
    // Whoever found the phone reads UIK from it (every device holds it) and
    // lists it again, with a ghost: under the shared key, that is accepted
    // (the limit PROTOCOL.md 23.1 states).
    let uik_on_the_lost_phone = UserIdentityKeyPair::from_seed(&alice.to_seed());
    let readded = list(&uik_on_the_lost_phone, 3, &[(1, 10), (2, 11), (3, 66)]);
    assert!(bob_trust.clone().update(&readded).is_ok());
    // The remedy (23.9): a new user identity, which Bob trusts after the
    // users compared the new safety number. Then no list of the old key is
    // taken, whatever its version, and the phone is unlisted.
    let replaced = user(2);
    bob_trust.trust_new_identity(&list(&replaced, 3, &[(1, 10)])).unwrap();
    assert_eq!(bob_trust.update(&readded), Err(DeviceListError::UntrustedUser { offered: alice.public_key() }));
    let higher = list(&uik_on_the_lost_phone, 99, &[(1, 10), (2, 11)]);
    assert_eq!(bob_trust.update(&higher), Err(DeviceListError::UntrustedUser { offered: alice.public_key() }));
    assert!(bob_trust.check_device(2, &device(11)).is_err());
}

/// A second valid signature on the very list held (only the key's holder
/// can make one) changes nothing and keeps the bytes held.
#[test]
fn held_the_same_list_with_another_signature_changes_nothing() {
    let alice = user(1);
    let held = list(&alice, 2, &[(1, 10)]);
    let mut trust = UserTrust::first_use("alice", &held).unwrap();
    let list_bytes = wire::SignedDeviceList::decode(held.to_bytes().as_slice()).unwrap().list;
    let mut expanded = ExpandedSecretKey::from(&*alice.to_seed());
    expanded.hash_prefix = [0x42; 32];
    let verifying = VerifyingKey::from_bytes(alice.public_key().as_bytes()).unwrap();
    let other = raw_sign::<Sha512>(&expanded, &[LABEL, &list_bytes].concat(), &verifying).to_bytes();
    let again = SignedDeviceList::from_bytes(&outer(&list_bytes, &other)).unwrap();
    assert_ne!(again, held);
    assert!(again.verify().is_ok());
    assert_eq!(trust.update(&again), Ok(ListChange::default()));
    assert_eq!(trust.to_bytes(), held.to_bytes());
}

/// No secret in any `Debug` output: the seed and the expanded secret never
/// appear, in either form of `Debug`.
#[test]
fn held_debug_output_shows_no_secret() {
    let alice = user(0x5a);
    let seed = alice.to_seed();
    let expanded = Sha512::digest(seed.as_slice());
    let secrets = [hex::encode(seed.as_slice()), hex::encode(&expanded[..32]), hex::encode(&expanded[32..])];
    let signed = list(&alice, 1, &[(1, 10)]);
    let trust = UserTrust::first_use("alice", &signed).unwrap();
    let outputs = [
        format!("{alice:?}"),
        format!("{alice:#?}"),
        format!("{trust:?}"),
        format!("{trust:#?}"),
        format!("{signed:?}"),
        format!("{:?}", signed.verify().unwrap()),
        format!("{:?}", DeviceListError::UntrustedUser { offered: alice.public_key() }),
    ];
    for output in &outputs {
        for secret in &secrets {
            assert!(!output.contains(secret.as_str()), "{output}");
            assert!(!output.contains(&secret.to_uppercase()), "{output}");
        }
        // Nor the seed's bytes as a decimal array.
        assert!(!output.contains(&format!("{:?}", seed.as_slice())), "{output}");
    }
    assert!(outputs[0].contains(&alice.public_key().to_string()));
}

/// xorshift64*: a fixed stream, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            2 if !bytes.is_empty() => bytes.truncate(rng.below(bytes.len())),
            3 => {
                let i = rng.below(bytes.len() + 1);
                bytes.insert(i, rng.next() as u8);
            }
            4 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes.remove(i);
            }
            5 if bytes.len() > 2 => {
                let (a, b) = (rng.below(bytes.len()), rng.below(bytes.len()));
                let (a, b) = (a.min(b), a.max(b));
                let copy = bytes[a..b].to_vec();
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, copy);
            }
            _ => bytes.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
        }
    }
}

/// Random and mutated inputs through `SignedDeviceList::from_bytes`,
/// `verify`, `UserTrust::first_use`, `update`, `trust_new_identity` and
/// `from_bytes`: no panic, every refusal leaves the trust unchanged, and
/// no accepted list changes the pinned key or lowers the version.
/// Mutations of the inner list are signed again by the user key, so that
/// they reach the checks after the signature.
#[test]
fn held_no_panic_and_no_state_change_on_hostile_inputs() {
    let (alice, mallory) = (user(1), user(9));
    let key = alice.public_key();
    let start = list(&alice, 3, &[(1, 10), (2, 11)]);
    let trust = UserTrust::first_use("alice", &start).unwrap();
    let mut rng = Rng(0x5eed_0fa0_d17a_0001_u64);
    let key_pool: Vec<Vec<u8>> = [
        vec![device(10).as_bytes().to_vec(), device(11).as_bytes().to_vec(), device(12).as_bytes().to_vec()],
        vec![key.as_bytes().to_vec(), mallory.public_key().as_bytes().to_vec(), NOT_A_POINT.to_vec(), vec![7; 31]],
        vec![hex32(NON_CANONICAL_MIXED).to_vec(), vec![]],
        SMALL_ORDER_ENCODINGS.iter().map(|e| hex32(e).to_vec()).collect(),
    ]
    .concat();
    let seeds = [
        start.to_bytes(),
        list(&alice, 4, &[(1, 10), (3, 12)]).to_bytes(),
        list(&alice, u64::MAX, &[(u32::MAX, 12)]).to_bytes(),
        list(&mallory, 7, &[(1, 10)]).to_bytes(),
        list_for("bob", &alice, 9, &[(0, 10)]).to_bytes(),
    ];
    let (mut accepted, mut iterations) = (0usize, 0usize);
    let check = |bytes: &[u8], accepted: &mut usize| {
        let Ok(signed) = SignedDeviceList::from_bytes(bytes) else {
            assert!(UserTrust::from_bytes("alice", bytes).is_err());
            return;
        };
        let verified = signed.verify();
        let _ = UserTrust::first_use("alice", &signed);
        let _ = UserTrust::from_bytes("alice", bytes);
        let mut updated = trust.clone();
        match updated.update(&signed) {
            Err(_) => {
                assert_eq!(updated.to_bytes(), start.to_bytes());
                assert_eq!(updated, trust);
            }
            Ok(change) => {
                *accepted += 1;
                let list = verified.as_ref().unwrap();
                assert_eq!(updated.user_identity_key(), &key);
                assert!(updated.list().version() >= 3);
                assert_eq!(updated.list(), list);
                if list.version() == 3 {
                    assert!(change.is_empty());
                }
                for (id, device_key) in list.devices() {
                    assert!(updated.check_device(*id, device_key).is_ok());
                }
            }
        }
        let mut decided = trust.clone();
        match decided.trust_new_identity(&signed) {
            Err(_) => assert_eq!(decided, trust),
            Ok(_) => {
                let list = verified.as_ref().unwrap();
                assert_eq!(decided.list(), list);
                if list.user_identity_key() == &key {
                    assert!(list.version() >= 3);
                }
            }
        }
    };
    for _ in 0..4000 {
        iterations += 1;
        match rng.below(3) {
            // The signed bytes, mutated.
            0 => {
                let mut bytes = seeds[rng.below(seeds.len())].clone();
                mutate(&mut rng, &mut bytes);
                check(&bytes, &mut accepted);
            }
            // The list inside, mutated, then signed by the user key.
            1 => {
                let seed = wire::SignedDeviceList::decode(seeds[rng.below(seeds.len())].as_slice()).unwrap();
                let mut inner = seed.list;
                mutate(&mut rng, &mut inner);
                check(&signed_bytes(&alice, &inner), &mut accepted);
            }
            // A list made of random fields, signed by the user key.
            _ => {
                let n = rng.below(40);
                let mut p = proto(&key_pool[rng.below(5)], 0, &[]);
                p.user_id = ["alice", "bob", "", "alicé", "alice\0"][rng.below(5)].into();
                p.version = [0, 1, 2, 3, 4, 1000, u64::MAX, rng.next()][rng.below(8)];
                p.devices = (0..n)
                    .map(|i| wire::DeviceEntry {
                        device_id: if rng.below(4) == 0 { rng.next() as u32 } else { i as u32 + 1 },
                        identity_key: key_pool[rng.below(key_pool.len())].clone(),
                    })
                    .collect();
                let signer = if rng.below(4) == 0 { &mallory } else { &alice };
                let mut bytes = signed_bytes(signer, &p.encode_to_vec());
                if rng.below(8) == 0 {
                    mutate(&mut rng, &mut bytes);
                }
                check(&bytes, &mut accepted);
            }
        }
    }
    // Pure noise too.
    for _ in 0..2000 {
        let len = rng.below(MAX_DEVICE_LIST_LEN + 64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&bytes, &mut accepted);
    }
    println!("{iterations} mutated inputs, {accepted} accepted by update");
    assert!(accepted > 0, "the generator reached no accepted list");
}
