//! Linking a new device (PROTOCOL.md 23.8).
//!
//! Every code and every link message is made twice: by the library (its
//! `hazmat` link calls) and here from the formula alone (the protobuf built
//! field by field, X25519 with `curve25519-dalek`, HKDF-SHA256 with `hkdf`,
//! the padding of stored values by hand, ChaCha20-Poly1305 with its crate).
//! The file is not written if they disagree. Each `open` case gives the
//! library's result for a message, the genuine one or one altered or made
//! for another code.

use chacha20::ChaCha20Rng;
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use samizdat::{
    hazmat,
    user::{DeviceListError, LinkError},
};
use samizdat_proto::prost::Message as _;
use samizdat_proto::wire;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    device_lists::{by_hand, device_key},
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, chacha20poly1305_seal, decode_error, err, h, random},
};

/// `linking.json`.
pub(crate) struct Linking;

const LINK_LABEL: &[u8] = b"samizdat/v1/link";

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum LinkCase {
    /// The code of an offer, and the code read back.
    Code {
        name: String,
        user_id: String,
        device_id: u32,
        identity_seed: String,
        offer_secret_key: String,
        secret: String,
        created_at: u64,
        #[serde(default)]
        identity_key: String,
        #[serde(default)]
        offer_public_key: String,
        #[serde(default)]
        code: String,
    },
    /// A code given to the reader (checks C1 to C7).
    ReadCode {
        name: String,
        code: String,
        #[serde(default)]
        result: Value,
    },
    /// A provisioning sealed to a code, and opened by the offer.
    Seal {
        name: String,
        user_id: String,
        device_id: u32,
        identity_seed: String,
        offer_secret_key: String,
        secret: String,
        created_at: u64,
        linker_secret_key: String,
        user_identity_seed: String,
        device_list: String,
        pinned: Vec<String>,
        linker_device_id: u32,
        #[serde(default)]
        code: String,
        #[serde(default)]
        linker_public_key: String,
        #[serde(default)]
        shared: String,
        #[serde(default)]
        key: String,
        #[serde(default)]
        nonce: String,
        #[serde(default)]
        plaintext: String,
        #[serde(default)]
        message: String,
    },
    /// A message given to an offer (checks K4 to K10).
    Open {
        name: String,
        user_id: String,
        device_id: u32,
        identity_seed: String,
        offer_secret_key: String,
        secret: String,
        created_at: u64,
        message: String,
        #[serde(default)]
        result: Value,
    },
}

impl VectorSet for Linking {
    type Case = LinkCase;
    const META: Meta = Meta {
        file: "linking.json",
        section: "23.8 Linking a new device",
        description: "`code`: the offer of the device (user_id, device_id) whose identity key is the Ed25519 public \
            key of `identity_seed`, with X25519 secret key `offer_secret_key`, `secret` and `created_at`: `code` is \
            the canonical protobuf LinkCode { 1 version = 1, 2 user_id, 3 device_id, 4 identity_key, 5 \
            ephemeral_key (the X25519 public key), 6 secret, 7 created_at }. `read_code`: checks C1 to C7 on `code`: \
            ok, or the error. `seal`: the linking device's X25519 secret key `linker_secret_key` seals the \
            provisioning (LinkProvisioning { 1 user_identity_seed, 2 device_list, 3 pinned (repeated), 4 \
            linker_device_id }) to the offer's code: shared = X25519(linker, offer), key || nonce = \
            HKDF-SHA256(salt = secret, ikm = shared, info = \"samizdat/v1/link\" || code || linker public key, L = \
            44), message = 0x01 || linker public key || ChaCha20-Poly1305(key, nonce, pad_row(plaintext), AD = \
            \"samizdat/v1/link\" || linker public key), pad_row = plaintext || 0x80 || zeros to max(512, bucket) \
            (5.1 buckets). `open`: the offer given `message`: {ok: what it carries} or the first check of K4 to K10 \
            that fails (wrong_code, malformed_message, provisioning).",
        seed: 24,
        inputs: &[
            "operation",
            "name",
            "user_id",
            "device_id",
            "identity_seed",
            "offer_secret_key",
            "secret",
            "created_at",
            "linker_secret_key",
            "user_identity_seed",
            "device_list",
            "pinned",
            "linker_device_id",
            "message",
            "code",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<LinkCase>, VErr> {
        let identity_seed = random::<32>(rng);
        let offer_secret = random::<32>(rng);
        let secret = random::<32>(rng);
        let linker_secret = random::<32>(rng);
        let user_seed = random::<32>(rng);
        let other_user_seed = random::<32>(rng);
        let phone_key = device_key(&random::<32>(rng));
        let laptop_key = device_key(&identity_seed);
        let created_at = 1_800_000_000;
        let code = |name: &str, user_id: &str, device_id: u32, created_at: u64| LinkCase::Code {
            name: name.to_owned(),
            user_id: user_id.to_owned(),
            device_id,
            identity_seed: h(identity_seed),
            offer_secret_key: h(offer_secret),
            secret: h(secret),
            created_at,
            identity_key: String::new(),
            offer_public_key: String::new(),
            code: String::new(),
        };
        let genuine_code = code_by_hand(&Offer {
            user_id: "alice",
            device_id: 2,
            identity_key: laptop_key,
            offer_secret,
            secret,
            created_at,
        });
        let read = |name: &str, code: Vec<u8>| LinkCase::ReadCode {
            name: name.to_owned(),
            code: h(code),
            result: Value::Null,
        };
        let with = |change: &dyn Fn(&mut wire::LinkCode)| {
            let mut c = wire::LinkCode::decode(genuine_code.as_slice()).unwrap_or_default();
            change(&mut c);
            c.encode_to_vec()
        };
        let own_list = by_hand(&user_seed, "alice", 2, &[(1, phone_key), (2, laptop_key)])?;
        let bob = by_hand(&other_user_seed, "bob", 1, &[(1, phone_key)])?;
        let carol = by_hand(&other_user_seed, "carol", 3, &[(7, laptop_key)])?;
        let seal = |name: &str, device_list: &[u8], pinned: &[&[u8]]| LinkCase::Seal {
            name: name.to_owned(),
            user_id: "alice".to_owned(),
            device_id: 2,
            identity_seed: h(identity_seed),
            offer_secret_key: h(offer_secret),
            secret: h(secret),
            created_at,
            linker_secret_key: h(linker_secret),
            user_identity_seed: h(user_seed),
            device_list: h(device_list),
            pinned: pinned.iter().map(h).collect(),
            linker_device_id: 1,
            code: String::new(),
            linker_public_key: String::new(),
            shared: String::new(),
            key: String::new(),
            nonce: String::new(),
            plaintext: String::new(),
            message: String::new(),
        };
        // The messages the open cases give the offer, made by hand.
        let sealed = |code: &[u8], device_list: &[u8], pinned: &[&[u8]]| -> R<Vec<u8>> {
            Ok(seal_by_hand(
                code,
                &secret,
                &offer_public(&offer_secret),
                &linker_secret,
                &Provisioning {
                    user_identity_seed: user_seed,
                    device_list: device_list.to_vec(),
                    pinned: pinned.iter().map(|p| p.to_vec()).collect(),
                    linker_device_id: 1,
                },
            )?
            .message)
        };
        let genuine = sealed(&genuine_code, &own_list, &[&bob, &carol])?;
        let open = |name: &str, message: Vec<u8>| LinkCase::Open {
            name: name.to_owned(),
            user_id: "alice".to_owned(),
            device_id: 2,
            identity_seed: h(identity_seed),
            offer_secret_key: h(offer_secret),
            secret: h(secret),
            created_at,
            message: h(message),
            result: Value::Null,
        };
        let flipped = |at: usize| {
            let mut m = genuine.clone();
            if let Some(byte) = m.get_mut(at) {
                *byte ^= 0x01;
            }
            m
        };
        let mut other_secret_code = wire::LinkCode::decode(genuine_code.as_slice()).unwrap_or_default();
        other_secret_code.secret = vec![0x11; 32];
        let forged = seal_by_hand(
            &other_secret_code.encode_to_vec(),
            &[0x11; 32],
            &offer_public(&offer_secret),
            &linker_secret,
            &Provisioning {
                user_identity_seed: user_seed,
                device_list: own_list.clone(),
                pinned: Vec::new(),
                linker_device_id: 1,
            },
        )?
        .message;
        let not_listed = by_hand(&user_seed, "alice", 2, &[(1, phone_key)])?;
        let other_user_key = by_hand(&other_user_seed, "alice", 2, &[(2, laptop_key)])?;
        let len = genuine.len();
        Ok(vec![
            code("code", "alice", 2, created_at),
            code("code_largest_integers", "alice", u32::MAX, u64::MAX),
            code("code_zero_device_id_and_time", "alice", 0, 0),
            read("read_code_genuine", genuine_code.clone()),
            read("read_code_empty", Vec::new()),
            read("read_code_513_bytes", vec![0x0a; 513]),
            read("read_code_version_2", with(&|c| c.version = 2)),
            read("read_code_user_id_empty", with(&|c| c.user_id = String::new())),
            read("read_code_user_id_257_bytes", with(&|c| c.user_id = "a".repeat(257))),
            read("read_code_identity_key_31_bytes", with(&|c| c.identity_key.truncate(31))),
            read("read_code_identity_key_small_order", with(&|c| c.identity_key = small_order_ed25519())),
            read("read_code_ephemeral_key_33_bytes", with(&|c| c.ephemeral_key.push(0))),
            read("read_code_ephemeral_key_zero", with(&|c| c.ephemeral_key = vec![0; 32])),
            read("read_code_secret_16_bytes", with(&|c| c.secret.truncate(16))),
            read("read_code_unknown_field_8", [genuine_code.as_slice(), &[0x40, 0x01]].concat()),
            seal("seal_two_pinned_users", &own_list, &[&bob, &carol]),
            seal("seal_no_pinned_user", &own_list, &[]),
            open("open_genuine", genuine.clone()),
            open("open_version_2", flipped(0).iter().enumerate().map(|(i, b)| if i == 0 { 2 } else { *b }).collect()),
            open("open_linker_key_altered", flipped(1)),
            open("open_body_altered", flipped(40)),
            open("open_tag_altered", flipped(len - 1)),
            open("open_one_byte_more", [genuine.as_slice(), &[0]].concat()),
            open("open_one_byte_less", genuine.get(..len - 1).unwrap_or_default().to_vec()),
            open("open_shortest_not_a_message", vec![1; 560]),
            open("open_sealed_to_another_secret", forged),
            open("open_sealed_to_an_altered_code", sealed(&with(&|c| c.device_id = 7), &own_list, &[])?),
            open("open_list_without_the_device", sealed(&genuine_code, &not_listed, &[])?),
            open("open_list_under_another_user_key", sealed(&genuine_code, &other_user_key, &[])?),
            open("open_list_of_another_user", sealed(&genuine_code, &bob, &[])?),
            open("open_pinned_out_of_order", sealed(&genuine_code, &own_list, &[&carol, &bob])?),
            open("open_pinned_own_user", sealed(&genuine_code, &own_list, &[&own_list])?),
        ])
    }

    fn compute(case: &LinkCase) -> Result<LinkCase, VErr> {
        Ok(match case {
            LinkCase::Code {
                name, user_id, device_id, identity_seed, offer_secret_key, secret, created_at, ..
            } => {
                let offer = Offer::of(user_id, *device_id, identity_seed, offer_secret_key, secret, *created_at)?;
                let identity_key = offer.identity_key;
                let code = code_by_hand(&offer);
                agree("code", library_offer(&offer)?.code(), &code)?;
                LinkCase::Code {
                    name: name.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    identity_seed: identity_seed.clone(),
                    offer_secret_key: offer_secret_key.clone(),
                    secret: secret.clone(),
                    created_at: *created_at,
                    identity_key: h(identity_key),
                    offer_public_key: h(offer_public(&offer.offer_secret)),
                    code: h(code),
                }
            }
            LinkCase::ReadCode { name, code, .. } => {
                let result = match samizdat::user::LinkCode::from_bytes(&bytes("code", code)?) {
                    Ok(read) => json!({"ok": {
                        "user_id": read.address().user_id(),
                        "device_id": read.address().device_id(),
                        "identity_key": h(read.identity_key().as_bytes()),
                        "created_at": read.created_at(),
                    }}),
                    Err(e) => link_error(&e),
                };
                LinkCase::ReadCode { name: name.clone(), code: code.clone(), result }
            }
            LinkCase::Seal {
                name,
                user_id,
                device_id,
                identity_seed,
                offer_secret_key,
                secret,
                created_at,
                linker_secret_key,
                user_identity_seed,
                device_list,
                pinned,
                linker_device_id,
                ..
            } => {
                let offer = Offer::of(user_id, *device_id, identity_seed, offer_secret_key, secret, *created_at)?;
                let code = code_by_hand(&offer);
                let linker: [u8; 32] = array("linker_secret_key", linker_secret_key)?;
                let provisioning = Provisioning {
                    user_identity_seed: array("user_identity_seed", user_identity_seed)?,
                    device_list: bytes("device_list", device_list)?,
                    pinned: pinned.iter().map(|p| bytes("pinned", p)).collect::<R<_>>()?,
                    linker_device_id: *linker_device_id,
                };
                let by_hand =
                    seal_by_hand(&code, &offer.secret, &offer_public(&offer.offer_secret), &linker, &provisioning)?;
                let library = hazmat::link_seal(
                    &code,
                    linker,
                    &provisioning.user_identity_seed,
                    &provisioning.device_list,
                    &provisioning.pinned,
                    provisioning.linker_device_id,
                )
                .map_err(|e| err("message", format!("{e:?}")))?;
                agree("message", &library, &by_hand.message)?;
                // The offer opens it, and gives back what was sealed.
                let opened = hazmat::link_open(&library_offer(&offer)?, &library)
                    .map_err(|e| err("message", format!("the offer does not open it: {e:?}")))?;
                if *opened.user_identity_seed != provisioning.user_identity_seed
                    || opened.device_list != provisioning.device_list
                    || opened.pinned != provisioning.pinned
                    || opened.linker_device_id != provisioning.linker_device_id
                {
                    return Err(err("message", "opened, it is not what was sealed"));
                }
                LinkCase::Seal {
                    name: name.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    identity_seed: identity_seed.clone(),
                    offer_secret_key: offer_secret_key.clone(),
                    secret: secret.clone(),
                    created_at: *created_at,
                    linker_secret_key: linker_secret_key.clone(),
                    user_identity_seed: user_identity_seed.clone(),
                    device_list: device_list.clone(),
                    pinned: pinned.clone(),
                    linker_device_id: *linker_device_id,
                    code: h(&code),
                    linker_public_key: h(by_hand.linker_public),
                    shared: h(by_hand.shared),
                    key: h(by_hand.key),
                    nonce: h(by_hand.nonce),
                    plaintext: h(&by_hand.plaintext),
                    message: h(&by_hand.message),
                }
            }
            LinkCase::Open {
                name,
                user_id,
                device_id,
                identity_seed,
                offer_secret_key,
                secret,
                created_at,
                message,
                ..
            } => {
                let offer = Offer::of(user_id, *device_id, identity_seed, offer_secret_key, secret, *created_at)?;
                let result = match hazmat::link_open(&library_offer(&offer)?, &bytes("message", message)?) {
                    Ok(opened) => json!({"ok": {
                        "user_identity_seed": h(*opened.user_identity_seed),
                        "device_list": h(&opened.device_list),
                        "pinned": opened.pinned.iter().map(h).collect::<Vec<_>>(),
                        "linker_device_id": opened.linker_device_id,
                    }}),
                    Err(e) => link_error(&e),
                };
                LinkCase::Open {
                    name: name.clone(),
                    user_id: user_id.clone(),
                    device_id: *device_id,
                    identity_seed: identity_seed.clone(),
                    offer_secret_key: offer_secret_key.clone(),
                    secret: secret.clone(),
                    created_at: *created_at,
                    message: message.clone(),
                    result,
                }
            }
        })
    }
}

/// An offer's values.
struct Offer<'a> {
    user_id: &'a str,
    device_id: u32,
    identity_key: [u8; 32],
    offer_secret: [u8; 32],
    secret: [u8; 32],
    created_at: u64,
}

impl<'a> Offer<'a> {
    /// An offer from a case's hex inputs.
    fn of(
        user_id: &'a str,
        device_id: u32,
        identity_seed: &str,
        offer_secret_key: &str,
        secret: &str,
        created_at: u64,
    ) -> R<Self> {
        Ok(Self {
            user_id,
            device_id,
            identity_key: device_key(&array::<32>("identity_seed", identity_seed)?),
            offer_secret: array("offer_secret_key", offer_secret_key)?,
            secret: array("secret", secret)?,
            created_at,
        })
    }
}

struct Provisioning {
    user_identity_seed: [u8; 32],
    device_list: Vec<u8>,
    pinned: Vec<Vec<u8>>,
    linker_device_id: u32,
}

struct Sealed {
    linker_public: [u8; 32],
    shared: [u8; 32],
    key: [u8; 32],
    nonce: [u8; 12],
    plaintext: Vec<u8>,
    message: Vec<u8>,
}

fn library_offer(offer: &Offer<'_>) -> R<samizdat::user::LinkOffer> {
    hazmat::link_offer(
        offer.user_id,
        offer.device_id,
        &offer.identity_key,
        offer.offer_secret,
        offer.secret,
        offer.created_at,
    )
    .map_err(|e| err("offer", format!("{e:?}")))
}

/// The X25519 public key of a secret key (RFC 7748, clamped).
fn offer_public(secret: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

/// An Ed25519 point of small order (the identity, encoded).
fn small_order_ed25519() -> Vec<u8> {
    let mut out = vec![0u8; 32];
    if let Some(first) = out.first_mut() {
        *first = 1;
    }
    out
}

/// The protobuf `LinkCode`, field by field (12.3: a field with its default
/// value is left out).
fn code_by_hand(offer: &Offer<'_>) -> Vec<u8> {
    let varint_field = |tag: u8, value: u64| -> Vec<u8> {
        if value == 0 { Vec::new() } else { [vec![tag], crate::util::varint(value)].concat() }
    };
    let bytes_field = |tag: u8, value: &[u8]| -> Vec<u8> {
        [vec![tag], crate::util::varint(value.len() as u64), value.to_vec()].concat()
    };
    [
        varint_field(0x08, 1),
        bytes_field(0x12, offer.user_id.as_bytes()),
        varint_field(0x18, u64::from(offer.device_id)),
        bytes_field(0x22, &offer.identity_key),
        bytes_field(0x2a, &offer_public(&offer.offer_secret)),
        bytes_field(0x32, &offer.secret),
        varint_field(0x38, offer.created_at),
    ]
    .concat()
}

/// `pad_row` (14.4): the value, 0x80, zeros up to max(512, its bucket).
fn pad_row(value: &[u8]) -> Vec<u8> {
    let needed = value.len() + 1;
    let bucket = if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    };
    let mut out = value.to_vec();
    out.push(0x80);
    out.resize(bucket.max(512), 0);
    out
}

/// The link message, from the formula of 23.8.
fn seal_by_hand(
    code: &[u8],
    secret: &[u8; 32],
    offer_public: &[u8; 32],
    linker_secret: &[u8; 32],
    p: &Provisioning,
) -> R<Sealed> {
    let linker_public = MontgomeryPoint::mul_base_clamped(*linker_secret).to_bytes();
    let shared = MontgomeryPoint(*offer_public).mul_clamped(*linker_secret).to_bytes();
    let mut okm = [0u8; 44];
    Hkdf::<Sha256>::new(Some(secret), &shared)
        .expand(&[LINK_LABEL, code, &linker_public].concat(), &mut okm)
        .map_err(|_| err("key", "HKDF refused 44 bytes"))?;
    let (key, nonce): ([u8; 32], [u8; 12]) =
        (okm[..32].try_into().unwrap_or_default(), okm[32..].try_into().unwrap_or_default());
    let plaintext = wire::LinkProvisioning {
        user_identity_seed: p.user_identity_seed.to_vec(),
        device_list: p.device_list.clone(),
        pinned: p.pinned.clone(),
        linker_device_id: p.linker_device_id,
    }
    .encode_to_vec();
    let sealed = chacha20poly1305_seal(&key, &nonce, &[LINK_LABEL, &linker_public].concat(), &pad_row(&plaintext))?;
    let message = [&[1u8][..], &linker_public, &sealed].concat();
    Ok(Sealed { linker_public, shared, key, nonce, plaintext, message })
}

fn link_error(e: &LinkError) -> Value {
    match e {
        LinkError::MalformedCode(d) => json!({"error": "malformed_code", "cause": decode_error(d)}),
        LinkError::MalformedMessage(d) => json!({"error": "malformed_message", "cause": decode_error(d)}),
        LinkError::WrongCode => json!({"error": "wrong_code"}),
        LinkError::Provisioning(d) => json!({"error": "provisioning", "cause": list_error(d)}),
        other => json!({"error": format!("{other:?}")}),
    }
}

fn list_error(e: &DeviceListError) -> Value {
    match e {
        DeviceListError::Malformed(d) => json!({"error": "malformed", "cause": decode_error(d)}),
        DeviceListError::WrongSigner => json!({"error": "wrong_signer"}),
        DeviceListError::BadSignature => json!({"error": "bad_signature"}),
        DeviceListError::WrongUser { expected, found } => {
            json!({"error": "wrong_user", "expected": expected, "found": found})
        }
        DeviceListError::UnlistedDevice { device_id } => json!({"error": "unlisted_device", "device_id": device_id}),
        other => json!({"error": format!("{other:?}")}),
    }
}
