//! The SHA-256 of an attachment's ciphertext, computed beside the cipher.
//!
//! Hashing the ciphertext costs about as much as sealing or opening it
//! (SHA-256 with the SHA extensions and ChaCha20-Poly1305 with AVX2 run at
//! similar speeds), so done in turn the two halve the throughput. For a
//! file of [`THREAD_MIN_CHUNKS`] chunks or more (after [`INLINE_CHUNKS`] if
//! its length is not known) the hash therefore runs on a second, scoped
//! thread: the caller's thread seals or opens chunk `i + 1` while the second
//! hashes chunk `i`. Sealed chunks travel between the two in [`BUFFERS`]
//! buffers through two bounded channels, so memory stays at a few chunks
//! whatever the file's size, and the hash sees the chunks in order. The
//! hashing thread spins briefly for the next chunk before it sleeps, so that
//! the sealing thread is not slowed by a wake-up per chunk. A small
//! file never starts a thread; if the thread cannot be started the hash
//! stays on the caller's thread. The digest is the same either way.

use std::{
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError},
    thread::{Builder, Scope, ScopedJoinHandle},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{AttachmentError, CHUNK_LEN, TAG_LEN};

/// A buffer for one sealed chunk (wiped on drop: during encryption it holds
/// plaintext until the chunk is sealed in place).
pub(super) type Buffer = Zeroizing<Vec<u8>>;

/// The buffers in use once the hash runs on its own thread: one being
/// filled, the others queued for or being hashed.
const BUFFERS: usize = 4;

/// When the file's length is not known, the chunks hashed on the caller's
/// thread before a second thread starts: a file of one chunk never starts
/// one.
const INLINE_CHUNKS: u64 = 1;

/// When the file's length is known, the fewest chunks for which the hash
/// runs on a second thread from the start (starting a thread costs about
/// as much as sealing half a chunk).
const THREAD_MIN_CHUNKS: u64 = 2;

/// How long the hashing thread spins for the next chunk before it sleeps:
/// about the time to seal two chunks. Sleeping and being woken for every
/// chunk costs the sealing thread a system call per chunk.
const SPIN: Duration = Duration::from_micros(100);

/// The next chunk to hash, spinning for up to [`SPIN`] before blocking;
/// `None` once the caller is done.
fn next(to_hash: &Receiver<(Buffer, usize)>) -> Option<(Buffer, usize)> {
    let started = Instant::now();
    loop {
        match to_hash.try_recv() {
            Ok(item) => return Some(item),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if started.elapsed() < SPIN => {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            Err(TryRecvError::Empty) => return to_hash.recv().ok(),
        }
    }
}

/// What a failed hashing thread becomes (it cannot fail short of a bug).
fn thread_lost() -> AttachmentError {
    AttachmentError::Io(std::io::Error::other("the attachment's hashing thread stopped"))
}

/// The hash of a sealed stream, fed chunk by chunk, in order; it lends the
/// buffers the chunks are read or sealed into.
pub(super) struct ChunkHasher<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    state: State<'scope>,
    /// Buffers free to be filled.
    spare: Vec<Buffer>,
    /// The chunks hashed so far on this thread.
    inline: u64,
    /// After how many chunks hashed here the thread starts (never if none).
    start_after: Option<u64>,
}

enum State<'scope> {
    /// Hashing on the caller's thread.
    Here(Sha256),
    /// Hashing on a second thread.
    Thread {
        /// Buffers to hash, with the length to hash.
        work: SyncSender<(Buffer, usize)>,
        /// Buffers hashed, to be filled again.
        done: Receiver<Buffer>,
        /// The thread; it returns the hash once `work` is closed.
        thread: ScopedJoinHandle<'scope, Sha256>,
    },
}

impl<'scope, 'env> ChunkHasher<'scope, 'env> {
    /// A hasher that may start its thread in `scope`, for a file of
    /// `chunks` sealed chunks if that is known.
    pub(super) fn new(scope: &'scope Scope<'scope, 'env>, chunks: Option<u64>) -> Self {
        let start_after = match chunks {
            Some(chunks) if chunks >= THREAD_MIN_CHUNKS => Some(0),
            Some(_) => None,
            None => Some(INLINE_CHUNKS),
        };
        let mut hasher = Self {
            scope,
            state: State::Here(Sha256::new()),
            spare: Vec::with_capacity(BUFFERS),
            inline: 0,
            start_after,
        };
        if start_after == Some(0) {
            hasher.start_thread();
        }
        hasher
    }

    /// A buffer of `CHUNK_LEN + TAG_LEN` bytes to read or seal the next
    /// chunk into; give it back through [`Self::hash`].
    pub(super) fn buffer(&mut self) -> Result<Buffer, AttachmentError> {
        if let Some(buffer) = self.spare.pop() {
            return Ok(buffer);
        }
        match &self.state {
            State::Here(_) => Ok(Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN])),
            State::Thread { done, .. } => done.recv().map_err(|_| thread_lost()),
        }
    }

    /// Hashes the first `len` bytes of `buffer` after every chunk given
    /// before, and takes the buffer back.
    pub(super) fn hash(&mut self, buffer: Buffer, len: usize) -> Result<(), AttachmentError> {
        if len > buffer.len() {
            return Err(AttachmentError::WrongLength);
        }
        match &mut self.state {
            State::Here(hash) => {
                hash.update(buffer.get(..len).ok_or(AttachmentError::WrongLength)?);
                self.spare.push(buffer);
                self.inline = self.inline.saturating_add(1);
                if Some(self.inline) == self.start_after {
                    self.start_thread();
                }
                Ok(())
            }
            State::Thread { work, .. } => work.send((buffer, len)).map_err(|_| thread_lost()),
        }
    }

    /// Moves the hash to a second thread, or leaves it here if no thread
    /// can be started.
    fn start_thread(&mut self) {
        let State::Here(hash) = &self.state else { return };
        let (work, to_hash) = mpsc::sync_channel::<(Buffer, usize)>(BUFFERS);
        let (hashed, done) = mpsc::sync_channel::<Buffer>(BUFFERS);
        let mut moved = hash.clone();
        let started = Builder::new().name("samizdat-attachment-hash".into()).spawn_scoped(self.scope, move || {
            while let Some((buffer, len)) = next(&to_hash) {
                // `hash` checked `len`; a buffer is never shorter.
                moved.update(buffer.get(..len).unwrap_or_default());
                // The caller may have stopped (an error): the buffer is then
                // wiped here.
                let _ = hashed.send(buffer);
            }
            moved
        });
        if let Ok(thread) = started {
            self.state = State::Thread { work, done, thread };
            while self.spare.len() < BUFFERS {
                self.spare.push(Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN]));
            }
        }
    }

    /// The SHA-256 of every chunk given.
    pub(super) fn finish(self) -> Result<[u8; 32], AttachmentError> {
        let hash = match self.state {
            State::Here(hash) => hash,
            State::Thread { work, done, thread } => {
                drop(work);
                let hash = thread.join().map_err(|_| thread_lost())?;
                // The buffers come back to be dropped (and wiped) here.
                done.try_iter().for_each(drop);
                hash
            }
        };
        Ok(hash.finalize().into())
    }
}
