//! The SHA-256 of an attachment's ciphertext, computed beside the cipher.
//!
//! Hashing the ciphertext costs about as much as sealing or opening it
//! (SHA-256 with the SHA extensions and ChaCha20-Poly1305 with AVX2 run at
//! similar speeds), so done in turn the two halve the throughput. Past
//! [`INLINE_CHUNKS`] chunks the hash therefore moves to a second, scoped
//! thread: the caller's thread seals or opens chunk `i + 1` while the second
//! hashes chunk `i`. Sealed chunks travel between the two in [`BUFFERS`]
//! buffers through two bounded channels, so memory stays at a few chunks
//! whatever the file's size, and the hash sees the chunks in order. A small
//! file never starts a thread; if the thread cannot be started the hash
//! stays on the caller's thread. The digest is the same either way.

use std::{
    sync::mpsc::{self, Receiver, SyncSender},
    thread::{Builder, Scope, ScopedJoinHandle},
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

/// The chunks hashed on the caller's thread before a second thread starts
/// (256 KiB): below that, starting a thread costs more than it saves.
const INLINE_CHUNKS: u64 = 4;

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
    /// A hasher that may start its thread in `scope`.
    pub(super) fn new(scope: &'scope Scope<'scope, 'env>) -> Self {
        Self { scope, state: State::Here(Sha256::new()), spare: Vec::with_capacity(BUFFERS), inline: 0 }
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
                if self.inline == INLINE_CHUNKS {
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
            for (buffer, len) in to_hash {
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
