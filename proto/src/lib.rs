//! Samizdat's wire and storage formats, generated from `proto/*.proto` by prost.
//!
//! This crate holds data shapes only: no cryptography and no validation. The
//! `samizdat` crate parses these structs into typed values in one place
//! (`samizdat::wire` and the state deserializers) and never keeps them as live
//! protocol state.
//!
//! Storage records derive [`zeroize::Zeroize`] because they carry secret key
//! material: callers wrap them in `zeroize::Zeroizing` so the bytes are wiped on drop.
#![forbid(unsafe_code)]
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// What crosses the network (`proto/wire.proto`, package `samizdat.wire.v1`).
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/samizdat.wire.v1.rs"));
}

/// What is stored on disk (`proto/storage.proto`, package `samizdat.storage.v1`).
pub mod storage {
    include!(concat!(env!("OUT_DIR"), "/samizdat.storage.v1.rs"));
}

pub use prost::{self, Message};
pub use zeroize;
