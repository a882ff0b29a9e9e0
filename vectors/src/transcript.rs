//! A conversation through the Double Ratchet's public API, replayable from
//! the listed secrets and random bytes.

use chacha20::{ChaCha20Rng, rand_core::Rng};
use samizdat::{
    hazmat::{self, FixedBytes},
    keys::X25519Secret,
    ratchet::{DoubleRatchet, RatchetInit},
    wire::RatchetMessage,
};
use samizdat_proto::{Message as _, storage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    format::{Meta, VectorSet},
    util::{
        R, VErr, agree, array, bytes, chacha20poly1305_seal, check_drawn, decode_error, decrypt_error, err, h,
        random_hex, random_vec,
    },
};

/// `ratchet_transcript.json`.
pub(crate) struct RatchetTranscript;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct TranscriptCase {
    name: String,
    associated_data: String,
    root_key: String,
    hka: String,
    nhkb: String,
    bob_ratchet_secret: String,
    alice_ratchet_secret: String,
    bob_ratchet_public: String,
    alice_ratchet_public: String,
    events: Vec<Event>,
    summary: Summary,
    alice_final_state: String,
    bob_final_state: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Party {
    Alice,
    Bob,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// `sender` encrypts message number `message`.
    Send {
        message: usize,
        sender: Party,
        random: String,
        plaintext: String,
        #[serde(default)]
        ratchet_key: String,
        #[serde(default)]
        previous_counter: u32,
        #[serde(default)]
        counter: u32,
        #[serde(default)]
        header_key: String,
        #[serde(default)]
        chain_key: String,
        #[serde(default)]
        message_key_seed: String,
        #[serde(default)]
        message_key: String,
        #[serde(default)]
        message_nonce: String,
        #[serde(default)]
        encrypted_header: String,
        #[serde(default)]
        body: String,
        #[serde(default)]
        wire: String,
    },
    /// `to` decrypts message `message` (or `altered_wire`, a copy with a byte changed).
    Deliver {
        message: usize,
        to: Party,
        random: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        altered_wire: Option<String>,
        /// The decrypted plaintext (an output; the sent plaintext is the
        /// input `plaintext` of the `send` event).
        #[serde(default)]
        decrypted: Option<String>,
        #[serde(default)]
        error: Option<Value>,
        #[serde(default)]
        key: Option<KeySource>,
        #[serde(default)]
        new_ratchet_key: Option<String>,
        #[serde(default)]
        skipped_keys: usize,
        #[serde(default)]
        receiving_chains: usize,
    },
    /// `party` goes back to the state it had right after event `after_event`
    /// (a restored backup, a cloned store): `state` is that stored state.
    Restore {
        party: Party,
        after_event: usize,
        #[serde(default)]
        state: String,
    },
}

/// Where a delivered message's key came from.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeySource {
    /// The current receiving chain (possibly skipping keys).
    Chain,
    /// A stored skipped key.
    Skipped,
    /// A header that opened under the next header key: a DH step.
    DhStep,
}

#[derive(Serialize, Deserialize, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    sent_by_alice: usize,
    sent_by_bob: usize,
    deliveries: usize,
    dh_steps: usize,
    from_skipped_keys: usize,
    duplicates: usize,
    unauthenticated: usize,
    no_matching_state: usize,
    rollbacks: usize,
}

impl VectorSet for RatchetTranscript {
    type Case = TranscriptCase;
    const META: Meta = Meta {
        file: "ratchet_transcript.json",
        section: "4 The Double Ratchet with header encryption (4.3 to 4.9); 5 Padding; 12.3 Encoding \
            (RatchetMessage); 13.1 Ratchet states",
        description: "A conversation between Alice (initiator) and Bob (responder), replayable exactly. Both start \
            from root_key (SK), hka, nhkb and associated_data (1.4); Bob's first ratchet key pair has secret \
            bob_ratchet_secret (public key bob_ratchet_public); Alice's initialisation draws alice_ratchet_secret \
            (public key alice_ratchet_public). `events` run in order; `event` gives the kind of each. A `send` event \
            encrypts `plaintext` (an input) for `sender`, whose generator gives exactly `random` (the 24-byte header \
            nonce); it lists the header fields (ratchet_key = DHs, previous_counter = PN, counter = N), the sending \
            header key HKs and chain key CKs used, the message key seed, key and nonce, the encrypted header, the \
            body and the encoded RatchetMessage (`wire`). Sends are numbered by `message` from 0. A `deliver` event \
            gives message `message`'s wire bytes (or `altered_wire`, present only when a copy with one byte changed \
            is delivered) to `to`, whose generator gives exactly `random`: 32 bytes when the decryption performs a DH \
            step (the new ratchet secret), else nothing (\"\"). It lists `decrypted`, the plaintext the receiver \
            gets (an output; null on failure), or `error` (null on success): duplicate with its counter, rollback \
            with its counter (another message on a counter already used, from a sender that went backwards), \
            unauthenticated (a header that opens, a body that does not), no_matching_state (no header key of the \
            state opens the header: PROTOCOL.md 4.6.1); `key`, where the message key came from: chain (derived on the current receiving chain, \
            storing the keys of any counters it passes over), skipped (a stored skipped key, of the current or a \
            closed chain, deleted by the delivery), dh_step (the header opened under NHKr: the receiver performed a \
            DH step and derived the key on the new receiving chain), null on failure; `new_ratchet_key`, the \
            receiver's new ratchet public key after a DH step (else null); and `skipped_keys` and \
            `receiving_chains`, the receiver's numbers of stored skipped keys and receiving chains afterwards. A \
            `restore` event puts `party` back in the state it had right after event `after_event` (0-based, a \
            restored backup): `state` is that stored RatchetState. `summary` counts send events by sender, \
            deliveries, deliveries by `key` (dh_steps, from_skipped_keys) and by error (duplicates, \
            unauthenticated, no_matching_state, rollbacks). The final states are the stored RatchetState encodings (13.1, 13.2).",
        seed: 12,
        inputs: &[
            "name",
            "associated_data",
            "root_key",
            "hka",
            "nhkb",
            "bob_ratchet_secret",
            "alice_ratchet_secret",
            "events[].event",
            "events[].message",
            "events[].sender",
            "events[].to",
            "events[].random",
            "events[].plaintext",
            "events[].altered_wire",
            "events[].party",
            "events[].after_event",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<TranscriptCase>, VErr> {
        let mut ad = b"samizdat/v1/session-ad".to_vec();
        ad.extend_from_slice(&random_vec(rng, 64));
        let mut case = TranscriptCase {
            name: "conversation".to_owned(),
            associated_data: h(&ad),
            root_key: random_hex(rng, 32),
            hka: random_hex(rng, 32),
            nhkb: random_hex(rng, 32),
            bob_ratchet_secret: random_hex(rng, 32),
            alice_ratchet_secret: random_hex(rng, 32),
            events: schedule(rng)?,
            ..TranscriptCase::default()
        };
        // Run once with 32 random bytes offered to every delivery, then list
        // only the bytes that were drawn.
        let (ran, drawn) = run(&case, false)?;
        for (event, drawn) in case.events.iter_mut().zip(drawn) {
            if let Event::Deliver { random, .. } = event
                && drawn == 0
            {
                random.clear();
            }
        }
        let s = &ran.summary;
        if s.sent_by_alice < 50
            || s.sent_by_bob < 50
            || s.dh_steps < 10
            || s.from_skipped_keys < 5
            || s.duplicates < 3
            || s.unauthenticated < 1
            || s.no_matching_state < 3
            || s.rollbacks < 3
        {
            return Err(err(
                "events",
                format!(
                    "the schedule does not cover every case (change it): {}",
                    serde_json::to_string(s).unwrap_or_default()
                ),
            ));
        }
        Ok(vec![case])
    }

    fn compute(case: &TranscriptCase) -> R<TranscriptCase> {
        run(case, true).map(|(out, _)| out)
    }
}

fn other(party: Party) -> Party {
    match party {
        Party::Alice => Party::Bob,
        Party::Bob => Party::Alice,
    }
}

fn pick(rng: &mut ChaCha20Rng, n: usize) -> usize {
    usize::try_from(rng.next_u32()).unwrap_or(0) % n.max(1)
}

/// The conversation's script: rounds in which one party sends 4 to 7
/// messages and the other receives some of them, shuffled, some held back for
/// later rounds, sometimes a duplicate; two altered copies; one message held
/// until its chain is no longer kept.
fn schedule(rng: &mut ChaCha20Rng) -> R<Vec<Event>> {
    const ROUNDS: usize = 22;
    const HELD_FOREVER: usize = 1;
    let mut events = Vec::new();
    let mut sent = 0usize;
    // Per receiver: messages held back for a later round, and messages delivered.
    let mut queues = [(Party::Alice, Vec::new(), Vec::new()), (Party::Bob, Vec::new(), Vec::new())];
    let deliver = |message: usize, to: Party, random: String, altered_wire: Option<String>| Event::Deliver {
        message,
        to,
        random,
        altered_wire,
        decrypted: None,
        error: None,
        key: None,
        new_ratchet_key: None,
        skipped_keys: 0,
        receiving_chains: 0,
    };
    for round in 0..ROUNDS {
        let sender = if round % 2 == 0 { Party::Alice } else { Party::Bob };
        let to = other(sender);
        let count = 4 + pick(rng, 4);
        let mut fresh = Vec::with_capacity(count);
        for _ in 0..count {
            let message = sent;
            sent += 1;
            events.push(Event::Send {
                message,
                sender,
                random: random_hex(rng, 24),
                plaintext: h(plaintext(rng, sender, message)),
                ratchet_key: String::new(),
                previous_counter: 0,
                counter: 0,
                header_key: String::new(),
                chain_key: String::new(),
                message_key_seed: String::new(),
                message_key: String::new(),
                message_nonce: String::new(),
                encrypted_header: String::new(),
                body: String::new(),
                wire: String::new(),
            });
            fresh.push(message);
        }
        // Altered copies: a changed body byte (round 6), a changed header byte (round 7).
        if round == 6 || round == 7 {
            let message = fresh.first().copied().unwrap_or(0);
            events.push(deliver(message, to, random_hex(rng, 32), Some(format!("round{round}"))));
        }
        let Some((_, pending, delivered)) = queues.iter_mut().find(|(p, _, _)| *p == to) else { continue };
        let mut batch: Vec<usize> = Vec::new();
        let held = std::mem::take(pending);
        for message in held {
            if pick(rng, 2) == 0 { batch.push(message) } else { pending.push(message) }
        }
        for (i, &message) in fresh.iter().enumerate() {
            if round == 0 && message == HELD_FOREVER {
                continue;
            }
            if i > 0 && pick(rng, 4) == 0 { pending.push(message) } else { batch.push(message) }
        }
        for i in (1..batch.len()).rev() {
            batch.swap(i, pick(rng, i + 1));
        }
        for message in batch {
            events.push(deliver(message, to, random_hex(rng, 32), None));
            delivered.push(message);
        }
        if pick(rng, 2) == 0 && !delivered.is_empty() {
            let again = delivered.get(pick(rng, delivered.len())).copied().unwrap_or(0);
            events.push(deliver(again, to, random_hex(rng, 32), None));
        }
    }
    for (party, pending, _) in queues.iter_mut().rev() {
        let party = *party;
        for message in std::mem::take(pending) {
            events.push(deliver(message, party, random_hex(rng, 32), None));
        }
    }
    events.push(deliver(HELD_FOREVER, Party::Bob, random_hex(rng, 32), None));

    // Alice is restored from a backup taken before her last three messages,
    // all of which Bob decrypted. Her next three messages reuse their
    // counters (with other header nonces, so other keys): Bob reports each
    // as a rollback; a replay of an original is still a duplicate; her
    // fourth message is past what Bob had and decrypts.
    let mut send = |events: &mut Vec<Event>, rng: &mut ChaCha20Rng| {
        let message = sent;
        sent += 1;
        events.push(Event::Send {
            message,
            sender: Party::Alice,
            random: random_hex(rng, 24),
            plaintext: h(plaintext(rng, Party::Alice, message)),
            ratchet_key: String::new(),
            previous_counter: 0,
            counter: 0,
            header_key: String::new(),
            chain_key: String::new(),
            message_key_seed: String::new(),
            message_key: String::new(),
            message_nonce: String::new(),
            encrypted_header: String::new(),
            body: String::new(),
            wire: String::new(),
        });
        message
    };
    let backup = events.len().saturating_sub(1);
    let originals: Vec<usize> = (0..3).map(|_| send(&mut events, rng)).collect();
    for &message in &originals {
        events.push(deliver(message, Party::Bob, random_hex(rng, 32), None));
    }
    events.push(Event::Restore { party: Party::Alice, after_event: backup, state: String::new() });
    for _ in 0..4 {
        let message = send(&mut events, rng);
        events.push(deliver(message, Party::Bob, random_hex(rng, 32), None));
    }
    if let Some(&first) = originals.first() {
        events.push(deliver(first, Party::Bob, random_hex(rng, 32), None));
    }
    Ok(events)
}

/// Plaintexts of varied lengths, so that several padding buckets appear.
fn plaintext(rng: &mut ChaCha20Rng, sender: Party, message: usize) -> Vec<u8> {
    let name = if sender == Party::Alice { "Alice" } else { "Bob" };
    let mut text = format!("{name}, message {message}").into_bytes();
    match message % 13 {
        _ if message == 9 => text.clear(),
        _ if message == 40 => text.extend_from_slice(&random_vec(rng, 5000)),
        3 | 8 => text.extend_from_slice(&random_vec(rng, 80)),
        5 => text.extend_from_slice(&random_vec(rng, 300)),
        11 => text.resize(63, b'.'),
        _ => {}
    }
    text
}

struct Parties {
    alice: DoubleRatchet,
    bob: DoubleRatchet,
}

impl Parties {
    fn get(&mut self, party: Party) -> &mut DoubleRatchet {
        match party {
            Party::Alice => &mut self.alice,
            Party::Bob => &mut self.bob,
        }
    }
}

/// Replays the conversation; returns the case with every output and the
/// number of random bytes each event drew. With `strict`, every event must
/// draw exactly the bytes it lists; without, a delivery may draw fewer.
fn run(case: &TranscriptCase, strict: bool) -> R<(TranscriptCase, Vec<usize>)> {
    let ad = bytes("associated_data", &case.associated_data)?;
    let root_key = array::<32>("root_key", &case.root_key)?;
    let hka = array::<32>("hka", &case.hka)?;
    let nhkb = array::<32>("nhkb", &case.nhkb)?;
    let bob_secret = array::<32>("bob_ratchet_secret", &case.bob_ratchet_secret)?;
    let alice_secret = array::<32>("alice_ratchet_secret", &case.alice_ratchet_secret)?;
    let init = || RatchetInit::new(root_key, hka, nhkb, &ad).map_err(|e| err("associated_data", e.to_string()));
    let bob_key = X25519Secret::from_bytes(bob_secret);
    let mut rng = FixedBytes::new(&alice_secret);
    let alice = DoubleRatchet::new_initiator(&mut rng, init()?, &bob_key.public_key())
        .map_err(|e| err("bob_ratchet_secret", e.to_string()))?;
    check_drawn("alice_ratchet_secret", &rng, 32)?;
    let mut parties = Parties { alice, bob: DoubleRatchet::new_responder(init()?, bob_key) };

    let mut wires: Vec<Vec<u8>> = Vec::new();
    let mut events = Vec::with_capacity(case.events.len());
    let mut drawn = Vec::with_capacity(case.events.len());
    let mut summary = Summary::default();
    // Each party's stored state after each event, for `restore`.
    let mut snapshots: Vec<[Vec<u8>; 2]> = Vec::with_capacity(case.events.len());
    for (i, event) in case.events.iter().enumerate() {
        let field = |name: &str| format!("events[{i}].{name}");
        match event {
            Event::Restore { party, after_event, .. } => {
                let stored = snapshots
                    .get(*after_event)
                    .ok_or_else(|| err(field("after_event"), "not an earlier event"))?
                    .get(usize::from(*party == Party::Bob))
                    .cloned()
                    .unwrap_or_default();
                *parties.get(*party) =
                    DoubleRatchet::from_bytes(&stored).map_err(|e| err(field("state"), e.to_string()))?;
                drawn.push(0);
                events.push(Event::Restore { party: *party, after_event: *after_event, state: h(&stored) });
            }
            Event::Send { message, sender, random, plaintext, .. } => {
                if *message != wires.len() {
                    return Err(err(
                        field("message"),
                        format!("sends are numbered in order: expected {}", wires.len()),
                    ));
                }
                let nonce = array::<24>(&field("random"), random)?;
                let pt = bytes(&field("plaintext"), plaintext)?;
                let party = parties.get(*sender);
                let state = storage::RatchetState::decode(party.to_bytes().as_slice())
                    .map_err(|e| err(field("sender"), format!("state: {e}")))?;
                let sending = state.sending.unwrap_or_default();
                let ratchet_key = party.ratchet_public_key();
                let mut rng = FixedBytes::new(&nonce);
                let sealed = party.encrypt(&mut rng, &pt).map_err(|e| err(field("sender"), e.to_string()))?;
                check_drawn(&field("random"), &rng, 24)?;
                drawn.push(rng.drawn());
                // The same message from single steps.
                let header_key = array::<32>(&field("header_key"), &h(&sending.header_key))?;
                let chain_key = array::<32>(&field("chain_key"), &h(&sending.chain_key))?;
                let (seed, _) = hazmat::chain_step(&chain_key);
                let (mk, mn) = hazmat::message_key(&seed, &nonce);
                let eh = hazmat::seal_header(
                    &header_key,
                    nonce,
                    (ratchet_key.as_bytes(), sending.previous_counter, sending.counter),
                    false,
                    &ad,
                );
                agree(&field("encrypted_header"), sealed.header(), &eh)?;
                let mut body_ad = ad.clone();
                body_ad.extend_from_slice(&eh);
                let padded = hazmat::pad(&pt).ok_or_else(|| err(field("plaintext"), "too long"))?;
                agree(&field("body"), sealed.body(), &chacha20poly1305_seal(&mk, &mn, &body_ad, &padded)?)?;
                let wire = sealed.to_bytes();
                summary.sent_by_alice += usize::from(*sender == Party::Alice);
                summary.sent_by_bob += usize::from(*sender == Party::Bob);
                events.push(Event::Send {
                    message: *message,
                    sender: *sender,
                    random: random.clone(),
                    plaintext: plaintext.clone(),
                    ratchet_key: h(ratchet_key.as_bytes()),
                    previous_counter: sending.previous_counter,
                    counter: sending.counter,
                    header_key: h(header_key),
                    chain_key: h(chain_key),
                    message_key_seed: h(seed),
                    message_key: h(mk),
                    message_nonce: h(mn),
                    encrypted_header: h(eh),
                    body: h(sealed.body()),
                    wire: h(&wire),
                });
                wires.push(wire);
            }
            Event::Deliver { message, to, random, altered_wire, .. } => {
                let original =
                    wires.get(*message).ok_or_else(|| err(field("message"), "delivered before it was sent"))?.clone();
                let wire = match altered_wire {
                    // During generation, "roundN" stands for an alteration still to be made.
                    Some(marker) if marker.starts_with("round") => alter(&original, marker == "round6"),
                    Some(text) => bytes(&field("altered_wire"), text)?,
                    None => original,
                };
                let offered = bytes(&field("random"), random)?;
                let party = parties.get(*to);
                let before = party.stored_skipped_keys();
                let mut rng = FixedBytes::new(&offered);
                let result = RatchetMessage::from_bytes(&wire)
                    .map_err(|e| decode_error(&e))
                    .and_then(|m| party.decrypt(&mut rng, &m).map_err(|e| decrypt_error(&e)));
                if strict {
                    check_drawn(&field("random"), &rng, offered.len())?;
                }
                drawn.push(rng.drawn());
                let step = rng.drawn() > 0;
                let after = party.stored_skipped_keys();
                let key = match &result {
                    Err(_) => None,
                    Ok(_) if step => Some(KeySource::DhStep),
                    Ok(_) if after < before => Some(KeySource::Skipped),
                    Ok(_) => Some(KeySource::Chain),
                };
                summary.deliveries += 1;
                summary.dh_steps += usize::from(key == Some(KeySource::DhStep));
                summary.from_skipped_keys += usize::from(key == Some(KeySource::Skipped));
                if let Err(e) = &result {
                    let kind = e.get("error").and_then(Value::as_str);
                    summary.duplicates += usize::from(kind == Some("duplicate"));
                    summary.unauthenticated += usize::from(kind == Some("unauthenticated"));
                    summary.no_matching_state += usize::from(kind == Some("no_matching_state"));
                    summary.rollbacks += usize::from(kind == Some("rollback"));
                }
                events.push(Event::Deliver {
                    message: *message,
                    to: *to,
                    random: random.clone(),
                    altered_wire: altered_wire.as_ref().map(|_| h(&wire)),
                    decrypted: result.as_ref().ok().map(h),
                    error: result.err(),
                    key,
                    new_ratchet_key: step.then(|| h(party.ratchet_public_key().as_bytes())),
                    skipped_keys: after,
                    receiving_chains: party.receiving_chains(),
                });
            }
        }
        snapshots.push([parties.alice.to_bytes().to_vec(), parties.bob.to_bytes().to_vec()]);
    }
    Ok((
        TranscriptCase {
            name: case.name.clone(),
            associated_data: case.associated_data.clone(),
            root_key: case.root_key.clone(),
            hka: case.hka.clone(),
            nhkb: case.nhkb.clone(),
            bob_ratchet_secret: case.bob_ratchet_secret.clone(),
            alice_ratchet_secret: case.alice_ratchet_secret.clone(),
            bob_ratchet_public: h(hazmat::x25519_public(&bob_secret)),
            alice_ratchet_public: h(hazmat::x25519_public(&alice_secret)),
            events,
            summary,
            alice_final_state: h(parties.alice.to_bytes().as_slice()),
            bob_final_state: h(parties.bob.to_bytes().as_slice()),
        },
        drawn,
    ))
}

/// A copy of `wire` with one bit changed: in the body's last byte (its tag),
/// or in the first byte of the sealed header (after its 24-byte nonce).
fn alter(wire: &[u8], body: bool) -> Vec<u8> {
    let Ok(message) = RatchetMessage::from_bytes(wire) else { return wire.to_vec() };
    let mut header = *message.header();
    let mut sealed_body = message.body().to_vec();
    let byte = if body { sealed_body.last_mut() } else { header.get_mut(24) };
    if let Some(b) = byte {
        *b ^= 0x01;
    }
    hazmat::ratchet_message(header, sealed_body).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alter_changes_one_byte() {
        let message = hazmat::ratchet_message([0u8; 81], vec![0u8; 80]).to_bytes();
        for body in [true, false] {
            let altered = alter(&message, body);
            assert_eq!(altered.len(), message.len());
            assert_eq!(altered.iter().zip(&message).filter(|(a, b)| a != b).count(), 1);
        }
    }
}
