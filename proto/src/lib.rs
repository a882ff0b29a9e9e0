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
// As in `samizdat`: no panics and no unchecked arithmetic, in this crate's own
// code and in the generated modules (which the `allow` below does not relax:
// these lints are not in `clippy::all`). The generated code is struct and
// enum definitions whose impls come from prost's derive macros; clippy does
// not lint inside another crate's macro expansions.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

/// What crosses the network (`proto/wire.proto`, package `samizdat.wire.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/samizdat.wire.v1.rs"));
}

/// What is stored on disk (`proto/storage.proto`, package `samizdat.storage.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod storage {
    include!(concat!(env!("OUT_DIR"), "/samizdat.storage.v1.rs"));
}

pub use prost::{self, Message};
pub use zeroize;
