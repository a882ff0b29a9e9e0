//! The SQLite backend (rusqlite with its bundled SQLite).
//!
//! - WAL journal and `synchronous=FULL`: a committed batch survives a crash
//!   or a power loss. (`synchronous=NORMAL` would be cheaper, but a power
//!   loss could then roll back the latest commits, and a ratchet rolled back
//!   re-encrypts under keys it already used.)
//! - Any number of handles, in this process or others, may have the store
//!   open. SQLite's own locks serialize them: every batch is one
//!   `BEGIN IMMEDIATE` transaction, which takes the database's write lock
//!   before it reads the rows its preconditions name ([`Backend::apply`]),
//!   and a call waits up to 5 s (the busy timeout) for another connection's
//!   lock, then fails with [`StoreError::Locked`]. These locks are taken on
//!   the database file and on its `-shm` index; SQLite resolves symbolic
//!   links first, so every path that reaches the file through links of that
//!   kind shares them.
//! - One name per file. SQLite finds the WAL and the `-shm` index by the
//!   database's path: two names of one file (a hard link, or the file
//!   renamed while a handle has it open) would each get their own log and
//!   index, so a write through one name is invisible to, or lost under, a
//!   write through the other, and the preconditions compare against the
//!   wrong rows (measured: two processes through a hard link lost 500 of
//!   1,000 increments; in one process SQLite failed with `SQLITE_IOERR`).
//!   So a file with more than one link is refused on open, and every write
//!   transaction first checks that the path (symbolic links resolved) still
//!   names the file this handle opened, with one link:
//!   [`StoreError::MovedOrLinked`] otherwise, nothing written.
//! - Forward secrecy at rest: a rewritten row must not leave its previous
//!   sealed value in any file, or the storage key of a seized phone opens the
//!   keys the protocol deleted. Every write re-seals a whole row, so SQLite
//!   would keep the old value in two places: the WAL (until a checkpoint
//!   copies it back and the log restarts, and past that in the log's tail)
//!   and the freed page or cell in the database file. Measured
//!   (TOOLCHAIN.md 8: 2,000 rewrites, every 32-byte window of every
//!   superseded value searched for), the cheapest setting that leaves none,
//!   with the connection open or closed, is
//!   - `secure_delete=ON`: freed cells and pages are overwritten with zeros;
//!   - `wal_autocheckpoint=1`: every commit checkpoints its frames into the
//!     database at once (a passive checkpoint, which never waits for or
//!     blocks another writer), so the next write restarts the log;
//!   - `journal_size_limit=0`: a restarted log is truncated, so no old frame
//!     survives in its tail.
//!
//!   It costs about 2.9x a bare write (a truncating checkpoint after every
//!   transaction costs 4.4x and can starve a second writer; a rollback
//!   journal 5-6x).
//!
//!   Two gaps remain, closed here:
//!   - A reader. A checkpoint cannot copy frames past another connection's
//!     read transaction, and a commit cannot restart a log whose frames are
//!     not all copied (or that a reader is using). So after each commit a
//!     passive checkpoint reports whether every frame is in the database,
//!     and the log's header (its salts change at each restart) tells whether
//!     this commit restarted the log. If it did not, a truncating checkpoint
//!     runs after it; while a reader still keeps frames from the database, the
//!     truncation is owed and tried after each later commit of this handle
//!     and when it is dropped, with a short busy timeout.
//!   - Page rebuilds. When SQLite rebalances a b-tree it rebuilds pages
//!     (`rebuildPage`), and the gap between a rebuilt page's cell pointers
//!     and its cells is not zeroed, whatever `secure_delete` says: it keeps
//!     copies of cells that moved, which survive their row's next rewrite. A
//!     scrub closes that: `VACUUM` (a new database built in memory,
//!     `temp_store=MEMORY`, every page copied back through the log) and a
//!     truncating checkpoint (every page into the database file, which
//!     shrinks to its new size; the log cut to zero bytes). It runs when a
//!     store of at most 4 MiB is opened (a larger one only has its log
//!     emptied then), after the commit that takes the bytes every handle
//!     wrote since the last scrub (the scrub's debt, kept in the database)
//!     past a budget (the larger of [`MIN_SCRUB_BUDGET`] and the database's
//!     size, so that its cost stays in proportion to the writes), and on
//!     demand ([`Backend::scrub`]). Between two scrubs such a fragment may
//!     survive in the database file.
//!
//!   Neither ever fails a call or loses a row: `VACUUM` and the checkpoints
//!   are transactions of their own, run after the commit they follow. When
//!   another connection holds the write lock, or a reader keeps the rewritten
//!   pages from the database file, past the short busy timeout, the scrub is
//!   owed and tried again after this handle's next commits and when it is
//!   dropped (the one the app asks for waits the full busy timeout, and then
//!   reports [`Scrub::Deferred`]). Any other failure of a scrub the app did
//!   not ask for (a full disk: `VACUUM` needs room for a copy of the
//!   database in the log) is dropped, and the scrub waits for another budget
//!   of writes.
//!   What no setting reaches: blocks that the file system freed, flash
//!   wear-levelling and file-system snapshots keep whatever was written. The
//!   robust answer there is to seal under a storage key that rotates, the old
//!   one destroyed in the platform keystore (PROTOCOL.md 16.6).
//! - A versioned schema (`PRAGMA user_version`) with migrations applied in
//!   one transaction; a newer schema is refused.
//! - Not across `fork`: a backend remembers the process that opened it, and
//!   in a forked child every call fails with [`StoreError::Forked`] before it
//!   touches the connection (SQLite's locks belong to a process, so a child
//!   using the parent's connection could corrupt the database). Dropped in a
//!   child, the backend leaks the connection rather than close it: closing
//!   could checkpoint the parent's WAL or delete it. The child opens its own.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{Backend, Expected, Rewrite, Row, Scrub, SqliteError, StoreError, Table, Write};
use crate::limits::MIN_SCRUB_BUDGET;

/// The schema version this release writes.
pub const SCHEMA_VERSION: u32 = 4;

/// How long a call waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waiting for another connection's lock sleeps between two
/// tries.
const BUSY_POLL: Duration = Duration::from_millis(1);

std::thread_local! {
    /// When the current wait for a lock began (SQLite calls the busy
    /// handler on the waiting thread, with the number of tries so far).
    static WAIT_STARTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// The busy handler of every connection, instead of SQLite's busy timeout:
/// it tries again every [`BUSY_POLL`], up to [`BUSY_TIMEOUT`] in all.
/// SQLite's own timeout sleeps on a fixed schedule (1, 2, 5, 10, 15, 20, 25,
/// then 25 to 100 ms between tries) and is not woken when the lock is
/// released, so a wait of a fraction of a millisecond became 8 to 33 ms at
/// the 99th percentile with two processes on one store
/// (`core/tests/processes.rs`).
fn busy(tries: i32) -> bool {
    let now = std::time::Instant::now();
    let started = WAIT_STARTED.with(|started| {
        if tries == 0 || started.get().is_none() {
            started.set(Some(now));
        }
        started.get().unwrap_or(now)
    });
    if now.duration_since(started) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// Installs [`busy`] on `connection` (after a shorter `busy_timeout` set for
/// a scrub or a checkpoint).
fn wait_for_locks(connection: &mut Connection) -> Result<(), StoreError> {
    connection.busy_handler(Some(busy)).sql()
}

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 4] = [
    "
    CREATE TABLE meta     (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE identity (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE prekeys  (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE sessions (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
",
    // Groups (release 0.3): a store of version 1 gains the table on open.
    "
    CREATE TABLE groups   (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
",
    // Release 0.5: the scrub's debt (the bytes written by every handle since
    // the last scrub); the outbox indexes in a table of their own (the
    // device moves those of an earlier store there when it opens it,
    // PROTOCOL.md 20.3); and a store may now hold the naming-keys row of
    // storage-key rotation (PROTOCOL.md 14.12), which an earlier release
    // would not read (it would name rows from the new storage key and find
    // none of them): the version refuses it there.
    "
    CREATE TABLE scrub_debt (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
    INSERT INTO scrub_debt (id, bytes) VALUES (0, 0);
    CREATE TABLE outboxes (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
",
    // Users and their signed device lists (PROTOCOL.md 23.5): a store of an
    // earlier version gains the empty table on open.
    "
    CREATE TABLE users    (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
",
];

/// A store in one SQLite database file.
pub struct SqliteBackend {
    /// `None` only while a forked child drops the backend.
    handle: Mutex<Option<Handle>>,
    /// The process that opened the connection.
    pid: u32,
    /// The path as the app gave it.
    path: PathBuf,
    /// The path with every symbolic link resolved (as SQLite resolves it to
    /// name the WAL and the index), and the file it named when opened.
    canonical: PathBuf,
    file: FileId,
}

/// The connection, and what this handle still owes the files (see
/// "Forward secrecy at rest" in the module docs).
struct Handle {
    connection: Connection,
    /// The log, read for its header.
    log: Log,
    /// Bytes of rows (keys and values) written through this handle since its
    /// last scrub.
    written: u64,
    /// A scrub runs after the commit that takes `written` past this.
    budget: u64,
    /// The last scrub could not run (another connection held the write
    /// lock): tried again after every commit, and on drop.
    scrub_owed: bool,
    /// The log may hold values that later commits superseded (a reader kept
    /// a checkpoint from copying every frame, or the log could not restart):
    /// a truncating checkpoint is tried after every commit, and on drop,
    /// until one succeeds.
    truncate_owed: bool,
    /// The time this handle's write transactions waited for the database's
    /// write lock (held by other connections), in all.
    lock_wait: Duration,
    /// Scrubs that ran to the end.
    #[cfg(test)]
    scrubs: u64,
}

/// The log, by the name SQLite gives it (the database's path, as SQLite
/// resolved it, and `-wal`), read for its header: the first
/// [`LOG_HEADER_LEN`] bytes, whose salts change whenever the log restarts
/// (SQLite's file format, "WAL file format").
struct Log {
    path: PathBuf,
    /// Opened at the first read that finds the log, then kept (one read per
    /// header, no open and close). SQLite takes no lock on the log (its locks
    /// are on the database file and the `-shm` index), so this descriptor
    /// releases none of them when it closes; and SQLite deletes the log only
    /// when the last connection closes, which cannot happen while this
    /// handle's is open. (Were it ever another file, its header would never
    /// change: every commit would then truncate the log, slower but safe.)
    file: Option<std::fs::File>,
}

impl Log {
    /// The log's header, or `None` if there is no log or it is empty.
    fn header(&mut self) -> std::io::Result<Option<[u8; LOG_HEADER_LEN]>> {
        if self.file.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(file) => self.file = Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = &self.file else { return Ok(None) };
        let mut header = [0; LOG_HEADER_LEN];
        let mut read = 0;
        while read < LOG_HEADER_LEN {
            let Some(rest) = header.get_mut(read..) else { break };
            match read_at(file, rest, read as u64)? {
                0 => return Ok(None),
                // At most `rest.len()`: `read` stays within the header.
                n => read = read.saturating_add(n),
            }
        }
        Ok(Some(header))
    }
}

/// One positioned read.
#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// One positioned read.
#[cfg(windows)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// One positioned read.
#[cfg(not(any(unix, windows)))]
fn read_at(mut file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(offset))?;
    file.read(buf)
}

impl Handle {
    /// Runs a truncating checkpoint that waits at most `timeout` for other
    /// connections; records whether the log is still owed one.
    fn truncate(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let done = truncate_wal(&mut self.connection, timeout)?;
        self.truncate_owed = !done;
        Ok(done)
    }
}

/// Which file a path names: device and inode numbers (on Unix; elsewhere
/// nothing is compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    /// The file `path` names, refused if it has more than one link (or, once
    /// opened, if it is gone).
    fn of(path: &Path) -> Result<Self, StoreError> {
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::MovedOrLinked),
            Err(e) => return Err(e.into()),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if metadata.nlink() > 1 {
                return Err(StoreError::MovedOrLinked);
            }
            Ok(Self { device: metadata.dev(), inode: metadata.ino() })
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            Ok(Self { device: 0, inode: 0 })
        }
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (or creates) the database at `path`, migrates its schema and
    /// scrubs it (see the module docs: when another connection keeps the
    /// scrub from running, it is left for later, never an error). Other
    /// handles may have it open too, in this process or others.
    ///
    /// # Errors
    /// [`StoreError::MovedOrLinked`] if the file has more than one link,
    /// [`StoreError::SchemaTooNew`], [`StoreError::Locked`] if another
    /// connection held the database's lock past the busy timeout, or an I/O
    /// or SQLite error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_connection(path.as_ref()).map_err(locked_if_busy)
    }

    /// Opens the database at `path`, which must exist and not be empty (a
    /// missing or empty file holds no device: [`StoreError::NotFound`]);
    /// nothing is created.
    ///
    /// # Errors
    /// As [`Self::open`], and [`StoreError::NotFound`].
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        check_path(path)?;
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.len() > 0 => Self::open(path),
            Ok(_) => Err(StoreError::NotFound),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    fn open_connection(path: &Path) -> Result<Self, StoreError> {
        check_path(path)?;
        super::sqlite_create::finish_interrupted(path)?;
        // Refused before SQLite opens a second name of the file at all.
        if path.exists() {
            FileId::of(path)?;
        }
        let mut connection = Connection::open(path).sql()?;
        // The file exists now: its identity, by the name SQLite resolved.
        let canonical = std::fs::canonicalize(path)?;
        let file = FileId::of(&canonical)?;
        wait_for_locks(&mut connection)?;
        connection.pragma_update(None, "journal_mode", "WAL").sql()?;
        connection.pragma_update(None, "synchronous", "FULL").sql()?;
        connection.pragma_update(None, "secure_delete", "ON").sql()?;
        connection.pragma_update(None, "wal_autocheckpoint", 1).sql()?;
        connection.pragma_update(None, "journal_size_limit", 0).sql()?;
        // Damage is reported as such: checked on open (the structure of every
        // page, for a store of at most OPEN_WHOLE_MAX_BYTES), and on every
        // read of a cell.
        connection.pragma_update(None, "cell_size_check", "ON").sql()?;
        // The scrub's `VACUUM` builds the new database in a temporary one:
        // in memory, so that no temporary file holds the rows.
        connection.pragma_update(None, "temp_store", "MEMORY").sql()?;
        let small = database_size(&connection)? <= OPEN_WHOLE_MAX_BYTES;
        if small {
            let check: String = connection.query_row("PRAGMA quick_check", [], |row| row.get(0)).sql()?;
            if check != "ok" {
                return Err(StoreError::CorruptDatabase);
            }
        }
        migrate(&mut connection)?;
        // Read leniently: a counter altered by hand (negative, not an
        // integer, missing) only makes a scrub come sooner or later.
        let debt: i64 = connection
            .query_row("SELECT max(0, CAST(bytes AS INTEGER)) FROM scrub_debt WHERE id = 0", [], |row| row.get(0))
            .optional()
            .sql()?
            .unwrap_or(0);
        let budget = scrub_budget(&connection)?;
        let log = Log { path: PathBuf::from(format!("{}-wal", connection.path().unwrap_or_default())), file: None };
        let handle = Handle {
            connection,
            log,
            written: u64::try_from(debt).unwrap_or(0),
            budget,
            scrub_owed: false,
            truncate_owed: false,
            lock_wait: Duration::ZERO,
            #[cfg(test)]
            scrubs: 0,
        };
        let backend = Self {
            handle: Mutex::new(Some(handle)),
            pid: std::process::id(),
            path: path.to_path_buf(),
            canonical,
            file,
        };
        // Whatever an earlier handle, or a crash, left in the files: a small
        // store is scrubbed whole (a few milliseconds); a larger one when the
        // bytes written since its last scrub, by every handle, passed its
        // budget, and otherwise only its log is emptied (a crash may have
        // left frames in it), so that opening stays fast however many
        // sessions the store holds.
        backend.with_handle(|handle| {
            if small || handle.written > handle.budget {
                backend.scrub_quietly(handle);
            } else {
                let _ = handle.truncate(QUIET_SCRUB_TIMEOUT);
            }
            Ok(())
        })?;
        Ok(backend)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long this handle's writes have waited, in all, for the
    /// database's write lock while other connections (handles or processes)
    /// held it: the time spent starting each write transaction. Sampled
    /// before and after a call, it gives that call's lock wait. A call that
    /// waits past the busy timeout (5 s) fails with [`StoreError::Locked`].
    ///
    /// # Errors
    /// [`StoreError::Forked`] in a forked child.
    pub fn lock_wait(&self) -> Result<Duration, StoreError> {
        self.with_handle(|handle| Ok(handle.lock_wait))
    }

    /// Runs `f` on the handle, in the process that opened it only.
    fn with_handle<T>(&self, f: impl FnOnce(&mut Handle) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if std::process::id() != self.pid {
            return Err(StoreError::Forked);
        }
        // SQLite rolls back an unfinished transaction itself, so a poisoned
        // lock leaves a consistent database.
        let mut guard = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        let handle = guard.as_mut().ok_or(StoreError::Forked)?;
        f(handle).map_err(locked_if_busy)
    }

    /// Runs `f` on the connection, in the process that opened it only.
    fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with_handle(|handle| f(&mut handle.connection))
    }

    /// Rewrites the database so that no freed byte survives in it, then
    /// empties the log: `VACUUM` (SQLite builds a new database in memory,
    /// `temp_store=MEMORY`, and copies every page of it back through the
    /// log), then a truncating checkpoint (every page into the database file,
    /// which shrinks to the new size, and the log cut to zero bytes). Each
    /// waits at most `timeout` for other connections: `VACUUM` for the write
    /// lock, the checkpoint for readers. Busy, it is left for later
    /// ([`Scrub::Deferred`]): a `VACUUM` that could not start changed
    /// nothing, and one whose pages a reader kept from the database file
    /// leaves them in the log, complete, for the next checkpoint.
    fn scrub_handle(&self, handle: &mut Handle, timeout: Duration) -> Result<Scrub, StoreError> {
        // As for a write: never through a second name of the file.
        self.check_file()?;
        handle.connection.busy_timeout(timeout).sql()?;
        let vacuumed = handle.connection.execute_batch("VACUUM");
        wait_for_locks(&mut handle.connection)?;
        match vacuumed {
            Ok(()) => {}
            Err(e) if is_busy(&e) => {
                handle.scrub_owed = true;
                return Ok(Scrub::Deferred);
            }
            Err(e) => return Err(sqlite_error(e)),
        }
        handle.scrub_owed = false;
        handle.written = 0;
        handle.budget = scrub_budget(&handle.connection)?;
        // The debt is paid (a counter, not a secret: its page may stay).
        // Busy, it stays owed: a scrub comes sooner, nothing else.
        let _ = handle.connection.execute("UPDATE scrub_debt SET bytes = 0 WHERE id = 0", []);
        if !handle.truncate(timeout)? {
            return Ok(Scrub::Deferred);
        }
        #[cfg(test)]
        {
            handle.scrubs += 1;
        }
        Ok(Scrub::Done)
    }

    /// A scrub that is not the app's call (on open, after a commit, on drop):
    /// it never fails the call that runs it. Another connection busy leaves
    /// it owed (tried again after the next commit); any other failure (a full
    /// disk: `VACUUM` needs room for a copy of the database in the log) waits
    /// for another budget of writes. Returns whether it ran to the end.
    fn scrub_quietly(&self, handle: &mut Handle) -> bool {
        match self.scrub_handle(handle, QUIET_SCRUB_TIMEOUT) {
            Ok(Scrub::Done) => true,
            Ok(_) => false,
            Err(_) => {
                handle.scrub_owed = false;
                handle.written = 0;
                false
            }
        }
    }

    /// What a commit owes the files, done after it, never failing it:
    /// - counts its bytes, and scrubs past the budget (or when a scrub is
    ///   owed);
    /// - checks that its checkpoint copied every frame into the database
    ///   (`wal_checkpoint(PASSIVE)`: nothing left to copy, so it only reads
    ///   the log's index). If a reader kept it from doing so, the log and the
    ///   database file keep values this and earlier commits superseded: a
    ///   truncating checkpoint is owed, tried after each later commit (and on
    ///   drop) once nothing is left uncopied;
    /// - if the commit could not restart the log (`appended`: frames left
    ///   uncopied, or a reader using the log, when it wrote its own) or a
    ///   truncation is owed, runs a truncating checkpoint now, waiting at most
    ///   [`COMMIT_CHECKPOINT_TIMEOUT`] for readers.
    fn after_commit(&self, handle: &mut Handle, appended: bool, debt: u64) {
        handle.written = debt;
        if (handle.scrub_owed || handle.written > handle.budget) && self.scrub_quietly(handle) {
            return;
        }
        match all_copied(&handle.connection) {
            Ok(true) => {}
            // A reader: a truncating checkpoint would wait for it.
            Ok(false) | Err(_) => {
                handle.truncate_owed = true;
                return;
            }
        }
        if appended || handle.truncate_owed {
            // Busy or failed: owed, and tried again after the next commit.
            if handle.truncate(COMMIT_CHECKPOINT_TIMEOUT).is_err() {
                handle.truncate_owed = true;
            }
        }
    }

    /// Refuses to write unless the path still names the file this handle
    /// opened, with no other name.
    fn check_file(&self) -> Result<(), StoreError> {
        if FileId::of(&self.canonical)? == self.file { Ok(()) } else { Err(StoreError::MovedOrLinked) }
    }

    fn write(&self, handle: &mut Handle, writes: &[Write]) -> Result<(), StoreError> {
        // `BEGIN IMMEDIATE` takes the database's write lock first, so the rows
        // read here cannot change before the commit, whoever else writes.
        let started = std::time::Instant::now();
        let tx = handle.connection.transaction_with_behavior(TransactionBehavior::Immediate).sql()?;
        handle.lock_wait = handle.lock_wait.saturating_add(started.elapsed());
        self.check_file()?;
        // The log as this commit finds it. Only a writer restarts the log,
        // and this transaction holds the write lock.
        let before = handle.log.header();
        for write in writes {
            if write.expected == Expected::Any {
                continue;
            }
            let sql = format!("SELECT value FROM {} WHERE key = ?1", write.table.name());
            let current: Option<Vec<u8>> =
                tx.prepare_cached(&sql).sql()?.query_row(params![write.key], |row| row.get(0)).optional().sql()?;
            if !write.expected.holds(current.as_deref()) {
                // Dropping the transaction rolls it back: nothing was written.
                return Err(StoreError::Conflict { table: write.table });
            }
        }
        for write in writes {
            match &write.value {
                // A row rewritten with the bytes it holds (a guard, 14.12):
                // checked above, nothing to write.
                Some(value) if matches!(&write.expected, Expected::Value(held) if held == value) => {}
                Some(value) => {
                    let sql = format!("INSERT OR REPLACE INTO {} (key, value) VALUES (?1, ?2)", write.table.name());
                    tx.prepare_cached(&sql).sql()?.execute(params![write.key, value]).sql()?;
                }
                None => {
                    let sql = format!("DELETE FROM {} WHERE key = ?1", write.table.name());
                    tx.prepare_cached(&sql).sql()?.execute(params![write.key]).sql()?;
                }
            }
        }
        let written = writes
            .iter()
            .map(|w| w.key.len().saturating_add(w.value.as_ref().map_or(0, Vec::len)))
            .fold(0, usize::saturating_add);
        // Every handle's bytes since the last scrub, kept in the database so
        // that a store opened and closed often still reaches its budget.
        let debt: i64 = tx
            .prepare_cached(
                "INSERT INTO scrub_debt (id, bytes) VALUES (0, ?1) ON CONFLICT (id) DO UPDATE SET bytes = \
                 min(max(CAST(bytes AS INTEGER), 0), 4611686018427387904) + excluded.bytes RETURNING bytes",
            )
            .sql()?
            .query_row(params![i64::try_from(written).unwrap_or(i64::MAX).min(1 << 62)], |row| row.get(0))
            .sql()?;
        tx.commit().sql()?;
        // The log restarted (its header's salts change) unless frames of
        // earlier commits were still there: it then holds their values too.
        let appended = match (before, handle.log.header()) {
            (Ok(None), _) | (Ok(Some(_)), Ok(None)) => false,
            (Ok(Some(before)), Ok(Some(after))) => before == after,
            // Unreadable: assume the worst.
            _ => true,
        };
        self.after_commit(handle, appended, u64::try_from(debt).unwrap_or(u64::MAX));
        Ok(())
    }
}

/// The length of the log's header.
const LOG_HEADER_LEN: usize = 32;

/// Whether SQLite was busy: another connection held a lock past the busy
/// timeout.
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// The scrub budget after a scrub: the larger of the database's size and
/// [`MIN_SCRUB_BUDGET`].
fn scrub_budget(connection: &Connection) -> Result<u64, StoreError> {
    Ok(database_size(connection)?.max(MIN_SCRUB_BUDGET))
}

/// The database's size in bytes: its pages (0 for a new, empty file).
fn database_size(connection: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = connection.query_row("PRAGMA page_count", [], |row| row.get(0)).sql()?;
    let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0)).sql()?;
    Ok(u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0))
}

/// A store of at most this size is checked whole (`PRAGMA quick_check`) and
/// scrubbed whole when opened: about 10 ms here at this size (measured:
/// 0.14 s for the check and 3.8 s for the scrub of a store of 100,000
/// sessions, 474 MB). A larger one is opened without either, so that opening
/// costs the same whatever its size: its pages are checked as they are read
/// (`cell_size_check`, damage is [`StoreError::CorruptDatabase`]), whole on
/// [`Backend::check_integrity`], and scrubbed by the budget of writes.
const OPEN_WHOLE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Whether every frame of the log is in the database file: a passive
/// checkpoint (it waits for no one; after a commit's own, it has nothing
/// left to copy and only reads the log's index), which reports
/// `(busy, frames in the log, frames copied)`.
fn all_copied(connection: &Connection) -> Result<bool, StoreError> {
    let (busy, log, copied) = connection
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })
        .sql()?;
    Ok(busy == 0 && copied >= log)
}

/// SQLite still busy (another connection holding its lock) after the busy
/// timeout is [`StoreError::Locked`].
fn locked_if_busy(error: StoreError) -> StoreError {
    // The primary result code is the low byte of the extended one.
    let primary = match &error {
        StoreError::Sqlite(e) => e.code().map(|code| code & 0xff),
        _ => None,
    };
    match primary {
        Some(rusqlite::ffi::SQLITE_BUSY | rusqlite::ffi::SQLITE_LOCKED) => StoreError::Locked,
        Some(rusqlite::ffi::SQLITE_CORRUPT | rusqlite::ffi::SQLITE_NOTADB) => StoreError::CorruptDatabase,
        _ => error,
    }
}

/// A rusqlite error as a [`StoreError`]: SQLite's code and message only, so
/// that no type of the binding is part of this crate's API.
fn sqlite_error(error: rusqlite::Error) -> StoreError {
    let code = match &error {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
        _ => None,
    };
    StoreError::Sqlite(SqliteError::new(code, error.to_string()))
}

/// `.sql()?` converts a rusqlite result's error with [`sqlite_error`]
/// (where `?` alone would need a public `From` impl of the binding's type).
trait Sql<T> {
    fn sql(self) -> Result<T, StoreError>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T, StoreError> {
        self.map_err(sqlite_error)
    }
}

/// Refuses paths that name no file: SQLite would make a throwaway database
/// in memory (`:memory:`, `file:` URIs with `mode=memory`) or a temporary
/// one (the empty path), and a device in it would get a new identity at
/// every open.
pub(super) fn check_path(path: &Path) -> Result<(), StoreError> {
    let text = path.to_string_lossy();
    if text.is_empty() || text == ":memory:" || text.starts_with("file:") {
        return Err(StoreError::InvalidPath);
    }
    Ok(())
}

/// How long a scrub that is not the app's call (on open, after a commit, on
/// drop) waits for another connection's write lock, and then for its
/// readers. The app's [`Backend::scrub`] waits [`BUSY_TIMEOUT`].
const QUIET_SCRUB_TIMEOUT: Duration = Duration::from_millis(50);

/// How long the truncating checkpoint after a commit waits for another
/// connection's readers (it is tried only when no reader keeps frames from
/// the database file).
const COMMIT_CHECKPOINT_TIMEOUT: Duration = Duration::from_millis(5);

/// Copies the whole WAL into the database and truncates it to zero bytes,
/// waiting at most `timeout` for other connections; returns whether it did
/// (`false`: another connection is reading or writing, and the log stays).
fn truncate_wal(connection: &mut Connection, timeout: Duration) -> Result<bool, StoreError> {
    connection.busy_timeout(timeout).sql()?;
    // (busy, frames in the log, frames checkpointed). Blocked by a reader,
    // SQLite reports busy = 1 in the row, not as an error.
    let result = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
    wait_for_locks(connection)?;
    match result {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::DatabaseBusy => Ok(false),
        Err(e) => Err(sqlite_error(e)),
    }
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Exclusive).sql()?;
    let found: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0)).sql()?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    for (version, migration) in (1..=SCHEMA_VERSION).zip(MIGRATIONS.iter()).skip(found as usize) {
        tx.execute_batch(migration).sql()?;
        tx.pragma_update(None, "user_version", version).sql()?;
    }
    tx.commit().sql()?;
    Ok(())
}

impl Backend for SqliteBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_connection(|connection| {
            let sql = format!("SELECT value FROM {} WHERE key = ?1", table.name());
            connection.prepare_cached(&sql).sql()?.query_row(params![key], |row| row.get(0)).optional().sql()
        })
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.with_connection(|connection| {
            let sql = format!("SELECT key, value FROM {} ORDER BY key", table.name());
            let mut statement = connection.prepare_cached(&sql).sql()?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).sql()?;
            rows.collect::<Result<_, _>>().sql()
        })
    }

    fn scan_after(&self, table: Table, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, StoreError> {
        self.with_connection(|connection| {
            let sql =
                format!("SELECT key, value FROM {} WHERE ?1 IS NULL OR key > ?1 ORDER BY key LIMIT ?2", table.name());
            let mut statement = connection.prepare_cached(&sql).sql()?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = statement.query_map(params![after, limit], |row| Ok((row.get(0)?, row.get(1)?))).sql()?;
            rows.collect::<Result<_, _>>().sql()
        })
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.with_handle(|handle| self.write(handle, writes))
    }

    /// Scrubs now, waiting up to the busy timeout (5 s) for another
    /// connection's write lock, then for its readers: see the module docs.
    fn scrub(&self) -> Result<Scrub, StoreError> {
        self.with_handle(|handle| self.scrub_handle(handle, BUSY_TIMEOUT))
    }

    /// `PRAGMA integrity_check`: every page, every index, every cell.
    fn check_integrity(&self) -> Result<(), StoreError> {
        self.with_connection(|connection| {
            let result: String = connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).sql()?;
            if result == "ok" { Ok(()) } else { Err(StoreError::CorruptDatabase) }
        })
    }

    /// One `BEGIN IMMEDIATE` transaction that reads each table in key
    /// order, `REWRITE_PAGE` rows at a time, and updates each row in
    /// place; then a scrub that waits up to the busy timeout. Other
    /// connections wait for the write lock meanwhile (and fail with
    /// [`StoreError::Locked`] past their busy timeout of 5 s).
    fn rewrite_all(&self, rewrite: &mut Rewrite<'_>) -> Result<Scrub, StoreError> {
        self.with_handle(|handle| {
            let tx = handle.connection.transaction_with_behavior(TransactionBehavior::Immediate).sql()?;
            self.check_file()?;
            for table in Table::ALL {
                let select = format!(
                    "SELECT key, value FROM {} WHERE ?1 IS NULL OR key > ?1 ORDER BY key LIMIT {REWRITE_PAGE}",
                    table.name()
                );
                let update = format!("UPDATE {} SET value = ?2 WHERE key = ?1", table.name());
                let mut last: Option<Vec<u8>> = None;
                loop {
                    let page: Vec<Row> = tx
                        .prepare_cached(&select)
                        .sql()?
                        .query_map(params![last], |row| Ok((row.get(0)?, row.get(1)?)))
                        .sql()?
                        .collect::<Result<_, _>>()
                        .sql()?;
                    for (key, value) in &page {
                        let new = rewrite(table, key, value)?;
                        tx.prepare_cached(&update).sql()?.execute(params![key, new]).sql()?;
                    }
                    match page.into_iter().last() {
                        Some((key, _)) => last = Some(key),
                        None => break,
                    }
                }
            }
            tx.commit().sql()?;
            // Every old value is superseded: the files must keep none.
            match self.scrub_handle(handle, BUSY_TIMEOUT) {
                Ok(scrub) => Ok(scrub),
                Err(_) => {
                    handle.scrub_owed = true;
                    Ok(Scrub::Deferred)
                }
            }
        })
    }
}

/// Rows read at a time by [`SqliteBackend::rewrite_all`].
const REWRITE_PAGE: usize = 256;

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked child: the connection is the parent's. Closing it would
            // run SQLite's last-connection steps with the parent's state (a
            // checkpoint of the parent's WAL, its deletion), as if no one else
            // had the database open, since SQLite's locks belong to a process
            // and the child holds none. Leaked instead: the OS closes the
            // descriptors when the child exits, which releases no lock of the
            // parent's.
            let handle = self.handle.get_mut().unwrap_or_else(PoisonError::into_inner).take();
            #[allow(clippy::mem_forget)]
            std::mem::forget(handle);
            return;
        }
        // What this handle still owes the files: tried once more, briefly.
        // (The last connection to close also checkpoints and deletes the log.)
        if let Some(mut handle) = self.handle.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            if handle.scrub_owed {
                self.scrub_quietly(&mut handle);
            } else if handle.truncate_owed {
                let _ = handle.truncate(QUIET_SCRUB_TIMEOUT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_len(path: &Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    fn temp_db(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("samizdat-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        (dir, path)
    }

    fn put(key: &[u8], value: &[u8]) -> Write {
        Write { table: Table::Sessions, key: key.to_vec(), value: Some(value.to_vec()), expected: Expected::Any }
    }

    fn state(db: &SqliteBackend) -> (u64, u64, u64, bool, bool) {
        db.with_handle(|h| Ok((h.scrubs, h.written, h.budget, h.scrub_owed, h.truncate_owed))).unwrap()
    }

    /// `MIN_SCRUB_BUDGET`: a handle scrubs when opened, then after the
    /// commit that takes its bytes written (keys and values) past its
    /// budget, which is the larger of the limit and the database's size.
    #[test]
    fn scrubs_run_on_open_and_after_the_commit_past_the_budget() {
        let (dir, path) = temp_db("budget");
        let db = SqliteBackend::open(&path).unwrap();
        assert_eq!(state(&db), (1, 0, MIN_SCRUB_BUDGET, false, false), "scrubbed on open");
        // Up to the budget exactly: no scrub.
        let value = vec![7u8; 64 * 1024 - 1];
        let row = |i: u64| i.to_be_bytes();
        let per_write = 8 + value.len() as u64;
        let below = MIN_SCRUB_BUDGET / per_write;
        for i in 0..below {
            db.apply(&[put(&row(i), &value)]).unwrap();
        }
        let rest = usize::try_from(MIN_SCRUB_BUDGET - below * per_write - 8).unwrap();
        db.apply(&[put(&row(below), &value[..rest])]).unwrap();
        assert_eq!(state(&db), (1, MIN_SCRUB_BUDGET, MIN_SCRUB_BUDGET, false, false));
        // One byte more: the commit scrubs, and the database is now larger
        // than the limit, so its size is the next budget.
        db.apply(&[put(b"x", b"")]).unwrap();
        let (scrubs, written, budget, _, _) = state(&db);
        assert_eq!((scrubs, written), (2, 0));
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size > MIN_SCRUB_BUDGET && budget == size, "budget {budget}, database {size}");
        assert_eq!(wal_len(&path), 0, "the scrub empties the log");
        assert_eq!(db.scan(Table::Sessions).unwrap().len(), usize::try_from(below).unwrap() + 2);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store larger than `OPEN_WHOLE_MAX_BYTES` opens without a scrub or a
    /// whole check; the bytes written since its last scrub are counted in
    /// the database across handles (the scrub's debt), so that a store
    /// opened and closed often still scrubs once every handle together wrote
    /// its budget; damage is found when its page is read, and by
    /// `check_integrity`.
    #[test]
    fn a_large_store_opens_without_a_scrub_and_its_debt_survives_the_handles() {
        let (dir, path) = temp_db("large");
        let db = SqliteBackend::open(&path).unwrap();
        let value = vec![3u8; 60_000];
        let rows = OPEN_WHOLE_MAX_BYTES / 60_000 + 10;
        for i in 0..rows {
            db.apply(&[put(&i.to_be_bytes(), &value)]).unwrap();
        }
        db.scrub().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size > OPEN_WHOLE_MAX_BYTES, "{size}");
        drop(db);
        // Opened twice, each handle rewriting a third of the budget: neither
        // open scrubs, and the debt adds up across them.
        let third = size / 3 / 60_008 + 1;
        let mut debt = 0;
        for round in 0..2u64 {
            let db = SqliteBackend::open(&path).unwrap();
            let (scrubs, written, budget, _, _) = state(&db);
            assert_eq!((scrubs, written, budget), (0, debt, size), "round {round}: no scrub on open");
            for i in 0..third {
                // Rewrites of existing rows: the database keeps its size.
                db.apply(&[put(&i.to_be_bytes(), &value)]).unwrap();
            }
            debt += third * 60_008;
            assert_eq!(state(&db).1, debt);
        }
        // The third handle's writes take the debt past the budget: it scrubs,
        // and the debt starts again from zero, in the database too.
        let db = SqliteBackend::open(&path).unwrap();
        assert_eq!(state(&db).1, debt);
        for i in 0..third {
            db.apply(&[put(&i.to_be_bytes(), &value)]).unwrap();
        }
        // (It scrubbed at the commit that passed the budget: at most the
        // last three rewrites came after it.)
        let (scrubs, written, _, _, _) = state(&db);
        assert_eq!(scrubs, 1);
        assert!(written < 3 * 60_008, "{written}");
        drop(db);
        assert_eq!(state(&SqliteBackend::open(&path).unwrap()).1, written);

        // A damaged page of a large store: opening does not read it; reading
        // it, and the whole check, report the damage.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        let middle = (bytes.len() / page / 2) * page;
        for byte in &mut bytes[middle..middle + page] {
            *byte = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let db = SqliteBackend::open(&path).unwrap();
        assert!(matches!(db.check_integrity(), Err(StoreError::CorruptDatabase)));
        let scanned = locked_if_busy(db.scan(Table::Sessions).unwrap_err());
        assert!(matches!(scanned, StoreError::CorruptDatabase), "{scanned:?}");
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Another connection holding the write lock defers a scrub without
    /// failing anything; the next commit runs it. A reader that keeps the
    /// rewritten pages from the database file defers its end: the log is
    /// truncated once the read is over (here, when the handle drops).
    #[test]
    fn a_busy_database_defers_the_scrub_and_never_fails_a_commit() {
        let (dir, path) = temp_db("busy");
        let db = SqliteBackend::open(&path).unwrap();
        db.apply(&[put(b"a", b"1")]).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let short = Duration::from_millis(10);
        assert_eq!(db.with_handle(|h| db.scrub_handle(h, short)).unwrap(), Scrub::Deferred);
        assert_eq!(state(&db), (1, 2, MIN_SCRUB_BUDGET, true, false), "owed");
        other.execute_batch("ROLLBACK").unwrap();
        db.apply(&[put(b"a", b"2")]).unwrap();
        assert_eq!(state(&db), (2, 0, MIN_SCRUB_BUDGET, false, false), "run after the next commit");
        // A reader: the rewrite is done, its pages stay in the log.
        other.execute_batch("BEGIN").unwrap();
        let _: i64 = other.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
        assert_eq!(db.with_handle(|h| db.scrub_handle(h, short)).unwrap(), Scrub::Deferred);
        assert!(state(&db).4, "a truncation is owed");
        assert!(wal_len(&path) > 0);
        db.apply(&[put(b"a", b"3")]).unwrap();
        assert!(state(&db).4, "still owed while the read lasts");
        other.execute_batch("COMMIT").unwrap();
        drop(db);
        assert!(path.exists() && wal_len(&path) == 0, "truncated on drop");
        let reopened = SqliteBackend::open(&path).unwrap();
        assert_eq!(reopened.get(Table::Sessions, b"a").unwrap(), Some(b"3".to_vec()));
        drop((reopened, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A commit that finds frames of another handle's commit still in the
    /// log (a reader kept them from the database when that commit was made)
    /// cannot restart the log, and appends: it truncates the log after it,
    /// though this handle owed nothing.
    #[test]
    fn a_commit_that_could_not_restart_the_log_truncates_it() {
        let (dir, path) = temp_db("append");
        let (x, y) = (SqliteBackend::open(&path).unwrap(), SqliteBackend::open(&path).unwrap());
        x.apply(&[put(b"a", b"1")]).unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
        x.apply(&[put(b"a", b"2")]).unwrap();
        assert!(state(&x).4 && !state(&y).4, "x owes a truncation, y nothing");
        reader.execute_batch("COMMIT").unwrap();
        assert!(y.with_handle(|h| Ok(h.log.header()?)).unwrap().is_some());
        y.apply(&[put(b"b", b"1")]).unwrap();
        assert_eq!(wal_len(&path), 0, "y's commit appended, and truncated the log");
        assert!(!state(&y).4);
        drop((x, y, reader));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Scrubs on one handle, in a loop, while another handle keeps making
    /// conditional read-modify-write commits: every commit lands, none is
    /// refused because of a scrub, and the database stays sound.
    #[test]
    fn scrubs_never_break_another_handle() {
        let (dir, path) = temp_db("concurrent");
        let (writer, scrubber) = (SqliteBackend::open(&path).unwrap(), SqliteBackend::open(&path).unwrap());
        let n = 200u32;
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let scrubs = s.spawn(|| {
                let mut outcomes = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    match scrubber.scrub().unwrap() {
                        Scrub::Done => outcomes.0 += 1,
                        _ => outcomes.1 += 1,
                    }
                }
                outcomes
            });
            for i in 0..n {
                let current = writer.get(Table::Sessions, b"counter").unwrap();
                let next = current.as_deref().map_or(0, |v| u32::from_be_bytes(v.try_into().unwrap())) + 1;
                assert_eq!(next, i + 1);
                writer
                    .apply(&[Write {
                        table: Table::Sessions,
                        key: b"counter".to_vec(),
                        value: Some(next.to_be_bytes().to_vec()),
                        expected: Expected::read(current),
                    }])
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let (done_scrubs, _) = scrubs.join().unwrap();
            assert!(done_scrubs > 0);
        });
        assert_eq!(scrubber.get(Table::Sessions, b"counter").unwrap(), Some(n.to_be_bytes().to_vec()));
        let check: String =
            scrubber.with_connection(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).sql()).unwrap();
        assert_eq!(check, "ok");
        drop((writer, scrubber));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_second_name_or_a_moved_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("samizdat-sqlite-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (path, link, moved, symlink) =
            (dir.join("t.db"), dir.join("link.db"), dir.join("moved.db"), dir.join("s.db"));
        let put = |key: &[u8]| {
            [Write { table: Table::Sessions, key: key.to_vec(), value: Some(b"v".to_vec()), expected: Expected::Any }]
        };
        let db = SqliteBackend::open(&path).unwrap();
        db.apply(&put(b"a")).unwrap();
        // A symbolic link names the same file: a second handle through it is fine.
        std::os::unix::fs::symlink(&path, &symlink).unwrap();
        let through_symlink = SqliteBackend::open(&symlink).unwrap();
        through_symlink.apply(&put(b"b")).unwrap();
        assert_eq!(db.get(Table::Sessions, b"b").unwrap(), Some(b"v".to_vec()));
        // A hard link: refused by either name, and writes are refused while it exists.
        std::fs::hard_link(&path, &link).unwrap();
        assert!(matches!(SqliteBackend::open(&link), Err(StoreError::MovedOrLinked)));
        assert!(matches!(SqliteBackend::open(&path), Err(StoreError::MovedOrLinked)));
        assert!(matches!(db.apply(&put(b"c")), Err(StoreError::MovedOrLinked)));
        assert!(matches!(through_symlink.apply(&put(b"c")), Err(StoreError::MovedOrLinked)));
        assert_eq!(db.get(Table::Sessions, b"c").unwrap(), None);
        std::fs::remove_file(&link).unwrap();
        db.apply(&put(b"c")).unwrap();
        // Renamed while open: this handle's path names nothing (or another file).
        std::fs::rename(&path, &moved).unwrap();
        assert!(matches!(db.apply(&put(b"d")), Err(StoreError::MovedOrLinked)));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(db.apply(&put(b"d")), Err(StoreError::MovedOrLinked)));
        drop((db, through_symlink));
        std::fs::remove_file(&path).unwrap();
        let reopened = SqliteBackend::open(&moved).unwrap();
        assert_eq!(reopened.scan(Table::Sessions).unwrap().len(), 3);
        drop(reopened);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_checkpoint_on_open_reports_a_reader_and_truncates_without_one() {
        let dir = std::env::temp_dir().join(format!("samizdat-sqlite-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let db = SqliteBackend::open(&path).unwrap();
        let put = |value: &[u8]| Write {
            table: Table::Sessions,
            key: b"a".to_vec(),
            value: Some(value.to_vec()),
            expected: Expected::Any,
        };
        db.apply(&[put(b"1")]).unwrap();
        // Another connection in a read transaction: the log cannot be emptied.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
        db.apply(&[put(b"2")]).unwrap();
        assert!(!db.with_connection(|c| truncate_wal(c, QUIET_SCRUB_TIMEOUT)).unwrap(), "a reader holds the log");
        assert!(wal_len(&path) > 0);
        reader.execute_batch("COMMIT").unwrap();
        assert!(db.with_connection(|c| truncate_wal(c, QUIET_SCRUB_TIMEOUT)).unwrap());
        assert_eq!(wal_len(&path), 0, "the log is truncated");
        assert_eq!(db.get(Table::Sessions, b"a").unwrap(), Some(b"2".to_vec()));
        drop((db, reader));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn batches_are_atomic_and_durable_and_handles_share_them() {
        let dir = std::env::temp_dir().join(format!("samizdat-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let db = SqliteBackend::open(&path).unwrap();
            let other = SqliteBackend::open(&path).unwrap();
            db.apply(&[
                Write {
                    table: Table::Sessions,
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec()),
                    expected: Expected::Absent,
                },
                Write {
                    table: Table::Sessions,
                    key: b"b".to_vec(),
                    value: Some(b"2".to_vec()),
                    expected: Expected::Any,
                },
            ])
            .unwrap();
            assert_eq!(other.get(Table::Sessions, b"b").unwrap(), Some(b"2".to_vec()));
            // A connection that holds the write lock past the busy timeout.
            db.with_connection(|c| c.busy_timeout(Duration::from_millis(20)).sql()).unwrap();
            other.with_connection(|c| c.execute_batch("BEGIN IMMEDIATE").sql()).unwrap();
            let result =
                db.apply(&[Write { table: Table::Sessions, key: b"c".to_vec(), value: None, expected: Expected::Any }]);
            assert!(matches!(result, Err(StoreError::Locked)), "{result:?}");
            other.with_connection(|c| c.execute_batch("ROLLBACK").sql()).unwrap();
            drop(other);
            // A batch with a bad write applies nothing: a NOT NULL violation
            // cannot be expressed through `Write`, so drop the table under it.
            db.with_connection(|c| c.execute_batch("ALTER TABLE prekeys RENAME TO gone").sql()).unwrap();
            let result = db.apply(&[
                Write { table: Table::Sessions, key: b"a".to_vec(), value: None, expected: Expected::Any },
                Write {
                    table: Table::PreKeys,
                    key: b"p".to_vec(),
                    value: Some(b"x".to_vec()),
                    expected: Expected::Any,
                },
            ]);
            // SQLite's own code and message, not the binding's error type:
            // SQLITE_ERROR (1), "no such table".
            match &result {
                Err(StoreError::Sqlite(e)) => {
                    assert_eq!(e.code(), Some(1), "{e}");
                    assert!(e.message().contains("no such table"), "{e}");
                    assert!(e.to_string().ends_with("(code 1)"), "{e}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(db.get(Table::Sessions, b"a").unwrap(), Some(b"1".to_vec()));
            db.with_connection(|c| c.execute_batch("ALTER TABLE gone RENAME TO prekeys").sql()).unwrap();
        }
        let db = SqliteBackend::open(&path).unwrap();
        assert_eq!(db.scan(Table::Sessions).unwrap().len(), 2);
        db.with_connection(|c| c.pragma_update(None, "user_version", 9).sql()).unwrap();
        drop(db);
        assert!(matches!(
            SqliteBackend::open(&path),
            Err(StoreError::SchemaTooNew { found: 9, supported: SCHEMA_VERSION })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
