//! Making a new SQLite store so that a crash never leaves a half-made file
//! under the store's name: it is built under a temporary name of its own
//! beside it and gets its name only once complete (PROTOCOL.md 14.6).

use std::{
    ffi::OsString,
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use super::{SqliteBackend, StoreError};

/// What follows the store's file name in a temporary name:
/// `<name>.samizdat-new-<process id>-<number>`.
const BUILDING_MARK: &str = ".samizdat-new-";

/// A temporary file older than this is what a creation that crashed left:
/// creating a store takes milliseconds.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// How many temporary names a creation tries before giving up (each is new,
/// so only files planted at every one of them can exhaust it).
const NAME_ATTEMPTS: usize = 8;

/// Numbers the temporary names of this process.
static BUILDS: AtomicU64 = AtomicU64::new(0);

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The temporary names left beside `path` (by any process), as found in its
/// directory: only files of this store, never anything else.
fn temporaries(path: &Path) -> Vec<PathBuf> {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { return Vec::new() };
    let prefix = format!("{file_name}{BUILDING_MARK}");
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| {
            // Exactly `<name>.samizdat-new-<digits>-<digits>`: the database
            // itself (its `-wal`/`-shm` are removed with it), never another
            // file that merely starts the same way.
            entry.file_name().to_str().and_then(|name| name.strip_prefix(&prefix)).is_some_and(|rest| {
                let mut parts = rest.split('-');
                let digits =
                    |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
            })
        })
        .map(|entry| entry.path())
        .collect()
}

/// Removes `name` and the log and index SQLite keeps beside it.
fn remove_with_companions(name: &Path) -> Result<(), StoreError> {
    for file in [name.to_path_buf(), with_suffix(name, "-wal"), with_suffix(name, "-shm")] {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Whether the regular file `name` of `len` bytes can be what a creation
/// left: empty (reserved, never built) or a SQLite database.
fn is_ours(name: &Path, len: u64) -> bool {
    use std::io::Read;
    if len == 0 {
        return true;
    }
    let mut header = [0u8; 16];
    std::fs::File::open(name).and_then(|mut file| file.read_exact(&mut header)).is_ok()
        && &header == b"SQLite format 3\0"
}

/// Removes what creations that crashed left beside `path`: temporary names
/// older than [`STALE_AFTER`] (a symbolic link is removed, never followed).
fn remove_stale(path: &Path) -> Result<(), StoreError> {
    let now = SystemTime::now();
    for name in temporaries(path) {
        let Ok(metadata) = std::fs::symlink_metadata(&name) else { continue };
        let age = metadata.modified().ok().and_then(|t| now.duration_since(t).ok());
        if !metadata.is_file() || age.is_none_or(|age| age < STALE_AFTER) || !is_ours(&name, metadata.len()) {
            continue;
        }
        remove_with_companions(&name)?;
    }
    Ok(())
}

/// Removes a temporary name that is a second name of the store at `path`:
/// a creation was killed between naming the store and removing its
/// temporary name, or another handle opens the store in that instant. (The
/// store is complete; with two names it would be refused,
/// [`StoreError::MovedOrLinked`].) Any other second name is left alone.
pub(super) fn finish_interrupted(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(named) = std::fs::metadata(path) else { return Ok(()) };
        if named.nlink() < 2 {
            return Ok(());
        }
        for name in temporaries(path) {
            if let Ok(temporary) = std::fs::symlink_metadata(&name)
                && temporary.is_file()
                && (named.dev(), named.ino()) == (temporary.dev(), temporary.ino())
            {
                match std::fs::remove_file(&name) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl SqliteBackend {
    /// Makes the store at `path` unless a file is there already, without
    /// ever leaving an incomplete file under that name. `build` fills a new
    /// store under a temporary name beside `path` that no one else uses:
    /// `<path>.samizdat-new-<process>-<number>`, created exclusively (it
    /// fails if anything is there, a symbolic link included, and another
    /// name is tried). The store is closed, linked to `path` (an atomic step
    /// that fails if `path` exists), and its temporary name removed. On
    /// return, `path` names a store: ours (`true`), or one that was there
    /// already or that another handle made meanwhile (`false`). Temporary
    /// files more than a minute old, left by creations that crashed, are
    /// removed first.
    ///
    /// # Errors
    /// What `build` returns; a store error; [`StoreError::Io`] if the
    /// directory cannot be written, or if files are planted at every
    /// temporary name tried.
    pub(crate) fn create_new<E: From<StoreError>>(
        path: &Path,
        build: impl FnOnce(&SqliteBackend) -> Result<(), E>,
    ) -> Result<bool, E> {
        super::sqlite::check_path(path)?;
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(false);
        }
        remove_stale(path)?;
        let building = reserve(path)?;
        let built = SqliteBackend::open(&building).map_err(E::from).and_then(|backend| build(&backend));
        // The last connection has closed: SQLite moved its log into the file
        // and deleted it.
        if let Err(e) = built {
            remove_with_companions(&building)?;
            return Err(e);
        }
        let linked = std::fs::hard_link(&building, path);
        remove_with_companions(&building)?;
        match linked {
            Ok(()) => Ok(true),
            // Someone gave `path` a file first: ours is not needed.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::Io(e).into()),
        }
    }
}

/// Creates an empty file at a temporary name of `path` that did not exist.
fn reserve(path: &Path) -> Result<PathBuf, StoreError> {
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let number = BUILDS.fetch_add(1, Ordering::Relaxed);
        let name = with_suffix(path, &format!("{BUILDING_MARK}{}-{number}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&name) {
            Ok(_) => return Ok(name),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or(StoreError::Locked, StoreError::Io))
}
