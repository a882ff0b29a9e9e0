//! Safety numbers.

use chacha20::ChaCha20Rng;
use samizdat::hazmat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, err, h, random},
};

/// `safety_numbers.json`.
pub(crate) struct SafetyNumbers;

/// Label hashed into `h_0` (`PROTOCOL.md`, section 3).
const LABEL: &[u8] = b"samizdat/v1/safety-number";
/// SHA-512 computations per fingerprint, `h_0` included.
const ITERATIONS: usize = 5200;
/// Known answers: one side's 30 digits.
const KNOWN: [(&str, u8, &str); 3] = [
    ("alice", 0x01, "523161548019042329094304357159"),
    ("bob", 0x02, "791254108841946888889081441287"),
    ("zoë", 0x03, "295437144887612899619860145425"),
];

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct SafetyCase {
    name: String,
    local_user_id: String,
    local_identity: String,
    remote_user_id: String,
    remote_identity: String,
    local_h0_input: String,
    local_fingerprint: String,
    local_digits: String,
    remote_h0_input: String,
    remote_fingerprint: String,
    remote_digits: String,
    digits: String,
    display: String,
    scannable: String,
}

impl VectorSet for SafetyNumbers {
    type Case = SafetyCase;
    const META: Meta = Meta {
        file: "safety_numbers.json",
        section: "10 Safety numbers (10.1 fingerprints, 10.2 the safety number, 10.3 the scannable code, 10.4 known answers)",
        description: "Each side's fingerprint F from its identity key IK (32 bytes, used as given) and user id uid \
            (UTF-8): h_0 = SHA-512(h0_input) with h0_input = 0x0001 || \"samizdat/v1/safety-number\" || u32be(32) || \
            IK || u32be(len(uid)) || uid; h_(i+1) = SHA-512(h_i || IK); F = h_5199 (5200 hashes). A side's 30 \
            digits: F[0:30] as six 5-byte big-endian integers, each mod 100000, printed as 5 digits. `digits`: both \
            sides' digits, the lexicographically smaller first; `display`: the same in 12 groups of 5 separated by \
            spaces; `scannable`: 0x01 || local F[0:32] || remote F[0:32]. Known answers: \"alice\" with IK = 01 * 32 \
            gives 523161548019042329094304357159, \"bob\" with IK = 02 * 32 gives 791254108841946888889081441287, \
            \"zoë\" (UTF-8 7a6fc3ab) with IK = 03 * 32 gives 295437144887612899619860145425.",
        seed: 14,
        inputs: &["name", "local_user_id", "local_identity", "remote_user_id", "remote_identity"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<SafetyCase>, VErr> {
        let case = |name: &str, local: (&str, String), remote: (&str, String)| SafetyCase {
            name: name.to_owned(),
            local_user_id: local.0.to_owned(),
            local_identity: local.1,
            remote_user_id: remote.0.to_owned(),
            remote_identity: remote.1,
            ..SafetyCase::default()
        };
        let alice = h([0x01u8; 32]);
        let bob = h([0x02u8; 32]);
        let (real_a, _, _) = hazmat::identity_forms(&random::<32>(rng));
        let (real_b, _, _) = hazmat::identity_forms(&random::<32>(rng));
        Ok(vec![
            case("known_answer_alice_view", ("alice", alice.clone()), ("bob", bob.clone())),
            case("known_answer_bob_view", ("bob", bob.clone()), ("alice", alice)),
            case("known_answer_zoe_bob", ("zoë", h([0x03u8; 32])), ("bob", bob)),
            case("real_keys", ("+14155550100", h(real_a)), ("+442079460000", h(real_b))),
            case("utf8_user_ids", ("Zoë", h(real_a)), ("Ωμέγα 🌍", h(real_b))),
            case("same_user_two_devices", ("carol", h(real_a)), ("carol", h(real_b))),
        ])
    }

    fn compute(case: &SafetyCase) -> R<SafetyCase> {
        let local = array::<32>("local_identity", &case.local_identity)?;
        let remote = array::<32>("remote_identity", &case.remote_identity)?;
        let number = hazmat::safety_number(&case.local_user_id, &local, &case.remote_user_id, &remote);
        let (local_input, local_f) = fingerprint(&case.local_user_id, &local)?;
        let (remote_input, remote_f) = fingerprint(&case.remote_user_id, &remote)?;
        let (local_digits, remote_digits) = (digits(&local_f), digits(&remote_f));
        // The library's values from the formula above.
        let mut scannable = vec![0x01];
        scannable.extend_from_slice(local_f.get(..32).unwrap_or_default());
        scannable.extend_from_slice(remote_f.get(..32).unwrap_or_default());
        agree("scannable", &number.scannable(), &scannable)?;
        let both = if local_digits <= remote_digits {
            format!("{local_digits}{remote_digits}")
        } else {
            format!("{remote_digits}{local_digits}")
        };
        agree("digits", number.digits().as_bytes(), both.as_bytes())?;
        for (side, uid, ik, d) in [
            ("local_digits", &case.local_user_id, local, &local_digits),
            ("remote_digits", &case.remote_user_id, remote, &remote_digits),
        ] {
            if let Some((_, _, known)) = KNOWN.iter().find(|(u, b, _)| u == uid && ik == [*b; 32]) {
                agree(side, d.as_bytes(), known.as_bytes())?;
            }
        }
        Ok(SafetyCase {
            name: case.name.clone(),
            local_user_id: case.local_user_id.clone(),
            local_identity: case.local_identity.clone(),
            remote_user_id: case.remote_user_id.clone(),
            remote_identity: case.remote_identity.clone(),
            local_h0_input: h(&local_input),
            local_fingerprint: h(local_f),
            local_digits,
            remote_h0_input: h(&remote_input),
            remote_fingerprint: h(remote_f),
            remote_digits,
            digits: number.digits().to_owned(),
            display: number.display(),
            scannable: h(number.scannable()),
        })
    }
}

/// `(h0_input, F)` of one side.
fn fingerprint(user_id: &str, identity: &[u8; 32]) -> R<(Vec<u8>, [u8; 64])> {
    fingerprint_with(LABEL, user_id, identity)
}

/// `(h0_input, F)` of one side under `label` (per-user safety numbers use
/// another label, PROTOCOL.md 23.4).
pub(crate) fn fingerprint_with(label: &[u8], user_id: &str, identity: &[u8; 32]) -> R<(Vec<u8>, [u8; 64])> {
    let uid = user_id.as_bytes();
    let uid_len = u32::try_from(uid.len()).map_err(|_| err("user_id", "too long"))?;
    let mut input = 1u16.to_be_bytes().to_vec();
    input.extend_from_slice(label);
    input.extend_from_slice(&32u32.to_be_bytes());
    input.extend_from_slice(identity);
    input.extend_from_slice(&uid_len.to_be_bytes());
    input.extend_from_slice(uid);
    let mut hash: [u8; 64] = Sha512::digest(&input).into();
    for _ in 1..ITERATIONS {
        hash = Sha512::new().chain_update(hash).chain_update(identity).finalize().into();
    }
    Ok((input, hash))
}

/// One side's 30 digits.
pub(crate) fn digits(fingerprint: &[u8; 64]) -> String {
    fingerprint
        .chunks_exact(5)
        .take(6)
        .map(|chunk| format!("{:05}", chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)) % 100_000))
        .collect()
}
