//! `wire::Message::from_bytes` and `RatchetMessage::from_bytes` on any bytes:
//! no panic, both decoders agree, and a decoded message round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    samizdat_fuzz::wire::check_message(data);
});
