//! Conversations through the public Double Ratchet API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use samizdat::{
    DecodeError, DecryptError, EncryptError,
    limits::{MAX_PLAINTEXT_LEN, MAX_SKIP},
    ratchet::DoubleRatchet,
    wire::RatchetMessage,
};
use support::{pair, reload, rng};

fn text(i: usize, who: &str) -> Vec<u8> {
    format!("{who} message {i}: {}", "x".repeat(i % 97)).into_bytes()
}

/// Goes through the wire encoding, as a real transport would.
fn transmit(message: &RatchetMessage) -> RatchetMessage {
    RatchetMessage::from_bytes(&message.to_bytes()).unwrap()
}

#[test]
fn long_conversation_both_directions_with_reloads() {
    let mut rng = rng(1);
    let (mut alice, mut bob) = pair(&mut rng);
    for round in 0..200 {
        // Alice sends a burst, Bob reads it; then the other way round.
        let burst = 1 + round % 4;
        for i in 0..burst {
            let m = alice.encrypt(&mut rng, &text(round * 10 + i, "alice")).unwrap();
            assert_eq!(bob.decrypt(&mut rng, &transmit(&m)).unwrap(), text(round * 10 + i, "alice"));
        }
        for i in 0..(1 + round % 3) {
            let m = bob.encrypt(&mut rng, &text(round * 10 + i, "bob")).unwrap();
            assert_eq!(alice.decrypt(&mut rng, &transmit(&m)).unwrap(), text(round * 10 + i, "bob"));
        }
        if round % 17 == 0 {
            alice = reload(&alice);
        }
        if round % 23 == 5 {
            bob = reload(&bob);
        }
    }
    assert_eq!(alice.stored_skipped_keys(), 0);
    assert_eq!(bob.stored_skipped_keys(), 0);
}

#[test]
fn out_of_order_within_and_across_chains() {
    let mut rng = rng(2);
    let (mut alice, mut bob) = pair(&mut rng);
    let a: Vec<_> = (0..5).map(|i| alice.encrypt(&mut rng, &text(i, "a1")).unwrap()).collect();
    // Bob reads the last first, then one in the middle.
    assert_eq!(bob.decrypt(&mut rng, &a[4]).unwrap(), text(4, "a1"));
    assert_eq!(bob.stored_skipped_keys(), 4);
    assert_eq!(bob.decrypt(&mut rng, &a[2]).unwrap(), text(2, "a1"));
    // Bob replies; Alice answers on a new chain; Bob gets it before the old ones.
    let b = bob.encrypt(&mut rng, b"reply").unwrap();
    assert_eq!(alice.decrypt(&mut rng, &b).unwrap(), b"reply");
    let a2 = alice.encrypt(&mut rng, b"new chain").unwrap();
    let mut bob = reload(&bob);
    assert_eq!(bob.decrypt(&mut rng, &a2).unwrap(), b"new chain");
    assert_eq!(bob.receiving_chains(), 2);
    for i in [3, 0, 1] {
        assert_eq!(bob.decrypt(&mut rng, &a[i]).unwrap(), text(i, "a1"));
    }
    assert_eq!(bob.stored_skipped_keys(), 0);
}

#[test]
fn skipped_keys_from_previous_counter_survive_a_dh_step() {
    let mut rng = rng(3);
    let (mut alice, mut bob) = pair(&mut rng);
    let first = alice.encrypt(&mut rng, b"0").unwrap();
    bob.decrypt(&mut rng, &first).unwrap();
    // Alice sends three more on the same chain that are all delayed.
    let late: Vec<_> = (1..4).map(|i| alice.encrypt(&mut rng, &[i]).unwrap()).collect();
    let reply = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&mut rng, &reply).unwrap();
    // Alice's next message carries PN = 4: Bob skips 1..4 on the old chain.
    let next = alice.encrypt(&mut rng, b"next").unwrap();
    bob.decrypt(&mut rng, &next).unwrap();
    assert_eq!(bob.stored_skipped_keys(), 3);
    for (i, m) in late.iter().enumerate().rev() {
        assert_eq!(bob.decrypt(&mut rng, m).unwrap(), vec![i as u8 + 1]);
    }
}

#[test]
fn duplicates_are_reported_as_such() {
    let mut rng = rng(4);
    let (mut alice, mut bob) = pair(&mut rng);
    let m0 = alice.encrypt(&mut rng, b"zero").unwrap();
    let m1 = alice.encrypt(&mut rng, b"one").unwrap();
    bob.decrypt(&mut rng, &m1).unwrap();
    bob.decrypt(&mut rng, &m0).unwrap();
    let before = bob.to_bytes();
    assert_eq!(bob.decrypt(&mut rng, &m0), Err(DecryptError::Duplicate { counter: 0 }));
    assert_eq!(bob.decrypt(&mut rng, &m1), Err(DecryptError::Duplicate { counter: 1 }));
    assert_eq!(*bob.to_bytes(), *before);
    // Still a duplicate after a DH step in each direction.
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&mut rng, &r).unwrap();
    assert_eq!(alice.decrypt(&mut rng, &r), Err(DecryptError::Duplicate { counter: 0 }));
    let m2 = alice.encrypt(&mut rng, b"two").unwrap();
    bob.decrypt(&mut rng, &m2).unwrap();
    assert_eq!(bob.decrypt(&mut rng, &m0), Err(DecryptError::Duplicate { counter: 0 }));
    assert_eq!(bob.decrypt(&mut rng, &m2), Err(DecryptError::Duplicate { counter: 0 }));
}

#[test]
fn every_failed_decrypt_leaves_the_state_unchanged() {
    let mut rng = rng(5);
    let (mut alice, mut bob) = pair(&mut rng);
    let m0 = alice.encrypt(&mut rng, b"hello").unwrap();
    let m1 = alice.encrypt(&mut rng, b"world").unwrap();
    bob.decrypt(&mut rng, &m0).unwrap();
    let before = bob.to_bytes();

    // Every single-bit flip of the encoded message fails and changes nothing.
    let bytes = m1.to_bytes();
    for i in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[i / 8] ^= 1 << (i % 8);
        match RatchetMessage::from_bytes(&bad) {
            Err(_) => {}
            Ok(parsed) if parsed == m1 => {}
            Ok(parsed) => assert!(bob.decrypt(&mut rng, &parsed).is_err(), "bit {i} flip accepted"),
        }
        assert_eq!(*bob.to_bytes(), *before, "bit {i} flip changed the state");
    }
    // Truncations.
    for len in 0..bytes.len() {
        if let Ok(parsed) = RatchetMessage::from_bytes(&bytes[..len]) {
            assert!(bob.decrypt(&mut rng, &parsed).is_err());
        }
    }
    assert_eq!(*bob.to_bytes(), *before);
    // A message from another session (unknown header key).
    let (mut carol, _) = pair(&mut rng);
    let foreign = carol.encrypt(&mut rng, b"hi").unwrap();
    assert_eq!(bob.decrypt(&mut rng, &foreign), Err(DecryptError::NoMatchingState));
    assert_eq!(*bob.to_bytes(), *before);
    // The genuine message still decrypts.
    assert_eq!(bob.decrypt(&mut rng, &m1).unwrap(), b"world");
}

#[test]
fn wrong_version_is_a_typed_error() {
    let mut rng = rng(6);
    let (mut alice, _) = pair(&mut rng);
    let mut bytes = alice.encrypt(&mut rng, b"x").unwrap().to_bytes();
    bytes[0] = 0x02;
    assert_eq!(RatchetMessage::from_bytes(&bytes), Err(DecodeError::UnsupportedVersion(2)));
}

#[test]
fn gap_limit() {
    let mut rng = rng(7);
    let (mut alice, mut bob) = pair(&mut rng);
    let messages: Vec<_> = (0..=MAX_SKIP + 1).map(|_| alice.encrypt(&mut rng, b"").unwrap()).collect();
    let before = bob.to_bytes();
    let last = messages.last().unwrap();
    assert_eq!(bob.decrypt(&mut rng, last), Err(DecryptError::TooFarAhead { gap: MAX_SKIP + 1, max: MAX_SKIP }));
    assert_eq!(*bob.to_bytes(), *before);
    // Exactly MAX_SKIP ahead is accepted.
    bob.decrypt(&mut rng, &messages[MAX_SKIP as usize]).unwrap();
    assert_eq!(bob.stored_skipped_keys(), MAX_SKIP as usize);
    bob.decrypt(&mut rng, last).unwrap();
    bob.decrypt(&mut rng, &messages[0]).unwrap();
}

#[test]
fn responder_cannot_send_first_and_size_limit() {
    let mut rng = rng(8);
    let (mut alice, mut bob) = pair(&mut rng);
    assert!(!bob.can_send());
    assert_eq!(bob.encrypt(&mut rng, b"x").unwrap_err(), EncryptError::NoSendingChain);
    let before = alice.to_bytes();
    assert_eq!(
        alice.encrypt(&mut rng, &vec![0; MAX_PLAINTEXT_LEN + 1]).unwrap_err(),
        EncryptError::MessageTooLarge { len: MAX_PLAINTEXT_LEN + 1, max: MAX_PLAINTEXT_LEN }
    );
    assert_eq!(*alice.to_bytes(), *before);
    // The largest plaintext fits on the wire.
    let big = alice.encrypt(&mut rng, &vec![0xaa; MAX_PLAINTEXT_LEN]).unwrap();
    let bytes = big.to_bytes();
    assert!(bytes.len() <= samizdat::limits::MAX_MESSAGE_LEN);
    assert_eq!(bob.decrypt(&mut rng, &RatchetMessage::from_bytes(&bytes).unwrap()).unwrap().len(), MAX_PLAINTEXT_LEN);
}

#[test]
fn ciphertext_lengths_are_bucketed() {
    let mut rng = rng(9);
    let (mut alice, _) = pair(&mut rng);
    let lens: Vec<usize> =
        [0, 1, 30, 63].iter().map(|&n| alice.encrypt(&mut rng, &vec![1; n]).unwrap().body().len()).collect();
    assert!(lens.iter().all(|&l| l == 64 + 16), "{lens:?}");
    assert_eq!(alice.encrypt(&mut rng, &[1; 64]).unwrap().body().len(), 128 + 16);
}

#[test]
fn ping_pong_session_size() {
    let mut rng = rng(10);
    let (mut alice, mut bob) = pair(&mut rng);
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        let m = from.encrypt(&mut rng, b"ping").unwrap();
        to.decrypt(&mut rng, &m).unwrap();
    }
    let (a, b) = (alice.to_bytes().len(), bob.to_bytes().len());
    println!("serialized session after a 20-message ping-pong: alice {a} bytes, bob {b} bytes");
    // Five receiving chains of about 110 bytes, the sending chain and the root: well under 1 KiB.
    assert!(a < 1024 && b < 1024, "{a} {b}");
}

#[test]
fn corrupt_states_are_typed_errors() {
    let mut rng = rng(11);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = alice.encrypt(&mut rng, b"x").unwrap();
    let _ = alice.encrypt(&mut rng, b"skip").unwrap();
    let m2 = alice.encrypt(&mut rng, b"y").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    bob.decrypt(&mut rng, &m2).unwrap();
    let bytes = bob.to_bytes();
    for len in 0..bytes.len() {
        // A truncated state never panics; most prefixes are rejected.
        let _ = DoubleRatchet::from_bytes(&bytes[..len]);
    }
    for i in 0..bytes.len() * 8 {
        let mut bad = bytes.to_vec();
        bad[i / 8] ^= 1 << (i % 8);
        let _ = DoubleRatchet::from_bytes(&bad);
    }
    assert_eq!(DoubleRatchet::from_bytes(&[]).unwrap_err(), DecodeError::UnsupportedVersion(0));
    assert!(matches!(
        DoubleRatchet::from_bytes(&vec![0; samizdat::limits::MAX_STATE_LEN + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
}

/// The keystream of a body: what XORs the padded plaintext (0x80 then zeros
/// up to the 64-byte bucket for these short texts), first 64 bytes.
fn keystream(message: &RatchetMessage, plaintext: &[u8]) -> Vec<u8> {
    let mut padded = plaintext.to_vec();
    padded.push(0x80);
    padded.resize(64, 0);
    message.body()[..64].iter().zip(&padded).map(|(c, p)| c ^ p).collect()
}

/// Attack 3 of issue 11 at the ratchet level: a sender state restored from a
/// copy (a backup, a cloned store, a forked process) reaches the same counter
/// again. It must never encrypt two plaintexts under one key and nonce, and
/// the receiver must tell the rolled-back sender's message (an authentic
/// header whose counter was already used, with other content) from a replay.
#[test]
fn a_rolled_back_sender_never_reuses_a_key_and_the_receiver_reports_it() {
    let mut rng = rng(77);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = alice.encrypt(&mut rng, b"first").unwrap();
    bob.decrypt(&mut rng, &m).unwrap();
    let reply = bob.encrypt(&mut rng, b"reply").unwrap();
    alice.decrypt(&mut rng, &reply).unwrap();

    let copy = alice.to_bytes();
    let original = alice.encrypt(&mut rng, b"the original message").unwrap();
    let mut restored = DoubleRatchet::from_bytes(&copy).unwrap();
    let again = restored.encrypt(&mut rng, b"another message, same counter").unwrap();
    assert_ne!(
        keystream(&original, b"the original message"),
        keystream(&again, b"another message, same counter"),
        "two plaintexts under one key and nonce"
    );

    let before = bob.to_bytes();
    assert_eq!(bob.decrypt(&mut rng, &original).unwrap(), b"the original message");
    // The replay of what Bob decrypted is a duplicate; the rolled-back
    // sender's message on the same counter is reported as such.
    let after = bob.to_bytes();
    assert_eq!(bob.decrypt(&mut rng, &original), Err(DecryptError::Duplicate { counter: 0 }));
    assert_eq!(bob.decrypt(&mut rng, &again), Err(DecryptError::Rollback { counter: 0 }));
    assert_eq!(*bob.to_bytes(), *after, "a refused message changed the state");
    assert_ne!(*before, *after);

    // The restored sender goes on: its next messages decrypt.
    let next = restored.encrypt(&mut rng, b"next").unwrap();
    assert_eq!(bob.decrypt(&mut rng, &next).unwrap(), b"next");
}
