//! Attachment throughput beside the primitive (issue 18): `attachment::encrypt`
//! and `attachment::decrypt` of 1 MiB and 100 MiB, in MB/s, beside raw
//! ChaCha20-Poly1305 sealing and opening the same bytes in the same 64 KiB
//! pieces, in the same run; and the most memory each call had allocated at
//! once (an allocation counter). Each figure is the best of 5 rounds, a
//! round timing as many calls as make about 64 MiB (64 at 1 MiB, one at
//! 100 MiB) and giving their mean, so that a sub-millisecond call is not
//! timed alone. Last, the cost per 64 KiB chunk of sealing and of the two
//! hashes the digest could use (SHA-256, BLAKE3), each alone on one thread:
//! why the digest is BLAKE3 (PROTOCOL.md 22.2).
//!
//! `cargo bench -p samizdat-benches --bench attachment`. Run as a test (no
//! `--bench` argument, as `cargo test --all-targets` does), it runs once on
//! 1 MiB and checks the round trip, so the harness cannot rot; its numbers are
//! printed, never asserted.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use samizdat::attachment::{self, CHUNK_LEN};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result, its time, and the most bytes it had
/// allocated at once beyond what was live before.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    (out, took, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// The primitive's floor: seal every 64 KiB piece in place (the same
/// pieces, nonces of the same shape, no padding, no hash, no copy).
fn raw_seal(data: &mut [u8], tags: &mut Vec<[u8; 16]>) {
    let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
    tags.clear();
    for (i, piece) in data.chunks_mut(CHUNK_LEN).enumerate() {
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&(i as u64).to_be_bytes());
        tags.push(cipher.encrypt_inout_detached(&Nonce::from(nonce), &[], piece.into()).unwrap().into());
    }
}

fn raw_open(data: &mut [u8], tags: &[[u8; 16]]) {
    let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
    for (i, piece) in data.chunks_mut(CHUNK_LEN).enumerate() {
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&(i as u64).to_be_bytes());
        cipher.decrypt_inout_detached(&Nonce::from(nonce), &[], piece.into(), &tags[i].into()).unwrap();
    }
}

/// The files each timing covers at `size`: enough for about 64 MiB, so that
/// a 1 MiB call (well under a millisecond) is timed over many calls, as
/// criterion would, rather than once.
fn calls_per_timing(size: usize) -> usize {
    (64usize << 20).div_ceil(size).max(1)
}

/// The mean time of `body` over `calls` runs on `state`, each after an
/// untimed `setup`, and the most memory any run had allocated at once.
fn timed<S>(calls: usize, state: &mut S, setup: impl Fn(&mut S), body: impl Fn(&mut S)) -> (Duration, usize) {
    let (mut total, mut peak) = (Duration::ZERO, 0);
    for _ in 0..calls {
        setup(state);
        let ((), took, one) = measured(|| body(state));
        total += took;
        peak = peak.max(one);
    }
    (total / u32::try_from(calls).unwrap_or(u32::MAX), peak)
}

/// The best of `rounds` mean times of `f` over every 64 KiB piece of
/// `data`, per piece, in microseconds.
fn per_chunk(data: &mut [u8], rounds: usize, mut f: impl FnMut(&mut [u8])) -> f64 {
    let pieces = data.len().div_ceil(CHUNK_LEN).max(1);
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        data.chunks_mut(CHUNK_LEN).for_each(&mut f);
        best = best.min(started.elapsed());
    }
    best.as_secs_f64() * 1e6 / pieces as f64
}

/// Sealing, SHA-256 and BLAKE3 of one 64 KiB chunk, each alone.
fn chunk_costs(rounds: usize) {
    let mut data = vec![0x5au8; 16 << 20];
    let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
    let seal = per_chunk(&mut data, rounds, |piece| {
        std::hint::black_box(cipher.encrypt_inout_detached(&Nonce::from([0; 12]), &[], piece.into()).unwrap());
    });
    let sha256 = per_chunk(&mut data, rounds, |piece| {
        std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(&*piece));
    });
    let blake3 = per_chunk(&mut data, rounds, |piece| {
        std::hint::black_box(blake3::hash(piece));
    });
    println!("per 64 KiB chunk, one thread: sealing {seal:.1} µs, SHA-256 {sha256:.1} µs, BLAKE3 {blake3:.1} µs");
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if benching { &[1 << 20, 100 << 20] } else { &[1 << 20] };
    let rounds = if benching { 5 } else { 1 };
    for &size in sizes {
        let calls = if benching { calls_per_timing(size) } else { 1 };
        let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        // Both outputs are allocated once and reused, so that every call
        // but the first writes into memory already touched: the raw runs
        // work in place, and a fresh buffer's page faults are not the
        // construction's cost.
        let mut blob = Vec::with_capacity(size + size / 8 + 4096);
        let mut out = Vec::with_capacity(size);
        let (mut data, mut scratch) = (plaintext.clone(), plaintext.clone());
        let mut tags = Vec::with_capacity(size / CHUNK_LEN + 1);
        let (mut best_enc, mut best_dec, mut best_raw_seal, mut best_raw_open) =
            (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
        let (mut peak_enc, mut peak_dec) = (0, 0);
        for _ in 0..rounds {
            let mut sent = None;
            let (took, peak) = timed(
                calls,
                &mut (&mut blob, &mut sent),
                |(blob, _)| blob.clear(),
                |(blob, sent)| **sent = Some(attachment::encrypt(&plaintext[..], &mut **blob).unwrap()),
            );
            best_enc = best_enc.min(took);
            peak_enc = peak_enc.max(peak);
            let sent = sent.unwrap();
            let (took, peak) = timed(calls, &mut out, Vec::clear, |out| {
                attachment::decrypt(&sent, &blob[..], out).unwrap();
            });
            best_dec = best_dec.min(took);
            peak_dec = peak_dec.max(peak);
            assert!(out == plaintext, "the round trip");
            // Sealing costs the same whatever the bytes: `scratch` is sealed
            // again and again. `data` is sealed (untimed), then opened back.
            let (took, _) =
                timed(calls, &mut (&mut scratch, &mut tags), |_| {}, |(scratch, tags)| raw_seal(scratch, tags));
            best_raw_seal = best_raw_seal.min(took);
            let (took, _) = timed(
                calls,
                &mut (&mut data, &mut tags),
                |(data, tags)| raw_seal(data, tags),
                |(data, tags)| raw_open(data, tags),
            );
            best_raw_open = best_raw_open.min(took);
            assert!(data == plaintext, "the raw round trip");
        }
        let label = if size >= 1 << 20 { format!("{} MiB", size >> 20) } else { format!("{size} B") };
        println!(
            "attachment {label}: encrypt {:.0} MB/s (raw ChaCha20-Poly1305 {:.0} MB/s, {:.2}x), decrypt {:.0} MB/s \
             (raw {:.0} MB/s, {:.2}x); peak allocation: encrypt {} KiB, decrypt {} KiB",
            mb_per_s(size, best_enc),
            mb_per_s(size, best_raw_seal),
            best_raw_seal.as_secs_f64() / best_enc.as_secs_f64(),
            mb_per_s(size, best_dec),
            mb_per_s(size, best_raw_open),
            best_raw_open.as_secs_f64() / best_dec.as_secs_f64(),
            peak_enc / 1024,
            peak_dec / 1024,
        );
    }
    chunk_costs(if benching { 5 } else { 1 });
}
