//! The calls apps ask for on a store with many peers: `peers` (every peer,
//! by pages), `delete_session` (every row of a peer, in one transaction,
//! gone from the files after a scrub) and `skipped_key_count`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use std::{collections::BTreeSet, sync::Arc};

use samizdat::{
    ErrorKind,
    address::Address,
    device::Device,
    store::{Backend, MemoryBackend, Scrub, Table},
};

fn addr(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn receive<B: Backend, C: Backend>(to: &Device<B>, from: &Device<C>, wire: &[u8]) -> Vec<u8> {
    let pending = to.decrypt(from.address(), wire).unwrap();
    let plaintext = pending.plaintext().to_vec();
    to.commit(pending).unwrap();
    plaintext
}

#[test]
fn peers_lists_every_peer_across_pages_and_only_peers() {
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let mut expected = BTreeSet::new();
    // More peers than a page (256), some with skipped keys (a seeds row) or
    // an outbox (index and entry rows) beside their session row.
    for i in 0..300 {
        let peer = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([3; 32]),
            addr(&format!("peer {i:03}")),
            UNIX_EPOCH,
        )
        .unwrap();
        peer.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let first = peer.encrypt(bob.address(), b"first").unwrap();
        let second = peer.encrypt(bob.address(), b"second").unwrap();
        receive(&bob, &peer, &first);
        if i % 3 == 0 {
            let _skipped = peer.encrypt(bob.address(), b"skipped").unwrap();
            let third = peer.encrypt(bob.address(), b"third").unwrap();
            receive(&bob, &peer, &third);
        }
        receive(&bob, &peer, &second);
        if i % 5 == 0 {
            bob.encrypt_kept(peer.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        }
        expected.insert(peer.address().clone());
    }
    // A peer whose record holds only a trust decision.
    let carol =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([4; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    bob.trust_identity(carol.address(), carol.identity_key()).unwrap();
    expected.insert(carol.address().clone());
    let rows = bob.backend().scan(Table::Sessions).unwrap().len();
    assert_eq!(rows, 301 + 100 + 60, "seeds and outbox entry rows are there too");
    assert_eq!(bob.backend().scan(Table::Outboxes).unwrap().len(), 60);

    let listed = bob.peers().unwrap();
    assert_eq!(listed.len(), expected.len(), "each peer once");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[test]
fn delete_session_removes_every_row_of_the_peer_and_nothing_else() {
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob_backend = Arc::new(MemoryBackend::new());
    let bob =
        Device::create_in(Arc::clone(&bob_backend), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    let carol =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([3; 32]), addr("carol"), UNIX_EPOCH).unwrap();
    for peer in [&alice, &carol] {
        peer.start_session(&bob.prekey_bundle().unwrap()).unwrap();
        let hello = peer.encrypt(bob.address(), b"hello").unwrap();
        receive(&bob, peer, &hello);
    }
    // Alice's record gets skipped keys (a seeds row) and an outbox.
    let _lost = alice.encrypt(bob.address(), b"lost").unwrap();
    let late = alice.encrypt(bob.address(), b"late").unwrap();
    receive(&bob, &alice, &late);
    assert_eq!(bob.skipped_key_count(alice.address()).unwrap(), 1);
    bob.encrypt_kept(alice.address(), b"kept 1", UNIX_EPOCH + Duration::from_secs(5)).unwrap();
    bob.encrypt_kept(alice.address(), b"kept 2", UNIX_EPOCH + Duration::from_secs(6)).unwrap();
    assert_eq!(bob.outbox_len(alice.address()).unwrap(), 2);
    let before = bob_backend.snapshot();
    let rows: Vec<_> = before.keys().filter(|(t, _)| matches!(t, Table::Sessions | Table::Outboxes)).collect();
    assert_eq!(rows.len(), 6, "Alice: session, seeds, outbox index, 2 entries; Carol: session");

    assert!(bob.delete_session(alice.address()).unwrap());
    let after = bob_backend.snapshot();
    let gone: Vec<_> = before.keys().filter(|k| !after.contains_key(k)).collect();
    assert_eq!(gone.len(), 5, "the session, seeds, index and entry rows: {gone:?}");
    assert!(gone.iter().all(|(t, _)| matches!(t, Table::Sessions | Table::Outboxes)));
    // All of them under Alice's row key, and nothing else changed.
    let prefix = &gone.iter().map(|(_, k)| k).min_by_key(|k| k.len()).unwrap()[..];
    assert!(gone.iter().all(|(_, k)| k.starts_with(prefix)));
    assert!(after.iter().all(|(k, v)| before.get(k) == Some(v)));
    assert_eq!(bob.peers().unwrap(), vec![carol.address().clone()]);
    assert!(!bob.has_session(alice.address()).unwrap());
    assert_eq!(bob.peer_identity(alice.address()).unwrap(), None);
    assert_eq!((bob.outbox_len(alice.address()).unwrap(), bob.skipped_key_count(alice.address()).unwrap()), (0, 0));
    assert!(!bob.delete_session(alice.address()).unwrap(), "nothing left to delete");

    // Alice's ratchet messages open under no state (as for any peer whose
    // state is gone: the app may heal, or drop them); a new session from
    // her is taken (her identity trusted on first use again); Carol is
    // untouched.
    let wire = alice.encrypt(bob.address(), b"after the deletion").unwrap();
    assert_eq!(bob.decrypt(alice.address(), &wire).unwrap_err().kind(), ErrorKind::OutOfStep);
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wire = alice.encrypt(bob.address(), b"again").unwrap();
    assert_eq!(receive(&bob, &alice, &wire), b"again");
    let wire = carol.encrypt(bob.address(), b"carol goes on").unwrap();
    assert_eq!(receive(&bob, &carol, &wire), b"carol goes on");
}

#[test]
fn deleted_rows_leave_the_files_after_a_scrub() {
    let dir = std::env::temp_dir().join(format!("samizdat-peers-delete-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob = Device::create(dir.join("bob.db"), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    for i in 0..20 {
        let wire = alice.encrypt(bob.address(), format!("message {i}").as_bytes()).unwrap();
        receive(&bob, &alice, &wire);
        bob.encrypt_kept(alice.address(), b"kept", UNIX_EPOCH + Duration::from_secs(i)).unwrap();
    }
    let values: Vec<Vec<u8>> = bob.backend().scan(Table::Sessions).unwrap().into_iter().map(|(_, v)| v).collect();
    assert!(bob.delete_session(alice.address()).unwrap());
    assert_eq!(bob.scrub().unwrap(), Scrub::Done);
    drop(bob);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        files.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    for value in &values {
        let window = &value[25..57];
        assert!(!files.windows(32).any(|w| w == window), "a deleted row is still in the files");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn skipped_key_count_follows_the_messages() {
    let alice =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), addr("alice"), UNIX_EPOCH).unwrap();
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    assert_eq!(bob.skipped_key_count(alice.address()).unwrap(), 0, "no record");
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let wires: Vec<Vec<u8>> = (0..6).map(|i| alice.encrypt(bob.address(), &[i]).unwrap()).collect();
    receive(&bob, &alice, &wires[5]);
    assert_eq!(bob.skipped_key_count(alice.address()).unwrap(), 5);
    receive(&bob, &alice, &wires[2]);
    receive(&bob, &alice, &wires[0]);
    assert_eq!(bob.skipped_key_count(alice.address()).unwrap(), 3);
    for i in [1, 3, 4] {
        receive(&bob, &alice, &wires[i]);
    }
    assert_eq!(bob.skipped_key_count(alice.address()).unwrap(), 0);
}
