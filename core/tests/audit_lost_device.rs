//! Outside audit of replacing the user identity when a device was lost
//! (issue 17, commit d2ca696: `Device::replace_user_identity`, the handover
//! control message, `MessageKind::UserIdentity`; `core/src/device/replace.rs`,
//! `core/src/user/handover.rs`, the handover branch of `decrypt` and
//! `commit` in `core/src/device/sessions.rs`).
//!
//! The attackers: a hostile server (drops, delays, reorders, replays and
//! relabels messages; serves any bundle or list), the thief of the lost
//! device (its store and the old user identity key, `UIK`), and a contact or
//! an own device with a modified library (`support::users::forged_control`).
//!
//! Alice: phone (1), laptop (2), tablet (3, the lost one); Bob: one device.
//!
//! Tests named `held_*` are attacks the code resisted. Tests marked
//! `#[ignore = "finding: ..."]` fail on the code as audited: each doc
//! comment gives the flaw and a suggested fix. Four findings:
//!
//! 1. the thief signs, with the old key, a list at version `u64::MAX` that
//!    names every device (nothing for the user to see): once our devices
//!    took it (the call's documentation says to fetch our own newest list
//!    first), `replace_user_identity` fails on every device, forever;
//! 2. the same with any version above the replacement's: the remaining
//!    devices refuse the genuine handover as a `Rollback`, and no call
//!    the replacing device has lets it catch up: the thief keeps them on
//!    the old, compromised identity;
//! 3. a ghost device the thief listed with the old key before the
//!    replacement is kept in the new list, and the documented procedure for
//!    `missing` devices hands it the new key;
//! 4. a handover the server drops leaves the device on the old identity
//!    (the lost device still listed, still sent every sent sync) with no
//!    error on any device: messages between it and the replacing device
//!    keep flowing both ways.
//!
//! All four are fixed (PROTOCOL.md 23.9): the handover names the key it
//! replaces and is taken by a device that holds that key whatever its
//! version; a new identity past the last version starts again at 1; the
//! call takes the devices to keep, not the ones lost; each handover is
//! acknowledged, and the replacing device lists the devices that have not
//! acknowledged it (`awaiting_handovers`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use samizdat::{
    ErrorKind, SessionError,
    address::Address,
    device::{Device, DeviceError, MessageKind},
    store::{Backend, MemoryBackend, Row, StorageKey, StoreError, Table, Write},
    user::{DeviceListError, SignedDeviceList, UserIdentityKeyPair},
};
use support::{
    Got, copy_of, receive_kind,
    users::{device, list, refusal, replace_lost, rows, user_key},
};

type Dev = Device<MemoryBackend>;

// ---------------------------------------------------------------------------
// The world (as core/tests/lost_device.rs builds it), with the phone's and
// the laptop's backends chosen by the test.
// ---------------------------------------------------------------------------

struct World<P: Backend = MemoryBackend, L: Backend = MemoryBackend> {
    phone: Device<P>,
    laptop: Device<L>,
    tablet: Dev,
    bob: Dev,
    /// Alice's user identity before the replacement: the thief has it.
    alice: UserIdentityKeyPair,
}

const PHONE_KEY: StorageKey = StorageKey::from_bytes([0xA1; 32]);
const LAPTOP_KEY: StorageKey = StorageKey::from_bytes([0xA2; 32]);

fn alice(id: u32) -> Address {
    Address::new("alice", id).unwrap()
}

/// Alice's three devices hold her list (version 1) and a session with each
/// other, used both ways; Bob pinned Alice and has a session with each of
/// her devices, used both ways.
fn build<P: Backend, L: Backend>(phone: Device<P>, laptop: Device<L>) -> World<P, L> {
    let tablet = device("alice", 3, 0xA3);
    let bob = device("bob", 1, 0xB1);
    let alice_uik = user_key(0xA0);
    let ids = [(1, phone.identity_key()), (2, laptop.identity_key()), (3, tablet.identity_key())];
    let alice_list =
        samizdat::user::DeviceList::new("alice", 1, &alice_uik.public_key(), ids).unwrap().sign(&alice_uik).unwrap();
    phone.set_device_list(&alice_list).unwrap();
    laptop.set_device_list(&alice_list).unwrap();
    tablet.set_device_list(&alice_list).unwrap();
    let bob_list = list(&user_key(0xB0), "bob", 1, &[&bob]);
    bob.set_device_list(&bob_list).unwrap();
    phone.update_device_list(&bob_list).unwrap();
    laptop.update_device_list(&bob_list).unwrap();
    tablet.update_device_list(&bob_list).unwrap();
    laptop.start_session(&phone.prekey_bundle().unwrap()).unwrap();
    exchange(&laptop, &phone);
    laptop.start_session(&tablet.prekey_bundle().unwrap()).unwrap();
    exchange(&laptop, &tablet);
    phone.start_session(&tablet.prekey_bundle().unwrap()).unwrap();
    exchange(&phone, &tablet);
    bob.start_session(&phone.prekey_bundle().unwrap()).unwrap();
    exchange(&bob, &phone);
    bob.start_session(&laptop.prekey_bundle().unwrap()).unwrap();
    exchange(&bob, &laptop);
    bob.start_session(&tablet.prekey_bundle().unwrap()).unwrap();
    exchange(&bob, &tablet);
    World { phone, laptop, tablet, bob, alice: alice_uik }
}

fn world() -> World {
    build(device("alice", 1, 0xA1), device("alice", 2, 0xA2))
}

/// One message each way between two devices, read and committed.
fn exchange<A: Backend, B: Backend>(a: &Device<A>, b: &Device<B>) {
    let hello = a.encrypt(b.address(), b"hello").unwrap();
    assert_eq!(receive_kind(b, a, &hello).unwrap(), Got::App(b"hello".to_vec()));
    let back = b.encrypt(a.address(), b"hello back").unwrap();
    assert_eq!(receive_kind(a, b, &back).unwrap(), Got::App(b"hello back".to_vec()));
}

/// Decrypt and commit a handover as an app does (the key kept first).
fn take_handover<A: Backend, B: Backend>(
    to: &Device<A>,
    from: &Device<B>,
    wire: &[u8],
) -> Result<UserIdentityKeyPair, DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    assert_eq!(pending.kind(), MessageKind::UserIdentity);
    let kept = UserIdentityKeyPair::from_seed(&pending.new_user_identity().unwrap().user_identity().to_seed());
    // The commit sends back one acknowledgment, to the device that handed
    // it over (not delivered here).
    let acks = to.commit(pending)?;
    assert!(acks.len() == 1 && acks[0].to == *from.address(), "{acks:?}");
    Ok(kept)
}

/// The handover of `replaced` addressed to `to`.
fn handover_to<'a>(replaced: &'a samizdat::device::Replaced, to: &Address) -> &'a [u8] {
    &replaced.handovers.iter().find(|h| h.to == *to).expect("a handover to that device").message
}

fn version(signed: &SignedDeviceList) -> u64 {
    signed.verify().unwrap().version()
}

fn is_rollback(e: &DeviceError) -> bool {
    matches!(e, DeviceError::DeviceList(DeviceListError::Rollback { .. }))
}

/// A backend shared with other handles that runs the queued actions (the
/// calls of another handle, or a failure of this very write) just before
/// each of its own `apply`s: a deterministic race between a call's read and
/// its write. An action that returns an error fails that `apply`, which
/// then writes nothing.
struct Racy {
    inner: Arc<MemoryBackend>,
    before_apply: Mutex<Vec<Action>>,
    conflicts: AtomicUsize,
}

type Action = Box<dyn FnOnce() -> Result<(), StoreError> + Send>;

impl Racy {
    fn new(inner: Arc<MemoryBackend>) -> Self {
        Self { inner, before_apply: Mutex::new(Vec::new()), conflicts: AtomicUsize::new(0) }
    }

    /// Another handle's call, just before this handle's next write.
    fn queue(&self, action: impl FnOnce() + Send + 'static) {
        self.before_apply.lock().unwrap().push(Box::new(move || {
            action();
            Ok(())
        }));
    }

    /// This handle's next write fails (nothing of it is written).
    fn fail_next(&self) {
        self.before_apply.lock().unwrap().push(Box::new(|| Err(StoreError::Locked)));
    }

    fn conflicts(&self) -> usize {
        self.conflicts.load(Ordering::SeqCst)
    }
}

impl Backend for Racy {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let action = self.before_apply.lock().unwrap().pop();
        if let Some(action) = action {
            action()?;
        }
        let result = self.inner.apply(writes);
        if matches!(result, Err(StoreError::Conflict { .. })) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// A device of `alice` over `store` through a [`Racy`] handle, and a second
/// plain handle of the same store.
fn racy_pair(store: &Arc<MemoryBackend>, id: u32, key: &StorageKey) -> (Device<Racy>, Arc<Device<Arc<MemoryBackend>>>) {
    let first = Device::create_in(Racy::new(store.clone()), key, alice(id), UNIX_EPOCH).unwrap();
    let second = Arc::new(Device::open_in(store.clone(), key).unwrap());
    (first, second)
}

// ---------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------

/// **Finding 1: a list at the last version, signed with the old key, makes
/// replacing the identity impossible, on every device, for good.**
///
/// The thief holds the old `UIK` (the very reason for the call). It signs
/// a list at version `u64::MAX` that names exactly our devices (the list
/// change is empty: nothing for the user to see) and the server serves it.
/// Our devices take it as our own newest list (`update_device_list`: same
/// key, newer), as the documentation of `replace_user_identity` asks ("Fetch
/// our own newest list first"). From then on `replace_user_identity` fails
/// with `Malformed(InvalidValue("version"))` on every device: the remedy for
/// a stolen device is disabled by the thief, and our devices stay under the
/// key the thief holds (which lets it add ghosts at will, PROTOCOL.md 23.1).
///
/// Fix: a new identity does not continue the old identity's versions
/// (`TrustNewIdentity` already pins a new identity "whatever its version",
/// and contacts use it): start the new list at version 1 (or at any version,
/// not `old + 1`), and order handovers by something the old key cannot
/// forge (see finding 2).
///
/// Fixed: a new identity whose version would overflow starts again at 1,
/// and the handover names the key it replaces (PROTOCOL.md 23.9).
#[test]
fn finding_a_thief_list_at_the_last_version_blocks_every_replacement() {
    let w = world();
    let thief = list(&w.alice, "alice", u64::MAX, &[&w.phone, &w.laptop, &w.tablet]);
    for d in [&w.phone, &w.laptop] {
        // Our own newest list, fetched as the call's documentation says.
        assert!(d.update_device_list(&thief).unwrap().is_empty(), "the same devices: nothing to see");
    }
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]);
    println!("replace_user_identity after the thief's list: {replaced:?}");
    let replaced = replaced.expect("the lost tablet can be removed whatever the old key signed");
    take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list));
    let from_tablet = w.tablet.encrypt(w.phone.address(), b"still here").unwrap();
    assert!(w.phone.decrypt(w.tablet.address(), &from_tablet).is_err());
}

/// **Finding 2: a list with a higher version under the old key makes our
/// devices refuse the genuine handover, and the replacing device cannot
/// catch up.**
///
/// H12 compares the handover list's version (under the new key) with the
/// version of our own list under the old key, which the thief can sign at
/// any version. The thief signs version 5 naming the very same devices;
/// the phone's app fetches it (nothing to see: the list change is empty).
/// The laptop (which had not fetched it yet) replaces the identity: its
/// list is version 2, and the phone refuses the handover as a `Rollback`.
/// The laptop's app can do nothing the API offers: fetching our own newest
/// list is `UntrustedUser` (it is under the old key), calling again with the
/// same key sends the same list, and a fresh key gives version 3, refused
/// again. The phone stays under the thief's key, with the tablet listed and
/// sent every sent sync; the thief can keep raising the version before
/// each attempt. (With `u64::MAX` no attempt can ever pass: finding 1.)
///
/// Fix: do not order a new identity against lists of the old one by version.
/// For example, a handover names the user identity it replaces (a field
/// `replaces`, the old public key) and is accepted from a listed own device
/// when that is our current identity, whatever the versions; an old
/// handover replayed after a newer one names an identity we no longer hold
/// and is refused, which keeps what H12 protects today
/// (`an_old_or_replayed_handover_changes_nothing`).
///
/// Fixed: the handover names the key it replaces, and a device that holds
/// that key takes it whatever version the key signed meanwhile (PROTOCOL.md
/// 23.9, H13).
#[test]
fn finding_a_thief_list_under_the_old_key_outbids_every_handover() {
    let w = world();
    let thief = list(&w.alice, "alice", 5, &[&w.phone, &w.laptop, &w.tablet]);
    assert!(w.phone.update_device_list(&thief).unwrap().is_empty());
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let mut outcome = take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).map(drop);
    println!("the genuine handover: {outcome:?}");
    if outcome.is_err() {
        // What the laptop's app can try: fetch our own newest list (refused:
        // it is under the old key), then replace again with a fresh key.
        let fetched = w.laptop.update_device_list(&thief);
        println!("the laptop fetching our own newest list: {fetched:?}");
        let again = replace_lost(&w.laptop, &user_key(0xAA), &[3]).unwrap();
        outcome = take_handover(&w.phone, &w.laptop, handover_to(&again, w.phone.address())).map(drop);
        println!("a second replacement: {outcome:?}");
    }
    assert!(outcome.is_ok(), "the phone never leaves the thief's key: {outcome:?}");
    assert_eq!(w.phone.device_list().unwrap(), w.laptop.device_list().unwrap());
    let from_tablet = w.tablet.encrypt(w.phone.address(), b"still here").unwrap();
    assert!(w.phone.decrypt(w.tablet.address(), &from_tablet).is_err());
}

/// **Finding 3: a ghost the thief listed with the old key is kept by the
/// replacement, and the documented procedure hands it the new key.**
///
/// PROTOCOL.md 23.1 says why a new identity is needed: the thief "can sign a
/// higher version that lists it again, with ghosts of its own". It does so
/// before the user notices the loss: a list under the old key naming a
/// ghost device 9, which our devices take as our own newest list (the
/// call's documentation asks the app to fetch it first). The user then
/// removes the tablet: `replace_user_identity(new, &[3])` keeps every
/// device but the ones named, the ghost included; the ghost is `missing`
/// (no session), and the documentation of `missing` says to start a session
/// with it and call again: the ghost, which the thief runs, then reads the
/// handover and gets the new user identity key, and the new list that
/// contacts are asked to trust names it.
///
/// Fix: the old key is compromised, so the devices its lists added are
/// suspect: take the devices to keep (each confirmed by the user by name)
/// instead of the devices to remove, or refuse to carry over, without an
/// explicit confirmation, a device that no list of ours named before the
/// device was lost (at least report such devices in `Replaced` and keep them
/// out of `missing`).
///
/// Fixed: the call takes the devices to keep, confirmed by the user; the
/// ghost is not one of them, so it is neither listed nor `missing`.
#[test]
fn finding_a_ghost_the_thief_listed_is_kept_and_handed_the_new_key() {
    let w = world();
    let ghost = device("alice", 9, 0x99);
    let thief = list(&w.alice, "alice", 2, &[&w.phone, &w.laptop, &w.tablet, &ghost]);
    ghost.set_device_list(&thief).unwrap();
    let change = w.laptop.update_device_list(&thief).unwrap();
    assert_eq!(change.added, vec![(9, ghost.identity_key())]);

    let fresh = user_key(0xA9);
    // The user keeps the phone (the laptop is kept as the caller).
    let replaced = w.laptop.replace_user_identity(&fresh, &[1]).unwrap();
    println!("the new list: {:?}; missing: {:?}", replaced.device_list.verify().unwrap().devices(), replaced.missing);
    // As documented for `missing`: start a session, then call again.
    for missing in &replaced.missing {
        if missing == ghost.address() {
            w.laptop.start_session(&ghost.prekey_bundle().unwrap()).unwrap();
        }
    }
    let again = w.laptop.replace_user_identity(&fresh, &[1]).unwrap();
    let leaked = again.handovers.iter().filter(|h| h.to == *ghost.address()).any(|h| {
        ghost.decrypt(w.laptop.address(), &h.message).is_ok_and(|pending| {
            pending.new_user_identity().is_some_and(|n| n.user_identity().public_key() == fresh.public_key())
        })
    });
    assert!(!leaked, "the thief's ghost read the new user identity key");
    assert!(replaced.device_list.verify().unwrap().device(9).is_none(), "the new list names the thief's ghost");
}

/// **Finding 4: a dropped handover leaves a device on the old identity, with
/// no error anywhere, for good.**
///
/// The server sees the laptop publish a list under a new key and, at the
/// same moment, send one message to each other device: the handovers. It
/// drops the one to the phone and delivers everything else. The phone and
/// the laptop go on exchanging messages both ways without any error (the
/// phone's list names the laptop; the laptop's names the phone), and the
/// phone keeps the tablet in its list: its fan-outs send the tablet's thief
/// a sent sync of everything the user sends from the phone, and it reads
/// the tablet's messages. Neither device is ever told: `replace_user_identity`
/// may be called again "when handovers were lost", but nothing tells the
/// app when, and the app cannot know.
///
/// Fix: make the handover reliable. For example: keep it, on the replacing
/// device, until the device it went to has shown it took it, and resend it
/// on that session (as a reset's resends, PROTOCOL.md 20) with the answer
/// to that device's next message; or let messages between our own devices
/// carry the sender's list (version and key, or a hash) so that a device on
/// another list is refused with a typed error (`DeviceListError::...`) that
/// tells the app which device must get the handover again.
///
/// Fixed: each handover's commit sends back an acknowledgment, and the
/// replacing device keeps the devices that have not acknowledged yet
/// (`awaiting_handovers`, PROTOCOL.md 23.9): the app sees the phone there,
/// calls again with the same key pair, and the phone catches up.
#[test]
fn finding_a_dropped_handover_leaves_a_device_on_the_old_identity_without_an_error() {
    let w = world();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    // The server drops `replaced.handovers` and delivers everything else.
    let mut errors = Vec::new();
    // Ordinary traffic: the phone and the laptop talk, both ways, and every
    // message a commit returns is delivered too.
    let hello = w.phone.encrypt(w.laptop.address(), b"are you there?");
    match hello.map(|wire| deliver(&w, w.phone.address(), w.laptop.address(), &wire)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => errors.push(e),
    }
    let back = w.laptop.encrypt(w.phone.address(), b"yes");
    match back.map(|wire| deliver(&w, w.laptop.address(), w.phone.address(), &wire)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => errors.push(e),
    }
    // The phone writes to Bob: its sent syncs go to its other devices.
    let mut leaked = false;
    match w.phone.encrypt_to_user("bob", b"the secret plan") {
        Ok(fan) => {
            for sync in &fan.syncs {
                if sync.to == *w.tablet.address() {
                    leaked |= w.tablet.decrypt(w.phone.address(), &sync.message).is_ok();
                } else if let Err(e) = deliver(&w, w.phone.address(), &sync.to, &sync.message) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    let agree = w.phone.device_list().unwrap() == Some(replaced.device_list.clone());
    let awaiting = w.laptop.awaiting_handovers().unwrap();
    println!(
        "lists agree: {agree}; errors: {errors:?}; the tablet read the phone's sync: {leaked}; awaiting: {awaiting:?}"
    );
    assert!(
        agree || !errors.is_empty() || awaiting == vec![w.phone.address().clone()],
        "our devices disagree on the list, and no call on either said so"
    );
    // The app sees the phone awaiting: the same key pair again, delivered
    // this time, and its acknowledgment comes back.
    let again = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    assert!(!again.list_changed);
    deliver(&w, w.laptop.address(), w.phone.address(), &again.handovers[0].message).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list));
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
}

/// Delivers `wire` from `from` to `to` in world `w` (decrypt, commit), then
/// whatever the commit returned to send, recursively.
fn deliver(w: &World, from: &Address, to: &Address, wire: &[u8]) -> Result<(), DeviceError> {
    let device = by_address(w, to);
    let pending = device.decrypt(from, wire)?;
    for outgoing in device.commit(pending)? {
        deliver(w, to, &outgoing.to, &outgoing.message)?;
    }
    Ok(())
}

fn by_address<'a>(w: &'a World, address: &Address) -> &'a Dev {
    [&w.phone, &w.laptop, &w.tablet, &w.bob]
        .into_iter()
        .find(|d| d.address() == address)
        .expect("a device of the world")
}

// ---------------------------------------------------------------------------
// Held: forged, malformed, relabeled handovers
// ---------------------------------------------------------------------------

/// Handover content a modified library of the laptop seals on its real
/// session with the phone, malformed in every way a byte flip, a truncation,
/// a stray field or a wrong length makes it, and random bytes after the
/// handover's first byte: never a panic, never a pending of kind
/// `UserIdentity`, and the phone's store unchanged. `parse_handover` (the
/// same parser) agrees on every input.
#[cfg(feature = "hazmat")]
#[test]
fn held_malformed_handovers_never_panic_and_change_nothing() {
    use rand_core::Rng;
    use samizdat::hazmat::{handover_content, parse_handover};
    use support::users::forged_control;

    let w = world();
    let fresh = user_key(0xA9);
    let good_list = list(&fresh, "alice", 2, &[&w.phone, &w.laptop]);
    let good = handover_content(fresh.to_seed().as_slice(), &good_list.to_bytes(), &[]);
    assert!(matches!(parse_handover(&good), Some(Ok(_))));

    let mut inputs: Vec<Vec<u8>> = Vec::new();
    // One bit flipped, at every byte.
    for i in 0..good.len() {
        let mut flipped = good.clone();
        flipped[i] ^= 1 << (i % 8);
        inputs.push(flipped);
    }
    // Every truncation, and stray bytes after.
    for len in 0..good.len() {
        inputs.push(good[..len].to_vec());
    }
    for tail in [&[0x00][..], &[0x32, 0x00], &[0x2a, 0x00], &[0x0a, 0x00], &[0xff; 12]] {
        inputs.push([good.as_slice(), tail].concat());
    }
    // Seeds and lists of every wrong shape.
    let huge_list = vec![0x0a; 4096];
    for (seed, bytes) in [
        (&[][..], good_list.to_bytes()),
        (&[1; 33][..], good_list.to_bytes()),
        (&[1; 64][..], good_list.to_bytes()),
        (fresh.to_seed().as_slice(), Vec::new()),
        (fresh.to_seed().as_slice(), huge_list),
        (fresh.to_seed().as_slice(), list(&w.alice, "alice", 9, &[&w.phone, &w.laptop]).to_bytes()),
    ] {
        inputs.push(handover_content(seed, &bytes, &[]));
    }
    // Random bytes after the handover's key, of many lengths.
    let mut rng = support::rng(0x1055);
    for len in [0usize, 1, 2, 31, 32, 33, 100, 300, 1000, 3000] {
        for _ in 0..4 {
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            inputs.push([&[0x32][..], &bytes].concat());
        }
    }

    let before = rows(&w.phone);
    for content in &inputs {
        let parsed = parse_handover(content);
        let forged = forged_control(&w.laptop, 0xA2, w.phone.address(), content);
        match w.phone.decrypt(w.laptop.address(), &forged) {
            Ok(pending) => {
                assert_ne!(pending.kind(), MessageKind::UserIdentity, "{content:02x?}");
                assert!(!matches!(parsed, Some(Ok(_))));
            }
            Err(e) => {
                if content.first() == Some(&0x32) && !matches!(parsed, Some(Ok(_))) {
                    assert!(matches!(e, DeviceError::Session(SessionError::Malformed(_))), "{e:?}");
                }
            }
        }
        assert_eq!(rows(&w.phone), before);
    }
    // The genuine one still reads after all of them.
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).unwrap();
}

/// Well-formed handovers that a modified library of an own device or of a
/// contact sends, beyond `lost_device.rs`'s cases: our own current list
/// with its own key (the same list: accepted, nothing to write, the seed is
/// the one we hold), a list of the old key at a higher version (a plain
/// list update: accepted, it is what a listed own device can do anyway), a
/// new key at the same version (refused, typed), from Bob's device with a
/// list of Bob's user (refused, typed). Every refusal changes no row.
#[cfg(feature = "hazmat")]
#[test]
fn held_well_formed_forged_handovers_are_judged_by_the_rules() {
    use samizdat::hazmat::handover_content;
    use support::users::forged_control;

    let w = world();
    let content = |uik: &UserIdentityKeyPair, signed: &SignedDeviceList| {
        handover_content(uik.to_seed().as_slice(), &signed.to_bytes(), &[])
    };
    let before = rows(&w.phone);
    // The same list as ours, with its own key: no change.
    let same = w.phone.device_list().unwrap().unwrap();
    let forged = forged_control(&w.laptop, 0xA2, w.phone.address(), &content(&w.alice, &same));
    let pending = w.phone.decrypt(w.laptop.address(), &forged).unwrap();
    assert_eq!(pending.kind(), MessageKind::UserIdentity);
    assert!(pending.new_user_identity().unwrap().removed().is_empty());
    assert_eq!(pending.new_user_identity().unwrap().user_identity().public_key(), w.alice.public_key());
    drop(pending);
    // The old key at a higher version: a list update, which a listed own
    // device can make anyway (it holds the key); not committed here.
    let newer = list(&w.alice, "alice", 2, &[&w.phone, &w.laptop, &w.tablet]);
    let forged = forged_control(&w.laptop, 0xA2, w.phone.address(), &content(&w.alice, &newer));
    assert_eq!(w.phone.decrypt(w.laptop.address(), &forged).unwrap().kind(), MessageKind::UserIdentity);
    // A new key at the version we hold: refused.
    let fresh = user_key(0xA9);
    let forged = forged_control(
        &w.laptop,
        0xA2,
        w.phone.address(),
        &content(&fresh, &list(&fresh, "alice", 1, &[&w.phone, &w.laptop])),
    );
    assert!(is_rollback(&w.phone.decrypt(w.laptop.address(), &forged).unwrap_err()));
    // Bob's device, with a list of Bob's user naming the phone: H5 first.
    let bob_uik = user_key(0xB9);
    let bobs = list(&bob_uik, "bob", 2, &[&w.bob]);
    let forged = forged_control(&w.bob, 0xB1, w.phone.address(), &content(&bob_uik, &bobs));
    let e = w.phone.decrypt(w.bob.address(), &forged).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidMessage);
    assert!(matches!(e, DeviceError::DeviceList(DeviceListError::ForeignHandover { .. })), "{e:?}");
    assert_eq!(rows(&w.phone), before);
}

/// The server relabels a handover: the phone's handover delivered to the
/// tablet or to Bob as coming from the laptop does not decrypt (another
/// session); a handover that starts a session (a prekey message) delivered
/// as coming from an unpinned user's device, from a device our list does
/// not name, or from a listed device of ours under another key, is refused
/// before the commit. None of them writes a row, and the genuine delivery
/// still works after.
#[test]
fn held_a_relabeled_handover_reads_nowhere_else() {
    let w = world();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let to_phone = handover_to(&replaced, w.phone.address());
    for other in [&w.tablet, &w.bob] {
        let before = rows(other);
        assert!(other.decrypt(w.laptop.address(), to_phone).is_err());
        assert!(other.decrypt(w.phone.address(), to_phone).is_err());
        assert_eq!(rows(other), before);
    }
    take_handover(&w.phone, &w.laptop, to_phone).unwrap();

    // A prekey handover: the laptop's first message to a desktop.
    let (laptop, desktop, phone) = (device("alice", 2, 0xA2), device("alice", 4, 0xA4), device("alice", 1, 0xA1));
    let old = user_key(0xA0);
    let own = list(&old, "alice", 1, &[&phone, &laptop, &desktop]);
    for d in [&laptop, &desktop, &phone] {
        d.set_device_list(&own).unwrap();
    }
    laptop.start_session(&desktop.prekey_bundle().unwrap()).unwrap();
    let replaced = replace_lost(&laptop, &user_key(0xA9), &[]).unwrap();
    let wire = handover_to(&replaced, desktop.address());
    let before = rows(&desktop);
    let carol = Address::new("carol", 1).unwrap();
    // Taken as a new session with an unpinned user's device, the handover
    // is refused (H5), or the session does not even open under that name.
    let e = desktop.decrypt(&carol, wire).unwrap_err();
    println!("a prekey handover named as carol's: {e:?}");
    assert!(
        matches!(&e, DeviceError::DeviceList(DeviceListError::ForeignHandover { user_id }) if user_id == "carol")
            || matches!(e, DeviceError::Session(_)),
        "{e:?}"
    );
    assert_eq!(refusal(desktop.decrypt(&alice(7), wire)), DeviceListError::UnlistedDevice { device_id: 7 });
    assert_eq!(refusal(desktop.decrypt(&alice(1), wire)), DeviceListError::UnlistedDevice { device_id: 1 });
    assert_eq!(rows(&desktop), before);
    take_handover(&desktop, &laptop, wire).unwrap();
    assert_eq!(desktop.device_list().unwrap(), Some(replaced.device_list));
}

/// A handover to a device that has no own list yet (H6): refused with
/// `NoOwnList` (`invalid_argument`: set the list, then decrypt again),
/// nothing written; once the list is set, the same message is taken.
#[test]
fn held_a_device_without_its_own_list_refuses_a_handover_and_takes_it_later() {
    let (laptop, desktop) = (device("alice", 2, 0xA2), device("alice", 4, 0xA4));
    let old = user_key(0xA0);
    let own = list(&old, "alice", 1, &[&laptop, &desktop]);
    laptop.set_device_list(&own).unwrap();
    laptop.start_session(&desktop.prekey_bundle().unwrap()).unwrap();
    exchange(&laptop, &desktop);
    let replaced = replace_lost(&laptop, &user_key(0xA9), &[]).unwrap();
    let wire = handover_to(&replaced, desktop.address());
    let before = rows(&desktop);
    let e = desktop.decrypt(laptop.address(), wire).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(refusal(Err::<(), _>(e)), DeviceListError::NoOwnList);
    assert_eq!(rows(&desktop), before);
    desktop.set_device_list(&own).unwrap();
    take_handover(&desktop, &laptop, wire).unwrap();
    assert_eq!(desktop.device_list().unwrap(), Some(replaced.device_list));
}

// ---------------------------------------------------------------------------
// Held: the thief after the handover
// ---------------------------------------------------------------------------

/// Once the phone took the handover, the thief has no way back into our
/// devices' lists, nor to them: its own replacement's handover (a key of
/// its own), the old key's list at the last version (through
/// `update_device_list` and `trust_new_user_identity`), the tablet's
/// bundle carrying that list (`start_session`, `heal`), its sent syncs.
/// Every refusal is typed and writes nothing.
#[test]
fn held_the_thief_cannot_come_back_to_our_devices_after_the_handover() {
    let w = world();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).unwrap();
    let (phone_before, laptop_before) = (rows(&w.phone), rows(&w.laptop));

    // The thief replaces the identity too, from the tablet, with a key of
    // its own: its handovers go to the phone and the laptop.
    let thief = replace_lost(&w.tablet, &user_key(0x66), &[]).unwrap();
    for d in [&w.phone, &w.laptop] {
        assert_eq!(
            refusal(d.decrypt(w.tablet.address(), handover_to(&thief, d.address()))),
            DeviceListError::UnlistedDevice { device_id: 3 }
        );
    }

    // The old key at the last version, with a ghost.
    let ghost = device("alice", 9, 0x99);
    let old_key_list = list(&w.alice, "alice", u64::MAX, &[&w.phone, &w.laptop, &w.tablet, &ghost]);
    for (name, result) in [
        ("phone update", w.phone.update_device_list(&old_key_list)),
        ("phone trust", w.phone.trust_new_user_identity(&old_key_list)),
        ("laptop update", w.laptop.update_device_list(&old_key_list)),
        ("laptop trust", w.laptop.trust_new_user_identity(&old_key_list)),
    ] {
        assert_eq!(refusal(result), DeviceListError::UntrustedUser { offered: w.alice.public_key() }, "{name}");
    }

    // The tablet's bundle, and the ghost's, under any list the thief signs.
    let fresh_tablet =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([0x33; 32]), alice(3), UNIX_EPOCH).unwrap();
    fresh_tablet.set_device_list(&list(&w.alice, "alice", 1_001, &[&w.phone, &fresh_tablet])).unwrap();
    for bundle in
        [w.tablet.prekey_bundle().unwrap(), fresh_tablet.prekey_bundle().unwrap(), ghost.prekey_bundle().unwrap()]
    {
        assert!(matches!(
            w.phone.start_session(&bundle),
            Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { .. }))
        ));
        assert!(w.phone.heal(&bundle, &[], SystemTime::now()).is_err());
        assert!(matches!(
            w.laptop.start_session(&bundle),
            Err(DeviceError::DeviceList(DeviceListError::UnlistedDevice { .. }))
        ));
    }

    // Its sent syncs and its messages.
    let fan = w.tablet.encrypt_to_user("bob", b"it's me, alice").unwrap();
    for sync in &fan.syncs {
        let to = if sync.to == *w.phone.address() { &w.phone } else { &w.laptop };
        assert_eq!(
            refusal(to.decrypt(w.tablet.address(), &sync.message)),
            DeviceListError::UnlistedDevice { device_id: 3 }
        );
    }
    assert!(matches!(w.phone.encrypt(w.tablet.address(), b"x"), Err(DeviceError::DeviceList(_))));
    assert!(w.phone.encrypt_to_user("bob", b"y").unwrap().syncs.iter().all(|s| s.to != *w.tablet.address()));
    // (The fan-out just above advanced sessions: compare the users rows only.)
    let users = |r: &std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>>| {
        r.iter().filter(|((t, _), _)| *t == Table::Users).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    assert_eq!(users(&rows(&w.phone)), users(&phone_before));
    assert_eq!(rows(&w.laptop), laptop_before);
}

/// Once Bob trusted the new identity, no list of the old key gets the tablet
/// back into his pin: not `update_device_list`, not the tablet's bundle
/// carrying a newer list of the old key (`start_session`, `heal`), and a
/// list under yet another key the thief made is a new identity again
/// (`UntrustedUser`: the users compare the safety number). Nothing written.
#[test]
fn held_a_contact_that_trusted_the_new_identity_refuses_the_thief_everywhere() {
    let w = world();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    w.bob.trust_new_user_identity(&replaced.device_list).unwrap();
    let before = rows(&w.bob);
    let ghost = device("alice", 9, 0x99);
    let old_key_list = list(&w.alice, "alice", u64::MAX, &[&w.phone, &w.laptop, &w.tablet, &ghost]);
    w.tablet.update_device_list(&old_key_list).unwrap();
    ghost.set_device_list(&old_key_list).unwrap();
    assert_eq!(
        refusal(w.bob.update_device_list(&old_key_list)),
        DeviceListError::UntrustedUser { offered: w.alice.public_key() }
    );
    for bundle in [w.tablet.prekey_bundle().unwrap(), ghost.prekey_bundle().unwrap()] {
        assert_eq!(
            refusal(w.bob.start_session(&bundle)),
            DeviceListError::UntrustedUser { offered: w.alice.public_key() }
        );
        assert!(w.bob.heal(&bundle, &[], SystemTime::now()).is_err());
    }
    let thief_key = user_key(0x66);
    assert_eq!(
        refusal(w.bob.update_device_list(&list(&thief_key, "alice", 1, &[&w.tablet]))),
        DeviceListError::UntrustedUser { offered: thief_key.public_key() }
    );
    let to_bob = w.tablet.encrypt(w.bob.address(), b"it's me").unwrap();
    assert_eq!(refusal(w.bob.decrypt(w.tablet.address(), &to_bob)), DeviceListError::UnlistedDevice { device_id: 3 });
    assert_eq!(rows(&w.bob), before);
}

// ---------------------------------------------------------------------------
// Held: secrets in Debug output and plaintext
// ---------------------------------------------------------------------------

/// The new key's seed appears in no `Debug` output (the pending message, the
/// new identity, the call's result, the device, a refusal), in either form,
/// as hex or as a byte list; a handover's plaintext is empty, and its commit
/// returns nothing; a batch refuses it without its bytes.
#[test]
fn held_the_new_key_is_in_no_debug_output_and_no_plaintext() {
    let w = world();
    let seed: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7 + 3).unwrap());
    let fresh = UserIdentityKeyPair::from_seed(&seed);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let wire = handover_to(&replaced, w.phone.address()).to_vec();
    let batch = w.phone.decrypt_batch(&[(w.laptop.address().clone(), wire.clone())]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::NotInBatch)));
    let pending = w.phone.decrypt(w.laptop.address(), &wire).unwrap();
    assert_eq!(pending.kind(), MessageKind::UserIdentity);
    assert!(pending.plaintext().is_empty());
    assert_eq!(pending.sync_recipient(), None);
    assert_eq!(pending.group_id(), None);
    let identity = pending.new_user_identity().unwrap();
    let mut outputs = vec![
        format!("{pending:?}"),
        format!("{pending:#?}"),
        format!("{identity:?}"),
        format!("{identity:#?}"),
        format!("{:?}", identity.user_identity()),
        format!("{replaced:?}"),
        format!("{replaced:#?}"),
        format!("{:?}", w.phone),
        format!("{batch:?}"),
    ];
    // The commit returns the acknowledgment only (a ciphertext to the laptop).
    let acks = w.phone.commit(pending).unwrap();
    assert!(acks.len() == 1 && acks[0].to == *w.laptop.address());
    outputs.push(format!("{acks:?}"));
    outputs.push(format!("{:?}", w.phone.decrypt(w.laptop.address(), &wire).unwrap_err()));
    let hex = hex::encode(seed);
    let secrets = [
        hex.clone(),
        hex.to_uppercase(),
        format!("{seed:?}"),
        format!("{:?}", &seed[..8]).trim_end_matches(']').to_owned(),
    ];
    for output in &outputs {
        for secret in &secrets {
            assert!(!output.contains(secret.as_str()), "{output}");
        }
        assert!(!output.as_bytes().windows(seed.len()).any(|w| w == seed), "{output}");
    }
}

// ---------------------------------------------------------------------------
// Held: groups follow the new list on our own devices
// ---------------------------------------------------------------------------

/// A group of Alice's devices and Bob, each member named by address. After
/// the handover, the phone's next message rotates its chain: the new chain
/// goes to the laptop and Bob, none to the tablet, which reads nothing; the
/// same on the laptop right after its replacement. The tablet's own group
/// chain offered to the phone is refused (the pairwise check), writing
/// nothing.
#[test]
fn held_our_own_groups_rotate_away_from_the_lost_device() {
    let w = world();
    let group = b"family";
    let all = [&w.phone, &w.laptop, &w.tablet, &w.bob];
    for d in all {
        let others: Vec<Address> =
            all.iter().filter(|o| o.address() != d.address()).map(|o| o.address().clone()).collect();
        d.create_group(group, &others).unwrap();
    }
    let by = |a: &Address| *all.iter().find(|d| d.address() == a).unwrap();
    let send = |from: &Dev, text: &[u8]| {
        let sent = from.group_encrypt(group, text).unwrap();
        let mut got = Vec::new();
        for d in &sent.distributions {
            assert!(matches!(receive_kind(by(&d.to), from, &d.message).unwrap(), Got::Control(_)));
            got.push(d.to.device_id() + if d.to.user_id() == "bob" { 100 } else { 0 });
        }
        (sent, got)
    };
    for from in [&w.phone, &w.laptop] {
        let (sent, got) = send(from, b"before");
        assert!(got.contains(&3));
        assert_eq!(receive_kind(&w.tablet, from, &sent.message).unwrap(), Got::Group(b"before".to_vec()));
    }

    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).unwrap();
    for (from, other) in [(&w.phone, &w.laptop), (&w.laptop, &w.phone)] {
        assert!(!from.group_members(group).unwrap().contains(w.tablet.address()));
        let (sent, mut got) = send(from, b"after");
        got.sort_unstable();
        let expected = if from.address().device_id() == 1 { vec![2, 101] } else { vec![1, 101] };
        assert_eq!(got, expected, "the new chain goes to the remaining members only");
        assert!(w.tablet.decrypt(from.address(), &sent.message).is_err());
        assert_eq!(receive_kind(other, from, &sent.message).unwrap(), Got::Group(b"after".to_vec()));
        assert_eq!(receive_kind(&w.bob, from, &sent.message).unwrap(), Got::Group(b"after".to_vec()));
    }
    // The tablet's chain, offered to the phone, is refused.
    let from_tablet = w.tablet.group_encrypt(group, b"let me in").unwrap();
    let before = rows(&w.phone);
    for d in from_tablet.distributions.iter().filter(|d| d.to == *w.phone.address()) {
        assert_eq!(
            refusal(w.phone.decrypt(w.tablet.address(), &d.message)),
            DeviceListError::UnlistedDevice { device_id: 3 }
        );
    }
    assert_eq!(rows(&w.phone), before);
    assert!(w.phone.decrypt(w.tablet.address(), &from_tablet.message).is_err());
}

// ---------------------------------------------------------------------------
// Held: replays, reordering, restored stores
// ---------------------------------------------------------------------------

/// Two replacements (the second one after the tablet was already gone);
/// the server delivers the second handover first, then the first: the
/// first is a `Rollback`, nothing written, and the newest identity stands.
/// A copy of the phone's store from before both, opened again (a restored
/// backup), takes the replayed newest handover, refuses the older one, and
/// refuses the tablet again.
#[test]
fn held_reordered_replayed_and_restored_handovers_end_on_the_newest() {
    let w = world();
    let snapshot = copy_of(w.phone.backend());
    let first = replace_lost(&w.laptop, &user_key(0xA8), &[3]).unwrap();
    let second = replace_lost(&w.laptop, &user_key(0xA9), &[]).unwrap();
    assert!(second.list_changed && second.removed.is_empty());
    assert_eq!((version(&first.device_list), version(&second.device_list)), (2, 3));
    let (older, newer) = (handover_to(&first, w.phone.address()), handover_to(&second, w.phone.address()));
    take_handover(&w.phone, &w.laptop, newer).unwrap();
    let before = rows(&w.phone);
    assert!(is_rollback(&w.phone.decrypt(w.laptop.address(), older).unwrap_err()));
    assert_eq!(rows(&w.phone), before);
    assert_eq!(w.phone.device_list().unwrap(), Some(second.device_list.clone()));

    let restored = Device::open_in(snapshot, &PHONE_KEY).unwrap();
    assert_eq!(version(&restored.device_list().unwrap().unwrap()), 1);
    take_handover(&restored, &w.laptop, newer).unwrap();
    let before = restored.backend().snapshot();
    assert!(is_rollback(&restored.decrypt(w.laptop.address(), older).unwrap_err()));
    assert_eq!(restored.backend().snapshot(), before);
    assert_eq!(restored.device_list().unwrap(), Some(second.device_list));
    let from_tablet = w.tablet.encrypt(restored.address(), b"remember me?").unwrap();
    assert_eq!(
        refusal(restored.decrypt(w.tablet.address(), &from_tablet)),
        DeviceListError::UnlistedDevice { device_id: 3 }
    );
}

/// The restored copy of the phone gets the older handover alone first (the
/// server holds the newer one back): it takes it, then the newer one when
/// it comes; it never goes back.
#[test]
fn held_a_restored_store_given_the_older_handover_first_still_ends_on_the_newest() {
    let w = world();
    let snapshot = copy_of(w.phone.backend());
    let first = replace_lost(&w.laptop, &user_key(0xA8), &[3]).unwrap();
    let second = replace_lost(&w.laptop, &user_key(0xA9), &[]).unwrap();
    let restored = Device::open_in(snapshot, &PHONE_KEY).unwrap();
    take_handover(&restored, &w.laptop, handover_to(&first, w.phone.address())).unwrap();
    assert_eq!(restored.device_list().unwrap(), Some(first.device_list));
    take_handover(&restored, &w.laptop, handover_to(&second, w.phone.address())).unwrap();
    assert_eq!(restored.device_list().unwrap(), Some(second.device_list));
}

// ---------------------------------------------------------------------------
// Held: atomicity and races
// ---------------------------------------------------------------------------

/// A handover's commit whose write fails writes nothing (the session does
/// not advance, the list is not taken); a commit raced by another handle's
/// list write (the lists mark changed) is stale and writes nothing; the
/// handover then decrypts and commits whole.
#[test]
fn held_a_failed_or_raced_handover_commit_writes_nothing() {
    let store = Arc::new(MemoryBackend::new());
    let (phone, second) = racy_pair(&store, 1, &PHONE_KEY);
    let w = build(phone, device("alice", 2, 0xA2));
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let wire = handover_to(&replaced, w.phone.address()).to_vec();

    let pending = w.phone.decrypt(w.laptop.address(), &wire).unwrap();
    let before = store.snapshot();
    w.phone.backend().fail_next();
    assert!(matches!(w.phone.commit(pending), Err(DeviceError::Store(StoreError::Locked))));
    assert_eq!(store.snapshot(), before);

    // Another handle writes Bob's newer list between the commit's read and write.
    let pending = w.phone.decrypt(w.laptop.address(), &wire).unwrap();
    let bob_list = list(&user_key(0xB0), "bob", 2, &[&w.bob]);
    w.phone.backend().queue({
        let second = second.clone();
        move || drop(second.update_device_list(&bob_list).unwrap())
    });
    let before_users = w.phone.device_list().unwrap();
    let result = w.phone.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    assert_eq!(w.phone.device_list().unwrap(), before_users);
    assert_eq!(version(&second.user_trust("bob").unwrap().unwrap().signed_list().clone()), 2);

    take_handover(&w.phone, &w.laptop, &wire).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list));
}

/// `replace_user_identity` whose write fails writes nothing and returns no
/// handover; called again it makes them anew, and the phone reads them.
#[test]
fn held_a_failed_replacement_writes_nothing() {
    let store = Arc::new(MemoryBackend::new());
    let (laptop, _second) = racy_pair(&store, 2, &LAPTOP_KEY);
    let w = build(device("alice", 1, 0xA1), laptop);
    let before = store.snapshot();
    w.laptop.backend().fail_next();
    let fresh = user_key(0xA9);
    assert!(matches!(replace_lost(&w.laptop, &fresh, &[3]), Err(DeviceError::Store(StoreError::Locked))));
    assert_eq!(store.snapshot(), before);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).unwrap();
}

/// Races on the laptop's store between its read and its write, by a second
/// handle of that store: a replacement raced by a link (it is recomputed on
/// the linked list: the new device kept, version 3), a link raced by a
/// replacement (refused, `WrongSigner`, the linked device not added), a
/// replacement raced by another replacement (recomputed: the raced call's
/// key is the last, and the phone ends on it whatever the order of the
/// handovers), a replacement raced by an encryption to the phone (the
/// handover follows it on the session; the phone reads both).
#[test]
fn held_a_replacement_raced_by_another_handle_is_recomputed() {
    let now = SystemTime::now();
    let store = Arc::new(MemoryBackend::new());
    let (laptop, second) = racy_pair(&store, 2, &LAPTOP_KEY);
    let w = build(device("alice", 1, 0xA1), laptop);
    let old = UserIdentityKeyPair::from_seed(&w.alice.to_seed());

    // A replacement raced by a link.
    let desktop = device("alice", 4, 0xA4);
    let offer = desktop.link_offer(now).unwrap();
    let linked = Arc::new(Mutex::new(None));
    w.laptop.backend().queue({
        let (second, code, linked) = (second.clone(), offer.code().to_vec(), linked.clone());
        move || *linked.lock().unwrap() = Some(second.link_device(&code, &old, now).unwrap())
    });
    let fresh = user_key(0xA9);
    // The user keeps the phone and the desktop being linked (a device of
    // `keep` the list does not name yet is kept once the recomputed list
    // names it).
    let replaced = w.laptop.replace_user_identity(&fresh, &[1, 4]).unwrap();
    assert_eq!(w.laptop.backend().conflicts(), 1);
    let new_list = replaced.device_list.verify().unwrap();
    assert_eq!(new_list.version(), 3);
    assert_eq!(new_list.devices().iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2, 4]);
    assert_eq!(replaced.missing, vec![desktop.address().clone()]);
    let linked = linked.lock().unwrap().take().unwrap();
    desktop.finish_link(&offer, &linked.message, now).unwrap();
    w.laptop.start_session(&desktop.prekey_bundle().unwrap()).unwrap();
    let again = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    take_handover(&desktop, &w.laptop, handover_to(&again, desktop.address())).unwrap();
    take_handover(&w.phone, &w.laptop, handover_to(&again, w.phone.address())).unwrap();
    assert_eq!(desktop.device_list().unwrap(), Some(replaced.device_list.clone()));

    // A link raced by a replacement.
    let other = device("alice", 5, 0xA5);
    let offer = other.link_offer(now).unwrap();
    let next = user_key(0xAA);
    let next_list = Arc::new(Mutex::new(None));
    w.laptop.backend().queue({
        let (second, next, next_list) =
            (second.clone(), UserIdentityKeyPair::from_seed(&next.to_seed()), next_list.clone());
        move || *next_list.lock().unwrap() = Some(replace_lost(&second, &next, &[]).unwrap())
    });
    let result = w.laptop.link_device(offer.code(), &fresh, now);
    assert_eq!(refusal(result), DeviceListError::WrongSigner);
    let raced = next_list.lock().unwrap().take().unwrap();
    assert_eq!(w.laptop.device_list().unwrap(), Some(raced.device_list.clone()));
    assert!(raced.device_list.verify().unwrap().device(5).is_none());

    // A replacement raced by another replacement.
    let (mine, theirs) = (user_key(0xB1), user_key(0xB2));
    let their_result = Arc::new(Mutex::new(None));
    w.laptop.backend().queue({
        let (second, theirs, their_result) =
            (second.clone(), UserIdentityKeyPair::from_seed(&theirs.to_seed()), their_result.clone());
        move || *their_result.lock().unwrap() = Some(replace_lost(&second, &theirs, &[]).unwrap())
    });
    let my_result = replace_lost(&w.laptop, &mine, &[]).unwrap();
    let their_result = their_result.lock().unwrap().take().unwrap();
    assert_eq!(*my_result.device_list.verify().unwrap().user_identity_key(), mine.public_key());
    assert_eq!(version(&my_result.device_list), version(&their_result.device_list) + 1);
    assert_eq!(w.laptop.device_list().unwrap(), Some(my_result.device_list.clone()));
    // The phone gets the newer first, then the older: it ends on the newer.
    for (device, results) in [(&w.phone, [&my_result, &their_result]), (&desktop, [&their_result, &my_result])] {
        for r in results {
            match take_handover(device, &w.laptop, handover_to(r, device.address())) {
                Ok(_) => {}
                Err(e) => assert!(is_rollback(&e), "{e:?}"),
            }
        }
        assert_eq!(device.device_list().unwrap(), Some(my_result.device_list.clone()));
    }

    // A replacement raced by an encryption to the phone.
    let raced_message = Arc::new(Mutex::new(None));
    w.laptop.backend().queue({
        let (second, raced_message, phone) = (second.clone(), raced_message.clone(), w.phone.address().clone());
        move || *raced_message.lock().unwrap() = Some(second.encrypt(&phone, b"raced").unwrap())
    });
    let last = replace_lost(&w.laptop, &user_key(0xB3), &[]).unwrap();
    let raced_message = raced_message.lock().unwrap().take().unwrap();
    assert_eq!(receive_kind(&w.phone, &w.laptop, &raced_message).unwrap(), Got::App(b"raced".to_vec()));
    take_handover(&w.phone, &w.laptop, handover_to(&last, w.phone.address())).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), Some(last.device_list));
}

/// Two handles of the laptop's store replace the identity at once, from two
/// threads, with two keys: both calls succeed (or one is refused with a
/// `Conflict`, having written nothing), no message key is used twice (the
/// phone decrypts every handover: none is a duplicate), and the phone ends
/// on the laptop's list.
#[test]
fn held_replacements_from_two_threads_on_two_handles_converge() {
    let store = Arc::new(MemoryBackend::new());
    let laptop = Device::create_in(store.clone(), &LAPTOP_KEY, alice(2), UNIX_EPOCH).unwrap();
    let w = build(device("alice", 1, 0xA1), laptop);
    let second = Device::open_in(store.clone(), &LAPTOP_KEY).unwrap();
    let (a, b) = (user_key(0xC1), user_key(0xC2));
    let (first, other) = std::thread::scope(|s| {
        let one = s.spawn(|| replace_lost(&w.laptop, &a, &[3]));
        let two = s.spawn(|| replace_lost(&second, &b, &[3]));
        (one.join().unwrap(), two.join().unwrap())
    });
    let results: Vec<_> = [first, other]
        .into_iter()
        .filter_map(|r| match r {
            Ok(replaced) => Some(replaced),
            Err(DeviceError::Store(StoreError::Conflict { .. })) => None,
            Err(e) => panic!("{e:?}"),
        })
        .collect();
    assert!(!results.is_empty());
    let own = w.laptop.device_list().unwrap().unwrap();
    assert!(results.iter().any(|r| r.device_list == own));
    for r in &results {
        match take_handover(&w.phone, &w.laptop, handover_to(r, w.phone.address())) {
            Ok(_) => {}
            Err(e) => assert!(is_rollback(&e), "{e:?}"),
        }
    }
    assert_eq!(w.phone.device_list().unwrap(), Some(own));
}

/// The phone and the laptop each replace the identity at once (the user
/// pressed "remove the tablet" on both): each refuses the other's handover
/// with a typed error (`Rollback`, nothing written); calling again with the
/// same key sends the same list and changes nothing; a replacement with a
/// fresh key on one of them settles it, and both agree.
#[test]
fn held_concurrent_replacements_on_two_devices_are_typed_and_resolvable() {
    let w = world();
    let by_phone = replace_lost(&w.phone, &user_key(0x71), &[3]).unwrap();
    let by_laptop = replace_lost(&w.laptop, &user_key(0x72), &[3]).unwrap();
    let (phone_before, laptop_before) = (rows(&w.phone), rows(&w.laptop));
    let e = w.phone.decrypt(w.laptop.address(), handover_to(&by_laptop, w.phone.address())).unwrap_err();
    assert!(is_rollback(&e), "{e:?}");
    let e = w.laptop.decrypt(w.phone.address(), handover_to(&by_phone, w.laptop.address())).unwrap_err();
    assert!(is_rollback(&e), "{e:?}");
    assert_eq!((rows(&w.phone), rows(&w.laptop)), (phone_before, laptop_before));
    let same = replace_lost(&w.laptop, &user_key(0x72), &[3]).unwrap();
    assert!(!same.list_changed);
    assert!(is_rollback(&w.phone.decrypt(w.laptop.address(), handover_to(&same, w.phone.address())).unwrap_err()));
    let settle = replace_lost(&w.laptop, &user_key(0x73), &[]).unwrap();
    take_handover(&w.phone, &w.laptop, handover_to(&settle, w.phone.address())).unwrap();
    assert_eq!(w.phone.device_list().unwrap(), w.laptop.device_list().unwrap());
}

/// The call's edges: a lost device id the list does not name is ignored;
/// lost ids repeated, or `u32::MAX`, change nothing but the named device;
/// removing every other device makes no handover; the key of our list with
/// nothing to remove makes the handovers of the list we hold.
#[test]
fn held_the_calls_edges() {
    let w = world();
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3, 3, 77, u32::MAX]).unwrap();
    assert_eq!(replaced.removed, vec![(3, w.tablet.identity_key())]);
    let only = replace_lost(&w.laptop, &user_key(0xAA), &[1]).unwrap();
    assert!(only.handovers.is_empty() && only.missing.is_empty());
    assert_eq!(only.device_list.verify().unwrap().devices(), &[(2, w.laptop.identity_key())]);
    let again = replace_lost(&w.laptop, &user_key(0xAA), &[]).unwrap();
    assert!(!again.list_changed && again.handovers.is_empty());
    // The phone (its own list still the first one) takes the first call's
    // handover, which names it; the later list, which drops it, never
    // reaches it.
    take_handover(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address())).unwrap();
}

// ---------------------------------------------------------------------------
// Second pass: the acknowledgment
//
// Commits 8786fd9 and 7b68277: every handover's commit returns an
// acknowledgment (control field 7, `HandoverAck`), and the replacing device
// keeps the devices that have not acknowledged yet (`awaiting_handover`,
// `Device::awaiting_handovers`), PROTOCOL.md 23.9 "The acknowledgment".
// The question: can a hostile server, a contact, the thief, or a modified
// library make `awaiting_handovers()` lie (a device reported as having
// taken the handover when it did not, or one kept forever that did)?
//
// Two findings (ignored tests): A1, a device that holds the new identity
// under a newer list refuses the handover made again (`Rollback`) and never
// acknowledges it; A2, a backup drops the awaiting set, so a restored
// replacing device awaits no device though the handover was dropped. Held:
// old-identity, replayed, relabeled, forged (thief, contact) and malformed
// acknowledgments; the thief's race; failed and raced commits (no
// acknowledgment returned, no older row written back); the set through
// calls made again, list updates, links, store snapshots and batches.
// ---------------------------------------------------------------------------

/// Decrypts and commits `wire` (a handover from `from`) at `to`, then every
/// acknowledgment the commit returned at `from`: the handover taken and its
/// acknowledgment read, whatever the backends.
fn hand_over_and_acknowledge<A: Backend, B: Backend>(
    to: &Device<A>,
    from: &Device<B>,
    wire: &[u8],
) -> Result<(), DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    for ack in to.commit(pending)? {
        assert_eq!(ack.to, *from.address());
        let pending = from.decrypt(to.address(), &ack.message)?;
        assert_eq!(pending.kind(), MessageKind::Control);
        assert!(from.commit(pending)?.is_empty());
    }
    Ok(())
}

/// The acknowledgment `to` returns when it takes `wire` from `from` (not
/// delivered: the server holds it).
fn held_ack<A: Backend, B: Backend>(to: &Device<A>, from: &Device<B>, wire: &[u8]) -> Vec<u8> {
    let pending = to.decrypt(from.address(), wire).unwrap();
    let mut acks = to.commit(pending).unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].to, *from.address());
    acks.remove(0).message
}

/// Decrypts and commits an acknowledgment `wire` from `from` at `at`.
fn read_ack<B: Backend>(at: &Device<B>, from: &Address, wire: &[u8]) -> Result<(), DeviceError> {
    let pending = at.decrypt(from, wire)?;
    assert_eq!(pending.kind(), MessageKind::Control);
    assert!(at.commit(pending)?.is_empty());
    Ok(())
}

/// An acknowledgment of an older identity (the first replacement's, held by
/// the server) delivered after a second replacement: it is read (the
/// session advances) but the awaiting set and the users row are untouched;
/// only the acknowledgment of the newer identity clears it.
#[test]
fn held_an_acknowledgment_of_an_older_identity_clears_nothing_of_a_newer_one() {
    let w = world();
    let first = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let old_ack = held_ack(&w.phone, &w.laptop, handover_to(&first, w.phone.address()));
    let second = w.laptop.replace_user_identity(&user_key(0xAA), &[1]).unwrap();
    assert!(second.list_changed);
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);

    let users = |d: &Dev| rows(d).into_iter().filter(|((t, _), _)| *t == Table::Users).collect::<Vec<_>>();
    let before = users(&w.laptop);
    read_ack(&w.laptop, w.phone.address(), &old_ack).unwrap();
    assert_eq!(users(&w.laptop), before);
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);

    hand_over_and_acknowledge(&w.phone, &w.laptop, handover_to(&second, w.phone.address())).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
    assert_eq!(w.phone.device_list().unwrap(), Some(second.device_list));
}

/// A genuine acknowledgment relabeled by the server to another own device
/// (one still awaited), to a contact or to an unknown device is refused and
/// changes no row; read from its sender it clears that sender only; replayed,
/// it is refused and changes no row.
#[test]
fn held_a_replayed_or_relabeled_acknowledgment_is_refused_and_changes_nothing() {
    let w = world();
    // A new identity keeping every device: the phone and the tablet await it.
    let replaced = w.laptop.replace_user_identity(&user_key(0xA9), &[1, 3]).unwrap();
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1), alice(3)]);
    let ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));

    let before = rows(&w.laptop);
    for from in [alice(3), w.bob.address().clone(), alice(7)] {
        assert!(w.laptop.decrypt(&from, &ack).is_err(), "{from:?}");
        assert_eq!(rows(&w.laptop), before);
    }
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1), alice(3)]);

    read_ack(&w.laptop, w.phone.address(), &ack).unwrap();
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(3)]);
    let before = rows(&w.laptop);
    assert!(w.laptop.decrypt(w.phone.address(), &ack).is_err());
    assert_eq!(rows(&w.laptop), before);
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(3)]);
}

/// The thief (the lost tablet's store and library, modified) and a contact
/// forge acknowledgments of the new key (public: it is in the published
/// list) and of the old one, sealed on their real sessions with the laptop,
/// and relabeled to the phone: all refused (`UnlistedDevice`,
/// `ForeignHandover`, or not opening on the phone's session); no row
/// changes and the phone still awaits.
#[cfg(feature = "hazmat")]
#[test]
fn held_the_thief_and_a_contact_cannot_acknowledge_in_a_devices_place() {
    use samizdat::hazmat::handover_ack_content;
    use support::users::forged_control;

    let w = world();
    let fresh = user_key(0xA9);
    replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let before = rows(&w.laptop);
    for key in [fresh.public_key(), w.alice.public_key()] {
        let content = handover_ack_content(key.as_bytes());
        let from_thief = forged_control(&w.tablet, 0xA3, w.laptop.address(), &content);
        let result = w.laptop.decrypt(w.tablet.address(), &from_thief);
        assert!(matches!(refusal(result), DeviceListError::UnlistedDevice { device_id: 3 }));
        assert!(w.laptop.decrypt(w.phone.address(), &from_thief).is_err());
        let from_bob = forged_control(&w.bob, 0xB1, w.laptop.address(), &content);
        let result = w.laptop.decrypt(w.bob.address(), &from_bob);
        assert!(matches!(refusal(result), DeviceListError::ForeignHandover { .. }));
        assert!(w.laptop.decrypt(w.phone.address(), &from_bob).is_err());
        assert_eq!(rows(&w.laptop), before);
    }
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
}

/// Malformed acknowledgments a modified library of the phone seals on its
/// real session (every truncation and bit flip of a genuine one, stray
/// fields, wrong lengths, keys that are no point): never a panic, no row
/// changed by `decrypt`, and `parse_handover_ack` agrees (a content it
/// refuses is refused by `decrypt`). Committed, those that decrypt never
/// clear the phone unless they carry the new key.
#[cfg(feature = "hazmat")]
#[test]
fn held_malformed_acknowledgments_never_panic_and_change_nothing() {
    use samizdat::hazmat::{handover_ack_content, parse_handover_ack};
    use support::users::forged_control;

    let w = world();
    let fresh = user_key(0xA9);
    replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let genuine = handover_ack_content(fresh.public_key().as_bytes());
    assert_eq!(genuine.len(), 36);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for cut in 1..genuine.len() {
        inputs.push(genuine[..cut].to_vec());
    }
    for at in 0..genuine.len() {
        for bit in [0x01, 0x80] {
            let mut flipped = genuine.clone();
            flipped[at] ^= bit;
            inputs.push(flipped);
        }
    }
    inputs.push([genuine.clone(), vec![0x00]].concat());
    inputs.push([genuine.clone(), vec![0x10, 0x01]].concat());
    inputs.push([genuine.clone(), genuine.clone()].concat());
    inputs.push(handover_ack_content(&[]));
    inputs.push(handover_ack_content(&[0x00; 31]));
    inputs.push(handover_ack_content(&[0x00; 33]));
    inputs.push(handover_ack_content(&[0xff; 32]));
    inputs.push(handover_ack_content(&[0x00; 32]));
    inputs.push(vec![0x3a]);
    inputs.push(vec![0x3a, 0x00]);
    inputs.push(vec![0x3a, 0x7f, 0x0a, 0x20]);

    let before = rows(&w.laptop);
    for content in &inputs {
        let wire = forged_control(&w.phone, 0xA1, w.laptop.address(), content);
        let result = w.laptop.decrypt(w.phone.address(), &wire);
        assert_eq!(rows(&w.laptop), before, "{content:02x?}");
        if matches!(parse_handover_ack(content), Some(Err(_))) {
            assert!(result.is_err(), "{content:02x?}");
        }
    }
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
}

/// The race of PROTOCOL.md 23.9: the thief replaces first (dropping the
/// laptop) and the phone takes its handover. The phone's acknowledgment to
/// the thief, delivered to the laptop, is refused and changes nothing; the
/// phone refuses the laptop's handover (and a call made again), sends no
/// acknowledgment, and the laptop keeps showing it as awaiting: the user
/// can see that the phone has not caught up.
#[test]
fn held_a_device_that_took_the_thiefs_handover_stays_awaited() {
    let w = world();
    let thief = w.tablet.replace_user_identity(&user_key(0x7F), &[1]).unwrap();
    let ack_to_thief = held_ack(&w.phone, &w.tablet, handover_to(&thief, w.phone.address()));

    let ours = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    let before = rows(&w.laptop);
    assert!(w.laptop.decrypt(w.phone.address(), &ack_to_thief).is_err());
    assert_eq!(rows(&w.laptop), before);

    let result = w.phone.decrypt(w.laptop.address(), handover_to(&ours, w.phone.address()));
    assert!(matches!(refusal(result), DeviceListError::UnlistedDevice { device_id: 2 }));
    let again = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    assert!(!again.list_changed);
    assert!(w.phone.decrypt(w.laptop.address(), handover_to(&again, w.phone.address())).is_err());
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    // The thief's acknowledgment reaches the thief only: the laptop is
    // untouched by it.
    read_ack(&w.tablet, w.phone.address(), &ack_to_thief).unwrap();
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
}

/// A handover's commit whose write fails (another handle wrote the session
/// between its read and its write: `StalePending`; or the store refuses
/// it) returns an error, so no acknowledgment ciphertext: the list is not
/// taken and the laptop still awaits the phone. The same for a handover made
/// again (no change, H12, no own-row write). Read again, it is taken and
/// acknowledged.
#[test]
fn held_a_handover_commit_that_fails_returns_no_acknowledgment() {
    let store = Arc::new(MemoryBackend::new());
    let (phone, second) = racy_pair(&store, 1, &PHONE_KEY);
    let w = build(phone, device("alice", 2, 0xA2));
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let wire = handover_to(&replaced, w.phone.address()).to_vec();
    let race = |second: &Arc<Device<Arc<MemoryBackend>>>| {
        let second = second.clone();
        move || drop(second.encrypt(&alice(2), b"raced").unwrap())
    };

    let pending = w.phone.decrypt(w.laptop.address(), &wire).unwrap();
    w.phone.backend().queue(race(&second));
    let result = w.phone.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    assert_eq!(w.phone.device_list().unwrap().map(|l| version(&l)), Some(1));
    let pending = w.phone.decrypt(w.laptop.address(), &wire).unwrap();
    let before = store.snapshot();
    w.phone.backend().fail_next();
    assert!(matches!(w.phone.commit(pending), Err(DeviceError::Store(StoreError::Locked))));
    assert_eq!(store.snapshot(), before);
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);

    // Taken; its acknowledgment dropped; made again and raced.
    let _dropped = held_ack(&w.phone, &w.laptop, &wire);
    let again = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let wire = handover_to(&again, w.phone.address()).to_vec();
    let pending = w.phone.decrypt(w.laptop.address(), &wire).unwrap();
    w.phone.backend().queue(race(&second));
    let result = w.phone.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    hand_over_and_acknowledge(&w.phone, &w.laptop, &wire).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
}

/// Races on the laptop's store between an acknowledgment's read and its
/// commit's write: another handle writes a newer list under the new key
/// (the commit is stale, and never writes the older list back; read again,
/// the acknowledgment is taken on the newer list); another handle replaces
/// the identity again (stale; read again, the acknowledgment is of an older
/// identity and clears nothing); the store refuses the write (nothing
/// written; read again, it is taken).
#[test]
fn held_a_raced_acknowledgment_commit_is_stale_and_never_restores_an_older_row() {
    let store = Arc::new(MemoryBackend::new());
    let (laptop, second) = racy_pair(&store, 2, &LAPTOP_KEY);
    let w = build(device("alice", 1, 0xA1), laptop);
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));

    let pending = w.laptop.decrypt(w.phone.address(), &ack).unwrap();
    let before = store.snapshot();
    w.laptop.backend().fail_next();
    assert!(matches!(w.laptop.commit(pending), Err(DeviceError::Store(StoreError::Locked))));
    assert_eq!(store.snapshot(), before);

    let entries = [(1, w.phone.identity_key()), (2, w.laptop.identity_key())];
    let newer =
        samizdat::user::DeviceList::new("alice", 3, &fresh.public_key(), entries).unwrap().sign(&fresh).unwrap();
    let pending = w.laptop.decrypt(w.phone.address(), &ack).unwrap();
    w.laptop.backend().queue({
        let (second, newer) = (second.clone(), newer.clone());
        move || drop(second.set_device_list(&newer).unwrap())
    });
    let result = w.laptop.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    assert_eq!(w.laptop.device_list().unwrap(), Some(newer.clone()));
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    read_ack(&w.laptop, w.phone.address(), &ack).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
    assert_eq!(w.laptop.device_list().unwrap(), Some(newer));

    // Another replacement by another handle, between the read and the write.
    let store = Arc::new(MemoryBackend::new());
    let (laptop, second) = racy_pair(&store, 2, &LAPTOP_KEY);
    let w = build(device("alice", 1, 0xA1), laptop);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));
    let pending = w.laptop.decrypt(w.phone.address(), &ack).unwrap();
    let next = Arc::new(Mutex::new(None));
    w.laptop.backend().queue({
        let (second, next) = (second.clone(), next.clone());
        move || *next.lock().unwrap() = Some(second.replace_user_identity(&user_key(0xAA), &[1]).unwrap())
    });
    let result = w.laptop.commit(pending);
    assert!(matches!(result, Err(DeviceError::Session(SessionError::StalePending))), "{result:?}");
    let next = next.lock().unwrap().take().unwrap();
    assert_eq!(w.laptop.device_list().unwrap(), Some(next.device_list.clone()));
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    read_ack(&w.laptop, w.phone.address(), &ack).unwrap();
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    assert_eq!(w.laptop.device_list().unwrap(), Some(next.device_list.clone()));
    hand_over_and_acknowledge(&w.phone, &w.laptop, handover_to(&next, w.phone.address())).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
}

/// A call made again on one handle, raced by another handle that reads the
/// phone's acknowledgment and clears the set: the call is recomputed (the
/// session row moved) and does not put the phone back; its handover, read
/// by the phone (no change), is acknowledged again and changes nothing.
#[test]
fn held_a_call_made_again_raced_by_an_acknowledgment_does_not_restore_the_set() {
    let store = Arc::new(MemoryBackend::new());
    let (laptop, second) = racy_pair(&store, 2, &LAPTOP_KEY);
    let w = build(device("alice", 1, 0xA1), laptop);
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));
    w.laptop.backend().queue({
        let second = second.clone();
        move || read_ack(&*second, &alice(1), &ack).unwrap()
    });
    let again = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    assert!(!again.list_changed);
    assert!(w.laptop.backend().conflicts() >= 1);
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
    hand_over_and_acknowledge(&w.phone, &w.laptop, handover_to(&again, w.phone.address())).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
    assert_eq!(w.phone.device_list().unwrap(), Some(replaced.device_list));
}

/// The awaiting set on the replacing device through the calls that rewrite
/// its own row under the same key: a call made again keeps it; a newer list
/// (`update_device_list`) that drops a device stops listing it, and its
/// acknowledgment is then refused and changes nothing; a list that names it
/// again (`set_device_list`) lists it again and takes its acknowledgment;
/// linking a new device keeps the set and does not add the new device
/// (it holds the key from the link); a list under another key clears it.
#[test]
fn held_the_awaiting_set_survives_list_updates_links_and_calls_made_again() {
    let now = SystemTime::now();
    let w = world();
    let fresh = user_key(0xA9);
    let replaced = w.laptop.replace_user_identity(&fresh, &[1, 3]).unwrap();
    let awaiting = || w.laptop.awaiting_handovers().unwrap();
    assert_eq!(awaiting(), vec![alice(1), alice(3)]);
    let phone_ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));
    let tablet_ack = held_ack(&w.tablet, &w.laptop, handover_to(&replaced, w.tablet.address()));

    let again = w.laptop.replace_user_identity(&fresh, &[1, 3]).unwrap();
    assert!(!again.list_changed);
    assert_eq!(awaiting(), vec![alice(1), alice(3)]);

    let without = list(&fresh, "alice", 3, &[&w.phone, &w.laptop]);
    w.laptop.update_device_list(&without).unwrap();
    assert_eq!(awaiting(), vec![alice(1)]);
    let before = rows(&w.laptop);
    let result = w.laptop.decrypt(w.tablet.address(), &tablet_ack);
    assert!(matches!(refusal(result), DeviceListError::UnlistedDevice { device_id: 3 }));
    assert_eq!(rows(&w.laptop), before);

    let with = list(&fresh, "alice", 4, &[&w.phone, &w.laptop, &w.tablet]);
    w.laptop.set_device_list(&with).unwrap();
    assert_eq!(awaiting(), vec![alice(1), alice(3)]);
    read_ack(&w.laptop, w.tablet.address(), &tablet_ack).unwrap();
    assert_eq!(awaiting(), vec![alice(1)]);

    let desktop = device("alice", 4, 0xA4);
    let offer = desktop.link_offer(now).unwrap();
    let linked = w.laptop.link_device(offer.code(), &fresh, now).unwrap();
    desktop.finish_link(&offer, &linked.message, now).unwrap();
    assert_eq!(awaiting(), vec![alice(1)]);

    read_ack(&w.laptop, w.phone.address(), &phone_ack).unwrap();
    assert!(awaiting().is_empty());

    // Again pending, then a list under another key: nothing awaits.
    let third = w.laptop.replace_user_identity(&user_key(0xAA), &[1, 3, 4]).unwrap();
    assert_eq!(awaiting(), vec![alice(1), alice(3), alice(4)]);
    assert_eq!(third.missing, vec![alice(4)]);
    let other = list(&user_key(0xAB), "alice", 1, &[&w.phone, &w.laptop]);
    w.laptop.set_device_list(&other).unwrap();
    assert!(awaiting().is_empty());
}

/// The replacing device's store restored (`copy_of`): to just after the
/// replacement, it lists the phone again (it cannot know) and the same held
/// acknowledgment clears it; to before the replacement, it holds the old
/// identity, nothing awaits, and the acknowledgment of the new identity
/// writes no users row.
#[test]
fn held_a_restored_replacing_device_awaits_again_and_is_cleared_by_the_same_ack() {
    let w = world();
    let before_replacement = copy_of(w.laptop.backend());
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let after_replacement = copy_of(w.laptop.backend());
    let ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));
    read_ack(&w.laptop, w.phone.address(), &ack).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());

    let restored = Device::open_in(after_replacement, &LAPTOP_KEY).unwrap();
    assert_eq!(restored.awaiting_handovers().unwrap(), vec![alice(1)]);
    read_ack(&restored, w.phone.address(), &ack).unwrap();
    assert!(restored.awaiting_handovers().unwrap().is_empty());

    let older = Device::open_in(before_replacement, &LAPTOP_KEY).unwrap();
    let held = older.device_list().unwrap();
    let users = |d: &Dev| rows(d).into_iter().filter(|((t, _), _)| *t == Table::Users).collect::<Vec<_>>();
    let before = users(&older);
    read_ack(&older, w.phone.address(), &ack).unwrap();
    assert_eq!(users(&older), before);
    assert!(older.awaiting_handovers().unwrap().is_empty());
    assert_eq!(older.device_list().unwrap(), held);
}

/// **Finding A1: a device that holds the new identity under a newer list
/// refuses the handover made again, so it never acknowledges it, and the
/// replacing device keeps awaiting it.**
///
/// The phone takes the laptop's handover; the server drops its
/// acknowledgment. The phone then signs a newer list with the new key it
/// now holds (linking a device does exactly this; here the same devices, at
/// version 3). As PROTOCOL.md 23.9 tells the app, the laptop (still on
/// version 2) calls `replace_user_identity` again with the same key pair:
/// the phone refuses the handover made again as a `Rollback` (H12 fails:
/// not the list it holds; H13 fails: `replaces` is the old key, which it no
/// longer holds, and version 2 is not newer than 3) and returns no
/// acknowledgment. No error reaches the laptop: `awaiting_handovers()`
/// keeps listing the phone, which did take the handover, and the documented
/// remedy ("call again until the set is empty") loops, until the laptop
/// happens to take the phone's newer list (the call's documentation no
/// longer says to fetch our own newest list first).
///
/// Fix: in `plan_handover`, a handover whose list is signed by the user
/// identity key we hold (we already took that identity) and is not newer
/// than our list is "already taken": no change (as H12) and acknowledged. An
/// acknowledgment asserts only that the device holds the key, which such a
/// list shows. (Alternatively, acknowledge a refused handover whose key is
/// the one we hold.)
///
/// Fixed as suggested (PROTOCOL.md 23.9, H12).
#[test]
fn finding_a_device_on_a_newer_list_of_the_new_identity_never_acknowledges_it() {
    let w = world();
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    let _dropped = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));
    let newer = list(&fresh, "alice", 3, &[&w.phone, &w.laptop]);
    w.phone.set_device_list(&newer).unwrap();

    let again = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    assert!(!again.list_changed);
    let result = deliver(&w, w.laptop.address(), w.phone.address(), handover_to(&again, w.phone.address()));
    assert!(result.is_ok(), "the phone holds the new identity but refuses the handover made again: {result:?}");
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
}

/// **Finding A2: a replacing device restored from a backup reports that no
/// device awaits the handover, though none took it.**
///
/// The laptop replaces the identity; the server drops the handover to the
/// phone, so the phone stays on the old identity (the lost tablet still in
/// its list, still sent every sent sync: the fourth finding of the first
/// pass, which the acknowledgment was added to surface). The laptop's
/// store is then lost or reinstalled and restored from a backup exported
/// after the replacement. `restore_rows` writes our own row with
/// `awaiting_handover` empty ("no device awaits it"), so
/// `awaiting_handovers()` on the restored laptop is empty: it reports the
/// phone as having taken a handover it never got, and the app has no reason
/// to make it again. PROTOCOL.md 23.9 documents that a backup drops the
/// replaced key, not that it silences the awaiting set.
///
/// Fix: carry `awaiting_handover` (and `replaced_identity`) in the backup
/// (a new field of `BackupContents`, checked against the list on restore);
/// or, at least, restore conservatively: every other device of our own
/// list awaiting, so that the app makes the handovers again with the key it
/// holds (`replace_user_identity` with the list's key and every device
/// kept), and the acknowledgments of the devices that have it clear them.
#[test]
#[ignore = "limit (PROTOCOL.md 23.9): a backup does not carry the devices awaiting a handover"]
fn finding_a_restored_backup_forgets_the_devices_awaiting_the_handover() {
    use samizdat::device::BackupParams;

    let w = world();
    let fresh = user_key(0xA9);
    let replaced = replace_lost(&w.laptop, &fresh, &[3]).unwrap();
    drop(replaced.handovers); // the server drops the handover to the phone
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    let now = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let file = w.laptop.export_backup(b"a long passphrase", BackupParams::MINIMUM, now).unwrap();
    let restored =
        Device::restore_in(MemoryBackend::new(), &StorageKey::from_bytes([0xC2; 32]), &file, b"a long passphrase", now)
            .unwrap();
    assert_eq!(restored.device_list().unwrap(), Some(replaced.device_list));
    // The phone never took the handover: it still holds the old list.
    assert_eq!(w.phone.device_list().unwrap().map(|l| version(&l)), Some(1));
    assert_eq!(restored.awaiting_handovers().unwrap(), vec![alice(1)], "the phone never acknowledged");
}

/// An acknowledgment in a batch (`decrypt_batch`) is left for `decrypt`
/// (`NotInBatch`): the batch's commit writes no users row and does not
/// consume it; read by `decrypt`, it clears the phone.
#[test]
fn held_an_acknowledgment_in_a_batch_is_left_for_decrypt() {
    let w = world();
    let replaced = replace_lost(&w.laptop, &user_key(0xA9), &[3]).unwrap();
    let ack = held_ack(&w.phone, &w.laptop, handover_to(&replaced, w.phone.address()));
    let users = |d: &Dev| rows(d).into_iter().filter(|((t, _), _)| *t == Table::Users).collect::<Vec<_>>();
    let before = users(&w.laptop);
    let batch = w.laptop.decrypt_batch(&[(w.phone.address().clone(), ack.clone())]).unwrap();
    assert!(matches!(batch.results(), [Err(SessionError::NotInBatch)]), "{:?}", batch.results());
    w.laptop.commit_batch(batch).unwrap();
    assert_eq!(users(&w.laptop), before);
    assert_eq!(w.laptop.awaiting_handovers().unwrap(), vec![alice(1)]);
    read_ack(&w.laptop, w.phone.address(), &ack).unwrap();
    assert!(w.laptop.awaiting_handovers().unwrap().is_empty());
}
