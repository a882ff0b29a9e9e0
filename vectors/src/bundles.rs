//! Prekey signatures and bundles.

use chacha20::ChaCha20Rng;
use samizdat::{
    address::Address,
    hazmat::{self, FixedBytes, SignedKind},
    keys::IdentityKeyPair,
    prekeys::{ConsumedPreKeys, PreKeyBundle, PreKeySet},
    user::{DeviceList, SignedDeviceList, UserIdentityKeyPair},
};
use samizdat_proto::{Message as _, wire as pb};
use serde::{Deserialize, Serialize};
use std::time::UNIX_EPOCH;

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, check_drawn, err, h, random, random_hex},
};

/// `prekey_signatures.json`.
pub(crate) struct PreKeySignatures;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct SignatureCase {
    name: String,
    identity_seed: String,
    kind: String,
    id: u32,
    public_key: String,
    identity_key: String,
    signature_input: String,
    signature: String,
    verifies_as: VerifiesAs,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct VerifiesAs {
    x25519_signed: bool,
    mlkem1024_one_time: bool,
    mlkem1024_last_resort: bool,
}

const KINDS: [(&str, SignedKind); 3] = [
    ("x25519_signed", SignedKind::X25519),
    ("mlkem1024_one_time", SignedKind::MlKemOneTime),
    ("mlkem1024_last_resort", SignedKind::MlKemLastResort),
];

fn kind_of(name: &str) -> R<SignedKind> {
    KINDS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k).ok_or_else(|| err("kind", format!("unknown kind {name:?}")))
}

impl VectorSet for PreKeySignatures {
    type Case = SignatureCase;
    const META: Meta = Meta {
        file: "prekey_signatures.json",
        section: "6.8 Prekey signatures; 3 Labels and constants",
        description: "signature_input = label || u32be(id) || public_key, with the label of the key's kind: \
            \"samizdat/v1/prekey/x25519-signed\", \"samizdat/v1/prekey/mlkem1024-one-time\" or \
            \"samizdat/v1/prekey/mlkem1024-last-resort\". signature = Ed25519 (RFC 8032, deterministic) of \
            signature_input by the identity of identity_seed, whose public key is identity_key. `verifies_as` \
            checks the signature, with strict verification, against the signature input of each kind for the same \
            id and key: it verifies only as its own kind. The first case is the example of PROTOCOL.md 6.8.",
        seed: 9,
        inputs: &["name", "identity_seed", "kind", "id", "public_key"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<SignatureCase>, VErr> {
        let seed = random_hex(rng, 32);
        let case = |name: &str, kind: &str, id: u32, public_key: String| SignatureCase {
            name: name.to_owned(),
            identity_seed: seed.clone(),
            kind: kind.to_owned(),
            id,
            public_key,
            ..SignatureCase::default()
        };
        let x = h(hazmat::x25519_public(&random::<32>(rng)));
        // PROTOCOL.md 6.8's example: identity seed 01 * 32, signed prekey secret 02 * 32, id 1.
        let example = SignatureCase {
            name: "protocol_example".to_owned(),
            identity_seed: h([1u8; 32]),
            kind: "x25519_signed".to_owned(),
            id: 1,
            public_key: h(hazmat::x25519_public(&[2u8; 32])),
            ..SignatureCase::default()
        };
        let (_, pq_one_time) = hazmat::mlkem_keygen(&random::<64>(rng));
        let (_, pq_last_resort) = hazmat::mlkem_keygen(&random::<64>(rng));
        Ok(vec![
            example,
            case("x25519_signed", "x25519_signed", 1, x.clone()),
            case("x25519_signed_id_max", "x25519_signed", u32::MAX, x),
            case("mlkem1024_one_time", "mlkem1024_one_time", 4, h(&pq_one_time)),
            case("mlkem1024_last_resort", "mlkem1024_last_resort", 2, h(&pq_last_resort)),
        ])
    }

    fn compute(case: &SignatureCase) -> R<SignatureCase> {
        let seed = array::<32>("identity_seed", &case.identity_seed)?;
        let key = bytes("public_key", &case.public_key)?;
        let kind = kind_of(&case.kind)?;
        let (identity, _, _) = hazmat::identity_forms(&seed);
        let input = hazmat::prekey_signature_input(kind, case.id, &key);
        let signature = hazmat::sign(&seed, &input);
        let verifies =
            |k: SignedKind| hazmat::verify(&identity, &hazmat::prekey_signature_input(k, case.id, &key), &signature);
        Ok(SignatureCase {
            name: case.name.clone(),
            identity_seed: case.identity_seed.clone(),
            kind: case.kind.clone(),
            id: case.id,
            public_key: case.public_key.clone(),
            identity_key: h(identity),
            signature_input: h(&input),
            signature: h(signature),
            verifies_as: VerifiesAs {
                x25519_signed: verifies(SignedKind::X25519),
                mlkem1024_one_time: verifies(SignedKind::MlKemOneTime),
                mlkem1024_last_resort: verifies(SignedKind::MlKemLastResort),
            },
        })
    }
}

/// The random bytes a device's prekey set draws, in order: the signed
/// prekey and the last-resort ML-KEM key (when the set is made), then one
/// one-time X25519 prekey and one one-time ML-KEM key.
#[derive(Serialize, Deserialize, Default, Clone)]
pub(crate) struct PreKeyRandomness {
    pub(crate) signed_prekey_secret: String,
    pub(crate) last_resort_d_z: String,
    pub(crate) one_time_prekey_secret: String,
    pub(crate) pq_one_time_d_z: String,
}

impl PreKeyRandomness {
    pub(crate) fn draw(rng: &mut ChaCha20Rng) -> Self {
        Self {
            signed_prekey_secret: random_hex(rng, 32),
            last_resort_d_z: random_hex(rng, 64),
            one_time_prekey_secret: random_hex(rng, 32),
            pq_one_time_d_z: random_hex(rng, 64),
        }
    }
}

/// Which prekeys a bundle offers.
#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PqOffer {
    /// A one-time ML-KEM key.
    #[default]
    OneTime,
    /// The last-resort ML-KEM key.
    LastResort,
}

/// A device's identity, prekeys and the bundle it offers.
pub(crate) struct Device {
    pub(crate) identity: IdentityKeyPair,
    pub(crate) prekeys: PreKeySet,
    pub(crate) bundle: PreKeyBundle,
}

/// Builds a prekey set from scripted randomness with the public API: ids are
/// given out from 1 in the order the keys are made (signed prekey 1,
/// last-resort key 2, one-time X25519 key 3, one-time ML-KEM key 4); the
/// one-time keys a bundle should not offer are consumed.
pub(crate) fn device(
    field: &str,
    seed: &[u8; 32],
    address: &Address,
    random: &PreKeyRandomness,
    one_time_prekey: bool,
    pq: PqOffer,
) -> R<Device> {
    let identity = IdentityKeyPair::from_seed(seed);
    let mut first = bytes(&format!("{field}.signed_prekey_secret"), &random.signed_prekey_secret)?;
    first.extend_from_slice(&bytes(&format!("{field}.last_resort_d_z"), &random.last_resort_d_z)?);
    let mut rng = FixedBytes::new(&first);
    let mut prekeys = PreKeySet::new(&mut rng, &identity, UNIX_EPOCH);
    check_drawn(field, &rng, first.len())?;
    let mut second = bytes(&format!("{field}.one_time_prekey_secret"), &random.one_time_prekey_secret)?;
    second.extend_from_slice(&bytes(&format!("{field}.pq_one_time_d_z"), &random.pq_one_time_d_z)?);
    let mut rng = FixedBytes::new(&second);
    let (classic, post_quantum) = prekeys
        .add_one_time_prekeys(&mut rng, &identity, 1, UNIX_EPOCH)
        .map_err(|e| err(field, format!("prekeys refused: {e}")))?;
    check_drawn(field, &rng, second.len())?;
    prekeys.consume(&ConsumedPreKeys {
        one_time: if one_time_prekey { None } else { classic.first().copied() },
        pq_one_time: if pq == PqOffer::LastResort { post_quantum.first().copied() } else { None },
        ..ConsumedPreKeys::default()
    });
    let bundle = prekeys.bundle(&identity, address).ok_or_else(|| err(field, "no bundle"))?;
    Ok(Device { identity, prekeys, bundle })
}

/// `bundles.json`.
pub(crate) struct Bundles;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct BundleCase {
    name: String,
    identity_seed: String,
    user_id: String,
    device_id: u32,
    prekey_randomness: PreKeyRandomness,
    offer_one_time_prekey: bool,
    pq_prekey: PqOffer,
    /// The owner's user's signed device list the bundle carries (the
    /// protobuf SignedDeviceList, hex), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_list: Option<String>,
    identity_key: String,
    signed_prekey_id: u32,
    signed_prekey: String,
    signed_prekey_signature: String,
    one_time_prekey_id: Option<u32>,
    one_time_prekey: Option<String>,
    pq_prekey_id: u32,
    pq_prekey_last_resort: bool,
    pq_prekey_public: String,
    pq_prekey_signature: String,
    bundle_signature_input: String,
    bundle_signature: String,
    encoded: String,
}

impl VectorSet for Bundles {
    type Case = BundleCase;
    const META: Meta = Meta {
        file: "bundles.json",
        section: "6.7 Prekey ids; 6.9 Managing the prekey set; 6.10 Which keys a bundle offers; 7 Bundles (7.1 encoding, 7.2 parsing and verification)",
        description: "A device's bundle from its identity seed and the random bytes its prekeys were made from, \
            `prekey_randomness`, drawn in this order (PROTOCOL.md 6.9): NewPreKeySet makes the signed prekey (id 1) \
            from signed_prekey_secret and the last-resort ML-KEM key (id 2) from last_resort_d_z (d || z); \
            AddOneTimePreKeys with count 1 then makes the one-time X25519 prekey (id 3) from one_time_prekey_secret \
            and the one-time ML-KEM key (id 4) from pq_one_time_d_z. Then the one-time keys the case does not offer \
            are consumed (Consume, 6.11, as a committed handshake that named them would): id 3 when \
            offer_one_time_prekey is false, id 4 when pq_prekey is \"last_resort\". The bundle is the default one \
            (n = 0, 6.10) of the set that is left: the one-time X25519 prekey if it is still held (else \
            one_time_prekey_id and one_time_prekey are null), the one-time ML-KEM key if it is still held, else the \
            last-resort key (pq_prekey_last_resort). `encoded` is the bundle as a server hands it out: 0x01 then the protobuf samizdat.wire.v1.PreKeyBundle \
            (canonical: fields in order, defaults omitted). Public keys are X25519(secret, 9) and ML-KEM.KeyGen(d, z); \
            signatures as in prekey_signatures.json. bundle_signature_input = \"samizdat/v1/bundle\" || identity_key || \
            u32be(len(user_id)) || user_id || u32be(device_id) || u32be(signed_prekey_id) || signed_prekey || (0x00, \
            or 0x01 || u32be(one_time_prekey_id) || one_time_prekey) || (0x01 one-time or 0x02 last resort) || \
            u32be(pq_prekey_id) || pq_prekey_public; bundle_signature is its Ed25519 signature by the identity. A case \
            with `device_list` (an input: a SignedDeviceList as device_lists.json signs it, of the bundle's user id) \
            carries it in field 8 (`0x42 varint(len) device_list`, after the signature, which does not cover it); \
            the other cases have no field 8. The encoded bundle must parse and verify (with its list: 7.2 check 21).",
        seed: 10,
        inputs: &[
            "name",
            "identity_seed",
            "user_id",
            "device_id",
            "prekey_randomness",
            "offer_one_time_prekey",
            "pq_prekey",
            "device_list",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<BundleCase>, VErr> {
        let mut case = |name: &str, user_id: &str, device_id: u32, opk: bool, pq: PqOffer| BundleCase {
            name: name.to_owned(),
            identity_seed: random_hex(rng, 32),
            user_id: user_id.to_owned(),
            device_id,
            prekey_randomness: PreKeyRandomness::draw(rng),
            offer_one_time_prekey: opk,
            pq_prekey: pq,
            ..BundleCase::default()
        };
        let mut cases = vec![
            case("one_time_keys", "bob", 1, true, PqOffer::OneTime),
            case("no_one_time_prekey", "bob", 2, false, PqOffer::OneTime),
            case("one_time_prekey_last_resort", "carol@example.org", 0, true, PqOffer::LastResort),
            case("last_resort_only", "Zoë", u32::MAX, false, PqOffer::LastResort),
        ];
        // A bundle of Bob's device 3 with his list (version 2: devices 1 and
        // 3, the other one's key drawn too), under a user key drawn here.
        let mut listed = case("with_device_list", "bob", 3, true, PqOffer::OneTime);
        let user = UserIdentityKeyPair::from_seed(&array::<32>("user_seed", &random_hex(rng, 32))?);
        let other = IdentityKeyPair::from_seed(&array::<32>("other_seed", &random_hex(rng, 32))?).public_key();
        let own = IdentityKeyPair::from_seed(&array::<32>("identity_seed", &listed.identity_seed)?).public_key();
        let list = DeviceList::new("bob", 2, &user.public_key(), [(1, other), (3, own)])
            .and_then(|list| list.sign(&user))
            .map_err(|e| err("device_list", e.to_string()))?;
        listed.device_list = Some(h(list.to_bytes()));
        cases.push(listed);
        Ok(cases)
    }

    fn compute(case: &BundleCase) -> R<BundleCase> {
        let seed = array::<32>("identity_seed", &case.identity_seed)?;
        let address = Address::new(case.user_id.clone(), case.device_id).map_err(|e| err("user_id", e.to_string()))?;
        let dev = device(
            "prekey_randomness",
            &seed,
            &address,
            &case.prekey_randomness,
            case.offer_one_time_prekey,
            case.pq_prekey,
        )?;
        let plain = dev.bundle.to_bytes();
        let encoded = match &case.device_list {
            None => plain.clone(),
            Some(text) => {
                let list = bytes("device_list", text)?;
                let signed = SignedDeviceList::from_bytes(&list).map_err(|e| err("device_list", e.to_string()))?;
                let with =
                    dev.bundle.clone().with_device_list(&signed).map_err(|e| err("device_list", e.to_string()))?;
                let encoded = with.to_bytes();
                // Field 8 after the rest, the rest unchanged.
                let mut expected = plain.clone();
                let _ = pb::PreKeyBundle { device_list: list, ..pb::PreKeyBundle::default() }.encode(&mut expected);
                agree("encoded", &encoded, &expected)?;
                encoded
            }
        };
        let parsed = PreKeyBundle::from_bytes(&encoded).map_err(|e| err("encoded", format!("rejected: {e}")))?;
        agree("encoded", &parsed.to_bytes(), &encoded)?;
        if parsed.device_list().map(SignedDeviceList::to_bytes)
            != case.device_list.as_deref().map(|t| bytes("device_list", t)).transpose()?
        {
            return Err(err("encoded", "the parsed bundle does not carry the list"));
        }
        let message = pb::PreKeyBundle::decode(encoded.get(1..).unwrap_or_default())
            .map_err(|e| err("encoded", format!("not a protobuf bundle: {e}")))?;
        let spk = message.signed_prekey.unwrap_or_default();
        let pq = message.pq_prekey.unwrap_or_default();
        // The same values from the single steps.
        let (identity, _, _) = hazmat::identity_forms(&seed);
        agree("identity_key", &message.identity_key, &identity)?;
        let random = &case.prekey_randomness;
        let spk_secret = array::<32>("prekey_randomness.signed_prekey_secret", &random.signed_prekey_secret)?;
        agree("signed_prekey", &spk.public_key, &hazmat::x25519_public(&spk_secret))?;
        let spk_input = hazmat::prekey_signature_input(SignedKind::X25519, spk.id, &spk.public_key);
        agree("signed_prekey_signature", &spk.signature, &hazmat::sign(&seed, &spk_input))?;
        let d_z = match case.pq_prekey {
            PqOffer::OneTime => array::<64>("prekey_randomness.pq_one_time_d_z", &random.pq_one_time_d_z)?,
            PqOffer::LastResort => array::<64>("prekey_randomness.last_resort_d_z", &random.last_resort_d_z)?,
        };
        agree("pq_prekey_public", &pq.public_key, &hazmat::mlkem_keygen(&d_z).1)?;
        let kind = if pq.last_resort { SignedKind::MlKemLastResort } else { SignedKind::MlKemOneTime };
        let pq_input = hazmat::prekey_signature_input(kind, pq.id, &pq.public_key);
        agree("pq_prekey_signature", &pq.signature, &hazmat::sign(&seed, &pq_input))?;
        if let Some(opk) = &message.one_time_prekey {
            let secret = array::<32>("prekey_randomness.one_time_prekey_secret", &random.one_time_prekey_secret)?;
            agree("one_time_prekey", &opk.public_key, &hazmat::x25519_public(&secret))?;
        }
        let one_time = match &message.one_time_prekey {
            Some(opk) => Some((opk.id, array::<32>("one_time_prekey", &h(&opk.public_key))?)),
            None => None,
        };
        let bundle_input = hazmat::bundle_signature_input(
            &array::<32>("identity_key", &h(&message.identity_key))?,
            &message.user_id,
            message.device_id,
            (spk.id, &array::<32>("signed_prekey", &h(&spk.public_key))?),
            one_time.as_ref().map(|(id, key)| (*id, key)),
            (pq.last_resort, pq.id, &pq.public_key),
        );
        agree("bundle_signature", &message.signature, &hazmat::sign(&seed, &bundle_input))?;
        Ok(BundleCase {
            name: case.name.clone(),
            identity_seed: case.identity_seed.clone(),
            user_id: case.user_id.clone(),
            device_id: case.device_id,
            prekey_randomness: case.prekey_randomness.clone(),
            offer_one_time_prekey: case.offer_one_time_prekey,
            pq_prekey: case.pq_prekey,
            device_list: case.device_list.clone(),
            identity_key: h(&message.identity_key),
            signed_prekey_id: spk.id,
            signed_prekey: h(&spk.public_key),
            signed_prekey_signature: h(&spk.signature),
            one_time_prekey_id: message.one_time_prekey.as_ref().map(|k| k.id),
            one_time_prekey: message.one_time_prekey.as_ref().map(|k| h(&k.public_key)),
            pq_prekey_id: pq.id,
            pq_prekey_last_resort: pq.last_resort,
            pq_prekey_public: h(&pq.public_key),
            pq_prekey_signature: h(&pq.signature),
            bundle_signature_input: h(&bundle_input),
            bundle_signature: h(&message.signature),
            encoded: h(&encoded),
        })
    }
}
