//! The store's sealing of rows, written again from PROTOCOL.md 14.3 to 14.5
//! (the library keeps its own `Sealer` private). A target uses it to put
//! rows whose plaintext the fuzzer chose into a store the library then opens
//! as its own, and to read the rows a device wrote.
//!
//! [`self_check`] compares it with the known answers of the protocol and
//! with a store the library made, so that a drift between the two fails
//! loudly instead of making every sealed row look corrupt. The outbox key
//! (PROTOCOL.md 20.3) is derived here as the library's `Sealer::new` does:
//! HKDF-SHA256 of the storage key, salt 32 zero bytes, info
//! `samizdat/v1/store/outbox`; the row key of an outbox entry holds
//! `HMAC-SHA256(outbox key, message id)`.

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use samizdat::store::StorageKey;
use samizdat::{address::Address, store::Table};
use sha2::Sha256;
use std::time::UNIX_EPOCH;

/// `STORE_SEAL_LABEL`, `STORE_ADDRESS_LABEL`, `STORE_BASE_KEY_LABEL`, `STORE_ROW_LABEL` (PROTOCOL.md 3).
const SEAL_LABEL: &[u8] = b"samizdat/v1/store/seal";
const ADDRESS_LABEL: &[u8] = b"samizdat/v1/store/address";
const BASE_KEY_LABEL: &[u8] = b"samizdat/v1/store/base-key";
const ROW_LABEL: &[u8] = b"samizdat/v1/store/row";
/// `STORE_OUTBOX_LABEL` (PROTOCOL.md 20.3).
const OUTBOX_LABEL: &[u8] = b"samizdat/v1/store/outbox";

/// The version byte of a sealed value whose plaintext is padded, and of one
/// written before padding (still read).
pub const SEALED_PADDED: u8 = 2;
/// See [`SEALED_PADDED`].
pub const SEALED_UNPADDED: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The key-check row (table `meta`) and its plaintext (14.6).
pub const KEY_CHECK_ROW: &[u8] = b"key-check";
/// See [`KEY_CHECK_ROW`].
pub const KEY_CHECK_PLAINTEXT: &[u8] = b"samizdat storage key check v1";
/// The identity row (table `identity`), and the previous format's single prekey row.
pub const SINGLE_ROW: &[u8] = b"self";
/// The suffix of a peer's seeds row (14.7).
pub const SEEDS_SUFFIX: &[u8] = b"/seeds";
/// The infix of a peer's outbox entry rows, between the session row's key
/// and the keyed hash of the entry's message id (20.3).
pub const OUTBOX_ENTRY_INFIX: &[u8] = b"/out/";
/// The length of a session row's key (`row_key`, 14.5), and of the keyed
/// hash of an outbox entry's id.
pub const ROW_KEY_LEN: usize = 32;

/// The keys derived from a storage key (those the fuzz targets use).
#[derive(Clone)]
pub struct Sealer {
    seal_key: [u8; 32],
    address_key: [u8; 32],
    base_key_key: [u8; 32],
    outbox_key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

fn hkdf32(ikm: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), ikm).expand(info, &mut out).expect("32 bytes is a valid HKDF output length");
    out
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The size of the padded plaintext of a stored value of `len` bytes
/// (`ROW_BUCKET`, 14.4; the message buckets of section 5, at least 512).
pub fn row_bucket(len: usize) -> usize {
    let needed = len + 1;
    let bucket = if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    };
    bucket.max(512)
}

/// `AAD(table, key)`.
fn associated_data(table: Table, key: &[u8]) -> Vec<u8> {
    let name = table.name().as_bytes();
    let mut ad = ROW_LABEL.to_vec();
    ad.push(u8::try_from(name.len()).expect("table names are short"));
    ad.extend_from_slice(name);
    ad.extend_from_slice(key);
    ad
}

impl Sealer {
    /// The keys of `storage_key` (14.3).
    pub fn new(storage_key: &[u8; 32]) -> Self {
        Self {
            seal_key: hkdf32(storage_key, SEAL_LABEL),
            address_key: hkdf32(storage_key, ADDRESS_LABEL),
            base_key_key: hkdf32(storage_key, BASE_KEY_LABEL),
            outbox_key: hkdf32(storage_key, OUTBOX_LABEL),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.seal_key.into())
    }

    /// `SealRow`: version 2, the plaintext padded to its row bucket.
    pub fn seal(&self, table: Table, key: &[u8], plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let mut padded = plaintext.to_vec();
        padded.push(0x80);
        padded.resize(row_bucket(plaintext.len()), 0);
        self.seal_raw(SEALED_PADDED, table, key, &padded, nonce)
    }

    /// `version || nonce || XChaCha20-Poly1305(inner)`, with `inner` sealed as
    /// it is (a version-1 value, or a version-2 value whose padding the
    /// caller made, right or wrong).
    pub fn seal_raw(&self, version: u8, table: Table, key: &[u8], inner: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let ad = associated_data(table, key);
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: inner, aad: &ad })
            .expect("sealing into a Vec cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(version);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// `OpenRow`: the plaintext, or `None` where the library reports `Corrupt`.
    pub fn open(&self, table: Table, key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if !(version == SEALED_PADDED || version == SEALED_UNPADDED) || rest.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let ad = associated_data(table, key);
        let mut opened = self.cipher().decrypt(&XNonce::from(nonce), Payload { msg: body, aad: &ad }).ok()?;
        if version == SEALED_PADDED {
            let content = opened.iter().rposition(|&b| b != 0)?;
            if opened[content] != 0x80 || opened.len() != row_bucket(content) {
                return None;
            }
            opened.truncate(content);
        }
        Some(opened)
    }

    /// `row_key(peer)` (14.5).
    pub fn row_key(&self, peer: &Address) -> Vec<u8> {
        let user = peer.user_id().as_bytes();
        let len = u32::try_from(user.len()).expect("user ids are short").to_be_bytes();
        hmac(&self.address_key, &[&len, user, &peer.device_id().to_be_bytes()]).to_vec()
    }

    /// The row of a peer's skipped keys' seeds.
    pub fn seeds_key(&self, peer: &Address) -> Vec<u8> {
        [self.row_key(peer).as_slice(), SEEDS_SUFFIX].concat()
    }

    /// The keyed hash of a message id in the row key of its outbox entry:
    /// `HMAC-SHA256(outbox key, id)` (20.3).
    pub fn outbox_id_hash(&self, id: &[u8]) -> [u8; 32] {
        hmac(&self.outbox_key, &[id])
    }

    /// The row of a peer's outbox index in table `outboxes`: `row_key(peer)`.
    pub fn outbox_index_key(&self, peer: &Address) -> Vec<u8> {
        self.row_key(peer)
    }

    /// The row of the outbox entry of message `id` for a peer:
    /// `row_key(peer) || "/out/" || HMAC(outbox key, id)`.
    pub fn outbox_entry_key(&self, peer: &Address, id: &[u8]) -> Vec<u8> {
        [self.row_key(peer).as_slice(), OUTBOX_ENTRY_INFIX, &self.outbox_id_hash(id)].concat()
    }

    /// The lookup row of a remembered pair (14.7): `"base-key/" || H(spk_id, EK_A)`.
    pub fn base_key_row(&self, signed_prekey_id: u32, base_key: &[u8; 32]) -> Vec<u8> {
        let hash = hmac(&self.base_key_key, &[&signed_prekey_id.to_be_bytes(), base_key]);
        [b"base-key/".as_slice(), &hash].concat()
    }
}

/// Checks this sealer against PROTOCOL.md's known answers (14.3, 14.5, 14.7)
/// and against a store the library made: its key-check row must open to
/// `KEY_CHECK_PLAINTEXT`, and a row sealed here must be one the library reads.
///
/// # Panics
/// On any difference.
pub fn self_check() {
    let sealer = Sealer::new(&[7; 32]);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(&sealer.seal_key), "c5311062a04ecc05365c71816d5e547ac6d62ed04bb579094cab8f08ed12a0ee");
    let bob = Address::new("bob", 2).expect("a valid address");
    assert_eq!(hex(&sealer.row_key(&bob)), "43589ae2ce978127618764469ea0ba0fe9fddd5c8244b9c0242085d20123e0fc");
    assert_eq!(
        hex(&sealer.base_key_row(1, &[9; 32])[9..]),
        "a1719a3baeed64d241055959a957c9f5d546251954469af313c20b4b3bc5a0d2"
    );
    // The library's own sealing (hazmat) gives the same bytes, and each opens the other's.
    let nonce = [5u8; 24];
    for (table, len) in [(Table::Sessions, 0usize), (Table::PreKeys, 511), (Table::Identity, 4_096)] {
        let plaintext = vec![0xc3; len];
        let ours = sealer.seal(table, b"row", &plaintext, nonce);
        assert_eq!(ours, samizdat::hazmat::seal_row(&[7; 32], table, b"row", &plaintext, &nonce));
        assert_eq!(sealer.open(table, b"row", &ours).as_deref(), Some(plaintext.as_slice()));
        let opened = samizdat::hazmat::open_row(&[7; 32], table, b"row", &ours).expect("the library opens it");
        assert_eq!(opened.as_slice(), plaintext.as_slice());
    }
    assert_eq!(sealer.row_key(&bob), samizdat::hazmat::peer_row_key(&[7; 32], &bob));
    let storage_key = [0x42; 32];
    let alice = Address::new("alice", 1).expect("a valid address");
    let backend = std::sync::Arc::new(samizdat::store::MemoryBackend::new());
    let device = samizdat::device::Device::create_in(
        backend.clone(),
        &StorageKey::from_bytes(storage_key),
        alice.clone(),
        UNIX_EPOCH,
    )
    .expect("a device in an empty store");
    let sealer = Sealer::new(&storage_key);
    let rows = backend.snapshot();
    let check = rows.get(&(Table::Meta, KEY_CHECK_ROW.to_vec())).expect("a key-check row");
    assert_eq!(sealer.open(Table::Meta, KEY_CHECK_ROW, check).as_deref(), Some(KEY_CHECK_PLAINTEXT));
    // A trust decision written by the library, read back here; and one
    // sealed here, read by the library.
    let identity = device.identity_key();
    device.trust_identity(&bob, identity).expect("a trust decision");
    let row = sealer.row_key(&bob);
    let sealed = backend.snapshot().get(&(Table::Sessions, row.clone())).cloned().expect("a session row");
    let plaintext = sealer.open(Table::Sessions, &row, &sealed).expect("the library's row opens here");
    let resealed = sealer.seal(Table::Sessions, &row, &plaintext, [1; 24]);
    use samizdat::store::Backend as _;
    backend
        .apply(&[samizdat::store::Write {
            table: Table::Sessions,
            key: row,
            value: Some(resealed),
            expected: samizdat::store::Expected::Any,
        }])
        .expect("a memory write");
    assert_eq!(device.peer_identity(&bob).expect("the row sealed here opens"), Some(identity));
    // A message kept in the outbox (20.3): its index and entry rows are
    // where the keys derived here say, and open here.
    let peer = samizdat::device::Device::create_in(
        samizdat::store::MemoryBackend::new(),
        &StorageKey::from_bytes([0x43; 32]),
        bob.clone(),
        UNIX_EPOCH,
    )
    .expect("a second device");
    device.trust_identity(&bob, peer.identity_key()).expect("a trust decision");
    device.start_session(&peer.prekey_bundle().expect("a bundle")).expect("a session");
    let wire = device.encrypt_kept(&bob, b"kept", UNIX_EPOCH).expect("a kept message");
    let id = samizdat::heal::message_id(&wire);
    let rows = backend.snapshot();
    for (table, key) in
        [(Table::Outboxes, sealer.outbox_index_key(&bob)), (Table::Sessions, sealer.outbox_entry_key(&bob, &id))]
    {
        let sealed = rows.get(&(table, key.clone())).expect("an outbox row where this sealer says");
        assert!(sealer.open(table, &key, sealed).is_some(), "an outbox row that does not open here");
    }
}
