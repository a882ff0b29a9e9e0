//! The byte fields of records, as values: [`Bytes`], [`IdentityKey`] and
//! [`UserIdentityKey`], newtypes over `Vec<u8>` that UniFFI passes as bytes
//! (custom types).
//!
//! They exist for Kotlin and Java. There a `ByteArray` field makes a record
//! (a `data class`) equal only to itself, hash by identity and print as
//! `[B@1b6d3586`, so that a fresh copy of an [`crate::Outgoing`] is no key of
//! a map that holds an equal one. `ffi/uniffi.toml` maps each of these types
//! to a hand-written Kotlin class of the same name
//! (`ffi/jvm/src/main/kotlin/org/samizdat/Values.kt`): immutable, equal and
//! hashed by content, printed in hex. Swift sees `Data` and Python `bytes`
//! (type aliases of these names), which are values already.
//!
//! Only records carry them: the calls keep taking and returning plain
//! bytes (`ByteArray`, `Data`, `bytes`), which an app hands to its
//! transport or store as they are.

use std::ops::Deref;

/// Bytes in a record (a message, a device list, a plaintext). Kotlin:
/// `org.samizdat.Bytes`, equal by content (`toByteArray()` gives a copy);
/// Swift: `Data`; Python: `bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(Vec<u8>);

uniffi::custom_newtype!(Bytes, Vec<u8>);

/// A device's identity key (32 bytes) in a record. Kotlin:
/// `org.samizdat.IdentityKey`, equal by content, printed in hex; Swift:
/// `Data`; Python: `bytes`. Its length is checked where it is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IdentityKey(Vec<u8>);

uniffi::custom_newtype!(IdentityKey, Vec<u8>);

/// A user identity key (32 bytes, Ed25519: it signs a user's device lists)
/// in a record. Kotlin: `org.samizdat.UserIdentityKey`, equal by content,
/// printed in hex, never equal to an [`IdentityKey`]; Swift: `Data`;
/// Python: `bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserIdentityKey(Vec<u8>);

uniffi::custom_newtype!(UserIdentityKey, Vec<u8>);

/// The conversions every one of them has: from and into `Vec<u8>`, from a
/// slice, and reading as a slice.
macro_rules! byte_value {
    ($name:ident) => {
        impl $name {
            /// The bytes, taken out.
            pub fn into_vec(self) -> Vec<u8> {
                self.0
            }
        }

        impl Deref for $name {
            type Target = [u8];

            fn deref(&self) -> &[u8] {
                &self.0
            }
        }

        impl From<Vec<u8>> for $name {
            fn from(bytes: Vec<u8>) -> Self {
                Self(bytes)
            }
        }

        impl From<&[u8]> for $name {
            fn from(bytes: &[u8]) -> Self {
                Self(bytes.to_vec())
            }
        }

        impl From<$name> for Vec<u8> {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

byte_value!(Bytes);
byte_value!(IdentityKey);
byte_value!(UserIdentityKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_go_in_and_out_unchanged() {
        let bytes = Bytes::from(vec![1, 2, 3]);
        assert_eq!(&*bytes, &[1, 2, 3]);
        assert_eq!(bytes.clone().into_vec(), vec![1, 2, 3]);
        assert_eq!(Vec::from(IdentityKey::from(&[7u8; 32][..])), vec![7; 32]);
        assert_eq!(UserIdentityKey::from(vec![9; 32]).len(), 32);
    }
}
