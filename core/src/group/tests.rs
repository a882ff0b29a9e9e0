//! Unit tests of the pure group protocol.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::{
    DecodeError, DecryptError,
    address::Address,
    limits::{
        GROUP_RECOVERY_WINDOW, MAX_CHAIN_FLOORS, MAX_GROUP_EVICTED_ITERATIONS, MAX_GROUP_SKIPPED_KEYS,
        MAX_SENDER_CHAINS, MAX_SKIP,
    },
};

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn alice() -> Address {
    Address::new("alice", 1).unwrap()
}

/// The identity of the session Alice's chains come in.
fn id() -> crate::keys::IdentityKey {
    crate::keys::IdentityKeyPair::from_seed(&[5; 32]).public_key()
}

fn gid(bytes: &[u8]) -> GroupId {
    GroupId::new(bytes).unwrap()
}

/// A sender's chain and a receiver that got it at iteration 0.
fn setup() -> (ChaCha20Rng, OwnChain, SenderChains) {
    let mut rng = rng(1);
    let chain = OwnChain::generate(&mut rng, 1);
    let mut chains = SenderChains::default();
    assert!(chains.receive(&chain.distribution(&gid(b"g"), 0), id()));
    (rng, chain, chains)
}

fn decrypt(chains: &mut SenderChains, message: &GroupMessage) -> Result<Vec<u8>, GroupDecrypt> {
    let (plaintext, plan) = chains.plan_decrypt(&alice(), Some(&id()), message)?;
    chains.apply(plan);
    Ok(plaintext.to_vec())
}

fn failed(result: Result<Vec<u8>, GroupDecrypt>) -> DecryptError {
    match result {
        Err(GroupDecrypt::Failed(e)) => e,
        other => panic!("expected a failure, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn round_trip_in_order_out_of_order_and_duplicates() {
    let (mut rng, mut chain, mut chains) = setup();
    let messages: Vec<_> =
        (0..5).map(|i| chain.encrypt(&mut rng, &gid(b"g"), &alice(), format!("m{i}").as_bytes()).unwrap()).collect();
    assert_eq!(decrypt(&mut chains, &messages[0]).unwrap(), b"m0");
    assert_eq!(decrypt(&mut chains, &messages[3]).unwrap(), b"m3");
    assert_eq!(chains.skipped_count(), 2);
    assert_eq!(decrypt(&mut chains, &messages[1]).unwrap(), b"m1");
    assert_eq!(failed(decrypt(&mut chains, &messages[1])), DecryptError::Duplicate { counter: 1 });
    assert_eq!(failed(decrypt(&mut chains, &messages[3])), DecryptError::Duplicate { counter: 3 });
    assert_eq!(decrypt(&mut chains, &messages[4]).unwrap(), b"m4");
    assert_eq!(decrypt(&mut chains, &messages[2]).unwrap(), b"m2");
    assert_eq!(chains.skipped_count(), 0);
}

#[test]
fn the_wire_form_round_trips_and_is_padded() {
    let (mut rng, mut chain, _) = setup();
    let message = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"hi").unwrap();
    let bytes = message.to_bytes();
    assert_eq!(GroupMessage::from_bytes(&bytes).unwrap(), message);
    assert_eq!(message.body.len(), 64 + 16);
    let long = chain.encrypt(&mut rng, &gid(b"g"), &alice(), &[7; 100]).unwrap();
    assert_eq!(long.body.len(), 128 + 16);
    // A one-to-one decoder does not take it; a group decoder takes nothing else.
    assert_eq!(crate::wire::Message::from_bytes(&bytes), Err(DecodeError::UnknownKind));
}

#[test]
fn a_forged_or_moved_message_is_refused_and_changes_nothing() {
    let (mut rng, mut chain, mut chains) = setup();
    let message = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"hi").unwrap();
    // Every byte of the body, salt and signature, and the header fields.
    let mut variants = Vec::new();
    for i in 0..message.body.len() {
        let mut m = message.clone();
        m.body[i] ^= 1;
        variants.push(m);
    }
    for i in 0..SALT_LEN {
        let mut m = message.clone();
        m.salt[i] ^= 1;
        variants.push(m);
    }
    for i in 0..64 {
        let mut m = message.clone();
        m.signature[i] ^= 1;
        variants.push(m);
    }
    let mut other_group = message.clone();
    other_group.group_id = gid(b"h");
    variants.push(other_group);
    let mut later = message.clone();
    later.iteration = 1;
    variants.push(later);
    for variant in &variants {
        assert_eq!(failed(decrypt(&mut chains, variant)), DecryptError::Unauthenticated);
    }
    // Attributed to another member: its address is signed.
    let bob = Address::new("bob", 1).unwrap();
    assert!(matches!(
        chains.plan_decrypt(&bob, Some(&id()), &message),
        Err(GroupDecrypt::Failed(DecryptError::Unauthenticated))
    ));
    // Nothing changed: the genuine message decrypts.
    assert_eq!(decrypt(&mut chains, &message).unwrap(), b"hi");
    // A chain id this sender never gave.
    let mut unknown = message.clone();
    unknown.chain_id ^= 1;
    assert!(matches!(decrypt(&mut chains, &unknown), Err(GroupDecrypt::MissingChain)));
}

#[test]
fn a_sender_that_went_back_is_told_from_a_replay() {
    let (mut rng, chain, mut chains) = setup();
    let record = chain.to_record();
    let mut first = OwnChain::from_record(&record, 1).unwrap();
    let mut restored = OwnChain::from_record(&record, 1).unwrap();
    let original = first.encrypt(&mut rng, &gid(b"g"), &alice(), b"one").unwrap();
    let again = restored.encrypt(&mut rng, &gid(b"g"), &alice(), b"two").unwrap();
    assert_eq!(original.iteration, again.iteration);
    assert_ne!(original.salt, again.salt, "a restored sender salts its key anew");
    assert_eq!(decrypt(&mut chains, &original).unwrap(), b"one");
    assert_eq!(failed(decrypt(&mut chains, &again)), DecryptError::Rollback { counter: 0 });
    assert_eq!(failed(decrypt(&mut chains, &original)), DecryptError::Duplicate { counter: 0 });
}

#[test]
fn too_far_ahead_is_refused_at_the_limit() {
    let (mut rng, mut chain, mut chains) = setup();
    let mut messages = Vec::new();
    for i in 0..=MAX_SKIP + 1 {
        messages.push(chain.encrypt(&mut rng, &gid(b"g"), &alice(), &i.to_be_bytes()).unwrap());
    }
    let last = messages.last().unwrap();
    assert!(matches!(decrypt(&mut chains, last), Err(GroupDecrypt::TooFarAhead { .. })));
    // Forged, it is refused before its iteration is looked at.
    let mut forged = last.clone();
    forged.signature[0] ^= 1;
    assert_eq!(failed(decrypt(&mut chains, &forged)), DecryptError::Unauthenticated);
    // A gap of exactly MAX_SKIP is taken.
    let at_limit = &messages[MAX_SKIP as usize];
    assert!(decrypt(&mut chains, at_limit).is_ok());
    assert_eq!(chains.skipped_count(), MAX_SKIP as usize);
    assert!(chains.skipped_count() <= MAX_GROUP_SKIPPED_KEYS);
}

#[test]
fn skipped_keys_are_evicted_oldest_first() {
    let (mut rng, mut chain, mut chains) = setup();
    let mut messages = Vec::new();
    for i in 0..u32::try_from(MAX_GROUP_SKIPPED_KEYS + 10).unwrap() {
        messages.push(chain.encrypt(&mut rng, &gid(b"g"), &alice(), &i.to_be_bytes()).unwrap());
    }
    decrypt(&mut chains, &messages[MAX_SKIP as usize]).unwrap();
    let last = messages.last().unwrap();
    decrypt(&mut chains, last).unwrap();
    assert_eq!(chains.skipped_count(), MAX_GROUP_SKIPPED_KEYS);
    // The oldest skipped keys went: a message on one of them never arrived,
    // and is reported so (not as a duplicate), across a store round trip too.
    assert_eq!(failed(decrypt(&mut chains, &messages[0])), DecryptError::KeyEvicted { counter: 0 });
    let (records, requested) = chains.to_records();
    let mut reloaded = SenderChains::from_records(&records, &requested, 0, &[], None, 0).unwrap();
    // 2,008 keys were skipped: the 8 oldest went.
    assert_eq!(failed(decrypt(&mut reloaded, &messages[7])), DecryptError::KeyEvicted { counter: 7 });
    assert!(decrypt(&mut reloaded, &messages[8]).is_ok());
    assert!(decrypt(&mut chains, &messages[messages.len() - 2]).is_ok());
    // A message read before is a duplicate.
    assert!(matches!(failed(decrypt(&mut chains, last)), DecryptError::Duplicate { .. }));
}

/// The evicted iterations of a stored chain are checked when loaded: within
/// the limit (before any is expanded), below the chain's iteration, neither
/// skipped nor used.
#[test]
fn stored_evicted_iterations_are_checked() {
    let (mut rng, mut chain, mut chains) = setup();
    let messages: Vec<_> = (0..5).map(|_| chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap()).collect();
    // Iteration 1 decrypted and 0 skipped: the chain is at 2.
    decrypt(&mut chains, &messages[1]).unwrap();
    let (records, requested) = chains.to_records();
    let load = |evicted: Vec<u32>, iteration: Option<u32>| {
        let mut records = records.clone();
        records[0].evicted = evicted;
        if let Some(iteration) = iteration {
            records[0].iteration = iteration;
        }
        SenderChains::from_records(&records, &requested, 0, &[], None, 0).map(|_| ())
    };
    assert_eq!(load(vec![], None), Ok(()));
    assert_eq!(load(vec![5, 3], Some(10)), Ok(()));
    let max = u32::try_from(MAX_GROUP_EVICTED_ITERATIONS).unwrap();
    assert_eq!(load(vec![5, max], Some(max + 5)), Ok(()));
    assert_eq!(load(vec![5, max + 1], Some(max + 6)), Err(DecodeError::InvalidValue("sender.limits")));
    // Billions of iterations are refused without being expanded.
    assert_eq!(load(vec![0, u32::MAX - 1], Some(u32::MAX)), Err(DecodeError::InvalidValue("sender.limits")));
    for (evicted, iteration) in [
        (vec![2, 1], None),
        (vec![0, 1], None),
        (vec![1, 1], None),
        (vec![9, 2], Some(10)),
        (vec![1], Some(10)),
        (vec![5, 0], Some(10)),
    ] {
        assert_eq!(load(evicted.clone(), iteration), Err(DecodeError::InvalidValue("sender.evicted")), "{evicted:?}");
    }
}

#[test]
fn old_chains_are_kept_for_messages_in_flight_then_dropped() {
    let mut rng = rng(4);
    let mut chains = SenderChains::default();
    let mut senders: Vec<OwnChain> =
        (1..=MAX_SENDER_CHAINS as u64 + 1).map(|g| OwnChain::generate(&mut rng, g)).collect();
    let in_flight: Vec<_> =
        senders.iter_mut().map(|c| c.encrypt(&mut rng, &gid(b"g"), &alice(), b"late").unwrap()).collect();
    for (i, sender) in senders.iter().enumerate() {
        assert!(chains.receive(&sender.distribution(&gid(b"g"), 0), id()));
        assert_eq!(chains.chain_count(), (i + 1).min(MAX_SENDER_CHAINS));
    }
    // The first chain was dropped; the others still open their messages.
    assert!(matches!(decrypt(&mut chains, &in_flight[0]), Err(GroupDecrypt::MissingChain)));
    for message in &in_flight[1..] {
        assert_eq!(decrypt(&mut chains, message).unwrap(), b"late");
    }
    // The same distribution again changes nothing (no rewind).
    assert!(!chains.receive(&senders[3].distribution(&gid(b"g"), 0), id()));
    assert!(matches!(failed(decrypt(&mut chains, &in_flight[3])), DecryptError::Duplicate { .. }));
}

#[test]
fn a_later_copy_of_a_chain_moves_it_forward_never_back() {
    let (mut rng, mut chain, mut chains) = setup();
    let messages: Vec<_> = (0..5).map(|_| chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap()).collect();
    decrypt(&mut chains, &messages[1]).unwrap();
    // Forward to 3: message 0 (skipped) still opens, 2 is given up, 3 opens.
    assert!(chains.receive(&chain.distribution(&gid(b"g"), 3), id()));
    assert!(decrypt(&mut chains, &messages[0]).is_ok());
    assert!(matches!(failed(decrypt(&mut chains, &messages[2])), DecryptError::Duplicate { .. }));
    assert!(decrypt(&mut chains, &messages[3]).is_ok());
    // Back to 0: nothing changes, and nothing decrypts twice.
    assert!(!chains.receive(&chain.distribution(&gid(b"g"), 0), id()));
    assert!(matches!(failed(decrypt(&mut chains, &messages[3])), DecryptError::Duplicate { .. }));
    assert!(decrypt(&mut chains, &messages[4]).is_ok());
}

#[test]
fn a_distribution_from_an_iteration_reads_nothing_before_it() {
    let (mut rng, mut chain, _) = setup();
    let early = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"before").unwrap();
    let mut joined = SenderChains::default();
    joined.receive(&chain.distribution(&gid(b"g"), chain.iteration()), id());
    let late = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"after").unwrap();
    assert!(matches!(failed(decrypt(&mut joined, &early)), DecryptError::Duplicate { counter: 0 }));
    assert_eq!(decrypt(&mut joined, &late).unwrap(), b"after");
}

#[test]
fn the_recovery_copy_trails_by_the_window_and_never_leads() {
    let (mut rng, mut chain, _) = setup();
    for _ in 0..GROUP_RECOVERY_WINDOW + 5 {
        chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    }
    let record = chain.to_record();
    assert_eq!(record.iteration, GROUP_RECOVERY_WINDOW + 5);
    assert_eq!(record.recovery_iteration, 5);
    // Asked from before the window: from the window's start; from later: as asked.
    assert_eq!(chain.distribution(&gid(b"g"), 0).iteration, 5);
    assert_eq!(chain.distribution(&gid(b"g"), 100).iteration, 100);
    assert_eq!(chain.distribution(&gid(b"g"), u32::MAX).iteration, GROUP_RECOVERY_WINDOW + 5);
    // The copy at 100 is the chain at 100: it opens message 100 on.
    let message = {
        let mut copy = OwnChain::from_record(&record, 1).unwrap();
        copy.encrypt(&mut rng, &gid(b"g"), &alice(), b"next").unwrap()
    };
    let mut chains = SenderChains::default();
    chains.receive(&chain.distribution(&gid(b"g"), 100), id());
    assert_eq!(decrypt(&mut chains, &message).unwrap(), b"next");
    // A stored chain whose copy is outside the window is refused.
    let mut bad = record.clone();
    bad.recovery_iteration = 0;
    assert!(OwnChain::from_record(&bad, 1).is_err());
    bad.recovery_iteration = bad.iteration + 1;
    assert!(OwnChain::from_record(&bad, 1).is_err());
}

#[test]
fn stored_chains_round_trip_and_bad_records_are_refused() {
    let (mut rng, mut chain, mut chains) = setup();
    let messages: Vec<_> = (0..4).map(|_| chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap()).collect();
    decrypt(&mut chains, &messages[2]).unwrap();
    chains.count_request(77);
    let (records, requested) = chains.to_records();
    let mut loaded = SenderChains::from_records(&records, &requested, 1, &[], None, 0).unwrap();
    assert_eq!(loaded.to_records(), (records.clone(), requested.clone()));
    assert_eq!(decrypt(&mut loaded, &messages[0]).unwrap(), b"x");
    assert!(matches!(failed(decrypt(&mut loaded, &messages[2])), DecryptError::Duplicate { .. }));
    let refused = |edit: &dyn Fn(&mut Vec<samizdat_proto::storage::SenderChain>)| {
        let mut bad = records.clone();
        edit(&mut bad);
        SenderChains::from_records(&bad, &requested, 1, &[], None, 0).is_err()
    };
    assert!(refused(&|c| c[0].chain_key.pop().map(|_| ()).unwrap()));
    assert!(refused(&|c| c[0].skipped.reverse()));
    assert!(refused(&|c| c[0].skipped[0].iteration = 3));
    assert!(refused(&|c| c[0].used.push(0)));
    assert!(refused(&|c| c[0].signing_key.truncate(31)));
    assert!(refused(&|c| {
        let copy = c[0].clone();
        c.push(copy);
    }));
}

#[test]
fn requests_are_bounded_per_chain_and_made_up_ids_do_not_block_real_ones() {
    use crate::limits::{MAX_GROUP_KEY_REQUESTS, MAX_GROUP_REQUESTS_PER_SENDER, MAX_REQUESTED_CHAINS};
    let per_chain = MAX_GROUP_KEY_REQUESTS;
    let mut chains = SenderChains::default();
    for _ in 0..per_chain {
        assert!(chains.count_request(0));
    }
    assert!(!chains.count_request(0), "past the per-chain budget");
    // Up to the per-sender budget, over other ids.
    let mut made = per_chain;
    let mut next = 1;
    while made < MAX_GROUP_REQUESTS_PER_SENDER {
        assert!(chains.count_request(next));
        made += 1;
        next += 1;
    }
    assert!(!chains.count_request(1_000), "past the per-sender budget");
    let (mut rng, chain, _) = setup();
    let _ = &mut rng;
    chains.receive(&chain.distribution(&gid(b"g"), 0), id());
    // The list is full of ids that never come: a new one is still asked for
    // (up to the per-chain budget), in the place of the oldest.
    let ids = u32::try_from(MAX_REQUESTED_CHAINS).unwrap();
    for id in 0..ids {
        assert!(chains.count_request(id));
    }
    for _ in 0..per_chain {
        assert!(chains.count_request(1_000));
    }
    assert!(!chains.count_request(1_000));
    assert!(chains.count_request(0), "the oldest id was forgotten");
}

/// The last request of a chain id is kept to hand again while that id is
/// asked for; it goes when the id is evicted, or the sender proves itself.
#[test]
fn the_last_request_is_kept_per_chain_id_until_settled() {
    let mut chains = SenderChains::default();
    assert!(chains.count_request(5));
    assert_eq!(chains.last_request(5), None);
    chains.keep_request(5, b"first".to_vec());
    assert!(chains.count_request(5));
    chains.keep_request(5, b"second".to_vec());
    assert_eq!(chains.last_request(5), Some(&b"second"[..]));
    assert_eq!(chains.last_request(6), None, "only for its chain id");
    let (records, requested) = chains.to_records();
    let loaded = SenderChains::from_records(&records, &requested, chains.requests(), &[], None, 0).unwrap();
    assert_eq!(loaded.last_request(5), Some(&b"second"[..]));
    // Too long to be a request: corrupt.
    let mut long = requested.clone();
    long[0].message = vec![0; crate::limits::MAX_KEPT_CONTROL_MESSAGE_LEN + 1];
    assert!(SenderChains::from_records(&records, &long, chains.requests(), &[], None, 0).is_err());
    // Evicted by newer chain ids.
    for id in 100..100 + u32::try_from(crate::limits::MAX_REQUESTED_CHAINS).unwrap() {
        assert!(chains.count_request(id));
    }
    assert_eq!(chains.last_request(5), None);
    // Settled by a distribution.
    let mut chains = SenderChains::default();
    assert!(chains.count_request(5));
    chains.keep_request(5, b"r".to_vec());
    let (_, chain, _) = setup();
    chains.receive(&chain.distribution(&gid(b"g"), 0), id());
    assert_eq!(chains.last_request(5), None);
}

/// The last answer is handed again only for the chain it gives; a removal
/// drops it, and a row with a bad one is refused.
#[test]
fn the_last_answer_is_kept_for_its_chain_only() {
    let mut chains = SenderChains::default();
    chains.keep_answer(9, 7, b"answer".to_vec());
    assert_eq!(chains.last_answer(9), Some((&b"answer"[..], 7)));
    assert_eq!(chains.last_answer(10), None);
    let record = chains.answer_record().unwrap();
    let loaded = SenderChains::from_records(&[], &[], 0, &[], Some(&record), 0).unwrap();
    assert_eq!(loaded.last_answer(9), Some((&b"answer"[..], 7)));
    assert!(!loaded.only_floors());
    for message in [Vec::new(), vec![0; crate::limits::MAX_KEPT_CONTROL_MESSAGE_LEN + 1]] {
        let bad = samizdat_proto::storage::LastAnswer { chain_id: 9, message, iteration: 0 };
        assert!(SenderChains::from_records(&[], &[], 0, &[], Some(&bad), 0).is_err());
    }
    chains.retire_all();
    assert_eq!(chains.last_answer(9), None);
    assert!(chains.only_floors());
}

#[test]
fn a_chain_opens_only_under_the_identity_it_came_with() {
    let (mut rng, mut chain, mut chains) = setup();
    let message = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    let other = crate::keys::IdentityKeyPair::from_seed(&[6; 32]).public_key();
    assert!(matches!(chains.plan_decrypt(&alice(), Some(&other), &message), Err(GroupDecrypt::MissingChain)));
    assert!(matches!(chains.plan_decrypt(&alice(), None, &message), Err(GroupDecrypt::MissingChain)));
    // The same chain under the new identity replaces the old one.
    assert!(chains.receive(&chain.distribution(&gid(b"g"), 0), other));
    assert_eq!(chains.chain_count(), 1);
    assert!(chains.plan_decrypt(&alice(), Some(&other), &message).is_ok());
    assert!(matches!(chains.plan_decrypt(&alice(), Some(&id()), &message), Err(GroupDecrypt::MissingChain)));
}

#[test]
fn control_content_round_trips_and_junk_is_refused() {
    let (_, chain, _) = setup();
    let distribution = Control::Distribution(chain.distribution(&gid(b"g"), 0));
    assert_eq!(Control::from_bytes(&distribution.to_bytes()).unwrap(), distribution);
    let request = Control::Request(Request { group_id: gid(b"g"), chain_id: 9, iteration: 4, min_generation: 7 });
    assert_eq!(Control::from_bytes(&request.to_bytes()).unwrap(), request);
    assert_eq!(Control::from_bytes(&[]), Err(DecodeError::UnknownKind));
    // A control kind of a later release (field 5, 6 ...): unknown, not malformed.
    assert_eq!(Control::from_bytes(&[0x2a, 0x00]), Err(DecodeError::UnknownKind));
    assert_eq!(Control::from_bytes(&[0x32, 0x02, 0xaa, 0xbb]), Err(DecodeError::UnknownKind));
    assert_eq!(Control::from_bytes(&[0x2a, 0x05, 0x00]), Err(DecodeError::Protobuf));
    // A reset naming nothing is a reset; one naming a short id or an id
    // twice, or one resend too long, is refused.
    assert_eq!(Control::from_bytes(&[0x1a, 0x00]), Ok(Control::Reset(Vec::new())));
    let reset = Control::Reset(vec![[1; 16], [2; 16]]);
    assert_eq!(Control::from_bytes(&reset.to_bytes()).unwrap(), reset);
    assert!(Control::from_bytes(&Control::Reset(vec![[1; 16], [1; 16]]).to_bytes()).is_err());
    assert!(Control::from_bytes(&[0x1a, 0x03, 0x0a, 0x01, 0x00]).is_err());
    assert!(Control::from_bytes(&Control::Reset((0..65u8).map(|i| [i; 16]).collect()).to_bytes()).is_err());
    let resend = Control::Resend { id: [7; 16], also: vec![[8; 16]], plaintext: Zeroizing::new(b"again".to_vec()) };
    assert_eq!(Control::from_bytes(&resend.to_bytes()).unwrap(), resend);
    let long = Control::Resend {
        id: [7; 16],
        also: Vec::new(),
        plaintext: Zeroizing::new(vec![0; crate::limits::MAX_KEPT_PLAINTEXT_LEN + 1]),
    };
    assert!(Control::from_bytes(&long.to_bytes()).is_err());
    assert!(Control::from_bytes(&[0x0a, 0x01]).is_err());
    // A group id of 65 bytes.
    let long =
        Control::Request(Request { group_id: GroupId(vec![1; 65]), chain_id: 0, iteration: 0, min_generation: 0 });
    assert!(Control::from_bytes(&long.to_bytes()).is_err());
    // A resend's other ids: at most MAX_RESEND_IDS, none twice, not its id.
    let with = |also: Vec<[u8; 16]>| Control::Resend { id: [7; 16], also, plaintext: Zeroizing::new(Vec::new()) };
    let most = with((0..4u8).map(|i| [i; 16]).collect());
    assert_eq!(Control::from_bytes(&most.to_bytes()).unwrap(), most);
    assert!(Control::from_bytes(&with((0..5u8).map(|i| [i; 16]).collect()).to_bytes()).is_err());
    assert!(Control::from_bytes(&with(vec![[1; 16], [1; 16]]).to_bytes()).is_err());
    assert!(Control::from_bytes(&with(vec![[7; 16]]).to_bytes()).is_err());
}

/// The worst case of one hostile message: a forgery (whatever iteration it
/// names) costs one signature verification and no chain step; only a message
/// the sender signed may make the receiver step its chain, at most
/// `MAX_SKIP + 1` times.
#[test]
fn a_forged_message_costs_no_chain_step() {
    use crate::ratchet::chain::STEPS;
    let steps = || STEPS.with(std::cell::Cell::get);
    let (mut rng, mut chain, mut chains) = setup();
    let mut genuine = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    for _ in 0..MAX_SKIP {
        genuine = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    }
    let mut forged = genuine.clone();
    forged.body[0] ^= 1;
    let before = steps();
    assert_eq!(failed(decrypt(&mut chains, &forged)), DecryptError::Unauthenticated);
    assert_eq!(steps() - before, 0, "a forgery stepped the chain");
    let before = steps();
    assert!(decrypt(&mut chains, &genuine).is_ok());
    assert_eq!(steps() - before, MAX_SKIP as usize + 1);
}

#[test]
fn an_evicted_chain_taken_again_opens_nothing_below_its_floor() {
    let mut rng = rng(9);
    let mut chains = SenderChains::default();
    let mut first = OwnChain::generate(&mut rng, 1);
    let messages: Vec<_> = (0..4).map(|_| first.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap()).collect();
    assert!(chains.receive(&first.distribution(&gid(b"g"), 0), id()));
    decrypt(&mut chains, &messages[0]).unwrap();
    decrypt(&mut chains, &messages[2]).unwrap(); // 1 skipped
    // Three newer chains evict the first: its floor is 3 (its next iteration).
    for generation in 2..=MAX_SENDER_CHAINS as u64 + 1 {
        assert!(chains.receive(&OwnChain::generate(&mut rng, generation).distribution(&gid(b"g"), 0), id()));
    }
    assert_eq!(chains.floor(first.chain_id()), Some(3));
    // Below the floor: a duplicate at once, without a chain; at it: missing.
    let before = chains.to_records();
    for (k, message) in messages.iter().enumerate().take(3) {
        assert!(matches!(
            failed(decrypt(&mut chains, message)),
            DecryptError::Duplicate { counter } if counter == u32::try_from(k).unwrap()
        ));
    }
    assert!(matches!(decrypt(&mut chains, &messages[3]), Err(GroupDecrypt::MissingChain)));
    assert!(chains.to_records() == before, "refusals changed nothing");
    // A delayed copy from iteration 0 comes back from the floor: the message
    // skipped before the eviction is given up, none opens twice, 3 opens.
    assert!(chains.receive(&first.distribution(&gid(b"g"), 0), id()));
    assert_eq!(chains.floor(first.chain_id()), None, "the floor is spent on the chain");
    for message in &messages[..3] {
        assert!(matches!(failed(decrypt(&mut chains, message)), DecryptError::Duplicate { .. }));
    }
    assert_eq!(decrypt(&mut chains, &messages[3]).unwrap(), b"x");
}

#[test]
fn a_copy_more_than_max_skip_below_the_floor_is_ignored() {
    let (mut rng, mut chain, mut chains) = setup();
    for _ in 0..MAX_SKIP + 1 {
        chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    }
    let at = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    assert_eq!(at.iteration, MAX_SKIP + 1);
    chains.receive(&chain.distribution(&gid(b"g"), MAX_SKIP + 1), id());
    decrypt(&mut chains, &at).unwrap();
    chains.retire_all();
    assert_eq!(chains.floor(chain.chain_id()), Some(MAX_SKIP + 2));
    // The recovery copy reaches back to iteration 2 at the earliest.
    let far = chain.distribution(&gid(b"g"), 0);
    assert_eq!(far.iteration, 2);
    let mut below = far.clone();
    below.iteration = 1;
    below.chain_key = Secret32::new([0; 32]);
    assert!(!chains.receive(&below, id()), "MAX_SKIP + 1 below the floor: ignored");
    assert_eq!(chains.floor(chain.chain_id()), Some(MAX_SKIP + 2));
    // MAX_SKIP below: stepped up to the floor, and the next message opens.
    assert!(chains.receive(&far, id()));
    let next = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"next").unwrap();
    assert_eq!(decrypt(&mut chains, &next).unwrap(), b"next");
    assert!(matches!(failed(decrypt(&mut chains, &at)), DecryptError::Duplicate { .. }));
}

#[test]
fn floors_are_bounded_and_checked_on_load() {
    let mut rng = rng(10);
    let mut chains = SenderChains::default();
    for generation in 1..=(MAX_SENDER_CHAINS + MAX_CHAIN_FLOORS + 2) as u64 {
        assert!(chains.receive(&OwnChain::generate(&mut rng, generation).distribution(&gid(b"g"), 0), id()));
    }
    let floors = chains.floor_records();
    assert_eq!(floors.len(), MAX_CHAIN_FLOORS);
    let (records, requested) = chains.to_records();
    let loaded = SenderChains::from_records(&records, &requested, 0, &floors, None, 0).unwrap();
    assert_eq!(loaded.floor_records(), floors);
    let mut too_many = floors.clone();
    too_many.push(samizdat_proto::storage::ChainFloor { chain_id: 1, iteration: 0, generation: 0 });
    assert!(SenderChains::from_records(&records, &requested, 0, &too_many, None, 0).is_err());
    let mut twice = floors[..2].to_vec();
    twice[1].chain_id = twice[0].chain_id;
    assert!(SenderChains::from_records(&records, &requested, 0, &twice, None, 0).is_err());
    let of_a_kept_chain =
        vec![samizdat_proto::storage::ChainFloor { chain_id: records[0].chain_id, iteration: 0, generation: 0 }];
    assert!(SenderChains::from_records(&records, &requested, 0, &of_a_kept_chain, None, 0).is_err());
}

#[test]
fn the_expanded_signer_signs_as_ed25519_and_old_rows_still_load() {
    let (mut rng, mut chain, mut chains) = setup();
    let record = chain.to_record();
    assert_eq!(record.signing_public.len(), 32);
    let message = chain.encrypt(&mut rng, &gid(b"g"), &alice(), b"x").unwrap();
    // The signature RFC 8032 gives for the seed, over AD || body.
    let seed: [u8; 32] = record.signing_seed.as_slice().try_into().unwrap();
    let pair = crate::keys::IdentityKeyPair::from_seed(&seed);
    assert_eq!(pair.public_key().as_bytes().as_slice(), record.signing_public.as_slice());
    assert_eq!(message.signature, pair.sign(&message.signed_bytes(&alice())));
    assert_eq!(decrypt(&mut chains, &message).unwrap(), b"x");
    // A row of an earlier release (no public key) loads and signs the same.
    let mut old = record.clone();
    old.signing_public.clear();
    let (mut from_old, mut from_new) =
        (OwnChain::from_record(&old, 1).unwrap(), OwnChain::from_record(&record, 1).unwrap());
    let salt = [7u8; 32];
    let a = from_old.encrypt(&mut ChaCha20Rng::from_seed(salt), &gid(b"g"), &alice(), b"y").unwrap();
    let b = from_new.encrypt(&mut ChaCha20Rng::from_seed(salt), &gid(b"g"), &alice(), b"y").unwrap();
    assert_eq!(a, b);
    assert_eq!(from_old.to_record(), from_new.to_record());
    // A stored public key that is not 32 bytes, or not a point, is refused.
    let mut bad = record.clone();
    bad.signing_public.truncate(31);
    assert!(OwnChain::from_record(&bad, 1).is_err());
    let not_a_point = (2u8..=255)
        .map(|y| {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            bytes
        })
        .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
        .unwrap();
    bad.signing_public = not_a_point.to_vec();
    assert!(OwnChain::from_record(&bad, 1).is_err());
}
