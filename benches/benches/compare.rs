//! samizdat beside vodozemac, and the primitives that make up the floor of each operation, in one
//! criterion run. `cargo xtask bench` runs it with short times and writes `BENCHMARKS.md`;
//! `cargo test --all-targets` runs each routine once (criterion's test mode).
//!
//! The floors are composed in `benches/src/lib.rs`; every primitive they name is measured in the
//! `floor` group below, with the same crates samizdat uses (RustCrypto, dalek, libcrux).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use chacha20::ChaCha20Rng;
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, XChaCha20Poly1305,
    aead::{Aead, Payload},
};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, measurement::WallTime};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libcrux_ml_kem::mlkem1024;
use rand_core::{Rng, SeedableRng};
use samizdat::{
    address::Address,
    device::Device,
    limits::MAX_SKIP,
    session::SessionRecord,
    store::{Backend, MemoryBackend, Scrub, SqliteBackend},
};
use samizdat_benches::{
    BATCH, BODY_AD_LEN, DeviceSetup, Figures, GROUP_AD_LEN, GROUP_SIZES, GroupPair, GroupScale, HEADER_LEN,
    PAYLOAD_SIZES, PQ_SIGNED_LEN, PQXDH_IKM_LEN, Pair, PreKeySetup, ROW_AD_LEN, SESSION_AD_LEN, SPK_SIGNED_LEN,
    TRANSCRIPT_LEN, TempDir, VzGroupScale, VzPair, bench_mode, copy_store, figures, flip_in_body, flip_in_header,
    group_signed_len, padded_len, prim, thousands, vz_signed_otk, vz_wire, write_meta,
};
use sha2::{Digest, Sha256};
use vodozemac::{
    megolm::{GroupSession, InboundGroupSession, MegolmMessage},
    olm::{Account, OlmMessage, Session, SessionConfig, SessionPickle},
};
use x25519_dalek::{PublicKey, StaticSecret};

/// Messages made ahead (untimed) before a timed run of receipts: few, so that they are still in
/// the cache as a message just received would be (16 x 20 KiB fits in L2).
const CHUNK: u64 = 16;

/// Times `consume` over `iters` values made by `make`, `chunk` at a time; the making is not timed.
fn timed_in_chunks<S, M>(
    iters: u64,
    chunk: u64,
    state: &mut S,
    mut make: impl FnMut(&mut S) -> M,
    mut consume: impl FnMut(&mut S, M),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(chunk);
        let made: Vec<M> = (0..k).map(|_| make(state)).collect();
        let start = Instant::now();
        for m in made {
            consume(state, black_box(m));
        }
        total += start.elapsed();
        left -= k;
    }
    total
}

fn payload(n: usize) -> Vec<u8> {
    vec![0x5a; n]
}

// ---------------------------------------------------------------- the floor's primitives

/// Benchmarks `full_id` (`floor/<name>[/<parameter>]`) in the `floor` group, so that criterion's
/// id is `full_id`.
fn bench_prim<O>(g: &mut BenchmarkGroup<'_, WallTime>, full_id: &str, mut f: impl FnMut() -> O) {
    let name = full_id.strip_prefix("floor/").unwrap_or(full_id);
    match name.split_once('/') {
        Some((function, parameter)) => g.bench_function(BenchmarkId::new(function, parameter), |b| b.iter(&mut f)),
        None => g.bench_function(name, |b| b.iter(&mut f)),
    };
}

fn floor(c: &mut Criterion, figures: &Figures) {
    let mut g = c.benchmark_group("floor");
    let mut rng = ChaCha20Rng::from_seed([11; 32]);

    let secret = StaticSecret::random_from_rng(&mut rng);
    let peer = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    bench_prim(&mut g, prim::X25519_DH, || black_box(&secret).diffie_hellman(black_box(&peer)));
    bench_prim(&mut g, prim::X25519_KEYGEN, || {
        let s = StaticSecret::random_from_rng(&mut rng);
        (PublicKey::from(&s), s)
    });

    let signing = SigningKey::generate(&mut rng);
    let verifying = signing.verifying_key();
    let identity = verifying.to_bytes();
    bench_prim(&mut g, prim::ED_TO_X, || {
        VerifyingKey::from_bytes(black_box(&identity)).map(|k| k.to_montgomery().to_bytes())
    });
    let short = vec![0x33; SPK_SIGNED_LEN];
    bench_prim(&mut g, prim::ED_SIGN, || signing.sign(black_box(&short)));
    for len in [SPK_SIGNED_LEN, PQ_SIGNED_LEN] {
        let message = vec![0x33; len];
        let signature = signing.sign(&message);
        bench_prim(&mut g, &prim::ed_verify(len), || verifying.verify_strict(black_box(&message), &signature));
    }

    let mut seed = [0u8; 64];
    rng.fill_bytes(&mut seed);
    bench_prim(&mut g, prim::MLKEM_KEYGEN, || mlkem1024::generate_key_pair(black_box(seed)));
    let pair = mlkem1024::generate_key_pair(seed);
    let mut m = [0u8; 32];
    rng.fill_bytes(&mut m);
    bench_prim(&mut g, prim::MLKEM_ENCAPS, || mlkem1024::encapsulate(pair.public_key(), black_box(m)));
    let (ciphertext, _) = mlkem1024::encapsulate(pair.public_key(), m);
    bench_prim(&mut g, prim::MLKEM_DECAPS, || mlkem1024::decapsulate(pair.private_key(), black_box(&ciphertext)));
    bench_prim(&mut g, prim::MLKEM_EK_CHECK, || mlkem1024::validate_public_key(black_box(pair.public_key())));

    let key = [0x42u8; 32];
    bench_prim(&mut g, prim::HMAC, || {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(black_box(&key)).expect("any key length");
        mac.update(&[0x01]);
        mac.finalize().into_bytes()
    });
    let salt = [0u8; 32];
    let hkdf = |ikm: &[u8], info: &[u8], okm: &mut [u8]| {
        Hkdf::<Sha256>::new(Some(&salt), black_box(ikm)).expand(info, okm).expect("short output");
    };
    bench_prim(&mut g, prim::HKDF_44, || {
        let mut okm = [0u8; 44];
        hkdf(&key, b"samizdat/v1/ratchet/message-key", &mut okm);
        okm
    });
    bench_prim(&mut g, prim::HKDF_96, || {
        let mut okm = [0u8; 96];
        hkdf(&key, b"samizdat/v1/ratchet/root", &mut okm);
        okm
    });
    let ikm = vec![0x24; PQXDH_IKM_LEN];
    let info = vec![0x25; 17 + 32];
    bench_prim(&mut g, prim::HKDF_PQXDH, || {
        let mut okm = [0u8; 96];
        hkdf(&ikm, &info, &mut okm);
        okm
    });
    let transcript = vec![0x26; TRANSCRIPT_LEN];
    bench_prim(&mut g, prim::SHA256_TRANSCRIPT, || Sha256::digest(black_box(&transcript)));

    // Body: ChaCha20-Poly1305 with the key set up per message, as each message has its own key.
    let body_ad = vec![0x27; BODY_AD_LEN];
    let nonce = [0x28u8; 12];
    for n in PAYLOAD_SIZES {
        let padded = vec![0x29; padded_len(n)];
        bench_prim(&mut g, &prim::chacha_seal(padded.len()), || {
            ChaCha20Poly1305::new(&black_box(key).into())
                .encrypt(&nonce.into(), Payload { msg: &padded, aad: &body_ad })
                .expect("seal")
        });
        let sealed = ChaCha20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), Payload { msg: &padded, aad: &body_ad })
            .expect("seal");
        bench_prim(&mut g, &prim::chacha_open(padded.len()), || {
            ChaCha20Poly1305::new(&black_box(key).into())
                .decrypt(&nonce.into(), Payload { msg: &sealed, aad: &body_ad })
                .expect("open")
        });
    }

    // Group messages: the signature covers the associated data and the body; the body is sealed
    // with the group message's associated data.
    let group_ad = vec![0x2d; GROUP_AD_LEN];
    for n in PAYLOAD_SIZES {
        let signed = vec![0x2e; group_signed_len(n)];
        bench_prim(&mut g, &prim::ed_sign_group(signed.len()), || signing.sign(black_box(&signed)));
        let signature = signing.sign(&signed);
        bench_prim(&mut g, &prim::ed_verify(signed.len()), || verifying.verify_strict(black_box(&signed), &signature));
        let padded = vec![0x29; padded_len(n)];
        bench_prim(&mut g, &prim::chacha_seal_group(padded.len()), || {
            ChaCha20Poly1305::new(&black_box(key).into())
                .encrypt(&nonce.into(), Payload { msg: &padded, aad: &group_ad })
                .expect("seal")
        });
        let sealed = ChaCha20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), Payload { msg: &padded, aad: &group_ad })
            .expect("seal");
        bench_prim(&mut g, &prim::chacha_open_group(padded.len()), || {
            ChaCha20Poly1305::new(&black_box(key).into())
                .decrypt(&nonce.into(), Payload { msg: &sealed, aad: &group_ad })
                .expect("open")
        });
    }

    // Header and store rows: XChaCha20-Poly1305 with a random 24-byte nonce.
    let xnonce = [0x2a_u8; 24];
    let mut xchacha = |g: &mut BenchmarkGroup<'_, WallTime>, len: usize, ad_len: usize| {
        let plain = vec![0x2b; len];
        let ad = vec![0x2c; ad_len];
        bench_prim(g, &prim::xchacha_seal(len), || {
            let mut nonce = [0u8; 24];
            rng.fill_bytes(&mut nonce);
            XChaCha20Poly1305::new(&black_box(key).into()).encrypt(&nonce.into(), Payload { msg: &plain, aad: &ad })
        });
        let sealed = XChaCha20Poly1305::new(&key.into())
            .encrypt(&xnonce.into(), Payload { msg: &plain, aad: &ad })
            .expect("seal");
        bench_prim(g, &prim::xchacha_open(len), || {
            XChaCha20Poly1305::new(&black_box(key).into())
                .decrypt(&xnonce.into(), Payload { msg: &sealed, aad: &ad })
                .expect("open")
        });
        sealed
    };
    let header = xchacha(&mut g, HEADER_LEN, SESSION_AD_LEN);
    xchacha(&mut g, figures.row_len, ROW_AD_LEN);
    if figures.session_len != figures.row_len {
        xchacha(&mut g, figures.session_len, ROW_AD_LEN);
    }
    for len in figures.group_row_lens() {
        xchacha(&mut g, len, ROW_AD_LEN);
    }
    let wrong = [0x43u8; 32];
    let ad = vec![0x2c; SESSION_AD_LEN];
    bench_prim(&mut g, prim::XCHACHA_OPEN_FAIL, || {
        XChaCha20Poly1305::new(&black_box(wrong).into()).decrypt(&xnonce.into(), Payload { msg: &header, aad: &ad })
    });
    g.finish();
}

// ---------------------------------------------------------------- one-to-one sessions

fn chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain");
    for n in PAYLOAD_SIZES {
        let p = payload(n);
        let mut pair = Pair::new(1);
        g.bench_function(BenchmarkId::new("samizdat_send", n), |b| b.iter(|| pair.a_to_b(black_box(&p))));
        let mut pair = Pair::new(2);
        g.bench_function(BenchmarkId::new("samizdat_recv", n), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(iters, CHUNK, &mut pair, |s| s.a_to_b(&p), |s, m| assert_eq!(s.b_receive(&m), n))
            });
        });
        let mut pair = Pair::new(3);
        g.bench_function(BenchmarkId::new("samizdat_both", n), |b| {
            b.iter(|| {
                let m = pair.a_to_b(black_box(&p));
                pair.b_receive(&m)
            });
        });

        let mut vz = VzPair::new();
        g.bench_function(BenchmarkId::new("vodozemac_send", n), |b| {
            b.iter(|| vz_wire(&vz.a.encrypt(black_box(&p)).expect("encrypt")));
        });
        let mut vz = VzPair::new();
        g.bench_function(BenchmarkId::new("vodozemac_recv", n), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    CHUNK,
                    &mut vz,
                    |s| vz_wire(&s.a.encrypt(&p).expect("encrypt")),
                    |s, (kind, bytes)| {
                        let message = OlmMessage::from_parts(kind, &bytes).expect("decode");
                        assert_eq!(s.b.decrypt(&message).expect("decrypt").len(), n);
                    },
                )
            });
        });
        let mut vz = VzPair::new();
        g.bench_function(BenchmarkId::new("vodozemac_both", n), |b| {
            b.iter(|| {
                let (kind, bytes) = vz_wire(&vz.a.encrypt(black_box(&p)).expect("encrypt"));
                vz.b.decrypt(&OlmMessage::from_parts(kind, &bytes).expect("decode")).expect("decrypt")
            });
        });
    }
    g.finish();
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("pingpong");
    for n in PAYLOAD_SIZES {
        let p = payload(n);
        let mut pair = Pair::new(4);
        let mut turn = false;
        g.bench_function(BenchmarkId::new("samizdat", n), |b| {
            b.iter(|| {
                turn = !turn;
                if turn {
                    let m = pair.a_to_b(black_box(&p));
                    pair.b_receive(&m)
                } else {
                    let m = pair.b_to_a(black_box(&p));
                    pair.a_receive(&m)
                }
            });
        });
        let mut vz = VzPair::new();
        let mut turn = false;
        g.bench_function(BenchmarkId::new("vodozemac", n), |b| {
            b.iter(|| {
                turn = !turn;
                let (from, to) = if turn { (&mut vz.a, &mut vz.b) } else { (&mut vz.b, &mut vz.a) };
                let (kind, bytes) = vz_wire(&from.encrypt(black_box(&p)).expect("encrypt"));
                to.decrypt(&OlmMessage::from_parts(kind, &bytes).expect("decode")).expect("decrypt")
            });
        });
    }
    g.finish();
}

/// vodozemac's handshake state: the two accounts.
struct VzAccounts {
    alice: Account,
    bob: Account,
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    for n in PAYLOAD_SIZES {
        let p = payload(n);
        let mut pair = Pair::new(5);
        g.bench_function(BenchmarkId::new("samizdat", n), |b| b.iter(|| pair.handshake(black_box(&p))));

        // vodozemac: verify the signed one-time key (as a Matrix client does), create the outbound
        // session, encrypt the first message; the responder creates the inbound session from it
        // (which decrypts it). One-time keys are made untimed, a chunk ahead (an account keeps 100).
        let mut accounts = VzAccounts { alice: Account::new(), bob: Account::new() };
        let config = SessionConfig::version_1();
        g.bench_function(BenchmarkId::new("vodozemac", n), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    CHUNK,
                    &mut accounts,
                    |s| {
                        let otk = s.bob.generate_one_time_keys(1).created[0];
                        s.bob.mark_keys_as_published();
                        let (text, signature) = vz_signed_otk(&s.bob, otk);
                        (otk, text, signature)
                    },
                    |s, (otk, text, signature)| {
                        s.bob.ed25519_key().verify(text.as_bytes(), &signature).expect("signed one-time key");
                        let mut session =
                            s.alice.create_outbound_session(config, s.bob.curve25519_key(), otk).expect("outbound");
                        let (kind, bytes) = vz_wire(&session.encrypt(&p).expect("encrypt"));
                        let OlmMessage::PreKey(first) = OlmMessage::from_parts(kind, &bytes).expect("decode") else {
                            panic!("a pre-key message")
                        };
                        let inbound =
                            s.bob.create_inbound_session(config, s.alice.curve25519_key(), &first).expect("inbound");
                        assert_eq!(inbound.plaintext.len(), n);
                    },
                )
            });
        });
    }
    g.finish();
}

fn session(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    let mut pair = Pair::new(6);
    pair.ping_pong(10);
    let record = &pair.b;
    let bytes = record.to_bytes();
    g.bench_function("samizdat_serialize", |b| b.iter(|| black_box(record).to_bytes()));
    g.bench_function("samizdat_deserialize", |b| {
        b.iter(|| SessionRecord::from_bytes(black_box(&bytes)).expect("record"))
    });

    // Sealed as the store seals a row: XChaCha20-Poly1305, random nonce, row associated data.
    let cipher = XChaCha20Poly1305::new(&[0x44u8; 32].into());
    let ad = vec![0x2c; ROW_AD_LEN];
    let mut rng = ChaCha20Rng::from_seed([12; 32]);
    let mut seal = |plain: &[u8]| {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let sealed = cipher.encrypt(&nonce.into(), Payload { msg: plain, aad: &ad }).expect("seal");
        let mut out = Vec::with_capacity(1 + 24 + sealed.len());
        out.push(1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    };
    let sealed = seal(&bytes);
    g.bench_function("samizdat_serialize_sealed", |b| b.iter(|| seal(&black_box(record).to_bytes())));
    g.bench_function("samizdat_deserialize_sealed", |b| {
        b.iter(|| {
            let (nonce, body) = black_box(&sealed)[1..].split_at(24);
            let nonce: [u8; 24] = nonce.try_into().expect("nonce");
            let plain = cipher.decrypt(&nonce.into(), Payload { msg: body, aad: &ad }).expect("open");
            SessionRecord::from_bytes(&plain).expect("record")
        });
    });

    let mut vz = VzPair::new();
    vz.ping_pong(10);
    let key = [0x45u8; 32];
    let pickled = vz.b.pickle().encrypt(&key);
    g.bench_function("vodozemac_pickle", |b| b.iter(|| black_box(&vz.b).pickle().encrypt(&key)));
    g.bench_function("vodozemac_unpickle", |b| {
        b.iter(|| Session::from_pickle(SessionPickle::from_encrypted(black_box(&pickled), &key).expect("pickle")))
    });
    g.finish();
}

fn group(c: &mut Criterion) {
    let mut g = c.benchmark_group("group");
    for n in PAYLOAD_SIZES {
        let p = payload(n);
        // samizdat: public through the Device API only. Alice's `group_encrypt` in the steady
        // state (loads, opens, seals and writes her chain's row); Bob's `decrypt` + `commit` of
        // her messages in order (the same with her row of chains).
        let pair = GroupPair::new();
        g.bench_function(BenchmarkId::new("samizdat_device_encrypt", n), |b| {
            b.iter(|| pair.alice_sends(black_box(&p)));
        });
        // A new pair: Bob has not seen the messages encrypted above (he would skip them all).
        let pair = GroupPair::new();
        g.bench_function(BenchmarkId::new("samizdat_device_decrypt", n), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    CHUNK,
                    &mut (),
                    |()| pair.alice_sends(&p),
                    |(), m| {
                        assert_eq!(pair.bob_receives(&m), n);
                    },
                )
            });
        });

        let config = vodozemac::megolm::SessionConfig::version_1();
        let mut outbound = GroupSession::new(config);
        g.bench_function(BenchmarkId::new("vodozemac_encrypt", n), |b| {
            b.iter(|| outbound.encrypt(black_box(&p)).to_bytes());
        });
        let outbound = GroupSession::new(config);
        let inbound = InboundGroupSession::new(&outbound.session_key(), config);
        let mut state = (outbound, inbound);
        g.bench_function(BenchmarkId::new("vodozemac_decrypt", n), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    CHUNK,
                    &mut state,
                    |(out, _)| out.encrypt(&p).to_bytes(),
                    |(_, inb), bytes| {
                        let message = MegolmMessage::from_bytes(&bytes).expect("decode");
                        assert_eq!(inb.decrypt(&message).expect("decrypt").plaintext.len(), n);
                    },
                )
            });
        });
    }
    g.finish();
}

/// A sender's `group_encrypt` in groups of 10, 100 and 1,000 members (devices in memory, 64 B):
/// in the steady state (every member has the chain: one row read and written), and the first
/// message after a removal (a new chain, distributed in one pairwise message to each remaining
/// member: each session row read, advanced and written, the roster rewritten). Before each
/// rotation (untimed) a further member is added and removed. vodozemac's rotation: a new Megolm
/// session, its key Olm-encrypted for each member, the first message. Setup (a session per
/// member) is not timed. Returns the sizes of the largest rotation for the report.
fn group_scale(c: &mut Criterion) -> Vec<(String, Option<usize>, Option<usize>)> {
    let sizes: &[usize] = if bench_mode() { &GROUP_SIZES } else { &[3] };
    let p = payload(64);
    let mut figures = Vec::new();
    let mut g = c.benchmark_group("group_scale");
    g.sample_size(10);
    for &members in sizes {
        let scale = GroupScale::new(members);
        g.bench_function(BenchmarkId::new("samizdat_steady", members), |b| {
            b.iter(|| {
                let sent = scale.send(black_box(&p));
                assert!(sent.distributions.is_empty());
                sent.message
            });
        });
        g.bench_function(BenchmarkId::new("samizdat_rotation", members), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    1,
                    &mut (),
                    |()| scale.prepare_rotation(),
                    |(), ()| {
                        let sent = scale.send(&p);
                        assert_eq!(sent.distributions.len(), members);
                    },
                )
            });
        });
        let mut vz = VzGroupScale::new(members);
        g.bench_function(BenchmarkId::new("vodozemac_rotation", members), |b| {
            b.iter(|| vz.rotate(black_box(&p)));
        });
        if Some(&members) == sizes.last() {
            scale.prepare_rotation();
            let sent = scale.send(&p);
            let ours: usize = sent.distributions.iter().map(|d| d.message.len()).sum();
            let (_, theirs) = vz.rotate(&p);
            let m = thousands(members);
            println!(
                "group_scale: a rotation with {m} members sends {ours} bytes of distributions (vodozemac {theirs})"
            );
            figures.push((
                format!(
                    "group rotation with {m} members: the {m} distributions, in all (vodozemac: {m} Olm messages \
                     carrying the Megolm session key)"
                ),
                Some(ours),
                Some(theirs),
            ));
            figures.push((
                "group rotation: one distribution (a one-to-one message)".to_owned(),
                Some(ours / members),
                Some(theirs / members),
            ));
        }
    }
    g.finish();
    figures
}

// ---------------------------------------------------------------- devices over a store

fn device_ops<B: Backend>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, devices: &mut DeviceSetup<B>, n: usize) {
    let p = payload(n);
    g.bench_function(BenchmarkId::new(format!("{name}_encrypt"), n), |b| {
        b.iter(|| devices.bob_sends(black_box(&p)));
    });
    g.bench_function(BenchmarkId::new(format!("{name}_decrypt"), n), |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(iters, CHUNK, devices, |d| d.to_bob(&p), |d, m| assert_eq!(d.bob_receives(&m), n))
        });
    });
}

fn device_batch<B: Backend>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, devices: &mut DeviceSetup<B>, n: usize) {
    let p = payload(n);
    g.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                1,
                devices,
                |d| (0..BATCH).map(|_| (d.alice.address.clone(), d.to_bob(&p))).collect::<Vec<_>>(),
                |d, messages| {
                    let batch = d.bob.decrypt_batch(&messages).expect("batch");
                    assert!(batch.results().iter().all(Result::is_ok));
                    d.bob.commit_batch(batch).expect("commit");
                },
            )
        });
    });
}

fn device(c: &mut Criterion) {
    let dir = TempDir::new("device");
    let sqlite = |name: &str| SqliteBackend::open(dir.path().join(format!("{name}.db"))).expect("sqlite");
    {
        let mut g = c.benchmark_group("device");
        // One SQLite commit (with its fsync) per call: fewer samples keep the run short.
        g.sample_size(20);
        let mut on_sqlite = DeviceSetup::new(sqlite("single"));
        let mut in_memory = DeviceSetup::new(MemoryBackend::new());
        for n in PAYLOAD_SIZES {
            device_ops(&mut g, "sqlite", &mut on_sqlite, n);
            device_ops(&mut g, "memory", &mut in_memory, n);
        }
        // The same with 100 one-time prekeys of each kind held (every decrypt loads them).
        let mut loaded = DeviceSetup::new(MemoryBackend::new());
        loaded.bob.refill_prekeys(100, 100, UNIX_EPOCH).expect("refill");
        let p = payload(64);
        g.bench_function(BenchmarkId::new("memory_decrypt_100prekeys", 64), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(iters, CHUNK, &mut loaded, |d| d.to_bob(&p), |d, m| assert_eq!(d.bob_receives(&m), 64))
            });
        });
        g.finish();
    }
    let mut g = c.benchmark_group("device_batch");
    g.sample_size(10);
    let mut on_sqlite = DeviceSetup::new(sqlite("batch"));
    let mut in_memory = DeviceSetup::new(MemoryBackend::new());
    for n in PAYLOAD_SIZES {
        device_batch(&mut g, "sqlite", &mut on_sqlite, n);
        device_batch(&mut g, "memory", &mut in_memory, n);
    }
    g.finish();
}

/// Prekey messages on SQLite: each is the first message of a new session from a new peer, and its
/// cost should not depend on how many prekeys and remembered base keys the device holds
/// (PROTOCOL.md 14.7). `minimal`: one one-time prekey of each kind held (refilled, untimed, after
/// each message); `200+200`: 200 of each; `10000_base_keys`: no one-time prekey and 10,000
/// remembered base keys (each message uses the signed and last-resort prekeys, and its commit
/// remembers one more, evicting the oldest). `junk` is a 3-byte prekey envelope on the `200+200`
/// device: what a hostile sender can make the device do for free.
fn device_prekeys(c: &mut Criterion) {
    let dir = TempDir::new("prekeys");
    let sqlite = |name: &str| SqliteBackend::open(dir.path().join(format!("{name}.db"))).expect("sqlite");
    let mut minimal = PreKeySetup::new(sqlite("minimal"), 1);
    let mut full = PreKeySetup::new(sqlite("full"), 200);
    // 10,000 handshakes without a one-time prekey, made in memory (faster), then copied.
    let mut remembered = PreKeySetup::new(MemoryBackend::new(), 0);
    let count = if bench_mode() { 10_000 } else { 10 };
    for _ in 0..count {
        let message = remembered.first_message();
        remembered.receive(&message);
    }
    let on_disk = sqlite("base_keys");
    copy_store(remembered.bob.backend(), &on_disk);
    let mut remembered =
        remembered.with_device(Device::open_in(on_disk, &StorageKey::from_bytes([2; 32])).expect("open"));

    let mut g = c.benchmark_group("device_prekey");
    g.sample_size(10);
    for (name, setup) in [("minimal", &mut minimal), ("200+200", &mut full), ("10000_base_keys", &mut remembered)] {
        let (peer, wire) = setup.first_message();
        g.bench_function(BenchmarkId::new("sqlite_decrypt", name), |b| {
            b.iter(|| setup.bob.decrypt(&peer, black_box(&wire)).expect("decrypt"));
        });
        g.bench_function(BenchmarkId::new("sqlite_decrypt_commit", name), |b| {
            b.iter_custom(|iters| timed_in_chunks(iters, 1, setup, PreKeySetup::first_message, |s, m| s.receive(&m)));
        });
    }
    // A prekey message whose body was altered: the handshake runs in full (its keys are real),
    // then the first message fails.
    let (peer, wire) = full.first_message();
    let forged = flip_in_body(&wire);
    g.bench_function(BenchmarkId::new("sqlite_forged_body", "200+200"), |b| {
        b.iter(|| assert!(full.bob.decrypt(&peer, black_box(&forged)).is_err()));
    });
    let junk = [1, 0x0a, 0x00];
    let peer = Address::new("mallory", 1).expect("address");
    g.bench_function(BenchmarkId::new("sqlite_junk", "200+200"), |b| {
        b.iter(|| assert!(full.bob.decrypt(&peer, black_box(&junk)).is_err()));
    });
    g.finish();
}

/// What one hostile message costs the receiver (Bob, a device on SQLite), beside a genuine one:
/// `decrypt` alone (a failed message commits nothing; the genuine one is decrypted again and again
/// without a commit, for the same work). On an ordinary session (`normal`) and on a peer whose
/// record holds 2,000 skipped keys (`2000_skipped`, what a hostile peer can make us store):
/// random bytes, a message whose encrypted header no key opens, one whose header opens and whose
/// body does not, a replay of a message already decrypted, and a header 2,000 messages ahead
/// with a broken body, the first time and replayed (with another broken body).
fn device_hostile(c: &mut Criterion) {
    let dir = TempDir::new("hostile");
    let sqlite = |name: &str| SqliteBackend::open(dir.path().join(format!("{name}.db"))).expect("sqlite");
    let skipped = if bench_mode() { MAX_SKIP } else { 20 };
    // Both with the genuine message in the chain Bob receives on (no DH step).
    let mut normal = DeviceSetup::with_skipped(sqlite("normal"), 0);
    let mut loaded = DeviceSetup::with_skipped(sqlite("loaded"), skipped);
    let mut g = c.benchmark_group("device_hostile");
    g.sample_size(20);
    let garbage: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    for (name, setup) in [("normal", &mut normal), ("2000_skipped", &mut loaded)] {
        let genuine = setup.to_bob(b"genuine");
        let peer = setup.alice.address.clone();
        g.bench_function(BenchmarkId::new("sqlite_genuine_decrypt", name), |b| {
            b.iter(|| setup.bob.decrypt(&peer, black_box(&genuine)).expect("decrypt"));
        });
        let attempts: [(&str, Vec<u8>); 3] = [
            ("sqlite_garbage", garbage.clone()),
            ("sqlite_forged_header", flip_in_header(&genuine)),
            ("sqlite_forged_body", flip_in_body(&genuine)),
        ];
        for (id, bytes) in attempts {
            g.bench_function(BenchmarkId::new(id, name), |b| {
                b.iter(|| assert!(setup.bob.decrypt(&peer, black_box(&bytes)).is_err()));
            });
        }
        setup.bob_receives(&genuine);
        g.bench_function(BenchmarkId::new("sqlite_duplicate", name), |b| {
            b.iter(|| assert!(setup.bob.decrypt(&peer, black_box(&genuine)).is_err()));
        });
    }
    // Far ahead: each first-time forgery costs its sender 2,000 encryptions (untimed).
    let ahead = if bench_mode() { MAX_SKIP - 1 } else { 20 };
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("sqlite_far_ahead_first", "normal"), |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                1,
                &mut normal,
                |d| d.far_ahead_forgery(ahead),
                |d, m| assert!(d.bob.decrypt(&d.alice.address, &m).is_err()),
            )
        });
    });
    let refused = normal.far_ahead_forgery(ahead);
    let peer = normal.alice.address.clone();
    assert!(normal.bob.decrypt(&peer, &refused).is_err());
    let replay = flip_in_body(&flip_in_body(&refused));
    g.bench_function(BenchmarkId::new("sqlite_far_ahead_replay", "normal"), |b| {
        b.iter(|| assert!(normal.bob.decrypt(&peer, black_box(&replay)).is_err()));
    });
    g.finish();
}

/// One scrub of a SQLite store (`Device::scrub`: `VACUUM`, then a truncating checkpoint;
/// PROTOCOL.md 14.8) holding the sessions of 1,000 peers: Bob after a first message from each
/// (1,000 session rows, 1,000 remembered base keys), made in memory and copied. What opening the
/// store adds, and what a handle pays once per budget of writes (`MIN_SCRUB_BUDGET`, or the
/// database's size if larger).
fn device_scrub(c: &mut Criterion) {
    let dir = TempDir::new("scrub");
    let peers = if bench_mode() { 1_000 } else { 10 };
    let mut setup = PreKeySetup::new(MemoryBackend::new(), 0);
    for _ in 0..peers {
        let message = setup.first_message();
        setup.receive(&message);
    }
    let path = dir.path().join("peers.db");
    let on_disk = SqliteBackend::open(&path).expect("sqlite");
    copy_store(setup.bob.backend(), &on_disk);
    let bob = Device::open_in(on_disk, &StorageKey::from_bytes([2; 32])).expect("open");
    assert_eq!(bob.scrub().expect("scrub"), Scrub::Done);
    let size = std::fs::metadata(&path).expect("database").len();
    println!("device_scrub: {peers} peers, a database of {size} bytes");
    let mut g = c.benchmark_group("device_scrub");
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("sqlite_scrub", format!("{peers}_peers")), |b| {
        b.iter(|| assert_eq!(bob.scrub().expect("scrub"), Scrub::Done));
    });
    g.finish();
}

/// Encrypting and decrypting in order must not cost more because a peer made us store skipped
/// keys (their seeds are in a row of their own, their counters ranges in the session row,
/// PROTOCOL.md 13.1, 14.7): Bob on SQLite, with none, with 2,000 stored for the peer, and with
/// 1,000 left after the peer delivered every other one (1,000 runs).
fn device_scale(c: &mut Criterion) {
    let dir = TempDir::new("scale");
    let sqlite = |name: &str| SqliteBackend::open(dir.path().join(format!("{name}.db"))).expect("sqlite");
    let skipped = if bench_mode() { MAX_SKIP } else { 20 };
    let mut g = c.benchmark_group("device_scale");
    g.sample_size(20);
    let p = payload(64);
    for (name, mut setup) in [
        ("0", DeviceSetup::with_skipped(sqlite("empty"), 0)),
        ("2000", DeviceSetup::with_skipped(sqlite("skipped"), skipped)),
        ("1000_fragmented", DeviceSetup::with_fragmented_skipped(sqlite("fragmented"), skipped)),
    ] {
        g.bench_function(BenchmarkId::new("sqlite_encrypt", name), |b| {
            b.iter(|| setup.bob_sends(black_box(&p)));
        });
        g.bench_function(BenchmarkId::new("sqlite_decrypt", name), |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(iters, CHUNK, &mut setup, |d| d.to_bob(&p), |d, m| assert_eq!(d.bob_receives(&m), 64))
            });
        });
    }
    g.finish();
}

fn main() {
    let mut figures = figures();
    let mut c = Criterion::default().configure_from_args();
    floor(&mut c, &figures);
    chain(&mut c);
    ping_pong(&mut c);
    handshake(&mut c);
    session(&mut c);
    group(&mut c);
    let rotation = group_scale(&mut c);
    figures.sizes.extend(rotation);
    device(&mut c);
    device_prekeys(&mut c);
    device_hostile(&mut c);
    device_scale(&mut c);
    device_scrub(&mut c);
    c.final_summary();

    println!("\nSizes (bytes): samizdat / vodozemac");
    for (label, ours, theirs) in &figures.sizes {
        println!("  {label}: {ours:?} / {theirs:?}");
    }
    println!("Wire overhead per message (ciphertext - plaintext, bytes): samizdat / vodozemac");
    for (label, ours, theirs) in &figures.overhead {
        println!("  {label}: {ours:?} / {theirs:?}");
    }
    if bench_mode()
        && let Some(path) = std::env::var_os("SAMIZDAT_BENCH_META")
    {
        write_meta(std::path::Path::new(&path), &figures).expect("write the report's metadata");
    }
}
