//! Sessions from PQXDH: bundles, handshakes, replays, identity changes,
//! simultaneous initiation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use chacha20::ChaCha20Rng;
use prost::Message as _;
use samizdat::{
    DecodeError, DecryptError, PreKeyKind, SessionError,
    address::Address,
    fingerprint::SafetyNumber,
    keys::{IdentityKeyPair, KeyError},
    prekeys::{BundleError, PqPreKeyKind, PreKeyBundle, PreKeySet},
    session::SessionRecord,
    wire::Message,
};
use samizdat_proto::wire as pb;
use std::time::{Duration, UNIX_EPOCH};
use support::rng;

struct Device {
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    address: Address,
}

impl Device {
    fn new(rng: &mut ChaCha20Rng, name: &str, one_time: usize) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH + Duration::from_secs(1_000));
        if one_time > 0 {
            prekeys.add_one_time_prekeys(rng, &identity, one_time, UNIX_EPOCH + Duration::from_secs(1_000)).unwrap();
        }
        Self { identity, prekeys, address: Address::new(name, 1).unwrap() }
    }

    /// The bundle as a server would serve it: encoded, then parsed and verified.
    fn bundle(&self) -> PreKeyBundle {
        PreKeyBundle::from_bytes(&self.prekeys.bundle(&self.identity, &self.address).unwrap().to_bytes()).unwrap()
    }

    /// Decrypts and commits, deleting consumed prekeys in the same step.
    fn receive(
        &mut self,
        rng: &mut ChaCha20Rng,
        record: &mut SessionRecord,
        from: &Address,
        wire: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let pending = record.decrypt(rng, &self.identity, &self.address, from, &self.prekeys, wire)?;
        let plaintext = pending.plaintext().to_vec();
        self.prekeys.consume(&pending.consumed_prekeys());
        record.commit(pending)?;
        Ok(plaintext)
    }
}

fn handshake(one_time: usize, use_last_resort: bool) {
    let mut rng = rng(100 + one_time as u64);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", one_time);
    if use_last_resort {
        assert_eq!(bob.prekeys.one_time_counts(), (0, 0));
    }
    let bundle = bob.bundle();
    assert_eq!(bundle.one_time_prekey_id().is_some(), one_time > 0);
    let expected_kind = if use_last_resort { PqPreKeyKind::LastResort } else { PqPreKeyKind::OneTime };
    assert_eq!(bundle.pq_prekey().1, expected_kind);

    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bundle).unwrap();
    let first = a.encrypt(&mut rng, b"hello bob").unwrap();
    assert!(matches!(Message::from_bytes(&first).unwrap(), Message::PreKey(_)));

    let mut b = SessionRecord::new();
    let pending = b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &first).unwrap();
    assert_eq!(pending.plaintext(), b"hello bob");
    assert!(pending.is_new_session());
    assert_eq!(pending.sender_identity(), alice.identity.public_key());
    let consumed = pending.consumed_prekeys();
    assert_eq!(consumed.one_time, bundle.one_time_prekey_id());
    assert_eq!(consumed.pq_one_time, (!use_last_resort).then_some(bundle.pq_prekey().0));
    bob.prekeys.consume(&consumed);
    b.commit(pending).unwrap();
    if one_time > 0 {
        assert_eq!(bob.prekeys.one_time_counts(), (one_time - 1, one_time - 1));
    }

    // Alice keeps sending prekey messages until Bob's reply arrives; Bob takes them as ordinary messages.
    let second = a.encrypt(&mut rng, b"still there?").unwrap();
    assert!(matches!(Message::from_bytes(&second).unwrap(), Message::PreKey(_)));
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &second).unwrap(), b"still there?");
    let reply = b.encrypt(&mut rng, b"hi alice").unwrap();
    assert!(matches!(Message::from_bytes(&reply).unwrap(), Message::Ratchet(_)));
    let mut alice = alice;
    assert_eq!(alice.receive(&mut rng, &mut a, &bob.address, &reply).unwrap(), b"hi alice");
    let third = a.encrypt(&mut rng, b"got it").unwrap();
    assert!(matches!(Message::from_bytes(&third).unwrap(), Message::Ratchet(_)));
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &third).unwrap(), b"got it");
    assert_eq!(a.current_base_key(), b.current_base_key());

    // Replays of the first message are duplicates, not new sessions.
    assert_eq!(
        bob.receive(&mut rng, &mut b, &alice.address, &first),
        Err(SessionError::Decrypt(DecryptError::Duplicate { counter: 0 }))
    );
    assert_eq!(b.archived_states(), 0);
}

#[test]
fn handshake_with_one_time_prekeys() {
    handshake(5, false);
}

#[test]
fn handshake_with_last_resort_pq_key_and_no_one_time_prekey() {
    handshake(0, true);
}

#[test]
fn handshake_with_pq_one_time_but_no_x25519_one_time_prekey() {
    let mut rng = rng(7);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 2);
    // Drop both X25519 one-time prekeys by consuming them.
    let (ids, _) = {
        let b1 = bob.prekeys.bundle_skipping(&bob.identity, &bob.address, 0).unwrap();
        let b2 = bob.prekeys.bundle_skipping(&bob.identity, &bob.address, 1).unwrap();
        (vec![b1.one_time_prekey_id().unwrap(), b2.one_time_prekey_id().unwrap()], ())
    };
    for id in ids {
        bob.prekeys.consume(&samizdat::prekeys::ConsumedPreKeys { one_time: Some(id), ..Default::default() });
    }
    let bundle = bob.bundle();
    assert_eq!(bundle.one_time_prekey_id(), None);
    assert_eq!(bundle.pq_prekey().1, PqPreKeyKind::OneTime);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bundle).unwrap();
    let first = a.encrypt(&mut rng, b"x").unwrap();
    let mut b = SessionRecord::new();
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &first).unwrap(), b"x");
}

#[test]
fn consumed_or_unknown_prekeys_are_typed_errors() {
    let mut rng = rng(8);
    let alice = Device::new(&mut rng, "alice", 0);
    let carol = Device::new(&mut rng, "carol", 0);
    let mut bob = Device::new(&mut rng, "bob", 1);
    let bundle = bob.bundle();
    let (opk, pq) = (bundle.one_time_prekey_id().unwrap(), bundle.pq_prekey().0);

    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bundle).unwrap();
    let from_alice = a.encrypt(&mut rng, b"a").unwrap();
    let mut c = SessionRecord::new();
    c.initiate(&mut rng, &carol.identity, &carol.address, &bundle).unwrap();
    let from_carol = c.encrypt(&mut rng, b"c").unwrap();

    // Alice's message is processed first and consumes both one-time keys.
    let mut b_alice = SessionRecord::new();
    bob.receive(&mut rng, &mut b_alice, &alice.address, &from_alice).unwrap();
    // Carol's message names the same, now consumed, one-time prekey.
    let mut b_carol = SessionRecord::new();
    let before = b_carol.to_bytes();
    assert_eq!(
        bob.receive(&mut rng, &mut b_carol, &carol.address, &from_carol),
        Err(SessionError::UnknownPreKey { kind: PreKeyKind::OneTime, id: opk })
    );
    assert_eq!(*b_carol.to_bytes(), *before);
    let _ = pq;

    // Signed prekey rotated away entirely.
    let mut dave = Device::new(&mut rng, "dave", 0);
    let bundle = dave.bundle();
    let mut a2 = SessionRecord::new();
    a2.initiate(&mut rng, &alice.identity, &alice.address, &bundle).unwrap();
    let msg = a2.encrypt(&mut rng, b"late").unwrap();
    for _ in 0..samizdat::limits::MAX_SIGNED_PREKEYS {
        let identity = IdentityKeyPair::from_seed(&dave.identity.to_seed());
        dave.prekeys.rotate_signed_prekey(&mut rng, &identity, UNIX_EPOCH + Duration::from_secs(2_000)).unwrap();
    }
    let mut d = SessionRecord::new();
    assert!(matches!(
        dave.receive(&mut rng, &mut d, &alice.address, &msg),
        Err(SessionError::UnknownPreKey { kind: PreKeyKind::Signed, .. })
    ));
}

#[test]
fn replayed_prekey_message_after_its_state_was_archived_away_is_a_duplicate() {
    let mut rng = rng(9);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 0);
    let mut b = SessionRecord::new();
    let mut firsts = Vec::new();
    // Alice starts 12 sessions with Bob's last-resort key; Bob keeps 1 + 10 states.
    for i in 0..12u8 {
        let mut a = SessionRecord::new();
        a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
        let m = a.encrypt(&mut rng, &[i]).unwrap();
        assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &m).unwrap(), vec![i]);
        firsts.push(m);
    }
    assert_eq!(b.archived_states(), samizdat::limits::MAX_ARCHIVED_STATES);
    let before = b.to_bytes();
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &firsts[0]), Err(SessionError::DuplicatePreKeyMessage));
    assert_eq!(
        bob.receive(&mut rng, &mut b, &alice.address, &firsts[11]),
        Err(SessionError::Decrypt(DecryptError::Duplicate { counter: 0 }))
    );
    assert_eq!(*b.to_bytes(), *before);
}

#[test]
fn a_first_message_relabelled_with_another_sender_address_does_not_decrypt() {
    let mut rng = rng(20);
    let alice = Device::new(&mut rng, "alice", 0);
    let carol = Device::new(&mut rng, "carol", 0);
    let bob = Device::new(&mut rng, "bob", 1);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let first = a.encrypt(&mut rng, b"from alice").unwrap();
    // The server claims the message comes from carol: the handshake binds
    // both addresses, so Bob derives other keys and the header opens under
    // no state (as for any prekey message whose keys are not Bob's).
    let b = SessionRecord::new();
    assert_eq!(
        b.decrypt(&mut rng, &bob.identity, &bob.address, &carol.address, &bob.prekeys, &first).unwrap_err(),
        SessionError::Decrypt(DecryptError::NoMatchingState)
    );
    // Or delivers it to another device of Bob's user: also refused.
    let other_bob_address = Address::new("bob", 2).unwrap();
    assert_eq!(
        b.decrypt(&mut rng, &bob.identity, &other_bob_address, &alice.address, &bob.prekeys, &first).unwrap_err(),
        SessionError::Decrypt(DecryptError::NoMatchingState)
    );
    assert!(b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &first).is_ok());
}

#[test]
fn a_replayed_first_message_without_one_time_prekey_is_a_duplicate_device_wide() {
    let mut rng = rng(21);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 0);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let first = a.encrypt(&mut rng, b"once").unwrap();
    let mut b = SessionRecord::new();
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &first).unwrap(), b"once");
    // The record is lost (or the state archived away): the prekey set still
    // remembers the base key, because nothing else was used up.
    let mut fresh = SessionRecord::new();
    let prekeys_before = bob.prekeys.to_bytes();
    assert_eq!(bob.receive(&mut rng, &mut fresh, &alice.address, &first), Err(SessionError::DuplicatePreKeyMessage));
    assert_eq!(*bob.prekeys.to_bytes(), *prekeys_before);
    // It survives serialization, and goes when the signed prekey is rotated away.
    let restored = PreKeySet::from_bytes(&bob.prekeys.to_bytes()).unwrap();
    assert_eq!(*restored.to_bytes(), *bob.prekeys.to_bytes());
    for _ in 0..samizdat::limits::MAX_SIGNED_PREKEYS {
        bob.prekeys.rotate_signed_prekey(&mut rng, &bob.identity, UNIX_EPOCH + Duration::from_secs(5_000)).unwrap();
    }
    assert!(matches!(
        bob.receive(&mut rng, &mut fresh, &alice.address, &first),
        Err(SessionError::UnknownPreKey { kind: PreKeyKind::Signed, .. })
    ));
}

#[test]
fn identity_change_needs_an_explicit_decision() {
    let mut rng = rng(10);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 0);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    assert_eq!(a.trusted_identity(), Some(bob.identity.public_key()));

    // Bob reinstalls: a new identity for the same address.
    let new_bob = Device::new(&mut rng, "bob", 0);
    let new_bundle = new_bob.bundle();
    let before = a.to_bytes();
    assert_eq!(
        a.initiate(&mut rng, &alice.identity, &alice.address, &new_bundle),
        Err(SessionError::UntrustedIdentity { identity: new_bob.identity.public_key() })
    );
    assert_eq!(*a.to_bytes(), *before);

    // A prekey message from an unexpected identity is refused as well.
    let mut b = SessionRecord::new();
    let m = a.encrypt(&mut rng, b"hi").unwrap();
    bob.receive(&mut rng, &mut b, &alice.address, &m).unwrap();
    let mut mallory_record = SessionRecord::new();
    let mallory = Device::new(&mut rng, "alice", 0);
    mallory_record.initiate(&mut rng, &mallory.identity, &mallory.address, &bob.bundle()).unwrap();
    let forged = mallory_record.encrypt(&mut rng, b"it's me").unwrap();
    assert_eq!(
        bob.receive(&mut rng, &mut b, &mallory.address, &forged),
        Err(SessionError::UntrustedIdentity { identity: mallory.identity.public_key() })
    );

    // After the app's decision the new identity works.
    a.trust_identity(new_bob.identity.public_key());
    assert!(!a.has_session());
    a.initiate(&mut rng, &alice.identity, &alice.address, &new_bundle).unwrap();
    assert!(a.has_session());
}

#[test]
fn stale_pending_and_uncommitted_decrypts() {
    let mut rng = rng(11);
    let alice = Device::new(&mut rng, "alice", 0);
    let bob = Device::new(&mut rng, "bob", 1);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let m1 = a.encrypt(&mut rng, b"one").unwrap();
    let m2 = a.encrypt(&mut rng, b"two").unwrap();
    let mut b = SessionRecord::new();
    // Not committed: the same message decrypts again, and nothing changed.
    let p = b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &m1).unwrap();
    drop(p);
    let p1 = b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &m1).unwrap();
    let p1_again = b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &m1).unwrap();
    b.commit(p1).unwrap();
    assert_eq!(b.commit(p1_again).unwrap_err(), SessionError::StalePending);
    let p2 = b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &m2).unwrap();
    assert_eq!(p2.plaintext(), b"two");
    assert!(!p2.is_new_session());
    b.commit(p2).unwrap();
}

#[test]
fn no_session_and_malformed() {
    let mut rng = rng(12);
    let bob = Device::new(&mut rng, "bob", 0);
    let mut b = SessionRecord::new();
    assert_eq!(b.encrypt(&mut rng, b"x").unwrap_err(), SessionError::NoSession);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let Message::PreKey(pk) = Message::from_bytes(&a.encrypt(&mut rng, b"x").unwrap()).unwrap() else { panic!() };
    let ratchet_only = Message::Ratchet(pk.message().clone()).to_bytes();
    assert_eq!(
        b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &ratchet_only).unwrap_err(),
        SessionError::NoSession
    );
    assert_eq!(
        b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &[]).unwrap_err(),
        SessionError::Malformed(DecodeError::Empty)
    );
}

#[test]
fn tampered_prekey_messages_fail_and_change_nothing() {
    let mut rng = rng(13);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 1);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let first = a.encrypt(&mut rng, b"hello").unwrap();
    let mut b = SessionRecord::new();
    let before = b.to_bytes();
    let prekeys_before = bob.prekeys.to_bytes();
    // Flip one bit in every 7th byte of the message (the ML-KEM ciphertext
    // alone is 1568 bytes); each must fail and change nothing.
    for i in (0..first.len()).step_by(7) {
        let mut bad = first.clone();
        bad[i] ^= 0x10;
        if let Ok(m @ Message::PreKey(_)) = Message::from_bytes(&bad)
            && m.to_bytes() == first
        {
            continue;
        }
        assert!(
            b.decrypt(&mut rng, &bob.identity, &bob.address, &alice.address, &bob.prekeys, &bad).is_err(),
            "flip at {i} accepted"
        );
    }
    assert_eq!(*b.to_bytes(), *before);
    assert_eq!(*bob.prekeys.to_bytes(), *prekeys_before);
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &first).unwrap(), b"hello");
}

#[test]
fn simultaneous_initiation_converges() {
    let mut rng = rng(14);
    let mut alice = Device::new(&mut rng, "alice", 2);
    let mut bob = Device::new(&mut rng, "bob", 2);
    let (mut a, mut b) = (SessionRecord::new(), SessionRecord::new());
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    b.initiate(&mut rng, &bob.identity, &bob.address, &alice.bundle()).unwrap();
    let from_a = a.encrypt(&mut rng, b"a0").unwrap();
    let from_b = b.encrypt(&mut rng, b"b0").unwrap();
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &from_a).unwrap(), b"a0");
    assert_eq!(alice.receive(&mut rng, &mut a, &bob.address, &from_b).unwrap(), b"b0");
    assert_ne!(a.current_base_key(), b.current_base_key());
    for i in 0..10 {
        let m = a.encrypt(&mut rng, format!("a{i}").as_bytes()).unwrap();
        assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &m).unwrap(), format!("a{i}").as_bytes());
        let m = b.encrypt(&mut rng, format!("b{i}").as_bytes()).unwrap();
        assert_eq!(alice.receive(&mut rng, &mut a, &bob.address, &m).unwrap(), format!("b{i}").as_bytes());
        if i >= 1 {
            assert_eq!(a.current_base_key(), b.current_base_key(), "not converged after {} exchanges", i + 1);
        }
    }
}

#[test]
fn records_serialize_exactly_and_sizes() {
    let mut rng = rng(15);
    let mut alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 1);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let first = a.encrypt(&mut rng, &[0x42; 64]).unwrap();
    println!("prekey message with a 64-byte plaintext: {} bytes", first.len());
    let mut b = SessionRecord::new();
    bob.receive(&mut rng, &mut b, &alice.address, &first).unwrap();
    let reply = b.encrypt(&mut rng, &[0x43; 64]).unwrap();
    alice.receive(&mut rng, &mut a, &bob.address, &reply).unwrap();
    let (sa, sb) = (a.to_bytes(), b.to_bytes());
    println!("session record after one round trip: initiator {} bytes, responder {} bytes", sa.len(), sb.len());
    for bytes in [&sa, &sb] {
        let restored = SessionRecord::from_bytes(bytes).unwrap();
        assert_eq!(*restored.to_bytes(), **bytes);
    }
    // The prekey set round-trips too.
    let restored = PreKeySet::from_bytes(&bob.prekeys.to_bytes()).unwrap();
    assert_eq!(*restored.to_bytes(), *bob.prekeys.to_bytes());
    // ML-KEM ciphertext (1568) + keys + header + padded body.
    assert!(first.len() > 1568 + 64 && first.len() < 2000, "{}", first.len());
    assert!(sa.len() < 1024 && sb.len() < 1024, "{} {}", sa.len(), sb.len());
    for len in 0..sa.len() {
        let _ = SessionRecord::from_bytes(&sa[..len]);
    }
}

#[test]
fn safety_numbers_match_on_both_sides() {
    let mut rng = rng(16);
    let alice = Device::new(&mut rng, "alice", 0);
    let bob = Device::new(&mut rng, "bob", 0);
    let on_a = SafetyNumber::new("alice", &alice.identity.public_key(), "bob", &bob.bundle().identity_key());
    let on_b = SafetyNumber::new("bob", &bob.identity.public_key(), "alice", &alice.identity.public_key());
    assert_eq!(on_a.digits(), on_b.digits());
    assert_eq!(on_a.compare_scanned(&on_b.scannable()), Ok(()));
}

// ---- Bundles: one test per field ----

fn bundle_proto(rng: &mut ChaCha20Rng) -> (Device, pb::PreKeyBundle) {
    let bob = Device::new(rng, "bob", 1);
    let bytes = bob.prekeys.bundle(&bob.identity, &bob.address).unwrap().to_bytes();
    let proto = pb::PreKeyBundle::decode(&bytes[1..]).unwrap();
    (bob, proto)
}

fn encode(proto: &pb::PreKeyBundle) -> Vec<u8> {
    let mut out = vec![1u8];
    proto.encode(&mut out).unwrap();
    out
}

fn reject(edit: impl Fn(&mut pb::PreKeyBundle)) -> BundleError {
    let mut rng = rng(17);
    let (_, mut proto) = bundle_proto(&mut rng);
    assert!(PreKeyBundle::from_bytes(&encode(&proto)).is_ok());
    edit(&mut proto);
    PreKeyBundle::from_bytes(&encode(&proto)).unwrap_err()
}

/// A point of order 8 on Curve25519 (small order, non-zero).
const ORDER_8: [u8; 32] = [
    0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d,
    0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
];

#[test]
fn bundle_version_and_framing() {
    let mut rng = rng(18);
    let (_, proto) = bundle_proto(&mut rng);
    let mut bytes = encode(&proto);
    bytes[0] = 2;
    assert_eq!(PreKeyBundle::from_bytes(&bytes), Err(BundleError::Decode(DecodeError::UnsupportedVersion(2))));
    assert_eq!(PreKeyBundle::from_bytes(&[]), Err(BundleError::Decode(DecodeError::Empty)));
    assert_eq!(PreKeyBundle::from_bytes(&[1, 0xff]), Err(BundleError::Decode(DecodeError::Protobuf)));
}

#[test]
fn bundle_identity_key_field() {
    assert_eq!(
        reject(|p| p.identity_key.truncate(31)),
        BundleError::IdentityKey(KeyError::InvalidLength { expected: 32, actual: 31 })
    );
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    assert_eq!(reject(|p| p.identity_key = identity_point.to_vec()), BundleError::IdentityKey(KeyError::SmallOrder));
    // Another valid identity: the signatures no longer verify.
    let other = IdentityKeyPair::generate(&mut rng(19)).public_key();
    assert_eq!(reject(|p| p.identity_key = other.as_bytes().to_vec()), BundleError::SignedPreKeySignature);
}

#[test]
fn bundle_user_id_field() {
    assert_eq!(reject(|p| p.user_id.clear()), BundleError::Decode(DecodeError::InvalidValue("user_id")));
    assert_eq!(reject(|p| p.user_id = "x".repeat(257)), BundleError::Decode(DecodeError::InvalidValue("user_id")));
}

#[test]
fn bundle_signed_prekey_fields() {
    assert_eq!(reject(|p| p.signed_prekey = None), BundleError::Decode(DecodeError::MissingField("signed_prekey")));
    assert_eq!(
        reject(|p| p.signed_prekey.as_mut().unwrap().public_key.push(0)),
        BundleError::SignedPreKey(KeyError::InvalidLength { expected: 32, actual: 33 })
    );
    assert_eq!(
        reject(|p| p.signed_prekey.as_mut().unwrap().public_key = vec![0; 32]),
        BundleError::SignedPreKey(KeyError::SmallOrder)
    );
    assert_eq!(
        reject(|p| p.signed_prekey.as_mut().unwrap().public_key = ORDER_8.to_vec()),
        BundleError::SignedPreKey(KeyError::SmallOrder)
    );
    assert_eq!(reject(|p| p.signed_prekey.as_mut().unwrap().public_key[5] ^= 1), BundleError::SignedPreKeySignature);
    assert_eq!(reject(|p| p.signed_prekey.as_mut().unwrap().id += 1), BundleError::SignedPreKeySignature);
    assert_eq!(reject(|p| p.signed_prekey.as_mut().unwrap().signature[0] ^= 1), BundleError::SignedPreKeySignature);
    assert!(matches!(
        reject(|p| p.signed_prekey.as_mut().unwrap().signature.pop().map(drop).unwrap()),
        BundleError::Decode(DecodeError::InvalidLength { field: "signed_prekey.signature", .. })
    ));
}

#[test]
fn bundle_one_time_prekey_fields() {
    assert_eq!(
        reject(|p| p.one_time_prekey.as_mut().unwrap().public_key = vec![0; 32]),
        BundleError::OneTimePreKey(KeyError::SmallOrder)
    );
    assert_eq!(
        reject(|p| p.one_time_prekey.as_mut().unwrap().public_key = ORDER_8.to_vec()),
        BundleError::OneTimePreKey(KeyError::SmallOrder)
    );
    assert_eq!(
        reject(|p| p.one_time_prekey.as_mut().unwrap().public_key.truncate(16)),
        BundleError::OneTimePreKey(KeyError::InvalidLength { expected: 32, actual: 16 })
    );
}

#[test]
fn bundle_pq_prekey_fields() {
    assert_eq!(reject(|p| p.pq_prekey = None), BundleError::Decode(DecodeError::MissingField("pq_prekey")));
    assert_eq!(
        reject(|p| p.pq_prekey.as_mut().unwrap().public_key.truncate(1000)),
        BundleError::PqPreKey(KeyError::InvalidLength { expected: 1568, actual: 1000 })
    );
    // A coefficient >= q: not a valid ML-KEM encapsulation key.
    assert_eq!(
        reject(|p| {
            let key = &mut p.pq_prekey.as_mut().unwrap().public_key;
            key[0] = 0xff;
            key[1] |= 0x0f;
        }),
        BundleError::PqPreKey(KeyError::InvalidEncoding)
    );
    assert_eq!(reject(|p| p.pq_prekey.as_mut().unwrap().id ^= 1), BundleError::PqPreKeySignature);
    assert_eq!(reject(|p| p.pq_prekey.as_mut().unwrap().signature[10] ^= 1), BundleError::PqPreKeySignature);
}

#[test]
fn a_signature_moved_to_another_key_kind_does_not_verify() {
    // A one-time ML-KEM key presented as the last-resort key.
    assert_eq!(reject(|p| p.pq_prekey.as_mut().unwrap().last_resort = true), BundleError::PqPreKeySignature);
    // The signed prekey's signature put on the ML-KEM key, and the other way round.
    assert_eq!(
        reject(|p| p.pq_prekey.as_mut().unwrap().signature = p.signed_prekey.as_ref().unwrap().signature.clone()),
        BundleError::PqPreKeySignature
    );
    assert_eq!(
        reject(|p| p.signed_prekey.as_mut().unwrap().signature = p.pq_prekey.as_ref().unwrap().signature.clone()),
        BundleError::SignedPreKeySignature
    );
}

/// Attack 1 of issue 12: a server relabels Mallory's genuine first message as
/// Alice's, or puts random identity bytes in a prekey header. Neither
/// authenticates under the identity it offers, so neither may raise
/// `UntrustedIdentity` (whose advice is to ask the user, then trust the key,
/// which would drop Alice's real sessions): both are forgeries and change
/// nothing. A genuine new identity still raises it.
#[test]
fn untrusted_identity_only_for_a_message_that_authenticates_under_it() {
    let mut rng = rng(17);
    let alice = Device::new(&mut rng, "alice", 0);
    let mut bob = Device::new(&mut rng, "bob", 5);
    let mallory = Device::new(&mut rng, "mallory", 0);
    let mut a = SessionRecord::new();
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let mut b = SessionRecord::new();
    let hello = a.encrypt(&mut rng, b"hello").unwrap();
    bob.receive(&mut rng, &mut b, &alice.address, &hello).unwrap();
    let reply = b.encrypt(&mut rng, b"hi").unwrap();
    let alice_prekeys = PreKeySet::new(&mut rng, &alice.identity, UNIX_EPOCH);
    a.decrypt_and_commit(&mut rng, &alice.identity, &alice.address, &bob.address, &alice_prekeys, &reply).unwrap();
    // A prekey message whose header does not open under the keys it names
    // opens under no state (PROTOCOL.md 9.5): nothing is trusted from it.
    let forged = || SessionError::Decrypt(DecryptError::NoMatchingState);

    // Mallory's own genuine first message, relabelled by the server as Alice's.
    let mut m = SessionRecord::new();
    m.initiate(&mut rng, &mallory.identity, &mallory.address, &bob.bundle()).unwrap();
    let relabelled = m.encrypt(&mut rng, b"it's alice, trust me").unwrap();
    let before = (b.to_bytes(), bob.prekeys.to_bytes());
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &relabelled), Err(forged()));
    assert_eq!((b.to_bytes(), bob.prekeys.to_bytes()), before);

    // A prekey header with random identity bytes (a valid point).
    let Message::PreKey(_) = Message::from_bytes(&relabelled).unwrap() else { panic!() };
    let mut proto = pb::Envelope::decode(&relabelled[1..]).unwrap();
    let Some(pb::envelope::Body::Prekey(prekey)) = proto.body.as_mut() else { panic!() };
    let mut random_identity = None;
    for seed in 0u8..=255 {
        let candidate = IdentityKeyPair::from_seed(&[seed; 32]).public_key();
        if candidate != alice.identity.public_key() {
            random_identity = Some(candidate);
            break;
        }
    }
    prekey.identity_key = random_identity.unwrap().as_bytes().to_vec();
    let mut random = vec![1u8];
    proto.encode(&mut random).unwrap();
    assert!(Message::from_bytes(&random).is_ok());
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &random), Err(forged()));
    assert_eq!((b.to_bytes(), bob.prekeys.to_bytes()), before);
    assert_eq!(b.trusted_identity(), Some(alice.identity.public_key()));

    // Alice's genuine next session still works.
    a.initiate(&mut rng, &alice.identity, &alice.address, &bob.bundle()).unwrap();
    let again = a.encrypt(&mut rng, b"a new session").unwrap();
    assert_eq!(bob.receive(&mut rng, &mut b, &alice.address, &again).unwrap(), b"a new session");

    // A real reinstall (a new identity key that authenticates) still raises it.
    let new_alice = Device::new(&mut rng, "alice", 0);
    let mut n = SessionRecord::new();
    n.initiate(&mut rng, &new_alice.identity, &new_alice.address, &bob.bundle()).unwrap();
    let reinstalled = n.encrypt(&mut rng, b"new phone").unwrap();
    let before = (b.to_bytes(), bob.prekeys.to_bytes());
    assert_eq!(
        bob.receive(&mut rng, &mut b, &alice.address, &reinstalled),
        Err(SessionError::UntrustedIdentity { identity: new_alice.identity.public_key() })
    );
    assert_eq!((b.to_bytes(), bob.prekeys.to_bytes()), before);
}

/// Attack 2 of issue 12: a bundle's address and one-time prekey were outside
/// every signature (75 of 3,652 bit flips of a bundle were accepted, and a
/// relabelled bundle pinned the owner's key under another name). Now every
/// bit of a bundle is covered: each single-bit flip is refused.
#[test]
fn every_bit_flip_of_a_bundle_is_refused() {
    let mut rng = rng(18);
    let bob = Device::new(&mut rng, "bob", 2);
    for bundle in [bob.bundle().to_bytes(), {
        // Without a one-time prekey, and with the last-resort ML-KEM key.
        let empty = Device::new(&mut rng, "carol", 0);
        empty.bundle().to_bytes()
    }] {
        assert!(PreKeyBundle::from_bytes(&bundle).is_ok());
        let mut accepted = Vec::new();
        for bit in 0..bundle.len() * 8 {
            let mut flipped = bundle.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            if PreKeyBundle::from_bytes(&flipped).is_ok() {
                accepted.push(bit);
            }
        }
        assert!(accepted.is_empty(), "{} of {} flips accepted: {accepted:?}", accepted.len(), bundle.len() * 8);
    }
}

/// A bundle relabelled with another address (or another one-time prekey) by
/// the server is refused before anything is pinned or stored.
#[test]
fn a_relabelled_bundle_is_refused_before_anything_is_pinned() {
    let mut rng = rng(19);
    let alice = Device::new(&mut rng, "alice", 0);
    let bob = Device::new(&mut rng, "bob", 2);
    let genuine = bob.bundle().to_bytes();
    let mut proto = pb::PreKeyBundle::decode(&genuine[1..]).unwrap();
    proto.user_id = "carol".to_owned();
    let relabelled = encode(&proto);
    assert_eq!(PreKeyBundle::from_bytes(&relabelled).unwrap_err(), BundleError::Signature);
    let mut proto = pb::PreKeyBundle::decode(&genuine[1..]).unwrap();
    proto.device_id = 2;
    assert_eq!(PreKeyBundle::from_bytes(&encode(&proto)).unwrap_err(), BundleError::Signature);
    let mut proto = pb::PreKeyBundle::decode(&genuine[1..]).unwrap();
    proto.one_time_prekey.as_mut().unwrap().id += 1;
    assert_eq!(PreKeyBundle::from_bytes(&encode(&proto)).unwrap_err(), BundleError::Signature);
    proto.one_time_prekey = None;
    assert_eq!(PreKeyBundle::from_bytes(&encode(&proto)).unwrap_err(), BundleError::Signature);
    // Unknown fields, or any other encoding of the same content, are refused too.
    let mut extended = genuine.clone();
    extended.extend_from_slice(&[0x40, 0x01]); // field 8, varint 1
    assert_eq!(PreKeyBundle::from_bytes(&extended).unwrap_err(), BundleError::Decode(DecodeError::Protobuf));
    let mut record = SessionRecord::new();
    assert!(matches!(
        PreKeyBundle::from_bytes(&relabelled).map(|b| record.initiate(&mut rng, &alice.identity, &alice.address, &b)),
        Err(BundleError::Signature)
    ));
    assert_eq!(record.trusted_identity(), None);
}
