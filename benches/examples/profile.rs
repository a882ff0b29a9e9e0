//! Runs one benchmarked operation in a loop, for a profiler (the numbers in `BENCHMARKS.md` come
//! from `cargo xtask bench`, not from here):
//!
//! ```sh
//! cargo build --release -p samizdat-benches --example profile
//! valgrind --tool=callgrind --toggle-collect='*profile::run*' \
//!     target/release/examples/profile handshake 200 [payload bytes, 64 by default]
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | head -60
//! ```
//!
//! Operations: `chain-send`, `chain-recv`, `chain-both`, `pingpong`, `handshake`, `serialize`, `deserialize`,
//! `device-encrypt`, `device-decrypt`, `device-decrypt-100prekeys` (the devices in memory),
//! `group-encrypt`, `group-decrypt` (a group message through a device in memory, steady state:
//! `group_encrypt`; `decrypt` + `commit`), `group-rotation <count> <members>` (the first
//! `group_encrypt` after a removal; the add and remove before it are not collected), and
//! `floor <key>`: the primitives of a floor composition of `benches/src/lib.rs` (for example
//! `floor handshake/64 200`), executed with the same crates, so that callgrind compares an
//! operation with its floor in instructions, free of timing noise. Setup runs outside `run`, so
//! `--toggle-collect` leaves it out.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::UNIX_EPOCH;

use chacha20::ChaCha20Rng;
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, XChaCha20Poly1305,
    aead::{Aead, Payload},
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libcrux_ml_kem::mlkem1024;
use rand_core::{Rng, SeedableRng};
use samizdat::{session::SessionRecord, store::MemoryBackend};
use samizdat_benches::{
    BODY_AD_LEN, DeviceSetup, GROUP_AD_LEN, GroupPair, GroupScale, PQXDH_IKM_LEN, Pair, ROW_AD_LEN, SESSION_AD_LEN,
    TRANSCRIPT_LEN, Term, figures, floors, prim,
};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// The inputs of every primitive, made ahead.
struct Primitives {
    rng: ChaCha20Rng,
    secret: StaticSecret,
    peer: PublicKey,
    signing: SigningKey,
    verifying: VerifyingKey,
    /// Signatures by length of the signed message (made on first use, outside the loop's
    /// steady state).
    signatures: Vec<(usize, ed25519_dalek::Signature)>,
    mlkem: mlkem1024::MlKem1024KeyPair,
    mlkem_ct: mlkem1024::MlKem1024Ciphertext,
    key: [u8; 32],
    buffer: Vec<u8>,
}

impl Primitives {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::from_seed([13; 32]);
        let secret = StaticSecret::random_from_rng(&mut rng);
        let peer = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
        let signing = SigningKey::generate(&mut rng);
        let verifying = signing.verifying_key();
        let mlkem = mlkem1024::generate_key_pair([7; 64]);
        let (mlkem_ct, _) = mlkem1024::encapsulate(mlkem.public_key(), [8; 32]);
        Self {
            rng,
            secret,
            peer,
            signing,
            verifying,
            signatures: Vec::new(),
            mlkem,
            mlkem_ct,
            key: [0x42; 32],
            buffer: vec![0x5a; 32 * 1024],
        }
    }

    /// Runs the primitive `id` (a criterion id of `samizdat_benches::prim`) once.
    fn run(&mut self, id: &str) {
        let sized = |prefix: &str| id.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
        let key = self.key;
        if id == prim::X25519_DH {
            black_box(self.secret.diffie_hellman(&self.peer));
        } else if id == prim::X25519_KEYGEN {
            let s = StaticSecret::random_from_rng(&mut self.rng);
            black_box(PublicKey::from(&s));
        } else if id == prim::ED_TO_X {
            black_box(VerifyingKey::from_bytes(self.verifying.as_bytes()).map(|k| k.to_montgomery()).ok());
        } else if id == prim::ED_SIGN {
            black_box(self.signing.sign(&self.buffer[..68]));
        } else if let Some(len) = sized("floor/ed25519_sign_group/") {
            black_box(self.signing.sign(&self.buffer[..len]));
        } else if let Some(len) =
            sized("floor/chacha20poly1305_seal_group/").or_else(|| sized("floor/chacha20poly1305_open_group/"))
        {
            let cipher = ChaCha20Poly1305::new(&key.into());
            let payload = Payload { msg: &self.buffer[..len], aad: &self.buffer[..GROUP_AD_LEN] };
            black_box(cipher.encrypt(&[3; 12].into(), payload).expect("seal"));
        } else if let Some(len) = sized("floor/ed25519_verify/") {
            let signature = match self.signatures.iter().find(|(l, _)| *l == len) {
                Some((_, signature)) => *signature,
                None => {
                    let signature = self.signing.sign(&self.buffer[..len]);
                    self.signatures.push((len, signature));
                    signature
                }
            };
            black_box(self.verifying.verify_strict(&self.buffer[..len], &signature).is_ok());
        } else if id == prim::MLKEM_KEYGEN {
            black_box(mlkem1024::generate_key_pair([9; 64]));
        } else if id == prim::MLKEM_ENCAPS {
            black_box(mlkem1024::encapsulate(self.mlkem.public_key(), [10; 32]));
        } else if id == prim::MLKEM_DECAPS {
            black_box(mlkem1024::decapsulate(self.mlkem.private_key(), &self.mlkem_ct));
        } else if id == prim::MLKEM_EK_CHECK {
            black_box(mlkem1024::validate_public_key(self.mlkem.public_key()));
        } else if id == prim::HMAC {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any key length");
            mac.update(&[1]);
            black_box(mac.finalize().into_bytes());
        } else if let Some(len) = sized("floor/hkdf_sha256/").or_else(|| sized("floor/hkdf_sha256_pqxdh/")) {
            let ikm_len = if id.contains("pqxdh") { PQXDH_IKM_LEN } else { 32 };
            let mut okm = [0u8; 96];
            Hkdf::<Sha256>::new(Some(&key), &self.buffer[..ikm_len])
                .expand(&self.buffer[..31], &mut okm[..len])
                .expect("short output");
            black_box(okm);
        } else if id == prim::SHA256_TRANSCRIPT {
            black_box(Sha256::digest(&self.buffer[..TRANSCRIPT_LEN]));
        } else if let Some(len) =
            sized("floor/chacha20poly1305_seal/").or_else(|| sized("floor/chacha20poly1305_open/"))
        {
            let cipher = ChaCha20Poly1305::new(&key.into());
            let payload = Payload { msg: &self.buffer[..len], aad: &self.buffer[..BODY_AD_LEN] };
            // An open costs a seal (same keystream and MAC work) once the tag is computed.
            black_box(cipher.encrypt(&[3; 12].into(), payload).expect("seal"));
        } else if let Some(len) = sized("floor/xchacha20poly1305_seal/")
            .or_else(|| sized("floor/xchacha20poly1305_open/"))
            .or_else(|| sized("floor/xchacha20poly1305_open_fail/"))
        {
            let ad_len = if len == 41 { SESSION_AD_LEN } else { ROW_AD_LEN };
            let cipher = XChaCha20Poly1305::new(&key.into());
            let mut nonce = [0u8; 24];
            self.rng.fill_bytes(&mut nonce);
            let payload = Payload { msg: &self.buffer[..len], aad: &self.buffer[..ad_len] };
            black_box(cipher.encrypt(&nonce.into(), payload).expect("seal"));
        } else {
            panic!("unknown primitive {id}");
        }
    }
}

/// One operation, its state made ahead.
enum Op {
    ChainSend(Pair),
    ChainRecv(Pair, Vec<Vec<u8>>),
    ChainBoth(Pair),
    PingPong(Pair),
    Handshake(Pair),
    Serialize(Pair),
    Deserialize(Vec<u8>),
    DeviceEncrypt(Box<DeviceSetup<MemoryBackend>>),
    DeviceDecrypt(Box<DeviceSetup<MemoryBackend>>, Vec<Vec<u8>>),
    GroupEncrypt(Box<GroupPair>),
    GroupDecrypt(Box<GroupPair>, Vec<Vec<u8>>),
    GroupRotation(Box<GroupScale>),
    Floor(Box<Primitives>, Vec<Term>),
}

#[inline(never)]
fn run(op: &mut Op, n: usize, payload: &[u8]) {
    match op {
        Op::ChainSend(pair) => {
            for _ in 0..n {
                black_box(pair.a_to_b(payload));
            }
        }
        Op::ChainRecv(pair, messages) => {
            for m in messages.drain(..) {
                black_box(pair.b_receive(&m));
            }
        }
        Op::ChainBoth(pair) => {
            for _ in 0..n {
                let m = pair.a_to_b(payload);
                black_box(pair.b_receive(&m));
            }
        }
        Op::PingPong(pair) => {
            for i in 0..n {
                if i % 2 == 0 {
                    let m = pair.a_to_b(payload);
                    pair.b_receive(&m);
                } else {
                    let m = pair.b_to_a(payload);
                    pair.a_receive(&m);
                }
            }
        }
        Op::Handshake(pair) => {
            for _ in 0..n {
                black_box(pair.handshake(payload));
            }
        }
        Op::Serialize(pair) => {
            for _ in 0..n {
                black_box(pair.b.to_bytes());
            }
        }
        Op::Deserialize(bytes) => {
            for _ in 0..n {
                black_box(SessionRecord::from_bytes(bytes).expect("record"));
            }
        }
        Op::DeviceEncrypt(setup) => {
            for _ in 0..n {
                black_box(setup.bob_sends(payload));
            }
        }
        Op::DeviceDecrypt(setup, messages) => {
            for m in messages.drain(..) {
                black_box(setup.bob_receives(&m));
            }
        }
        Op::GroupEncrypt(pair) => {
            for _ in 0..n {
                black_box(pair.alice_sends(payload));
            }
        }
        Op::GroupDecrypt(pair, messages) => {
            for m in messages.drain(..) {
                black_box(pair.bob_receives(&m));
            }
        }
        Op::GroupRotation(scale) => {
            for _ in 0..n {
                black_box(scale.send(payload));
                // Untimed for criterion, counted here: nested `run_*` toggles collection off.
                run_untimed_prepare_rotation(scale);
            }
        }
        Op::Floor(primitives, terms) => {
            for _ in 0..n {
                for term in terms.iter() {
                    for _ in 0..term.count {
                        primitives.run(&term.prim);
                    }
                }
            }
        }
    }
}

/// Adds and removes the leaver. Its name matches `--toggle-collect='*profile::run*'` too, so
/// callgrind stops collecting on entering it from `run` and resumes on leaving it.
#[inline(never)]
fn run_untimed_prepare_rotation(scale: &GroupScale) {
    scale.prepare_rotation();
}

/// A pair in the middle of Alice's sending chain: Bob has already received one message on it, so
/// the loop measures chain messages only (the first one would carry Bob's DH step).
fn established_chain(payload: &[u8]) -> Pair {
    let mut pair = Pair::new(1);
    let first = pair.a_to_b(payload);
    pair.b_receive(&first);
    pair
}

/// A group pair in the steady state: Bob remembers the last 128 iterations he decrypted (the most
/// his row of Alice's chains holds), so the rows have their steady-state sizes.
fn steady_group() -> GroupPair {
    let pair = GroupPair::new();
    for _ in 0..samizdat::limits::MAX_GROUP_USED_ITERATIONS {
        let m = pair.alice_sends(b"fill");
        pair.bob_receives(&m);
    }
    pair
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("handshake", String::as_str);
    if name == "floor" {
        let key = args.get(2).map_or("handshake/64", String::as_str);
        let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
        let floor = floors(&figures()).into_iter().find(|f| f.key == key).expect("a floor key of benches/src/lib.rs");
        let mut primitives = Box::new(Primitives::new());
        // Each primitive once outside `run`, so that first-use setup (signatures made on demand)
        // is not counted: the count per operation then does not depend on `n`.
        for term in &floor.terms {
            primitives.run(&term.prim);
        }
        run(&mut Op::Floor(primitives, floor.terms), n, &[]);
        return;
    }
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let payload = vec![0x5a; size];
    let mut op = match name {
        "chain-send" => Op::ChainSend(established_chain(&payload)),
        "chain-recv" => {
            let mut pair = established_chain(&payload);
            let messages = (0..n).map(|_| pair.a_to_b(&payload)).collect();
            Op::ChainRecv(pair, messages)
        }
        "chain-both" => Op::ChainBoth(established_chain(&payload)),
        "pingpong" => {
            let mut pair = Pair::new(1);
            pair.ping_pong(10);
            Op::PingPong(pair)
        }
        "handshake" => Op::Handshake(Pair::new(1)),
        "serialize" | "deserialize" => {
            let mut pair = Pair::new(1);
            pair.ping_pong(10);
            if name == "serialize" { Op::Serialize(pair) } else { Op::Deserialize(pair.b.to_bytes().to_vec()) }
        }
        "device-encrypt" => Op::DeviceEncrypt(Box::new(DeviceSetup::new(MemoryBackend::new()))),
        "device-decrypt" | "device-decrypt-100prekeys" => {
            let mut setup = DeviceSetup::new(MemoryBackend::new());
            if name.ends_with("100prekeys") {
                setup.bob.refill_prekeys(100, 100, UNIX_EPOCH).expect("refill");
            }
            let messages = (0..n).map(|_| setup.to_bob(&payload)).collect();
            Op::DeviceDecrypt(Box::new(setup), messages)
        }
        "group-encrypt" => Op::GroupEncrypt(Box::new(steady_group())),
        "group-decrypt" => {
            let pair = steady_group();
            let messages = (0..n).map(|_| pair.alice_sends(&payload)).collect();
            Op::GroupDecrypt(Box::new(pair), messages)
        }
        "group-rotation" => {
            // The third argument is the number of members here; the payload is 64 bytes.
            let scale = GroupScale::new(size);
            scale.prepare_rotation();
            let payload = vec![0x5a; 64];
            run(&mut Op::GroupRotation(Box::new(scale)), n, &payload);
            return;
        }
        other => panic!("unknown operation {other}"),
    };
    run(&mut op, n, &payload);
}
