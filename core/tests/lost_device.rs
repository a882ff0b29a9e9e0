//! Removing a lost device for good (issue 17; PROTOCOL.md 23.9): a
//! remaining device replaces the user identity, hands the new one over to
//! the other remaining devices, and contacts trust it after comparing the
//! new safety number. The lost device keeps the old user key; from then on
//! nothing it signs or sends is accepted by our own devices, nor by a
//! contact that trusted the new identity, and it reads no group message.
//!
//! Alice: phone (1), laptop (2), tablet (3, the lost one). Bob: one device.
//! Every refusal is checked to leave every row of the store as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use samizdat::{
    ErrorKind, SessionError,
    device::{Device, DeviceError, MessageKind},
    store::MemoryBackend,
    user::{DeviceListError, UserIdentityKeyPair},
};
use support::{
    Got, receive_kind,
    users::{device, list, refusal, replace_lost, rows, user_key},
};

type Dev = Device<MemoryBackend>;

struct World {
    phone: Dev,
    laptop: Dev,
    tablet: Dev,
    bob: Dev,
    alice: UserIdentityKeyPair,
}

/// Alice's three devices hold her list (version 1) and a session with each
/// other, used in both directions; Bob pinned Alice from the bundles and has
/// a session with each of her devices, used in both directions.
fn world() -> World {
    let (phone, laptop, tablet) = (device("alice", 1, 0xA1), device("alice", 2, 0xA2), device("alice", 3, 0xA3));
    let bob = device("bob", 1, 0xB1);
    let alice = user_key(0xA0);
    let alice_list = list(&alice, "alice", 1, &[&phone, &laptop, &tablet]);
    for d in [&phone, &laptop, &tablet] {
        d.set_device_list(&alice_list).unwrap();
    }
    let bob_list = list(&user_key(0xB0), "bob", 1, &[&bob]);
    bob.set_device_list(&bob_list).unwrap();
    for d in [&phone, &laptop, &tablet] {
        d.update_device_list(&bob_list).unwrap();
    }
    for (from, to) in
        [(&laptop, &phone), (&laptop, &tablet), (&phone, &tablet), (&bob, &phone), (&bob, &laptop), (&bob, &tablet)]
    {
        from.start_session(&to.prekey_bundle().unwrap()).unwrap();
        exchange(from, to);
    }
    World { phone, laptop, tablet, bob, alice }
}

/// One message each way between two devices, read and committed.
fn exchange(a: &Dev, b: &Dev) {
    let hello = a.encrypt(b.address(), b"hello").unwrap();
    assert_eq!(receive_kind(b, a, &hello).unwrap(), Got::App(b"hello".to_vec()));
    let back = b.encrypt(a.address(), b"hello back").unwrap();
    assert_eq!(receive_kind(a, b, &back).unwrap(), Got::App(b"hello back".to_vec()));
}

/// Decrypt and commit a handover as an app does: the new user identity
/// kept first, then the commit. Returns the key pair kept.
fn take_handover(to: &Dev, from: &Dev, wire: &[u8]) -> Result<UserIdentityKeyPair, DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    assert_eq!(pending.kind(), MessageKind::UserIdentity);
    assert!(pending.plaintext().is_empty());
    let kept = UserIdentityKeyPair::from_seed(&pending.new_user_identity().unwrap().user_identity().to_seed());
    to.commit(pending)?;
    Ok(kept)
}

/// The whole story: the laptop replaces Alice's identity without the
/// tablet; the phone takes the handover; the tablet, holding the old key,
/// can neither come back into her list nor speak to her devices; Bob
/// refuses the new list until he trusts it (the safety number changed),
/// and then refuses the tablet and every list of the old key.
#[test]
fn a_lost_device_is_removed_for_good() {
    let w = world();
    let number_before = w.bob.user_safety_number("alice").unwrap();
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    assert!(replaced.list_changed);
    assert_eq!(replaced.removed, vec![(3, w.tablet.identity_key())]);
    assert!(replaced.missing.is_empty());
    assert_eq!(replaced.handovers.len(), 1);
    assert_eq!(&replaced.handovers[0].to, w.phone.address());
    let new_list = replaced.device_list.verify().unwrap();
    assert_eq!(new_list.version(), 2);
    assert_eq!(*new_list.user_identity_key(), fresh.public_key());
    assert_eq!(new_list.devices(), &[(1, w.phone.identity_key()), (2, w.laptop.identity_key())]);
    assert_eq!(w.laptop.device_list().unwrap(), Some(replaced.device_list.clone()));

    // The phone reads the handover: the removed devices named, the key given.
    let pending = w.phone.decrypt(w.laptop.address(), &replaced.handovers[0].message).unwrap();
    let new_identity = pending.new_user_identity().unwrap();
    assert_eq!(new_identity.removed(), &[(3, w.tablet.identity_key())]);
    assert_eq!(new_identity.device_list(), &replaced.device_list);
    assert_eq!(new_identity.user_identity().public_key(), fresh.public_key());
    // Nothing is written before the commit.
    assert_ne!(w.phone.device_list().unwrap(), Some(replaced.device_list.clone()));
    w.phone.commit(pending).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list.clone()));

    // The tablet's holder has the old key: a newer list under it that names
    // the tablet again, and a ghost, is refused by Alice's devices.
    let ghost = device("alice", 9, 0x99);
    let readded = list(&w.alice, "alice", 7, &[&w.phone, &w.laptop, &w.tablet, &ghost]);
    for d in [&w.phone, &w.laptop] {
        let before = rows(d);
        let error = d.update_device_list(&readded).unwrap_err();
        assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::UntrustedUser { offered: w.alice.public_key() });
        assert_eq!(rows(d), before);
    }
    // Nor can it speak to them.
    let from_tablet = w.tablet.encrypt(w.phone.address(), b"it's me").unwrap();
    let before = rows(&w.phone);
    assert_eq!(
        refusal(w.phone.decrypt(w.tablet.address(), &from_tablet)),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
    assert_eq!(rows(&w.phone), before);

    // Bob: the new list is a new user identity, refused until he trusts it;
    // meanwhile nothing changes for him.
    let before = rows(&w.bob);
    let error = w.bob.update_device_list(&replaced.device_list).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UntrustedIdentity);
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::UntrustedUser { offered: fresh.public_key() });
    assert_eq!(rows(&w.bob), before);
    // The users compare the new safety number; Bob trusts it.
    w.bob.trust_new_user_identity(&replaced.device_list).unwrap();
    let number_after = w.bob.user_safety_number("alice").unwrap();
    assert_ne!(number_after.digits(), number_before.digits());
    // The phone (holding the new list) computes the same number.
    assert_eq!(w.phone.user_safety_number("bob").unwrap().digits(), number_after.digits());
    // Now Bob refuses the tablet and the old key's list, whatever its version.
    let before = rows(&w.bob);
    assert_eq!(
        refusal(w.bob.update_device_list(&readded)),
        DeviceListError::UntrustedUser { offered: w.alice.public_key() }
    );
    let to_bob = w.tablet.encrypt(w.bob.address(), b"send me your files").unwrap();
    assert_eq!(refusal(w.bob.decrypt(w.tablet.address(), &to_bob)), DeviceListError::UnlistedDevice { device_id: 3 });
    assert!(matches!(w.bob.encrypt(w.tablet.address(), b"x"), Err(DeviceError::DeviceList(_))));
    assert_eq!(rows(&w.bob), before);
    // The remaining devices go on as before.
    let hello = w.phone.encrypt(w.bob.address(), b"new phone who dis").unwrap();
    assert_eq!(receive_kind(&w.bob, &w.phone, &hello).unwrap(), Got::App(b"new phone who dis".to_vec()));
    let fan = w.bob.encrypt_to_user("alice", b"to both").unwrap();
    assert_eq!(fan.messages.iter().map(|m| m.to.device_id()).collect::<Vec<_>>(), vec![1, 2]);
}

/// Bob's group addresses the user Alice: once he trusts her new identity,
/// the group follows it (the tablet is removed, his chain rotates), and the
/// tablet reads nothing he sends after.
#[test]
fn a_contacts_group_drops_the_lost_device_once_the_new_identity_is_trusted() {
    let w = world();
    let group = b"book club";
    w.bob.create_group(group, &[]).unwrap();
    w.bob.add_group_users(group, &["alice"]).unwrap();
    for d in [&w.phone, &w.laptop, &w.tablet] {
        d.create_group(group, &[w.bob.address().clone()]).unwrap();
    }
    assert_eq!(w.bob.group_members(group).unwrap().len(), 3);
    let first = w.bob.group_encrypt(group, b"before").unwrap();
    let tablet_got = |send: &samizdat::device::GroupSend| {
        for d in send.distributions.iter().filter(|d| d.to == *w.tablet.address()) {
            receive_kind(&w.tablet, &w.bob, &d.message).unwrap();
        }
        receive_kind(&w.tablet, &w.bob, &send.message)
    };
    assert_eq!(tablet_got(&first).unwrap(), Got::Group(b"before".to_vec()));

    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    w.bob.trust_new_user_identity(&replaced.device_list).unwrap();
    let members = w.bob.group_members(group).unwrap();
    assert_eq!(members.iter().map(|a| a.device_id()).collect::<Vec<_>>(), vec![1, 2]);
    let after = w.bob.group_encrypt(group, b"after").unwrap();
    // A new chain for the two remaining devices, none for the tablet.
    assert_eq!(after.distributions.iter().map(|d| d.to.device_id()).collect::<Vec<_>>(), vec![1, 2]);
    assert!(tablet_got(&after).is_err());
    for d in &after.distributions {
        let to = if d.to.device_id() == 1 { &w.phone } else { &w.laptop };
        receive_kind(to, &w.bob, &d.message).unwrap();
    }
    assert_eq!(receive_kind(&w.laptop, &w.bob, &after.message).unwrap(), Got::Group(b"after".to_vec()));
}

/// Our own groups follow our own list: once the phone took the handover,
/// its group drops the tablet with a rotation.
#[test]
fn our_own_groups_drop_the_lost_device_with_the_handover() {
    let w = world();
    let group = b"family";
    w.phone.create_group(group, &[]).unwrap();
    w.phone.add_group_users(group, &["alice"]).unwrap();
    assert_eq!(w.phone.group_members(group).unwrap().len(), 2);
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    take_handover(&w.phone, &w.laptop, &replaced.handovers[0].message).unwrap();
    assert_eq!(w.phone.group_members(group).unwrap(), vec![w.laptop.address().clone()]);
}

/// Called again with the same key pair, the call makes the handovers again
/// without a new list (after a session with a missing device was started,
/// or when a handover was lost); the device that took the first one takes
/// the second as no change.
#[test]
fn replacing_again_with_the_same_key_makes_the_handovers_again() {
    let (phone, laptop, tablet, desktop) =
        (device("alice", 1, 0xA1), device("alice", 2, 0xA2), device("alice", 3, 0xA3), device("alice", 4, 0xA4));
    let alice = user_key(0xA0);
    let alice_list = list(&alice, "alice", 1, &[&phone, &laptop, &tablet, &desktop]);
    for d in [&phone, &laptop, &tablet, &desktop] {
        d.set_device_list(&alice_list).unwrap();
    }
    laptop.start_session(&phone.prekey_bundle().unwrap()).unwrap();
    let fresh = user_key(0xA9);
    let first = replace_lost(&laptop, &fresh, &[3]).unwrap();
    assert_eq!(first.missing, vec![desktop.address().clone()]);
    take_handover(&phone, &laptop, &first.handovers[0].message).unwrap();

    laptop.start_session(&desktop.prekey_bundle().unwrap()).unwrap();
    let again = replace_lost(&laptop, &fresh, &[3]).unwrap();
    assert!(!again.list_changed);
    assert!(again.removed.is_empty() && again.missing.is_empty());
    assert_eq!(again.device_list, first.device_list);
    assert_eq!(again.handovers.iter().map(|h| h.to.device_id()).collect::<Vec<_>>(), vec![1, 4]);
    // The phone has the list already: no change, the session advances.
    let kept = take_handover(&phone, &laptop, &again.handovers[0].message).unwrap();
    assert_eq!(kept.public_key(), fresh.public_key());
    assert_eq!(phone.device_list().unwrap(), Some(first.device_list.clone()));
    // The desktop took a list of the old key at a higher version meanwhile
    // (the lost device's holder signed it): the handover made again still
    // names the key it replaces (kept in the laptop's own row), so the
    // desktop takes it as new.
    desktop.update_device_list(&list(&alice, "alice", 5, &[&phone, &laptop, &tablet, &desktop])).unwrap();
    let pending = desktop.decrypt(laptop.address(), &again.handovers[1].message).unwrap();
    assert_eq!(pending.new_user_identity().unwrap().replaced(), Some(&alice.public_key()));
    assert_eq!(pending.new_user_identity().unwrap().removed(), &[(3, tablet.identity_key())]);
    desktop.commit(pending).unwrap();
    assert_eq!(desktop.device_list().unwrap(), Some(first.device_list));
}

/// The call's refusals, each leaving every row as it was: the old key while
/// a lost device is listed, no own list.
#[test]
fn the_calls_refusals_change_nothing() {
    let w = world();
    let before = rows(&w.laptop);
    let error = replace_lost(&w.laptop, &w.alice, &[3]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::SameUserIdentity);
    // The same key with every device kept is a call made again (nothing
    // changes); with one not kept, refused.
    let error = w.laptop.replace_user_identity(&w.alice, &[1]).unwrap_err();
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::SameUserIdentity);
    assert_eq!(rows(&w.laptop), before);
    let lonely = device("carol", 1, 0xC1);
    let before = rows(&lonely);
    assert_eq!(refusal(replace_lost(&lonely, &user_key(0xC9), &[])), DeviceListError::NoOwnList);
    assert_eq!(rows(&lonely), before);
}

/// A handover delayed past a later replacement is an old list: refused
/// (`Rollback`) without a change, and the later identity stands. A
/// handover replayed is a duplicate.
#[test]
fn an_old_or_replayed_handover_changes_nothing() {
    let w = world();
    let first = replace_lost(&w.laptop, &user_key(0xA8), &[]).unwrap();
    let second = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let later = &second.handovers[0].message;
    take_handover(&w.phone, &w.laptop, later).unwrap();
    let before = rows(&w.phone);
    assert_eq!(
        refusal(w.phone.decrypt(w.laptop.address(), &first.handovers[0].message)),
        DeviceListError::Rollback { seen: 3, offered: 2 }
    );
    assert!(matches!(w.phone.decrypt(w.laptop.address(), later), Err(DeviceError::Session(SessionError::Decrypt(_)))));
    assert_eq!(rows(&w.phone), before);
    assert_eq!(w.phone.device_list().unwrap(), Some(second.device_list));
}

/// The race the user settles: the thief's tablet replaces the identity
/// first (a list without the laptop) and the phone takes it; the laptop's
/// own handover then comes from a device the phone's list no longer names,
/// and is refused. The phone's app has shown "your laptop was removed by
/// your tablet": the user knows which device they lost.
#[test]
fn the_first_handover_wins_and_names_the_device_that_sent_it() {
    let w = world();
    let thief = replace_lost(&w.tablet, &user_key(0x66), &[2]).unwrap();
    let phone_handover = thief.handovers.iter().find(|h| h.to == *w.phone.address()).unwrap();
    let pending = w.phone.decrypt(w.tablet.address(), &phone_handover.message).unwrap();
    assert_eq!(pending.peer(), w.tablet.address());
    assert_eq!(pending.new_user_identity().unwrap().removed(), &[(2, w.laptop.identity_key())]);
    w.phone.commit(pending).unwrap();
    let genuine = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let before = rows(&w.phone);
    assert_eq!(
        refusal(w.phone.decrypt(w.laptop.address(), &genuine.handovers[0].message)),
        DeviceListError::UnlistedDevice { device_id: 2 }
    );
    assert_eq!(rows(&w.phone), before);
}

/// Our own row rewritten between the decryption and the commit (another
/// handle took a newer list under the old key, as the lost device's holder
/// can sign one): the pending is stale, nothing is written, and the handover
/// decrypts again and is taken, since it names the key it replaces
/// (whatever version that key signed meanwhile).
#[test]
fn a_handover_whose_own_row_changed_is_stale() {
    let w = world();
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let pending = w.phone.decrypt(w.laptop.address(), &replaced.handovers[0].message).unwrap();
    assert_eq!(pending.new_user_identity().unwrap().replaced(), Some(&w.alice.public_key()));
    w.phone.update_device_list(&list(&w.alice, "alice", 5, &[&w.phone, &w.laptop, &w.tablet])).unwrap();
    let before = rows(&w.phone);
    assert!(matches!(w.phone.commit(pending), Err(DeviceError::Session(SessionError::StalePending))));
    assert_eq!(rows(&w.phone), before);
    let kept = take_handover(&w.phone, &w.laptop, &replaced.handovers[0].message).unwrap();
    assert_eq!(kept.public_key(), fresh.public_key());
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list));
}

/// The user names the devices to keep: a device the lost one's holder
/// listed meanwhile under the old key (a ghost our own devices took) is
/// dropped from the new list and gets no handover, unless the user keeps it.
#[test]
fn a_ghost_listed_under_the_old_key_is_not_kept() {
    let w = world();
    let ghost = device("alice", 9, 0x99);
    let with_ghost = list(&w.alice, "alice", 2, &[&w.phone, &w.laptop, &w.tablet, &ghost]);
    w.laptop.update_device_list(&with_ghost).unwrap();
    w.laptop.start_session(&ghost.prekey_bundle().unwrap()).unwrap();
    let replaced = w.laptop.replace_user_identity(&user_key(0xA9), &[1]).unwrap();
    assert_eq!(replaced.removed, vec![(3, w.tablet.identity_key()), (9, ghost.identity_key())]);
    assert_eq!(replaced.handovers.iter().map(|h| h.to.device_id()).collect::<Vec<_>>(), vec![1]);
    assert!(replaced.missing.is_empty());
    let devices = replaced.device_list.verify().unwrap().devices().to_vec();
    assert_eq!(devices, vec![(1, w.phone.identity_key()), (2, w.laptop.identity_key())]);
}

/// A list at the last version under the old key (signed by the lost device's
/// holder) blocks nothing: the new identity starts again at version 1, and
/// the handover is taken because it names the key it replaces.
#[test]
fn a_list_at_the_last_version_does_not_block_the_replacement() {
    let w = world();
    let last = list(&w.alice, "alice", u64::MAX, &[&w.phone, &w.laptop, &w.tablet]);
    w.laptop.update_device_list(&last).unwrap();
    w.phone.update_device_list(&last).unwrap();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    assert_eq!(replaced.device_list.verify().unwrap().version(), 1);
    take_handover(&w.phone, &w.laptop, &replaced.handovers[0].message).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list));
}

/// A handover is control content: `decrypt_batch` leaves it for `decrypt`.
#[test]
fn a_handover_is_not_read_in_a_batch() {
    let w = world();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let message = replaced.handovers[0].message.clone();
    let batch = w.phone.decrypt_batch(&[(w.laptop.address().clone(), message.clone())]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::NotInBatch)));
    take_handover(&w.phone, &w.laptop, &message).unwrap();
}

/// Forged handovers sealed by hand on real sessions (what a modified
/// library can send): from a contact (H5), naming another user (H8), not
/// naming the receiver (H9), dropping the sender (H10), with a seed that is
/// not the list's key (H4), with a list that does not verify (H3). Each is
/// refused with its error, every row unchanged.
#[cfg(feature = "hazmat")]
type Check = Box<dyn Fn(&DeviceError) -> bool>;

#[cfg(feature = "hazmat")]
#[test]
fn forged_handovers_are_refused_and_change_nothing() {
    use samizdat::{DecodeError, hazmat::handover_content};
    use support::users::forged_control;

    let w = world();
    let fresh = user_key(0xA9);
    let content = |uik: &UserIdentityKeyPair, signed: &samizdat::user::SignedDeviceList| {
        handover_content(uik.to_seed().as_slice(), &signed.to_bytes(), &[])
    };
    let good = list(&fresh, "alice", 2, &[&w.phone, &w.laptop]);
    let cases: Vec<(&Dev, u8, Vec<u8>, Check)> = vec![
        // H5: a contact's device.
        (
            &w.bob,
            0xB1,
            content(&fresh, &good),
            Box::new(|e| {
                e.kind() == ErrorKind::InvalidMessage
                    && matches!(e, DeviceError::DeviceList(DeviceListError::ForeignHandover { .. }))
            }),
        ),
        // H8: another user's list.
        (
            &w.laptop,
            0xA2,
            content(&fresh, &list(&fresh, "mallory", 2, &[&w.phone, &w.laptop])),
            Box::new(|e| matches!(e, DeviceError::DeviceList(DeviceListError::WrongUser { .. }))),
        ),
        // H9: a list without the receiver.
        (
            &w.laptop,
            0xA2,
            content(&fresh, &list(&fresh, "alice", 2, &[&w.laptop])),
            Box::new(|e| {
                e.kind() == ErrorKind::InvalidMessage
                    && matches!(
                        e,
                        DeviceError::Session(SessionError::Malformed(DecodeError::InvalidValue(
                            "handover.device_list"
                        )))
                    )
            }),
        ),
        // H10: a list without the sender.
        (
            &w.laptop,
            0xA2,
            content(&fresh, &list(&fresh, "alice", 2, &[&w.phone])),
            Box::new(|e| {
                matches!(
                    e,
                    DeviceError::Session(SessionError::Malformed(DecodeError::InvalidValue("handover.device_list")))
                )
            }),
        ),
        // H4: the seed of another key than the list's.
        (
            &w.laptop,
            0xA2,
            handover_content(user_key(0x01).to_seed().as_slice(), &good.to_bytes(), &[]),
            Box::new(|e| {
                matches!(e, DeviceError::Session(SessionError::Malformed(DecodeError::InvalidValue("handover.seed"))))
            }),
        ),
        // H3: list bytes that are not a signed list.
        (
            &w.laptop,
            0xA2,
            handover_content(fresh.to_seed().as_slice(), b"not a list", &[]),
            Box::new(|e| {
                matches!(
                    e,
                    DeviceError::Session(SessionError::Malformed(DecodeError::InvalidValue("handover.device_list")))
                )
            }),
        ),
        // H3: a replaced key of 31 bytes.
        (
            &w.laptop,
            0xA2,
            handover_content(fresh.to_seed().as_slice(), &good.to_bytes(), &[1; 31]),
            Box::new(|e| {
                matches!(
                    e,
                    DeviceError::Session(SessionError::Malformed(DecodeError::InvalidLength {
                        field: "handover.replaces",
                        ..
                    }))
                )
            }),
        ),
        // H2: a seed of 31 bytes.
        (
            &w.laptop,
            0xA2,
            handover_content(&[7; 31], &good.to_bytes(), &[]),
            Box::new(|e| {
                matches!(
                    e,
                    DeviceError::Session(SessionError::Malformed(DecodeError::InvalidLength {
                        field: "handover.seed",
                        ..
                    }))
                )
            }),
        ),
    ];
    for (sender, key, content, expected) in cases {
        let forged = forged_control(sender, key, w.phone.address(), &content);
        let before = rows(&w.phone);
        let error = w.phone.decrypt(sender.address(), &forged).unwrap_err();
        assert!(expected(&error), "{error:?}");
        assert_eq!(rows(&w.phone), before);
    }
    // The genuine one still reads after all of them.
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    take_handover(&w.phone, &w.laptop, &replaced.handovers[0].message).unwrap();
}

/// Each handover's commit sends back an acknowledgment; the replacing
/// device lists the devices that have not acknowledged it yet (those it
/// could not reach too), so that a handover the server dropped is seen and
/// made again. An acknowledgment of another identity, or one replayed,
/// changes nothing; one from a contact is refused.
#[test]
fn handovers_are_acknowledged_and_the_devices_awaiting_them_are_listed() {
    let (phone, laptop, desktop) = (device("alice", 1, 0xA1), device("alice", 2, 0xA2), device("alice", 4, 0xA4));
    let alice = user_key(0xA0);
    let alice_list = list(&alice, "alice", 1, &[&phone, &laptop, &desktop]);
    for d in [&phone, &laptop, &desktop] {
        d.set_device_list(&alice_list).unwrap();
    }
    laptop.start_session(&phone.prekey_bundle().unwrap()).unwrap();
    assert!(laptop.awaiting_handovers().unwrap().is_empty());
    let fresh = user_key(0xA9);
    let first = laptop.replace_user_identity(&fresh, &[1, 4]).unwrap();
    assert_eq!(first.missing, vec![desktop.address().clone()]);
    assert_eq!(laptop.awaiting_handovers().unwrap(), vec![phone.address().clone(), desktop.address().clone()]);

    // The handover to the phone is dropped; the desktop gets a session and
    // the handovers are made again.
    laptop.start_session(&desktop.prekey_bundle().unwrap()).unwrap();
    let again = laptop.replace_user_identity(&fresh, &[1, 4]).unwrap();
    assert_eq!(laptop.awaiting_handovers().unwrap().len(), 2);
    for (to, handover) in [(&phone, &again.handovers[0]), (&desktop, &again.handovers[1])] {
        let pending = to.decrypt(laptop.address(), &handover.message).unwrap();
        assert_eq!(pending.kind(), MessageKind::UserIdentity);
        let acks = to.commit(pending).unwrap();
        assert_eq!(acks.len(), 1);
        assert_eq!(&acks[0].to, laptop.address());
        // The acknowledgment is a control message for the laptop's library.
        let pending = laptop.decrypt(to.address(), &acks[0].message).unwrap();
        assert_eq!(pending.kind(), MessageKind::Control);
        assert!(pending.plaintext().is_empty() && pending.new_user_identity().is_none());
        assert!(laptop.commit(pending).unwrap().is_empty());
        // A replay is a duplicate, and changes nothing.
        let before = rows(&laptop);
        assert!(laptop.decrypt(to.address(), &acks[0].message).is_err());
        assert_eq!(rows(&laptop), before);
    }
    assert!(laptop.awaiting_handovers().unwrap().is_empty());
    // Neither device that took a handover awaits anything.
    assert!(phone.awaiting_handovers().unwrap().is_empty());

    // The first handover, delivered late, is the list held: no change, and
    // its acknowledgment (of the identity the laptop holds, from a device
    // no longer awaited) writes nothing.
    let pending = phone.decrypt(laptop.address(), &first.handovers[0].message).unwrap();
    let acks = phone.commit(pending).unwrap();
    let pending = laptop.decrypt(phone.address(), &acks[0].message).unwrap();
    let before = rows(&laptop);
    let writes_before = laptop.backend().snapshot();
    laptop.commit(pending).unwrap();
    // Only the session row moved: the users row is as it was.
    let users = |snapshot: &std::collections::BTreeMap<(samizdat::store::Table, Vec<u8>), Vec<u8>>| {
        snapshot.iter().filter(|((t, _), _)| *t == samizdat::store::Table::Users).count()
    };
    assert_eq!(users(&before), users(&writes_before));
    let own_row = |s: &std::collections::BTreeMap<(samizdat::store::Table, Vec<u8>), Vec<u8>>| {
        s.iter().filter(|((t, _), _)| *t == samizdat::store::Table::Users).map(|(_, v)| v.clone()).collect::<Vec<_>>()
    };
    assert_eq!(own_row(&before), own_row(&rows(&laptop)));
}

/// An acknowledgment from a contact, sealed by hand on a real session, is
/// refused (`ForeignHandover`) and changes nothing; a malformed one is a
/// malformed message.
#[cfg(feature = "hazmat")]
#[test]
fn a_forged_acknowledgment_is_refused_and_changes_nothing() {
    use samizdat::DecodeError;
    use support::users::forged_control;

    let w = world();
    replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let ack = |key: &[u8]| {
        [vec![0x3a, u8::try_from(key.len() + 2).unwrap(), 0x0a, u8::try_from(key.len()).unwrap()], key.to_vec()]
            .concat()
    };
    let genuine_key = user_key(0xA9).public_key();
    let from_bob = forged_control(&w.bob, 0xB1, w.laptop.address(), &ack(genuine_key.as_bytes()));
    let before = rows(&w.laptop);
    let error = w.laptop.decrypt(w.bob.address(), &from_bob).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidMessage);
    assert_eq!(refusal(Err::<(), _>(error)), DeviceListError::ForeignHandover { user_id: "bob".into() });
    let short = forged_control(&w.phone, 0xA1, w.laptop.address(), &ack(&[7; 31]));
    assert!(matches!(
        w.laptop.decrypt(w.phone.address(), &short),
        Err(DeviceError::Session(SessionError::Malformed(DecodeError::InvalidLength {
            field: "handover_ack.user_identity_key",
            ..
        })))
    ));
    assert_eq!(rows(&w.laptop), before);
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![w.phone.address().clone()]);
}
