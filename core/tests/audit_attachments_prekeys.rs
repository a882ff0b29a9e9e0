//! Outside audit of two recent changes: attachments (PROTOCOL.md 22) and
//! prekey bundles that offer one-time prekeys no earlier bundle offered
//! (commit 6b0fd46, PROTOCOL.md 14.7 'Bundles').
//!
//! Written by a helper as an outside auditor. Five tests failed on the code
//! as audited, each a flaw its doc comment describes (the attack, then the
//! fix suggested): a refill that counted keys already handed out, a store
//! of the previous release re-offering its lowest keys, the README's rule
//! for a server out of bundles, the temporary file's name too long for a
//! long output name, and a reader over-reporting what it read. All five
//! are fixed (the README, `refill_prekeys`, the index's optional cursors,
//! `.samizdat-partial-*`, `read_full`), and every test here now passes: the
//! rest show properties that held under attack.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use support::{addr, receive, temp_dir};

use std::{
    collections::BTreeSet,
    io::{self, Cursor, Read, Write},
    path::Path,
    sync::{Arc, Barrier, mpsc},
    time::Duration,
};

use samizdat::{
    attachment::{
        self, ATTACHMENT_LEN, Attachment, AttachmentError, CHUNK_LEN, Decryptor, Encryptor, MAX_ATTACHMENT_LEN,
        MAX_RANGE_LEN, TAG_LEN,
    },
    device::Device,
    prekeys::{PqPreKeyKind, PreKeyBundle},
    store::MemoryBackend,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Deterministic, non-repeating test data.
fn data(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn seal(plaintext: &[u8]) -> (Attachment, Vec<u8>) {
    let mut blob = Vec::new();
    let sent = attachment::encrypt(plaintext, &mut blob).unwrap();
    (sent, blob)
}

/// Runs `f` on a thread and fails if it does not finish in `secs` seconds
/// (a hang or deadlock), re-raising a panic.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let value = f();
        let _ = tx.send(());
        value
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: did not finish in {secs} s (hang or deadlock)"),
    }
}

/// Lists the names in `dir`.
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

// ---------------------------------------------------------------------------
// Readers and writers that misbehave
// ---------------------------------------------------------------------------

/// A reader that yields `data` in pieces of the sizes `sizes` cycles
/// through (0 meaning an `Interrupted` error), and fails with an
/// `io::Error` once `fail_at` bytes were given.
struct Hostile {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    step: usize,
    fail_at: Option<usize>,
}

impl Hostile {
    fn new(data: Vec<u8>, sizes: &[usize], fail_at: Option<usize>) -> Self {
        Self { data, pos: 0, sizes: sizes.to_vec(), step: 0, fail_at }
    }
}

impl Read for Hostile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_at.is_some_and(|at| self.pos >= at) {
            return Err(io::Error::other("the reader fails here"));
        }
        let size = self.sizes[self.step % self.sizes.len()];
        self.step += 1;
        if size == 0 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let mut n = size.min(buf.len()).min(self.data.len() - self.pos);
        if let Some(at) = self.fail_at {
            n = n.min(at - self.pos);
        }
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A writer that takes at most `max` bytes a call, is `Interrupted` every
/// third call, and fails once `fail_at` bytes were written.
struct HostileWriter {
    out: Vec<u8>,
    max: usize,
    calls: usize,
    fail_at: Option<usize>,
}

impl Write for HostileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        if self.fail_at.is_some_and(|at| self.out.len() >= at) {
            return Err(io::Error::other("the writer fails here"));
        }
        let mut n = buf.len().min(self.max);
        if let Some(at) = self.fail_at {
            n = n.min(at - self.out.len());
        }
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Positions around every chunk boundary of a stream of `chunks` chunks of
/// `unit` bytes, the thread switch (after the first chunk) included.
fn positions(unit: usize, chunks: usize) -> Vec<usize> {
    let mut at = vec![0, 1];
    for c in 1..=chunks {
        let b = c * unit;
        at.extend([b - 1, b, b + 1]);
        at.push(b + unit / 2);
    }
    at
}

// ---------------------------------------------------------------------------
// A. Attachments
// ---------------------------------------------------------------------------

/// Reading and writing that fail at every position around the chunk
/// boundaries (including where the hash moves to the second thread), with
/// short and `Interrupted` reads and writes: every call returns (no hang,
/// deadlock or panic), an error where something failed, and a round trip
/// where nothing did.
#[test]
fn failing_and_short_io_at_every_boundary_never_hangs_or_panics() {
    within(300, "encrypt/decrypt under failing io", || {
        let plaintext = data(5 * CHUNK_LEN + 777);
        let (sent, blob) = seal(&plaintext);
        let sizes: &[usize] = &[1, 0, 4097, CHUNK_LEN + TAG_LEN + 3, 0, 13, 3 * CHUNK_LEN];
        // Encryption: the reader fails at each position.
        for at in positions(CHUNK_LEN, 5) {
            let mut out = Vec::new();
            let result = attachment::encrypt(Hostile::new(plaintext.clone(), sizes, Some(at)), &mut out);
            if at >= plaintext.len() {
                assert_eq!(result.unwrap().plaintext_len(), plaintext.len() as u64);
                continue;
            }
            assert!(matches!(result, Err(AttachmentError::Io(_))), "encrypt, reader failing at {at}: {result:?}");
        }
        // Encryption: the writer fails at each position.
        for at in positions(CHUNK_LEN + TAG_LEN, 6) {
            let mut w = HostileWriter { out: Vec::new(), max: 5000, calls: 0, fail_at: Some(at) };
            let result = attachment::encrypt(&plaintext[..], &mut w);
            if at < blob.len() {
                assert!(matches!(result, Err(AttachmentError::Io(_))), "encrypt, writer failing at {at}: {result:?}");
            }
        }
        // Decryption: the reader fails at each position.
        for at in positions(CHUNK_LEN + TAG_LEN, 6) {
            let mut out = Vec::new();
            let result = attachment::decrypt(&sent, Hostile::new(blob.clone(), sizes, Some(at)), &mut out);
            if at <= blob.len() {
                assert!(result.is_err(), "decrypt, reader failing at {at}");
            }
        }
        // Decryption: the writer fails at each position.
        for at in positions(CHUNK_LEN, 5) {
            let mut w = HostileWriter { out: Vec::new(), max: 3000, calls: 0, fail_at: Some(at) };
            let result = attachment::decrypt(&sent, &blob[..], &mut w);
            if at < plaintext.len() {
                assert!(matches!(result, Err(AttachmentError::Io(_))), "decrypt, writer failing at {at}: {result:?}");
            }
        }
        // Nothing fails: short and interrupted io round-trips.
        let mut w = HostileWriter { out: Vec::new(), max: 777, calls: 0, fail_at: None };
        let sent2 = attachment::encrypt(Hostile::new(plaintext.clone(), sizes, None), &mut w).unwrap();
        let mut out = HostileWriter { out: Vec::new(), max: 1001, calls: 0, fail_at: None };
        attachment::decrypt(&sent2, Hostile::new(w.out.clone(), sizes, None), &mut out).unwrap();
        assert_eq!(out.out, plaintext);
    });
}

/// A reader that breaks `Read`'s contract by reporting more bytes than the
/// buffer holds (`Ok(buf.len() + 1)`): the attack is a hostile or buggy
/// `Read` implementation (an app's stream adapter, a binding's callback).
/// `read_full` adds the reported count (`filled = CHUNK_LEN + 1`) and
/// `seal_stream` counts a plaintext byte that was never read: `encrypt`
/// returns `Ok` with `plaintext_len` one too many, the padding marker sits
/// where the description says plaintext is, and the recipient's `decrypt`
/// fails with `Mismatch`: an attachment that can never be opened is sent
/// without any error. (std's `read_exact` panics in this case.)
///
/// Fix: in `read_full`, refuse `n > rest.len()` with
/// `io::ErrorKind::InvalidData` (or clamp), so that `encrypt` fails loudly.
#[test]
fn a_reader_that_over_reports_does_not_yield_a_silently_broken_attachment() {
    struct OverReports {
        left: usize,
    }
    impl Read for OverReports {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            let n = buf.len().min(self.left);
            buf[..n].fill(0x41);
            self.left -= n;
            Ok(if n == buf.len() { n + 1 } else { n })
        }
    }
    let mut blob = Vec::new();
    match attachment::encrypt(OverReports { left: CHUNK_LEN }, &mut blob) {
        Err(_) => {} // refused: fine
        Ok(sent) => {
            let mut out = Vec::new();
            let opened = attachment::decrypt(&sent, &blob[..], &mut out);
            assert!(
                opened.is_ok(),
                "encrypt accepted a lying reader and produced an attachment (plaintext_len {}) that does not \
                 decrypt: {opened:?}",
                sent.plaintext_len()
            );
        }
    }
}

/// A `Decryptor` fed hostile piece boundaries: one byte at a time with
/// empty pieces between, a chunk less one byte (nothing released), the
/// whole file plus one byte in one piece (extension refused), the file less
/// its last byte (truncation refused at `finish`, the last chunk's
/// plaintext never released), a flipped bit in the last tag (nothing of
/// that chunk released).
#[test]
fn decryptor_under_hostile_piece_boundaries() {
    let plaintext = data(2 * CHUNK_LEN + 5000);
    let (sent, blob) = seal(&plaintext);
    let sealed = CHUNK_LEN + TAG_LEN;

    // Byte by byte, with empty pieces.
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    for (i, byte) in blob.iter().enumerate() {
        d.update(&[], &mut out).unwrap();
        d.update(std::slice::from_ref(byte), &mut out).unwrap();
        // Never a byte of plaintext before its chunk is complete.
        if i + 1 < blob.len() {
            let complete = (i + 1) / sealed;
            assert!(out.len() <= complete * CHUNK_LEN, "plaintext released before its chunk authenticated at {i}");
        }
    }
    d.update(&[], &mut out).unwrap();
    d.finish().unwrap();
    assert_eq!(out, plaintext);

    // A chunk less one byte: nothing released.
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    d.update(&blob[..sealed - 1], &mut out).unwrap();
    assert!(out.is_empty());
    assert!(matches!(d.finish(), Err(AttachmentError::WrongLength)));

    // Extension in one huge piece.
    let mut extended = blob.clone();
    extended.push(0);
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    assert!(matches!(d.update(&extended, &mut out), Err(AttachmentError::WrongLength)));
    assert!(matches!(d.update(&[], &mut out), Err(AttachmentError::Finished)));
    assert!(matches!(d.finish(), Err(AttachmentError::Finished)));
    // Extension after the right length, in a later piece.
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    d.update(&blob, &mut out).unwrap();
    assert!(matches!(d.update(&[0], &mut out), Err(AttachmentError::WrongLength)));
    assert!(d.finish().is_err());

    // Truncated by one byte: the last chunk is not released, finish refuses.
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    d.update(&blob[..blob.len() - 1], &mut out).unwrap();
    assert_eq!(out.len(), 2 * CHUNK_LEN);
    assert!(matches!(d.finish(), Err(AttachmentError::WrongLength)));

    // Truncated at a chunk boundary (dropping the last chunk).
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    d.update(&blob[..2 * sealed], &mut out).unwrap();
    assert!(matches!(d.finish(), Err(AttachmentError::WrongLength)));

    // A flipped bit in the last tag: that chunk's plaintext is not released.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let mut d = Decryptor::new(&sent);
    let mut out = Vec::new();
    assert!(matches!(d.update(&bad, &mut out), Err(AttachmentError::Unauthenticated { chunk: 2 })));
    assert_eq!(out.len(), 2 * CHUNK_LEN);
}

/// Descriptions at and past the 2^48 limit, and lengths that disagree:
/// parsed or refused as documented, and decrypting, streaming or reading a
/// range of one over a short input errs without panicking or allocating.
#[test]
fn descriptions_near_the_limit_and_lengths_that_disagree() {
    let (sent, _) = seal(b"hello");
    let mut bytes = sent.to_bytes().to_vec();
    assert_eq!(bytes.len(), ATTACHMENT_LEN);
    let with = |plain: u64, cipher: u64| {
        let mut b = bytes.clone();
        b[65..73].copy_from_slice(&plain.to_be_bytes());
        b[73..81].copy_from_slice(&cipher.to_be_bytes());
        Attachment::from_bytes(&b)
    };
    for plain in [MAX_ATTACHMENT_LEN, MAX_ATTACHMENT_LEN - 1, MAX_ATTACHMENT_LEN - (CHUNK_LEN as u64)] {
        let huge = with(plain, attachment::ciphertext_len(plain)).unwrap();
        assert!(huge.ciphertext_len() > plain);
        let mut out = Vec::new();
        assert!(matches!(attachment::decrypt(&huge, &[0u8; 100][..], &mut out), Err(AttachmentError::WrongLength)));
        let mut d = Decryptor::new(&huge);
        d.update(&[0u8; 100], &mut out).unwrap();
        assert!(matches!(d.finish(), Err(AttachmentError::WrongLength)));
        let r = attachment::decrypt_range(&huge, Cursor::new(vec![0u8; 10]), plain - 10, 10, &mut out);
        assert!(matches!(r, Err(AttachmentError::WrongLength)), "{r:?}");
        let r = attachment::decrypt_range(&huge, Cursor::new(vec![0u8; 10]), plain - 10, 11, &mut out);
        assert!(matches!(r, Err(AttachmentError::OutOfRange { .. })), "{r:?}");
        let r = attachment::decrypt_range(&huge, Cursor::new(vec![0u8; 10]), u64::MAX, 2, &mut out);
        assert!(matches!(r, Err(AttachmentError::OutOfRange { .. })), "{r:?}");
        assert!(out.is_empty());
    }
    for (plain, cipher) in [
        (MAX_ATTACHMENT_LEN + 1, attachment::ciphertext_len(MAX_ATTACHMENT_LEN + 1)),
        (u64::MAX, attachment::ciphertext_len(u64::MAX)),
        (u64::MAX, u64::MAX),
        (5, attachment::ciphertext_len(5) + 1),
        (5, attachment::ciphertext_len(6000)),
        (0, 0),
    ] {
        assert!(matches!(with(plain, cipher), Err(AttachmentError::Malformed)), "{plain} {cipher}");
    }
    bytes[0] = 1; // the unreleased SHA-256 version
    assert!(matches!(Attachment::from_bytes(&bytes), Err(AttachmentError::Malformed)));
    bytes[0] = 3;
    assert!(matches!(Attachment::from_bytes(&bytes), Err(AttachmentError::Malformed)));
    assert!(matches!(Attachment::from_bytes(&bytes[..80]), Err(AttachmentError::Malformed)));
    // ciphertext_len saturates rather than wraps.
    assert!(attachment::ciphertext_len(u64::MAX) >= attachment::ciphertext_len(MAX_ATTACHMENT_LEN));
}

/// No secret in `Debug`: the key (from `to_bytes`) appears in no form in the
/// `Debug` of the attachment, an `Encryptor`, a `Decryptor` or an error.
#[test]
fn no_key_in_debug_output() {
    let mut e = Encryptor::new();
    let mut blob = Vec::new();
    e.update(&data(100_000), &mut blob).unwrap();
    let printed_encryptor = format!("{e:?} {e:#?}");
    let sent = e.finish(&mut blob).unwrap();
    let key = sent.to_bytes()[1..33].to_vec();
    let d = Decryptor::new(&sent);
    let err = AttachmentError::Unauthenticated { chunk: 3 };
    let printed = format!("{sent:?} {sent:#?} {d:?} {d:#?} {err:?} {printed_encryptor}");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let listed = format!("{:?}", &key[..8]).trim_end_matches(']').to_string();
    assert!(!printed.to_lowercase().contains(&hex[..16]), "{printed}");
    assert!(!printed.contains(&listed), "{printed}");
}

/// `decrypt_file` of a tampered blob (a bit flipped in the first, a middle
/// or the last chunk; cut; extended; another digest) over an existing
/// output: the output keeps its old contents, no partial file is left
/// beside it. A symlink at the output is replaced, never written through;
/// an output that is a directory or in a missing directory fails cleanly.
#[test]
fn decrypt_file_failures_leave_nothing_behind() {
    let dir = temp_dir("files");
    let plaintext = data(3 * CHUNK_LEN + 100);
    std::fs::write(dir.join("in"), &plaintext).unwrap();
    let sent = attachment::encrypt_file(&dir.join("in"), &dir.join("blob")).unwrap();
    let blob = std::fs::read(dir.join("blob")).unwrap();
    std::fs::write(dir.join("out"), b"old contents").unwrap();
    let before = names_in(&dir);

    let mut tampers: Vec<(String, Vec<u8>, Attachment)> = Vec::new();
    for at in [0, CHUNK_LEN + TAG_LEN + 5, blob.len() - 1, blob.len() - TAG_LEN - 1] {
        let mut b = blob.clone();
        b[at] ^= 0x40;
        tampers.push((format!("flip at {at}"), b, sent.clone()));
    }
    tampers.push(("cut".into(), blob[..blob.len() - 1].to_vec(), sent.clone()));
    tampers.push(("cut at a chunk".into(), blob[..3 * (CHUNK_LEN + TAG_LEN)].to_vec(), sent.clone()));
    let mut extended = blob.clone();
    extended.extend_from_slice(&[0; 17]);
    tampers.push(("extended".into(), extended, sent.clone()));
    let mut other_digest = sent.to_bytes().to_vec();
    other_digest[40] ^= 1;
    tampers.push(("digest".into(), blob.clone(), Attachment::from_bytes(&other_digest).unwrap()));

    for (what, bad, description) in &tampers {
        std::fs::write(dir.join("bad"), bad).unwrap();
        let result = attachment::decrypt_file(description, &dir.join("bad"), &dir.join("out"));
        assert!(result.is_err(), "{what}");
        assert_eq!(std::fs::read(dir.join("out")).unwrap(), b"old contents", "{what}");
        let mut now = names_in(&dir);
        now.remove("bad");
        assert_eq!(now, before, "{what}: something left behind");
    }

    // A symlink at the output: replaced, its target untouched.
    #[cfg(unix)]
    {
        std::fs::write(dir.join("target"), b"target").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        std::fs::write(dir.join("bad"), &tampers[0].1).unwrap();
        assert!(attachment::decrypt_file(&sent, &dir.join("bad"), &dir.join("link")).is_err());
        assert_eq!(std::fs::read(dir.join("target")).unwrap(), b"target");
        assert!(std::fs::symlink_metadata(dir.join("link")).unwrap().file_type().is_symlink());
        attachment::decrypt_file(&sent, &dir.join("blob"), &dir.join("link")).unwrap();
        assert_eq!(std::fs::read(dir.join("target")).unwrap(), b"target");
        assert!(std::fs::symlink_metadata(dir.join("link")).unwrap().file_type().is_file());
        assert_eq!(std::fs::read(dir.join("link")).unwrap(), plaintext);
    }

    // An output that is a directory; an output in a missing directory.
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    let before = names_in(&dir);
    assert!(attachment::decrypt_file(&sent, &dir.join("blob"), &dir.join("a-dir")).is_err());
    assert!(attachment::decrypt_file(&sent, &dir.join("blob"), &dir.join("missing/out")).is_err());
    assert!(attachment::decrypt_file(&sent, &dir.join("blob"), Path::new("/")).is_err());
    assert_eq!(names_in(&dir), before);
    assert!(names_in(&dir.join("a-dir")).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The attack: a file name the app takes from the sender (or any long
/// but valid name, e.g. a 240-byte name; Linux allows 255). `decrypt_file`
/// and `encrypt_file` write to `.<name>.partial-<16 hex>` beside the
/// output, 26 bytes longer than `<name>`: for a name of 230 to 255 bytes
/// the temporary name exceeds NAME_MAX and the call fails with
/// `ENAMETOOLONG` although the output path itself is valid (a sender can
/// make every recipient's save fail by choosing such a name).
///
/// Fix: build the temporary name without the output's full name, e.g.
/// `.samizdat-partial-<random>` (or truncate `<name>` to leave room).
#[test]
fn a_long_but_valid_output_name_can_be_written() {
    let dir = temp_dir("long-name");
    let plaintext = data(1000);
    std::fs::write(dir.join("in"), &plaintext).unwrap();
    let long = "p".repeat(240);
    // The name itself is valid.
    std::fs::write(dir.join(&long), b"x").unwrap();
    std::fs::remove_file(dir.join(&long)).unwrap();
    let sent = attachment::encrypt_file(&dir.join("in"), &dir.join("blob")).unwrap();
    let decrypted = attachment::decrypt_file(&sent, &dir.join("blob"), &dir.join(&long));
    let encrypted = attachment::encrypt_file(&dir.join("in"), &dir.join(format!("{long}.enc")));
    let _ = std::fs::remove_dir_all(&dir);
    decrypted.expect("decrypt_file to a valid 240-byte file name");
    encrypted.expect("encrypt_file to a valid 244-byte file name");
}

/// `read_range`: too long, in the padding, past the end, a tampered chunk
/// in the range (refused, nothing returned), a tampered chunk outside it
/// (not read), a range across a chunk boundary.
#[test]
fn read_range_bounds_and_tampering() {
    let dir = temp_dir("range");
    let plaintext = data(3 * CHUNK_LEN + 10);
    std::fs::write(dir.join("in"), &plaintext).unwrap();
    let sent = attachment::encrypt_file(&dir.join("in"), &dir.join("blob")).unwrap();
    let blob_path = dir.join("blob");
    let len = plaintext.len() as u64;
    assert!(matches!(
        attachment::read_range(&sent, &blob_path, 0, MAX_RANGE_LEN + 1),
        Err(AttachmentError::RangeTooLong { .. })
    ));
    assert!(matches!(attachment::read_range(&sent, &blob_path, len, 1), Err(AttachmentError::OutOfRange { .. })));
    assert!(matches!(attachment::read_range(&sent, &blob_path, len - 1, 2), Err(AttachmentError::OutOfRange { .. })));
    assert!(attachment::read_range(&sent, &blob_path, len, 0).unwrap().is_empty());
    let r = attachment::read_range(&sent, &blob_path, CHUNK_LEN as u64 - 3, 6).unwrap();
    assert_eq!(&r[..], &plaintext[CHUNK_LEN - 3..CHUNK_LEN + 3]);
    let r = attachment::read_range(&sent, &blob_path, len - 10, 10).unwrap();
    assert_eq!(&r[..], &plaintext[plaintext.len() - 10..]);
    let mut blob = std::fs::read(&blob_path).unwrap();
    blob[CHUNK_LEN + TAG_LEN + 100] ^= 1;
    std::fs::write(&blob_path, &blob).unwrap();
    let r = attachment::read_range(&sent, &blob_path, CHUNK_LEN as u64 - 3, 6);
    assert!(matches!(r, Err(AttachmentError::Unauthenticated { chunk: 1 })), "{r:?}");
    let r = attachment::read_range(&sent, &blob_path, 0, 100).unwrap();
    assert_eq!(&r[..], &plaintext[..100]);
    // Truncated: the last chunk's range refuses.
    std::fs::write(&blob_path, &blob[..blob.len() - 1]).unwrap();
    assert!(attachment::read_range(&sent, &blob_path, len - 1, 1).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// B. Prekey bundles
// ---------------------------------------------------------------------------

fn one_time_ids(bundles: &[Vec<u8>]) -> (Vec<Option<u32>>, Vec<(u32, PqPreKeyKind)>) {
    let parsed: Vec<PreKeyBundle> = bundles.iter().map(|b| PreKeyBundle::from_bytes(b).unwrap()).collect();
    (
        parsed.iter().map(PreKeyBundle::one_time_prekey_id).collect(),
        parsed.iter().map(PreKeyBundle::pq_prekey).collect(),
    )
}

/// Four handles of one SQLite store, on four threads released together,
/// each calling `prekey_bundle` and `prekey_bundles(2)` repeatedly: no
/// one-time prekey (of either kind) is offered twice, and every one is
/// offered once all are drained.
#[test]
fn concurrent_handles_never_offer_a_one_time_prekey_twice() {
    let dir = temp_dir("concurrent");
    let path = dir.join("bob.db");
    let bob = Device::create(&path, &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    bob.refill_prekeys(40, 40, UNIX_EPOCH).unwrap();
    let (x_held, q_held) = bob.prekey_counts().unwrap();
    drop(bob);
    let bundles = within(300, "concurrent bundles", move || {
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let device = Device::open(&path, &StorageKey::from_bytes([2; 32])).unwrap();
                    barrier.wait();
                    let mut got = Vec::new();
                    for i in 0..8 {
                        if (i + t) % 2 == 0 {
                            got.push(device.prekey_bundle().unwrap());
                        } else {
                            got.extend(device.prekey_bundles(2).unwrap());
                        }
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let (x, q) = one_time_ids(&bundles);
    let x: Vec<u32> = x.into_iter().flatten().collect();
    let q: Vec<u32> = q.into_iter().filter(|(_, k)| matches!(k, PqPreKeyKind::OneTime)).map(|(id, _)| id).collect();
    let (xs, qs): (BTreeSet<u32>, BTreeSet<u32>) = (x.iter().copied().collect(), q.iter().copied().collect());
    assert_eq!(xs.len(), x.len(), "an X25519 one-time prekey offered twice: {x:?}");
    assert_eq!(qs.len(), q.len(), "an ML-KEM one-time prekey offered twice: {q:?}");
    assert_eq!((xs.len(), qs.len()), (x_held, q_held), "4 x 12 bundles drain 40 of each kind");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Accounting stays right as contacts consume handed-out keys in any
/// order: counts drop by one per session, the cursor does not move back
/// (a consumed key frees no id for re-offering), `prekey_bundles(0)` writes
/// and offers nothing, a reopen keeps the cursor, and every handed-out
/// bundle still starts a session that reads.
#[test]
fn consumption_in_any_order_keeps_the_accounting() {
    let dir = temp_dir("accounting");
    let path = dir.join("bob.db");
    let bob = Device::create(&path, &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    bob.refill_prekeys(6, 6, UNIX_EPOCH).unwrap();
    let counts = bob.prekey_counts().unwrap();
    let first = bob.prekey_bundles(3).unwrap();
    assert!(bob.prekey_bundles(0).unwrap().is_empty());
    // Consume the third, then the first.
    for (i, b) in [(0usize, &first[2]), (1, &first[0])] {
        let c = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([9; 32]),
            addr(&format!("c{i}")),
            UNIX_EPOCH,
        )
        .unwrap();
        c.start_session(b).unwrap();
        let wire = c.encrypt(bob.address(), b"hi").unwrap();
        assert_eq!(receive(&bob, c.address(), &wire).unwrap(), b"hi");
    }
    assert_eq!(bob.prekey_counts().unwrap(), (counts.0 - 2, counts.1 - 2));
    drop(bob);
    let bob = Device::open(&path, &StorageKey::from_bytes([2; 32])).unwrap();
    let rest = bob.prekey_bundles(10).unwrap();
    assert_eq!(rest.len(), 3, "the three never offered, and no other");
    let (x_first, _) = one_time_ids(&first);
    let (x_rest, _) = one_time_ids(&rest);
    let seen: BTreeSet<_> = x_first.iter().chain(&x_rest).flatten().collect();
    assert_eq!(seen.len(), 6);
    for (i, b) in first.iter().skip(1).take(1).chain(rest.iter()).enumerate() {
        let c = Device::create_in(
            MemoryBackend::new(),
            &StorageKey::from_bytes([9; 32]),
            addr(&format!("d{i}")),
            UNIX_EPOCH,
        )
        .unwrap();
        c.start_session(b).unwrap();
        let wire = c.encrypt(bob.address(), b"hi").unwrap();
        assert_eq!(receive(&bob, c.address(), &wire).unwrap(), b"hi", "bundle {i}");
    }
    assert_eq!(bob.prekey_counts().unwrap(), (counts.0 - 6, counts.1 - 6));
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The attack: anyone who can ask the server for Bob's bundles (any
/// contact, or a stranger) asks for them all and never uses them. Every
/// one-time prekey is then handed out but still held, so
/// `prekey_counts()` keeps reporting them (10, 10) and `refill_prekeys`
/// (which counts held keys, handed out or not) adds nothing: the app,
/// following the README ("call `refill_prekeys` when `prekey_counts()` is
/// low") never refills, and every later bundle offers no one-time prekey,
/// permanently (handed-out keys are never reclaimed; at 200 held the cap
/// forbids any refill). New sessions lose the one-time-prekey protection
/// for good, contrary to "`RefillPreKeys` adds keys with new, higher ids,
/// which the next bundles offer" (PROTOCOL.md 14.7).
///
/// Fix: let `prekey_counts` (or a new `unoffered_prekey_counts`) and
/// `refill_prekeys` count the keys at or above the cursors (not yet
/// offered), and have refill delete the oldest handed-out, unconsumed keys
/// when the 200 cap would be exceeded.
#[test]
fn a_refill_after_every_key_was_handed_out_brings_one_time_prekeys_back() {
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    bob.refill_prekeys(10, 10, UNIX_EPOCH).unwrap();
    let held = bob.prekey_counts().unwrap();
    let drained = bob.prekey_bundles(200).unwrap();
    assert_eq!(drained.len(), held.0.max(held.1));
    let (x, _) = one_time_ids(&[bob.prekey_bundle().unwrap()]);
    assert_eq!(x, vec![None], "everything handed out");
    // The app refills as documented.
    let added = bob.refill_prekeys(5, 10, UNIX_EPOCH + Duration::from_secs(100)).unwrap();
    let counts = bob.prekey_counts().unwrap();
    let (x, q) = one_time_ids(&[bob.prekey_bundle().unwrap()]);
    assert!(
        x[0].is_some() && matches!(q[0].1, PqPreKeyKind::OneTime),
        "after every one-time prekey was handed out, refill_prekeys(5, 10) added {added} keys (prekey_counts \
         reports {counts:?} left), and the next bundle offers no one-time prekey: {x:?} {q:?}"
    );
}

/// Found by this audit: the README said that "when none is left [the
/// server] may give any bundle again, whose one-time keys the first taker
/// consumed (the session still starts)". Followed, that rule fails: a
/// bundle taken twice names a consumed one-time prekey, and the second
/// contact's first message does not read. Fixed in the README: only a
/// bundle without one-time prekeys (what `prekey_bundle` returns once every
/// one was handed out) may go to any number of contacts. Checked here: such
/// a bundle starts any number of sessions, and a bundle with a one-time
/// prekey given twice still fails for the second taker (as documented).
#[test]
fn readme_rule_only_a_bundle_without_one_time_prekeys_goes_to_many_contacts() {
    let bob =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), addr("bob"), UNIX_EPOCH).unwrap();
    bob.refill_prekeys(2, 2, UNIX_EPOCH).unwrap();
    let bundles = bob.prekey_bundles(10).unwrap();
    assert_eq!(bundles.len(), 2);
    let fallback = bob.prekey_bundle().unwrap();
    assert_eq!(one_time_ids(std::slice::from_ref(&fallback)).0, vec![None]);
    for (i, name) in ["carol", "dave", "erin"].into_iter().enumerate() {
        let contact =
            Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([3 + i as u8; 32]), addr(name), UNIX_EPOCH)
                .unwrap();
        contact.start_session(&fallback).unwrap();
        let wire = contact.encrypt(bob.address(), name.as_bytes()).unwrap();
        assert_eq!(receive(&bob, contact.address(), &wire).unwrap(), name.as_bytes());
    }
    // A bundle with one-time prekeys, given twice: the second taker fails.
    let frank =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([7; 32]), addr("frank"), UNIX_EPOCH).unwrap();
    frank.start_session(&bundles[0]).unwrap();
    let wire = frank.encrypt(bob.address(), b"frank").unwrap();
    assert_eq!(receive(&bob, frank.address(), &wire).unwrap(), b"frank");
    let grace =
        Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([8; 32]), addr("grace"), UNIX_EPOCH).unwrap();
    grace.start_session(&bundles[0]).unwrap();
    let wire = grace.encrypt(bob.address(), b"grace").unwrap();
    assert!(receive(&bob, grace.address(), &wire).is_err(), "a consumed one-time prekey");
}

/// Found by this audit: a store written before fields 8 and 9 existed read
/// both cursors as 0. The previous release's `prekey_bundle` offered the
/// lowest one-time prekeys held at every call, so the bundles uploaded
/// before the upgrade (still on the server) name the lowest held ids; after
/// the upgrade the first bundle offered those very ids again, and the
/// second contact to use one failed: the trap reopened once per upgraded
/// device. Fixed: an index without the cursors reads them as `next_id`
/// (everything held counts as handed out). Checked: after the upgrade no
/// bundle offers a key held before it; a refill brings new ones, with
/// higher ids, and keeps the old ones for the contacts that hold them.
#[test]
fn a_store_of_the_previous_release_does_not_reoffer_its_lowest_one_time_prekeys() {
    let dir = temp_dir("upgrade");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema3/bob.db");
    std::fs::copy(&golden, dir.join("bob.db")).unwrap();
    const BOB_KEY: StorageKey = StorageKey::from_bytes([0x22; 32]);
    let bob = Device::open(dir.join("bob.db"), &BOB_KEY).unwrap();
    let held_before = bob.prekey_counts().unwrap();
    assert!(held_before.0 > 0 && held_before.1 > 0, "the golden store holds one-time prekeys: {held_before:?}");
    let (x, q) = one_time_ids(&[bob.prekey_bundle().unwrap()]);
    assert_eq!(x, vec![None], "a one-time X25519 prekey of the previous release offered again");
    assert!(matches!(q[..], [(_, PqPreKeyKind::LastResort)]), "a one-time ML-KEM prekey offered again: {q:?}");
    // A refill: only new keys are offered; the old ones are still held.
    let added = bob.refill_prekeys(3, 3, UNIX_EPOCH).unwrap();
    assert_eq!(added, 6);
    let held = bob.prekey_counts().unwrap();
    assert_eq!(held, (held_before.0 + 3, held_before.1 + 3));
    let (x, _) = one_time_ids(&bob.prekey_bundles(10).unwrap());
    assert_eq!(x.len(), 3);
    assert!(x.iter().all(Option::is_some));
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}
