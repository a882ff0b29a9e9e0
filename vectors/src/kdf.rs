//! The ratchet's key derivations and header encryption.

use chacha20::ChaCha20Rng;
use samizdat::hazmat;
use serde::{Deserialize, Serialize};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, err, h, random, random_hex, random_vec, sha256, xchacha20poly1305_seal},
};

/// `root_step.json`.
pub(crate) struct RootStep;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct RootStepCase {
    name: String,
    root_key: String,
    dh_output: String,
    new_root_key: String,
    chain_key: String,
    next_header_key: String,
}

impl VectorSet for RootStep {
    type Case = RootStepCase;
    const META: Meta = Meta {
        file: "root_step.json",
        section: "4.2.1 Root step KDF_RK_HE",
        description: "KDF_RK_HE(rk, dh_out) = HKDF-SHA256(salt = root_key, ikm = dh_output, info = \
            \"samizdat/v1/ratchet/root\", L = 96), split into new_root_key || chain_key || next_header_key. The \
            next header key is how every header key after the handshake's is made.",
        seed: 4,
        inputs: &["name", "root_key", "dh_output"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<RootStepCase>, VErr> {
        let case = |name: &str, root_key: String, dh_output: String| RootStepCase {
            name: name.to_owned(),
            root_key,
            dh_output,
            ..RootStepCase::default()
        };
        let counting: Vec<u8> = (0u8..64).collect();
        let (low, high) = counting.split_at(32);
        // A root key and DH output as a session makes them: X25519 of two random secrets.
        let dh = hazmat::x25519(&random::<32>(rng), &hazmat::x25519_public(&random::<32>(rng)))
            .ok_or_else(|| hazmat_err("dh_output"))?;
        Ok(vec![
            case("zero_root_key", h([0u8; 32]), h([1u8; 32])),
            case("counting", h(low), h(high)),
            case("random_1", random_hex(rng, 32), random_hex(rng, 32)),
            case("random_2", random_hex(rng, 32), random_hex(rng, 32)),
            case("x25519_output", random_hex(rng, 32), h(dh)),
        ])
    }

    fn compute(case: &RootStepCase) -> R<RootStepCase> {
        let (rk, ck, nhk) =
            hazmat::root_step(&array::<32>("root_key", &case.root_key)?, &array::<32>("dh_output", &case.dh_output)?);
        Ok(RootStepCase {
            name: case.name.clone(),
            root_key: case.root_key.clone(),
            dh_output: case.dh_output.clone(),
            new_root_key: h(rk),
            chain_key: h(ck),
            next_header_key: h(nhk),
        })
    }
}

fn hazmat_err(field: &str) -> VErr {
    err(field, "the library rejected a value the generator made")
}

/// `chain_step.json`.
pub(crate) struct ChainStep;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct ChainStepCase {
    name: String,
    chain_key: String,
    iterations: u32,
    checkpoints: Vec<Checkpoint>,
    final_chain_key: String,
    seeds_sha256: String,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Checkpoint {
    counter: u32,
    chain_key: String,
    message_key_seed: String,
}

impl VectorSet for ChainStep {
    type Case = ChainStepCase;
    const META: Meta = Meta {
        file: "chain_step.json",
        section: "4.2.2 Chain step",
        description: "A symmetric chain run for `iterations` steps from `chain_key` (the chain key at counter 0): \
            SEED(ck) = HMAC-SHA256(ck, 0x01) is the message key seed at the current counter, NEXT(ck) = \
            HMAC-SHA256(ck, 0x02) the chain key at the next counter. Each checkpoint lists the chain key at \
            `counter` and the seed of message `counter`. `final_chain_key` is the chain key at counter \
            `iterations`; `seeds_sha256` is SHA-256 of the concatenated seeds of counters 0 to iterations - 1.",
        seed: 5,
        inputs: &["name", "chain_key", "iterations", "checkpoints[].counter"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<ChainStepCase>, VErr> {
        let case = |name: &str, chain_key: String, iterations: u32, counters: &[u32]| ChainStepCase {
            name: name.to_owned(),
            chain_key,
            iterations,
            checkpoints: counters.iter().map(|&counter| Checkpoint { counter, ..Checkpoint::default() }).collect(),
            ..ChainStepCase::default()
        };
        let (_, chain_key, _) = hazmat::root_step(&random::<32>(rng), &random::<32>(rng));
        Ok(vec![
            case("zero_chain_key", h([0u8; 32]), 1000, &[0, 1, 2, 3, 10, 100, 500, 999]),
            case("random", random_hex(rng, 32), 1000, &[0, 1, 2, 3, 10, 100, 500, 999]),
            case("from_root_step_2001", h(chain_key), 2001, &[0, 1, 1000, 1999, 2000]),
        ])
    }

    fn compute(case: &ChainStepCase) -> R<ChainStepCase> {
        let mut ck = array::<32>("chain_key", &case.chain_key)?;
        let mut seeds = Vec::new();
        let mut checkpoints = Vec::with_capacity(case.checkpoints.len());
        let mut at = std::collections::BTreeMap::new();
        for counter in 0..case.iterations {
            let (seed, next) = hazmat::chain_step(&ck);
            at.insert(counter, (ck, seed));
            seeds.extend_from_slice(&seed);
            ck = next;
        }
        for (i, checkpoint) in case.checkpoints.iter().enumerate() {
            let (chain_key, seed) = at
                .get(&checkpoint.counter)
                .ok_or_else(|| err(format!("checkpoints[{i}].counter"), "not below `iterations`"))?;
            checkpoints.push(Checkpoint {
                counter: checkpoint.counter,
                chain_key: h(chain_key),
                message_key_seed: h(seed),
            });
        }
        Ok(ChainStepCase {
            name: case.name.clone(),
            chain_key: case.chain_key.clone(),
            iterations: case.iterations,
            checkpoints,
            final_chain_key: h(ck),
            seeds_sha256: h(sha256(&seeds)),
        })
    }
}

/// `message_key.json`.
pub(crate) struct MessageKey;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct MessageKeyCase {
    name: String,
    message_key_seed: String,
    header_nonce: String,
    key: String,
    nonce: String,
}

impl VectorSet for MessageKey {
    type Case = MessageKeyCase;
    const META: Meta = Meta {
        file: "message_key.json",
        section: "4.2.3 Message key expansion",
        description: "MESSAGE_KEY(seed, header_nonce) = HKDF-SHA256(salt = header_nonce (the 24-byte nonce that \
            starts the message's encrypted header), ikm = message_key_seed, info = \"samizdat/v1/ratchet/message-key\", \
            L = 44): the first 32 bytes are the ChaCha20-Poly1305 key, the last 12 its nonce. The same seed with \
            another header nonce gives another key and nonce.",
        seed: 6,
        inputs: &["name", "message_key_seed", "header_nonce"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<MessageKeyCase>, VErr> {
        let case = |name: &str, seed: String, header_nonce: String| MessageKeyCase {
            name: name.to_owned(),
            message_key_seed: seed,
            header_nonce,
            ..MessageKeyCase::default()
        };
        let (seed_of_zero_chain, _) = hazmat::chain_step(&[0u8; 32]);
        let random_seed = random_hex(rng, 32);
        Ok(vec![
            case("zero_seed_zero_nonce", h([0u8; 32]), h([0u8; 24])),
            case("seed_of_zero_chain_key", h(seed_of_zero_chain), random_hex(rng, 24)),
            case("random_1", random_seed.clone(), random_hex(rng, 24)),
            // The same seed under another header nonce: another key and nonce
            // (a sender restored from a copy that reaches this counter again).
            case("random_1_other_header_nonce", random_seed, random_hex(rng, 24)),
            case("random_2", random_hex(rng, 32), random_hex(rng, 24)),
        ])
    }

    fn compute(case: &MessageKeyCase) -> R<MessageKeyCase> {
        let (key, nonce) = hazmat::message_key(
            &array::<32>("message_key_seed", &case.message_key_seed)?,
            &array::<24>("header_nonce", &case.header_nonce)?,
        );
        Ok(MessageKeyCase {
            name: case.name.clone(),
            message_key_seed: case.message_key_seed.clone(),
            header_nonce: case.header_nonce.clone(),
            key: h(key),
            nonce: h(nonce),
        })
    }
}

/// `header_encryption.json`.
pub(crate) struct HeaderEncryption;

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum HeaderCase {
    /// Seal a header.
    Seal {
        name: String,
        header_key: String,
        nonce: String,
        ratchet_key: String,
        previous_counter: u32,
        counter: u32,
        /// The flag bit 0x02 of the first byte (PROTOCOL.md 4.4).
        left_answered: bool,
        associated_data: String,
        #[serde(default)]
        header: String,
        #[serde(default)]
        encrypted_header: String,
    },
    /// Open an encrypted header.
    Open {
        name: String,
        header_key: String,
        associated_data: String,
        sealed: String,
        #[serde(default)]
        opened: Option<Opened>,
    },
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    ratchet_key: String,
    previous_counter: u32,
    counter: u32,
    left_answered: bool,
}

impl VectorSet for HeaderEncryption {
    type Case = HeaderCase;
    const META: Meta = Meta {
        file: "header_encryption.json",
        section: "4.4 Header format and header encryption",
        description: "`seal`: header = flags || ratchet_key || u32be(previous_counter) || u32be(counter) (41 bytes), \
            flags = 0x01, or 0x03 if left_answered; encrypted_header = nonce || XChaCha20-Poly1305(key = header_key, \
            nonce, aad = associated_data, header) (81 bytes). `open`: HDEC(header_key, sealed, associated_data); \
            `opened` is null when the header does not open (wrong key, wrong associated data, any altered byte, or a \
            header that authenticates but whose first byte is neither 0x01 nor 0x03: 0x02, the flag without the \
            version, in open_header_version_2; 0x07 in open_header_first_byte_0x07); opened.left_answered is bit 0x02 \
            of the first byte. Header keys here are next_header_key outputs of root steps.",
        seed: 7,
        inputs: &[
            "operation",
            "name",
            "header_key",
            "nonce",
            "ratchet_key",
            "previous_counter",
            "counter",
            "left_answered",
            "associated_data",
            "sealed",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<HeaderCase>, VErr> {
        let header_key = |rng: &mut ChaCha20Rng| h(hazmat::root_step(&random::<32>(rng), &random::<32>(rng)).2);
        let seal = |name: &str, hk: String, nonce: String, dh: String, pn: u32, n: u32, ad: String| HeaderCase::Seal {
            name: name.to_owned(),
            header_key: hk,
            nonce,
            ratchet_key: dh,
            previous_counter: pn,
            counter: n,
            left_answered: false,
            associated_data: ad,
            header: String::new(),
            encrypted_header: String::new(),
        };
        let hk = header_key(rng);
        let nonce = random::<24>(rng);
        let dh = h(hazmat::x25519_public(&random::<32>(rng)));
        let mut ad = b"samizdat/v1/session-ad".to_vec();
        ad.extend_from_slice(&random_vec(rng, 64));
        let ad_hex = h(&ad);
        let mut cases = vec![
            seal("first_message", hk.clone(), h(nonce), dh.clone(), 0, 0, ad_hex.clone()),
            seal(
                "counters",
                header_key(rng),
                random_hex(rng, 24),
                dh.clone(),
                0x0102_0304,
                0x0a0b_0c0d,
                ad_hex.clone(),
            ),
            seal("max_counters", header_key(rng), random_hex(rng, 24), dh.clone(), u32::MAX, u32::MAX - 1, h(b"")),
        ];
        // The open cases all start from the first seal.
        let key = array::<32>("header_key", &hk)?;
        let dh_bytes = array::<32>("ratchet_key", &dh)?;
        let sealed = hazmat::seal_header(&key, nonce, (&dh_bytes, 0, 0), false, &ad);
        let open = |name: &str, hk: &str, ad: &[u8], sealed: &[u8]| HeaderCase::Open {
            name: name.to_owned(),
            header_key: hk.to_owned(),
            associated_data: h(ad),
            sealed: h(sealed),
            opened: None,
        };
        let altered = |offset: usize| {
            let mut s = sealed;
            if let Some(b) = s.get_mut(offset) {
                *b ^= 0x01;
            }
            s
        };
        let mut other_ad = ad.clone();
        if let Some(last) = other_ad.last_mut() {
            *last ^= 0x01;
        }
        let mut version_2 = vec![0x02];
        version_2.extend_from_slice(&dh_bytes);
        version_2.extend_from_slice(&[0; 8]);
        let version_2 = xchacha20poly1305_seal(&key, &nonce, &ad, &version_2)?;
        cases.extend([
            open("open_first_message", &hk, &ad, &sealed),
            open("open_wrong_key", &header_key(rng), &ad, &sealed),
            open("open_wrong_associated_data", &hk, &other_ad, &sealed),
            open("open_altered_nonce", &hk, &ad, &altered(0)),
            open("open_altered_ciphertext", &hk, &ad, &altered(24)),
            open("open_altered_tag", &hk, &ad, &altered(80)),
            open("open_header_version_2", &hk, &ad, &version_2),
        ]);
        // The flag (drawn after every case above, which stay as they were).
        let flagged_key = header_key(rng);
        let flagged_nonce = random::<24>(rng);
        let flagged_dh = h(hazmat::x25519_public(&random::<32>(rng)));
        let flagged = hazmat::seal_header(
            &array::<32>("header_key", &flagged_key)?,
            flagged_nonce,
            (&array::<32>("ratchet_key", &flagged_dh)?, 3, 1),
            true,
            &ad,
        );
        let mut first_byte_7 = vec![0x07];
        first_byte_7.extend_from_slice(&dh_bytes);
        first_byte_7.extend_from_slice(&[0; 8]);
        let first_byte_7 = xchacha20poly1305_seal(&key, &nonce, &ad, &first_byte_7)?;
        let mut with_flag = seal("left_answered", flagged_key.clone(), h(flagged_nonce), flagged_dh, 3, 1, ad_hex);
        if let HeaderCase::Seal { left_answered, .. } = &mut with_flag {
            *left_answered = true;
        }
        cases.extend([
            with_flag,
            open("open_left_answered", &flagged_key, &ad, &flagged),
            open("open_header_first_byte_0x07", &hk, &ad, &first_byte_7),
        ]);
        Ok(cases)
    }

    fn compute(case: &HeaderCase) -> R<HeaderCase> {
        match case {
            HeaderCase::Seal {
                name,
                header_key,
                nonce,
                ratchet_key,
                previous_counter,
                counter,
                left_answered,
                associated_data,
                ..
            } => {
                let key = array::<32>("header_key", header_key)?;
                let dh = array::<32>("ratchet_key", ratchet_key)?;
                let ad = bytes("associated_data", associated_data)?;
                let nonce_bytes = array::<24>("nonce", nonce)?;
                let sealed =
                    hazmat::seal_header(&key, nonce_bytes, (&dh, *previous_counter, *counter), *left_answered, &ad);
                // Built by hand here, to check the sealed one against.
                let mut header = vec![if *left_answered { 0x03 } else { 0x01 }];
                header.extend_from_slice(&dh);
                header.extend_from_slice(&previous_counter.to_be_bytes());
                header.extend_from_slice(&counter.to_be_bytes());
                let opened = hazmat::open_header(&key, &sealed, &ad);
                agree(
                    "encrypted_header",
                    &[u8::from(opened == Some((dh, *previous_counter, *counter, *left_answered)))],
                    &[1],
                )?;
                // The hand-built header, sealed with the bare AEAD, is the same.
                agree("encrypted_header", &sealed, &xchacha20poly1305_seal(&key, &nonce_bytes, &ad, &header)?)?;
                Ok(HeaderCase::Seal {
                    name: name.clone(),
                    header_key: header_key.clone(),
                    nonce: nonce.clone(),
                    ratchet_key: ratchet_key.clone(),
                    previous_counter: *previous_counter,
                    counter: *counter,
                    left_answered: *left_answered,
                    associated_data: associated_data.clone(),
                    header: h(header),
                    encrypted_header: h(sealed),
                })
            }
            HeaderCase::Open { name, header_key, associated_data, sealed, .. } => {
                let opened = hazmat::open_header(
                    &array::<32>("header_key", header_key)?,
                    &array::<81>("sealed", sealed)?,
                    &bytes("associated_data", associated_data)?,
                )
                .map(|(dh, pn, n, left_answered)| Opened {
                    ratchet_key: h(dh),
                    previous_counter: pn,
                    counter: n,
                    left_answered,
                });
                Ok(HeaderCase::Open {
                    name: name.clone(),
                    header_key: header_key.clone(),
                    associated_data: associated_data.clone(),
                    sealed: sealed.clone(),
                    opened,
                })
            }
        }
    }
}
