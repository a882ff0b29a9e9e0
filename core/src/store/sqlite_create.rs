//! Making a new SQLite store so that a crash never leaves a half-made file
//! under the store's name: it is built under a temporary name beside it and
//! gets its name only once complete.

use std::{
    ffi::OsString,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use super::{SqliteBackend, StoreError};

/// The suffix of the temporary name a store is built under.
const BUILDING_SUFFIX: &str = ".samizdat-new";

/// How many times a creation starts over when another handle, creating the
/// same store at the same moment, took the temporary file away.
const CREATE_ATTEMPTS: usize = 3;

/// What the builder found in the temporary file.
pub(crate) enum Built {
    /// The temporary store holds what it must: give it its name.
    Complete,
    /// The temporary store holds something else (left by a creation that
    /// crashed, under another key or for another address): delete it and
    /// start over.
    Discard,
}

/// The temporary name of the store at `path`, and the names of the log and
/// shared-memory index SQLite keeps beside it.
fn building_names(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = OsString::from(path.as_os_str());
        name.push(BUILDING_SUFFIX);
        name.push(suffix);
        PathBuf::from(name)
    };
    [with(""), with("-wal"), with("-shm")]
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes the temporary name of the store at `path` if it is a second name
/// of that very file: a creation was killed between naming the store and
/// removing the temporary name (the store is complete; with two names it
/// would be refused, [`StoreError::MovedOrLinked`]).
pub(super) fn finish_interrupted(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let [building, _, _] = building_names(path);
        if let (Ok(named), Ok(temporary)) = (std::fs::metadata(path), std::fs::metadata(&building))
            && (named.dev(), named.ino()) == (temporary.dev(), temporary.ino())
        {
            remove_if_present(&building)?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl SqliteBackend {
    /// Makes the store at `path` unless a file is there already, without
    /// ever leaving an incomplete file under that name: `build` fills a
    /// store opened under a temporary name beside `path` (`<path>.samizdat-new`,
    /// reused if a crash left one: `build` sees what it holds), which is
    /// closed and then linked to `path` (an atomic step that fails if `path`
    /// exists) and unlinked. On return, `path` names a store: ours (`true`),
    /// or one that was there already or that another handle made meanwhile
    /// (`false`).
    ///
    /// Another handle opening `path` in the instant between the link and
    /// the unlink sees a file with two names and is refused
    /// ([`StoreError::MovedOrLinked`]); it can open again.
    ///
    /// # Errors
    /// What `build` returns; a store error; [`StoreError::Io`] if the
    /// directory cannot be written; [`StoreError::Locked`] if other creators
    /// took the temporary file away [`CREATE_ATTEMPTS`] times.
    pub(crate) fn create_new<E: From<StoreError>>(
        path: &Path,
        mut build: impl FnMut(&SqliteBackend) -> Result<Built, E>,
    ) -> Result<bool, E> {
        super::sqlite::check_path(path)?;
        let [building, wal, shm] = building_names(path);
        for _ in 0..CREATE_ATTEMPTS {
            if path.exists() {
                return Ok(false);
            }
            let backend = SqliteBackend::open(&building)?;
            let built = build(&backend)?;
            // The last connection closes: SQLite moves its log into the file
            // and deletes it.
            drop(backend);
            if let Built::Discard = built {
                for name in [&building, &wal, &shm] {
                    remove_if_present(name)?;
                }
                continue;
            }
            let ours = match std::fs::hard_link(&building, path) {
                Ok(()) => true,
                // Someone gave `path` a file first: ours is not needed.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                // Another creator published and removed the temporary file
                // while we built in it: start over.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io(e).into()),
            };
            for name in [&building, &wal, &shm] {
                remove_if_present(name)?;
            }
            return Ok(ours);
        }
        Err(StoreError::Locked.into())
    }
}
