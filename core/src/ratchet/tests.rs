//! Tests that need the ratchet's private state: a hostile peer that sets its
//! own counters and ratchet keys, eviction order, and `Debug` redaction.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::*;

fn pair(rng: &mut ChaCha20Rng) -> (DoubleRatchet, DoubleRatchet) {
    let mut secrets = [[0u8; 32]; 3];
    for s in &mut secrets {
        rng.fill_bytes(s);
    }
    let [rk, hka, hkb] = secrets;
    let bob_key = X25519Secret::generate(rng);
    let bob_public = bob_key.public_key();
    let alice = DoubleRatchet::new_initiator(rng, RatchetInit::new(rk, hka, hkb, b"ad").unwrap(), &bob_public).unwrap();
    let bob = DoubleRatchet::new_responder(RatchetInit::new(rk, hka, hkb, b"ad").unwrap(), bob_key);
    (alice, bob)
}

impl DoubleRatchet {
    /// A hostile sender's move: jump its own sending counter forward by
    /// `jump`, deriving the chain key as it goes (so the message is valid).
    fn hostile_jump(&mut self, jump: u32) {
        if let Some((ck, _)) = &mut self.sending.chain {
            for _ in 0..jump {
                *ck = ck.next().unwrap();
            }
        }
    }

    /// A hostile sender's move: a header that claims `counter` with a garbage body.
    fn hostile_header_only<R: CryptoRng>(&self, rng: &mut R, counter: u32, use_next_key: bool) -> RatchetMessage {
        let header = Header {
            ratchet_key: self.sending.ratchet_key.public_key(),
            previous_counter: self.sending.previous_counter,
            counter,
            left_answered: false,
        };
        let key = if use_next_key { &self.sending.next_header_key } else { &self.sending.chain.as_ref().unwrap().1 };
        RatchetMessage::new(key.seal(fresh_nonce(rng), header, &self.associated_data), vec![0; 80])
    }
}

/// 100,000 messages from a peer that picks its counters, its previous-chain
/// length and (whenever it may) fresh ratchet keys to make us store as many
/// keys as possible. The caps hold, the state stays small, and the session
/// still works afterwards.
#[test]
fn hostile_peer_cannot_exhaust_memory() {
    let mut rng = ChaCha20Rng::from_seed([42; 32]);
    let (mut attacker, mut victim) = pair(&mut rng);
    let (mut accepted, mut too_far, mut max_seen) = (0u32, 0u32, 0usize);
    for i in 0..100_000u32 {
        let roll = rng.next_u32() % 1000;
        if roll < 500 {
            // A counter anywhere in u32: almost always too far ahead, rejected before any derivation.
            let counter = rng.next_u32();
            // (Checking the whole state every time would dominate the test's run time.)
            let before = (i % 64 == 0).then(|| victim.to_bytes());
            let forged = attacker.hostile_header_only(&mut rng, counter, false);
            let result = victim.decrypt(&mut rng, &forged);
            assert!(result.is_err());
            if matches!(result, Err(DecryptError::TooFarAhead { .. })) {
                too_far += 1;
            }
            if let Some(before) = before {
                assert_eq!(*victim.to_bytes(), *before);
            }
            continue;
        }
        // A valid message after a jump: mostly small, sometimes near or past MAX_SKIP.
        let jump = if roll < 970 { rng.next_u32() % 8 } else { rng.next_u32() % (MAX_SKIP + 100) };
        attacker.hostile_jump(jump);
        if roll % 7 == 0 {
            // Lie about the previous chain's length (it only matters on a new chain).
            attacker.sending.previous_counter = rng.next_u32() % (MAX_SKIP + 100);
        }
        let message = attacker.encrypt(&mut rng, b"x").unwrap();
        match victim.decrypt(&mut rng, &message) {
            Ok(_) => accepted += 1,
            Err(DecryptError::TooFarAhead { gap, max }) => {
                assert!(gap > max);
                too_far += 1;
                // Resynchronise the attacker to what the victim accepts.
                let (fresh_attacker, fresh_victim) = pair(&mut rng);
                (attacker, victim) = (fresh_attacker, fresh_victim);
            }
            Err(e) => panic!("message {i}: unexpected {e:?}"),
        }
        // The victim replies now and then, letting the attacker take a fresh ratchet key.
        if roll % 10 == 0 && victim.can_send() {
            let reply = victim.encrypt(&mut rng, b"r").unwrap();
            attacker.decrypt(&mut rng, &reply).unwrap();
        }
        assert!(victim.stored_skipped_keys() <= MAX_STORED_SKIPPED_KEYS);
        assert!(victim.receiving_chains() <= MAX_RECEIVING_CHAINS);
        max_seen = max_seen.max(victim.stored_skipped_keys());
        if i % 5_000 == 0 {
            assert!(victim.to_bytes().len() < 1024 * 1024);
        }
    }
    let size = victim.to_bytes().len();
    assert!(size < 1024 * 1024, "{size}");
    assert_eq!(max_seen, MAX_STORED_SKIPPED_KEYS, "the attack should reach the cap");
    assert!(accepted > 10_000 && too_far > 10_000, "{accepted} {too_far}");
    // The victim's session still works both ways.
    let m = attacker.encrypt(&mut rng, b"still here").unwrap();
    assert_eq!(victim.decrypt(&mut rng, &m).unwrap(), b"still here");
    let r = victim.encrypt(&mut rng, b"ack").unwrap();
    assert_eq!(attacker.decrypt(&mut rng, &r).unwrap(), b"ack");
}

#[test]
fn a_full_state_stays_under_one_mebibyte() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    // Fill every chain slot and the skipped-key cap.
    for _ in 0..MAX_RECEIVING_CHAINS + 1 {
        alice.hostile_jump(MAX_SKIP);
        let m = alice.encrypt(&mut rng, b"").unwrap();
        bob.decrypt(&mut rng, &m).unwrap();
        let r = bob.encrypt(&mut rng, b"").unwrap();
        alice.decrypt(&mut rng, &r).unwrap();
    }
    assert_eq!(bob.stored_skipped_keys(), MAX_STORED_SKIPPED_KEYS);
    assert_eq!(bob.receiving_chains(), MAX_RECEIVING_CHAINS);
    let size = bob.to_bytes().len();
    assert!(size < 100 * 1024, "a full state is {size} bytes");
    let restored = DoubleRatchet::from_bytes(&bob.to_bytes()).unwrap();
    assert_eq!(*restored.to_bytes(), *bob.to_bytes());
}

#[test]
fn eviction_drops_the_oldest_keys_first() {
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let early: Vec<_> = (0..10).map(|_| alice.encrypt(&mut rng, b"early").unwrap()).collect();
    alice.hostile_jump(MAX_SKIP - 10);
    let m = alice.encrypt(&mut rng, b"far").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    assert_eq!(bob.stored_skipped_keys(), MAX_SKIP as usize);
    // 5 more skipped keys on a new chain evict counters 0..5 of the first chain.
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&mut rng, &r).unwrap();
    alice.hostile_jump(5);
    let m = alice.encrypt(&mut rng, b"next").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    assert_eq!(bob.stored_skipped_keys(), MAX_STORED_SKIPPED_KEYS);
    for (i, message) in early.iter().enumerate() {
        let result = bob.decrypt(&mut rng, message);
        if i < 5 {
            // Evicted: the header is authentic but the key is gone, and the
            // message never arrived before: not a duplicate.
            assert_eq!(result, Err(DecryptError::KeyEvicted { counter: i as u32 }));
        } else {
            assert_eq!(result.unwrap(), b"early");
        }
    }
}

#[test]
fn only_five_receiving_chains_are_kept() {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let mut late = Vec::new();
    for _ in 0..MAX_RECEIVING_CHAINS + 1 {
        let m = alice.encrypt(&mut rng, b"on time").unwrap();
        late.push(alice.encrypt(&mut rng, b"late").unwrap());
        bob.decrypt(&mut rng, &m).unwrap();
        let r = bob.encrypt(&mut rng, b"r").unwrap();
        alice.decrypt(&mut rng, &r).unwrap();
    }
    assert_eq!(bob.receiving_chains(), MAX_RECEIVING_CHAINS);
    // The first chain was dropped with its skipped key (and its header key:
    // no key of the state opens the header); the others still decrypt.
    assert_eq!(bob.decrypt(&mut rng, &late[0]), Err(DecryptError::NoMatchingState));
    for m in &late[1..] {
        assert_eq!(bob.decrypt(&mut rng, m).unwrap(), b"late");
    }
}

#[test]
fn header_past_a_closed_chain_or_with_a_wrong_ratchet_key_is_rejected() {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = alice.encrypt(&mut rng, b"a").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    let r = bob.encrypt(&mut rng, b"b").unwrap();
    // A header for the first chain past its end, made before Alice steps.
    let past_end = alice.hostile_header_only(&mut rng, 5, false);
    alice.decrypt(&mut rng, &r).unwrap();
    let m2 = alice.encrypt(&mut rng, b"c").unwrap();
    bob.decrypt(&mut rng, &m2).unwrap();
    let before = bob.to_bytes();
    // Authentic, but past the end the peer announced (PN) for that chain:
    // only a sender that went back to a chain it had left makes it.
    assert_eq!(bob.decrypt(&mut rng, &past_end), Err(DecryptError::Rollback { counter: 5 }));
    // A header under the current chain's key naming another ratchet key:
    // only the holder of the peer's state makes it (a sender that re-took a
    // DH step after a restore), so its state went backwards.
    let mut liar = DoubleRatchet::from_bytes(&alice.to_bytes()).unwrap();
    liar.sending.ratchet_key = X25519Secret::generate(&mut rng);
    let forged = liar.encrypt(&mut rng, b"d").unwrap();
    assert!(matches!(bob.decrypt(&mut rng, &forged), Err(DecryptError::Rollback { .. })));
    assert_eq!(*bob.to_bytes(), *before);
}

#[test]
fn small_order_ratchet_keys_are_rejected() {
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = alice.encrypt(&mut rng, b"a").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    // Alice's next chain announces an all-zero ratchet key under the right header key.
    let evil = Header {
        ratchet_key: X25519PublicKey::from_bytes([0; 32]),
        previous_counter: 1,
        counter: 0,
        left_answered: false,
    };
    let hk = &alice.sending.next_header_key;
    let message = RatchetMessage::new(hk.seal(fresh_nonce(&mut rng), evil, b"ad"), vec![0; 80]);
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&mut rng, &r).unwrap();
    let before = bob.to_bytes();
    assert_eq!(bob.decrypt(&mut rng, &message), Err(DecryptError::Unauthenticated));
    assert_eq!(*bob.to_bytes(), *before);
    let init = RatchetInit::new([1; 32], [2; 32], [3; 32], b"").unwrap();
    assert_eq!(
        DoubleRatchet::new_initiator(&mut rng, init, &X25519PublicKey::from_bytes([0; 32])).unwrap_err(),
        InitError::InvalidRatchetKey
    );
}

#[test]
fn associated_data_is_bounded_and_bound() {
    assert!(matches!(
        RatchetInit::new([0; 32], [0; 32], [0; 32], &[0; MAX_ASSOCIATED_DATA_LEN + 1]),
        Err(InitError::AssociatedDataTooLong { .. })
    ));
    let mut rng = ChaCha20Rng::from_seed([6; 32]);
    let bob_key = X25519Secret::generate(&mut rng);
    let public = bob_key.public_key();
    let mut alice =
        DoubleRatchet::new_initiator(&mut rng, RatchetInit::new([1; 32], [2; 32], [3; 32], b"ad1").unwrap(), &public)
            .unwrap();
    let mut bob = DoubleRatchet::new_responder(RatchetInit::new([1; 32], [2; 32], [3; 32], b"ad2").unwrap(), bob_key);
    let m = alice.encrypt(&mut rng, b"x").unwrap();
    // The header is sealed with the associated data: it opens under no key.
    assert_eq!(bob.decrypt(&mut rng, &m), Err(DecryptError::NoMatchingState));
}

#[test]
fn debug_output_has_no_secrets() {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = alice.encrypt(&mut rng, b"x").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    assert_eq!(
        format!("{bob:?}"),
        "DoubleRatchet { sending_counter: Some(0), previous_counter: 0, receiving_chains: \
         [ReceivingChain { next_counter: 1, current: true, skipped: 0, used: 1, evicted: 0, .. }], .. }"
    );
    let init = RatchetInit::new([1; 32], [2; 32], [3; 32], b"").unwrap();
    assert_eq!(format!("{init:?}"), "RatchetInit { .. }");
    assert_eq!(format!("{:?}", bob.root_key), "RootKey { .. }");
    assert_eq!(format!("{:?}", bob.sending.next_header_key), "HeaderKey { .. }");
    let (ck, _) = bob.sending.chain.as_ref().unwrap();
    assert_eq!(format!("{ck:?}"), "ChainKey { index: 0, .. }");
    assert_eq!(format!("{:?}", ck.message_key()), "MessageKey { counter: 0, .. }");
    assert_eq!(format!("{m:?}"), "RatchetMessage { body_len: 80, .. }");
}

#[test]
fn state_invariants_are_checked_on_load() {
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let _ = alice.encrypt(&mut rng, b"skipped").unwrap();
    let m = alice.encrypt(&mut rng, b"x").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    let good = bob.to_record();
    let check = |edit: &dyn Fn(&mut storage::RatchetState), expected: DecodeError| {
        let mut record = good.clone();
        edit(&mut record);
        let mut bytes = Vec::new();
        record.encode(&mut bytes).unwrap();
        assert_eq!(DoubleRatchet::from_bytes(&bytes).unwrap_err(), expected);
    };
    check(&|r| r.version = 2, DecodeError::UnsupportedVersion(2));
    check(&|r| r.sending = None, DecodeError::MissingField("sending"));
    check(
        &|r| r.root_key.pop().map(drop).unwrap_or(()),
        DecodeError::InvalidLength { field: "root_key", expected: 32, actual: 31 },
    );
    check(&|r| r.sending.as_mut().unwrap().header_key.clear(), DecodeError::InvalidValue("sending"));
    check(&|r| r.receiving[0].skipped[0].counter = 2, DecodeError::InvalidValue("receiving.skipped.counter"));
    check(
        &|r| {
            let extra = r.receiving[0].skipped[0].clone();
            r.receiving[0].skipped.push(extra);
        },
        DecodeError::InvalidValue("receiving.skipped.counter"),
    );
    check(
        &|r| {
            let chain = r.receiving[0].clone();
            r.receiving.insert(0, chain);
        },
        DecodeError::InvalidValue("receiving.chain_key"),
    );
    check(
        &|r| {
            let mut chain = r.receiving[0].clone();
            chain.chain_key.clear();
            r.receiving = vec![chain; MAX_RECEIVING_CHAINS + 1];
        },
        DecodeError::InvalidValue("receiving"),
    );
    check(
        &|r| {
            let key = r.receiving[0].skipped[0].clone();
            r.receiving[0].counter = u32::MAX;
            r.receiving[0].skipped = (0..=MAX_STORED_SKIPPED_KEYS as u32)
                .map(|c| storage::SkippedKey { counter: c, ..key.clone() })
                .collect();
        },
        DecodeError::InvalidValue("receiving.skipped"),
    );
    check(&|r| r.associated_data = vec![0; MAX_ASSOCIATED_DATA_LEN + 1], DecodeError::InvalidValue("associated_data"));
    check(
        &|r| r.sending.as_mut().unwrap().ratchet_public.push(0),
        DecodeError::InvalidLength { field: "sending.ratchet_public", expected: 32, actual: 33 },
    );
}

/// The public half of `DHs` is stored, so that a load costs no scalar
/// multiplication; a state written without it (before it existed) computes
/// it, and the two load to the same state.
#[test]
fn the_sending_public_key_is_stored_or_computed() {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = alice.encrypt(&mut rng, b"x").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    let record = bob.to_record();
    let sending = record.sending.as_ref().unwrap();
    let secret: [u8; 32] = sending.ratchet_secret.as_slice().try_into().unwrap();
    assert_eq!(sending.ratchet_public, X25519Secret::from_bytes(secret).public_key().as_bytes());
    let mut without = record.clone();
    without.sending.as_mut().unwrap().ratchet_public.clear();
    let mut bytes = Vec::new();
    without.encode(&mut bytes).unwrap();
    let mut loaded = DoubleRatchet::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.ratchet_public_key(), bob.ratchet_public_key());
    assert_eq!(loaded.to_bytes(), bob.to_bytes());
    // And it still talks: the reply's header carries the right key.
    let reply = loaded.encrypt(&mut rng, b"reply").unwrap();
    assert_eq!(alice.decrypt(&mut rng, &reply).unwrap(), b"reply");
}

/// The ranges of skipped counters stored apart (13.1): runs, the distance
/// between them, and the forms a loader refuses.
#[test]
fn skipped_counters_as_ranges() {
    assert_eq!(to_ranges([]), Vec::<u32>::new());
    assert_eq!(to_ranges(0..2_000), vec![0, 2_000]);
    assert_eq!(to_ranges([5, 6, 7, 10, 12, 13]), vec![5, 3, 2, 1, 1, 2]);
    let alternate: Vec<u32> = (0..2_000).step_by(2).collect();
    let ranges = to_ranges(alternate.iter().copied());
    assert_eq!(ranges.len(), 2_000);
    assert_eq!(ranges_len(&ranges, "receiving.skipped_apart").unwrap(), 1_000);
    assert_eq!(skipped_ranges(&ranges, "receiving.skipped_apart").unwrap().collect::<Vec<_>>(), alternate);
    let near_max = [u32::MAX - 3, u32::MAX - 2, u32::MAX - 1];
    assert_eq!(skipped_ranges(&to_ranges(near_max), "receiving.skipped_apart").unwrap().collect::<Vec<_>>(), near_max);
    let invalid = Err(DecodeError::InvalidValue("receiving.skipped_apart"));
    assert_eq!(ranges_len(&[1], "receiving.skipped_apart"), invalid);
    assert_eq!(ranges_len(&[1, 0], "receiving.skipped_apart"), invalid, "an empty run");
    assert_eq!(ranges_len(&[1, 2, 0, 3], "receiving.skipped_apart"), invalid, "two runs that touch are one");
    assert_eq!(ranges_len(&[u32::MAX, 2], "receiving.skipped_apart"), invalid, "past the last counter");
    assert_eq!(ranges_len(&[0, 1, 4, 2], "receiving.skipped_apart"), Ok(3));
}
