//! Evidence that the `decrypt` cases of `group.json` pin the receiving
//! rules of PROTOCOL.md 18.5 and 18.6.
//!
//! A small receiver is written here from the text (chain lookup, strict
//! Ed25519 verification of `AD || body`, the iteration checks, the key
//! derivation, the AEAD, the padding; distributions; the limits), on the
//! `hkdf`, `chacha20poly1305` and `curve25519-dalek` crates, without the
//! library or the generator. With [`Rules::default`] it must give every
//! step of every `decrypt` case exactly (result and chains). Each other
//! [`Rules`] value turns on one plausible misreading, and the tests check
//! that the receiver then disagrees with the file: an implementation that
//! misreads the rule that way fails `group.json`. `vectors/RULES.md` lists
//! the same misreadings with the steps that catch them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::{fs, path::PathBuf};

use chacha20poly1305::{
    ChaCha20Poly1305, Key, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use curve25519_dalek::{EdwardsPoint, Scalar, edwards::CompressedEdwardsY, traits::IsIdentity};
use hkdf::Hkdf;
use samizdat_proto::{Message as _, wire as pb};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

/// How the receiver reads the rules. The default is PROTOCOL.md; each flag
/// is one misreading.
#[derive(Default, Clone, Copy, Debug)]
struct Rules {
    /// The iteration checked (duplicate, rollback, too far ahead) before the signature.
    iteration_before_signature: bool,
    /// The signature (and the AEAD's associated data) without the sender's address.
    no_sender_in_ad: bool,
    /// `S` reduced modulo `L` instead of refused when `S >= L`.
    lax_s: bool,
    /// Rollback told from Duplicate by the whole salt, not its first 8 bytes.
    whole_salt: bool,
    /// `gap >= MAX_SKIP` refused (`>=` for `>`).
    gap_at_max_refused: bool,
    /// The skipped keys of a message stored before its body is opened.
    skipped_stored_before_open: bool,
    /// A distribution of a kept chain with the same signing key resets it.
    replayed_distribution_resets: bool,
    /// Skipped keys evicted from the newest chain first.
    evict_newest_first: bool,
    /// Control content (marker 0x81) accepted in a group body.
    control_content_accepted: bool,
    /// An evicted chain forgotten entirely (no floor).
    no_floors: bool,
    /// A chain taken again from the distribution's iteration, not its floor.
    floor_not_applied_on_take_in: bool,
    /// A distribution however far below the floor stepped up to it.
    no_step_limit_below_floor: bool,
    /// An iteration whose key was evicted unused reported as a duplicate.
    evicted_as_duplicate: bool,
    /// Generations ignored: a floor forgotten raises no minimum.
    no_generations: bool,
    /// A distribution below the minimum ignored even for a chain kept or floored.
    minimum_for_every_chain: bool,
}

const MAX_SKIP: u32 = 2000;
const MAX_SENDER_CHAINS: usize = 3;
const MAX_SKIPPED: usize = 2000;
const MAX_USED: usize = 128;
const MAX_EVICTED: usize = 2000;

struct Chain {
    chain_id: u32,
    generation: u64,
    signing_key: [u8; 32],
    iteration: u32,
    chain_key: [u8; 32],
    skipped: Vec<(u32, [u8; 32])>,
    used: Vec<(u32, [u8; 24])>,
    /// Iterations whose skipped keys were evicted unused.
    evicted: Vec<u32>,
}

#[derive(Default)]
struct Receiver {
    rules: Rules,
    chains: Vec<Chain>,
    /// (chain id, first iteration that may open, generation), oldest first.
    floors: Vec<(u32, u32, u64)>,
    /// One more than the largest generation of a floor forgotten.
    min_generation: u64,
}

const MAX_FLOORS: usize = 8;

fn hmac(key: &[u8; 32], byte: u8) -> [u8; 32] {
    Hkdf::<Sha256>::extract(Some(key), &[byte]).0.into()
}

fn decrypt_error(cause: Value) -> Value {
    json!({"error": "decrypt", "cause": cause})
}

fn unauthenticated() -> Value {
    decrypt_error(json!({"error": "unauthenticated"}))
}

/// Strict Ed25519 verification (RFC 8032 with `S < L`, and no key or `R` of small order).
fn verify(key: &[u8; 32], message: &[u8], signature: &[u8], lax_s: bool) -> bool {
    let Some(a) = CompressedEdwardsY(*key).decompress() else { return false };
    let r_bytes: [u8; 32] = signature[..32].try_into().unwrap();
    let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
    if a.is_small_order() || r.is_small_order() {
        return false;
    }
    let s_bytes: [u8; 32] = signature[32..].try_into().unwrap();
    let s = if lax_s {
        Scalar::from_bytes_mod_order(s_bytes)
    } else {
        match Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) {
            Some(s) => s,
            None => return false,
        }
    };
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new().chain_update(r_bytes).chain_update(key).chain_update(message).finalize().into(),
    );
    let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &(-a), &s);
    (expected - r).is_identity()
}

impl Receiver {
    fn new(rules: Rules) -> Self {
        Self { rules, chains: Vec::new(), floors: Vec::new(), min_generation: 0 }
    }

    fn summary(&self) -> Value {
        Value::Array(
            self.chains
                .iter()
                .map(|c| {
                    json!({
                        "chain_id": c.chain_id,
                        "iteration": c.iteration,
                        "skipped_keys": c.skipped.len(),
                        "used_iterations": c.used.len(),
                    })
                })
                .collect(),
        )
    }

    fn floors_summary(&self) -> Value {
        Value::Array(
            self.floors
                .iter()
                .map(|(id, at, generation)| {
                    if *generation == 0 {
                        json!({"chain_id": id, "iteration": at})
                    } else {
                        json!({"chain_id": id, "iteration": at, "generation": generation})
                    }
                })
                .collect(),
        )
    }

    /// Keeps the floor of an evicted chain: its next iteration.
    fn retire(&mut self, chain: &Chain) {
        if self.rules.no_floors {
            return;
        }
        if let Some((_, at, generation)) = self.floors.iter_mut().find(|(id, _, _)| *id == chain.chain_id) {
            *at = (*at).max(chain.iteration);
            *generation = (*generation).max(chain.generation);
            return;
        }
        self.floors.push((chain.chain_id, chain.iteration, chain.generation));
        if self.floors.len() > MAX_FLOORS {
            let (_, _, generation) = self.floors.remove(0);
            if !self.rules.no_generations {
                self.min_generation = self.min_generation.max(generation.saturating_add(1));
            }
        }
    }

    fn receive(&mut self, content: &[u8]) -> Value {
        let control = pb::Control::decode(content).unwrap();
        let Some(pb::control::Body::Distribution(d)) = control.body else { return json!({"changed": false}) };
        let signing_key: [u8; 32] = d.signing_key.as_slice().try_into().unwrap();
        if self.rules.minimum_for_every_chain && d.generation < self.min_generation {
            return json!({"changed": false});
        }
        if let Some(i) = self.chains.iter().position(|c| c.chain_id == d.chain_id) {
            if self.chains[i].signing_key == signing_key && !self.rules.replayed_distribution_resets {
                // The same chain: forward only (18.6).
                let kept = &mut self.chains[i];
                if d.iteration > kept.iteration {
                    kept.chain_key = d.chain_key.as_slice().try_into().unwrap();
                    kept.iteration = d.iteration;
                    return json!({"changed": true});
                }
                return json!({"changed": false});
            }
            self.chains.remove(i);
        }
        let known = self.floors.iter().any(|(id, _, _)| *id == d.chain_id)
            || self.chains.iter().any(|c| c.chain_id == d.chain_id);
        if d.generation < self.min_generation && !known {
            return json!({"changed": false});
        }
        let mut chain = Chain {
            chain_id: d.chain_id,
            generation: d.generation,
            signing_key,
            iteration: d.iteration,
            chain_key: d.chain_key.as_slice().try_into().unwrap(),
            skipped: Vec::new(),
            used: Vec::new(),
            evicted: Vec::new(),
        };
        if let Some(f) = self.floors.iter().position(|(id, _, _)| *id == d.chain_id) {
            let floor = self.floors[f].1;
            if floor > chain.iteration && !self.rules.floor_not_applied_on_take_in {
                if floor - chain.iteration > MAX_SKIP && !self.rules.no_step_limit_below_floor {
                    return json!({"changed": false});
                }
                while chain.iteration < floor {
                    chain.chain_key = hmac(&chain.chain_key, 0x02);
                    chain.iteration += 1;
                }
            }
            self.floors.remove(f);
        }
        self.chains.push(chain);
        if self.chains.len() > MAX_SENDER_CHAINS {
            let evicted = self.chains.remove(0);
            self.retire(&evicted);
        }
        self.evict();
        json!({"changed": true})
    }

    fn evict(&mut self) {
        let mut excess = self.chains.iter().map(|c| c.skipped.len()).sum::<usize>().saturating_sub(MAX_SKIPPED);
        let order: Vec<usize> = if self.rules.evict_newest_first {
            (0..self.chains.len()).rev().collect()
        } else {
            (0..self.chains.len()).collect()
        };
        for i in order {
            let drop = excess.min(self.chains[i].skipped.len());
            let gone: Vec<u32> = self.chains[i].skipped.drain(..drop).map(|(iteration, _)| iteration).collect();
            self.chains[i].evicted.extend(gone);
            excess -= drop;
        }
        let mut excess = self.chains.iter().map(|c| c.evicted.len()).sum::<usize>().saturating_sub(MAX_EVICTED);
        for chain in &mut self.chains {
            let drop = excess.min(chain.evicted.len());
            chain.evicted.drain(..drop);
            excess -= drop;
        }
        let mut excess = self.chains.iter().map(|c| c.used.len()).sum::<usize>().saturating_sub(MAX_USED);
        for chain in &mut self.chains {
            let drop = excess.min(chain.used.len());
            chain.used.drain(..drop);
            excess -= drop;
        }
    }

    /// The iteration checks of 18.5 on a message at `iteration` with `salt`:
    /// `Err` with the error, or `Ok(Some(position))` for a skipped key,
    /// `Ok(None)` for an iteration at or past the chain's.
    fn check_iteration(&self, index: usize, iteration: u32, salt: &[u8; 24]) -> Result<Option<usize>, Value> {
        let chain = &self.chains[index];
        if iteration < chain.iteration {
            if let Some(position) = chain.skipped.iter().position(|(i, _)| *i == iteration) {
                return Ok(Some(position));
            }
            let same = |used: &[u8; 24]| if self.rules.whole_salt { used == salt } else { used[..8] == salt[..8] };
            return Err(match chain.used.iter().find(|(i, _)| *i == iteration) {
                Some((_, used)) if !same(used) => decrypt_error(json!({"error": "rollback", "counter": iteration})),
                None if chain.evicted.contains(&iteration) && !self.rules.evicted_as_duplicate => {
                    decrypt_error(json!({"error": "key_evicted", "counter": iteration}))
                }
                _ => decrypt_error(json!({"error": "duplicate", "counter": iteration})),
            });
        }
        let gap = iteration - chain.iteration;
        if gap > MAX_SKIP || (self.rules.gap_at_max_refused && gap == MAX_SKIP) {
            return Err(decrypt_error(json!({"error": "too_far_ahead", "gap": gap, "max": MAX_SKIP})));
        }
        Ok(None)
    }

    fn decrypt(&mut self, wire: &[u8], user_id: &str, device_id: u32) -> Value {
        let envelope = pb::Envelope::decode(&wire[1..]).unwrap();
        let Some(pb::envelope::Body::Group(m)) = envelope.body else { panic!("not a group message") };
        let salt: [u8; 24] = m.salt.as_slice().try_into().unwrap();
        let Some(index) = self.chains.iter().position(|c| c.chain_id == m.chain_id) else {
            if let Some((_, floor, _)) = self.floors.iter().find(|(id, _, _)| *id == m.chain_id)
                && m.iteration < *floor
            {
                return decrypt_error(json!({"error": "duplicate", "counter": m.iteration}));
            }
            return json!({"error": "missing_chain", "chain_id": m.chain_id, "request": null});
        };
        let mut ad = b"samizdat/v1/group/message".to_vec();
        ad.push(u8::try_from(m.group_id.len()).unwrap());
        ad.extend_from_slice(&m.group_id);
        if !self.rules.no_sender_in_ad {
            ad.extend_from_slice(&u32::try_from(user_id.len()).unwrap().to_be_bytes());
            ad.extend_from_slice(user_id.as_bytes());
            ad.extend_from_slice(&device_id.to_be_bytes());
        }
        ad.extend_from_slice(&m.chain_id.to_be_bytes());
        ad.extend_from_slice(&m.iteration.to_be_bytes());
        ad.extend_from_slice(&salt);
        let signed = [ad.as_slice(), &m.body].concat();

        let checked = if self.rules.iteration_before_signature {
            let checked = self.check_iteration(index, m.iteration, &salt);
            if checked.is_ok() && !verify(&self.chains[index].signing_key, &signed, &m.signature, self.rules.lax_s) {
                return unauthenticated();
            }
            checked
        } else {
            if !verify(&self.chains[index].signing_key, &signed, &m.signature, self.rules.lax_s) {
                return unauthenticated();
            }
            self.check_iteration(index, m.iteration, &salt)
        };
        let skipped_position = match checked {
            Ok(position) => position,
            Err(error) => return error,
        };

        // The key, and the keys skipped on the way.
        let chain = &self.chains[index];
        let (seed, advance) = match skipped_position {
            Some(position) => (chain.skipped[position].1, None),
            None => {
                let mut key = chain.chain_key;
                let mut skipped = Vec::new();
                for i in chain.iteration..m.iteration {
                    skipped.push((i, hmac(&key, 0x01)));
                    key = hmac(&key, 0x02);
                }
                // A sender never uses iteration 2^32 - 1: its chain cannot step.
                let Some(next_iteration) = m.iteration.checked_add(1) else { return unauthenticated() };
                (hmac(&key, 0x01), Some((next_iteration, hmac(&key, 0x02), skipped)))
            }
        };
        if self.rules.skipped_stored_before_open
            && let Some((_, _, skipped)) = &advance
        {
            self.chains[index].skipped.extend(skipped.iter().copied());
        }
        let mut okm = [0u8; 44];
        Hkdf::<Sha256>::new(Some(&salt), &seed).expand(b"samizdat/v1/group/message-key", &mut okm).unwrap();
        let cipher = ChaCha20Poly1305::new(&Key::from(<[u8; 32]>::try_from(&okm[..32]).unwrap()));
        let Ok(padded) =
            cipher.decrypt(&Nonce::from(<[u8; 12]>::try_from(&okm[32..]).unwrap()), Payload { msg: &m.body, aad: &ad })
        else {
            return unauthenticated();
        };
        let Some(end) = padded.iter().rposition(|&b| b != 0) else { return unauthenticated() };
        let marker_ok = padded[end] == 0x80 || (self.rules.control_content_accepted && padded[end] == 0x81);
        let bucket = |n: usize| if n <= 4096 { n.max(64).next_power_of_two() } else { n.div_ceil(4096) * 4096 };
        if !marker_ok || padded.len() != bucket(end + 1) {
            return unauthenticated();
        }

        // Commit.
        let chain = &mut self.chains[index];
        match (skipped_position, advance) {
            (Some(position), _) => {
                chain.skipped.remove(position);
            }
            (None, Some((next_iteration, next_key, skipped))) => {
                chain.iteration = next_iteration;
                chain.chain_key = next_key;
                if !self.rules.skipped_stored_before_open {
                    chain.skipped.extend(skipped);
                }
            }
            (None, None) => unreachable!(),
        }
        chain.used.push((m.iteration, salt));
        self.evict();
        json!({"plaintext": hex::encode(&padded[..end])})
    }
}

fn decrypt_cases() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("group.json");
    let file: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    file["cases"].as_array().unwrap().iter().filter(|c| c["operation"] == "decrypt").cloned().collect()
}

/// The steps (`case: note`) where the receiver under `rules` disagrees with the file.
fn disagreements(rules: Rules) -> Vec<String> {
    let mut out = Vec::new();
    for case in decrypt_cases() {
        let mut receiver = Receiver::new(rules);
        for step in case["steps"].as_array().unwrap() {
            let result = match step["operation"].as_str().unwrap() {
                "receive" => receiver.receive(&hex::decode(step["content"].as_str().unwrap()).unwrap()),
                _ => receiver.decrypt(
                    &hex::decode(step["message"].as_str().unwrap()).unwrap(),
                    step["user_id"].as_str().unwrap(),
                    u32::try_from(step["device_id"].as_u64().unwrap()).unwrap(),
                ),
            };
            let floors = step.get("floors").cloned().unwrap_or_else(|| json!([]));
            let min_generation = step.get("min_generation").and_then(Value::as_u64).unwrap_or(0);
            if result != step["result"]
                || receiver.summary() != step["chains"]
                || receiver.floors_summary() != floors
                || receiver.min_generation != min_generation
            {
                out.push(format!("{}: {}", case["name"].as_str().unwrap(), step["note"].as_str().unwrap()));
            }
        }
    }
    out
}

#[test]
fn the_protocol_reading_agrees_with_every_step() {
    let cases = decrypt_cases();
    assert!(cases.len() >= 9, "{} decrypt cases", cases.len());
    assert_eq!(disagreements(Rules::default()), Vec::<String>::new());
}

/// Asserts that `rules` disagrees with the file on each of `steps` (`case: note` prefixes).
fn caught(rules: Rules, steps: &[&str]) {
    let found = disagreements(rules);
    assert!(!found.is_empty(), "{rules:?} agrees with every step");
    for step in steps {
        assert!(found.iter().any(|f| f.starts_with(step)), "{rules:?} is not caught by {step}: {found:#?}");
    }
}

#[test]
fn checking_the_iteration_before_the_signature_is_caught() {
    caught(
        Rules { iteration_before_signature: true, ..Rules::default() },
        &[
            "decrypt_every_signed_field: A 1, group id altered",
            "decrypt_every_signed_field: A 1 from another user id",
            "decrypt_every_signed_field: A 1, body altered",
            "decrypt_every_signed_field: A 1, signature altered (S)",
        ],
    );
}

#[test]
fn leaving_the_sender_out_of_the_signed_bytes_is_caught() {
    caught(Rules { no_sender_in_ad: true, ..Rules::default() }, &["decrypt_in_order_out_of_order_duplicates: A 0"]);
}

#[test]
fn reducing_s_is_caught() {
    caught(Rules { lax_s: true, ..Rules::default() }, &["decrypt_every_signed_field: A 1, S replaced by S + L"]);
}

#[test]
fn comparing_the_whole_salt_is_caught() {
    caught(
        Rules { whole_salt: true, ..Rules::default() },
        &["decrypt_rollback: A 1, restored, with a salt whose first 8 bytes"],
    );
}

#[test]
fn refusing_a_gap_of_max_skip_is_caught() {
    caught(
        Rules { gap_at_max_refused: true, ..Rules::default() },
        &["decrypt_too_far_ahead: A 2000", "decrypt_gap_from_the_distribution: A 2010"],
    );
}

#[test]
fn storing_skipped_keys_before_the_body_opens_is_caught() {
    caught(
        Rules { skipped_stored_before_open: true, ..Rules::default() },
        &["decrypt_signed_but_not_authentic: A 3, body altered and signed again"],
    );
}

#[test]
fn a_replayed_distribution_taking_the_chain_back_is_caught() {
    caught(
        Rules { replayed_distribution_resets: true, ..Rules::default() },
        &["decrypt_missing_chain_and_distributions: A 0 again"],
    );
}

#[test]
fn an_evicted_key_reported_as_a_duplicate_is_caught() {
    caught(
        Rules { evicted_as_duplicate: true, ..Rules::default() },
        &["decrypt_skipped_key_eviction: A 4: its key was dropped unused (never delivered: not a duplicate)"],
    );
}

#[test]
fn evicting_the_newest_chain_first_is_caught() {
    caught(
        Rules { evict_newest_first: true, ..Rules::default() },
        &["decrypt_skipped_key_eviction: B 5", "decrypt_skipped_key_eviction: A 4"],
    );
}

#[test]
fn accepting_control_content_in_a_group_body_is_caught() {
    caught(
        Rules { control_content_accepted: true, ..Rules::default() },
        &["decrypt_signed_but_not_authentic: A 3: control content"],
    );
}

#[test]
fn forgetting_an_evicted_chain_is_caught() {
    caught(
        Rules { no_floors: true, ..Rules::default() },
        &["decrypt_floors: A 0 again: below the floor", "decrypt_missing_chain_and_distributions: chain D"],
    );
}

#[test]
fn taking_a_chain_again_from_below_its_floor_is_caught() {
    caught(
        Rules { floor_not_applied_on_take_in: true, ..Rules::default() },
        &["decrypt_floors: A 1 again: below where the chain was taken"],
    );
}

#[test]
fn stepping_up_from_any_distance_below_the_floor_is_caught() {
    caught(
        Rules { no_step_limit_below_floor: true, ..Rules::default() },
        &["decrypt_floor_too_far_below: chain A at iteration 1"],
    );
}

#[test]
fn ignoring_generations_is_caught() {
    caught(
        Rules { no_generations: true, ..Rules::default() },
        &["decrypt_generations: chain 12 (generation 12)", "decrypt_generations: chain 1 again at iteration 0"],
    );
}

#[test]
fn applying_the_minimum_to_a_floored_chain_is_caught() {
    caught(
        Rules { minimum_for_every_chain: true, ..Rules::default() },
        &["decrypt_generations: the chain of generation 2 again at iteration 5"],
    );
}
