//! Attachments (PROTOCOL.md 22): round trips at the chunk and padding
//! boundaries, every tamper class refused (a flipped bit, a chunk moved,
//! repeated, dropped or added, the file cut or extended, another file's key,
//! another digest, malformed descriptions), byte ranges read by opening only
//! their chunks, a file over 4 GiB read by range without being written (its
//! ciphertext made on demand by an implementation of the construction
//! written here from the protocol text, which also checks the library's
//! format), and memory that stays constant whatever the file's size
//! (measured by an allocation counter, asserted as a bound). The same for
//! the piece-at-a-time [`Encryptor`] and [`Decryptor`] and the file calls
//! (`encrypt_file`, `decrypt_file`: nothing left behind on a failure).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    io::{self, Cursor, Read, Seek, SeekFrom, Write},
};

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use samizdat::{
    ErrorKind,
    attachment::{
        self, ATTACHMENT_LEN, Attachment, AttachmentError, CHUNK_LEN, Decryptor, Encryptor, MAX_ATTACHMENT_LEN,
        MAX_RANGE_LEN, TAG_LEN, padded_len,
    },
};

// ---------------------------------------------------------------------------
// Memory: an allocator that counts, per thread, the bytes live and the peak.
// ---------------------------------------------------------------------------

struct Counting;

std::thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator; only counts (thread-local cells,
// which never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            live.set(live.get().saturating_add(layout.size()));
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at
/// once on this thread (beyond what was live when it started).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let out = f();
    (out, PEAK.with(Cell::get).saturating_sub(base))
}

// ---------------------------------------------------------------------------
// The construction, from PROTOCOL.md 22 (not the library's code).
// ---------------------------------------------------------------------------

const CHUNK: u64 = CHUNK_LEN as u64;
const SEALED_CHUNK: u64 = CHUNK + TAG_LEN as u64;

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

/// A file's padded plaintext byte at `at`: the plaintext (given by `byte`),
/// then 0x80, then zeros.
fn padded_byte(len: u64, at: u64, byte: &dyn Fn(u64) -> u8) -> u8 {
    if at < len {
        byte(at)
    } else if at == len {
        0x80
    } else {
        0
    }
}

/// The ciphertext of a file of `len` bytes whose byte at `i` is `byte(i)`,
/// under `key`, made chunk by chunk on demand: a `Read + Seek` over a file
/// that is never written whole.
struct Synthesized<'a> {
    key: [u8; 32],
    len: u64,
    byte: &'a dyn Fn(u64) -> u8,
    position: u64,
    cached: Option<(u64, Vec<u8>)>,
}

impl<'a> Synthesized<'a> {
    fn new(key: [u8; 32], len: u64, byte: &'a dyn Fn(u64) -> u8) -> Self {
        Self { key, len, byte, position: 0, cached: None }
    }

    fn padded(&self) -> u64 {
        // The size classes of PROTOCOL.md 22: Padmé of len + 1, at least 1 KiB.
        padme(self.len + 1).max(1024)
    }

    fn total(&self) -> u64 {
        let padded = self.padded();
        padded + padded.div_ceil(CHUNK) * TAG_LEN as u64
    }

    fn chunk(&mut self, index: u64) -> &[u8] {
        if self.cached.as_ref().is_none_or(|(i, _)| *i != index) {
            let padded = self.padded();
            let chunks = padded.div_ceil(CHUNK);
            let start = index * CHUNK;
            let len = (padded - start).min(CHUNK);
            // Room for the tag from the start: no reallocation (the memory test
            // allows this source two sealed chunks).
            let mut body = Vec::with_capacity(len as usize + TAG_LEN);
            body.extend((start..start + len).map(|at| padded_byte(self.len, at, self.byte)));
            let cipher = ChaCha20Poly1305::new(&self.key.into());
            let tag = cipher
                .encrypt_inout_detached(&nonce(index, index + 1 == chunks), &[], body.as_mut_slice().into())
                .unwrap();
            body.extend_from_slice(&tag);
            self.cached = Some((index, body));
        }
        &self.cached.as_ref().unwrap().1
    }
}

impl Read for Synthesized<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.total() || buf.is_empty() {
            return Ok(0);
        }
        let (index, within) = (self.position / SEALED_CHUNK, (self.position % SEALED_CHUNK) as usize);
        let chunk = self.chunk(index);
        let n = (chunk.len() - within).min(buf.len());
        buf[..n].copy_from_slice(&chunk[within..within + n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for Synthesized<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Start(at) = to else { panic!("only seeks from the start are expected") };
        self.position = at;
        Ok(at)
    }
}

/// Padmé of `l` (PURBs, Nikitin et al. 2019), written from the paper's
/// definition.
fn padme(l: u64) -> u64 {
    let e = 63 - u64::from(l.leading_zeros());
    let s = if e == 0 { 0 } else { 64 - u64::from(e.leading_zeros()) };
    let last_bits = e.saturating_sub(s);
    let mask = (1u64 << last_bits) - 1;
    (l + mask) & !mask
}

/// BLAKE3 with a 32-byte output, from the `blake3` crate itself: the
/// digest of PROTOCOL.md 22.2.
fn blake3_256(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// An attachment's description, made from its parts (81 bytes, PROTOCOL.md 22).
fn description(key: [u8; 32], digest: [u8; 32], len: u64) -> Attachment {
    let ciphertext_len = attachment::ciphertext_len(len);
    let bytes = [&[2u8][..], &key, &digest, &len.to_be_bytes(), &ciphertext_len.to_be_bytes()].concat();
    Attachment::from_bytes(&bytes).unwrap()
}

// ---------------------------------------------------------------------------
// Round trips and the format.
// ---------------------------------------------------------------------------

fn text(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect()
}

fn encrypted(plaintext: &[u8]) -> (Attachment, Vec<u8>) {
    let mut blob = Vec::new();
    let sent = attachment::encrypt(plaintext, &mut blob).unwrap();
    (sent, blob)
}

fn decrypted(attachment: &Attachment, blob: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    let mut out = Vec::new();
    attachment::decrypt(attachment, blob, &mut out).map(|()| out)
}

#[test]
fn files_at_the_chunk_and_padding_boundaries_round_trip() {
    for len in [
        0,
        1,
        2,
        1022,
        1023,
        1024,
        CHUNK_LEN - 1,
        CHUNK_LEN,
        CHUNK_LEN + 1,
        3 * CHUNK_LEN,
        3 * CHUNK_LEN - 1,
        3 * CHUNK_LEN + 5,
        // Larger files: the digest on a second thread (from the second
        // chunk on when the length is not known).
        4 * CHUNK_LEN - 1,
        4 * CHUNK_LEN,
        4 * CHUNK_LEN + 1,
        5 * CHUNK_LEN + 3,
        1_000_003,
    ] {
        let plaintext = text(len);
        let (sent, blob) = encrypted(&plaintext);
        assert_eq!(sent.plaintext_len(), len as u64);
        assert_eq!(blob.len() as u64, sent.ciphertext_len(), "{len}");
        assert_eq!(sent.ciphertext_len(), attachment::ciphertext_len(len as u64));
        assert_eq!(sent.digest(), blake3_256(&blob));
        let received = Attachment::from_bytes(&sent.to_bytes()).unwrap();
        assert_eq!(received, sent);
        assert_eq!(decrypted(&received, &blob).unwrap(), plaintext, "{len}");
        assert_eq!(decrypted_in_pieces(&received, &blob, 777).unwrap(), plaintext, "{len}");
        // The same bytes as the construction written from the protocol text
        // gives (the library's key, the library's format).
        let key: [u8; 32] = sent.to_bytes()[1..33].try_into().unwrap();
        let byte = |i: u64| plaintext[i as usize];
        let mut made = Vec::new();
        Synthesized::new(key, len as u64, &byte).read_to_end(&mut made).unwrap();
        assert!(made == blob, "the ciphertext of {len} bytes is not the protocol's");
    }
    // A fresh key each time: the same file twice gives two ciphertexts.
    assert_ne!(encrypted(b"same").1, encrypted(b"same").1);
}

#[test]
fn sizes_are_padded_to_classes_with_a_bounded_overhead() {
    assert_eq!(padded_len(0), 1024);
    assert_eq!(padded_len(1023), 1024);
    assert_eq!(padded_len(1024), padme(1025).max(1024));
    // The examples of PROTOCOL.md 22.1.
    for (len, padded) in
        [(1024, 1088), (1087, 1088), (1088, 1152), (1151, 1152), (1 << 20, 1_081_344), (1 << 30, 1_107_296_256)]
    {
        assert_eq!(padded_len(len), padded, "{len}");
    }
    let mut previous = 0;
    let mut classes = std::collections::BTreeSet::new();
    for len in (0..5_000_000u64).step_by(997).chain([1 << 32, (1 << 32) + 1, MAX_ATTACHMENT_LEN]) {
        let padded = padded_len(len);
        assert!(padded > len, "room for the marker: {len}");
        assert!(padded >= previous, "monotonic");
        assert_eq!(padded, padme(len + 1).max(1024));
        if len >= 1024 {
            assert!((padded - len - 1) * 100 <= 12 * (len + 1), "overhead of {len}: {padded}");
        }
        previous = padded;
        classes.insert(padded);
    }
    // Far fewer sizes than lengths: that is what the server sees.
    assert!(classes.len() < 1000, "{} classes", classes.len());
}

// ---------------------------------------------------------------------------
// Tampering.
// ---------------------------------------------------------------------------

/// `blob` decrypted a piece at a time ([`Decryptor`]), in pieces of
/// `piece` bytes.
fn decrypted_in_pieces(attachment: &Attachment, blob: &[u8], piece: usize) -> Result<Vec<u8>, AttachmentError> {
    let mut decryptor = Decryptor::new(attachment);
    let mut out = Vec::new();
    for bytes in blob.chunks(piece) {
        decryptor.update(bytes, &mut out)?;
    }
    decryptor.finish().map(|()| out)
}

/// The error `blob` is refused with, the same from [`attachment::decrypt`]
/// and from a [`Decryptor`] fed pieces of any size.
fn refused(attachment: &Attachment, blob: &[u8]) -> AttachmentError {
    let error = decrypted(attachment, blob).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidMessage, "{error:?}");
    for piece in [1000, SEALED_CHUNK as usize, blob.len().max(1)] {
        let in_pieces = decrypted_in_pieces(attachment, blob, piece).unwrap_err();
        assert_eq!(format!("{in_pieces:?}"), format!("{error:?}"), "pieces of {piece} bytes");
    }
    error
}

#[test]
fn every_tamper_class_is_refused() {
    let plaintext = text(3 * CHUNK_LEN + 100);
    let (sent, blob) = encrypted(&plaintext);
    let chunk = SEALED_CHUNK as usize;
    let chunks: Vec<&[u8]> = blob.chunks(chunk).collect();
    assert_eq!(chunks.len(), 4);

    // A flipped bit anywhere: in a chunk's body or tag, in every chunk.
    for at in (0..blob.len()).step_by(4099).chain([0, chunk - 1, chunk, blob.len() - 1]) {
        let mut bad = blob.clone();
        bad[at] ^= 0x01;
        assert!(matches!(refused(&sent, &bad), AttachmentError::Unauthenticated { .. }), "bit at {at}");
    }
    // Cut short: the last byte, the last chunk; extended: a byte, a chunk.
    assert!(matches!(refused(&sent, &blob[..blob.len() - 1]), AttachmentError::WrongLength));
    assert!(matches!(refused(&sent, &blob[..3 * chunk]), AttachmentError::WrongLength));
    assert!(matches!(refused(&sent, &[&blob[..], &[0]].concat()), AttachmentError::WrongLength));
    assert!(matches!(refused(&sent, &[&blob[..], chunks[3]].concat()), AttachmentError::WrongLength));
    // Reordered, repeated, the last chunk moved up (it opens only as the last).
    let swapped = [chunks[1], chunks[0], chunks[2], chunks[3]].concat();
    assert!(matches!(refused(&sent, &swapped), AttachmentError::Unauthenticated { chunk: 0 }));
    let repeated = [chunks[0], chunks[0], chunks[2], chunks[3]].concat();
    assert!(matches!(refused(&sent, &repeated), AttachmentError::Unauthenticated { chunk: 1 }));
    // A file of three full chunks, cut to the first two and its own last one
    // cannot pass as a two-chunk file: the lengths are in the description.
    // Another file's chunk (another key) at its place.
    let (other, other_blob) = encrypted(&text(3 * CHUNK_LEN + 100));
    let mixed = [chunks[0], &other_blob[chunk..2 * chunk], chunks[2], chunks[3]].concat();
    assert!(matches!(refused(&sent, &mixed), AttachmentError::Unauthenticated { chunk: 1 }));
    // Another file's key, and the right key with another digest.
    assert!(matches!(refused(&other, &blob), AttachmentError::Unauthenticated { chunk: 0 }));
    let mut wrong_digest = sent.to_bytes().to_vec();
    wrong_digest[40] ^= 1;
    let wrong_digest = Attachment::from_bytes(&wrong_digest).unwrap();
    assert!(matches!(refused(&wrong_digest, &blob), AttachmentError::Mismatch));
    // Well-authenticated chunks whose padding is not 0x80 then zeros (made
    // by another implementation with the key): refused. A 5-byte file is one
    // chunk of 1,024 bytes: 5 of plaintext, 0x80, 1,018 zeros.
    let key: [u8; 32] = sent.to_bytes()[1..33].try_into().unwrap();
    let seal_one = |body: &mut Vec<u8>| {
        let tag = ChaCha20Poly1305::new(&key.into())
            .encrypt_inout_detached(&nonce(0, true), &[], body.as_mut_slice().into())
            .unwrap();
        body.extend_from_slice(&tag);
    };
    let mut good = [vec![7u8; 5], vec![0x80], vec![0; 1018]].concat();
    let mut no_marker = [vec![7u8; 5], vec![0x81], vec![0; 1018]].concat();
    let mut a_one_late = [vec![7u8; 5], vec![0x80], vec![0; 900], vec![1], vec![0; 117]].concat();
    for body in [&mut good, &mut no_marker, &mut a_one_late] {
        seal_one(body);
    }
    let five = |blob: &[u8]| description(key, blake3_256(blob), 5);
    assert_eq!(decrypted(&five(&good), &good).unwrap(), vec![7u8; 5], "the control opens");
    for bad in [&no_marker, &a_one_late] {
        assert!(matches!(refused(&five(bad), bad), AttachmentError::Mismatch));
    }
}

#[test]
fn malformed_descriptions_are_refused() {
    let (sent, _) = encrypted(b"x");
    let good = sent.to_bytes().to_vec();
    assert_eq!(good.len(), ATTACHMENT_LEN);
    let mut cases: Vec<Vec<u8>> = vec![Vec::new(), good[..80].to_vec(), [&good[..], &[0]].concat()];
    for other_version in [0, 1, 3, 0xff] {
        let mut version = good.clone();
        version[0] = other_version; // 1: the unreleased SHA-256 descriptions
        cases.push(version);
    }
    let mut lengths = good.clone();
    lengths[80] ^= 1; // ciphertext_len no longer the plaintext's
    cases.push(lengths);
    let too_large = MAX_ATTACHMENT_LEN + 1;
    cases.push([&good[..65], &too_large.to_be_bytes(), &attachment::ciphertext_len(too_large).to_be_bytes()].concat());
    for bytes in cases {
        let error = Attachment::from_bytes(&bytes).unwrap_err();
        assert!(matches!(error, AttachmentError::Malformed), "{error:?}");
        assert_eq!(error.kind(), ErrorKind::InvalidMessage);
    }
    // The description never shows its key.
    let shown = format!("{sent:?}");
    assert!(!shown.contains(&format!("{:?}", &good[1..33])) && !shown.to_lowercase().contains("key"), "{shown}");
}

// ---------------------------------------------------------------------------
// Ranges.
// ---------------------------------------------------------------------------

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counted<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

#[test]
fn a_range_opens_only_the_chunks_it_covers() {
    let plaintext = text(5 * CHUNK_LEN + 12_345);
    let (sent, blob) = encrypted(&plaintext);
    let len = plaintext.len() as u64;
    for (offset, n) in [
        (0, 1),
        (0, 0),
        (CHUNK - 1, 2),
        (CHUNK, CHUNK),
        (100, 3 * CHUNK),
        (len - 1, 1),
        (len - 10_000, 10_000),
        (0, len),
        (len, 0),
    ] {
        let mut out = Vec::new();
        let mut input = Counted { inner: Cursor::new(&blob), read: 0 };
        attachment::decrypt_range(&sent, &mut input, offset, n, &mut out).unwrap();
        assert_eq!(out, plaintext[offset as usize..(offset + n) as usize], "{offset}+{n}");
        let covered = if n == 0 { 0 } else { (offset + n - 1) / CHUNK - offset / CHUNK + 1 };
        assert!(input.read <= covered * SEALED_CHUNK, "{offset}+{n}: read {} bytes", input.read);
    }
    for (offset, n) in [(len, 1), (len - 1, 2), (u64::MAX, 2)] {
        let error = attachment::decrypt_range(&sent, Cursor::new(&blob), offset, n, io::sink()).unwrap_err();
        assert!(matches!(error, AttachmentError::OutOfRange { .. }), "{error:?}");
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    }
    // A chunk altered in the range: refused; outside it: not read, not seen.
    let mut bad = blob.clone();
    bad[2 * SEALED_CHUNK as usize + 7] ^= 1;
    let error = attachment::decrypt_range(&sent, Cursor::new(&bad), 2 * CHUNK, 10, io::sink()).unwrap_err();
    assert!(matches!(error, AttachmentError::Unauthenticated { chunk: 2 }));
    attachment::decrypt_range(&sent, Cursor::new(&bad), 0, 10, io::sink()).unwrap();
}

/// A file of more than 4 GiB, never written: its ciphertext is made chunk by
/// chunk on demand, and ranges across the 4 GiB mark and at its very end
/// read back right.
#[test]
fn a_file_over_4_gib_is_read_by_range() {
    let len: u64 = (5 << 30) + 3;
    let key = [0x4b; 32];
    let byte = |i: u64| (i % 251) as u8;
    let attachment = description(key, [0; 32], len);
    assert_eq!(attachment.ciphertext_len(), Synthesized::new(key, len, &byte).total());
    for (offset, n) in [(0, 10), ((4 << 30) - 5, 10), (1 << 32, CHUNK + 1), (len - 100, 100)] {
        let mut out = Vec::new();
        attachment::decrypt_range(&attachment, Synthesized::new(key, len, &byte), offset, n, &mut out).unwrap();
        assert_eq!(out, (offset..offset + n).map(byte).collect::<Vec<u8>>(), "{offset}+{n}");
    }
    // The last chunk opens only as the last: a file cut at a chunk boundary
    // before its end, described as shorter, is refused.
    let shorter = description(key, [0; 32], (4 << 30) - 1);
    let error = attachment::decrypt_range(&shorter, Synthesized::new(key, len, &byte), (4 << 30) - 2, 1, io::sink());
    assert!(matches!(error, Err(AttachmentError::Unauthenticated { .. })), "{error:?}");
}

// ---------------------------------------------------------------------------
// Constant memory.
// ---------------------------------------------------------------------------

/// A reader of `len` generated bytes.
struct Generated {
    left: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        buf[..n].fill(0x5a);
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that keeps nothing.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encrypting 1 GiB and decrypting 256 MiB each allocate at most a few
/// hundred KiB at once (the four sealed-chunk buffers shared with the
/// hashing thread, one opened chunk, a hash state): the bound is asserted
/// on the allocation counter, not on time.
#[test]
fn memory_stays_constant_whatever_the_size() {
    const BOUND: usize = 512 * 1024;
    let len = 1u64 << 30;
    let (sent, peak) = peak_of(|| {
        let mut out = Sink(0);
        let sent = attachment::encrypt(Generated { left: len }, &mut out).unwrap();
        assert_eq!(out.0, sent.ciphertext_len());
        sent
    });
    assert_eq!(sent.plaintext_len(), len);
    assert!(peak <= BOUND, "encrypting 1 GiB allocated {peak} bytes at once");

    let len = 256u64 << 20;
    let key = [0x11; 32];
    let byte = |_: u64| 0x5a;
    let mut hash = blake3::Hasher::new();
    let mut source = Synthesized::new(key, len, &byte);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let attachment = description(key, *hash.finalize().as_bytes(), len);
    let (result, peak) = peak_of(|| {
        let mut out = Sink(0);
        attachment::decrypt(&attachment, Synthesized::new(key, len, &byte), &mut out).map(|()| out.0)
    });
    assert_eq!(result.unwrap(), len);
    // (The synthesized source holds at most two sealed chunks of its own:
    // the cached one and the next.)
    assert!(peak <= BOUND + 2 * SEALED_CHUNK as usize, "decrypting 256 MiB allocated {peak} bytes at once");

    // A piece at a time: 256 MiB through an `Encryptor`, the output drained
    // after each piece as an app's stream would.
    let piece = vec![0x33u8; 100_000];
    let mut out = Vec::with_capacity(2 * SEALED_CHUNK as usize);
    let ((), peak) = peak_of(|| {
        let mut encryptor = Encryptor::new();
        for _ in 0..(256 << 20) / piece.len() {
            encryptor.update(&piece, &mut out).unwrap();
            out.clear();
        }
        encryptor.finish(&mut out).unwrap();
    });
    assert!(peak <= BOUND, "encrypting 256 MiB in pieces allocated {peak} bytes at once");
}

// ---------------------------------------------------------------------------
// A piece at a time, and files.
// ---------------------------------------------------------------------------

/// Piece lengths from a fixed pseudo-random sequence: 0 to 70,000 bytes,
/// so that pieces start and end anywhere in a chunk, and some are empty.
fn piece_lengths(seed: u64) -> impl Iterator<Item = usize> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % 70_001) as usize
    })
}

#[test]
fn pieces_of_any_size_make_the_protocol_s_bytes() {
    for (seed, len) in [(1, 0), (2, 1), (3, 1024), (4, CHUNK_LEN), (5, 4 * CHUNK_LEN + 9), (6, 700_001)] {
        let plaintext = text(len);
        let mut encryptor = Encryptor::new();
        let mut blob = Vec::new();
        let mut at = 0;
        for piece in piece_lengths(seed) {
            if at == len {
                break;
            }
            let end = (at + piece).min(len);
            encryptor.update(&plaintext[at..end], &mut blob).unwrap();
            // Only whole chunks come out before `finish`.
            assert_eq!(blob.len() % SEALED_CHUNK as usize, 0);
            at = end;
        }
        let sent = encryptor.finish(&mut blob).unwrap();
        assert_eq!(sent.plaintext_len(), len as u64);
        assert_eq!(blob.len() as u64, sent.ciphertext_len());
        assert_eq!(sent.digest(), blake3_256(&blob));
        // The bytes of the construction written from the protocol text.
        let key: [u8; 32] = sent.to_bytes()[1..33].try_into().unwrap();
        let byte = |i: u64| plaintext[i as usize];
        let mut made = Vec::new();
        Synthesized::new(key, len as u64, &byte).read_to_end(&mut made).unwrap();
        assert!(made == blob, "{len} bytes in pieces");
        // Read back whole, and in pieces of other sizes.
        assert_eq!(decrypted(&sent, &blob).unwrap(), plaintext);
        let mut decryptor = Decryptor::new(&sent);
        let (mut out, mut at) = (Vec::new(), 0);
        for piece in piece_lengths(seed + 100) {
            if at == blob.len() {
                break;
            }
            let end = (at + piece).min(blob.len());
            decryptor.update(&blob[at..end], &mut out).unwrap();
            at = end;
        }
        decryptor.finish().unwrap();
        assert_eq!(out, plaintext, "{len}");
    }
}

#[test]
fn a_decryptor_that_failed_stays_failed() {
    let (sent, blob) = encrypted(&text(2 * CHUNK_LEN));
    let mut bad = blob.clone();
    bad[10] ^= 1;
    let mut decryptor = Decryptor::new(&sent);
    let mut out = Vec::new();
    assert!(matches!(decryptor.update(&bad, &mut out), Err(AttachmentError::Unauthenticated { chunk: 0 })));
    assert!(out.is_empty(), "nothing of a chunk that did not open");
    // The genuine blob now: refused, the stream is spent.
    let error = decryptor.update(&blob, &mut out).unwrap_err();
    assert!(matches!(error, AttachmentError::Finished));
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert!(matches!(decryptor.finish(), Err(AttachmentError::Finished)));
    // Cut in the middle of a chunk: every whole chunk came out, `finish`
    // refuses.
    let mut decryptor = Decryptor::new(&sent);
    let mut out = Vec::new();
    decryptor.update(&blob[..SEALED_CHUNK as usize + 5], &mut out).unwrap();
    assert_eq!(out.len(), CHUNK_LEN);
    assert!(matches!(decryptor.finish(), Err(AttachmentError::WrongLength)));
}

/// A temporary directory for one test, removed at the end.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("samizdat-attachments-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn files_are_decrypted_whole_or_not_at_all() {
    let dir = TempDir::new("files");
    let (input, blob_path, output) = (dir.0.join("in"), dir.0.join("blob"), dir.0.join("out"));
    let plaintext = text(5 * CHUNK_LEN + 17);
    std::fs::write(&input, &plaintext).unwrap();
    let sent = attachment::encrypt_file(&input, &blob_path).unwrap();
    let blob = std::fs::read(&blob_path).unwrap();
    assert_eq!(sent.digest(), blake3_256(&blob));
    attachment::decrypt_file(&sent, &blob_path, &output).unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), plaintext);

    // A blob altered in its last chunk: every chunk before it opens, but
    // nothing appears, and the file already at `output` is left as it was.
    std::fs::write(&output, b"the app's earlier file").unwrap();
    let mut bad = blob.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&blob_path, &bad).unwrap();
    let error = attachment::decrypt_file(&sent, &blob_path, &output).unwrap_err();
    assert!(matches!(error, AttachmentError::Unauthenticated { chunk: 5 }), "{error:?}");
    assert_eq!(std::fs::read(&output).unwrap(), b"the app's earlier file");
    // Another digest: found only at the end, and still nothing appears.
    std::fs::write(&blob_path, &blob).unwrap();
    let mut wrong = sent.to_bytes().to_vec();
    wrong[40] ^= 1;
    let wrong = Attachment::from_bytes(&wrong).unwrap();
    std::fs::remove_file(&output).unwrap();
    assert!(matches!(attachment::decrypt_file(&wrong, &blob_path, &output), Err(AttachmentError::Mismatch)));
    assert!(!output.exists());
    assert_eq!(dir.entries(), ["blob", "in"], "no partial file left");

    // A missing input: an i/o error (`store_failure`), no output.
    let error = attachment::encrypt_file(&dir.0.join("missing"), &output).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::StoreFailure);
    assert!(!output.exists());

    // A range, and the bound on what one call returns in memory.
    let range = attachment::read_range(&sent, &blob_path, 3 * CHUNK_LEN as u64 - 3, 6).unwrap();
    assert_eq!(&range[..], &plaintext[3 * CHUNK_LEN - 3..3 * CHUNK_LEN + 3]);
    let error = attachment::read_range(&sent, &blob_path, 0, MAX_RANGE_LEN + 1).unwrap_err();
    assert!(matches!(error, AttachmentError::RangeTooLong { .. }));
    assert_eq!(error.kind(), ErrorKind::LimitExceeded);
}

/// A reader that fails after `left` bytes, and a writer that fails after
/// `left` bytes: the error comes back, and the second thread that hashes
/// is stopped and joined (the call returns, nothing hangs).
struct FailsAfter {
    left: usize,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(1);
        self.left -= n;
        Ok(n)
    }
}

impl Write for FailsAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("the disk is full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_input_or_output_failing_midway_is_an_error_on_either_thread() {
    // In the first chunk (hashed on the caller's thread when the length is
    // not known) and past it (on the second thread).
    for at in [10, 3 * CHUNK_LEN, 9 * CHUNK_LEN + 5] {
        let error = attachment::encrypt(FailsAfter { left: at }, Vec::new()).unwrap_err();
        assert!(matches!(error, AttachmentError::Io(_)), "{error:?}");
        let error = attachment::encrypt(&text(12 * CHUNK_LEN)[..], FailsAfter { left: at }).unwrap_err();
        assert!(matches!(error, AttachmentError::Io(_)), "{error:?}");
    }
    let (sent, blob) = encrypted(&text(12 * CHUNK_LEN));
    for at in [10, 3 * CHUNK_LEN, 9 * CHUNK_LEN + 5] {
        let error = attachment::decrypt(&sent, &blob[..], FailsAfter { left: at }).unwrap_err();
        assert!(matches!(error, AttachmentError::Io(_)), "{error:?}");
    }
}
