//! The loaders' checks, one at a time, with the exact errors of PROTOCOL.md:
//! 13.3 (a stored ratchet state), 13.4 (a session record, and the seeds row
//! a device attaches to it), 13.5 (a prekey set), and the device's list of
//! refused headers (14.9).
//!
//! Each test starts from a record this implementation wrote (which loads),
//! breaks one documented check (or two, where the documented order decides
//! which error wins) in its protobuf form, and asserts the error. The public
//! loaders are used wherever there is one (`DoubleRatchet::from_bytes`,
//! `SessionRecord::from_bytes`, `PreKeySet::from_bytes`); the seeds row has
//! only the crate's own (`SessionRecord::from_hot_bytes`, `attach_seeds`).

use crate::store::StorageKey;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use chacha20::ChaCha20Rng;
use prost::Message as _;
use rand_core::SeedableRng;
use samizdat_proto::storage;

use crate::{
    DecodeError, DecryptError, SessionError,
    address::Address,
    device::{Device, DeviceError},
    keys::{IdentityKeyPair, X25519Secret},
    limits::{
        MAX_ARCHIVED_STATES, MAX_ONE_TIME_PREKEYS, MAX_RECEIVING_CHAINS, MAX_REMEMBERED_BASE_KEYS, MAX_SEEN_BASE_KEYS,
        MAX_STATE_LEN, MAX_STORED_SKIPPED_KEYS, MAX_USED_COUNTERS,
    },
    prekeys::{MAX_PREKEY_SET_LEN, PreKeySet},
    ratchet::{DoubleRatchet, RatchetInit},
    session::{MAX_RECORD_LEN, SessionRecord},
    store::MemoryBackend,
};

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// A used entry of a receiving chain: `u32be(counter) || tag`.
fn used_entry(counter: u32) -> Vec<u8> {
    let mut entry = counter.to_be_bytes().to_vec();
    entry.extend_from_slice(&[0xa5; 8]);
    entry
}

/// `n` skipped keys with 32-byte seeds, on counters from 0 up that are not
/// in `avoid`.
fn skipped_keys(n: usize, avoid: &[u32]) -> Vec<storage::SkippedKey> {
    (0u32..)
        .filter(|c| !avoid.contains(c))
        .take(n)
        .map(|counter| storage::SkippedKey { counter, seed: vec![0x5e; 32] })
        .collect()
}

/// The counters of a chain's used entries.
fn used_counters(chain: &storage::ReceivingChain) -> Vec<u32> {
    chain.used.chunks(12).map(|e| u32::from_be_bytes([e[0], e[1], e[2], e[3]])).collect()
}

// ---------------------------------------------------------------------------
// 13.3: ratchet states
// ---------------------------------------------------------------------------

/// Bob's state after: Alice sends 0 and 1, Bob receives 1; Bob replies,
/// Alice takes a DH step and sends 0 and 1 on her new chain; Bob receives 1.
/// Bob then holds two receiving chains (the first closed), each with one
/// skipped key (counter 0) and one used counter (1), and a sending chain.
fn ratchet_record() -> storage::RatchetState {
    let mut rng = rng(31);
    let ad = b"loader checks";
    let bob_key = X25519Secret::generate(&mut rng);
    let bob_public = bob_key.public_key();
    let init = || RatchetInit::new([1; 32], [2; 32], [3; 32], ad).unwrap();
    let mut alice = DoubleRatchet::new_initiator(&mut rng, init(), &bob_public).unwrap();
    let mut bob = DoubleRatchet::new_responder(init(), bob_key);
    let _ = alice.encrypt(&mut rng, b"a0").unwrap();
    let a1 = alice.encrypt(&mut rng, b"a1").unwrap();
    bob.decrypt(&mut rng, &a1).unwrap();
    let b0 = bob.encrypt(&mut rng, b"b0").unwrap();
    alice.decrypt(&mut rng, &b0).unwrap();
    let _ = alice.encrypt(&mut rng, b"c0").unwrap();
    let c1 = alice.encrypt(&mut rng, b"c1").unwrap();
    bob.decrypt(&mut rng, &c1).unwrap();
    let record = storage::RatchetState::decode(bob.to_bytes().as_slice()).unwrap();
    assert_eq!(record.receiving.len(), 2);
    for chain in &record.receiving {
        assert_eq!(chain.counter, 2);
        assert_eq!(chain.skipped.len(), 1);
        assert_eq!(used_counters(chain), [1]);
    }
    assert!(record.receiving[0].chain_key.is_empty());
    assert_eq!(record.receiving[1].chain_key.len(), 32);
    record
}

fn load_state(record: &storage::RatchetState) -> Result<DoubleRatchet, DecodeError> {
    DoubleRatchet::from_bytes(&encode(record))
}

/// The error of `record` edited by `edit`.
fn state_error(base: &storage::RatchetState, edit: impl FnOnce(&mut storage::RatchetState)) -> DecodeError {
    let mut record = base.clone();
    edit(&mut record);
    load_state(&record).map(|_| ()).unwrap_err()
}

fn state_loads(base: &storage::RatchetState, edit: impl FnOnce(&mut storage::RatchetState)) {
    let mut record = base.clone();
    edit(&mut record);
    load_state(&record).unwrap();
}

fn len32(field: &'static str, actual: usize) -> DecodeError {
    DecodeError::InvalidLength { field, expected: 32, actual }
}

fn sending(r: &mut storage::RatchetState) -> &mut storage::SendingChain {
    r.sending.as_mut().unwrap()
}

#[test]
fn ratchet_state_checks_1_to_9() {
    let base = ratchet_record();
    load_state(&base).unwrap();
    // 1: the size, before parsing; a state of exactly the limit is parsed.
    assert_eq!(
        DoubleRatchet::from_bytes(&vec![0; MAX_STATE_LEN + 1]).map(|_| ()).unwrap_err(),
        DecodeError::TooLarge { len: 1_048_577, max: 1_048_576 }
    );
    assert_eq!(DoubleRatchet::from_bytes(&vec![0; MAX_STATE_LEN]).map(|_| ()).unwrap_err(), DecodeError::Protobuf);
    // 2
    assert_eq!(DoubleRatchet::from_bytes(&[0x08]).map(|_| ()).unwrap_err(), DecodeError::Protobuf);
    // 3 (an empty input is version 0)
    assert_eq!(DoubleRatchet::from_bytes(&[]).map(|_| ()).unwrap_err(), DecodeError::UnsupportedVersion(0));
    assert_eq!(state_error(&base, |r| r.version = 2), DecodeError::UnsupportedVersion(2));
    // 4
    state_loads(&base, |r| r.associated_data = vec![7; 1024]);
    assert_eq!(state_error(&base, |r| r.associated_data = vec![7; 1025]), DecodeError::InvalidValue("associated_data"));
    // 5
    assert_eq!(state_error(&base, |r| r.sending = None), DecodeError::MissingField("sending"));
    // 6
    assert_eq!(state_error(&base, |r| sending(r).chain_key.clear()), DecodeError::InvalidValue("sending"));
    assert_eq!(state_error(&base, |r| sending(r).header_key.clear()), DecodeError::InvalidValue("sending"));
    // 7: the chain key, then the header key
    assert_eq!(state_error(&base, |r| sending(r).chain_key.truncate(31)), len32("sending.chain_key", 31));
    assert_eq!(state_error(&base, |r| sending(r).header_key.push(0)), len32("sending.header_key", 33));
    // 8, 8a (empty is allowed: the loader computes it), 9
    assert_eq!(state_error(&base, |r| sending(r).ratchet_secret.truncate(31)), len32("sending.ratchet_secret", 31));
    assert_eq!(state_error(&base, |r| sending(r).ratchet_public.push(0)), len32("sending.ratchet_public", 33));
    state_loads(&base, |r| sending(r).ratchet_public.clear());
    assert_eq!(state_error(&base, |r| sending(r).next_header_key.clear()), len32("sending.next_header_key", 0));
}

#[test]
fn ratchet_state_checks_10_and_11() {
    let base = ratchet_record();
    // 10 (closed copies of the first chain before the current one)
    let chains = |n: usize| {
        move |r: &mut storage::RatchetState| {
            let closed = r.receiving[0].clone();
            let current = r.receiving.pop().unwrap();
            r.receiving = vec![closed; n - 1];
            r.receiving.push(current);
        }
    };
    state_loads(&base, chains(MAX_RECEIVING_CHAINS));
    assert_eq!(state_error(&base, chains(MAX_RECEIVING_CHAINS + 1)), DecodeError::InvalidValue("receiving"));
    // 11a: only the last chain has a chain key
    assert_eq!(
        state_error(&base, |r| r.receiving[0].chain_key = vec![4; 32]),
        DecodeError::InvalidValue("receiving.chain_key")
    );
    // 11b
    assert_eq!(state_error(&base, |r| r.receiving[1].chain_key.truncate(31)), len32("receiving.chain_key", 31));
    // 11c: a running total over the chains, each below the limit alone
    let spread = |first: usize, second: usize| {
        move |r: &mut storage::RatchetState| {
            for (chain, n) in r.receiving.iter_mut().zip([first, second]) {
                chain.counter = 10_000;
                chain.skipped = skipped_keys(n, &used_counters(chain));
            }
        }
    };
    state_loads(&base, spread(1_000, MAX_STORED_SKIPPED_KEYS - 1_000));
    assert_eq!(
        state_error(&base, spread(1_000, MAX_STORED_SKIPPED_KEYS - 999)),
        DecodeError::InvalidValue("receiving.skipped")
    );
    // 11d: below the chain's counter, strictly increasing
    assert_eq!(
        state_error(&base, |r| r.receiving[0].skipped[0].counter = 2),
        DecodeError::InvalidValue("receiving.skipped.counter")
    );
    assert_eq!(
        state_error(&base, |r| {
            let key = r.receiving[0].skipped[0].clone();
            r.receiving[0].skipped.push(key);
        }),
        DecodeError::InvalidValue("receiving.skipped.counter")
    );
    // 11e
    assert_eq!(
        state_error(&base, |r| r.receiving[0].skipped[0].seed.truncate(31)),
        len32("receiving.skipped.seed", 31)
    );
    // 11f: whole entries, at most 128 over the chains
    assert_eq!(state_error(&base, |r| r.receiving[0].used.push(0)), DecodeError::InvalidValue("receiving.used"));
    let used = |n: u32| {
        move |r: &mut storage::RatchetState| {
            let chain = &mut r.receiving[1];
            chain.counter = 10_000;
            // Counters 1 to n (0 is the chain's skipped key).
            chain.used = (1..=n).flat_map(used_entry).collect();
        }
    };
    // The first chain has one used counter.
    state_loads(&base, used(u32::try_from(MAX_USED_COUNTERS).unwrap() - 1));
    assert_eq!(
        state_error(&base, used(u32::try_from(MAX_USED_COUNTERS).unwrap())),
        DecodeError::InvalidValue("receiving.used")
    );
    // 11g: below the chain's counter, not skipped, once
    for edit in [
        (|r: &mut storage::RatchetState| r.receiving[0].used = used_entry(2)) as fn(&mut storage::RatchetState),
        |r| r.receiving[0].used = used_entry(0),
        |r| r.receiving[0].used.extend(used_entry(1)),
    ] {
        assert_eq!(state_error(&base, edit), DecodeError::InvalidValue("receiving.used.counter"));
    }
    // 11h, 11i
    assert_eq!(state_error(&base, |r| r.receiving[0].ratchet_key.truncate(31)), len32("receiving.ratchet_key", 31));
    assert_eq!(state_error(&base, |r| r.receiving[0].header_key.truncate(31)), len32("receiving.header_key", 31));
}

/// The evicted counters of a receiving chain (PROTOCOL.md 13.1, check 11j):
/// well-formed ranges, below the chain's counter, neither skipped nor used,
/// at most `MAX_EVICTED_COUNTERS` over the state's chains. Chain 0 of the
/// base record has counter 2, counter 0 skipped and counter 1 used.
#[test]
fn evicted_counters_are_checked() {
    use crate::limits::MAX_EVICTED_COUNTERS;
    let base = ratchet_record();
    // Counters 2 to 4 of a chain that ends at 10.
    let evicted = |ranges: Vec<u32>| {
        move |r: &mut storage::RatchetState| {
            r.receiving[0].counter = 10;
            r.receiving[0].evicted = ranges;
        }
    };
    state_loads(&base, evicted(vec![2, 3]));
    let max = u32::try_from(MAX_EVICTED_COUNTERS).unwrap();
    state_loads(&base, |r| {
        r.receiving[0].counter = max + 2;
        r.receiving[0].evicted = vec![2, max];
    });
    assert_eq!(
        state_error(&base, |r| {
            r.receiving[0].counter = max + 3;
            r.receiving[0].evicted = vec![2, max + 1];
        }),
        DecodeError::InvalidValue("receiving.evicted")
    );
    for ranges in [vec![2], vec![2, 0], vec![2, 1, 0, 1], vec![u32::MAX, 2]] {
        assert_eq!(state_error(&base, evicted(ranges)), DecodeError::InvalidValue("receiving.evicted"));
    }
    // At or past the counter, skipped, used.
    for ranges in [vec![10, 1], vec![8, 3], vec![0, 1], vec![1, 1]] {
        assert_eq!(state_error(&base, evicted(ranges)), DecodeError::InvalidValue("receiving.evicted.counter"));
    }
}

#[test]
fn ratchet_state_checks_12_to_15() {
    let base = ratchet_record();
    // 12: the newest chain is the current one
    assert_eq!(
        state_error(&base, |r| r.receiving[1].chain_key.clear()),
        DecodeError::InvalidValue("receiving.chain_key")
    );
    // 13: receiving chains come with a sending chain
    let no_sending_chain = |r: &mut storage::RatchetState| {
        let s = sending(r);
        s.chain_key.clear();
        s.header_key.clear();
    };
    assert_eq!(state_error(&base, no_sending_chain), DecodeError::InvalidValue("sending"));
    // ... but a state without receiving chains may have none (a responder's first state).
    state_loads(&base, |r| {
        no_sending_chain(r);
        r.receiving.clear();
    });
    // 14, 15
    assert_eq!(state_error(&base, |r| r.root_key.truncate(31)), len32("root_key", 31));
    assert_eq!(state_error(&base, |r| r.next_receiving_header_key.push(0)), len32("next_receiving_header_key", 33));
}

/// Two checks fail; the documented order says which error is returned.
#[test]
fn ratchet_state_checks_are_made_in_order() {
    let base = ratchet_record();
    let both = |a: fn(&mut storage::RatchetState), b: fn(&mut storage::RatchetState)| {
        state_error(&base, |r| {
            a(r);
            b(r);
        })
    };
    // 3 before 4, 4 before 5
    assert_eq!(both(|r| r.version = 0, |r| r.associated_data = vec![0; 1025]), DecodeError::UnsupportedVersion(0));
    assert_eq!(
        both(|r| r.associated_data = vec![0; 1025], |r| r.sending = None),
        DecodeError::InvalidValue("associated_data")
    );
    // 6 before 7: a bad length on one side of a half-present chain
    assert_eq!(
        both(|r| sending(r).chain_key.truncate(31), |r| sending(r).header_key.clear()),
        DecodeError::InvalidValue("sending")
    );
    // 7: the chain key before the header key
    assert_eq!(
        both(|r| sending(r).chain_key.truncate(31), |r| sending(r).header_key.truncate(31)),
        len32("sending.chain_key", 31)
    );
    // 7 before 8, 8 before 8a, 8a before 9
    assert_eq!(
        both(|r| sending(r).header_key.truncate(31), |r| sending(r).ratchet_secret.clear()),
        len32("sending.header_key", 31)
    );
    assert_eq!(
        both(|r| sending(r).ratchet_secret.clear(), |r| sending(r).ratchet_public.truncate(1)),
        len32("sending.ratchet_secret", 0)
    );
    assert_eq!(
        both(|r| sending(r).ratchet_public.truncate(1), |r| sending(r).next_header_key.clear()),
        len32("sending.ratchet_public", 1)
    );
    // 9 before 10
    assert_eq!(
        both(|r| sending(r).next_header_key.clear(), |r| r.receiving = vec![r.receiving[0].clone(); 6]),
        len32("sending.next_header_key", 0)
    );
    // 10 before 11: six chains, the first with a chain key
    assert_eq!(both(|r| r.receiving = vec![r.receiving[1].clone(); 6], |_| ()), DecodeError::InvalidValue("receiving"));
    // 11, chain by chain: every check of the first chain before any of the second
    assert_eq!(
        both(|r| r.receiving[0].header_key.clear(), |r| r.receiving[1].chain_key.truncate(31)),
        len32("receiving.header_key", 0)
    );
    // 11a before 11b .. 11i on one chain
    assert_eq!(
        both(|r| r.receiving[0].chain_key = vec![1; 31], |r| r.receiving[0].ratchet_key.clear()),
        DecodeError::InvalidValue("receiving.chain_key")
    );
    // 11b before 11c
    assert_eq!(
        both(
            |r| r.receiving[1].chain_key.truncate(31),
            |r| {
                r.receiving[1].counter = 10_000;
                r.receiving[1].skipped = skipped_keys(2_001, &[1]);
            }
        ),
        len32("receiving.chain_key", 31)
    );
    // 11d and 11e key by key: a key bad in both ways fails 11d; a bad seed
    // before a bad counter in a later key fails 11e.
    assert_eq!(
        both(|r| r.receiving[0].skipped[0].counter = 9, |r| r.receiving[0].skipped[0].seed.clear()),
        DecodeError::InvalidValue("receiving.skipped.counter")
    );
    assert_eq!(
        both(
            |r| r.receiving[0].skipped[0].seed.clear(),
            |r| r.receiving[0].skipped.push(storage::SkippedKey { counter: 9, seed: vec![0; 32] })
        ),
        len32("receiving.skipped.seed", 0)
    );
    // 11e before 11f, 11f before 11g, 11g before 11h, 11h before 11i
    assert_eq!(
        both(|r| r.receiving[0].skipped[0].seed.clear(), |r| r.receiving[0].used.push(0)),
        len32("receiving.skipped.seed", 0)
    );
    assert_eq!(
        both(
            |r| {
                r.receiving[0].used = used_entry(5);
                r.receiving[0].used.push(0);
            },
            |_| ()
        ),
        DecodeError::InvalidValue("receiving.used")
    );
    assert_eq!(
        both(|r| r.receiving[0].used = used_entry(0), |r| r.receiving[0].ratchet_key.clear()),
        DecodeError::InvalidValue("receiving.used.counter")
    );
    assert_eq!(
        both(|r| r.receiving[0].ratchet_key.clear(), |r| r.receiving[0].header_key.clear()),
        len32("receiving.ratchet_key", 0)
    );
    // 11 (every chain) before 12, 12 before 13, 13 before 14, 14 before 15
    assert_eq!(
        both(|r| r.receiving[1].chain_key.clear(), |r| r.receiving[0].header_key.clear()),
        len32("receiving.header_key", 0)
    );
    assert_eq!(
        both(
            |r| r.receiving[1].chain_key.clear(),
            |r| {
                sending(r).chain_key.clear();
                sending(r).header_key.clear();
            }
        ),
        DecodeError::InvalidValue("receiving.chain_key")
    );
    assert_eq!(
        both(
            |r| {
                sending(r).chain_key.clear();
                sending(r).header_key.clear();
            },
            |r| r.root_key.clear()
        ),
        DecodeError::InvalidValue("sending")
    );
    assert_eq!(both(|r| r.root_key.clear(), |r| r.next_receiving_header_key.clear()), len32("root_key", 0));
}

// ---------------------------------------------------------------------------
// 13.4: session records
// ---------------------------------------------------------------------------

struct Party {
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    address: Address,
    record: SessionRecord,
}

impl Party {
    fn new(rng: &mut ChaCha20Rng, name: &str) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH);
        Self { identity, prekeys, address: Address::new(name, 1).unwrap(), record: SessionRecord::new() }
    }

    fn initiate(&mut self, rng: &mut ChaCha20Rng, peer: &Self) {
        let bundle = peer.prekeys.bundle(&peer.identity, &peer.address).unwrap();
        self.record.initiate(rng, &self.identity, &self.address, &bundle).unwrap();
    }

    fn send(&mut self, rng: &mut ChaCha20Rng, plaintext: &[u8]) -> Vec<u8> {
        self.record.encrypt(rng, plaintext).unwrap()
    }

    fn receive(&mut self, rng: &mut ChaCha20Rng, from: &Address, bytes: &[u8]) {
        let (_, consumed) =
            self.record.decrypt_and_commit(rng, &self.identity, &self.address, from, &self.prekeys, bytes).unwrap();
        self.prekeys.consume(&consumed);
    }
}

/// Bob's record: a current full state (Alice's second session, healed
/// twice) with a skipped key, and an archived kept state (her first
/// session, cut at the first heal) with one; two remembered base keys.
/// Also Alice's record right after her first initiation: a current state
/// with its pending prekey header and no receiving chain.
fn session_records() -> (storage::SessionRecord, storage::SessionRecord) {
    let mut rng = rng(134);
    let mut alice = Party::new(&mut rng, "alice");
    let mut bob = Party::new(&mut rng, "bob");
    let a = alice.address.clone();
    let b = bob.address.clone();
    alice.initiate(&mut rng, &bob);
    let first = alice.send(&mut rng, b"hello");
    let pending = storage::SessionRecord::decode(alice.record.to_bytes().as_slice()).unwrap();
    bob.receive(&mut rng, &a, &first);
    let _ = alice.send(&mut rng, b"skipped");
    let received = alice.send(&mut rng, b"received");
    bob.receive(&mut rng, &a, &received);
    alice.initiate(&mut rng, &bob);
    let second = alice.send(&mut rng, b"second session");
    bob.receive(&mut rng, &a, &second);
    for _ in 0..2 {
        let reply = bob.send(&mut rng, b"reply");
        alice.receive(&mut rng, &b, &reply);
        let _ = alice.send(&mut rng, b"skipped too");
        let answer = alice.send(&mut rng, b"answer");
        bob.receive(&mut rng, &a, &answer);
    }
    let record = storage::SessionRecord::decode(bob.record.to_bytes().as_slice()).unwrap();
    assert_eq!(record.archived.len(), 1);
    assert!(record.archived[0].kept.is_some());
    assert_eq!((record.heals, record.archived[0].kept_since), (2, 1));
    assert_eq!(record.seen_base_keys.len(), 2);
    assert!(!record.current.as_ref().unwrap().initiator);
    assert!(pending.current.as_ref().unwrap().pending_prekey.is_some());
    assert_eq!((pending.initiations, pending.current.as_ref().unwrap().initiated), (1, 1));
    (record, pending)
}

fn load_record(record: &storage::SessionRecord) -> Result<SessionRecord, DecodeError> {
    SessionRecord::from_bytes(&encode(record))
}

fn record_error(base: &storage::SessionRecord, edit: impl FnOnce(&mut storage::SessionRecord)) -> DecodeError {
    let mut record = base.clone();
    edit(&mut record);
    load_record(&record).map(|_| ()).unwrap_err()
}

fn record_loads(base: &storage::SessionRecord, edit: impl FnOnce(&mut storage::SessionRecord)) {
    let mut record = base.clone();
    edit(&mut record);
    load_record(&record).unwrap();
}

fn current(r: &mut storage::SessionRecord) -> &mut storage::SessionState {
    r.current.as_mut().unwrap()
}

fn kept(r: &mut storage::SessionRecord) -> &mut storage::SessionState {
    &mut r.archived[0]
}

fn kept_keys(r: &mut storage::SessionRecord) -> &mut storage::KeptKeys {
    kept(r).kept.as_mut().unwrap()
}

/// Gives the current state's newest chain as many skipped keys as make `n`
/// in the whole record (counter 10,000, so that they fit below it).
fn with_record_skipped(r: &mut storage::SessionRecord, n: usize) {
    let in_kept: usize = kept_keys(r).receiving.iter().map(|c| c.skipped.len()).sum();
    let chains = &mut current(r).ratchet.as_mut().unwrap().receiving;
    let others: usize = chains.iter().rev().skip(1).map(|c| c.skipped.len()).sum();
    let chain = chains.last_mut().unwrap();
    chain.counter = 10_000;
    chain.skipped = skipped_keys(n - in_kept - others, &used_counters(chain));
}

fn pending_header(r: &mut storage::SessionRecord) -> &mut storage::PendingPreKey {
    current(r).pending_prekey.as_mut().unwrap()
}

#[test]
fn session_record_checks_1_to_7() {
    let (base, _) = session_records();
    load_record(&base).unwrap();
    // 1
    assert_eq!(MAX_RECORD_LEN, 1_481_792);
    assert_eq!(
        SessionRecord::from_bytes(&vec![0; MAX_RECORD_LEN + 1]).map(|_| ()).unwrap_err(),
        DecodeError::TooLarge { len: 1_481_793, max: 1_481_792 }
    );
    assert_eq!(SessionRecord::from_bytes(&vec![0; MAX_RECORD_LEN]).map(|_| ()).unwrap_err(), DecodeError::Protobuf);
    // 2, 3
    assert_eq!(SessionRecord::from_bytes(&[0x08]).map(|_| ()).unwrap_err(), DecodeError::Protobuf);
    assert_eq!(SessionRecord::from_bytes(&[]).map(|_| ()).unwrap_err(), DecodeError::UnsupportedVersion(0));
    assert_eq!(record_error(&base, |r| r.version = 2), DecodeError::UnsupportedVersion(2));
    // 3a: the public loader expects the seeds in the record
    assert_eq!(record_error(&base, |r| r.seeds_apart = true), DecodeError::InvalidValue("seeds_apart"));
    // 4
    let archived = |n: usize| move |r: &mut storage::SessionRecord| r.archived = vec![r.archived[0].clone(); n];
    record_loads(&base, archived(MAX_ARCHIVED_STATES));
    assert_eq!(record_error(&base, archived(MAX_ARCHIVED_STATES + 1)), DecodeError::InvalidValue("archived"));
    // 5
    let seen = |n: usize| move |r: &mut storage::SessionRecord| r.seen_base_keys = vec![vec![9; 32]; n];
    record_loads(&base, seen(MAX_SEEN_BASE_KEYS));
    assert_eq!(record_error(&base, seen(MAX_SEEN_BASE_KEYS + 1)), DecodeError::InvalidValue("seen_base_keys"));
    // 6 (a record with neither is a trust decision alone)
    assert_eq!(record_error(&base, |r| r.current = None), DecodeError::InvalidValue("current"));
    record_loads(&base, |r| {
        r.current = None;
        r.archived.clear();
    });
    // 7
    assert_eq!(
        record_error(&base, |r| r.trusted_identity.truncate(31)),
        DecodeError::InvalidLength { field: "trusted_identity", expected: 32, actual: 31 }
    );
    record_loads(&base, |r| r.trusted_identity.clear());
}

#[test]
fn session_record_checks_8_to_11() {
    let (base, _) = session_records();
    // 8: the current state's checks
    assert_eq!(record_error(&base, |r| current(r).ratchet = None), DecodeError::MissingField("ratchet"));
    // 8a: full, not displaced
    assert_eq!(record_error(&base, |r| r.current = Some(r.archived[0].clone())), DecodeError::InvalidValue("current"));
    assert_eq!(record_error(&base, |r| current(r).displaced = true), DecodeError::InvalidValue("current"));
    // 9: each archived state's checks; a displaced full archived state is fine
    assert_eq!(
        record_error(&base, |r| kept(r).remote_identity.clear()),
        DecodeError::InvalidLength { field: "remote_identity", expected: 32, actual: 0 }
    );
    record_loads(&base, |r| {
        let mut displaced = r.current.clone().unwrap();
        displaced.displaced = true;
        r.archived.push(displaced);
    });
    // 9a
    record_loads(&base, |r| kept(r).kept_since = r.heals);
    assert_eq!(record_error(&base, |r| kept(r).kept_since = r.heals + 1), DecodeError::InvalidValue("kept_since"));
    // 9b (on a state we initiated, which S8 lets have a count)
    let initiated = |n: u64| {
        move |r: &mut storage::SessionRecord| {
            r.initiations = 3;
            kept(r).initiator = true;
            kept(r).initiated = n;
        }
    };
    record_loads(&base, initiated(3));
    assert_eq!(record_error(&base, initiated(4)), DecodeError::InvalidValue("initiated"));
    // 10
    assert_eq!(
        record_error(&base, |r| r.seen_base_keys[1].push(0)),
        DecodeError::InvalidLength { field: "seen_base_keys", expected: 32, actual: 33 }
    );
    // 11: over all states, each within its own limit
    record_loads(&base, |r| with_record_skipped(r, MAX_STORED_SKIPPED_KEYS));
    assert_eq!(
        record_error(&base, |r| with_record_skipped(r, MAX_STORED_SKIPPED_KEYS + 1)),
        DecodeError::InvalidValue("skipped")
    );
}

#[test]
fn session_state_checks_s1_to_s9() {
    let (base, pending) = session_records();
    load_record(&pending).unwrap();
    // S1
    assert_eq!(
        record_error(&base, |r| kept(r).ratchet = r.current.as_ref().unwrap().ratchet.clone()),
        DecodeError::InvalidValue("ratchet")
    );
    assert_eq!(record_error(&base, |r| kept(r).kept = None), DecodeError::MissingField("ratchet"));
    assert_eq!(record_error(&base, |r| current(r).kept_since = 1), DecodeError::InvalidValue("ratchet"));
    // S2: a full state's ratchet passes 13.3 (its checks 3 on) ...
    assert_eq!(
        record_error(&base, |r| current(r).ratchet.as_mut().unwrap().version = 0),
        DecodeError::UnsupportedVersion(0)
    );
    assert_eq!(
        record_error(&base, |r| current(r).ratchet.as_mut().unwrap().receiving.last_mut().unwrap().chain_key.clear()),
        DecodeError::InvalidValue("receiving.chain_key")
    );
    // ... and kept keys: their AD, their chains (none with a chain key), at least one key
    assert_eq!(
        record_error(&base, |r| kept_keys(r).associated_data = vec![0; 1025]),
        DecodeError::InvalidValue("kept.associated_data")
    );
    assert_eq!(
        record_error(&base, |r| kept_keys(r).receiving[0].chain_key = vec![0; 32]),
        DecodeError::InvalidValue("receiving.chain_key")
    );
    assert_eq!(
        record_error(&base, |r| kept_keys(r).receiving = vec![kept_keys(r).receiving[0].clone(); 6]),
        DecodeError::InvalidValue("receiving")
    );
    assert_eq!(
        record_error(&base, |r| kept_keys(r).receiving.iter_mut().for_each(|c| c.skipped.clear())),
        DecodeError::InvalidValue("kept")
    );
    // S3, S4
    assert_eq!(
        record_error(&base, |r| current(r).remote_identity.push(0)),
        DecodeError::InvalidLength { field: "remote_identity", expected: 32, actual: 33 }
    );
    assert_eq!(
        record_error(&base, |r| current(r).base_key.truncate(31)),
        DecodeError::InvalidLength { field: "base_key", expected: 32, actual: 31 }
    );
    // S5: only on our full initiation with no receiving chain
    let header = pending.current.as_ref().unwrap().pending_prekey.clone();
    assert_eq!(
        record_error(&base, |r| current(r).pending_prekey = header.clone()),
        DecodeError::InvalidValue("pending_prekey")
    );
    assert_eq!(
        record_error(&base, |r| {
            current(r).initiator = true;
            current(r).pending_prekey = header.clone();
        }),
        DecodeError::InvalidValue("pending_prekey")
    );
    assert_eq!(
        record_error(&base, |r| {
            kept(r).initiator = true;
            kept(r).pending_prekey = header.clone();
        }),
        DecodeError::InvalidValue("pending_prekey")
    );
    // S6, S7
    assert_eq!(
        record_error(&pending, |r| pending_header(r).identity_key.truncate(31)),
        DecodeError::InvalidLength { field: "pending_prekey.identity_key", expected: 32, actual: 31 }
    );
    assert_eq!(
        record_error(&pending, |r| pending_header(r).pq_ciphertext.truncate(1567)),
        DecodeError::InvalidLength { field: "pending_prekey.pq_ciphertext", expected: 1568, actual: 1567 }
    );
    // S8
    assert_eq!(
        record_error(&base, |r| {
            r.initiations = 1;
            current(r).initiated = 1;
        }),
        DecodeError::InvalidValue("initiated")
    );
    // S9: a displaced state is full, without a pending header
    assert_eq!(record_error(&base, |r| kept(r).displaced = true), DecodeError::InvalidValue("displaced"));
    assert_eq!(
        record_error(&pending, |r| {
            let mut state = r.current.clone().unwrap();
            state.displaced = true;
            r.archived.push(state);
        }),
        DecodeError::InvalidValue("displaced")
    );
    // S10: a state that came back is full (current or archived)
    record_loads(&base, |r| current(r).came_back = true);
    record_loads(&base, |r| {
        let mut back = r.current.clone().unwrap();
        back.came_back = true;
        r.archived.push(back);
    });
    assert_eq!(record_error(&base, |r| kept(r).came_back = true), DecodeError::InvalidValue("came_back"));
}

#[test]
fn session_record_checks_are_made_in_order() {
    let (base, pending) = session_records();
    let both = |a: &dyn Fn(&mut storage::SessionRecord), b: &dyn Fn(&mut storage::SessionRecord)| {
        record_error(&base, |r| {
            a(r);
            b(r);
        })
    };
    // 1 before 2 is check 1 itself; 3 before 3a, 3a before 4, 4 before 5,
    // 5 before 6, 6 before 7
    assert_eq!(both(&|r| r.version = 2, &|r| r.seeds_apart = true), DecodeError::UnsupportedVersion(2));
    assert_eq!(
        both(&|r| r.seeds_apart = true, &|r| r.archived = vec![r.archived[0].clone(); 11]),
        DecodeError::InvalidValue("seeds_apart")
    );
    assert_eq!(
        both(&|r| r.archived = vec![r.archived[0].clone(); 11], &|r| r.seen_base_keys = vec![vec![]; 1001]),
        DecodeError::InvalidValue("archived")
    );
    assert_eq!(
        both(&|r| r.seen_base_keys = vec![vec![]; 1001], &|r| r.current = None),
        DecodeError::InvalidValue("seen_base_keys")
    );
    assert_eq!(both(&|r| r.current = None, &|r| r.trusted_identity.clear()), DecodeError::InvalidValue("current"));
    assert_eq!(
        record_error(&base, |r| {
            r.current = None;
            r.trusted_identity.push(0);
        }),
        DecodeError::InvalidValue("current")
    );
    // 7 before 8
    assert_eq!(
        both(&|r| r.trusted_identity.push(0), &|r| current(r).ratchet = None),
        DecodeError::InvalidLength { field: "trusted_identity", expected: 32, actual: 33 }
    );
    // 8 (S1 to S9 of the current state) before 8a
    assert_eq!(
        both(&|r| r.current = Some(r.archived[0].clone()), &|r| current(r).base_key.clear()),
        DecodeError::InvalidLength { field: "base_key", expected: 32, actual: 0 }
    );
    // 8a before 9
    assert_eq!(
        both(&|r| current(r).displaced = true, &|r| kept(r).base_key.clear()),
        DecodeError::InvalidValue("current")
    );
    // S8 is made as the current state loads (check 8), so before any check
    // of an archived state (check 9): here "initiated" is not check 9b.
    assert_eq!(
        both(&|r| current(r).initiated = 1, &|r| kept(r).base_key.clear()),
        DecodeError::InvalidValue("initiated")
    );
    // 9 (every archived state) before 9a, 9a before 9b, 9b before 10, 10 before 11
    assert_eq!(
        both(&|r| kept(r).kept_since = 99, &|r| {
            let mut full = r.current.clone().unwrap();
            full.remote_identity.clear();
            r.archived.push(full);
        }),
        DecodeError::InvalidLength { field: "remote_identity", expected: 32, actual: 0 }
    );
    assert_eq!(
        both(&|r| kept(r).kept_since = 99, &|r| {
            kept(r).initiator = true;
            kept(r).initiated = 5;
        }),
        DecodeError::InvalidValue("kept_since")
    );
    assert_eq!(
        both(
            &|r| {
                kept(r).initiator = true;
                kept(r).initiated = 5;
            },
            &|r| r.seen_base_keys[0].clear()
        ),
        DecodeError::InvalidValue("initiated")
    );
    assert_eq!(
        both(&|r| r.seen_base_keys[0].clear(), &|r| with_record_skipped(r, MAX_STORED_SKIPPED_KEYS + 1)),
        DecodeError::InvalidLength { field: "seen_base_keys", expected: 32, actual: 0 }
    );
    // Within a state: S1 before S2 before S3 before S4 before S5 before S6
    // before S7, S5 before S8, S8 before S9.
    assert_eq!(
        both(&|r| kept(r).ratchet = r.current.as_ref().unwrap().ratchet.clone(), &|r| {
            kept(r).kept.as_mut().unwrap().associated_data = vec![0; 1025];
        }),
        DecodeError::InvalidValue("ratchet")
    );
    assert_eq!(
        both(&|r| kept(r).kept.as_mut().unwrap().associated_data = vec![0; 1025], &|r| {
            kept(r).kept.as_mut().unwrap().receiving[0].chain_key = vec![0; 32];
        }),
        DecodeError::InvalidValue("kept.associated_data")
    );
    assert_eq!(
        both(&|r| current(r).ratchet.as_mut().unwrap().root_key.clear(), &|r| current(r).remote_identity.clear()),
        DecodeError::InvalidLength { field: "root_key", expected: 32, actual: 0 }
    );
    assert_eq!(
        both(&|r| current(r).remote_identity.clear(), &|r| current(r).base_key.clear()),
        DecodeError::InvalidLength { field: "remote_identity", expected: 32, actual: 0 }
    );
    let header = pending.current.as_ref().unwrap().pending_prekey.clone();
    assert_eq!(
        both(&|r| current(r).base_key.clear(), &|r| current(r).pending_prekey = header.clone()),
        DecodeError::InvalidLength { field: "base_key", expected: 32, actual: 0 }
    );
    assert_eq!(
        both(&|r| current(r).pending_prekey = header.clone(), &|r| {
            pending_header(r).identity_key.clear();
            current(r).initiated = 1;
            current(r).displaced = true;
        }),
        DecodeError::InvalidValue("pending_prekey")
    );
    let on_pending = |edit: &dyn Fn(&mut storage::SessionRecord)| {
        record_error(&pending, |r| {
            edit(r);
        })
    };
    assert_eq!(
        on_pending(&|r| {
            pending_header(r).identity_key.clear();
            pending_header(r).pq_ciphertext.clear();
        }),
        DecodeError::InvalidLength { field: "pending_prekey.identity_key", expected: 32, actual: 0 }
    );
    assert_eq!(
        on_pending(&|r| {
            pending_header(r).pq_ciphertext.clear();
            current(r).displaced = true;
        }),
        DecodeError::InvalidLength { field: "pending_prekey.pq_ciphertext", expected: 1568, actual: 0 }
    );
    // S9 before 8a (a displaced current state with its pending header)
    assert_eq!(on_pending(&|r| current(r).displaced = true), DecodeError::InvalidValue("displaced"));
    assert_eq!(
        both(&|r| current(r).initiated = 1, &|r| current(r).displaced = true),
        DecodeError::InvalidValue("initiated")
    );
}

/// A device's session row holds the record without seeds (`seeds_apart`);
/// the seeds row gives them back, with the checks of 13.4.
#[test]
fn the_seeds_row_checks() {
    let (base, _) = session_records();
    let record = SessionRecord::from_bytes(&encode(&base)).unwrap();
    let hot = record.to_hot_bytes();
    let seeds = record.seeds_to_bytes().unwrap();
    let hot_record = storage::SessionRecord::decode(hot.as_slice()).unwrap();
    assert!(hot_record.seeds_apart);
    // The hot loader expects seeds apart, every seed empty.
    assert_eq!(
        SessionRecord::from_hot_bytes(&encode(&base)).map(|_| ()).unwrap_err(),
        DecodeError::InvalidValue("seeds_apart")
    );
    // Stored apart, the skipped keys are packed counters only: a `SkippedKey`
    // there is refused, and packed counters in a record with its seeds too.
    let chain = hot_record.archived[0].kept.as_ref().unwrap().receiving[0].clone();
    assert!(chain.skipped.is_empty() && !chain.skipped_apart.is_empty());
    let mut with_key = hot_record.clone();
    with_key.archived[0].kept.as_mut().unwrap().receiving[0]
        .skipped
        .push(storage::SkippedKey { counter: chain.skipped_apart[0], seed: Vec::new() });
    assert_eq!(
        SessionRecord::from_hot_bytes(&encode(&with_key)).map(|_| ()).unwrap_err(),
        DecodeError::InvalidValue("receiving.skipped")
    );
    let mut packed_in_whole = base.clone();
    packed_in_whole.archived[0].kept.as_mut().unwrap().receiving[0].skipped_apart.push(1);
    assert_eq!(
        SessionRecord::from_bytes(&encode(&packed_in_whole)).map(|_| ()).unwrap_err(),
        DecodeError::InvalidValue("receiving.skipped_apart")
    );
    let fresh = || {
        let loaded = SessionRecord::from_hot_bytes(&hot).unwrap();
        assert!(!loaded.has_all_seeds());
        loaded
    };
    let mut whole = fresh();
    whole.attach_seeds(&seeds).unwrap();
    assert_eq!(*whole.to_bytes(), *record.to_bytes());

    let attach = |bytes: &[u8]| fresh().attach_seeds(bytes).unwrap_err();
    let row = storage::SkippedSeeds::decode(seeds.as_slice()).unwrap();
    assert_eq!(row.chains.len(), 3, "two chains of the current state, one of the kept state");
    let edited = |edit: &dyn Fn(&mut storage::SkippedSeeds)| {
        let mut row = row.clone();
        edit(&mut row);
        attach(&encode(&row))
    };
    // 1, 2, 3
    assert_eq!(attach(&vec![0; 100_465]), DecodeError::TooLarge { len: 100_465, max: 100_464 });
    assert_eq!(attach(&vec![0; 100_464]), DecodeError::Protobuf);
    assert_eq!(attach(&[0x08]), DecodeError::Protobuf);
    assert_eq!(attach(&[]), DecodeError::UnsupportedVersion(0));
    assert_eq!(edited(&|r| r.version = 2), DecodeError::UnsupportedVersion(2));
    // 4
    assert_eq!(
        edited(&|r| r.chains[1].keys[0].seed.truncate(31)),
        DecodeError::InvalidLength { field: "seeds.seed", expected: 32, actual: 31 }
    );
    // 5
    assert_eq!(edited(&|r| r.chains.remove(0).keys.clear()), DecodeError::InvalidValue("seeds"));
    assert_eq!(edited(&|r| r.chains[0].keys[0].counter += 1), DecodeError::InvalidValue("seeds"));
    // 4 before 5
    assert_eq!(
        edited(&|r| {
            r.chains[0].keys.clear();
            r.chains[1].keys[0].seed.clear();
        }),
        DecodeError::InvalidLength { field: "seeds.seed", expected: 32, actual: 0 }
    );
    // Only the first entry of a chain is used: an empty one before it leaves
    // its keys without seeds.
    assert_eq!(
        edited(&|r| {
            let mut empty = r.chains[0].clone();
            empty.keys.clear();
            r.chains.insert(0, empty);
        }),
        DecodeError::InvalidValue("seeds")
    );
    // What check 4 does not use is not checked: an entry of no chain of the
    // record, a key the record does not hold, and their seeds.
    let mut extra = row.clone();
    extra.chains.push(storage::ChainSeeds { base_key: vec![1; 5], header_key: vec![], keys: vec![] });
    extra.chains[0].keys.push(storage::SkippedKey { counter: 4_000, seed: vec![] });
    let mut loaded = fresh();
    loaded.attach_seeds(&encode(&extra)).unwrap();
    assert!(loaded.has_all_seeds());
}

// ---------------------------------------------------------------------------
// 13.5: prekey sets
// ---------------------------------------------------------------------------

/// A set with a signed prekey (id 1), a last-resort one (2), two one-time
/// pairs (X25519 3 and 4, ML-KEM 5 and 6) and a remembered pair.
fn prekey_record() -> storage::PreKeySet {
    let mut rng = rng(135);
    let identity = IdentityKeyPair::generate(&mut rng);
    let mut set = PreKeySet::new(&mut rng, &identity, UNIX_EPOCH);
    set.add_one_time_prekeys(&mut rng, &identity, 2, UNIX_EPOCH).unwrap();
    let mut record = storage::PreKeySet::decode(set.to_bytes().as_slice()).unwrap();
    record.seen_base_keys.push(storage::SeenBaseKey { signed_prekey_id: 1, base_key: vec![9; 32] });
    assert_eq!(record.next_id, 7);
    assert_eq!(
        (record.signed.len(), record.last_resort.len(), record.one_time.len(), record.pq_one_time.len()),
        (1, 1, 2, 2)
    );
    record
}

fn load_set(record: &storage::PreKeySet) -> Result<PreKeySet, DecodeError> {
    PreKeySet::from_bytes(&encode(record))
}

fn set_error(base: &storage::PreKeySet, edit: impl FnOnce(&mut storage::PreKeySet)) -> DecodeError {
    let mut record = base.clone();
    edit(&mut record);
    load_set(&record).map(|_| ()).unwrap_err()
}

fn set_loads(base: &storage::PreKeySet, edit: impl FnOnce(&mut storage::PreKeySet)) {
    let mut record = base.clone();
    edit(&mut record);
    load_set(&record).unwrap();
}

/// Copies of `record` under fresh ids from `from` (and `next_id` past them).
fn more<T: Clone>(r: &mut u32, record: &T, n: usize, set_id: fn(&mut T, u32)) -> Vec<T> {
    (0..n)
        .map(|_| {
            let mut copy = record.clone();
            set_id(&mut copy, *r);
            *r += 1;
            copy
        })
        .collect()
}

#[test]
fn prekey_set_checks() {
    let base = prekey_record();
    load_set(&base).unwrap();
    // 1, 2, 3
    assert_eq!(MAX_PREKEY_SET_LEN, 1_565_536);
    assert_eq!(
        PreKeySet::from_bytes(&vec![0; MAX_PREKEY_SET_LEN + 1]).map(|_| ()).unwrap_err(),
        DecodeError::TooLarge { len: 1_565_537, max: 1_565_536 }
    );
    assert_eq!(PreKeySet::from_bytes(&[0x08]).map(|_| ()).unwrap_err(), DecodeError::Protobuf);
    assert_eq!(PreKeySet::from_bytes(&[]).map(|_| ()).unwrap_err(), DecodeError::UnsupportedVersion(0));
    assert_eq!(set_error(&base, |r| r.version = 2), DecodeError::UnsupportedVersion(2));
    // 4, 5: one to three of each
    assert_eq!(set_error(&base, |r| r.signed.clear()), DecodeError::InvalidValue("signed"));
    assert_eq!(
        set_error(&base, |r| {
            let mut next = r.next_id;
            r.signed.extend(more(&mut next, &r.signed[0].clone(), 3, |k, id| k.id = id));
            r.next_id = next;
        }),
        DecodeError::InvalidValue("signed")
    );
    set_loads(&base, |r| {
        let mut next = r.next_id;
        r.signed.extend(more(&mut next, &r.signed[0].clone(), 2, |k, id| k.id = id));
        r.last_resort.extend(more(&mut next, &r.last_resort[0].clone(), 2, |k, id| k.id = id));
        r.next_id = next;
    });
    assert_eq!(set_error(&base, |r| r.last_resort.clear()), DecodeError::InvalidValue("last_resort"));
    assert_eq!(
        set_error(&base, |r| r.last_resort = vec![r.last_resort[0].clone(); 4]),
        DecodeError::InvalidValue("last_resort")
    );
    // 6: at most 200 of each one-time kind
    let one_time = |n: usize| {
        move |r: &mut storage::PreKeySet| {
            let mut next = r.next_id;
            let extra = n - r.one_time.len();
            r.one_time.extend(more(&mut next, &r.one_time[0].clone(), extra, |k, id| k.id = id));
            r.next_id = next;
        }
    };
    set_loads(&base, one_time(MAX_ONE_TIME_PREKEYS));
    assert_eq!(set_error(&base, one_time(MAX_ONE_TIME_PREKEYS + 1)), DecodeError::InvalidValue("one_time"));
    assert_eq!(
        set_error(&base, |r| r.pq_one_time = vec![r.pq_one_time[0].clone(); MAX_ONE_TIME_PREKEYS + 1]),
        DecodeError::InvalidValue("one_time")
    );
    // 7: below next_id, distinct across kinds
    assert_eq!(set_error(&base, |r| r.next_id = 6), DecodeError::InvalidValue("id"));
    assert_eq!(set_error(&base, |r| r.one_time[0].id = 1), DecodeError::InvalidValue("id"));
    assert_eq!(set_error(&base, |r| r.last_resort[0].id = 5), DecodeError::InvalidValue("id"));
    // 7a, 7b
    let len =
        |field: &'static str, expected: usize, actual: usize| DecodeError::InvalidLength { field, expected, actual };
    assert_eq!(set_error(&base, |r| r.signed[0].secret.truncate(31)), len("signed.secret", 32, 31));
    assert_eq!(set_error(&base, |r| r.signed[0].signature.truncate(63)), len("signed.signature", 64, 63));
    assert_eq!(set_error(&base, |r| r.one_time[1].secret.push(0)), len("one_time.secret", 32, 33));
    // 7c, for a one-time ML-KEM prekey and a last-resort one
    assert_eq!(set_error(&base, |r| r.pq_one_time[0].secret.truncate(3167)), len("mlkem.secret", 3168, 3167));
    assert_eq!(set_error(&base, |r| r.last_resort[0].secret.push(0)), len("mlkem.secret", 3168, 3169));
    // A coefficient of 4095, not below q = 3329: not a valid encapsulation key.
    let unreduced = |r: &mut storage::PreKeySet| {
        let public = &mut r.pq_one_time[0].public_key;
        public[0] = 0xff;
        public[1] |= 0x0f;
    };
    assert_eq!(set_error(&base, unreduced), DecodeError::InvalidValue("mlkem.public"));
    assert_eq!(
        set_error(&base, |r| r.last_resort[0].public_key.pop().map(drop).unwrap()),
        DecodeError::InvalidValue("mlkem.public")
    );
    // The copy of ek inside the secret, then H(ek)
    assert_eq!(set_error(&base, |r| r.pq_one_time[1].secret[1536] ^= 1), DecodeError::InvalidValue("mlkem.secret"));
    assert_eq!(set_error(&base, |r| r.pq_one_time[1].secret[3104] ^= 1), DecodeError::InvalidValue("mlkem.secret"));
    // (dk_PKE is not checked)
    set_loads(&base, |r| r.pq_one_time[1].secret[0] ^= 1);
    assert_eq!(set_error(&base, |r| r.last_resort[0].signature.clear()), len("pq.signature", 64, 0));
    // 8, 9
    let seen = |n: usize| {
        move |r: &mut storage::PreKeySet| {
            r.seen_base_keys = vec![storage::SeenBaseKey { signed_prekey_id: 1, base_key: vec![9; 32] }; n];
        }
    };
    set_loads(&base, seen(MAX_REMEMBERED_BASE_KEYS));
    assert_eq!(set_error(&base, seen(MAX_REMEMBERED_BASE_KEYS + 1)), DecodeError::InvalidValue("seen_base_keys"));
    assert_eq!(set_error(&base, |r| r.seen_base_keys[0].base_key.truncate(31)), len("seen_base_keys.base_key", 32, 31));
}

#[test]
fn prekey_set_checks_are_made_in_order() {
    let base = prekey_record();
    let len =
        |field: &'static str, expected: usize, actual: usize| DecodeError::InvalidLength { field, expected, actual };
    let both = |a: &dyn Fn(&mut storage::PreKeySet), b: &dyn Fn(&mut storage::PreKeySet)| {
        set_error(&base, |r| {
            a(r);
            b(r);
        })
    };
    // 3 before 4, 4 before 5, 5 before 6, 6 before 7
    assert_eq!(both(&|r| r.version = 0, &|r| r.signed.clear()), DecodeError::UnsupportedVersion(0));
    assert_eq!(both(&|r| r.signed.clear(), &|r| r.last_resort.clear()), DecodeError::InvalidValue("signed"));
    assert_eq!(
        both(&|r| r.last_resort.clear(), &|r| r.one_time = vec![r.one_time[0].clone(); 201]),
        DecodeError::InvalidValue("last_resort")
    );
    assert_eq!(
        both(&|r| r.one_time = vec![r.one_time[0].clone(); 201], &|r| r.signed[0].id = 99),
        DecodeError::InvalidValue("one_time")
    );
    // 7 entry by entry, in the order signed, one_time, pq_one_time,
    // last_resort: an entry's id before its keys, its keys before the next
    // entry's id.
    assert_eq!(both(&|r| r.signed[0].id = 99, &|r| r.signed[0].secret.clear()), DecodeError::InvalidValue("id"));
    assert_eq!(both(&|r| r.signed[0].secret.clear(), &|r| r.one_time[0].id = 99), len("signed.secret", 32, 0));
    assert_eq!(both(&|r| r.signed[0].secret.clear(), &|r| r.signed[0].signature.clear()), len("signed.secret", 32, 0));
    assert_eq!(both(&|r| r.one_time[1].secret.clear(), &|r| r.pq_one_time[0].id = 99), len("one_time.secret", 32, 0));
    assert_eq!(
        both(&|r| r.pq_one_time[1].signature.clear(), &|r| r.last_resort[0].secret.clear()),
        len("pq.signature", 64, 0)
    );
    // 7c: the secret's length, then the public key, then the copy of ek,
    // then the signature
    assert_eq!(
        both(&|r| r.last_resort[0].secret.clear(), &|r| r.last_resort[0].public_key.clear()),
        len("mlkem.secret", 3168, 0)
    );
    assert_eq!(
        both(&|r| r.last_resort[0].public_key.clear(), &|r| r.last_resort[0].secret[1536] ^= 1),
        DecodeError::InvalidValue("mlkem.public")
    );
    assert_eq!(
        both(&|r| r.last_resort[0].secret[3104] ^= 1, &|r| r.last_resort[0].signature.clear()),
        DecodeError::InvalidValue("mlkem.secret")
    );
    // 7 (every entry) before 8, 8 before 9
    assert_eq!(
        both(&|r| r.last_resort[0].signature.clear(), &|r| {
            r.seen_base_keys = vec![r.seen_base_keys[0].clone(); MAX_REMEMBERED_BASE_KEYS + 1];
        }),
        len("pq.signature", 64, 0)
    );
    assert_eq!(
        both(&|r| r.seen_base_keys = vec![r.seen_base_keys[0].clone(); MAX_REMEMBERED_BASE_KEYS + 1], &|r| r
            .seen_base_keys[0]
            .base_key
            .clear()),
        DecodeError::InvalidValue("seen_base_keys")
    );
}

// ---------------------------------------------------------------------------
// 14.9: the device's refused headers
// ---------------------------------------------------------------------------

/// A far-ahead header that came with a broken body is remembered by the
/// device handle (`Refused`, 14.9): a broken copy of it is `Unauthenticated`
/// there even after the genuine message was committed, where a handle
/// without the entry (a fresh open of the same store) runs 9.5 and finds a
/// duplicate.
#[test]
fn a_refused_header_is_refused_by_the_handle_that_remembers_it() {
    let address = |name: &str| Address::new(name, 1).unwrap();
    let store = Arc::new(MemoryBackend::new());
    let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH)
        .unwrap();
    let bob = Device::create_in(store.clone(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let first = alice.encrypt(&address("bob"), b"first").unwrap();
    bob.commit(bob.decrypt(&address("alice"), &first).unwrap()).unwrap();
    let mut genuine = Vec::new();
    for i in 0..70 {
        genuine = alice.encrypt(&address("bob"), format!("m{i}").as_bytes()).unwrap();
    }
    let mut broken = genuine.clone();
    *broken.last_mut().unwrap() ^= 1;
    let kind = |result: Result<crate::device::PendingMessage, DeviceError>| match result {
        Err(DeviceError::Session(SessionError::Decrypt(error))) => error,
        other => panic!("{other:?}"),
    };
    // Counter 70, 69 keys skipped: costly, remembered.
    assert_eq!(kind(bob.decrypt(&address("alice"), &broken)), DecryptError::Unauthenticated);
    bob.commit(bob.decrypt(&address("alice"), &genuine).unwrap()).unwrap();
    assert_eq!(kind(bob.decrypt(&address("alice"), &broken)), DecryptError::Unauthenticated);
    let other_handle = Device::open_in(store, &StorageKey::from_bytes([2; 32])).unwrap();
    assert_eq!(kind(other_handle.decrypt(&address("alice"), &broken)), DecryptError::Duplicate { counter: 70 });
}
