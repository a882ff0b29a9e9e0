//! The ratchet message inside an envelope (field 2): the input is the
//! `RatchetMessage` protobuf, framed here, so that mutations land on its
//! fields. Checks as `decode_message`, and that it decodes as a ratchet message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samizdat::wire::Message;

fuzz_target!(|data: &[u8]| {
    let bytes = samizdat_fuzz::wire::framed(2, data);
    if let Some(message) = samizdat_fuzz::wire::check_message(&bytes) {
        assert!(matches!(message, Message::Ratchet(_)), "field 2 decoded as another kind");
    }
});
