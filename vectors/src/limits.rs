//! The ratchet's limits and the rules that need long conversations: each case
//! starts from one party's stored state (13.1) and replays what that party
//! did (decryptions of given messages, encryptions with given randomness).

use chacha20::ChaCha20Rng;
use samizdat::{
    EncryptError,
    hazmat::FixedBytes,
    keys::X25519Secret,
    ratchet::{DoubleRatchet, RatchetInit},
    wire::RatchetMessage,
};
use samizdat_proto::{Message as _, storage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, bytes, decode_error, decrypt_error, err, h, random, random_vec, sha256},
};

/// `ratchet_limits.json`.
pub(crate) struct RatchetLimits;

#[derive(Serialize, Deserialize)]
pub(crate) struct LimitCase {
    name: String,
    /// What the case pins, and the sections.
    rule: String,
    /// The party's stored state before the first step.
    state: String,
    steps: Vec<Step>,
    /// SHA-256 of the stored state after the last step.
    #[serde(default)]
    final_state_sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum Step {
    /// Decrypt `message` (wire bytes); `random` is what the party may draw
    /// (32 bytes at a DH step, nothing otherwise).
    Decrypt {
        message: String,
        random: String,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        stored_skipped_keys: usize,
        #[serde(default)]
        receiving_chains: usize,
    },
    /// Encrypt `plaintext` with the 24-byte header nonce `random`.
    Encrypt {
        plaintext: String,
        random: String,
        #[serde(default)]
        result: Value,
    },
}

impl VectorSet for RatchetLimits {
    type Case = LimitCase;
    const META: Meta = Meta {
        file: "ratchet_limits.json",
        section: "4.5 Encryption; 4.6.2 A message on a known chain; 4.6.3 The DH ratchet step (step 8b); 4.7 Skipped message keys; 4.8 Duplicates and rollbacks; 11 Limits; 13.1 Ratchet states",
        description: "Each case loads `state` (a stored ratchet state, 13.1 and 13.3) and applies `steps` in order to \
            that one party. `decrypt`: decode `message` (12.4) and decrypt it (4.6); `random` is given to the party as \
            its randomness (32 bytes where the step is a DH step, empty otherwise). `result` is `{\"plaintext\": hex}` \
            or the error; `stored_skipped_keys` and `receiving_chains` count what the state holds afterwards (4.7). \
            A failed step changes nothing. `encrypt`: encrypt `plaintext` (4.5) drawing the 24-byte header nonce \
            `random`; `result` is `{\"wire\": hex}` (the encoded ratchet message, 12.3) or the error. \
            `final_state_sha256` is SHA-256 of the stored state (13.2) after the last step. The messages were made \
            by the other party, or by a copy of it restored from an earlier state, as `rule` says.",
        seed: 17,
        inputs: &[
            "name",
            "rule",
            "state",
            "steps[].operation",
            "steps[].message",
            "steps[].random",
            "steps[].plaintext",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<LimitCase>, VErr> {
        Ok(vec![
            too_far_ahead_on_a_new_chain(rng)?,
            too_far_ahead_on_the_current_chain(rng)?,
            eviction_starts_with_the_oldest(rng)?,
            closed_chain_past_its_end(rng)?,
            keys_past_pn_are_dropped(rng)?,
            chain_exhausted(rng)?,
        ])
    }

    fn compute(case: &LimitCase) -> R<LimitCase> {
        let mut party =
            DoubleRatchet::from_bytes(&bytes("state", &case.state)?).map_err(|e| err("state", e.to_string()))?;
        let mut steps = Vec::with_capacity(case.steps.len());
        for (i, step) in case.steps.iter().enumerate() {
            let field = |name: &str| format!("steps[{i}].{name}");
            let before = party.to_bytes();
            let (step, failed) = match step {
                Step::Decrypt { message, random, .. } => {
                    let wire = bytes(&field("message"), message)?;
                    let mut rng = FixedBytes::new(&bytes(&field("random"), random)?);
                    let result = RatchetMessage::from_bytes(&wire)
                        .map_err(|e| decode_error(&e))
                        .and_then(|m| party.decrypt(&mut rng, &m).map_err(|e| decrypt_error(&e)));
                    let failed = result.is_err();
                    let result = match result {
                        Ok(plaintext) => json!({ "plaintext": h(plaintext) }),
                        Err(error) => error,
                    };
                    let step = Step::Decrypt {
                        message: message.clone(),
                        random: random.clone(),
                        result,
                        stored_skipped_keys: party.stored_skipped_keys(),
                        receiving_chains: party.receiving_chains(),
                    };
                    (step, failed)
                }
                Step::Encrypt { plaintext, random, .. } => {
                    let mut rng = FixedBytes::new(&bytes(&field("random"), random)?);
                    let result = party.encrypt(&mut rng, &bytes(&field("plaintext"), plaintext)?);
                    let failed = result.is_err();
                    let result = match result {
                        Ok(message) => json!({ "wire": h(message.to_bytes()) }),
                        Err(error) => encrypt_error(&error),
                    };
                    (Step::Encrypt { plaintext: plaintext.clone(), random: random.clone(), result }, failed)
                }
            };
            if failed && party.to_bytes() != before {
                return Err(err(field("result"), "a failed step changed the state"));
            }
            steps.push(step);
        }
        Ok(LimitCase {
            name: case.name.clone(),
            rule: case.rule.clone(),
            state: case.state.clone(),
            steps,
            final_state_sha256: h(sha256(&party.to_bytes())),
        })
    }
}

pub(crate) fn encrypt_error(e: &EncryptError) -> Value {
    match e {
        EncryptError::MessageTooLarge { len, max } => json!({"error": "message_too_large", "len": len, "max": max}),
        EncryptError::NoSendingChain => json!({"error": "no_sending_chain"}),
        EncryptError::ChainExhausted => json!({"error": "chain_exhausted"}),
        other => json!({"error": format!("{other:?}")}),
    }
}

/// Alice (initiator) and Bob (responder) of a new session.
struct Pair {
    alice: DoubleRatchet,
    bob: DoubleRatchet,
}

fn pair(rng: &mut ChaCha20Rng) -> R<Pair> {
    let ad = random_vec(rng, 64);
    let (root_key, hka, nhkb) = (random::<32>(rng), random::<32>(rng), random::<32>(rng));
    let init = || RatchetInit::new(root_key, hka, nhkb, &ad).map_err(|e| err("state", e.to_string()));
    let (init_a, init_b) = (init()?, init()?);
    let bob_key = X25519Secret::from_bytes(random::<32>(rng));
    let alice = DoubleRatchet::new_initiator(&mut FixedBytes::new(&random::<32>(rng)), init_a, &bob_key.public_key())
        .map_err(|e| err("state", e.to_string()))?;
    Ok(Pair { alice, bob: DoubleRatchet::new_responder(init_b, bob_key) })
}

fn send(party: &mut DoubleRatchet, rng: &mut ChaCha20Rng, text: &str) -> R<Vec<u8>> {
    let message = party
        .encrypt(&mut FixedBytes::new(&random::<24>(rng)), text.as_bytes())
        .map_err(|e| err("steps", e.to_string()))?;
    Ok(message.to_bytes())
}

/// Sends `count` messages, `"<label> <n>"`, and returns their wire bytes.
fn send_many(party: &mut DoubleRatchet, rng: &mut ChaCha20Rng, label: &str, count: usize) -> R<Vec<Vec<u8>>> {
    (0..count).map(|n| send(party, rng, &format!("{label} {n}"))).collect()
}

/// Records a decryption by `party` (performed now, so that the other party
/// can go on) as a step with its inputs.
fn deliver(party: &mut DoubleRatchet, rng: &mut ChaCha20Rng, wire: &[u8]) -> R<Step> {
    let offered = random::<32>(rng);
    let mut fixed = FixedBytes::new(&offered);
    let decoded = RatchetMessage::from_bytes(wire).map_err(|e| err("steps", e.to_string()))?;
    let _ = party.decrypt(&mut fixed, &decoded);
    let random = if fixed.drawn() > 0 { h(offered) } else { String::new() };
    Ok(Step::Decrypt { message: h(wire), random, result: Value::Null, stored_skipped_keys: 0, receiving_chains: 0 })
}

/// As [`deliver`], for a message the other party must also receive.
fn reply(party: &mut DoubleRatchet, rng: &mut ChaCha20Rng, text: &str) -> R<(Step, Vec<u8>)> {
    let random = random::<24>(rng);
    let wire = party
        .encrypt(&mut FixedBytes::new(&random), text.as_bytes())
        .map_err(|e| err("steps", e.to_string()))?
        .to_bytes();
    Ok((Step::Encrypt { plaintext: h(text.as_bytes()), random: h(random), result: Value::Null }, wire))
}

fn receive(party: &mut DoubleRatchet, rng: &mut ChaCha20Rng, wire: &[u8]) -> R<()> {
    let decoded = RatchetMessage::from_bytes(wire).map_err(|e| err("steps", e.to_string()))?;
    party.decrypt(&mut FixedBytes::new(&random::<32>(rng)), &decoded).map_err(|e| err("steps", e.to_string()))?;
    Ok(())
}

fn case(name: &str, rule: &str, state: &[u8], steps: Vec<Step>) -> LimitCase {
    LimitCase {
        name: name.to_owned(),
        rule: rule.to_owned(),
        state: h(state),
        steps,
        final_state_sha256: String::new(),
    }
}

fn get(messages: &[Vec<u8>], n: usize) -> R<&[u8]> {
    messages.get(n).map(Vec::as_slice).ok_or_else(|| err("steps", format!("no message {n}")))
}

fn too_far_ahead_on_a_new_chain(rng: &mut ChaCha20Rng) -> R<LimitCase> {
    let Pair { mut alice, mut bob } = pair(rng)?;
    let sent = send_many(&mut alice, rng, "a1", 2002)?;
    let state = bob.to_bytes();
    let steps = vec![
        deliver(&mut bob, rng, get(&sent, 2001)?)?,
        deliver(&mut bob, rng, get(&sent, 2000)?)?,
        deliver(&mut bob, rng, get(&sent, 0)?)?,
        deliver(&mut bob, rng, get(&sent, 1999)?)?,
    ];
    Ok(case(
        "too_far_ahead_on_a_new_chain",
        "A DH step may skip at most MAX_SKIP = 2,000 keys (4.6.2 SkipTo, 4.6.3): counter 2,001 on a new chain is \
         TooFarAhead { gap: 2001 } and changes nothing; counter 2,000 is accepted and stores 2,000 skipped keys, \
         which then decrypt counters 0 and 1,999.",
        &state,
        steps,
    ))
}

fn too_far_ahead_on_the_current_chain(rng: &mut ChaCha20Rng) -> R<LimitCase> {
    let Pair { mut alice, mut bob } = pair(rng)?;
    let sent = send_many(&mut alice, rng, "a1", 2003)?;
    receive(&mut bob, rng, get(&sent, 0)?)?;
    let state = bob.to_bytes();
    let steps = vec![deliver(&mut bob, rng, get(&sent, 2002)?)?, deliver(&mut bob, rng, get(&sent, 2001)?)?];
    Ok(case(
        "too_far_ahead_on_the_current_chain",
        "On the current chain (Nr = 1) the gap is n - Nr (4.6.2): counter 2,002 is TooFarAhead { gap: 2001 }, \
         counter 2,001 (gap 2,000) is accepted.",
        &state,
        steps,
    ))
}

fn eviction_starts_with_the_oldest(rng: &mut ChaCha20Rng) -> R<LimitCase> {
    let Pair { mut alice, mut bob } = pair(rng)?;
    let first = send_many(&mut alice, rng, "a1", 2001)?;
    let state = bob.to_bytes();
    let mut steps = vec![deliver(&mut bob, rng, get(&first, 2000)?)?];
    let (step, wire) = reply(&mut bob, rng, "b1 0")?;
    steps.push(step);
    receive(&mut alice, rng, &wire)?;
    let second = send_many(&mut alice, rng, "a2", 6)?;
    steps.extend([
        deliver(&mut bob, rng, get(&second, 5)?)?,
        deliver(&mut bob, rng, get(&first, 3)?)?,
        deliver(&mut bob, rng, get(&first, 4)?)?,
        deliver(&mut bob, rng, get(&first, 5)?)?,
        deliver(&mut bob, rng, get(&second, 2)?)?,
    ]);
    Ok(case(
        "eviction_starts_with_the_oldest",
        "Eviction (4.7): 2,000 skipped keys on the first chain, then a DH step that skips 5 more on the second: the \
         5 lowest counters of the first (oldest) chain are deleted and remembered as evicted (4.8), so counters 3 and 4 \
         there are KeyEvicted (never delivered: not Duplicate) while counter 5 there and counter 2 of the new chain \
         decrypt.",
        &state,
        steps,
    ))
}

fn closed_chain_past_its_end(rng: &mut ChaCha20Rng) -> R<LimitCase> {
    let Pair { mut alice, mut bob } = pair(rng)?;
    let first = send_many(&mut alice, rng, "a1", 2)?;
    let backup = alice.to_bytes();
    receive(&mut bob, rng, get(&first, 0)?)?;
    receive(&mut bob, rng, get(&first, 1)?)?;
    let state = bob.to_bytes();
    let (step, wire) = reply(&mut bob, rng, "b1 0")?;
    let mut steps = vec![step];
    receive(&mut alice, rng, &wire)?;
    let second = send_many(&mut alice, rng, "a2", 1)?;
    steps.push(deliver(&mut bob, rng, get(&second, 0)?)?);
    // Alice restored from her backup sends on her first chain again.
    let mut restored = DoubleRatchet::from_bytes(&backup).map_err(|e| err("state", e.to_string()))?;
    let again = send_many(&mut restored, rng, "a1 restored", 2)?;
    steps.extend([
        deliver(&mut bob, rng, get(&again, 0)?)?,
        deliver(&mut bob, rng, get(&again, 1)?)?,
        deliver(&mut bob, rng, get(&first, 1)?)?,
    ]);
    Ok(case(
        "closed_chain_past_its_end",
        "A chain closed by a DH step (PN = 2, 4.6.3) has no chain key: an authentic message on it at or past its \
         end (N = 2, 3 >= Nr = 2), sent by the peer restored from a backup, is Rollback and never advances the \
         chain (4.6.2, 4.8); a copy of counter 1 is Duplicate.",
        &state,
        steps,
    ))
}

fn keys_past_pn_are_dropped(rng: &mut ChaCha20Rng) -> R<LimitCase> {
    let Pair { mut alice, mut bob } = pair(rng)?;
    let first = send_many(&mut alice, rng, "a1", 2)?;
    // Someone holding a copy of Alice's state sends far ahead on her chain.
    let mut copy = DoubleRatchet::from_bytes(&alice.to_bytes()).map_err(|e| err("state", e.to_string()))?;
    let forged = send_many(&mut copy, rng, "a1 copy", 6)?;
    receive(&mut bob, rng, get(&first, 0)?)?;
    let state = bob.to_bytes();
    let mut steps = vec![deliver(&mut bob, rng, get(&first, 1)?)?, deliver(&mut bob, rng, get(&forged, 5)?)?];
    let (step, wire) = reply(&mut bob, rng, "b1 0")?;
    steps.push(step);
    receive(&mut alice, rng, &wire)?;
    let second = send_many(&mut alice, rng, "a2", 1)?;
    steps.extend([
        deliver(&mut bob, rng, get(&second, 0)?)?,
        deliver(&mut bob, rng, get(&forged, 3)?)?,
        deliver(&mut bob, rng, get(&forged, 5)?)?,
    ]);
    Ok(case(
        "keys_past_pn_are_dropped",
        "Step 8b of 4.6.3: a copy of Alice's state sends counters 2 to 7 on her chain; Bob decrypts counter 7 \
         (skipping 2 to 6). Alice's next DH step says PN = 2, so Bob drops the keys and used counters at or past 2 \
         on that chain: the copy's counter 5 is then Rollback, not a decryption from a kept key, and counter 7 is \
         Rollback.",
        &state,
        steps,
    ))
}

fn chain_exhausted(rng: &mut ChaCha20Rng) -> R<LimitCase> {
    let Pair { mut alice, .. } = pair(rng)?;
    let mut record =
        storage::RatchetState::decode(alice.to_bytes().as_slice()).map_err(|e| err("state", e.to_string()))?;
    if let Some(sending) = record.sending.as_mut() {
        sending.counter = u32::MAX - 1;
    }
    let state = record.encode_to_vec();
    alice = DoubleRatchet::from_bytes(&state).map_err(|e| err("state", e.to_string()))?;
    let (first, _) = reply(&mut alice, rng, "last")?;
    let random = random::<24>(rng);
    let second = Step::Encrypt { plaintext: h(b"one too many"), random: h(random), result: Value::Null };
    Ok(case(
        "chain_exhausted",
        "The largest counter sent on a chain is 2^32 - 2 (4.5 step 3): a state with Ns = 2^32 - 2 encrypts once \
         (header counter fffffffe), then fails with ChainExhausted and changes nothing.",
        &state,
        vec![first, second],
    ))
}
