//! Addresses: which device of which user.

use std::fmt;

use crate::{DecodeError, ErrorKind};

/// The longest user id accepted, in bytes of UTF-8.
pub const MAX_USER_ID_LEN: usize = 256;

/// A device of a user: `(user id, device id)`. The user id is the app's
/// stable identifier (never shown by this library to anyone but the app).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    user_id: String,
    device_id: u32,
}

impl Address {
    /// An address.
    ///
    /// # Errors
    /// [`AddressError::EmptyUserId`], or [`AddressError::UserIdTooLong`]
    /// past [`MAX_USER_ID_LEN`] bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use samizdat::address::{Address, AddressError};
    ///
    /// let phone = Address::new("alice", 1)?;
    /// assert_eq!((phone.user_id(), phone.device_id()), ("alice", 1));
    /// assert_eq!(Address::new("", 1), Err(AddressError::EmptyUserId));
    /// # Ok::<(), AddressError>(())
    /// ```
    pub fn new(user_id: impl Into<String>, device_id: u32) -> Result<Self, AddressError> {
        let user_id = user_id.into();
        if user_id.is_empty() {
            return Err(AddressError::EmptyUserId);
        }
        if user_id.len() > MAX_USER_ID_LEN {
            return Err(AddressError::UserIdTooLong { len: user_id.len() });
        }
        Ok(Self { user_id, device_id })
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The device id.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }
}

/// `user_id.device_id`, for logs and screens the app controls (the user id
/// is the app's own identifier).
///
/// ```
/// let address = samizdat::address::Address::new("alice", 2)?;
/// assert_eq!(address.to_string(), "alice.2");
/// # Ok::<(), samizdat::address::AddressError>(())
/// ```
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.user_id, self.device_id)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({:?}, {})", self.user_id, self.device_id)
    }
}

/// Why [`Address::new`] refused a user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The user id is empty.
    #[error("the user id is empty")]
    EmptyUserId,
    /// The user id is longer than [`MAX_USER_ID_LEN`] bytes of UTF-8.
    #[error("the user id is {len} bytes, more than {MAX_USER_ID_LEN}")]
    UserIdTooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl AddressError {
    /// [`ErrorKind::InvalidArgument`]: the app passed a user id no address
    /// can have.
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// An address in a message or a store that breaks the rules is a value the
/// format does not allow.
impl From<AddressError> for DecodeError {
    fn from(_: AddressError) -> Self {
        DecodeError::InvalidValue("user_id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked_with_typed_errors() {
        assert_eq!(Address::new("", 1), Err(AddressError::EmptyUserId));
        let longest = "a".repeat(MAX_USER_ID_LEN);
        assert_eq!(Address::new(longest.clone(), 7).unwrap().user_id(), longest);
        let over = "é".repeat(MAX_USER_ID_LEN / 2 + 1); // two bytes each
        assert_eq!(Address::new(over, 1), Err(AddressError::UserIdTooLong { len: MAX_USER_ID_LEN + 2 }));
        assert_eq!(AddressError::EmptyUserId.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            AddressError::UserIdTooLong { len: 300 }.to_string(),
            format!("the user id is 300 bytes, more than {MAX_USER_ID_LEN}")
        );
        // Inside a decoder it is a value the format does not allow.
        assert_eq!(DecodeError::from(AddressError::EmptyUserId), DecodeError::InvalidValue("user_id"));
    }
}
