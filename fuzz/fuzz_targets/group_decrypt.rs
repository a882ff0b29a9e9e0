//! A device in a group with chains (`samizdat_fuzz::group`) decrypts what
//! the input's events make: the messages genuinely sent to it, altered (a
//! byte, a field of a group message, cut or extended), or any bytes from
//! any peer. No panic, no store error; a refused message changes nothing
//! (but for the request a missing chain makes); an accepted one is genuine
//! and decrypts once. Control content cannot be decoded from outside the
//! crate, nor forged inside a pairwise session: altered distributions and
//! requests reach its decoder only as refused pairwise messages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    samizdat_fuzz::group::run(data);
});
