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
//!   journal 5-6x). On open a truncating checkpoint empties a log that a
//!   crash left behind (with a short busy timeout: if another handle is
//!   reading, the log is left to that handle's checkpoints).
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

use super::{Backend, Expected, Row, StoreError, Table, Write};

/// The schema version this release writes.
pub const SCHEMA_VERSION: u32 = 1;

/// How long a call waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 1] = ["
    CREATE TABLE meta     (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE identity (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE prekeys  (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE sessions (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"];

/// A store in one SQLite database file.
pub struct SqliteBackend {
    /// `None` only while a forked child drops the backend.
    connection: Mutex<Option<Connection>>,
    /// The process that opened the connection.
    pid: u32,
    /// The path as the app gave it.
    path: PathBuf,
    /// The path with every symbolic link resolved (as SQLite resolves it to
    /// name the WAL and the index), and the file it named when opened.
    canonical: PathBuf,
    file: FileId,
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
    /// Opens (or creates) the database at `path` and migrates its schema.
    /// Other handles may have it open too, in this process or others.
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
        let mut connection = Connection::open(path)?;
        // The file exists now: its identity, by the name SQLite resolved.
        let canonical = std::fs::canonicalize(path)?;
        let file = FileId::of(&canonical)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.pragma_update(None, "wal_autocheckpoint", 1)?;
        connection.pragma_update(None, "journal_size_limit", 0)?;
        // Damage is reported as such: checked on open (the structure of every
        // page), and on every read of a cell.
        connection.pragma_update(None, "cell_size_check", "ON")?;
        let check: String = connection.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        if check != "ok" {
            return Err(StoreError::CorruptDatabase);
        }
        migrate(&mut connection)?;
        truncate_wal(&connection)?;
        Ok(Self {
            connection: Mutex::new(Some(connection)),
            pid: std::process::id(),
            path: path.to_path_buf(),
            canonical,
            file,
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, in the process that opened it only.
    fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if std::process::id() != self.pid {
            return Err(StoreError::Forked);
        }
        // SQLite rolls back an unfinished transaction itself, so a poisoned
        // lock leaves a consistent database.
        let mut guard = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        let connection = guard.as_mut().ok_or(StoreError::Forked)?;
        f(connection).map_err(locked_if_busy)
    }

    /// Refuses to write unless the path still names the file this handle
    /// opened, with no other name.
    fn check_file(&self) -> Result<(), StoreError> {
        if FileId::of(&self.canonical)? == self.file { Ok(()) } else { Err(StoreError::MovedOrLinked) }
    }

    fn write(&self, connection: &mut Connection, writes: &[Write]) -> Result<(), StoreError> {
        // `BEGIN IMMEDIATE` takes the database's write lock first, so the rows
        // read here cannot change before the commit, whoever else writes.
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.check_file()?;
        for write in writes {
            if write.expected == Expected::Any {
                continue;
            }
            let sql = format!("SELECT value FROM {} WHERE key = ?1", write.table.name());
            let current: Option<Vec<u8>> =
                tx.prepare_cached(&sql)?.query_row(params![write.key], |row| row.get(0)).optional()?;
            if !write.expected.holds(current.as_deref()) {
                // Dropping the transaction rolls it back: nothing was written.
                return Err(StoreError::Conflict { table: write.table });
            }
        }
        for write in writes {
            match &write.value {
                Some(value) => {
                    let sql = format!("INSERT OR REPLACE INTO {} (key, value) VALUES (?1, ?2)", write.table.name());
                    tx.prepare_cached(&sql)?.execute(params![write.key, value])?;
                }
                None => {
                    let sql = format!("DELETE FROM {} WHERE key = ?1", write.table.name());
                    tx.prepare_cached(&sql)?.execute(params![write.key])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// SQLite still busy (another connection holding its lock) after the busy
/// timeout is [`StoreError::Locked`].
fn locked_if_busy(error: StoreError) -> StoreError {
    match error {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::Locked
        }
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
        {
            StoreError::CorruptDatabase
        }
        error => error,
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

/// How long the checkpoint on open waits for another handle's readers.
const OPEN_CHECKPOINT_TIMEOUT: Duration = Duration::from_millis(50);

/// Copies the whole WAL into the database and truncates it to zero bytes;
/// returns whether it did (`false`: another connection is reading, and the
/// log stays for the checkpoints of later commits).
fn truncate_wal(connection: &Connection) -> Result<bool, StoreError> {
    connection.busy_timeout(OPEN_CHECKPOINT_TIMEOUT)?;
    // (busy, frames in the log, frames checkpointed). Blocked by a reader,
    // SQLite reports busy = 1 in the row, not as an error.
    let result = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
    connection.busy_timeout(BUSY_TIMEOUT)?;
    match result {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::DatabaseBusy => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let found: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    for (version, migration) in (1..=SCHEMA_VERSION).zip(MIGRATIONS.iter()).skip(found as usize) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", version)?;
    }
    tx.commit()?;
    Ok(())
}

impl Backend for SqliteBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_connection(|connection| {
            let sql = format!("SELECT value FROM {} WHERE key = ?1", table.name());
            Ok(connection.prepare_cached(&sql)?.query_row(params![key], |row| row.get(0)).optional()?)
        })
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.with_connection(|connection| {
            let sql = format!("SELECT key, value FROM {} ORDER BY key", table.name());
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.with_connection(|connection| self.write(connection, writes))
    }
}

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
            let connection = self.connection.get_mut().unwrap_or_else(PoisonError::into_inner).take();
            #[allow(clippy::mem_forget)]
            std::mem::forget(connection);
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
        assert!(!db.with_connection(|c| truncate_wal(c)).unwrap(), "a reader holds the log");
        assert!(wal_len(&path) > 0);
        reader.execute_batch("COMMIT").unwrap();
        assert!(db.with_connection(|c| truncate_wal(c)).unwrap());
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
            db.with_connection(|c| Ok(c.busy_timeout(Duration::from_millis(20))?)).unwrap();
            other.with_connection(|c| Ok(c.execute_batch("BEGIN IMMEDIATE")?)).unwrap();
            let result =
                db.apply(&[Write { table: Table::Sessions, key: b"c".to_vec(), value: None, expected: Expected::Any }]);
            assert!(matches!(result, Err(StoreError::Locked)), "{result:?}");
            other.with_connection(|c| Ok(c.execute_batch("ROLLBACK")?)).unwrap();
            drop(other);
            // A batch with a bad write applies nothing: a NOT NULL violation
            // cannot be expressed through `Write`, so drop the table under it.
            db.with_connection(|c| Ok(c.execute_batch("ALTER TABLE prekeys RENAME TO gone")?)).unwrap();
            let result = db.apply(&[
                Write { table: Table::Sessions, key: b"a".to_vec(), value: None, expected: Expected::Any },
                Write {
                    table: Table::PreKeys,
                    key: b"p".to_vec(),
                    value: Some(b"x".to_vec()),
                    expected: Expected::Any,
                },
            ]);
            assert!(matches!(result, Err(StoreError::Sqlite(_))));
            assert_eq!(db.get(Table::Sessions, b"a").unwrap(), Some(b"1".to_vec()));
            db.with_connection(|c| Ok(c.execute_batch("ALTER TABLE gone RENAME TO prekeys")?)).unwrap();
        }
        let db = SqliteBackend::open(&path).unwrap();
        assert_eq!(db.scan(Table::Sessions).unwrap().len(), 2);
        db.with_connection(|c| Ok(c.pragma_update(None, "user_version", 9)?)).unwrap();
        drop(db);
        assert!(matches!(SqliteBackend::open(&path), Err(StoreError::SchemaTooNew { found: 9, supported: 1 })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
