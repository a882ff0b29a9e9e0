//! A device in a group with chains of its members, for the `group_decrypt`
//! target: any bytes, and the messages genuinely sent to it altered, are
//! decrypted as coming from its peers.
//!
//! The fixture is made once per process with the device API (whose keys
//! come from the OS: a run repeats its events, not its key bytes), then
//! Alice's store is copied for every input. Alice is in a group with Bob
//! and Carol:
//!
//! - Bob gave Alice his chain and sent six group messages; Alice decrypted
//!   the first and the third (the second is a skipped key, the others are
//!   ahead);
//! - Carol sent two group messages; her distribution to Alice is still in
//!   flight (Alice lacks her chain until it arrives);
//! - Alice sent a message whose distribution to Carol was lost: Carol's
//!   request for the chain is in flight to Alice (its commit answers it);
//! - Dave, not a member on Alice's side (he thinks he is), sent a group
//!   message; Bob sent Alice a direct message; Eve has no session.
//!
//! Asserted on every decryption (PROTOCOL.md 18.5 to 18.7, 14.11):
//! - nothing panics, and no refusal is a store error (the store is sound);
//! - a refused message changes no row, but for a missing chain's request
//!   (then only the peer's session rows and one group row change);
//! - `decrypt` itself writes nothing else;
//! - an accepted message is one of the genuine ones, byte for byte, from
//!   its sender, of its kind and plaintext, not committed before in this
//!   input; its commit succeeds (answering only the request), and the same
//!   bytes are then refused without a change.

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    collections::BTreeSet,
    sync::{Arc, OnceLock},
};

use prost::Message as _;
use samizdat::{
    address::Address,
    device::{Device, DeviceError, GroupError, MessageKind},
    store::{MemoryBackend, Table},
};
use samizdat_proto::wire as pb;

use crate::{input::Reader, rows::Rows, world::store_of};

/// The group.
pub const GROUP: &[u8] = b"fuzz group";
/// Alice's storage key.
const ALICE_KEY: StorageKey = StorageKey::from_bytes([0x61; 32]);
/// Events per input at most.
const MAX_EVENTS: usize = 16;

/// Alice's peers, by index: Bob, Carol, Dave (sessions), Eve (none).
pub fn peer(index: usize) -> Address {
    let name = ["bob", "carol", "dave", "eve"].get(index).copied().unwrap_or("eve");
    Address::new(name, 1).expect("a valid address")
}

/// A message sent to Alice.
#[derive(Debug, Clone)]
pub struct Genuine {
    /// Its sender (an index of [`peer`]).
    pub peer: usize,
    /// The wire bytes.
    pub bytes: Vec<u8>,
    /// What it is, and its plaintext (empty for control messages).
    pub kind: MessageKind,
    pub plaintext: Vec<u8>,
    /// Whether its commit answers (a request).
    pub answers: bool,
}

/// Alice's store and the messages sent to her.
pub struct Fixture {
    pub rows: Rows,
    pub genuine: Vec<Genuine>,
    /// The genuine messages Alice committed already.
    pub committed: BTreeSet<usize>,
}

type Store = Arc<MemoryBackend>;

fn device(name: &str, key: u8) -> Device<Store> {
    Device::create_in(
        Arc::new(MemoryBackend::new()),
        &StorageKey::from_bytes([key; 32]),
        Address::new(name, 1).expect("an address"),
        UNIX_EPOCH,
    )
    .expect("a new device")
}

/// A session between `a` and `b`, both ways.
fn connect(a: &Device<Store>, b: &Device<Store>) {
    a.start_session(&b.prekey_bundle().expect("a bundle")).expect("a session");
    let hello = a.encrypt(b.address(), b"hello").expect("an encryption");
    b.commit(b.decrypt(a.address(), &hello).expect("hello")).expect("a commit");
    let back = b.encrypt(a.address(), b"hello back").expect("an encryption");
    a.commit(a.decrypt(b.address(), &back).expect("hello back")).expect("a commit");
}

/// Decrypts and commits at `to`.
fn receive(to: &Device<Store>, from: &Address, bytes: &[u8]) {
    to.commit(to.decrypt(from, bytes).expect("a genuine message")).expect("a commit");
}

/// The fixture (made on first use).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let alice = Device::create_in(
            Arc::new(MemoryBackend::new()),
            &ALICE_KEY,
            Address::new("alice", 1).expect("an address"),
            UNIX_EPOCH,
        )
        .expect("alice");
        let bob = device("bob", 0x62);
        let carol = device("carol", 0x63);
        let dave = device("dave", 0x64);
        for (a, b) in [(&alice, &bob), (&alice, &carol), (&alice, &dave), (&bob, &carol)] {
            connect(a, b);
        }
        let addr = |d: &Device<Store>| d.address().clone();
        alice.create_group(GROUP, &[addr(&bob), addr(&carol)]).expect("a group");
        bob.create_group(GROUP, &[addr(&alice), addr(&carol)]).expect("a group");
        carol.create_group(GROUP, &[addr(&alice), addr(&bob)]).expect("a group");
        dave.create_group(GROUP, &[addr(&alice)]).expect("a group");
        let mut genuine = Vec::new();
        let mut committed = BTreeSet::new();
        let group = |peer, bytes, plaintext: &[u8]| Genuine {
            peer,
            bytes,
            kind: MessageKind::Group,
            plaintext: plaintext.to_vec(),
            answers: false,
        };
        // Bob: six messages, Alice has his chain and read the first and the third.
        for i in 0..6u8 {
            let text = [b'b', b'0' + i];
            let sent = bob.group_encrypt(GROUP, &text).expect("bob sends");
            for d in &sent.distributions {
                let to = if d.to == addr(&alice) { &alice } else { &carol };
                receive(to, &addr(&bob), &d.message);
            }
            if i == 0 || i == 2 {
                receive(&alice, &addr(&bob), &sent.message);
                committed.insert(genuine.len());
            }
            genuine.push(group(0, sent.message, &text));
        }
        // Carol: two messages; her chain is on its way to Alice.
        for i in 0..2u8 {
            let text = [b'c', b'0' + i];
            let sent = carol.group_encrypt(GROUP, &text).expect("carol sends");
            for d in &sent.distributions {
                if d.to == addr(&alice) {
                    genuine.push(Genuine {
                        peer: 1,
                        bytes: d.message.clone(),
                        kind: MessageKind::Control,
                        plaintext: Vec::new(),
                        answers: false,
                    });
                } else {
                    receive(&bob, &addr(&carol), &d.message);
                }
            }
            genuine.push(group(1, sent.message, &text));
        }
        // Alice: her distribution to Carol is lost; Carol asks for it.
        let sent = alice.group_encrypt(GROUP, b"a0").expect("alice sends");
        for d in sent.distributions.iter().filter(|d| d.to == addr(&bob)) {
            receive(&bob, &addr(&alice), &d.message);
        }
        let request = match carol.decrypt(&addr(&alice), &sent.message) {
            Err(DeviceError::Group(GroupError::MissingChain { request: Some(request), .. })) => request,
            other => panic!("carol should ask for the chain: {other:?}"),
        };
        genuine.push(Genuine {
            peer: 1,
            bytes: request,
            kind: MessageKind::Control,
            plaintext: Vec::new(),
            answers: true,
        });
        // Dave, a member only on his side.
        let sent = dave.group_encrypt(GROUP, b"d0").expect("dave sends");
        genuine.push(group(2, sent.message, b"d0"));
        // A direct message of Bob.
        let direct = bob.encrypt(&addr(&alice), b"direct").expect("bob's direct message");
        genuine.push(Genuine {
            peer: 0,
            bytes: direct,
            kind: MessageKind::Direct,
            plaintext: b"direct".to_vec(),
            answers: false,
        });
        Fixture { rows: alice.backend().snapshot(), genuine, committed }
    })
}

/// Alters one field of a group message's encoding.
fn edit_group(bytes: &[u8], reader: &mut Reader<'_>) -> Option<Vec<u8>> {
    let envelope = pb::Envelope::decode(bytes.get(1..)?).ok()?;
    let Some(pb::envelope::Body::Group(mut group)) = envelope.body else { return None };
    match reader.u8() % 6 {
        0 => group.group_id = reader.chunk().to_vec(),
        1 => group.chain_id ^= reader.u32(),
        2 => group.iteration = reader.u32(),
        3 => group.salt = reader.chunk().to_vec(),
        4 => {
            let (at, with) = (usize::from(reader.u16()), reader.chunk());
            for (k, byte) in with.iter().enumerate() {
                let len = group.body.len().max(1);
                if let Some(b) = group.body.get_mut((at + k) % len) {
                    *b ^= byte;
                }
            }
        }
        _ => group.signature = reader.chunk().to_vec(),
    }
    let mut out = vec![*bytes.first()?];
    pb::Envelope { body: Some(pb::envelope::Body::Group(group)) }.encode(&mut out).ok()?;
    Some(out)
}

/// What the events of an input gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes {
    /// Messages decrypted and committed.
    pub accepted: usize,
    /// Missing chains that made a request.
    pub requests: usize,
    /// Other refusals.
    pub refused: usize,
}

/// Runs the events of `input` against a copy of Alice's store.
pub fn run(input: &[u8]) -> Outcomes {
    let fixture = fixture();
    let store = store_of(&fixture.rows);
    let alice = Device::open_in(store.clone(), &ALICE_KEY).expect("alice's store opens");
    let mut committed = fixture.committed.clone();
    let mut reader = Reader::new(input);
    let genuine = &fixture.genuine;
    let mut outcomes = Outcomes::default();
    for _ in 0..MAX_EVENTS {
        if reader.is_empty() {
            break;
        }
        let event = reader.u8() % 5;
        let k = reader.below(genuine.len());
        let original = &genuine[k];
        let (from, bytes) = match event {
            0 => (original.peer, original.bytes.clone()),
            1 => {
                let mut bytes = original.bytes.clone();
                let at = usize::from(reader.u16()) % bytes.len();
                bytes[at] ^= reader.u8() | 1;
                (original.peer, bytes)
            }
            2 => match edit_group(&original.bytes, &mut reader) {
                Some(bytes) => (original.peer, bytes),
                None => continue,
            },
            3 => (reader.below(4), reader.chunk().to_vec()),
            _ => {
                let mut bytes = original.bytes.clone();
                let cut = usize::from(reader.u16()) % (bytes.len() + 1);
                bytes.truncate(cut);
                bytes.extend_from_slice(reader.chunk());
                (original.peer, bytes)
            }
        };
        match deliver(&alice, &store, genuine, &mut committed, from, &bytes) {
            Delivered::Accepted => outcomes.accepted += 1,
            Delivered::Request => outcomes.requests += 1,
            Delivered::Refused => outcomes.refused += 1,
        }
    }
    outcomes
}

enum Delivered {
    Accepted,
    Request,
    Refused,
}

fn deliver(
    alice: &Device<Store>,
    store: &Store,
    genuine: &[Genuine],
    committed: &mut BTreeSet<usize>,
    from: usize,
    bytes: &[u8],
) -> Delivered {
    let before = store.snapshot();
    let result = alice.decrypt(&peer(from), bytes);
    let after = store.snapshot();
    let pending = match result {
        Err(DeviceError::Store(error)) => panic!("a store error on a sound store: {error:?}"),
        Err(DeviceError::Group(GroupError::MissingChain { request: Some(_), .. })) => {
            // The request: the peer's session (and its seeds row) and the member row.
            let changed: Vec<&(Table, Vec<u8>)> =
                after.iter().filter(|(key, value)| before.get(*key) != Some(*value)).map(|(key, _)| key).collect();
            assert!(before.keys().all(|key| after.contains_key(key)), "a request deleted a row");
            assert!(changed.len() <= 3, "a request changed {} rows", changed.len());
            assert!(
                changed.iter().all(|(table, _)| matches!(table, Table::Sessions | Table::Groups)),
                "a request changed a row of another table"
            );
            return Delivered::Request;
        }
        Err(error) => {
            assert!(after == before, "a refused message ({error:?}) changed the store");
            return Delivered::Refused;
        }
        Ok(pending) => pending,
    };
    assert!(after == before, "decrypt wrote");
    let k = genuine
        .iter()
        .position(|g| g.peer == from && g.bytes == bytes)
        .unwrap_or_else(|| panic!("accepted a message nobody sent ({:?} from peer {from})", pending.kind()));
    let message = &genuine[k];
    assert!(!committed.contains(&k), "genuine message {k} decrypted again after its commit");
    assert!(pending.kind() == message.kind, "message {k} decrypted as {:?}", pending.kind());
    assert!(pending.plaintext() == message.plaintext.as_slice(), "message {k}: another plaintext");
    if message.kind != MessageKind::Direct {
        assert!(pending.group_id() == Some(GROUP), "message {k}: another group");
    }
    let answer = alice.commit(pending).expect("a commit on an unchanged store");
    assert!(answer.is_empty() || message.answers, "message {k} answered");
    committed.insert(k);
    let before = store.snapshot();
    let again = alice.decrypt(&peer(from), bytes);
    assert!(again.is_err(), "message {k} decrypted again after its commit");
    assert!(store.snapshot() == before, "a refused replay changed the store");
    Delivered::Accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genuine_messages_decrypt_once_and_what_lacks_its_chain_asks_for_it() {
        // Bob's second and fourth, Carol's second (no chain yet: a request),
        // Carol's request (answered), Dave's (not a member), Bob's direct message.
        let outcomes = run(&[0, 1, 0, 3, 0, 8, 0, 9, 0, 10, 0, 11]);
        assert_eq!(outcomes, Outcomes { accepted: 4, requests: 1, refused: 1 });
        // Carol's chain, then her messages; the second again is a duplicate.
        let outcomes = run(&[0, 6, 0, 7, 0, 8, 0, 8]);
        assert_eq!(outcomes, Outcomes { accepted: 3, requests: 0, refused: 1 });
        // Bob's first, decrypted before the input: a duplicate.
        assert_eq!(run(&[0, 0]), Outcomes { accepted: 0, requests: 0, refused: 1 });
    }

    #[test]
    fn an_altered_message_is_refused_without_a_change() {
        // A byte of Bob's second message, each field of it.
        for script in [&[1u8, 1, 40, 0, 1][..], &[2, 1, 2, 5, 0, 0, 0], &[2, 1, 5, 1, 0, 0xff], &[4, 1, 10, 0, 0, 0]] {
            assert_eq!(run(script), Outcomes { accepted: 0, requests: 0, refused: 1 }, "{script:?}");
        }
        // A changed chain id asks for that chain.
        assert_eq!(run(&[2, 1, 1, 1, 0, 0, 0]), Outcomes { accepted: 0, requests: 1, refused: 0 });
    }
}
