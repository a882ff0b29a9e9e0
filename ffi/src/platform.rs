//! Times, durations and file paths at the boundary: [`Timestamp`],
//! [`Seconds`] and [`FilePath`], newtypes that UniFFI passes as their
//! builtins (custom types).
//!
//! They exist for Swift. `ffi/uniffi.toml` maps them, for Swift only, to
//! Foundation's own types: a [`Timestamp`] is a `Date`, a [`Seconds`] a
//! `TimeInterval` and a [`FilePath`] a file `URL`, converted in the
//! generated code. Kotlin and Python have no such entry, so there they stay
//! type aliases of the builtins (`Long` and `String`, `int` and `str`), and
//! their APIs do not change: Kotlin's facade
//! (`ffi/jvm/src/main/kotlin/org/samizdat/Times.kt`) adds `Instant` and
//! `Duration` on top, and the Python package takes any `os.PathLike`.
//!
//! The values are checked where they are used, as before: a negative time
//! or duration, and an empty path, are a [`SamizdatError::InvalidArgument`].
//! A `Date` or a `TimeInterval` goes down to its whole seconds (rounded
//! toward the past); one with no such value in an `Int64` (not finite, or
//! too far) arrives as `Int64.min`, a negative value that is refused.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::SamizdatError;

/// A point in time: whole seconds since the Unix epoch (UTC). Swift:
/// `Date`; Kotlin: `Long`; Python: `int`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

uniffi::custom_newtype!(Timestamp, i64);

/// A duration in whole seconds. Swift: `TimeInterval`; Kotlin: `Long`;
/// Python: `int`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seconds(pub i64);

uniffi::custom_newtype!(Seconds, i64);

/// The path of a file on this device (UTF-8). Swift: a file `URL`;
/// Kotlin: `String`; Python: `str` (the Python package also takes an
/// `os.PathLike`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FilePath(pub String);

uniffi::custom_newtype!(FilePath, String);

impl Timestamp {
    /// The time as the core takes it (`name` is the parameter's, for the
    /// message).
    pub(crate) fn to_system_time(self, name: &str) -> Result<SystemTime, SamizdatError> {
        let seconds = crate::non_negative(name, self.0)?;
        UNIX_EPOCH
            .checked_add(Duration::from_secs(seconds))
            .ok_or_else(|| SamizdatError::invalid_argument(format!("{name} is past this platform's clock: {}", self.0)))
    }

    /// A time of the core (0 before the epoch, `i64::MAX` past it).
    pub(crate) fn of(time: SystemTime) -> Self {
        Self(time.duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX)))
    }
}

impl Seconds {
    /// The duration as the core takes it (`name` is the parameter's).
    pub(crate) fn to_duration(self, name: &str) -> Result<Duration, SamizdatError> {
        Ok(Duration::from_secs(crate::non_negative(name, self.0)?))
    }

    /// A duration of the core (saturating at `i64::MAX`).
    pub(crate) fn of(duration: Duration) -> Self {
        Self(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX))
    }
}

impl FilePath {
    /// The path as the core takes it. An empty path is refused: SQLite would
    /// open a private temporary database for it, and lose the device.
    pub(crate) fn into_path(self, name: &str) -> Result<PathBuf, SamizdatError> {
        if self.0.is_empty() {
            return Err(SamizdatError::invalid_argument(format!("{name} is empty")));
        }
        Ok(PathBuf::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_are_checked_where_used() {
        assert_eq!(Timestamp(10).to_system_time("now").unwrap(), UNIX_EPOCH + Duration::from_secs(10));
        assert!(Timestamp(-1).to_system_time("now").unwrap_err().to_string().contains("now is negative"));
        assert!(Timestamp(i64::MIN).to_system_time("now").is_err());
        assert_eq!(Timestamp::of(UNIX_EPOCH - Duration::from_secs(5)), Timestamp(0));
        assert_eq!(Seconds(3600).to_duration("max_age").unwrap(), Duration::from_secs(3600));
        assert!(Seconds(-1).to_duration("max_age").is_err());
        assert_eq!(Seconds::of(Duration::MAX), Seconds(i64::MAX));
    }

    #[test]
    fn an_empty_path_is_refused() {
        assert!(FilePath(String::new()).into_path("path").unwrap_err().to_string().contains("path is empty"));
        assert_eq!(FilePath("a.db".to_owned()).into_path("path").unwrap(), PathBuf::from("a.db"));
    }
}
