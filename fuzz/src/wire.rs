//! Checks shared by the wire decoders' targets.

use samizdat::{
    DecodeError,
    group::GroupMessage,
    limits::{MAX_GROUP_ID_LEN, MAX_MESSAGE_LEN},
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

/// Decodes `bytes` as a group message and as a one-to-one message: at most
/// one of them accepts it (a group message is an unknown kind to the
/// one-to-one decoder, PROTOCOL.md 12.4, 18.4), they fail alike on what both
/// check first (size, version, envelope), and an accepted group message
/// keeps within its limits and round-trips. Returns it.
pub fn check_group_message(bytes: &[u8]) -> Option<GroupMessage> {
    let group = GroupMessage::from_bytes(bytes);
    let any = Message::from_bytes(bytes);
    match (&group, &any) {
        (Ok(_), Err(DecodeError::UnknownKind)) | (Err(DecodeError::UnknownKind), _) => {}
        // A group envelope with a bad field: the one-to-one decoder stops at its kind.
        (Err(a), Err(b)) => {
            assert!(a == b || *b == DecodeError::UnknownKind, "the decoders fail differently: {a:?}, {b:?}")
        }
        _ => panic!("the two decoders disagree: {group:?}, {any:?}"),
    }
    let message = group.ok()?;
    let encoded = message.to_bytes();
    assert!(encoded.len() <= MAX_MESSAGE_LEN, "a decoded group message encodes past the limit");
    assert!(
        !message.group_id().is_empty() && message.group_id().len() <= MAX_GROUP_ID_LEN,
        "a group id of {} bytes",
        message.group_id().len()
    );
    assert_round_trip("GroupMessage", bytes, &message, GroupMessage::to_bytes, GroupMessage::from_bytes);
    Some(message)
}

/// `0x01` (the wire version), then an envelope whose only field is field
/// `field` (1: prekey message, 2: ratchet message, 3: group message)
/// holding `body`.
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
