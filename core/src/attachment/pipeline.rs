//! The chunks of [`super::encrypt`] and [`super::decrypt`] on two threads.
//!
//! Per 64 KiB chunk, sealing or opening costs 41 to 44 µs here, hashing
//! the ciphertext for the digest (BLAKE3) 11 to 14 µs, and the copies in from
//! the `Read` and out to the `Write` 2 to 14 µs more. Done in turn on one
//! thread that is about three quarters of the cipher's speed; with only the
//! hash on a second thread, the caller's thread still seals and copies
//! every chunk while the second one mostly waits.
//! So, for a file of two chunks or more, the two threads share the work:
//! each chunk has two steps (sealed then hashed, or hashed then opened, in
//! place in its buffer), which either thread may take, and the chunks sit
//! on a board between them:
//!
//! - the caller's thread writes the oldest chunk once both its steps are
//!   done, reads the next chunk into a free buffer, and otherwise seals or
//!   opens any chunk ready for it, or hashes the next one if nothing else
//!   is left (the `Read` and the `Write` never leave it, so they need not
//!   be `Send`);
//! - the second thread (scoped: joined before the call returns) hashes the
//!   next chunk in order as soon as it can, and otherwise seals or opens
//!   any chunk ready for it.
//!
//! The split follows the two threads' speeds on any machine (where the
//! hash is slow, the second thread only hashes). The hash sees the chunks in
//! order; an opened chunk is written only once it authenticated. At most
//! [`BUFFERS`] chunks are in flight, so memory stays at a few chunks
//! whatever the file's size. A waiting thread spins briefly before it
//! sleeps, so that neither pays a wake-up per chunk. A small file never
//! starts a thread, and if the thread cannot be started the caller's
//! thread does everything; the ciphertext, plaintext and digest are the
//! same either way. If the second thread ended early (it cannot short of a
//! bug: it would unwind), the caller's thread finishes what is on the board
//! and reports the chunk lost with it as an error, never waiting for it
//! and never panicking.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::{Builder, Scope, ScopedJoinHandle},
    time::{Duration, Instant},
};

use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroize;

use super::{AttachmentError, CHUNK_LEN, DigestHash, TAG_LEN, open_in_place, seal_in_place};

/// A buffer for one sealed chunk, `CHUNK_LEN + TAG_LEN` bytes, wiped on
/// drop (it holds plaintext before a chunk is sealed and after it is
/// opened). Not `Zeroizing<Vec<u8>>`: zeroize wipes a `Vec` a byte at a
/// time (9 µs for 64 KiB here, a fifth of a chunk's sealing, for each of
/// the four buffers of every call) and a slice in bulk (1 µs).
pub(super) struct Buffer(Vec<u8>);

impl Buffer {
    fn new() -> Self {
        Self(vec![0u8; CHUNK_LEN + TAG_LEN])
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// The chunks in flight once a second thread runs (one being read, the
/// others on the board): enough for both threads to find work.
const BUFFERS: usize = 4;

/// How long a thread spins for the other before it sleeps: about the time
/// to seal two chunks. Sleeping and being woken for every chunk costs a
/// system call per chunk.
const SPIN: Duration = Duration::from_micros(100);

/// What is done to a chunk.
#[derive(Clone, Copy, Debug)]
pub(super) enum Job {
    /// Seal its first `len` bytes in place as chunk `index` (the tag after
    /// them), then hash the sealed chunk.
    Seal {
        /// The chunk's index.
        index: u64,
        /// Whether it is the file's last.
        last: bool,
    },
    /// Hash the sealed chunk (`len` bytes and the tag), then open it in
    /// place.
    Open {
        /// The chunk's index.
        index: u64,
        /// Whether it is the file's last.
        last: bool,
    },
}

impl Job {
    /// The chunk's index.
    fn index(self) -> u64 {
        match self {
            Job::Seal { index, .. } | Job::Open { index, .. } => index,
        }
    }
}

/// A chunk on the board.
struct Slot {
    /// `None` while a thread works on it.
    buf: Option<Buffer>,
    /// The bytes sealed or opened (the tag not counted).
    len: usize,
    job: Job,
    ciphered: bool,
    hashed: bool,
    /// An error sealing or opening it (the whole call then fails).
    failed: Option<AttachmentError>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.buf.is_some() && self.failed.is_none()
    }

    /// Whether it can be sealed or opened now.
    fn wants_cipher(&self) -> bool {
        self.idle() && !self.ciphered && (matches!(self.job, Job::Seal { .. }) || self.hashed)
    }

    /// Whether it can be hashed now (if it is the oldest not hashed).
    fn wants_hash(&self) -> bool {
        self.idle() && !self.hashed && (matches!(self.job, Job::Open { .. }) || self.ciphered)
    }

    /// Whether it can be released: done, or failed.
    fn done(&self) -> bool {
        self.buf.is_some() && (self.failed.is_some() || (self.ciphered && self.hashed))
    }
}

/// What the two threads share.
struct Board {
    /// The chunks submitted and not yet released, oldest first.
    slots: VecDeque<Slot>,
    /// The hash of the chunks hashed so far (`None` while one is hashed).
    hash: Option<DigestHash>,
    /// The caller is done (or gone): the second thread stops.
    closed: bool,
    /// Threads asleep on [`Shared::changed`].
    sleeping: usize,
    /// The second thread has ended (it ends early only by unwinding, which
    /// no code of it does short of a bug): a step it held is lost, and the
    /// caller's thread must not wait for it.
    thread_ended: bool,
    /// Tests only: the second thread unwinds at its next step.
    #[cfg(test)]
    unwind_thread: bool,
}

/// A step taken off the board, to be done outside its lock: the chunk's
/// buffer, the bytes to seal or open, and what to do (the job also names
/// the chunk, to put it back).
enum Step {
    Cipher(Buffer, usize, Job),
    Hash(Buffer, usize, Job, DigestHash),
}

impl Board {
    /// The hash step if it can be taken (the oldest chunk not hashed),
    /// else a seal or open (the oldest first).
    fn take_hash_first(&mut self) -> Option<Step> {
        self.take_hash().or_else(|| self.take_cipher())
    }

    fn take_hash(&mut self) -> Option<Step> {
        let at = self.slots.iter().position(|slot| !slot.hashed)?;
        let slot = self.slots.get_mut(at)?;
        if !slot.wants_hash() || self.hash.is_none() {
            return None;
        }
        Some(Step::Hash(slot.buf.take()?, slot.len, slot.job, self.hash.take()?))
    }

    fn take_cipher(&mut self) -> Option<Step> {
        let slot = self.slots.iter_mut().find(|slot| slot.wants_cipher())?;
        Some(Step::Cipher(slot.buf.take()?, slot.len, slot.job))
    }

    /// The chunk `job` names, if on the board.
    fn slot(&mut self, job: Job) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|slot| slot.job.index() == job.index())
    }
}

/// The board, its lock, and how the threads wait for each other.
struct Shared {
    board: Mutex<Board>,
    changed: Condvar,
    /// Bumped at every change of the board, so that a waiting thread can
    /// spin on it without taking the lock.
    version: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Board> {
        // No code panics while holding the lock; a poisoned board is still
        // consistent.
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a change of `board` (under its lock) and wakes a sleeper.
    fn changed(&self, board: &Board) {
        self.version.fetch_add(1, Ordering::Release);
        if board.sleeping > 0 {
            self.changed.notify_all();
        }
    }

    /// Waits, the lock released, until the board changed since `guard`
    /// was looked at: spins for up to [`SPIN`], then sleeps.
    fn wait<'a>(&'a self, guard: MutexGuard<'a, Board>) -> MutexGuard<'a, Board> {
        let seen = self.version.load(Ordering::Acquire);
        drop(guard);
        let started = Instant::now();
        while self.version.load(Ordering::Acquire) == seen && started.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        let mut board = self.lock();
        if self.version.load(Ordering::Acquire) == seen {
            board.sleeping = board.sleeping.saturating_add(1);
            while self.version.load(Ordering::Acquire) == seen {
                board = self.changed.wait(board).unwrap_or_else(PoisonError::into_inner);
            }
            board.sleeping = board.sleeping.saturating_sub(1);
        }
        board
    }

    /// Does `step` outside the lock and puts its result back on the board.
    fn run<'a>(&'a self, step: Step, cipher: &ChaCha20Poly1305) -> MutexGuard<'a, Board> {
        match step {
            Step::Cipher(mut buf, len, job) => {
                let failed = match job {
                    Job::Seal { index, last } => seal_in_place(cipher, &mut buf, len, index, last).err(),
                    Job::Open { index, last } => open_in_place(cipher, &mut buf, len, index, last).err(),
                };
                let mut board = self.lock();
                if let Some(slot) = board.slot(job) {
                    slot.buf = Some(buf);
                    slot.ciphered = true;
                    slot.failed = failed;
                }
                self.changed(&board);
                board
            }
            Step::Hash(buf, len, job, mut hash) => {
                let failed = match buf.get(..len.saturating_add(TAG_LEN)) {
                    Some(sealed) => {
                        hash.update(sealed);
                        None
                    }
                    None => Some(AttachmentError::WrongLength),
                };
                let mut board = self.lock();
                board.hash = Some(hash);
                if let Some(slot) = board.slot(job) {
                    slot.buf = Some(buf);
                    slot.hashed = true;
                    slot.failed = slot.failed.take().or(failed);
                }
                self.changed(&board);
                board
            }
        }
    }
}

/// Set on the board when the second thread ends, by returning or by
/// unwinding.
struct Ended(Arc<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        let mut board = self.0.lock();
        board.thread_ended = true;
        self.0.changed(&board);
    }
}

/// What a failed second thread becomes (it cannot fail short of a bug).
fn thread_lost() -> AttachmentError {
    AttachmentError::Io(std::io::Error::other("the attachment's hashing thread stopped"))
}

/// The chunks of one file, sealed or opened and hashed, in order; it lends
/// the buffers they are read into and gives them back, done, to a
/// `release` function (which writes them) in the same order.
pub(super) struct Pipeline<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    cipher: &'env ChaCha20Poly1305,
    shared: Arc<Shared>,
    /// The second thread, once started. It is joined only if it ended
    /// early ([`Self::join_ended`]); otherwise the scope waits for it to
    /// return (sooner than a join, which also waits for the system thread
    /// to be torn down).
    thread: Option<ScopedJoinHandle<'scope, ()>>,
    /// Buffers free to be filled.
    spare: Vec<Buffer>,
    /// The buffers allocated so far (at most [`BUFFERS`]).
    allocated: usize,
}

impl<'scope, 'env> Pipeline<'scope, 'env> {
    /// A pipeline under `cipher` that may start its thread in `scope`; it
    /// starts on the caller's thread alone.
    pub(super) fn new(scope: &'scope Scope<'scope, 'env>, cipher: &'env ChaCha20Poly1305) -> Self {
        let board = Board {
            slots: VecDeque::with_capacity(BUFFERS),
            hash: Some(DigestHash::default()),
            closed: false,
            sleeping: 0,
            thread_ended: false,
            #[cfg(test)]
            unwind_thread: false,
        };
        Self {
            scope,
            cipher,
            shared: Arc::new(Shared { board: Mutex::new(board), changed: Condvar::new(), version: AtomicU64::new(0) }),
            thread: None,
            spare: Vec::with_capacity(BUFFERS),
            allocated: 0,
        }
    }

    /// A buffer of `CHUNK_LEN + TAG_LEN` bytes to read the next chunk
    /// into, for [`Self::submit`]. Chunks done are released first, in
    /// order, each through `release(job, bytes)` (the sealed chunk for
    /// [`Job::Seal`], the opened one, without its tag, for [`Job::Open`]);
    /// while no buffer is free, this thread seals, opens or hashes chunks
    /// on the board, or waits.
    pub(super) fn buffer(
        &mut self,
        release: &mut impl FnMut(Job, &[u8]) -> Result<(), AttachmentError>,
    ) -> Result<Buffer, AttachmentError> {
        let in_flight = if self.thread.is_some() { BUFFERS } else { 1 };
        self.drive(release, |slots| slots < in_flight)?;
        if let Some(buf) = self.spare.pop() {
            return Ok(buf);
        }
        self.allocated = self.allocated.saturating_add(1);
        Ok(Buffer::new())
    }

    /// Puts the chunk read into `buf` on the board, to be sealed or opened
    /// (as `job` says) and hashed: `len` bytes to seal, or `len` bytes and
    /// a tag to open. It comes back, done, through a later [`Self::buffer`]
    /// or [`Self::finish`].
    pub(super) fn submit(&mut self, buf: Buffer, len: usize, job: Job) -> Result<(), AttachmentError> {
        if len > CHUNK_LEN || buf.len() < len.saturating_add(TAG_LEN) {
            return Err(AttachmentError::WrongLength);
        }
        let mut board = self.shared.lock();
        board.slots.push_back(Slot { buf: Some(buf), len, job, ciphered: false, hashed: false, failed: None });
        self.shared.changed(&board);
        Ok(())
    }

    /// Starts the second thread, for a file known to have two chunks or
    /// more; leaves everything here if no thread can be started.
    pub(super) fn start_thread(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let (shared, cipher) = (Arc::clone(&self.shared), self.cipher);
        let started = Builder::new().name("samizdat-attachment-hash".into()).spawn_scoped(self.scope, move || {
            // Marks the thread ended however it ends, unwinding included,
            // and wakes the caller's thread, which would otherwise wait
            // for ever on a step this thread held.
            let _ended = Ended(Arc::clone(&shared));
            let mut board = shared.lock();
            while !board.closed {
                board = match board.take_hash_first() {
                    Some(step) => {
                        #[cfg(test)]
                        if board.unwind_thread {
                            std::panic::resume_unwind(Box::new("injected: the second thread unwinds"));
                        }
                        drop(board);
                        shared.run(step, cipher)
                    }
                    None => shared.wait(board),
                };
            }
        });
        self.thread = started.ok();
    }

    /// Releases every chunk left, in order, and returns the digest of every
    /// chunk's ciphertext.
    pub(super) fn finish(
        mut self,
        release: &mut impl FnMut(Job, &[u8]) -> Result<(), AttachmentError>,
    ) -> Result<[u8; 32], AttachmentError> {
        self.drain(release)?;
        // Every chunk is released, so hashed: the hash is on the board.
        let hash = self.shared.lock().hash.take().ok_or_else(thread_lost)?;
        Ok(hash.finish())
    }

    /// Releases every chunk submitted, in order (the first error among them
    /// first): a caller whose input failed drains the pipeline before it
    /// reports that failure, so that the errors come in the order of the
    /// file, as if each chunk had been done before the next was read.
    pub(super) fn drain(
        &mut self,
        release: &mut impl FnMut(Job, &[u8]) -> Result<(), AttachmentError>,
    ) -> Result<(), AttachmentError> {
        self.drive(release, |slots| slots == 0)
    }

    /// Releases the chunks done, and works on the board or waits, until
    /// `enough(chunks on the board)`.
    fn drive(
        &mut self,
        release: &mut impl FnMut(Job, &[u8]) -> Result<(), AttachmentError>,
        enough: impl Fn(usize) -> bool,
    ) -> Result<(), AttachmentError> {
        let shared = Arc::clone(&self.shared);
        let mut board = shared.lock();
        loop {
            if board.slots.front().is_some_and(Slot::done) {
                let slot = board.slots.pop_front().ok_or_else(thread_lost)?;
                shared.changed(&board);
                drop(board);
                if let Some(error) = slot.failed {
                    return Err(error);
                }
                let buf = slot.buf.ok_or_else(thread_lost)?;
                let bytes = match slot.job {
                    Job::Seal { .. } => buf.get(..slot.len.saturating_add(TAG_LEN)),
                    Job::Open { .. } => buf.get(..slot.len),
                };
                release(slot.job, bytes.ok_or(AttachmentError::WrongLength)?)?;
                self.spare.push(buf);
                board = shared.lock();
                continue;
            }
            if enough(board.slots.len()) && (!self.spare.is_empty() || self.allocated < BUFFERS) {
                return Ok(());
            }
            // The caller's thread seals or opens first, and hashes only
            // when there is nothing else to do (the second thread is not up
            // yet, or behind).
            let step = board.take_cipher().or_else(|| board.take_hash());
            board = match step {
                Some(step) => {
                    drop(board);
                    shared.run(step, self.cipher)
                }
                None if self.thread.is_some() && !board.thread_ended => shared.wait(board),
                // Alone, and nothing to do: a step is in no one's hands.
                None => {
                    drop(board);
                    self.join_ended();
                    return Err(thread_lost());
                }
            };
        }
    }

    /// Joins the second thread if it ended: a thread that unwound and was
    /// joined does not make the scope panic, so the caller gets the error
    /// of [`thread_lost`] instead of a panic.
    fn join_ended(&mut self) {
        let ended = self.shared.lock().thread_ended;
        if ended && let Some(thread) = self.thread.take() {
            // The payload of an unwound thread is dropped: its error is
            // `thread_lost`.
            let _ = thread.join();
        }
    }

    /// Tells the second thread to stop.
    fn close(&self) {
        let mut board = self.shared.lock();
        board.closed = true;
        self.shared.changed(&board);
    }
}

impl Drop for Pipeline<'_, '_> {
    fn drop(&mut self) {
        // On an error: the second thread stops, and the scope joins it.
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use chacha20poly1305::KeyInit;

    use super::*;

    /// Puts one chunk on the board before the second thread starts, so
    /// that the thread's first step is that chunk's sealing; with `unwind`
    /// the thread unwinds holding it, and the caller waits until it ended
    /// before it finishes.
    fn one_chunk(unwind: bool) -> Result<[u8; 32], AttachmentError> {
        let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
        std::thread::scope(|scope| {
            let mut pipeline = Pipeline::new(scope, &cipher);
            let mut release = |_: Job, _: &[u8]| Ok(());
            let buf = pipeline.buffer(&mut release)?;
            pipeline.submit(buf, CHUNK_LEN, Job::Seal { index: 0, last: true })?;
            pipeline.shared.lock().unwind_thread = unwind;
            pipeline.start_thread();
            assert!(pipeline.thread.is_some());
            if unwind {
                while !pipeline.shared.lock().thread_ended {
                    std::thread::yield_now();
                }
                // The chunk's buffer went down with the thread.
                assert!(pipeline.shared.lock().slots.front().is_some_and(|slot| slot.buf.is_none()));
            }
            pipeline.finish(&mut release)
        })
    }

    /// The residual risk helper-44's audit named: a second thread that
    /// unwinds (a bug; no code of it panics) left the caller waiting for
    /// ever on the step it held. The caller now gets `thread_lost`, and no
    /// panic comes out of the scope. Runs on its own thread, so that a hang
    /// fails the test instead of stalling the run.
    #[test]
    fn a_second_thread_that_unwinds_is_an_error_not_a_hang() {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(one_chunk(true).map_err(|error| error.to_string()));
        });
        let result = receiver.recv_timeout(Duration::from_secs(120)).expect("the pipeline hung or panicked");
        let error = result.expect_err("the chunk was in the lost thread's hands");
        assert!(error.contains("hashing thread stopped"), "{error}");
    }

    /// Without the injected fault the same calls succeed, so the test
    /// above fails for the fault and not for the way it drives the board.
    #[test]
    fn the_same_calls_succeed_when_the_thread_does_not_unwind() {
        assert!(one_chunk(false).is_ok());
    }
}
