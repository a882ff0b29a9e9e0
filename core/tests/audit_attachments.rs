//! Outside audit of the attachment encryption after commit 7e725f2 (the
//! digest is BLAKE3, description version 2): PROTOCOL.md 2.2 (BLAKE3) and
//! 22, code in `core/src/attachment/`.
//!
//! Every expectation here comes from the protocol text, read as a
//! reimplementer would: the construction of 22.1, the description of 22.2
//! and the decryption steps of 22.3 are written again below (`spec_*`,
//! `model_decrypt`) with the `chacha20poly1305` and `blake3` crates alone,
//! and the library is compared with them byte for byte, error for error,
//! and for what it writes before an error. Readers and writers that give one
//! byte at a time, fail with `Interrupted`, or sleep at random drive the
//! two-thread pipeline through many interleavings.
//!
//! A test marked `#[ignore = "FINDING: ..."]` fails on the code as audited
//! (one: a range read is bound to the description by neither the digest
//! nor the padding, which 22.2's new paragraph on the digest overlooks).
//! Checked against three mutants built from a scratch change of the library
//! (the tags left out of the pipeline's hash, version 1 accepted, the padding
//! check of `decrypt` removed): nine of these tests fail on them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{self, Cursor, Read, Seek, SeekFrom, Write},
    path::PathBuf,
    sync::{
        PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, aead::Aead};
use samizdat::{
    ErrorKind,
    attachment::{self, ATTACHMENT_LEN, Attachment, AttachmentError, Decryptor, Encryptor, MAX_ATTACHMENT_LEN},
};

// ---------------------------------------------------------------------------
// Memory: a global allocator that counts the bytes live on every thread (the
// pipeline's second thread included) and the peak. The memory test holds the
// gate alone; every other test holds it shared, so that nothing else
// allocates while it measures.
// ---------------------------------------------------------------------------

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static GATE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(PoisonError::into_inner)
}

/// The most bytes live at once while `f` ran, beyond those live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

// ---------------------------------------------------------------------------
// PROTOCOL.md 22.1 and 22.2, written again from the text.
// ---------------------------------------------------------------------------

const CHUNK: u64 = 65_536;
const TAG: u64 = 16;
const SEALED: u64 = CHUNK + TAG;

/// Padmé of `l >= 1`, as 22.1 states it.
fn spec_padme(l: u64) -> u64 {
    let e = u64::from(63 - l.leading_zeros());
    let s = if e == 0 { 0 } else { u64::from(64 - e.leading_zeros()) };
    let mask = if e <= s { 0 } else { (1u64 << (e - s)) - 1 };
    (l + mask) & !mask
}

fn spec_padded(n: u64) -> u64 {
    spec_padme(n + 1).max(1024)
}

fn spec_chunks(n: u64) -> u64 {
    spec_padded(n).div_ceil(CHUNK)
}

fn spec_ciphertext_len(n: u64) -> u64 {
    spec_padded(n) + TAG * spec_chunks(n)
}

/// The plaintext bytes of chunk `i` of a file of `n` bytes.
fn spec_body_len(n: u64, i: u64) -> usize {
    (spec_padded(n) - i * CHUNK).min(CHUNK) as usize
}

fn spec_nonce(i: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&i.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::from(nonce)
}

/// `Stream(P)`: the plaintext, 0x80, zeros up to `PaddedLen`.
fn spec_stream(plaintext: &[u8]) -> Vec<u8> {
    let mut stream = plaintext.to_vec();
    stream.push(0x80);
    stream.resize(spec_padded(plaintext.len() as u64) as usize, 0);
    stream
}

/// Seals a padded stream chunk by chunk (any stream: a hostile sender's too).
fn spec_seal(key: &[u8; 32], stream: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let chunks = stream.len().div_ceil(CHUNK as usize).max(1);
    let mut blob = Vec::new();
    for (i, chunk) in stream.chunks(CHUNK as usize).enumerate() {
        let i = i as u64;
        blob.extend(cipher.encrypt(&spec_nonce(i, i + 1 == chunks as u64), chunk).unwrap());
    }
    blob
}

/// `0x02 || key || digest || u64be(plaintext_len) || u64be(ciphertext_len)`.
fn spec_description(key: &[u8; 32], digest: &[u8; 32], n: u64, ciphertext_len: u64) -> Vec<u8> {
    [&[2u8][..], key, digest, &n.to_be_bytes(), &ciphertext_len.to_be_bytes()].concat()
}

/// The description and ciphertext of `plaintext` under `key`, per 22.1/22.2.
fn spec_encrypt(key: &[u8; 32], plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let blob = spec_seal(key, &spec_stream(plaintext));
    let n = plaintext.len() as u64;
    (spec_description(key, blake3::hash(&blob).as_bytes(), n, spec_ciphertext_len(n)), blob)
}

/// A description (version 2) that a hostile sender made of its own parts.
fn forged(key: &[u8; 32], blob: &[u8], n: u64) -> Attachment {
    Attachment::from_bytes(&spec_description(key, blake3::hash(blob).as_bytes(), n, spec_ciphertext_len(n))).unwrap()
}

fn key_of(sent: &Attachment) -> [u8; 32] {
    sent.to_bytes()[1..33].try_into().unwrap()
}

/// `plaintext` encrypted by the library (`encrypt`, from a slice: its
/// second thread from the second chunk on): the key it drew, the
/// description's bytes and the blob. Further blobs under that key (a
/// hostile sender's) come from [`spec_seal`].
fn library(plaintext: &[u8]) -> ([u8; 32], Vec<u8>, Vec<u8>) {
    let mut blob = Vec::new();
    let sent = attachment::encrypt(plaintext, &mut blob).unwrap();
    (key_of(&sent), sent.to_bytes().to_vec(), blob)
}

/// What a decryption came to, without the error's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Unauthenticated(u64),
    WrongLength,
    Mismatch,
    Malformed,
    OutOfRange,
    Finished,
    Io,
    Other,
}

fn outcome<T>(result: &Result<T, AttachmentError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(AttachmentError::Unauthenticated { chunk }) => Outcome::Unauthenticated(*chunk),
        Err(AttachmentError::WrongLength) => Outcome::WrongLength,
        Err(AttachmentError::Mismatch) => Outcome::Mismatch,
        Err(AttachmentError::Malformed) => Outcome::Malformed,
        Err(AttachmentError::OutOfRange { .. }) => Outcome::OutOfRange,
        Err(AttachmentError::Finished) => Outcome::Finished,
        Err(AttachmentError::Io(_)) => Outcome::Io,
        Err(_) => Outcome::Other,
    }
}

/// `Decrypt(A, input, output)` of 22.3, step by step: the outcome, and the
/// bytes written to the output by then.
fn model_decrypt(description: &[u8], blob: &[u8]) -> (Outcome, Vec<u8>) {
    let key: [u8; 32] = description[1..33].try_into().unwrap();
    let digest = &description[33..65];
    let n = u64::from_be_bytes(description[65..73].try_into().unwrap());
    let cipher = ChaCha20Poly1305::new(&key.into());
    let chunks = spec_chunks(n);
    let (mut at, mut out, mut padding_ok) = (0usize, Vec::new(), true);
    for i in 0..chunks {
        let len = spec_body_len(n, i);
        let Some(sealed) = blob.get(at..at + len + TAG as usize) else { return (Outcome::WrongLength, out) };
        let Ok(body) = cipher.decrypt(&spec_nonce(i, i + 1 == chunks), sealed) else {
            return (Outcome::Unauthenticated(i), out);
        };
        for (j, byte) in body.iter().enumerate() {
            let position = i * CHUNK + j as u64;
            match position.cmp(&n) {
                std::cmp::Ordering::Less => out.push(*byte),
                std::cmp::Ordering::Equal => padding_ok &= *byte == 0x80,
                std::cmp::Ordering::Greater => padding_ok &= *byte == 0,
            }
        }
        at += len + TAG as usize;
    }
    if blob.len() > at {
        return (Outcome::WrongLength, out);
    }
    if blake3::hash(blob).as_bytes() != digest || !padding_ok {
        return (Outcome::Mismatch, out);
    }
    (Outcome::Ok, out)
}

// ---------------------------------------------------------------------------
// Inputs, outputs, and files.
// ---------------------------------------------------------------------------

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// How an awkward reader or writer behaves: at most `max` bytes a call, an
/// `Interrupted` error one call in `interrupt` (0: never), a sleep of up to
/// 2 ms one call in `sleep` (0: never).
#[derive(Clone, Copy)]
struct Awkward {
    max: usize,
    interrupt: usize,
    sleep: usize,
}

impl Awkward {
    const ONE_BYTE: Self = Self { max: 1, interrupt: 0, sleep: 0 };
    const INTERRUPTED: Self = Self { max: 5000, interrupt: 2, sleep: 0 };

    /// Before a call: `Err(Interrupted)`, or how many bytes to take.
    fn step(&self, rng: &mut Rng, offered: usize) -> io::Result<usize> {
        if self.interrupt > 0 && rng.below(self.interrupt) == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.sleep > 0 && rng.below(self.sleep) == 0 {
            std::thread::sleep(Duration::from_micros(rng.below(2000) as u64));
        }
        Ok(offered.min(1 + rng.below(self.max)))
    }
}

struct AwkwardReader<R> {
    inner: R,
    how: Awkward,
    rng: Rng,
}

impl<R: Read> Read for AwkwardReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.how.step(&mut self.rng, buf.len())?;
        self.inner.read(&mut buf[..n])
    }
}

struct AwkwardWriter {
    out: Vec<u8>,
    how: Awkward,
    rng: Rng,
}

impl Write for AwkwardWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.how.step(&mut self.rng, buf.len())?;
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that counts the bytes it gave, and the chunks a seek reached.
struct Counted<R> {
    inner: R,
    given: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.given += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counted<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

fn decrypt_all(sent: &Attachment, blob: &[u8]) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let result = attachment::decrypt(sent, blob, &mut out);
    (outcome(&result), out)
}

/// The [`Decryptor`] fed `blob` in pieces of `piece` bytes: the outcome of
/// the first failing call (or of `finish`), and what it handed out.
fn decrypt_pieces(sent: &Attachment, blob: &[u8], piece: usize) -> (Outcome, Vec<u8>) {
    let mut decryptor = Decryptor::new(sent);
    let mut out = Vec::new();
    for bytes in blob.chunks(piece.max(1)) {
        let result = decryptor.update(bytes, &mut out);
        if result.is_err() {
            // Stays failed.
            assert_eq!(outcome(&decryptor.update(&[], &mut out)), Outcome::Finished);
            return (outcome(&result), out);
        }
    }
    (outcome(&decryptor.finish()), out)
}

/// A directory of its own for one test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("samizdat-audit-attach-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sizes of 22's boundaries: nothing, one byte, one chunk less one, one
/// chunk, one more, three chunks.
const BOUNDARIES: [usize; 6] = [0, 1, 65_535, 65_536, 65_537, 3 * 65_536];

// ---------------------------------------------------------------------------
// The digest and the bytes (22.1, 22.2).
// ---------------------------------------------------------------------------

/// Attacks the format as a whole: under the key `encrypt` drew (its
/// pipeline, the second thread from the second chunk on), the ciphertext,
/// the digest and the 81-byte description must be, byte for byte, what a
/// reimplementation of 22.1 and 22.2 makes, at every chunk and class
/// boundary.
#[test]
fn a_reimplementation_from_the_text_gives_the_same_blob_digest_and_description() {
    let _gate = shared();
    let sizes = BOUNDARIES.into_iter().chain([1023, 1024, 131_071, 131_072, 4 * 65_536 + 12_345]);
    for (seed, len) in sizes.enumerate() {
        let plaintext = data(len, seed as u64);
        let (key, description, blob) = library(&plaintext);
        let (spec_description, spec_blob) = spec_encrypt(&key, &plaintext);
        assert_eq!(blob.len() as u64, spec_ciphertext_len(len as u64), "{len}");
        assert!(blob == spec_blob, "the ciphertext of {len} bytes is not 22.1's");
        assert_eq!(description.len(), ATTACHMENT_LEN);
        assert_eq!(hex::encode(&description), hex::encode(&spec_description), "the description of {len} bytes");
        let sent = Attachment::from_bytes(&description).unwrap();
        assert_eq!(&sent.digest(), blake3::hash(&blob).as_bytes());
        assert_eq!(model_decrypt(&description, &blob), (Outcome::Ok, plaintext));
    }
}

/// Attacks what the digest covers: it must be the unkeyed BLAKE3 of every
/// sealed chunk with its tag, in order, and of nothing else (not the
/// plaintext, not the bodies without their tags, not keyed, not chunks in
/// another order), for files made with a random key by `encrypt`.
#[test]
fn the_digest_is_blake3_of_every_sealed_chunk_in_order_and_nothing_else() {
    let _gate = shared();
    for len in BOUNDARIES {
        let plaintext = data(len, 7);
        let mut blob = Vec::new();
        let sent = attachment::encrypt(&plaintext[..], &mut blob).unwrap();
        let chunks: Vec<&[u8]> = blob.chunks(SEALED as usize).collect();
        assert_eq!(chunks.len() as u64, spec_chunks(len as u64));
        let mut hasher = blake3::Hasher::new();
        for chunk in &chunks {
            hasher.update(chunk);
        }
        assert_eq!(&sent.digest(), hasher.finalize().as_bytes(), "{len}");
        assert_eq!(&sent.digest(), blake3::hash(&blob).as_bytes());
        let key = key_of(&sent);
        let bodies: Vec<u8> = chunks.iter().flat_map(|c| &c[..c.len() - TAG as usize]).copied().collect();
        let reversed: Vec<u8> = chunks.iter().rev().flat_map(|c| c.iter()).copied().collect();
        let others = [
            *blake3::hash(&plaintext).as_bytes(),
            *blake3::hash(&spec_stream(&plaintext)).as_bytes(),
            *blake3::hash(&bodies).as_bytes(),
            *blake3::keyed_hash(&key, &blob).as_bytes(),
            blake3::derive_key("samizdat/v1/attachment", &blob),
            *blake3::hash(&[&blob[..], &[0]].concat()).as_bytes(),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(&sent.digest(), other, "{len}: the digest is alternative {i}");
        }
        if chunks.len() > 1 {
            assert_ne!(&sent.digest(), blake3::hash(&reversed).as_bytes(), "{len}: the order is not hashed");
        }
    }
}

/// Attacks the reading and writing loops: a reader that gives one byte at a
/// time, and one that fails with `Interrupted` every other call, with a
/// writer that does the same, must change no byte of the ciphertext or
/// digest (compared with 22.1 under the key the description names), and
/// decryption through them must give the file back.
#[test]
fn one_byte_and_interrupted_readers_and_writers_change_no_byte() {
    let _gate = shared();
    for (seed, len) in BOUNDARIES.into_iter().enumerate() {
        let plaintext = data(len, 100 + seed as u64);
        for how in [Awkward::ONE_BYTE, Awkward::INTERRUPTED] {
            let rng = |salt| Rng(seed as u64 * 31 + salt);
            let reader = AwkwardReader { inner: &plaintext[..], how, rng: rng(1) };
            let mut writer = AwkwardWriter { out: Vec::new(), how, rng: rng(2) };
            let sent = attachment::encrypt(reader, &mut writer).unwrap();
            let (description, blob) = spec_encrypt(&key_of(&sent), &plaintext);
            assert!(writer.out == blob, "{len}: the ciphertext through awkward i/o is not 22.1's");
            assert_eq!(sent.to_bytes()[..], description[..], "{len}");

            let reader = AwkwardReader { inner: &blob[..], how, rng: rng(3) };
            let mut writer = AwkwardWriter { out: Vec::new(), how, rng: rng(4) };
            attachment::decrypt(&sent, reader, &mut writer).unwrap();
            assert!(writer.out == plaintext, "{len}: decrypted through awkward i/o");
        }
    }
}

/// Attacks the ordering of the two-thread pipeline: readers that give
/// bursts of random length and writers that accept part of what they are
/// given, both sleeping at random, so that either thread runs ahead of the
/// other; the ciphertext must still be 22.1's (the hash of the chunks in
/// order) and decryption under the same disorder must give the file back.
#[test]
fn bursty_sleeping_io_keeps_the_chunks_and_the_hash_in_order() {
    let _gate = shared();
    let plaintext = data(9 * CHUNK as usize + 4321, 9);
    for seed in 0..6u64 {
        let how = Awkward { max: 2048 + seed as usize * 29_000, interrupt: 7, sleep: 8 };
        let reader = AwkwardReader { inner: &plaintext[..], how, rng: Rng(seed) };
        let mut writer = AwkwardWriter { out: Vec::new(), how, rng: Rng(seed + 100) };
        let sent = attachment::encrypt(reader, &mut writer).unwrap();
        let (_, blob) = spec_encrypt(&key_of(&sent), &plaintext);
        assert!(writer.out == blob, "seed {seed}: a chunk or the hash out of order");
        assert_eq!(&sent.digest(), blake3::hash(&blob).as_bytes());

        let reader = AwkwardReader { inner: &blob[..], how, rng: Rng(seed + 200) };
        let mut writer = AwkwardWriter { out: Vec::new(), how, rng: Rng(seed + 300) };
        attachment::decrypt(&sent, reader, &mut writer).unwrap();
        assert!(writer.out == plaintext, "seed {seed}: decrypted out of order");
    }
}

/// Attacks the agreement of the one-thread and two-thread paths: the
/// piece-at-a-time `Encryptor` (one thread), `encrypt_file` (the second
/// thread from the start: the length is known) and `encrypt` (from the
/// second chunk) must each make 22.1's ciphertext and digest, and each
/// path's blob must decrypt by the other path.
#[test]
fn the_encryptor_encrypt_file_and_encrypt_agree_with_the_text_and_each_other() {
    let _gate = shared();
    let dir = Dir::new("paths");
    let mut rng = Rng(5);
    for len in [65_536usize, 65_537, 3 * 65_536, 7 * 65_536 + 999] {
        let plaintext = data(len, len as u64);
        let mut encryptor = Encryptor::new();
        let mut one_thread = Vec::new();
        let mut rest = &plaintext[..];
        while !rest.is_empty() {
            let (piece, later) = rest.split_at((1 + rng.below(100_000)).min(rest.len()));
            encryptor.update(piece, &mut one_thread).unwrap();
            rest = later;
        }
        let by_pieces = encryptor.finish(&mut one_thread).unwrap();
        assert!(one_thread == spec_encrypt(&key_of(&by_pieces), &plaintext).1, "{len}: Encryptor");

        std::fs::write(dir.path("in"), &plaintext).unwrap();
        let by_file = attachment::encrypt_file(&dir.path("in"), &dir.path("blob")).unwrap();
        let file_blob = std::fs::read(dir.path("blob")).unwrap();
        assert!(file_blob == spec_encrypt(&key_of(&by_file), &plaintext).1, "{len}: encrypt_file");

        let mut two_threads = Vec::new();
        let by_stream = attachment::encrypt(&plaintext[..], &mut two_threads).unwrap();
        assert!(two_threads == spec_encrypt(&key_of(&by_stream), &plaintext).1, "{len}: encrypt");

        // Across paths: the pipeline checks the Encryptor's digest, the
        // Decryptor the pipeline's.
        assert_eq!(decrypt_all(&by_pieces, &one_thread), (Outcome::Ok, plaintext.clone()));
        assert_eq!(decrypt_pieces(&by_stream, &two_threads, 10_007), (Outcome::Ok, plaintext.clone()));
        assert_eq!(decrypt_pieces(&by_file, &file_blob, SEALED as usize), (Outcome::Ok, plaintext));
    }
}

// ---------------------------------------------------------------------------
// Decryption (22.3): every tamper, error order, what is written.
// ---------------------------------------------------------------------------

/// Attacks the decryption steps and their order: for a four-chunk file and
/// every kind of change (a bit in each chunk's body and tag, chunks swapped,
/// dropped, repeated, another file's chunk under the same key, cut at and
/// around chunk boundaries, extended, another digest, changes combined),
/// `decrypt` and the `Decryptor` (in pieces of 1 byte to the whole blob)
/// must give 22.3's first error, and have written exactly the bytes the
/// steps write before it (never a chunk that did not open).
#[test]
fn decrypt_and_the_decryptor_follow_22_3_on_every_tamper() {
    let _gate = shared();
    let plaintext = data(3 * CHUNK as usize + 1000, 3);
    let other = data(plaintext.len(), 4);
    let (key, description, blob) = library(&plaintext);
    let (_, other_blob) = spec_encrypt(&key, &other);
    let sealed = SEALED as usize;
    let chunk = |b: &[u8], i: usize| b[i * sealed..((i + 1) * sealed).min(b.len())].to_vec();
    let flip = |at: usize| {
        let mut b = blob.clone();
        b[at] ^= 0x10;
        b
    };
    let mut cases: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut case = |name: &str, d: &[u8], b: Vec<u8>| cases.push((name.into(), d.to_vec(), b));
    case("genuine", &description, blob.clone());
    for i in 0..4 {
        case(&format!("body {i}"), &description, flip(i * sealed + 5));
        case(&format!("tag {i}"), &description, flip(((i + 1) * sealed).min(blob.len()) - 1));
        let mut b = blob.clone();
        b.splice(i * sealed..((i + 1) * sealed).min(blob.len()), chunk(&other_blob, i));
        case(&format!("chunk {i} of another file under the key"), &description, b);
    }
    let swapped = [chunk(&blob, 0), chunk(&blob, 2), chunk(&blob, 1), chunk(&blob, 3)].concat();
    case("chunks 1 and 2 swapped", &description, swapped);
    case("last dropped", &description, blob[..3 * sealed].to_vec());
    case("first repeated", &description, [chunk(&blob, 0), blob.clone()].concat());
    for cut in [0, 1, sealed - 1, sealed, sealed + 1, 3 * sealed, blob.len() - 1] {
        case(&format!("cut at {cut}"), &description, blob[..cut].to_vec());
    }
    case("extended by a byte", &description, [&blob[..], &[0]].concat());
    case("extended by a chunk", &description, [blob.clone(), chunk(&blob, 3)].concat());
    let mut wrong_digest = description.clone();
    wrong_digest[40] ^= 1;
    case("another digest", &wrong_digest, blob.clone());
    case("another digest, extended", &wrong_digest, [&blob[..], &[0]].concat());
    case("another digest, chunk 2 altered", &wrong_digest, flip(2 * sealed + 9));
    let mut bad_then_short = flip(sealed + 3);
    bad_then_short.truncate(3 * sealed + 10);
    case("chunk 1 altered and cut in chunk 3", &description, bad_then_short);
    case("last tag altered and extended", &description, [&flip(blob.len() - 1)[..], &[0]].concat());
    case("another file's blob whole", &description, other_blob.clone());

    for (name, description, blob) in &cases {
        let expected = model_decrypt(description, blob);
        let sent = Attachment::from_bytes(description).unwrap();
        let (got, out) = decrypt_all(&sent, blob);
        assert_eq!(got, expected.0, "{name}: decrypt");
        assert!(out == expected.1, "{name}: decrypt wrote {} bytes, 22.3 {}", out.len(), expected.1.len());
        if name.as_str() == "genuine" {
            assert!(out == plaintext);
        }
        for piece in [997, sealed, sealed + 1, blob.len()] {
            let (got, out) = decrypt_pieces(&sent, blob, piece);
            assert_eq!(got, expected.0, "{name}: Decryptor in pieces of {piece}");
            assert!(out == expected.1, "{name}: Decryptor in pieces of {piece} handed out other bytes");
        }
    }
    // One byte at a time, for a few of them.
    for (name, description, blob) in cases.iter().filter(|c| ["genuine", "tag 3", "another digest"].contains(&&*c.0)) {
        let sent = Attachment::from_bytes(description).unwrap();
        assert_eq!(decrypt_pieces(&sent, blob, 1), model_decrypt(description, blob), "{name}: 1-byte pieces");
    }
}

/// Attacks the digest check with a description whose digest is 32 zero
/// bytes (and one whose digest is another blob's): it parses (22.2 refuses
/// only lengths and versions), every chunk opens, and then `Mismatch`, from
/// both `decrypt` and the `Decryptor`, never success; `decrypt_file` leaves
/// nothing.
#[test]
fn a_digest_of_zeros_parses_and_is_refused_as_a_mismatch() {
    let _gate = shared();
    let dir = Dir::new("zeros");
    for len in [0usize, 65_536, 3 * 65_536] {
        let plaintext = data(len, 11);
        let mut blob = Vec::new();
        let sent = attachment::encrypt(&plaintext[..], &mut blob).unwrap();
        let mut bytes = sent.to_bytes().to_vec();
        bytes[33..65].fill(0);
        let zeros = Attachment::from_bytes(&bytes).unwrap();
        assert_eq!(zeros.digest(), [0; 32]);
        assert_eq!(decrypt_all(&zeros, &blob).0, Outcome::Mismatch, "{len}");
        assert_eq!(decrypt_pieces(&zeros, &blob, 4096).0, Outcome::Mismatch, "{len}");
        std::fs::write(dir.path("blob"), &blob).unwrap();
        let result = attachment::decrypt_file(&zeros, &dir.path("blob"), &dir.path("out"));
        assert_eq!(outcome(&result), Outcome::Mismatch);
        assert_eq!(dir.names(), ["blob"], "{len}: something left behind");
    }
}

/// Attacks the binding the digest is for (22.2): a hostile sender holds the
/// key and makes a second blob of the same length whose chunks all open
/// (genuine chunks, right places, right last flags). Under the first
/// blob's description the second, or the first with one chunk taken from
/// the second, must be refused as `Mismatch` by every whole-file path.
#[test]
fn a_second_blob_under_the_same_key_is_refused_by_the_digest() {
    let _gate = shared();
    let dir = Dir::new("second");
    let first = data(2 * CHUNK as usize + 500, 21);
    let mut second = first.clone();
    second[CHUNK as usize + 10] ^= 0xff; // only chunk 1 differs
    let (key, description, blob) = library(&first);
    let (other_description, other_blob) = spec_encrypt(&key, &second);
    assert_eq!(description[..33], other_description[..33]);
    assert_eq!(description[65..], other_description[65..]);
    let sealed = SEALED as usize;
    let spliced = [&blob[..sealed], &other_blob[sealed..2 * sealed], &blob[2 * sealed..]].concat();
    let sent = Attachment::from_bytes(&description).unwrap();
    for (name, bad) in [("the second blob", &other_blob), ("chunk 1 of the second", &spliced)] {
        assert_eq!(model_decrypt(&description, bad).0, Outcome::Mismatch, "{name}: the model");
        assert_eq!(decrypt_all(&sent, bad).0, Outcome::Mismatch, "{name}: decrypt");
        assert_eq!(decrypt_pieces(&sent, bad, 65_000).0, Outcome::Mismatch, "{name}: Decryptor");
        std::fs::write(dir.path("blob"), bad).unwrap();
        std::fs::write(dir.path("out"), b"earlier").unwrap();
        let result = attachment::decrypt_file(&sent, &dir.path("blob"), &dir.path("out"));
        assert_eq!(outcome(&result), Outcome::Mismatch, "{name}: decrypt_file");
        assert_eq!(std::fs::read(dir.path("out")).unwrap(), b"earlier");
        assert_eq!(dir.names(), ["blob", "out"]);
    }
}

/// Attacks the uniqueness of the plaintext under one blob: a hostile sender
/// gives recipients descriptions of one blob (same key, same digest) with
/// other plaintext lengths of the same size class (so the same ciphertext
/// length), the file ending in bytes that look like padding. The padding
/// check must refuse every length but the true one.
#[test]
fn another_plaintext_length_in_the_same_class_is_refused_by_the_padding() {
    let _gate = shared();
    let mut plaintext = data(1500, 31);
    plaintext[1490..].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let (key, description, blob) = library(&plaintext);
    let genuine = Attachment::from_bytes(&description).unwrap();
    assert_eq!(decrypt_all(&genuine, &blob), (Outcome::Ok, plaintext.clone()));
    let mut refused = 0;
    for n in [1490u64, 1491, 1499, 1501, 1502, 1535, 1472] {
        assert_eq!(spec_ciphertext_len(n), blob.len() as u64, "{n} is in the same class");
        let lying = forged(&key, &blob, n);
        assert_eq!(lying.digest(), genuine.digest());
        assert_eq!(decrypt_all(&lying, &blob).0, Outcome::Mismatch, "plaintext_len {n}");
        assert_eq!(decrypt_pieces(&lying, &blob, 333).0, Outcome::Mismatch, "plaintext_len {n}, Decryptor");
        refused += 1;
    }
    assert_eq!(refused, 7);
}

/// Attacks the padding check where the padding spans chunks: a file of
/// 4 MiB + 100 bytes pads to 4 MiB + 128 KiB, so its chunk 64 holds the
/// marker and chunk 65 is padding only. A hostile sender seals a stream
/// with one nonzero byte in that last chunk, or with no marker, or the
/// marker moved into it, and describes it with the true BLAKE3: each must
/// be `Mismatch`, while the same construction of the genuine stream opens.
#[test]
fn a_chunk_of_padding_only_is_checked_byte_for_byte() {
    let _gate = shared();
    let key = [0x55; 32];
    let n = 4 * 1024 * 1024 + 100;
    assert_eq!(spec_padded(n), 4 * 1024 * 1024 + 128 * 1024);
    assert_eq!(spec_chunks(n), 66);
    let plaintext = data(n as usize, 41);
    let stream = spec_stream(&plaintext);
    let genuine = spec_seal(&key, &stream);
    assert_eq!(decrypt_all(&forged(&key, &genuine, n), &genuine).0, Outcome::Ok, "the control");
    let last = (65 * CHUNK) as usize;
    let mut in_last = stream.clone();
    in_last[last + 1000] = 1;
    let mut no_marker = stream.clone();
    no_marker[n as usize] = 0;
    let mut moved = no_marker.clone();
    moved[last] = 0x80;
    for (name, stream) in [("a byte in the last chunk", in_last), ("no marker", no_marker), ("marker moved", moved)] {
        let blob = spec_seal(&key, &stream);
        let sent = forged(&key, &blob, n);
        assert_eq!(model_decrypt(&sent.to_bytes(), &blob).0, Outcome::Mismatch, "{name}: the model");
        assert_eq!(decrypt_all(&sent, &blob).0, Outcome::Mismatch, "{name}: decrypt");
        assert_eq!(decrypt_pieces(&sent, &blob, SEALED as usize * 3).0, Outcome::Mismatch, "{name}: Decryptor");
    }
}

/// Attacks "nothing left behind" (22.4: `decrypt_file` renames only once
/// everything checked): for each refusal class (a chunk, the length short
/// or long, the digest, the padding, a failing read of a directory), the
/// earlier file at the output path stays as it was, and no temporary file
/// remains.
#[test]
fn decrypt_file_leaves_nothing_behind_on_every_refusal() {
    let _gate = shared();
    let dir = Dir::new("file");
    let plaintext = data(5 * CHUNK as usize + 3, 51);
    let (key, description, blob) = library(&plaintext);
    let sent = Attachment::from_bytes(&description).unwrap();
    let mut bad_padding = spec_stream(&plaintext);
    *bad_padding.last_mut().unwrap() = 9;
    let bad_padding = spec_seal(&key, &bad_padding);
    let mut last_bit = blob.clone();
    *last_bit.last_mut().unwrap() ^= 1;
    let cases: [(&str, Attachment, Vec<u8>, Outcome); 5] = [
        ("last chunk", sent.clone(), last_bit, Outcome::Unauthenticated(5)),
        ("short", sent.clone(), blob[..blob.len() - 1].to_vec(), Outcome::WrongLength),
        ("long", sent.clone(), [&blob[..], b"!"].concat(), Outcome::WrongLength),
        ("digest", forged(&key, &bad_padding, plaintext.len() as u64), blob.clone(), Outcome::Mismatch),
        ("padding", forged(&key, &bad_padding, plaintext.len() as u64), bad_padding.clone(), Outcome::Mismatch),
    ];
    for (name, sent, bad, expected) in cases {
        std::fs::write(dir.path("blob"), &bad).unwrap();
        std::fs::write(dir.path("out"), b"earlier").unwrap();
        let result = attachment::decrypt_file(&sent, &dir.path("blob"), &dir.path("out"));
        assert_eq!(outcome(&result), expected, "{name}");
        assert_eq!(std::fs::read(dir.path("out")).unwrap(), b"earlier", "{name}");
        assert_eq!(dir.names(), ["blob", "out"], "{name}: a partial file was left");
    }
    // An input that cannot be read (a directory): an i/o error, and nothing.
    std::fs::create_dir(dir.path("sub")).unwrap();
    std::fs::remove_file(dir.path("out")).unwrap();
    let result = attachment::decrypt_file(&sent, &dir.path("sub"), &dir.path("out"));
    assert_eq!(outcome(&result), Outcome::Io);
    assert_eq!(dir.names(), ["blob", "sub"]);
    // And the genuine blob still decrypts, over the earlier file.
    std::fs::write(dir.path("blob"), &blob).unwrap();
    attachment::decrypt_file(&sent, &dir.path("blob"), &dir.path("out")).unwrap();
    assert!(std::fs::read(dir.path("out")).unwrap() == plaintext);
}

// ---------------------------------------------------------------------------
// Cost of a hostile blob (22.4).
// ---------------------------------------------------------------------------

/// Attacks the read bound of 22.4 ("at most `CiphertextLen(plaintext_len)`
/// bytes plus one"): a genuine blob followed by an endless stream is read
/// to exactly one byte past its end; a hostile description of 2^48 bytes
/// over endless noise stops at the first chunk having read no more than the
/// four chunks in flight.
#[test]
fn decrypt_reads_at_most_the_ciphertext_and_one_byte() {
    let _gate = shared();
    for len in [0usize, 65_536, 6 * 65_536 + 7] {
        let plaintext = data(len, 61);
        let mut blob = Vec::new();
        let sent = attachment::encrypt(&plaintext[..], &mut blob).unwrap();
        let mut input = Counted { inner: (&blob[..]).chain(io::repeat(0xaa)), given: 0 };
        let result = attachment::decrypt(&sent, &mut input, io::sink());
        assert_eq!(outcome(&result), Outcome::WrongLength, "{len}");
        assert_eq!(input.given, sent.ciphertext_len() + 1, "{len}");
        let mut input = Counted { inner: &blob[..], given: 0 };
        attachment::decrypt(&sent, &mut input, io::sink()).unwrap();
        assert_eq!(input.given, sent.ciphertext_len(), "{len}");
    }
    let hostile = Attachment::from_bytes(&spec_description(
        &[1; 32],
        &[2; 32],
        MAX_ATTACHMENT_LEN,
        spec_ciphertext_len(MAX_ATTACHMENT_LEN),
    ))
    .unwrap();
    let mut input = Counted { inner: io::repeat(0), given: 0 };
    let mut out = Vec::new();
    let result = attachment::decrypt(&hostile, &mut input, &mut out);
    assert_eq!(outcome(&result), Outcome::Unauthenticated(0));
    assert!(out.is_empty());
    assert!(input.given <= 4 * SEALED, "read {} bytes of a blob whose first chunk does not open", input.given);
}

/// One measured call: it may write to the buffer it is given.
type Run<'a> = dyn Fn(&mut Vec<u8>) -> Outcome + 'a;

/// Attacks the memory bound of 22.4 ("at most four sealed chunks' buffers,
/// 65,552 bytes each, and a BLAKE3 state (about 2 KiB)"), counted on every
/// thread: a hostile description of 2^48 bytes over noise, a genuine 12-chunk
/// blob, the same under another digest, and encrypting 12 chunks. 8 KiB are
/// allowed for the pipeline's bookkeeping and the thread's start (measured:
/// 737 bytes; a fifth buffer would be 64 KiB).
#[test]
fn a_hostile_blob_costs_at_most_four_sealed_chunks_and_a_blake3_state() {
    let _gate = exclusive();
    let state = size_of::<blake3::Hasher>();
    assert!(state <= 2100, "a BLAKE3 state is {state} bytes, not about 2 KiB");
    let bound = 4 * SEALED as usize + state + 8 * 1024;
    let plaintext = data(12 * CHUNK as usize, 71);
    let mut blob = Vec::with_capacity(plaintext.len() + 4096);
    let sent = attachment::encrypt(&plaintext[..], &mut blob).unwrap();
    let mut wrong = sent.to_bytes().to_vec();
    wrong[50] ^= 4;
    let wrong = Attachment::from_bytes(&wrong).unwrap();
    let hostile = Attachment::from_bytes(&spec_description(
        &[9; 32],
        &[0; 32],
        MAX_ATTACHMENT_LEN,
        spec_ciphertext_len(MAX_ATTACHMENT_LEN),
    ))
    .unwrap();
    let mut sink = Vec::with_capacity(blob.len() + 1);
    let runs: [(&str, &Run<'_>); 4] = [
        ("hostile 2^48 description over noise", &|_: &mut Vec<u8>| {
            outcome(&attachment::decrypt(&hostile, io::repeat(7), io::sink()))
        }),
        ("genuine blob", &|out: &mut Vec<u8>| outcome(&attachment::decrypt(&sent, &blob[..], out))),
        ("another digest", &|_: &mut Vec<u8>| outcome(&attachment::decrypt(&wrong, &blob[..], io::sink()))),
        ("encrypting 12 chunks", &|out: &mut Vec<u8>| outcome(&attachment::encrypt(&plaintext[..], out))),
    ];
    for (name, run) in runs {
        sink.clear();
        let (got, peak) = peak_of(|| run(&mut sink));
        assert_ne!(got, Outcome::Io, "{name}");
        assert!(peak <= bound, "{name}: {peak} bytes at once, over {bound}");
        assert!(peak >= 4 * SEALED as usize || name.starts_with("hostile"), "{name}: {peak}: the counter works");
    }
}

/// Attacks descriptions at the size limit: 2^48 bytes over an empty, a
/// short and a noisy blob, and ranges at its very end, through `decrypt`,
/// the `Decryptor` and `decrypt_range`: typed errors, no panic, no long
/// loop (every refusal comes at the first chunk or sooner).
#[test]
fn descriptions_at_the_size_limit_fail_fast_and_typed() {
    let _gate = shared();
    let n = MAX_ATTACHMENT_LEN;
    let hostile = Attachment::from_bytes(&spec_description(&[3; 32], &[4; 32], n, spec_ciphertext_len(n))).unwrap();
    for (blob, expected) in [
        (vec![], Outcome::WrongLength),
        (vec![0u8; 100], Outcome::WrongLength),
        (vec![0u8; SEALED as usize], Outcome::Unauthenticated(0)),
    ] {
        assert_eq!(decrypt_all(&hostile, &blob).0, expected, "{} bytes", blob.len());
        let pieces = decrypt_pieces(&hostile, &blob, 4096).0;
        assert_eq!(pieces, expected, "{} bytes, Decryptor", blob.len());
    }
    for (offset, len, expected) in [
        (n - 1, 1, Outcome::WrongLength),
        (n, 0, Outcome::Ok),
        (n, 1, Outcome::OutOfRange),
        (u64::MAX, 1, Outcome::OutOfRange),
        (1, u64::MAX, Outcome::OutOfRange),
    ] {
        let mut out = Vec::new();
        let result = attachment::decrypt_range(&hostile, Cursor::new(vec![0u8; 10]), offset, len, &mut out);
        assert_eq!(outcome(&result), expected, "range {offset}+{len}");
        assert!(out.is_empty());
    }
}

// ---------------------------------------------------------------------------
// Ranges (22.3 DecryptRange).
// ---------------------------------------------------------------------------

/// Attacks `decrypt_range` on a genuine four-chunk blob: every range around
/// the chunk boundaries and the end gives exactly the file's bytes, having
/// read only the chunks it covers; a range past the plaintext (into the
/// padding) is `OutOfRange`; with chunk `k` altered, a range that avoids it
/// still works and one that covers it is `Unauthenticated { k }` having
/// written only the range's bytes of the chunks before; a cut blob is
/// `WrongLength`.
#[test]
fn decrypt_range_gives_exactly_the_file_s_bytes_or_a_typed_error() {
    let _gate = shared();
    let plaintext = data(3 * CHUNK as usize + 777, 81);
    let (_, description, blob) = library(&plaintext);
    let sent = Attachment::from_bytes(&description).unwrap();
    let n = plaintext.len() as u64;
    let range = |blob: &[u8], offset: u64, len: u64| {
        let mut input = Counted { inner: Cursor::new(blob.to_vec()), given: 0 };
        let mut out = Vec::new();
        let result = attachment::decrypt_range(&sent, &mut input, offset, len, &mut out);
        (outcome(&result), out, input.given)
    };
    let points = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK - 1, 3 * CHUNK, n - 1, n];
    for &offset in &points {
        for &end in &points {
            if end < offset {
                continue;
            }
            let (got, out, given) = range(&blob, offset, end - offset);
            assert_eq!(got, Outcome::Ok, "{offset}..{end}");
            assert!(out == plaintext[offset as usize..end as usize], "{offset}..{end}");
            let covered = if end == offset { 0 } else { (end - 1) / CHUNK - offset / CHUNK + 1 };
            let expected: u64 = (0..covered).map(|c| spec_body_len(n, offset / CHUNK + c) as u64 + TAG).sum();
            assert_eq!(given, expected, "{offset}..{end}: read other chunks than the range's");
        }
        assert_eq!(range(&blob, offset, n - offset + 1).0, Outcome::OutOfRange, "{offset} into the padding");
    }
    for k in 0..4u64 {
        let mut bad = blob.clone();
        bad[(k * SEALED + 7) as usize] ^= 1;
        for (offset, end) in [(0, n), (k * CHUNK, k * CHUNK + 1), (k.saturating_sub(1) * CHUNK + 5, n)] {
            let (got, out, _) = range(&bad, offset, end - offset);
            let first = offset / CHUNK;
            assert_eq!(got, Outcome::Unauthenticated(k), "chunk {k} altered, {offset}..{end}");
            let written_to = (k * CHUNK).max(offset);
            assert!(out == plaintext[offset as usize..written_to as usize], "chunk {k}: {offset}..{end}, {first}");
        }
        let avoid = if k == 0 { (CHUNK, 2 * CHUNK + 3) } else { (0, k * CHUNK) };
        let (got, out, _) = range(&bad, avoid.0, avoid.1 - avoid.0);
        assert_eq!(got, Outcome::Ok, "chunk {k} altered, a range avoiding it");
        assert!(out == plaintext[avoid.0 as usize..avoid.1 as usize]);
    }
    let cut = &blob[..blob.len() - 1];
    assert_eq!(range(cut, n - 1, 1).0, Outcome::WrongLength);
    assert_eq!(range(cut, 0, 1).0, Outcome::Ok, "the first chunk is whole");
}

/// Attacks the claim of 22.2 ("a sender and a server acting together cannot
/// show two recipients of one description two different files"), as it was
/// first written (for every read, not only `decrypt`), through
/// `decrypt_range`, which authenticates chunks but checks neither the digest
/// nor the padding (22.3): under one description, a second blob sealed by
/// the sender under the same key serves its own bytes to a range read, and
/// a description whose plaintext length was raised within its class serves
/// the padding marker as a file byte. Either way the range gives bytes that
/// `decrypt` of the same description and blob refuses (`Mismatch`).
#[test]
#[ignore = "LIMIT: a range read checks each chunk it reads, not the digest or the padding (PROTOCOL.md 22.3); the 22.2 claim now names decrypt only"]
fn finding_a_range_read_serves_bytes_the_description_does_not_bind() {
    let _gate = shared();
    let shown = data(2 * CHUNK as usize + 100, 91);
    let mut other = shown.clone();
    other[CHUNK as usize..2 * CHUNK as usize].fill(b'X');
    let (key, description, _) = library(&shown);
    let (_, other_blob) = spec_encrypt(&key, &other);
    let sent = Attachment::from_bytes(&description).unwrap();
    assert_eq!(decrypt_all(&sent, &other_blob).0, Outcome::Mismatch, "decrypt refuses the other blob");
    let (offset, len) = (CHUNK + 10, 20u64);
    let mut out = Vec::new();
    let result = attachment::decrypt_range(&sent, Cursor::new(&other_blob), offset, len, &mut out);
    assert!(
        result.is_err() || out == shown[offset as usize..(offset + len) as usize],
        "a range under the description of one file gave another file's bytes: {:?}",
        String::from_utf8_lossy(&out)
    );

    // The padding: the same blob, its length raised by one within the class.
    let (key, description, blob) = library(&shown[..1500]);
    let longer = forged(&key, &blob, 1501);
    assert_eq!(longer.digest(), Attachment::from_bytes(&description).unwrap().digest());
    assert_eq!(decrypt_all(&longer, &blob).0, Outcome::Mismatch);
    let mut out = Vec::new();
    let result = attachment::decrypt_range(&longer, Cursor::new(&blob), 1499, 2, &mut out);
    assert!(result.is_err(), "a range gave {out:02x?}: the padding marker as a file byte");
}

// ---------------------------------------------------------------------------
// The description (22.2) and the errors (22.4).
// ---------------------------------------------------------------------------

/// Attacks the version byte: every first byte but 2 is `Malformed` (before
/// any decryption), among them a true version-1 description, whose digest is
/// the SHA-256 of the blob (never `Mismatch`, which would mean it was read
/// as version 2); version 2 of the same parts parses.
#[test]
fn every_version_byte_but_2_is_malformed_a_true_version_1_included() {
    let _gate = shared();
    let mut blob = Vec::new();
    let sent = attachment::encrypt(&b"version"[..], &mut blob).unwrap();
    let good = sent.to_bytes().to_vec();
    for version in 0..=255u8 {
        let mut bytes = good.clone();
        bytes[0] = version;
        let parsed = Attachment::from_bytes(&bytes);
        if version == 2 {
            assert!(parsed.unwrap() == sent);
        } else {
            assert_eq!(outcome(&parsed), Outcome::Malformed, "version {version}");
        }
    }
    let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&blob).into();
    let mut version_1 = good.clone();
    version_1[0] = 1;
    version_1[33..65].copy_from_slice(&sha256);
    assert_eq!(outcome(&Attachment::from_bytes(&version_1)), Outcome::Malformed);
    version_1[0] = 2;
    let read_as_2 = Attachment::from_bytes(&version_1).unwrap();
    assert_eq!(decrypt_all(&read_as_2, &blob).0, Outcome::Mismatch, "a SHA-256 digest is not BLAKE3's");
}

/// Attacks the rest of the parser and the layout of 22.2: every length but
/// 81 is `Malformed`; the fields are where 22.2 puts them, big-endian;
/// `plaintext_len` up to exactly 2^48 parses, 2^48 + 1 and `u64::MAX` (with
/// the ciphertext length computed for them) do not; a ciphertext length off
/// by one either way, or of another size class, does not; and the
/// library's `ciphertext_len` is 22.1's at every boundary up to the limit.
#[test]
fn description_lengths_fields_and_the_size_limit() {
    let _gate = shared();
    let mut blob = Vec::new();
    let sent = attachment::encrypt(&data(70_000, 1)[..], &mut blob).unwrap();
    let good = sent.to_bytes().to_vec();
    assert_eq!(good.len(), 81);
    assert_eq!(good[0], 2);
    assert_eq!(&good[33..65], sent.digest());
    assert_eq!(good[65..73], 70_000u64.to_be_bytes());
    assert_eq!(good[73..81], sent.ciphertext_len().to_be_bytes());
    for len in (0..=200).filter(|len| *len != 81) {
        let bytes: Vec<u8> = good.iter().copied().cycle().take(len).collect();
        assert_eq!(outcome(&Attachment::from_bytes(&bytes)), Outcome::Malformed, "{len} bytes");
    }
    let with = |n: u64, ciphertext_len: u64| {
        outcome(&Attachment::from_bytes(&spec_description(&[5; 32], &[6; 32], n, ciphertext_len)))
    };
    let max = MAX_ATTACHMENT_LEN;
    assert_eq!(with(max, spec_ciphertext_len(max)), Outcome::Ok);
    assert_eq!(with(max + 1, spec_ciphertext_len(max + 1)), Outcome::Malformed);
    assert_eq!(with(max + 1, attachment::ciphertext_len(max + 1)), Outcome::Malformed);
    assert_eq!(with(u64::MAX, attachment::ciphertext_len(u64::MAX)), Outcome::Malformed);
    for n in [0u64, 1023, 1024, 65_535, 65_536, 70_000, 1 << 32, max] {
        let c = spec_ciphertext_len(n);
        assert_eq!(attachment::ciphertext_len(n), c, "CiphertextLen({n})");
        assert_eq!(with(n, c), Outcome::Ok, "{n}");
        for wrong in [c - 1, c + 1, c - TAG, c + SEALED, 0, u64::MAX] {
            assert_eq!(with(n, wrong), Outcome::Malformed, "{n} with ciphertext_len {wrong}");
        }
    }
    // The bytes round-trip exactly, whatever the key and digest.
    let parts = spec_description(&[0; 32], &[0xff; 32], 0, spec_ciphertext_len(0));
    assert_eq!(Attachment::from_bytes(&parts).unwrap().to_bytes()[..], parts[..]);
}

/// Attacks the error table of 22.4: each error the library returns maps to
/// the code the table gives (`invalid_message` for a blob or description
/// refused, `limit_exceeded`, `invalid_argument` for a range outside,
/// `store_failure` for the app's i/o), produced here by real calls where
/// they can be; and the two errors the table leaves out (`Finished`,
/// `RangeTooLong`) have the codes `kind()` documents.
#[test]
fn errors_map_to_the_codes_of_22_4() {
    let _gate = shared();
    let mut blob = Vec::new();
    let sent = attachment::encrypt(&data(2000, 2)[..], &mut blob).unwrap();
    let mut bad = blob.clone();
    bad[3] ^= 1;
    let mut wrong = sent.to_bytes().to_vec();
    wrong[60] ^= 1;
    let wrong = Attachment::from_bytes(&wrong).unwrap();
    let errors: Vec<(AttachmentError, ErrorKind)> = vec![
        (attachment::decrypt(&sent, &bad[..], io::sink()).unwrap_err(), ErrorKind::InvalidMessage),
        (attachment::decrypt(&sent, &blob[1..], io::sink()).unwrap_err(), ErrorKind::InvalidMessage),
        (attachment::decrypt(&wrong, &blob[..], io::sink()).unwrap_err(), ErrorKind::InvalidMessage),
        (Attachment::from_bytes(&[2; 80]).unwrap_err(), ErrorKind::InvalidMessage),
        (AttachmentError::TooLarge { max: MAX_ATTACHMENT_LEN }, ErrorKind::LimitExceeded),
        (
            attachment::decrypt_range(&sent, Cursor::new(&blob), 1999, 2, io::sink()).unwrap_err(),
            ErrorKind::InvalidArgument,
        ),
        (attachment::decrypt(&sent, FailingRead, io::sink()).unwrap_err(), ErrorKind::StoreFailure),
    ];
    // Two errors the table of 22.4 does not list: a `Decryptor` used after
    // it failed, and a `read_range` over its in-memory bound.
    let mut decryptor = Decryptor::new(&sent);
    assert!(decryptor.update(&bad, &mut Vec::new()).is_err());
    let finished = decryptor.update(&[], &mut Vec::new()).unwrap_err();
    let dir = Dir::new("kinds");
    std::fs::write(dir.path("blob"), &blob).unwrap();
    let too_long = attachment::read_range(&sent, &dir.path("blob"), 0, attachment::MAX_RANGE_LEN + 1).unwrap_err();
    let errors =
        errors.into_iter().chain([(finished, ErrorKind::InvalidArgument), (too_long, ErrorKind::LimitExceeded)]);
    for (error, kind) in errors {
        assert_eq!(error.kind(), kind, "{error:?}");
    }
}

/// A reader that always fails (not with `Interrupted`).
struct FailingRead;

impl Read for FailingRead {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("the disk went away"))
    }
}
