//! Healing (PROTOCOL.md 20): the message id that names a message in a
//! reset, a resend and the outbox.
//!
//! Every id is computed twice: by the library (`samizdat::heal::message_id`)
//! and here from the formula alone, with the `sha2` crate; the file is not
//! written if the two disagree. The reset and resend control content is in
//! `group.json` (`encode_control`, `decode_control`), and the loader checks
//! of a session record's healing bookkeeping in `records.json`.

use chacha20::ChaCha20Rng;
use samizdat::{hazmat, heal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, bytes, err, h, random, random_vec},
    wire::Repeat,
};

/// `healing.json`.
pub(crate) struct Healing;

/// `"samizdat/v1/message-id"`: hashed before the wire bytes (PROTOCOL.md 3, 20.2).
const MESSAGE_ID_LABEL: &[u8] = b"samizdat/v1/message-id";

/// The id of the 3 ASCII bytes `abc` (PROTOCOL.md 20.2).
const KNOWN_ANSWER_ABC: [u8; 16] =
    [0xa8, 0xe5, 0xbf, 0x1e, 0x89, 0x21, 0x64, 0x9b, 0x03, 0x38, 0x01, 0x63, 0x08, 0xde, 0x60, 0xbd];

/// `MAX_MESSAGE_LEN`: the largest message a decoder takes (12.4).
const MAX_MESSAGE_LEN: usize = 262_144;

/// The message id of `wire`, from the formula alone: SHA-256 of the label
/// and the bytes, its first 16 bytes.
pub(crate) fn message_id_by_hand(wire: &[u8]) -> [u8; 16] {
    let digest = Sha256::new().chain_update(MESSAGE_ID_LABEL).chain_update(wire).finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    id
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum HealingCase {
    /// The id of the bytes `input` (or `input_repeat`).
    MessageId {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_repeat: Option<Repeat>,
        /// SHA-256 of the label and the input, whole.
        #[serde(default)]
        digest: String,
        /// Its first 16 bytes: the id.
        #[serde(default)]
        id: String,
    },
}

impl VectorSet for Healing {
    type Case = HealingCase;
    const META: Meta = Meta {
        file: "healing.json",
        section: "20 Healing (20.2 the message id); 3 Labels and constants",
        description: "`message_id`: the id of a message from its wire bytes `input` as sent and received (the \
            whole encoded message, version byte included; any bytes have an id, whether they decode or not), or \
            `input_repeat` for an input too long to list (`prefix`, then `byte` repeated up to `len` bytes in \
            all): `digest` = SHA-256(\"samizdat/v1/message-id\" || input), the 22 ASCII bytes of the label then \
            the input, nothing between them; `id` = digest[0:16]. Known answer: the id of the 3 ASCII bytes \
            \"abc\" is a8e5bf1e8921649b0338016308de60bd.",
        seed: 21,
        inputs: &["operation", "name", "input", "input_repeat"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<HealingCase>, VErr> {
        // The known answer of PROTOCOL.md 20.2, computed apart
        // (`printf 'samizdat/v1/message-idabc' | sha256sum`).
        agree("known_answer_abc", &heal::message_id(b"abc"), &KNOWN_ANSWER_ABC)?;
        agree("known_answer_abc", &message_id_by_hand(b"abc"), &KNOWN_ANSWER_ABC)?;
        let case = |name: &str, input: &[u8]| HealingCase::MessageId {
            name: name.to_owned(),
            input: Some(h(input)),
            input_repeat: None,
            digest: String::new(),
            id: String::new(),
        };
        let smallest = hazmat::ratchet_message(random::<81>(rng), random_vec(rng, 80)).to_bytes();
        let mut altered = smallest.clone();
        if let Some(last) = altered.last_mut() {
            *last ^= 0x01;
        }
        let all_bytes: Vec<u8> = (0..=255).collect();
        Ok(vec![
            case("known_answer_abc", b"abc"),
            case("empty", &[]),
            case("one_zero_byte", &[0x00]),
            case("bytes_00_to_ff", &all_bytes),
            case("the_label_itself", MESSAGE_ID_LABEL),
            case("smallest_ratchet_message", &smallest),
            case("smallest_ratchet_message_last_byte_changed", &altered),
            HealingCase::MessageId {
                name: "largest_message".to_owned(),
                input: None,
                input_repeat: Some(Repeat::new(&[0x01], 0x00, MAX_MESSAGE_LEN)),
                digest: String::new(),
                id: String::new(),
            },
        ])
    }

    fn compute(case: &HealingCase) -> R<HealingCase> {
        let HealingCase::MessageId { name, input, input_repeat, .. } = case;
        let data = match (input, input_repeat) {
            (Some(text), None) => bytes("input", text)?,
            (None, Some(repeat)) => repeat.expand()?,
            _ => return Err(err("input", "give exactly one of input and input_repeat")),
        };
        let digest = Sha256::new().chain_update(MESSAGE_ID_LABEL).chain_update(&data).finalize();
        let id = heal::message_id(&data);
        agree("id", &id, &message_id_by_hand(&data))?;
        Ok(HealingCase::MessageId {
            name: name.clone(),
            input: input.clone(),
            input_repeat: input_repeat.clone(),
            digest: h(digest),
            id: h(id),
        })
    }
}
