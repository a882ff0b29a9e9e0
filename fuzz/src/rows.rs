//! Checks of a whole store, as a device left it, against the limits of
//! `samizdat::limits` and the row invariants of PROTOCOL.md 14.7 and 20.3,
//! 20.4 (the outbox's rows, the record's healing bookkeeping).
//!
//! The store is read through [`Sealer`]: every row must open, parse, and
//! keep within the limits. A violation panics with what is wrong (a finding
//! for the fuzzer).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use samizdat::limits::{
    MAX_ARCHIVED_STATES, MAX_ASSOCIATED_DATA_LEN, MAX_AWAITED_RESENDS, MAX_DELIVERED_RESENDS, MAX_KEPT_PLAINTEXT_LEN,
    MAX_LAST_RESORT_PREKEYS, MAX_ONE_TIME_PREKEYS, MAX_OUTBOX_MESSAGES, MAX_RECEIVING_CHAINS, MAX_REMEMBERED_BASE_KEYS,
    MAX_RESEND_IDS, MAX_RESET_NAMINGS, MAX_SEEN_BASE_KEYS, MAX_SIGNED_PREKEYS, MAX_STORED_SKIPPED_KEYS,
    MAX_USED_COUNTERS,
};
use samizdat::{heal::MESSAGE_ID_LEN, session::MAX_RECORD_LEN, store::Table};
use samizdat_proto::storage;

use crate::seal::{OUTBOX_ENTRY_INFIX, ROW_KEY_LEN, SEEDS_SUFFIX, Sealer};

/// Every row of a store, as `MemoryBackend::snapshot` gives them.
pub type Rows = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// Bytes of one entry of a chain's `used` list (u32be counter, 8-byte tag).
const USED_ENTRY_LEN: usize = 12;

/// How many skipped keys a receiving chain holds: seeds inside, or counters
/// as ranges (`skipped_apart`: distance, length, ...).
fn chain_skipped(chain: &storage::ReceivingChain) -> usize {
    let apart: u64 = chain.skipped_apart.iter().skip(1).step_by(2).map(|&len| u64::from(len)).sum();
    chain.skipped.len() + usize::try_from(apart).unwrap_or(usize::MAX)
}

/// Checks one state's chains and returns its skipped keys and used counters.
fn check_chains(what: &str, chains: &[storage::ReceivingChain]) -> (usize, usize) {
    assert!(chains.len() <= MAX_RECEIVING_CHAINS, "{what}: {} receiving chains", chains.len());
    let mut used = 0;
    let mut skipped = 0;
    for chain in chains {
        assert!(chain.used.len() % USED_ENTRY_LEN == 0, "{what}: a used list of {} bytes", chain.used.len());
        used += chain.used.len() / USED_ENTRY_LEN;
        skipped += chain_skipped(chain);
    }
    assert!(used <= MAX_USED_COUNTERS, "{what}: {used} used counters");
    (skipped, used)
}

/// Checks a list of message ids: each 16 bytes, none twice, at most `max`.
fn check_ids(what: &str, ids: &[Vec<u8>], max: usize) {
    assert!(ids.len() <= max, "{what}: {} ids", ids.len());
    assert!(ids.iter().all(|id| id.len() == MESSAGE_ID_LEN), "{what}: an id that is not 16 bytes");
    assert!(ids.iter().collect::<BTreeSet<_>>().len() == ids.len(), "{what}: an id given twice");
}

/// Checks a record's healing bookkeeping (field 10, PROTOCOL.md 20.4):
/// what its loader checks, and that it is absent rather than empty.
fn check_healing(healing: &storage::Healing) {
    check_ids("healing.awaited", &healing.awaited, MAX_AWAITED_RESENDS);
    check_ids("healing.delivered", &healing.delivered, MAX_DELIVERED_RESENDS);
    assert_eq!(healing.namings.len(), healing.awaited.len(), "healing: a naming count per awaited id");
    assert!(healing.namings.iter().all(|&n| n <= MAX_RESET_NAMINGS), "healing: an id named too often");
    assert_eq!(healing.in_last_reset.len(), healing.awaited.len(), "healing: a flag per awaited id");
    assert!(
        healing.awaited.iter().all(|id| !healing.delivered.contains(id)),
        "healing: an id both awaited and delivered"
    );
    assert!(healing.reset_sent || healing.last_reset_at == 0, "healing: a reset time without a reset");
    let base_key_len = if healing.reset_sent { 32 } else { 0 };
    assert_eq!(healing.last_reset_base_key.len(), base_key_len, "healing: the last reset's base key");
    assert!(
        healing.reset_sent || !healing.awaited.is_empty() || !healing.delivered.is_empty(),
        "healing: written though there is nothing to remember"
    );
}

/// Checks an outbox index (PROTOCOL.md 20.3) and returns the ids it names.
fn check_outbox_index(index: &storage::OutboxIndex) -> BTreeSet<Vec<u8>> {
    assert_eq!(index.version, 1, "an outbox index's version");
    assert!(!index.entries.is_empty(), "an empty outbox index (it is deleted instead)");
    assert!(index.entries.len() <= MAX_OUTBOX_MESSAGES, "{} outbox entries", index.entries.len());
    let mut every = Vec::new();
    for slot in &index.entries {
        check_ids("outbox.resent_as", &slot.resent_as, MAX_RESEND_IDS);
        every.push(slot.id.clone());
        every.extend(slot.resent_as.iter().cloned());
    }
    // No id (or id of a resend) answers for two entries.
    check_ids("an outbox index", &every, usize::MAX);
    index.entries.iter().map(|slot| slot.id.clone()).collect()
}

/// Checks an outbox entry whose row key ends in `hash` and returns its id.
fn check_outbox_entry(entry: &storage::OutboxEntry, hash: &[u8], sealer: &Sealer) -> Vec<u8> {
    assert_eq!(entry.version, 1, "an outbox entry's version");
    assert_eq!(entry.id.len(), MESSAGE_ID_LEN, "an outbox entry's id");
    assert_eq!(sealer.outbox_id_hash(&entry.id).as_slice(), hash, "an outbox entry under another id's row");
    assert_eq!(entry.identity.len(), 32, "an outbox entry's identity");
    assert!(entry.plaintext.len() <= MAX_KEPT_PLAINTEXT_LEN, "a kept plaintext of {} bytes", entry.plaintext.len());
    entry.id.clone()
}

/// Checks a session record as a device stores it and returns how many skipped keys it holds.
fn check_record(record: &[u8]) -> usize {
    assert!(record.len() <= MAX_RECORD_LEN, "a session record of {} bytes", record.len());
    let record = storage::SessionRecord::decode(record).expect("a stored session record parses");
    assert!(record.seeds_apart, "a device's session row keeps its seeds apart");
    assert!(record.archived.len() <= MAX_ARCHIVED_STATES, "{} archived states", record.archived.len());
    assert!(record.seen_base_keys.len() <= MAX_SEEN_BASE_KEYS, "{} seen base keys", record.seen_base_keys.len());
    if let Some(healing) = &record.healing {
        check_healing(healing);
    }
    let mut skipped = 0;
    for state in record.current.iter().chain(record.archived.iter()) {
        match (&state.ratchet, &state.kept) {
            (Some(ratchet), None) => {
                assert!(ratchet.associated_data.len() <= MAX_ASSOCIATED_DATA_LEN, "associated data too long");
                skipped += check_chains("a full state", &ratchet.receiving).0;
                assert!(
                    ratchet.receiving.iter().all(|chain| chain.skipped.iter().all(|key| key.seed.is_empty())),
                    "a seed inside a session row"
                );
            }
            (None, Some(kept)) => skipped += check_chains("a kept state", &kept.receiving).0,
            _ => panic!("a state with both or neither of a ratchet and kept keys"),
        }
    }
    assert!(skipped <= MAX_STORED_SKIPPED_KEYS, "{skipped} skipped keys in one record");
    skipped
}

/// Checks every row of `rows` (a device's store under `sealer`'s key).
///
/// Rows of table `sessions` are told apart by their keys (a session row's
/// key is 32 bytes, 14.5): the session row, `key`; its seeds row,
/// `key || "/seeds"`; an outbox entry, `key || "/out/" || HMAC(outbox key,
/// id)`; a peer's outbox index is in table `outboxes` under `key` (20.3).
///
/// # Panics
/// On a row that does not open or parse, or breaks a limit or an invariant.
pub fn check_store(rows: &Rows, sealer: &Sealer) {
    let mut records = BTreeMap::new();
    let mut seeds = BTreeMap::new();
    let mut outboxes: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut kept: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut key_rows: BTreeMap<&'static str, BTreeSet<u32>> = BTreeMap::new();
    let mut base_keys = 0usize;
    let mut meta = None;
    for ((table, key), sealed) in rows {
        let plaintext =
            sealer.open(*table, key, sealed).unwrap_or_else(|| panic!("a row of table {} does not open", table.name()));
        match table {
            Table::Sessions if key.len() == ROW_KEY_LEN => {
                let row = storage::SessionRow::decode(plaintext.as_slice()).expect("a session row parses");
                assert_eq!(row.version, 1, "a session row's version");
                records.insert(key.clone(), check_record(&row.record));
            }
            Table::Sessions if key.ends_with(SEEDS_SUFFIX) && key.len() == ROW_KEY_LEN + SEEDS_SUFFIX.len() => {
                let parsed = storage::SkippedSeeds::decode(plaintext.as_slice()).expect("a seeds row parses");
                let count: usize = parsed.chains.iter().map(|chain| chain.keys.len()).sum();
                assert!(count <= MAX_STORED_SKIPPED_KEYS, "{count} seeds in a seeds row");
                seeds.insert(key[..ROW_KEY_LEN].to_vec(), count);
            }
            Table::Outboxes => {
                assert_eq!(key.len(), ROW_KEY_LEN, "an outbox index is keyed as its session row");
                let index = storage::OutboxIndex::decode(plaintext.as_slice()).expect("an outbox index parses");
                outboxes.insert(key.clone(), check_outbox_index(&index));
            }
            Table::Sessions
                if key.len() == 2 * ROW_KEY_LEN + OUTBOX_ENTRY_INFIX.len()
                    && key[ROW_KEY_LEN..].starts_with(OUTBOX_ENTRY_INFIX) =>
            {
                let entry = storage::OutboxEntry::decode(plaintext.as_slice()).expect("an outbox entry parses");
                let id = check_outbox_entry(&entry, &key[ROW_KEY_LEN + OUTBOX_ENTRY_INFIX.len()..], sealer);
                kept.entry(key[..ROW_KEY_LEN].to_vec()).or_default().insert(id);
            }
            Table::Sessions => panic!("a sessions row with a key of {} bytes", key.len()),
            Table::PreKeys => {
                let prefix = |p: &[u8]| key.strip_prefix(p).and_then(|id| <[u8; 4]>::try_from(id).ok());
                if key.as_slice() == b"meta" {
                    meta = Some(storage::PreKeyMeta::decode(plaintext.as_slice()).expect("the prekey index parses"));
                } else if key.starts_with(b"base-key/") {
                    base_keys += 1;
                } else if key.starts_with(b"ring/") {
                } else if let Some((kind, id)) = [
                    ("signed", prefix(b"signed/")),
                    ("one-time", prefix(b"one-time/")),
                    ("pq-one-time", prefix(b"pq-one-time/")),
                    ("last-resort", prefix(b"last-resort/")),
                ]
                .into_iter()
                .find_map(|(kind, id)| id.map(|id| (kind, u32::from_be_bytes(id))))
                {
                    key_rows.entry(kind).or_default().insert(id);
                } else {
                    panic!("an unknown prekeys row");
                }
            }
            Table::Meta | Table::Identity => {}
            _ => panic!("a row in an unknown table"),
        }
    }
    for (row, count) in &records {
        // Present exactly when the record holds a skipped key, with the seeds of all of them (14.7).
        match seeds.get(row) {
            Some(seeded) => assert_eq!(seeded, count, "a seeds row does not match its record's skipped keys"),
            None => assert_eq!(*count, 0, "a record with skipped keys and no seeds row"),
        }
    }
    assert!(seeds.keys().all(|row| records.contains_key(row)), "a seeds row without its session row");
    // The index and its entries are written together (20.3): every id it
    // names has its entry, and no entry is left that it does not name.
    assert!(outboxes.keys().all(|row| records.contains_key(row)), "an outbox index without its session row");
    for (row, ids) in &outboxes {
        let held = kept.get(row).cloned().unwrap_or_default();
        assert!(ids.is_subset(&held), "an outbox index names an entry that is not there");
        assert!(held.is_subset(ids), "an outbox entry its index does not name");
    }
    assert!(kept.keys().all(|row| outboxes.contains_key(row)), "outbox entries without their index");
    let meta = meta.expect("the prekey index");
    assert_eq!(meta.version, 1, "the prekey index's version");
    assert!((1..=MAX_SIGNED_PREKEYS).contains(&meta.signed.len()), "{} signed prekeys", meta.signed.len());
    assert!(
        (1..=MAX_LAST_RESORT_PREKEYS).contains(&meta.last_resort.len()),
        "{} last-resort prekeys",
        meta.last_resort.len()
    );
    assert!(meta.one_time.len() <= MAX_ONE_TIME_PREKEYS, "{} one-time prekeys", meta.one_time.len());
    assert!(meta.pq_one_time.len() <= MAX_ONE_TIME_PREKEYS, "{} one-time ML-KEM prekeys", meta.pq_one_time.len());
    assert!(base_keys <= MAX_REMEMBERED_BASE_KEYS, "{base_keys} remembered base keys");
    let listed = |ids: Vec<u32>| ids.into_iter().collect::<BTreeSet<u32>>();
    let held = |kind| key_rows.get(kind).cloned().unwrap_or_default();
    assert_eq!(held("signed"), listed(meta.signed.iter().map(|e| e.id).collect()), "signed prekey rows");
    assert_eq!(held("last-resort"), listed(meta.last_resort.iter().map(|e| e.id).collect()), "last-resort rows");
    assert_eq!(held("one-time"), listed(meta.one_time.clone()), "one-time prekey rows");
    assert_eq!(held("pq-one-time"), listed(meta.pq_one_time.clone()), "one-time ML-KEM prekey rows");
}
