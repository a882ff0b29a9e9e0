//! The prekey message inside an envelope (field 1): the input is the
//! `PreKeyMessage` protobuf, framed here. Checks as `decode_message`, that
//! it decodes as a prekey message, and that its header holds what the
//! decoder promises (a base key not of small order).
#![no_main]

use libfuzzer_sys::fuzz_target;
use samizdat::wire::Message;

fuzz_target!(|data: &[u8]| {
    let bytes = samizdat_fuzz::wire::framed(1, data);
    if let Some(message) = samizdat_fuzz::wire::check_message(&bytes) {
        let Message::PreKey(prekey) = message else { panic!("field 1 decoded as another kind") };
        assert!(!prekey.header().base_key().is_small_order(), "a small-order base key was accepted");
    }
});
