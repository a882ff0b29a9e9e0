//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/<target>/`
//! (or the directory given as the first argument):
//!
//! - the encodings in `vectors/*.json`: wire messages and their envelope
//!   bodies, bundles (also in the re-signing layout of `decode_bundle`),
//!   ratchet states, the stored records of `records.json`, scannable
//!   safety-number codes;
//! - the sessions of `samizdat_fuzz::scenario` (messages in flight and
//!   replays for `decrypt`; Bob's state, record and prekeys for the stored
//!   records' targets);
//! - a real store: three devices converse, and Alice's rows (opened with
//!   the storage key) become `decode_store` inputs with calls that carry the
//!   messages in flight to her; a store of the previous prekey format too;
//! - a few event sequences for `interaction`;
//! - group messages (for `decode_group_message` and `decode_message`), and
//!   event sequences for `group_decrypt`.
//!
//! Each file is named by a hash of its content, as libFuzzer names them.
//! Run from `fuzz/`: `cargo run --example seed_corpus`, then minimise with
//! `cargo fuzz cmin -s none <target>`.

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
};

use prost::Message as _;
use samizdat::{
    address::Address,
    device::Device,
    session::SessionRecord,
    store::{MemoryBackend, Table},
};
use samizdat_fuzz::{
    input::Writer,
    scenario,
    seal::{SINGLE_ROW, Sealer},
    store_input::{
        Call, PEERS, STORAGE_KEY, Seal, write_base_key_row, write_raw_row, write_seeds_row, write_session_row,
    },
};
use samizdat_proto::{storage, wire as pb};
use serde_json::Value;

struct Corpus {
    root: PathBuf,
    written: usize,
}

impl Corpus {
    fn add(&mut self, target: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("a corpus directory");
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        std::fs::write(dir.join(format!("seed-{:016x}", hasher.finish())), bytes).expect("a corpus file");
        self.written += 1;
    }

    /// A wire message: to `decode_message`, and its envelope body to the
    /// target of its kind.
    fn message(&mut self, bytes: &[u8]) {
        self.add("decode_message", bytes);
        if let Some(envelope) = bytes.get(1..).and_then(|rest| pb::Envelope::decode(rest).ok()) {
            match envelope.body {
                Some(pb::envelope::Body::Ratchet(m)) => self.add("decode_ratchet_message", &m.encode_to_vec()),
                Some(pb::envelope::Body::Prekey(m)) => self.add("decode_prekey_message", &m.encode_to_vec()),
                Some(pb::envelope::Body::Group(m)) => {
                    self.add("decode_group_message", &[&[0], bytes].concat());
                    self.add("decode_group_message", &[&[1], m.encode_to_vec().as_slice()].concat());
                }
                None => {}
            }
        }
    }

    /// A bundle, raw and in the re-signing layout.
    fn bundle(&mut self, bytes: &[u8]) {
        self.add("decode_bundle", &[&[0], bytes].concat());
        if let Some(body) = bytes.get(1..) {
            self.add("decode_bundle", &Writer::new().u8(1).chunk(body).finish());
            // A canonical bundle with a tail that repeats its user id field: decodes alike, not canonical.
            self.add("decode_bundle", &Writer::new().u8(1).chunk(body).bytes(&[0x12, 0x03, b'b', b'o', b'b']).finish());
        }
    }
}

fn hex_field(value: &Value, key: &str) -> Option<Vec<u8>> {
    value.get(key)?.as_str().and_then(|s| hex::decode(s).ok())
}

fn load(vectors: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(vectors.join(name)).expect("a vectors file");
    serde_json::from_str(&text).expect("valid JSON")
}

fn cases(value: &Value) -> impl Iterator<Item = &Value> {
    value.get("cases").and_then(Value::as_array).into_iter().flatten()
}

fn from_vectors(corpus: &mut Corpus, vectors: &Path) {
    for case in cases(&load(vectors, "wire.json")) {
        let input = hex_field(case, "input").or_else(|| hex_field(case, "encoded"));
        let Some(input) = input else { continue };
        match case.get("decoder").and_then(Value::as_str) {
            Some("bundle") => corpus.bundle(&input),
            _ => corpus.message(&input),
        }
    }
    for case in cases(&load(vectors, "bundles.json")) {
        if let Some(bundle) = hex_field(case, "encoded") {
            corpus.bundle(&bundle);
        }
    }
    for case in cases(&load(vectors, "pqxdh.json")) {
        if let Some(first) = hex_field(case, "first_message") {
            corpus.message(&first);
        }
        if let Some(bundle) = hex_field(case, "bundle") {
            corpus.bundle(&bundle);
        }
    }
    for case in cases(&load(vectors, "ratchet_transcript.json")) {
        for state in ["alice_final_state", "bob_final_state"] {
            if let Some(bytes) = hex_field(case, state) {
                corpus.add("decode_ratchet_state", &bytes);
            }
        }
        let events = case.get("events").and_then(Value::as_array).into_iter().flatten();
        for event in events.step_by(7) {
            if let Some(wire) = hex_field(event, "wire") {
                corpus.message(&wire);
            }
        }
    }
    for case in cases(&load(vectors, "records.json")) {
        let target = match case.get("decoder").and_then(Value::as_str) {
            Some("ratchet_state") => "decode_ratchet_state",
            Some("session_record") => "decode_session_record",
            Some("prekey_set") => "decode_prekey_set",
            _ => continue,
        };
        if let Some(input) = hex_field(case, "input") {
            corpus.add(target, &input);
        }
    }
    for case in cases(&load(vectors, "safety_numbers.json")) {
        if let Some(code) = hex_field(case, "scannable") {
            for which in 0..4 {
                corpus.add("scan_safety_number", &[&[which], code.as_slice()].concat());
            }
        }
    }
}

fn from_scenarios(corpus: &mut Corpus) {
    let ratchet = scenario::ratchet();
    corpus.add("decode_ratchet_state", &ratchet.bob);
    for wire in ratchet.messages.in_flight.iter().chain(&ratchet.messages.replays) {
        corpus.add("decrypt", &[&[0], wire.as_slice()].concat());
        corpus.message(wire);
    }
    let record = scenario::record();
    corpus.add("decode_session_record", &record.bob_record);
    corpus.add("decode_prekey_set", &record.bob_prekeys);
    for wire in record.messages.in_flight.iter().chain(&record.messages.replays) {
        corpus.add("decrypt", &[&[1], wire.as_slice()].concat());
        corpus.message(wire);
    }
    // Bob's record once everything in flight arrived: archived states, skipped keys.
    let mut bob_record = SessionRecord::from_bytes(&record.bob_record).expect("Bob's record loads");
    let mut prekeys = samizdat::prekeys::PreKeySet::from_bytes(&record.bob_prekeys).expect("Bob's prekeys load");
    let bob_identity = samizdat::keys::IdentityKeyPair::from_seed(&record.bob_seed);
    let mut rng = samizdat::os_rng();
    for wire in &record.messages.in_flight {
        if let Ok((_, consumed)) =
            bob_record.decrypt_and_commit(&mut rng, &bob_identity, &scenario::bob(), &scenario::alice(), &prekeys, wire)
        {
            prekeys.consume(&consumed);
            corpus.add("decode_session_record", &bob_record.to_bytes());
        }
    }
    corpus.add("decode_prekey_set", &prekeys.to_bytes());
}

fn address(name: &str, device: u32) -> Address {
    Address::new(name, device).expect("a valid address")
}

/// Alice's store after a conversation, as `decode_store` rows.
fn store_rows(sealer: &Sealer, backend: &MemoryBackend) -> Writer {
    let rows = backend.snapshot();
    let mut writer = Writer::new();
    writer.u8(u8::try_from(rows.len()).expect("few rows"));
    let peers: Vec<(u8, Vec<u8>, Vec<u8>)> = (0..PEERS.len())
        .map(|i| {
            let peer = samizdat_fuzz::store_input::peer(u8::try_from(i).expect("few peers"));
            (u8::try_from(i).expect("few peers"), sealer.row_key(&peer), sealer.seeds_key(&peer))
        })
        .collect();
    for ((table, key), sealed) in &rows {
        let plaintext = sealer.open(*table, key, sealed).expect("the store's rows open");
        if let Some((i, _, _)) = peers.iter().find(|(_, row, _)| row == key) {
            let row = storage::SessionRow::decode(plaintext.as_slice()).expect("a session row");
            write_session_row(&mut writer, *i, &row.record);
        } else if let Some((i, _, _)) = peers.iter().find(|(_, _, seeds)| seeds == key) {
            write_seeds_row(&mut writer, *i, &plaintext);
        } else if let (Table::PreKeys, Some(_)) = (table, key.strip_prefix(b"base-key/")) {
            let pair = storage::SeenBaseKey::decode(plaintext.as_slice()).expect("a remembered pair");
            let base_key: [u8; 32] = pair.base_key.as_slice().try_into().expect("32 bytes");
            write_base_key_row(&mut writer, pair.signed_prekey_id, &base_key, &plaintext);
        } else {
            write_raw_row(&mut writer, *table, key, &plaintext, Seal::Padded);
        }
    }
    writer
}

fn from_store(corpus: &mut Corpus) {
    type Store = Arc<MemoryBackend>;
    let device = |name, id, key: &[u8; 32]| {
        let backend: Store = Arc::new(MemoryBackend::new());
        let device = Device::create_in(backend.clone(), &StorageKey::from_bytes(*key), address(name, id), UNIX_EPOCH)
            .expect("a new device");
        device.refill_prekeys(2, 2, UNIX_EPOCH).expect("prekeys");
        (backend, device)
    };
    let (alice_store, alice) = device("alice", 1, STORAGE_KEY.as_bytes());
    let (_, bob) = device("bob", 1, &[0x0b; 32]);
    let (_, carol) = device("carol", 2, &[0x0c; 32]);
    let receive = |to: &Device<Store>, from: &Address, wire: &[u8]| {
        let pending = to.decrypt(from, wire).expect("a message decrypts");
        to.commit(pending).expect("a commit");
    };
    bob.start_session(&alice.prekey_bundle().expect("a bundle")).expect("a session");
    let from_bob: Vec<Vec<u8>> = (0..6).map(|i| bob.encrypt(alice.address(), &[i; 20]).expect("bob sends")).collect();
    receive(&alice, bob.address(), &from_bob[0]);
    receive(&alice, bob.address(), &from_bob[3]);
    let reply = alice.encrypt(bob.address(), b"hi bob").expect("alice answers");
    receive(&bob, alice.address(), &reply);
    let later: Vec<Vec<u8>> = (0..2).map(|i| bob.encrypt(alice.address(), &[i; 30]).expect("bob sends")).collect();
    carol.start_session(&alice.prekey_bundle().expect("a bundle")).expect("a session");
    let from_carol = carol.encrypt(alice.address(), b"hi alice").expect("carol sends");
    let carol_bundle = carol.prekey_bundle().expect("a bundle");
    let sealer = Sealer::new(STORAGE_KEY.as_bytes());
    let rows = store_rows(&sealer, &alice_store);
    let (bob_index, carol_index) = (0u8, 1u8);
    let op = |call: Call| call.to_byte();
    let calls: Vec<Vec<u8>> = vec![
        Writer::new().u8(op(Call::Decrypt)).u8(bob_index).chunk(&from_bob[1]).u8(0).finish(),
        Writer::new().u8(op(Call::Decrypt)).u8(bob_index).chunk(&from_bob[5]).u8(1).finish(),
        Writer::new().u8(op(Call::Decrypt)).u8(bob_index).chunk(&later[1]).u8(0).finish(),
        Writer::new().u8(op(Call::Decrypt)).u8(bob_index).chunk(&from_bob[0]).u8(0).finish(),
        Writer::new().u8(op(Call::Decrypt)).u8(carol_index).chunk(&from_carol).u8(0).finish(),
        Writer::new()
            .u8(op(Call::Batch))
            .u8(3)
            .u8(bob_index)
            .chunk(&from_bob[2])
            .u8(carol_index)
            .chunk(&from_carol)
            .u8(bob_index)
            .chunk(&later[0])
            .finish(),
        Writer::new().u8(op(Call::Encrypt)).u8(bob_index).u8(40).finish(),
        Writer::new().u8(op(Call::StartSession)).chunk(&carol_bundle).finish(),
        Writer::new().u8(op(Call::Bundles)).u8(3).u8(op(Call::Counts)).finish(),
        Writer::new().u8(op(Call::Refill)).u8(3).u8(3).u16(10).u8(op(Call::Rotate)).u32(1_000_000).u32(10).finish(),
        Writer::new().u8(op(Call::Trust)).u8(bob_index).bytes(alice.identity_key().as_bytes()).finish(),
        Writer::new().u8(op(Call::HasSession)).u8(bob_index).u8(op(Call::PeerIdentity)).u8(carol_index).finish(),
        Writer::new().u8(op(Call::Reopen)).finish(),
    ];
    for call in &calls {
        corpus.add("decode_store", &[rows.finish(), call.clone()].concat());
    }
    corpus.add("decode_store", &[rows.finish(), calls.concat()].concat());
    // The previous prekey format: the whole set in one row, converted on open.
    let mut rng = samizdat::os_rng();
    let identity = samizdat::keys::IdentityKeyPair::from_seed(&[0x77; 32]);
    let mut set = samizdat::prekeys::PreKeySet::new(&mut rng, &identity, UNIX_EPOCH);
    set.add_one_time_prekeys(&mut rng, &identity, 2, UNIX_EPOCH).expect("room");
    let identity_row =
        storage::IdentityRow { version: 1, seed: vec![0x77; 32], user_id: "alice".to_owned(), device_id: 1 };
    let mut legacy = Writer::new();
    legacy.u8(3);
    write_raw_row(
        &mut legacy,
        Table::Meta,
        samizdat_fuzz::seal::KEY_CHECK_ROW,
        samizdat_fuzz::seal::KEY_CHECK_PLAINTEXT,
        Seal::Padded,
    );
    write_raw_row(&mut legacy, Table::Identity, SINGLE_ROW, &identity_row.encode_to_vec(), Seal::Unpadded);
    write_raw_row(&mut legacy, Table::PreKeys, SINGLE_ROW, &set.to_bytes(), Seal::Padded);
    corpus.add("decode_store", &[legacy.finish(), calls[4].clone(), calls[8].clone()].concat());
}

fn interaction(corpus: &mut Corpus) {
    // Events (see samizdat_fuzz::world): 12 start session, 0 send (extra
    // byte: top bit clear keeps the plaintext in the outbox), 2 deliver,
    // 4 deliver and keep, 5 replay, 7 tamper, 8 no commit, 9 snapshot,
    // 10 restore, 11 restart, 13 prekeys, 14 batch, 15 stale commit, 16 heal,
    // 18 acknowledge, 19 clock.
    let scripts: [&[u8]; 9] = [
        &[12, 0, 0, 0, 0, 0, 0, 0, 5, 2, 0, 2, 0, 0, 1, 0, 9, 2, 0, 0, 0, 2, 0],
        &[12, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 2, 0, 2, 0, 0, 1, 0, 1, 0, 0, 2, 0, 5, 0, 5, 1],
        &[12, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 1, 2, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0],
        &[12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 0, 2, 0, 10, 1, 0, 2, 0, 11, 1, 0, 0, 0, 0],
        &[12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 40, 0, 3, 0, 2, 1, 8, 0, 15, 0, 14, 1, 4, 13, 1, 3, 9],
        &[12, 2, 0, 0, 2, 0, 20, 0, 2, 0, 20, 2, 0, 12, 2, 200, 0, 2, 0, 20, 2, 0, 2, 0, 13, 0, 2, 1],
        // Bob's store goes back to when he had read Alice's first message;
        // her next (kept) message, two ratchet steps on, is out of step for
        // him; he heals, her commit of his reset sends it again and he reads
        // it; she acknowledges a message; time passes; he heals again.
        &[
            12, 0, 0, 0, 0, 0, 0, 0, 2, 0, 9, 1, 0, 1, 1, 0, 2, 0, 0, 0, 0, 0, 2, 0, 0, 1, 1, 0, 2, 0, 10, 1, 0, 0, 0,
            0, 0, 2, 0, 16, 1, 1, 2, 0, 2, 0, 18, 0, 19, 7, 16, 1, 1, 2, 0, 18, 1,
        ],
        // The same with some of Alice's messages not kept (top bit of the
        // extra byte): one of the two he names comes again, the other is
        // still awaited; a duplicate of the resend; Alice's store restored;
        // a heal too soon, then one after the interval.
        &[
            12, 0, 0, 0, 0, 0, 0, 0x81, 2, 0, 9, 1, 0, 1, 1, 0, 2, 0, 0, 0, 0, 0x82, 2, 0, 0, 1, 1, 0, 9, 0, 2, 0, 10,
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0x83, 3, 0, 2, 0, 16, 1, 1, 2, 0, 4, 0, 2, 0, 10, 0, 0, 16, 1, 1, 19, 5, 16, 1,
            1, 2, 0, 2, 0, 2, 0,
        ],
        // Bob's store restored to a copy that reads Alice's message X, after
        // a history where X was out of step, he named it and her resend of
        // it reached his (forgotten) next session: that resend is out of
        // step for the restored store, which names it; X is read as first
        // sent; his next reset names that resend's id again, and Alice
        // sends X once more, for the app (PROTOCOL.md 20.8; allowed for a
        // receiver restored since X was sent).
        &[
            12, 0, 0, 0, 0, 0, 0, 0, 2, 0, 9, 1, 0, 1, 1, 0, 2, 0, 0, 0, 0, 0, 2, 0, 0, 1, 1, 0, 2, 0, 0, 0, 0, 0, 9,
            1, 10, 1, 0, 4, 0, 16, 1, 1, 2, 1, 10, 1, 1, 2, 1, 19, 7, 16, 1, 1, 2, 0, 2, 0, 2, 0,
        ],
    ];
    for script in scripts {
        corpus.add("interaction", script);
    }
}

/// Group messages made by devices (any keys: the decoders check no
/// signature), and event scripts for `group_decrypt`.
fn groups(corpus: &mut Corpus) {
    let device = |name, key| {
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address(name, 1), UNIX_EPOCH)
            .expect("a device")
    };
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    alice.start_session(&bob.prekey_bundle().expect("a bundle")).expect("a session");
    for (group, text) in
        [(&b"g"[..], &b""[..]), (&[0x47; 64][..], &b"a longer message, in a group of the longest id"[..])]
    {
        alice.create_group(group, &[bob.address().clone()]).expect("a group");
        for _ in 0..2 {
            let sent = alice.group_encrypt(group, text).expect("a group message");
            corpus.message(&sent.message);
        }
    }
    // Events (see samizdat_fuzz::group): kind (0 genuine, 1 a byte altered,
    // 2 a field altered, 3 any bytes, 4 cut and extended), message, then
    // the kind's fields.
    let scripts: [&[u8]; 6] = [
        &[0, 1, 0, 3, 0, 8, 0, 9, 0, 10, 0, 11],
        &[0, 6, 0, 7, 0, 8, 0, 8],
        &[0, 9, 0, 10, 0, 9],
        &[1, 1, 40, 0, 1, 1, 7, 200, 0, 0x80, 0, 1],
        &[2, 3, 2, 5, 0, 0, 0, 2, 4, 1, 7, 0, 0, 0, 2, 1, 4, 3, 0, 2, 0, 1, 2, 0, 1, 0x40, 0, 0, 0, 1],
        &[3, 0, 0, 4, 0, 1, 2, 3, 4, 1, 1, 0, 0, 0, 4, 4, 30, 0, 0, 0, 0, 3],
    ];
    for script in scripts {
        corpus.add("group_decrypt", script);
    }
}

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| fuzz.join("corpus"));
    let mut corpus = Corpus { root, written: 0 };
    from_vectors(&mut corpus, &fuzz.join("../vectors"));
    from_scenarios(&mut corpus);
    from_store(&mut corpus);
    interaction(&mut corpus);
    groups(&mut corpus);
    eprintln!("seed_corpus: {} files under {}", corpus.written, corpus.root.display());
}
