//! Stored records: the loaders of ratchet states (PROTOCOL.md 13.3), session
//! records (13.4) and prekey sets (13.5), check by check.
//!
//! Every input starts as a record the library wrote during a real exchange
//! (sessions started with `SessionRecord::initiate` from a bundle, messages
//! each way, deliveries out of order, a second session, a heal; a prekey set
//! made, used and topped up through `PreKeySet`), then altered in its
//! protobuf form: one field changed and re-encoded canonically (or two, for
//! the cases that pin the order of the checks), or an encoding built by hand
//! for the canonical-encoding cases. The outputs are what the public loaders
//! return for those bytes.

use chacha20::ChaCha20Rng;
use samizdat::{
    address::Address,
    hazmat::FixedBytes,
    keys::IdentityKeyPair,
    limits::MAX_RESET_NAMINGS,
    prekeys::{ConsumedPreKeys, PreKeySet},
    ratchet::DoubleRatchet,
    session::SessionRecord,
};
use samizdat_proto::{Message, storage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, bytes, decode_error, err, h, non_minimal_varint, random, random_vec, sha256, varint},
};

/// `records.json`.
pub(crate) struct Records;

#[derive(Serialize, Deserialize)]
pub(crate) struct RecordCase {
    name: String,
    decoder: Decoder,
    /// The check the case pins (section and number of PROTOCOL.md), and how.
    rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_repeat: Option<Repeat>,
    #[serde(default)]
    result: Value,
    /// The library's encoding of what it loaded (null when loading failed),
    /// in the form of the input: hex, or the `input_repeat` object when it
    /// equals the input given in that form.
    #[serde(default)]
    reencoded: Value,
}

/// Which loader a case uses.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decoder {
    /// `DoubleRatchet::from_bytes` (13.3).
    RatchetState,
    /// `SessionRecord::from_bytes`: seeds in the record, `seeds_apart = false` expected (13.4).
    SessionRecord,
    /// `PreKeySet::from_bytes` (13.5).
    PrekeySet,
}

/// An input too long to list: `prefix || unit * count || suffix`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub(crate) struct Repeat {
    prefix: String,
    unit: String,
    count: usize,
    suffix: String,
}

impl Repeat {
    fn expand(&self) -> R<Vec<u8>> {
        let unit = bytes("input_repeat.unit", &self.unit)?;
        let mut out = bytes("input_repeat.prefix", &self.prefix)?;
        out.reserve(unit.len().saturating_mul(self.count));
        for _ in 0..self.count {
            out.extend_from_slice(&unit);
        }
        out.extend_from_slice(&bytes("input_repeat.suffix", &self.suffix)?);
        Ok(out)
    }
}

impl VectorSet for Records {
    type Case = RecordCase;
    const META: Meta = Meta {
        file: "records.json",
        section: "13.3 Loading and its checks (ratchet states); 13.4 Session records; 13.5 Prekey sets; 12.3 Encoding and 12.4 Decoding (canonical encoding of stored records); 15.4 DecodeError",
        description: "Each case gives the bytes `input` (hex), or `input_repeat` (`prefix || unit` repeated `count` \
            times `|| suffix`, for inputs too long to list), to one loader: `ratchet_state` (a stored ratchet state, \
            13.3: DoubleRatchet::from_bytes), `session_record` (a session record holding its seeds, 13.4: \
            SessionRecord::from_bytes, which expects `seeds_apart = false`) or `prekey_set` (13.5: \
            PreKeySet::from_bytes). `result` is the first failing check's error, `{\"error\": ...}` as the variants \
            of DecodeError in snake case (15.4), or `{\"ok\": ...}`: a summary of what was loaded (receiving chains, \
            skipped keys, used counters and whether a sending chain exists; whether an identity is trusted and a \
            current state exists, archived and kept states, skipped keys over all states, remembered base keys, \
            heals and initiations; the ids of the signed and last-resort prekeys, the counts of one-time prekeys \
            of each kind, next_id and the remembered pairs). `reencoded` is the loader's own encoding of what it \
            loaded (null on failure), in the same form as the input when it equals it: decoding is canonical, so \
            it equals the input, except in the four cases whose `rule` says it does not (a state without \
            `ratchet_public`, whose loader computes it; a sending counter ignored without a sending chain; one-time \
            prekeys not in increasing id order; an empty `healing`, written back as absent). `rule` names the check \
            of PROTOCOL.md each case pins: every check of 13.3, 13.4 (1 to 11, 10a's H1 to H13 on the healing \
            bookkeeping of 20.4, S1 to S10) and 13.5 (1 to 9) that a public loader reaches has a case that fails \
            it alone, boundary cases that pass exactly at the limits, cases that break two checks and expect the \
            first one's error, and other encodings of valid records (unknown, repeated, reordered fields, \
            non-minimal varints, explicit defaults, out-of-range integers), all `protobuf`. Not reachable through a \
            public loader, so not listed: the checks of a record stored with its seeds apart (13.3 check 11b2 on \
            `skipped_apart`: an odd count, a run of length 0, a distance of 0 after the first run, a run past \
            2^32 - 1, a `SkippedKey` in such a record; 13.4 check 3a expecting `true`) and the checks of the \
            `SkippedSeeds` row (13.4, 1 to 5): only a device reads them, from its sealed rows, and reports any \
            failure as StoreError::Corrupt or Conflict. The inputs come from real records: two sessions of \
            Alice's with Bob (out-of-order deliveries, the second one displacing the first, then a heal that cuts \
            the first to its kept keys; healing bookkeeping set on Bob's final record for 10a) and Bob's prekey \
            set, each altered in its protobuf form.",
        seed: 18,
        inputs: &["name", "decoder", "rule", "input", "input_repeat"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<RecordCase>, VErr> {
        let fixtures = fixtures(rng)?;
        let mut cases = Cases(Vec::new());
        ratchet_cases(&mut cases, &fixtures)?;
        record_cases(&mut cases, &fixtures)?;
        prekey_cases(&mut cases, &fixtures, rng)?;
        // Accepted inputs re-encode to themselves, save where a rule says
        // otherwise: a vector must not show a record the library would not
        // write back as it is for any other reason.
        for case in &cases.0 {
            let computed = Self::compute(case)?;
            let same = match (&computed.reencoded, &case.input, &case.input_repeat) {
                (Value::Null, _, _) => true,
                (Value::String(text), Some(input), None) => text == input,
                (Value::Object(_), None, Some(_)) => true,
                _ => false,
            };
            if !same && !case.rule.contains("not byte for byte") {
                return Err(err("reencoded", format!("case {}: the loader writes back other bytes", case.name)));
            }
        }
        Ok(cases.0)
    }

    fn compute(case: &RecordCase) -> R<RecordCase> {
        let data = match (&case.input, &case.input_repeat) {
            (Some(text), None) => bytes("input", text)?,
            (None, Some(repeat)) => repeat.expand()?,
            _ => return Err(err("input", "give exactly one of input and input_repeat")),
        };
        let (result, encoded) = load(case.decoder, &data)?;
        let reencoded = match (encoded, &case.input_repeat) {
            (None, _) => Value::Null,
            (Some(encoded), Some(repeat)) if encoded == data => {
                serde_json::to_value(repeat).map_err(|e| err("reencoded", e.to_string()))?
            }
            (Some(encoded), _) => Value::String(h(encoded)),
        };
        Ok(RecordCase {
            name: case.name.clone(),
            decoder: case.decoder,
            rule: case.rule.clone(),
            input: case.input.clone(),
            input_repeat: case.input_repeat.clone(),
            result,
            reencoded,
        })
    }
}

/// Runs one loader: the result as JSON, and the loaded value's encoding.
fn load(decoder: Decoder, data: &[u8]) -> R<(Value, Option<Vec<u8>>)> {
    let parse = |e: samizdat_proto::prost::DecodeError| err("reencoded", e.to_string());
    Ok(match decoder {
        Decoder::RatchetState => match DoubleRatchet::from_bytes(data) {
            Ok(state) => {
                let encoded = state.to_bytes().to_vec();
                let record = storage::RatchetState::decode(encoded.as_slice()).map_err(parse)?;
                let used: usize = record.receiving.iter().map(|c| c.used.len() / 12).sum();
                let summary = json!({"ok": {
                    "receiving_chains": state.receiving_chains(),
                    "skipped_keys": state.stored_skipped_keys(),
                    "used_counters": used,
                    "sending_chain": state.can_send(),
                }});
                (summary, Some(encoded))
            }
            Err(e) => (decode_error(&e), None),
        },
        Decoder::SessionRecord => match SessionRecord::from_bytes(data) {
            Ok(loaded) => {
                let encoded = loaded.to_bytes().to_vec();
                let record = storage::SessionRecord::decode(encoded.as_slice()).map_err(parse)?;
                let skipped: usize = record
                    .current
                    .iter()
                    .chain(record.archived.iter())
                    .map(|state| {
                        let full = state.ratchet.iter().flat_map(|r| r.receiving.iter());
                        let kept = state.kept.iter().flat_map(|k| k.receiving.iter());
                        full.chain(kept).map(|c| c.skipped.len()).sum::<usize>()
                    })
                    .sum();
                let summary = json!({"ok": {
                    "trusted_identity": loaded.trusted_identity().is_some(),
                    "current": loaded.has_session(),
                    "archived_states": loaded.archived_states(),
                    "kept_states": loaded.kept_states(),
                    "skipped_keys": skipped,
                    "seen_base_keys": record.seen_base_keys.len(),
                    "heals": record.heals,
                    "initiations": record.initiations,
                }});
                (summary, Some(encoded))
            }
            Err(e) => (decode_error(&e), None),
        },
        Decoder::PrekeySet => match PreKeySet::from_bytes(data) {
            Ok(set) => {
                let encoded = set.to_bytes().to_vec();
                let record = storage::PreKeySet::decode(encoded.as_slice()).map_err(parse)?;
                let (one_time, pq_one_time) = set.one_time_counts();
                let summary = json!({"ok": {
                    "signed": record.signed.iter().map(|k| k.id).collect::<Vec<_>>(),
                    "last_resort": record.last_resort.iter().map(|k| k.id).collect::<Vec<_>>(),
                    "one_time": one_time,
                    "pq_one_time": pq_one_time,
                    "next_id": record.next_id,
                    "seen_base_keys": record.seen_base_keys.len(),
                }});
                (summary, Some(encoded))
            }
            Err(e) => (decode_error(&e), None),
        },
    })
}

// ---------------------------------------------------------------------------
// The real records the cases start from
// ---------------------------------------------------------------------------

/// Records written by the library during one scripted exchange.
struct Fixtures {
    /// Bob's record at the end: current state (Alice's second session,
    /// healed once) with two receiving chains, each with skipped keys and
    /// used counters; archived, the first session cut to its kept keys at
    /// the heal; two remembered base keys.
    bob: storage::SessionRecord,
    /// Bob's record before the heal: current, the second session; archived,
    /// the first one, full and displaced.
    bob_displaced: storage::SessionRecord,
    /// Alice's record with two unanswered initiations: current the second
    /// (its pending prekey header, `initiated = 2`), archived the first.
    alice: storage::SessionRecord,
    /// Bob's prekey set after both handshakes: its one-time prekeys used up,
    /// one remembered pair (the second handshake used none).
    spent: storage::PreKeySet,
    /// The same set topped up with one one-time prekey of each kind.
    topped_up: storage::PreKeySet,
    /// The topped-up set whose one-time ML-KEM prekey was then consumed:
    /// one one-time X25519 prekey and no one-time ML-KEM prekey.
    one_time_only: storage::PreKeySet,
    /// The spent set after two rotations of each kind: three signed and
    /// three last-resort prekeys, the most either list holds.
    rotated: storage::PreKeySet,
}

/// Runs `f` with a generator of `n` bytes from `rng`, failing if it drew more.
fn scripted<T>(rng: &mut ChaCha20Rng, n: usize, f: impl FnOnce(&mut FixedBytes) -> R<T>) -> R<T> {
    let mut fixed = FixedBytes::new(&random_vec(rng, n));
    let out = f(&mut fixed)?;
    if fixed.drawn() > n {
        return Err(err("input", format!("an operation drew {} random bytes, {n} were given", fixed.drawn())));
    }
    Ok(out)
}

struct Party {
    identity: IdentityKeyPair,
    address: Address,
    prekeys: PreKeySet,
    record: SessionRecord,
}

impl Party {
    fn new(rng: &mut ChaCha20Rng, name: &str, device_id: u32) -> R<Self> {
        let identity = IdentityKeyPair::from_seed(&random::<32>(rng));
        let prekeys = scripted(rng, 96, |f| Ok(PreKeySet::new(f, &identity, UNIX_EPOCH)))?;
        let address = Address::new(name, device_id).map_err(|e| err("input", e.to_string()))?;
        Ok(Self { identity, address, prekeys, record: SessionRecord::new() })
    }

    fn initiate(&mut self, rng: &mut ChaCha20Rng, peer: &Self) -> R<()> {
        let bundle = peer.prekeys.bundle(&peer.identity, &peer.address).ok_or_else(|| err("input", "no bundle"))?;
        scripted(rng, 96, |f| {
            self.record.initiate(f, &self.identity, &self.address, &bundle).map_err(|e| err("input", e.to_string()))
        })
    }

    fn send(&mut self, rng: &mut ChaCha20Rng, text: &str) -> R<Vec<u8>> {
        scripted(rng, 24, |f| self.record.encrypt(f, text.as_bytes()).map_err(|e| err("input", e.to_string())))
    }

    fn receive(&mut self, rng: &mut ChaCha20Rng, from: &Address, message: Option<&Vec<u8>>) -> R<()> {
        let message = message.ok_or_else(|| err("input", "no such message"))?;
        let (_, consumed) = scripted(rng, 64, |f| {
            self.record
                .decrypt_and_commit(f, &self.identity, &self.address, from, &self.prekeys, message)
                .map_err(|e| err("input", e.to_string()))
        })?;
        self.prekeys.consume(&consumed);
        Ok(())
    }

    fn send_many(&mut self, rng: &mut ChaCha20Rng, label: &str, count: usize) -> R<Vec<Vec<u8>>> {
        (0..count).map(|i| self.send(rng, &format!("{label} {i}"))).collect()
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> R<M> {
    M::decode(bytes).map_err(|e| err("input", e.to_string()))
}

fn fixtures(rng: &mut ChaCha20Rng) -> R<Fixtures> {
    let mut alice = Party::new(rng, "alice", 1)?;
    let mut bob = Party::new(rng, "bob", 2)?;
    let (a, b) = (alice.address.clone(), bob.address.clone());
    scripted(rng, 96, |f| {
        bob.prekeys.add_one_time_prekeys(f, &bob.identity, 1, UNIX_EPOCH).map_err(|e| err("input", e.to_string()))
    })?;
    // First session (Bob's one-time prekeys): Bob gets messages 0 and 2.
    alice.initiate(rng, &bob)?;
    let first = alice.send_many(rng, "first session", 3)?;
    bob.receive(rng, &a, first.first())?;
    bob.receive(rng, &a, first.get(2))?;
    // Second session (the last-resort prekey, no one-time prekey left),
    // before any answer to the first: Bob gets messages 0 and 2.
    alice.initiate(rng, &bob)?;
    let second = alice.send_many(rng, "second session", 3)?;
    let alice_record = decode::<storage::SessionRecord>(&alice.record.to_bytes())?;
    bob.receive(rng, &a, second.first())?;
    bob.receive(rng, &a, second.get(2))?;
    let bob_displaced = decode::<storage::SessionRecord>(&bob.record.to_bytes())?;
    // Bob answers; Alice takes a DH step and sends four; Bob gets 3 then 1
    // (his DH step: a heal, which cuts the first session to its kept keys).
    let reply = bob.send(rng, "reply")?;
    alice.receive(rng, &b, Some(&reply))?;
    let third = alice.send_many(rng, "after the reply", 4)?;
    bob.receive(rng, &a, third.get(3))?;
    bob.receive(rng, &a, third.get(1))?;
    let bob_record = decode::<storage::SessionRecord>(&bob.record.to_bytes())?;
    let spent_bytes = bob.prekeys.to_bytes();
    let spent = decode::<storage::PreKeySet>(&spent_bytes)?;

    let mut topped = PreKeySet::from_bytes(&spent_bytes).map_err(|e| err("input", e.to_string()))?;
    scripted(rng, 96, |f| {
        topped.add_one_time_prekeys(f, &bob.identity, 1, UNIX_EPOCH).map_err(|e| err("input", e.to_string()))
    })?;
    let mut one_time_only = PreKeySet::from_bytes(&topped.to_bytes()).map_err(|e| err("input", e.to_string()))?;
    one_time_only.consume(&ConsumedPreKeys { pq_one_time: Some(pq_one_time_id(&topped)?), ..Default::default() });
    let mut rotated = PreKeySet::from_bytes(&spent_bytes).map_err(|e| err("input", e.to_string()))?;
    for now in [1, 2] {
        scripted(rng, 32, |f| {
            rotated
                .rotate_signed_prekey(f, &bob.identity, UNIX_EPOCH + Duration::from_secs(now))
                .map_err(|e| err("input", e.to_string()))
        })?;
        scripted(rng, 64, |f| {
            rotated
                .rotate_last_resort_prekey(f, &bob.identity, UNIX_EPOCH + Duration::from_secs(now))
                .map_err(|e| err("input", e.to_string()))
        })?;
    }
    let fixtures = Fixtures {
        bob: bob_record,
        bob_displaced,
        alice: alice_record,
        spent,
        topped_up: decode(&topped.to_bytes())?,
        one_time_only: decode(&one_time_only.to_bytes())?,
        rotated: decode(&rotated.to_bytes())?,
    };
    check_shapes(&fixtures)?;
    Ok(fixtures)
}

/// The shapes the cases rely on.
fn check_shapes(f: &Fixtures) -> R<()> {
    let fail = |what: &str| Err(err("input", format!("the scripted exchange did not give {what}")));
    let current = f.bob.current.as_ref().and_then(|s| s.ratchet.as_ref());
    let chains = current.map(|r| r.receiving.as_slice()).unwrap_or_default();
    if chains.len() != 2 || chains.iter().any(|c| c.skipped.is_empty() || c.used.is_empty()) {
        return fail("two receiving chains, each with skipped keys and used counters");
    }
    if chains.first().is_some_and(|c| !c.chain_key.is_empty()) {
        return fail("a closed first chain");
    }
    let kept = f.bob.archived.first().and_then(|s| s.kept.as_ref());
    if f.bob.archived.len() != 1 || kept.is_none() || f.bob.heals != 1 || f.bob.seen_base_keys.len() != 2 {
        return fail("one kept archived state, one heal and two remembered base keys");
    }
    if f.bob.archived.first().map(|s| s.kept_since) != Some(f.bob.heals) {
        return fail("kept_since = heals");
    }
    let displaced = f.bob_displaced.archived.first();
    if f.bob_displaced.archived.len() != 1 || !displaced.is_some_and(|s| s.displaced && s.ratchet.is_some()) {
        return fail("a displaced full archived state");
    }
    // Bob never answered the session Alice's second one replaced: no flag
    // (9.6; the flag is for a state the peer may hold as answered).
    if f.bob_displaced.current.as_ref().is_none_or(|s| s.left_answered) {
        return fail("a current state that left an unanswered one, without the flag");
    }
    let pending = |s: Option<&storage::SessionState>| s.is_some_and(|s| s.pending_prekey.is_some());
    if !pending(f.alice.current.as_ref())
        || !pending(f.alice.archived.first())
        || f.alice.initiations != 2
        || f.alice.current.as_ref().map(|s| s.initiated) != Some(2)
    {
        return fail("two unanswered initiations");
    }
    let counts = |s: &storage::PreKeySet| {
        (s.signed.len(), s.one_time.len(), s.pq_one_time.len(), s.last_resort.len(), s.seen_base_keys.len())
    };
    if counts(&f.spent) != (1, 0, 0, 1, 1)
        || counts(&f.topped_up) != (1, 1, 1, 1, 1)
        || counts(&f.one_time_only) != (1, 1, 0, 1, 1)
        || counts(&f.rotated) != (3, 0, 0, 3, 1)
    {
        return fail("the expected prekey sets");
    }
    for set in [&f.topped_up, &f.rotated] {
        if max_id(set) != set.next_id.checked_sub(1) {
            return fail("a set whose largest id is next_id - 1");
        }
    }
    Ok(())
}

fn pq_one_time_id(set: &PreKeySet) -> R<u32> {
    let record = decode::<storage::PreKeySet>(&set.to_bytes())?;
    record.pq_one_time.first().map(|k| k.id).ok_or_else(|| err("input", "no one-time ML-KEM prekey"))
}

fn max_id(set: &storage::PreKeySet) -> Option<u32> {
    let ids = set.signed.iter().map(|k| k.id).chain(set.one_time.iter().map(|k| k.id));
    ids.chain(set.pq_one_time.iter().chain(set.last_resort.iter()).map(|k| k.id)).max()
}

// ---------------------------------------------------------------------------
// Editing records
// ---------------------------------------------------------------------------

struct Cases(Vec<RecordCase>);

impl Cases {
    fn add(&mut self, name: &str, decoder: Decoder, rule: &str, input: &[u8]) {
        self.0.push(RecordCase {
            name: name.to_owned(),
            decoder,
            rule: rule.to_owned(),
            input: Some(h(input)),
            input_repeat: None,
            result: Value::Null,
            reencoded: Value::Null,
        });
    }

    fn add_repeat(&mut self, name: &str, decoder: Decoder, rule: &str, parts: (&[u8], &[u8], usize, &[u8])) {
        let (prefix, unit, count, suffix) = parts;
        self.0.push(RecordCase {
            name: name.to_owned(),
            decoder,
            rule: rule.to_owned(),
            input: None,
            input_repeat: Some(Repeat { prefix: h(prefix), unit: h(unit), count, suffix: h(suffix) }),
            result: Value::Null,
            reencoded: Value::Null,
        });
    }
}

/// `base` with `edit` applied, encoded canonically.
fn alter<M: Message + Clone>(base: &M, edit: impl FnOnce(&mut M) -> R<()>) -> R<Vec<u8>> {
    let mut record = base.clone();
    edit(&mut record)?;
    Ok(record.encode_to_vec())
}

fn item<T>(items: &mut [T], i: usize) -> R<&mut T> {
    items.get_mut(i).ok_or_else(|| err("input", format!("the record has no entry {i}")))
}

fn sending(r: &mut storage::RatchetState) -> R<&mut storage::SendingChain> {
    r.sending.as_mut().ok_or_else(|| err("input", "no sending chain"))
}

fn chain(r: &mut storage::RatchetState, i: usize) -> R<&mut storage::ReceivingChain> {
    item(&mut r.receiving, i)
}

fn current(r: &mut storage::SessionRecord) -> R<&mut storage::SessionState> {
    r.current.as_mut().ok_or_else(|| err("input", "no current state"))
}

fn archived(r: &mut storage::SessionRecord, i: usize) -> R<&mut storage::SessionState> {
    item(&mut r.archived, i)
}

fn ratchet(s: &mut storage::SessionState) -> R<&mut storage::RatchetState> {
    s.ratchet.as_mut().ok_or_else(|| err("input", "not a full state"))
}

fn kept(s: &mut storage::SessionState) -> R<&mut storage::KeptKeys> {
    s.kept.as_mut().ok_or_else(|| err("input", "not a kept state"))
}

fn pending(s: &mut storage::SessionState) -> R<&mut storage::PendingPreKey> {
    s.pending_prekey.as_mut().ok_or_else(|| err("input", "no pending prekey header"))
}

/// A used entry: `u32be(counter) || tag`.
fn used_entry(counter: u32) -> Vec<u8> {
    let mut entry = counter.to_be_bytes().to_vec();
    entry.extend_from_slice(&[0xa5; 8]);
    entry
}

fn used_counters(chain: &storage::ReceivingChain) -> Vec<u32> {
    chain
        .used
        .chunks(12)
        .filter_map(|e| e.get(..4).and_then(|c| <[u8; 4]>::try_from(c).ok()))
        .map(u32::from_be_bytes)
        .collect()
}

/// `n` skipped keys on counters from 0 up, avoiding `avoid`, with seeds
/// `SHA-256("seed" || u32be(counter))`.
fn skipped_keys(n: usize, avoid: &[u32]) -> Vec<storage::SkippedKey> {
    (0u32..)
        .filter(|c| !avoid.contains(c))
        .take(n)
        .map(|counter| storage::SkippedKey {
            counter,
            seed: sha256(&[&b"seed"[..], &counter.to_be_bytes()].concat()).to_vec(),
        })
        .collect()
}

/// Gives `chain` the counter 10,000 and `n` skipped keys below it.
fn fill_chain(chain: &mut storage::ReceivingChain, n: usize) {
    chain.counter = 10_000;
    chain.skipped = skipped_keys(n, &used_counters(chain));
}

/// `full` as `prefix || unit * count || suffix`, at the first place it
/// holds `count` copies of `unit` in a row.
fn repeat_form<'a>(full: &'a [u8], unit: &[u8], count: usize) -> R<(&'a [u8], &'a [u8])> {
    let run = unit.len().saturating_mul(count);
    (0..full.len().saturating_sub(run).saturating_add(1))
        .find(|&at| full.get(at..at + run).is_some_and(|window| window.chunks(unit.len()).all(|c| c == unit)))
        .and_then(|at| Some((full.get(..at)?, full.get(at + run..)?)))
        .ok_or_else(|| err("input", "the encoding does not hold the repeated unit"))
}

// A protobuf encoding as a list of records, for encodings a prost value
// cannot give: an unknown field, a field given twice, fields out of order,
// an explicit default, a non-minimal varint, a value out of range.

/// One record of an encoding.
#[derive(Clone)]
enum Raw {
    /// Field number, value (wire type 0).
    Varint(u64, u64),
    /// Field number, payload (wire type 2).
    Bytes(u64, Vec<u8>),
    /// Bytes written as they are (a record with a non-minimal varint).
    Verbatim(u64, Vec<u8>),
}

impl Raw {
    fn field(&self) -> u64 {
        match self {
            Self::Varint(f, _) | Self::Bytes(f, _) | Self::Verbatim(f, _) => *f,
        }
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> R<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or_else(|| err("input", "a varint runs past the end"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(err("input", "a varint of more than 10 bytes"))
}

fn parse(bytes: &[u8]) -> R<Vec<Raw>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let field = key >> 3;
        match key & 7 {
            0 => out.push(Raw::Varint(field, read_varint(bytes, &mut at)?)),
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).map_err(|e| err("input", e.to_string()))?;
                let end = at.checked_add(len).ok_or_else(|| err("input", "a length past the end"))?;
                let payload = bytes.get(at..end).ok_or_else(|| err("input", "a length past the end"))?;
                out.push(Raw::Bytes(field, payload.to_vec()));
                at = end;
            }
            other => return Err(err("input", format!("wire type {other}"))),
        }
    }
    Ok(out)
}

fn emit(records: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        match record {
            Raw::Varint(field, value) => {
                out.extend(varint(field << 3));
                out.extend(varint(*value));
            }
            Raw::Bytes(field, payload) => {
                out.extend(varint(field << 3 | 2));
                out.extend(varint(payload.len() as u64));
                out.extend_from_slice(payload);
            }
            Raw::Verbatim(_, bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// Applies `edit` to the records of the message at `path` (the first
/// embedded message of each field number in turn) inside `bytes`.
fn nested(bytes: &[u8], path: &[u64], edit: &mut dyn FnMut(&mut Vec<Raw>) -> R<()>) -> R<Vec<u8>> {
    let mut records = parse(bytes)?;
    match path.split_first() {
        None => edit(&mut records)?,
        Some((field, rest)) => {
            let payload = records
                .iter_mut()
                .find_map(|r| match r {
                    Raw::Bytes(f, payload) if f == field => Some(payload),
                    _ => None,
                })
                .ok_or_else(|| err("input", format!("no field {field}")))?;
            *payload = nested(payload, rest, edit)?;
        }
    }
    Ok(emit(&records))
}

/// Inserts `record` after every record of a lower or equal field number.
fn insert_sorted(records: &mut Vec<Raw>, record: Raw) {
    let at = records.iter().position(|r| r.field() > record.field()).unwrap_or(records.len());
    records.insert(at, record);
}

/// Inserts `record` before the first record of its field number.
fn insert_before_same(records: &mut Vec<Raw>, record: Raw) {
    let at = records.iter().position(|r| r.field() >= record.field()).unwrap_or(records.len());
    records.insert(at, record);
}

/// Replaces the first varint record of `field` with `make(value)`.
fn replace_varint(records: &mut [Raw], field: u64, make: impl FnOnce(u64) -> Raw) -> R<()> {
    let slot = records
        .iter_mut()
        .find(|r| matches!(r, Raw::Varint(f, _) if *f == field))
        .ok_or_else(|| err("input", format!("no varint field {field}")))?;
    if let Raw::Varint(_, value) = slot {
        *slot = make(*value);
    }
    Ok(())
}

/// A varint record whose value is written one byte too long.
fn non_minimal(field: u64, value: u64) -> Raw {
    Raw::Verbatim(field, [varint(field << 3), non_minimal_varint(value)].concat())
}

/// Moves the first record of `field` before the first record of `before`.
fn move_before(records: &mut Vec<Raw>, field: u64, before: u64) -> R<()> {
    let from = records.iter().position(|r| r.field() == field).ok_or_else(|| err("input", "no such field"))?;
    let record = records.remove(from);
    let to = records.iter().position(|r| r.field() == before).ok_or_else(|| err("input", "no such field"))?;
    records.insert(to, record);
    Ok(())
}

// ---------------------------------------------------------------------------
// 13.3: ratchet states
// ---------------------------------------------------------------------------

fn ratchet_cases(cases: &mut Cases, f: &Fixtures) -> R<()> {
    use Decoder::RatchetState as D;
    let st = f.bob.current.as_ref().and_then(|s| s.ratchet.clone()).ok_or_else(|| err("input", "no ratchet"))?;
    let base = st.encode_to_vec();
    let s = |edit: &dyn Fn(&mut storage::RatchetState) -> R<()>| alter(&st, edit);
    let both = |a: &dyn Fn(&mut storage::RatchetState) -> R<()>, b: &dyn Fn(&mut storage::RatchetState) -> R<()>| {
        alter(&st, |r| {
            a(r)?;
            b(r)
        })
    };
    let no_sending_chain = |r: &mut storage::RatchetState| -> R<()> {
        let s = sending(r)?;
        s.chain_key.clear();
        s.header_key.clear();
        Ok(())
    };
    let with_chains = |n: usize| {
        move |r: &mut storage::RatchetState| -> R<()> {
            let closed = chain(r, 0)?.clone();
            let current = r.receiving.pop().ok_or_else(|| err("input", "no chain"))?;
            r.receiving = vec![closed; n - 1];
            r.receiving.push(current);
            Ok(())
        }
    };
    let used_total = |n: usize| {
        move |r: &mut storage::RatchetState| -> R<()> {
            let first = used_counters(chain(r, 0)?).len();
            let last = chain(r, 1)?;
            let avoid: Vec<u32> = last.skipped.iter().map(|k| k.counter).collect();
            last.counter = 10_000;
            last.used = (0u32..).filter(|c| !avoid.contains(c)).take(n - first).flat_map(used_entry).collect();
            Ok(())
        }
    };
    // Skipped keys over five chains: four copies of the closed chain with
    // 499 keys each, then the current chain with `last` (each far below
    // 2,000): the copies repeat, so the input is given as `input_repeat`.
    let mut closed = st.receiving.first().cloned().ok_or_else(|| err("input", "no chain"))?;
    fill_chain(&mut closed, 499);
    let closed_unit = storage::RatchetState { receiving: vec![closed.clone()], ..Default::default() }.encode_to_vec();
    type ChainEdit<'a> = &'a dyn Fn(&mut storage::ReceivingChain) -> R<()>;
    let skipped_total = |last: usize, edit: ChainEdit<'_>| -> R<(Vec<u8>, Vec<u8>)> {
        let full = s(&|r| {
            let mut current = chain(r, 1)?.clone();
            fill_chain(&mut current, last);
            edit(&mut current)?;
            r.receiving = vec![closed.clone(); 4];
            r.receiving.push(current);
            Ok(())
        })?;
        let (prefix, suffix) = repeat_form(&full, &closed_unit, 4)?;
        Ok((prefix.to_vec(), suffix.to_vec()))
    };

    // Accepted.
    cases.add(
        "ratchet_state_of_a_session",
        D,
        "13.3: Bob's current ratchet state, as the library wrote it: two receiving chains (the first closed), each \
         with skipped keys and used counters, and a sending chain. Every check passes.",
        &base,
    );
    cases.add(
        "ratchet_associated_data_1024_bytes",
        D,
        "13.3 check 4 boundary: an associated data of exactly 1,024 bytes is accepted.",
        &s(&|r| {
            r.associated_data = vec![0x61; 1024];
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_public_key_absent",
        D,
        "13.3 check 8a: an empty `sending.ratchet_public` is accepted (a state written before the field existed); \
         the loader computes it, so the state is written back with it: not byte for byte.",
        &s(&|r| {
            sending(r)?.ratchet_public.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_five_receiving_chains",
        D,
        "13.3 check 10 boundary: 5 receiving chains (copies of the closed chain before the current one) are accepted.",
        &s(&with_chains(5))?,
    );
    cases.add(
        "ratchet_no_chains_and_no_sending_chain",
        D,
        "13.3 checks 6 and 13: a state with neither receiving chains nor a sending chain (a responder that has not \
         decrypted yet) is accepted; check 13 refuses a missing sending chain only when there are receiving chains.",
        &s(&|r| {
            no_sending_chain(r)?;
            r.receiving.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_counter_of_absent_sending_chain_ignored",
        D,
        "13.3, after the table: without a sending chain `sending.counter` is ignored, so a counter of 7 there is \
         accepted, and the state is written back with 0: not byte for byte.",
        &s(&|r| {
            no_sending_chain(r)?;
            r.receiving.clear();
            sending(r)?.counter = 7;
            Ok(())
        })?,
    );
    let (prefix, suffix) = skipped_total(4, &|_| Ok(()))?;
    cases.add_repeat(
        "ratchet_skipped_keys_2000",
        D,
        "13.3 check 11c boundary: five chains, four closed ones with 499 skipped keys each and the current one with \
         4: 2,000 in all, accepted.",
        (&prefix, &closed_unit, 4, &suffix),
    );
    cases.add(
        "ratchet_used_counters_128",
        D,
        "13.3 check 11f boundary: 128 used counters over the two chains are accepted.",
        &s(&used_total(128))?,
    );

    // One failing check each.
    cases.add_repeat(
        "ratchet_too_large",
        D,
        "13.3 check 1: 1,048,577 bytes, one more than MAX_STATE_LEN, is too_large before anything is parsed.",
        (&[], &[0], 1_048_577, &[]),
    );
    cases.add_repeat(
        "ratchet_at_size_limit",
        D,
        "13.3 check 1 boundary: 1,048,576 zero bytes pass check 1 and fail check 2 (field number 0).",
        (&[], &[0], 1_048_576, &[]),
    );
    cases.add("ratchet_empty", D, "13.3 check 3: an empty input parses as version 0.", &[]);
    cases.add(
        "ratchet_version_2",
        D,
        "13.3 check 3: version 2.",
        &s(&|r| {
            r.version = 2;
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_associated_data_1025_bytes",
        D,
        "13.3 check 4: an associated data of 1,025 bytes.",
        &s(&|r| {
            r.associated_data = vec![0x61; 1025];
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_absent",
        D,
        "13.3 check 5: no `sending` message.",
        &s(&|r| {
            r.sending = None;
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_header_key_without_chain_key",
        D,
        "13.3 check 6: `sending.chain_key` empty, `sending.header_key` not.",
        &s(&|r| {
            sending(r)?.chain_key.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_chain_key_without_header_key",
        D,
        "13.3 check 6: `sending.header_key` empty, `sending.chain_key` not.",
        &s(&|r| {
            sending(r)?.header_key.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_chain_key_31_bytes",
        D,
        "13.3 check 7: `sending.chain_key` of 31 bytes.",
        &s(&|r| {
            sending(r)?.chain_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_header_key_33_bytes",
        D,
        "13.3 check 7: `sending.header_key` of 33 bytes.",
        &s(&|r| {
            sending(r)?.header_key.push(0);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_ratchet_secret_31_bytes",
        D,
        "13.3 check 8: `sending.ratchet_secret` of 31 bytes.",
        &s(&|r| {
            sending(r)?.ratchet_secret.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_ratchet_public_33_bytes",
        D,
        "13.3 check 8a: `sending.ratchet_public` of 33 bytes.",
        &s(&|r| {
            sending(r)?.ratchet_public.push(0);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_sending_next_header_key_empty",
        D,
        "13.3 check 9: an empty `sending.next_header_key`.",
        &s(&|r| {
            sending(r)?.next_header_key.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_next_header_key_without_sending_chain",
        D,
        "13.3 check 9: an empty `sending.next_header_key` in a state without any chain (checked with or without a \
         sending chain).",
        &s(&|r| {
            no_sending_chain(r)?;
            r.receiving.clear();
            sending(r)?.next_header_key.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_six_receiving_chains",
        D,
        "13.3 check 10: 6 receiving chains (5 copies of the closed chain, then the current one).",
        &s(&with_chains(6))?,
    );
    cases.add(
        "ratchet_closed_chain_with_chain_key",
        D,
        "13.3 check 11a: a chain key on the first chain, which is not the last.",
        &s(&|r| {
            chain(r, 0)?.chain_key = vec![0x04; 32];
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_current_chain_key_31_bytes",
        D,
        "13.3 check 11b: the last chain's chain key of 31 bytes.",
        &s(&|r| {
            chain(r, 1)?.chain_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_skipped_apart_with_seeds",
        D,
        "13.3 check 11b2: `skipped_apart` (counters of keys whose seeds are stored apart) in a state that holds its \
         seeds.",
        &s(&|r| {
            chain(r, 0)?.skipped_apart = vec![5, 1];
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_evicted_odd_count",
        D,
        "13.3 check 11j: `evicted` (counters whose keys were evicted unused, in the ranges encoding) with an odd \
         count of numbers.",
        &s(&|r| {
            chain(r, 0)?.evicted = vec![1];
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_evicted_past_chain_counter",
        D,
        "13.3 check 11j: an evicted counter at or past the chain's counter `Nr` (a well-formed run of one counter, \
         2^32 - 2).",
        &s(&|r| {
            chain(r, 0)?.evicted = vec![u32::MAX - 1, 1];
            Ok(())
        })?,
    );
    let (prefix, suffix) = skipped_total(5, &|_| Ok(()))?;
    cases.add_repeat(
        "ratchet_skipped_keys_2001",
        D,
        "13.3 check 11c: four closed chains with 499 skipped keys each and the current one with 5: each chain is far \
         below 2,000, the running total (2,001) is not.",
        (&prefix, &closed_unit, 4, &suffix),
    );
    cases.add(
        "ratchet_skipped_counter_at_chain_counter",
        D,
        "13.3 check 11d: a skipped key whose counter equals the chain's counter `Nr`.",
        &s(&|r| {
            let c = chain(r, 0)?;
            let nr = c.counter;
            item(&mut c.skipped, 0)?.counter = nr;
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_skipped_counter_repeated",
        D,
        "13.3 check 11d: the same skipped key twice (counters must increase strictly).",
        &s(&|r| {
            let c = chain(r, 0)?;
            let key = item(&mut c.skipped, 0)?.clone();
            c.skipped.push(key);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_skipped_counters_decreasing",
        D,
        "13.3 check 11d: the current chain's skipped keys in decreasing counter order.",
        &s(&|r| {
            let c = chain(r, 1)?;
            if c.skipped.len() < 2 {
                return Err(err("input", "the current chain has fewer than two skipped keys"));
            }
            c.skipped.reverse();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_skipped_seed_31_bytes",
        D,
        "13.3 check 11e: a skipped key's seed of 31 bytes.",
        &s(&|r| {
            item(&mut chain(r, 0)?.skipped, 0)?.seed.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_used_not_whole_entries",
        D,
        "13.3 check 11f: `used` one byte longer than whole 12-byte entries.",
        &s(&|r| {
            chain(r, 0)?.used.push(0);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_used_counters_129",
        D,
        "13.3 check 11f: 129 used counters over the two chains (each chain below 128).",
        &s(&used_total(129))?,
    );
    cases.add(
        "ratchet_used_counter_at_chain_counter",
        D,
        "13.3 check 11g: a used counter equal to the chain's counter `Nr`.",
        &s(&|r| {
            let c = chain(r, 0)?;
            c.used = used_entry(c.counter);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_used_counter_also_skipped",
        D,
        "13.3 check 11g: a used counter that is also a skipped key of the chain.",
        &s(&|r| {
            let c = chain(r, 0)?;
            c.used = used_entry(item(&mut c.skipped, 0)?.counter);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_used_counter_repeated",
        D,
        "13.3 check 11g: the same used counter twice on one chain.",
        &s(&|r| {
            let c = chain(r, 0)?;
            let first = c.used.get(..12).ok_or_else(|| err("input", "no used entry"))?.to_vec();
            c.used.extend(first);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_receiving_ratchet_key_31_bytes",
        D,
        "13.3 check 11h: a chain's ratchet key of 31 bytes.",
        &s(&|r| {
            chain(r, 0)?.ratchet_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_receiving_header_key_31_bytes",
        D,
        "13.3 check 11i: a chain's header key of 31 bytes.",
        &s(&|r| {
            chain(r, 0)?.header_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_current_chain_without_chain_key",
        D,
        "13.3 check 12: the last receiving chain without a chain key.",
        &s(&|r| {
            chain(r, 1)?.chain_key.clear();
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_receiving_chains_without_sending_chain",
        D,
        "13.3 check 13: receiving chains, and no sending chain (both its keys empty).",
        &s(&no_sending_chain)?,
    );
    cases.add(
        "ratchet_root_key_31_bytes",
        D,
        "13.3 check 14: a root key of 31 bytes.",
        &s(&|r| {
            r.root_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "ratchet_next_receiving_header_key_33_bytes",
        D,
        "13.3 check 15: `next_receiving_header_key` of 33 bytes.",
        &s(&|r| {
            r.next_receiving_header_key.push(0);
            Ok(())
        })?,
    );

    // Two failing checks: the first one's error.
    let order = [
        (
            "ratchet_order_3_before_4",
            "13.3 order: version 0 (field omitted) and an associated data of 1,025 bytes: check 3.",
            both(
                &|r| {
                    r.version = 0;
                    Ok(())
                },
                &|r| {
                    r.associated_data = vec![0; 1025];
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_6_before_7",
            "13.3 order: `sending.chain_key` of 31 bytes with an empty `sending.header_key`: check 6.",
            both(
                &|r| {
                    sending(r)?.chain_key.truncate(31);
                    Ok(())
                },
                &|r| {
                    sending(r)?.header_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_7_chain_key_before_header_key",
            "13.3 order: both sending keys of 31 bytes: check 7 names the chain key.",
            both(
                &|r| {
                    sending(r)?.chain_key.truncate(31);
                    Ok(())
                },
                &|r| {
                    sending(r)?.header_key.truncate(31);
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_7_before_8",
            "13.3 order: `sending.header_key` of 31 bytes and an empty ratchet secret: check 7.",
            both(
                &|r| {
                    sending(r)?.header_key.truncate(31);
                    Ok(())
                },
                &|r| {
                    sending(r)?.ratchet_secret.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_8_before_8a",
            "13.3 order: an empty ratchet secret and a ratchet public key of 1 byte: check 8.",
            both(
                &|r| {
                    sending(r)?.ratchet_secret.clear();
                    Ok(())
                },
                &|r| {
                    sending(r)?.ratchet_public.truncate(1);
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_8a_before_9",
            "13.3 order: a ratchet public key of 1 byte and an empty `sending.next_header_key`: check 8a.",
            both(
                &|r| {
                    sending(r)?.ratchet_public.truncate(1);
                    Ok(())
                },
                &|r| {
                    sending(r)?.next_header_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_9_before_10",
            "13.3 order: an empty `sending.next_header_key` and 6 receiving chains: check 9.",
            both(
                &|r| {
                    sending(r)?.next_header_key.clear();
                    Ok(())
                },
                &with_chains(6),
            )?,
        ),
        (
            "ratchet_order_10_before_11",
            "13.3 order: 6 copies of the current chain (each with a chain key, which check 11a refuses on all but \
             the last): check 10.",
            s(&|r| {
                let current = chain(r, 1)?.clone();
                r.receiving = vec![current; 6];
                Ok(())
            })?,
        ),
        (
            "ratchet_order_chain_by_chain",
            "13.3 order: the first chain's header key empty (11i) and the second chain's chain key of 31 bytes \
             (11b): every check of the first chain comes before any of the second, so 11i.",
            both(
                &|r| {
                    chain(r, 0)?.header_key.clear();
                    Ok(())
                },
                &|r| {
                    chain(r, 1)?.chain_key.truncate(31);
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11a_before_11h",
            "13.3 order: a chain key of 31 bytes on the closed chain, whose ratchet key is empty: check 11a.",
            both(
                &|r| {
                    chain(r, 0)?.chain_key = vec![1; 31];
                    Ok(())
                },
                &|r| {
                    chain(r, 0)?.ratchet_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11b_before_11b2",
            "13.3 order: the current chain's chain key of 31 bytes, and `skipped_apart` on it: check 11b.",
            both(
                &|r| {
                    chain(r, 1)?.chain_key.truncate(31);
                    Ok(())
                },
                &|r| {
                    chain(r, 1)?.skipped_apart = vec![5, 1];
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11d_before_11e_same_key",
            "13.3 order: one skipped key with a counter past the chain's and an empty seed: 11d (a key's counter \
             before its seed).",
            both(
                &|r| {
                    item(&mut chain(r, 0)?.skipped, 0)?.counter = 9;
                    Ok(())
                },
                &|r| {
                    item(&mut chain(r, 0)?.skipped, 0)?.seed.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11e_before_next_key_11d",
            "13.3 order: a key with an empty seed, then a later key with a counter past the chain's: 11e (one key's \
             checks before the next key's).",
            both(
                &|r| {
                    item(&mut chain(r, 0)?.skipped, 0)?.seed.clear();
                    Ok(())
                },
                &|r| {
                    chain(r, 0)?.skipped.push(storage::SkippedKey { counter: 9, seed: vec![0; 32] });
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11e_before_11f",
            "13.3 order: an empty seed and `used` one byte too long on the same chain: check 11e.",
            both(
                &|r| {
                    item(&mut chain(r, 0)?.skipped, 0)?.seed.clear();
                    Ok(())
                },
                &|r| {
                    chain(r, 0)?.used.push(0);
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11f_before_11g",
            "13.3 order: `used` holding an entry for a counter past the chain's, then one stray byte: check 11f.",
            s(&|r| {
                let c = chain(r, 0)?;
                c.used = used_entry(c.counter + 2);
                c.used.push(0);
                Ok(())
            })?,
        ),
        (
            "ratchet_order_11g_before_11h",
            "13.3 order: a used counter that is a skipped key, and an empty ratchet key: check 11g.",
            s(&|r| {
                let c = chain(r, 0)?;
                c.used = used_entry(item(&mut c.skipped, 0)?.counter);
                c.ratchet_key.clear();
                Ok(())
            })?,
        ),
        (
            "ratchet_order_11h_before_11i",
            "13.3 order: an empty ratchet key and an empty header key on one chain: check 11h.",
            both(
                &|r| {
                    chain(r, 0)?.ratchet_key.clear();
                    Ok(())
                },
                &|r| {
                    chain(r, 0)?.header_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_11_before_12",
            "13.3 order: the last chain without a chain key (12) and the first chain's header key empty (11i): \
             check 11 on every chain first.",
            both(
                &|r| {
                    chain(r, 1)?.chain_key.clear();
                    Ok(())
                },
                &|r| {
                    chain(r, 0)?.header_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "ratchet_order_12_before_13",
            "13.3 order: the last chain without a chain key and no sending chain: check 12.",
            both(
                &|r| {
                    chain(r, 1)?.chain_key.clear();
                    Ok(())
                },
                &no_sending_chain,
            )?,
        ),
        (
            "ratchet_order_13_before_14",
            "13.3 order: receiving chains without a sending chain, and an empty root key: check 13.",
            both(&no_sending_chain, &|r| {
                r.root_key.clear();
                Ok(())
            })?,
        ),
        (
            "ratchet_order_14_before_15",
            "13.3 order: an empty root key and an empty `next_receiving_header_key`: check 14.",
            both(
                &|r| {
                    r.root_key.clear();
                    Ok(())
                },
                &|r| {
                    r.next_receiving_header_key.clear();
                    Ok(())
                },
            )?,
        ),
    ];
    for (name, rule, input) in order {
        cases.add(name, D, rule, &input);
    }

    let (prefix, suffix) = skipped_total(5, &|c| {
        c.chain_key.truncate(31);
        Ok(())
    })?;
    cases.add_repeat(
        "ratchet_order_11b_before_11c",
        D,
        "13.3 order: 2,001 skipped keys in all (as in ratchet_skipped_keys_2001), the current chain's chain key of \
         31 bytes: 11b (the total reaches 2,001 on that very chain).",
        (&prefix, &closed_unit, 4, &suffix),
    );
    let (prefix, suffix) = skipped_total(5, &|c| {
        item(&mut c.skipped, 0)?.counter = c.counter;
        Ok(())
    })?;
    cases.add_repeat(
        "ratchet_order_11c_before_11d",
        D,
        "13.3 order: 2,001 skipped keys in all, the current chain's first key on the chain's counter: 11c (a \
         chain's total before its keys).",
        (&prefix, &closed_unit, 4, &suffix),
    );

    // Other encodings of the real state (check 2).
    let sending_pb = st.sending.clone().unwrap_or_default();
    let zero_field = if sending_pb.counter == 0 {
        3
    } else if sending_pb.previous_counter == 0 {
        6
    } else {
        return Err(err("input", "the sending chain has no counter of 0"));
    };
    let canonical: [(&str, &str, Vec<u8>); 8] = [
        (
            "ratchet_unknown_field",
            "13.3 check 2: an unknown field 15 (varint 1) after the last field.",
            [base.clone(), vec![0x78, 0x01]].concat(),
        ),
        (
            "ratchet_unknown_field_in_skipped_key",
            "13.3 check 2: an unknown field 3 inside the first chain's first skipped key.",
            nested(&base, &[5, 5], &mut |r| {
                r.push(Raw::Varint(3, 1));
                Ok(())
            })?,
        ),
        (
            "ratchet_root_key_given_twice",
            "13.3 check 2: the root key written twice, zeros then the real key (a lenient parser keeps the last).",
            nested(&base, &[], &mut |r| {
                insert_before_same(r, Raw::Bytes(3, vec![0; 32]));
                Ok(())
            })?,
        ),
        (
            "ratchet_non_minimal_counter",
            "13.3 check 2: the current chain's counter as a non-minimal varint.",
            nested(&base, &[], &mut |r| {
                let chains: Vec<usize> = (0..r.len()).filter(|i| r.get(*i).is_some_and(|x| x.field() == 5)).collect();
                let last = *chains.last().ok_or_else(|| err("input", "no chain"))?;
                if let Some(Raw::Bytes(_, payload)) = r.get_mut(last) {
                    *payload = nested(payload, &[], &mut |c| replace_varint(c, 4, |v| non_minimal(4, v)))?;
                }
                Ok(())
            })?,
        ),
        (
            "ratchet_fields_out_of_order",
            "13.3 check 2: `next_receiving_header_key` (6) written before the receiving chains (5).",
            nested(&base, &[], &mut |r| move_before(r, 6, 5))?,
        ),
        (
            "ratchet_explicit_default",
            "13.3 check 2: a sending-chain counter of 0 written explicitly (a default value is omitted).",
            nested(&base, &[4], &mut |r| {
                insert_sorted(r, Raw::Varint(zero_field, 0));
                Ok(())
            })?,
        ),
        (
            "ratchet_version_plus_2_pow_32",
            "13.3 check 2: version 2^32 + 1, which a parser truncating to 32 bits reads as 1.",
            nested(&base, &[], &mut |r| replace_varint(r, 1, |v| Raw::Varint(1, v + (1 << 32))))?,
        ),
        (
            "ratchet_trailing_zero_byte",
            "13.3 check 2: a zero byte after the last field (field number 0).",
            [base.clone(), vec![0x00]].concat(),
        ),
    ];
    for (name, rule, input) in canonical {
        cases.add(name, D, rule, &input);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 13.4: session records
// ---------------------------------------------------------------------------

fn record_cases(cases: &mut Cases, f: &Fixtures) -> R<()> {
    use Decoder::SessionRecord as D;
    type Edit<'a> = &'a dyn Fn(&mut storage::SessionRecord) -> R<()>;
    let base = f.bob.encode_to_vec();
    let s = |edit: Edit<'_>| alter(&f.bob, edit);
    let both = |a: Edit<'_>, b: Edit<'_>| {
        alter(&f.bob, |r| {
            a(r)?;
            b(r)
        })
    };
    let on_alice = |edit: Edit<'_>| alter(&f.alice, edit);
    let on_displaced = |edit: Edit<'_>| alter(&f.bob_displaced, edit);
    let header = f.alice.current.as_ref().and_then(|s| s.pending_prekey.clone());
    let kept_copy = f.bob.archived.first().cloned().ok_or_else(|| err("input", "no archived state"))?;
    let archived_copies = |n: usize| {
        let copy = kept_copy.clone();
        move |r: &mut storage::SessionRecord| -> R<()> {
            r.archived = vec![copy.clone(); n];
            Ok(())
        }
    };
    // Skipped keys over the whole record: `n`, with the kept state's and
    // the closed chain's as they are and the rest on the current chain.
    // Skipped keys over the whole record: `n`, 199 in each of ten copies of
    // the kept state (they repeat: `input_repeat`), the current state's
    // closed chain as it is, the rest on its current chain.
    let mut kept_199 = kept_copy.clone();
    for chain in &mut kept(&mut kept_199)?.receiving {
        fill_chain(chain, 199);
    }
    let in_kept_199: usize = kept(&mut kept_199.clone())?.receiving.iter().map(|c| c.skipped.len()).sum();
    let kept_unit = storage::SessionRecord { archived: vec![kept_199.clone()], ..Default::default() }.encode_to_vec();
    let record_skipped = |n: usize, edit: Edit<'_>| -> R<(Vec<u8>, Vec<u8>)> {
        let full = s(&|r| {
            edit(r)?;
            r.archived = vec![kept_199.clone(); 10];
            let chains = &mut ratchet(current(r)?)?.receiving;
            let in_closed: usize = chains.iter().rev().skip(1).map(|c| c.skipped.len()).sum();
            let last = chains.last_mut().ok_or_else(|| err("input", "no chain"))?;
            fill_chain(last, n - 10 * in_kept_199 - in_closed);
            Ok(())
        })?;
        let (prefix, suffix) = repeat_form(&full, &kept_unit, 10)?;
        Ok((prefix.to_vec(), suffix.to_vec()))
    };
    let seen_unit = storage::SessionRecord {
        seen_base_keys: vec![f.bob.seen_base_keys.first().cloned().unwrap_or_default()],
        ..Default::default()
    }
    .encode_to_vec();
    let seen_split = |record: &storage::SessionRecord| {
        let head = storage::SessionRecord {
            seen_base_keys: Vec::new(),
            generation: 0,
            heals: 0,
            initiations: 0,
            ..record.clone()
        };
        let tail = storage::SessionRecord {
            generation: record.generation,
            heals: record.heals,
            initiations: record.initiations,
            seeds_apart: record.seeds_apart,
            ..Default::default()
        };
        (head.encode_to_vec(), tail.encode_to_vec())
    };

    // Accepted.
    cases.add(
        "record_of_the_responder",
        D,
        "13.4: Bob's record as the library wrote it: a trusted identity; the current state (Alice's second \
         session, healed once: kept_since = heals = 1 on the archived state, 9a at its bound) with two receiving \
         chains; archived, the first session cut to its kept keys; two remembered base keys.",
        &base,
    );
    cases.add(
        "record_with_two_unanswered_initiations",
        D,
        "13.4: Alice's record before any answer: two initiator states with their pending prekey headers (S5 to S7 \
         pass), the current one with initiated = initiations = 2 (9b at its bound).",
        &f.alice.encode_to_vec(),
    );
    cases.add(
        "record_with_a_displaced_state",
        D,
        "13.4 S9 and 8a: Bob's record after Alice's second session replaced the first: an archived full state \
         that is displaced is accepted (8a refuses only a displaced current state). The current state has no \
         `left_answered`: Bob never answered the session it replaced (9.6).",
        &f.bob_displaced.encode_to_vec(),
    );
    cases.add(
        "record_ten_archived_states",
        D,
        "13.4 check 4 boundary: 10 archived states (copies of the kept state) are accepted.",
        &s(&archived_copies(10))?,
    );
    let (head, tail) = seen_split(&f.bob);
    cases.add_repeat(
        "record_1000_seen_base_keys",
        D,
        "13.4 check 5 boundary: 1,000 remembered base keys (one key repeated: repeats are not checked) are accepted.",
        (&head, &seen_unit, 1000, &tail),
    );
    cases.add(
        "record_without_states",
        D,
        "13.4 check 6: no current state and no archived state (a record holding a trust decision alone) is \
         accepted.",
        &s(&|r| {
            r.current = None;
            r.archived.clear();
            Ok(())
        })?,
    );
    cases.add(
        "record_without_trusted_identity",
        D,
        "13.4 check 7: an empty `trusted_identity` is accepted.",
        &s(&|r| {
            r.trusted_identity.clear();
            Ok(())
        })?,
    );
    let (prefix, suffix) = record_skipped(2000, &|_| Ok(()))?;
    cases.add_repeat(
        "record_skipped_keys_2000",
        D,
        "13.4 check 11 boundary: 2,000 skipped keys over the record's states (199 in each of ten kept states, 10 in \
         the current state) are accepted.",
        (&prefix, &kept_unit, 10, &suffix),
    );
    cases.add(
        "record_current_came_back",
        D,
        "13.4 S10: `came_back` on a full state (here the current one) is accepted.",
        &s(&|r| {
            current(r)?.came_back = true;
            Ok(())
        })?,
    );

    // One failing check each.
    cases.add_repeat(
        "record_too_large",
        D,
        "13.4 check 1: 1,481,793 bytes, one more than MAX_RECORD_LEN.",
        (&[], &[0], 1_481_793, &[]),
    );
    cases.add_repeat(
        "record_at_size_limit",
        D,
        "13.4 check 1 boundary: 1,481,792 zero bytes pass check 1 and fail check 2.",
        (&[], &[0], 1_481_792, &[]),
    );
    cases.add("record_empty", D, "13.4 check 3: an empty input parses as version 0.", &[]);
    cases.add(
        "record_version_2",
        D,
        "13.4 check 3: version 2.",
        &s(&|r| {
            r.version = 2;
            Ok(())
        })?,
    );
    cases.add(
        "record_seeds_apart",
        D,
        "13.4 check 3a: `seeds_apart = true` given to the public loader, which expects the seeds in the record.",
        &s(&|r| {
            r.seeds_apart = true;
            Ok(())
        })?,
    );
    cases.add("record_eleven_archived_states", D, "13.4 check 4: 11 archived states.", &s(&archived_copies(11))?);
    cases.add_repeat(
        "record_1001_seen_base_keys",
        D,
        "13.4 check 5: 1,001 remembered base keys.",
        (&head, &seen_unit, 1001, &tail),
    );
    cases.add(
        "record_archived_without_current",
        D,
        "13.4 check 6: an archived state and no current state.",
        &s(&|r| {
            r.current = None;
            Ok(())
        })?,
    );
    cases.add(
        "record_trusted_identity_31_bytes",
        D,
        "13.4 check 7: a trusted identity of 31 bytes.",
        &s(&|r| {
            r.trusted_identity.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "record_current_without_keys",
        D,
        "13.4 check 8 (S1 on the current state): neither `ratchet` nor `kept`.",
        &s(&|r| {
            current(r)?.ratchet = None;
            Ok(())
        })?,
    );
    cases.add(
        "record_current_is_kept",
        D,
        "13.4 check 8a: the current state is a kept state (a copy of the archived one, which passes S1 to S10).",
        &s(&|r| {
            r.current = Some(kept_copy.clone());
            Ok(())
        })?,
    );
    cases.add(
        "record_current_displaced",
        D,
        "13.4 check 8a: the current state is displaced.",
        &s(&|r| {
            current(r)?.displaced = true;
            Ok(())
        })?,
    );
    cases.add(
        "record_archived_remote_identity_empty",
        D,
        "13.4 check 9 (S3 on the archived state): its remote identity is empty.",
        &s(&|r| {
            archived(r, 0)?.remote_identity.clear();
            Ok(())
        })?,
    );
    cases.add(
        "record_kept_since_after_heals",
        D,
        "13.4 check 9a: a kept state with kept_since = heals + 1.",
        &s(&|r| {
            let heals = r.heals;
            archived(r, 0)?.kept_since = heals + 1;
            Ok(())
        })?,
    );
    cases.add(
        "record_initiated_after_initiations",
        D,
        "13.4 check 9b: Alice's record with initiations = 1 while her current state has initiated = 2.",
        &on_alice(&|r| {
            r.initiations = 1;
            Ok(())
        })?,
    );
    cases.add(
        "record_seen_base_key_33_bytes",
        D,
        "13.4 check 10: the second remembered base key of 33 bytes.",
        &s(&|r| {
            item(&mut r.seen_base_keys, 1)?.push(0);
            Ok(())
        })?,
    );
    let (prefix, suffix) = record_skipped(2001, &|_| Ok(()))?;
    cases.add_repeat(
        "record_skipped_keys_2001",
        D,
        "13.4 check 11: 2,001 skipped keys over the record's states (199 in each of ten kept states, 11 in the \
         current state), each state far below 2,000 (13.3 check 11c passes in each).",
        (&prefix, &kept_unit, 10, &suffix),
    );
    cases.add(
        "state_neither_ratchet_nor_kept",
        D,
        "13.4 S1: the archived state without `kept` (and without `ratchet`).",
        &s(&|r| {
            archived(r, 0)?.kept = None;
            Ok(())
        })?,
    );
    cases.add(
        "state_both_ratchet_and_kept",
        D,
        "13.4 S1: the kept state also given the current state's ratchet.",
        &s(&|r| {
            let full = ratchet(current(r)?)?.clone();
            archived(r, 0)?.ratchet = Some(full);
            Ok(())
        })?,
    );
    cases.add(
        "state_full_with_kept_since",
        D,
        "13.4 S1: a full state (the current one) with kept_since = 1.",
        &s(&|r| {
            current(r)?.kept_since = 1;
            Ok(())
        })?,
    );
    cases.add(
        "state_ratchet_version_0",
        D,
        "13.4 S2: the current state's ratchet fails 13.3 check 3 (version omitted: 0).",
        &s(&|r| {
            ratchet(current(r)?)?.version = 0;
            Ok(())
        })?,
    );
    cases.add(
        "state_ratchet_current_chain_without_chain_key",
        D,
        "13.4 S2: the current state's ratchet fails 13.3 check 12.",
        &s(&|r| {
            let chains = &mut ratchet(current(r)?)?.receiving;
            chains.last_mut().ok_or_else(|| err("input", "no chain"))?.chain_key.clear();
            Ok(())
        })?,
    );
    cases.add(
        "kept_associated_data_1025_bytes",
        D,
        "13.4 S2: kept keys with an associated data of 1,025 bytes.",
        &s(&|r| {
            kept(archived(r, 0)?)?.associated_data = vec![0; 1025];
            Ok(())
        })?,
    );
    cases.add(
        "kept_chain_with_chain_key",
        D,
        "13.4 S2: a chain key on the kept state's only chain (13.3 check 11a refuses every chain key there, the \
         last chain's too).",
        &s(&|r| {
            item(&mut kept(archived(r, 0)?)?.receiving, 0)?.chain_key = vec![0; 32];
            Ok(())
        })?,
    );
    cases.add(
        "kept_six_chains",
        D,
        "13.4 S2: kept keys with 6 chains (13.3 check 10).",
        &s(&|r| {
            let keys = kept(archived(r, 0)?)?;
            let chain = item(&mut keys.receiving, 0)?.clone();
            keys.receiving = vec![chain; 6];
            Ok(())
        })?,
    );
    cases.add(
        "kept_without_skipped_keys",
        D,
        "13.4 S2: kept keys holding no skipped key.",
        &s(&|r| {
            kept(archived(r, 0)?)?.receiving.iter_mut().for_each(|c| c.skipped.clear());
            Ok(())
        })?,
    );
    cases.add(
        "state_remote_identity_33_bytes",
        D,
        "13.4 S3: the current state's remote identity of 33 bytes.",
        &s(&|r| {
            current(r)?.remote_identity.push(0);
            Ok(())
        })?,
    );
    cases.add(
        "state_base_key_31_bytes",
        D,
        "13.4 S4: the current state's base key of 31 bytes.",
        &s(&|r| {
            current(r)?.base_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "pending_prekey_on_responder_state",
        D,
        "13.4 S5: a pending prekey header (Alice's) on a state we responded to.",
        &s(&|r| {
            current(r)?.pending_prekey = header.clone();
            Ok(())
        })?,
    );
    cases.add(
        "pending_prekey_on_state_that_received",
        D,
        "13.4 S5: a pending prekey header on an initiator state that has receiving chains.",
        &s(&|r| {
            let state = current(r)?;
            state.initiator = true;
            state.pending_prekey = header.clone();
            Ok(())
        })?,
    );
    cases.add(
        "pending_prekey_on_kept_state",
        D,
        "13.4 S5: a pending prekey header on a kept initiator state.",
        &s(&|r| {
            let state = archived(r, 0)?;
            state.initiator = true;
            state.pending_prekey = header.clone();
            Ok(())
        })?,
    );
    cases.add(
        "pending_identity_key_31_bytes",
        D,
        "13.4 S6: the pending header's identity key of 31 bytes (Alice's current state).",
        &on_alice(&|r| {
            pending(current(r)?)?.identity_key.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "pending_ciphertext_1567_bytes",
        D,
        "13.4 S7: the pending header's ML-KEM ciphertext of 1,567 bytes.",
        &on_alice(&|r| {
            pending(current(r)?)?.pq_ciphertext.truncate(1567);
            Ok(())
        })?,
    );
    cases.add(
        "responder_state_with_initiated",
        D,
        "13.4 S8: initiated = 1 on a state we responded to (initiations = 1, so 9b alone would pass).",
        &s(&|r| {
            r.initiations = 1;
            current(r)?.initiated = 1;
            Ok(())
        })?,
    );
    cases.add(
        "displaced_kept_state",
        D,
        "13.4 S9: a displaced kept state.",
        &s(&|r| {
            archived(r, 0)?.displaced = true;
            Ok(())
        })?,
    );
    cases.add(
        "displaced_with_pending_prekey",
        D,
        "13.4 S9: Alice's archived unanswered initiation (full, with its pending header) marked displaced.",
        &on_alice(&|r| {
            archived(r, 0)?.displaced = true;
            Ok(())
        })?,
    );
    cases.add(
        "came_back_kept_state",
        D,
        "13.4 S10: `came_back` on a kept state.",
        &s(&|r| {
            archived(r, 0)?.came_back = true;
            Ok(())
        })?,
    );
    cases.add(
        "left_answered_kept_state",
        D,
        "13.4 S11: `left_answered` on a kept state.",
        &s(&|r| {
            archived(r, 0)?.left_answered = true;
            Ok(())
        })?,
    );
    cases.add(
        "left_answered_initiator_state",
        D,
        "13.4 S11: `left_answered` on Alice's current state, an initiator state.",
        &on_alice(&|r| {
            current(r)?.left_answered = true;
            Ok(())
        })?,
    );
    cases.add(
        "followed_responder_state",
        D,
        "13.4 S12: `followed` on Bob's current state, a responder state.",
        &s(&|r| {
            current(r)?.followed = true;
            Ok(())
        })?,
    );
    cases.add(
        "followed_kept_state",
        D,
        "13.4 S12: `followed` on a kept state (`initiator` set too, so that only fullness fails).",
        &s(&|r| {
            let state = archived(r, 0)?;
            state.initiator = true;
            state.followed = true;
            Ok(())
        })?,
    );
    cases.add(
        "followed_archived_state",
        D,
        "13.4 check 9d: `followed` on Alice's archived unanswered initiation (full, ours), which passes S1 to S12.",
        &on_alice(&|r| {
            archived(r, 0)?.followed = true;
            Ok(())
        })?,
    );
    cases.add(
        "record_current_left_answered",
        D,
        "13.4 S11 and 9c: `left_answered` on the current state, full and not ours (Bob's second session), is \
         accepted.",
        &on_displaced(&|r| {
            current(r)?.left_answered = true;
            Ok(())
        })?,
    );
    cases.add(
        "record_current_followed",
        D,
        "13.4 S12: `followed` on Alice's current state, full and ours, is accepted.",
        &on_alice(&|r| {
            current(r)?.followed = true;
            Ok(())
        })?,
    );
    cases.add(
        "left_answered_archived_state",
        D,
        "13.4 check 9c: `left_answered` on an archived full state (Bob's displaced first session), which passes \
         S1 to S11.",
        &on_displaced(&|r| {
            archived(r, 0)?.left_answered = true;
            Ok(())
        })?,
    );

    // Two failing checks: the first one's error.
    let eleven = archived_copies(11);
    let seen_1001_empty = |r: &mut storage::SessionRecord| -> R<()> {
        r.seen_base_keys = vec![Vec::new(); 1001];
        Ok(())
    };
    let order: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "record_order_3_before_3a",
            "13.4 order: version 2 and `seeds_apart`: check 3.",
            both(
                &|r| {
                    r.version = 2;
                    Ok(())
                },
                &|r| {
                    r.seeds_apart = true;
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_3a_before_4",
            "13.4 order: `seeds_apart` and 11 archived states: check 3a.",
            both(
                &|r| {
                    r.seeds_apart = true;
                    Ok(())
                },
                &eleven,
            )?,
        ),
        (
            "record_order_4_before_5",
            "13.4 order: 11 archived states and 1,001 (empty) remembered base keys: check 4.",
            both(&eleven, &seen_1001_empty)?,
        ),
        (
            "record_order_5_before_6",
            "13.4 order: 1,001 (empty) remembered base keys and no current state: check 5.",
            both(&seen_1001_empty, &|r| {
                r.current = None;
                Ok(())
            })?,
        ),
        (
            "record_order_6_before_7",
            "13.4 order: no current state (with an archived one) and a trusted identity of 33 bytes: check 6.",
            both(
                &|r| {
                    r.current = None;
                    Ok(())
                },
                &|r| {
                    r.trusted_identity.push(0);
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_7_before_8",
            "13.4 order: a trusted identity of 33 bytes and a current state without keys: check 7.",
            both(
                &|r| {
                    r.trusted_identity.push(0);
                    Ok(())
                },
                &|r| {
                    current(r)?.ratchet = None;
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_8_before_8a",
            "13.4 order: a kept state as current, with an empty base key: S4 (check 8) before 8a.",
            s(&|r| {
                let mut state = kept_copy.clone();
                state.base_key.clear();
                r.current = Some(state);
                Ok(())
            })?,
        ),
        (
            "record_order_s10_before_8a",
            "13.4 order: a kept state as current, with `came_back`: the library makes S10 as part of check 8, \
             before 8a (checks 8 and 9 say \"S1 to S9\"; the state table has S10: see RULES-records.md).",
            s(&|r| {
                let mut state = kept_copy.clone();
                state.came_back = true;
                r.current = Some(state);
                Ok(())
            })?,
        ),
        (
            "record_order_8a_before_9",
            "13.4 order: a displaced current state and an archived state with an empty base key: check 8a.",
            both(
                &|r| {
                    current(r)?.displaced = true;
                    Ok(())
                },
                &|r| {
                    archived(r, 0)?.base_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_s9_before_8a",
            "13.4 order: Alice's current state displaced, with its pending header: S9 (check 8) before 8a.",
            on_alice(&|r| {
                current(r)?.displaced = true;
                Ok(())
            })?,
        ),
        (
            "record_order_current_before_archived",
            "13.4 order: initiated = 1 on the current responder state (S8, check 8) and an archived state with an \
             empty base key (check 9): S8.",
            both(
                &|r| {
                    current(r)?.initiated = 1;
                    Ok(())
                },
                &|r| {
                    archived(r, 0)?.base_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_9_before_9a",
            "13.4 order: kept_since = 99 on the kept state, and a second archived state (a full copy of the \
             current one) with an empty remote identity: check 9 on every archived state first.",
            both(
                &|r| {
                    archived(r, 0)?.kept_since = 99;
                    Ok(())
                },
                &|r| {
                    let mut full = current(r)?.clone();
                    full.remote_identity.clear();
                    r.archived.push(full);
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_9a_before_9b",
            "13.4 order: kept_since = 99, and the kept state made an initiator state with initiated = 5 (above \
             initiations): check 9a.",
            both(
                &|r| {
                    archived(r, 0)?.kept_since = 99;
                    Ok(())
                },
                &|r| {
                    let state = archived(r, 0)?;
                    state.initiator = true;
                    state.initiated = 5;
                    Ok(())
                },
            )?,
        ),
        (
            "record_order_9b_before_10",
            "13.4 order: an archived initiator state with initiated = 5 (above initiations) and an empty remembered \
             base key: check 9b.",
            both(
                &|r| {
                    let state = archived(r, 0)?;
                    state.initiator = true;
                    state.initiated = 5;
                    Ok(())
                },
                &|r| {
                    item(&mut r.seen_base_keys, 0)?.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "state_order_s1_before_s2",
            "13.4 order: the kept state given a ratchet too, and its kept associated data of 1,025 bytes: S1.",
            both(
                &|r| {
                    let full = ratchet(current(r)?)?.clone();
                    archived(r, 0)?.ratchet = Some(full);
                    Ok(())
                },
                &|r| {
                    kept(archived(r, 0)?)?.associated_data = vec![0; 1025];
                    Ok(())
                },
            )?,
        ),
        (
            "state_order_kept_associated_data_before_chains",
            "13.4 order: kept associated data of 1,025 bytes and a chain key on a kept chain: the associated data \
             first.",
            both(
                &|r| {
                    kept(archived(r, 0)?)?.associated_data = vec![0; 1025];
                    Ok(())
                },
                &|r| {
                    item(&mut kept(archived(r, 0)?)?.receiving, 0)?.chain_key = vec![0; 32];
                    Ok(())
                },
            )?,
        ),
        (
            "state_order_s2_before_s3",
            "13.4 order: the current ratchet's root key empty (13.3 check 14, inside S2) and an empty remote \
             identity: S2.",
            both(
                &|r| {
                    ratchet(current(r)?)?.root_key.clear();
                    Ok(())
                },
                &|r| {
                    current(r)?.remote_identity.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "state_order_s3_before_s4",
            "13.4 order: an empty remote identity and an empty base key: S3.",
            both(
                &|r| {
                    current(r)?.remote_identity.clear();
                    Ok(())
                },
                &|r| {
                    current(r)?.base_key.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "state_order_s4_before_s5",
            "13.4 order: an empty base key and a pending header on a responder state: S4.",
            both(
                &|r| {
                    current(r)?.base_key.clear();
                    Ok(())
                },
                &|r| {
                    current(r)?.pending_prekey = header.clone();
                    Ok(())
                },
            )?,
        ),
        (
            "state_order_s5_before_s6_s8_s9",
            "13.4 order: a pending header on a responder state, with an empty identity key, initiated = 1 and \
             displaced: S5.",
            s(&|r| {
                let state = current(r)?;
                state.pending_prekey = header.clone();
                pending(state)?.identity_key.clear();
                state.initiated = 1;
                state.displaced = true;
                Ok(())
            })?,
        ),
        (
            "state_order_s6_before_s7",
            "13.4 order: the pending header's identity key and ciphertext both empty: S6.",
            on_alice(&|r| {
                let header = pending(current(r)?)?;
                header.identity_key.clear();
                header.pq_ciphertext.clear();
                Ok(())
            })?,
        ),
        (
            "state_order_s7_before_s9",
            "13.4 order: an empty pending ciphertext on a displaced state: S7.",
            on_alice(&|r| {
                let state = current(r)?;
                pending(state)?.pq_ciphertext.clear();
                state.displaced = true;
                Ok(())
            })?,
        ),
        (
            "state_order_s8_before_s9",
            "13.4 order: the kept state (one we responded to) with initiated = 1 and displaced (initiations = 1): S8.",
            s(&|r| {
                r.initiations = 1;
                let state = archived(r, 0)?;
                state.initiated = 1;
                state.displaced = true;
                Ok(())
            })?,
        ),
        (
            "state_order_s9_before_s10",
            "13.4 order: a kept state both displaced and come back: S9.",
            s(&|r| {
                let state = archived(r, 0)?;
                state.displaced = true;
                state.came_back = true;
                Ok(())
            })?,
        ),
    ];
    for (name, rule, input) in order {
        cases.add(name, D, rule, &input);
    }

    let (prefix, suffix) = record_skipped(2001, &|r| {
        item(&mut r.seen_base_keys, 0)?.clear();
        Ok(())
    })?;
    cases.add_repeat(
        "record_order_10_before_11",
        D,
        "13.4 order: an empty remembered base key and 2,001 skipped keys over the states: check 10.",
        (&prefix, &kept_unit, 10, &suffix),
    );

    // Other encodings of the real record (check 2).
    let canonical: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "record_unknown_field",
            "13.4 check 2: an unknown field 10 (varint 1) after the last field.",
            [base.clone(), vec![0x50, 0x01]].concat(),
        ),
        (
            "record_unknown_field_in_sending_chain",
            "13.4 check 2: an unknown field 8 inside the current state's ratchet's sending chain (three levels down).",
            nested(&base, &[3, 1, 4], &mut |r| {
                r.push(Raw::Varint(8, 1));
                Ok(())
            })?,
        ),
        (
            "record_trusted_identity_given_twice",
            "13.4 check 2: the trusted identity written twice, zeros then the real key.",
            nested(&base, &[], &mut |r| {
                insert_before_same(r, Raw::Bytes(2, vec![0; 32]));
                Ok(())
            })?,
        ),
        (
            "record_current_split_in_two",
            "13.4 check 2: the current state written as two `current` records, its ratchet in the first and its \
             other fields in the second (a lenient parser merges them into the real state).",
            nested(&base, &[], &mut |r| {
                let at = r.iter().position(|x| x.field() == 3).ok_or_else(|| err("input", "no current"))?;
                let Some(Raw::Bytes(_, payload)) = r.get(at).cloned() else {
                    return Err(err("input", "no current"));
                };
                let (first, second): (Vec<Raw>, Vec<Raw>) = parse(&payload)?.into_iter().partition(|x| x.field() == 1);
                r.splice(at..=at, [Raw::Bytes(3, emit(&first)), Raw::Bytes(3, emit(&second))]);
                Ok(())
            })?,
        ),
        (
            "record_non_minimal_heals",
            "13.4 check 2: `heals` as a non-minimal varint.",
            nested(&base, &[], &mut |r| replace_varint(r, 7, |v| non_minimal(7, v)))?,
        ),
        (
            "record_seeds_apart_false_written",
            "13.4 check 2: `seeds_apart = false` written explicitly (a default value is omitted).",
            nested(&base, &[], &mut |r| {
                insert_sorted(r, Raw::Varint(8, 0));
                Ok(())
            })?,
        ),
        (
            "record_came_back_2",
            "13.4 check 2: the current state's `came_back` written as 2, a bool that a lenient parser reads as true \
             (and true would be accepted there).",
            nested(&base, &[3], &mut |r| {
                insert_sorted(r, Raw::Varint(10, 2));
                Ok(())
            })?,
        ),
        (
            "record_version_plus_2_pow_32",
            "13.4 check 2: version 2^32 + 1, which a parser truncating to 32 bits reads as 1.",
            nested(&base, &[], &mut |r| replace_varint(r, 1, |v| Raw::Varint(1, v + (1 << 32))))?,
        ),
        (
            "record_fields_out_of_order",
            "13.4 check 2: `archived` (4) written before `current` (3).",
            nested(&base, &[], &mut |r| move_before(r, 4, 3))?,
        ),
    ];
    for (name, rule, input) in canonical {
        cases.add(name, D, rule, &input);
    }
    healing_cases(cases, f, &record_skipped, &kept_unit)
}

/// 13.4 check 10a: the record's healing bookkeeping (PROTOCOL.md 20.4), on
/// Bob's record. Ids are message ids of fixed messages (nothing is drawn).
/// An edit of a session record.
type RecordEdit<'a> = &'a dyn Fn(&mut storage::SessionRecord) -> R<()>;

/// `record_cases`'s record with `n` skipped keys and an edit, as the prefix
/// and suffix around its ten repeated kept states.
type SkippedRecord<'a> = &'a dyn Fn(usize, RecordEdit<'_>) -> R<(Vec<u8>, Vec<u8>)>;

fn healing_cases(cases: &mut Cases, f: &Fixtures, record_skipped: SkippedRecord<'_>, kept_unit: &[u8]) -> R<()> {
    use Decoder::SessionRecord as D;
    let id = |i: usize| crate::healing::message_id_by_hand(format!("message {i}").as_bytes()).to_vec();
    let ids = |from: usize, n: usize| (from..from + n).map(id).collect::<Vec<_>>();
    // The base key of the session the last reset started: any 32 bytes (the
    // loader does not look for that session).
    let base_key = sha256(b"the base key of the last reset").to_vec();
    // Each awaited id named by 1 answered reset and not by the last one; a
    // base key exactly when a reset was sent.
    let healing = |reset_sent: bool, last_reset_at: u64, awaited: Vec<Vec<u8>>, delivered: Vec<Vec<u8>>| {
        let namings = vec![1; awaited.len()];
        let in_last_reset = vec![false; awaited.len()];
        let last_reset_base_key = if reset_sent { base_key.clone() } else { Vec::new() };
        storage::Healing {
            reset_sent,
            last_reset_at,
            awaited,
            delivered,
            namings,
            last_reset_base_key,
            in_last_reset,
            heard_since_reset: false,
            broke_on_ids: false,
        }
    };
    // A reset sent, with these awaited ids and naming counts (none named by
    // the last reset unless `in_last_reset` is changed).
    let named = |awaited: Vec<Vec<u8>>, namings: Vec<u32>| storage::Healing {
        in_last_reset: vec![false; awaited.len()],
        awaited,
        namings,
        ..healing(true, 1_700_000_000, Vec::new(), Vec::new())
    };
    let with = |h: storage::Healing| {
        alter(&f.bob, move |r| {
            r.healing = Some(h);
            Ok(())
        })
    };
    let at = 1_700_000_000;
    let (a, b) = (id(0), id(1));
    let mut short = id(2);
    short.truncate(15);
    let mut long = id(3);
    long.push(0);
    let mut many_short_first = ids(0, 65);
    if let Some(first) = many_short_first.first_mut() {
        first.truncate(15);
    }
    let mut base_key_31 = base_key.clone();
    base_key_31.truncate(31);
    let mut base_key_33 = base_key.clone();
    base_key_33.push(0);

    // Accepted.
    cases.add(
        "record_with_healing",
        D,
        "13.4 check 10a: Bob's record with healing bookkeeping as the library writes it: a reset sent at \
         1,700,000,000 in the session of `last_reset_base_key`; three ids awaited: one named by the last reset \
         only (0 answered resets, `in_last_reset` true), one named by 2 answered resets and by the last one, one \
         named by 3 answered resets (given up: not named again, still awaited); one id delivered.",
        &with(storage::Healing {
            delivered: vec![id(3)],
            in_last_reset: vec![true, true, false],
            ..named(vec![a.clone(), b.clone(), id(2)], vec![0, 2, MAX_RESET_NAMINGS])
        })?,
    );
    cases.add(
        "record_healing_64_awaited_64_delivered",
        D,
        "13.4 check 10a boundary (H2, H9): 64 awaited ids with their counts and flags, and 64 delivered ids \
         (MAX_AWAITED_RESENDS, MAX_DELIVERED_RESENDS), none in both, are accepted.",
        &with(healing(true, at, ids(0, 64), ids(64, 64)))?,
    );
    cases.add(
        "record_healing_reset_sent_at_0",
        D,
        "13.4 check 10a (H1, H8): a reset sent at time 0 (`reset_sent` true, `last_reset_at` 0, not written), \
         with its base key, is accepted.",
        &with(healing(true, 0, Vec::new(), Vec::new()))?,
    );
    cases.add(
        "record_healing_awaited_without_reset_sent",
        D,
        "13.4 check 10a: ids awaited (with their counts and flags) while `reset_sent` is false, and so without a \
         base key, are accepted (not checked: the library never writes it).",
        &with(healing(false, 0, vec![a.clone()], Vec::new()))?,
    );
    cases.add(
        "record_healing_named_0_times",
        D,
        "13.4 check 10a boundary (H5): awaited ids named by 0 answered resets (the last reset named them and is \
         not answered yet, or was never answered) are accepted.",
        &with(storage::Healing { in_last_reset: vec![true, false], ..named(vec![a.clone(), b.clone()], vec![0, 0]) })?,
    );
    cases.add(
        "record_healing_heard",
        D,
        "13.4 check 10a boundary (H13): `heard_since_reset` true with a reset sent (a message of the peer was \
         committed since) is accepted.",
        &with(storage::Healing { heard_since_reset: true, ..healing(true, at, vec![a.clone()], Vec::new()) })?,
    );
    cases.add(
        "record_healing_broke_on_ids",
        D,
        "13.4 check 10a boundary (H14): `broke_on_ids` true with a reset sent (that reset started a new session \
         on unreadable messages alone) is accepted, with `heard_since_reset` too.",
        &with(storage::Healing {
            broke_on_ids: true,
            heard_since_reset: true,
            ..healing(true, at, vec![a.clone()], Vec::new())
        })?,
    );
    cases.add(
        "record_healing_empty",
        D,
        "13.4 check 10a (H0): a `healing` present with every field at its default (`52 00`) is refused: \
         nothing to remember is written as no field, and only the canonical encoding is accepted.",
        &with(healing(false, 0, Vec::new(), Vec::new()))?,
    );

    // One failing check each.
    let failing: Vec<(&str, &str, storage::Healing)> = vec![
        (
            "record_healing_time_without_reset",
            "13.4 check 10a H1: `last_reset_at` = 5 with `reset_sent` false.",
            healing(false, 5, Vec::new(), Vec::new()),
        ),
        ("record_healing_65_awaited", "13.4 check 10a H2: 65 awaited ids.", healing(true, at, ids(0, 65), Vec::new())),
        (
            "record_healing_awaited_id_15_bytes",
            "13.4 check 10a H3: the second awaited id of 15 bytes.",
            healing(true, at, vec![a.clone(), short.clone()], Vec::new()),
        ),
        (
            "record_healing_awaited_id_empty",
            "13.4 check 10a H3: an empty awaited id.",
            healing(true, at, vec![Vec::new()], Vec::new()),
        ),
        (
            "record_healing_awaited_repeated",
            "13.4 check 10a H4: an awaited id given twice, not next to each other.",
            healing(true, at, vec![a.clone(), b.clone(), a.clone()], Vec::new()),
        ),
        (
            "record_healing_namings_missing",
            "13.4 check 10a H5: two awaited ids and one naming count.",
            named(vec![a.clone(), b.clone()], vec![1]),
        ),
        (
            "record_healing_namings_without_awaited",
            "13.4 check 10a H5: a naming count and no awaited id.",
            named(Vec::new(), vec![1]),
        ),
        (
            "record_healing_named_4_times",
            "13.4 check 10a H5: an awaited id named by 4 answered resets (MAX_RESET_NAMINGS + 1).",
            named(vec![a.clone()], vec![MAX_RESET_NAMINGS + 1]),
        ),
        (
            "record_healing_in_last_reset_missing",
            "13.4 check 10a H6: two awaited ids and one `in_last_reset` flag.",
            storage::Healing { in_last_reset: vec![true], ..named(vec![a.clone(), b.clone()], vec![1, 1]) },
        ),
        (
            "record_healing_in_last_reset_without_awaited",
            "13.4 check 10a H6: an `in_last_reset` flag and no awaited id.",
            storage::Healing { in_last_reset: vec![false], ..named(Vec::new(), Vec::new()) },
        ),
        (
            "record_healing_base_key_31_bytes",
            "13.4 check 10a H7: a `last_reset_base_key` of 31 bytes.",
            storage::Healing { last_reset_base_key: base_key_31.clone(), ..healing(true, at, Vec::new(), Vec::new()) },
        ),
        (
            "record_healing_base_key_33_bytes",
            "13.4 check 10a H7: a `last_reset_base_key` of 33 bytes.",
            storage::Healing { last_reset_base_key: base_key_33.clone(), ..healing(true, at, Vec::new(), Vec::new()) },
        ),
        (
            "record_healing_reset_sent_without_base_key",
            "13.4 check 10a H8: `reset_sent` true and no `last_reset_base_key`.",
            storage::Healing { last_reset_base_key: Vec::new(), ..healing(true, at, vec![a.clone()], Vec::new()) },
        ),
        (
            "record_healing_base_key_without_reset_sent",
            "13.4 check 10a H8: a `last_reset_base_key` with `reset_sent` false (and `last_reset_at` 0).",
            storage::Healing { last_reset_base_key: base_key.clone(), ..healing(false, 0, Vec::new(), Vec::new()) },
        ),
        (
            "record_healing_65_delivered",
            "13.4 check 10a H9: 65 delivered ids.",
            healing(true, at, Vec::new(), ids(0, 65)),
        ),
        (
            "record_healing_delivered_id_17_bytes",
            "13.4 check 10a H10: a delivered id of 17 bytes.",
            healing(true, at, Vec::new(), vec![long.clone()]),
        ),
        (
            "record_healing_delivered_repeated",
            "13.4 check 10a H11: a delivered id given twice.",
            healing(true, at, Vec::new(), vec![b.clone(), b.clone()]),
        ),
        (
            "record_healing_awaited_and_delivered",
            "13.4 check 10a H12: one id both awaited and delivered (the error names `healing.awaited`).",
            healing(true, at, vec![a.clone(), b.clone()], vec![b.clone()]),
        ),
        (
            "record_healing_heard_without_reset_sent",
            "13.4 check 10a H13: `heard_since_reset` true with `reset_sent` false.",
            storage::Healing { heard_since_reset: true, ..healing(false, 0, vec![a.clone()], Vec::new()) },
        ),
        (
            "record_healing_broke_on_ids_without_reset_sent",
            "13.4 check 10a H14: `broke_on_ids` true with `reset_sent` false.",
            storage::Healing { broke_on_ids: true, ..healing(false, 0, vec![a.clone()], Vec::new()) },
        ),
        // Two failing checks: the first one's error.
        (
            "record_healing_order_h1_before_h2",
            "13.4 order: `last_reset_at` without `reset_sent`, and 65 awaited ids: H1.",
            healing(false, 5, ids(0, 65), Vec::new()),
        ),
        (
            "record_healing_order_h2_before_h3",
            "13.4 order: 65 awaited ids, the first of 15 bytes: H2 (the count before any id).",
            healing(true, at, many_short_first, Vec::new()),
        ),
        (
            "record_healing_order_h3_before_h4",
            "13.4 order: an awaited id given twice, then one of 15 bytes: H3 (every length before any repeat).",
            healing(true, at, vec![a.clone(), a.clone(), short.clone()], Vec::new()),
        ),
        (
            "record_healing_order_h4_before_h5",
            "13.4 order: an awaited id given twice, with no naming count: H4.",
            named(vec![a.clone(), a.clone()], Vec::new()),
        ),
        (
            "record_healing_order_h5_before_h6",
            "13.4 order: an awaited id named by 4 answered resets and without its `in_last_reset` flag: H5.",
            storage::Healing { in_last_reset: Vec::new(), ..named(vec![a.clone()], vec![MAX_RESET_NAMINGS + 1]) },
        ),
        (
            "record_healing_order_h6_before_h7",
            "13.4 order: an awaited id without its `in_last_reset` flag, and a base key of 31 bytes: H6.",
            storage::Healing {
                in_last_reset: Vec::new(),
                last_reset_base_key: base_key_31.clone(),
                ..named(vec![a.clone()], vec![1])
            },
        ),
        (
            "record_healing_order_h7_before_h8",
            "13.4 order: a base key of 31 bytes with `reset_sent` false: H7 (its length before its presence).",
            storage::Healing { last_reset_base_key: base_key_31.clone(), ..healing(false, 0, Vec::new(), Vec::new()) },
        ),
        (
            "record_healing_order_h8_before_h9",
            "13.4 order: `reset_sent` without a base key, and 65 delivered ids: H8 (the awaited list and the base \
             key before the delivered list).",
            storage::Healing { last_reset_base_key: Vec::new(), ..healing(true, at, Vec::new(), ids(0, 65)) },
        ),
        (
            "record_healing_order_h11_before_h12",
            "13.4 order: an id both awaited and delivered, and delivered twice: H11.",
            healing(true, at, vec![a.clone()], vec![a.clone(), a.clone()]),
        ),
        (
            "record_healing_order_h12_before_h13",
            "13.4 order: an id both awaited and delivered, and `heard_since_reset` with `reset_sent` false: H12.",
            storage::Healing { heard_since_reset: true, ..healing(false, 0, vec![a.clone()], vec![a.clone()]) },
        ),
        (
            "record_healing_order_h13_before_h14",
            "13.4 order: `heard_since_reset` and `broke_on_ids` both true with `reset_sent` false: H13.",
            storage::Healing {
                heard_since_reset: true,
                broke_on_ids: true,
                ..healing(false, 0, vec![a.clone()], Vec::new())
            },
        ),
    ];
    for (name, rule, h) in failing {
        cases.add(name, D, rule, &with(h)?);
    }
    cases.add(
        "record_order_10_before_10a",
        D,
        "13.4 order: the second remembered base key of 33 bytes, and `last_reset_at` without `reset_sent`: check \
         10.",
        &alter(&f.bob, |r| {
            item(&mut r.seen_base_keys, 1)?.push(0);
            r.healing = Some(healing(false, 5, Vec::new(), Vec::new()));
            Ok(())
        })?,
    );
    let (prefix, suffix) = record_skipped(2001, &|r| {
        r.healing = Some(healing(false, 5, Vec::new(), Vec::new()));
        Ok(())
    })?;
    cases.add_repeat(
        "record_order_10a_before_11",
        D,
        "13.4 order: 2,001 skipped keys over the record's states (as `record_skipped_keys_2001`), and \
         `last_reset_at` without `reset_sent`: check 10a.",
        (&prefix, kept_unit, 10, &suffix),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 13.5: prekey sets
// ---------------------------------------------------------------------------

fn prekey_cases(cases: &mut Cases, f: &Fixtures, rng: &mut ChaCha20Rng) -> R<()> {
    use Decoder::PrekeySet as D;
    type Edit<'a> = &'a dyn Fn(&mut storage::PreKeySet) -> R<()>;
    let spent = f.spent.encode_to_vec();
    let topped = f.topped_up.encode_to_vec();
    let a = |edit: Edit<'_>| alter(&f.spent, edit);
    let b = |edit: Edit<'_>| alter(&f.topped_up, edit);
    let c = |edit: Edit<'_>| alter(&f.one_time_only, edit);
    let both_b = |x: Edit<'_>, y: Edit<'_>| {
        alter(&f.topped_up, |r| {
            x(r)?;
            y(r)
        })
    };
    let both_c = |x: Edit<'_>, y: Edit<'_>| {
        alter(&f.one_time_only, |r| {
            x(r)?;
            y(r)
        })
    };
    // Fresh one-time X25519 records: ids from next_id on (next_id moved past them).
    let secrets: Vec<[u8; 32]> = (0..200).map(|_| random::<32>(rng)).collect();
    let extra_secret = random::<32>(rng);
    let one_time = move |n: usize| {
        let secrets = secrets.clone();
        move |r: &mut storage::PreKeySet| -> R<()> {
            for secret in secrets.iter().take(n.saturating_sub(r.one_time.len())) {
                r.one_time.push(storage::OneTimePreKeyRecord { id: r.next_id, secret: secret.to_vec() });
                r.next_id += 1;
            }
            if r.one_time.len() != n {
                return Err(err("input", "not enough one-time secrets"));
            }
            Ok(())
        }
    };
    let more_signed = |n: usize| {
        move |r: &mut storage::PreKeySet| -> R<()> {
            let first = item(&mut r.signed, 0)?.clone();
            while r.signed.len() < n {
                r.signed.push(storage::SignedPreKeyRecord { id: r.next_id, ..first.clone() });
                r.next_id += 1;
            }
            Ok(())
        }
    };
    let more_last_resort = |n: usize| {
        move |r: &mut storage::PreKeySet| -> R<()> {
            let first = item(&mut r.last_resort, 0)?.clone();
            while r.last_resort.len() < n {
                r.last_resort.push(storage::PqPreKeyRecord { id: r.next_id, ..first.clone() });
                r.next_id += 1;
            }
            Ok(())
        }
    };
    let pq_id = f.topped_up.pq_one_time.first().map(|k| k.id).ok_or_else(|| err("input", "no pq key"))?;
    let signed_id = f.topped_up.signed.first().map(|k| k.id).ok_or_else(|| err("input", "no signed key"))?;

    // The remembered pairs at the end of the set, for long lists.
    let seen_entry = f.spent.seen_base_keys.first().cloned().ok_or_else(|| err("input", "no seen pair"))?;
    let seen_unit =
        storage::PreKeySet { seen_base_keys: vec![seen_entry.clone()], ..Default::default() }.encode_to_vec();
    let without_seen =
        |r: &storage::PreKeySet| storage::PreKeySet { seen_base_keys: Vec::new(), ..r.clone() }.encode_to_vec();

    // Accepted.
    cases.add(
        "prekey_set_after_two_handshakes",
        D,
        "13.5: Bob's set as the library wrote it after both handshakes: a signed prekey, a last-resort prekey, \
         its one-time prekeys used up (ids 3 and 4 gone, next_id 5), one remembered pair.",
        &spent,
    );
    cases.add(
        "prekey_set_topped_up",
        D,
        "13.5 check 7 boundary: the same set topped up with one one-time prekey of each kind; its largest id is \
         next_id - 1.",
        &topped,
    );
    cases.add(
        "prekey_set_three_signed_three_last_resort",
        D,
        "13.5 checks 4 and 5 boundary: after two rotations of each kind the set holds 3 signed and 3 last-resort \
         prekeys, the most either list may hold.",
        &f.rotated.encode_to_vec(),
    );
    cases.add(
        "prekey_set_200_one_time",
        D,
        "13.5 check 6 boundary: 200 one-time X25519 prekeys (and one one-time ML-KEM prekey) are accepted.",
        &b(&one_time(200))?,
    );
    cases.add_repeat(
        "prekey_set_10000_seen_base_keys",
        D,
        "13.5 check 8 boundary: 10,000 remembered pairs (one pair repeated: repeats are not checked) are accepted.",
        (&without_seen(&f.spent), &seen_unit, 10_000, &[]),
    );
    cases.add(
        "prekey_set_one_time_not_in_id_order",
        D,
        "13.5, after the table: the order of the one-time prekeys is not checked; a set listing ids 7 then 5 \
         loads, and is written back in increasing id order: not byte for byte.",
        &c(&|r| {
            r.one_time.push(storage::OneTimePreKeyRecord { id: r.next_id, secret: extra_secret.to_vec() });
            r.next_id += 1;
            r.one_time.reverse();
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_seen_pairs_not_checked",
        D,
        "13.5, after the table: a remembered pair naming no kept signed prekey (id 99), one repeated, and one with \
         a base key of small order (all zeros) load as they are.",
        &a(&|r| {
            let first = item(&mut r.seen_base_keys, 0)?.clone();
            r.seen_base_keys.push(first);
            r.seen_base_keys.push(storage::SeenBaseKey { signed_prekey_id: 99, base_key: vec![0; 32] });
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_dk_pke_not_checked",
        D,
        "13.5 check 7c: the ML-KEM secret's first part `dk_PKE` is not checked against `ek`: a set with its \
         first byte altered loads.",
        &b(&|r| {
            let secret = &mut item(&mut r.pq_one_time, 0)?.secret;
            *secret.first_mut().ok_or_else(|| err("input", "empty secret"))? ^= 1;
            Ok(())
        })?,
    );

    // One failing check each.
    cases.add_repeat(
        "prekey_set_too_large",
        D,
        "13.5 check 1: 1,565,537 bytes, one more than MAX_PREKEY_SET_LEN.",
        (&[], &[0], 1_565_537, &[]),
    );
    cases.add_repeat(
        "prekey_set_at_size_limit",
        D,
        "13.5 check 1 boundary: 1,565,536 zero bytes pass check 1 and fail check 2.",
        (&[], &[0], 1_565_536, &[]),
    );
    cases.add("prekey_set_empty", D, "13.5 check 3: an empty input parses as version 0.", &[]);
    cases.add(
        "prekey_set_version_2",
        D,
        "13.5 check 3: version 2.",
        &a(&|r| {
            r.version = 2;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_no_signed",
        D,
        "13.5 check 4: no signed prekey.",
        &a(&|r| {
            r.signed.clear();
            Ok(())
        })?,
    );
    cases.add("prekey_set_four_signed", D, "13.5 check 4: 4 signed prekeys (fresh ids).", &a(&more_signed(4))?);
    cases.add(
        "prekey_set_no_last_resort",
        D,
        "13.5 check 5: no last-resort prekey.",
        &a(&|r| {
            r.last_resort.clear();
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_four_last_resort",
        D,
        "13.5 check 5: 4 last-resort prekeys (fresh ids).",
        &a(&more_last_resort(4))?,
    );
    cases.add("prekey_set_201_one_time", D, "13.5 check 6: 201 one-time X25519 prekeys.", &c(&one_time(201))?);
    let pq_record = f.topped_up.pq_one_time.first().cloned().ok_or_else(|| err("input", "no pq key"))?;
    let pq_head = storage::PreKeySet {
        pq_one_time: Vec::new(),
        last_resort: Vec::new(),
        next_id: 0,
        seen_base_keys: Vec::new(),
        ..f.topped_up.clone()
    };
    let pq_tail = storage::PreKeySet {
        last_resort: f.topped_up.last_resort.clone(),
        next_id: f.topped_up.next_id,
        seen_base_keys: f.topped_up.seen_base_keys.clone(),
        ..Default::default()
    };
    cases.add_repeat(
        "prekey_set_201_pq_one_time",
        D,
        "13.5 check 6: 201 one-time ML-KEM prekeys (the real one 201 times: its id repeats, which check 7 would \
         refuse, but check 6 comes first).",
        (
            &pq_head.encode_to_vec(),
            &storage::PreKeySet { pq_one_time: vec![pq_record], ..Default::default() }.encode_to_vec(),
            201,
            &pq_tail.encode_to_vec(),
        ),
    );
    cases.add(
        "prekey_set_id_at_next_id",
        D,
        "13.5 check 7: next_id lowered to the largest id (an id must be below next_id).",
        &b(&|r| {
            r.next_id = max_id(r).ok_or_else(|| err("input", "no id"))?;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_one_time_id_of_signed",
        D,
        "13.5 check 7: a one-time X25519 prekey with the signed prekey's id (ids are unique across kinds).",
        &c(&|r| {
            item(&mut r.one_time, 0)?.id = signed_id;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_last_resort_id_of_pq_one_time",
        D,
        "13.5 check 7: the last-resort prekey with the one-time ML-KEM prekey's id.",
        &b(&|r| {
            item(&mut r.last_resort, 0)?.id = pq_id;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_signed_secret_31_bytes",
        D,
        "13.5 check 7a: a signed prekey's secret of 31 bytes.",
        &a(&|r| {
            item(&mut r.signed, 0)?.secret.truncate(31);
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_signed_signature_63_bytes",
        D,
        "13.5 check 7a: a signed prekey's signature of 63 bytes.",
        &a(&|r| {
            item(&mut r.signed, 0)?.signature.truncate(63);
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_one_time_secret_33_bytes",
        D,
        "13.5 check 7b: a one-time X25519 secret of 33 bytes.",
        &c(&|r| {
            item(&mut r.one_time, 0)?.secret.push(0);
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_pq_secret_3167_bytes",
        D,
        "13.5 check 7c: a one-time ML-KEM secret of 3,167 bytes.",
        &b(&|r| {
            item(&mut r.pq_one_time, 0)?.secret.truncate(3167);
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_last_resort_secret_3169_bytes",
        D,
        "13.5 check 7c: a last-resort ML-KEM secret of 3,169 bytes.",
        &a(&|r| {
            item(&mut r.last_resort, 0)?.secret.push(0);
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_pq_public_unreduced",
        D,
        "13.5 check 7c: a one-time ML-KEM public key whose first coefficient is 4,095 (not below q = 3,329): not a \
         valid encapsulation key (6.6).",
        &b(&|r| {
            let public = &mut item(&mut r.pq_one_time, 0)?.public_key;
            *public.first_mut().ok_or_else(|| err("input", "empty key"))? = 0xff;
            *public.get_mut(1).ok_or_else(|| err("input", "short key"))? |= 0x0f;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_last_resort_public_1567_bytes",
        D,
        "13.5 check 7c: a last-resort public key of 1,567 bytes (not a valid encapsulation key).",
        &a(&|r| {
            item(&mut r.last_resort, 0)?.public_key.truncate(1567);
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_pq_secret_ek_copy_differs",
        D,
        "13.5 check 7c: the copy of `ek` inside the secret (byte 1,536) differs from `public_key`.",
        &b(&|r| {
            let secret = &mut item(&mut r.pq_one_time, 0)?.secret;
            *secret.get_mut(1536).ok_or_else(|| err("input", "short secret"))? ^= 1;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_pq_secret_hash_differs",
        D,
        "13.5 check 7c: the FIPS 203 hash check fails (byte 3,104, the first of H(ek), altered).",
        &b(&|r| {
            let secret = &mut item(&mut r.pq_one_time, 0)?.secret;
            *secret.get_mut(3104).ok_or_else(|| err("input", "short secret"))? ^= 1;
            Ok(())
        })?,
    );
    cases.add(
        "prekey_set_last_resort_signature_empty",
        D,
        "13.5 check 7c: an empty last-resort signature.",
        &a(&|r| {
            item(&mut r.last_resort, 0)?.signature.clear();
            Ok(())
        })?,
    );
    cases.add_repeat(
        "prekey_set_10001_seen_base_keys",
        D,
        "13.5 check 8: 10,001 remembered pairs.",
        (&without_seen(&f.spent), &seen_unit, 10_001, &[]),
    );
    cases.add(
        "prekey_set_seen_base_key_31_bytes",
        D,
        "13.5 check 9: a remembered base key of 31 bytes.",
        &a(&|r| {
            item(&mut r.seen_base_keys, 0)?.base_key.truncate(31);
            Ok(())
        })?,
    );

    // Two failing checks: the first one's error.
    let order: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "prekey_set_order_3_before_4",
            "13.5 order: version 0 (omitted) and no signed prekey: check 3.",
            a(&|r| {
                r.version = 0;
                r.signed.clear();
                Ok(())
            })?,
        ),
        (
            "prekey_set_order_4_before_5",
            "13.5 order: neither signed nor last-resort prekeys: check 4.",
            a(&|r| {
                r.signed.clear();
                r.last_resort.clear();
                Ok(())
            })?,
        ),
        (
            "prekey_set_order_5_before_6",
            "13.5 order: no last-resort prekey and 201 one-time prekeys: check 5.",
            both_c(
                &|r| {
                    r.last_resort.clear();
                    Ok(())
                },
                &one_time(201),
            )?,
        ),
        (
            "prekey_set_order_id_before_keys",
            "13.5 order: a signed prekey with id 99 (not below next_id) and an empty secret: check 7 (an entry's id \
             before its keys).",
            a(&|r| {
                let key = item(&mut r.signed, 0)?;
                key.id = 99;
                key.secret.clear();
                Ok(())
            })?,
        ),
        (
            "prekey_set_order_signed_before_one_time",
            "13.5 order: an empty signed secret and a one-time prekey with id 99: 7a (signed entries first, an \
             entry's keys before the next entry's id).",
            both_c(
                &|r| {
                    item(&mut r.signed, 0)?.secret.clear();
                    Ok(())
                },
                &|r| {
                    item(&mut r.one_time, 0)?.id = 99;
                    Ok(())
                },
            )?,
        ),
        (
            "prekey_set_order_7a_secret_before_signature",
            "13.5 order: a signed prekey with an empty secret and an empty signature: 7a names the secret.",
            both_c(
                &|r| {
                    item(&mut r.signed, 0)?.secret.clear();
                    Ok(())
                },
                &|r| {
                    item(&mut r.signed, 0)?.signature.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "prekey_set_order_one_time_before_pq_one_time",
            "13.5 order: an empty one-time X25519 secret and a one-time ML-KEM prekey with id 99: 7b.",
            both_b(
                &|r| {
                    item(&mut r.one_time, 0)?.secret.clear();
                    Ok(())
                },
                &|r| {
                    item(&mut r.pq_one_time, 0)?.id = 99;
                    Ok(())
                },
            )?,
        ),
        (
            "prekey_set_order_pq_one_time_before_last_resort",
            "13.5 order: an empty one-time ML-KEM signature and an empty last-resort secret: the one-time ML-KEM \
             prekeys come before the last-resort ones.",
            both_b(
                &|r| {
                    item(&mut r.pq_one_time, 0)?.signature.clear();
                    Ok(())
                },
                &|r| {
                    item(&mut r.last_resort, 0)?.secret.clear();
                    Ok(())
                },
            )?,
        ),
        (
            "prekey_set_order_7c_secret_length_before_public",
            "13.5 order: an empty last-resort secret and an empty public key: 7c's secret length first.",
            a(&|r| {
                let key = item(&mut r.last_resort, 0)?;
                key.secret.clear();
                key.public_key.clear();
                Ok(())
            })?,
        ),
        (
            "prekey_set_order_7c_public_before_copy",
            "13.5 order: an invalid public key (1,567 bytes) whose copy in the secret also differs: mlkem.public.",
            a(&|r| {
                let key = item(&mut r.last_resort, 0)?;
                key.public_key.truncate(1567);
                *key.secret.get_mut(1536).ok_or_else(|| err("input", "short secret"))? ^= 1;
                Ok(())
            })?,
        ),
        (
            "prekey_set_order_7c_hash_before_signature",
            "13.5 order: a failing hash check and an empty signature: mlkem.secret.",
            a(&|r| {
                let key = item(&mut r.last_resort, 0)?;
                *key.secret.get_mut(3104).ok_or_else(|| err("input", "short secret"))? ^= 1;
                key.signature.clear();
                Ok(())
            })?,
        ),
    ];
    for (name, rule, input) in order {
        cases.add(name, D, rule, &input);
    }
    let broken_signature = storage::PreKeySet {
        last_resort: f
            .spent
            .last_resort
            .iter()
            .map(|k| storage::PqPreKeyRecord { signature: Vec::new(), ..k.clone() })
            .collect(),
        ..f.spent.clone()
    };
    cases.add_repeat(
        "prekey_set_order_7_before_8",
        D,
        "13.5 order: an empty last-resort signature and 10,001 remembered pairs: check 7.",
        (&without_seen(&broken_signature), &seen_unit, 10_001, &[]),
    );
    let short_first = storage::PreKeySet {
        seen_base_keys: vec![storage::SeenBaseKey { base_key: vec![0; 31], ..seen_entry }],
        ..f.spent.clone()
    };
    cases.add_repeat(
        "prekey_set_order_8_before_9",
        D,
        "13.5 order: 10,001 remembered pairs, the first with a base key of 31 bytes: check 8.",
        (&short_first.encode_to_vec(), &seen_unit, 10_000, &[]),
    );

    // Other encodings of the real set (check 2).
    let canonical: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "prekey_set_unknown_field",
            "13.5 check 2: an unknown field 8 (varint 1) after the last field.",
            [spent.clone(), vec![0x40, 0x01]].concat(),
        ),
        (
            "prekey_set_unknown_field_in_last_resort",
            "13.5 check 2: an unknown field 6 inside the last-resort prekey's record.",
            nested(&spent, &[5], &mut |r| {
                r.push(Raw::Varint(6, 1));
                Ok(())
            })?,
        ),
        (
            "prekey_set_version_given_twice",
            "13.5 check 2: the version written twice.",
            [vec![0x08, 0x01], spent.clone()].concat(),
        ),
        (
            "prekey_set_non_minimal_next_id",
            "13.5 check 2: `next_id` as a non-minimal varint.",
            nested(&spent, &[], &mut |r| replace_varint(r, 6, |v| non_minimal(6, v)))?,
        ),
        (
            "prekey_set_fields_out_of_order",
            "13.5 check 2: the remembered pairs (7) written before `next_id` (6).",
            nested(&spent, &[], &mut |r| move_before(r, 7, 6))?,
        ),
        (
            "prekey_set_created_at_0_written",
            "13.5 check 2: the signed prekey's `created_at = 0` written explicitly (a default value is omitted).",
            nested(&spent, &[2], &mut |r| {
                if r.iter().any(|x| x.field() == 4) {
                    return Err(err("input", "created_at is not 0"));
                }
                insert_sorted(r, Raw::Varint(4, 0));
                Ok(())
            })?,
        ),
        (
            "prekey_set_next_id_plus_2_pow_32",
            "13.5 check 2: `next_id` + 2^32, which a parser truncating to 32 bits reads as the real value.",
            nested(&spent, &[], &mut |r| replace_varint(r, 6, |v| Raw::Varint(6, v + (1 << 32))))?,
        ),
    ];
    for (name, rule, input) in canonical {
        cases.add(name, D, rule, &input);
    }
    Ok(())
}
