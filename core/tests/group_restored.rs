//! Issue 15, item 5: a group member whose store was restored from an older
//! copy lacks the chains it was given since. It recovers them through the
//! bounded request of PROTOCOL.md 18.7, without a person; when the restore
//! also took its pairwise session back, the sender reports the request as
//! out of step, heals (a new pairwise session, the recovery of that code),
//! and the member's next request goes through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::store::StorageKey;
use samizdat::{
    DecryptError, ErrorKind, Recovery, SessionError,
    device::{Device, DeviceError},
};
use support::{
    copy_of,
    group::{Got, World, address, missing_chain},
};

const G: &[u8] = b"restored";

/// Member 1 is restored from a backup taken before member 0 rotated its
/// chain (a removal). Member 0 believes member 1 has the new chain and
/// sends no distribution; member 1's decryption gives `missing_group_key`
/// with a request, member 0's commit of it answers, and the message
/// decrypts. Nothing but the three messages moved.
#[test]
fn a_member_restored_from_an_older_copy_asks_for_the_chain_it_lost() {
    let mut world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let first = world.send(0, G, b"first");
    assert_eq!(world.receive(0, 1, &first.message).unwrap(), Got::Group(b"first".to_vec()));
    let backup = copy_of(world.device(1).backend());

    for i in [0, 1] {
        world.device(i).remove_group_members(G, &[address(2)]).unwrap();
    }
    let second = world.send(0, G, b"second");
    assert_eq!(world.receive(0, 1, &second.message).unwrap(), Got::Group(b"second".to_vec()));

    // The restore: member 1's app also restores its roster (member 2 out).
    world.devices[1] = Device::open_in(backup, &StorageKey::from_bytes([2; 32])).unwrap();
    world.device(1).remove_group_members(G, &[address(2)]).unwrap();
    let third = world.device(0).group_encrypt(G, b"third").unwrap();
    assert!(third.distributions.is_empty(), "member 0 believes member 1 has its chain");

    let result = world.receive(0, 1, &third.message);
    let kind = result.as_ref().map_err(DeviceError::kind).unwrap_err();
    assert_eq!((kind, kind.recovery()), (ErrorKind::MissingGroupKey, Recovery::RetryLater));
    let request = missing_chain(result).unwrap().expect("a request");
    let Got::Control(Some(answer)) = world.receive(1, 0, &request).unwrap() else { panic!("no answer") };
    assert_eq!(world.receive(0, 1, &answer.message).unwrap(), Got::Control(None));
    assert_eq!(world.receive(0, 1, &third.message).unwrap(), Got::Group(b"third".to_vec()));
}

/// The same restore, but member 1 had also sent to member 0 after its
/// backup (its own first group message, whose distribution went over the
/// pairwise session). The restored member 1 encrypts its request on a
/// pairwise counter it had used: member 0 reports it as `Rollback`,
/// `out_of_step`, and heals as the code says (a new session from member 1's
/// bundle, and a message on it). Member 1 reads that message, asks again
/// (its second request of at most `MAX_GROUP_KEY_REQUESTS`), on the new
/// session: member 0 answers, and member 1 reads. No person, and every step
/// is bounded.
#[test]
fn a_member_restored_after_it_sent_heals_its_session_then_gets_the_chain() {
    let mut world = World::new(3);
    world.create(G, &[0, 1, 2]);
    let first = world.send(0, G, b"first");
    assert_eq!(world.receive(0, 1, &first.message).unwrap(), Got::Group(b"first".to_vec()));
    let backup = copy_of(world.device(1).backend());
    // After the backup, member 1 sends: its chain goes to member 0 over the
    // pairwise session.
    let from_1 = world.send(1, G, b"from member 1");
    assert_eq!(world.receive(1, 0, &from_1.message).unwrap(), Got::Group(b"from member 1".to_vec()));
    for i in [0, 1] {
        world.device(i).remove_group_members(G, &[address(2)]).unwrap();
    }
    let second = world.send(0, G, b"second");
    assert_eq!(world.receive(0, 1, &second.message).unwrap(), Got::Group(b"second".to_vec()));

    world.devices[1] = Device::open_in(backup, &StorageKey::from_bytes([2; 32])).unwrap();
    world.device(1).remove_group_members(G, &[address(2)]).unwrap();
    let third = world.device(0).group_encrypt(G, b"third").unwrap();

    // The first request: member 1's pairwise state went back.
    let request = missing_chain(world.receive(0, 1, &third.message)).unwrap().expect("a request");
    let refused = world.receive(1, 0, &request).unwrap_err();
    assert!(
        matches!(refused, DeviceError::Session(SessionError::Decrypt(DecryptError::Rollback { .. }))),
        "{refused:?}"
    );
    assert_eq!((refused.kind(), refused.kind().recovery()), (ErrorKind::OutOfStep, Recovery::Heal));

    // Member 0 heals: a new session from member 1's bundle, and a message on it.
    world.device(0).start_session(&world.device(1).prekey_bundle().unwrap()).unwrap();
    let hello = world.device(0).encrypt(&address(1), b"new session").unwrap();
    assert_eq!(world.receive(0, 1, &hello).unwrap(), Got::Direct(b"new session".to_vec()));

    // Member 1 tries the message again: a new request, on the new session.
    let again = missing_chain(world.receive(0, 1, &third.message)).unwrap().expect("a second request");
    assert_ne!(again, request);
    let Got::Control(Some(answer)) = world.receive(1, 0, &again).unwrap() else { panic!("no answer") };
    assert_eq!(world.receive(0, 1, &answer.message).unwrap(), Got::Control(None));
    assert_eq!(world.receive(0, 1, &third.message).unwrap(), Got::Group(b"third".to_vec()));
}
