//! Shared pieces of the fuzz targets (`fuzz_targets/`) and of the seed
//! corpus generator (`examples/seed_corpus.rs`).
//!
//! - [`input`]: a byte-driven reader of fuzz inputs, and the writer the
//!   generator uses to make inputs of the same layout;
//! - [`seal`]: the store's row sealing, written again from PROTOCOL.md 14.3
//!   to 14.5, so that a target can put rows of its choice into a
//!   [`MemoryBackend`](samizdat::store::MemoryBackend) that the library
//!   opens as its own;
//! - [`rows`]: the checks of a whole store against `samizdat::limits` and
//!   the row invariants of PROTOCOL.md 14.7;
//! - [`scenario`]: sessions built deterministically (seeded generator) with
//!   messages in flight, for the `decrypt` target;
//! - [`store_input`]: the layout of the `decode_store` target's inputs;
//! - [`world`]: devices, a network and a model, for the `interaction` target;
//! - [`group`]: a device in a group with chains and the messages sent to
//!   it, for the `group_decrypt` target.
//!
//! Everything here uses the public API of `samizdat` (with `hazmat`) and the
//! public protobuf types of `samizdat-proto`, nothing else.

pub mod group;
pub mod input;
pub mod normal;
pub mod rows;
pub mod scenario;
pub mod seal;
pub mod store_input;
pub mod wire;
pub mod world;

/// Asserts that a decoder accepts only the one canonical encoding of what
/// it decodes: re-encoding the decoded value gives back exactly the input
/// (PROTOCOL.md 12.3, 12.4, 13.2), and that encoding decodes again to a
/// value that encodes alike.
pub fn assert_round_trip<T, E: std::fmt::Debug>(
    what: &str,
    input: &[u8],
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    assert_round_trip_normal(what, input, value, encode, decode, <[u8]>::to_vec);
}

/// As [`assert_round_trip`], for a stored record whose loader accepts a
/// value the writer then writes differently, in the ways PROTOCOL.md
/// documents (see [`normal`]): the re-encoding must be exactly `normal`
/// of the input, the input with those and only those differences undone.
pub fn assert_round_trip_normal<T, E: std::fmt::Debug>(
    what: &str,
    input: &[u8],
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
    normal: impl Fn(&[u8]) -> Vec<u8>,
) {
    let first = encode(value);
    assert!(first == normal(input), "{what}: accepted an encoding that is not the canonical one");
    let again = match decode(&first) {
        Ok(again) => again,
        Err(error) => panic!("{what}: its own encoding does not decode: {error:?}"),
    };
    assert!(encode(&again) == first, "{what}: decode(encode(x)) encodes differently");
}
