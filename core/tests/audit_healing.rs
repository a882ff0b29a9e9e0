//! Outside audit of session healing (issue 15, commits c57f57f to e8b6adc):
//! `Device::heal`, the reset and its resends, the sealed outbox
//! (`encrypt_kept`, `acknowledge`), the record's bookkeeping, and their
//! loaders.
//!
//! Tests named `held_*` attack a promise of the issue and pass: the
//! defence held. Tests named `finding_*` assert the promise that should
//! hold; they failed on the audited code (then ignored, `#[ignore =
//! "finding: ..."]`) and pass since the fixes of 6d866d9, so they run with
//! the suite. Their doc comments give each defect step by step.
//!
//! The findings, all fixed (each `finding_*` test's doc comment has the
//! steps, the impact and the fix suggested):
//!
//! 1. (medium) A kept message of 245,681 to 245,696 bytes cannot be resent
//!    a fourth time: the resend with three `also` ids exceeds
//!    `MAX_PLAINTEXT_LEN`, and the commit of every reset naming it fails
//!    (nothing it names is resent; the healer loops at the rate limit).
//! 2. (medium) `outbox_max_age` is enforced only by the next `encrypt_kept`
//!    to that peer: an old plaintext stays in the store and is resent.
//! 3. (low to medium) More than `MAX_ARCHIVED_STATES` unanswered heals in a
//!    row (peer offline) drop the session the peer is still on.
//! 4. (low) The rate limit's clock: a clock once far ahead blocks heals
//!    until it catches up; at `now = u64::MAX` the limit is off. (`now` is
//!    a `SystemTime` since: the end of the clock is `END` below.)
//! 5. (low) The outbox index loader does not check `resent_as` for repeats,
//!    the slot's own id, or later slots' ids.
//! 6. (medium) A late message of the old session, read after answering a
//!    reset, makes the old session current again half the time (`promotes`
//!    rule 6): both sides out of step until another heal.
//!
//! The tests that craft store rows need `samizdat::hazmat` (run with
//! `--features hazmat`); without it they are compiled out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
#![cfg_attr(not(feature = "hazmat"), allow(dead_code, unused_imports))]

mod support;

use samizdat::store::StorageKey;
use std::time::{Duration, UNIX_EPOCH};
use std::{
    cell::RefCell,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use rand_core::Rng as _;
use samizdat::{
    DecryptError, ErrorKind, Recovery, SessionError,
    address::Address,
    device::{Device, DeviceError, Heal, HealPolicy, MessageKind, Outgoing},
    heal::{MessageId, message_id},
    limits::{MAX_ARCHIVED_STATES, MAX_KEPT_PLAINTEXT_LEN, MAX_OUTBOX_MESSAGES, MAX_RESET_IDS, MAX_RESET_NAMINGS},
    store::{Backend, MemoryBackend, Row, StoreError, Table, Write},
};
use support::{copy_of, rng};

type Dev = Device<MemoryBackend>;

/// The default reset interval (`HealPolicy::default().reset_interval`).
const INTERVAL: u64 = 3_600;

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn device(name: &str, key: u8) -> Dev {
    Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), address(name), UNIX_EPOCH).unwrap()
}

/// Alice (key 1) and Bob (key 2) with a session both ways; each kept the
/// message it sent (`hello`, `hello back`).
fn pair() -> (Dev, Dev) {
    let (alice, bob) = (device("alice", 1), device("bob", 2));
    connect(&alice, &bob);
    (alice, bob)
}

fn connect<B: Backend, C: Backend>(alice: &Device<B>, bob: &Device<C>) {
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt_kept(bob.address(), b"hello", UNIX_EPOCH).unwrap();
    assert_eq!(receive(bob, alice, &hello).unwrap(), Got::App(b"hello".to_vec()));
    let back = bob.encrypt_kept(alice.address(), b"hello back", UNIX_EPOCH).unwrap();
    assert_eq!(receive(alice, bob, &back).unwrap(), Got::App(b"hello back".to_vec()));
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// A message for the app.
    App(Vec<u8>),
    /// A control message; what its commit returned to send.
    Control(Vec<Outgoing>),
}

/// Decrypts and commits `wire` from `from` at `to`.
fn receive<B: Backend, C: Backend>(to: &Device<B>, from: &Device<C>, wire: &[u8]) -> Result<Got, DeviceError> {
    receive_from(to, from.address(), wire)
}

fn receive_from<B: Backend>(to: &Device<B>, from: &Address, wire: &[u8]) -> Result<Got, DeviceError> {
    let pending = to.decrypt(from, wire)?;
    let kind = pending.kind();
    let plaintext = pending.plaintext().to_vec();
    let sent = to.commit(pending)?;
    Ok(match kind {
        MessageKind::Direct => {
            assert!(sent.is_empty(), "a message for the app sent something");
            Got::App(plaintext)
        }
        _ => Got::Control(sent),
    })
}

fn kind(result: Result<Got, DeviceError>) -> ErrorKind {
    result.expect_err("an error").kind()
}

/// `healer` heals with `peer` after `unreadable`, at `now`: the reset.
fn heal<B: Backend, C: Backend>(healer: &Device<B>, peer: &Device<C>, unreadable: &[Vec<u8>], now: u64) -> Vec<u8> {
    match healer.heal(&peer.prekey_bundle().unwrap(), unreadable, UNIX_EPOCH + Duration::from_secs(now)).unwrap() {
        Heal::Sent(reset) => {
            assert_eq!(&reset.to, peer.address());
            reset.message
        }
        other => panic!("no reset: {other:?}"),
    }
}

/// `to` commits `from`'s reset: the messages it sends again.
fn answer<B: Backend, C: Backend>(to: &Device<B>, from: &Device<C>, reset: &[u8]) -> Vec<Vec<u8>> {
    match receive(to, from, reset).unwrap() {
        Got::Control(sent) => sent.into_iter().map(|o| o.message).collect(),
        other => panic!("a reset read as {other:?}"),
    }
}

/// Each side sends one message the other reads.
fn converse<B: Backend, C: Backend>(alice: &Device<B>, bob: &Device<C>, tag: &str) {
    let to_bob = alice.encrypt(bob.address(), format!("a {tag}").as_bytes()).unwrap();
    assert_eq!(receive(bob, alice, &to_bob).unwrap(), Got::App(format!("a {tag}").into_bytes()));
    let to_alice = bob.encrypt(alice.address(), format!("b {tag}").as_bytes()).unwrap();
    assert_eq!(receive(alice, bob, &to_alice).unwrap(), Got::App(format!("b {tag}").into_bytes()));
}

fn same(a: &MemoryBackend, b: &MemoryBackend) -> bool {
    a.snapshot() == b.snapshot()
}

// ---------------------------------------------------------------------------
// Backends that count and interleave
// ---------------------------------------------------------------------------

/// Whether `key` is the key of an outbox entry row: a 32-byte session row
/// key, `/out/`, a 32-byte keyed hash (PROTOCOL.md 20.3).
fn is_entry_key(key: &[u8]) -> bool {
    key.len() == 32 + 5 + 32 && &key[32..37] == b"/out/"
}

/// Whether a row is an outbox index: every row of table `outboxes` (keyed
/// by the peer's 32-byte session row key, PROTOCOL.md 20.3).
fn is_index(table: Table) -> bool {
    table == Table::Outboxes
}

type Hook = Box<dyn FnOnce() + Send>;

/// A hook run before the first read of a key the function matches.
type GetHook = (fn(&[u8]) -> bool, Hook);

/// A named edit of a crafted row.
type Edit<'a, T> = (&'a str, Box<dyn Fn(&mut T)>);

/// A named edit of a crafted row, and whether the row still loads.
type LoadEdit<'a, T> = (&'a str, bool, Box<dyn Fn(&mut T)>);

/// A shared store seen through a handle that counts what it reads and can
/// run another handle's call, once, just before one of its reads (the
/// first get of a key `before_get` matches) or its next `apply`.
struct Hooked {
    store: Arc<MemoryBackend>,
    gets: Mutex<Vec<(Table, Vec<u8>)>>,
    bytes_read: AtomicUsize,
    before_get: Mutex<Option<GetHook>>,
    before_apply: Mutex<Option<Hook>>,
}

impl Hooked {
    fn new(store: Arc<MemoryBackend>) -> Self {
        Self {
            store,
            gets: Mutex::new(Vec::new()),
            bytes_read: AtomicUsize::new(0),
            before_get: Mutex::new(None),
            before_apply: Mutex::new(None),
        }
    }

    fn reset_counts(&self) {
        self.gets.lock().unwrap().clear();
        self.bytes_read.store(0, Ordering::SeqCst);
    }

    fn entry_gets(&self) -> usize {
        self.gets.lock().unwrap().iter().filter(|(_, key)| is_entry_key(key)).count()
    }

    fn all_gets(&self) -> usize {
        self.gets.lock().unwrap().len()
    }
}

impl Backend for Hooked {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let hook = {
            let mut slot = self.before_get.lock().unwrap();
            match slot.take() {
                Some((matches, hook)) if matches(key) => Some(hook),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some(hook) = hook {
            hook();
        }
        self.gets.lock().unwrap().push((table, key.to_vec()));
        let value = self.store.get(table, key)?;
        self.bytes_read.fetch_add(value.as_ref().map_or(0, Vec::len), Ordering::SeqCst);
        Ok(value)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.store.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let hook = self.before_apply.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.store.apply(writes)
    }
}

// ---------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------

/// **Finding 1 (medium): a kept message of (nearly) the largest size cannot
/// be sent again a fourth time, and the whole reset naming it fails.**
///
/// `MAX_KEPT_PLAINTEXT_LEN` = `MAX_PLAINTEXT_LEN` - 64 leaves room for a
/// resend's framing as it was before `Resend.also` was added (8863e69). A
/// resend is `22 varint(r) [0a 10 id] [12 varint(len) plaintext] [1a 10
/// also]*`: 4 + 18 + 4 + 18 * n bytes around the plaintext, 26 + 18 * n, so
/// with the 245,696-byte plaintext the outbox accepts, n = 3 earlier
/// resends (`also`) make 245,776 bytes, over `MAX_PLAINTEXT_LEN` (245,760).
/// (Any plaintext over 245,680 bytes fails at n = 3; over 245,662 at n =
/// 4.)
///
/// A message is resent a fourth time as soon as three resends were lost on
/// the way: Bob's resets were then never answered, so they do not count
/// towards giving up (`MAX_RESET_NAMINGS` counts answered resets only) and
/// Bob's next `heal` names it again by itself. Alice's `commit` of that
/// fourth reset fails with `SessionError::Encrypt(MessageTooLarge)` (code
/// `limit_exceeded`, "fix call": the app cannot fix anything) in
/// `encrypt_resends`; nothing is written, and the same happens at every
/// attempt. So: the reset's new session is never installed, *none* of the
/// messages the reset named is sent again (here a small one too), and
/// Bob's reset stays unanswered, so `awaiting_resends` stays non-zero and
/// Bob's app heals again every interval, each reset failing the same way at
/// Alice (a loop at the rate limit) until the entry leaves Alice's outbox
/// (acknowledged, 30 days, or 256 newer kept messages).
///
/// Suggested fix: make `MAX_KEPT_PLAINTEXT_LEN` leave room for the largest
/// resend (`MAX_PLAINTEXT_LEN - 26 - 18 * MAX_RESEND_IDS`, say `- 128`,
/// and check it in the parser too), or drop the oldest `also` ids until the
/// resend fits; and never let one entry fail a reset's commit (skip an
/// entry that cannot be sent rather than failing the others).
#[test]
fn finding_a_largest_kept_message_blocks_the_fourth_reset_naming_it() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(10), ..HealPolicy::default() }).unwrap();
    let big = vec![0x42; MAX_KEPT_PLAINTEXT_LEN];
    let big_wire = alice.encrypt_kept(bob.address(), &big, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let small_wire = alice.encrypt_kept(bob.address(), b"small", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    // Three resets, each answered by Alice, whose resends are lost.
    for round in 0..3u64 {
        let unreadable = if round == 0 { vec![big_wire.clone(), small_wire.clone()] } else { Vec::new() };
        let reset = heal(&bob, &alice, &unreadable, 100 + 10 * round);
        assert_eq!(answer(&alice, &bob, &reset).len(), 2, "round {round}");
        assert_eq!(bob.awaiting_resends(alice.address()).unwrap(), 2, "lost resends do not count");
    }
    // The fourth reset, made by Bob's app because both are still awaited.
    let reset = heal(&bob, &alice, &[], 130);
    let before = copy_of(alice.backend());
    let pending = alice.decrypt(bob.address(), &reset).unwrap();
    let result = alice.commit(pending);
    assert!(same(&before, alice.backend()) || result.is_ok());
    let resent = result.expect("the fourth reset naming the largest kept message commits");
    assert_eq!(resent.len(), 2);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, &wire.message).unwrap()).collect();
    assert_eq!(got, vec![Got::App(big), Got::App(b"small".to_vec())]);
}

/// The boundary of finding 1, which holds: the first three resends of a
/// kept message of the largest size go (n = 0, 1, 2 earlier resends), and
/// `encrypt_kept` refuses one byte more before anything is read or written.
#[test]
fn held_a_largest_kept_message_is_resent_three_times_and_one_byte_more_is_refused() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(10), ..HealPolicy::default() }).unwrap();
    let before = copy_of(alice.backend());
    let error = alice
        .encrypt_kept(bob.address(), &vec![0; MAX_KEPT_PLAINTEXT_LEN + 1], UNIX_EPOCH + Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::LimitExceeded, "{error:?}");
    assert!(same(&before, alice.backend()), "a refused encrypt_kept wrote");
    let big = vec![0x42; MAX_KEPT_PLAINTEXT_LEN];
    let big_wire = alice.encrypt_kept(bob.address(), &big, UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    for round in 0..3u64 {
        let unreadable = if round == 0 { vec![big_wire.clone()] } else { Vec::new() };
        let reset = heal(&bob, &alice, &unreadable, 100 + 10 * round);
        let resent = answer(&alice, &bob, &reset);
        assert_eq!(resent.len(), 1, "round {round}");
        if round == 2 {
            assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(big.clone()));
        }
    }
    assert_eq!(bob.awaiting_resends(alice.address()).unwrap(), 0);
}

/// **Finding 2 (medium): `outbox_max_age` is enforced only by the next
/// `encrypt_kept` to the same peer.** A plaintext older than the policy's
/// age stays sealed in the store, and a reset sends it again, for as long
/// as the app sends that peer no further kept message.
///
/// `HealPolicy::outbox_max_age` says "how long the outbox keeps a plaintext
/// no acknowledgement removed", and PROTOCOL.md 20.8 "only kept messages
/// come back: ... not past `outbox_max_age`". But the age is compared only
/// inside `encrypt_kept` (to the same peer); `plan_reset` reads entries
/// without looking at `sent_at` (it has no `now`), and nothing else expires
/// them (`scrub` does not). Here Alice kept a message at time 0 and sent Bob
/// nothing since; 31 days later Bob's reset naming it (its id is known to
/// the server, which carried it) gets it again, and its plaintext was in
/// Alice's store all along: forward secrecy at rest of kept messages lasts
/// until the next send to that peer, not `outbox_max_age`. With
/// `resend_to_new_identity`, a newly trusted identity gets it too.
///
/// Suggested fix: give the outbox a `now` when it is read: e.g. a
/// `Device::expire_outbox(now)` the app calls (documented next to
/// `acknowledge`), and a stored high-water mark of the `now`s seen (by
/// `encrypt_kept`, `heal`, `expire_outbox`) that `plan_reset` compares
/// `sent_at` with, skipping (and the commit deleting) entries past the age.
#[test]
fn finding_an_outbox_entry_past_its_age_is_still_resent() {
    let (alice, bob) = pair();
    let policy = HealPolicy::default();
    let old = alice.encrypt_kept(bob.address(), b"a month old", UNIX_EPOCH + Duration::from_secs(10)).unwrap();
    let now = 10 + policy.outbox_max_age.as_secs() + 24 * 3_600;
    // Fixed: the app's `expire_outbox(now)` (at start, or going to the
    // background) deletes it, and a reset judges ages as of the latest time
    // the outbox was given.
    assert!(alice.expire_outbox(UNIX_EPOCH + Duration::from_secs(now)).unwrap() >= 1);
    assert_eq!(alice.outbox_len(bob.address()).unwrap(), 0);
    let reset = heal(&bob, &alice, std::slice::from_ref(&old), now);
    let resent = answer(&alice, &bob, &reset);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, wire).unwrap()).collect();
    assert!(got.is_empty(), "a plaintext kept past outbox_max_age came back: {got:?}");
}

/// **Finding 3 (low to medium): healing again while the peer is offline
/// pushes the old session out of the record; what the peer sends on it
/// meanwhile is lost.**
///
/// PROTOCOL.md 20.1 (step 3) tells the app to heal again at `retry_at`
/// while `awaiting_resends` is not zero, and a reset nobody answered does
/// not count towards giving up; so while the peer is offline (its phone
/// off for a night), the app makes one reset per interval, and each
/// `InitiateHeal` archives the previous current state: the previous
/// unanswered heal, and, after `MAX_ARCHIVED_STATES` = 10 of them, the
/// displaced session the peer is still on (its oldest archived state) is
/// dropped. The peer, back online, sends what it composed offline on that
/// session before it reads the resets: `NoMatchingState` at Bob. It is
/// lost unless it was sent with `encrypt_kept` (then the next heal brings
/// it, once the interval passed again); a plain `encrypt` is lost for good.
/// The promise that a reset never discards a message the other side could
/// still decrypt holds for up to 10 resets in a row, not more. (Alice
/// also answers each of the 11 resets with the same resends: 11 copies,
/// one for the app.)
///
/// Suggested fix: a heal while our last reset is still unanswered replaces
/// that unanswered initiation instead of archiving one more state (the
/// peer reads the resets in order and ends on the last); or evict our own
/// unanswered initiations before a displaced state; or let `heal` hand the
/// same reset again while it is unanswered (as `AnswerAgain` does).
#[test]
fn finding_repeated_unanswered_heals_drop_the_session_the_peer_is_on() {
    let (alice, bob) = pair();
    let forged = b"a forgery the server sent as alice's".to_vec();
    let heals = MAX_ARCHIVED_STATES + 1;
    for k in 0..heals {
        let unreadable = if k == 0 { vec![forged.clone()] } else { Vec::new() };
        let now = 100 + INTERVAL * u64::try_from(k).unwrap();
        let _lost_while_alice_is_offline = heal(&bob, &alice, &unreadable, now);
        assert_eq!(bob.awaiting_resends(alice.address()).unwrap(), 1, "the app heals again");
    }
    // Alice, back online, sends what she wrote offline, on the session she
    // is on, before she reads anything.
    let composed = alice.encrypt(bob.address(), b"written offline").unwrap();
    assert_eq!(receive(&bob, &alice, &composed).unwrap(), Got::App(b"written offline".to_vec()));
}

/// The part of finding 3 that holds: up to `MAX_ARCHIVED_STATES`
/// unanswered heals in a row, the peer's messages on the session it is on
/// (a DH step included) still decrypt; and once the peer reads the resets,
/// each kept message reaches the app once.
#[test]
fn held_up_to_ten_unanswered_heals_keep_the_session_the_peer_is_on() {
    let (alice, bob) = pair();
    let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let mut resets = Vec::new();
    for k in 0..MAX_ARCHIVED_STATES {
        let unreadable = if k == 0 { vec![lost.clone()] } else { Vec::new() };
        resets.push(heal(&bob, &alice, &unreadable, 100 + INTERVAL * u64::try_from(k).unwrap()));
    }
    let composed = alice.encrypt(bob.address(), b"written offline").unwrap();
    assert_eq!(receive(&bob, &alice, &composed).unwrap(), Got::App(b"written offline".to_vec()));
    let mut delivered = 0;
    for reset in &resets {
        for wire in answer(&alice, &bob, reset) {
            match receive(&bob, &alice, &wire).unwrap() {
                Got::App(text) => {
                    assert_eq!(text, b"lost");
                    delivered += 1;
                }
                Got::Control(sent) => assert!(sent.is_empty()),
            }
        }
    }
    assert_eq!(delivered, 1, "one copy of ten for the app");
    assert_eq!(kind(receive(&bob, &alice, &lost)), ErrorKind::Duplicate);
}

/// **Finding 4 (low): the rate limit's clock arithmetic.** (a) A clock
/// that was once far ahead blocks healing with that peer until it catches
/// up: `heal` returns `TooSoon { retry_at: last_reset_at + interval }`
/// whenever `now < last_reset_at + interval`, also when `now` is *before*
/// `last_reset_at` (the device's clock was wrong, a year ahead, and was
/// corrected): every heal with that peer is refused for a year, and
/// `retry_at` tells the app to wait that long. Nothing else bounds it (the
/// stored `last_reset_at` is not checked against anything). The same clock
/// leaves outbox entries "from the future" unexpired for as long (`now -
/// sent_at` saturates at 0). (b) At the end of the clock the limit is off:
/// `last_reset_at + interval` saturates at `u64::MAX`, and `now < u64::MAX`
/// is false for `now = u64::MAX`, so heals at `now = u64::MAX` (an app that
/// passes `u64::MAX` for "now", or a clock near the end) are never refused.
///
/// Suggested fix: (a) treat `now < last_reset_at` as a clock that went
/// back: `retry_at = min(last_reset_at, now) + interval` (store `now` as
/// the new `last_reset_at` when refusing, or compare in both directions);
/// likewise expire an entry whose `sent_at` is ahead of `now` by more than
/// the age; (b) compare `now - last_reset_at < interval` (with `now >=
/// last_reset_at`) instead of adding.
/// The last whole second a `SystemTime` holds on Unix (`time_t` is an
/// `i64`): the end of the clock an app can pass.
const END: u64 = i64::MAX as u64;

#[test]
fn finding_the_rate_limit_clock_arithmetic() {
    let (alice, bob) = pair();
    let real_now = 1_000_000;
    let wrong = real_now + 365 * 24 * 3_600;
    heal(&bob, &alice, &[], wrong);
    // The clock is corrected; time passes, well past the interval.
    let later = real_now + 2 * INTERVAL;
    let second = bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(later)).unwrap();
    // (b), on another pair: two heals at the end of the clock.
    let (carol, dave) = (device("carol", 3), device("dave", 4));
    connect(&carol, &dave);
    heal(&dave, &carol, &[], END);
    let again = dave.heal(&carol.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(END)).unwrap();
    let a = match second {
        Heal::Sent(_) => None,
        Heal::TooSoon { retry_at } => Some(format!("(a) refused until {retry_at:?}, at {later}")),
        other => panic!("{other:?}"),
    };
    let b = (!matches!(again, Heal::TooSoon { .. })).then(|| format!("(b) a second reset at the same time: {again:?}"));
    assert!(a.is_none() && b.is_none(), "{a:?} {b:?}");
}

/// Clocks going backwards, in the small: no panic, no underflow. A heal
/// at 5,000 then at 100 or 0: `TooSoon` at 5,000 + interval (the limit is
/// not lifted by a clock set back); near the end of the clock `retry_at`
/// saturates. An `encrypt_kept` at an earlier `now` than the entries it
/// finds keeps them (their age is 0), and they expire relative to the
/// later clock.
#[test]
fn held_clocks_going_backwards_neither_panic_nor_lift_the_rate_limit() {
    assert_eq!(HealPolicy::default().reset_interval, Duration::from_secs(INTERVAL));
    let (alice, bob) = pair();
    heal(&bob, &alice, &[], 5_000);
    assert_eq!(
        bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(100)).unwrap(),
        Heal::TooSoon { retry_at: UNIX_EPOCH + Duration::from_secs(5_000 + INTERVAL) }
    );
    assert_eq!(
        bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH).unwrap(),
        Heal::TooSoon { retry_at: UNIX_EPOCH + Duration::from_secs(5_000 + INTERVAL) }
    );
    let reset = heal(&bob, &alice, &[], END - 1);
    answer(&alice, &bob, &reset);
    assert_eq!(
        bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(END - 1)).unwrap(),
        Heal::TooSoon { retry_at: UNIX_EPOCH + Duration::from_secs(END) }
    );

    alice
        .set_heal_policy(HealPolicy {
            outbox_max_age: Duration::from_secs(100),
            outbox_max_messages: 10,
            ..HealPolicy::default()
        })
        .unwrap();
    let peer = bob.address();
    alice.encrypt_kept(peer, b"at 1000", UNIX_EPOCH + Duration::from_secs(1_000)).unwrap();
    // Ages are judged as of the latest time the outbox was given (1000; a
    // clock set back by less than CLOCK_CORRECTION does not move it back):
    // "hello" (at 0) and "at 500" are past 100 at 1000.
    alice.encrypt_kept(peer, b"at 500", UNIX_EPOCH + Duration::from_secs(500)).unwrap();
    assert_eq!(alice.outbox_len(peer).unwrap(), 1);
    alice.encrypt_kept(peer, b"at 0", UNIX_EPOCH).unwrap();
    assert_eq!(alice.outbox_len(peer).unwrap(), 1);
    alice.encrypt_kept(peer, b"at 1099", UNIX_EPOCH + Duration::from_secs(1_099)).unwrap();
    assert_eq!(alice.outbox_len(peer).unwrap(), 2, "only 1000 and 1099 are younger than 100 at 1099");
    alice.encrypt_kept(peer, b"at max", UNIX_EPOCH + Duration::from_secs(END)).unwrap();
    assert_eq!(alice.outbox_len(peer).unwrap(), 1);
}

// ---------------------------------------------------------------------------
// A hostile peer: what one reset costs us
// ---------------------------------------------------------------------------

/// A hostile peer (it holds a session, and sets its own reset interval to
/// 0) sends reset after reset, each naming 64 ids: the ids of Alice's kept
/// messages (256 of them, 1 KiB each) and of their resends. Each reset
/// costs Alice at most 64 entry reads (plus the session row, its seeds,
/// the prekey rows and the index), and sends back at most 64 resends, one
/// per entry even when the reset names an entry by its first id and by the
/// ids of its resends. Ten resets leave the outbox with the same rows; its
/// index grows only by the at most 4 resend ids per entry. (A reset costs
/// the peer one of our prekeys, and is at most about 2 KB; what it makes
/// us send is at most 64 plaintexts of up to 245,696 bytes: the documented
/// amplification, per message.)
#[test]
fn held_hostile_resets_cost_at_most_64_reads_and_64_resends_each() {
    let store = Arc::new(MemoryBackend::new());
    let hooked =
        Device::create_in(Hooked::new(store.clone()), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH)
            .unwrap();
    let bob = device("bob", 2);
    connect(&hooked, &bob);
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(0), ..HealPolicy::default() }).unwrap();
    let kept: Vec<Vec<u8>> = (0..MAX_OUTBOX_MESSAGES)
        .map(|i| {
            hooked
                .encrypt_kept(
                    bob.address(),
                    &[u8::try_from(i % 251).unwrap(); 1_024],
                    UNIX_EPOCH + Duration::from_secs(5),
                )
                .unwrap()
        })
        .collect();
    assert_eq!(hooked.outbox_len(bob.address()).unwrap(), MAX_OUTBOX_MESSAGES);
    let rows = |store: &MemoryBackend| store.scan(Table::Sessions).unwrap().len();
    let rows_before = rows(&store);
    let index_len =
        || store.snapshot().into_iter().find(|((table, _), _)| is_index(*table)).map(|(_, value)| value.len()).unwrap();
    let mut resend_wires: Vec<Vec<u8>> = Vec::new();
    let (mut most_read, mut largest_index, mut most_sent_bytes) = (0, 0, 0);
    for round in 0..10usize {
        // Originals of a window, and the resends of the last reset.
        let mut unreadable: Vec<Vec<u8>> = kept.iter().skip((round * 32) % 192).take(64).cloned().collect();
        unreadable.extend(resend_wires.iter().rev().take(64).cloned());
        let reset = heal(&bob, &hooked, &unreadable, 0);
        hooked.backend().reset_counts();
        let pending = hooked.decrypt(bob.address(), &reset).unwrap();
        let entry_reads = hooked.backend().entry_gets();
        let all_reads = hooked.backend().all_gets();
        most_read = most_read.max(hooked.backend().bytes_read.load(Ordering::SeqCst));
        let sent = hooked.commit(pending).unwrap();
        assert!(entry_reads <= MAX_RESET_IDS, "round {round}: {entry_reads} entry rows read");
        assert!(all_reads <= MAX_RESET_IDS + 8, "round {round}: {all_reads} rows read");
        assert!(sent.len() <= MAX_RESET_IDS, "round {round}: {} resends", sent.len());
        assert!(!sent.is_empty());
        most_sent_bytes = most_sent_bytes.max(sent.iter().map(|o| o.message.len()).sum::<usize>());
        resend_wires = sent.into_iter().map(|o| o.message).collect();
        assert_eq!(rows(&store), rows_before, "round {round}: rows added or removed");
        largest_index = largest_index.max(index_len());
    }
    println!(
        "per hostile reset: at most {MAX_RESET_IDS} entry reads, {most_read} bytes read, {most_sent_bytes} bytes \
         sent back at most; outbox index at most {largest_index} bytes sealed"
    );
    assert!(largest_index <= 40_000, "{largest_index}");
}

/// A reset naming one message by its first id and by the ids of each of
/// its resends (each of which the reset's sender "could not read") sends it
/// once; the resend reaches the app once, under the first id.
#[test]
fn held_a_reset_naming_a_message_by_all_its_ids_sends_it_once() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(1), ..HealPolicy::default() }).unwrap();
    let original = alice.encrypt_kept(bob.address(), b"one message", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let mut all = vec![original.clone()];
    for now in [10, 20] {
        let reset = heal(&bob, &alice, &all, now);
        let resent = answer(&alice, &bob, &reset);
        assert_eq!(resent.len(), 1);
        all.push(resent[0].clone());
    }
    let reset = heal(&bob, &alice, &all, 30);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(resent.len(), 1, "one message, named by three ids");
    let pending = bob.decrypt(alice.address(), &resent[0]).unwrap();
    assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Direct, &b"one message"[..]));
    assert_eq!(pending.message_id(), Some(message_id(&original)));
    bob.commit(pending).unwrap();
    // Every other copy: a duplicate, or (an earlier resend, on the same
    // unanswered session the later resets reused) a control message with
    // nothing for the app.
    for wire in &all {
        match receive(&bob, &alice, wire) {
            Err(error) => assert_eq!(error.kind(), ErrorKind::Duplicate, "{error:?}"),
            Ok(got) => assert_eq!(got, Got::Control(Vec::new())),
        }
    }
}

// ---------------------------------------------------------------------------
// Replays
// ---------------------------------------------------------------------------

/// The server replays Bob's reset to Alice: while its session is kept it
/// is a duplicate; after Alice dropped that state (eleven newer sessions
/// of Bob's pushed it out), it is `DuplicatePreKeyMessage`, `out_of_step`
/// (the code says so since 8863e69; PROTOCOL.md 20.1 still says
/// `invalid_message`): Alice's app would heal, at most once per interval,
/// and the heal brings nothing. Either way nothing is resent and nothing
/// changes.
#[test]
fn held_a_replayed_reset_resends_nothing() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(0), ..HealPolicy::default() }).unwrap();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&kept), 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
    converse(&alice, &bob, "after");
    let before = copy_of(alice.backend());
    assert_eq!(kind(receive(&alice, &bob, &reset)), ErrorKind::Duplicate);
    assert!(same(&before, alice.backend()));
    // Bob starts eleven new sessions; each is answered.
    for i in 0..=MAX_ARCHIVED_STATES {
        bob.start_session(&alice.prekey_bundle().unwrap()).unwrap();
        converse(&bob, &alice, &format!("session {i}"));
    }
    let before = copy_of(alice.backend());
    let error = alice.decrypt(bob.address(), &reset).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::DuplicatePreKeyMessage)), "{error:?}");
    assert_eq!(error.kind().recovery(), Recovery::Heal);
    assert!(same(&before, alice.backend()));
}

/// Alice's store restored from a backup taken before she read Bob's reset;
/// the server replays the reset: her restored store reads it again (its
/// prekey is there) and sends the resends again, on the same session's
/// first chain again: at Bob they are `Rollback` (out of step: a sender
/// that went back), so Bob's app heals; the resend that heal brings is
/// `Control` (the message reached the app already), and the original is
/// `Resent`. Bob's app gets the message once.
#[test]
fn held_a_reset_replayed_into_a_restored_store_delivers_once() {
    let (alice, bob) = pair();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let backup = copy_of(alice.backend());
    let reset = heal(&bob, &alice, std::slice::from_ref(&kept), 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
    let alice = Device::open_in(backup, &StorageKey::from_bytes([1; 32])).unwrap();
    let again = answer(&alice, &bob, &reset);
    assert_eq!(again.len(), 1);
    let error = bob.decrypt(alice.address(), &again[0]).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::Decrypt(DecryptError::Rollback { .. }))), "{error:?}");
    assert_eq!(error.kind().recovery(), Recovery::Heal);
    let reset = heal(&bob, &alice, std::slice::from_ref(&again[0]), 10 + INTERVAL);
    let third = answer(&alice, &bob, &reset);
    assert_eq!(third.len(), 1, "the replayed resend's id names the message");
    assert_eq!(receive(&bob, &alice, &third[0]).unwrap(), Got::Control(Vec::new()));
    assert_eq!(kind(receive(&bob, &alice, &kept)), ErrorKind::Duplicate);
}

// ---------------------------------------------------------------------------
// Crossing heals, in every order
// ---------------------------------------------------------------------------

/// A network of two devices, with messages in flight delivered in an order
/// drawn from a seed, and apps that follow the error codes: `out_of_step`
/// (or `no_session`) makes them heal once the interval allows, and while
/// `awaiting_resends` is not zero.
struct Crossing {
    sides: [Dev; 2],
    net: Vec<(usize, Vec<u8>)>,
    unreadable: [Vec<Vec<u8>>; 2],
    got: [Vec<Vec<u8>>; 2],
    resets: [usize; 2],
    now: u64,
}

impl Crossing {
    fn deliver(&mut self, to: usize, wire: &[u8]) {
        let from = 1 - to;
        let result = receive(&self.sides[to], &self.sides[from], wire);
        match result {
            Ok(Got::App(text)) => self.got[to].push(text),
            Ok(Got::Control(sent)) => self.net.extend(sent.into_iter().map(|o| (from, o.message))),
            Err(e) if e.kind().recovery() == Recovery::Heal || e.kind() == ErrorKind::NoSession => {
                self.unreadable[to].push(wire.to_vec());
            }
            Err(e) if e.kind() == ErrorKind::Duplicate => {}
            Err(e) => panic!("side {to}: {e:?}"),
        }
    }

    fn drain(&mut self, rng: &mut impl rand_core::Rng) {
        while !self.net.is_empty() {
            let pick = usize::try_from(rng.next_u64() % u64::try_from(self.net.len()).unwrap()).unwrap();
            let (to, wire) = self.net.remove(pick);
            self.deliver(to, &wire);
        }
    }

    /// Rounds of talk after the healing: each side sends a kept message,
    /// everything is delivered, and apps heal when told. Returns the number
    /// of rounds before one in which both read each other's message with
    /// nothing to heal (at most `max`).
    fn talk(&mut self, rng: &mut impl rand_core::Rng, max: usize) -> usize {
        for round in 0..=max {
            self.now += INTERVAL;
            for side in 0..2 {
                let text = format!("side {side} round {round} at {}", self.now);
                let peer = self.sides[1 - side].address().clone();
                let wire = self.sides[side]
                    .encrypt_kept(&peer, text.as_bytes(), UNIX_EPOCH + Duration::from_secs(self.now))
                    .unwrap();
                self.net.push((1 - side, wire));
            }
            self.drain(rng);
            let waiting =
                (0..2).any(|side| self.sides[side].awaiting_resends(self.sides[1 - side].address()).unwrap() > 0);
            if self.unreadable.iter().all(Vec::is_empty) && !waiting {
                return round;
            }
            let mut heals = 0;
            while self.heal_if_told() {
                self.drain(rng);
                self.now += INTERVAL;
                heals += 1;
                assert!(heals <= 6, "still healing");
            }
        }
        panic!("no clean round in {max} rounds");
    }

    /// Each app heals if it has to; returns whether one did.
    fn heal_if_told(&mut self) -> bool {
        let mut any = false;
        for side in 0..2 {
            let peer = &self.sides[1 - side];
            let waiting = self.sides[side].awaiting_resends(peer.address()).unwrap() > 0;
            if self.unreadable[side].is_empty() && !waiting {
                continue;
            }
            match self.sides[side]
                .heal(
                    &peer.prekey_bundle().unwrap(),
                    &self.unreadable[side],
                    UNIX_EPOCH + Duration::from_secs(self.now),
                )
                .unwrap()
            {
                Heal::Sent(reset) => {
                    self.unreadable[side].clear();
                    self.resets[side] += 1;
                    self.net.push((1 - side, reset.message));
                    any = true;
                }
                Heal::TooSoon { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        any
    }
}

/// Both sides heal at once, each naming a message of the other's it could
/// not read; everything in flight (the two resets, the two originals, and
/// every resend the commits make) is delivered in an order drawn from a
/// seed, 200 seeds. Then the apps heal as told until nothing is left: every
/// kept message reaches its app exactly once, the resets stop, and within 3
/// rounds of talk (apps healing when told) both read each other with
/// nothing left to heal; no message reaches an app twice. (That some seeds
/// need those extra rounds is finding 6.)
#[test]
fn held_crossing_heals_in_any_order_converge_and_deliver_once() {
    let (mut worst, mut worst_talk, mut unclean) = (0, 0, 0);
    for seed in 0..200u64 {
        let mut rng = rng(seed);
        let (alice, bob) = pair();
        let to_bob = alice.encrypt_kept(bob.address(), b"for bob", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let to_alice = bob.encrypt_kept(alice.address(), b"for alice", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let from_bob = heal(&bob, &alice, std::slice::from_ref(&to_bob), 10);
        let from_alice = heal(&alice, &bob, std::slice::from_ref(&to_alice), 10);
        let mut world = Crossing {
            sides: [alice, bob],
            net: vec![(0, from_bob), (1, from_alice), (1, to_bob.clone()), (0, to_alice.clone())],
            unreadable: [Vec::new(), Vec::new()],
            got: [Vec::new(), Vec::new()],
            resets: [1, 1],
            now: 10,
        };
        world.drain(&mut rng);
        let mut rounds = 0;
        loop {
            world.now += INTERVAL;
            if !world.heal_if_told() {
                break;
            }
            world.drain(&mut rng);
            rounds += 1;
            assert!(rounds <= 6, "seed {seed}: still healing after {rounds} rounds");
        }
        worst = worst.max(rounds);
        assert_eq!(world.got[1], vec![b"for bob".to_vec()], "seed {seed}");
        assert_eq!(world.got[0], vec![b"for alice".to_vec()], "seed {seed}");
        let talk = world.talk(&mut rng, 3);
        if talk > 0 {
            unclean += 1;
        }
        worst_talk = worst_talk.max(talk);
        assert!(world.resets.iter().all(|n| *n <= 6), "seed {seed}: {:?} resets", world.resets);
        for side in 0..2 {
            let mut texts = world.got[side].clone();
            texts.sort();
            texts.dedup();
            assert_eq!(texts.len(), world.got[side].len(), "seed {seed}: a message reached side {side}'s app twice");
        }
    }
    println!(
        "crossing heals, 200 orders: at most {worst} more rounds of healing; then {unclean} needed more \
         healing to talk (finding 6), at most {worst_talk} rounds"
    );
}

/// Crossing heals where one side heals twice before it reads anything,
/// and the other reads the second reset before the first: every kept
/// message reaches its app once.
#[test]
fn held_crossing_heals_with_a_second_reset_read_first() {
    let (alice, bob) = pair();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(5), ..HealPolicy::default() }).unwrap();
    let to_bob = alice.encrypt_kept(bob.address(), b"for bob", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let to_alice = bob.encrypt_kept(alice.address(), b"for alice", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let first = heal(&bob, &alice, std::slice::from_ref(&to_bob), 10);
    let second = heal(&bob, &alice, &[], 20);
    let from_alice = heal(&alice, &bob, std::slice::from_ref(&to_alice), 10);
    let mut got_bob = Vec::new();
    let mut got_alice = Vec::new();
    let mut to_deliver_bob = Vec::new();
    for reset in [&second, &first] {
        to_deliver_bob.extend(answer(&alice, &bob, reset));
    }
    let bob_resends = answer(&bob, &alice, &from_alice);
    for wire in to_deliver_bob.iter().rev() {
        if let Ok(Got::App(text)) = receive(&bob, &alice, wire) {
            got_bob.push(text);
        }
    }
    for wire in &bob_resends {
        if let Ok(Got::App(text)) = receive(&alice, &bob, wire) {
            got_alice.push(text);
        }
    }
    assert_eq!(got_bob, vec![b"for bob".to_vec()]);
    assert_eq!(got_alice, vec![b"for alice".to_vec()]);
    assert_eq!(kind(receive(&bob, &alice, &to_bob)), ErrorKind::Duplicate);
    assert_eq!(kind(receive(&alice, &bob, &to_alice)), ErrorKind::Duplicate);
}

/// "A reset never discards a message the other side could still
/// decrypt", in both directions of one heal: Alice's messages sent on the
/// old session before she read Bob's reset (a DH step among them) decrypt
/// at Bob after his heal; Bob's messages sent on the old session before his
/// heal decrypt at Alice after she installed his reset's session and sent
/// the resends; the resend reaches Bob's app. (What the late message of
/// Bob's does to Alice's session next is finding 6.)
#[test]
fn held_a_reset_discards_nothing_in_flight() {
    for _ in 0..8 {
        let (alice, bob) = pair();
        let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let from_bob_old = bob.encrypt(alice.address(), b"bob, old session").unwrap();
        let reset = heal(&bob, &alice, std::slice::from_ref(&lost), 10);
        let from_alice_old = alice.encrypt(bob.address(), b"alice, old session").unwrap();
        assert_eq!(receive(&bob, &alice, &from_alice_old).unwrap(), Got::App(b"alice, old session".to_vec()));
        let resent = answer(&alice, &bob, &reset);
        assert_eq!(receive(&alice, &bob, &from_bob_old).unwrap(), Got::App(b"bob, old session".to_vec()));
        assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"lost".to_vec()));
    }
}

/// **Finding 6 (medium): one message of the old session, delivered after
/// the reset's answer, undoes the heal half the time: both directions are
/// out of step again until another heal.**
///
/// Bob sent a message on the session S0, then healed (reset R, new session
/// S1). The message is delivered to Alice after R (reordered; or a server
/// holds it back). Alice's commit of R installs S1 (S0 archived, displaced)
/// and sends the resends on S1, so S1 no longer "owes an answer". Then the
/// late message decrypts on S0 without a DH step, and `promotes` rule 6
/// ("any other, if its base key is the smaller, unless the current state
/// owes an answer") makes S0 current again whenever S0's base key is the
/// smaller: a coin flip. Rule 6 assumes that the peer, "holding the same
/// two sessions, picks the same"; but Bob does not hold S0 any more: the
/// resends are a DH step on his current S1, which heals and cuts S0 to its
/// kept keys. So Alice now sends on S0, which Bob cannot read
/// (`NoMatchingState`), and S1 is archived at Alice without the right to
/// step (rule 6 leaves it not displaced), so Bob's replies on S1 are
/// `NoMatchingState` too. Each app is told to heal; Bob's rate limit keeps
/// him from it for an interval, Alice's heal (if she is allowed) mends it.
/// Messages sent meanwhile with `encrypt` are lost. About half the runs
/// fail (19 of 32 in one measurement). In
/// `held_crossing_heals_in_any_order_converge_and_deliver_once`, 32 of 200
/// delivery orders need such an extra heal, all of them because an
/// original of the old session came late (none without the originals in
/// flight). The rule predates healing (the same happens after a plain
/// `start_session` of the peer's that we answered: 10 of 24 runs), but the
/// reset and its resends are exactly that flow, and healing relies on it.
///
/// Suggested fix: a state that a reset of the peer's displaced must not
/// come back by rule 6 (only by rule 4, on the peer's DH step on it): e.g.
/// mark the archived state as `came_back` (or a new "healed away" flag)
/// when a reset is committed on the new session, or exclude displaced
/// states from rule 6 altogether (rule 6 is for simultaneous initiations,
/// where neither state is displaced).
#[test]
fn finding_a_late_old_message_after_the_reset_undoes_the_heal() {
    let mut broken = 0;
    for _ in 0..24 {
        let (alice, bob) = pair();
        let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        let from_bob_old = bob.encrypt(alice.address(), b"bob, old session").unwrap();
        let reset = heal(&bob, &alice, std::slice::from_ref(&lost), 10);
        let resent = answer(&alice, &bob, &reset);
        assert_eq!(receive(&alice, &bob, &from_bob_old).unwrap(), Got::App(b"bob, old session".to_vec()));
        assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"lost".to_vec()));
        let to_bob = alice.encrypt(bob.address(), b"a").unwrap();
        let to_alice = bob.encrypt(alice.address(), b"b").unwrap();
        let (at_bob, at_alice) = (receive(&bob, &alice, &to_bob), receive(&alice, &bob, &to_alice));
        if at_bob.is_err() || at_alice.is_err() {
            assert_eq!((kind(at_bob), kind(at_alice)), (ErrorKind::OutOfStep, ErrorKind::OutOfStep));
            broken += 1;
        }
    }
    assert_eq!(broken, 0, "{broken} of 24 heals undone by one late message");
}

// ---------------------------------------------------------------------------
// Other peers, identities, no session
// ---------------------------------------------------------------------------

/// A bundle of Carol's given to a heal that the app meant for Bob (a
/// server that answers a request for Bob's bundle with Carol's): the
/// library heals the bundle's address, Carol, and says so in `Outgoing::to`;
/// Bob's rows are untouched and his rate limit is not used.
#[test]
fn held_a_heal_with_another_peers_bundle_touches_only_that_peer() {
    let (alice, bob) = pair();
    let carol = device("carol", 3);
    connect(&alice, &carol);
    let unreadable = alice.encrypt(bob.address(), b"pretend bob's").unwrap();
    let before = alice.backend().snapshot();
    match alice
        .heal(&carol.prekey_bundle().unwrap(), std::slice::from_ref(&unreadable), UNIX_EPOCH + Duration::from_secs(10))
        .unwrap()
    {
        Heal::Sent(reset) => assert_eq!(&reset.to, carol.address()),
        other => panic!("{other:?}"),
    }
    // One row changed: Carol's session row.
    let after = alice.backend().snapshot();
    let changed = after.iter().filter(|(key, value)| before.get(*key) != Some(*value)).count();
    assert_eq!((changed, after.len()), (1, before.len()));
    assert_eq!(alice.awaiting_resends(bob.address()).unwrap(), 0);
    assert_eq!(alice.awaiting_resends(carol.address()).unwrap(), 1);
    // Bob's session works as it did, and his healing is still free to go.
    converse(&alice, &bob, "bob untouched");
    assert!(matches!(
        alice.heal(&bob.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(11)).unwrap(),
        Heal::Sent(_)
    ));
}

/// Resets from who has no right to Bob's outbox: Dave (no session with
/// Alice, a new identity) heals naming Alice's kept messages to Bob (their
/// ids are known to the server): his new session is installed and nothing
/// is sent; Mallory, at Bob's address under another identity:
/// `UntrustedIdentity`, nothing written; once the app trusts her (its
/// decision), still nothing of what was sent to Bob's identity, by
/// default.
#[test]
fn held_resets_from_another_peer_or_identity_get_nothing() {
    let (alice, bob) = pair();
    let kept: Vec<Vec<u8>> =
        (0..3).map(|i| alice.encrypt_kept(bob.address(), &[i], UNIX_EPOCH + Duration::from_secs(1)).unwrap()).collect();
    let dave = device("dave", 4);
    let reset = heal(&dave, &alice, &kept, 10);
    assert!(answer(&alice, &dave, &reset).is_empty());
    assert_eq!(alice.outbox_len(bob.address()).unwrap(), 4);

    let mallory =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([66; 32]), address("bob"), UNIX_EPOCH).unwrap();
    let reset = heal(&mallory, &alice, &kept, 10);
    let before = copy_of(alice.backend());
    assert_eq!(kind(receive(&alice, &mallory, &reset)), ErrorKind::UntrustedIdentity);
    assert!(same(&before, alice.backend()));
    alice.trust_identity(mallory.address(), mallory.identity_key()).unwrap();
    assert!(answer(&alice, &mallory, &reset).is_empty(), "sent to Bob's identity: not to Mallory's");
    // Alice goes back to Bob's identity: Bob gets his messages, and what
    // she kept while she trusted Mallory is not his.
    let for_mallory = alice.encrypt_kept(bob.address(), b"to mallory", UNIX_EPOCH + Duration::from_secs(20)).unwrap();
    alice.trust_identity(bob.address(), bob.identity_key()).unwrap();
    let mut named = kept.clone();
    named.push(for_mallory);
    let reset = heal(&bob, &alice, &named, 30);
    let resent = answer(&alice, &bob, &reset);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, wire).unwrap()).collect();
    assert_eq!(got, vec![Got::App(vec![0]), Got::App(vec![1]), Got::App(vec![2])]);
}

/// `acknowledge` with the ids of Carol's messages (or of Bob's, for Carol)
/// removes nothing of the other peer's; failed or empty acknowledgements
/// write nothing. An id of a resend acknowledges its message.
#[test]
fn held_acknowledge_touches_only_that_peer() {
    let (alice, bob) = pair();
    let carol = device("carol", 3);
    connect(&alice, &carol);
    let to_bob = alice.encrypt_kept(bob.address(), b"bob's", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let to_carol = alice.encrypt_kept(carol.address(), b"carol's", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let before = copy_of(alice.backend());
    assert_eq!(alice.acknowledge(bob.address(), &[message_id(&to_carol)]).unwrap(), 0);
    assert_eq!(alice.acknowledge(carol.address(), &[message_id(&to_bob)]).unwrap(), 0);
    assert_eq!(alice.acknowledge(&address("nobody"), &[message_id(&to_bob)]).unwrap(), 0);
    assert_eq!(alice.acknowledge(bob.address(), &[]).unwrap(), 0);
    assert!(same(&before, alice.backend()), "an acknowledgement of nothing wrote");
    // A resend's id acknowledges the message it carries.
    let reset = heal(&bob, &alice, std::slice::from_ref(&to_bob), 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(alice.acknowledge(bob.address(), &[message_id(&resent[0])]).unwrap(), 1);
    assert_eq!(alice.outbox_len(bob.address()).unwrap(), 1, "hello is left");
    assert_eq!(alice.outbox_len(carol.address()).unwrap(), 2);
}

/// The outbox bounds at their extremes: `outbox_max_messages` 0 keeps
/// nothing (and drops what was kept, rows included); `outbox_max_age` 0
/// keeps nothing; the policy's bound is checked. The ciphertext is returned
/// all the same, and the session advanced.
#[test]
fn held_an_outbox_of_zero_messages_or_zero_age_keeps_nothing() {
    let (alice, bob) = pair();
    let peer = bob.address();
    let rows = |alice: &Dev| {
        let entries =
            alice.backend().scan(Table::Sessions).unwrap().iter().filter(|(key, _)| is_entry_key(key)).count();
        entries + alice.backend().scan(Table::Outboxes).unwrap().len()
    };
    alice.encrypt_kept(peer, b"one", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    assert_eq!(rows(&alice), 3);
    assert_eq!(alice.outbox_len(peer).unwrap(), 2);
    alice.set_heal_policy(HealPolicy { outbox_max_messages: 0, ..HealPolicy::default() }).unwrap();
    let wire = alice.encrypt_kept(peer, b"two", UNIX_EPOCH + Duration::from_secs(2)).unwrap();
    assert_eq!(alice.outbox_len(peer).unwrap(), 0);
    assert_eq!(rows(&alice), 0, "no index, no entries left");
    assert_eq!(receive(&bob, &alice, &wire).unwrap(), Got::App(b"two".to_vec()));
    alice.set_heal_policy(HealPolicy { outbox_max_age: Duration::from_secs(0), ..HealPolicy::default() }).unwrap();
    alice.encrypt_kept(peer, b"three", UNIX_EPOCH + Duration::from_secs(3)).unwrap();
    assert_eq!((alice.outbox_len(peer).unwrap(), rows(&alice)), (0, 0));
    let error = alice
        .set_heal_policy(HealPolicy { outbox_max_messages: MAX_OUTBOX_MESSAGES + 1, ..HealPolicy::default() })
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert_eq!(alice.heal_policy().outbox_max_age, Duration::from_secs(0), "a refused policy changed nothing");
}

// ---------------------------------------------------------------------------
// Races between handles
// ---------------------------------------------------------------------------

fn handles() -> (Arc<MemoryBackend>, Arc<Device<Arc<MemoryBackend>>>, Dev) {
    let store = Arc::new(MemoryBackend::new());
    let alice = Arc::new(
        Device::create_in(store.clone(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH).unwrap(),
    );
    let bob = device("bob", 2);
    connect(&*alice, &bob);
    (store, alice, bob)
}

/// A reset's decryption on one handle, then another handle's
/// `encrypt_kept` (the session and the index rewritten) or `acknowledge`
/// (the index alone rewritten: the session row is as read): the reset's
/// commit is stale, writes nothing and sends nothing, and the
/// acknowledged message is not sent when the reset is read again.
#[test]
fn held_a_reset_commit_racing_another_handle_writes_nothing() {
    let (store, other, bob) = handles();
    let alice = Device::open_in(store.clone(), &StorageKey::from_bytes([1; 32])).unwrap();
    let kept: Vec<Vec<u8>> =
        (0..2).map(|i| alice.encrypt_kept(bob.address(), &[i], UNIX_EPOCH + Duration::from_secs(1)).unwrap()).collect();
    let reset = heal(&bob, &alice, &kept, 10);

    let pending = alice.decrypt(bob.address(), &reset).unwrap();
    other.encrypt_kept(bob.address(), b"meanwhile", UNIX_EPOCH + Duration::from_secs(2)).unwrap();
    let before = copy_of(&store);
    let error = alice.commit(pending).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::StalePending)), "{error:?}");
    assert!(same(&before, &store));

    let pending = alice.decrypt(bob.address(), &reset).unwrap();
    assert_eq!(other.acknowledge(bob.address(), &[message_id(&kept[0])]).unwrap(), 1);
    let before = copy_of(&store);
    let error = alice.commit(pending).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::StalePending)), "{error:?}");
    assert!(same(&before, &store), "a stale reset commit wrote");

    let resent = answer(&alice, &bob, &reset);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, wire).unwrap()).collect();
    assert_eq!(got, vec![Got::App(vec![1])], "the acknowledged message is not sent");
}

/// Another handle acknowledges an entry between the reset's read of the
/// outbox index and its read of that entry: the entry is skipped (the other
/// named one is read), the commit is stale (the index changed since it was
/// read) and writes nothing; read again, the reset sends the other one only.
#[test]
fn held_an_acknowledgement_between_the_index_and_the_entry_read_is_seen() {
    let store = Arc::new(MemoryBackend::new());
    let other = Arc::new(
        Device::create_in(store.clone(), &StorageKey::from_bytes([1; 32]), address("alice"), UNIX_EPOCH).unwrap(),
    );
    let alice = Device::open_in(Hooked::new(store.clone()), &StorageKey::from_bytes([1; 32])).unwrap();
    let bob = device("bob", 2);
    connect(&alice, &bob);
    let kept: Vec<Vec<u8>> =
        (0..2).map(|i| alice.encrypt_kept(bob.address(), &[i], UNIX_EPOCH + Duration::from_secs(1)).unwrap()).collect();
    let reset = heal(&bob, &alice, &kept, 10);
    let id = message_id(&kept[0]);
    let acknowledging = other.clone();
    let peer = bob.address().clone();
    *alice.backend().before_get.lock().unwrap() =
        Some((is_entry_key, Box::new(move || assert_eq!(acknowledging.acknowledge(&peer, &[id]).unwrap(), 1))));
    let pending = alice.decrypt(bob.address(), &reset).unwrap();
    assert!(alice.backend().before_get.lock().unwrap().is_none(), "no entry was read");
    let before = copy_of(&store);
    let error = alice.commit(pending).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::StalePending)), "{error:?}");
    assert!(same(&before, &store));
    let resent = answer(&alice, &bob, &reset);
    let got: Vec<Got> = resent.iter().map(|wire| receive(&bob, &alice, wire).unwrap()).collect();
    assert_eq!(got, vec![Got::App(vec![1])]);
}

/// Two handles heal the same peer at once (the second's whole heal runs
/// between the first's read and its write): one reset is made, the other
/// handle gets `TooSoon` after reading again. The rate limit holds across
/// handles.
#[test]
fn held_two_handles_healing_at_once_make_one_reset() {
    let store = Arc::new(MemoryBackend::new());
    let bob = Arc::new(
        Device::create_in(store.clone(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH).unwrap(),
    );
    let hooked = Device::open_in(Hooked::new(store.clone()), &StorageKey::from_bytes([2; 32])).unwrap();
    let alice = Arc::new(device("alice", 1));
    connect(&*alice, &*bob);
    let sent = Arc::new(AtomicUsize::new(0));
    let (racer, bundle_of, count) = (bob.clone(), alice.clone(), sent.clone());
    *hooked.backend().before_apply.lock().unwrap() = Some(Box::new(move || {
        if let Heal::Sent(_) =
            racer.heal(&bundle_of.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(100)).unwrap()
        {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }));
    match hooked.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(100)).unwrap() {
        Heal::Sent(_) => {
            sent.fetch_add(1, Ordering::SeqCst);
        }
        Heal::TooSoon { retry_at } => assert_eq!(retry_at, UNIX_EPOCH + Duration::from_secs(100 + INTERVAL)),
        other => panic!("{other:?}"),
    }
    assert_eq!(sent.load(Ordering::SeqCst), 1, "two resets in one interval");
}

// ---------------------------------------------------------------------------
// Failed calls, forgeries, junk
// ---------------------------------------------------------------------------

/// Every healing call that fails writes nothing: `heal` refused for an
/// untrusted identity, a bundle that does not parse, `TooSoon`;
/// `encrypt_kept` without a session or too large; `acknowledge` of nothing;
/// `decrypt` of a reset (it only reads); a stale commit of a resend.
#[test]
fn held_failed_healing_calls_change_nothing() {
    let (alice, bob) = pair();
    let check = |what: &str, call: &dyn Fn() -> bool| {
        let before = copy_of(bob.backend());
        assert!(call(), "{what}: did not fail");
        assert!(same(&before, bob.backend()), "{what}: wrote");
    };
    let reinstalled = device("alice", 9);
    check("heal, untrusted identity", &|| {
        let error = bob
            .heal(&reinstalled.prekey_bundle().unwrap(), &[b"x".to_vec()], UNIX_EPOCH + Duration::from_secs(10))
            .unwrap_err();
        error.kind() == ErrorKind::UntrustedIdentity
    });
    check("heal, junk bundle", &|| bob.heal(b"junk", &[], UNIX_EPOCH + Duration::from_secs(10)).is_err());
    let mut bundle = alice.prekey_bundle().unwrap();
    let last = bundle.len() - 1;
    bundle[last] ^= 1;
    check("heal, altered bundle", &|| bob.heal(&bundle, &[], UNIX_EPOCH + Duration::from_secs(10)).is_err());
    heal(&bob, &alice, &[b"x".to_vec()], 10);
    check("heal, too soon", &|| {
        matches!(
            bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(11)),
            Ok(Heal::TooSoon { .. })
        )
    });
    check("encrypt_kept, no session", &|| {
        bob.encrypt_kept(&address("nobody"), b"x", UNIX_EPOCH + Duration::from_secs(1)).is_err()
    });
    check("encrypt_kept, too large", &|| {
        bob.encrypt_kept(alice.address(), &vec![0; MAX_KEPT_PLAINTEXT_LEN + 1], UNIX_EPOCH + Duration::from_secs(1))
            .is_err()
    });
    check("acknowledge, unknown", &|| bob.acknowledge(alice.address(), &[[7; 16]]).unwrap() == 0);

    // A resend's pending made stale by the original read first.
    let delayed = alice.encrypt_kept(bob.address(), b"delayed", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&delayed), 10 + INTERVAL);
    let resent = answer(&alice, &bob, &reset);
    let pending = RefCell::new(Some(bob.decrypt(alice.address(), &resent[0]).unwrap()));
    assert_eq!(receive(&bob, &alice, &delayed).unwrap(), Got::App(b"delayed".to_vec()));
    check("commit, stale resend", &|| {
        let pending = pending.borrow_mut().take().unwrap();
        matches!(bob.commit(pending), Err(DeviceError::Session(SessionError::StalePending)))
    });
}

/// No input panics, and none changes the store: every byte of a reset and
/// of a resend flipped (every 7th byte, and the last ones), truncations,
/// and random bytes of a reset's length, decrypted at their receiver. The
/// genuine messages still work after.
#[test]
fn held_altered_resets_and_resends_neither_panic_nor_write() {
    let (alice, bob) = pair();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&kept), 10);
    let mut noise = rng(7);
    let variants = |wire: &[u8], noise: &mut chacha20::ChaCha20Rng| {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for at in (0..wire.len()).step_by(7).chain(wire.len().saturating_sub(40)..wire.len()) {
            let mut altered = wire.to_vec();
            altered[at] ^= 1 << (at % 8);
            out.push(altered);
        }
        for cut in [0, 1, 2, 10, wire.len() / 2, wire.len() - 1] {
            out.push(wire[..cut].to_vec());
        }
        let mut junk = vec![0u8; wire.len()];
        noise.fill_bytes(&mut junk);
        out.push(junk);
        out
    };
    let before = copy_of(alice.backend());
    for altered in variants(&reset, &mut noise) {
        if let Ok(pending) = alice.decrypt(bob.address(), &altered) {
            panic!("an altered reset decrypted: {:?}", pending.kind());
        }
    }
    assert!(same(&before, alice.backend()));
    let resent = answer(&alice, &bob, &reset);
    let before = copy_of(bob.backend());
    for altered in variants(&resent[0], &mut noise) {
        assert!(bob.decrypt(alice.address(), &altered).is_err());
    }
    assert!(same(&before, bob.backend()));
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"kept".to_vec()));
    // `heal` with junk as unreadable bytes: any bytes have an id.
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(0), ..HealPolicy::default() }).unwrap();
    let junk: Vec<Vec<u8>> = vec![Vec::new(), vec![0; 1], vec![0xff; 300_000]];
    let reset = heal(&bob, &alice, &junk, 20);
    assert!(answer(&alice, &bob, &reset).is_empty());
    converse(&alice, &bob, "after");
}

/// Forged messages (no key: the header bytes changed) from many device
/// ids of Bob's and from Bob's one: each address gets at most one reset per
/// interval, whatever number of forgeries, through two handles of the
/// store.
#[test]
fn held_forgeries_make_at_most_one_reset_per_peer_per_interval_across_handles() {
    let store = Arc::new(MemoryBackend::new());
    let first = Device::create_in(store.clone(), &StorageKey::from_bytes([2; 32]), address("bob"), UNIX_EPOCH).unwrap();
    let second = Device::open_in(store, &StorageKey::from_bytes([2; 32])).unwrap();
    let alice = device("alice", 1);
    connect(&alice, &first);
    let genuine = alice.encrypt(first.address(), b"genuine").unwrap();
    let mut sent = 0;
    for i in 0..40u8 {
        let mut forged = genuine.clone();
        forged[10 + usize::from(i % 20)] ^= i | 1;
        let handle = if i % 2 == 0 { &first } else { &second };
        let error = handle.decrypt(alice.address(), &forged).unwrap_err();
        if error.kind().recovery() != Recovery::Heal {
            continue;
        }
        let now = 100 + u64::from(i);
        if let Heal::Sent(reset) =
            handle.heal(&alice.prekey_bundle().unwrap(), &[forged], UNIX_EPOCH + Duration::from_secs(now)).unwrap()
        {
            assert_eq!(&reset.to, alice.address());
            sent += 1;
        }
    }
    assert_eq!(sent, 1, "one reset for forty forgeries");
    assert_eq!(receive(&first, &alice, &genuine).unwrap(), Got::App(b"genuine".to_vec()));
}

/// A resend whose ids are awaited reaches the app once, and a `decrypt`
/// batch leaves resets and resends to `decrypt` (`NotInBatch`) and refuses
/// a late original as `Resent`.
#[test]
fn held_a_batch_leaves_healing_to_decrypt_and_refuses_late_originals() {
    let (alice, bob) = pair();
    let delayed = alice.encrypt_kept(bob.address(), b"delayed", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&delayed), 10);
    let batch = alice.decrypt_batch(&[(bob.address().clone(), reset.clone())]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::NotInBatch)), "{:?}", batch.results()[0]);
    let resent = answer(&alice, &bob, &reset);
    let batch = bob.decrypt_batch(&[(alice.address().clone(), resent[0].clone())]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::NotInBatch)));
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"delayed".to_vec()));
    let batch = bob.decrypt_batch(&[(alice.address().clone(), delayed)]).unwrap();
    assert!(matches!(batch.results()[0], Err(SessionError::Decrypt(DecryptError::Resent))), "{:?}", batch.results()[0]);
}

// ---------------------------------------------------------------------------
// Crafted rows (the storage key: a buggy release, or the device's owner)
// ---------------------------------------------------------------------------

#[cfg(feature = "hazmat")]
mod crafted {
    use prost::Message as _;
    use samizdat::hazmat;
    use samizdat_proto::storage;

    use super::*;

    pub(super) fn row(key: u8, peer: &Address) -> Vec<u8> {
        hazmat::peer_row_key(&[key; 32], peer)
    }

    pub(super) fn put(dev: &Dev, key: u8, row_key: &[u8], plaintext: &[u8]) {
        put_in(dev, key, Table::Sessions, row_key, plaintext);
    }

    pub(super) fn put_in(dev: &Dev, key: u8, table: Table, row_key: &[u8], plaintext: &[u8]) {
        let value = hazmat::seal_row(&[key; 32], table, row_key, plaintext, &[3; 24]);
        dev.backend()
            .apply(&[Write {
                table,
                key: row_key.to_vec(),
                value: Some(value),
                expected: samizdat::store::Expected::Any,
            }])
            .unwrap();
    }

    pub(super) fn open(dev: &Dev, key: u8, row_key: &[u8]) -> Vec<u8> {
        open_in(dev, key, Table::Sessions, row_key)
    }

    pub(super) fn open_in(dev: &Dev, key: u8, table: Table, row_key: &[u8]) -> Vec<u8> {
        let sealed = dev.backend().get(table, row_key).unwrap().unwrap();
        hazmat::open_row(&[key; 32], table, row_key, &sealed).unwrap().to_vec()
    }

    /// The outbox index of `peer`: table `outboxes`, under the peer's row key.
    pub(super) fn index(dev: &Dev, key: u8, peer: &Address) -> storage::OutboxIndex {
        storage::OutboxIndex::decode(open_in(dev, key, Table::Outboxes, &row(key, peer)).as_slice()).unwrap()
    }

    pub(super) fn set_index(dev: &Dev, key: u8, peer: &Address, index: &storage::OutboxIndex) {
        put_in(dev, key, Table::Outboxes, &row(key, peer), &index.encode_to_vec());
    }

    pub(super) fn entries(dev: &Dev, key: u8) -> Vec<(Vec<u8>, storage::OutboxEntry)> {
        dev.backend()
            .scan(Table::Sessions)
            .unwrap()
            .into_iter()
            .filter(|(row_key, _)| is_entry_key(row_key))
            .map(|(row_key, _)| {
                let entry = storage::OutboxEntry::decode(open(dev, key, &row_key).as_slice()).unwrap();
                (row_key, entry)
            })
            .collect()
    }

    pub(super) fn edit_healing(dev: &Dev, key: u8, peer: &Address, edit: impl FnOnce(&mut storage::Healing)) {
        let row_key = row(key, peer);
        let mut session_row = storage::SessionRow::decode(open(dev, key, &row_key).as_slice()).unwrap();
        let mut record = storage::SessionRecord::decode(session_row.record.as_slice()).unwrap();
        edit(record.healing.get_or_insert_with(Default::default));
        session_row.record = record.encode_to_vec();
        put(dev, key, &row_key, &session_row.encode_to_vec());
    }
}

/// Crafted healing bookkeeping in a session row (sealed with the store's
/// key): each inconsistency the loader is documented to check is refused
/// as a damaged store (`Corrupt`, code `store_failure`) by every call that
/// loads the record, and nothing panics. Values at their bounds load.
#[cfg(feature = "hazmat")]
#[test]
fn held_crafted_healing_bookkeeping_is_checked_on_load() {
    use samizdat::limits::{MAX_AWAITED_RESENDS, MAX_DELIVERED_RESENDS};
    let (alice, bob) = pair();
    let lost = alice.encrypt_kept(bob.address(), b"lost", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    heal(&bob, &alice, std::slice::from_ref(&lost), 10);
    let peer = alice.address().clone();
    let good = copy_of(bob.backend());
    let id = |i: usize| message_id(&i.to_le_bytes()).to_vec();
    let cases: Vec<LoadEdit<'_, samizdat_proto::storage::Healing>> = vec![
        ("as written", true, Box::new(|_| {})),
        (
            "64 awaited",
            true,
            Box::new(move |h| {
                h.awaited = (0..MAX_AWAITED_RESENDS).map(id).collect();
                h.namings = vec![MAX_RESET_NAMINGS; MAX_AWAITED_RESENDS];
                h.in_last_reset = vec![false; MAX_AWAITED_RESENDS];
            }),
        ),
        ("64 delivered", true, Box::new(move |h| h.delivered = (100..100 + MAX_DELIVERED_RESENDS).map(id).collect())),
        (
            "65 awaited",
            false,
            Box::new(move |h| {
                h.awaited = (0..=MAX_AWAITED_RESENDS).map(id).collect();
                h.namings = vec![1; MAX_AWAITED_RESENDS + 1];
                h.in_last_reset = vec![false; MAX_AWAITED_RESENDS + 1];
            }),
        ),
        ("65 delivered", false, Box::new(move |h| h.delivered = (100..=100 + MAX_DELIVERED_RESENDS).map(id).collect())),
        ("a naming over the limit", false, Box::new(|h| h.namings[0] = MAX_RESET_NAMINGS + 1)),
        ("a naming missing", false, Box::new(|h| h.namings.clear())),
        ("a flag missing", false, Box::new(|h| h.in_last_reset.clear())),
        (
            "a short awaited id",
            false,
            Box::new(|h| {
                h.awaited[0].pop();
            }),
        ),
        ("a long delivered id", false, Box::new(|h| h.delivered = vec![vec![0; 17]])),
        (
            "awaited twice",
            false,
            Box::new(|h| {
                h.awaited.push(h.awaited[0].clone());
                h.namings.push(0);
                h.in_last_reset.push(false);
            }),
        ),
        ("delivered twice", false, Box::new(move |h| h.delivered = vec![id(1), id(1)])),
        ("awaited and delivered", false, Box::new(|h| h.delivered = vec![h.awaited[0].clone()])),
        (
            "a time without a reset",
            false,
            Box::new(|h| {
                h.reset_sent = false;
                h.last_reset_base_key.clear();
            }),
        ),
        ("a reset without its session", false, Box::new(|h| h.last_reset_base_key.clear())),
        ("a short base key", false, Box::new(|h| h.last_reset_base_key.truncate(31))),
    ];
    for (what, loads, edit) in cases {
        let bob = Device::open_in(copy_of(&good), &StorageKey::from_bytes([2; 32])).unwrap();
        crafted::edit_healing(&bob, 2, &peer, edit);
        let results = [
            bob.awaiting_resends(&peer).map(|_| ()),
            bob.has_session(&peer).map(|_| ()),
            bob.heal(&alice.prekey_bundle().unwrap(), &[], UNIX_EPOCH + Duration::from_secs(10 + 2 * INTERVAL))
                .map(|_| ()),
        ];
        for result in results {
            match (loads, result) {
                (true, Ok(())) => {}
                (false, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Sessions }))) => {}
                (_, other) => panic!("{what}: {other:?}"),
            }
        }
    }
}

/// Crafted outbox rows: an index or an entry that breaks a documented
/// check is `Corrupt` for every call that reads it (`outbox_len`,
/// `encrypt_kept`, `acknowledge`, the reset that names it), and a refused
/// call writes nothing.
#[cfg(feature = "hazmat")]
#[test]
fn held_crafted_outbox_rows_are_checked_on_load() {
    use samizdat_proto::storage;
    let (alice, bob) = pair();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    bob.set_heal_policy(HealPolicy { reset_interval: Duration::from_secs(0), ..HealPolicy::default() }).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&kept), 10);
    let peer = bob.address().clone();
    let good = copy_of(alice.backend());
    let index_cases: Vec<Edit<'_, storage::OutboxIndex>> = vec![
        ("version 2", Box::new(|i| i.version = 2)),
        ("a short id", Box::new(|i| i.entries[0].id.truncate(15))),
        (
            "an id twice",
            Box::new(|i| {
                let again = i.entries[0].clone();
                i.entries.push(again);
            }),
        ),
        (
            "257 entries",
            Box::new(|i| {
                i.entries = (0..=MAX_OUTBOX_MESSAGES)
                    .map(|n| storage::OutboxSlot {
                        id: message_id(&n.to_le_bytes()).to_vec(),
                        sent_at: 0,
                        resent_as: Vec::new(),
                    })
                    .collect();
            }),
        ),
        (
            "five resend ids",
            Box::new(|i| {
                i.entries[0].resent_as = (0..5usize).map(|n| message_id(&n.to_le_bytes()).to_vec()).collect();
            }),
        ),
        ("a short resend id", Box::new(|i| i.entries[0].resent_as = vec![vec![0; 15]])),
        (
            "an id that is an earlier slot's resend id",
            Box::new(|i| {
                let second = i.entries[1].id.clone();
                i.entries[0].resent_as = vec![second];
            }),
        ),
    ];
    for (what, edit) in index_cases {
        let alice = Device::open_in(copy_of(&good), &StorageKey::from_bytes([1; 32])).unwrap();
        let mut index = crafted::index(&alice, 1, &peer);
        edit(&mut index);
        crafted::set_index(&alice, 1, &peer, &index);
        let before = copy_of(alice.backend());
        let corrupt = |result: Result<(), DeviceError>| {
            matches!(result, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Outboxes })))
        };
        assert!(corrupt(alice.outbox_len(&peer).map(|_| ())), "{what}: outbox_len");
        assert!(
            corrupt(alice.encrypt_kept(&peer, b"x", UNIX_EPOCH + Duration::from_secs(2)).map(|_| ())),
            "{what}: encrypt_kept"
        );
        assert!(corrupt(alice.acknowledge(&peer, &[message_id(&kept)]).map(|_| ())), "{what}: acknowledge");
        assert!(corrupt(alice.decrypt(&peer, &reset).map(|_| ())), "{what}: the reset");
        assert!(same(&before, alice.backend()), "{what}: wrote");
    }
    let entry_cases: Vec<Edit<'_, storage::OutboxEntry>> = vec![
        ("version 0", Box::new(|e| e.version = 0)),
        ("another id", Box::new(|e| e.id[0] ^= 1)),
        ("a short identity", Box::new(|e| e.identity.truncate(31))),
        ("no identity", Box::new(|e| e.identity.clear())),
        ("a plaintext too long", Box::new(|e| e.plaintext = vec![0; MAX_KEPT_PLAINTEXT_LEN + 1])),
    ];
    for (what, edit) in entry_cases {
        let alice = Device::open_in(copy_of(&good), &StorageKey::from_bytes([1; 32])).unwrap();
        let kept_id = message_id(&kept).to_vec();
        let (row_key, mut entry) =
            crafted::entries(&alice, 1).into_iter().find(|(_, e)| e.id == kept_id).expect("the entry");
        edit(&mut entry);
        crafted::put(&alice, 1, &row_key, &prost::Message::encode_to_vec(&entry));
        let result = alice.decrypt(&peer, &reset).map(|_| ());
        assert!(
            matches!(result, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Sessions }))),
            "{what}: {result:?}"
        );
    }
}

/// **Finding 5 (low): the outbox index loader does not check a slot's
/// resend ids against the slot's own id, each other, or later slots.**
/// PROTOCOL.md 20.3 and `wire.proto` say a message's resend ids are
/// distinct and other than its id, and `load_index` refuses a slot whose id
/// answers to an earlier slot; but a slot whose `resent_as` holds its own
/// id, an id twice, or the id of a *later* slot loads. Crafted here (it
/// takes the storage key: a bug of a release, or a damaged store the seal
/// does not catch), it is not reported as `Corrupt`, and: the resend made
/// from it carries `also` with a repeat, which the peer's parser (C7)
/// refuses, so that message can never be healed (`invalid_message` at the
/// peer, every time); and an acknowledgement of one message removes
/// another.
///
/// Suggested fix: in `load_index`, refuse a slot whose `resent_as` has a
/// repeat or its own id, and check every id *and* resend id of a slot
/// against every id and resend id seen (earlier and later slots alike).
#[cfg(feature = "hazmat")]
#[test]
fn finding_crafted_resend_ids_in_the_outbox_index_are_not_checked() {
    let (alice, bob) = pair();
    let kept = alice.encrypt_kept(bob.address(), b"kept", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let peer = bob.address().clone();
    let mut index = crafted::index(&alice, 1, &peer);
    let own = index.entries[1].id.clone();
    index.entries[1].resent_as = vec![own];
    crafted::set_index(&alice, 1, &peer, &index);
    let result = alice.outbox_len(&peer);
    // What happens instead: the index loads, and the resend it makes is
    // refused by Bob.
    if result.is_ok() {
        let reset = heal(&bob, &alice, std::slice::from_ref(&kept), 10);
        let resent = answer(&alice, &bob, &reset);
        let error = receive(&bob, &alice, &resent[0]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidMessage, "{error:?}");
    }
    assert!(
        matches!(result, Err(DeviceError::Store(StoreError::Corrupt { table: Table::Outboxes }))),
        "a slot naming itself as its resend loaded: {result:?}"
    );
}

/// A hostile peer's resend (made here from its crafted outbox index: its
/// own store) whose `also` names ids of other messages: of its own that Bob
/// awaits or has not read yet, and of a message of Carol's. The ids of its
/// own messages are marked delivered, and their originals are then refused
/// as `Resent`: a peer can withhold its own messages (which it can anyway,
/// by not sending them). Carol's message is untouched: the bookkeeping is
/// per peer, so one peer's resends cannot make us drop another's.
#[cfg(feature = "hazmat")]
#[test]
fn held_a_resends_other_ids_affect_only_that_peers_messages() {
    let (alice, bob) = pair();
    let carol = device("carol", 3);
    connect(&carol, &bob);
    let named = alice.encrypt_kept(bob.address(), b"named", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let later = alice.encrypt(bob.address(), b"alice, not read yet").unwrap();
    let from_carol = carol.encrypt(bob.address(), b"carol's").unwrap();
    let peer = bob.address().clone();
    let mut index = crafted::index(&alice, 1, &peer);
    let at = index.entries.iter().position(|s| s.id == message_id(&named).to_vec()).unwrap();
    index.entries[at].resent_as = vec![message_id(&later).to_vec(), message_id(&from_carol).to_vec()];
    crafted::set_index(&alice, 1, &peer, &index);
    let reset = heal(&bob, &alice, std::slice::from_ref(&named), 10);
    let resent = answer(&alice, &bob, &reset);
    assert_eq!(receive(&bob, &alice, &resent[0]).unwrap(), Got::App(b"named".to_vec()));
    let error = receive(&bob, &alice, &later).unwrap_err();
    assert!(matches!(error, DeviceError::Session(SessionError::Decrypt(DecryptError::Resent))), "{error:?}");
    assert_eq!(receive(&bob, &carol, &from_carol).unwrap(), Got::App(b"carol's".to_vec()));
}

/// `message_id` has the documented value for `abc` (the code's label,
/// `samizdat/v1/message-id`), and a resend's `message_id()` is its
/// original's, never its own bytes' id.
#[test]
fn held_the_message_id_of_a_resend_is_the_originals() {
    assert_eq!(
        message_id(b"abc"),
        <MessageId>::try_from(hex::decode("a8e5bf1e8921649b0338016308de60bd").unwrap()).unwrap()
    );
    let (alice, bob) = pair();
    let original = alice.encrypt_kept(bob.address(), b"x", UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let reset = heal(&bob, &alice, std::slice::from_ref(&original), 10);
    let resent = answer(&alice, &bob, &reset);
    let pending = bob.decrypt(alice.address(), &resent[0]).unwrap();
    assert_eq!(pending.message_id(), Some(message_id(&original)));
    assert_ne!(pending.message_id(), Some(message_id(&resent[0])));
}
