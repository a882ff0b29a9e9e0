//! The session handshake.
//!
//! [`pqxdh`] is Signal's PQXDH (revision 3), hardened: the KDF binds the
//! whole transcript, so a changed prekey, ciphertext or id yields a
//! different key.

pub(crate) mod pqxdh;
