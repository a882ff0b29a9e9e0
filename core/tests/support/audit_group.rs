//! Tools of the group audit (`core/tests/group_audit.rs`), written from the
//! protocol's description and not from the library's code paths:
//!
//! - [`StoreKeys`]: the sealing of rows (PROTOCOL.md 14) with a device's
//!   storage key, to read what a seized phone gives away and to rewrite a
//!   device's own rows as a modified (hostile) client would;
//! - [`Forger`]: group messages (PROTOCOL.md 18.4) made and signed by hand,
//!   for a member that signs what it likes (any iteration, any body, two
//!   different messages at one iteration);
//! - [`Hooked`]: a backend over a shared `MemoryBackend` that counts what is
//!   read and written, can refuse writes, and can run another handle's call
//!   just before a write (an interleaving, deterministically);
//! - [`Net`]: devices with sessions between every two of them.

use samizdat::store::StorageKey;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::time::UNIX_EPOCH;

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use prost::Message as _;
use samizdat::{
    address::Address,
    device::{Device, DeviceError, GroupError, GroupSend, MessageKind, Outgoing},
    rand_core::Rng,
    store::{Backend, Expected, MemoryBackend, Row, StoreError, Table, Write},
};
use samizdat_proto::wire as pb;
use sha2::Sha256;

/// Kinds of rows of the groups table (PROTOCOL.md 18.9): the first byte
/// hashed into a row's key.
pub const ROSTER: u8 = 1;
pub const OWN_CHAIN: u8 = 2;
pub const MEMBER: u8 = 3;

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).unwrap();
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The padded length of `len` bytes (PROTOCOL.md 5.1).
pub fn padded_len(len: usize) -> usize {
    let needed = len + 1;
    if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    }
}

/// `plaintext || marker || zeros` up to its bucket (at least `min`).
pub fn pad(plaintext: &[u8], marker: u8, min: usize) -> Vec<u8> {
    let mut out = plaintext.to_vec();
    out.push(marker);
    out.resize(padded_len(plaintext.len()).max(min), 0);
    out
}

fn unpad(padded: &[u8]) -> Vec<u8> {
    let end = padded.iter().rposition(|&b| b != 0).unwrap();
    assert_eq!(padded[end], 0x80, "a stored value ends with 0x80");
    padded[..end].to_vec()
}

/// The keys a storage key gives (PROTOCOL.md 14): what whoever holds the
/// phone and its storage key (a seized, unlocked phone; the device's own
/// modified client) can do with the rows.
pub struct StoreKeys {
    seal: [u8; 32],
    address: [u8; 32],
    group: [u8; 32],
}

impl StoreKeys {
    pub fn new(storage_key: &[u8; 32]) -> Self {
        Self {
            seal: hkdf32(&[0; 32], storage_key, b"samizdat/v1/store/seal"),
            address: hkdf32(&[0; 32], storage_key, b"samizdat/v1/store/address"),
            group: hkdf32(&[0; 32], storage_key, b"samizdat/v1/store/group"),
        }
    }

    /// The key of a row of the groups table.
    pub fn group_row(&self, kind: u8, group_id: &[u8], member: Option<&Address>) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = vec![vec![kind, u8::try_from(group_id.len()).unwrap()], group_id.to_vec()];
        if let Some(member) = member {
            let user = member.user_id().as_bytes();
            parts.push(u32::try_from(user.len()).unwrap().to_be_bytes().to_vec());
            parts.push(user.to_vec());
            parts.push(member.device_id().to_be_bytes().to_vec());
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        hmac(&self.group, &refs).to_vec()
    }

    /// The key of a peer's session row.
    pub fn session_row(&self, peer: &Address) -> Vec<u8> {
        let user = peer.user_id().as_bytes();
        hmac(&self.address, &[&u32::try_from(user.len()).unwrap().to_be_bytes(), user, &peer.device_id().to_be_bytes()])
            .to_vec()
    }

    fn ad(table: Table, key: &[u8]) -> Vec<u8> {
        let name = table.name().as_bytes();
        [b"samizdat/v1/store/row".as_slice(), &[u8::try_from(name.len()).unwrap()], name, key].concat()
    }

    /// Opens a sealed row (panics if it does not open there).
    pub fn open(&self, table: Table, key: &[u8], sealed: &[u8]) -> Vec<u8> {
        assert_eq!(sealed[0], 2, "a sealed row of this release");
        let cipher = XChaCha20Poly1305::new(&self.seal.into());
        let nonce: [u8; 24] = sealed[1..25].try_into().unwrap();
        let ad = Self::ad(table, key);
        let padded = cipher.decrypt(&XNonce::from(nonce), Payload { msg: &sealed[25..], aad: &ad }).unwrap();
        unpad(&padded)
    }

    /// Seals `value` for the row `key` of `table`.
    pub fn seal(&self, table: Table, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        samizdat::os_rng().fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(&self.seal.into());
        let ad = Self::ad(table, key);
        let padded = pad(value, 0x80, 512);
        let sealed = cipher.encrypt(&XNonce::from(nonce), Payload { msg: &padded, aad: &ad }).unwrap();
        [&[2u8][..], &nonce, &sealed].concat()
    }

    /// Reads and parses a row of the groups table, if it exists.
    pub fn read<M: prost::Message + Default>(&self, backend: &impl Backend, key: &[u8]) -> Option<M> {
        let sealed = backend.get(Table::Groups, key).unwrap()?;
        Some(M::decode(self.open(Table::Groups, key, &sealed).as_slice()).unwrap())
    }

    /// Rewrites a row of the groups table, unconditionally.
    pub fn write<M: prost::Message>(&self, backend: &impl Backend, key: &[u8], row: &M) {
        let value = self.seal(Table::Groups, key, &row.encode_to_vec());
        backend
            .apply(&[Write { table: Table::Groups, key: key.to_vec(), value: Some(value), expected: Expected::Any }])
            .unwrap();
    }

    /// Every row of every table, opened.
    pub fn open_all(&self, backend: &impl Backend) -> Vec<(Table, Vec<u8>)> {
        Table::ALL
            .iter()
            .flat_map(|&table| backend.scan(table).unwrap().into_iter().map(move |(key, sealed)| (table, key, sealed)))
            .map(|(table, key, sealed)| (table, self.open(table, &key, &sealed)))
            .collect()
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One step of a chain (PROTOCOL.md 18.3): `(seed, next chain key)`.
pub fn chain_step(chain_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (hmac(chain_key, &[&[0x01]]), hmac(chain_key, &[&[0x02]]))
}

/// The chain key `steps` iterations after `chain_key`.
pub fn chain_ahead(chain_key: &[u8; 32], steps: u32) -> [u8; 32] {
    let mut key = *chain_key;
    for _ in 0..steps {
        key = chain_step(&key).1;
    }
    key
}

/// The associated data of a group message (PROTOCOL.md 18.4).
pub fn group_ad(group_id: &[u8], sender: &Address, chain_id: u32, iteration: u32, salt: &[u8; 24]) -> Vec<u8> {
    let user = sender.user_id().as_bytes();
    [
        b"samizdat/v1/group/message".as_slice(),
        &[u8::try_from(group_id.len()).unwrap()],
        group_id,
        &u32::try_from(user.len()).unwrap().to_be_bytes(),
        user,
        &sender.device_id().to_be_bytes(),
        &chain_id.to_be_bytes(),
        &iteration.to_be_bytes(),
        salt,
    ]
    .concat()
}

/// The cipher and nonce of a message key seed and salt.
pub fn group_cipher(seed: &[u8; 32], salt: &[u8; 24]) -> (ChaCha20Poly1305, Nonce) {
    let mut okm = [0u8; 44];
    hkdf::Hkdf::<Sha256>::new(Some(salt), seed).expand(b"samizdat/v1/group/message-key", &mut okm).unwrap();
    let key: [u8; 32] = okm[..32].try_into().unwrap();
    let nonce: [u8; 12] = okm[32..].try_into().unwrap();
    (ChaCha20Poly1305::new(&key.into()), Nonce::from(nonce))
}

/// Encodes a group message for the wire: version byte, then the envelope.
pub fn encode_group(message: pb::GroupMessage) -> Vec<u8> {
    let envelope = pb::Envelope { body: Some(pb::envelope::Body::Group(message)) };
    [vec![1u8], envelope.encode_to_vec()].concat()
}

/// Decodes the group message of wire bytes.
pub fn decode_group(bytes: &[u8]) -> pb::GroupMessage {
    assert_eq!(bytes[0], 1);
    match pb::Envelope::decode(&bytes[1..]).unwrap().body {
        Some(pb::envelope::Body::Group(message)) => message,
        other => panic!("not a group message: {other:?}"),
    }
}

/// Opens the body of a group message with a seed (a key the holder of a
/// chain key, or a seized store, can compute); `None` if it does not open.
pub fn open_group(bytes: &[u8], sender: &Address, seed: &[u8; 32]) -> Option<Vec<u8>> {
    let message = decode_group(bytes);
    let salt: [u8; 24] = message.salt.as_slice().try_into().unwrap();
    let ad = group_ad(&message.group_id, sender, message.chain_id, message.iteration, &salt);
    let (cipher, nonce) = group_cipher(seed, &salt);
    let padded = cipher.decrypt(&nonce, Payload { msg: &message.body, aad: &ad }).ok()?;
    let end = padded.iter().rposition(|&b| b != 0)?;
    Some(padded[..end].to_vec())
}

/// The keystream of a group message's body: body XOR its padded plaintext
/// (the first `len` bytes). Two equal keystreams are a key and nonce used twice.
pub fn group_keystream(bytes: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let body = decode_group(bytes).body;
    let padded = pad(plaintext, 0x80, 0);
    body.iter().zip(&padded).map(|(b, p)| b ^ p).collect()
}

/// A chain its holder signs with: makes any message on it, at any
/// iteration, with any body.
pub struct Forger {
    pub group_id: Vec<u8>,
    pub sender: Address,
    pub chain_id: u32,
    /// The chain key at `base`.
    pub chain_key: [u8; 32],
    pub base: u32,
    pub signing: SigningKey,
}

impl Forger {
    /// The message at `iteration` (≥ `base`) with this salt and plaintext,
    /// signed, and its seed.
    pub fn message(&self, iteration: u32, salt: [u8; 24], plaintext: &[u8]) -> Vec<u8> {
        self.message_with_marker(iteration, salt, plaintext, 0x80)
    }

    /// As [`Self::message`], the plaintext padded after the end marker
    /// `marker` (0x80 for the app's content).
    pub fn message_with_marker(&self, iteration: u32, salt: [u8; 24], plaintext: &[u8], marker: u8) -> Vec<u8> {
        let key = chain_ahead(&self.chain_key, iteration - self.base);
        let (seed, _) = chain_step(&key);
        let ad = group_ad(&self.group_id, &self.sender, self.chain_id, iteration, &salt);
        let (cipher, nonce) = group_cipher(&seed, &salt);
        let body = cipher.encrypt(&nonce, Payload { msg: &pad(plaintext, marker, 0), aad: &ad }).unwrap();
        self.signed(pb::GroupMessage {
            group_id: self.group_id.clone(),
            chain_id: self.chain_id,
            iteration,
            salt: salt.to_vec(),
            body,
            signature: Vec::new(),
        })
    }

    /// Signs `message` as it is (its body need not open) and encodes it.
    pub fn signed(&self, mut message: pb::GroupMessage) -> Vec<u8> {
        let salt: [u8; 24] = message.salt.as_slice().try_into().unwrap();
        let ad = group_ad(&message.group_id, &self.sender, message.chain_id, message.iteration, &salt);
        message.signature = self.signing.sign(&[ad.as_slice(), &message.body].concat()).to_bytes().to_vec();
        encode_group(message)
    }
}

/// A backend over a shared store that counts what it reads and writes, can
/// refuse the next writes, and can run a closure (another handle's call)
/// just before its next write.
pub struct Hooked {
    pub store: Arc<MemoryBackend>,
    pub bytes_read: AtomicUsize,
    pub rows_read: AtomicUsize,
    pub bytes_written: AtomicUsize,
    pub rows_written: AtomicUsize,
    pub fail_next_applies: AtomicUsize,
    before_apply: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Hooked {
    pub fn new(store: Arc<MemoryBackend>) -> Self {
        Self {
            store,
            bytes_read: AtomicUsize::new(0),
            rows_read: AtomicUsize::new(0),
            bytes_written: AtomicUsize::new(0),
            rows_written: AtomicUsize::new(0),
            fail_next_applies: AtomicUsize::new(0),
            before_apply: Mutex::new(None),
        }
    }

    /// Runs `hook` once, just before the next write reaches the store.
    pub fn before_next_apply(&self, hook: impl FnOnce() + Send + 'static) {
        *self.before_apply.lock().unwrap() = Some(Box::new(hook));
    }

    pub fn hook_pending(&self) -> bool {
        self.before_apply.lock().unwrap().is_some()
    }

    pub fn reset_counts(&self) {
        for counter in [&self.bytes_read, &self.rows_read, &self.bytes_written, &self.rows_written] {
            counter.store(0, Ordering::SeqCst);
        }
    }

    /// (rows read, bytes read, rows written, bytes written) since the last reset.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.rows_read.load(Ordering::SeqCst),
            self.bytes_read.load(Ordering::SeqCst),
            self.rows_written.load(Ordering::SeqCst),
            self.bytes_written.load(Ordering::SeqCst),
        )
    }
}

impl Backend for Hooked {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.store.get(table, key)?;
        self.rows_read.fetch_add(1, Ordering::SeqCst);
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
        if self.fail_next_applies.load(Ordering::SeqCst) > 0 {
            self.fail_next_applies.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Io(std::io::Error::other("injected failure")));
        }
        self.store.apply(writes)?;
        // A row rewritten with the bytes it holds (the guard of every batch,
        // PROTOCOL.md 14.12) writes nothing: not counted.
        let written: Vec<&Write> = writes
            .iter()
            .filter(|w| !matches!((&w.value, &w.expected), (Some(v), Expected::Value(held)) if v == held))
            .collect();
        self.rows_written.fetch_add(written.len(), Ordering::SeqCst);
        self.bytes_written
            .fetch_add(written.iter().map(|w| w.value.as_ref().map_or(0, Vec::len)).sum(), Ordering::SeqCst);
        Ok(())
    }
}

/// What a delivery gave the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Group(Vec<u8>),
    Direct(Vec<u8>),
    Control(Option<Outgoing>),
}

pub fn addr(i: usize) -> Address {
    Address::new(format!("m{i}"), 1).unwrap()
}

pub fn storage_key(i: usize) -> [u8; 32] {
    [u8::try_from(i + 1).unwrap(); 32]
}

/// Devices `m0`, `m1`, ... each on its own shared store, with sessions
/// between every two of them.
pub struct Net {
    pub stores: Vec<Arc<MemoryBackend>>,
    pub devices: Vec<Device<Hooked>>,
}

impl Net {
    pub fn new(n: usize) -> Self {
        let stores: Vec<_> = (0..n).map(|_| Arc::new(MemoryBackend::new())).collect();
        let devices = (0..n)
            .map(|i| {
                Device::create_in(
                    Hooked::new(stores[i].clone()),
                    &StorageKey::from_bytes(storage_key(i)),
                    addr(i),
                    UNIX_EPOCH,
                )
                .unwrap()
            })
            .collect();
        let net = Self { stores, devices };
        for i in 0..n {
            for j in i + 1..n {
                net.connect(i, j);
            }
        }
        net
    }

    pub fn connect(&self, i: usize, j: usize) {
        let (a, b) = (&self.devices[i], &self.devices[j]);
        a.start_session(&b.prekey_bundle().unwrap()).unwrap();
        let hello = a.encrypt(b.address(), b"hello").unwrap();
        b.commit(b.decrypt(a.address(), &hello).unwrap()).unwrap();
        let back = b.encrypt(a.address(), b"hello back").unwrap();
        a.commit(a.decrypt(b.address(), &back).unwrap()).unwrap();
    }

    pub fn dev(&self, i: usize) -> &Device<Hooked> {
        &self.devices[i]
    }

    /// Another handle on device `i`'s store.
    pub fn second_handle(&self, i: usize) -> Device<Hooked> {
        Device::open_in(Hooked::new(self.stores[i].clone()), &StorageKey::from_bytes(storage_key(i))).unwrap()
    }

    pub fn keys(&self, i: usize) -> StoreKeys {
        StoreKeys::new(&storage_key(i))
    }

    /// Every device of `members` creates `group` with the others.
    pub fn create(&self, group: &[u8], members: &[usize]) {
        for &i in members {
            let others: Vec<Address> = members.iter().filter(|&&j| j != i).map(|&j| addr(j)).collect();
            self.devices[i].create_group(group, &others).unwrap();
        }
    }

    pub fn receive(&self, from: usize, to: usize, bytes: &[u8]) -> Result<Got, DeviceError> {
        let device = &self.devices[to];
        let pending = device.decrypt(&addr(from), bytes)?;
        let kind = pending.kind();
        let plaintext = pending.plaintext().to_vec();
        let mut sent = device.commit(pending)?;
        assert!(sent.len() <= 1, "a group commit returns at most one message");
        let answer = sent.pop();
        Ok(match kind {
            MessageKind::Group => Got::Group(plaintext),
            MessageKind::Direct => Got::Direct(plaintext),
            _ => Got::Control(answer),
        })
    }

    pub fn index(&self, address: &Address) -> usize {
        self.devices.iter().position(|d| d.address() == address).unwrap()
    }

    /// Delivers a send's distributions, each to its recipient.
    pub fn distribute(&self, from: usize, sent: &GroupSend) {
        for outgoing in &sent.distributions {
            let to = self.index(&outgoing.to);
            assert_eq!(self.receive(from, to, &outgoing.message).unwrap(), Got::Control(None));
        }
    }

    /// `from` sends `text`; its distributions are delivered.
    pub fn send(&self, from: usize, group: &[u8], text: &[u8]) -> GroupSend {
        let sent = self.devices[from].group_encrypt(group, text).unwrap();
        self.distribute(from, &sent);
        sent
    }

    /// Device `i`'s own chain in `group`, as its store holds it.
    pub fn own_chain(&self, i: usize, group: &[u8]) -> Option<samizdat_proto::storage::OwnChain> {
        let keys = self.keys(i);
        let row: samizdat_proto::storage::OwnChainRow =
            keys.read(self.dev(i).backend(), &keys.group_row(OWN_CHAIN, group, None))?;
        row.chain
    }

    /// The chains device `i` keeps of `member` in `group`.
    pub fn member_row(
        &self,
        i: usize,
        group: &[u8],
        member: usize,
    ) -> Option<samizdat_proto::storage::SenderChainsRow> {
        let keys = self.keys(i);
        keys.read(self.dev(i).backend(), &keys.group_row(MEMBER, group, Some(&addr(member))))
    }

    /// A forger on device `i`'s current own chain in `group` (what its
    /// owner, or a seized phone, holds).
    pub fn forger(&self, i: usize, group: &[u8]) -> Forger {
        let chain = self.own_chain(i, group).expect("an own chain");
        Forger {
            group_id: group.to_vec(),
            sender: addr(i),
            chain_id: chain.chain_id,
            chain_key: chain.chain_key.as_slice().try_into().unwrap(),
            base: chain.iteration,
            signing: SigningKey::from_bytes(&chain.signing_seed.as_slice().try_into().unwrap()),
        }
    }

    /// Rewrites device `i`'s own chain in `group` (a modified client) and
    /// marks every member as lacking it, so that its next `group_encrypt`
    /// distributes it as it now is.
    pub fn set_own_chain(&self, i: usize, group: &[u8], chain: samizdat_proto::storage::OwnChain) {
        let keys = self.keys(i);
        let backend = self.dev(i).backend();
        let own_key = keys.group_row(OWN_CHAIN, group, None);
        let mut own: samizdat_proto::storage::OwnChainRow = keys.read(backend, &own_key).unwrap();
        own.chain = Some(chain);
        own.distributed = false;
        keys.write(backend, &own_key, &own);
        let roster_key = keys.group_row(ROSTER, group, None);
        let mut roster: samizdat_proto::storage::GroupRow = keys.read(backend, &roster_key).unwrap();
        for member in &mut roster.members {
            member.has_chain = false;
            member.given_at = 0;
            member.answered = 0;
        }
        keys.write(backend, &roster_key, &roster);
    }
}

/// The request of a group message refused as `MissingChain` (`None`: it was
/// refused otherwise, or decrypted).
pub fn missing_chain(result: Result<Got, DeviceError>) -> Option<Option<Vec<u8>>> {
    match result {
        Err(DeviceError::Group(GroupError::MissingChain { request, .. })) => Some(request),
        _ => None,
    }
}

/// Every row of every table of a store, as stored (sealed).
pub fn all_rows(store: &MemoryBackend) -> Vec<Vec<Row>> {
    Table::ALL.iter().map(|&t| store.scan(t).unwrap()).collect()
}

/// Schedules the floor and generation audits share.
impl Net {
    /// How many of `messages`, delivered again from `from` to `to`, decrypt.
    pub fn reopened(&self, from: usize, to: usize, messages: &[Vec<u8>]) -> usize {
        messages.iter().filter(|m| matches!(self.receive(from, to, m), Ok(Got::Group(_)))).count()
    }

    /// `from` sends `text` in `group` and `to` reads it (distributions
    /// delivered): the group message.
    pub fn send_read(&self, group: &[u8], from: usize, to: usize, text: &[u8]) -> Vec<u8> {
        let sent = self.send(from, group, text);
        assert_eq!(self.receive(from, to, &sent.message).unwrap(), Got::Group(text.to_vec()));
        sent.message
    }

    /// `from` sends `text` in `group`; the server holds its distribution to
    /// `to` (returned) and delivers the group message first: `to` asks for
    /// the chain, `from` answers, the answer is delivered, and the message
    /// then decrypts. The held distribution is a second copy of the chain,
    /// which the server can deliver whenever it likes. Distributions to
    /// others are delivered. Returns (the held copy, the group message).
    pub fn send_holding_distribution(&self, group: &[u8], from: usize, to: usize, text: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let sent = self.dev(from).group_encrypt(group, text).unwrap();
        let mut held = None;
        for outgoing in &sent.distributions {
            if outgoing.to == addr(to) {
                held = Some(outgoing.message.clone());
            } else {
                self.receive(from, self.index(&outgoing.to), &outgoing.message).unwrap();
            }
        }
        let request = missing_chain(self.receive(from, to, &sent.message)).unwrap().expect("a request");
        let Got::Control(Some(answer)) = self.receive(to, from, &request).unwrap() else { panic!("no answer") };
        assert_eq!(self.receive(from, to, &answer.message).unwrap(), Got::Control(None));
        assert_eq!(self.receive(from, to, &sent.message).unwrap(), Got::Group(text.to_vec()));
        (held.expect("a distribution to hold"), sent.message)
    }

    /// Device `i`'s own-chain row of `group`, as its store holds it.
    pub fn own_row(&self, group: &[u8], i: usize) -> samizdat_proto::storage::OwnChainRow {
        let keys = self.keys(i);
        keys.read(self.dev(i).backend(), &keys.group_row(OWN_CHAIN, group, None)).unwrap()
    }
}
