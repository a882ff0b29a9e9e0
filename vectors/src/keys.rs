//! Keys and primitives: the identity's two forms, X25519, ML-KEM-1024.

use chacha20::ChaCha20Rng;
use samizdat::hazmat;
use serde::{Deserialize, Serialize};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, err, h, random, random_hex},
};

/// `identity.json`.
pub(crate) struct Identity;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct IdentityCase {
    name: String,
    seed: String,
    message: String,
    ed25519_public: String,
    x25519_secret: String,
    x25519_public: String,
    signature: String,
}

/// RFC 8032, section 7.1, TEST 1 (empty message).
const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const RFC8032_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

impl VectorSet for Identity {
    type Case = IdentityCase;
    const META: Meta = Meta {
        file: "identity.json",
        section: "6.1 The identity key; 6.2 The X25519 form of the identity",
        description: "An identity is an Ed25519 key pair made from a 32-byte seed. Its X25519 form: the secret is the \
            first 32 bytes of SHA-512(seed), exactly as hashed (clamping happens when X25519 uses it), and the public \
            key is the Montgomery form of the Ed25519 public key, which equals X25519(secret, 9). `signature` is the \
            deterministic Ed25519 signature (RFC 8032) of `message` by the identity. The first case is RFC 8032 TEST 1; seed_01 is the example of PROTOCOL.md 6.2.",
        seed: 1,
        inputs: &["name", "seed", "message"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<IdentityCase>, VErr> {
        let case = |name: &str, seed: String, message: &[u8]| IdentityCase {
            name: name.to_owned(),
            seed,
            message: h(message),
            ..IdentityCase::default()
        };
        Ok(vec![
            case("rfc8032_test1", RFC8032_SEED.to_owned(), b""),
            case("seed_01", h([1u8; 32]), b"samizdat"),
            case("seed_ff", h([0xffu8; 32]), b"samizdat"),
            case("random_1", h(random::<32>(rng)), b"samizdat/v1"),
            case("random_2", h(random::<32>(rng)), &[0u8; 100]),
        ])
    }

    fn compute(case: &IdentityCase) -> R<IdentityCase> {
        let seed = array::<32>("seed", &case.seed)?;
        let message = bytes("message", &case.message)?;
        let (ed, x_secret, x_public) = hazmat::identity_forms(&seed);
        agree("x25519_public", &x_public, &hazmat::x25519_public(&x_secret))?;
        let signature = hazmat::sign(&seed, &message);
        if !hazmat::verify(&ed, &message, &signature) {
            return Err(err("signature", "does not verify"));
        }
        let out = IdentityCase {
            name: case.name.clone(),
            seed: case.seed.clone(),
            message: case.message.clone(),
            ed25519_public: h(ed),
            x25519_secret: h(*x_secret),
            x25519_public: h(x_public),
            signature: h(signature),
        };
        if case.seed == RFC8032_SEED && message.is_empty() {
            agree("ed25519_public", out.ed25519_public.as_bytes(), RFC8032_PUBLIC.as_bytes())?;
            agree("signature", out.signature.as_bytes(), RFC8032_SIGNATURE.as_bytes())?;
        }
        Ok(out)
    }
}

/// `x25519.json`.
pub(crate) struct X25519;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct X25519Case {
    name: String,
    secret: String,
    peer_public: String,
    public: String,
    shared: Option<String>,
}

/// RFC 7748, section 6.1.
const RFC7748_ALICE_SECRET: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const RFC7748_ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
const RFC7748_BOB_PUBLIC: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
const RFC7748_SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

impl VectorSet for X25519 {
    type Case = X25519Case;
    const META: Meta = Meta {
        file: "x25519.json",
        section: "2.2 Primitives (X25519, the all-zero check); 6.4 X25519 public keys of small order",
        description: "X25519 as the protocol uses it: `public` = X25519(secret, 9); `shared` = X25519(secret, \
            peer_public), or null when the output is 32 zero bytes (a peer key of small order), which the protocol \
            rejects and never feeds into a KDF. Secrets are stored unclamped and clamped on use; the most significant \
            bit of a received public key is ignored. The first case is RFC 7748 section 6.1.",
        seed: 2,
        inputs: &["name", "secret", "peer_public"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<X25519Case>, VErr> {
        let case = |name: &str, secret: String, peer_public: &str| X25519Case {
            name: name.to_owned(),
            secret,
            peer_public: peer_public.to_owned(),
            ..X25519Case::default()
        };
        let mut high_bit = array::<32>("peer_public", RFC7748_BOB_PUBLIC)?;
        if let Some(last) = high_bit.last_mut() {
            *last |= 0x80;
        }
        let secret = random_hex(rng, 32);
        let peer = h(hazmat::x25519_public(&random::<32>(rng)));
        Ok(vec![
            case("rfc7748_6_1", RFC7748_ALICE_SECRET.to_owned(), RFC7748_BOB_PUBLIC),
            case("peer_key_high_bit_set", RFC7748_ALICE_SECRET.to_owned(), &h(high_bit)),
            case("random", secret.clone(), &peer),
            case("unclamped_secret_ff", h([0xffu8; 32]), &peer),
            case("small_order_zero", secret.clone(), &h([0u8; 32])),
            case("small_order_one", secret.clone(), "0100000000000000000000000000000000000000000000000000000000000000"),
            case("small_order_8", secret, "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        ])
    }

    fn compute(case: &X25519Case) -> R<X25519Case> {
        let secret = array::<32>("secret", &case.secret)?;
        let peer = array::<32>("peer_public", &case.peer_public)?;
        let out = X25519Case {
            name: case.name.clone(),
            secret: case.secret.clone(),
            peer_public: case.peer_public.clone(),
            public: h(hazmat::x25519_public(&secret)),
            shared: hazmat::x25519(&secret, &peer).map(h),
        };
        if case.secret == RFC7748_ALICE_SECRET {
            agree("public", out.public.as_bytes(), RFC7748_ALICE_PUBLIC.as_bytes())?;
            agree("shared", out.shared.as_deref().unwrap_or("").as_bytes(), RFC7748_SHARED.as_bytes())?;
        }
        Ok(out)
    }
}

/// `mlkem1024.json`.
pub(crate) struct MlKem;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct MlKemCase {
    name: String,
    d_z: String,
    m: String,
    encapsulation_key: String,
    decapsulation_key: String,
    ciphertext: String,
    shared_secret: String,
    decapsulated: String,
    altered_ciphertext_decapsulated: String,
}

impl VectorSet for MlKem {
    type Case = MlKemCase;
    const META: Meta = Meta {
        file: "mlkem1024.json",
        section: "6.6 ML-KEM-1024",
        description: "ML-KEM-1024 with explicit randomness: `d_z` is the 64 bytes d || z that ML-KEM.KeyGen draws \
            (FIPS 203 ML-KEM.KeyGen_internal(d, z)), `m` the 32 bytes that ML-KEM.Encaps draws \
            (ML-KEM.Encaps_internal(ek, m)). `decapsulated` is ML-KEM.Decaps(dk, ciphertext) and equals \
            `shared_secret`; `altered_ciphertext_decapsulated` is the decapsulation of the ciphertext with its first \
            byte XOR 0x01 (implicit rejection: a pseudorandom secret, no error).",
        seed: 3,
        inputs: &["name", "d_z", "m"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<MlKemCase>, VErr> {
        let case =
            |name: &str, d_z: String, m: String| MlKemCase { name: name.to_owned(), d_z, m, ..MlKemCase::default() };
        let counting: Vec<u8> = (0u8..64).collect();
        Ok(vec![
            case("counting", h(&counting), h([0x40u8; 32])),
            case("random", random_hex(rng, 64), random_hex(rng, 32)),
        ])
    }

    fn compute(case: &MlKemCase) -> R<MlKemCase> {
        let d_z = array::<64>("d_z", &case.d_z)?;
        let m = array::<32>("m", &case.m)?;
        let (dk, ek) = hazmat::mlkem_keygen(&d_z);
        let (ct, ss) = hazmat::mlkem_encapsulate(&ek, &m).ok_or_else(|| err("encapsulation_key", "rejected"))?;
        let decapsulated =
            hazmat::mlkem_decapsulate(&dk, &ek, &ct).ok_or_else(|| err("decapsulation_key", "rejected"))?;
        let mut altered = ct.clone();
        if let Some(first) = altered.first_mut() {
            *first ^= 0x01;
        }
        let rejected =
            hazmat::mlkem_decapsulate(&dk, &ek, &altered).ok_or_else(|| err("decapsulation_key", "rejected"))?;
        Ok(MlKemCase {
            name: case.name.clone(),
            d_z: case.d_z.clone(),
            m: case.m.clone(),
            encapsulation_key: h(&ek),
            decapsulation_key: h(&dk),
            ciphertext: h(&ct),
            shared_secret: h(ss),
            decapsulated: h(decapsulated),
            altered_ciphertext_decapsulated: h(rejected),
        })
    }
}
