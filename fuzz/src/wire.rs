//! Checks shared by the wire decoders' targets.

use samizdat::{
    DecodeError,
    limits::MAX_MESSAGE_LEN,
    wire::{Message, RatchetMessage},
};

use crate::assert_round_trip;

/// Decodes `bytes` with both wire decoders and checks what they say:
/// they agree, a decoded message encodes within the size limit, and it
/// round-trips. Returns the decoded message.
pub fn check_message(bytes: &[u8]) -> Option<Message> {
    let any = Message::from_bytes(bytes);
    let ratchet = RatchetMessage::from_bytes(bytes);
    match (&any, &ratchet) {
        (Ok(Message::Ratchet(a)), Ok(b)) => assert!(a == b, "the two decoders decode differently"),
        (Ok(Message::PreKey(_)), Err(DecodeError::UnknownKind)) => {}
        (Err(a), Err(b)) => assert!(a == b, "the two decoders fail differently: {a:?}, {b:?}"),
        _ => panic!("the two decoders disagree: {any:?}, {ratchet:?}"),
    }
    let message = any.ok()?;
    assert!(message.to_bytes().len() <= MAX_MESSAGE_LEN, "a decoded message encodes past the limit");
    assert_round_trip("Message", bytes, &message, Message::to_bytes, Message::from_bytes);
    if let Message::Ratchet(ratchet) = &message {
        assert_round_trip("RatchetMessage", bytes, ratchet, RatchetMessage::to_bytes, RatchetMessage::from_bytes);
    }
    Some(message)
}

/// `0x01` (the wire version), then an envelope whose only field is field
/// `field` (1: prekey message, 2: ratchet message) holding `body`.
pub fn framed(field: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![samizdat::wire::WIRE_VERSION, (field << 3) | 2];
    let mut len = body.len();
    loop {
        let byte = u8::try_from(len & 0x7f).expect("seven bits");
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}
