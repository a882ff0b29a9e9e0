//! The `decode_store` target's inputs: rows to put in a store, then calls
//! to make on the device opened from it.
//!
//! ```text
//! input := u8 row_count, row * row_count, call *
//! row   := u8 kind, ...           (see `RowKind`), u8 seal mode (see `Seal`)
//! call  := u8 op, ...             (see `Call`)
//! ```
//!
//! Rows name their place either raw (table and key) or by what they are
//! (the session row or seeds row of one of [`PEERS`], a remembered base
//! key), so that the fuzzer mutates their contents rather than their keys.
//! Every row is sealed under [`STORAGE_KEY`] as the seal mode says.

use samizdat::store::StorageKey;
use samizdat::{address::Address, store::Table};

use crate::{
    input::{Reader, Writer},
    seal::{SEALED_PADDED, SEALED_UNPADDED, Sealer},
};

/// The storage key of every store of the target.
pub const STORAGE_KEY: StorageKey = StorageKey::from_bytes([0x5a; 32]);

/// The peers whose rows and calls the inputs name by index.
pub const PEERS: [(&str, u32); 3] = [("bob", 1), ("carol", 2), ("alice", 1)];

/// The address of peer `index` (modulo the number of peers).
pub fn peer(index: u8) -> Address {
    let (user, device) = PEERS[usize::from(index) % PEERS.len()];
    Address::new(user, device).expect("a valid address")
}

/// The tables, by the byte that names them.
pub fn table(index: u8) -> Table {
    Table::ALL[usize::from(index) % Table::ALL.len()]
}

/// How a row's value reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// Sealed as the library seals (version 2, padded).
    Padded,
    /// Sealed as release 0.1 did (version 1, not padded).
    Unpadded,
    /// Version 2, the value sealed as the padded plaintext itself (its padding is the fuzzer's).
    OwnPadding,
    /// Not sealed: the value is the sealed bytes.
    Raw,
}

impl Seal {
    fn from_byte(byte: u8) -> Self {
        match byte % 4 {
            0 => Self::Padded,
            1 => Self::Unpadded,
            2 => Self::OwnPadding,
            _ => Self::Raw,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::Padded => 0,
            Self::Unpadded => 1,
            Self::OwnPadding => 2,
            Self::Raw => 3,
        }
    }

    /// The value sealed this way, with a nonce made from `counter`.
    pub fn apply(self, sealer: &Sealer, table: Table, key: &[u8], value: &[u8], counter: u32) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        nonce[..4].copy_from_slice(&counter.to_le_bytes());
        match self {
            Self::Padded => sealer.seal(table, key, value, nonce),
            Self::Unpadded => sealer.seal_raw(SEALED_UNPADDED, table, key, value, nonce),
            Self::OwnPadding => sealer.seal_raw(SEALED_PADDED, table, key, value, nonce),
            Self::Raw => value.to_vec(),
        }
    }
}

/// Kinds of rows.
const ROW_RAW: u8 = 0;
const ROW_SESSION: u8 = 1;
const ROW_SEEDS: u8 = 2;
const ROW_BASE_KEY: u8 = 3;

/// One row of an input: where it goes and its (sealed) value.
pub fn read_row(reader: &mut Reader<'_>, sealer: &Sealer, counter: u32) -> (Table, Vec<u8>, Vec<u8>) {
    let (table, key, value) = match reader.u8() % 4 {
        ROW_RAW => {
            let table = table(reader.u8());
            (table, reader.chunk().to_vec(), reader.long_chunk().to_vec())
        }
        ROW_SESSION => {
            // The row's framing (`SessionRow`) is made here: the fuzzer works on the record.
            let peer = peer(reader.u8());
            let record = reader.long_chunk();
            let row = samizdat_proto::storage::SessionRow {
                version: u32::from(reader.u8() != 0xff),
                user_id: peer.user_id().to_owned(),
                device_id: peer.device_id(),
                record: record.to_vec(),
            };
            (Table::Sessions, sealer.row_key(&peer), prost::Message::encode_to_vec(&row))
        }
        ROW_SEEDS => {
            let peer = peer(reader.u8());
            (Table::Sessions, sealer.seeds_key(&peer), reader.long_chunk().to_vec())
        }
        _ => {
            let spk = reader.u32();
            let base_key = reader.array::<32>();
            (Table::PreKeys, sealer.base_key_row(spk, &base_key), reader.long_chunk().to_vec())
        }
    };
    let sealed = Seal::from_byte(reader.u8()).apply(sealer, table, &key, &value, counter);
    (table, key, sealed)
}

/// Writes a row of kind raw.
pub fn write_raw_row(writer: &mut Writer, table: Table, key: &[u8], value: &[u8], seal: Seal) {
    let index = Table::ALL.iter().position(|t| *t == table).expect("a known table");
    writer.u8(ROW_RAW).u8(u8::try_from(index).expect("four tables")).chunk(key).long_chunk(value).u8(seal.to_byte());
}

/// Writes the session row of peer `index` holding `record`.
pub fn write_session_row(writer: &mut Writer, index: u8, record: &[u8]) {
    writer.u8(ROW_SESSION).u8(index).long_chunk(record).u8(0).u8(Seal::Padded.to_byte());
}

/// Writes the seeds row of peer `index`.
pub fn write_seeds_row(writer: &mut Writer, index: u8, seeds: &[u8]) {
    writer.u8(ROW_SEEDS).u8(index).long_chunk(seeds).u8(Seal::Padded.to_byte());
}

/// Writes a remembered base key's lookup row.
pub fn write_base_key_row(writer: &mut Writer, spk: u32, base_key: &[u8; 32], value: &[u8]) {
    writer.u8(ROW_BASE_KEY).u32(spk).bytes(base_key).long_chunk(value).u8(Seal::Padded.to_byte());
}

/// The calls of an input, by their op byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Open the device again over the same store.
    Reopen,
    /// `has_session(peer)`.
    HasSession,
    /// `peer_identity(peer)`.
    PeerIdentity,
    /// `encrypt(peer, plaintext of length n)`.
    Encrypt,
    /// `decrypt(peer, bytes)`, then `commit` unless the flag says not to.
    Decrypt,
    /// `decrypt_batch` of up to 4 messages, then `commit_batch`.
    Batch,
    /// `prekey_bundles(n)`.
    Bundles,
    /// `prekey_counts()`.
    Counts,
    /// `refill_prekeys(threshold, target, now)`, target at most 3.
    Refill,
    /// `rotate_prekeys(now, max_age)`.
    Rotate,
    /// `start_session(bundle bytes)`.
    StartSession,
    /// `trust_identity(peer, key bytes)`.
    Trust,
}

const CALLS: [Call; 12] = [
    Call::Reopen,
    Call::HasSession,
    Call::PeerIdentity,
    Call::Encrypt,
    Call::Decrypt,
    Call::Batch,
    Call::Bundles,
    Call::Counts,
    Call::Refill,
    Call::Rotate,
    Call::StartSession,
    Call::Trust,
];

impl Call {
    /// The call an op byte names.
    pub fn from_byte(byte: u8) -> Self {
        CALLS[usize::from(byte) % CALLS.len()]
    }

    /// The op byte of a call.
    pub fn to_byte(self) -> u8 {
        u8::try_from(CALLS.iter().position(|c| *c == self).expect("every call is listed")).expect("few calls")
    }
}
