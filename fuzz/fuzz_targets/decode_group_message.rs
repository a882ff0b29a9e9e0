//! `GroupMessage::from_bytes` on any bytes (even first byte), or on a
//! `GroupMessage` protobuf framed here in an envelope (odd first byte), so
//! that mutations land on its fields: no panic, the one-to-one decoder never
//! accepts what the group decoder does, and an accepted message keeps
//! within its limits and re-encodes to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        samizdat_fuzz::wire::check_group_message(rest);
    } else {
        samizdat_fuzz::wire::check_group_message(&samizdat_fuzz::wire::framed(3, rest));
    }
});
