//! Addresses: which device of which user.

use std::fmt;

use crate::DecodeError;

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
    /// [`DecodeError::InvalidValue`] if the user id is empty or longer than
    /// [`MAX_USER_ID_LEN`] bytes.
    pub fn new(user_id: impl Into<String>, device_id: u32) -> Result<Self, DecodeError> {
        let user_id = user_id.into();
        if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
            return Err(DecodeError::InvalidValue("user_id"));
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
/// # Ok::<(), samizdat::DecodeError>(())
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
