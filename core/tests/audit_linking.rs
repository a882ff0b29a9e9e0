//! Outside audit of device linking (issue 17; PROTOCOL.md 23.8): the code,
//! the sealed provisioning, `link_device` and `finish_link`.
//!
//! Threat model: the server relays the link message (it can drop, delay,
//! replay, reorder, alter or forge any bytes) and serves any bundle, but
//! never sees the code; a hostile contact or a thief with a photograph of
//! the code may also try. Each test asserts the secure behaviour; a test
//! marked `#[ignore = "finding: .."]` fails today and records a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use prost::Message as _;
use samizdat::{
    DecodeError, ErrorKind,
    address::Address,
    device::{Device, DeviceError, Provisioned},
    hazmat,
    keys::IdentityKeyPair,
    limits::{LINK_CODE_LIFETIME_SECS, MAX_LINK_MESSAGE_LEN, MAX_LINK_PINNED_USERS},
    store::{Backend, MemoryBackend, Row, StorageKey, StoreError, Table, Write},
    user::{
        DeviceList, DeviceListError, LinkCode, LinkError, MAX_DEVICES_PER_USER, MAX_LINK_CODE_LEN, SignedDeviceList,
        UserIdentityKeyPair,
    },
};
use samizdat_proto::wire;

// ---------------------------------------------------------------------------
// A global allocator that looks for a 32-byte pattern in every block freed
// while it is armed: a secret found there was left in memory unwiped.
// ---------------------------------------------------------------------------

struct Scanning;

static ARMED: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
static PATTERN: [AtomicU8; 32] = [const { AtomicU8::new(0) }; 32];
/// The tests that arm the scanner run one at a time.
static SCAN_LOCK: Mutex<()> = Mutex::new(());

#[allow(unsafe_code)]
fn scan_block(ptr: *mut u8, size: usize) {
    if size < 32 {
        return;
    }
    let mut pattern = [0u8; 32];
    for (byte, atomic) in pattern.iter_mut().zip(PATTERN.iter()) {
        *byte = atomic.load(Ordering::Relaxed);
    }
    // SAFETY: the block is still allocated, `size` bytes long, and is read only.
    let block = unsafe { std::slice::from_raw_parts(ptr, size) };
    if block.windows(32).any(|w| w == pattern) {
        HITS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: every call is forwarded to the system allocator; `dealloc` only
// reads the block before freeing it.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed) {
            scan_block(ptr, layout.size());
        }
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A moved block leaves its old bytes behind.
        if ARMED.load(Ordering::Relaxed) {
            scan_block(ptr, layout.size());
        }
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Scanning = Scanning;

/// How many freed blocks held `pattern` while `f` ran.
fn freed_copies_of<T>(pattern: &[u8; 32], f: impl FnOnce() -> T) -> (T, usize) {
    for (atomic, byte) in PATTERN.iter().zip(pattern) {
        atomic.store(*byte, Ordering::SeqCst);
    }
    HITS.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let out = f();
    ARMED.store(false, Ordering::SeqCst);
    (out, HITS.load(Ordering::SeqCst))
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

const LINK_LABEL: &[u8] = b"samizdat/v1/link";

/// One change to a decoded link code.
type CodeChange = Box<dyn Fn(&mut wire::LinkCode)>;
/// A provisioning's own list, seed and pinned lists, and the refusal expected.
type ProvisioningCase = (Vec<u8>, [u8; 32], Vec<Vec<u8>>, LinkError);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn device(user: &str, id: u32, key: u8) -> Device<MemoryBackend> {
    Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([key; 32]), Address::new(user, id).unwrap(), t0())
        .unwrap()
}

fn user_key(seed: u8) -> UserIdentityKeyPair {
    UserIdentityKeyPair::from_seed(&[seed; 32])
}

fn random_key() -> samizdat::keys::IdentityKey {
    IdentityKeyPair::generate(&mut samizdat::os_rng()).public_key()
}

fn signed(
    uik: &UserIdentityKeyPair,
    user: &str,
    version: u64,
    devices: &[(u32, samizdat::keys::IdentityKey)],
) -> SignedDeviceList {
    DeviceList::new(user, version, &uik.public_key(), devices.iter().copied()).unwrap().sign(uik).unwrap()
}

fn rows(device: &Device<MemoryBackend>) -> BTreeMap<(Table, Vec<u8>), Vec<u8>> {
    device.backend().snapshot()
}

fn link_error<T: std::fmt::Debug>(result: Result<T, DeviceError>) -> LinkError {
    match result {
        Err(DeviceError::Link(e)) => e,
        other => panic!("expected a link error, got {other:?}"),
    }
}

/// Alice's phone (device 1) with her user identity and a list naming it,
/// which pinned Bob's user; her laptop (device 2) with nothing yet.
struct World {
    alice: UserIdentityKeyPair,
    phone: Device<MemoryBackend>,
    laptop: Device<MemoryBackend>,
    bob_list: SignedDeviceList,
}

fn world() -> World {
    world_of(user_key(0xA0))
}

/// [`world`] with Alice's user identity `alice` (the tests that look for
/// her seed in freed memory use one of their own).
fn world_of(alice: UserIdentityKeyPair) -> World {
    let phone = device("alice", 1, 1);
    phone.set_device_list(&signed(&alice, "alice", 1, &[(1, phone.identity_key())])).unwrap();
    let bob = user_key(0xB0);
    let bob_list = signed(&bob, "bob", 1, &[(1, random_key())]);
    phone.update_device_list(&bob_list).unwrap();
    let laptop = device("alice", 2, 3);
    World { alice, phone, laptop, bob_list }
}

/// A thief's (or hostile contact's) provisioning for `code`: its own user
/// identity, a list of the code's user naming the code's device, and
/// `pinned`.
fn thief_message(code: &[u8], thief: &UserIdentityKeyPair, pinned: &[Vec<u8>], linker: u32) -> Vec<u8> {
    let parsed = LinkCode::from_bytes(code).unwrap();
    // The thief's list names the new device and, as the linking device, one
    // of the thief's (a linker the list does not name is refused).
    let mut devices = vec![(parsed.address().device_id(), *parsed.identity_key())];
    if linker != parsed.address().device_id() {
        devices.push((linker, IdentityKeyPair::from_seed(&[0x5c; 32]).public_key()));
    }
    let list = signed(thief, parsed.address().user_id(), 1, &devices);
    hazmat::link_seal(code, [0x42; 32], &thief.to_seed(), &list.to_bytes(), pinned, linker).unwrap()
}

/// `pad_row` of PROTOCOL.md 14.4, by hand: the plaintext, 0x80, zeros to
/// the bucket (64; then powers of two to 4096; then multiples of 4096), at
/// least 512.
fn pad_row(plaintext: &[u8]) -> Vec<u8> {
    let needed = plaintext.len() + 1;
    let bucket = if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    }
    .max(512);
    let mut out = plaintext.to_vec();
    out.push(0x80);
    out.resize(bucket, 0);
    out
}

/// The key and nonce of PROTOCOL.md 23.8, by hand.
fn link_key_by_hand(code: &[u8], linker_secret: [u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32], [u8; 12]) {
    let c = wire::LinkCode::decode(code).unwrap();
    let offer: [u8; 32] = c.ephemeral_key.as_slice().try_into().unwrap();
    let sk = x25519_dalek::StaticSecret::from(linker_secret);
    let public = x25519_dalek::PublicKey::from(&sk);
    let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(offer));
    let mut okm = [0u8; 44];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&c.secret), shared.as_bytes())
        .expand(&[LINK_LABEL, code, public.as_bytes()].concat(), &mut okm)
        .unwrap();
    let key: [u8; 32] = okm[..32].try_into().unwrap();
    let nonce: [u8; 12] = okm[32..].try_into().unwrap();
    (*public.as_bytes(), *shared.as_bytes(), key, nonce)
}

/// A link message made by hand from PROTOCOL.md 23.8 alone, with the
/// padded plaintext given (so that it can break the rules the library's
/// sealing keeps).
fn seal_padded_by_hand(code: &[u8], linker_secret: [u8; 32], padded: &[u8]) -> Vec<u8> {
    let (public, _, key, nonce) = link_key_by_hand(code, linker_secret);
    let ad = [LINK_LABEL, &public].concat();
    let sealed =
        ChaCha20Poly1305::new(&key.into()).encrypt(&Nonce::from(nonce), Payload { msg: padded, aad: &ad }).unwrap();
    [&[1u8][..], &public, &sealed].concat()
}

fn provisioning_bytes(seed: &[u8; 32], list: &[u8], pinned: Vec<Vec<u8>>, linker: u32) -> Vec<u8> {
    wire::LinkProvisioning {
        user_identity_seed: seed.to_vec(),
        device_list: list.to_vec(),
        pinned,
        linker_device_id: linker,
    }
    .encode_to_vec()
}

/// A memory store whose writes report `Conflict` the next `left` times.
struct Conflicts {
    store: Arc<MemoryBackend>,
    left: AtomicUsize,
    applies: AtomicUsize,
}

impl Backend for Conflicts {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.store.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if self.left.load(Ordering::SeqCst) > 0 {
            self.left.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Conflict { table: Table::Users });
        }
        self.store.apply(writes)
    }
}

/// A memory store whose next write, once armed, commits and then waits
/// (between the commit and the return to the device) until released.
struct Gate {
    store: Arc<MemoryBackend>,
    armed: AtomicBool,
    committed: Barrier,
    release: Barrier,
}

impl Backend for Gate {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.store.scan(table)
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let result = self.store.apply(writes);
        if result.is_ok() && self.armed.swap(false, Ordering::SeqCst) {
            self.committed.wait();
            self.release.wait();
        }
        result
    }
}

/// A minimal reader of `vectors/linking.json`: the value of `field` in the
/// case named `case` (a string's contents, an array's strings, or a number
/// as text).
fn vector_field(json: &str, case: &str, field: &str) -> Vec<String> {
    let start = json.find(&format!("\"name\": \"{case}\"")).unwrap();
    let body = &json[start..];
    let body = &body[..body.find("\n    }").unwrap()];
    let key = format!("\"{field}\": ");
    let value = &body[body.find(&key).unwrap_or_else(|| panic!("{case}.{field}")) + key.len()..];
    if let Some(rest) = value.strip_prefix('"') {
        vec![rest[..rest.find('"').unwrap()].to_owned()]
    } else if value.starts_with('[') {
        value[..value.find(']').unwrap()].split('"').skip(1).step_by(2).map(str::to_owned).collect()
    } else {
        vec![value.split([',', '\n']).next().unwrap().trim().to_owned()]
    }
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

// ---------------------------------------------------------------------------
// 7. The vectors from the text alone.
// ---------------------------------------------------------------------------

/// The `seal` cases of `vectors/linking.json` reproduced from PROTOCOL.md
/// 23.8 alone: the code built field by field (canonical protobuf), the
/// X25519, HKDF and ChaCha20-Poly1305 by hand, `pad_row` by hand; and the
/// library's offer of the same keys opens the result.
#[test]
fn the_seal_vectors_are_reproduced_from_the_text_alone() {
    let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/linking.json")).unwrap();
    for case in ["seal_two_pinned_users", "seal_no_pinned_user"] {
        let f = |name: &str| vector_field(&json, case, name).remove(0);
        let identity_key = hex32(&vector_field(&json, "code", "identity_key")[0]);
        let offer_secret = hex32(&f("offer_secret_key"));
        let offer_public = *x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(offer_secret)).as_bytes();
        let secret = hex32(&f("secret"));
        let created_at: u64 = f("created_at").parse().unwrap();
        let device_id: u32 = f("device_id").parse().unwrap();
        let user_id = f("user_id");
        // The code, by hand: tag, varint or length, value; defaults omitted.
        let mut code = vec![0x08, 0x01, 0x12, u8::try_from(user_id.len()).unwrap()];
        code.extend_from_slice(user_id.as_bytes());
        code.extend_from_slice(&[0x18, u8::try_from(device_id).unwrap(), 0x22, 32]);
        code.extend_from_slice(&identity_key);
        code.extend_from_slice(&[0x2a, 32]);
        code.extend_from_slice(&offer_public);
        code.extend_from_slice(&[0x32, 32]);
        code.extend_from_slice(&secret);
        code.push(0x38);
        let mut v = created_at;
        while v >= 0x80 {
            code.push(u8::try_from(v & 0x7f).unwrap() | 0x80);
            v >>= 7;
        }
        code.push(u8::try_from(v).unwrap());
        assert_eq!(hex::encode(&code), f("code"), "{case}: the code");

        let linker_secret = hex32(&f("linker_secret_key"));
        let (public, shared, key, nonce) = link_key_by_hand(&code, linker_secret);
        assert_eq!(hex::encode(public), f("linker_public_key"));
        assert_eq!(hex::encode(shared), f("shared"));
        assert_eq!(hex::encode(key), f("key"));
        assert_eq!(hex::encode(nonce), f("nonce"));
        let seed = hex32(&f("user_identity_seed"));
        let pinned: Vec<Vec<u8>> =
            vector_field(&json, case, "pinned").iter().map(|p| hex::decode(p).unwrap()).collect();
        let plaintext = provisioning_bytes(
            &seed,
            &hex::decode(f("device_list")).unwrap(),
            pinned,
            f("linker_device_id").parse().unwrap(),
        );
        assert_eq!(hex::encode(&plaintext), f("plaintext"), "{case}: the plaintext");
        let message = seal_padded_by_hand(&code, linker_secret, &pad_row(&plaintext));
        assert_eq!(hex::encode(&message), f("message"), "{case}: the message");

        let offer = hazmat::link_offer(&user_id, device_id, &identity_key, offer_secret, secret, created_at).unwrap();
        assert_eq!(offer.code(), code.as_slice());
        let opened = hazmat::link_open(&offer, &message).unwrap();
        assert_eq!(*opened.user_identity_seed, seed);
    }
}

// ---------------------------------------------------------------------------
// 1. The server and the new device.
// ---------------------------------------------------------------------------

/// A message sealed (with the genuine user identity and list) to the code
/// with any one field changed opens under no offer: the whole code is in
/// the key's info. Nothing is written and the genuine message links after.
#[test]
fn a_message_sealed_to_a_code_with_one_field_changed_is_refused() {
    let World { alice, phone, laptop, .. } = world();
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let genuine = wire::LinkCode::decode(offer.code()).unwrap();
    let other_ek = *x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([9; 32])).as_bytes();
    let changes: Vec<CodeChange> = vec![
        Box::new(|c| c.user_id = "alicf".into()),
        Box::new(|c| c.device_id = 3),
        Box::new(|c| c.identity_key = random_key().as_bytes().to_vec()),
        Box::new(move |c| c.ephemeral_key = other_ek.to_vec()),
        Box::new(|c| c.secret[0] ^= 1),
        Box::new(|c| c.created_at += 1),
    ];
    let before = rows(&laptop);
    for (k, change) in changes.iter().enumerate() {
        let mut code = genuine.clone();
        change(&mut code);
        let message =
            hazmat::link_seal(&code.encode_to_vec(), [7; 32], &alice.to_seed(), &linked.device_list.to_bytes(), &[], 1)
                .unwrap();
        let e = link_error(laptop.finish_link(&offer, &message, t0()));
        assert_eq!(e, LinkError::WrongCode, "field change {k}");
    }
    assert_eq!(rows(&laptop), before);
    laptop.finish_link(&offer, &linked.message, t0()).unwrap();
}

/// Every single-bit change anywhere in the genuine message (version byte,
/// linking key, body, tag), and every truncation to another bucket, is
/// refused; none opens.
#[test]
fn every_alteration_of_the_message_is_refused() {
    let World { alice, phone, laptop, .. } = world();
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let m = &linked.message;
    for at in 0..m.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = m.clone();
            bad[at] ^= bit;
            let e = hazmat::link_open(&offer, &bad).err();
            let expected = if at == 0 {
                Some(LinkError::MalformedMessage(DecodeError::UnsupportedVersion(u32::from(1 ^ bit))))
            } else {
                Some(LinkError::WrongCode)
            };
            assert_eq!(e, expected, "byte {at} bit {bit:#x}");
        }
    }
    // The body cut or extended to another valid bucket length: the tag fails.
    let mut longer = m.clone();
    longer.extend(std::iter::repeat_n(0u8, 512));
    assert_eq!(hazmat::link_open(&offer, &longer).err(), Some(LinkError::WrongCode));
    assert!(hazmat::link_open(&offer, m).is_ok());
}

/// A message made for an older offer of the same device, or for another
/// device's offer, or a replay after the link: refused; the genuine one
/// for the current offer links. The server learns nothing in the clear:
/// neither the seed nor the list is in the message, and zero or one pinned
/// user give one length.
#[test]
fn old_offers_other_devices_and_replays_are_refused() {
    let World { alice, phone, laptop, .. } = world();
    let old_offer = laptop.link_offer(t0()).unwrap();
    let old = phone.link_device(old_offer.code(), &alice, t0()).unwrap();
    // The app restarted: a new offer.
    let offer = laptop.link_offer(t0()).unwrap();
    let current = phone.link_device(offer.code(), &alice, t0()).unwrap();
    assert!(!current.list_changed);
    let tablet = device("alice", 3, 4);
    let tablet_offer = tablet.link_offer(t0()).unwrap();
    let for_tablet = phone.link_device(tablet_offer.code(), &alice, t0()).unwrap();
    let before = rows(&laptop);
    for m in [&old.message, &for_tablet.message] {
        assert_eq!(link_error(laptop.finish_link(&offer, m, t0())), LinkError::WrongCode);
    }
    // The tablet's offer given to the laptop: not its offer.
    assert!(matches!(
        link_error(laptop.finish_link(&tablet_offer, &current.message, t0())),
        LinkError::WrongUser { .. }
    ));
    // An offer of the laptop's address with another identity key (hazmat).
    let impostor = hazmat::link_offer("alice", 2, random_key().as_bytes(), [3; 32], [4; 32], 1_800_000_000).unwrap();
    assert!(matches!(link_error(laptop.finish_link(&impostor, &current.message, t0())), LinkError::WrongUser { .. }));
    assert_eq!(rows(&laptop), before);

    // Nothing in the clear.
    for secret in [alice.to_seed().to_vec(), current.device_list.to_bytes()] {
        assert!(!current.message.windows(secret.len()).any(|w| w == secret.as_slice()));
    }
    let empty = device("alice", 1, 9);
    empty.set_device_list(&signed(&alice, "alice", 1, &[(1, empty.identity_key())])).unwrap();
    let other_offer = device("alice", 2, 3).link_offer(t0()).unwrap();
    let without_pins = empty.link_device(other_offer.code(), &alice, t0()).unwrap();
    assert_eq!(without_pins.message.len(), current.message.len(), "one pinned user or none: one bucket");

    laptop.finish_link(&offer, &current.message, t0()).unwrap();
    let after = rows(&laptop);
    for m in [&current.message, &old.message] {
        assert_eq!(link_error(laptop.finish_link(&offer, m, t0())), LinkError::AlreadyUsed);
    }
    assert_eq!(rows(&laptop), after);
}

// ---------------------------------------------------------------------------
// 2. The linking device.
// ---------------------------------------------------------------------------

/// A code whose identity key is the linking device's own (under another
/// device id), or another listed device's: refused, nothing written.
#[test]
fn a_code_with_an_identity_key_already_listed_under_another_id_is_refused() {
    let World { alice, phone, .. } = world();
    let tablet_key = random_key();
    phone.set_device_list(&signed(&alice, "alice", 2, &[(1, phone.identity_key()), (3, tablet_key)])).unwrap();
    let before = rows(&phone);
    for key in [phone.identity_key(), tablet_key] {
        let offer = hazmat::link_offer("alice", 9, key.as_bytes(), [3; 32], [4; 32], 1_800_000_000).unwrap();
        let result = phone.link_device(offer.code(), &alice, t0());
        assert_eq!(
            result.err().map(|e| e.to_string()),
            Some(
                DeviceError::DeviceList(DeviceListError::Malformed(DecodeError::InvalidValue("devices.identity_key")))
                    .to_string()
            )
        );
    }
    assert_eq!(rows(&phone), before);
}

/// Expiry at its exact boundaries, on both devices: the linking device
/// takes a code made up to 600 s before or after its clock, not 601; the
/// new device takes a message up to 600 s after its offer, not 601 (and
/// any time before it: its clock went back). Each refusal writes nothing.
#[test]
fn expiry_holds_at_its_exact_boundaries() {
    let World { alice, phone, .. } = world();
    let life = secs(LINK_CODE_LIFETIME_SECS);
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(t0()).unwrap();
    let before = rows(&phone);
    for when in [t0() + life + secs(1), t0() - life - secs(1)] {
        assert_eq!(link_error(phone.link_device(offer.code(), &alice, when)), LinkError::Expired);
    }
    assert_eq!(rows(&phone), before);
    for when in [t0() + life, t0() - life] {
        let copy = Device::open_in(support::copy_of(phone.backend()), &StorageKey::from_bytes([1; 32])).unwrap();
        copy.link_device(offer.code(), &alice, when).unwrap();
    }
    // Codes at the ends of time.
    for created_at in [0, u64::MAX] {
        let code =
            hazmat::link_offer("alice", 2, laptop.identity_key().as_bytes(), [3; 32], [4; 32], created_at).unwrap();
        assert_eq!(link_error(phone.link_device(code.code(), &alice, t0())), LinkError::Expired);
    }
    assert_eq!(rows(&phone), before);

    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let laptop_rows = rows(&laptop);
    assert_eq!(link_error(laptop.finish_link(&offer, &linked.message, t0() + life + secs(1))), LinkError::Expired);
    assert_eq!(rows(&laptop), laptop_rows);
    laptop.finish_link(&offer, &linked.message, t0() + life).unwrap();
    // The new device's clock went back after the offer: still within it.
    let other = device("alice", 4, 5);
    let offer = other.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    other.finish_link(&offer, &linked.message, t0() - secs(100_000)).unwrap();
}

/// The list takes its 32nd device and refuses a 33rd (nothing written); a
/// full list still takes a reinstalled device's new key under its id.
#[test]
fn the_list_limit_holds_at_exactly_32() {
    let alice = user_key(0xA0);
    let phone = device("alice", 1, 1);
    let max = u32::try_from(MAX_DEVICES_PER_USER).unwrap();
    let mut devices = vec![(1, phone.identity_key())];
    devices.extend((2..max).map(|id| (id, random_key())));
    assert_eq!(devices.len(), MAX_DEVICES_PER_USER - 1);
    phone.set_device_list(&signed(&alice, "alice", 1, &devices)).unwrap();
    let last = device("alice", 100, 3);
    let linked = phone.link_device(last.link_offer(t0()).unwrap().code(), &alice, t0()).unwrap();
    assert_eq!(linked.device_list.verify().unwrap().devices().len(), MAX_DEVICES_PER_USER);
    let before = rows(&phone);
    let one_more = device("alice", 101, 4);
    assert_eq!(
        link_error(phone.link_device(one_more.link_offer(t0()).unwrap().code(), &alice, t0())),
        LinkError::TooManyDevices
    );
    assert_eq!(rows(&phone), before);
    let reinstalled = device("alice", 100, 5);
    let linked = phone.link_device(reinstalled.link_offer(t0()).unwrap().code(), &alice, t0()).unwrap();
    let list = linked.device_list.verify().unwrap();
    assert_eq!((list.devices().len(), list.device(100)), (MAX_DEVICES_PER_USER, Some(&reinstalled.identity_key())));
}

/// A list at the last version cannot take a new device: refused, nothing
/// written.
#[test]
fn a_list_at_the_last_version_is_refused_and_writes_nothing() {
    let alice = user_key(0xA0);
    let phone = device("alice", 1, 1);
    phone.set_device_list(&signed(&alice, "alice", u64::MAX, &[(1, phone.identity_key())])).unwrap();
    let before = rows(&phone);
    let laptop = device("alice", 2, 3);
    let result = phone.link_device(laptop.link_offer(t0()).unwrap().code(), &alice, t0());
    assert!(
        matches!(
            result,
            Err(DeviceError::DeviceList(DeviceListError::Malformed(DecodeError::InvalidValue("version"))))
        ),
        "{result:?}"
    );
    assert_eq!(rows(&phone), before);
}

/// The same code scanned again (the first message lost) writes nothing;
/// refusals for another user key and with no own list write nothing.
#[test]
fn a_code_scanned_again_and_refused_calls_write_nothing() {
    let World { alice, phone, laptop, .. } = world();
    let offer = laptop.link_offer(t0()).unwrap();
    phone.link_device(offer.code(), &alice, t0()).unwrap();
    let before = rows(&phone);
    let again = phone.link_device(offer.code(), &alice, t0()).unwrap();
    assert!(!again.list_changed);
    assert!(matches!(
        phone.link_device(offer.code(), &user_key(0x77), t0()),
        Err(DeviceError::DeviceList(DeviceListError::WrongSigner))
    ));
    assert_eq!(rows(&phone), before);
    let bare = device("alice", 5, 6);
    let bare_rows = rows(&bare);
    assert_eq!(link_error(bare.link_device(offer.code(), &alice, t0())), LinkError::NoOwnList);
    assert_eq!(rows(&bare), bare_rows);
    laptop.finish_link(&offer, &again.message, t0()).unwrap();
}

// ---------------------------------------------------------------------------
// 3. What the new device pins.
// ---------------------------------------------------------------------------

/// Someone with the code (a thief with a photo) seals provisionings that
/// carry, for users the laptop pinned already, a list under another user
/// key, an older list, and another list of the same version: the laptop's
/// pins stand; a newer list under the same key is taken; a new user is
/// pinned. (That the holder of the code can pin new users at all is the
/// documented limit of 23.8.)
#[test]
fn a_hostile_provisioning_cannot_replace_or_roll_back_the_new_devices_pins() {
    let World { alice, phone, laptop, .. } = world();
    let carol = user_key(0xC0);
    let dave = user_key(0xD0);
    let carol_v2 = signed(&carol, "carol", 2, &[(1, random_key())]);
    let dave_v1 = signed(&dave, "dave", 1, &[(1, random_key())]);
    laptop.update_device_list(&carol_v2).unwrap();
    laptop.update_device_list(&dave_v1).unwrap();
    let carol_pin = laptop.user_trust("carol").unwrap().unwrap();
    let dave_pin = laptop.user_trust("dave").unwrap().unwrap();
    let mallory = user_key(0xEE);

    // carol: an older list; dave: another key; erin: new.
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let erin = signed(&user_key(0xE1), "erin", 1, &[(1, random_key())]);
    let pinned = vec![
        signed(&carol, "carol", 1, &[(1, random_key())]).to_bytes(),
        signed(&mallory, "dave", 9, &[(1, random_key())]).to_bytes(),
        erin.to_bytes(),
    ];
    let message =
        hazmat::link_seal(offer.code(), [5; 32], &alice.to_seed(), &linked.device_list.to_bytes(), &pinned, 1).unwrap();
    let p = laptop.finish_link(&offer, &message, t0()).unwrap();
    assert_eq!((p.pinned_users, p.newly_pinned), (3, 1));
    assert_eq!(laptop.user_trust("carol").unwrap().unwrap(), carol_pin);
    assert_eq!(laptop.user_trust("dave").unwrap().unwrap(), dave_pin);
    assert_eq!(laptop.user_trust("erin").unwrap().unwrap().signed_list(), &erin);

    // carol: another list of the same version (equivocation); dave: newer under his key.
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let dave_v2 = signed(&dave, "dave", 2, &[(1, random_key())]);
    let pinned = vec![signed(&carol, "carol", 2, &[(7, random_key())]).to_bytes(), dave_v2.to_bytes()];
    let message =
        hazmat::link_seal(offer.code(), [6; 32], &alice.to_seed(), &linked.device_list.to_bytes(), &pinned, 1).unwrap();
    let p = laptop.finish_link(&offer, &message, t0()).unwrap();
    assert_eq!((p.pinned_users, p.newly_pinned), (2, 0));
    assert_eq!(laptop.user_trust("carol").unwrap().unwrap(), carol_pin);
    assert_eq!(laptop.user_trust("dave").unwrap().unwrap().signed_list(), &dave_v2);
}

/// Provisionings that break K9 or K10 (crafted with the code): a list not
/// naming the device, naming it with another key or under another id, of
/// another user, under another key than the seed's, with a bad signature;
/// pinned lists with a bad signature, of our own user, twice, out of
/// order. Each refused with its error, nothing written, the offer still
/// usable.
#[test]
fn a_provisioning_that_breaks_k9_or_k10_is_refused_and_writes_nothing() {
    let World { alice, phone, laptop, bob_list } = world();
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let me = laptop.identity_key();
    let bad_sig = |l: &SignedDeviceList| {
        let mut s = wire::SignedDeviceList::decode(l.to_bytes().as_slice()).unwrap();
        s.signature[5] ^= 1;
        s.encode_to_vec()
    };
    let good = linked.device_list.to_bytes();
    let carol = signed(&user_key(0xC0), "carol", 1, &[(1, random_key())]).to_bytes();
    let cases: Vec<ProvisioningCase> = vec![
        (
            signed(&alice, "alice", 5, &[(1, phone.identity_key())]).to_bytes(),
            *alice.to_seed(),
            vec![],
            LinkError::Provisioning(DeviceListError::UnlistedDevice { device_id: 2 }),
        ),
        (
            signed(&alice, "alice", 5, &[(2, random_key())]).to_bytes(),
            *alice.to_seed(),
            vec![],
            LinkError::Provisioning(DeviceListError::UnlistedDevice { device_id: 2 }),
        ),
        (
            signed(&alice, "alice", 5, &[(3, me)]).to_bytes(),
            *alice.to_seed(),
            vec![],
            LinkError::Provisioning(DeviceListError::UnlistedDevice { device_id: 2 }),
        ),
        (
            signed(&alice, "alicia", 5, &[(2, me)]).to_bytes(),
            *alice.to_seed(),
            vec![],
            LinkError::Provisioning(DeviceListError::WrongUser { expected: "alice".into(), found: "alicia".into() }),
        ),
        (good.clone(), [0x77; 32], vec![], LinkError::Provisioning(DeviceListError::WrongSigner)),
        (
            bad_sig(&linked.device_list),
            *alice.to_seed(),
            vec![],
            LinkError::Provisioning(DeviceListError::BadSignature),
        ),
        (
            good.clone(),
            *alice.to_seed(),
            vec![bad_sig(&bob_list)],
            LinkError::Provisioning(DeviceListError::BadSignature),
        ),
        (
            good.clone(),
            *alice.to_seed(),
            vec![good.clone()],
            LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")),
        ),
        (
            good.clone(),
            *alice.to_seed(),
            vec![bob_list.to_bytes(), bob_list.to_bytes()],
            LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")),
        ),
        (
            good.clone(),
            *alice.to_seed(),
            vec![carol.clone(), bob_list.to_bytes()],
            LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")),
        ),
    ];
    let before = rows(&laptop);
    for (k, (list, seed, pinned, expected)) in cases.into_iter().enumerate() {
        let message = hazmat::link_seal(offer.code(), [8; 32], &seed, &list, &pinned, 1).unwrap();
        let e = link_error(laptop.finish_link(&offer, &message, t0()));
        assert_eq!(e, expected, "case {k}");
        assert_eq!(e.kind(), ErrorKind::InvalidMessage);
    }
    assert_eq!(rows(&laptop), before);
    laptop.finish_link(&offer, &linked.message, t0()).unwrap();
}

/// A provisioning whose own list is older than the one the new device
/// holds under the same user key: refused, nothing written.
#[test]
fn a_provisioning_that_rolls_back_the_own_list_is_refused() {
    let World { alice, phone, laptop, .. } = world();
    laptop
        .set_device_list(&signed(&alice, "alice", 5, &[(1, phone.identity_key()), (2, laptop.identity_key())]))
        .unwrap();
    let before = rows(&laptop);
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    assert_eq!(linked.device_list.verify().unwrap().version(), 2);
    let result = laptop.finish_link(&offer, &linked.message, t0());
    assert!(
        matches!(result, Err(DeviceError::DeviceList(DeviceListError::Rollback { seen: 5, offered: 2 }))),
        "{result:?}"
    );
    assert_eq!(rows(&laptop), before);
}

/// Finding (low): `finish_link` returns as `linked_by` whatever device id
/// the provisioning names: the new device itself, or a device the list it
/// takes does not name. Schedule: anyone holding the code (a photo) seals
/// `linker_device_id` of their choice (with `hazmat::link_seal`, or any
/// implementation). Impact: an app that shows "linked by <device>" shows a
/// device that did not link it; nothing is written wrongly (the server,
/// without the code, cannot do this). PROTOCOL.md 23.8 says the call
/// returns "the linking device's address" and checks nothing about it.
#[test]
fn linked_by_is_a_listed_device_other_than_the_new_one() {
    let World { alice, phone, .. } = world();
    for linker in [2, 77] {
        let laptop = device("alice", 2, 3);
        let offer = laptop.link_offer(t0()).unwrap();
        let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
        let message =
            hazmat::link_seal(offer.code(), [5; 32], &alice.to_seed(), &linked.device_list.to_bytes(), &[], linker)
                .unwrap();
        let before = rows(&laptop);
        let result = laptop.finish_link(&offer, &message, t0());
        assert!(result.is_err(), "linker {linker}: accepted as {:?}", result.map(|p| p.linked_by));
        assert_eq!(rows(&laptop), before);
    }
}

// ---------------------------------------------------------------------------
// 4. State: single use, retries, failed writes.
// ---------------------------------------------------------------------------

/// Two threads finish one offer on one handle at once, with the genuine
/// message and a thief's: exactly one links, the other is `AlreadyUsed`,
/// and the store holds the winner's list.
#[test]
fn one_offer_links_once_under_two_threads_on_one_handle() {
    for round in 0..8 {
        let World { alice, phone, laptop, .. } = world();
        let offer = laptop.link_offer(t0()).unwrap();
        let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
        let thief = user_key(0xEE);
        let forged = thief_message(offer.code(), &thief, &[], 1);
        let barrier = Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                barrier.wait();
                laptop.finish_link(&offer, &linked.message, t0())
            });
            let b = s.spawn(|| {
                barrier.wait();
                laptop.finish_link(&offer, &forged, t0())
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        let (winner, loser) = match (a, b) {
            (Ok(p), Err(e)) | (Err(e), Ok(p)) => (p, e),
            (a, b) => panic!("round {round}: {a:?} {b:?}"),
        };
        assert!(matches!(loser, DeviceError::Link(LinkError::AlreadyUsed)), "round {round}: {loser:?}");
        assert_eq!(laptop.device_list().unwrap(), Some(winner.device_list));
    }
}

/// Finding (low): the offer's single use is an in-memory flag set after
/// the commit, under a lock of one handle only. Schedule: two handles of
/// the new device's store (two `Device`s on one backend, as the store
/// supports) finish one offer at once: handle 1 commits the genuine
/// provisioning and, before it marks the offer used, handle 2 opens a
/// thief's message for the same offer (sealed with the photographed code)
/// and commits it over the first, taking the thief's user identity as a
/// new one (`TrustNewIdentity`). Impact: both calls return `Ok`; the app
/// keeps the genuine user identity from the first while the store holds
/// the thief's list and user key. (By code reading, the genuine message
/// given to both handles in this window is also accepted twice instead of
/// `AlreadyUsed`; not tested here.)
#[test]
fn one_offer_links_once_under_two_handles_of_one_store() {
    let World { alice, phone, .. } = world();
    let store = Arc::new(MemoryBackend::new());
    let key = StorageKey::from_bytes([3; 32]);
    let second = Device::create_in(store.clone(), &key, Address::new("alice", 2).unwrap(), t0()).unwrap();
    let gate = Gate {
        store: store.clone(),
        armed: AtomicBool::new(false),
        committed: Barrier::new(2),
        release: Barrier::new(2),
    };
    let first = Device::open_in(gate, &key).unwrap();
    let offer = first.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let thief = user_key(0xEE);
    let forged = thief_message(offer.code(), &thief, &[], 1);
    first.backend().armed.store(true, Ordering::SeqCst);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| first.finish_link(&offer, &linked.message, t0()));
        first.backend().committed.wait();
        let b = second.finish_link(&offer, &forged, t0());
        first.backend().release.wait();
        (a.join().unwrap(), b)
    });
    assert!(a.is_ok());
    let own = second.user_trust("alice").unwrap().unwrap();
    assert!(
        matches!(b, Err(DeviceError::Link(LinkError::AlreadyUsed))),
        "the second finish returned {:?}; the store's user key is now {}",
        b.map(|p| p.user_identity.public_key() == thief.public_key()),
        if *own.user_identity_key() == thief.public_key() { "the thief's" } else { "Alice's" }
    );
    assert_eq!(*own.user_identity_key(), alice.public_key());
}

/// `Conflict` is retried at most 8 times in all: 7 conflicts then success
/// links; 8 conflicts fail with nothing written, and the offer (or the
/// code) still works. Both calls.
#[test]
fn conflicts_are_retried_eight_times_in_all_on_both_devices() {
    let alice = user_key(0xA0);
    let phone_store = Arc::new(MemoryBackend::new());
    let phone = Device::create_in(
        Conflicts { store: phone_store.clone(), left: AtomicUsize::new(0), applies: AtomicUsize::new(0) },
        &StorageKey::from_bytes([1; 32]),
        Address::new("alice", 1).unwrap(),
        t0(),
    )
    .unwrap();
    phone.set_device_list(&signed(&alice, "alice", 1, &[(1, phone.identity_key())])).unwrap();
    phone.update_device_list(&signed(&user_key(0xB0), "bob", 1, &[(1, random_key())])).unwrap();
    let laptop_store = Arc::new(MemoryBackend::new());
    let laptop = Device::create_in(
        Conflicts { store: laptop_store.clone(), left: AtomicUsize::new(0), applies: AtomicUsize::new(0) },
        &StorageKey::from_bytes([3; 32]),
        Address::new("alice", 2).unwrap(),
        t0(),
    )
    .unwrap();
    let offer = laptop.link_offer(t0()).unwrap();

    let before = phone_store.snapshot();
    phone.backend().left.store(8, Ordering::SeqCst);
    phone.backend().applies.store(0, Ordering::SeqCst);
    assert!(matches!(
        phone.link_device(offer.code(), &alice, t0()),
        Err(DeviceError::Store(StoreError::Conflict { .. }))
    ));
    assert_eq!(phone.backend().applies.load(Ordering::SeqCst), 8);
    assert_eq!(phone_store.snapshot(), before);
    phone.backend().left.store(7, Ordering::SeqCst);
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    assert!(linked.list_changed);

    let before = laptop_store.snapshot();
    laptop.backend().left.store(8, Ordering::SeqCst);
    laptop.backend().applies.store(0, Ordering::SeqCst);
    assert!(matches!(
        laptop.finish_link(&offer, &linked.message, t0()),
        Err(DeviceError::Store(StoreError::Conflict { .. }))
    ));
    assert_eq!(laptop.backend().applies.load(Ordering::SeqCst), 8);
    assert_eq!(laptop_store.snapshot(), before);
    laptop.backend().left.store(7, Ordering::SeqCst);
    let p = laptop.finish_link(&offer, &linked.message, t0()).unwrap();
    assert_eq!((p.pinned_users, p.newly_pinned), (1, 1));
    assert_eq!(laptop.device_list().unwrap(), Some(linked.device_list));
}

/// A new device that already holds its own list (under another user key)
/// and pins: its write of the link fails; every row stays; the same
/// message links when tried again, replacing the user identity and pinning
/// the new user in one transaction.
#[test]
fn a_failed_multi_row_write_leaves_every_row_and_the_retry_links() {
    let World { alice, phone, .. } = world();
    let store = Arc::new(MemoryBackend::new());
    let laptop = Device::create_in(
        Conflicts { store: store.clone(), left: AtomicUsize::new(0), applies: AtomicUsize::new(0) },
        &StorageKey::from_bytes([3; 32]),
        Address::new("alice", 2).unwrap(),
        t0(),
    )
    .unwrap();
    let old_user = user_key(0x0D);
    laptop.set_device_list(&signed(&old_user, "alice", 9, &[(2, laptop.identity_key())])).unwrap();
    laptop.update_device_list(&signed(&user_key(0xC0), "carol", 1, &[(1, random_key())])).unwrap();
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let before = store.snapshot();
    laptop.backend().left.store(100, Ordering::SeqCst);
    assert!(laptop.finish_link(&offer, &linked.message, t0()).is_err());
    assert_eq!(store.snapshot(), before);
    laptop.backend().left.store(0, Ordering::SeqCst);
    let p = laptop.finish_link(&offer, &linked.message, t0()).unwrap();
    assert_eq!((p.pinned_users, p.newly_pinned), (1, 1));
    assert_eq!(*laptop.user_trust("alice").unwrap().unwrap().user_identity_key(), alice.public_key());
    assert!(laptop.user_trust("bob").unwrap().is_some() && laptop.user_trust("carol").unwrap().is_some());
}

// ---------------------------------------------------------------------------
// 5. Secrets.
// ---------------------------------------------------------------------------

fn shows(text: &str, secret: &[u8]) -> bool {
    let hex_lower = hex::encode(secret);
    let hex_upper = hex_lower.to_uppercase();
    let decimal = format!("{secret:?}");
    let decimal_inner = decimal.trim_start_matches('[').trim_end_matches(']').to_owned();
    let compact: String = secret.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    text.contains(&hex_lower) || text.contains(&hex_upper) || text.contains(&decimal_inner) || text.contains(&compact)
}

/// The Debug output (plain and `{:#?}`) of `LinkOffer`, `LinkCode`,
/// `Linked`, `Provisioned` and `hazmat::LinkOpened` shows no secret: the
/// code's secret, the offer's X25519 secret, the user identity seed, the
/// message; nor the errors.
#[test]
fn debug_output_shows_no_secret() {
    let World { alice, phone, laptop, .. } = world();
    let secret = [0x5c; 32].map(|b: u8| b);
    let secret: [u8; 32] = std::array::from_fn(|i| secret[i] ^ u8::try_from(i).unwrap());
    let ephemeral: [u8; 32] = std::array::from_fn(|i| 0x90 ^ u8::try_from(i * 3).unwrap());
    let offer =
        hazmat::link_offer("alice", 2, laptop.identity_key().as_bytes(), ephemeral, secret, 1_800_000_000).unwrap();
    let code = LinkCode::from_bytes(offer.code()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let opened = hazmat::link_open(&offer, &linked.message).unwrap();
    let seed = alice.to_seed();
    let mut texts = vec![
        format!("{offer:?}"),
        format!("{offer:#?}"),
        format!("{code:?}"),
        format!("{code:#?}"),
        format!("{linked:?}"),
        format!("{linked:#?}"),
        format!("{opened:?}"),
    ];
    let p: Provisioned = laptop.finish_link(&offer, &linked.message, t0()).unwrap();
    texts.push(format!("{p:?}"));
    texts.push(format!("{p:#?}"));
    for e in [LinkError::WrongCode, LinkError::AlreadyUsed, LinkError::Expired] {
        texts.push(format!("{e:?} {e}"));
    }
    for text in &texts {
        for (name, s) in [("secret", &secret[..]), ("ephemeral", &ephemeral[..]), ("seed", &seed[..])] {
            assert!(!shows(text, s), "{name} in {text}");
        }
        assert!(!shows(text, &linked.message[40..72]), "message bytes in {text}");
        assert!(!shows(text, offer.code()), "the code in {text}");
    }
}

/// Making an offer leaves no copy of the code's secret in freed memory
/// (PROTOCOL.md 23.8: the offer's keys are "zeroized on drop").
///
/// Finding (low): `LinkOffer::from_parts` builds the code from a
/// temporary `wire::LinkCode` holding `secret.to_vec()`, dropped without
/// being wiped. Schedule: every `link_offer`. Impact: a copy of the
/// code's secret stays in freed heap memory of the new device (memory
/// disclosure, a core dump, a swapped page) for the code's lifetime;
/// with it, and `EK_o`'s public key (in the same code), an attacker who
/// reads the memory can seal messages the offer opens.
#[test]
fn making_an_offer_leaves_no_copy_of_the_secret_in_freed_memory() {
    let _serial = SCAN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let secret: [u8; 32] = std::array::from_fn(|i| 0xA5 ^ u8::try_from(i * 11 % 256).unwrap());
    let (offer, copies) = freed_copies_of(&secret, || {
        let offer = hazmat::link_offer("alice", 2, random_key().as_bytes(), [3; 32], secret, 1_800_000_000).unwrap();
        std::hint::black_box(&offer);
        offer
    });
    let ((), dropped) = freed_copies_of(&secret, || drop(offer));
    assert_eq!((copies, dropped), (0, 0), "freed blocks holding the secret: while making the offer, when dropping it");
}

/// Opening a message (on the new device) leaves no copy of the code's
/// secret in freed memory.
///
/// Finding (low): `link_key` builds the HKDF info `LINK_LABEL || code ||
/// EK_l` in a plain `Vec`, and the code holds the secret; the `Vec` is
/// freed unwiped. Schedule: every `finish_link` that reaches K7 (also each
/// forged or altered message the server sends), and every `link_device`
/// (sealing, below). Impact: a copy of the code's secret in freed heap
/// memory (a memory disclosure, a core dump, a swapped page); with the
/// code's public parts it lets the reader seal messages the offer opens
/// while the offer lives.
#[test]
fn opening_a_message_leaves_no_copy_of_the_secret_in_freed_memory() {
    let World { alice, phone, laptop, .. } = world();
    let _serial = SCAN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let offer = laptop.link_offer(t0()).unwrap();
    let secret: [u8; 32] = wire::LinkCode::decode(offer.code()).unwrap().secret.as_slice().try_into().unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let (result, opening) = freed_copies_of(&secret, || laptop.finish_link(&offer, &linked.message, t0()).map(|_| ()));
    result.unwrap();
    assert_eq!(opening, 0, "freed blocks holding the secret in finish_link");
}

/// Reading a scanned code leaves no copy of its secret in freed memory.
///
/// Finding (low): `codec::decode_secret` promises that "the parsed value
/// and the re-encoding used for the check are wiped on drop, on every
/// path", but prost decodes a `bytes` field into a `Vec<u8>` through a
/// temporary `bytes::Bytes` (`BytesAdapter::replace_with` puts a
/// `copy_to_bytes` result), which is freed unwiped. Schedule: every
/// `LinkCode::from_bytes` (so every `link_device`), and every
/// `decode_secret` of a message with a secret `bytes` field (the user
/// identity seed in `finish_link`, below; other records of the crate
/// too). Impact: as above, on the linking device.
#[test]
fn reading_a_code_leaves_no_copy_of_the_secret_in_freed_memory() {
    let _serial = SCAN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(t0()).unwrap();
    let secret: [u8; 32] = wire::LinkCode::decode(offer.code()).unwrap().secret.as_slice().try_into().unwrap();
    let (code, reading) = freed_copies_of(&secret, || LinkCode::from_bytes(offer.code()).unwrap());
    let ((), dropping) = freed_copies_of(&secret, || drop(code));
    assert_eq!((reading, dropping), (0, 0), "freed blocks holding the secret: reading the code, dropping it");
}

/// Sealing a message (on the linking device) leaves no copy of the code's
/// secret in freed memory. Fails today with two copies: the prost
/// decoding of `reading_a_code_..` and the HKDF info of
/// `opening_a_message_..` (the same two findings, on the linking device).
#[test]
fn sealing_a_message_leaves_no_copy_of_the_secret_in_freed_memory() {
    let World { alice, phone, laptop, .. } = world();
    let _serial = SCAN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let offer = laptop.link_offer(t0()).unwrap();
    let secret: [u8; 32] = wire::LinkCode::decode(offer.code()).unwrap().secret.as_slice().try_into().unwrap();
    let (linked, sealing) = freed_copies_of(&secret, || phone.link_device(offer.code(), &alice, t0()).unwrap());
    std::hint::black_box(&linked);
    assert_eq!(sealing, 0, "freed blocks holding the secret in link_device");
}

/// The user identity seed leaves no copy in freed memory on either device.
///
/// Finding (medium-low): on the new device, `Provisioning::from_bytes`
/// decodes the plaintext with `decode_secret`, and prost's temporary
/// `bytes::Bytes` for `user_identity_seed` (see
/// `reading_a_code_..`) is freed unwiped: one copy of `UIK`'s seed per
/// `finish_link`. Schedule: every `finish_link` that opens a message.
/// Impact: the user identity seed (which signs every list of the user,
/// 23.1) in freed heap memory of the new device; whoever later reads that
/// memory can sign device lists with ghost devices at any version until
/// the user moves to a new user identity. The linking device (sealing) and
/// dropping `Provisioned` leave none.
#[test]
fn the_user_identity_seed_leaves_no_copy_in_freed_memory() {
    let own_seed: [u8; 32] = std::array::from_fn(|i| 0x3C ^ u8::try_from(i * 29 % 256).unwrap());
    let World { alice, phone, laptop, .. } = world_of(UserIdentityKeyPair::from_seed(&own_seed));
    let _serial = SCAN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed = *alice.to_seed();
    let offer = laptop.link_offer(t0()).unwrap();
    let (linked, sealing) = freed_copies_of(&seed, || phone.link_device(offer.code(), &alice, t0()).unwrap());
    let (provisioned, opening) = freed_copies_of(&seed, || laptop.finish_link(&offer, &linked.message, t0()).unwrap());
    let ((), dropping) = freed_copies_of(&seed, || drop(provisioned));
    assert_eq!((sealing, opening, dropping), (0, 0, 0), "link_device, finish_link, dropping Provisioned");
}

/// The seed is not left behind by the linking device, nor by dropping what
/// `finish_link` returned (the part of the property that holds).
#[test]
fn the_user_identity_seed_leaves_no_copy_when_sealed_or_dropped() {
    let own_seed: [u8; 32] = std::array::from_fn(|i| 0x3C ^ u8::try_from(i * 29 % 256).unwrap());
    let World { alice, phone, laptop, .. } = world_of(UserIdentityKeyPair::from_seed(&own_seed));
    let _serial = SCAN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed = *alice.to_seed();
    let offer = laptop.link_offer(t0()).unwrap();
    let (linked, sealing) = freed_copies_of(&seed, || phone.link_device(offer.code(), &alice, t0()).unwrap());
    let provisioned = laptop.finish_link(&offer, &linked.message, t0()).unwrap();
    let ((), dropping) = freed_copies_of(&seed, || drop(provisioned));
    assert_eq!((sealing, dropping), (0, 0));
}

/// K10 as the code applies it: each pinned list is verified and then its
/// order checked, in turn; so with lists [carol, bob (out of order), dave
/// with a bad signature] the order error comes first. (PROTOCOL.md reads
/// "each pinned list passes L1 to L12; their user ids strictly increase",
/// which an implementation may apply in two passes and report the bad
/// signature instead: the vectors do not cover this order.)
#[test]
fn k10_checks_each_pinned_list_then_its_order_in_turn() {
    let World { alice, phone, laptop, bob_list } = world();
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let carol = signed(&user_key(0xC0), "carol", 1, &[(1, random_key())]).to_bytes();
    let mut dave =
        wire::SignedDeviceList::decode(signed(&user_key(0xD0), "dave", 1, &[(1, random_key())]).to_bytes().as_slice())
            .unwrap();
    dave.signature[0] ^= 1;
    let pinned = vec![carol, bob_list.to_bytes(), dave.encode_to_vec()];
    let message =
        hazmat::link_seal(offer.code(), [5; 32], &alice.to_seed(), &linked.device_list.to_bytes(), &pinned, 1).unwrap();
    assert_eq!(
        hazmat::link_open(&offer, &message).err(),
        Some(LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned")))
    );
}

// ---------------------------------------------------------------------------
// 6. Limits.
// ---------------------------------------------------------------------------

/// C1 at exactly 512 bytes is passed (the input fails a later check) and
/// 513 is `TooLarge`; the longest valid code (380 bytes) reads.
#[test]
fn the_code_limit_holds_at_exactly_512() {
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(t0()).unwrap();
    let mut padded = offer.code().to_vec();
    // An unknown bytes field (tag 8 << 3 | 2 = 0x42) fills the code to 512.
    let fill = MAX_LINK_CODE_LEN - padded.len() - 3;
    padded.extend_from_slice(&[0x42, u8::try_from(fill & 0x7f).unwrap() | 0x80, u8::try_from(fill >> 7).unwrap()]);
    padded.resize(MAX_LINK_CODE_LEN, 0);
    assert_eq!(padded.len(), 512);
    assert_eq!(LinkCode::from_bytes(&padded).err(), Some(LinkError::MalformedCode(DecodeError::Protobuf)));
    padded.push(0);
    assert_eq!(
        LinkCode::from_bytes(&padded).err(),
        Some(LinkError::MalformedCode(DecodeError::TooLarge { len: 513, max: 512 }))
    );
    let longest =
        hazmat::link_offer(&"é".repeat(128), u32::MAX, random_key().as_bytes(), [3; 32], [4; 32], u64::MAX).unwrap();
    assert_eq!(longest.code().len(), 380);
    assert!(LinkCode::from_bytes(longest.code()).is_ok());
}

/// K4 and K6 at their bounds: 561 bytes (the shortest) passes to the AEAD,
/// 560 does not; exactly 24 MiB is not `TooLarge` (and is no bucket), one
/// more is; the longest bucket within the limit passes to the AEAD.
#[test]
fn the_message_limits_hold_at_their_bounds() {
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(t0()).unwrap();
    let min = 33 + 512 + 16;
    let open = |len: usize| hazmat::link_open(&offer, &[&[1u8][..], &vec![0x55; len - 1]].concat()).err();
    assert_eq!(open(min), Some(LinkError::WrongCode));
    assert_eq!(
        open(min - 1),
        Some(LinkError::MalformedMessage(DecodeError::InvalidLength { field: "link", expected: min, actual: min - 1 }))
    );
    assert_eq!(open(MAX_LINK_MESSAGE_LEN), Some(LinkError::MalformedMessage(DecodeError::InvalidValue("link.length"))));
    assert_eq!(
        open(MAX_LINK_MESSAGE_LEN + 1),
        Some(LinkError::MalformedMessage(DecodeError::TooLarge {
            len: MAX_LINK_MESSAGE_LEN + 1,
            max: MAX_LINK_MESSAGE_LEN
        }))
    );
    let largest_bucket = (MAX_LINK_MESSAGE_LEN - 49) / 4096 * 4096;
    assert_eq!(open(49 + largest_bucket), Some(LinkError::WrongCode));
    for not_a_bucket in [min + 1, 33 + 600 + 16, 33 + 4096 + 2048 + 16] {
        assert_eq!(open(not_a_bucket), Some(LinkError::MalformedMessage(DecodeError::InvalidValue("link.length"))));
    }
}

/// Messages sealed by hand that the library's sealing never makes: bad
/// padding, a plaintext that is not canonical, a seed of 31 bytes. Each
/// refused with the error of K8, nothing written.
#[test]
fn k8_holds_for_messages_sealed_by_hand() {
    let World { alice, phone, laptop, .. } = world();
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    let plaintext = provisioning_bytes(&alice.to_seed(), &linked.device_list.to_bytes(), vec![], 1);
    let mut bad_padding = pad_row(&plaintext);
    bad_padding[plaintext.len()] = 0x81;
    let mut short_padding = plaintext.clone();
    short_padding.push(0x80);
    short_padding.resize(1024, 0); // a bucket, but not this plaintext's (512)
    let non_canonical = [&plaintext[..], &[0x20, 0x00]].concat(); // linker_device_id 0 written out
    let short_seed = wire::LinkProvisioning {
        user_identity_seed: vec![1; 31],
        device_list: linked.device_list.to_bytes(),
        ..Default::default()
    }
    .encode_to_vec();
    let cases = [
        (bad_padding, LinkError::MalformedMessage(DecodeError::InvalidValue("link.padding"))),
        (short_padding, LinkError::MalformedMessage(DecodeError::InvalidValue("link.padding"))),
        (pad_row(&non_canonical), LinkError::MalformedMessage(DecodeError::Protobuf)),
        (
            pad_row(&short_seed),
            LinkError::MalformedMessage(DecodeError::InvalidLength {
                field: "link.user_identity_seed",
                expected: 32,
                actual: 31,
            }),
        ),
    ];
    let before = rows(&laptop);
    for (k, (padded, expected)) in cases.into_iter().enumerate() {
        let message = seal_padded_by_hand(offer.code(), [0x31; 32], &padded);
        assert_eq!(link_error(laptop.finish_link(&offer, &message, t0())), expected, "case {k}");
    }
    assert_eq!(rows(&laptop), before);
    // The genuine provisioning sealed by hand links.
    let message = seal_padded_by_hand(offer.code(), [0x31; 32], &pad_row(&plaintext));
    laptop.finish_link(&offer, &message, t0()).unwrap();
}

fn many_users(count: usize) -> Vec<SignedDeviceList> {
    let contact = user_key(0xCC);
    let device = random_key();
    (0..count).map(|i| signed(&contact, &format!("user{i:05}"), 1, &[(1, device)])).collect()
}

/// `MAX_LINK_PINNED_USERS` on both sides: a linking device that pinned
/// exactly 10,000 users links, and the new device pins all of them; at
/// 10,001 the linking device refuses (`TooManyUsers`, nothing written);
/// a message carrying 10,001 lists (sealed by hand) is refused by the new
/// device (K8), nothing written.
#[test]
fn the_pinned_users_limit_holds_at_exactly_10000_on_both_devices() {
    let alice = user_key(0xA0);
    let phone = device("alice", 1, 1);
    phone.set_device_list(&signed(&alice, "alice", 1, &[(1, phone.identity_key())])).unwrap();
    let users = many_users(MAX_LINK_PINNED_USERS + 1);
    for list in &users[..MAX_LINK_PINNED_USERS] {
        phone.update_device_list(list).unwrap();
    }
    let laptop = device("alice", 2, 3);
    let offer = laptop.link_offer(t0()).unwrap();
    let linked = phone.link_device(offer.code(), &alice, t0()).unwrap();
    assert!(linked.message.len() <= MAX_LINK_MESSAGE_LEN);

    // 10,001 lists, sealed by hand, to the new device.
    let over = provisioning_bytes(
        &alice.to_seed(),
        &linked.device_list.to_bytes(),
        users.iter().map(SignedDeviceList::to_bytes).collect(),
        1,
    );
    let message = seal_padded_by_hand(offer.code(), [0x32; 32], &pad_row(&over));
    let before = rows(&laptop);
    assert_eq!(
        link_error(laptop.finish_link(&offer, &message, t0())),
        LinkError::MalformedMessage(DecodeError::InvalidValue("link.pinned"))
    );
    assert_eq!(rows(&laptop), before);
    let p = laptop.finish_link(&offer, &linked.message, t0()).unwrap();
    assert_eq!((p.pinned_users, p.newly_pinned), (MAX_LINK_PINNED_USERS, MAX_LINK_PINNED_USERS));

    // One more pinned user on the linking device: refused, nothing written.
    phone.update_device_list(&users[MAX_LINK_PINNED_USERS]).unwrap();
    let before = rows(&phone);
    let tablet = device("alice", 3, 4);
    let e = link_error(phone.link_device(tablet.link_offer(t0()).unwrap().code(), &alice, t0()));
    assert_eq!(
        (e.clone(), e.kind()),
        (
            LinkError::TooManyUsers { count: MAX_LINK_PINNED_USERS + 1, max: MAX_LINK_PINNED_USERS },
            ErrorKind::LimitExceeded
        )
    );
    assert_eq!(rows(&phone), before);
}
