//! Shared pieces of the benchmarks (`benches/compare.rs`, run by `cargo xtask bench`):
//!
//! - the **floor** of every measured operation: the primitives it must perform, written down as
//!   explicit compositions ([`floors`]) of primitives measured in the same run ([`primitives`]);
//! - the rows of the report ([`rows`]) and its targets ([`targets`]);
//! - session setups for samizdat ([`Pair`], [`DeviceSetup`]) and vodozemac ([`VzPair`]), group
//!   setups ([`GroupPair`], [`GroupScale`], [`VzGroupScale`]);
//! - the figures that are computed, not timed ([`Figures`]: serialized sizes, wire overhead);
//! - [`write_meta`], the tab-separated file that hands all of it to `cargo xtask bench`.
//!
//! The compositions follow `core/src/ratchet/*.rs` and `core/src/handshake/pqxdh.rs`:
//!
//! - chain step: `CK -> (HMAC(CK, 0x01), HMAC(CK, 0x02))`, two HMAC-SHA256;
//! - message key: HKDF-SHA256(salt 0^32, seed, "samizdat/v1/ratchet/message-key") to 44 bytes
//!   (ChaCha20-Poly1305 key and nonce);
//! - header: 41 bytes `0x01 || DHs || PN || N`, XChaCha20-Poly1305 under the chain's header key,
//!   associated data the session AD (86 bytes);
//! - body: the padded plaintext, ChaCha20-Poly1305, associated data `AD || encrypted header`
//!   (86 + 81 = 167 bytes);
//! - DH ratchet step (receiver side, both halves as in Signal's `DHRatchetHE`): X25519 with the
//!   new `DHr`, root step HKDF-SHA256 to 96 bytes, then a fresh `DHs` (key generation), X25519 and
//!   a second root step;
//! - PQXDH: four X25519 agreements (one-time prekey present), ML-KEM-1024 encapsulation or
//!   decapsulation, SHA-256 of the 3,334-byte transcript (addresses `alice` and `bob`), HKDF-SHA256 of the 192-byte input to 96
//!   bytes; the initiator then runs `RatchetInitAliceHE` (key generation, X25519, root step);
//! - group message (`core/src/group/`, PROTOCOL.md 18.4, 18.5): the chain step, the message key
//!   (HKDF-SHA256 salted by the message's 24-byte salt, to 44 bytes), the body (padded plaintext,
//!   ChaCha20-Poly1305, associated data of [`GROUP_AD_LEN`] bytes), and an Ed25519 signature of
//!   the associated data and the body ([`group_signed_len`]), verified strictly on receipt.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use samizdat::{
    address::Address,
    device::{Device, GroupSend, MessageKind},
    keys::IdentityKeyPair,
    prekeys::{PreKeyBundle, PreKeySet},
    session::SessionRecord,
    store::{Backend, Expected, MemoryBackend, Table, Write},
    wire::{Message, RatchetMessage},
};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};

/// Payload sizes of every per-message measurement.
pub const PAYLOAD_SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// Messages in one batch of `decrypt_batch` + `commit_batch`.
pub const BATCH: usize = 1000;
const BATCH_U32: u32 = 1000;
/// Length of the session's associated data: `"samizdat/v1/session-ad"` (22) `|| IK_A || IK_B`.
pub const SESSION_AD_LEN: usize = 22 + 64;
/// Length of a header in the clear.
pub const HEADER_LEN: usize = 41;
/// Length of the body's associated data: session AD `||` encrypted header.
pub const BODY_AD_LEN: usize = SESSION_AD_LEN + samizdat::ratchet::ENCRYPTED_HEADER_LEN;
/// Length of the PQXDH transcript with a one-time prekey (see `Transcript::to_bytes`).
/// Ends with both addresses, `u32(len) || user id || u32(device)`: `alice` and `bob` here.
pub const TRANSCRIPT_LEN: usize =
    32 + 32 + 4 + 32 + (1 + 4 + 32) + (1 + 4 + 1568) + 32 + 1568 + (4 + 5 + 4) + (4 + 3 + 4);
/// Length of the PQXDH key material with a one-time prekey: `0xFF^32 || DH1..DH4 || SS`.
pub const PQXDH_IKM_LEN: usize = 32 + 4 * 32 + 32;
/// Message of the signed-prekey signature: label (32) || id (4) || X25519 key (32).
pub const SPK_SIGNED_LEN: usize = 32 + 4 + 32;
/// Message of the ML-KEM prekey signature: label (37) || id (4) || ML-KEM-1024 key (1568).
pub const PQ_SIGNED_LEN: usize = 37 + 4 + 1568;
/// Length of the associated data of a sealed store row (label, table name, 32-byte row key).
pub const ROW_AD_LEN: usize = 21 + 1 + 8 + 32;

/// The padded length of an `n`-byte plaintext (`core/src/padding.rs`): 64 up to 63 bytes, then
/// the next power of two of `n + 1` up to 4096, then the next multiple of 4096.
pub fn padded_len(n: usize) -> usize {
    let needed = n + 1;
    if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    }
}

/// True when the benchmark binary runs for measurements (`cargo bench`), false under
/// `cargo test --all-targets` (criterion's test mode: each routine runs once).
pub fn bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

// ---------------------------------------------------------------- primitives

/// Criterion ids of the primitives, with what each one measures.
pub mod prim {
    /// X25519 scalar multiplication with a peer's public key.
    pub const X25519_DH: &str = "floor/x25519_dh";
    /// A fresh X25519 key pair (random scalar, base-point multiplication).
    pub const X25519_KEYGEN: &str = "floor/x25519_keygen";
    /// An Ed25519 public key to its X25519 form (decompression, Montgomery map).
    pub const ED_TO_X: &str = "floor/ed25519_to_x25519";
    /// Ed25519 signature.
    pub const ED_SIGN: &str = "floor/ed25519_sign";
    /// Ed25519 strict verification of the 68-byte signed-prekey message.
    pub fn ed_verify(len: usize) -> String {
        format!("floor/ed25519_verify/{len}")
    }
    /// ML-KEM-1024 key generation.
    pub const MLKEM_KEYGEN: &str = "floor/mlkem1024_keygen";
    /// ML-KEM-1024 encapsulation.
    pub const MLKEM_ENCAPS: &str = "floor/mlkem1024_encaps";
    /// ML-KEM-1024 decapsulation.
    pub const MLKEM_DECAPS: &str = "floor/mlkem1024_decaps";
    /// ML-KEM-1024 encapsulation-key check (FIPS 203 modulus check).
    pub const MLKEM_EK_CHECK: &str = "floor/mlkem1024_ek_check";
    /// HMAC-SHA256 with a 32-byte key over one byte (a chain step half).
    pub const HMAC: &str = "floor/hmac_sha256";
    /// HKDF-SHA256 extract and expand to 44 bytes (message key and nonce).
    pub const HKDF_44: &str = "floor/hkdf_sha256/44";
    /// HKDF-SHA256 extract and expand to 96 bytes (root step).
    pub const HKDF_96: &str = "floor/hkdf_sha256/96";
    /// HKDF-SHA256 of the 192-byte PQXDH key material to 96 bytes.
    pub const HKDF_PQXDH: &str = "floor/hkdf_sha256_pqxdh/96";
    /// SHA-256 of the PQXDH transcript.
    pub const SHA256_TRANSCRIPT: &str = "floor/sha256_transcript";
    /// ChaCha20-Poly1305 seal (key setup included) of `len` bytes, 167-byte AD.
    pub fn chacha_seal(len: usize) -> String {
        format!("floor/chacha20poly1305_seal/{len}")
    }
    /// ChaCha20-Poly1305 open of `len` bytes, 167-byte AD.
    pub fn chacha_open(len: usize) -> String {
        format!("floor/chacha20poly1305_open/{len}")
    }
    /// XChaCha20-Poly1305 seal of `len` bytes (41: a header with the 86-byte session AD; other
    /// lengths: a store row with its 62-byte AD).
    pub fn xchacha_seal(len: usize) -> String {
        format!("floor/xchacha20poly1305_seal/{len}")
    }
    /// XChaCha20-Poly1305 open of `len` bytes.
    pub fn xchacha_open(len: usize) -> String {
        format!("floor/xchacha20poly1305_open/{len}")
    }
    /// XChaCha20-Poly1305 open of a 41-byte header under the wrong key (a failed trial).
    pub const XCHACHA_OPEN_FAIL: &str = "floor/xchacha20poly1305_open_fail/41";
    /// Ed25519 signature of `len` bytes: what a group message's signature covers (its
    /// associated data and body, [`super::group_signed_len`]).
    pub fn ed_sign_group(len: usize) -> String {
        format!("floor/ed25519_sign_group/{len}")
    }
    /// ChaCha20-Poly1305 seal (key setup included) of a `len`-byte group body, with a group
    /// message's associated data ([`super::GROUP_AD_LEN`] bytes).
    pub fn chacha_seal_group(len: usize) -> String {
        format!("floor/chacha20poly1305_seal_group/{len}")
    }
    /// ChaCha20-Poly1305 open of a `len`-byte group body.
    pub fn chacha_open_group(len: usize) -> String {
        format!("floor/chacha20poly1305_open_group/{len}")
    }
}

/// Every primitive measured for the floor, as `(criterion id, description)`, at the lengths of
/// `figures` (the store rows).
pub fn primitives(figures: &Figures) -> Vec<(String, String)> {
    let (row_len, session_len) = (figures.row_len, figures.session_len);
    let mut out = vec![
        (prim::X25519_DH.to_owned(), "X25519 agreement".to_owned()),
        (prim::X25519_KEYGEN.to_owned(), "X25519 key generation (base-point multiplication)".to_owned()),
        (prim::ED_TO_X.to_owned(), "Ed25519 public key to X25519 (decompress + Montgomery map)".to_owned()),
        (prim::ED_SIGN.to_owned(), "Ed25519 sign (68 B)".to_owned()),
        (prim::ed_verify(SPK_SIGNED_LEN), format!("Ed25519 verify_strict ({SPK_SIGNED_LEN} B, signed prekey)")),
        (prim::ed_verify(PQ_SIGNED_LEN), format!("Ed25519 verify_strict ({PQ_SIGNED_LEN} B, ML-KEM prekey)")),
        (prim::MLKEM_KEYGEN.to_owned(), "ML-KEM-1024 key generation".to_owned()),
        (prim::MLKEM_ENCAPS.to_owned(), "ML-KEM-1024 encapsulation".to_owned()),
        (prim::MLKEM_DECAPS.to_owned(), "ML-KEM-1024 decapsulation".to_owned()),
        (prim::MLKEM_EK_CHECK.to_owned(), "ML-KEM-1024 encapsulation-key check".to_owned()),
        (prim::HMAC.to_owned(), "HMAC-SHA256 (32 B key, 1 B input)".to_owned()),
        (prim::HKDF_44.to_owned(), "HKDF-SHA256 to 44 B (message key)".to_owned()),
        (prim::HKDF_96.to_owned(), "HKDF-SHA256 to 96 B (root step)".to_owned()),
        (prim::HKDF_PQXDH.to_owned(), format!("HKDF-SHA256 of {PQXDH_IKM_LEN} B to 96 B (PQXDH)")),
        (prim::SHA256_TRANSCRIPT.to_owned(), format!("SHA-256 of the {TRANSCRIPT_LEN} B transcript")),
        (prim::xchacha_seal(HEADER_LEN), format!("XChaCha20-Poly1305 seal, {HEADER_LEN} B header")),
        (prim::xchacha_open(HEADER_LEN), format!("XChaCha20-Poly1305 open, {HEADER_LEN} B header")),
        (prim::XCHACHA_OPEN_FAIL.to_owned(), "XChaCha20-Poly1305 open under a wrong key (failed trial)".to_owned()),
        (prim::xchacha_seal(row_len), format!("XChaCha20-Poly1305 seal, {row_len} B store row")),
        (prim::xchacha_open(row_len), format!("XChaCha20-Poly1305 open, {row_len} B store row")),
    ];
    if session_len != row_len {
        out.push((prim::xchacha_seal(session_len), format!("XChaCha20-Poly1305 seal, {session_len} B session")));
        out.push((prim::xchacha_open(session_len), format!("XChaCha20-Poly1305 open, {session_len} B session")));
    }
    for len in figures.group_row_lens() {
        out.push((prim::xchacha_seal(len), format!("XChaCha20-Poly1305 seal, {len} B group row")));
        out.push((prim::xchacha_open(len), format!("XChaCha20-Poly1305 open, {len} B group row")));
    }
    for n in PAYLOAD_SIZES {
        let p = padded_len(n);
        out.push((prim::chacha_seal(p), format!("ChaCha20-Poly1305 seal, {p} B padded body")));
        out.push((prim::chacha_open(p), format!("ChaCha20-Poly1305 open, {p} B padded body")));
    }
    for n in PAYLOAD_SIZES {
        let (p, signed) = (padded_len(n), group_signed_len(n));
        out.push((
            prim::ed_sign_group(signed),
            format!("Ed25519 sign ({signed} B, group message of {})", size_label(n)),
        ));
        out.push((
            prim::ed_verify(signed),
            format!("Ed25519 verify_strict ({signed} B, group message of {})", size_label(n)),
        ));
        out.push((
            prim::chacha_seal_group(p),
            format!("ChaCha20-Poly1305 seal, {p} B group body ({GROUP_AD_LEN} B AD)"),
        ));
        out.push((
            prim::chacha_open_group(p),
            format!("ChaCha20-Poly1305 open, {p} B group body ({GROUP_AD_LEN} B AD)"),
        ));
    }
    out
}

// ---------------------------------------------------------------- floors

/// `count` times the primitive `prim` (a criterion id).
#[derive(Debug, Clone)]
pub struct Term {
    /// How many times.
    pub count: u32,
    /// The primitive's criterion id.
    pub prim: String,
}

fn t(count: u32, prim: impl Into<String>) -> Term {
    Term { count, prim: prim.into() }
}

/// The floor of one operation: the sum of its terms.
#[derive(Debug, Clone)]
pub struct Floor {
    /// The key rows refer to.
    pub key: String,
    /// How the terms come about, for the report.
    pub what: &'static str,
    /// The terms.
    pub terms: Vec<Term>,
}

const CHAIN_SEND: &str = "chain step (2 HMAC), message key (HKDF to 44 B), header seal (XChaCha20-Poly1305, 41 B), \
                          body seal (ChaCha20-Poly1305, padded payload)";
const CHAIN_RECV: &str = "header open under HKr (first trial succeeds), chain step (2 HMAC), message key, body open";
const PINGPONG: &str = "the send on the sender's new chain; the receipt: a failed header trial under HKr, the open \
                        under NHKr, both halves of the DH step (2 X25519, 1 key generation, 2 root-step HKDF), chain \
                        step, message key, body open";
const HANDSHAKE: &str = "bundle: 2 signature verifications and the ML-KEM key check; initiator: IK_B to X25519, EK_A \
                         and the first ratchet key (2 key generations), DH1..DH4 and the ratchet DH (5 X25519), \
                         encapsulation, transcript hash, PQXDH HKDF, root step; the first message's send; responder: \
                         IK_A to X25519, DH1..DH4, decapsulation, transcript hash, PQXDH HKDF, then the first \
                         message's receipt with both DH-step halves (header under NHKb, no failed trial)";
const DEVICE: &str = "the session operation, plus the row key (HMAC of the address), one open and one seal of the \
                      session row";
const BATCH_WHAT: &str = "1,000 chain receipts, then one row key, one open and one seal of the session row";
const GROUP_ENCRYPT: &str = "chain step (2 HMAC), message key (HKDF to 44 B), body seal (ChaCha20-Poly1305, padded \
                             payload, group AD), Ed25519 signature of AD || body";
const GROUP_DECRYPT: &str = "Ed25519 verification of AD || body, chain step (2 HMAC), message key, body open";
const GROUP_DEVICE_ENCRYPT: &str = "the group encryption, plus the row key (HMAC), one open and one seal of our \
                                    chain's row";
const GROUP_DEVICE_DECRYPT: &str = "the group decryption, plus the row key (HMAC), one open and one seal of the \
                                    sender's row (its chains, steady state)";

/// Encrypting a group message (PROTOCOL.md 18.4): chain step (2 HMAC), message key (HKDF to 44
/// B), body seal (ChaCha20-Poly1305 over the padded payload, group associated data), Ed25519
/// signature of the associated data and the body. The salt's randomness is not counted (no
/// floor counts randomness).
pub fn group_encrypt(n: usize) -> Vec<Term> {
    vec![
        t(2, prim::HMAC),
        t(1, prim::HKDF_44),
        t(1, prim::chacha_seal_group(padded_len(n))),
        t(1, prim::ed_sign_group(group_signed_len(n))),
    ]
}

/// Decrypting a group message in order (PROTOCOL.md 18.5): signature verification, chain step,
/// message key, body open.
pub fn group_decrypt(n: usize) -> Vec<Term> {
    vec![
        t(1, prim::ed_verify(group_signed_len(n))),
        t(2, prim::HMAC),
        t(1, prim::HKDF_44),
        t(1, prim::chacha_open_group(padded_len(n))),
    ]
}

/// Sending a message on an established chain: chain step (2 HMAC), message key (HKDF to 44 B),
/// header seal (XChaCha20-Poly1305, 41 B), body seal (ChaCha20-Poly1305, padded payload).
pub fn chain_send(n: usize) -> Vec<Term> {
    vec![
        t(2, prim::HMAC),
        t(1, prim::HKDF_44),
        t(1, prim::xchacha_seal(HEADER_LEN)),
        t(1, prim::chacha_seal(padded_len(n))),
    ]
}

/// Receiving a message on the current chain: header open under `HKr` (first trial succeeds),
/// chain step (2 HMAC), message key, body open.
pub fn chain_recv(n: usize) -> Vec<Term> {
    vec![
        t(1, prim::xchacha_open(HEADER_LEN)),
        t(2, prim::HMAC),
        t(1, prim::HKDF_44),
        t(1, prim::chacha_open(padded_len(n))),
    ]
}

/// Receiving a message that starts a new chain (ping-pong): a failed header trial under `HKr`,
/// the header open under `NHKr`, then both halves of the DH step (2 X25519, 1 key generation,
/// 2 root steps), the chain step, the message key and the body open.
pub fn step_recv(n: usize) -> Vec<Term> {
    vec![
        t(1, prim::XCHACHA_OPEN_FAIL),
        t(1, prim::xchacha_open(HEADER_LEN)),
        t(2, prim::X25519_DH),
        t(1, prim::X25519_KEYGEN),
        t(2, prim::HKDF_96),
        t(2, prim::HMAC),
        t(1, prim::HKDF_44),
        t(1, prim::chacha_open(padded_len(n))),
    ]
}

/// The full handshake with the first message: bundle verification (2 signatures, the ML-KEM key
/// check), the initiator's PQXDH and first ratchet key, the first message, the responder's PQXDH
/// and its receipt of the first message (header under `NHKb`, no failed trial; both DH-step
/// halves, as the protocol runs them on receipt).
pub fn handshake(n: usize) -> Vec<Term> {
    let mut terms = vec![
        // bundle parse + verify
        t(1, prim::ed_verify(SPK_SIGNED_LEN)),
        t(1, prim::ed_verify(PQ_SIGNED_LEN)),
        t(1, prim::MLKEM_EK_CHECK),
        // initiator: IK_B to X25519, EK_A, DH1..DH4, encaps, transcript, KDF, RatchetInitAliceHE
        t(1, prim::ED_TO_X),
        t(2, prim::X25519_KEYGEN),
        t(5, prim::X25519_DH),
        t(1, prim::MLKEM_ENCAPS),
        t(1, prim::SHA256_TRANSCRIPT),
        t(1, prim::HKDF_PQXDH),
        t(1, prim::HKDF_96),
    ];
    terms.extend(chain_send(n));
    terms.extend([
        // responder: IK_A to X25519, DH1..DH4, decaps, transcript, KDF
        t(1, prim::ED_TO_X),
        t(4, prim::X25519_DH),
        t(1, prim::MLKEM_DECAPS),
        t(1, prim::SHA256_TRANSCRIPT),
        t(1, prim::HKDF_PQXDH),
        // first message: header under NHKb, DH step (both halves), chain step, message key, body
        t(1, prim::xchacha_open(HEADER_LEN)),
        t(2, prim::X25519_DH),
        t(1, prim::X25519_KEYGEN),
        t(2, prim::HKDF_96),
        t(2, prim::HMAC),
        t(1, prim::HKDF_44),
        t(1, prim::chacha_open(padded_len(n))),
    ]);
    terms
}

/// Every floor, by key, at the lengths of `figures`.
pub fn floors(figures: &Figures) -> Vec<Floor> {
    let (row_len, session_len) = (figures.row_len, figures.session_len);
    let f = |key: String, what: &'static str, terms: Vec<Term>| Floor { key, what, terms };
    let mut out = Vec::new();
    for n in PAYLOAD_SIZES {
        out.push(f(format!("chain_send/{n}"), CHAIN_SEND, chain_send(n)));
        out.push(f(format!("chain_recv/{n}"), CHAIN_RECV, chain_recv(n)));
        out.push(f(format!("chain_both/{n}"), "chain send + chain receive", [chain_send(n), chain_recv(n)].concat()));
    }
    for n in PAYLOAD_SIZES {
        // One ping-pong message: its send on the sender's fresh chain, and its receipt (a DH step).
        out.push(f(format!("pingpong/{n}"), PINGPONG, [chain_send(n), step_recv(n)].concat()));
    }
    for n in PAYLOAD_SIZES {
        out.push(f(format!("handshake/{n}"), HANDSHAKE, handshake(n)));
    }
    out.push(f(
        "session_seal".to_owned(),
        "one seal of the serialized session",
        vec![t(1, prim::xchacha_seal(session_len))],
    ));
    out.push(f(
        "session_open".to_owned(),
        "one open of the serialized session",
        vec![t(1, prim::xchacha_open(session_len))],
    ));
    // The store: the row key (HMAC of the address), open the session row, seal it again.
    let store = vec![t(1, prim::HMAC), t(1, prim::xchacha_open(row_len)), t(1, prim::xchacha_seal(row_len))];
    for n in PAYLOAD_SIZES {
        out.push(f(format!("device_encrypt/{n}"), DEVICE, [chain_send(n), store.clone()].concat()));
        out.push(f(format!("device_decrypt/{n}"), DEVICE, [chain_recv(n), store.clone()].concat()));
    }
    for n in PAYLOAD_SIZES {
        out.push(f(format!("group_encrypt/{n}"), GROUP_ENCRYPT, group_encrypt(n)));
        out.push(f(format!("group_decrypt/{n}"), GROUP_DECRYPT, group_decrypt(n)));
        let row = |len: usize| vec![t(1, prim::HMAC), t(1, prim::xchacha_open(len)), t(1, prim::xchacha_seal(len))];
        out.push(f(
            format!("group_device_encrypt/{n}"),
            GROUP_DEVICE_ENCRYPT,
            [group_encrypt(n), row(figures.group_own_row_len)].concat(),
        ));
        out.push(f(
            format!("group_device_decrypt/{n}"),
            GROUP_DEVICE_DECRYPT,
            [group_decrypt(n), row(figures.group_member_row_len)].concat(),
        ));
    }
    for n in PAYLOAD_SIZES {
        // A batch: every message's receipt, then one row open and one row seal for the peer.
        let mut batch: Vec<Term> = chain_recv(n).into_iter().map(|term| t(term.count * BATCH_U32, term.prim)).collect();
        batch.extend(store.clone());
        out.push(f(format!("device_batch/{n}"), BATCH_WHAT, batch));
    }
    out
}

// ---------------------------------------------------------------- report rows and targets

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Section heading.
    pub section: &'static str,
    /// What is measured.
    pub label: String,
    /// Criterion id of samizdat's measurement (`None`: not implemented).
    pub ours: Option<String>,
    /// Criterion id of vodozemac's measurement (`None`: nothing comparable).
    pub vodozemac: Option<String>,
    /// Key of the floor (`None`: no primitive to count).
    pub floor: Option<String>,
    /// The measurement covers this many operations (a batch): the report divides by it.
    pub per: usize,
    /// Name of the target this row counts for.
    pub target: Option<&'static str>,
}

fn size_label(n: usize) -> String {
    if n >= 1024 { format!("{} KiB", n / 1024) } else { format!("{n} B") }
}

/// `1,000`.
pub fn thousands(n: usize) -> String {
    if n >= 1000 { format!("{},{:03}", n / 1000, n % 1000) } else { n.to_string() }
}

/// The rows of the report, in order.
pub fn rows() -> Vec<Row> {
    let mut out = Vec::new();
    let row = |section, label: String, ours: Option<String>, vz: Option<String>, floor: Option<String>| Row {
        section,
        label,
        ours,
        vodozemac: vz,
        floor,
        per: 1,
        target: None,
    };
    for n in PAYLOAD_SIZES {
        let s = size_label(n);
        for (what, name) in [("send", "send"), ("recv", "receive"), ("both", "send + receive")] {
            out.push(Row {
                target: Some("chain"),
                ..row(
                    "Established chain (one message)",
                    format!("chain {name}, {s}"),
                    Some(format!("chain/samizdat_{what}/{n}")),
                    Some(format!("chain/vodozemac_{what}/{n}")),
                    Some(format!("chain_{what}/{n}")),
                )
            });
        }
    }
    for n in PAYLOAD_SIZES {
        out.push(Row {
            target: Some("pingpong"),
            ..row(
                "Ping-pong (a DH ratchet step each message)",
                format!("ping-pong message, {}", size_label(n)),
                Some(format!("pingpong/samizdat/{n}")),
                Some(format!("pingpong/vodozemac/{n}")),
                Some(format!("pingpong/{n}")),
            )
        });
    }
    for n in PAYLOAD_SIZES {
        out.push(Row {
            target: Some("handshake"),
            ..row(
                "Handshake with the first message",
                format!("handshake + first message, {}", size_label(n)),
                Some(format!("handshake/samizdat/{n}")),
                Some(format!("handshake/vodozemac/{n}")),
                Some(format!("handshake/{n}")),
            )
        });
    }
    let session = "Session serialization (steady state)";
    out.push(row(
        session,
        "serialize + seal (vodozemac: pickle + encrypt)".to_owned(),
        Some("session/samizdat_serialize_sealed".to_owned()),
        Some("session/vodozemac_pickle".to_owned()),
        Some("session_seal".to_owned()),
    ));
    out.push(row(
        session,
        "open + deserialize (vodozemac: decrypt + unpickle)".to_owned(),
        Some("session/samizdat_deserialize_sealed".to_owned()),
        Some("session/vodozemac_unpickle".to_owned()),
        Some("session_open".to_owned()),
    ));
    out.push(row(
        session,
        "serialize (plain bytes)".to_owned(),
        Some("session/samizdat_serialize".to_owned()),
        None,
        None,
    ));
    out.push(row(
        session,
        "deserialize (plain bytes)".to_owned(),
        Some("session/samizdat_deserialize".to_owned()),
        None,
        None,
    ));
    // samizdat's group messages are public through the Device API only: these rows are device
    // calls in memory (each loads, opens, seals and writes one row), against the floor of the
    // protocol alone; the device floor (with the row) is in the device section below.
    let group = "Group messages (samizdat: Sender Keys through a Device in memory; vodozemac: Megolm)";
    for n in PAYLOAD_SIZES {
        let s = size_label(n);
        out.push(Row {
            target: Some("group"),
            ..row(
                group,
                format!("group encrypt, {s}"),
                Some(format!("group/samizdat_device_encrypt/{n}")),
                Some(format!("group/vodozemac_encrypt/{n}")),
                Some(format!("group_encrypt/{n}")),
            )
        });
        out.push(Row {
            target: Some("group"),
            ..row(
                group,
                format!("group decrypt (+ commit), {s}"),
                Some(format!("group/samizdat_device_decrypt/{n}")),
                Some(format!("group/vodozemac_decrypt/{n}")),
                Some(format!("group_decrypt/{n}")),
            )
        });
    }
    let device = "Device over a store (per message)";
    for n in PAYLOAD_SIZES {
        let s = size_label(n);
        for backend in ["sqlite", "memory"] {
            let name = if backend == "sqlite" { "SQLite" } else { "memory" };
            out.push(row(
                device,
                format!("encrypt + commit, {s}, {name}"),
                Some(format!("device/{backend}_encrypt/{n}")),
                None,
                Some(format!("device_encrypt/{n}")),
            ));
            out.push(row(
                device,
                format!("decrypt + commit, {s}, {name}"),
                Some(format!("device/{backend}_decrypt/{n}")),
                None,
                Some(format!("device_decrypt/{n}")),
            ));
        }
    }
    out.push(row(
        device,
        "decrypt + commit, 64 B, memory, 100 one-time prekeys held".to_owned(),
        Some("device/memory_decrypt_100prekeys/64".to_owned()),
        None,
        Some("device_decrypt/64".to_owned()),
    ));
    for n in PAYLOAD_SIZES {
        let s = size_label(n);
        out.push(row(
            device,
            format!("group encrypt, {s}, memory (floor with our chain's row)"),
            Some(format!("group/samizdat_device_encrypt/{n}")),
            None,
            Some(format!("group_device_encrypt/{n}")),
        ));
        out.push(row(
            device,
            format!("group decrypt + commit, {s}, memory (floor with the sender's row)"),
            Some(format!("group/samizdat_device_decrypt/{n}")),
            None,
            Some(format!("group_device_decrypt/{n}")),
        ));
    }
    let hostile = "Hostile messages: the receiver's cost of one message (device on SQLite, decrypt only)";
    for (name, peer) in [("normal", "ordinary session"), ("2000_skipped", "peer with 2,000 stored skipped keys")] {
        for (id, what) in [
            ("sqlite_genuine_decrypt", "genuine message (for comparison)"),
            ("sqlite_garbage", "200 random bytes"),
            ("sqlite_forged_header", "a header no key opens"),
            ("sqlite_forged_body", "a header that opens, a broken body"),
            ("sqlite_duplicate", "a message already decrypted"),
        ] {
            out.push(row(hostile, format!("{what}, {peer}"), Some(format!("device_hostile/{id}/{name}")), None, None));
        }
    }
    out.push(row(
        hostile,
        "a header 2,000 ahead with a broken body, first time, ordinary session".to_owned(),
        Some("device_hostile/sqlite_far_ahead_first/normal".to_owned()),
        None,
        None,
    ));
    out.push(row(
        hostile,
        "the same header again, another broken body".to_owned(),
        Some("device_hostile/sqlite_far_ahead_replay/normal".to_owned()),
        None,
        None,
    ));
    for (id, what) in [
        ("sqlite_decrypt/minimal", "genuine first message, minimal prekey set (for comparison)"),
        ("sqlite_forged_body/200+200", "a prekey message with a broken body, 200+200 one-time prekeys held"),
        ("sqlite_junk/200+200", "a 3-byte prekey envelope, 200+200 one-time prekeys held"),
    ] {
        out.push(row(hostile, what.to_owned(), Some(format!("device_prekey/{id}")), None, None));
    }
    let scale = "Scale: what a device holds does not slow its calls (SQLite)";
    for (id, what) in [
        ("device_prekey/sqlite_decrypt/minimal", "prekey message, decrypt, minimal prekey set"),
        ("device_prekey/sqlite_decrypt/200+200", "prekey message, decrypt, 200+200 one-time prekeys"),
        ("device_prekey/sqlite_decrypt/10000_base_keys", "prekey message, decrypt, 10,000 remembered base keys"),
        ("device_prekey/sqlite_decrypt_commit/minimal", "prekey message, decrypt + commit, minimal prekey set"),
        ("device_prekey/sqlite_decrypt_commit/200+200", "prekey message, decrypt + commit, 200+200 one-time prekeys"),
        (
            "device_prekey/sqlite_decrypt_commit/10000_base_keys",
            "prekey message, decrypt + commit, 10,000 remembered base keys",
        ),
        ("device_scale/sqlite_encrypt/0", "encrypt + commit, 64 B, no skipped key stored"),
        ("device_scale/sqlite_encrypt/2000", "encrypt + commit, 64 B, 2,000 skipped keys stored"),
        ("device_scale/sqlite_decrypt/0", "in-order decrypt + commit, 64 B, no skipped key stored"),
        ("device_scale/sqlite_decrypt/2000", "in-order decrypt + commit, 64 B, 2,000 skipped keys stored"),
        (
            "device_scale/sqlite_encrypt/1000_fragmented",
            "encrypt + commit, 64 B, 1,000 skipped keys stored, every other one delivered",
        ),
        (
            "device_scale/sqlite_decrypt/1000_fragmented",
            "in-order decrypt + commit, 64 B, 1,000 skipped keys stored, every other one delivered",
        ),
        (
            "device_scrub/sqlite_scrub/1000_peers",
            "scrub (VACUUM, truncating checkpoint): a store with 1,000 peers, once per budget of writes",
        ),
    ] {
        out.push(row(scale, what.to_owned(), Some(id.to_owned()), None, None));
    }
    let scale = "Groups at scale: a sender's group_encrypt (Device in memory, 64 B)";
    for members in GROUP_SIZES {
        out.push(row(
            scale,
            format!("steady state (every member has the chain), {} members", thousands(members)),
            Some(format!("group_scale/samizdat_steady/{members}")),
            Some("group/vodozemac_encrypt/64".to_owned()),
            None,
        ));
        out.push(row(
            scale,
            format!("first after a removal: a new chain and {} distributions", thousands(members)),
            Some(format!("group_scale/samizdat_rotation/{members}")),
            Some(format!("group_scale/vodozemac_rotation/{members}")),
            None,
        ));
    }
    for n in PAYLOAD_SIZES {
        for backend in ["sqlite", "memory"] {
            let name = if backend == "sqlite" { "SQLite" } else { "memory" };
            out.push(Row {
                per: BATCH,
                ..row(
                    device,
                    format!("batch of {BATCH}, per message, {}, {name}", size_label(n)),
                    Some(format!("device_batch/{backend}/{n}")),
                    None,
                    Some(format!("device_batch/{n}")),
                )
            });
        }
    }
    out
}

/// A target of issue 6 and how it is judged.
#[derive(Debug, Clone)]
pub enum Judge {
    /// Every row naming this target is within `max` times its floor.
    Floor {
        /// The bound.
        max: f64,
    },
    /// A computed size (by label) is below `max` bytes.
    Size {
        /// The figure's label.
        label: String,
        /// The bound.
        max: usize,
    },
    /// For each pair, the first measurement is at most `max` times the second.
    Pairs {
        /// `(numerator id, denominator id)`.
        pairs: Vec<(String, String)>,
        /// The bound.
        max: f64,
    },
    /// Cannot be judged yet.
    NotApplicable {
        /// Why.
        reason: String,
    },
}

/// The targets, in order: `(name, description, how it is judged)`.
pub fn targets() -> Vec<(&'static str, String, Judge)> {
    vec![
        ("chain", "a message in an established chain within 1.3x of its floor".to_owned(), Judge::Floor { max: 1.3 }),
        ("pingpong", "a ping-pong message within 1.05x of its floor".to_owned(), Judge::Floor { max: 1.05 }),
        ("handshake", "a handshake within 1.1x of its floor".to_owned(), Judge::Floor { max: 1.1 }),
        (
            "group",
            "group messages within 1.1x of their floor".to_owned(),
            Judge::NotApplicable {
                reason: "the group protocol is public through the Device API only, so the timed rows include \
                         the device's row; the protocol's own instruction counts, taken inside the device calls, \
                         are under Groups below"
                    .to_owned(),
            },
        ),
        (
            "size",
            "a steady-state session under 1 KiB serialized".to_owned(),
            Judge::Size { label: STEADY_RESPONDER.to_owned(), max: 1024 },
        ),
        (
            "prekey_scale",
            "a prekey message within 1.5x of its cost with a minimal prekey set, whatever is held (issue 12)"
                .to_owned(),
            Judge::Pairs {
                pairs: ["200+200", "10000_base_keys"]
                    .iter()
                    .flat_map(|held| {
                        ["sqlite_decrypt", "sqlite_decrypt_commit"]
                            .map(|op| (format!("device_prekey/{op}/{held}"), format!("device_prekey/{op}/minimal")))
                    })
                    .collect(),
                max: 1.5,
            },
        ),
        (
            "skipped_scale",
            "encrypt and in-order decrypt within 1.2x of their cost with no skipped key stored (issue 12)".to_owned(),
            Judge::Pairs {
                pairs: ["sqlite_encrypt", "sqlite_decrypt"]
                    .iter()
                    .flat_map(|op| {
                        ["2000", "1000_fragmented"]
                            .map(|held| (format!("device_scale/{op}/{held}"), format!("device_scale/{op}/0")))
                    })
                    .collect(),
                max: 1.2,
            },
        ),
        (
            "batch",
            "a batch decrypt on SQLite at most 2x the in-memory cost per message".to_owned(),
            Judge::Pairs {
                pairs: PAYLOAD_SIZES
                    .iter()
                    .map(|n| (format!("device_batch/sqlite/{n}"), format!("device_batch/memory/{n}")))
                    .collect(),
                max: 2.0,
            },
        ),
    ]
}

/// Label of the steady-state responder session size (the larger of the two sides).
pub const STEADY_RESPONDER: &str = "session, steady state (10 round trips), responder";
/// Label of the steady-state initiator session size.
pub const STEADY_INITIATOR: &str = "session, steady state (10 round trips), initiator";

// ---------------------------------------------------------------- samizdat setups

/// Two samizdat session records with everything they need, established both ways (the
/// initiator's first message and the responder's reply were decrypted).
pub struct Pair {
    /// The seeded generator.
    pub rng: ChaCha20Rng,
    /// Alice's identity (the initiator).
    pub alice: IdentityKeyPair,
    /// Bob's identity (the responder).
    pub bob: IdentityKeyPair,
    /// Alice's prekeys (unused by ratchet messages, required by the API).
    pub alice_prekeys: PreKeySet,
    /// Bob's prekeys, with one one-time key of each kind.
    pub bob_prekeys: PreKeySet,
    /// Alice's address.
    pub alice_address: Address,
    /// Bob's address.
    pub bob_address: Address,
    /// Bob's bundle as the server would send it.
    pub bundle: Vec<u8>,
    /// Alice's record of Bob.
    pub a: SessionRecord,
    /// Bob's record of Alice.
    pub b: SessionRecord,
}

impl Pair {
    /// A new established pair from `seed`.
    pub fn new(seed: u8) -> Self {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let alice_prekeys = PreKeySet::new(&mut rng, &alice, UNIX_EPOCH);
        let mut bob_prekeys = PreKeySet::new(&mut rng, &bob, UNIX_EPOCH);
        bob_prekeys.add_one_time_prekeys(&mut rng, &bob, 1, UNIX_EPOCH).expect("room for one prekey");
        let alice_address = Address::new("alice", 1).expect("address");
        let bob_address = Address::new("bob", 1).expect("address");
        let bundle = bob_prekeys.bundle(&bob, &bob_address).expect("bundle").to_bytes();
        let mut pair = Self {
            rng,
            alice,
            bob,
            alice_prekeys,
            bob_prekeys,
            alice_address,
            bob_address,
            bundle,
            a: SessionRecord::new(),
            b: SessionRecord::new(),
        };
        let parsed = PreKeyBundle::from_bytes(&pair.bundle).expect("valid bundle");
        pair.a.initiate(&mut pair.rng, &pair.alice, &pair.alice_address, &parsed).expect("initiate");
        let first = pair.a_to_b(b"hello");
        pair.b_receive(&first);
        let reply = pair.b_to_a(b"hi");
        pair.a_receive(&reply);
        pair
    }

    /// Alice encrypts.
    pub fn a_to_b(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.a.encrypt(&mut self.rng, plaintext).expect("encrypt")
    }

    /// Bob encrypts.
    pub fn b_to_a(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.b.encrypt(&mut self.rng, plaintext).expect("encrypt")
    }

    /// Bob decrypts and commits; returns the plaintext length.
    pub fn b_receive(&mut self, wire: &[u8]) -> usize {
        let pending = self
            .b
            .decrypt(&mut self.rng, &self.bob, &self.bob_address, &self.alice_address, &self.bob_prekeys, wire)
            .expect("decrypt");
        let len = pending.plaintext().len();
        self.b.commit(pending).expect("commit");
        len
    }

    /// Alice decrypts and commits; returns the plaintext length.
    pub fn a_receive(&mut self, wire: &[u8]) -> usize {
        let pending = self
            .a
            .decrypt(&mut self.rng, &self.alice, &self.alice_address, &self.bob_address, &self.alice_prekeys, wire)
            .expect("decrypt");
        let len = pending.plaintext().len();
        self.a.commit(pending).expect("commit");
        len
    }

    /// `rounds` round trips (each a DH step on both sides): the steady state.
    pub fn ping_pong(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let m = self.a_to_b(b"ping");
            self.b_receive(&m);
            let m = self.b_to_a(b"pong");
            self.a_receive(&m);
        }
    }

    /// One full handshake with the first message, as a new initiator and a new responder
    /// record: bundle parse + verify, initiate, first encrypt, responder decrypt + commit.
    pub fn handshake(&mut self, payload: &[u8]) -> usize {
        let bundle = PreKeyBundle::from_bytes(&self.bundle).expect("valid bundle");
        let mut a = SessionRecord::new();
        a.initiate(&mut self.rng, &self.alice, &self.alice_address, &bundle).expect("initiate");
        let wire = a.encrypt(&mut self.rng, payload).expect("encrypt");
        let mut b = SessionRecord::new();
        let pending = b
            .decrypt(&mut self.rng, &self.bob, &self.bob_address, &self.alice_address, &self.bob_prekeys, &wire)
            .expect("decrypt");
        let len = pending.plaintext().len();
        b.commit(pending).expect("commit");
        len
    }
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system's temporary directory.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("samizdat-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temporary directory");
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One side of a session as a bare [`SessionRecord`]: cheap to drive, so that making messages
/// for a device under test costs little (a device loads and seals its record on every call).
pub struct RecordPeer {
    /// Its generator.
    pub rng: ChaCha20Rng,
    /// Its identity.
    pub identity: IdentityKeyPair,
    /// Its address.
    pub address: Address,
    /// Its prekeys (required by the API, unused by ratchet messages).
    pub prekeys: PreKeySet,
    /// Its record of the peer.
    pub record: SessionRecord,
}

impl RecordPeer {
    /// Encrypts to the peer.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.record.encrypt(&mut self.rng, plaintext).expect("encrypt")
    }
}

/// Alice as a [`RecordPeer`] and Bob as a [`Device`] over the backend under test, with a
/// session established both ways (Alice's first message and Bob's reply were decrypted).
pub struct DeviceSetup<B: Backend> {
    /// Alice.
    pub alice: RecordPeer,
    /// Bob, the device under test.
    pub bob: Device<B>,
}

/// Bob's device, the one under test, in a new `backend`.
fn bob_device<B: Backend>(backend: B) -> Device<B> {
    Device::create_in(backend, &StorageKey::from_bytes([2; 32]), Address::new("bob", 1).expect("address"), UNIX_EPOCH)
        .expect("bob")
}

impl<B: Backend> DeviceSetup<B> {
    /// Sets up Bob's device in `backend` and a session with Alice.
    pub fn new(backend: B) -> Self {
        let mut rng = ChaCha20Rng::from_seed([21; 32]);
        let identity = IdentityKeyPair::generate(&mut rng);
        let prekeys = PreKeySet::new(&mut rng, &identity, UNIX_EPOCH);
        let address = Address::new("alice", 1).expect("address");
        let mut alice = RecordPeer { rng, identity, address, prekeys, record: SessionRecord::new() };
        let bob = bob_device(backend);
        let bundle = PreKeyBundle::from_bytes(&bob.prekey_bundle().expect("bundle")).expect("valid bundle");
        alice.record.initiate(&mut alice.rng, &alice.identity, &alice.address, &bundle).expect("initiate");
        let first = alice.encrypt(b"hello");
        bob.commit(bob.decrypt(&alice.address, &first).expect("decrypt")).expect("commit");
        let reply = bob.encrypt(&alice.address, b"hi").expect("encrypt");
        let pending = alice
            .record
            .decrypt(&mut alice.rng, &alice.identity, &alice.address, bob.address(), &alice.prekeys, &reply)
            .expect("decrypt");
        alice.record.commit(pending).expect("commit");
        Self { alice, bob }
    }

    /// Alice encrypts to Bob.
    pub fn to_bob(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.alice.encrypt(plaintext)
    }

    /// Bob decrypts and commits (two transactions' worth of work: decrypt, then commit).
    pub fn bob_receives(&self, wire: &[u8]) -> usize {
        let pending = self.bob.decrypt(&self.alice.address, wire).expect("decrypt");
        let len = pending.plaintext().len();
        self.bob.commit(pending).expect("commit");
        len
    }

    /// Bob encrypts to Alice (and commits, inside `Device::encrypt`).
    pub fn bob_sends(&self, plaintext: &[u8]) -> Vec<u8> {
        self.bob.encrypt(&self.alice.address, plaintext).expect("encrypt")
    }
}

impl<B: Backend> DeviceSetup<B> {
    /// The same, then Alice skips `skipped` messages of a new chain and sends the next: Bob
    /// stores `skipped` skipped keys (and decrypts later messages in order, without them).
    pub fn with_skipped(backend: B, skipped: u32) -> Self {
        Self::skipping(backend, skipped, false)
    }

    /// The same, then Alice delivers every other skipped message: Bob keeps half the keys, in as
    /// many runs as keys (the most fragmented a peer can make them).
    pub fn with_fragmented_skipped(backend: B, skipped: u32) -> Self {
        Self::skipping(backend, skipped, true)
    }

    fn skipping(backend: B, skipped: u32, fragment: bool) -> Self {
        let mut setup = Self::new(backend);
        // In the same chain as what follows: no DH step in the messages measured.
        let warm = setup.to_bob(b"warm");
        setup.bob_receives(&warm);
        let held: Vec<Vec<u8>> = (0..skipped).map(|_| setup.to_bob(b"held back")).collect();
        if skipped > 0 {
            let message = setup.to_bob(b"far ahead");
            setup.bob_receives(&message);
        }
        if fragment {
            for message in held.iter().skip(1).step_by(2) {
                setup.bob_receives(message);
            }
        }
        setup
    }

    /// A message from Alice `ahead` messages ahead of the next one Bob expects, with its body
    /// broken (one bit flipped): what a replayed genuine header with a broken body costs Bob.
    /// Alice is restored afterwards, so each call makes another such message (another header
    /// nonce) for the same counter.
    pub fn far_ahead_forgery(&mut self, ahead: u32) -> Vec<u8> {
        let saved = self.alice.record.to_bytes();
        for _ in 0..ahead {
            self.to_bob(b"skipped");
        }
        let message = self.to_bob(b"far ahead");
        self.alice.record = SessionRecord::from_bytes(&saved).expect("restore Alice");
        flip_in_body(&message)
    }
}

/// `wire` (a ratchet or prekey message) with one bit of its encrypted header flipped: it still
/// decodes, and no header key opens it.
pub fn flip_in_header(wire: &[u8]) -> Vec<u8> {
    let message = ratchet_part(wire);
    flip_inside(wire, message.header())
}

/// `wire` with one bit of its body flipped: it decodes and its header opens, its body does not.
pub fn flip_in_body(wire: &[u8]) -> Vec<u8> {
    let message = ratchet_part(wire);
    flip_inside(wire, message.body())
}

fn ratchet_part(wire: &[u8]) -> RatchetMessage {
    match Message::from_bytes(wire).expect("a message") {
        Message::Ratchet(message) => message,
        Message::PreKey(prekey) => prekey.message().clone(),
    }
}

fn flip_inside(wire: &[u8], part: &[u8]) -> Vec<u8> {
    let at = wire.windows(part.len()).position(|w| w == part).expect("the part is in the message");
    let mut out = wire.to_vec();
    out[at + part.len() / 2] ^= 0x01;
    out
}

/// Bob as a [`Device`] under test for prekey messages: each message is the first one of a new
/// session from a new peer (`peer-0`, `peer-1`, ..., one identity for all), made from Bob's current
/// bundle. Bob holds `one_time` one-time prekeys of each kind, refilled (untimed) before each message;
/// with none, every message uses the signed and the last-resort prekeys, and its commit remembers
/// its base key.
pub struct PreKeySetup<B: Backend> {
    /// Bob, the device under test.
    pub bob: Device<B>,
    rng: ChaCha20Rng,
    identity: IdentityKeyPair,
    next_peer: u32,
    one_time: usize,
}

impl<B: Backend> PreKeySetup<B> {
    /// Bob's device in `backend`, with `one_time` one-time prekeys of each kind.
    pub fn new(backend: B, one_time: usize) -> Self {
        let bob = bob_device(backend);
        Self::from_device(bob, one_time)
    }

    /// The same over an existing device.
    pub fn from_device(bob: Device<B>, one_time: usize) -> Self {
        let mut rng = ChaCha20Rng::from_seed([22; 32]);
        let identity = IdentityKeyPair::generate(&mut rng);
        let setup = Self { bob, rng, identity, next_peer: 0, one_time };
        setup.refill();
        setup
    }

    /// The same peers (they go on with new addresses and fresh base keys)
    /// with another device: Bob's store copied to another backend, reopened.
    pub fn with_device<C: Backend>(self, bob: Device<C>) -> PreKeySetup<C> {
        let Self { rng, identity, next_peer, one_time, .. } = self;
        PreKeySetup { bob, rng, identity, next_peer, one_time }
    }

    /// Tops Bob's one-time prekeys up to the setup's count.
    pub fn refill(&self) {
        if self.one_time > 0 {
            self.bob.refill_prekeys(self.one_time, self.one_time, UNIX_EPOCH).expect("refill");
        }
    }

    /// Refills, then makes the first message of a new session from a new peer.
    pub fn first_message(&mut self) -> (Address, Vec<u8>) {
        self.refill();
        let peer = Address::new(format!("peer-{}", self.next_peer), 1).expect("address");
        self.next_peer += 1;
        let bundle = PreKeyBundle::from_bytes(&self.bob.prekey_bundle().expect("bundle")).expect("valid bundle");
        let mut record = SessionRecord::new();
        record.initiate(&mut self.rng, &self.identity, &peer, &bundle).expect("initiate");
        let wire = record.encrypt(&mut self.rng, b"hello").expect("encrypt");
        (peer, wire)
    }

    /// Bob decrypts a first message and commits it.
    pub fn receive(&self, (peer, wire): &(Address, Vec<u8>)) {
        let pending = self.bob.decrypt(peer, wire).expect("decrypt");
        assert_eq!(pending.plaintext(), b"hello");
        self.bob.commit(pending).expect("commit");
    }
}

/// Copies every row of `from` into the empty store `to`, in one batch.
pub fn copy_store(from: &impl Backend, to: &impl Backend) {
    let writes: Vec<Write> = Table::ALL
        .iter()
        .flat_map(|&table| {
            from.scan(table).expect("scan").into_iter().map(move |(key, value)| Write {
                table,
                key,
                value: Some(value),
                expected: Expected::Absent,
            })
        })
        .collect();
    to.apply(&writes).expect("copy");
}

// ---------------------------------------------------------------- group setups

/// The group of the group benchmarks.
pub const GROUP_ID: &[u8] = b"bench-group";
/// Group sizes of the scale benchmarks: member devices besides the sender.
pub const GROUP_SIZES: [usize; 3] = [10, 100, 1000];
/// Length of a group message's associated data (PROTOCOL.md 18.4) in [`GROUP_ID`] from device 1
/// of `alice`: label (25) `||` u8(len group id) `||` group id `||` u32(len user id) `||` user id
/// `||` u32(device) `||` u32(chain id) `||` u32(iteration) `||` salt (24).
pub const GROUP_AD_LEN: usize = 25 + 1 + GROUP_ID.len() + 4 + "alice".len() + 4 + 4 + 4 + 24;

/// What the signature of a group message with an `n`-byte payload covers: its associated data,
/// then its body (the padded payload and the 16-byte tag).
pub fn group_signed_len(n: usize) -> usize {
    GROUP_AD_LEN + padded_len(n) + 16
}

/// Alice (the sender) and Bob, devices in memory with a session both ways, in a group of the two;
/// Bob holds Alice's chain (her first group message was sent and decrypted).
pub struct GroupPair {
    /// Alice, the sender.
    pub alice: Device<MemoryBackend>,
    /// Bob, a member.
    pub bob: Device<MemoryBackend>,
}

impl Default for GroupPair {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupPair {
    /// A new pair in a new group.
    pub fn new() -> Self {
        let device = |name: &str, key: u8| {
            Device::create_in(
                MemoryBackend::new(),
                &StorageKey::from_bytes([key; 32]),
                Address::new(name, 1).expect("address"),
                UNIX_EPOCH,
            )
            .expect("device")
        };
        let (alice, bob) = (device("alice", 1), device("bob", 2));
        alice.start_session(&bob.prekey_bundle().expect("bundle")).expect("session");
        let first = alice.encrypt(bob.address(), b"hello").expect("encrypt");
        bob.commit(bob.decrypt(alice.address(), &first).expect("decrypt")).expect("commit");
        let reply = bob.encrypt(alice.address(), b"hi").expect("encrypt");
        alice.commit(alice.decrypt(bob.address(), &reply).expect("decrypt")).expect("commit");
        alice.create_group(GROUP_ID, &[bob.address().clone()]).expect("group");
        bob.create_group(GROUP_ID, &[alice.address().clone()]).expect("group");
        let sent = alice.group_encrypt(GROUP_ID, b"first").expect("group encrypt");
        assert_eq!(sent.distributions.len(), 1, "Bob gets the chain");
        for outgoing in &sent.distributions {
            let pending = bob.decrypt(alice.address(), &outgoing.message).expect("distribution");
            assert_eq!(pending.kind(), MessageKind::Control);
            bob.commit(pending).expect("commit");
        }
        let pair = Self { alice, bob };
        pair.bob_receives(&sent.message);
        pair
    }

    /// Alice encrypts for the group (every member has her chain: no distribution).
    pub fn alice_sends(&self, plaintext: &[u8]) -> Vec<u8> {
        let sent = self.alice.group_encrypt(GROUP_ID, plaintext).expect("group encrypt");
        assert!(sent.distributions.is_empty(), "steady state");
        sent.message
    }

    /// Bob decrypts a group message from Alice and commits it; returns the plaintext length.
    pub fn bob_receives(&self, wire: &[u8]) -> usize {
        let pending = self.bob.decrypt(self.alice.address(), wire).expect("group decrypt");
        let len = pending.plaintext().len();
        self.bob.commit(pending).expect("commit");
        len
    }
}

/// A sender (a device in memory) in a group with `members` other member devices and one more
/// device, `leaver`, that [`Self::prepare_rotation`] adds and removes. The sender has a session
/// with each: every member opened it with a first message to the sender (bare
/// [`SessionRecord`]s, one identity for all, made from the sender's bundle without one-time
/// prekeys), so the sender's messages to them are ratchet messages, as in a group whose
/// sessions are established. After [`Self::new`] every member has the sender's current chain.
pub struct GroupScale {
    /// The sender.
    pub sender: Device<MemoryBackend>,
    /// The members.
    pub members: Vec<Address>,
    /// The device that leaves before each rotation.
    pub leaver: Address,
}

impl GroupScale {
    /// Sets up the sender, its sessions and the group (slow for 1,000 members: about one
    /// handshake per member).
    pub fn new(members: usize) -> Self {
        let sender = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([3; 32]),
            Address::new("alice", 1).expect("address"),
            UNIX_EPOCH,
        )
        .expect("sender");
        let mut rng = ChaCha20Rng::from_seed([23; 32]);
        let identity = IdentityKeyPair::generate(&mut rng);
        let bundle = PreKeyBundle::from_bytes(&sender.prekey_bundle().expect("bundle")).expect("valid bundle");
        let mut open = |name: String| {
            let address = Address::new(name, 1).expect("address");
            let mut record = SessionRecord::new();
            record.initiate(&mut rng, &identity, &address, &bundle).expect("initiate");
            let first = record.encrypt(&mut rng, b"hello").expect("encrypt");
            sender.commit(sender.decrypt(&address, &first).expect("decrypt")).expect("commit");
            address
        };
        let leaver = open("leaver".to_owned());
        let members: Vec<Address> = (0..members).map(|i| open(format!("member-{i}"))).collect();
        sender.create_group(GROUP_ID, &members).expect("group");
        let scale = Self { sender, members, leaver };
        let sent = scale.send(b"first");
        assert_eq!(sent.distributions.len(), scale.members.len(), "every member gets the chain");
        assert!(sent.without_session.is_empty());
        scale
    }

    /// Encrypts for the group.
    pub fn send(&self, plaintext: &[u8]) -> GroupSend {
        self.sender.group_encrypt(GROUP_ID, plaintext).expect("group encrypt")
    }

    /// Adds the leaver and removes it again: the sender's next message starts a new chain and
    /// distributes it to every member (the leaver, removed, gets none).
    pub fn prepare_rotation(&self) {
        let leaver = std::slice::from_ref(&self.leaver);
        self.sender.add_group_members(GROUP_ID, leaver).expect("add");
        self.sender.remove_group_members(GROUP_ID, leaver).expect("remove");
    }
}

/// vodozemac's counterpart of a rotation in a group of `members`: a new Megolm session whose key
/// goes to every member in an Olm message (established sessions), then the first Megolm message.
/// Matrix wraps the key in a JSON to-device event first; this sends the bare exported key
/// (base64), so its Olm messages are shorter than Matrix's.
pub struct VzGroupScale {
    sessions: Vec<Session>,
}

impl VzGroupScale {
    /// The sender's Olm sessions with `members` members, established both ways.
    pub fn new(members: usize) -> Self {
        Self { sessions: (0..members).map(|_| VzPair::new().a).collect() }
    }

    /// A rotation: the first Megolm message of a new session, and the bytes of the Olm messages
    /// that carry its key.
    pub fn rotate(&mut self, plaintext: &[u8]) -> (Vec<u8>, usize) {
        let mut group = vodozemac::megolm::GroupSession::new(vodozemac::megolm::SessionConfig::version_1());
        let key = group.session_key().to_base64();
        let mut sent = 0;
        for session in &mut self.sessions {
            sent += vz_wire(&session.encrypt(&key).expect("encrypt")).1.len();
        }
        (group.encrypt(plaintext).to_bytes(), sent)
    }
}

// ---------------------------------------------------------------- vodozemac setups

/// Two vodozemac Olm sessions, established both ways.
pub struct VzPair {
    /// Alice's account (the initiator).
    pub alice: Account,
    /// Bob's account (the responder).
    pub bob: Account,
    /// Alice's session.
    pub a: Session,
    /// Bob's session.
    pub b: Session,
}

impl Default for VzPair {
    fn default() -> Self {
        Self::new()
    }
}

impl VzPair {
    /// A new established pair.
    pub fn new() -> Self {
        let alice = Account::new();
        let mut bob = Account::new();
        bob.generate_one_time_keys(1);
        let otk = *bob.one_time_keys().values().next().expect("a one-time key");
        bob.mark_keys_as_published();
        let mut a =
            alice.create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk).expect("outbound");
        let OlmMessage::PreKey(first) = a.encrypt(b"hello").expect("encrypt") else { panic!("a pre-key message") };
        let mut b = bob
            .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &first)
            .expect("inbound")
            .session;
        let reply = b.encrypt(b"hi").expect("encrypt");
        a.decrypt(&reply).expect("decrypt");
        Self { alice, bob, a, b }
    }

    /// `rounds` round trips.
    pub fn ping_pong(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let m = self.a.encrypt(b"ping").expect("encrypt");
            self.b.decrypt(&m).expect("decrypt");
            let m = self.b.encrypt(b"pong").expect("encrypt");
            self.a.decrypt(&m).expect("decrypt");
        }
    }
}

/// The wire form of an Olm message, as a transport carries it: `(type, bytes)`.
pub fn vz_wire(message: &OlmMessage) -> (usize, Vec<u8>) {
    message.to_parts()
}

/// A vodozemac handshake's signed one-time key, as a Matrix server hands it out: the key, the
/// signed JSON-like text and its Ed25519 signature by the owner's device key.
pub fn vz_signed_otk(account: &Account, key: vodozemac::Curve25519PublicKey) -> (String, vodozemac::Ed25519Signature) {
    let text = format!("{{\"key\":\"{}\"}}", key.to_base64());
    let signature = account.sign(&text);
    (text, signature)
}

// ---------------------------------------------------------------- computed figures

/// Sizes and overheads, computed (not timed).
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// `(label, samizdat bytes, vodozemac bytes)`.
    pub sizes: Vec<(String, Option<usize>, Option<usize>)>,
    /// `(label, samizdat overhead, vodozemac overhead)`: ciphertext length minus plaintext length.
    pub overhead: Vec<(String, Option<usize>, Option<usize>)>,
    /// Plaintext length of the sealed session row in the device benchmarks.
    pub row_len: usize,
    /// Serialized length of the steady-state responder session (the serialization benchmarks).
    pub session_len: usize,
    /// Plaintext length (size class) of the sealed row of our chain in a group.
    pub group_own_row_len: usize,
    /// Plaintext length (size class) of the sealed row of a sender's chains, steady state (the
    /// last [`samizdat::limits::MAX_GROUP_USED_ITERATIONS`] iterations remembered).
    pub group_member_row_len: usize,
}

impl Figures {
    /// The lengths of the group rows that are not already measured as a session row.
    pub fn group_row_lens(&self) -> Vec<usize> {
        let mut out: Vec<usize> = [self.group_own_row_len, self.group_member_row_len]
            .into_iter()
            .filter(|len| *len != self.row_len && *len != self.session_len)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Bytes a sealed row adds to its plaintext: version (1), nonce (24), tag (16).
const SEALED_OVERHEAD: usize = 41;

/// The lengths of the sealed rows of [`Table::Groups`] that differ between two snapshots.
fn changed_group_rows(
    before: &std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>>,
    after: &std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>>,
) -> Vec<usize> {
    after
        .iter()
        .filter(|(key, value)| key.0 == Table::Groups && before.get(*key) != Some(*value))
        .map(|(_, value)| value.len())
        .collect()
}

const PICKLE_KEY: [u8; 32] = [7; 32];

/// Computes every figure.
pub fn figures() -> Figures {
    let mut out = Figures::default();

    // samizdat sizes: after the handshake (the initiator still carries the prekey header until
    // it hears back), established, and after 10 round trips (5 receiving chains kept).
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let mut fresh = Pair::new(3);
    let bundle = PreKeyBundle::from_bytes(&fresh.bundle).expect("bundle");
    let mut initiator = SessionRecord::new();
    initiator.initiate(&mut rng, &fresh.alice, &fresh.alice_address, &bundle).expect("initiate");
    let vz_fresh = {
        let alice = Account::new();
        let mut bob = Account::new();
        bob.generate_one_time_keys(1);
        let otk = *bob.one_time_keys().values().next().expect("otk");
        let a = alice.create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk).expect("outbound");
        a.pickle().encrypt(&PICKLE_KEY).len()
    };
    out.sizes.push((
        "session, initiator right after the handshake (before any reply)".to_owned(),
        Some(initiator.to_bytes().len()),
        Some(vz_fresh),
    ));
    let mut vz = VzPair::new();
    out.sizes.push((
        "session, established (one message each way), responder".to_owned(),
        Some(fresh.b.to_bytes().len()),
        Some(vz.b.pickle().encrypt(&PICKLE_KEY).len()),
    ));
    fresh.ping_pong(10);
    vz.ping_pong(10);
    out.sizes.push((
        STEADY_INITIATOR.to_owned(),
        Some(fresh.a.to_bytes().len()),
        Some(vz.a.pickle().encrypt(&PICKLE_KEY).len()),
    ));
    out.session_len = fresh.b.to_bytes().len();
    out.sizes.push((
        STEADY_RESPONDER.to_owned(),
        Some(out.session_len),
        Some(vz.b.pickle().encrypt(&PICKLE_KEY).len()),
    ));
    out.sizes.push((
        "prekey bundle (samizdat, with one-time keys) / signed one-time key (vodozemac, JSON text)".to_owned(),
        Some(fresh.bundle.len()),
        Some(vz_signed_otk(&vz.bob, vz.bob.curve25519_key()).0.len() + 64),
    ));

    // Wire overhead per message: chain messages, first messages, group messages.
    for n in PAYLOAD_SIZES {
        let payload = vec![0x5a; n];
        let ours = fresh.a_to_b(&payload);
        fresh.b_receive(&ours);
        if let Ok(Message::Ratchet(m)) = Message::from_bytes(&ours) {
            assert_eq!(m.body().len(), padded_len(n) + 16, "padding rule of core/src/padding.rs");
        }
        let theirs = vz_wire(&vz.a.encrypt(&payload).expect("encrypt")).1;
        out.overhead.push((format!("chain message, {}", size_label(n)), Some(ours.len() - n), Some(theirs.len() - n)));
    }
    for n in PAYLOAD_SIZES {
        let payload = vec![0x5a; n];
        let mut a = SessionRecord::new();
        a.initiate(&mut rng, &fresh.alice, &fresh.alice_address, &bundle).expect("initiate");
        let ours = a.encrypt(&mut rng, &payload).expect("encrypt");
        let alice = Account::new();
        let mut bob = Account::new();
        bob.generate_one_time_keys(1);
        let otk = *bob.one_time_keys().values().next().expect("otk");
        let mut s = alice.create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk).expect("out");
        let theirs = vz_wire(&s.encrypt(&payload).expect("encrypt")).1;
        out.overhead.push((
            format!("first (prekey) message, {}", size_label(n)),
            Some(ours.len() - n),
            Some(theirs.len() - n),
        ));
    }
    let group = GroupPair::new();
    for n in PAYLOAD_SIZES {
        let ours = group.alice_sends(&vec![0x5a; n]);
        assert_eq!(group.bob_receives(&ours), n);
        let mut megolm = vodozemac::megolm::GroupSession::new(vodozemac::megolm::SessionConfig::version_1());
        let bytes = megolm.encrypt(vec![0x5a; n]).to_bytes();
        out.overhead.push((format!("group message, {}", size_label(n)), Some(ours.len() - n), Some(bytes.len() - n)));
    }
    // The group rows a message rewrites, in the steady state (Bob remembers the last 128
    // iterations he decrypted): our chain's row on the sender, the sender's row on a member.
    for _ in 0..samizdat::limits::MAX_GROUP_USED_ITERATIONS {
        let m = group.alice_sends(b"fill");
        group.bob_receives(&m);
    }
    let (alice_before, bob_before) = (group.alice.backend().snapshot(), group.bob.backend().snapshot());
    let m = group.alice_sends(b"measured");
    group.bob_receives(&m);
    let own = changed_group_rows(&alice_before, &group.alice.backend().snapshot());
    let member = changed_group_rows(&bob_before, &group.bob.backend().snapshot());
    assert_eq!((own.len(), member.len()), (1, 1), "one group row per message on each side");
    out.group_own_row_len = own[0] - SEALED_OVERHEAD;
    out.group_member_row_len = member[0] - SEALED_OVERHEAD;
    out.sizes.push(("group: our chain's row, sealed".to_owned(), Some(own[0]), None));
    out.sizes.push((
        "group: a sender's chains row on a member, sealed, steady state (128 iterations remembered)".to_owned(),
        Some(member[0]),
        None,
    ));

    // The sealed session row of the device benchmarks (as stored: 41 bytes of sealing overhead).
    let setup = DeviceSetup::new(MemoryBackend::new());
    let row = setup
        .bob
        .backend()
        .snapshot()
        .into_iter()
        .find(|((table, _), _)| *table == Table::Sessions)
        .map(|(_, value)| value.len())
        .expect("a session row");
    out.row_len = row - 41;
    out.sizes.push(("device session row, sealed (after one message each way)".to_owned(), Some(row), None));
    out
}

// ---------------------------------------------------------------- the hand-over file

/// Writes everything `cargo xtask bench` needs besides criterion's estimates, one record a line,
/// fields separated by tabs:
///
/// ```text
/// prim      <id> <description>
/// floordesc <key> <how the terms come about>
/// floor     <key> <count> <primitive id>          (one line per term)
/// row       <section> <label> <ours id|-> <vodozemac id|-> <floor key|-> <per> <target|->
/// target    <name> <description> floor <max>
/// target    <name> <description> size <max> <figure label>
/// target    <name> <description> pairs <max> <numerator id> <denominator id> ...
/// target    <name> <description> na <reason>
/// size      <label> <samizdat|-> <vodozemac|->
/// overhead  <label> <samizdat|-> <vodozemac|->
/// ```
///
/// # Errors
/// An I/O error.
pub fn write_meta(path: &Path, figures: &Figures) -> std::io::Result<()> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let num = |v: Option<usize>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut s = String::new();
    for (id, what) in primitives(figures) {
        let _ = writeln!(s, "prim\t{id}\t{what}");
    }
    for floor in floors(figures) {
        let _ = writeln!(s, "floordesc\t{}\t{}", floor.key, floor.what);
        for term in floor.terms {
            let _ = writeln!(s, "floor\t{}\t{}\t{}", floor.key, term.count, term.prim);
        }
    }
    for r in rows() {
        let _ = writeln!(
            s,
            "row\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.section,
            r.label,
            opt(&r.ours),
            opt(&r.vodozemac),
            opt(&r.floor),
            r.per,
            r.target.unwrap_or("-")
        );
    }
    for (name, what, judge) in targets() {
        let how = match judge {
            Judge::Floor { max } => format!("floor\t{max}"),
            Judge::Size { label, max } => format!("size\t{max}\t{label}"),
            Judge::Pairs { pairs, max } => {
                let ids: Vec<String> = pairs.into_iter().map(|(a, b)| format!("{a}\t{b}")).collect();
                format!("pairs\t{max}\t{}", ids.join("\t"))
            }
            Judge::NotApplicable { reason } => format!("na\t{reason}"),
        };
        let _ = writeln!(s, "target\t{name}\t{what}\t{how}");
    }
    for (label, ours, theirs) in &figures.sizes {
        let _ = writeln!(s, "size\t{label}\t{}\t{}", num(*ours), num(*theirs));
    }
    for (label, ours, theirs) in &figures.overhead {
        let _ = writeln!(s, "overhead\t{label}\t{}\t{}", num(*ours), num(*theirs));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, s)
}
